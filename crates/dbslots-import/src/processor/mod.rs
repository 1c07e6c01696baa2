//! The processor: claims jobs, imports them batch by batch, lets go.
//!
//! # Implementation Details
//!
//! One loop iteration is one unit of work with one connection: connect
//! (taking a slot), recover stale jobs, claim a job, import it, close. When
//! no job is pending the connection is closed before sleeping, so an idle
//! processor holds nothing on the server.
//!
//! Importing a job is a sequence of *attempts* on one connection. An attempt
//! sets the session's `time_zone` to the job's, reads the target table's
//! description, starts a reader thread at the job's checkpoint (which checks
//! the file, see [`crate::source`]) and commits what it sends, batch by
//! batch. Each commit is a heartbeat, and the `heartbeat` task writes one
//! on its own timer when commits are slow. When a statement
//! fails because the connection is gone (killed, timed out, server
//! restarted) or its transaction was aborted (deadlock, lock wait timeout),
//! the processor closes the connection, opens a new one, reads the job's row
//! (the checkpoint there is the truth: a commit whose answer was lost may or
//! may not have happened) and starts the next attempt from it. Only when
//! three attempts in a row end this way without moving the checkpoint is the
//! job failed.
//!
//! A server out of reach (connects failing in a way another try may fix,
//! or connections lost before a job is claimed) is waited out (see the
//! `outage` module): the processor tries again after a backoff of up to
//! 5 s, logging one line per failed try, until the outage has lasted its
//! reconnect window (`ProcessorOptions::reconnect_window`: by default
//! indefinitely for a daemon, 120 s with `RunOptions::once`). A stop
//! request ends the wait at once, and `RunOptions::max_time` when it comes.
//! Mid-job, the same goes for re-opening the connection.
//!
//! Rows go in with `LOAD DATA LOCAL INFILE` from memory where the table
//! allows it (see [`crate::queue::commit_batch`] for when such a batch is
//! committed). A batch that is rolled back because its rows were not all
//! new (or the server refused `LOAD DATA LOCAL`) ends the attempt without
//! a reconnect, and the next attempt imports the rest of the job, from
//! that batch on, with `INSERT ... ON DUPLICATE KEY UPDATE` statements.
//!
//! No call on the connection waits for the server without a bound: a batch
//! (its whole transaction) or any other statement without an answer within
//! the batch bound counts as a lost connection, the server ends such a
//! session by itself within the same bound, and the heartbeat stops
//! vouching for a call that has waited that long (see the `bounded`
//! module).
//!
//! A stop request (SIGTERM, SIGINT) is looked at between batches and while
//! waiting for the reader: the batch being committed is finished (given at
//! most `bounded::STOP_GRACE` more), the job is put back in the queue with
//! its checkpoint, the connection is closed and `run` returns. A batch that
//! does not answer within the grace is abandoned like a lost connection,
//! and the job is put back over a new connection if one opens within
//! `bounded::RELEASE_WITHIN`; otherwise it stays `processing` until it is
//! stale. So `run` returns within 30 s of a stop request whatever the
//! network does: 10 s of grace, then at most 5 s each to close the lost
//! connection, to put the job back and to close the heartbeat's
//! connection.

mod bounded;
mod heartbeat;
mod options;
mod outage;
mod report;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use crate::batch::{Limits, Rows};
use crate::error::{Error, OutageLimit, Result};
use crate::link::{ConnectFailure, Connection, Connector, is_connection_problem, one_line};
use crate::queue::{self, Committed, JobRow, Status};
use crate::source::{Chunk, FileProblem, ReadPlan, spawn_reader};
use crate::stop::Stopper;
use crate::table;
use crate::value::{Form, Zone, push_text};
use bounded::{Bounds, RELEASE_WITHIN};
use heartbeat::{Beats, Heartbeat};
pub use options::{ProcessorOptions, RunOptions};
use outage::{Next, Outage};
pub use report::{JobOutcome, JobReport, NoObserver, Observer, Progress, RunEnd, Summary};

/// Attempts in a row that may lose the connection without progress before
/// the job is failed.
const MAX_STALLED_ATTEMPTS: u32 = 3;

/// Imports jobs from the queue. Get one from
/// [`Queue::processor`](crate::Queue::processor).
#[derive(Debug)]
pub struct Processor {
    connector: Arc<Connector>,
    options: ProcessorOptions,
    bounds: Bounds,
    holder: String,
}

