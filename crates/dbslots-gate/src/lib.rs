//! A transparent gate in front of a MySQL server: every client connection
//! takes one slot of a dbslots pool before the gate connects to the server
//! for it, and gives the slot back after the server's socket is closed.
//!
//! A key design decision made in this crate is that **the gate never parses
//! the protocol**: once a client has its slot, bytes are relayed both ways
//! unchanged, so authentication, TLS negotiated in-band, `COM_CHANGE_USER`
//! and every server version pass through untouched. The gate speaks MySQL
//! exactly once, and only to a client it refuses: the server speaks first,
//! so a queued client simply has not been greeted yet, and a refusal is an
//! ERR packet in place of the greeting (1040, SQLSTATE `08004`, a message
//! naming dbslots, the pool, its capacity and the number waiting), which
//! every client reports like the server's own "Too many connections".
//!
//! With a `redis://` pool a slot is a lease: a connection whose lease is
//! lost (the gate cut off from Redis or paused) is closed, the client's
//! socket and the server's, a safety margin before the pool can give the
//! slot to anyone else (see `lease`).
//!
//! Clients queue in the gate in accept order; a few agents wait in the pool
//! on their behalf (see `queue`), so the gate holds 10,000 queued clients
//! without 10,000 threads, and shares the pool FIFO with every other user.
//!
//! ```no_run
//! use dbslots_core::{Pool, PoolOptions};
//! use dbslots_gate::{Gate, GateOptions};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::open("/run/myapp/db-slots", PoolOptions::new().capacity(140))?;
//! let options = GateOptions::new(
//!     vec!["127.0.0.1:3307".parse()?, "unix:/run/dbslots-gate/mysql.sock".parse()?],
//!     "127.0.0.1:3306".parse()?,
//! );
//! let gate = Gate::bind(pool, options).await?;
//! let control = gate.control();
//! tokio::spawn(async move {
//!     let _ = tokio::signal::ctrl_c().await;
//!     control.drain(std::time::Duration::from_secs(30));
//! });
//! let report = gate.run().await;
//! println!("{} clients admitted", report.admitted);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod accept_failures;
mod endpoint;
mod error;
mod exposition;
mod file_budget;
mod idle_claims;
mod lease;
mod limits;
mod net;
mod packet;
mod posting;
mod queue;
mod relay;
mod stats;
mod threads;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dbslots_core::Pool;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, watch};

pub use endpoint::Endpoint;
pub use error::Error;
pub use exposition::render_gate_metrics;
pub use limits::raise_open_file_limit;
pub use packet::{CR_CONN_HOST_ERROR, ER_CON_COUNT_ERROR, error_packet};
pub use stats::{GateReport, gates_dir, read_gates, read_gates_in};

use lease::{Kept, Leases};
use net::{Listener, Stream};
use posting::Posting;
use queue::{Admission, Ticket};
use relay::{Activity, Clock, Side, Tracked};
use stats::{Counters, FilePublication, Identity, Publication, bump, drop_one};
use threads::{RelayThreads, Spreader};

/// How a gate behaves.
#[derive(Debug, Clone)]
pub struct GateOptions {
    listen: Vec<Endpoint>,
    upstream: Endpoint,
    queue_timeout: Duration,
    idle_timeout: Option<Duration>,
    connect_timeout: Duration,
    name: Option<String>,
    stats_dir: Option<PathBuf>,
    max_pool_waiters: usize,
    relay_threads: usize,
}

impl GateOptions {
    /// Listen on `listen`, relay to `upstream`; a 30 s queue timeout, no
    /// idle timeout, a 10 s connect timeout.
    pub fn new(listen: Vec<Endpoint>, upstream: Endpoint) -> Self {
        GateOptions {
            listen,
            upstream,
            queue_timeout: Duration::from_secs(30),
            idle_timeout: None,
            connect_timeout: Duration::from_secs(10),
            name: None,
            stats_dir: None,
            max_pool_waiters: 16,
            relay_threads: 0,
        }
    }

    /// How long a client may wait for a slot before it is refused with
    /// error 1040 (30 s by default).
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// Closes a connection on which the server moved last and then nothing
    /// moved for `idle`, while others wait for a slot: one such connection
    /// per waiting client. A connection whose client spoke last (a query
    /// running) is never closed for idleness.
    pub fn idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// How long connecting to the server may take (10 s by default).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The name the gate publishes its counters under, unique within the
    /// pool. By default its first listen address; for a `redis://` pool
    /// (shared by hosts that may all listen on the same address) its host
    /// and first listen address, such as `app-1_127.0.0.1_3307`.
    pub fn name(mut self, name: Option<String>) -> Self {
        self.name = name;
        self
    }

