//! Readings for the unit tests of the renderers (`status`, `watch`,
//! `connections`), built from the JSON documents that `dbslots status
//! --json` and `dbslots connections --json` print: the library's reading
//! types are `#[non_exhaustive]`, so their documents are how a reader
//! outside the library builds one.

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// `base` with the top-level keys of `changes` put over it, as `T`.
fn reading<T: DeserializeOwned>(mut base: Value, changes: Value) -> T {
    if let (Some(base), Value::Object(changes)) = (base.as_object_mut(), changes) {
        base.extend(changes);
    }
    serde_json::from_value(base).expect("a reading document the library reads")
}

/// A pool of 4 slots with 1 holder and nothing waiting, changed by
/// `changes` (e.g. `json!({"holders": [...]})`).
pub fn pool_stats(changes: Value) -> dbslots_core::PoolStats {
    let base = json!({
        "pool": "/run/x", "backend": "file", "capacity": 4, "active": 1,
        "waiting": 0, "peak": 2, "acquisitions": 9, "timeouts": 1,
        "holders": [{"slot": 0, "pid": 42, "since_unix_ms": 1000}],
        "waiters": [],
        "wait_histogram": {"bounds_seconds": [], "counts": [0], "sum_seconds": 0.0, "count": 0},
    });
    reading(base, changes)
}

/// A gate `web-1` on `127.0.0.1:3307` with 9 relayed clients and 2
/// queued, changed by `changes`.
pub fn gate_report(changes: Value) -> dbslots_gate::GateReport {
    let base = json!({
        "name": "web-1", "pid": 7, "listen": ["127.0.0.1:3307"], "upstream": "db:3306",
        "pool": "/p", "capacity": 9, "started_unix_ms": 0, "updated_unix_ms": 0,
        "draining": false, "accepted": 12, "admitted": 10, "queued": 2, "active": 9,
        "queue_timeouts": 1, "abandoned": 0, "upstream_failures": 0, "idle_closes": 3,
        "bytes_from_clients": 0, "bytes_to_clients": 0,
        "wait_histogram": {"bounds_seconds": [], "counts": [0], "sum_seconds": 0.0, "count": 0},
    });
    reading(base, changes)
}

/// A server's limits (MySQL 8.4, 7 of 151 connected), changed by `changes`.
pub fn server_limits(changes: Value) -> dbslots_mysql::ServerLimits {
    let base = json!({
        "version": "8.4", "account": "app@%", "connection_id": 1,
        "max_connections": 151, "max_user_connections": 0,
        "session_max_user_connections": 0, "account_max_user_connections": Some(0),
        "extra_max_connections": null, "extra_port": null,
        "threads_connected": 7, "max_used_connections": 30,
        "connection_errors_max_connections": null, "account_limits": [],
    });
    reading(base, changes)
}

/// Connection `id` of `app` from `10.1.2.3:4567`, asleep for 240 s, and
/// what became of it.
pub fn idle_victim(id: u64, outcome: dbslots_mysql::KillOutcome) -> dbslots_mysql::IdleVictim {
    reading(
        json!({
            "process": {"id": id, "user": "app", "host": "10.1.2.3:4567", "db": null,
                "command": "Sleep", "seconds": 240, "state": null},
            "outcome": outcome,
        }),
        json!({}),
    )
}
