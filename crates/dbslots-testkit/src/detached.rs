//! Servers that outlive the process that started them (`cargo xtask db up`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::docker;
use crate::process::{STOP_GRACE, signal_group};

/// What another process needs to find and stop a detached server; see
/// [`crate::MysqlServer::detach`] and [`crate::RedisServer::detach`].
/// Serializable, so that it can be kept in a file between two commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case")]
pub enum DetachedState {
    /// A local server process.
    Process {
        /// Process id, also the id of the server's process group.
        pid: u32,
        /// TCP port on 127.0.0.1.
        port: u16,
        /// The temporary directory holding the server's data and logs,
        /// removed by [`DetachedState::stop`]. The server's working
        /// directory lies inside it, which tells the server apart from an
        /// unrelated process that got the same pid later.
        dir: PathBuf,
    },
    /// A container.
    Container {
        /// Container id.
        id: String,
        /// TCP port on 127.0.0.1.
        port: u16,
    },
}

impl DetachedState {
    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        match self {
            Self::Process { port, .. } | Self::Container { port, .. } => *port,
        }
    }

    /// Whether the server is still running.
    pub fn is_running(&self) -> bool {
        match self {
            Self::Process { pid, dir, .. } => process_runs_in(*pid, dir),
            Self::Container { id, .. } => docker::Container { id: id.clone() }.running(),
        }
    }

    /// Stops the server (SIGTERM, up to 10 s, then SIGKILL; or removes the
    /// container) and deletes its directory. Stopping a server that is
    /// already gone only deletes what is left.
    ///
    /// # Errors
    ///
    /// Fails when the directory or the container cannot be removed.
    pub fn stop(&self) -> Result<()> {
        match self {
            Self::Process { pid, dir, .. } => {
                if process_runs_in(*pid, dir) {
                    let pgid = *pid as libc::pid_t;
                    signal_group(pgid, libc::SIGTERM);
                    if !wait_gone(*pid, dir, STOP_GRACE) {
                        signal_group(pgid, libc::SIGKILL);
                        wait_gone(*pid, dir, Duration::from_secs(5));
                    }
                }
                match std::fs::remove_dir_all(dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(e).with_context(|| format!("cannot remove {}", dir.display()))
                    }
                    _ => Ok(()),
                }
            }
            Self::Container { id, .. } => docker::remove(id),
        }
    }
}

/// Whether `pid` is alive with its working directory inside `dir` (servers
/// change into their data directory).
fn process_runs_in(pid: u32, dir: &std::path::Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
}

fn wait_gone(pid: u32, dir: &std::path::Path, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if !process_runs_in(pid, dir) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !process_runs_in(pid, dir)
}