/// Where an attempt at a job left it.
enum Step {
    /// The processor is done with the job; the connection is usable.
    Done(JobOutcome),
    /// The connection is gone or the transaction was aborted.
    Lost(mysql_async::Error),
    /// Start another attempt on the same connection (the job now inserts
    /// with `INSERT` statements).
    Again,
    /// Something that stops the processor.
    Fatal(Error),
}

/// Why no job could be claimed.
enum ClaimFailure {
    /// The connection is gone or the transaction was aborted.
    Lost(mysql_async::Error),
    /// Something that stops the processor.
    Fatal(Error),
}

/// A job in hand.
struct Job {
    row: JobRow,
    bytes_total: u64,
    lines_this_run: u64,
    /// Rows of this run that went in with `LOAD DATA`.
    rows_loaded: u64,
    beats: Beats,
    /// Set once a `LOAD DATA` batch of this job was rolled back: the rest
    /// goes in with `INSERT` statements.
    insert_only: bool,
}

impl Job {
    fn progress(&self) -> Progress {
        Progress {
            job_id: self.row.id,
            source: self.row.source.clone(),
            bytes_done: self.row.checkpoint.offset,
            bytes_total: self.bytes_total,
            rows_imported: self.row.rows_imported,
            rows_rejected: self.row.rows_rejected,
        }
    }
}

impl Processor {
    pub(crate) fn new(
        connector: Arc<Connector>,
        options: ProcessorOptions,
        statement_timeout: Duration,
    ) -> Processor {
        let holder = options.holder.clone().unwrap_or_else(default_holder);
        let call = options.batch_bound();
        let bounds = Bounds {
            call,
            statement: statement_timeout.min(call),
        };
        Processor {
            connector,
            options,
            bounds,
            holder,
        }
    }

    /// The name this processor writes into `import_jobs.holder`.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Works through the queue until `run` says to return or `stop` is
    /// given.
    ///
    /// Problems with a job's file or lines never make this fail: they end
    /// up in the job's `last_error` or in `import_errors`.
    ///
    /// # Errors
    ///
    /// [`Error::SourceDir`] when a source directory cannot be resolved;
    /// [`Error::Outage`] when the server stays out of reach for longer than
    /// the reconnect window ([`ProcessorOptions::reconnect_window`]: by
    /// default a daemon waits indefinitely), or when the run's
    /// [`RunOptions::max_time`] comes during an outage between jobs (see
    /// there for one in the middle of a job); [`Error::Connect`] when
    /// connecting fails in a way that another try cannot fix (access
    /// denied, say); [`Error::Query`] when the queue's own statements
    /// fail for a reason other than a lost connection (missing privileges,
    /// say); [`Error::SkipLockedUnsupported`] on a server too old for a
    /// shared queue.
    pub async fn run(
        &self,
        run: &RunOptions,
        stop: &Stopper,
        observer: &dyn Observer,
    ) -> Result<Summary> {
        // A source directory that does not exist stops the run before any
        // job is claimed.
        canonical_dirs(&self.options.source_dirs)?;
        let started = Instant::now();
        // A max time past what an Instant holds is no limit.
        let deadline = run.max_time.and_then(|t| started.checked_add(t));
        let sleep = run.sleep.unwrap_or(Duration::from_secs(3));
        let mut summary = Summary {
            jobs: Vec::new(),
            recovered: 0,
            end: RunEnd::QueueEmpty,
        };
        let mut tables_ready = false;
        let window = self.options.reconnect_window(run);
        let mid_job_window = self.options.mid_job_window(run);
        let mut outage = Outage::new(window);
        summary.end = loop {
            if stop.is_stopped() {
                break RunEnd::Stopped;
            }
            if run
                .max_jobs
                .is_some_and(|max| summary.jobs.len() as u64 >= max)
            {
                break RunEnd::MaxJobs;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break RunEnd::MaxTime;
            }
            // `None`: stopped.
            let Some(mut conn) = self.connect(stop, &mut outage, deadline).await? else {
                continue;
            };
            match self.next_job(&mut conn, &mut tables_ready, stop).await {
                Ok((recovered, job)) => {
                    outage.end();
                    summary.recovered += recovered;
                    match job {
                        Some(job) => {
                            let report =
                                self.work(conn, job, mid_job_window, stop, observer).await?;
                            observer.job_finished(&report);
                            summary.jobs.push(report);
                        }
                        None => {
                            conn.close().await;
                            if run.once {
                                break RunEnd::QueueEmpty;
                            }
                            tracing::debug!(sleep = ?sleep, "no job pending; connection closed, sleeping");
                            // A sleep past what an Instant holds: a day,
                            // then look again.
                            let wake = Instant::now() + sleep.min(Duration::from_secs(86_400));
                            let wake = deadline.map_or(wake, |d| wake.min(d));
                            tokio::select! {
                                () = stop.stopped() => {}
                                () = tokio::time::sleep_until(wake.into()) => {}
                            }
                        }
                    }
                }
                Err(ClaimFailure::Lost(e)) => {
                    conn.close_quickly().await;
                    let failure = one_line(&e.to_string());
                    let what = "lost the connection before a job";
                    self.wait_out(&mut outage, what, &failure, stop, deadline)
                        .await?;
                }
                Err(ClaimFailure::Fatal(e)) => {
                    conn.close().await;
                    return Err(e);
                }
            }
        };
        tracing::debug!(end = ?summary.end, jobs = summary.jobs.len(), "processor returns");
        Ok(summary)
    }

