//! The pool's keys and the Lua scripts that change them.
//!
//! Every multi-step change is one script, so it is atomic on the server.
//! The scripts that admit or renew start with `guard`, which notices that
//! the server may have lost the pool's state and quarantines the pool (no
//! admission) for the longest lease any client of the pool uses:
//!
//! - `meta` is missing but the caller knows the capacity (an open handle
//!   after a restart without persistence, or an eviction): `meta` is
//!   restored, quarantined from now;
//! - the server's `run_id` differs from the one recorded in `meta` (a
//!   restart with a restored RDB/AOF, a failover to a replica);
//! - `leases` and `owners` disagree (they always change together): one of
//!   them was evicted or restored from another moment;
//! - a holder finds its lease gone while it must still be running (the
//!   caller says so with `live`): an eviction of `leases` or `owners`, a
//!   stale restore, a failover that lost the last writes.
//!
//! The pool's keys have no TTL, so `maxmemory-policy noeviction` or any
//! `volatile-*` policy never evicts them; under `allkeys-*` an eviction of
//! both `leases` and `owners` is noticed only at the holders' next renewal
//! (a sixth of the lease).
//!
//! `max_lease` in `meta` is the longest lease any client has used; every
//! client passes the longest one it has seen, so a `meta` restored by a
//! client that knew less is corrected by the next one that knew more.

use redis::Script;

/// The keys of one pool, all under the hash tag `dbslots:{NAME}:` so that a
/// cluster keeps them on one node.
pub(super) struct Keys {
    pub meta: String,
    pub leases: String,
    pub owners: String,
    pub queue: String,
    pub qexp: String,
    pub qinfo: String,
    pub tickets: String,
    pub stats: String,
    pub channel: String,
    /// `dbslots:{NAME}:reports:`, followed by a kind ([`Keys::reports`]).
    reports_prefix: String,
}

impl Keys {
    pub fn new(pool: &str) -> Keys {
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
            reports_prefix: k("reports:"),
        }
    }

    /// The hash of the reports of one kind (see [`super::reports`]).
    pub fn reports(&self, kind: &str) -> String {
        format!("{}{kind}", self.reports_prefix)
    }
}

/// Shared prelude: the server's clock and the quarantine guard.
macro_rules! prelude {
    () => {
        r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function guard(meta, stats, now, cap_known, max_known)
  local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') or '?'
  local m = redis.call('HMGET', meta, 'capacity', 'admit_after', 'max_lease', 'run_id', 'created')
  local cap = tonumber(m[1])
  local recorded = tonumber(m[3]) or 0
  local maxl = math.max(recorded, max_known)
  if not cap then
    if cap_known <= 0 then return nil, 0, maxl end
    redis.call('HSET', meta, 'capacity', cap_known, 'created', now, 'admit_after', now + maxl, 'max_lease', maxl, 'run_id', run)
    redis.call('HINCRBY', stats, 'quarantines', 1)
    return cap_known, now + maxl, maxl
  end
  local admit = tonumber(m[2]) or 0
  if m[4] ~= run then
    admit = math.max(admit, now + maxl)
    redis.call('HSET', meta, 'admit_after', admit, 'run_id', run, 'max_lease', maxl)
    redis.call('HINCRBY', stats, 'quarantines', 1)
  elseif maxl > recorded then
    local created = tonumber(m[5]) or 0
    if admit > created then admit = math.max(admit, created + maxl) end
    redis.call('HSET', meta, 'admit_after', admit, 'max_lease', maxl)
  end
  return cap, admit, maxl
end
"#
    };
}

/// KEYS: meta leases owners queue qexp qinfo tickets stats.
/// ARGV: token lease_ms waiter_ttl_ms try_only info channel cap_known max_known
/// maybe_owned.
/// Returns {slot (-1 none, -2 no pool), now, capacity, max_lease, admit_after}.
const ACQUIRE: &str = concat!(
    prelude!(),
    r#"
local now = now_ms()
local token, lease, wttl, try_only, info, chan = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local cap, admit, maxl = guard(KEYS[1], KEYS[8], now, tonumber(ARGV[7]), math.max(tonumber(ARGV[8]), lease))
if not cap then return {-2, now, 0, maxl, 0} end
local changed = false
if redis.call('ZCARD', KEYS[2]) ~= redis.call('HLEN', KEYS[3]) then
  -- leases and owners always change together: a difference means the
  -- server lost one of them (an eviction, a partial restore)
  if now + maxl > admit then
    admit = now + maxl
    redis.call('HSET', KEYS[1], 'admit_after', admit)
    redis.call('HINCRBY', KEYS[8], 'quarantines', 1)
  end
  for _, s in ipairs(redis.call('HKEYS', KEYS[3])) do
    if not redis.call('ZSCORE', KEYS[2], s) then redis.call('HDEL', KEYS[3], s) end
  end
  for _, s in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if redis.call('HEXISTS', KEYS[3], s) == 0 then redis.call('ZREM', KEYS[2], s) end
  end
end
for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('ZREM', KEYS[2], s); redis.call('HDEL', KEYS[3], s); changed = true
end
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)) do
  redis.call('ZREM', KEYS[4], w); redis.call('ZREM', KEYS[5], w); redis.call('HDEL', KEYS[6], w); changed = true
