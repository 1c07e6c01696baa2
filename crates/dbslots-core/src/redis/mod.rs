//! The Redis backend: one pool shared by processes on many hosts.
//!
//! # Implementation Details
//!
//! A kernel lock only sees one host, so here a slot is a **lease**: slot `i`
//! is held while the sorted set `leases` maps `i` to an expiry in the future
//! (Redis server time, so client clocks do not matter). Holders renew their
//! leases from a per-handle renewer thread on its own connection; every
//! acquisition first trims expired leases, so a holder that dies or is cut
//! off loses its slot when its lease runs out, and no later.
//!
//! **The holder knows first** ([`lease`]): it counts its slot lost one
//! safety margin before the server can hand it on, from its own clock and
//! the last renewal the server acknowledged, without asking the network.
//! Every call has a timeout shorter than that margin ([`link`]), and
//! [`crate::Slot::check`] never queues behind a stuck call.
//!
//! **State the server may have lost quarantines the pool** ([`scripts`]):
//! missing keys, a changed `run_id`, a lease gone before its time. Open
//! handles restore the pool's `meta` from what they know (capacity, the
//! longest lease any client uses), so they recover by themselves. A
//! handle opened only after every key was lost knows no lease but its
//! own, and quarantines a pool it re-creates for that: the clients of a
//! pool are meant to share one lease time (one address).
//!
//! **Replication is asynchronous**: a failover to a replica may lose the
//! last writes (acquisitions, renewals) of up to the replication lag. The
//! new master has another `run_id`, which quarantines the pool for the
//! longest lease, so the holders of lost acquisitions have given their
//! slots up before anyone is admitted again; what remains is a window of
//! the replication lag in which a renewal the old master acknowledged is
//! unknown to the new one. `&wait_replicas=N` closes it: acquisitions and
//! renewals then count only once `N` replicas acknowledged them (`WAIT`).
//!
//! **Redis Cluster** ([`cluster`]): the pool's keys share one hash tag, so
//! the pool lives on one master; calls follow `MOVED` and `ASK` to it,
//! and `PUBLISH` reaches subscribers on every node. A manual failover
//! (`CLUSTER FAILOVER`) loses no write, and the new master's `run_id`
//! quarantines the pool: no over-admission. A failover that loses writes
//! has the window above, bounded in a cluster by the old master refusing
//! writes once cut off from the majority (`cluster-node-timeout`), before
//! its replica can be promoted.
//!
//! Waiters are served by ticket ([`waiter`]): a waiter may take a slot only
//! while its rank in `queue` is below the number of free slots. The script
//! that frees slots publishes the tokens now allowed in; a waiter sleeps on
//! the channel, re-subscribes after a connection error, and renews its
//! place every 200 ms (a dead waiter's place lapses within 1.5 s).
//!
//! Observers of the pool (`dbslots gate`) post reports that clients on
//! every host read ([`reports`]).
//!
//! Uncontended, an acquisition is one round trip (`EVALSHA`) and a release
//! another.

mod cluster;
mod lease;
mod link;
mod reports;
mod scripts;
mod waiter;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use lease::{Lease, Timing};
use link::{Connector, Link};
use scripts::{Keys, Scripts};

use crate::addr::{RedisAddr, redact_redis};
use crate::error::{Error, Result};
use crate::stats::{Holder, PoolStats, WaitHistogram, Waiter};

const WAIT_BOUNDS_MS: [u64; 10] = [
    0, 1, 10, 100, 1_000, 5_000, 30_000, 120_000, 600_000, 3_600_000,
];

struct Shared {
    connector: Connector,
    /// Acquisitions, releases, stats.
    commands: Link,
    /// [`crate::Slot::check`]'s questions (never waited for).
    checks: Link,
    /// Observers' reports ([`reports`]).
    reports: Link,
    keys: Keys,
    scripts: Scripts,
    name: String,
    timing: Timing,
    wait_replicas: u32,
    info: String,
    /// The capacity as last read: restores a lost pool.
    capacity: AtomicU32,
    /// The longest lease (ms) any client of the pool uses, as last read.
    max_lease_ms: AtomicU64,
    leases: Mutex<HashMap<u32, Arc<Lease>>>,
    renewer: Mutex<bool>,
    wake_renewer: Condvar,
}

