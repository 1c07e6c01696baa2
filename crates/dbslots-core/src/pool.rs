//! The public pool handle and slot guard, dispatching to a backend.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::addr::{IntoPoolAddr, PoolAddr};
use crate::error::{Error, Result};
use crate::file::cancel::CancelToken;
use crate::file::{FileOptions, FilePool};
use crate::stats::PoolStats;

/// How to open a pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    capacity: Option<u32>,
    group: Option<u32>,
    crash_check: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            capacity: None,
            group: None,
            crash_check: Duration::from_millis(5),
        }
    }
}

impl PoolOptions {
    /// Options that open an existing pool as it is.
    pub fn new() -> Self {
        Self::default()
    }

    /// The capacity: creates the pool with it when it does not exist, and
    /// checks it against the recorded one when it does.
    pub fn capacity(mut self, capacity: u32) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// The capacity, if one was given.
    pub fn capacity_opt(mut self, capacity: Option<u32>) -> Self {
        self.capacity = capacity;
        self
    }

    /// Creates the pool for a group: its members may use it too (directory
    /// mode 2770, files 0660). Without it, only the creating user may.
    pub fn group(mut self, gid: u32) -> Self {
        self.group = Some(gid);
        self
    }

    /// Like [`PoolOptions::group`], by group name.
    pub fn group_name(self, name: &str) -> Result<Self> {
        let gid = lookup_group(name).ok_or_else(|| Error::InvalidAddress {
            address: name.to_string(),
            reason: "no such group; create it or give an existing group name".into(),
        })?;
        Ok(self.group(gid))
    }

    /// How often the head waiter probes for slots freed without a wake-up
    /// (holders that were killed, foreign clients); 5 ms by default.
    pub fn crash_check_interval(mut self, every: Duration) -> Self {
        self.crash_check = every.max(Duration::from_micros(100));
        self
    }
}

fn lookup_group(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.split(':');
        (parts.next()? == name).then_some(())?;
        parts.nth(1)?.parse().ok()
    })
}

#[derive(Debug)]
enum Backend {
    File(FilePool),
    #[cfg(feature = "redis")]
    Redis(crate::redis::RedisPool),
}

