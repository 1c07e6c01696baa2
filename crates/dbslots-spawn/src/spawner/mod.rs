//! The spawner: starts workers, supervises them, stops them. This file
//! holds [`Spawner::run`] and the state the parts share; `start.rs` (the
//! starter), `process.rs` (a worker's process: started by std or by
//! `posix_spawn`, and waited for), `supervise.rs` (one task per worker),
//! `collect.rs` (the
//! collector), `stop.rs` (phases and signals) and `stopped.rs` (workers
//! stopped by a signal) hold the parts.
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
//!   `pre_exec` hook, so the worker starts with `posix_spawn` (a vfork),
//!   not fork + exec (see "Spawning workers" in `docs/benchmarks.md`):
//!   std's, or, with prefixed output (SIGPIPE left ignored, which std
//!   cannot do without the hook), the one `process.rs` calls. Only
//!   workers that get a death signal (`PR_SET_PDEATHSIG`: batch mode, and
//!   lease-based slots without `hold_slot`) need the hook and take the
//!   slower path. The starter is
//!   the only place that starts processes, so every worker is started from
//!   the thread that polls [`Spawner::run`], which matters for the death
//!   signal (it fires when the forking *thread* exits). A worker with a
//!   death signal for a lease also registers its process group with the
//!   keeper (`keeper.rs`) from its hook, which kills the group if the
//!   spawner dies;
//! * one *supervisor* task per running worker waits for the process,
//!   relays the stop phase to the worker's process group as signals, and
//!   gives the `Slot` back once the worker is reaped and its process group is
//!   empty (`group.rs`), never before: a slot is free only once every
//!   process that may use it is gone (the keeper forgets the group just
//!   before), and one that left the group but kept the slot's descriptor
//!   keeps the slot until it closes it. It then streams the remaining output and
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

mod collect;
mod process;
mod start;
mod stop;
mod stopped;
mod supervise;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dbslots_core::Pool;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

pub use self::stop::Stopper;
use self::stop::{Phase, Signals, StopState};
use crate::console::{BarStatus, Console};
use crate::error::{Error, Result};
use crate::group;
use crate::joblog::Joblog;
use crate::keeper::Keeper;
use crate::options::{Output, SpawnOptions};
use crate::progress::{self, Counts, Reporter};
use crate::summary::{StopReason, Summary};
use crate::template::Template;

/// How long output is still written after a stop once every worker is
/// reaped (a stalled reader must not keep a stopped spawner alive).
const OUTPUT_AFTER_STOP: Duration = Duration::from_millis(300);

