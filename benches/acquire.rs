//! Slot acquisition: dbslots against the reference design (JSON under
//! `flock`, polling waiters) and tokio's in-process semaphore, in one run.
//!
//! * `uncontended/*`: acquire + release with no competition.
//! * `handoff/*`: two processes ping-pong one slot; the time from one
//!   process's release to the other process holding the slot. The median
//!   and p99 of every hand-off measured are printed at the end.
//!
//! * `exec/*`: the whole process: `dbslots exec -- true` against
//!   `flock FILE true` (util-linux) and `true` alone, when the release
//!   binary `dbslots` is built (`cargo bench --workspace` builds it;
//!   skipped, saying so, otherwise).
//!
//! The Redis pool is measured beside the file pool on a throwaway loopback
//! `redis-server` (`DBSLOTS_TEST_REDIS_URL`, or one started here), and on
//! a throwaway 3-master Redis Cluster (`DBSLOTS_TEST_REDIS_CLUSTER_URL`, or
//! one started here when `redis-server` and `redis-cli` are installed).

use std::hint::black_box;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use criterion::Criterion;
use dbslots_core::{Pool, PoolOptions};
use dbslots_suite::reference::ReferencePool;

const ROLE: &str = "DBSLOTS_BENCH_ROLE";

fn mono_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The release `dbslots` binary next to this bench's directory, if built.
fn dbslots_exe() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/release/deps/acquire-xxxx -> target/release/dbslots
    let bin = exe.parent()?.parent()?.join("dbslots");
    bin.exists().then_some(bin)
}

fn exec(c: &mut Criterion) {
    let Some(dbslots) = dbslots_exe() else {
        eprintln!(
            "exec/*: skipped, target/release/dbslots is not built (cargo build --release -p dbslots-cli)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("pool");
    let lock = dir.path().join("lock");
    std::fs::write(&lock, b"").expect("lock file");
    let run = |cmd: &mut Command| {
        let st = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("runs");
        assert!(st.success());
    };
    // Create the pool once, outside the measurement.
    run(Command::new(&dbslots)
        .args(["exec", "--pool"])
        .arg(&pool)
        .args(["--capacity", "4", "--", "true"]));
    let mut g = c.benchmark_group("exec");
    g.bench_function("dbslots exec -- true", |b| {
        b.iter(|| {
            run(Command::new(&dbslots)
                .arg("exec")
                .arg("--pool")
                .arg(&pool)
                .args(["--", "true"]))
        })
    });
    g.bench_function("flock FILE true", |b| {
        b.iter(|| run(Command::new("flock").arg(&lock).arg("true")))
    });
    g.bench_function("true", |b| b.iter(|| run(&mut Command::new("true"))));
    g.finish();
}

/// Child process: take and give back the slot `rounds` times, then print
/// "acquired released" per round.
fn child(role: &str) {
    let args: Vec<String> = std::env::args().collect();
    let (target, rounds): (&str, usize) = (&args[1], args[2].parse().expect("rounds"));
    let mut events = Vec::with_capacity(rounds);
    match role {
        "dbslots" => {
            let pool = Pool::open(target, PoolOptions::new()).expect("open pool");
            for _ in 0..rounds {
                let slot = pool.blocking_acquire().expect("acquire");
                let acquired = mono_ns();
                let released = mono_ns();
                drop(slot);
                events.push((acquired, released));
            }
        }
        "reference" => {
            let pool = ReferencePool::new(target, 1);
            for _ in 0..rounds {
                assert!(pool.acquire(Duration::from_secs(60)).expect("acquire"));
                let acquired = mono_ns();
                let released = mono_ns();
                pool.release().expect("release");
                events.push((acquired, released));
            }
        }
        other => panic!("unknown role {other}"),
    }
    let mut out = std::io::stdout().lock();
    for (a, r) in events {
        writeln!(out, "{a} {r}").expect("stdout");
    }
}

/// Runs two ping-pong processes and returns the release-to-acquire
/// latencies of every hand-off between them.
fn handoffs(role: &str, target: &str, rounds: usize) -> Vec<Duration> {
    let exe = std::env::current_exe().expect("bench binary");
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .arg(target)
                .arg(rounds.to_string())
                .env(ROLE, role)
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn ping-pong process")
        })
        .collect();
    // (time, process, is_release)
    let mut events: Vec<(u64, usize, bool)> = Vec::new();
    for (p, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("child output");
        assert!(out.status.success(), "ping-pong process failed");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut it = line.split(' ').map(|v| v.parse::<u64>().expect("ns"));
            let (a, r) = (it.next().expect("a"), it.next().expect("r"));
            events.push((a, p, false));
            events.push((r, p, true));
        }
    }
    events.sort();
    let mut last_release: Option<(u64, usize)> = None;
    let mut out = Vec::new();
    for (t, p, is_release) in events {
        if is_release {
            last_release = Some((t, p));
        } else if let Some((r, q)) = last_release.take()
            && q != p
        {
            out.push(Duration::from_nanos(t - r));
        }
    }
    out
}

