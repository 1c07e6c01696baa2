//! Waiting for a slot: a ticket in `queue`, woken through pub/sub.
//!
//! A waiter subscribes before it queues, so no notification slips between.
//! It renews its place every [`FALLBACK`] by running the acquire script
//! again (which also trims leases that ran out: nobody notifies about
//! those), so the place of a waiter that died lapses after [`PLACE_TTL`].
//! When the subscription's connection fails, the waiter keeps its place by
//! polling and subscribes again (with a back-off), then re-runs the acquire
//! script so a notification sent meanwhile is not missed.

use std::time::{Duration, Instant};

use super::{RedisPool, WAIT_BOUNDS_MS, token};
use crate::addr::redact_redis;
use crate::error::{Error, Result};
use crate::file::cancel::CancelToken;

/// How often a waiter re-checks without a notification.
const FALLBACK: Duration = Duration::from_millis(200);
/// How long a waiter's place outlives its last renewal.
pub(super) const PLACE_TTL: Duration = Duration::from_millis(1500);
/// The longest a waiter waits before subscribing again after a failure.
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(2);
/// How soon cancellation is noticed.
const CANCEL_CHECK: Duration = Duration::from_millis(50);

impl RedisPool {
    pub(crate) fn acquire_slow(
        &self,
        deadline: Option<Instant>,
        cancel: &CancelToken,
    ) -> Result<u32> {
        let started = Instant::now();
        let token = token();
        let sent = Instant::now();
        let maybe_owned = match self.shared.acquire_once(&token, true, false, deadline) {
            Ok(slot) if slot >= 0 => return self.hold(slot, token, sent),
            Ok(_) => false,
            // A hiccup (a timeout under load, a failover): the wait below
            // rides it out for up to a lease time.
            Err(Error::Backend { .. }) => true,
            Err(e) => return Err(e),
        };
        let outcome = self.wait(&token, started, deadline, cancel, maybe_owned);
        match &outcome {
            Ok(_) => self.record_wait(started.elapsed()),
            Err(e) => self.shared.leave(&token, e.is_timeout(), deadline),
        }
        outcome
    }

    fn wait(
        &self,
        token: &str,
        started: Instant,
        deadline: Option<Instant>,
        cancel: &CancelToken,
        mut maybe_owned: bool,
    ) -> Result<u32> {
        let shared = &self.shared;
        let mut backoff = Duration::from_millis(50);
        let mut failing_since: Option<Instant> = None;
        loop {
            // (Re)subscribe before queueing, so no notification slips
            // between; without a subscription the loop below polls. Past
            // the deadline, only the last try below is left: no need.
            let due = deadline.is_some_and(|d| Instant::now() >= d);
            let connected = (!due).then(|| {
                let limit = shared.connector.limit(deadline);
                shared.connector.connect_within(limit)
            });
            let mut conn = match connected {
                None => None,
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => {
                    tracing::warn!(pool = %shared.name, error = %redact_redis(&e.to_string()), "cannot subscribe to slot notifications; polling");
                    None
                }
            };
            let mut pubsub = conn.as_mut().and_then(|c| {
                let mut ps = c.as_pubsub();
                match ps.subscribe(&shared.keys.channel) {
                    Ok(()) => Some(ps),
                    Err(e) => {
                        tracing::warn!(pool = %shared.name, error = %redact_redis(&e.to_string()), "cannot subscribe to slot notifications; polling");
                        None
                    }
                }
            });
            let retry_subscription_at = Instant::now() + backoff;
            if pubsub.is_some() {
                backoff = Duration::from_millis(50);
            } else {
                backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
            }
            loop {
                let sent = Instant::now();
                match shared.acquire_once(token, false, maybe_owned, deadline) {
                    Ok(slot) if slot >= 0 => {
                        return self.hold(slot, token.to_string(), sent);
                    }
                    Ok(_) => failing_since = None,
                    // The server may be restarting: keep waiting (and
                    // subscribe again) until the deadline.
                    Err(e @ Error::Backend { .. }) => {
                        // It may have taken a slot whose reply was lost.
                        maybe_owned = true;
                        let since = *failing_since.get_or_insert(sent);
                        if since == sent {
                            tracing::warn!(pool = %shared.name, error = %e, "cannot reach Redis while waiting for a slot; retrying");
                        }
                        // Give up once the server has been unreachable for
                        // a whole lease: it is down, not hiccuping.
                        if sent.duration_since(since) >= shared.timing.lease {
                            return Err(e);
                        }
                    }
                    Err(e) => return Err(e),
                }
                if cancel.is_cancelled() {
                    return Err(Error::cancelled(&shared.name));
                }
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    // Not asked of a server that just failed to answer: it
                    // would cost another call timeout past the deadline.
                    let stats = failing_since.is_none().then(|| self.stats().ok()).flatten();
                    return Err(Error::Timeout {
                        pool: shared.name.clone(),
                        waited: started.elapsed(),
                        capacity: self.capacity(),
                        active: stats.as_ref().map_or(0, |s| s.active),
                        waiting: stats.as_ref().map_or(1, |s| s.waiting),
                    });
                }
                let mut next_poll = now + FALLBACK;
                if let Some(d) = deadline {
                    next_poll = next_poll.min(d);
                }
                let Some(ps) = pubsub.as_mut() else {
                    // No subscription: poll, and subscribe again when due.
                    sleep_until(next_poll.min(now + CANCEL_CHECK), cancel);
                    if Instant::now() >= retry_subscription_at || failing_since.is_some() {
                        break;
                    }
                    continue;
                };
                let mut resubscribe = false;
                loop {
                    let now = Instant::now();
                    if now >= next_poll || cancel.is_cancelled() {
                        break;
                    }
                    let wait = (next_poll - now)
                        .min(CANCEL_CHECK)
                        .max(Duration::from_millis(1));
                    let _ = ps.set_read_timeout(Some(wait));
                    match ps.get_message() {
                        Ok(msg) => {
                            let payload: String = msg.get_payload().unwrap_or_default();
                            if payload.split(' ').any(|t| t == token) {
                                break;
                            }
                        }
                        Err(e) if e.is_timeout() => {}
                        Err(e) => {
                            tracing::warn!(pool = %shared.name, error = %redact_redis(&e.to_string()), "lost the slot notification channel; subscribing again");
                            resubscribe = true;
                            break;
                        }
                    }
                }
                if resubscribe {
                    break;
                }
            }
        }
    }

    fn record_wait(&self, waited: Duration) {
        let ms = waited.as_millis() as u64;
        let bucket = WAIT_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(WAIT_BOUNDS_MS.len());
        let k = &self.shared.keys;
        // One command (EVAL), not a pipeline: on a cluster whose pool slot
        // is migrating, ASKING covers only the next command, so the other
        // counters of a pipeline would be refused and the histogram torn.
        let _ = self.shared.command("recording a wait", |c| {
            redis::cmd("EVAL")
                .arg(RECORD_WAIT)
                .arg(1)
                .arg(&k.stats)
                .arg(ms)
                .arg(format!("b{bucket}"))
                .query::<()>(c)
        });
    }
}

/// Counts one finished wait of ARGV[1] ms in histogram bucket ARGV[2].
const RECORD_WAIT: &str = "redis.call('HINCRBY', KEYS[1], 'waited', 1) \
    redis.call('HINCRBY', KEYS[1], 'wait_sum_ms', ARGV[1]) \
    redis.call('HINCRBY', KEYS[1], ARGV[2], 1)";

fn sleep_until(until: Instant, cancel: &CancelToken) {
    while !cancel.is_cancelled() {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(CANCEL_CHECK));
    }
}
