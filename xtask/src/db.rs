//! `cargo xtask db up|down`: servers for manual use that outlive xtask.
//!
//! `up` starts a MySQL and a Redis detached from xtask and keeps what `down`
//! needs to stop them in `target/xtask/db.json`. Both are idempotent: `up`
//! with servers up only prints their URLs, `down` with none up says so.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use dbslots_testkit::{DetachedState, MysqlOptions, MysqlServer, RedisOptions, RedisServer};
use serde::{Deserialize, Serialize};

use crate::child::{self, check_interrupted};

/// The contents of `target/xtask/db.json`.
#[derive(Debug, Serialize, Deserialize)]
struct DbState {
    mysql: DetachedState,
    mysql_version: String,
    mysql_max_connections: Option<u32>,
    mysql_user_url: String,
    mysql_admin_url: String,
    redis: DetachedState,
    redis_url: String,
}

/// Dispatches `db up` and `db down`.
pub fn run(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("up") => up(parse_max_connections(&args[1..])?),
        Some("down") if args.len() == 1 => down(),
        _ => bail!("usage: cargo xtask db up [--max-connections N] | cargo xtask db down"),
    }
}

fn parse_max_connections(args: &[String]) -> Result<Option<u32>> {
    match args {
        [] => Ok(None),
        [flag, n] if flag == "--max-connections" => {
            Ok(Some(n.parse().with_context(|| {
                format!("--max-connections wants a number, not `{n}`")
            })?))
        }
        [flag] if flag.starts_with("--max-connections=") => {
            let n = &flag["--max-connections=".len()..];
            Ok(Some(n.parse().with_context(|| {
                format!("--max-connections wants a number, not `{n}`")
            })?))
        }
        _ => bail!("usage: cargo xtask db up [--max-connections N]"),
    }
}

fn state_path() -> PathBuf {
    crate::target_dir().join("xtask").join("db.json")
}

fn read_state() -> Result<Option<DbState>> {
    let path = state_path();
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map(Some).with_context(|| {
            format!(
                "{} is damaged: remove it and stop the servers by hand",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn up(max_connections: Option<u32>) -> Result<()> {
    child::install_interrupt_handler()?;
    if let Some(state) = read_state()? {
        if state.mysql.is_running() && state.redis.is_running() {
            println!("db: already up ({})", state_path().display());
            if max_connections.is_some() && max_connections != state.mysql_max_connections {
                println!(
                    "db: note: it runs with max_connections {}; run `cargo xtask db down` first to change it",
                    describe_limit(state.mysql_max_connections)
                );
            }
            print_urls(&state);
            return Ok(());
        }
        println!(
            "db: the servers in {} are gone; cleaning up and starting new ones",
            state_path().display()
        );
        stop_both(&state)?;
    }
    let mysql = MysqlServer::start(MysqlOptions {
        max_connections,
        attached: false,
        ..Default::default()
    })
    .context("cannot start MySQL")?;
    check_interrupted()?;
    let redis = RedisServer::start_with(RedisOptions {
        attached: false,
        ..Default::default()
    })
    .context("cannot start Redis")?;
    check_interrupted()?;
    let state = DbState {
        mysql_version: mysql.version().to_owned(),
        mysql_max_connections: max_connections,
        mysql_user_url: mysql.user_url(),
        mysql_admin_url: mysql.admin_url(),
        redis_url: redis.url(),
        mysql: mysql.detach(),
        redis: redis.detach(),
    };
    let path = state_path();
    let written = std::fs::create_dir_all(path.parent().expect("the state file is in a directory"))
        .and_then(|()| {
            std::fs::write(
                &path,
                serde_json::to_string_pretty(&state).expect("the state serializes"),
            )
        });
    if let Err(e) = written {
        stop_both(&state)?;
        return Err(e)
            .with_context(|| format!("cannot write {}; servers stopped again", path.display()));
    }
    println!(
        "db: up ({}); stop with `cargo xtask db down`",
        path.display()
    );
    print_urls(&state);
    Ok(())
}

fn down() -> Result<()> {
    let Some(state) = read_state()? else {
        println!("db: nothing to stop (no {})", state_path().display());
        return Ok(());
    };
    stop_both(&state)?;
    std::fs::remove_file(state_path())
        .with_context(|| format!("cannot remove {}", state_path().display()))?;
    println!(
        "db: stopped MySQL on port {} and Redis on port {}, data deleted",
        state.mysql.port(),
        state.redis.port()
    );
    Ok(())
}

fn stop_both(state: &DbState) -> Result<()> {
    let mysql = state.mysql.stop().context("cannot stop MySQL");
    let redis = state.redis.stop().context("cannot stop Redis");
    mysql.and(redis)
}

fn print_urls(state: &DbState) {
    println!(
        "MySQL {} (max_connections {})",
        state.mysql_version,
        describe_limit(state.mysql_max_connections)
    );
    println!("  user:  {}", state.mysql_user_url);
    println!("  admin: {}", state.mysql_admin_url);
    println!("Redis:   {}", state.redis_url);
}

fn describe_limit(limit: Option<u32>) -> String {
    limit.map_or_else(|| "default".to_owned(), |n| n.to_string())
}
