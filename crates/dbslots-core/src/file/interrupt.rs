//! Interrupting a thread that sleeps in `flock` or `futex`.
//!
//! # Implementation Details
//!
//! A blocking `flock` has no timeout and cannot be cancelled, yet a waiter
//! must give up at its deadline and an async acquisition must stop when its
//! future is dropped. The classic answer (util-linux `flock -w` does the
//! same) is a signal whose handler does nothing and is installed without
//! `SA_RESTART`: the sleeping system call returns `EINTR`, and the waiter
//! re-checks its deadline and its cancellation flag.
//!
//! One interrupter thread per process keeps the registered sleepers. When a
//! sleeper's deadline passes or it is cancelled, the interrupter sends it
//! `SIGURG` (default disposition "ignore", so an unexpected delivery can
//! never kill the process) with `pthread_kill`, and repeats every
//! millisecond until the sleeper deregisters; the repetition closes the race
//! where the signal lands just before the sleeper enters the system call.
//! Sleepers re-check their state after every `EINTR`, so a stray signal
//! only costs a loop iteration.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

/// The signal used to interrupt sleepers.
const SIGNAL: libc::c_int = libc::SIGURG;
/// Re-send period while a due sleeper has not yet left its system call.
const RESEND: Duration = Duration::from_millis(1);

extern "C" fn on_signal(_: libc::c_int) {}

fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: plain sigaction calls with zeroed, then filled, structs.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(SIGNAL, std::ptr::null(), &mut old) != 0 {
                return;
            }
            // Keep a handler somebody else installed: it interrupts too,
            // unless it asked for SA_RESTART, which we cannot fix for them.
            if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
                tracing::debug!("SIGURG already has a handler; relying on it to interrupt waits");
                return;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = 0;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(SIGNAL, &action, std::ptr::null_mut());
        }
    });
}

/// Blocks every signal in the calling thread, a helper thread of ours: a
/// signal sent to the process (Ctrl-C, a supervisor's SIGTERM) must reach
/// the application's own threads and handlers, never be taken, and acted on
/// by default, in a thread the application does not know about.
pub(crate) fn block_process_signals() {
    // SAFETY: sigfillset on a local set, then this thread's mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
}

/// Cancels an acquisition from another thread (or from a dropped future).
#[derive(Clone, Debug, Default)]
pub(crate) struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Requests cancellation and wakes the sleeper, if any.
    pub(crate) fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
        interrupter().poke();
    }

    /// True once cancelled.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

struct Sleeper {
    thread: libc::pthread_t,
    deadline: Option<Instant>,
    cancel: CancelToken,
    gone: AtomicBool,
    last_sent: Mutex<Option<Instant>>,
}

impl Sleeper {
    fn due(&self, now: Instant) -> bool {
        self.cancel.is_cancelled() || self.deadline.is_some_and(|d| now >= d)
    }
}

struct Interrupter {
    sleepers: Mutex<Vec<Arc<Sleeper>>>,
    wake: Condvar,
}

fn interrupter() -> &'static Interrupter {
    static INTERRUPTER: OnceLock<&'static Interrupter> = OnceLock::new();
    INTERRUPTER.get_or_init(|| {
        install_handler();
        let it: &'static Interrupter = Box::leak(Box::new(Interrupter {
            sleepers: Mutex::new(Vec::new()),
            wake: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("dbslots-interrupter".into())
            .spawn(move || {
                block_process_signals();
                it.run()
            })
            .map_err(|e| tracing::error!(error = %e, "cannot start the dbslots interrupter thread; timed waits may overrun"))
            .ok();
        it
    })
}

impl Interrupter {
    fn poke(&self) {
        let _guard = self.sleepers.lock().unwrap_or_else(|p| p.into_inner());
        self.wake.notify_one();
    }

    fn run(&self) {
        let mut sleepers = self.sleepers.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = Instant::now();
            sleepers.retain(|s| !s.gone.load(Ordering::SeqCst));
            let mut next: Option<Instant> = None;
            for s in sleepers.iter() {
                if s.due(now) {
                    let mut last = s.last_sent.lock().unwrap_or_else(|p| p.into_inner());
                    if last.is_none_or(|t| now >= t + RESEND) {
                        // SAFETY: the thread is alive: it deregisters (under
                        // this lock) before it can exit.
                        unsafe { libc::pthread_kill(s.thread, SIGNAL) };
                        *last = Some(now);
                    }
                    let again = now + RESEND;
                    next = Some(next.map_or(again, |n| n.min(again)));
                } else if let Some(d) = s.deadline {
                    next = Some(next.map_or(d, |n| n.min(d)));
                }
            }
            sleepers = match next {
                None => self.wake.wait(sleepers).unwrap_or_else(|p| p.into_inner()),
                Some(at) => {
                    let dur = at.saturating_duration_since(Instant::now());
                    self.wake
                        .wait_timeout(sleepers, dur)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }
}

/// While alive, the current thread may be interrupted at `deadline` or on
/// cancellation. Dropping it guarantees no further signal is sent.
pub(crate) struct Interruptible {
    sleeper: Arc<Sleeper>,
}

impl Interruptible {
    /// Registers the current thread.
    pub(crate) fn register(deadline: Option<Instant>, cancel: &CancelToken) -> Self {
        let it = interrupter();
        let sleeper = Arc::new(Sleeper {
            // SAFETY: pthread_self has no preconditions.
            thread: unsafe { libc::pthread_self() },
            deadline,
            cancel: cancel.clone(),
            gone: AtomicBool::new(false),
            last_sent: Mutex::new(None),
        });
        let mut sleepers = it.sleepers.lock().unwrap_or_else(|p| p.into_inner());
        sleepers.push(Arc::clone(&sleeper));
        it.wake.notify_one();
        Interruptible { sleeper }
    }
}

impl Drop for Interruptible {
    fn drop(&mut self) {
        // Taking the lock orders this after any pthread_kill in flight.
        let it = interrupter();
        let _sleepers = it.sleepers.lock().unwrap_or_else(|p| p.into_inner());
        self.sleeper.gone.store(true, Ordering::SeqCst);
    }
}
