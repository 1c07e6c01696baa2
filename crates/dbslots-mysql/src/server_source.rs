//! [`ServerSource`]: a server's limits and connections for dashboards,
//! read through one kept-open monitor connection, never blocking a reader
//! on the server.
//!
//! # Implementation Details
//!
//! A read that finds the last reading older than [`SERVER_FRESH`] starts
//! one refresh task (never two) and waits for it at most as long as the
//! caller allows; if the server is slow, down or unreachable, the caller
//! gets the last good reading marked as not up. The refresh task owns the
//! monitor connection while it runs; the state's mutex is a plain one,
//! held only to copy or store a reading, never across a connect or a query.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mysql_async::Conn;
use tokio::sync::watch;

use crate::{Processlist, ServerLimits};

/// How long a reading of the server is reused before it is read again.
pub const SERVER_FRESH: Duration = Duration::from_millis(500);

/// How long one reading of the server may take once connected.
const SERVER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One reading of the server: its limits and usage, and its connections.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerReading {
    /// Limits and counters.
    pub limits: ServerLimits,
    /// The connections the monitor's account may see.
    pub processlist: Processlist,
}

/// What a [`ServerSource`] knows about the server at one moment.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServerSnapshot {
    /// Whether the latest attempt to read the server succeeded and no
    /// newer attempt is overdue.
    pub up: bool,
    /// The latest good reading, however old (see `age`).
    pub last: Option<ServerReading>,
    /// How long ago `last` was read.
    pub age: Option<Duration>,
    /// Why the server is not up (redacted), when it is not.
    pub error: Option<String>,
}

impl ServerSnapshot {
    /// The latest reading if the server is up, else why not.
    pub fn current(&self) -> Result<&ServerReading, String> {
        match (&self.last, self.up) {
            (Some(r), true) => Ok(r),
            _ => Err(self
                .error
                .clone()
                .unwrap_or_else(|| "the server has not been read yet".into())),
        }
    }
}

