//! `cargo xtask bench-gate`: `dbslots gate` side by side with HAProxy in
//! front of one throwaway MariaDB/MySQL, and the same clients directly.
//!
//! Four rows, measured in one run and interleaved in rounds (the order
//! rotates each round), so that a machine that gets busier hurts all of
//! them alike: direct, HAProxy (`mode tcp`, `server ... maxconn 20`),
//! `dbslots gate` (a file pool of 20, its default threads: two where
//! there are two cores) and the gate with `--threads 1`. Two
//! workloads each: sysbench `oltp_point_select` (8 threads, persistent
//! connections, `--seconds` per round) and PHP PDO connect + `SELECT 1` +
//! close (`--connects` in a row per round). Besides the rates it reports
//! what is robust on a loaded machine: the CPU time the gate and HAProxy
//! spend per query and per connect (the scheduler's run time of all their
//! threads, `/proc/PID/task/*/schedstat`), and the
//! load average at the start and the end. Last, the memory per idle
//! relayed connection of both (2,000 connections to a stand-in server
//! that greets and then holds them; RSS growth divided by 2,000).
//!
//! The figures are medians over the rounds; the ratios are against the
//! direct row of the same run. sysbench, haproxy, php-cli and php-mysql are
//! installed with apt-get as root when missing (saying so).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dbslots_testkit::{DATABASE, MysqlOptions, MysqlServer, PASSWORD, USER};

use crate::child::{self, cargo, check_interrupted};
use crate::{packages, servers};

const USAGE: &str = "usage: cargo xtask bench-gate [--rounds N] [--seconds S] [--connects N]";

/// The programs the benchmark runs, and the Debian packages with them.
const PROGRAMS: &[(&str, &str)] = &[
    ("/usr/bin/sysbench", "sysbench"),
    ("/usr/sbin/haproxy", "haproxy"),
    ("/usr/bin/php", "php-cli"),
];
/// The cap of both the gate's pool and HAProxy's `maxconn`.
const CAP: u32 = 20;
/// sysbench threads (persistent connections).
const THREADS: u32 = 8;
/// Idle relayed connections for the memory figure.
const IDLE_CONNECTIONS: usize = 2_000;

struct Args {
    rounds: u32,
    seconds: u32,
    connects: u32,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut parsed = Args {
        rounds: 3,
        seconds: 10,
        connects: 300,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> Result<u32> {
            let value = it
                .next()
                .with_context(|| format!("{name} wants a number\n{USAGE}"))?;
            value
                .parse()
                .with_context(|| format!("{name} wants a whole number, not `{value}`"))
        };
        match arg.as_str() {
            "--rounds" => parsed.rounds = number("--rounds")?,
            "--seconds" => parsed.seconds = number("--seconds")?,
            "--connects" => parsed.connects = number("--connects")?,
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    if parsed.rounds == 0 || parsed.seconds == 0 || parsed.connects == 0 {
        bail!("--rounds, --seconds and --connects must be at least 1");
    }
    Ok(parsed)
}

/// Runs the benchmark and prints its table.
pub fn run(args: &[String]) -> Result<()> {
    let args = parse(args)?;
    let scratch = servers::scratch_dir()?;
    child::install_interrupt_handler()?;
    packages::ensure(PROGRAMS, "`cargo xtask bench-gate`")?;
    packages::ensure_pdo_mysql("`cargo xtask bench-gate`")?;
    child::run(
        "`cargo build --release -p dbslots-cli`",
        cargo(&["build", "--release", "-p", "dbslots-cli"]),
    )?;
    let dbslots = crate::target_dir().join("release/dbslots");
    eprintln!("bench-gate: starting a throwaway MySQL");
    let server = MysqlServer::start(MysqlOptions {
        max_connections: Some(200),
        extra_args: vec!["--back-log=1000".into()],
        ..Default::default()
    })
    .context("cannot start the benchmark's MySQL")?;
    check_interrupted()?;
    let outcome = bench(&args, &server, &dbslots, scratch.path());
    let stopped = server
        .stop()
        .context("the benchmark ran, but stopping MySQL failed");
    drop(scratch);
    outcome.and(stopped)
}

/// The ways the clients reach the server.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    Direct,
    Haproxy,
    Gate,
    /// The gate with `--threads 1`: accepting and relaying on one thread.
    GateOneThread,
}

/// Every route, in the order of the table.
const ROUTES: [Route; 4] = [
    Route::Direct,
    Route::Haproxy,
    Route::Gate,
    Route::GateOneThread,
];

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Haproxy => "HAProxy maxconn 20",
            Route::Gate => "dbslots gate",
            Route::GateOneThread => "gate --threads 1",
        }
    }
}

