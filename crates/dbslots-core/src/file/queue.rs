//! The waiters' queue: tickets on the board, one futex word per waiter, and
//! a watch window that passes over waiters that do not run.
//!
//! # Implementation Details
//!
//! A waiter registers twice: a locked file in `waiters/` (its liveness, and
//! what `status` lists, for foreign clients too) and an entry on the board
//! (its place and its futex word). The entry gets a ticket from the
//! board's counter; the queue is the entries in ticket order.
//!
//! * **Who takes a freed slot.** Only the *head*, the earliest waiter that
//!   is not passed over, claims slots. The board's `head` word names its
//!   entry; a releaser unlocks its slot, then wakes that entry's futex. One
//!   release, one wake-up of one process: no herd, no polling.
//! * **The watch window.** The first [`WINDOW_LEN`] waiters that are not
//!   passed over are the window. They sleep with a timer (the head every
//!   `crash_check`, at most [`HEAD_TICK`]; the others every [`WATCH_TICK`])
//!   and record when they last ran (`beat_ns`). Waiters behind the window
//!   sleep without a timer until the window moves to them.
//! * **Passing over.** Whoever looks at the window (a window waiter on its
//!   timer, a new waiter, a waiter leaving, a releaser whose head looks
//!   stale) passes over a window entry that has not run for [`STALE`]
//!   (stopped, frozen, paused in a debugger, or starved of CPU), and a
//!   waiter entering the window whose process `/proc` shows stopped (same
//!   pid namespace only, state `T`/`t`): its
//!   entry is marked `SKIPPED` and woken. A stopped waiter therefore delays
//!   the others by at most [`STALE`] plus a tick, and by nothing at all when
//!   `/proc` shows it stopped as it enters the window. A passed-over entry
//!   whose waiter file is no longer locked belongs to a dead waiter and is
//!   freed.
//! * **A resumed waiter keeps its place.** A waiter clears its own
//!   `SKIPPED` mark whenever it runs, so when it resumes it is the earliest
//!   ticket again and takes the next free slot.
//! * **Liveness** needs one running process to look: the window keeps
//!   three timers, the next five waiters (the reserve) wake every
//!   [`RESERVE_TICK`], and releasers and new waiters look too. Only if the
//!   first eight waiters all stop within [`STALE`] of each other and no
//!   dbslots process releases or queues afterwards does a slot freed by a
//!   crash or a foreign client wait for one of them to resume.
//! * **Deadlines and cancellation** are futex timeouts and a wake of the
//!   waiter's own word (see `cancel`): no signal, no helper thread.
//! * **A full table** (more than `QUEUE_LEN` waiters) makes the extra
//!   waiters poll every 2 ms, like foreign clients; so does a filesystem
//!   with no room for a waiter's file (no inode left, a quota of files).
//!
//! Foreign clients (docs/protocol.md) are not in this queue: they poll with
//! non-blocking locks, so a stopped foreign waiter holds nothing anybody
//! waits for.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustix::fs::{self as rfs, FlockOperation, OFlags};
use rustix::io::Errno;
use rustix::thread::futex;

use super::board::{Entry, QUEUE_LEN};
use super::layout::{WAITERS, open_in};
use super::{FilePool, errno_io, now_unix_ns};
use crate::error::{Error, Result};

/// Entry flag: passed over (not running when it should have).
pub(super) const SKIPPED: u32 = 1;
/// Entry flag: in the watch window (keeps a timer, records `beat_ns`).
pub(super) const WINDOW: u32 = 2;
/// Waiters at the front that keep a timer.
pub(super) const WINDOW_LEN: usize = 3;
/// Entries `refresh` keeps in order: the window and room for passing over;
/// also the end of the reserve (see [`RESERVE_TICK`]).
pub(super) const FRONT: usize = 8;
/// A window waiter that has not run for this long is passed over.
pub(super) const STALE: Duration = Duration::from_millis(30);
/// The longest the head sleeps between probes for slots freed silently.
pub(super) const HEAD_TICK: Duration = Duration::from_millis(10);
/// How often the window waiters behind the head look at those ahead.
pub(super) const WATCH_TICK: Duration = Duration::from_millis(10);
/// How often the few waiters right behind the window look (a backstop for
/// a window whose waiters all stopped at once).
pub(super) const RESERVE_TICK: Duration = Duration::from_millis(50);

