//! What the public handles promise about threads, checked by the compiler:
//! a test that no longer compiles is a broken promise.

use std::time::Duration;

use dbslots_core::{Pool, PoolStats, Slot};
use dbslots_mysql::{Connection, Connector};

fn send_sync_unpin<T: Send + Sync + Unpin + 'static>() {}
fn send<T: Send>(_: &T) {}

#[test]
fn handles_are_send_sync_and_unpin() {
    // Share a pool or a connector between threads and tasks; move a slot
    // or a connection to another thread or task; keep any of them in a
    // struct that is polled without pinning.
    send_sync_unpin::<Pool>();
    send_sync_unpin::<Slot>();
    send_sync_unpin::<PoolStats>();
    send_sync_unpin::<dbslots_core::Error>();
    send_sync_unpin::<Connector>();
    send_sync_unpin::<Connection>();
    send_sync_unpin::<dbslots_mysql::Error>();
}

#[test]
fn async_methods_can_be_spawned() {
    // `tokio::spawn` needs Send futures: creating them (not polling) is
    // enough for the compiler to check.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pool = Pool::open(
        dir.path().join("pool"),
        dbslots_core::PoolOptions::new().capacity(1),
    )
    .expect("the pool opens");
    send(&pool.acquire());
    send(&pool.acquire_timeout(Duration::from_secs(1)));
    let connector = Connector::new("mysql://u:p@127.0.0.1:1/db", pool).expect("a connector");
    send(&connector.connect());
}
