//! `dbslots connections` as an operator runs it, against the shared test
//! server (skipped without one, see dbslots-testkit). Each test works with
//! accounts of its own, so that it kills nobody else's connections.

use std::collections::BTreeSet;
use std::time::Duration;

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use dbslots_testkit::{TEMP_PASSWORD, TempAccount};

use crate::support::{dbslots, run, runtime};

/// `n` connections of the account at `url`.
async fn open(url: &str, n: usize) -> Vec<Conn> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(Conn::from_url(url).await.expect("the account connects"));
    }
    conns
}

async fn listed_ids(admin_url: &str) -> BTreeSet<u64> {
    let mut admin = Conn::from_url(admin_url).await.expect("the admin connects");
    let ids: Vec<u64> = admin
        .query("SELECT ID FROM information_schema.PROCESSLIST")
        .await
        .expect("processlist");
    admin.disconnect().await.expect("disconnect");
    ids.into_iter().collect()
}

fn ids(conns: &[Conn]) -> BTreeSet<u64> {
    conns.iter().map(|c| u64::from(c.id())).collect()
}

#[test]
fn connections_shows_limits_usage_and_connections_by_user_as_json_and_text() {
    let Some(shared) = dbslots_testkit::shared_mysql() else {
        return;
    };
    let rt = runtime();
    let account = rt.block_on(TempAccount::create(&shared.admin_url, "cli_show", None));
    let idle = rt.block_on(open(&account.url, 2));
    let max_connections: u64 = rt.block_on(async {
        let mut admin = Conn::from_url(&shared.admin_url).await.expect("admin");
        let n = admin
            .query_first("SELECT @@max_connections")
            .await
            .expect("query")
            .expect("a row");
        admin.disconnect().await.expect("disconnect");
        n
    });

    let (out, stdout, stderr) =
        run(dbslots().args(["connections", "--json", "--url", &shared.admin_url]));
    assert!(out.status.success(), "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints JSON");
    assert_eq!(doc["limits"]["max_connections"], max_connections);
    assert!(
        doc["limits"]["threads_connected"]
            .as_u64()
            .expect("a number")
            >= 3
    );
    let capacity = doc["suggested_capacity"]["capacity"]
        .as_u64()
        .expect("a number");
    assert!(
        capacity >= 1 && capacity < max_connections,
        "headroom: {capacity}"
    );
    let group = doc["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["user"] == account.name.as_str() && g["command"] == "Sleep")
        .unwrap_or_else(|| panic!("the account's sleepers are grouped: {stdout}"));
    assert_eq!(group["count"], 2);
    assert!(!stdout.contains(dbslots_testkit::ADMIN_PASSWORD));
    assert!(stdout.contains(":***@"), "the URL is shown redacted");

    // The URL from $DATABASE_URL, as text.
    let (out, stdout, stderr) = run(dbslots()
        .arg("connections")
        .env("DATABASE_URL", &shared.admin_url));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("max_connections {max_connections}")),
        "{stdout}"
    );
    // Other tests' connections come and go: the number may differ.
    assert!(stdout.contains("suggested    pool capacity "), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&account.name))
        .unwrap_or_else(|| panic!("a line for the account: {stdout}"));
    assert_eq!(
        line.split_whitespace().take(3).collect::<Vec<_>>(),
        [account.name.as_str(), "Sleep", "2"]
    );
    assert!(
        !stdout.contains(dbslots_testkit::ADMIN_PASSWORD)
            && !stderr.contains(dbslots_testkit::ADMIN_PASSWORD)
    );
    rt.block_on(async {
        for c in idle {
            c.disconnect().await.expect("disconnect");
        }
    });
}

#[test]
fn kill_idle_prints_each_connection_and_kills_only_without_dry_run() {
    let Some(shared) = dbslots_testkit::shared_mysql() else {
        return;
    };
    let rt = runtime();
    let account = rt.block_on(TempAccount::create(&shared.admin_url, "cli_kill", None));
    let bystander = rt.block_on(TempAccount::create(&shared.admin_url, "cli_keep", None));
    let idle = rt.block_on(open(&account.url, 2));
    let kept = rt.block_on(open(&bystander.url, 1));
    // The server counts idle time in whole seconds.
    std::thread::sleep(Duration::from_millis(2300));
    let kill = |dry_run: bool| {
        let mut cmd = dbslots();
        cmd.args([
            "connections",
            "--url",
            &shared.admin_url,
            "--kill-idle",
            "--max-idle",
            "1",
        ])
        .args(["--user", &account.name]);
        if dry_run {
            cmd.arg("--dry-run");
        }
        run(&mut cmd)
    };

    let (out, stdout, stderr) = kill(true);
    assert!(out.status.success(), "{stderr}");
    for id in ids(&idle) {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("id {id} ")))
            .unwrap_or_else(|| panic!("a line for connection {id}: {stdout}"));
        assert!(line.starts_with("would kill:"), "{line}");
        assert!(line.contains(&format!("user {}", account.name)), "{line}");
        assert!(
            line.contains("host 127.0.0.1:") || line.contains("host localhost:"),
            "{line}"
        );
        assert!(line.contains(" idle "), "{line}");
    }
    assert!(stdout.contains("nothing was killed"), "{stdout}");
    let listed = rt.block_on(listed_ids(&shared.admin_url));
    assert!(ids(&idle).is_subset(&listed), "the dry run killed nothing");

    let (out, stdout, stderr) = kill(false);
    assert!(out.status.success(), "{stderr}");
    for id in ids(&idle) {
        assert!(stdout.contains(&format!("killed: id {id} ")), "{stdout}");
    }
    assert!(stdout.contains("2 connection(s) of user"), "{stdout}");
    assert!(!stdout.contains(&bystander.name), "{stdout}");
    let mut gone = false;
    for _ in 0..100 {
        let listed = rt.block_on(listed_ids(&shared.admin_url));
        assert!(
            ids(&kept).is_subset(&listed),
            "the other user's connection lives"
        );
        if listed.is_disjoint(&ids(&idle)) {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gone, "the idle connections were killed");
    drop((idle, kept));
}

