//! The way to the server: one connection, holding a slot when a pool is
//! given, opened for a unit of work and closed after it.
//!
//! # Implementation Details
//!
//! The rest of the crate sees only [`Connector::connect`], a [`Connection`]
//! that derefs to [`mysql_async::Conn`], and [`Connection::close`] (or
//! [`Connection::close_quickly`] for one that may be dead). With a
//! pool, both are `dbslots-mysql`'s: a slot is taken before the connection
//! is opened and released only after its socket is closed, and refusals for
//! lack of connections (1040, 1203, 1226) are retried inside the slot.
//! Without a pool the connection is a plain `mysql_async::Conn`. Either way
//! one `connect` is one round of attempts; the processor decides about
//! further rounds (it knows its stop signal and its reconnect window).
//!
//! Every connection sends TCP keepalive probes after [`TCP_KEEPALIVE`]
//! without traffic (unless the URL sets `tcp_keepalive`), so one to a host
//! that rebooted fails at the first probe instead of waiting for an answer
//! forever, and a direct connect that gets no answer gives up after
//! [`CONNECT_TIMEOUT`] (the pool's connector has the same timeout of its
//! own). Neither bounds a statement: the processor does that (see its
//! module), and so does [`Queue`](crate::Queue) for its own operations.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use dbslots_core::Pool;
use mysql_async::Conn;

use crate::error::{Error, Result};

/// Silence on a connection after which the kernel starts sending keepalive
/// probes.
pub(crate) const TCP_KEEPALIVE: Duration = Duration::from_secs(10);

/// How long one direct connect (TCP, handshake, login) may take: the
/// default connect timeout of `dbslots-mysql`'s connector.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long closing a connection may take: sending `QUIT` to a server
/// that does not answer must not hold anything up.
pub(crate) const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Opens connections to one server, each holding a slot of the pool if
/// there is one.
#[derive(Debug)]
pub(crate) enum Connector {
    /// Through `dbslots-mysql`, holding a slot of its pool.
    Pooled(dbslots_mysql::Connector),
    /// Straight to the server.
    Direct {
        /// The server, with TLS as its `ssl-mode` says.
        server: dbslots_mysql::ServerUrl,
        /// The URL, password redacted.
        url: String,
    },
}

/// Why a connect failed, and whether another round may succeed.
#[derive(Debug)]
pub(crate) struct ConnectFailure {
    /// Every attempt and what to do, maybe on several lines: for errors.
    pub message: String,
    /// The gist on one line: for log lines, one per failure.
    pub brief: String,
    pub transient: bool,
}

impl ConnectFailure {
    fn of(e: &dbslots_mysql::Error) -> ConnectFailure {
        ConnectFailure {
            transient: is_transient_pooled(e),
            message: e.to_string(),
            brief: brief(e),
        }
    }
}

/// The gist of a failed connect on one line: the last attempt's code and
/// message (and how many attempts there were), or the error's first line.
fn brief(e: &dbslots_mysql::Error) -> String {
    let Some(last) = e.attempts().last() else {
        return one_line(&e.to_string());
    };
    let code = last
        .code
        .map(|c| format!("error {c}: "))
        .unwrap_or_default();
    let message = one_line(&last.message);
    match e.attempts().len() {
        1 => format!("{code}{message}"),
        n => format!("{n} attempts, the last: {code}{message}"),
    }
}

