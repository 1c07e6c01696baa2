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
    /// `redis://[:password@]host:port/db?pool=NAME[&lease_ms=N]`.
    Redis(RedisAddr),
}

/// The address of a Redis-backed pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
}

fn parse_redis(s: &str) -> Result<RedisAddr> {
    let bad = |reason: String| Error::InvalidAddress {
        address: redact(s),
        reason,
    };
    let (base, query) = match s.split_once('?') {
        Some((b, q)) => (b, q),
        None => (s, ""),
    };
    let mut pool = None;
    let mut lease = std::time::Duration::from_secs(10);
    let mut wait_replicas = 0;
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
    })
}

impl PoolAddr {
    /// Parses an address: a path, `file:PATH` / `file://PATH`, or
    /// `redis://host:port/db?pool=NAME[&lease_ms=N]`.
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
        {
            return Ok(PoolAddr::Redis(parse_redis(trimmed)?));
        }
        if let Some((scheme, _)) = trimmed.split_once("://") {
            return Err(Error::InvalidAddress {
                address: redact(trimmed),
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
            PoolAddr::Redis(r) => {
                let url = redact(&r.url);
                let sep = if url.contains('?') { '&' } else { '?' };
                write!(f, "{url}{sep}pool={}", r.pool)?;
                if r.lease != std::time::Duration::from_secs(10) {
                    write!(f, "&lease_ms={}", r.lease.as_millis())?;
                }
                if r.wait_replicas > 0 {
                    write!(f, "&wait_replicas={}", r.wait_replicas)?;
                }
                Ok(())
            }
        }
    }
}

/// Replaces the password of a URL-like string with `***`.
///
/// `mysql://app:secret@db:3306/x` becomes `mysql://app:***@db:3306/x`;
/// strings without a password come back unchanged.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}://{}:***{}",
            &url[..scheme_end],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
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
            reason: "no pool given and neither XDG_RUNTIME_DIR nor HOME is set; pass --pool DIR or set DBSLOTS_POOL".into(),
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
        assert!(PoolAddr::parse("redis://h/0?pool=a&lease_ms=5").is_err());
    }
}