/// A counting semaphore of connection slots shared by every process that
/// opens the same pool address.
///
/// # Contract
///
/// * **Capacity.** At most `capacity` slots are held at once, across all
///   processes. The capacity is recorded when the pool is created; opening
///   it with a different one is an error ([`Error::CapacityMismatch`]), and
///   [`Pool::resize`] changes it explicitly.
/// * **Crash safety.** A slot is held by a kernel lock, not by a counter: a
///   holder killed with SIGKILL frees its slot at once, and a waiter that
///   dies leaves the queue.
/// * **Fairness.** Waiters are served in arrival order; while anybody waits,
///   newcomers queue behind instead of taking a slot that was just freed.
/// * **Hand-off.** A release wakes the head waiter directly (a futex
///   wake-up, tens of microseconds); nobody sleeps and polls.
/// * **Cancellation.** Dropping the future of [`Pool::acquire`] never
///   leaks a slot: a slot obtained after the drop is released at once.
///
/// # Async first
///
/// [`Pool::acquire`] and [`Pool::acquire_timeout`] are `async` (tokio, the
/// default `tokio` feature); [`Pool::try_acquire`] never waits; the forms
/// that block the calling thread say so: [`Pool::blocking_acquire`] and
/// [`Pool::blocking_acquire_timeout`].
///
/// # What a waiter costs
///
/// A waiter sleeps in the kernel (a futex word of its own on the pool's
/// shared board; a blocking subscription for a Redis pool),
/// so every acquisition that has to wait occupies one thread while it
/// waits: an async one occupies a thread of tokio's blocking pool
/// (`spawn_blocking`), which is returned when the wait ends or the future
/// is dropped. An acquisition that finds a free slot nobody queues for
/// takes it without a thread. tokio caps its blocking pool at 512 threads
/// by default (`Builder::max_blocking_threads`): a process that keeps more
/// acquisitions waiting at once queues the excess in tokio before they
/// reach the pool's queue (their deadlines still count from the call), and
/// other `spawn_blocking` work (`tokio::fs`) waits behind them.
///
/// A `Pool` is cheap to clone (an `Arc`); clones share file descriptors.
/// A `Pool` does not survive `fork` without `exec`: used in a forked child
/// it fails with [`Error::Forked`] (and a [`Slot`] dropped there leaves the
/// parent's slot alone); open the pool again in the child.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    addr: PoolAddr,
    backend: Backend,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("addr", &self.inner.addr.to_string())
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl Pool {
    /// Opens the pool at `addr`, creating it when `options` has a capacity
    /// and the pool does not exist yet.
    ///
    /// `addr` is a [`PoolAddr`], a path (`&Path`, `PathBuf`) or a string
    /// (`&str`, `String`, parsed with [`PoolAddr::parse`]):
    ///
    /// ```no_run
    /// use dbslots_core::{Pool, PoolOptions};
    ///
    /// let pool = Pool::open("/run/app/db", PoolOptions::new().capacity(150))?;
    /// # Ok::<(), dbslots_core::Error>(())
    /// ```
    pub fn open(addr: impl IntoPoolAddr, options: PoolOptions) -> Result<Pool> {
        let addr = addr.into_pool_addr()?;
        let backend = match &addr {
            PoolAddr::Dir(dir) => Backend::File(FilePool::open(
                dir,
                &FileOptions {
                    capacity: options.capacity,
                    group: options.group,
                    crash_check: options.crash_check,
                },
            )?),
            #[cfg(feature = "redis")]
            PoolAddr::Redis(r) => Backend::Redis(crate::redis::RedisPool::open(
                r,
                &addr.to_string(),
                options.capacity,
            )?),
            #[cfg(not(feature = "redis"))]
            PoolAddr::Redis(_) => {
                return Err(Error::Unsupported {
                    backend: "this build of dbslots-core (enable its `redis` feature)",
                    what: "a Redis pool",
                });
            }
        };
        Ok(Pool {
            inner: Arc::new(Inner { addr, backend }),
        })
    }

    /// The pool's address.
    pub fn addr(&self) -> &PoolAddr {
        &self.inner.addr
    }

    /// The pool's capacity.
    pub fn capacity(&self) -> u32 {
        match &self.inner.backend {
            Backend::File(p) => p.capacity(),
            #[cfg(feature = "redis")]
            Backend::Redis(p) => p.capacity(),
        }
    }

    fn name(&self) -> &str {
        match &self.inner.backend {
            Backend::File(p) => p.name(),
            #[cfg(feature = "redis")]
            Backend::Redis(p) => p.name(),
        }
    }

    /// For a pool of leases (Redis), how long before the server could hand
    /// a lease on its holder counts it lost: the time a holder has to stop
    /// using what the slot guarded (see [`Slot::wait_lost`]). `None` for a
    /// pool of locks, whose slots cannot be lost.
    pub fn lease_margin(&self) -> Option<Duration> {
        match &self.inner.backend {
            Backend::File(_) => None,
            #[cfg(feature = "redis")]
            Backend::Redis(p) => Some(p.safety_margin()),
        }
    }

    /// Takes a free slot without waiting. `Ok(None)` when every slot is held
    /// or others are queued for one.
    pub fn try_acquire(&self) -> Result<Option<Slot>> {
        let slot = match &self.inner.backend {
            Backend::File(p) => p.try_acquire()?,
            #[cfg(feature = "redis")]
            Backend::Redis(p) => p.try_acquire()?,
        };
        Ok(slot.map(|index| self.guard(index)))
    }

    /// Waits as long as it takes for a slot.
    ///
    /// Waiters are served in arrival order (see the [contract](Pool#contract)).
    /// A free slot nobody queues for is taken on the calling task without a
    /// thread hop; otherwise the wait runs on tokio's blocking pool (see
    /// [what a waiter costs](Pool#what-a-waiter-costs)).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropping the future never leaks a slot. A
    /// waiter that is dropped leaves the queue (its thread is woken),
    /// and a slot it obtained in the meantime is released at once. Like
    /// tokio's `Semaphore::acquire`, cancelling loses the place in the queue.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime and no slot is free.
    #[cfg(feature = "tokio")]
    pub async fn acquire(&self) -> Result<Slot> {
        self.acquire_until_async(None).await
    }

    /// Waits up to `timeout` for a slot; [`Error::Timeout`] after that.
    ///
    /// It returns about when asked, whatever the network does: each call
    /// to a Redis pool's server is cut off at the deadline (though given at
    /// least 100 ms), so a server that stops answering delays the error by
    /// less than one call's timeout, a twelfth of the lease. A wait without
    /// a deadline ends with [`Error::Backend`] once the server has not
    /// answered for a whole lease.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as [`Pool::acquire`] is: dropping the
    /// future never leaks a slot, and loses the place in the queue.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime and no slot is free.
    #[cfg(feature = "tokio")]
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Slot> {
        self.acquire_until_async(deadline_after(timeout)).await
    }

    /// Blocks the calling thread until a slot is free.
    ///
    /// For threads and programs without an async runtime. Do not call it
    /// from async code: it stalls a runtime worker for as long as it waits;
    /// use [`Pool::acquire`] there.
    pub fn blocking_acquire(&self) -> Result<Slot> {
        self.acquire_until(None, &CancelToken::new())
    }

    /// Blocks the calling thread up to `timeout` for a slot;
    /// [`Error::Timeout`] after that. The blocking form of
    /// [`Pool::acquire_timeout`]; not for async code.
    pub fn blocking_acquire_timeout(&self, timeout: Duration) -> Result<Slot> {
        self.acquire_until(deadline_after(timeout), &CancelToken::new())
    }

    fn acquire_until(&self, deadline: Option<Instant>, cancel: &CancelToken) -> Result<Slot> {
        let index = match &self.inner.backend {
            Backend::File(p) => match p.try_acquire_fast()? {
                Some(i) => i,
                None => p.acquire_slow(deadline, cancel)?,
            },
            #[cfg(feature = "redis")]
            Backend::Redis(p) => p.acquire_slow(deadline, cancel)?,
        };
        Ok(self.guard(index))
    }

    #[cfg(feature = "tokio")]
    async fn acquire_until_async(&self, deadline: Option<Instant>) -> Result<Slot> {
        if let Backend::File(p) = &self.inner.backend
            && let Some(i) = p.try_acquire_fast()?
        {
            return Ok(self.guard(i));
        }
        /// Cancels the blocking acquisition when the future is dropped.
        struct CancelOnDrop(Option<CancelToken>);
        impl Drop for CancelOnDrop {
            fn drop(&mut self) {
                if let Some(t) = self.0.take() {
                    t.cancel();
                }
            }
        }
        let cancel = CancelToken::new();
        let mut on_drop = CancelOnDrop(Some(cancel.clone()));
        let pool = self.clone();
        // If this future is dropped, the blocking task still returns its
        // `Slot` to the (detached) join handle, which drops it: released.
        let task = tokio::task::spawn_blocking(move || {
            let index = match &pool.inner.backend {
                Backend::File(p) => p.acquire_slow(deadline, &cancel)?,
                #[cfg(feature = "redis")]
                Backend::Redis(p) => p.acquire_slow(deadline, &cancel)?,
            };
            Ok(pool.guard(index))
        });
        let result = task.await.map_err(|e| Error::Backend {
            pool: self.name().to_string(),
            message: format!("the waiting thread failed: {e}"),
        });
        on_drop.0 = None;
        result?
    }

    /// A snapshot of the pool, read from the locks.
    pub fn stats(&self) -> Result<PoolStats> {
        match &self.inner.backend {
            Backend::File(p) => p.stats(),
            #[cfg(feature = "redis")]
            Backend::Redis(p) => p.stats(),
        }
    }

    /// Changes the capacity and returns the old one. When shrinking, holders
    /// of slots beyond the new capacity keep them until they release.
    pub fn resize(&self, capacity: u32) -> Result<u32> {
        match &self.inner.backend {
            Backend::File(p) => p.resize(capacity),
            #[cfg(feature = "redis")]
            Backend::Redis(p) => p.resize(capacity),
        }
    }

    /// Posts (or reposts) a report: a document an observer of the pool
    /// (such as `dbslots gate`, kind `gates`) publishes for every client of
    /// the pool to read with [`Pool::reports`], on any host. **Redis pools
    /// only**: the clients of a file pool share its directory, and publish
    /// files there.
    ///
    /// The report lives `ttl` from now (the Redis server's clock): repost
    /// it well within `ttl` for as long as it holds, and it disappears
    /// within `ttl` of its poster dying. `owner` is the poster's token (any
    /// word without whitespace, random and per process): a name is held by
    /// one owner at a time, so `Ok(false)` means another owner's report
    /// under `name` is still live, and nothing was posted.
    ///
    /// One round trip to the server, on a connection of the handle's own
    /// (never queued behind acquisitions); it blocks the calling thread, so
    /// async code calls it through `spawn_blocking`.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use dbslots_core::{Pool, PoolOptions};
    ///
    /// let pool = Pool::open("redis://redis.internal:6379/0?pool=orders", PoolOptions::new())?;
    /// let owner = format!("{}-{}", dbslots_core::env::host_name(), std::process::id());
    /// if !pool.post_report("batch", "nightly", &owner, r#"{"done":42}"#, Duration::from_secs(5))? {
    ///     eprintln!("another live process reports as \"nightly\"");
    /// }
    /// for doc in pool.reports("batch")? {
    ///     println!("{doc}");
    /// }
    /// pool.withdraw_report("batch", "nightly", &owner)?;
    /// # Ok::<(), dbslots_core::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for a file pool; [`Error::InvalidReport`]
    /// for an empty `kind`, `name` or `owner`, a `kind` other than ASCII
    /// letters, digits, `-`, `_` and `.`, an `owner` with whitespace, or a
    /// `ttl` outside 1 ms to 24 h; [`Error::Backend`] when the server
    /// cannot be reached.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub fn post_report(
        &self,
        kind: &str,
        name: &str,
        owner: &str,
        doc: &str,
        ttl: Duration,
    ) -> Result<bool> {
        check_report_words(kind, name, Some(owner))?;
        if ttl < Duration::from_millis(1) || ttl > MAX_REPORT_TTL {
            return Err(Error::InvalidReport {
                kind: kind.into(),
                name: name.into(),
                reason: format!(
                    "a report lives 1 ms to {} h, not {ttl:?}; repost it within that time to keep it",
                    MAX_REPORT_TTL.as_secs() / 3600
                ),
            });
        }
        match &self.inner.backend {
            Backend::File(_) => Err(reports_unsupported()),
            #[cfg(feature = "redis")]
            Backend::Redis(p) => p.post_report(kind, name, owner, doc, ttl),
        }
    }

    /// The live reports of `kind` ([`Pool::post_report`]), ordered by
    /// their names; reports whose ttl ran out are deleted on the way.
    /// **Redis pools only**; one round trip that blocks the calling thread.
    ///
    /// # Errors
    ///
    /// As [`Pool::post_report`]'s.
    pub fn reports(&self, kind: &str) -> Result<Vec<String>> {
        check_report_words(kind, "-", None)?;
        match &self.inner.backend {
            Backend::File(_) => Err(reports_unsupported()),
            #[cfg(feature = "redis")]
            Backend::Redis(p) => Ok(p.reports(kind)?.into_iter().map(|(_, doc)| doc).collect()),
        }
    }

    /// Withdraws `owner`'s report `name` of `kind` at once (a poster that
    /// stops cleanly); `Ok(false)` when there was none, or it is another
    /// owner's (left alone). **Redis pools only**; one round trip that
    /// blocks the calling thread.
    ///
    /// # Errors
    ///
    /// As [`Pool::post_report`]'s.
    pub fn withdraw_report(&self, kind: &str, name: &str, owner: &str) -> Result<bool> {
        check_report_words(kind, name, Some(owner))?;
        match &self.inner.backend {
            Backend::File(_) => Err(reports_unsupported()),
            #[cfg(feature = "redis")]
            Backend::Redis(p) => p.withdraw_report(kind, name, owner),
        }
    }

    fn guard(&self, index: u32) -> Slot {
        tracing::trace!(pool = %self.name(), slot = index, "slot acquired");
        Slot {
            pool: self.clone(),
            index,
            released: false,
        }
    }
}

