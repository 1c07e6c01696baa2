//! Driving real holder processes (`examples/holder.rs`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The holder example, built by `cargo test` next to this test binary.
pub fn holder_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/it-xxxx -> target/<profile>/examples/holder
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let holder = dir.join("examples").join("holder");
    assert!(
        holder.exists(),
        "{} is missing: run `cargo build --workspace --examples` first (cargo xtask test does; `cargo test --all-targets` builds examples only as test harnesses)",
        holder.display()
    );
    holder
}

/// A holder process in `hold` mode.
pub struct Holder {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// What a holder reported after trying to acquire.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Held(u32),
    TimedOut,
}

impl Holder {
    /// Starts a holder that acquires (with an optional timeout in ms).
    pub fn spawn(pool: &str, timeout_ms: Option<u64>) -> Holder {
        Self::spawn_on(pool, timeout_ms, "localhost")
    }

    /// Like [`Holder::spawn`], for a process that calls itself `host`.
    pub fn spawn_on(pool: &str, timeout_ms: Option<u64>, host: &str) -> Holder {
        let mut cmd = Command::new(holder_exe());
        cmd.env("DBSLOTS_HOST", host);
        cmd.arg(pool).arg("hold");
        if let Some(ms) = timeout_ms {
            cmd.arg(ms.to_string());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn holder");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Holder {
            child,
            stdin,
            stdout,
        }
    }

    /// Waits for the holder's first report.
    pub fn outcome(&mut self) -> Outcome {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read holder output");
        if let Some(slot) = line.strip_prefix("HELD ") {
            Outcome::Held(slot.trim().parse().expect("slot number"))
        } else if line.starts_with("TIMEOUT") {
            self.child.wait().expect("reap holder");
            Outcome::TimedOut
        } else {
            let status = self.child.wait();
            panic!("holder said {line:?} and exited with {status:?}");
        }
    }

    /// Asks the holder whether it still holds its slot: `Ok(())` or the
    /// holder's "LOST ..." line. (Only Redis slots can be lost.)
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub fn check(&mut self) -> Result<(), String> {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "check").expect("ask holder");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read holder output");
        match line.trim() {
            "OK" => Ok(()),
            other => Err(other.to_string()),
        }
    }

    /// Asks the holder to release and waits until it has.
    pub fn release(mut self) {
        let mut stdin = self.stdin.take().expect("stdin");
        writeln!(stdin, "release").expect("tell holder to release");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read holder output");
        assert_eq!(line.trim(), "RELEASED");
        self.child.wait().expect("reap holder");
    }

    /// SIGKILLs the holder and reaps it: when this returns, the kernel has
    /// closed its descriptors.
    pub fn crash(mut self) {
        self.child.kill().expect("SIGKILL holder");
        self.child.wait().expect("reap holder");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory for a pool.
pub fn pool_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("pool").display().to_string();
    (dir, pool)
}

/// Serialises the tests whose assertions involve timing (fairness, leases)
/// or that start hundreds of processes: on a 2-core machine, two of them at
/// once starve each other's lease renewals and blur each other's waits.
pub fn timing_sensitive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
