//! The Redis backend: one pool shared by processes on many hosts.
//!
//! # Implementation Details
//!
//! A kernel lock only sees one host, so here a slot is a **lease**: slot `i`
//! is held while the sorted set `leases` maps `i` to an expiry in the future
//! (Redis server time, so client clocks do not matter). Holders renew their
//! leases every third of the lease time from a per-handle renewer thread; a
//! holder that dies or loses the network loses its slot when the lease runs
//! out, and no later, because every acquisition first trims expired leases.
//! A holder that finds its lease gone is told so ([`crate::Slot::check`]).
//!
//! Keys, all under the hash tag `dbslots:{NAME}:` so a cluster keeps them
//! together: `meta` (capacity, admission time), `leases` (slot → expiry),
//! `owners` (slot → "token host pid since"), `queue` (waiter token → ticket),
//! `qexp` (waiter token → expiry: waiters renew too, so dead ones leave),
//! `qinfo`, `tickets`, `stats`, and the pub/sub channel `events`.
//!
//! Every multi-step change is one Lua script, so it is atomic on the server.
//! Waiters are served by ticket: a waiter may take a slot only while its rank
//! in `queue` is below the number of free slots. When slots free up, the
//! script that freed them publishes the tokens now allowed in; a waiter
//! sleeps on the channel and retries only when it is named, with a bounded
//! fallback retry (200 ms) that also trims expired leases and renews its
//! place.
//!
//! Uncontended, an acquisition is one round trip (`EVALSHA`) and a release
//! another.
//!
//! After a Redis restart the pool's keys may be gone. A pool re-created then
//! admits nobody until one lease time after the server started, so holders
//! from before the restart have been told they lost their slots before
//! anyone else gets one: no over-admission.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::{Commands, Script};

use crate::addr::{RedisAddr, redact};
use crate::error::{Error, Result};
use crate::file::cancel::CancelToken;
use crate::stats::{Holder, PoolStats, WaitHistogram, Waiter};

const WAIT_BOUNDS_MS: [u64; 10] = [
    0, 1, 10, 100, 1_000, 5_000, 30_000, 120_000, 600_000, 3_600_000,
];
/// How often a waiter re-checks without a notification.
const FALLBACK: Duration = Duration::from_millis(200);

const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = tonumber(redis.call('HGET', KEYS[1], 'capacity'))
if not cap then return {-2, now} end
local token, lease, wttl, try_only, info, chan = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local changed = false
for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('ZREM', KEYS[2], s); redis.call('HDEL', KEYS[3], s); changed = true
end
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)) do
  redis.call('ZREM', KEYS[4], w); redis.call('ZREM', KEYS[5], w); redis.call('HDEL', KEYS[6], w); changed = true
end
local held = redis.call('ZCARD', KEYS[2])
local free = cap - held
local admit = tonumber(redis.call('HGET', KEYS[1], 'admit_after') or '0')
local allowed = false
if free > 0 and now >= admit then
  local rank = redis.call('ZRANK', KEYS[4], token)
  if rank then allowed = rank < free else allowed = redis.call('ZCARD', KEYS[4]) < free end
end
local function notify()
  local f = cap - redis.call('ZCARD', KEYS[2])
  if f > 0 then
    local next = redis.call('ZRANGE', KEYS[4], 0, f - 1)
    if #next > 0 then redis.call('PUBLISH', chan, table.concat(next, ' ')) end
  end
end
if allowed then
  local slot = -1
  for i = 0, cap - 1 do
    if not redis.call('ZSCORE', KEYS[2], tostring(i)) then slot = i; break end
  end
  if slot >= 0 then
    redis.call('ZADD', KEYS[2], now + lease, tostring(slot))
    redis.call('HSET', KEYS[3], tostring(slot), token .. ' ' .. info .. ' ' .. now)
    redis.call('ZREM', KEYS[4], token); redis.call('ZREM', KEYS[5], token); redis.call('HDEL', KEYS[6], token)
    redis.call('HINCRBY', KEYS[8], 'acquisitions', 1)
    if held + 1 > tonumber(redis.call('HGET', KEYS[8], 'peak') or '0') then
      redis.call('HSET', KEYS[8], 'peak', held + 1)
    end
    if changed then notify() end
    return {slot, now}
  end
