//! `dbslots serve`: the pools and the server's connections over HTTP, as
//! JSON, as Prometheus metrics and as a live dashboard.
//!
//! The server is read-only: every route is a `GET`, nothing takes a slot,
//! and the only connection it opens is the monitor connection of `--url`
//! (outside any pool, see [`dbslots_mysql::connect_monitor`]), kept open and
//! read at most every [`SERVER_FRESH`] however many clients poll. Pool stats
//! do file I/O, so handlers read them in `spawn_blocking`. Shaping JSON and
//! rendering the Prometheus text are plain functions ([`pool_stats_json`],
//! [`render_metrics`]) that the unit tests call directly.
//!
//! No password is ever shown: pools are named by their (redacted) address,
//! the URL appears only through [`dbslots_core::redact`], and the errors of
//! `dbslots-mysql` redact URLs themselves.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use clap::Args;
use dbslots_core::{Pool, PoolAddr, PoolOptions, PoolStats};
use dbslots_mysql::mysql_async::Conn;
use dbslots_mysql::{AccountUsage, Processlist, ServerLimits};
use serde_json::{Value, json};

use crate::common::now_unix_ms;

/// The dashboard page: self-contained HTML, CSS and JavaScript.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The content type of the Prometheus text exposition format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a reading of the server is reused before it is read again.
pub const SERVER_FRESH: Duration = Duration::from_millis(500);

/// How long one reading of the server may take once connected.
const SERVER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves pool stats, Prometheus metrics and a live dashboard over HTTP.
///
/// Routes: `/` (dashboard), `/api/pool-stats`, `/api/server` (with --url)
/// and `/metrics`. Read-only; never shows a password.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A pool to show; repeat for several
    /// [default: $DBSLOTS_POOL, else the private default pool]
    #[arg(long = "pool", env = dbslots_core::env::POOL, value_name = "DIR")]
    pools: Vec<String>,

    /// The MySQL server whose connections to show (read with a monitor
    /// connection outside any pool)
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    url: Option<String>,

    /// Address to listen on (port 0 picks a free port; the address is
    /// printed on stdout)
    #[arg(long, default_value = "127.0.0.1:9187", value_name = "ADDR")]
    listen: String,
}

/// Runs `dbslots serve` until Ctrl-C or SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let pools = open_pools(&args.pools)?;
    let server = args.url.map(|url| Arc::new(ServerSource::new(url)));
    let runtime = crate::common::runtime()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        // Tests and scripts read this line to learn the port.
        println!("dbslots serve: listening on http://{addr}/");
        use std::io::Write as _;
        std::io::stdout().flush()?;
        tracing::info!(%addr, pools = pools.len(), server = server.is_some(), "serving");
        let app = App {
            pools: Arc::new(pools),
            server: server.clone(),
        };
        axum::serve(listener, router(app))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("the HTTP server failed")?;
        if let Some(server) = server {
            server.close().await;
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Opens every pool once, refusing duplicates (their metrics would clash).
fn open_pools(given: &[String]) -> anyhow::Result<Vec<Pool>> {
    let addrs = if given.is_empty() {
        vec![PoolAddr::Dir(dbslots_core::default_pool_dir()?)]
    } else {
        given
            .iter()
            .map(|p| PoolAddr::parse(p))
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut pools: Vec<Pool> = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let shown = addr.to_string();
        if pools.iter().any(|p| p.addr().to_string() == shown) {
            bail!("pool {shown} is given twice: give each pool once");
        }
        let pool = Pool::open(addr, PoolOptions::new()).with_context(|| {
            format!("cannot open pool {shown} (create it first, for example with `dbslots exec --pool {shown} --capacity N -- true`)")
        })?;
        pools.push(pool);
    }
    Ok(pools)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

#[derive(Clone)]
struct App {
    pools: Arc<Vec<Pool>>,
    server: Option<Arc<ServerSource>>,
}

fn router(app: App) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/api/pool-stats", get(api_pool_stats))
        .route("/api/server", get(api_server))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(app)
}

async fn dashboard() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(DASHBOARD)).into_response()
}

