//! A server's URL as every connecting path of dbslots reads it: the
//! driver's options plus TLS in the words of the `mysql` client.
//!
//! # Implementation details
//!
//! `mysql_async` knows "TLS, verified" (`require_ssl=true`) and "no TLS";
//! it has no PREFERRED, and an unknown URL parameter is an error. So
//! `ssl-mode` and `ssl-ca` are taken out of the URL here and turned into
//! driver options:
//!
//! | `ssl-mode`        | TLS          | certificate chain       | host name |
//! |-------------------|--------------|-------------------------|-----------|
//! | `DISABLED`        | never        | -                       | -         |
//! | `PREFERRED` (default) | if offered | not checked           | not checked |
//! | `REQUIRED`        | always       | not checked (checked when `ssl-ca` is given, as the `mysql` client does) | not checked |
//! | `VERIFY_CA`       | always       | `ssl-ca`, else the system's roots | not checked |
//! | `VERIFY_IDENTITY` | always       | `ssl-ca`, else the system's roots | checked |
//!
//! PREFERRED connects with TLS first; a server that does not offer TLS
//! answers that before anything else is sent, and the connect is made
//! again in plain TCP. The answer is remembered per [`ServerUrl`] (its
//! clones share it), so a plain server costs the second TCP connect once.
//!
//! VERIFY_CA needs the driver to skip the host-name check, which
//! `mysql_async` 0.37.1 only does when the verifier's error *text* contains
//! `NotValidForName`; rustls 0.23.2x words it "certificate not valid for
//! name ...". The TLS host name is therefore set to `NotValidForName` in
//! that mode: the chain is verified first (an unknown issuer still fails),
//! and the name check, which VERIFY_CA does not want, fails in the way the
//! driver recognises. Should a later rustls word it differently, VERIFY_CA
//! fails closed (a test covers it). The name is sent as SNI, which MySQL
//! servers ignore.
//!
//! Every connect made here is wrapped in [`Connecting`]: a connect future
//! dropped before it finished (cancelled by its caller, or cut off by a
//! deadline) is dropped on a thread without a tokio runtime, where the
//! driver cannot hand its half-open connection to a background task and
//! closes the socket at once; the drop returns only after that. So a slot
//! bound before the connect is released after the socket is closed.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use mysql_async::{Conn, Opts, OptsBuilder, SslOpts};

use crate::error::{Error, Result};

/// How a connection uses TLS: the `mysql` client's `--ssl-mode`, given as
/// the URL parameter `ssl-mode=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SslMode {
    /// No TLS.
    Disabled,
    /// TLS when the server offers it, without checking its certificate;
    /// plain TCP otherwise. The default, as in the `mysql` client.
    Preferred,
    /// TLS or no connection; the certificate is not checked (unless
    /// `ssl-ca` is given: then as [`SslMode::VerifyCa`]).
    Required,
    /// TLS with a certificate signed by `ssl-ca` (or a system root), for
    /// whatever host name.
    VerifyCa,
    /// TLS with a certificate signed by `ssl-ca` (or a system root) and
    /// issued for the URL's host.
    VerifyIdentity,
}

