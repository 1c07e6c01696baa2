//! `cargo xtask demo`: the main job, end to end, measured against an honest
//! yardstick in the same run.
//!
//! Starts a throwaway MySQL with `max_connections=151`, queues
//! `workers × rows-per-worker` jobs, and runs 1000 workers with
//! `dbslots spawn` (release builds) against it as the ordinary account; each
//! claims and processes its share and keeps its connection for `--hold-ms`.
//! It reports the refused connections (1040/1203/1226, which must be 0 for
//! every throttled variant), the server's `Max_used_connections`, the rows
//! processed (which must equal the rows queued) and the wall time. The pool
//! capacity is the one dbslots-mysql suggests for the server.
//!
//! The variants (one or more per run):
//!
//! * adaptive (default): the spawner takes a slot per worker and hands it
//!   over as the worker's stdin; the worker keeps it until it exits;
//! * `--batches`: the reference system's batches of 150 every 2 s, each
//!   worker taking its own slot;
//! * `--no-throttle`: all workers at once (they all connect at the same
//!   moment once started), no slots, the reference's five connect attempts:
//!   shows the errors the reference systems suffered;
//! * always, the yardstick: the same workers unthrottled against the same
//!   server with `max_connections` raised so that it admits them all. Its
//!   wall time is what this machine needs to start and connect the workers
//!   with no limit in the way; a throttled run cannot beat it, so the
//!   demo's ratio is against it and against `workers × hold / capacity`
//!   (what the slots alone allow), naming the bound that applies.
//!
//! `--all` runs adaptive, batches and no-throttle; `--php` runs them with
//! the reference systems' own kind of worker (PHP PDO,
//! `crates/dbslots-demo-worker/php/worker.php`; in batch mode each worker
//! runs under `dbslots exec`, which takes its slot); `--runs N` repeats
//! everything, alternating the order, and prints medians. Each run also
//! says where the time goes: a worker's start-to-connected time, and the
//! CPU time per worker of the workers, of the spawner and of the server.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dbslots_testkit::{MysqlOptions, MysqlServer};
use serde_json::Value;

use crate::child::{self, Reported, cargo, check_interrupted};
use crate::{packages, servers};

/// The server's limit, as in the reference system.
const MAX_CONNECTIONS: u32 = 151;
/// The reference's batches: this many workers...
const BATCH_SIZE: u32 = 150;
/// ...every this many seconds.
const BATCH_DELAY_SECS: u32 = 2;
/// The PHP worker, relative to the workspace root.
const PHP_WORKER: &str = "crates/dbslots-demo-worker/php/worker.php";
/// What `--php` needs: a file, and the Debian package that provides it.
/// PDO's MySQL driver (php-mysql) is checked by [`ensure_pdo_mysql`].
const PHP_PROGRAMS: &[(&str, &str)] = &[("/usr/bin/php", "php-cli")];

const USAGE: &str = "usage: cargo xtask demo [--batches | --no-throttle | --all] [--php] [--runs N] \
                     [--workers N] [--hold-ms MS] [--rows-per-worker N]";

/// How the workers of one variant are throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `dbslots spawn`: a worker starts the moment a slot is free.
    Adaptive,
    /// The reference: batches of 150 every 2 s, each worker takes a slot.
    Batches,
    /// Every worker at once, against the server's 151.
    NoThrottle,
    /// Every worker as it starts, against a server that admits them all.
    Yardstick,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Adaptive => "adaptive (dbslots spawn)",
            Mode::Batches => "batches of 150 every 2 s (the reference)",
            Mode::NoThrottle => "no throttle, max_connections 151",
            Mode::Yardstick => "unthrottled, server admits all (yardstick)",
        }
    }

    /// Whether refusals or lost rows fail the demo.
    fn throttled(self) -> bool {
        matches!(self, Mode::Adaptive | Mode::Batches)
    }
}

