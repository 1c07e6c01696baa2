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

/// Waiters are served in arrival order even when the ticket counter is
/// lost (evicted under an `allkeys-*` policy, deleted by hand) while
/// others wait: a newcomer's ticket must not rank before theirs.
#[test]
fn a_lost_ticket_counter_never_lets_a_newcomer_jump_the_queue() {
    let _serial = crate::support::timing_sensitive();
    let Some(url) = redis_url() else { return };
    let addr = unique_pool(&url);
    let name = crate::redis_faults::pool_name(&addr);
    let tickets = format!("dbslots:{{{name}}}:tickets");
    let queue = format!("dbslots:{{{name}}}:queue");
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let mut conn = admin(&url);
    let queued = |conn: &mut ::redis::Connection, n: u64| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let len: u64 = ::redis::cmd("ZCARD")
                .arg(&queue)
                .query(conn)
                .expect("ZCARD");
            if len == n {
                return;
            }
            assert!(Instant::now() < deadline, "never {n} waiters");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // A pool that has queued a hundred waiters before.
    let _: () = ::redis::cmd("SET")
        .arg(&tickets)
        .arg(100)
        .query(&mut conn)
        .expect("SET");
    let slot = pool.try_acquire().expect("try").expect("free");
    let waiter = |name: &'static str| {
        let p = pool.clone();
        std::thread::spawn(move || {
            let s = p
                .blocking_acquire_timeout(Duration::from_secs(10))
                .expect("served");
            let at = Instant::now();
            std::thread::sleep(Duration::from_millis(100));
            drop(s);
            (name, at)
        })
    };
    let first = waiter("first");
    queued(&mut conn, 1);
    let _: () = ::redis::cmd("DEL")
        .arg(&tickets)
        .query(&mut conn)
        .expect("DEL");
    let second = waiter("second");
    queued(&mut conn, 2);
    drop(slot);
    let mut served = [first.join().expect("first"), second.join().expect("second")];
    served.sort_by_key(|(_, at)| *at);
    assert_eq!(
        served.map(|(name, _)| name),
        ["first", "second"],
        "served out of arrival order"
    );
}

/// `stats()` counts a lease as held only until its expiry, to the
/// millisecond of the server's clock.
#[test]
fn stats_never_count_an_expired_lease_as_held() {
    let _serial = crate::support::timing_sensitive();
    let Some(url) = redis_url() else { return };
    let addr = unique_pool(&url);
    let name = crate::redis_faults::pool_name(&addr);
    let pool = Pool::open(&addr, PoolOptions::new().capacity(2)).expect("create");
    let mut conn = admin(&url);
    // Late enough in a second of the server's clock that a lease that
    // expired a millisecond ago expired within this same second.
    let now_ms = loop {
        let (s, us): (u64, u64) = ::redis::cmd("TIME").query(&mut conn).expect("TIME");
        if (200_000..800_000).contains(&us) {
            break s * 1000 + us / 1000;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // A holder that died 100 ms ago; nobody has acquired since (no trim).
    let expired = now_ms - 100;
    let _: () = ::redis::pipe()
        .cmd("ZADD")
        .arg(format!("dbslots:{{{name}}}:leases"))
        .arg(expired)
        .arg("1")
        .cmd("HSET")
        .arg(format!("dbslots:{{{name}}}:owners"))
        .arg("1")
        .arg(format!("deadbeef somehost 4242 {}", expired - 1000))
        .query(&mut conn)
        .expect("a lease that ran out");
    let stats = pool.stats().expect("stats");
    assert_eq!(
        stats.active, 0,
        "an expired lease counted as held: {:?}",
        stats.holders
    );
}

/// An acquisition with a timeout returns about when it was asked to,
/// whatever the network does.
#[test]
fn an_acquisition_with_a_timeout_returns_in_time_when_the_network_is_frozen() {
    let _serial = crate::support::timing_sensitive();
    let Some(url) = redis_url() else { return };
    let server = crate::redis_faults::server_addr(&url);
    // The default lease (10 s): a call may wait 833 ms for a reply.
    let name = format!("frozen-{}-{}", std::process::id(), line!());
    let direct = format!("{url}?pool={name}");
    let owner = Pool::open(&direct, PoolOptions::new().capacity(1)).expect("create");
    let _held = owner.try_acquire().expect("try").expect("free");
    let proxy = dbslots_testkit::FreezableProxy::start(server).expect("proxy");
    let through = direct.replacen(&server.port().to_string(), &proxy.port().to_string(), 1);
    let pool = Pool::open(&through, PoolOptions::new()).expect("open through the proxy");
    proxy.freeze();
    let asked = Duration::from_millis(200);
    let started = Instant::now();
    let got = pool.blocking_acquire_timeout(asked);
    let took = started.elapsed();
    assert!(got.is_err());
    assert!(
        took < asked + Duration::from_millis(900),
        "asked to wait {asked:?}, returned after {took:?}: {got:?}"
    );
}
