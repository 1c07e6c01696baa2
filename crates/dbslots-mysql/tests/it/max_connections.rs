//! 200 workers against a server with max_connections = 20.

use std::time::Duration;

use dbslots_mysql::mysql_async::Conn;
use dbslots_mysql::mysql_async::prelude::Queryable;
use dbslots_mysql::{Connection, Connector, ConnectorOptions, ServerLimits, codes};
use dbslots_testkit::{MysqlOptions, private_mysql};

use crate::support::{admin, pool, runtime, server_code, status};

const WORKERS: usize = 200;

#[test]
fn two_hundred_workers_through_the_connector_never_meet_1040_while_raw_connects_do() {
    let _serial = crate::support::load_test();
    let Some(server) = private_mysql(MysqlOptions {
        max_connections: Some(20),
        ..Default::default()
    }) else {
        return;
    };
    runtime().block_on(async {
        let mut admin = admin(&server.admin_url()).await;
        let limits = ServerLimits::read(&mut admin).await.expect("limits");
        assert_eq!(limits.max_connections, 20);
        let capacity = limits.suggest_capacity().capacity;
        assert!(capacity < 20, "the suggestion leaves headroom: {capacity}");

        // Through the connector: every worker connects, works, closes.
        let (_dir, pool) = pool(capacity);
        let connector = Connector::with_options(
            &server.user_url(),
            pool,
            ConnectorOptions::new().slot_timeout(Duration::from_secs(120)),
        )
        .expect("connector");
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let connector = connector.clone();
                tokio::spawn(async move {
                    let mut conn = connector.connect().await?;
                    conn.query_drop("DO SLEEP(0.02)").await.map_err(|e| {
                        dbslots_mysql::Error::Query {
                            what: "the worker's statement".into(),
                            source: e,
                        }
                    })?;
                    let failed = conn.failed_attempts().to_vec();
                    Connection::close(conn).await?;
                    Ok::<_, dbslots_mysql::Error>(failed)
                })
            })
            .collect();
        let mut refusals = 0;
        for w in workers {
            let failed = w
                .await
                .expect("the worker task finishes")
                .unwrap_or_else(|e| panic!("a worker failed: {e}"));
            refusals += failed
                .iter()
                .filter(|a| a.code == Some(codes::TOO_MANY_CONNECTIONS))
                .count();
        }
        // Every failed attempt is in `failed_attempts`, so this sees each
        // refusal. (MariaDB's Connection_errors_max_connections would not:
        // it counts only refusals at accept time, beyond the extra
        // administrator connection, not those of an account after login.)
        assert_eq!(refusals, 0, "no connect attempt was refused with 1040");
        let max_used = status(&mut admin, "Max_used_connections").await;
        assert!(
            max_used <= 20,
            "Max_used_connections {max_used} stayed within 20"
        );

        // The same load without the connector: the server has to refuse.
        // Connects are spread over 200 ms so that the server's listen
        // backlog does not overflow (a connect lost there hangs without a
        // timeout); the holds overlap all the same.
        let mut raw = Vec::new();
        for _ in 0..WORKERS {
            let url = server.user_url();
            raw.push(tokio::spawn(async move {
                let connect = tokio::time::timeout(Duration::from_secs(10), Conn::from_url(&url));
                match connect.await {
                    Ok(Ok(mut conn)) => {
                        let _ = conn.query_drop("DO SLEEP(0.3)").await;
                        let _ = conn.disconnect().await;
                        None
                    }
                    Ok(Err(e)) => server_code(&e),
                    Err(_) => None,
                }
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut raw_refusals = 0;
        for r in raw {
            if r.await.expect("the raw task finishes") == Some(codes::TOO_MANY_CONNECTIONS) {
                raw_refusals += 1;
            }
        }
        assert!(
            raw_refusals > 0,
            "200 raw connects hit 1040 (the test sees the problem)"
        );
        admin.disconnect().await.expect("disconnect");
    });
}
