//! `dbslots import` against `LOAD DATA LOCAL INFILE`: the same generated
//! CSV into the same (emptied) table on the same server, alternating, in
//! one run, for two tables: meter readings (3 columns) and a 10-column
//! table of mixed types. Also samples the processor's resident memory
//! through the file.
//!
//! `cargo bench --bench import` (or `cargo xtask bench`) imports 1,000,000
//! rows three times each way into each table (`DBSLOTS_BENCH_IMPORT_ROWS`,
//! `DBSLOTS_BENCH_IMPORT_ROUNDS` and `DBSLOTS_BENCH_IMPORT_TABLES`, a
//! comma-separated list of the tables, change that); under
//! `cargo test --all-targets` (no `--bench` argument) it imports 2,000 rows
//! once, as a smoke test. The server comes
//! from `DBSLOTS_TEST_MYSQL_URL` (see dbslots-testkit); without one the
//! benchmark says SKIPPED and exits 0. A filter argument that does not
//! match "import" skips it too, as criterion would. With
//! `DBSLOTS_BENCH_SERVER_PID` (the local server's process id, e.g. from
//! `target/xtask/db.json` after `cargo xtask db up`) every round also shows
//! the server's CPU time, which a loaded machine does not distort the way
//! it distorts wall-clock time.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, WhiteListFsHandler};

const METERS: u64 = 1000;

/// A table and the file that goes into it.
struct Workload {
    table: &'static str,
    ddl: &'static str,
    /// The column list of `LOAD DATA` (`SET` clauses included).
    load_columns: &'static str,
    generate: fn(&Path, u64) -> u64,
}

