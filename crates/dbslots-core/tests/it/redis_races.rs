//! The Redis pool when its own calls race each other.

use std::time::{Duration, Instant};

use dbslots_core::{Pool, PoolOptions};

use crate::redis::{redis_url, unique_pool};
use crate::redis_faults::{admin, quarantines};

/// A release is not a loss of state: a renewal the renewer thread sent
/// for a slot its holder was releasing at that moment (on the handle's
/// other connection) must not quarantine the pool. Quarantined, an empty
/// pool admits nobody for the longest lease.
#[test]
fn releasing_while_the_renewer_renews_never_quarantines_the_pool() {
    let _serial = crate::support::timing_sensitive();
    let Some(url) = redis_url() else { return };
    // The renewer renews every 100 ms, each lease of the handle in turn.
    let addr = unique_pool(&format!("{url}?lease_ms=600"));
    let capacity = 40;
    let pool = Pool::open(&addr, PoolOptions::new().capacity(capacity)).expect("create");
    let mut conn = admin(&url);
    let started = Instant::now();
    let mut round = 0u64;
    while started.elapsed() < Duration::from_secs(4) {
        let mut slots = Vec::new();
        for _ in 0..capacity {
            match pool.try_acquire().expect("try") {
                Some(s) => slots.push(s),
                None => panic!(
                    "round {round}: {} of {capacity} slots held by this handle and no other taken, yet no admission; the pool was quarantined {} times",
                    slots.len(),
                    quarantines(&mut conn, &addr)
                ),
            }
        }
        // Hold for a varying part of the renewer's period, then release
        // while a renewal pass may be under way.
        std::thread::sleep(Duration::from_millis(5 + (round * 37) % 100));
        drop(slots);
        round += 1;
    }
    assert_eq!(quarantines(&mut conn, &addr), 0);
}
