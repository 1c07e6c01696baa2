//! Gates' counters in the Prometheus text exposition format 0.0.4, for
//! `dbslots serve`'s `/metrics`.

use std::fmt::Write;

use crate::stats::GateReport;

/// The `dbslots_gate_*` families of `reports`, each sample labelled
/// `gate="NAME",host="HOST",pool="ADDRESS"` (a gate's name is unique
/// within its pool; the host tells where it runs). Empty when there are no gates (so the
/// families do not appear at all). The wait histogram's buckets are
/// cumulative; its `+Inf` bucket equals `_count`.
pub fn render_gate_metrics(reports: &[GateReport]) -> String {
    let mut out = String::new();
    if reports.is_empty() {
        return out;
    }
    let labels = |g: &GateReport| {
        format!(
            "gate=\"{}\",host=\"{}\",pool=\"{}\"",
            escape_label_value(&g.name),
            escape_label_value(&g.host),
            escape_label_value(&g.pool)
        )
    };
    type Value = fn(&GateReport) -> u64;
    let families: [(&str, &str, &str, Value); 11] = [
        (
            "dbslots_gate_accepted_total",
            "counter",
            "Client connections the gate accepted.",
            |g| g.accepted,
        ),
        (
            "dbslots_gate_admitted_total",
            "counter",
            "Clients that got a slot.",
            |g| g.admitted,
        ),
        (
            "dbslots_gate_queued",
            "gauge",
            "Clients waiting for a slot right now.",
            |g| g.queued,
        ),
        (
            "dbslots_gate_active",
            "gauge",
            "Relayed connections open right now, each holding a slot.",
            |g| g.active,
        ),
        (
            "dbslots_gate_queue_timeouts_total",
            "counter",
            "Clients refused with 1040 because no slot came within the queue timeout.",
            |g| g.queue_timeouts,
        ),
        (
            "dbslots_gate_abandoned_total",
            "counter",
            "Clients that hung up while they waited for a slot.",
            |g| g.abandoned,
        ),
        (
            "dbslots_gate_upstream_failures_total",
            "counter",
            "Clients refused with 2003 because the server could not be reached.",
            |g| g.upstream_failures,
        ),
        (
            "dbslots_gate_refused_total",
            "counter",
            "Clients refused with 1040 because the gate stopped before their slot came, or the pool failed.",
            |g| g.refused,
        ),
        (
            "dbslots_gate_leases_lost_total",
            "counter",
            "Relayed connections closed because their slot's lease was lost (redis:// pools).",
            |g| g.leases_lost,
        ),
        (
            "dbslots_gate_idle_closes_total",
            "counter",
            "Connections closed by the idle timeout while others waited.",
            |g| g.idle_closes,
        ),
        (
            "dbslots_gate_draining",
            "gauge",
            "Whether the gate is draining after SIGTERM (1) or not (0).",
            |g| u64::from(g.draining),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for g in reports {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(g), value(g));
        }
    }
    let name = "dbslots_gate_bytes_total";
    let _ = writeln!(out, "# HELP {name} Bytes relayed, by direction.");
    let _ = writeln!(out, "# TYPE {name} counter");
    for g in reports {
        let l = labels(g);
        let _ = writeln!(
            out,
            "{name}{{{l},direction=\"from_clients\"}} {}",
            g.bytes_from_clients
        );
        let _ = writeln!(
            out,
            "{name}{{{l},direction=\"to_clients\"}} {}",
            g.bytes_to_clients
        );
    }
    let name = "dbslots_gate_wait_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} How long admitted clients waited for their slot."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for g in reports {
        let l = labels(g);
        let h = &g.wait_histogram;
        let mut total = 0;
        for (bound, count) in h.cumulative() {
            let le = if bound.is_finite() {
                bound.to_string()
            } else {
                "+Inf".to_owned()
            };
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}\"}} {count}");
            // The last bucket (+Inf) holds every wait.
            total = count;
        }
        let _ = writeln!(out, "{name}_sum{{{l}}} {}", h.sum_seconds);
        let _ = writeln!(out, "{name}_count{{{l}}} {total}");
    }
    out
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape_label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbslots_core::WaitHistogram;

    fn report(name: &str) -> GateReport {
        GateReport {
            name: name.into(),
            pid: 1,
            host: "h1".into(),
            listen: vec!["127.0.0.1:3307".into()],
            upstream: "db:3306".into(),
            pool: "/run/p\"q".into(),
            capacity: 9,
            started_unix_ms: 0,
            updated_unix_ms: 0,
            draining: false,
            accepted: 5,
            admitted: 4,
            queued: 1,
            active: 2,
            queue_timeouts: 1,
            abandoned: 0,
            upstream_failures: 0,
            refused: 0,
            leases_lost: 3,
            idle_closes: 0,
            bytes_from_clients: 10,
            bytes_to_clients: 20,
            wait_histogram: WaitHistogram::from_buckets(vec![0.001, 1.0], vec![3, 0, 1], 7.5),
        }
    }

    #[test]
    fn families_have_one_sample_per_gate_and_cumulative_buckets() {
        assert_eq!(render_gate_metrics(&[]), "");
        let text = render_gate_metrics(&[report("a"), report("b")]);
        let l = r#"gate="a",host="h1",pool="/run/p\"q""#;
        for line in [
            format!("dbslots_gate_accepted_total{{{l}}} 5"),
            format!("dbslots_gate_queued{{{l}}} 1"),
            format!("dbslots_gate_leases_lost_total{{{l}}} 3"),
            format!("dbslots_gate_bytes_total{{{l},direction=\"to_clients\"}} 20"),
            format!("dbslots_gate_wait_seconds_bucket{{{l},le=\"0.001\"}} 3"),
            format!("dbslots_gate_wait_seconds_bucket{{{l},le=\"1\"}} 3"),
            format!("dbslots_gate_wait_seconds_bucket{{{l},le=\"+Inf\"}} 4"),
            format!("dbslots_gate_wait_seconds_count{{{l}}} 4"),
        ] {
            assert!(text.lines().any(|x| x == line), "{line} missing in\n{text}");
        }
        assert_eq!(text.matches("# TYPE dbslots_gate_active gauge").count(), 1);
        assert_eq!(text.matches("dbslots_gate_active{").count(), 2);
    }
}
