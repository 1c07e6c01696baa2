//! `dbslots spawn`: start N workers under the pool's capacity.

use std::ffi::OsString;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use dbslots_spawn::{Mode, Output, ProgressDisplay, SpawnOptions, Spawner, Template};

use crate::common::PoolArgs;
use crate::exec::parse_seconds;

/// Starts N workers from one command, each as soon as a slot is free.
///
/// By default (adaptive) the spawner takes a slot for each worker before
/// starting it and hands it over: the worker's stdin is the slot's locked
/// file (empty and read-only: reading it gives end of file, as from
/// /dev/null), so the worker holds its slot until it exits, even if the
/// spawner is killed, and is then left to finish. The spawner gives the
/// slot back once it has reaped the worker, so at most `capacity` workers
/// run at once and the next one starts the moment one ends. A worker that
/// closes or redirects its stdin keeps its slot only while the spawner
/// lives. With --batch-size the reference behaviour is used instead:
/// batches of B workers, each batch started --batch-delay seconds after the
/// previous one, without waiting for slots (workers take their own), unless
/// --hold-slot is given, which makes the spawner take and hand over a slot
/// for each worker as in adaptive mode.
///
/// A Redis pool's slots are leases, which cannot be handed over: the
/// spawner renews them until it has reaped the workers. If the spawner is
/// killed, even with SIGKILL, the workers are killed with it, with every
/// process of their process groups (no worker runs without its slot; a
/// small helper process the spawner starts for this does it); with
/// --hold-slot they are left to finish, and their slots are lost once the
/// leases run out. When a worker's lease is lost while the spawner runs
/// (cut off from Redis, paused), the worker's group (also what a worker
/// that exited left behind) gets SIGTERM, and SIGKILL half the lease's
/// safety margin later (a sixth of the lease), before the server can give
/// the slot to anyone else (like `consul lock`); --hold-slot lets it run
/// on instead.
///
/// In CMD's arguments, {index} becomes the worker's 0-based index and
/// {count} the number of workers. Each worker sees DBSLOTS_WORKER_INDEX,
/// DBSLOTS_WORKER_COUNT, DBSLOTS_POOL, DBSLOTS_JOB_ID (with --job-id), and
/// DBSLOTS_SLOT when a slot was taken for it: it must then not take another
/// from the same pool. Workers run in their own process groups, with stdin
/// from their slot or from /dev/null.
///
/// A worker's slot is given back only when no process of the worker's
/// process group is left: a worker that exits but leaves a child behind
/// keeps its slot until the child ends too.
///
/// Workers' lines (prefixed with [INDEX]) are written by a thread of their
/// own: when stdout or stderr is not read (a pager left on a page, a
/// stalled terminal), lines that do not fit in 2 MiB are dropped and
/// counted, and the fleet runs on. --log-dir keeps every line. If dbslots
/// dies, the workers' output pipes break: workers start with SIGPIPE
/// ignored, so they run on (a failed write of theirs is theirs to handle).
///
/// Ctrl-C, SIGTERM or SIGHUP: nothing new starts, every worker's process
/// group (with what a worker left behind) gets SIGTERM, and SIGKILL after
/// --grace seconds or at a second signal. A signal the caller ignores
/// (nohup, `cmd &` in a script) stays ignored. A summary goes to stderr at
/// the end.
///
/// Exit status: 0 when every worker exited with 0; 1 when any failed or was
/// killed by a signal; 2 on a usage error or when the pool, the joblog or
/// the log directory cannot be used; 126/127 when a worker cannot be
/// started (127: not found); 128+N when stopped by signal N (130 for
/// Ctrl-C).
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct SpawnArgs {
    /// How many workers to start
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    workers: u32,

    #[command(flatten)]
    pool: PoolArgs,

    /// Start workers in fixed batches of B (the reference behaviour) instead
    /// of as soon as a slot is free; without --hold-slot this needs no pool
    /// (the default one is reported on, and named to workers, if it exists)
    #[arg(long, value_name = "B", value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: Option<u32>,

    /// Seconds between the starts of two batches [default: 2]
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, requires = "batch_size")]
    batch_delay: Option<Duration>,

    /// Take a slot for every worker, also with --batch-size, and let
    /// workers run to their end if dbslots dies (the default in adaptive
    /// mode on a directory pool, where workers hold their slots)
    #[arg(long)]
    hold_slot: bool,

    /// Passed to every worker as DBSLOTS_JOB_ID
    #[arg(long, value_name = "ID")]
    job_id: Option<String>,

    /// Write one line per worker to FILE, tab-separated, in GNU parallel's
    /// --joblog columns (Seq is the index + 1)
    #[arg(long, value_name = "FILE")]
    joblog: Option<PathBuf>,

    /// Write each worker's stdout and stderr to DIR/INDEX.log instead of
    /// this terminal (where lines are prefixed with [INDEX])
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,

    /// Seconds between SIGTERM and SIGKILL when stopping workers
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, default_value = "10")]
    grace: Duration,

    /// Progress display on stderr: a bar on a terminal, lines otherwise
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
    progress: ProgressArg,

    /// The worker command and its arguments
    #[arg(
        required = true,
        last = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProgressArg {
    Auto,
    Bar,
    Lines,
    Quiet,
}

