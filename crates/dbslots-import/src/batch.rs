//! Multi-row statements built from parsed lines.
//!
//! # Implementation Details
//!
//! A batch is at most two statements, executed in one transaction together
//! with the job's checkpoint (see [`crate::queue::commit_batch`]):
//!
//! ```sql
//! INSERT INTO meter_readings (meter_id,reading_at,kwh) VALUES (...),(...)
//!   ON DUPLICATE KEY UPDATE kwh=VALUES(kwh)
//! INSERT INTO import_errors (job_id,line_no,reason,raw_line) VALUES (...)
//!   ON DUPLICATE KEY UPDATE reason=VALUES(reason),raw_line=VALUES(raw_line)
//! ```
//!
//! The statements carry literals, not placeholders, so the 65,535-placeholder
//! limit of prepared statements does not apply and the server parses one
//! packet per statement. Each statement stays under the byte limit the
//! processor derives from the server's `max_allowed_packet`.
//!
//! Literals are safe by construction. Timestamps and kWh values reach this
//! module only as validated digits (see [`crate::parse`]); a timestamp is
//! written as the number `YYYYMMDDhhmmss`, which the server turns into a
//! `DATETIME` much faster than it parses the string form (the server's CPU,
//! not the client's, bounds an import). Text is written
//! between single quotes only when every byte is printable ASCII other than
//! `'` and `\`, which reads the same under every `sql_mode` and connection
//! character set; any other text is written as a hexadecimal literal with a
//! character set introducer, `_utf8mb4 X'...'`, which needs no escaping at
//! all.

use crate::parse::Reading;
use crate::source::Checkpoint;

const READINGS_INSERT: &str = "INSERT INTO meter_readings (meter_id,reading_at,kwh) VALUES ";
const READINGS_UPSERT: &str = " ON DUPLICATE KEY UPDATE kwh=VALUES(kwh)";
const ERRORS_INSERT: &str = "INSERT INTO import_errors (job_id,line_no,reason,raw_line) VALUES ";
const ERRORS_UPSERT: &str =
    " ON DUPLICATE KEY UPDATE reason=VALUES(reason),raw_line=VALUES(raw_line)";

/// How much of a rejected line `import_errors.raw_line` keeps, in bytes of
/// the file.
pub const MAX_RAW_LINE_BYTES: usize = 4096;

/// The most a reading's row adds to a statement: a 32-character meter id of
/// 4-byte characters written in hex, a timestamp, a kWh value, punctuation.
const MAX_READING_ROW_BYTES: usize = 2 * 4 * 32 + 64 + 32 + 32;

/// The most a rejection's row adds to a statement: the raw line, whose
/// invalid bytes may each become a 3-byte U+FFFD, in hex, and the reason.
const MAX_REJECTION_ROW_BYTES: usize = 2 * 3 * MAX_RAW_LINE_BYTES + 2 * 1024 + 64;

/// When a batch is full.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Lines (readings plus rejections) per batch.
    pub rows: usize,
    /// Bytes per statement.
    pub statement_bytes: usize,
}

/// A batch ready to commit.
#[derive(Debug)]
pub(crate) struct Batch {
    /// The readings' statement, if the batch has readings.
    pub readings_sql: Option<String>,
    /// The rejections' statement, if the batch has rejections.
    pub errors_sql: Option<String>,
    /// Readings in the batch.
    pub rows: u64,
    /// Rejections in the batch.
    pub rejected: u64,
    /// Where the file is read up to once the batch is committed.
    pub end: Checkpoint,
}

/// Collects lines into a [`Batch`].
pub(crate) struct BatchBuilder {
    job_id: u64,
    limits: Limits,
    readings: String,
    rows: u64,
    errors: String,
    rejected: u64,
    lines: u64,
}

impl BatchBuilder {
    pub fn new(job_id: u64, limits: Limits) -> Self {
        BatchBuilder {
            job_id,
            limits,
            readings: String::new(),
            rows: 0,
            errors: String::new(),
            rejected: 0,
            lines: 0,
        }
    }

    /// Adds a reading.
    pub fn push_reading(&mut self, reading: &Reading<'_>) {
        let sql = &mut self.readings;
        if sql.is_empty() {
            sql.reserve(self.limits.statement_bytes.min(self.limits.rows * 64));
            sql.push_str(READINGS_INSERT);
        } else {
            sql.push(',');
        }
        sql.push('(');
        push_text(sql, &reading.meter_id);
        sql.push(',');
        // The validated timestamp as the number YYYYMMDDhhmmss, which the
        // server converts to DATETIME without parsing a string.
        sql.extend(
            reading
                .reading_at
                .iter()
                .filter(|b| b.is_ascii_digit())
                .map(|&b| char::from(b)),
        );
        sql.push(',');
        sql.push_str(reading.kwh.as_str());
        sql.push(')');
        self.rows += 1;
        self.lines += 1;
    }

    /// Adds a rejected line: its number, the reason, and its raw bytes
    /// (decoded lossily, cut to [`MAX_RAW_LINE_BYTES`]).
    pub fn push_rejection(&mut self, line_no: u64, reason: &str, raw: &[u8]) {
        let sql = &mut self.errors;
        if sql.is_empty() {
            sql.push_str(ERRORS_INSERT);
        } else {
            sql.push(',');
        }
        let cut = &raw[..raw.len().min(MAX_RAW_LINE_BYTES)];
        let mut reason = crate::parse::shorten(reason, 200);
        if cut.len() < raw.len() {
            reason.push_str(&format!(" (raw line cut to {MAX_RAW_LINE_BYTES} bytes)"));
        }
        sql.push('(');
        sql.push_str(&self.job_id.to_string());
        sql.push(',');
        sql.push_str(&line_no.to_string());
        sql.push(',');
        push_text(sql, &reason);
        sql.push(',');
        push_text(sql, &String::from_utf8_lossy(cut));
        sql.push(')');
        self.rejected += 1;
        self.lines += 1;
    }

