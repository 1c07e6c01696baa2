//! Throwaway certificates for the TLS tests: a fresh CA and a server
//! certificate signed by it, made with the `openssl` program, for MySQL
//! and for Redis (whose cluster nodes also present it to each other, as
//! clients).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::install::install_with_apt;
use crate::process::{find_program, run_captured};

/// Certificate files made for a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate (PEM): what `ssl-ca=` must name.
    pub ca: PathBuf,
    /// The server certificate (PEM), signed by [`TlsFiles::ca`].
    pub cert: PathBuf,
    /// The server certificate's private key (PEM).
    pub key: PathBuf,
}

/// What to make.
pub(crate) struct Request<'a> {
    /// File names in the directory: the CA, the certificate, its key.
    pub names: [&'a str; 3],
    /// The certificate's `subjectAltName`, e.g. `DNS:localhost,IP:127.0.0.1`.
    pub subject_alt_names: &'a str,
    /// The certificate's subject CN.
    pub common_name: &'a str,
    /// Whether the certificate may also authenticate a client (a Redis
    /// cluster's nodes present it to each other).
    pub client_auth: bool,
}

/// Makes a fresh CA and a certificate signed by it in `dir`, valid for two
/// days, with EC P-256 keys (fast to make). `openssl` is installed with
/// apt-get as root when missing (saying so). The files are readable by all:
/// a container's server runs as another user, and these are throwaway keys
/// of throwaway servers.
pub(crate) fn make_certificates(dir: &Path, request: &Request<'_>) -> Result<TlsFiles> {
    if find_program(&["openssl"]).is_none() {
        install_with_apt(
            "openssl",
            "the openssl program (test certificates)",
            || find_program(&["openssl"]).is_some(),
            "the TLS tests make certificates with the openssl program: install the `openssl` package",
        )?;
    }
    let openssl = find_program(&["openssl"]).context("openssl is still missing")?;
    let [ca, cert, key] = request.names;
    let files = TlsFiles {
        ca: dir.join(ca),
        cert: dir.join(cert),
        key: dir.join(key),
    };
    let ca_key = dir.join("ca-key.pem");
    let csr = dir.join("server.csr");
    let ext = dir.join("server.ext");
    let usage = if request.client_auth {
        "serverAuth,clientAuth"
    } else {
        "serverAuth"
    };
    std::fs::write(
        &ext,
        format!(
            "subjectAltName={}\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n",
            request.subject_alt_names
        ),
    )?;
    let p = |path: &Path| path.display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    // A serial of its own per CA, so two CAs of one test run never issue
    // certificates that look alike.
    let serial = format!(
        "{}",
        u64::from(std::process::id()) * 1000 + u64::from(rand_u16())
    );
    let steps: [Vec<String>; 3] = [
        ["req", "-x509"]
            .iter()
            .chain(&ec)
            .map(|s| s.to_string())
            .chain([
                "-keyout".into(),
                p(&ca_key),
                "-out".into(),
                p(&files.ca),
                "-days".into(),
                "2".into(),
                "-subj".into(),
                format!("/CN=dbslots test CA {serial}"),
                "-addext".into(),
                "basicConstraints=critical,CA:TRUE".into(),
                "-addext".into(),
                "keyUsage=critical,keyCertSign,cRLSign".into(),
            ])
            .collect(),
        ["req"]
            .iter()
            .chain(&ec)
            .map(|s| s.to_string())
            .chain([
                "-keyout".into(),
                p(&files.key),
                "-out".into(),
                p(&csr),
                "-subj".into(),
                format!("/CN={}", request.common_name),
            ])
            .collect(),
        [
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&files.ca),
            "-CAkey",
            &p(&ca_key),
            "-set_serial",
            &serial,
            "-out",
            &p(&files.cert),
            "-days",
            "2",
            "-extfile",
            &p(&ext),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    ];
    for args in steps {
        run_captured(Command::new(&openssl).args(&args))
            .with_context(|| format!("openssl {} failed", args.join(" ")))?;
    }
    use std::os::unix::fs::PermissionsExt;
    for file in [&files.ca, &files.cert, &files.key] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(files)
}

fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish() as u16
}
