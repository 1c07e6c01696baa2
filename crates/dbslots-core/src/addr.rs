//! Pool addresses: where a pool lives.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};

/// Where a pool lives.
///
/// The address is the one thing callers change to switch backends: every
/// constructor and command-line flag takes a `PoolAddr`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PoolAddr {
    /// A pool shared through a directory by every process that can open it.
    Dir(PathBuf),
    /// A pool shared through a Redis server by processes on many hosts:
    /// `redis://[user:password@]host:port/db?pool=NAME[&lease_ms=N]`,
    /// `rediss://…[&ca=PATH]` (TLS), `redis+unix:///PATH?pass=…&pool=NAME`,
    /// or a Redis Cluster through some of its nodes:
    /// `redis+cluster://HOST:PORT[,HOST:PORT...]/?pool=NAME` (TLS:
    /// `rediss+cluster://`).
    Redis(RedisAddr),
}

/// The address of a Redis-backed pool. Its `Debug` redacts the password.
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RedisAddr {
    /// The server's URL without the dbslots parameters (may hold a password:
    /// never print it, print [`PoolAddr`]'s `Display`, which redacts it).
    pub url: String,
    /// The pool's name on that server.
    pub pool: String,
    /// How long a holder's lease lasts without renewal (10 s by default).
    pub lease: std::time::Duration,
    /// How many replicas must acknowledge an acquisition or renewal
    /// (`WAIT`) before it counts (`&wait_replicas=N`; 0 by default).
    pub wait_replicas: u32,
    /// The CA certificate (PEM) a `rediss://` server's certificate must be
    /// signed by (`&ca=PATH`); the system's roots when `None`.
    pub ca: Option<PathBuf>,
}

fn parse_redis(s: &str) -> Result<RedisAddr> {
    let bad = |reason: String| Error::InvalidAddress {
        address: redact_redis(s),
        reason,
    };
    let (base, query) = match s.split_once('?') {
        Some((b, q)) => (b, q),
        None => (s, ""),
    };
    let mut pool = None;
    let mut lease = std::time::Duration::from_secs(10);
    let mut wait_replicas = 0;
    let mut ca = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "pool" => pool = Some(v.to_string()),
            "lease_ms" => {
                let ms: u64 = v
                    .parse()
                    .ok()
                    .filter(|ms| (100..=3_600_000).contains(ms))
                    .ok_or_else(|| bad(format!("lease_ms={v:?} must be a number of milliseconds between 100 and 3600000")))?;
                lease = std::time::Duration::from_millis(ms);
            }
            "wait_replicas" => {
                wait_replicas = v.parse().ok().filter(|n| *n <= 100).ok_or_else(|| {
                    bad(format!(
                        "wait_replicas={v:?} must be a number of replicas between 0 and 100"
                    ))
                })?;
            }
            "ca" => {
                if !s.starts_with("rediss://") && !s.starts_with("rediss+cluster://") {
                    return Err(bad(
                        "ca= names the CA of a TLS server: use it with a rediss:// address".into(),
                    ));
                }
                if v.is_empty() {
                    return Err(bad("ca= needs the path of a PEM file".into()));
                }
                ca = Some(PathBuf::from(v));
            }
            _ => rest.push(pair),
        }
    }
    let pool = pool.filter(|p| !p.is_empty()).ok_or_else(|| {
        bad(
            "it names no pool; add ?pool=NAME (for example redis://host:6379/0?pool=mysql-main)"
                .into(),
        )
    })?;
    if !pool
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        return Err(bad(format!(
            "pool name {pool:?} may only contain letters, digits, '-', '_', '.' and ':'"
        )));
    }
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok(RedisAddr {
        url,
        pool,
        lease,
        wait_replicas,
        ca,
    })
}

impl fmt::Debug for RedisAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisAddr")
            .field("url", &redact_redis(&self.url))
            .field("pool", &self.pool)
            .field("lease", &self.lease)
            .field("wait_replicas", &self.wait_replicas)
            .field("ca", &self.ca)
            .finish()
    }
}