#[test]
fn a_refused_monitor_says_why_and_how_to_get_in() {
    let Some(shared) = dbslots_testkit::shared_mysql() else {
        return;
    };
    let rt = runtime();
    let account = rt.block_on(TempAccount::create(&shared.admin_url, "cli_full", Some(1)));
    let holder = rt.block_on(open(&account.url, 1));
    let (out, stdout, stderr) = run(dbslots().args(["connections", "--url", &account.url]));
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("refused the monitor's own connection"),
        "{stderr}"
    );
    assert!(stderr.contains("error 1226"), "{stderr}");
    assert!(stderr.contains("connect as another account"), "{stderr}");
    assert!(stderr.contains("KILL <ID>"), "{stderr}");
    assert!(!stderr.contains(TEMP_PASSWORD), "{stderr}");
    drop(holder);
}

#[test]
fn kill_idle_without_max_idle_is_a_usage_error() {
    let (out, _, stderr) = run(dbslots().args([
        "connections",
        "--url",
        "mysql://u:p@127.0.0.1:1/x",
        "--kill-idle",
    ]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--max-idle"), "{stderr}");
}

/// A TCP proxy to `upstream` that stops passing anything on, in either
/// direction, once the client sends `freeze_at` (the server looks frozen
/// from then on: the network hangs, nothing is closed).
fn freezing_proxy(upstream: String, freeze_at: &'static [u8]) -> u16 {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let server = TcpStream::connect(&upstream).expect("the proxy reaches the server");
            let frozen = Arc::new(AtomicBool::new(false));
            let pipe = move |mut from: TcpStream,
                             mut to: TcpStream,
                             watch: bool,
                             frozen: Arc<AtomicBool>| {
                let mut buf = [0u8; 16384];
                loop {
                    let n = match from.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if watch && buf[..n].windows(freeze_at.len()).any(|w| w == freeze_at) {
                        frozen.store(true, Ordering::SeqCst);
                    }
                    if frozen.load(Ordering::SeqCst) {
                        // Hold both sockets open, pass nothing on.
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let f2 = Arc::clone(&frozen);
            std::thread::spawn(move || pipe(client, server, true, frozen));
            std::thread::spawn(move || pipe(s2, c2, false, f2));
        }
    });
    port
}

/// Runs `cmd` to its end, or kills it and fails the test after 30 s (it
/// is waiting for a frozen server).
fn output_within_30_s(cmd: &mut std::process::Command) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run dbslots connections");
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still waits for a frozen server after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn connections_gives_up_on_a_server_that_stops_answering() {
    let Some(shared) = dbslots_testkit::shared_mysql() else {
        return;
    };
    // host:port of the shared server, and the same URL through the proxy.
    let url = &shared.user_url;
    let at = url.rfind('@').unwrap() + 1;
    let end = at + url[at..].find('/').unwrap();
    let port = freezing_proxy(url[at..end].to_string(), b"VERSION()");
    let proxied = format!("{}127.0.0.1:{port}{}", &url[..at], &url[end..]);
    let out =
        output_within_30_s(dbslots().args(["connections", "--timeout", "3", "--url", &proxied]));
    let status = out.status;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "{err}");
    assert!(err.contains("did not answer within 3"), "{err}");
    assert!(!err.contains(dbslots_testkit::PASSWORD), "{err}");
}

/// `--kill-idle` run from cron against a server that freezes mid-way ends
/// within its `--timeout` per statement, saying what it did and why it
/// stopped, instead of waiting until TCP gives up.
#[test]
fn kill_idle_gives_up_on_a_server_that_stops_answering() {
    let Some(shared) = dbslots_testkit::shared_mysql() else {
        return;
    };
    let url = shared.user_url.clone();
    // An idle connection of the test's user: a victim to check.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let idle = rt.block_on(async {
        let opts = mysql_async::Opts::from_url(&url).unwrap();
        mysql_async::Conn::new(opts)
            .await
            .expect("an idle connection")
    });
    // TIME counts whole seconds, and the rule wants more than 1.
    std::thread::sleep(Duration::from_millis(2500));
    let at = url.rfind('@').unwrap() + 1;
    let end = at + url[at..].find('/').unwrap();
    // Frozen at the check before the first KILL: nothing is killed.
    let port = freezing_proxy(url[at..end].to_string(), b"WHERE ID = ?");
    let proxied = format!("{}127.0.0.1:{port}{}", &url[..at], &url[end..]);
    let out = output_within_30_s(
        dbslots()
            .args(["connections", "--kill-idle", "--max-idle", "1"])
            .args([
                "--user",
                dbslots_testkit::USER,
                "--timeout",
                "2",
                "--url",
                &proxied,
            ]),
    );
    let status = out.status;
    let err = String::from_utf8_lossy(&out.stderr);
    let text = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("stopped early after 0 of") && text.contains("did not answer within 4"),
        "{text}"
    );
    assert!(!text.contains(dbslots_testkit::PASSWORD), "{text}");
    drop(rt.block_on(idle.disconnect()));
}
