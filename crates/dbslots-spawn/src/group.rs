//! A worker's process group: signalling it, and knowing when it is empty.
//!
//! # Implementation Details
//!
//! Every worker is the leader of a process group of its own (`setpgid(0,
//! 0)` at its start), and whatever it starts stays in that group unless it
//! leaves it on purpose (`setsid`, `setpgid`: daemons). A worker's slot
//! must outlive every process that may use it, so after the leader is
//! reaped the supervisor keeps the slot until no process of the group is
//! left ([`alive`]).
//!
//! Group ids are numbers like pids, so a stale one could name somebody
//! else's group. Linux does not hand out a pid that is still in use as a
//! group id, and the spawner makes itself the *child subreaper*
//! ([`become_subreaper`]): a group member whose parent exits is re-parented
//! to the spawner, not to init, so its zombie keeps the group id reserved
//! until the spawner reaps it. The spawner reaps only members of a group
//! whose leader it has already reaped (`waitpid(-pgid)`), so it never takes
//! an exit status from under tokio, which waits for the leaders by pid.
//!
//! Being the subreaper also makes the spawner the parent of the orphans
//! that left a worker's group (daemons: `setsid`). Nobody waits for those
//! by group, so [`reap_strays`] reaps them by pid, one at a time, once
//! they are zombies, and only those in another session than the spawner's
//! (see there why that takes nobody's status); otherwise every daemon a
//! worker starts would stay a zombie (a pid) until the spawner exits.

use std::io;

/// Makes this process the reaper of its orphaned descendants (Linux
/// `PR_SET_CHILD_SUBREAPER`). Process-wide and permanent; harmless when it
/// fails (group ids are then reserved only by running members).
pub(crate) fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "cannot become the subreaper of the workers' children");
    }
}

/// Sends `sig` to every process of group `pgid`; false when the group is
/// empty.
pub(crate) fn signal(pgid: libc::pid_t, sig: libc::c_int) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: plain kill(2) on a process group; see the module doc for why
    // the group id cannot name another group.
    unsafe { libc::kill(-pgid, sig) == 0 }
}

/// Whether any process of group `pgid` is left, after reaping those that
/// are zombies re-parented to this process. Call only after the group's
/// leader was reaped.
pub(crate) fn alive(pgid: libc::pid_t) -> bool {
    if pgid <= 1 {
        return false;
    }
    let mut status = 0;
    // SAFETY: waitpid on the group's members; the leader is already
    // reaped, so this reaps no process tokio waits for.
    while unsafe { libc::waitpid(-pgid, &mut status, libc::WNOHANG) } > 0 {}
    // SAFETY: signal 0 only checks that the group exists.
    if unsafe { libc::kill(-pgid, 0) } == 0 {
        return true;
    }
    // EPERM: a member runs as another user (a setuid program); it is there.
    io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Reaps this process's children that exited and left this process's
/// session (`setsid`: daemons a worker started, re-parented here). Only
/// those: a worker leads a group of this session (it cannot `setsid`
/// without leaving its group, which a group leader cannot), as do the
/// members of its group and the keeper, so no status anyone waits for by
/// pid or by group is taken, nor, in an embedding program, that of another
/// spawner's workers or of the program's own children (unless it starts
/// them in a session of their own). A process that left a worker's group
/// with `setpgid` alone is not reaped until the spawner exits. Reads
/// `/proc/self/task/*/children` (Linux 4.2 or later); does nothing
/// without it.
pub(crate) fn reap_strays() {
    // Our session as /proc shows it, not getsid(0): when the session's
    // leader lives outside our pid namespace (a CI runner or `nsenter`
    // entering a container), getsid(0) gives 0 while a daemon's session,
    // led by the daemon itself, is a real number. Read from the same /proc,
    // both are numbered alike.
    let Some((_, ours)) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(state_and_session)
    else {
        return;
    };
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<libc::pid_t>().ok())
        {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            if state_and_session(&stat)
                .is_none_or(|(state, session)| state != "Z" || session == ours)
            {
                continue;
            }
            let mut status = 0;
            // SAFETY: waitpid on one exited child that left our session
            // (see above), without blocking.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                tracing::debug!(pid, "reaped a process that had left a worker's session");
            }
        }
    }
}

/// The state ("Z" for a zombie) and the session id in a `/proc/PID/stat`
/// line: "pid (comm) state ppid pgrp session ...", where comm may hold
/// anything, spaces and parentheses too.
fn state_and_session(stat: &str) -> Option<(&str, libc::pid_t)> {
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?;
    let session = fields.nth(2)?.parse().ok()?;
    Some((state, session))
}

#[cfg(test)]
mod tests {
    use super::state_and_session;

    #[test]
    fn the_session_is_read_past_a_command_name_that_looks_like_fields() {
        let stat = "4242 (a) Z 1 2 3 (b) S 10 20 30 0 -1 4194560 110 0 0 0";
        assert_eq!(state_and_session(stat), Some(("S", 30)));
        assert_eq!(state_and_session("7 (sh) Z 1 7 7 0 -1"), Some(("Z", 7)));
        // An invisible session leader (another pid namespace) reads as 0.
        assert_eq!(state_and_session("9 (x) R 0 0 0 0"), Some(("R", 0)));
        assert_eq!(state_and_session("9 (x) R 0"), None);
        assert_eq!(state_and_session(""), None);
    }
}
