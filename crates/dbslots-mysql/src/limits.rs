//! The server's connection limits and usage, and a pool capacity that fits
//! them.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::processlist::Processlist;

/// The reserve kept free by [`ServerLimits::suggest_capacity`] is at least
/// this many connections.
///
/// Besides administrators and monitoring, the reserve absorbs connections a
/// holder has closed but the server has not yet counted out: `COM_QUIT` is
/// sent and the socket closed without waiting for the server's thread, so
/// under load a few closed connections can still be counted when their
/// slots are already taken again. Three proved too few on a small server
/// (2 refusals in 200 connects at `max_connections` 20 on a busy 2-core
/// machine).
pub const MIN_RESERVE: u64 = 5;

/// The connection limits and usage of a server, as one account sees them.
///
/// Read with [`ServerLimits::read`]; every account may read these, except
/// [`ServerLimits::account_limits`], which needs SELECT on `mysql.user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServerLimits {
    /// `VERSION()`.
    pub version: String,
    /// `CURRENT_USER()`: the account the server matched, `user@host`.
    pub account: String,
    /// `CONNECTION_ID()` of the connection that read this.
    pub connection_id: u64,
    /// `max_connections`: connections the server admits in all (plus one
    /// for an account with CONNECTION_ADMIN or SUPER).
    pub max_connections: u64,
    /// The global `max_user_connections`: connections per account; 0 for
    /// no limit.
    pub max_user_connections: u64,
    /// The session's `max_user_connections`: the account's own limit when
    /// it has one, else the global one.
    pub session_max_user_connections: u64,
    /// The account's own `MAX_USER_CONNECTIONS` from `SHOW CREATE USER` or
    /// `SHOW GRANTS`; `Some(0)` when it has none, `None` when not visible.
    pub account_max_user_connections: Option<u64>,
    /// MariaDB's `extra_max_connections` (connections on `extra_port` for
    /// administrators); `None` on MySQL.
    pub extra_max_connections: Option<u64>,
    /// MariaDB's `extra_port`; 0 when disabled, `None` on MySQL.
    pub extra_port: Option<u64>,
    /// `Threads_connected`: connections open now.
    pub threads_connected: u64,
    /// `Max_used_connections`: the most connections open at once since the
    /// server started (or `FLUSH STATUS`).
    pub max_used_connections: u64,
    /// `Connection_errors_max_connections`: connects refused for lack of
    /// connections since the start; `None` where the server lacks it.
    /// MariaDB counts only refusals at accept time (once even the extra
    /// administrator connection is taken), not the 1040 an ordinary account
    /// gets after logging in: a 0 there does not prove nobody was refused.
    pub connection_errors_max_connections: Option<u64>,
    /// Accounts with their own `MAX_USER_CONNECTIONS`, where `mysql.user` is
    /// readable; empty otherwise.
    pub account_limits: Vec<AccountLimit>,
}

/// An account with its own connection limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AccountLimit {
    /// The account's user name.
    pub user: String,
    /// The account's host pattern.
    pub host: String,
    /// Its `MAX_USER_CONNECTIONS`.
    pub max_user_connections: i64,
}

/// A pool capacity for a server, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CapacitySuggestion {
    /// The suggested capacity (per host when several share the server), at
    /// least 1.
    pub capacity: u32,
    /// Connections kept free of `max_connections` for others.
    pub reserve: u64,
    /// Connections held by accounts other than the workers' when the
    /// processlist was read (0 when it was not looked at).
    pub others: u64,
    /// The number of hosts (pools) the room is divided among.
    pub hosts: u32,
    /// Which rule bound the number.
    pub bound_by: CapacityBound,
    /// The rule that decided, in words.
    pub reason: String,
}

/// The rule that bound a [`CapacitySuggestion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CapacityBound {
    /// `max_connections`, minus the reserve and the other accounts'
    /// connections.
    MaxConnections,
    /// The workers' account limit (its own `MAX_USER_CONNECTIONS`, error
    /// 1226, or the global `max_user_connections`, error 1203), minus one.
    AccountLimit,
    /// Nothing is left: the suggestion is the minimum of 1, and workers
    /// will be refused.
    NoRoom,
}

/// The workers a capacity is suggested for: whose account they use, and
/// how many hosts (pools) share the server's room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// The workers' user name (their connections are the pool's, not
    /// "others").
    pub user: String,
    /// How many pools on different hosts share the server; at least 1.
    pub hosts: u32,
}

