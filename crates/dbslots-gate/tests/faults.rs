//! The gate under faults and hostile clients, against a fake server (a
//! listener that speaks first, as MySQL does) and a pool directory: no
//! MySQL needed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dbslots_core::{Pool, PoolOptions};
use dbslots_gate::{Gate, GateControl, GateOptions, GateReport};

/// A fake server on a free port: every connection it accepts is counted
/// and served by `serve` on a thread of its own.
struct FakeServer {
    addr: String,
    accepted: Arc<AtomicUsize>,
}

fn fake_server(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let serve = serve.clone();
            std::thread::spawn(move || serve(s));
        }
    });
    FakeServer { addr, accepted }
}

/// Greets, then echoes until the client closes.
fn greet_and_echo(mut s: TcpStream) {
    if s.write_all(b"GREETING").is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// A gate running on its own runtime, stopped on drop.
struct RunningGate {
    addr: String,
    control: GateControl,
    done: Option<std::thread::JoinHandle<Option<GateReport>>>,
    _dir: tempfile::TempDir,
}

impl RunningGate {
    fn start(
        pool: &Pool,
        upstream: &str,
        dir: tempfile::TempDir,
        tune: impl FnOnce(GateOptions) -> GateOptions,
    ) -> RunningGate {
        RunningGate::try_start(pool, upstream, dir, tune).unwrap()
    }

    /// [`RunningGate::start`], or the error binding gave.
    fn try_start(
        pool: &Pool,
        upstream: &str,
        dir: tempfile::TempDir,
        tune: impl FnOnce(GateOptions) -> GateOptions,
    ) -> Result<RunningGate, dbslots_gate::Error> {
        let options = tune(
            GateOptions::new(
                vec!["127.0.0.1:0".parse().unwrap()],
                upstream.parse().unwrap(),
            )
            .stats_dir(Some(dir.path().join("gates"))),
        );
        let pool = pool.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let gate = match Gate::bind(pool, options).await {
                    Ok(gate) => gate,
                    Err(e) => {
                        tx.send(Err(e)).unwrap();
                        return None;
                    }
                };
                tx.send(Ok((gate.local_endpoints()[0].to_string(), gate.control())))
                    .unwrap();
                Some(gate.run().await)
            })
        });
        let (addr, control) = match rx.recv().unwrap() {
            Ok(bound) => bound,
            Err(e) => {
                let _ = done.join();
                return Err(e);
            }
        };
        Ok(RunningGate {
            addr,
            control,
            done: Some(done),
            _dir: dir,
        })
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// The report once `ok` holds, or a panic naming `what` after `within`.
    fn report_when(
        &self,
        what: &str,
        within: Duration,
        ok: impl Fn(&GateReport) -> bool,
    ) -> GateReport {
        let deadline = Instant::now() + within;
        loop {
            let r = self.control.report();
            if ok(&r) {
                return r;
            }
            assert!(Instant::now() < deadline, "{what}: {r:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RunningGate {
    fn drop(&mut self) {
        self.control.stop();
        if let Some(done) = self.done.take() {
            let _ = done.join();
        }
    }
}

fn file_pool(capacity: u32) -> (Pool, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(
        dir.path().join("pool").to_str().unwrap(),
        PoolOptions::new().capacity(capacity),
    )
    .unwrap();
    (pool, dir)
}

/// A queued client that wrote something before its greeting (a port
/// scanner, an HTTP probe, a client of another protocol) and then hung up
/// (closed, or reset) is gone like one that wrote nothing: it leaves the
/// queue at once, and the next free slot neither goes to it nor opens a
/// server connection for it.
#[test]
fn a_queued_client_that_wrote_before_its_greeting_and_hung_up_leaves_the_queue() {
    for reset in [false, true] {
        let server = fake_server(greet_and_echo);
        let (pool, dir) = file_pool(1);
        let gate = RunningGate::start(&pool, &server.addr, dir, |o| {
            o.queue_timeout(Duration::from_secs(60))
        });
        let held = pool.try_acquire().unwrap().expect("the one slot");

        let mut probe = gate.connect();
        gate.report_when("the probe queues", Duration::from_secs(5), |r| {
            r.queued == 1
        });
        probe.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        if reset {
            socket_linger_zero(&probe);
        }
        drop(probe);

        let r = gate.report_when(
            &format!("a probe that hung up (reset: {reset}) leaves the queue"),
            Duration::from_secs(3),
            |r| r.queued == 0,
        );
        assert_eq!(r.abandoned, 1, "{r:#?}");

        drop(held);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            server.accepted.load(Ordering::SeqCst),
            0,
            "no server connection for a client that is gone"
        );
        assert_eq!(gate.control.report().admitted, 0);
    }
}

/// `SO_LINGER` 0: closing the socket resets the connection.
fn socket_linger_zero(s: &TcpStream) {
    rustix::net::sockopt::set_socket_linger(s, Some(Duration::ZERO)).unwrap();
}

/// A queued client that wrote before its greeting and stays is kept (its
/// bytes reach the server once it has a slot), and waiting on it does not
/// spin.
#[test]
fn a_queued_client_that_wrote_before_its_greeting_is_kept_without_spinning() {
    let server = fake_server(greet_and_echo);
    let (pool, dir) = file_pool(1);
    let gate = RunningGate::start(&pool, &server.addr, dir, |o| {
        o.queue_timeout(Duration::from_secs(60))
    });
    let held = pool.try_acquire().unwrap().expect("the one slot");
    let mut early = gate.connect();
    gate.report_when("the client queues", Duration::from_secs(5), |r| {
        r.queued == 1
    });
    early.write_all(b"early").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // This process's user + system time, in clock ticks (1/100 s).
    let cpu = || {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = after_name
            .split(' ')
            .skip(11)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        Duration::from_millis((f[0] + f[1]) * 10)
    };
    let before = cpu();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu() - before;
    assert!(used < Duration::from_millis(300), "{used:?} of CPU in 1 s");
    assert_eq!(gate.control.report().queued, 1);

    drop(held);
    let mut got = [0u8; 13];
    let read = early.read_exact(&mut got);
    let r = gate.control.report();
    read.unwrap_or_else(|e| panic!("{e}: {got:?} {} {} {}", r.queued, r.admitted, r.active));
    assert_eq!(&got, b"GREETINGearly");
}

/// A server that answers and closes while the client is still sending
/// (MySQL's "Got a packet bigger than 'max_allowed_packet' bytes": an
/// error, then the connection closed with the rest of the packet unread)
/// has its last bytes relayed to the client, as without the gate.
#[test]
fn a_servers_last_words_reach_a_client_that_is_still_sending() {
    fn answer_then_close(mut s: TcpStream) {
        let _ = s.write_all(b"GREETING");
        let mut head = [0u8; 4];
        let _ = s.read_exact(&mut head);
        let _ = s.write_all(b"ERR: packet too large");
        // Closed with the rest of the client's packet unread: a reset.
    }
    let server = fake_server(answer_then_close);

    // Without the gate, the client reads the server's answer after its
    // write fails.
    let direct = last_words(TcpStream::connect(&server.addr).unwrap());
    assert_eq!(direct, b"ERR: packet too large", "the control case");

    let (pool, dir) = file_pool(1);
    let gate = RunningGate::start(&pool, &server.addr, dir, |o| o);
    let through = last_words(gate.connect());
    assert_eq!(
        String::from_utf8_lossy(&through),
        "ERR: packet too large",
        "through the gate"
    );
    gate.report_when("the slot comes back", Duration::from_secs(3), |r| {
        r.active == 0
    });
    assert!(pool.try_acquire().unwrap().is_some());
}

/// Reads the greeting, sends a large packet until the write fails, and
/// returns what the server said after the greeting.
fn last_words(mut s: TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 8];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"GREETING");
    let chunk = vec![b'x'; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.write_all(&chunk).is_ok() {
        assert!(Instant::now() < deadline, "the write never failed");
    }
    let mut rest = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return rest,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
        }
    }
}

