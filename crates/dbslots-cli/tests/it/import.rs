//! `dbslots import` as cron and supervisors run it: SIGKILL mid-job (and a
//! file edited before the resume), a second processor on the same lock
//! file, SIGTERM (also while a batch hangs on a connection that turned into
//! a black hole), a symlink out of the source directory, exit statuses, a
//! server out of reach (a daemon waits it out, --once gives up after
//! --reconnect-for), a stderr nobody reads any more. Each test works in a scratch database of its own on
//! the shared test server (skipped without one, see dbslots-testkit).

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mysql_async::prelude::{FromRow, Queryable};

/// A scratch database (from dbslots-testkit), a runtime and a directory.
struct TestDb {
    url: String,
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    _db: dbslots_testkit::ScratchDb,
}

impl TestDb {
    fn create(tag: &str) -> Option<TestDb> {
        let db = dbslots_testkit::ScratchDb::create(&format!("cli_{tag}"))?;
        Some(TestDb {
            url: db.url.clone(),
            dir: tempfile::tempdir().expect("a temporary directory"),
            rt: crate::support::runtime(),
            _db: db,
        })
    }

    fn sql(&self, sql: &str) {
        self.rt.block_on(async {
            let mut conn = mysql_async::Conn::from_url(&self.url).await.unwrap();
            conn.query_drop(sql).await.expect(sql);
            conn.disconnect().await.unwrap();
        });
    }

    /// Makes the processor holding a job look dead to a processor run with
    /// `--stale-after` [`RESUME_STALE_AFTER`] (rather than waiting that
    /// long): its heartbeat an hour old, and the server up for long
    /// enough (a server restarted more recently puts back no job).
    fn age_heartbeats(&self) {
        self.sql("UPDATE import_jobs SET heartbeat_at = heartbeat_at - INTERVAL 1 HOUR");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, uptime): (String, u64) = self.row("SHOW GLOBAL STATUS LIKE 'Uptime'");
            if uptime >= RESUME_STALE_AFTER.parse::<u64>().unwrap() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server's uptime stands still"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn row<T: FromRow + Send + 'static>(&self, sql: &str) -> T {
        self.rt.block_on(async {
            let mut conn = mysql_async::Conn::from_url(&self.url).await.unwrap();
            let row: Option<T> = conn.query_first(sql).await.expect(sql);
            conn.disconnect().await.unwrap();
            row.unwrap_or_else(|| panic!("{sql} returned no row"))
        })
    }

    fn column<T: mysql_async::prelude::FromValue + Send + 'static>(&self, sql: &str) -> Vec<T> {
        self.rt.block_on(async {
            let mut conn = mysql_async::Conn::from_url(&self.url).await.unwrap();
            let rows: Vec<T> = conn.query(sql).await.expect(sql);
            conn.disconnect().await.unwrap();
            rows
        })
    }

    fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// `dbslots import SUBCOMMAND --url URL ARGS...`, outputs to files.
    fn dbslots(&self, subcommand: &str, args: &[&str], log: &str) -> Command {
        import_command(&self.url, self.dir.path(), subcommand, args, log)
    }

    fn output(&self, log: &str) -> (String, String) {
        output(self.dir.path(), log)
    }

    /// The test server's address.
    fn server(&self) -> SocketAddr {
        let opts = mysql_async::Opts::from_url(&self.url).unwrap();
        SocketAddr::from(([127, 0, 0, 1], opts.tcp_port()))
    }

    /// Runs a command to its end (guarded against hanging) and returns its
    /// status, stdout and stderr.
    fn run(&self, subcommand: &str, args: &[&str], log: &str) -> (ExitStatus, String, String) {
        let mut child = self.dbslots(subcommand, args, log).spawn().unwrap();
        let status = wait_guarded(&mut child, log);
        let (out, err) = self.output(log);
        (status, out, err)
    }
}

/// `dbslots import SUBCOMMAND --url URL ARGS...`, outputs to `LOG.out` and
/// `LOG.err` in `dir`.
fn import_command(url: &str, dir: &Path, subcommand: &str, args: &[&str], log: &str) -> Command {
    let mut cmd = crate::support::dbslots();
    cmd.args(["import", subcommand, "--url", url])
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(dir.join(format!("{log}.out"))).unwrap())
        .stderr(File::create(dir.join(format!("{log}.err"))).unwrap());
    cmd
}

/// What `import_command(.., log)` wrote: stdout and stderr.
fn output(dir: &Path, log: &str) -> (String, String) {
    let read = |ext: &str| std::fs::read_to_string(dir.join(format!("{log}.{ext}"))).unwrap();
    (read("out"), read("err"))
}

/// `url` with its server replaced by `127.0.0.1:port` (the URL must stay
/// on TCP: a connect through a proxy must not move to the server's socket).
fn on_port(url: &str, port: u16) -> String {
    let opts = mysql_async::Opts::from_url(url).unwrap();
    let server = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
    assert!(url.contains(&server) && url.contains("prefer_socket=false"));
    url.replace(&server, &format!("127.0.0.1:{port}"))
}

