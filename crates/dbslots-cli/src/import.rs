//! `dbslots import`: queue CSV files for a table, import them, show the
//! queue. The work is done by `dbslots-import`; this module parses flags,
//! handles signals and shows progress.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use dbslots_core::{Pool, PoolAddr, PoolOptions};
use dbslots_import::{
    EnqueueOptions, InstanceLock, JobOutcome, JobReport, Observer, ProcessorOptions, Progress,
    Queue, RunEnd, RunOptions, Status, Stopper,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::common;
use crate::exec::parse_seconds;

/// Import CSV files into existing tables through a job queue in the
/// database: every value checked against its column's type, rows written
/// idempotently by the table's key, resumable after any crash.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    command: ImportCommand,
}

#[derive(Debug, Subcommand)]
enum ImportCommand {
    /// Add files to the queue and print their job ids, one per line
    ///
    /// Each file's first record is its header: column names of --table
    /// (case ignored); columns the file lacks take their defaults. The file
    /// is opened now: its identity (device, inode, size, modification time,
    /// a hash of its first and last 64 KiB) is recorded, and a file that
    /// changes before or while it is imported fails its job. A header that
    /// does not fit the table, or a table without a primary or unique key
    /// made of the file's columns (unless --no-key), is refused here and
    /// nothing is enqueued.
    Enqueue(EnqueueArgs),
    /// Import queued files: until the queue is empty (--once), or as a daemon
    ///
    /// The connection (and, with --pool, the slot) is held only while a job
    /// is worked on. When the server is out of reach (down, restarting, out
    /// of connections, the network cut), the processor tries again after
    /// 0.1 s, backing off to every 5 s, with one warning line per failed
    /// try: a daemon for as long as the outage lasts, with --once for 120 s
    /// (--reconnect-for changes either), then it exits 1; it exits 1 too
    /// when --max-time comes during an outage between jobs. Queue
    /// statements without an answer for 60 s (--statement-timeout) are
    /// given up as a lost connection (a frozen server or a dropped network
    /// path never fails by itself).
    ///
    /// SIGTERM or SIGINT finishes the current batch, puts the
    /// job back in the queue at its checkpoint and exits 0; a batch that
    /// gets no answer from the server within 10 s of the signal is given
    /// up (rolled back) instead, so the processor exits within 30 s
    /// whatever the network does. A second signal exits at once (the job
    /// goes back once its heartbeat is stale).
    ///
    /// New keys go into InnoDB tables with LOAD DATA LOCAL INFILE of the
    /// validated rows from memory (the server's local_infile must be on;
    /// MySQL 8 has it off, and then INSERT statements are used); from the
    /// first batch with a key already in the table on, a job's rows are
    /// upserted with INSERT ... ON DUPLICATE KEY UPDATE.
    ///
    /// Exit status: 0 when every job it worked on completed (with or without
    /// rejected records), and with --once also when another processor holds
    /// the lock file; 1 when a job it worked on failed, or on an error.
    Run(RunArgs),
    /// Show the queue's jobs with their status and counts
    Status(StatusArgs),
}

#[derive(Debug, Args)]
struct UrlArg {
    /// The database holding the queue and the tables imported into:
    /// mysql://USER:PASSWORD@HOST:PORT/DATABASE
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    url: String,

    /// Seconds the server may take to answer each of the queue's
    /// statements (enqueueing, listing, claiming) before the connection is
    /// given up as dead (a frozen server or a dropped network path never
    /// fails by itself); for enqueue and status also the session's
    /// wait_timeout on the server
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
    statement_timeout: Duration,
}

impl UrlArg {
    /// The queue these arguments name.
    fn queue(&self, pool: Option<Pool>) -> anyhow::Result<Queue> {
        Ok(Queue::new(&self.url, pool)?.statement_timeout(self.statement_timeout))
    }
}

#[derive(Debug, Args)]
struct EnqueueArgs {
    #[command(flatten)]
    url: UrlArg,

    /// The table to import into (in the URL's database); it must exist
    #[arg(long, value_name = "NAME")]
    table: String,