    /// Where to publish the counters instead of the pool: files in `dir`
    /// (read them with [`read_gates_in`]). Without it, the gates of a file
    /// pool publish in its [`gates_dir`], and those of a `redis://` pool
    /// into the pool's Redis; either way [`read_gates`] finds them. A gate
    /// of a Redis pool given a directory is not seen by [`read_gates`].
    pub fn stats_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.stats_dir = dir;
        self
    }

    /// How many clients at most wait in the pool itself at once (16 by
    /// default); the others wait in the gate, in order, behind them.
    pub fn max_pool_waiters(mut self, n: usize) -> Self {
        self.max_pool_waiters = n.max(1);
        self
    }

    /// Threads of the gate's own that relay connections besides the
    /// task that runs [`Gate::run`] (which accepts, and relays too); 0 by
    /// default.
    ///
    /// Each relay thread runs its own event loop, and a connection stays
    /// on the thread it was given, so its packets never change threads. A
    /// new connection goes to the relay thread with the fewest open
    /// connections if it has fewer than the accepting side, else it stays
    /// (no hand-over): connections made one after another never change
    /// threads, concurrent ones spread evenly. On 2 cores, one relay
    /// thread relayed 12-20 % more point selects over 8 persistent
    /// connections than none (`docs/benchmarks.md`). The threads stop when
    /// [`Gate::run`] ends or is dropped, closing what is still open on
    /// them.
    pub fn relay_threads(mut self, n: usize) -> Self {
        self.relay_threads = n;
        self
    }
}

/// Where a gate is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Running,
    /// Not accepting; connections may finish until the deadline.
    Draining(Instant),
    /// Closing everything now.
    Stopping,
}

/// Tells a running gate to drain or stop (from a signal handler task), and
/// reads its counters.
#[derive(Clone)]
pub struct GateControl {
    phase: Arc<watch::Sender<Phase>>,
    shared: Arc<Shared>,
    identity: Identity,
}

impl std::fmt::Debug for GateControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateControl")
            .field("gate", &self.shared.name)
            .field("phase", &*self.phase.borrow())
            .finish()
    }
}

impl GateControl {
    /// The gate's counters now, from its own memory (what others read is
    /// published from the same counters every half second).
    pub fn report(&self) -> GateReport {
        self.shared.counters.report(
            &self.identity,
            self.shared.pool.capacity(),
            self.is_stopping(),
        )
    }

    /// Stops accepting clients at once; connections and queued clients get
    /// `within` to finish (queued ones may still be admitted), then
    /// everything left is closed. A second call does not extend the time.
    pub fn drain(&self, within: Duration) {
        // `Duration::MAX` (no limit) and anything past what an Instant
        // holds: a deadline a century out.
        let now = Instant::now();
        let deadline = now
            .checked_add(within)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        self.phase.send_if_modified(|p| match p {
            Phase::Running => {
                *p = Phase::Draining(deadline);
                true
            }
            _ => false,
        });
    }

    /// Closes every connection now (each slot is released after its server
    /// socket is closed); queued clients are refused with error 1040.
    pub fn stop(&self) {
        self.phase.send_replace(Phase::Stopping);
    }

    /// Whether [`GateControl::drain`] or [`GateControl::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        *self.phase.borrow() != Phase::Running
    }
}

/// What every connection task of a gate shares.
struct Shared {
    pool: Pool,
    pool_name: String,
    upstream: Endpoint,
    name: String,
    queue_timeout: Duration,
    idle_timeout: Option<Duration>,
    connect_timeout: Duration,
    counters: Arc<Counters>,
    admission: Arc<Admission>,
    clock: Arc<Clock>,
    /// The slots of relayed connections while their leases are watched.
    leases: Leases,
    /// Numbers relayed connections for `leases`.
    next_connection: AtomicU64,
    /// Waiters of the pool other than the gate's own agents (other gates
    /// and processes), looked at once a second while an idle timeout is
    /// set.
    others_waiting: AtomicU64,
    /// Idle connections closing for waiters (`--idle-timeout`).
    idle_claims: idle_claims::IdleClaims,
    /// Connection tasks alive (queued or relaying).
    open: AtomicU64,
    all_closed: Notify,
    /// Woken whenever a connection task ends (its descriptors are free).
    closed_one: Notify,
    /// Listeners at the open-file budget with a client in their backlog:
    /// each counts as one client waiting, for `--idle-timeout`.
    backlogged: AtomicU64,
    /// How many clients the open-file limit lets the gate accept.
    files: file_budget::FileBudget,
}

