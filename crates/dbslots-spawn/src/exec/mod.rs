//! Running one command while holding a slot (`dbslots exec`).
//!
//! [`run`] starts a command that uses a slot this process holds, waits
//! until it and everything it started are done, and gives the slot back.
//!
//! # The command's processes
//!
//! The command runs in a process group of its own, and whatever it starts
//! stays in that group unless it leaves it on purpose (`setsid`: daemons).
//! **The slot is given back only once no process of the group is left**:
//! when the command exits while processes it started in the background
//! still run, [`run`] keeps the slot (and keeps passing signals on, and
//! watching the lease) until they have ended too, and then returns the
//! command's own status. This process makes itself the child subreaper
//! (`PR_SET_CHILD_SUBREAPER`, process-wide and permanent), so that those
//! processes become its children when their parent exits.
//!
//! - On a file pool the command inherits the slot's lock (a duplicate of
//!   its descriptor under a number of its own, kept across `exec`), and so
//!   does whatever it starts: the slot stays held while any of them runs,
//!   even if this process is killed (with SIGKILL too), and [`run`] gives
//!   the slot back without unlocking it under a process that still has the
//!   descriptor ([`Slot::release_unless_inherited`]), also one that left
//!   the group.
//! - On a Redis pool the slot is a lease that this process renews. When it
//!   is lost (this process was cut off from Redis or paused, or Redis lost
//!   it), the command's whole process group gets SIGTERM and, if anything
//!   of it is still there `grace` later, SIGKILL, both before the server
//!   can give the slot to anyone else ([`OnLostLease::Stop`], like `consul
//!   lock`); [`OnLostLease::Keep`] lets them run on without a slot. If
//!   this process dies, even by SIGKILL, the whole group is killed with it
//!   (SIGKILL, at once): the kernel kills the command itself
//!   (`PR_SET_PDEATHSIG`), and a small process forked for this, the
//!   *keeper*, the rest of its group (it notices the end of a pipe that
//!   only this process holds; the command registers its group with it
//!   before its program runs).
//!
//! A process that leaves the command's group (`setsid`) is not waited for
//! and not signalled; on a file pool it still holds the slot for as long
//! as it keeps the inherited descriptor open. If it exits while the
//! command's group lives, it is reaped (a thread polls for it,
//! `supervise::reap_strays`), so that it is no zombie of a long command.
//!
//! # Signals and the terminal
//!
//! SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP and SIGCONT sent to this
//! process are passed on to the command's group, except those it got from
//! the terminal while the command's group had it (the group got them
//! directly) or from a process of that group; signals ignored by the
//! caller (nohup) stay ignored. [`run`] installs handlers for them and
//! leaves them installed; it must not run twice at once in a process.
//!
//! The command's group gets the terminal when it needs it: a command that
//! reads from the terminal (or changes its modes) while this process's job
//! is in the foreground is moved to the foreground without noticing;
//! Ctrl-Z and `fg`/`bg` work as for any job, and the terminal goes back to
//! this process's group when the command exits. A command that never
//! touches the terminal leaves it to this process's group, so a Ctrl-C
//! there reaches the caller (a script's shell, a pipeline) as it did, and
//! is passed on.
//!
//! A script without a `#!` line runs with /bin/sh, as from a shell.

mod forward;
mod supervise;
mod terminal;

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dbslots_core::Slot;

use crate::group;
use crate::keeper::Keeper;

use self::supervise::Shared;
use self::terminal::Terminal;

/// The exit status of a Redis-pool command whose `dbslots` died while it
/// was being started: it never runs (nothing would stop it when the lease
/// is lost).
const EXIT_PARENT_GONE: libc::c_int = 126;

/// What happens to the command's process group when the slot's lease is
/// lost (Redis pools; a lock cannot be lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnLostLease {
    /// SIGTERM to the group, then SIGKILL `grace` later if anything of it
    /// is left. `grace` must not be longer than the lease's safety margin
    /// ([`Pool::lease_margin`](dbslots_core::Pool::lease_margin)), so that
    /// nothing runs on when the server can give the slot to someone else.
    Stop {
        /// Between SIGTERM and SIGKILL.
        grace: Duration,
    },
    /// Let the group run on without a slot.
    Keep,
}

