//! The tables and every statement on them.
//!
//! # Implementation Details
//!
//! `import_jobs` is the queue. A job moves
//! `pending → processing → completed | completed_with_errors | failed`, and
//! back from `processing` to `pending` when its processor stops on a signal
//! ([`release`]) or stops heartbeating ([`recover_stale`]).
//!
//! Invariants, each kept by a single statement or transaction:
//!
//! * **One holder.** [`claim`] picks the oldest pending job with
//!   `SELECT ... FOR UPDATE SKIP LOCKED` and marks it `processing` with the
//!   processor's holder name in the same transaction, so two processors
//!   never claim the same job and neither waits for the other's row lock.
//!   Every later write of a processor is conditional on
//!   `holder = me AND status = 'processing'`: a processor whose job was
//!   taken away learns it at its next write and stops, having written
//!   nothing.
//! * **Checkpoint and rows together.** [`commit_batch`] inserts the batch's
//!   rows and rejections and moves the job's checkpoint (`byte_offset`,
//!   `line_no`, `content_hash`), its counters and its heartbeat, in one
//!   transaction. The job row is updated last, conditional on the holder;
//!   when that matches nothing the transaction is rolled back. After a
//!   crash the job's row says exactly which records are in.
//! * **A `LOAD DATA` batch is committed only when it did what an `INSERT
//!   ... ON DUPLICATE KEY UPDATE` would have done.** Rows in
//!   [`Form::Load`](crate::value::Form::Load) go in with `LOAD DATA LOCAL
//!   INFILE ... IGNORE` from memory (the connection's one-shot handler
//!   serves the batch; no file is named or read). When the server reports
//!   that every row of the batch was inserted as a new row, without a
//!   single warning, the outcome is the upsert's: a new key is an insert
//!   either way. Anything else (a key already in the table or twice in the
//!   batch, a value the server would have changed, a constraint, `LOAD DATA
//!   LOCAL` refused) rolls the transaction back before the checkpoint moves,
//!   and the processor imports the rest of the job with `INSERT`
//!   statements ([`Committed::NotLoaded`]).
//! * **A heartbeat of its own.** While a processor holds a job it writes
//!   [`heartbeat`] on its own timer (from a second connection while a
//!   statement is running; see the processor's `heartbeat` module), so a
//!   slow batch never looks like a dead processor; but not for a statement
//!   that has had no answer for the processor's batch bound, so a
//!   processor stuck on a dead connection loses its job.
//! * **No abandoned transaction outlives the bound.** A processor's
//!   sessions are told to end when left waiting for half the batch bound
//!   ([`end_sessions_left_waiting`]), so the transaction of a connection the
//!   processor gave up on is rolled back by the server, and the checkpoint
//!   read after a reconnect waits for it ([`load_settled`]).
//! * **Staleness in seconds.** Heartbeats are `DATETIME(6)` in UTC and ages
//!   are `TIMESTAMPDIFF(SECOND, heartbeat_at, UTC_TIMESTAMP(6))`, never
//!   `NOW() - ts` (which is not a number of seconds) and never dependent on
//!   a session's time zone.
//! * **Attempts.** A claim counts an attempt; a release on a signal takes
//!   it back (stopping is not failing); a job that stopped heartbeating is
//!   put back while it has attempts left and failed after the last one.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use mysql_async::prelude::{FromValue, Queryable};
use mysql_async::{Conn, Row};

use crate::batch::{Batch, Rows};
use crate::identity::{FileIdentity, hex, parse_hex};
use crate::record::Checkpoint;
use crate::value::push_text;
use crate::watchdog::Watchdog;

type DbResult<T> = std::result::Result<T, mysql_async::Error>;