/// A bound gate, ready to [`run`](Gate::run).
pub struct Gate {
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
    bound: Vec<Endpoint>,
    identity: Identity,
    publication: Option<Publication>,
    phase: Arc<watch::Sender<Phase>>,
    /// The gate's own relay threads, if it has any.
    relays: Option<RelayThreads>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("name", &self.shared.name)
            .field("listen", &self.bound)
            .field("upstream", &self.shared.upstream)
            .field("pool", &self.shared.pool_name)
            .finish()
    }
}

impl Gate {
    /// Binds every listen address and claims the gate's name where it
    /// publishes its counters (see [`GateOptions::stats_dir`]). Nothing is
    /// accepted before [`Gate::run`].
    ///
    /// The name is the gate's in the pool: another live gate that publishes
    /// under it is an error ([`Error::Publish`], or for a Redis pool
    /// [`Error::PublishToPool`]). For a Redis pool the claim first waits up
    /// to 5 s for a report under the name to lapse, the time a gate that
    /// was killed takes to disappear.
    pub async fn bind(pool: Pool, options: GateOptions) -> Result<Gate, Error> {
        if options.listen.is_empty() {
            return Err(Error::NoListener);
        }
        let mut listeners = Vec::new();
        let mut bound = Vec::new();
        for endpoint in &options.listen {
            let l = Listener::bind(endpoint)
                .await
                .map_err(|error| Error::Bind {
                    endpoint: endpoint.to_string(),
                    error,
                })?;
            bound.push(l.local_endpoint().map_err(|error| Error::Bind {
                endpoint: endpoint.to_string(),
                error,
            })?);
            listeners.push(l);
        }
        let relays = match options.relay_threads {
            0 => None,
            n => Some(RelayThreads::start(n, &bound[0].to_string()).map_err(Error::Threads)?),
        };
        let host = dbslots_core::env::host_name();
        let shared_by_hosts =
            options.stats_dir.is_none() && matches!(pool.addr(), dbslots_core::PoolAddr::Redis(_));
        let name = options.name.clone().unwrap_or_else(|| {
            if shared_by_hosts {
                format!("{host}_{}", bound[0])
            } else {
                bound[0].to_string()
            }
        });
        let name = stats::file_safe(&name);
        let counters = Arc::new(Counters::default());
        let pool_name = pool.addr().to_string();
        let identity = Identity {
            name: name.clone(),
            host,
            listen: bound.iter().map(ToString::to_string).collect(),
            upstream: options.upstream.to_string(),
            pool: pool_name.clone(),
            started_unix_ms: stats::now_unix_ms(),
        };
        let publication = match (&options.stats_dir, pool.addr()) {
            (Some(dir), _) => Publication::Files(FilePublication::claim(dir, &name)?),
            (None, dbslots_core::PoolAddr::Redis(_)) => {
                let first = counters.report(&identity, pool.capacity(), false);
                Publication::Redis(Posting::claim(&pool, &first).await?)
            }
            (None, addr) => Publication::Files(FilePublication::claim(&gates_dir(addr)?, &name)?),
        };
        // Everything but the clients is open now: what is left of the
        // open-file limit is theirs.
        let files = file_budget::FileBudget::measure(options.max_pool_waiters);
        // A limit with no room for even one client would leave every
        // client unanswered in the listen backlog for as long as the gate
        // runs, the gate looking healthy: better not to start.
        if let Some((limit, needed)) = files.too_low_for_one(pool.capacity()) {
            return Err(Error::OpenFileLimit { limit, needed });
        }
        let shared = Arc::new(Shared {
            admission: Admission::new(pool.clone(), options.max_pool_waiters, counters.clone()),
            leases: Leases::new(&pool),
            pool,
            pool_name,
            upstream: options.upstream,
            name,
            queue_timeout: options.queue_timeout,
            idle_timeout: options.idle_timeout,
            connect_timeout: options.connect_timeout,
            counters,
            clock: Clock::new(),
            next_connection: AtomicU64::new(0),
            others_waiting: AtomicU64::new(0),
            idle_claims: idle_claims::IdleClaims::default(),
            open: AtomicU64::new(0),
            all_closed: Notify::new(),
            closed_one: Notify::new(),
            backlogged: AtomicU64::new(0),
            files,
        });
        Ok(Gate {
            shared,
            listeners,
            bound,
            identity,
            publication: Some(publication),
            phase: Arc::new(watch::channel(Phase::Running).0),
            relays,
        })
    }

    /// The addresses bound, with the ports the kernel chose for `:0`.
    pub fn local_endpoints(&self) -> &[Endpoint] {
        &self.bound
    }