    /// The job's time zone: local times in the file are read in it, values
    /// with an offset (Z, +01:00) are converted to it, and it is the
    /// session's time_zone; UTC, an offset like +01:00, or an IANA name
    /// like Europe/Berlin (which needs the server's time zone tables)
    #[arg(long, value_name = "ZONE", default_value = "UTC")]
    time_zone: String,

    /// The field delimiter: ',' ';' or 'tab'
    #[arg(long, value_name = "CHAR", default_value = ",", value_parser = parse_delimiter)]
    delimiter: u8,

    /// Allow a table without a primary or unique key made of the file's
    /// columns: rows are appended with INSERT, so enqueueing the same file
    /// twice appends its rows twice
    #[arg(long)]
    no_key: bool,

    /// CSV files; stored with absolute paths, read later by a processor
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

fn parse_delimiter(text: &str) -> Result<u8, String> {
    match text {
        "," => Ok(b','),
        ";" => Ok(b';'),
        "tab" | "\\t" | "\t" => Ok(b'\t'),
        other => Err(format!(
            "{other:?} is not a supported delimiter; use ',', ';' or 'tab'"
        )),
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    url: UrlArg,

    /// Process what is pending, then exit; a second processor on the same
    /// lock file then exits with status 0 (cron-friendly)
    #[arg(long)]
    once: bool,

    /// Seconds to sleep when the queue is empty (without a connection)
    #[arg(long, value_name = "SECONDS", default_value = "3", value_parser = parse_seconds)]
    sleep: Duration,

    /// Exit after this many jobs
    #[arg(long, value_name = "N")]
    max_jobs: Option<u64>,

    /// Start no new job after this many seconds; the job in hand is
    /// finished (an outage during it is waited out for --reconnect-for, by
    /// default 120 s). Exits 1 if the server is out of reach between jobs
    /// then
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    max_time: Option<Duration>,

    /// Import only files whose real path (symlinks resolved) lies in this
    /// directory; may be repeated. A job whose file lies elsewhere fails
    /// without its file being read. Without it every file the processor's
    /// user can read is imported: give it wherever others can enqueue jobs
    #[arg(long, value_name = "DIR")]
    source_dir: Vec<PathBuf>,

    /// One processor per lock file; a second one exits at once naming the
    /// first one's pid [default: a private file per database]
    #[arg(long, value_name = "PATH")]
    lock_file: Option<PathBuf>,

    /// Hold a slot of this pool while connected [default: connect directly]
    #[arg(long, env = dbslots_core::env::POOL, hide_env_values = true, value_name = "DIR")]
    pool: Option<String>,

    /// Capacity of the pool; needed only to create it
    #[arg(long, value_name = "N", requires = "pool",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(dbslots_core::MAX_CAPACITY)))]
    capacity: Option<u32>,

    /// Records per batch (one transaction with its checkpoint)
    #[arg(long, value_name = "N", default_value_t = 50_000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_rows: u32,

    /// Seconds without a heartbeat after which a job's processor is taken
    /// for dead and the job put back (not before the server has been up
    /// this long: after its restart, holders get this long to resume their
    /// jobs)
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
    stale_after: Duration,

    /// Seconds the server may take to answer a batch (or any other
    /// statement) before the connection is taken for lost: it is closed
    /// and the batch redone over a new one from the checkpoint (a
    /// connection that silently stopped passing bytes, as after a failover
    /// or a database host reboot, never fails by itself). Half of it is
    /// the session's wait_timeout on the server; the heartbeat vouches for
    /// a batch without an answer for this long [default: 3 × --stale-after]
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    batch_timeout: Option<Duration>,

    /// Seconds the server may be out of reach (connects failing, or the
    /// connection lost before a job is claimed) before the processor exits
    /// with an error; meanwhile it tries again, at most 5 s apart, logging
    /// one warning per failed try, and a signal still stops it at once
    /// [default: 120 with --once; without --once, as long as the outage
    /// lasts]
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    reconnect_for: Option<Duration>,

    /// Attempts before a job whose processors keep dying fails
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: u32,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    url: UrlArg,

    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,

    /// Show the newest N jobs
    #[arg(long, value_name = "N", default_value_t = 50)]
    limit: u64,
}

/// Runs `dbslots import`.
pub fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ImportCommand::Enqueue(a) => enqueue(a),
        ImportCommand::Run(a) => run_processor(a),
        ImportCommand::Status(a) => status(a),
    }
}