/// Which program the workers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `dbslots-demo-worker work`.
    Rust,
    /// `php worker.php` with PDO.
    Php,
}

struct Args {
    modes: Vec<Mode>,
    kind: Kind,
    runs: u32,
    workers: u32,
    hold_ms: u64,
    rows_per_worker: u32,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut parsed = Args {
        modes: Vec::new(),
        kind: Kind::Rust,
        runs: 1,
        workers: 1000,
        hold_ms: 200,
        rows_per_worker: 20,
    };
    let mut all = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> Result<u64> {
            let value = it
                .next()
                .with_context(|| format!("{name} wants a number\n{USAGE}"))?;
            value
                .parse()
                .with_context(|| format!("{name} wants a number, not `{value}`"))
        };
        match arg.as_str() {
            "--batches" => parsed.modes.push(Mode::Batches),
            "--no-throttle" => parsed.modes.push(Mode::NoThrottle),
            "--all" => all = true,
            "--php" => parsed.kind = Kind::Php,
            "--runs" => parsed.runs = u32::try_from(number("--runs")?)?,
            "--workers" => parsed.workers = u32::try_from(number("--workers")?)?,
            "--hold-ms" => parsed.hold_ms = number("--hold-ms")?,
            "--rows-per-worker" => {
                parsed.rows_per_worker = u32::try_from(number("--rows-per-worker")?)?
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    if parsed.workers == 0 || parsed.rows_per_worker == 0 || parsed.runs == 0 {
        bail!("--workers, --rows-per-worker and --runs must be at least 1");
    }
    if all || parsed.kind == Kind::Php {
        parsed.modes = vec![Mode::Adaptive, Mode::Batches, Mode::NoThrottle];
    } else if parsed.modes.is_empty() {
        parsed.modes.push(Mode::Adaptive);
    }
    parsed.modes.dedup();
    parsed.modes.push(Mode::Yardstick);
    Ok(parsed)
}

/// Runs the demo; fails (exit status 1) when a throttled run refused a
/// connection or lost a row.
pub fn run(args: &[String]) -> Result<()> {
    let args = parse(args)?;
    let scratch = servers::scratch_dir()?;
    child::install_interrupt_handler()?;
    if args.kind == Kind::Php {
        packages::ensure(PHP_PROGRAMS, "`cargo xtask demo --php`")?;
        ensure_pdo_mysql()?;
    }
    eprintln!(
        "demo: building dbslots and the demo worker (release; the first build takes a few minutes)"
    );
    child::run(
        "`cargo build --release -p dbslots-cli -p dbslots-demo-worker`",
        cargo(&[
            "build",
            "--release",
            "-p",
            "dbslots-cli",
            "-p",
            "dbslots-demo-worker",
        ]),
    )?;
    let bin = crate::target_dir().join("release");
    let programs = Programs {
        dbslots: bin.join("dbslots"),
        worker: bin.join("dbslots-demo-worker"),
        php_worker: crate::workspace_root().join(PHP_WORKER),
    };

    eprintln!("demo: starting a throwaway MySQL with max_connections={MAX_CONNECTIONS}");
    let headroom = args.workers + 50;
    let server = MysqlServer::start(MysqlOptions {
        max_connections: Some(MAX_CONNECTIONS),
        // The yardstick connects every worker at once: a listen backlog and
        // enough descriptors for all of them, so that it measures the
        // machine, not the server's defaults.
        extra_args: vec![
            format!("--back-log={headroom}"),
            format!("--open-files-limit={}", 4 * headroom + 1000),
        ],
        ..Default::default()
    })
    .context("cannot start the demo's MySQL")?;
    check_interrupted()?;
    let outcome = demo(&args, &server, &programs, scratch.path());
    let stopped = server
        .stop()
        .context("the demo ran, but stopping MySQL failed");
    drop(scratch);
    let passed = outcome?;
    stopped?;
    if passed {
        Ok(())
    } else {
        Err(Reported(1).into())
    }
}

/// The programs a run starts.
struct Programs {
    dbslots: PathBuf,
    worker: PathBuf,
    php_worker: PathBuf,
}

/// What one variant of one run measured.
struct Outcome {
    mode: Mode,
    wall: Duration,
    refusals: BTreeMap<String, u64>,
    processed: u64,
    rows: u64,
    twice: u64,
    workers_ok: u64,
    max_used: u64,
    status: ExitStatus,
    /// Medians over the workers, in milliseconds.
    start_to_connected_ms: Option<f64>,
    main_to_connected_ms: Option<f64>,
    /// CPU per worker, in milliseconds.
    worker_cpu_ms: f64,
    spawner_cpu_ms: f64,
    server_cpu_ms: Option<f64>,
}

impl Outcome {
    fn errors(&self) -> u64 {
        ["1040", "1203", "1226"]
            .iter()
            .map(|code| self.refusals.get(*code).copied().unwrap_or(0))
            .sum()
    }

    fn passed(&self) -> bool {
        self.errors() == 0
            && self.processed == self.rows
            && self.twice == 0
            && self.status.success()
    }
}

fn demo(args: &Args, server: &MysqlServer, programs: &Programs, dir: &Path) -> Result<bool> {
    let prepared = prepare(args, server, programs, MAX_CONNECTIONS)?;
    let capacity = prepared["capacity"].as_u64().context("no capacity")?;
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "demo: {} with max_connections {}; pool capacity {capacity} ({}); {cores} cores",
        prepared["version"].as_str().unwrap_or("?"),
        prepared["max_connections"],
        prepared["reason"].as_str().unwrap_or("?")
    );
    println!(
        "demo: {} {} workers, each holding its connection {} ms and doing {} rows; {} run(s)",
        args.workers,
        match args.kind {
            Kind::Rust => "Rust (dbslots-demo-worker)",
            Kind::Php => "PHP PDO (php worker.php)",
        },
        args.hold_ms,
        args.rows_per_worker,
        args.runs
    );
    let mut outcomes: Vec<Outcome> = Vec::new();
    for run in 0..args.runs {
        // Alternate the order, so that neither variant always runs on a
        // warmer (or more tired) server.
        let mut order = args.modes.clone();
        if run % 2 == 1 {
            order.reverse();
        }
        for mode in order {
            let limit = if mode == Mode::Yardstick {
                args.workers + 50
            } else {
                MAX_CONNECTIONS
            };
            prepare(args, server, programs, limit)?;
            let run_dir = dir.join(format!("run-{run}-{mode:?}"));
            let outcome = run_variant(args, mode, server, programs, &run_dir, capacity)?;
            print_outcome(run + 1, args.runs, &outcome);
            outcomes.push(outcome);
        }
    }
    summarize(args, &outcomes, capacity, cores)
}

/// Creates the jobs table, resets the status counters and sets the
/// server's `max_connections`; returns the `prepare` document.
fn prepare(args: &Args, server: &MysqlServer, programs: &Programs, limit: u32) -> Result<Value> {
    json_of(
        Command::new(&programs.worker)
            .args(["prepare", "--admin-url", &server.admin_url()])
            .args(["--url", &server.user_url()])
            .args(["--workers", &args.workers.to_string()])
            .args(["--rows-per-worker", &args.rows_per_worker.to_string()])
            .args(["--max-connections", &limit.to_string()]),
        "preparing the jobs table",
    )
}

fn run_variant(
    args: &Args,
    mode: Mode,
    server: &MysqlServer,
    programs: &Programs,
    dir: &Path,
    capacity: u64,
) -> Result<Outcome> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let logs = dir.join("logs");
    let joblog = dir.join("joblog.tsv");
    let mut spawn = Command::new(&programs.dbslots);
    spawn
        .args(["spawn", "--workers", &args.workers.to_string()])
        .arg("--pool")
        .arg(dir.join("pool"))
        .args(["--capacity", &capacity.to_string()])
        .arg("--log-dir")
        .arg(&logs)
        .arg("--joblog")
        .arg(&joblog);
    let all = args.workers.to_string();
    match mode {
        Mode::Adaptive => {}
        Mode::Batches => {
            spawn.args([
                "--batch-size",
                &BATCH_SIZE.to_string(),
                "--batch-delay",
                &BATCH_DELAY_SECS.to_string(),
            ]);
        }
        Mode::NoThrottle | Mode::Yardstick => {
            spawn.args(["--batch-size", &all, "--batch-delay", "0"]);
        }
    }
    // Like the reference: under --no-throttle every worker connects at the
    // same moment, once all of them have been started (about 2 ms a process
    // here, more for PHP).
    let start_at = (mode == Mode::NoThrottle).then(|| {
        let per_worker_ms = if args.kind == Kind::Php { 10 } else { 3 };
        unix_ms() + 1_000 + per_worker_ms * u64::from(args.workers)
    });
    let no_slots = matches!(mode, Mode::NoThrottle | Mode::Yardstick);
    spawn.arg("--");
    match args.kind {
        Kind::Rust => {
            spawn
                .arg(&programs.worker)
                .args(["work", "--url", &server.user_url()])
                .args(["--hold-ms", &args.hold_ms.to_string()]);
            if no_slots {
                spawn.arg("--no-slots");
            }
            if let Some(at) = start_at {
                spawn.args(["--start-at", &at.to_string()]);
            }
        }
        Kind::Php => {
            if mode == Mode::Batches {
                // The PHP worker takes no slot itself: `dbslots exec` takes
                // one from the pool the spawner names in DBSLOTS_POOL.
                spawn.arg(&programs.dbslots).args(["exec", "--"]);
            }
            spawn.arg("php").arg(&programs.php_worker);
            php_env(&mut spawn, server, args.hold_ms, no_slots, start_at)?;
        }
    }