impl RunningGate {
    /// Stops the gate; its final counters.
    fn stop(mut self) -> GateReport {
        self.control.stop();
        let report = self.done.take().unwrap().join().unwrap();
        report.expect("a running gate was bound")
    }
}

/// Reads an ERR packet (in place of a greeting); its code.
fn refusal_code(s: &mut TcpStream) -> u16 {
    let mut head = [0u8; 7];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[4], 0xff, "an ERR packet: {head:?}");
    u16::from_le_bytes([head[5], head[6]])
}

/// Every accepted client is counted once, however it leaves: the counters
/// add up, so what a gate turned away can be told from its figures.
#[test]
fn every_accepted_client_is_counted_once_however_it_leaves() {
    let server = fake_server(greet_and_echo);
    let (pool, dir) = file_pool(1);
    let gate = RunningGate::start(&pool, &server.addr, dir, |o| {
        o.queue_timeout(Duration::from_secs(1))
    });
    let held = pool.try_acquire().unwrap().expect("the one slot");

    let mut timed_out = gate.connect();
    assert_eq!(refusal_code(&mut timed_out), 1040);
    let mut refused = gate.connect();
    let gone = gate.connect();
    gate.report_when("two queue", Duration::from_secs(5), |r| r.queued == 2);
    drop(gone);
    gate.report_when("one hangs up", Duration::from_secs(5), |r| r.abandoned == 1);
    let report = gate.stop();
    assert_eq!(refusal_code(&mut refused), 1040);
    drop(held);

    let r = &report;
    assert_eq!(r.accepted, 3, "{r:#?}");
    assert_eq!(
        r.accepted,
        r.admitted + r.queue_timeouts + r.abandoned + r.refused + r.queued,
        "accepted = admitted + queue_timeouts + abandoned + refused + queued: {r:#?}"
    );
    assert_eq!(r.refused, 1, "{r:#?}");
}

