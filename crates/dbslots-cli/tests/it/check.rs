//! `--check` of `dbslots connections` and `dbslots status` as a monitoring
//! system runs them: the exit status (0 OK, 1 WARNING, 2 CRITICAL, 3
//! UNKNOWN) and the one line it shows, against a private server with
//! `max_connections` 20 and against pools with real holders and waiters.

use std::process::Command;
use std::time::{Duration, Instant};

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use dbslots_testkit::url_as;

use crate::support::{BusyPool, dbslots, runtime};

const LIMITED: &str = "lim10";
const LIMITED_PASSWORD: &str = "dbslots-lim10-pw";

/// Runs `cmd`; the exit status, stdout, and how long it took.
fn check(cmd: &mut Command) -> (i32, String, Duration) {
    let started = Instant::now();
    let out = cmd.output().expect("dbslots runs");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = out.status.code().expect("dbslots exits, not killed");
    assert_eq!(
        stdout.lines().count(),
        1,
        "a check prints exactly one line: {stdout:?}, stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Shown with --nocapture: what a monitoring system would show.
    eprintln!("exit {code} after {took:.1?}: {}", stdout.trim_end());
    (code, stdout.trim_end().to_string(), took)
}

fn check_server(url: &str, extra: &[&str]) -> (i32, String, Duration) {
    check(
        dbslots()
            .args(["connections", "--check", "--url", url])
            .args(extra),
    )
}

async fn open(url: &str, n: usize) -> Vec<Conn> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn::from_url(url).await.expect("the account connects"));
    }
    conns
}

async fn close(conns: Vec<Conn>) {
    for c in conns {
        c.disconnect().await.expect("disconnect");
    }
}

