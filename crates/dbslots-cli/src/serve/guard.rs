//! Who may read `dbslots serve`: the `Host` check against DNS rebinding,
//! and the bearer token required beyond loopback.
//!
//! A web page the operator visits can make the browser send requests to
//! any name it controls, and point that name at 127.0.0.1 (DNS rebinding):
//! the browser then treats the answers as the page's own. Such requests
//! carry the attacker's name in `Host`, so only requests whose `Host` is
//! the listen address, a loopback name or address, or a name given with
//! `--allow-host` are answered. An IP address in `Host` cannot be rebound,
//! so when listening on every interface (0.0.0.0 or ::) any IP address is
//! accepted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::error_response;

/// The checks every request passes.
#[derive(Clone)]
pub struct Guard {
    inner: Arc<Inner>,
}

struct Inner {
    listen: IpAddr,
    names: Vec<String>,
    token: Option<String>,
}

impl Guard {
    /// The guard for a server listening on `listen`, also answering to
    /// `allowed` names, requiring `token` when given.
    ///
    /// # Errors
    ///
    /// When listening beyond loopback without a token and without
    /// `no_auth`, or a name is not a valid host name.
    pub fn new(
        listen: SocketAddr,
        allowed: &[String],
        token: Option<String>,
        no_auth: bool,
    ) -> anyhow::Result<Guard> {
        if !listen.ip().is_loopback() && token.is_none() && !no_auth {
            bail!(
                "listening on {listen} lets other machines read the pools and the server's processlist: \
                 give --token-file FILE (clients send `authorization: Bearer TOKEN`; Prometheus: \
                 `authorization: {{credentials_file: FILE}}`), or --no-auth to allow it without one"
            );
        }
        let mut names = Vec::with_capacity(allowed.len());
        for name in allowed {
            let n = normalize(name);
            if n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._:[]".contains(c))
            {
                bail!(
                    "--allow-host {name:?} is not a host name: give a name like dashboard.example.org"
                );
            }
            names.push(n);
        }
        Ok(Guard {
            inner: Arc::new(Inner {
                listen: listen.ip(),
                names,
                token,
            }),
        })
    }

    /// Whether a request with this `Host` header value is answered.
    pub fn host_allowed(&self, host: &str) -> bool {
        let Some(host) = host_part(host.trim()) else {
            return false;
        };
        let host = normalize(host);
        if host == "localhost" || host.ends_with(".localhost") {
            return true;
        }
        if self.inner.names.contains(&host) {
            return true;
        }
        // An IPv6 literal only in brackets (RFC 3986 `IP-literal`), an IPv4
        // one bare.
        let ip = match host.strip_prefix('[') {
            Some(v6) => v6
                .strip_suffix(']')
                .and_then(|v6| v6.parse::<Ipv6Addr>().ok())
                .map(IpAddr::V6),
            None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        };
        ip.is_some_and(|ip| {
            ip.is_loopback() || ip == self.inner.listen || self.inner.listen.is_unspecified()
        })
    }

    /// Whether an `authorization` header value carries the token (always
    /// true without one).
    pub fn authorized(&self, authorization: Option<&str>) -> bool {
        let Some(token) = &self.inner.token else {
            return true;
        };
        let Some(given) = authorization.and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        }) else {
            return false;
        };
        constant_time_eq(given.as_bytes(), token.as_bytes())
    }
}

/// Reads the token from `path`: its content without surrounding white
/// space.
///
/// # Errors
///
/// When the file cannot be read or holds no token.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
        bail!(
            "the token file {} must hold one token (printable, no spaces), for example from `openssl rand -hex 32`",
            path.display()
        );
    }
    Ok(token.to_string())
}

