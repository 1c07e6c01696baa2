//! CSV records with exact byte offsets, line numbers and a running hash of
//! what was consumed, in bounded memory.
//!
//! # Implementation Details
//!
//! Records are split by `csv-core`, the allocation-free parser under the
//! `csv` crate (RFC 4180: quoted fields may hold the delimiter, doubled
//! quotes and CR or LF; records end with LF, CRLF or CR). The `csv` crate's
//! own reader is not used because it grows a record's buffer without bound
//! (an unclosed quote would pull the rest of the file into memory); here a
//! record's unescaped bytes go into a buffer of fixed size
//! ([`MAX_RECORD_BYTES`], [`MAX_FIELDS`]) and a record that does not fit is
//! read to its end without being kept, then reported as too long.
//!
//! Every byte handed to the parser is counted (the offset), its line
//! breaks are counted (the line number) and it is fed to an XXH3-128 hash,
//! so at every record boundary the reader knows the exact [`Checkpoint`]
//! and the hash of the file up to it. A line break is LF, CRLF or a CR
//! alone, as records end: counting only line feeds would put every record
//! of a file with CR line breaks on line 1, and rejections are kept one per
//! line (`import_errors` is keyed by job and line). Line breaks before a
//! record (blank lines) are consumed before the record starts, so a
//! record's line number is the line its first byte is on; in a file of
//! one column a blank line is a record of one empty field instead
//! ([`RecordReader::blank_lines_are_records`]). A UTF-8 byte
//! order mark at offset 0 is skipped.
//!
//! `csv-core` is lenient where RFC 4180 is strict: text after a closing
//! quote is appended to the field, and the end of the file inside quotes
//! ends the record. So one stray opening quote would silently merge the
//! records after it into one field, which may even have the right field
//! count. [`QuoteCheck`] runs alongside on the same bytes and marks such a
//! record [`Malformed`], for the importer to reject with where the quote
//! went wrong.

use std::io::{self, Read};

use xxhash_rust::xxh3::Xxh3Default as Xxh3;

/// The most bytes a record's fields may hold once unquoted; a longer record
/// is rejected, never buffered.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// The most fields a record may have (MySQL's limit on a table's columns).
pub const MAX_FIELDS: usize = 4096;

/// How much of a record's raw text is kept for `import_errors.raw_line`.
pub const MAX_RAW_LINE_BYTES: usize = 4096;

const INPUT_BYTES: usize = 256 * 1024;

/// How far a job has read its file: a record boundary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// Bytes of the file consumed: where the next record (or blank line)
    /// starts.
    pub offset: u64,
    /// Line breaks (LF, CRLF, CR) consumed: the next record starts on
    /// line `line_no + 1` or later.
    pub line_no: u64,
}

/// Why a record was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Oversize {
    /// Its fields held more than [`MAX_RECORD_BYTES`].
    Bytes,
    /// It had more than [`MAX_FIELDS`] fields.
    Fields,
}

/// How a record breaks RFC 4180's quoting (its fields are kept, but are
/// not what the writer meant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// A quoted field's closing quote, on this line, is followed by text
    /// rather than a delimiter or the end of the line.
    TextAfterQuote {
        /// The line of the closing quote.
        line_no: u64,
    },
    /// The file ends inside a quoted field opened on this line.
    UnclosedQuote {
        /// The line of the opening quote.
        line_no: u64,
    },
}

/// A record just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordInfo {
    /// The line its first byte is on (1-based).
    pub line_no: u64,
    /// Set when the record did not fit and its fields were not kept.
    pub oversize: Option<Oversize>,
    /// Set when the record breaks RFC 4180's quoting.
    pub malformed: Option<Malformed>,
    /// Its raw length in bytes, line break included.
    pub raw_len: u64,
}

/// Reads records from `R`, starting at a checkpoint.
pub(crate) struct RecordReader<R> {
    inner: R,
    parser: csv_core::Reader,
    input: Box<[u8]>,
    pos: usize,
    len: usize,
    eof: bool,
    out: Box<[u8]>,
    ends: Box<[usize]>,
    fields: usize,
    raw: Vec<u8>,
    quotes: QuoteCheck,
    at: Checkpoint,
    hash: Xxh3,
    /// Whether the last byte consumed was a CR (an LF right after it ends
    /// the same line).
    after_cr: bool,
    /// Whether a blank line is a record of one empty field
    /// ([`RecordReader::blank_lines_are_records`]).
    blank_is_record: bool,
}

