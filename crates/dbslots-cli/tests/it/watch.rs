//! `dbslots watch` in a real terminal: tmux runs it, `capture-pane` reads
//! the screen, `send-keys` quits, and the shell after it checks that the
//! terminal is back in cooked mode on the main screen.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::support::{BusyPool, dbslots, status, wait_for};

/// A private tmux server (its own socket) with one 120x40 session, killed
/// when dropped.
struct Tmux {
    socket: String,
    _dir: tempfile::TempDir,
}

impl Tmux {
    /// Runs `script` (a shell script) as the session's only pane, or skips
    /// visibly when tmux is missing.
    fn start(script: &str) -> Option<Tmux> {
        if Command::new("tmux").arg("-V").output().is_err() {
            let test = std::thread::current().name().unwrap_or("?").to_string();
            assert!(
                !dbslots_testkit::servers_required(),
                "{test}: tmux is missing; `cargo xtask test` installs it (as root), or run `apt-get install -y tmux`"
            );
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: no tmux (apt-get install tmux, or run under cargo xtask test)"
            );
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let socket = format!(
            "dbslots-watch-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("run.sh");
        std::fs::write(&file, script).expect("write the script");
        let tmux = Tmux { socket, _dir: dir };
        let out = tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-x",
            "120",
            "-y",
            "40",
            "-s",
            "w",
            &format!("sh {}", file.display()),
        ]);
        assert!(out.status.success(), "tmux new-session: {out:?}");
        Some(tmux)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-J", "-t", "w"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn alternate_on(&self) -> bool {
        let out = self.run(&["display-message", "-p", "-t", "w", "#{alternate_on}"]);
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }

    fn keys(&self, keys: &str) {
        let out = self.run(&["send-keys", "-t", "w", keys]);
        assert!(out.status.success(), "send-keys: {out:?}");
    }

    /// Waits until the screen contains every one of `needles`.
    #[track_caller]
    fn wait_screen(&self, needles: &[&str]) -> String {
        let mut last = String::new();
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for("the screen", Duration::from_secs(20), || {
                last = self.screen();
                needles
                    .iter()
                    .all(|n| last.contains(n))
                    .then(|| last.clone())
            })
        }));
        found.unwrap_or_else(|_| panic!("the screen never showed {needles:?}:\n{last}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The script the pane runs: the view, then a report of how it ended and of
/// the terminal's modes, then a pause so that the pane stays readable.
fn script(pool: &str, extra: &str) -> String {
    format!(
        "'{}' watch --pool '{pool}' {extra}\n\
         echo \"watch-exit=$?\"\n\
         echo \"modes: $(stty -a | tr -s ' ;\\n' '   ')\"\n\
         sleep 120\n",
        env!("CARGO_BIN_EXE_dbslots")
    )
}

/// The terminal came back: cooked mode with echo (the modes line of
/// [`script`]) and the main screen.
#[track_caller]
fn assert_restored(tmux: &Tmux, screen: &str) {
    let modes = screen
        .lines()
        .find(|l| l.starts_with("modes: "))
        .unwrap_or_else(|| panic!("no modes line:\n{screen}"));
    let modes: Vec<&str> = modes.split_whitespace().collect();
    for flag in ["icanon", "echo", "isig", "opost"] {
        assert!(modes.contains(&flag), "{flag} not restored: {modes:?}");
    }
    assert!(!tmux.alternate_on(), "still on the alternate screen");
    assert!(
        !screen.contains("q: quit"),
        "the view was left on screen:\n{screen}"
    );
}

#[test]
fn watch_shows_the_numbers_live_and_quits_on_q() {
    let mut busy = BusyPool::start(2, 2);
    let Some(tmux) = Tmux::start(&script(&busy.path, "")) else {
        return;
    };
    let holders = busy.holder_pids();
    let waiters = busy.waiter_pids();
    let screen = tmux.wait_screen(&["2 of 2 in use"]);
    assert!(tmux.alternate_on(), "the view uses the alternate screen");
    assert!(
        screen.contains("capacity 2  active 2  waiting 2  free 0  peak 2"),
        "{screen}"
    );
    assert!(screen.contains("acquisitions 2  timeouts 0"), "{screen}");
    assert!(screen.contains("[##########"), "a full bar: {screen}");
    assert!(screen.contains(&busy.path), "{screen}");
    assert!(
        screen.contains("holders (2)") && screen.contains("waiters (2)"),
        "{screen}"
    );
    for pid in holders.iter().chain(&waiters) {
        assert!(screen.contains(&format!(" {pid} ")), "pid {pid}:\n{screen}");
    }

    // It follows the pool: a holder goes, both waiters run and leave.
    busy.release_one();
    busy.wait_for_waiters();
    assert_eq!(status(&busy.path).expect("status")["active"], 1);
    let screen = tmux.wait_screen(&["1 of 2 in use", "acquisitions 4"]);
    assert!(screen.contains("waiting 0"), "{screen}");
    assert!(!screen.contains("waiters ("), "{screen}");

    tmux.keys("q");
    let screen = tmux.wait_screen(&["watch-exit=0", "modes: "]);
    assert_restored(&tmux, &screen);
}

#[test]
fn watch_quits_on_ctrl_c_and_restores_the_terminal() {
    let busy = BusyPool::start(1, 0);
    let Some(tmux) = Tmux::start(&script(&busy.path, "")) else {
        return;
    };
    tmux.wait_screen(&["1 of 1 in use"]);
    tmux.keys("C-c");
    let screen = tmux.wait_screen(&["watch-exit=0", "modes: "]);
    assert_restored(&tmux, &screen);
}

/// The pids of `dbslots watch` processes showing `pool` (its path is
/// unique to the test).
fn watch_pids(pool: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&b"watch".as_slice()) && args.contains(&pool.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// A view whose terminal goes away ends, even when no SIGHUP reaches it
/// (run by a shell, it is not the session leader the kernel signals, and
/// `sh` does not pass the hang-up on), rather than spinning a core for
/// ever on a terminal that reads as end of file.
#[test]
fn watch_ends_when_its_terminal_hangs_up_without_a_signal() {
    let busy = BusyPool::start(1, 0);
    let Some(tmux) = Tmux::start(&script(&busy.path, "")) else {
        return;
    };
    tmux.wait_screen(&["1 of 1 in use"]);
    /// Kills a view still showing the pool when the test ends, so that a
    /// failed run leaves no process spinning.
    struct Reap<'a>(&'a str);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            for pid in watch_pids(self.0) {
                // SAFETY: kill(2) on a pid just read from /proc.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
    let _reap = Reap(&busy.path);
    assert_eq!(watch_pids(&busy.path).len(), 1);
    drop(tmux);
    wait_for("the view to end", Duration::from_secs(10), || {
        watch_pids(&busy.path).is_empty().then_some(())
    });
}

#[test]
fn watch_shows_the_server_with_url() {
    let Some(mysql) = dbslots_testkit::shared_mysql() else {
        return;
    };
    let busy = BusyPool::start(1, 0);
    let Some(tmux) = Tmux::start(&script(&busy.path, &format!("--url '{}'", mysql.user_url)))
    else {
        return;
    };
    let screen = tmux.wait_screen(&["1 of 1 in use", " connected", "max_connections "]);
    assert!(!screen.contains(dbslots_testkit::PASSWORD), "{screen}");
    assert!(screen.contains(":***@"), "the redacted URL: {screen}");
    let line = screen
        .lines()
        .find(|l| l.contains(" connected"))
        .expect("the connections line");
    let of: Vec<&str> = line.split_whitespace().collect();
    let i = of.iter().position(|w| *w == "of").expect("N of M");
    let (used, max): (u64, u64) = (of[i - 1].parse().unwrap(), of[i + 1].parse().unwrap());
    assert!(used >= 1 && max >= used, "{line}");
    tmux.keys("q");
    let screen = tmux.wait_screen(&["watch-exit=0", "modes: "]);
    assert_restored(&tmux, &screen);
}

#[test]
fn watch_refuses_without_a_terminal_and_points_to_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("p").display().to_string();
    let out = dbslots()
        .args(["watch", "--pool", &pool])
        .output()
        .expect("run watch");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs a terminal") && err.contains("dbslots status"),
        "{err}"
    );
    assert!(!Path::new(&pool).exists(), "it did not create the pool");
}

#[test]
fn watch_reads_a_server_that_requires_tls_with_verify_ca() {
    let Some((server, ca)) = crate::support::mysql_requiring_tls() else {
        return;
    };
    // The certificate names localhost, the URL 127.0.0.1: VERIFY_CA checks
    // the chain only; the server refuses anything but TLS.
    let url = format!("{}&ssl-mode=VERIFY_CA&ssl-ca={ca}", server.user_url());
    let busy = BusyPool::start(1, 0);
    let Some(tmux) = Tmux::start(&script(&busy.path, &format!("--url '{url}'"))) else {
        return;
    };
    let screen = tmux.wait_screen(&["1 of 1 in use", " connected", "max_connections "]);
    assert!(!screen.contains(dbslots_testkit::PASSWORD), "{screen}");
    tmux.keys("q");
    let screen = tmux.wait_screen(&["watch-exit=0", "modes: "]);
    assert_restored(&tmux, &screen);
    drop(tmux);

    // The CA is really checked: one that did not sign the server's
    // certificate gets no reading, and the view says why.
    let other = tempfile::tempdir().expect("a temporary directory");
    let wrong =
        dbslots_testkit::make_certificates(other.path(), "localhost").expect("certificates");
    let url = format!(
        "{}&ssl-mode=VERIFY_CA&ssl-ca={}",
        server.user_url(),
        wrong.ca.display()
    );
    let Some(tmux) = Tmux::start(&script(&busy.path, &format!("--url '{url}'"))) else {
        return;
    };
    let screen = tmux.wait_screen(&["1 of 1 in use", "cannot read the server"]);
    assert!(screen.contains("trusted CA"), "{screen}");
    assert!(!screen.contains(" connected"), "{screen}");
    assert!(!screen.contains(dbslots_testkit::PASSWORD), "{screen}");
    tmux.keys("q");
    let screen = tmux.wait_screen(&["watch-exit=0", "modes: "]);
    assert_restored(&tmux, &screen);
}

#[test]
fn watch_refuses_an_invalid_url_before_drawing() {
    // A typo in --url stops watch with the reason, as a bad --pool does,
    // instead of a view that says "cannot read the server" for ever.
    let busy = BusyPool::start(1, 0);
    let Some(tmux) = Tmux::start(&script(
        &busy.path,
        "--url 'mysql://app:s3cret@127.0.0.1:notaport/db'",
    )) else {
        return;
    };
    let screen = tmux.wait_screen(&["watch-exit=", "modes: "]);
    assert!(!screen.contains("watch-exit=0"), "{screen}");
    assert!(screen.contains("invalid MySQL URL"), "{screen}");
    assert!(!screen.contains("s3cret"), "{screen}");
    assert_restored(&tmux, &screen);
}

#[test]
fn log_lines_do_not_scribble_over_the_view() {
    // A server that refuses: every read fails and the library logs a
    // warning; the view already says so, and a log line written to the
    // raw terminal would land in the middle of it.
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = refusing.local_addr().unwrap().port();
    drop(refusing);
    let busy = BusyPool::start(1, 0);
    let Some(tmux) = Tmux::start(&script(
        &busy.path,
        &format!("--url 'mysql://app:s3cret@127.0.0.1:{port}/db?prefer_socket=false'"),
    )) else {
        return;
    };
    tmux.wait_screen(&["cannot read the server"]);
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let screen = tmux.screen();
        assert!(
            !screen.contains("WARN") && !screen.contains(" url="),
            "a log line on the view:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    tmux.keys("q");
    let screen = tmux.wait_screen(&["watch-exit=0", "modes: "]);
    assert_restored(&tmux, &screen);
}
