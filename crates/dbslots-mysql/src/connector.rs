//! The connector and its connections: a slot first, then a MySQL connection.
//!
//! # Implementation details
//!
//! The one invariant: **a slot is released only after the socket of the
//! connection it guards is closed.** Every path keeps it:
//!
//! * [`Connection::close`] sends COM_QUIT with `Conn::disconnect` and
//!   releases the slot when that returns (the driver has closed the socket
//!   by then, whether QUIT went through or not).
//! * Dropping a [`Connection`] spawns a task on the current tokio runtime
//!   that owns both the `Conn` and the `Slot`, disconnects, then drops the
//!   slot. Without a runtime the `Conn` is dropped first, which closes its
//!   socket synchronously (the driver cannot send QUIT without a runtime),
//!   and the slot after it. A task that never runs (the runtime shuts down)
//!   drops the connection before the slot too: [`Held`] declares them in that
//!   order.
//! * Opening runs inline on the caller's task, with the slot bound before
//!   the connect is awaited. If the caller stops waiting (its future is
//!   dropped, say by a timeout) or the connect deadline fires, the connect
//!   in progress is dropped first and the slot after it. The driver would
//!   hand such a half-open connection to a background task to close;
//!   [`ServerUrl::connect`](crate::ServerUrl::connect) drops it on a thread
//!   without a runtime instead, where the socket is closed at once, and
//!   waits for that. (A helper task per connect would cost a hand-back on
//!   every connect: measured +3.5 % of connect latency; the thread is paid
//!   only by abandoned connects.)
//!
//! What stays outside the client's control: the server tears a closed
//! connection down a few microseconds after the socket closes, and with
//! `ssl-mode=PREFERRED` the one TLS attempt that finds a server without TLS
//! is closed by the driver in the background (once per [`ServerUrl`]). The
//! reserve kept by
//! [`ServerLimits::suggest_capacity`](crate::ServerLimits::suggest_capacity)
//! covers both.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbslots_core::{Pool, Slot};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

use crate::error::{Attempt, Error, Result, codes, is_retryable};
use crate::retry::{Backoff, Failure};
use crate::server_url::ServerUrl;

/// How a [`Connector`] waits for slots and retries refused connects.
#[derive(Debug, Clone)]
pub struct ConnectorOptions {
    slot_timeout: Duration,
    attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    jitter: f64,
    connect_timeout: Duration,
}

impl Default for ConnectorOptions {
    fn default() -> Self {
        ConnectorOptions {
            slot_timeout: Duration::from_secs(30),
            attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            jitter: 0.5,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl ConnectorOptions {
    /// The defaults: slot timeout 30 s, 5 attempts, delays from 100 ms
    /// doubling up to 2 s with 50 % jitter, connect timeout 10 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long [`Connector::connect`] waits for a slot before it fails with
    /// [`Error::Slot`]; 30 s by default.
    pub fn slot_timeout(mut self, timeout: Duration) -> Self {
        self.slot_timeout = timeout;
        self
    }

    /// How many times a connect is tried in all (at least 1); 5 by default.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The wait after the first refused attempt, doubled after each further
    /// one; 100 ms by default.
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// The longest wait between two attempts; 2 s by default.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// The share of each wait that is random, from 0.0 (exact exponential
    /// waits) to 1.0 (anything between zero and the nominal wait); 0.5 by
    /// default. Workers refused together then come back spread out.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.5
        };
        self
    }

    /// How long one connect attempt (TCP connect, handshake, login) may
    /// take before it counts as failed (client code 2003); 10 s by default.
    /// [`Connection::ensure_alive`] waits as long for the answer to its
    /// ping.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            base: self.base_delay,
            max: self.max_delay,
            jitter: self.jitter,
        }
    }
}

