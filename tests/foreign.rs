//! The Python client of `docs/protocol.md`, run as written there, shares a
//! pool with dbslots: the documented protocol is the real one.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dbslots_core::{Pool, PoolOptions};

/// The ```python block of docs/protocol.md.
fn documented_python() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md"))
        .expect("docs/protocol.md");
    let start = doc.find("```python\n").expect("a python block") + "```python\n".len();
    let len = doc[start..].find("```").expect("closed block");
    doc[start..start + len].to_string()
}

struct PyHolder {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl PyHolder {
    fn spawn(pool: &str) -> PyHolder {
        let script = format!(
            "{}\nimport sys\nfd = take({pool:?})\nprint('HELD', flush=True)\nsys.stdin.readline()\nrelease(fd)\nprint('RELEASED', flush=True)\n",
            documented_python()
        );
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs (it is part of the build machine)");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        PyHolder { child, out }
    }

    fn expect_line(&mut self, want: &str) {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read");
        assert_eq!(line.trim(), want);
    }

    fn release(&mut self) {
        writeln!(self.child.stdin.as_mut().expect("stdin")).expect("write");
        self.expect_line("RELEASED");
        self.child.wait().expect("reap");
    }
}

impl Drop for PyHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pool(capacity: u32) -> (tempfile::TempDir, String, Pool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = dir.path().join("pool").display().to_string();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(capacity)).expect("pool");
    (dir, addr, pool)
}

#[test]
fn a_python_holder_counts_against_the_capacity() {
    let (_d, addr, pool) = pool(1);
    let mut py = PyHolder::spawn(&addr);
    py.expect_line("HELD");
    assert!(
        pool.try_acquire().expect("try").is_none(),
        "python holds the only slot"
    );
    let stats = pool.stats().expect("stats");
    assert_eq!(stats.active, 1);
    py.release();
    assert!(
        pool.try_acquire().expect("try").is_some(),
        "python gave it back"
    );
}

#[test]
fn a_python_waiter_gets_the_slot_dbslots_releases() {
    let (_d, addr, pool) = pool(1);
    let held = pool.blocking_acquire().expect("hold");
    let mut py = PyHolder::spawn(&addr);
    std::thread::sleep(Duration::from_millis(200));
    drop(held);
    py.expect_line("HELD");
    py.release();
}

#[test]
fn dbslots_waiters_get_the_slot_of_a_killed_python_holder() {
    let (_d, addr, pool) = pool(1);
    let mut py = PyHolder::spawn(&addr);
    py.expect_line("HELD");
    let start = Instant::now();
    let waiter = std::thread::spawn(move || {
        pool.blocking_acquire_timeout(Duration::from_secs(30))
            .map(|s| s.index())
    });
    std::thread::sleep(Duration::from_millis(50));
    py.child.kill().expect("SIGKILL python");
    py.child.wait().expect("reap");
    assert_eq!(waiter.join().expect("join").expect("slot"), 0);
    assert!(start.elapsed() < Duration::from_secs(30));
}