    /// Runs one call on the processor's connection within the batch bound
    /// (see the `bounded` module); `beats` shows it to the job's heartbeat.
    async fn call<T>(
        &self,
        what: &str,
        stop: &Stopper,
        beats: Option<&Beats>,
        call: impl Future<Output = std::result::Result<T, mysql_async::Error>>,
    ) -> std::result::Result<T, mysql_async::Error> {
        let setting = Some("ProcessorOptions::batch_timeout");
        bounded::call(what, self.bounds.call, setting, stop, beats, call).await
    }

    /// Runs one statement outside a job within the statement bound (see
    /// the `bounded` module).
    async fn statement<T>(
        &self,
        what: &str,
        stop: &Stopper,
        call: impl Future<Output = std::result::Result<T, mysql_async::Error>>,
    ) -> std::result::Result<T, mysql_async::Error> {
        bounded::call(what, self.bounds.statement, None, stop, None, call).await
    }

    fn query_error(&self, what: &'static str, source: mysql_async::Error) -> Error {
        Error::Query {
            what,
            url: self.connector.url().to_owned(),
            source,
        }
    }

    /// Connects, trying again after failures that another try may fix for
    /// as long as `outage` allows and `until` has not come. `None` when
    /// stopped meanwhile.
    async fn connect(
        &self,
        stop: &Stopper,
        outage: &mut Outage,
        until: Option<Instant>,
    ) -> Result<Option<Connection>> {
        let started = Instant::now();
        loop {
            let attempt = tokio::select! {
                biased;
                () = stop.stopped() => return Ok(None),
                attempt = self.open(stop) => attempt,
            };
            let failure = match attempt {
                Ok(conn) => return Ok(Some(conn)),
                Err(failure) => failure,
            };
            if !failure.transient {
                // An outage that began before this connect counts too;
                // a refusal at the first try has no outage behind it.
                let now = Instant::now();
                return Err(Error::Connect {
                    url: self.connector.url().to_owned(),
                    waited: outage.lasted(now).max(now - started),
                    message: failure.message,
                });
            }
            if !self
                .wait_out(outage, "cannot connect", &failure.brief, stop, until)
                .await?
            {
                return Ok(None);
            }
        }
    }

    /// After a failed try to reach the server (`what`, `failure` on one
    /// line): [`Error::Outage`] once `outage` has lasted its window or
    /// `until` (the run's max time) has come; otherwise one warning line
    /// and the wait before the next try. False when stopped meanwhile.
    ///
    /// A run whose max time ends it during an outage fails rather than
    /// ending as out of time: otherwise a run that never reached the
    /// server would look like one that did its work.
    async fn wait_out(
        &self,
        outage: &mut Outage,
        what: &str,
        failure: &str,
        stop: &Stopper,
        until: Option<Instant>,
    ) -> Result<bool> {
        let now = Instant::now();
        let retry_in = match outage.failed(now) {
            Next::RetryIn(delay) => delay,
            Next::GiveUp(lasted) => {
                return Err(self.outage(lasted, what, failure, OutageLimit::ReconnectWindow));
            }
        };
        let out_of_time = |now: Instant| {
            let ran_out = until.is_some_and(|until| now >= until);
            let lasted = outage.lasted(now);
            ran_out.then(|| self.outage(lasted, what, failure, OutageLimit::MaxTime))
        };
        if let Some(e) = out_of_time(now) {
            return Err(e);
        }
        tracing::warn!(
            url = %self.connector.url(),
            failures = outage.failures(),
            down_for = %format_args!("{:.1}s", outage.lasted(now).as_secs_f64()),
            retry_in = %format_args!("{:.1}s", retry_in.as_secs_f64()),
            "{what}: {failure}; trying again"
        );
        let wake = now + retry_in;
        let wake = until.map_or(wake, |until| wake.min(until));
        tokio::select! {
            biased;
            () = stop.stopped() => return Ok(false),
            () = tokio::time::sleep_until(wake.into()) => {}
        }
        match out_of_time(Instant::now()) {
            Some(e) => Err(e),
            None => Ok(true),
        }
    }