    /// The name the gate publishes its counters under.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A handle to drain or stop the gate.
    pub fn control(&self) -> GateControl {
        GateControl {
            phase: self.phase.clone(),
            shared: self.shared.clone(),
            identity: self.identity.clone(),
        }
    }

    /// The gate's counters now.
    pub fn report(&self) -> GateReport {
        self.shared.counters.report(
            &self.identity,
            self.shared.pool.capacity(),
            *self.phase.borrow() != Phase::Running,
        )
    }

    /// Accepts and relays until drained or stopped through
    /// [`Gate::control`]; returns the final counters. Await it to the end
    /// rather than dropping it: at the end the gate withdraws the counters
    /// it published. A dropped gate's counters only lapse, for a
    /// `redis://` pool within 5 s, and a restart under the same name waits
    /// that long.
    pub async fn run(mut self) -> GateReport {
        let mut phase = self.phase.subscribe();
        let mut background = tokio::task::JoinSet::new();
        let mut accepting = tokio::task::JoinSet::new();
        let spreader = self.relays.as_ref().map(RelayThreads::spreader);
        for listener in std::mem::take(&mut self.listeners) {
            accepting.spawn(accept_loop(
                listener,
                self.shared.clone(),
                spreader.clone(),
                self.phase.subscribe(),
            ));
        }
        background.spawn(publish_loop(
            self.shared.clone(),
            self.identity.clone(),
            self.publication.take(),
            self.phase.subscribe(),
        ));
        if self.shared.pool.lease_margin().is_some() {
            let shared = self.shared.clone();
            let mut phase = self.phase.subscribe();
            background.spawn(async move {
                shared.leases.watch(stopping(&mut phase)).await;
            });
        }
        if self.shared.idle_timeout.is_some() {
            background.spawn(idle_support_loop(
                self.shared.clone(),
                self.phase.subscribe(),
            ));
        }
        // Run until asked to drain or stop.
        let _ = not_running(&mut phase).await;
        // The listeners are closed once their loops end. A client accepted
        // until then is counted open before its loop ends, so the waits
        // below see it (and it hears why it is turned away rather than
        // being dropped with the runtime).
        while accepting.join_next().await.is_some() {}
        let drain_until = match *phase.borrow() {
            Phase::Draining(deadline) => Some(deadline),
            _ => None,
        };
        if let Some(deadline) = drain_until {
            tracing::info!(gate = %self.shared.name, open = self.shared.open.load(Ordering::Relaxed), "draining: accepting no more clients");
            let all_closed = async {
                loop {
                    let notified = self.shared.all_closed.notified();
                    if self.shared.open.load(Ordering::Relaxed) == 0 {
                        return;
                    }
                    notified.await;
                }
            };
            tokio::select! {
                () = all_closed => {}
                () = tokio::time::sleep_until(deadline.into()) => {
                    tracing::warn!(gate = %self.shared.name, open = self.shared.open.load(Ordering::Relaxed), "drain time is up: closing the remaining connections");
                }
                _ = stopping(&mut phase) => {}
            }
        }
        self.phase.send_replace(Phase::Stopping);
        // Connection tasks see Stopping and close at once; give them a moment.
        let closed = async {
            loop {
                let notified = self.shared.all_closed.notified();
                if self.shared.open.load(Ordering::Relaxed) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), closed).await;
        // What is still open on relay threads is closed with them; wait for
        // them to end, so that slots they give back (a lease returned to
        // Redis from a blocking thread) are given back before the gate is.
        if let Some(relays) = self.relays.take() {
            let _ = tokio::task::spawn_blocking(move || relays.stop_and_join()).await;
        }
        // The publisher writes its last report and removes its files (or
        // withdraws its report from Redis).
        while background.join_next().await.is_some() {}
        self.report()
    }
}

