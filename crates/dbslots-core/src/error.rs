//! Errors of the slot pool.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong with a slot pool.
///
/// Each message says what went wrong and what to do about it. Messages never
/// contain a password: pool addresses are redacted before they get here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No slot became free before the deadline.
    #[error(
        "timed out after {waited:.1?} waiting for a slot in pool {pool} (capacity {capacity}, active {active}, waiting {waiting}); raise the timeout, the capacity, or find the holders with `dbslots status`"
    )]
    Timeout {
        /// The pool's address.
        pool: String,
        /// How long the caller waited.
        waited: Duration,
        /// The pool's capacity.
        capacity: u32,
        /// Slots held when the wait gave up.
        active: u32,
        /// Waiters when the wait gave up (this one included).
        waiting: u32,
    },
    /// The pool exists with another capacity than the one asked for.
    #[error(
        "pool {pool} was created with capacity {recorded}, not {requested}; open it without PoolOptions::capacity to use it as it is, or change its capacity with Pool::resize"
    )]
    CapacityMismatch {
        /// The pool's address.
        pool: String,
        /// The capacity recorded in the pool.
        recorded: u32,
        /// The capacity the caller asked for.
        requested: u32,
    },
    /// The pool does not exist and no capacity was given to create it.
    #[error("pool {pool} does not exist; create it by giving a capacity (PoolOptions::capacity)")]
    NotFound {
        /// The pool's address.
        pool: String,
    },
    /// A capacity outside the supported range.
    #[error("capacity must be between 1 and {max}, got {requested}")]
    InvalidCapacity {
        /// What was asked for.
        requested: u64,
        /// The largest supported capacity.
        max: u32,
    },
    /// The pool's location cannot be used.
    #[error("cannot use {path} as a pool directory: {reason}")]
    Location {
        /// The offending path.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A pool file holds something that is not a dbslots pool of this version.
    #[error(
        "{path} is not a dbslots pool this version understands ({detail}); use another pool directory, or remove this one if nothing uses it"
    )]
    Corrupt {
        /// The offending file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// The pool address could not be parsed.
    #[error("invalid pool address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as given (password redacted).
        address: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A report's kind, name or owner that cannot be used
    /// ([`Pool::post_report`](crate::Pool::post_report)).
    #[error("invalid report {kind:?} named {name:?}: {reason}")]
    InvalidReport {
        /// The report's kind.
        kind: String,
        /// The report's name.
        name: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// The backend cannot do what was asked.
    #[error("{what} is not supported by {backend} pools")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// The operation.
        what: &'static str,
    },
    /// The holder's claim on its slot was lost (a lease-based backend's lease
    /// expired, or its server forgot it); the caller must stop using the
    /// resource the slot guarded.
    #[error(
        "the slot {slot} in pool {pool} was lost: {reason}; stop using the connection it guarded and acquire a new slot"
    )]
    SlotLost {
        /// The pool's address.
        pool: String,
        /// The slot number.
        slot: u32,
        /// Why it was lost.
        reason: String,
    },
    /// The backend's server could not be reached or answered with an error.
    #[error("pool {pool}: {message}")]
    Backend {
        /// The pool's address.
        pool: String,
        /// What happened and what to do.
        message: String,
    },
    /// A pool handle was used in a process forked from the one that opened
    /// it, without `exec`: the child shares the parent's lock descriptions,
    /// so it could neither take nor release a slot of its own.
    #[error(
        "pool {pool} was opened by process {opened_by} and is used in its forked child {used_by}; a pool handle does not survive fork: open the pool again in the child"
    )]
    Forked {
        /// The pool's address.
        pool: String,
        /// The process that opened the handle.
        opened_by: u32,
        /// The forked child that used it.
        used_by: u32,
    },
    /// An operating-system call on a pool file failed.
    #[error("{op} {path}: {source}{hint}", path = path.display(), hint = io_hint(source))]
    Io {
        /// What was being done ("opening", "locking", ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// True for [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// What a waiting acquisition returns once cancelled. Only a dropped
    /// `Pool::acquire` future cancels, and its blocking task's result goes
    /// to a detached join handle: no caller ever sees this error, so it is
    /// no variant of its own.
    pub(crate) fn cancelled(pool: &str) -> Self {
        Error::Backend {
            pool: pool.to_string(),
            message: "the acquisition was cancelled (its future was dropped)".into(),
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<io::Error>,
    ) -> Self {
        let path = path.into();
        let source = source.into();
        match source.kind() {
            io::ErrorKind::PermissionDenied => Error::Location {
                reason: format!(
                    "permission denied while {op} {}; run as a user that may use this pool, or create the pool for a shared group (PoolOptions::group_name)",
                    path.display()
                ),
                path,
            },
            _ => Error::Io { op, path, source },
        }
    }
}

/// What to do about an operating-system error, where there is more to say
/// than its text.
fn io_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            "; the filesystem is full (or the quota used up): free some space and try again"
        }
        io::ErrorKind::ReadOnlyFilesystem => {
            "; the filesystem is mounted read-only: remount it read-write, or choose a pool directory on a writable filesystem"
        }
        _ => "",
    }
}
