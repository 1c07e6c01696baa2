//! Passing the signals `exec` gets on to its command's process group.
//!
//! Handlers rather than blocked signals and a `sigwait` thread: the
//! command must start with them unblocked, and std's `posix_spawn` path
//! (which spares this process a `fork`, the bulk of what `exec` costs)
//! keeps the parent's signal mask, while a caught signal is reset to its
//! default by `exec` in the child. No helper thread is needed either.
//!
//! What is forwarded, and what is not:
//! - a signal inherited as ignored (`nohup`, `cmd &` in a script) stays
//!   ignored, for this process and for the command;
//! - a signal the terminal sent (Ctrl-C, Ctrl-\\, Ctrl-Z, a hang-up) went
//!   to the terminal's foreground process group; the command runs in a
//!   group of its own, so it got it only if its group is the foreground
//!   one, and then this process did not (see `terminal.rs`): a signal
//!   from the terminal is passed on;
//! - a signal a process of the command's group sent to this process, or
//!   this process to itself, is not sent back to the group;
//! - every other one (`kill PID`, a supervisor stopping dbslots, a shell's
//!   `fg` continuing it) goes to the command's process group, exactly
//!   once, also when it arrives while the command is being started, and
//!   until the group is empty (also after the command itself exited).
//!
//! Once the command has exited, what it left in its group is waited for;
//! a request to stop (SIGINT, SIGTERM, SIGHUP) then stops it whatever it
//! ignores (background jobs of a script ignore SIGINT): the first sends
//! SIGTERM to the group, any further one SIGKILL. A request that came
//! before (the Ctrl-C that ended the command) counts as the first one, as
//! soon as the command has exited ([`command_exited`]).
//!
//! Signals are sent to the group only while its id is reserved: until the
//! main thread has found the group empty, which it does with the forwarded
//! signals blocked ([`with_forwarding_blocked`]), and only the main thread
//! runs the handler ([`block_in_this_thread`] in every other thread).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::SeqCst};

/// The signals passed on to the command's group.
pub(super) const FORWARDED: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGTSTP,
    libc::SIGCONT,
];

/// The command's process group (high 32 bits) once it runs, and the
/// forwarded signals that arrived before that (one bit per signal number,
/// low 32 bits). One word, so that a signal is either seen by the handler
/// with the group (and forwarded there) or left pending for
/// [`publish_group`] (and forwarded there): exactly once, whichever thread
/// takes it.
static FORWARDING: AtomicU64 = AtomicU64::new(0);

/// The forwarded signals this process received (one bit per number).
static RECEIVED: AtomicU32 = AtomicU32::new(0);

/// [`FORWARDING`] once the group is empty: its id may be reused, so
/// nothing is forwarded any more.
const GROUP_GONE: u64 = u64::MAX;