    fn outage(&self, waited: Duration, what: &str, failure: &str, limit: OutageLimit) -> Error {
        Error::Outage {
            url: self.connector.url().to_owned(),
            waited,
            last: format!("{what}: {failure}"),
            limit,
        }
    }

    /// One connect (a round of attempts), with the session told to end
    /// itself when left waiting (see `Bounds::session_secs`).
    async fn open(&self, stop: &Stopper) -> std::result::Result<Connection, ConnectFailure> {
        let mut conn = self.connector.connect().await?;
        let secs = self.bounds.session_secs();
        let told = self
            .statement(
                "setting the session's timeouts",
                stop,
                queue::end_sessions_left_waiting(&mut conn, secs),
            )
            .await;
        match told {
            Ok(()) => Ok(conn),
            Err(e) if is_connection_problem(&e) => {
                conn.close_quickly().await;
                let message = format!(
                    "the new connection failed at once: {}",
                    one_line(&e.to_string())
                );
                Err(ConnectFailure {
                    brief: message.clone(),
                    message,
                    transient: true,
                })
            }
            Err(e) => {
                // Nothing depends on it but how soon the server lets go of
                // a connection the processor gave up on.
                tracing::warn!(url = %self.connector.url(), error = %e, "the server refused the session's timeouts; a connection given up on may keep its transaction until the server's wait_timeout");
                Ok(conn)
            }
        }
    }