/// An open Redis pool (one per `Pool` handle).
pub(crate) struct RedisPool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPool")
            .field("pool", &self.shared.name)
            .finish_non_exhaustive()
    }
}

fn token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom(&mut bytes).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = (t ^ ((std::process::id() as u128) << 64)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

impl Shared {
    fn backend_error(&self, what: &str, e: redis::RedisError) -> Error {
        if e.code() == Some("WRONGTYPE") {
            // Said in our words: the reply ends in "on @user_script:N.",
            // which the redaction takes for the end of a password.
            let keys = self.keys.meta.trim_end_matches("meta");
            return Error::Backend {
                pool: self.name.clone(),
                message: format!(
                    "{what}: the server answered WRONGTYPE: a key of the pool holds another type of value than dbslots keeps there, so something other than dbslots wrote it; find it among {keys}* (redis-cli TYPE) and delete it: dbslots rebuilds what it needs, and admits nobody for a lease time where holders may have been lost"
                ),
            };
        }
        let detail = redact_redis(&e.to_string());
        let hint = if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() {
            "; check that the Redis server is running and reachable, then retry"
        } else {
            ""
        };
        Error::Backend {
            pool: self.name.clone(),
            message: format!("{what}: {detail}{hint}"),
        }
    }

    /// Runs `f` on the command connection.
    fn command<T>(
        &self,
        what: &str,
        f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        self.command_until(what, None, f)
    }

    /// [`Shared::command`] for a caller whose deadline is `until`
    /// ([`link::Connector::limit`]).
    fn command_until<T>(
        &self,
        what: &str,
        until: Option<Instant>,
        f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        self.commands
            .call_until(&self.connector, until, f)
            .map_err(|e| self.backend_error(what, e))
    }

    fn lease_ms(&self) -> u64 {
        self.timing.lease.as_millis() as u64
    }

    /// Remembers what the server said about the pool.
    fn note(&self, capacity: u32, max_lease_ms: u64) {
        if capacity > 0 {
            self.capacity.store(capacity, Ordering::Relaxed);
        }
        self.max_lease_ms.fetch_max(max_lease_ms, Ordering::Relaxed);
    }

    fn max_known(&self) -> u64 {
        self.max_lease_ms
            .load(Ordering::Relaxed)
            .max(self.lease_ms())
    }

    /// `WAIT`s for the configured replicas; the number that acknowledged.
    fn acknowledge(&self, c: &mut redis::Connection) -> redis::RedisResult<u32> {
        if self.wait_replicas == 0 {
            return Ok(0);
        }
        // Half the read timeout, so WAIT answers before the socket gives up.
        redis::cmd("WAIT")
            .arg(self.wait_replicas)
            .arg((self.connector.timeout().as_millis() as u64 / 2).max(1))
            .query(c)
    }

    fn unacknowledged(&self, what: &str, acked: u32) -> Error {
        Error::Backend {
            pool: self.name.clone(),
            message: format!(
                "{what}: only {acked} of the {} replicas asked for (wait_replicas) acknowledged it within {:?}; check the replicas and their lag",
                self.wait_replicas,
                self.connector.timeout() / 2
            ),
        }
    }

    /// One run of the acquire script: the slot taken, or -1.
    ///
    /// `maybe_owned`: an earlier call with this token failed, so it may
    /// have taken a slot whose reply was lost; the script then looks for
    /// it (a look over every holder, so only then). A call the link runs
    /// again on a new connection looks too. `until`: the caller's deadline.
    fn acquire_once(
        &self,
        token: &str,
        try_only: bool,
        maybe_owned: bool,
        until: Option<Instant>,
    ) -> Result<i64> {
        let k = &self.keys;
        let runs = AtomicU32::new(0);
        let (r, acked): (Vec<i64>, u32) = self.command_until("acquiring a slot", until, |c| {
            let again = runs.fetch_add(1, Ordering::Relaxed) > 0 || maybe_owned;
            let r: Vec<i64> = self
                .scripts
                .acquire
                .key(&k.meta)
                .key(&k.leases)
                .key(&k.owners)
                .key(&k.queue)
                .key(&k.qexp)
                .key(&k.qinfo)
                .key(&k.tickets)
                .key(&k.stats)
                .arg(token)
                .arg(self.lease_ms())
                .arg(waiter::PLACE_TTL.as_millis() as u64)
                .arg(if try_only { "1" } else { "0" })
                .arg(&self.info)
                .arg(&k.channel)
                .arg(self.capacity.load(Ordering::Relaxed))
                .arg(self.max_known())
                .arg(if again { "1" } else { "0" })
                .invoke(c)?;
            let acked = if r.first().is_some_and(|s| *s >= 0) {
                self.acknowledge(c)?
            } else {
                0
            };
            Ok((r, acked))
        })?;
        let &[slot, _now, cap, maxl, _admit_after] = r.as_slice() else {
            return Err(Error::Backend {
                pool: self.name.clone(),
                message: format!("unexpected answer {r:?} from the acquire script"),
            });
        };
        if slot == -2 {
            return Err(Error::NotFound {
                pool: self.name.clone(),
            });
        }
        if !(1..=i64::from(crate::file::MAX_CAPACITY)).contains(&cap) {
            // Changed behind the pool's back: nothing is taken on it. A
            // waiter gives up as on a server that does not answer.
            if slot >= 0 {
                self.release_token(slot as u32, token);
            }
            return Err(self.unusable_capacity(&cap.to_string()));
        }
        self.note(cap as u32, maxl.max(0) as u64);
        if slot >= 0 && acked < self.wait_replicas {
            self.release_token(slot as u32, token);
            return Err(self.unacknowledged("acquiring a slot", acked));
        }
        Ok(slot)
    }

    /// Takes `token` out of the queue (and gives back a slot it may hold);
    /// `until`: the caller's deadline. A failure is left to the place's
    /// expiry ([`waiter::PLACE_TTL`]) and the lease's.
    fn leave(&self, token: &str, timed_out: bool, until: Option<Instant>) {
        let k = &self.keys;
        let _ = self.command_until("leaving the queue", until, |c| {
            self.scripts
                .leave
                .key(&k.queue)
                .key(&k.qexp)
                .key(&k.qinfo)
                .key(&k.stats)
                .key(&k.meta)
                .key(&k.leases)
                .key(&k.owners)
                .arg(token)
                .arg(if timed_out { "1" } else { "0" })
                .arg(&k.channel)
                .invoke::<i64>(c)
        });
    }

    /// One renewal of `lease` on `link`: `Ok(true)` renewed, `Ok(false)`
    /// the server no longer has it.
    /// `None` when `patient` is false and the link is busy.
    fn renew(
        &self,
        link: &Link,
        patient: bool,
        slot: u32,
        lease: &Lease,
    ) -> Option<redis::RedisResult<bool>> {
        let k = &self.keys;
        // No release of this lease may overtake the renewal (see `Lease::turn`).
        let _turn = lease.turn(patient)?;
        let sent = Instant::now();
        let live = lease.server_must_have_it(sent);
        let call = |c: &mut redis::Connection| {
            let r: (i64, u32, u64) = self
                .scripts
                .renew
                .key(&k.meta)
                .key(&k.leases)
                .key(&k.owners)
                .key(&k.stats)
                .arg(slot)
                .arg(&lease.token)
                .arg(self.lease_ms())
                .arg(if live { "1" } else { "0" })
                .arg(self.capacity.load(Ordering::Relaxed))
                .arg(self.max_known())
                .invoke(c)?;
            let acked = if r.0 == 1 { self.acknowledge(c)? } else { 0 };
            Ok((r, acked))
        };
        let answer = if patient {
            link.call(&self.connector, call)
        } else {
            link.try_call(&self.connector, call)?
        };
        Some(answer.map(|((renewed, cap, maxl), acked)| {
            self.note(cap, maxl);
            if renewed != 1 {
                if lease.mark_gone(if live {
                    "the server lost it before its time (a restart, failover or eviction); the pool is quarantined"
                } else {
                    "the server no longer has it"
                }) {
                    tracing::error!(pool = %self.name, slot, "slot lease lost: the server no longer has it");
                }
                return false;
            }
            if acked < self.wait_replicas {
                tracing::warn!(pool = %self.name, slot, acked, wanted = self.wait_replicas, "renewal not acknowledged by enough replicas; it does not count");
                return true;
            }
            lease.renewed(sent);
            true
        }))
    }

    fn release_token(&self, slot: u32, token: &str) -> bool {
        let k = &self.keys;
        let released = self.command("releasing a slot", |c| {
            self.scripts
                .release
                .key(&k.meta)
                .key(&k.leases)
                .key(&k.owners)
                .key(&k.queue)
                .arg(slot)
                .arg(token)
                .arg(&k.channel)
                .invoke::<i64>(c)
        });
        match released {
            Ok(1) => true,
            Ok(_) => {
                tracing::warn!(pool = %self.name, slot, "released a slot whose lease had already been lost");
                false
            }
            Err(e) => {
                tracing::error!(pool = %self.name, slot, error = %e, "cannot release; the lease will expire");
                false
            }
        }
    }

    fn held(&self) -> Vec<(u32, Arc<Lease>)> {
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(s, l)| (*s, Arc::clone(l)))
            .collect()
    }
}