/// Line breaks in `bytes`: every CR, and every LF not right after a CR;
/// `after_cr`: the byte before `bytes` was a CR.
fn line_breaks(bytes: &[u8], after_cr: bool) -> u64 {
    let crs = memchr::memchr_iter(b'\r', bytes).count();
    let lfs = memchr::memchr_iter(b'\n', bytes)
        .filter(|&i| {
            !if i == 0 {
                after_cr
            } else {
                bytes[i - 1] == b'\r'
            }
        })
        .count();
    (crs + lfs) as u64
}

/// RFC 4180's quoting rules, checked over a record's bytes as they are
/// consumed (see the module docs for why `csv-core` alone is not enough).
#[derive(Debug, Clone, Copy)]
struct QuoteCheck {
    delimiter: u8,
    state: QuoteState,
    /// Line breaks seen in the record so far.
    lines: u64,
    /// Whether the last byte fed was a CR.
    after_cr: bool,
    /// Lines into the record where the open quoted field started.
    opened_at: u64,
    malformed: Option<Malformed>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuoteState {
    /// At the start of a field.
    FieldStart,
    /// In a field that did not start with a quote (quotes in it are text).
    Unquoted,
    /// In a quoted field.
    Quoted,
    /// Just after a quote in a quoted field: a doubled quote, or the end.
    QuoteInQuoted,
    /// Past the record's end, or past the first problem.
    Done,
}

impl QuoteCheck {
    fn new(delimiter: u8) -> Self {
        QuoteCheck {
            delimiter,
            state: QuoteState::FieldStart,
            lines: 0,
            after_cr: false,
            opened_at: 0,
            malformed: None,
        }
    }

    /// Starts over, for the next record.
    fn start(&mut self) {
        *self = QuoteCheck::new(self.delimiter);
    }

    /// Checks the next bytes of the record that starts on `line_no`.
    fn feed(&mut self, bytes: &[u8], line_no: u64) {
        use QuoteState::*;
        // The usual case, outside quotes with no quote ahead: nothing can
        // go wrong, only where the record ends matters. One SIMD search
        // instead of a step per byte on the import's hot path.
        if matches!(self.state, FieldStart | Unquoted) && memchr::memchr(b'"', bytes).is_none() {
            if memchr::memchr2(b'\n', b'\r', bytes).is_some() {
                self.state = Done;
            } else if let Some(&last) = bytes.last() {
                self.after_cr = false;
                self.state = if last == self.delimiter {
                    FieldStart
                } else {
                    Unquoted
                };
            }
            return;
        }
        for &b in bytes {
            let end_of_line = b == b'\n' || b == b'\r';
            self.state = match (self.state, b) {
                (Done, _) => return,
                (FieldStart, b'"') => {
                    self.opened_at = self.lines;
                    Quoted
                }
                (FieldStart | Unquoted | QuoteInQuoted, _) if end_of_line => Done,
                (FieldStart | Unquoted | QuoteInQuoted, d) if d == self.delimiter => FieldStart,
                (FieldStart | Unquoted, _) => Unquoted,
                (Quoted, b'"') => QuoteInQuoted,
                (Quoted, _) => Quoted,
                (QuoteInQuoted, b'"') => Quoted,
                (QuoteInQuoted, _) => {
                    self.malformed = Some(Malformed::TextAfterQuote {
                        line_no: line_no + self.lines,
                    });
                    Done
                }
            };
            if b == b'\r' || (b == b'\n' && !self.after_cr) {
                self.lines += 1;
            }
            self.after_cr = b == b'\r';
        }
    }

