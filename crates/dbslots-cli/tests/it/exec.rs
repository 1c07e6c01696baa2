//! `dbslots exec` and `dbslots status` as a user runs them.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{Launch, dbslots};

fn status_json(pool: &str) -> serde_json::Value {
    let out = dbslots()
        .args(["status", "--json", "--pool", pool])
        .output()
        .expect("run status");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

/// A `dbslots exec -- sleep 30` that holds one slot of a pool of `capacity`
/// (created by it), returned once the slot is taken.
fn holding_process(pool: &str, capacity: u32) -> std::process::Child {
    let holder = dbslots()
        .args(["exec", "--pool", pool, "--capacity", &capacity.to_string()])
        .args(["--", "sleep", "30"])
        .spawn()
        .expect("holder");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new(pool).join("pool.json").exists() || status_json(pool)["active"] != 1
    {
        assert!(Instant::now() < deadline, "holder never got its slot");
        std::thread::sleep(Duration::from_millis(20));
    }
    holder
}

/// Waits (up to 10 s) until the command under test has created `marker`.
fn wait_for_file(marker: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "command never started");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGTERM to a `dbslots exec` and checks that its command died of
/// it (and so `dbslots` ends by the same signal, as a shell expects).
fn assert_sigterm_reaches_the_command(mut exec: std::process::Child) {
    use std::os::unix::process::ExitStatusExt;
    unsafe { libc::kill(exec.id() as i32, libc::SIGTERM) };
    let status = exec.wait().expect("reap");
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "the command died of the forwarded SIGTERM: {status:?}"
    );
}

/// A `dbslots exec` on a new pool `p` of capacity 1 whose command (a
/// `sleep 30`) has started.
fn sleeping_command(dir: &std::path::Path, p: &str) -> std::process::Child {
    let marker = dir.join("started");
    let exec = dbslots()
        .args(["exec", "--pool", p, "--capacity", "1", "--", "sh", "-c"])
        .arg(format!("touch {}; exec sleep 30", marker.display()))
        .spawn()
        .expect("exec");
    wait_for_file(&marker);
    exec
}

fn pool() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("pool").display().to_string();
    (dir, p)
}

#[test]
fn exec_runs_the_command_with_its_slot_and_returns_its_status() {
    let (_d, p) = pool();
    let out = dbslots()
        .args(["exec", "--pool", &p, "--capacity", "3", "--"])
        .args(["sh", "-c", "echo \"$DBSLOTS_SLOT $DBSLOTS_POOL\"; exit 7"])
        .output()
        .expect("run exec");
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let (slot, pool_env) = text.trim().split_once(' ').expect("two words");
    assert!(slot.parse::<u32>().expect("slot number") < 3);
    assert_eq!(pool_env, p);
    // Released afterwards.
    assert_eq!(status_json(&p)["active"], 0);
}

