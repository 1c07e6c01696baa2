//! Reports: documents that observers of a pool (such as `dbslots gate`)
//! post for every other client of the pool to read, on any host.
//!
//! # Implementation Details
//!
//! The reports of one kind are one hash, `dbslots:{POOL}:reports:KIND`
//! (the pool's hash tag, so a cluster keeps it with the pool's other
//! keys): field = the report's name, value = `EXPIRY_MS OWNER DOC`, where
//! `EXPIRY_MS` is Redis server time plus the poster's ttl, so client
//! clocks do not matter. A post is refused while the name is held by
//! another owner whose entry has not expired; a read deletes expired
//! entries and returns the live documents. Every post also pushes the
//! hash's own expiry to at least twice the ttl plus a second, so the hash
//! of a kind whose observers all died disappears by itself.
//!
//! The calls use a connection of their own (a `Link`), so a post never
//! queues behind an acquisition or a release of the same handle, nor the
//! other way round.

use std::time::Duration;

use super::RedisPool;
use crate::error::{Error, Result};

impl RedisPool {
    /// Runs `f` on the reports' own connection; `what` names it in errors.
    fn on_reports<T>(
        &self,
        what: &str,
        f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let s = &self.shared;
        s.reports
            .call(&s.connector, f)
            .map_err(|e| s.backend_error(what, e))
    }

    /// Posts `doc` under `name` for `ttl`: `Ok(false)` when another owner's
    /// entry under that name is still live.
    pub(crate) fn post_report(
        &self,
        kind: &str,
        name: &str,
        owner: &str,
        doc: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let s = &self.shared;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let posted: i64 = self.on_reports("posting a report", |c| {
            s.scripts
                .post_report
                .key(s.keys.reports(kind))
                .arg(name)
                .arg(owner)
                .arg(ttl_ms)
                .arg(doc)
                .invoke(c)
        })?;
        Ok(posted == 1)
    }

    /// The live reports of `kind` as (name, doc), by name.
    pub(crate) fn reports(&self, kind: &str) -> Result<Vec<(String, String)>> {
        let s = &self.shared;
        let flat: Vec<String> = self.on_reports("reading reports", |c| {
            s.scripts.read_reports.key(s.keys.reports(kind)).invoke(c)
        })?;
        if !flat.len().is_multiple_of(2) {
            return Err(Error::Backend {
                pool: s.name.clone(),
                message: "unexpected answer from the read_reports script".into(),
            });
        }
        let mut out: Vec<(String, String)> = flat
            .chunks_exact(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Withdraws `owner`'s report `name`; `Ok(false)` when there is none.
    pub(crate) fn withdraw_report(&self, kind: &str, name: &str, owner: &str) -> Result<bool> {
        let s = &self.shared;
        let withdrawn: i64 = self.on_reports("withdrawing a report", |c| {
            s.scripts
                .withdraw_report
                .key(s.keys.reports(kind))
                .arg(name)
                .arg(owner)
                .invoke(c)
        })?;
        Ok(withdrawn == 1)
    }
}
