//! Batches of validated records: the rows' statement (or stream) and the
//! rejections' statement.
//!
//! # Implementation Details
//!
//! A batch is at most two statements, executed in one transaction together
//! with the job's checkpoint (see [`crate::queue::commit_batch`]):
//!
//! ```sql
//! INSERT INTO `t` (`a`,`b`) VALUES (...),(...)
//!   ON DUPLICATE KEY UPDATE `b`=VALUES(`b`)
//! INSERT INTO import_errors (job_id,line_no,column_name,reason,raw_line) VALUES (...)
//!   ON DUPLICATE KEY UPDATE ...
//! ```
//!
//! or, in [`Form::Load`], the rows as a stream that the first statement
//! reads from memory (the server's CPU per row is about half of a
//! multi-row `INSERT`'s, which builds an expression for every literal):
//!
//! ```sql
//! LOAD DATA LOCAL INFILE 'dbslots-import-batch' IGNORE INTO TABLE `t`
//!   CHARACTER SET utf8mb4 (`a`,`b`)
//! ```
//!
//! Whichever form a batch has, a record is rejected as too large when its
//! `INSERT` row would not fit into a statement, so rejections never depend
//! on the form.
//!
//! The statements carry literals, not placeholders, so the 65,535-placeholder
//! limit of prepared statements does not apply and the server parses one
//! packet per statement. Each statement stays under the byte limit the
//! processor derives from the server's `max_allowed_packet`: a row is built
//! on its own first, and a batch is handed out before a row that would not
//! fit (a row too large for any statement is a rejection). Literals come
//! only from [`crate::value`].

use std::sync::Arc;

use crate::record::{Checkpoint, MAX_RAW_LINE_BYTES};
use crate::value::{push_text, shorten};

const ERRORS_INSERT: &str =
    "INSERT INTO import_errors (job_id,line_no,column_name,reason,raw_line) VALUES ";
const ERRORS_UPSERT: &str = " ON DUPLICATE KEY UPDATE column_name=VALUES(column_name),reason=VALUES(reason),raw_line=VALUES(raw_line)";

/// The most a rejection's row adds to a statement: the raw line, whose
/// invalid bytes may each become a 3-byte U+FFFD, in hex, and the reason.
const MAX_REJECTION_ROW_BYTES: usize = 2 * 3 * MAX_RAW_LINE_BYTES + 2 * 1024 + 256;

/// When a batch is full.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Records (rows plus rejections) per batch.
    pub rows: usize,
    /// Bytes per statement.
    pub statement_bytes: usize,
}

/// The rows of a batch as they go to the server.
#[derive(Debug)]
pub(crate) enum Rows {
    /// `INSERT INTO ... VALUES (...),(...)`, with `ON DUPLICATE KEY UPDATE
    /// ...` when the job has a key.
    Insert(String),
    /// `LOAD DATA LOCAL INFILE ... IGNORE INTO TABLE ...` and the rows it
    /// reads, in [`Form::Load`].
    Load {
        statement: Arc<str>,
        data: bytes::Bytes,
    },
}

/// A batch ready to commit.
#[derive(Debug)]
pub(crate) struct Batch {
    /// The rows, if the batch has rows.
    pub rows_data: Option<Rows>,
    /// The rejections' statement, if the batch has rejections.
    pub errors_sql: Option<String>,
    /// Rows in the batch.
    pub rows: u64,
    /// Rejections in the batch.
    pub rejected: u64,
    /// Where the file is read up to once the batch is committed.
    pub end: Checkpoint,
    /// The hash of the file's content up to `end`.
    pub hash: u128,
}

/// Collects records into a [`Batch`].
pub(crate) struct BatchBuilder {
    job_id: u64,
    limits: Limits,
    /// The `INSERT` statement's head and tail, which decide whether a row
    /// fits into a statement in either form.
    head: String,
    tail: String,
    /// The `LOAD DATA` statement in [`Form::Load`].
    load: Option<Arc<str>>,
    rows_sql: String,
    row: String,
    rows: u64,
    errors: String,
    rejected: u64,
}