/// Waits until the server counts exactly `n` connections besides the
/// admin's own, both in its processlist and in `Threads_connected` (what
/// the check reads): a closed connection, the previous check's too, is
/// counted out a moment later, and not by both at once.
async fn settle(admin: &mut Conn, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed: u64 = admin
            .query_first("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND <> 'Daemon' AND USER NOT IN ('system user', 'event_scheduler')")
            .await
            .expect("the admin reads the processlist")
            .expect("a count");
        let status: Option<(String, u64)> = admin
            .query_first("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
            .await
            .expect("the admin reads the status");
        let counted = status.expect("Threads_connected").1;
        if listed == n + 1 && counted == n + 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server still lists {listed} and counts {counted} connections, expected {}",
            n + 1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `check_server` while the test holds `held` connections besides the
/// admin's: tried again (up to 3 times, after the server counts exactly
/// those again) when the server counted more at the moment of the check.
/// Some other test's client may knock at this private server's port,
/// which was free a moment ago; the server counts it while it is turned
/// away, and the check rightly reports it.
fn check_steady(
    rt: &tokio::runtime::Runtime,
    admin: &mut Conn,
    held: u64,
    url: &str,
    extra: &[&str],
) -> (i32, String) {
    let expected = format!("server {} of max_connections", held + 1);
    for _ in 0..3 {
        rt.block_on(settle(admin, held));
        let (code, line, _) = check_server(url, extra);
        if line.contains(&expected) {
            return (code, line);
        }
        eprintln!("counted a connection besides the test's; checking again: {line}");
    }
    panic!("the check never counted {expected}");
}

/// Opens `n` connections of `url` and waits until the server counts them
/// (and nothing else but the admin).
fn hold(rt: &tokio::runtime::Runtime, admin: &mut Conn, url: &str, n: usize) -> Vec<Conn> {
    rt.block_on(async {
        settle(admin, 0).await;
        let conns = open(url, n).await;
        settle(admin, n as u64).await;
        conns
    })
}

#[test]
fn check_judges_every_limit_of_a_server_with_20_connections() {
    let Some(server) = dbslots_testkit::private_mysql(dbslots_testkit::MysqlOptions {
        max_connections: Some(20),
        ..Default::default()
    }) else {
        return;
    };
    let admin_url = server.admin_url();
    let user_url = server.user_url();
    let limited_url = url_as(&admin_url, LIMITED, LIMITED_PASSWORD);
    let rt = runtime();
    let mut admin = rt.block_on(async {
        let mut admin = Conn::from_url(&admin_url).await.expect("the admin connects");
        for sql in [
            format!(
                "CREATE USER '{LIMITED}'@'%' IDENTIFIED BY '{LIMITED_PASSWORD}' WITH MAX_USER_CONNECTIONS 10"
            ),
            format!(
                "GRANT SELECT ON `{}`.* TO '{LIMITED}'@'%'",
                dbslots_testkit::DATABASE
            ),
        ] {
            admin.query_drop(sql).await.expect("the admin creates the account");
        }
        admin
    });
    // The admin's connection is open throughout: the check's own
    // connection is the one it leaves out, not this one.
    let held = |admin: &mut Conn, url: &str, n: usize| hold(&rt, admin, url, n);

    // 5, 13 and 18 of 20 (one more is the admin's): OK, WARNING, CRITICAL.
    let conns = held(&mut admin, &user_url, 4);
    let (code, line) = check_steady(&rt, &mut admin, 4, &admin_url, &[]);
    assert_eq!(code, 0, "{line}");
    assert!(
        line.starts_with("OK: server 5 of max_connections 20 (25%)"),
        "{line}"
    );
    assert!(line.contains(" | 'connections'=5;12;17;0;20"), "{line}");
    assert!(
        line.contains("busiest account dbslots with 4 connections, 4 sleeping"),
        "{line}"
    );
    assert!(!line.contains(dbslots_testkit::ADMIN_PASSWORD), "{line}");
    rt.block_on(close(conns));

    let conns = held(&mut admin, &user_url, 12);
    let thresholds = ["--warn", "60", "--crit", "85"];
    let (code, line) = check_steady(&rt, &mut admin, 12, &admin_url, &thresholds);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with("WARNING: server 13 of max_connections 20 (65%), over 60%"),
        "{line}"
    );
    rt.block_on(close(conns));

    let conns = held(&mut admin, &user_url, 17);
    let (code, line) = check_steady(&rt, &mut admin, 17, &admin_url, &[]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("CRITICAL: server 18 of max_connections 20 (90%), over 85%"),
        "{line}"
    );
    assert!(line.contains("'connections'=18;12;17;0;20"), "{line}");
    // Thresholds are the operator's: at 95 % critical, 18 of 20 only warns.
    let (code, line, _) = check_server(&admin_url, &["--crit", "95"]);
    assert_eq!(code, 1, "{line}");
    rt.block_on(close(conns));

    // 9 of the limited account's 10: CRITICAL although the server is at 50 %.
    let conns = held(&mut admin, &limited_url, 9);
    let (code, line) = check_steady(&rt, &mut admin, 9, &admin_url, &[]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with(&format!(
            "CRITICAL: account {LIMITED} 9 of its MAX_USER_CONNECTIONS 10 (90%), over 85%"
        )),
        "{line}"
    );
    assert!(
        line.contains("server 10 of max_connections 20 (50%)"),
        "{line}"
    );
    assert!(
        line.contains(&format!("'account {LIMITED}'=9;6;8;0;10")),
        "{line}"
    );
    // The account itself gets in with its tenth connection and sees its own.
    let (code, line, _) = check_server(&limited_url, &[]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.contains(&format!(
            "account {LIMITED} 9 of its MAX_USER_CONNECTIONS 10"
        )),
        "{line}"
    );
    assert!(!line.contains(LIMITED_PASSWORD), "{line}");
    // With all 10 taken the monitor is refused: UNKNOWN, and how to get in.
    // (Once the server has counted out the previous check's connection.)
    rt.block_on(settle(&mut admin, 9));
    let extra = rt.block_on(open(&limited_url, 1));
    let (code, line, took) = check_server(&limited_url, &[]);
    assert_eq!(code, 3, "{line}");
    assert!(
        line.starts_with(
            "UNKNOWN: cannot measure: the server refused the monitor's own connection"
        ) && line.contains("error 1226")
            && line.contains("connect as another account"),
        "{line}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    rt.block_on(close(extra));
    rt.block_on(close(conns));

    // A leak: 6 sleeping connections of one account with --max-idle-count 5.
    let conns = held(&mut admin, &user_url, 6);
    let (code, line, _) = check_server(&admin_url, &["--max-idle-count", "5"]);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with(
            "WARNING: account dbslots has 6 sleeping connections (more than 5), the oldest idle "
        ),
        "{line}"
    );
    let (code, line, _) = check_server(&admin_url, &["--max-idle-count", "6"]);
    assert_eq!(code, 0, "{line}");
    // Idle longer than a second: the server counts whole seconds.
    std::thread::sleep(Duration::from_millis(2100));
    let (code, line, _) = check_server(&admin_url, &["--max-idle", "1"]);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains(
            "account dbslots has 6 connections idle longer than 1s (6 sleeping), the oldest idle "
        ),
        "{line}"
    );
    assert!(line.contains("'oldest_idle'="), "{line}");
    rt.block_on(close(conns));

    rt.block_on(async {
        admin
            .query_drop(format!("DROP USER '{LIMITED}'@'%'"))
            .await
            .expect("drop the account");
        admin.disconnect().await.expect("disconnect");
    });
}

