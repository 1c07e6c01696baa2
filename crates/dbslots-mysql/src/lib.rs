//! MySQL connections that exist only while their process holds a slot of a
//! [`dbslots_core::Pool`], and the tools to watch and clean up a server's
//! connections.
//!
//! A key design decision made in this crate is that **a connection never
//! outlives its slot, and never exists without one**: [`Connector::connect`]
//! takes a slot first and opens the connection second, and every way a
//! [`Connection`] ends (`close`, drop, a cancelled future, a failed re-open)
//! closes the socket before it releases the slot. As long as every process
//! connects through one pool whose capacity is below the server's limits,
//! the server never answers "Too many connections": the pool, not the
//! server, makes workers wait, in order and without polling. What the pool
//! cannot see (other clients, the server's own teardown of a closed
//! connection) is covered by the headroom [`ServerLimits::suggest_capacity`]
//! leaves. Connections are never kept open for reuse across slots:
//! `mysql_async::Pool` is not used.
//!
//! Refusals that do reach the client (1040, 1203, 1226) and network
//! failures are retried with exponential backoff and jitter, keeping the
//! slot; access denied (1045), unknown database (1049) and other server
//! errors fail at once. Errors list every attempt and say what to do; URLs
//! in them are redacted.
//!
//! For operators: [`ServerLimits`] reads the server's limits and usage,
//! [`Processlist`] groups its connections, [`kill_idle`] ends idle ones the
//! way pt-kill does, [`connect_monitor`] explains how to get in when the
//! server is full, and [`ServerCheck`] warns before a limit is reached, in
//! the convention of monitoring plugins (exit status 0 to 3).
//!
//! ```no_run
//! use dbslots_core::{Pool, PoolOptions};
//! use dbslots_mysql::{Connection, Connector};
//! use mysql_async::prelude::Queryable;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::open("/run/myapp/db-slots", PoolOptions::new().capacity(100))?;
//! let connector = Connector::new("mysql://app:secret@db:3306/app?prefer_socket=false", pool)?;
//! let mut conn = connector.connect().await?;
//! let n: Option<u64> = conn.query_first("SELECT COUNT(*) FROM jobs").await?;
//! Connection::close(conn).await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod check;
mod connector;
mod deadline;
mod error;
pub mod exposition;
mod limits;
mod monitor;
mod processlist;
mod retry;
mod server_source;
mod server_url;

pub use check::{AccountUsage, LimitSource, ServerCheck};
pub use connector::{Connection, Connector, ConnectorOptions, Liveness, connection_is_gone};
pub use error::{Attempt, Error, Result, codes};
pub use limits::{
    AccountLimit, CapacityBound, CapacitySuggestion, Fleet, MIN_RESERVE, ServerLimits,
};
pub use monitor::{connect_monitor, connect_monitor_to};
pub use mysql_async;
pub use processlist::{
    IdleAccounts, IdleKills, IdleRule, IdleVictim, KILL_IDLE_CALL_TIMEOUT, KillOutcome,
    MIN_MAX_IDLE, Process, ProcessGroup, Processlist, kill_idle, kill_idle_within,
};
pub use server_source::{SERVER_FRESH, ServerReading, ServerSnapshot, ServerSource};
pub use server_url::{ServerUrl, SslMode};
