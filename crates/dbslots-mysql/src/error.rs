//! Errors of the MySQL adapter, and the error codes it acts on.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The MySQL and MariaDB error codes this crate treats specially.
///
/// Server codes come in error packets. The client codes (2002 and up) are
/// the numbers libmysqlclient gives network failures; `mysql_async` has no
/// such numbers, so this crate assigns them to its I/O errors in reports, to
/// match what operators know from the `mysql` client.
pub mod codes {
    /// ER_CON_COUNT_ERROR: the server's `max_connections` is reached.
    pub const TOO_MANY_CONNECTIONS: u16 = 1040;
    /// ER_TOO_MANY_USER_CONNECTIONS: the global `max_user_connections` is
    /// reached for this account.
    pub const TOO_MANY_USER_CONNECTIONS: u16 = 1203;
    /// ER_USER_LIMIT_REACHED: the account's own `MAX_USER_CONNECTIONS` (or
    /// another per-account resource limit) is reached.
    pub const USER_LIMIT_REACHED: u16 = 1226;
    /// ER_DBACCESS_DENIED_ERROR: the account may not use the database.
    pub const DB_ACCESS_DENIED: u16 = 1044;
    /// ER_ACCESS_DENIED_ERROR: wrong user name or password.
    pub const ACCESS_DENIED: u16 = 1045;
    /// ER_BAD_DB_ERROR: unknown database.
    pub const UNKNOWN_DATABASE: u16 = 1049;
    /// ER_SERVER_SHUTDOWN: the server is shutting down.
    pub const SERVER_SHUTDOWN: u16 = 1053;
    /// ER_NO_SUCH_THREAD: `KILL` of a connection id that does not exist.
    pub const NO_SUCH_THREAD: u16 = 1094;
    /// ER_KILL_DENIED_ERROR: `KILL` of another account's connection without
    /// CONNECTION_ADMIN/SUPER.
    pub const KILL_DENIED: u16 = 1095;
    /// ER_HOST_IS_BLOCKED: too many failed connects from this host.
    pub const HOST_BLOCKED: u16 = 1129;
    /// ER_HOST_NOT_PRIVILEGED: the account may not connect from this host.
    pub const HOST_NOT_PRIVILEGED: u16 = 1130;
    /// ER_SECURE_TRANSPORT_REQUIRED: the server accepts only TLS (or
    /// socket) connections (`require_secure_transport=ON`).
    pub const SECURE_TRANSPORT_REQUIRED: u16 = 3159;
    /// MariaDB's ER_CONNECTION_KILLED: the connection was killed.
    pub const CONNECTION_KILLED: u16 = 1927;
    /// MySQL's ER_SESSION_WAS_KILLED.
    pub const SESSION_WAS_KILLED: u16 = 3169;
    /// MySQL's ER_CLIENT_INTERACTION_TIMEOUT: closed after `wait_timeout`.
    pub const CLIENT_INTERACTION_TIMEOUT: u16 = 4031;
    /// CR_CONNECTION_ERROR: cannot connect through the Unix socket.
    pub const CR_CONNECTION_ERROR: u16 = 2002;
    /// CR_CONN_HOST_ERROR: cannot connect to the host and port.
    pub const CR_CONN_HOST_ERROR: u16 = 2003;
    /// CR_SERVER_GONE_ERROR: the connection is closed.
    pub const CR_SERVER_GONE_ERROR: u16 = 2006;
    /// CR_SERVER_LOST: the connection was lost during a query or handshake.
    pub const CR_SERVER_LOST: u16 = 2013;
}

/// What one connection attempt ran into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// The server's error code, or the client code of a network failure
    /// (see [`codes`]); `None` when there is no such number.
    pub code: Option<u16>,
    /// What went wrong, as the server or the operating system said it.
    pub message: String,
    /// How long the connector waited before the next attempt; `None` for
    /// the last attempt.
    pub delay: Option<Duration>,
    /// What to do about a failure that has no error code (a TLS failure);
    /// `None` when the code's advice applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