/// A connection in the middle of a result its client pauses reading (the
/// server blocked sending it, the gate holding bytes the client has not
/// taken) is busy, not idle: the idle timeout does not close it while
/// others wait. Once the client has read everything and nothing moves, it
/// is idle again and is closed for a waiter.
#[test]
fn a_result_the_client_pauses_reading_is_not_idle() {
    fn stream_big(mut s: TcpStream) {
        let _ = s.write_all(b"GREETING");
        let mut q = [0u8; 1];
        let _ = s.read_exact(&mut q);
        // About 16 MiB: more than the sockets between hold.
        let chunk = vec![b'r'; 64 * 1024];
        for _ in 0..256 {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = s.read_exact(&mut q);
    }
    let server = fake_server(stream_big);
    let (pool, dir) = file_pool(1);
    let gate = RunningGate::start(&pool, &server.addr, dir, |o| {
        o.idle_timeout(Some(Duration::from_secs(1)))
            .queue_timeout(Duration::from_secs(30))
    });
    let mut reader = gate.connect();
    let mut greeting = [0u8; 8];
    reader.read_exact(&mut greeting).unwrap();
    reader.write_all(b"Q").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _waiter = gate.connect();
    gate.report_when("a client waits", Duration::from_secs(5), |r| r.queued == 1);
    std::thread::sleep(Duration::from_secs(3));
    let r = gate.control.report();
    assert_eq!(r.idle_closes, 0, "closed in the middle of a result: {r:#?}");

    // The client reads the whole result: then, idle, it makes room.
    let mut rest = vec![0u8; 256 * 64 * 1024];
    reader.read_exact(&mut rest).unwrap();
    gate.report_when(
        "the idle connection is closed for the waiter",
        Duration::from_secs(5),
        |r| r.idle_closes == 1 && r.queued == 0,
    );
}

/// A slot that comes free once the gate is stopping does not open a
/// server connection only to close it at once (the client cut off before
/// or during its greeting, the server counting an aborted connect): the
/// client it would have gone to hears 1040, like every other client the
/// stop finds waiting.
#[test]
fn a_slot_freed_as_the_gate_stops_is_not_used_and_its_client_hears_1040() {
    let server = fake_server(greet_and_echo);
    for round in 0..20 {
        let (pool, dir) = file_pool(1);
        let held = pool.try_acquire().unwrap().expect("the one slot");
        let gate = RunningGate::start(&pool, &server.addr, dir, |o| o);
        let mut clients: Vec<TcpStream> = (0..4).map(|_| gate.connect()).collect();
        gate.report_when("four queue", Duration::from_secs(5), |r| r.queued == 4);
        // The stop first, then the slot: whichever the gate sees first,
        // the slot came after the stop.
        gate.control.stop();
        drop(held);
        let report = gate.stop();
        for (i, c) in clients.iter_mut().enumerate() {
            let mut bytes = Vec::new();
            let _ = c.read_to_end(&mut bytes);
            assert!(
                bytes.len() > 7 && bytes[4] == 0xff && bytes[5..7] == 1040u16.to_le_bytes(),
                "round {round}, client {i}: {bytes:02x?}; {report:#?}"
            );
        }
        assert_eq!(report.admitted, 0, "round {round}: {report:#?}");
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 0);
}

/// `--idle-timeout` closes one idle connection per waiting client, not
/// every idle connection the moment one client queues: the others stay
/// open, and their clients (persistent connections) need not reconnect.
#[test]
fn the_idle_timeout_closes_one_idle_connection_per_waiter() {
    let server = fake_server(greet_and_echo);
    let (pool, dir) = file_pool(4);
    let gate = RunningGate::start(&pool, &server.addr, dir, |o| {
        o.idle_timeout(Some(Duration::from_secs(1)))
            .queue_timeout(Duration::from_secs(30))
    });
    let greeted = |gate: &RunningGate| {
        let mut c = gate.connect();
        let mut greeting = [0u8; 8];
        c.read_exact(&mut greeting).unwrap();
        c
    };
    let _idle: Vec<TcpStream> = (0..4).map(|_| greeted(&gate)).collect();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(gate.control.report().idle_closes, 0, "nobody waits yet");

    let _first = gate.connect();
    gate.report_when("one closed for the waiter", Duration::from_secs(5), |r| {
        r.idle_closes == 1 && r.queued == 0
    });
    std::thread::sleep(Duration::from_millis(2500));
    let r = gate.control.report();
    assert_eq!(r.idle_closes, 1, "more closed than clients waited: {r:#?}");

    let _more: Vec<TcpStream> = (0..2).map(|_| gate.connect()).collect();
    gate.report_when(
        "two more closed for two waiters",
        Duration::from_secs(5),
        |r| r.idle_closes == 3 && r.queued == 0,
    );
    std::thread::sleep(Duration::from_millis(2500));
    let r = gate.control.report();
    assert_eq!(r.idle_closes, 3, "more closed than clients waited: {r:#?}");
    assert_eq!(r.active, 4, "{r:#?}");
}

/// The pool's waiters are read once a second and include the gate's own
/// agents. A client of the gate that waited long enough to be read among
/// them, then got its slot the ordinary way (a connection closed), must not
/// be counted as another user's waiter until the next read: an idle
/// connection coming due meanwhile is not closed for nobody.
///
/// The reads come 0.95 s after the gate starts and every second after; the
/// idle connection comes due at 1.5 s, between the read that saw the
/// waiter (0.95 s) and the next one (1.95 s), after the waiter was served.
#[test]
fn a_waiter_served_since_the_pools_waiters_were_read_closes_no_idle_connection() {
    let server = fake_server(greet_and_echo);
    for round in 0..3 {
        let (pool, dir) = file_pool(2);
        let started = Instant::now();
        let gate = RunningGate::start(&pool, &server.addr, dir, |o| {
            o.idle_timeout(Some(Duration::from_millis(1500)))
                .queue_timeout(Duration::from_secs(30))
        });
        let greeted = |gate: &RunningGate| {
            let mut c = gate.connect();
            let mut greeting = [0u8; 8];
            c.read_exact(&mut greeting).unwrap();
            c
        };
        let leaving = greeted(&gate);
        let _idle = greeted(&gate);
        let mut waiter = gate.connect();
        gate.report_when("the waiter queues", Duration::from_secs(5), |r| {
            r.queued == 1
        });
        // The waiter is read among the pool's waiters (its agent), then
        // gets the slot of a client that leaves, before anything is idle
        // long enough.
        std::thread::sleep(
            (started + Duration::from_millis(1150)).saturating_duration_since(Instant::now()),
        );
        drop(leaving);
        let mut greeting = [0u8; 8];
        waiter.read_exact(&mut greeting).unwrap();
        let served = started.elapsed();
        assert!(
            served < Duration::from_millis(1400),
            "round {round}: served too late for the test ({served:?})"
        );
        // `_idle` comes due at 1.5 s, when nobody waits any more.
        std::thread::sleep(Duration::from_millis(1200));
        let r = gate.control.report();
        assert_eq!(
            (r.idle_closes, r.queued),
            (0, 0),
            "round {round}: an idle connection closed for nobody: {r:#?}"
        );
    }
}

/// Runs the test `name` again in a process of its own with `marker` set
/// (it then plays the child's part: a test that changes a limit of the
/// whole process); its stdout and stderr, once it succeeded.
fn run_alone(name: &str, marker: &str) -> (String, String) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(marker, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// Set in the child process of the test below.
const LOW_LIMIT_CHILD: &str = "DBSLOTS_GATE_FAULTS_LOW_LIMIT_CHILD";

/// A gate whose open-file limit leaves no room for even one client (beside
/// what it keeps for the pool's agents, its slot files and a margin) would
/// accept nobody, ever: every client would wait in the listen backlog,
/// unanswered, with a warning that they wait "until others close". It must
/// not start, and say why. (In a process of its own: the limit is the
/// whole process's.)
#[test]
fn a_limit_too_low_for_a_single_client_is_an_error_at_bind() {
    if std::env::var_os(LOW_LIMIT_CHILD).is_some() {
        too_low_a_limit_child();
        return;
    }
    let (stdout, stderr) = run_alone(
        "a_limit_too_low_for_a_single_client_is_an_error_at_bind",
        LOW_LIMIT_CHILD,
    );
    assert!(
        stdout.contains("BIND-REFUSED: the open-file limit"),
        "the gate started with no room for a client: {stdout}\n{stderr}"
    );
}

/// Lowers this process's soft open-file limit to `room` above what it
/// has open now (only in a child run by [`run_alone`]: the limit is the
/// whole process's).
fn leave_room_for_open_files(room: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let hard = getrlimit(Resource::Nofile).maximum;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(open_now + room),
            maximum: hard,
        },
    )
    .unwrap();
}

