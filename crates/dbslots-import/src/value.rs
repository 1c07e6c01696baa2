//! One CSV field and its column in, one SQL literal or the reason it is
//! rejected out.
//!
//! # Implementation Details
//!
//! A value is accepted only if the server in strict mode would store it
//! exactly as written: nothing is rounded, truncated, padded away or
//! guessed. What each type accepts (the user-facing list is in the crate
//! documentation):
//!
//! * integers: an optional sign and decimal digits, inside the column's
//!   signed or unsigned range; `TINYINT(1)` (`BOOLEAN`) also takes `true`
//!   and `false`;
//! * `DECIMAL(p,s)`: at most `p - s` integer digits and `s` decimals
//!   (trailing zeros beyond `s` are fine: nothing is lost);
//! * `FLOAT`/`DOUBLE`: a finite decimal number (exponent allowed) within the
//!   type's range, stored as the nearest binary value like the server does;
//! * text: valid UTF-8 that the column's character set can hold, at most the
//!   column's length in characters (`CHAR`, `VARCHAR`) or bytes (`TEXT`
//!   types);
//! * `ENUM`/`SET`: members (ASCII case ignored on case-insensitive
//!   collations), written in the column's own spelling;
//! * `DATE`, `DATETIME(n)`, `TIMESTAMP(n)`: real calendar dates from 1000 to
//!   9999, at most `n` fractional digits, an optional offset (`Z`,
//!   `+01:00`) converted to the job's time zone; a `TIMESTAMP` must exist
//!   exactly once in that zone and lie in 1970-01-01 00:00:01 to
//!   2038-01-19 03:14:07 UTC;
//! * `JSON`: valid JSON.
//!
//! Values of non-text columns may have spaces around them. In a nullable
//! column an empty field and `\N` are NULL; in a NOT NULL text, binary or
//! `SET` column an empty field is the empty value, and in any other NOT
//! NULL column it is rejected.
//!
//! Literals are safe by construction: numbers and timestamps reach SQL only
//! as validated digits (a timestamp as the number `YYYYMMDDhhmmss.ffffff`,
//! which the server converts much faster than a string), and text goes
//! through [`push_text`].

use std::fmt::Write as _;

use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};

/// One column of the target table.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub name: String,
    pub kind: Kind,
    pub nullable: bool,
    /// Whether a row without this column gets a value from the server.
    pub has_default: bool,
    pub auto_increment: bool,
    pub generated: bool,
    /// The key a job's writes are idempotent by, when this nullable column
    /// is part of it: NULL is refused here, because NULLs never collide
    /// and a second import of the file would add the row again.
    pub null_breaks_key: Option<String>,
}

/// A character set the importer can check text against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Charset {
    /// Every Unicode scalar value.
    Utf8mb4,
    /// The Basic Multilingual Plane (`utf8`, `utf8mb3`).
    Utf8mb3,
    /// MySQL's `latin1`, which is Windows-1252.
    Latin1,
    /// 7-bit ASCII.
    Ascii,
    /// Anything else: rejected as unsupported.
    Other,
}

impl Charset {
    pub fn from_name(name: &str) -> Charset {
        match name {
            "utf8mb4" => Charset::Utf8mb4,
            "utf8" | "utf8mb3" => Charset::Utf8mb3,
            "latin1" => Charset::Latin1,
            "ascii" => Charset::Ascii,
            _ => Charset::Other,
        }
    }

    fn holds(self, c: char) -> bool {
        match self {
            Charset::Utf8mb4 => true,
            Charset::Utf8mb3 => (c as u32) < 0x10000,
            Charset::Ascii => c.is_ascii(),
            Charset::Latin1 => {
                let u = c as u32;
                u < 0x80
                    || (0xA0..=0xFF).contains(&u)
                    || matches!(u, 0x81 | 0x8D | 0x8F | 0x90 | 0x9D)
                    || "€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ".contains(c)
            }
            Charset::Other => false,
        }
    }

    /// Bytes `c` takes in this character set.
    fn len(self, c: char) -> usize {
        match self {
            Charset::Latin1 | Charset::Ascii => 1,
            _ => c.len_utf8(),
        }
    }
}

/// What a column accepts.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Int {
        min: i128,
        max: i128,
        boolean: bool,
    },
    Decimal {
        int_digits: usize,
        frac_digits: usize,
        unsigned: bool,
    },
    Float {
        single: bool,
        unsigned: bool,
    },
    Text {
        max_chars: Option<u64>,
        max_bytes: Option<u64>,
        charset: Charset,
        /// `CHAR(n)`: the server pads values with spaces and strips
        /// trailing spaces on reading, so a value's own are lost.
        padded: bool,
    },
    Binary {
        max_bytes: u64,
        /// `BINARY(n)`: the server pads shorter values with zero bytes.
        padded: bool,
    },
    Enum {
        members: Vec<String>,
        ci: bool,
    },
    Set {
        members: Vec<String>,
        ci: bool,
    },
    Date,
    DateTime {
        fsp: usize,
    },
    Timestamp {
        fsp: usize,
    },
    Year,
    Json,
    /// A type the importer does not validate (the column type, as text).
    Unsupported(String),
}

impl Kind {
    /// An integer kind from `DATA_TYPE` and `COLUMN_TYPE`.
    pub fn int(data_type: &str, column_type: &str) -> Kind {
        let bits = match data_type {
            "tinyint" => 8,
            "smallint" => 16,
            "mediumint" => 24,
            "int" | "integer" => 32,
            _ => 64,
        };
        if column_type.contains("unsigned") {
            Kind::Int {
                min: 0,
                max: (1i128 << bits) - 1,
                boolean: false,
            }
        } else {
            Kind::Int {
                min: -(1i128 << (bits - 1)),
                max: (1i128 << (bits - 1)) - 1,
                boolean: column_type.starts_with("tinyint(1)"),
            }
        }
    }