/// Opens MySQL connections, each only while holding a slot of a
/// [`Pool`].
///
/// [`Connector::connect`] first waits for a slot (up to the slot timeout),
/// then connects, retrying refusals for lack of connections (1040, 1203,
/// 1226) and network failures with exponential backoff and jitter while it
/// keeps the slot. Access denied (1045), unknown database (1049) and other
/// server errors fail at once. Either way the slot is released when the
/// connect fails.
///
/// The URL is used as given: note that `mysql_async` prefers the Unix socket
/// (`prefer_socket` is true unless the URL says `prefer_socket=false`), so a
/// connect to a server on this host briefly opens a second connection over
/// the socket and closes the TCP one. Say `prefer_socket=false` when each
/// connect must use exactly one server connection.
///
/// A `Connector` is cheap to clone.
#[derive(Clone)]
pub struct Connector {
    inner: Arc<Shared>,
}

struct Shared {
    server: ServerUrl,
    url: String,
    pool: Pool,
    pool_name: String,
    options: ConnectorOptions,
    via_socket: bool,
    /// The slot the parent holds for this process ([`Connector::from_env`]).
    inherited: Option<Inherited>,
}

/// A slot held by the parent process: it guards one connection at a time,
/// so connections of this process take turns on it.
struct Inherited {
    index: u32,
    turn: Arc<tokio::sync::Semaphore>,
}

/// What a connection holds: its own slot, or its turn on the slot the
/// parent holds. Dropped after the connection's socket is closed.
enum Hold {
    Own(Slot),
    Inherited {
        index: u32,
        _turn: tokio::sync::OwnedSemaphorePermit,
    },
}

impl Hold {
    fn index(&self) -> u32 {
        match self {
            Hold::Own(slot) => slot.index(),
            Hold::Inherited { index, .. } => *index,
        }
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("url", &self.inner.url)
            .field("pool", &self.inner.pool_name)
            .field("options", &self.inner.options)
            .finish()
    }
}

impl Connector {
    /// A connector for `url` (`mysql://USER:PASSWORD@HOST:PORT/DATABASE`)
    /// with the default options.
    pub fn new(url: &str, pool: Pool) -> Result<Connector> {
        Self::with_options(url, pool, ConnectorOptions::default())
    }

    /// A connector for `url` with `options`.
    ///
    /// TLS follows the URL's `ssl-mode` (PREFERRED by default) and `ssl-ca`;
    /// see [`ServerUrl`].
    pub fn with_options(url: &str, pool: Pool, options: ConnectorOptions) -> Result<Connector> {
        Ok(Self::from_server(ServerUrl::parse(url)?, pool, options))
    }

    /// A connector for driver options built in code (`OptsBuilder`); their
    /// own `ssl_opts` decide about TLS.
    pub fn from_opts(opts: Opts, pool: Pool, options: ConnectorOptions) -> Connector {
        let url = describe_opts(&opts);
        Self::from_server(ServerUrl::from_opts(opts, url), pool, options)
    }

    /// The connector of a worker started by `dbslots spawn` or
    /// `dbslots exec`: the one line a worker needs.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), dbslots_mysql::Error> {
    /// use dbslots_mysql::{Connection, Connector, ConnectorOptions};
    ///
    /// let conn = Connector::from_env("mysql://app:pw@db/app", ConnectorOptions::new())?
    ///     .connect()
    ///     .await?;
    /// // ... work ...
    /// Connection::close(conn).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// When the parent holds a slot for this process
    /// ([`dbslots_core::env::SLOT`] is set), connections use that slot, one
    /// at a time: a second slot from the same pool would wait for this
    /// process's own slot once the pool is full. Otherwise each connection
    /// takes its own slot of the pool [`dbslots_core::env::POOL`] names.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for a bad URL; [`Error::Slot`] when the
    /// environment names no pool (run the worker under `dbslots spawn` or
    /// `dbslots exec`, or build the connector with [`Connector::new`]) or
    /// the pool cannot be opened.
    pub fn from_env(url: &str, options: ConnectorOptions) -> Result<Connector> {
        Self::from_env_server(ServerUrl::parse(url)?, options)
    }