/// The statements that create the tables, each idempotent.
const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS import_jobs (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
        source VARCHAR(4096) NOT NULL,
        status ENUM('pending','processing','completed','completed_with_errors','failed') NOT NULL DEFAULT 'pending',
        attempts INT UNSIGNED NOT NULL DEFAULT 0,
        rows_imported BIGINT UNSIGNED NOT NULL DEFAULT 0,
        rows_rejected BIGINT UNSIGNED NOT NULL DEFAULT 0,
        byte_offset BIGINT UNSIGNED NOT NULL DEFAULT 0,
        line_no BIGINT UNSIGNED NOT NULL DEFAULT 0,
        file_size BIGINT UNSIGNED NULL,
        last_error TEXT NULL,
        holder VARCHAR(255) NULL,
        heartbeat_at DATETIME(6) NULL,
        created_at DATETIME(6) NOT NULL,
        started_at DATETIME(6) NULL,
        finished_at DATETIME(6) NULL,
        target_table VARCHAR(64) NULL,
        time_zone VARCHAR(64) NOT NULL DEFAULT 'UTC',
        delimiter TINYINT UNSIGNED NOT NULL DEFAULT 44,
        no_key TINYINT(1) NOT NULL DEFAULT 0,
        file_dev BIGINT UNSIGNED NULL,
        file_ino BIGINT UNSIGNED NULL,
        file_mtime_ns BIGINT NULL,
        file_edges_hash CHAR(32) NULL,
        content_hash CHAR(32) NULL,
        PRIMARY KEY (id),
        KEY import_jobs_status (status, id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE IF NOT EXISTS import_errors (
        job_id BIGINT UNSIGNED NOT NULL,
        line_no BIGINT UNSIGNED NOT NULL,
        reason VARCHAR(255) NOT NULL,
        raw_line TEXT NOT NULL,
        column_name VARCHAR(64) NULL,
        PRIMARY KEY (job_id, line_no)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
];

/// Columns added since the first release, added to older tables.
const ADDED_COLUMNS: [(&str, &str, &str); 10] = [
    ("import_jobs", "target_table", "VARCHAR(64) NULL"),
    (
        "import_jobs",
        "time_zone",
        "VARCHAR(64) NOT NULL DEFAULT 'UTC'",
    ),
    (
        "import_jobs",
        "delimiter",
        "TINYINT UNSIGNED NOT NULL DEFAULT 44",
    ),
    ("import_jobs", "no_key", "TINYINT(1) NOT NULL DEFAULT 0"),
    ("import_jobs", "file_dev", "BIGINT UNSIGNED NULL"),
    ("import_jobs", "file_ino", "BIGINT UNSIGNED NULL"),
    ("import_jobs", "file_mtime_ns", "BIGINT NULL"),
    ("import_jobs", "file_edges_hash", "CHAR(32) NULL"),
    ("import_jobs", "content_hash", "CHAR(32) NULL"),
    ("import_errors", "column_name", "VARCHAR(64) NULL"),
];

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Waiting for a processor.
    Pending,
    /// A processor is importing it.
    Processing,
    /// Every line was imported.
    Completed,
    /// Done; some lines were rejected into `import_errors`.
    CompletedWithErrors,
    /// Given up; `last_error` says why.
    Failed,
}

impl Status {
    /// Every status, in life order.
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Processing,
        Status::Completed,
        Status::CompletedWithErrors,
        Status::Failed,
    ];

    /// The name stored in `import_jobs.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Processing => "processing",
            Status::Completed => "completed",
            Status::CompletedWithErrors => "completed_with_errors",
            Status::Failed => "failed",
        }
    }

    /// Whether the job is done, one way or the other.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::CompletedWithErrors | Status::Failed
        )
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Status, String> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown job status {s:?}"))
    }
}

