//! What `dbslots serve` shows, as plain functions an embedder can serve
//! too: the Prometheus text exposition (format 0.0.4) of pools and of a
//! server, and the JSON documents of `/api/pool-stats` and `/api/server`.
//!
//! Metric names are a public interface (alert rules are written over
//! them): add families, never rename one.

use std::fmt::Write as _;

use dbslots_core::PoolStats;
use serde_json::{Value, json};

use crate::{AccountUsage, Fleet, ServerReading, ServerSnapshot};

/// The content type of the Prometheus text exposition format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One pool's stats, or why they could not be read.
#[derive(Debug, Clone)]
pub struct PoolReading {
    /// The pool's address as shown (never with a password).
    pub name: String,
    /// Its stats.
    pub stats: Result<PoolStats, String>,
}

/// The body of `GET /api/pool-stats`: `{"unix_ms": N, "pools": [...]}`, one
/// entry per pool in the order given, each [`PoolStats`] as `dbslots status
/// --json` prints it, or `{"pool": NAME, "error": TEXT}`.
pub fn pool_stats_json(readings: &[PoolReading], now_ms: u64) -> Value {
    let pools: Vec<Value> = readings
        .iter()
        .map(|r| match &r.stats {
            Ok(s) => s.to_json(),
            Err(e) => json!({ "pool": r.name, "error": e }),
        })
        .collect();
    json!({ "unix_ms": now_ms, "pools": pools })
}

/// The body of `GET /api/server`: the document `dbslots connections --json`
/// prints (`url` redacted, `limits`, `suggested_capacity`, `groups`,
/// `connections`), plus `user_limit` ([`ServerLimits::user_limit`](crate::ServerLimits::user_limit)).
/// The capacity is suggested for `fleet` (`dbslots connections`: the
/// URL's user on one host).
pub fn server_json(url: &str, reading: &ServerReading, fleet: &Fleet) -> Value {
    let limits = &reading.limits;
    json!({
        "url": url,
        "limits": limits,
        "suggested_capacity": limits.suggest_capacity_for(&reading.processlist, fleet),
        "groups": reading.processlist.groups(),
        "connections": reading.processlist.processes,
        "user_limit": limits.user_limit(),
    })
}

/// Escapes a label value for the text exposition format: backslash, double
/// quote and line feed.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Formats a sample value the way Prometheus reads it (`+Inf`, `-Inf`,
/// `NaN`, else Rust's shortest round-trip decimal).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// A gauge or counter family over the pools that could be read.
fn pool_family(
    out: &mut String,
    readings: &[PoolReading],
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&PoolStats) -> f64,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for r in readings {
        if let Ok(s) = &r.stats {
            let _ = writeln!(
                out,
                "{name}{{pool=\"{}\"}} {}",
                escape_label_value(&r.name),
                format_value(value(s))
            );
        }
    }
}

fn server_gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {value}");
}

