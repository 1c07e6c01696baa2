//! The Redis backend: one limit for processes on many hosts.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dbslots_core::{Error, Pool, PoolOptions};
use proptest::prelude::ProptestConfig;
use proptest_state_machine::prop_state_machine;

use crate::model::{Backend, System};
use crate::support::{Holder, Outcome, holder_exe};

/// Lease used by these tests: short enough to wait for, long enough for a
/// loaded 2-core machine to renew in time.
pub const LEASE_MS: u64 = 1000;

pub fn redis_url() -> Option<String> {
    dbslots_testkit::shared_redis()
}

pub fn unique_pool(base: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let sep = if base.contains('?') { '&' } else { '?' };
    let lease = if base.contains("lease_ms=") {
        String::new()
    } else {
        format!("&lease_ms={LEASE_MS}")
    };
    format!("{base}{sep}pool=t{}-{n}-{nanos}{lease}", std::process::id())
}

/// Redis pools on the shared test server: a killed holder's slot is free
/// once its lease has run out.
pub struct Leases;

impl Backend for Leases {
    fn fresh() -> (Box<dyn std::any::Any>, String) {
        let url = redis_url().expect("checked before the proptest runs");
        (Box::new(()), unique_pool(&url))
    }
    fn crash_latency() -> Duration {
        Duration::from_millis(LEASE_MS + 500)
    }
}

/// A TLS-only view of a Redis server of this test process (started once,
/// killed with the process): `rediss://127.0.0.1:PORT/0?ca=PATH`.
pub fn tls_url() -> Option<String> {
    static SERVER: std::sync::OnceLock<Option<dbslots_testkit::RedisServer>> =
        std::sync::OnceLock::new();
    let server = SERVER
        .get_or_init(|| {
            let server = dbslots_testkit::private_redis_with(dbslots_testkit::RedisOptions {
                tls: true,
                ..Default::default()
            });
            // A pool created on a server younger than its lease is
            // quarantined for the rest of the lease (the server may have
            // restarted and lost a pool whose holders still hold): wait
            // that out once, so tests that run first see a normal pool.
            if server.is_some() {
                std::thread::sleep(Duration::from_millis(TLS_LEASE_MS + 1000));
            }
            server
        })
        .as_ref()?;
    Some(format!(
        "rediss://127.0.0.1:{}/0?ca={}",
        server.tls_port().expect("started with TLS"),
        server.ca_path().expect("started with TLS").display()
    ))
}

/// Redis pools reached over TLS, with a lease whose connect timeout (a
/// ninth of it) leaves room for handshakes on a loaded machine.
pub struct TlsLeases;

const TLS_LEASE_MS: u64 = 2500;

impl Backend for TlsLeases {
    fn fresh() -> (Box<dyn std::any::Any>, String) {
        let url = tls_url().expect("checked before the proptest runs");
        (
            Box::new(()),
            unique_pool(&format!("{url}&lease_ms={TLS_LEASE_MS}")),
        )
    }
    fn crash_latency() -> Duration {
        Duration::from_millis(TLS_LEASE_MS + 500)
    }
}

#[test]
fn redis_pool_behaves_like_a_counting_semaphore() {
    let _serial = crate::support::timing_sensitive();
    if redis_url().is_none() {
        return;
    }
    redis_model();
}

#[test]
fn redis_pool_over_tls_behaves_like_a_counting_semaphore() {
    let _serial = crate::support::timing_sensitive();
    if tls_url().is_none() {
        return;
    }
    tls_model();
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 10,
        max_shrink_iters: 50,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    fn redis_model(sequential 1..14 => System<Leases>);
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 5,
        max_shrink_iters: 50,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    fn tls_model(sequential 1..14 => System<TlsLeases>);
}

#[test]
fn capacity_contract_and_holders_by_host() {
    let _serial = crate::support::timing_sensitive();
    let Some(url) = redis_url() else { return };
    let addr = unique_pool(&url);
    let pool = Pool::open(&addr, PoolOptions::new().capacity(2)).expect("create");
    let err = Pool::open(&addr, PoolOptions::new().capacity(3)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::CapacityMismatch {
                recorded: 2,
                requested: 3,
                ..
            }
        ),
        "{err}"
    );
    let mut a = Holder::spawn_on(&addr, None, "host-a");
    let mut b = Holder::spawn_on(&addr, None, "host-b");
    assert!(matches!(a.outcome(), Outcome::Held(_)));
    assert!(matches!(b.outcome(), Outcome::Held(_)));
    assert!(pool.try_acquire().expect("try").is_none());
    let err = pool
        .blocking_acquire_timeout(Duration::from_millis(100))
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let stats = pool.stats().expect("stats");
    assert_eq!(
        (stats.backend.as_str(), stats.capacity, stats.active),
        ("redis", 2, 2)
    );
    let mut hosts: Vec<_> = stats
        .holders
        .iter()
        .filter_map(|h| h.host.clone())
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["host-a", "host-b"]);
    assert!(stats.holders.iter().any(|h| h.pid == Some(a.child.id())));
    assert_eq!(stats.timeouts, 1);
    a.release();
    assert!(pool.try_acquire().expect("try").is_some());
    b.release();
    assert!(!addr.contains("***"));
}

