//! Reading a job's file: checks first, then batches on a thread.
//!
//! # Implementation Details
//!
//! The file is read by a plain thread, one per job attempt, that turns
//! records into [`Batch`]es and hands them to the processor's task through a
//! bounded channel of [`CHANNEL_BATCHES`]. The thread validates the next
//! batch while the server inserts the previous one, and memory stays
//! bounded: at most the batches in the channel plus one record of at most
//! [`crate::MAX_RECORD_BYTES`].
//!
//! Before a single value is read the thread checks, in this order, and
//! fails the job with a [`FileProblem`] otherwise: the file opens (without
//! blocking on a FIFO), it is a regular file, its real path (symlinks
//! resolved, as the kernel opened it) lies in an allowed source directory,
//! it is the file that was enqueued ([`FileIdentity`]), on a resume its
//! content up to the checkpoint hashes as committed, and its header maps
//! onto the table. Nothing of a file that fails one of the first four
//! checks is ever read; no message quotes its content.
//!
//! Every batch ends at a [`Checkpoint`] with the hash of the content up to
//! it. The processor stores both with the batch, in the same transaction,
//! so a new attempt starts the thread at the stored checkpoint and reads
//! exactly the records that were not committed.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::batch::{Batch, BatchBuilder, Limits};
use crate::identity::FileIdentity;
use crate::record::{
    Checkpoint, MAX_FIELDS, MAX_RECORD_BYTES, Malformed, Oversize, PrefixHash, RecordReader,
    hash_prefix,
};
use crate::table::{MappingProblem, Table};
use crate::value::{self, Form, Zone};

/// Batches validated ahead of the one being inserted.
pub(crate) const CHANNEL_BATCHES: usize = 1;

/// What the reader thread sends.
#[derive(Debug)]
pub(crate) enum Chunk {
    /// The file passed every check.
    Opened {
        /// The file's size in bytes.
        size: u64,
        /// The form the rows come in.
        form: Form,
    },
    /// The next batch.
    Batch(Batch),
    /// The file is read to its end.
    End,
}

/// Why a job's file cannot be imported. The `Display` form is the job's
/// `last_error`: it names the file and what to do, never its content
/// (header names excepted, see [`MappingProblem`]).
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
    #[error(
        "{} resolves to {}, which is outside the processor's source directories ({}); move the file into one of them and enqueue it again",
        path.display(), real.display(), allowed
    )]
    Outside {
        path: PathBuf,
        real: PathBuf,
        allowed: String,
    },
    #[error(
        "{} is not the file that was enqueued: {what}; the rows committed so far stay, enqueue the file again to import it anew",
        path.display()
    )]
    Changed { path: PathBuf, what: String },
    #[error("{} is empty: no header and no records; nothing to import", .0.display())]
    Empty(PathBuf),
    #[error("{} has a header but no records; nothing to import", .0.display())]
    NoData(PathBuf),
    #[error("{} has a header that cannot be used: {what}; fix the file and enqueue it again", path.display())]
    Header { path: PathBuf, what: String },
    #[error("{}: {problem}", path.display())]
    Mapping {
        path: PathBuf,
        problem: MappingProblem,
    },
}

/// What a reader thread needs to know about its job.
#[derive(Debug, Clone)]
pub(crate) struct ReadPlan {
    pub job_id: u64,
    pub path: PathBuf,
    /// Where to start; offset 0 means the beginning, header included.
    pub start: Checkpoint,
    /// The hash of the content up to `start`, as the last batch committed
    /// it (`None` before the first batch).
    pub start_hash: Option<u128>,
    /// The file as it was enqueued.
    pub identity: FileIdentity,
    pub delimiter: u8,
    pub table: Table,
    pub no_key: bool,
    pub zone: Zone,
    /// Allowed directories (canonical); empty allows every path.
    pub source_dirs: Vec<PathBuf>,
    pub limits: Limits,
    /// Whether rows may come as `LOAD DATA` streams ([`Form::Load`]): then
    /// they do when the table is InnoDB and every column of the file can be
    /// written in that form.
    pub load_data: bool,
}

/// What the thread sends: a chunk, or the problem that ends the job.
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

