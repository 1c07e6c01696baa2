//! What a run did, and the exit status that says it.

use std::fmt;
use std::time::Duration;

use crate::options::Mode;

/// Why a run ended before every worker had started.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The spawner was told to stop by this signal (SIGINT, SIGTERM, SIGHUP
    /// or [`Stopper::stop`](crate::Stopper::stop)).
    Signal(i32),
    /// A worker could not be started; nothing further was started and the
    /// running workers were left to finish.
    StartFailed {
        /// The worker's index.
        index: u32,
        /// What went wrong and what to do.
        message: String,
        /// 127 when the program was not found, 126 otherwise (as a shell).
        exit_code: u8,
    },
    /// The pool failed while the spawner waited for a slot; nothing further
    /// was started and the running workers were left to finish.
    Pool {
        /// The pool's error.
        message: String,
    },
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Signal(sig) => write!(f, "stopped by {}", signal_name(*sig)),
            StopReason::StartFailed { message, .. } => f.write_str(message),
            StopReason::Pool { message } => write!(f, "the pool failed: {message}"),
        }
    }
}

/// The outcome of a run.
///
/// # Exit status
///
/// [`Summary::exit_code`] is what `dbslots spawn` exits with:
///
/// | status | meaning |
/// | --- | --- |
/// | 0 | every worker started and exited with status 0 |
/// | 1 | every worker started, and at least one exited non-zero or was killed by a signal |
/// | 2 | the pool failed during the run (nothing further started) |
/// | 126, 127 | a worker could not be started (127: program not found); nothing further started |
/// | 128+N | the spawner was stopped by signal N (130 for SIGINT, 143 for SIGTERM) |
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Summary {
    /// Workers asked for.
    pub workers: u32,
    /// Workers started.
    pub started: u32,
    /// Workers that exited with status 0.
    pub succeeded: u32,
    /// Workers that exited with another status.
    pub failed: u32,
    /// Workers killed by a signal (also those the spawner stopped).
    pub killed: u32,
    /// Median run time of a worker, start to reaping.
    pub p50: Option<Duration>,
    /// 95th percentile of the run times.
    pub p95: Option<Duration>,
    /// Longest run time.
    pub max: Option<Duration>,
    /// Most slots in use at once: counted exactly when the spawner takes the
    /// slots, sampled from the pool (every 250 ms and after each batch) when
    /// workers take their own.
    pub peak_slots: u32,
    /// Whether `peak_slots` was sampled rather than counted.
    pub peak_slots_sampled: bool,
    /// The pool's capacity; `None` for a run without a pool
    /// ([`Spawner::without_pool`](crate::Spawner::without_pool)).
    pub capacity: Option<u32>,
    /// Most workers running at once.
    pub peak_running: u32,
    /// From the first start to the last reaping.
    pub wall: Duration,
    /// The mode of the run.
    pub mode: Mode,
    /// Whether [`hold_slot`](crate::SpawnOptions::hold_slot) was set.
    pub hold_slot: bool,
    /// Why the run ended early, if it did.
    pub stop: Option<StopReason>,
    /// Lines of workers' output dropped because the spawner's stdout or
    /// stderr was not read fast enough (prefixed output only; see
    /// [`Output::Prefixed`](crate::Output::Prefixed)).
    pub dropped_lines: u64,
}

impl Summary {
    /// True when every worker started and succeeded.
    pub fn success(&self) -> bool {
        self.exit_code() == 0
    }

    /// Workers never started.
    pub fn not_started(&self) -> u32 {
        self.workers - self.started
    }

    /// The exit status that sums the run up (see the table above).
    pub fn exit_code(&self) -> u8 {
        match &self.stop {
            Some(StopReason::Signal(sig)) => 128u8.saturating_add((*sig).clamp(0, 127) as u8),
            Some(StopReason::StartFailed { exit_code, .. }) => *exit_code,
            Some(StopReason::Pool { .. }) => 2,
            None if self.failed > 0 || self.killed > 0 || self.started < self.workers => 1,
            None => 0,
        }
    }
}

