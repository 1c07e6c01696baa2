//! Reading a job's file: lines with exact offsets, batches on a thread.
//!
//! # Implementation Details
//!
//! The file is read by a plain thread, one per job attempt, that turns lines
//! into [`Batch`]es and hands them to the processor's task through a bounded
//! channel of [`CHANNEL_BATCHES`]. The thread parses the next batch while the
//! server inserts the previous one, and memory stays bounded: at most the
//! batches in the channel plus one line of at most [`MAX_LINE_BYTES`] (the
//! rest of a longer line is skipped, not buffered).
//!
//! Every batch ends at a [`Checkpoint`]: the byte offset just past its last
//! line and that line's number. The processor stores it with the batch, in
//! the same transaction, so a new attempt starts the thread at the stored
//! checkpoint and reads exactly the lines that were not committed.
//!
//! A line is everything up to `\n`; a `\r` before it is dropped. Line 1 is
//! the header. Blank lines hold no reading and are skipped without a
//! rejection.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::batch::{Batch, BatchBuilder, Limits};
use crate::parse::{self, Reject};

/// The longest line read; longer lines are rejected.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Batches parsed ahead of the one being inserted.
pub(crate) const CHANNEL_BATCHES: usize = 2;

/// How far a job has read its file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// Bytes of the file consumed: where the next line starts.
    pub offset: u64,
    /// The number of the last line consumed (the header is line 1).
    pub line_no: u64,
}

/// What the reader thread sends.
#[derive(Debug)]
pub(crate) enum Chunk {
    /// The file is open and its header is right.
    Opened {
        /// The file's size in bytes.
        size: u64,
    },
    /// The next batch.
    Batch(Batch),
    /// The file is read to its end.
    End,
}

/// Why a job's file cannot be imported. The `Display` form is the job's
/// `last_error`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileProblem {
    #[error(
        "{} does not exist (moved or deleted after it was enqueued?); put it back and enqueue it again",
        .0.display()
    )]
    Missing(PathBuf),
    #[error("cannot read {}: {source}; make it readable by the processor's user and enqueue it again", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a regular file; enqueue CSV files only", .0.display())]
    NotAFile(PathBuf),
    #[error("{} is empty: no header and no readings; nothing to import", .0.display())]
    Empty(PathBuf),
    #[error("{} has a header but no data lines; nothing to import", .0.display())]
    NoData(PathBuf),
    #[error(
        "{} has the wrong header: expected `meter_id,reading_at,kwh`, found `{found}`; fix the file and enqueue it again",
        path.display()
    )]
    WrongHeader { path: PathBuf, found: String },
    #[error(
        "{} changed since this job started reading it (size was {was} bytes, is {now}); the rows committed so far stay, enqueue the file again to import it anew",
        path.display()
    )]
    Changed { path: PathBuf, was: u64, now: u64 },
}

/// Reads lines of at most `max` bytes, counting offsets and line numbers.
pub(crate) struct LineReader<R> {
    inner: BufReader<R>,
    at: Checkpoint,
}

/// A line just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineInfo {
    /// The line's number.
    pub line_no: u64,
    /// Its full length without the line break, in bytes (more than the
    /// buffer holds if it was too long).
    pub len: u64,
}

impl<R: io::Read> LineReader<R> {
    pub fn new(inner: R, at: Checkpoint) -> Self {
        LineReader {
            inner: BufReader::with_capacity(256 * 1024, inner),
            at,
        }
    }

    /// The position after the last line read.
    pub fn position(&self) -> Checkpoint {
        self.at
    }

    /// Reads the next line into `buf` (its first `max` bytes, without the
    /// line break). `None` at the end of the file.
    pub fn next_line(&mut self, buf: &mut Vec<u8>, max: usize) -> io::Result<Option<LineInfo>> {
        buf.clear();
        let mut len = 0u64;
        let mut any = false;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                if !any {
                    return Ok(None);
                }
                break;
            }
            any = true;
            let (content, consumed, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..i], i + 1, true),
                None => (available, available.len(), false),
            };
            let room = max.saturating_sub(buf.len()).min(content.len());
            buf.extend_from_slice(&content[..room]);
            len += content.len() as u64;
            self.inner.consume(consumed);
            self.at.offset += consumed as u64;
            if done {
                break;
            }
        }
        if len <= max as u64 && buf.last() == Some(&b'\r') {
            buf.pop();
            len -= 1;
        }
        self.at.line_no += 1;
        Ok(Some(LineInfo {
            line_no: self.at.line_no,
            len,
        }))
    }
}