    let children_before = children_cpu();
    let server_before = server_cpu(server);
    let started = Instant::now();
    let status = run_spawner(spawn)?;
    let wall = started.elapsed();
    let spawn_cpu = children_cpu().saturating_sub(children_before);
    let server_cpu = server_cpu(server)
        .zip(server_before)
        .map(|(after, before)| after.saturating_sub(before));

    let report = json_of(
        Command::new(&programs.worker).args(["report", "--admin-url", &server.admin_url()]),
        "reading the results",
    )?;
    let results = read_results(&logs, args.workers)?;
    let starts = read_joblog_starts(&joblog)?;
    let mut start_to_connected: Vec<f64> = results
        .connected_at_ms
        .iter()
        .filter_map(|(index, at)| Some(at - starts.get(index)?))
        .collect();
    let mut main_to_connected = results.connect_ms.clone();
    let per_worker = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(args.workers);
    let workers_cpu_ms: f64 = results.cpu_ms.iter().sum();
    Ok(Outcome {
        mode,
        wall,
        refusals: results.refusals,
        processed: report["done"].as_u64().unwrap_or(0),
        rows: report["queued"].as_u64().unwrap_or(0),
        twice: report["processed_twice"].as_u64().unwrap_or(0),
        workers_ok: results.ok,
        max_used: report["status"]["Max_used_connections"]
            .as_u64()
            .unwrap_or(0),
        status,
        start_to_connected_ms: median(&mut start_to_connected),
        main_to_connected_ms: median(&mut main_to_connected),
        worker_cpu_ms: workers_cpu_ms / f64::from(args.workers),
        // The spawn's children are the spawner and, reaped by it, every
        // worker (and `dbslots exec` under PHP batches): what is not the
        // workers' own is the spawner's (and exec's).
        spawner_cpu_ms: (per_worker(spawn_cpu) - workers_cpu_ms / f64::from(args.workers)).max(0.0),
        server_cpu_ms: server_cpu.map(per_worker),
    })
}