/// The renewer thread: renews every held lease on its own connection, so
/// it never waits for another call of the handle, and no call of the
/// handle ever waits for it.
fn renewer(weak: Weak<Shared>, timing: Timing) {
    let link = Link::new();
    let mut failing = false;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        {
            // After a failure, retry sooner: the local deadline is near.
            let period = if failing {
                timing.renew_every / 3
            } else {
                timing.renew_every
            };
            let running = shared.renewer.lock().unwrap_or_else(|p| p.into_inner());
            let (running, _) = shared
                .wake_renewer
                .wait_timeout(running, period)
                .unwrap_or_else(|p| p.into_inner());
            if !*running {
                return;
            }
        }
        failing = false;
        for (slot, lease) in shared.held() {
            if lease.lost().is_some() {
                continue;
            }
            match shared.renew(&link, true, slot, &lease) {
                Some(Ok(_)) | None => {}
                Some(Err(e)) => {
                    failing = true;
                    tracing::warn!(pool = %shared.name, slot, error = %redact_redis(&e.to_string()), "lease renewal failed; retrying");
                }
            }
        }
    }
}

impl RedisPool {
    pub(crate) fn open(
        addr: &RedisAddr,
        display: &str,
        capacity: Option<u32>,
    ) -> Result<RedisPool> {
        if let Some(c) = capacity {
            crate::file::check_capacity(c as u64)?;
        }
        let timing = Timing::new(addr.lease);
        let connector = Connector::new(addr, display, timing.call_timeout, timing.connect_timeout)?;
        let shared = Arc::new(Shared {
            connector,
            commands: Link::new(),
            checks: Link::new(),
            reports: Link::new(),
            keys: Keys::new(&addr.pool),
            scripts: Scripts::new(),
            name: display.to_string(),
            timing,
            wait_replicas: addr.wait_replicas,
            info: format!("{} {}", crate::env::host_name(), std::process::id()),
            capacity: AtomicU32::new(0),
            max_lease_ms: AtomicU64::new(0),
            leases: Mutex::new(HashMap::new()),
            renewer: Mutex::new(false),
            wake_renewer: Condvar::new(),
        });
        // A timeout here may be a hiccup under load: two more tries.
        let read = || {
            shared.command("reading the pool", |c| {
                redis::cmd("HMGET")
                    .arg(&shared.keys.meta)
                    .arg("capacity")
                    .arg("max_lease")
                    .query::<(Option<String>, Option<String>)>(c)
            })
        };
        let (recorded, max_lease) = read()
            .or_else(|_| {
                std::thread::sleep(shared.timing.call_timeout);
                read()
            })
            .or_else(|_| {
                std::thread::sleep(shared.timing.call_timeout);
                read()
            })?;
        let recorded = recorded
            .map(|text| shared.recorded_capacity(&text))
            .transpose()?;
        // The scripts take a longest lease that is no number as none.
        let max_lease = max_lease.and_then(|text| text.parse::<u64>().ok());
        let recorded = match (recorded, capacity) {
            (Some(rec), Some(req)) if rec != req => {
                return Err(Error::CapacityMismatch {
                    pool: display.to_string(),
                    recorded: rec,
                    requested: req,
                });
            }
            (Some(rec), _) => rec,
            (None, None) => {
                return Err(Error::NotFound {
                    pool: display.to_string(),
                });
            }
            (None, Some(req)) => shared.create(req)?,
        };
        shared.note(recorded, max_lease.unwrap_or(0));
        Ok(RedisPool { shared })
    }

