//! Connections the server drops, and connects that must not be retried.

use std::time::{Duration, Instant};

use dbslots_mysql::mysql_async::prelude::Queryable;
use dbslots_mysql::{Connection, Connector, ConnectorOptions, Error, Liveness, codes};
use dbslots_testkit::shared_mysql;

use crate::support::{admin, gone_from_server, pool, runtime, url_as, url_with_db};

#[test]
fn a_connection_killed_by_the_admin_is_reopened_in_the_same_slot() {
    let Some(shared) = shared_mysql() else {
        return;
    };
    runtime().block_on(async {
        let (_dir, pool) = pool(1);
        let connector = Connector::new(&shared.user_url, pool.clone()).expect("connector");
        let mut conn = connector.connect().await.expect("connect");
        assert_eq!(conn.ensure_alive().await.expect("ping"), Liveness::Alive);
        let first_id = conn.id();
        let slot = conn.slot().expect("holds a slot").index();

        let mut admin = admin(&shared.admin_url).await;
        admin
            .query_drop(format!("KILL CONNECTION {first_id}"))
            .await
            .expect("the admin kills the connection");
        assert!(gone_from_server(&mut admin, u64::from(first_id)).await);

        let liveness = conn.ensure_alive().await.expect("re-opened");
        assert_eq!(
            liveness,
            Liveness::Reopened {
                previous_id: first_id
            }
        );
        assert_ne!(conn.id(), first_id, "a new server connection");
        assert_eq!(conn.slot().map(|s| s.index()), Some(slot), "the same slot");
        let one: Option<u8> = conn.query_first("SELECT 1").await.expect("usable again");
        assert_eq!(one, Some(1));
        assert!(
            pool.try_acquire().expect("try_acquire").is_none(),
            "the slot stayed held throughout"
        );
        let second_id = conn.id();
        Connection::close(conn).await.expect("close");
        assert!(
            pool.try_acquire().expect("try_acquire").is_some(),
            "close freed the slot"
        );
        assert!(gone_from_server(&mut admin, u64::from(second_id)).await);
        admin.disconnect().await.expect("disconnect");
    });
}

#[test]
fn access_denied_and_unknown_database_fail_at_once_with_a_clear_error_and_free_the_slot() {
    let Some(shared) = shared_mysql() else {
        return;
    };
    runtime().block_on(async {
        let (_dir, pool) = pool(1);
        let wrong_password = "not-the-Password-7";
        let cases = [
            (
                url_as(&shared.user_url, dbslots_testkit::USER, wrong_password),
                codes::ACCESS_DENIED,
                "password in the URL",
            ),
            // The admin may use any database, so it learns that this one
            // does not exist (an ordinary account gets 1044 instead).
            (
                url_with_db(&shared.admin_url, "dbslots_no_such_db"),
                codes::UNKNOWN_DATABASE,
                "create the database",
            ),
        ];
        for (url, code, advice) in cases {
            let connector = Connector::new(&url, pool.clone()).expect("connector");
            let started = Instant::now();
            let err = connector.connect().await.expect_err("the connect fails");
            // The default backoff would wait 100 ms before a second attempt.
            assert!(started.elapsed() < Duration::from_secs(2), "failed at once");
            assert!(matches!(err, Error::Connect { .. }), "{err:?}");
            assert_eq!(err.code(), Some(code));
            assert_eq!(err.attempts().len(), 1, "not retried");
            let text = err.to_string();
            assert!(text.contains(&format!("error {code}: ")), "{text}");
            assert!(text.contains("(not retried)"), "{text}");
            assert!(!text.contains('\n'), "one line: {text}");
            assert!(text.contains(advice), "{text}");
            assert!(!text.contains(wrong_password), "{text}");
            assert!(!text.contains(dbslots_testkit::PASSWORD), "{text}");
            assert!(!text.contains(dbslots_testkit::ADMIN_PASSWORD), "{text}");
            assert!(
                pool.try_acquire().expect("try_acquire").is_some(),
                "the slot was released"
            );
        }
    });
}

