//! Slot after socket when connects are cancelled: a connect dropped at any
//! point (TCP connect, handshake, TLS, login) closes its socket before its
//! slot goes to the next worker, so a pool as large as the server's room
//! never meets 1040.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dbslots_mysql::mysql_async::prelude::Queryable;
use dbslots_mysql::{Connector, ConnectorOptions, ServerLimits, codes};
use dbslots_testkit::{MysqlOptions, private_mysql};

use crate::support::{admin, pool, runtime};

const WORKERS: usize = 24;
const RUN_FOR: Duration = Duration::from_secs(8);

#[test]
fn connects_cancelled_at_random_points_never_push_the_server_over_its_limit() {
    let _serial = crate::support::load_test();
    // TLS makes the handshake longer, so more cancellations land mid-way.
    let Some(server) = private_mysql(MysqlOptions {
        max_connections: Some(12),
        tls: true,
        ..Default::default()
    }) else {
        return;
    };
    runtime().block_on(async {
        let mut admin = admin(&server.admin_url()).await;
        let limits = ServerLimits::read(&mut admin).await.expect("limits");
        // The capacity the crate suggests: its reserve covers the server's
        // teardown of a closed connection (counted until its thread has
        // noticed the close), not sockets left open.
        let capacity = limits.suggest_capacity().capacity;
        let (_dir, pool) = pool(capacity);
        let connector = Connector::with_options(
            &server.user_url(),
            pool,
            ConnectorOptions::new()
                .attempts(1)
                .slot_timeout(Duration::from_secs(30)),
        )
        .expect("connector");
        let refused = Arc::new(AtomicU64::new(0));
        let cancelled = Arc::new(AtomicU64::new(0));
        let completed = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let connector = connector.clone();
                let (refused, cancelled, completed) =
                    (refused.clone(), cancelled.clone(), completed.clone());
                tokio::spawn(async move {
                    while started.elapsed() < RUN_FOR {
                        // Half the connects are cut off somewhere within
                        // the first 4 ms (a loopback TLS connect takes a few).
                        let limit = if fastrand::bool() {
                            Duration::from_micros(fastrand::u64(0..4000))
                        } else {
                            Duration::from_secs(30)
                        };
                        match tokio::time::timeout(limit, connector.connect()).await {
                            Err(_) => {
                                cancelled.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Ok(mut conn)) => {
                                conn.query_drop("DO 1").await.expect("a statement runs");
                                dbslots_mysql::Connection::close(conn).await.expect("closes");
                                completed.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Err(e)) if e.code() == Some(codes::TOO_MANY_CONNECTIONS) => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Err(e)) => panic!("a connect failed: {e}"),
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.expect("a worker finishes");
        }
        let (refused, cancelled, completed) = (
            refused.load(Ordering::Relaxed),
            cancelled.load(Ordering::Relaxed),
            completed.load(Ordering::Relaxed),
        );
        eprintln!(
            "capacity {capacity} of max_connections {}: {completed} completed, {cancelled} cancelled, {refused} refused",
            limits.max_connections
        );
        assert!(cancelled > 100, "enough cancellations: {cancelled}");
        assert!(completed > 100, "enough connects: {completed}");
        assert_eq!(refused, 0, "no connect was refused with 1040");
        admin.disconnect().await.expect("closes");
    });
}