/// The PHP worker's connection settings, from the ordinary account's URL,
/// as environment variables (never on a command line).
fn php_env(
    spawn: &mut Command,
    server: &MysqlServer,
    hold_ms: u64,
    no_slots: bool,
    start_at: Option<u64>,
) -> Result<()> {
    let url = server.user_url();
    // mysql://USER:PASSWORD@HOST:PORT/DB?...: the testkit's accounts have
    // URL-safe names and passwords.
    let rest = url
        .strip_prefix("mysql://")
        .context("the test server's URL is not mysql://")?;
    let (credentials, rest) = rest.split_once('@').context("no credentials in the URL")?;
    let (user, password) = credentials
        .split_once(':')
        .context("no password in the URL")?;
    let (host_port, rest) = rest.split_once('/').context("no database in the URL")?;
    let (host, port) = host_port.rsplit_once(':').context("no port in the URL")?;
    let database = rest.split('?').next().unwrap_or_default();
    spawn
        .env("DEMO_DB_HOST", host)
        .env("DEMO_DB_PORT", port)
        .env("DEMO_DB_NAME", database)
        .env("DEMO_DB_USER", user)
        .env("DEMO_DB_PASSWORD", password)
        .env("DEMO_HOLD_MS", hold_ms.to_string())
        .env("DEMO_NO_SLOTS", if no_slots { "1" } else { "0" })
        .env(
            "DEMO_START_AT",
            start_at.map(|at| at.to_string()).unwrap_or_default(),
        );
    Ok(())
}