/// CLOCK_MONOTONIC in nanoseconds (system-wide, like `beat_ns`).
pub(super) fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The inode of this process's pid namespace (0 when unknown).
fn pid_ns() -> u64 {
    static NS: OnceLock<u64> = OnceLock::new();
    *NS.get_or_init(|| rfs::stat("/proc/self/ns/pid").map_or(0, |st| st.st_ino))
}

/// What `/proc` says about a waiter's process.
#[derive(PartialEq)]
enum ProcState {
    Running,
    Stopped,
    /// Another pid namespace, or no `/proc`.
    Unknown,
}

fn proc_state(e: &Entry) -> ProcState {
    let ns = e.pid_ns.load(Ordering::Relaxed);
    if ns == 0 || ns != pid_ns() {
        return ProcState::Unknown;
    }
    let pid = e.pid.load(Ordering::Relaxed);
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        // Gone: the waiter-file probe decides.
        return ProcState::Stopped;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    match text
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
    {
        Some('T' | 't' | 'Z' | 'X') => ProcState::Stopped,
        Some(_) => ProcState::Running,
        None => ProcState::Unknown,
    }
}

/// What one look at the front of the queue found.
enum Look {
    /// The place of `me` (see [`FilePool::refresh`]).
    Done(Option<usize>),
    /// Entries were passed over and the window is not full: look again.
    Again { head_woken: bool },
}

/// A waiter's registration file; removed on drop.
pub(super) struct WaiterFile {
    dir: OwnedFd,
    name: String,
    _file: File,
}

impl Drop for WaiterFile {
    fn drop(&mut self) {
        let _ = rfs::unlinkat(&self.dir, self.name.as_str(), rfs::AtFlags::empty());
    }
}

/// A waiter's place in the queue; leaving it (drop) frees the entry and
/// moves the window on.
pub(super) struct Place<'a> {
    pool: &'a FilePool,
    pub entry: u32,
    _file: WaiterFile,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let board = &self.pool.board;
        let e = board.entry(self.entry);
        let was_head = board.head().load(Ordering::SeqCst) == self.entry + 1;
        e.flags.store(0, Ordering::Relaxed);
        e.ticket.store(0, Ordering::SeqCst);
        let (w, b) = (self.entry as usize / 64, self.entry % 64);
        board.queue_word(w).fetch_and(!(1 << b), Ordering::SeqCst);
        // More slots may be free than the one this waiter took (several
        // releases at once, a resize): a leaving head wakes the new head
        // as soon as it is known.
        self.pool.refresh_waking(None, was_head);
    }
}

