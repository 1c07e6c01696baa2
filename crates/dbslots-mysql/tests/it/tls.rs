//! TLS: `ssl-mode`/`ssl-ca` against a server that requires secure transport
//! (certificates made at test time) and against a plain one.

use std::time::{Duration, Instant};

use dbslots_mysql::mysql_async::Conn;
use dbslots_mysql::mysql_async::prelude::Queryable;
use dbslots_mysql::{Connector, ConnectorOptions, Error, ServerUrl, SslMode, connect_monitor};
use dbslots_testkit::{MysqlOptions, make_certificates, private_mysql, shared_mysql};

use crate::support::{pool, runtime};

/// The session's `Ssl_cipher`: empty without TLS.
async fn cipher(conn: &mut Conn) -> String {
    let row: Option<(String, String)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .await
        .expect("reads Ssl_cipher");
    row.map(|(_, v)| v).unwrap_or_default()
}

/// `url` with `params` added to its query.
fn with(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

fn connector(url: &str) -> Result<(tempfile::TempDir, Connector), Error> {
    let (dir, pool) = pool(4);
    // Five attempts with short delays: a failure that were retried would
    // show as more than one attempt.
    let options = ConnectorOptions::new()
        .attempts(5)
        .base_delay(Duration::from_millis(10))
        .connect_timeout(Duration::from_secs(5));
    Ok((dir, Connector::with_options(url, pool, options)?))
}

/// Connects through a connector and returns the session's cipher.
async fn cipher_through_connector(url: &str) -> String {
    let (_dir, connector) = connector(url).unwrap_or_else(|e| panic!("{e}"));
    let mut conn = connector.connect().await.unwrap_or_else(|e| panic!("{e}"));
    let c = cipher(&mut conn).await;
    dbslots_mysql::Connection::close(conn)
        .await
        .expect("closes");
    c
}

/// Connects through a connector, expecting a failure at the first attempt.
async fn fails_at_once(url: &str, password: &str) -> String {
    let (_dir, connector) = connector(url).unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let err = connector.connect().await.expect_err("the connect fails");
    assert_eq!(err.attempts().len(), 1, "not retried: {err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    let text = err.to_string();
    assert!(!text.contains('\n'), "one line: {text}");
    assert!(!text.contains(password), "{text}");
    assert!(
        text.contains(":***@127.0.0.1:"),
        "names the redacted URL: {text}"
    );
    text
}

#[test]
fn every_ssl_mode_against_a_server_that_requires_tls() {
    let Some(server) = private_mysql(MysqlOptions {
        require_secure_transport: true,
        ..Default::default()
    }) else {
        return;
    };
    let tls = server.tls().expect("the server has certificates").clone();
    let user_url = server.user_url();
    let password = dbslots_testkit::PASSWORD;
    let ca = tls.ca.display().to_string();
    runtime().block_on(async {
        // VERIFY_CA: the chain is checked, the name (localhost, not
        // 127.0.0.1) is not.
        let verify_ca = with(&user_url, &format!("ssl-mode=VERIFY_CA&ssl-ca={ca}"));
        assert!(!cipher_through_connector(&verify_ca).await.is_empty());
        let mut monitor = connect_monitor(&verify_ca)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!cipher(&mut monitor).await.is_empty());
        monitor.disconnect().await.expect("closes");

        // PREFERRED, the default: TLS because the server offers it.
        assert_eq!(
            ServerUrl::parse(&user_url).unwrap().ssl_mode(),
            Some(SslMode::Preferred)
        );
        assert!(!cipher_through_connector(&user_url).await.is_empty());
        // REQUIRED: TLS, certificate unchecked.
        let required = with(&user_url, "ssl-mode=REQUIRED");
        assert!(!cipher_through_connector(&required).await.is_empty());
        // mysql_async's own words keep working.
        let own = with(&user_url, "require_ssl=true&verify_ca=false");
        assert!(!cipher_through_connector(&own).await.is_empty());

        // VERIFY_IDENTITY: by the name in the certificate it works, by IP
        // address it does not.
        let by_name = with(
            &user_url.replace("@127.0.0.1:", "@localhost:"),
            &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"),
        );
        assert!(!cipher_through_connector(&by_name).await.is_empty());
        let by_ip = with(&user_url, &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"));
        let text = fails_at_once(&by_ip, password).await;
        eprintln!("name mismatch: {text}");
        assert!(text.contains("not issued for the URL's host"), "{text}");
        assert!(
            text.contains("ssl-mode=VERIFY_CA"),
            "says what to change: {text}"
        );

        // A CA that did not sign the server's certificate.
        let other = tempfile::tempdir().expect("a temporary directory");
        let wrong = make_certificates(other.path(), "localhost").expect("certificates");
        let wrong_ca = with(
            &user_url,
            &format!("ssl-mode=VERIFY_CA&ssl-ca={}", wrong.ca.display()),
        );
        let text = fails_at_once(&wrong_ca, password).await;
        eprintln!("wrong CA: {text}");
        assert!(text.contains("not signed by a trusted CA"), "{text}");
        assert!(text.contains("ssl-ca=PATH"), "says what to change: {text}");
        // The monitor says the same, in one attempt.
        let text = connect_monitor(&wrong_ca)
            .await
            .expect_err("refused")
            .to_string();
        assert!(
            text.contains("not signed by a trusted CA") && !text.contains(password),
            "{text}"
        );

        // No TLS against a server that requires it.
        let disabled = with(&user_url, "ssl-mode=DISABLED");
        let text = fails_at_once(&disabled, password).await;
        eprintln!("DISABLED against require_secure_transport=ON: {text}");
        assert!(
            text.contains("require_secure_transport") && text.contains("ssl-mode=DISABLED"),
            "{text}"
        );
    });
}

#[test]
fn a_plain_server_under_required_fails_at_once_and_preferred_falls_back() {
    let Some(shared) = shared_mysql() else {
        return;
    };
    runtime().block_on(async {
        let mut admin = Conn::from_url(&shared.admin_url).await.expect("admin");
        let have_ssl: Option<(String, String)> = admin
            .query_first("SHOW GLOBAL VARIABLES LIKE 'have_ssl'")
            .await
            .expect("reads have_ssl");
        admin.disconnect().await.expect("closes");
        if have_ssl.is_some_and(|(_, v)| v == "YES") {
            eprintln!("the shared server offers TLS; this test needs a plain one");
            return;
        }
        let required = with(&shared.user_url, "ssl-mode=REQUIRED");
        let text = fails_at_once(&required, dbslots_testkit::PASSWORD).await;
        assert!(text.contains("does not offer it"), "{text}");
        assert!(
            text.contains("ssl-mode=PREFERRED"),
            "says what to change: {text}"
        );
        // mysql_async's own require_ssl used to panic without TLS compiled in.
        let own = with(&shared.user_url, "require_ssl=true");
        let text = fails_at_once(&own, dbslots_testkit::PASSWORD).await;
        assert!(text.contains("does not offer it"), "{text}");
        // PREFERRED connects without TLS, every time.
        for _ in 0..2 {
            assert_eq!(cipher_through_connector(&shared.user_url).await, "");
        }
    });
}
