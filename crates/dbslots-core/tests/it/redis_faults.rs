//! The Redis pool when the server loses state, and waiters under faults.

use std::time::{Duration, Instant};

use dbslots_core::{Pool, PoolOptions};

use crate::redis::{LEASE_MS, redis_url, unique_pool};
use crate::support::{Holder, Outcome};

fn lease() -> Duration {
    Duration::from_millis(LEASE_MS)
}

/// A plain connection to the server behind `url`, for what a test does
/// behind the pool's back.
pub fn admin(url: &str) -> ::redis::Connection {
    ::redis::Client::open(url)
        .expect("client")
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect")
}

pub fn pool_name(addr: &str) -> String {
    addr.split("pool=")
        .nth(1)
        .and_then(|r| r.split('&').next())
        .expect("pool=NAME")
        .to_string()
}

pub fn quarantines(conn: &mut ::redis::Connection, addr: &str) -> u64 {
    ::redis::cmd("HGET")
        .arg(format!("dbslots:{{{}}}:stats", pool_name(addr)))
        .arg("quarantines")
        .query::<Option<u64>>(conn)
        .expect("HGET")
        .unwrap_or(0)
}

/// After a loss of state, nobody is admitted until the old holders have
/// been told (`told` checks them), and admission resumes afterwards.
fn assert_quarantined_then_admitted(newcomer: &Pool, holder: &mut Holder, longest: Duration) {
    let lost_at = Instant::now();
    let early = newcomer.try_acquire().expect("no NotFound, no error");
    assert!(
        early.is_none(),
        "a newcomer got a slot while the old holder still believes it holds one"
    );
    let slot = newcomer
        .blocking_acquire_timeout(longest * 4)
        .expect("admission resumes after the quarantine");
    let after = lost_at.elapsed();
    assert!(
        after >= longest * 3 / 4,
        "admitted {after:?} after the loss: less than the longest lease {longest:?}"
    );
    let told = holder.check();
    assert!(
        told.as_ref().is_err_and(|l| l.starts_with("LOST")),
        "{told:?}"
    );
    drop(slot);
}

#[test]
fn open_handles_recover_from_a_restart_and_quarantine_for_the_longest_lease() {
    let _serial = crate::support::timing_sensitive();
    let Some(mut server) = dbslots_testkit::private_redis() else {
        return;
    };
    // The holder uses a lease three times the newcomer's: the quarantine
    // must follow the longest lease recorded in the pool, not the
    // newcomer's own.
    let long = lease() * 3;
    let base = unique_pool(&server.url());
    let holder_addr = format!("{base}&lease_ms={}", long.as_millis());
    let opts = PoolOptions::new().capacity(1);
    let mut holder = Holder::spawn(
        &{
            Pool::open(&holder_addr, opts.clone()).expect("create");
            holder_addr.clone()
        },
        None,
    );
    assert_eq!(holder.outcome(), Outcome::Held(0));
    // Opened before the restart: it has read the pool's longest lease.
    let newcomer = Pool::open(&base, PoolOptions::new()).expect("open");
    server.restart().expect("restart redis");
    assert_eq!(
        newcomer
            .stats()
            .expect("stats answer after a restart")
            .capacity,
        1
    );
    assert_quarantined_then_admitted(&newcomer, &mut holder, long);
}

#[test]
fn a_restore_of_an_older_snapshot_quarantines() {
    let _serial = crate::support::timing_sensitive();
    let Some(mut server) = dbslots_testkit::private_redis() else {
        return;
    };
    let addr = unique_pool(&server.url());
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    // The snapshot has the pool, but not the acquisition that follows.
    let _: () = ::redis::cmd("SAVE")
        .query(&mut admin(&server.url()))
        .expect("SAVE");
    let mut holder = Holder::spawn(&addr, None);
    assert_eq!(holder.outcome(), Outcome::Held(0));
    server
        .restart()
        .expect("restart redis (it loads the snapshot)");
    let mut conn = admin(&server.url());
    let meta: Option<u32> = ::redis::cmd("HGET")
        .arg(format!("dbslots:{{{}}}:meta", pool_name(&addr)))
        .arg("capacity")
        .query(&mut conn)
        .expect("HGET");
    assert_eq!(meta, Some(1), "the snapshot was restored");
    assert_quarantined_then_admitted(&pool, &mut holder, lease());
    assert!(quarantines(&mut conn, &addr) >= 1);
}