const WORKLOADS: [Workload; 2] = [
    Workload {
        table: "meter_readings",
        ddl: "CREATE TABLE meter_readings (
            meter_id VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            reading_at DATETIME NOT NULL,
            kwh DECIMAL(18,6) NOT NULL,
            PRIMARY KEY (meter_id, reading_at)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        load_columns: "(meter_id, reading_at, kwh)",
        generate,
    },
    Workload {
        table: "bench_mixed",
        ddl: "CREATE TABLE bench_mixed (
            id BIGINT UNSIGNED NOT NULL,
            small TINYINT NOT NULL,
            counter INT UNSIGNED NOT NULL,
            amount DECIMAL(12,2) NOT NULL,
            ratio DOUBLE NOT NULL,
            name VARCHAR(40) NOT NULL,
            colour ENUM('red','green','blue') NOT NULL,
            day DATE NOT NULL,
            at DATETIME(3) NOT NULL,
            doc JSON NULL,
            PRIMARY KEY (id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        load_columns: "(id, small, counter, amount, ratio, name, colour, day, at, doc)",
        generate: generate_mixed,
    },
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench_mode = args.iter().any(|a| a == "--bench");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| "import".contains(f.as_str())) {
        return;
    }
    let Some(shared) = dbslots_testkit::shared_mysql() else {
        return;
    };
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (rows, rounds) = if bench_mode {
        (
            env("DBSLOTS_BENCH_IMPORT_ROWS", 1_000_000),
            env("DBSLOTS_BENCH_IMPORT_ROUNDS", 3).max(1) as usize,
        )
    } else {
        (2_000, 1)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = format!("dbslots_scratch_bench_import_{}", std::process::id());
    let url = dbslots_testkit::with_database(&shared.user_url, &db);
    let version = rt.block_on(async {
        // LOAD DATA LOCAL needs the server's consent (off by default in
        // MySQL 8); the test server's admin account may give it.
        if let Ok(mut admin) = Conn::from_url(&shared.admin_url).await {
            let _ = admin.query_drop("SET GLOBAL local_infile = 1").await;
            let _ = admin.disconnect().await;
        }
        let mut conn = Conn::from_url(&shared.user_url).await.expect("connect");
        conn.query_drop(format!("DROP DATABASE IF EXISTS `{db}`"))
            .await
            .unwrap();
        conn.query_drop(format!("CREATE DATABASE `{db}`"))
            .await
            .unwrap();
        let version: String = conn.query_first("SELECT VERSION()").await.unwrap().unwrap();
        conn.disconnect().await.unwrap();
        let mut conn = Conn::from_url(&url).await.expect("connect");
        for w in &WORKLOADS {
            conn.query_drop(w.ddl).await.expect("create the table");
        }
        conn.disconnect().await.unwrap();
        dbslots_import::Queue::new(&url, None)
            .unwrap()
            .create_tables()
            .await
            .expect("create the import tables");
        version
    });
    let only = std::env::var("DBSLOTS_BENCH_IMPORT_TABLES").ok();
    for workload in WORKLOADS.iter().filter(|w| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|t| t == w.table))
    }) {
        let csv = dir.path().join(format!("{}.csv", workload.table));
        let bytes = (workload.generate)(&csv, rows);
        println!(
            "import benchmark, {}: {rows} rows, {:.1} MB CSV, server {version}",
            workload.table,
            bytes as f64 / 1e6
        );
        let mut load = Vec::new();
        let mut import = Vec::new();
        let (mut load_server_cpu, mut import_server_cpu) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            rt.block_on(reset(&url, workload.table));
            let cpu_before = server_cpu();
            let secs = rt.block_on(load_data(&url, &csv, workload));
            let load_cpu = server_cpu().zip(cpu_before).map(|(a, b)| a - b);
            assert_eq!(
                rt.block_on(count(&url, workload.table)),
                rows,
                "LOAD DATA loaded every row"
            );
            println!(
                "  round {round}: LOAD DATA LOCAL INFILE   {secs:7.2} s  {:>9.0} rows/s{}",
                rows as f64 / secs,
                load_cpu.map_or(String::new(), |c| format!("  server CPU {c:.2} s"))
            );
            load_server_cpu.extend(load_cpu);
            load.push(secs);
            let loaded = rt.block_on(checksum(&url, workload.table));

            rt.block_on(reset(&url, workload.table));
            let cpu_before = server_cpu();
            let run = run_import(&url, &csv, dir.path(), workload.table);
            let import_cpu = server_cpu().zip(cpu_before).map(|(a, b)| a - b);
            assert_eq!(
                rt.block_on(count(&url, workload.table)),
                rows,
                "dbslots import imported every row"
            );
            assert_eq!(
                rt.block_on(checksum(&url, workload.table)),
                loaded,
                "dbslots import stored exactly what LOAD DATA stored"
            );
            println!(
                "  round {round}: dbslots import run --once {:7.2} s  {:>9.0} rows/s  peak RSS {:.1} MB  CPU {:.2} s{}",
                run.secs,
                rows as f64 / run.secs,
                run.peak_rss_kb as f64 / 1024.0,
                run.cpu_secs,
                import_cpu.map_or(String::new(), |c| format!("  server CPU {c:.2} s"))
            );
            import_server_cpu.extend(import_cpu);
            println!("           RSS through the run (MB): {}", run.rss_profile());
            import.push(run);
        }
        let import_secs: Vec<f64> = import.iter().map(|r| r.secs).collect();
        let (best_load, best_import) = (best(&load), best(&import_secs));
        let (median_load, median_import) = (median(&load), median(&import_secs));
        let peak = import.iter().map(|r| r.peak_rss_kb).max().unwrap_or(0);
        println!(
            "{}: best of {rounds}: LOAD DATA {:.0} rows/s, dbslots import {:.0} rows/s = {:.0}% of LOAD DATA",
            workload.table,
            rows as f64 / best_load,
            rows as f64 / best_import,
            100.0 * best_load / best_import,
        );
        println!(
            "{}: median of {rounds}: LOAD DATA {:.0} rows/s, dbslots import {:.0} rows/s = {:.0}% of LOAD DATA",
            workload.table,
            rows as f64 / median_load,
            rows as f64 / median_import,
            100.0 * median_load / median_import,
        );
        println!(
            "{}: processor peak RSS {:.1} MB over {rounds} runs",
            workload.table,
            peak as f64 / 1024.0
        );
        if !load_server_cpu.is_empty() && !import_server_cpu.is_empty() {
            let processor: Vec<f64> = import.iter().map(|r| r.cpu_secs).collect();
            println!(
                "{}: median CPU per 1,000 rows: server {:.2} ms with LOAD DATA, server {:.2} ms + processor {:.2} ms with dbslots import",
                workload.table,
                1000.0 * 1000.0 * median(&load_server_cpu) / rows as f64,
                1000.0 * 1000.0 * median(&import_server_cpu) / rows as f64,
                1000.0 * 1000.0 * median(&processor) / rows as f64,
            );
        }
    }
    rt.block_on(async {
        let mut conn = Conn::from_url(&shared.user_url).await.unwrap();
        conn.query_drop(format!("DROP DATABASE IF EXISTS `{db}`"))
            .await
            .unwrap();
        conn.disconnect().await.unwrap();
    });
}

