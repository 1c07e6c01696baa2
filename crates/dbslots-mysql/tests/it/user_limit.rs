//! An account WITH MAX_USER_CONNECTIONS 5 and a pool of capacity 5.

use std::time::Duration;

use dbslots_mysql::mysql_async::Conn;
use dbslots_mysql::mysql_async::prelude::Queryable;
use dbslots_mysql::{Connection, Connector, ConnectorOptions, codes};
use dbslots_testkit::shared_mysql;

use crate::support::{TempAccount, pool, runtime};

#[test]
fn user_limit_refusals_are_retried_and_all_work_completes_through_a_pool_of_five() {
    let _serial = crate::support::load_test();
    let Some(shared) = shared_mysql() else {
        return;
    };
    runtime().block_on(async {
        let account = TempAccount::create(&shared.admin_url, "lim5", Some(5)).await;
        let (_dir, pool) = pool(5);
        let connector = Connector::with_options(
            &account.url,
            pool,
            ConnectorOptions::new()
                .attempts(10)
                .base_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(400)),
        )
        .expect("connector");
        // A client outside the pool holds one of the account's five
        // connections for a while: the pool's fifth connection is refused.
        let hog = Conn::from_url(&account.url)
            .await
            .expect("the hog connects");
        let jobs: Vec<_> = (0..20)
            .map(|job| {
                let connector = connector.clone();
                tokio::spawn(async move {
                    let mut conn = connector.connect().await?;
                    let echoed: Option<u32> = conn
                        .exec_first("SELECT ? FROM (SELECT SLEEP(0.05)) AS s", (job,))
                        .await
                        .map_err(|e| dbslots_mysql::Error::Query {
                            what: "the job".into(),
                            source: e,
                        })?;
                    let failed = conn.failed_attempts().to_vec();
                    Connection::close(conn).await?;
                    Ok::<_, dbslots_mysql::Error>((echoed, failed))
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(400)).await;
        hog.disconnect().await.expect("the hog leaves");
        let mut retried_1226 = 0;
        for (job, handle) in jobs.into_iter().enumerate() {
            let (echoed, failed) = handle
                .await
                .expect("the job task finishes")
                .unwrap_or_else(|e| panic!("job {job} failed: {e}"));
            assert_eq!(echoed, Some(job as u32), "job {job} did its work");
            for a in &failed {
                assert_eq!(
                    a.code,
                    Some(codes::USER_LIMIT_REACHED),
                    "only 1226 was met: {a:?}"
                );
                assert!(
                    a.delay.is_some(),
                    "every failed attempt before success was retried"
                );
            }
            retried_1226 += failed.len();
        }
        assert!(retried_1226 > 0, "the account's limit was met and retried");
    });
}