/// Starts `N` workers from a [`Template`] under a pool's capacity.
///
/// See the [crate documentation](crate) for the modes, who holds the
/// slots, and how a run stops.
#[derive(Debug)]
pub struct Spawner {
    pool: Option<Pool>,
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
        Spawner::build(Some(pool), template, options)
    }

    /// A spawner that starts its workers in batches with no pool at all
    /// (the reference's behaviour): nothing is reported about slots, and
    /// workers get no `DBSLOTS_POOL`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOptions`] when the options are out of range, or
    /// when they make the spawner take slots ([`Mode::Adaptive`] or
    /// [`hold_slot`](SpawnOptions::hold_slot)), which needs a pool.
    ///
    /// [`Mode::Adaptive`]: crate::Mode::Adaptive
    pub fn without_pool(template: Template, options: SpawnOptions) -> Result<Spawner> {
        if options.takes_slots() {
            return Err(Error::InvalidOptions {
                problem: "the spawner takes a slot for every worker (adaptive mode, or hold_slot), and there is no pool".into(),
                fix: "open a pool and use Spawner::new, or start in Mode::Batches without hold_slot",
            });
        }
        Spawner::build(None, template, options)
    }

    fn build(pool: Option<Pool>, template: Template, options: SpawnOptions) -> Result<Spawner> {
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
        // Workers that must not outlive their leases (Redis pool, no
        // hold_slot) are killed by the kernel with the spawner; what they
        // started is killed by the keeper (`keeper.rs`).
        let keeper = match &self.pool {
            Some(pool)
                if pool.lease_margin().is_some()
                    && self.options.takes_slots()
                    && !self.options.hold_slot =>
            {
                let groups = usize::try_from(self.options.workers).unwrap_or(usize::MAX);
                Some(Keeper::start(groups).map_err(|source| Error::Keeper { source })?)
            }
            _ => None,
        };
        let mut joblog = match &self.options.joblog {
            Some(path) => Some(Joblog::create(path)?),
            None => None,
        };
        // Once the collector dropped the joblog: every line written.
        let joblog_written = joblog.as_mut().map(Joblog::written);
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
        let capacity = self.pool.as_ref().map(Pool::capacity);
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
        let pool_addr = self
            .pool
            .as_ref()
            .map_or_else(|| "(none)".into(), |p| p.addr().to_string());
        let ctx = Arc::new(Ctx {
            pool: self.pool,
            pool_addr,
            template: self.template,
            options: self.options,
            stop: self.stop,
            counters,
            reporter,
            console,
            keeper,
            running: stopped::Running::default(),
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
            never = ctx.watch_children() => match never {},
        };
        let wall = started_at.elapsed();
        // Every worker is reaped and its group empty: nothing to keep.
        if let Some(keeper) = &ctx.keeper {
            keeper.stand_down();
        }
        // Everything is reaped; what is left is output (and the joblog).
        // Wait for it unless nobody reads it: after a stop, for at most
        // `OUTPUT_AFTER_STOP`; at any time, no longer than the next signal.
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
        tokio::pin!(give_up);
        let mut given_up = false;
        if let Some(written) = joblog_written {
            tokio::select! {
                () = written => {}
                () = &mut give_up => {
                    given_up = true;
                    tracing::debug!("the joblog is not read; not waiting for it");
                }
            }
        }
        let dropped = if given_up {
            writer.finish(std::future::ready(())).await
        } else {
            writer.finish(give_up).await
        };

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
    /// `None` only in batches without `hold_slot` (see
    /// [`Spawner::without_pool`]).
    pool: Option<Pool>,
    pool_addr: String,
    template: Template,
    options: SpawnOptions,
    stop: Arc<watch::Sender<StopState>>,
    counters: Arc<Counters>,
    reporter: Reporter,
    console: Console,
    /// Kills the groups of lease-holding workers if the spawner dies.
    keeper: Option<Keeper>,
    /// The workers not yet reaped, for reporting stops.
    running: stopped::Running,
}

impl Ctx {
    fn stopping(&self) -> bool {
        self.stop.borrow().phase != Phase::Running
    }
}

/// The shortest time between two looks for exited daemons: a look reads
/// `/proc` for every child, and a run of short workers sends a SIGCHLD per
/// worker (one look each cost a 1000-worker run half a second).
const STRAYS_AT_MOST_EVERY: Duration = Duration::from_millis(100);

impl Ctx {
    /// When children exit or stop: reaps those nobody waits for (processes
    /// that left a worker's group, daemons, which, the spawner being the
    /// subreaper, became its children; else they would stay zombies until
    /// the spawner exits), at most every [`STRAYS_AT_MOST_EVERY`], and
    /// reports workers stopped by a signal (`stopped.rs`) at once. Never
    /// returns.
    async fn watch_children(&self) -> Infallible {
        let mut events = match signal(SignalKind::child()) {
            Ok(events) => events,
            Err(e) => {
                tracing::debug!(error = %e, "cannot watch for exited children; processes that leave a worker's group stay zombies until the spawner exits");
                return std::future::pending().await;
            }
        };
        let mut last_look: Option<tokio::time::Instant> = None;
        let mut look_at: Option<tokio::time::Instant> = None;
        loop {
            let owed_look = async {
                match look_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = events.recv() => {
                    if event.is_none() {
                        return std::future::pending().await;
                    }
                    self.report_stopped_workers();
                    let now = tokio::time::Instant::now();
                    let earliest = last_look.map_or(now, |at| at + STRAYS_AT_MOST_EVERY);
                    look_at.get_or_insert(earliest.max(now));
                }
                () = owed_look => {
                    look_at = None;
                    last_look = Some(tokio::time::Instant::now());
                    group::reap_strays();
                }
            }
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