impl SslMode {
    /// The name as the URL and the `mysql` client write it.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disabled => "DISABLED",
            SslMode::Preferred => "PREFERRED",
            SslMode::Required => "REQUIRED",
            SslMode::VerifyCa => "VERIFY_CA",
            SslMode::VerifyIdentity => "VERIFY_IDENTITY",
        }
    }

    fn parse(value: &str) -> Option<SslMode> {
        Some(
            match value.to_ascii_uppercase().replace('-', "_").as_str() {
                "DISABLED" => SslMode::Disabled,
                "PREFERRED" => SslMode::Preferred,
                "REQUIRED" => SslMode::Required,
                "VERIFY_CA" => SslMode::VerifyCa,
                "VERIFY_IDENTITY" => SslMode::VerifyIdentity,
                _ => return None,
            },
        )
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A MySQL server's URL, parsed once: the driver's options with TLS set up
/// from `ssl-mode`/`ssl-ca`, and the URL with its password redacted.
///
/// `mysql://USER:PASSWORD@HOST:PORT/DATABASE?ssl-mode=VERIFY_CA&ssl-ca=/etc/mysql/ca.pem`.
/// Every parameter of `mysql_async` works too, including its own
/// `require_ssl`/`verify_ca`/`verify_identity`/`built_in_roots` (then
/// those decide, as in `mysql_async`, and `ssl-mode` must not be given).
/// Without any of them the mode is [`SslMode::Preferred`].
///
/// Cheap to clone; clones share what was learnt about the server (whether
/// it offers TLS).
#[derive(Clone)]
pub struct ServerUrl {
    inner: Arc<Inner>,
}

struct Inner {
    /// The options of the first attempt (with TLS unless DISABLED).
    first: Opts,
    /// PREFERRED only: the options without TLS, for a server without it.
    plain: Option<Opts>,
    /// `None` when the driver's own parameters decide.
    mode: Option<SslMode>,
    redacted: String,
    /// PREFERRED: the server answered that it has no TLS.
    server_without_tls: AtomicBool,
    /// PREFERRED: a connect with TLS succeeded.
    tls_known: AtomicBool,
    /// PREFERRED: held by the connect that finds out whether the server
    /// offers TLS.
    finding_out: tokio::sync::Mutex<()>,
}

impl fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerUrl")
            .field("url", &self.inner.redacted)
            .field("ssl_mode", &self.inner.mode)
            .finish()
    }
}

/// The parameters this module takes out of the URL.
const SSL_MODE_KEYS: [&str; 2] = ["ssl-mode", "ssl_mode"];
const SSL_CA_KEYS: [&str; 2] = ["ssl-ca", "ssl_ca"];
/// The driver's own TLS parameters.
const DRIVER_TLS_KEYS: [&str; 4] = [
    "require_ssl",
    "verify_ca",
    "verify_identity",
    "built_in_roots",
];

