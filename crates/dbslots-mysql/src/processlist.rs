//! The server's connections: a snapshot of the processlist, and killing
//! idle connections the way pt-kill does.

use std::collections::BTreeMap;
use std::time::Duration;

use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, codes};

/// Users the server shows for its own threads; never killed.
const SYSTEM_USERS: [&str; 4] = ["system user", "event_scheduler", "unauthenticated user", ""];

/// A row of `information_schema.PROCESSLIST`: ID, USER, HOST, DB, COMMAND,
/// TIME, STATE.
type ProcesslistRow = (
    u64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

/// One connection (thread) of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Process {
    /// The connection id, as `KILL` takes it.
    pub id: u64,
    /// The user name.
    pub user: String,
    /// The client's host and port.
    pub host: String,
    /// The default database.
    pub db: Option<String>,
    /// What it does: `Sleep` when idle, `Query`, `Daemon`, `Binlog Dump`...
    pub command: String,
    /// Seconds in the current command: for `Sleep`, how long it has been
    /// idle.
    pub seconds: u64,
    /// The state of a running statement.
    pub state: Option<String>,
}

impl Process {
    /// Seconds idle, for a connection that sleeps between statements.
    pub fn idle_seconds(&self) -> Option<u64> {
        self.command
            .eq_ignore_ascii_case("Sleep")
            .then_some(self.seconds)
    }

    /// Whether this is one of the server's own threads.
    pub fn is_system(&self) -> bool {
        SYSTEM_USERS
            .iter()
            .any(|u| self.user.eq_ignore_ascii_case(u))
            || self.command.eq_ignore_ascii_case("Daemon")
    }
}

/// Connections of one user in one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ProcessGroup {
    /// The user name.
    pub user: String,
    /// The command.
    pub command: String,
    /// How many connections.
    pub count: usize,
    /// The longest time in the command among them, in seconds.
    pub max_seconds: u64,
}

/// The server's connections at one moment, as one account sees them
/// (without the PROCESS privilege, only its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Processlist {
    /// `CONNECTION_ID()` of the connection that read it.
    pub own_id: u64,
    /// Every connection, by id.
    pub processes: Vec<Process>,
}

impl Processlist {
    /// Reads `information_schema.PROCESSLIST` over `conn`.
    pub async fn read(conn: &mut Conn) -> Result<Processlist> {
        let own_id: u64 = conn
            .query_first("SELECT CONNECTION_ID()")
            .await
            .map_err(|e| Error::query("reading the connection id", e))?
            .unwrap_or(0);
        let processes = conn
            .query_map(
                "SELECT ID, USER, HOST, DB, COMMAND, TIME, STATE \
                 FROM information_schema.PROCESSLIST ORDER BY ID",
                |(id, user, host, db, command, seconds, state): ProcesslistRow| Process {
                    id,
                    user: user.unwrap_or_default(),
                    host: host.unwrap_or_default(),
                    db,
                    command: command.unwrap_or_default(),
                    seconds: seconds.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    state: state.filter(|s| !s.is_empty()),
                },
            )
            .await
            .map_err(|e| Error::query("reading information_schema.PROCESSLIST", e))?;
        Ok(Processlist { own_id, processes })
    }

    /// The connections grouped by user and command, sorted by user, then
    /// command.
    pub fn groups(&self) -> Vec<ProcessGroup> {
        let mut groups: BTreeMap<(&str, &str), ProcessGroup> = BTreeMap::new();
        for p in &self.processes {
            let g = groups
                .entry((&p.user, &p.command))
                .or_insert_with(|| ProcessGroup {
                    user: p.user.clone(),
                    command: p.command.clone(),
                    count: 0,
                    max_seconds: 0,
                });
            g.count += 1;
            g.max_seconds = g.max_seconds.max(p.seconds);
        }
        groups.into_values().collect()
    }

    /// The connections [`kill_idle`] with `rule` would pick, in id order.
    pub fn idle_victims(&self, rule: &IdleRule) -> Vec<&Process> {
        self.processes
            .iter()
            .filter(|p| rule.matches(p, self.own_id))
            .collect()
    }
}