/// One job as `dbslots import status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobStatus {
    /// The job's id.
    pub id: u64,
    /// The file, as enqueued.
    pub source: String,
    /// Where the job is.
    pub status: Status,
    /// Claims so far (a release on a signal does not count).
    pub attempts: u32,
    /// The table it imports into (`None` for a job of an older version).
    pub table: Option<String>,
    /// Records imported into the table so far.
    pub rows_imported: u64,
    /// Records rejected into `import_errors` so far.
    pub rows_rejected: u64,
    /// Why the job failed, or what happened to an earlier attempt.
    pub last_error: Option<String>,
    /// The processor that holds the job, or finished it.
    pub holder: Option<String>,
    /// Seconds since the holder's last heartbeat.
    pub heartbeat_age_secs: Option<u64>,
    /// When it was enqueued, `YYYY-MM-DD HH:MM:SS` UTC.
    pub created_at: String,
    /// When it was first claimed.
    pub started_at: Option<String>,
    /// When it was finished.
    pub finished_at: Option<String>,
}

/// A job's row, as the processor needs it.
#[derive(Debug, Clone)]
pub(crate) struct JobRow {
    pub id: u64,
    pub source: PathBuf,
    pub status: Status,
    pub holder: Option<String>,
    pub attempts: u32,
    pub checkpoint: Checkpoint,
    pub rows_imported: u64,
    pub rows_rejected: u64,
    pub spec: Option<JobSpec>,
    /// The hash of the content up to the checkpoint.
    pub content_hash: Option<u128>,
}

/// What a job imports, recorded at enqueue. `None` on a job row written
/// by a version before tables could be chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobSpec {
    pub table: String,
    pub time_zone: String,
    pub delimiter: u8,
    pub no_key: bool,
    pub identity: FileIdentity,
}

const JOB_COLUMNS: &str = "id, source, status, holder, attempts, byte_offset, line_no, rows_imported, rows_rejected, \
    file_size, target_table, time_zone, delimiter, no_key, file_dev, file_ino, file_mtime_ns, file_edges_hash, content_hash";

fn job_row(mut row: Row) -> DbResult<JobRow> {
    let status: String = take(&mut row, 2)?;
    let source: String = take(&mut row, 1)?;
    Ok(JobRow {
        id: take(&mut row, 0)?,
        source: PathBuf::from(source),
        status: status.parse().map_err(other)?,
        holder: take(&mut row, 3)?,
        attempts: take(&mut row, 4)?,
        checkpoint: Checkpoint {
            offset: take(&mut row, 5)?,
            line_no: take(&mut row, 6)?,
        },
        rows_imported: take(&mut row, 7)?,
        rows_rejected: take(&mut row, 8)?,
        spec: job_spec(&mut row)?,
        content_hash: take::<Option<String>>(&mut row, 18)?.and_then(|h| parse_hex(&h)),
    })
}

fn job_spec(row: &mut Row) -> DbResult<Option<JobSpec>> {
    let size: Option<u64> = take(row, 9)?;
    let table: Option<String> = take(row, 10)?;
    let dev: Option<u64> = take(row, 14)?;
    let ino: Option<u64> = take(row, 15)?;
    let mtime_ns: Option<i64> = take(row, 16)?;
    let edges: Option<String> = take(row, 17)?;
    let (Some(size), Some(table), Some(dev), Some(ino), Some(mtime_ns), Some(edges)) = (
        size,
        table,
        dev,
        ino,
        mtime_ns,
        edges.as_deref().and_then(parse_hex),
    ) else {
        return Ok(None);
    };
    Ok(Some(JobSpec {
        table,
        time_zone: take(row, 11)?,
        delimiter: take(row, 12)?,
        no_key: take(row, 13)?,
        identity: FileIdentity {
            dev,
            ino,
            size,
            mtime_ns,
            edges_hash: edges,
        },
    }))
}

fn take<T: FromValue>(row: &mut Row, i: usize) -> DbResult<T> {
    match row.take_opt::<T, usize>(i) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(other(format!("column {i}: {e}"))),
        None => Err(other(format!("column {i} is missing"))),
    }
}

fn other(message: impl Into<String>) -> mysql_async::Error {
    mysql_async::Error::Other(message.into().into())
}

/// How long adding a column to a queue table of an older version may take
/// (a table copy, on servers that cannot add one in place) under
/// [`Queue`](crate::Queue)'s operations; a processor gives it its batch
/// bound.
pub(crate) const MIGRATION_TIME: Duration = Duration::from_secs(180);