/// Where [`ExecOptions::notices`] go.
type Notices = Arc<dyn Fn(&str) + Send + Sync>;

/// How [`run`] runs a command.
#[derive(Clone, Default)]
pub struct ExecOptions {
    on_lost_lease: Option<OnLostLease>,
    notices: Option<Notices>,
}

impl std::fmt::Debug for ExecOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecOptions")
            .field("on_lost_lease", &self.on_lost_lease)
            .field("notices", &self.notices.is_some())
            .finish()
    }
}

impl ExecOptions {
    /// The defaults: on a lost lease, stop the group with a grace of half
    /// the lease's safety margin; notices go to the log only.
    pub fn new() -> ExecOptions {
        ExecOptions::default()
    }

    /// What to do when the slot's lease is lost.
    pub fn on_lost_lease(mut self, what: OnLostLease) -> ExecOptions {
        self.on_lost_lease = Some(what);
        self
    }

    /// Where to tell a person what happens to the command (one sentence,
    /// such as that the lease was lost and the command is being stopped),
    /// from whichever thread notices it; [`tracing`] gets it too.
    pub fn notices(mut self, to: impl Fn(&str) + Send + Sync + 'static) -> ExecOptions {
        self.notices = Some(Arc::new(to));
        self
    }
}

/// Why [`run`] could not run the command, or lost track of it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// An option does not fit the slot, or the command is empty.
    #[error("invalid exec options: {problem}; {fix}")]
    InvalidOptions {
        /// What is wrong.
        problem: String,
        /// What to do about it.
        fix: String,
    },
    /// The command could not be started (the slot was released).
    #[error("cannot run {program}: {source}")]
    CannotRun {
        /// The program, as given.
        program: String,
        /// The OS error (`NotFound` when there is no such program).
        #[source]
        source: io::Error,
    },
    /// Something needed around the command could not be set up (nothing
    /// was started; the slot was released).
    #[error("cannot {what}: {source}; check the system's limits")]
    Setup {
        /// What could not be done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Waiting for the command failed after it started. The slot stays
    /// with it: a lock is kept by the command's inherited descriptor, and
    /// a lease-based command is killed when this process exits.
    #[error("after starting the command (pid {pid}): {source}; it keeps its slot until it exits")]
    Lost {
        /// The command's pid.
        pid: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another [`run`] is in progress in this process.
    #[error("another command runs under exec in this process; run one at a time")]
    Busy,
}

impl ExecError {
    /// The exit status a shell would give for this error: 127 for a
    /// program that does not exist, 126 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExecError::CannotRun { source, .. } if source.kind() == io::ErrorKind::NotFound => 127,
            _ => 126,
        }
    }
}

/// How the command ended, once its process group is empty and the slot
/// was given back.
#[derive(Debug)]
#[non_exhaustive]
pub struct Ended {
    /// The command's status (the process [`run`] started; not of what it
    /// left behind).
    pub status: ExitStatus,
    /// Whether the slot's lease was lost while the group ran.
    pub lease_lost: bool,
    /// Whether the command's group had the terminal when it exited.
    held_terminal: bool,
}

impl Ended {
    /// The command's exit status as a shell gives it: its code, or 128+N
    /// when it was killed by signal N.
    pub fn exit_code(&self) -> u8 {
        match (self.status.code(), self.status.signal()) {
            (Some(c), _) => c as u8,
            (None, Some(sig)) => (128 + sig) as u8,
            _ => 1,
        }
    }

    /// Ends this process by the signal that ended the command, when this
    /// process was meant to get it too: SIGINT, SIGTERM or SIGHUP that was
    /// sent to this process, or a SIGINT that came from the terminal while
    /// the command's group had it (then it is first sent to this process's
    /// group, as the terminal would have done). That is what a shell
    /// expects of a program whose child died of Ctrl-C (bash stops a loop
    /// only then). Returns otherwise.
    pub fn end_like_the_command(&self) {
        let Some(sig) = self.status.signal() else {
            return;
        };
        if sig == libc::SIGINT
            && self.held_terminal
            && !forward::received(sig)
            && !forward::ignored(sig).unwrap_or(true)
        {
            // SAFETY: kill(2) on this process's own group; our handler
            // notes it (it is not forwarded: the group is gone).
            unsafe { libc::kill(0, libc::SIGINT) };
        }
        forward::die_like_the_command(sig);
    }
}

