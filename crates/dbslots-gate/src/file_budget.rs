//! The open-file budget: how many clients the gate may accept so that a
//! client given a slot can still open its connection to the server.
//!
//! Every accepted client costs a descriptor while it waits, and a relayed
//! one two more (the server's socket, and the slot's lock file in a file
//! pool); the pool's agents need a few while they wait for slots. A gate
//! that accepted until `accept(2)` said `EMFILE` would have nothing left for
//! those: the next client given a slot could not reach the server, and the
//! pool's waiters could not open their files, so queued clients would be
//! refused with errors. Instead the accept loop stops short of the limit,
//! leaving room for the worst case (every accepted client relayed, up to
//! the pool's capacity); the clients past it wait in the kernel's listen
//! backlog, not greeted yet, and are accepted in order as others close.

use std::time::Duration;

use rustix::process::{Resource, getrlimit};

/// Descriptors kept free beyond the reckoning (a log file reopened, a
/// Redis reconnect, a resolver).
const MARGIN: u64 = 16;

/// Descriptors each agent of the pool may hold while it waits (its waiter
/// file, and a directory handle while it opens it).
const PER_AGENT: u64 = 2;

/// Slot descriptors a file pool handle keeps open after release (its
/// cache, `dbslots-core`'s `file/fds.rs`).
const SLOT_CACHE: u64 = 128;

/// How often a gate at its budget looks again without being woken (the
/// pool's capacity may have grown).
pub(crate) const RECHECK: Duration = Duration::from_secs(1);

/// The gate's reckoning of its open files.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileBudget {
    /// The soft limit on open files; `None`: unlimited.
    limit: Option<u64>,
    /// Descriptors that are not clients': those open when the gate was
    /// bound, the agents', the slot cache's and the margin.
    fixed: u64,
}

impl FileBudget {
    /// Reckons with this process's limit and the descriptors it has open
    /// now (call it once everything but the clients is open).
    pub(crate) fn measure(pool_agents: usize) -> FileBudget {
        let limit = getrlimit(Resource::Nofile).current;
        FileBudget::new(limit, open_descriptors(), pool_agents)
    }

    fn new(limit: Option<u64>, open_now: u64, pool_agents: usize) -> FileBudget {
        FileBudget {
            limit,
            fixed: open_now + PER_AGENT * pool_agents as u64 + MARGIN,
        }
    }

    /// Whether one more client fits beside `open` accepted ones, with a pool
    /// of `capacity` slots.
    pub(crate) fn admits(&self, open: u64, capacity: u32) -> bool {
        match self.limit {
            None => true,
            Some(limit) => self.needed(open + 1, capacity) <= limit,
        }
    }

    /// `(limit, needed)` when the limit leaves no room for even one client
    /// with a pool of `capacity` slots: a gate that would accept nobody.
    pub(crate) fn too_low_for_one(&self, capacity: u32) -> Option<(u64, u64)> {
        let limit = self.limit?;
        let needed = self.needed(1, capacity);
        (needed > limit).then_some((limit, needed))
    }

    /// How many clients fit at once with a pool of `capacity` slots
    /// (`None`: no limit), for the log.
    pub(crate) fn clients_max(&self, capacity: u32) -> Option<u64> {
        let limit = self.limit?;
        // `needed` grows with the clients: the last count that fits.
        let (mut lo, mut hi) = (0u64, limit);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if self.needed(mid, capacity) <= limit {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Some(lo)
    }

    /// The descriptors `clients` accepted clients may need at worst: each
    /// one its socket, as many as the pool has slots two more.
    fn needed(&self, clients: u64, capacity: u32) -> u64 {
        let capacity = u64::from(capacity);
        let relayed = clients.min(capacity);
        self.fixed + capacity.min(SLOT_CACHE) + clients + 2 * relayed
    }
}

/// How many descriptors this process has open (`/proc/self/fd`); 64 where
/// that cannot be read.
fn open_descriptors() -> u64 {
    match std::fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of the entries.
        Ok(entries) => (entries.count() as u64).saturating_sub(1),
        Err(_) => 64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_left_for_every_client_up_to_the_capacity_to_be_relayed() {
        // 20 open, 4 agents, 100 descriptors: 20 + 8 + 16 = 44 fixed, 2
        // cached slots; of 54 left, 4 go to relaying two clients.
        let b = FileBudget::new(Some(100), 20, 4);
        assert_eq!(b.clients_max(2), Some(50));
        assert!(b.admits(49, 2));
        assert!(!b.admits(50, 2));
        // A pool of 10 (10 cached slots): each client may be relayed (3
        // descriptors each) until 10 are, 1 each after that.
        assert_eq!(b.clients_max(10), Some(26));
        assert!(b.admits(25, 10));
        assert!(!b.admits(26, 10));
    }

    #[test]
    fn a_limit_too_low_for_anything_admits_nobody_and_no_limit_admits_all() {
        let b = FileBudget::new(Some(40), 30, 16);
        assert_eq!(b.clients_max(5), Some(0));
        assert!(!b.admits(0, 5));
        // 30 + 32 + 16 fixed, 5 cached slots, 3 for the client.
        assert_eq!(b.too_low_for_one(5), Some((40, 86)));
        assert_eq!(FileBudget::new(Some(100), 20, 4).too_low_for_one(2), None);
        let b = FileBudget::new(None, 30, 16);
        assert!(b.admits(u64::MAX / 8, u32::MAX));
        assert_eq!(b.clients_max(5), None);
        assert_eq!(b.too_low_for_one(5), None);
    }

    #[test]
    fn this_process_counts_its_own_descriptors() {
        // Other tests of this process open and close descriptors meanwhile
        // (a few at a time): 64 more are seen, give or take those.
        let before = open_descriptors();
        let files: Vec<_> = (0..64)
            .map(|_| std::fs::File::open("/proc/self/status").unwrap())
            .collect();
        let after = open_descriptors();
        assert!(
            (before + 48..=before + 80).contains(&after),
            "{before} then {after} with 64 more open"
        );
        drop(files);
    }
}
