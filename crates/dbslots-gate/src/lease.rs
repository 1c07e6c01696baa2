//! Relayed connections whose slot is a lease (a `redis://` pool): when a
//! lease is lost, its connection is closed.
//!
//! # Implementation Details
//!
//! A lease is lost when the gate could not renew it in time (cut off from
//! Redis, paused) or Redis no longer has it; from then on the pool may give
//! the slot to someone else, so the connection it guarded must go before
//! the server sees one connection too many. The holder learns this from its
//! own clock, a safety margin before the server can hand the lease on
//! ([`Pool::lease_margin`]), without asking the network.
//!
//! The slots of relayed connections are kept here, not in their tasks: one
//! watcher task per gate looks at every lease a few times per margin (a
//! local check, no network) and wakes only the connections whose lease is
//! gone, so 10,000 relayed connections cost one timer, not 10,000. A
//! connection takes its slot back when it ends, after closing its sockets,
//! and releases it. A pool of locks (a directory) cannot lose a slot: there
//! nothing is kept here and no watcher runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dbslots_core::{Pool, Slot};
use tokio::sync::Notify;

/// The leases of a gate's relayed connections.
pub(crate) struct Leases {
    /// How often the watcher looks; `None` for a pool of locks.
    step: Option<Duration>,
    held: Mutex<HashMap<u64, Held>>,
}

struct Held {
    slot: Slot,
    lost: Arc<Notify>,
    told: bool,
}

/// A relayed connection's slot: kept by the connection itself (a lock), or
/// by [`Leases`] while the watcher looks after it (a lease).
pub(crate) enum Kept {
    Here(Slot),
    Watched { id: u64, lost: Arc<Notify> },
}

impl Leases {
    pub(crate) fn new(pool: &Pool) -> Leases {
        Leases {
            // Four looks per margin: a lost lease is noticed within a
            // quarter of the time the connection has left to close.
            step: pool
                .lease_margin()
                .map(|m| (m / 4).clamp(Duration::from_millis(20), Duration::from_millis(500))),
            held: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Held>> {
        // Every change is one insert or remove: a panic cannot tear it.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `slot` for connection `id` (watched when it is a lease).
    pub(crate) fn keep(&self, id: u64, slot: Slot) -> Kept {
        if self.step.is_none() {
            return Kept::Here(slot);
        }
        let lost = Arc::new(Notify::new());
        self.lock().insert(
            id,
            Held {
                slot,
                lost: lost.clone(),
                told: false,
            },
        );
        Kept::Watched { id, lost }
    }

    /// Gives the slot back to its connection (to be released).
    pub(crate) fn take(&self, kept: Kept) -> Option<Slot> {
        match kept {
            Kept::Here(slot) => Some(slot),
            Kept::Watched { id, .. } => self.lock().remove(&id).map(|h| h.slot),
        }
    }

    /// Looks at every lease until the gate stops; wakes the connections
    /// whose lease is lost. Returns at once for a pool of locks.
    pub(crate) async fn watch(&self, stopping: impl std::future::Future<Output = ()>) {
        let Some(step) = self.step else { return };
        let mut tick = tokio::time::interval(step);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut stopping => return,
            }
            for held in self.lock().values_mut() {
                // A zero wait: the holder's own clock, no network.
                if !held.told && held.slot.wait_lost(Duration::ZERO) {
                    held.told = true;
                    held.lost.notify_one();
                }
            }
        }
    }
}

impl Kept {
    /// Resolves when the slot is lost (never for a lock).
    pub(crate) async fn lost(&self) {
        match self {
            Kept::Here(_) => std::future::pending().await,
            Kept::Watched { lost, .. } => lost.notified().await,
        }
    }
}
