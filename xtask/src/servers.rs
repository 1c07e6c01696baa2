//! The throwaway servers that `test` and `bench` run cargo against.

use std::process::Command;

use anyhow::{Context, Result};
use dbslots_testkit::{
    ClusterOptions, MYSQL_ADMIN_URL_ENV, MYSQL_URL_ENV, MysqlOptions, MysqlServer,
    REDIS_CLUSTER_URL_ENV, REDIS_URL_ENV, REQUIRE_SERVERS_ENV, RedisCluster, RedisServer,
    TMPDIR_ENV,
};
use tempfile::TempDir;

use crate::child::check_interrupted;

/// Prefix of the scratch directories of xtask runs.
const SCRATCH_PREFIX: &str = "dbslots-xtask-";
/// The file in a scratch directory naming the xtask process that owns it.
const OWNER_FILE: &str = "owner.pid";

/// Creates the scratch directory of this run, under which every server of
/// the run (xtask's own and those the tests start) puts its temporary
/// directory, and points [`TMPDIR_ENV`] of this process at it. Deletes the
/// scratch directories of earlier runs that were killed (SIGKILL leaves
/// them behind).
///
/// Call before any other thread exists (it sets an environment variable).
pub fn scratch_dir() -> Result<TempDir> {
    sweep_stale_scratch_dirs();
    let tmp = tempfile::Builder::new()
        .prefix(SCRATCH_PREFIX)
        .tempdir()
        .context("cannot create a temporary directory")?;
    std::fs::write(tmp.path().join(OWNER_FILE), std::process::id().to_string())
        .context("cannot write the owner of the scratch directory")?;
    // SAFETY: called while xtask is single-threaded (see above).
    unsafe { std::env::set_var(TMPDIR_ENV, tmp.path()) };
    Ok(tmp)
}

fn sweep_stale_scratch_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(SCRATCH_PREFIX)
        {
            continue;
        }
        let owner_alive = std::fs::read_to_string(path.join(OWNER_FILE))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .is_some_and(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("xtask"))
            });
        if !owner_alive && std::fs::remove_dir_all(&path).is_ok() {
            eprintln!("xtask: removed {} left by a killed run", path.display());
        }
    }
}

/// One MySQL, one Redis and one Redis Cluster (3 masters), attached to
/// this process, living in the scratch
/// directory, which also receives the temporary directories of the servers
/// the tests start themselves. Dropping it stops both servers and deletes
/// the directory.
pub struct TestServers {
    // Fields drop in order: the servers first, then their tests' leftovers.
    mysql: Option<MysqlServer>,
    redis: Option<RedisServer>,
    cluster: Option<RedisCluster>,
    tmp: TempDir,
}

impl TestServers {
    /// Starts the servers in `tmp` (from [`scratch_dir`]) and says which.
    pub fn start(tmp: TempDir) -> Result<Self> {
        let mysql =
            MysqlServer::start(MysqlOptions::default()).context("cannot start the test MySQL")?;
        println!(
            "xtask: MySQL {} ({}) on 127.0.0.1:{}",
            mysql.version(),
            mysql.backend(),
            mysql.port()
        );
        let mut servers = Self {
            mysql: Some(mysql),
            redis: None,
            cluster: None,
            tmp,
        };
        check_interrupted()?;
        let redis = RedisServer::start().context("cannot start the test Redis")?;
        println!(
            "xtask: Redis {} ({}) on 127.0.0.1:{}",
            redis.version(),
            redis.backend(),
            redis.port()
        );
        servers.redis = Some(redis);
        check_interrupted()?;
        let cluster = RedisCluster::start(ClusterOptions::default())
            .context("cannot start the test Redis Cluster")?;
        println!("xtask: Redis Cluster {}", cluster.url());
        servers.cluster = Some(cluster);
        check_interrupted()?;
        Ok(servers)
    }

    /// Exports the environment contract of `dbslots-testkit` to `command`.
    pub fn export_to(&self, command: &mut Command) {
        let mysql = self.mysql.as_ref().expect("started in start");
        let redis = self.redis.as_ref().expect("started in start");
        command
            .env(MYSQL_URL_ENV, mysql.user_url())
            .env(MYSQL_ADMIN_URL_ENV, mysql.admin_url())
            .env(REDIS_URL_ENV, redis.url())
            .env(
                REDIS_CLUSTER_URL_ENV,
                self.cluster.as_ref().expect("started in start").url(),
            )
            .env(REQUIRE_SERVERS_ENV, "1")
            .env(TMPDIR_ENV, self.tmp.path());
    }

    /// Stops the servers and deletes the directory, reporting failures.
    pub fn stop(mut self) -> Result<()> {
        let mysql = self.mysql.take().map_or(Ok(()), MysqlServer::stop);
        let redis = self.redis.take().map_or(Ok(()), RedisServer::stop);
        let cluster = self.cluster.take().map_or(Ok(()), RedisCluster::stop);
        mysql
            .context("cannot stop the test MySQL")
            .and(redis.context("cannot stop the test Redis"))
            .and(cluster.context("cannot stop the test Redis Cluster"))
    }
}
