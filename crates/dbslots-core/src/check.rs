//! Checks in the convention monitoring systems run (Nagios, Icinga, Sensu,
//! and cron mailing on a non-zero exit): one line, `OK`, `WARNING`,
//! `CRITICAL` or `UNKNOWN` and what was measured, performance data after a
//! `|`, and the exit status 0, 1, 2 or 3.
//!
//! [`CheckResult`] is that line; [`PoolCheck`] judges a pool's
//! [`PoolStats`] with it (waiters piling up, the oldest waiter waiting too
//! long). `dbslots-mysql`'s server check builds on the same types.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::stats::PoolStats;

/// The verdict of a check, in the monitoring plugin convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CheckStatus {
    /// Everything within its thresholds (exit status 0).
    Ok,
    /// A warning threshold is passed (exit status 1).
    Warning,
    /// A critical threshold is passed (exit status 2).
    Critical,
    /// Nothing could be measured (exit status 3).
    Unknown,
}

impl CheckStatus {
    /// The exit status monitoring systems expect: 0, 1, 2 or 3.
    pub fn exit_code(self) -> u8 {
        match self {
            CheckStatus::Ok => 0,
            CheckStatus::Warning => 1,
            CheckStatus::Critical => 2,
            CheckStatus::Unknown => 3,
        }
    }

    /// `OK`, `WARNING`, `CRITICAL` or `UNKNOWN`.
    pub fn label(self) -> &'static str {
        match self {
            CheckStatus::Ok => "OK",
            CheckStatus::Warning => "WARNING",
            CheckStatus::Critical => "CRITICAL",
            CheckStatus::Unknown => "UNKNOWN",
        }
    }

    /// The worse of two verdicts of measurements (`Critical` over
    /// `Warning` over `Ok`; `Unknown` wins, since it means a measurement is
    /// missing).
    pub fn worst(self, other: CheckStatus) -> CheckStatus {
        let rank = |s: CheckStatus| match s {
            CheckStatus::Ok => 0,
            CheckStatus::Warning => 1,
            CheckStatus::Critical => 2,
            CheckStatus::Unknown => 3,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The verdict of a usage `value` against thresholds in the plugin
/// convention: `Critical` when `value > crit`, `Warning` when
/// `value > warn`.
pub fn judge(value: f64, warn: Option<f64>, crit: Option<f64>) -> CheckStatus {
    if crit.is_some_and(|c| value > c) {
        CheckStatus::Critical
    } else if warn.is_some_and(|w| value > w) {
        CheckStatus::Warning
    } else {
        CheckStatus::Ok
    }
}

/// The largest count of `limit` that is not over `percent` of it: a count
/// above it passes the threshold. With it as the warn/crit value of
/// [`PerfData`], a monitoring system's own evaluation (`value > threshold`)
/// agrees with the check's.
pub fn percent_threshold(limit: u64, percent: f64) -> u64 {
    // limit * percent is exact for any realistic limit and an integral
    // percent, so the floor is exact too.
    ((limit as f64) * percent / 100.0).floor().max(0.0) as u64
}

/// One performance data item: `'label'=value[unit];warn;crit;min;max`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PerfData {
    /// The label (quoted on output; a `'` in it is doubled, and an `=`,
    /// which the plugin guidelines do not allow in a label and parsers
    /// split on, is written as `_`).
    pub label: String,
    /// The measured value.
    pub value: f64,
    /// The unit: `""` for a number, `"s"` for seconds, `"c"` for a counter
    /// that only grows, `"%"`.
    pub unit: &'static str,
    /// The warning threshold (a value above it warns).
    pub warn: Option<f64>,
    /// The critical threshold.
    pub crit: Option<f64>,
    /// The smallest possible value.
    pub min: Option<f64>,
    /// The largest possible value.
    pub max: Option<f64>,
}

impl PerfData {
    /// A plain number with minimum 0 and no thresholds.
    pub fn new(label: impl Into<String>, value: f64) -> PerfData {
        PerfData {
            label: label.into(),
            value,
            unit: "",
            warn: None,
            crit: None,
            min: Some(0.0),
            max: None,
        }
    }

    /// Sets the unit.
    pub fn unit(mut self, unit: &'static str) -> PerfData {
        self.unit = unit;
        self
    }

    /// Sets the warning and critical thresholds.
    pub fn thresholds(mut self, warn: Option<f64>, crit: Option<f64>) -> PerfData {
        self.warn = warn;
        self.crit = crit;
        self
    }

    /// Sets the largest possible value.
    pub fn max(mut self, max: f64) -> PerfData {
        self.max = Some(max);
        self
    }
}

impl fmt::Display for PerfData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let num = |v: Option<f64>| v.map(format_number).unwrap_or_default();
        // Trailing empty fields may be left out, and are.
        let text = format!(
            "'{}'={}{};{};{};{};{}",
            self.label.replace('\'', "''").replace('=', "_"),
            format_number(self.value),
            self.unit,
            num(self.warn),
            num(self.crit),
            num(self.min),
            num(self.max)
        );
        f.write_str(text.trim_end_matches(';'))
    }
}