/// A loopback port nothing listens on: bound, then let go.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends SIGTERM to `child`.
fn terminate(child: &Child) {
    // SAFETY: kill(2) on the pid of our own child, which has not been
    // reaped yet.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
}

/// The processor's warnings about failed tries to reach the server, each
/// checked to be one line of its own.
fn outage_warnings(err: &str) -> Vec<&str> {
    for line in err.lines() {
        assert!(
            !line.starts_with(char::is_whitespace) && !line.starts_with("what to do"),
            "a log line continued on another line: {line:?}\n{err}"
        );
    }
    err.lines()
        .filter(|l| l.contains(" WARN ") && l.contains("trying again"))
        .collect()
}

/// The `retry_in=` of a warning, in seconds.
fn retry_in(warning: &str) -> f64 {
    let value = warning
        .split_whitespace()
        .find_map(|field| field.strip_prefix("retry_in="))
        .unwrap_or_else(|| panic!("no retry_in in {warning:?}"));
    value.trim_end_matches('s').parse().unwrap()
}

/// Waits for `child`; kills it and fails the test if it has not ended after
/// two minutes (a guard against hanging, not a measurement).
fn wait_guarded(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls until the job has imported at least `rows` lines while `child`
/// still runs.
fn wait_for_progress(db: &TestDb, child: &mut Child, rows: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the processor ended before it had imported {rows} lines"
        );
        let done: Option<u64> = db
            .column::<u64>("SELECT rows_imported FROM import_jobs WHERE status = 'processing'")
            .first()
            .copied();
        if done.is_some_and(|d| d >= rows) {
            return;
        }
        assert!(Instant::now() < deadline, "no progress to {rows} lines");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `--stale-after` of a processor that resumes a job whose holder was
/// killed ([`TestDb::age_heartbeats`]).
const RESUME_STALE_AFTER: &str = "5";

/// `n` readings, every key unique, kWh `i/1000`; every `bad_every`-th one
/// with seven decimals. Returns the file, the good count, the sum of good `i` and the
/// bad lines' numbers.
fn readings(n: u64, bad_every: u64) -> (Vec<u8>, u64, u64, Vec<u64>) {
    let mut out = String::from("meter_id,reading_at,kwh\n");
    let (mut sum, mut bad) = (0, Vec::new());
    for i in 1..=n {
        let (day, minute) = (i / 1440, i % 1440);
        let ts = format!(
            "{}-{:02}-{:02}T{:02}:{:02}:00Z",
            2000 + day / 336,
            1 + day / 28 % 12,
            1 + day % 28,
            minute / 60,
            minute % 60
        );
        if i % bad_every == 0 {
            // Seven decimals: DECIMAL(18,6) would round it.
            out.push_str(&format!("m{},{ts},1.0000001\n", i % 50));
            bad.push(i + 1);
        } else {
            out.push_str(&format!("m{},{ts},{}.{:03}\n", i % 50, i / 1000, i % 1000));
            sum += i;
        }
    }
    (out.into_bytes(), n - bad.len() as u64, sum, bad)
}

/// Checks that the only job completed with exactly the file's lines.
fn assert_imported_exactly_once(db: &TestDb, good: u64, sum: u64, bad: &[u64], attempts: u32) {
    let (status, imported, rejected, tries): (String, u64, u64, u32) = db.row(
        "SELECT CAST(status AS CHAR), rows_imported, rows_rejected, attempts FROM import_jobs",
    );
    assert_eq!(status, "completed_with_errors");
    assert_eq!((imported, rejected), (good, bad.len() as u64));
    assert_eq!(tries, attempts);
    let (rows, total): (u64, u64) =
        db.row("SELECT COUNT(*), CAST(SUM(kwh) * 1000 AS UNSIGNED) FROM meter_readings");
    assert_eq!(
        (rows, total),
        (good, sum),
        "every reading once, none missing"
    );
    let lines: Vec<u64> = db.column("SELECT line_no FROM import_errors ORDER BY line_no");
    assert_eq!(lines, bad);
}

/// The meter readings table of the documentation's example.
const METER_READINGS: &str = "CREATE TABLE meter_readings (
    meter_id VARCHAR(32) NOT NULL,
    reading_at DATETIME NOT NULL,
    kwh DECIMAL(18,6) NOT NULL,
    PRIMARY KEY (meter_id, reading_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

/// Creates `meter_readings` and enqueues `path` into it as job 1.
fn enqueue(db: &TestDb, path: &Path) {
    db.sql(METER_READINGS);
    let (status, out, err) = db.run(
        "enqueue",
        &["--table", "meter_readings", path.to_str().unwrap()],
        "enqueue",
    );
    assert!(status.success(), "{err}");
    assert_eq!(out.trim(), "1");
}

#[test]
fn a_processor_killed_mid_job_is_resumed_without_duplicates_or_gaps() {
    let Some(db) = TestDb::create("kill9") else {
        return;
    };
    let (csv, good, sum, bad) = readings(120_000, 997);
    let path = db.write("readings.csv", &csv);
    enqueue(&db, &path);
    let lock = db.dir.path().join("import.lock");
    let lock = lock.to_str().unwrap();
    // Through a pool of one slot: the killed processor's slot must come back
    // (the kernel frees its lock) for the second run to connect at all.
    let pool = db.dir.path().join("pool");
    let pool = pool.to_str().unwrap();
    let args = [
        "--once",
        "--lock-file",
        lock,
        "--batch-rows",
        "100",
        "--pool",
        pool,
        "--capacity",
        "1",
    ];

    let mut first = db.dbslots("run", &args, "first").spawn().unwrap();
    wait_for_progress(&db, &mut first, 3_000);
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    assert!(
        Path::new(pool).join("slots").is_dir(),
        "the processor used the pool"
    );
    let (status, imported): (String, u64) =
        db.row("SELECT CAST(status AS CHAR), rows_imported FROM import_jobs");
    assert_eq!(status, "processing", "killed mid-job");
    assert!(imported < good, "killed mid-job");

    // The dead holder's heartbeat stops; instead of waiting out
    // --stale-after, age it.
    db.age_heartbeats();
    let resume = [&args[..], &["--stale-after", RESUME_STALE_AFTER]].concat();
    let (status, _, err) = db.run("run", &resume, "second");
    assert!(status.success(), "{err}");
    assert!(err.contains("completed with errors"), "{err}");
    assert_imported_exactly_once(&db, good, sum, &bad, 2);
    let last_error: String = db.row("SELECT last_error FROM import_jobs");
    assert!(last_error.contains("stopped heartbeating"), "{last_error}");
}

#[test]
fn a_second_processor_on_the_same_lock_exits_at_once_and_sigterm_leaves_the_job_resumable() {
    let Some(db) = TestDb::create("lock") else {
        return;
    };
    let (csv, good, sum, bad) = readings(150_000, 1009);
    let path = db.write("readings.csv", &csv);
    enqueue(&db, &path);
    let lock_path = db.dir.path().join("import.lock");
    let lock = lock_path.to_str().unwrap();

    // A daemon (no --once) working on the job.
    let mut first = db
        .dbslots(
            "run",
            // A max time past what a clock holds is no limit (not a crash).
            &[
                "--lock-file",
                lock,
                "--batch-rows",
                "100",
                "--sleep",
                "1",
                "--max-time",
                "1e19",
            ],
            "first",
        )
        .spawn()
        .unwrap();
    wait_for_progress(&db, &mut first, 1_000);
    let pid = first.id().to_string();
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap().trim(), pid);

    // From cron: exits 0 naming the running processor.
    let (status, _, err) = db.run("run", &["--once", "--lock-file", lock], "cron");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    // As a daemon: an error, also naming it.
    let (status, _, err) = db.run("run", &["--lock-file", lock], "daemon");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first one still works"
    );

    // SIGTERM: the batch in flight is finished, the job put back, exit 0.
    // SAFETY: kill(2) on the pid of our own child, which has not been
    // reaped yet.
    assert_eq!(
        unsafe { libc::kill(first.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = wait_guarded(&mut first, "the terminated processor");
    let (_, err) = db.output("first");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        err.contains("put back in the queue at its checkpoint"),
        "{err}"
    );
    let (status, holder, attempts, imported, offset): (String, Option<String>, u32, u64, u64) = db
        .row("SELECT CAST(status AS CHAR), holder, attempts, rows_imported, byte_offset FROM import_jobs");
    assert_eq!((status.as_str(), holder, attempts), ("pending", None, 0));
    assert!(imported >= 1_000 && imported < good, "{imported}");
    assert!(offset > 0);

    let (status, _, err) = db.run("run", &["--once", "--lock-file", lock], "resume");
    assert!(status.success(), "{err}");
    assert!(err.contains("resuming after"), "{err}");
    assert_imported_exactly_once(&db, good, sum, &bad, 1);
}

#[test]
fn a_file_edited_between_a_sigkill_and_the_resume_fails_its_job_and_run_exits_1() {
    let Some(db) = TestDb::create("edit9") else {
        return;
    };
    let (csv, ..) = readings(120_000, 997);
    let path = db.write("readings.csv", &csv);
    enqueue(&db, &path);
    let lock = db.dir.path().join("import.lock");
    let args = [
        "--once",
        "--lock-file",
        lock.to_str().unwrap(),
        "--batch-rows",
        "100",
    ];
    let mut first = db.dbslots("run", &args, "first").spawn().unwrap();
    wait_for_progress(&db, &mut first, 3_000);
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let (offset, imported): (u64, u64) =
        db.row("SELECT byte_offset, rows_imported FROM import_jobs");
    assert!(offset > 70_000, "past the first 64 KiB: {offset}");

    // The same size, one digit changed inside the committed part (not in
    // the first or last 64 KiB), the modification time put back.
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let at = 66_000 + bytes[66_000..].iter().position(u8::is_ascii_digit).unwrap();
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(&path, &bytes).unwrap();
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(modified)
        .unwrap();

    db.age_heartbeats();
    let resume = [&args[..], &["--stale-after", RESUME_STALE_AFTER]].concat();
    let (status, _, err) = db.run("run", &resume, "second");
    assert_eq!(status.code(), Some(1), "a job failed: {err}");
    let (state, last_error, after): (String, String, u64) =
        db.row("SELECT CAST(status AS CHAR), last_error, rows_imported FROM import_jobs");
    assert_eq!(state, "failed");
    assert!(
        last_error.contains("its content up to the checkpoint")
            && last_error.contains("is not what was imported"),
        "{last_error}"
    );
    assert_eq!(after, imported, "nothing of the edited file went in");
    assert_eq!(
        db.row::<u64>("SELECT COUNT(*) FROM meter_readings"),
        imported
    );
}

#[test]
fn a_symlink_out_of_the_source_dir_is_refused_and_status_escapes_what_it_shows() {
    let Some(db) = TestDb::create("link") else {
        return;
    };
    let allowed = db.dir.path().join("incoming");
    std::fs::create_dir(&allowed).unwrap();
    let secret = db.write(
        "secret.csv",
        b"meter_id,reading_at,kwh\nSECRET-CONTENT,2024-01-01 00:00:00,1\n",
    );
    // A name with a terminal escape in it: `status` must not pass it on.
    let link = allowed.join("evil\u{1b}[2J.csv");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let good = allowed.join("good.csv");
    std::fs::write(
        &good,
        b"meter_id,reading_at,kwh\nm1,2024-01-01 00:00:00,1\n",
    )
    .unwrap();
    db.sql(METER_READINGS);
    let (status, out, err) = db.run(
        "enqueue",
        &[
            "--table",
            "meter_readings",
            link.to_str().unwrap(),
            good.to_str().unwrap(),
        ],
        "enqueue",
    );
    assert!(status.success(), "{err}");
    assert_eq!(out.lines().count(), 2);
    let lock = db.dir.path().join("import.lock");
    let (status, _, err) = db.run(
        "run",
        &[
            "--once",
            "--lock-file",
            lock.to_str().unwrap(),
            "--source-dir",
            allowed.to_str().unwrap(),
        ],
        "run",
    );
    assert_eq!(status.code(), Some(1), "one job failed: {err}");
    assert!(!err.contains("SECRET-CONTENT"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "run's output escapes the path too: {err:?}"
    );
    assert_eq!(db.row::<u64>("SELECT COUNT(*) FROM meter_readings"), 1);
    let (state, last_error): (String, String) =
        db.row("SELECT CAST(status AS CHAR), last_error FROM import_jobs WHERE id = 1");
    assert_eq!(state, "failed");
    assert!(
        last_error.contains("outside the processor's source directories"),
        "{last_error}"
    );
    assert!(!last_error.contains("SECRET"), "{last_error}");

    let (status, out, err) = db.run("status", &[], "status");
    assert!(status.success(), "{err}");
    assert!(!out.contains('\u{1b}'), "{out:?}");
    assert!(out.contains("evil\\u{1b}[2J.csv"), "{out}");
    assert!(out.contains("meter_readings"), "{out}");

    // A source directory that does not exist is an error before any job.
    let (status, _, err) = db.run(
        "run",
        &[
            "--once",
            "--lock-file",
            lock.to_str().unwrap(),
            "--source-dir",
            "/nonexistent/dir",
        ],
        "nodir",
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot use the source directory /nonexistent/dir"),
        "{err}"
    );
}

#[test]
fn a_first_sigterm_while_a_batch_hangs_in_a_black_hole_exits_within_30_s() {
    let Some(db) = TestDb::create("hole") else {
        return;
    };
    let (csv, good, sum, bad) = readings(200_000, 1009);
    let path = db.write("readings.csv", &csv);
    enqueue(&db, &path);
    // The processor reaches the server through a proxy that the test turns
    // into a black hole for the connections open at that moment (new ones
    // pass), as a failover or a host reboot looks to a client.
    let proxy = dbslots_testkit::FreezableProxy::start(db.server()).expect("a proxy");
    let proxied = on_port(&db.url, proxy.port());
    let lock = db.dir.path().join("import.lock");
    let mut processor = crate::support::dbslots()
        .args(["import", "run", "--url", &proxied, "--lock-file"])
        .arg(&lock)
        .args([
            "--stale-after",
            "2",
            "--batch-rows",
            "20000",
            "--sleep",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(File::create(db.dir.path().join("hole.out")).unwrap())
        .stderr(File::create(db.dir.path().join("hole.err")).unwrap())
        .spawn()
        .unwrap();
    wait_for_progress(&db, &mut processor, 20_000);
    // Freeze while the server runs a batch's LOAD DATA.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            processor.try_wait().unwrap().is_none(),
            "the processor ended before a batch was caught in its LOAD DATA"
        );
        assert!(Instant::now() < deadline, "no LOAD DATA caught in 60 s");
        let loading: u64 = db.row(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
             WHERE DB = DATABASE() AND COMMAND = 'Query' AND INFO LIKE 'LOAD DATA%'",
        );
        if loading > 0 {
            proxy.freeze_open_connections();
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(500));
    terminate(&processor);
    let signalled = Instant::now();
    let status = wait_guarded(&mut processor, "the terminated processor");
    let took = signalled.elapsed();
    let (_, err) = db.output("hole");
    eprintln!("SIGTERM -> exit: {took:?}");
    assert!(took < Duration::from_secs(30), "{took:?}\n{err}");
    assert_eq!(status.code(), Some(0), "{err}");
    // Put back over a new connection, unless the abandoned transaction
    // still held the job's row (then it goes back once stale).
    let released = err.contains("put back in the queue at its checkpoint");
    assert!(
        released || err.contains("once its heartbeat is stale"),
        "{err}"
    );
    // Another processor, straight to the server, finishes the job.
    let resume_lock = db.dir.path().join("resume.lock");
    let resume_lock = resume_lock.to_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, err) = db.run(
            "run",
            &["--once", "--stale-after", "2", "--lock-file", resume_lock],
            "resume",
        );
        assert!(status.success(), "{err}");
        let done: String = db.row("SELECT CAST(status AS CHAR) FROM import_jobs");
        if done != "pending" && done != "processing" {
            break;
        }
        assert!(Instant::now() < deadline, "the job was not finished: {err}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_imported_exactly_once(&db, good, sum, &bad, if released { 1 } else { 2 });
}

#[test]
fn a_server_out_of_reach_ends_a_once_run_after_reconnect_for_while_a_daemon_waits_it_out() {
    // Nothing listens on the port: every connect is refused at once. No
    // test server is needed.
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "mysql://importer:not-the-password@127.0.0.1:{}/queue?prefer_socket=false",
        free_port()
    );
    let lock = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let daemon_lock = lock("daemon.lock");
    let mut daemon = import_command(
        &url,
        dir.path(),
        "run",
        &["--lock-file", &daemon_lock],
        "daemon",
    )
    .spawn()
    .unwrap();
    let daemon_started = Instant::now();

    // From cron, with a window of 2 s: gives up at its end, saying how to
    // wait longer.
    let cron_lock = lock("cron.lock");
    let args = ["--once", "--reconnect-for", "2", "--lock-file", &cron_lock];
    let started = Instant::now();
    let mut cron = import_command(&url, dir.path(), "run", &args, "cron")
        .spawn()
        .unwrap();
    // A daemon with --max-time 2: its time runs out during the outage,
    // which it reports as one rather than as a run that did its work.
    let timed_lock = lock("timed.lock");
    let args = ["--max-time", "2", "--lock-file", &timed_lock];
    let mut timed = import_command(&url, dir.path(), "run", &args, "timed")
        .spawn()
        .unwrap();
    let status = wait_guarded(&mut cron, "the --once run");
    let took = started.elapsed();
    let (_, err) = output(dir.path(), "cron");
    eprintln!("--once --reconnect-for 2 exited after {took:?}");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        took >= Duration::from_secs(2),
        "gave up early: {took:?}\n{err}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}\n{err}");
    assert!(
        err.contains("dbslots: no working connection to mysql://importer:***@127.0.0.1:")
            && err.contains("wait longer with --reconnect-for")
            && err.contains("error 2003"),
        "{err}"
    );
    assert!(!err.contains("ProcessorOptions"), "{err}");
    assert!(!err.contains("not-the-password"), "{err}");
    let warnings = outage_warnings(&err);
    assert!(warnings.len() >= 4, "one warning per failed try: {err}");

    let status = wait_guarded(&mut timed, "the daemon with --max-time");
    let took = started.elapsed();
    let (_, err) = output(dir.path(), "timed");
    eprintln!("a daemon with --max-time 2 exited after {took:?}");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}\n{err}"
    );
    assert!(
        err.contains("dbslots: no working connection to mysql://importer:***@127.0.0.1:")
            && err.contains("when --max-time ran out")
            && err.contains("more time with --max-time")
            && err.contains("error 2003"),
        "{err}"
    );
    assert!(!err.contains("not-the-password"), "{err}");

    // The daemon is still there well after that window, and after the
    // --once default's first tries.
    let until = daemon_started + Duration::from_secs(12);
    while Instant::now() < until {
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the daemon exited during the outage: {}",
            output(dir.path(), "daemon").1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let up = daemon_started.elapsed();
    // A stop request ends the wait at once.
    terminate(&daemon);
    let signalled = Instant::now();
    let status = wait_guarded(&mut daemon, "the terminated daemon");
    let stopped_in = signalled.elapsed();
    let (_, err) = output(dir.path(), "daemon");
    eprintln!("the daemon was up {up:?} without a server; SIGTERM -> exit: {stopped_in:?}");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(stopped_in < Duration::from_secs(3), "{stopped_in:?}\n{err}");
    assert!(err.contains("stopped by a signal"), "{err}");
    assert!(!err.contains("not-the-password"), "{err}");
    // One line per failed try, tries at most 5 s apart: 0, 0.1, 0.3, 0.7,
    // 1.5, 3.1, 6.3 and 11.3 s in 12 s.
    let warnings = outage_warnings(&err);
    assert!((7..=9).contains(&warnings.len()), "{err}");
    assert!(
        warnings
            .iter()
            .all(|w| w.contains("cannot connect: error 2003")),
        "{err}"
    );
    assert!(
        warnings.iter().all(|w| retry_in(w) <= 5.0),
        "backoff capped at 5 s: {err}"
    );
    assert_eq!(retry_in(warnings[warnings.len() - 1]), 5.0, "{err}");
}

#[test]
fn a_daemon_started_while_the_server_is_out_of_reach_imports_once_it_is_back() {
    let Some(db) = TestDb::create("outage") else {
        return;
    };
    let (csv, good, sum, bad) = readings(20_000, 997);
    let path = db.write("readings.csv", &csv);
    enqueue(&db, &path);
    // The processor's way to the server: a port nothing listens on yet.
    let port = free_port();
    let lock = db.dir.path().join("import.lock");
    let args = ["--lock-file", lock.to_str().unwrap(), "--sleep", "1"];
    let mut daemon = import_command(
        &on_port(&db.url, port),
        db.dir.path(),
        "run",
        &args,
        "daemon",
    )
    .spawn()
    .unwrap();
    // It waits for the server, trying again and again (tries at 0, 0.1,
    // 0.3, 0.7, 1.5 s, ...).
    crate::support::wait_for("four failed tries", Duration::from_secs(30), || {
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");
        (outage_warnings(&db.output("daemon").1).len() >= 4).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");
    let pending: String = db.row("SELECT CAST(status AS CHAR) FROM import_jobs");
    assert_eq!(pending, "pending");

    // The server comes back at the same address.
    let _proxy = dbslots_testkit::FreezableProxy::start_on(port, db.server()).expect("a proxy");
    let back = Instant::now();
    let done = crate::support::wait_for("the job to be done", Duration::from_secs(60), || {
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");
        let status: String = db.row("SELECT CAST(status AS CHAR) FROM import_jobs");
        (status == "completed_with_errors").then(|| back.elapsed())
    });
    eprintln!("server back -> job done: {done:?}");
    // At most 5 s until the next try, then the import itself.
    assert!(done < Duration::from_secs(30), "{done:?}");
    assert_imported_exactly_once(&db, good, sum, &bad, 1);

    terminate(&daemon);
    let signalled = Instant::now();
    let status = wait_guarded(&mut daemon, "the terminated daemon");
    let (_, err) = db.output("daemon");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(signalled.elapsed() < Duration::from_secs(5), "{err}");
    assert!(err.contains("job 1 completed with errors"), "{err}");
    outage_warnings(&err);
}

#[test]
fn statement_timeout_sets_how_long_a_slow_server_may_take_to_answer() {
    let Some(db) = TestDb::create("slow") else {
        return;
    };
    let path = db.write("readings.csv", &readings(10, 100).0);
    enqueue(&db, &path);
    // Every answer from the server takes 1.2 s.
    let proxy = dbslots_testkit::FreezableProxy::start(db.server()).expect("a proxy");
    proxy.delay_replies(Duration::from_millis(1200));
    let slow = on_port(&db.url, proxy.port());

    let status = |timeout: &str, log: &str| {
        let args = ["--statement-timeout", timeout];
        let mut child = import_command(&slow, db.dir.path(), "status", &args, log)
            .spawn()
            .unwrap();
        let status = wait_guarded(&mut child, log);
        let (out, err) = output(db.dir.path(), log);
        (status, out, err)
    };
    let (code, _, err) = status("1", "impatient");
    assert_eq!(code.code(), Some(1), "{err}");
    assert!(
        err.contains("listing jobs got no answer from mysql://dbslots:***@127.0.0.1:")
            && err.contains("within 1s")
            && err.contains("allow it longer with --statement-timeout"),
        "{err}"
    );
    assert!(!err.contains("Queue::"), "{err}");
    let (code, out, err) = status("5", "patient");
    assert!(code.success(), "{err}");
    assert!(out.contains("readings.csv"), "{out}");
}

#[test]
fn a_stale_after_longer_than_any_clock_is_no_limit_rather_than_a_panic() {
    let Some(db) = TestDb::create("longstale") else {
        return;
    };
    let (csv, good, sum, bad) = readings(200, 97);
    let path = db.write("readings.csv", &csv);
    enqueue(&db, &path);
    let lock = db.dir.path().join("import.lock");
    // 1e19 s: three times it (the default batch timeout) is past what a
    // Duration holds; 1e30 s parses as the longest Duration.
    for (i, stale_after) in ["1e19", "1e30"].into_iter().enumerate() {
        let (status, _, err) = db.run(
            "run",
            &[
                "--once",
                "--lock-file",
                lock.to_str().unwrap(),
                "--stale-after",
                stale_after,
            ],
            &format!("run{i}"),
        );
        assert!(
            status.success() && !err.contains("panicked"),
            "--stale-after {stale_after}: {status:?} {err}"
        );
    }
    assert_imported_exactly_once(&db, good, sum, &bad, 1);
}

#[test]
fn a_file_separated_by_another_delimiter_is_refused_naming_the_delimiter_flag() {
    let Some(db) = TestDb::create("delimiter") else {
        return;
    };
    db.sql(METER_READINGS);
    let semicolons = db.write(
        "semicolons.csv",
        b"meter_id;reading_at;kwh\nm1;2024-06-01 10:00:00;1,5\n",
    );
    let tabs = db.write(
        "tabs.csv",
        b"meter_id\treading_at\tkwh\nm1\t2024-06-01 10:00:00\t1.5\n",
    );
    for (path, said, flag) in [(&semicolons, "';'", ";"), (&tabs, "a tab", "tab")] {
        let path = path.to_str().unwrap();
        let (status, out, err) = db.run("enqueue", &["--table", "meter_readings", path], "refused");
        assert!(!status.success() && out.is_empty(), "{out}{err}");
        assert!(
            err.contains(&format!("it holds {said}: if the file's fields are separated by {said}, enqueue it with --delimiter")),
            "the refusal of a {flag}-separated file should name --delimiter: {err}"
        );
        assert!(!err.contains("EnqueueOptions"), "{err}");
        let (status, out, err) = db.run(
            "enqueue",
            &["--table", "meter_readings", "--delimiter", flag, path],
            "accepted",
        );
        assert!(status.success(), "{err}");
        assert!(!out.trim().is_empty(), "{out}");
    }
}

#[test]
fn a_symlink_planted_as_the_lock_file_is_refused_saying_so_and_its_target_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("precious.txt");
    std::fs::write(&target, "keep me\n").unwrap();
    let lock = dir.path().join("import.lock");
    std::os::unix::fs::symlink(&target, &lock).unwrap();
    // No server is needed: the lock file comes first.
    let url = "mysql://app:s3cret@127.0.0.1:1/db";
    let mut child = import_command(
        url,
        dir.path(),
        "run",
        &["--once", "--lock-file", lock.to_str().unwrap()],
        "planted",
    )
    .spawn()
    .unwrap();
    let status = wait_guarded(&mut child, "planted");
    let (_, err) = output(dir.path(), "planted");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("is a symbolic link") && err.contains("remove it"),
        "the refusal should say that the lock file is a symlink, and what to do: {err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
}

#[test]
fn a_processor_whose_stderr_reader_went_away_goes_on_importing_and_obeys_sigterm() {
    let Some(db) = TestDb::create("epipe") else {
        return;
    };
    let (csv, good, sum, bad) = readings(150_000, 1009);
    let path = db.write("readings.csv", &csv);
    enqueue(&db, &path);
    let lock = db.dir.path().join("import.lock");
    let lock = lock.to_str().unwrap();
    // `dbslots import run 2>&1 | head -1`, a log collector restarted, a
    // closed terminal: every write to stderr fails with EPIPE from the
    // first line on.
    let without_stderr = |args: &[&str], log: &str| {
        let mut child = db
            .dbslots("run", args, log)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stderr.take());
        child
    };
    let mut daemon = without_stderr(&["--lock-file", lock, "--batch-rows", "100"], "daemon");
    wait_for_progress(&db, &mut daemon, 1_000);
    terminate(&daemon);
    let status = wait_guarded(&mut daemon, "the terminated processor");
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM stops a processor without a stderr"
    );
    let (status, holder): (String, Option<String>) =
        db.row("SELECT CAST(status AS CHAR), holder FROM import_jobs");
    assert_eq!(
        (status.as_str(), holder),
        ("pending", None),
        "put back at its checkpoint"
    );

    let mut once = without_stderr(&["--once", "--lock-file", lock], "once");
    let status = wait_guarded(&mut once, "the resuming processor");
    assert_eq!(
        status.code(),
        Some(0),
        "a processor that cannot write its progress must import all the same, not panic"
    );
    assert_imported_exactly_once(&db, good, sum, &bad, 1);
}

