//! What a processor tells about its work: progress, outcomes, summaries.

use std::path::PathBuf;
use std::time::Duration;

use crate::queue::Status;

/// Where a job is, for progress displays.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// The job's id.
    pub job_id: u64,
    /// Its file.
    pub source: PathBuf,
    /// Bytes of the file committed (the checkpoint).
    pub bytes_done: u64,
    /// The file's size.
    pub bytes_total: u64,
    /// Lines imported so far, earlier attempts included.
    pub rows_imported: u64,
    /// Lines rejected so far, earlier attempts included.
    pub rows_rejected: u64,
}

/// Hears about a processor's work. Every method has a default that does
/// nothing; they are called on the processor's task, so keep them short.
pub trait Observer: Send + Sync {
    /// A job's file is open and its header checked; `progress` is where it
    /// resumes.
    fn job_started(&self, progress: &Progress) {
        let _ = progress;
    }

    /// A batch was committed.
    fn batch_committed(&self, progress: &Progress) {
        let _ = progress;
    }

    /// The processor is done with a job, one way or another.
    fn job_finished(&self, report: &JobReport) {
        let _ = report;
    }
}

/// An [`Observer`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}

/// How the processor parted with a job.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobOutcome {
    /// Every line imported.
    Completed,
    /// Done; some lines are in `import_errors`.
    CompletedWithErrors,
    /// Failed; the message is also the job's `last_error`.
    Failed(String),
    /// Put back in the queue with its checkpoint because the processor was
    /// asked to stop.
    Released,
    /// Taken over by another processor after this one stopped heartbeating
    /// (nothing more was written).
    Lost,
    /// Stopped while the server was unreachable (or a batch had no answer
    /// within the stop's grace) and the job could not be put back over a
    /// new connection within 5 s: it stays `processing` until it is stale,
    /// then goes back to the queue.
    Interrupted,
}

impl From<Status> for JobOutcome {
    fn from(status: Status) -> JobOutcome {
        match status {
            Status::Completed => JobOutcome::Completed,
            Status::CompletedWithErrors => JobOutcome::CompletedWithErrors,
            Status::Failed => JobOutcome::Failed("failed (see last_error)".into()),
            Status::Pending | Status::Processing => JobOutcome::Lost,
        }
    }
}

/// What a processor did with one job.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobReport {
    /// The job's id.
    pub id: u64,
    /// Its file.
    pub source: PathBuf,
    /// How it ended.
    pub outcome: JobOutcome,
    /// Lines imported in all, earlier attempts included.
    pub rows_imported: u64,
    /// Lines rejected in all, earlier attempts included.
    pub rows_rejected: u64,
    /// Lines imported or rejected by this processor.
    pub lines_this_run: u64,
    /// Rows this processor inserted with `LOAD DATA LOCAL INFILE` (the
    /// others of `lines_this_run` went in with `INSERT` statements or were
    /// rejected; see the crate documentation for when each is used).
    pub rows_loaded: u64,
    /// Connections lost and re-opened during the job.
    pub reconnects: u32,
    /// Time spent on the job.
    pub elapsed: Duration,
}

/// Why [`Processor::run`](crate::Processor::run) returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunEnd {
    /// `once` and no job was pending.
    QueueEmpty,
    /// `max_jobs` were processed.
    MaxJobs,
    /// `max_time` passed.
    MaxTime,
    /// The [`Stopper`](crate::Stopper) was given.
    Stopped,
}

/// What [`Processor::run`](crate::Processor::run) did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Summary {
    /// Every job it worked on, in order.
    pub jobs: Vec<JobReport>,
    /// Stale jobs it put back or failed.
    pub recovered: u64,
    /// Why it returned.
    pub end: RunEnd,
}