/// Whether a [`run`] is in progress in this process.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Runs `command` (program and arguments) holding `slot`, waits until its
/// process group is empty, and gives the slot back; see the [module
/// documentation](self). The command sees `DBSLOTS_SLOT` and
/// `DBSLOTS_POOL`.
///
/// Blocks the calling thread; call it from the main thread of a program
/// (signals are passed on from there), never from two threads at once.
///
/// # Errors
///
/// [`ExecError::CannotRun`] (exit status 126 or 127, see
/// [`ExecError::exit_code`]), [`ExecError::InvalidOptions`],
/// [`ExecError::Setup`], [`ExecError::Busy`]: nothing ran, and the slot
/// was released. [`ExecError::Lost`]: the command runs on with its slot.
pub fn run(slot: Slot, command: &[OsString], options: &ExecOptions) -> Result<Ended, ExecError> {
    if RUNNING.swap(true, Ordering::SeqCst) {
        return Err(ExecError::Busy);
    }
    struct NotRunning;
    impl Drop for NotRunning {
        fn drop(&mut self) {
            RUNNING.store(false, Ordering::SeqCst);
        }
    }
    let _not_running = NotRunning;
    let Some((program, args)) = command.split_first() else {
        return Err(ExecError::InvalidOptions {
            problem: "the command is empty".into(),
            fix: "give the program and its arguments".into(),
        });
    };
    let grace = stop_grace(&slot, options)?;
    let notice = |text: &str| {
        tracing::warn!("{text}");
        if let Some(n) = &options.notices {
            n(text);
        }
    };

    // From the moment the command may exist, the signals we forward are
    // caught (a signal that comes before its group is known is passed on
    // once it is).
    forward::catch_forwarded_signals().map_err(|source| ExecError::Setup {
        what: "catch the signals to pass on to the command",
        source,
    })?;
    group::become_subreaper();
    let terminal = Terminal::open();
    // A lease dies with this process: the keeper kills the command's
    // group then (room for two registrations: the script fallback).
    let keeper = match grace {
        Some(_) => Some(Keeper::start(2).map_err(|source| ExecError::Setup {
            what: "start the process that stops the command if this process dies",
            source,
        })?),
        None => None,
    };

    // The slot goes to the command as a duplicate of its locked descriptor
    // (kept across exec, under its own number: the command keeps its
    // stdin), with DBSLOTS_SLOT and DBSLOTS_POOL.
    let lock = slot.lock_fd_for_child().map_err(|e| ExecError::Setup {
        what: "pass the slot's lock to the command",
        source: io::Error::other(e.to_string()),
    })?;
    if let Some(fd) = &lock {
        // Inheritable from here on: no other thread of this process starts
        // programs, and the duplicate is closed right after the spawn.
        clear_close_on_exec(fd).map_err(|source| ExecError::Setup {
            what: "pass the slot's lock to the command",
            source,
        })?;
    }
    // SAFETY: getpid cannot fail.
    let parent = unsafe { libc::getpid() };
    let spawn = |program: &OsStr, args: &[OsString]| {
        let mut cmd = Command::new(program);
        cmd.args(args).envs(slot.child_env()).process_group(0);
        let registration = keeper.as_ref().map(Keeper::registration);
        if grace.is_some() {
            // SAFETY: prctl, getppid, _exit, and getpgrp and write (the
            // registration) are async-signal-safe; nothing is allocated.
            unsafe {
                cmd.pre_exec(move || {
                    // A lease dies with this process: so must the command.
                    // (A lock needs no hook: it is the command's own;
                    // leaving `pre_exec` out keeps std's posix_spawn path.)
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    // Killed before the death signal was armed.
                    if libc::getppid() != parent {
                        libc::_exit(EXIT_PARENT_GONE);
                    }
                    // And so must everything it starts: its group is the
                    // keeper's before its program runs.
                    if let Some(r) = &registration {
                        r.send()?;
                    }
                    Ok(())
                });
            }
        }
        let spawned = cmd.spawn();
        if let (Err(_), Some(k), Some(r)) = (&spawned, &keeper, registration) {
            k.failed(r);
        }
        spawned
    };
    let mut spawned = spawn(program, args);
    if let Err(e) = &spawned
        && e.raw_os_error() == Some(libc::ENOEXEC)
        && let Some(script) = crate::script::without_interpreter(program)
    {
        // A script without a `#!` line: run it with /bin/sh, as a shell
        // and execvp do (posix_spawnp does not).
        let mut sh_args = vec![script.into_os_string()];
        sh_args.extend_from_slice(args);
        spawned = spawn(OsStr::new("/bin/sh"), &sh_args);
    }
    let child = spawned.map_err(|source| ExecError::CannotRun {
        program: program.to_string_lossy().into_owned(),
        source,
    })?;
    let pid = child.id();
    // Reaped by `wait_for_group`, not by std.
    drop(child);
    let pgid = pid as libc::pid_t;
    forward::publish_group(pgid);
    slot.set_holder_pid(pid);
    // The child has its copy; this process holds the slot through the guard.
    drop(lock);
    tracing::debug!(pid, "command started in its own process group");

    // From here on the command runs holding the slot through the descriptor
    // it inherited. Whatever fails in dbslots now, the slot must stay with
    // the command: never unlock it before the group is empty.
    let shared = Shared::default();
    let waited = std::thread::scope(|scope| {
        if let Some(grace) = grace {
            let (slot, shared, notice) = (&slot, &shared, &notice);
            std::thread::Builder::new()
                .name("lease-watch".into())
                .spawn_scoped(scope, move || {
                    forward::block_in_this_thread();
                    supervise::stop_on_lost_lease(slot, pgid, grace, shared, notice)
                })?;
        }
        // Not needed for the slot: without it, processes that left the
        // group stay zombies until this process exits.
        let strays = &shared;
        if let Err(e) = std::thread::Builder::new()
            .name("reap-strays".into())
            .spawn_scoped(scope, move || {
                forward::block_in_this_thread();
                supervise::reap_strays(strays);
            })
        {
            tracing::debug!(error = %e, "cannot start the thread that reaps processes that left the command's group");
        }
        let waited = supervise::wait_for_group(pgid, terminal.as_ref(), &shared);
        // Ends the watcher also when waiting failed.
        shared.finish();
        waited
    });
    let waited = match waited {
        Ok(w) => w,
        Err(source) => {
            // The command may still run: leave the slot with it (a lock is
            // kept by the command's inherited descriptor after we exit;
            // releasing it now would free it for every copy), and the
            // keeper armed (a lease ends with this process, and so must
            // the command's group).
            std::mem::forget(slot);
            std::mem::forget(keeper);
            return Err(ExecError::Lost { pid, source });
        }
    };
    // The group is empty: nothing is left for the keeper to stop.
    if let Some(k) = &keeper {
        k.stand_down();
    }
    slot.release_unless_inherited();
    Ok(Ended {
        status: waited.status,
        lease_lost: shared.lease_lost(),
        held_terminal: waited.held_terminal,
    })
}

/// The grace between SIGTERM and SIGKILL when the lease is lost; `None`
/// when the slot cannot be lost (a lock) or the command keeps running.
fn stop_grace(slot: &Slot, options: &ExecOptions) -> Result<Option<Duration>, ExecError> {
    let Some(margin) = slot.pool().lease_margin() else {
        return Ok(None);
    };
    match options.on_lost_lease {
        Some(OnLostLease::Keep) => Ok(None),
        None => Ok(Some(margin / 2)),
        Some(OnLostLease::Stop { grace }) if grace <= margin => Ok(Some(grace)),
        Some(OnLostLease::Stop { grace }) => Err(ExecError::InvalidOptions {
            problem: format!(
                "the grace {grace:?} is longer than the lease's safety margin {margin:?}: the command could still run when the slot goes to someone else"
            ),
            fix: format!(
                "give OnLostLease::Stop a grace of at most {:.2} seconds, or raise lease_ms in the pool address",
                margin.as_secs_f64()
            ),
        }),
    }
}

/// Clears close-on-exec on `fd`, so that the command inherits it.
fn clear_close_on_exec(fd: &std::os::fd::OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