async fn accept_loop(
    listener: Listener,
    shared: Arc<Shared>,
    spreader: Option<Spreader>,
    phase: watch::Receiver<Phase>,
) {
    let mut watch_phase = phase.clone();
    let mut failures = accept_failures::AcceptFailures::default();
    loop {
        if !room_for_a_client(&shared, &listener, &mut watch_phase).await {
            return;
        }
        tokio::select! {
            biased;
            _ = not_running(&mut watch_phase) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let open = OpenGuard::new(&shared);
                    bump(&shared.counters.accepted);
                    // Queue here, not in the task: tasks start in any
                    // order, clients must be served in accept order.
                    let ticket = shared.admission.enqueue();
                    let phase = phase.clone();
                    match &spreader {
                        None => {
                            tokio::spawn(serve_client(shared.clone(), open, stream, peer, ticket, phase));
                        }
                        Some(spreader) => {
                            let shared = shared.clone();
                            spreader.spawn(stream, move |stream| async move {
                                match stream {
                                    Ok(stream) => serve_client(shared, open, stream, peer, ticket, phase).await,
                                    // The ticket and the guard are dropped:
                                    // the client leaves the queue (a slot it
                                    // got meanwhile goes back), its socket
                                    // closes.
                                    Err(e) => {
                                        bump(&shared.counters.refused);
                                        tracing::warn!(gate = %shared.name, client = %peer, error = %e, "cannot move a client to a relay thread");
                                    }
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    let response = failures.record(&e, Instant::now());
                    match response.warn {
                        Some(n) if response.out_of_files => {
                            let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
                            tracing::warn!(gate = %shared.name, error = %e, failures = n, open_file_limit = ?limit, open = shared.open.load(Ordering::Relaxed),
                                "out of open files: new clients wait in the listen backlog until connections close (retrying every {:?}, warning again in {:?} at most); raise the limit (LimitNOFILE= in the unit, ulimit -Hn) to hold more", accept_failures::PAUSE, accept_failures::WARN_EVERY);
                        }
                        Some(n) => {
                            tracing::warn!(gate = %shared.name, error = %e, failures = n, "accepting a client failed (retrying every {:?}, warning again in {:?} at most)", accept_failures::PAUSE, accept_failures::WARN_EVERY);
                        }
                        None if response.pause.is_none() => tracing::debug!(gate = %shared.name, error = %e, "a client left before it was accepted"),
                        None => {}
                    }
                    if let Some(pause) = response.pause {
                        tokio::time::sleep(pause).await;
                    }
                }
            },
        }
    }
}

/// Counts a client in the open-connections gauge until it is dropped,
/// however its task ends.
struct OpenGuard(Arc<Shared>);

impl OpenGuard {
    fn new(shared: &Arc<Shared>) -> OpenGuard {
        shared.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(shared.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.all_closed.notify_waiters();
        }
        self.0.closed_one.notify_waiters();
    }
}

/// Waits until the open-file budget has room for one more client (see
/// `file_budget`), saying so once per stretch of waiting. Returns `false`
/// if the gate stops meanwhile. While a client waits in `listener`'s
/// backlog meanwhile, it is counted as waiting (`Shared::backlogged`), so
/// that `--idle-timeout` closes an idle connection for it.
async fn room_for_a_client(
    shared: &Shared,
    listener: &Listener,
    phase: &mut watch::Receiver<Phase>,
) -> bool {
    /// Counts the listener in `backlogged` while set; uncounted on drop.
    struct Backlogged<'a>(&'a Shared, bool);
    impl Backlogged<'_> {
        fn set(&mut self, pending: bool) {
            if pending && !self.1 {
                self.0.backlogged.fetch_add(1, Ordering::Relaxed);
                self.0.admission.demand.notify_waiters();
            } else if !pending && self.1 {
                self.0.backlogged.fetch_sub(1, Ordering::Relaxed);
            }
            self.1 = pending;
        }
    }
    impl Drop for Backlogged<'_> {
        fn drop(&mut self) {
            self.set(false);
        }
    }
    let mut backlogged = Backlogged(shared, false);
    let mut said = false;
    loop {
        // Registered before the look, so a close in between is not missed.
        let closed = shared.closed_one.notified();
        let capacity = shared.pool.capacity();
        let open = shared.open.load(Ordering::Relaxed);
        if shared.files.admits(open, capacity) {
            if said {
                tracing::info!(gate = %shared.name, open, "accepting clients again");
            }
            return true;
        }
        if !said {
            said = true;
            let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
            tracing::warn!(
                gate = %shared.name, open, open_file_limit = ?limit, clients_max = ?shared.files.clients_max(capacity), capacity,
                "the open-file limit leaves room for no more clients (each may need 3 descriptors once relayed): new clients wait in the listen backlog, in order, until others close; raise the limit (LimitNOFILE= in the systemd unit, ulimit -Hn) to queue more in the gate"
            );
        }
        if shared.idle_timeout.is_some() {
            backlogged.set(listener.has_pending());
        }
        tokio::select! {
            biased;
            _ = not_running(phase) => return false,
            () = closed => {}
            () = tokio::time::sleep(file_budget::RECHECK) => {}
        }
    }
}

