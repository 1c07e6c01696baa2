//! `dbslots spawn` end to end: the real binary, real worker processes, pools
//! in temporary directories.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use dbslots_core::{Pool, PoolOptions};

use crate::support::{Launch, dbslots};

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the dbslots binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A worker that counts the workers running at once under a file lock and
/// appends the count it saw on arrival to `$D/seen`.
const COUNTING_WORKER: &str = r#"
flock "$D/lock" -c 'n=$(cat "$D/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$D/count"; echo $n >> "$D/seen"'
sleep "$HOLD"
flock "$D/lock" -c 'n=$(cat "$D/count"); echo $((n-1)) > "$D/count"'
"#;

/// Runs 300 counting workers with `extra` flags; returns the output and the
/// counts the workers saw.
fn count_running(dir: &Path, hold: &str, extra: &[&str]) -> (Output, Vec<u32>) {
    let out = run(dbslots()
        .args(["spawn", "--workers", "300", "--pool"])
        .arg(dir.join("pool"))
        .args(["--capacity", "20"])
        .args(extra)
        .args(["--", "sh", "-c", COUNTING_WORKER])
        .env("D", dir)
        .env("HOLD", hold));
    let seen = std::fs::read_to_string(dir.join("seen"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().expect("a count"))
        .collect();
    (out, seen)
}

#[test]
fn hold_slot_never_runs_more_workers_than_slots() {
    let dir = tempfile::tempdir().unwrap();
    let (out, seen) = count_running(dir.path(), "0.05", &["--hold-slot"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(seen.len(), 300, "every worker counted itself");
    let peak = *seen.iter().max().unwrap();
    assert!(peak <= 20, "{peak} workers ran at once on 20 slots");
    assert!(
        peak >= 2,
        "workers never overlapped, the test measures nothing"
    );
    let left = std::fs::read_to_string(dir.path().join("count")).unwrap();
    assert_eq!(left.trim(), "0");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("succeeded 300, failed 0"), "{stderr}");
    assert!(stderr.contains("peak slots in use"), "{stderr}");
}

#[test]
fn the_counting_worker_sees_overruns_when_nothing_limits_them() {
    // The control for the test above: the same workers, all at once.
    let dir = tempfile::tempdir().unwrap();
    let (out, seen) = count_running(
        dir.path(),
        "0.5",
        &["--batch-size", "300", "--batch-delay", "0"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(seen.len(), 300);
    let peak = *seen.iter().max().unwrap();
    assert!(
        peak > 20,
        "only {peak} at once: the counter cannot see overruns"
    );
}

#[test]
fn a_failing_worker_fails_the_run_and_shows_in_summary_and_joblog() {
    let dir = tempfile::tempdir().unwrap();
    let joblog = dir.path().join("joblog.tsv");
    let out = run(dbslots()
        .args(["spawn", "--workers", "10", "--capacity", "4", "--pool"])
        .arg(dir.path().join("pool"))
        .arg("--joblog")
        .arg(&joblog)
        .args([
            "--",
            "sh",
            "-c",
            "case {index} in 3) exit 7;; 5) kill -9 $$;; esac; echo fine",
        ]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("succeeded 8, failed 1, killed by signal 1, not started 0"),
        "{stderr}"
    );
    assert!(stderr.contains("worker 3 exited with status 7"), "{stderr}");
    assert!(
        stderr.contains("worker 5 was killed by SIGKILL"),
        "{stderr}"
    );

    let log = std::fs::read_to_string(&joblog).unwrap();
    let mut lines = log.lines();
    assert_eq!(
        lines.next(),
        Some("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand")
    );
    let mut rows: Vec<Vec<String>> = lines
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect();
    rows.sort_by_key(|r| r[0].parse::<u32>().unwrap());
    assert_eq!(rows.len(), 10);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 9, "{row:?}");
        assert_eq!(row[0], (i + 1).to_string());
        assert_eq!(row[1], ":");
        assert!(row[2].parse::<f64>().unwrap() > 1.0e9, "{row:?}");
        assert!(row[3].parse::<f64>().unwrap() >= 0.0, "{row:?}");
        let (exitval, signal) = match i {
            3 => ("7", "0"),
            5 => ("0", "9"),
            _ => ("0", "0"),
        };
        assert_eq!(
            (row[6].as_str(), row[7].as_str()),
            (exitval, signal),
            "{row:?}"
        );
        assert!(row[8].starts_with("sh -c 'case "), "{row:?}");
        assert!(row[8].contains(&format!("case {i} in")), "{row:?}");
    }
}

#[test]
fn workers_see_their_index_count_pool_job_and_slot() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let pool = dir.path().join("pool");
    let script = "echo arg={index}/{count}; env | grep ^DBSLOTS_ | sort";
    let out = run(dbslots()
        .args(["spawn", "--workers", "3", "--capacity", "2", "--hold-slot"])
        .args(["--job-id", "job-42", "--pool"])
        .arg(&pool)
        .arg("--log-dir")
        .arg(&logs)
        .args(["--", "sh", "-c", script]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "output went to the log files");
    for i in 0..3 {
        let log = std::fs::read_to_string(logs.join(format!("{i}.log"))).unwrap();
        assert!(log.contains(&format!("arg={i}/3\n")), "{log}");
        assert!(
            log.contains(&format!("DBSLOTS_WORKER_INDEX={i}\n")),
            "{log}"
        );
        assert!(log.contains("DBSLOTS_WORKER_COUNT=3\n"), "{log}");
        assert!(log.contains("DBSLOTS_JOB_ID=job-42\n"), "{log}");
        assert!(
            log.contains(&format!("DBSLOTS_POOL={}\n", pool.display())),
            "{log}"
        );
        let slot: u32 = log
            .lines()
            .find_map(|l| l.strip_prefix("DBSLOTS_SLOT="))
            .expect("a slot number")
            .parse()
            .unwrap();
        assert!(slot < 2, "{log}");
    }

    // Batch mode takes no slot for the workers: none must be advertised,
    // not even one the spawner itself inherited.
    let out = run(dbslots()
        .args(["spawn", "--workers", "2", "--batch-size", "2", "--pool"])
        .arg(&pool)
        .arg("--log-dir")
        .arg(&logs)
        .env("DBSLOTS_SLOT", "1")
        .args(["--", "sh", "-c", script]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = std::fs::read_to_string(logs.join("0.log")).unwrap();
    assert!(!log.contains("DBSLOTS_SLOT="), "{log}");
    assert!(!log.contains("DBSLOTS_JOB_ID="), "{log}");
}

#[test]
fn a_descriptor_the_spawner_inherited_reaches_every_worker() {
    // `dbslots spawn ... 3>file`, a jobserver's pipe, systemd's sockets:
    // what the spawner got open for its children reaches the workers, as
    // from a shell (the spawner closes its own before each exec).
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = std::fs::File::create(dir.path().join("fd3")).unwrap();
    let raw = shared.as_raw_fd();
    let mut cmd = dbslots();
    cmd.args(["spawn", "--workers", "3", "--capacity", "2", "--pool"])
        .arg(dir.path().join("pool"))
        .args([
            "--",
            "sh",
            "-c",
            r#"echo "worker $DBSLOTS_WORKER_INDEX" >&3"#,
        ]);
    // SAFETY: only dup2 and fcntl (async-signal-safe) between fork and
    // exec: descriptor 3 without close-on-exec, as `3>file` leaves it.
    unsafe {
        cmd.pre_exec(move || {
            let r = if raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(dir.path().join("fd3")).unwrap();
    for i in 0..3 {
        assert!(
            written.contains(&format!("worker {i}\n")),
            "{written}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn a_freed_slot_goes_to_the_next_worker_at_once_not_at_the_next_probe() {
    // A worker's slot is given back only if no process kept a copy of its
    // lock (`release_unless_inherited`). A worker starting at that moment
    // must not count as one: a vfork child held the spawner's descriptors
    // until its exec closed them, after the spawner had gone on, so one
    // release in six found the lock taken, woke nobody, and the next worker
    // waited for the head's probe. (The release looks again for 2 ms; a
    // very busy machine may take longer for an exec now and then, hence
    // the margin: before, 25 to 52 of the 300.)
    let _alone = crate::support::heavy_or_sensitive();
    let dir = tempfile::tempdir().unwrap();
    let out = run(dbslots()
        .args(["spawn", "--workers", "300", "--capacity", "10", "--pool"])
        .arg(dir.path().join("pool"))
        .args(["--progress", "quiet", "--", "true"])
        .env("RUST_LOG", "dbslots_core=debug"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let kept = stderr
        .lines()
        .filter(|l| l.contains("inherited its lock still holds it"))
        .count();
    assert!(
        kept <= 3,
        "releases that found the lock still held: {kept} of 300"
    );
}

#[test]
fn output_is_prefixed_with_the_worker_index() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dbslots()
        .args(["spawn", "--workers", "2", "--capacity", "2", "--pool"])
        .arg(dir.path().join("pool"))
        .args([
            "--",
            "sh",
            "-c",
            "echo out {index}; echo err {index} >&2; printf partial",
        ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    for i in 0..2 {
        assert!(stdout.contains(&format!("[{i}] out {i}\n")), "{stdout}");
        assert!(stdout.contains(&format!("[{i}] partial\n")), "{stdout}");
        assert!(stderr.contains(&format!("[{i}] err {i}\n")), "{stderr}");
    }
}

#[test]
fn batches_start_no_earlier_than_their_delay() {
    let dir = tempfile::tempdir().unwrap();
    let joblog = dir.path().join("joblog");
    let out = run(dbslots()
        .args(["spawn", "--workers", "6", "--batch-size", "2"])
        .args(["--batch-delay", "0.3", "--capacity", "5", "--pool"])
        .arg(dir.path().join("pool"))
        .arg("--joblog")
        .arg(&joblog)
        .args(["--", "true"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    for b in 1..=3 {
        assert!(
            stderr.contains(&format!(
                "batch {b}/3: started workers {}-{}",
                2 * b - 2,
                2 * b - 1
            )),
            "{stderr}"
        );
    }
    assert!(
        stderr.contains("active"),
        "pool stats after each batch: {stderr}"
    );
    let log = std::fs::read_to_string(&joblog).unwrap();
    let mut start = [f64::MAX; 3];
    for line in log.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let index: usize = cols[0].parse::<usize>().unwrap() - 1;
        let t: f64 = cols[2].parse().unwrap();
        start[index / 2] = start[index / 2].min(t);
    }
    // Lower bounds only: a busy machine makes batches later, never earlier
    // (2 ms for the joblog's rounding).
    assert!(start[1] - start[0] >= 0.298, "{start:?}");
    assert!(start[2] - start[1] >= 0.298, "{start:?}");
}

#[test]
fn a_missing_program_stops_the_run_with_127() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dbslots()
        .args(["spawn", "--workers", "5", "--capacity", "2", "--pool"])
        .arg(dir.path().join("pool"))
        .args(["--", "/nonexistent/worker-program"]));
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cannot start worker 0"), "{stderr}");
    assert!(stderr.contains("not started 5"), "{stderr}");
}

#[test]
fn an_unusable_joblog_is_a_setup_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dbslots()
        .args(["spawn", "--workers", "1", "--capacity", "1", "--pool"])
        .arg(dir.path().join("pool"))
        .args(["--joblog", "/nonexistent/dir/joblog", "--", "true"]));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("--joblog") && !err.contains("SpawnOptions"),
        "{err}"
    );
}

#[test]
fn setup_errors_name_the_flags_not_the_library_options() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none");
    let out = run(dbslots()
        .args(["spawn", "--workers", "1", "--pool"])
        .arg(&missing)
        .args(["--", "true"]));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("does not exist") && err.contains("(--capacity)"),
        "{err}"
    );
    assert!(!err.contains("PoolOptions"), "{err}");
}

#[test]
fn batches_without_hold_slot_need_no_pool() {
    // The default pool lives under XDG_RUNTIME_DIR: an empty one has none.
    let runtime_dir = tempfile::tempdir().unwrap();
    let out = run(dbslots()
        .env("XDG_RUNTIME_DIR", runtime_dir.path())
        .args([
            "spawn",
            "--workers",
            "4",
            "--batch-size",
            "2",
            "--batch-delay",
            "0",
        ])
        .args(["--progress", "lines", "--"])
        .args([
            "sh",
            "-c",
            "echo \"worker $DBSLOTS_WORKER_INDEX pool ${DBSLOTS_POOL-none}\"",
        ]));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for i in 0..4 {
        assert!(
            stdout.contains(&format!("worker {i} pool none")),
            "{stdout}"
        );
    }
    assert!(stderr.contains("4 of 4 workers started"), "{stderr}");
    assert!(stderr.contains("no pool, peak workers running"), "{stderr}");
    assert!(
        !runtime_dir.path().join("dbslots/default").exists(),
        "no pool was created"
    );

    // Taking a slot per worker still needs the pool.
    let out = run(dbslots()
        .env("XDG_RUNTIME_DIR", runtime_dir.path())
        .args([
            "spawn",
            "--workers",
            "1",
            "--batch-size",
            "1",
            "--hold-slot",
        ])
        .args(["--", "true"]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("does not exist") && stderr.contains("--capacity"),
        "{stderr}"
    );
}

/// Process ids written by the workers to `file`, one a line.
fn read_pids(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether `pid` is a live process (zombies waiting for a reaper count as
/// gone: they run nothing and hold no lock).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a spawner of 40 workers on 10 slots whose workers record their
/// pids in `dir/workers` and those of their children (a `sleep 60` each) in
/// `dir/children`, and waits until ten are running.
fn start_sleepers(dir: &Path, extra: &[&str], ignore_term: bool) -> (Child, Sleepers) {
    let pool = dir.join("pool");
    start_sleepers_on(
        dir,
        pool.to_str().expect("a UTF-8 path"),
        extra,
        ignore_term,
    )
}

/// [`start_sleepers`] on the pool at `pool`.
fn start_sleepers_on(
    dir: &Path,
    pool: &str,
    extra: &[&str],
    ignore_term: bool,
) -> (Child, Sleepers) {
    let sleepers = Sleepers {
        workers: dir.join("workers"),
        children: dir.join("children"),
    };
    let trap = if ignore_term { "trap '' TERM; " } else { "" };
    let script = format!("{trap}sleep 60 & echo $! >> \"$C\"; echo $$ >> \"$W\"; wait");
    let child = dbslots()
        .args([
            "spawn",
            "--workers",
            "40",
            "--capacity",
            "10",
            "--pool",
            pool,
        ])
        .args(extra)
        .args(["--", "sh", "-c", &script])
        .env("W", &sleepers.workers)
        .env("C", &sleepers.children)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("ten workers", Duration::from_secs(30), || {
        read_pids(&sleepers.workers).len() >= 10
    });
    (child, sleepers)
}

/// The pids the pool's stats show as holders, sorted.
fn holder_pids(pool: &Pool) -> Vec<i32> {
    let mut pids: Vec<i32> = (pool.stats().unwrap().holders.iter())
        .filter_map(|h| h.pid.map(|p| p as i32))
        .collect();
    pids.sort_unstable();
    pids
}

/// Where the sleepers' pids are.
struct Sleepers {
    workers: PathBuf,
    children: PathBuf,
}

impl Sleepers {
    fn workers(&self) -> Vec<i32> {
        read_pids(&self.workers)
    }

    fn all(&self) -> Vec<i32> {
        let mut all = read_pids(&self.workers);
        all.extend(read_pids(&self.children));
        all
    }
}

fn reap(mut child: Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("dbslots spawn did not exit");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn kill_all(pids: &[i32]) {
    for pid in pids {
        // SAFETY: plain kill(2) on processes this test started.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
}

#[test]
fn ctrl_c_leaves_no_worker_running() {
    for (extra, ignore_term) in [
        (&["--grace", "10"][..], false),
        (&["--grace", "0.5", "--hold-slot"][..], true),
        // Longer than a clock holds: no SIGKILL deadline, no crash.
        (&["--grace", "1e19"][..], false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (child, sleepers) = start_sleepers(dir.path(), extra, ignore_term);
        // SAFETY: SIGINT to the spawner we started, as a Ctrl-C would.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = reap(child, Duration::from_secs(60));
        assert_eq!(status.code(), Some(130), "{extra:?}");
        // Workers and their children alike.
        let started = sleepers.all();
        let running: Vec<i32> = started.iter().copied().filter(|p| alive(*p)).collect();
        kill_all(&running);
        assert!(
            running.is_empty(),
            "{extra:?}: still running after the spawner exited: {running:?}"
        );
        let workers = sleepers.workers().len();
        assert!((10..40).contains(&workers), "{workers} workers started");
        let pool = Pool::open(dir.path().join("pool"), PoolOptions::new()).unwrap();
        assert_eq!(pool.stats().unwrap().active, 0, "{extra:?}");
    }
}

#[test]
fn a_stopped_worker_is_reported_and_ends_on_ctrl_c_without_waiting_for_the_grace_period() {
    // A stopped worker (SIGSTOP; SIGTTIN when it reads the terminal) keeps
    // its slot without a sign of life: the run says so. And it holds
    // SIGTERM pending until it is continued: Ctrl-C must wake it to take
    // the SIGTERM, not leave it to the SIGKILL a minute later.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let mut spawner = dbslots()
        .args([
            "spawn",
            "--workers",
            "1",
            "--capacity",
            "1",
            "--grace",
            "60",
            "--pool",
        ])
        .arg(dir.path().join("pool"))
        .args([
            "--",
            "sh",
            "-c",
            r#"echo $$ > "$D/worker"; kill -STOP $$; sleep 100"#,
        ])
        .env("D", dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("the dbslots binary runs");
    let worker_file = dir.path().join("worker");
    wait_for("the worker to stop itself", Duration::from_secs(10), || {
        read_pids(&worker_file).first().is_some_and(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('T'))
            })
        })
    });
    let worker = read_pids(&worker_file)[0];
    let notice = format!("worker 0 (pid {worker}) is stopped by SIGSTOP; it keeps its slot");
    wait_for("the stop reported", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.contains(&notice))
    });
    // SAFETY: SIGINT to the spawner we started, as a Ctrl-C would.
    unsafe { libc::kill(spawner.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = spawner.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            kill_all(&[worker]);
            let _ = spawner.kill();
            panic!(
                "the stopped worker was not ended by SIGTERM: the spawner waits for the grace period"
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    assert!(!alive(worker), "the worker outlived the spawner");
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(stderr.matches(&notice).count(), 1, "said once: {stderr}");
}

#[test]
fn a_killed_spawner_leaves_every_worker_holding_its_slot() {
    let _heavy = crate::support::heavy_or_sensitive();
    // No worker may run without its slot. Adaptive workers hold their slots
    // themselves (their stdin is the slot's locked file), with or without
    // --hold-slot: a SIGKILLed spawner leaves them running with their slots
    // held, and each slot is freed when its worker exits.
    for extra in [&[][..], &["--hold-slot"][..]] {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, sleepers) = start_sleepers(dir.path(), extra, false);
        let pool = Pool::open(dir.path().join("pool"), PoolOptions::new()).unwrap();
        // The spawner records a worker as its slot's holder just after the
        // spawn returns, while the worker may already be running: a kill in
        // between (a busy machine deschedules the spawner there) leaves the
        // spawner's own pid shown for a slot the worker holds. The slot is
        // held all the same; what is tested here is that a kill after the
        // record keeps it, so kill only once every worker is recorded.
        wait_for(
            "the ten workers recorded as holders",
            Duration::from_secs(30),
            || {
                let mut workers = sleepers.workers();
                workers.sort_unstable();
                holder_pids(&pool) == workers
            },
        );
        child.kill().unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        let mut workers = sleepers.workers();
        assert_eq!(workers.len(), 10, "{extra:?}");
        thread::sleep(Duration::from_millis(300));
        let still: Vec<i32> = workers.iter().copied().filter(|p| alive(*p)).collect();
        let stats = pool.stats().unwrap();
        let holders = holder_pids(&pool);
        // One worker first: its slot alone is freed.
        kill_all(&workers[..1]);
        wait_for("the first worker's slot", Duration::from_secs(30), || {
            pool.stats().unwrap().active == 9
        });
        kill_all(&sleepers.all());
        assert_eq!(still.len(), 10, "{extra:?}: workers died with the spawner");
        assert_eq!(stats.active, 10, "{extra:?}: the workers' slots were freed");
        workers.sort_unstable();
        assert_eq!(holders, workers, "{extra:?}: status shows the workers");
        wait_for("the slots to be freed", Duration::from_secs(30), || {
            pool.stats().unwrap().active == 0
        });
    }
}

#[test]
fn workers_of_a_redis_pool_die_with_a_killed_spawner_unless_they_hold_their_slots() {
    // A lease cannot be handed over: it dies with the spawner (after the
    // lease), so must its worker and whatever the worker started (here a
    // `sleep 60` in the worker's group, which the kernel's death signal for
    // the worker does not reach), unless --hold-slot lets them run on.
    let Some(url) = dbslots_testkit::shared_redis() else {
        return;
    };
    for (extra, survive) in [(&[][..], false), (&["--hold-slot"][..], true)] {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("spawn-{}-{}", std::process::id(), crate::exec::now_nanos());
        let addr = format!("{url}?pool={name}&lease_ms=1000");
        let (mut child, sleepers) = start_sleepers_on(dir.path(), &addr, extra, false);
        child.kill().unwrap();
        child.wait().unwrap();
        let workers = sleepers.workers();
        assert_eq!(workers.len(), 10, "{extra:?}");
        // Every worker records its child before itself.
        let all = sleepers.all();
        assert_eq!(all.len(), 20, "{extra:?}");
        if survive {
            thread::sleep(Duration::from_millis(300));
            let still = all.iter().filter(|p| alive(**p)).count();
            kill_all(&all);
            assert_eq!(still, 20, "{extra:?}: workers died with the spawner");
        } else {
            // Well within the lease (1 s): the keeper kills them at once.
            let deadline = Instant::now() + Duration::from_millis(900);
            while all.iter().any(|p| alive(*p)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            let left: Vec<i32> = all.iter().copied().filter(|p| alive(*p)).collect();
            kill_all(&all);
            assert!(
                left.is_empty(),
                "{extra:?}: still running after the spawner was killed: {left:?} (workers {workers:?})"
            );
        }
    }
}

#[test]
// The spawner is reaped with waitpid, after its memory was sampled.
#[allow(clippy::zombie_processes)]
fn memory_stays_small_with_a_thousand_workers() {
    let _heavy = crate::support::heavy_or_sensitive();
    // All 1000 at once (one batch), each writing to its pipes: the worst
    // case for the spawner's memory.
    let dir = tempfile::tempdir().unwrap();
    let child = dbslots()
        .args(["spawn", "--workers", "1000", "--batch-size", "1000"])
        .args(["--batch-delay", "0", "--capacity", "150", "--pool"])
        .arg(dir.path().join("pool"))
        .args([
            "--",
            "sh",
            "-c",
            "echo start {index}; sleep 1; echo end {index}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut stdout = child.stdout.unwrap();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    // The spawner's own peak (not wait4's ru_maxrss, which also holds
    // this test binary's size: see dbslots_testkit::memory).
    let sampler = dbslots_testkit::memory::watch_peak_kib(pid as u32);
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid out-pointer.
    let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(reaped, pid);
    let peak_kb = sampler.join().unwrap();
    let out = reader.join().unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "wait status {status:#x}, {} lines",
        out.lines().count()
    );
    assert_eq!(out.lines().count(), 2000);
    let peak_mb = peak_kb as f64 / 1024.0;
    eprintln!("the spawner peaked at {peak_mb:.1} MB");
    assert!(peak_mb > 0.0, "no sample of the spawner's memory");
    assert!(peak_mb < 50.0, "the spawner peaked at {peak_mb:.1} MB");
}

/// A worker that writes 400 lines of about 100 bytes to stdout and one to
/// stderr, then records its pid in `$D/finished`; workers from `$SLEEP_FROM`
/// on then record their pid in `$D/sleepers` and sleep.
const CHATTY_WORKER: &str = r#"
i=0
while [ $i -lt 400 ]; do
  echo "worker $DBSLOTS_WORKER_INDEX line $i xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
  i=$((i+1))
done
echo "worker $DBSLOTS_WORKER_INDEX done" >&2
echo $$ >> "$D/finished"
if [ "$DBSLOTS_WORKER_INDEX" -ge "$SLEEP_FROM" ]; then echo $$ >> "$D/sleepers"; exec sleep 60; fi
"#;

/// `dbslots spawn` of `workers` chatty workers on 20 slots, its stdout and
/// stderr pipes that nobody reads yet.
fn start_chatty(dir: &Path, workers: u32, sleep_from: u32) -> Child {
    let pool = dir.join("pool");
    dbslots()
        .args([
            "spawn",
            "--workers",
            &workers.to_string(),
            "--capacity",
            "20",
        ])
        .args(["--progress", "lines", "--grace", "5", "--pool"])
        .arg(&pool)
        .args(["--", "sh", "-c", CHATTY_WORKER])
        .env("D", dir)
        .env("SLEEP_FROM", sleep_from.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn read_all(mut pipe: impl std::io::Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = Vec::new();
        let _ = pipe.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    })
}

#[test]
fn a_stalled_reader_never_stalls_the_workers() {
    // 200 workers of 400 lines each (8 MB) on 20 slots, while nobody reads
    // the spawner's stdout or stderr: every worker must still finish, be
    // reaped and free its slot (ten rounds of starts), with lines dropped
    // and counted rather than workers blocked.
    let dir = tempfile::tempdir().unwrap();
    let mut child = start_chatty(dir.path(), 200, u32::MAX);
    let started = Instant::now();
    let finished = dir.path().join("finished");
    wait_for(
        "200 workers to finish while nobody reads",
        Duration::from_secs(30),
        || read_pids(&finished).len() == 200,
    );
    let pool = Pool::open(dir.path().join("pool"), PoolOptions::new()).unwrap();
    wait_for("every slot to be freed", Duration::from_secs(2), || {
        pool.stats().unwrap().active == 0
    });
    let stalled_for = started.elapsed();
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "the spawner waits for its output to be read"
    );
    // The reader comes back: what was kept arrives, with the count of what
    // was not, and the spawner ends normally.
    let out = read_all(child.stdout.take().unwrap());
    let err = read_all(child.stderr.take().unwrap());
    let status = reap(child, Duration::from_secs(60));
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "{err}");
    let dropped_note = |stream: &str| -> u64 {
        err.lines()
            .filter_map(|l| {
                l.strip_prefix("dbslots spawn: dropped ")?
                    .strip_suffix(&format!(
                        " lines of workers' output to {stream}: it was not read fast enough (output to a log directory keeps every line)"
                    ))?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let (dropped_out, dropped_err) = (dropped_note("stdout"), dropped_note("stderr"));
    assert!(dropped_out > 0, "8 MB fit in the queue? {err}");
    let kept = out.lines().filter(|l| l.contains(" line ")).count() as u64;
    assert_eq!(
        kept + dropped_out,
        200 * 400,
        "every line was written or counted"
    );
    let done = err.lines().filter(|l| l.ends_with(" done")).count() as u64;
    assert_eq!(done + dropped_err, 200);
    assert!(
        err.contains(&format!(
            "{} lines of workers' output dropped",
            dropped_out + dropped_err
        )),
        "the summary counts the dropped lines: {err}"
    );
    eprintln!(
        "200 chatty workers finished in {:.2} s with nobody reading; {dropped_out} of 80000 lines dropped",
        stalled_for.as_secs_f64()
    );
}

#[test]
fn a_stalled_reader_never_delays_ctrl_c() {
    // 100 chatty workers finish while nobody reads; 20 more chat, then
    // sleep. SIGINT must stop those at once and end the spawner, although
    // its output still cannot be written.
    let dir = tempfile::tempdir().unwrap();
    let child = start_chatty(dir.path(), 120, 100);
    let sleepers = dir.path().join("sleepers");
    wait_for(
        "the sleepers to start while nobody reads",
        Duration::from_secs(30),
        || read_pids(&sleepers).len() == 20,
    );
    let pids = read_pids(&sleepers);
    let asked = Instant::now();
    // SAFETY: SIGINT to the spawner we started, as a Ctrl-C would.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    wait_for(
        "the sleepers to get SIGTERM",
        Duration::from_secs(5),
        || !pids.iter().any(|p| alive(*p)),
    );
    let stopped_workers = asked.elapsed();
    let status = reap(child, Duration::from_secs(10));
    let took = asked.elapsed();
    let running: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    kill_all(&running);
    assert_eq!(status.code(), Some(130));
    assert!(running.is_empty(), "still running: {running:?}");
    // The workers get SIGTERM at once (100 ms promised; a margin for a
    // loaded machine); the spawner then waits at most 0.3 s for its output
    // and 0.25 s for the summary.
    assert!(
        stopped_workers < Duration::from_millis(500),
        "SIGTERM after {stopped_workers:?}"
    );
    assert!(took < Duration::from_millis(1500), "SIGINT took {took:?}");
    eprintln!(
        "SIGINT with a stalled reader: workers stopped after {stopped_workers:?}, spawner exited after {took:?}"
    );
}

/// A worker that leaves a `sleep SECONDS` behind (in its process group, but
/// with none of its descriptors: not even the slot) and exits; every worker
/// first notes whether the `sleep` of an earlier worker still runs.
const LEAVES_A_SLEEP: &str = r#"
for f in "$D"/left.*; do
  [ -e "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && echo "$DBSLOTS_WORKER_INDEX" >> "$D/overlap"
done
sleep "$SECONDS_LEFT" </dev/null >/dev/null 2>&1 &
echo $! > "$D/left.$DBSLOTS_WORKER_INDEX"
"#;

#[test]
fn a_slot_is_freed_only_when_the_workers_group_is_gone() {
    // One slot, three workers, each leaving a 1 s `sleep` behind: no worker
    // may start while the previous worker's `sleep` still runs.
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = run(dbslots()
        .args(["spawn", "--workers", "3", "--capacity", "1", "--pool"])
        .arg(dir.path().join("pool"))
        .args(["--", "sh", "-c", LEAVES_A_SLEEP])
        .env("D", dir.path())
        .env("SECONDS_LEFT", "1"));
    let wall = started.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let overlap = std::fs::read_to_string(dir.path().join("overlap")).unwrap_or_default();
    assert_eq!(
        overlap, "",
        "workers started while an earlier worker's sleep ran"
    );
    assert!(wall >= Duration::from_secs(3), "{wall:?}");
    let pool = Pool::open(dir.path().join("pool"), PoolOptions::new()).unwrap();
    assert_eq!(pool.stats().unwrap().active, 0);
}

#[test]
fn a_process_that_left_a_workers_group_keeps_the_slot_as_long_as_it_keeps_the_lock() {
    // The first worker starts a daemon (`setsid`: out of its group, so the
    // spawner does not wait for it) that keeps the worker's stdin, the
    // slot's lock (a shell gives a background job /dev/null, so the lock goes by fd 3). flock keeps a lock while any copy is open: the spawner
    // must not unlock it under the daemon and start the next worker.
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
if [ "$DBSLOTS_WORKER_INDEX" = 0 ]; then
  exec 3<&0
  setsid sh -c 'echo $$ > "$D/daemon"; sleep 1; touch "$D/done"' <&3 >/dev/null 2>&1 &
  while [ ! -s "$D/daemon" ]; do sleep 0.01; done
else
  [ -e "$D/done" ] || echo overlap >> "$D/overlap"
fi
"#;
    let out = run(dbslots()
        .args(["spawn", "--workers", "2", "--capacity", "1", "--pool"])
        .arg(dir.path().join("pool"))
        .args(["--", "sh", "-c", script])
        .env("D", dir.path()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let daemon = read_pids(&dir.path().join("daemon"))[0];
    let overlap = std::fs::read_to_string(dir.path().join("overlap")).unwrap_or_default();
    assert_eq!(
        overlap, "",
        "the second worker started while the daemon held the first one's slot"
    );
    wait_for("the daemon's end", Duration::from_secs(5), || {
        !alive(daemon)
    });
    let pool = Pool::open(dir.path().join("pool"), PoolOptions::new()).unwrap();
    wait_for("the slot's return", Duration::from_secs(5), || {
        pool.stats().unwrap().active == 0
    });
}

#[test]
fn stopping_reaches_what_a_worker_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let pool_dir = dir.path().join("pool");
    let child = dbslots()
        .args(["spawn", "--workers", "2", "--capacity", "1", "--pool"])
        .arg(&pool_dir)
        .args(["--", "sh", "-c", LEAVES_A_SLEEP])
        .env("D", dir.path())
        .env("SECONDS_LEFT", "60")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let left = dir.path().join("left.0");
    wait_for("the first worker's sleep", Duration::from_secs(20), || {
        read_pids(&left).len() == 1
    });
    let sleep = read_pids(&left)[0];
    let pool = Pool::open(&pool_dir, PoolOptions::new()).unwrap();
    // The worker is gone, its sleep holds the slot, the second worker waits.
    thread::sleep(Duration::from_millis(300));
    assert!(alive(sleep));
    assert_eq!(pool.stats().unwrap().active, 1);
    assert!(
        !dir.path().join("left.1").exists(),
        "the second worker started"
    );
    let asked = Instant::now();
    // SAFETY: SIGINT to the spawner we started, as a Ctrl-C would.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = reap(child, Duration::from_secs(10));
    let still = alive(sleep);
    kill_all(&[sleep]);
    assert_eq!(status.code(), Some(130));
    assert!(!still, "the leftover sleep survived the stop");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(pool.stats().unwrap().active, 0);
}

#[test]
fn chatty_workers_run_to_their_end_when_the_spawner_is_killed() {
    // The default prefixed output: the workers' stdout and stderr are pipes
    // to the spawner, which dies mid-run. No worker may die of SIGPIPE.
    let dir = tempfile::tempdir().unwrap();
    let pool_dir = dir.path().join("pool");
    let script = r#"
echo $$ >> "$D/workers"
i=0
while [ $i -lt 60 ]; do
  echo "line $i"; echo "err $i" >&2; sleep 0.02; i=$((i+1))
done
echo $$ >> "$D/finished"
"#;
    let mut child = dbslots()
        .args(["spawn", "--workers", "10", "--capacity", "10", "--pool"])
        .arg(&pool_dir)
        .args(["--", "sh", "-c", script])
        .env("D", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let workers = dir.path().join("workers");
    wait_for("ten workers", Duration::from_secs(20), || {
        read_pids(&workers).len() == 10
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let pool = Pool::open(&pool_dir, PoolOptions::new()).unwrap();
    let finished = dir.path().join("finished");
    let held = pool.stats().unwrap().active;
    wait_for("every worker to finish", Duration::from_secs(30), || {
        read_pids(&finished).len() == 10 || read_pids(&workers).iter().all(|p| !alive(*p))
    });
    let mut done = read_pids(&finished);
    let mut started = read_pids(&workers);
    done.sort_unstable();
    started.sort_unstable();
    assert_eq!(done, started, "workers died with the spawner");
    assert_eq!(
        held, 10,
        "the workers held their slots after the spawner died"
    );
    wait_for("the slots to be freed", Duration::from_secs(10), || {
        pool.stats().unwrap().active == 0
    });
}

/// A worker that prints `W PID PGRP SIGIGN SIGBLK` about itself (the hex
/// masks of /proc/PID/status).
const SELF_REPORT: &str = r#"
st=/proc/$$/status
echo "W $$ $(cut -d' ' -f5 /proc/$$/stat) $(grep '^SigIgn' $st | cut -f2) $(grep '^SigBlk' $st | cut -f2)"
"#;

/// The `W` lines of [`SELF_REPORT`] workers in `text`: (pid, process
/// group, SIGPIPE ignored, blocked signals).
fn self_reports(text: &str) -> Vec<(u64, u64, bool, u64)> {
    text.lines()
        .filter_map(|l| l.split_once("W ").map(|(_, rest)| rest))
        .map(|rest| {
            let f: Vec<&str> = rest.split_whitespace().collect();
            assert_eq!(f.len(), 4, "{rest}");
            let ignored = u64::from_str_radix(f[2], 16).expect("SigIgn");
            let blocked = u64::from_str_radix(f[3], 16).expect("SigBlk");
            let sigpipe = 1u64 << (libc::SIGPIPE - 1);
            (
                f[0].parse().expect("pid"),
                f[1].parse().expect("pgrp"),
                ignored & sigpipe != 0,
                blocked,
            )
        })
        .collect()
}

#[test]
fn workers_start_in_their_own_group_with_no_signal_blocked_and_sigpipe_as_the_output_needs() {
    // The three ways a worker is started: prefixed output without a death
    // signal (posix_spawn called by the spawner), --log-dir (std's
    // posix_spawn), batches (fork + exec with the hook).
    let dir = tempfile::tempdir().unwrap();
    let spawn = |extra: &[&str]| {
        let out = run(dbslots()
            .args(["spawn", "--workers", "3", "--capacity", "2", "--pool"])
            .arg(dir.path().join("pool"))
            .args(extra)
            .args(["--", "sh", "-c", SELF_REPORT]));
        assert!(out.status.success(), "{}", text(&out.stderr));
        out
    };
    let check = |reports: Vec<(u64, u64, bool, u64)>, sigpipe_ignored: bool, what: &str| {
        assert_eq!(reports.len(), 3, "{what}: {reports:?}");
        for (pid, pgrp, ignored, blocked) in reports {
            assert_eq!(pid, pgrp, "{what}: a worker leads its own group");
            assert_eq!(blocked, 0, "{what}: no signal blocked");
            assert_eq!(ignored, sigpipe_ignored, "{what}: SIGPIPE ignored");
        }
    };
    let out = spawn(&[]);
    check(self_reports(&text(&out.stdout)), true, "prefixed");
    let out = spawn(&["--batch-size", "2", "--batch-delay", "0"]);
    check(self_reports(&text(&out.stdout)), true, "batches");
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    spawn(&["--log-dir", logs.to_str().unwrap()]);
    let logged: String = (0..3)
        .map(|i| std::fs::read_to_string(logs.join(format!("{i}.log"))).unwrap())
        .collect();
    check(self_reports(&logged), false, "--log-dir");
}

#[test]
fn a_script_without_a_shebang_line_runs_with_sh_in_every_output_mode() {
    // posix_spawn, unlike a shell or execvp, refuses such a file (ENOEXEC).
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("job");
    std::fs::write(&script, "echo \"worker $1\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Prefixed output (the spawner's own posix_spawn).
    let out = run(dbslots()
        .args(["spawn", "--workers", "2", "--capacity", "2", "--pool"])
        .arg(dir.path().join("pool"))
        .arg("--")
        .arg(&script)
        .arg("{index}"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("[0] worker 0\n") && stdout.contains("[1] worker 1\n"),
        "{stdout}"
    );
    // Log files (std's posix_spawn), and batches (fork + execvp).
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let out = run(dbslots()
        .args(["spawn", "--workers", "2", "--capacity", "2", "--pool"])
        .arg(dir.path().join("pool"))
        .arg("--log-dir")
        .arg(&logs)
        .arg("--")
        .arg(&script)
        .arg("{index}"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(logs.join("1.log")).unwrap(),
        "worker 1\n"
    );
    let out = run(dbslots()
        .args(["spawn", "--workers", "2", "--batch-size", "2", "--"])
        .arg(&script)
        .arg("{index}"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("worker 1"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn signals_ignored_by_the_caller_do_not_stop_the_spawner() {
    // `nohup dbslots spawn ...`: the hang-up of the terminal must not stop
    // the fleet, as it does not stop any other program started so (and as
    // it does not stop `dbslots exec`).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let worker = r#"trap 'echo terminated >> "$D/log"' TERM
touch "$D/started"
while [ ! -e "$D/go" ]; do sleep 0.02; done
echo finished >> "$D/log""#;
    let mut child = Command::new("sh")
        .args([
            "-c",
            "trap '' HUP; exec \"$DBSLOTS\" spawn --workers 1 --progress quiet --pool \"$D/pool\" --capacity 1 -- sh -c \"$W\"",
        ])
        .env("DBSLOTS", env!("CARGO_BIN_EXE_dbslots"))
        .env("D", d)
        .env("W", worker)
        .env_remove("DBSLOTS_POOL")
        .env_remove("DBSLOTS_SLOT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    crate::support::wait_for("the worker to start", Duration::from_secs(20), || {
        d.join("started").exists().then_some(())
    });
    // SAFETY: kill(2) on our own child (sh exec'd into dbslots).
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
    // Time for a spawner that obeys the hang-up to stop the worker (this
    // pause only lets the bug show; the test passes without it).
    thread::sleep(Duration::from_millis(500));
    std::fs::write(d.join("go"), "").unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let log = std::fs::read_to_string(d.join("log")).unwrap_or_default();
    assert_eq!(
        log.trim(),
        "finished",
        "the worker ran to its end: {stderr}"
    );
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn a_log_file_that_cannot_be_created_is_not_blamed_on_the_program() {
    // The program exists; its log file cannot be created (here a dangling
    // symlink; for most users, a directory they cannot write to). That is
    // no "command not found" (127) and no PATH to check.
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::os::unix::fs::symlink(dir.path().join("missing/x"), logs.join("0.log")).unwrap();
    let out = run(dbslots()
        .args(["spawn", "--workers", "1", "--progress", "quiet", "--pool"])
        .arg(dir.path().join("pool"))
        .args(["--capacity", "1", "--log-dir"])
        .arg(&logs)
        .args(["--", "true"]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(126), "{stderr}");
    assert!(stderr.contains("0.log"), "{stderr}");
    assert!(!stderr.contains("PATH"), "{stderr}");
    assert!(
        stderr.contains("--log-dir"),
        "names the flag to check: {stderr}"
    );
}

#[test]
fn a_stalled_joblog_reader_never_stalls_the_spawner() {
    // The joblog is a FIFO (or /dev/stdout, a pipe to a pager) whose reader
    // has stopped reading. Like the output, it must not block the thread
    // that reaps workers, frees slots and obeys signals: Ctrl-C still ends
    // the run at once.
    let _serial = crate::support::heavy_or_sensitive();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("joblog");
    let c_fifo = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo and open on a path in our own temporary directory.
    let reader = unsafe {
        assert_eq!(libc::mkfifo(c_fifo.as_ptr(), 0o600), 0);
        libc::open(c_fifo.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK)
    };
    assert!(reader >= 0);
    let mut child = dbslots()
        .args(["spawn", "--workers", "1000000", "--progress", "quiet"])
        .args(["--capacity", "4", "--pool"])
        .arg(dir.path().join("pool"))
        .arg("--joblog")
        .arg(&fifo)
        .args(["--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Until a thread of the spawner waits for room in the FIFO: nobody
    // reads it. (Or, where the kernel does not say, until the pipe is more
    // than half full and has not moved for a second.)
    let tasks = format!("/proc/{}/task", child.id());
    let (mut last, mut still) = (0, 0);
    wait_for("the joblog's pipe to fill", Duration::from_secs(60), || {
        let blocked = std::fs::read_dir(&tasks)
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| {
                std::fs::read_to_string(t.path().join("wchan"))
                    .is_ok_and(|w| w.contains("pipe_write"))
            });
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD on our own descriptor into a local int.
        unsafe { libc::ioctl(reader, libc::FIONREAD, &mut queued) };
        still = if queued == last { still + 1 } else { 0 };
        last = queued;
        blocked || (queued > 32 * 1024 && still >= 50)
    });
    let asked = Instant::now();
    // SAFETY: SIGINT to the spawner we started, as a Ctrl-C would.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = asked + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: closes our own descriptor.
    unsafe { libc::close(reader) };
    let status = status.expect("the spawner ignored Ctrl-C while its joblog was not read");
    assert_eq!(status.code(), Some(130), "{status:?}");
}

/// Four billion workers on a Redis pool: the table of process groups the
/// keeper needs cannot be had, and the spawner says so (exit 2, start
/// fewer) instead of aborting on a failed allocation; the reason appears
/// once.
#[test]
fn more_workers_than_memory_can_track_is_a_clear_error() {
    let Some(url) = dbslots_testkit::shared_redis() else {
        return;
    };
    let name = format!(
        "spawn-huge-{}-{}",
        std::process::id(),
        crate::exec::now_nanos()
    );
    let out = dbslots()
        .args(["spawn", "--workers", "4000000000", "--capacity", "2"])
        .args(["--pool", &format!("{url}?pool={name}"), "--", "true"])
        .output()
        .expect("run dbslots spawn");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("start fewer workers"), "{err}");
    assert_eq!(err.matches("no memory for a table").count(), 1, "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "{err}"
    );
}

/// The spawner's children that are zombies: exited, waiting to be reaped.
fn zombie_children(parent: u32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if state == Some("Z") && ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn a_daemon_a_worker_started_is_reaped_when_it_exits() {
    a_daemon_is_reaped(Launch::Direct);
}

#[test]
fn a_daemon_is_reaped_where_the_session_leader_is_in_another_pid_namespace() {
    a_daemon_is_reaped(Launch::PidNamespace);
}

fn a_daemon_is_reaped(launch: Launch) {
    // The first worker starts a daemon (`setsid`: out of its group) and
    // exits; the daemon exits soon after and, its parent gone, is a child
    // of the spawner (the subreaper). The second worker keeps the spawner
    // running: meanwhile the daemon must not stay a zombie.
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
if [ "$DBSLOTS_WORKER_INDEX" = 0 ]; then
  setsid sh -c 'echo $$ > "$D/daemon"; sleep 0.2; echo done >> "$D/daemon"' >/dev/null 2>&1 &
  while [ ! -s "$D/daemon" ]; do sleep 0.01; done
else
  sleep 5
fi
"#;
    let Some((mut spawner, spawner_pid)) = launch.start(
        dbslots()
            .args(["spawn", "--workers", "2", "--capacity", "2", "--pool"])
            .arg(dir.path().join("pool"))
            .args(["--", "sh", "-c", script])
            .env("D", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    ) else {
        return;
    };
    let daemon_file = dir.path().join("daemon");
    wait_for("the daemon's end", Duration::from_secs(4), || {
        std::fs::read_to_string(&daemon_file).is_ok_and(|s| s.contains("done"))
    });
    // (In a pid namespace of its own the daemon wrote its pid there.)
    let daemon = read_pids(&daemon_file)[0];
    // Time for the daemon to exit and for the spawner to notice; the
    // second worker still runs.
    thread::sleep(Duration::from_millis(1700));
    let zombies = zombie_children(spawner_pid);
    assert!(
        spawner.try_wait().unwrap().is_none(),
        "the spawner ended early, the test measures nothing"
    );
    let status = reap(spawner, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert_eq!(
        zombies,
        Vec::<i32>::new(),
        "exited processes the spawner never reaped (daemon {daemon}, {launch:?})"
    );
}