    pub(crate) fn name(&self) -> &str {
        &self.shared.name
    }

    pub(crate) fn capacity(&self) -> u32 {
        self.shared.capacity.load(Ordering::Relaxed)
    }

    /// How long before the server could expire a lease this handle counts
    /// it lost.
    pub(crate) fn safety_margin(&self) -> Duration {
        self.shared.timing.margin
    }

    fn start_renewer(&self) {
        let mut running = self
            .shared
            .renewer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !*running {
            *running = true;
            let weak = Arc::downgrade(&self.shared);
            let timing = self.shared.timing;
            let spawned = std::thread::Builder::new()
                .name("dbslots-lease-renewer".into())
                .spawn(move || {
                    crate::file::cancel::block_process_signals();
                    renewer(weak, timing)
                });
            if let Err(e) = spawned {
                *running = false;
                tracing::error!(error = %e, "cannot start the lease renewer; leases will expire");
            }
        }
    }

    fn hold(&self, slot: i64, token: String, sent: Instant) -> Result<u32> {
        let slot = u32::try_from(slot).map_err(|_| Error::Backend {
            pool: self.shared.name.clone(),
            message: format!("the server handed out an impossible slot {slot}"),
        })?;
        self.shared
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(slot, Arc::new(Lease::new(token, sent, &self.shared.timing)));
        self.start_renewer();
        Ok(slot)
    }