/// The child: lowers its open-file limit to 40 above what it has open (a
/// client needs 5 here: its socket, the gate's two, the server's, the
/// slot's file), below what the gate reckons one client needs with a pool
/// of 140 (128 slot files cached, 16 agents), and prints what happens.
fn too_low_a_limit_child() {
    let server = fake_server(greet_and_echo);
    let (pool, dir) = file_pool(140);
    leave_room_for_open_files(40);
    let gate = match RunningGate::try_start(&pool, &server.addr, dir, |o| o) {
        Err(e) => {
            println!("BIND-REFUSED: {e}");
            return;
        }
        Ok(gate) => gate,
    };
    let mut c = gate.connect();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut greeting = [0u8; 8];
    match c.read_exact(&mut greeting) {
        Ok(()) => println!("SERVED"),
        Err(e) => println!("NOT-SERVED within 3 s ({e}): {:?}", gate.control.report()),
    }
}

/// Set in the child process of the test below.
const BACKLOG_CHILD: &str = "DBSLOTS_GATE_FAULTS_BACKLOG_CHILD";

/// At its open-file budget the gate leaves new clients in the listen
/// backlog; with `--idle-timeout` those are waiting clients like the
/// queued ones: an idle connection is closed for one, whose descriptors
/// then take it in. (Otherwise persistent connections that fill the
/// budget keep every later client out for as long as they live.)
#[test]
fn a_client_in_the_backlog_at_the_file_budget_gets_an_idle_connection_closed() {
    if std::env::var_os(BACKLOG_CHILD).is_some() {
        backlog_child();
        return;
    }
    let (stdout, stderr) = run_alone(
        "a_client_in_the_backlog_at_the_file_budget_gets_an_idle_connection_closed",
        BACKLOG_CHILD,
    );
    assert!(
        stdout.contains("BACKLOG-SERVED"),
        "the client in the backlog was not served: {stdout}\n{stderr}"
    );
}