    /// [`Connector::from_env`] for a parsed [`ServerUrl`] (say, one with
    /// [`ServerUrl::with_tcp_keepalive`]).
    ///
    /// # Errors
    ///
    /// [`Error::Slot`] as for [`Connector::from_env`].
    pub fn from_env_server(server: ServerUrl, options: ConnectorOptions) -> Result<Connector> {
        use dbslots_core::{PoolOptions, env};
        let redacted = server.redacted().to_string();
        let slot_error = |source| Error::Slot {
            url: redacted.clone(),
            source,
        };
        let inherited = env::inherited_slot().map_err(slot_error)?;
        let addr = match &inherited {
            Some(held) => held.pool.clone(),
            None => match std::env::var(env::POOL) {
                Ok(pool) => dbslots_core::PoolAddr::parse(&pool).map_err(slot_error)?,
                Err(_) => {
                    return Err(slot_error(dbslots_core::Error::InvalidAddress {
                        address: String::new(),
                        reason: format!(
                            "neither {} nor {} is set: start this worker with `dbslots spawn` or `dbslots exec`, or give the connector a pool (Connector::new)",
                            env::SLOT,
                            env::POOL
                        ),
                    }));
                }
            },
        };
        let pool = Pool::open(addr, PoolOptions::new()).map_err(slot_error)?;
        let mut connector = Self::from_server(server, pool, options);
        if let Some(held) = inherited {
            let shared = Arc::get_mut(&mut connector.inner)
                .expect("a connector just built has no other handle");
            shared.inherited = Some(Inherited {
                index: held.index,
                turn: Arc::new(tokio::sync::Semaphore::new(1)),
            });
        }
        Ok(connector)
    }

    /// A connector for a parsed [`ServerUrl`].
    pub fn from_server(server: ServerUrl, pool: Pool, options: ConnectorOptions) -> Connector {
        let url = server.redacted().to_string();
        let opts = server.opts();
        let via_socket = opts.socket().is_some();
        if opts.prefer_socket() && !via_socket {
            tracing::debug!(
                url = %url,
                "prefer_socket is on: a connect to a server on this host briefly uses a second connection over its Unix socket; add prefer_socket=false to the URL to avoid it"
            );
        }
        let pool_name = pool.addr().to_string();
        Connector {
            inner: Arc::new(Shared {
                server,
                url,
                pool,
                pool_name,
                options,
                via_socket,
                inherited: None,
            }),
        }
    }

    /// The URL connections go to, password redacted.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The pool whose slots the connections hold.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The options in force.
    pub fn options(&self) -> &ConnectorOptions {
        &self.inner.options
    }

    /// Waits for a slot, then opens a connection holding it.
    ///
    /// Must run inside a tokio runtime, as `mysql_async` needs one.
    ///
    /// # Errors
    ///
    /// [`Error::Slot`] when no slot came within the slot timeout (nothing
    /// was opened); [`Error::Connect`] when the connect failed (every
    /// attempt listed; the slot is released).
    ///
    /// # Cancellation
    ///
    /// Dropping the returned future never leaks a slot nor leaves a
    /// connection without one: a connection opened after the drop is closed
    /// before its slot is released.
    pub async fn connect(&self) -> Result<Connection> {
        let slot = self.take_slot().await?;
        let (conn, slot, failed) = self.open(slot).await.map_err(|(e, _slot)| e)?;
        Ok(Connection {
            conn: Some(conn),
            slot: Some(slot),
            connector: self.clone(),
            failed_attempts: failed,
        })
    }

