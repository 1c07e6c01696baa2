//! The PHP and Python clients of `docs/protocol.md`, run exactly as written
//! there, share a pool with dbslots: the documented protocol is the real
//! one, and a foreign waiter that is stopped stalls nobody.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dbslots_core::{Pool, PoolOptions};

#[derive(Clone, Copy, Debug)]
enum Lang {
    Php,
    Python,
}

const LANGS: [Lang; 2] = [Lang::Php, Lang::Python];

/// The fenced block of `docs/protocol.md` in `lang`.
fn documented(fence: &str) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md"))
        .expect("docs/protocol.md");
    let open = format!("```{fence}\n");
    let start = doc.find(&open).expect("a block for the language") + open.len();
    let len = doc[start..].find("```").expect("closed block");
    doc[start..start + len].to_string()
}

/// A foreign client that takes a slot, says HELD, waits for a line on its
/// stdin, releases and says RELEASED.
struct Foreign {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Foreign {
    fn spawn(lang: Lang, pool: &str) -> Foreign {
        let mut cmd = match lang {
            Lang::Php => {
                let script = format!(
                    "{}\n$fp = dbslots_take({pool:?});\necho \"HELD\\n\"; fflush(STDOUT);\nfgets(STDIN);\ndbslots_release($fp);\necho \"RELEASED\\n\";\n",
                    documented("php")
                );
                let mut c = Command::new("php");
                c.arg("-r").arg(script);
                c
            }
            Lang::Python => {
                let script = format!(
                    "{}\nimport sys\nfd = take({pool:?})\nprint('HELD', flush=True)\nsys.stdin.readline()\nrelease(fd)\nprint('RELEASED', flush=True)\n",
                    documented("python")
                );
                let mut c = Command::new("python3");
                c.arg("-c").arg(script);
                c
            }
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{lang:?} runs (cargo xtask test installs php-cli and python3): {e}")
            });
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if tx.send(line.trim().to_string()).is_err() {
                    break;
                }
            }
        });
        Foreign { child, lines }
    }

    fn expect_line(&self, want: &str) {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a line from the foreign client");
        assert_eq!(line, want);
    }

    /// Asserts that the client says nothing for `quiet`.
    fn expect_nothing_for(&self, quiet: Duration) {
        if let Ok(line) = self.lines.recv_timeout(quiet) {
            panic!("the foreign client said {line:?} too early");
        }
    }

    fn release(&mut self) {
        writeln!(self.child.stdin.as_mut().expect("stdin")).expect("write");
        self.expect_line("RELEASED");
        self.child.wait().expect("reap");
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill on our own, not yet reaped child.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) },
            0
        );
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pool(capacity: u32) -> (tempfile::TempDir, String, Pool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = dir.path().join("pool").display().to_string();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(capacity)).expect("pool");
    (dir, addr, pool)
}

fn wait_for_waiters(pool: &Pool, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.stats().expect("stats").waiting < n {
        assert!(Instant::now() < deadline, "{n} waiters never showed up");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_foreign_holder_counts_against_the_capacity() {
    for lang in LANGS {
        let (_d, addr, pool) = pool(1);
        let mut f = Foreign::spawn(lang, &addr);
        f.expect_line("HELD");
        assert!(
            pool.try_acquire().expect("try").is_none(),
            "{lang:?} holds the only slot"
        );
        assert_eq!(pool.stats().expect("stats").active, 1);
        f.release();
        assert!(
            pool.try_acquire().expect("try").is_some(),
            "{lang:?} gave it back"
        );
    }
}

#[test]
fn a_foreign_waiter_gets_the_slot_dbslots_releases() {
    for lang in LANGS {
        let (_d, addr, pool) = pool(1);
        let held = pool.blocking_acquire().expect("hold");
        let mut f = Foreign::spawn(lang, &addr);
        wait_for_waiters(&pool, 1);
        drop(held);
        f.expect_line("HELD");
        f.release();
        assert_eq!(
            pool.stats().expect("stats").waiting,
            0,
            "{lang:?} left the waiters"
        );
    }
}

#[test]
fn dbslots_waiters_get_the_slot_of_a_killed_foreign_holder() {
    for lang in LANGS {
        let (_d, addr, pool) = pool(1);
        let mut f = Foreign::spawn(lang, &addr);
        f.expect_line("HELD");
        let waiter = std::thread::spawn(move || {
            pool.blocking_acquire_timeout(Duration::from_secs(30))
                .map(|s| s.index())
        });
        std::thread::sleep(Duration::from_millis(50));
        f.child.kill().expect("SIGKILL");
        f.child.wait().expect("reap");
        assert_eq!(waiter.join().expect("join").expect("slot"), 0, "{lang:?}");
    }
}

#[test]
fn a_stopped_foreign_waiter_stalls_nobody() {
    for lang in LANGS {
        let (_d, addr, pool) = pool(1);
        let held = pool.blocking_acquire().expect("hold");
        let mut f = Foreign::spawn(lang, &addr);
        wait_for_waiters(&pool, 1);
        f.signal(libc::SIGSTOP);
        let p2 = pool.clone();
        let waiter = std::thread::spawn(move || {
            let slot = p2.blocking_acquire_timeout(Duration::from_secs(30));
            (
                Instant::now(),
                slot.map(|s| {
                    let i = s.index();
                    // Hold it a moment, so the foreign client has to wait for it.
                    std::thread::sleep(Duration::from_millis(200));
                    drop(s);
                    i
                }),
            )
        });
        wait_for_waiters(&pool, 2);
        let freed = Instant::now();
        drop(held);
        let (got, slot) = waiter.join().expect("join");
        assert_eq!(slot.expect("slot"), 0);
        let delay = got - freed;
        eprintln!("{lang:?}: dbslots waiter got the slot {delay:?} after it was freed");
        assert!(
            delay < Duration::from_millis(100),
            "a stopped {lang:?} waiter delayed a dbslots waiter by {delay:?}"
        );
        f.signal(libc::SIGCONT);
        f.expect_line("HELD");
        f.release();
    }
}

#[test]
fn a_foreign_client_waits_for_a_shrink_to_drain() {
    for lang in LANGS {
        let (_d, addr, pool) = pool(2);
        let a = pool.blocking_acquire().expect("a");
        let b = pool.blocking_acquire().expect("b");
        let (low, high) = if a.index() == 0 { (a, b) } else { (b, a) };
        pool.resize(1).expect("shrink to 1");
        drop(low);
        // Slot 1, above the new capacity, is still held: the pool is full.
        let mut f = Foreign::spawn(lang, &addr);
        f.expect_nothing_for(Duration::from_millis(300));
        // The waiting client probes slot 0 with a non-blocking lock every
        // 2 ms, and a probe in flight is a lock `stats` rightly counts; so
        // look a few times: the pool must read full at capacity 1 between
        // probes, and never more than the probe above it.
        let mut seen = Vec::new();
        for _ in 0..50 {
            let stats = pool.stats().expect("stats");
            seen.push((stats.capacity, stats.active));
            if (stats.capacity, stats.active) == (1, 1) {
                break;
            }
            std::thread::sleep(Duration::from_millis(3));
        }
        assert_eq!(seen.last(), Some(&(1, 1)), "{lang:?}: {seen:?}");
        assert!(
            seen.iter().all(|&(c, a)| c == 1 && a <= 2),
            "{lang:?}: {seen:?}"
        );
        drop(high);
        f.expect_line("HELD");
        f.release();
    }
}