end
if try_only ~= '1' then
  if not redis.call('ZSCORE', KEYS[4], token) then
    redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[7]), token)
    redis.call('HSET', KEYS[6], token, info .. ' ' .. now)
  end
  redis.call('ZADD', KEYS[5], now + wttl, token)
end
if changed then notify() end
return {-1, now}
"#;

const RELEASE: &str = r#"
local owner = redis.call('HGET', KEYS[3], ARGV[1])
if not owner or string.sub(owner, 1, #ARGV[2] + 1) ~= ARGV[2] .. ' ' then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1]); redis.call('HDEL', KEYS[3], ARGV[1])
local cap = tonumber(redis.call('HGET', KEYS[1], 'capacity') or '0')
local f = cap - redis.call('ZCARD', KEYS[2])
if f > 0 then
  local next = redis.call('ZRANGE', KEYS[4], 0, f - 1)
  if #next > 0 then redis.call('PUBLISH', ARGV[3], table.concat(next, ' ')) end
end
return 1
"#;

const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if not owner or string.sub(owner, 1, #ARGV[2] + 1) ~= ARGV[2] .. ' ' then return 0 end
local exp = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
if exp <= now then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[3]), ARGV[1])
return 1
"#;

const LEAVE: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[1]); redis.call('ZREM', KEYS[2], ARGV[1]); redis.call('HDEL', KEYS[3], ARGV[1])
if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[4], 'timeouts', 1) end
return 1
"#;

const CREATE: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'capacity')
if cur then return tonumber(cur) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'capacity', ARGV[1], 'created', now, 'admit_after', now + tonumber(ARGV[2]))
return tonumber(ARGV[1])
"#;