/// Opens `path` for reading without following it into a FIFO's wait, and
/// checks that it is a regular file inside `source_dirs`.
pub(crate) fn open_checked(path: &Path, source_dirs: &[PathBuf]) -> Result<File, FileProblem> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => FileProblem::Missing(path.to_path_buf()),
            _ => FileProblem::Unreadable {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let meta = file.metadata().map_err(|source| FileProblem::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(FileProblem::NotAFile(path.to_path_buf()));
    }
    if !source_dirs.is_empty() {
        // The path the kernel opened, every symlink resolved; falls back
        // to resolving the name where /proc is not mounted.
        let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .or_else(|_| std::fs::canonicalize(path))
            .map_err(|source| FileProblem::Unreadable {
                path: path.to_path_buf(),
                source,
            })?;
        if !source_dirs.iter().any(|dir| real.starts_with(dir)) {
            return Err(FileProblem::Outside {
                path: path.to_path_buf(),
                real,
                allowed: source_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(file)
}

/// The header of an open file (read from its start) as column names, and
/// the reader positioned after it.
/// What is wrong with a record's quoting, for the rejection (or the
/// header's error).
fn quoting_problem(m: Malformed) -> String {
    match m {
        Malformed::TextAfterQuote { line_no } => format!(
            "bad quoting: a quoted field's closing quote on line {line_no} is followed by text; a quote inside a quoted field must be doubled (\"\"), and a record spanning lines here usually means a quote was opened and never closed"
        ),
        Malformed::UnclosedQuote { line_no } => format!(
            "bad quoting: the quote opened on line {line_no} is never closed before the end of the file"
        ),
    }
}

pub(crate) fn read_header<'f>(
    path: &Path,
    file: &'f File,
    delimiter: u8,
) -> Result<(Vec<String>, RecordReader<&'f File>), FileProblem> {
    let mut reader = RecordReader::new(file, delimiter, Checkpoint::default(), PrefixHash::new());
    let unreadable = |source: io::Error| FileProblem::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let Some(info) = reader.next_record().map_err(unreadable)? else {
        return Err(FileProblem::Empty(path.to_path_buf()));
    };
    let header = |what: String| FileProblem::Header {
        path: path.to_path_buf(),
        what,
    };
    if info.oversize.is_some() {
        return Err(header(format!(
            "it is over {} KiB or has over {MAX_FIELDS} fields (is the delimiter right?)",
            MAX_RECORD_BYTES / 1024
        )));
    }
    if let Some(m) = info.malformed {
        return Err(header(quoting_problem(m)));
    }
    let mut names = Vec::with_capacity(reader.field_count());
    for (i, field) in reader.fields().enumerate() {
        let name = std::str::from_utf8(field)
            .map_err(|_| header(format!("field {} is not UTF-8", i + 1)))?;
        names.push(name.to_owned());
    }
    Ok((names, reader))
}

/// Writes the current record as a row in `form` into `row`; the column to
/// blame and the reason when a value is rejected.
fn write_row<'c, R: io::Read>(
    columns: &'c [value::Column],
    reader: &RecordReader<R>,
    zone: &Zone,
    form: Form,
    row: &mut String,
) -> Option<(Option<&'c str>, String)> {
    form.open_row(row);
    for (i, column) in columns.iter().enumerate() {
        if i > 0 {
            form.separate(row);
        }
        if let Err(reason) = value::write(column, reader.field(i), zone, form, row) {
            return Some((
                Some(column.name.as_str()),
                format!("{}: {reason}", column.name),
            ));
        }
    }
    form.close_row(row);
    None
}

fn read(plan: &ReadPlan, tx: &mpsc::Sender<Message>) -> Result<(), FileProblem> {
    let path = &plan.path;
    let unreadable = |source: io::Error| FileProblem::Unreadable {
        path: path.clone(),
        source,
    };
    let changed = |what: String| FileProblem::Changed {
        path: path.clone(),
        what,
    };
    let mut file = open_checked(path, &plan.source_dirs)?;
    let now = FileIdentity::of(&file).map_err(unreadable)?;
    if let Some(what) = plan.identity.difference(&now) {
        return Err(changed(what));
    }
    let (header, reader) = read_header(path, &file, plan.delimiter)?;
    let mapping = plan
        .table
        .map_header(&header, plan.delimiter, plan.no_key)
        .map_err(|problem| FileProblem::Mapping {
            path: path.clone(),
            problem,
        })?;
    tracing::debug!(job = plan.job_id, table = %plan.table.name, key = ?mapping.key, fields = mapping.columns.len(), "header mapped");
    let header_end = reader.checkpoint();
    drop(reader);
    let (at, hash) = if plan.start.offset > header_end.offset {
        file.seek(SeekFrom::Start(0)).map_err(unreadable)?;
        let hash = hash_prefix(&mut file, plan.start.offset)
            .map_err(unreadable)?
            .ok_or_else(|| changed("it is shorter than the checkpoint".into()))?;
        if plan.start_hash.is_some_and(|h| h != hash.digest128()) {
            return Err(changed(format!(
                "its content up to the checkpoint (line {}, byte {}) is not what was imported",
                plan.start.line_no, plan.start.offset
            )));
        }
        (plan.start, hash)
    } else {
        file.seek(SeekFrom::Start(0)).map_err(unreadable)?;
        let hash = hash_prefix(&mut file, header_end.offset)
            .map_err(unreadable)?
            .ok_or_else(|| changed("it is shorter than its header".into()))?;
        (header_end, hash)
    };
    let form = if plan.load_data && plan.table.transactional {
        Form::pick(&mapping.columns)
    } else {
        Form::Sql
    };
    if !send(
        tx,
        Chunk::Opened {
            size: now.size,
            form,
        },
    ) {
        return Ok(());
    }
    // A checkpoint may lie between the CR and the LF of a CRLF.
    let after_cr = match at.offset.checked_sub(1) {
        Some(last) => {
            let mut byte = [0u8];
            file.read_exact_at(&mut byte, last).map_err(unreadable)?;
            byte[0] == b'\r'
        }
        None => false,
    };
    let mut reader = RecordReader::new(&file, plan.delimiter, at, hash)
        .after_cr(after_cr)
        .blank_lines_are_records(header.len() == 1);
    let mut batch = BatchBuilder::new(
        plan.job_id,
        plan.limits,
        mapping.head.clone(),
        mapping.tail.clone(),
        (form == Form::Load).then(|| mapping.load.clone()),
    );
    // The `INSERT` form of a row whose `LOAD DATA` form is too long to be
    // sure it fits into a statement.
    let mut sql_row = String::new();
    let fields = mapping.columns.len();
    // A row is at most twice its record in hex plus a literal's framing
    // per field; while one that large surely fits, no earlier boundary is
    // ever needed.
    let largest_row = 2 * MAX_RECORD_BYTES + 16 * MAX_FIELDS;
    let hand_out =
        |batch: &mut BatchBuilder, end: Checkpoint, hash: u128| -> Result<bool, FileProblem> {
            if let Some(what) = plan.identity.still_matches(&file).map_err(unreadable)? {
                return Err(changed(what));
            }
            Ok(send(tx, Chunk::Batch(batch.take(end, hash))))
        };
    loop {
        let before =
            (!batch.room_for(largest_row)).then(|| (reader.checkpoint(), reader.hash_state()));
        let Some(info) = reader.next_record().map_err(unreadable)? else {
            break;
        };
        let rejection = match info.oversize {
            Some(Oversize::Bytes) => Some((
                None,
                format!(
                    "record is over {} KiB (an unclosed quote?); at most {} KiB are accepted",
                    MAX_RECORD_BYTES / 1024,
                    MAX_RECORD_BYTES / 1024
                ),
            )),
            Some(Oversize::Fields) => Some((None, format!("record has over {MAX_FIELDS} fields"))),
            None if info.malformed.is_some() => info.malformed.map(|m| (None, quoting_problem(m))),
            None if reader.field_count() != fields => Some((
                None,
                format!(
                    "wrong field count: expected {fields} (as in the header), found {}",
                    reader.field_count()
                ),
            )),
            None => {
                let row = batch.row_buffer();
                let failed = write_row(&mapping.columns, &reader, &plan.zone, form, row);
                // A row whose `INSERT` form fits into a statement: in
                // `Form::Load`, surely when twice its length plus every
                // literal's framing does (text may become hex).
                let mut fits = || match form {
                    Form::Sql => batch.fits_alone(batch.row().len()),
                    Form::Load => {
                        batch.fits_alone(2 * batch.row().len() + 12 * fields + 2) || {
                            sql_row.clear();
                            write_row(
                                &mapping.columns,
                                &reader,
                                &plan.zone,
                                Form::Sql,
                                &mut sql_row,
                            )
                            .is_none()
                                && batch.fits_alone(sql_row.len())
                        }
                    }
                };
                match failed {
                    Some((column, reason)) => Some((column, reason)),
                    None if !fits() => Some((
                        None,
                        "record is too large for one statement under the server's max_allowed_packet; raise it".to_owned(),
                    )),
                    None => None,
                }
            }
        };
        match rejection {
            Some((column, reason)) => {
                batch.push_rejection(info.line_no, column, &reason, reader.raw());
            }
            None => {
                // `before` is kept whenever a row might not fit (rows are
                // never larger than `largest_row`).
                if let Some((end, hash)) = before.as_ref().filter(|_| !batch.row_fits())
                    && !hand_out(&mut batch, *end, hash.digest128())?
                {
                    return Ok(());
                }
                batch.push_row();
            }
        }
        if batch.is_full() && !hand_out(&mut batch, reader.checkpoint(), reader.digest())? {
            return Ok(());
        }
    }
    if !batch.is_empty() && !hand_out(&mut batch, reader.checkpoint(), reader.digest())? {
        return Ok(());
    }
    // The end of the file is checked like a batch: when the last batch
    // ended where a read did, a file cut short after that batch was
    // checked ends here, and only the check says it is not the whole file.
    if let Some(what) = plan.identity.still_matches(&file).map_err(unreadable)? {
        return Err(changed(what));
    }
    let end = reader.checkpoint().offset;
    if end != plan.identity.size {
        return Err(changed(format!(
            "it ended at byte {end} while it was being read, not at its size of {} bytes",
            plan.identity.size
        )));
    }
    send(tx, Chunk::End);
    Ok(())
}
