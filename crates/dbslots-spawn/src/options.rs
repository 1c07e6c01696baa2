//! How a spawner runs.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// When workers start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// A worker starts as soon as the spawner has a slot for it: no fixed
    /// delay, never more workers than free slots. The worker holds its slot
    /// until it exits (see the crate documentation). The default.
    #[default]
    Adaptive,
    /// The reference behaviour: `size` workers at a time, batch `k` started
    /// `delay` after batch `k-1` was started, without waiting for earlier
    /// workers to exit. The spawner takes no slots unless
    /// [`SpawnOptions::hold_slot`] is set.
    Batches {
        /// Workers per batch.
        size: NonZeroU32,
        /// Pause after starting one batch, before starting the next.
        delay: Duration,
    },
}

/// Where workers' output goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Output {
    /// To the spawner's stdout and stderr, each line prefixed with
    /// `[INDEX] `. Lines are streamed (at most 4 KiB a line is kept; longer
    /// lines are split), never collected. The default.
    ///
    /// The workers never wait for the spawner's output: one thread writes
    /// it, through a queue of at most 2 MiB; when stdout or stderr is not
    /// read fast enough (a pager left on a page, a stalled terminal), the
    /// lines that do not fit are dropped and counted (the spawner says how
    /// many, and [`Summary::dropped_lines`](crate::Summary::dropped_lines)).
    /// Use [`Output::LogDir`] to keep every line.
    ///
    /// If the spawner dies, the pipes break: workers are started with
    /// SIGPIPE ignored, so their writes fail with `EPIPE` instead of killing
    /// them (see the crate documentation).
    #[default]
    Prefixed,
    /// To `DIR/INDEX.log`, stdout and stderr together; the directory is
    /// created when missing and existing files are replaced.
    LogDir(PathBuf),
}

/// How the spawner reports progress (on stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProgressDisplay {
    /// A bar when stderr is a terminal, lines otherwise. The default.
    #[default]
    Auto,
    /// A progress bar.
    Bar,
    /// Plain lines: one per batch in batch mode (with the pool's stats),
    /// one every few seconds in adaptive mode, and one per stop step.
    Lines,
    /// Nothing (the caller prints the [`Summary`](crate::Summary)).
    Quiet,
}

/// Everything about a run except the pool and the command.
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    pub(crate) workers: u32,
    pub(crate) mode: Mode,
    pub(crate) hold_slot: bool,
    pub(crate) job_id: Option<String>,
    pub(crate) joblog: Option<PathBuf>,
    pub(crate) output: Output,
    pub(crate) grace: Duration,
    pub(crate) progress: ProgressDisplay,
    pub(crate) progress_interval: Duration,
    pub(crate) handle_signals: bool,
}

impl SpawnOptions {
    /// Options for `workers` workers, adaptive, with the defaults below.
    pub fn new(workers: u32) -> Self {
        SpawnOptions {
            workers,
            mode: Mode::Adaptive,
            hold_slot: false,
            job_id: None,
            joblog: None,
            output: Output::Prefixed,
            grace: Duration::from_secs(10),
            progress: ProgressDisplay::Auto,
            progress_interval: Duration::from_secs(5),
            handle_signals: true,
        }
    }

    /// When workers start; [`Mode::Adaptive`] by default.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Whether the spawner takes a slot for every worker and lets workers
    /// run to their end even if the spawner dies (see the crate
    /// documentation). Off by default.
    ///
    /// In adaptive mode on a file pool this changes nothing: the spawner
    /// always takes the slots there, and the workers hold them (the slot
    /// stays held until the worker exits, even if the spawner dies). It
    /// makes [`Mode::Batches`] take a slot for each worker too, and it lets
    /// workers of a Redis pool, whose leases cannot be handed over, outlive
    /// a killed spawner instead of being killed with it (their slots are
    /// then lost when the leases run out).
    pub fn hold_slot(mut self, hold: bool) -> Self {
        self.hold_slot = hold;
        self
    }

    /// A job id passed to every worker as `DBSLOTS_JOB_ID`.
    pub fn job_id(mut self, id: impl Into<String>) -> Self {
        self.job_id = Some(id.into());
        self
    }

    /// Writes one line per worker to this file, in GNU parallel's `--joblog`
    /// format.
    pub fn joblog(mut self, path: impl Into<PathBuf>) -> Self {
        self.joblog = Some(path.into());
        self
    }

    /// Where workers' output goes; [`Output::Prefixed`] by default.
    pub fn output(mut self, output: Output) -> Self {
        self.output = output;
        self
    }

    /// How long workers get between SIGTERM and SIGKILL when the spawner is
    /// stopped; 10 s by default.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How progress is reported; [`ProgressDisplay::Auto`] by default.
    pub fn progress_display(mut self, progress: ProgressDisplay) -> Self {
        self.progress = progress;
        self
    }

    /// How often adaptive mode prints a progress line when reporting in
    /// lines; 5 s by default.
    pub fn progress_interval(mut self, every: Duration) -> Self {
        self.progress_interval = every;
        self
    }

    /// Whether the spawner stops on SIGINT, SIGTERM and SIGHUP; on by
    /// default. One the process inherited as ignored (`nohup`) stays
    /// ignored. Embedders that handle signals themselves turn it off and use
    /// a [`Stopper`](crate::Stopper).
    pub fn handle_signals(mut self, handle: bool) -> Self {
        self.handle_signals = handle;
        self
    }

    /// Whether the spawner takes a slot for each worker before starting it.
    pub(crate) fn takes_slots(&self) -> bool {
        self.hold_slot || self.mode == Mode::Adaptive
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.workers == 0 {
            return Err(Error::InvalidOptions {
                problem: "the number of workers is 0".into(),
                fix: "give at least one worker (SpawnOptions::new)",
            });
        }
        if let Some(id) = &self.job_id
            && (id.is_empty() || id.contains('\0'))
        {
            return Err(Error::InvalidOptions {
                problem: format!("the job id {id:?} is empty or contains a NUL byte"),
                fix: "give a non-empty job id without NUL bytes, or none",
            });
        }
        if self.progress_interval.is_zero() {
            return Err(Error::InvalidOptions {
                problem: "the progress interval is 0".into(),
                fix: "give a positive interval",
            });
        }
        Ok(())
    }
}