async fn serve_client(
    shared: Arc<Shared>,
    _open: OpenGuard,
    mut client: Stream,
    peer: String,
    mut ticket: Ticket,
    mut phase: watch::Receiver<Phase>,
) {
    let queued_at = ticket.queued_at;
    enum Waited {
        Admitted(queue::Admit),
        TimedOut,
        Gone,
        Stopping,
    }
    let waited = tokio::select! {
        biased;
        admit = &mut ticket.rx => match admit {
            Ok(a) => Waited::Admitted(a),
            Err(_) => Waited::Stopping,
        },
        () = tokio::time::sleep(shared.queue_timeout) => Waited::TimedOut,
        () = hung_up(&client) => Waited::Gone,
        _ = stopping(&mut phase) => Waited::Stopping,
    };
    let waited = match waited {
        // A slot that arrives as the gate stops is not used: the
        // connection would be closed as soon as it was opened, the client
        // cut off mid-greeting; it hears 1040 like every other client the
        // stop finds waiting.
        Waited::Admitted(Ok(slot)) if *phase.borrow() == Phase::Stopping => {
            queue::release(slot);
            Waited::Stopping
        }
        Waited::Admitted(a) => Waited::Admitted(a),
        other => match ticket.leave() {
            // A slot arrived just as the wait timed out: use it (unless
            // the gate is stopping meanwhile, as above).
            Some(a) if matches!(other, Waited::TimedOut) && *phase.borrow() != Phase::Stopping => {
                Waited::Admitted(a)
            }
            Some(Ok(slot)) => {
                queue::release(slot);
                other
            }
            _ => other,
        },
    };
    drop(ticket);
    let slot = match waited {
        Waited::Admitted(Ok(slot)) => slot,
        Waited::Admitted(Err(pool_error)) => {
            bump(&shared.counters.refused);
            let msg = format!(
                "dbslots gate {}: the pool {} failed, so no slot could be taken: {pool_error}",
                shared.name, shared.pool_name
            );
            refuse(
                &shared,
                &mut client,
                &peer,
                packet::ER_CON_COUNT_ERROR,
                "08004",
                "pool_failed",
                &msg,
                queued_at,
            )
            .await;
            return;
        }
        Waited::TimedOut => {
            bump(&shared.counters.queue_timeouts);
            let waiting = shared.admission.waiting();
            let msg = format!(
                "Too many connections: dbslots gate {} found no free slot in pool {} (capacity {}) within {:.0?}; {waiting} other clients waiting",
                shared.name,
                shared.pool_name,
                shared.pool.capacity(),
                shared.queue_timeout,
            );
            refuse(
                &shared,
                &mut client,
                &peer,
                packet::ER_CON_COUNT_ERROR,
                "08004",
                "queue_timeout",
                &msg,
                queued_at,
            )
            .await;
            return;
        }
        Waited::Stopping => {
            bump(&shared.counters.refused);
            let msg = format!(
                "Too many connections: dbslots gate {} is shutting down before a slot of pool {} (capacity {}) came free",
                shared.name,
                shared.pool_name,
                shared.pool.capacity()
            );
            refuse(
                &shared,
                &mut client,
                &peer,
                packet::ER_CON_COUNT_ERROR,
                "08004",
                "shutting_down",
                &msg,
                queued_at,
            )
            .await;
            return;
        }
        Waited::Gone => {
            bump(&shared.counters.abandoned);
            tracing::debug!(gate = %shared.name, client = %peer, "client hung up while queued");
            return;
        }
    };
    bump(&shared.counters.admitted);
    shared.counters.record_wait(queued_at.elapsed());
    let upstream = match net::connect(&shared.upstream, shared.connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            // The slot goes back before the client hears about it.
            queue::release(slot);
            bump(&shared.counters.upstream_failures);
            let msg = format!(
                "dbslots gate {}: cannot connect to the MySQL server at {}: {e}",
                shared.name, shared.upstream
            );
            refuse(
                &shared,
                &mut client,
                &peer,
                packet::CR_CONN_HOST_ERROR,
                "HY000",
                "upstream_unreachable",
                &msg,
                queued_at,
            )
            .await;
            return;
        }
    };
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    // Declared before the streams, so that even a cancelled task (a relay
    // thread shut down under it) drops the server's socket first.
    let relayed = Relayed::new(&shared, shared.leases.keep(id, slot));
    let activity = Activity::new(&shared.clock);
    let track = shared.idle_timeout.map(|_| (&activity, &*shared.clock));
    let mut c = Tracked::new(client, Side::Client, &shared.counters, track);
    let mut s = Tracked::new(upstream, Side::Server, &shared.counters, track);
    let idle = async {
        match shared.idle_timeout {
            Some(idle) => {
                relay::idle_expired(
                    &activity,
                    &shared.clock,
                    idle,
                    &shared.admission.demand,
                    || {
                        let others = shared.others_waiting.load(Ordering::Relaxed);
                        let backlogged = shared.backlogged.load(Ordering::Relaxed);
                        let waiting = shared.admission.waiting() as u64 + others + backlogged;
                        shared.idle_claims.claim(shared.clock.now_ms(), waiting)
                    },
                )
                .await
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = relay::copy_both(&mut c, &mut s) => {
            if let Err(e) = r {
                tracing::debug!(gate = %shared.name, client = %peer, error = %e, "connection ended with an error");
            }
        }
        () = idle => {
            bump(&shared.counters.idle_closes);
            tracing::info!(gate = %shared.name, client = %peer, idle_timeout = ?shared.idle_timeout, "closed an idle connection: others wait for its slot");
        }
        () = relayed.kept().lost() => {
            bump(&shared.counters.leases_lost);
            tracing::warn!(gate = %shared.name, pool = %shared.pool_name, client = %peer, "the slot's lease was lost (cut off from Redis, or paused): closing the client's and the server's connection before the pool gives the slot to another holder");
        }
        _ = stopping(&mut phase) => {}
    }
    // The server's socket first, then the slot.
    drop(s);
    drop(c);
    drop(relayed);
}

/// A relayed connection's slot and its place in the `active` gauge, given
/// back on drop: when the relay ends, and also when its task is cancelled
/// (a relay thread stopped with the connection open), which must not leave
/// a lease held by nobody.
struct Relayed<'a> {
    shared: &'a Shared,
    kept: Option<Kept>,
}