impl ServerUrl {
    /// Parses `url`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] (password redacted) when the URL does not parse,
    /// `ssl-mode` names no mode, both `ssl-mode` and the driver's
    /// `require_ssl` are given, the `ssl-ca` file cannot be read or holds
    /// no certificate, or VERIFY_CA/VERIFY_IDENTITY without `ssl-ca` finds
    /// no system roots.
    pub fn parse(url: &str) -> Result<ServerUrl> {
        let redacted = dbslots_core::redact(url);
        let bad = |reason: String| Error::InvalidUrl {
            url: redacted.clone(),
            reason: dbslots_core::redact_text(&reason, url),
        };
        let (driver_url, params) = split_ssl_params(url);
        let driver_tls = params.driver_tls;
        let mode = match (params.mode, driver_tls) {
            (Some(_), true) => {
                return Err(bad(
                    "it gives both ssl-mode and mysql_async's require_ssl/verify_ca/verify_identity/built_in_roots; keep one of them (ssl-mode=VERIFY_CA&ssl-ca=PATH is the same as require_ssl=true&verify_identity=false with that CA)".into(),
                ));
            }
            (Some(value), false) => Some(SslMode::parse(&value).ok_or_else(|| {
                bad(format!(
                    "ssl-mode={value:?} is not a mode; use DISABLED, PREFERRED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY"
                ))
            })?),
            (None, true) => None,
            (None, false) => Some(SslMode::Preferred),
        };
        if driver_tls && params.ca.is_some() {
            return Err(bad(
                "ssl-ca goes with ssl-mode, not with mysql_async's require_ssl; write ssl-mode=VERIFY_CA&ssl-ca=PATH (or VERIFY_IDENTITY)".into(),
            ));
        }
        let opts = Opts::from_url(&driver_url).map_err(|e| {
            // An unencoded @ : / # in a password splits the URL elsewhere,
            // and the driver then complains of a port or a host.
            let hint = if url.contains('@') {
                "; if the user name or password holds any of @ : / ? # [ ] %, percent-encode it (@ as %40, : as %3A, / as %2F, ? as %3F, # as %23, % as %25)"
            } else {
                ""
            };
            bad(format!("{e}{hint}"))
        })?;
        let ca = match &params.ca {
            Some(path) => Some(read_ca(Path::new(path)).map_err(bad)?),
            None => None,
        };
        let (first, plain) = match mode {
            None => (opts, None),
            Some(SslMode::Disabled) => (without_tls(opts), None),
            Some(mode) => {
                let ssl = ssl_opts(mode, ca).map_err(bad)?;
                let plain = (mode == SslMode::Preferred).then(|| without_tls(opts.clone()));
                let tls: Opts = OptsBuilder::from_opts(opts).ssl_opts(ssl).into();
                (tls, plain)
            }
        };
        Ok(ServerUrl {
            inner: Arc::new(Inner {
                first,
                plain,
                mode,
                redacted,
                server_without_tls: AtomicBool::new(false),
                tls_known: AtomicBool::new(false),
                finding_out: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Driver options built in code, used as they are (their `ssl_opts`
    /// decide); `describe` is how errors name the server.
    pub fn from_opts(opts: Opts, describe: String) -> ServerUrl {
        ServerUrl {
            inner: Arc::new(Inner {
                first: opts,
                plain: None,
                mode: None,
                redacted: dbslots_core::redact(&describe),
                server_without_tls: AtomicBool::new(false),
                tls_known: AtomicBool::new(false),
                finding_out: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The same server with TCP keepalive probes on every connection, sent
    /// after `idle` without traffic (the driver sends none by default; the
    /// kernel's interval and count of probes apply), unless the URL sets
    /// `tcp_keepalive` itself. A peer that rebooted answers the first
    /// probe with a reset, so a connection waiting for it fails instead of
    /// waiting forever; a peer that is gone without a word is noticed only
    /// after the kernel's probes run out (about 11 minutes on Linux), so
    /// bound the calls too. Connections to a Unix socket are not affected.
    ///
    /// What was learnt about the server (whether it offers TLS) starts
    /// afresh: call this before connecting.
    pub fn with_tcp_keepalive(&self, idle: std::time::Duration) -> ServerUrl {
        let keep = |opts: &Opts| -> Opts {
            if opts.tcp_keepalive().is_some() {
                opts.clone()
            } else {
                OptsBuilder::from_opts(opts.clone())
                    .tcp_keepalive(Some(idle))
                    .into()
            }
        };
        ServerUrl {
            inner: Arc::new(Inner {
                first: keep(&self.inner.first),
                plain: self.inner.plain.as_ref().map(keep),
                mode: self.inner.mode,
                redacted: self.inner.redacted.clone(),
                server_without_tls: AtomicBool::new(false),
                tls_known: AtomicBool::new(false),
                finding_out: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> &str {
        &self.inner.redacted
    }

    /// The `ssl-mode` in force; `None` when the driver's own
    /// `require_ssl`/`verify_ca`/`verify_identity` parameters decide.
    pub fn ssl_mode(&self) -> Option<SslMode> {
        self.inner.mode
    }

    /// The driver options of a connect (with TLS unless the mode is
    /// DISABLED, or PREFERRED found the server without TLS).
    pub fn opts(&self) -> &Opts {
        match &self.inner.plain {
            Some(plain) if self.inner.server_without_tls.load(Ordering::Relaxed) => plain,
            _ => &self.inner.first,
        }
    }

    /// Opens one connection (one attempt; PREFERRED may make a second, in
    /// plain TCP, when the server turns out to have no TLS).
    ///
    /// Cancellation: dropping the future closes the socket of the connect
    /// in progress before the drop returns (see the module documentation).
    ///
    /// # Errors
    ///
    /// The driver's error; [`crate::Error`]s are made from it by the callers
    /// (the connector, the monitor), which know the context.
    pub async fn connect(&self) -> std::result::Result<Conn, mysql_async::Error> {
        let Some(plain) = &self.inner.plain else {
            return Connecting::new(Conn::new(self.inner.first.clone())).await;
        };
        if self.inner.server_without_tls.load(Ordering::Relaxed) {
            return Connecting::new(Conn::new(plain.clone())).await;
        }
        // PREFERRED before the server's answer is known: one connect at a
        // time finds out, so that a crowd of first connects does not each
        // leave a refused TLS attempt behind (the driver closes those in
        // the background, while their slots are already held for the
        // plain attempt).
        let _finding_out = match self.inner.tls_known.load(Ordering::Acquire) {
            true => None,
            false => Some(self.inner.finding_out.lock().await),
        };
        if self.inner.server_without_tls.load(Ordering::Relaxed) {
            return Connecting::new(Conn::new(plain.clone())).await;
        }
        match Connecting::new(Conn::new(self.inner.first.clone())).await {
            Err(mysql_async::Error::Driver(
                mysql_async::DriverError::NoClientSslFlagFromServer,
            )) => {
                self.inner.server_without_tls.store(true, Ordering::Relaxed);
                tracing::debug!(url = %self.inner.redacted, "the server offers no TLS; ssl-mode=PREFERRED connects without it");
                Connecting::new(Conn::new(plain.clone())).await
            }
            Ok(conn) => {
                self.inner.tls_known.store(true, Ordering::Release);
                Ok(conn)
            }
            other => other,
        }
    }
}

impl ServerUrl {
    /// [`ServerUrl::connect`], with a failure described as
    /// [`Error::Connect`] (one attempt, what to do, URL redacted), for
    /// callers outside a pool that make their own rounds
    /// ([`Error::is_retryable`] says whether another round may help).
    ///
    /// # Errors
    ///
    /// [`Error::Connect`].
    pub async fn connect_once(&self) -> Result<Conn> {
        let via_socket = self.opts().socket().is_some();
        let failure = match self.connect().await {
            Ok(conn) => return Ok(conn),
            Err(e) => crate::retry::Failure::from_driver(&e, via_socket),
        };
        Err(Error::Connect {
            url: self.inner.redacted.clone(),
            pool: None,
            slot: None,
            attempts: vec![crate::error::Attempt {
                number: 1,
                code: failure.code,
                message: failure.message,
                delay: None,
                advice: failure.advice.map(str::to_string),
            }],
        })
    }
}

/// A connect in progress whose socket is closed, not handed to a background
/// task, when it is dropped unfinished.
pub(crate) struct Connecting {
    fut: Option<ConnectFuture>,
}

/// What `Conn::new` returns.
type ConnectFuture =
    Pin<Box<dyn Future<Output = std::result::Result<Conn, mysql_async::Error>> + Send + 'static>>;

impl Connecting {
    pub(crate) fn new(fut: ConnectFuture) -> Connecting {
        Connecting { fut: Some(fut) }
    }
}

impl Future for Connecting {
    type Output = std::result::Result<Conn, mysql_async::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(Err(mysql_async::Error::Driver(
                mysql_async::DriverError::ConnectionClosed,
            )));
        };
        let out = fut.as_mut().poll(cx);
        if out.is_ready() {
            self.fut = None;
        }
        out
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        let Some(fut) = self.fut.take() else { return };
        if tokio::runtime::Handle::try_current().is_err() {
            drop(fut);
            return;
        }
        // On a thread without a runtime the driver finds no runtime to
        // spawn its polite disconnect on, so dropping its connection closes
        // the socket there and then. Joining makes the caller's next step
        // (releasing the slot) come after that. Only cancelled or timed-out
        // connects pay for the thread.
        let closer = std::thread::Builder::new()
            .name("dbslots-connect-closer".into())
            .spawn(move || drop(fut));
        match closer {
            Ok(handle) => {
                let _ = handle.join();
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a thread to close an abandoned connect; the driver closes it in the background");
            }
        }
    }
}

struct SslParams {
    mode: Option<String>,
    ca: Option<String>,
    driver_tls: bool,
}

/// Takes `ssl-mode` and `ssl-ca` out of the query of `url` and tells
/// whether the driver's own TLS parameters are there.
fn split_ssl_params(url: &str) -> (String, SslParams) {
    let mut params = SslParams {
        mode: None,
        ca: None,
        driver_tls: false,
    };
    // The query starts at the first `?` after the user information (a
    // password may hold a `?`), which ends at the last `@` before the path;
    // an `@` in the query (an ssl-ca path) is not one of them.
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    let before_path = rest.find('/').map_or(rest, |slash| &rest[..slash]);
    let after_user = before_path
        .rfind('@')
        .or_else(|| rest.rfind('@'))
        .map_or(authority_start, |at| authority_start + at);
    let Some(q) = url[after_user..].find('?').map(|i| after_user + i) else {
        return (url.to_string(), params);
    };
    let (base, query) = (&url[..q], &url[q + 1..]);
    let (query, fragment) = match query.find('#') {
        Some(h) => (&query[..h], &query[h..]),
        None => (query, ""),
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8_lossy()
            .into_owned();
        if SSL_MODE_KEYS.contains(&key) {
            params.mode = Some(value);
        } else if SSL_CA_KEYS.contains(&key) {
            params.ca = Some(value);
        } else {
            params.driver_tls |= DRIVER_TLS_KEYS.contains(&key);
            kept.push(pair);
        }
    }
    let mut out = base.to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    out.push_str(fragment);
    (out, params)
}

fn without_tls(opts: Opts) -> Opts {
    OptsBuilder::from_opts(opts).ssl_opts(None).into()
}

/// The TLS name that makes `mysql_async` skip the host-name check (see the
/// module documentation).
const SKIP_NAME_CHECK: &str = "NotValidForName";

fn ssl_opts(mode: SslMode, ca: Option<Vec<u8>>) -> std::result::Result<SslOpts, String> {
    install_crypto_provider();
    let unverified = || {
        SslOpts::default()
            .with_danger_accept_invalid_certs(true)
            .with_danger_skip_domain_validation(true)
    };
    let roots = |ca: Option<Vec<u8>>| -> std::result::Result<SslOpts, String> {
        let certs = match ca {
            Some(pem) => vec![pem],
            None => system_roots()?,
        };
        Ok(SslOpts::default()
            .with_root_certs(certs.into_iter().map(Into::into).collect())
            .with_disable_built_in_roots(true))
    };
    Ok(match (mode, ca) {
        (SslMode::Disabled, _) => unreachable!("DISABLED has no TLS options"),
        (SslMode::Preferred, _) | (SslMode::Required, None) => unverified(),
        (SslMode::Required | SslMode::VerifyCa, ca) => roots(ca)?
            .with_danger_skip_domain_validation(true)
            .with_danger_tls_hostname_override(Some(SKIP_NAME_CHECK)),
        (SslMode::VerifyIdentity, ca) => roots(ca)?,
    })
}

/// Reads an `ssl-ca` file: PEM certificates, at least one.
fn read_ca(path: &Path) -> std::result::Result<Vec<u8>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let data = std::fs::read(path).map_err(|e| {
        format!(
            "ssl-ca={}: cannot read it ({e}); give the path of the CA certificate (PEM) that signed the server's certificate",
            path.display()
        )
    })?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "ssl-ca={}: not a PEM certificate file ({e})",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "ssl-ca={}: holds no certificate (-----BEGIN CERTIFICATE-----); give the CA certificate in PEM",
            path.display()
        ));
    }
    Ok(data)
}

/// The system's trusted roots (`/etc/ssl/certs`, or `SSL_CERT_FILE`/
/// `SSL_CERT_DIR`), DER each.
fn system_roots() -> std::result::Result<Vec<Vec<u8>>, String> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(format!(
            "no ssl-ca is given and no system root certificates were found{why}; give ssl-ca=PATH, install the ca-certificates package, or set SSL_CERT_FILE"
        ));
    }
    Ok(found
        .certs
        .into_iter()
        .map(|c| c.as_ref().to_vec())
        .collect())
}

/// rustls needs one process-wide crypto provider; with more than one
/// compiled in (another crate may enable aws-lc-rs) it refuses to pick.
/// Install ring unless the application chose already.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unencoded_password_is_told_to_be_percent_encoded_and_not_shown() {
        let e = ServerUrl::parse("mysql://app:se/cr:et@db:3306/x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("percent-encode it"), "{e}");
        assert!(e.contains("/ as %2F"), "{e}");
        assert!(!e.contains("se/cr:et"), "{e}");
    }

    #[test]
    fn ssl_params_are_taken_out_of_the_query_and_the_rest_kept() {
        let (url, p) = split_ssl_params(
            "mysql://app:p?w@db:3306/x?prefer_socket=false&ssl-mode=verify_ca&ssl-ca=%2Ftmp%2Fmy%20ca.pem",
        );
        assert_eq!(url, "mysql://app:p?w@db:3306/x?prefer_socket=false");
        assert_eq!(p.mode.as_deref(), Some("verify_ca"));
        assert_eq!(p.ca.as_deref(), Some("/tmp/my ca.pem"));
        assert!(!p.driver_tls);
        let (url, p) = split_ssl_params("mysql://db/x?require_ssl=true");
        assert_eq!(url, "mysql://db/x?require_ssl=true");
        assert!(p.driver_tls && p.mode.is_none());
    }

    #[test]
    fn an_at_sign_in_the_query_is_not_taken_for_the_user_information() {
        // A CA file may live at a path with an `@` (a systemd instance, a
        // secrets directory): the query is still the query.
        let (url, p) =
            split_ssl_params("mysql://app:pw@db/x?ssl-mode=VERIFY_CA&ssl-ca=/run/db@prod/ca.pem");
        assert_eq!(url, "mysql://app:pw@db/x");
        assert_eq!(p.mode.as_deref(), Some("VERIFY_CA"));
        assert_eq!(p.ca.as_deref(), Some("/run/db@prod/ca.pem"));
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("db@prod");
        std::fs::create_dir(&ca_dir).unwrap();
        let files = dbslots_testkit::make_certificates(&ca_dir, "localhost").unwrap();
        let u = ServerUrl::parse(&format!(
            "mysql://app:pw@db/x?ssl-mode=VERIFY_CA&ssl-ca={}",
            files.ca.display()
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u.ssl_mode(), Some(SslMode::VerifyCa));
    }

    #[test]
    fn keepalive_is_added_to_both_attempts_unless_the_url_sets_it() {
        use std::time::Duration;
        let u = ServerUrl::parse("mysql://app:pw@db/x")
            .unwrap()
            .with_tcp_keepalive(Duration::from_secs(10));
        assert_eq!(u.opts().tcp_keepalive(), Some(Duration::from_secs(10)));
        let plain = u
            .inner
            .plain
            .as_ref()
            .expect("PREFERRED has a plain attempt");
        assert_eq!(plain.tcp_keepalive(), Some(Duration::from_secs(10)));
        assert_eq!(u.ssl_mode(), Some(SslMode::Preferred));
        let u = ServerUrl::parse("mysql://app:pw@db/x?tcp_keepalive=2500")
            .unwrap()
            .with_tcp_keepalive(Duration::from_secs(10));
        assert_eq!(u.opts().tcp_keepalive(), Some(Duration::from_millis(2500)));
    }

    #[test]
    fn modes_parse_in_any_case_and_the_default_is_preferred() {
        assert_eq!(
            SslMode::parse("verify-identity"),
            Some(SslMode::VerifyIdentity)
        );
        assert_eq!(SslMode::parse("Required"), Some(SslMode::Required));
        assert_eq!(SslMode::parse("on"), None);
        let u = ServerUrl::parse("mysql://app:pw@db/x").unwrap();
        assert_eq!(u.ssl_mode(), Some(SslMode::Preferred));
        assert!(u.opts().ssl_opts().is_some());
        let u = ServerUrl::parse("mysql://app:pw@db/x?ssl-mode=DISABLED").unwrap();
        assert!(u.opts().ssl_opts().is_none());
        let u = ServerUrl::parse("mysql://app:pw@db/x?require_ssl=false").unwrap();
        assert_eq!(u.ssl_mode(), None);
        assert!(u.opts().ssl_opts().is_none());
    }

    #[test]
    fn bad_tls_parameters_are_explained_without_the_password() {
        for (url, expect) in [
            ("mysql://app:s3cret@db/x?ssl-mode=ON", "is not a mode"),
            (
                "mysql://app:s3cret@db/x?ssl-mode=REQUIRED&require_ssl=true",
                "keep one of them",
            ),
            (
                "mysql://app:s3cret@db/x?ssl-mode=VERIFY_CA&ssl-ca=/nonexistent/ca.pem",
                "cannot read it",
            ),
            ("mysql://app:se/cret@db/x", "invalid MySQL URL"),
        ] {
            let text = ServerUrl::parse(url).unwrap_err().to_string();
            assert!(text.contains(expect), "{url}: {text}");
            assert!(
                !text.contains("s3cret") && !text.contains("se/cret"),
                "{text}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let text = ServerUrl::parse(&format!(
            "mysql://app:pw@db/x?ssl-mode=VERIFY_CA&ssl-ca={}",
            not_pem.display()
        ))
        .unwrap_err()
        .to_string();
        assert!(text.contains("holds no certificate"), "{text}");
    }
}
