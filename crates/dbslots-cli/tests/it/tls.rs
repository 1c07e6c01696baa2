//! Every command that connects, against a server that requires TLS
//! (`require_secure_transport=ON`, certificates made at test time), with
//! `ssl-mode=VERIFY_CA&ssl-ca=...` (`watch` is tested in `watch.rs`, the
//! demo worker in its own crate, the library paths in dbslots-mysql); and
//! capacity advice that counts the other accounts' connections.

use std::time::Duration;

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::support::{Serve, dbslots, run, runtime};

/// `url` with `params` added to its query.
fn with(url: &str, params: &str) -> String {
    format!("{url}&{params}")
}

/// A plain mysql_async connection over TLS (certificate not checked), for
/// the test's own statements.
async fn admin(url: &str) -> Conn {
    Conn::from_url(with(
        url,
        "require_ssl=true&verify_ca=false&verify_identity=false",
    ))
    .await
    .expect("the admin connects over TLS")
}

#[test]
fn every_command_connects_with_verify_ca_to_a_server_that_requires_tls() {
    let Some((server, ca)) = crate::support::mysql_requiring_tls() else {
        return;
    };
    let verify_ca = |url: &str| with(url, &format!("ssl-mode=VERIFY_CA&ssl-ca={ca}"));
    let user_url = verify_ca(&server.user_url());
    let admin_url = verify_ca(&server.admin_url());
    let rt = runtime();

    // dbslots connections
    let (out, stdout, stderr) = run(dbslots().args(["connections", "--url", &admin_url]));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("max_connections"), "{stdout}");
    assert!(!stdout.contains(dbslots_testkit::ADMIN_PASSWORD));

    // Without TLS the server refuses, and the error says what to change.
    let plain = with(&server.user_url(), "ssl-mode=DISABLED");
    let (out, _, stderr) = run(dbslots().args(["connections", "--url", &plain]));
    assert!(!out.status.success());
    assert!(stderr.contains("ssl-mode=DISABLED"), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains(dbslots_testkit::PASSWORD),
        "{stderr}"
    );

    // Without ssl-ca, VERIFY_IDENTITY (and VERIFY_CA) trust the system's
    // roots: the test's CA once it is the system's (SSL_CERT_FILE), not
    // otherwise.
    let by_name = server.admin_url().replace("@127.0.0.1:", "@localhost:");
    for mode in ["VERIFY_IDENTITY", "VERIFY_CA"] {
        let url = with(&by_name, &format!("ssl-mode={mode}"));
        let (out, stdout, stderr) = run(dbslots()
            .args(["connections", "--url", &url])
            .env("SSL_CERT_FILE", &ca)
            .env_remove("SSL_CERT_DIR"));
        assert!(
            out.status.success(),
            "{mode}, system roots = the CA: {stderr}"
        );
        assert!(stdout.contains("max_connections"), "{stdout}");
        let (out, _, stderr) = run(dbslots()
            .args(["connections", "--url", &url])
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR"));
        assert!(
            !out.status.success(),
            "{mode}: the test's CA is no system root"
        );
        assert!(
            stderr.contains("not signed by a trusted CA"),
            "{mode}: {stderr}"
        );
        assert!(
            !stderr.contains(dbslots_testkit::ADMIN_PASSWORD),
            "{stderr}"
        );
    }

    // dbslots import enqueue + run, with a pool.
    rt.block_on(async {
        let mut admin = admin(&server.admin_url()).await;
        admin
            .query_drop("CREATE TABLE tls_readings (id INT PRIMARY KEY, v INT NOT NULL)")
            .await
            .expect("create the table");
        admin.disconnect().await.expect("closes");
    });
    let dir = tempfile::tempdir().expect("a temporary directory");
    let csv = dir.path().join("readings.csv");
    std::fs::write(&csv, "id,v\n1,10\n2,20\n3,30\n").expect("write the file");
    let (out, _, stderr) = run(dbslots().args([
        "import",
        "enqueue",
        "--url",
        &user_url,
        "--table",
        "tls_readings",
        csv.to_str().expect("UTF-8"),
    ]));
    assert!(out.status.success(), "{stderr}");
    let pool = dir.path().join("pool");
    let lock = dir.path().join("import.lock");
    let (out, _, stderr) = run(dbslots().args([
        "import",
        "run",
        "--once",
        "--url",
        &user_url,
        "--pool",
        pool.to_str().expect("UTF-8"),
        "--capacity",
        "2",
        "--lock-file",
        lock.to_str().expect("UTF-8"),
    ]));
    assert!(out.status.success(), "{stderr}");
    let imported: u64 = rt.block_on(async {
        let mut admin = admin(&server.admin_url()).await;
        let n = admin
            .query_first("SELECT SUM(v) FROM tls_readings")
            .await
            .expect("query")
            .expect("a row");
        admin.disconnect().await.expect("closes");
        n
    });
    assert_eq!(imported, 60);

    // The same under `dbslots exec`, through the slot it hands down
    // (DBSLOTS_SLOT), and `import status`.
    let csv2 = dir.path().join("more.csv");
    std::fs::write(&csv2, "id,v\n4,40\n").expect("write the file");
    let (out, _, stderr) = run(dbslots().args([
        "import",
        "enqueue",
        "--url",
        &user_url,
        "--table",
        "tls_readings",
        csv2.to_str().expect("UTF-8"),
    ]));
    assert!(out.status.success(), "{stderr}");
    let (out, _, stderr) = run(dbslots().args([
        "exec",
        "--pool",
        pool.to_str().expect("UTF-8"),
        "--",
        env!("CARGO_BIN_EXE_dbslots"),
        "import",
        "run",
        "--once",
        "--url",
        &user_url,
        "--pool",
        pool.to_str().expect("UTF-8"),
        "--lock-file",
        lock.to_str().expect("UTF-8"),
    ]));
    assert!(out.status.success(), "{stderr}");
    let (out, stdout, stderr) = run(dbslots().args(["import", "status", "--url", &user_url]));
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains(dbslots_testkit::PASSWORD), "{stdout}");
    let imported: u64 = rt.block_on(async {
        let mut admin = admin(&server.admin_url()).await;
        let n = admin
            .query_first("SELECT SUM(v) FROM tls_readings")
            .await
            .expect("query")
            .expect("a row");
        admin.disconnect().await.expect("closes");
        n
    });
    assert_eq!(imported, 100, "the second file came in under exec");

    // dbslots serve: the server document comes over the monitor's
    // connection.
    let pool_dir = dir.path().join("serve-pool");
    let (out, _, stderr) = run(dbslots().args([
        "exec",
        "--pool",
        pool_dir.to_str().expect("UTF-8"),
        "--capacity",
        "2",
        "--",
        "true",
    ]));
    assert!(out.status.success(), "{stderr}");
    let serve = Serve::start(&[
        "--pool",
        pool_dir.to_str().expect("UTF-8"),
        "--url",
        &admin_url,
    ]);
    let mut server_doc = serde_json::Value::Null;
    for _ in 0..50 {
        let reply = serve.get("/api/server");
        if reply.status == 200 {
            server_doc = reply.json();
            if server_doc["limits"]["max_connections"].is_u64() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        server_doc["limits"]["max_connections"].is_u64(),
        "serve read the server over TLS: {server_doc}"
    );
    let metrics = serve.get("/metrics").body;
    assert!(!metrics.contains(dbslots_testkit::ADMIN_PASSWORD));
    drop(serve);
}

