//! Throwaway Redis servers without persistence.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::docker::{self, Container};
use crate::install::install_with_apt;
use crate::process::{STOP_GRACE, ServerProcess, find_program, free_port, tail, temp_dir};
use crate::{Backend, DetachedState};

/// Environment variable choosing the container image of the container
/// backend; [`DEFAULT_REDIS_IMAGE`] when unset.
pub const REDIS_IMAGE_ENV: &str = "DBSLOTS_TEST_REDIS_IMAGE";
/// The container image used when [`REDIS_IMAGE_ENV`] is unset.
pub const DEFAULT_REDIS_IMAGE: &str = "redis:7";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const PORT_ATTEMPTS: usize = 5;

/// How to start a [`RedisServer`].
///
/// Every option beyond `attached` and `image` needs a local `redis-server`
/// (Debian's is built with TLS): a server that uses one is always a
/// process, never a container.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Whether the server dies with the process that starts it even when
    /// `Drop` cannot run; see [`crate::MysqlOptions::attached`]. True by
    /// default.
    pub attached: bool,
    /// Container image for the container backend; defaults to
    /// `$DBSLOTS_TEST_REDIS_IMAGE`, else [`DEFAULT_REDIS_IMAGE`].
    pub image: Option<String>,
    /// `requirepass`: the password of the `default` user.
    pub password: Option<String>,
    /// ACL users `(name, password)`, each allowed every key, channel and
    /// command.
    pub users: Vec<(String, String)>,
    /// Also listen with TLS on [`RedisServer::tls_port`], with a
    /// certificate for `127.0.0.1`/`localhost` signed by a throwaway CA
    /// ([`RedisServer::ca_path`]).
    pub tls: bool,
    /// Also listen on a Unix socket ([`RedisServer::socket_path`]).
    pub unix_socket: bool,
    /// Start as a replica of the server on this port of 127.0.0.1.
    pub replica_of: Option<u16>,
    /// Start with `cluster-enabled yes`, as a node of a Redis Cluster
    /// (its bus on a free port of its own; with [`RedisOptions::tls`], the
    /// bus and replication use TLS too).
    pub cluster: bool,
    /// With [`RedisOptions::tls`]: a directory holding `ca.crt`,
    /// `server.crt` and `server.key` to use instead of a new throwaway CA
    /// (the nodes of one cluster share one).
    pub tls_certificates: Option<PathBuf>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            attached: true,
            image: None,
            password: None,
            users: Vec::new(),
            tls: false,
            unix_socket: false,
            replica_of: None,
            cluster: false,
            tls_certificates: None,
        }
    }
}

impl RedisOptions {
    fn needs_process(&self) -> bool {
        self.password.is_some()
            || !self.users.is_empty()
            || self.tls
            || self.unix_socket
            || self.replica_of.is_some()
            || self.cluster
    }
}

/// A running throwaway Redis server on 127.0.0.1, stopped and deleted on
/// drop. It keeps nothing on disk (`--save "" --appendonly no`), so a
/// [`RedisServer::restart`] comes back empty.
///
/// The backend is chosen like [`crate::MysqlServer`]'s: a `redis:7`
/// container when `docker info` succeeds, else a local `redis-server`
/// (installed with apt-get as root when missing).
#[derive(Debug)]
pub struct RedisServer {
    backing: Option<Backing>,
    port: u16,
    tls_port: Option<u16>,
    options: RedisOptions,
    version: String,
}

#[derive(Debug)]
enum Backing {
    Process {
        program: PathBuf,
        dir: TempDir,
        /// `None` only between stopping and starting again in `restart`.
        process: Option<ServerProcess>,
    },
    Container(Container),
}

impl RedisServer {
    /// Starts an attached server with the default options and waits until
    /// it answers PING.
    ///
    /// # Errors
    ///
    /// See [`RedisServer::start_with`].
    pub fn start() -> Result<Self> {
        Self::start_with(RedisOptions::default())
    }

