//! `dbslots gate` with real servers and real clients: PHP PDO (php-cli with
//! pcntl and pdo_mysql), the `mariadb` command-line client and mysql_async.
//! Each test starts the servers it needs to change (max_connections, TLS)
//! from the testkit and skips visibly without them.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dbslots_core::{Pool, PoolOptions};
use dbslots_gate::GateReport;
use dbslots_testkit::{MysqlOptions, PASSWORD, USER};
use mysql_async::prelude::Queryable;

/// Where a gate's counters are read from: the pool's gate directory, or
/// (a Redis pool) the pool's Redis, opened once the gate created the pool.
enum Published {
    Dir(PathBuf),
    Redis(String, std::sync::OnceLock<Pool>),
}

impl Published {
    fn read(&self) -> Option<Vec<GateReport>> {
        match self {
            Published::Dir(dir) => dbslots_gate::read_gates_in(dir).ok(),
            Published::Redis(addr, pool) => {
                let pool = match pool.get() {
                    Some(p) => p,
                    None => {
                        let p = Pool::open(addr.as_str(), PoolOptions::new()).ok()?;
                        pool.get_or_init(|| p)
                    }
                };
                dbslots_gate::read_gates(pool).ok()
            }
        }
    }
}

/// A `dbslots gate` process, SIGKILLed on drop.
struct GateProc {
    child: Child,
    published: Published,
    log: PathBuf,
    /// `127.0.0.1:PORT` of its first --listen.
    addr: String,
}

impl GateProc {
    /// Starts a gate listening on a free port (plus `extra` flags) and
    /// waits until it publishes its counters.
    fn start(dir: &Path, upstream: &str, pool: &str, extra: &[&str]) -> GateProc {
        Self::start_with(dir, upstream, pool, extra, &[])
    }