    /// Waits for a slot of the pool (or for this process's turn on the
    /// slot its parent holds), up to the slot timeout.
    async fn take_slot(&self) -> Result<Hold> {
        let shared = &self.inner;
        let timeout = shared.options.slot_timeout;
        if let Some(held) = &shared.inherited {
            let started = Instant::now();
            return match tokio::time::timeout(timeout, held.turn.clone().acquire_owned()).await {
                Ok(Ok(turn)) => Ok(Hold::Inherited {
                    index: held.index,
                    _turn: turn,
                }),
                // The semaphore is never closed; a timeout it is.
                Ok(Err(_)) | Err(_) => Err(Error::Slot {
                    url: shared.url.clone(),
                    source: dbslots_core::Error::Timeout {
                        pool: format!(
                            "{} (slot {} held by the parent process, in use by another connection of this process)",
                            shared.pool_name, held.index
                        ),
                        waited: started.elapsed(),
                        capacity: 1,
                        active: 1,
                        waiting: 1,
                    },
                }),
            };
        }
        shared
            .pool
            .acquire_timeout(timeout)
            .await
            .map(Hold::Own)
            .map_err(|source| Error::Slot {
                url: shared.url.clone(),
                source,
            })
    }

    /// Opens a connection for `slot`, inline on the caller's task.
    ///
    /// Cancellation-safe without a helper task: if the caller stops waiting,
    /// this future is dropped, and with it first the connect in progress
    /// (which closes its socket) and only then `slot`, which was bound
    /// before the awaited future. A spawned task would cost a cross-thread
    /// hand-back on every connect (measured: +3.5 % of connect latency).
    async fn open(
        &self,
        slot: Hold,
    ) -> std::result::Result<(Conn, Hold, Vec<Attempt>), (Error, Option<Hold>)> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err((self.no_runtime(slot.index()), Some(slot)));
        }
        match self.inner.open_with_retries(slot.index()).await {
            Ok((conn, failed)) => Ok((conn, slot, failed)),
            Err(e) => Err((e, Some(slot))),
        }
    }

    fn no_runtime(&self, slot: u32) -> Error {
        Error::Connect {
            url: self.inner.url.clone(),
            pool: Some(self.inner.pool_name.clone()),
            slot: Some(slot),
            attempts: vec![Attempt {
                number: 1,
                code: None,
                message: "no tokio runtime is running (or it is shutting down); connect from inside a runtime, as mysql_async requires".into(),
                delay: None,
                advice: None,
            }],
        }
    }
}

impl Shared {
    /// Tries to connect up to `attempts` times. Returns the connection and
    /// the failed attempts before it.
    async fn open_with_retries(&self, slot: u32) -> Result<(Conn, Vec<Attempt>)> {
        let options = &self.options;
        let backoff = options.backoff();
        let mut attempts: Vec<Attempt> = Vec::new();
        for number in 1..=options.attempts {
            let started = Instant::now();
            // A deadline that fires drops the connect, which closes its
            // socket before this loop goes on (see `ServerUrl::connect`).
            let outcome =
                crate::deadline::within(options.connect_timeout, self.server.connect()).await;
            let failure = match outcome {
                Ok(Ok(conn)) => {
                    tracing::debug!(
                        pool = %self.pool_name,
                        slot,
                        attempt = number,
                        id = conn.id(),
                        micros = started.elapsed().as_micros() as u64,
                        "connected"
                    );
                    return Ok((conn, attempts));
                }
                Ok(Err(e)) => Failure::from_driver(&e, self.via_socket),
                Err(_) => Failure::timed_out(options.connect_timeout, self.via_socket),
            };
            let retry = is_retryable(failure.code) && number < options.attempts;
            let delay = retry.then(|| backoff.delay(number));
            match delay {
                Some(d) => tracing::info!(
                    pool = %self.pool_name,
                    slot,
                    attempt = number,
                    code = failure.code,
                    delay_ms = d.as_millis() as u64,
                    "connect failed, retrying: {}",
                    failure.message
                ),
                None => tracing::warn!(
                    pool = %self.pool_name,
                    slot,
                    attempt = number,
                    code = failure.code,
                    "connect failed, giving up: {}",
                    failure.message
                ),
            }
            attempts.push(Attempt {
                number,
                code: failure.code,
                message: failure.message,
                delay,
                advice: failure.advice.map(str::to_string),
            });
            let Some(delay) = delay else { break };
            tokio::time::sleep(delay).await;
        }
        Err(Error::Connect {
            url: self.url.clone(),
            pool: Some(self.pool_name.clone()),
            slot: Some(slot),
            attempts,
        })
    }
}

