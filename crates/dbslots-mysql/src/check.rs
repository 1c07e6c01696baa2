//! A check of a server's connection usage and leaks, for cron and
//! monitoring systems (Nagios, Icinga, Sensu): warn before a limit locks
//! users out.
//!
//! Every limit counts on its own: `max_connections` for the server, and for
//! each account its own `MAX_USER_CONNECTIONS` or else the global
//! `max_user_connections`. 9 of 10 for one account is critical even when
//! the server is at 20 %. Leaks show as sleeping connections: with
//! [`ServerCheck::max_idle_count`] and [`ServerCheck::max_idle`] an account
//! with too many of them, or a connection idle too long, warns.
//!
//! The check's own connection (the monitor's, see [`connect_monitor`]) is
//! not counted: it exists only while the check runs. Connections are
//! counted per user name, as the processlist shows them; an account
//! without the PROCESS privilege sees only its own, and the result says so.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use dbslots_core::{CheckResult, CheckStatus, PerfData, format_seconds, judge, percent_threshold};

use crate::limits::ServerLimits;
use crate::monitor::connect_monitor;
use crate::processlist::Processlist;

/// At most this many accounts are named in the line when they are within
/// their limits (every account over a threshold is named).
const ACCOUNTS_SHOWN: usize = 3;

/// What a server check measures against: usage thresholds in percent of
/// each limit, and the optional leak thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerCheck {
    /// `WARNING` when usage is over this percentage of a limit (default 60).
    pub warn_percent: f64,
    /// `CRITICAL` when usage is over this percentage of a limit (default
    /// 85).
    pub crit_percent: f64,
    /// `WARNING` when an account has more sleeping connections than this.
    pub max_idle_count: Option<usize>,
    /// `WARNING` when a connection has slept longer than this.
    pub max_idle: Option<Duration>,
    /// How long connecting and reading may take in all before the check
    /// gives up with `UNKNOWN` (default 10 s; the monitor's connect gives up
    /// after 10 s whatever this says).
    pub timeout: Duration,
}

impl Default for ServerCheck {
    fn default() -> Self {
        ServerCheck {
            warn_percent: 60.0,
            crit_percent: 85.0,
            max_idle_count: None,
            max_idle: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Where an account's connection limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitSource {
    /// The account's own `MAX_USER_CONNECTIONS` (refusals are 1226).
    Account,
    /// The global `max_user_connections` (refusals are 1203).
    Global,
}

impl LimitSource {
    /// The limit's name as the server spells it.
    pub fn name(self) -> &'static str {
        match self {
            LimitSource::Account => "its MAX_USER_CONNECTIONS",
            LimitSource::Global => "max_user_connections",
        }
    }

    /// The error code a connection over this limit gets.
    pub fn refusal_code(self) -> u16 {
        match self {
            LimitSource::Account => crate::codes::USER_LIMIT_REACHED,
            LimitSource::Global => crate::codes::TOO_MANY_USER_CONNECTIONS,
        }
    }
}

/// The connections of one account (user name) and the limit that applies
/// to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AccountUsage {
    /// The user name.
    pub user: String,
    /// Its connections.
    pub connections: u64,
    /// How long each of its sleeping connections has been idle, in seconds,
    /// longest first.
    pub idle_seconds: Vec<u64>,
    /// The limit that applies, and where it comes from; `None` for none.
    pub limit: Option<(u64, LimitSource)>,
}

impl AccountUsage {
    /// Every account with connections in `list`, by user name, with the
    /// limit of `limits` that applies to it: the account's own
    /// `MAX_USER_CONNECTIONS` (the smallest, when the user name has several
    /// host entries), else the global `max_user_connections`. The server's
    /// own threads are left out, and so is the connection that read `list`
    /// unless `count_own` (a check's connection is gone when it is done; a
    /// kept-open monitor's is not).
    pub fn of(limits: &ServerLimits, list: &Processlist, count_own: bool) -> Vec<AccountUsage> {
        let own_user = user_of(&limits.account);
        let mut users: BTreeMap<&str, (u64, Vec<u64>)> = BTreeMap::new();
        for p in &list.processes {
            if (p.id == list.own_id && !count_own) || p.is_system() {
                continue;
            }
            let (count, idle) = users.entry(p.user.as_str()).or_default();
            *count += 1;
            idle.extend(p.idle_seconds());
        }
        users
            .into_iter()
            .map(|(user, (connections, mut idle_seconds))| {
                idle_seconds.sort_unstable_by(|a, b| b.cmp(a));
                AccountUsage {
                    user: user.to_string(),
                    connections,
                    idle_seconds,
                    limit: account_limit(limits, user, own_user),
                }
            })
            .collect()
    }