end
local held = redis.call('ZCARD', KEYS[2])
local free = cap - held
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
-- A call run again after its reply was lost (a timeout, a reset): this
-- token may already hold a slot, which is handed back rather than a second.
local owned = {}
if ARGV[9] == '1' then owned = redis.call('HGETALL', KEYS[3]) end
for i = 1, #owned, 2 do
  if string.sub(owned[i + 1], 1, #token + 1) == token .. ' ' then
    redis.call('ZADD', KEYS[2], 'XX', now + lease, owned[i])
    redis.call('ZREM', KEYS[4], token); redis.call('ZREM', KEYS[5], token); redis.call('HDEL', KEYS[6], token)
    if changed then notify() end
    return {tonumber(owned[i]), now, cap, maxl, admit}
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
    return {slot, now, cap, maxl, admit}
  end
end
if try_only ~= '1' then
  if not redis.call('ZSCORE', KEYS[4], token) then
    -- behind every waiter, even when the counter was lost (an eviction)
    local ticket = redis.call('INCR', KEYS[7])
    local last = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
    if last[2] and tonumber(last[2]) >= ticket then
      ticket = tonumber(last[2]) + 1
      redis.call('SET', KEYS[7], ticket)
    end
    redis.call('ZADD', KEYS[4], ticket, token)
    redis.call('HSET', KEYS[6], token, info .. ' ' .. now)
  end
  redis.call('ZADD', KEYS[5], now + wttl, token)
end
if changed then notify() end
return {-1, now, cap, maxl, admit}
"#
);

/// KEYS: meta leases owners stats.
/// ARGV: slot token lease_ms live cap_known max_known.
/// Returns {1 renewed / 0 gone, capacity, max_lease}.
const RENEW: &str = concat!(
    prelude!(),
    r#"
local now = now_ms()
local lease = tonumber(ARGV[3])
local cap, admit, maxl = guard(KEYS[1], KEYS[4], now, tonumber(ARGV[5]), math.max(tonumber(ARGV[6]), lease))
local owner = redis.call('HGET', KEYS[3], ARGV[1])
local exp = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
if not owner or string.sub(owner, 1, #ARGV[2] + 1) ~= ARGV[2] .. ' ' or exp <= now then
  if ARGV[4] == '1' and cap then
    local q = now + maxl
    if q > admit then
      redis.call('HSET', KEYS[1], 'admit_after', q)
      redis.call('HINCRBY', KEYS[4], 'quarantines', 1)
    end
  end
  return {0, cap or 0, maxl}
end
redis.call('ZADD', KEYS[2], 'XX', now + lease, ARGV[1])
return {1, cap, maxl}
"#
);

/// KEYS: meta leases owners queue. ARGV: slot token channel.
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

/// KEYS: queue qexp qinfo stats meta leases owners. ARGV: token timed_out
/// channel.
///
/// Also gives back a slot the token holds: one its acquisition took while
/// the reply was lost, which nobody would renew or release.
const LEAVE: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[1]); redis.call('ZREM', KEYS[2], ARGV[1]); redis.call('HDEL', KEYS[3], ARGV[1])
if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[4], 'timeouts', 1) end
local owned = redis.call('HGETALL', KEYS[7])
for i = 1, #owned, 2 do
  if string.sub(owned[i + 1], 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then
    redis.call('ZREM', KEYS[6], owned[i]); redis.call('HDEL', KEYS[7], owned[i])
    local f = tonumber(redis.call('HGET', KEYS[5], 'capacity') or '0') - redis.call('ZCARD', KEYS[6])
    if f > 0 then
      local next = redis.call('ZRANGE', KEYS[1], 0, f - 1)
      if #next > 0 then redis.call('PUBLISH', ARGV[3], table.concat(next, ' ')) end
    end
  end
end
return 1
"#;

/// Creates a pool that does not exist. A server that started less than
/// one lease ago may have forgotten holders: then admission waits until
/// the server has been up for that long.
/// KEYS: meta. ARGV: capacity lease_ms. Returns the recorded capacity.
const CREATE: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'capacity')
if cur then return tonumber(cur) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local info = redis.call('INFO', 'server')
local run = string.match(info, 'run_id:(%w+)') or '?'
local up = (tonumber(string.match(info, 'uptime_in_seconds:(%d+)')) or 0) * 1000
local lease = tonumber(ARGV[2])
local q = math.max(0, lease - up)
redis.call('HSET', KEYS[1], 'capacity', ARGV[1], 'created', now, 'admit_after', now + q, 'max_lease', lease, 'run_id', run)
return tonumber(ARGV[1])
"#;

