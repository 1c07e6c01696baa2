//! The keeper: a small process that kills the registered process groups
//! when the process that started it dies, however it dies (SIGKILL too).
//!
//! # Implementation Details
//!
//! A lease (Redis pool) lives only while this process renews it. Once this
//! process is gone, nothing it started under a lease may run on, but no
//! code of this process runs after a SIGKILL, and the kernel's death signal
//! (`PR_SET_PDEATHSIG`) reaches only a direct child: the processes the
//! command started survive it, re-parented to init. So a separate process
//! watches: the keeper, forked once, blocks on reading a pipe whose only
//! write end (close-on-exec) this process holds. When this process dies
//! the kernel closes that end, the keeper's read returns end of file, and
//! it sends SIGKILL to every process group still registered. SIGKILL at
//! once, without a grace period: when the holder is gone the lease is not
//! renewed any more, and the keeper cannot tell how much of it is left.
//!
//! A command registers its own process group from its `pre_exec` hook,
//! before its program runs (so before it can start anything): there is no
//! moment at which something of the group runs unregistered. The starter
//! withdraws the registration of a start that failed ([`Keeper::failed`]:
//! the group never existed), and the supervisor forgets a group once it is
//! empty ([`Keeper::forget`]), before the slot is released: a registered
//! group id therefore always names a group that exists or whose members'
//! zombies still reserve the id (see `group.rs`), never a recycled one.
//!
//! Messages are 16 bytes, below `PIPE_BUF`, so writes from several threads
//! and from the commands' hooks never interleave. The keeper's table is
//! allocated before the fork, for as many groups as may ever be
//! registered at once: the forked child of a multi-threaded process must
//! not allocate, and makes only async-signal-safe system calls (`read`,
//! `kill`, `close`, `sigaction`, `setpgid`, `chdir`, `_exit`).
//!
//! The keeper runs in a process group of its own, with every signal
//! blocked and ignored: a Ctrl-C or a `kill %1` for this process's job, or
//! a signal for the command's group, does not reach it. It closes every
//! descriptor it inherited but its end of the pipe, so it holds no slot's
//! lock, no socket and no terminal.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A group to kill when this process dies.
const REGISTER: u32 = 1;
/// The start with this sequence number failed: forget its registration.
const FAILED: u32 = 2;
/// This group is empty: forget it.
const FORGET: u32 = 3;
/// Exit without killing anything.
const STAND_DOWN: u32 = 4;

/// One message to the keeper.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Message {
    what: u32,
    pgid: libc::pid_t,
    seq: u64,
}

const MESSAGE: usize = std::mem::size_of::<Message>();
const _: () = assert!(MESSAGE == 16 && MESSAGE <= libc::PIPE_BUF);

