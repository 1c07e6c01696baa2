//! Which connect failures are retried, and how long to wait between
//! attempts.

use std::io;
use std::time::Duration;

use crate::error::codes;

/// A connect failure reduced to what the retry loop and the report need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// Server code, or the client code assigned to a network failure.
    pub code: Option<u16>,
    /// The server's or the operating system's words.
    pub message: String,
    /// What to do, for a failure without a code (TLS).
    pub advice: Option<&'static str>,
}

impl Failure {
    /// Reads a `mysql_async` error. `via_socket` tells a Unix-socket connect
    /// (2002) from a TCP one (2003).
    pub fn from_driver(err: &mysql_async::Error, via_socket: bool) -> Failure {
        use mysql_async::{DriverError, Error, IoError, TlsError};
        match err {
            Error::Server(e) => Failure::coded(e.code, e.message.clone()),
            Error::Driver(DriverError::NoClientSslFlagFromServer) => Failure {
                code: None,
                message: "TLS is required (ssl-mode REQUIRED or stricter, or require_ssl=true) but the server does not offer it".into(),
                advice: Some(
                    "enable TLS on the server (ssl_cert and ssl_key), or, if an unencrypted connection is acceptable here, use ssl-mode=PREFERRED (TLS when offered) or ssl-mode=DISABLED; retrying cannot help",
                ),
            },
            Error::Io(IoError::Tls(TlsError::Tls(e))) => tls_failure(e),
            Error::Io(IoError::Tls(e)) => Failure {
                code: None,
                message: format!("TLS cannot be set up: {e}"),
                advice: Some(
                    "check ssl-ca (a PEM file with the CA certificate) and that the URL's host is a valid name or IP address; retrying cannot help",
                ),
            },
            Error::Io(IoError::Io(e)) => match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(tls) => tls_failure(tls),
                None => Failure::coded(io_code(e, via_socket), e.to_string()),
            },
            Error::Driver(DriverError::ConnectionClosed) => Failure::coded(
                codes::CR_SERVER_GONE_ERROR,
                "the server closed the connection".into(),
            ),
            Error::Driver(DriverError::PacketOutOfOrder) => Failure::coded(
                codes::CR_SERVER_LOST,
                "packets out of order: the connection was disturbed".into(),
            ),
            // A TLS client may see a refusal wrapped in another error
            // ("Received error packet before completion of TLS handshake").
            other => {
                let message = other.to_string();
                Failure {
                    code: wrapped_limit_code(&message),
                    message,
                    advice: None,
                }
            }
        }
    }

    fn coded(code: u16, message: String) -> Failure {
        Failure {
            code: Some(code),
            message,
            advice: None,
        }
    }

    /// A connect attempt that took longer than the connect timeout.
    pub fn timed_out(after: Duration, via_socket: bool) -> Failure {
        Failure {
            code: Some(if via_socket {
                codes::CR_CONNECTION_ERROR
            } else {
                codes::CR_CONN_HOST_ERROR
            }),
            message: format!("no answer within the connect timeout of {after:.1?}"),
            advice: None,
        }
    }
}

/// A failed TLS handshake, in words that say which setting to change.
fn tls_failure(e: &rustls::Error) -> Failure {
    use rustls::CertificateError as C;
    let (what, advice) = match e {
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => (
            "the server's certificate is not issued for the URL's host",
            "connect by a host name the certificate names, or use ssl-mode=VERIFY_CA to check only that a trusted CA signed it; retrying cannot help",
        ),
        rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => (
            "the server's certificate is expired or not yet valid",
            "renew the server's certificate (or correct this host's clock); retrying cannot help",
        ),
        rustls::Error::InvalidCertificate(_) => (
            "the server's certificate is not signed by a trusted CA",
            "give the CA certificate that signed the server's certificate as ssl-ca=PATH (the server's ssl_ca), or use ssl-mode=REQUIRED to encrypt without checking the certificate; retrying cannot help",
        ),
        rustls::Error::AlertReceived(_) => (
            "the server refused the TLS handshake",
            "look at the server's TLS settings (tls_version, ssl_cipher) and its error log; retrying cannot help",
        ),
        _ => (
            "the TLS handshake failed",
            "look at the server's TLS settings and its error log, or try ssl-mode=REQUIRED; retrying cannot help",
        ),
    };
    Failure {
        code: None,
        message: format!("TLS: {what} ({e})"),
        advice: Some(advice),
    }
}

/// The client code libmysqlclient would report for an I/O error.
fn io_code(e: &io::Error, via_socket: bool) -> u16 {
    use io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => codes::CR_SERVER_LOST,
        _ if via_socket => codes::CR_CONNECTION_ERROR,
        _ => codes::CR_CONN_HOST_ERROR,
    }
}

/// 1040, 1203 or 1226 when `message` reports one of them inside another
/// error.
fn wrapped_limit_code(message: &str) -> Option<u16> {
    [
        codes::TOO_MANY_CONNECTIONS,
        codes::TOO_MANY_USER_CONNECTIONS,
        codes::USER_LIMIT_REACHED,
    ]
    .into_iter()
    .find(|code| {
        let code = code.to_string();
        message.match_indices(&code).any(|(at, _)| {
            !is_digit_at(message, at.wrapping_sub(1)) && !is_digit_at(message, at + 4)
        })
    })
}

fn is_digit_at(s: &str, at: usize) -> bool {
    s.as_bytes().get(at).is_some_and(u8::is_ascii_digit)
}

/// Exponential backoff with jitter.
///
/// After failed attempt `n` (1-based) the nominal wait is
/// `min(max, base × 2^(n-1))`; the actual wait is drawn uniformly from
/// `[nominal × (1 - jitter), nominal]`, so workers refused together do not
/// come back together.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub jitter: f64,
}

impl Backoff {
    /// The wait after failed attempt `failed` (1-based).
    pub fn delay(&self, failed: u32) -> Duration {
        let factor = 2u32.saturating_pow(failed.saturating_sub(1));
        let nominal = self.base.saturating_mul(factor).min(self.max);
        let jitter = self.jitter.clamp(0.0, 1.0);
        nominal.mul_f64(1.0 - jitter * fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitters_below_it() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(500),
            jitter: 0.0,
        };
        let delays: Vec<_> = (1..=5).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        let b = Backoff { jitter: 0.5, ..b };
        for _ in 0..200 {
            let d = b.delay(2);
            assert!(
                d >= Duration::from_millis(100) && d <= Duration::from_millis(200),
                "{d:?}"
            );
        }
        assert!(b.delay(u32::MAX) <= Duration::from_millis(500));
    }

    #[test]
    fn network_failures_get_client_codes() {
        let refused = mysql_async::Error::Io(mysql_async::IoError::Io(io::Error::from(
            io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(Failure::from_driver(&refused, false).code, Some(2003));
        assert_eq!(Failure::from_driver(&refused, true).code, Some(2002));
        let lost = mysql_async::Error::Io(mysql_async::IoError::Io(io::Error::from(
            io::ErrorKind::UnexpectedEof,
        )));
        assert_eq!(Failure::from_driver(&lost, false).code, Some(2013));
        let gone = mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed);
        assert_eq!(Failure::from_driver(&gone, false).code, Some(2006));
    }

    #[test]
    fn refusals_wrapped_in_other_errors_are_recognised() {
        assert_eq!(
            wrapped_limit_code(
                "Received error packet before completion of TLS handshake: ERROR 1040 (08004): Too many connections"
            ),
            Some(1040)
        );
        assert_eq!(wrapped_limit_code("error 11226 happened"), None);
        assert_eq!(wrapped_limit_code("nothing here"), None);
    }
}
