//! Helpers the tests share: runtimes, pools in temporary directories; the
//! throwaway accounts and URLs come from dbslots-testkit.

pub use dbslots_testkit::{TempAccount, url_as, with_database as url_with_db};

use std::time::Duration;

use dbslots_core::{Pool, PoolOptions};
use dbslots_mysql::mysql_async::prelude::Queryable;
use dbslots_mysql::mysql_async::{self, Conn};
use tempfile::TempDir;

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

/// Serialises the load tests: each starts its own server and hundreds of
/// connections, and on a 2-core machine two at once starve the servers'
/// threads, so closed connections stay counted longer than a real server's
/// would (the pool's reserve is sized for a server that gets the CPU).
pub fn load_test() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
