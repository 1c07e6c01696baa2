//! Waiting for the command's process group to be empty, with the terminal
//! and the lease watched meanwhile.
//!
//! # Implementation Details
//!
//! While the command runs, this process blocks until it stops (handled
//! as a job stop, `terminal.rs`) or exits. Then the group is looked at
//! (`kill(-pgid, 0)`); if members are left, they are polled for (10 ms,
//! doubling up to 200 ms): this process is the child subreaper
//! (`group.rs`), so members whose parent exited are its children, and
//! their exits and stops are collected with `waitid(P_PGID, WNOHANG)`.
//! Polling rather than a blocking `waitid(P_PGID)`: a member that leaves
//! the group (`setsid`) wakes no waiter, and one that is not our child is
//! not waited for at all. Only commands that leave processes behind pay
//! for it.
//!
//! The group id stays reserved until it is found empty: while a member
//! lives or is our unreaped zombie, no process can get that id. Reaping
//! and the look at the group happen with the lease watcher's lock held and
//! the forwarded signals blocked, so neither the watcher nor a signal
//! handler sends to the group after it was found empty.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dbslots_core::Slot;

use super::forward;
use super::terminal::Terminal;

/// How soon the group is looked at again when members that are not our
/// children are left; doubles up to [`POLL_MAX`].
const POLL_FIRST: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(200);

/// How often the lease watcher looks (locally) whether the lease is lost,
/// and sends SIGKILL again while members are left after it. Well below
/// half the safety margin of a short lease (333 ms for a 1 s lease).
const LEASE_STEP: Duration = Duration::from_millis(50);

/// How often processes that left the command's group (`setsid`) and
/// exited are reaped while the command's group lives.
const STRAY_STEP: Duration = Duration::from_millis(200);

/// What the main thread and the lease watcher share.
#[derive(Default)]
pub(super) struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// The group is empty (or no longer watched): nothing may be sent to
    /// it any more.
    gone: bool,
    lease_lost: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the watch (the group is empty, or waiting failed).
    pub(super) fn finish(&self) {
        self.lock().gone = true;
        self.changed.notify_all();
    }

    pub(super) fn lease_lost(&self) -> bool {
        self.lock().lease_lost
    }
}

/// How the command ended.
pub(super) struct Waited {
    /// The command's (the group leader's) status.
    pub(super) status: ExitStatus,
    /// Whether its group had the terminal when it exited.
    pub(super) held_terminal: bool,
}