impl BatchBuilder {
    /// A builder of `head (...),(...) tail` statements or, with `load`, of
    /// streams for that `LOAD DATA` statement.
    pub fn new(
        job_id: u64,
        limits: Limits,
        head: String,
        tail: String,
        load: Option<String>,
    ) -> Self {
        BatchBuilder {
            job_id,
            limits,
            head,
            tail,
            load: load.map(Arc::from),
            rows_sql: String::new(),
            row: String::new(),
            rows: 0,
            errors: String::new(),
            rejected: 0,
        }
    }

    /// The buffer to build the next row's `(...)` in, emptied.
    pub fn row_buffer(&mut self) -> &mut String {
        self.row.clear();
        &mut self.row
    }

    /// The form rows are written in.
    #[cfg(test)]
    pub fn form(&self) -> crate::value::Form {
        if self.load.is_some() {
            crate::value::Form::Load
        } else {
            crate::value::Form::Sql
        }
    }

    /// The row in the buffer.
    pub fn row(&self) -> &str {
        &self.row
    }

    /// Whether an `INSERT` row of `sql_row_bytes` fits into a statement
    /// at all.
    pub fn fits_alone(&self, sql_row_bytes: usize) -> bool {
        self.head.len() + sql_row_bytes + self.tail.len() <= self.limits.statement_bytes
    }

    /// Whether the row in the buffer fits into the current statement (or,
    /// in [`Form::Load`], the current stream, which is kept under the same
    /// size).
    pub fn row_fits(&self) -> bool {
        self.rows_sql.is_empty()
            || self.rows_sql.len() + 1 + self.row.len() + self.tail.len()
                <= self.limits.statement_bytes
    }

    /// Whether a row of `bytes` would surely fit into the current
    /// statement.
    pub fn room_for(&self, bytes: usize) -> bool {
        self.rows_sql.len().max(self.head.len()) + 1 + bytes + self.tail.len()
            <= self.limits.statement_bytes
    }

    /// Adds the row in the buffer.
    pub fn push_row(&mut self) {
        if self.rows_sql.is_empty() {
            self.rows_sql
                .reserve(self.limits.statement_bytes.min(self.limits.rows * 64));
            if self.load.is_none() {
                self.rows_sql.push_str(&self.head);
            }
        } else if self.load.is_none() {
            self.rows_sql.push(',');
        }
        self.rows_sql.push_str(&self.row);
        if self.load.is_some() {
            self.rows_sql.push('\n');
        }
        self.rows += 1;
    }

    /// Adds a rejected record: its line, the column (if one is to blame),
    /// the reason, and its raw bytes (decoded lossily, cut to
    /// [`MAX_RAW_LINE_BYTES`]).
    pub fn push_rejection(&mut self, line_no: u64, column: Option<&str>, reason: &str, raw: &[u8]) {
        let sql = &mut self.errors;
        if sql.is_empty() {
            sql.push_str(ERRORS_INSERT);
        } else {
            sql.push(',');
        }
        let cut = &raw[..raw.len().min(MAX_RAW_LINE_BYTES)];
        sql.push('(');
        sql.push_str(&self.job_id.to_string());
        sql.push(',');
        sql.push_str(&line_no.to_string());
        sql.push(',');
        match column {
            Some(c) => push_text(sql, c),
            None => sql.push_str("NULL"),
        }
        sql.push(',');
        push_text(sql, &shorten(reason, 255));
        sql.push(',');
        push_text(sql, &String::from_utf8_lossy(cut));
        sql.push(')');
        self.rejected += 1;
    }

    /// Whether the batch should be handed out before another record.
    pub fn is_full(&self) -> bool {
        (self.rows + self.rejected) as usize >= self.limits.rows
            || self.errors.len() + MAX_REJECTION_ROW_BYTES > self.limits.statement_bytes
    }

    /// Whether any record was added since the last [`BatchBuilder::take`].
    pub fn is_empty(&self) -> bool {
        self.rows + self.rejected == 0
    }

