//! The throwaway servers that `test` and `bench` run cargo against.

use std::process::Command;

use anyhow::{Context, Result};
use dbslots_testkit::{
    MYSQL_ADMIN_URL_ENV, MYSQL_URL_ENV, MysqlOptions, MysqlServer, REDIS_URL_ENV,
    REQUIRE_SERVERS_ENV, RedisServer, TMPDIR_ENV,
};
use tempfile::TempDir;

use crate::child::check_interrupted;

/// One MySQL and one Redis, attached to this process, plus a directory for
/// the temporary directories of the servers the tests start themselves.
/// Dropping it stops both servers and deletes the directory.
pub struct TestServers {
    // Fields drop in order: the servers first, then their tests' leftovers.
    mysql: Option<MysqlServer>,
    redis: Option<RedisServer>,
    tmp: TempDir,
}

impl TestServers {
    /// Starts both servers and says which.
    pub fn start() -> Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("dbslots-xtask-")
            .tempdir()
            .context("cannot create a temporary directory")?;
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
            .env(REQUIRE_SERVERS_ENV, "1")
            .env(TMPDIR_ENV, self.tmp.path());
    }

    /// Stops both servers and deletes the directory, reporting failures.
    pub fn stop(mut self) -> Result<()> {
        let mysql = self.mysql.take().map_or(Ok(()), MysqlServer::stop);
        let redis = self.redis.take().map_or(Ok(()), RedisServer::stop);
        mysql
            .context("cannot stop the test MySQL")
            .and(redis.context("cannot stop the test Redis"))
    }
}
