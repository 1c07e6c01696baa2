//! `dbslots exec`: run one command while holding a slot (the flags; the
//! work is `dbslots_spawn::exec`).

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use dbslots_spawn::exec::{ExecError, ExecOptions, OnLostLease};

use crate::common::{EXIT_TIMEOUT, PoolArgs};

/// Waits for a slot, runs CMD holding it, and releases it when CMD and
/// every process it started in its process group have ended.
///
/// The exit status is CMD's (128+N when CMD is killed by signal N; when
/// that signal was SIGINT, SIGTERM or SIGHUP sent to dbslots, or a Ctrl-C
/// while CMD had the terminal, dbslots ends by it too, as a shell
/// expects); 75 when no slot came in time; 126/127 when CMD cannot be
/// run. CMD sees DBSLOTS_SLOT and DBSLOTS_POOL.
///
/// CMD runs in a process group of its own. When CMD exits while processes
/// it started in the background still run, dbslots keeps the slot until
/// they have ended too, then exits with CMD's status. SIGINT, SIGTERM,
/// SIGHUP, SIGQUIT, SIGTSTP and SIGCONT sent to dbslots are passed on to
/// that group, except those it got from CMD's group itself; signals ignored
/// by the caller (nohup) stay ignored. CMD gets the terminal when it reads
/// from it; Ctrl-C, Ctrl-Z, fg and bg work as for any command. A script
/// without a `#!` line runs with /bin/sh.
///
/// On a file pool CMD and what it starts inherit the slot's lock, so the
/// slot stays held while any of them runs, even if dbslots itself is
/// killed. On a Redis pool the slot is a lease that dbslots renews; when it
/// is lost (dbslots was cut off from Redis, paused, or Redis lost it), CMD's
/// process group gets SIGTERM and, if anything of it is still running
/// --kill-after later, SIGKILL, both before the server can give the slot
/// to anyone else (like `consul lock`); `--on-lost-lease keep` lets it run
/// on instead. If dbslots itself is killed (SIGKILL too), CMD's process
/// group on a Redis pool is killed with it (SIGKILL).
#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pool: PoolArgs,

    /// Give up after this many seconds without a slot (exit status 75); 0
    /// still takes a free slot (also one whose holder crashed)
    /// [default: wait as long as it takes]
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    timeout: Option<Duration>,

    /// What to do with CMD's process group when the slot's lease is lost
    /// (Redis pools): stop it (SIGTERM, then SIGKILL after --kill-after),
    /// or keep it running without a slot
    #[arg(long, value_enum, default_value_t = LostLeaseArg::Stop, value_name = "WHAT")]
    on_lost_lease: LostLeaseArg,

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
enum LostLeaseArg {
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
    let mut options = ExecOptions::new()
        .notices(|text| crate::output::stderr_line(format_args!("dbslots: {text}")));
    match (pool.lease_margin(), args.on_lost_lease) {
        (Some(margin), LostLeaseArg::Stop) => {
            let grace = args.kill_after.unwrap_or(margin / 2);
            anyhow::ensure!(
                grace <= margin,
                "--kill-after {grace:?} is longer than the lease's safety margin {margin:?}: the command could still run when the slot goes to someone else; give at most {:.2} seconds, or raise lease_ms in the pool address",
                margin.as_secs_f64()
            );
            options = options.on_lost_lease(OnLostLease::Stop { grace });
        }
        (_, LostLeaseArg::Keep) => options = options.on_lost_lease(OnLostLease::Keep),
        (None, LostLeaseArg::Stop) => {}
    }
    let acquired = match args.timeout {
        Some(t) => pool.blocking_acquire_timeout(t),
        None => pool.blocking_acquire(),
    };
    let slot = match acquired {
        Ok(slot) => slot,
        Err(e @ dbslots_core::Error::Timeout { .. }) => {
            crate::output::stderr_line(format_args!("dbslots: {e}"));
            return Ok(ExitCode::from(EXIT_TIMEOUT));
        }
        Err(e) => return Err(e.into()),
    };
    tracing::debug!(pool = %pool.addr(), slot = slot.index(), "slot acquired; starting command");
    match dbslots_spawn::exec::run(slot, &args.command, &options) {
        Ok(ended) => {
            // Killed by Ctrl-C or a stop request: end the same way, so that
            // a shell sees it (a script's loop stops); else 128+N.
            ended.end_like_the_command();
            Ok(ExitCode::from(ended.exit_code()))
        }
        Err(e @ ExecError::CannotRun { .. }) => {
            crate::output::stderr_line(format_args!("dbslots: {e}"));
            Ok(ExitCode::from(e.exit_code()))
        }
        Err(e) => Err(anyhow::Error::new(e)),
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