/// Whose connections an [`IdleRule`] may pick. There is no default: a
/// rule names one user, or says "every user" in so many words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleAccounts {
    /// Only this user's connections.
    User(String),
    /// Every user's connections (but never the caller's own connection nor
    /// the server's threads).
    All,
}

/// Which connections count as idle victims, the way pt-kill's
/// `--match-command Sleep --idle-time N [--match-user U]` picks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleRule {
    /// Only connections idle longer than this, at least 1 s (the server
    /// counts whole seconds; [`kill_idle`] refuses less).
    pub max_idle: Duration,
    /// Whose connections.
    pub accounts: IdleAccounts,
}

/// The shortest `max_idle` [`kill_idle`] accepts: a connection between two
/// statements of a busy worker sleeps for 0 s.
pub const MIN_MAX_IDLE: Duration = Duration::from_secs(1);

impl IdleRule {
    /// `user`'s connections idle longer than `max_idle`.
    pub fn for_user(max_idle: Duration, user: impl Into<String>) -> Self {
        IdleRule {
            max_idle,
            accounts: IdleAccounts::User(user.into()),
        }
    }

    /// Every user's connections idle longer than `max_idle`.
    pub fn all_users(max_idle: Duration) -> Self {
        IdleRule {
            max_idle,
            accounts: IdleAccounts::All,
        }
    }

    /// The user the rule is limited to; `None` for every user.
    pub fn user(&self) -> Option<&str> {
        match &self.accounts {
            IdleAccounts::User(u) => Some(u),
            IdleAccounts::All => None,
        }
    }

    /// Whether `p` is a victim, seen from the connection `own_id`: it
    /// sleeps (`COMMAND = 'Sleep'`) longer than `max_idle`, belongs to the
    /// user asked for, is not `own_id` and not a system thread.
    pub fn matches(&self, p: &Process, own_id: u64) -> bool {
        p.id != own_id
            && !p.is_system()
            && self.user().is_none_or(|u| p.user == u)
            && p.idle_seconds()
                .is_some_and(|idle| Duration::from_secs(idle) > self.max_idle)
    }
}

/// What [`kill_idle`] did: every victim handled so far, and the error that
/// stopped it early, if one did.
#[derive(Debug)]
#[non_exhaustive]
pub struct IdleKills {
    /// The victims handled, in id order, with what became of each.
    pub victims: Vec<IdleVictim>,
    /// How many connections matched the rule in the snapshot.
    pub matched: usize,
    /// The error that stopped the run before every victim was handled; the
    /// victims above were handled all the same.
    pub stopped: Option<Error>,
}

/// What [`kill_idle`] did with one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KillOutcome {
    /// `KILL CONNECTION` succeeded.
    Killed,
    /// Dry run: it would have been killed.
    WouldKill,
    /// It had ended before the `KILL`.
    Gone,
    /// It ran a statement again when checked right before the `KILL`.
    Busy,
    /// The server refused the `KILL`, with its message (another account's
    /// connection needs CONNECTION_ADMIN or SUPER).
    Refused(String),
}

/// A connection [`kill_idle`] picked, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct IdleVictim {
    /// The connection as the snapshot showed it.
    pub process: Process,
    /// What was done.
    pub outcome: KillOutcome,
}

/// Kills the connections that sleep longer than `rule.max_idle`, the way
/// pt-kill does: only `COMMAND = 'Sleep'`, of the user the rule names (or
/// every user, when it says so), never the connection `conn` itself nor the
/// server's own threads. With `dry_run` it only reports what it would kill.
///
/// Each victim is checked again right before its `KILL`; one that runs a
/// statement by then is left alone ([`KillOutcome::Busy`]). A connection
/// that wakes up between that check and the `KILL` can still be hit, as
/// with pt-kill. Without PROCESS, an account sees and may kill only its
/// own connections: enough to reap its own leaks.
///
/// Each statement may take [`KILL_IDLE_CALL_TIMEOUT`]; see
/// [`kill_idle_within`] to choose.
///
/// # Errors
///
/// [`Error::InvalidRule`] for a `max_idle` under [`MIN_MAX_IDLE`];
/// [`Error::Query`] when the processlist cannot be read at the start, and
/// [`Error::Timeout`] when it is not read in time. An error after that
/// does not lose what was done: it comes back in [`IdleKills::stopped`],
/// next to the victims handled before it.
pub async fn kill_idle(conn: &mut Conn, rule: &IdleRule, dry_run: bool) -> Result<IdleKills> {
    kill_idle_within(conn, rule, dry_run, KILL_IDLE_CALL_TIMEOUT).await
}