/// Everything that can go wrong in this crate.
///
/// Each message says what went wrong and what to do about it. Messages never
/// contain a password: URLs are redacted with [`dbslots_core::redact`]
/// before they get here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection URL cannot be used.
    #[error(
        "invalid MySQL URL {url}: {reason}; write it as mysql://USER:PASSWORD@HOST:PORT/DATABASE"
    )]
    InvalidUrl {
        /// The URL, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An [`IdleRule`](crate::IdleRule) that would hit more than intended.
    #[error("refusing to kill idle connections: {reason}")]
    InvalidRule {
        /// What is wrong, and what to give instead.
        reason: String,
    },
    /// No slot came in time, or the pool failed; no connection was opened.
    #[error("no connection to {url} was opened: {source}")]
    Slot {
        /// The URL, password redacted.
        url: String,
        /// The pool's error (a timeout says how full the pool was).
        #[source]
        source: dbslots_core::Error,
    },
    /// Opening the connection failed: every attempt did, or one failed in a
    /// way that retrying cannot fix (access denied, unknown database).
    #[error("{}", connect_message(url, pool.as_deref(), *slot, attempts))]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// The pool's address; `None` for a connection outside any pool
        /// (the monitor's).
        pool: Option<String>,
        /// The slot that was held while trying.
        slot: Option<u32>,
        /// Every attempt, in order; never empty.
        attempts: Vec<Attempt>,
    },
    /// The monitor's own connection was refused because the server or the
    /// account has no connection left: the situation the monitor exists for.
    #[error("{}", refused_message(url, *code, message))]
    MonitorRefused {
        /// The URL, password redacted.
        url: String,
        /// 1040, 1203 or 1226.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// A statement of this crate failed on an open connection.
    #[error("{what} failed: {source}")]
    Query {
        /// What was being done.
        what: String,
        /// The driver's error.
        #[source]
        source: mysql_async::Error,
    },
    /// The server did not answer a statement in time (a frozen server or
    /// network); the statement may or may not have run.
    #[error(
        "{what}: the server did not answer within {}; check that it runs and is not stopped or overloaded, and that nothing on the way drops packets",
        dbslots_core::format_seconds(*after)
    )]
    Timeout {
        /// What was being done.
        what: String,
        /// How long it was given.
        after: std::time::Duration,
    },
    /// Sending QUIT failed while closing a connection. The socket is closed
    /// all the same, and the slot was released after that.
    #[error(
        "closing connection {id} failed: {source}; the socket was closed anyway and the slot released, nothing to do unless this repeats (then look at the server's error log)"
    )]
    Close {
        /// The server's id of the connection.
        id: u32,
        /// The driver's error.
        #[source]
        source: mysql_async::Error,
    },
}

impl Error {
    /// The MySQL error code behind the error, if any: the last attempt's for
    /// [`Error::Connect`], the refusal's for [`Error::MonitorRefused`], the
    /// server's for [`Error::Query`].
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Connect { attempts, .. } => attempts.last().and_then(|a| a.code),
            Error::MonitorRefused { code, .. } => Some(*code),
            Error::Query {
                source: mysql_async::Error::Server(e),
                ..
            } => Some(e.code),
            _ => None,
        }
    }

    /// The connection attempts behind an [`Error::Connect`]; empty for other
    /// errors.
    pub fn attempts(&self) -> &[Attempt] {
        match self {
            Error::Connect { attempts, .. } => attempts,
            _ => &[],
        }
    }

    /// True for a failed connect that another try later may fix: the last
    /// attempt was refused for lack of connections (1040, 1203, 1226) or
    /// failed on the network. False for TLS failures, 3159, access denied
    /// and everything else that needs a change first.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Connect { .. } | Error::MonitorRefused { .. })
            && is_retryable(self.code())
    }

    /// True when no slot came before the slot timeout.
    pub fn is_slot_timeout(&self) -> bool {
        matches!(self, Error::Slot { source, .. } if source.is_timeout())
    }

    pub(crate) fn query(what: impl Into<String>, source: mysql_async::Error) -> Self {
        Error::Query {
            what: what.into(),
            source,
        }
    }
}

