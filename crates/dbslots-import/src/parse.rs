//! One CSV line in, one reading or one rejection out.
//!
//! # Implementation Details
//!
//! A record is one physical line: the file is read line by line (see
//! [`crate::source`]) so that every record has an exact line number and byte
//! offset, and a rejected line can be stored as it was. Within a line, fields
//! follow RFC 4180: separated by commas, optionally enclosed in double quotes,
//! with `""` standing for a quote inside a quoted field. A quoted field that
//! is not closed on its line, or that has text after its closing quote, is a
//! malformed line, not the start of a multi-line record.
//!
//! Every check runs before anything reaches SQL, and the values that pass are
//! put in canonical form (a `DATETIME` literal, a `DECIMAL` literal without
//! leading zeros), so the statement builder in [`crate::batch`] never has to
//! guess. The first problem found decides the reason; the order is: UTF-8,
//! quoting, column count, `meter_id`, `reading_at`, `kwh`.

use std::borrow::Cow;
use std::fmt;

/// The header every file starts with, as its three column names.
pub(crate) const COLUMNS: [&str; 3] = ["meter_id", "reading_at", "kwh"];

/// The longest meter id, in characters (the `meter_id` column is
/// `VARCHAR(32)`).
pub const MAX_METER_ID_CHARS: usize = 32;

/// Digits allowed before the decimal point of `kwh` (`DECIMAL(18,6)`).
pub(crate) const KWH_INT_DIGITS: usize = 12;

/// Digits allowed after the decimal point of `kwh` (`DECIMAL(18,6)`).
pub(crate) const KWH_FRAC_DIGITS: usize = 6;

/// How much of an offending value a rejection reason quotes.
const QUOTED_VALUE_CHARS: usize = 40;

/// A line that passed every check, in canonical form.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reading<'a> {
    /// The meter id, trimmed, 1 to 32 characters, no control characters.
    pub meter_id: Cow<'a, str>,
    /// `YYYY-MM-DD HH:MM:SS`.
    pub reading_at: [u8; 19],
    /// A non-negative decimal without leading zeros or sign.
    pub kwh: Kwh,
}

/// A canonical `kwh` value: at most 12 + 1 + 6 ASCII characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kwh {
    buf: [u8; KWH_INT_DIGITS + 1 + KWH_FRAC_DIGITS],
    len: u8,
}

impl Kwh {
    /// The value as text, for example `0.5` or `1234`.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and '.' are ever written to `buf`.
        std::str::from_utf8(&self.buf[..usize::from(self.len)])
            .expect("a Kwh holds only ASCII digits and '.'")
    }
}

impl fmt::Debug for Kwh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kwh({})", self.as_str())
    }
}

