//! Imports CSV files into any existing MySQL table from a job queue that
//! any number of processors, on any number of hosts, share.
//!
//! A key design decision made in this crate is that **the database row of a
//! job is its only state**: the byte offset and line number a job has
//! reached (and a hash of the file up to there) are written into
//! `import_jobs` in the same transaction as the batch of rows and
//! rejections that got it there. Whatever happens to a processor (SIGKILL, a
//! killed connection, a server restart) the row says exactly which records
//! are in, so the next attempt, by the same processor after a reconnect or
//! by another one after the heartbeat went stale, seeks to that offset and
//! neither duplicates nor skips a record. Rows are written with
//! `INSERT ... ON DUPLICATE KEY UPDATE` on the table's primary key or a
//! unique key made of the file's columns, so importing a file twice leaves
//! the same rows.
//!
//! # The file and the table
//!
//! A job names its table ([`EnqueueOptions::table`]). The file's first
//! record is its header: each name is a column of the table (ASCII case
//! ignored); columns the file lacks take their defaults. A header name the
//! table lacks, a generated column, or a `NOT NULL` column without default
//! that the file lacks is refused at enqueue and, should the table have
//! changed since, fails the job before any row, naming the column. A table
//! without a primary key or unique key made of file columns is refused
//! unless [`EnqueueOptions::no_key`] is set: then rows are appended with a
//! plain `INSERT`, a job still never writes a record twice (its
//! checkpoint), but **a second enqueue of the same file appends every row
//! again**. That needs a table whose writes a rollback undoes (InnoDB):
//! into a table of another engine (MyISAM, say) rows without a key are
//! refused, since a batch redone after a lost connection or a killed
//! processor would append them again. A key of `NOT NULL` columns is
//! preferred; when the file covers only a key with a nullable column, a
//! record with NULL there is rejected (NULLs never match, so a second
//! import would add that row again).
//!
//! Files are RFC 4180 CSV, read with `csv-core`: quoted fields may hold the
//! delimiter (`,` by default, or `;` or tab), doubled quotes, CR and LF;
//! records end with LF, CRLF or a CR alone (as in classic Mac files), and
//! line numbers count each of these as a line break; a UTF-8 byte order
//! mark is skipped. Blank lines hold no record, except in a file of one
//! column, where a blank line is a record of one empty field (a NULL, as
//! PostgreSQL's `COPY … CSV` writes it, or a rejection in a `NOT NULL`
//! number column). A record over [`MAX_RECORD_BYTES`] is rejected, never
//! buffered. So is a
//! record that breaks the quoting rules (text after a quoted field's
//! closing quote, or a quote never closed before the end of the file),
//! naming the line of the quote: read leniently, one stray quote would
//! merge the records after it into one field.
//!
//! Every value is checked against its column's type as the server in strict
//! mode would store it, and a value the server would round, truncate or
//! refuse is rejected instead, with the number of the line its record
//! starts on, the column and the reason, into `import_errors`:
//!
//! | column type | accepted |
//! | --- | --- |
//! | `TINYINT` … `BIGINT` | decimal integers in the signed or `UNSIGNED` range; `TINYINT(1)` (`BOOLEAN`) also `true`/`false` |
//! | `DECIMAL(p,s)` | at most `p-s` integer digits and `s` decimals (trailing zeros beyond `s` are fine), no exponent |
//! | `FLOAT`, `DOUBLE` | finite decimal numbers, exponent allowed, within the type's range (stored as the nearest binary value, as the server does) |
//! | `CHAR(n)`, `VARCHAR(n)` | UTF-8 text of at most `n` characters that the column's character set (utf8mb4, utf8mb3, latin1, ascii) can hold; in `CHAR`, no trailing spaces (the server drops them) |
//! | `TINYTEXT` … `LONGTEXT` | the same, at most the type's length in bytes |
//! | `BINARY`, `VARBINARY`, `BLOB`s | the field's bytes, at most the column's length; in `BINARY(n)`, exactly `n` (the server pads shorter values with zero bytes) |
//! | `ENUM`, `SET` | members (ASCII case ignored on case-insensitive collations), stored in the column's spelling |
//! | `DATE` | `YYYY-MM-DD`, a real calendar date in the years 1000 to 9999 |
//! | `DATETIME(n)` | `YYYY-MM-DD hh:mm:ss[.f]` (or with `T`), at most `n` fractional digits, optionally ending in `Z` or an offset (`+01:00`), which converts it to the job's time zone |
//! | `TIMESTAMP(n)` | the same, and the time must exist exactly once in the job's time zone (a local time skipped or repeated by a clock change is rejected, not guessed) and lie between 1970-01-01 00:00:01 and 2038-01-19 03:14:07 UTC |
//! | `YEAR` | 1901 to 2155 |
//! | `JSON` (MySQL's type, or MariaDB's `json_valid()` check) | valid JSON |
//!
//! **NULL:** in a nullable column an empty field and `\N` are NULL. In a
//! `NOT NULL` text, binary or `SET` column an empty field is the empty
//! value; in any other `NOT NULL` column an empty field or `\N` is
//! rejected. Values of non-text columns may have spaces or tabs around
//! them; text is taken as it is. Columns of other types (`BIT`, `TIME`,
//! spatial types, text in other character sets) cannot be in the file.
//! `CHECK` constraints, foreign keys and triggers are the server's: a row
//! that violates one fails its batch and the job, with the server's message.
//!
//! # Time zones
//!
//! A job has a time zone ([`EnqueueOptions::time_zone`], UTC by default: an
//! offset like `+01:00` or an IANA name like `Europe/Berlin`). It is the
//! session's `time_zone` while the job is imported (an IANA name needs the
//! server's time zone tables), local times in the file are read in it, and
//! values with an explicit offset are converted to it.
//!
//! # A changed file is never mixed
//!
//! Enqueueing records the file's device, inode, size, modification time and
//! a hash of its first and last 64 KiB. Before the first batch and on every
//! resume the processor checks them, and on a resume also hashes the content
//! up to the checkpoint against the hash committed with it; while reading
//! it checks size and modification time before every batch and at the end,
//! where it must have read exactly the size recorded. A file that differs
//! fails its job with a `last_error` saying what changed.
//!
//! # Which files, and what is said about them
//!
//! With [`ProcessorOptions::source_dir`] a processor imports only files
//! whose real path (symlinks resolved, as the kernel opened the file) lies
//! in one of those directories; a job whose file lies outside fails without
//! a byte of it being read. `last_error` names files, header fields and
//! what to do, never other content of a file.
//!
//! The rest follows from the design:
//!
//! * Jobs are claimed with `SELECT ... FOR UPDATE SKIP LOCKED` (MySQL 8.0.1+,
//!   MariaDB 10.6+) and every later write is conditional on still holding
//!   the job; a holder that stops heartbeating loses it (the invariants are
//!   listed in the documentation of the `queue` module). The heartbeat runs
//!   on its own timer, so a slow batch does not look like a dead processor.
//! * **No wait on the server is unbounded.** A connection that stops
//!   passing bytes without being closed (a failover, a database host
//!   rebooting, a firewall dropping its state) never fails by itself. A
//!   batch (its whole transaction) or any other statement without an
//!   answer within [`ProcessorOptions::batch_timeout`] (three times
//!   `stale_after` by default) counts as a lost connection: the batch is
//!   redone from the checkpoint over a new connection, neither duplicated
//!   nor skipped, and the server, given half that bound as the session's
//!   timeouts, rolls the abandoned transaction back by itself within it.
//!   The heartbeat vouches for a batch without an answer only up to that
//!   bound, so a processor stuck beyond it loses its job to another one.
//!   The queue's other
//!   statements ([`Queue::enqueue`], [`Queue::jobs`], [`Queue::counts`],
//!   [`Queue::create_tables`], and a processor's own before each job:
//!   creating the tables, putting back stale jobs, claiming) give up after
//!   [`Queue::statement_timeout`] (60 s by default) each, however many an
//!   operation runs: an operation then fails with [`Error::NoAnswer`], a
//!   processor tries again over a new connection. Adding a column to
//!   queue tables of an older version may take longer, but gives up on
//!   other sessions' locks on the table after half the statement timeout
//!   (error 1205), so it never holds up their statements for long.
//!   Connections send TCP keepalive probes after 10 s of silence.
//! * **Outages are waited out.** While the server is out of reach
//!   (connects failing in a way another try may fix, or connections lost
//!   before a job is claimed), a processor tries again after a backoff of
//!   up to 5 s, logging one warning line per failed try. A daemon does so
//!   for as long as the outage lasts, a run with [`RunOptions::once`]
//!   (cron, where the next run comes anyway) for 120 s, then
//!   [`Processor::run`] fails with [`Error::Outage`];
//!   [`ProcessorOptions::reconnect_for`] sets another window for either. A
//!   stop request ends the wait at once. A run's [`RunOptions::max_time`]
//!   ends a wait between jobs with [`Error::Outage`] (so a run that could
//!   not reach its server never ends as one that did its work); in the
//!   middle of a job, the job in hand is finished, waiting out the outage
//!   for the reconnect window (120 s for a daemon with a max time).
//! * **Stopping** ([`Stopper`]) finishes the batch being committed and
//!   puts the job back at its checkpoint; a batch that has no answer
//!   within 10 s of the stop request is given up instead, so
//!   [`Processor::run`] returns within 30 s whatever the network does.
//! * A processor holds a connection (and, with a [`dbslots_core::Pool`], a
//!   slot) only while it works on a job; it closes it between jobs and
//!   before sleeping.
//! * Batches (50,000 records by default) are built on a reader thread
//!   while the previous batch is inserted; memory stays flat whatever the
//!   file's size.
//! * **How rows are written.** Into an InnoDB table, a batch's rows go in
//!   with `LOAD DATA LOCAL INFILE ... IGNORE` from a stream in memory (the
//!   validated values, re-encoded; the server names no file and none is
//!   read), which costs the server about half the CPU per row of a
//!   multi-row `INSERT`. Such a batch is committed only when the server
//!   reports that it inserted every row as a new row without a single
//!   warning, which is exactly what `INSERT ... ON DUPLICATE KEY UPDATE`
//!   does with new keys (insert triggers fire the same way). When a key
//!   is already in the table or twice in the batch, or anything draws a
//!   warning or an error, or the server refuses `LOAD DATA LOCAL`
//!   (`local_infile` is off by default in MySQL 8), the batch is rolled
//!   back before its checkpoint moves and the rest of the job, from that
//!   batch on, goes in as multi-row `INSERT ... ON DUPLICATE KEY UPDATE`
//!   statements of literals (under half of `max_allowed_packet`). Tables
//!   of other engines (a rollback cannot undo a MyISAM write) and files
//!   with binary columns are always written with `INSERT`.
//!   [`JobReport::rows_loaded`] says how many rows went in each way. A
//!   record whose `INSERT` row would not fit into a statement is rejected
//!   whichever way its batch goes.
//!
//! For example, meter readings (`meter_id,reading_at,kwh`) into
//!
//! ```sql
//! CREATE TABLE meter_readings (
//!     meter_id VARCHAR(32) NOT NULL,
//!     reading_at DATETIME NOT NULL,
//!     kwh DECIMAL(18,6) NOT NULL,
//!     PRIMARY KEY (meter_id, reading_at)
//! );
//! ```
//!
//! ```no_run
//! use dbslots_import::{EnqueueOptions, NoObserver, ProcessorOptions, Queue, RunOptions, Stopper};
//!
//! # async fn demo() -> dbslots_import::Result<()> {
//! let queue = Queue::new("mysql://app:secret@db:3306/energy", None)?;
//! let ids = queue
//!     .enqueue(&["/data/readings-2024-06.csv"], &EnqueueOptions::new("meter_readings"))
//!     .await?;
//! let processor = queue.processor(ProcessorOptions::new().source_dir("/data"));
//! let summary = processor
//!     .run(&RunOptions::new().once(true), &Stopper::new(), &NoObserver)
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
mod identity;
mod link;
mod lock;
mod processor;
mod queue;
mod record;
mod source;
mod stop;
mod table;
mod value;
mod watchdog;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dbslots_core::Pool;

