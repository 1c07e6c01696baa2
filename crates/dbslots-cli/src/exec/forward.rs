//! Passing the signals `dbslots exec` gets on to its command.
//!
//! Handlers rather than blocked signals and a `sigwait` thread: the
//! command must start with them unblocked, and std's `posix_spawn` path
//! (which spares this process a `fork`, the bulk of what `exec` costs)
//! keeps the parent's signal mask, while a caught signal is reset to its
//! default by `exec` in the child. No helper thread is needed either.
//!
//! What is forwarded, and what is not:
//! - a signal inherited as ignored (`nohup`, `cmd &` in a script) stays
//!   ignored, for dbslots and for the command;
//! - a signal the terminal sent (Ctrl-C, Ctrl-\\, a hang-up) already went
//!   to the whole foreground process group, the command included: it is
//!   not sent a second time (a second Ctrl-C means "stop now" to many
//!   programs), unless the command left dbslots' process group;
//! - a signal the command sent to dbslots is not sent back to it;
//! - every other one (`kill PID`, a supervisor stopping dbslots) goes to
//!   the command, exactly once, also when it arrives while the command is
//!   being started.

use std::io;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::SeqCst};

/// The signals passed on to the command.
pub const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// The command's pid (high 32 bits) once it runs, and the forwarded signals
/// that arrived before that (one bit per signal number, low 32 bits). One
/// word, so that a signal is either seen by the handler with the pid (and
/// forwarded there) or left pending for [`publish_command_pid`] (and
/// forwarded there): exactly once, whichever thread takes it.
static FORWARDING: AtomicU64 = AtomicU64::new(0);

/// The forwarded signals this process received (one bit per number).
static RECEIVED: AtomicU32 = AtomicU32::new(0);

/// [`FORWARDING`] once the command has exited: its pid may be reused as
/// soon as it is reaped, so nothing is forwarded any more.
const COMMAND_EXITED: u64 = u64::MAX;

/// [`sender`]'s word for a signal the terminal sent.
const FROM_TERMINAL: libc::pid_t = -1;

/// Who sent a signal that came before the command's pid was known, per
/// signal number (the last one, if several), for [`publish_command_pid`].
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

/// Whether a signal from `sender` reached the command `pid` already (see
/// the module doc). Async-signal-safe: `getpgid` and `getpgrp` are system
/// calls.
fn reached_the_command_already(sender: libc::pid_t, pid: libc::pid_t) -> bool {
    if sender == FROM_TERMINAL {
        // From the terminal, to the foreground group: the command has it
        // if it is still in ours.
        // SAFETY: plain system calls.
        return unsafe { libc::getpgid(pid) == libc::getpgrp() };
    }
    sender == pid
}

/// The handler of the forwarded signals: passes the signal to the command,
/// or keeps it until the command runs. Only async-signal-safe calls (an
/// atomic, `getpgid`, `getpgrp`, `kill`); `errno` is kept.
extern "C" fn forward_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: errno is thread-local; the handler restores it.
    let errno = unsafe { *libc::__errno_location() };
    RECEIVED.fetch_or(1 << sig, SeqCst);
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let from = sender(unsafe { &*info });
    // Stored before the pending bit is set: publish_command_pid reads it
    // after taking the bits.
    EARLY_SENDER[sig as usize].store(from, SeqCst);
    let mut word = FORWARDING.load(SeqCst);
    loop {
        if word == COMMAND_EXITED {
            break;
        }
        let pid = (word >> 32) as libc::pid_t;
        if pid != 0 {
            if !reached_the_command_already(from, pid) {
                // SAFETY: kill is async-signal-safe; the pid is not reaped
                // before COMMAND_EXITED is stored (see `command_exited`).
                unsafe { libc::kill(pid, sig) };
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
/// command inherits them ignored too (`nohup dbslots exec …`).
pub fn catch_forwarded_signals() -> io::Result<()> {
    for sig in FORWARDED {
        // SAFETY: reads the current disposition into a zeroed struct.
        let ignored = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                return Err(io::Error::last_os_error());
            }
            old.sa_sigaction == libc::SIG_IGN
        };
        if ignored {
            continue;
        }
        // SAFETY: installs a handler that only touches an atomic and makes
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

/// Records the command's pid for [`forward_signal`] and forwards the
/// signals that arrived while it was being started.
pub fn publish_command_pid(pid: u32) {
    let before = FORWARDING.swap(u64::from(pid) << 32, SeqCst);
    let pending = before as u32;
    for sig in FORWARDED {
        let from = EARLY_SENDER[sig as usize].load(SeqCst);
        if pending & (1 << sig) != 0 && !reached_the_command_already(from, pid as libc::pid_t) {
            tracing::debug!(
                signal = sig,
                pid,
                "forwarding an early signal to the command"
            );
            // SAFETY: plain kill on the child's pid, which is not reaped.
            unsafe { libc::kill(pid as libc::pid_t, sig) };
        }
    }
}

/// Stops forwarding: the command has exited and is about to be reaped.
pub fn command_exited() {
    FORWARDING.store(COMMAND_EXITED, SeqCst);
}

/// Blocks the forwarded signals in the calling thread, so that only the
/// main thread runs [`forward_signal`] (a helper thread could otherwise be
/// inside it when the main thread reaps the command).
pub fn block_in_this_thread() {
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

/// Ends this process by the signal that ended the command (SIGINT,
/// SIGTERM or SIGHUP) when this process was sent it too, as a shell
/// expects of a program whose child died of Ctrl-C (bash stops a loop only
/// then). Returns otherwise: for any other signal (SIGQUIT and the rest
/// would dump this process's core), for a signal only the command got (it
/// killed itself, or `dbslots` stopped it on a lost lease), or if the
/// signal did not end this process.
pub fn die_like_the_command(sig: libc::c_int) {
    let received = RECEIVED.load(SeqCst) & (1 << sig) != 0;
    if !received || ![libc::SIGINT, libc::SIGTERM, libc::SIGHUP].contains(&sig) {
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