/// The requests to stop: after the command exited they stop its group.
const STOPS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Set once the command (the group's leader) has exited.
static COMMAND_EXITED: AtomicBool = AtomicBool::new(false);

/// Set once a request to stop came from outside the command's group.
static STOP_ASKED: AtomicBool = AtomicBool::new(false);

/// Set once the group was sent SIGTERM for a request to stop after the
/// command exited: the next request sends SIGKILL.
static TERMINATED: AtomicBool = AtomicBool::new(false);

/// The signal a request to stop sends to what the command left: SIGTERM
/// the first time, SIGKILL after that. Async-signal-safe.
fn stop_what_is_left() -> libc::c_int {
    if TERMINATED.swap(true, SeqCst) {
        libc::SIGKILL
    } else {
        libc::SIGTERM
    }
}

/// [`sender`]'s word for a signal the terminal sent.
const FROM_TERMINAL: libc::pid_t = -1;

/// Who sent a signal that came before the group was known, per signal
/// number (the last one, if several), for [`publish_group`].
static EARLY_SENDER: [AtomicI32; 32] = [const { AtomicI32::new(0) }; 32];

/// Who sent a signal: the terminal ([`FROM_TERMINAL`]), a process (its
/// pid), or something else (0).
fn sender(info: &libc::siginfo_t) -> libc::pid_t {
    match info.si_code {
        libc::SI_KERNEL => FROM_TERMINAL,
        // SAFETY: si_pid is valid for signals sent by kill (SI_USER) and
        // sigqueue/tgkill (SI_QUEUE, SI_TKILL).
        libc::SI_USER | libc::SI_QUEUE | libc::SI_TKILL => unsafe { info.si_pid() },
        _ => 0,
    }
}

/// Whether a signal from `sender` reached the group `pgid` already, or
/// came from it (see the module doc). Async-signal-safe: `getpgrp`,
/// `getpid` and `getpgid` are system calls.
fn not_for_the_group(sender: libc::pid_t, pgid: libc::pid_t) -> bool {
    // SAFETY: plain system calls.
    unsafe {
        if sender == FROM_TERMINAL {
            // From the terminal, to its foreground group, which is ours:
            // the command's group has it only if it is ours too.
            return libc::getpgrp() == pgid;
        }
        sender > 0 && (sender == libc::getpid() || libc::getpgid(sender) == pgid)
    }
}

/// The handler of the forwarded signals: passes the signal to the group,
/// or keeps it until the group exists. Only async-signal-safe calls (an
/// atomic, `getpgid`, `getpgrp`, `getpid`, `kill`); `errno` is kept.
extern "C" fn forward_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: errno is thread-local; the handler restores it.
    let errno = unsafe { *libc::__errno_location() };
    RECEIVED.fetch_or(1 << sig, SeqCst);
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let from = sender(unsafe { &*info });
    // Stored before the pending bit is set: publish_group reads it after
    // taking the bits.
    EARLY_SENDER[sig as usize].store(from, SeqCst);
    let mut word = FORWARDING.load(SeqCst);
    if STOPS.contains(&sig) && word != GROUP_GONE {
        let pgid = (word >> 32) as libc::pid_t;
        if !not_for_the_group(from, pgid) {
            STOP_ASKED.store(true, SeqCst);
        }
    }
    loop {
        if word == GROUP_GONE {
            break;
        }
        let pgid = (word >> 32) as libc::pid_t;
        if pgid != 0 {
            if !not_for_the_group(from, pgid) {
                let send = if STOPS.contains(&sig) && COMMAND_EXITED.load(SeqCst) {
                    stop_what_is_left()
                } else {
                    sig
                };
                // SAFETY: kill is async-signal-safe; the group id is
                // reserved until GROUP_GONE is stored (module doc).
                unsafe { libc::kill(-pgid, send) };
            }
            break;
        }
        match FORWARDING.compare_exchange(word, word | (1 << sig), SeqCst, SeqCst) {
            Ok(_) => break,
            Err(now) => word = now,
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Catches the forwarded signals with [`forward_signal`], except those
/// this process inherited as ignored: they stay ignored, and so the
/// command inherits them ignored too (`nohup dbslots exec …`). Starts
/// afresh: nothing forwarded to an earlier command's group.
pub(super) fn catch_forwarded_signals() -> io::Result<()> {
    FORWARDING.store(0, SeqCst);
    RECEIVED.store(0, SeqCst);
    COMMAND_EXITED.store(false, SeqCst);
    STOP_ASKED.store(false, SeqCst);
    TERMINATED.store(false, SeqCst);
    for sig in FORWARDED {
        if ignored(sig)? {
            continue;
        }
        // SAFETY: installs a handler that only touches atomics and makes
        // async-signal-safe system calls; the struct is zeroed and then
        // filled in.
        let r = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward_signal
                as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
                as usize;
            action.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether `sig` is ignored in this process.
pub(super) fn ignored(sig: libc::c_int) -> io::Result<bool> {
    // SAFETY: reads the current disposition into a zeroed struct.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(old.sa_sigaction == libc::SIG_IGN)
    }
}

/// Records the command's process group for [`forward_signal`] and
/// forwards the signals that arrived while it was being started.
pub(super) fn publish_group(pgid: libc::pid_t) {
    let before = FORWARDING.swap((pgid as u32 as u64) << 32, SeqCst);
    let pending = before as u32;
    for sig in FORWARDED {
        let from = EARLY_SENDER[sig as usize].load(SeqCst);
        if pending & (1 << sig) != 0 && !not_for_the_group(from, pgid) {
            tracing::debug!(
                signal = sig,
                pgid,
                "forwarding an early signal to the command's group"
            );
            // SAFETY: plain kill on the group of our unreaped child.
            unsafe { libc::kill(-pgid, sig) };
        }
    }
}

/// The command (the leader of group `pgid`) has exited and processes of
/// its group are left: if a request to stop came (to this process, or
/// `interrupted`: a Ctrl-C went to the command's group only), they get
/// SIGTERM now; from now on a request stops them (module doc). Call with
/// the forwarded signals blocked, while the group is known to exist.
pub(super) fn command_exited(pgid: libc::pid_t, interrupted: bool) {
    COMMAND_EXITED.store(true, SeqCst);
    if STOP_ASKED.load(SeqCst) || interrupted {
        let sig = stop_what_is_left();
        tracing::debug!(
            pgid,
            signal = sig,
            "the command exited after a request to stop; stopping what it left"
        );
        // SAFETY: kill on a group that exists (see the contract).
        unsafe { libc::kill(-pgid, sig) };
    }
}

/// Stops forwarding: the group is empty (call with the forwarded signals
/// blocked, right when that was found).
pub(super) fn group_gone() {
    FORWARDING.store(GROUP_GONE, SeqCst);
}

/// Runs `f` with the forwarded signals blocked in the calling thread, so
/// that the handler cannot run in between (see the module doc).
pub(super) fn with_forwarding_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset manipulation on locals; changes this thread's mask
    // and restores it.
    let old = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in FORWARDED {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        old
    };
    let r = f();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    r
}

/// Blocks the forwarded signals in the calling thread, so that only the
/// main thread runs [`forward_signal`] (a helper thread could otherwise be
/// inside it when the main thread finds the group empty).
pub(super) fn block_in_this_thread() {
    // SAFETY: sigset manipulation on a local value; changes this thread's
    // mask only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in FORWARDED {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Whether this process received `sig` (one of the forwarded ones) since
/// [`catch_forwarded_signals`].
pub(super) fn received(sig: libc::c_int) -> bool {
    RECEIVED.load(SeqCst) & (1 << sig) != 0
}

/// Ends this process by the signal that ended the command (SIGINT,
/// SIGTERM or SIGHUP) when this process was sent it too, as a shell
/// expects of a program whose child died of Ctrl-C (bash stops a loop only
/// then). Returns otherwise: for any other signal (SIGQUIT and the rest
/// would dump this process's core), for a signal only the command got (it
/// killed itself, or it was stopped on a lost lease), or if the signal did
/// not end this process.
pub(super) fn die_like_the_command(sig: libc::c_int) {
    if !received(sig) || ![libc::SIGINT, libc::SIGTERM, libc::SIGHUP].contains(&sig) {
        return;
    }
    // SAFETY: restores the default action and raises the signal in this
    // process; unblocks it in this thread first.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
}
