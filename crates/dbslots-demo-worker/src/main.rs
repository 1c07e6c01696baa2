//! `dbslots-demo-worker`: the worker process of `cargo xtask demo`, and the
//! two helpers around a run.
//!
//! * `prepare` (administrative account) creates the jobs table with
//!   `--workers` × `--rows-per-worker` queued rows, resets the server's
//!   status counters and prints the server's limits and the pool capacity
//!   dbslots-mysql suggests, as JSON.
//! * `work` (ordinary account) is one worker: it connects, claims the rows
//!   of its share (`shard = DBSLOTS_WORKER_INDEX`), processes them in one
//!   transaction, keeps its connection for `--hold-ms` in all (a realistic
//!   job), closes it, and prints one `DEMO-RESULT {json}` line with the
//!   refusals it met.
//! * `report` (administrative account) prints the rows queued and processed
//!   and the server's connection counters, as JSON.
//!
//! `work` connects the way any worker of `dbslots spawn` should, with
//! [`Connector::from_env`]: through the slot the spawner holds for it when
//! `DBSLOTS_SLOT` is set, else through a slot of its own from the pool
//! `DBSLOTS_POOL` names (the reference batch mode). Under `--no-slots` it
//! connects directly with the reference system's retries (5 attempts,
//! 100 ms doubling), the way that ran into 1040.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use dbslots_mysql::mysql_async::prelude::Queryable;
use dbslots_mysql::mysql_async::{self, Conn, OptsBuilder, TxOpts};
use dbslots_mysql::{Attempt, Connection, Connector, ConnectorOptions, ServerLimits, codes};
use serde_json::json;

/// The jobs table.
const TABLE: &str = "demo_jobs";
/// Attempts of a direct connect (the reference system's five).
const DIRECT_ATTEMPTS: u32 = 5;
/// How long one direct connect attempt may take.
const DIRECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first retry delay of a direct connect; it doubles.
const DIRECT_FIRST_DELAY: Duration = Duration::from_millis(100);
/// The packet limit a worker assumes (its statements are a few hundred
/// bytes; the server's own default is 16 MiB).
const WORKER_MAX_ALLOWED_PACKET: usize = 16 * 1024 * 1024;
/// The idle timeout a worker assumes (the server's default, 8 hours).
const WORKER_WAIT_TIMEOUT: usize = 28_800;

#[derive(Debug, Parser)]
#[command(name = "dbslots-demo-worker", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create and fill the jobs table, reset the status counters
    Prepare {
        /// URL of an administrative account
        #[arg(long)]
        admin_url: String,
        /// URL of the account the workers use (for its limits)
        #[arg(long)]
        url: String,
        /// Number of workers (shards)
        #[arg(long)]
        workers: u32,
        /// Rows queued for each worker
        #[arg(long, default_value_t = 20)]
        rows_per_worker: u32,
        /// Set the server's max_connections first (the yardstick raises it
        /// so that the server admits every worker)
        #[arg(long)]
        max_connections: Option<u32>,
    },
    /// Be one worker
    Work {
        /// URL of the ordinary account
        #[arg(long)]
        url: String,
        /// How long to keep the connection, in milliseconds
        #[arg(long, default_value_t = 200)]
        hold_ms: u64,
        /// Connect without any slot (the unthrottled reference)
        #[arg(long)]
        no_slots: bool,
        /// Wait until this moment (milliseconds since the Unix epoch) before
        /// connecting, so that workers started one after another all connect
        /// at once, as the reference's 1000 workers did
        #[arg(long, value_name = "UNIX_MS")]
        start_at: Option<u64>,
    },
    /// Print rows processed and the server's connection counters
    Report {
        /// URL of an administrative account
        #[arg(long)]
        admin_url: String,
    },
}