    /// Hands out the batch, ending at `end` (content hash `hash`), and
    /// starts a new one.
    pub fn take(&mut self, end: Checkpoint, hash: u128) -> Batch {
        let rows_data = (!self.rows_sql.is_empty()).then(|| match &self.load {
            Some(statement) => Rows::Load {
                statement: statement.clone(),
                data: std::mem::take(&mut self.rows_sql).into_bytes().into(),
            },
            None => {
                self.rows_sql.push_str(&self.tail);
                Rows::Insert(std::mem::take(&mut self.rows_sql))
            }
        });
        let errors_sql = (!self.errors.is_empty()).then(|| {
            self.errors.push_str(ERRORS_UPSERT);
            std::mem::take(&mut self.errors)
        });
        let batch = Batch {
            rows_data,
            errors_sql,
            rows: self.rows,
            rejected: self.rejected,
            end,
            hash,
        };
        self.rows = 0;
        self.rejected = 0;
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Form;

    fn builder(rows: usize, bytes: usize) -> BatchBuilder {
        BatchBuilder::new(
            7,
            Limits {
                rows,
                statement_bytes: bytes,
            },
            "INSERT INTO `t` (`a`) VALUES ".into(),
            " ON DUPLICATE KEY UPDATE `a`=VALUES(`a`)".into(),
            None,
        )
    }

    fn insert_sql(batch: &Batch) -> Option<&str> {
        match &batch.rows_data {
            Some(Rows::Insert(sql)) => Some(sql),
            _ => None,
        }
    }

    #[test]
    fn a_load_batch_is_a_stream_of_lines_for_its_statement() {
        let mut b = BatchBuilder::new(
            7,
            Limits {
                rows: 2,
                statement_bytes: 1 << 20,
            },
            "INSERT INTO `t` (`a`,`b`) VALUES ".into(),
            String::new(),
            Some("LOAD DATA LOCAL INFILE 'x' IGNORE INTO TABLE `t` (`a`,`b`)".into()),
        );
        assert_eq!(b.form(), Form::Load);
        b.row_buffer().push_str("1\tx");
        b.push_row();
        b.row_buffer().push_str("2\t\\N");
        b.push_row();
        assert!(b.is_full());
        let batch = b.take(Checkpoint::default(), 1);
        match batch.rows_data {
            Some(Rows::Load { statement, data }) => {
                assert!(statement.starts_with("LOAD DATA LOCAL INFILE"));
                assert_eq!(&data[..], b"1\tx\n2\t\\N\n");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn builds_one_statement_per_table() {
        let mut b = builder(3, 1 << 20);
        assert!(b.is_empty());
        b.row_buffer().push_str("(1)");
        b.push_row();
        b.push_rejection(3, Some("a"), "bad", b"x\xffy");
        b.row_buffer().push_str("(2)");
        b.push_row();
        assert!(b.is_full());
        let batch = b.take(
            Checkpoint {
                offset: 99,
                line_no: 5,
            },
            42,
        );
        assert_eq!((batch.rows, batch.rejected, batch.hash), (2, 1, 42));
        assert_eq!(
            insert_sql(&batch),
            Some("INSERT INTO `t` (`a`) VALUES (1),(2) ON DUPLICATE KEY UPDATE `a`=VALUES(`a`)")
        );
        assert_eq!(
            batch.errors_sql.as_deref(),
            Some(
                "INSERT INTO import_errors (job_id,line_no,column_name,reason,raw_line) VALUES \
                 (7,3,'a','bad',_utf8mb4 X'78EFBFBD79') ON DUPLICATE KEY UPDATE \
                 column_name=VALUES(column_name),reason=VALUES(reason),raw_line=VALUES(raw_line)"
            )
        );
        assert!(b.is_empty());
    }

    #[test]
    fn a_row_that_would_overflow_the_statement_does_not_fit() {
        let mut b = builder(1000, 120);
        b.row_buffer().push_str("(1)");
        assert!(b.row_fits() && b.fits_alone(b.row().len()));
        b.push_row();
        b.row_buffer().push_str(&format!("({})", "9".repeat(48)));
        assert!(!b.row_fits());
        assert!(b.fits_alone(b.row().len()));
        b.row_buffer().push_str(&format!("({})", "9".repeat(60)));
        assert!(b.row_buffer().is_empty());
        b.row_buffer().push_str(&format!("({})", "9".repeat(60)));
        assert!(!b.fits_alone(b.row().len()));
    }
}