/// Whether the connection is still usable after [`Connection::ensure_alive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The server answered the ping.
    Alive,
    /// The server had dropped the connection (KILL, `wait_timeout`, a
    /// restart), it did not answer within the connect timeout, or an
    /// earlier call on it was cancelled; a new one was opened.
    Reopened {
        /// The server's id of the dropped connection.
        previous_id: u32,
    },
}

/// A MySQL connection that holds a slot of its connector's pool.
///
/// Derefs to [`mysql_async::Conn`], so every `Queryable` method works on it.
/// Close it with [`Connection::close`]; a connection that is dropped instead
/// still releases its slot, but only once its socket is closed (see the
/// module documentation of the invariant).
#[must_use = "a connection holds a slot until it is closed"]
pub struct Connection {
    /// `Some` until `close`, `reconnect` or `drop` take it.
    conn: Option<Conn>,
    /// `None` only after an `ensure_alive` that was cancelled while
    /// re-opening (its task released the slot); the connection is dead then.
    slot: Option<Hold>,
    connector: Connector,
    failed_attempts: Vec<Attempt>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.conn.as_ref().map(Conn::id))
            .field("slot", &self.slot.as_ref().map(Hold::index))
            .field("url", &self.connector.inner.url)
            .field("pool", &self.connector.inner.pool_name)
            .finish()
    }
}

const HOLDS_CONN: &str = "a Connection holds its Conn until close, reconnect or drop consume it";

impl Deref for Connection {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect(HOLDS_CONN)
    }
}

impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect(HOLDS_CONN)
    }
}

impl Connection {
    /// The slot this connection holds; `None` when it uses the slot its
    /// process holds through its parent ([`Connector::from_env`]; see
    /// [`Connection::slot_index`]) and after a cancelled
    /// [`Connection::ensure_alive`] (the next one takes a new slot).
    pub fn slot(&self) -> Option<&Slot> {
        match self.slot.as_ref()? {
            Hold::Own(slot) => Some(slot),
            Hold::Inherited { .. } => None,
        }
    }

    /// The number of the slot this connection uses, its own or the one its
    /// process holds through its parent; `None` only after a cancelled
    /// [`Connection::ensure_alive`].
    pub fn slot_index(&self) -> Option<u32> {
        self.slot.as_ref().map(Hold::index)
    }

    /// The attempts that failed before this connection was opened (by
    /// [`Connector::connect`] or the last re-open); empty when the first
    /// attempt succeeded.
    pub fn failed_attempts(&self) -> &[Attempt] {
        &self.failed_attempts
    }

    /// The connector that opened this connection.
    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Sends COM_QUIT, waits until it is written and the socket closed, then
    /// releases the slot.
    ///
    /// An associated function, called as `Connection::close(conn)`, so that
    /// `conn.close(statement)` still reaches [`Queryable::close`] through
    /// `Deref` (as deadpool's `Object::take(this)`).
    ///
    /// # Errors
    ///
    /// [`Error::Close`] when QUIT could not be sent (the server was gone);
    /// the socket is closed and the slot released all the same.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future never releases the slot before the socket is
    /// closed: the connection inside it is dropped (its socket closed)
    /// first.
    pub async fn close(mut this: Self) -> Result<()> {
        let conn = this.conn.take().expect(HOLDS_CONN);
        let slot = this.slot.take();
        let id = conn.id();
        // `slot` is declared before the disconnect future: if this future is
        // dropped mid-way, the connection (inside the disconnect future) is
        // dropped, closing its socket, before the slot.
        let result = conn.disconnect().await;
        if let Some(slot) = slot {
            tracing::trace!(pool = %this.connector.inner.pool_name, slot = slot.index(), id, "connection closed");
            drop(slot);
        }
        result.map_err(|source| Error::Close { id, source })
    }

