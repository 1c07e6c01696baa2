//! The Redis pool on a Redis Cluster: the same contract as on one server,
//! through redirects, failovers and slot migrations.

use std::time::{Duration, Instant};

use dbslots_core::{Pool, PoolOptions};
use dbslots_testkit::{ClusterOptions, RedisCluster};
use proptest::prelude::ProptestConfig;
use proptest_state_machine::prop_state_machine;

use crate::model::{Backend, System};
use crate::redis::{LEASE_MS, forty_processes_on_four_hosts_never_exceed_five_slots, unique_pool};
use crate::redis_faults::{pool_name, quarantines, waiters_subscribe_again_and_are_woken};
use crate::support::{Holder, Outcome};

/// A cluster of this test process (3 masters, each with a replica),
/// started once and killed with the process: the tests that fail nodes
/// over, move slots or count the commands every node ran use it (they
/// run one at a time: `timing_sensitive`).
fn private_cluster() -> Option<&'static RedisCluster> {
    static CLUSTER: std::sync::OnceLock<Option<RedisCluster>> = std::sync::OnceLock::new();
    CLUSTER
        .get_or_init(|| {
            dbslots_testkit::private_redis_cluster(ClusterOptions {
                masters: 3,
                replicas: 1,
                ..Default::default()
            })
        })
        .as_ref()
}

/// The shared test cluster (`cargo xtask test` starts one), else this
/// process's own.
pub fn cluster_url() -> Option<String> {
    dbslots_testkit::shared_redis_cluster().or_else(|| private_cluster().map(|c| c.url()))
}

/// A TLS-only cluster of this test process (3 masters, one CA, TLS on
/// the bus too), started once.
fn tls_cluster() -> Option<&'static RedisCluster> {
    static CLUSTER: std::sync::OnceLock<Option<RedisCluster>> = std::sync::OnceLock::new();
    CLUSTER
        .get_or_init(|| {
            dbslots_testkit::private_redis_cluster(ClusterOptions {
                tls: true,
                ..Default::default()
            })
        })
        .as_ref()
}

/// Redis pools on the TLS cluster, with the lease `TlsLeases` uses.
pub struct TlsClusterLeases;

const TLS_LEASE_MS: u64 = 2500;

