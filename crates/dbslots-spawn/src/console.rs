//! The spawner's own stdout and stderr, written by one thread of their own.
//!
//! # Implementation Details
//!
//! Everything the spawner prints while it runs (workers' prefixed lines,
//! its own progress lines, the progress bar) goes through a queue to one
//! *console thread*, the only thread that writes to stdout and stderr and
//! the only one that touches the progress bar. The runtime thread that
//! reaps workers, frees slots, starts workers and handles signals never
//! writes to a terminal or a pipe, so a stalled reader (a pager left on a
//! page, XOFF, a slow ssh link, a full pipe) blocks the console thread and
//! nothing else.
//!
//! The queue is bounded by [`QUEUE_BYTES`] of workers' lines. A worker's
//! line that does not fit is dropped and counted (per stream); the workers
//! never wait for the spawner's output, so the fleet runs on at full speed
//! while the reader is away. As soon as the stream accepts writes again the
//! console thread says how many lines were lost, and the
//! [`Summary`](crate::Summary) counts them. The spawner's own lines (a
//! handful: stop steps, failures, periodic progress) are never dropped.
//!
//! The alternative, back-pressure on each worker's pipe, would keep every
//! line but stall every chatty worker (and so its slot) for as long as the
//! reader is away; `--log-dir` is the way to keep every line.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::ProgressBar;
use tokio::sync::oneshot;

/// Bytes of workers' lines queued at most; further lines are dropped and
/// counted until the console thread has taken the queue.
pub(crate) const QUEUE_BYTES: usize = 2 << 20;

/// How often the console thread redraws the progress bar.
const BAR_EVERY: Duration = Duration::from_millis(250);

/// Which of the spawner's streams a line goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Out,
    Err,
}

/// Lines of workers' output dropped because the spawner's stdout or
/// stderr did not keep up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Dropped {
    pub stdout: u64,
    pub stderr: u64,
}

/// What the bar shows: position and message, read by the console thread.
pub(crate) type BarStatus = Box<dyn Fn() -> (u64, String) + Send>;

struct Item {
    stream: Stream,
    bytes: Vec<u8>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    /// Bytes of workers' lines in `items`.
    bytes: usize,
    closing: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    dropped: [AtomicU64; 2],
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic of the console thread poisons the lock; the queue is
        // still consistent (every change is one push or one take).
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The handle the runtime side uses; cheap to clone, never blocks on I/O.
#[derive(Clone)]
pub(crate) struct Console {
    shared: Arc<Shared>,
}

/// The console thread; [`Writer::finish`] stops it.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    done: Option<oneshot::Receiver<()>>,
}

impl Console {
    /// Starts the console thread writing to the process's stdout and
    /// stderr, drawing `bar` (if any) from `status`.
    pub(crate) fn start(bar: Option<(ProgressBar, BarStatus)>) -> io::Result<(Console, Writer)> {
        Console::start_with(Box::new(io::stdout()), Box::new(io::stderr()), bar)
    }

