//! `dbslots serve`: the pools and the server's connections over HTTP, as
//! JSON, as Prometheus metrics and as a live dashboard. This file holds the
//! flags and the routes; the documents and the exposition text come from
//! [`dbslots_mysql::exposition`], the server's readings from
//! [`dbslots_mysql::ServerSource`], who may ask from `guard.rs`, and the
//! connection handling (header-read timeout, connection cap) from
//! `listener.rs`.
//!
//! The server is read-only: every route is a `GET`, nothing takes a slot,
//! and the only connection it opens is the monitor connection of `--url`
//! (outside any pool), kept open and read at most every
//! [`SERVER_FRESH`](dbslots_mysql::SERVER_FRESH) however many clients
//! poll; a reader waits for the server at most [`SERVER_WAIT`], then gets
//! the last readings marked as not up. Pool stats do file I/O, so handlers
//! read them in `spawn_blocking`.
//!
//! No password is ever shown: pools are named by their (redacted) address,
//! the URL appears only through [`dbslots_core::redact`], and the errors of
//! `dbslots-mysql` redact URLs themselves.

mod guard;
mod listener;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use clap::Args;
use dbslots_core::{Pool, PoolAddr, PoolOptions};
use dbslots_mysql::exposition::{
    PROMETHEUS_CONTENT_TYPE, PoolReading, pool_stats_json, render_metrics, render_user_metrics,
    server_json,
};
use dbslots_mysql::{AccountUsage, ServerSource};
use serde_json::{Value, json};

use self::guard::Guard;

use crate::common::now_unix_ms;

/// The dashboard page: self-contained HTML, CSS and JavaScript.
const DASHBOARD: &str = include_str!("dashboard.html");

/// How long a request waits for a reading of the server before it is
/// answered with the last one (marked as not up).
pub const SERVER_WAIT: Duration = Duration::from_millis(300);

/// Serves pool stats, Prometheus metrics and a live dashboard over HTTP.
///
/// Routes: `/` (dashboard), `/api/pool-stats`, `/api/server` (with --url)
/// and `/metrics`. Read-only; never shows a password.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A pool to show; repeat for several
    /// [default: $DBSLOTS_POOL, else the private default pool]
    #[arg(long = "pool", env = dbslots_core::env::POOL, hide_env_values = true, value_name = "DIR")]
    pools: Vec<String>,

    /// The MySQL server whose connections to show (read with a monitor
    /// connection outside any pool)
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    url: Option<String>,

    /// Address to listen on (port 0 picks a free port; the address is
    /// printed on stdout). Beyond loopback, --token-file or --no-auth is
    /// required
    #[arg(long, default_value = "127.0.0.1:9187", value_name = "ADDR")]
    listen: String,

    /// Also answer requests for this host name (the Host header); by
    /// default only the listen address and loopback names are answered,
    /// which keeps web pages from reading the dashboard through DNS
    /// rebinding. Repeat for several
    #[arg(long = "allow-host", value_name = "NAME")]
    allow_hosts: Vec<String>,

    /// Require `authorization: Bearer TOKEN` on every route but the
    /// dashboard page, TOKEN being the content of FILE (Prometheus:
    /// `authorization: {credentials_file: FILE}`; the dashboard: open it as
    /// /#token=TOKEN)
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// Listen beyond loopback without a token: anyone who can reach the
    /// port reads the pools and the server's processlist
    #[arg(long, conflicts_with = "token_file")]
    no_auth: bool,

    /// Connections open at once; beyond it the oldest idle one is closed
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=65536))]
    max_connections: u32,
}