/// The middleware: `Host` first (a rebinding page gets nothing, not even
/// the dashboard), then the token for everything but the dashboard page
/// itself, which holds no data and sends the token from its URL fragment.
pub async fn check(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    // An HTTP/1.0 request may come without a Host (old monitoring
    // checks, scripts over netcat); a browser always sends one, so a
    // rebinding page cannot leave it out.
    let allowed = match host {
        Some(h) => guard.host_allowed(&h),
        None => request.version() == axum::http::Version::HTTP_10,
    };
    if !allowed {
        tracing::warn!(host = ?request.headers().get(header::HOST), "refused a request for another host name (DNS rebinding?)");
        return error_response(
            StatusCode::MISDIRECTED_REQUEST,
            "this Host is not served here: open the dashboard by its listen address or localhost, \
             or start dbslots serve with --allow-host NAME",
        );
    }
    if request.uri().path() != "/" {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        if !guard.authorized(authorization) {
            let mut response = error_response(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required: send `authorization: Bearer TOKEN` (the content of --token-file), \
                 or open the dashboard as /#token=TOKEN",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    next.run(request).await
}

/// `host[:port]` or `[v6]:port` without the port.
/// The host of a `Host` value, `uri-host [ ":" port ]` (RFC 9110): a
/// bracketed IPv6 literal with its brackets, or a name or IPv4 address;
/// `None` when the value is malformed (a bracket left open, anything but
/// digits after the colon).
fn host_part(value: &str) -> Option<&str> {
    let (host, rest) = if value.starts_with('[') {
        value.split_at(value.find(']')? + 1)
    } else {
        value.split_at(value.find(':').unwrap_or(value.len()))
    };
    if !rest.is_empty() && !rest.strip_prefix(':')?.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(host)
}

fn normalize(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Compares without stopping at the first difference, so that the time
/// taken does not tell how much of a guess was right. (Hand-written: a
/// dozen lines do not justify a dependency.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(listen: &str, allowed: &[&str], token: Option<&str>) -> Guard {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        Guard::new(
            listen.parse().unwrap(),
            &allowed,
            token.map(String::from),
            true,
        )
        .unwrap()
    }

    #[test]
    fn loopback_names_the_listen_address_and_allowed_names_pass() {
        let g = guard("127.0.0.1:9187", &["Dash.Example.org"], None);
        for ok in [
            "localhost",
            "localhost:9187",
            "LOCALHOST.",
            "app.localhost:1",
            "127.0.0.1:9187",
            "127.0.0.2",
            "[::1]:9187",
            "dash.example.org",
            "dash.example.org:9187",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example.com",
            "evil.example.com:9187",
            "localhost.evil.com",
            "10.0.0.5:9187",
            "",
            "dash.example.org.evil.com",
            // Malformed: an IPv6 literal unbracketed or left open, junk
            // after the host.
            "[::1",
            "::1",
            "[::1]x",
            "[::1]:80x",
            "127.0.0.1:9187:1",
            "127.0.0.1:x",
            "[127.0.0.1]",
        ] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn any_address_but_no_name_passes_on_every_interface() {
        let g = guard("0.0.0.0:9187", &[], Some("t"));
        assert!(g.host_allowed("10.0.0.5:9187"));
        assert!(g.host_allowed("[fe80::1]:9187"));
        assert!(!g.host_allowed("rebind.example.com:9187"));
    }

    #[test]
    fn beyond_loopback_a_token_or_no_auth_is_required() {
        let listen: SocketAddr = "0.0.0.0:9187".parse().unwrap();
        let e = Guard::new(listen, &[], None, false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--token-file") && e.contains("--no-auth"), "{e}");
        assert!(Guard::new(listen, &[], None, true).is_ok());
        assert!(Guard::new(listen, &[], Some("t".into()), false).is_ok());
        assert!(Guard::new("127.0.0.1:1".parse().unwrap(), &[], None, false).is_ok());
        assert!(Guard::new(listen, &["a b".into()], None, true).is_err());
    }

    #[test]
    fn the_token_must_be_sent_as_a_bearer_credential() {
        let g = guard("127.0.0.1:9187", &[], Some("s3cret"));
        assert!(g.authorized(Some("Bearer s3cret")));
        assert!(g.authorized(Some("bearer s3cret")));
        assert!(!g.authorized(Some("Bearer s3cre")));
        assert!(!g.authorized(Some("Basic s3cret")));
        assert!(!g.authorized(None));
        assert!(guard("127.0.0.1:1", &[], None).authorized(None));
    }
}