fn reports_unsupported() -> Error {
    Error::Unsupported {
        backend: "file",
        what: "posting or reading reports",
    }
}

/// Checks the words of a report's key and value.
/// The longest a report may live without a repost ([`Pool::post_report`]).
const MAX_REPORT_TTL: Duration = Duration::from_secs(24 * 3600);

fn check_report_words(kind: &str, name: &str, owner: Option<&str>) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidReport {
            kind: kind.into(),
            name: name.into(),
            reason: reason.into(),
        })
    };
    if kind.is_empty()
        || !kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return bad("a report's kind is ASCII letters, digits, '-', '_' and '.'; pick such a word");
    }
    if name.is_empty() {
        return bad("a report needs a name; give one");
    }
    if let Some(owner) = owner
        && (owner.is_empty() || owner.contains(char::is_whitespace))
    {
        return bad("a report's owner is one word without whitespace (a random token per process)");
    }
    Ok(())
}

/// The deadline `timeout` from now; `None` (no deadline) for a timeout too
/// long to represent, such as `Duration::MAX`.
fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// A held slot; released when dropped.
#[must_use = "the slot is released as soon as the guard is dropped"]
pub struct Slot {
    pool: Pool,
    index: u32,
    released: bool,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("pool", &self.pool.name())
            .field("index", &self.index)
            .finish()
    }
}