/// Sends `signal` to the process in `pid_file`.
fn signal(pid_file: &std::path::Path, signal: libc::c_int) {
    let pid: libc::pid_t = std::fs::read_to_string(pid_file)
        .expect("the server's pid file")
        .trim()
        .parse()
        .expect("a pid");
    // SAFETY: kill(2) on the test's own server process.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid}");
}

/// Resumes a frozen server however the test ends.
struct Resume(std::path::PathBuf);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(&self.0, libc::SIGCONT);
    }
}

#[test]
fn check_counts_the_global_user_limit_and_is_unknown_once_the_server_is_unreachable() {
    let Some(server) = dbslots_testkit::private_mysql(dbslots_testkit::MysqlOptions {
        extra_args: vec!["--max-user-connections=10".into()],
        ..Default::default()
    }) else {
        return;
    };
    let url = server.admin_url();

    // The global max_user_connections is a limit of its own for every
    // account without one: 7 of 10 warns at 5 % of the server.
    let rt = runtime();
    let mut admin = rt
        .block_on(Conn::from_url(&url))
        .expect("the admin connects");
    let conns = hold(&rt, &mut admin, &server.user_url(), 7);
    let (code, line, _) = check_server(&url, &[]);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with(
            "WARNING: account dbslots 7 of max_user_connections 10 (70%), over 60%: it is about to be refused with 1203"
        ),
        "{line}"
    );
    assert!(
        line.contains("server 8 of max_connections 151 (5%)"),
        "{line}"
    );
    // The account's thresholds in the perfdata: over 6 warns, over 8 is
    // critical.
    assert!(line.contains("'account dbslots'=7;6;8;0;10"), "{line}");
    rt.block_on(close(conns));
    rt.block_on(admin.disconnect()).expect("disconnect");
    // Frozen (SIGSTOP): the connection is accepted but nothing answers.
    if let Some(dir) = server.data_dir() {
        let pid_file = dir.join("mysqld.pid");
        signal(&pid_file, libc::SIGSTOP);
        let resume = Resume(pid_file);
        let (code, line, took) = check_server(&url, &["--timeout", "2"]);
        drop(resume);
        assert_eq!(code, 3, "{line}");
        assert!(
            line.starts_with("UNKNOWN: cannot measure: mysql://dbslots_admin:***@127.0.0.1:")
                && line.contains("did not answer within 2s"),
            "{line}"
        );
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
    // Stopped: refused at once, and the line says what to do.
    server.stop().expect("the server stops");
    let (code, line, took) = check_server(&url, &[]);
    assert_eq!(code, 3, "{line}");
    assert!(
        line.starts_with("UNKNOWN: cannot measure: cannot connect to mysql://dbslots_admin:***@")
            && line.contains("error 2003")
            && line.contains("what to do: check that the server runs"),
        "{line}"
    );
    assert!(!line.contains(dbslots_testkit::ADMIN_PASSWORD), "{line}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // A usage error in check mode is UNKNOWN too, never WARNING/CRITICAL.
    let (code, line, _) = check_server(&url, &["--warn", "90", "--crit", "80"]);
    assert_eq!(code, 3, "{line}");
    assert!(line.contains("--warn 90 is above --crit 80"), "{line}");
    let (code, line, _) = check_server(&url, &["--warn", "lots"]);
    assert_eq!(code, 3, "{line}");
    assert!(line.starts_with("UNKNOWN: invalid command line"), "{line}");
}

#[test]
fn pool_check_warns_when_waiters_pile_up_and_is_critical_when_they_wait_too_long() {
    let pool = BusyPool::start(2, 3);
    let holders = pool.holder_pids();
    let waiters = pool.waiter_pids();
    let status = |extra: &[&str]| {
        check(
            dbslots()
                .args(["status", "--check", "--pool", &pool.path])
                .args(extra),
        )
    };

    // More waiters than slots (the default bound) warn and name the oldest
    // holder: the one that took slot 0 first.
    let (code, line, _) = status(&[]);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with(&format!(
            "WARNING: pool {}: 3 waiting (more than 2): waiters pile up",
            pool.path
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "oldest holder pid {} has held slot 0 for ",
            holders[0]
        )),
        "{line}"
    );
    assert!(line.contains("'waiting'=3;2;;0"), "{line}");
    let (code, line, _) = status(&["--warn-waiting", "3"]);
    assert_eq!(code, 0, "{line}");
    assert!(line.contains("2 of 2 slots in use, 3 waiting"), "{line}");

    // The oldest waiter past --crit-wait: CRITICAL, naming it.
    std::thread::sleep(Duration::from_millis(1200));
    let (code, line, _) = status(&["--warn-waiting", "3", "--crit-wait", "1"]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.contains(&format!(
            "the oldest waiter (pid {}) has waited ",
            waiters[0]
        )) && line.contains("(more than 1s)"),
        "{line}"
    );
    assert!(line.contains("'oldest_wait'="), "{line}");
}