/// A column that queue tables of an older version lack.
pub(crate) type MissingColumn = &'static (&'static str, &'static str, &'static str);

/// Creates the tables that are missing; returns the columns that tables of
/// an older version lack ([`add_columns`] adds them).
pub(crate) async fn create_tables(conn: &mut Conn) -> DbResult<Vec<MissingColumn>> {
    for ddl in SCHEMA {
        conn.query_drop(ddl).await?;
    }
    let present: Vec<(String, String)> = conn
        .query(
            "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ('import_jobs', 'import_errors')",
        )
        .await?;
    Ok(ADDED_COLUMNS
        .iter()
        .filter(|(table, column, _)| {
            !present
                .iter()
                .any(|(t, c)| t.eq_ignore_ascii_case(table) && c.eq_ignore_ascii_case(column))
        })
        .collect())
}

/// Adds `missing` columns (from [`create_tables`]), waiting for other
/// sessions' locks on the table at most half the `statement_timeout`: an
/// `ALTER TABLE` waiting for a lock holds up every later statement on the
/// table, the processors' claims among them, so it gives up first and says
/// so (error 1205). Each `ALTER` may take [`MIGRATION_TIME`], or longer
/// than its lock wait and `watchdog`'s bound together, told to `watchdog`
/// if there is one.
pub(crate) async fn add_columns(
    conn: &mut Conn,
    missing: &[MissingColumn],
    statement_timeout: Duration,
    watchdog: Option<&Watchdog>,
) -> DbResult<()> {
    if missing.is_empty() {
        return Ok(());
    }
    let secs = statement_timeout.as_secs().div_ceil(2).max(1);
    conn.query_drop(format!("SET SESSION lock_wait_timeout = {secs}"))
        .await?;
    for (table, column, ddl) in missing {
        if let Some(watchdog) = watchdog {
            let beyond_the_lock_wait = watchdog.bound().saturating_add(Duration::from_secs(secs));
            watchdog.allow(MIGRATION_TIME.max(beyond_the_lock_wait));
        }
        conn.query_drop(format!("ALTER TABLE {table} ADD COLUMN {column} {ddl}"))
            .await?;
        if let Some(watchdog) = watchdog {
            watchdog.answered();
        }
    }
    Ok(())
}

/// Tells the server to end this connection's session (rolling back an open
/// transaction) when it waits `secs` seconds for the client: for the next
/// command (`wait_timeout`), for the rest of a packet or of a `LOAD DATA
/// LOCAL` stream (`net_read_timeout`), or to send a result
/// (`net_write_timeout`). A connection the client gave up on because it
/// stopped passing bytes, with its socket left open, then does not keep
/// its transaction and locks on the server until the default `wait_timeout`
/// (8 hours).
pub(crate) async fn end_sessions_left_waiting(conn: &mut Conn, secs: u64) -> DbResult<()> {
    let secs = secs.max(1);
    conn.query_drop(format!(
        "SET SESSION wait_timeout = {secs}, net_read_timeout = {secs}, net_write_timeout = {secs}"
    ))
    .await
}

/// Bytes per statement: half the server's `max_allowed_packet`, at most
/// 8 MiB.
pub(crate) async fn statement_bytes(conn: &mut Conn) -> DbResult<usize> {
    let packet: Option<u64> = conn.query_first("SELECT @@max_allowed_packet").await?;
    let packet = packet.unwrap_or(1 << 20);
    Ok(usize::try_from(packet / 2)
        .unwrap_or(usize::MAX)
        .min(8 << 20))
}

