//! `dbslots connections`: a server's connection limits, usage and
//! processlist, pt-kill style cleanup of idle connections, and `--check`
//! for cron and monitoring systems.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Args};
use dbslots_mysql::mysql_async::Conn;
use dbslots_mysql::{
    CapacitySuggestion, Fleet, IdleRule, IdleVictim, KillOutcome, Processlist, ServerCheck,
    ServerLimits,
};

use crate::common;
use crate::exec::parse_seconds;

/// Shows a MySQL server's connection limits, usage and connections grouped
/// by user and command, with a pool capacity that leaves headroom; or, with
/// --kill-idle, kills connections idle longer than --max-idle.
///
/// The monitor takes no slot and makes one attempt. When the server refuses
/// it for lack of connections, it says how to get in anyway. An account
/// without the PROCESS privilege sees (and may kill) only its own
/// connections.
///
/// With --check it prints one line in the convention of monitoring plugins
/// (OK, WARNING, CRITICAL or UNKNOWN, what was measured, performance data
/// after a |) and exits 0, 1, 2 or 3.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("idle_mode").args(["kill_idle", "check"]).multiple(false)))]
pub struct ConnectionsArgs {
    /// The server, as mysql://USER:PASSWORD@HOST:PORT/[DATABASE]
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    url: String,

    /// Print JSON instead of text
    #[arg(long)]
    json: bool,

    /// Kill connections that sleep (COMMAND 'Sleep') longer than --max-idle,
    /// never this one nor the server's own threads; needs --user NAME or
    /// --all-users. Exits 1 when it stopped early (what was killed until
    /// then is printed first)
    #[arg(long, requires = "max_idle", requires = "whose_idle")]
    kill_idle: bool,

    /// With --kill-idle: idle seconds beyond which a connection is killed;
    /// with --check: beyond which a connection warns (a leak)
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, requires = "idle_mode")]
    max_idle: Option<Duration>,

    /// With --kill-idle: only this user's connections
    #[arg(
        long,
        value_name = "NAME",
        requires = "kill_idle",
        group = "whose_idle"
    )]
    user: Option<String>,

    /// With --kill-idle: every user's idle connections (say so explicitly;
    /// there is no default)
    #[arg(long, requires = "kill_idle", group = "whose_idle")]
    all_users: bool,

    /// The account the workers (the pool) use: the suggested capacity
    /// subtracts what every other account holds and applies this account's
    /// connection limit [default: the URL's user]
    #[arg(long, value_name = "NAME", conflicts_with = "idle_mode")]
    for_user: Option<String>,

    /// How many hosts (pools) share the server: the suggested capacity is
    /// per host
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "idle_mode")]
    hosts: u32,

    /// With --kill-idle: print what would be killed, kill nothing
    #[arg(long, requires = "kill_idle")]
    dry_run: bool,

    /// Check mode for cron and monitoring systems (Nagios, Icinga, Sensu):
    /// one line, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. Every limit
    /// counts: max_connections, and each account's MAX_USER_CONNECTIONS or
    /// the global max_user_connections
    #[arg(long, conflicts_with = "json")]
    check: bool,

    /// With --check: WARNING when usage is over this percentage of a limit
    /// [default: 60]
    #[arg(long, value_name = "PERCENT", requires = "check")]
    warn: Option<f64>,

    /// With --check: CRITICAL when usage is over this percentage of a limit
    /// [default: 85]
    #[arg(long, value_name = "PERCENT", requires = "check")]
    crit: Option<f64>,

    /// With --check: WARNING when an account has more than N sleeping
    /// connections (a leak)
    #[arg(long, value_name = "N", requires = "check")]
    max_idle_count: Option<usize>,

    /// How long connecting and reading may take: with --check UNKNOWN
    /// beyond it [default: 10], without it an error [default: 30]; with
    /// --kill-idle, each statement (it stops early, saying what it did)
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    timeout: Option<Duration>,
}

/// Runs `dbslots connections`.
pub fn run(args: ConnectionsArgs) -> anyhow::Result<ExitCode> {
    if args.check {
        return Ok(check(&args));
    }
    if args.kill_idle
        && let Some(max_idle) = args.max_idle
        && max_idle < dbslots_mysql::MIN_MAX_IDLE
    {
        anyhow::bail!(
            "--max-idle {max_idle:?} is under 1 second: a busy worker's connection sleeps 0 s between two statements, so it would be killed; give at least 1"
        );
    }
    common::runtime()?.block_on(async {
        if args.kill_idle {
            let mut conn = dbslots_mysql::connect_monitor(&args.url).await?;
            let result = kill(&mut conn, &args).await;
            // Leave politely; a failure to say QUIT changes nothing for the
            // user, nor does a frozen server that never answers it.
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.disconnect()).await;
            return result;
        }
        // A server (or network) that freezes after the connect would
        // otherwise keep the report waiting for ever.
        let timeout = args.timeout.unwrap_or(REPORT_TIMEOUT);
        let measure = async {
            let mut conn = dbslots_mysql::connect_monitor(&args.url).await?;
            let result = report(&mut conn, &args).await;
            let _ = conn.disconnect().await;
            result
        };
        match tokio::time::timeout(timeout, measure).await {
            Ok(result) => result,
            Err(_) => anyhow::bail!(
                "{} did not answer within {}; check that the server runs and is not stopped or overloaded, and that nothing on the way drops packets (--timeout SECONDS waits longer)",
                dbslots_core::redact(&args.url),
                dbslots_core::format_seconds(timeout)
            ),
        }
    })
}

