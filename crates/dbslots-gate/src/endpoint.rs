//! Where the gate listens and where it connects: `HOST:PORT` or `unix:/PATH`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::Error;

/// A TCP address or a unix socket path, as `--listen` and `--upstream` take
/// them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `HOST:PORT`; the host is resolved when the gate binds or connects.
    Tcp(String),
    /// `unix:/PATH`.
    Unix(PathBuf),
}

impl FromStr for Endpoint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::InvalidEndpoint {
            endpoint: s.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(bad(
                    "a unix socket needs an absolute path, such as unix:/run/dbslots-gate/mysql.sock",
                ));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') {
            return Err(bad("write a unix socket path as unix:/PATH"));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("expected HOST:PORT (such as 127.0.0.1:3307) or unix:/PATH"))?;
        if host.is_empty() {
            return Err(bad(
                "the host is missing: write 127.0.0.1:PORT or 0.0.0.0:PORT",
            ));
        }
        port.parse::<u16>()
            .map_err(|_| bad("the port must be a number between 0 and 65535"))?;
        Ok(Endpoint::Tcp(s.to_string()))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => f.write_str(a),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        Endpoint::Tcp(a.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix_and_explains_mistakes() {
        assert_eq!(
            "127.0.0.1:3307".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:3307".into())
        );
        assert_eq!(
            "[::1]:3307".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("[::1]:3307".into())
        );
        assert_eq!(
            "unix:/run/g.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/g.sock".into())
        );
        assert_eq!(
            "unix:/run/g.sock".parse::<Endpoint>().unwrap().to_string(),
            "unix:/run/g.sock"
        );
        for (bad, why) in [
            ("3307", "HOST:PORT"),
            (":3307", "host is missing"),
            ("db:x", "port must be"),
            ("unix:run/g.sock", "absolute path"),
            ("/run/g.sock", "unix:/PATH"),
        ] {
            let e = bad.parse::<Endpoint>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
