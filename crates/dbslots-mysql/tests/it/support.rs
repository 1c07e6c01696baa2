//! Helpers the tests share: runtimes, pools in temporary directories, and
//! throwaway accounts on the shared server.

use std::time::Duration;

use dbslots_core::{Pool, PoolOptions};
use dbslots_mysql::mysql_async::prelude::Queryable;
use dbslots_mysql::mysql_async::{self, Conn};
use tempfile::TempDir;

/// The password of every account [`TempAccount`] creates.
pub const TEMP_PASSWORD: &str = "dbslots-temp-pw";

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime builds")
}

/// A pool of `capacity` slots in a fresh temporary directory.
pub fn pool(capacity: u32) -> (TempDir, Pool) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pool = Pool::open(
        dir.path().join("pool"),
        PoolOptions::new().capacity(capacity),
    )
    .expect("the pool opens");
    (dir, pool)
}

pub async fn admin(url: &str) -> Conn {
    Conn::from_url(url).await.expect("the admin connects")
}

/// `url` with the user name and password replaced.
pub fn url_as(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL has a scheme");
    let (_, host_and_rest) = rest.rsplit_once('@').expect("a test URL has credentials");
    format!("{scheme}://{user}:{password}@{host_and_rest}")
}

/// `url` with the database name replaced.
pub fn url_with_db(url: &str, db: &str) -> String {
    let (before_query, query) = url.split_once('?').unwrap_or((url, ""));
    let (base, _) = before_query
        .rsplit_once('/')
        .expect("a test URL names a database");
    format!("{base}/{db}?{query}")
}

/// The ids the server lists, as the admin sees them.
pub async fn listed_ids(admin: &mut Conn) -> Vec<u64> {
    admin
        .query("SELECT ID FROM information_schema.PROCESSLIST")
        .await
        .expect("the admin reads the processlist")
}

/// Waits until connection `id` is no longer listed; false after 5 s.
pub async fn gone_from_server(admin: &mut Conn, id: u64) -> bool {
    for _ in 0..250 {
        if !listed_ids(admin).await.contains(&id) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A status counter of the server.
pub async fn status(admin: &mut Conn, name: &str) -> u64 {
    let row: Option<(String, String)> = admin
        .exec_first("SHOW GLOBAL STATUS WHERE Variable_name = ?", (name,))
        .await
        .expect("SHOW GLOBAL STATUS works");
    row.and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("the server has no status variable {name}"))
}

/// The server error code of a failed connect, or `None`.
pub fn server_code(err: &mysql_async::Error) -> Option<u16> {
    match err {
        mysql_async::Error::Server(e) => Some(e.code),
        _ => None,
    }
}

/// An account created by the admin for one test, dropped at the end.
pub struct TempAccount {
    pub name: String,
    /// A URL of the account (same server, database and options as the
    /// admin URL it was made from).
    pub url: String,
    admin_url: String,
}

impl TempAccount {
    /// Creates `dbslots_<purpose>_<pid>` with privileges on the test
    /// database and, when given, its own MAX_USER_CONNECTIONS.
    pub async fn create(
        admin_url: &str,
        purpose: &str,
        max_user_connections: Option<u32>,
    ) -> TempAccount {
        let name = format!("dbslots_{purpose}_{}", std::process::id());
        let mut admin = admin(admin_url).await;
        let db: String = admin
            .query_first("SELECT DATABASE()")
            .await
            .expect("SELECT DATABASE()")
            .expect("the admin URL names a database");
        let limit = max_user_connections
            .map(|n| format!(" WITH MAX_USER_CONNECTIONS {n}"))
            .unwrap_or_default();
        for sql in [
            format!("DROP USER IF EXISTS '{name}'@'%'"),
            format!("CREATE USER '{name}'@'%' IDENTIFIED BY '{TEMP_PASSWORD}'{limit}"),
            format!("GRANT ALL PRIVILEGES ON `{db}`.* TO '{name}'@'%'"),
        ] {
            admin
                .query_drop(sql)
                .await
                .expect("the admin manages accounts");
        }
        admin.disconnect().await.expect("disconnect");
        TempAccount {
            url: url_as(admin_url, &name, TEMP_PASSWORD),
            name,
            admin_url: admin_url.to_string(),
        }
    }
}

impl Drop for TempAccount {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Its own thread and runtime: Drop may run inside a runtime.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime builds")
                .block_on(async {
                    if let Ok(mut admin) = Conn::from_url(&admin_url).await {
                        let _ = admin
                            .query_drop(format!("DROP USER IF EXISTS '{name}'@'%'"))
                            .await;
                        let _ = admin.disconnect().await;
                    }
                })
        })
        .join();
    }
}

/// Serialises the load tests: each starts its own server and hundreds of
/// connections, and on a 2-core machine two at once starve the servers'
/// threads, so closed connections stay counted longer than a real server's
/// would (the pool's reserve is sized for a server that gets the CPU).
pub fn load_test() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