#[test]
fn exec_reports_signals_and_missing_commands_like_a_shell() {
    let (_d, p) = pool();
    let out = dbslots()
        .args([
            "exec",
            "--pool",
            &p,
            "--capacity",
            "1",
            "--",
            "sh",
            "-c",
            "kill -TERM $$",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(128 + 15));
    let out = dbslots()
        .args(["exec", "--pool", &p, "--", "/no/such/program"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/program"));
}

#[test]
fn exec_times_out_with_status_75_and_one_line_naming_the_counts() {
    let (_d, p) = pool();
    let mut holder = holding_process(&p, 1);
    let start = Instant::now();
    let out = dbslots()
        .args(["exec", "--pool", &p, "--timeout", "0.3", "--", "true"])
        .output()
        .expect("run");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("capacity 1") && err.contains("active 1") && err.contains("waiting 1"),
        "{err}"
    );
    holder.kill().expect("kill");
    holder.wait().expect("reap");
}

#[test]
fn killing_dbslots_does_not_free_the_slot_while_the_command_runs() {
    let (dir, p) = pool();
    let marker = dir.path().join("child.pid");
    let mut exec = dbslots()
        .args(["exec", "--pool", &p, "--capacity", "1", "--", "sh", "-c"])
        .arg(format!("echo $$ > {}; exec sleep 30", marker.display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("exec");
    let deadline = Instant::now() + Duration::from_secs(10);
    let child_pid: i32 = loop {
        if let Ok(text) = std::fs::read_to_string(&marker)
            && let Ok(pid) = text.trim().parse()
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "command never started");
        std::thread::sleep(Duration::from_millis(10));
    };
    // dbslots names the command as the holder once it started it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_json(&p)["holders"][0]["pid"] != child_pid {
        assert!(
            Instant::now() < deadline,
            "the command never became the holder"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    exec.kill().expect("SIGKILL dbslots");
    exec.wait().expect("reap dbslots");
    let s = status_json(&p);
    assert_eq!(
        s["active"], 1,
        "the command still runs, so its slot is held: {s}"
    );
    assert_eq!(
        s["holders"][0]["pid"], child_pid,
        "the holder is the command"
    );
    let timed_out = dbslots()
        .args(["exec", "--pool", &p, "--timeout", "0.1", "--", "true"])
        .status()
        .expect("run");
    assert_eq!(timed_out.code(), Some(75));
    // When the command ends, the slot comes back by itself.
    unsafe { libc::kill(child_pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_json(&p)["active"] != 0 {
        assert!(Instant::now() < deadline, "slot never came back");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn status_shows_holders_as_a_table_and_as_json() {
    let (_d, p) = pool();
    let mut holder = holding_process(&p, 4);
    let s = status_json(&p);
    assert_eq!(s["capacity"], 4);
    assert_eq!(s["waiting"], 0);
    assert_eq!(s["peak"], 1);
    let holders = s["holders"].as_array().expect("holders array");
    assert_eq!(holders.len(), 1);
    assert!(holders[0]["slot"].as_u64().expect("slot") < 4);
    assert!(holders[0]["pid"].as_u64().is_some());
    let out = dbslots()
        .args(["status", "--pool", &p])
        .output()
        .expect("table");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("1 of 4 in use"), "{table}");
    assert!(table.contains("SLOT") && table.contains("PID"), "{table}");
    holder.kill().expect("kill");
    holder.wait().expect("reap");
}

#[test]
fn the_pool_comes_from_the_environment_and_bad_input_is_explained() {
    let (_d, p) = pool();
    let out = dbslots()
        .env("DBSLOTS_POOL", &p)
        .args(["exec", "--capacity", "2", "--", "true"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(status_json(&p)["capacity"], 2);
    let out = dbslots()
        .args(["status", "--pool", &p, "--capacity", "5"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("capacity 2, not 5"), "{err}");
    let out = dbslots()
        .args(["exec", "--pool", &p, "--timeout", "soon", "--", "true"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a number of seconds"));
    let out = dbslots()
        .args(["status", "--pool", "/nonexistent-dir/pool"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn a_terminated_dbslots_passes_the_signal_to_the_command() {
    let (dir, p) = pool();
    let exec = sleeping_command(dir.path(), &p);
    assert_sigterm_reaches_the_command(exec);
    assert_eq!(status_json(&p)["active"], 0);
}

#[test]
fn a_redis_pool_works_wherever_a_pool_is_accepted() {
    let Some(url) = dbslots_testkit::shared_redis() else {
        return;
    };
    let name = format!("cli-{}-{}", std::process::id(), crate::exec::now_nanos());
    let addr = format!("{url}?pool={name}&lease_ms=1000");
    let out = dbslots()
        .env("DBSLOTS_POOL", &addr)
        .args([
            "exec",
            "--capacity",
            "2",
            "--",
            "sh",
            "-c",
            "echo $DBSLOTS_SLOT",
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .expect("slot")
            < 2
    );
    let s = status_json(&addr);
    assert_eq!(s["backend"], "redis");
    assert_eq!(
        (s["capacity"].as_u64(), s["active"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(s["acquisitions"], 1);
}

pub fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

#[test]
fn a_dbslots_that_had_to_wait_still_passes_signals_to_the_command() {
    // A dbslots that waited may have had helper threads; a SIGTERM for the
    // process must still reach the command, whichever thread takes it.
    let (dir, p) = pool();
    let mut first = holding_process(&p, 1);
    let marker = dir.path().join("started");
    let exec = dbslots()
        .args(["exec", "--pool", &p, "--", "sh", "-c"])
        .arg(format!("touch {}; exec sleep 30", marker.display()))
        .spawn()
        .expect("exec");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_json(&p)["waiting"] != 1 {
        assert!(Instant::now() < deadline, "the second exec never queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SIGTERM (not SIGKILL, which would leave its command holding the slot).
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    first.wait().expect("reap");
    wait_for_file(&marker);
    assert_sigterm_reaches_the_command(exec);
}

#[test]
fn a_zero_timeout_takes_the_slot_of_a_crashed_holder_and_no_timeout_panics() {
    let (_d, p) = pool();
    let mut holder = holding_process(&p, 1);
    // Kill the command holding the slot (and its dbslots) with SIGKILL: the
    // board still says "held", only the lock knows better.
    let pid = status_json(&p)["holders"][0]["pid"]
        .as_u64()
        .expect("holder pid");
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    holder.kill().expect("kill");
    holder.wait().expect("reap");
    let deadline = Instant::now() + Duration::from_secs(10);
    // Gone, or a zombie (its files, the lock's among them, are closed): an
    // orphan is reaped by whatever init the machine has, if any.
    let dead = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    };
    while !dead() {
        assert!(Instant::now() < deadline, "the command never died");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = dbslots()
        .args(["exec", "--pool", &p, "--timeout", "0", "--", "true"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    for huge in ["1e19", "18446744073709551615"] {
        let out = dbslots()
            .args(["exec", "--pool", &p, "--timeout", huge, "--", "true"])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(0), "--timeout {huge}: {out:?}");
    }
}

#[test]
fn the_command_starts_with_no_signal_blocked_or_ignored_and_holds_the_lock_itself() {
    // dbslots catches the signals it forwards and ignores SIGPIPE itself;
    // the command must start as from a shell: nothing blocked, nothing
    // ignored (a blocked SIGTERM would make it unstoppable, an ignored
    // SIGPIPE would make `cmd | head` run on), and the slot's lock open
    // in its own process. (grep and ls read their own /proc entry: a
    // shell's would show the mask it sets while it forks.)
    let (_d, p) = pool();
    let out = dbslots()
        .args(["exec", "--pool", &p, "--capacity", "1", "--"])
        .args(["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"])
        .stdin(Stdio::null())
        .output()
        .expect("run exec");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .to_owned()
    };
    // The standard signals (1-31); the real-time ones above are glibc's.
    let standard =
        |name: &str| u64::from_str_radix(&field(name), 16).expect("hex mask") & 0x7fff_ffff;
    assert_eq!(standard("SigBlk:"), 0, "{text}");
    assert_eq!(standard("SigIgn:"), 0, "{text}");

    let out = dbslots()
        .args(["exec", "--pool", &p, "--", "ls", "-l", "/proc/self/fd"])
        .stdin(Stdio::null())
        .output()
        .expect("run exec");
    let text = String::from_utf8_lossy(&out.stdout);
    let pool_dir = std::fs::canonicalize(&p).expect("pool dir");
    assert!(
        text.contains(&format!("{}/slots/0", pool_dir.display())),
        "the command holds slots/0 open itself: {text}"
    );
}

/// Runs `script` with sh, which starts `dbslots exec --pool POOL -- ARGS`
/// (as `$DBSLOTS`), and returns the output.
fn from_shell(script: &str) -> std::process::Output {
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_dbslots"));
    std::process::Command::new("sh")
        .args(["-c", script])
        .env("DBSLOTS", exe)
        .stdin(Stdio::null())
        .output()
        .expect("run sh")
}

#[test]
fn signals_ignored_by_the_caller_stay_ignored_for_the_command() {
    // `nohup dbslots exec ...`, or `dbslots exec ... &` in a script: the
    // command must not die of the hang-up or the Ctrl-C its caller ignores.
    let (_d, p) = pool();
    let out = from_shell(&format!(
        "trap '' HUP INT; exec \"$DBSLOTS\" exec --pool {p} --capacity 1 -- grep '^SigIgn' /proc/self/status"
    ));
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mask = u64::from_str_radix(text.trim().trim_start_matches("SigIgn:").trim(), 16)
        .expect("a hex mask");
    assert_eq!(mask & 0b11, 0b11, "SIGHUP and SIGINT ignored: {text}");
}

#[test]
fn a_signal_from_the_command_itself_is_not_sent_back_to_it() {
    let (_d, p) = pool();
    // The command signals its parent (dbslots): dbslots must not send it
    // back, or the command would get a signal nobody sent it.
    let out = from_shell(&format!(
        "exec \"$DBSLOTS\" exec --pool {p} --capacity 1 -- sh -c 'trap \"echo echoed\" TERM; kill -TERM $PPID; sleep 0.3; echo done'"
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), "done", "{out:?}");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn a_command_killed_by_the_sigint_dbslots_got_ends_dbslots_by_sigint_too() {
    // bash stops a script's loop at Ctrl-C only if the foreground program
    // died of SIGINT; a plain exit status 130 means "handled, go on".
    use std::os::unix::process::ExitStatusExt;
    let (dir, p) = pool();
    let exec = sleeping_command(dir.path(), &p);
    unsafe { libc::kill(exec.id() as i32, libc::SIGINT) };
    let status = exec.wait_with_output().expect("reap").status;
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
}

#[test]
fn a_script_without_a_shebang_line_runs_with_sh_as_from_a_shell() {
    let (dir, p) = pool();
    let script = dir.path().join("job");
    std::fs::write(&script, "echo \"from the script: $1\"\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = dbslots()
        .args(["exec", "--pool", &p, "--capacity", "1", "--"])
        .arg(&script)
        .arg("hello")
        .output()
        .expect("run exec");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "from the script: hello"
    );
    // Found through PATH too.
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = dbslots()
        .env("PATH", path)
        .args(["exec", "--pool", &p, "--", "job", "again"])
        .output()
        .expect("run exec");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "from the script: again"
    );
}

#[test]
fn a_binary_the_kernel_refuses_is_not_run_as_a_script() {
    // A program for another machine (here: an ELF header and then a line
    // of shell) is refused by the kernel with ENOEXEC. A shell reports
    // "cannot execute binary file" (126); it must not be fed to /bin/sh.
    let (dir, p) = pool();
    let binary = dir.path().join("other-arch");
    let mut bytes = b"\x7fELF\x02\x01\x01".to_vec();
    bytes.extend_from_slice(&[0; 9]);
    bytes.extend_from_slice(b"\necho ran as a script\n");
    std::fs::write(&binary, bytes).expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = dbslots()
        .args(["exec", "--pool", &p, "--capacity", "1", "--"])
        .arg(&binary)
        .output()
        .expect("run exec");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains("ran as a script"), "{stdout}");
    assert_eq!(out.status.code(), Some(126), "{stderr}");
    assert!(stderr.contains("other-arch"), "names the program: {stderr}");
}

/// Waits (up to 10 s) for the pid a command wrote to `file`.
pub(crate) fn pid_in(file: &std::path::Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` runs (a zombie does not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Waits up to `limit` for `pid` to stop running; whether it did. Kills it
/// if it did not, so that no test leaves it behind.
fn ends_within(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while running(pid) {
        if Instant::now() >= deadline {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// A command that starts `sleep 300` in the background (its pid in
/// `$LEFT`) and waits for it.
const WAITS_FOR_A_SLEEP: &str = "sleep 300 & echo $! > \"$LEFT\"; wait";

#[test]
fn a_killed_dbslots_takes_what_its_command_started_on_a_redis_pool_with_it() {
    // The lease dies with dbslots, so must every process of the command's
    // group: the kernel's death signal reaches only the command itself.
    let Some(url) = dbslots_testkit::shared_redis() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let left = dir.path().join("left");
    let addr = format!(
        "{url}?pool=orphans-{}-{}&lease_ms=3000",
        std::process::id(),
        now_nanos()
    );
    let mut exec = dbslots()
        .args(["exec", "--pool", &addr, "--capacity", "1", "--", "sh", "-c"])
        .arg(WAITS_FOR_A_SLEEP)
        .env("LEFT", &left)
        .stdin(Stdio::null())
        .spawn()
        .expect("exec");
    let sleep = pid_in(&left);
    exec.kill().expect("SIGKILL dbslots");
    exec.wait().expect("reap dbslots");
    // Well within the lease (3 s), after which the slot goes on.
    assert!(
        ends_within(sleep, Duration::from_secs(2)),
        "the command's child outlived dbslots"
    );
}

#[test]
fn a_terminated_dbslots_stops_what_its_command_started_too() {
    let (dir, p) = pool();
    let left = dir.path().join("left");
    let mut exec = dbslots()
        .args(["exec", "--pool", &p, "--capacity", "1", "--", "sh", "-c"])
        .arg(WAITS_FOR_A_SLEEP)
        .env("LEFT", &left)
        .stdin(Stdio::null())
        .spawn()
        .expect("exec");
    let sleep = pid_in(&left);
    unsafe { libc::kill(exec.id() as i32, libc::SIGTERM) };
    use std::os::unix::process::ExitStatusExt;
    let status = exec.wait().expect("reap");
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    assert!(
        ends_within(sleep, Duration::from_millis(500)),
        "the command's child outlived the stop"
    );
    assert_eq!(status_json(&p)["active"], 0);
}

#[test]
fn an_interrupted_dbslots_stops_background_jobs_that_ignore_sigint() {
    // A script's background jobs ignore SIGINT (POSIX): once the command
    // died of the interrupt, dbslots stops what it left with SIGTERM
    // rather than wait for it with the slot.
    use std::os::unix::process::ExitStatusExt;
    let (dir, p) = pool();
    let left = dir.path().join("left");
    let exec = dbslots()
        .args(["exec", "--pool", &p, "--capacity", "1", "--", "sh", "-c"])
        .arg(WAITS_FOR_A_SLEEP)
        .env("LEFT", &left)
        .stdin(Stdio::null())
        .spawn()
        .expect("exec");
    let sleep = pid_in(&left);
    unsafe { libc::kill(exec.id() as i32, libc::SIGINT) };
    let status = exec.wait_with_output().expect("reap").status;
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    assert!(
        ends_within(sleep, Duration::from_millis(500)),
        "the background job outlived the interrupt"
    );
}

#[test]
fn exec_keeps_the_slot_until_what_its_command_left_behind_has_ended() {
    // The command exits at once, leaving a 1 s `sleep` in its group that
    // closed every descriptor (the slot's lock too): dbslots holds the
    // slot for it, and ends (with the command's status) when it ends.
    let (dir, p) = pool();
    let left = dir.path().join("left");
    let started = Instant::now();
    let mut exec = dbslots()
        .args(["exec", "--pool", &p, "--capacity", "1", "--", "sh", "-c"])
        .arg(
            "(for fd in 3 4 5 6 7 8 9; do eval \"exec $fd>&-\"; done; exec sleep 1 </dev/null >/dev/null 2>&1) & echo $! > \"$LEFT\"; exit 3",
        )
        .env("LEFT", &left)
        .stdin(Stdio::null())
        .spawn()
        .expect("exec");
    let sleep = pid_in(&left);
    std::thread::sleep(Duration::from_millis(300));
    assert!(running(sleep));
    assert!(
        exec.try_wait().expect("try_wait").is_none(),
        "dbslots ended before the sleep"
    );
    let s = status_json(&p);
    assert_eq!(
        s["active"], 1,
        "the slot was given back while the sleep ran: {s}"
    );
    let timed_out = dbslots()
        .args(["exec", "--pool", &p, "--timeout", "0", "--", "true"])
        .status()
        .expect("run");
    assert_eq!(timed_out.code(), Some(75));
    let status = exec.wait().expect("reap");
    assert_eq!(status.code(), Some(3), "the command's status");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(!running(sleep));
    assert_eq!(status_json(&p)["active"], 0);
}

#[test]
fn a_process_that_left_the_group_keeps_the_slot_as_long_as_it_keeps_the_lock() {
    // `setsid` takes the sleep out of the command's group, so dbslots does
    // not wait for it; but it inherited the slot's lock, and flock keeps a
    // lock while any copy is open: dbslots must not unlock it under it.
    let (dir, p) = pool();
    let left = dir.path().join("left");
    let out = dbslots()
        .args(["exec", "--pool", &p, "--capacity", "1", "--", "sh", "-c"])
        .arg("setsid sleep 1 </dev/null >/dev/null 2>&1 & echo $! > \"$LEFT\"")
        .env("LEFT", &left)
        .stdin(Stdio::null())
        .output()
        .expect("exec");
    assert!(out.status.success(), "{out:?}");
    let sleep = pid_in(&left);
    assert!(running(sleep), "the sleep ended too soon for the test");
    let s = status_json(&p);
    assert_eq!(s["active"], 1, "the lock was taken from the sleep: {s}");
    let timed_out = dbslots()
        .args(["exec", "--pool", &p, "--timeout", "0", "--", "true"])
        .status()
        .expect("run");
    assert_eq!(timed_out.code(), Some(75));
    assert!(ends_within(sleep, Duration::from_secs(5)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_json(&p)["active"] != 0 {
        assert!(Instant::now() < deadline, "the slot never came back");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_daemon_the_command_started_is_reaped_when_it_exits() {
    a_daemon_is_reaped(Launch::Direct);
}

#[test]
fn a_daemon_is_reaped_where_the_session_leader_is_in_another_pid_namespace() {
    a_daemon_is_reaped(Launch::PidNamespace);
}

fn a_daemon_is_reaped(launch: Launch) {
    // The command starts a daemon (`setsid`, from a subshell that exits:
    // the daemon becomes a child of dbslots, the subreaper) that ends
    // while the command still runs: meanwhile it must not stay a zombie.
    let (dir, p) = pool();
    let daemon_file = dir.path().join("daemon");
    let Some((mut exec, exec_pid)) = launch.start(
        dbslots()
            .args(["exec", "--pool", &p, "--capacity", "1", "--", "sh", "-c"])
            .arg(format!(
                "(setsid sh -c 'echo $$ > {f}; sleep 0.2; echo done >> {f}' </dev/null >/dev/null 2>&1 &); sleep 3",
                f = daemon_file.display()
            )),
    ) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(4);
    while !std::fs::read_to_string(&daemon_file).is_ok_and(|s| s.contains("done")) {
        assert!(Instant::now() < deadline, "the daemon never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Time for the daemon to exit and for dbslots to notice.
    std::thread::sleep(Duration::from_millis(1200));
    let zombies: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let mut f = rest.split_whitespace();
            f.next() == Some("Z") && f.next() == Some(exec_pid.to_string().as_str())
        })
        .collect();
    assert!(
        exec.try_wait().unwrap().is_none(),
        "exec ended early, the test measures nothing"
    );
    let status = exec.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        zombies,
        Vec::<String>::new(),
        "exited children never reaped ({launch:?})"
    );
}

/// `resize` changes a pool that exists. Given a path where there is none (a
/// typo, a pool not created yet), it creates nothing, and its advice is not
/// the generic "create it by giving a capacity (--capacity)": the user just
/// gave `--capacity`, and running the same command again fails the same way.
#[test]
fn resize_of_a_missing_pool_creates_nothing_and_says_how_to_create_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("typo").display().to_string();
    let out = dbslots()
        .args(["resize", "--pool", &pool, "--capacity", "3"])
        .output()
        .expect("run resize");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        !std::path::Path::new(&pool).exists(),
        "resize created {pool}"
    );
    assert!(
        stderr.contains(&format!("pool {pool} does not exist"))
            && !stderr.contains("create it by giving a capacity (--capacity)")
            && stderr.contains("`dbslots status --pool POOL --capacity N`"),
        "{stderr}"
    );
}