/// The CPU time (user + system) of the server process
/// `DBSLOTS_BENCH_SERVER_PID`, in seconds.
fn server_cpu() -> Option<f64> {
    let pid: u32 = std::env::var("DBSLOTS_BENCH_SERVER_PID")
        .ok()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / per_second)
}

fn best(secs: &[f64]) -> f64 {
    secs.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(secs: &[f64]) -> f64 {
    let mut sorted = secs.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Writes `rows` readings: meter `i % 1000`, one reading every 15 minutes
/// per meter from 2024-01-01, kWh with three decimals. Returns the size.
fn generate(path: &Path, rows: u64) -> u64 {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    out.write_all(b"meter_id,reading_at,kwh\n").unwrap();
    for i in 0..rows {
        let minutes = (i / METERS) * 15;
        let (day, hour, minute) = (minutes / 1440, minutes % 1440 / 60, minutes % 60);
        let (month, day) = (1 + day / 28, 1 + day % 28);
        writeln!(
            out,
            "meter-{:05},2024-{month:02}-{day:02} {hour:02}:{minute:02}:00,{}.{:03}",
            i % METERS,
            (i * 7) % 100,
            (i * 13) % 1000
        )
        .unwrap();
    }
    out.flush().unwrap();
    std::fs::metadata(path).unwrap().len()
}

/// Writes `rows` records of 10 mixed columns: ids in order, every value
/// valid (multibyte names, quoted JSON). Returns the size.
fn generate_mixed(path: &Path, rows: u64) -> u64 {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    out.write_all(b"id,small,counter,amount,ratio,name,colour,day,at,doc\n")
        .unwrap();
    for i in 0..rows {
        let (day, ms) = (i / 86_400 % 365, i % 86_400_000);
        writeln!(
            out,
            "{i},{},{},{}.{:02},{}.{:04},{}-{},{},2024-{:02}-{:02},2024-06-01 {:02}:{:02}:{:02}.{:03},\"{{\"\"k\"\":{}}}\"",
            (i % 256) as i64 - 128,
            i * 7 % 4_000_000_000,
            i % 10_000_000,
            i % 100,
            i % 1000,
            i % 10_000,
            ["Zürich", "Oslo", "Kraków", "Lyon"][(i % 4) as usize],
            i,
            ["red", "green", "blue"][(i % 3) as usize],
            1 + day / 31 % 12,
            1 + day % 28,
            ms / 3_600_000 % 24,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000,
            i % 97
        )
        .unwrap();
    }
    out.flush().unwrap();
    std::fs::metadata(path).unwrap().len()
}

async fn reset(url: &str, table: &str) {
    let mut conn = Conn::from_url(url).await.unwrap();
    for sql in [
        format!("TRUNCATE TABLE {table}"),
        "TRUNCATE TABLE import_errors".into(),
        "DELETE FROM import_jobs".into(),
    ] {
        conn.query_drop(sql).await.unwrap();
    }
    conn.disconnect().await.unwrap();
}

async fn checksum(url: &str, table: &str) -> u64 {
    let mut conn = Conn::from_url(url).await.unwrap();
    let row: Option<(String, u64)> = conn
        .query_first(format!("CHECKSUM TABLE {table}"))
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    row.expect("CHECKSUM TABLE answers").1
}

async fn count(url: &str, table: &str) -> u64 {
    let mut conn = Conn::from_url(url).await.unwrap();
    let n: Option<u64> = conn
        .query_first(format!("SELECT COUNT(*) FROM {table}"))
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    n.unwrap_or(0)
}

/// `LOAD DATA LOCAL INFILE` into the same table; seconds for the statement.
async fn load_data(url: &str, csv: &Path, workload: &Workload) -> f64 {
    let opts = OptsBuilder::from_opts(Opts::from_url(url).unwrap())
        .local_infile_handler(Some(WhiteListFsHandler::new([csv.to_path_buf()])));
    let mut conn = Conn::new(opts).await.unwrap();
    let started = Instant::now();
    conn.query_drop(format!(
        "LOAD DATA LOCAL INFILE '{}' INTO TABLE {} CHARACTER SET utf8mb4 \
         FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' LINES TERMINATED BY '\\n' IGNORE 1 LINES \
         {}",
        csv.display(),
        workload.table,
        workload.load_columns
    ))
    .await
    .expect("LOAD DATA LOCAL INFILE (is local_infile on at the server?)");
    let secs = started.elapsed().as_secs_f64();
    conn.disconnect().await.unwrap();
    secs
}

struct ImportRun {
    secs: f64,
    /// The processor's CPU time (user + system), in seconds.
    cpu_secs: f64,
    peak_rss_kb: u64,
    /// (seconds since start, resident KB), sampled every 20 ms.
    samples: Vec<(f64, u64)>,
}

impl ImportRun {
    /// Resident memory at each fifth of the run.
    fn rss_profile(&self) -> String {
        let at = |fraction: f64| {
            let t = self.secs * fraction;
            self.samples
                .iter()
                .rfind(|(s, _)| *s <= t)
                .map_or(0, |(_, kb)| *kb)
        };
        [0.2, 0.4, 0.6, 0.8, 1.0]
            .iter()
            .map(|f| format!("{:.0}%: {:.1}", f * 100.0, at(*f) as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Enqueues the file, then times `dbslots import run --once` as a process,
/// sampling its RSS; the peak is its own high-water mark (`VmHWM`, see
/// `dbslots_testkit::memory`), its CPU time from `wait4`.
fn run_import(url: &str, csv: &Path, dir: &Path, table: &str) -> ImportRun {
    let dbslots = env!("CARGO_BIN_EXE_dbslots");
    let enqueued = Command::new(dbslots)
        .args(["import", "enqueue", "--url", url, "--table", table])
        .arg(csv)
        .output()
        .unwrap();
    assert!(
        enqueued.status.success(),
        "{}",
        String::from_utf8_lossy(&enqueued.stderr)
    );
    let lock = dir.join("bench.lock");
    let started = Instant::now();
    let child = Command::new(dbslots)
        .args(["import", "run", "--once", "--url", url, "--lock-file"])
        .arg(&lock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let peak = dbslots_testkit::memory::watch_peak_kib(pid);
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let samples = samples.clone();
        std::thread::spawn(move || {
            while let Some(kb) = dbslots_testkit::memory::status_kib(pid, "VmRSS") {
                samples
                    .lock()
                    .unwrap()
                    .push((started.elapsed().as_secs_f64(), kb));
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, which nothing else reaps.
    let reaped = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(reaped, pid as libc::pid_t, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "dbslots import run failed: {status}"
    );
    drop(child);
    sampler.join().unwrap();
    let peak_rss_kb = peak.join().unwrap();
    let samples = Arc::try_unwrap(samples).unwrap().into_inner().unwrap();
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    ImportRun {
        secs,
        cpu_secs: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        peak_rss_kb,
        samples,
    }
}