    /// The record's problem, once its last byte was fed (at the end of the
    /// file, an open quoted field is one).
    fn finish(&mut self, line_no: u64) -> Option<Malformed> {
        if self.state == QuoteState::Quoted {
            self.malformed = Some(Malformed::UnclosedQuote {
                line_no: line_no + self.opened_at,
            });
        }
        self.malformed
    }
}

impl<R: Read> RecordReader<R> {
    /// A reader of `inner`, which is positioned at `at`; `hash` is the hash
    /// of the file's first `at.offset` bytes.
    pub fn new(inner: R, delimiter: u8, at: Checkpoint, hash: Xxh3) -> Self {
        let parser = csv_core::ReaderBuilder::new().delimiter(delimiter).build();
        RecordReader {
            inner,
            parser,
            input: vec![0; INPUT_BYTES].into_boxed_slice(),
            pos: 0,
            len: 0,
            eof: false,
            out: vec![0; MAX_RECORD_BYTES].into_boxed_slice(),
            ends: vec![0; MAX_FIELDS].into_boxed_slice(),
            fields: 0,
            raw: Vec::with_capacity(MAX_RAW_LINE_BYTES),
            quotes: QuoteCheck::new(delimiter),
            at,
            hash,
            after_cr: false,
            blank_is_record: false,
        }
    }

    /// Makes every blank line after this point a record of one empty
    /// field, as it is in a file of one column (PostgreSQL's `COPY … CSV`
    /// writes a NULL of such a file as an empty line, and `LOAD DATA`
    /// reads one as a row), instead of no record at all. Where there are
    /// several columns a blank line holds no value and is skipped.
    pub fn blank_lines_are_records(mut self, yes: bool) -> Self {
        self.blank_is_record = yes;
        self
    }

    /// Tells a reader started at a checkpoint that the byte before it is a
    /// CR: a checkpoint may lie between the CR and the LF of a CRLF, and
    /// that LF ends no line of its own.
    pub fn after_cr(mut self, after_cr: bool) -> Self {
        self.after_cr = after_cr;
        self
    }

    /// Where the reader is: just past the last record read.
    pub fn checkpoint(&self) -> Checkpoint {
        self.at
    }

    /// The hash of every byte consumed, from the start of the file.
    pub fn digest(&self) -> u128 {
        self.hash.digest128()
    }

    /// The hash's state (to take the digest of this point later).
    pub fn hash_state(&self) -> Xxh3 {
        self.hash.clone()
    }

    /// The fields of the last record read (none when it did not fit).
    pub fn fields(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.fields).map(|i| self.field(i))
    }

    /// Field `i` of the last record read.
    pub fn field(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.out[start..self.ends[i]]
    }

    /// How many fields the last record has.
    pub fn field_count(&self) -> usize {
        self.fields
    }

