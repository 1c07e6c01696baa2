//! Slot after socket when connects are cancelled: a connect dropped at any
//! point (TCP connect, handshake, TLS, login) closes its socket before its
//! slot goes to the next worker, so a pool as large as the server's room
//! never meets 1040. Against a server that never greets, the order itself
//! is checked: its end of the abandoned connect is closed by the time the
//! slot is free.

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

/// A listener in the place of the server that completes the TCP handshake
/// (the kernel does) and then sends nothing: every connect to it is stuck
/// after the TCP handshake, waiting for the greeting. Returns the URL and
/// the listener, whose accepted socket is the server's end.
fn silent_server() -> (String, std::net::TcpListener) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let port = listener.local_addr().expect("its address").port();
    (
        format!("mysql://app:silent-pw@127.0.0.1:{port}/app?ssl-mode=DISABLED"),
        listener,
    )
}

/// The server's end of the one connect made to `listener`: whether the
/// client had closed its socket. Blocks the calling thread (and with it a
/// current-thread runtime, so no task the driver spawned can run) for at
/// most `patience`.
fn client_closed(listener: &std::net::TcpListener, patience: Duration) -> bool {
    use std::io::Read;
    let (mut server_end, _) = listener
        .accept()
        .expect("the connect got past the TCP handshake");
    server_end
        .set_read_timeout(Some(patience))
        .expect("a read timeout");
    let mut byte = [0u8; 1];
    match server_end.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => panic!("the client sent bytes before the greeting"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        Err(e) => panic!("reading the server's end: {e}"),
    }
}

/// A current-thread runtime: a task the driver spawns to close a dropped
/// connection runs only when the test's own task yields, so "the socket is
/// closed by the time the slot is free" cannot hold by luck.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

#[test]
fn a_connect_cancelled_after_the_tcp_handshake_is_closed_before_its_slot_is_free() {
    let (url, listener) = silent_server();
    let (_dir, pool) = pool(1);
    let connector = Connector::with_options(
        &url,
        pool.clone(),
        ConnectorOptions::new()
            .attempts(1)
            .connect_timeout(Duration::from_secs(30)),
    )
    .expect("connector");
    current_thread().block_on(async {
        let outcome = tokio::time::timeout(Duration::from_millis(300), connector.connect()).await;
        assert!(outcome.is_err(), "the connect was cut off by the caller");
        // No await between the cancellation and these checks.
        assert_eq!(pool.stats().expect("stats").active, 0, "the slot is free");
        assert!(
            client_closed(&listener, Duration::from_secs(1)),
            "the slot was free while the server's end of the abandoned connect was still open"
        );
    });
}

#[test]
fn a_connect_timed_out_after_the_tcp_handshake_is_closed_before_its_slot_is_free() {
    let (url, listener) = silent_server();
    let (_dir, pool) = pool(1);
    let connector = Connector::with_options(
        &url,
        pool.clone(),
        ConnectorOptions::new()
            .attempts(1)
            .connect_timeout(Duration::from_millis(300)),
    )
    .expect("connector");
    current_thread().block_on(async {
        let err = connector
            .connect()
            .await
            .expect_err("the connect deadline fires");
        assert!(!err.to_string().contains("silent-pw"), "{err}");
        // No await between the failure and these checks.
        assert_eq!(pool.stats().expect("stats").active, 0, "the slot is free");
        assert!(
            client_closed(&listener, Duration::from_secs(1)),
            "the slot was free while the server's end of the timed-out connect was still open"
        );
    });
}