/// One round of one route.
struct Sample {
    route: Route,
    qps: f64,
    /// CPU time of the gate or HAProxy per query, microseconds.
    cpu_per_query_us: Option<f64>,
    connect_us: f64,
    cpu_per_connect_us: Option<f64>,
}

fn bench(args: &Args, server: &MysqlServer, dbslots: &Path, dir: &Path) -> Result<()> {
    let upstream = format!("127.0.0.1:{}", server.port());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load_before = load_average();
    println!(
        "bench-gate: MySQL {} on {upstream}, {cores} cores, load average {load_before}",
        server.version()
    );
    let gate = start_gate(dbslots, dir, "bench", &upstream, CAP, None)?;
    let gate_one = start_gate(dbslots, dir, "bench-one", &upstream, CAP, Some(1))?;
    let haproxy = start_haproxy(dir, "bench", &upstream, CAP)?;
    let php = dir.join("connect.php");
    std::fs::write(&php, CONNECT_PHP)?;
    sysbench(server.port(), &["prepare"]).context("sysbench prepare")?;
    let mut samples = Vec::new();
    let mut order = ROUTES;
    for round in 1..=args.rounds {
        for &route in &order {
            check_interrupted()?;
            let (port, pid) = match route {
                Route::Direct => (server.port(), None),
                Route::Haproxy => (haproxy.port, Some(haproxy.pid())),
                Route::Gate => (gate.port, Some(gate.pid())),
                Route::GateOneThread => (gate_one.port, Some(gate_one.pid())),
            };
            let cpu = pid.map(cpu_seconds).transpose()?;
            let out = sysbench(
                port,
                &[
                    &format!("--threads={THREADS}"),
                    &format!("--time={}", args.seconds),
                    "run",
                ],
            )?;
            let (queries, qps) = parse_sysbench(&out)?;
            let cpu_per_query_us = match (pid, cpu) {
                (Some(pid), Some(before)) => {
                    Some((cpu_seconds(pid)? - before) * 1e6 / queries as f64)
                }
                _ => None,
            };
            let cpu = pid.map(cpu_seconds).transpose()?;
            let connect_us = php_connects(&php, port, args.connects)?;
            let cpu_per_connect_us = match (pid, cpu) {
                (Some(pid), Some(before)) => {
                    Some((cpu_seconds(pid)? - before) * 1e6 / f64::from(args.connects))
                }
                _ => None,
            };
            println!(
                "round {round} {:<20} {qps:>9.0} point selects/s{}   {connect_us:>6.0} µs connect+SELECT 1+close{}",
                route.label(),
                cpu_per_query_us.map_or(String::new(), |c| format!(" ({c:.1} µs CPU/query)")),
                cpu_per_connect_us.map_or(String::new(), |c| format!(" ({c:.0} µs CPU/connect)")),
            );
            samples.push(Sample {
                route,
                qps,
                cpu_per_query_us,
                connect_us,
                cpu_per_connect_us,
            });
        }
        order.rotate_left(1);
    }
    drop(gate);
    drop(gate_one);
    drop(haproxy);
    let memory = idle_memory(dbslots, dir)?;
    let load_after = load_average();
    print_table(&samples, &memory, &load_before, &load_after);
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn print_table(samples: &[Sample], memory: &Memory, before: &str, after: &str) {
    let of = |route: Route, f: fn(&Sample) -> Option<f64>| {
        median(
            samples
                .iter()
                .filter(|s| s.route == route)
                .filter_map(f)
                .collect(),
        )
    };
    let direct_qps = of(Route::Direct, |s| Some(s.qps));
    let direct_connect = of(Route::Direct, |s| Some(s.connect_us));
    println!();
    println!(
        "medians of {} rounds; load average {before} at the start, {after} at the end",
        samples.len() / ROUTES.len()
    );
    println!(
        "{:<20} {:>15} {:>9} {:>11} {:>16} {:>9} {:>13}",
        "",
        "point selects/s",
        "vs direct",
        "CPU/query",
        "connect+query+close",
        "vs direct",
        "CPU/connect"
    );
    let mut ratios = Vec::new();
    for route in ROUTES {
        let qps = of(route, |s| Some(s.qps));
        let connect = of(route, |s| Some(s.connect_us));
        let cpu_q = of(route, |s| s.cpu_per_query_us);
        let cpu_c = of(route, |s| s.cpu_per_connect_us);
        let cpu = |v: f64, digits: usize| {
            if v.is_nan() {
                "-".to_string()
            } else {
                format!("{v:.digits$} µs")
            }
        };
        println!(
            "{:<20} {:>15.0} {:>8.2}x {:>11} {:>16.0} µs {:>8.2}x {:>13}",
            route.label(),
            qps,
            qps / direct_qps,
            cpu(cpu_q, 1),
            connect,
            connect / direct_connect,
            cpu(cpu_c, 0),
        );
        ratios.push((qps / direct_qps, connect / direct_connect));
    }
    println!(
        "memory per idle relayed connection: dbslots gate {:.1} KiB, HAProxy {:.1} KiB ({IDLE_CONNECTIONS} connections)",
        memory.gate_kib, memory.haproxy_kib
    );
    let (haproxy, gate, one) = (ratios[1], ratios[2], ratios[3]);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "goals: gate >= 0.80x direct on point selects ({:.2}x): {}; <= 1.30x direct on connect+query+close ({:.2}x): {}; better than HAProxy on both ({:.2}x vs {:.2}x, {:.2}x vs {:.2}x): {}; <= 64 KiB per idle connection: {}",
        gate.0,
        verdict(gate.0 >= 0.8),
        gate.1,
        verdict(gate.1 <= 1.3),
        gate.0,
        haproxy.0,
        gate.1,
        haproxy.1,
        verdict(gate.0 > haproxy.0 && gate.1 < haproxy.1),
        verdict(memory.gate_kib <= 64.0),
    );
    println!(
        "with --threads 1: {:.2}x direct on point selects, {:.2}x on connect+query+close",
        one.0, one.1
    );
}

