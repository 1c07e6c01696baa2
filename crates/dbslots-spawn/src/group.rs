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