impl ServerLimits {
    /// Reads the limits over `conn` (any connection: a
    /// [`Connection`](crate::Connection) derefs to one).
    pub async fn read(conn: &mut Conn) -> Result<ServerLimits> {
        let (version, account, connection_id, session_muc): (String, String, u64, i64) = conn
            .query_first(
                "SELECT VERSION(), CURRENT_USER(), CONNECTION_ID(), @@SESSION.max_user_connections",
            )
            .await
            .map_err(|e| Error::query("reading the server version and account", e))?
            .ok_or_else(|| Error::Query {
                what: "reading the server version and account".into(),
                source: mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed),
            })?;
        let vars: Vec<(String, String)> = conn
            .query(
                "SHOW GLOBAL VARIABLES WHERE Variable_name IN \
                 ('max_connections', 'max_user_connections', 'extra_max_connections', 'extra_port')",
            )
            .await
            .map_err(|e| Error::query("reading the connection limits (SHOW GLOBAL VARIABLES)", e))?;
        let status: Vec<(String, String)> = conn
            .query(
                "SHOW GLOBAL STATUS WHERE Variable_name IN \
                 ('Threads_connected', 'Max_used_connections', 'Connection_errors_max_connections')",
            )
            .await
            .map_err(|e| Error::query("reading the connection counters (SHOW GLOBAL STATUS)", e))?;
        let var = |name: &str| lookup(&vars, name);
        let stat = |name: &str| lookup(&status, name);
        Ok(ServerLimits {
            version,
            account,
            connection_id,
            max_connections: var("max_connections").unwrap_or(0),
            max_user_connections: var("max_user_connections").unwrap_or(0),
            session_max_user_connections: u64::try_from(session_muc).unwrap_or(0),
            account_max_user_connections: own_limit(conn).await,
            extra_max_connections: var("extra_max_connections"),
            extra_port: var("extra_port"),
            threads_connected: stat("Threads_connected").unwrap_or(0),
            max_used_connections: stat("Max_used_connections").unwrap_or(0),
            connection_errors_max_connections: stat("Connection_errors_max_connections"),
            account_limits: account_limits(conn).await,
        })
    }

    /// The most connections this account may have: its own limit when it
    /// has one, else the global `max_user_connections`; `None` for no limit.
    pub fn user_limit(&self) -> Option<u64> {
        [
            self.account_max_user_connections.unwrap_or(0),
            self.session_max_user_connections,
            self.max_user_connections,
        ]
        .into_iter()
        .find(|&n| n > 0)
    }

    /// A pool capacity that leaves headroom, for workers of the account
    /// that read these limits, on one host, not counting other clients:
    /// [`ServerLimits::suggest_capacity_for`] with no processlist.
    pub fn suggest_capacity(&self) -> CapacitySuggestion {
        self.suggest(0, self.user_limit(), 1, None)
    }

    /// A pool capacity for `fleet`, counting what the other clients hold.
    ///
    /// The rule: `max_connections`, minus a reserve of 10 % (at least
    /// [`MIN_RESERVE`]) for administrators, monitoring and the moments in
    /// which the server still counts a connection its client has just
    /// closed, minus the connections that accounts other than
    /// `fleet.user` hold now (from `list`; the server's own threads do not
    /// count, nor does the connection that read the list); and at most the
    /// workers' account limit minus one (its own `MAX_USER_CONNECTIONS`,
    /// else the global `max_user_connections`), so that the account can
    /// still connect to look at and clean up its connections. The result is
    /// divided among `fleet.hosts`. At least 1; [`CapacitySuggestion::bound_by`]
    /// says which rule decided.
    ///
    /// An account without PROCESS sees only its own connections: the
    /// reason then says that other clients could not be counted.
    pub fn suggest_capacity_for(&self, list: &Processlist, fleet: &Fleet) -> CapacitySuggestion {
        let others = list
            .processes
            .iter()
            .filter(|p| p.id != list.own_id && !p.is_system() && p.user != fleet.user)
            .count() as u64;
        let monitor_user = self
            .account
            .rsplit_once('@')
            .map_or(self.account.as_str(), |(u, _)| u);
        let limit = if fleet.user == monitor_user {
            self.user_limit()
        } else {
            self.account_limits
                .iter()
                .filter(|a| a.user == fleet.user && a.max_user_connections > 0)
                .map(|a| a.max_user_connections as u64)
                .min()
                .or((self.max_user_connections > 0).then_some(self.max_user_connections))
        };
        let blind = list
            .processes
            .iter()
            .all(|p| p.user == monitor_user || p.is_system());
        let note = if blind && fleet.user != monitor_user {
            "; only this account's connections are visible (no PROCESS privilege), so other clients were not counted: run this as an administrator"
        } else if blind {
            "; other clients could not be counted unless this account has the PROCESS privilege"
        } else {
            ""
        };
        self.suggest(others, limit, fleet.hosts, Some(&fleet.user))
            .with_note_if(blind, note)
    }

    fn suggest(
        &self,
        others: u64,
        account_limit: Option<u64>,
        hosts: u32,
        user: Option<&str>,
    ) -> CapacitySuggestion {
        let max = self.max_connections;
        let hosts = hosts.max(1);
        let reserve = MIN_RESERVE.max(max.div_ceil(10));
        let server_room = max.saturating_sub(reserve).saturating_sub(others);
        let mut room = server_room;
        let mut bound_by = CapacityBound::MaxConnections;
        let mut reason = if others > 0 {
            format!(
                "max_connections {max} minus a reserve of {reserve} for administrators and teardown, minus {others} held by other accounts"
            )
        } else {
            format!(
                "max_connections {max} minus a reserve of {reserve} for administrators and other clients"
            )
        };
        if let Some(limit) = account_limit {
            let account_room = limit.saturating_sub(1);
            if account_room < room {
                room = account_room;
                bound_by = CapacityBound::AccountLimit;
                let whose = user.map_or("the account".to_string(), |u| format!("account {u}"));
                reason = format!(
                    "{whose}'s connection limit {limit} (errors 1203/1226 beyond it) minus 1 kept for its own monitoring and cleanup"
                );
            }
        }
        let per_host = room / u64::from(hosts);
        if hosts > 1 {
            reason.push_str(&format!(", divided among {hosts} hosts"));
        }
        if per_host == 0 {
            bound_by = CapacityBound::NoRoom;
            reason.push_str(": nothing is left, so 1 is the least a pool can have; expect refusals until the others hold fewer connections, or raise the limit");
        }
        CapacitySuggestion {
            capacity: u32::try_from(per_host.max(1))
                .unwrap_or(u32::MAX)
                .min(dbslots_core::MAX_CAPACITY),
            reserve,
            others,
            hosts,
            bound_by,
            reason,
        }
    }
}