    /// The kind of a column as `information_schema.COLUMNS` describes it
    /// (`data_type` lower-cased, `column_type` as the server spells it:
    /// ENUM and SET members keep their case).
    pub fn from_schema(
        data_type: &str,
        raw_column_type: &str,
        chars: Option<u64>,
        octets: Option<u64>,
        charset: Option<Charset>,
        ci: bool,
    ) -> Kind {
        let lower = raw_column_type.to_lowercase();
        let column_type = lower.as_str();
        let numbers = || -> Vec<usize> {
            column_type
                .split_once('(')
                .and_then(|(_, rest)| rest.split_once(')'))
                .map(|(inside, _)| {
                    inside
                        .split(',')
                        .filter_map(|n| n.trim().parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let unsigned = column_type.contains("unsigned");
        match data_type {
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => {
                Kind::int(data_type, column_type)
            }
            "decimal" | "numeric" => {
                let n = numbers();
                let precision = n.first().copied().unwrap_or(10);
                let scale = n.get(1).copied().unwrap_or(0);
                Kind::Decimal {
                    int_digits: precision.saturating_sub(scale),
                    frac_digits: scale,
                    unsigned,
                }
            }
            "float" | "double" | "real" if numbers().len() < 2 => Kind::Float {
                single: data_type == "float",
                unsigned,
            },
            "char" | "varchar" => match charset {
                Some(
                    cs @ (Charset::Utf8mb4 | Charset::Utf8mb3 | Charset::Latin1 | Charset::Ascii),
                ) => Kind::Text {
                    max_chars: chars,
                    max_bytes: None,
                    charset: cs,
                    padded: data_type == "char",
                },
                _ => Kind::Unsupported(column_type.to_owned()),
            },
            "tinytext" | "text" | "mediumtext" | "longtext" => match charset {
                Some(
                    cs @ (Charset::Utf8mb4 | Charset::Utf8mb3 | Charset::Latin1 | Charset::Ascii),
                ) => Kind::Text {
                    max_chars: None,
                    max_bytes: octets,
                    charset: cs,
                    padded: false,
                },
                _ => Kind::Unsupported(column_type.to_owned()),
            },
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                Kind::Binary {
                    max_bytes: octets.or(chars).unwrap_or(0),
                    padded: data_type == "binary",
                }
            }
            "enum" | "set" => {
                let members = members(raw_column_type);
                if data_type == "enum" {
                    Kind::Enum { members, ci }
                } else {
                    Kind::Set { members, ci }
                }
            }
            "date" => Kind::Date,
            "datetime" => Kind::DateTime {
                fsp: numbers().first().copied().unwrap_or(0),
            },
            "timestamp" => Kind::Timestamp {
                fsp: numbers().first().copied().unwrap_or(0),
            },
            "year" => Kind::Year,
            "json" => Kind::Json,
            _ => Kind::Unsupported(column_type.to_owned()),
        }
    }

    fn is_texty(&self) -> bool {
        matches!(
            self,
            Kind::Text { .. } | Kind::Binary { .. } | Kind::Set { .. }
        )
    }
}

/// The members of `enum('a','b''c')` or `set(...)`.
fn members(column_type: &str) -> Vec<String> {
    let Some(start) = column_type.find('(') else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut chars = column_type[start + 1..].chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut member = String::new();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    member.push('\'');
                } else {
                    break;
                }
            } else {
                member.push(c);
            }
        }
        out.push(member);
    }
    out
}

/// The job's time zone: how offsets are converted and how local times are
/// read.
#[derive(Debug, Clone)]
pub(crate) struct Zone {
    tz: TimeZone,
    /// What `SET time_zone` gets: `+00:00`, `+01:00` or an IANA name.
    session: String,
}

impl Zone {
    /// `UTC`, a fixed offset (`+01:00`, `-05:30`) or an IANA name
    /// (`Europe/Berlin`).
    pub fn parse(name: &str) -> Result<Zone, String> {
        if name.eq_ignore_ascii_case("utc") || name == "Z" || name == "+00:00" {
            return Ok(Zone {
                tz: TimeZone::UTC,
                session: "+00:00".into(),
            });
        }
        if let Some(seconds) = parse_offset(name.as_bytes()) {
            let offset = Offset::from_seconds(seconds).map_err(|e| e.to_string())?;
            // The server takes an offset only as `+HH:MM`: `+0100` and
            // `+01` would be refused by `SET time_zone` and fail the job.
            let minutes = seconds.unsigned_abs() / 60;
            let sign = if seconds < 0 { '-' } else { '+' };
            return Ok(Zone {
                tz: TimeZone::fixed(offset),
                session: format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60),
            });
        }
        match TimeZone::get(name) {
            Ok(tz) => Ok(Zone {
                tz,
                session: name.to_owned(),
            }),
            Err(e) => Err(format!(
                "unknown time zone {name:?} ({e}); use UTC, an offset like +01:00 or an IANA name like Europe/Berlin"
            )),
        }
    }

    /// The value for the session's `time_zone`.
    pub fn session(&self) -> &str {
        &self.session
    }
}

/// `+HH:MM`, `-HH:MM`, `+HHMM` or `+HH` as seconds east of UTC.
fn parse_offset(s: &[u8]) -> Option<i32> {
    let (sign, rest) = match s.first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let digits = |d: &[u8]| -> Option<i32> {
        if d.len() == 2 && d.iter().all(u8::is_ascii_digit) {
            Some(i32::from(d[0] - b'0') * 10 + i32::from(d[1] - b'0'))
        } else {
            None
        }
    };
    let (h, m) = match rest.len() {
        2 => (digits(rest)?, 0),
        4 => (digits(&rest[..2])?, digits(&rest[2..])?),
        5 if rest[2] == b':' => (digits(&rest[..2])?, digits(&rest[3..])?),
        _ => return None,
    };
    if h > 14 || m > 59 {
        return None;
    }
    Some(sign * (h * 3600 + m * 60))
}