/// A MySQL server watched through one monitor connection (outside any
/// pool, see [`connect_monitor`](crate::connect_monitor)), kept open so
/// that it stays in when the server fills up and re-opened after a
/// failure; readings are shared for [`SERVER_FRESH`] however many readers
/// ask.
///
/// ```no_run
/// # async fn demo() {
/// use std::time::Duration;
/// use dbslots_mysql::ServerSource;
///
/// let source = ServerSource::new("mysql://monitor:secret@db:3306/".into());
/// let snapshot = source.read(Duration::from_millis(300)).await;
/// match snapshot.current() {
///     Ok(r) => println!("{} of {}", r.limits.threads_connected, r.limits.max_connections),
///     Err(e) => println!("down: {e}"),
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct ServerSource {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    state: Mutex<State>,
    /// Bumped after every attempt.
    attempts: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// The monitor connection, while no refresh task owns it.
    conn: Option<Conn>,
    /// When the running refresh started.
    refreshing_since: Option<Instant>,
    /// When the latest attempt ended, and whether it succeeded.
    attempted: Option<(Instant, Result<(), String>)>,
    /// The latest good reading and when it was taken.
    last_good: Option<(Instant, ServerReading)>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is a plain assignment: a poisoned state is whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ServerSource {
    /// A source for `url`; connects on the first read.
    pub fn new(url: String) -> Self {
        let (attempts, _) = watch::channel(0);
        ServerSource {
            inner: Arc::new(Inner {
                url,
                state: Mutex::new(State::default()),
                attempts,
            }),
        }
    }

    /// The server's URL, redacted.
    pub fn shown_url(&self) -> String {
        dbslots_core::redact(&self.inner.url)
    }

    /// The fleet `dbslots connections` suggests a capacity for: the URL's
    /// user, on one host.
    pub fn fleet(&self) -> crate::Fleet {
        let user = crate::ServerUrl::parse(&self.inner.url)
            .ok()
            .and_then(|u| u.opts().user().map(str::to_string))
            .unwrap_or_default();
        crate::Fleet { user, hosts: 1 }
    }

    /// What is known about the server, refreshed if older than
    /// [`SERVER_FRESH`]: waits for a refresh at most `wait`, then answers
    /// with the last good reading, not up. Must be called inside a tokio
    /// runtime (the refresh is a task of its own, which finishes even if
    /// this future is dropped).
    pub async fn read(&self, wait: Duration) -> ServerSnapshot {
        let mut attempts = self.inner.attempts.subscribe();
        let started = {
            let mut state = self.inner.lock();
            let fresh = state
                .attempted
                .as_ref()
                .is_some_and(|(at, _)| at.elapsed() < SERVER_FRESH);
            if fresh {
                return snapshot(&state, wait);
            }
            if state.refreshing_since.is_none() {
                state.refreshing_since = Some(Instant::now());
                let conn = state.conn.take();
                let inner = Arc::clone(&self.inner);
                tokio::spawn(refresh(inner, conn));
            }
            state.refreshing_since
        };
        let _ = tokio::time::timeout(wait, attempts.changed()).await;
        let state = self.inner.lock();
        if started.is_some() && state.refreshing_since == started {
            tracing::debug!(url = %self.shown_url(), "the server did not answer in time; showing the last reading");
        }
        snapshot(&state, wait)
    }

    /// Closes the monitor connection, if no refresh is using it.
    pub async fn close(&self) {
        let conn = self.inner.lock().conn.take();
        if let Some(conn) = conn {
            let _ = conn.disconnect().await;
        }
    }
}

/// The snapshot of `state`; a refresh running longer than `wait` means the
/// server is not up.
fn snapshot(state: &State, wait: Duration) -> ServerSnapshot {
    let overdue = state
        .refreshing_since
        .is_some_and(|since| since.elapsed() >= wait);
    let (up, error) = match &state.attempted {
        _ if overdue => (
            false,
            Some(format!(
                "the server has not answered for {:.1} s",
                state
                    .refreshing_since
                    .map(|s| s.elapsed().as_secs_f64())
                    .unwrap_or_default()
            )),
        ),
        Some((_, Ok(()))) => (true, None),
        Some((_, Err(e))) => (false, Some(e.clone())),
        None => (false, Some("the server has not been read yet".into())),
    };
    ServerSnapshot {
        up,
        last: state.last_good.as_ref().map(|(_, r)| r.clone()),
        age: state.last_good.as_ref().map(|(at, _)| at.elapsed()),
        error,
    }
}

/// One attempt: (re)connect if needed, read, store, wake the readers.
async fn refresh(inner: Arc<Inner>, mut conn: Option<Conn>) {
    let result = read_now(&inner.url, &mut conn).await;
    if let Err(e) = &result {
        tracing::warn!(url = %dbslots_core::redact(&inner.url), error = %e, "cannot read the server");
    }
    {
        let mut state = inner.lock();
        let now = Instant::now();
        state.refreshing_since = None;
        state.conn = conn;
        state.attempted = Some((now, result.as_ref().map(|_| ()).map_err(Clone::clone)));
        if let Ok(reading) = result {
            state.last_good = Some((now, reading));
        }
    }
    inner.attempts.send_modify(|n| *n += 1);
}

async fn read_now(url: &str, conn: &mut Option<Conn>) -> Result<ServerReading, String> {
    let kept = conn.is_some();
    match read_once(url, conn).await {
        // The kept connection was gone (the server's wait_timeout, a
        // proxy's idle timeout, a restart, KILL): that says nothing about
        // the server now, so connect again at once.
        Err(ReadFailure::Gone(e)) if kept => {
            tracing::debug!(url = %dbslots_core::redact(url), error = %e, "the monitor connection was gone; connecting again");
            read_once(url, conn).await.map_err(ReadFailure::into_text)
        }
        other => other.map_err(ReadFailure::into_text),
    }
}

/// Why one read failed.
enum ReadFailure {
    /// The connection was gone (see [`crate::connection_is_gone`]).
    Gone(String),
    /// Anything else.
    Other(String),
}

impl ReadFailure {
    fn into_text(self) -> String {
        match self {
            ReadFailure::Gone(e) | ReadFailure::Other(e) => e,
        }
    }
}

/// One read over the kept connection, or a new one.
async fn read_once(url: &str, conn: &mut Option<Conn>) -> Result<ServerReading, ReadFailure> {
    if conn.is_none() {
        let c = crate::connect_monitor(url)
            .await
            .map_err(|e| ReadFailure::Other(e.to_string()))?;
        *conn = Some(c);
    }
    let Some(c) = conn.as_mut() else {
        return Err(ReadFailure::Other("no monitor connection".into()));
    };
    let read = async {
        let limits = ServerLimits::read(c).await?;
        let processlist = Processlist::read(c).await?;
        Ok::<_, crate::Error>(ServerReading {
            limits,
            processlist,
        })
    };
    match tokio::time::timeout(SERVER_READ_TIMEOUT, read).await {
        Ok(Ok(reading)) => Ok(reading),
        Ok(Err(e)) => {
            // Connect again on the next read.
            *conn = None;
            let gone = matches!(&e, crate::Error::Query { source, .. } if crate::connection_is_gone(source));
            Err(if gone {
                ReadFailure::Gone(e.to_string())
            } else {
                ReadFailure::Other(e.to_string())
            })
        }
        Err(_) => {
            *conn = None;
            Err(ReadFailure::Other(format!(
                "the server did not answer within {} s",
                SERVER_READ_TIMEOUT.as_secs()
            )))
        }
    }
}
