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
    let url = "mysql://app:Zse/cr@et@127.0.0.1:1/app";
    let serve = Serve::start(&["--pool", pool.to_str().expect("UTF-8"), "--url", url]);
    for path in ["/api/server", "/metrics", "/api/pool-stats", "/"] {
        let body = serve.get(path).body;
        assert!(!body.contains("Zse"), "{path}: {body}");
    }
    let (_, stderr) = serve.stop();
    assert!(!stderr.contains("Zse"), "{stderr}");
}