/// KEYS: meta stats queue. ARGV: capacity max_known channel.
/// Returns the old capacity, or -1 when the pool's state was lost (then
/// it is restored with the new capacity, quarantined).
const RESIZE: &str = concat!(
    prelude!(),
    r#"
local now = now_ms()
local old = tonumber(redis.call('HGET', KEYS[1], 'capacity') or '-1')
guard(KEYS[1], KEYS[2], now, tonumber(ARGV[1]), tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'capacity', ARGV[1])
local waiting = redis.call('ZRANGE', KEYS[3], 0, -1)
if #waiting > 0 then redis.call('PUBLISH', ARGV[3], table.concat(waiting, ' ')) end
return old
"#
);

/// A consistent snapshot for `stats()`. A script rather than `MULTI`: on a
/// cluster an aborted `MULTI` hides the `MOVED`/`ASK` its commands were
/// answered with, a script's answer names it.
/// KEYS: meta leases owners queue qinfo stats.
/// Returns {capacity, leases with scores, owners, queue, qinfo, counters, TIME}.
const STATS: &str = r#"
return {
  redis.call('HGET', KEYS[1], 'capacity'),
  redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'),
  redis.call('HGETALL', KEYS[3]),
  redis.call('ZRANGE', KEYS[4], 0, -1),
  redis.call('HGETALL', KEYS[5]),
  redis.call('HGETALL', KEYS[6]),
  redis.call('TIME')
}
"#;

/// KEYS: owners. ARGV: slot token pid.
const SET_PID: &str = r#"
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if not owner or string.sub(owner, 1, #ARGV[2] + 1) ~= ARGV[2] .. ' ' then return 0 end
local token, host, pid, since = string.match(owner, '^(%S+) (%S+) (%S+) (%S+)$')
redis.call('HSET', KEYS[1], ARGV[1], token .. ' ' .. host .. ' ' .. ARGV[3] .. ' ' .. since)
return 1
"#;

/// Posts an observer's report ([`super::reports`]): refused (0) while the
/// name is held by another owner whose entry has not expired. The hash
/// itself expires well after the longest ttl posted, so reports of
/// observers that all died leave nothing behind.
/// KEYS: reports. ARGV: name owner ttl_ms doc. Returns 1 posted, 0 refused.
const POST_REPORT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
-- Checked before any write: a script is not rolled back, and a ttl too
-- large for PEXPIRE would leave the entry stored and the hash immortal.
if not ttl or ttl < 1 or ttl > 86400000 then
  return redis.error_reply('a report ttl is 1 ms to 1 day')
end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local exp, owner = string.match(cur, '^(%d+) (%S+) ')
  if exp and tonumber(exp) > now and owner ~= ARGV[2] then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now + ttl) .. ' ' .. ARGV[2] .. ' ' .. ARGV[4])
local keep = 2 * ttl + 1000
if redis.call('PTTL', KEYS[1]) < keep then redis.call('PEXPIRE', KEYS[1], keep) end
return 1
"#;

/// The live reports, as {name, doc, name, doc, ...}; expired ones are
/// deleted on the way.
/// KEYS: reports.
const READ_REPORTS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local exp, doc = string.match(all[i + 1], '^(%d+) %S+ (.*)$')
  if exp and tonumber(exp) > now then
    out[#out + 1] = all[i]
    out[#out + 1] = doc
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
"#;

/// Withdraws a report if `owner` posted it.
/// KEYS: reports. ARGV: name owner. Returns 1 withdrawn, 0 not there or
/// another owner's.
const WITHDRAW_REPORT: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
if string.match(cur, '^%d+ (%S+) ') ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"#;

/// The scripts, hashed once per handle.
pub(super) struct Scripts {
    pub acquire: Script,
    pub release: Script,
    pub renew: Script,
    pub leave: Script,
    pub create: Script,
    pub resize: Script,
    pub set_pid: Script,
    pub stats: Script,
    pub post_report: Script,
    pub read_reports: Script,
    pub withdraw_report: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
            renew: Script::new(RENEW),
            leave: Script::new(LEAVE),
            create: Script::new(CREATE),
            resize: Script::new(RESIZE),
            set_pid: Script::new(SET_PID),
            stats: Script::new(STATS),
            post_report: Script::new(POST_REPORT),
            read_reports: Script::new(READ_REPORTS),
            withdraw_report: Script::new(WITHDRAW_REPORT),
        }
    }
}
