//! The spawner: starts workers, supervises them, stops them.
//!
//! # Implementation Details
//!
//! A run is three futures polled together by the caller's task:
//!
//! * the *starter* walks the worker indices in order. For each worker that
//!   needs a slot it waits in the pool's FIFO queue (`acquire`), then
//!   starts the worker and hands the `Slot` guard to the worker's
//!   supervisor task, then yields once so that workers that exited
//!   meanwhile are reaped and their slots freed (otherwise zombies would
//!   hold slots until the pool is full). A lock-based slot goes to the
//!   worker as its stdin, a duplicate of the locked descriptor: no
//!   `pre_exec` hook, so std starts the worker with `posix_spawn` (a
//!   vfork), not fork + exec (see "Spawning workers" in
//!   `docs/benchmarks.md`). Only workers that get a death signal
//!   (`PR_SET_PDEATHSIG`: batch mode, and lease-based slots without
//!   `hold_slot`) need the hook and take the slower path. The starter is
//!   the only place that starts processes, so every worker is started from
//!   the thread that polls [`Spawner::run`], which matters for the death
//!   signal (it fires when the forking *thread* exits);
//! * one *supervisor* task per running worker waits for the process,
//!   relays the stop phase to the worker's process group as signals, and
//!   drops the `Slot` once the worker is reaped and its process group is
//!   empty (`group.rs`), never before: a slot is free only once every
//!   process that may use it is gone. It then streams the remaining output and
//!   reports a small `Finished` record;
//! * the *collector* turns `Finished` records into the joblog, the progress
//!   display and the tallies of the summary. Memory per worker is a few
//!   hundred bytes while it runs (plus 8 KiB of pipe buffers in prefixed
//!   mode) and 8 bytes (its run time) after.
//!
//! Stopping is a `watch` channel holding a phase (`Running` → `Terminate` →
//! `Kill`) that only moves forward; the starter stops at any phase but
//! `Running`, and each supervisor sends the signal of each new phase to its
//! worker's process group exactly once. A worker is signalled only while it
//! is not yet reaped, so its process-group id cannot have been reused.

use std::convert::Infallible;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dbslots_core::{Pool, Slot};
use tokio::process::{Child, Command};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};

use crate::console::{BarStatus, Console, Stream};
use crate::error::{Error, Result};
use crate::group;
use crate::joblog::{Entry, Joblog};
use crate::options::{Mode, Output, SpawnOptions};
use crate::output::pump;
use crate::progress::{self, Counts, Reporter};
use crate::summary::{Durations, StopReason, Summary, signal_name};
use crate::template::{
    ENV_JOB_ID, ENV_POOL, ENV_SLOT, ENV_WORKER_COUNT, ENV_WORKER_INDEX, Template,
};

/// How long a worker's output is still read after the worker exited (its
/// children may hold the pipes open); after that the pipes are closed.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// How long output is still written after a stop once every worker is
/// reaped (a stalled reader must not keep a stopped spawner alive).
const OUTPUT_AFTER_STOP: Duration = Duration::from_millis(300);

/// How soon after a worker's exit its group is checked again when
/// processes it started still run; the pause doubles up to
/// [`LINGER_POLL_MAX`]. Only workers that leave processes behind pay this.
const LINGER_POLL_FIRST: Duration = Duration::from_millis(10);
const LINGER_POLL_MAX: Duration = Duration::from_millis(200);

/// How often the pool is sampled for `peak_slots` when workers take their
/// own slots.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// How often a worker's supervisor looks whether its slot's lease (Redis
/// pool) was lost; the look is local (no network).
const LEASE_POLL: Duration = Duration::from_millis(20);

/// Failed workers reported one line each; further failures are only counted
/// (summary, joblog), so that 1000 failures do not flood the terminal.
const FAILURE_LINES: u32 = 10;

/// The stop phase; it only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    Terminate,
    Kill,
}