    /// Its sleeping connections.
    pub fn sleeping(&self) -> u64 {
        self.idle_seconds.len() as u64
    }

    /// How long its longest sleeping connection has been idle, in seconds.
    pub fn oldest_idle(&self) -> Option<u64> {
        self.idle_seconds.first().copied()
    }
}

impl ServerCheck {
    /// Whether the thresholds make sense; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        for (flag, v) in [
            ("warn_percent", self.warn_percent),
            ("crit_percent", self.crit_percent),
        ] {
            if !(0.0..=100.0).contains(&v) {
                return Err(format!(
                    "{flag} {v} is not a percentage: give a number from 0 to 100"
                ));
            }
        }
        if self.warn_percent > self.crit_percent {
            return Err(format!(
                "warn_percent {} is above crit_percent {}: the warning threshold must not be above the critical one",
                self.warn_percent, self.crit_percent
            ));
        }
        Ok(())
    }

    /// Connects to `url` with a monitor connection (no slot, one attempt),
    /// reads the limits and the processlist, and judges them; every failure
    /// is an `UNKNOWN` result that says why and what to do. Returns within
    /// [`ServerCheck::timeout`] (and the monitor's 10 s connect timeout).
    pub async fn run(&self, url: &str) -> CheckResult {
        if let Err(e) = self.validate() {
            return CheckResult::unknown(e);
        }
        let shown = dbslots_core::redact(url);
        let measure = async {
            let mut conn = connect_monitor(url).await?;
            let read = async {
                let limits = ServerLimits::read(&mut conn).await?;
                let list = Processlist::read(&mut conn).await?;
                crate::Result::<_>::Ok((limits, list))
            }
            .await;
            // Leave politely; a failed QUIT changes nothing measured.
            let _ = conn.disconnect().await;
            read
        };
        match tokio::time::timeout(self.timeout, measure).await {
            Ok(Ok((limits, list))) => self.evaluate(&limits, &list),
            Ok(Err(e)) => CheckResult::unknown(format!("cannot measure: {e}")),
            Err(_) => CheckResult::unknown(format!(
                "cannot measure: {shown} did not answer within {}; check that the server runs and is not stopped or overloaded, and that nothing on the way drops packets",
                format_seconds(self.timeout)
            )),
        }
    }

    /// Judges one reading: `limits` and `list` read over the same monitor
    /// connection (whose own connection is not counted).
    pub fn evaluate(&self, limits: &ServerLimits, list: &Processlist) -> CheckResult {
        let mut result = CheckResult::ok();
        let (warn, crit) = (self.warn_percent, self.crit_percent);
        let percent = |n: u64, of: u64| {
            if of == 0 {
                0.0
            } else {
                n as f64 * 100.0 / of as f64
            }
        };

        // The server.
        let used = limits.threads_connected.saturating_sub(1);
        let max = limits.max_connections;
        let (w, c) = (percent_threshold(max, warn), percent_threshold(max, crit));
        let server_status = judge(used as f64, Some(w as f64), Some(c as f64));
        let server_text = format!(
            "server {used} of max_connections {max} ({:.0}%)",
            percent(used, max)
        );
        if server_status == CheckStatus::Ok {
            result.detail(server_text);
        } else {
            let over = if server_status == CheckStatus::Critical {
                crit
            } else {
                warn
            };
            result.problem(
                server_status,
                format!(
                    "{server_text}, over {over}%: new clients are about to be refused with 1040"
                ),
            );
        }
        result.perfdata.push(
            PerfData::new("connections", used as f64)
                .thresholds(Some(w as f64), Some(c as f64))
                .max(max as f64),
        );

        // Each account.
        let usages = AccountUsage::of(limits, list, false);
        let own_user = user_of(&limits.account);
        // (status, percent, text, perfdata) of every account with a limit.
        let mut accounts = Vec::new();
        for usage in &usages {
            let user = &usage.user;
            let Some((limit, source)) = usage.limit else {
                continue;
            };
            let (w, c) = (
                percent_threshold(limit, warn),
                percent_threshold(limit, crit),
            );
            let status = judge(usage.connections as f64, Some(w as f64), Some(c as f64));
            let p = percent(usage.connections, limit);
            let mut text = format!(
                "account {user} {} of {} {limit} ({p:.0}%)",
                usage.connections,
                source.name()
            );
            if status != CheckStatus::Ok {
                let over = if status == CheckStatus::Critical {
                    crit
                } else {
                    warn
                };
                text.push_str(&format!(
                    ", over {over}%: it is about to be refused with {}",
                    source.refusal_code()
                ));
            }
            let perf = PerfData::new(format!("account {user}"), usage.connections as f64)
                .thresholds(Some(w as f64), Some(c as f64))
                .max(limit as f64);
            accounts.push((status, p, text, perf));
        }
        accounts.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut shown = 0;
        for (status, _, text, perf) in accounts {
            if status != CheckStatus::Ok {
                result.problem(status, text);
            } else if shown < ACCOUNTS_SHOWN {
                shown += 1;
                result.detail(text);
            }
            result.perfdata.push(perf);
        }

        // Leaks.
        for usage in &usages {
            let user = &usage.user;
            let oldest = usage
                .oldest_idle()
                .map(|s| format_seconds(Duration::from_secs(s)))
                .unwrap_or_default();
            if let Some(n) = self.max_idle_count
                && usage.sleeping() > n as u64
            {
                result.problem(
                    CheckStatus::Warning,
                    format!(
                        "account {user} has {} sleeping connections (more than {n}), the oldest idle {oldest}: a leak? end those of {user} that sleep too long with kill_idle",
                        usage.sleeping()
                    ),
                );
            }
            let idle_too_long = self.max_idle.map_or(0, |m| {
                usage
                    .idle_seconds
                    .iter()
                    .filter(|s| Duration::from_secs(**s) > m)
                    .count()
            });
            if let Some(max_idle) = self.max_idle
                && idle_too_long > 0
            {
                result.problem(
                    CheckStatus::Warning,
                    format!(
                        "account {user} has {idle_too_long} connections idle longer than {} ({} sleeping), the oldest idle {oldest}: a leak? end those of {user} that sleep too long with kill_idle",
                        format_seconds(max_idle),
                        usage.sleeping()
                    ),
                );
            }
        }

        // The busiest account, and what the numbers rest on.
        if let Some(usage) = usages.iter().max_by_key(|u| u.connections) {
            let mut text = format!(
                "busiest account {} with {} connections, {} sleeping",
                usage.user,
                usage.connections,
                usage.sleeping()
            );
            if let Some(idle) = usage.oldest_idle() {
                text.push_str(&format!(
                    " (oldest idle {})",
                    format_seconds(Duration::from_secs(idle))
                ));
            }
            result.detail(text);
        }
        let visible: u64 = usages.iter().map(|u| u.connections).sum();
        let only_own = usages.iter().all(|u| u.user == own_user);
        if only_own && used > visible {
            result.detail(format!(
                "{own_user} sees only its own connections ({visible} of {used}): grant it PROCESS to check every account"
            ));
        }
        let sleeping: u64 = usages.iter().map(|u| u.sleeping()).sum();
        let oldest_idle = usages.iter().filter_map(|u| u.oldest_idle()).max();
        result.perfdata.push(
            PerfData::new("sleeping", sleeping as f64)
                .thresholds(self.max_idle_count.map(|n| n as f64), None),
        );
        result.perfdata.push(
            PerfData::new("oldest_idle", oldest_idle.unwrap_or(0) as f64)
                .unit("s")
                .thresholds(self.max_idle.map(|d| d.as_secs_f64()), None),
        );
        result
    }
}

