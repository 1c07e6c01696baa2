use dbslots_testkit::{MysqlOptions, private_mysql, shared_mysql};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Error, ServerError};

const ER_CON_COUNT_ERROR: u16 = 1040;
const ER_USER_LIMIT_REACHED: u16 = 1226;

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds")
        .block_on(future)
}

fn server_code(result: Result<Conn, Error>) -> u16 {
    match result {
        Ok(_) => panic!("the connection was admitted"),
        Err(Error::Server(ServerError { code, .. })) => code,
        Err(e) => panic!("expected a server error, got {e}"),
    }
}

async fn disconnect_all(conns: Vec<Conn>) {
    for conn in conns {
        conn.disconnect().await.expect("disconnect");
    }
}

/// Connects as the admin, which may use the server's one extra connection.
/// A just-refused connection can hold that extra place until the server has
/// finished with it, so 1040 is retried for a moment.
async fn admin_connection(url: &str) -> Conn {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Conn::from_url(url).await {
            Ok(conn) => return conn,
            Err(Error::Server(ServerError { code, .. }))
                if code == ER_CON_COUNT_ERROR && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the admin does not get the extra connection: {e}"),
        }
    }
}

#[test]
fn ordinary_account_is_refused_beyond_max_connections_but_admin_gets_in() {
    let Some(server) = private_mysql(MysqlOptions {
        max_connections: Some(5),
        ..Default::default()
    }) else {
        return;
    };
    block_on(async {
        // MariaDB raises a max_connections below 10 to 10.
        let mut probe = Conn::from_url(server.user_url())
            .await
            .expect("user connects");
        let limit: usize = probe
            .query_first("SELECT @@max_connections")
            .await
            .expect("query")
            .expect("one row");
        assert!((5..=10).contains(&limit), "max_connections is {limit}");
        let database: String = probe
            .query_first("SELECT DATABASE()")
            .await
            .expect("query")
            .expect("one row");
        assert_eq!(database, "dbslots_test");
        let grants: Vec<String> = probe.query("SHOW GRANTS").await.expect("query");
        let grants = grants.join("\n");
        for privilege in ["SUPER", "PROCESS", "CONNECTION ADMIN", "CONNECTION_ADMIN"] {
            assert!(
                !grants.contains(privilege),
                "user has {privilege}:\n{grants}"
            );
        }
        probe.disconnect().await.expect("disconnect");

        let mut held = Vec::new();
        for _ in 0..limit {
            held.push(
                Conn::from_url(server.user_url())
                    .await
                    .expect("within the limit"),
            );
        }
        let refused = Conn::from_url(server.user_url()).await;
        assert_eq!(server_code(refused), ER_CON_COUNT_ERROR);

        let mut admin = admin_connection(&server.admin_url()).await;
        let connected: Option<(String, usize)> = admin
            .query_first("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
            .await
            .expect("query");
        assert_eq!(connected.expect("one row").1, limit + 1);
        admin.disconnect().await.expect("disconnect");
        disconnect_all(held).await;
    });
    let data_dir = server.data_dir().expect("a local server").to_owned();
    server.stop().expect("stops");
    assert!(!data_dir.exists(), "{} was left behind", data_dir.display());
}

#[test]
fn admin_creates_accounts_with_their_own_limits() {
    let Some(server) = private_mysql(MysqlOptions::default()) else {
        return;
    };
    block_on(async {
        let mut admin = Conn::from_url(server.admin_url())
            .await
            .expect("admin connects");
        admin
            .query_drop(
                "CREATE USER 'capped'@'%' IDENTIFIED BY 'capped-pw' WITH MAX_USER_CONNECTIONS 2",
            )
            .await
            .expect("create user");
        admin
            .query_drop("GRANT SELECT ON dbslots_test.* TO 'capped'@'%'")
            .await
            .expect("grant");
        let url = format!(
            "mysql://capped:capped-pw@127.0.0.1:{}/dbslots_test?prefer_socket=false",
            server.port()
        );
        let held = vec![
            Conn::from_url(&url).await.expect("first"),
            Conn::from_url(&url).await.expect("second"),
        ];
        assert_eq!(
            server_code(Conn::from_url(&url).await),
            ER_USER_LIMIT_REACHED
        );
        disconnect_all(held).await;
        admin.disconnect().await.expect("disconnect");
    });
}

#[test]
fn shared_mysql_from_the_environment_answers() {
    let Some(shared) = shared_mysql() else {
        return;
    };
    block_on(async {
        for url in [&shared.user_url, &shared.admin_url] {
            let mut conn = Conn::from_url(url.as_str()).await.expect("connects");
            let one: Option<u8> = conn.query_first("SELECT 1").await.expect("query");
            assert_eq!(one, Some(1));
            conn.disconnect().await.expect("disconnect");
        }
    });
}