/// The child: a limit with room for a few clients by the gate's budget
/// (a pool of 10, each client relayed), fills it with idle connections,
/// and says whether the next client, left in the backlog, is served.
fn backlog_child() {
    let server = fake_server(greet_and_echo);
    let (pool, dir) = file_pool(10);
    // The gate's runtime (2: epoll, its waker), 16 agents (2 each), a
    // margin of 16, 10 slot files, 3 per client: room for 2 to 4 clients,
    // whatever binding opens.
    leave_room_for_open_files(2 + 48 + 10 + 3 * 2 + 8);
    let gate = RunningGate::start(&pool, &server.addr, dir, |o| {
        o.idle_timeout(Some(Duration::from_secs(1)))
    });
    let mut idle = Vec::new();
    let mut backlogged = None;
    for _ in 0..10 {
        let mut c = gate.connect();
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut greeting = [0u8; 8];
        match c.read_exact(&mut greeting) {
            Ok(()) => idle.push(c),
            Err(_) => {
                backlogged = Some(c);
                break;
            }
        }
    }
    println!("{} idle connections fill the budget", idle.len());
    let mut c = backlogged.expect("a client left in the backlog");
    assert!(!idle.is_empty(), "room for one client at least");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greeting = [0u8; 8];
    match c.read_exact(&mut greeting) {
        Ok(()) => println!("BACKLOG-SERVED: {:?}", gate.control.report()),
        Err(e) => println!("BACKLOG-STUCK for 5 s ({e}): {:?}", gate.control.report()),
    }
}