impl Slot {
    /// The slot's number, `0..capacity`.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The pool the slot belongs to.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Releases the slot now (the same as dropping it).
    pub fn release(mut self) {
        self.release_inner();
    }

    /// Releases the slot for this process, but not for the processes that
    /// were handed its lock ([`Slot::lock_fd_for_child`]) and still keep a
    /// copy open: a lock-based slot then stays held until the last copy is
    /// closed (the kernel's rule for `flock`), and is released as by
    /// [`Slot::release`] when no copy is left. A lease-based slot is
    /// released as by [`Slot::release`] (only this process renews it).
    ///
    /// This is how a parent gives up a slot it handed to a child once the
    /// child has exited: a process the child left behind that kept the
    /// descriptor (a daemon that left the child's process group) keeps
    /// the slot, where [`Slot::release`] would unlock it under it. When a
    /// copy is still open, the next waiter is not woken: it finds the slot
    /// by its periodic probe once the copy is closed, as after a holder
    /// was killed.
    pub fn release_unless_inherited(mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        tracing::trace!(pool = %self.pool.name(), slot = self.index, "slot released unless inherited");
        match &self.pool.inner.backend {
            Backend::File(p) => p.release_unless_inherited(self.index),
            #[cfg(feature = "redis")]
            Backend::Redis(p) => p.release(self.index),
        }
    }

