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
//!
//! On a Redis Cluster a call answered `MOVED` is sent once more, to the
//! node named (and every later call with it); `ASK` sends it once to the
//! migration's target. Either way a call is at most two bounded attempts,
//! as on one server.
//!
//! A call made for a caller with a deadline (an acquisition with a
//! timeout) is bounded by what is left of it as well, though never below
//! [`SHORTEST_CALL`], so that such a caller returns about when it asked
//! to whatever the network does.

use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use redis::{ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisError, RedisResult};

use super::cluster::{Cluster, Redirect, redirect, split_seeds};

use crate::addr::{RedisAddr, redact_redis};
use crate::error::{Error, Result};

/// The least time a call is given however close its caller's deadline:
/// shorter, it would fail on a healthy network between hosts.
pub(super) const SHORTEST_CALL: Duration = Duration::from_millis(100);

/// Makes connections to one server, or to the node of a cluster that
/// serves the pool ([`super::cluster`]).
pub(super) struct Connector {
    target: Target,
    timeout: Duration,
    connect_timeout: Duration,
}

enum Target {
    Server(redis::Client),
    Cluster(Cluster),
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
        let ca = match &addr.ca {
            Some(ca) => Some(std::fs::read(ca).map_err(|e| {
                bad(format!(
                    "cannot read the CA certificate ca={}: {e}; give the path of a readable PEM file",
                    ca.display()
                ))
            })?),
            None => None,
        };
        let cluster = ["redis+cluster://", "rediss+cluster://"]
            .iter()
            .find_map(|p| addr.url.strip_prefix(p).map(|rest| (p, rest)));
        let target = match cluster {
            None => Target::Server(client(&addr.url, ca, timeout).map_err(bad)?),
            Some((prefix, rest)) => {
                let scheme = prefix.trim_end_matches("+cluster://");
                let (userinfo, seeds, tail) = split_seeds(rest).map_err(bad)?;
                let url_of = move |node: &str| format!("{scheme}://{userinfo}{node}{tail}");
                // Every seed must make a client now: a typo fails at open.
                for seed in &seeds {
                    client(&url_of(seed), ca.clone(), timeout).map_err(bad)?;
                }
                Target::Cluster(Cluster::new(
                    seeds,
                    Box::new(move |node| client(&url_of(node), ca.clone(), timeout)),
                ))
            }
        };
        Ok(Connector {
            target,
            timeout,
            connect_timeout,
        })
    }

    /// The longest any single step of a call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The bound of one step of a call made for a caller whose deadline is
    /// `until`: the timeout, or what is left before `until` if less, but
    /// at least [`SHORTEST_CALL`].
    pub fn limit(&self, until: Option<Instant>) -> Duration {
        match until {
            None => self.timeout,
            Some(u) => u
                .saturating_duration_since(Instant::now())
                .max(SHORTEST_CALL)
                .min(self.timeout),
        }
    }

    /// A new connection (on a cluster, to the node serving the pool as far
    /// as known), made within `limit` at most, and whose reads and writes
    /// wait `limit` at most (until [`Connector::unbound`]); `limit` is
    /// [`Connector::timeout`] or less.
    pub fn connect_within(&self, limit: Duration) -> RedisResult<redis::Connection> {
        let within = self.connect_timeout.min(limit);
        let conn = match &self.target {
            Target::Server(client) => client.get_connection_with_timeout(within)?,
            Target::Cluster(cluster) => cluster.connect(within)?,
        };
        Self::bound(&conn, limit.min(self.timeout))?;
        Ok(conn)
    }

    /// Gives `conn`'s reads and writes the whole timeout again.
    pub fn unbound(&self, conn: &redis::Connection) -> RedisResult<()> {
        Self::bound(conn, self.timeout)
    }

    fn bound(conn: &redis::Connection, limit: Duration) -> RedisResult<()> {
        conn.set_read_timeout(Some(limit))?;
        conn.set_write_timeout(Some(limit))
    }

    fn bounded(&self, conn: redis::Connection) -> RedisResult<redis::Connection> {
        self.unbound(&conn)?;
        Ok(conn)
    }

    /// Runs `f` once on `node` after `ASKING` (a slot in migration), on a
    /// connection of its own. Twice at most: a script not yet loaded there
    /// is loaded by a command that uses up the `ASKING`.
    fn ask<T>(
        &self,
        node: &str,
        f: &impl Fn(&mut redis::Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let Target::Cluster(cluster) = &self.target else {
            return Err(RedisError::from((
                ErrorKind::Client,
                "a single server answered ASK",
            )));
        };
        let mut conn = self.bounded(cluster.connect_to(node, self.connect_timeout)?)?;
        let mut result = Err(RedisError::from((ErrorKind::Client, "not asked")));
        for _ in 0..2 {
            redis::cmd("ASKING").exec(&mut conn)?;
            result = f(&mut conn);
            match &result {
                Err(e) if redirect(e).is_some() => {}
                _ => break,
            }
        }
        result
    }

    fn moved(&self, node: &str) {
        if let Target::Cluster(cluster) = &self.target {
            cluster.moved(node);
        }
    }
}

