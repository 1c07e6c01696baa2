//! The joblog: one line per finished worker, as GNU parallel writes it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// The joblog's first line: GNU parallel's columns, tab-separated.
///
/// `Seq` is the worker's index + 1 (GNU parallel's `{#}`); `Host` is `:`
/// (this host); `Starttime` is seconds since the Unix epoch and `JobRuntime`
/// seconds, both with milliseconds; `Send` and `Receive` are 0 (nothing is
/// transferred); `Exitval` is the exit status (0 when killed by a signal,
/// -1 when the status could not be read) and `Signal` the signal that
/// killed the worker (0 when none); `Command` is the command line, quoted
/// as a shell reads it. Lines are written as workers finish, so they are in
/// order of completion, and each is flushed at once.
pub const JOBLOG_HEADER: &str =
    "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand";

/// One worker's line.
pub(crate) struct Entry<'a> {
    pub index: u32,
    pub start_unix: f64,
    pub runtime: Duration,
    pub exitval: i32,
    pub signal: i32,
    pub command: &'a str,
}

/// An open joblog. Lines are written by a thread of its own, so that a
/// joblog nobody reads (a FIFO, `/dev/stdout` piped to a stopped pager)
/// never blocks the thread that reaps workers, frees slots and obeys
/// signals; they queue meanwhile (a few dozen bytes per worker).
pub(crate) struct Joblog {
    lines: mpsc::Sender<String>,
    written: Option<oneshot::Receiver<()>>,
}

impl Joblog {
    /// Creates (or truncates) the file, writes the header, and starts the
    /// thread that writes the lines.
    pub(crate) fn create(path: &Path) -> Result<Joblog> {
        let fail = |source| Error::Joblog {
            path: path.to_path_buf(),
            source,
        };
        let mut file = BufWriter::new(File::create(path).map_err(fail)?);
        writeln!(file, "{JOBLOG_HEADER}")
            .and_then(|_| file.flush())
            .map_err(fail)?;
        let (lines, queued) = mpsc::channel::<String>();
        let (done, written) = oneshot::channel();
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("dbslots-joblog".into())
            .spawn(move || {
                write_lines(&path, file, queued);
                let _ = done.send(());
            })
            .map_err(fail)?;
        Ok(Joblog {
            lines,
            written: Some(written),
        })
    }

    /// Queues `entry` for the file. Never blocks.
    pub(crate) fn record(&mut self, entry: &Entry<'_>) {
        let line = format!(
            "{}\t:\t{:.3}\t{:.3}\t0\t0\t{}\t{}\t{}\n",
            entry.index as u64 + 1,
            entry.start_unix,
            entry.runtime.as_secs_f64(),
            entry.exitval,
            entry.signal,
            entry.command
        );
        let _ = self.lines.send(line);
    }

    /// Completes once every line recorded before this joblog was dropped
    /// is written (or could not be).
    pub(crate) fn written(&mut self) -> impl Future<Output = ()> + use<> {
        let written = self.written.take();
        async move {
            if let Some(w) = written {
                let _ = w.await;
            }
        }
    }
}

/// The joblog thread: writes each line as it comes and flushes it. A write
/// error is reported once and ends the writing; the workers are not
/// affected.
fn write_lines(path: &Path, mut file: BufWriter<File>, queued: mpsc::Receiver<String>) {
    let mut failed = false;
    for line in queued {
        if failed {
            continue;
        }
        if let Err(e) = file.write_all(line.as_bytes()).and_then(|()| file.flush()) {
            tracing::error!(joblog = %path.display(), error = %e, "cannot write the joblog; no further lines are written");
            eprintln!(
                "dbslots spawn: cannot write the joblog {}: {e}; no further lines are written (the workers go on)",
                path.display()
            );
            failed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_gnu_parallel_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = Joblog::create(&path).unwrap();
        log.record(&Entry {
            index: 4,
            start_unix: 1_700_000_000.123_4,
            runtime: Duration::from_millis(1500),
            exitval: 3,
            signal: 0,
            command: "sh -c 'exit 3'",
        });
        let written = log.written();
        drop(log);
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(written);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], JOBLOG_HEADER);
        assert_eq!(
            lines[1],
            "5\t:\t1700000000.123\t1.500\t0\t0\t3\t0\tsh -c 'exit 3'"
        );
        assert_eq!(
            lines[1].split('\t').count(),
            JOBLOG_HEADER.split('\t').count()
        );
    }

    #[test]
    fn unwritable_path_is_an_error_naming_the_flag() {
        let err = Joblog::create(Path::new("/nonexistent-dir/x/joblog"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("SpawnOptions::joblog"), "{err}");
    }
}