#[test]
fn enqueue_and_status_whose_stdout_reader_went_away_end_quietly_rather_than_panic() {
    let Some(db) = TestDb::create("stdout_epipe") else {
        return;
    };
    let (csv, ..) = readings(10, 97);
    let path = db.write("readings.csv", &csv);
    db.sql(METER_READINGS);
    let path = path.to_str().unwrap();
    // `dbslots import status --json | head -1`: the reader is gone before
    // the first write.
    let without_stdout = |subcommand: &str, args: &[&str], log: &str| {
        let mut child = db
            .dbslots(subcommand, args, log)
            .stdout(crate::support::broken_pipe())
            .spawn()
            .unwrap();
        let status = wait_guarded(&mut child, log);
        let (_, err) = db.output(log);
        (status, err)
    };
    for (subcommand, args) in [
        ("enqueue", &["--table", "meter_readings", path][..]),
        ("status", &[][..]),
        ("status", &["--json"][..]),
    ] {
        let (status, err) = without_stdout(subcommand, args, subcommand);
        assert!(
            status.success() && !err.contains("panicked"),
            "import {subcommand} {args:?} with nobody reading its output: {status:?} {err}"
        );
    }
    let enqueued: u64 = db.row("SELECT COUNT(*) FROM import_jobs");
    assert_eq!(enqueued, 1);
}

