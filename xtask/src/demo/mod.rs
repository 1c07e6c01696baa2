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

mod report;
mod results;
mod variant;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;

use anyhow::{Context, Result, bail};
use dbslots_testkit::{MysqlOptions, MysqlServer};
use serde_json::Value;

use crate::child::{self, Reported, cargo, check_interrupted};
use crate::{packages, servers};
use report::{print_outcome, summarize};
use variant::{Outcome, run_variant};

/// The server's limit, as in the reference system.
const MAX_CONNECTIONS: u32 = 151;
/// The reference's batches: this many workers...
const BATCH_SIZE: u32 = 150;
/// ...every this many seconds.
const BATCH_DELAY_SECS: u32 = 2;
/// The PHP worker, relative to the workspace root.
const PHP_WORKER: &str = "crates/dbslots-demo-worker/php/worker.php";
/// What `--php` needs: a file, and the Debian package that provides it.
/// PDO's MySQL driver (php-mysql) is checked by [`packages::ensure_pdo_mysql`].
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
        packages::ensure_pdo_mysql("`cargo xtask demo --php`")?;
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

/// Fails with what to run when PHP lacks PDO's MySQL driver.
#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args> {
        parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn every_run_has_the_yardstick_last() {
        assert_eq!(args(&[]).unwrap().modes, [Mode::Adaptive, Mode::Yardstick]);
        assert_eq!(
            args(&["--batches"]).unwrap().modes,
            [Mode::Batches, Mode::Yardstick]
        );
        let all = [
            Mode::Adaptive,
            Mode::Batches,
            Mode::NoThrottle,
            Mode::Yardstick,
        ];
        assert_eq!(args(&["--all"]).unwrap().modes, all);
        let php = args(&["--php", "--runs", "3"]).unwrap();
        assert_eq!(
            (php.modes.as_slice(), php.kind, php.runs),
            (&all[..], Kind::Php, 3)
        );
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        let e = args(&["--runs", "0"]).err().unwrap().to_string();
        assert!(e.contains("at least 1"), "{e}");
        let e = args(&["--runs", "many"]).err().unwrap().to_string();
        assert!(e.contains("not `many`"), "{e}");
        let e = args(&["--fast"]).err().unwrap().to_string();
        assert!(e.contains("`--fast`") && e.contains("usage"), "{e}");
    }
}