/// How long each statement of [`kill_idle`] may take.
pub const KILL_IDLE_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// [`kill_idle`], giving each statement (the processlist read, each
/// victim's check and `KILL`) at most `per_call`: a cleanup run from cron
/// on a frozen server or network ends with [`Error::Timeout`] (at the
/// start) or with it in [`IdleKills::stopped`], instead of waiting until
/// TCP gives up.
///
/// # Errors
///
/// As [`kill_idle`].
pub async fn kill_idle_within(
    conn: &mut Conn,
    rule: &IdleRule,
    dry_run: bool,
    per_call: std::time::Duration,
) -> Result<IdleKills> {
    if rule.max_idle < MIN_MAX_IDLE {
        return Err(Error::InvalidRule {
            reason: format!(
                "max_idle {:?} is under 1 s: a busy worker's connection sleeps 0 s between two statements; give at least 1 second",
                rule.max_idle
            ),
        });
    }
    let list = tokio::time::timeout(per_call, Processlist::read(conn))
        .await
        .map_err(|_| Error::Timeout {
            what: "reading the processlist".into(),
            after: per_call,
        })??;
    let victims: Vec<Process> = list.idle_victims(rule).into_iter().cloned().collect();
    let mut killer = ServerKiller {
        conn,
        rule,
        own_id: list.own_id,
        dry_run,
        per_call,
    };
    Ok(handle_each(victims, &mut killer).await)
}

/// What is done to one victim; a trait so that the loop around it can be
/// tested without a server.
trait Kill {
    async fn kill(&mut self, p: &Process) -> Result<KillOutcome>;
}

struct ServerKiller<'a> {
    conn: &'a mut Conn,
    rule: &'a IdleRule,
    own_id: u64,
    dry_run: bool,
    per_call: std::time::Duration,
}

impl Kill for ServerKiller<'_> {
    async fn kill(&mut self, p: &Process) -> Result<KillOutcome> {
        if self.dry_run {
            return Ok(KillOutcome::WouldKill);
        }
        // The check and the KILL are two statements: each gets `per_call`.
        let twice = self.per_call.saturating_mul(2);
        tokio::time::timeout(
            twice,
            kill_if_still_idle(self.conn, p, self.rule, self.own_id),
        )
        .await
        .map_err(|_| Error::Timeout {
            what: format!("checking and killing connection {}", p.id),
            after: twice,
        })?
    }
}

/// Runs `kill` on each victim in turn, stopping at the first error and
/// keeping what was done before it.
async fn handle_each(victims: Vec<Process>, killer: &mut impl Kill) -> IdleKills {
    let matched = victims.len();
    let mut done = Vec::with_capacity(matched);
    for p in victims {
        let outcome = match killer.kill(&p).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(id = p.id, handled = done.len(), matched, error = %e, "stopped killing idle connections early");
                return IdleKills {
                    victims: done,
                    matched,
                    stopped: Some(e),
                };
            }
        };
        tracing::info!(
            id = p.id,
            user = %p.user,
            host = %p.host,
            idle_seconds = p.seconds,
            outcome = ?outcome,
            "idle connection"
        );
        done.push(IdleVictim {
            process: p,
            outcome,
        });
    }
    IdleKills {
        victims: done,
        matched,
        stopped: None,
    }
}

