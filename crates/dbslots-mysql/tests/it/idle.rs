//! Killing idle connections, pt-kill style.

use std::collections::BTreeSet;
use std::time::Duration;

use dbslots_mysql::mysql_async::Conn;
use dbslots_mysql::mysql_async::prelude::Queryable;
use dbslots_mysql::{IdleRule, KillOutcome, Processlist, connect_monitor, kill_idle};
use dbslots_testkit::shared_mysql;

use crate::support::{TempAccount, gone_from_server, listed_ids, runtime};

async fn open(url: &str, n: usize) -> Vec<Conn> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(Conn::from_url(url).await.expect("connect"));
    }
    conns
}

fn ids(conns: &[Conn]) -> BTreeSet<u64> {
    conns.iter().map(|c| u64::from(c.id())).collect()
}

#[test]
fn only_sleepers_of_the_user_past_the_threshold_are_killed_and_dry_run_kills_nothing() {
    let Some(shared) = shared_mysql() else {
        return;
    };
    runtime().block_on(async {
        let target = TempAccount::create(&shared.admin_url, "idle_a", None).await;
        let other = TempAccount::create(&shared.admin_url, "idle_b", None).await;
        let mut idle = open(&target.url, 3).await;
        let others = open(&other.url, 2).await;
        let mut busy = open(&target.url, 1).await.remove(0);
        let busy_id = u64::from(busy.id());
        let busy_task = tokio::spawn(async move {
            let r: Option<u8> = busy
                .query_first("SELECT SLEEP(5) + 1")
                .await
                .expect("the busy query");
            (busy, r)
        });
        // The server counts idle time in whole seconds.
        tokio::time::sleep(Duration::from_millis(2300)).await;

        let mut monitor = connect_monitor(&shared.admin_url)
            .await
            .expect("the monitor connects");
        let rule = IdleRule::for_user(Duration::from_secs(1), &target.name);

        // Less than a second would hit busy workers between statements.
        let zero = IdleRule::for_user(Duration::ZERO, &target.name);
        let err = kill_idle(&mut monitor, &zero, false)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("at least 1 second"), "{err}");

        let dry = kill_idle(&mut monitor, &rule, true).await.expect("dry run");
        assert!(dry.stopped.is_none());
        let dry = dry.victims;
        let picked: BTreeSet<u64> = dry.iter().map(|v| v.process.id).collect();
        assert_eq!(picked, ids(&idle), "the target's sleepers, nothing else");
        assert!(dry.iter().all(|v| v.outcome == KillOutcome::WouldKill));
        assert!(
            dry.iter()
                .all(|v| v.process.user == target.name && v.process.seconds >= 2)
        );
        let listed: BTreeSet<u64> = listed_ids(&mut monitor).await.into_iter().collect();
        assert!(picked.is_subset(&listed), "the dry run killed nothing");

        let killed = kill_idle(&mut monitor, &rule, false).await.expect("kill");
        assert!(killed.stopped.is_none());
        let killed = killed.victims;
        let killed_ids: BTreeSet<u64> = killed.iter().map(|v| v.process.id).collect();
        assert_eq!(killed_ids, ids(&idle));
        assert!(
            killed.iter().all(|v| v.outcome == KillOutcome::Killed),
            "{killed:?}"
        );

        // KILL marks a thread; it leaves the processlist a moment later.
        for id in ids(&idle) {
            assert!(
                gone_from_server(&mut monitor, id).await,
                "sleeper {id} is gone"
            );
        }
        let list = Processlist::read(&mut monitor).await.expect("processlist");
        let listed: BTreeSet<u64> = list.processes.iter().map(|p| p.id).collect();
        assert!(listed.contains(&busy_id), "the busy connection lives");
        assert!(
            ids(&others).is_subset(&listed),
            "the other user's sleepers live"
        );
        assert!(listed.contains(&list.own_id), "the monitor lives");
        for conn in &mut idle {
            assert!(conn.ping().await.is_err(), "a killed connection is dead");
        }
        let (busy, r) = busy_task.await.expect("the busy task finishes");
        assert_eq!(r, Some(1), "the busy query finished undisturbed");
        busy.disconnect().await.expect("disconnect");
        for conn in others {
            conn.disconnect()
                .await
                .expect("the other user's connection is intact");
        }
        monitor.disconnect().await.expect("disconnect");
    });
}

#[test]
fn an_account_without_process_reaps_its_own_idle_connections_but_not_itself() {
    let Some(shared) = shared_mysql() else {
        return;
    };
    runtime().block_on(async {
        let account = TempAccount::create(&shared.admin_url, "idle_self", None).await;
        let idle = open(&account.url, 2).await;
        tokio::time::sleep(Duration::from_millis(2300)).await;
        // The account is its own monitor, with no user filter.
        let mut monitor = connect_monitor(&account.url)
            .await
            .expect("the monitor connects");
        let list = Processlist::read(&mut monitor).await.expect("processlist");
        assert!(
            list.processes.iter().all(|p| p.user == account.name),
            "without PROCESS an account sees only its own connections"
        );
        let killed = kill_idle(
            &mut monitor,
            &IdleRule::all_users(Duration::from_secs(1)),
            false,
        )
        .await
        .expect("kill")
        .victims;
        let killed_ids: BTreeSet<u64> = killed.iter().map(|v| v.process.id).collect();
        assert_eq!(killed_ids, ids(&idle));
        assert!(
            killed.iter().all(|v| v.outcome == KillOutcome::Killed),
            "{killed:?}"
        );
        let one: Option<u8> = monitor
            .query_first("SELECT 1")
            .await
            .expect("the monitor is alive");
        assert_eq!(one, Some(1));
        monitor.disconnect().await.expect("disconnect");
    });
}