#[test]
fn suggested_capacity_subtracts_the_other_accounts_and_divides_among_hosts() {
    let Some(server) = dbslots_testkit::private_mysql(dbslots_testkit::MysqlOptions {
        max_connections: Some(30),
        ..Default::default()
    }) else {
        return;
    };
    let rt = runtime();
    // Another account (the admin, for workers of the user account) holds 12.
    let others: Vec<Conn> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..12 {
            v.push(Conn::from_url(server.admin_url()).await.expect("connects"));
        }
        v
    });
    let suggest = |extra: &[&str]| {
        let (out, stdout, stderr) = run(dbslots()
            .args(["connections", "--json", "--url", &server.admin_url()])
            .args(extra));
        assert!(out.status.success(), "{stderr}");
        let doc: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
        doc["suggested_capacity"].clone()
    };
    let s = suggest(&["--for-user", dbslots_testkit::USER]);
    let reserve = s["reserve"].as_u64().expect("a number");
    assert_eq!(s["others"], 12, "{s}");
    assert_eq!(s["capacity"].as_u64(), Some(30 - 12 - reserve), "{s}");
    assert!(s["capacity"].as_u64() <= Some(30 - 12 - reserve));
    assert_eq!(s["bound_by"], "max_connections", "{s}");
    let s = suggest(&["--for-user", dbslots_testkit::USER, "--hosts", "2"]);
    assert_eq!(s["capacity"].as_u64(), Some((30 - 12 - reserve) / 2), "{s}");
    // By default the workers are the URL's user: the admin's 12 are theirs.
    let s = suggest(&[]);
    assert_eq!(s["others"], 0, "{s}");
    // The text names the rule.
    let (out, stdout, stderr) = run(dbslots().args([
        "connections",
        "--url",
        &server.admin_url(),
        "--for-user",
        dbslots_testkit::USER,
    ]));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("minus 12 held by other accounts"),
        "{stdout}"
    );
    rt.block_on(async {
        for c in others {
            c.disconnect().await.expect("closes");
        }
    });
}

#[test]
fn kill_idle_needs_a_user_or_all_users_and_at_least_one_second() {
    let url = "mysql://u:p@127.0.0.1:1/x";
    let (out, _, stderr) = run(dbslots().args([
        "connections",
        "--url",
        url,
        "--kill-idle",
        "--max-idle",
        "60",
    ]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--user") || stderr.contains("--all-users"),
        "{stderr}"
    );
    let (out, _, stderr) = run(dbslots().args([
        "connections",
        "--url",
        url,
        "--kill-idle",
        "--max-idle",
        "60",
        "--user",
        "app",
        "--all-users",
    ]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let (out, _, stderr) = run(dbslots().args([
        "connections",
        "--url",
        url,
        "--kill-idle",
        "--max-idle",
        "0",
        "--all-users",
    ]));
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("at least 1"), "{stderr}");
}