    fn release_inner(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        tracing::trace!(pool = %self.pool.name(), slot = self.index, "slot released");
        match &self.pool.inner.backend {
            Backend::File(p) => p.release(self.index),
            #[cfg(feature = "redis")]
            Backend::Redis(p) => p.release(self.index),
        }
    }

    /// Records `pid` as the holder shown by stats (for a child process that
    /// holds the slot on this process's behalf).
    pub fn set_holder_pid(&self, pid: u32) {
        match &self.pool.inner.backend {
            Backend::File(p) => p.set_holder_pid(self.index, pid),
            #[cfg(feature = "redis")]
            Backend::Redis(p) => p.set_holder_pid(self.index, pid),
        }
    }

    /// Whether this process still holds the slot. A lock-based slot (file
    /// pool) cannot be lost while the guard lives; a lease-based slot (Redis
    /// pool) is lost when its lease ran out (the process was paused or cut
    /// off from the server): then this returns [`Error::SlotLost`] and the
    /// caller must stop using what the slot guarded. For a lease this also
    /// asks the server (one round trip, which also renews the lease) unless
    /// another check of the same pool handle, or a renewal of this slot, is
    /// in flight; it never waits longer than the lease's safety margin,
    /// whatever the network does.
    pub fn check(&self) -> Result<()> {
        match &self.pool.inner.backend {
            Backend::File(_) => Ok(()),
            #[cfg(feature = "redis")]
            Backend::Redis(p) => p.check(self.index),
        }
    }

