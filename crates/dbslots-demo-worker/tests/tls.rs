//! The demo worker against a server that requires TLS
//! (`require_secure_transport=ON`, certificates made at test time): each of
//! its connecting paths (`prepare`, `work` through a connector, `work
//! --no-slots`, `report`) with `ssl-mode=VERIFY_CA&ssl-ca=...`, and a wrong
//! CA refused in one line without the password.

use std::process::{Command, Output};

use dbslots_testkit::{MysqlOptions, make_certificates, private_mysql};

fn worker() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbslots-demo-worker"));
    for var in ["DBSLOTS_POOL", "DBSLOTS_SLOT", "DBSLOTS_WORKER_INDEX"] {
        cmd.env_remove(var);
    }
    cmd
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("the demo worker runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// The JSON of the worker's `DEMO-RESULT` line.
fn result_of(stdout: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("DEMO-RESULT "))
        .unwrap_or_else(|| panic!("no DEMO-RESULT line: {stdout}"));
    serde_json::from_str(line).expect("JSON")
}

#[test]
fn every_path_of_the_demo_worker_connects_with_verify_ca_to_a_server_that_requires_tls() {
    let Some(server) = private_mysql(MysqlOptions {
        require_secure_transport: true,
        ..Default::default()
    }) else {
        return;
    };
    let ca = server.tls().expect("certificates").ca.display().to_string();
    // The certificate names localhost, the URLs 127.0.0.1: VERIFY_CA
    // checks the chain only.
    let verify_ca = |url: String| format!("{url}&ssl-mode=VERIFY_CA&ssl-ca={ca}");
    let admin_url = verify_ca(server.admin_url());
    let user_url = verify_ca(server.user_url());

    let (out, stdout, stderr) = run(worker().args([
        "prepare",
        "--admin-url",
        &admin_url,
        "--url",
        &user_url,
        "--workers",
        "2",
        "--rows-per-worker",
        "3",
    ]));
    assert!(out.status.success(), "prepare: {stderr}");
    let prepared: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(prepared["rows"], 6, "{prepared}");

    // Worker 0 takes its slot through the connector (DBSLOTS_POOL).
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pool = dir.path().join("pool");
    let _pool = dbslots_core::Pool::open(&pool, dbslots_core::PoolOptions::new().capacity(2))
        .expect("the pool opens");
    let (out, stdout, stderr) = run(worker()
        .args(["work", "--hold-ms", "0", "--url", &user_url])
        .env("DBSLOTS_WORKER_INDEX", "0")
        .env("DBSLOTS_POOL", &pool));
    assert!(out.status.success(), "work through the connector: {stderr}");
    let r = result_of(&stdout);
    assert_eq!(
        (r["path"].as_str(), r["ok"].as_bool()),
        (Some("connector"), Some(true)),
        "{r}"
    );
    assert_eq!(r["rows"], 3, "{r}");

    // Worker 1 connects directly, with the reference's retries.
    let (out, stdout, stderr) = run(worker()
        .args(["work", "--hold-ms", "0", "--no-slots", "--url", &user_url])
        .env("DBSLOTS_WORKER_INDEX", "1"));
    assert!(out.status.success(), "work --no-slots: {stderr}");
    let r = result_of(&stdout);
    assert_eq!(
        (r["path"].as_str(), r["ok"].as_bool()),
        (Some("no-slots"), Some(true)),
        "{r}"
    );
    assert_eq!(r["rows"], 3, "{r}");
    assert_eq!(
        r["refusals"],
        serde_json::json!({}),
        "no failed attempt: {r}"
    );

    let (out, stdout, stderr) = run(worker().args(["report", "--admin-url", &admin_url]));
    assert!(out.status.success(), "report: {stderr}");
    assert!(
        !stdout.contains(dbslots_testkit::ADMIN_PASSWORD),
        "{stdout}"
    );

    // A CA that did not sign the server's certificate: refused at the first
    // attempt, in one line, naming what to change, without the password.
    let other = tempfile::tempdir().expect("a temporary directory");
    let wrong = make_certificates(other.path(), "localhost").expect("certificates");
    let wrong_url = format!(
        "{}&ssl-mode=VERIFY_CA&ssl-ca={}",
        server.user_url(),
        wrong.ca.display()
    );
    let (out, stdout, stderr) = run(worker()
        .args(["work", "--hold-ms", "0", "--url", &wrong_url])
        .env("DBSLOTS_WORKER_INDEX", "0")
        .env("DBSLOTS_POOL", &pool));
    assert!(!out.status.success(), "{stdout}");
    let r = result_of(&stdout);
    assert_eq!(r["ok"], false, "{r}");
    let error = r["error"].as_str().expect("the reason");
    assert!(error.contains("not signed by a trusted CA"), "{error}");
    assert!(
        error.contains("ssl-ca=PATH"),
        "says what to change: {error}"
    );
    for text in [&stdout, &stderr] {
        assert!(!text.contains(dbslots_testkit::PASSWORD), "{text}");
        assert!(!text.contains("panicked"), "{text}");
    }
}