/// Why a line was rejected. The `Display` form is what `import_errors.reason`
/// holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reject {
    /// The line is longer than the reader keeps.
    LineTooLong { bytes: u64, max: usize },
    /// Bytes that are not UTF-8; `column` is 1-based.
    InvalidUtf8 { column: usize },
    /// A quoted field without its closing quote.
    UnterminatedQuote { field: usize },
    /// Text between a closing quote and the next comma.
    TextAfterQuote { field: usize },
    /// Not exactly three fields.
    WrongColumnCount { found: usize },
    /// `meter_id` is empty or blank.
    EmptyMeterId,
    /// `meter_id` is over [`MAX_METER_ID_CHARS`] characters.
    MeterIdTooLong { chars: usize },
    /// `meter_id` contains a control character.
    MeterIdControl,
    /// `reading_at` is not in either accepted form.
    TimestampFormat { value: String },
    /// `reading_at` has the right form but no such date or time exists.
    TimestampRange { value: String },
    /// `kwh` is not a decimal number.
    KwhNotANumber { value: String },
    /// `kwh` is below zero.
    KwhNegative { value: String },
    /// `kwh` has more integer digits than the column holds.
    KwhTooLarge { digits: usize },
    /// `kwh` has more decimal places than the column keeps.
    KwhTooPrecise { places: usize },
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::LineTooLong { bytes, max } => {
                write!(f, "line is {bytes} bytes long; at most {max} are accepted")
            }
            Reject::InvalidUtf8 { column } => {
                write!(f, "invalid UTF-8 at byte {column} of the line")
            }
            Reject::UnterminatedQuote { field } => write!(
                f,
                "field {field} opens a quote that is not closed on this line"
            ),
            Reject::TextAfterQuote { field } => write!(
                f,
                "field {field} has text after its closing quote (write \"\" for a quote inside quotes)"
            ),
            Reject::WrongColumnCount { found } => write!(
                f,
                "wrong column count: expected 3 (meter_id,reading_at,kwh), found {found}"
            ),
            Reject::EmptyMeterId => write!(f, "meter_id is empty"),
            Reject::MeterIdTooLong { chars } => write!(
                f,
                "meter_id is {chars} characters long; at most {MAX_METER_ID_CHARS} are allowed"
            ),
            Reject::MeterIdControl => write!(f, "meter_id contains a control character"),
            Reject::TimestampFormat { value } => write!(
                f,
                "reading_at \"{value}\" is not a timestamp (expected YYYY-MM-DD HH:MM:SS or YYYY-MM-DDTHH:MM:SS[Z])"
            ),
            Reject::TimestampRange { value } => write!(
                f,
                "reading_at \"{value}\" is not a valid date and time (years 1000 to 9999)"
            ),
            Reject::KwhNotANumber { value } => {
                write!(f, "kwh \"{value}\" is not a non-negative decimal number")
            }
            Reject::KwhNegative { value } => write!(f, "kwh \"{value}\" is negative"),
            Reject::KwhTooLarge { digits } => write!(
                f,
                "kwh has {digits} digits before the decimal point; at most {KWH_INT_DIGITS} fit"
            ),
            Reject::KwhTooPrecise { places } => write!(
                f,
                "kwh has {places} decimal places; at most {KWH_FRAC_DIGITS} are kept"
            ),
        }
    }
}

/// Checks the header line (without its line break). A UTF-8 byte order mark,
/// blanks around names and letter case are tolerated; anything else is an
/// `Err` quoting what was found.
pub(crate) fn check_header(line: &[u8]) -> Result<(), String> {
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    let ok = split_fields(&text).is_ok_and(|fields| {
        fields.len() == COLUMNS.len()
            && fields
                .iter()
                .zip(COLUMNS)
                .all(|(found, want)| trim(found).eq_ignore_ascii_case(want))
    });
    if ok { Ok(()) } else { Err(shorten(&text, 120)) }
}

/// Parses one data line (without its line break).
pub(crate) fn parse_line(line: &[u8]) -> Result<Reading<'_>, Reject> {
    let text = std::str::from_utf8(line).map_err(|e| Reject::InvalidUtf8 {
        column: e.valid_up_to() + 1,
    })?;
    let fields = split_fields(text)?;
    let [meter, reading_at, kwh] =
        <[Cow<'_, str>; 3]>::try_from(fields).map_err(|fields| Reject::WrongColumnCount {
            found: fields.len(),
        })?;
    let meter_id = meter_id(meter)?;
    let reading_at = parse_timestamp(trim(&reading_at))?;
    let kwh = parse_kwh(trim(&kwh))?;
    Ok(Reading {
        meter_id,
        reading_at,
        kwh,
    })
}

fn trim(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Splits a line into fields (RFC 4180 within one line).
fn split_fields(line: &str) -> Result<Vec<Cow<'_, str>>, Reject> {
    let bytes = line.as_bytes();
    let mut fields: Vec<Cow<'_, str>> = Vec::with_capacity(COLUMNS.len());
    let mut i = 0;
    loop {
        let number = fields.len() + 1;
        if bytes.get(i) == Some(&b'"') {
            let mut value = String::new();
            let mut seg = i + 1;
            let mut j = seg;
            loop {
                let Some(q) = bytes[j..].iter().position(|&b| b == b'"').map(|p| p + j) else {
                    return Err(Reject::UnterminatedQuote { field: number });
                };
                if bytes.get(q + 1) == Some(&b'"') {
                    value.push_str(&line[seg..=q]);
                    j = q + 2;
                    seg = j;
                } else {
                    value.push_str(&line[seg..q]);
                    i = q + 1;
                    break;
                }
            }
            fields.push(Cow::Owned(value));
            match bytes.get(i) {
                None => return Ok(fields),
                Some(b',') => i += 1,
                Some(_) => return Err(Reject::TextAfterQuote { field: number }),
            }
        } else {
            match bytes[i..].iter().position(|&b| b == b',') {
                Some(c) => {
                    fields.push(Cow::Borrowed(&line[i..i + c]));
                    i += c + 1;
                }
                None => {
                    fields.push(Cow::Borrowed(&line[i..]));
                    return Ok(fields);
                }
            }
        }
    }
}

