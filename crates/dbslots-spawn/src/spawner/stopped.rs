//! Workers stopped by a signal: said once per stop, since a stopped worker
//! keeps its slot and its run's progress without a sign of life.
//!
//! The usual cause is a worker that reads the terminal (a password prompt
//! of `mysql -p`): a worker runs in a background process group, so the
//! kernel stops it with SIGTTIN, and the run would just hang. When a
//! SIGCHLD comes (one comes with every stop) and some child has a stop to
//! report, stops are read with `waitid(WSTOPPED)` on each running worker;
//! that takes stop reports only, never an exit status (tokio waits for
//! those by pid).

use std::collections::HashMap;
use std::sync::Mutex;

use super::Ctx;
use crate::summary::signal_name;

/// The running workers, by pid: their indices.
#[derive(Default)]
pub(super) struct Running {
    workers: Mutex<HashMap<libc::pid_t, u32>>,
}

impl Running {
    /// Notes worker `index` running as `pid`.
    pub(super) fn insert(&self, pid: libc::pid_t, index: u32) {
        if pid > 0 {
            self.lock().insert(pid, index);
        }
    }

    /// Forgets `pid` once it is reaped.
    pub(super) fn remove(&self, pid: libc::pid_t) {
        self.lock().remove(&pid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<libc::pid_t, u32>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Ctx {
    /// Reports every running worker that stopped since the last look.
    pub(super) fn report_stopped_workers(&self) {
        // One call when no child is stopped (almost always), not one per
        // running worker on every exit.
        if !any_child_stopped() {
            return;
        }
        let running: Vec<(libc::pid_t, u32)> =
            self.running.lock().iter().map(|(p, i)| (*p, *i)).collect();
        for (pid, index) in running {
            if let Some(sig) = stop_signal(pid) {
                let text = stopped_text(index, pid, sig);
                self.reporter.line(&text);
                tracing::warn!(worker = index, pid, signal = sig, "a worker is stopped");
            }
        }
    }
}

/// Whether any child of this process has a stop not yet read (`WNOWAIT`:
/// the report stays for [`stop_signal`], or for whoever else waits for it).
fn any_child_stopped() -> bool {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid for stops only, leaving the report in place, without
    // blocking.
    let r = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WSTOPPED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: waitid filled `info` (or left it zeroed: si_pid 0).
    r == 0 && unsafe { info.si_pid() } != 0
}

/// The signal that stopped child `pid`, if it stopped since its last stop
/// was read. Takes the stop report only.
fn stop_signal(pid: libc::pid_t) -> Option<i32> {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on one child of ours, for stops only (no WEXITED: no
    // exit status is taken), without blocking.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WSTOPPED | libc::WNOHANG,
        )
    };
    // SAFETY: waitid filled `info` (or left it zeroed: si_pid 0).
    let (who, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    (r == 0 && who == pid && code == libc::CLD_STOPPED).then_some(status)
}

/// What the run says about worker `index` (pid `pid`) stopped by `sig`.
fn stopped_text(index: u32, pid: libc::pid_t, sig: i32) -> String {
    let why = match sig {
        libc::SIGTTIN => {
            "it read from the terminal, which only the spawner may (a password prompt?): give it its input another way, such as an option file or the environment"
        }
        libc::SIGTTOU => {
            "it changed the terminal's settings, which only the spawner may: give it its input another way, such as an option file or the environment"
        }
        _ => "SIGCONT resumes it",
    };
    format!(
        "worker {index} (pid {pid}) is stopped by {}; it keeps its slot while stopped: {why}",
        signal_name(sig)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_for_reading_the_terminal_says_what_to_do() {
        let text = stopped_text(3, 42, libc::SIGTTIN);
        assert!(
            text.starts_with("worker 3 (pid 42) is stopped by SIGTTIN; it keeps its slot")
                && text.contains("read from the terminal")
                && text.contains("environment"),
            "{text}"
        );
        let text = stopped_text(0, 7, libc::SIGSTOP);
        assert!(
            text.contains("SIGSTOP") && text.contains("SIGCONT resumes it"),
            "{text}"
        );
    }
}
