//! Connections to the Redis server, every one of them with bounded waits.
//!
//! redis-rs applies its connect timeout only while connecting; a connection
//! whose peer vanishes behind a black hole (no RST, bytes simply stop)
//! would then block in `read()` until the kernel gives up (~15 minutes).
//! So every connection made here gets read and write timeouts, and its
//! socket `TCP_USER_TIMEOUT` and keepalive probes, all no longer than the
//! call timeout the lease's safety margin allows. A connection whose call
//! failed or timed out is dropped, never reused: a late answer would
//! otherwise be read as the answer to the next call.

use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use redis::{ConnectionInfo, IntoConnectionInfo, RedisResult};

use crate::addr::{RedisAddr, redact_redis};
use crate::error::{Error, Result};

/// Makes connections to one server.
pub(super) struct Connector {
    client: redis::Client,
    timeout: Duration,
    connect_timeout: Duration,
}

impl Connector {
    /// A connector whose connections never wait longer than `timeout` for
    /// a read or write, and `connect_timeout` to be made.
    pub fn new(
        addr: &RedisAddr,
        display: &str,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Connector> {
        let bad = |reason: String| Error::InvalidAddress {
            address: display.to_string(),
            reason,
        };
        let info: ConnectionInfo = addr
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| bad(redact_redis(&e.to_string())))?;
        let keepalive = TcpKeepalive::new()
            .with_time(timeout.max(Duration::from_secs(1)))
            .with_interval(timeout.max(Duration::from_secs(1)))
            .with_retries(2);
        let tcp = TcpSettings::default()
            .set_nodelay(true)
            .set_user_timeout(timeout)
            .set_keepalive(keepalive);
        // No `CLIENT SETINFO` on connect: it costs a round trip, and redis-rs
        // reads its two replies one after the other, each with the whole
        // connect timeout, which would double the bound on a black hole.
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        let info = info.set_tcp_settings(tcp).set_redis_settings(settings);
        let client = match &addr.ca {
            // rustls verifies the server against this CA only.
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| {
                    bad(format!(
                        "cannot read the CA certificate ca={}: {e}; give the path of a readable PEM file",
                        ca.display()
                    ))
                })?;
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            // rediss:// without ca= verifies against the system's roots.
            None => redis::Client::open(info),
        }
        .map_err(|e| bad(redact_redis(&e.to_string())))?;
        Ok(Connector {
            client,
            timeout,
            connect_timeout,
        })
    }

    /// The longest any single step of a call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A new connection with read and write timeouts.
    pub fn connect(&self) -> RedisResult<redis::Connection> {
        let conn = self
            .client
            .get_connection_with_timeout(self.connect_timeout)?;
        conn.set_read_timeout(Some(self.timeout))?;
        conn.set_write_timeout(Some(self.timeout))?;
        Ok(conn)
    }
}

/// A connection used for one kind of call, reconnected on demand.
pub(super) struct Link {
    conn: Mutex<Option<redis::Connection>>,
}

impl Link {
    pub fn new() -> Link {
        Link {
            conn: Mutex::new(None),
        }
    }

    /// Runs `f` on the connection (made first if need be). A dropped
    /// connection is retried once on a new one; anything else fails at once.
    pub fn call<T>(
        &self,
        connector: &Connector,
        f: impl Fn(&mut redis::Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Self::call_locked(&mut guard, connector, f)
    }

    /// Like [`Link::call`], but `None` at once when another thread is using
    /// the connection (so a caller that must not wait never queues behind a
    /// call that is stuck until its timeout).
    pub fn try_call<T>(
        &self,
        connector: &Connector,
        f: impl Fn(&mut redis::Connection) -> RedisResult<T>,
    ) -> Option<RedisResult<T>> {
        let mut guard = match self.conn.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(Self::call_locked(&mut guard, connector, f))
    }

    fn call_locked<T>(
        guard: &mut MutexGuard<'_, Option<redis::Connection>>,
        connector: &Connector,
        f: impl Fn(&mut redis::Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        for attempt in 0..2 {
            let fresh = guard.is_none();
            if fresh {
                **guard = Some(connector.connect()?);
            }
            let conn = guard.as_mut().expect("the connection was just made");
            match f(conn) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let broken = e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_timeout()
                        || e.is_unrecoverable_error();
                    if broken {
                        **guard = None;
                    }
                    // Retry only a connection that had died while idle (the
                    // server restarted, an idle timeout): a timeout means the
                    // time for this call is used up.
                    if attempt == 0 && !fresh && broken && !e.is_timeout() {
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}