/// Runs `dbslots serve` until Ctrl-C or SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let pools = open_pools(&args.pools)?;
    let token = args
        .token_file
        .as_deref()
        .map(guard::read_token)
        .transpose()?;
    if let Some(url) = &args.url {
        // A typo shows now, not as a 502 on every request later.
        dbslots_mysql::ServerUrl::parse(url)?;
    }
    let server = args.url.map(ServerSource::new);
    raise_open_file_limit(args.max_connections);
    let runtime = crate::common::runtime()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let guard = Guard::new(addr, &args.allow_hosts, token, args.no_auth)?;
        if !addr.ip().is_loopback() && args.no_auth {
            tracing::warn!(%addr, "listening beyond loopback without a token (--no-auth)");
        }
        // Tests and scripts read this line to learn the port.
        crate::output::stdout(format!("dbslots serve: listening on http://{addr}/\n"))?;
        tracing::info!(%addr, pools = pools.len(), server = server.is_some(), "serving");
        let app = App {
            pools: Arc::new(pools),
            server: server.clone(),
        };
        let router = router(app).layer(middleware::from_fn_with_state(guard, guard::check));
        listener::serve(
            listener,
            router,
            args.max_connections as usize,
            shutdown_signal(),
        )
        .await
        .context("the HTTP server failed")?;
        if let Some(server) = server {
            server.close().await;
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Raises the soft limit on open files so that `max` connections fit.
fn raise_open_file_limit(max: u32) {
    let wanted = u64::from(max) + 64;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < wanted {
            lim.rlim_cur = wanted.min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::debug!("cannot raise the open-file limit");
            }
        }
    }
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
    server: Option<ServerSource>,
}

fn router(app: App) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/api/pool-stats", get(api_pool_stats))
        .route("/api/server", get(api_server))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

async fn dashboard() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(DASHBOARD)).into_response()
}

async fn api_pool_stats(State(app): State<App>) -> Response {
    match read_pools(&app.pools).await {
        Ok(readings) => {
            let mut doc = pool_stats_json(&readings, now_unix_ms());
            // The gates in front of a server that use these pools, if any.
            let gates = read_gates(&app.pools).await;
            if !gates.is_empty() {
                doc["gates"] = serde_json::to_value(&gates).unwrap_or_default();
            }
            json_response(StatusCode::OK, doc)
        }
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

/// The live gates of every pool (`dbslots gate`), read on the blocking pool.
async fn read_gates(pools: &Arc<Vec<Pool>>) -> Vec<dbslots_gate::GateReport> {
    let pools = Arc::clone(pools);
    tokio::task::spawn_blocking(move || {
        pools
            .iter()
            .flat_map(|p| dbslots_gate::read_gates(p).unwrap_or_default())
            .collect()
    })
    .await
    .unwrap_or_default()
}

async fn api_server(State(app): State<App>) -> Response {
    let Some(server) = &app.server else {
        return error_response(
            StatusCode::NOT_FOUND,
            "no server to show: start `dbslots serve` with --url mysql://USER:PASSWORD@HOST:PORT/",
        );
    };
    match server.read(SERVER_WAIT).await.current() {
        Ok(reading) => json_response(
            StatusCode::OK,
            server_json(&server.shown_url(), reading, &server.fleet()),
        ),
        Err(e) => error_response(StatusCode::BAD_GATEWAY, &e),
    }
}

async fn metrics(State(app): State<App>) -> Response {
    let readings = match read_pools(&app.pools).await {
        Ok(r) => r,
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let snapshot = match &app.server {
        Some(s) => Some(s.read(SERVER_WAIT).await),
        None => None,
    };
    let mut body = render_metrics(&readings, snapshot.as_ref());
    body.push_str(&dbslots_gate::render_gate_metrics(
        &read_gates(&app.pools).await,
    ));
    if let Some(r) = snapshot.as_ref().and_then(|s| s.last.as_ref()) {
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

async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> Response {
    let mut response = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!(
            "{method} is not served at {}: dbslots serve is read-only, use GET (or HEAD)",
            uri.path()
        ),
    );
    response.headers_mut().insert(
        axum::http::header::ALLOW,
        axum::http::HeaderValue::from_static("GET, HEAD"),
    );
    response
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

#[cfg(test)]
mod tests {
    use super::*;

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