/// Whether a connect failure with this code is worth another attempt.
pub(crate) fn is_retryable(code: Option<u16>) -> bool {
    use codes::*;
    matches!(
        code,
        Some(
            TOO_MANY_CONNECTIONS
                | TOO_MANY_USER_CONNECTIONS
                | USER_LIMIT_REACHED
                | CR_CONNECTION_ERROR
                | CR_CONN_HOST_ERROR
                | CR_SERVER_GONE_ERROR
                | CR_SERVER_LOST
        )
    )
}

/// What to do about a connect failure with this code.
pub(crate) fn advice(code: Option<u16>) -> &'static str {
    use codes::*;
    match code {
        Some(TOO_MANY_CONNECTIONS) => {
            "the server's max_connections is used up by all its clients together: lower the pool capacity so that it leaves room for the other clients (`dbslots connections` suggests one), stop workers that bypass the pool, or raise max_connections"
        }
        Some(TOO_MANY_USER_CONNECTIONS) => {
            "this account has as many connections as the server's global max_user_connections allows: make the pool capacity smaller than that limit, end idle connections of the account (kill_idle), or raise max_user_connections"
        }
        Some(USER_LIMIT_REACHED) => {
            "this account has reached its own MAX_USER_CONNECTIONS (or another per-account limit): make the pool capacity smaller than that limit, end idle connections of the account (kill_idle), or raise it with ALTER USER ... WITH MAX_USER_CONNECTIONS"
        }
        Some(ACCESS_DENIED) => {
            "check the user name and password in the URL and that the account exists for this client's host (a MariaDB with require_secure_transport=ON also answers a connection without TLS this way: drop ssl-mode=DISABLED or require_ssl=false); retrying cannot help"
        }
        Some(SECURE_TRANSPORT_REQUIRED) => {
            "the server accepts only TLS connections (require_secure_transport=ON): remove ssl-mode=DISABLED (or require_ssl=false) from the URL, or say ssl-mode=VERIFY_CA&ssl-ca=PATH to also check the server's certificate; retrying cannot help"
        }
        Some(UNKNOWN_DATABASE) => {
            "create the database or correct its name in the URL; retrying cannot help"
        }
        Some(DB_ACCESS_DENIED) => {
            "grant the account privileges on the database, or connect to one it may use; retrying cannot help"
        }
        Some(HOST_BLOCKED) => {
            "the server blocks this host after too many failed connects: fix the cause, then run FLUSH HOSTS (or mysqladmin flush-hosts) as an administrator"
        }
        Some(HOST_NOT_PRIVILEGED) => {
            "the account may not connect from this host: create it for this host or connect from an allowed one"
        }
        Some(CR_CONNECTION_ERROR | CR_CONN_HOST_ERROR) => {
            "check that the server runs and listens at the URL's host and port (or socket), and that nothing blocks the way; with mysql_async, add prefer_socket=false to the URL to stay on TCP"
        }
        Some(CR_SERVER_GONE_ERROR | CR_SERVER_LOST) => {
            "the server closed the connection during the handshake: look at its error log (restart, crash, connect_timeout, a proxy in between)"
        }
        _ => "see the server's message; retrying does not help with this error",
    }
}

fn connect_message(
    url: &str,
    pool: Option<&str>,
    slot: Option<u32>,
    attempts: &[Attempt],
) -> String {
    let mut out = format!("cannot connect to {url}");
    if let (Some(pool), Some(slot)) = (pool, slot) {
        let _ = write!(out, " (holding slot {slot} of pool {pool})");
    }
    let last = attempts.last();
    let last_code = last.and_then(|a| a.code);
    let what_to_do = last
        .and_then(|a| a.advice.as_deref())
        .unwrap_or_else(|| advice(last_code));
    match (attempts, last_code) {
        ([], _) => out.push_str(": no attempt was made"),
        // One attempt that retrying cannot fix: one line, the reason and
        // what to change.
        ([a], code) if !is_retryable(code) => {
            out.push_str(": ");
            if let Some(code) = code {
                let _ = write!(out, "error {code}: ");
            }
            let _ = write!(out, "{} (not retried); what to do: {what_to_do}", a.message);
            return out;
        }
        (all, _) => {
            let _ = write!(out, ": gave up after {} attempts", all.len());
        }
    }
    for a in attempts {
        let _ = write!(out, "\n  attempt {}: ", a.number);
        if let Some(code) = a.code {
            let _ = write!(out, "error {code}: ");
        }
        out.push_str(&a.message);
        if let Some(d) = a.delay {
            let _ = write!(out, "; retried after {} ms", d.as_millis());
        }
    }
    let _ = write!(out, "\nwhat to do: {what_to_do}");
    out
}