/// `text` on one line: line breaks (a server's message may have some)
/// become spaces.
pub(crate) fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Connector {
    pub fn new(url: &str, pool: Option<Pool>) -> Result<Connector> {
        let redacted = dbslots_core::redact(url);
        let server = dbslots_mysql::ServerUrl::parse(url)
            .map_err(|e| Error::InvalidUrl {
                url: redacted.clone(),
                reason: match e {
                    dbslots_mysql::Error::InvalidUrl { reason, .. } => reason,
                    other => other.to_string(),
                },
            })?
            .with_tcp_keepalive(TCP_KEEPALIVE);
        if server.opts().db_name().is_none_or(str::is_empty) {
            return Err(Error::InvalidUrl {
                url: redacted,
                reason: "it names no database".into(),
            });
        }
        // Started by `dbslots spawn`/`exec` holding a slot of this very
        // pool: use that slot, never wait for a second one (which, in a
        // full pool, would wait for this process's own slot).
        let inherited = dbslots_core::env::inherited_slot()
            .ok()
            .flatten()
            .zip(pool.as_ref())
            .is_some_and(|(held, pool)| &held.pool == pool.addr());
        Ok(match pool {
            Some(_) if inherited => Connector::Pooled(
                dbslots_mysql::Connector::from_env_server(
                    server,
                    dbslots_mysql::ConnectorOptions::new(),
                )
                .map_err(|e| Error::Connect {
                    url: redacted.clone(),
                    waited: std::time::Duration::ZERO,
                    message: e.to_string(),
                })?,
            ),
            Some(pool) => Connector::Pooled(dbslots_mysql::Connector::from_server(
                server,
                pool,
                dbslots_mysql::ConnectorOptions::new(),
            )),
            None => Connector::Direct {
                server,
                url: redacted,
            },
        })
    }

    /// The URL, password redacted.
    pub fn url(&self) -> &str {
        match self {
            Connector::Pooled(c) => c.url(),
            Connector::Direct { url, .. } => url,
        }
    }

    /// Opens a connection (with a pool: waits for a slot first).
    ///
    /// Cancellation-safe: dropping the future leaves neither a connection
    /// nor a slot behind.
    pub async fn connect(&self) -> Result<Connection, ConnectFailure> {
        match self {
            Connector::Pooled(c) => match c.connect().await {
                Ok(conn) => {
                    tracing::debug!(url = %c.url(), id = conn.id(), slot = conn.slot_index(), "connected");
                    Ok(Connection::Pooled(conn))
                }
                Err(e) => Err(ConnectFailure::of(&e)),
            },
            Connector::Direct { server, url } => {
                // A connect dropped by the timeout closes its socket (see
                // `ServerUrl::connect`).
                match tokio::time::timeout(CONNECT_TIMEOUT, server.connect_once()).await {
                    Ok(Ok(conn)) => {
                        tracing::debug!(url = %url, id = conn.id(), "connected");
                        Ok(Connection::Direct(DirectConn(Some(conn))))
                    }
                    Ok(Err(e)) => Err(ConnectFailure::of(&e)),
                    Err(_) => {
                        let message = format!(
                            "no answer from the server within {CONNECT_TIMEOUT:?} (a network problem, or the server is overloaded)"
                        );
                        Err(ConnectFailure {
                            transient: true,
                            brief: message.clone(),
                            message,
                        })
                    }
                }
            }
        }
    }
}

/// An open connection, holding its slot if it has one.
#[derive(Debug)]
pub(crate) enum Connection {
    /// Holds a slot; closes its socket before releasing it, also on drop.
    Pooled(dbslots_mysql::Connection),
    /// Straight to the server.
    Direct(DirectConn),
}

/// A connection without a slot; `Some` until `close` or `drop` take it.
#[derive(Debug)]
pub(crate) struct DirectConn(Option<Conn>);

const HOLDS_CONN: &str = "a direct Connection holds its Conn until close or drop take it";

impl Deref for Connection {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        match self {
            Connection::Pooled(c) => c,
            Connection::Direct(c) => c.0.as_ref().expect(HOLDS_CONN),
        }
    }
}

impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Conn {
        match self {
            Connection::Pooled(c) => c,
            Connection::Direct(c) => c.0.as_mut().expect(HOLDS_CONN),
        }
    }
}

impl Connection {
    /// Sends QUIT and closes the socket (then releases the slot). A failure
    /// to send QUIT (the server is gone) is only logged: the socket is
    /// closed either way.
    pub async fn close(self) {
        let result = match self {
            Connection::Pooled(c) => dbslots_mysql::Connection::close(c)
                .await
                .map_err(|e| e.to_string()),
            Connection::Direct(mut c) => match c.0.take() {
                Some(conn) => conn.disconnect().await.map_err(|e| e.to_string()),
                None => Ok(()),
            },
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "closing the connection failed; its socket is closed anyway");
        }
    }

    /// [`Connection::close`] given at most [`CLOSE_WITHIN`]: for a
    /// connection that may be dead, whose `QUIT` nobody may answer.
    pub async fn close_quickly(self) {
        let _ = tokio::time::timeout(CLOSE_WITHIN, self.close()).await;
    }
}

impl Drop for DirectConn {
    fn drop(&mut self) {
        // A pooled connection closes itself (socket before slot) on drop;
        // a direct one is closed here, on the runtime if there is one.
        let Some(conn) = self.0.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = conn.disconnect().await;
            });
        }
    }
}

/// Whether another round of connecting may help: a slot that did not come
/// in time, or refusals and network failures that outlasted the
/// connector's own retries; not bad credentials or an unknown database.
fn is_transient_pooled(e: &dbslots_mysql::Error) -> bool {
    // Limits, network failures and a server shutting down (1053) may pass;
    // TLS failures, 3159, access denied and the like need a change first.
    e.is_slot_timeout() || e.is_retryable() || e.code() == Some(1053)
}

/// Whether a failed statement means the connection is gone
/// ([`dbslots_mysql::connection_is_gone`], the workspace's one rule) or the
/// transaction was aborted in a way that a retry from the checkpoint fixes:
/// lock wait timeout (1205), deadlock (1213), an interrupted query (1317).
pub(crate) fn is_connection_problem(e: &mysql_async::Error) -> bool {
    dbslots_mysql::connection_is_gone(e)
        || matches!(e, mysql_async::Error::Server(s) if matches!(s.code, 1205 | 1213 | 1317))
}
