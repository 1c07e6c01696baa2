//! One variant of one run: start the spawner with its workers, measure
//! the wall time and the CPU time of everyone involved, and collect what the
//! workers and the server report.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dbslots_testkit::MysqlServer;

use super::report::median;
use super::results::{read_joblog_starts, read_results};
use super::{Args, BATCH_DELAY_SECS, BATCH_SIZE, Kind, Mode, Programs, json_of};
use crate::child::{self, check_interrupted};

/// What one variant of one run measured.
pub(super) struct Outcome {
    pub(super) mode: Mode,
    pub(super) wall: Duration,
    pub(super) refusals: BTreeMap<String, u64>,
    pub(super) processed: u64,
    pub(super) rows: u64,
    pub(super) twice: u64,
    pub(super) workers_ok: u64,
    pub(super) max_used: u64,
    pub(super) status: ExitStatus,
    /// Medians over the workers, in milliseconds.
    pub(super) start_to_connected_ms: Option<f64>,
    pub(super) main_to_connected_ms: Option<f64>,
    /// CPU per worker, in milliseconds.
    pub(super) worker_cpu_ms: f64,
    pub(super) spawner_cpu_ms: f64,
    pub(super) server_cpu_ms: Option<f64>,
}

impl Outcome {
    pub(super) fn errors(&self) -> u64 {
        ["1040", "1203", "1226"]
            .iter()
            .map(|code| self.refusals.get(*code).copied().unwrap_or(0))
            .sum()
    }

    pub(super) fn passed(&self) -> bool {
        self.errors() == 0
            && self.processed == self.rows
            && self.twice == 0
            && self.status.success()
    }
}

pub(super) fn run_variant(
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
                .args(["work", "--url", &worker_url(server)])
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

/// The workers' URL: the ordinary account, and `ssl-mode=DISABLED` because
/// the demo's server has no TLS (the default PREFERRED would first try TLS
/// and connect again without it: a refused attempt per worker process).
fn worker_url(server: &MysqlServer) -> String {
    format!("{}&ssl-mode=DISABLED", server.user_url())
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
