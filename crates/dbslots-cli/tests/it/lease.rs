//! `dbslots exec` on a Redis pool whose holder is cut off from Redis: it
//! stops its command before the server can give the slot to anyone else.

use std::io::Read;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use dbslots_testkit::FreezableProxy;

use crate::support::dbslots;

const LEASE_MS: u64 = 2000;

fn port_of(url: &str) -> u16 {
    url.rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("the test Redis URL is redis://127.0.0.1:PORT/0")
}

/// A shell command that logs "start NANOS" and, on SIGTERM, "stop NANOS"
/// (wall clock, from inside the command) before it exits.
fn logging_command(log: &std::path::Path) -> String {
    let log = log.display();
    format!(
        "echo start $(date +%s%N) >> {log}; trap 'echo stop $(date +%s%N) >> {log}; kill $! 2>/dev/null; exit 143' TERM; sleep 60 & wait"
    )
}

fn logged(log: &std::path::Path, what: &str) -> Option<u128> {
    std::fs::read_to_string(log)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(what)?.trim().parse().ok())
}

fn wait_logged(log: &std::path::Path, what: &str, within: Duration) -> u128 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = logged(log, what) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{} never logged {what:?}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wall_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

#[test]
fn a_cut_off_exec_stops_its_command_before_the_next_one_starts() {
    cut_off_holder_stops_before_the_next_one_starts(&["exec"], Some(143));
}

#[test]
fn a_cut_off_spawn_stops_its_worker_before_the_next_one_starts() {
    cut_off_holder_stops_before_the_next_one_starts(&["spawn", "--workers", "1"], Some(1));
}

/// `dbslots FIRST...` holds the only slot through a proxy that then goes
/// black; a `dbslots exec` on the direct address waits for the slot.
fn cut_off_holder_stops_before_the_next_one_starts(first_args: &[&str], first_code: Option<i32>) {
    let Some(url) = dbslots_testkit::shared_redis() else {
        return;
    };
    let proxy =
        FreezableProxy::start(SocketAddr::from(([127, 0, 0, 1], port_of(&url)))).expect("proxy");
    let name = format!("cut-{}-{}", std::process::id(), wall_nanos());
    let direct = format!("{url}?pool={name}&lease_ms={LEASE_MS}");
    let cut_off = format!(
        "redis://127.0.0.1:{}/0?pool={name}&lease_ms={LEASE_MS}",
        proxy.port()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_log, b_log) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut first = dbslots()
        .args(first_args)
        .args(["--pool", &cut_off, "--capacity", "1", "--"])
        .args(["sh", "-c", &logging_command(&a_log)])
        .stderr(Stdio::piped())
        .spawn()
        .expect("first holder");
    wait_logged(&a_log, "start ", Duration::from_secs(10));
    let mut second = dbslots()
        .args(["exec", "--pool", &direct, "--capacity", "1", "--"])
        .args(["sh", "-c", &logging_command(&b_log)])
        .spawn()
        .expect("second exec");
    // Let the second queue, and the first renew a few times.
    std::thread::sleep(Duration::from_millis(LEASE_MS / 2));
    assert_eq!(logged(&b_log, "start "), None, "the slot was given twice");

    let frozen_at = wall_nanos();
    proxy.freeze();
    let b_start = wait_logged(&b_log, "start ", Duration::from_millis(LEASE_MS + 5000));
    let a_stop = logged(&a_log, "stop ").expect("the first command was told to stop");
    assert!(
        a_stop < b_start,
        "the second command started {} ms before the first stopped",
        (a_stop - b_start) / 1_000_000
    );
    let handed_on_ms = (b_start - frozen_at) / 1_000_000;
    assert!(
        handed_on_ms <= u128::from(LEASE_MS + 1000),
        "the slot came back {handed_on_ms} ms after the cut, more than lease + 1 s"
    );
    let status = first.wait().expect("reap first");
    assert_eq!(
        status.code(),
        first_code,
        "the first command died of SIGTERM"
    );
    let mut err = String::new();
    first
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut err)
        .expect("stderr");
    assert!(err.contains("lease was lost"), "{err}");
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    second.wait().expect("reap second");
}

#[test]
fn a_cut_off_exec_stops_what_its_command_started_before_the_next_one_starts() {
    // The command waits for a child that ignores SIGTERM: the whole
    // process group gets SIGTERM, and SIGKILL after the grace.
    cut_off_holder_stops_its_leftovers(&["exec"], "wait");
}

#[test]
fn a_cut_off_spawn_stops_what_its_worker_left_behind_before_the_next_one_starts() {
    // The worker exits at once and leaves the child behind: the spawner
    // keeps the slot for it, so it must stop it when the lease is lost.
    cut_off_holder_stops_its_leftovers(&["spawn", "--workers", "1"], "exit 0");
}

/// Whether `pid` runs (a zombie does not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// The state letter of `/proc/PID/stat` in a shell: empty when gone.
const STATE_OF_LEFT: &str = "s=$(cut -d' ' -f3 /proc/$(cat \"$LEFT\")/stat 2>/dev/null)";