/// The body of `GET /metrics` in the Prometheus text exposition format
/// 0.0.4.
///
/// Every pool family is labelled `pool="ADDRESS"`; `dbslots_pool_up` is 0
/// for a pool whose stats could not be read, which then has no other
/// samples. The wait histogram's buckets are cumulative; its `+Inf` bucket
/// and `_count` are both the total of the counts, so they always agree.
/// With a server, `dbslots_mysql_up` says whether it could be read just
/// now; the `dbslots_mysql_*` gauges show the latest good reading (also
/// while the server is down, with `up` at 0), and
/// `dbslots_mysql_reading_age_seconds` how old it is.
pub fn render_metrics(readings: &[PoolReading], server: Option<&ServerSnapshot>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP dbslots_pool_up Whether the pool's stats could be read (1) or not (0)."
    );
    let _ = writeln!(out, "# TYPE dbslots_pool_up gauge");
    for r in readings {
        let _ = writeln!(
            out,
            "dbslots_pool_up{{pool=\"{}\"}} {}",
            escape_label_value(&r.name),
            u8::from(r.stats.is_ok())
        );
    }
    pool_family(
        &mut out,
        readings,
        "dbslots_pool_capacity",
        "gauge",
        "Slots the pool hands out at most.",
        |s| f64::from(s.capacity),
    );
    pool_family(
        &mut out,
        readings,
        "dbslots_pool_active",
        "gauge",
        "Slots held right now.",
        |s| f64::from(s.active),
    );
    pool_family(
        &mut out,
        readings,
        "dbslots_pool_over_capacity",
        "gauge",
        "Slots held beyond the capacity while a shrink drains.",
        |s| f64::from(s.over_capacity()),
    );
    pool_family(
        &mut out,
        readings,
        "dbslots_pool_waiting",
        "gauge",
        "Acquirers queued for a slot right now.",
        |s| f64::from(s.waiting),
    );
    pool_family(
        &mut out,
        readings,
        "dbslots_pool_peak",
        "gauge",
        "Most slots held at once since the pool was created.",
        |s| s.peak as f64,
    );
    pool_family(
        &mut out,
        readings,
        "dbslots_pool_acquired_total",
        "counter",
        "Successful slot acquisitions since the pool was created.",
        |s| s.acquisitions as f64,
    );
    pool_family(
        &mut out,
        readings,
        "dbslots_pool_timeouts_total",
        "counter",
        "Acquisitions that gave up at their deadline since the pool was created.",
        |s| s.timeouts as f64,
    );
    let name = "dbslots_pool_wait_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} How long acquisitions waited for a slot, in seconds."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for r in readings {
        let Ok(s) = &r.stats else { continue };
        let pool = escape_label_value(&r.name);
        let h = &s.wait_histogram;
        let mut total = 0;
        for (bound, count) in h.cumulative() {
            let le = format_value(bound);
            let _ = writeln!(out, "{name}_bucket{{pool=\"{pool}\",le=\"{le}\"}} {count}");
            // The last bucket (+Inf) holds every wait.
            total = count;
        }
        let _ = writeln!(
            out,
            "{name}_sum{{pool=\"{pool}\"}} {}",
            format_value(h.sum_seconds)
        );
        let _ = writeln!(out, "{name}_count{{pool=\"{pool}\"}} {total}");
    }
    if let Some(server) = server {
        let _ = writeln!(
            out,
            "# HELP dbslots_mysql_up Whether the MySQL server could be read (1) or not (0)."
        );
        let _ = writeln!(out, "# TYPE dbslots_mysql_up gauge");
        let _ = writeln!(out, "dbslots_mysql_up {}", u8::from(server.up));
        if let (Some(r), Some(age)) = (&server.last, server.age) {
            let name = "dbslots_mysql_reading_age_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} How old the readings of the dbslots_mysql_* gauges are, in seconds."
            );
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {}", format_value(age.as_secs_f64()));
            let l = &r.limits;
            server_gauge(
                &mut out,
                "dbslots_mysql_threads_connected",
                "Connections open on the server now (Threads_connected).",
                l.threads_connected,
            );
            server_gauge(
                &mut out,
                "dbslots_mysql_max_connections",
                "Connections the server admits in all (max_connections).",
                l.max_connections,
            );
            server_gauge(
                &mut out,
                "dbslots_mysql_max_used_connections",
                "Most connections open at once since the server started (Max_used_connections).",
                l.max_used_connections,
            );
        }
    }
    out
}

