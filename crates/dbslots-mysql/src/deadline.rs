//! Connect deadlines without a tokio timer per connect.
//!
//! # Implementation details
//!
//! A connect attempt must not hang forever (a connect lost in an overflowing
//! listen backlog otherwise holds its slot for good), so every attempt has a
//! deadline. A tokio timer armed around each connect measured ~2.8 µs, about
//! 1.4 % of a loopback connect, because the runtime's time driver then runs
//! on every park while the connect waits for the server. One watchdog
//! thread per process keeps all deadlines instead: registering costs a
//! mutex push, and the thread wakes only at the earliest deadline (and every
//! second, to forget finished attempts) to wake the overdue ones. It blocks
//! every signal, so it never takes one meant for the application.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// How often the watchdog forgets finished attempts when no deadline is due.
const PRUNE: Duration = Duration::from_secs(1);

/// One attempt's deadline, shared by the attempt and the watchdog.
#[derive(Default)]
struct Expiry {
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

struct Entry {
    deadline: Instant,
    expiry: Arc<Expiry>,
}

#[derive(Default)]
struct Deadlines {
    entries: Vec<Entry>,
    /// When the watchdog will look next (`None`: it waits for a first entry).
    next_look: Option<Instant>,
}

struct Watchdog {
    state: Mutex<Deadlines>,
    wake: Condvar,
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<&'static Watchdog> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        let w: &'static Watchdog = Box::leak(Box::new(Watchdog {
            state: Mutex::new(Deadlines::default()),
            wake: Condvar::new(),
        }));
        let started = std::thread::Builder::new()
            .name("dbslots-connect-deadlines".into())
            .spawn(move || {
                // SAFETY: sigfillset on a local set, then this thread's mask.
                unsafe {
                    let mut all: libc::sigset_t = std::mem::zeroed();
                    libc::sigfillset(&mut all);
                    libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
                }
                w.run()
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the connect-deadline thread; connect timeouts will not fire");
        }
        w
    })
}

impl Watchdog {
    fn register(&self, deadline: Instant) -> Arc<Expiry> {
        let expiry = Arc::new(Expiry::default());
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.entries.push(Entry {
            deadline,
            expiry: Arc::clone(&expiry),
        });
        // Most deadlines come after the watchdog's next look (they share a
        // length): wake it only for one that comes before.
        if state.next_look.is_none_or(|at| deadline < at) {
            self.wake.notify_one();
        }
        expiry
    }

    fn run(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = Instant::now();
            // Forget attempts that finished (only the watchdog holds them).
            state.entries.retain(|e| Arc::strong_count(&e.expiry) > 1);
            let mut next = now + PRUNE;
            state.entries.retain(|e| {
                if e.deadline <= now {
                    e.expiry.fired.store(true, Ordering::Release);
                    let waker = e
                        .expiry
                        .waker
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take();
                    if let Some(w) = waker {
                        w.wake();
                    }
                    false
                } else {
                    next = next.min(e.deadline);
                    true
                }
            });
            let wait = next.saturating_duration_since(Instant::now());
            state = if state.entries.is_empty() {
                state.next_look = None;
                self.wake.wait(state).unwrap_or_else(|p| p.into_inner())
            } else {
                state.next_look = Some(next);
                self.wake
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            };
        }
    }
}

/// Runs `fut` until it finishes or `after` has passed; `Err(())` when the
/// deadline came first (`fut` is then dropped).
pub(crate) async fn within<F: Future>(after: Duration, fut: F) -> Result<F::Output, ()> {
    let Some(at) = Instant::now().checked_add(after) else {
        // Past what an Instant holds: no deadline.
        return Ok(fut.await);
    };
    let expiry = watchdog().register(at);
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if expiry.fired.load(Ordering::Acquire) {
            return Poll::Ready(Err(()));
        }
        {
            let mut slot = expiry.waker.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_ref() {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *slot = Some(cx.waker().clone()),
            }
        }
        // The watchdog may have fired between the check and the store.
        if expiry.fired.load(Ordering::Acquire) {
            return Poll::Ready(Err(()));
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::within;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn a_finished_future_wins_and_a_hanging_one_is_cut_off() {
        assert_eq!(within(Duration::from_secs(5), async { 7 }).await, Ok(7));
        let start = Instant::now();
        let hung = within(Duration::from_millis(100), std::future::pending::<()>()).await;
        assert_eq!(hung, Err(()));
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }

    #[tokio::test]
    async fn many_deadlines_fire_independently() {
        let short = within(Duration::from_millis(50), std::future::pending::<()>());
        let long = within(Duration::from_secs(30), async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            "done"
        });
        let (s, l) = tokio::join!(short, long);
        assert_eq!((s, l), (Err(()), Ok("done")));
    }
}