#[test]
fn a_server_source_whose_connection_was_dropped_reconnects_within_the_same_read() {
    // The server ends idle connections (wait_timeout, a proxy's idle
    // timeout, a restart, KILL): the next read must connect again at once,
    // not report the server down for one round while it is up.
    let Some(shared) = shared_mysql() else {
        return;
    };
    runtime().block_on(async {
        let source = dbslots_mysql::ServerSource::new(shared.user_url.clone());
        let wait = Duration::from_secs(10);
        let first = source.read(wait).await;
        let first_id = first.current().expect("up").limits.connection_id;

        let mut admin = admin(&shared.admin_url).await;
        admin
            .query_drop(format!("KILL CONNECTION {first_id}"))
            .await
            .expect("the admin kills the monitor's connection");
        assert!(gone_from_server(&mut admin, first_id).await);
        tokio::time::sleep(dbslots_mysql::SERVER_FRESH + Duration::from_millis(100)).await;

        let second = source.read(wait).await;
        let reading = second
            .current()
            .unwrap_or_else(|e| panic!("the server is up but the source says: {e}"));
        assert_ne!(reading.limits.connection_id, first_id, "a new connection");
        source.close().await;
        admin.disconnect().await.expect("disconnect");
    });
}

/// `url` with its `host:port` replaced by the proxy's.
fn through(url: &str, proxy: &dbslots_testkit::FreezableProxy) -> String {
    let opts = dbslots_mysql::mysql_async::Opts::from_url(url).expect("the test URL parses");
    let server = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
    assert!(
        url.contains(&server) && url.contains("prefer_socket=false"),
        "{url}"
    );
    url.replace(&server, &format!("127.0.0.1:{}", proxy.port()))
}

#[test]
fn a_connection_behind_a_frozen_network_is_found_out_and_reopened_once_the_network_heals() {
    // A long-running worker checks its connection before each job. Behind
    // a frozen network (bytes stop, the socket stays open) a bare ping
    // would wait for the kernel to give up, a quarter of an hour; it must
    // give up after the connect timeout, and never trust that connection
    // again: the lost ping's answer may still come.
    let Some(shared) = shared_mysql() else {
        return;
    };
    runtime().block_on(async {
        let opts = dbslots_mysql::mysql_async::Opts::from_url(&shared.user_url).unwrap();
        let server = std::net::SocketAddr::from(([127, 0, 0, 1], opts.tcp_port()));
        let proxy = dbslots_testkit::FreezableProxy::start(server).expect("a proxy");
        let (_dir, pool) = pool(1);
        let connector = Connector::with_options(
            &through(&shared.user_url, &proxy),
            pool.clone(),
            ConnectorOptions::new()
                .connect_timeout(Duration::from_secs(1))
                .attempts(1),
        )
        .expect("connector");
        let mut conn = connector.connect().await.expect("connect");
        let first_id = conn.id();
        let slot = conn.slot().expect("holds a slot").index();

        // Everything frozen: the ping and the new connect both go
        // unanswered; an error, in about two connect timeouts.
        proxy.freeze();
        let started = Instant::now();
        let err = conn
            .ensure_alive()
            .await
            .expect_err("nothing answers behind a frozen network");
        let took = started.elapsed();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
        assert!(took < Duration::from_secs(8), "gave up only after {took:?}");
        assert!(
            pool.try_acquire().expect("try_acquire").is_none(),
            "the connection kept its slot"
        );

        // The network heals: the next check opens a new connection in the
        // same slot, without pinging the old one again.
        proxy.thaw();
        let liveness = conn.ensure_alive().await.expect("re-opened");
        assert_eq!(
            liveness,
            Liveness::Reopened {
                previous_id: first_id
            }
        );
        assert_ne!(conn.id(), first_id);
        assert_eq!(conn.slot().map(|s| s.index()), Some(slot), "the same slot");
        let one: Option<u8> = conn.query_first("SELECT 1").await.expect("usable");
        assert_eq!(one, Some(1));

        // Only the old path frozen (a failover, a firewall that lost its
        // state): found out within the timeout and re-opened at once.
        proxy.freeze_open_connections();
        let second_id = conn.id();
        let started = Instant::now();
        let liveness = conn.ensure_alive().await.expect("re-opened");
        assert_eq!(
            liveness,
            Liveness::Reopened {
                previous_id: second_id
            }
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let one: Option<u8> = conn.query_first("SELECT 1").await.expect("usable");
        assert_eq!(one, Some(1));
        Connection::close(conn).await.expect("close");

        // The server still holds the sessions behind the frozen path.
        let mut admin = admin(&shared.admin_url).await;
        for id in [first_id, second_id] {
            let _ = admin.query_drop(format!("KILL CONNECTION {id}")).await;
        }
        admin.disconnect().await.expect("disconnect");
    });
}
