//! Errors of the import processor.
//!
//! These are the errors that stop an operation (enqueueing, listing, a
//! processor's run). A problem with one job's file or lines is not an error
//! here: it is recorded on the job (`last_error`) or in `import_errors`, and
//! the processor goes on with the next job.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop an import operation.
///
/// Each message says what went wrong and what to do about it. Messages never
/// contain a password: URLs are redacted with [`dbslots_core::redact`]
/// before they get here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database URL cannot be used.
    #[error(
        "invalid database URL {url}: {reason}; write it as mysql://USER:PASSWORD@HOST:PORT/DATABASE"
    )]
    InvalidUrl {
        /// The URL, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection could be opened: the one try of a queue operation
    /// failed, or a processor's failed in a way that another try cannot fix
    /// (access denied, an unknown database, TLS).
    #[error(
        "cannot connect to {url} (tried for {waited:.1?}): {message}; check that the server is up and that the URL, user and password are right"
    )]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// How long connecting was tried.
        waited: Duration,
        /// The last failure.
        message: String,
    },
    /// The server did not answer a statement of one of the queue's
    /// operations within
    /// [`Queue::statement_timeout`](crate::Queue::statement_timeout) (180 s
    /// or more for one adding a column to queue tables of an older
    /// version). The
    /// connection was given up (closed); the server ends its session, and
    /// rolls back what it left open, by itself within the same time.
    #[error(
        "{what} got no answer from {url} within {waited:?}, so the connection was given up; the server is frozen or overloaded, or the network to it stopped passing packets (a failover, a partition): check the server and the way to it, then try again (if it is merely slow, allow it longer with Queue::statement_timeout)"
    )]
    NoAnswer {
        /// What was being done.
        what: &'static str,
        /// The URL, password redacted.
        url: String,
        /// How long the answer was waited for.
        waited: Duration,
    },
    /// A processor found the server out of reach (connects failing, or
    /// connections lost before a job was claimed) until a limit ran out:
    /// its reconnect window
    /// ([`ProcessorOptions::reconnect_window`](crate::ProcessorOptions::reconnect_window)),
    /// or the run's [`RunOptions::max_time`](crate::RunOptions::max_time).
    #[error(
        "no working connection to {url} for {waited:.1?}, {limit} (last failure: {last}); check that the server is up and reachable from here, {advice}",
        advice = limit.advice()
    )]
    Outage {
        /// The URL, password redacted.
        url: String,
        /// How long the outage lasted when the processor gave up.
        waited: Duration,
        /// The last failure, on one line.
        last: String,
        /// Which limit ran out.
        limit: OutageLimit,
    },
    /// A statement failed in a way that retrying cannot fix.
    #[error("{what} failed on {url}: {source}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// The URL, password redacted.
        url: String,
        /// The driver's error.
        #[source]
        source: mysql_async::Error,
    },
    /// The server cannot hand out jobs safely to several processors.
    #[error(
        "the server at {url} does not support SELECT ... FOR UPDATE SKIP LOCKED ({message}); the import queue needs MySQL 8.0.1 or later, or MariaDB 10.6 or later"
    )]
    SkipLockedUnsupported {
        /// The URL, password redacted.
        url: String,
        /// The server's error message.
        message: String,
    },
    /// Another processor holds the lock file.
    #[error(
        "another import processor{} holds the lock file {}; it keeps working, so nothing to do (acquire another InstanceLock path to run a second processor on purpose)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        path.display()
    )]
    AlreadyRunning {
        /// The lock file.
        path: PathBuf,
        /// The running processor's pid, as it wrote it into the lock file.
        pid: Option<u32>,
    },
    /// The lock file cannot be opened, locked or written.
    #[error(
        "cannot use the lock file {}: {source}; use an InstanceLock path in a directory this user owns",
        path.display()
    )]
    LockFile {
        /// The lock file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A file cannot be enqueued.
    #[error("cannot enqueue {}: {reason}", path.display())]
    Source {
        /// The file as given.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// An enqueue option cannot be used.
    #[error("{0}")]
    Options(String),
    /// A source directory of the processor cannot be resolved.
    #[error(
        "cannot use the source directory {}: {source}; pass an existing directory to ProcessorOptions::source_dir",
        path.display()
    )]
    SourceDir {
        /// The directory as given.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The thread that reads a job's file could not be started.
    #[error(
        "cannot start a thread to read {}: {source}; the job stays in the queue, free some memory or raise the process limit",
        path.display()
    )]
    Thread {
        /// The job's file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The slot pool failed.
    #[error(transparent)]
    Pool(#[from] dbslots_core::Error),
}

/// The limit that ended a processor's wait for the server
/// ([`Error::Outage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutageLimit {
    /// The reconnect window
    /// ([`ProcessorOptions::reconnect_window`](crate::ProcessorOptions::reconnect_window))
    /// was used up.
    ReconnectWindow,
    /// The run's [`RunOptions::max_time`](crate::RunOptions::max_time)
    /// came while the server was out of reach: the run ends, but not as
    /// a run that was merely out of time.
    MaxTime,
}

impl OutageLimit {
    /// What to do about it, as the end of a sentence.
    fn advice(self) -> &'static str {
        match self {
            OutageLimit::ReconnectWindow => {
                "or let the processor wait longer with ProcessorOptions::reconnect_for"
            }
            OutageLimit::MaxTime => "or give the run more time with RunOptions::max_time",
        }
    }
}

impl std::fmt::Display for OutageLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OutageLimit::ReconnectWindow => "the processor's reconnect window",
            OutageLimit::MaxTime => "when RunOptions::max_time ran out",
        })
    }
}
