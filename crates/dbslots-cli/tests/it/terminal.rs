//! `dbslots exec` at a terminal: an interactive bash on a pseudo-terminal
//! runs it, and the test types, presses Ctrl-C and Ctrl-Z, and reads what
//! the terminal shows. The command runs in a process group of its own;
//! these tests check that the terminal still behaves as without dbslots.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::exec::pid_in;

const PROMPT: &str = "PROMPT-READY> ";

/// An interactive bash (job control on) on a new pseudo-terminal, whose
/// controlling terminal it is.
struct Shell {
    master: File,
    child: Child,
    screen: Arc<Mutex<String>>,
    /// How much of the screen the test has read past.
    seen: usize,
}

impl Shell {
    fn start(dir: &std::path::Path) -> Shell {
        // SAFETY: the pty calls of libc on descriptors this test owns.
        let (master, slave) = unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(m >= 0, "posix_openpt");
            assert_eq!(libc::grantpt(m), 0);
            assert_eq!(libc::unlockpt(m), 0);
            let mut name = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
            let s = libc::open(
                name.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            assert!(s >= 0, "open the pty's slave");
            (File::from_raw_fd(m), OwnedFd::from_raw_fd(s))
        };
        let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup"));
        let mut cmd = Command::new("bash");
        cmd.args(["--norc", "--noprofile", "--noediting", "-i"])
            .env("PS1", PROMPT)
            .env("TERM", "dumb")
            .env("DBSLOTS", env!("CARGO_BIN_EXE_dbslots"))
            .env("RUST_LOG", "warn")
            .env_remove("DBSLOTS_POOL")
            .env_remove("DBSLOTS_SLOT")
            .current_dir(dir)
            .stdin(io(&slave))
            .stdout(io(&slave))
            .stderr(io(&slave));
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                // A session of its own, with the pty as its terminal.
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("bash");
        drop(slave);
        let screen = Arc::new(Mutex::new(String::new()));
        let mut reader = master.try_clone().expect("dup master");
        let sink = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("screen")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut shell = Shell {
            master,
            child,
            screen,
            seen: 0,
        };
        shell.expect(PROMPT);
        shell
    }

    /// Types `text` (a line ends with `\n`; `\x03` is Ctrl-C, `\x1a`
    /// Ctrl-Z).
    fn send(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).expect("type");
    }

    /// Waits (up to 15 s) until the terminal shows `what` after what was
    /// seen so far; returns what it showed up to there.
    #[track_caller]
    fn expect(&mut self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            {
                let screen = self.screen.lock().expect("screen");
                if let Some(i) = screen[self.seen..].find(what) {
                    let shown = screen[self.seen..self.seen + i + what.len()].to_owned();
                    self.seen += i + what.len();
                    return shown;
                }
                assert!(
                    Instant::now() < deadline,
                    "the terminal never showed {what:?}; it shows:\n{}",
                    &screen[self.seen..]
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        // SAFETY: SIGKILL to the test's own bash and its session's groups.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = self.master.as_raw_fd();
    }
}

/// Whether `pid` runs (a zombie does not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// What the shell types to run `dbslots exec` on the pool `pool` in the
/// current directory; `"$DBSLOTS"` is the binary under test.
const EXEC: &str = "\"$DBSLOTS\" exec --pool pool --capacity 1 --";

#[test]
fn ctrl_c_at_a_terminal_ends_the_command_and_everything_it_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shell = Shell::start(dir.path());
    // A background job of a script ignores SIGINT: it must go anyway.
    shell.send(&format!(
        "{EXEC} sh -c 'sleep 300 & echo $! > left; wait'\n"
    ));
    let sleep = pid_in(&dir.path().join("left"));
    shell.send("\x03");
    shell.expect(PROMPT);
    // dbslots died of the SIGINT, as the command did (bash would not have
    // gone on with a list after it, either).
    shell.send("echo \"status\"\"=$?\"\n");
    shell.expect("status=130");
    let deadline = Instant::now() + Duration::from_secs(2);
    while running(sleep) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let still = running(sleep);
    // SAFETY: kill(2) on the sleep this test started.
    unsafe { libc::kill(sleep, libc::SIGKILL) };
    assert!(!still, "the background job outlived the Ctrl-C");
}

