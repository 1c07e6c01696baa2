//! The dashboard of `dbslots serve` in headless Chromium: the numbers it
//! shows match the pool (and the server), and a screenshot is kept under
//! `target/test-artifacts/dashboard.png`.
//!
//! Chromium is Debian's `chromium` package at /usr/bin/chromium, which
//! `cargo xtask test` installs when it is missing. Under a bare `cargo test`
//! without it the test prints `SKIPPED` and passes; under
//! `DBSLOTS_TEST_REQUIRE_SERVERS=1` it fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{BusyPool, Serve};

const CHROMIUM: &str = "/usr/bin/chromium";

/// `/usr/bin/chromium`, or `None` after a visible skip.
fn chromium() -> Option<&'static Path> {
    let path = Path::new(CHROMIUM);
    if path.exists() {
        return Some(path);
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    assert!(
        !dbslots_testkit::servers_required(),
        "{test}: {CHROMIUM} is missing; `cargo xtask test` installs it (as root), \
         or run `apt-get install -y chromium`"
    );
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: no {CHROMIUM} (apt-get install chromium, or run under cargo xtask test)"
    );
    None
}

/// Runs headless Chromium on `url` with a fresh profile, killing it after
/// two minutes.
fn run_chromium(chromium: &Path, url: &str, extra: &[&str]) -> Output {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    // Read the pipes on threads so that a large DOM cannot block Chromium.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within two minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out_t.join().expect("stdout thread"),
        stderr: err_t.join().expect("stderr thread"),
    }
}

/// The opening tag of the element with id `id` in a serialized DOM.
fn tag_with_id<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let at = dom.find(&format!(" id=\"{id}\""))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

/// The value of attribute `attr` in an opening tag.
fn attr<'a>(tag: &'a str, attr: &str) -> Option<&'a str> {
    let key = format!(" {attr}=\"");
    let at = tag.find(&key)? + key.len();
    let len = tag[at..].find('"')?;
    Some(&tag[at..at + len])
}

/// `data-value` of the element with id `id`.
#[track_caller]
fn shown(dom: &str, id: &str) -> String {
    let tag = tag_with_id(dom, id).unwrap_or_else(|| panic!("no element #{id} in the page"));
    attr(tag, "data-value")
        .unwrap_or_else(|| panic!("#{id} shows nothing: {tag}"))
        .to_string()
}

/// The opening tags of the `<tr>` rows of class `class` inside `section`.
fn rows<'a>(section: &'a str, class: &str) -> Vec<&'a str> {
    section
        .match_indices("<tr ")
        .filter_map(|(i, _)| {
            let tag = &section[i..=i + section[i..].find('>')?];
            (attr(tag, "class") == Some(class)).then_some(tag)
        })
        .collect()
}

fn artifact_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(
        bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR",
        "not a PNG"
    );
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[test]
fn the_dashboard_shows_the_pool_and_server_as_they_are() {
    let Some(chromium) = chromium() else {
        return;
    };
    let mysql = dbslots_testkit::shared_mysql();
    let busy = BusyPool::start(3, 2);
    let mut args = vec!["--pool", busy.path.as_str()];
    if let Some(m) = &mysql {
        args.extend(["--url", m.user_url.as_str()]);
    }
    let serve = Serve::start(&args);

    let out = run_chromium(
        chromium,
        &serve.url(),
        &["--virtual-time-budget=3000", "--dump-dom"],
    );
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let updates: u32 = attr(tag_with_id_body(&dom), "data-updates")
        .and_then(|v| v.parse().ok())
        .expect("data-updates on <body>");
    assert!(updates >= 2, "the page polled {updates} times in 3 s");

    // The numbers match the pool.
    let card = tag_with_id(&dom, "pool-0").expect("a card for the pool");
    assert_eq!(attr(card, "data-pool"), Some(busy.path.as_str()));
    for (field, want) in [
        ("capacity", 3),
        ("active", 3),
        ("waiting", 2),
        ("free", 0),
        ("peak", 3),
        ("acquisitions", 3),
        ("timeouts", 0),
    ] {
        assert_eq!(
            shown(&dom, &format!("pool-0-{field}")),
            want.to_string(),
            "{field}"
        );
    }
    assert!(tag_with_id(&dom, "pool-1").is_none(), "one pool, one card");
    let section = &dom[dom.find(" id=\"pool-0\"").unwrap()..];
    let holders: Vec<(String, String)> = rows(section, "holder")
        .iter()
        .map(|t| {
            (
                attr(t, "data-slot").expect("slot").to_string(),
                attr(t, "data-pid").expect("pid").to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = busy
        .holder_pids()
        .iter()
        .enumerate()
        .map(|(slot, pid)| (slot.to_string(), pid.to_string()))
        .collect();
    assert_eq!(holders, expected);
    let waiters: Vec<String> = rows(section, "waiter")
        .iter()
        .map(|t| attr(t, "data-pid").expect("pid").to_string())
        .collect();
    let expected: Vec<String> = busy.waiter_pids().iter().map(u32::to_string).collect();
    assert_eq!(waiters, expected);
    let chart = tag_with_id(section, "pool-0-chart").expect("a chart box");
    assert!(chart.starts_with("<div"));
    let svg_at = section.find("<svg").expect("an SVG chart");
    let svg = &section[svg_at..svg_at + section[svg_at..].find('>').unwrap()];
    let points: u32 = attr(svg, "data-points").unwrap().parse().unwrap();
    assert!(points >= 2, "the chart has {points} points");
    assert!(section.contains("class=\"area\"") && section.contains("class=\"waiting\""));

    // The server, or its absence.
    let server = tag_with_id(&dom, "server").expect("the server section");
    match &mysql {
        Some(m) => {
            assert_eq!(attr(server, "data-state"), Some("ok"), "{server}");
            let api = serve.get("/api/server").json();
            assert_eq!(
                shown(&dom, "server-max-connections"),
                api["limits"]["max_connections"].to_string()
            );
            let groups = rows(&dom, "group");
            assert!(
                groups
                    .iter()
                    .any(|g| attr(g, "data-user") == Some(dbslots_testkit::USER)),
                "the monitor's own connection is listed: {groups:?}"
            );
            let connected: u64 = shown(&dom, "server-threads-connected").parse().unwrap();
            assert!(connected >= 1);
            assert!(
                !dom.contains(dbslots_testkit::PASSWORD),
                "password in the page"
            );
            assert!(m.user_url.contains(dbslots_testkit::PASSWORD));
        }
        None => {
            assert_eq!(attr(server, "data-state"), Some("absent"), "{server}");
            assert!(attr(server, "class").unwrap().contains("hidden"));
        }
    }

    // The screenshot, after ten (virtual) seconds of polling.
    let png = artifact_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    let out = run_chromium(
        chromium,
        &serve.url(),
        &[
            "--virtual-time-budget=10000",
            "--hide-scrollbars",
            "--window-size=1280,900",
            &format!("--screenshot={}", png.display()),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).expect("the screenshot was written");
    assert_eq!(png_size(&bytes), (1280, 900));
    assert!(
        bytes.len() > 10_000,
        "a {}-byte screenshot is blank",
        bytes.len()
    );
    let _ = writeln!(std::io::stderr(), "dashboard screenshot: {}", png.display());
}

fn tag_with_id_body(dom: &str) -> &str {
    let start = dom.find("<body").expect("a body");
    &dom[start..=start + dom[start..].find('>').expect("a whole tag")]
}
