//! Relay threads: each runs its own event loop (a current-thread tokio
//! runtime with its own epoll), and every connection stays on the thread
//! it was given, so a relayed packet never changes threads.
//!
//! This is HAProxy's and nginx's shape (one poller per thread, a
//! connection bound to one), not tokio's work-stealing pool, where one
//! shared poller dispatches every socket's events and a woken task may be
//! stolen by the other thread. On 2 cores (`docs/benchmarks.md`) two such
//! threads relayed as many point selects as one thread, or up to 10 %
//! more; they let the gate use more than one core where there are more.
//!
//! A new connection goes to the thread with the fewest open connections,
//! which spreads persistent connections evenly however long each lives.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;

/// How long a stopping relay thread gives work it cannot cancel (a slot
/// being given back to Redis from a blocking thread).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The gate's relay threads. Dropping this stops them: their runtimes are
/// shut down, and connections still open on them are closed.
pub(crate) struct RelayThreads {
    threads: Arc<[RelayThread]>,
    stop: watch::Sender<bool>,
}

/// Where [`RelayThreads::spawn`] puts connections; cheap to clone into the
/// accept loops.
#[derive(Clone)]
pub(crate) struct Spreader {
    threads: Arc<[RelayThread]>,
}

struct RelayThread {
    handle: Handle,
    /// Connections this thread holds now.
    open: Arc<AtomicUsize>,
}

impl RelayThreads {
    /// Starts `n` threads named after the gate.
    pub(crate) fn start(n: usize, gate: &str) -> io::Result<RelayThreads> {
        let (stop, stopped) = watch::channel(false);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            threads.push(RelayThread {
                handle: runtime.handle().clone(),
                open: Arc::new(AtomicUsize::new(0)),
            });
            let mut stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("relay-{i}"))
                .spawn(move || {
                    runtime.block_on(async {
                        // Ends on `true` or when the sender is gone.
                        let _ = stopped.wait_for(|stop| *stop).await;
                    });
                    runtime.shutdown_timeout(SHUTDOWN_GRACE);
                })?;
            tracing::debug!(gate, thread = i, "relay thread started");
        }
        Ok(RelayThreads {
            threads: threads.into(),
            stop,
        })
    }

    /// What the accept loops hand connections to.
    pub(crate) fn spreader(&self) -> Spreader {
        Spreader {
            threads: self.threads.clone(),
        }
    }
}

impl Drop for RelayThreads {
    fn drop(&mut self) {
        // Not joined: this may run on a relay thread itself, and a thread
        // that stops drops its runtime on its own.
        self.stop.send_replace(true);
    }
}

impl Spreader {
    /// Runs the future `make` builds on the least busy relay thread.
    /// `make` runs on that thread, so sockets it registers belong to it.
    pub(crate) fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(thread) = self
            .threads
            .iter()
            .min_by_key(|t| t.open.load(Ordering::Relaxed))
        else {
            return;
        };
        thread.open.fetch_add(1, Ordering::Relaxed);
        let open = OpenOnThread(thread.open.clone());
        thread.handle.spawn(async move {
            let _open = open;
            make().await;
        });
    }
}

/// Counts a connection off its thread however its task ends.
struct OpenOnThread(Arc<AtomicUsize>);

impl Drop for OpenOnThread {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
