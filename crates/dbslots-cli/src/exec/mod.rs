//! `dbslots exec`: run one command while holding a slot.

use std::ffi::{OsStr, OsString};
use std::io;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::common::{EXIT_TIMEOUT, PoolArgs};

mod forward;

/// The exit status of a Redis-pool command whose `dbslots` died while it
/// was being started: it never runs (nothing would stop it when the lease
/// is lost).
const EXIT_PARENT_GONE: libc::c_int = 126;

/// Waits for a slot, runs CMD holding it, and releases it when CMD ends.
///
/// The exit status is CMD's (128+N when CMD is killed by signal N; when
/// that signal was SIGINT, SIGTERM or SIGHUP sent to dbslots, dbslots ends
/// by it too, as a shell expects); 75 when no slot came in time; 126/127
/// when CMD cannot be run. CMD sees DBSLOTS_SLOT and DBSLOTS_POOL.
///
/// SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to dbslots are passed on to
/// CMD, except those it got from the terminal (CMD got them too) or from
/// CMD itself; signals ignored by the caller (nohup) stay ignored. A
/// script without a `#!` line runs with /bin/sh.
///
/// On a file pool CMD inherits the slot's lock, so the slot stays held
/// while CMD runs even if `dbslots` itself is killed. On a Redis pool the
/// slot is a lease that `dbslots` renews; when it is lost (`dbslots` was
/// cut off from Redis, paused, or Redis lost it), CMD gets SIGTERM and,
/// if still running --kill-after later, SIGKILL, both before the server
/// can give the slot to anyone else (like `consul lock`);
/// `--on-lost-lease keep` lets CMD run on instead. If `dbslots` itself is
/// killed, CMD on a Redis pool is killed with it (SIGKILL).
#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pool: PoolArgs,

    /// Give up after this many seconds without a slot (exit status 75); 0
    /// still takes a free slot (also one whose holder crashed)
    /// [default: wait as long as it takes]
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    timeout: Option<Duration>,

    /// What to do with CMD when the slot's lease is lost (Redis pools):
    /// stop it (SIGTERM, then SIGKILL after --kill-after), or keep it
    /// running without a slot
    #[arg(long, value_enum, default_value_t = OnLostLease::Stop, value_name = "WHAT")]
    on_lost_lease: OnLostLease,

    /// Seconds between SIGTERM and SIGKILL when the lease is lost
    /// [default: half the lease's safety margin, which is a third of the
    /// lease: 1.67 s for the default 10 s lease; at most the margin]
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    kill_after: Option<Duration>,

    /// The command and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<OsString>,
}

/// What `dbslots exec` does with its command when the slot's lease is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnLostLease {
    /// SIGTERM, then SIGKILL after --kill-after
    Stop,
    /// Let the command run on without a slot
    Keep,
}

/// Parses a non-negative number of seconds (fractions allowed).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s:?} must be a non-negative number of seconds"));
    }
    // Longer than a Duration holds (about 585 billion years): as good as
    // no limit, which is what Duration::MAX means to the pool.
    Ok(Duration::try_from_secs_f64(v).unwrap_or(Duration::MAX))
}