fn print_outcome(run: u32, runs: u32, o: &Outcome) {
    let ms = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1} ms"));
    println!(
        "run {run}/{runs}  {:<44} {:>6.2} s  refused 1040/1203/1226: {}/{}/{}  rows {}/{}{}  Max_used_connections {}  workers ok {}  spawn exited {}",
        o.mode.label(),
        o.wall.as_secs_f64(),
        o.refusals.get("1040").unwrap_or(&0),
        o.refusals.get("1203").unwrap_or(&0),
        o.refusals.get("1226").unwrap_or(&0),
        o.processed,
        o.rows,
        if o.twice > 0 {
            format!(" ({} twice)", o.twice)
        } else {
            String::new()
        },
        o.max_used,
        o.workers_ok,
        describe(o.status)
    );
    println!(
        "           per worker: start -> connected {} (main -> connected {}); CPU: worker {:.1} ms, spawner {:.2} ms, server {}",
        ms(o.start_to_connected_ms),
        ms(o.main_to_connected_ms),
        o.worker_cpu_ms,
        o.spawner_cpu_ms,
        ms(o.server_cpu_ms)
    );
}

/// Prints the medians over the runs, the ratios and the bound; returns
/// whether every throttled variant passed in every run.
fn summarize(args: &Args, outcomes: &[Outcome], capacity: u64, cores: usize) -> Result<bool> {
    let of = |mode: Mode| outcomes.iter().filter(move |o| o.mode == mode);
    let median_of = |mode: Mode, f: &dyn Fn(&Outcome) -> f64| {
        let mut values: Vec<f64> = of(mode).map(f).collect();
        median(&mut values)
    };
    let wall = |mode: Mode| median_of(mode, &|o| o.wall.as_secs_f64());
    let yardstick = wall(Mode::Yardstick).context("the yardstick did not run")?;
    let slots_ideal = f64::from(args.workers) * args.hold_ms as f64 / 1000.0 / capacity as f64;
    let batches = wall(Mode::Batches);
    println!();
    println!(
        "demo: medians over {} run(s); yardstick = the same workers unthrottled, server admitting all: {yardstick:.2} s; \
         slots ideal = {} × {} ms / {capacity} slots = {slots_ideal:.2} s",
        args.runs, args.workers, args.hold_ms
    );
    println!(
        "| variant | wall time | vs yardstick | vs slots ideal | refused (1040+1203+1226) | rows done |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for &mode in &args.modes {
        let Some(w) = wall(mode) else { continue };
        let refused = median_of(mode, &|o| o.errors() as f64).unwrap_or(0.0);
        let done = median_of(mode, &|o| o.processed as f64).unwrap_or(0.0);
        let rows = of(mode).map(|o| o.rows).max().unwrap_or(0);
        println!(
            "| {} | {w:.2} s | {:.2}× | {:.2}× | {refused:.0} | {done:.0} / {rows} |",
            mode.label(),
            w / yardstick,
            w / slots_ideal
        );
    }
    if let Some(adaptive) = wall(Mode::Adaptive) {
        let bound = if yardstick > slots_ideal {
            format!(
                "the machine: starting and connecting {} workers with no limit at all takes {yardstick:.2} s, \
                 more than the {slots_ideal:.2} s the slots allow",
                args.workers
            )
        } else {
            format!(
                "the slots: {} × {} ms / {capacity} = {slots_ideal:.2} s is more than the {yardstick:.2} s \
                 the machine needs without a limit",
                args.workers, args.hold_ms
            )
        };
        println!(
            "demo: adaptive {adaptive:.2} s = {:.2}× the yardstick (goal ≤ 1.2×){}; the bound is {bound}",
            adaptive / yardstick,
            batches.map_or(String::new(), |b| format!(
                ", {:.1}× faster than the reference's batches (goal ≥ 5×)",
                b / adaptive
            ))
        );
    }
    // Where the time goes, from the yardstick (no waiting in it).
    let cpu = |f: &dyn Fn(&Outcome) -> f64| median_of(Mode::Yardstick, f).unwrap_or(0.0);
    let worker_cpu = cpu(&|o| o.worker_cpu_ms);
    let spawner_cpu = cpu(&|o| o.spawner_cpu_ms);
    let server_cpu = median_of(Mode::Yardstick, &|o| o.server_cpu_ms.unwrap_or(f64::NAN))
        .filter(|v| v.is_finite());
    let total = worker_cpu + spawner_cpu + server_cpu.unwrap_or(0.0);
    let cpu_bound = total * f64::from(args.workers) / 1000.0 / cores as f64;
    println!(
        "demo: where the time goes (yardstick, per worker): start -> connected {:.1} ms; CPU {worker_cpu:.1} ms worker + \
         {spawner_cpu:.2} ms spawner + {} server = {total:.1} ms; × {} workers / {cores} cores = {cpu_bound:.2} s of \
         CPU-bound wall time at the least",
        median_of(Mode::Yardstick, &|o| o
            .start_to_connected_ms
            .unwrap_or(f64::NAN))
        .filter(|v| v.is_finite())
        .unwrap_or(0.0),
        server_cpu.map_or("n/a".to_owned(), |v| format!("{v:.1} ms")),
        args.workers
    );

    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.mode.throttled() && !o.passed())
        .collect();
    for o in &failed {
        println!(
            "demo: FAILED: {} refused {} connections, did {} of {} rows ({} twice), spawn exited {}",
            o.mode.label(),
            o.errors(),
            o.processed,
            o.rows,
            o.twice,
            describe(o.status)
        );
    }
    if of(Mode::Yardstick).any(|o| o.errors() > 0) {
        println!(
            "demo: warning: the yardstick was refused connections although max_connections admitted all; \
             its time is not a clean yardstick"
        );
    }
    if failed.is_empty() {
        println!("demo: PASSED");
    }
    Ok(failed.is_empty())
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// CPU time (user + system) of this process's children that were waited
/// for, with theirs: the spawner and every worker it reaped.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given; RUSAGE_CHILDREN
    // is always valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// CPU time (user + system) of the server process so far, from