#[derive(Debug, Clone, Copy)]
struct StopState {
    phase: Phase,
    signal: Option<i32>,
}

/// Stops a running [`Spawner`] from anywhere (another task or thread).
#[derive(Debug, Clone)]
pub struct Stopper {
    tx: Arc<watch::Sender<StopState>>,
}

impl Stopper {
    /// The first call starts an orderly stop: nothing new starts, every
    /// running worker's process group gets SIGTERM, and SIGKILL after the
    /// grace period. Any further call sends SIGKILL at once. `signal` is
    /// the signal being obeyed; it decides the exit status (128 + signal).
    pub fn stop(&self, signal: i32) {
        self.tx.send_modify(|s| {
            if s.phase == Phase::Running {
                s.phase = Phase::Terminate;
                s.signal = Some(signal);
            } else {
                s.phase = Phase::Kill;
            }
        });
    }
}

/// Starts `N` workers from a [`Template`] under a pool's capacity.
///
/// See the [crate documentation](crate) for the modes, who holds the
/// slots, and how a run stops.
#[derive(Debug)]
pub struct Spawner {
    pool: Pool,
    template: Template,
    options: SpawnOptions,
    stop: Arc<watch::Sender<StopState>>,
}

impl Spawner {
    /// A spawner of `options.workers` workers running `template`, taking
    /// slots from (or reporting on) `pool`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOptions`] when the options are out of range.
    pub fn new(pool: Pool, template: Template, options: SpawnOptions) -> Result<Spawner> {
        options.validate()?;
        let (tx, _) = watch::channel(StopState {
            phase: Phase::Running,
            signal: None,
        });
        Ok(Spawner {
            pool,
            template,
            options,
            stop: Arc::new(tx),
        })
    }