/// Appends a formatted line to a `String` (which cannot fail).
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

fn enqueue(args: EnqueueArgs) -> anyhow::Result<ExitCode> {
    let queue = args.url.queue(None)?;
    let options = EnqueueOptions::new(args.table)
        .time_zone(args.time_zone)
        .delimiter(args.delimiter)
        .no_key(args.no_key);
    let ids = common::runtime()?.block_on(queue.enqueue(&args.files, &options))?;
    let mut out = String::new();
    for id in ids {
        outln!(out, "{id}");
    }
    crate::output::stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

fn run_processor(args: RunArgs) -> anyhow::Result<ExitCode> {
    let lock_path = match &args.lock_file {
        Some(path) => path.clone(),
        None => dbslots_import::default_lock_path(&args.url.url)?,
    };
    let _lock = match InstanceLock::acquire(&lock_path) {
        Ok(lock) => lock,
        Err(e @ dbslots_import::Error::AlreadyRunning { .. }) => {
            crate::output::stderr_line(format_args!(
                "dbslots: {}",
                crate::advice::in_cli_terms(&e.to_string())
            ));
            return Ok(if args.once {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Err(e) => return Err(e.into()),
    };
    let pool = match &args.pool {
        Some(addr) => Some(Pool::open(
            PoolAddr::parse(addr)?,
            PoolOptions::new().capacity_opt(args.capacity),
        )?),
        None => None,
    };
    let queue = args.url.queue(pool)?;
    let mut options = ProcessorOptions::new()
        .batch_rows(args.batch_rows as usize)
        .stale_after(args.stale_after)
        .max_attempts(args.max_attempts);
    if let Some(timeout) = args.batch_timeout {
        options = options.batch_timeout(timeout);
    }
    if let Some(window) = args.reconnect_for {
        options = options.reconnect_for(window);
    }
    let run = RunOptions::new()
        .once(args.once)
        .sleep(args.sleep)
        .max_jobs(args.max_jobs)
        .max_time(args.max_time);
    let window = match options.reconnect_window(&run) {
        Some(window) => format!("{window:?}"),
        None => "as long as the server is down".to_owned(),
    };
    let processor = queue.processor(
        args.source_dir
            .iter()
            .fold(options, |options, dir| options.source_dir(dir)),
    );
    let display = Display::new(std::io::stderr().is_terminal());
    let stop = Stopper::new();
    let runtime = common::runtime()?;
    let summary = runtime.block_on(async {
        listen_for_signals(stop.clone())?;
        tracing::info!(url = %queue.url(), holder = %processor.holder(), lock = %lock_path.display(), reconnect_for = %window, "import processor started");
        processor
            .run(&run, &stop, &display)
            .await
            .map_err(anyhow::Error::from)
    })?;
    let count = |f: fn(&JobOutcome) -> bool| summary.jobs.iter().filter(|r| f(&r.outcome)).count();
    let ended = match summary.end {
        RunEnd::QueueEmpty => "queue empty",
        RunEnd::MaxJobs => "--max-jobs reached",
        RunEnd::MaxTime => "--max-time reached",
        RunEnd::Stopped => "stopped by a signal",
        _ => "done",
    };
    if !summary.jobs.is_empty() || summary.end == RunEnd::Stopped {
        display.line(&format!(
            "{} jobs ({} completed, {} with errors, {} failed, {} put back); {ended}",
            summary.jobs.len(),
            count(|o| *o == JobOutcome::Completed),
            count(|o| *o == JobOutcome::CompletedWithErrors),
            count(|o| matches!(o, JobOutcome::Failed(_))),
            count(|o| matches!(o, JobOutcome::Released | JobOutcome::Interrupted)),
        ));
    }
    Ok(if count(|o| matches!(o, JobOutcome::Failed(_))) > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The first SIGTERM or SIGINT stops the processor after its current
/// batch; a second one exits at once.
fn listen_for_signals(stop: Stopper) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        crate::output::stderr_line(
            "dbslots: stopping after the current batch, within 30 s (signal again to exit at once)",
        );
        stop.stop();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        crate::output::stderr_line(
            "dbslots: exiting at once; the job goes back to the queue once its heartbeat is stale",
        );
        std::process::exit(130);
    });
    Ok(())
}

/// Progress: a bar per job on a terminal, log lines (at most every 5 s per
/// job) otherwise.
struct Display {
    terminal: bool,
    job: Mutex<Option<JobDisplay>>,
}

struct JobDisplay {
    bar: Option<ProgressBar>,
    started: Instant,
    lines_at_start: u64,
    last_line: Instant,
}

const LOG_EVERY: Duration = Duration::from_secs(5);

impl Display {
    fn new(terminal: bool) -> Display {
        Display {
            terminal,
            job: Mutex::new(None),
        }
    }

    fn line(&self, text: &str) {
        let now = common::format_unix_ms(common::now_unix_ms());
        let text = format!("{now} import: {}", crate::advice::in_cli_terms(text));
        match self
            .job
            .lock()
            .ok()
            .as_ref()
            .and_then(|j| j.as_ref()?.bar.clone())
        {
            Some(bar) => bar.println(text),
            None => crate::output::stderr_line(text),
        }
    }

    fn rate(job: &JobDisplay, progress: &Progress) -> (u64, f64) {
        let lines = progress.rows_imported + progress.rows_rejected;
        let this_run = lines.saturating_sub(job.lines_at_start);
        let secs = job.started.elapsed().as_secs_f64().max(1e-3);
        (this_run, this_run as f64 / secs)
    }

    fn describe(progress: &Progress, rate: f64) -> String {
        format!(
            "{} rows, {} rejected, {rate:.0} rows/s",
            progress.rows_imported, progress.rows_rejected
        )
    }
}

impl Observer for Display {
    fn job_started(&self, progress: &Progress) {
        let bar = self.terminal.then(|| {
            let bar = ProgressBar::new(progress.bytes_total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {percent:>3}% {msg} ({elapsed_precise}, ETA {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(format!("job {}", progress.job_id));
            bar.set_position(progress.bytes_done);
            bar.set_message(Display::describe(progress, 0.0));
            bar
        });
        let resumed = if progress.bytes_done > 0 {
            format!(
                ", resuming after {} lines",
                progress.rows_imported + progress.rows_rejected
            )
        } else {
            String::new()
        };
        if let Ok(mut job) = self.job.lock() {
            *job = Some(JobDisplay {
                bar,
                started: Instant::now(),
                lines_at_start: progress.rows_imported + progress.rows_rejected,
                last_line: Instant::now(),
            });
        }
        self.line(&format!(
            "job {} started: {} ({} bytes{resumed})",
            progress.job_id,
            escape_controls(&progress.source.display().to_string()),
            progress.bytes_total
        ));
    }

    fn batch_committed(&self, progress: &Progress) {
        let Ok(mut guard) = self.job.lock() else {
            return;
        };
        let Some(job) = guard.as_mut() else {
            return;
        };
        let (_, rate) = Display::rate(job, progress);
        if let Some(bar) = &job.bar {
            bar.set_position(progress.bytes_done);
            bar.set_message(Display::describe(progress, rate));
        } else if job.last_line.elapsed() >= LOG_EVERY {
            job.last_line = Instant::now();
            let percent = 100.0 * progress.bytes_done as f64 / progress.bytes_total.max(1) as f64;
            let text = format!(
                "job {}: {}, {percent:.0}% of the file",
                progress.job_id,
                Display::describe(progress, rate)
            );
            drop(guard);
            self.line(&text);
        }
    }

    fn job_finished(&self, report: &JobReport) {
        let job = self.job.lock().ok().and_then(|mut j| j.take());
        if let Some(bar) = job.as_ref().and_then(|j| j.bar.as_ref()) {
            bar.finish_and_clear();
        }
        let rate = report.lines_this_run as f64 / report.elapsed.as_secs_f64().max(1e-3);
        let how = match &report.outcome {
            JobOutcome::Completed => "completed".to_owned(),
            JobOutcome::CompletedWithErrors => {
                "completed with errors (see import_errors)".to_owned()
            }
            JobOutcome::Failed(error) => format!("failed: {}", escape_controls(error)),
            JobOutcome::Released => "put back in the queue at its checkpoint".to_owned(),
            JobOutcome::Lost => "taken over by another processor".to_owned(),
            JobOutcome::Interrupted => {
                "interrupted; it goes back to the queue once its heartbeat is stale".to_owned()
            }
            other => format!("{other:?}"),
        };
        self.line(&format!(
            "job {} {how}: {} rows imported, {} rejected; {} lines in {:.1?} ({rate:.0} rows/s)",
            report.id,
            report.rows_imported,
            report.rows_rejected,
            report.lines_this_run,
            report.elapsed
        ));
    }
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let queue = args.url.queue(None)?;
    let mut out = String::new();
    let (jobs, counts) = common::runtime()?.block_on(async {
        anyhow::Ok((queue.jobs(Some(args.limit)).await?, queue.counts().await?))
    })?;
    if args.json {
        let counts: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(s, n)| (s.as_str().to_owned(), (*n).into()))
            .collect();
        let jobs: Vec<serde_json::Value> = jobs
            .iter()
            .map(|j| {
                serde_json::json!({
                    "id": j.id,
                    "table": j.table,
                    "source": j.source,
                    "status": j.status.as_str(),
                    "attempts": j.attempts,
                    "rows_imported": j.rows_imported,
                    "rows_rejected": j.rows_rejected,
                    "last_error": j.last_error,
                    "holder": j.holder,
                    "heartbeat_age_secs": j.heartbeat_age_secs,
                    "created_at": j.created_at,
                    "started_at": j.started_at,
                    "finished_at": j.finished_at,
                })
            })
            .collect();
        outln!(
            out,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "counts": counts, "jobs": jobs }))?
        );
        crate::output::stdout(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    if total == 0 {
        outln!(out, "no import jobs");
        crate::output::stdout(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    outln!(out, "{total} jobs: {}", summary.join(", "));
    if (jobs.len() as u64) < total {
        outln!(out, "newest {}:", jobs.len());
    }
    outln!(
        out,
        "{:>6}  {:<21}  {:>8}  {:>10}  {:>8}  {:<19}  {:<20}  SOURCE",
        "ID",
        "STATUS",
        "ATTEMPTS",
        "IMPORTED",
        "REJECTED",
        "FINISHED (UTC)",
        "TABLE"
    );
    for j in &jobs {
        outln!(
            out,
            "{:>6}  {:<21}  {:>8}  {:>10}  {:>8}  {:<19}  {:<20}  {}",
            j.id,
            j.status.as_str(),
            j.attempts,
            j.rows_imported,
            j.rows_rejected,
            j.finished_at.as_deref().unwrap_or("-"),
            escape_controls(j.table.as_deref().unwrap_or("-")),
            escape_controls(&j.source)
        );
        if j.status == Status::Processing {
            outln!(
                out,
                "{:>8}held by {}, last heartbeat {}s ago",
                "",
                escape_controls(j.holder.as_deref().unwrap_or("?")),
                j.heartbeat_age_secs.map_or("?".into(), |s| s.to_string())
            );
        }
        if let Some(error) = &j.last_error {
            let error = crate::advice::in_cli_terms(error);
            outln!(out, "{:>8}last error: {}", "", escape_controls(&error));
        }
    }
    crate::output::stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// `text` with every control character (terminal escapes, newlines, C1
/// controls) and bidirectional override written as a Rust escape, so that
/// what the queue holds cannot drive the terminal. Anyone who can write to
/// `import_jobs` controls these strings; `status` and `run` print them
/// only through this.
fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape_controls("a\u{1b}[31mb\n\u{9b}c"),
            "a\\u{1b}[31mb\\u{a}\\u{9b}c"
        );
        assert_eq!(escape_controls("Zürich ok"), "Zürich ok");
        assert_eq!(escape_controls("x\u{202e}y"), "x\\u{202e}y");
    }

    #[test]
    fn delimiters() {
        assert_eq!(parse_delimiter(";"), Ok(b';'));
        assert_eq!(parse_delimiter("tab"), Ok(b'\t'));
        assert!(parse_delimiter("|").is_err());
    }
}