/// `/proc/PID/stat`; `None` for a server that is not a local process.
fn server_cpu(server: &MysqlServer) -> Option<Duration> {
    let pid = std::fs::read_to_string(server.data_dir()?.join("mysqld.pid")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).ok()?;
    // Fields after the command (which may hold spaces) in parentheses:
    // utime and stime are fields 14 and 15, in clock ticks.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).ok().filter(|&t| t > 0)?;
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => code.to_string(),
        None => format!("by {status}"),
    }
}

/// Runs `command` and parses its stdout as one JSON value.
fn json_of(command: &mut Command, what: &str) -> Result<Value> {
    check_interrupted()?;
    let out = command
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start the demo worker for {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{what}: unexpected output {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs the spawner in its own process group; on Ctrl-C or SIGTERM it gets
/// SIGINT (it then stops its workers in order) and xtask waits for it.
fn run_spawner(mut command: Command) -> Result<ExitStatus> {
    check_interrupted()?;
    command.process_group(0);
    // SAFETY: prctl is async-signal-safe and nothing is allocated.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut spawner = command.spawn().context("cannot start `dbslots spawn`")?;
    let mut signalled = false;
    loop {
        if let Some(status) = spawner.try_wait()? {
            check_interrupted()?;
            return Ok(status);
        }
        if child::interrupted() && !signalled {
            // SAFETY: SIGINT to the spawner we started.
            unsafe { libc::kill(spawner.id() as libc::pid_t, libc::SIGINT) };
            signalled = true;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The workers' `DEMO-RESULT` lines, summed and collected.
#[derive(Default)]
struct Results {
    ok: u64,
    refusals: BTreeMap<String, u64>,
    /// By worker index.
    connected_at_ms: BTreeMap<u32, f64>,
    connect_ms: Vec<f64>,
    cpu_ms: Vec<f64>,
}

/// Reads the `DEMO-RESULT` lines of the workers' log files.
fn read_results(logs: &Path, workers: u32) -> Result<Results> {
    let mut results = Results::default();
    for index in 0..workers {
        let path = logs.join(format!("{index}.log"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Some(line) = text.lines().find_map(|l| l.split_once("DEMO-RESULT ")) else {
            continue;
        };
        let value: Value = serde_json::from_str(line.1)
            .with_context(|| format!("{}: cannot parse {:?}", path.display(), line.1))?;
        if value["ok"].as_bool() == Some(true) {
            results.ok += 1;
        }
        if let Some(map) = value["refusals"].as_object() {
            for (code, n) in map {
                *results.refusals.entry(code.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
        if let Some(at) = value["connected_at_ms"].as_f64() {
            results.connected_at_ms.insert(index, at);
        }
        if let Some(ms) = value["connect_ms"].as_f64() {
            results.connect_ms.push(ms);
        }
        if let Some(ms) = value["cpu_ms"].as_f64() {
            results.cpu_ms.push(ms);
        }
    }
    Ok(results)
}

/// The joblog's start times (Unix milliseconds) by worker index.
fn read_joblog_starts(path: &Path) -> Result<BTreeMap<u32, f64>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the joblog {}", path.display()))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let seq: u32 = fields.next()?.parse().ok()?;
            let start: f64 = fields.nth(1)?.parse().ok()?;
            Some((seq.checked_sub(1)?, start * 1000.0))
        })
        .collect())
}

/// Fails with what to run when PHP lacks PDO's MySQL driver.
fn ensure_pdo_mysql() -> Result<()> {
    let out = Command::new("php")
        .args([
            "-r",
            "echo in_array('mysql', PDO::getAvailableDrivers()) ? 'yes' : 'no';",
        ])
        .output()
        .context("cannot run php")?;
    if String::from_utf8_lossy(&out.stdout).trim() != "yes" {
        packages::install(
            &["php-mysql"],
            "`cargo xtask demo --php` (PDO's MySQL driver)",
        )?;
    }
    Ok(())
}
