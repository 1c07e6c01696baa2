//! `cargo xtask demo [--batches | --no-throttle]`: the main job, end to end.
//!
//! Starts a throwaway MySQL with `max_connections=151`, queues
//! `workers × rows-per-worker` jobs, and runs 1000 `dbslots-demo-worker`
//! processes with `dbslots spawn` (release builds) against it as the
//! ordinary account; each claims and processes its share and keeps its
//! connection for `--hold-ms`. Then it reports the refused connections
//! (1040/1203/1226, which must be 0), the server's `Max_used_connections`,
//! the rows processed (which must equal the rows queued) and the wall time
//! against the ideal. The pool capacity is the one dbslots-mysql suggests
//! for the server.
//!
//! * default: adaptive mode (the spawner takes a slot per worker and hands
//!   it over as the worker's stdin; the worker keeps it until it exits);
//! * `--batches`: the reference system's batches of 150 every 2 s, each
//!   worker taking its own slot through `dbslots_mysql::Connector`;
//! * `--no-throttle`: all workers at once (they all connect at the same
//!   moment once started), no slots, the reference's five connect attempts:
//!   shows the errors the reference systems suffered.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dbslots_testkit::{MysqlOptions, MysqlServer};
use serde_json::Value;

use crate::child::{self, Reported, cargo, check_interrupted};
use crate::servers;

/// The server's limit, as in the reference system.
const MAX_CONNECTIONS: u32 = 151;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Adaptive,
    Batches,
    NoThrottle,
}

struct Args {
    mode: Mode,
    workers: u32,
    hold_ms: u64,
    rows_per_worker: u32,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut parsed = Args {
        mode: Mode::Adaptive,
        workers: 1000,
        hold_ms: 200,
        rows_per_worker: 20,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> Result<u64> {
            let value = it
                .next()
                .with_context(|| format!("{name} wants a number"))?;
            value
                .parse()
                .with_context(|| format!("{name} wants a number, not `{value}`"))
        };
        match arg.as_str() {
            "--batches" if parsed.mode == Mode::Adaptive => parsed.mode = Mode::Batches,
            "--no-throttle" if parsed.mode == Mode::Adaptive => parsed.mode = Mode::NoThrottle,
            "--workers" => parsed.workers = u32::try_from(number("--workers")?)?,
            "--hold-ms" => parsed.hold_ms = number("--hold-ms")?,
            "--rows-per-worker" => {
                parsed.rows_per_worker = u32::try_from(number("--rows-per-worker")?)?
            }
            _ => bail!(
                "usage: cargo xtask demo [--batches | --no-throttle] [--workers N] [--hold-ms MS] [--rows-per-worker N]"
            ),
        }
    }
    if parsed.workers == 0 || parsed.rows_per_worker == 0 {
        bail!("--workers and --rows-per-worker must be at least 1");
    }
    Ok(parsed)
}

