//! How a processor works and when its run ends.

use std::path::PathBuf;
use std::time::Duration;

/// How a processor works on a job.
#[derive(Debug, Clone)]
pub struct ProcessorOptions {
    pub(crate) batch_rows: usize,
    pub(crate) stale_after: Duration,
    pub(crate) batch_timeout: Option<Duration>,
    pub(crate) max_attempts: u32,
    pub(crate) reconnect_for: Option<Duration>,
    pub(crate) holder: Option<String>,
    pub(crate) source_dirs: Vec<PathBuf>,
}

impl Default for ProcessorOptions {
    fn default() -> Self {
        ProcessorOptions {
            batch_rows: 50_000,
            stale_after: Duration::from_secs(60),
            batch_timeout: None,
            max_attempts: 3,
            reconnect_for: None,
            holder: None,
            source_dirs: Vec::new(),
        }
    }
}

impl ProcessorOptions {
    /// The defaults: batches of 50,000 records, jobs stale after 60 s without a
    /// heartbeat, batches given up after three times that, 3 attempts per
    /// job, and through an outage of the server, a daemon waits for as long
    /// as it lasts, a run with [`RunOptions::once`] for 120 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records per batch (one transaction), 1 to 100,000; 50,000 by default
    /// (a commit waits for the server's log flush, 3 ms on the benchmark's
    /// disk, so 100 of them take about 0.3 s, some 8% of the server time of
    /// a million-row `LOAD DATA`;
    /// 2000 per batch measured about 20% slower than 10,000).
    /// Statements are also kept under half the server's
    /// `max_allowed_packet`.
    pub fn batch_rows(mut self, rows: usize) -> Self {
        self.batch_rows = rows.clamp(1, 100_000);
        self
    }

    /// How long a job's holder may go without a heartbeat before another
    /// processor puts the job back; 60 s by default. Whole seconds, at
    /// least 1. The holder heartbeats on its own timer every third of
    /// this, also while a batch is still running (from a second
    /// connection), so only a dead or cut-off processor looks stale, or one
    /// whose batch has had no answer for
    /// [`ProcessorOptions::batch_timeout`]. A server restarted less than
    /// this long ago puts back no job: its holders are reconnecting to
    /// resume theirs.
    pub fn stale_after(mut self, after: Duration) -> Self {
        self.stale_after = after.max(Duration::from_secs(1));
        self
    }

    /// How long the server may take to answer a batch (its whole
    /// transaction) or any other call on the processor's connection before
    /// the connection is taken for lost; by default three times
    /// [`ProcessorOptions::stale_after`] (180 s). Whole seconds, at least 1.
    ///
    /// A connection that stopped passing bytes without being closed (a
    /// failover, a database host rebooting, a firewall dropping its state)
    /// never fails by itself; after this long the processor closes it,
    /// opens a new one and redoes the batch from the job's checkpoint, as
    /// after any lost connection. The server is told half this bound as
    /// the session's `wait_timeout`, `net_read_timeout` and
    /// `net_write_timeout`, so it ends such a connection's session, and
    /// rolls back its transaction, by itself within this bound. Meanwhile the heartbeat vouches for the
    /// batch only until this bound: a processor stuck beyond it lets its
    /// job go stale, and another processor takes it over.
    ///
    /// Give batches room: one slower than this is redone, and a job whose
    /// batches keep taking longer fails after three attempts in a row.
    pub fn batch_timeout(mut self, timeout: Duration) -> Self {
        self.batch_timeout = Some(whole_seconds(timeout));
        self
    }

    /// The bound [`ProcessorOptions::batch_timeout`] describes: as given,
    /// or three times `stale_after` (the longest `Duration` when that is
    /// longer: no bound).
    pub(crate) fn batch_bound(&self) -> Duration {
        self.batch_timeout
            .unwrap_or(self.stale_after.saturating_mul(3))
    }

    /// Attempts a job gets before it fails for good when its processors
    /// keep dying; 3 by default, at least 1.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// How long the server may be out of reach before the run gives up with
    /// [`Error::Outage`](crate::Error::Outage), whether the processor runs as
    /// a daemon or [`RunOptions::once`]; [`Duration::MAX`] waits
    /// indefinitely, zero gives up at the first failure. Without it, see
    /// [`ProcessorOptions::reconnect_window`].
    ///
    /// Out of reach means that connecting fails in a way that another try
    /// may fix (the network, a server restarting or out of connections, no
    /// slot in time), or that the connection is lost before a job is
    /// claimed; the window starts at the first such failure and ends with
    /// the next claim that gets an answer (mid-job, at the first connection
    /// that opens). Failures that need a change first (access denied, an
    /// unknown database, TLS) end the run at once with
    /// [`Error::Connect`](crate::Error::Connect).
    ///
    /// Meanwhile the processor tries again after 0.1 s, then after twice
    /// as long each time, at most every 5 s, and logs one warning line per
    /// failed try; a stop request ends the wait at once.
    pub fn reconnect_for(mut self, window: Duration) -> Self {
        self.reconnect_for = Some(window);
        self
    }