impl Message {
    fn bytes(&self) -> [u8; MESSAGE] {
        let mut b = [0; MESSAGE];
        b[..4].copy_from_slice(&self.what.to_ne_bytes());
        b[4..8].copy_from_slice(&self.pgid.to_ne_bytes());
        b[8..].copy_from_slice(&self.seq.to_ne_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Message {
        let word = |r: std::ops::Range<usize>| -> [u8; 4] { b[r].try_into().unwrap_or([0; 4]) };
        Message {
            what: u32::from_ne_bytes(word(0..4)),
            pgid: libc::pid_t::from_ne_bytes(word(4..8)),
            seq: u64::from_ne_bytes(b[8..16].try_into().unwrap_or([0; 8])),
        }
    }
}

/// A registered group in the keeper's table.
#[derive(Clone, Copy, Default)]
struct Entry {
    pgid: libc::pid_t,
    seq: u64,
}

/// The running keeper (see the module doc).
#[derive(Debug)]
pub(crate) struct Keeper {
    pid: libc::pid_t,
    /// The pipe's write end: the keeper acts when it closes.
    tx: OwnedFd,
    next_seq: AtomicU64,
    stood_down: AtomicBool,
}

/// The registration a command's `pre_exec` hook sends ([`Registration::send`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Registration {
    fd: RawFd,
    seq: u64,
}

impl Registration {
    /// Registers the calling process's group (the command, between fork
    /// and exec: its group is set by then). Async-signal-safe: `getpgrp`
    /// and `write` only, nothing allocated.
    pub(crate) fn send(&self) -> io::Result<()> {
        // SAFETY: getpgrp cannot fail.
        let pgid = unsafe { libc::getpgrp() };
        write_message(
            self.fd,
            Message {
                what: REGISTER,
                pgid,
                seq: self.seq,
            },
        )
    }
}

/// Writes one message whole (16 bytes to a pipe: one atomic write).
fn write_message(fd: RawFd, m: Message) -> io::Result<()> {
    let bytes = m.bytes();
    loop {
        // SAFETY: writes from a local buffer to a descriptor the caller
        // keeps open.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), MESSAGE) };
        if n == MESSAGE as isize {
            return Ok(());
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // A pipe writes PIPE_BUF bytes or fewer whole.
        return Err(io::Error::other("short write to the keeper"));
    }
}

impl Keeper {
    /// Forks the keeper, with room for `groups` groups registered at once.
    pub(crate) fn start(groups: usize) -> io::Result<Keeper> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and belong to nobody
        // else.
        let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Allocated here: the child must not allocate. Left uninitialised
        // (the child writes an entry before it reads it), so that room
        // for many groups costs address space, not memory.
        let mut table: Vec<Entry> = Vec::new();
        table.try_reserve_exact(groups.max(1)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("no memory for a table of {groups} process groups; start fewer workers"),
            )
        })?;
        // Every signal blocked across the fork, so that the child never
        // runs one of this process's handlers; the child keeps them so.
        // SAFETY: sigset manipulation on locals; changes this thread's mask
        // and restores it below.
        let old_mask = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            old
        };
        // SAFETY: the child runs `keeper_main` only, which makes
        // async-signal-safe system calls and never returns.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the child; see `keeper_main`.
            unsafe { keeper_main(rx.as_raw_fd(), table.as_mut_ptr(), table.capacity()) }
        }
        let forked = io::Error::last_os_error();
        // SAFETY: restores this thread's mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
        if pid < 0 {
            return Err(forked);
        }
        drop((rx, table));
        tracing::debug!(pid, "keeper started");
        Ok(Keeper {
            pid,
            tx,
            next_seq: AtomicU64::new(1),
            stood_down: AtomicBool::new(false),
        })
    }

    /// A new registration for one start; pass it to the command's
    /// `pre_exec` hook, and to [`Keeper::failed`] if the start fails.
    pub(crate) fn registration(&self) -> Registration {
        Registration {
            fd: self.tx.as_raw_fd(),
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The start of `registration` failed: its group (if it registered)
    /// never ran a program.
    pub(crate) fn failed(&self, registration: Registration) {
        self.send(Message {
            what: FAILED,
            pgid: 0,
            seq: registration.seq,
        });
    }

    /// Group `pgid` is empty: the keeper forgets it.
    pub(crate) fn forget(&self, pgid: libc::pid_t) {
        self.send(Message {
            what: FORGET,
            pgid,
            seq: 0,
        });
    }

    fn send(&self, m: Message) {
        if self.stood_down.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = write_message(self.tx.as_raw_fd(), m) {
            tracing::error!(keeper = self.pid, error = %e, "cannot reach the keeper");
        }
    }

    /// Lets the keeper exit without killing anything, and reaps it.
    /// Call once nothing registered can run any more (closing the pipe
    /// instead would make the keeper kill what is still registered).
    pub(crate) fn stand_down(&self) {
        self.send(Message {
            what: STAND_DOWN,
            pgid: 0,
            seq: 0,
        });
        if self.stood_down.swap(true, Ordering::Relaxed) {
            return;
        }
        loop {
            // SAFETY: waits for our own child.
            let r = unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
            if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stand_down();
    }
}

/// The keeper's life (see the module doc).
///
/// # Safety
///
/// Call only in the child of `fork`, with `table` valid for `capacity`
/// entries (memory of the parent, copied by the fork).
unsafe fn keeper_main(rx: RawFd, table: *mut Entry, capacity: usize) -> ! {
    // SAFETY: async-signal-safe system calls only, on the process's own
    // state and descriptors; `table` is valid for `capacity` entries.
    unsafe {
        libc::setpgid(0, 0);
        let mut ignore: libc::sigaction = std::mem::zeroed();
        ignore.sa_sigaction = libc::SIG_IGN;
        for sig in 1..libc::SIGRTMIN() {
            // SIGKILL and SIGSTOP refuse; that is fine.
            libc::sigaction(sig, &ignore, std::ptr::null_mut());
        }
        close_all_but(rx);
        libc::chdir(c"/".as_ptr());

        let mut len = 0usize;
        let mut buf = [0u8; MESSAGE * 64];
        let mut have = 0usize;
        loop {
            let n = libc::read(rx, buf.as_mut_ptr().add(have).cast(), buf.len() - have);
            if n < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break;
            }
            if n == 0 {
                break;
            }
            have += n as usize;
            let mut at = 0;
            while have - at >= MESSAGE {
                let m = Message::from_bytes(&buf[at..at + MESSAGE]);
                at += MESSAGE;
                match m.what {
                    REGISTER if len < capacity => {
                        *table.add(len) = Entry {
                            pgid: m.pgid,
                            seq: m.seq,
                        };
                        len += 1;
                    }
                    FAILED | FORGET => {
                        let mut i = 0;
                        while i < len {
                            let e = *table.add(i);
                            let hit = if m.what == FAILED {
                                e.seq == m.seq
                            } else {
                                e.pgid == m.pgid
                            };
                            if hit {
                                len -= 1;
                                *table.add(i) = *table.add(len);
                            } else {
                                i += 1;
                            }
                        }
                    }
                    STAND_DOWN => libc::_exit(0),
                    _ => {}
                }
            }
            // Keep a partial message (never written by us, but harmless).
            let rest = have - at;
            std::ptr::copy(buf.as_ptr().add(at), buf.as_mut_ptr(), rest);
            have = rest;
        }
        // The process that started us is gone.
        for i in 0..len {
            let pgid = (*table.add(i)).pgid;
            if pgid > 1 {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        libc::_exit(0)
    }
}

/// Closes every descriptor but `keep`. Async-signal-safe.
///
/// # Safety
///
/// Closes descriptors other code of this process may own: call only in a
/// forked child that runs nothing else.
unsafe fn close_all_but(keep: RawFd) {
    let keep = keep as libc::c_uint;
    // SAFETY: see the function's contract.
    unsafe {
        let ranges = [(0, keep.wrapping_sub(1)), (keep + 1, libc::c_uint::MAX)];
        for (first, last) in ranges {
            if first > last || (first == 0 && keep == 0) {
                continue;
            }
            if libc::syscall(libc::SYS_close_range, first, last, 0) == 0 {
                continue;
            }
            // No close_range (Linux before 5.9): one by one, up to the limit.
            let mut lim: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur.min(1 << 20) as libc::c_uint
            } else {
                1024
            };
            let mut fd = first;
            while fd <= last && fd < max {
                libc::close(fd as libc::c_int);
                fd += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process group of its own: `sleep 30` as its leader.
    fn sleeping_group() -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("sleep")
    }

    fn registered(keeper: &Keeper, child: &std::process::Child) -> Registration {
        // Registered as the child's hook would, from here: the message
        // names the group, whoever writes it.
        let r = keeper.registration();
        write_message(
            r.fd,
            Message {
                what: REGISTER,
                pgid: child.id() as libc::pid_t,
                seq: r.seq,
            },
        )
        .expect("register");
        r
    }

    fn gone_within(child: &mut std::process::Child, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if child.try_wait().expect("try_wait").is_some() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn the_keeper_kills_registered_groups_only_when_its_parent_is_gone() {
        let keeper = std::mem::ManuallyDrop::new(Keeper::start(4).expect("keeper"));
        let mut killed = sleeping_group();
        let mut forgotten = sleeping_group();
        let mut failed = sleeping_group();
        registered(&keeper, &killed);
        registered(&keeper, &forgotten);
        let r = registered(&keeper, &failed);
        keeper.forget(forgotten.id() as libc::pid_t);
        keeper.failed(r);
        // Its parent "dies": the pipe's only write end closes.
        // SAFETY: the keeper is never used or dropped after this.
        unsafe { libc::close(keeper.tx.as_raw_fd()) };
        assert!(
            gone_within(&mut killed, std::time::Duration::from_secs(5)),
            "the registered group was not killed"
        );
        for child in [&mut forgotten, &mut failed] {
            assert!(child.try_wait().expect("try_wait").is_none());
            child.kill().expect("kill");
            child.wait().expect("reap");
        }
        // SAFETY: reaps our own child, the keeper, which has exited.
        unsafe { libc::waitpid(keeper.pid, std::ptr::null_mut(), 0) };
    }

    #[test]
    fn a_keeper_told_to_stand_down_kills_nothing() {
        let keeper = Keeper::start(1).expect("keeper");
        let mut child = sleeping_group();
        registered(&keeper, &child);
        keeper.stand_down();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(child.try_wait().expect("try_wait").is_none());
        child.kill().expect("kill");
        child.wait().expect("reap");
    }
}
