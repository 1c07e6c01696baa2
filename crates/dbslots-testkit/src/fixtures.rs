//! What tests do on a test server, written once: a scratch database of
//! their own, a temporary account (with its own `MAX_USER_CONNECTIONS`),
//! and the URLs for both.

use std::sync::atomic::{AtomicU32, Ordering};

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

/// `url` with its database replaced by `db` (query kept).
pub fn with_database(url: &str, db: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let path_start = url[authority_start..]
        .find('/')
        .map_or(url.len(), |i| authority_start + i);
    let query_start = url[path_start..]
        .find('?')
        .map_or(url.len(), |i| path_start + i);
    format!("{}/{db}{}", &url[..path_start], &url[query_start..])
}

/// `url` with its credentials replaced by `user` and `password`.
pub fn url_as(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL has a scheme");
    let (_, host_and_rest) = rest.rsplit_once('@').expect("a test URL has credentials");
    format!("{scheme}://{user}:{password}@{host_and_rest}")
}

/// Runs `f` to its end on a runtime of its own, in a thread of its own (so
/// that it works inside another runtime too, e.g. in a `Drop`).
fn block_on<T: Send>(f: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
                .block_on(f)
        })
        .join()
        .expect("the fixture's thread")
    })
}

/// A database of one test on the shared test server (the ordinary test
/// account may create `dbslots_scratch*` databases); dropping it drops the
/// database.
pub struct ScratchDb {
    /// The ordinary account's URL, pointing at the scratch database.
    pub url: String,
    /// The administrative account's URL, pointing at the scratch database.
    pub admin_url: String,
    /// The database's name: `dbslots_scratch_<tag>_<pid>_<n>`.
    pub name: String,
}

impl ScratchDb {
    /// `None` (after a SKIPPED line) when no test server is configured.
    pub fn create(tag: &str) -> Option<ScratchDb> {
        let shared = crate::shared_mysql()?;
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "dbslots_scratch_{tag}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        block_on(async {
            let mut conn = Conn::from_url(&shared.user_url)
                .await
                .expect("the test account connects");
            for sql in [
                format!("DROP DATABASE IF EXISTS `{name}`"),
                format!("CREATE DATABASE `{name}`"),
            ] {
                conn.query_drop(&sql).await.expect(&sql);
            }
            conn.disconnect().await.expect("disconnect");
        });
        Some(ScratchDb {
            url: with_database(&shared.user_url, &name),
            admin_url: with_database(&shared.admin_url, &name),
            name,
        })
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let (url, name) = (&self.url, &self.name);
        let _ = block_on(async move {
            let mut conn = Conn::from_url(url).await?;
            conn.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                .await?;
            conn.disconnect().await
        });
    }
}

/// The password of every [`TempAccount`].
pub const TEMP_PASSWORD: &str = "dbslots-temp-pw";

/// An account created by the admin for one test, dropped at the end.
pub struct TempAccount {
    /// Its user name: `dbslots_<purpose>_<pid>`.
    pub name: String,
    /// A URL of the account (same server, database and options as the
    /// admin URL it was made from).
    pub url: String,
    admin_url: String,
}

impl TempAccount {
    /// Creates `dbslots_<purpose>_<pid>` with every privilege on the admin
    /// URL's database and, when given, its own `MAX_USER_CONNECTIONS`.
    pub async fn create(
        admin_url: &str,
        purpose: &str,
        max_user_connections: Option<u32>,
    ) -> TempAccount {
        let name = format!("dbslots_{purpose}_{}", std::process::id());
        let mut admin = Conn::from_url(admin_url).await.expect("the admin connects");
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
        let (admin_url, name) = (&self.admin_url, &self.name);
        block_on(async move {
            if let Ok(mut admin) = Conn::from_url(admin_url).await {
                let _ = admin
                    .query_drop(format!("DROP USER IF EXISTS '{name}'@'%'"))
                    .await;
                let _ = admin.disconnect().await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_another_database_or_account_and_keep_the_rest() {
        let url = "mysql://u:p@127.0.0.1:3307/db?prefer_socket=false";
        assert_eq!(
            with_database(url, "x"),
            "mysql://u:p@127.0.0.1:3307/x?prefer_socket=false"
        );
        assert_eq!(with_database("mysql://h", "x"), "mysql://h/x");
        assert_eq!(
            url_as(url, "v", "q"),
            "mysql://v:q@127.0.0.1:3307/db?prefer_socket=false"
        );
    }
}