pub use error::{Error, OutageLimit, Result};
pub use lock::{InstanceLock, default_lock_path};
pub use processor::{
    JobOutcome, JobReport, NoObserver, Observer, Processor, ProcessorOptions, Progress, RunEnd,
    RunOptions, Summary,
};
pub use queue::{JobStatus, Status};
pub use record::{MAX_FIELDS, MAX_RAW_LINE_BYTES, MAX_RECORD_BYTES};
pub use stop::Stopper;

use identity::FileIdentity;
use link::Connector;
use queue::{JobSpec, NewJob};
use watchdog::Watchdog;

/// What a job imports into, and how its file is read.
#[derive(Debug, Clone)]
pub struct EnqueueOptions {
    table: String,
    time_zone: String,
    delimiter: u8,
    no_key: bool,
}

impl EnqueueOptions {
    /// Import into `table` (of the queue's database), comma-separated, in
    /// UTC, idempotent by the table's key.
    pub fn new(table: impl Into<String>) -> Self {
        EnqueueOptions {
            table: table.into(),
            time_zone: "UTC".into(),
            delimiter: b',',
            no_key: false,
        }
    }

    /// The table the job imports into.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The job's time zone: `UTC`, an offset like `+01:00` or an IANA name
    /// like `Europe/Berlin` (see the crate documentation).
    pub fn time_zone(mut self, zone: impl Into<String>) -> Self {
        self.time_zone = zone.into();
        self
    }