/// A number as plugins print it: integral values without a fraction,
/// others with at most three decimals.
fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Seconds as `12s` or `2.5s`.
pub fn format_seconds(d: Duration) -> String {
    format!(
        "{}s",
        format_number((d.as_secs_f64() * 10.0).round() / 10.0)
    )
}

/// The outcome of a check: its status, what was measured in words (the
/// problems first) and the performance data.
///
/// [`CheckResult::line`] is the one line a monitoring system reads; its
/// text never contains a line break or a `|` (which would start the
/// performance data).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CheckResult {
    /// The verdict.
    pub status: CheckStatus,
    /// What was checked, shown before everything else (`pool /run/app/db`);
    /// `None` when the phrases say it themselves.
    pub subject: Option<String>,
    /// What passed a threshold, worst first.
    pub problems: Vec<Problem>,
    /// What was measured besides: one phrase each.
    pub details: Vec<String>,
    /// The performance data.
    pub perfdata: Vec<PerfData>,
}

impl CheckResult {
    /// An `OK` result with nothing in it yet.
    pub fn ok() -> CheckResult {
        CheckResult {
            status: CheckStatus::Ok,
            subject: None,
            problems: Vec::new(),
            details: Vec::new(),
            perfdata: Vec::new(),
        }
    }

    /// An `UNKNOWN` result: nothing could be measured, and `why` says why
    /// and what to do (line breaks in it are joined into the one line).
    pub fn unknown(why: impl Into<String>) -> CheckResult {
        CheckResult {
            status: CheckStatus::Unknown,
            subject: None,
            problems: vec![Problem {
                status: CheckStatus::Unknown,
                text: why.into(),
            }],
            details: Vec::new(),
            perfdata: Vec::new(),
        }
    }

    /// Adds a problem of the given severity, raising the status; it goes
    /// after the problems at least as severe.
    pub fn problem(&mut self, status: CheckStatus, text: impl Into<String>) {
        self.status = self.status.worst(status);
        let at = self
            .problems
            .iter()
            .position(|p| p.status.worst(status) != p.status)
            .unwrap_or(self.problems.len());
        self.problems.insert(
            at,
            Problem {
                status,
                text: text.into(),
            },
        );
    }

    /// Adds a measurement in words.
    pub fn detail(&mut self, text: impl Into<String>) {
        self.details.push(text.into());
    }

    /// The exit status: 0, 1, 2 or 3.
    pub fn exit_code(&self) -> u8 {
        self.status.exit_code()
    }

    /// The line: `STATUS: [subject: ]problems; details | 'label'=value;warn;crit;min;max ...`.
    pub fn line(&self) -> String {
        let text: Vec<String> = self
            .problems
            .iter()
            .map(|p| &p.text)
            .chain(&self.details)
            .map(|t| one_line(t))
            .filter(|t| !t.is_empty())
            .collect();
        let mut line = format!("{}: ", self.status.label());
        if let Some(subject) = &self.subject {
            line.push_str(&one_line(subject));
            line.push_str(": ");
        }
        line.push_str(&text.join("; "));
        if !self.perfdata.is_empty() {
            line.push_str(" |");
            for p in &self.perfdata {
                line.push(' ');
                line.push_str(&p.to_string());
            }
        }
        line
    }
}

/// A threshold passed, in words.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Problem {
    /// How bad it is.
    pub status: CheckStatus,
    /// What was measured and why it matters, as one phrase.
    pub text: String,
}

/// `text` on one line: line breaks become `; `, runs of white space one
/// space, and `|` (the start of the performance data) becomes `/`.
fn one_line(text: &str) -> String {
    let mut out = String::new();
    for line in text.replace('|', "/").lines() {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        let line = line.trim_end_matches(';');
        if line.is_empty() {
            continue;
        }
        if !out.is_empty() {
            // A line that introduces the next (ends with ':') needs no ';'.
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(line);
    }
    out
}

/// When a pool needs attention: too many waiters, or a waiter waiting too
/// long. Both are the sign that the capacity is too small for the load or
/// that a holder hangs; the result names the oldest holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolCheck {
    /// `WARNING` when more acquirers than this wait; `None` for the pool's
    /// capacity (more waiters than slots).
    pub warn_waiting: Option<u32>,
    /// `CRITICAL` when the oldest waiter has waited longer than this.
    pub crit_wait: Duration,
}

