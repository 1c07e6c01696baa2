//! The environment contract between `cargo xtask test` and the tests, and
//! the helpers tests call to honour it.

use std::io::Write;

use crate::{ClusterOptions, MysqlOptions, MysqlServer, RedisCluster, RedisOptions, RedisServer};

/// URL of the ordinary account on the shared test MySQL.
pub const MYSQL_URL_ENV: &str = "DBSLOTS_TEST_MYSQL_URL";
/// URL of the administrative account on the shared test MySQL.
pub const MYSQL_ADMIN_URL_ENV: &str = "DBSLOTS_TEST_MYSQL_ADMIN_URL";
/// URL of the shared test Redis.
pub const REDIS_URL_ENV: &str = "DBSLOTS_TEST_REDIS_URL";
/// Seed URL of the shared test Redis Cluster
/// (`redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/`).
pub const REDIS_CLUSTER_URL_ENV: &str = "DBSLOTS_TEST_REDIS_CLUSTER_URL";
/// Set to `1` by `cargo xtask test`: a missing server is a failure, not a
/// skip.
pub const REQUIRE_SERVERS_ENV: &str = "DBSLOTS_TEST_REQUIRE_SERVERS";

/// The URLs of the shared test MySQL (see [`shared_mysql`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedMysql {
    /// The ordinary account, subject to every connection limit.
    pub user_url: String,
    /// The administrative account (SUPER, CREATE USER, GRANT OPTION).
    pub admin_url: String,
}

/// Whether `DBSLOTS_TEST_REQUIRE_SERVERS=1`, that is whether the tests run
/// under `cargo xtask test` and must not skip.
pub fn servers_required() -> bool {
    std::env::var(REQUIRE_SERVERS_ENV).is_ok_and(|v| v == "1")
}

/// The shared test MySQL from [`MYSQL_URL_ENV`] and [`MYSQL_ADMIN_URL_ENV`].
///
/// When they are unset this prints `SKIPPED <test>: ...` to stderr and
/// returns `None`, so the test can return early.
///
/// # Panics
///
/// When they are unset although [`servers_required`].
#[track_caller]
pub fn shared_mysql() -> Option<SharedMysql> {
    match (var(MYSQL_URL_ENV), var(MYSQL_ADMIN_URL_ENV)) {
        (Some(user_url), Some(admin_url)) => Some(SharedMysql {
            user_url,
            admin_url,
        }),
        _ => skip(&format!(
            "no test MySQL ({MYSQL_URL_ENV} and {MYSQL_ADMIN_URL_ENV} unset)"
        )),
    }
}

/// The shared test Redis URL from [`REDIS_URL_ENV`]; skips like
/// [`shared_mysql`].
///
/// # Panics
///
/// When it is unset although [`servers_required`].
#[track_caller]
pub fn shared_redis() -> Option<String> {
    match var(REDIS_URL_ENV) {
        Some(url) => Some(url),
        None => skip(&format!("no test Redis ({REDIS_URL_ENV} unset)")),
    }
}

/// The shared test Redis Cluster's seed URL from [`REDIS_CLUSTER_URL_ENV`];
/// `None` when it is unset (the caller may start a private one with
/// [`private_redis_cluster`]).
pub fn shared_redis_cluster() -> Option<String> {
    var(REDIS_CLUSTER_URL_ENV)
}

/// A private Redis Cluster for a test that fails nodes over or moves
/// slots; skips and panics like [`private_mysql`].
///
/// # Panics
///
/// When the cluster fails to start, or none can be had although
/// [`servers_required`].
#[track_caller]
pub fn private_redis_cluster(options: ClusterOptions) -> Option<RedisCluster> {
    if !servers_required() && !RedisCluster::available() {
        return skip("no redis-server and redis-cli programs (Redis Cluster)");
    }
    match RedisCluster::start(options) {
        Ok(cluster) => Some(cluster),
        Err(e) => panic!("cannot start a private test Redis Cluster: {e:#}"),
    }
}

/// A private MySQL server for a test that needs its own settings, such as
/// its own `max_connections`.
///
/// Returns `None` after printing a `SKIPPED` line when no server can be run
/// here without installing one, unless [`servers_required`] (then a server
/// is installed if need be).
///
/// # Panics
///
/// When the server fails to start, or none can be had although
/// [`servers_required`].
#[track_caller]
pub fn private_mysql(options: MysqlOptions) -> Option<MysqlServer> {
    if !servers_required() && !MysqlServer::available() {
        return skip("no MySQL or MariaDB server program and no container engine");
    }
    match MysqlServer::start(options) {
        Ok(server) => Some(server),
        Err(e) => panic!("cannot start a private test MySQL: {e:#}"),
    }
}

/// A private, attached Redis server for a test that stops or restarts it;
/// skips and panics like [`private_mysql`].
///
/// # Panics
///
/// When the server fails to start, or none can be had although
/// [`servers_required`].
#[track_caller]
pub fn private_redis() -> Option<RedisServer> {
    private_redis_with(RedisOptions::default())
}

/// Like [`private_redis`], with options (TLS, passwords, ACL users, a Unix
/// socket, replication).
///
/// # Panics
///
/// As [`private_redis`].
#[track_caller]
pub fn private_redis_with(options: RedisOptions) -> Option<RedisServer> {
    if !servers_required() && !RedisServer::available() {
        return skip("no redis-server program and no container engine");
    }
    match RedisServer::start_with(options) {
        Ok(server) => Some(server),
        Err(e) => panic!("cannot start a private test Redis: {e:#}"),
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Prints the skip line (past the test harness's output capture, so that it
/// is seen) and returns `None`; panics instead when servers are required.
#[track_caller]
fn skip<T>(reason: &str) -> Option<T> {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    assert!(
        !servers_required(),
        "{test}: {reason}, but {REQUIRE_SERVERS_ENV}=1 requires it"
    );
    // Written to the stderr handle directly: libtest captures only the
    // print macros.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {reason} (run under cargo xtask test)"
    );
    None
}