const SET_PID: &str = r#"
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if not owner or string.sub(owner, 1, #ARGV[2] + 1) ~= ARGV[2] .. ' ' then return 0 end
local token, host, pid, since = string.match(owner, '^(%S+) (%S+) (%S+) (%S+)$')
redis.call('HSET', KEYS[1], ARGV[1], token .. ' ' .. host .. ' ' .. ARGV[3] .. ' ' .. since)
return 1
"#;

struct Scripts {
    acquire: Script,
    release: Script,
    renew: Script,
    leave: Script,
    create: Script,
    set_pid: Script,
}

struct Keys {
    meta: String,
    leases: String,
    owners: String,
    queue: String,
    qexp: String,
    qinfo: String,
    tickets: String,
    stats: String,
    channel: String,
}

impl Keys {
    fn new(pool: &str) -> Keys {
        let k = |s: &str| format!("dbslots:{{{pool}}}:{s}");
        Keys {
            meta: k("meta"),
            leases: k("leases"),
            owners: k("owners"),
            queue: k("queue"),
            qexp: k("qexp"),
            qinfo: k("qinfo"),
            tickets: k("tickets"),
            stats: k("stats"),
            channel: k("events"),
        }
    }
}

/// What a held lease needs.
struct Lease {
    token: String,
    lost: AtomicBool,
    renewed: Mutex<Instant>,
}

struct Shared {
    client: redis::Client,
    conn: Mutex<Option<redis::Connection>>,
    keys: Keys,
    scripts: Scripts,
    name: String,
    lease: Duration,
    info: String,
    leases: Mutex<HashMap<u32, Arc<Lease>>>,
    renewer: Mutex<bool>,
    wake_renewer: Condvar,
}

/// An open Redis pool (one per `Pool` handle).
pub(crate) struct RedisPool {
    shared: Arc<Shared>,
    capacity_cache: std::sync::atomic::AtomicU32,
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

fn host_name() -> String {
    std::env::var("DBSLOTS_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "localhost".into())
}

impl Shared {
    fn backend_error(&self, what: &str, e: redis::RedisError) -> Error {
        let detail = redact(&e.to_string());
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

    /// Runs `f` on the shared command connection, reconnecting once.
    fn with_conn<T>(
        &self,
        what: &str,
        f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        for attempt in 0..2 {
            if guard.is_none() {
                let c = self
                    .client
                    .get_connection_with_timeout(Duration::from_secs(5))
                    .map_err(|e| self.backend_error("cannot connect to Redis", e))?;
                *guard = Some(c);
            }
            let conn = guard.as_mut().expect("connection was just set");
            match f(conn) {
                Ok(v) => return Ok(v),
                Err(e) if attempt == 0 && (e.is_io_error() || e.is_connection_dropped()) => {
                    *guard = None;
                }
                Err(e) => {
                    if e.is_io_error() || e.is_connection_dropped() {
                        *guard = None;
                    }
                    return Err(self.backend_error(what, e));
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    fn acquire_once(&self, token: &str, try_only: bool) -> Result<(i64, i64)> {
        let k = &self.keys;
        let r: Vec<i64> = self.with_conn("acquiring a slot", |c| {
            self.scripts
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
                .arg(self.lease.as_millis() as u64)
                .arg(self.lease.as_millis() as u64)
                .arg(if try_only { "1" } else { "0" })
                .arg(&self.info)
                .arg(&k.channel)
                .invoke(c)
        })?;
        match r.as_slice() {
            [-2, _] => Err(Error::NotFound {
                pool: self.name.clone(),
            }),
            [slot, now] => Ok((*slot, *now)),
            _ => Err(Error::Backend {
                pool: self.name.clone(),
                message: format!("unexpected answer {r:?} from the acquire script"),
            }),
        }
    }

    fn leave(&self, token: &str, timed_out: bool) {
        let k = &self.keys;
        let _ = self.with_conn("leaving the queue", |c| {
            self.scripts
                .leave
                .key(&k.queue)
                .key(&k.qexp)
                .key(&k.qinfo)
                .key(&k.stats)
                .arg(token)
                .arg(if timed_out { "1" } else { "0" })
                .invoke::<i64>(c)
        });
    }

    fn renew(&self, slot: u32, lease: &Lease) -> Result<bool> {
        let k = &self.keys;
        let ok: i64 = self.with_conn("renewing a lease", |c| {
            self.scripts
                .renew
                .key(&k.leases)
                .key(&k.owners)
                .arg(slot)
                .arg(&lease.token)
                .arg(self.lease.as_millis() as u64)
                .invoke(c)
        })?;
        if ok == 1 {
            *lease.renewed.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn mark_lost(&self, slot: u32, lease: &Lease, why: &str) {
        if !lease.lost.swap(true, Ordering::SeqCst) {
            tracing::error!(pool = %self.name, slot, reason = why, "slot lease lost");
        }
    }

    /// One renewal round over every held lease.
    fn renew_all(&self) {
        let leases: Vec<(u32, Arc<Lease>)> = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(s, l)| (*s, Arc::clone(l)))
            .collect();
        for (slot, lease) in leases {
            if lease.lost.load(Ordering::SeqCst) {
                continue;
            }
            match self.renew(slot, &lease) {
                Ok(true) => {}
                Ok(false) => self.mark_lost(slot, &lease, "the server no longer has this lease"),
                Err(e) => {
                    let age = lease
                        .renewed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .elapsed();
                    if age >= self.lease {
                        self.mark_lost(slot, &lease, "could not renew it within the lease time");
                    } else {
                        tracing::warn!(pool = %self.name, slot, error = %e, "lease renewal failed; retrying");
                    }
                }
            }
        }
    }
}

fn renewer(weak: Weak<Shared>, period: Duration) {
    loop {
        let Some(shared) = weak.upgrade() else { return };
        {
            let running = shared.renewer.lock().unwrap_or_else(|p| p.into_inner());
            let (running, _) = shared
                .wake_renewer
                .wait_timeout(running, period)
                .unwrap_or_else(|p| p.into_inner());
            if !*running {
                return;
            }
        }
        shared.renew_all();
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
        let client = redis::Client::open(addr.url.as_str()).map_err(|e| Error::InvalidAddress {
            address: display.to_string(),
            reason: redact(&e.to_string()),
        })?;
        let shared = Arc::new(Shared {
            client,
            conn: Mutex::new(None),
            keys: Keys::new(&addr.pool),
            scripts: Scripts {
                acquire: Script::new(ACQUIRE),
                release: Script::new(RELEASE),
                renew: Script::new(RENEW),
                leave: Script::new(LEAVE),
                create: Script::new(CREATE),
                set_pid: Script::new(SET_PID),
            },
            name: display.to_string(),
            lease: addr.lease,
            info: format!("{} {}", host_name(), std::process::id()),
            leases: Mutex::new(HashMap::new()),
            renewer: Mutex::new(false),
            wake_renewer: Condvar::new(),
        });
        let recorded: Option<u32> = shared.with_conn("reading the pool", |c| {
            c.hget(&shared.keys.meta, "capacity")
        })?;
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
        Ok(RedisPool {
            shared,
            capacity_cache: std::sync::atomic::AtomicU32::new(recorded),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.shared.name
    }

    pub(crate) fn capacity(&self) -> u32 {
        self.capacity_cache.load(Ordering::Relaxed)
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
            let period = self.shared.lease / 3;
            let spawned = std::thread::Builder::new()
                .name("dbslots-lease-renewer".into())
                .spawn(move || {
                    crate::file::cancel::block_process_signals();
                    renewer(weak, period)
                });
            if let Err(e) = spawned {
                *running = false;
                tracing::error!(error = %e, "cannot start the lease renewer; leases will expire");
            }
        }
    }

    fn hold(&self, slot: i64, token: String) -> Result<u32> {
        let slot = u32::try_from(slot).map_err(|_| Error::Backend {
            pool: self.shared.name.clone(),
            message: format!("the server handed out an impossible slot {slot}"),
        })?;
        self.shared
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                slot,
                Arc::new(Lease {
                    token,
                    lost: AtomicBool::new(false),
                    renewed: Mutex::new(Instant::now()),
                }),
            );
        self.start_renewer();
        Ok(slot)
    }

    pub(crate) fn try_acquire(&self) -> Result<Option<u32>> {
        let token = token();
        let (slot, _) = self.shared.acquire_once(&token, true)?;
        if slot < 0 {
            return Ok(None);
        }
        self.hold(slot, token).map(Some)
    }

    pub(crate) fn acquire_slow(
        &self,
        deadline: Option<Instant>,
        cancel: &CancelToken,
    ) -> Result<u32> {
        let started = Instant::now();
        let token = token();
        let (slot, _) = self.shared.acquire_once(&token, true)?;
        if slot >= 0 {
            return self.hold(slot, token);
        }
        // Subscribe before queueing, so no notification can slip between.
        let mut sub = self
            .shared
            .client
            .get_connection_with_timeout(Duration::from_secs(5))
            .map_err(|e| self.shared.backend_error("cannot connect to Redis", e))?;
        let mut pubsub = sub.as_pubsub();
        pubsub
            .subscribe(&self.shared.keys.channel)
            .map_err(|e| self.shared.backend_error("cannot subscribe", e))?;
        let outcome = loop {
            match self.shared.acquire_once(&token, false) {
                Ok((slot, _)) if slot >= 0 => break self.hold(slot, token.clone()),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
            if cancel.is_cancelled() {
                break Err(Error::Cancelled {
                    pool: self.shared.name.clone(),
                });
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                let stats = self.stats().ok();
                break Err(Error::Timeout {
                    pool: self.shared.name.clone(),
                    waited: started.elapsed(),
                    capacity: self.capacity(),
                    active: stats.as_ref().map_or(0, |s| s.active),
                    waiting: stats.as_ref().map_or(1, |s| s.waiting),
                });
            }
            let mut wait = FALLBACK.min(self.shared.lease / 3);
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(now));
            }
            // Cancellation is noticed within 50 ms.
            wait = wait
                .min(Duration::from_millis(50))
                .max(Duration::from_millis(1));
            let _ = pubsub.set_read_timeout(Some(wait));
            let fallback_at = now + FALLBACK.min(self.shared.lease / 3);
            loop {
                match pubsub.get_message() {
                    Ok(msg) => {
                        let payload: String = msg.get_payload().unwrap_or_default();
                        if payload.split(' ').any(|t| t == token) {
                            break;
                        }
                    }
                    Err(e) if e.is_timeout() => {
                        if cancel.is_cancelled()
                            || Instant::now() >= fallback_at
                            || deadline.is_some_and(|d| Instant::now() >= d)
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(pool = %self.shared.name, error = %redact(&e.to_string()), "lost the notification channel; polling until it is back");
                        std::thread::sleep(wait);
                        break;
                    }
                }
            }
        };
        match &outcome {
            Ok(_) => {
                let ms = started.elapsed().as_millis() as u64;
                let bucket = WAIT_BOUNDS_MS
                    .iter()
                    .position(|b| ms <= *b)
                    .unwrap_or(WAIT_BOUNDS_MS.len());
                let k = &self.shared.keys;
                let _ = self.shared.with_conn("recording a wait", |c| {
                    redis::pipe()
                        .hincr(&k.stats, "waited", 1)
                        .hincr(&k.stats, "wait_sum_ms", ms)
                        .hincr(&k.stats, format!("b{bucket}"), 1)
                        .query::<()>(c)
                });
            }
            Err(e) => self.shared.leave(&token, e.is_timeout()),
        }
        outcome
    }

    pub(crate) fn release(&self, slot: u32) {
        let lease = self
            .shared
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&slot);
        let Some(lease) = lease else { return };
        let k = &self.shared.keys;
        let released = self.shared.with_conn("releasing a slot", |c| {
            self.shared
                .scripts
                .release
                .key(&k.meta)
                .key(&k.leases)
                .key(&k.owners)
                .key(&k.queue)
                .arg(slot)
                .arg(&lease.token)
                .arg(&k.channel)
                .invoke::<i64>(c)
        });
        match released {
            Ok(1) => {}
            Ok(_) => {
                tracing::warn!(pool = %self.shared.name, slot, "released a slot whose lease had already been lost")
            }
            Err(e) => {
                tracing::error!(pool = %self.shared.name, slot, error = %e, "cannot release; the lease will expire")
            }
        }
    }

    /// Whether the lease behind `slot` is gone, as the server says now.
    pub(crate) fn check(&self, slot: u32) -> Result<()> {
        let lease = self
            .shared
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&slot)
            .cloned();
        let Some(lease) = lease else {
            return Ok(());
        };
        // Asked of the server every time (one round trip, which also renews
        // the lease): only the server knows whether it restarted or let the
        // lease run out while this process was paused.
        if !lease.lost.load(Ordering::SeqCst) {
            match self.shared.renew(slot, &lease) {
                Ok(true) => {}
                Ok(false) => {
                    self.shared
                        .mark_lost(slot, &lease, "the server no longer has this lease")
                }
                Err(e) => return Err(e),
            }
        }
        if lease.lost.load(Ordering::SeqCst) {
            return Err(Error::SlotLost {
                pool: self.shared.name.clone(),
                slot,
                reason: format!(
                    "its lease ({:?}) ran out before it was renewed (the process was paused, cut off from Redis, or Redis restarted)",
                    self.shared.lease
                ),
            });
        }
        Ok(())
    }

    pub(crate) fn set_holder_pid(&self, slot: u32, pid: u32) {
        let token = self
            .shared
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&slot)
            .map(|l| l.token.clone());
        let Some(token) = token else { return };
        let k = &self.shared.keys;
        let _ = self.shared.with_conn("recording the holder", |c| {
            self.shared
                .scripts
                .set_pid
                .key(&k.owners)
                .arg(slot)
                .arg(&token)
                .arg(pid)
                .invoke::<i64>(c)
        });
    }

    pub(crate) fn stats(&self) -> Result<PoolStats> {
        let k = &self.shared.keys;
        type Snapshot = (
            Option<u32>,
            Vec<(String, f64)>,
            HashMap<String, String>,
            Vec<String>,
            HashMap<String, String>,
            HashMap<String, u64>,
            Vec<String>,
        );
        let (cap, leases, owners, queue, qinfo, counters, time): Snapshot =
            self.shared.with_conn("reading pool stats", |c| {
                redis::pipe()
                    .atomic()
                    .hget(&k.meta, "capacity")
                    .zrangebyscore_withscores(&k.leases, "-inf", "+inf")
                    .hgetall(&k.owners)
                    .zrange(&k.queue, 0, -1)
                    .hgetall(&k.qinfo)
                    .hgetall(&k.stats)
                    .cmd("TIME")
                    .query(c)
            })?;
        let capacity = cap.ok_or_else(|| Error::NotFound {
            pool: self.shared.name.clone(),
        })?;
        self.capacity_cache.store(capacity, Ordering::Relaxed);
        let now_ms = time
            .first()
            .and_then(|s| s.parse::<u64>().ok())
            .map(|s| s * 1000)
            .unwrap_or(0);
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

    pub(crate) fn resize(&self, capacity: u32) -> Result<u32> {
        crate::file::check_capacity(capacity as u64)?;
        let k = &self.shared.keys;
        let old: Option<u32> = self.shared.with_conn("resizing", |c| {
            let (old,): (Option<u32>,) = redis::pipe()
                .atomic()
                .hget(&k.meta, "capacity")
                .hset(&k.meta, "capacity", capacity)
                .ignore()
                .query(c)?;
            Ok(old)
        })?;
        let old = old.ok_or_else(|| Error::NotFound {
            pool: self.shared.name.clone(),
        })?;
        self.capacity_cache.store(capacity, Ordering::Relaxed);
        // Waiters re-check: more room may be there.
        let queue: Vec<String> = self
            .shared
            .with_conn("resizing", |c| c.zrange(&k.queue, 0, -1))?;
        if !queue.is_empty() {
            let _ = self.shared.with_conn("resizing", |c| {
                c.publish::<_, _, i64>(&k.channel, queue.join(" "))
            });
        }
        Ok(old)
    }
}

impl Shared {
    /// Creates the pool's metadata. After a server (re)start, admission
    /// waits until the server has been up for one lease time.
    fn create(&self, capacity: u32) -> Result<u32> {
        let info: String = self.with_conn("reading server info", |c| {
            redis::cmd("INFO").arg("server").query(c)
        })?;
        let uptime_ms = info
            .lines()
            .find_map(|l| l.strip_prefix("uptime_in_seconds:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| s * 1000)
            .unwrap_or(0);
        let quarantine = (self.lease.as_millis() as u64).saturating_sub(uptime_ms);
        if quarantine > 0 {
            tracing::warn!(pool = %self.name, wait_ms = quarantine, "Redis started recently: admitting holders only once leases from before a restart have run out");
        }
        let k = &self.keys;
        self.with_conn("creating the pool", |c| {
            self.scripts
                .create
                .key(&k.meta)
                .arg(capacity)
                .arg(quarantine)
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