    /// Starts a server and waits until it answers PING.
    ///
    /// # Errors
    ///
    /// Fails when no backend is available (the message says how to get one)
    /// or the server does not answer in time (the message holds its log).
    pub fn start_with(options: RedisOptions) -> Result<Self> {
        let mut server = if !options.needs_process() && docker::available() {
            let image = options
                .image
                .clone()
                .or_else(|| {
                    std::env::var(REDIS_IMAGE_ENV)
                        .ok()
                        .filter(|v| !v.is_empty())
                })
                .unwrap_or_else(|| DEFAULT_REDIS_IMAGE.to_owned());
            let args: Vec<String> = ["redis-server", "--save", "", "--appendonly", "no"]
                .map(String::from)
                .into();
            let (container, port) = Container::run(&image, 6379, &[], &args)
                .with_context(|| format!("cannot start a container of {image}"))?;
            let server = Self {
                backing: Some(Backing::Container(container)),
                port,
                tls_port: None,
                options,
                version: String::new(),
            };
            server.wait_until_ready()?;
            server
        } else {
            let program = match find_program(&["redis-server"]) {
                Some(program) => program,
                None => {
                    install_with_apt(
                        "redis-server",
                        "redis-server",
                        || find_program(&["redis-server"]).is_some(),
                        "no redis-server found: install the `redis-server` package, or a \
                         container engine (`docker info` must succeed)",
                    )?;
                    find_program(&["redis-server"])
                        .context("redis-server is still missing after installing it")?
                }
            };
            Self::start_process(program, options)?
        };
        server.version = server
            .read_version()
            .unwrap_or_else(|_| "unknown".to_owned());
        Ok(server)
    }

    /// Whether [`RedisServer::start`] can run a server here without
    /// installing anything.
    pub fn available() -> bool {
        docker::available() || find_program(&["redis-server"]).is_some()
    }

