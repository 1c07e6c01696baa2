//! The joblog: one line per finished worker, as GNU parallel writes it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// An open joblog.
pub(crate) struct Joblog {
    path: PathBuf,
    file: Option<BufWriter<File>>,
}

impl Joblog {
    /// Creates (or truncates) the file and writes the header.
    pub(crate) fn create(path: &Path) -> Result<Joblog> {
        let fail = |source| Error::Joblog {
            path: path.to_path_buf(),
            source,
        };
        let mut file = BufWriter::new(File::create(path).map_err(fail)?);
        writeln!(file, "{JOBLOG_HEADER}")
            .and_then(|_| file.flush())
            .map_err(fail)?;
        Ok(Joblog {
            path: path.to_path_buf(),
            file: Some(file),
        })
    }

    /// Appends `entry`. A write error is reported once and ends the joblog;
    /// the workers are not affected.
    pub(crate) fn record(&mut self, entry: &Entry<'_>) {
        let Some(file) = &mut self.file else { return };
        let written = writeln!(
            file,
            "{}\t:\t{:.3}\t{:.3}\t0\t0\t{}\t{}\t{}",
            entry.index as u64 + 1,
            entry.start_unix,
            entry.runtime.as_secs_f64(),
            entry.exitval,
            entry.signal,
            entry.command
        )
        .and_then(|_| file.flush());
        if let Err(e) = written {
            tracing::error!(joblog = %self.path.display(), error = %e, "cannot write the joblog; no further lines are written");
            eprintln!(
                "dbslots spawn: cannot write the joblog {}: {e}; no further lines are written (the workers go on)",
                self.path.display()
            );
            self.file = None;
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
