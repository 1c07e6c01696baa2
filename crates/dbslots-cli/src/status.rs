//! `dbslots status` and `dbslots resize`.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use dbslots_core::PoolStats;

use crate::common::{PoolArgs, format_unix_ms, now_unix_ms};

/// Shows a pool's capacity, holders, waiters and counters.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pool: PoolArgs,

    /// One JSON object instead of the table
    #[arg(long)]
    json: bool,
}

/// Changes a pool's capacity.
#[derive(Debug, Args)]
pub struct ResizeArgs {
    /// The pool
    #[arg(long, env = "DBSLOTS_POOL", value_name = "DIR")]
    pool: Option<String>,

    /// The new capacity
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(dbslots_core::MAX_CAPACITY)))]
    capacity: u32,
}

/// Runs `dbslots status`.
pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let pool = args.pool.open()?;
    let stats = pool.stats()?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &stats.to_json())?;
        writeln!(out)?;
    } else {
        write!(out, "{}", render_table(&stats, now_unix_ms()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `dbslots resize`.
pub fn run_resize(args: ResizeArgs) -> anyhow::Result<ExitCode> {
    let pool_args = PoolArgs {
        pool: args.pool,
        capacity: None,
        group: None,
    };
    let pool = pool_args.open()?;
    let old = pool.resize(args.capacity)?;
    println!(
        "pool {}: capacity {} -> {}",
        pool.addr(),
        old,
        args.capacity
    );
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
    use dbslots_core::{Holder, PoolStats, WaitHistogram};

    fn stats(host: Option<&str>) -> PoolStats {
        PoolStats {
            pool: "p".into(),
            backend: "file".into(),
            capacity: 3,
            active: 1,
            waiting: 0,
            peak: 2,
            acquisitions: 9,
            timeouts: 1,
            holders: vec![Holder {
                slot: 2,
                pid: Some(42),
                host: host.map(str::to_string),
                since_unix_ms: Some(1_000),
            }],
            waiters: vec![],
            wait_histogram: WaitHistogram::default(),
        }
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
}