/// Why a field was rejected.
pub(crate) type Reason = String;

/// How validated values are written: as SQL literals of a multi-row
/// `INSERT`, or as fields of the stream a `LOAD DATA LOCAL INFILE` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// SQL literals, see [`push_text`].
    Sql,
    /// `LOAD DATA`'s default format with `CHARACTER SET utf8mb4`: fields
    /// separated by tabs, rows ended by LF, `\N` for NULL, and a backslash
    /// before every backslash, tab, LF and NUL in a value (see
    /// [`push_load_text`]). Dates and times are written `YYYY-MM-DD
    /// hh:mm:ss.f`. Never used for binary columns (see [`Form::pick`]).
    Load,
}

impl Form {
    /// [`Form::Load`] when every column can be written in it (binary
    /// columns cannot: the stream is UTF-8 text), else [`Form::Sql`].
    pub fn pick(columns: &[Column]) -> Form {
        if columns
            .iter()
            .any(|c| matches!(c.kind, Kind::Binary { .. } | Kind::Unsupported(_)))
        {
            Form::Sql
        } else {
            Form::Load
        }
    }

    /// What opens a row.
    pub fn open_row(self, out: &mut String) {
        if self == Form::Sql {
            out.push('(');
        }
    }

    /// What separates two fields of a row.
    pub fn separate(self, out: &mut String) {
        out.push(if self == Form::Sql { ',' } else { '\t' });
    }

    /// What closes a row.
    pub fn close_row(self, out: &mut String) {
        if self == Form::Sql {
            out.push(')');
        }
    }

    fn text(self, out: &mut String, s: &str) {
        match self {
            Form::Sql => push_text(out, s),
            Form::Load => push_load_text(out, s),
        }
    }
}

/// Appends the value for `field` in `column` to `out`, in `form`.
pub(crate) fn write(
    column: &Column,
    field: &[u8],
    zone: &Zone,
    form: Form,
    sql: &mut String,
) -> Result<(), Reason> {
    if field == b"\\N" || (field.is_empty() && (column.nullable || !column.kind.is_texty())) {
        if let Some(key) = &column.null_breaks_key {
            return Err(format!(
                "NULL in a column of the key {key}, which makes importing the file twice update rows rather than add them again (NULLs never match); give it a value, or enqueue with EnqueueOptions::no_key"
            ));
        }
        if column.nullable {
            sql.push_str(if form == Form::Sql { "NULL" } else { "\\N" });
            return Ok(());
        }
        return Err(if field.is_empty() {
            "empty value in a NOT NULL column".into()
        } else {
            "\\N (NULL) in a NOT NULL column".into()
        });
    }
    if let Kind::Binary { max_bytes, padded } = column.kind {
        if field.len() as u64 > max_bytes {
            return Err(format!(
                "{} bytes long; the column holds at most {max_bytes}",
                field.len()
            ));
        }
        if padded && (field.len() as u64) < max_bytes {
            return Err(format!(
                "{} bytes long; BINARY({max_bytes}) would pad it with zero bytes to {max_bytes} (use VARBINARY to store it as it is)",
                field.len()
            ));
        }
        if form == Form::Load {
            // `Form::pick` never picks it for a binary column.
            return Err("a binary value cannot go into a LOAD DATA stream".into());
        }
        push_hex(sql, field, "");
        return Ok(());
    }
    let Ok(text) = std::str::from_utf8(field) else {
        let valid = std::str::from_utf8(field)
            .err()
            .map_or(0, |e| e.valid_up_to());
        return Err(format!("invalid UTF-8 at byte {} of the value", valid + 1));
    };
    let trimmed = text.trim_matches([' ', '\t']);
    match &column.kind {
        Kind::Int { min, max, boolean } => {
            let value = if *boolean && trimmed.eq_ignore_ascii_case("true") {
                1
            } else if *boolean && trimmed.eq_ignore_ascii_case("false") {
                0
            } else {
                parse_int(trimmed).ok_or_else(|| format!("{} is not an integer", quoted(text)))?
            };
            if value < *min || value > *max {
                return Err(format!("{} is out of range ({min} to {max})", quoted(text)));
            }
            push_int(sql, value);
        }
        Kind::Decimal {
            int_digits,
            frac_digits,
            unsigned,
        } => write_decimal(sql, trimmed, *int_digits, *frac_digits, *unsigned)
            .map_err(|why| format!("{} {why}", quoted(text)))?,
        Kind::Float { single, unsigned } => {
            if !is_float_syntax(trimmed) {
                return Err(format!("{} is not a number", quoted(text)));
            }
            let v: f64 = trimmed
                .parse()
                .map_err(|_| format!("{} is not a number", quoted(text)))?;
            let limit = if *single {
                f64::from(f32::MAX)
            } else {
                f64::MAX
            };
            if !v.is_finite() || v.abs() > limit {
                return Err(format!("{} is out of range", quoted(text)));
            }
            if *unsigned && v < 0.0 {
                return Err(format!(
                    "{} is negative in an UNSIGNED column",
                    quoted(text)
                ));
            }
            if form == Form::Load && is_short_decimal(trimmed) {
                // The server's correctly rounded conversion of these digits
                // is `v` (see `is_short_decimal`): no need to print it.
                sql.push_str(trimmed);
            } else {
                write!(sql, "{v:e}").expect("writing to a String cannot fail");
            }
        }
        Kind::Text {
            max_chars,
            max_bytes,
            charset,
            padded,
        } => {
            if *padded && text.ends_with(' ') {
                return Err(
                    "trailing spaces in a CHAR column, which drops them (use VARCHAR to keep them)"
                        .into(),
                );
            }
            let mut chars = 0u64;
            let mut bytes = 0u64;
            for c in text.chars() {
                if !charset.holds(c) {
                    return Err(format!(
                        "character {:?} cannot be stored in the column's character set",
                        c
                    ));
                }
                chars += 1;
                bytes += charset.len(c) as u64;
            }
            if let Some(max) = max_chars.filter(|&m| chars > m) {
                return Err(format!(
                    "{chars} characters long; the column holds at most {max}"
                ));
            }
            if let Some(max) = max_bytes.filter(|&m| bytes > m) {
                return Err(format!(
                    "{bytes} bytes long; the column holds at most {max}"
                ));
            }
            form.text(sql, text);
        }
        Kind::Enum { members, ci } => {
            let member = find_member(members, *ci, trimmed)
                .ok_or_else(|| format!("{} is not one of the column's values", quoted(text)))?;
            form.text(sql, member);
        }
        Kind::Set { members, ci } => {
            let mut canonical = String::new();
            if !trimmed.is_empty() {
                for part in trimmed.split(',') {
                    let member = find_member(members, *ci, part).ok_or_else(|| {
                        format!("{} is not one of the column's values", quoted(part))
                    })?;
                    if !canonical.is_empty() {
                        canonical.push(',');
                    }
                    canonical.push_str(member);
                }
            }
            form.text(sql, &canonical);
        }
        Kind::Date => {
            let t = parse_datetime(trimmed)
                .filter(|t| t.time.is_none() && t.offset.is_none())
                .ok_or_else(|| format!("{} is not a date (YYYY-MM-DD)", quoted(text)))?;
            check_date(&t).map_err(|why| format!("{} {why}", quoted(text)))?;
            push_date(sql, (t.year, t.month, t.day), form);
        }
        Kind::DateTime { fsp } => {
            write_datetime(sql, trimmed, *fsp, zone, false, form)
                .map_err(|why| format!("{} {why}", quoted(text)))?;
        }
        Kind::Timestamp { fsp } => {
            write_datetime(sql, trimmed, *fsp, zone, true, form)
                .map_err(|why| format!("{} {why}", quoted(text)))?;
        }
        Kind::Year => {
            let year = parse_int(trimmed)
                .filter(|y| trimmed.len() == 4 && (1901..=2155).contains(y))
                .ok_or_else(|| format!("{} is not a year from 1901 to 2155", quoted(text)))?;
            push_int(sql, year);
        }
        Kind::Json => {
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
                return Err(format!("not valid JSON ({e})"));
            }
            form.text(sql, text);
        }
        // Taken care of above, before the UTF-8 check.
        Kind::Binary { .. } => push_hex(sql, field, ""),
        Kind::Unsupported(ty) => return Err(format!("the column's type {ty} is not supported")),
    }
    Ok(())
}