impl<'a> Relayed<'a> {
    fn new(shared: &'a Shared, kept: Kept) -> Self {
        bump(&shared.counters.active);
        Relayed {
            shared,
            kept: Some(kept),
        }
    }

    fn kept(&self) -> &Kept {
        self.kept.as_ref().expect("taken only on drop")
    }
}

impl Drop for Relayed<'_> {
    fn drop(&mut self) {
        drop_one(&self.shared.counters.active);
        if let Some(slot) = self.kept.take().and_then(|k| self.shared.leases.take(k)) {
            queue::release(slot);
        }
    }
}

/// Resolves when a queued client hangs up (closes, half-closes or
/// resets). Bytes a client sends before its greeting stay unread for the
/// server; a hang-up after them still counts, looked for a few times a
/// second (such a client is rare: MySQL clients wait for the greeting).
async fn hung_up(client: &Stream) {
    loop {
        if client.readable().await.is_err() {
            return;
        }
        match net_peek(client) {
            Ok(0) => return,
            Ok(_) => loop {
                // The socket stays readable while the bytes are unread, so
                // its readiness cannot tell of a hang-up: poll for it.
                tokio::time::sleep(HANG_UP_POLL).await;
                if client.peer_hung_up() {
                    return;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        }
    }
}

/// How often a queued client that sent bytes before its greeting is
/// looked at for a hang-up.
const HANG_UP_POLL: Duration = Duration::from_millis(200);

fn net_peek(client: &Stream) -> std::io::Result<usize> {
    let mut b = [0u8; 1];
    client.try_peek(&mut b)
}

/// Answers a client that gets no connection with an ERR packet in place of
/// the greeting, and logs one line.
#[allow(clippy::too_many_arguments)]
async fn refuse(
    shared: &Shared,
    client: &mut Stream,
    peer: &str,
    code: u16,
    sqlstate: &str,
    reason: &'static str,
    message: &str,
    queued_at: Instant,
) {
    tracing::warn!(
        gate = %shared.name,
        pool = %shared.pool_name,
        client = %peer,
        reason,
        code,
        waited_ms = queued_at.elapsed().as_millis() as u64,
        waiting = shared.admission.waiting(),
        "refused a client: {message}"
    );
    let packet = packet::error_packet(code, sqlstate, message);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        client.write_all(&packet).await?;
        client.shutdown().await
    })
    .await;
}

