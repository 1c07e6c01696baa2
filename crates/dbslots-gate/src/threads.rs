//! Relay threads: each runs its own event loop (a current-thread tokio
//! runtime with its own epoll), and every connection stays on the thread
//! it was given, so a relayed packet never changes threads.
//!
//! This is HAProxy's and nginx's shape (one poller per thread, a
//! connection bound to one), not tokio's work-stealing pool, where one
//! shared poller dispatches every socket's events and a woken task may be
//! stolen by the other thread (which relayed no more than one thread).
//!
//! The thread that accepts (the one that runs `Gate::run`) relays too: a
//! new connection stays there unless a relay thread has fewer open
//! connections, so ties go to it. A client that connects, queries and
//! closes one after another (PHP without persistent connections) then
//! never pays a hand-over between threads, and persistent connections
//! still spread evenly however long each lives.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::net::{StdStream, Stream};

/// How long a stopping relay thread gives work it cannot cancel (a slot
/// being given back to Redis from a blocking thread).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The gate's relay threads. Dropping this stops them: their runtimes are
/// shut down, and connections still open on them are closed.
pub(crate) struct RelayThreads {
    spreader: Spreader,
    stop: watch::Sender<bool>,
    joins: Vec<std::thread::JoinHandle<()>>,
}

/// Picks the thread for each new connection; cheap to clone into the
/// accept loops.
#[derive(Clone)]
pub(crate) struct Spreader {
    threads: Arc<[RelayThread]>,
    /// Connections relayed by the accepting thread itself.
    here: Arc<AtomicUsize>,
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
        let mut joins = Vec::with_capacity(n);
        for i in 0..n {
            // The runtime is built on its own thread and only its handle
            // comes back: a runtime must not be dropped in async code, and
            // this runs inside `Gate::bind`.
            let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
            let mut stopped = stopped.clone();
            let join = std::thread::Builder::new()
                .name(format!("relay-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async {
                        // Ends on `true` or when the sender is gone.
                        let _ = stopped.wait_for(|stop| *stop).await;
                    });
                    runtime.shutdown_timeout(SHUTDOWN_GRACE);
                })?;
            let handle = handle_rx.recv().map_err(|_| {
                io::Error::other("a relay thread ended before its runtime started")
            })??;
            threads.push(RelayThread {
                handle,
                open: Arc::new(AtomicUsize::new(0)),
            });
            joins.push(join);
            tracing::debug!(gate, thread = i, "relay thread started");
        }
        Ok(RelayThreads {
            spreader: Spreader {
                threads: threads.into(),
                here: Arc::new(AtomicUsize::new(0)),
            },
            stop,
            joins,
        })
    }

    /// Stops the threads and waits until each has shut its runtime down
    /// (at most [`SHUTDOWN_GRACE`] for work it cannot cancel). Blocks.
    pub(crate) fn stop_and_join(mut self) {
        self.stop.send_replace(true);
        for join in std::mem::take(&mut self.joins) {
            let _ = join.join();
        }
    }

    /// What the accept loops hand connections to: one spreader for the
    /// gate, so the accepting thread's connections are counted once,
    /// whichever listener they came through.
    pub(crate) fn spreader(&self) -> Spreader {
        self.spreader.clone()
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
    /// Serves `stream` with the future `serve` makes, on the thread with
    /// the fewest open connections: this one (the accepting thread, which
    /// wins ties) or a relay thread. A stream moved to a relay thread is
    /// registered with that thread's event loop first; `serve` gets the
    /// error if that fails.
    pub(crate) fn spawn<F, Fut>(&self, stream: Stream, serve: F)
    where
        F: FnOnce(io::Result<Stream>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let here = self.here.load(Ordering::Relaxed);
        let relay = self
            .threads
            .iter()
            .min_by_key(|t| t.open.load(Ordering::Relaxed))
            .filter(|t| t.open.load(Ordering::Relaxed) < here);
        match relay {
            Some(thread) => {
                let open = OpenOnThread::new(&thread.open);
                let moved = stream.into_std();
                thread.handle.spawn(async move {
                    let _open = open;
                    serve(moved.and_then(StdStream::register)).await;
                });
            }
            None => {
                let open = OpenOnThread::new(&self.here);
                tokio::spawn(async move {
                    let _open = open;
                    serve(Ok(stream)).await;
                });
            }
        }
    }
}

/// Counts a connection on its thread until its task ends, however.
struct OpenOnThread(Arc<AtomicUsize>);

impl OpenOnThread {
    fn new(open: &Arc<AtomicUsize>) -> OpenOnThread {
        open.fetch_add(1, Ordering::Relaxed);
        OpenOnThread(open.clone())
    }
}

impl Drop for OpenOnThread {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