    /// How long a run with `run` lets the server be out of reach before it
    /// gives up (see [`ProcessorOptions::reconnect_for`]); `None` for as
    /// long as the outage lasts. Unless set: 120 s for a run with
    /// [`RunOptions::once`] (cron, where the next run comes anyway), and
    /// `None` for a daemon, which is there to wait out outages rather
    /// than exit and leave its supervisor to restart it.
    pub fn reconnect_window(&self, run: &RunOptions) -> Option<Duration> {
        match self.reconnect_for {
            Some(window) if window == Duration::MAX => None,
            Some(window) => Some(window),
            None if run.once => Some(ONCE_RECONNECT_WINDOW),
            None => None,
        }
    }

    /// How long a processor waits out an outage in the middle of a job:
    /// the reconnect window, past the run's max time too (the job in hand
    /// is finished); for a daemon with a max time, which would otherwise
    /// wait as long as the outage lasts, 120 s as with
    /// [`RunOptions::once`].
    pub(crate) fn mid_job_window(&self, run: &RunOptions) -> Option<Duration> {
        self.reconnect_window(run)
            .or(run.max_time.map(|_| ONCE_RECONNECT_WINDOW))
    }

    /// Imports only files whose real path (every symlink resolved) lies in
    /// `dir`; may be given several times. A job whose file lies outside
    /// every such directory fails without its file being read. Without
    /// any, every path the processor's user can read is imported, so give
    /// one wherever others can enqueue jobs.
    pub fn source_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.source_dirs.push(dir.into());
        self
    }

    /// The directories given with [`ProcessorOptions::source_dir`].
    pub fn source_dirs(&self) -> &[PathBuf] {
        &self.source_dirs
    }

    /// The name this processor writes into `import_jobs.holder`; by default
    /// `HOSTNAME:PID:RANDOM`. Must be unique among running processors.
    pub fn holder(mut self, name: impl Into<String>) -> Self {
        self.holder = Some(name.into());
        self
    }
}

/// How long a run with [`RunOptions::once`] lets the server be out of
/// reach unless told otherwise.
const ONCE_RECONNECT_WINDOW: Duration = Duration::from_secs(120);

/// `d` in whole seconds (rounded down), at least 1.
fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().max(1))
}

/// When [`Processor::run`](crate::Processor::run) returns.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub(crate) once: bool,
    pub(crate) sleep: Option<Duration>,
    pub(crate) max_jobs: Option<u64>,
    pub(crate) max_time: Option<Duration>,
}

impl RunOptions {
    /// A daemon: works until stopped, sleeping 3 s whenever the queue is
    /// empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns once no job is pending instead of sleeping (cron mode).
    pub fn once(mut self, once: bool) -> Self {
        self.once = once;
        self
    }

    /// How long to sleep when the queue is empty; 3 s by default.
    pub fn sleep(mut self, sleep: Duration) -> Self {
        self.sleep = Some(sleep);
        self
    }

    /// Returns after this many jobs.
    pub fn max_jobs(mut self, jobs: Option<u64>) -> Self {
        self.max_jobs = jobs;
        self
    }

    /// Starts no new job after this long (the job in hand is finished). A
    /// run whose max time comes while the server is out of reach between
    /// jobs fails with [`Error::Outage`](crate::Error::Outage); one in the
    /// middle of a job waits out the outage as long as
    /// [`ProcessorOptions::reconnect_window`] says, and 120 s at most for
    /// a daemon.
    pub fn max_time(mut self, time: Option<Duration>) -> Self {
        self.max_time = time;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_bounds() {
        let o = ProcessorOptions::new()
            .batch_rows(0)
            .max_attempts(0)
            .stale_after(Duration::ZERO);
        assert_eq!(o.batch_rows, 1);
        assert_eq!(o.max_attempts, 1);
        assert_eq!(o.stale_after, Duration::from_secs(1));
        assert_eq!(o.batch_bound(), Duration::from_secs(3));
        let o = ProcessorOptions::new();
        assert_eq!(o.batch_bound(), Duration::from_secs(180));
        let o = o
            .batch_timeout(Duration::from_millis(2500))
            .stale_after(Duration::from_secs(5));
        assert_eq!(o.batch_bound(), Duration::from_secs(2));
        let o = o.batch_timeout(Duration::ZERO);
        assert_eq!(o.batch_bound(), Duration::from_secs(1));
    }

    #[test]
    fn a_daemon_waits_out_an_outage_and_cron_gives_up_unless_told_otherwise() {
        let daemon = RunOptions::new();
        let cron = RunOptions::new().once(true);
        let o = ProcessorOptions::new();
        assert_eq!(o.reconnect_window(&daemon), None);
        assert_eq!(o.reconnect_window(&cron), Some(Duration::from_secs(120)));
        let o = o.reconnect_for(Duration::from_secs(2));
        assert_eq!(o.reconnect_window(&daemon), Some(Duration::from_secs(2)));
        assert_eq!(o.reconnect_window(&cron), Some(Duration::from_secs(2)));
        let o = o.reconnect_for(Duration::MAX);
        assert_eq!(o.reconnect_window(&cron), None);
    }
}
