//! Pool addresses: where a pool lives.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};

/// Where a pool lives.
///
/// Today a pool is a directory on one host. The address is the one thing
/// callers change to switch backends: every constructor and command-line
/// flag takes a `PoolAddr`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PoolAddr {
    /// A pool shared through a directory by every process that can open it.
    Dir(PathBuf),
}

impl PoolAddr {
    /// Parses an address: a path, or `file:PATH` / `file://PATH`.
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
        if let Some((scheme, _)) = trimmed.split_once("://") {
            return Err(Error::InvalidAddress {
                address: redact(trimmed),
                reason: format!(
                    "unknown scheme {scheme:?}; use a directory path for a pool on this host"
                ),
            });
        }
        Ok(PoolAddr::Dir(PathBuf::from(trimmed)))
    }

    /// The directory of a file pool.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            PoolAddr::Dir(p) => Some(p),
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

impl fmt::Display for PoolAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolAddr::Dir(p) => write!(f, "{}", p.display()),
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
}
