//! MySQL connect + close through `dbslots_mysql::Connector` against a raw
//! `mysql_async` connect + close on the same server, in one run.
//!
//! * `connect/raw mysql_async connect+close`: `Conn::new`, `disconnect`.
//! * `connect/connector connect+close`: a slot, then the same, then the
//!   slot back (what every worker pays).
//! * `connect/slot acquire+release (async)`: the pool alone, to put the
//!   difference in proportion.
//!
//! The server is `DBSLOTS_TEST_MYSQL_URL` when set (as under
//! `cargo xtask bench`), else a private throwaway one from
//! dbslots-testkit. Connections are made over TCP (`prefer_socket=false` in
//! the test URLs), as remote workers would.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use dbslots_core::{Pool, PoolOptions};
use dbslots_mysql::mysql_async::{Conn, Opts};
use dbslots_mysql::{Connection, Connector, ConnectorOptions};
use dbslots_testkit::{MYSQL_URL_ENV, MysqlOptions, MysqlServer, private_mysql};

/// The server's URL, and the private server to keep alive if one was
/// started.
fn server() -> Option<(String, Option<MysqlServer>)> {
    if let Some(url) = std::env::var(MYSQL_URL_ENV).ok().filter(|v| !v.is_empty()) {
        return Some((url, None));
    }
    let server = private_mysql(MysqlOptions::default())?;
    Some((server.user_url(), Some(server)))
}

fn main() {
    let Some((url, _server)) = server() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pool = Pool::open(dir.path().join("pool"), PoolOptions::new().capacity(8))
        .expect("the pool opens");
    let connector =
        Connector::with_options(&url, pool.clone(), ConnectorOptions::new().attempts(1))
            .expect("the test URL parses");
    let opts = Opts::from_url(&url).expect("the test URL parses");

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let mut group = c.benchmark_group("connect");
    group.bench_function("raw mysql_async connect+close", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let conn = Conn::new(opts.clone()).await.expect("connect");
                    black_box(conn.id());
                    conn.disconnect().await.expect("disconnect");
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("connector connect+close", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let conn = connector.connect().await.expect("connect");
                    black_box(conn.id());
                    Connection::close(conn).await.expect("close");
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("slot acquire+release (async)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let slot = pool
                        .acquire_timeout(Duration::from_secs(30))
                        .await
                        .expect("a free slot");
                    black_box(slot.index());
                    drop(slot);
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    c.final_summary();

    // Connect times swing with whatever else the machine does, more than
    // the slot could add; alternating the two one by one and comparing
    // medians cancels most of that. Only when benchmarking, not under
    // `cargo test`.
    if std::env::args().any(|a| a == "--bench") {
        rt.block_on(paired(&connector, &opts, 20_000));
    }
}

/// Alternates raw and connector connect+close `pairs` times (each pair in
/// alternating order) and prints the medians and the median of the per-pair
/// differences, which cancels the machine's drift best.
async fn paired(connector: &Connector, opts: &Opts, pairs: usize) {
    let mut raw = Vec::with_capacity(pairs);
    let mut through = Vec::with_capacity(pairs);
    for i in 0..pairs {
        let (mut r, mut t) = (Duration::ZERO, Duration::ZERO);
        for turn in [i % 2, 1 - i % 2] {
            let start = Instant::now();
            if turn == 0 {
                let conn = Conn::new(opts.clone()).await.expect("connect");
                conn.disconnect().await.expect("disconnect");
                r = start.elapsed();
            } else {
                let conn = connector.connect().await.expect("connect");
                Connection::close(conn).await.expect("close");
                t = start.elapsed();
            }
        }
        raw.push(r);
        through.push(t);
    }
    let mut diffs: Vec<f64> = raw
        .iter()
        .zip(&through)
        .map(|(r, t)| t.as_secs_f64() - r.as_secs_f64())
        .collect();
    diffs.sort_by(f64::total_cmp);
    raw.sort();
    through.sort();
    let raw_median = raw[pairs / 2];
    let diff = diffs[pairs / 2];
    println!(
        "paired ({pairs} alternating pairs): raw median {raw_median:.1?}, connector median {:.1?}, \
         median per-pair difference {:.2} µs = {:+.2}% of the raw connect",
        through[pairs / 2],
        diff * 1e6,
        100.0 * diff / raw_median.as_secs_f64()
    );
}