/// Puts back (or fails, after `max_attempts`) jobs whose holder has not
/// heartbeated for `stale_after`, once the server has been up for that
/// long. Returns how many.
///
/// A server up for less than `stale_after` puts back nothing: after its
/// restart (or crash) its holders could not heartbeat while it was down,
/// and they are reconnecting to resume their jobs, as is every processor
/// after an outage. Counting the downtime would hand each of their jobs
/// to another processor after every restart that lasted `stale_after`,
/// and fail it after `max_attempts` of them. Only this server's own
/// restarts are seen: after a failover to a server that has been up for
/// long, the downtime counts. A server that restarts more often than
/// every `stale_after` puts back no job at all, not even a dead
/// holder's.
pub(crate) async fn recover_stale(
    conn: &mut Conn,
    stale_after: Duration,
    max_attempts: u32,
) -> DbResult<u64> {
    let secs = stale_after.as_secs();
    if let Some(uptime) = server_uptime(conn).await?
        && uptime < secs
    {
        tracing::debug!(
            uptime,
            stale_after = secs,
            "the server has been up for less than stale_after: no job is stale yet"
        );
        return Ok(0);
    }
    // Assignments run left to right: `last_error` still sees the old holder
    // and heartbeat.
    let sql = format!(
        "UPDATE import_jobs SET \
           last_error = CONCAT('its processor ', COALESCE(holder, '?'), ' stopped heartbeating (last at ', \
             COALESCE(DATE_FORMAT(heartbeat_at, '%Y-%m-%d %H:%i:%s'), 'never'), ' UTC); ', \
             IF(attempts >= {max}, CONCAT('failed after ', attempts, ' attempts'), 'put back in the queue')), \
           status = IF(attempts >= {max}, 'failed', 'pending'), \
           finished_at = IF(attempts >= {max}, UTC_TIMESTAMP(6), NULL), \
           holder = NULL, \
           heartbeat_at = NULL \
         WHERE status = 'processing' \
           AND (heartbeat_at IS NULL OR TIMESTAMPDIFF(SECOND, heartbeat_at, UTC_TIMESTAMP(6)) >= {secs})",
        max = max_attempts,
    );
    conn.query_drop(sql).await?;
    Ok(conn.affected_rows())
}

