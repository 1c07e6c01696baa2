//! `dbslots serve` over real HTTP: every endpoint against a pool with
//! holders and waiters, the metrics read by a strict exposition parser, and
//! the server's numbers against a real MySQL.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

fn holders_by_slot(pool: &Value) -> BTreeMap<u64, u64> {
    pool["holders"]
        .as_array()
        .expect("holders")
        .iter()
        .map(|h| (h["slot"].as_u64().unwrap(), h["pid"].as_u64().unwrap()))
        .collect()
}

#[test]
fn every_endpoint_shows_the_pools_holders_waiters_and_counters() {
    let started = now_ms();
    let mut busy = BusyPool::start(2, 2);
    // A timeout to count, queued behind the waiters for 0.2 s.
    let out = dbslots()
        .args([
            "exec",
            "--pool",
            &busy.path,
            "--timeout",
            "0.2",
            "--",
            "true",
        ])
        .output()
        .expect("run exec");
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    // A second pool whose name needs escaping in a label.
    let odd_dir = tempfile::tempdir().expect("tempdir");
    let odd = odd_dir.path().join("we\"ird\\po\nol").display().to_string();
    let out = dbslots()
        .args(["exec", "--pool", &odd, "--capacity", "1", "--", "true"])
        .output()
        .expect("run exec");
    assert!(out.status.success(), "{out:?}");

    let serve = Serve::start(&["--pool", &busy.path, "--pool", &odd]);

    // JSON.
    let reply = serve.get("/api/pool-stats");
    assert_eq!(reply.status, 200, "{reply:?}");
    let v = reply.json();
    let pools = v["pools"].as_array().expect("pools");
    assert_eq!(pools.len(), 2, "{v:#}");
    let p = &pools[0];
    assert_eq!(p["pool"], busy.path.as_str());
    assert_eq!(
        (&p["capacity"], &p["active"], &p["waiting"], &p["peak"]),
        (&2.into(), &2.into(), &2.into(), &2.into()),
        "{p:#}"
    );
    assert_eq!((&p["acquisitions"], &p["timeouts"]), (&2.into(), &1.into()));
    let holder_pids = busy.holder_pids();
    let expected: BTreeMap<u64, u64> = holder_pids
        .iter()
        .enumerate()
        .map(|(slot, pid)| (slot as u64, u64::from(*pid)))
        .collect();
    assert_eq!(holders_by_slot(p), expected, "{p:#}");
    for h in p["holders"].as_array().unwrap() {
        let since = h["since_unix_ms"].as_u64().expect("since");
        assert!((started..=now_ms()).contains(&since), "{h}");
    }
    let waiters: Vec<u64> = p["waiters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().expect("pid"))
        .collect();
    let expected: Vec<u64> = busy.waiter_pids().into_iter().map(u64::from).collect();
    assert_eq!(waiters, expected, "oldest first");
    assert_eq!(pools[1]["pool"], odd.as_str());
    assert_eq!(
        (&pools[1]["capacity"], &pools[1]["active"]),
        (&1.into(), &0.into())
    );
    assert!(v["unix_ms"].as_u64().unwrap() >= started);

    // Prometheus.
    let reply = serve.get("/metrics");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let fams = prom::parse(&reply.body).unwrap_or_else(|e| panic!("{e}\n{}", reply.body));
    let kinds: BTreeMap<&str, &str> = fams
        .iter()
        .map(|f| (f.name.as_str(), f.kind.as_str()))
        .collect();
    for (name, kind) in [
        ("dbslots_pool_capacity", "gauge"),
        ("dbslots_pool_active", "gauge"),
        ("dbslots_pool_waiting", "gauge"),
        ("dbslots_pool_peak", "gauge"),
        ("dbslots_pool_acquired_total", "counter"),
        ("dbslots_pool_timeouts_total", "counter"),
        ("dbslots_pool_wait_seconds", "histogram"),
    ] {
        assert_eq!(kinds.get(name), Some(&kind), "{name} in {kinds:?}");
        let f = fams.iter().find(|f| f.name == name).unwrap();
        assert!(f.help.as_deref().is_some_and(|h| !h.is_empty()), "{name}");
        for s in &f.samples {
            let pool = &s.labels["pool"];
            assert!(pool == &busy.path || pool == &odd, "{s:?}");
        }
    }
    assert!(!kinds.keys().any(|k| k.starts_with("dbslots_mysql")));
    let busy_path = busy.path.clone();
    let busy_label = [("pool", busy_path.as_str())];
    let odd_label = [("pool", odd.as_str())];
    let m = |name: &str, l: &[(&str, &str)]| prom::value(&fams, name, l);
    assert_eq!(m("dbslots_pool_capacity", &busy_label), 2.0);
    assert_eq!(m("dbslots_pool_active", &busy_label), 2.0);
    assert_eq!(m("dbslots_pool_waiting", &busy_label), 2.0);
    assert_eq!(m("dbslots_pool_peak", &busy_label), 2.0);
    assert_eq!(m("dbslots_pool_acquired_total", &busy_label), 2.0);
    assert_eq!(m("dbslots_pool_timeouts_total", &busy_label), 1.0);
    assert_eq!(m("dbslots_pool_capacity", &odd_label), 1.0);
    assert_eq!(m("dbslots_pool_acquired_total", &odd_label), 1.0);
    assert_eq!(m("dbslots_pool_wait_seconds_count", &busy_label), 2.0);
    // The raw text escapes the odd name's quote, backslash and line feed.
    let escaped = odd
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    assert!(
        reply.body.contains(&format!("{{pool=\"{escaped}\"}}")),
        "{}",
        reply.body
    );

    // A holder goes: the first waiter waited at least 0.3 s for its slot.
    std::thread::sleep(Duration::from_millis(300));
    busy.release_one();
    busy.wait_for_waiters();
    let fams = prom::parse(&serve.get("/metrics").body).expect("valid metrics");
    let m = |name: &str, l: &[(&str, &str)]| prom::value(&fams, name, l);
    assert_eq!(m("dbslots_pool_acquired_total", &busy_label), 4.0);
    assert_eq!(m("dbslots_pool_wait_seconds_count", &busy_label), 4.0);
    assert!(m("dbslots_pool_wait_seconds_sum", &busy_label) >= 0.3);
    assert_eq!(
        m(
            "dbslots_pool_wait_seconds_bucket",
            &[("pool", &busy_path), ("le", "0.1")]
        ),
        2.0,
        "the two holders did not wait; the two waiters did"
    );
    assert_eq!(
        m(
            "dbslots_pool_wait_seconds_bucket",
            &[("pool", &busy_path), ("le", "+Inf")]
        ),
        4.0
    );
    assert_eq!(m("dbslots_pool_active", &busy_label), 1.0);
    assert_eq!(m("dbslots_pool_waiting", &busy_label), 0.0);

    // The server's endpoint without --url, the dashboard, and the rest.
    let reply = serve.get("/api/server");
    assert_eq!(reply.status, 404);
    let err = reply.json()["error"]
        .as_str()
        .expect("error text")
        .to_string();
    assert!(err.contains("--url"), "{err}");
    let reply = serve.get("/");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(reply.body.contains("id=\"pools\"") && reply.body.contains("/api/pool-stats"));
    let reply = serve.get("/no/such/page");
    assert_eq!(reply.status, 404);
    assert!(reply.json()["error"].as_str().unwrap().contains("/metrics"));
    // Read-only.
    for path in ["/api/pool-stats", "/metrics", "/"] {
        let reply = http("POST", &serve.addr, path);
        assert_eq!(reply.status, 405, "POST {path}: {reply:?}");
        assert_eq!(reply.header("allow"), Some("GET, HEAD"), "{reply:?}");
        let err = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(err.contains("POST") && err.contains("use GET"), "{reply:?}");
    }

    let (status, stderr) = serve.stop();
    assert!(
        status.success(),
        "SIGTERM ends serve cleanly: {status} {stderr}"
    );
}

#[test]
fn serve_refuses_missing_and_repeated_pools() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("none").display().to_string();
    let out = dbslots()
        .args(["serve", "--listen", "127.0.0.1:0", "--pool", &missing])
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&missing) && err.contains("--capacity"),
        "{err}"
    );

    let pool = dir.path().join("p").display().to_string();
    let made = dbslots()
        .args(["exec", "--pool", &pool, "--capacity", "1", "--", "true"])
        .status()
        .expect("run exec");
    assert!(made.success());
    let out = dbslots()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--pool",
            &pool,
            "--pool",
            &pool,
        ])
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("twice"),
        "{out:?}"
    );
}

