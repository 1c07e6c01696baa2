//! `dbslots watch`: a live terminal view of one pool (and the server's
//! connections), redrawn every second.
//!
//! The screen is a pure function of the readings ([`render`]), which the
//! unit tests call; the loop around it only reads, draws and waits for a
//! key. The terminal is put in raw mode on the alternate screen by a guard
//! whose `Drop` (also reached on errors and panics) puts it back; `q`,
//! `Esc`, Ctrl-C, SIGINT/SIGTERM/SIGHUP and a terminal that hangs up all
//! end the loop through that guard. The server is read on a background task, so a slow server never
//! delays a key press.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::{cursor, queue, terminal};
use dbslots_core::{Pool, PoolAddr, PoolOptions, PoolStats};
use dbslots_mysql::ServerLimits;

use crate::common::{format_unix_ms, now_unix_ms};
use dbslots_mysql::ServerSource;

/// How often the view is redrawn.
const REFRESH: Duration = Duration::from_secs(1);

/// Shows a pool live in the terminal: capacity, slots in use, waiters,
/// counters and holders, redrawn every second; `q` or Ctrl-C quits.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The pool
    /// [default: $XDG_RUNTIME_DIR/dbslots/default, or /run/dbslots/default for root]
    #[arg(long, env = dbslots_core::env::POOL, hide_env_values = true, value_name = "DIR")]
    pool: Option<String>,

    /// The MySQL server whose connections to show as well (read with a
    /// monitor connection outside any pool)
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    url: Option<String>,
}

/// Runs `dbslots watch` until `q`, Ctrl-C or a terminating signal.
pub fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    if !std::io::stdout().is_terminal() {
        bail!(
            "dbslots watch draws a live view and needs a terminal; \
             for scripts and pipes use `dbslots status` (or `dbslots status --json`)"
        );
    }
    if let Some(url) = &args.url {
        // A typo shows now, not as "cannot read the server" for ever.
        dbslots_mysql::ServerUrl::parse(url)?;
    }
    let addr = match &args.pool {
        Some(p) => PoolAddr::parse(p)?,
        None => PoolAddr::Dir(dbslots_core::default_pool_dir()?),
    };
    let shown = addr.to_string();
    let pool = Pool::open(addr, PoolOptions::new()).with_context(|| {
        format!("cannot open pool {shown} (create it first, for example with `dbslots exec --pool {shown} --capacity N -- true`)")
    })?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        // SIGINT from outside the terminal, SIGTERM and SIGHUP end the view
        // through the same path as `q` (in raw mode Ctrl-C is a key).
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("cannot install the signal handler")?;
    }

    let server = Arc::new(Mutex::new(None::<ServerView>));
    let runtime = match &args.url {
        Some(url) => {
            let rt = crate::common::runtime()?;
            let source = ServerSource::new(url.clone());
            let slot = Arc::clone(&server);
            let url = dbslots_core::redact(url);
            rt.spawn(async move {
                loop {
                    let snapshot = source.read(REFRESH).await;
                    let reading = snapshot.current().cloned();
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(ServerView {
                        url: url.clone(),
                        reading: reading.map(|r| r.limits),
                    });
                    tokio::time::sleep(REFRESH).await;
                }
            });
            Some(rt)
        }
        None => None,
    };

    let result = {
        let _screen = Screen::enter()?;
        view_loop(&pool, &server, &stop)
    };
    if let Some(rt) = runtime {
        rt.shutdown_timeout(Duration::from_millis(200));
    }
    result.map(|()| ExitCode::SUCCESS)
}