    /// As [`Console::start`], writing to `out` and `err`.
    pub(crate) fn start_with(
        out: Box<dyn Write + Send>,
        err: Box<dyn Write + Send>,
        bar: Option<(ProgressBar, BarStatus)>,
    ) -> io::Result<(Console, Writer)> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            dropped: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        let (done_tx, done_rx) = oneshot::channel();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("dbslots-console".into())
            .spawn(move || {
                run(&thread_shared, [out, err], bar);
                let _ = done_tx.send(());
            })?;
        Ok((
            Console {
                shared: Arc::clone(&shared),
            },
            Writer {
                shared,
                thread: Some(thread),
                done: Some(done_rx),
            },
        ))
    }

    /// Queues `[index] ` + `bytes` (+ a newline when missing); drops and
    /// counts the line when the queue is full.
    pub(crate) fn worker_line(&self, index: u32, stream: Stream, bytes: &[u8]) {
        let mut line = Vec::with_capacity(bytes.len() + 16);
        let _ = write!(line, "[{index}] ");
        line.extend_from_slice(bytes);
        if !bytes.ends_with(b"\n") {
            line.push(b'\n');
        }
        let mut q = self.shared.lock();
        if q.closing {
            return;
        }
        if q.bytes + line.len() > QUEUE_BYTES {
            drop(q);
            self.shared.dropped[stream as usize].fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.bytes += line.len();
        q.items.push_back(Item {
            stream,
            bytes: line,
        });
        drop(q);
        self.shared.ready.notify_one();
    }

    /// Queues one of the spawner's own lines for stderr; never dropped.
    pub(crate) fn own_line(&self, text: &str) {
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(b'\n');
        let mut q = self.shared.lock();
        if q.closing {
            return;
        }
        q.items.push_back(Item {
            stream: Stream::Err,
            bytes,
        });
        drop(q);
        self.shared.ready.notify_one();
    }

    /// Lines dropped so far.
    #[cfg(test)]
    pub(crate) fn dropped(&self) -> Dropped {
        dropped(&self.shared)
    }
}

fn dropped(shared: &Shared) -> Dropped {
    Dropped {
        stdout: shared.dropped[0].load(Ordering::Relaxed),
        stderr: shared.dropped[1].load(Ordering::Relaxed),
    }
}

impl Writer {
    /// Lets the console thread write what is queued, then stops it. Waits
    /// until everything is written or `give_up` completes (a stalled
    /// reader); the thread is then left blocked in its write and dies with
    /// the process. Returns the lines dropped.
    pub(crate) async fn finish(mut self, give_up: impl Future<Output = ()>) -> Dropped {
        self.shared.lock().closing = true;
        self.shared.ready.notify_one();
        let done = self.done.take();
        let finished = async {
            if let Some(done) = done {
                let _ = done.await;
            }
        };
        tokio::select! {
            () = finished => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
            () = give_up => {
                tracing::debug!("the spawner's output is not read; not waiting for it");
            }
        }
        dropped(&self.shared)
    }
}