#[test]
fn serve_refuses_an_invalid_url_at_start() {
    // A typo in --url must stop serve at once, as with a bad --pool, not
    // leave a healthy-looking service that answers 502 for ever.
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("p").display().to_string();
    let made = dbslots()
        .args(["exec", "--pool", &pool, "--capacity", "1", "--", "true"])
        .status()
        .expect("run exec");
    assert!(made.success());
    for url in [
        "mysql://app:s3cret@127.0.0.1:notaport/db",
        "mysql://app:s3cret@127.0.0.1/db?ssl-mode=sometimes",
    ] {
        let mut child = dbslots()
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--pool",
                &pool,
                "--url",
                url,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run serve");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for serve") {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = status.unwrap_or_else(|| panic!("serve kept running with --url {url}: {err}"));
        assert!(!status.success(), "{url}: {err}");
        assert!(err.contains("invalid MySQL URL"), "{url}: {err}");
        assert!(!err.contains("s3cret"), "{url}: {err}");
    }
}

/// A URL with the password replaced, and a wrong password in its place.
fn with_password(url: &str, password: &str) -> String {
    url.replacen(
        &format!(":{}@", dbslots_testkit::PASSWORD),
        &format!(":{password}@"),
        1,
    )
}

fn server_variable(url: &str, query: &str) -> u64 {
    use mysql_async::prelude::Queryable;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut conn = mysql_async::Conn::from_url(url).await.expect("connect");
        let v: Option<u64> = conn.query_first(query).await.expect("query");
        conn.disconnect().await.expect("disconnect");
        v.expect("a row")
    })
}