    /// The field delimiter: `b','` (the default), `b';'` or `b'\t'`.
    pub fn delimiter(mut self, delimiter: u8) -> Self {
        self.delimiter = delimiter;
        self
    }

    /// Allows a table without a primary or unique key made of the file's
    /// columns: rows are appended, and a second enqueue of the same file
    /// appends them again.
    pub fn no_key(mut self, no_key: bool) -> Self {
        self.no_key = no_key;
        self
    }

    fn check(&self) -> Result<()> {
        if self.table.is_empty() || self.table.chars().count() > table::MAX_NAME_CHARS {
            return Err(Error::Options(format!(
                "invalid table name {:?}: a table name has 1 to {} characters",
                self.table,
                table::MAX_NAME_CHARS
            )));
        }
        if !matches!(self.delimiter, b',' | b';' | b'\t') {
            return Err(Error::Options(format!(
                "invalid delimiter {:?}: use ',', ';' or a tab",
                char::from(self.delimiter)
            )));
        }
        value::Zone::parse(&self.time_zone).map_err(Error::Options)?;
        Ok(())
    }
}

/// The import queue in one database: enqueue files, list jobs, and make
/// processors.
///
/// Every operation opens its own connection and closes it before it
/// returns; with a pool, each holds a slot meanwhile. No operation waits
/// for the server without a bound: connecting gives up after 10 s without
/// an answer, the operation's statements after
/// [`Queue::statement_timeout`] (60 s by default) with
/// [`Error::NoAnswer`], and closing after 5 s.
#[derive(Debug, Clone)]
pub struct Queue {
    connector: Arc<Connector>,
    statement_timeout: Duration,
}