async fn api_pool_stats(State(app): State<App>) -> Response {
    match read_pools(&app.pools).await {
        Ok(readings) => json_response(StatusCode::OK, pool_stats_json(&readings, now_unix_ms())),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

async fn api_server(State(app): State<App>) -> Response {
    let Some(server) = &app.server else {
        return error_response(
            StatusCode::NOT_FOUND,
            "no server to show: start `dbslots serve` with --url mysql://USER:PASSWORD@HOST:PORT/",
        );
    };
    match server.read().await {
        Ok(reading) => json_response(StatusCode::OK, server_json(&server.shown_url(), &reading)),
        Err(e) => error_response(StatusCode::BAD_GATEWAY, &e),
    }
}

async fn metrics(State(app): State<App>) -> Response {
    let readings = match read_pools(&app.pools).await {
        Ok(r) => r,
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let reading = match &app.server {
        Some(s) => Some(s.read().await),
        None => None,
    };
    let server = reading
        .as_ref()
        .map(|r| r.as_ref().map(|r| r.limits.clone()).map_err(Clone::clone));
    let mut body = render_metrics(&readings, server.as_ref());
    if let Some(Ok(r)) = &reading {
        // The monitor's own connection stays open: it counts.
        body.push_str(&render_user_metrics(&AccountUsage::of(
            &r.limits,
            &r.processlist,
            true,
        )));
    }
    (
        [
            (header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn not_found(uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        &format!(
            "no such page: {}; dbslots serve has /, /api/pool-stats, /api/server and /metrics",
            uri.path()
        ),
    )
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

fn error_response(status: StatusCode, message: &str) -> Response {
    json_response(status, json!({ "error": message }))
}

/// One pool's stats, or why they could not be read.
#[derive(Debug, Clone)]
pub struct PoolReading {
    /// The pool's address as shown (never with a password).
    pub name: String,
    /// Its stats.
    pub stats: Result<PoolStats, String>,
}

/// Reads every pool's stats on the blocking pool (they do file I/O).
async fn read_pools(pools: &Arc<Vec<Pool>>) -> Result<Vec<PoolReading>, String> {
    let pools = Arc::clone(pools);
    tokio::task::spawn_blocking(move || {
        pools
            .iter()
            .map(|pool| PoolReading {
                name: pool.addr().to_string(),
                stats: pool.stats().map_err(|e| {
                    tracing::warn!(pool = %pool.addr(), error = %e, "cannot read the pool's stats");
                    e.to_string()
                }),
            })
            .collect()
    })
    .await
    .map_err(|e| format!("reading the pools' stats failed: {e}"))
}

/// The body of `GET /api/pool-stats`: `{"unix_ms": N, "pools": [...]}`, one
/// entry per pool in the order given, each [`PoolStats`] as `dbslots status
/// --json` prints it, or `{"pool": NAME, "error": TEXT}`.
pub fn pool_stats_json(readings: &[PoolReading], now_ms: u64) -> Value {
    let pools: Vec<Value> = readings
        .iter()
        .map(|r| match &r.stats {
            Ok(s) => s.to_json(),
            Err(e) => json!({ "pool": r.name, "error": e }),
        })
        .collect();
    json!({ "unix_ms": now_ms, "pools": pools })
}

/// One reading of the server: its limits and usage, and its connections.
#[derive(Debug, Clone)]
pub struct ServerReading {
    /// Limits and counters.
    pub limits: ServerLimits,
    /// The connections the monitor's account may see.
    pub processlist: Processlist,
}

/// The body of `GET /api/server`: the document `dbslots connections --json`
/// prints (`url` redacted, `limits`, `suggested_capacity`, `groups`,
/// `connections`), plus `user_limit` ([`ServerLimits::user_limit`]).
pub fn server_json(url: &str, reading: &ServerReading) -> Value {
    let limits = &reading.limits;
    json!({
        "url": url,
        "limits": limits,
        "suggested_capacity": limits.suggest_capacity(),
        "groups": reading.processlist.groups(),
        "connections": reading.processlist.processes,
        "user_limit": limits.user_limit(),
    })
}

/// Escapes a label value for the text exposition format: backslash, double
/// quote and line feed.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Formats a sample value the way Prometheus reads it (`+Inf`, `-Inf`,
/// `NaN`, else Rust's shortest round-trip decimal).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// A gauge or counter family over the pools that could be read.
fn pool_family(
    out: &mut String,
    readings: &[PoolReading],
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&PoolStats) -> f64,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for r in readings {
        if let Ok(s) = &r.stats {
            let _ = writeln!(
                out,
                "{name}{{pool=\"{}\"}} {}",
                escape_label_value(&r.name),
                format_value(value(s))
            );
        }
    }
}

fn server_gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {value}");
}

/// The body of `GET /metrics` in the Prometheus text exposition format
/// 0.0.4.
///
/// Every pool family is labelled `pool="ADDRESS"`; `dbslots_pool_up` is 0
/// for a pool whose stats could not be read, which then has no other
/// samples. The wait histogram's buckets are cumulative; its `+Inf` bucket
/// and `_count` are both the total of the counts, so they always agree.
/// With a server, `dbslots_mysql_up` says whether it could be read and the
/// `dbslots_mysql_*` gauges follow when it could.
pub fn render_metrics(
    readings: &[PoolReading],
    server: Option<&Result<ServerLimits, String>>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP dbslots_pool_up Whether the pool's stats could be read (1) or not (0)."
    );
    let _ = writeln!(out, "# TYPE dbslots_pool_up gauge");
    for r in readings {
        let _ = writeln!(
            out,
            "dbslots_pool_up{{pool=\"{}\"}} {}",
            escape_label_value(&r.name),
            u8::from(r.stats.is_ok())
        );
    }
    pool_family(
        &mut out,
        readings,
        "dbslots_pool_capacity",
        "gauge",
        "Slots the pool hands out at most.",
        |s| f64::from(s.capacity),
    );
    pool_family(
        &mut out,
        readings,
        "dbslots_pool_active",
        "gauge",
        "Slots held right now.",
        |s| f64::from(s.active),
    );
    pool_family(
        &mut out,
        readings,
        "dbslots_pool_over_capacity",
        "gauge",
        "Slots held beyond the capacity while a shrink drains.",
        |s| f64::from(s.over_capacity()),
    );
    pool_family(
        &mut out,
        readings,
        "dbslots_pool_waiting",
        "gauge",
        "Acquirers queued for a slot right now.",
        |s| f64::from(s.waiting),
    );
    pool_family(
        &mut out,
        readings,
        "dbslots_pool_peak",
        "gauge",
        "Most slots held at once since the pool was created.",
        |s| s.peak as f64,
    );
    pool_family(
        &mut out,
        readings,
        "dbslots_pool_acquired_total",
        "counter",
        "Successful slot acquisitions since the pool was created.",
        |s| s.acquisitions as f64,
    );
    pool_family(
        &mut out,
        readings,
        "dbslots_pool_timeouts_total",
        "counter",
        "Acquisitions that gave up at their deadline since the pool was created.",
        |s| s.timeouts as f64,
    );
    let name = "dbslots_pool_wait_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} How long acquisitions waited for a slot, in seconds."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for r in readings {
        let Ok(s) = &r.stats else { continue };
        let pool = escape_label_value(&r.name);
        let h = &s.wait_histogram;
        let mut cumulative: u64 = 0;
        for (i, bound) in h.bounds_seconds.iter().enumerate() {
            cumulative += h.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "{name}_bucket{{pool=\"{pool}\",le=\"{}\"}} {cumulative}",
                format_value(*bound)
            );
        }
        let total: u64 = h.counts.iter().sum();
        let _ = writeln!(out, "{name}_bucket{{pool=\"{pool}\",le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{name}_sum{{pool=\"{pool}\"}} {}",
            format_value(h.sum_seconds)
        );
        let _ = writeln!(out, "{name}_count{{pool=\"{pool}\"}} {total}");
    }
    if let Some(server) = server {
        let _ = writeln!(
            out,
            "# HELP dbslots_mysql_up Whether the MySQL server could be read (1) or not (0)."
        );
        let _ = writeln!(out, "# TYPE dbslots_mysql_up gauge");
        let _ = writeln!(out, "dbslots_mysql_up {}", u8::from(server.is_ok()));
        if let Ok(l) = server {
            server_gauge(
                &mut out,
                "dbslots_mysql_threads_connected",
                "Connections open on the server now (Threads_connected).",
                l.threads_connected,
            );
            server_gauge(
                &mut out,
                "dbslots_mysql_max_connections",
                "Connections the server admits in all (max_connections).",
                l.max_connections,
            );
            server_gauge(
                &mut out,
                "dbslots_mysql_max_used_connections",
                "Most connections open at once since the server started (Max_used_connections).",
                l.max_used_connections,
            );
        }
    }
    out
}

/// The per-account families of `GET /metrics`, labelled `user="NAME"`: one
/// sample per account with connections, as the monitor's account sees them
/// (every account with PROCESS, else only its own), and
/// `dbslots_mysql_user_max_connections` only for accounts with a limit
/// (their own MAX_USER_CONNECTIONS, else the global max_user_connections),
/// so that `connections / max_connections` exists exactly where a limit
/// applies.
pub fn render_user_metrics(usages: &[AccountUsage]) -> String {
    let mut out = String::new();
    /// A family: name, help, and the account's value (none: no sample).
    type UserFamily = (&'static str, &'static str, fn(&AccountUsage) -> Option<u64>);
    let families: [UserFamily; 4] = [
        (
            "dbslots_mysql_user_connections",
            "Connections of the account (user name) now.",
            |u| Some(u.connections),
        ),
        (
            "dbslots_mysql_user_max_connections",
            "The connection limit that applies to the account: its own MAX_USER_CONNECTIONS, else the global max_user_connections.",
            |u| u.limit.map(|(n, _)| n),
        ),
        (
            "dbslots_mysql_user_sleeping",
            "Connections of the account that sleep (COMMAND Sleep).",
            |u| Some(u.sleeping()),
        ),
        (
            "dbslots_mysql_user_oldest_idle_seconds",
            "How long the account's longest sleeping connection has been idle (0 for none).",
            |u| Some(u.oldest_idle().unwrap_or(0)),
        ),
    ];
    for (name, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for u in usages {
            if let Some(v) = value(u) {
                let _ = writeln!(
                    out,
                    "{name}{{user=\"{}\"}} {v}",
                    escape_label_value(&u.user)
                );
            }
        }
    }
    out
}

/// The server of `--url`, read through one monitor connection that is kept
/// open (so that it stays in when the server fills up) and re-opened after
/// a failure; readings are shared for [`SERVER_FRESH`].
pub struct ServerSource {
    url: String,
    state: tokio::sync::Mutex<ServerState>,
}

#[derive(Default)]
struct ServerState {
    conn: Option<Conn>,
    last: Option<(Instant, Result<ServerReading, String>)>,
}

impl ServerSource {
    /// A source for `url`; connects on the first read.
    pub fn new(url: String) -> Self {
        ServerSource {
            url,
            state: tokio::sync::Mutex::new(ServerState::default()),
        }
    }

    /// The server's URL, redacted.
    pub fn shown_url(&self) -> String {
        dbslots_core::redact(&self.url)
    }

    /// The server's limits, usage and connections, or why they cannot be
    /// read (redacted).
    pub async fn read(&self) -> Result<ServerReading, String> {
        let mut state = self.state.lock().await;
        if let Some((at, reading)) = &state.last
            && at.elapsed() < SERVER_FRESH
        {
            return reading.clone();
        }
        let reading = self.read_now(&mut state.conn).await;
        if let Err(e) = &reading {
            tracing::warn!(url = %dbslots_core::redact(&self.url), error = %e, "cannot read the server");
        }
        state.last = Some((Instant::now(), reading.clone()));
        reading
    }

    async fn read_now(&self, conn: &mut Option<Conn>) -> Result<ServerReading, String> {
        if conn.is_none() {
            let c = dbslots_mysql::connect_monitor(&self.url)
                .await
                .map_err(|e| e.to_string())?;
            *conn = Some(c);
        }
        let c = conn.as_mut().expect("the connection was opened just above");
        let read = async {
            let limits = ServerLimits::read(c).await?;
            let processlist = Processlist::read(c).await?;
            Ok::<_, dbslots_mysql::Error>(ServerReading {
                limits,
                processlist,
            })
        };
        match tokio::time::timeout(SERVER_READ_TIMEOUT, read).await {
            Ok(Ok(reading)) => Ok(reading),
            Ok(Err(e)) => {
                // Connect again on the next read.
                *conn = None;
                Err(e.to_string())
            }
            Err(_) => {
                *conn = None;
                Err(format!(
                    "the server did not answer within {} s",
                    SERVER_READ_TIMEOUT.as_secs()
                ))
            }
        }
    }

    /// Closes the monitor connection, if open.
    pub async fn close(&self) {
        let conn = self.state.lock().await.conn.take();
        if let Some(conn) = conn {
            let _ = conn.disconnect().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbslots_core::{Holder, WaitHistogram};

    fn stats(name: &str) -> PoolStats {
        PoolStats {
            pool: name.into(),
            backend: "file".into(),
            capacity: 4,
            active: 2,
            waiting: 1,
            peak: 3,
            acquisitions: 10,
            timeouts: 1,
            holders: vec![Holder {
                slot: 0,
                pid: Some(42),
                host: None,
                since_unix_ms: Some(1_000),
            }],
            waiters: Vec::new(),
            wait_histogram: WaitHistogram {
                bounds_seconds: vec![0.001, 0.5, 2.0],
                counts: vec![6, 0, 3, 1],
                sum_seconds: 7.25,
                count: 10,
            },
        }
    }

    fn limits() -> ServerLimits {
        ServerLimits {
            version: "10.11.6-MariaDB".into(),
            account: "app@%".into(),
            connection_id: 9,
            max_connections: 151,
            max_user_connections: 0,
            session_max_user_connections: 0,
            account_max_user_connections: Some(0),
            extra_max_connections: Some(1),
            extra_port: Some(0),
            threads_connected: 12,
            max_used_connections: 40,
            connection_errors_max_connections: Some(0),
            account_limits: Vec::new(),
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("line\nbreak"), "line\\nbreak");
        assert_eq!(escape_label_value("/run/dbslots/x"), "/run/dbslots/x");
    }

    #[test]
    fn values_are_written_as_prometheus_reads_them() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(0.001), "0.001");
        assert_eq!(format_value(2.0), "2");
        assert_eq!(format_value(1e-7), "0.0000001");
    }

    #[test]
    fn metrics_have_one_family_each_with_cumulative_buckets() {
        let readings = [
            PoolReading {
                name: "/p/one".into(),
                stats: Ok(stats("/p/one")),
            },
            PoolReading {
                name: "/p/\"two\"".into(),
                stats: Err("gone".into()),
            },
        ];
        let text = render_metrics(&readings, None);
        assert!(text.ends_with('\n'));
        let lines: Vec<&str> = text.lines().collect();
        for family in [
            "dbslots_pool_up",
            "dbslots_pool_capacity",
            "dbslots_pool_wait_seconds",
        ] {
            let types = lines
                .iter()
                .filter(|l| l.starts_with(&format!("# TYPE {family} ")))
                .count();
            assert_eq!(types, 1, "{family} in\n{text}");
        }
        assert!(lines.contains(&"dbslots_pool_up{pool=\"/p/one\"} 1"));
        assert!(lines.contains(&"dbslots_pool_up{pool=\"/p/\\\"two\\\"\"} 0"));
        assert!(lines.contains(&"dbslots_pool_capacity{pool=\"/p/one\"} 4"));
        assert!(lines.contains(&"dbslots_pool_active{pool=\"/p/one\"} 2"));
        assert!(lines.contains(&"dbslots_pool_waiting{pool=\"/p/one\"} 1"));
        assert!(lines.contains(&"dbslots_pool_peak{pool=\"/p/one\"} 3"));
        assert!(lines.contains(&"dbslots_pool_acquired_total{pool=\"/p/one\"} 10"));
        assert!(lines.contains(&"dbslots_pool_timeouts_total{pool=\"/p/one\"} 1"));
        assert!(lines.contains(&"# TYPE dbslots_pool_acquired_total counter"));
        let buckets: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("dbslots_pool_wait_seconds_bucket"))
            .collect();
        assert_eq!(
            buckets,
            [
                "dbslots_pool_wait_seconds_bucket{pool=\"/p/one\",le=\"0.001\"} 6",
                "dbslots_pool_wait_seconds_bucket{pool=\"/p/one\",le=\"0.5\"} 6",
                "dbslots_pool_wait_seconds_bucket{pool=\"/p/one\",le=\"2\"} 9",
                "dbslots_pool_wait_seconds_bucket{pool=\"/p/one\",le=\"+Inf\"} 10",
            ]
        );
        assert!(lines.contains(&"dbslots_pool_wait_seconds_sum{pool=\"/p/one\"} 7.25"));
        assert!(lines.contains(&"dbslots_pool_wait_seconds_count{pool=\"/p/one\"} 10"));
        // The unreadable pool has no samples but `up`.
        assert_eq!(text.matches("two").count(), 1, "{text}");
        assert!(!text.contains("dbslots_mysql"));
    }

    #[test]
    fn metrics_show_the_server_when_it_was_read() {
        let text = render_metrics(&[], Some(&Ok(limits())));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"dbslots_mysql_up 1"));
        assert!(lines.contains(&"dbslots_mysql_threads_connected 12"));
        assert!(lines.contains(&"dbslots_mysql_max_connections 151"));
        assert!(lines.contains(&"dbslots_mysql_max_used_connections 40"));
        let text = render_metrics(&[], Some(&Err("refused".into())));
        assert!(text.lines().any(|l| l == "dbslots_mysql_up 0"));
        assert!(!text.contains("dbslots_mysql_threads_connected"));
    }

    #[test]
    fn user_metrics_have_a_limit_only_where_one_applies() {
        let usages = [
            AccountUsage {
                user: "app".into(),
                connections: 9,
                idle_seconds: vec![40, 3],
                limit: Some((10, dbslots_mysql::LimitSource::Account)),
            },
            AccountUsage {
                user: "o\"dd".into(),
                connections: 1,
                idle_seconds: Vec::new(),
                limit: None,
            },
        ];
        let text = render_user_metrics(&usages);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"dbslots_mysql_user_connections{user=\"app\"} 9"));
        assert!(lines.contains(&"dbslots_mysql_user_max_connections{user=\"app\"} 10"));
        assert!(lines.contains(&"dbslots_mysql_user_sleeping{user=\"app\"} 2"));
        assert!(lines.contains(&"dbslots_mysql_user_oldest_idle_seconds{user=\"app\"} 40"));
        assert!(lines.contains(&"dbslots_mysql_user_connections{user=\"o\\\"dd\"} 1"));
        assert!(lines.contains(&"dbslots_mysql_user_oldest_idle_seconds{user=\"o\\\"dd\"} 0"));
        assert_eq!(
            text.matches("dbslots_mysql_user_max_connections{").count(),
            1
        );
        assert_eq!(text.matches("# TYPE ").count(), 4);
    }

    #[test]
    fn pool_stats_json_keeps_the_order_and_reports_errors() {
        let readings = [
            PoolReading {
                name: "/p/one".into(),
                stats: Ok(stats("/p/one")),
            },
            PoolReading {
                name: "/p/two".into(),
                stats: Err("no such pool".into()),
            },
        ];
        let v = pool_stats_json(&readings, 5);
        assert_eq!(v["unix_ms"], 5);
        assert_eq!(v["pools"][0]["pool"], "/p/one");
        assert_eq!(v["pools"][0]["active"], 2);
        assert_eq!(v["pools"][0]["holders"][0]["pid"], 42);
        assert_eq!(
            v["pools"][1],
            json!({"pool": "/p/two", "error": "no such pool"})
        );
    }

    #[test]
    fn server_json_is_what_dbslots_connections_prints() {
        let reading = ServerReading {
            limits: limits(),
            processlist: Processlist {
                own_id: 9,
                processes: vec![dbslots_mysql::Process {
                    id: 9,
                    user: "app".into(),
                    host: "localhost:5000".into(),
                    db: None,
                    command: "Query".into(),
                    seconds: 0,
                    state: None,
                }],
            },
        };
        let v = server_json("mysql://app:***@db/x", &reading);
        assert_eq!(v["url"], "mysql://app:***@db/x");
        assert_eq!(v["limits"]["max_connections"], 151);
        assert_eq!(v["limits"]["threads_connected"], 12);
        assert_eq!(v["suggested_capacity"]["capacity"], 135);
        assert_eq!(v["groups"][0]["count"], 1);
        assert_eq!(v["connections"][0]["id"], 9);
        assert_eq!(v["user_limit"], Value::Null);
    }

    #[test]
    fn the_dashboard_loads_nothing_from_elsewhere() {
        // The SVG namespace is a name, not something loaded.
        let page = DASHBOARD.replace("\"http://www.w3.org/2000/svg\"", "");
        for needle in ["http://", "https://", "<link", "@import", "src=", "url("] {
            assert!(
                !page.contains(needle),
                "the dashboard must work offline but contains {needle:?}"
            );
        }
        for id in ["pools", "server", "updated"] {
            assert!(DASHBOARD.contains(&format!("id=\"{id}\"")), "{id}");
        }
    }
}