    fn start_with(
        dir: &Path,
        upstream: &str,
        pool: &str,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> GateProc {
        Self::start_as(dir, None, upstream, pool, extra, env)
    }

    /// Starts a gate named `name` (by default `gN`, N the number of files
    /// in `dir`).
    fn start_as(
        dir: &Path,
        name: Option<&str>,
        upstream: &str,
        pool: &str,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> GateProc {
        Self::spawn_as(dir, name, upstream, pool, extra, env).wait_started()
    }

    /// [`GateProc::start_as`] without waiting for the gate to start.
    fn spawn_as(
        dir: &Path,
        name: Option<&str>,
        upstream: &str,
        pool: &str,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> GateProc {
        Self::spawn_adjusted(dir, name, upstream, pool, extra, env, |_| {})
    }

    /// [`GateProc::spawn_as`], with `adjust` applied to the command last.
    fn spawn_adjusted(
        dir: &Path,
        name: Option<&str>,
        upstream: &str,
        pool: &str,
        extra: &[&str],
        env: &[(&str, &Path)],
        adjust: impl FnOnce(&mut Command),
    ) -> GateProc {
        let n = std::fs::read_dir(dir).map_or(0, |d| d.count());
        let log = dir.join(format!("gate-{n}.log"));
        let name = name.map_or_else(|| format!("g{n}"), str::to_string);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbslots"));
        cmd.args(["gate", "--listen", "127.0.0.1:0", "--upstream", upstream])
            .args(["--pool", pool, "--name", &name])
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("DBSLOTS_POOL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        adjust(&mut cmd);
        let child = cmd.spawn().expect("dbslots gate starts");
        let published = match dbslots_core::PoolAddr::parse(pool).expect("a pool address") {
            dbslots_core::PoolAddr::Dir(d) => Published::Dir(d.join("gates")),
            _ => Published::Redis(pool.to_string(), std::sync::OnceLock::new()),
        };
        GateProc {
            child,
            published,
            log,
            addr: String::new(),
        }
    }

    /// Waits until the gate publishes its counters (20 s at most).
    fn wait_started(mut self) -> GateProc {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(r) = self.report() {
                self.addr = r.listen[0].clone();
                return self;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the gate exited with {status}: {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the gate did not start: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn port(&self) -> u16 {
        self.addr.rsplit_once(':').unwrap().1.parse().unwrap()
    }

    fn report(&self) -> Option<GateReport> {
        let pid = self.child.id();
        self.published.read()?.into_iter().find(|g| g.pid == pid)
    }

    /// The report once `ok` holds (counters are published twice a second).
    fn report_when(&self, what: &str, ok: impl Fn(&GateReport) -> bool) -> GateReport {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.report();
            if let Some(r) = r.as_ref().filter(|r| ok(r)) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: last report {r:#?}; the gate's log: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log once it contains `needle` (10 s at most): a gate is seen
    /// started once its counters are published, a moment before it logs.
    fn log_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the gate's log: {log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the gate did not exit within {within:?}: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!(
            "mysql://{USER}:{PASSWORD}@{}/{}?prefer_socket=false",
            self.addr,
            dbslots_testkit::DATABASE
        )
    }
}

impl Drop for GateProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PHP: forks `n` children; each connects with PDO to `dsn`, runs `sql`,
/// closes, and prints `OK` or `ERR <message>` on a line of its own.
const PHP_CLIENTS: &str = r#"<?php
[$_, $dsn, $user, $pass, $n, $sql] = $argv;
$opts = [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_TIMEOUT => 60];
if (getenv('PHP_SSL_CA')) {
    $opts[PDO::MYSQL_ATTR_SSL_CA] = getenv('PHP_SSL_CA');
    $opts[PDO::MYSQL_ATTR_SSL_VERIFY_SERVER_CERT] = true;
}
$children = [];
for ($i = 0; $i < (int)$n; $i++) {
    $pid = pcntl_fork();
    if ($pid === 0) {
        try {
            $pdo = new PDO($dsn, $user, $pass, $opts);
            $row = $pdo->query($sql)->fetch(PDO::FETCH_NUM);
            $pdo = null;
            // One write per line: the children share the pipe.
            fwrite(STDOUT, "OK " . ($row[0] ?? '') . "\n");
        } catch (PDOException $e) {
            fwrite(STDOUT, "ERR " . str_replace("\n", " ", $e->getMessage()) . "\n");
        }
        exit(0);
    }
    $children[] = $pid;
}
foreach ($children as $pid) {
    pcntl_waitpid($pid, $status);
}
"#;

fn php_available() -> bool {
    let ok = Command::new("php")
        .args([
            "-r",
            "exit(function_exists('pcntl_fork') && extension_loaded('pdo_mysql') ? 0 : 1);",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !dbslots_testkit::servers_required(),
            "php-cli with pcntl and pdo_mysql is missing (apt-get install php-cli php-mysql)"
        );
        eprintln!("SKIPPED: php-cli with pcntl and pdo_mysql is missing");
    }
    ok
}

/// Runs `n` PHP clients at once; returns their result lines.
fn php_clients(dir: &Path, dsn: &str, n: usize, sql: &str, env: &[(&str, &str)]) -> Vec<String> {
    let script = dir.join("clients.php");
    std::fs::write(&script, PHP_CLIENTS).unwrap();
    let mut cmd = Command::new("php");
    cmd.arg(&script)
        .args([dsn, USER, PASSWORD, &n.to_string(), sql]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = output_within(cmd, Duration::from_secs(90));
    assert!(
        out.status.success(),
        "php failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), n, "one line per client: {lines:#?}");
    lines
}

/// Runs `cmd`, killing it if it takes longer than `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the client program starts");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} took longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// Starts `n` mariadb command-line clients at once on `port`.
fn mariadb_clients(port: u16, n: usize, sql: &str, extra: &[&str]) -> Vec<Child> {
    (0..n)
        .map(|_| {
            Command::new("mariadb")
                .args(["-h", "127.0.0.1", "-P", &port.to_string()])
                .args([&format!("-u{USER}"), &format!("-p{PASSWORD}")])
                .args(extra)
                .args([
                    "--connect-timeout=60",
                    "-N",
                    "-e",
                    sql,
                    dbslots_testkit::DATABASE,
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("the mariadb client starts")
        })
        .collect()
}

fn finish(children: Vec<Child>) -> Vec<Output> {
    children
        .into_iter()
        .map(|c| c.wait_with_output().expect("mariadb ends"))
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

async fn status_value(admin_url: &str, name: &str) -> u64 {
    let mut c = mysql_async::Conn::from_url(admin_url).await.expect("admin");
    let v: Option<(String, u64)> = c
        .query_first(format!("SHOW GLOBAL STATUS LIKE '{name}'"))
        .await
        .expect("status");
    c.disconnect().await.expect("disconnect");
    v.expect("the status variable exists").1
}

/// Connects to `url` and runs `sql` (which answers one small number) in a
/// task: its answer once it has finished and disconnected.
async fn running_query(
    url: &str,
    sql: &'static str,
) -> tokio::task::JoinHandle<Result<Option<u8>, mysql_async::Error>> {
    let mut c = mysql_async::Conn::from_url(url).await.expect("connects");
    tokio::spawn(async move {
        let v: Option<u8> = c.query_first(sql).await?;
        c.disconnect().await?;
        Ok(v)
    })
}

/// `HOST:PORT` of the shared test server, for a gate's `--upstream`.
fn shared_upstream() -> Option<String> {
    let mysql = dbslots_testkit::shared_mysql()?;
    let opts = mysql_async::Opts::from_url(&mysql.user_url).unwrap();
    Some(format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port()))
}

fn private_mysql(max_connections: u32, extra: &[String]) -> Option<dbslots_testkit::MysqlServer> {
    let mut extra_args = vec!["--back-log=1000".to_string()];
    extra_args.extend(extra.iter().cloned());
    dbslots_testkit::private_mysql(MysqlOptions {
        max_connections: Some(max_connections),
        extra_args,
        ..MysqlOptions::default()
    })
}

#[test]
fn php_and_mariadb_clients_get_no_errors_through_the_gate_and_1040s_without_it() {
    let _heavy = crate::support::heavy_or_sensitive();
    if !php_available() {
        return;
    }
    let Some(server) = private_mysql(10, &[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let gate = GateProc::start(
        dir.path(),
        &format!("127.0.0.1:{}", server.port()),
        pool.to_str().unwrap(),
        &["--capacity", "9", "--queue-timeout", "60"],
    );
    let through = |port: u16, sql: &str| {
        let mariadb = mariadb_clients(port, 20, sql, &[]);
        let php = php_clients(
            dir.path(),
            &format!(
                "mysql:host=127.0.0.1;port={port};dbname={}",
                dbslots_testkit::DATABASE
            ),
            150,
            sql,
            &[],
        );
        (php, finish(mariadb))
    };
    let (php, mariadb) = through(gate.port(), "SELECT SLEEP(0.05)");
    let php_errors: Vec<_> = php.iter().filter(|l| !l.starts_with("OK")).collect();
    assert!(
        php_errors.is_empty(),
        "PHP through the gate: {php_errors:#?}"
    );
    for out in &mariadb {
        assert!(
            out.status.success(),
            "mariadb through the gate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let r = gate.report_when("all 170 admitted", |r| r.admitted == 170 && r.active == 0);
    assert_eq!(r.accepted, 170);
    assert_eq!(r.queue_timeouts, 0);
    assert!(r.bytes_from_clients > 0 && r.bytes_to_clients > 0, "{r:#?}");
    assert_eq!(r.wait_histogram.count, 170);

    // The same clients straight at the server, each holding its connection
    // a second, so that more than 10 overlap however slowly a busy machine
    // starts them.
    let (php, mariadb) = through(server.port(), "SELECT SLEEP(1)");
    let refused = php.iter().filter(|l| l.contains("[1040]")).count()
        + mariadb
            .iter()
            .filter(|o| String::from_utf8_lossy(&o.stderr).contains("1040"))
            .count();
    assert!(
        refused > 0,
        "without the gate the server should refuse some: {php:#?}"
    );
    eprintln!("without the gate: {refused} of 170 clients refused with 1040");
}

#[test]
fn a_queue_timeout_reaches_php_and_mariadb_as_error_1040_with_the_gates_message() {
    if !php_available() {
        return;
    }
    let Some(upstream) = shared_upstream() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (pool, held) = held_one_slot_pool(dir.path());
    let gate = GateProc::start(dir.path(), &upstream, &pool, &["--queue-timeout", "0.5"]);
    let php = php_clients(
        dir.path(),
        &format!(
            "mysql:host=127.0.0.1;port={};dbname={}",
            gate.port(),
            dbslots_testkit::DATABASE
        ),
        1,
        "SELECT 1",
        &[],
    );
    assert!(
        php[0].contains("SQLSTATE[08004] [1040] Too many connections: dbslots gate")
            && php[0].contains("(capacity 1)")
            && php[0].contains(&pool),
        "{php:?}"
    );
    let out = finish(mariadb_clients(gate.port(), 1, "SELECT 1", &["--skip-ssl"]));
    let stderr = String::from_utf8_lossy(&out[0].stderr);
    assert!(
        stderr.starts_with("ERROR 1040 (08004): Too many connections: dbslots gate"),
        "{stderr}"
    );
    let r = gate.report_when("two timeouts", |r| r.queue_timeouts == 2);
    assert_eq!((r.admitted, r.queued), (0, 0));
    // One structured line per refusal, without a password.
    let log = gate.log_text();
    assert_eq!(log.matches("reason=\"queue_timeout\"").count(), 2, "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
    // `dbslots status` shows the gate under its pool, table and JSON.
    let status = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbslots"));
        cmd.args(["status", "--pool", &pool]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().expect("dbslots status runs");
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let table = status(false);
    let row = table
        .lines()
        .find(|l| l.starts_with("g"))
        .unwrap_or_else(|| panic!("a gate row: {table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], dbslots_core::env::host_name(), "{table}");
    assert_eq!(cols[2], gate.addr, "{table}");
    // ACCEPTED ADMITTED QUEUED ACTIVE TIMEOUTS
    assert_eq!(&cols[3..8], ["2", "0", "0", "0", "2"], "{table}");
    let doc: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!(doc["gates"][0]["queue_timeouts"], 2, "{doc:#}");
    assert_eq!(doc["gates"][0]["upstream"], upstream.as_str(), "{doc:#}");
    // `dbslots serve`: JSON and /metrics (strictly parsed).
    let serve = crate::support::Serve::start(&["--pool", &pool]);
    let api = serve.get("/api/pool-stats").json();
    assert_eq!(api["gates"][0]["queue_timeouts"], 2, "{api:#}");
    let text = serve.get("/metrics").body;
    let families = crate::support::prom::parse(&text).expect("valid exposition");
    let gate_name = doc["gates"][0]["name"].as_str().unwrap();
    let labels = [("gate", gate_name)];
    let value = |name: &str| crate::support::prom::value(&families, name, &labels);
    assert_eq!(value("dbslots_gate_queue_timeouts_total"), 2.0);
    assert_eq!(value("dbslots_gate_accepted_total"), 2.0);
    assert_eq!(value("dbslots_gate_queued"), 0.0);
    assert_eq!(value("dbslots_gate_wait_seconds_count"), 0.0);

    // With the slot free, the same clients get in.
    drop(held);
    let php = php_clients(
        dir.path(),
        &format!(
            "mysql:host=127.0.0.1;port={};dbname={}",
            gate.port(),
            dbslots_testkit::DATABASE
        ),
        1,
        "SELECT 7",
        &[],
    );
    assert_eq!(php, ["OK 7"]);
}

#[test]
fn an_unreachable_server_is_an_error_packet_and_the_slot_comes_back_at_once() {
    if !php_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pool_dir = dir.path().join("pool");
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = closed.local_addr().unwrap().to_string();
    drop(closed);
    let gate = GateProc::start(
        dir.path(),
        &upstream,
        pool_dir.to_str().unwrap(),
        &["--capacity", "1"],
    );
    let php = php_clients(
        dir.path(),
        &format!("mysql:host=127.0.0.1;port={};dbname=x", gate.port()),
        3,
        "SELECT 1",
        &[],
    );
    for line in &php {
        assert!(
            line.contains("[2003] dbslots gate") && line.contains(&upstream),
            "{php:?}"
        );
    }
    let r = gate.report_when("three failures", |r| r.upstream_failures == 3);
    assert_eq!(r.queue_timeouts, 0);
    let pool = Pool::open(pool_dir.as_path(), PoolOptions::new()).unwrap();
    assert_eq!(pool.stats().unwrap().active, 0);
}

/// Makes a CA and a server certificate for 127.0.0.1 with openssl.
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=dbslots test CA",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server-key.pem",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    // Another CA, which did not sign the server's certificate.
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=other CA",
        "-keyout",
        "other-key.pem",
        "-out",
        "other.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server-key.pem"),
    )
}

#[test]
fn tls_negotiated_by_client_and_server_passes_through_and_is_verified() {
    if !php_available() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(certs.path());
    let Some(server) = private_mysql(
        20,
        &[
            format!("--ssl-ca={}", ca.display()),
            format!("--ssl-cert={}", cert.display()),
            format!("--ssl-key={}", key.display()),
        ],
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let gate = GateProc::start(
        dir.path(),
        &format!("127.0.0.1:{}", server.port()),
        pool.to_str().unwrap(),
        &["--capacity", "2"],
    );
    let sql = "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'";
    // mariadb: verify the server's certificate against our CA.
    let ca_flag = format!("--ssl-ca={}", ca.display());
    let out = finish(mariadb_clients(
        gate.port(),
        1,
        sql,
        &[&ca_flag, "--ssl-verify-server-cert"],
    ));
    let stdout = String::from_utf8_lossy(&out[0].stdout);
    assert!(
        out[0].status.success() && stdout.trim().len() > 3,
        "mariadb over TLS through the gate: {stdout} {}",
        String::from_utf8_lossy(&out[0].stderr)
    );
    // PHP PDO with MYSQL_ATTR_SSL_CA and VERIFY_SERVER_CERT (ssl-mode
    // VERIFY_CA and more).
    let dsn = format!(
        "mysql:host=127.0.0.1;port={};dbname={}",
        gate.port(),
        dbslots_testkit::DATABASE
    );
    let php = php_clients(
        dir.path(),
        &dsn,
        1,
        sql,
        &[("PHP_SSL_CA", ca.to_str().unwrap())],
    );
    assert!(php[0].starts_with("OK ") && php[0].len() > 6, "{php:?}");
    // The verification is real: a client trusting another CA is refused.
    let other = certs.path().join("other.pem");
    let php = php_clients(
        dir.path(),
        &dsn,
        1,
        sql,
        &[("PHP_SSL_CA", other.to_str().unwrap())],
    );
    assert!(php[0].starts_with("ERR"), "{php:?}");
    let other_flag = format!("--ssl-ca={}", other.display());
    let out = finish(mariadb_clients(
        gate.port(),
        1,
        sql,
        &[&other_flag, "--ssl-verify-server-cert"],
    ));
    assert!(!out[0].status.success(), "a wrong CA must not verify");
}

#[test]
fn idle_timeout_closes_an_idle_client_for_a_waiter_but_not_a_running_query() {
    let Some(upstream) = shared_upstream() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let gate = GateProc::start(
        dir.path(),
        &upstream,
        pool.to_str().unwrap(),
        &[
            "--capacity",
            "2",
            "--idle-timeout",
            "1",
            "--queue-timeout",
            "10",
        ],
    );
    let url = gate.url();
    runtime().block_on(async move {
        let mut idle = mysql_async::Conn::from_url(&url)
            .await
            .expect("first client");
        let _: Option<u8> = idle.query_first("SELECT 1").await.unwrap();
        let mut busy = mysql_async::Conn::from_url(&url)
            .await
            .expect("second client");
        // Both slots are held now; nobody waits, so nobody is closed even
        // after the idle timeout.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _: Option<u8> = idle
            .query_first("SELECT 1")
            .await
            .expect("no waiter, not closed");
        let sleeping = tokio::spawn(async move {
            let v: Option<u8> = busy.query_first("SELECT SLEEP(3)").await?;
            busy.disconnect().await?;
            Ok::<_, mysql_async::Error>(v)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let mut waiter = mysql_async::Conn::from_url(&url)
            .await
            .expect("the waiter gets in");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(700) && waited < Duration::from_millis(2500),
            "the waiter got the idle client's slot after {waited:?}"
        );
        let _: Option<u8> = waiter.query_first("SELECT 1").await.unwrap();
        assert!(
            idle.query_first::<u8, _>("SELECT 1").await.is_err(),
            "the idle client was closed"
        );
        assert_eq!(
            sleeping
                .await
                .unwrap()
                .expect("SELECT SLEEP(3) was not closed"),
            Some(0)
        );
        waiter.disconnect().await.unwrap();
    });
    let r = gate.report_when("one idle close", |r| r.idle_closes == 1 && r.active == 0);
    assert_eq!(r.admitted, 3);
}

#[test]
fn an_idle_timeout_longer_than_a_clock_holds_never_closes_a_client() {
    let Some(upstream) = shared_upstream() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let gate = GateProc::start(
        dir.path(),
        &upstream,
        pool.to_str().unwrap(),
        &[
            "--capacity",
            "1",
            "--idle-timeout",
            "1e30",
            "--queue-timeout",
            "1.5",
        ],
    );
    let url = gate.url();
    runtime().block_on(async move {
        let mut idle = mysql_async::Conn::from_url(&url)
            .await
            .expect("first client");
        let _: Option<u8> = idle.query_first("SELECT 1").await.unwrap();
        let err = mysql_async::Conn::from_url(&url)
            .await
            .expect_err("the waiter times out: the idle client keeps its slot");
        assert!(err.to_string().contains("1040"), "{err}");
        let _: Option<u8> = idle
            .query_first("SELECT 1")
            .await
            .expect("the idle client was not closed");
    });
    let r = gate.report_when("a queue timeout", |r| r.queue_timeouts == 1);
    assert_eq!(r.idle_closes, 0);
}

#[test]
fn sigkill_of_the_gate_frees_its_slots_and_sigterm_drains() {
    let Some(upstream) = shared_upstream() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pool_dir = dir.path().join("pool");
    let pool_arg = pool_dir.to_str().unwrap().to_string();
    let rt = runtime();

    // SIGKILL: three connections hold three slots; the kernel frees them.
    let mut gate = GateProc::start(dir.path(), &upstream, &pool_arg, &["--capacity", "3"]);
    let pool = Pool::open(pool_dir.as_path(), PoolOptions::new()).unwrap();
    let url = gate.url();
    let conns = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(mysql_async::Conn::from_url(&url).await.expect("connects"));
        }
        v
    });
    assert_eq!(pool.stats().unwrap().active, 3);
    gate.signal(libc::SIGKILL);
    gate.wait_exit(Duration::from_secs(5));
    assert_eq!(pool.stats().unwrap().active, 0, "SIGKILL freed the slots");
    assert!(
        dbslots_gate::read_gates_in(&pool_dir.join("gates"))
            .unwrap()
            .is_empty()
    );
    rt.block_on(async {
        for mut c in conns {
            assert!(
                c.query_drop("SELECT 1").await.is_err(),
                "its sockets are closed"
            );
        }
    });

    // SIGTERM: a running query finishes, new clients are not accepted, and
    // the gate exits as soon as the last connection ends.
    let mut gate = GateProc::start(dir.path(), &upstream, &pool_arg, &["--drain", "20"]);
    let url = gate.url();
    let port = gate.port();
    let (result, exited_after) = rt.block_on(async {
        let query = running_query(&url, "SELECT SLEEP(1.5)").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        gate.signal(libc::SIGTERM);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "a draining gate accepts nobody"
        );
        let started = Instant::now();
        let result = query.await.unwrap();
        let status = gate.wait_exit(Duration::from_secs(5));
        assert!(status.success(), "{status}");
        (result, started.elapsed())
    });
    assert_eq!(result.expect("the running query finished"), Some(0));
    assert!(exited_after < Duration::from_secs(5), "{exited_after:?}");
    assert!(gate.log_text().contains("draining"), "{}", gate.log_text());

    // The drain time is a bound: an idle client does not keep it open, and
    // a second SIGTERM closes at once.
    // A drain time past what a clock holds means no limit, not a crash of
    // the signal handling.
    for (drain, second_term, bound) in [("1", false, 4), ("30", true, 3), ("1e19", true, 3)] {
        let mut gate = GateProc::start(dir.path(), &upstream, &pool_arg, &["--drain", drain]);
        let url = gate.url();
        rt.block_on(async {
            let mut idle = mysql_async::Conn::from_url(&url).await.expect("connects");
            gate.signal(libc::SIGTERM);
            if second_term {
                tokio::time::sleep(Duration::from_millis(200)).await;
                gate.signal(libc::SIGTERM);
            }
            gate.wait_exit(Duration::from_secs(bound));
            assert!(idle.query_drop("SELECT 1").await.is_err());
        });
        assert_eq!(pool.stats().unwrap().active, 0);
    }
}

/// The scheduler's run time of each of a process's threads, by thread name.
/// How a client that connected to a stopping gate was sent away.
#[derive(Debug, Default)]
struct Sendoffs {
    /// Told why: an error packet with code 1040.
    refused_with_1040: u32,
    /// Reset while still in the kernel's accept queue, as at any closed port.
    reset: u32,
    /// Closed without a word: what no client may see.
    closed_silently: u32,
    /// Something else (the first bytes, or the error).
    other: Vec<String>,
}

/// Connects again and again until the port is closed, noting how each
/// connection ended.
fn connect_until_closed(addr: &str) -> Sendoffs {
    let mut seen = Sendoffs::default();
    while let Ok(mut c) = std::net::TcpStream::connect(addr) {
        // Once the gate's port (an ephemeral one) is closed, a connect may
        // pick it as its own local port and connect to itself.
        if c.local_addr().ok() == c.peer_addr().ok() {
            break;
        }
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut bytes = Vec::new();
        match c.read_to_end(&mut bytes) {
            Ok(0) => seen.closed_silently += 1,
            // Header (4 bytes), 0xff, then the code.
            Ok(_)
                if bytes.len() > 7 && bytes[4] == 0xff && bytes[5..7] == 1040u16.to_le_bytes() =>
            {
                seen.refused_with_1040 += 1;
            }
            Ok(_) => seen.other.push(format!("{bytes:02x?}")),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => seen.reset += 1,
            // A connection the handshake completed just as the listener
            // closed may be left established on the client's side only
            // (the kernel's, not the gate's doing): a byte sent to it is
            // answered with a reset.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ = c.write_all(b"?");
                c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                match c.read(&mut [0u8; 64]) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => seen.reset += 1,
                    _ => seen.other.push(format!("no answer within 3 s: {e}")),
                }
            }
            Err(e) => seen.other.push(e.to_string()),
        }
    }
    seen
}

/// Clients keep connecting while the gate stops: each one the gate
/// accepted hears error 1040 (shutting down), however close to the stop it
/// came, before the gate's runtime goes; none is just closed. Those still
/// in the kernel's accept queue are reset, as at any port that closes.
#[test]
fn clients_arriving_as_the_gate_stops_hear_1040_and_are_never_just_dropped() {
    let _heavy = crate::support::heavy_or_sensitive();
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(
        dir.path().join("pool").as_path(),
        PoolOptions::new().capacity(1),
    )
    .unwrap();
    // Every client queues: the stop finds some queued, some just accepted,
    // some not yet accepted.
    let _held = pool.try_acquire().unwrap().expect("the only slot");
    let mut total = Sendoffs::default();
    for round in 0..20 {
        // As `dbslots gate` runs it: a current-thread runtime and a relay
        // thread, the runtime shut down as soon as `run` returns.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let options = dbslots_gate::GateOptions::new(
            vec!["127.0.0.1:0".parse().unwrap()],
            "127.0.0.1:9".parse().unwrap(),
        )
        .relay_threads(1)
        .name(Some(format!("stopping-{round}")))
        .stats_dir(Some(dir.path().join("gates")));
        let gate = runtime
            .block_on(dbslots_gate::Gate::bind(pool.clone(), options))
            .unwrap();
        let addr = gate.local_endpoints()[0].to_string();
        let clients: Vec<_> = (0..16)
            .map(|_| {
                let addr = addr.clone();
                std::thread::spawn(move || connect_until_closed(&addr))
            })
            .collect();
        let control = gate.control();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            control.stop();
        });
        runtime.block_on(gate.run());
        runtime.shutdown_timeout(Duration::from_secs(1));
        stopper.join().unwrap();
        for c in clients {
            let seen = c.join().unwrap();
            total.refused_with_1040 += seen.refused_with_1040;
            total.reset += seen.reset;
            total.closed_silently += seen.closed_silently;
            total.other.extend(seen.other);
        }
    }
    eprintln!("{total:?}");
    assert!(total.refused_with_1040 >= 16 * 20, "{total:?}");
    assert_eq!(total.closed_silently, 0, "{total:?}");
    assert!(total.other.is_empty(), "{total:?}");
}

fn thread_run_times(pid: u32) -> Vec<(String, u64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the gate's threads") {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let schedstat = std::fs::read_to_string(task.join("schedstat")).unwrap_or_default();
        let ns = schedstat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        threads.push((name.trim().to_string(), ns));
    }
    threads.sort();
    threads
}

#[test]
fn relay_threads_share_the_clients_keep_the_cap_and_drain() {
    let Some(upstream) = shared_upstream() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pool_dir = dir.path().join("pool");
    let mut gate = GateProc::start(
        dir.path(),
        &upstream,
        pool_dir.to_str().unwrap(),
        &["--capacity", "4", "--threads", "2", "--drain", "20"],
    );
    let pool = Pool::open(pool_dir.as_path(), PoolOptions::new()).unwrap();
    // The accepting thread relays too; --threads 2 adds one relay thread.
    let relay = |gate: &GateProc| -> u64 {
        let times = thread_run_times(gate.child.id());
        let relays: Vec<_> = times
            .iter()
            .filter(|(n, _)| n.starts_with("relay-"))
            .collect();
        assert_eq!(relays.len(), 1, "one relay thread: {times:?}");
        relays[0].1
    };
    let url = gate.url();
    let rt = runtime();

    // Clients one after another stay on the accepting thread: the relay
    // thread does not even wake up.
    let idle = relay(&gate);
    rt.block_on(async {
        for _ in 0..5 {
            let mut c = mysql_async::Conn::from_url(&url).await.expect("connects");
            c.query_drop("SELECT 1").await.unwrap();
            c.disconnect().await.unwrap();
            // Until the gate has closed the server's side, the connection
            // still counts on its thread.
            while pool.stats().unwrap().active > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert_eq!(relay(&gate), idle, "sequential clients were handed over");

    // 24 clients at once, each with a few round trips: all served, never
    // more than 4 at a time, and the relay thread carries some.
    let most = rt.block_on(async {
        let clients: Vec<_> = (0..24)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    let mut c = mysql_async::Conn::from_url(&url).await?;
                    for _ in 0..3 {
                        c.query_drop("SELECT SLEEP(0.02)").await?;
                    }
                    c.disconnect().await
                })
            })
            .collect();
        let mut most = 0;
        while clients.iter().any(|c| !c.is_finished()) {
            most = most.max(pool.stats().unwrap().active);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for c in clients {
            c.await.unwrap().expect("a client through a relay thread");
        }
        most
    });
    assert_eq!(most, 4, "the 4 slots are used, and never more");
    let r = gate.report_when("all 29 admitted and closed", |r| {
        r.admitted == 29 && r.active == 0
    });
    assert_eq!(r.queue_timeouts, 0);
    assert_eq!(pool.stats().unwrap().active, 0, "every slot came back");
    assert!(relay(&gate) > idle, "the relay thread relayed some clients");

    // SIGTERM: queries running on both threads finish (the first client
    // stays on the accepting thread, the second goes to the relay thread,
    // which then has fewer), then the gate exits, its slots given back.
    let before = relay(&gate);
    let (results, status) = rt.block_on(async {
        let here = running_query(&url, "SELECT SLEEP(1)").await;
        let relayed = running_query(&url, "SELECT SLEEP(1)").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            relay(&gate) > before,
            "the second client is on the relay thread"
        );
        gate.signal(libc::SIGTERM);
        let results = [here.await.unwrap(), relayed.await.unwrap()];
        (results, gate.wait_exit(Duration::from_secs(5)))
    });
    for result in results {
        assert_eq!(result.expect("the running query finished"), Some(0));
    }
    assert!(status.success(), "{status}: {}", gate.log_text());
    assert_eq!(pool.stats().unwrap().active, 0);
}

#[test]
fn a_second_gate_under_a_taken_name_is_told_which_gate_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let pool = pool.to_str().unwrap();
    // Nobody needs to answer upstream: the clash is found at start.
    let cap = ["--capacity", "2"];
    let first = GateProc::start_as(dir.path(), Some("web"), "127.0.0.1:9", pool, &cap, &[]);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbslots"));
    cmd.args([
        "gate",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:9",
    ])
    .args(["--pool", pool, "--name", "web"])
    .env_remove("DBSLOTS_POOL");
    let out = output_within(cmd, Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let holder = format!(
        "another running gate publishes under this name: pid {} on host {}, listening on {}",
        first.child.id(),
        dbslots_core::env::host_name(),
        first.addr
    );
    assert!(err.contains(&holder), "{err}");
    assert!(err.contains("another --name, or stop that one"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A uid no account uses: the process limit counts its processes alone.
const UNUSED_UID: &str = "64999";

#[test]
fn a_process_limit_too_low_for_the_relay_threads_is_a_clear_error() {
    // RLIMIT_NPROC does not bind root, and the tests run as root: the gate
    // runs as an unused uid (setpriv), under a limit of 4 (prlimit) that
    // its 16 threads cannot fit.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run the gate as another user");
        return;
    }
    let as_other = |args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid",
            UNUSED_UID,
            "--regid",
            UNUSED_UID,
            "--clear-groups",
        ])
        .args(["prlimit", "--nproc=4", "--"])
        .arg(env!("CARGO_BIN_EXE_dbslots"))
        .args(args)
        .env_remove("DBSLOTS_POOL");
        cmd
    };
    let usable = as_other(&["--version"]).output();
    if !usable.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: setpriv, prlimit or a dbslots another user may run is missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let pool = dir.path().join("pool");
    let pool = pool.to_str().unwrap();
    let mut gate = as_other(&[
        "gate",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:9",
    ]);
    gate.args(["--pool", pool, "--capacity", "2", "--threads", "16"]);
    let out = output_within(gate, Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot start the gate's relay threads")
            && err.contains("lower the number of threads or raise the process limits (ulimit -u)"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // Nothing was left published (root does not open a pool another user
    // owns, so its slots are not looked at: the gate's exit freed them).
    let gates = dbslots_gate::read_gates_in(&dir.path().join("pool/gates")).unwrap_or_default();
    assert!(gates.is_empty(), "{gates:?}");
}

#[test]
fn a_dropped_gate_gives_back_the_leases_of_connections_on_its_relay_threads() {
    let Some(redis) = dbslots_testkit::shared_redis() else {
        return;
    };
    let Some(upstream) = shared_upstream() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sep = if redis.contains('?') { '&' } else { '?' };
    let addr = format!("{redis}{sep}pool=gate-dropped-{}", std::process::id());
    let pool = Pool::open(addr.as_str(), PoolOptions::new().capacity(4)).unwrap();
    let active = |pool: &Pool| pool.stats().unwrap().active;
    runtime().block_on(async {
        let options = dbslots_gate::GateOptions::new(
            vec!["127.0.0.1:0".parse().unwrap()],
            upstream.parse().unwrap(),
        )
        .relay_threads(1)
        .stats_dir(Some(dir.path().join("gates")));
        let gate = dbslots_gate::Gate::bind(pool.clone(), options)
            .await
            .unwrap();
        let url = format!(
            "mysql://{USER}:{PASSWORD}@{}/{}?prefer_socket=false",
            gate.local_endpoints()[0],
            dbslots_testkit::DATABASE
        );
        // A control handle (a signal handler's, say) outlives the gate.
        let control = gate.control();
        let run = tokio::spawn(gate.run());
        // The first client stays on the accepting side (a tie), the second
        // goes to the relay thread, which then has fewer.
        let mut here = mysql_async::Conn::from_url(&url).await.unwrap();
        let mut relayed = mysql_async::Conn::from_url(&url).await.unwrap();
        assert_eq!(active(&pool), 2);

        // Dropping the gate stops its relay thread with a connection open:
        // that one is closed and its lease given back at once, although
        // the gate's state lives on (the control handle, the connection on
        // the accepting side, which goes on until the last handle is gone).
        run.abort();
        let _ = run.await;
        async fn leases_down_to(pool: &Pool, n: u32) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while pool.stats().unwrap().active > n {
                assert!(
                    Instant::now() < deadline,
                    "{} leases held, {n} expected",
                    pool.stats().unwrap().active
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        leases_down_to(&pool, 1).await;
        assert!(relayed.query_drop("SELECT 1").await.is_err(), "closed");
        here.query_drop("SELECT 1").await.unwrap();
        drop(control);
        leases_down_to(&pool, 0).await;
        assert!(here.query_drop("SELECT 1").await.is_err(), "closed");
    });
}

#[test]
fn two_gates_on_one_redis_pool_keep_the_server_within_the_shared_capacity() {
    let _heavy = crate::support::heavy_or_sensitive();
    if !php_available() {
        return;
    }
    let Some(redis) = dbslots_testkit::shared_redis() else {
        return;
    };
    let Some(server) = private_mysql(50, &[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let runtime_dir = dir.path().join("run");
    std::fs::create_dir(&runtime_dir).unwrap();
    let sep = if redis.contains('?') { '&' } else { '?' };
    let pool = format!("{redis}{sep}pool=gate-test-{}", std::process::id());
    let upstream = format!("127.0.0.1:{}", server.port());
    let env = [("XDG_RUNTIME_DIR", runtime_dir.as_path())];
    let a = GateProc::start_with(dir.path(), &upstream, &pool, &["--capacity", "5"], &env);
    let b = GateProc::start_with(dir.path(), &upstream, &pool, &["--capacity", "5"], &env);
    let admin = server.admin_url();
    runtime().block_on(async {
        let mut c = mysql_async::Conn::from_url(&admin).await.unwrap();
        c.query_drop("FLUSH STATUS").await.unwrap();
        c.disconnect().await.unwrap();
    });
    let sql = "SELECT SLEEP(0.05)";
    let results: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = [&a, &b]
            .iter()
            .map(|g| {
                let dsn = format!(
                    "mysql:host=127.0.0.1;port={};dbname={}",
                    g.port(),
                    dbslots_testkit::DATABASE
                );
                let sub = dir.path().join(format!("php-{}", g.port()));
                std::fs::create_dir_all(&sub).unwrap();
                s.spawn(move || php_clients(&sub, &dsn, 50, sql, &[]))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let errors: Vec<_> = results.iter().filter(|l| !l.starts_with("OK")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let max_used = runtime().block_on(status_value(&admin, "Max_used_connections"));
    // Five slots, plus the admin connection that reads the figure.
    assert!(
        max_used <= 6,
        "Max_used_connections {max_used} > 5 + the monitor"
    );
    let ra = a.report_when("a's clients", |r| r.admitted == 50);
    let rb = b.report_when("b's clients", |r| r.admitted == 50);
    assert_eq!(ra.capacity, 5);
    assert_eq!(rb.queue_timeouts, 0);
    eprintln!("two gates, one Redis pool of 5: Max_used_connections {max_used}");
}

/// The gates `dbslots status --json` shows for `pool`, run with `env` (as
/// on another host).
fn status_gates(pool: &str, env: &[(&str, &Path)]) -> Vec<serde_json::Value> {
    let mut cmd = crate::support::dbslots();
    cmd.args(["status", "--json", "--pool", pool]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (out, stdout, stderr) = crate::support::run(&mut cmd);
    assert!(out.status.success(), "dbslots status: {stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    doc["gates"].as_array().cloned().unwrap_or_default()
}

/// The gate named `name` among `gates`.
fn gate_named<'a>(gates: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    gates.iter().find(|g| g["name"] == name)
}

#[test]
fn gates_of_a_redis_pool_on_two_hosts_are_seen_from_any_host_and_a_killed_one_lapses() {
    let _heavy = crate::support::heavy_or_sensitive();
    let Some(redis) = dbslots_testkit::shared_redis() else {
        return;
    };
    let (upstream, _server) = numbering_server();
    let dir = tempfile::tempdir().unwrap();
    let sep = if redis.contains('?') { '&' } else { '?' };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let pool = format!("{redis}{sep}pool=gate-hosts-{}-{nanos}", std::process::id());
    // Three "hosts": each its own DBSLOTS_HOST and runtime directory, so
    // nothing on disk is shared between them.
    let host = |name: &str| {
        let run = dir.path().join(format!("run-{name}"));
        std::fs::create_dir(&run).unwrap();
        (run, PathBuf::from(name))
    };
    let (run_a, host_a) = host("host-a");
    let (run_b, host_b) = host("host-b");
    let (run_c, host_c) = host("host-c");
    let env_a = [
        ("XDG_RUNTIME_DIR", run_a.as_path()),
        ("DBSLOTS_HOST", host_a.as_path()),
    ];
    let env_b = [
        ("XDG_RUNTIME_DIR", run_b.as_path()),
        ("DBSLOTS_HOST", host_b.as_path()),
    ];
    let env_c = [
        ("XDG_RUNTIME_DIR", run_c.as_path()),
        ("DBSLOTS_HOST", host_c.as_path()),
    ];
    let cap = ["--capacity", "2"];
    let mut a = GateProc::start_as(dir.path(), Some("web-a"), &upstream, &pool, &cap, &env_a);
    let mut b = GateProc::start_as(dir.path(), Some("web-b"), &upstream, &pool, &cap, &env_b);
    // Three clients through a, one through b: each is greeted by the
    // stand-in server, then hangs up.
    for (gate, n) in [(&a, 3), (&b, 1)] {
        for _ in 0..n {
            let mut c = std::net::TcpStream::connect(&gate.addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut greeting = [0u8; 8];
            c.read_exact(&mut greeting)
                .expect("greeted through the gate");
        }
    }
    a.report_when("a's clients", |r| r.admitted == 3 && r.active == 0);
    b.report_when("b's clients", |r| r.admitted == 1 && r.active == 0);

    // `dbslots status` on a third host sees both gates, with their hosts.
    let gates = status_gates(&pool, &env_c);
    assert_eq!(gates.len(), 2, "{gates:#?}");
    let ga = gate_named(&gates, "web-a").expect("web-a");
    let gb = gate_named(&gates, "web-b").expect("web-b");
    assert_eq!(
        (&ga["host"], &ga["pid"], &ga["admitted"]),
        (&"host-a".into(), &a.child.id().into(), &3.into()),
        "{gates:#?}"
    );
    assert_eq!(
        (&gb["host"], &gb["pid"], &gb["admitted"]),
        (&"host-b".into(), &b.child.id().into(), &1.into()),
        "{gates:#?}"
    );
    // So do `dbslots serve`'s JSON and /metrics.
    let serve = crate::support::Serve::start(&["--pool", &pool]);
    let api = serve.get("/api/pool-stats").json();
    let api_gates = api["gates"].as_array().cloned().unwrap_or_default();
    assert_eq!(api_gates.len(), 2, "{api:#}");
    assert_eq!(gate_named(&api_gates, "web-b").unwrap()["host"], "host-b");
    let text = serve.get("/metrics").body;
    let families = crate::support::prom::parse(&text).expect("valid exposition");
    let admitted = |gate: &str, host: &str| {
        crate::support::prom::value(
            &families,
            "dbslots_gate_admitted_total",
            &[("gate", gate), ("host", host)],
        )
    };
    assert_eq!(admitted("web-a", "host-a"), 3.0);
    assert_eq!(admitted("web-b", "host-b"), 1.0);
    drop(serve);

    // Without --name, a gate's name says its host: the same command on
    // every host is fine.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbslots"));
    cmd.args(["gate", "--listen", "127.0.0.1:0", "--upstream", &upstream])
        .args(["--pool", &pool])
        .env_remove("DBSLOTS_POOL")
        .envs(env_c)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut unnamed = cmd.spawn().expect("dbslots gate starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let gates = status_gates(&pool, &env_c);
        if let Some(g) = gates.iter().find(|g| g["pid"] == unnamed.id()) {
            break g.clone();
        }
        assert!(Instant::now() < deadline, "{gates:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        shown["name"]
            .as_str()
            .unwrap()
            .starts_with("host-c_127.0.0.1_"),
        "{shown:#}"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(unnamed.id() as i32, libc::SIGTERM) };
    assert!(unnamed.wait().unwrap().success());

    // A name is the pool's: a gate on host c cannot take web-b's while
    // web-b lives (it waits for the report to lapse, then gives up).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbslots"));
    cmd.args(["gate", "--listen", "127.0.0.1:0", "--upstream", &upstream])
        .args(["--pool", &pool, "--name", "web-b"])
        .env_remove("DBSLOTS_POOL")
        .envs(env_c);
    let out = output_within(cmd, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let holder = format!(
        "another running gate publishes under this name: pid {} on host host-b, listening on {}",
        b.child.id(),
        b.addr
    );
    assert!(err.contains(&holder), "{err}");
    assert!(err.contains("another --name, or stop that one"), "{err}");

    // A gate killed with SIGKILL disappears from every host within the
    // report's lifetime (5 s) plus slack.
    b.signal(libc::SIGKILL);
    b.wait_exit(Duration::from_secs(5));
    let killed = Instant::now();
    loop {
        let gates = status_gates(&pool, &env_c);
        if gate_named(&gates, "web-b").is_none() {
            assert!(gate_named(&gates, "web-a").is_some(), "{gates:#?}");
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(8),
            "the killed gate is still shown after {:?}: {gates:#?}",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let lapsed = killed.elapsed();
    assert!(
        lapsed > Duration::from_secs(3),
        "it lapsed too soon: {lapsed:?}"
    );

    // A killed gate restarted under its name at once waits for its old
    // report to lapse, then runs.
    a.signal(libc::SIGKILL);
    a.wait_exit(Duration::from_secs(5));
    let killed = Instant::now();
    let a2 = GateProc::start_as(dir.path(), Some("web-a"), &upstream, &pool, &cap, &env_a);
    let restarted = killed.elapsed();
    assert!(
        restarted < Duration::from_secs(8),
        "restart took {restarted:?}"
    );
    assert!(a2.log_text().contains("waiting up to"), "{}", a2.log_text());
    let gates = status_gates(&pool, &env_c);
    assert_eq!(gates.len(), 1, "{gates:#?}");
    assert_eq!(gates[0]["pid"], a2.child.id(), "{gates:#?}");
    assert_eq!(gates[0]["admitted"], 0, "{gates:#?}");

    // A gate that stops cleanly withdraws its report at once.
    a2.signal(libc::SIGTERM);
    let mut a2 = a2;
    assert!(a2.wait_exit(Duration::from_secs(10)).success());
    assert!(status_gates(&pool, &env_c).is_empty());
    eprintln!(
        "gates on two hosts: a killed gate left status after {lapsed:?}; a restart under its name took {restarted:?}"
    );
}

/// A stand-in server for the tests that need thousands of connections: it
/// greets each connection with its accept number (8 bytes, little endian)
/// and keeps it open until the client closes.
fn numbering_server() -> (String, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = std::thread::spawn(move || {
        for (n, conn) in l.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.write_all(&(n as u64).to_le_bytes());
            std::thread::spawn(move || {
                let mut b = [0u8; 64];
                while matches!(conn.read(&mut b), Ok(k) if k > 0) {}
            });
        }
    });
    (addr, h)
}

/// A one-slot pool in `dir` whose only slot the test holds: clients queue
/// behind it, and the gate opens their connections to the server strictly
/// one after another once it is dropped, so [`numbering_server`]'s numbers
/// give the order they were served in. The pool's path and the slot.
fn held_one_slot_pool(dir: &Path) -> (String, dbslots_core::Slot) {
    let pool_dir = dir.join("pool");
    let pool = Pool::open(pool_dir.as_path(), PoolOptions::new().capacity(1)).unwrap();
    let held = pool.try_acquire().unwrap().expect("the only slot");
    (pool_dir.to_str().unwrap().to_owned(), held)
}

/// `n` clients connected to `addr` one after another (so in this order in
/// the gate's queue).
async fn connect_in_order(addr: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    clients
}

/// Client i (in connect order) is greeted with number i by
/// [`numbering_server`] (which numbers connections in the order the gate
/// opens them); each closes after its greeting, so the next gets the slot.
async fn assert_served_in_order(clients: Vec<tokio::net::TcpStream>, gate: &GateProc) {
    use tokio::io::AsyncReadExt;
    for (i, mut c) in clients.into_iter().enumerate() {
        let mut b = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(30), c.read_exact(&mut b))
            .await
            .unwrap_or_else(|_| panic!("client {i} was not served: {}", gate.log_text()))
            .unwrap_or_else(|e| panic!("client {i}: {e}: {}", gate.log_text()));
        assert_eq!(u64::from_le_bytes(b), i as u64, "served out of order");
    }
}

fn raise_nofile() {
    dbslots_gate::raise_open_file_limit().expect("raise the open-file limit");
}

#[test]
fn ten_thousand_queued_clients_are_held_and_served_in_order() {
    let _heavy = crate::support::heavy_or_sensitive();
    raise_nofile();
    let (upstream, _server) = numbering_server();
    let dir = tempfile::tempdir().unwrap();
    let (pool, held) = held_one_slot_pool(dir.path());
    let gate = GateProc::start(dir.path(), &upstream, &pool, &["--queue-timeout", "120"]);
    const N: usize = 10_000;
    let addr = gate.addr.clone();
    runtime().block_on(async move {
        let clients = connect_in_order(&addr, N).await;
        let r = gate.report_when("10,000 queued", |r| r.queued == N as u64);
        assert_eq!(r.accepted, N as u64);
        drop(held);
        let started = Instant::now();
        // Client i must be greeted with number i (the server numbers
        // connections in the order the gate opens them), and each closes
        // after its greeting so the next one gets the slot.
        assert_served_in_order(clients, &gate).await;
        eprintln!(
            "10,000 queued clients served in order in {:?}",
            started.elapsed()
        );
        let r = gate.report_when("all served", |r| r.admitted == N as u64 && r.active == 0);
        assert_eq!(r.queue_timeouts, 0);
    });
}

#[test]
fn a_gate_out_of_open_files_keeps_clients_in_the_backlog_serves_them_in_order_and_warns_once() {
    // The gate may hold 96 descriptors (soft and hard: it cannot raise
    // them); 300 clients queue behind a held slot.
    const FILES: u64 = 96;
    const N: usize = 300;
    let (upstream, _server) = numbering_server();
    let dir = tempfile::tempdir().unwrap();
    let (pool, held) = held_one_slot_pool(dir.path());
    let gate = GateProc::spawn_adjusted(
        dir.path(),
        None,
        &upstream,
        &pool,
        &["--queue-timeout", "120"],
        &[],
        |cmd| {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit (async-signal-safe) runs in the child
            // between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    let limit = libc::rlimit {
                        rlim_cur: FILES,
                        rlim_max: FILES,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        },
    )
    .wait_started();
    let addr = gate.addr.clone();
    runtime().block_on(async move {
        let clients = connect_in_order(&addr, N).await;
        // The gate takes what its descriptors allow; the rest wait in the
        // kernel's backlog. Give its accept loop time to run into the
        // limit many times over.
        gate.report_when("clients queued", |r| r.queued > 0);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let log = gate.log_text();
        let warnings = log.matches("leaves room for no more clients").count();
        assert_eq!(warnings, 1, "one warning, not one per retry: {log}");
        assert!(
            log.contains("ulimit -Hn"),
            "the warning says how to raise the limit: {log}"
        );
        // It stopped short of the limit rather than running into it.
        assert!(!log.contains("out of open files"), "{log}");
        assert!(!log.contains("refused a client"), "{log}");
        let r = gate.report().expect("a report");
        assert!(
            r.accepted > 0 && r.accepted < N as u64,
            "the limit was not reached: {r:#?}"
        );
        drop(held);
        // Every client is served, in the order it connected: nobody in
        // the backlog was dropped, and a queued client given a slot has
        // the descriptor it needs to reach the server.
        assert_served_in_order(clients, &gate).await;
        let r = gate.report_when("all served", |r| r.admitted == N as u64 && r.active == 0);
        assert_eq!((r.refused, r.upstream_failures), (0, 0), "{r:#?}");
    });
}

fn rss_kib(pid: u32) -> u64 {
    dbslots_testkit::memory::status_kib(pid, "VmRSS").expect("VmRSS in /proc/PID/status")
}

#[test]
fn an_idle_relayed_connection_costs_the_gate_at_most_64_kib() {
    let _heavy = crate::support::heavy_or_sensitive();
    raise_nofile();
    let (upstream, _server) = numbering_server();
    let dir = tempfile::tempdir().unwrap();
    let pool_dir = dir.path().join("pool");
    const N: usize = 2_000;
    let gate = GateProc::start(
        dir.path(),
        &upstream,
        pool_dir.to_str().unwrap(),
        &["--capacity", "4000", "--idle-timeout", "3600"],
    );
    let addr = gate.addr.clone();
    let pid = gate.child.id();
    runtime().block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Warm up: the runtime's threads and the allocator's arenas.
        let mut warm = Vec::new();
        for _ in 0..100 {
            let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let mut b = [0u8; 8];
            c.read_exact(&mut b).await.unwrap();
            warm.push(c);
        }
        let before = rss_kib(pid);
        let mut clients = Vec::with_capacity(N);
        for _ in 0..N {
            let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let mut b = [0u8; 8];
            c.read_exact(&mut b).await.unwrap();
            // A little traffic the other way, like a login.
            c.write_all(&[7u8; 100]).await.unwrap();
            clients.push(c);
        }
        gate.report_when("all relayed", |r| r.active == (N + 100) as u64);
        let per_conn = (rss_kib(pid).saturating_sub(before)) as f64 / N as f64;
        eprintln!("gate memory per idle relayed connection: {per_conn:.1} KiB");
        assert!(per_conn <= 64.0, "{per_conn:.1} KiB per idle connection");
        drop(clients);
        drop(warm);
    });
}

/// `redis://[auth@]HOST:PORT/...` with HOST:PORT replaced by `127.0.0.1:port`.
fn redis_url_through(url: &str, port: u16) -> String {
    let rest = url.strip_prefix("redis://").expect("a redis:// URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let auth = authority.rsplit_once('@').map(|(a, _)| format!("{a}@"));
    format!(
        "redis://{}127.0.0.1:{port}/{path}",
        auth.unwrap_or_default()
    )
}

/// A gate's test setup with Redis behind a proxy the test can turn into a
/// black hole (bytes stop, sockets stay open, calls get no answer).
struct FreezableRedis {
    /// The shared MySQL: `host:port` for `--upstream`, and its URLs.
    upstream: String,
    mysql: dbslots_testkit::SharedMysql,
    proxy: dbslots_testkit::FreezableProxy,
    /// A pool of its own, reached through the proxy, with `lease`.
    pool: String,
}

impl FreezableRedis {
    /// `None` when the test servers are missing (the test is skipped).
    fn start(lease: Duration, pool_name: &str) -> Option<FreezableRedis> {
        let redis = dbslots_testkit::shared_redis()?;
        let mysql = dbslots_testkit::shared_mysql()?;
        let opts = mysql_async::Opts::from_url(&mysql.user_url).expect("a MySQL URL");
        let upstream = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
        let redis_port: u16 = redis
            .strip_prefix("redis://")
            .and_then(|r| r.split('/').next())
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .expect("redis://HOST:PORT/...");
        let proxy = dbslots_testkit::FreezableProxy::start(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            redis_port,
        )))
        .expect("a proxy in front of Redis");
        let base = redis_url_through(&redis, proxy.port());
        let sep = if base.contains('?') { '&' } else { '?' };
        let pool = format!(
            "{base}{sep}lease_ms={}&pool={pool_name}-{}",
            lease.as_millis(),
            std::process::id()
        );
        Some(FreezableRedis {
            upstream,
            mysql,
            proxy,
            pool,
        })
    }

    /// A gate of capacity 2 on the pool, with a runtime directory of its
    /// own in `dir`.
    fn gate(&self, dir: &Path) -> GateProc {
        self.spawn_gate(dir).wait_started()
    }

    /// [`FreezableRedis::gate`] without waiting for the gate to start.
    fn spawn_gate(&self, dir: &Path) -> GateProc {
        let runtime_dir = dir.join("run");
        std::fs::create_dir(&runtime_dir).unwrap();
        let env = [("XDG_RUNTIME_DIR", runtime_dir.as_path())];
        GateProc::spawn_as(
            dir,
            None,
            &self.upstream,
            &self.pool,
            &["--capacity", "2"],
            &env,
        )
    }
}

#[test]
fn a_connection_whose_lease_is_lost_is_closed_on_both_sides_before_the_lease_runs_out() {
    let _heavy = crate::support::heavy_or_sensitive();
    let lease = Duration::from_millis(2000);
    let Some(redis) = FreezableRedis::start(lease, "gate-lease") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gate = redis.gate(dir.path());
    let url = gate.url();
    let admin = redis.mysql.admin_url.clone();
    // A reference moves into the block; the proxy stays, since the gate's
    // counters are read through it afterwards.
    let proxy = &redis.proxy;
    runtime().block_on(async move {
        let mut conn = mysql_async::Conn::from_url(&url)
            .await
            .expect("through the gate");
        let id: u64 = conn
            .query_first("SELECT CONNECTION_ID()")
            .await
            .unwrap()
            .unwrap();
        // Renewals work: the connection outlives a lease.
        tokio::time::sleep(lease + Duration::from_millis(500)).await;
        let one: Option<u8> = conn.query_first("SELECT 1").await.expect("still relayed");
        assert_eq!(one, Some(1));

        proxy.freeze();
        let frozen = Instant::now();
        // The client learns it at its next query: the gate closed its socket.
        let closed_at = loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if conn.query_drop("SELECT 1").await.is_err() {
                break Instant::now();
            }
            assert!(
                frozen.elapsed() < lease * 3,
                "the connection was not closed after its lease was lost"
            );
        };
        // Before Redis could have given the slot to anyone else.
        assert!(
            closed_at - frozen < lease,
            "closed {:?} after the cut, the lease is {lease:?}",
            closed_at - frozen
        );
        // And the server's side is gone too.
        let mut admin = mysql_async::Conn::from_url(&admin).await.expect("admin");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let alive: Option<u64> = admin
                .query_first(format!(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {id}"
                ))
                .await
                .unwrap();
            if alive == Some(0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the server still has the connection the gate was told to close"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        admin.disconnect().await.unwrap();
        // The gate's counters live in Redis: readable again once it heals.
        proxy.thaw();
    });
    let r = gate.report_when("the lost lease counted", |r| r.leases_lost == 1);
    assert_eq!(r.active, 0, "{r:#?}");
    let log = gate.log_with("lease was lost");
    // The outage is logged once by the publisher, however many reposts
    // failed, and so is the recovery.
    assert_eq!(
        log.matches("cannot publish the gate's counters into the pool's Redis")
            .count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("publishing the gate's counters again"),
        "{log}"
    );
}

#[test]
fn a_sighup_while_the_gate_waits_for_its_redis_at_start_is_logged_not_fatal() {
    let _heavy = crate::support::heavy_or_sensitive();
    // A lease of 60 s: each Redis call may wait 5 s for an answer.
    let Some(redis) = FreezableRedis::start(Duration::from_secs(60), "gate-hup") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    redis.proxy.freeze();
    let gate = redis.spawn_gate(dir.path());
    // The gate is opening its pool (or binding), waiting for Redis: a
    // reload sent as the unit starts.
    std::thread::sleep(Duration::from_millis(1000));
    gate.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(200));
    redis.proxy.thaw();
    let mut gate = gate.wait_started();
    gate.log_with("counters (SIGHUP)");
    gate.signal(libc::SIGTERM);
    let status = gate.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}: {}", gate.log_text());
}

#[test]
fn a_gate_stops_promptly_while_its_redis_does_not_answer() {
    let _heavy = crate::support::heavy_or_sensitive();
    // A long lease, so each Redis call may wait many seconds for an answer
    // (its timeouts are a fraction of the lease): without a bound, the
    // last post and the withdrawal would hold the stop up for longer.
    let Some(redis) = FreezableRedis::start(Duration::from_secs(300), "gate-stop") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut gate = redis.gate(dir.path());
    let proxy = &redis.proxy;
    proxy.freeze();
    // Let a repost start and hang on the frozen Redis.
    std::thread::sleep(Duration::from_millis(1500));
    let asked = Instant::now();
    gate.signal(libc::SIGTERM);
    let status = gate.wait_exit(Duration::from_secs(60));
    let took = asked.elapsed();
    let log = gate.log_text();
    assert!(status.success(), "{status}: {log}");
    // The withdrawal is given up after the report's lifetime (5 s): it
    // lapses anyway.
    assert!(
        took < Duration::from_secs(9),
        "the gate took {took:?} to stop while Redis did not answer: {log}"
    );
    assert!(log.contains("they lapse within"), "{log}");
    proxy.thaw();
}