    pub(crate) fn try_acquire(&self) -> Result<Option<u32>> {
        let token = token();
        let sent = Instant::now();
        let slot = match self.shared.acquire_once(&token, true, false, None) {
            Ok(slot) => slot,
            Err(e) => {
                // The call may have taken a slot whose reply was lost:
                // give it back (best effort) rather than leave it held for
                // a lease.
                if matches!(e, Error::Backend { .. }) {
                    self.shared.leave(&token, false, None);
                }
                return Err(e);
            }
        };
        if slot < 0 {
            return Ok(None);
        }
        self.hold(slot, token, sent).map(Some)
    }

    pub(crate) fn release(&self, slot: u32) {
        let lease = self
            .shared
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&slot);
        if let Some(lease) = lease {
            // The renewer may be renewing it right now, on its own
            // connection: let that renewal land first.
            lease.released();
            self.shared.release_token(slot, &lease.token);
        }
    }

    fn lease_of(&self, slot: u32) -> Option<Arc<Lease>> {
        self.shared
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&slot)
            .cloned()
    }

    fn lost_error(&self, slot: u32, why: &str) -> Error {
        Error::SlotLost {
            pool: self.shared.name.clone(),
            slot,
            reason: format!("its lease ({:?}) is lost: {why}", self.shared.timing.lease),
        }
    }

    /// Whether the lease behind `slot` is lost. Asks the server too when
    /// the check connection is free (one round trip, which also renews the
    /// lease: only the server knows whether it lost state); never waits
    /// longer than the call timeouts allow, and never for another call.
    pub(crate) fn check(&self, slot: u32) -> Result<()> {
        let Some(lease) = self.lease_of(slot) else {
            return Ok(());
        };
        if let Some(why) = lease.lost() {
            return Err(self.lost_error(slot, why));
        }
        if let Some(Err(e)) = self.shared.renew(&self.shared.checks, false, slot, &lease) {
            tracing::debug!(pool = %self.shared.name, slot, error = %redact_redis(&e.to_string()), "cannot ask the server about a lease; trusting its local deadline");
        }
        match lease.lost() {
            Some(why) => Err(self.lost_error(slot, why)),
            None => Ok(()),
        }
    }

    /// Waits up to `timeout` for the lease behind `slot` to be lost (never
    /// asks the network); true when it is.
    pub(crate) fn wait_lost(&self, slot: u32, timeout: Duration) -> bool {
        match self.lease_of(slot) {
            Some(lease) => lease.wait_lost(timeout),
            None => {
                std::thread::sleep(timeout);
                false
            }
        }
    }

    pub(crate) fn set_holder_pid(&self, slot: u32, pid: u32) {
        let Some(lease) = self.lease_of(slot) else {
            return;
        };
        let k = &self.shared.keys;
        let _ = self.shared.command("recording the holder", |c| {
            self.shared
                .scripts
                .set_pid
                .key(&k.owners)
                .arg(slot)
                .arg(&lease.token)
                .arg(pid)
                .invoke::<i64>(c)
        });
    }

    pub(crate) fn stats(&self) -> Result<PoolStats> {
        let k = &self.shared.keys;
        type Snapshot = (
            Option<String>,
            Vec<(String, f64)>,
            HashMap<String, String>,
            Vec<String>,
            HashMap<String, String>,
            HashMap<String, u64>,
            Vec<String>,
        );
        let (cap, leases, owners, queue, qinfo, counters, time): Snapshot =
            self.shared.command("reading pool stats", |c| {
                self.shared
                    .scripts
                    .stats
                    .key(&k.meta)
                    .key(&k.leases)
                    .key(&k.owners)
                    .key(&k.queue)
                    .key(&k.qinfo)
                    .key(&k.stats)
                    .invoke(c)
            })?;
        // A pool whose state the server lost is shown with the capacity
        // this handle knows; the next acquisition restores it.
        let capacity = match cap {
            Some(text) => {
                let c = self.shared.recorded_capacity(&text)?;
                self.shared.capacity.store(c, Ordering::Relaxed);
                c
            }
            None => match self.capacity() {
                0 => {
                    return Err(Error::NotFound {
                        pool: self.shared.name.clone(),
                    });
                }
                c => c,
            },
        };
        // TIME is {seconds, microseconds}: a lease expires to the
        // millisecond, not at the next whole second.
        let part = |i: usize| time.get(i).and_then(|s| s.parse::<u64>().ok());
        let now_ms = part(0).map_or(0, |s| s * 1000 + part(1).unwrap_or(0) / 1000);
        let mut holders: Vec<Holder> = leases
            .iter()
            .filter(|(_, exp)| *exp as u64 > now_ms)
            .filter_map(|(slot, _)| {
                let slot: u32 = slot.parse().ok()?;
                let owner = owners.get(&slot.to_string());
                let parts: Vec<&str> = owner.map(|o| o.split(' ').collect()).unwrap_or_default();
                Some(Holder {
                    slot,
                    host: parts.get(1).map(|h| h.to_string()),
                    pid: parts.get(2).and_then(|p| p.parse().ok()),
                    since_unix_ms: parts.get(3).and_then(|p| p.parse().ok()),
                })
            })
            .collect();
        holders.sort_by_key(|h| h.slot);
        let waiters = queue
            .iter()
            .map(|t| {
                let parts: Vec<&str> = qinfo
                    .get(t)
                    .map(|o| o.split(' ').collect())
                    .unwrap_or_default();
                Waiter {
                    host: parts.first().map(|h| h.to_string()),
                    pid: parts.get(1).and_then(|p| p.parse().ok()),
                    since_unix_ms: parts.get(2).and_then(|p| p.parse().ok()),
                }
            })
            .collect::<Vec<_>>();
        let get = |name: &str| counters.get(name).copied().unwrap_or(0);
        let acquisitions = get("acquisitions");
        let mut counts: Vec<u64> = (0..=WAIT_BOUNDS_MS.len())
            .map(|i| get(&format!("b{i}")))
            .collect();
        counts[0] += acquisitions.saturating_sub(get("waited"));
        Ok(PoolStats {
            pool: self.shared.name.clone(),
            backend: "redis".into(),
            capacity,
            active: holders.len() as u32,
            waiting: waiters.len() as u32,
            peak: get("peak"),
            acquisitions,
            timeouts: get("timeouts"),
            holders,
            waiters,
            wait_histogram: WaitHistogram {
                bounds_seconds: WAIT_BOUNDS_MS.iter().map(|ms| *ms as f64 / 1e3).collect(),
                count: counts.iter().sum(),
                counts,
                sum_seconds: get("wait_sum_ms") as f64 / 1e3,
            },
        })
    }

    /// Changes the capacity. When the server lost the pool's state, it is
    /// restored with the new capacity, quarantined like any other loss.
    pub(crate) fn resize(&self, capacity: u32) -> Result<u32> {
        crate::file::check_capacity(capacity as u64)?;
        let k = &self.shared.keys;
        let old: i64 = self.shared.command("resizing", |c| {
            self.shared
                .scripts
                .resize
                .key(&k.meta)
                .key(&k.stats)
                .key(&k.queue)
                .arg(capacity)
                .arg(self.shared.max_known())
                .arg(&k.channel)
                .invoke(c)
        })?;
        let known = self.shared.capacity.swap(capacity, Ordering::Relaxed);
        if old < 0 {
            tracing::warn!(pool = %self.shared.name, capacity, "the server had lost the pool; restored it with the new capacity, admitting nobody until the longest lease has passed");
            return Ok(known);
        }
        Ok(old as u32)
    }
}