#[test]
fn serve_shows_the_server_and_never_its_password() {
    let Some(mysql) = dbslots_testkit::shared_mysql() else {
        return;
    };
    assert!(mysql.user_url.contains(dbslots_testkit::PASSWORD));
    let busy = BusyPool::start(1, 1);
    let max_connections = server_variable(&mysql.admin_url, "SELECT @@GLOBAL.max_connections");
    let serve = Serve::start(&["--pool", &busy.path, "--url", &mysql.user_url]);

    let reply = serve.get("/api/server");
    assert_eq!(reply.status, 200, "{reply:?}");
    let v = reply.json();
    // The document of `dbslots connections --json`.
    let out = dbslots()
        .args(["connections", "--json", "--url", &mysql.user_url])
        .output()
        .expect("run dbslots connections");
    assert!(out.status.success(), "{out:?}");
    let cli: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let keys = |d: &Value| {
        d.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    assert!(keys(&cli).is_subset(&keys(&v)), "{cli:#}\n{v:#}");
    assert_eq!(keys(&cli["limits"]), keys(&v["limits"]));
    assert_eq!(v["url"], cli["url"]);
    assert_eq!(v["suggested_capacity"], cli["suggested_capacity"]);
    let limits = &v["limits"];
    assert_eq!(limits["max_connections"], max_connections);
    let connected = limits["threads_connected"]
        .as_u64()
        .expect("threads_connected");
    assert!(connected >= 1, "at least the monitor connection: {v:#}");
    assert!(
        limits["max_used_connections"].as_u64().unwrap() >= connected,
        "{v:#}"
    );
    assert!(
        limits["account"]
            .as_str()
            .unwrap()
            .starts_with(dbslots_testkit::USER)
    );
    let monitor = &limits["connection_id"];
    assert!(
        v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| &c["id"] == monitor),
        "the monitor sees itself: {v:#}"
    );
    assert!(
        v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["user"] == dbslots_testkit::USER),
        "{v:#}"
    );

    let metrics = serve.get("/metrics");
    let fams = prom::parse(&metrics.body).unwrap_or_else(|e| panic!("{e}\n{}", metrics.body));
    assert_eq!(prom::value(&fams, "dbslots_mysql_up", &[]), 1.0);
    assert_eq!(
        prom::value(&fams, "dbslots_mysql_max_connections", &[]),
        max_connections as f64
    );
    let threads = prom::value(&fams, "dbslots_mysql_threads_connected", &[]);
    assert!(threads >= 1.0);
    assert!(prom::value(&fams, "dbslots_mysql_max_used_connections", &[]) >= threads);
    for name in [
        "dbslots_mysql_threads_connected",
        "dbslots_mysql_max_connections",
        "dbslots_mysql_max_used_connections",
    ] {
        assert_eq!(fams.iter().find(|f| f.name == name).unwrap().kind, "gauge");
    }
    // The monitor connection is kept, not opened per request.
    std::thread::sleep(SERVER_FRESH_FOR_TESTS);
    let again = serve.get("/api/server").json();
    assert_eq!(again["limits"]["connection_id"], *monitor, "{again:#}");

    let pool_stats = serve.get("/api/pool-stats").body;
    let page = serve.get("/").body;
    let (status, stderr) = serve.stop();
    assert!(status.success(), "{stderr}");
    for text in [&reply.body, &metrics.body, &pool_stats, &page, &stderr] {
        assert!(
            !text.contains(dbslots_testkit::PASSWORD),
            "password shown: {text}"
        );
    }

    // A wrong password: the endpoint says why, still without it.
    let wrong = "not-the-password-4711";
    let serve = Serve::start(&[
        "--pool",
        &busy.path,
        "--url",
        &with_password(&mysql.user_url, wrong),
    ]);
    let reply = serve.get("/api/server");
    assert_eq!(reply.status, 502, "{reply:?}");
    let err = reply.json()["error"].as_str().unwrap().to_string();
    assert!(
        err.contains("1045") || err.to_lowercase().contains("access denied"),
        "{err}"
    );
    let metrics = serve.get("/metrics").body;
    let fams = prom::parse(&metrics).expect("valid metrics");
    assert_eq!(prom::value(&fams, "dbslots_mysql_up", &[]), 0.0);
    assert!(!metrics.contains("dbslots_mysql_threads_connected"));
    let (_, stderr) = serve.stop();
    for text in [&reply.body, &metrics, &stderr] {
        assert!(!text.contains(wrong), "password shown: {text}");
    }
}