/// The per-account families of `GET /metrics`, labelled `user="NAME"`: one
/// sample per account with connections, as the monitor's account sees them
/// (every account with PROCESS, else only its own), and
/// `dbslots_mysql_user_max_connections` only for accounts with a limit
/// (their own MAX_USER_CONNECTIONS, else the global max_user_connections),
/// so that `connections / max_connections` exists exactly where a limit
/// applies.
pub fn render_user_metrics(usages: &[AccountUsage]) -> String {
    let mut out = String::new();
    /// A family: name, help, and the account's value (none: no sample).
    type UserFamily = (&'static str, &'static str, fn(&AccountUsage) -> Option<u64>);
    let families: [UserFamily; 4] = [
        (
            "dbslots_mysql_user_connections",
            "Connections of the account (user name) now.",
            |u| Some(u.connections),
        ),
        (
            "dbslots_mysql_user_max_connections",
            "The connection limit that applies to the account: its own MAX_USER_CONNECTIONS, else the global max_user_connections.",
            |u| u.limit.map(|(n, _)| n),
        ),
        (
            "dbslots_mysql_user_sleeping",
            "Connections of the account that sleep (COMMAND Sleep).",
            |u| Some(u.sleeping()),
        ),
        (
            "dbslots_mysql_user_oldest_idle_seconds",
            "How long the account's longest sleeping connection has been idle (0 for none).",
            |u| Some(u.oldest_idle().unwrap_or(0)),
        ),
    ];
    for (name, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for u in usages {
            if let Some(v) = value(u) {
                let _ = writeln!(
                    out,
                    "{name}{{user=\"{}\"}} {v}",
                    escape_label_value(&u.user)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Processlist, ServerLimits};

    /// A pool's stats as `dbslots status --json` prints them (readers
    /// build [`PoolStats`] from that document; its fields are not a literal).
    fn stats(name: &str) -> PoolStats {
        serde_json::from_value(serde_json::json!({
            "pool": name, "backend": "file", "capacity": 4, "active": 2,
            "waiting": 1, "peak": 3, "acquisitions": 10, "timeouts": 1,
            "holders": [{"slot": 0, "pid": 42, "since_unix_ms": 1000}],
            "waiters": [],
            "wait_histogram": {"bounds_seconds": [0.001, 0.5, 2.0],
                "counts": [6, 0, 3, 1], "sum_seconds": 7.25, "count": 10},
        }))
        .unwrap()
    }

    fn limits() -> ServerLimits {
        ServerLimits {
            version: "10.11.6-MariaDB".into(),
            account: "app@%".into(),
            connection_id: 9,
            max_connections: 151,
            max_user_connections: 0,
            session_max_user_connections: 0,
            account_max_user_connections: Some(0),
            extra_max_connections: Some(1),
            extra_port: Some(0),
            threads_connected: 12,
            max_used_connections: 40,
            connection_errors_max_connections: Some(0),
            account_limits: Vec::new(),
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("line\nbreak"), "line\\nbreak");
        assert_eq!(escape_label_value("/run/dbslots/x"), "/run/dbslots/x");
    }

    #[test]
    fn values_are_written_as_prometheus_reads_them() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(0.001), "0.001");
        assert_eq!(format_value(2.0), "2");
        assert_eq!(format_value(1e-7), "0.0000001");
    }

    #[test]
    fn metrics_have_one_family_each_with_cumulative_buckets() {
        let readings = [
            PoolReading {
                name: "/p/one".into(),
                stats: Ok(stats("/p/one")),
            },
            PoolReading {
                name: "/p/\"two\"".into(),
                stats: Err("gone".into()),
            },
        ];
        let text = render_metrics(&readings, None);
        assert!(text.ends_with('\n'));
        let lines: Vec<&str> = text.lines().collect();
        for family in [
            "dbslots_pool_up",
            "dbslots_pool_capacity",
            "dbslots_pool_wait_seconds",
        ] {
            let types = lines
                .iter()
                .filter(|l| l.starts_with(&format!("# TYPE {family} ")))
                .count();
            assert_eq!(types, 1, "{family} in\n{text}");
        }
        assert!(lines.contains(&"dbslots_pool_up{pool=\"/p/one\"} 1"));
        assert!(lines.contains(&"dbslots_pool_up{pool=\"/p/\\\"two\\\"\"} 0"));
        assert!(lines.contains(&"dbslots_pool_capacity{pool=\"/p/one\"} 4"));
        assert!(lines.contains(&"dbslots_pool_active{pool=\"/p/one\"} 2"));
        assert!(lines.contains(&"dbslots_pool_waiting{pool=\"/p/one\"} 1"));
        assert!(lines.contains(&"dbslots_pool_peak{pool=\"/p/one\"} 3"));
        assert!(lines.contains(&"dbslots_pool_acquired_total{pool=\"/p/one\"} 10"));
        assert!(lines.contains(&"dbslots_pool_timeouts_total{pool=\"/p/one\"} 1"));
        assert!(lines.contains(&"# TYPE dbslots_pool_acquired_total counter"));
        let buckets: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("dbslots_pool_wait_seconds_bucket"))
            .collect();
        assert_eq!(
            buckets,
            [
                "dbslots_pool_wait_seconds_bucket{pool=\"/p/one\",le=\"0.001\"} 6",
                "dbslots_pool_wait_seconds_bucket{pool=\"/p/one\",le=\"0.5\"} 6",
                "dbslots_pool_wait_seconds_bucket{pool=\"/p/one\",le=\"2\"} 9",
                "dbslots_pool_wait_seconds_bucket{pool=\"/p/one\",le=\"+Inf\"} 10",
            ]
        );
        assert!(lines.contains(&"dbslots_pool_wait_seconds_sum{pool=\"/p/one\"} 7.25"));
        assert!(lines.contains(&"dbslots_pool_wait_seconds_count{pool=\"/p/one\"} 10"));
        // The unreadable pool has no samples but `up`.
        assert_eq!(text.matches("two").count(), 1, "{text}");
        assert!(!text.contains("dbslots_mysql"));
    }

    #[test]
    fn metrics_show_the_server_when_it_was_read() {
        let up = ServerSnapshot {
            up: true,
            last: Some(ServerReading {
                limits: limits(),
                processlist: Processlist {
                    own_id: 9,
                    processes: Vec::new(),
                },
            }),
            age: Some(std::time::Duration::from_millis(250)),
            error: None,
        };
        let text = render_metrics(&[], Some(&up));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"dbslots_mysql_up 1"));
        assert!(lines.contains(&"dbslots_mysql_threads_connected 12"));
        assert!(lines.contains(&"dbslots_mysql_max_connections 151"));
        assert!(lines.contains(&"dbslots_mysql_max_used_connections 40"));
        assert!(lines.contains(&"dbslots_mysql_reading_age_seconds 0.25"));
        // Down: the last readings stay, `up` says they are not current.
        let down = ServerSnapshot {
            up: false,
            error: Some("refused".into()),
            ..up
        };
        let text = render_metrics(&[], Some(&down));
        assert!(text.lines().any(|l| l == "dbslots_mysql_up 0"));
        assert!(
            text.lines()
                .any(|l| l == "dbslots_mysql_threads_connected 12")
        );
        let never = ServerSnapshot::default();
        let text = render_metrics(&[], Some(&never));
        assert!(text.lines().any(|l| l == "dbslots_mysql_up 0"));
        assert!(!text.contains("dbslots_mysql_threads_connected"));
    }

    #[test]
    fn user_metrics_have_a_limit_only_where_one_applies() {
        let usages = [
            AccountUsage {
                user: "app".into(),
                connections: 9,
                idle_seconds: vec![40, 3],
                limit: Some((10, crate::LimitSource::Account)),
            },
            AccountUsage {
                user: "o\"dd".into(),
                connections: 1,
                idle_seconds: Vec::new(),
                limit: None,
            },
        ];
        let text = render_user_metrics(&usages);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"dbslots_mysql_user_connections{user=\"app\"} 9"));
        assert!(lines.contains(&"dbslots_mysql_user_max_connections{user=\"app\"} 10"));
        assert!(lines.contains(&"dbslots_mysql_user_sleeping{user=\"app\"} 2"));
        assert!(lines.contains(&"dbslots_mysql_user_oldest_idle_seconds{user=\"app\"} 40"));
        assert!(lines.contains(&"dbslots_mysql_user_connections{user=\"o\\\"dd\"} 1"));
        assert!(lines.contains(&"dbslots_mysql_user_oldest_idle_seconds{user=\"o\\\"dd\"} 0"));
        assert_eq!(
            text.matches("dbslots_mysql_user_max_connections{").count(),
            1
        );
        assert_eq!(text.matches("# TYPE ").count(), 4);
    }

    #[test]
    fn pool_stats_json_keeps_the_order_and_reports_errors() {
        let readings = [
            PoolReading {
                name: "/p/one".into(),
                stats: Ok(stats("/p/one")),
            },
            PoolReading {
                name: "/p/two".into(),
                stats: Err("no such pool".into()),
            },
        ];
        let v = pool_stats_json(&readings, 5);
        assert_eq!(v["unix_ms"], 5);
        assert_eq!(v["pools"][0]["pool"], "/p/one");
        assert_eq!(v["pools"][0]["active"], 2);
        assert_eq!(v["pools"][0]["holders"][0]["pid"], 42);
        assert_eq!(
            v["pools"][1],
            json!({"pool": "/p/two", "error": "no such pool"})
        );
    }

    #[test]
    fn server_json_is_what_dbslots_connections_prints() {
        let reading = ServerReading {
            limits: limits(),
            processlist: Processlist {
                own_id: 9,
                processes: vec![crate::Process {
                    id: 9,
                    user: "app".into(),
                    host: "localhost:5000".into(),
                    db: None,
                    command: "Query".into(),
                    seconds: 0,
                    state: None,
                }],
            },
        };
        let fleet = Fleet {
            user: "app".into(),
            hosts: 1,
        };
        let v = server_json("mysql://app:***@db/x", &reading, &fleet);
        assert_eq!(v["url"], "mysql://app:***@db/x");
        assert_eq!(v["limits"]["max_connections"], 151);
        assert_eq!(v["limits"]["threads_connected"], 12);
        assert_eq!(v["suggested_capacity"]["capacity"], 135);
        assert_eq!(v["groups"][0]["count"], 1);
        assert_eq!(v["connections"][0]["id"], 9);
        assert_eq!(v["user_limit"], Value::Null);
    }
}
