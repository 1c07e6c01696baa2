//! `dbslots gate`: a transparent MySQL gate; every client connection takes
//! a slot of the pool before it reaches the server.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use dbslots_gate::{Endpoint, Gate, GateOptions};
use tokio::signal::unix::{SignalKind, signal};

use crate::common::PoolArgs;
use crate::exec::parse_seconds;

/// Accepts MySQL clients, gives each one a slot of the pool before
/// connecting it to the server, and relays its bytes unchanged.
///
/// A client waits for its slot before it is greeted; after
/// --queue-timeout it gets error 1040 (08004) from the gate instead.
/// SIGTERM or SIGINT: stop accepting and let connections finish for
/// --drain seconds; a second one closes everything at once. SIGHUP logs
/// the gate's counters and carries on.
///
/// With a redis:// pool each slot is a lease the gate renews: when a
/// lease is lost (the gate was cut off from Redis or paused for longer
/// than the lease), the gate closes that connection, the client's socket
/// and the server's, before the pool can give the slot to anyone else.
#[derive(Debug, Args)]
pub struct GateArgs {
    /// Where clients connect: HOST:PORT or unix:/PATH (repeat for several)
    #[arg(long, required = true, value_name = "ADDR")]
    listen: Vec<Endpoint>,

    /// The MySQL server: HOST:PORT or unix:/PATH
    #[arg(long, value_name = "ADDR")]
    upstream: Endpoint,

    #[command(flatten)]
    pool: PoolArgs,

    /// Refuse a client with error 1040 after waiting this long for a slot
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, default_value = "30")]
    queue_timeout: Duration,

    /// Close a connection idle this long after the server's last answer,
    /// one per client waiting (never one whose query runs)
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    idle_timeout: Option<Duration>,

    /// Refuse a client (error 2003) when the server does not accept the
    /// connection within this time
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, default_value = "10")]
    connect_timeout: Duration,

    /// After SIGTERM, let open connections finish for this long
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, default_value = "30")]
    drain: Duration,

    /// The name the gate's counters are shown under, unique in the pool
    /// [default: the first --listen address; for a redis:// pool, the host
    /// and the first --listen address]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// Threads that relay bytes, each with its own event loop; a
    /// connection stays on one. Connections made one after another stay
    /// on the first thread (no hand-over); concurrent ones spread
    /// [default: 2, or 1 on a single core]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: Option<u16>,
}

/// Two threads where there are two cores: on 2 cores they relayed 12-20 %
/// more point selects over persistent connections than one, at the same
/// connect time (`docs/benchmarks.md`); more are for the user to ask for,
/// the gate shares its host with the application.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

/// Runs `dbslots gate`.
pub fn run(args: GateArgs) -> anyhow::Result<ExitCode> {
    match dbslots_gate::raise_open_file_limit() {
        Ok((before, after)) if before != after => {
            tracing::info!(before, after, "raised the open-file limit");
        }
        Ok((limit, _)) if limit < 4096 => {
            tracing::warn!(
                limit,
                "the open-file limit is low: each queued client needs one descriptor, each relayed client three; raise it (LimitNOFILE= in the systemd unit, ulimit -n)"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    // Accepting, queueing, publishing and relaying run on this one thread
    // (tokio's current-thread runtime: no hand-over between threads per
    // relayed packet); each further thread of --threads is a relay thread
    // with its own event loop.
    let relay_threads = args.threads.map_or_else(default_threads, usize::from) - 1;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Watched from the start: opening a Redis pool and binding may wait
    // seconds for its server, and a SIGHUP meanwhile (a reload sent as the
    // unit starts) is to be logged, not the end of the gate; a SIGTERM
    // stops the gate once it is bound.
    let (mut term, mut int, mut hup) = {
        let _in = runtime.enter();
        (
            signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
        )
    };
    let pool = args.pool.open()?;
    let upstream = args.upstream.to_string();
    let outcome = runtime.block_on(async move {
        let options = GateOptions::new(args.listen, args.upstream)
            .queue_timeout(args.queue_timeout)
            .idle_timeout(args.idle_timeout)
            .connect_timeout(args.connect_timeout)
            .name(args.name)
            .relay_threads(relay_threads);
        let gate = Gate::bind(pool.clone(), options).await?;
        let listen: Vec<String> = gate
            .local_endpoints()
            .iter()
            .map(ToString::to_string)
            .collect();
        tracing::info!(
            gate = gate.name(),
            listen = %listen.join(" "),
            upstream = %upstream,
            pool = %pool.addr(),
            capacity = pool.capacity(),
            "gate ready"
        );
        let control = gate.control();
        let drain = args.drain;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    _ = hup.recv() => { log_counters(&control.report()); continue; }
                }
                if control.is_stopping() {
                    tracing::warn!("second stop signal: closing every connection now");
                    control.stop();
                } else {
                    tracing::info!(drain = ?drain, "stop signal: draining");
                    control.drain(drain);
                }
            }
        });
        let report = gate.run().await;
        tracing::info!(
            accepted = report.accepted,
            admitted = report.admitted,
            queue_timeouts = report.queue_timeouts,
            idle_closes = report.idle_closes,
            "gate stopped"
        );
        anyhow::Ok(ExitCode::SUCCESS)
    });
    // A Redis call still running on the blocking pool (a pool that stopped
    // answering) must not hold the exit up: its work is over.
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome
}

/// The SIGHUP log line: the gate's counters now.
fn log_counters(g: &dbslots_gate::GateReport) {
    tracing::info!(
        gate = %g.name, host = %g.host, accepted = g.accepted, admitted = g.admitted,
        queued = g.queued, active = g.active, queue_timeouts = g.queue_timeouts,
        idle_closes = g.idle_closes, "counters (SIGHUP)"
    );
}