#[test]
fn serve_answers_only_its_own_host_names() {
    // DNS rebinding: a page of evil.example.com whose name now points at
    // 127.0.0.1 sends `Host: evil.example.com`; it must get nothing.
    let busy = BusyPool::start(1, 0);
    let serve = Serve::start(&["--pool", &busy.path, "--allow-host", "dash.example.org"]);
    let port = serve.addr.rsplit_once(':').unwrap().1.to_string();
    for (host, status) in [
        (serve.addr.clone(), 200),
        (format!("localhost:{port}"), 200),
        (format!("[::1]:{port}"), 200),
        (format!("dash.example.org:{port}"), 200),
        (format!("evil.example.com:{port}"), 421),
        ("evil.example.com".to_string(), 421),
        (format!("10.1.2.3:{port}"), 421),
    ] {
        for path in ["/", "/api/pool-stats", "/metrics"] {
            let reply = http_with("GET", &serve.addr, path, &[("Host", &host)]);
            assert_eq!(reply.status, status, "{host} {path}: {reply:?}");
            if status != 200 {
                assert!(!reply.body.contains(&busy.path), "{reply:?}");
                assert!(reply.body.contains("--allow-host"), "{reply:?}");
            }
        }
    }
    // Without any Host: HTTP/1.0 (an old check, a script over netcat) is
    // served, since no browser leaves it out; HTTP/1.1 requires one.
    let raw = |request: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&serve.addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply
    };
    let reply = raw("GET /metrics HTTP/1.0\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    assert!(reply.contains("dbslots_pool_capacity"), "{reply}");
    let reply = raw("GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(!reply.contains(" 200 "), "{reply}");
}

#[test]
fn serve_beyond_loopback_needs_a_token_and_checks_it() {
    let busy = BusyPool::start(1, 0);
    // Beyond loopback without a token: refused at start, saying what to do.
    let out = dbslots()
        .args(["serve", "--pool", &busy.path, "--listen", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .expect("run dbslots serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--token-file") && err.contains("--no-auth"),
        "{err}"
    );
    // With a token, every route but the page wants it as a bearer token.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "0123456789abcdef\n").unwrap();
    let serve = Serve::start(&[
        "--pool",
        &busy.path,
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    let host = ("Host", serve.addr.as_str());
    for path in ["/api/pool-stats", "/metrics"] {
        let none = http_with("GET", &serve.addr, path, &[host]);
        assert_eq!(none.status, 401, "{none:?}");
        assert_eq!(none.header("www-authenticate"), Some("Bearer"));
        let wrong = http_with(
            "GET",
            &serve.addr,
            path,
            &[host, ("Authorization", "Bearer 0123456789abcdeF")],
        );
        assert_eq!(wrong.status, 401, "{wrong:?}");
        let right = http_with(
            "GET",
            &serve.addr,
            path,
            &[host, ("Authorization", "Bearer 0123456789abcdef")],
        );
        assert_eq!(right.status, 200, "{right:?}");
    }
    assert_eq!(serve.get("/").status, 200, "the page holds no data");
    assert!(serve.get("/").body.contains("#token="));
}

/// Raises this process's open-file limit to at least `n`.
fn allow_open_files(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < n {
            assert!(lim.rlim_max >= n, "the hard open-file limit is below {n}");
            lim.rlim_cur = n;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
}

#[test]
fn a_thousand_idle_sockets_do_not_keep_a_request_waiting() {
    allow_open_files(4096);
    let busy = BusyPool::start(1, 0);
    let serve = Serve::start(&["--pool", &busy.path, "--max-connections", "256"]);
    // 1000 connections that never send a byte, plus 100 that stop in the
    // middle of their request head.
    let mut idle = Vec::new();
    for i in 0..1100 {
        let mut s = std::net::TcpStream::connect(&serve.addr).expect("connect");
        if i >= 1000 {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: ").unwrap();
        }
        idle.push(s);
    }
    let started = Instant::now();
    let reply = serve.get("/api/pool-stats");
    let took = started.elapsed();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    // The cap held: the oldest idle sockets were closed to make room.
    let closed = idle
        .iter()
        .take(500)
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            match (&mut &**s).read(&mut [0u8; 16]) {
                Ok(0) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            }
        })
        .count();
    assert!(closed > 0, "no idle socket was closed");
    eprintln!("1100 idle sockets: a request was answered in {took:?}");
}

/// A TCP port that accepts connections and never says a word (a MySQL
/// server that hangs before its greeting).
fn silent_server() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

#[test]
fn metrics_answer_at_once_while_mysql_hangs() {
    let (_silent, port) = silent_server();
    let busy = BusyPool::start(1, 0);
    let url = format!("mysql://app:pw@127.0.0.1:{port}/");
    let serve = Serve::start(&["--pool", &busy.path, "--url", &url]);
    for _ in 0..3 {
        let started = Instant::now();
        let reply = serve.get("/metrics");
        let took = started.elapsed();
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(took < Duration::from_secs(1), "/metrics took {took:?}");
        assert!(
            reply.body.lines().any(|l| l == "dbslots_mysql_up 0"),
            "{}",
            reply.body
        );
        assert!(
            reply.body.contains("dbslots_pool_active{"),
            "{}",
            reply.body
        );
        let started = Instant::now();
        assert_eq!(serve.get("/api/server").status, 502);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

#[test]
fn metrics_keep_the_last_readings_while_mysql_is_frozen() {
    let Some(mysql) = dbslots_testkit::shared_mysql() else {
        return;
    };
    // user:pw@host:port/... -> the same through a proxy we can freeze.
    let (head, rest) = mysql.user_url.rsplit_once('@').unwrap();
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    let target: std::net::SocketAddr = hostport
        .replace("localhost", "127.0.0.1")
        .parse()
        .expect("a host:port of the test server");
    let proxy = dbslots_testkit::FreezableProxy::start(target).unwrap();
    let url = format!("{head}@127.0.0.1:{}/{path}", proxy.port());
    let busy = BusyPool::start(1, 0);
    let serve = Serve::start(&["--pool", &busy.path, "--url", &url]);
    let up = wait_for("the server to be read", Duration::from_secs(10), || {
        let m = serve.get("/metrics").body;
        m.lines().any(|l| l == "dbslots_mysql_up 1").then_some(m)
    });
    let connected = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("dbslots_mysql_max_connections "))
            .map(str::to_string)
    };
    let max = connected(&up).expect("max_connections while up");
    proxy.freeze();
    std::thread::sleep(SERVER_FRESH_FOR_TESTS);
    for _ in 0..3 {
        let started = Instant::now();
        let m = serve.get("/metrics").body;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "/metrics took {took:?}");
        assert!(m.lines().any(|l| l == "dbslots_mysql_up 0"), "{m}");
        assert_eq!(
            connected(&m),
            Some(max.clone()),
            "the last readings stay: {m}"
        );
        assert!(m.contains("dbslots_mysql_reading_age_seconds "), "{m}");
    }
}

#[test]
fn metrics_pass_promtool_check_metrics() {
    let promtool = "/usr/bin/promtool";
    if !std::path::Path::new(promtool).exists() {
        assert!(
            !dbslots_testkit::servers_required(),
            "{promtool} is missing: apt-get install prometheus (cargo xtask test installs it)"
        );
        println!(
            "SKIPPED metrics_pass_promtool_check_metrics: no {promtool} (apt-get install prometheus)"
        );
        return;
    }
    let mysql = dbslots_testkit::shared_mysql();
    let busy = BusyPool::start(2, 2);
    let mut args = vec!["--pool", busy.path.as_str()];
    if let Some(m) = &mysql {
        args.extend(["--url", m.user_url.as_str()]);
    }
    let serve = Serve::start(&args);
    let body = wait_for("metrics with the server", Duration::from_secs(10), || {
        let m = serve.get("/metrics").body;
        (mysql.is_none() || m.contains("dbslots_mysql_up 1")).then_some(m)
    });
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics: {report}\n{body}"
    );
    assert!(
        report.trim().is_empty(),
        "promtool has remarks: {report}\n{body}"
    );
}
