//! Server processes: finding programs, spawning a server in its own process
//! group, and stopping it again.
//!
//! # Implementation Details
//!
//! Every server runs as the leader of its own process group, so that a Ctrl-C
//! typed at the terminal reaches the test or xtask process (which then stops
//! the server in order) but never the server itself, and so that stopping a
//! server signals the whole group. An *attached* server additionally gets
//! `PR_SET_PDEATHSIG(SIGKILL)` on Linux: if its starter dies without running
//! `Drop` (SIGKILL, abort, or a server kept in a `static`), the kernel kills
//! the server too. The kernel sends that signal when the *thread* that
//! forked the server exits, so attached servers are forked by one spawner
//! thread that lives as long as the process.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How long a server gets between SIGTERM and SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// Environment variable naming the directory under which servers create their
/// temporary directories (see the crate documentation).
pub const TMPDIR_ENV: &str = "DBSLOTS_TEST_TMPDIR";

/// A server process we spawned and have not yet stopped.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    /// Spawns `command` in its own process group with stdin closed and
    /// stdout/stderr appended to `output`.
    ///
    /// With `attached`, the server is killed by the kernel when the calling
    /// thread dies.
    pub(crate) fn spawn(mut command: Command, attached: bool, output: &Path) -> Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(output)
            .with_context(|| format!("cannot create {}", output.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        if attached {
            set_parent_death_signal(&mut command, libc::SIGKILL);
        }
        let program = command.get_program().to_string_lossy().into_owned();
        let child = if attached {
            spawn_from_long_lived_thread(command)
        } else {
            command.spawn()
        }
        .with_context(|| format!("cannot start {program}"))?;
        Ok(Self { child })
    }

    /// The process id, which is also the id of its process group.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has already exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM to the process group, waits up to `grace` for the
    /// process to exit, then sends SIGKILL and reaps it.
    pub(crate) fn stop(mut self, grace: Duration) -> Result<()> {
        if self.exited().is_some() {
            return Ok(());
        }
        let pgid = self.child.id() as libc::pid_t;
        signal_group(pgid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                // The group may still hold helpers the server forked.
                signal_group(pgid, libc::SIGKILL);
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        signal_group(pgid, libc::SIGKILL);
        self.child
            .wait()
            .with_context(|| format!("cannot reap server process {pgid}"))?;
        Ok(())
    }

    /// Gives up ownership without stopping the process; returns its pid.
    pub(crate) fn release(self) -> u32 {
        // Dropping a `Child` neither kills nor waits for the process.
        self.child.id()
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `command` from a thread that never exits, so that a parent-death
/// signal fires only when the whole process ends.
fn spawn_from_long_lived_thread(command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        let started = thread::Builder::new()
            .name("dbslots-testkit-spawner".into())
            .spawn(move || {
                // Ends only with the process: the sender lives in a static.
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            });
        if let Err(e) = started {
            // The requests then fail below with a closed channel.
            eprintln!("dbslots-testkit: cannot start the spawner thread: {e}");
        }
        Mutex::new(requests)
    });
    let (reply, answer) = mpsc::channel();
    let sent = spawner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((command, reply));
    if sent.is_err() {
        return Err(io::Error::other("the spawner thread is gone"));
    }
    answer
        .recv()
        .map_err(|_| io::Error::other("the spawner thread did not answer"))?
}

/// Asks the kernel to send `signal` to the child when the spawning thread
/// dies (Linux only; elsewhere a no-op).
pub(crate) fn set_parent_death_signal(command: &mut Command, signal: libc::c_int) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: the closure only makes async-signal-safe system calls and
        // allocates nothing.
        let parent = unsafe { libc::getpid() };
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (command, signal);
    }
}

/// Sends `signal` to process group `pgid`, ignoring a group that is gone.
pub(crate) fn signal_group(pgid: libc::pid_t, signal: libc::c_int) {
    if pgid > 1 {
        // SAFETY: plain system call; a stale group only yields ESRCH.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago. The caller must
/// retry on collision: another process may take it before the server binds.
pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Looks for the first of `names` in `PATH`, then in the sbin directories
/// that `PATH` often lacks.
pub(crate) fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for extra in ["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    names.iter().find_map(|name| {
        dirs.iter()
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether we run as root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The error lines (up to 10) and the last `lines` lines of a log file, or a
/// note saying why there are none.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            let mut out = String::new();
            let errors: Vec<&&str> = all[..start]
                .iter()
                .filter(|line| line.contains("ERROR"))
                .take(10)
                .collect();
            if !errors.is_empty() {
                out.push_str(&format!("errors in {}:\n", path.display()));
                for line in errors {
                    out.push_str("    ");
                    out.push_str(line);
                    out.push('\n');
                }
            }
            out.push_str(&format!("last lines of {}:\n", path.display()));
            for line in &all[start..] {
                out.push_str("    ");
                out.push_str(line);
                out.push('\n');
            }
            out
        }
        Err(e) => format!("(cannot read {}: {e})\n", path.display()),
    }
}

/// A fresh temporary directory named `<prefix>XXXXXX` under
/// `$DBSLOTS_TEST_TMPDIR` if set, else under the system temporary directory.
pub(crate) fn temp_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let base = std::env::var_os(TMPDIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)
        .with_context(|| format!("cannot create temporary base {}", base.display()))?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .with_context(|| format!("cannot create a temporary directory in {}", base.display()))
}

/// Runs a short command to completion; on failure the error holds its output.
pub(crate) fn run_captured(command: &mut Command) -> Result<String> {
    let shown = describe(command);
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        anyhow::bail!(
            "{shown} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        )
    }
}

/// A command line for messages.
pub(crate) fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}
