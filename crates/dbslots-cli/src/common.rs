//! Pieces every subcommand shares: the pool flags, logging, exit codes.

use anyhow::Context;
use clap::Args;
use dbslots_core::{Pool, PoolAddr, PoolOptions};

/// Exit status when no slot came in time (sysexits EX_TEMPFAIL).
pub const EXIT_TIMEOUT: u8 = 75;

/// `--pool` and `--capacity`, shared by every command that uses a pool.
#[derive(Debug, Clone, Args)]
pub struct PoolArgs {
    /// The pool: a directory shared by every process that uses it
    /// [default: $XDG_RUNTIME_DIR/dbslots/default, or /run/dbslots/default for root]
    #[arg(long, env = dbslots_core::env::POOL, hide_env_values = true, value_name = "DIR")]
    pub pool: Option<String>,

    /// Capacity of the pool; needed only to create it (checked against an
    /// existing pool)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(dbslots_core::MAX_CAPACITY)))]
    pub capacity: Option<u32>,

    /// Create a new pool for this group (members may use it too)
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
}

impl PoolArgs {
    /// The pool's address, falling back to the private default directory.
    pub fn addr(&self) -> anyhow::Result<PoolAddr> {
        match &self.pool {
            Some(p) => Ok(PoolAddr::parse(p)?),
            None => Ok(PoolAddr::Dir(dbslots_core::default_pool_dir()?)),
        }
    }

    /// Opens (or, with `--capacity`, creates) the pool.
    pub fn open(&self) -> anyhow::Result<Pool> {
        let mut opts = PoolOptions::new().capacity_opt(self.capacity);
        if let Some(g) = &self.group {
            opts = opts.group_name(g)?;
        }
        let addr = self.addr()?;
        Pool::open(addr, opts).map_err(anyhow::Error::from)
    }
}

/// While set, log lines to stderr are dropped: `dbslots watch` sets it
/// while it owns the terminal (raw mode, alternate screen), where a line
/// written to stderr would land in the middle of the view, which shows
/// what went wrong itself.
pub static MUTE_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Where a log line goes: stderr, unless [`MUTE_LOGS`] is set.
fn stderr_unless_muted() -> Box<dyn std::io::Write> {
    if MUTE_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        Box::new(std::io::sink())
    } else {
        Box::new(std::io::stderr())
    }
}

/// Sets up `tracing` to stderr; `RUST_LOG` overrides `default`.
///
/// With `lossy`, log lines are written by a thread of their own and
/// dropped when stderr is not read (`dbslots spawn`: a stalled terminal
/// must never block the thread that reaps workers); keep the returned
/// guard until the end, it writes what is queued when dropped.
pub fn init_tracing(
    default: &str,
    lossy: bool,
) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    // No colour codes in log files and the journal.
    let builder = builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if lossy {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .finish(std::io::stderr());
        let _ = builder.with_writer(writer).try_init();
        Some(guard)
    } else {
        let _ = builder.with_writer(stderr_unless_muted).try_init();
        None
    }
}

/// Formats milliseconds since the epoch as a local-free UTC timestamp.
pub fn format_unix_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Milliseconds since the epoch, now.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A multi-threaded tokio runtime for the async subcommands.
#[allow(dead_code)]
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps_in_utc() {
        assert_eq!(format_unix_ms(0), "1970-01-01 00:00:00Z");
        assert_eq!(format_unix_ms(1_735_659_954_000), "2024-12-31 15:45:54Z");
    }
}