    fn start_process(program: PathBuf, options: RedisOptions) -> Result<Self> {
        let dir = temp_dir("dbslots-redis-")?;
        if options.tls && options.tls_certificates.is_none() {
            make_certificates(dir.path())?;
        }
        let mut server = Self {
            backing: Some(Backing::Process {
                program,
                dir,
                process: None,
            }),
            port: 0,
            tls_port: None,
            options,
            version: String::new(),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = free_port()?;
            if server.options.tls {
                server.tls_port = Some(free_port()?);
            }
            match server.spawn_process() {
                Ok(()) => return Ok(server),
                Err(e)
                    if attempt < PORT_ATTEMPTS && format!("{e:#}").contains("already in use") => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts the process on `self.port` and waits for it; on failure the
    /// process is stopped again.
    fn spawn_process(&mut self) -> Result<()> {
        let port = self.port;
        let attached = self.options.attached;
        let options = self.options.clone();
        let tls_port = self.tls_port;
        let Some(Backing::Process {
            program,
            dir,
            process,
        }) = self.backing.as_mut()
        else {
            unreachable!("only called for the process backend")
        };
        let log = dir.path().join("redis.log");
        let mut command = Command::new(&*program);
        command
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--dir"])
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log);
        if let Some(password) = &options.password {
            command.arg("--requirepass").arg(password);
        }
        for (user, password) in &options.users {
            // redis-server joins the words after `--user` into one ACL rule.
            command
                .arg("--user")
                .arg(user)
                .arg("on")
                .arg(format!(">{password}"))
                .args(["~*", "&*", "+@all"]);
        }
        if let Some(tls_port) = tls_port {
            let certs = options
                .tls_certificates
                .clone()
                .unwrap_or_else(|| dir.path().to_owned());
            let file = |name: &str| certs.join(name);
            command
                .arg("--tls-port")
                .arg(tls_port.to_string())
                .arg("--tls-cert-file")
                .arg(file("server.crt"))
                .arg("--tls-key-file")
                .arg(file("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(file("ca.crt"))
                .args(["--tls-auth-clients", "no"]);
        }
        if options.unix_socket {
            command
                .arg("--unixsocket")
                .arg(dir.path().join("redis.sock"))
                .args(["--unixsocketperm", "700"]);
        }
        if let Some(master) = options.replica_of {
            command
                .args(["--replicaof", "127.0.0.1"])
                .arg(master.to_string());
            if let Some(password) = &options.password {
                command.arg("--masterauth").arg(password);
            }
        }
        if options.cluster {
            command
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(dir.path().join("nodes.conf"))
                .args(["--cluster-node-timeout", "2000"])
                // Not the default port + 10000, which may not exist.
                .arg("--cluster-port")
                .arg(free_port()?.to_string());
            if tls_port.is_some() {
                command.args(["--tls-cluster", "yes", "--tls-replication", "yes"]);
            }
        }
        let auth = options.password.clone();
        let mut spawned = ServerProcess::spawn(command, attached, &dir.path().join("server.out"))?;
        let started = Instant::now();
        loop {
            if let Some(status) = spawned.exited() {
                bail!(
                    "redis-server exited ({status}) before answering PING\n{}",
                    tail(&log, 20)
                );
            }
            match ping(port, auth.as_deref()) {
                Ok(()) => break,
                Err(e) if started.elapsed() > READY_TIMEOUT => {
                    let _ = spawned.stop(STOP_GRACE);
                    bail!(
                        "redis-server on port {port} did not answer PING within {} s: {e:#}\n{}",
                        READY_TIMEOUT.as_secs(),
                        tail(&log, 20)
                    );
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
        *process = Some(spawned);
        Ok(())
    }

    fn wait_until_ready(&self) -> Result<()> {
        let started = Instant::now();
        loop {
            match ping(self.port, self.options.password.as_deref()) {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() > READY_TIMEOUT => {
                    let log = match &self.backing {
                        Some(Backing::Container(container)) => container.log_tail(),
                        _ => String::new(),
                    };
                    bail!(
                        "Redis on port {} did not answer PING within {} s: {e:#}\n{log}",
                        self.port,
                        READY_TIMEOUT.as_secs()
                    );
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// `redis://127.0.0.1:PORT/0` (without credentials).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The TLS port, when started with [`RedisOptions::tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The throwaway CA that signed the server's certificate (PEM), when
    /// started with [`RedisOptions::tls`].
    pub fn ca_path(&self) -> Option<PathBuf> {
        match (&self.backing, self.options.tls) {
            (Some(Backing::Process { dir, .. }), true) => Some(
                self.options
                    .tls_certificates
                    .as_deref()
                    .unwrap_or(dir.path())
                    .join("ca.crt"),
            ),
            _ => None,
        }
    }

    /// The server's temporary directory (a process's, not a container's).
    pub(crate) fn log_dir(&self) -> Option<PathBuf> {
        match &self.backing {
            Some(Backing::Process { dir, .. }) => Some(dir.path().to_owned()),
            _ => None,
        }
    }

    /// The Unix socket, when started with [`RedisOptions::unix_socket`].
    pub fn socket_path(&self) -> Option<PathBuf> {
        match (&self.backing, self.options.unix_socket) {
            (Some(Backing::Process { dir, .. }), true) => Some(dir.path().join("redis.sock")),
            _ => None,
        }
    }

    /// Runs one command (words separated by spaces) on the plain port,
    /// authenticated as `default` when the server has a password, and
    /// returns a simple or bulk string reply.
    ///
    /// # Errors
    ///
    /// When the server cannot be reached or answers with an error.
    pub fn command(&self, line: &str) -> Result<String> {
        command(self.port, self.options.password.as_deref(), line)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server version from `INFO server`, or `unknown`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether the server is a local process or a container.
    pub fn backend(&self) -> Backend {
        match self.backing {
            Some(Backing::Container(_)) => Backend::Container,
            _ => Backend::Process,
        }
    }

    /// Stops the server and starts it again on the same port, empty, and
    /// waits until it answers PING: what a client sees when Redis restarts.
    ///
    /// # Errors
    ///
    /// Fails when the server cannot be stopped, or does not come back within
    /// 30 s (for example because another process took the port meanwhile).
    pub fn restart(&mut self) -> Result<()> {
        match self.backing.as_mut() {
            Some(Backing::Process { process, .. }) => {
                if let Some(running) = process.take() {
                    running.stop(STOP_GRACE)?;
                }
                // The port was ours a moment ago; retry while something else
                // (a connection in TIME_WAIT does not count) briefly holds it.
                let started = Instant::now();
                loop {
                    match self.spawn_process() {
                        Ok(()) => return Ok(()),
                        Err(e) if started.elapsed() < READY_TIMEOUT => {
                            if !format!("{e:#}").contains("already in use") {
                                return Err(e);
                            }
                            thread::sleep(Duration::from_millis(200));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Some(Backing::Container(container)) => {
                container.restart()?;
                self.wait_until_ready()
            }
            None => bail!("the Redis server is stopped"),
        }
    }

    /// Stops the server and deletes its temporary directory (or removes the
    /// container).
    ///
    /// # Errors
    ///
    /// Fails when the process cannot be reaped or the directory or container
    /// cannot be removed.
    pub fn stop(mut self) -> Result<()> {
        match self.backing.take() {
            Some(backing) => backing.stop(),
            None => Ok(()),
        }
    }

    /// Leaves the server running and returns what is needed to stop it
    /// later, like [`crate::MysqlServer::detach`].
    pub fn detach(mut self) -> DetachedState {
        let port = self.port;
        match self.backing.take() {
            Some(Backing::Process { dir, process, .. }) => DetachedState::Process {
                pid: process.map_or(0, ServerProcess::release),
                port,
                dir: dir.keep(),
            },
            Some(Backing::Container(container)) => DetachedState::Container {
                id: container.release(),
                port,
            },
            None => unreachable!("only stop and detach take the server, and both consume it"),
        }
    }

    fn read_version(&self) -> Result<String> {
        let info = self.command("INFO server")?;
        info.lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .map(|v| v.trim().to_owned())
            .context("INFO server has no redis_version")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(backing) = self.backing.take()
            && let Err(e) = backing.stop()
        {
            eprintln!(
                "dbslots-testkit: cannot clean up the Redis server on port {}: {e:#}",
                self.port
            );
        }
    }
}

impl Backing {
    fn stop(self) -> Result<()> {
        match self {
            Backing::Process { dir, process, .. } => {
                let stopped = process.map_or(Ok(()), |p| p.stop(STOP_GRACE));
                let path = dir.path().to_owned();
                let removed = dir
                    .close()
                    .with_context(|| format!("cannot remove {}", path.display()));
                stopped.and(removed)
            }
            Backing::Container(container) => container.remove(),
        }
    }
}

/// Sends PING and expects `+PONG`.
fn ping(port: u16, password: Option<&str>) -> Result<()> {
    let reply = command(port, password, "PING")?;
    if reply == "PONG" {
        Ok(())
    } else {
        bail!("PING answered {reply:?}")
    }
}

/// Sends one inline command (after `AUTH` when there is a password) and
/// returns a simple-string, integer or bulk-string reply.
fn command(port: u16, password: Option<&str>, line: &str) -> Result<String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))
        .with_context(|| format!("cannot connect to Redis on {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    if let Some(password) = password {
        stream.write_all(format!("AUTH {password}\r\n").as_bytes())?;
        let mut ok = String::new();
        reader.read_line(&mut ok)?;
        if !ok.starts_with("+OK") {
            bail!("Redis refused the test password: {}", ok.trim_end());
        }
    }
    stream.write_all(format!("{line}\r\n").as_bytes())?;
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let first = first.trim_end();
    if let Some(simple) = first.strip_prefix('+').or_else(|| first.strip_prefix(':')) {
        Ok(simple.to_owned())
    } else if let Some(length) = first.strip_prefix('$') {
        let length: usize = length.parse().context("bad bulk-string length")?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    } else {
        bail!("Redis answered {line:?} with {first:?}")
    }
}

/// A throwaway CA and a server certificate for `127.0.0.1`/`localhost`
/// signed by it (`ca.crt`, `server.crt`, `server.key` in `dir`). The
/// certificate is a client certificate too: the nodes of a TLS cluster
/// present it to each other on the cluster bus, which requires one.
pub(crate) fn make_certificates(dir: &std::path::Path) -> Result<()> {
    crate::tls::make_certificates(
        dir,
        &crate::tls::Request {
            names: ["ca.crt", "server.crt", "server.key"],
            subject_alt_names: "DNS:localhost,IP:127.0.0.1",
            common_name: "localhost",
            client_auth: true,
        },
    )?;
    Ok(())
}