#[test]
fn an_evicted_lease_quarantines() {
    let _serial = crate::support::timing_sensitive();
    let Some(url) = redis_url() else { return };
    let addr = unique_pool(&url);
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let mut holder = Holder::spawn(&addr, None);
    assert_eq!(holder.outcome(), Outcome::Held(0));
    let mut conn = admin(&url);
    let _: () = ::redis::cmd("DEL")
        .arg(format!("dbslots:{{{}}}:leases", pool_name(&addr)))
        .query(&mut conn)
        .expect("DEL");
    assert_quarantined_then_admitted(&pool, &mut holder, lease());
}

#[test]
fn waiting_without_limit_for_a_lease_to_be_lost_returns_when_it_is() {
    let Some(url) = redis_url() else { return };
    let addr = unique_pool(&url);
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let slot = pool.try_acquire().expect("try").expect("free");
    let mut conn = admin(&url);
    let _: () = ::redis::cmd("DEL")
        .arg(format!("dbslots:{{{}}}:leases", pool_name(&addr)))
        .query(&mut conn)
        .expect("DEL");
    let started = Instant::now();
    // Duration::MAX: "forever", which no Instant can hold.
    assert!(slot.wait_lost(Duration::MAX), "the evicted lease is lost");
    assert!(started.elapsed() < lease() * 2, "{:?}", started.elapsed());
}

/// The address of the test Redis at `url` (`redis://HOST:PORT/...`), for a
/// proxy in front of it.
pub fn server_addr(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("redis://")
        .split('/')
        .next()
        .expect("host:port")
        .parse()
        .expect("a socket address")
}

#[test]
fn an_acquisition_whose_reply_was_lost_takes_one_slot_not_two() {
    let _serial = crate::support::timing_sensitive();
    let Some(url) = redis_url() else { return };
    // A lease long enough that a slot taken and forgotten stays visible.
    let addr = unique_pool(&format!("{url}?lease_ms=6000"));
    let direct = Pool::open(&addr, PoolOptions::new().capacity(2)).expect("create");
    let server = server_addr(&url);
    let proxy = dbslots_testkit::FreezableProxy::start(server).expect("proxy");
    let through = addr.replacen(&server.port().to_string(), &proxy.port().to_string(), 1);
    let pool = Pool::open(&through, PoolOptions::new()).expect("open through the proxy");
    assert_eq!(pool.stats().expect("stats").active, 0);

    // The server carries out the acquisition but its reply is lost; the
    // acquirer tries again, with the same token, once the network heals.
    proxy.freeze_replies();
    let acquiring = std::thread::spawn(move || {
        pool.blocking_acquire_timeout(Duration::from_secs(30))
            .map(|slot| (slot, pool))
    });
    std::thread::sleep(Duration::from_millis(300));
    proxy.thaw();
    let (slot, _pool) = acquiring
        .join()
        .expect("acquirer")
        .expect("the acquisition succeeds once replies pass");
    let stats = direct.stats().expect("stats");
    assert_eq!(
        stats.active, 1,
        "one acquisition holds {} slots: {:?}",
        stats.active, stats.holders
    );
    drop(slot);
    assert_eq!(direct.stats().expect("stats").active, 0);
}

