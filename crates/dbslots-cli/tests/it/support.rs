//! What the CLI tests share: the binary under test ([`dbslots`]), polling,
//! a pool with holders and waiters ([`BusyPool`]), a running
//! `dbslots serve` ([`Serve`]), a tiny HTTP client ([`http`]) and a strict
//! reader of the Prometheus text format ([`prom`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The binary under test, without a pool, a slot or a server from the
/// environment, logging warnings and errors only.
pub(crate) fn dbslots() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbslots"));
    cmd.env_remove("DBSLOTS_POOL")
        .env_remove("DBSLOTS_SLOT")
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn");
    cmd
}

/// Runs `cmd` to its end: its output, stdout and stderr as text.
pub(crate) fn run(cmd: &mut Command) -> (std::process::Output, String, String) {
    let out = cmd.output().expect("dbslots runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// A pipe whose reading end is already closed, for a child's stdout or
/// stderr: every write to it fails with EPIPE, as when the reader went
/// away (`| head -1`, a closed terminal).
pub(crate) fn broken_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    writer
}

/// A current-thread tokio runtime for a test's own async calls.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A private server that refuses anything but TLS
/// (`require_secure_transport=ON`), and the path of its CA certificate;
/// `None` (skipped) without a way to start one.
pub(crate) fn mysql_requiring_tls() -> Option<(dbslots_testkit::MysqlServer, String)> {
    let server = dbslots_testkit::private_mysql(dbslots_testkit::MysqlOptions {
        require_secure_transport: true,
        ..Default::default()
    })?;
    let ca = server.tls().expect("certificates").ca.display().to_string();
    Some((server, ca))
}

/// Held by the tests that saturate the machine (the gate's thousands of
/// clients) and by those that measure memory or race a SIGKILL against the
/// spawner's bookkeeping, so that the latter never run beside the former on
/// a 2-core CI machine.
pub(crate) fn heavy_or_sensitive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}

/// Polls `probe` every 20 ms until it returns `Some`, for at most `limit`.
#[track_caller]
pub(crate) fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `dbslots status --json`, or `None` while the pool does not exist yet.
pub(crate) fn status(pool: &str) -> Option<Value> {
    let out = dbslots()
        .args(["status", "--json", "--pool", pool])
        .output()
        .expect("run dbslots status");
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("status --json is JSON"))
}

/// How a test starts `dbslots`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Launch {
    /// As a child of the test.
    Direct,
    /// As the first process of a pid namespace of its own (`unshare
    /// --pid --fork --mount-proc`), whose session and group leaders lie
    /// outside it, as under a CI runner that entered a container: there
    /// `getsid(0)` and `getpgrp()` give 0.
    PidNamespace,
}

