//! `docs/alerts.yml`, the Prometheus alerting rules over what `dbslots
//! serve` exports: valid (`promtool check rules`), doing what their unit
//! tests in `docs/alerts.test.yml` say (`promtool test rules`), and naming
//! only metrics a real `dbslots serve` exports (a renamed metric would
//! otherwise silence its alert without a word).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::support::{BusyPool, Serve, prom};

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs")
}

/// Debian's `promtool` (package `prometheus`, which `cargo xtask test`
/// installs when missing); `None` after a SKIPPED line without it, unless
/// the servers are required.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            !dbslots_testkit::servers_required(),
            "promtool is missing: install the Debian package prometheus (apt-get install prometheus)"
        );
        eprintln!("SKIPPED alert rules: no promtool (Debian package prometheus)");
    }
    found
}

fn run(promtool: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(docs())
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_are_valid_and_pass_their_unit_tests() {
    let Some(promtool) = promtool() else {
        return;
    };
    let checked = run(&promtool, &["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS: 11 rules found"), "{checked}");
    let tested = run(&promtool, &["test", "rules", "alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every `dbslots_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("dbslots_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn alert_rules_name_only_metrics_dbslots_serve_exports() {
    let Some(mysql) = dbslots_testkit::shared_mysql() else {
        return;
    };
    let rules = std::fs::read_to_string(docs().join("alerts.yml")).expect("docs/alerts.yml");
    // Only the expressions: descriptions name commands, not metrics.
    let exprs: String = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .collect::<Vec<_>>()
        .join("\n");
    let used = metric_names(&exprs);
    assert!(used.len() >= 11, "{used:?}");

    // An account with a limit of its own, so that every per-account family
    // has a sample: serve's monitor connection is the account's own.
    let account = format!("dbslots_alerts_{}", std::process::id());
    let password = "dbslots-alerts-pw";
    let admin_sql = |sql: String| {
        let url = mysql.admin_url.clone();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(async move {
                let mut admin = Conn::from_url(&url).await.expect("the admin connects");
                admin
                    .query_drop(sql)
                    .await
                    .expect("the admin manages accounts");
                admin.disconnect().await.expect("disconnect");
            });
    };
    admin_sql(format!("DROP USER IF EXISTS '{account}'@'%'"));
    admin_sql(format!(
        "CREATE USER '{account}'@'%' IDENTIFIED BY '{password}' WITH MAX_USER_CONNECTIONS 5"
    ));
    admin_sql(format!(
        "GRANT SELECT ON `{}`.* TO '{account}'@'%'",
        dbslots_testkit::DATABASE
    ));
    let (scheme, rest) = mysql.user_url.split_once("://").expect("a URL");
    let (_, host) = rest.rsplit_once('@').expect("credentials");
    let url = format!("{scheme}://{account}:{password}@{host}");

    let busy = BusyPool::start(1, 0);
    let serve = Serve::start(&["--pool", &busy.path, "--url", &url]);
    let metrics = serve.get("/metrics");
    let families = prom::parse(&metrics.body).unwrap_or_else(|e| panic!("{e}\n{}", metrics.body));
    let exported: BTreeSet<String> = families
        .iter()
        .flat_map(|f| f.samples.iter().map(|s| s.name.clone()))
        .collect();
    drop(serve);
    admin_sql(format!("DROP USER '{account}'@'%'"));
    assert!(
        metrics.body.contains(&format!(
            "dbslots_mysql_user_max_connections{{user=\"{account}\"}} 5"
        )),
        "{}",
        metrics.body
    );
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "docs/alerts.yml uses {missing:?}, which dbslots serve does not export (it exports {exported:?})"
    );
}