    /// Waits up to `timeout` for this slot to be lost; true when it is.
    ///
    /// Never asks the network: a lease-based slot counts as lost once its
    /// holder failed to renew it for the lease time minus the safety
    /// margin ([`Pool::lease_margin`]), or when a renewal found it gone.
    /// That is before the server can give it to anyone else, so a caller
    /// that stops what the slot guards within the margin never overlaps
    /// with the next holder. A lock-based slot cannot be lost: this sleeps
    /// for `timeout` and returns false.
    pub fn wait_lost(&self, timeout: Duration) -> bool {
        match &self.pool.inner.backend {
            Backend::File(_) => {
                std::thread::sleep(timeout);
                false
            }
            #[cfg(feature = "redis")]
            Backend::Redis(p) => p.wait_lost(self.index, timeout),
        }
    }

    /// The environment a child process holding this slot should see:
    /// `DBSLOTS_SLOT` (the slot number) and `DBSLOTS_POOL` (the address,
    /// with its credentials so that the child can open the pool: the
    /// environment is readable only by the same user, unlike a command
    /// line; never print it).
    pub fn child_env(&self) -> [(&'static str, String); 2] {
        [
            (crate::env::SLOT, self.index.to_string()),
            (crate::env::POOL, self.pool.addr().to_unredacted_string()),
        ]
    }

    /// A duplicate of the descriptor whose lock is this slot: **the** way
    /// to hand the slot to a child process (`None` for a lease-based slot,
    /// which cannot be handed over: there this process keeps renewing it).
    ///
    /// The duplicate shares the lock: whoever keeps any copy open keeps the
    /// slot held, so a child that inherits it holds the slot for its whole
    /// life, even if this process is killed. Give the child the duplicate
    /// and [`Slot::child_env`], record it with [`Slot::set_holder_pid`]
    /// once started, and release the guard only after it has exited (with
    /// [`Slot::release_unless_inherited`] when a process it started may
    /// still have the copy: dropping the guard unlocks every copy).
    ///
    /// The duplicate is close-on-exec, like every descriptor std opens. As
    /// the child's stdin (an empty, read-only file) it needs nothing else,
    /// and the spawn keeps std's fast `posix_spawn` path (this is how
    /// `dbslots spawn` does it):
    ///
    /// ```no_run
    /// # fn run(slot: dbslots_core::Slot) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut cmd = std::process::Command::new("php");
    /// cmd.arg("worker.php").envs(slot.child_env());
    /// if let Some(lock) = slot.lock_fd_for_child()? {
    ///     cmd.stdin(lock);
    /// }
    /// let mut child = cmd.spawn()?;
    /// slot.set_holder_pid(child.id());
    /// child.wait()?;
    /// drop(slot);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// A child that needs its stdin keeps the duplicate under its own
    /// number instead, by clearing close-on-exec in a `pre_exec` hook
    /// (`dbslots exec` does; the child's `DBSLOTS_SLOT` says which slot).
    pub fn lock_fd_for_child(&self) -> Result<Option<std::os::fd::OwnedFd>> {
        match self.inheritable()? {
            Some(fd) => {
                // SAFETY: `fd` is open for as long as `self` holds the slot.
                let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                borrowed
                    .try_clone_to_owned()
                    .map(Some)
                    .map_err(|e| Error::Io {
                        op: "duplicating the lock of",
                        path: format!("slot {}", self.index).into(),
                        source: e,
                    })
            }
            None => Ok(None),
        }
    }

    /// The descriptor that carries this slot's lock (`None` for a lease).
    fn inheritable(&self) -> Result<Option<std::os::fd::RawFd>> {
        match &self.pool.inner.backend {
            Backend::File(p) => p
                .slot_raw_fd(self.index)
                .map(Some)
                .ok_or(Error::Unsupported {
                    backend: "file",
                    what: "sharing a slot that is not held",
                }),
            #[cfg(feature = "redis")]
            Backend::Redis(_) => Ok(None),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release_inner();
    }
}