impl Backend for TlsClusterLeases {
    fn fresh() -> (Box<dyn std::any::Any>, String) {
        let url = tls_cluster()
            .and_then(|c| c.tls_url())
            .expect("checked before the proptest runs");
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
fn redis_pool_on_a_tls_cluster_behaves_like_a_counting_semaphore() {
    let _serial = crate::support::timing_sensitive();
    if tls_cluster().is_none() {
        return;
    }
    tls_cluster_model();
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 3,
        max_shrink_iters: 50,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    fn tls_cluster_model(sequential 1..14 => System<TlsClusterLeases>);
}

#[test]
fn processes_on_many_hosts_never_exceed_the_capacity_on_a_tls_cluster() {
    let _serial = crate::support::timing_sensitive();
    let Some(cluster) = tls_cluster() else { return };
    let url = cluster.tls_url().expect("TLS");
    // Each process makes a TLS connection to a seed and, on a MOVED, one to
    // the pool's master: twice the handshakes of one server, so a longer
    // lease (its connect timeout is a ninth of it).
    forty_processes_on_four_hosts_never_exceed_five_slots(&format!("{url}&lease_ms=15000"));
}

#[test]
fn a_pool_on_a_tls_cluster_follows_moved_to_the_tls_port() {
    let _serial = crate::support::timing_sensitive();
    let Some(cluster) = tls_cluster() else { return };
    let url = cluster.tls_url().expect("TLS");
    let addr = unique_pool(&format!("{url}&lease_ms={TLS_LEASE_MS}"));
    let master = cluster.master_of(&keys(&addr)[0]).expect("master");
    // Only the TLS ports of the masters that do not serve the pool.
    let others: Vec<String> = cluster
        .nodes()
        .iter()
        .filter(|n| n.port() != master)
        .map(|n| format!("127.0.0.1:{}", n.tls_port().expect("TLS")))
        .collect();
    let seeds = url
        .trim_start_matches("rediss+cluster://")
        .split('/')
        .next()
        .expect("seeds")
        .to_string();
    let addr = addr.replace(&seeds, &others.join(","));
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create through MOVED");
    // (A cluster younger than a lease admits once it is a lease old.)
    let slot = pool
        .blocking_acquire_timeout(Duration::from_millis(3 * TLS_LEASE_MS))
        .expect("slot");
    assert!(pool.try_acquire().expect("try").is_none());
    drop(slot);
    let mut conn = node_conn(master);
    let capacity: Option<u32> = ::redis::cmd("HGET")
        .arg(&keys(&addr)[0])
        .arg("capacity")
        .query(&mut conn)
        .expect("HGET");
    assert_eq!(capacity, Some(1), "the pool lives on the slot's master");
}

/// The keys of `addr`'s pool, all in one hash slot.
fn keys(addr: &str) -> Vec<String> {
    let name = pool_name(addr);
    [
        "meta", "leases", "owners", "queue", "qexp", "qinfo", "tickets", "stats",
    ]
    .iter()
    .map(|k| format!("dbslots:{{{name}}}:{k}"))
    .collect()
}

fn node_conn(port: u16) -> ::redis::Connection {
    ::redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
        .expect("client")
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect")
}

/// Redis pools on the test cluster.
pub struct ClusterLeases;

impl Backend for ClusterLeases {
    fn fresh() -> (Box<dyn std::any::Any>, String) {
        let url = cluster_url().expect("checked before the proptest runs");
        (Box::new(()), unique_pool(&url))
    }
    fn crash_latency() -> Duration {
        Duration::from_millis(LEASE_MS + 500)
    }
}

#[test]
fn redis_pool_on_a_cluster_behaves_like_a_counting_semaphore() {
    let _serial = crate::support::timing_sensitive();
    if cluster_url().is_none() {
        return;
    }
    cluster_model();
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 5,
        max_shrink_iters: 50,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    fn cluster_model(sequential 1..14 => System<ClusterLeases>);
}

#[test]
fn processes_on_many_hosts_never_exceed_the_capacity_on_a_cluster() {
    let _serial = crate::support::timing_sensitive();
    let Some(url) = cluster_url() else { return };
    forty_processes_on_four_hosts_never_exceed_five_slots(&format!("{url}?lease_ms=5000"));
}

#[test]
fn a_pool_reached_through_a_node_that_does_not_serve_it_follows_moved() {
    let _serial = crate::support::timing_sensitive();
    let Some(cluster) = private_cluster() else {
        return;
    };
    let probe = unique_pool("redis+cluster://x:1/");
    let key = &keys(&probe)[0];
    let master = cluster.master_of(key).expect("master");
    // Seeds that all answer MOVED (the replica of the master too).
    let others: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.port())
        .filter(|p| *p != master)
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let addr = probe.replace("x:1", &others.join(","));
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create through MOVED");
    // (A cluster younger than a lease admits once it is a lease old.)
    let slot = pool
        .blocking_acquire_timeout(Duration::from_millis(3 * LEASE_MS))
        .expect("slot");
    assert!(pool.try_acquire().expect("try").is_none());
    assert_eq!(pool.stats().expect("stats").active, 1);
    drop(slot);
    let mut conn = node_conn(master);
    let capacity: Option<u32> = ::redis::cmd("HGET")
        .arg(key)
        .arg("capacity")
        .query(&mut conn)
        .expect("HGET");
    assert_eq!(capacity, Some(1), "the pool lives on the slot's master");
}

/// Scripts the nodes were asked to run (`EVAL`/`EVALSHA` in `INFO
/// commandstats`, the ones answered with a redirect included).
fn scripts_asked(cluster: &RedisCluster) -> u64 {
    cluster
        .nodes()
        .iter()
        .flat_map(|n| {
            n.command("INFO commandstats")
                .expect("INFO")
                .lines()
                .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
                .flat_map(|l| {
                    l.split(',')
                        .filter_map(|f| {
                            let (k, v) = f.split_once('=')?;
                            let k = k.rsplit(':').next()?;
                            matches!(k, "calls" | "rejected_calls")
                                .then(|| v.parse::<u64>().ok())
                                .flatten()
                        })
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

#[test]
fn an_uncontended_acquire_and_release_on_a_cluster_take_two_round_trips() {
    let _serial = crate::support::timing_sensitive();
    let Some(cluster) = private_cluster() else {
        return;
    };
    let addr = unique_pool(&format!("{}?lease_ms=10000", cluster.url()));
    let pool = Pool::open(&addr, PoolOptions::new().capacity(2)).expect("create");
    // Warm up: the connection is made (after a MOVED if the first seed
    // does not serve the pool) and the scripts are loaded.
    let mut slot = pool
        .blocking_acquire_timeout(Duration::from_secs(15))
        .expect("slot");
    drop(slot);
    let rounds = 20;
    let before = scripts_asked(cluster);
    let started = Instant::now();
    for _ in 0..rounds {
        slot = pool.try_acquire().expect("try").expect("free");
        drop(slot);
    }
    let used = scripts_asked(cluster) - before;
    // One EVALSHA each way, on the right node at the first try; the
    // renewer may have renewed once in between.
    let renewals = u64::from(started.elapsed() >= Duration::from_millis(1600));
    assert!(
        used <= 2 * rounds + renewals,
        "{used} scripts for {rounds} acquire+release pairs"
    );
    assert!(used >= 2 * rounds, "{used}");
}

#[test]
fn a_manual_failover_of_the_pools_master_never_over_admits() {
    let _serial = crate::support::timing_sensitive();
    let Some(cluster) = private_cluster() else {
        return;
    };
    // A lease whose call timeouts ride out the failover's pause.
    let lease = Duration::from_millis(5000);
    let addr = unique_pool(&format!("{}?lease_ms={}", cluster.url(), lease.as_millis()));
    let newcomer = Pool::open(&addr, PoolOptions::new().capacity(2)).expect("create");
    let mut a = Holder::spawn_on(&addr, None, "host-a");
    let mut b = Holder::spawn_on(&addr, None, "host-b");
    assert!(matches!(a.outcome(), Outcome::Held(_)));
    assert!(matches!(b.outcome(), Outcome::Held(_)));
    let (old, new) = cluster.failover(&keys(&addr)[0]).expect("failover");
    let failed_over = Instant::now();
    assert_ne!(old, new);
    // For a whole lease: both holders keep their slots (renewing on the
    // new master), and nobody else gets one.
    while failed_over.elapsed() < lease {
        assert!(
            newcomer.try_acquire().expect("no error").is_none(),
            "a third holder on 2 slots {:?} after the failover",
            failed_over.elapsed()
        );
        assert!(newcomer.stats().expect("stats").active <= 2);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(a.check(), Ok(()), "a manual failover loses no lease");
    assert_eq!(b.check(), Ok(()), "a manual failover loses no lease");
    // The new master has another run_id: the pool was quarantined.
    assert!(quarantines(&mut node_conn(new), &addr) >= 1);
    a.release();
    let slot = newcomer
        .blocking_acquire_timeout(lease * 2)
        .expect("admission resumes");
    assert!(
        failed_over.elapsed() >= lease * 3 / 4,
        "admitted {:?} after the failover, inside the quarantine",
        failed_over.elapsed()
    );
    drop(slot);
    b.release();
}

#[test]
fn a_pool_whose_slot_migrates_follows_ask_then_moved_and_keeps_its_holders() {
    let _serial = crate::support::timing_sensitive();
    let Some(cluster) = private_cluster() else {
        return;
    };
    let lease = Duration::from_millis(3000);
    let addr = unique_pool(&format!("{}?lease_ms={}", cluster.url(), lease.as_millis()));
    let keys = keys(&addr);
    let pool = Pool::open(&addr, PoolOptions::new().capacity(2)).expect("create");
    let mut holder = Holder::spawn(&addr, None);
    let Outcome::Held(held) = holder.outcome() else {
        panic!("the holder got no slot")
    };
    let slot = cluster.slot_of(&keys[0]).expect("slot");
    let source = cluster.master_of(&keys[0]).expect("master");
    let masters: Vec<u16> = cluster
        .nodes()
        .iter()
        .map(|n| n.port())
        .filter(|p| cluster.replica_of(*p).is_ok())
        .collect();
    let target = *masters.iter().find(|p| **p != source).expect("a target");
    let (source_id, target_id) = (
        cluster.id_of(source).expect("id"),
        cluster.id_of(target).expect("id"),
    );
    let run = |port: u16, line: &str| {
        cluster
            .node(port)
            .expect("node")
            .command(line)
            .unwrap_or_else(|e| panic!("{line} on {port}: {e:#}"))
    };
    run(
        target,
        &format!("CLUSTER SETSLOT {slot} IMPORTING {source_id}"),
    );
    run(
        source,
        &format!("CLUSTER SETSLOT {slot} MIGRATING {target_id}"),
    );
    let moved = run(
        source,
        &format!(
            "MIGRATE 127.0.0.1 {target} \"\" 0 5000 KEYS {}",
            keys.join(" ")
        ),
    );
    assert_eq!(moved, "OK");
    // Every key is on the target, the slot still on the source: the
    // source answers ASK. The holder's renewals (whose keys all exist)
    // reach the target through it.
    let expiry = |asking: bool| -> f64 {
        let mut c = node_conn(target);
        if asking {
            ::redis::cmd("ASKING").exec(&mut c).expect("ASKING");
        }
        ::redis::cmd("ZSCORE")
            .arg(&keys[1])
            .arg(held)
            .query::<Option<f64>>(&mut c)
            .expect("ZSCORE")
            .expect("the lease is on the target")
    };
    let before = expiry(true);
    std::thread::sleep(lease / 2);
    assert!(expiry(true) > before, "renewals through ASK");
    assert_eq!(holder.check(), Ok(()));
    // Scripts naming keys that do not exist yet get TRYAGAIN until the
    // migration ends; nobody is admitted meanwhile.
    assert!(!matches!(pool.try_acquire(), Ok(Some(_))));
    for port in &masters {
        run(*port, &format!("CLUSTER SETSLOT {slot} NODE {target_id}"));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.master_of(&keys[0]).ok() != Some(target) {
        assert!(Instant::now() < deadline, "the cluster never agreed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Now the source answers MOVED, once per connection.
    assert_eq!(pool.stats().expect("stats through MOVED").active, 1);
    let before = expiry(false);
    std::thread::sleep(lease / 2);
    assert!(expiry(false) > before, "renewals through MOVED");
    assert_eq!(holder.check(), Ok(()));
    holder.release();
    let got = pool
        .blocking_acquire_timeout(lease * 2)
        .expect("admitted after the quarantine");
    drop(got);
}

#[test]
fn a_waiter_on_a_cluster_subscribes_again_and_is_woken_by_notification() {
    let _serial = crate::support::timing_sensitive();
    let Some(url) = cluster_url() else { return };
    let addr = unique_pool(&url);
    // The pool's waiters subscribe on the node that serves it.
    let key = &keys(&addr)[0];
    let master = match dbslots_testkit::shared_redis_cluster() {
        // The shared cluster has no replicas: its masters are its seeds.
        Some(_) => url
            .trim_start_matches("redis+cluster://")
            .trim_end_matches('/')
            .split(',')
            .map(|s| s.rsplit(':').next().expect("port").parse().expect("port"))
            .find(|p: &u16| {
                ::redis::cmd("EXISTS")
                    .arg(key)
                    .query::<i64>(&mut node_conn(*p))
                    .is_ok()
            })
            .expect("a seed serves the key"),
        None => private_cluster()
            .expect("started")
            .master_of(key)
            .expect("master"),
    };
    waiters_subscribe_again_and_are_woken(&addr, &mut node_conn(master));
}

#[test]
fn reports_work_on_a_cluster() {
    let _serial = crate::support::timing_sensitive();
    let Some(url) = cluster_url() else { return };
    let addr = unique_pool(&url);
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    crate::redis::reports_contract(&pool, None);
}