/// How many seconds the server has been up; `None` when it does not say
/// (any account may ask, but a proxy in between may not pass it on).
async fn server_uptime(conn: &mut Conn) -> DbResult<Option<u64>> {
    match conn
        .query_first::<(String, String), _>("SHOW GLOBAL STATUS LIKE 'Uptime'")
        .await
    {
        Ok(row) => Ok(row.and_then(|(_, secs)| secs.parse().ok())),
        Err(mysql_async::Error::Server(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Claims the oldest pending job for `holder`, or `None` when none is
/// pending (or every pending one is being claimed by someone else).
pub(crate) async fn claim(conn: &mut Conn, holder: &str) -> DbResult<Option<JobRow>> {
    conn.query_drop("START TRANSACTION").await?;
    let claimed = async {
        let picked: Option<Row> = conn
            .query_first(format!(
                "SELECT {JOB_COLUMNS} FROM import_jobs WHERE status = 'pending' \
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
            ))
            .await?;
        let Some(row) = picked else {
            return Ok(None);
        };
        let mut job = job_row(row)?;
        let mut sql = String::from(
            "UPDATE import_jobs SET status = 'processing', attempts = attempts + 1, \
             heartbeat_at = UTC_TIMESTAMP(6), started_at = COALESCE(started_at, UTC_TIMESTAMP(6)), holder = ",
        );
        push_text(&mut sql, holder);
        sql.push_str(&format!(" WHERE id = {}", job.id));
        conn.query_drop(sql).await?;
        job.status = Status::Processing;
        job.holder = Some(holder.to_owned());
        job.attempts += 1;
        Ok(Some(job))
    }
    .await;
    match claimed {
        Ok(job) => {
            conn.query_drop("COMMIT").await?;
            Ok(job)
        }
        Err(e) => {
            let _ = conn.query_drop("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Reads a job's row.
pub(crate) async fn load(conn: &mut Conn, id: u64) -> DbResult<Option<JobRow>> {
    let row: Option<Row> = conn
        .query_first(format!(
            "SELECT {JOB_COLUMNS} FROM import_jobs WHERE id = {id}"
        ))
        .await?;
    row.map(job_row).transpose()
}

/// Reads a job's row once no transaction holds it: a batch's transaction
/// that is still open on a connection the processor gave up on (it
/// updated the row but its `COMMIT` may still come) is waited for, so the
/// checkpoint read is the one that stays.
pub(crate) async fn load_settled(conn: &mut Conn, id: u64) -> DbResult<Option<JobRow>> {
    let row: Option<Row> = conn
        .query_first(format!(
            "SELECT {JOB_COLUMNS} FROM import_jobs WHERE id = {id} LOCK IN SHARE MODE"
        ))
        .await?;
    row.map(job_row).transpose()
}

fn held_by(sql: &mut String, id: u64, holder: &str) {
    sql.push_str(&format!(
        " WHERE id = {id} AND status = 'processing' AND holder = "
    ));
    push_text(sql, holder);
}

/// What [`commit_batch`] did.
#[derive(Debug)]
pub(crate) enum Committed {
    /// The batch and the checkpoint are in.
    Yes,
    /// The job is no longer this holder's; nothing was written.
    Lost,
    /// The batch's `LOAD DATA` did not insert exactly its rows as new
    /// rows, or was refused (the reason says how); nothing was written.
    NotLoaded(String),
}

/// The size of the pieces a `LOAD DATA` stream is sent in, far below any
/// `max_allowed_packet`.
const LOAD_CHUNK_BYTES: usize = 64 * 1024;

/// Commits a batch with the job's new checkpoint, counters, content hash
/// and heartbeat. [`Committed::Lost`] when the job is no longer this
/// holder's, [`Committed::NotLoaded`] when a `LOAD DATA` batch was rolled
/// back (nothing written either way).
///
/// The rows go in first and the job's row is updated last, conditional on
/// the holder: the job row is locked only for the end of the transaction
/// (so the heartbeat of [`heartbeat`] is not held up by a slow insert), and
/// a holder that lost its job rolls its rows back.
pub(crate) async fn commit_batch(
    conn: &mut Conn,
    id: u64,
    holder: &str,
    batch: &Batch,
) -> DbResult<Committed> {
    conn.query_drop("START TRANSACTION").await?;
    let result = async {
        match &batch.rows_data {
            None => {}
            Some(Rows::Insert(sql)) => conn.query_drop(sql.as_str()).await?,
            Some(Rows::Load { statement, data }) => {
                let data = data.clone();
                conn.set_infile_handler(async move { Ok(load_stream(data)) });
                match conn.query_drop(&**statement).await {
                    Ok(()) => {
                        let (loaded, warnings) = (conn.affected_rows(), conn.get_warnings());
                        if loaded != batch.rows || warnings > 0 {
                            return Ok(Committed::NotLoaded(format!(
                                "{} of {} rows were inserted as new rows, {warnings} warnings ({})",
                                loaded,
                                batch.rows,
                                conn.info()
                            )));
                        }
                    }
                    Err(e) if crate::link::is_connection_problem(&e) => return Err(e),
                    Err(e) => {
                        return Ok(Committed::NotLoaded(format!(
                            "LOAD DATA LOCAL INFILE failed: {e}"
                        )));
                    }
                }
            }
        }
        if let Some(sql) = &batch.errors_sql {
            conn.query_drop(sql.as_str()).await?;
        }
        let mut sql = format!(
            "UPDATE import_jobs SET byte_offset = {}, line_no = {}, rows_imported = rows_imported + {}, \
             rows_rejected = rows_rejected + {}, content_hash = '{}', heartbeat_at = UTC_TIMESTAMP(6)",
            batch.end.offset,
            batch.end.line_no,
            batch.rows,
            batch.rejected,
            hex(batch.hash),
        );
        held_by(&mut sql, id, holder);
        conn.query_drop(sql).await?;
        // The checkpoint moves forward with every batch, so a matching row
        // always changes and the affected-row count is 1.
        Ok(if conn.affected_rows() == 1 {
            Committed::Yes
        } else {
            Committed::Lost
        })
    }
    .await;
    match result {
        Ok(Committed::Yes) => {
            conn.query_drop("COMMIT").await?;
            Ok(Committed::Yes)
        }
        Ok(other) => {
            conn.query_drop("ROLLBACK").await?;
            Ok(other)
        }
        Err(e) => {
            let _ = conn.query_drop("ROLLBACK").await;
            Err(e)
        }
    }
}

/// The batch as the stream a `LOAD DATA LOCAL INFILE` reads, in pieces
/// that share its buffer.
fn load_stream(data: bytes::Bytes) -> mysql_async::InfileData {
    use futures_util::StreamExt;
    let pieces: Vec<std::io::Result<bytes::Bytes>> = (0..data.len())
        .step_by(LOAD_CHUNK_BYTES)
        .map(|at| Ok(data.slice(at..data.len().min(at + LOAD_CHUNK_BYTES))))
        .collect();
    futures_util::stream::iter(pieces).boxed()
}

/// Writes the job's heartbeat. `false` when it is no longer this holder's.
pub(crate) async fn heartbeat(conn: &mut Conn, id: u64, holder: &str) -> DbResult<bool> {
    let mut sql = String::from("UPDATE import_jobs SET heartbeat_at = UTC_TIMESTAMP(6)");
    held_by(&mut sql, id, holder);
    conn.query_drop(sql).await?;
    // Two heartbeats in the same microsecond change nothing: count
    // matched rows, not changed ones.
    let info = conn.info();
    Ok(conn.affected_rows() == 1 || info.starts_with("Rows matched: 1"))
}

/// Marks the job done. `Ok(None)` when it is no longer this holder's.
pub(crate) async fn finish(conn: &mut Conn, id: u64, holder: &str) -> DbResult<Option<Status>> {
    let mut sql = String::from(
        "UPDATE import_jobs SET status = IF(rows_rejected > 0, 'completed_with_errors', 'completed'), \
         finished_at = UTC_TIMESTAMP(6), heartbeat_at = UTC_TIMESTAMP(6)",
    );
    held_by(&mut sql, id, holder);
    conn.query_drop(sql).await?;
    if conn.affected_rows() != 1 {
        return Ok(None);
    }
    Ok(load(conn, id).await?.map(|job| job.status))
}

/// Fails the job with `message` as its `last_error`. `false` when it is no
/// longer this holder's.
pub(crate) async fn fail(conn: &mut Conn, id: u64, holder: &str, message: &str) -> DbResult<bool> {
    let mut sql = String::from("UPDATE import_jobs SET status = 'failed', last_error = ");
    push_text(&mut sql, &crate::value::shorten(message, 4000));
    sql.push_str(", finished_at = UTC_TIMESTAMP(6), heartbeat_at = UTC_TIMESTAMP(6)");
    held_by(&mut sql, id, holder);
    conn.query_drop(sql).await?;
    Ok(conn.affected_rows() == 1)
}

/// Puts the job back in the queue without counting the attempt (the
/// processor is stopping). `false` when it is no longer this holder's.
pub(crate) async fn release(conn: &mut Conn, id: u64, holder: &str) -> DbResult<bool> {
    let mut sql = String::from(
        "UPDATE import_jobs SET status = 'pending', holder = NULL, heartbeat_at = NULL, \
         attempts = GREATEST(attempts, 1) - 1",
    );
    held_by(&mut sql, id, holder);
    conn.query_drop(sql).await?;
    Ok(conn.affected_rows() == 1)
}

/// A file to enqueue, checked.
pub(crate) struct NewJob {
    pub source: String,
    pub spec: JobSpec,
}

/// Adds one pending job per file, in one transaction; returns their ids.
/// Each statement answered is told to `watchdog`.
pub(crate) async fn enqueue(
    conn: &mut Conn,
    jobs: &[NewJob],
    watchdog: &Watchdog,
) -> DbResult<Vec<u64>> {
    conn.query_drop("START TRANSACTION").await?;
    watchdog.answered();
    let mut ids = Vec::with_capacity(jobs.len());
    for job in jobs {
        let spec = &job.spec;
        let mut sql = String::from(
            "INSERT INTO import_jobs (source, target_table, time_zone, delimiter, no_key, file_size, \
             file_dev, file_ino, file_mtime_ns, file_edges_hash, created_at) VALUES (",
        );
        push_text(&mut sql, &job.source);
        sql.push(',');
        push_text(&mut sql, &spec.table);
        sql.push(',');
        push_text(&mut sql, &spec.time_zone);
        sql.push_str(&format!(
            ",{},{},{},{},{},{},'{}', UTC_TIMESTAMP(6))",
            spec.delimiter,
            u8::from(spec.no_key),
            spec.identity.size,
            spec.identity.dev,
            spec.identity.ino,
            spec.identity.mtime_ns,
            hex(spec.identity.edges_hash)
        ));
        if let Err(e) = conn.query_drop(sql).await {
            let _ = conn.query_drop("ROLLBACK").await;
            return Err(e);
        }
        watchdog.answered();
        match conn.last_insert_id() {
            Some(id) => ids.push(id),
            None => {
                let _ = conn.query_drop("ROLLBACK").await;
                return Err(other("the server returned no id for the new job"));
            }
        }
    }
    conn.query_drop("COMMIT").await?;
    Ok(ids)
}

/// The newest `limit` jobs (all without a limit), oldest first.
pub(crate) async fn list(conn: &mut Conn, limit: Option<u64>) -> DbResult<Vec<JobStatus>> {
    let limit = limit.map_or_else(String::new, |n| format!(" LIMIT {n}"));
    let rows: Vec<Row> = match conn
        .query(format!(
            "SELECT * FROM (SELECT id, source, status, attempts, rows_imported, rows_rejected, last_error, holder, \
               TIMESTAMPDIFF(SECOND, heartbeat_at, UTC_TIMESTAMP(6)), \
               DATE_FORMAT(created_at, '%Y-%m-%d %H:%i:%s'), \
               DATE_FORMAT(started_at, '%Y-%m-%d %H:%i:%s'), \
               DATE_FORMAT(finished_at, '%Y-%m-%d %H:%i:%s'), target_table \
             FROM import_jobs ORDER BY id DESC{limit}) newest ORDER BY id"
        ))
        .await
    {
        Ok(rows) => rows,
        Err(mysql_async::Error::Server(e)) if e.code == 1146 => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    rows.into_iter()
        .map(|mut row| {
            let status: String = take(&mut row, 2)?;
            let age: Option<i64> = take(&mut row, 8)?;
            Ok(JobStatus {
                id: take(&mut row, 0)?,
                source: take(&mut row, 1)?,
                status: status.parse().map_err(other)?,
                attempts: take(&mut row, 3)?,
                rows_imported: take(&mut row, 4)?,
                rows_rejected: take(&mut row, 5)?,
                last_error: take(&mut row, 6)?,
                holder: take(&mut row, 7)?,
                heartbeat_age_secs: age.map(|a| a.max(0) as u64),
                created_at: take(&mut row, 9)?,
                started_at: take(&mut row, 10)?,
                finished_at: take(&mut row, 11)?,
                table: take(&mut row, 12)?,
            })
        })
        .collect()
}

/// How many jobs are in each status (statuses without jobs left out).
pub(crate) async fn counts(conn: &mut Conn) -> DbResult<Vec<(Status, u64)>> {
    let rows: Vec<(String, u64)> = match conn
        .query("SELECT CAST(status AS CHAR), COUNT(*) FROM import_jobs GROUP BY status")
        .await
    {
        Ok(rows) => rows,
        Err(mysql_async::Error::Server(e)) if e.code == 1146 => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut counts = rows
        .into_iter()
        .map(|(s, n)| Ok((s.parse().map_err(other)?, n)))
        .collect::<DbResult<Vec<(Status, u64)>>>()?;
    counts.sort();
    Ok(counts)
}