/// Appends an integer in decimal.
fn push_int(out: &mut String, value: i128) {
    if value < 0 {
        out.push('-');
    }
    let mut n = value.unsigned_abs();
    let mut digits = [0u8; 40];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// Appends `0` to `99` as two digits.
fn push_two_digits(out: &mut String, n: i8) {
    let n = n.clamp(0, 99) as u8;
    out.push(char::from(b'0' + n / 10));
    out.push(char::from(b'0' + n % 10));
}

/// Appends a date of the years 1000 to 9999: `YYYYMMDD` (a number) in
/// [`Form::Sql`], `YYYY-MM-DD` in [`Form::Load`].
fn push_date(out: &mut String, (year, month, day): (i16, i8, i8), form: Form) {
    let year = year.clamp(0, 9999);
    push_two_digits(out, (year / 100) as i8);
    push_two_digits(out, (year % 100) as i8);
    for part in [month, day] {
        if form == Form::Load {
            out.push('-');
        }
        push_two_digits(out, part);
    }
}

/// Whether `s` is `-?D+(.D+)?` with at most 15 digits: such a decimal is
/// an integer below 2^53 divided by an exact power of ten, so any
/// correctly rounding conversion (the server's, Rust's) yields the same
/// double from it as from the shortest form of that double.
fn is_short_decimal(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match digits.split_once('.') {
        Some((int, frac)) if !frac.is_empty() => (int, frac),
        Some(_) => return false,
        None => (digits, ""),
    };
    !int.is_empty()
        && int.len() + frac.len() <= 15
        && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
}

fn find_member<'m>(members: &'m [String], ci: bool, value: &str) -> Option<&'m String> {
    members.iter().find(|m| m.as_str() == value).or_else(|| {
        ci.then(|| members.iter().find(|m| m.eq_ignore_ascii_case(value)))
            .flatten()
    })
}

fn parse_int(s: &str) -> Option<i128> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || digits.len() > 30 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn is_float_syntax(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = (!int.is_empty() || !frac.is_empty()) && digits(int) && digits(frac);
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.len() <= 5 && digits(e)
    });
    mantissa_ok && exponent_ok
}

fn write_decimal(
    sql: &mut String,
    s: &str,
    int_digits: usize,
    frac_digits: usize,
    unsigned: bool,
) -> Result<(), String> {
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return Err("is not a decimal number".into());
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    if int.len() > int_digits {
        return Err(format!(
            "has {} digits before the decimal point; the column holds {int_digits}",
            int.len()
        ));
    }
    if frac.len() > frac_digits {
        return Err(format!(
            "has {} decimal places; the column keeps {frac_digits} and would round it",
            frac.len()
        ));
    }
    let zero = int.is_empty() && frac.is_empty();
    if negative && unsigned && !zero {
        return Err("is negative in an UNSIGNED column".into());
    }
    if negative && !zero {
        sql.push('-');
    }
    sql.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        sql.push('.');
        sql.push_str(frac);
    }
    Ok(())
}