    /// A handle that stops the run.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            tx: self.stop.clone(),
        }
    }

    /// Starts the workers, waits for all of them, and sums the run up.
    ///
    /// Must be polled inside a tokio runtime with I/O, time and signals
    /// enabled. Workers are started from the thread that polls this future:
    /// do not poll it from a thread that may exit before the workers do
    /// (such as a `spawn_blocking` thread), or the kernel would signal the
    /// workers that have a death signal (see the crate documentation) as if
    /// the spawner had died.
    ///
    /// # Errors
    ///
    /// Only problems before any worker starts: the joblog or the log
    /// directory cannot be created, or the signal handlers cannot be
    /// installed. Later problems end the run early and are reported in
    /// [`Summary::stop`].
    pub async fn run(self) -> Result<Summary> {
        raise_open_file_limit();
        group::become_subreaper();
        let joblog = match &self.options.joblog {
            Some(path) => Some(Joblog::create(path)?),
            None => None,
        };
        if let Output::LogDir(dir) = &self.options.output {
            std::fs::create_dir_all(dir).map_err(|source| Error::LogDir {
                path: dir.clone(),
                source,
            })?;
        }
        let signals = if self.options.handle_signals {
            Some(Signals::new().map_err(|source| Error::Signals { source })?)
        } else {
            None
        };
        let mut signals = signals;
        let capacity = self.pool.capacity();
        let counters = Arc::new(Counters::default());
        let (bar, lines) = progress::choose(self.options.progress);
        let bar = bar.then(|| {
            let counters = Arc::clone(&counters);
            let status: BarStatus =
                Box::new(move || progress::bar_status(&counters.snapshot(), capacity));
            (progress::new_bar(self.options.workers), status)
        });
        let shows_bar = bar.is_some();
        let (console, writer) = Console::start(bar).map_err(|source| Error::Console { source })?;
        let reporter = Reporter::new(
            console.clone(),
            shows_bar,
            lines,
            self.options.workers,
            capacity,
        );
        let pool_addr = self.pool.addr().to_string();
        let ctx = Arc::new(Ctx {
            pool: self.pool,
            pool_addr,
            template: self.template,
            options: self.options,
            stop: self.stop,
            counters,
            reporter,
            console,
        });
        tracing::info!(
            pool = %ctx.pool_addr,
            workers = ctx.options.workers,
            mode = ?ctx.options.mode,
            hold_slot = ctx.options.hold_slot,
            "spawning workers"
        );

        let started_at = Instant::now();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let main = async {
            tokio::join!(
                ctx.start_all(done_tx),
                ctx.collect(done_rx, joblog, started_at)
            )
        };
        let (start_stop, tally) = tokio::select! {
            r = main => r,
            never = ctx.watch_stop(&mut signals) => match never {},
        };
        let wall = started_at.elapsed();
        // Everything is reaped; what is left is output. Wait for it unless
        // nobody reads it: after a stop, for at most `OUTPUT_AFTER_STOP`;
        // at any time, no longer than the next signal.
        let stopped = ctx.stopping();
        let give_up = async {
            let next_signal = async {
                match &mut signals {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            if stopped {
                tokio::select! {
                    () = next_signal => {}
                    () = tokio::time::sleep(OUTPUT_AFTER_STOP) => {}
                }
            } else {
                next_signal.await;
            }
        };
        let dropped = writer.finish(give_up).await;

        let signal = ctx.stop.borrow().signal;
        let stop = match signal {
            Some(sig) => Some(StopReason::Signal(sig)),
            None => start_stop,
        };
        let c = &ctx.counters;
        let counted = c.peak_slots.load(Ordering::Relaxed);
        let summary = Summary {
            workers: ctx.options.workers,
            started: c.started.load(Ordering::Relaxed),
            succeeded: tally.succeeded,
            failed: tally.failed,
            killed: tally.killed,
            p50: tally.p50,
            p95: tally.p95,
            max: tally.max,
            peak_slots: counted.max(tally.sampled_peak),
            peak_slots_sampled: !ctx.options.takes_slots(),
            capacity,
            peak_running: c.peak_running.load(Ordering::Relaxed),
            wall,
            mode: ctx.options.mode,
            hold_slot: ctx.options.hold_slot,
            stop,
            dropped_lines: dropped.stdout + dropped.stderr,
        };
        tracing::info!(
            started = summary.started,
            succeeded = summary.succeeded,
            failed = summary.failed,
            killed = summary.killed,
            wall_s = wall.as_secs_f64(),
            "spawn finished"
        );
        Ok(summary)
    }
}

#[derive(Debug, Default)]
struct Counters {
    started: AtomicU32,
    running: AtomicU32,
    peak_running: AtomicU32,
    slots: AtomicU32,
    peak_slots: AtomicU32,
    finished: AtomicU32,
    failed: AtomicU32,
    waiting: AtomicBool,
}

impl Counters {
    fn snapshot(&self) -> Counts {
        Counts {
            finished: self.finished.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            slots: self.slots.load(Ordering::Relaxed),
            waiting_for_slot: self.waiting.load(Ordering::Relaxed),
        }
    }
}

/// What a supervisor reports about its worker.
struct Finished {
    index: u32,
    start_unix: f64,
    runtime: Duration,
    /// Exit status; 0 when killed by a signal, -1 when unknown.
    exitval: i32,
    /// The signal that killed the worker, 0 if none.
    signal: i32,
}

/// The collector's results.
struct Tally {
    succeeded: u32,
    failed: u32,
    killed: u32,
    p50: Option<Duration>,
    p95: Option<Duration>,
    max: Option<Duration>,
    sampled_peak: u32,
}

enum Flow {
    /// Go on with the next worker.
    Next,
    /// A stop was requested; start nothing more.
    Stopped,
    /// Something failed; start nothing more.
    Failed(StopReason),
}

struct Ctx {
    pool: Pool,
    pool_addr: String,
    template: Template,
    options: SpawnOptions,
    stop: Arc<watch::Sender<StopState>>,
    counters: Arc<Counters>,
    reporter: Reporter,
    console: Console,
}

impl Ctx {
    fn stopping(&self) -> bool {
        self.stop.borrow().phase != Phase::Running
    }

    /// Starts every worker in the order of the mode; returns why it stopped
    /// early, unless it was told to.
    async fn start_all(
        self: &Arc<Self>,
        done: mpsc::UnboundedSender<Finished>,
    ) -> Option<StopReason> {
        let n = self.options.workers;
        match self.options.mode {
            Mode::Adaptive => {
                for index in 0..n {
                    match self.start_one(index, &done).await {
                        Flow::Next => {}
                        Flow::Stopped => return None,
                        Flow::Failed(reason) => return Some(reason),
                    }
                }
            }
            Mode::Batches { size, delay } => {
                let size = size.get();
                let batches = n.div_ceil(size);
                let mut stop = self.stop.subscribe();
                for batch in 0..batches {
                    if batch > 0 {
                        tokio::select! {
                            biased;
                            _ = stop.wait_for(|s| s.phase != Phase::Running) => return None,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                    let first = batch * size;
                    let last = (first + size).min(n) - 1;
                    for index in first..=last {
                        match self.start_one(index, &done).await {
                            Flow::Next => {}
                            Flow::Stopped => return None,
                            Flow::Failed(reason) => return Some(reason),
                        }
                    }
                    tracing::info!(batch = batch + 1, batches, first, last, "batch started");
                    if self.reporter.shows_batches() {
                        self.reporter
                            .batch(batch + 1, batches, first, last, self.pool.stats());
                    }
                }
            }
        }
        None
    }

    /// Takes a slot if needed, then starts worker `index`.
    async fn start_one(
        self: &Arc<Self>,
        index: u32,
        done: &mpsc::UnboundedSender<Finished>,
    ) -> Flow {
        if self.stopping() {
            return Flow::Stopped;
        }
        let slot = if self.options.takes_slots() {
            let mut stop = self.stop.subscribe();
            self.counters.waiting.store(true, Ordering::Relaxed);
            let acquired = tokio::select! {
                biased;
                _ = stop.wait_for(|s| s.phase != Phase::Running) => return Flow::Stopped,
                r = self.pool.acquire() => r,
            };
            self.counters.waiting.store(false, Ordering::Relaxed);
            match acquired {
                Ok(slot) => Some(slot),
                Err(e) => {
                    tracing::error!(pool = %self.pool_addr, worker = index, error = %e, "cannot take a slot; starting no further workers");
                    let message = e.to_string();
                    self.reporter
                        .line(&format!("cannot take a slot for worker {index}: {message}"));
                    return Flow::Failed(StopReason::Pool { message });
                }
            }
        } else {
            None
        };
        if self.stopping() {
            return Flow::Stopped;
        }
        match self.spawn_worker(index, slot.as_ref()) {
            Ok(child) => {
                self.supervise(child, index, slot, done.clone());
                // Let the supervisors reap the workers that exited meanwhile
                // and give their slots back. Without this, a free slot makes
                // `acquire` ready at once, the starter never yields,
                // and nobody is reaped until the pool is full: slots held by
                // zombies, and every further start on the slow path of the
                // pool (a waiter file, a thread, a futex wake-up).
                tokio::task::yield_now().await;
                Flow::Next
            }
            Err(reason) => {
                tracing::error!(worker = index, error = %reason, "cannot start worker; starting no further workers");
                self.reporter.line(&reason.to_string());
                Flow::Failed(reason)
            }
        }
    }

    /// Builds and starts worker `index`'s process.
    fn spawn_worker(&self, index: u32, slot: Option<&Slot>) -> Result<Child, StopReason> {
        let n = self.options.workers;
        let fail = |e: io::Error, what: &str| {
            let (exit_code, hint) = match e.kind() {
                io::ErrorKind::NotFound => (127, "check the command and PATH"),
                io::ErrorKind::PermissionDenied => (126, "make the program executable"),
                _ => match e.raw_os_error() {
                    Some(libc::EMFILE) | Some(libc::ENFILE) => (
                        126,
                        "too many open files: raise the limit (ulimit -n) or use --log-dir, which needs no pipes",
                    ),
                    Some(libc::EAGAIN) => (
                        126,
                        "the process limit is reached: raise it (ulimit -u) or start fewer workers at once",
                    ),
                    _ => (126, "check the command and the system's limits"),
                },
            };
            StopReason::StartFailed {
                index,
                message: format!(
                    "cannot start worker {index} ({}): {what}: {e}; {hint}",
                    self.template.display(index, n)
                ),
                exit_code,
            }
        };

        let mut cmd = Command::new(self.template.program());
        cmd.args(self.template.args(index, n))
            .env(ENV_WORKER_INDEX, index.to_string())
            .env(ENV_WORKER_COUNT, n.to_string())
            // With its credentials, so the worker can open the pool.
            .env(ENV_POOL, self.pool.addr().to_unredacted_string())
            .env_remove(ENV_SLOT)
            .process_group(0)
            .kill_on_drop(false);
        match &self.options.job_id {
            Some(id) => cmd.env(ENV_JOB_ID, id),
            None => cmd.env_remove(ENV_JOB_ID),
        };
        match &self.options.output {
            Output::Prefixed => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            Output::LogDir(dir) => {
                let path = dir.join(format!("{index}.log"));
                let file = std::fs::File::create(&path)
                    .map_err(|e| fail(e, &format!("creating {}", path.display())))?;
                let copy = file
                    .try_clone()
                    .map_err(|e| fail(e, &format!("duplicating {}", path.display())))?;
                cmd.stdout(file).stderr(copy);
            }
        }
        // The slot goes to the worker as its stdin: a duplicate of the
        // locked descriptor (the same open file description, so the same
        // lock) of an empty read-only file, which reads as end of file like
        // /dev/null. The worker then holds the slot for its whole life, even
        // if the spawner dies. No `pre_exec` hook is needed, so std starts
        // the worker with posix_spawn (vfork) rather than fork + exec; the
        // parent's copy closes with `cmd`. The spawner's own guard stays
        // with the supervisor until the worker is reaped: dropping it would
        // unlock the shared description and free the slot under the worker.
        let handed_over = match slot {
            Some(slot) => {
                cmd.envs(slot.child_env());
                slot.lock_fd_for_child()
                    .map_err(|e| fail(io::Error::other(e.to_string()), "handing over the slot"))?
            }
            None => None,
        };
        let death_signal = match (slot, &handed_over) {
            // The worker holds its slot itself: if the spawner dies, the
            // slot stays held until the worker exits. Nothing to do.
            (Some(_), Some(_)) => None,
            // A lease (Redis pool) cannot be inherited: it lives only while
            // the spawner renews it. Unless told to let workers outlive it
            // (`hold_slot`), a worker must not outlive its slot.
            (Some(_), None) if self.options.hold_slot => None,
            (Some(_), None) => Some(libc::SIGKILL),
            // Workers take their own slots (batches): no orphans.
            (None, _) => Some(libc::SIGTERM),
        };
        match handed_over {
            Some(fd) => cmd.stdin(Stdio::from(fd)),
            None => cmd.stdin(Stdio::null()),
        };
        // Prefixed output goes through pipes to this process: if it dies,
        // a worker's next line would kill the worker with SIGPIPE. Workers
        // start with SIGPIPE ignored instead (their writes then fail with
        // EPIPE), so that they can run to their end. std resets SIGPIPE to
        // its default in children, so this needs the hook (fork + exec);
        // workers with --log-dir keep posix_spawn.
        let ignore_sigpipe = matches!(self.options.output, Output::Prefixed);
        if death_signal.is_some() || ignore_sigpipe {
            // SAFETY: getpid is async-signal-safe and is called here, in the
            // parent.
            let parent = unsafe { libc::getpid() };
            // SAFETY: the closure runs between fork and exec and only makes
            // async-signal-safe calls (signal, prctl, getppid, _exit); it
            // allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    if ignore_sigpipe && libc::signal(libc::SIGPIPE, libc::SIG_IGN) == libc::SIG_ERR
                    {
                        return Err(io::Error::last_os_error());
                    }
                    if let Some(sig) = death_signal {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                        // The spawner died before prctl: do not run orphaned.
                        if libc::getppid() != parent {
                            libc::_exit(128 + sig);
                        }
                    }
                    Ok(())
                });
            }
        }
        cmd.spawn().map_err(|e| fail(e, "spawning"))
    }

    /// Hands a started worker to its supervisor task.
    fn supervise(
        self: &Arc<Self>,
        mut child: Child,
        index: u32,
        slot: Option<Slot>,
        done: mpsc::UnboundedSender<Finished>,
    ) {
        let started = Instant::now();
        let start_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        // A child that is not reaped has an id.
        let pid = child.id().unwrap_or(0);
        let c = &self.counters;
        c.started.fetch_add(1, Ordering::Relaxed);
        let running = c.running.fetch_add(1, Ordering::Relaxed) + 1;
        c.peak_running.fetch_max(running, Ordering::Relaxed);
        let slot_index = slot.as_ref().map(Slot::index);
        if let Some(slot) = &slot {
            // The worker holds the slot (or, for a lease, uses it): status
            // shows the worker, not the spawner.
            slot.set_holder_pid(pid);
            let held = c.slots.fetch_add(1, Ordering::Relaxed) + 1;
            c.peak_slots.fetch_max(held, Ordering::Relaxed);
        }
        tracing::debug!(worker = index, pid, slot = ?slot_index, "worker started");

        let ctx = self.clone();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        tokio::spawn(async move {
            let (exited_tx, exited_rx) = oneshot::channel::<()>();
            let mut stop = ctx.stop.subscribe();
            let pgid = libc::pid_t::try_from(pid).unwrap_or(0);
            // A lease (Redis pool) can be lost while the worker runs: then
            // the worker is stopped (SIGTERM, SIGKILL half the lease's
            // safety margin later) before the server can give the slot to
            // anyone else, unless `hold_slot` lets it run on.
            let lease_grace = match &slot {
                Some(_) if !ctx.options.hold_slot => ctx.pool.lease_margin().map(|m| m / 2),
                _ => None,
            };
            let waiter = async {
                let mut sent = Phase::Running;
                let mut kill_at: Option<Instant> = None;
                let status = loop {
                    let wanted = stop.borrow_and_update().phase;
                    if wanted > sent {
                        signal_phase(pgid, wanted, index);
                        sent = wanted;
                    }
                    tokio::select! {
                        status = child.wait() => break status,
                        changed = stop.changed() => if changed.is_err() {
                            break child.wait().await;
                        },
                        () = tokio::time::sleep(LEASE_POLL), if lease_grace.is_some() && sent < Phase::Kill => {
                            let lost = slot.as_ref().is_some_and(|s| s.wait_lost(Duration::ZERO));
                            match (kill_at, lease_grace) {
                                (None, Some(grace)) if lost => {
                                    tracing::error!(worker = index, pid, "the worker's slot lease was lost; stopping it (SIGTERM, then SIGKILL in {grace:?})");
                                    if sent < Phase::Terminate {
                                        signal_phase(pgid, Phase::Terminate, index);
                                        sent = Phase::Terminate;
                                    }
                                    kill_at = Some(Instant::now() + grace);
                                }
                                (Some(at), _) if Instant::now() >= at => {
                                    signal_phase(pgid, Phase::Kill, index);
                                    sent = Phase::Kill;
                                }
                                _ => {}
                            }
                        }
                    }
                };
                let runtime = started.elapsed();
                // The worker is reaped; processes it started may still use
                // its slot. Keep the slot (and relay the stop phases to
                // them) until none of its group is left.
                if slot.is_some() {
                    let mut pause = LINGER_POLL_FIRST;
                    let mut announced = false;
                    while group::alive(pgid) {
                        if !announced {
                            announced = true;
                            tracing::debug!(
                                worker = index,
                                pid,
                                "the worker exited but processes of its group still run; keeping its slot until they end"
                            );
                        }
                        let wanted = stop.borrow_and_update().phase;
                        if wanted > sent {
                            signal_phase(pgid, wanted, index);
                            sent = wanted;
                        }
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            _ = stop.changed() => {}
                        }
                        pause = (pause * 2).min(LINGER_POLL_MAX);
                    }
                }
                // Reaped, and nothing of its group left: only now may the
                // slot go to the next worker.
                if let Some(slot) = slot {
                    drop(slot);
                    ctx.counters.slots.fetch_sub(1, Ordering::Relaxed);
                }
                ctx.counters.running.fetch_sub(1, Ordering::Relaxed);
                let _ = exited_tx.send(());
                (status, runtime)
            };
            let readers = async {
                let out = async {
                    if let Some(r) = stdout {
                        pump(r, index, Stream::Out, &ctx.console).await;
                    }
                };
                let err = async {
                    if let Some(r) = stderr {
                        pump(r, index, Stream::Err, &ctx.console).await;
                    }
                };
                let both = async { tokio::join!(out, err) };
                tokio::select! {
                    _ = both => {}
                    _ = async {
                        let _ = exited_rx.await;
                        tokio::time::sleep(DRAIN_AFTER_EXIT).await;
                    } => {
                        tracing::debug!(worker = index, "output still open after the worker exited; no longer read");
                    }
                }
            };
            let ((status, runtime), ()) = tokio::join!(waiter, readers);
            let (exitval, signal) = match status {
                Ok(s) => match (s.code(), s.signal()) {
                    (Some(code), _) => (code, 0),
                    (None, Some(sig)) => (0, sig),
                    (None, None) => (-1, 0),
                },
                Err(e) => {
                    tracing::error!(worker = index, pid, error = %e, "cannot read the worker's exit status");
                    (-1, 0)
                }
            };
            tracing::debug!(
                worker = index,
                pid,
                exitval,
                signal,
                runtime_s = runtime.as_secs_f64(),
                "worker finished"
            );
            let _ = done.send(Finished {
                index,
                start_unix,
                runtime,
                exitval,
                signal,
            });
        });
    }

    /// Receives every `Finished` record until all workers are done.
    async fn collect(
        &self,
        mut done: mpsc::UnboundedReceiver<Finished>,
        mut joblog: Option<Joblog>,
        started_at: Instant,
    ) -> Tally {
        let sample = !self.options.takes_slots();
        let every = if sample {
            SAMPLE_EVERY
        } else {
            self.options.progress_interval
        };
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_line = started_at;
        let mut durations = Durations::default();
        let (mut succeeded, mut failed, mut killed, mut sampled_peak) = (0, 0, 0, 0);
        let n = self.options.workers;
        loop {
            tokio::select! {
                finished = done.recv() => {
                    let Some(f) = finished else { break };
                    durations.push(f.runtime);
                    let command = self.template.display(f.index, n);
                    if f.signal != 0 {
                        killed += 1;
                    } else if f.exitval == 0 {
                        succeeded += 1;
                    } else {
                        failed += 1;
                    }
                    if f.signal != 0 || f.exitval != 0 {
                        let failures = self.counters.failed.fetch_add(1, Ordering::Relaxed) + 1;
                        let how = if f.signal != 0 {
                            format!("was killed by {}", signal_name(f.signal))
                        } else {
                            format!("exited with status {}", f.exitval)
                        };
                        if failures <= FAILURE_LINES {
                            self.reporter.line(&format!("worker {} {how}: {command}", f.index));
                        }
                        if failures == FAILURE_LINES {
                            self.reporter.line("further failures are only counted (see the summary and the joblog)");
                        }
                    }
                    if let Some(log) = &mut joblog {
                        log.record(&Entry {
                            index: f.index,
                            start_unix: f.start_unix,
                            runtime: f.runtime,
                            exitval: f.exitval,
                            signal: f.signal,
                            command: &command,
                        });
                    }
                    self.counters.finished.fetch_add(1, Ordering::Relaxed);
                            }
                _ = tick.tick() => {
                    if sample
                        && let Ok(stats) = self.pool.stats()
                    {
                        sampled_peak = sampled_peak.max(stats.active);
                    }
                    if self.options.mode == Mode::Adaptive
                        && last_line.elapsed() >= self.options.progress_interval
                    {
                        last_line = Instant::now();
                        self.reporter.periodic(&self.counters.snapshot());
                    }
                }
            }
        }
        let (p, max) = durations.percentiles(&[50.0, 95.0]);
        Tally {
            succeeded,
            failed,
            killed,
            p50: p[0],
            p95: p[1],
            max,
            sampled_peak,
        }
    }

    /// Obeys signals and the grace period; never returns.
    async fn watch_stop(&self, signals: &mut Option<Signals>) -> Infallible {
        let stopper = Stopper {
            tx: self.stop.clone(),
        };
        let mut rx = self.stop.subscribe();
        let mut announced = Phase::Running;
        let mut kill_at: Option<tokio::time::Instant> = None;
        loop {
            let state = *rx.borrow_and_update();
            if state.phase > announced {
                let running = self.counters.running.load(Ordering::Relaxed);
                match state.phase {
                    Phase::Terminate => {
                        let why = state.signal.map(signal_name).unwrap_or_default();
                        self.reporter.line(&format!(
                            "{why} received: starting no new workers; sending SIGTERM to {running} running workers, SIGKILL in {:.1} s (again to kill now)",
                            self.options.grace.as_secs_f64()
                        ));
                        tracing::warn!(signal = ?state.signal, running, "stopping workers");
                        kill_at = Some(tokio::time::Instant::now() + self.options.grace);
                    }
                    Phase::Kill => {
                        self.reporter
                            .line(&format!("sending SIGKILL to {running} running workers"));
                        tracing::warn!(running, "killing workers");
                        kill_at = None;
                    }
                    Phase::Running => {}
                }
                announced = state.phase;
            }
            let grace_over = async {
                match kill_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let next_signal = async {
                match signals {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                sig = next_signal => stopper.stop(sig),
                changed = rx.changed() => if changed.is_err() {
                    std::future::pending::<()>().await;
                },
                _ = grace_over => {
                    kill_at = None;
                    self.stop.send_modify(|s| s.phase = Phase::Kill);
                }
            }
        }
    }
}

/// Sends the signal of `phase` to the worker's process group (the worker
/// and every process it started that stayed in its group).
fn signal_phase(pgid: libc::pid_t, phase: Phase, index: u32) {
    let sig = match phase {
        Phase::Running => return,
        Phase::Terminate => libc::SIGTERM,
        Phase::Kill => libc::SIGKILL,
    };
    let reached = group::signal(pgid, sig);
    tracing::debug!(
        worker = index,
        pgid,
        signal = sig,
        reached,
        "signalled the worker's group"
    );
}

/// SIGINT, SIGTERM and SIGHUP as one stream.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}

/// Raises the soft limit on open files to the hard limit: each running
/// worker needs up to three descriptors (two pipes and a pidfd).
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::debug!(old, new = lim.rlim_cur, "raised the open-file limit");
            }
        }
    }
}