fn refused_message(url: &str, code: u16, message: &str) -> String {
    let (what, first) = match code {
        codes::TOO_MANY_CONNECTIONS => (
            "the server has no connection left (max_connections)",
            "connect as an account with CONNECTION_ADMIN or SUPER: MySQL keeps one connection beyond max_connections for such an account, MariaDB too and, where extra_port is set, extra_max_connections more on that port",
        ),
        _ => (
            "the account has no connection left (max_user_connections or its own MAX_USER_CONNECTIONS)",
            "connect as another account, ideally an administrator with PROCESS and CONNECTION_ADMIN (or SUPER), who sees and may kill every connection; per-account limits are not lifted for administrators",
        ),
    };
    format!(
        "the server refused the monitor's own connection to {url}: error {code}: {message}\n\
         {what}; to get in and clean up:\n  \
         1. {first}\n  \
         2. stop or pause the workers (or lower the pool capacity with `dbslots resize`) so that connections are given back\n  \
         3. once connected as such an account, list the connections with SELECT ID, USER, HOST, COMMAND, TIME FROM information_schema.PROCESSLIST ORDER BY TIME DESC, and end the stuck ones with KILL <ID> (or kill_idle)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(number: u32, code: u16, delay: Option<u64>) -> Attempt {
        Attempt {
            number,
            code: Some(code),
            message: "Too many connections".into(),
            delay: delay.map(Duration::from_millis),
            advice: None,
        }
    }

    #[test]
    fn connect_message_lists_every_attempt_and_advice() {
        let e = Error::Connect {
            url: "mysql://app:***@db/x".into(),
            pool: Some("/run/p".into()),
            slot: Some(3),
            attempts: vec![attempt(1, 1040, Some(100)), attempt(2, 1040, None)],
        };
        let text = e.to_string();
        assert!(text.contains("slot 3 of pool /run/p"), "{text}");
        assert!(text.contains("gave up after 2 attempts"), "{text}");
        assert!(text.contains("attempt 1: error 1040: Too many connections; retried after 100 ms"));
        assert!(text.contains("attempt 2: error 1040"), "{text}");
        assert!(text.contains("max_connections"), "{text}");
        assert_eq!(e.code(), Some(1040));
    }

    #[test]
    fn a_single_fatal_attempt_says_it_was_not_retried() {
        let e = Error::Connect {
            url: "mysql://app:***@db/x".into(),
            pool: None,
            slot: None,
            attempts: vec![Attempt {
                number: 1,
                code: Some(1045),
                message: "Access denied for user 'app'@'h' (using password: YES)".into(),
                delay: None,
                advice: None,
            }],
        };
        let text = e.to_string();
        assert!(!text.contains('\n'), "one line: {text}");
        assert!(text.contains("error 1045: Access denied"), "{text}");
        assert!(text.contains("(not retried)"), "{text}");
        assert!(text.contains("password in the URL"), "{text}");
    }

    #[test]
    fn only_limits_and_network_failures_are_retryable() {
        for code in [1040, 1203, 1226, 2002, 2003, 2006, 2013] {
            assert!(is_retryable(Some(code)), "{code}");
        }
        for code in [1044, 1045, 1049, 1064, 1129, 3159] {
            assert!(!is_retryable(Some(code)), "{code}");
        }
        assert!(!is_retryable(None));
    }

    #[test]
    fn refusal_message_names_the_ways_in() {
        let text = refused_message("mysql://m:***@db/", 1040, "Too many connections");
        assert!(text.contains("CONNECTION_ADMIN"), "{text}");
        assert!(text.contains("extra_max_connections"), "{text}");
        assert!(text.contains("KILL <ID>"), "{text}");
        assert!(text.contains("stop or pause the workers"), "{text}");
        let text = refused_message("mysql://m:***@db/", 1226, "User has exceeded");
        assert!(text.contains("another account"), "{text}");
    }
}