    /// Checks the connection with a ping and, when the server has dropped
    /// it (KILL, `wait_timeout`, a restart) or the ping gets no answer
    /// within the connect timeout (a frozen network), opens a new one in
    /// the same slot, with the connector's retries.
    ///
    /// Session state (variables, temporary tables, prepared statements, an
    /// open transaction) does not survive a re-open: call this between units
    /// of work, such as before each job of a long-running worker.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when re-opening failed (the connection keeps its
    /// slot and stays dead; call again later, or drop it);
    /// [`Error::Query`] when the ping failed in a way that does not mean the
    /// connection is gone.
    ///
    /// # Cancellation
    ///
    /// Dropping the future while it re-opens leaves the connection dead and
    /// without a slot: the re-opening task closes what it opened and releases
    /// the slot. The next call takes a new slot first.
    pub async fn ensure_alive(&mut self) -> Result<Liveness> {
        let conn = self.conn.as_mut().expect(HOLDS_CONN);
        let no_answer_within = self.connector.inner.options.connect_timeout;
        // Bounded: on a frozen network (a peer that vanished without a
        // reset, a firewall dropping its state) a ping would otherwise wait
        // for the kernel to give up on the socket, a quarter of an hour.
        // A call on it that was cancelled (a ping of ours that timed out, a
        // query the caller gave up on) or failed fatally leaves it marked
        // disconnected, its replies possibly still to come: never ping it
        // again, a late reply could pass for the answer.
        let err = if conn.is_disconnected() {
            "an earlier call on it was cancelled or failed".to_string()
        } else {
            match crate::deadline::within(no_answer_within, conn.ping()).await {
                Ok(Ok(())) => return Ok(Liveness::Alive),
                Ok(Err(e)) if connection_is_gone(&e) => e.to_string(),
                Ok(Err(e)) => return Err(Error::query("checking the connection with a ping", e)),
                // The ping is half done: the connection cannot be used again
                // (the driver marks it disconnected).
                Err(()) => format!("no answer to a ping within {no_answer_within:?}"),
            }
        };
        let previous_id = conn.id();
        let slot = match self.slot.take() {
            Some(slot) => slot,
            None => self.acquire_new_slot().await?,
        };
        tracing::info!(
            pool = %self.connector.inner.pool_name,
            slot = slot.index(),
            id = previous_id,
            "the connection is gone ({err}); re-opening it in the same slot"
        );
        // The dead connection stays in place meanwhile: its socket is closed
        // (the driver closes it on a fatal error) or the server has ended
        // the session, so it does not count against any limit. (Except
        // behind a frozen network, where a server that is still up keeps
        // the old session until its own timeouts end it: `wait_timeout`,
        // TCP keepalive. Killing it by id from the new connection could hit
        // somebody else's session on a restarted or failed-over server,
        // whose ids start over.)
        match self.connector.open(slot).await {
            Ok((new, slot, failed)) => {
                let old = std::mem::replace(self.conn.as_mut().expect(HOLDS_CONN), new);
                self.slot = Some(slot);
                self.failed_attempts = failed;
                // Nothing to send to a dead connection; this only makes sure
                // its socket is closed (bounded: a frozen one never answers).
                let _ = crate::deadline::within(no_answer_within, old.disconnect()).await;
                Ok(Liveness::Reopened { previous_id })
            }
            Err((e, slot)) => {
                self.slot = slot;
                Err(e)
            }
        }
    }

    /// Closes this connection and opens a new one in the same slot (with
    /// the connector's retries), whether the old one was alive or not.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when the new connection cannot be opened; the slot
    /// is released then.
    pub async fn reconnect(mut self) -> Result<Connection> {
        let conn = self.conn.take().expect(HOLDS_CONN);
        let slot = self.slot.take();
        let connector = self.connector.clone();
        let id = conn.id();
        if let Err(e) = conn.disconnect().await {
            tracing::debug!(id, error = %e, "closing before reconnecting failed; the socket is closed anyway");
        }
        let slot = match slot {
            Some(slot) => slot,
            None => connector.take_slot().await?,
        };
        let (conn, slot, failed) = connector.open(slot).await.map_err(|(e, _slot)| e)?;
        Ok(Connection {
            conn: Some(conn),
            slot: Some(slot),
            connector,
            failed_attempts: failed,
        })
    }