#[test]
fn a_command_that_reads_the_terminal_gets_it_and_its_ctrl_c() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shell = Shell::start(dir.path());
    // (The quotes split the words the test waits for, so that the echo of
    // the typed line does not show them.)
    let reader = format!(
        "{EXEC} sh -c 'echo \"rea\"\"dy\"; read x; echo \"got\"\" $x\"'; echo \"status\"\"=$?\"\n"
    );
    shell.send(&reader);
    shell.expect("ready");
    shell.send("hello\n");
    shell.expect("got hello");
    shell.expect("status=0");
    shell.expect(PROMPT);
    // Ctrl-C while it reads: the command dies of it, and so does dbslots.
    shell.send(&reader);
    shell.expect("ready");
    shell.send("\x03");
    // (bash goes on with no list after a program that died of SIGINT.)
    shell.expect(PROMPT);
    shell.send("echo \"status\"\"=$?\"\n");
    shell.expect("status=130");
    // The shell has its terminal back.
    shell.send("echo \"al\"\"ive\"\n");
    shell.expect("alive");
}

#[test]
fn the_terminal_comes_back_when_what_the_command_left_had_it() {
    // The command exits and leaves a background job that then reads the
    // terminal: the job gets it (as the command would). When the job ends,
    // the terminal must come back to the caller's group: here a script that
    // reads a line after `dbslots exec`, which would otherwise be stopped
    // (SIGTTIN) as a background reader of a terminal nobody has.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("script.sh"),
        format!(
            "{EXEC} sh -c '(echo \"rea\"\"dy\"; x=$(head -n 1 </dev/tty); echo \"got\"\" $x\") &'\nread y\necho \"after\"\" $y\"\n"
        ),
    )
    .expect("write the script");
    let mut shell = Shell::start(dir.path());
    shell.send("sh script.sh; echo \"status\"\"=$?\"\n");
    shell.expect("ready");
    shell.send("one\n");
    shell.expect("got one");
    // The script's own read, after dbslots returned.
    shell.send("two\n");
    shell.expect("after two");
    shell.expect("status=0");
}

#[test]
fn ctrl_z_and_fg_stop_and_resume_a_command_at_the_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shell = Shell::start(dir.path());
    shell.send(&format!(
        "{EXEC} sh -c 'echo \"rea\"\"dy\"; read x; echo \"got\"\" $x\"'\n"
    ));
    shell.expect("ready");
    shell.send("\x1a");
    shell.expect("Stopped");
    shell.expect(PROMPT);
    shell.send("fg\n");
    // bash names the job it continues; then the command reads again.
    std::thread::sleep(Duration::from_millis(300));
    shell.send("again\n");
    shell.expect("got again");
    shell.expect(PROMPT);
}

#[test]
fn ctrl_c_stops_a_script_loop_that_runs_dbslots_exec() {
    // bash stops a script's loop at Ctrl-C only if the script's shell got
    // the SIGINT too and the program it waited for died of it. Both for a
    // command that leaves the terminal alone and for one that reads it
    // (whose group then has the terminal, so dbslots passes the SIGINT to
    // the script's group itself).
    for body in ["sleep 30", "read x"] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("loop.sh"),
            format!(
                "for i in 1 2 3; do {EXEC} sh -c 'echo \"st\"\"ep\"; {body}'; echo \"after-$i\"; done\n"
            ),
        )
        .expect("write the script");
        let mut shell = Shell::start(dir.path());
        shell.send("bash loop.sh\n");
        shell.expect("step");
        std::thread::sleep(Duration::from_millis(200));
        shell.send("\x03");
        let shown = shell.expect(PROMPT);
        shell.send("echo \"loop\"\"=$?\"\n");
        shell.expect("loop=130");
        assert!(
            !shown.contains("after-"),
            "{body}: the loop went on:\n{shown}"
        );
    }
}