#[test]
fn a_lock_file_that_holds_something_else_is_refused_not_emptied() {
    let dir = tempfile::tempdir().unwrap();
    // Arguments mixed up: a data file given as the lock file.
    let data = dir.path().join("readings.csv");
    std::fs::write(
        &data,
        "meter_id,reading_at,kwh\nm1,2024-06-01 10:00:00,1.5\n",
    )
    .unwrap();
    let mut child = import_command(
        "mysql://app:s3cret@127.0.0.1:1/db",
        dir.path(),
        "run",
        &[
            "--once",
            "--reconnect-for",
            "1",
            "--lock-file",
            data.to_str().unwrap(),
        ],
        "mixed_up",
    )
    .spawn()
    .unwrap();
    let status = wait_guarded(&mut child, "mixed_up");
    let (_, err) = output(dir.path(), "mixed_up");
    assert_eq!(
        std::fs::read_to_string(&data).unwrap(),
        "meter_id,reading_at,kwh\nm1,2024-06-01 10:00:00,1.5\n",
        "the file given as the lock file must be left as it was: {err}"
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("not a lock file"), "{err}");
}

#[test]
fn a_processor_refused_by_the_server_says_how_long_it_tried_and_hides_the_password() {
    let Some(db) = TestDb::create("denied") else {
        return;
    };
    let opts = mysql_async::Opts::from_url(&db.url).unwrap();
    let password = opts.pass().unwrap().to_owned();
    let wrong = db
        .url
        .replacen(&format!(":{password}@"), ":not-the-password@", 1);
    assert_ne!(wrong, db.url);
    let lock = db.dir.path().join("import.lock");
    let mut child = import_command(
        &wrong,
        db.dir.path(),
        "run",
        &["--once", "--lock-file", lock.to_str().unwrap()],
        "denied",
    )
    .spawn()
    .unwrap();
    let status = wait_guarded(&mut child, "denied");
    let (_, err) = db.output("denied");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("Access denied"), "{err}");
    assert!(
        !err.contains("not-the-password") && !err.contains(&password),
        "{err}"
    );
    // The connect took its time (a round trip at least): 'tried for 0ns'
    // says nothing true.
    assert!(
        err.contains("(tried for ") && !err.contains("(tried for 0.0ns)"),
        "{err}"
    );
}