static HANDOFFS: Mutex<Vec<(&'static str, Vec<Duration>)>> = Mutex::new(Vec::new());

fn record(name: &'static str, mut lat: Vec<Duration>) -> Vec<Duration> {
    let mut all = HANDOFFS.lock().expect("lock");
    match all.iter_mut().find(|(n, _)| *n == name) {
        Some((_, v)) => v.append(&mut lat.clone()),
        None => all.push((name, lat.clone())),
    }
    lat.sort();
    lat
}

/// A Redis server for the Redis rows: the one `cargo xtask bench` started,
/// else a private one (kept alive by the returned guard).
fn redis_server() -> Option<(Option<dbslots_testkit::RedisServer>, String)> {
    if let Ok(url) = std::env::var(dbslots_testkit::REDIS_URL_ENV) {
        return Some((None, url));
    }
    match dbslots_testkit::RedisServer::start() {
        Ok(s) => {
            let url = s.url();
            Some((Some(s), url))
        }
        Err(e) => {
            eprintln!("no Redis for the Redis rows: {e:#}");
            None
        }
    }
}

/// A Redis Cluster for the cluster rows: the one `cargo xtask bench`
/// started, else a private one (kept alive by the returned guard).
fn redis_cluster() -> Option<(Option<dbslots_testkit::RedisCluster>, String)> {
    if let Ok(url) = std::env::var(dbslots_testkit::REDIS_CLUSTER_URL_ENV) {
        return Some((None, url));
    }
    if !dbslots_testkit::RedisCluster::available() {
        eprintln!("no Redis Cluster for the cluster rows: redis-server and redis-cli are needed");
        return None;
    }
    match dbslots_testkit::RedisCluster::start(dbslots_testkit::ClusterOptions::default()) {
        Ok(c) => {
            let url = c.url();
            Some((Some(c), url))
        }
        Err(e) => {
            eprintln!("no Redis Cluster for the cluster rows: {e:#}");
            None
        }
    }
}

/// A plain connection to the first node named in a cluster URL.
fn first_seed(url: &str) -> redis::Connection {
    let seed = url
        .trim_start_matches("redis+cluster://")
        .split([',', '/'])
        .next()
        .expect("a seed");
    redis::Client::open(format!("redis://{seed}/0"))
        .expect("client")
        .get_connection()
        .expect("connection")
}

fn redis_pool_addr(url: &str, capacity: u32) -> String {
    let name = format!("bench-{}-{}", std::process::id(), capacity);
    let addr = format!("{url}?pool={name}");
    let pool = Pool::open(&addr, PoolOptions::new().capacity(capacity)).expect("redis pool");
    // A pool created on a server that just started admits holders only once
    // a lease time has passed since the start (see the backend's docs).
    drop(
        pool.blocking_acquire_timeout(Duration::from_secs(30))
            .expect("admission opens"),
    );
    addr
}

fn uncontended(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = Pool::open(dir.path().join("pool"), PoolOptions::new().capacity(150)).expect("pool");
    let reference = ReferencePool::new(dir.path().join("reference.lock"), 150);
    let semaphore = tokio::sync::Semaphore::new(150);

    let mut g = c.benchmark_group("uncontended");
    g.bench_function("dbslots try_acquire+release", |b| {
        b.iter(|| black_box(pool.try_acquire().expect("try").expect("free slot")))
    });
    g.bench_function("dbslots acquire+release", |b| {
        b.iter(|| black_box(pool.blocking_acquire().expect("acquire")))
    });
    g.bench_function("reference acquire+release", |b| {
        b.iter(|| {
            assert!(reference.acquire(Duration::ZERO).expect("acquire"));
            reference.release().expect("release");
        })
    });
    g.bench_function("tokio Semaphore try_acquire+release", |b| {
        b.iter(|| black_box(semaphore.try_acquire().expect("permit")))
    });
    if let Some((_server, url)) = redis_server() {
        let redis_pool =
            Pool::open(redis_pool_addr(&url, 150), PoolOptions::new()).expect("redis pool");
        g.bench_function("redis try_acquire+release", |b| {
            b.iter(|| black_box(redis_pool.try_acquire().expect("try").expect("free slot")))
        });
        let client = redis::Client::open(url.as_str()).expect("client");
        let mut conn = client.get_connection().expect("connection");
        g.bench_function("redis one round trip (PING)", |b| {
            b.iter(|| {
                let pong: String = redis::cmd("PING").query(&mut conn).expect("ping");
                black_box(pong)
            })
        });
    }
    if let Some((_cluster, url)) = redis_cluster() {
        let cluster_pool =
            Pool::open(redis_pool_addr(&url, 150), PoolOptions::new()).expect("cluster pool");
        g.bench_function("redis cluster try_acquire+release", |b| {
            b.iter(|| black_box(cluster_pool.try_acquire().expect("try").expect("free slot")))
        });
        let mut conn = first_seed(&url);
        g.bench_function("redis cluster one round trip (PING)", |b| {
            b.iter(|| {
                let pong: String = redis::cmd("PING").query(&mut conn).expect("ping");
                black_box(pong)
            })
        });
    }
    g.finish();
}

fn handoff(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool_dir = dir.path().join("pool");
    Pool::open(pool_dir.as_path(), PoolOptions::new().capacity(1)).expect("pool");
    let pool_addr = pool_dir.display().to_string();
    let reference = dir.path().join("reference.lock");
    let reference_addr = reference.display().to_string();

    let mut g = c.benchmark_group("handoff");
    g.sample_size(10);
    g.bench_function("dbslots across processes", |b| {
        b.iter_custom(|iters| {
            let lat = record(
                "dbslots",
                handoffs("dbslots", &pool_addr, iters as usize + 1),
            );
            let mean = lat.iter().sum::<Duration>() / lat.len().max(1) as u32;
            mean * iters as u32
        })
    });
    if let Some((_server, url)) = redis_server() {
        let addr = redis_pool_addr(&url, 1);
        g.bench_function("redis across processes", |b| {
            b.iter_custom(|iters| {
                let lat = record("redis", handoffs("dbslots", &addr, iters as usize + 1));
                let mean = lat.iter().sum::<Duration>() / lat.len().max(1) as u32;
                mean * iters as u32
            })
        });
    }
    if let Some((_cluster, url)) = redis_cluster() {
        let addr = redis_pool_addr(&url, 1);
        g.bench_function("redis cluster across processes", |b| {
            b.iter_custom(|iters| {
                let lat = record(
                    "redis cluster",
                    handoffs("dbslots", &addr, iters as usize + 1),
                );
                let mean = lat.iter().sum::<Duration>() / lat.len().max(1) as u32;
                mean * iters as u32
            })
        });
    }
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("reference across processes", |b| {
        b.iter_custom(|iters| {
            let _ = std::fs::remove_file(&reference);
            let lat = record(
                "reference",
                handoffs("reference", &reference_addr, iters.min(3) as usize + 1),
            );
            let mean = lat.iter().sum::<Duration>() / lat.len().max(1) as u32;
            mean * iters as u32
        })
    });
    g.finish();
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        child(&role);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    uncontended(&mut c);
    handoff(&mut c);
    exec(&mut c);
    c.final_summary();
    for (name, lat) in HANDOFFS.lock().expect("lock").iter_mut() {
        lat.sort();
        if lat.is_empty() {
            continue;
        }
        let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
        println!(
            "handoff/{name}: median {:?}, p90 {:?}, p99 {:?} over {} hand-offs",
            pct(0.5),
            pct(0.9),
            pct(0.99),
            lat.len()
        );
    }
}