impl Default for PoolCheck {
    /// More waiters than slots warn; a wait of more than 30 s (the acquire
    /// timeout of HikariCP and sqlx, and where the reference system gave
    /// up) is critical.
    fn default() -> Self {
        PoolCheck {
            warn_waiting: None,
            crit_wait: Duration::from_secs(30),
        }
    }
}

impl PoolCheck {
    /// Judges `stats`, read at `now_unix_ms` (milliseconds since the Unix
    /// epoch, the clock of [`PoolStats`]' timestamps).
    pub fn evaluate(&self, stats: &PoolStats, now_unix_ms: u64) -> CheckResult {
        let age = |since: Option<u64>| {
            since.map(|s| Duration::from_millis(now_unix_ms.saturating_sub(s)))
        };
        let who = |pid: Option<u32>, host: Option<&str>| {
            let pid = pid.map_or_else(|| "?".to_string(), |p| p.to_string());
            match host {
                Some(h) => format!("pid {pid} on {h}"),
                None => format!("pid {pid}"),
            }
        };
        let warn_waiting = self.warn_waiting.unwrap_or(stats.capacity);
        // Waiters are listed oldest first, but a foreign waiter may lack a
        // timestamp: take the oldest known.
        let oldest_waiter = stats
            .waiters
            .iter()
            .filter_map(|w| age(w.since_unix_ms).map(|a| (a, w)))
            .max_by_key(|(a, _)| *a);
        let oldest_holder = stats
            .holders
            .iter()
            .filter_map(|h| age(h.since_unix_ms).map(|a| (a, h)))
            .max_by_key(|(a, _)| *a);
        let holder_text = match oldest_holder {
            Some((held, h)) => format!(
                "oldest holder {} has held slot {} for {}",
                who(h.pid, h.host.as_deref()),
                h.slot,
                format_seconds(held)
            ),
            None if stats.active > 0 => {
                "the holders recorded no pid or time (foreign clients)".to_string()
            }
            None => "no holder".to_string(),
        };

        let mut result = CheckResult::ok();
        result.subject = Some(format!("pool {}", stats.pool));
        if let Some((waited, w)) = oldest_waiter
            && waited > self.crit_wait
        {
            result.problem(
                CheckStatus::Critical,
                format!(
                    "the oldest waiter ({}) has waited {} (more than {})",
                    who(w.pid, w.host.as_deref()),
                    format_seconds(waited),
                    format_seconds(self.crit_wait)
                ),
            );
        }
        if stats.waiting > warn_waiting {
            result.problem(
                CheckStatus::Warning,
                format!(
                    "{} waiting (more than {warn_waiting}): waiters pile up",
                    stats.waiting
                ),
            );
        }
        result.detail(format!(
            "{} of {} slots in use, {} waiting",
            stats.active, stats.capacity, stats.waiting
        ));
        if let Some((waited, _)) = oldest_waiter {
            result.detail(format!("oldest wait {}", format_seconds(waited)));
        }
        if result.status == CheckStatus::Ok {
            result.detail(holder_text);
        } else {
            result.detail(format!(
                "the capacity is too small or a holder hangs: {holder_text}"
            ));
        }
        let seconds = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64());
        result.perfdata = vec![
            PerfData::new("active", f64::from(stats.active)).max(f64::from(stats.capacity)),
            PerfData::new("waiting", f64::from(stats.waiting))
                .thresholds(Some(f64::from(warn_waiting)), None),
            PerfData::new("oldest_wait", seconds(oldest_waiter.map(|(a, _)| a)))
                .unit("s")
                .thresholds(None, Some(self.crit_wait.as_secs_f64())),
            PerfData::new("oldest_hold", seconds(oldest_holder.map(|(a, _)| a))).unit("s"),
            PerfData::new("timeouts", stats.timeouts as f64).unit("c"),
        ];
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Holder, WaitHistogram, Waiter};

    fn stats(waiting_since: &[u64]) -> PoolStats {
        PoolStats {
            pool: "/run/app/db".into(),
            backend: "file".into(),
            capacity: 2,
            active: 2,
            waiting: waiting_since.len() as u32,
            peak: 2,
            acquisitions: 7,
            timeouts: 1,
            holders: vec![
                Holder {
                    slot: 0,
                    pid: Some(41),
                    host: None,
                    since_unix_ms: Some(90_000),
                },
                Holder {
                    slot: 1,
                    pid: Some(42),
                    host: None,
                    since_unix_ms: Some(5_000),
                },
            ],
            waiters: waiting_since
                .iter()
                .enumerate()
                .map(|(i, s)| Waiter {
                    pid: Some(100 + i as u32),
                    host: None,
                    since_unix_ms: Some(*s),
                })
                .collect(),
            wait_histogram: WaitHistogram::default(),
        }
    }

    #[test]
    fn perfdata_follows_the_plugin_format() {
        let p = PerfData::new("account o'neil", 9.0)
            .thresholds(Some(6.0), Some(8.0))
            .max(10.0);
        assert_eq!(p.to_string(), "'account o''neil'=9;6;8;0;10");
        let p = PerfData::new("oldest_wait", 2.25).unit("s");
        assert_eq!(p.to_string(), "'oldest_wait'=2.25s;;;0");
        // An account named with an `=` does not split the item.
        let p = PerfData::new("account a=b", 1.0);
        assert_eq!(p.to_string(), "'account a_b'=1;;;0");
        assert_eq!(p.to_string().matches('=').count(), 1);
    }

    #[test]
    fn thresholds_count_above_the_percentage() {
        assert_eq!(percent_threshold(20, 60.0), 12);
        assert_eq!(percent_threshold(20, 85.0), 17);
        assert_eq!(percent_threshold(10, 85.0), 8);
        assert_eq!(percent_threshold(151, 60.0), 90);
        // 12 of 20 is 60 %: not over it; 13 is.
        assert_eq!(judge(12.0, Some(12.0), Some(17.0)), CheckStatus::Ok);
        assert_eq!(judge(13.0, Some(12.0), Some(17.0)), CheckStatus::Warning);
        assert_eq!(judge(18.0, Some(12.0), Some(17.0)), CheckStatus::Critical);
    }

    #[test]
    fn the_line_is_one_line_with_perfdata_after_a_bar() {
        let mut r = CheckResult::ok();
        r.problem(CheckStatus::Warning, "a | b\nc");
        r.problem(CheckStatus::Critical, "worse");
        r.detail("measured");
        r.perfdata.push(PerfData::new("x", 1.0));
        assert_eq!(r.exit_code(), 2);
        assert_eq!(r.line(), "CRITICAL: worse; a / b; c; measured | 'x'=1;;;0");
        let u = CheckResult::unknown("cannot connect\nwhat to do: start it");
        assert_eq!(
            CheckResult::unknown("to get in:\n  1. a\n  2. b").line(),
            "UNKNOWN: to get in: 1. a; 2. b"
        );
        assert_eq!(u.exit_code(), 3);
        assert_eq!(u.line(), "UNKNOWN: cannot connect; what to do: start it");
    }

    #[test]
    fn a_quiet_pool_is_ok_and_names_its_oldest_holder() {
        let r = PoolCheck::default().evaluate(&stats(&[]), 100_000);
        assert_eq!(r.status, CheckStatus::Ok, "{}", r.line());
        assert!(
            r.line().starts_with(
                "OK: pool /run/app/db: 2 of 2 slots in use, 0 waiting; oldest holder pid 42 has held slot 1 for 95s |"
            ),
            "{}",
            r.line()
        );
        assert!(r.line().contains("'active'=2;;;0;2"), "{}", r.line());
        assert!(r.line().contains("'timeouts'=1c;;;0"), "{}", r.line());
    }

    #[test]
    fn waiters_piling_up_warn_and_name_the_oldest_holder() {
        let check = PoolCheck {
            warn_waiting: Some(2),
            crit_wait: Duration::from_secs(30),
        };
        let r = check.evaluate(&stats(&[99_000, 99_500]), 100_000);
        assert_eq!(r.status, CheckStatus::Ok, "{}", r.line());
        let r = check.evaluate(&stats(&[98_000, 99_000, 99_500]), 100_000);
        assert_eq!(r.status, CheckStatus::Warning, "{}", r.line());
        assert!(
            r.line().contains("3 waiting (more than 2)")
                && r.line()
                    .contains("oldest holder pid 42 has held slot 1 for 95s"),
            "{}",
            r.line()
        );
        // The default bound is the capacity (2).
        let r = PoolCheck::default().evaluate(&stats(&[98_000, 99_000, 99_500]), 100_000);
        assert_eq!(r.status, CheckStatus::Warning, "{}", r.line());
    }

    #[test]
    fn a_long_wait_is_critical() {
        let r = PoolCheck::default().evaluate(&stats(&[60_000]), 100_000);
        assert_eq!(r.status, CheckStatus::Critical, "{}", r.line());
        assert!(
            r.line()
                .contains("the oldest waiter (pid 100) has waited 40s (more than 30s)"),
            "{}",
            r.line()
        );
        assert!(r.line().contains("'oldest_wait'=40s;;30;0"), "{}", r.line());
        assert!(
            r.line().starts_with(
                "CRITICAL: pool /run/app/db: the oldest waiter (pid 100) has waited 40s (more than 30s); 2 of 2 slots in use, 1 waiting; oldest wait 40s; the capacity is too small or a holder hangs: oldest holder pid 42 has held slot 1 for 95s |"
            ),
            "{}",
            r.line()
        );
    }
}