async fn kill_if_still_idle(
    conn: &mut Conn,
    p: &Process,
    rule: &IdleRule,
    own_id: u64,
) -> Result<KillOutcome> {
    let now: Option<(Option<String>, Option<i64>)> = conn
        .exec_first(
            "SELECT COMMAND, TIME FROM information_schema.PROCESSLIST WHERE ID = ?",
            (p.id,),
        )
        .await
        .map_err(|e| Error::query(format!("checking connection {} before killing it", p.id), e))?;
    let Some((command, seconds)) = now else {
        return Ok(KillOutcome::Gone);
    };
    let current = Process {
        command: command.unwrap_or_default(),
        seconds: seconds.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
        ..p.clone()
    };
    if !rule.matches(&current, own_id) {
        return Ok(KillOutcome::Busy);
    }
    // The id is a number from the server, not user input.
    match conn.query_drop(format!("KILL CONNECTION {}", p.id)).await {
        Ok(()) => Ok(KillOutcome::Killed),
        Err(mysql_async::Error::Server(e)) if e.code == codes::NO_SUCH_THREAD => {
            Ok(KillOutcome::Gone)
        }
        Err(mysql_async::Error::Server(e)) => Ok(KillOutcome::Refused(format!(
            "error {}: {}",
            e.code, e.message
        ))),
        Err(e) => Err(Error::query(format!("killing connection {}", p.id), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(id: u64, user: &str, command: &str, seconds: u64) -> Process {
        Process {
            id,
            user: user.into(),
            host: "10.0.0.1:5000".into(),
            db: None,
            command: command.into(),
            seconds,
            state: None,
        }
    }

    fn list() -> Processlist {
        Processlist {
            own_id: 7,
            processes: vec![
                process(1, "system user", "Daemon", 900),
                process(2, "event_scheduler", "Daemon", 900),
                process(3, "app", "Sleep", 200),
                process(4, "app", "Sleep", 100),
                process(5, "app", "Query", 500),
                process(6, "other", "Sleep", 400),
                process(7, "app", "Sleep", 999),
            ],
        }
    }

    #[test]
    fn picks_only_sleepers_past_the_threshold() {
        let l = list();
        let ids = |rule: &IdleRule| {
            l.idle_victims(rule)
                .iter()
                .map(|p| p.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&IdleRule::all_users(Duration::from_secs(180))), [3, 6]);
        assert_eq!(
            ids(&IdleRule::for_user(Duration::from_secs(180), "app")),
            [3]
        );
        assert_eq!(ids(&IdleRule::all_users(Duration::from_secs(200))), [6]);
        assert_eq!(
            ids(&IdleRule::all_users(Duration::from_secs(50))),
            [3, 4, 6]
        );
    }

    #[test]
    fn groups_by_user_and_command() {
        let groups = list().groups();
        let app_sleep = groups
            .iter()
            .find(|g| g.user == "app" && g.command == "Sleep")
            .unwrap();
        assert_eq!((app_sleep.count, app_sleep.max_seconds), (3, 999));
        assert_eq!(groups.len(), 5);
        assert_eq!(groups.iter().map(|g| g.count).sum::<usize>(), 7);
    }

    #[tokio::test]
    async fn an_error_part_way_keeps_what_was_killed_before_it() {
        let victims: Vec<Process> = list().processes.into_iter().skip(2).take(4).collect();
        struct FailsThird(u32);
        impl Kill for FailsThird {
            async fn kill(&mut self, p: &Process) -> Result<KillOutcome> {
                self.0 += 1;
                if self.0 == 3 {
                    return Err(Error::query(
                        format!("killing connection {}", p.id),
                        mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed),
                    ));
                }
                Ok(KillOutcome::Killed)
            }
        }
        let kills = handle_each(victims, &mut FailsThird(0)).await;
        assert_eq!(kills.matched, 4);
        let done: Vec<u64> = kills.victims.iter().map(|v| v.process.id).collect();
        assert_eq!(done, [3, 4]);
        let err = kills.stopped.expect("stopped early").to_string();
        assert!(err.contains("killing connection 5"), "{err}");
    }
}