/// A date and time as written in the file.
struct Written<'a> {
    year: i16,
    month: i8,
    day: i8,
    /// Hour, minute, second and the fractional digits.
    time: Option<(i8, i8, i8, &'a str)>,
    /// Seconds east of UTC, when the value names an offset.
    offset: Option<i32>,
}

/// `YYYY-MM-DD`, optionally followed by ` hh:mm:ss[.f…]` or
/// `Thh:mm:ss[.f…]`, optionally followed by `Z` or an offset.
fn parse_datetime(s: &str) -> Option<Written<'_>> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i32> {
        let d = b.get(range)?;
        d.iter().try_fold(0i32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + i32::from(c - b'0'))
        })
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let mut t = Written {
        year: num(0..4)? as i16,
        month: num(5..7)? as i8,
        day: num(8..10)? as i8,
        time: None,
        offset: None,
    };
    if b.len() == 10 {
        return Some(t);
    }
    if !(b[10] == b' ' || b[10] == b'T') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let mut end = 19;
    while end < b.len() && b[end].is_ascii_digit() {
        end += 1;
    }
    let frac = if end == 19 && b.get(19) == Some(&b'.') {
        end = 20;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        if end == 20 {
            return None;
        }
        &s[20..end]
    } else if end == 19 {
        ""
    } else {
        return None;
    };
    t.time = Some((
        num(11..13)? as i8,
        num(14..16)? as i8,
        num(17..19)? as i8,
        frac,
    ));
    let rest = &b[end..];
    if rest.is_empty() {
        return Some(t);
    }
    t.offset = Some(if rest == b"Z" || rest == b"z" {
        0
    } else {
        parse_offset(rest)?
    });
    Some(t)
}

fn days_in_month(year: i16, month: i8) -> i8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

fn check_date(t: &Written<'_>) -> Result<(), String> {
    if !(1000..=9999).contains(&t.year) {
        return Err("is outside the years 1000 to 9999".into());
    }
    if !(1..=12).contains(&t.month) || t.day < 1 || t.day > days_in_month(t.year, t.month) {
        return Err("is not a real calendar date".into());
    }
    if let Some((h, m, s, _)) = t.time
        && (h > 23 || m > 59 || s > 59)
    {
        return Err("is not a real time of day".into());
    }
    Ok(())
}

/// The earliest and latest `TIMESTAMP` values, in seconds since the epoch.
const TIMESTAMP_RANGE: std::ops::RangeInclusive<i64> = 1..=2_147_483_647;

fn write_datetime(
    sql: &mut String,
    s: &str,
    fsp: usize,
    zone: &Zone,
    timestamp: bool,
    form: Form,
) -> Result<(), String> {
    let t = parse_datetime(s).ok_or(
        "is not a date and time (YYYY-MM-DD hh:mm:ss[.fraction], optionally with T, Z or an offset like +01:00)",
    )?;
    check_date(&t)?;
    let (h, mi, sec, frac) = t.time.unwrap_or((0, 0, 0, ""));
    let frac = frac.trim_end_matches('0');
    if frac.len() > fsp {
        return Err(format!(
            "has {} fractional digits; the column keeps {fsp} and would round it",
            frac.len()
        ));
    }
    let simple = t.offset.is_none() && (!timestamp || zone.tz == TimeZone::UTC);
    let local = if simple {
        (t.year, t.month, t.day, h, mi, sec)
    } else {
        let dt = DateTime::new(t.year, t.month, t.day, h, mi, sec, 0)
            .map_err(|e| format!("is not a valid date and time ({e})"))?;
        let instant = match t.offset {
            Some(seconds) => {
                let offset = Offset::from_seconds(seconds).map_err(|e| e.to_string())?;
                offset
                    .to_timestamp(dt)
                    .map_err(|e| format!("is out of range ({e})"))?
            }
            None => match zone.tz.to_ambiguous_timestamp(dt).offset() {
                AmbiguousOffset::Unambiguous { offset } => offset
                    .to_timestamp(dt)
                    .map_err(|e| format!("is out of range ({e})"))?,
                AmbiguousOffset::Gap { .. } => {
                    return Err(format!(
                        "does not exist in time zone {} (skipped by a clock change); write it with an offset",
                        zone.session
                    ));
                }
                AmbiguousOffset::Fold { .. } => {
                    return Err(format!(
                        "is ambiguous in time zone {} (repeated by a clock change); write it with an offset",
                        zone.session
                    ));
                }
            },
        };
        if timestamp && !TIMESTAMP_RANGE.contains(&instant.as_second()) {
            return Err(
                "is outside the TIMESTAMP range 1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC"
                    .into(),
            );
        }
        let local = zone.tz.to_datetime(instant);
        if timestamp
            && !matches!(
                zone.tz.to_ambiguous_timestamp(local).offset(),
                AmbiguousOffset::Unambiguous { .. }
            )
        {
            return Err(format!(
                "falls in an hour that time zone {} repeats, so the session cannot name it exactly; import with EnqueueOptions::time_zone UTC",
                zone.session
            ));
        }
        if !(1000..=9999).contains(&local.year()) {
            return Err("is outside the years 1000 to 9999 once converted".into());
        }
        (
            local.year(),
            local.month(),
            local.day(),
            local.hour(),
            local.minute(),
            local.second(),
        )
    };
    if timestamp && simple {
        let dt = DateTime::new(local.0, local.1, local.2, local.3, local.4, local.5, 0)
            .map_err(|e| format!("is not a valid date and time ({e})"))?;
        let seconds = Offset::UTC
            .to_timestamp(dt)
            .map_err(|e| format!("is out of range ({e})"))?
            .as_second();
        if !TIMESTAMP_RANGE.contains(&seconds) {
            return Err(
                "is outside the TIMESTAMP range 1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC"
                    .into(),
            );
        }
    }
    push_date(sql, (local.0, local.1, local.2), form);
    if form == Form::Load {
        sql.push(' ');
    }
    for (i, part) in [local.3, local.4, local.5].into_iter().enumerate() {
        if i > 0 && form == Form::Load {
            sql.push(':');
        }
        push_two_digits(sql, part);
    }
    if !frac.is_empty() {
        sql.push('.');
        sql.push_str(frac);
    }
    Ok(())
}