fn main() -> std::process::ExitCode {
    let entered = Instant::now();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dbslots-demo-worker: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Prepare {
                admin_url,
                url,
                workers,
                rows_per_worker,
                max_connections,
            } => prepare(&admin_url, &url, workers, rows_per_worker, max_connections).await,
            Command::Work {
                url,
                hold_ms,
                no_slots,
                start_at,
            } => {
                if let Some(at) = start_at {
                    wait_until_unix_ms(at).await;
                }
                work(&url, Duration::from_millis(hold_ms), no_slots, entered).await
            }
            Command::Report { admin_url } => report(&admin_url).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dbslots-demo-worker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The server of `url`, TLS as its `ssl-mode` says (PREFERRED by default).
fn server(url: &str) -> Result<dbslots_mysql::ServerUrl> {
    dbslots_mysql::ServerUrl::parse(url).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The server of a worker's direct connection: the URL's options, plus the
/// two settings mysql_async would otherwise read with a query right after
/// every connect (`@@max_allowed_packet`, `@@wait_timeout`), as a
/// lightweight worker that knows its server would: one round trip less per
/// worker start. Used as they are, so the URL must say its `ssl-mode`
/// (the demo's says DISABLED: PREFERRED would cost a refused TLS attempt
/// per process against a server without TLS).
fn worker_server(url: &str) -> Result<dbslots_mysql::ServerUrl> {
    let opts = OptsBuilder::from_opts(server(url)?.opts().clone())
        .max_allowed_packet(Some(WORKER_MAX_ALLOWED_PACKET))
        .wait_timeout(Some(WORKER_WAIT_TIMEOUT));
    Ok(dbslots_mysql::ServerUrl::from_opts(
        opts.into(),
        url.to_owned(),
    ))
}

async fn prepare(
    admin_url: &str,
    url: &str,
    workers: u32,
    per_worker: u32,
    max_connections: Option<u32>,
) -> Result<()> {
    if workers == 0 || per_worker == 0 {
        bail!("--workers and --rows-per-worker must be at least 1");
    }
    let mut conn = server(admin_url)?
        .connect()
        .await
        .context("cannot connect as the administrator")?;
    if let Some(limit) = max_connections {
        conn.query_drop(format!("SET GLOBAL max_connections = {limit}"))
            .await
            .context("cannot set max_connections")?;
    }
    conn.query_drop(format!("DROP TABLE IF EXISTS {TABLE}"))
        .await?;
    conn.query_drop(format!(
        "CREATE TABLE {TABLE} (
            id INT UNSIGNED NOT NULL PRIMARY KEY,
            shard INT UNSIGNED NOT NULL,
            payload VARCHAR(64) NOT NULL,
            state ENUM('queued', 'done') NOT NULL DEFAULT 'queued',
            worker INT UNSIGNED NULL,
            result BIGINT UNSIGNED NULL,
            processed INT UNSIGNED NOT NULL DEFAULT 0,
            KEY by_shard (shard, state)
        ) ENGINE=InnoDB"
    ))
    .await
    .context("cannot create the jobs table")?;
    let total = u64::from(workers) * u64::from(per_worker);
    let mut id = 1u64;
    while id <= total {
        let end = (id + 1999).min(total);
        let values: Vec<String> = (id..=end)
            .map(|i| format!("({i},{},'job-{i}')", (i - 1) % u64::from(workers)))
            .collect();
        conn.query_drop(format!(
            "INSERT INTO {TABLE} (id, shard, payload) VALUES {}",
            values.join(",")
        ))
        .await
        .context("cannot queue the jobs")?;
        id = end + 1;
    }
    // Max_used_connections and the error counters start from here.
    conn.query_drop("FLUSH STATUS").await?;
    conn.disconnect().await?;

    let mut user = server(url)?
        .connect()
        .await
        .context("cannot connect as the workers' account")?;
    let limits = ServerLimits::read(&mut user).await?;
    user.disconnect().await?;
    let suggestion = limits.suggest_capacity();
    println!(
        "{}",
        json!({
            "rows": total,
            "version": limits.version,
            "max_connections": limits.max_connections,
            "capacity": suggestion.capacity,
            "reason": suggestion.reason,
        })
    );
    Ok(())
}

/// Refusals met while connecting, by error code.
#[derive(Default)]
struct Refusals(BTreeMap<String, u32>);

impl Refusals {
    fn count(&mut self, code: Option<u16>) {
        let key = match code {
            Some(
                c @ (codes::TOO_MANY_CONNECTIONS
                | codes::TOO_MANY_USER_CONNECTIONS
                | codes::USER_LIMIT_REACHED),
            ) => c.to_string(),
            _ => "other".to_string(),
        };
        *self.0.entry(key).or_default() += 1;
    }

    fn attempts(&mut self, attempts: &[Attempt]) {
        for a in attempts {
            self.count(a.code);
        }
    }
}

fn env_u32(name: &str) -> Result<u32> {
    std::env::var(name)
        .with_context(|| format!("{name} is not set: run me with `dbslots spawn`"))?
        .parse()
        .with_context(|| format!("{name} is not a number"))
}

/// A connection, however it was opened.
enum Opened {
    Direct(Conn),
    Slotted(dbslots_mysql::Connection),
}

impl Opened {
    fn conn(&mut self) -> &mut Conn {
        match self {
            Opened::Direct(c) => c,
            Opened::Slotted(c) => c,
        }
    }

    async fn close(self) -> Result<()> {
        match self {
            Opened::Direct(c) => c.disconnect().await?,
            Opened::Slotted(c) => Connection::close(c).await?,
        }
        Ok(())
    }
}

async fn connect_direct(url: &str, refusals: &mut Refusals) -> Result<Conn> {
    let server = worker_server(url)?;
    let mut delay = DIRECT_FIRST_DELAY;
    for attempt in 1..=DIRECT_ATTEMPTS {
        // Like PDO's ATTR_TIMEOUT in the reference: a connect lost in an
        // overflowing listen backlog would otherwise wait forever.
        match tokio::time::timeout(DIRECT_TIMEOUT, server.connect()).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => {
                let code = match &e {
                    mysql_async::Error::Server(s) => Some(s.code),
                    _ => None,
                };
                refusals.count(code);
                if attempt == DIRECT_ATTEMPTS {
                    return Err(e).context(format!("gave up after {attempt} attempts"));
                }
            }
            Err(_) => {
                refusals.count(None);
                if attempt == DIRECT_ATTEMPTS {
                    bail!(
                        "gave up after {attempt} attempts: the last one found no answer within {DIRECT_TIMEOUT:?}"
                    );
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
    bail!("no connect attempt was made")
}

/// Sleeps until the wall clock reads `at` (milliseconds since the epoch);
/// returns at once when that moment has passed.
async fn wait_until_unix_ms(at: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(at);
    tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await;
}

/// Milliseconds since the Unix epoch, with microseconds.
fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given; RUSAGE_SELF is
    // always valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// One worker. `entered` is when `main` began: the connect time it reports
/// runs from there (process start-up before `main` is measured by xtask from
/// the joblog's start time and `connected_at_ms`).
async fn work(url: &str, hold: Duration, no_slots: bool, entered: Instant) -> Result<()> {
    let index = env_u32(dbslots_core::env::WORKER_INDEX)?;
    let started = entered;
    let mut refusals = Refusals::default();
    let (path, opened) = if no_slots {
        (
            "no-slots",
            connect_direct(url, &mut refusals).await.map(Opened::Direct),
        )
    } else {
        let path = if std::env::var_os(dbslots_core::env::SLOT).is_some() {
            "spawner-slot"
        } else {
            "connector"
        };
        let connector = Connector::from_env(url, ConnectorOptions::new())?;
        let opened = match connector.connect().await {
            Ok(conn) => {
                refusals.attempts(conn.failed_attempts());
                Ok(Opened::Slotted(conn))
            }
            Err(e) => {
                if let dbslots_mysql::Error::Connect { attempts, .. } = &e {
                    refusals.attempts(attempts);
                } else {
                    refusals.count(None);
                }
                Err(anyhow::Error::from(e))
            }
        };
        (path, opened)
    };
    let mut connected_at_ms = None;
    let mut connect_ms = None;
    let result = match opened {
        Ok(mut conn) => {
            let connected = Instant::now();
            connected_at_ms = Some(unix_ms());
            connect_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            let processed = process_share(conn.conn(), index).await;
            if let Some(rest) = hold.checked_sub(connected.elapsed()) {
                tokio::time::sleep(rest).await;
            }
            let closed = conn.close().await;
            processed.and_then(|rows| closed.map(|()| rows))
        }
        Err(e) => Err(e),
    };
    let (ok, rows, error) = match &result {
        Ok(rows) => (true, *rows, None),
        Err(e) => (false, 0, Some(format!("{e:#}"))),
    };
    println!(
        "DEMO-RESULT {}",
        json!({
            "worker": index,
            "path": path,
            "ok": ok,
            "rows": rows,
            "refusals": refusals.0,
            "ms": started.elapsed().as_millis() as u64,
            "connect_ms": connect_ms,
            "connected_at_ms": connected_at_ms,
            "cpu_ms": cpu_time().as_secs_f64() * 1000.0,
            "error": error,
        })
    );
    result.map(|_| ())
}

/// Claims and processes the queued rows of shard `index`; returns how many.
///
/// Four round trips in all, as a lightweight worker would do it: `BEGIN`,
/// the claim, one `UPDATE` carrying every result, `COMMIT`. Text protocol
/// only (a prepared statement costs a prepare round trip per connection,
/// and each connection here runs each statement once); every value in the
/// statements is an integer this worker computed.
async fn process_share(conn: &mut Conn, index: u32) -> Result<u64> {
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    let rows: Vec<(u32, String)> = tx
        .query(format!(
            "SELECT id, payload FROM {TABLE} WHERE shard = {index} AND state = 'queued' FOR UPDATE"
        ))
        .await
        .context("cannot claim the share")?;
    if !rows.is_empty() {
        let cases: String = rows
            .iter()
            .map(|(id, payload)| format!(" WHEN {id} THEN {}", checksum(payload)))
            .collect();
        let ids: Vec<String> = rows.iter().map(|(id, _)| id.to_string()).collect();
        tx.query_drop(format!(
            "UPDATE {TABLE} SET state = 'done', worker = {index}, processed = processed + 1, \
             result = CASE id{cases} END WHERE id IN ({})",
            ids.join(",")
        ))
        .await
        .context("cannot record the results")?;
    }
    tx.commit().await.context("cannot commit")?;
    Ok(rows.len() as u64)
}

/// The "work": FNV-1a of the payload.
fn checksum(payload: &str) -> u64 {
    payload.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

async fn report(admin_url: &str) -> Result<()> {
    let mut conn = server(admin_url)?
        .connect()
        .await
        .context("cannot connect as the administrator")?;
    let (queued, done, processed, twice): (u64, Option<u64>, Option<u64>, Option<u64>) = conn
        .query_first(format!(
            "SELECT COUNT(*), SUM(state = 'done'), SUM(processed), SUM(processed > 1) FROM {TABLE}"
        ))
        .await?
        .context("no row from the jobs table")?;
    let status: Vec<(String, String)> = conn
        .query(
            "SHOW GLOBAL STATUS WHERE Variable_name IN ('Max_used_connections', \
             'Connection_errors_max_connections', 'Aborted_connects', 'Threads_connected')",
        )
        .await?;
    let max_connections: Option<u64> = conn.query_first("SELECT @@max_connections").await?;
    conn.disconnect().await?;
    let status: BTreeMap<String, u64> = status
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    println!(
        "{}",
        json!({
            "queued": queued,
            "done": done.unwrap_or(0),
            "processed": processed.unwrap_or(0),
            "processed_twice": twice.unwrap_or(0),
            "max_connections": max_connections,
            "status": status,
        })
    );
    Ok(())
}