impl Launch {
    /// Starts `cmd` this way: the child to wait for (`unshare` in a
    /// namespace) and the pid of `dbslots` itself as the test sees it.
    /// `None`, after a SKIPPED line, where no pid namespace can be made
    /// (no `unshare`, or no privilege for it).
    pub(crate) fn start(self, cmd: &mut Command) -> Option<(Child, u32)> {
        let mut cmd = match self {
            Launch::Direct => {
                let child = cmd.spawn().expect("the dbslots binary runs");
                let pid = child.id();
                return Some((child, pid));
            }
            Launch::PidNamespace => {
                let probe = Command::new("unshare")
                    .args(["--pid", "--fork", "--mount-proc", "true"])
                    .stderr(Stdio::null())
                    .status();
                if !probe.is_ok_and(|s| s.success()) {
                    eprintln!(
                        "SKIPPED: cannot make a pid namespace (unshare --pid needs util-linux and CAP_SYS_ADMIN)"
                    );
                    return None;
                }
                let mut wrapped = Command::new("unshare");
                wrapped
                    .args(["--pid", "--fork", "--mount-proc", "--"])
                    .arg(cmd.get_program())
                    .args(cmd.get_args());
                for (key, value) in cmd.get_envs() {
                    match value {
                        Some(value) => wrapped.env(key, value),
                        None => wrapped.env_remove(key),
                    };
                }
                if let Some(dir) = cmd.get_current_dir() {
                    wrapped.current_dir(dir);
                }
                wrapped
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare runs");
        let inner = wait_for(
            "dbslots in its pid namespace",
            Duration::from_secs(5),
            || children_of(child.id()).first().copied(),
        );
        Some((child, inner))
    }
}

/// The children of process `pid`, from `/proc`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may contain spaces and parens.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

/// A `dbslots exec` started in its own process group, killed with the
/// group and the group of its command (which `dbslots exec` runs in a
/// group of its own).
struct Group(Child);

impl Group {
    fn spawn(cmd: &mut Command) -> Group {
        cmd.process_group(0).stdin(Stdio::null());
        Group(cmd.spawn().expect("spawn dbslots exec"))
    }

    fn kill(&mut self) {
        // The command's group too: on a file pool it would run on (and
        // hold the slot) after its `dbslots exec` is killed. Stopped first,
        // so that it starts no command after we looked.
        // SAFETY: kill(2) on our own child's process group and on those
        // of its children (each leads its own).
        unsafe {
            libc::kill(-(self.0.id() as libc::pid_t), libc::SIGSTOP);
            for pid in children_of(self.0.id()) {
                libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
            }
            libc::kill(-(self.0.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

/// A pool whose slots are all held by `dbslots exec -- sleep` processes,
/// with `dbslots exec -- true` processes queued behind them; every process
/// is killed (waiters first) when it is dropped.
pub(crate) struct BusyPool {
    pub path: String,
    holders: Vec<Group>,
    waiters: Vec<Group>,
    _dir: tempfile::TempDir,
}

impl BusyPool {
    /// Starts the holders one after the other (so slot `i` is the `i`th
    /// holder's), then the waiters in order.
    pub fn start(capacity: u32, waiters: usize) -> BusyPool {
        Self::start_named("pool", capacity, waiters)
    }

    /// Like [`BusyPool::start`], with the pool directory named `name`.
    pub fn start_named(name: &str, capacity: u32, waiters: usize) -> BusyPool {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(name).display().to_string();
        let mut pool = BusyPool {
            path,
            holders: Vec::new(),
            waiters: Vec::new(),
            _dir: dir,
        };
        let cap = capacity.to_string();
        for i in 0..capacity {
            let holder = Group::spawn(dbslots().args([
                "exec",
                "--pool",
                &pool.path,
                "--capacity",
                &cap,
                "--",
                "sleep",
                "120",
            ]));
            pool.holders.push(holder);
            wait_for("a holder's slot", Duration::from_secs(20), || {
                (status(&pool.path)?["active"] == i + 1).then_some(())
            });
        }
        for i in 0..waiters {
            let waiter = Group::spawn(dbslots().args(["exec", "--pool", &pool.path, "--", "true"]));
            pool.waiters.push(waiter);
            wait_for("a waiter in the queue", Duration::from_secs(20), || {
                (status(&pool.path)?["waiting"] == i + 1).then_some(())
            });
        }
        pool
    }

    /// The pids of the commands holding the slots, by slot (what the stats
    /// show as holders: the command, not the `dbslots exec` around it).
    pub fn holder_pids(&self) -> Vec<u32> {
        self.holders
            .iter()
            .map(|h| {
                wait_for("the holder's command", Duration::from_secs(10), || {
                    let kids = children_of(h.0.id());
                    (kids.len() == 1).then(|| kids[0])
                })
            })
            .collect()
    }

    /// The pids of the queued `dbslots exec` processes, oldest first.
    pub fn waiter_pids(&self) -> Vec<u32> {
        self.waiters.iter().map(|w| w.0.id()).collect()
    }

    /// Kills the first remaining holder, freeing its slot for the waiters.
    pub fn release_one(&mut self) {
        let mut holder = self.holders.remove(0);
        holder.kill();
    }

    /// Waits until every waiter has had its slot and exited.
    pub fn wait_for_waiters(&mut self) {
        for w in &mut self.waiters {
            let status = w.0.wait().expect("wait for a waiter");
            assert!(status.success(), "a waiter's `true` failed: {status}");
        }
        self.waiters.clear();
    }
}

impl Drop for BusyPool {
    fn drop(&mut self) {
        for w in &mut self.waiters {
            w.kill();
        }
        for h in &mut self.holders {
            h.kill();
        }
    }
}

/// An HTTP reply.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// One HTTP/1.1 request with `Connection: close` (no client library: the
/// reply is read to the end and taken apart by hand).
pub(crate) fn http(method: &str, addr: &str, path: &str) -> Reply {
    http_with(method, addr, path, &[("Host", addr)])
}

/// [`http`] with these header lines (give `Host` yourself).
pub(crate) fn http_with(method: &str, addr: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect to dbslots serve");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set a read timeout");
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("send the request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the reply");
    let raw = String::from_utf8(raw).expect("the reply is UTF-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("a header line");
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let mut reply = Reply {
        status,
        headers,
        body: body.to_string(),
    };
    if reply.header("transfer-encoding") == Some("chunked") {
        reply.body = dechunk(body);
    } else if let Some(len) = reply.header("content-length") {
        assert_eq!(len.parse::<usize>().ok(), Some(body.len()), "{reply:?}");
    }
    reply
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// A running `dbslots serve` on a free port of 127.0.0.1; stopped with
/// SIGTERM when dropped.
pub(crate) struct Serve {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Serve {
    pub fn start(args: &[&str]) -> Serve {
        let mut child = dbslots()
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dbslots serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err_pipe.read_to_string(&mut text);
            sink.lock().expect("stderr sink").push_str(&text);
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep draining so that the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "dbslots serve did not say where it listens ({other:?}); stderr: {}",
                    stderr.lock().expect("stderr sink")
                );
            }
        };
        let addr = line
            .strip_prefix("dbslots serve: listening on http://")
            .and_then(|rest| rest.strip_suffix('/'))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Serve {
            child,
            addr,
            stderr,
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        http("GET", &self.addr, path)
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops the server with SIGTERM and returns its exit status and stderr.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let status = self.terminate();
        std::thread::sleep(Duration::from_millis(50));
        let err = self.stderr.lock().expect("stderr sink").clone();
        (status, err)
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}

/// A strict reader of the Prometheus text exposition format 0.0.4.
pub(crate) mod prom {
    use super::*;

    #[derive(Debug, Clone)]
    pub struct Sample {
        pub name: String,
        pub labels: BTreeMap<String, String>,
        pub value: f64,
    }

    #[derive(Debug)]
    pub struct Family {
        pub name: String,
        pub kind: String,
        pub help: Option<String>,
        pub samples: Vec<Sample>,
    }

    fn valid_metric_name(n: &str) -> bool {
        let mut chars = n.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn valid_label_name(n: &str) -> bool {
        let mut chars = n.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    }

    /// A float as Go's ParseFloat reads it (as Prometheus does).
    pub fn parse_value(v: &str) -> Result<f64, String> {
        match v {
            "+Inf" | "Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ if !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')) =>
            {
                v.parse().map_err(|e| format!("bad value {v:?}: {e}"))
            }
            _ => Err(format!("bad value {v:?}")),
        }
    }

    fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
        let mut labels = BTreeMap::new();
        let mut rest = s;
        loop {
            rest = rest.trim_start_matches([' ', '\t']);
            if let Some(r) = rest.strip_prefix('}') {
                return Ok((labels, r));
            }
            let eq = rest.find('=').ok_or("a label without `=`")?;
            let name = rest[..eq].trim();
            if !valid_label_name(name) {
                return Err(format!("bad label name {name:?}"));
            }
            rest = rest[eq + 1..].trim_start_matches([' ', '\t']);
            rest = rest
                .strip_prefix('"')
                .ok_or_else(|| format!("label {name}: value not quoted"))?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err(format!("label {name}: unterminated value")),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("label {name}: bad escape {other:?}")),
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            if labels.insert(name.to_string(), value).is_some() {
                return Err(format!("label {name} twice"));
            }
            rest = rest[end + 1..].trim_start_matches([' ', '\t']);
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return Err(format!("after label {name}: expected `,` or `}}`"));
            }
        }
    }

    fn parse_sample(line: &str) -> Result<Sample, String> {
        let name_end = line
            .find(['{', ' ', '\t'])
            .ok_or("a sample without a value")?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        let (labels, rest) = match line[name_end..].strip_prefix('{') {
            Some(r) => parse_labels(r)?,
            None => (BTreeMap::new(), &line[name_end..]),
        };
        if !rest.starts_with([' ', '\t']) {
            return Err("no blank before the value".into());
        }
        let mut fields = rest.split_whitespace();
        let value = parse_value(fields.next().ok_or("no value")?)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| format!("bad timestamp {ts:?}"))?;
        }
        if fields.next().is_some() {
            return Err("trailing text after the timestamp".into());
        }
        Ok(Sample {
            name: name.to_string(),
            labels,
            value,
        })
    }

    /// Parses `text` and checks it the way a scraper would, plus the
    /// histogram invariants.
    pub fn parse(text: &str) -> Result<Vec<Family>, String> {
        if !text.ends_with('\n') {
            return Err("the text does not end with a line feed".into());
        }
        let mut families: Vec<Family> = Vec::new();
        let mut helps: BTreeMap<String, String> = BTreeMap::new();
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut series = BTreeSet::new();
        for (n, line) in text[..text.len() - 1].split('\n').enumerate() {
            let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.trim_start().splitn(3, [' ', '\t']);
                match (words.next(), words.next(), words.next()) {
                    (Some("HELP"), Some(name), help) => {
                        if !valid_metric_name(name) {
                            return Err(at("bad metric name in HELP".into()));
                        }
                        let help = help
                            .unwrap_or("")
                            .replace("\\n", "\n")
                            .replace("\\\\", "\\");
                        if helps.insert(name.into(), help).is_some() {
                            return Err(at("a second HELP".into()));
                        }
                    }
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        if !valid_metric_name(name) {
                            return Err(at("bad metric name in TYPE".into()));
                        }
                        let kind = kind.trim();
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                        {
                            return Err(at(format!("unknown type {kind:?}")));
                        }
                        if types.insert(name.into(), kind.into()).is_some() {
                            return Err(at("a second TYPE".into()));
                        }
                        if families.iter().any(|f| f.name == name) {
                            return Err(at("TYPE after the family's samples".into()));
                        }
                        families.push(Family {
                            name: name.into(),
                            kind: kind.into(),
                            help: None,
                            samples: Vec::new(),
                        });
                    }
                    _ => {} // A plain comment.
                }
                continue;
            }
            let sample = parse_sample(line).map_err(at)?;
            let family_name = family_of(&sample.name, &types);
            let key = (sample.name.clone(), sample.labels.clone());
            if !series.insert(format!("{key:?}")) {
                return Err(at("a series twice".into()));
            }
            match families.last_mut() {
                Some(f) if f.name == family_name => f.samples.push(sample),
                _ => {
                    if families.iter().any(|f| f.name == family_name) {
                        return Err(at(format!("family {family_name} interleaved with another")));
                    }
                    families.push(Family {
                        name: family_name.clone(),
                        kind: types
                            .get(&family_name)
                            .cloned()
                            .unwrap_or_else(|| "untyped".into()),
                        help: None,
                        samples: vec![sample],
                    });
                }
            }
        }
        for f in &mut families {
            f.help = helps.get(&f.name).cloned();
            check_family(f)?;
        }
        Ok(families)
    }

    fn family_of(sample: &str, types: &BTreeMap<String, String>) -> String {
        if types.contains_key(sample) {
            return sample.to_string();
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix)
                && matches!(
                    types.get(base).map(String::as_str),
                    Some("histogram" | "summary")
                )
            {
                return base.to_string();
            }
        }
        sample.to_string()
    }

    fn check_family(f: &Family) -> Result<(), String> {
        match f.kind.as_str() {
            "counter" => {
                for s in &f.samples {
                    // NaN is not a count either.
                    if s.name != f.name || s.value.is_nan() || s.value < 0.0 {
                        return Err(format!("bad counter sample {s:?}"));
                    }
                }
            }
            "gauge" => {
                if let Some(s) = f.samples.iter().find(|s| s.name != f.name) {
                    return Err(format!("gauge {} has sample {}", f.name, s.name));
                }
            }
            "histogram" => check_histogram(f)?,
            _ => {}
        }
        Ok(())
    }

    fn check_histogram(f: &Family) -> Result<(), String> {
        /// One label set's `(le, value)` buckets, `_sum` and `_count`.
        #[derive(Default)]
        struct Series {
            buckets: Vec<(f64, f64)>,
            sum: Option<f64>,
            count: Option<f64>,
        }
        // Per label set without `le`.
        let mut sets: BTreeMap<String, Series> = BTreeMap::new();
        for s in &f.samples {
            let mut labels = s.labels.clone();
            let le = labels.remove("le");
            let entry = sets.entry(format!("{labels:?}")).or_default();
            let suffix = &s.name[f.name.len()..];
            match (suffix, le) {
                ("_bucket", Some(le)) => entry.buckets.push((parse_value(&le)?, s.value)),
                ("_bucket", None) => return Err(format!("{}: a bucket without le", f.name)),
                ("_sum", None) => entry.sum = Some(s.value),
                ("_count", None) => entry.count = Some(s.value),
                _ => return Err(format!("{}: unexpected sample {s:?}", f.name)),
            }
        }
        for (
            labels,
            Series {
                buckets,
                sum,
                count,
            },
        ) in sets
        {
            let what = format!("{}{labels}", f.name);
            for pair in buckets.windows(2) {
                // partial_cmp: NaN compares as neither, which is an error too.
                if pair[0].0.partial_cmp(&pair[1].0) != Some(std::cmp::Ordering::Less) {
                    return Err(format!("{what}: le not ascending: {buckets:?}"));
                }
                if pair[0].1.partial_cmp(&pair[1].1).is_none_or(|o| o.is_gt()) {
                    return Err(format!("{what}: buckets not cumulative: {buckets:?}"));
                }
            }
            let inf = buckets
                .last()
                .filter(|b| b.0 == f64::INFINITY)
                .ok_or_else(|| format!("{what}: no +Inf bucket"))?
                .1;
            let count = count.ok_or_else(|| format!("{what}: no _count"))?;
            let sum = sum.ok_or_else(|| format!("{what}: no _sum"))?;
            if inf != count {
                return Err(format!("{what}: +Inf bucket {inf} != _count {count}"));
            }
            if sum.is_nan() || sum < 0.0 {
                return Err(format!("{what}: bad _sum {sum}"));
            }
        }
        Ok(())
    }

    /// The one sample named `name` whose labels include `labels`.
    #[track_caller]
    pub fn value(families: &[Family], name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
        found[0].value
    }

    #[test]
    fn the_parser_rejects_what_prometheus_would() {
        let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 3\n";
        let f = parse(ok).expect("valid");
        assert_eq!(f[0].samples[0].labels["x"], "q\"\\\n");
        let hist = |b1: &str, inf: &str, count: &str| {
            format!(
                "# TYPE h histogram\nh_bucket{{le=\"1\"}} {b1}\nh_bucket{{le=\"+Inf\"}} {inf}\nh_sum 1\nh_count {count}\n"
            )
        };
        assert!(parse(&hist("1", "2", "2")).is_ok());
        for bad in [
            "a 1",                                                            // no final line feed
            "a{x=\"\\t\"} 1\n",                                               // bad escape
            "a{x=y} 1\n",                                                     // unquoted
            "1a 1\n",                                                         // bad name
            "a 1x\n",                                                         // bad value
            "a 1\nb 1\na{x=\"1\"} 1\n",                                       // interleaved
            "a 1\na 2\n",                                                     // duplicate series
            "a 1\n# TYPE a gauge\n",                                          // TYPE after samples
            "# TYPE a_total counter\na_total -1\n",                           // negative counter
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
            &hist("3", "2", "2"),                                             // not cumulative
            &hist("1", "2", "3"),                                             // +Inf != count
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}

/// How long `dbslots serve` reuses a reading of the server (its
/// `SERVER_FRESH`), plus a margin.
pub(crate) const SERVER_FRESH_FOR_TESTS: Duration = Duration::from_millis(700);