    /// Counts a line that holds nothing (a blank line).
    pub fn push_blank(&mut self) {
        self.lines += 1;
    }

    /// Whether the batch should be committed before another line is added.
    pub fn is_full(&self) -> bool {
        (self.rows + self.rejected) as usize >= self.limits.rows
            || self.readings.len() + MAX_READING_ROW_BYTES > self.limits.statement_bytes
            || self.errors.len() + MAX_REJECTION_ROW_BYTES > self.limits.statement_bytes
    }

    /// Whether any line was added since the last [`BatchBuilder::take`].
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// Hands out the batch, ending at `end`, and starts a new one.
    pub fn take(&mut self, end: Checkpoint) -> Batch {
        let finish = |sql: &mut String, tail: &str| {
            (!sql.is_empty()).then(|| {
                sql.push_str(tail);
                std::mem::take(sql)
            })
        };
        let batch = Batch {
            readings_sql: finish(&mut self.readings, READINGS_UPSERT),
            errors_sql: finish(&mut self.errors, ERRORS_UPSERT),
            rows: self.rows,
            rejected: self.rejected,
            end,
        };
        self.rows = 0;
        self.rejected = 0;
        self.lines = 0;
        batch
    }
}

/// Appends `s` as an SQL string literal (see the module documentation).
pub(crate) fn push_text(sql: &mut String, s: &str) {
    let plain = s
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'\'' && b != b'\\');
    if plain {
        sql.push('\'');
        sql.push_str(s);
        sql.push('\'');
    } else {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        sql.reserve(s.len() * 2 + 14);
        sql.push_str("_utf8mb4 X'");
        for b in s.bytes() {
            sql.push(char::from(HEX[usize::from(b >> 4)]));
            sql.push(char::from(HEX[usize::from(b & 15)]));
        }
        sql.push('\'');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            rows: 3,
            statement_bytes: 1 << 20,
        }
    }

    #[test]
    fn text_literals() {
        let lit = |s: &str| {
            let mut sql = String::new();
            push_text(&mut sql, s);
            sql
        };
        assert_eq!(lit("MTR-001 a.b"), "'MTR-001 a.b'");
        assert_eq!(lit(""), "''");
        assert_eq!(lit("o'k"), "_utf8mb4 X'6F276B'");
        assert_eq!(lit("a\\"), "_utf8mb4 X'615C'");
        assert_eq!(lit("é"), "_utf8mb4 X'C3A9'");
        assert_eq!(lit("\n"), "_utf8mb4 X'0A'");
    }

    #[test]
    fn builds_one_statement_per_table() {
        let mut b = BatchBuilder::new(7, limits());
        assert!(b.is_empty());
        let line = b"m1,2024-01-01T00:00:00Z,1.50";
        b.push_reading(&crate::parse::parse_line(line).unwrap());
        b.push_rejection(3, "bad", b"x\xffy");
        assert!(!b.is_full());
        b.push_blank();
        b.push_reading(&crate::parse::parse_line(b"m'2,2024-01-01 00:00:01,0").unwrap());
        assert!(b.is_full());
        let batch = b.take(Checkpoint {
            offset: 99,
            line_no: 5,
        });
        assert_eq!((batch.rows, batch.rejected), (2, 1));
        assert_eq!(
            batch.readings_sql.as_deref(),
            Some(
                "INSERT INTO meter_readings (meter_id,reading_at,kwh) VALUES \
                 ('m1',20240101000000,1.5),(_utf8mb4 X'6D2732',20240101000001,0) \
                 ON DUPLICATE KEY UPDATE kwh=VALUES(kwh)"
            )
        );
        assert_eq!(
            batch.errors_sql.as_deref(),
            Some(
                "INSERT INTO import_errors (job_id,line_no,reason,raw_line) VALUES \
                 (7,3,'bad',_utf8mb4 X'78EFBFBD79') \
                 ON DUPLICATE KEY UPDATE reason=VALUES(reason),raw_line=VALUES(raw_line)"
            )
        );
        assert!(b.is_empty());
        let empty = b.take(Checkpoint {
            offset: 99,
            line_no: 5,
        });
        assert!(empty.readings_sql.is_none() && empty.errors_sql.is_none());
    }

    #[test]
    fn long_raw_lines_are_cut_and_said_so() {
        let mut b = BatchBuilder::new(1, limits());
        b.push_rejection(2, "too long", &vec![b'a'; MAX_RAW_LINE_BYTES + 10]);
        let sql = b.take(Checkpoint::default()).errors_sql.unwrap();
        assert!(
            sql.contains("'too long (raw line cut to 4096 bytes)'"),
            "{sql}"
        );
        assert!(sql.contains(&format!("'{}'", "a".repeat(MAX_RAW_LINE_BYTES))));
    }

    #[test]
    fn statement_size_closes_the_batch() {
        let mut b = BatchBuilder::new(
            1,
            Limits {
                rows: 1_000_000,
                statement_bytes: 64 * 1024,
            },
        );
        let line = b"meter-000001,2024-01-01 00:00:00,1.5";
        let mut n = 0;
        while !b.is_full() {
            b.push_reading(&crate::parse::parse_line(line).unwrap());
            n += 1;
        }
        let sql = b.take(Checkpoint::default()).readings_sql.unwrap();
        assert!(n > 100);
        assert!(sql.len() <= 64 * 1024, "{}", sql.len());
    }
}
