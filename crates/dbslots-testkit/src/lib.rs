//! Throwaway MySQL/MariaDB and Redis servers for the tests, benchmarks and
//! `xtask` of dbslots.
//!
//! A key design decision made in this crate is that **a server is a value**:
//! [`MysqlServer::start`] and [`RedisServer::start`] return only once the
//! server answers, on a free port of 127.0.0.1, in a fresh temporary
//! directory, and dropping the value stops the server and deletes the
//! directory. Nothing is shared with servers already running on the machine
//! (a system MariaDB on 3306 is never touched), and nothing is left behind:
//! servers run in their own process group, so a Ctrl-C reaches the test or
//! xtask process, which stops them in order; an *attached* server is also
//! killed by the kernel if its starter dies without running `Drop`.
//!
//! The crate is synchronous and has no database driver: it drives the
//! `mariadb`/`mysql` command-line client over the server's socket (or inside
//! the container) and speaks the few bytes of Redis it needs by hand.
//!
//! # Backends
//!
//! Where a container engine answers (`docker info` succeeds) servers are
//! containers (`mysql:8.4` and `redis:7` by default). Otherwise they are
//! local `mariadbd`/`mysqld` and `redis-server` processes; if a program is
//! missing and we are root on a machine with `apt-get`, its Debian package
//! is installed first (and said so on stderr). Otherwise starting fails with
//! a message saying what to install.
//!
//! # Accounts
//!
//! Every MySQL server has the database [`DATABASE`], the ordinary account
//! [`USER`] (privileges on that database only, so `max_connections`,
//! `max_user_connections` and per-account limits apply to it) and the
//! administrative account [`ADMIN_USER`] (all privileges with grant option,
//! so it gets in beyond `max_connections` and can create further accounts,
//! for example one `WITH MAX_USER_CONNECTIONS 5`).
//!
//! # Environment contract
//!
//! `cargo xtask test` starts one shared MySQL, one shared Redis and one shared
//! Redis Cluster (3 masters) and runs
//! `cargo test` with:
//!
//! | variable | meaning |
//! | --- | --- |
//! | [`DBSLOTS_TEST_MYSQL_URL`](MYSQL_URL_ENV) | URL of the ordinary account |
//! | [`DBSLOTS_TEST_MYSQL_ADMIN_URL`](MYSQL_ADMIN_URL_ENV) | URL of the administrative account |
//! | [`DBSLOTS_TEST_REDIS_URL`](REDIS_URL_ENV) | `redis://127.0.0.1:PORT/0` |
//! | [`DBSLOTS_TEST_REDIS_CLUSTER_URL`](REDIS_CLUSTER_URL_ENV) | `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/`, a 3-master [`RedisCluster`] |
//! | [`DBSLOTS_TEST_REQUIRE_SERVERS`](REQUIRE_SERVERS_ENV)`=1` | a missing server is a failure, not a skip |
//! | [`DBSLOTS_TEST_TMPDIR`](TMPDIR_ENV) | where servers put their temporary directories; xtask removes it at the end, so servers of a killed test leave nothing behind |
//!
//! Tests read them through [`shared_mysql`] and [`shared_redis`], and start
//! servers of their own with [`private_mysql`] and [`private_redis`]. Under a
//! bare `cargo test` these helpers print `SKIPPED <test>: ...` and return
//! `None` where no server can be had; under `DBSLOTS_TEST_REQUIRE_SERVERS=1`
//! they panic instead. Also read: [`MYSQL_IMAGE_ENV`] and [`REDIS_IMAGE_ENV`]
//! choose container images.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let server = dbslots_testkit::MysqlServer::start(dbslots_testkit::MysqlOptions {
//!     max_connections: Some(10),
//!     ..Default::default()
//! })?;
//! println!("connect to {}", server.user_url());
//! # Ok(())
//! # }
//! ```
//!
//! The crate targets Linux: attached servers rely on `PR_SET_PDEATHSIG` to
//! die with the process that started them, even when it is killed or keeps
//! a server in a `static` that is never dropped (then only the temporary
//! directory stays behind, which `cargo xtask test` deletes with its scratch
//! directory).

#![deny(missing_docs)]

mod detached;
mod docker;
mod env;
mod fixtures;
mod install;
pub mod memory;
mod mysql;
mod process;
mod proxy;
mod redis;
mod redis_cluster;
mod tls;

pub use detached::DetachedState;
pub use env::{
    MYSQL_ADMIN_URL_ENV, MYSQL_URL_ENV, REDIS_CLUSTER_URL_ENV, REDIS_URL_ENV, REQUIRE_SERVERS_ENV,
    SharedMysql, private_mysql, private_redis, private_redis_cluster, private_redis_with,
    servers_required, shared_mysql, shared_redis, shared_redis_cluster,
};
pub use fixtures::{ScratchDb, TEMP_PASSWORD, TempAccount, url_as, with_database};
pub use mysql::{
    ADMIN_PASSWORD, ADMIN_USER, DATABASE, DEFAULT_MYSQL_IMAGE, MYSQL_IMAGE_ENV, MysqlOptions,
    MysqlServer, PASSWORD, USER, make_certificates,
};
pub use process::TMPDIR_ENV;
pub use proxy::FreezableProxy;
pub use redis::{DEFAULT_REDIS_IMAGE, REDIS_IMAGE_ENV, RedisOptions, RedisServer};
pub use redis_cluster::{ClusterOptions, RedisCluster};
pub use tls::TlsFiles;

/// Where a server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A local process started from a program on this machine.
    Process,
    /// A container run by `docker`.
    Container,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Process => "local process",
            Backend::Container => "container",
        })
    }
}
