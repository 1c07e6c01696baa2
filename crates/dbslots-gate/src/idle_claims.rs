//! How many connections `--idle-timeout` closes at once: one per client
//! waiting, not every idle connection the moment one client queues.
//!
//! A connection idle past the timeout asks for a claim before it closes; it
//! gets one while the claims made within the last [`HOLD`] are fewer than
//! the clients waiting. A claim counts for [`HOLD`] after it was made: long
//! enough for the freed slot to reach its waiter and for the waiter counts
//! to show it (the pool's own waiters are read once a second). Five
//! waiters close five idle connections; the others stay open, so the
//! clients behind them (PHP's persistent connections, say) are not made to
//! reconnect for nothing. A client that queues right after a claim may
//! wait up to [`HOLD`] longer for its idle connection to be closed.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// How long a claim counts against the waiters.
pub(crate) const HOLD: Duration = Duration::from_millis(1100);

/// Closes claimed for waiters, by when they were claimed (the gate's
/// coarse clock, ms).
#[derive(Debug, Default)]
pub(crate) struct IdleClaims {
    made: Mutex<VecDeque<u64>>,
}

impl IdleClaims {
    /// Whether a connection may close now, at `now_ms`, for one of
    /// `waiting` clients; if so, the claim is counted.
    pub(crate) fn claim(&self, now_ms: u64, waiting: u64) -> bool {
        let hold = HOLD.as_millis() as u64;
        // Nothing can panic while this is held: a poisoned lock is intact.
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        while made
            .front()
            .is_some_and(|&at| now_ms.saturating_sub(at) >= hold)
        {
            made.pop_front();
        }
        if (made.len() as u64) < waiting {
            made.push_back(now_ms);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_close_per_waiter_until_the_claims_have_had_time_to_show() {
        let c = IdleClaims::default();
        assert!(!c.claim(0, 0), "nobody waits");
        assert!(c.claim(0, 2));
        assert!(c.claim(10, 2));
        assert!(!c.claim(20, 2), "two waiters, two closes");
        // The waiter counts have not caught up yet: still two.
        assert!(!c.claim(1000, 2));
        // The first claim has lapsed, the second not yet.
        assert!(!c.claim(1100, 1));
        assert!(c.claim(1100, 2));
        // Past the hold, what the counts say is believed again.
        assert!(c.claim(2200, 1));
        assert!(!c.claim(2205, 1));
    }
}