impl CapacitySuggestion {
    fn with_note_if(mut self, yes: bool, note: &str) -> Self {
        if yes {
            self.reason.push_str(note);
        }
        self
    }
}

fn lookup(rows: &[(String, String)], name: &str) -> Option<u64> {
    rows.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// The account's own MAX_USER_CONNECTIONS, best effort: `SHOW CREATE USER`
/// (MySQL 5.7+, MariaDB 10.2+; an account may always show itself), then
/// `SHOW GRANTS` (older MariaDB puts the limit there). Only the number is
/// kept: both statements show the password hash too.
async fn own_limit(conn: &mut Conn) -> Option<u64> {
    if let Ok(Some(row)) = conn
        .query_first::<mysql_async::Row, _>("SHOW CREATE USER CURRENT_USER()")
        .await
        && let Some(text) = row.get_opt::<String, _>(0).and_then(|v| v.ok())
    {
        return Some(parse_max_user_connections(&text).unwrap_or(0));
    }
    let grants: Vec<String> = conn.query("SHOW GRANTS").await.ok()?;
    grants.iter().find_map(|g| parse_max_user_connections(g))
}

/// Accounts with a limit of their own, when `mysql.user` is readable.
async fn account_limits(conn: &mut Conn) -> Vec<AccountLimit> {
    conn.query_map(
        "SELECT User, Host, max_user_connections FROM mysql.user \
         WHERE max_user_connections <> 0 ORDER BY User, Host",
        |(user, host, max_user_connections)| AccountLimit {
            user,
            host,
            max_user_connections,
        },
    )
    .await
    .unwrap_or_default()
}

/// The number after `MAX_USER_CONNECTIONS` in a CREATE USER or GRANT text.
fn parse_max_user_connections(text: &str) -> Option<u64> {
    let upper = text.to_ascii_uppercase();
    let at = upper.find("MAX_USER_CONNECTIONS")? + "MAX_USER_CONNECTIONS".len();
    upper[at..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: u64, global_user: u64, own: Option<u64>) -> ServerLimits {
        ServerLimits {
            version: "10.11".into(),
            account: "app@%".into(),
            connection_id: 1,
            max_connections,
            max_user_connections: global_user,
            session_max_user_connections: own.filter(|&n| n > 0).unwrap_or(global_user),
            account_max_user_connections: own,
            extra_max_connections: None,
            extra_port: None,
            threads_connected: 1,
            max_used_connections: 1,
            connection_errors_max_connections: Some(0),
            account_limits: Vec::new(),
        }
    }

    #[test]
    fn capacity_keeps_a_reserve_of_ten_percent_and_at_least_five() {
        let s = limits(151, 0, Some(0)).suggest_capacity();
        assert_eq!((s.capacity, s.reserve), (135, 16));
        let s = limits(20, 0, None).suggest_capacity();
        assert_eq!((s.capacity, s.reserve), (15, 5));
        assert!(s.reason.contains("max_connections 20"), "{}", s.reason);
        assert_eq!(limits(2, 0, None).suggest_capacity().capacity, 1);
    }

    #[test]
    fn capacity_leaves_the_account_one_connection_of_its_limit() {
        let s = limits(151, 0, Some(5)).suggest_capacity();
        assert_eq!(s.capacity, 4);
        assert!(s.reason.contains("limit 5"), "{}", s.reason);
        assert_eq!(limits(151, 10, Some(0)).suggest_capacity().capacity, 9);
        assert_eq!(limits(151, 0, Some(1)).suggest_capacity().capacity, 1);
        // The account's own limit wins over the global one.
        assert_eq!(limits(151, 10, Some(30)).user_limit(), Some(30));
    }

    fn process(id: u64, user: &str) -> crate::Process {
        crate::Process {
            id,
            user: user.into(),
            host: "10.0.0.1:5000".into(),
            db: None,
            command: "Sleep".into(),
            seconds: 1,
            state: None,
        }
    }

    /// The monitor (`admin`, id 1), `app` workers, `other` clients.
    fn list(app: u64, other: u64) -> Processlist {
        let mut processes = vec![process(1, "admin"), process(2, "system user")];
        processes.extend((0..app).map(|i| process(100 + i, "app")));
        processes.extend((0..other).map(|i| process(200 + i, "other")));
        Processlist {
            own_id: 1,
            processes,
        }
    }

    fn fleet(user: &str, hosts: u32) -> Fleet {
        Fleet {
            user: user.into(),
            hosts,
        }
    }

    #[test]
    fn capacity_subtracts_what_the_other_accounts_hold() {
        let mut l = limits(30, 0, None);
        l.account = "admin@%".into();
        // The example: max_connections 30, another account holding
        // 12: at most 30 - 12 - the reserve (5).
        let s = l.suggest_capacity_for(&list(4, 12), &fleet("app", 1));
        assert_eq!((s.capacity, s.others, s.reserve), (13, 12, 5));
        assert_eq!(s.bound_by, CapacityBound::MaxConnections);
        assert!(
            s.reason.contains("minus 12 held by other accounts"),
            "{}",
            s.reason
        );
        // The workers' own connections are the pool's, not others'.
        assert_eq!(
            l.suggest_capacity_for(&list(20, 0), &fleet("app", 1))
                .capacity,
            25
        );
        // Divided among hosts.
        let s = l.suggest_capacity_for(&list(0, 12), &fleet("app", 3));
        assert_eq!((s.capacity, s.hosts), (4, 3));
        assert!(s.reason.contains("divided among 3 hosts"), "{}", s.reason);
        // Nothing left: 1, and it says so.
        let s = l.suggest_capacity_for(&list(0, 40), &fleet("app", 1));
        assert_eq!((s.capacity, s.bound_by), (1, CapacityBound::NoRoom));
        assert!(s.reason.contains("nothing is left"), "{}", s.reason);
    }

    #[test]
    fn capacity_applies_the_workers_account_limit_not_the_monitors() {
        let mut l = limits(151, 0, Some(0));
        l.account = "admin@%".into();
        l.account_limits = vec![AccountLimit {
            user: "app".into(),
            host: "%".into(),
            max_user_connections: 8,
        }];
        let s = l.suggest_capacity_for(&list(3, 0), &fleet("app", 1));
        assert_eq!((s.capacity, s.bound_by), (7, CapacityBound::AccountLimit));
        assert!(
            s.reason.contains("account app's connection limit 8"),
            "{}",
            s.reason
        );
        // The global max_user_connections (1203) applies to any account.
        l.max_user_connections = 20;
        assert_eq!(
            l.suggest_capacity_for(&list(0, 0), &fleet("batch", 2))
                .capacity,
            9
        );
        // An account that sees only itself says others were not counted.
        let mut me = limits(151, 0, Some(0));
        me.account = "app@%".into();
        let own = Processlist {
            own_id: 1,
            processes: vec![process(1, "app"), process(5, "app")],
        };
        let s = me.suggest_capacity_for(&own, &fleet("app", 1));
        assert!(s.reason.contains("PROCESS"), "{}", s.reason);
    }

    #[test]
    fn finds_the_limit_in_create_user_and_grant_texts() {
        assert_eq!(
            parse_max_user_connections(
                "CREATE USER `lim5`@`%` IDENTIFIED BY PASSWORD '*C10C' WITH MAX_USER_CONNECTIONS 5"
            ),
            Some(5)
        );
        assert_eq!(
            parse_max_user_connections(
                "GRANT USAGE ON *.* TO 'a'@'%' WITH max_user_connections 12 MAX_QUERIES_PER_HOUR 3"
            ),
            Some(12)
        );
        assert_eq!(parse_max_user_connections("CREATE USER `a`@`%`"), None);
    }
}