/// `/proc/loadavg`'s three averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// CPU time of a process (all its threads), in seconds: the scheduler's
/// exact run time from `/proc/PID/task/*/schedstat` (nanoseconds), not the
/// tick-sampled utime + stime of `/proc/PID/stat`, which charges a short
/// burst that meets a tick with the whole tick.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("cannot list the threads of process {pid}"))?;
    let mut ns = 0u64;
    for task in tasks.flatten() {
        // A thread that ended meanwhile has taken its time with it.
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .with_context(|| format!("unexpected schedstat of process {pid}: {stat}"))?;
    }
    Ok(ns as f64 / 1e9)
}

fn rss_kib(pid: u32) -> Result<u64> {
    dbslots_testkit::memory::status_kib(pid, "VmRSS")
        .with_context(|| format!("no VmRSS for process {pid}"))
}

/// A program the benchmark started; killed on drop.
struct Proxy {
    child: Child,
    port: u16,
    what: &'static str,
}

impl Proxy {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `proxy` accepts connections.
fn wait_ready(mut proxy: Proxy, log: &Path) -> Result<Proxy> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        check_interrupted()?;
        if TcpStream::connect(("127.0.0.1", proxy.port)).is_ok() {
            return Ok(proxy);
        }
        if let Some(status) = proxy.child.try_wait()? {
            bail!(
                "{} exited with {status}: {}",
                proxy.what,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!("{} did not start listening within 20 s", proxy.what);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_gate(
    dbslots: &Path,
    dir: &Path,
    name: &str,
    upstream: &str,
    cap: u32,
    threads: Option<u32>,
) -> Result<Proxy> {
    let port = free_port()?;
    let log = dir.join(format!("gate-{name}.log"));
    let child = Command::new(dbslots)
        .args(["gate", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", upstream, "--name", name])
        .arg("--pool")
        .arg(dir.join(format!("pool-{name}")))
        .args(["--capacity", &cap.to_string()])
        .args(threads.map(|n| format!("--threads={n}")))
        .env("RUST_LOG", "warn")
        .env_remove("DBSLOTS_POOL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("cannot start {}", dbslots.display()))?;
    wait_ready(
        Proxy {
            child,
            port,
            what: "dbslots gate",
        },
        &log,
    )
}

fn start_haproxy(dir: &Path, name: &str, upstream: &str, cap: u32) -> Result<Proxy> {
    let port = free_port()?;
    let config = dir.join(format!("haproxy-{name}.cfg"));
    let log = dir.join(format!("haproxy-{name}.log"));
    std::fs::write(
        &config,
        format!(
            "global\n    maxconn 8192\ndefaults\n    mode tcp\n    timeout connect 10s\n    \
             timeout client 1h\n    timeout server 1h\n    timeout queue 30s\n\
             listen mysql\n    bind 127.0.0.1:{port}\n    server db {upstream} maxconn {cap}\n"
        ),
    )?;
    let child = Command::new("haproxy")
        .arg("-f")
        .arg(&config)
        .arg("-db")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::options().append(true).open(&log)?)
        .spawn()
        .context("cannot start haproxy")?;
    wait_ready(
        Proxy {
            child,
            port,
            what: "haproxy",
        },
        &log,
    )
}

/// Runs sysbench's `oltp_point_select` against `port` with `args`; its output.
fn sysbench(port: u16, args: &[&str]) -> Result<String> {
    check_interrupted()?;
    let out = Command::new("sysbench")
        .arg("oltp_point_select")
        .args([
            "--mysql-host=127.0.0.1",
            &format!("--mysql-port={port}"),
            &format!("--mysql-user={USER}"),
            &format!("--mysql-password={PASSWORD}"),
            &format!("--mysql-db={DATABASE}"),
            "--tables=1",
            "--table-size=10000",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run sysbench")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "sysbench {args:?} on port {port} failed: {}{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// `queries: N (R per sec.)` of sysbench's report.
fn parse_sysbench(out: &str) -> Result<(u64, f64)> {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("queries:"))
        .with_context(|| format!("no `queries:` line in sysbench's report:\n{out}"))?;
    let mut words = line.split_whitespace().skip(1);
    let total = words.next().and_then(|w| w.parse().ok());
    let rate = words
        .next()
        .and_then(|w| w.trim_start_matches('(').parse().ok());
    match (total, rate) {
        (Some(t), Some(r)) => Ok((t, r)),
        _ => bail!("cannot read sysbench's line `{line}`"),
    }
}

/// PDO connect + `SELECT 1` + close, `n` in a row; prints the mean in µs.
const CONNECT_PHP: &str = r#"<?php
[$_, $port, $n, $db, $user, $pass] = $argv;
$t = microtime(true);
for ($i = 0; $i < (int)$n; $i++) {
    $pdo = new PDO("mysql:host=127.0.0.1;port=$port;dbname=$db", $user, $pass);
    $pdo->query('SELECT 1')->fetchColumn();
    $pdo = null;
}
printf("%.1f\n", (microtime(true) - $t) / (int)$n * 1e6);
"#;

fn php_connects(script: &Path, port: u16, n: u32) -> Result<f64> {
    check_interrupted()?;
    let out = Command::new("php")
        .arg(script)
        .args([&port.to_string(), &n.to_string(), DATABASE, USER, PASSWORD])
        .stdin(Stdio::null())
        .output()
        .context("cannot run php")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the PHP connect loop on port {port} failed: {}{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text.trim()
        .parse()
        .with_context(|| format!("the PHP connect loop printed `{text}`"))
}

struct Memory {
    gate_kib: f64,
    haproxy_kib: f64,
}

/// A stand-in server: greets each connection with 8 bytes and holds it
/// until dropped (no MySQL server keeps 2,000 unauthenticated connections).
struct HoldingServer {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HoldingServer {
    fn start() -> Result<HoldingServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { return };
                let _ = conn.write_all(&[7u8; 8]);
                held.push(conn);
            }
        });
        Ok(HoldingServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HoldingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// RSS growth of the gate and of HAProxy per idle relayed connection.
fn idle_memory(dbslots: &Path, dir: &Path) -> Result<Memory> {
    raise_open_file_limit();
    let server = HoldingServer::start()?;
    let cap = u32::try_from(IDLE_CONNECTIONS * 2)?;
    let gate = start_gate(dbslots, dir, "memory", &server.addr, cap, None)?;
    let gate_kib = per_connection_kib(&gate)?;
    drop(gate);
    let haproxy = start_haproxy(dir, "memory", &server.addr, cap)?;
    let haproxy_kib = per_connection_kib(&haproxy)?;
    drop(haproxy);
    Ok(Memory {
        gate_kib,
        haproxy_kib,
    })
}

/// Opens connections through `proxy` (each greeted, then a 100-byte
/// "login" the other way), and divides the RSS growth by their number
/// (after 100 to warm up the allocator).
fn per_connection_kib(proxy: &Proxy) -> Result<f64> {
    let open = |n: usize| -> Result<Vec<TcpStream>> {
        (0..n)
            .map(|_| {
                check_interrupted()?;
                let mut c = TcpStream::connect(("127.0.0.1", proxy.port))?;
                c.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut greeting = [0u8; 8];
                c.read_exact(&mut greeting)
                    .with_context(|| format!("no greeting through {}", proxy.what))?;
                c.write_all(&[1u8; 100])?;
                Ok(c)
            })
            .collect()
    };
    let warm = open(100)?;
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(proxy.pid())?;
    let idle = open(IDLE_CONNECTIONS)?;
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(proxy.pid())?;
    drop(idle);
    drop(warm);
    Ok(after.saturating_sub(before) as f64 / IDLE_CONNECTIONS as f64)
}

/// Raises this process's open-file limit to its hard limit (the memory
/// figure holds 4,000 sockets here).
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysbench_queries_line_is_read() {
        let out = "SQL statistics:\n    queries performed:\n        read: 5\n    \
                   queries:                             64145  (10681.47 per sec.)\n";
        let (n, r) = parse_sysbench(out).unwrap();
        assert_eq!(n, 64145);
        assert!((r - 10681.47).abs() < 1e-6);
        assert!(parse_sysbench("nothing").is_err());
    }

    #[test]
    fn medians_of_odd_and_even_rounds() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn arguments_are_checked() {
        let args = |l: &[&str]| parse(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(args(&["--rounds", "5"]).unwrap().rounds, 5);
        assert!(args(&["--rounds", "0"]).is_err());
        assert!(args(&["--fast"]).is_err());
    }
}