/// The console thread's loop.
fn run(
    shared: &Shared,
    mut streams: [Box<dyn Write + Send>; 2],
    bar: Option<(ProgressBar, BarStatus)>,
) {
    let mut broken = [false; 2];
    let mut reported = [0u64; 2];
    let mut batch: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    loop {
        let (items, closing) = {
            let mut q = shared.lock();
            while q.items.is_empty() && !q.closing {
                if bar.is_some() {
                    let (next, timeout) = shared
                        .ready
                        .wait_timeout(q, BAR_EVERY)
                        .unwrap_or_else(|e| e.into_inner());
                    q = next;
                    if timeout.timed_out() {
                        break;
                    }
                } else {
                    q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            }
            q.bytes = 0;
            (std::mem::take(&mut q.items), q.closing)
        };
        let write_all = |streams: &mut [Box<dyn Write + Send>; 2]| {
            for item in items {
                let which = item.stream as usize;
                // Keep the order across streams: flush the other stream's
                // lines before switching.
                let other = 1 - which;
                if !batch[other].is_empty() {
                    write_stream(
                        &mut streams[other],
                        &mut batch[other],
                        &mut broken[other],
                        other,
                    );
                }
                batch[which].extend_from_slice(&item.bytes);
            }
            for which in 0..2 {
                write_stream(
                    &mut streams[which],
                    &mut batch[which],
                    &mut broken[which],
                    which,
                );
            }
            // Say how many lines were lost once the stream takes writes
            // again.
            for (which, seen) in reported.iter_mut().enumerate() {
                let now = shared.dropped[which].load(Ordering::Relaxed);
                if now > *seen && !broken[1] {
                    let name = if which == 0 { "stdout" } else { "stderr" };
                    let mut note = format!(
                        "dbslots spawn: dropped {} lines of workers' output to {name}: it was not read fast enough (output to a log directory keeps every line)\n",
                        now - *seen
                    )
                    .into_bytes();
                    *seen = now;
                    write_stream(&mut streams[1], &mut note, &mut broken[1], 1);
                }
            }
        };
        match &bar {
            Some((bar, status)) => {
                let (pos, message) = status();
                bar.set_position(pos);
                bar.set_message(message);
                if closing {
                    bar.finish_and_clear();
                    write_all(&mut streams);
                } else {
                    bar.suspend(|| write_all(&mut streams));
                }
            }
            None => write_all(&mut streams),
        }
        if closing && shared.lock().items.is_empty() {
            return;
        }
    }
}

/// Writes and clears `buf`; after a failure (a closed pipe) the stream's
/// lines are dropped.
fn write_stream(w: &mut Box<dyn Write + Send>, buf: &mut Vec<u8>, broken: &mut bool, which: usize) {
    if buf.is_empty() {
        return;
    }
    if !*broken && let Err(e) = w.write_all(buf).and_then(|()| w.flush()) {
        *broken = true;
        let name = if which == 0 { "stdout" } else { "stderr" };
        tracing::warn!(stream = name, error = %e, "cannot write the spawner's output; dropping it from now on");
    }
    buf.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that blocks until `open` is set, then appends to `out`.
    #[derive(Clone)]
    struct Gate {
        open: Arc<(Mutex<bool>, Condvar)>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cv) = &*self.open;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn gate(open: bool) -> Gate {
        Gate {
            open: Arc::new((Mutex::new(open), Condvar::new())),
            out: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn lines_keep_their_order_and_prefix() {
        let (out, err) = (gate(true), gate(true));
        let (console, writer) =
            Console::start_with(Box::new(out.clone()), Box::new(err.clone()), None).unwrap();
        console.worker_line(1, Stream::Out, b"a\n");
        console.worker_line(2, Stream::Err, b"b");
        console.own_line("dbslots spawn: hello");
        let dropped = runtime().block_on(writer.finish(std::future::pending()));
        assert_eq!(dropped, Dropped::default());
        assert_eq!(&*out.out.lock().unwrap(), b"[1] a\n");
        assert_eq!(&*err.out.lock().unwrap(), b"[2] b\ndbslots spawn: hello\n");
    }

    #[test]
    fn a_stalled_reader_drops_and_counts_lines_and_never_blocks_the_caller() {
        let (out, err) = (gate(false), gate(true));
        let (console, writer) =
            Console::start_with(Box::new(out.clone()), Box::new(err.clone()), None).unwrap();
        let line = vec![b'x'; 999];
        let started = std::time::Instant::now();
        // Three times the queue: the console thread holds one queue's worth
        // blocked in its write, the queue takes another, the rest drops.
        let n = 3 * QUEUE_BYTES / 1000 + 10;
        for _ in 0..n {
            console.worker_line(0, Stream::Out, &line);
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        let dropped = console.dropped();
        assert!(dropped.stdout > 0, "{dropped:?}");
        assert_eq!(dropped.stderr, 0);
        // Giving up on a stalled reader returns at once.
        let rt = runtime();
        let given_up = rt.block_on(async {
            writer
                .finish(tokio::time::sleep(Duration::from_millis(50)))
                .await
        });
        assert_eq!(given_up.stdout, dropped.stdout);
        // Once the reader is back, what was queued arrives, then the count.
        let (lock, cv) = &*out.open;
        *lock.lock().unwrap() = true;
        cv.notify_all();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = String::from_utf8_lossy(&err.out.lock().unwrap()).into_owned();
            if text.contains("dropped") {
                assert!(
                    text.contains(&format!("dropped {} lines", dropped.stdout)),
                    "{text}"
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no note about dropped lines"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Every line was either written or counted.
        wait_until(|| out.out.lock().unwrap().len() as u64 / 1004 + dropped.stdout == n as u64);
    }

    fn wait_until(mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