    /// Creates the tables (once per run), recovers stale jobs, claims one.
    async fn next_job(
        &self,
        conn: &mut Connection,
        tables_ready: &mut bool,
        stop: &Stopper,
    ) -> std::result::Result<(u64, Option<JobRow>), ClaimFailure> {
        let classify = |what: &'static str, e: mysql_async::Error| {
            if is_connection_problem(&e) {
                ClaimFailure::Lost(e)
            } else {
                ClaimFailure::Fatal(self.query_error(what, e))
            }
        };
        if !*tables_ready {
            let what = "creating the import tables";
            let missing = self
                .statement(what, stop, queue::create_tables(conn))
                .await
                .map_err(|e| classify(what, e))?;
            if !missing.is_empty() {
                // Under the batch bound: adding a column may copy a table.
                // Waiting for other sessions' locks, though, it holds up
                // their statements on the table, so it gives up on those
                // sooner.
                let adding = queue::add_columns(conn, &missing, self.bounds.statement, None);
                self.call(what, stop, None, adding)
                    .await
                    .map_err(|e| classify(what, e))?;
            }
            *tables_ready = true;
        }
        let recovered = self
            .statement(
                "putting back stale jobs",
                stop,
                queue::recover_stale(conn, self.options.stale_after, self.options.max_attempts),
            )
            .await
            .map_err(|e| classify("putting back stale jobs", e))?;
        if recovered > 0 {
            tracing::warn!(
                jobs = recovered,
                stale_after = ?self.options.stale_after,
                "put back or failed jobs whose processor stopped heartbeating"
            );
        }
        let job = self
            .statement("claiming a job", stop, queue::claim(conn, &self.holder))
            .await
            .map_err(|e| match e {
                mysql_async::Error::Server(s) if s.code == 1064 => {
                    ClaimFailure::Fatal(Error::SkipLockedUnsupported {
                        url: self.connector.url().to_owned(),
                        message: s.message,
                    })
                }
                e => classify("claiming a job", e),
            })?;
        Ok((recovered, job))
    }

    /// Imports a claimed job with its heartbeat running, re-opening the
    /// connection as often as needed, and closes the connection.
    async fn work(
        &self,
        conn: Connection,
        row: JobRow,
        window: Option<Duration>,
        stop: &Stopper,
        observer: &dyn Observer,
    ) -> Result<JobReport> {
        let beats = Beats::new();
        beats.beat();
        let heartbeat = Heartbeat::start(
            self.connector.clone(),
            row.id,
            self.holder.clone(),
            self.options.stale_after,
            self.bounds,
            beats.clone(),
        );
        let report = self.work_on(conn, row, beats, window, stop, observer).await;
        heartbeat.stop().await;
        report
    }

    async fn work_on(
        &self,
        mut conn: Connection,
        row: JobRow,
        beats: Beats,
        window: Option<Duration>,
        stop: &Stopper,
        observer: &dyn Observer,
    ) -> Result<JobReport> {
        let started = Instant::now();
        tracing::info!(
            job = row.id,
            source = ?row.source,
            attempt = row.attempts,
            line = row.checkpoint.line_no,
            holder = %self.holder,
            "job claimed"
        );
        let mut job = Job {
            bytes_total: row.spec.as_ref().map_or(0, |s| s.identity.size),
            row,
            lines_this_run: 0,
            rows_loaded: 0,
            beats,
            insert_only: false,
        };
        let mut reconnects = 0;
        let mut stalled = 0;
        let mut resync = false;
        let outcome = loop {
            let before = job.row.checkpoint;
            let step = if resync {
                self.resync(&mut conn, &mut job, stop).await
            } else {
                None
            };
            let step = match step {
                Some(step) => step,
                None => self.attempt(&mut conn, &mut job, stop, observer).await,
            };
            match step {
                Step::Done(outcome) => break outcome,
                Step::Again => resync = false,
                Step::Fatal(e) => {
                    // The job stays `processing` and goes back to the queue
                    // once stale.
                    conn.close().await;
                    return Err(e);
                }
                Step::Lost(e) => {
                    reconnects += 1;
                    stalled = if job.row.checkpoint == before {
                        stalled + 1
                    } else {
                        0
                    };
                    conn.close_quickly().await;
                    if stop.is_stopped() {
                        tracing::warn!(
                            job = job.row.id,
                            error = %e,
                            line = job.row.checkpoint.line_no,
                            "lost the connection while stopping; putting the job back over a new one"
                        );
                        let outcome = self.release_elsewhere(&job).await;
                        return Ok(self.report(&job, outcome, reconnects, started));
                    }
                    tracing::warn!(
                        job = job.row.id,
                        error = %e,
                        line = job.row.checkpoint.line_no,
                        reconnects,
                        "lost the connection mid-job; re-opening it to resume from the checkpoint"
                    );
                    conn = match self.connect(stop, &mut Outage::new(window), None).await? {
                        Some(conn) => conn,
                        None => {
                            let outcome = self.release_elsewhere(&job).await;
                            return Ok(self.report(&job, outcome, reconnects, started));
                        }
                    };
                    if stalled >= MAX_STALLED_ATTEMPTS {
                        let message = format!(
                            "the connection was lost {stalled} times in a row without progress at line {} (last: {e}); if the server's log shows packets too large, raise max_allowed_packet; if batches take longer than {:?}, raise ProcessorOptions::batch_timeout",
                            job.row.checkpoint.line_no, self.bounds.call
                        );
                        match self.fail(&mut conn, &job, &message, stop).await {
                            Step::Lost(e) => {
                                conn.close_quickly().await;
                                return Err(self.query_error("failing a stalled job", e));
                            }
                            Step::Fatal(e) => {
                                conn.close().await;
                                return Err(e);
                            }
                            Step::Done(outcome) => break outcome,
                            // `fail` never asks for another attempt.
                            Step::Again => {}
                        }
                    }
                    resync = true;
                }
            }
        };
        conn.close().await;
        let report = self.report(&job, outcome, reconnects, started);
        match &report.outcome {
            JobOutcome::Failed(error) => {
                // Debug formatting escapes control characters: paths and
                // errors come from the queue, which others may write.
                tracing::warn!(job = report.id, source = ?report.source, error = ?error, "job failed")
            }
            JobOutcome::Lost => {
                tracing::warn!(
                    job = report.id,
                    "job was taken over by another processor after a missed heartbeat; left to it"
                )
            }
            outcome => tracing::info!(
                job = report.id,
                outcome = ?outcome,
                rows = report.rows_imported,
                rejected = report.rows_rejected,
                loaded = report.rows_loaded,
                elapsed = ?report.elapsed,
                "done with job"
            ),
        }
        Ok(report)
    }

    fn report(
        &self,
        job: &Job,
        outcome: JobOutcome,
        reconnects: u32,
        started: Instant,
    ) -> JobReport {
        JobReport {
            id: job.row.id,
            source: job.row.source.clone(),
            outcome,
            rows_imported: job.row.rows_imported,
            rows_rejected: job.row.rows_rejected,
            lines_this_run: job.lines_this_run,
            rows_loaded: job.rows_loaded,
            reconnects,
            elapsed: started.elapsed(),
        }
    }

    /// After a stop request that found the connection lost: puts the job
    /// back over a new connection, if one opens within `RELEASE_WITHIN`
    /// (a batch transaction still open on the lost connection may hold the
    /// job's row; then the job goes back once it is stale).
    async fn release_elsewhere(&self, job: &Job) -> JobOutcome {
        let release = async {
            let mut conn = self.connector.connect().await.map_err(|f| f.brief)?;
            let released = queue::release(&mut conn, job.row.id, &self.holder).await;
            conn.close_quickly().await;
            released.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(RELEASE_WITHIN, release).await {
            Ok(Ok(true)) => {
                tracing::info!(
                    job = job.row.id,
                    line = job.row.checkpoint.line_no,
                    "stopping: job put back in the queue at its checkpoint"
                );
                JobOutcome::Released
            }
            Ok(Ok(false)) => JobOutcome::Lost,
            Ok(Err(error)) => {
                tracing::warn!(job = job.row.id, error = %error, "stopping: cannot put the job back; it goes back once its heartbeat is stale");
                JobOutcome::Interrupted
            }
            Err(_) => {
                tracing::warn!(job = job.row.id, waited = ?RELEASE_WITHIN, "stopping: the job could not be put back in time; it goes back once its heartbeat is stale");
                JobOutcome::Interrupted
            }
        }
    }

    /// After a reconnect: reads the job's row. `None` when the job is still
    /// ours (its checkpoint and counters now from the row).
    async fn resync(&self, conn: &mut Connection, job: &mut Job, stop: &Stopper) -> Option<Step> {
        let read = queue::load_settled(conn, job.row.id);
        let row = match self
            .call("reading a job", stop, Some(&job.beats), read)
            .await
        {
            Ok(row) => row,
            Err(e) if is_connection_problem(&e) => return Some(Step::Lost(e)),
            Err(e) => return Some(Step::Fatal(self.query_error("reading a job", e))),
        };
        let Some(row) = row else {
            return Some(Step::Done(JobOutcome::Lost));
        };
        let ours = row.holder.as_deref() == Some(self.holder.as_str());
        let status = row.status;
        job.row.checkpoint = row.checkpoint;
        job.row.rows_imported = row.rows_imported;
        job.row.rows_rejected = row.rows_rejected;
        job.row.content_hash = row.content_hash;
        match (ours, status) {
            (true, Status::Processing) => None,
            // Finished, and the answer to the finishing statement was lost.
            (true, status) if status.is_final() => Some(Step::Done(status.into())),
            _ => Some(Step::Done(JobOutcome::Lost)),
        }
    }

    /// One pass over the rest of the file on one connection.
    async fn attempt(
        &self,
        conn: &mut Connection,
        job: &mut Job,
        stop: &Stopper,
        observer: &dyn Observer,
    ) -> Step {
        let beats = job.beats.clone();
        let beats = Some(&beats);
        let read = queue::statement_bytes(conn);
        let statement_bytes = match self
            .call("reading max_allowed_packet", stop, beats, read)
            .await
        {
            Ok(bytes) => bytes,
            Err(e) => {
                return self
                    .on_error(conn, job, "reading max_allowed_packet", e, stop)
                    .await;
            }
        };
        let Some(spec) = job.row.spec.clone() else {
            return self
                .fail(
                    conn,
                    job,
                    "this job was enqueued by an older dbslots that recorded no table and no file identity; enqueue the file again with EnqueueOptions::new(table)",
                    stop,
                )
                .await;
        };
        let zone = match Zone::parse(&spec.time_zone) {
            Ok(zone) => zone,
            Err(reason) => return self.fail(conn, job, &reason, stop).await,
        };
        let mut set_zone = String::from("SET time_zone = ");
        push_text(&mut set_zone, zone.session());
        let set = conn.query_drop(set_zone);
        match self
            .call("setting the session time zone", stop, beats, set)
            .await
        {
            Ok(()) => {}
            Err(mysql_async::Error::Server(e)) if e.code == 1298 => {
                let message = format!(
                    "the server does not know the time zone {}: load its time zone tables (mariadb-tzinfo-to-sql /usr/share/zoneinfo | mariadb mysql, or mysql_tzinfo_to_sql for MySQL) or enqueue with an offset like +01:00",
                    zone.session()
                );
                return self.fail(conn, job, &message, stop).await;
            }
            Err(e) => {
                return self
                    .on_error(conn, job, "setting the session time zone", e, stop)
                    .await;
            }
        }
        let read = table::load(conn, &spec.table);
        let table = match self
            .call("reading the table's columns", stop, beats, read)
            .await
        {
            Ok(Ok(table)) => table,
            Ok(Err(problem)) => return self.fail(conn, job, &problem.to_string(), stop).await,
            Err(e) => {
                return self
                    .on_error(conn, job, "reading the table's columns", e, stop)
                    .await;
            }
        };
        let source_dirs = match canonical_dirs(&self.options.source_dirs) {
            Ok(dirs) => dirs,
            Err(e) => return Step::Fatal(e),
        };
        let plan = ReadPlan {
            job_id: job.row.id,
            path: job.row.source.clone(),
            start: job.row.checkpoint,
            start_hash: job.row.content_hash,
            identity: spec.identity,
            delimiter: spec.delimiter,
            table,
            no_key: spec.no_key,
            zone,
            source_dirs,
            limits: Limits {
                rows: self.options.batch_rows,
                statement_bytes,
            },
            load_data: !job.insert_only,
        };
        let mut rx = match spawn_reader(plan) {
            Ok(rx) => rx,
            Err(source) => {
                return Step::Fatal(Error::Thread {
                    path: job.row.source.clone(),
                    source,
                });
            }
        };
        loop {
            // Waiting for the reader: a stop puts the job back at once (no
            // batch is in flight), and the idle connection is pinged, so
            // the server keeps the session and a dead connection is found.
            let message = tokio::select! {
                biased;
                () = stop.stopped() => return self.release(conn, job, stop).await,
                message = rx.recv() => message,
                () = tokio::time::sleep(self.bounds.ping_every()) => {
                    let ping = conn.ping();
                    if let Err(e) = self.call("pinging the server while the file is read", stop, beats, ping).await {
                        return self.on_error(conn, job, "pinging the server", e, stop).await;
                    }
                    continue;
                }
            };
            let Some(message) = message else {
                // The reader ends every file with `End` or a problem; a
                // silent end means its thread died.
                return self
                    .fail(
                        conn,
                        job,
                        &format!(
                            "reading {} stopped unexpectedly at line {}; enqueue the file again",
                            job.row.source.display(),
                            job.row.checkpoint.line_no
                        ),
                        stop,
                    )
                    .await;
            };
            match message {
                Err(problem) => return self.fail(conn, job, &problem.to_string(), stop).await,
                Ok(Chunk::Opened { size, form }) => {
                    tracing::debug!(
                        job = job.row.id,
                        ?form,
                        "file opened; rows go in as {}",
                        if form == Form::Load {
                            "LOAD DATA streams"
                        } else {
                            "INSERT statements"
                        }
                    );
                    job.bytes_total = size;
                    observer.job_started(&job.progress());
                }
                Ok(Chunk::Batch(batch)) => {
                    let commit = queue::commit_batch(conn, job.row.id, &self.holder, &batch);
                    let committed = self.call("committing a batch", stop, beats, commit).await;
                    match committed {
                        Ok(Committed::Yes) => {
                            job.beats.beat();
                            job.row.checkpoint = batch.end;
                            job.row.content_hash = Some(batch.hash);
                            job.row.rows_imported += batch.rows;
                            job.row.rows_rejected += batch.rejected;
                            job.lines_this_run += batch.rows + batch.rejected;
                            if matches!(batch.rows_data, Some(Rows::Load { .. })) {
                                job.rows_loaded += batch.rows;
                            }
                            tracing::trace!(
                                job = job.row.id,
                                line = batch.end.line_no,
                                rows = batch.rows,
                                rejected = batch.rejected,
                                "batch committed"
                            );
                            observer.batch_committed(&job.progress());
                            if stop.is_stopped() {
                                return self.release(conn, job, stop).await;
                            }
                        }
                        Ok(Committed::Lost) => return Step::Done(JobOutcome::Lost),
                        Ok(Committed::NotLoaded(why)) => {
                            tracing::info!(
                                job = job.row.id,
                                line = job.row.checkpoint.line_no,
                                reason = %why,
                                "batch rolled back: its LOAD DATA did not insert every row as a new one; the rest of the job goes in with INSERT ... ON DUPLICATE KEY UPDATE"
                            );
                            job.insert_only = true;
                            return Step::Again;
                        }
                        Err(e) => {
                            return self
                                .on_error(conn, job, "committing a batch", e, stop)
                                .await;
                        }
                    }
                }
                Ok(Chunk::End) => {
                    if job.row.rows_imported + job.row.rows_rejected == 0 {
                        let problem = FileProblem::NoData(job.row.source.clone());
                        return self.fail(conn, job, &problem.to_string(), stop).await;
                    }
                    let finish = queue::finish(conn, job.row.id, &self.holder);
                    return match self.call("finishing a job", stop, beats, finish).await {
                        Ok(Some(status)) => Step::Done(status.into()),
                        Ok(None) => Step::Done(JobOutcome::Lost),
                        Err(e) => self.on_error(conn, job, "finishing a job", e, stop).await,
                    };
                }
            }
        }
    }

    /// A statement failed: a lost connection is retried, anything else fails
    /// the job (the processor goes on with the next one).
    async fn on_error(
        &self,
        conn: &mut Connection,
        job: &Job,
        what: &str,
        e: mysql_async::Error,
        stop: &Stopper,
    ) -> Step {
        if is_connection_problem(&e) {
            return Step::Lost(e);
        }
        let rollback = conn.query_drop("ROLLBACK");
        if let Err(lost) = self
            .call("rolling back", stop, Some(&job.beats), rollback)
            .await
            && is_connection_problem(&lost)
        {
            return Step::Lost(lost);
        }
        self.fail(conn, job, &format!("{what} failed: {e}"), stop)
            .await
    }

    async fn fail(&self, conn: &mut Connection, job: &Job, message: &str, stop: &Stopper) -> Step {
        let fail = queue::fail(conn, job.row.id, &self.holder, message);
        match self
            .call("failing a job", stop, Some(&job.beats), fail)
            .await
        {
            Ok(true) => Step::Done(JobOutcome::Failed(message.to_owned())),
            Ok(false) => Step::Done(JobOutcome::Lost),
            Err(e) if is_connection_problem(&e) => Step::Lost(e),
            Err(e) => Step::Fatal(self.query_error("failing a job", e)),
        }
    }

    async fn release(&self, conn: &mut Connection, job: &Job, stop: &Stopper) -> Step {
        let release = queue::release(conn, job.row.id, &self.holder);
        match self
            .call("putting a job back", stop, Some(&job.beats), release)
            .await
        {
            Ok(true) => {
                tracing::info!(
                    job = job.row.id,
                    line = job.row.checkpoint.line_no,
                    "stopping: job put back in the queue at its checkpoint"
                );
                Step::Done(JobOutcome::Released)
            }
            Ok(false) => Step::Done(JobOutcome::Lost),
            Err(e) if is_connection_problem(&e) => Step::Lost(e),
            Err(e) => Step::Fatal(self.query_error("putting a job back", e)),
        }
    }
}

/// The source directories with every symlink resolved.
fn canonical_dirs(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    dirs.iter()
        .map(|dir| {
            std::fs::canonicalize(dir).map_err(|source| Error::SourceDir {
                path: dir.clone(),
                source,
            })
        })
        .collect()
}

/// `HOSTNAME:PID:RANDOM`: unique among processors, readable in `status`.
fn default_holder() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown-host".to_owned()
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let host: String = host.chars().take(200).collect();
    format!("{host}:{}:{:08x}", std::process::id(), nanos ^ 0x5bd1_e995)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_names_host_and_pid() {
        let h = default_holder();
        let parts: Vec<&str> = h.rsplitn(3, ':').collect();
        assert_eq!(parts[1], std::process::id().to_string());
        assert!(!parts[2].is_empty());
    }
}