/// `dbslots FIRST...` holds the only slot through a proxy that then goes
/// black; its command starts a `sleep` that ignores SIGTERM, records its pid
/// in `$LEFT`, and then runs `then`. A `dbslots exec` on the direct address
/// waits for the slot and notes whether that `sleep` still runs when it
/// gets it.
fn cut_off_holder_stops_its_leftovers(first_args: &[&str], then: &str) {
    let Some(url) = dbslots_testkit::shared_redis() else {
        return;
    };
    let proxy =
        FreezableProxy::start(SocketAddr::from(([127, 0, 0, 1], port_of(&url)))).expect("proxy");
    let name = format!("left-{}-{}", std::process::id(), wall_nanos());
    let direct = format!("{url}?pool={name}&lease_ms={LEASE_MS}");
    let cut_off = format!(
        "redis://127.0.0.1:{}/0?pool={name}&lease_ms={LEASE_MS}",
        proxy.port()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (left, verdict) = (dir.path().join("left"), dir.path().join("verdict"));
    let mut first = dbslots()
        .args(first_args)
        .args(["--pool", &cut_off, "--capacity", "1", "--", "sh", "-c"])
        .arg(format!(
            "(trap '' TERM; exec sleep 300) & echo $! > \"$LEFT\"; {then}"
        ))
        .env("LEFT", &left)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("first holder");
    let deadline = Instant::now() + Duration::from_secs(10);
    let sleep_pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&left)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the first command never started");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut second = dbslots()
        .args(["exec", "--pool", &direct, "--capacity", "1", "--", "sh", "-c"])
        .arg(format!(
            "{STATE_OF_LEFT}; if [ -n \"$s\" ] && [ \"$s\" != Z ]; then echo overlap > \"$V\"; else echo clean > \"$V\"; fi"
        ))
        .env("LEFT", &left)
        .env("V", &verdict)
        .spawn()
        .expect("second exec");
    std::thread::sleep(Duration::from_millis(LEASE_MS / 2));
    assert!(!verdict.exists(), "the slot was given twice");

    proxy.freeze();
    let deadline = Instant::now() + Duration::from_millis(LEASE_MS + 5000);
    while !verdict.exists() {
        assert!(
            Instant::now() < deadline,
            "the second exec never got the slot"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    let seen = std::fs::read_to_string(&verdict).expect("verdict");
    let still = running(sleep_pid);
    // SAFETY: kill(2) on the sleep this test's command started.
    unsafe { libc::kill(sleep_pid, libc::SIGKILL) };
    assert_eq!(
        seen.trim(),
        "clean",
        "the next holder started while the first one's leftover ran"
    );
    assert!(!still, "the leftover outlived its slot");
    first.wait().expect("reap first");
    let mut err = String::new();
    first
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut err)
        .expect("stderr");
    assert!(err.contains("lease was lost"), "{err}");
    second.wait().expect("reap second");
}

#[test]
fn a_kill_grace_longer_than_the_safety_margin_is_refused() {
    let Some(url) = dbslots_testkit::shared_redis() else {
        return;
    };
    let addr = format!(
        "{url}?pool=grace-{}-{}&lease_ms=3000",
        std::process::id(),
        wall_nanos()
    );
    let out = dbslots()
        .args(["exec", "--pool", &addr, "--capacity", "1"])
        .args(["--kill-after", "1.5", "--", "true"])
        .output()
        .expect("run");
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("safety margin") && err.contains("1.00"),
        "{err}"
    );
}

#[test]
fn children_of_exec_and_spawn_get_an_address_that_authenticates_and_no_output_shows_it() {
    const SECRET: &str = "child-s3cret";
    let Some(server) = dbslots_testkit::private_redis_with(dbslots_testkit::RedisOptions {
        password: Some(SECRET.into()),
        ..Default::default()
    }) else {
        return;
    };
    let name = format!("auth-{}-{}", std::process::id(), wall_nanos());
    let addr = format!(
        "redis://:{SECRET}@127.0.0.1:{}/0?pool={name}&lease_ms=2000",
        server.port()
    );
    // The child opens the pool itself, from DBSLOTS_POOL alone, and shows
    // its own command line, which must not carry the password.
    let child = r#""$DBSLOTS_BIN" status --json --pool "$DBSLOTS_POOL" >/dev/null && "$DBSLOTS_BIN" status --json && tr '\0' ' ' < /proc/$$/cmdline"#;
    let exec = dbslots()
        .env("DBSLOTS_POOL", &addr)
        .env("DBSLOTS_BIN", env!("CARGO_BIN_EXE_dbslots"))
        .args(["exec", "--capacity", "2", "--", "sh", "-c", child])
        .output()
        .expect("exec");
    let spawn = dbslots()
        .env("DBSLOTS_POOL", &addr)
        .env("DBSLOTS_BIN", env!("CARGO_BIN_EXE_dbslots"))
        .args([
            "spawn",
            "--workers",
            "2",
            "--capacity",
            "2",
            "--",
            "sh",
            "-c",
            child,
        ])
        .output()
        .expect("spawn");
    for out in [exec, spawn] {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("\"backend\""),
            "the child read the pool: {text}"
        );
        assert!(!text.contains(SECRET), "{text}");
    }
}