#[test]
fn pool_check_of_a_missing_pool_is_unknown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("none").display().to_string();
    let (code, line, _) = check(dbslots().args(["status", "--check", "--pool", &path]));
    assert_eq!(code, 3, "{line}");
    assert!(
        line.starts_with(&format!(
            "UNKNOWN: cannot read the pool: pool {path} does not exist"
        )),
        "{line}"
    );
}

/// A `dbslots` process in its own process group, killed with it on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's process group.
        unsafe {
            libc::kill(-(self.0.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

#[test]
fn pool_check_of_a_redis_pool_names_hosts() {
    use std::os::unix::process::CommandExt;
    let Some(url) = dbslots_testkit::shared_redis() else {
        return;
    };
    let pool = format!("{url}?pool=check-{}", std::process::id());
    let start = |host: &str, command: &[&str]| {
        Killed(
            dbslots()
                .args(["exec", "--pool", &pool, "--capacity", "1", "--"])
                .args(command)
                .env("DBSLOTS_HOST", host)
                .process_group(0)
                .stdin(std::process::Stdio::null())
                .spawn()
                .expect("spawn dbslots exec"),
        )
    };
    let _holder = start("web-1", &["sleep", "60"]);
    crate::support::wait_for("the holder", Duration::from_secs(20), || {
        (crate::support::status(&pool)?["active"] == 1).then_some(())
    });
    let mut waiters = Vec::new();
    for i in 0..2 {
        waiters.push(start("web-2", &["true"]));
        crate::support::wait_for("a waiter", Duration::from_secs(20), || {
            (crate::support::status(&pool)?["waiting"] == i + 1).then_some(())
        });
    }
    let (code, line, _) =
        check(dbslots().args(["status", "--check", "--pool", &pool, "--warn-waiting", "1"]));
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("2 waiting (more than 1)"), "{line}");
    assert!(line.contains(" on web-1 has held slot 0 for "), "{line}");
    // The password-free address, never more.
    assert!(line.starts_with("WARNING: pool redis://"), "{line}");
    std::thread::sleep(Duration::from_millis(1200));
    let (code, line, _) =
        check(dbslots().args(["status", "--check", "--pool", &pool, "--crit-wait", "1"]));
    assert_eq!(code, 2, "{line}");
    assert!(
        line.contains(&format!(
            "the oldest waiter (pid {} on web-2) has waited ",
            waiters[0].0.id()
        )),
        "{line}"
    );
}
