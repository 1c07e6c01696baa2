//! A database of its own for each test, on the shared test server.

use std::future::Future;
use std::path::{Path, PathBuf};

use dbslots_import::{EnqueueOptions, Queue};

use dbslots_testkit::FreezableProxy;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tokio::runtime::Runtime;

/// A scratch database (from dbslots-testkit), a runtime and a directory
/// for files; dropping it drops the database.
pub struct TestDb {
    /// The ordinary account's URL, pointing at the scratch database.
    pub url: String,
    /// The administrative account's URL.
    pub admin_url: String,
    /// The scratch database's name.
    pub name: String,
    /// A directory for the test's files.
    pub dir: tempfile::TempDir,
    rt: Runtime,
    _db: dbslots_testkit::ScratchDb,
}

impl TestDb {
    /// `None` (after a SKIPPED line) when no test server is configured.
    pub fn create(tag: &str) -> Option<TestDb> {
        let db = dbslots_testkit::ScratchDb::create(&format!("imp_{tag}"))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        Some(TestDb {
            url: db.url.clone(),
            admin_url: db.admin_url.clone(),
            name: db.name.clone(),
            dir: tempfile::tempdir().expect("a temporary directory"),
            rt,
            _db: db,
        })
    }

    /// Runs a future on the test's runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A connection of the ordinary account to the scratch database.
    pub async fn conn(&self) -> Conn {
        Conn::from_url(&self.url).await.expect("connect")
    }

    /// A connection of the administrative account.
    pub async fn admin(&self) -> Conn {
        Conn::from_url(&self.admin_url)
            .await
            .expect("connect as admin")
    }

    /// Runs statements as the ordinary account.
    pub async fn sql(&self, statements: &[&str]) {
        let mut conn = self.conn().await;
        for sql in statements {
            conn.query_drop(*sql).await.expect(sql);
        }
        conn.disconnect().await.unwrap();
    }

    /// The first column of the first row of `sql`, as a number.
    pub async fn number(&self, sql: &str) -> u64 {
        let mut conn = self.conn().await;
        let n: Option<u64> = conn.query_first(sql).await.expect(sql);
        conn.disconnect().await.unwrap();
        n.unwrap_or_else(|| panic!("{sql} returned no row"))
    }

    /// Writes a file into the test's directory.
    pub fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write a test file");
        path
    }
}

/// The meter readings table of the documentation's example.
pub const METER_READINGS: &str = "CREATE TABLE meter_readings (
    meter_id VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    reading_at DATETIME NOT NULL,
    kwh DECIMAL(18,6) NOT NULL,
    PRIMARY KEY (meter_id, reading_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

/// A CSV of `n` readings, `meter-(i % 97)` at minute `i`, kWh `i/1000`
/// (each key unique);
/// every `bad_every`-th line (0: none) has a kWh with seven decimals
/// instead. Returns
/// the contents, the number of good lines, the sum of their `i` (so the sum
/// of their kWh times 1000) and the line numbers of the bad.
pub fn readings(n: u64, bad_every: u64) -> (Vec<u8>, u64, u64, Vec<u64>) {
    let mut out = String::from("meter_id,reading_at,kwh\n");
    let mut bad = Vec::new();
    let mut sum = 0;
    for i in 1..=n {
        let line_no = i + 1;
        let (day, minute) = (i / 1440, i % 1440);
        let ts = format!(
            "{}-{:02}-{:02} {:02}:{:02}:00",
            2000 + day / 336,
            1 + day / 28 % 12,
            1 + day % 28,
            minute / 60,
            minute % 60
        );
        if bad_every > 0 && i % bad_every == 0 {
            // Seven decimals: DECIMAL(18,6) would round it.
            out.push_str(&format!("meter-{},{ts},{i}.0000001\n", i % 97));
            bad.push(line_no);
        } else {
            out.push_str(&format!(
                "meter-{},{ts},{}.{:03}\n",
                i % 97,
                i / 1000,
                i % 1000
            ));
            sum += i;
        }
    }
    let good = n - bad.len() as u64;
    (out.into_bytes(), good, sum, bad)
}

/// Runs one processor with `options` until the queue is empty.
pub async fn run_once(
    queue: &dbslots_import::Queue,
    options: dbslots_import::ProcessorOptions,
) -> dbslots_import::Summary {
    queue
        .processor(options)
        .run(
            &dbslots_import::RunOptions::new().once(true),
            &dbslots_import::Stopper::new(),
            &dbslots_import::NoObserver,
        )
        .await
        .expect("the processor runs")
}

/// `import_errors` of a job: (line, column, reason), by line.
pub async fn rejections(db: &TestDb, job: u64) -> Vec<(u64, Option<String>, String)> {
    let mut conn = db.conn().await;
    let rows = conn
        .query(format!(
            "SELECT line_no, column_name, reason FROM import_errors WHERE job_id = {job} ORDER BY line_no"
        ))
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    rows
}

/// Creates `meter_readings` ([`METER_READINGS`]) and enqueues `path` into
/// it; returns the job's id.
pub async fn enqueue_readings(db: &TestDb, queue: &Queue, path: &Path) -> u64 {
    db.sql(&[METER_READINGS]).await;
    let ids = queue
        .enqueue(&[path], &EnqueueOptions::new("meter_readings"))
        .await
        .unwrap();
    ids[0]
}

/// The test's URL with its server's port replaced by the proxy's.
pub fn through(url: &str, proxy: &FreezableProxy) -> String {
    let opts = mysql_async::Opts::from_url(url).expect("the test URL parses");
    let server = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
    assert!(url.contains(&server), "{url} names {server}");
    assert!(
        url.contains("prefer_socket=false"),
        "a connect through the proxy must not move to the server's socket: {url}"
    );
    url.replace(&server, &format!("127.0.0.1:{}", proxy.port()))
}

/// Starts a proxy to the test server.
pub fn proxy_for(db: &TestDb) -> FreezableProxy {
    let opts = mysql_async::Opts::from_url(&db.url).expect("the test URL parses");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], opts.tcp_port()));
    FreezableProxy::start(addr).expect("a proxy")
}

/// Kills whatever connection is still in the scratch database when the
/// test ends (so that a failed test does not leave a transaction behind
/// that would hold up dropping the database).
pub struct KillLeftovers {
    admin_url: String,
    name: String,
}

impl KillLeftovers {
    /// For the scratch database of `db`.
    pub fn of(db: &TestDb) -> KillLeftovers {
        KillLeftovers {
            admin_url: db.admin_url.clone(),
            name: db.name.clone(),
        }
    }
}

impl Drop for KillLeftovers {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let mut admin = mysql_async::Conn::from_url(&url).await?;
                let ids: Vec<u64> = admin
                    .exec(
                        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
                        (&name,),
                    )
                    .await?;
                for id in ids {
                    let _ = admin.query_drop(format!("KILL CONNECTION {id}")).await;
                }
                admin.disconnect().await
            })
        })
        .join();
    }
}
