//! Errors that keep a spawner from starting at all.
//!
//! Once workers run, problems (a worker that cannot be started, a pool that
//! fails) no longer abort the run: the running workers are still waited for,
//! and the problem is reported in [`Summary::stop`](crate::Summary::stop).

use std::path::PathBuf;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a spawner could not start.
///
/// Each message says what went wrong and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option is out of range or contradicts another.
    #[error("invalid spawn options: {problem}; {fix}")]
    InvalidOptions {
        /// What is wrong.
        problem: String,
        /// What to do about it.
        fix: &'static str,
    },
    /// The worker command is empty or unusable.
    #[error(
        "invalid worker command: {problem}; give the command after `--`, e.g. `-- php worker.php {{index}}`"
    )]
    InvalidCommand {
        /// What is wrong.
        problem: String,
    },
    /// The joblog file could not be created.
    #[error(
        "cannot create the joblog {path}: {source}; choose a writable file for SpawnOptions::joblog"
    )]
    Joblog {
        /// The joblog's path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The log directory could not be created.
    #[error(
        "cannot create the log directory {path}: {source}; choose a writable directory for Output::LogDir"
    )]
    LogDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The signal handlers could not be installed.
    #[error(
        "cannot listen for SIGINT/SIGTERM/SIGHUP: {source}; run inside a tokio runtime with the signal driver enabled (Builder::enable_all)"
    )]
    Signals {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The keeper process, which kills the workers of a lease-based pool if
    /// the spawner dies, could not be started.
    #[error(
        "cannot start the process that stops the workers if the spawner dies: {source}; raise the process limit (ulimit -u), or use SpawnOptions::hold_slot to let workers outlive the spawner"
    )]
    Keeper {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The thread that writes the spawner's output could not be started.
    #[error("cannot start the output thread: {source}; raise the process or memory limits")]
    Console {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