    async fn acquire_new_slot(&self) -> Result<Hold> {
        self.connector.take_slot().await
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let held = Held {
            conn,
            slot: self.slot.take(),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let Held { conn, slot } = held;
                    let id = conn.id();
                    if let Err(e) = conn.disconnect().await {
                        tracing::debug!(id, error = %e, "closing a dropped connection failed; its socket is closed anyway");
                    }
                    drop(slot);
                });
            }
            // No runtime: dropping the `Conn` closes its socket right here
            // (no QUIT can be sent without a runtime), then the slot goes.
            Err(_) => drop(held),
        }
    }
}

/// A connection and its slot, declared so that the connection is dropped
/// (its socket closed) before the slot is released.
struct Held {
    conn: Conn,
    slot: Option<Hold>,
}

/// Whether `err` means the connection is gone: the server no longer has it
/// or the driver has closed its socket, so nothing more can be sent on it
/// and the next unit of work needs a new connection. The one rule of the
/// workspace ([`Connection::ensure_alive`] and the importer use it).
///
/// Gone: I/O errors; the driver's "connection closed" and protocol
/// desynchronisation; the server shutting down (1053), aborting the
/// connection on a network error (1152-1161), a killed connection or
/// session (1927, 3169), the inactivity timeout (4031). Not gone: any other
/// server error (a syntax error, a deadlock, a lock wait timeout: the
/// connection still works) and driver errors about the statement.
pub fn connection_is_gone(err: &mysql_async::Error) -> bool {
    use mysql_async::DriverError;
    match err {
        mysql_async::Error::Io(_) => true,
        mysql_async::Error::Driver(d) => matches!(
            d,
            DriverError::ConnectionClosed
                | DriverError::PacketOutOfOrder
                | DriverError::UnexpectedPacket { .. }
        ),
        mysql_async::Error::Server(e) => matches!(
            e.code,
            codes::SERVER_SHUTDOWN | 1152
                ..=1161
                    | codes::CONNECTION_KILLED
                    | codes::SESSION_WAS_KILLED
                    | codes::CLIENT_INTERACTION_TIMEOUT
        ),
        _ => false,
    }
}

/// `mysql://USER@HOST:PORT/DB` for options built in code.
fn describe_opts(opts: &Opts) -> String {
    let user = opts.user().map(|u| format!("{u}@")).unwrap_or_default();
    let db = opts.db_name().unwrap_or("");
    match opts.socket() {
        Some(socket) => format!("mysql://{user}localhost/{db}?socket={socket}"),
        None => format!(
            "mysql://{user}{}:{}/{db}",
            opts.ip_or_hostname(),
            opts.tcp_port()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_urls_are_reported_without_the_password() {
        let e = ServerUrl::parse("mysql://app:s3cret@db:notaport/x").unwrap_err();
        let text = e.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("app:***@db"), "{text}");
    }

    #[test]
    fn options_clamp_nonsense() {
        let o = ConnectorOptions::new().attempts(0).jitter(f64::NAN);
        assert_eq!(o.attempts, 1);
        assert_eq!(o.jitter, 0.5);
        assert_eq!(ConnectorOptions::new().jitter(7.0).jitter, 1.0);
    }

    #[test]
    fn a_gone_connection_is_told_from_a_failing_ping() {
        let killed = mysql_async::Error::Server(mysql_async::ServerError {
            code: 1927,
            message: "Connection was killed".into(),
            state: "70100".into(),
        });
        assert!(connection_is_gone(&killed));
        let other = mysql_async::Error::Server(mysql_async::ServerError {
            code: 1064,
            message: "syntax".into(),
            state: "42000".into(),
        });
        assert!(!connection_is_gone(&other));
        assert!(connection_is_gone(&mysql_async::Error::Driver(
            mysql_async::DriverError::ConnectionClosed
        )));
    }
}