#[test]
fn processes_on_many_hosts_never_exceed_the_capacity() {
    let _serial = crate::support::timing_sensitive();
    let Some(url) = redis_url() else { return };
    // Forty processes starting at once on a loaded 2-core machine: a lease
    // whose call timeouts allow for that (the bound does not depend on it).
    forty_processes_on_four_hosts_never_exceed_five_slots(&format!("{url}?lease_ms=5000"));
}

#[test]
fn processes_on_many_hosts_never_exceed_the_capacity_over_tls() {
    let _serial = crate::support::timing_sensitive();
    let Some(url) = tls_url() else { return };
    // Forty TLS handshakes at once on a loaded 2-core machine: a lease
    // whose call timeouts allow for that.
    forty_processes_on_four_hosts_never_exceed_five_slots(&format!("{url}&lease_ms=10000"));
}

pub fn forty_processes_on_four_hosts_never_exceed_five_slots(url: &str) {
    let addr = unique_pool(url);
    Pool::open(&addr, PoolOptions::new().capacity(5)).expect("create");
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = dir.path().join("counter");
    std::fs::write(&counter, [0u8; 8]).expect("counter");
    let children: Vec<_> = (0..40)
        .map(|i| {
            Command::new(holder_exe())
                .env("DBSLOTS_HOST", format!("host-{}", i % 4))
                .arg(&addr)
                .arg("burst")
                .arg("20")
                .arg(&counter)
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().expect("wait");
        assert!(out.status.success(), "{out:?}");
    }
    let bytes = std::fs::read(&counter).expect("counter");
    let max = u32::from_ne_bytes(bytes[4..8].try_into().expect("4 bytes"));
    assert!(max <= 5, "{max} holders at once on 5 slots");
    assert!(max >= 2, "no contention seen ({max})");
}

/// A fresh one-slot Redis pool whose slot a holder process has taken.
fn one_slot_held_by_another_process() -> Option<(Pool, Holder)> {
    let url = redis_url()?;
    let addr = unique_pool(&url);
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let mut h = Holder::spawn(&addr, None);
    assert_eq!(h.outcome(), Outcome::Held(0));
    Some((pool, h))
}

#[test]
fn a_killed_holder_loses_its_slot_after_the_lease_and_no_later() {
    let _serial = crate::support::timing_sensitive();
    let Some((pool, h)) = one_slot_held_by_another_process() else {
        return;
    };
    let killed = Instant::now();
    h.crash();
    assert!(
        pool.try_acquire().expect("try").is_none(),
        "the lease is still running"
    );
    let slot = pool
        .blocking_acquire_timeout(Duration::from_millis(LEASE_MS * 5))
        .expect("slot comes back after the lease");
    let after = killed.elapsed();
    assert!(
        after >= Duration::from_millis(LEASE_MS / 2),
        "came back too early: {after:?}"
    );
    assert_eq!(slot.index(), 0);
}

#[test]
fn a_paused_holder_is_told_it_lost_its_slot() {
    let _serial = crate::support::timing_sensitive();
    let Some((pool, mut h)) = one_slot_held_by_another_process() else {
        return;
    };
    assert_eq!(h.check(), Ok(()));
    let pid = h.child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // Someone else gets the slot once the lease has run out...
    let other = pool
        .blocking_acquire_timeout(Duration::from_millis(LEASE_MS * 5))
        .expect("the paused holder's lease runs out");
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // ...and the holder, resumed, is told so instead of carrying on.
    let told = h.check();
    assert!(
        told.as_ref().is_err_and(|l| l.starts_with("LOST")),
        "{told:?}"
    );
    assert_eq!(pool.stats().expect("stats").active, 1);
    drop(other);
}

#[test]
fn a_redis_restart_never_over_admits() {
    let _serial = crate::support::timing_sensitive();
    let Some(mut server) = dbslots_testkit::private_redis() else {
        return;
    };
    let addr = unique_pool(&server.url());
    let opts = PoolOptions::new().capacity(2);
    let pool = Pool::open(&addr, opts.clone()).expect("create");
    let mut holders: Vec<Holder> = (0..2)
        .map(|_| {
            let mut h = Holder::spawn(&addr, None);
            assert!(matches!(h.outcome(), Outcome::Held(_)));
            h
        })
        .collect();
    server.restart().expect("restart redis");
    // The pool's keys are gone with the restart; re-creating it must not
    // hand out slots the old holders still believe they have.
    let newcomer = Pool::open(&addr, opts.clone()).expect("re-create after restart");
    let early = newcomer.blocking_acquire_timeout(Duration::from_millis(LEASE_MS / 4));
    let lost: Vec<bool> = holders.iter_mut().map(|h| h.check().is_err()).collect();
    if early.is_ok() {
        assert!(
            lost.iter().all(|l| *l),
            "a newcomer got a slot while old holders still held theirs"
        );
    }
    drop(early);
    let slot = newcomer
        .blocking_acquire_timeout(Duration::from_millis(LEASE_MS * 5))
        .expect("admission resumes after the lease time");
    for h in &mut holders {
        let told = h.check();
        assert!(told.is_err(), "an old holder was not told its slot is gone");
    }
    drop(slot);
    drop(pool);
}

fn port_of(url: &str) -> u16 {
    url.rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("the test Redis URL is redis://127.0.0.1:PORT/0")
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

#[test]
fn a_holder_cut_off_by_a_black_hole_knows_before_anyone_else_gets_its_slot() {
    let _serial = crate::support::timing_sensitive();
    let Some(url) = redis_url() else { return };
    let lease = Duration::from_millis(2000);
    let proxy = dbslots_testkit::FreezableProxy::start(std::net::SocketAddr::from((
        [127, 0, 0, 1],
        port_of(&url),
    )))
    .expect("proxy");
    let name = format!("blackhole-{}-{}", std::process::id(), nanos());
    let direct = format!("{url}?pool={name}&lease_ms={}", lease.as_millis());
    let cut_off = format!(
        "redis://127.0.0.1:{}/0?pool={name}&lease_ms={}",
        proxy.port(),
        lease.as_millis()
    );
    let opts = PoolOptions::new().capacity(1);
    let holder_pool = Pool::open(&cut_off, opts.clone()).expect("open through the proxy");
    let margin = holder_pool.lease_margin().expect("a Redis pool has leases");
    let slot = holder_pool.try_acquire().expect("try").expect("free slot");
    let other = Pool::open(&direct, opts.clone()).expect("open directly");
    std::thread::sleep(lease / 2);
    assert!(slot.check().is_ok(), "renewed through the proxy");

    let frozen = Instant::now();
    proxy.freeze();
    let waiter = std::thread::spawn(move || {
        let got = other
            .blocking_acquire_timeout(lease * 3)
            .expect("the slot comes back");
        (Instant::now(), got)
    });
    // The holder keeps asking; no check may block longer than the margin.
    let lost_at = loop {
        let asked = Instant::now();
        let answer = slot.check();
        let took = asked.elapsed();
        assert!(
            took <= margin,
            "Slot::check blocked {took:?} (margin {margin:?})"
        );
        if let Err(e) = answer {
            assert!(matches!(e, Error::SlotLost { .. }), "{e}");
            break Instant::now();
        }
        assert!(frozen.elapsed() < lease * 2, "never told");
        std::thread::sleep(Duration::from_millis(20));
    };
    let (got_at, got) = waiter.join().expect("waiter");
    assert!(
        lost_at < got_at,
        "the slot was handed on before its holder knew"
    );
    assert!(
        got_at - frozen <= lease + Duration::from_secs(1),
        "handed on {:?} after the cut",
        got_at - frozen
    );
    assert_eq!(got.index(), 0);
}

/// Reports on `pool` (a fresh Redis pool): posted, read back, refused to
/// a second owner while live, gone after their ttl, withdrawn. `hash_len`
/// counts the entries of the kind's hash behind the pool's back, where
/// the test can reach it.
/// The ttl of the reports [`reports_contract`] keeps live throughout.
const REPORT_LONG: Duration = Duration::from_secs(60);

pub fn reports_contract(pool: &Pool, hash_len: Option<&dyn Fn(&str) -> u64>) {
    // Long enough never to lapse during the test; short enough to wait out,
    // and far above any stall of a loaded machine between two calls.
    let long = REPORT_LONG;
    let short = Duration::from_secs(2);
    assert!(pool.reports("gates").expect("read").is_empty());
    assert!(
        pool.post_report("gates", "g1", "ownerA", r#"{"n":1}"#, long)
            .expect("post")
    );
    assert_eq!(pool.reports("gates").expect("read"), [r#"{"n":1}"#]);
    // Another owner is refused while the first one's report is live.
    assert!(
        !pool
            .post_report("gates", "g1", "ownerB", r#"{"n":2}"#, long)
            .expect("post")
    );
    assert_eq!(pool.reports("gates").expect("read"), [r#"{"n":1}"#]);
    // Its owner reposts; a document with spaces and newlines round trips.
    let doc = "{\"n\": 3,\n \"s\": \"a b\"}";
    assert!(
        pool.post_report("gates", "g1", "ownerA", doc, long)
            .expect("repost")
    );
    assert_eq!(pool.reports("gates").expect("read"), [doc]);
    // Kinds are separate.
    assert!(pool.reports("other").expect("read").is_empty());
    // An owner that stops reposting: its report lapses after the ttl.
    assert!(
        pool.post_report("gates", "g2", "ownerC", "two", short)
            .expect("post")
    );
    assert!(
        !pool
            .post_report("gates", "g2", "ownerD", "x", long)
            .expect("post")
    );
    assert_eq!(pool.reports("gates").expect("read"), [doc, "two"]);
    if let Some(len) = hash_len {
        assert_eq!(len("gates"), 2);
    }
    std::thread::sleep(short + Duration::from_secs(1));
    if let Some(len) = hash_len {
        assert_eq!(len("gates"), 2, "an expired entry stays until read");
    }
    assert_eq!(pool.reports("gates").expect("read"), [doc]);
    if let Some(len) = hash_len {
        assert_eq!(len("gates"), 1, "reading deletes expired entries");
    }
    // The lapsed name is free for another owner.
    assert!(
        pool.post_report("gates", "g2", "ownerD", "d", long)
            .expect("post")
    );
    // Only the owner withdraws.
    assert!(
        !pool
            .withdraw_report("gates", "g1", "ownerB")
            .expect("withdraw")
    );
    assert!(
        pool.withdraw_report("gates", "g1", "ownerA")
            .expect("withdraw")
    );
    assert!(
        !pool
            .withdraw_report("gates", "g1", "ownerA")
            .expect("again")
    );
    assert_eq!(pool.reports("gates").expect("read"), ["d"]);
    assert!(
        pool.withdraw_report("gates", "g2", "ownerD")
            .expect("withdraw")
    );
    assert!(pool.reports("gates").expect("read").is_empty());
    let err = pool.post_report("no/kind", "g", "o", "", long).unwrap_err();
    assert!(matches!(err, Error::InvalidReport { .. }), "{err}");
    let err = pool
        .post_report("gates", "g", "two words", "", long)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidReport { .. }), "{err}");
}

#[test]
fn reports_round_trip_refuse_a_second_owner_and_lapse_after_their_ttl() {
    let _serial = crate::support::timing_sensitive();
    let Some(url) = redis_url() else { return };
    let addr = unique_pool(&url);
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let name = crate::redis_faults::pool_name(&addr);
    let mut conn = ::redis::Client::open(url.as_str())
        .expect("client")
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect");
    let conn = std::cell::RefCell::new(&mut conn);
    let key = |kind: &str| format!("dbslots:{{{name}}}:reports:{kind}");
    let len = |kind: &str| -> u64 {
        ::redis::cmd("HLEN")
            .arg(key(kind))
            .query(*conn.borrow_mut())
            .expect("HLEN")
    };
    reports_contract(&pool, Some(&len));
    let pttl = |kind: &str| -> i64 {
        ::redis::cmd("PTTL")
            .arg(key(kind))
            .query(*conn.borrow_mut())
            .expect("PTTL")
    };
    // The hash expires by itself a little after the longest ttl posted
    // (twice it, plus a second)...
    assert!(
        pool.post_report("fresh", "g", "o", "{}", Duration::from_secs(5))
            .expect("post")
    );
    let fresh = pttl("fresh");
    assert!((5_000..=11_000).contains(&fresh), "PTTL {fresh}");
    // ... and a shorter post never brings that forward.
    assert!(
        pool.post_report("kept", "a", "o", "{}", REPORT_LONG)
            .expect("post")
    );
    assert!(
        pool.post_report("kept", "b", "o", "{}", Duration::from_secs(1))
            .expect("post")
    );
    let long_ms = REPORT_LONG.as_millis() as i64;
    let kept = pttl("kept");
    assert!(
        (2 * long_ms - 30_000..=2 * long_ms + 1_000).contains(&kept),
        "PTTL {kept} after posts of {long_ms} ms and then 1 s"
    );
    // A ttl Redis cannot keep is refused before anything is stored.
    for ttl in [Duration::ZERO, Duration::from_secs(86_401), Duration::MAX] {
        let err = pool.post_report("huge", "g", "o", "{}", ttl).unwrap_err();
        assert!(matches!(err, Error::InvalidReport { .. }), "{err}");
    }
    assert_eq!(len("huge"), 0);
    // A file pool has no reports: its clients share the directory.
    let dir = tempfile::tempdir().expect("tempdir");
    let file_pool = Pool::open(dir.path(), PoolOptions::new().capacity(1)).expect("file pool");
    let err = file_pool.reports("gates").unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let err = file_pool
        .post_report("gates", "g", "o", "{}", Duration::from_secs(1))
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}