/// Waits until the group of the command `pid` (its leader) is empty;
/// handles job stops on `terminal`.
pub(super) fn wait_for_group(
    pid: libc::pid_t,
    terminal: Option<&Terminal>,
    shared: &Shared,
) -> io::Result<Waited> {
    let pgid = pid;
    // While the command runs: block until it changes state.
    let waited = loop {
        let info = match wait_id(libc::P_PID, pid, libc::WNOWAIT) {
            Ok(Some(info)) => info,
            Ok(None) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // SAFETY: filled in by a successful waitid for a child.
        let status = unsafe { info.si_status() };
        if info.si_code == libc::CLD_STOPPED {
            // Consume the stop report (WNOWAIT kept it), and only that:
            // had the command been continued and exited since, an exit
            // collected here would be lost to the wait above.
            consume_stop(pid);
            if let Some(t) = terminal {
                t.stopped(pgid, status);
            }
            continue;
        }
        let (waited, gone) = forward::with_forwarding_blocked(|| {
            let st = shared.lock();
            let mut raw = 0;
            // SAFETY: reaps the command, which waitid reported exited.
            unsafe { libc::waitpid(pid, &mut raw, 0) };
            let status = ExitStatus::from_raw(raw);
            let held_terminal = terminal.is_some_and(|t| t.take_back(pgid));
            let gone = !group_alive(pgid);
            if gone {
                mark_gone(st, shared);
            } else {
                // A Ctrl-C that went to the command's group only is a
                // request to stop as much as one to us.
                let interrupted = held_terminal && status.signal() == Some(libc::SIGINT);
                forward::command_exited(pgid, interrupted);
            }
            let waited = Waited {
                status,
                held_terminal,
            };
            (waited, gone)
        });
        if gone {
            return Ok(waited);
        }
        break waited;
    };
    tracing::debug!(
        pgid,
        "the command exited but processes of its group still run; keeping the slot until they end"
    );
    // What it left: by polling. A member may leave the group (`setsid`)
    // at any time, which wakes no waiter, so a blocking wait for the
    // group could sleep on after the group is empty.
    let mut pause = POLL_FIRST;
    loop {
        if reap_and_look(pgid, terminal, shared) {
            return Ok(waited);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// `waitid(which, id)` for exits and stops, with `flags` added; `None`
/// when nothing changed (with `WNOHANG`).
fn wait_id(
    which: libc::idtype_t,
    id: libc::pid_t,
    flags: libc::c_int,
) -> io::Result<Option<libc::siginfo_t>> {
    // SAFETY: waitid writes into a zeroed local siginfo_t.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        if libc::waitid(
            which,
            id as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WSTOPPED | flags,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok((info.si_pid() != 0).then_some(info))
    }
}

/// Consumes `pid`'s pending stop report, if it still has one; never an
/// exit.
fn consume_stop(pid: libc::pid_t) {
    // SAFETY: waitid writes into a zeroed local siginfo_t.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let _ = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WSTOPPED | libc::WNOHANG,
        );
    }
}

/// Reaps the group's members that are our children and exited, handles
/// those that stopped, then looks whether the group is empty (and if so,
/// says so to everyone); true if it is. The command is already reaped.
fn reap_and_look(pgid: libc::pid_t, terminal: Option<&Terminal>, shared: &Shared) -> bool {
    /// What one look found.
    enum Found {
        Reaped,
        Stopped(libc::c_int),
        Running,
        Gone,
    }
    loop {
        let found = forward::with_forwarding_blocked(|| {
            let st = shared.lock();
            match wait_id(libc::P_PGID, pgid, libc::WNOHANG) {
                // SAFETY: filled in by a successful waitid.
                Ok(Some(info)) if info.si_code == libc::CLD_STOPPED => {
                    Found::Stopped(unsafe { info.si_status() })
                }
                Ok(Some(_)) => Found::Reaped,
                // None of ours left to report: is anything left at all?
                _ if group_alive(pgid) => Found::Running,
                _ => {
                    // A leftover that read the terminal was given it: the
                    // terminal goes back to this process's group, as when
                    // the command exits with it.
                    if let Some(t) = terminal {
                        t.take_back(pgid);
                    }
                    mark_gone(st, shared);
                    Found::Gone
                }
            }
        });
        match found {
            Found::Reaped => {}
            Found::Stopped(sig) => {
                if let Some(t) = terminal {
                    t.stopped(pgid, sig);
                }
            }
            Found::Running => return false,
            Found::Gone => return true,
        }
    }
}

fn mark_gone(mut st: MutexGuard<'_, State>, shared: &Shared) {
    forward::group_gone();
    st.gone = true;
    drop(st);
    shared.changed.notify_all();
}

/// Whether any process of group `pgid` exists.
fn group_alive(pgid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the group exists.
    if unsafe { libc::kill(-pgid, 0) } == 0 {
        return true;
    }
    // EPERM: a member runs as another user (a setuid program); it is there.
    io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Until the group is empty, reaps every [`STRAY_STEP`] the processes
/// that left it with `setsid`, became our children (we are the subreaper)
/// and exited: the main thread waits for the command and its group only,
/// so they would stay zombies while the command runs. Safe beside the
/// main thread's waits (`group::reap_strays` takes no child of our
/// session). Run in a thread of its own.
pub(super) fn reap_strays(shared: &Shared) {
    let mut st = shared.lock();
    while !st.gone {
        drop(st);
        crate::group::reap_strays();
        st = shared.lock();
        if st.gone {
            break;
        }
        st = shared
            .changed
            .wait_timeout(st, STRAY_STEP)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// Watches `slot`'s lease until the group is gone; when it is lost, tells
/// `notice`, sends the group SIGTERM and, `grace` later, SIGKILL (again
/// while anything of it is left). Run in a thread of its own.
pub(super) fn stop_on_lost_lease(
    slot: &Slot,
    pgid: libc::pid_t,
    grace: Duration,
    shared: &Shared,
    notice: &(dyn Fn(&str) + Send + Sync),
) {
    // Looks (locally) every step, and waits on our own condition variable
    // in between, so that the end of the group ends the watch at once.
    let mut st = shared.lock();
    loop {
        if st.gone {
            return;
        }
        if slot.wait_lost(Duration::ZERO) {
            break;
        }
        st = shared
            .changed
            .wait_timeout(st, LEASE_STEP)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    drop(st);
    let reason = slot
        .check()
        .err()
        .map_or_else(String::new, |e| format!(": {e}"));
    {
        let mut st = shared.lock();
        if st.gone {
            return;
        }
        st.lease_lost = true;
    }
    notice(&format!(
        "the slot's lease was lost{reason}; stopping the command and its process group (SIGTERM, then SIGKILL in {grace:?})"
    ));
    let mut st = shared.lock();
    if st.gone {
        return;
    }
    // SAFETY: the group is not gone (we hold the lock): its id is reserved.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    // A century stands for a grace past what an Instant holds.
    let deadline = Instant::now() + grace.min(Duration::from_secs(100 * 365 * 86_400));
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        st = shared
            .changed
            .wait_timeout(st, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        if st.gone {
            return;
        }
    }
    tracing::warn!(
        pgid,
        "the command's group is still there after SIGTERM; sending SIGKILL"
    );
    while !st.gone {
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        st = shared
            .changed
            .wait_timeout(st, LEASE_STEP)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}
