//! `dbslots status` (and its `--check` for monitoring systems) and
//! `dbslots resize`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use dbslots_core::{CheckResult, PoolCheck, PoolStats};

use crate::common::{PoolArgs, format_unix_ms, now_unix_ms};
use crate::exec::parse_seconds;

/// Shows a pool's capacity, holders, waiters and counters.
///
/// With --check it prints one line in the convention of monitoring plugins
/// and exits 0 OK, 1 WARNING, 2 CRITICAL or 3 UNKNOWN.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pool: PoolArgs,

    /// One JSON object instead of the table
    #[arg(long)]
    json: bool,

    /// Check mode for cron and monitoring systems: WARNING when waiters
    /// pile up, CRITICAL when the oldest waiter waits too long; the line
    /// names the oldest holder
    #[arg(long, conflicts_with = "json")]
    check: bool,

    /// With --check: WARNING when more than N acquirers wait [default: the
    /// pool's capacity]
    #[arg(long, value_name = "N", requires = "check")]
    warn_waiting: Option<u32>,

    /// With --check: CRITICAL when the oldest waiter has waited longer than
    /// this [default: 30]
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, requires = "check")]
    crit_wait: Option<Duration>,
}

/// Changes a pool's capacity.
#[derive(Debug, Args)]
pub struct ResizeArgs {
    /// The pool
    #[arg(long, env = dbslots_core::env::POOL, hide_env_values = true, value_name = "DIR")]
    pool: Option<String>,

    /// The new capacity
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(dbslots_core::MAX_CAPACITY)))]
    capacity: u32,
}

/// Runs `dbslots status`.
pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if args.check {
        return Ok(check(&args));
    }
    let pool = args.pool.open()?;
    let stats = pool.stats()?;
    // Gates in front of a server that use this pool (`dbslots gate`).
    let gates = dbslots_gate::read_gates(&pool).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the pool's gates");
        Vec::new()
    });
    let text = if args.json {
        let mut doc = stats.to_json();
        if !gates.is_empty()
            && let Some(map) = doc.as_object_mut()
        {
            map.insert("gates".into(), serde_json::to_value(&gates)?);
        }
        format!("{}\n", serde_json::to_string_pretty(&doc)?)
    } else {
        render_table(&stats, now_unix_ms()) + &render_gates(&gates)
    };
    crate::output::stdout(text)?;
    Ok(ExitCode::SUCCESS)
}

/// The gates' table of `dbslots status` (empty without gates).
pub fn render_gates(gates: &[dbslots_gate::GateReport]) -> String {
    if gates.is_empty() {
        return String::new();
    }
    let mut t = String::from(
        "\nGATE             HOST             LISTEN                 ACCEPTED  ADMITTED  QUEUED  ACTIVE  TIMEOUTS  IDLE-CLOSED  MB IN/OUT\n",
    );
    for g in gates {
        let mb = |b: u64| b as f64 / 1e6;
        t += &format!(
            "{:<16} {:<16} {:<22} {:>8}  {:>8}  {:>6}  {:>6}  {:>8}  {:>11}  {:.1}/{:.1}{}\n",
            g.name,
            if g.host.is_empty() { "-" } else { &g.host },
            g.listen.first().map_or("-", String::as_str),
            g.accepted,
            g.admitted,
            g.queued,
            g.active,
            g.queue_timeouts,
            g.idle_closes,
            mb(g.bytes_from_clients),
            mb(g.bytes_to_clients),
            if g.draining { "  (draining)" } else { "" },
        );
    }
    t
}

/// `--check`: prints the line and returns its exit status; a pool that
/// cannot be read is UNKNOWN, never another status.
fn check(args: &StatusArgs) -> ExitCode {
    let check = PoolCheck {
        warn_waiting: args.warn_waiting,
        crit_wait: args.crit_wait.unwrap_or(PoolCheck::default().crit_wait),
    };
    let result = match args.pool.open().and_then(|p| Ok(p.stats()?)) {
        Ok(stats) => check.evaluate(&stats, now_unix_ms()),
        Err(e) => CheckResult::unknown(format!(
            "cannot read the pool: {}",
            crate::advice::error_line(&e)
        )),
    };
    let _ = crate::output::stdout(format!("{}\n", crate::advice::in_cli_terms(&result.line())));
    ExitCode::from(result.exit_code())
}