/// A value as a rejection reason quotes it: at most 40 characters, control
/// characters escaped.
fn quoted(s: &str) -> String {
    let short: String = s.chars().take(40).collect();
    let more = if short.len() < s.len() { "…" } else { "" };
    format!("\"{}{more}\"", short.escape_debug())
}

/// Appends `s` as an SQL string literal: between single quotes when every
/// byte is printable ASCII other than `'` and `\` (which reads the same
/// under every `sql_mode` and connection character set), otherwise as a
/// hexadecimal literal with a character set introducer, `_utf8mb4 X'...'`,
/// which needs no escaping at all.
pub(crate) fn push_text(sql: &mut String, s: &str) {
    let plain = s
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'\'' && b != b'\\');
    if plain {
        sql.push('\'');
        sql.push_str(s);
        sql.push('\'');
    } else {
        push_hex(sql, s.as_bytes(), "_utf8mb4 ");
    }
}

/// Appends `s` as a field of a [`Form::Load`] stream: a backslash before
/// every backslash, and tab, LF and NUL as `\t`, `\n` and `\0`, so that the
/// server reads back exactly `s` (`\N` alone would be NULL; escaped it is
/// the text `\N`).
pub(crate) fn push_load_text(out: &mut String, s: &str) {
    let mut rest = s;
    while let Some(at) = rest.find(['\\', '\t', '\n', '\0']) {
        out.push_str(&rest[..at]);
        out.push_str(match rest.as_bytes()[at] {
            b'\\' => "\\\\",
            b'\t' => "\\t",
            b'\n' => "\\n",
            _ => "\\0",
        });
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
}

fn push_hex(sql: &mut String, bytes: &[u8], introducer: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    sql.reserve(bytes.len() * 2 + 14);
    sql.push_str(introducer);
    sql.push_str("X'");
    for b in bytes {
        sql.push(char::from(HEX[usize::from(b >> 4)]));
        sql.push(char::from(HEX[usize::from(b & 15)]));
    }
    sql.push('\'');
}

/// `s` cut to at most `max` bytes on a character boundary, with `…` when
/// cut.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(kind: Kind, nullable: bool) -> Column {
        Column {
            name: "c".into(),
            kind,
            nullable,
            has_default: nullable,
            auto_increment: false,
            generated: false,
            null_breaks_key: None,
        }
    }

    fn lit(kind: &Kind, nullable: bool, zone: &str, field: &str) -> Result<String, String> {
        written(kind, nullable, zone, field, Form::Sql)
    }

    fn written(
        kind: &Kind,
        nullable: bool,
        zone: &str,
        field: &str,
        form: Form,
    ) -> Result<String, String> {
        let mut sql = String::new();
        write(
            &col(kind.clone(), nullable),
            field.as_bytes(),
            &Zone::parse(zone).unwrap(),
            form,
            &mut sql,
        )?;
        Ok(sql)
    }

    #[test]
    fn the_load_form_escapes_text_and_spells_dates_out() {
        let text = Kind::from_schema(
            "varchar",
            "varchar(20)",
            Some(20),
            Some(80),
            Some(Charset::Utf8mb4),
            true,
        );
        let load = |kind: &Kind, nullable: bool, field: &str| {
            written(kind, nullable, "UTC", field, Form::Load)
        };
        assert_eq!(
            load(&text, false, "a\tb\nc\\d\0é").unwrap(),
            "a\\tb\\nc\\\\d\\0é"
        );
        assert_eq!(
            load(&text, false, "\\N").unwrap_err(),
            "\\N (NULL) in a NOT NULL column"
        );
        assert_eq!(load(&text, true, "\\N").unwrap(), "\\N");
        assert_eq!(load(&text, true, "").unwrap(), "\\N");
        assert_eq!(load(&text, false, "").unwrap(), "");
        assert_eq!(load(&text, false, "'x'").unwrap(), "'x'");
        let dt = Kind::from_schema("datetime", "datetime(3)", None, None, None, true);
        assert_eq!(
            load(&dt, false, "2024-06-01T10:00:00.120Z").unwrap(),
            "2024-06-01 10:00:00.12"
        );
        assert_eq!(
            written(
                &dt,
                false,
                "+02:00",
                "2024-06-01 10:00:00+00:00",
                Form::Load
            )
            .unwrap(),
            "2024-06-01 12:00:00"
        );
        let date = Kind::from_schema("date", "date", None, None, None, true);
        assert_eq!(load(&date, false, " 2024-02-29 ").unwrap(), "2024-02-29");
        assert_eq!(lit(&date, false, "UTC", "2024-02-29").unwrap(), "20240229");
        let double = Kind::from_schema("double", "double", None, None, None, true);
        assert_eq!(load(&double, false, " -12.0500 ").unwrap(), "-12.0500");
        assert_eq!(load(&double, false, "0.1").unwrap(), "0.1");
        // Longer, exponents, a sign or a bare point: the shortest form.
        assert_eq!(load(&double, false, "+1.5").unwrap(), "1.5e0");
        assert_eq!(load(&double, false, "1.").unwrap(), "1e0");
        assert_eq!(load(&double, false, "2e3").unwrap(), "2e3");
        assert_eq!(
            load(&double, false, "0.12345678901234567").unwrap(),
            "1.2345678901234566e-1"
        );
        let int = Kind::from_schema("bigint", "bigint(20)", None, None, None, true);
        for (field, out) in [
            ("-9223372036854775808", "-9223372036854775808"),
            ("+007", "7"),
            ("-0", "0"),
            ("0", "0"),
        ] {
            assert_eq!(load(&int, false, field).unwrap(), out);
            assert_eq!(lit(&int, false, "UTC", field).unwrap(), out);
        }
        let bin = Kind::from_schema("varbinary", "varbinary(4)", None, Some(4), None, true);
        assert!(load(&bin, false, "ab").is_err());
        assert_eq!(
            Form::pick(&[col(text.clone(), false), col(dt, true)]),
            Form::Load
        );
        assert_eq!(Form::pick(&[col(text, false), col(bin, true)]), Form::Sql);
    }

    #[test]
    fn integers_keep_their_ranges() {
        let t = Kind::from_schema("tinyint", "tinyint(4)", None, None, None, true);
        let u = Kind::from_schema("bigint", "bigint(20) unsigned", None, None, None, true);
        let b = Kind::from_schema("tinyint", "tinyint(1)", None, None, None, true);
        assert_eq!(lit(&t, false, "UTC", " -128 ").unwrap(), "-128");
        assert!(
            lit(&t, false, "UTC", "128")
                .unwrap_err()
                .contains("out of range (-128 to 127)")
        );
        assert_eq!(
            lit(&u, false, "UTC", "18446744073709551615").unwrap(),
            "18446744073709551615"
        );
        assert!(lit(&u, false, "UTC", "18446744073709551616").is_err());
        assert!(lit(&u, false, "UTC", "-1").is_err());
        assert!(
            lit(&t, false, "UTC", "1.0")
                .unwrap_err()
                .contains("not an integer")
        );
        assert_eq!(lit(&b, false, "UTC", "TRUE").unwrap(), "1");
        assert!(lit(&t, false, "UTC", "true").is_err());
    }

    #[test]
    fn decimals_are_never_rounded() {
        let d = Kind::from_schema("decimal", "decimal(5,2)", None, None, None, true);
        assert_eq!(lit(&d, false, "UTC", "-001.50").unwrap(), "-1.5");
        assert_eq!(lit(&d, false, "UTC", "999.99").unwrap(), "999.99");
        assert_eq!(lit(&d, false, "UTC", ".5").unwrap(), "0.5");
        assert!(
            lit(&d, false, "UTC", "1000")
                .unwrap_err()
                .contains("4 digits before")
        );
        assert!(
            lit(&d, false, "UTC", "1.005")
                .unwrap_err()
                .contains("would round")
        );
        assert!(lit(&d, false, "UTC", "1e2").is_err());
        let f = Kind::from_schema("float", "float", None, None, None, true);
        assert_eq!(lit(&f, false, "UTC", "1.5").unwrap(), "1.5e0");
        assert!(lit(&f, false, "UTC", "1e39").is_err());
        assert!(lit(&f, false, "UTC", "NaN").is_err());
        assert!(lit(&f, false, "UTC", "inf").is_err());
    }

    #[test]
    fn text_lengths_and_character_sets() {
        let v = Kind::from_schema(
            "varchar",
            "varchar(3)",
            Some(3),
            Some(12),
            Some(Charset::Utf8mb4),
            true,
        );
        assert_eq!(
            lit(&v, false, "UTC", "äöü").unwrap(),
            "_utf8mb4 X'C3A4C3B6C3BC'"
        );
        assert!(
            lit(&v, false, "UTC", "abcd")
                .unwrap_err()
                .contains("4 characters long")
        );
        let m3 = Kind::from_schema(
            "varchar",
            "varchar(3)",
            Some(3),
            Some(9),
            Some(Charset::Utf8mb3),
            true,
        );
        assert!(lit(&m3, false, "UTC", "😀").is_err());
        let t = Kind::from_schema(
            "tinytext",
            "tinytext",
            Some(255),
            Some(255),
            Some(Charset::Utf8mb4),
            true,
        );
        assert!(
            lit(&t, false, "UTC", &"é".repeat(128))
                .unwrap_err()
                .contains("256 bytes")
        );
        assert_eq!(lit(&v, false, "UTC", "").unwrap(), "''");
        assert_eq!(lit(&v, true, "UTC", "").unwrap(), "NULL");
        assert_eq!(lit(&v, true, "UTC", "\\N").unwrap(), "NULL");
        assert!(lit(&v, false, "UTC", "\\N").is_err());
        let i = Kind::int("int", "int");
        assert!(lit(&i, false, "UTC", "").unwrap_err().contains("NOT NULL"));
    }

    #[test]
    fn enums_and_sets() {
        let e = Kind::from_schema("enum", "enum('red','it''s')", None, None, None, true);
        assert_eq!(lit(&e, false, "UTC", "RED").unwrap(), "'red'");
        assert_eq!(
            lit(&e, false, "UTC", "it's").unwrap(),
            "_utf8mb4 X'69742773'"
        );
        assert!(lit(&e, false, "UTC", "blue").is_err());
        assert!(lit(&e, false, "UTC", "1").is_err());
        let bin = Kind::from_schema("enum", "ENUM('Red','it''s')", None, None, None, false);
        assert_eq!(lit(&bin, false, "UTC", "Red").unwrap(), "'Red'");
        assert!(lit(&bin, false, "UTC", "red").is_err());
        let s = Kind::from_schema("set", "set('a','b')", None, None, None, false);
        assert_eq!(lit(&s, false, "UTC", "b,a").unwrap(), "'b,a'");
        assert!(lit(&s, false, "UTC", "A").is_err());
    }

    #[test]
    fn dates_and_times() {
        let d = Kind::Date;
        assert_eq!(lit(&d, false, "UTC", "2024-02-29").unwrap(), "20240229");
        assert!(lit(&d, false, "UTC", "2023-02-29").is_err());
        assert!(lit(&d, false, "UTC", "0000-00-00").is_err());
        let dt3 = Kind::DateTime { fsp: 3 };
        assert_eq!(
            lit(&dt3, false, "UTC", "2024-01-01T10:00:00.120").unwrap(),
            "20240101100000.12"
        );
        assert!(
            lit(&dt3, false, "UTC", "2024-01-01 10:00:00.1234")
                .unwrap_err()
                .contains("4 fractional")
        );
        assert_eq!(
            lit(&dt3, false, "UTC", "2024-01-01T10:00:00Z").unwrap(),
            "20240101100000"
        );
        assert_eq!(
            lit(&dt3, false, "UTC", "2024-01-01T10:00:00+01:00").unwrap(),
            "20240101090000"
        );
        assert_eq!(
            lit(&dt3, false, "Europe/Berlin", "2024-07-01T10:00:00.5Z").unwrap(),
            "20240701120000.5"
        );
        assert!(lit(&dt3, false, "UTC", "2024-01-01 24:00:00").is_err());
        let ts = Kind::Timestamp { fsp: 0 };
        assert!(
            lit(&ts, false, "UTC", "1970-01-01 00:00:00")
                .unwrap_err()
                .contains("TIMESTAMP range")
        );
        assert!(lit(&ts, false, "UTC", "2038-01-19 03:14:08").is_err());
        assert_eq!(
            lit(&ts, false, "UTC", "2038-01-19 03:14:07").unwrap(),
            "20380119031407"
        );
        // Berlin skips 02:00-03:00 on 2024-03-31 and repeats 02:00-03:00 on
        // 2024-10-27.
        let berlin = "Europe/Berlin";
        assert!(
            lit(&ts, false, berlin, "2024-03-31 02:30:00")
                .unwrap_err()
                .contains("does not exist")
        );
        assert!(
            lit(&ts, false, berlin, "2024-10-27 02:30:00")
                .unwrap_err()
                .contains("ambiguous")
        );
        assert_eq!(
            lit(&ts, false, berlin, "2024-10-27 03:30:00").unwrap(),
            "20241027033000"
        );
        assert!(
            lit(&ts, false, berlin, "2024-10-27T00:30:00Z")
                .unwrap_err()
                .contains("repeats")
        );
        assert_eq!(
            lit(&ts, false, berlin, "2024-03-31T01:30:00Z").unwrap(),
            "20240331033000"
        );
        // DATETIME is a wall clock: a skipped local time is stored as
        // written.
        let dt = Kind::DateTime { fsp: 0 };
        assert_eq!(
            lit(&dt, false, berlin, "2024-03-31 02:30:00").unwrap(),
            "20240331023000"
        );
    }

    #[test]
    fn json_and_binary() {
        let j = Kind::Json;
        assert_eq!(
            lit(&j, false, "UTC", "{\"a\":[1,2]}").unwrap(),
            "'{\"a\":[1,2]}'"
        );
        assert_eq!(
            lit(&j, false, "UTC", "\"é\"").unwrap(),
            "_utf8mb4 X'22C3A922'"
        );
        assert!(
            lit(&j, false, "UTC", "{a:1}")
                .unwrap_err()
                .contains("not valid JSON")
        );
        let b = Kind::from_schema("varbinary", "varbinary(2)", Some(2), Some(2), None, false);
        assert_eq!(lit(&b, false, "UTC", "ab").unwrap(), "X'6162'");
        assert!(lit(&b, false, "UTC", "abc").is_err());
    }

    #[test]
    fn zones() {
        assert_eq!(Zone::parse("utc").unwrap().session(), "+00:00");
        assert_eq!(Zone::parse("-05:30").unwrap().session(), "-05:30");
        // The only spelling of an offset that `SET time_zone` takes.
        assert_eq!(Zone::parse("+0100").unwrap().session(), "+01:00");
        assert_eq!(Zone::parse("-0930").unwrap().session(), "-09:30");
        assert_eq!(Zone::parse("+05").unwrap().session(), "+05:00");
        assert!(
            Zone::parse("Mars/Olympus")
                .unwrap_err()
                .contains("unknown time zone")
        );
        assert!(Zone::parse("+25:00").is_err());
    }

    #[test]
    fn values_a_fixed_width_column_would_pad_are_rejected() {
        let kind = |data_type: &str, column_type: &str, len: u64, cs: Option<Charset>| {
            Kind::from_schema(data_type, column_type, Some(len), Some(len), cs, true)
        };
        let char6 = kind("char", "char(6)", 6, Some(Charset::Utf8mb4));
        let varchar6 = kind("varchar", "varchar(6)", 6, Some(Charset::Utf8mb4));
        let binary4 = kind("binary", "binary(4)", 4, None);
        let varbinary4 = kind("varbinary", "varbinary(4)", 4, None);
        assert!(lit(&char6, false, "UTC", "ab").is_ok());
        assert!(
            lit(&char6, false, "UTC", " ab").is_ok(),
            "leading spaces are kept"
        );
        assert!(
            lit(&char6, false, "UTC", "ab  ")
                .unwrap_err()
                .contains("trailing spaces in a CHAR column")
        );
        assert!(lit(&varchar6, false, "UTC", "ab  ").is_ok());
        assert!(lit(&binary4, false, "UTC", "abcd").is_ok());
        assert!(
            lit(&binary4, false, "UTC", "ab")
                .unwrap_err()
                .contains("would pad it with zero bytes")
        );
        assert!(lit(&varbinary4, false, "UTC", "ab").is_ok());
    }
}