fn meter_id(field: Cow<'_, str>) -> Result<Cow<'_, str>, Reject> {
    let trimmed = match field {
        Cow::Borrowed(s) => Cow::Borrowed(trim(s)),
        Cow::Owned(s) => Cow::Owned(trim(&s).to_owned()),
    };
    if trimmed.is_empty() {
        return Err(Reject::EmptyMeterId);
    }
    let chars = trimmed.chars().count();
    if chars > MAX_METER_ID_CHARS {
        return Err(Reject::MeterIdTooLong { chars });
    }
    if trimmed.chars().any(char::is_control) {
        return Err(Reject::MeterIdControl);
    }
    Ok(trimmed)
}

/// Parses `YYYY-MM-DD HH:MM:SS`, `YYYY-MM-DDTHH:MM:SS` or
/// `YYYY-MM-DDTHH:MM:SSZ` into the first form.
fn parse_timestamp(s: &str) -> Result<[u8; 19], Reject> {
    let format_err = || Reject::TimestampFormat { value: quoted(s) };
    let b = s.as_bytes();
    let b = match b {
        [rest @ .., b'Z'] if rest.get(10) == Some(&b'T') => rest,
        _ => b,
    };
    let Ok(b) = <&[u8; 19]>::try_from(b) else {
        return Err(format_err());
    };
    let shape_ok = b.iter().enumerate().all(|(i, &c)| match i {
        4 | 7 => c == b'-',
        10 => c == b' ' || c == b'T',
        13 | 16 => c == b':',
        _ => c.is_ascii_digit(),
    });
    if !shape_ok {
        return Err(format_err());
    }
    let num = |from: usize, to: usize| {
        b[from..to]
            .iter()
            .fold(0u32, |n, &c| n * 10 + u32::from(c - b'0'))
    };
    let (year, month, day) = (num(0, 4), num(5, 7), num(8, 10));
    let (hour, minute, second) = (num(11, 13), num(14, 16), num(17, 19));
    let valid = (1000..=9999).contains(&year)
        && (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second < 60;
    if !valid {
        return Err(Reject::TimestampRange { value: quoted(s) });
    }
    let mut out = *b;
    out[10] = b' ';
    Ok(out)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

/// Parses a non-negative decimal: optional sign, digits, optional point and
/// digits, at least one digit. `-0` is zero, not negative.
fn parse_kwh(s: &str) -> Result<Kwh, Reject> {
    let not_a_number = || Reject::KwhNotANumber { value: quoted(s) };
    let (negative, unsigned) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |p: &str| p.bytes().all(|c| c.is_ascii_digit());
    if int.len() + frac.len() == 0 || !all_digits(int) || !all_digits(frac) {
        return Err(not_a_number());
    }
    let int = int.trim_start_matches('0');
    let frac_significant = frac.trim_end_matches('0');
    if negative && !(int.is_empty() && frac_significant.is_empty()) {
        return Err(Reject::KwhNegative { value: quoted(s) });
    }
    if int.len() > KWH_INT_DIGITS {
        return Err(Reject::KwhTooLarge { digits: int.len() });
    }
    if frac_significant.len() > KWH_FRAC_DIGITS {
        return Err(Reject::KwhTooPrecise {
            places: frac_significant.len(),
        });
    }
    let mut kwh = Kwh {
        buf: [0; KWH_INT_DIGITS + 1 + KWH_FRAC_DIGITS],
        len: 0,
    };
    let mut push = |bytes: &[u8]| {
        let at = usize::from(kwh.len);
        kwh.buf[at..at + bytes.len()].copy_from_slice(bytes);
        kwh.len += bytes.len() as u8;
    };
    push(if int.is_empty() { b"0" } else { int.as_bytes() });
    if !frac_significant.is_empty() {
        push(b".");
        push(frac_significant.as_bytes());
    }
    Ok(kwh)
}

/// An offending value as a reason quotes it: control characters replaced,
/// at most [`QUOTED_VALUE_CHARS`] characters.
fn quoted(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    shorten(&clean, QUOTED_VALUE_CHARS)
}

/// At most `max` characters of `s`, with `...` when cut.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> (String, String, String) {
        let r = parse_line(line.as_bytes()).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        (
            r.meter_id.into_owned(),
            String::from_utf8(r.reading_at.to_vec()).unwrap(),
            r.kwh.as_str().to_owned(),
        )
    }

    fn err(line: &[u8]) -> Reject {
        match parse_line(line) {
            Ok(r) => panic!("{:?} was accepted as {r:?}", String::from_utf8_lossy(line)),
            Err(e) => e,
        }
    }

    #[test]
    fn accepts_both_timestamp_forms_and_normalizes() {
        assert_eq!(
            ok("m-1,2024-02-29 23:59:59,12.5"),
            ("m-1".into(), "2024-02-29 23:59:59".into(), "12.5".into())
        );
        assert_eq!(ok("m-1,2024-01-01T00:00:00,0").1, "2024-01-01 00:00:00");
        assert_eq!(ok("m-1,2024-01-01T00:00:00Z,0").1, "2024-01-01 00:00:00");
        assert_eq!(ok(" m 1 , 2024-01-01 00:00:00 , 007.250 ").2, "7.25");
        assert_eq!(ok("m,2024-01-01 00:00:00,.5").2, "0.5");
        assert_eq!(ok("m,2024-01-01 00:00:00,5.").2, "5");
        assert_eq!(ok("m,2024-01-01 00:00:00,-0.000").2, "0");
        assert_eq!(ok("m,2024-01-01 00:00:00,+3").2, "3");
        assert_eq!(ok("m,2024-01-01 00:00:00,1.1000000").2, "1.1");
    }

    #[test]
    fn quoted_fields() {
        assert_eq!(ok("\"a,\"\"b\"\"\",2024-01-01 00:00:00,\"1\"").0, "a,\"b\"");
        assert_eq!(
            err(b"\"abc,2024-01-01 00:00:00,1"),
            Reject::UnterminatedQuote { field: 1 }
        );
        assert_eq!(err(b"m,\"2024\"x,1"), Reject::TextAfterQuote { field: 2 });
    }

    #[test]
    fn rejects_every_kind_of_bad_line() {
        assert_eq!(
            err(b"m,2024-01-01 00:00:00"),
            Reject::WrongColumnCount { found: 2 }
        );
        assert_eq!(
            err(b"m,2024-01-01 00:00:00,1,"),
            Reject::WrongColumnCount { found: 4 }
        );
        assert_eq!(err(b""), Reject::WrongColumnCount { found: 1 });
        assert_eq!(
            err(b"m\xff,2024-01-01 00:00:00,1"),
            Reject::InvalidUtf8 { column: 2 }
        );
        assert_eq!(err(b" ,2024-01-01 00:00:00,1"), Reject::EmptyMeterId);
        assert_eq!(
            err(format!("{},2024-01-01 00:00:00,1", "x".repeat(33)).as_bytes()),
            Reject::MeterIdTooLong { chars: 33 }
        );
        // 32 characters that are 2 bytes each are fine.
        assert_eq!(
            ok(&format!("{},2024-01-01 00:00:00,1", "é".repeat(32))).0,
            "é".repeat(32)
        );
        assert_eq!(err(b"a\x07b,2024-01-01 00:00:00,1"), Reject::MeterIdControl);
        for ts in [
            "2024-01-01",
            "2024/01/01 00:00:00",
            "2024-01-01 00:00:00Z",
            "2024-01-01T00:00:00+01:00",
            "2024-01-01 00:00:00.5",
            "yesterday",
        ] {
            assert!(
                matches!(
                    err(format!("m,{ts},1").as_bytes()),
                    Reject::TimestampFormat { .. }
                ),
                "{ts}"
            );
        }
        for ts in [
            "2023-02-29 00:00:00",
            "2024-13-01 00:00:00",
            "2024-04-31 00:00:00",
            "2024-01-01 24:00:00",
            "0999-01-01 00:00:00",
            "2024-00-10 00:00:00",
        ] {
            assert!(
                matches!(
                    err(format!("m,{ts},1").as_bytes()),
                    Reject::TimestampRange { .. }
                ),
                "{ts}"
            );
        }
        for kwh in ["", "abc", "1e3", "1.2.3", "-", ".", "0x10", "NaN", "1 000"] {
            assert!(
                matches!(
                    err(format!("m,2024-01-01 00:00:00,{kwh}").as_bytes()),
                    Reject::KwhNotANumber { .. }
                ),
                "{kwh}"
            );
        }
        assert!(matches!(
            err(b"m,2024-01-01 00:00:00,-0.001"),
            Reject::KwhNegative { .. }
        ));
        assert_eq!(
            err(b"m,2024-01-01 00:00:00,1234567890123"),
            Reject::KwhTooLarge { digits: 13 }
        );
        assert_eq!(
            err(b"m,2024-01-01 00:00:00,0.1234567"),
            Reject::KwhTooPrecise { places: 7 }
        );
    }

    #[test]
    fn reasons_read_well_and_fit_the_column() {
        let long = format!("m,{},1", "9".repeat(500));
        let reason = err(long.as_bytes()).to_string();
        assert!(reason.len() < 255, "{reason}");
        assert!(reason.starts_with("reading_at \"999"), "{reason}");
        assert_eq!(
            Reject::WrongColumnCount { found: 2 }.to_string(),
            "wrong column count: expected 3 (meter_id,reading_at,kwh), found 2"
        );
    }

    proptest::proptest! {
        /// Any bytes at all: a reading in canonical form, or a reason that
        /// fits the `reason` column; never a panic.
        #[test]
        fn any_line_is_a_reading_or_a_reason(line in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            match parse_line(&line) {
                Ok(r) => {
                    proptest::prop_assert!(!r.meter_id.is_empty());
                    proptest::prop_assert!(r.meter_id.chars().count() <= MAX_METER_ID_CHARS);
                    proptest::prop_assert!(r.reading_at.iter().all(|b| b.is_ascii_digit() || b"- :".contains(b)));
                    proptest::prop_assert!(r.kwh.as_str().bytes().all(|b| b.is_ascii_digit() || b == b'.'));
                }
                Err(reason) => proptest::prop_assert!(reason.to_string().chars().count() <= 200),
            }
            let _ = check_header(&line);
        }

        /// Lines built from the accepted grammar are accepted, with the
        /// values they were built from.
        #[test]
        fn well_formed_lines_round_trip(
            meter in "[A-Za-z0-9_.-]{1,32}",
            (y, mo, d, h, mi, s) in (1000u32..=9999, 1u32..=12, 1u32..=28, 0u32..24, 0u32..60, 0u32..60),
            iso in proptest::bool::ANY,
            (int, frac) in (0u64..1_000_000_000_000, 0u32..1_000_000),
        ) {
            let sep = if iso { 'T' } else { ' ' };
            let line = format!("{meter},{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02},{int}.{frac:06}");
            let r = parse_line(line.as_bytes()).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            proptest::prop_assert_eq!(r.meter_id.as_ref(), meter.as_str());
            proptest::prop_assert_eq!(
                String::from_utf8(r.reading_at.to_vec()).unwrap(),
                format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
            );
            let frac_text = format!("{frac:06}");
            let frac_text = frac_text.trim_end_matches('0');
            let expected = if frac_text.is_empty() { int.to_string() } else { format!("{int}.{frac_text}") };
            proptest::prop_assert_eq!(r.kwh.as_str(), expected.as_str());
        }
    }

    #[test]
    fn header() {
        assert!(check_header(b"meter_id,reading_at,kwh").is_ok());
        assert!(check_header(b"\xEF\xBB\xBFMeter_Id , reading_at,\"kwh\"").is_ok());
        assert_eq!(check_header(b"id,when,value").unwrap_err(), "id,when,value");
        assert!(check_header(b"meter_id,reading_at").is_err());
        assert!(check_header(b"").is_err());
    }
}