/// Runs `dbslots resize`.
pub fn run_resize(args: ResizeArgs) -> anyhow::Result<ExitCode> {
    let pool_args = PoolArgs {
        pool: args.pool,
        capacity: None,
        group: None,
    };
    let pool = match pool_args.open() {
        // The library's advice (give a capacity to create it) is what the
        // user just did: `resize` never creates a pool.
        Err(e)
            if matches!(
                e.downcast_ref::<dbslots_core::Error>(),
                Some(dbslots_core::Error::NotFound { .. })
            ) =>
        {
            anyhow::bail!(
                "pool {} does not exist, so it has no capacity to change (resize never creates a pool); check the address, or create the pool with the capacity it should have: `dbslots status --pool POOL --capacity N`",
                pool_args.addr()?
            );
        }
        pool => pool?,
    };
    let old = pool.resize(args.capacity)?;
    crate::output::stdout(format!(
        "pool {}: capacity {} -> {}\n",
        pool.addr(),
        old,
        args.capacity
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn age(now_ms: u64, since_ms: Option<u64>) -> String {
    match since_ms {
        Some(s) => format!("{:.1}s", now_ms.saturating_sub(s) as f64 / 1000.0),
        None => "-".into(),
    }
}

/// The human table of `dbslots status`.
pub fn render_table(s: &PoolStats, now_ms: u64) -> String {
    let mut t = String::new();
    t += &format!("pool        {} ({})\n", s.pool, s.backend);
    t += &format!(
        "slots       {} of {} in use, {} waiting, peak {}\n",
        s.active, s.capacity, s.waiting, s.peak
    );
    if s.over_capacity() > 0 {
        t += &format!(
            "            OVER CAPACITY by {}: a shrink is draining; nobody new is admitted until fewer than {} slots are held\n",
            s.over_capacity(),
            s.capacity
        );
    }
    t += &format!(
        "counters    {} acquisitions, {} timeouts\n",
        s.acquisitions, s.timeouts
    );
    if !s.holders.is_empty() {
        let hosts = s.holders.iter().any(|h| h.host.is_some());
        t += if hosts {
            "\nSLOT  HOST                 PID      SINCE                  HELD\n"
        } else {
            "\nSLOT  PID      SINCE                  HELD\n"
        };
        for h in &s.holders {
            t += &format!("{:<5} ", h.slot);
            if hosts {
                t += &format!("{:<20} ", h.host.as_deref().unwrap_or("?"));
            }
            t += &format!(
                "{:<8} {:<22} {}\n",
                h.pid.map_or("?".into(), |p| p.to_string()),
                h.since_unix_ms.map_or("-".into(), format_unix_ms),
                age(now_ms, h.since_unix_ms)
            );
        }
    }
    if !s.waiters.is_empty() {
        t += "\nWAITER PID  SINCE                  WAITED\n";
        for w in &s.waiters {
            t += &format!(
                "{:<11} {:<22} {}\n",
                w.pid.map_or("?".into(), |p| p.to_string()),
                w.since_unix_ms.map_or("-".into(), format_unix_ms),
                age(now_ms, w.since_unix_ms)
            );
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::render_table;
    use crate::readings::{gate_report, pool_stats};
    use dbslots_core::PoolStats;
    use serde_json::json;

    fn stats(host: Option<&str>) -> PoolStats {
        pool_stats(json!({
            "pool": "p", "capacity": 3,
            "holders": [{"slot": 2, "pid": 42, "host": host, "since_unix_ms": 1_000}],
        }))
    }

    #[test]
    fn the_table_shows_counts_holders_and_hosts_when_known() {
        let t = render_table(&stats(None), 3_500);
        assert!(t.contains("1 of 3 in use, 0 waiting, peak 2"), "{t}");
        assert!(t.contains("9 acquisitions, 1 timeouts"), "{t}");
        assert!(
            t.contains("2     42       1970-01-01 00:00:01Z   2.5s"),
            "{t}"
        );
        assert!(!t.contains("HOST"), "{t}");
        let t = render_table(&stats(Some("web-3")), 3_500);
        assert!(t.contains("HOST") && t.contains("web-3"), "{t}");
        assert!(!t.contains("OVER CAPACITY"), "{t}");
    }

    #[test]
    fn a_draining_shrink_is_shown_as_over_capacity() {
        let mut s = stats(None);
        s.capacity = 1;
        s.active = 3;
        let t = render_table(&s, 3_500);
        assert!(t.contains("3 of 1 in use"), "{t}");
        assert!(t.contains("OVER CAPACITY by 2"), "{t}");
        assert_eq!(s.to_json()["over_capacity"], 2);
    }

    #[test]
    fn gates_get_a_row_each_and_no_table_without_gates() {
        assert_eq!(super::render_gates(&[]), "");
        let g = gate_report(json!({
            "host": "app-3", "draining": true, "bytes_from_clients": 1_500_000, "bytes_to_clients": 42_000_000,
        }));
        let t = super::render_gates(&[g]);
        let row: Vec<&str> = t.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            [
                "web-1",
                "app-3",
                "127.0.0.1:3307",
                "12",
                "10",
                "2",
                "9",
                "1",
                "3",
                "1.5/42.0",
                "(draining)"
            ],
            "{t}"
        );
    }
}