impl FilePool {
    fn waiter_file(&self, seq: u32, since: u64) -> Result<WaiterFile> {
        let name = format!("{}-{}-{}", self.pid, seq, since);
        // Created under a hidden name and renamed once locked, so that a
        // concurrent `stats()` never mistakes a new waiter for a dead one.
        let tmp = format!(".{name}");
        let wdir = self.dirs.path.join(WAITERS);
        let fd = open_in(
            &self.dirs.waiters,
            &wdir,
            &tmp,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY,
            self.dirs.file_mode,
        )?;
        rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| Error::io("locking", wdir.join(&tmp), errno_io(e)))?;
        let mut file = File::from(fd);
        let _ = writeln!(file, "{} {}", self.pid, since);
        rfs::renameat(
            &self.dirs.waiters,
            tmp.as_str(),
            &self.dirs.waiters,
            name.as_str(),
        )
        .map_err(|e| Error::io("renaming", wdir.join(&tmp), errno_io(e)))?;
        let dir = self
            .dirs
            .waiters
            .try_clone()
            .map_err(|e| Error::io("duplicating", &wdir, e))?;
        Ok(WaiterFile {
            dir,
            name,
            _file: file,
        })
    }

    /// Queues this acquirer: `None` when the board's table is full.
    pub(super) fn enqueue(&self) -> Result<Option<Place<'_>>> {
        let seq = self.waiter_seq.fetch_add(1, Ordering::Relaxed);
        let since = now_unix_ns();
        let file = self.waiter_file(seq, since)?;
        let Some(entry) = self.free_entry() else {
            return Ok(None);
        };
        let board = &self.board;
        let e = board.entry(entry);
        e.since_ns.store(since, Ordering::Relaxed);
        e.beat_ns.store(mono_ns(), Ordering::Relaxed);
        e.pid.store(self.pid, Ordering::Relaxed);
        e.seq.store(seq, Ordering::Relaxed);
        e.pid_ns.store(pid_ns(), Ordering::Relaxed);
        e.flags.store(0, Ordering::Relaxed);
        // 0 means a free entry and u64::MAX is nobody's: a counter at its
        // end (planted: anybody who can write the pool can write the board)
        // wraps past both.
        let ticket = loop {
            let t = board
                .next_ticket()
                .fetch_add(1, Ordering::SeqCst)
                .wrapping_add(1);
            if t != 0 && t != u64::MAX {
                break t;
            }
        };
        // The ticket goes in last: readers take an entry with a ticket as
        // complete.
        e.ticket.store(ticket, Ordering::SeqCst);
        Ok(Some(Place {
            pool: self,
            entry,
            _file: file,
        }))
    }

    /// Claims a free entry of the table, freeing dead ones if it is full.
    fn free_entry(&self) -> Option<u32> {
        for pass in 0..2 {
            for w in 0..QUEUE_LEN as usize / 64 {
                let word = self.board.queue_word(w);
                let mut cur = word.load(Ordering::Relaxed);
                while cur != u64::MAX {
                    let b = (!cur).trailing_zeros();
                    match word.compare_exchange(
                        cur,
                        cur | (1 << b),
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => return Some(w as u32 * 64 + b),
                        Err(now) => cur = now,
                    }
                }
            }
            if pass == 0 {
                self.reap_dead_entries();
            }
        }
        None
    }

    /// Frees the entries of waiters that died (their file is not locked).
    pub(super) fn reap_dead_entries(&self) {
        for i in 0..QUEUE_LEN {
            let (w, b) = (i as usize / 64, i % 64);
            if self.board.queue_word(w).load(Ordering::Relaxed) & (1 << b) == 0 {
                continue;
            }
            let e = self.board.entry(i);
            let t = e.ticket.load(Ordering::SeqCst);
            if t != 0 && self.dead(e) {
                self.free_dead(i, t);
            }
        }
    }

    /// True when the waiter of `e` is gone: its file is missing or unlocked.
    fn dead(&self, e: &Entry) -> bool {
        let name = format!(
            "{}-{}-{}",
            e.pid.load(Ordering::Relaxed),
            e.seq.load(Ordering::Relaxed),
            e.since_ns.load(Ordering::Relaxed)
        );
        let fd = match rfs::openat(
            &self.dirs.waiters,
            name.as_str(),
            // Non-blocking: a FIFO planted under a waiter's name must not
            // hang the sweep.
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            rfs::Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return true,
            Err(_) => return false,
        };
        match rfs::flock(&fd, FlockOperation::NonBlockingLockShared) {
            Ok(()) => {
                let _ = rfs::flock(&fd, FlockOperation::Unlock);
                true
            }
            Err(_) => false,
        }
    }

    fn free_dead(&self, i: u32, ticket: u64) {
        let e = self.board.entry(i);
        if e.ticket
            .compare_exchange(ticket, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            tracing::debug!(pool = %self.name, entry = i, "freed the queue entry of a dead waiter");
            e.flags.store(0, Ordering::Relaxed);
            let (w, b) = (i as usize / 64, i % 64);
            self.board
                .queue_word(w)
                .fetch_and(!(1 << b), Ordering::SeqCst);
        }
    }

    /// Wakes the waiter of entry `i`.
    pub(super) fn wake_entry(&self, i: u32) {
        let word = &self.board.entry(i).wake;
        word.fetch_add(1, Ordering::SeqCst);
        let _ = futex::wake(word, futex::Flags::empty(), 1);
    }

    /// Passes over window entry `i` (ticket `t`): frees it if its waiter is
    /// dead, else marks it and wakes it (it clears the mark when it runs).
    fn pass_over(&self, i: u32, t: u64) {
        let e = self.board.entry(i);
        if self.dead(e) {
            self.free_dead(i, t);
            return;
        }
        tracing::debug!(pool = %self.name, pid = e.pid.load(Ordering::Relaxed), "passing over a waiter that does not run");
        let _ = e
            .flags
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| {
                Some((f | SKIPPED) & !WINDOW)
            });
        self.wake_entry(i);
    }

    /// Looks at the front of the queue: passes over window waiters that do
    /// not run, brings waiters into the window (waking them), and points
    /// `head` at the first. Returns the place of `me` among the waiters
    /// that are not passed over (`me` counts whatever its flags).
    pub(super) fn refresh(&self, me: Option<u32>) -> Option<usize> {
        self.refresh_waking(me, false)
    }

    /// [`FilePool::refresh`], also waking the head (unless it is `me`) as
    /// soon as it is found, before the slower look at the rest.
    pub(super) fn refresh_waking(&self, me: Option<u32>, wake_head: bool) -> Option<usize> {
        // A look considers only the FRONT earliest entries. When it passes
        // over so many of them that the window is not full (eight waiters
        // stopped or killed together), the waiters behind them are not
        // looked at: look again, without the ones just passed over (they
        // are marked or freed now). Otherwise nobody would be named head,
        // a release would wake nobody, and the first waiter that runs,
        // beyond the reserve, has no timer: it would sleep on a free slot.
        // Each look again has passed over at least one entry: bounded.
        let mut wake_head = wake_head;
        let mut looks = QUEUE_LEN as usize / FRONT + 1;
        loop {
            looks -= 1;
            match self.look_at_front(me, wake_head, looks > 0) {
                Look::Done(mine) => return mine,
                Look::Again { head_woken } => wake_head &= !head_woken,
            }
        }
    }

    /// One look at the front of the queue (see [`FilePool::refresh_waking`]).
    fn look_at_front(&self, me: Option<u32>, wake_head: bool, may_look_again: bool) -> Look {
        let now = mono_ns();
        let stale = STALE.as_nanos() as u64;
        let my_ticket = me.map(|i| self.board.entry(i).ticket.load(Ordering::SeqCst));
        // One pass, no sort: the FRONT earliest entries that are not passed
        // over (plus `me`), and how many such entries are ahead of `me`.
        let mut front: [(u64, u32); FRONT] = [(u64::MAX, u32::MAX); FRONT];
        let mut ahead = 0usize;
        for w in 0..QUEUE_LEN as usize / 64 {
            let mut bits = self.board.queue_word(w).load(Ordering::SeqCst);
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                let i = w as u32 * 64 + b;
                let e = self.board.entry(i);
                let t = e.ticket.load(Ordering::SeqCst);
                if t == 0 {
                    continue;
                }
                if Some(i) != me {
                    if e.flags.load(Ordering::Relaxed) & SKIPPED != 0 {
                        continue;
                    }
                    if my_ticket.is_some_and(|m| t < m) {
                        ahead += 1;
                    }
                }
                if t < front[FRONT - 1].0 {
                    let mut k = FRONT - 1;
                    while k > 0 && front[k - 1].0 > t {
                        front[k] = front[k - 1];
                        k -= 1;
                    }
                    front[k] = (t, i);
                }
            }
        }
        let mut pos = 0usize;
        let mut mine = None;
        let mut head = 0u32;
        let mut passed_ahead = 0usize;
        let mut passed = 0usize;
        for &(t, i) in front.iter().take_while(|(t, _)| *t != u64::MAX) {
            if pos >= WINDOW_LEN && (me.is_none() || mine.is_some()) {
                break;
            }
            if Some(i) == me {
                mine = Some(pos);
            } else if pos < WINDOW_LEN {
                let e = self.board.entry(i);
                let flags = e.flags.load(Ordering::SeqCst);
                let pass = if flags & WINDOW != 0 {
                    now.saturating_sub(e.beat_ns.load(Ordering::SeqCst)) > stale
                } else {
                    proc_state(e) == ProcState::Stopped
                };
                if pass {
                    self.pass_over(i, t);
                    passed += 1;
                    if my_ticket.is_some_and(|m| t < m) {
                        passed_ahead += 1;
                    }
                    continue;
                }
                if flags & WINDOW == 0 {
                    e.beat_ns.store(now, Ordering::SeqCst);
                    e.flags.fetch_or(WINDOW, Ordering::SeqCst);
                    if pos > 0 {
                        self.wake_entry(i);
                    }
                }
            }
            if pos == 0 {
                head = i + 1;
                // A new head (its predecessor left or was passed over) may
                // have a free slot waiting: wake it rather than let it
                // find out on its next tick.
                let previous = self.board.head().swap(head, Ordering::SeqCst);
                if (wake_head || previous != head) && Some(i) != me {
                    self.wake_entry(i);
                }
            }
            pos += 1;
        }
        let front_full = front[FRONT - 1].0 != u64::MAX;
        if may_look_again && front_full && passed > 0 && pos < WINDOW_LEN {
            return Look::Again {
                head_woken: head != 0,
            };
        }
        if head == 0 {
            self.board.head().store(0, Ordering::SeqCst);
        }
        if me.is_some() && mine.is_none() {
            mine = Some(ahead.saturating_sub(passed_ahead));
        }
        Look::Done(mine)
    }

    /// The board's head word: 0 when nobody queues, else the head's entry
    /// plus one. Any process that can write the pool can write the board,
    /// so a value past the queue is not used as an index: the queue is
    /// looked at again, which rewrites the word.
    fn head(&self) -> u32 {
        let h = self.board.head().load(Ordering::SeqCst);
        if h <= QUEUE_LEN {
            return h;
        }
        self.board.head().store(0, Ordering::SeqCst);
        self.refresh(None);
        let h = self.board.head().load(Ordering::SeqCst);
        if h <= QUEUE_LEN { h } else { 0 }
    }

    /// Wakes the head waiter, if anybody queues; passes over a head that
    /// does not run first.
    pub(super) fn wake_head(&self) {
        let mut h = self.head();
        if h == 0 {
            return;
        }
        let e = self.board.entry(h - 1);
        if e.flags.load(Ordering::Relaxed) & WINDOW != 0
            && mono_ns().saturating_sub(e.beat_ns.load(Ordering::Relaxed)) > STALE.as_nanos() as u64
        {
            self.refresh(None);
            h = self.head();
            if h == 0 {
                return;
            }
        }
        self.wake_entry(h - 1);
    }

    /// True when somebody queues ahead of a newcomer.
    pub(super) fn queue_busy(&self) -> bool {
        let h = self.head();
        if h == 0 {
            return false;
        }
        let e = self.board.entry(h - 1);
        if e.ticket.load(Ordering::SeqCst) == 0
            || mono_ns().saturating_sub(e.beat_ns.load(Ordering::Relaxed)) > STALE.as_nanos() as u64
        {
            self.refresh(None);
            return self.head() != 0;
        }
        true
    }
}