    /// The last record's raw text (its first [`MAX_RAW_LINE_BYTES`] bytes,
    /// without the line break).
    pub fn raw(&self) -> &[u8] {
        let mut raw = self.raw.as_slice();
        while let [rest @ .., b'\r' | b'\n'] = raw {
            raw = rest;
        }
        raw
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.pos < self.len || self.eof {
            return Ok(());
        }
        loop {
            match self.inner.read(&mut self.input) {
                Ok(0) => {
                    self.eof = true;
                    self.pos = 0;
                    self.len = 0;
                    return Ok(());
                }
                Ok(n) => {
                    self.pos = 0;
                    self.len = n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Consumes `n` bytes of input; `in_record`: they belong to the record
    /// being read (kept as its raw text, checked for quoting).
    fn consume(&mut self, n: usize, in_record: bool, line_no: u64) {
        let bytes = &self.input[self.pos..self.pos + n];
        self.hash.update(bytes);
        if in_record {
            self.quotes.feed(bytes, line_no);
        }
        self.at.offset += n as u64;
        self.at.line_no += line_breaks(bytes, self.after_cr);
        if let Some(&last) = bytes.last() {
            self.after_cr = last == b'\r';
        }
        if in_record && self.raw.len() < MAX_RAW_LINE_BYTES {
            let room = (MAX_RAW_LINE_BYTES - self.raw.len()).min(n);
            self.raw.extend_from_slice(&bytes[..room]);
        }
        self.pos += n;
    }

    /// Reads the next record. `None` at the end of the file.
    pub fn next_record(&mut self) -> io::Result<Option<RecordInfo>> {
        // Blank lines (and the BOM at offset 0) belong to no record.
        loop {
            self.fill()?;
            if self.pos == self.len {
                return Ok(None);
            }
            if self.at.offset == 0 && self.input[..self.len].starts_with(b"\xEF\xBB\xBF") {
                self.consume(3, false, 0);
                continue;
            }
            let blank = self.input[self.pos..self.len]
                .iter()
                .take_while(|&&b| b == b'\n' || b == b'\r')
                .count();
            if blank == 0 {
                break;
            }
            if self.blank_is_record {
                // The LF of a CRLF whose CR ended the last line ends none.
                if self.after_cr && self.input[self.pos] == b'\n' {
                    self.consume(1, false, 0);
                    continue;
                }
                // One line break (a CR's LF goes as above next time).
                let line_no = self.at.line_no + 1;
                let start = self.at.offset;
                self.raw.clear();
                self.consume(1, false, 0);
                self.fields = 1;
                self.ends[0] = 0;
                return Ok(Some(RecordInfo {
                    line_no,
                    oversize: None,
                    malformed: None,
                    raw_len: self.at.offset - start,
                }));
            }
            self.consume(blank, false, 0);
        }
        let line_no = self.at.line_no + 1;
        let start = self.at.offset;
        self.raw.clear();
        self.quotes.start();
        self.fields = 0;
        let mut nout = 0;
        let mut oversize = None;
        loop {
            self.fill()?;
            let input = &self.input[self.pos..self.len];
            let (result, nin, written, nend) = if oversize.is_none() {
                self.parser
                    .read_record(input, &mut self.out[nout..], &mut self.ends[self.fields..])
            } else {
                // Read the rest of a record that does not fit, keeping
                // nothing of it.
                let mut sink = [0u8; 4096];
                let mut ends = [0usize; 64];
                self.parser.read_record(input, &mut sink, &mut ends)
            };
            self.consume(nin, true, line_no);
            if oversize.is_none() {
                nout += written;
                self.fields += nend;
            }
            match result {
                csv_core::ReadRecordResult::InputEmpty => {}
                csv_core::ReadRecordResult::OutputFull => {
                    oversize.get_or_insert(Oversize::Bytes);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    oversize.get_or_insert(Oversize::Fields);
                }
                csv_core::ReadRecordResult::Record => break,
                csv_core::ReadRecordResult::End => {
                    if self.at.offset == start {
                        return Ok(None);
                    }
                    break;
                }
            }
        }
        if oversize.is_some() {
            self.fields = 0;
        }
        let malformed = self.quotes.finish(line_no);
        Ok(Some(RecordInfo {
            line_no,
            oversize,
            malformed,
            raw_len: self.at.offset - start,
        }))
    }
}

/// The running hash of a file's content.
pub(crate) type PrefixHash = Xxh3;

/// Hashes the first `len` bytes of `file` (from its current position), so
/// a reader can resume at a checkpoint. `None` when the file is shorter.
pub(crate) fn hash_prefix(file: &mut impl Read, len: u64) -> io::Result<Option<Xxh3>> {
    let mut hash = Xxh3::new();
    let mut buf = vec![0u8; INPUT_BYTES];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(Some(hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(data: &[u8], delimiter: u8) -> Vec<(u64, Vec<String>, Checkpoint)> {
        let mut r = RecordReader::new(data, delimiter, Checkpoint::default(), Xxh3::new());
        let mut out = Vec::new();
        while let Some(info) = r.next_record().unwrap() {
            let fields = r
                .fields()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect();
            out.push((info.line_no, fields, r.checkpoint()));
        }
        out
    }

    #[test]
    fn rfc4180_quoting_line_numbers_and_offsets() {
        let data = b"\xEF\xBB\xBFa,b\r\n\"x,1\",\"say \"\"hi\"\"\"\r\n\n\"multi\nline\r\nfield\",2\nlast,\"\"";
        let got = records(data, b',');
        let fields: Vec<Vec<String>> = got.iter().map(|(_, f, _)| f.clone()).collect();
        assert_eq!(
            fields,
            [
                vec!["a", "b"],
                vec!["x,1", "say \"hi\""],
                vec!["multi\nline\r\nfield", "2"],
                vec!["last", ""],
            ]
        );
        let lines: Vec<u64> = got.iter().map(|(l, ..)| *l).collect();
        assert_eq!(lines, [1, 2, 4, 7]);
        assert_eq!(got.last().unwrap().2.offset, data.len() as u64);
    }

    #[test]
    fn resumes_exactly_at_a_checkpoint() {
        let data = b"h1;h2\n1;\"a\nb\"\n2;c\n3;d\n";
        let all = records(data, b';');
        let at = all[1].2;
        let mut file = &data[..];
        let hash = hash_prefix(&mut file, at.offset).unwrap().unwrap();
        let mut r = RecordReader::new(file, b';', at, hash);
        let info = r.next_record().unwrap().unwrap();
        assert_eq!(info.line_no, 4);
        assert_eq!(r.field(1), b"c");
        while r.next_record().unwrap().is_some() {}
        let whole = {
            let mut h = Xxh3::new();
            h.update(data);
            h.digest128()
        };
        assert_eq!(r.digest(), whole);
    }

    #[test]
    fn an_oversized_record_is_skipped_not_buffered() {
        let mut data = b"a,b\n\"".to_vec();
        data.extend(std::iter::repeat_n(b'x', MAX_RECORD_BYTES + 10));
        data.extend_from_slice(b"\",1\nok,2\n");
        let mut r = RecordReader::new(&data[..], b',', Checkpoint::default(), Xxh3::new());
        r.next_record().unwrap().unwrap();
        let big = r.next_record().unwrap().unwrap();
        assert_eq!(big.oversize, Some(Oversize::Bytes));
        assert_eq!(r.field_count(), 0);
        assert_eq!(r.raw().len(), MAX_RAW_LINE_BYTES);
        let next = r.next_record().unwrap().unwrap();
        assert_eq!((next.line_no, next.oversize), (3, None));
        assert_eq!(r.field(0), b"ok");
        assert!(r.next_record().unwrap().is_none());
    }

    fn quoting(data: &[u8]) -> Vec<(u64, Option<Malformed>)> {
        let mut r = RecordReader::new(data, b',', Checkpoint::default(), Xxh3::new());
        let mut out = Vec::new();
        while let Some(info) = r.next_record().unwrap() {
            out.push((info.line_no, info.malformed));
        }
        out
    }

    #[test]
    fn a_stray_quote_that_would_merge_records_is_marked() {
        // The reviewer's file: csv-core alone reads records 2-4 as one
        // field of record 1, with the right field count.
        let got = quoting(b"id,note\n1,\"first\n2,second\n3,\"third\"\n4,fourth\n");
        assert_eq!(
            got,
            [
                (1, None),
                (2, Some(Malformed::TextAfterQuote { line_no: 4 })),
                (5, None),
            ]
        );
        assert_eq!(
            quoting(b"a,b\n1,\"open\n2,x\n"),
            [
                (1, None),
                (2, Some(Malformed::UnclosedQuote { line_no: 2 }))
            ]
        );
        assert_eq!(
            quoting(b"a,b\n1,\"x\"y\n"),
            [
                (1, None),
                (2, Some(Malformed::TextAfterQuote { line_no: 2 }))
            ]
        );
    }

    #[test]
    fn the_quote_check_is_the_same_whatever_the_pieces_it_is_fed_in() {
        for record in [
            &b"1,\"x\"y\n"[..],
            b"a,\"open\nstill,\"shut\" text\n",
            b"plain,5\" pipe,\"ok\"\"\",x\r\n",
            b"1,\"never closed",
        ] {
            let mut whole = QuoteCheck::new(b',');
            whole.feed(record, 7);
            let mut bytewise = QuoteCheck::new(b',');
            for b in record {
                bytewise.feed(std::slice::from_ref(b), 7);
            }
            assert_eq!(whole.finish(7), bytewise.finish(7), "{record:?}");
        }
    }

    #[test]
    fn well_formed_quoting_and_quotes_inside_unquoted_fields_pass() {
        let data =
            b"a,b\r\n\"x,1\",\"say \"\"hi\"\"\"\r\n\"multi\nline\",2\n5\" pipe,\"\"\nlast,\"end\"";
        assert!(
            quoting(data).iter().all(|(_, m)| m.is_none()),
            "{:?}",
            quoting(data)
        );
        // Resuming in the middle of a file starts clean.
        let mut r = RecordReader::new(&b"x,\"y\"\n"[..], b',', Checkpoint::default(), Xxh3::new());
        assert_eq!(r.next_record().unwrap().unwrap().malformed, None);
    }

    #[test]
    fn tabs_and_last_line_without_break() {
        let got = records(b"a\tb\n1\t2", b'\t');
        assert_eq!(got[1].1, ["1", "2"]);
        assert_eq!(got[1].2.offset, 7);
    }

    #[test]
    fn a_blank_line_of_a_one_column_file_is_an_empty_record() {
        for data in [
            &b"a\n1\n\n2\n\n"[..],
            b"a\r\n1\r\n\r\n2\r\n\r\n",
            b"a\r1\r\r2\r\r",
        ] {
            let mut r = RecordReader::new(data, b',', Checkpoint::default(), Xxh3::new());
            let header = r.next_record().unwrap().unwrap();
            assert_eq!(header.line_no, 1);
            let mut r = r.blank_lines_are_records(true);
            let mut got = Vec::new();
            while let Some(info) = r.next_record().unwrap() {
                let fields: Vec<String> = r
                    .fields()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect();
                got.push((info.line_no, fields, r.raw().to_vec()));
            }
            let empty = || (vec![String::new()], vec![]);
            assert_eq!(
                got,
                [
                    (2, vec!["1".to_owned()], b"1".to_vec()),
                    (3, empty().0, empty().1),
                    (4, vec!["2".to_owned()], b"2".to_vec()),
                    (5, empty().0, empty().1),
                ],
                "{:?}",
                String::from_utf8_lossy(data)
            );
            assert_eq!(r.checkpoint().offset, data.len() as u64);
        }
        // Where there are several columns, blank lines are no records.
        let got = records(b"a,b\n1,2\n\n\n3,4\n", b',');
        let lines: Vec<u64> = got.iter().map(|(l, ..)| *l).collect();
        assert_eq!(lines, [1, 2, 5]);
    }

    #[test]
    fn records_ended_by_a_lone_cr_start_on_lines_of_their_own() {
        // Classic Mac files (Excel's "CSV (Macintosh)") end records with CR
        // alone, and a stray CR splits a record in two: every record must
        // still have a line of its own, since `import_errors` is keyed by
        // (job, line) and a second rejection on a line overwrites the first.
        let got = records(b"a,b\r1,x\r2,y\r\r3,z", b',');
        let lines: Vec<u64> = got.iter().map(|(l, ..)| *l).collect();
        assert_eq!(lines, [1, 2, 3, 5]);
        let got = records(b"a,b\n1,x\r2,y\r\n3,z\n", b',');
        let lines: Vec<u64> = got.iter().map(|(l, ..)| *l).collect();
        assert_eq!(lines, [1, 2, 3, 4]);
        // Quoting problems name lines counted the same way.
        assert_eq!(
            quoting(b"a,b\r1,\"x\r\ny\"z\r"),
            [
                (1, None),
                (2, Some(Malformed::TextAfterQuote { line_no: 3 }))
            ]
        );
        // A checkpoint between the CR and the LF of a CRLF (where a record
        // ends) resumes on the right line.
        let data = b"a,b\r\n1,2\r\n3,4";
        let at = records(data, b',')[0].2;
        assert_eq!(
            at,
            Checkpoint {
                offset: 4,
                line_no: 1
            }
        );
        let mut file = &data[..];
        let hash = hash_prefix(&mut file, at.offset).unwrap().unwrap();
        let mut r = RecordReader::new(file, b',', at, hash).after_cr(true);
        assert_eq!(r.next_record().unwrap().unwrap().line_no, 2);
        assert_eq!(r.next_record().unwrap().unwrap().line_no, 3);
    }
}