/// Publishes the counters twice a second while anything changed; into a
/// Redis pool also at least once a second (its reports lapse unless
/// reposted). Never blocks the runtime: Redis calls run on the blocking
/// pool, and an unreachable Redis is logged once per outage.
async fn publish_loop(
    shared: Arc<Shared>,
    identity: Identity,
    publication: Option<Publication>,
    mut phase: watch::Receiver<Phase>,
) {
    let Some(publication) = publication else {
        return;
    };
    let mut last = None;
    let mut posted_at: Option<Instant> = None;
    // Redis trouble already logged: an outage, a name taken over.
    let (mut unreachable, mut taken) = (false, false);
    loop {
        let draining = *phase.borrow() != Phase::Running;
        let mut report = shared
            .counters
            .report(&identity, shared.pool.capacity(), draining);
        let stamp = report.updated_unix_ms;
        report.updated_unix_ms = 0;
        let due = posted_at.is_some_and(|t| t.elapsed() >= posting::REPOST_AFTER);
        if last.as_ref() != Some(&report) || due {
            last = Some(report.clone());
            report.updated_unix_ms = stamp;
            match &publication {
                Publication::Files(files) => {
                    if let Err(e) = files.write(&report) {
                        tracing::warn!(gate = %shared.name, error = %e, "cannot publish the gate's counters");
                    }
                }
                // Stopping: the report is withdrawn right after, so a
                // last post would only make the stop wait on Redis.
                Publication::Redis(_) if *phase.borrow() == Phase::Stopping => {}
                Publication::Redis(p) => {
                    posted_at = Some(Instant::now());
                    // A post stuck on an unanswering Redis must not hold
                    // the stop up: give up waiting for it then.
                    let posted = tokio::select! {
                        r = p.post(&report) => r,
                        _ = stopping(&mut phase) => continue,
                    };
                    match posted {
                        Ok(true) => {
                            if std::mem::take(&mut unreachable) {
                                tracing::info!(gate = %shared.name, "publishing the gate's counters again");
                            }
                            taken = false;
                        }
                        Ok(false) => {
                            unreachable = false;
                            if !std::mem::replace(&mut taken, true) {
                                tracing::warn!(gate = %shared.name, "another gate publishes under this name now (this one's report had lapsed); this gate is not shown until it stops");
                            }
                        }
                        Err(e) => {
                            if !std::mem::replace(&mut unreachable, true) {
                                tracing::warn!(gate = %shared.name, error = %e, "cannot publish the gate's counters into the pool's Redis; relaying goes on, retrying every second");
                            }
                        }
                    }
                }
            }
        }
        if *phase.borrow() == Phase::Stopping {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stopping(&mut phase) => {}
        }
        if *phase.borrow() == Phase::Stopping && shared.open.load(Ordering::Relaxed) == 0 {
            break;
        }
    }
    if let Publication::Redis(p) = publication {
        // Waiting longer than the report lives gains nothing: it lapses.
        if tokio::time::timeout(posting::TTL, p.withdraw())
            .await
            .is_err()
        {
            tracing::warn!(gate = %shared.name, "Redis did not answer the withdrawal of the gate's counters; they lapse within {:?}", posting::TTL);
        }
    }
}

/// While an idle timeout is set: ticks the coarse clock, and looks at the
/// pool's waiters once a second.
async fn idle_support_loop(shared: Arc<Shared>, mut phase: watch::Receiver<Phase>) {
    let mut n = 0u64;
    let mut tick = tokio::time::interval(relay::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The read of the pool's waiters runs beside the clock, never in its
    // way: for a Redis pool it is a network call, which may take up to its
    // timeout while Redis is slow, and a clock standing still would stop
    // idle connections from coming due and claims from lapsing.
    let mut reading: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping(&mut phase) => {
                if let Some(r) = reading {
                    r.abort();
                }
                return;
            }
        }
        shared.clock.tick();
        n += 1;
        if n.is_multiple_of(20) && reading.as_ref().is_none_or(|r| r.is_finished()) {
            reading = Some(tokio::spawn(read_others_waiting(shared.clone())));
        }
    }
}

/// Reads how many of the pool's waiters are not the gate's own agents.
async fn read_others_waiting(shared: Arc<Shared>) {
    let pool = shared.pool.clone();
    // The pool's waiters include the gate's own agents, who wait there for
    // clients counted already: those of the moment of the read (counted
    // before and after it, the larger), not of the moment the figure is
    // used, up to a second later (a client served since would count as a
    // waiter of the pool).
    let agents_before = shared.admission.agents();
    if let Ok(Ok(stats)) = tokio::task::spawn_blocking(move || pool.stats()).await {
        let agents = agents_before.max(shared.admission.agents()) as u64;
        shared.others_waiting.store(
            u64::from(stats.waiting).saturating_sub(agents),
            Ordering::Relaxed,
        );
    }
}

/// Resolves once the gate is stopping (never holds the channel's lock
/// across an await).
async fn stopping(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p == Phase::Stopping).await.map(|_| ());
}

/// Resolves once the gate drains or stops.
async fn not_running(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p != Phase::Running).await.map(|_| ());
}