/// Runs the demo; fails (exit status 1) when a throttled run refused a
/// connection or lost a row.
pub fn run(args: &[String]) -> Result<()> {
    let args = parse(args)?;
    let scratch = servers::scratch_dir()?;
    child::install_interrupt_handler()?;
    // Not `--quiet`: on a first run this build takes minutes, and cargo's
    // progress shows that it is working.
    child::run(
        "`cargo build --release -p dbslots-cli -p dbslots-demo-worker` (a first run builds for a few minutes)",
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
    let dbslots = bin.join("dbslots");
    let worker = bin.join("dbslots-demo-worker");

    eprintln!("demo: starting a throwaway MySQL with max_connections={MAX_CONNECTIONS}");
    let server = MysqlServer::start(MysqlOptions {
        max_connections: Some(MAX_CONNECTIONS),
        ..Default::default()
    })
    .context("cannot start the demo's MySQL")?;
    check_interrupted()?;
    let outcome = demo(&args, &server, &dbslots, &worker, scratch.path());
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

fn demo(
    args: &Args,
    server: &MysqlServer,
    dbslots: &Path,
    worker: &Path,
    dir: &Path,
) -> Result<bool> {
    let prepared = json_of(
        Command::new(worker)
            .args(["prepare", "--admin-url", &server.admin_url()])
            .args(["--url", &server.user_url()])
            .args(["--workers", &args.workers.to_string()])
            .args(["--rows-per-worker", &args.rows_per_worker.to_string()]),
        "preparing the jobs table",
    )?;
    let capacity = prepared["capacity"].as_u64().context("no capacity")?;
    let rows = prepared["rows"].as_u64().context("no rows")?;
    println!(
        "demo: {} with max_connections {}; pool capacity {capacity} ({})",
        prepared["version"].as_str().unwrap_or("?"),
        prepared["max_connections"],
        prepared["reason"].as_str().unwrap_or("?")
    );

    let logs = dir.join("logs");
    let mut spawn = Command::new(dbslots);
    spawn
        .args(["spawn", "--workers", &args.workers.to_string()])
        .arg("--pool")
        .arg(dir.join("pool"))
        .args(["--capacity", &capacity.to_string()])
        .arg("--log-dir")
        .arg(&logs)
        .arg("--joblog")
        .arg(dir.join("joblog.tsv"));
    let what = match args.mode {
        Mode::Adaptive => "adaptive (dbslots spawn: a worker starts the moment a slot is free)",
        Mode::Batches => {
            spawn.args(["--batch-size", "150", "--batch-delay", "2"]);
            "reference batches of 150 every 2 s, workers take their own slots"
        }
        Mode::NoThrottle => {
            let all = args.workers.to_string();
            spawn.args(["--batch-size", &all, "--batch-delay", "0"]);
            "no throttle: every worker at once, no slots"
        }
    };
    spawn
        .arg("--")
        .arg(worker)
        .args(["work", "--url", &server.user_url()])
        .args(["--hold-ms", &args.hold_ms.to_string()]);
    if args.mode == Mode::NoThrottle {
        // Like the reference: every worker connects at the same moment, once
        // all of them have been started (about 2 ms a process here).
        let start_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            + 1_000
            + 3 * u64::from(args.workers);
        spawn
            .arg("--no-slots")
            .arg("--start-at")
            .arg(start_at.to_string());
    }
    println!(
        "demo: {what}: {} workers holding their connection {} ms, {} rows each",
        args.workers, args.hold_ms, args.rows_per_worker
    );
    let started = Instant::now();
    let status = run_spawner(spawn)?;
    let wall = started.elapsed();

    let report = json_of(
        Command::new(worker).args(["report", "--admin-url", &server.admin_url()]),
        "reading the results",
    )?;
    let results = read_results(&logs, args.workers)?;

    let refused = |code: &str| results.refusals.get(code).copied().unwrap_or(0);
    let (e1040, e1203, e1226) = (refused("1040"), refused("1203"), refused("1226"));
    let errors = e1040 + e1203 + e1226;
    let processed = report["done"].as_u64().unwrap_or(0);
    let twice = report["processed_twice"].as_u64().unwrap_or(0);
    let status_of = |name: &str| report["status"][name].as_u64().unwrap_or(0);
    let slots = if args.mode == Mode::NoThrottle {
        u64::from(MAX_CONNECTIONS)
    } else {
        capacity
    };
    let ideal = args.workers as f64 * args.hold_ms as f64 / 1000.0 / slots as f64;
    let ok = |good: bool| if good { "ok" } else { "FAILED" };

    println!(
        "  refused connections   1040: {e1040}  1203: {e1203}  1226: {e1226}   (must be 0: {})",
        ok(errors == 0)
    );
    println!(
        "  server                Max_used_connections {} of {MAX_CONNECTIONS}, Connection_errors_max_connections {}",
        status_of("Max_used_connections"),
        status_of("Connection_errors_max_connections")
    );
    println!(
        "  rows                  {processed} processed of {rows} queued, {twice} twice   (must be equal: {})",
        ok(processed == rows && twice == 0)
    );
    println!(
        "  workers               {} succeeded, {} failed; dbslots spawn exited {}",
        results.ok,
        u64::from(args.workers) - results.ok,
        describe(status)
    );
    println!(
        "  wall time             {:.2} s; ideal {ideal:.2} s ({} × {} ms / {slots} slots): {:.2}× the ideal",
        wall.as_secs_f64(),
        args.workers,
        args.hold_ms,
        wall.as_secs_f64() / ideal
    );
    let passed = errors == 0 && processed == rows && twice == 0 && status.success();
    match (args.mode, passed) {
        (Mode::NoThrottle, _) => {
            println!(
                "demo: without slots the server refused {errors} connections and {} rows were left undone: the reference system's failure",
                rows - processed.min(rows)
            );
            Ok(true)
        }
        (_, true) => {
            println!("demo: PASSED");
            Ok(true)
        }
        (_, false) => {
            println!("demo: FAILED (worker logs were in {})", logs.display());
            Ok(false)
        }
    }
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
        thread::sleep(Duration::from_millis(20));
    }
}

struct Results {
    ok: u64,
    refusals: std::collections::BTreeMap<String, u64>,
}

/// Sums the `DEMO-RESULT` lines of the workers' log files.
fn read_results(logs: &Path, workers: u32) -> Result<Results> {
    let mut results = Results {
        ok: 0,
        refusals: Default::default(),
    };
    for index in 0..workers {
        let path = logs.join(format!("{index}.log"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Some(line) = text.lines().find_map(|l| l.strip_prefix("DEMO-RESULT ")) else {
            continue;
        };
        let value: Value = serde_json::from_str(line)
            .with_context(|| format!("{}: cannot parse {line:?}", path.display()))?;
        if value["ok"].as_bool() == Some(true) {
            results.ok += 1;
        }
        if let Some(map) = value["refusals"].as_object() {
            for (code, n) in map {
                *results.refusals.entry(code.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    Ok(results)
}
