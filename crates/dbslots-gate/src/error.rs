//! Errors of the gate.

use std::path::PathBuf;

/// What can keep a gate from starting. Once running, a gate does not fail:
/// problems with one client (a queue timeout, an unreachable server) are
/// answered to that client and logged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `--listen` or `--upstream` address that cannot be used.
    #[error("{endpoint:?} is not a usable address: {reason}")]
    InvalidEndpoint {
        /// The address as given.
        endpoint: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// A listening address cannot be bound.
    #[error("cannot listen on {endpoint}: {error}; pick a free address or stop what uses it")]
    Bind {
        /// The address.
        endpoint: String,
        /// Why the kernel refused.
        error: std::io::Error,
    },
    /// The gate was given nothing to listen on.
    #[error("the gate needs at least one listen address (GateOptions::new)")]
    NoListener,
    /// The relay threads cannot be started.
    #[error(
        "cannot start the gate's relay threads: {0}; lower the number of threads or raise the process limits (ulimit -u)"
    )]
    Threads(std::io::Error),
    /// The open-file limit leaves no room for a single client beside what
    /// the gate keeps open (its own files, the pool's agents and slot
    /// files): it would accept nobody.
    #[error(
        "the open-file limit ({limit}) leaves no room for a single client: the gate needs {needed} descriptors to accept one and relay it, so it would accept nobody; raise the limit (LimitNOFILE= in the systemd unit, ulimit -Hn)"
    )]
    OpenFileLimit {
        /// The soft limit on open files.
        limit: u64,
        /// What the gate needs with one client.
        needed: u64,
    },
    /// The pool failed.
    #[error(transparent)]
    Pool(#[from] dbslots_core::Error),
    /// The gate's counters cannot be posted into its Redis pool.
    #[error("cannot publish the counters of gate {name:?} in pool {pool}: {reason}")]
    PublishToPool {
        /// The pool (redacted address).
        pool: String,
        /// The gate's name.
        name: String,
        /// What went wrong and what to do.
        reason: String,
    },
    /// The gate's counters cannot be published next to the pool.
    #[error("cannot publish the gate's counters in {path}: {reason}")]
    Publish {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong and what to do.
        reason: String,
    },
}