fn secs(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.3} s", d.as_secs_f64()),
        None => "-".into(),
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            Mode::Adaptive => "adaptive".to_string(),
            Mode::Batches { size, delay } => {
                format!("batches of {size} every {:.1} s", delay.as_secs_f64())
            }
        };
        let hold = if self.hold_slot { ", hold-slot" } else { "" };
        writeln!(
            f,
            "{} of {} workers started in {:.2} s ({mode}{hold})",
            self.started,
            self.workers,
            self.wall.as_secs_f64()
        )?;
        writeln!(
            f,
            "  succeeded {}, failed {}, killed by signal {}, not started {}",
            self.succeeded,
            self.failed,
            self.killed,
            self.not_started()
        )?;
        writeln!(
            f,
            "  duration p50 {}, p95 {}, max {}",
            secs(self.p50),
            secs(self.p95),
            secs(self.max)
        )?;
        match self.capacity {
            Some(capacity) => write!(
                f,
                "  peak slots in use {}{} of {capacity}, peak workers running {}",
                self.peak_slots,
                if self.peak_slots_sampled {
                    " (sampled)"
                } else {
                    ""
                },
                self.peak_running
            )?,
            None => write!(f, "  no pool, peak workers running {}", self.peak_running)?,
        }
        if self.dropped_lines > 0 {
            write!(
                f,
                "\n  {} lines of workers' output dropped: the output was not read fast enough (output to a log directory keeps every line)",
                self.dropped_lines
            )?;
        }
        if let Some(stop) = &self.stop {
            write!(f, "\n  {stop}")?;
        }
        Ok(())
    }
}

/// Run times of finished workers, for percentiles (8 bytes a worker).
#[derive(Debug, Default)]
pub(crate) struct Durations {
    micros: Vec<u64>,
}

impl Durations {
    pub(crate) fn push(&mut self, d: Duration) {
        self.micros.push(d.as_micros().min(u64::MAX as u128) as u64);
    }

    /// Nearest-rank percentile `p` (0..=100) and the maximum.
    pub(crate) fn percentiles(&mut self, ps: &[f64]) -> (Vec<Option<Duration>>, Option<Duration>) {
        self.micros.sort_unstable();
        let n = self.micros.len();
        let pick = |p: f64| {
            (n > 0).then(|| {
                let rank = ((p / 100.0) * n as f64).ceil() as usize;
                Duration::from_micros(self.micros[rank.clamp(1, n) - 1])
            })
        };
        (
            ps.iter().map(|p| pick(*p)).collect(),
            self.micros.last().map(|m| Duration::from_micros(*m)),
        )
    }
}

/// `SIGINT` for 2, and so on; `signal N` for the rest.
pub(crate) fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            workers: 10,
            started: 10,
            succeeded: 10,
            failed: 0,
            killed: 0,
            p50: None,
            p95: None,
            max: None,
            peak_slots: 3,
            peak_slots_sampled: false,
            capacity: Some(3),
            peak_running: 3,
            wall: Duration::from_secs(1),
            mode: Mode::Adaptive,
            hold_slot: false,
            stop: None,
            dropped_lines: 0,
        }
    }

    #[test]
    fn exit_codes_follow_the_table() {
        let mut s = summary();
        assert_eq!(s.exit_code(), 0);
        s.succeeded = 9;
        s.killed = 1;
        assert_eq!(s.exit_code(), 1);
        s.stop = Some(StopReason::Signal(libc::SIGINT));
        assert_eq!(s.exit_code(), 130);
        s.stop = Some(StopReason::StartFailed {
            index: 0,
            message: "x".into(),
            exit_code: 127,
        });
        assert_eq!(s.exit_code(), 127);
        s.stop = Some(StopReason::Pool {
            message: "x".into(),
        });
        assert_eq!(s.exit_code(), 2);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut d = Durations::default();
        for ms in 1..=100 {
            d.push(Duration::from_millis(ms));
        }
        let (p, max) = d.percentiles(&[50.0, 95.0]);
        assert_eq!(
            p,
            vec![
                Some(Duration::from_millis(50)),
                Some(Duration::from_millis(95))
            ]
        );
        assert_eq!(max, Some(Duration::from_millis(100)));
        let (p, max) = Durations::default().percentiles(&[50.0]);
        assert_eq!((p, max), (vec![None], None));
    }
}