/// How long `dbslots connections` waits for its report without --timeout.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

async fn report(conn: &mut Conn, args: &ConnectionsArgs) -> anyhow::Result<ExitCode> {
    let limits = ServerLimits::read(conn).await?;
    let list = Processlist::read(conn).await?;
    let fleet = Fleet {
        user: match &args.for_user {
            Some(user) => user.clone(),
            None => dbslots_mysql::ServerUrl::parse(&args.url)?
                .opts()
                .user()
                .unwrap_or_default()
                .to_string(),
        },
        hosts: args.hosts,
    };
    let suggestion = limits.suggest_capacity_for(&list, &fleet);
    let url = dbslots_core::redact(&args.url);
    if args.json {
        let doc = serde_json::json!({
            "url": url,
            "limits": limits,
            "suggested_capacity": suggestion,
            "groups": list.groups(),
            "connections": list.processes,
        });
        crate::output::stdout(format!("{}\n", serde_json::to_string_pretty(&doc)?))?;
    } else {
        crate::output::stdout(render_report(&url, &limits, &list, &suggestion))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--check`: prints the line and returns its exit status; every failure
/// is an UNKNOWN line, never another status.
fn check(args: &ConnectionsArgs) -> ExitCode {
    let defaults = ServerCheck::default();
    let check = ServerCheck {
        warn_percent: args.warn.unwrap_or(defaults.warn_percent),
        crit_percent: args.crit.unwrap_or(defaults.crit_percent),
        max_idle_count: args.max_idle_count,
        max_idle: args.max_idle,
        timeout: args.timeout.unwrap_or(defaults.timeout),
    };
    let result = match common::runtime() {
        Ok(rt) => rt.block_on(check.run(&args.url)),
        Err(e) => dbslots_core::CheckResult::unknown(crate::advice::error_line(&e)),
    };
    let _ = crate::output::stdout(format!("{}\n", crate::advice::in_cli_terms(&result.line())));
    ExitCode::from(result.exit_code())
}

fn render_report(
    url: &str,
    limits: &ServerLimits,
    list: &Processlist,
    s: &CapacitySuggestion,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "server       {} at {url}, as {}",
        limits.version, limits.account
    );
    let mut extra = String::from(" (+1 for CONNECTION_ADMIN/SUPER)");
    if let (Some(n), Some(port)) = (limits.extra_max_connections, limits.extra_port) {
        let port = if port == 0 {
            "extra_port off".to_string()
        } else {
            format!("on extra_port {port}")
        };
        let _ = write!(extra, ", extra_max_connections {n} ({port})");
    }
    let _ = writeln!(
        out,
        "limits       max_connections {}{extra}",
        limits.max_connections
    );
    let own = match limits.account_max_user_connections {
        Some(0) => "none of its own".to_string(),
        Some(n) => n.to_string(),
        None => "not visible".to_string(),
    };
    let _ = writeln!(
        out,
        "             max_user_connections {}, this account's own limit: {own}",
        unlimited(limits.max_user_connections)
    );
    let percent = limits
        .threads_connected
        .saturating_mul(100)
        .checked_div(limits.max_connections)
        .unwrap_or(0);
    let _ = write!(
        out,
        "usage        Threads_connected {} of {} ({percent}%), Max_used_connections {}",
        limits.threads_connected, limits.max_connections, limits.max_used_connections
    );
    if let Some(n) = limits.connection_errors_max_connections {
        let _ = write!(out, ", Connection_errors_max_connections {n}");
    }
    out.push('\n');
    if percent >= 80 {
        let _ = writeln!(
            out,
            "WARNING      {percent}% of max_connections in use: new clients are about to be refused"
        );
    }
    let per_host = if s.hosts > 1 { " per host" } else { "" };
    let _ = writeln!(
        out,
        "suggested    pool capacity {}{per_host}: {}",
        s.capacity, s.reason
    );
    if !limits.account_limits.is_empty() {
        let accounts: Vec<String> = limits
            .account_limits
            .iter()
            .map(|a| format!("{}@{} {}", a.user, a.host, a.max_user_connections))
            .collect();
        let _ = writeln!(out, "own limits   {}", accounts.join(", "));
    }
    let groups = list.groups();
    let _ = writeln!(
        out,
        "\nconnections  {} visible (an account without PROCESS sees only its own)",
        list.processes.len()
    );
    let width = groups
        .iter()
        .map(|g| g.user.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "{:<width$}  {:<16}  {:>5}  {:>8}",
        "USER", "COMMAND", "COUNT", "LONGEST"
    );
    for g in groups {
        let _ = writeln!(
            out,
            "{:<width$}  {:<16}  {:>5}  {:>7}s",
            g.user, g.command, g.count, g.max_seconds
        );
    }
    out
}

fn unlimited(n: u64) -> String {
    if n == 0 {
        "0 (no limit)".to_string()
    } else {
        n.to_string()
    }
}

async fn kill(conn: &mut Conn, args: &ConnectionsArgs) -> anyhow::Result<ExitCode> {
    let max_idle = args
        .max_idle
        .context("--kill-idle needs --max-idle SECONDS")?;
    let rule = match (&args.user, args.all_users) {
        (Some(user), false) => IdleRule::for_user(max_idle, user),
        (None, true) => IdleRule::all_users(max_idle),
        _ => anyhow::bail!("--kill-idle needs --user NAME or --all-users"),
    };
    let per_call = args.timeout.unwrap_or(REPORT_TIMEOUT);
    let kills = dbslots_mysql::kill_idle_within(conn, &rule, args.dry_run, per_call).await?;
    let stopped = kills.stopped.as_ref().map(|e| {
        format!(
            "stopped early after {} of {} connection(s): {e}",
            kills.victims.len(),
            kills.matched
        )
    });
    if args.json {
        let doc = serde_json::json!({
            "dry_run": args.dry_run,
            "max_idle_seconds": max_idle.as_secs_f64(),
            "user": rule.user(),
            "all_users": rule.user().is_none(),
            "matched": kills.matched,
            "victims": kills.victims,
            "stopped_early": stopped,
        });
        crate::output::stdout(format!("{}\n", serde_json::to_string_pretty(&doc)?))?;
    } else {
        crate::output::stdout(render_victims(&kills.victims, &rule, args.dry_run))?;
    }
    match stopped {
        Some(why) => {
            crate::output::stderr_line(format_args!("dbslots connections: {why}"));
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

fn render_victims(victims: &[IdleVictim], rule: &IdleRule, dry_run: bool) -> String {
    let mut out = String::new();
    let whose = rule
        .user()
        .map(|u| format!(" of user {u}"))
        .unwrap_or_default();
    if victims.is_empty() {
        let _ = writeln!(
            out,
            "no connection{whose} idle longer than {:?}",
            rule.max_idle
        );
        return out;
    }
    for v in victims {
        let p = &v.process;
        let what = match &v.outcome {
            KillOutcome::Killed => "killed".to_string(),
            KillOutcome::WouldKill => "would kill".to_string(),
            KillOutcome::Gone => "already gone".to_string(),
            KillOutcome::Busy => "left alone (busy again)".to_string(),
            KillOutcome::Refused(why) => format!("not killed ({why})"),
        };
        let _ = writeln!(
            out,
            "{what}: id {} user {} host {} idle {}s",
            p.id, p.user, p.host, p.seconds
        );
    }
    let count = |o: &KillOutcome| victims.iter().filter(|v| &v.outcome == o).count();
    if dry_run {
        let _ = writeln!(
            out,
            "dry run: {} connection(s){whose} would be killed; nothing was killed",
            count(&KillOutcome::WouldKill)
        );
    } else {
        let _ = writeln!(
            out,
            "{} connection(s){whose} killed",
            count(&KillOutcome::Killed)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readings::idle_victim as victim;

    #[test]
    fn each_victim_gets_a_line_with_id_user_host_and_idle_time() {
        let rule = IdleRule::for_user(Duration::from_secs(180), "app");
        let text = render_victims(
            &[
                victim(12, KillOutcome::WouldKill),
                victim(13, KillOutcome::WouldKill),
            ],
            &rule,
            true,
        );
        assert!(
            text.contains("would kill: id 12 user app host 10.1.2.3:4567 idle 240s"),
            "{text}"
        );
        assert!(text.contains("id 13"), "{text}");
        assert!(
            text.contains("2 connection(s) of user app would be killed; nothing was killed"),
            "{text}"
        );
        let text = render_victims(&[victim(12, KillOutcome::Killed)], &rule, false);
        assert!(text.contains("killed: id 12"), "{text}");
        assert!(
            text.contains("1 connection(s) of user app killed"),
            "{text}"
        );
        let text = render_victims(&[], &rule, false);
        assert!(
            text.contains("no connection of user app idle longer than 180s"),
            "{text}"
        );
    }
}