/// A client for one server URL with the bounded socket settings.
fn client(
    url: &str,
    ca: Option<Vec<u8>>,
    timeout: Duration,
) -> std::result::Result<redis::Client, String> {
    let info: ConnectionInfo = url
        .into_connection_info()
        .map_err(|e| redact_redis(&e.to_string()))?;
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
    match ca {
        // rustls verifies the server against this CA only.
        Some(pem) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            },
        ),
        // rediss:// without ca= verifies against the system's roots.
        None => redis::Client::open(info),
    }
    .map_err(|e| redact_redis(&e.to_string()))
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
        self.call_until(connector, None, f)
    }

    /// [`Link::call`] for a caller whose deadline is `until`: each step
    /// waits at most [`Connector::limit`].
    pub fn call_until<T>(
        &self,
        connector: &Connector,
        until: Option<Instant>,
        f: impl Fn(&mut redis::Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Self::call_locked(&mut guard, connector, until, f)
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
        Some(Self::call_locked(&mut guard, connector, None, f))
    }

    fn call_locked<T>(
        guard: &mut MutexGuard<'_, Option<redis::Connection>>,
        connector: &Connector,
        until: Option<Instant>,
        f: impl Fn(&mut redis::Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        for attempt in 0..2 {
            let fresh = guard.is_none();
            let limit = connector.limit(until);
            let shortened = limit < connector.timeout();
            if fresh {
                **guard = Some(connector.connect_within(limit)?);
            } else if shortened {
                let conn = guard.as_ref().expect("checked above");
                if let Err(e) = Connector::bound(conn, limit) {
                    **guard = None;
                    return Err(e);
                }
            }
            let conn = guard.as_mut().expect("the connection was just made");
            let result = f(conn);
            // The next caller may have no deadline: the whole timeout back.
            if shortened
                && let Some(conn) = guard.as_ref()
                && connector.unbound(conn).is_err()
            {
                **guard = None;
            }
            match result {
                Ok(v) => return Ok(v),
                Err(e) => {
                    match redirect(&e) {
                        // The pool's slot is served elsewhere now (a
                        // failover, a reshard): go there, once.
                        Some(Redirect::Moved(node)) => {
                            connector.moved(&node);
                            **guard = None;
                            if attempt == 0 {
                                continue;
                            }
                            return Err(e);
                        }
                        // A slot in migration: ask its target, unless this
                        // call was already redirected (a call stays within
                        // two attempts' time).
                        Some(Redirect::Ask(node)) if attempt == 0 => {
                            return connector.ask(&node, &f);
                        }
                        Some(Redirect::Ask(_)) => return Err(e),
                        None => {}
                    }
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