impl RedisAddr {
    /// The full address around `url`, as [`PoolAddr::parse`] takes it.
    fn with_url(&self, url: &str) -> String {
        let sep = if url.contains('?') { '&' } else { '?' };
        let mut s = format!("{url}{sep}pool={}", self.pool);
        if self.lease != std::time::Duration::from_secs(10) {
            s += &format!("&lease_ms={}", self.lease.as_millis());
        }
        if self.wait_replicas > 0 {
            s += &format!("&wait_replicas={}", self.wait_replicas);
        }
        if let Some(ca) = &self.ca {
            s += &format!("&ca={}", ca.display());
        }
        s
    }
}

impl PoolAddr {
    /// The address with its credentials, as [`PoolAddr::parse`] takes it
    /// back: for the environment of a child process that must open the
    /// same pool (never for output, never for a command line; `Display`
    /// redacts).
    pub fn to_unredacted_string(&self) -> String {
        match self {
            PoolAddr::Dir(p) => p.display().to_string(),
            PoolAddr::Redis(r) => r.with_url(&r.url),
        }
    }

    /// Parses an address: a path, `file:PATH` / `file://PATH`,
    /// `redis://host:port/db?pool=NAME[&lease_ms=N]` (and the other Redis
    /// forms of [`PoolAddr::Redis`]), or a Redis Cluster through some of
    /// its nodes: `redis+cluster://HOST:PORT[,HOST:PORT...]/?pool=NAME`.
    pub fn parse(s: &str) -> Result<PoolAddr> {
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err(Error::InvalidAddress {
                address: String::new(),
                reason: "it is empty; give a directory path".into(),
            });
        }
        if let Some(path) = trimmed
            .strip_prefix("file://")
            .or_else(|| trimmed.strip_prefix("file:"))
        {
            return Ok(PoolAddr::Dir(PathBuf::from(path)));
        }
        if trimmed.starts_with("redis://")
            || trimmed.starts_with("rediss://")
            || trimmed.starts_with("redis+unix://")
            || trimmed.starts_with("redis+cluster://")
            || trimmed.starts_with("rediss+cluster://")
        {
            return Ok(PoolAddr::Redis(parse_redis(trimmed)?));
        }
        if let Some((scheme, _)) = trimmed.split_once("://") {
            return Err(Error::InvalidAddress {
                address: redact_redis(trimmed),
                reason: format!(
                    "unknown scheme {scheme:?}; use a directory path for a pool on this host, or redis://host:port/db?pool=NAME for one shared by several hosts"
                ),
            });
        }
        Ok(PoolAddr::Dir(PathBuf::from(trimmed)))
    }

    /// The directory of a file pool.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            PoolAddr::Dir(p) => Some(p),
            PoolAddr::Redis(_) => None,
        }
    }
}

impl FromStr for PoolAddr {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        PoolAddr::parse(s)
    }
}

impl From<PathBuf> for PoolAddr {
    fn from(p: PathBuf) -> Self {
        PoolAddr::Dir(p)
    }
}

impl From<&Path> for PoolAddr {
    fn from(p: &Path) -> Self {
        PoolAddr::Dir(p.to_path_buf())
    }
}

/// Anything [`Pool::open`](crate::Pool::open) accepts as an address: a
/// [`PoolAddr`], a path (`&Path`, `PathBuf`: always a directory), or a string
/// (`&str`, `String`: parsed with [`PoolAddr::parse`], so it may also be a
/// `redis://` address).
///
/// The trait is sealed: the list above is the whole list.
pub trait IntoPoolAddr: sealed::Sealed {
    /// The address, or [`Error::InvalidAddress`] for a string that is none.
    fn into_pool_addr(self) -> Result<PoolAddr>;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! into_pool_addr {
    ($($t:ty => |$v:ident| $e:expr;)*) => {$(
        impl sealed::Sealed for $t {}
        impl IntoPoolAddr for $t {
            fn into_pool_addr(self) -> Result<PoolAddr> {
                let $v = self;
                $e
            }
        }
    )*};
}

into_pool_addr! {
    PoolAddr => |a| Ok(a);
    &PoolAddr => |a| Ok(a.clone());
    PathBuf => |p| Ok(PoolAddr::Dir(p));
    &PathBuf => |p| Ok(PoolAddr::Dir(p.clone()));
    &Path => |p| Ok(PoolAddr::Dir(p.to_path_buf()));
    &str => |s| PoolAddr::parse(s);
    String => |s| PoolAddr::parse(&s);
    &String => |s| PoolAddr::parse(s);
}

impl fmt::Display for PoolAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolAddr::Dir(p) => write!(f, "{}", p.display()),
            PoolAddr::Redis(r) => f.write_str(&r.with_url(&redact_redis(&r.url))),
        }
    }
}