/// The user name of an account `user@host` (`CURRENT_USER()`).
fn user_of(account: &str) -> &str {
    account.rsplit_once('@').map_or(account, |(u, _)| u)
}

/// The connection limit that applies to `user`, and its name: the
/// account's own `MAX_USER_CONNECTIONS` (the smallest, when the user name
/// has several host entries), else the global `max_user_connections`;
/// `None` for no limit.
fn account_limit(limits: &ServerLimits, user: &str, own_user: &str) -> Option<(u64, LimitSource)> {
    let own = limits
        .account_limits
        .iter()
        .filter(|a| a.user == user)
        .filter_map(|a| u64::try_from(a.max_user_connections).ok())
        .filter(|n| *n > 0)
        .min()
        .or_else(|| {
            // Without SELECT on mysql.user the monitor still knows its own.
            (user == own_user)
                .then_some(limits.account_max_user_connections)
                .flatten()
                .filter(|n| *n > 0)
        });
    match own {
        Some(n) => Some((n, LimitSource::Account)),
        None if limits.max_user_connections > 0 => {
            Some((limits.max_user_connections, LimitSource::Global))
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::AccountLimit;
    use crate::processlist::Process;

    fn limits(threads_connected: u64, global_user_limit: u64) -> ServerLimits {
        ServerLimits {
            version: "10.11.6-MariaDB".into(),
            account: "monitor@%".into(),
            connection_id: 1,
            max_connections: 20,
            max_user_connections: global_user_limit,
            session_max_user_connections: global_user_limit,
            account_max_user_connections: Some(0),
            extra_max_connections: Some(1),
            extra_port: Some(0),
            threads_connected,
            max_used_connections: threads_connected,
            connection_errors_max_connections: Some(0),
            account_limits: vec![AccountLimit {
                user: "lim10".into(),
                host: "%".into(),
                max_user_connections: 10,
            }],
        }
    }

    /// The monitor (id 1), a system thread, then `n` connections of each
    /// `(user, command, seconds)`.
    fn list(groups: &[(&str, usize, &str, u64)]) -> Processlist {
        let mut processes = vec![
            Process {
                id: 1,
                user: "monitor".into(),
                host: "localhost".into(),
                db: None,
                command: "Query".into(),
                seconds: 0,
                state: None,
            },
            Process {
                id: 2,
                user: "system user".into(),
                host: String::new(),
                db: None,
                command: "Daemon".into(),
                seconds: 999,
                state: None,
            },
        ];
        for (user, n, command, seconds) in groups {
            for _ in 0..*n {
                processes.push(Process {
                    id: processes.len() as u64 + 1,
                    user: (*user).into(),
                    host: "10.0.0.1:5000".into(),
                    db: None,
                    command: (*command).into(),
                    seconds: *seconds,
                    state: None,
                });
            }
        }
        Processlist {
            own_id: 1,
            processes,
        }
    }

    #[test]
    fn server_usage_over_60_and_85_percent_warns_and_is_critical() {
        let check = ServerCheck::default();
        let r = check.evaluate(&limits(13, 0), &list(&[("app", 12, "Sleep", 3)]));
        assert_eq!(r.status, CheckStatus::Ok, "{}", r.line());
        assert!(
            r.line()
                .starts_with("OK: server 12 of max_connections 20 (60%)"),
            "{}",
            r.line()
        );
        let r = check.evaluate(&limits(14, 0), &list(&[("app", 13, "Sleep", 3)]));
        assert_eq!(r.status, CheckStatus::Warning, "{}", r.line());
        assert!(r.line().contains("over 60%"), "{}", r.line());
        let r = check.evaluate(&limits(19, 0), &list(&[("app", 18, "Sleep", 3)]));
        assert_eq!(r.status, CheckStatus::Critical, "{}", r.line());
        assert!(
            r.line().contains("'connections'=18;12;17;0;20"),
            "{}",
            r.line()
        );
        assert!(
            r.line()
                .contains("busiest account app with 18 connections, 18 sleeping"),
            "{}",
            r.line()
        );
    }

    #[test]
    fn an_account_near_its_own_limit_is_critical_at_low_server_usage() {
        let r = ServerCheck::default().evaluate(&limits(10, 0), &list(&[("lim10", 9, "Sleep", 1)]));
        assert_eq!(r.status, CheckStatus::Critical, "{}", r.line());
        assert!(
            r.line().starts_with(
                "CRITICAL: account lim10 9 of its MAX_USER_CONNECTIONS 10 (90%), over 85%"
            ),
            "{}",
            r.line()
        );
        assert!(
            r.line().contains("'account lim10'=9;6;8;0;10"),
            "{}",
            r.line()
        );
    }

    #[test]
    fn the_global_user_limit_applies_to_accounts_without_their_own() {
        let r = ServerCheck::default().evaluate(
            &limits(8, 10),
            &list(&[("app", 7, "Query", 0), ("lim10", 1, "Sleep", 1)]),
        );
        assert_eq!(r.status, CheckStatus::Warning, "{}", r.line());
        assert!(
            r.line()
                .contains("account app 7 of max_user_connections 10 (70%), over 60%"),
            "{}",
            r.line()
        );
    }

    #[test]
    fn sleeping_connections_beyond_the_bounds_warn_naming_the_account() {
        let check = ServerCheck {
            max_idle_count: Some(5),
            ..ServerCheck::default()
        };
        let r = check.evaluate(
            &limits(8, 0),
            &list(&[("leaky", 6, "Sleep", 42), ("busy", 1, "Query", 0)]),
        );
        assert_eq!(r.status, CheckStatus::Warning, "{}", r.line());
        assert!(
            r.line().contains(
                "account leaky has 6 sleeping connections (more than 5), the oldest idle 42s"
            ),
            "{}",
            r.line()
        );
        let r = check.evaluate(&limits(6, 0), &list(&[("leaky", 5, "Sleep", 42)]));
        assert_eq!(r.status, CheckStatus::Ok, "{}", r.line());

        let check = ServerCheck {
            max_idle: Some(Duration::from_secs(180)),
            ..ServerCheck::default()
        };
        let r = check.evaluate(
            &limits(4, 0),
            &list(&[("old", 1, "Sleep", 240), ("old", 2, "Sleep", 10)]),
        );
        assert_eq!(r.status, CheckStatus::Warning, "{}", r.line());
        assert!(
            r.line().contains(
                "account old has 1 connections idle longer than 180s (3 sleeping), the oldest idle 240s"
            ),
            "{}",
            r.line()
        );
        assert!(
            r.line().contains("'oldest_idle'=240s;180;;0"),
            "{}",
            r.line()
        );
    }

    #[test]
    fn account_usage_counts_per_user_with_the_limit_that_applies() {
        let l = list(&[
            ("lim10", 3, "Sleep", 5),
            ("lim10", 1, "Query", 0),
            ("app", 2, "Sleep", 9),
        ]);
        let usages = AccountUsage::of(&limits(8, 0), &l, false);
        let users: Vec<&str> = usages.iter().map(|u| u.user.as_str()).collect();
        assert_eq!(users, ["app", "lim10"]);
        assert_eq!(usages[0].limit, None);
        assert_eq!(usages[1].connections, 4);
        assert_eq!(usages[1].sleeping(), 3);
        assert_eq!(usages[1].oldest_idle(), Some(5));
        assert_eq!(usages[1].limit, Some((10, LimitSource::Account)));
        // A kept-open monitor counts its own connection.
        let usages = AccountUsage::of(&limits(8, 4), &l, true);
        assert_eq!(usages[2].user, "monitor");
        assert_eq!(usages[2].connections, 1);
        assert_eq!(usages[2].limit, Some((4, LimitSource::Global)));
    }

    #[test]
    fn bad_thresholds_are_refused_with_what_to_change() {
        let check = ServerCheck {
            warn_percent: 90.0,
            ..ServerCheck::default()
        };
        assert!(
            check
                .validate()
                .unwrap_err()
                .contains("above crit_percent 85")
        );
        let check = ServerCheck {
            crit_percent: 150.0,
            ..ServerCheck::default()
        };
        assert!(check.validate().unwrap_err().contains("0 to 100"));
    }
}
