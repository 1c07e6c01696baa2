//! No password in any output: errors, JSON, HTTP bodies, metric labels and
//! the joblog, whatever the URL looks like (MySQL URLs and Redis pools).

use crate::support::{Serve, dbslots, run};

/// Passwords no URL parser takes as they are written.
const AWKWARD: [&str; 5] = [
    "Zse/cret",
    "Zse?cret",
    "Zse#cr@et",
    "Zse cr:et",
    "Zse%2Fcret",
];

#[test]
fn awkward_passwords_never_reach_an_error_message() {
    for pw in AWKWARD {
        let url = format!("mysql://app:{pw}@127.0.0.1:1/app?ssl-mode=REQUIRED");
        for args in [
            vec!["connections", "--url", &url],
            vec!["connections", "--json", "--url", &url],
            vec!["import", "status", "--url", &url],
        ] {
            check(&args);
        }
        // Redis pools: the password in the user information, or in `pass=`
        // of a Unix socket's URL.
        let tcp = format!("redis://:{pw}@127.0.0.1:1/0?pool=p");
        let unix = format!("redis+unix:///nonexistent/redis.sock?pass={pw}&pool=p");
        for pool in [&tcp, &unix] {
            check(&["status", "--pool", pool]);
            check(&["status", "--json", "--pool", pool]);
        }
    }
}

#[test]
fn help_never_shows_the_pool_or_database_url_from_the_environment() {
    // `exec` and `spawn` pass DBSLOTS_POOL to every worker, so anything in
    // the fleet that prints our help would otherwise print the password.
    let pool = "redis://app:Zse-pool-pw@127.0.0.1:1/0?pool=p";
    let db = "mysql://app:Zse-db-pw@127.0.0.1:1/app";
    for args in [
        &["exec", "--help"][..],
        &["spawn", "--help"],
        &["import", "run", "--help"],
        &["import", "enqueue", "--help"],
        &["import", "status", "--help"],
        &["status", "--help"],
        &["resize", "--help"],
        &["connections", "--help"],
        &["serve", "--help"],
        &["watch", "--help"],
        &["gate", "--help"],
        &["man"],
    ] {
        let (out, stdout, stderr) = run(dbslots()
            .args(args)
            .env("DBSLOTS_POOL", pool)
            .env("DATABASE_URL", db));
        assert!(out.status.success(), "{args:?}: {stderr}");
        for text in [&stdout, &stderr] {
            assert!(!text.contains("Zse"), "{args:?}: {text}");
        }
    }
}

/// Runs `args`, expecting a failure whose output holds no piece of the
/// awkward passwords.
fn check(args: &[&str]) {
    // Every log line too.
    let (out, stdout, stderr) = run(dbslots().args(args).env("RUST_LOG", "trace"));
    assert!(!out.status.success(), "{args:?}");
    for text in [&stdout, &stderr] {
        assert!(!text.contains("Zse"), "not even a piece: {args:?}: {text}");
        assert!(!text.contains("panicked"), "{text}");
    }
}

#[test]
fn the_joblog_and_the_summary_mask_passwords_in_commands() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let joblog = dir.path().join("joblog.tsv");
    let (out, stdout, stderr) = run(dbslots()
        .env("RUST_LOG", "trace")
        .args(["spawn", "--workers", "2", "--capacity", "2", "--pool"])
        .arg(dir.path().join("pool"))
        .arg("--joblog")
        .arg(&joblog)
        .args([
            "--",
            "sh",
            "-c",
            "exit 3",
            "sh",
            "--password=Zsecret1",
            "-pZsecret2",
            "--password",
            "Zsecret3",
            "--url=mysql://app:Zse/cret4@db/x",
            "MYSQL_PWD=Zsecret5",
        ]));
    assert!(!out.status.success());
    let log = std::fs::read_to_string(&joblog).expect("the joblog");
    for text in [&log, &stdout, &stderr] {
        assert!(!text.contains("Zse"), "{text}");
    }
    assert!(
        log.contains("'--password=***' '-p***' --password '***'"),
        "{log}"
    );
    assert!(log.contains("mysql://app:***@db/x"), "{log}");
}

#[test]
fn serve_shows_no_password_in_bodies_or_metric_labels() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pool = dir.path().join("pool");
    let (out, _, stderr) = run(dbslots()
        .args(["exec", "--capacity", "2", "--pool"])
        .arg(&pool)
        .args(["--", "true"]));
    assert!(out.status.success(), "{stderr}");
    // A server that is not there: the document and the metrics still name
    // the URL.
    let url = "mysql://app:Zse%2Fcr%40et@127.0.0.1:1/app";
    let serve = Serve::start(&["--pool", pool.to_str().expect("UTF-8"), "--url", url]);
    for path in ["/api/server", "/metrics", "/api/pool-stats", "/"] {
        let body = serve.get(path).body;
        assert!(!body.contains("Zse"), "{path}: {body}");
    }
    let (_, stderr) = serve.stop();
    assert!(!stderr.contains("Zse"), "{stderr}");
    // Written raw, the same password makes a URL that does not parse:
    // serve refuses it at start, without showing it.
    let (out, _, stderr) = run(dbslots()
        .args(["serve", "--listen", "127.0.0.1:0", "--pool"])
        .arg(&pool)
        .args(["--url", "mysql://app:Zse/cr@et@127.0.0.1:1/app"]));
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("invalid MySQL URL"), "{stderr}");
    assert!(!stderr.contains("Zse"), "{stderr}");
}

#[test]
fn a_running_dbslots_shows_other_users_no_password_in_its_command_line() {
    // Anyone on the machine can read a process's arguments (`ps`,
    // `/proc/PID/cmdline`). The command given to `exec` gets its arguments
    // untouched: it is the one that needs them.
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("pool");
    let seen = dir.path().join("seen");
    let urls: Vec<String> = AWKWARD
        .iter()
        .map(|pw| format!("mysql://app:{pw}@127.0.0.1:1/app"))
        .chain(["redis://:Zse-redis@127.0.0.1:1/0?pool=p".to_string()])
        .collect();
    let mut child = dbslots()
        .args(["exec", "--capacity", "1", "--pool"])
        .arg(&pool)
        .args([
            "--",
            "sh",
            "-c",
            "printf '%s\\n' \"$@\" > \"$0.tmp\" && mv \"$0.tmp\" \"$0\" && sleep 30",
        ])
        .arg(&seen)
        .args(&urls)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("dbslots exec runs");
    crate::support::wait_for(
        "the command to start",
        std::time::Duration::from_secs(10),
        || seen.exists().then_some(()),
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).expect("cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let received = std::fs::read_to_string(&seen).expect("the command's arguments");
    let _ = child.kill();
    let _ = child.wait();
    assert!(!cmdline.contains("Zse"), "{cmdline}");
    // Same length, so nothing else moved.
    assert!(
        cmdline.contains("mysql://app:xxxxxxxx@127.0.0.1:1/app "),
        "{cmdline}"
    );
    assert!(
        cmdline.contains("redis://:xxxxxxxxx@127.0.0.1:1/0?pool=p"),
        "{cmdline}"
    );
    assert_eq!(
        received.lines().collect::<Vec<_>>(),
        urls,
        "exec's command got its arguments as given"
    );
}
