//! Leases as their holder sees them: when it must count its slot lost.
//!
//! # Implementation Details
//!
//! The server sets a lease's expiry to *its* now plus the lease time when
//! it runs the acquire or renew script, which is after the client sent the
//! request. So a holder that counts its lease valid until the moment it
//! **sent** the last successful renewal plus the lease, minus a safety
//! margin, always stops counting it before the server can hand the slot to
//! anyone else, whatever the network does afterwards: no answer is needed
//! to give the slot up. The margin (a third of the lease) covers the
//! difference of the two clocks' rates and the time a holder needs to stop
//! what the slot guards (`dbslots exec` stops its command inside it).
//!
//! Every Redis call of a holder is bounded: a quarter of the margin per
//! read or write, a third of it for a new connection (TLS handshake and
//! `AUTH` included), so the renewer retries several times before the local
//! deadline, and the deadline itself needs no call at all.

use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

/// The time budget derived from one lease time.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    /// The lease time.
    pub lease: Duration,
    /// How long before the server could expire a lease its holder counts
    /// it lost.
    pub margin: Duration,
    /// The longest one read or write of a Redis call may take.
    pub call_timeout: Duration,
    /// The longest a new connection (with its TLS handshake and `AUTH`)
    /// may take.
    pub connect_timeout: Duration,
    /// How often the renewer renews.
    pub renew_every: Duration,
}

impl Timing {
    pub fn new(lease: Duration) -> Timing {
        let margin = lease / 3;
        Timing {
            lease,
            margin,
            call_timeout: margin / 4,
            connect_timeout: margin / 3,
            renew_every: lease / 6,
        }
    }

    /// How long after sending a successful renewal the holder counts its
    /// lease valid.
    pub fn valid_for(&self) -> Duration {
        self.lease - self.margin
    }
}

/// A held lease.
pub(super) struct Lease {
    pub token: String,
    valid_for: Duration,
    lease: Duration,
    state: Mutex<State>,
    changed: Condvar,
    /// Held across a renewal's round trip, and by a release while it
    /// marks the lease released ([`Lease::released`]): so no renewal that
    /// still says "the server must have it" reaches the server after the
    /// release (it would find the lease gone and quarantine the pool).
    turn: Mutex<()>,
}

struct State {
    /// When the last successful acquisition or renewal was sent.
    acked_sent: Instant,
    /// Why the lease is known to be gone (the server said so).
    gone: Option<&'static str>,
}

impl Lease {
    pub fn new(token: String, sent: Instant, timing: &Timing) -> Lease {
        Lease {
            token,
            valid_for: timing.valid_for(),
            lease: timing.lease,
            state: Mutex::new(State {
                acked_sent: sent,
                gone: None,
            }),
            changed: Condvar::new(),
            turn: Mutex::new(()),
        }
    }

    /// The right to send a renewal: waits for one in flight when `patient`,
    /// else `None` while one is.
    pub fn turn(&self, patient: bool) -> Option<MutexGuard<'_, ()>> {
        if patient {
            Some(self.turn.lock().unwrap_or_else(|p| p.into_inner()))
        } else {
            match self.turn.try_lock() {
                Ok(g) => Some(g),
                Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            }
        }
    }

    /// Marks the lease released by its holder, once no renewal is in
    /// flight: renewals sent from now on do not claim the server must
    /// still have it.
    pub fn released(&self) {
        let _turn = self.turn(true);
        self.mark_gone("it was released");
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the server's copy of the lease must still be running for a
    /// request sent at `sent` (then a missing lease means the server lost
    /// state). A fiftieth of the lease allows for the clocks' rates.
    pub fn server_must_have_it(&self, sent: Instant) -> bool {
        let st = self.state();
        st.gone.is_none() && sent < st.acked_sent + self.lease - self.lease / 50
    }

    /// Records a successful renewal sent at `sent`; false when the lease
    /// was already lost (a late renewal does not bring it back: someone
    /// else may have been told it is free).
    pub fn renewed(&self, sent: Instant) -> bool {
        let mut st = self.state();
        if st.gone.is_some() || Instant::now() >= st.acked_sent + self.valid_for {
            return false;
        }
        if sent > st.acked_sent {
            st.acked_sent = sent;
        }
        true
    }

    /// Records that the server no longer has the lease; true the first time.
    pub fn mark_gone(&self, why: &'static str) -> bool {
        let mut st = self.state();
        let first = st.gone.is_none();
        if first {
            st.gone = Some(why);
        }
        drop(st);
        self.changed.notify_all();
        first
    }

    /// Why the lease is lost, if it is (the server said so, or its time ran
    /// out locally). Never waits for the network.
    pub fn lost(&self) -> Option<&'static str> {
        let st = self.state();
        if let Some(why) = st.gone {
            return Some(why);
        }
        (Instant::now() >= st.acked_sent + self.valid_for)
            .then_some("it was not renewed in time (the process was paused or cut off from Redis)")
    }

    /// Waits up to `timeout` for the lease to be lost; true when it is.
    pub fn wait_lost(&self, timeout: Duration) -> bool {
        // No deadline past what an Instant holds (`Duration::MAX`: forever).
        let until = Instant::now().checked_add(timeout);
        let mut st = self.state();
        loop {
            let now = Instant::now();
            let deadline = st.acked_sent + self.valid_for;
            if st.gone.is_some() || now >= deadline {
                return true;
            }
            if until.is_some_and(|u| now >= u) {
                return false;
            }
            let wait = until.map_or(deadline, |u| deadline.min(u)) - now;
            st = self
                .changed
                .wait_timeout(st, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