/// What a reader thread needs to know about its job.
#[derive(Debug, Clone)]
pub(crate) struct ReadPlan {
    pub job_id: u64,
    pub path: PathBuf,
    /// Where to start; `offset` 0 means the beginning, header included.
    pub start: Checkpoint,
    /// The file's size when the job first read it, if it did.
    pub expected_size: Option<u64>,
    pub limits: Limits,
}

/// What the thread may fail with once it has started: a problem with the
/// file (the job fails), or an I/O error in the middle of it.
pub(crate) type Message = Result<Chunk, FileProblem>;

/// Starts the reader thread. It ends at the end of the file, at the first
/// problem, or when the receiver is dropped.
pub(crate) fn spawn_reader(plan: ReadPlan) -> io::Result<mpsc::Receiver<Message>> {
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    std::thread::Builder::new()
        .name(format!("import-read-{}", plan.job_id))
        .spawn(move || {
            if let Err(problem) = read(&plan, &tx) {
                let _ = tx.blocking_send(Err(problem));
            }
        })?;
    Ok(rx)
}

/// Sends a message; `false` when the processor no longer listens.
fn send(tx: &mpsc::Sender<Message>, chunk: Chunk) -> bool {
    tx.blocking_send(Ok(chunk)).is_ok()
}

fn read(plan: &ReadPlan, tx: &mpsc::Sender<Message>) -> Result<(), FileProblem> {
    let path = &plan.path;
    let unreadable = |source: io::Error| FileProblem::Unreadable {
        path: path.clone(),
        source,
    };
    let mut file = open(path)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(FileProblem::NotAFile(path.clone()));
    }
    let size = meta.len();
    if let Some(was) = plan.expected_size.filter(|&was| was != size) {
        return Err(FileProblem::Changed {
            path: path.clone(),
            was,
            now: size,
        });
    }
    if plan.start.offset > size {
        return Err(FileProblem::Changed {
            path: path.clone(),
            was: plan.start.offset,
            now: size,
        });
    }
    let mut buf = Vec::new();
    let mut lines = LineReader::new(&mut file, Checkpoint::default());
    if lines
        .next_line(&mut buf, MAX_LINE_BYTES)
        .map_err(unreadable)?
        .is_none()
    {
        return Err(FileProblem::Empty(path.clone()));
    }
    parse::check_header(&buf).map_err(|found| FileProblem::WrongHeader {
        path: path.clone(),
        found,
    })?;
    let mut at = lines.position();
    drop(lines);
    if plan.start.offset > at.offset {
        file.seek(SeekFrom::Start(plan.start.offset))
            .map_err(unreadable)?;
        at = plan.start;
    } else {
        file.seek(SeekFrom::Start(at.offset)).map_err(unreadable)?;
    }
    if !send(tx, Chunk::Opened { size }) {
        return Ok(());
    }
    let mut lines = LineReader::new(file, at);
    let mut batch = BatchBuilder::new(plan.job_id, plan.limits);
    while let Some(info) = lines
        .next_line(&mut buf, MAX_LINE_BYTES)
        .map_err(unreadable)?
    {
        if info.len > MAX_LINE_BYTES as u64 {
            let reason = Reject::LineTooLong {
                bytes: info.len,
                max: MAX_LINE_BYTES,
            };
            batch.push_rejection(info.line_no, &reason.to_string(), &buf);
        } else if buf.iter().all(|b| *b == b' ' || *b == b'\t') {
            batch.push_blank();
        } else {
            match parse::parse_line(&buf) {
                Ok(reading) => batch.push_reading(&reading),
                Err(reason) => batch.push_rejection(info.line_no, &reason.to_string(), &buf),
            }
        }
        if batch.is_full() && !send(tx, Chunk::Batch(batch.take(lines.position()))) {
            return Ok(());
        }
    }
    if !batch.is_empty() && !send(tx, Chunk::Batch(batch.take(lines.position()))) {
        return Ok(());
    }
    send(tx, Chunk::End);
    Ok(())
}