#[test]
fn resize_after_the_keys_vanished_quarantines() {
    let _serial = crate::support::timing_sensitive();
    let Some(url) = redis_url() else { return };
    let addr = unique_pool(&url);
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let mut holder = Holder::spawn(&addr, None);
    assert_eq!(holder.outcome(), Outcome::Held(0));
    let mut conn = admin(&url);
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("dbslots:{{{}}}:*", pool_name(&addr)))
        .query(&mut conn)
        .expect("KEYS");
    let _: () = ::redis::cmd("DEL")
        .arg(&keys)
        .query(&mut conn)
        .expect("DEL");
    assert_eq!(pool.resize(2).expect("resize restores the pool"), 1);
    assert_eq!(pool.stats().expect("stats").capacity, 2);
    assert_quarantined_then_admitted(&pool, &mut holder, lease());
}

#[test]
fn a_dead_waiter_gives_up_its_place_within_two_seconds() {
    let _serial = crate::support::timing_sensitive();
    let Some(url) = redis_url() else { return };
    let addr = unique_pool(&url);
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let slot = pool.try_acquire().expect("try").expect("free");
    let waiter = Holder::spawn(&addr, None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.stats().expect("stats").waiting < 1 {
        assert!(Instant::now() < deadline, "the waiter never queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    let killed = Instant::now();
    waiter.crash();
    drop(slot);
    // The dead waiter was first in line; the next one gets past it.
    let next = pool
        .blocking_acquire_timeout(Duration::from_secs(5))
        .expect("the dead waiter's place lapses");
    let after = killed.elapsed();
    assert!(
        after <= Duration::from_secs(2),
        "the dead waiter held its place for {after:?}"
    );
    drop(next);
}

#[test]
fn a_waiter_subscribes_again_after_its_connection_dies_and_is_woken_by_notification() {
    let _serial = crate::support::timing_sensitive();
    let Some(url) = redis_url() else { return };
    let addr = unique_pool(&url);
    waiters_subscribe_again_and_are_woken(&addr, &mut admin(&url));
}

/// Five hand-offs, each to a waiter whose subscription was cut (with
/// `CLIENT KILL` on `conn`, the server the waiters subscribe on): every
/// one subscribes again and is woken by a notification, not by a poll.
pub fn waiters_subscribe_again_and_are_woken(addr: &str, conn: &mut ::redis::Connection) {
    let channel = format!("dbslots:{{{}}}:events", pool_name(addr));
    let pool = Pool::open(addr, PoolOptions::new().capacity(1)).expect("create");
    let subscribers = |conn: &mut ::redis::Connection| -> i64 {
        let v: (String, i64) = ::redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query(conn)
            .expect("NUMSUB");
        v.1
    };
    let wait_for = |conn: &mut ::redis::Connection, n: i64| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while subscribers(conn) != n {
            assert!(Instant::now() < deadline, "never {n} subscribers");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let mut hand_offs = Vec::new();
    let mut slot = pool.try_acquire().expect("try").expect("free");
    for _ in 0..5 {
        let p = pool.clone();
        let waiter = std::thread::spawn(move || {
            let s = p
                .blocking_acquire_timeout(Duration::from_secs(10))
                .expect("woken");
            (Instant::now(), s)
        });
        wait_for(conn, 1);
        // Cut the waiter's subscription; it must subscribe again.
        let killed: i64 = ::redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query(conn)
            .expect("CLIENT KILL");
        assert!(killed >= 1);
        std::thread::sleep(Duration::from_millis(20));
        wait_for(conn, 1);
        let released = Instant::now();
        drop(slot);
        let (got_at, got) = waiter.join().expect("waiter");
        hand_offs.push(got_at - released);
        slot = got;
    }
    hand_offs.sort();
    // The fallback poll runs every 200 ms: a median far below it means the
    // waiters were woken by notifications on their new subscriptions.
    assert!(
        hand_offs[2] < Duration::from_millis(60),
        "hand-offs after re-subscribing: {hand_offs:?}"
    );
}

#[test]
fn wait_replicas_counts_an_acquisition_only_once_replicas_have_it() {
    let _serial = crate::support::timing_sensitive();
    let Some(master) = dbslots_testkit::private_redis() else {
        return;
    };
    let Some(replica) = dbslots_testkit::private_redis_with(dbslots_testkit::RedisOptions {
        replica_of: Some(master.port()),
        ..Default::default()
    }) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replica
        .command("INFO replication")
        .is_ok_and(|i| i.contains("master_link_status:up"))
    {
        assert!(Instant::now() < deadline, "the replica never synced");
        std::thread::sleep(Duration::from_millis(50));
    }
    let acked = unique_pool(&format!("{}?lease_ms=3000&wait_replicas=1", master.url()));
    let pool = Pool::open(&acked, PoolOptions::new().capacity(1)).expect("create");
    let slot = pool
        .blocking_acquire_timeout(Duration::from_secs(10))
        .expect("one replica acknowledges");
    assert!(slot.check().is_ok());
    // The replica has the lease the moment the acquisition returns.
    let leases = replica
        .command(&format!("ZCARD dbslots:{{{}}}:leases", pool_name(&acked)))
        .expect("ZCARD on the replica");
    assert_eq!(leases, "1");
    drop(slot);
    // Asking for more replicas than there are: the acquisition fails, says
    // why, and leaves the slot free.
    let unacked = unique_pool(&format!("{}?lease_ms=3000&wait_replicas=2", master.url()));
    let pool = Pool::open(&unacked, PoolOptions::new().capacity(1)).expect("create");
    std::thread::sleep(Duration::from_millis(3100));
    let err = pool
        .try_acquire()
        .expect_err("not acknowledged")
        .to_string();
    assert!(err.contains("replicas"), "{err}");
    assert_eq!(pool.stats().expect("stats").active, 0);
}

/// Scripts the server has run for clients (`EVAL`/`EVALSHA` calls in
/// `INFO commandstats`; commands inside scripts are counted apart).
fn scripts_run(server: &dbslots_testkit::RedisServer) -> u64 {
    server
        .command("INFO commandstats")
        .expect("INFO")
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[test]
fn an_uncontended_acquire_and_release_take_two_round_trips() {
    let _serial = crate::support::timing_sensitive();
    let Some(server) = dbslots_testkit::private_redis() else {
        return;
    };
    let addr = unique_pool(&format!("{}?lease_ms=10000", server.url()));
    let pool = Pool::open(&addr, PoolOptions::new().capacity(2)).expect("create");
    // Warm up: the connection is made and the scripts are loaded.
    let mut slot = pool
        .blocking_acquire_timeout(Duration::from_secs(15))
        .expect("slot");
    drop(slot);
    let rounds = 20;
    let before = scripts_run(&server);
    let started = Instant::now();
    for _ in 0..rounds {
        slot = pool.try_acquire().expect("try").expect("free");
        drop(slot);
    }
    let used = scripts_run(&server) - before;
    // One EVALSHA each way and nothing else on the way (the path sends no
    // other command); the renewer may have renewed once in between.
    let renewals = u64::from(started.elapsed() >= Duration::from_millis(1600));
    assert!(
        used <= 2 * rounds + renewals,
        "{used} scripts for {rounds} acquire+release pairs"
    );
    assert!(used >= 2 * rounds, "{used}");
}

/// `meta` is a hash anybody who can write the server can change (a typo in
/// `redis-cli`, a script of an operator): a capacity dbslots cannot use is
/// named as the problem, with where it is and what to do, like an
/// impossible capacity in a file pool's `pool.json`, rather than taken as it
/// is (0: nobody is ever admitted; above the maximum) or failing with the
/// client library's "Incompatible type".
#[test]
fn a_capacity_changed_behind_the_pools_back_is_named_as_the_problem() {
    let Some(url) = redis_url() else { return };
    let addr = unique_pool(&url);
    let pool = Pool::open(&addr, PoolOptions::new().capacity(2)).expect("create");
    let meta = format!("dbslots:{{{}}}:meta", pool_name(&addr));
    let mut conn = admin(&url);
    let set = |conn: &mut ::redis::Connection, field: &str, value: &str| {
        let _: () = ::redis::cmd("HSET")
            .arg(&meta)
            .arg(field)
            .arg(value)
            .query(conn)
            .expect("HSET");
    };
    for bad in ["0", "-3", "abc", "2.5", "4097", "4294967296", ""] {
        set(&mut conn, "capacity", bad);
        for err in [
            Pool::open(&addr, PoolOptions::new()).expect_err("an unusable capacity"),
            pool.stats().expect_err("an unusable capacity"),
        ] {
            let text = err.to_string();
            assert!(
                text.contains(&format!("{bad:?}"))
                    && text.contains(&meta)
                    && text.contains("1 to 4096")
                    && !text.contains("Incompatible type"),
                "{bad:?}: {text}"
            );
        }
    }
    // A longest lease that is no number is not worth refusing the pool
    // for: the scripts take it as none recorded.
    set(&mut conn, "capacity", "3");
    set(&mut conn, "max_lease", "abc");
    let reopened = Pool::open(&addr, PoolOptions::new()).expect("open");
    assert_eq!(reopened.capacity(), 3);
    assert_eq!(pool.stats().expect("stats").capacity, 3);
    let slot = reopened.try_acquire().expect("try").expect("a free slot");
    drop(slot);
}

/// The same change under handles that are open already: an acquisition
/// takes nothing beyond the largest capacity, and a waiter on a capacity
/// of 0 (which admits nobody) gives up with the same message, as on a
/// server that does not answer, instead of waiting for good.
#[test]
fn open_handles_refuse_a_capacity_changed_behind_the_pools_back() {
    let _serial = crate::support::timing_sensitive();
    let Some(url) = redis_url() else { return };
    let addr = unique_pool(&url);
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let meta = format!("dbslots:{{{}}}:meta", pool_name(&addr));
    let mut conn = admin(&url);
    let mut set = |value: &str| {
        let _: () = ::redis::cmd("HSET")
            .arg(&meta)
            .arg("capacity")
            .arg(value)
            .query(&mut conn)
            .expect("HSET");
    };
    set("99999");
    let err = pool.try_acquire().expect_err("past the largest capacity");
    assert!(err.to_string().contains("\"99999\""), "{err}");
    set("0");
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = pool.clone();
    std::thread::spawn(move || {
        let _ = tx.send(waiter.blocking_acquire().map(|s| s.index()));
    });
    let outcome = rx
        .recv_timeout(lease() * 10)
        .expect("the waiter gave up within a few leases");
    let err = outcome.expect_err("a capacity of 0 admits nobody");
    assert!(
        err.to_string().contains("\"0\"") && err.to_string().contains("1 to 4096"),
        "{err}"
    );
    set("1");
    let stats = pool.stats().expect("stats");
    assert_eq!((stats.active, stats.waiting), (0, 0), "{stats:?}");
}

/// A key of the pool overwritten with another type (`SET` on the sorted set
/// of leases): the server's WRONGTYPE answer is named with what to do. The
/// reply itself ends in "on @user_script:4.", which the URL redaction took
/// for the end of a password and hid with everything else, leaving
/// `"WRONGTYPE":***@user_script:4.`.
#[test]
fn a_key_of_another_type_is_named_as_the_problem() {
    let Some(url) = redis_url() else { return };
    let addr = unique_pool(&url);
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let leases = format!("dbslots:{{{}}}:leases", pool_name(&addr));
    let mut conn = admin(&url);
    let _: () = ::redis::cmd("SET")
        .arg(&leases)
        .arg("x")
        .query(&mut conn)
        .expect("SET");
    for err in [
        pool.stats().expect_err("WRONGTYPE"),
        pool.try_acquire().expect_err("WRONGTYPE"),
    ] {
        let text = err.to_string();
        assert!(
            text.contains("WRONGTYPE")
                && text.contains("a key of the pool holds another type")
                && !text.contains("***"),
            "{text}"
        );
    }
    let _: () = ::redis::cmd("DEL")
        .arg(&leases)
        .query(&mut conn)
        .expect("DEL");
    assert!(pool.try_acquire().expect("try").is_some());
}