/// [`Queue::statement_timeout`] unless set.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

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
            statement_timeout: STATEMENT_TIMEOUT,
        })
    }

    /// How long the server may take to answer each statement of an
    /// operation ([`Queue::enqueue`], [`Queue::jobs`], [`Queue::counts`],
    /// [`Queue::create_tables`]); 60 s by default, at least 1 s. It bounds
    /// each statement (or a few quick ones that go together: checking the
    /// queue tables, reading a table's definition), not the operation:
    /// enqueueing 20,000 files (one `INSERT` each) over a slow link takes
    /// as long as its round trips add up to. Adding a column to queue
    /// tables of an older version may take 180 s, and waits for other
    /// sessions' locks on the table for half this timeout at most (then
    /// fails with the server's error 1205: try again when the table is not
    /// in use).
    ///
    /// A connection that stops passing bytes without being closed (the
    /// server frozen, a failover, a network that drops packets) never fails
    /// by itself; after this long the operation gives it up and fails with
    /// [`Error::NoAnswer`]. The server is told the same time, in whole
    /// seconds rounded up, as the session's `wait_timeout`,
    /// `net_read_timeout` and `net_write_timeout`, so it ends a session
    /// given up on, and rolls back what it left open, by itself.
    ///
    /// A processor made from this queue ([`Queue::processor`]) bounds its
    /// own statements outside a job (creating the tables, putting back
    /// stale jobs, claiming one) by this too, never longer than its
    /// [`ProcessorOptions::batch_timeout`]; one without an answer counts as
    /// a lost connection, and the processor tries again over a new one.
    pub fn statement_timeout(mut self, timeout: Duration) -> Queue {
        self.statement_timeout = timeout.max(Duration::from_secs(1));
        self
    }

    /// The URL, password redacted.
    pub fn url(&self) -> &str {
        self.connector.url()
    }

    /// A processor for this queue.
    pub fn processor(&self, options: ProcessorOptions) -> Processor {
        Processor::new(self.connector.clone(), options, self.statement_timeout)
    }

    /// Creates the queue's tables `import_jobs` and `import_errors` where
    /// they are missing (and adds the columns that tables of an older
    /// version lack). Processors and [`Queue::enqueue`] do this themselves;
    /// the tables imported into are the user's.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`], [`Error::NoAnswer`] or [`Error::Query`].
    pub async fn create_tables(&self) -> Result<()> {
        self.with_connection("creating the import tables", async |conn, watchdog| {
            self.create_tables_on(conn, watchdog).await
        })
        .await
    }

    /// Adds one pending job per file and returns their ids, in order, all
    /// or none. Paths are stored absolute (relative ones are resolved
    /// against the current directory), since processors may run elsewhere.
    ///
    /// Each file is opened now: its identity is recorded (see the crate
    /// documentation), its header is checked against the table and a
    /// record must follow it, so a file that cannot go into the table (or
    /// has nothing for it) is refused here.
    ///
    /// # Errors
    ///
    /// [`Error::Options`] for a bad table name, delimiter or time zone;
    /// [`Error::Source`] for a file that cannot be read or whose header
    /// does not fit the table (a missing table, an unknown column, a
    /// missing required column, no key without `no_key`) or that has a
    /// header but no record, saying what to
    /// do; nothing is enqueued then. [`Error::Connect`], [`Error::NoAnswer`]
    /// or [`Error::Query`]; after [`Error::NoAnswer`] the files may have
    /// been enqueued all the same (when only the answer to the commit was
    /// lost): look with [`Queue::jobs`] before enqueueing them again.
    pub async fn enqueue<P: AsRef<Path>>(
        &self,
        files: &[P],
        options: &EnqueueOptions,
    ) -> Result<Vec<u64>> {
        options.check()?;
        let mut jobs = Vec::with_capacity(files.len());
        let mut headers = Vec::with_capacity(files.len());
        for file in files {
            let file = file.as_ref();
            let refuse = |reason: String| Error::Source {
                path: file.to_path_buf(),
                reason,
            };
            let absolute = std::path::absolute(file)
                .map_err(|e| refuse(format!("cannot make the path absolute: {e}")))?;
            let Some(text) = absolute.to_str() else {
                return Err(refuse("the path is not UTF-8; rename the file".into()));
            };
            if text.chars().count() > 4096 {
                return Err(refuse(
                    "the path is over 4096 characters long; move the file".into(),
                ));
            }
            let opened = source::open_checked(&absolute, &[]).map_err(|p| refuse(p.to_string()))?;
            let identity =
                FileIdentity::of(&opened).map_err(|e| refuse(format!("cannot read it: {e}")))?;
            let (header, reader) = source::read_header(&absolute, &opened, options.delimiter)
                .map_err(|p| refuse(p.to_string()))?;
            // A file without a record can only fail its job.
            let first = reader
                .blank_lines_are_records(header.len() == 1)
                .next_record()
                .map_err(|e| refuse(format!("cannot read it: {e}")))?;
            if first.is_none() {
                return Err(refuse(
                    source::FileProblem::NoData(absolute.clone()).to_string(),
                ));
            }
            headers.push((file.to_path_buf(), header));
            jobs.push(NewJob {
                source: text.to_owned(),
                spec: JobSpec {
                    table: options.table.clone(),
                    time_zone: options.time_zone.clone(),
                    delimiter: options.delimiter,
                    no_key: options.no_key,
                    identity,
                },
            });
        }
        let outcome = self
            .with_connection("enqueueing files", async |conn, watchdog| {
                self.create_tables_on(conn, watchdog).await?;
                let table = match table::load(conn, &options.table).await? {
                    Ok(table) => table,
                    Err(problem) => return Ok(Err((None, problem))),
                };
                for (path, header) in &headers {
                    if let Err(problem) =
                        table.map_header(header, options.delimiter, options.no_key)
                    {
                        return Ok(Err((Some(path.clone()), problem)));
                    }
                }
                watchdog.answered();
                queue::enqueue(conn, &jobs, watchdog).await.map(Ok)
            })
            .await?;
        outcome.map_err(|(path, problem)| match path {
            Some(path) => Error::Source {
                path,
                reason: problem.to_string(),
            },
            None => Error::Options(problem.to_string()),
        })
    }

    /// The newest `limit` jobs (every job without a limit), oldest first.
    /// Empty when the tables do not exist yet.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`], [`Error::NoAnswer`] or [`Error::Query`].
    pub async fn jobs(&self, limit: Option<u64>) -> Result<Vec<JobStatus>> {
        self.with_connection("listing jobs", async |conn, _| {
            queue::list(conn, limit).await
        })
        .await
    }

    /// How many jobs are in each status; statuses without jobs are left
    /// out.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`], [`Error::NoAnswer`] or [`Error::Query`].
    pub async fn counts(&self) -> Result<Vec<(Status, u64)>> {
        self.with_connection("counting jobs", async |conn, _| queue::counts(conn).await)
            .await
    }

    /// Creates the tables, and adds the columns that tables of an older
    /// version lack (each `ALTER` within `queue::MIGRATION_TIME`, waiting
    /// for locks half the statement timeout at most).
    async fn create_tables_on(
        &self,
        conn: &mut mysql_async::Conn,
        watchdog: &Watchdog,
    ) -> std::result::Result<(), mysql_async::Error> {
        let missing = queue::create_tables(conn).await?;
        watchdog.answered();
        queue::add_columns(conn, &missing, self.statement_timeout, Some(watchdog)).await
    }

    /// Runs `f` on a new connection, closed afterwards, each of its
    /// statements within the statement timeout (`f` tells the watchdog
    /// each answer; see the `watchdog` module).
    async fn with_connection<T>(
        &self,
        what: &'static str,
        f: impl AsyncFnOnce(
            &mut mysql_async::Conn,
            &Watchdog,
        ) -> std::result::Result<T, mysql_async::Error>,
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
        let bound = self.statement_timeout;
        let watchdog = Watchdog::new(bound);
        let exchange = async {
            let secs = bound.as_secs_f64().ceil() as u64;
            match queue::end_sessions_left_waiting(&mut conn, secs).await {
                Ok(()) => {}
                Err(e) if dbslots_mysql::connection_is_gone(&e) => return Err(e),
                // Nothing depends on it but how soon the server lets go of
                // a session given up on.
                Err(e) => {
                    tracing::debug!(url = %self.connector.url(), error = %e, "the server refused the session's timeouts")
                }
            }
            watchdog.answered();
            f(&mut conn, &watchdog).await
        };
        let answered = watchdog.guard(exchange).await;
        // After a timeout nobody may answer its `QUIT`.
        conn.close_quickly().await;
        match answered {
            Ok(result) => result.map_err(|source| Error::Query {
                what,
                url: self.connector.url().to_owned(),
                source,
            }),
            Err(waited) => Err(Error::NoAnswer {
                what,
                url: self.connector.url().to_owned(),
                waited,
            }),
        }
    }
}