/// Runs `dbslots exec`.
pub fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let pool = args.pool.open()?;
    // The grace between SIGTERM and SIGKILL when a lease is lost; `None`
    // when the slot cannot be lost (a lock) or the command keeps running.
    let stop_grace = match (pool.lease_margin(), args.on_lost_lease) {
        (Some(margin), OnLostLease::Stop) => {
            let grace = args.kill_after.unwrap_or(margin / 2);
            anyhow::ensure!(
                grace <= margin,
                "--kill-after {grace:?} is longer than the lease's safety margin {margin:?}: the command could still run when the slot goes to someone else; give at most {:.2} seconds, or raise lease_ms in the pool address",
                margin.as_secs_f64()
            );
            Some(grace)
        }
        _ => None,
    };
    let acquired = match args.timeout {
        Some(t) => pool.blocking_acquire_timeout(t),
        None => pool.blocking_acquire(),
    };
    let slot = match acquired {
        Ok(slot) => slot,
        Err(e @ dbslots_core::Error::Timeout { .. }) => {
            eprintln!("dbslots: {e}");
            return Ok(ExitCode::from(EXIT_TIMEOUT));
        }
        Err(e) => return Err(e.into()),
    };
    tracing::debug!(pool = %pool.addr(), slot = slot.index(), "slot acquired; starting command");

    // From the moment the command may exist, the signals we forward are
    // caught (a signal that comes before its pid is known is passed on
    // once it is).
    forward::catch_forwarded_signals()
        .context("cannot catch the signals to forward to the command")?;

    // The slot goes to the command as a duplicate of its locked descriptor
    // (kept across exec, under its own number: the command keeps its
    // stdin), with DBSLOTS_SLOT and DBSLOTS_POOL.
    let lock = slot.lock_fd_for_child()?;
    if let Some(fd) = &lock {
        // Inheritable from here on: no other thread of this process starts
        // programs, and the duplicate is closed right after the spawn.
        clear_close_on_exec(fd).context("cannot pass the slot's lock to the command")?;
    }
    let parent = std::process::id();
    let command = |program: &OsStr, args: &[OsString]| {
        let mut cmd = Command::new(program);
        cmd.args(args).envs(slot.child_env());
        if stop_grace.is_some() {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl, getppid and _exit are async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    // A lease dies with this process: so must the command.
                    // (A lock needs no hook: it is the command's own;
                    // leaving `pre_exec` out keeps std's posix_spawn path.)
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    // Killed before the death signal was armed.
                    if libc::getppid() as u32 != parent {
                        libc::_exit(EXIT_PARENT_GONE);
                    }
                    Ok(())
                });
            }
        }
        cmd
    };
    let program = args.command[0].as_os_str();
    let mut spawned = command(program, &args.command[1..]).spawn();
    if let Err(e) = &spawned
        && e.raw_os_error() == Some(libc::ENOEXEC)
        && let Some(script) = dbslots_spawn::script::without_interpreter(program)
    {
        // A script without a `#!` line: run it with /bin/sh, as a shell
        // and execvp do (posix_spawnp does not).
        let mut sh_args = vec![script.into_os_string()];
        sh_args.extend_from_slice(&args.command[1..]);
        spawned = command(OsStr::new("/bin/sh"), &sh_args).spawn();
    }
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                io::ErrorKind::NotFound => 127,
                _ => 126,
            };
            eprintln!("dbslots: cannot run {}: {e}", program.to_string_lossy());
            return Ok(ExitCode::from(code));
        }
    };
    let pid = child.id();
    forward::publish_command_pid(pid);
    slot.set_holder_pid(pid);
    // The child has its copy; this process holds the slot through the guard.
    drop(lock);

    // From here on the command runs holding the slot through the descriptor
    // it inherited. Whatever fails in dbslots now, the slot must stay with
    // the command: never unlock it (that would free it for every copy of
    // the descriptor) before the command has exited.
    let exited = ExitFlag::default();
    let waited = std::thread::scope(|scope| {
        if let Some(grace) = stop_grace {
            let (slot, exited) = (&slot, &exited);
            std::thread::Builder::new()
                .name("lease-watch".into())
                .spawn_scoped(scope, move || {
                    forward::block_in_this_thread();
                    stop_on_lost_lease(slot, pid, grace, exited)
                })
                .context("cannot start the lease watcher")?;
        }
        // Wait for the exit without reaping, so the watcher never signals
        // a recycled pid; then reap.
        wait_exited(pid);
        forward::command_exited();
        exited.set();
        child.wait().context("waiting for the command")
    });
    let status = match waited {
        Ok(status) => status,
        Err(e) => {
            // The command may still run: leave the slot with it (a lock is
            // kept by the command's inherited descriptor after we exit;
            // releasing it now would free it for every copy).
            std::mem::forget(slot);
            return Err(e.context(format!(
                "after starting the command (pid {pid}); it keeps its slot until it exits"
            )));
        }
    };
    drop(slot);
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => {
            // Killed by Ctrl-C or a stop request: end the same way, so that
            // a shell sees it (a script's loop stops); else 128+N.
            forward::die_like_the_command(sig);
            (128 + sig) as u8
        }
        _ => 1,
    };
    Ok(ExitCode::from(code))
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

/// Set once the command has exited (before it is reaped).
#[derive(Default)]
struct ExitFlag {
    exited: std::sync::Mutex<bool>,
    changed: std::sync::Condvar,
}

impl ExitFlag {
    fn set(&self) {
        *self.exited.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.changed.notify_all();
    }
}

/// Blocks until `pid` has exited, leaving it to be reaped.
fn wait_exited(pid: u32) {
    loop {
        // SAFETY: waitid writes into a zeroed local siginfo_t.
        let r = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Watches the slot's lease; when it is lost, sends the command SIGTERM,
/// and SIGKILL `grace` later if it is still running. Signals are sent only
/// while the command is not reaped, so never to a recycled pid.
fn stop_on_lost_lease(slot: &dbslots_core::Slot, pid: u32, grace: Duration, exited: &ExitFlag) {
    let step = Duration::from_millis(200);
    loop {
        if *exited.exited.lock().unwrap_or_else(|p| p.into_inner()) {
            return;
        }
        if slot.wait_lost(step) {
            break;
        }
    }
    let reason = slot
        .check()
        .err()
        .map_or_else(String::new, |e| format!(": {e}"));
    let mut done = exited.exited.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return;
    }
    eprintln!(
        "dbslots: the slot's lease was lost{reason}; stopping the command (SIGTERM, then SIGKILL in {grace:?})"
    );
    // SAFETY: kill on a pid that is not reaped (we hold the flag's lock).
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    // A century stands for a grace past what an Instant holds.
    let deadline = std::time::Instant::now() + grace.min(Duration::from_secs(100 * 365 * 86_400));
    while !*done {
        let now = std::time::Instant::now();
        if now >= deadline {
            tracing::warn!(pid, "the command ignored SIGTERM; sending SIGKILL");
            // SAFETY: as above.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            return;
        }
        done = exited
            .changed
            .wait_timeout(done, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests {
    use super::parse_seconds;
    use std::time::Duration;

    #[test]
    fn seconds_accept_fractions_and_reject_nonsense() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
        assert!(parse_seconds("inf").is_err());
        // Huge but finite: accepted (a deadline too far to represent means
        // no deadline), never a panic.
        assert!(parse_seconds("1e19").is_ok());
        assert_eq!(parse_seconds("1e30"), Ok(Duration::MAX));
    }
}
