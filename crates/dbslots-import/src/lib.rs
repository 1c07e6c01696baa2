//! Imports CSV files of meter readings into MySQL from a job queue that any
//! number of processors, on any number of hosts, share.
//!
//! A key design decision made in this crate is that **the database row of a
//! job is its only state**: the byte offset and line number a job has
//! reached are written into `import_jobs` in the same transaction as the
//! batch of readings and rejections that got it there. Whatever happens to a
//! processor (SIGKILL, a killed connection, a server restart) the row says
//! exactly which lines are in, so the next attempt, by the same processor
//! after a reconnect or by another one after the heartbeat went stale, seeks
//! to that offset and neither duplicates nor skips a line. Readings are also
//! written with `INSERT ... ON DUPLICATE KEY UPDATE` on `(meter_id,
//! reading_at)`, so importing a file twice leaves the same rows.
//!
//! The rest follows from that:
//!
//! * Jobs are claimed with `SELECT ... FOR UPDATE SKIP LOCKED` (MySQL 8.0.1+,
//!   MariaDB 10.6+) and every later write is conditional on still holding
//!   the job; a holder that stops heartbeating loses it (the invariants are
//!   listed in the documentation of the `queue` module).
//! * A processor holds a connection (and, with a [`dbslots_core::Pool`], a
//!   slot) only while it works on a job; it closes it between jobs and
//!   before sleeping.
//! * Lines are validated before they reach SQL; a bad line is kept in
//!   `import_errors` with its line number, the reason and the raw line, and
//!   the job ends `completed_with_errors`. A file that cannot be imported at
//!   all (missing, unreadable, empty, wrong header) fails its job with a
//!   `last_error` that says what to do.
//! * Readings go in as multi-row statements of literals (10,000 lines by
//!   default, under half of `max_allowed_packet`), built on a reader thread
//!   while the previous batch is inserted; memory stays flat whatever the
//!   file's size.
//!
//! ```no_run
//! use dbslots_import::{NoObserver, ProcessorOptions, Queue, RunOptions, StopSignal};
//!
//! # async fn demo() -> dbslots_import::Result<()> {
//! let queue = Queue::new("mysql://app:secret@db:3306/energy", None)?;
//! let ids = queue.enqueue(&["/data/readings-2024-06.csv"]).await?;
//! let processor = queue.processor(ProcessorOptions::new());
//! let summary = processor
//!     .run(&RunOptions::new().once(true), &StopSignal::new(), &NoObserver)
//!     .await?;
//! println!("{ids:?}: {} jobs done", summary.jobs.len());
//! # Ok(())
//! # }
//! ```
//!
//! Run one processor per lock file with [`InstanceLock`]; `dbslots import`
//! is the command line for all of this.
#![deny(missing_docs)]

mod batch;
mod error;
mod link;
mod lock;
mod parse;
mod processor;
mod queue;
mod source;

use std::path::Path;
use std::sync::Arc;

use dbslots_core::Pool;

pub use batch::MAX_RAW_LINE_BYTES;
pub use error::{Error, Result};
pub use lock::{InstanceLock, default_lock_path};
pub use parse::MAX_METER_ID_CHARS;
pub use processor::{
    JobOutcome, JobReport, NoObserver, Observer, Processor, ProcessorOptions, Progress, RunEnd,
    RunOptions, RunSummary, StopSignal,
};
pub use queue::{JobStatus, Status};
pub use source::MAX_LINE_BYTES;

use link::Connector;

/// The import queue in one database: enqueue files, list jobs, and make
/// processors.
///
/// Every operation opens its own connection and closes it before it
/// returns; with a pool, each holds a slot meanwhile.
#[derive(Debug, Clone)]
pub struct Queue {
    connector: Arc<Connector>,
}

impl Queue {
    /// The queue in the database of `url`
    /// (`mysql://USER:PASSWORD@HOST:PORT/DATABASE`). With `pool`, every
    /// connection holds one of its slots while it is open.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] when the URL cannot be parsed or names no
    /// database. Nothing is connected yet.
    pub fn new(url: &str, pool: Option<Pool>) -> Result<Queue> {
        Ok(Queue {
            connector: Arc::new(Connector::new(url, pool)?),
        })
    }

    /// The URL, password redacted.
    pub fn url(&self) -> &str {
        self.connector.url()
    }

    /// A processor for this queue.
    pub fn processor(&self, options: ProcessorOptions) -> Processor {
        Processor::new(self.connector.clone(), options)
    }

    /// Creates the tables `import_jobs`, `meter_readings` and
    /// `import_errors` where they are missing. Processors and
    /// [`Queue::enqueue`] do this themselves.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] or [`Error::Query`].
    pub async fn create_tables(&self) -> Result<()> {
        self.with_connection("creating the import tables", async |conn| {
            queue::create_tables(conn).await
        })
        .await
    }

    /// Adds one pending job per file and returns their ids, in order. Paths
    /// are stored absolute (relative ones are resolved against the current
    /// directory), since processors may run elsewhere; the files are not
    /// read now.
    ///
    /// # Errors
    ///
    /// [`Error::Source`] for a path that is not UTF-8 or too long (nothing
    /// is enqueued then); [`Error::Connect`] or [`Error::Query`].
    pub async fn enqueue<P: AsRef<Path>>(&self, files: &[P]) -> Result<Vec<u64>> {
        let mut sources = Vec::with_capacity(files.len());
        for file in files {
            let file = file.as_ref();
            let absolute = std::path::absolute(file).map_err(|e| Error::Source {
                path: file.to_path_buf(),
                reason: format!("cannot make the path absolute: {e}"),
            })?;
            let Some(text) = absolute.to_str() else {
                return Err(Error::Source {
                    path: file.to_path_buf(),
                    reason: "the path is not UTF-8; rename the file".into(),
                });
            };
            if text.chars().count() > 4096 {
                return Err(Error::Source {
                    path: file.to_path_buf(),
                    reason: "the path is over 4096 characters long; move the file".into(),
                });
            }
            sources.push(text.to_owned());
        }
        self.with_connection("enqueueing files", async |conn| {
            queue::create_tables(conn).await?;
            queue::enqueue(conn, &sources).await
        })
        .await
    }

    /// The newest `limit` jobs (every job without a limit), oldest first.
    /// Empty when the tables do not exist yet.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] or [`Error::Query`].
    pub async fn jobs(&self, limit: Option<u64>) -> Result<Vec<JobStatus>> {
        self.with_connection("listing jobs", async |conn| queue::list(conn, limit).await)
            .await
    }

    /// How many jobs are in each status; statuses without jobs are left
    /// out.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] or [`Error::Query`].
    pub async fn counts(&self) -> Result<Vec<(Status, u64)>> {
        self.with_connection("counting jobs", async |conn| queue::counts(conn).await)
            .await
    }

    async fn with_connection<T>(
        &self,
        what: &'static str,
        f: impl AsyncFnOnce(&mut mysql_async::Conn) -> std::result::Result<T, mysql_async::Error>,
    ) -> Result<T> {
        let started = std::time::Instant::now();
        let mut conn = self
            .connector
            .connect()
            .await
            .map_err(|failure| Error::Connect {
                url: self.connector.url().to_owned(),
                waited: started.elapsed(),
                message: failure.message,
            })?;
        let result = f(&mut conn).await;
        conn.close().await;
        result.map_err(|source| Error::Query {
            what,
            url: self.connector.url().to_owned(),
            source,
        })
    }
}
