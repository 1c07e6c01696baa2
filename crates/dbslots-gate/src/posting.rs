//! A gate's counters posted into its Redis pool, for every host to read.
//!
//! # Implementation Details
//!
//! A `redis://` pool is shared by many hosts, so a directory of the gate's
//! host is the wrong place for its counters: the gate posts its
//! [`GateReport`] as a report of kind `gates` into the pool's Redis
//! ([`Pool::post_report`]), under its name and an owner token of its own
//! (random, per process), and [`read_gates`](crate::read_gates) reads every
//! live gate of the pool from there, whichever host it runs on.
//!
//! A report lives [`TTL`] (server time) and the gate reposts it every
//! second even when nothing changed, so a gate that was killed disappears
//! from readers within [`TTL`]. A gate that stops cleanly withdraws its
//! report at once. Two live gates cannot post under one name: the second
//! one's claim is refused. A gate restarted under the name of one that
//! was killed waits up to [`TTL`] for the dead one's report to lapse
//! (saying so in its log), since nothing tells a dead owner from a live
//! one on another host but its silence.
//!
//! Every Redis call runs on tokio's blocking pool, never on the thread
//! that relays.

use std::time::{Duration, Instant};

use dbslots_core::Pool;

use crate::error::Error;
use crate::stats::GateReport;

/// The kind of report gates post.
pub(crate) const KIND: &str = "gates";

/// How long a posted report lives without a repost.
pub(crate) const TTL: Duration = Duration::from_secs(5);

/// How often a gate reposts its report (the publisher ticks twice a
/// second; a repost is due once this much passed since the last one).
pub(crate) const REPOST_AFTER: Duration = Duration::from_millis(750);

/// A gate's report in its Redis pool; withdrawn when dropped.
pub(crate) struct Posting {
    pool: Pool,
    name: String,
    owner: String,
    withdrawn: bool,
}

impl Posting {
    /// Posts `first` under its name: an error when another live gate
    /// posts under it. Waits up to [`TTL`] for a report under the name to
    /// lapse (its gate may have been killed).
    pub(crate) async fn claim(pool: &Pool, first: &GateReport) -> Result<Posting, Error> {
        let mut posting = Posting {
            pool: pool.clone(),
            name: first.name.clone(),
            owner: owner_token(),
            withdrawn: true,
        };
        let deadline = Instant::now() + TTL + Duration::from_millis(500);
        let mut said = false;
        loop {
            if posting.post(first).await.map_err(Error::Pool)? {
                posting.withdrawn = false;
                if said {
                    tracing::info!(gate = %posting.name, "the name is free: publishing");
                }
                return Ok(posting);
            }
            if Instant::now() >= deadline {
                let reader = pool.clone();
                let reports = tokio::task::spawn_blocking(move || read(&reader)).await;
                let holder = match reports {
                    Ok(Ok(reports)) => reports.into_iter().find(|r| r.name == posting.name),
                    _ => None,
                };
                return Err(Error::PublishToPool {
                    pool: pool.addr().to_string(),
                    name: posting.name.clone(),
                    reason: crate::stats::name_taken(holder.as_ref()),
                });
            }
            if !said {
                said = true;
                tracing::info!(gate = %posting.name, wait = ?TTL, "another gate's report holds this name in the pool; waiting up to the report's lifetime for it to lapse (a gate that was killed), else this one stops");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Posts `report` (one round trip, on the blocking pool): `Ok(false)`
    /// when another gate holds the name.
    pub(crate) async fn post(&self, report: &GateReport) -> dbslots_core::Result<bool> {
        let doc = serde_json::to_string(report).expect("a GateReport serializes");
        let (pool, name, owner) = (self.pool.clone(), self.name.clone(), self.owner.clone());
        tokio::task::spawn_blocking(move || pool.post_report(KIND, &name, &owner, &doc, TTL))
            .await
            .unwrap_or_else(|e| Err(task_failed(&self.pool, &e)))
    }

    /// Withdraws the report now (a clean stop).
    pub(crate) async fn withdraw(mut self) {
        self.withdrawn = true;
        let (pool, name, owner) = (self.pool.clone(), self.name.clone(), self.owner.clone());
        let done =
            tokio::task::spawn_blocking(move || pool.withdraw_report(KIND, &name, &owner)).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(gate = %self.name, error = %e, "cannot withdraw the gate's counters; they lapse within {TTL:?}");
        }
    }
}

impl Drop for Posting {
    /// A gate dropped without running (or whose publisher was cancelled)
    /// withdraws from a thread of its own: drop never waits for Redis.
    fn drop(&mut self) {
        if std::mem::replace(&mut self.withdrawn, true) {
            return;
        }
        let (pool, name, owner) = (self.pool.clone(), self.name.clone(), self.owner.clone());
        let _ = std::thread::Builder::new()
            .name("dbslots-gate-withdraw".into())
            .spawn(move || pool.withdraw_report(KIND, &name, &owner));
    }
}

fn task_failed(pool: &Pool, e: &tokio::task::JoinError) -> dbslots_core::Error {
    dbslots_core::Error::Backend {
        pool: pool.addr().to_string(),
        message: format!("the thread that posts the gate's counters failed: {e}"),
    }
}

/// A token of this gate process: its host, pid and 64 random bits.
fn owner_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    let bits = match random {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => crate::stats::now_unix_ms() ^ (u64::from(std::process::id()) << 40),
    };
    format!(
        "{}/{}/{bits:016x}",
        dbslots_core::env::host_name(),
        std::process::id()
    )
}

/// The live gates of a Redis pool, by name (one round trip; blocks).
pub(crate) fn read(pool: &Pool) -> Result<Vec<GateReport>, Error> {
    let mut out: Vec<GateReport> = pool
        .reports(KIND)?
        .iter()
        .filter_map(|doc| serde_json::from_str(doc).ok())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