/// Exit status when the spawner cannot start or go on (see the command's
/// help).
const EXIT_SETUP: u8 = 2;

/// Runs `dbslots spawn`.
pub fn run(args: SpawnArgs) -> anyhow::Result<ExitCode> {
    match spawn(args) {
        Ok(code) => Ok(code),
        Err(e) => {
            crate::output::stderr_line(format_args!(
                "dbslots spawn: {}",
                crate::advice::in_cli_terms(&crate::advice::error_line(&e))
            ));
            Ok(ExitCode::from(EXIT_SETUP))
        }
    }
}

fn spawn(args: SpawnArgs) -> anyhow::Result<ExitCode> {
    let template = Template::from_argv(args.command)?;
    let mode = match args.batch_size.and_then(NonZeroU32::new) {
        Some(size) => Mode::Batches {
            size,
            delay: args.batch_delay.unwrap_or(Duration::from_secs(2)),
        },
        None => Mode::Adaptive,
    };
    let mut options = SpawnOptions::new(args.workers)
        .mode(mode)
        .hold_slot(args.hold_slot)
        .grace(args.grace)
        .progress_display(match args.progress {
            ProgressArg::Auto => ProgressDisplay::Auto,
            ProgressArg::Bar => ProgressDisplay::Bar,
            ProgressArg::Lines => ProgressDisplay::Lines,
            ProgressArg::Quiet => ProgressDisplay::Quiet,
        });
    if let Some(id) = args.job_id {
        options = options.job_id(id);
    }
    if let Some(path) = args.joblog {
        options = options.joblog(path);
    }
    if let Some(dir) = args.log_dir {
        options = options.output(Output::LogDir(dir));
    }
    // Batches without --hold-slot take no slots: the pool is only reported
    // on (and named to the workers), so a missing default pool is no error.
    // A pool named on purpose (--pool, DBSLOTS_POOL) must exist.
    let takes_slots = args.hold_slot || args.batch_size.is_none();
    let spawner = match args.pool.open() {
        Ok(pool) => Spawner::new(pool, template, options)?,
        Err(e)
            if !takes_slots
                && args.pool.pool.is_none()
                && matches!(
                    e.downcast_ref::<dbslots_core::Error>(),
                    Some(dbslots_core::Error::NotFound { .. })
                ) =>
        {
            Spawner::without_pool(template, options)?
        }
        Err(e) => return Err(e),
    };
    // One thread: every worker is started from the thread that lives as
    // long as the spawner (PR_SET_PDEATHSIG, for the workers that get it,
    // follows the forking thread).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let summary = runtime.block_on(spawner.run())?;
    print_summary(crate::advice::in_cli_terms(&format!(
        "dbslots spawn: {summary}\n"
    )));
    Ok(ExitCode::from(summary.exit_code()))
}

/// How long the summary may take to write before dbslots exits without it.
const SUMMARY_WAIT: Duration = Duration::from_millis(250);

/// Writes the summary to stderr from a thread of its own: when nobody
/// reads stderr (the run then ended by a signal, see `Output::Prefixed`),
/// dbslots exits after [`SUMMARY_WAIT`] rather than hang in the write.
fn print_summary(text: String) {
    use std::io::Write as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::io::stderr().write_all(text.as_bytes());
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(SUMMARY_WAIT);
}
