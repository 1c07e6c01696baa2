//! Connections dropped without close().

use std::time::Duration;

use dbslots_mysql::Connector;
use dbslots_testkit::shared_mysql;

use crate::support::{admin, gone_from_server, pool, runtime};

#[test]
fn a_dropped_connection_frees_its_slot_after_it_is_closed_with_or_without_a_runtime() {
    let Some(shared) = shared_mysql() else {
        return;
    };
    let (_dir, pool) = pool(1);
    let connector = Connector::new(&shared.user_url, pool.clone()).expect("connector");

    // Dropped inside a runtime: a task says QUIT, then frees the slot.
    let rt = runtime();
    rt.block_on(async {
        let conn = connector.connect().await.expect("connect");
        let id = u64::from(conn.id());
        drop(conn);
        let slot = pool
            .acquire_timeout(Duration::from_secs(5))
            .await
            .expect("the dropped connection's slot comes free");
        drop(slot);
        let mut admin = admin(&shared.admin_url).await;
        assert!(
            gone_from_server(&mut admin, id).await,
            "the server let it go"
        );
        admin.disconnect().await.expect("disconnect");
    });

    // Dropped after its runtime is gone: the socket is closed right away,
    // then the slot is freed, without panicking.
    let conn = rt.block_on(connector.connect()).expect("connect");
    let id = u64::from(conn.id());
    drop(rt);
    assert!(
        pool.try_acquire().expect("try_acquire").is_none(),
        "still held"
    );
    drop(conn);
    assert!(
        pool.try_acquire().expect("try_acquire").is_some(),
        "freed by the synchronous drop"
    );
    runtime().block_on(async {
        let mut admin = admin(&shared.admin_url).await;
        assert!(
            gone_from_server(&mut admin, id).await,
            "the server let it go"
        );
        admin.disconnect().await.expect("disconnect");
    });
}
