//! Redis Cluster: the one node that serves the pool, found by following
//! redirects.
//!
//! # Design decision
//!
//! Every key of a pool shares one hash tag, so the whole pool lives in one
//! hash slot, on one master, and every script runs there. The handle
//! therefore keeps its connections as on a single server and follows
//! `MOVED` and `ASK` itself, rather than using redis-rs's cluster client:
//! that client maps every slot (connections to every master, `CLUSTER
//! SLOTS` refreshes), retries inside one call with its own back-off
//! (beyond the call budget a lease allows a holder, see `lease.rs`), and
//! its synchronous connection has no pub/sub. Here a call stays at most two
//! attempts, each bounded exactly as on one server (`link.rs`):
//!
//! - `MOVED`: the slot is served elsewhere for good (a failover, a
//!   reshard); every link of the handle goes there from now on.
//! - `ASK`: the slot is being migrated and this key is already on the
//!   target; the call is repeated there once after `ASKING`, on a
//!   connection of its own, and the next call starts at the source again.
//!   While the pool's slot migrates, a script that names a key that does
//!   not exist (yet) is answered `TRYAGAIN`: acquisitions fail (a waiter
//!   keeps waiting), renewals (whose keys all exist) go on through `ASK`.
//!   `redis-cli --cluster reshard` moves one slot in milliseconds.
//! - A node that cannot be reached: the next connection tries the seeds in
//!   turn, whose answer (`MOVED`) names the slot's master again.
//!
//! Notifications need no routing: a `PUBLISH` reaches the subscribers of
//! every node of the cluster.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind};

/// Where a redirect sends a call.
pub(super) enum Redirect {
    /// The slot now lives on this node.
    Moved(String),
    /// This call once on this node, after `ASKING`.
    Ask(String),
}

/// The redirect a failed call was answered with, if any (also inside an
/// aborted `MULTI`, whose commands were each answered with it).
pub(super) fn redirect(e: &RedisError) -> Option<Redirect> {
    let of = |kind: Option<ServerErrorKind>, detail: Option<&str>| {
        let node = detail?.split_ascii_whitespace().nth(1)?.to_string();
        match kind? {
            ServerErrorKind::Moved => Some(Redirect::Moved(node)),
            ServerErrorKind::Ask => Some(Redirect::Ask(node)),
            _ => None,
        }
    };
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask)
        | ErrorKind::Server(ServerErrorKind::ExecAbort) => e
            .clone()
            .into_server_errors()?
            .iter()
            .find_map(|(_, s)| of(s.kind(), s.details())),
        _ => None,
    }
}

/// Makes a client for a node's `host:port` (the address's scheme,
/// credentials, TLS and socket settings around it).
pub(super) type ClientFor = Box<dyn Fn(&str) -> Result<redis::Client, String> + Send + Sync>;

/// The nodes of one cluster as the pool's handle knows them.
pub(super) struct Cluster {
    /// `host:port` of the nodes named in the address.
    seeds: Vec<String>,
    client_for: ClientFor,
    clients: Mutex<HashMap<String, redis::Client>>,
    /// The node that serves the pool's slot, as the last `MOVED` said.
    master: Mutex<Option<String>>,
    /// The seed to try first when the master is unknown.
    next_seed: AtomicUsize,
}

impl Cluster {
    pub fn new(seeds: Vec<String>, client_for: ClientFor) -> Cluster {
        Cluster {
            seeds,
            client_for,
            clients: Mutex::new(HashMap::new()),
            master: Mutex::new(None),
            next_seed: AtomicUsize::new(0),
        }
    }

    fn client(&self, node: &str) -> RedisResult<redis::Client> {
        let node = &self.endpoint(node);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(node) {
            return Ok(c.clone());
        }
        let client = (self.client_for)(node).map_err(|reason| {
            RedisError::from((
                ErrorKind::InvalidClientConfig,
                "cannot address a cluster node",
                reason,
            ))
        })?;
        clients.insert(node.to_string(), client.clone());
        Ok(client)
    }

    /// `node` as a redirect names it, made addressable: Redis 7 names a
    /// node whose host it does not know as `:PORT` (or `?:PORT`): that is
    /// the host of the node we spoke to, which is the first seed's network;
    /// an IPv6 host gets its brackets.
    fn endpoint(&self, node: &str) -> String {
        let Some((host, port)) = node.rsplit_once(':') else {
            return node.to_string();
        };
        let host = match host {
            "" | "?" => self
                .seeds
                .first()
                .and_then(|seed| seed.rsplit_once(':'))
                .map_or("127.0.0.1", |(h, _)| h),
            h => h,
        };
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }

    /// A connection to `node`, made within `timeout`.
    pub fn connect_to(&self, node: &str, timeout: Duration) -> RedisResult<redis::Connection> {
        self.client(node)?.get_connection_with_timeout(timeout)
    }

    /// A connection to the pool's master if known, else to the first seed
    /// that answers; all of it within `timeout`.
    pub fn connect(&self, timeout: Duration) -> RedisResult<redis::Connection> {
        let deadline = Instant::now() + timeout;
        let master = self
            .master
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let first = self.next_seed.load(Ordering::Relaxed);
        let seeds = (0..self.seeds.len()).map(|i| &self.seeds[(first + i) % self.seeds.len()]);
        let mut last = None;
        for node in master
            .iter()
            .chain(seeds.filter(|s| Some(*s) != master.as_ref()))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.connect_to(node, left) {
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    if Some(node) == master.as_ref() {
                        self.forget(node);
                    } else {
                        // Start with another seed next time.
                        self.next_seed.fetch_add(1, Ordering::Relaxed);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            RedisError::from((
                ErrorKind::Io,
                "no cluster node answered in time",
                format!("{timeout:?}"),
            ))
        }))
    }

    /// The pool's slot is served by `node` from now on.
    pub fn moved(&self, node: &str) {
        *self.master.lock().unwrap_or_else(|p| p.into_inner()) = Some(node.to_string());
    }

    fn forget(&self, node: &str) {
        let mut master = self.master.lock().unwrap_or_else(|p| p.into_inner());
        if master.as_deref() == Some(node) {
            *master = None;
        }
    }
}

/// Splits `[user[:password]@]h1:p1,h2:p2[/db][?query]` (what follows
/// `redis+cluster://`) into the credentials (with their `@`), the seeds,
/// and the rest of the URL every node shares.
pub(super) fn split_seeds(after_scheme: &str) -> Result<(String, Vec<String>, String), String> {
    // The credentials run to the last `@` (a password may hold anything).
    let (userinfo, rest) = match after_scheme.rfind('@') {
        Some(at) => after_scheme.split_at(at + 1),
        None => ("", after_scheme),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (hosts, tail) = rest.split_at(end);
    let path = tail.split('?').next().unwrap_or_default();
    if !matches!(path, "" | "/" | "/0") {
        return Err(format!(
            "a Redis Cluster has only database 0, not {:?}; write redis+cluster://HOST:PORT,HOST:PORT/?pool=NAME",
            path.trim_start_matches('/')
        ));
    }
    let seeds: Vec<String> = hosts
        .split(',')
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .map(|h| {
            if h.rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                h.to_string()
            } else {
                format!("{h}:6379")
            }
        })
        .collect();
    if seeds.is_empty() {
        return Err(
            "it names no cluster node; write redis+cluster://HOST:PORT[,HOST:PORT...]/?pool=NAME"
                .into(),
        );
    }
    Ok((userinfo.to_string(), seeds, tail.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_endpoints_without_a_host_or_with_ipv6_are_addressable() {
        let cluster = Cluster::new(
            vec!["10.0.0.5:7000".into()],
            Box::new(|_| Err("unused".into())),
        );
        assert_eq!(cluster.endpoint("10.0.0.6:7001"), "10.0.0.6:7001");
        assert_eq!(cluster.endpoint(":7002"), "10.0.0.5:7002");
        assert_eq!(cluster.endpoint("?:7002"), "10.0.0.5:7002");
        assert_eq!(cluster.endpoint("::1:7003"), "[::1]:7003");
        assert_eq!(cluster.endpoint("[::1]:7003"), "[::1]:7003");
    }

    #[test]
    fn seeds_credentials_and_the_shared_rest_are_split() {
        let (user, seeds, rest) = split_seeds(":p@w/d@a:7000, b:7001,c/?x=1").unwrap();
        assert_eq!(user, ":p@w/d@");
        assert_eq!(seeds, ["a:7000", "b:7001", "c:6379"]);
        assert_eq!(rest, "/?x=1");
        assert_eq!(split_seeds("a:1").unwrap().2, "");
        assert!(split_seeds("a:1/2").unwrap_err().contains("database 0"));
        assert!(split_seeds("/0").unwrap_err().contains("no cluster node"));
    }
}