fn open(path: &Path) -> Result<File, FileProblem> {
    File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => FileProblem::Missing(path.to_path_buf()),
        _ => FileProblem::Unreadable {
            path: path.to_path_buf(),
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(data: &[u8], max: usize) -> Vec<(Vec<u8>, LineInfo, Checkpoint)> {
        let mut r = LineReader::new(data, Checkpoint::default());
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(info) = r.next_line(&mut buf, max).unwrap() {
            out.push((buf.clone(), info, r.position()));
        }
        out
    }

    #[test]
    fn offsets_and_line_numbers() {
        let got = lines(b"ab\r\n\ncd", 100);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0, b"ab");
        assert_eq!(got[0].1, LineInfo { line_no: 1, len: 2 });
        assert_eq!(
            got[0].2,
            Checkpoint {
                offset: 4,
                line_no: 1
            }
        );
        assert_eq!(got[1].0, b"");
        assert_eq!(
            got[1].2,
            Checkpoint {
                offset: 5,
                line_no: 2
            }
        );
        assert_eq!(got[2].0, b"cd");
        assert_eq!(
            got[2].2,
            Checkpoint {
                offset: 7,
                line_no: 3
            }
        );
        assert!(lines(b"", 100).is_empty());
    }

    #[test]
    fn long_lines_are_cut_not_buffered() {
        let mut data = vec![b'x'; 1000];
        data.extend_from_slice(b"\nnext\n");
        let got = lines(&data, 10);
        assert_eq!(got[0].0, vec![b'x'; 10]);
        assert_eq!(got[0].1.len, 1000);
        assert_eq!(got[1].0, b"next");
        assert_eq!(got[1].2.offset, data.len() as u64);
    }

    #[test]
    fn reads_across_buffer_refills() {
        // Lines that straddle the 256 KiB buffer boundary.
        let line = b"meter-1,2024-01-01 00:00:00,1.5\n";
        let data: Vec<u8> = line
            .iter()
            .copied()
            .cycle()
            .take(line.len() * 20_000)
            .collect();
        let got = lines(&data, 100);
        assert_eq!(got.len(), 20_000);
        assert!(got.iter().all(|(l, ..)| l == &line[..line.len() - 1]));
        assert_eq!(got.last().unwrap().2.offset, data.len() as u64);
    }

    fn collect(plan: ReadPlan) -> Vec<Message> {
        let mut rx = spawn_reader(plan).unwrap();
        let mut out = Vec::new();
        while let Some(m) = rx.blocking_recv() {
            out.push(m);
        }
        out
    }

    fn plan(path: &Path, start: Checkpoint) -> ReadPlan {
        ReadPlan {
            job_id: 1,
            path: path.to_path_buf(),
            start,
            expected_size: None,
            limits: Limits {
                rows: 2,
                statement_bytes: 1 << 20,
            },
        }
    }

    #[test]
    fn batches_resume_exactly_at_their_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.csv");
        let data = "meter_id,reading_at,kwh\nm,2024-01-01 00:00:00,1\nbad\n\nm,2024-01-01 00:00:01,2\nm,2024-01-01 00:00:02,3\n";
        std::fs::write(&path, data).unwrap();
        let all = collect(plan(&path, Checkpoint::default()));
        let batches: Vec<&Batch> = all
            .iter()
            .filter_map(|m| match m {
                Ok(Chunk::Batch(b)) => Some(b),
                _ => None,
            })
            .collect();
        assert!(matches!(all[0], Ok(Chunk::Opened { size }) if size == data.len() as u64));
        assert!(matches!(all.last(), Some(Ok(Chunk::End))));
        let counts: Vec<(u64, u64, u64)> = batches
            .iter()
            .map(|b| (b.rows, b.rejected, b.end.line_no))
            .collect();
        assert_eq!(counts, [(1, 1, 3), (2, 0, 6)]);
        assert!(batches[0].errors_sql.as_deref().unwrap().contains("(1,3,"));
        // Resuming at the first checkpoint yields the second batch only.
        let rest = collect(plan(&path, batches[0].end));
        let rest: Vec<(u64, u64, u64)> = rest
            .iter()
            .filter_map(|m| match m {
                Ok(Chunk::Batch(b)) => Some((b.rows, b.rejected, b.end.line_no)),
                _ => None,
            })
            .collect();
        assert_eq!(rest, [(2, 0, 6)]);
    }

    #[test]
    fn file_problems() {
        let dir = tempfile::tempdir().unwrap();
        let first = |path: &Path| {
            collect(plan(path, Checkpoint::default()))
                .into_iter()
                .next()
                .unwrap()
        };
        let missing = dir.path().join("missing.csv");
        assert!(matches!(first(&missing), Err(FileProblem::Missing(_))));
        assert!(matches!(first(dir.path()), Err(FileProblem::NotAFile(_))));
        let empty = dir.path().join("empty.csv");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(first(&empty), Err(FileProblem::Empty(_))));
        let header = dir.path().join("header.csv");
        std::fs::write(&header, "id,at,value\n1,2,3\n").unwrap();
        let e = first(&header).unwrap_err();
        assert!(e.to_string().contains("found `id,at,value`"), "{e}");
        let mut changed = plan(&header, Checkpoint::default());
        changed.expected_size = Some(5);
        assert!(matches!(
            collect(changed).into_iter().next().unwrap(),
            Err(FileProblem::Changed {
                was: 5,
                now: 18,
                ..
            })
        ));
    }
}