/// Query parameters whose value is a secret wherever they appear (Redis
/// URLs carry a password as `?password=` or `?pass=`).
const SECRET_PARAMS: [&str; 4] = ["password", "pass", "passwd", "pwd"];

/// Replaces every password in a URL-like string with `***`.
///
/// `mysql://app:secret@db:3306/x` becomes `mysql://app:***@db:3306/x`;
/// strings without a password come back unchanged.
///
/// Written for text that may not parse as a URL at all, because that is
/// exactly the text that ends up in error messages: the user information
/// runs up to the **last** `@` (a password may hold `/ ? # @ :`, spaces or
/// `%`, encoded or not), everything after the first `:` of it is replaced,
/// and so is the value of every `password=`, `pass=`, `passwd=` or `pwd=`
/// query parameter (up to the next `&name=` or the end). Where a string is
/// ambiguous, more is hidden rather than less. A URL parser cannot do this:
/// it stops at the first `/?#` and rejects the rest, which is how a password
/// with a `/` used to be printed.
pub fn redact(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut copied = 0;
    for span in secret_spans(url) {
        out.push_str(&url[copied..span.start]);
        out.push_str("***");
        copied = span.end;
    }
    out.push_str(&url[copied..]);
    out
}

/// The byte ranges of `url` that [`redact`] replaces, in order: for
/// hiding them in place, where the text must keep its length (a process's
/// own command line).
///
/// ```
/// let url = "mysql://app:secret@db/x";
/// let ranges = dbslots_core::url_secret_ranges(url);
/// assert_eq!(ranges.iter().map(|r| &url[r.clone()]).collect::<Vec<_>>(), ["secret"]);
/// ```
pub fn url_secret_ranges(url: &str) -> Vec<std::ops::Range<usize>> {
    secret_spans(url)
}

/// The byte ranges of `url` that [`redact`] replaces, in order.
fn secret_spans(url: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let start = url.find("://").map_or(0, |i| i + 3);
    let mut params_from = start;
    if let Some(at) = url[start..].rfind('@').map(|i| start + i)
        && let Some(colon) = url[start..at].find(':').map(|i| start + i)
    {
        spans.push(colon + 1..at);
        params_from = at;
    }
    let mut from = params_from;
    while let Some(value) = next_secret_value(url, from) {
        let end = next_param_start(&url[value..]).map_or(url.len(), |i| value + i);
        spans.push(value..end);
        from = end;
    }
    spans
}

/// Where the value of the next `password=`-like parameter at or after
/// `from` starts (the name must follow `?`, `&` or `;`).
fn next_secret_value(s: &str, from: usize) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    SECRET_PARAMS
        .iter()
        .filter_map(|name| {
            let pattern = format!("{name}=");
            lower[from..]
                .match_indices(&pattern)
                .map(|(i, _)| from + i)
                .find(|&at| at > 0 && matches!(s.as_bytes()[at - 1], b'?' | b'&' | b';'))
                .map(|at| (at, at + pattern.len()))
        })
        .min()
        .map(|(_, value)| value)
}