#[test]
fn a_file_with_a_header_and_no_records_is_refused_at_enqueue() {
    let Some(db) = TestDb::create("header_only") else {
        return;
    };
    db.sql(METER_READINGS);
    // A day without readings, as an export writes it; blank lines hold no
    // record in a file of several columns.
    let header_only = db.write("header_only.csv", b"meter_id,reading_at,kwh\n");
    let blank_lines = db.write("blank_lines.csv", b"meter_id,reading_at,kwh\r\n\r\n\n");
    for path in [&header_only, &blank_lines] {
        let (status, out, err) = db.run(
            "enqueue",
            &["--table", "meter_readings", path.to_str().unwrap()],
            "enqueue",
        );
        assert_eq!(status.code(), Some(1), "{out}{err}");
        assert!(
            err.contains("has a header but no records; nothing to import"),
            "a file that can only fail its job is refused when it is enqueued: {err}"
        );
    }
    let (status, out, _) = db.run("status", &[], "status");
    assert!(status.success());
    assert_eq!(out.trim(), "no import jobs");
    // A file of one column: a blank line is a record (a NULL).
    db.sql("CREATE TABLE notes (note VARCHAR(10) NULL, UNIQUE KEY (note))");
    let one_column = db.write("one_column.csv", b"note\n\n");
    let (status, _, err) = db.run(
        "enqueue",
        &["--table", "notes", one_column.to_str().unwrap()],
        "one_column",
    );
    assert!(status.success(), "{err}");
}
