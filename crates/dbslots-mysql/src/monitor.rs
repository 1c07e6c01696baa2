//! The monitor's own connection: outside any pool, one attempt, and a way
//! in when the server is full.

use std::time::Duration;

use mysql_async::Conn;

use crate::error::{Attempt, Error, Result, codes};
use crate::retry::Failure;
use crate::server_url::ServerUrl;

/// How long the monitor waits for its connection.
const MONITOR_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the connection an operator's tool looks at the server with.
///
/// It takes no slot (the monitor must get in when the pool is exhausted)
/// and makes one attempt: waiting is no use when the server is full.
///
/// # Errors
///
/// [`Error::MonitorRefused`] when the server refuses it for lack of
/// connections (1040, 1203, 1226): its message says how to get in anyway
/// (the connection kept for CONNECTION_ADMIN/SUPER accounts, MariaDB's
/// `extra_port`, another account, stopping workers, `KILL` by id).
/// [`Error::Connect`] for any other failure.
pub async fn connect_monitor(url: &str) -> Result<Conn> {
    connect_monitor_to(&ServerUrl::parse(url)?).await
}

/// [`connect_monitor`] for a parsed [`ServerUrl`] (TLS as its `ssl-mode`
/// says).
///
/// # Errors
///
/// As [`connect_monitor`].
pub async fn connect_monitor_to(server: &ServerUrl) -> Result<Conn> {
    let redacted = server.redacted().to_string();
    let via_socket = server.opts().socket().is_some();
    let failure = match tokio::time::timeout(MONITOR_CONNECT_TIMEOUT, server.connect()).await {
        Ok(Ok(conn)) => return Ok(conn),
        Ok(Err(e)) => Failure::from_driver(&e, via_socket),
        Err(_) => Failure::timed_out(MONITOR_CONNECT_TIMEOUT, via_socket),
    };
    match failure.code {
        Some(
            code @ (codes::TOO_MANY_CONNECTIONS
            | codes::TOO_MANY_USER_CONNECTIONS
            | codes::USER_LIMIT_REACHED),
        ) => Err(Error::MonitorRefused {
            url: redacted,
            code,
            message: failure.message,
        }),
        code => Err(Error::Connect {
            url: redacted,
            pool: None,
            slot: None,
            attempts: vec![Attempt {
                number: 1,
                code,
                message: failure.message,
                delay: None,
                advice: failure.advice.map(str::to_string),
            }],
        }),
    }
}
