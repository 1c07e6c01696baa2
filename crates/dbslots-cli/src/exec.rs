//! `dbslots exec`: run one command while holding a slot.

use std::ffi::OsString;
use std::io;
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::Args;

use crate::common::{EXIT_TIMEOUT, PoolArgs};

/// Waits for a slot, runs CMD holding it, and releases it when CMD ends.
///
/// The exit status is CMD's (128+N when CMD is killed by signal N); 75 when
/// no slot came in time; 126/127 when CMD cannot be run. CMD inherits the
/// slot's lock, so the slot stays held while CMD runs even if `dbslots`
/// itself is killed. CMD sees DBSLOTS_SLOT and DBSLOTS_POOL.
#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pool: PoolArgs,

    /// Give up after this many seconds without a slot (exit status 75); 0
    /// still takes a free slot (also one whose holder crashed)
    /// [default: wait as long as it takes]
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    timeout: Option<Duration>,

    /// The command and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<OsString>,
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

const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local value.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Runs `dbslots exec`.
pub fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let pool = args.pool.open()?;
    let acquired = match args.timeout {
        Some(t) => pool.acquire_timeout(t),
        None => pool.acquire(),
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

    // Block the signals we forward before the child exists (so no thread
    // of ours takes them), and unblock them again in the child.
    let set = signal_set();
    // SAFETY: changes this thread's mask; `set` is initialised.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    let program = &args.command[0];
    let mut cmd = Command::new(program);
    cmd.args(&args.command[1..]);
    slot.share_with_child(&mut cmd)?;
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: pthread_sigmask is async-signal-safe; `set` is a copy.
        unsafe {
            cmd.pre_exec(move || {
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
    }
    let mut child = match cmd.spawn() {
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
    slot.set_holder_pid(pid);

    // From here on the command runs holding the slot through the descriptor
    // it inherited. Whatever fails in dbslots now, the slot must stay with
    // the command: never unlock it (that would free it for every copy of
    // the descriptor) before the command has exited.
    let started = std::thread::Builder::new()
        .name("signal-forwarder".into())
        .spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is initialised; sigwait writes `sig`.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    return;
                }
                tracing::debug!(signal = sig, pid, "forwarding signal to command");
                // SAFETY: plain kill on the child's pid (not yet reaped:
                // the main thread reaps it, after which we exit).
                unsafe { libc::kill(pid as libc::pid_t, sig) };
            }
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, pid, "cannot start the signal forwarder; signals sent to dbslots are not passed on to the command");
    }

    let status = match child.wait() {
        Ok(status) => status,
        Err(e) => {
            // The command may still run: leave the slot with it (our copy
            // of the descriptor closes when we exit; the command's stays).
            std::mem::forget(slot);
            return Err(anyhow::Error::new(e).context(format!(
                "waiting for the command (pid {pid}); it keeps its slot until it exits"
            )));
        }
    };
    drop(slot);
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => (128 + sig) as u8,
        _ => 1,
    };
    Ok(ExitCode::from(code))
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