/// Where the next `&name=` starts in a parameter value, if anywhere.
fn next_param_start(value: &str) -> Option<usize> {
    let bytes = value.as_bytes();
    value.match_indices('&').map(|(i, _)| i).find(|&amp| {
        let name_len = bytes[amp + 1..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            .count();
        name_len > 0 && bytes.get(amp + 1 + name_len) == Some(&b'=')
    })
}

/// The secrets [`redact`] hides in `url`, as written and percent-decoded,
/// longest first, so that text derived from the URL (a driver's error
/// message, which may quote a piece of a misparsed URL) can be cleaned with
/// [`redact_text`].
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    for span in secret_spans(url) {
        let secret = &url[span];
        if secret.is_empty() {
            continue;
        }
        let decoded = percent_decode(secret);
        if decoded != secret && !decoded.is_empty() {
            secrets.push(decoded);
        }
        secrets.push(secret.to_string());
    }
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
}

/// `text` with every secret of `url` (see [`url_secrets`]) replaced by
/// `***`.
pub fn redact_text(text: &str, url: &str) -> String {
    let mut out = text.to_string();
    for secret in url_secrets(url) {
        out = out.replace(&secret, "***");
    }
    out
}

/// A command line's words with every secret replaced by `***`, for logs
/// such as a joblog's `Command` column.
///
/// Hidden: passwords in URLs ([`redact`]); the value of `--password=`,
/// `--passwd=`, `--pass=` and any `--…-password=`; the word after such an
/// option given bare (`--password VALUE`, `--db-password VALUE`); what follows `-p` in a word such as `-psecret` (the
/// `mysql` client's form); and the value of `MYSQL_PWD=`, `PGPASSWORD=`,
/// `REDISCLI_AUTH=` and other `…PASSWORD…=`/`…PWD=`/`…_AUTH=` assignments.
/// The rules apply to every blank-separated piece of a word too, so a
/// `sh -c 'mysql -psecret …'` is covered. Some harmless words look like
/// secrets (`find -path` shows as `-p***`): hiding too much is the safe
/// side.
pub fn redact_command<S: AsRef<str>>(words: &[S]) -> Vec<String> {
    let mut out = Vec::with_capacity(words.len());
    let mut hide_next = false;
    for word in words {
        let word = word.as_ref();
        if std::mem::take(&mut hide_next) {
            out.push("***".to_string());
            continue;
        }
        // `--db-password VALUE` as well as `--db-password=VALUE`.
        hide_next = bare_secret_option(word);
        out.push(redact_command_word(word));
    }
    out
}

/// One word of a command line with its secrets hidden (see
/// [`redact_command`]; a bare `--password` hides the next blank-separated
/// piece of the word, but the *next word* only [`redact_command`] can).
pub fn redact_command_word(word: &str) -> String {
    let word = redact(word);
    // A word that is an option: its value is the rest of the word, blanks
    // and all (`--password=a b` is one argument).
    if word.starts_with('-') {
        let whole = redact_token(&word);
        if whole != word {
            return whole;
        }
    }
    let mut out = String::with_capacity(word.len());
    let mut rest = word.as_str();
    // `sh -c '... --password VALUE ...'`: a bare option hides the next
    // piece, as in `redact_command`.
    let mut hide_next = false;
    while !rest.is_empty() {
        let blank = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let token = &rest[..blank];
        if std::mem::take(&mut hide_next) {
            out.push_str("***");
        } else {
            out.push_str(&redact_token(token));
            hide_next = bare_secret_option(token);
        }
        let after = &rest[blank..];
        let next = after
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(after.len());
        out.push_str(&after[..next]);
        rest = &after[next..];
    }
    out
}

/// Whether `word` is a long option that takes a password, given without
/// its value (`--password`, `--db-password`): the value is the next word.
fn bare_secret_option(word: &str) -> bool {
    let bare = word.trim_start_matches(['\'', '"']);
    bare.strip_prefix("--")
        .is_some_and(|name| !name.is_empty() && !name.contains(['=', ' ']) && secret_option(name))
}

/// One blank-free token: a secret option or assignment has its value
/// replaced.
fn redact_token(token: &str) -> String {
    let quotes = token.len() - token.trim_start_matches(['\'', '"']).len();
    let (lead, body) = token.split_at(quotes);
    let hidden = |keep: &str| format!("{lead}{keep}***");
    if let Some(long) = body.strip_prefix("--")
        && let Some((name, _)) = long.split_once('=')
    {
        if secret_option(name) {
            return hidden(&body[..2 + name.len() + 1]);
        }
        return token.to_string();
    }
    if let Some(value) = body.strip_prefix("-p")
        && !value.is_empty()
        && !body.starts_with("--")
    {
        return hidden("-p");
    }
    if let Some((name, _)) = body.split_once('=')
        && !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && (name.contains("PASSWORD")
            || name.contains("PASSWD")
            || name.ends_with("PWD")
            || name.ends_with("_AUTH"))
    {
        return hidden(&body[..name.len() + 1]);
    }
    token.to_string()
}

