//! The controlling terminal: who may use it, and job control (Ctrl-Z,
//! `fg`, `bg`) across the command's own process group.
//!
//! # Implementation Details
//!
//! The command runs in a process group of its own (so that its whole tree
//! can be signalled), and a terminal lets only its *foreground* group
//! read from it, change its modes, or get its Ctrl-C. This process stays
//! where its caller put it (an interactive shell's job, a script's group):
//! moving the terminal to the command at once would take it from whoever
//! shares this process's group (`dbslots exec … | less`: `less` could no
//! longer read the keyboard; a script's shell would no longer get Ctrl-C).
//! So the terminal moves only when the command needs it:
//!
//! - a command that never touches the terminal leaves it where it is:
//!   Ctrl-C, Ctrl-\\ and Ctrl-Z reach this process's group (the script, the
//!   pipeline, this process), and this process passes them on to the
//!   command's group (`forward.rs`);
//! - when the command reads from the terminal or changes its modes, the
//!   kernel stops it (SIGTTIN, SIGTTOU, as it stops any background job).
//!   If this process's job is in the foreground, the command's group gets
//!   the terminal (`tcsetpgrp`) and is continued: it never notices. From
//!   then on the terminal's signals go to the command's group directly;
//! - when the command is stopped as a job (Ctrl-Z while it has the
//!   terminal, SIGTSTP passed on, or a terminal access while this job is
//!   in the background), this process takes the terminal back and stops
//!   itself with the same signal, so that the shell running the job sees
//!   it stopped; the SIGCONT of `fg` or `bg` is passed on to the group
//!   (`forward.rs`), and a command that needs the terminal again gets it
//!   as above once the job is in the foreground;
//! - when the command exits, the terminal goes back to this process's
//!   group. If it died of SIGINT while it had the terminal (so a Ctrl-C
//!   went to its group only), this process sends SIGINT to its own group
//!   before it ends by it: a script's shell then stops as if it had got
//!   the Ctrl-C itself (bash stops a loop only if it did).
//!
//! A stop by SIGSTOP (a debugger, `kill -STOP`) is not a job stop and is
//! left alone; without a controlling terminal nothing here applies.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// This process's controlling terminal, open.
#[derive(Debug)]
pub(super) struct Terminal {
    fd: OwnedFd,
}

impl Terminal {
    /// The controlling terminal, or `None` without one.
    pub(super) fn open() -> Option<Terminal> {
        // SAFETY: open(2) with a constant path; the descriptor is owned
        // below.
        let fd = unsafe {
            libc::open(
                c"/dev/tty".as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: a new descriptor nobody else owns.
        Some(Terminal {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The terminal's foreground process group (-1 if unknown).
    pub(super) fn foreground(&self) -> libc::pid_t {
        // SAFETY: tcgetpgrp on a descriptor we own.
        unsafe { libc::tcgetpgrp(self.fd.as_raw_fd()) }
    }

    /// Makes `pgrp` the foreground group. Called from a background group
    /// too, so SIGTTOU (which `tcsetpgrp` from the background raises) is
    /// blocked meanwhile.
    pub(super) fn give(&self, pgrp: libc::pid_t) {
        // SAFETY: sigset manipulation on locals; changes this thread's
        // mask and restores it; tcsetpgrp on a descriptor we own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTTOU);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            if libc::tcsetpgrp(self.fd.as_raw_fd(), pgrp) != 0 {
                tracing::debug!(pgrp, error = %io::Error::last_os_error(), "cannot move the terminal");
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
    }

    /// Gives the terminal back to this process's group if the command's
    /// group `pgid` has it; true if it had.
    pub(super) fn take_back(&self, pgid: libc::pid_t) -> bool {
        let had = self.foreground() == pgid;
        if had {
            // SAFETY: getpgrp cannot fail.
            self.give(unsafe { libc::getpgrp() });
        }
        had
    }

    /// A process of the command's group `pgid` was stopped by `sig`: see
    /// the module doc.
    pub(super) fn stopped(&self, pgid: libc::pid_t, sig: libc::c_int) {
        if ![libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU].contains(&sig) {
            return;
        }
        // SAFETY: getpgrp cannot fail.
        let own = unsafe { libc::getpgrp() };
        let foreground = self.foreground();
        let job_in_front = foreground == own || foreground == pgid;
        if sig != libc::SIGTSTP && job_in_front {
            // The command wants the terminal, and its job has it.
            if foreground != pgid {
                tracing::debug!(
                    pgid,
                    "the command uses the terminal; giving it the terminal"
                );
                self.give(pgid);
            }
            // SAFETY: kill on the group of our child (not empty: it has a
            // stopped member we have not reaped).
            unsafe { libc::kill(-pgid, libc::SIGCONT) };
            return;
        }
        self.take_back(pgid);
        tracing::debug!(
            pgid,
            signal = sig,
            "the command was stopped as a job; stopping too"
        );
        stop_self(sig);
    }
}

/// Stops this process with `sig` (its default action), unless the caller
/// made this process ignore it. Returns once continued; the SIGCONT is
/// passed on to the command's group by `forward.rs`.
fn stop_self(sig: libc::c_int) {
    // SAFETY: swaps the disposition of `sig` for its default around a
    // raise, and restores it; sigaction structs are zeroed first.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        let mut old: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut dfl.sa_mask);
        if libc::sigaction(sig, &dfl, &mut old) != 0 {
            return;
        }
        if old.sa_sigaction != libc::SIG_IGN {
            libc::raise(sig);
        }
        libc::sigaction(sig, &old, std::ptr::null_mut());
    }
}