fn view_loop(
    pool: &Pool,
    server: &Mutex<Option<ServerView>>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    let input = TerminalInput::open().context("cannot read the terminal's input")?;
    loop {
        let stats = pool.stats().map_err(|e| e.to_string());
        let (width, height) = terminal::size().unwrap_or((80, 24));
        let server_view = server.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let lines = render(&stats, server_view.as_ref(), width, height, now_unix_ms());
        let gates = dbslots_gate::read_gates(pool).unwrap_or_default();
        let lines = with_gate_lines(lines, &gates, width, height);
        draw(&mut out, &lines)?;
        let next = Instant::now() + REFRESH;
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match input.wait(left.min(Duration::from_millis(100))) {
                // Nobody can see the view or quit it: end, do not spin.
                Input::Gone => return Ok(()),
                Input::Nothing => {}
                Input::Ready => {
                    while event::poll(Duration::ZERO)? {
                        match event::read()? {
                            Event::Key(key) if key.kind != KeyEventKind::Release => {
                                let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL)
                                    && matches!(key.code, KeyCode::Char('c' | 'C'));
                                if ctrl_c
                                    || matches!(key.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc)
                                {
                                    return Ok(());
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            // Redraw at once for a new size (crossterm's own resize event
            // is only read with input, see `TerminalInput`).
            if terminal::size().unwrap_or((80, 24)) != (width, height) {
                break;
            }
        }
    }
}

/// The terminal's input, waited on by hand rather than with crossterm's
/// `event::poll`: crossterm's reader retries a read that returns 0 at once
/// and for ever, and a terminal that hung up (a closed window, a killed
/// tmux or ssh session) returns 0, so a view that no SIGHUP reached (it is
/// not the session leader, and its shell did not pass the hang-up on)
/// would spin a core until killed. Here the hang-up is seen (`POLLHUP`)
/// and ends the view; crossterm reads only once input is there.
struct TerminalInput {
    /// The terminal crossterm reads: standard input if it is one, else
    /// `/dev/tty` (opened here only to be polled).
    fd: std::os::fd::OwnedFd,
}

/// What [`TerminalInput::wait`] found.
enum Input {
    Ready,
    Nothing,
    Gone,
}

impl TerminalInput {
    fn open() -> std::io::Result<TerminalInput> {
        use std::os::fd::AsFd;
        let fd = if std::io::stdin().is_terminal() {
            std::io::stdin().as_fd().try_clone_to_owned()?
        } else {
            std::fs::File::open("/dev/tty")?.into()
        };
        Ok(TerminalInput { fd })
    }

    fn wait(&self, timeout: Duration) -> Input {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            // A timeout, or a signal (SIGWINCH, SIGTERM): look again.
            return Input::Nothing;
        }
        if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            Input::Gone
        } else {
            Input::Ready
        }
    }
}

/// Puts one line per gate of the pool (`dbslots gate`) under the pool's
/// counters; the screen keeps its width and height.
pub fn with_gate_lines(
    mut lines: Vec<String>,
    gates: &[dbslots_gate::GateReport],
    width: u16,
    height: u16,
) -> Vec<String> {
    if gates.is_empty() {
        return lines;
    }
    let at = lines
        .iter()
        .position(|l| l.starts_with("counters"))
        .map_or(lines.len(), |i| i + 1);
    let extra = gates.iter().map(|g| {
        let listen = g.listen.first().map_or("-", String::as_str);
        // The host where one is known (every host's gates of a Redis pool).
        let place = if g.host.is_empty() {
            listen.to_string()
        } else {
            format!("{} {listen}", g.host)
        };
        let line = format!(
            "gate      {} {}  queued {}  active {}  accepted {}  admitted {}  timeouts {}  idle-closed {}{}",
            g.name,
            place,
            g.queued,
            g.active,
            g.accepted,
            g.admitted,
            g.queue_timeouts,
            g.idle_closes,
            if g.draining { "  DRAINING" } else { "" }
        );
        fit(&line, usize::from(width.max(20)))
    });
    lines.splice(at..at, extra);
    lines.truncate(usize::from(height.max(5)));
    lines
}

/// Writes `lines` from the top-left corner, clearing what is left of the
/// previous screen.
fn draw(out: &mut impl Write, lines: &[String]) -> std::io::Result<()> {
    for (row, line) in lines.iter().enumerate() {
        let row = u16::try_from(row).unwrap_or(u16::MAX);
        queue!(
            out,
            cursor::MoveTo(0, row),
            crossterm::style::Print(line),
            terminal::Clear(terminal::ClearType::UntilNewLine)
        )?;
    }
    let below = u16::try_from(lines.len()).unwrap_or(u16::MAX);
    queue!(
        out,
        cursor::MoveTo(0, below),
        terminal::Clear(terminal::ClearType::FromCursorDown)
    )?;
    out.flush()
}

/// Raw mode on the alternate screen with the cursor hidden, for as long as
/// it lives.
struct Screen;

impl Screen {
    fn enter() -> anyhow::Result<Screen> {
        terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
        // From here on, `Drop` restores the terminal whatever fails.
        let screen = Screen;
        // Log lines would land on the view when stderr is this terminal.
        if std::io::stderr().is_terminal() {
            crate::common::MUTE_LOGS.store(true, Ordering::Relaxed);
        }
        let mut out = std::io::stdout();
        crossterm::execute!(out, terminal::EnterAlternateScreen, cursor::Hide)
            .context("cannot switch to the alternate screen")?;
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let mut out = std::io::stdout();
        let _ = crossterm::execute!(out, cursor::Show, terminal::LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
        crate::common::MUTE_LOGS.store(false, Ordering::Relaxed);
    }
}

/// What the view shows of the server.
#[derive(Debug, Clone)]
pub struct ServerView {
    /// The server's URL, redacted.
    pub url: String,
    /// Its latest reading.
    pub reading: Result<ServerLimits, String>,
}

/// A bar of `width` cells (plus brackets) with `used` of `total` filled.
pub fn bar(used: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        let cells = (used.min(total) as u128 * width as u128).div_ceil(total as u128);
        usize::try_from(cells).unwrap_or(width).min(width)
    };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

fn held_for(now_ms: u64, since: Option<u64>) -> String {
    match since {
        Some(s) => format!("{:.1}s", now_ms.saturating_sub(s) as f64 / 1000.0),
        None => "-".into(),
    }
}

/// The screen: one string per line, none wider than `width`, at most
/// `height` lines (holders and waiters are cut with a "... more" line).
pub fn render(
    stats: &Result<PoolStats, String>,
    server: Option<&ServerView>,
    width: u16,
    height: u16,
    now_ms: u64,
) -> Vec<String> {
    let width = usize::from(width.max(20));
    let height = usize::from(height.max(5));
    let bar_width = width.saturating_sub(40).clamp(10, 50);
    let mut top = Vec::new();
    let mut lists: Vec<String> = Vec::new();
    top.push(format!(
        "dbslots watch  {}   q: quit",
        format_unix_ms(now_ms)
    ));
    top.push(String::new());
    match stats {
        Ok(s) => {
            top.push(format!("pool      {} ({})", s.pool, s.backend));
            top.push(format!(
                "slots     {} {} of {} in use{}",
                bar(u64::from(s.active), u64::from(s.capacity), bar_width),
                s.active,
                s.capacity,
                if s.over_capacity() > 0 {
                    format!(
                        "  OVER CAPACITY by {} (a shrink is draining)",
                        s.over_capacity()
                    )
                } else {
                    String::new()
                }
            ));
            top.push(format!(
                "          capacity {}  active {}  waiting {}  free {}  peak {}",
                s.capacity,
                s.active,
                s.waiting,
                s.free(),
                s.peak
            ));
            let h = &s.wait_histogram;
            let mean = if h.count > 0 {
                format!("{:.3}s", h.sum_seconds / h.count as f64)
            } else {
                "-".into()
            };
            top.push(format!(
                "counters  acquisitions {}  timeouts {}  mean wait {}",
                s.acquisitions, s.timeouts, mean
            ));
            lists.push(String::new());
            lists.push(format!("holders ({})", s.holders.len()));
            lists.push("  SLOT  PID       SINCE                  HELD".into());
            for holder in &s.holders {
                lists.push(format!(
                    "  {:<5} {:<9} {:<22} {}",
                    holder.slot,
                    holder.pid.map_or("?".into(), |p| p.to_string()),
                    holder.since_unix_ms.map_or("-".into(), format_unix_ms),
                    held_for(now_ms, holder.since_unix_ms)
                ));
            }
            if !s.waiters.is_empty() {
                lists.push(String::new());
                lists.push(format!("waiters ({})", s.waiters.len()));
                lists.push("  PID       SINCE                  WAITED".into());
                for w in &s.waiters {
                    lists.push(format!(
                        "  {:<9} {:<22} {}",
                        w.pid.map_or("?".into(), |p| p.to_string()),
                        w.since_unix_ms.map_or("-".into(), format_unix_ms),
                        held_for(now_ms, w.since_unix_ms)
                    ));
                }
            }
        }
        Err(e) => top.push(format!("pool      cannot read the stats: {e}")),
    }
    if let Some(server) = server {
        top.push(String::new());
        top.push(format!("server    {}", server.url));
        match &server.reading {
            Ok(l) => {
                top.push(format!(
                    "conns     {} {} of {} connected",
                    bar(l.threads_connected, l.max_connections, bar_width),
                    l.threads_connected,
                    l.max_connections
                ));
                top.push(format!(
                    "          threads_connected {}  max_connections {}  max_used_connections {}  account limit {}",
                    l.threads_connected,
                    l.max_connections,
                    l.max_used_connections,
                    l.user_limit().map_or("none".into(), |n| n.to_string())
                ));
            }
            Err(e) => {
                // The monitor's errors are long (the URL, what to do) and
                // may span lines (each attempt): wrapped, not cut, since
                // the reason is what the operator needs.
                let text = format!("cannot read the server: {e}");
                for line in text.lines() {
                    let chars: Vec<char> = line.chars().collect();
                    for chunk in chars.chunks(width.saturating_sub(10).max(10)) {
                        top.push(format!("          {}", chunk.iter().collect::<String>()));
                    }
                }
            }
        }
    }
    let room = height.saturating_sub(top.len());
    if lists.len() > room {
        let keep = room.saturating_sub(1);
        let hidden = lists.len() - keep;
        lists.truncate(keep);
        lists.push(format!("  ... {hidden} more lines (enlarge the terminal)"));
    }
    top.extend(lists);
    top.truncate(height);
    top.into_iter().map(|line| fit(&line, width)).collect()
}

/// `line` cut to `width` terminal columns (a CJK character or an emoji
/// takes two), with every control character (the line feeds of a
/// multi-line error, an ESC in a pool's name) shown as a space: written
/// raw, they would break the screen or command the terminal.
fn fit(line: &str, width: usize) -> String {
    use unicode_width::UnicodeWidthChar;
    let mut used = 0;
    let mut fitted = String::with_capacity(line.len().min(width * 4));
    for c in line.chars() {
        let c = if c.is_control() { ' ' } else { c };
        let w = c.width().unwrap_or(0);
        if used + w > width {
            break;
        }
        used += w;
        fitted.push(c);
    }
    fitted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_characters_count_as_the_columns_they_take() {
        use unicode_width::UnicodeWidthStr;
        // A pool named in Japanese: two columns a character.
        let line = fit("pool      /run/接続プール/db", 20);
        assert_eq!(line, "pool      /run/接続");
        assert!(line.width() <= 20);
        // A wide character that would straddle the edge is left out.
        assert_eq!(fit("ab接", 3), "ab");
        assert_eq!(fit("ab\u{1b}[2Jc", 6), "ab [2J");
    }
    use crate::readings::{gate_report, pool_stats, server_limits};
    use serde_json::json;

    fn stats(holders: u32) -> PoolStats {
        let holders: Vec<_> = (0..holders)
            .map(|i| json!({"slot": i, "pid": 100 + i, "since_unix_ms": 1_000}))
            .collect();
        pool_stats(json!({
            "active": holders.len(), "waiting": 1, "peak": 4, "acquisitions": 17,
            "timeouts": 2, "holders": holders,
            "waiters": [{"pid": 555, "since_unix_ms": 2_000}],
            "wait_histogram": {"bounds_seconds": [1.0], "counts": [16, 1],
                "sum_seconds": 3.4, "count": 17},
        }))
    }

    #[test]
    fn bars_fill_in_proportion_and_never_overflow() {
        assert_eq!(bar(0, 4, 8), "[........]");
        assert_eq!(bar(2, 4, 8), "[####....]");
        assert_eq!(bar(1, 3, 8), "[###.....]");
        assert_eq!(bar(4, 4, 8), "[########]");
        assert_eq!(bar(9, 4, 8), "[########]");
        assert_eq!(bar(3, 0, 4), "[....]");
    }

    #[test]
    fn the_screen_shows_the_numbers_holders_and_waiters() {
        let lines = render(&Ok(stats(3)), None, 100, 40, 4_500);
        let text = lines.join("\n");
        assert!(text.contains("3 of 4 in use"), "{text}");
        assert!(
            text.contains("capacity 4  active 3  waiting 1  free 1  peak 4"),
            "{text}"
        );
        assert!(
            text.contains("acquisitions 17  timeouts 2  mean wait 0.200s"),
            "{text}"
        );
        assert!(text.contains("holders (3)"), "{text}");
        for pid in [100, 101, 102, 555] {
            assert!(text.contains(&format!(" {pid} ")), "{pid} in {text}");
        }
        assert!(text.contains("3.5s"), "held for: {text}");
        assert!(!text.contains("server"), "{text}");
    }

    #[test]
    fn the_screen_fits_the_terminal() {
        let lines = render(&Ok(stats(30)), None, 40, 15, 4_500);
        assert_eq!(lines.len(), 15);
        assert!(lines.iter().all(|l| l.chars().count() <= 40));
        assert!(lines.last().unwrap().contains("more lines"), "{lines:#?}");
    }

    #[test]
    fn the_screen_shows_the_server_or_why_not() {
        let limits = server_limits(json!({
            "session_max_user_connections": 10, "account_max_user_connections": 10,
        }));
        let view = ServerView {
            url: "mysql://app:***@db/x".into(),
            reading: Ok(limits),
        };
        let text = render(&Ok(stats(1)), Some(&view), 160, 40, 0).join("\n");
        assert!(text.contains("7 of 151 connected"), "{text}");
        assert!(
            text.contains("max_used_connections 30  account limit 10"),
            "{text}"
        );
        assert!(text.contains("mysql://app:***@db/x"), "{text}");
        let view = ServerView {
            url: "mysql://db/x".into(),
            reading: Err("refused".into()),
        };
        let text = render(&Err("gone".into()), Some(&view), 100, 40, 0).join("\n");
        assert!(text.contains("cannot read the stats: gone"), "{text}");
        assert!(text.contains("cannot read the server: refused"), "{text}");
        // A long reason is wrapped, not cut: its end is what to do.
        let view = ServerView {
            url: "mysql://db/x".into(),
            reading: Err(format!("{}; what to do: give ssl-ca", "x".repeat(150))),
        };
        let lines = render(&Err("gone".into()), Some(&view), 60, 40, 0);
        assert!(lines.iter().all(|l| l.chars().count() <= 60), "{lines:#?}");
        assert!(
            lines.join("").contains("what to do: give ssl-ca"),
            "{lines:#?}"
        );
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        // The monitor's errors span lines ("attempt 1: ..." / "what to
        // do: ..."), and a pool directory may be named anything: written
        // raw, a line feed in raw mode breaks the screen and an ESC is a
        // terminal command.
        let view = ServerView {
            url: "mysql://app:***@db/x".into(),
            reading: Err("cannot connect to mysql://app:***@db/x: gave up after 1 attempts\n  attempt 1: error 2003: refused\nwhat to do: start it".into()),
        };
        let pool = pool_stats(json!({"pool": "/tmp/odd\nname\u{1b}[2J"}));
        let lines = render(&Ok(pool), Some(&view), 200, 40, 0);
        for line in &lines {
            assert!(!line.chars().any(char::is_control), "{line:?}");
        }
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("            attempt 1: error 2003")),
            "each line of the error on a line of its own: {lines:#?}"
        );
        let g = gate_report(json!({"name": "we\u{1b}]0;b\u{7}1"}));
        let shown = with_gate_lines(lines, &[g], 200, 40);
        for line in &shown {
            assert!(!line.chars().any(char::is_control), "{line:?}");
        }
    }

    #[test]
    fn gates_are_shown_under_the_counters_within_the_screen() {
        let lines: Vec<String> = ["top", "", "pool      p", "counters  x", "", "holders (0)"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(with_gate_lines(lines.clone(), &[], 80, 24), lines);
        let g = gate_report(json!({}));
        let shown = with_gate_lines(lines.clone(), &[g.clone(), g], 40, 6);
        assert_eq!(shown.len(), 6);
        assert!(
            shown[4].starts_with("gate      web-1 127.0.0.1:3307"),
            "{shown:#?}"
        );
        assert!(shown.iter().all(|l| l.chars().count() <= 40), "{shown:#?}");
    }
}