impl Shared {
    /// The capacity `meta` records. Anybody who can write the server can
    /// change it (a typo in `redis-cli`, an operator's script): anything
    /// dbslots would not have written, a whole number from 1 to
    /// `MAX_CAPACITY`, is refused, naming where it is and what to do.
    fn recorded_capacity(&self, text: &str) -> Result<u32> {
        match text.parse::<u32>() {
            Ok(c) if crate::file::check_capacity(c as u64).is_ok() => Ok(c),
            _ => Err(self.unusable_capacity(text)),
        }
    }

    /// The error for a capacity in `meta` that dbslots would not have
    /// written (see [`Shared::recorded_capacity`]).
    fn unusable_capacity(&self, text: &str) -> Error {
        let shown: String = text.chars().take(40).collect();
        let meta = &self.keys.meta;
        Error::Backend {
            pool: self.name.clone(),
            message: format!(
                "the field capacity of {meta} holds {shown:?}, not a whole number from 1 to {}: something other than dbslots wrote it; write the capacity the pool should have there (HSET {meta} capacity N)",
                crate::file::MAX_CAPACITY
            ),
        }
    }

    /// Creates the pool's metadata. After a server (re)start, admission
    /// waits until the server has been up for one lease time.
    fn create(&self, capacity: u32) -> Result<u32> {
        let k = &self.keys;
        self.command("creating the pool", |c| {
            self.scripts
                .create
                .key(&k.meta)
                .arg(capacity)
                .arg(self.lease_ms())
                .invoke(c)
        })
    }
}

impl Drop for RedisPool {
    fn drop(&mut self) {
        *self
            .shared
            .renewer
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = false;
        self.shared.wake_renewer.notify_all();
    }
}