/// Whether the long option `--NAME` takes a password (any case):
/// `password`, `passwd`, `pass`, or a name ending in one of them after a
/// dash (`db-password`, `redis-pass`).
fn secret_option(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.ends_with("password")
        || name.ends_with("passwd")
        || name == "pass"
        || name.ends_with("-pass")
}

/// Decodes `%XX` escapes; invalid ones and non-UTF-8 results stay as they
/// are (hand-written: eight lines, and the core crate keeps no URL parser).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// [`redact`] for Redis addresses, which may also carry a password as a
/// query parameter (`redis+unix:///run/redis.sock?pass=SECRET`).
pub(crate) fn redact_redis(url: &str) -> String {
    let url = redact(url);
    let Some((base, query)) = url.split_once('?') else {
        return url;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if matches!(k, "pass" | "password") => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// The pool directory used when none is given: private to the user, never a
/// predictable name in a world-writable directory.
///
/// `$XDG_RUNTIME_DIR/dbslots/default` when that is set, else
/// `/run/dbslots/default` for root, else `$HOME/.local/state/dbslots/default`.
/// The parent directories are created (mode 0700) when missing.
pub fn default_pool_dir() -> Result<PathBuf> {
    let base = if let Some(rt) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        PathBuf::from(rt).join("dbslots")
    } else if rustix::process::geteuid().is_root() {
        PathBuf::from("/run/dbslots")
    } else if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        PathBuf::from(home).join(".local/state/dbslots")
    } else {
        return Err(Error::InvalidAddress {
            address: String::new(),
            reason: "no pool given and neither XDG_RUNTIME_DIR nor HOME is set; give a pool address or set DBSLOTS_POOL".into(),
        });
    };
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&base)
        .map_err(|e| Error::io("creating", &base, e))?;
    Ok(base.join("default"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("mysql://app:s3cret@db:3306/x?a=b"),
            "mysql://app:***@db:3306/x?a=b"
        );
        assert_eq!(redact("mysql://app@db/x"), "mysql://app@db/x");
        assert_eq!(redact("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("/var/run/pool"), "/var/run/pool");
        assert_eq!(redact("mysql://a:b@c@host/x"), "mysql://a:***@host/x");
    }

    #[test]
    fn redacts_passwords_no_url_parser_accepts() {
        // The issue's example: a `/` in the password.
        assert_eq!(
            redact("mysql://app:se/cret@127.0.0.1:3306/app"),
            "mysql://app:***@127.0.0.1:3306/app"
        );
        assert_eq!(
            redact("mysql://app:a?b#c d%zz@db/x?ssl-mode=REQUIRED"),
            "mysql://app:***@db/x?ssl-mode=REQUIRED"
        );
        assert_eq!(redact("app:pw@db/x"), "app:***@db/x");
        assert_eq!(
            redact("redis+unix:///run/redis.sock?db=0&pass=s3&cret&pool=p"),
            "redis+unix:///run/redis.sock?db=0&pass=***&pool=p"
        );
        assert_eq!(
            redact("redis://h:6379/0?PASSWORD=x&pool=p"),
            "redis://h:6379/0?PASSWORD=***&pool=p"
        );
        // A parameter that merely ends in "pass" is not a password.
        assert_eq!(redact("mysql://h/x?bypass=1"), "mysql://h/x?bypass=1");
    }

    #[test]
    fn secrets_come_out_as_written_and_decoded() {
        let url = "mysql://app:p%40ss%2Fw@db/x";
        assert_eq!(url_secrets(url), ["p%40ss%2Fw", "p@ss/w"]);
        assert_eq!(
            redact_text("port p@ss/w is invalid (p%40ss%2Fw)", url),
            "port *** is invalid (***)"
        );
    }

    #[test]
    fn command_lines_lose_their_passwords() {
        let words = [
            "mysql",
            "--password=s3cret",
            "-ps3cret",
            "--db-password=s3cret",
            "--password",
            "s3cret",
            "-p",
            "appdb",
            "sh -c 'MYSQL_PWD=s3cret mysql -ps3cret --password=s3cret'",
            "--url=mysql://app:s3/cret@db/x",
            "--port=3306",
        ];
        let out = redact_command(&words);
        let line = out.join(" ");
        assert!(
            !line.contains("s3cret") && !line.contains("s3/cret"),
            "{line}"
        );
        assert_eq!(out[1], "--password=***");
        assert_eq!(out[2], "-p***");
        assert_eq!(out[3], "--db-password=***");
        assert_eq!(out[5], "***");
        // `-p` alone prompts; the next word is the database.
        assert_eq!((out[6].as_str(), out[7].as_str()), ("-p", "appdb"));
        assert_eq!(out[8], "sh -c 'MYSQL_PWD=*** mysql -p*** --password=***");
        assert_eq!(out[9], "--url=mysql://app:***@db/x");
        assert_eq!(out[10], "--port=3306");
        // A bare option of any password name hides the next word.
        let out = redact_command(&["--db-password", "s3cret", "--Redis-Pass", "s3cret", "x"]);
        assert_eq!(out, ["--db-password", "***", "--Redis-Pass", "***", "x"]);
        // Within one word too (`sh -c '...'`), piece by piece.
        let out = redact_command(&["sh", "-c", "mysql --password s3cret -p db -e 'SELECT 1'"]);
        assert_eq!(out[2], "mysql --password *** -p db -e 'SELECT 1'");
    }

    /// Characters a password may contain, the awkward ones many times over.
    fn password() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex("[a-zA-Z0-9/?#@:% &=;!*'()\\\\$+,\\[\\]~.-]{4,24}").unwrap()
    }

    fn encode(s: &str) -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn no_password_survives_redaction(pw in password(), encoded: bool, form in 0..5u8) {
            // A prefix found nowhere else in the URL, so that a password like
            // "3306" is not "found" in the port.
            let pw = format!("Zq{pw}");
            let written = if encoded { encode(&pw) } else { pw.clone() };
            let url = match form {
                0 => format!("mysql://app:{written}@127.0.0.1:3306/app"),
                1 => format!("mysql://app:{written}@db.example:3306/app?ssl-mode=VERIFY_CA&ssl-ca=/etc/ca.pem"),
                2 => format!("mysql://app:{written}@[::1]:3306"),
                3 => format!("redis://:{written}@127.0.0.1:6379/0?pool=main"),
                _ => format!("not a url app:{written}@host"),
            };
            let out = redact(&url);
            proptest::prop_assert!(!out.contains(&written), "{url} -> {out}");
            proptest::prop_assert!(!out.contains(&pw), "{url} -> {out}");
            // As a command's words, in every form the joblog must mask.
            let line = redact_command(&[
                format!("--url={url}"),
                format!("--password={pw}"),
                format!("-p{pw}"),
                "--password".to_string(),
                pw.clone(),
            ])
            .join(" ");
            proptest::prop_assert!(!line.contains(&pw) && !line.contains(&written), "{line}");
            // No piece of it either, when the option forms hide it whole.
            let pieces = redact_command(&[format!("--password={pw}"), format!("-p{pw}")]);
            proptest::prop_assert_eq!(pieces, vec!["--password=***".to_string(), "-p***".to_string()]);
            // Text that quotes the decoded password is cleaned too.
            let text = format!("error near '{pw}' in {url}");
            let cleaned = redact_text(&text, &url);
            proptest::prop_assert!(!cleaned.contains(&pw), "{cleaned}");
        }

        #[test]
        fn no_query_password_survives_redaction(pw in "[a-zA-Z0-9/?#@:% ;!*'()$+,~.-]{4,24}", key in 0..4usize) {
            let pw = format!("Zq{pw}");
            let name = SECRET_PARAMS[key];
            let url = format!("redis+unix:///run/redis.sock?db=0&{name}={pw}&pool=main");
            let out = redact(&url);
            proptest::prop_assert!(!out.contains(&pw), "{url} -> {out}");
            proptest::prop_assert!(out.ends_with("&pool=main"), "{out}");
        }
    }

    #[test]
    fn parses_paths_and_rejects_unknown_schemes() {
        assert_eq!(
            PoolAddr::parse("/tmp/x").unwrap(),
            PoolAddr::Dir("/tmp/x".into())
        );
        assert_eq!(
            PoolAddr::parse("file:///tmp/x").unwrap(),
            PoolAddr::Dir("/tmp/x".into())
        );
        let err = PoolAddr::parse("ftp://u:pw@h/x").unwrap_err().to_string();
        assert!(err.contains("unknown scheme"), "{err}");
        assert!(!err.contains("pw"), "{err}");
        assert!(PoolAddr::parse("  ").is_err());
    }

    #[test]
    fn parses_redis_addresses_and_never_shows_their_password() {
        let a = PoolAddr::parse("redis://:pw@127.0.0.1:6390/2?pool=main&lease_ms=1500").unwrap();
        let PoolAddr::Redis(r) = &a else {
            panic!("{a:?}")
        };
        assert_eq!(r.url, "redis://:pw@127.0.0.1:6390/2");
        assert_eq!(r.pool, "main");
        assert_eq!(r.lease, std::time::Duration::from_millis(1500));
        assert_eq!(
            a.to_string(),
            "redis://:***@127.0.0.1:6390/2?pool=main&lease_ms=1500"
        );
        let err = PoolAddr::parse("redis://:pw@h/0").unwrap_err().to_string();
        assert!(err.contains("?pool=NAME") && !err.contains("pw"), "{err}");
        assert!(PoolAddr::parse("redis://h/0?pool=a b").is_err());
        assert_eq!(
            a.to_unredacted_string(),
            "redis://:pw@127.0.0.1:6390/2?pool=main&lease_ms=1500"
        );
        assert!(PoolAddr::parse("redis://h/0?pool=a&lease_ms=5").is_err());
    }

    #[test]
    fn every_redis_form_is_redacted_and_round_trips_unredacted() {
        for (given, shown) in [
            (
                "redis://app:s3cret@h:6379/0?pool=p",
                "redis://app:***@h:6379/0?pool=p",
            ),
            (
                "rediss://:s3cret@h:6380/0?pool=p&ca=/etc/ca.pem",
                "rediss://:***@h:6380/0?pool=p&ca=/etc/ca.pem",
            ),
            (
                "redis+unix:///run/redis.sock?db=0&pass=s3cret&pool=p",
                "redis+unix:///run/redis.sock?db=0&pass=***&pool=p",
            ),
            (
                "redis+unix:///run/redis.sock?user=app&password=s3cret&pool=p&wait_replicas=1",
                "redis+unix:///run/redis.sock?user=app&password=***&pool=p&wait_replicas=1",
            ),
            (
                "redis+cluster://app:s3cret@a:7000,b:7001/?pool=p",
                "redis+cluster://app:***@a:7000,b:7001/?pool=p",
            ),
            (
                "rediss+cluster://:s3cret@a:7000,b:7001/?pool=p&ca=/etc/ca.pem",
                "rediss+cluster://:***@a:7000,b:7001/?pool=p&ca=/etc/ca.pem",
            ),
        ] {
            let a = PoolAddr::parse(given).unwrap();
            assert_eq!(a.to_string(), shown);
            assert!(!format!("{a:?}").contains("s3cret"), "{a:?}");
            assert_eq!(PoolAddr::parse(&a.to_unredacted_string()).unwrap(), a);
            assert!(a.to_unredacted_string().contains("s3cret"));
        }
        let err = PoolAddr::parse("redis://:s3cret@h/0?pool=p&ca=/x").unwrap_err();
        assert!(err.to_string().contains("rediss://"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let err = PoolAddr::parse("redis+unix:///s?pass=s3cret").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
