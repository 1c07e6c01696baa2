//! Throwaway MySQL and MariaDB servers with the accounts the tests expect.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::docker::{self, Container};
use crate::install::install_with_apt;
use crate::process::{
    STOP_GRACE, ServerProcess, find_program, free_port, is_root, run_captured, tail, temp_dir,
};
use crate::tls::{self, TlsFiles};
use crate::{Backend, DetachedState};

/// The database the ordinary account works in.
pub const DATABASE: &str = "dbslots_test";
/// The ordinary account: all privileges on [`DATABASE`] and on databases
/// named `dbslots_scratch*`, nothing global, so every connection limit of the
/// server applies to it.
pub const USER: &str = "dbslots";
/// The password of [`USER`].
pub const PASSWORD: &str = "dbslots-test-pw";
/// The administrative account: `ALL PRIVILEGES ON *.* WITH GRANT OPTION`, so
/// it holds SUPER/CONNECTION_ADMIN (it gets in beyond `max_connections`) and
/// may create further accounts.
pub const ADMIN_USER: &str = "dbslots_admin";
/// The password of [`ADMIN_USER`].
pub const ADMIN_PASSWORD: &str = "dbslots-admin-pw";
/// Environment variable choosing the container image of the container
/// backend; [`DEFAULT_MYSQL_IMAGE`] when unset.
pub const MYSQL_IMAGE_ENV: &str = "DBSLOTS_TEST_MYSQL_IMAGE";
/// The container image used when neither [`MysqlOptions::image`] nor
/// [`MYSQL_IMAGE_ENV`] names one.
pub const DEFAULT_MYSQL_IMAGE: &str = "mysql:8.4";

/// How long a local server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Containers initialize their data directory first, which takes longer.
const CONTAINER_READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How often a start is retried when the chosen port was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// How to start a [`MysqlServer`].
#[derive(Debug, Clone)]
pub struct MysqlOptions {
    /// `--max-connections` for the server; the server's default (151) when
    /// `None`. MariaDB raises values below 10 to 10: read
    /// `@@max_connections` when the exact limit matters.
    pub max_connections: Option<u32>,
    /// Further server options, such as `--max-user-connections=3`.
    pub extra_args: Vec<String>,
    /// Container image for the container backend; defaults to
    /// `$DBSLOTS_TEST_MYSQL_IMAGE`, else [`DEFAULT_MYSQL_IMAGE`].
    pub image: Option<String>,
    /// Whether the server dies with the process that starts it even when
    /// `Drop` cannot run (the process is killed, or the server sits in a
    /// `static`). True by default, as tests and `cargo xtask test` want;
    /// false for a server meant to outlive its starter
    /// ([`MysqlServer::detach`]). Local processes only: a container outlives
    /// a killed starter.
    pub attached: bool,
    /// Whether the server offers TLS, with a certificate for the name
    /// `localhost` (not for `127.0.0.1`) signed by a CA made at start (see
    /// [`MysqlServer::tls`]). False by default.
    pub tls: bool,
    /// `require_secure_transport=ON`: the server refuses TCP connections
    /// without TLS. Implies [`MysqlOptions::tls`].
    pub require_secure_transport: bool,
}

impl Default for MysqlOptions {
    fn default() -> Self {
        Self {
            max_connections: None,
            extra_args: Vec::new(),
            image: None,
            attached: true,
            tls: false,
            require_secure_transport: false,
        }
    }
}

impl MysqlOptions {
    /// The server's TLS arguments for certificates at `dir` as the server
    /// sees it.
    fn tls_args(&self, dir: &str) -> Vec<String> {
        let mut args = Vec::new();
        if self.tls || self.require_secure_transport {
            args.push(format!("--ssl-ca={dir}/{CA_FILE}"));
            args.push(format!("--ssl-cert={dir}/{CERT_FILE}"));
            args.push(format!("--ssl-key={dir}/{KEY_FILE}"));
        }
        if self.require_secure_transport {
            args.push("--require-secure-transport=ON".into());
        }
        args
    }

    fn wants_tls(&self) -> bool {
        self.tls || self.require_secure_transport
    }
}

const CA_FILE: &str = "ca.pem";
const CERT_FILE: &str = "server.pem";
const KEY_FILE: &str = "server-key.pem";

/// Makes a fresh CA and a server certificate for `dns_name` signed by it,
/// in `dir` (`ca.pem`, `server.pem`, `server-key.pem`), with the `openssl`
/// program (installed with apt-get as root when missing, saying so). Valid
/// for two days; EC P-256 keys (fast to make).
///
/// # Errors
///
/// When `openssl` is missing and cannot be installed, or fails.
pub fn make_certificates(dir: &Path, dns_name: &str) -> Result<TlsFiles> {
    tls::make_certificates(
        dir,
        &tls::Request {
            names: [CA_FILE, CERT_FILE, KEY_FILE],
            subject_alt_names: &format!("DNS:{dns_name}"),
            common_name: dns_name,
            client_auth: false,
        },
    )
}

/// A running throwaway MySQL or MariaDB server, stopped and deleted on drop.
///
/// The server listens on a free port of 127.0.0.1 only. It has a database
/// [`DATABASE`], an ordinary account [`USER`] and an administrative account
/// [`ADMIN_USER`]; root has an empty password and is reachable only from
/// inside (its socket, or the container).
///
/// # Backends
///
/// When `docker info` succeeds the server is a container of
/// [`MysqlOptions::image`]. Otherwise it is a local `mariadbd` or `mysqld`
/// process with its data directory in a fresh temporary directory; when
/// neither program exists and we are root on a machine with `apt-get`, the
/// `mariadb-server` package is installed first (and said so on stderr).
#[derive(Debug)]
pub struct MysqlServer {
    running: Option<Running>,
    port: u16,
    version: String,
    socket: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    tls: Option<TlsFiles>,
    /// Holds the certificates of a container's server.
    _tls_dir: Option<TempDir>,
}

#[derive(Debug)]
enum Running {
    Process {
        process: ServerProcess,
        dir: TempDir,
        client: PathBuf,
    },
    Container {
        container: Container,
        client: String,
    },
}

impl MysqlServer {
    /// Starts a server, waits until it answers `SELECT 1` and creates the
    /// test accounts.
    ///
    /// # Errors
    ///
    /// Fails when no backend is available (the message says how to get one),
    /// when the server does not become ready in time (the message holds the
    /// tail of its error log) or when creating the accounts fails.
    pub fn start(options: MysqlOptions) -> Result<Self> {
        let mut server = if docker::available() {
            start_container(&options)?
        } else {
            let program = match LocalProgram::find() {
                Some(program) => program,
                None => {
                    install_with_apt(
                        "mariadb-server",
                        "a MySQL or MariaDB server",
                        || LocalProgram::find().is_some(),
                        "no MySQL or MariaDB server found (looked for mariadbd or mysqld with \
                         mariadb-install-db and a mariadb or mysql client): install the \
                         `mariadb-server` or `mysql-server` package, or a container engine \
                         (`docker info` must succeed)",
                    )?;
                    LocalProgram::find()
                        .context("the MariaDB server is still missing after installing it")?
                }
            };
            start_process(&program, &options)?
        };
        server.set_up_accounts()?;
        server.version = server
            .root_sql("SELECT VERSION()")
            .context("cannot read the server version")?
            .trim()
            .to_owned();
        Ok(server)
    }

    /// Whether [`MysqlServer::start`] can run a server here without
    /// installing anything.
    pub fn available() -> bool {
        docker::available() || LocalProgram::find().is_some()
    }

    /// URL of the ordinary account over TCP:
    /// `mysql://dbslots:dbslots-test-pw@127.0.0.1:PORT/dbslots_test?prefer_socket=false`.
    pub fn user_url(&self) -> String {
        self.url(USER, PASSWORD)
    }

    /// URL of the administrative account, like [`MysqlServer::user_url`].
    pub fn admin_url(&self) -> String {
        self.url(ADMIN_USER, ADMIN_PASSWORD)
    }

    fn url(&self, user: &str, password: &str) -> String {
        format!(
            "mysql://{user}:{password}@127.0.0.1:{}/{DATABASE}?prefer_socket=false",
            self.port
        )
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's Unix socket; `None` for a container.
    pub fn socket(&self) -> Option<&Path> {
        self.socket.as_deref()
    }

    /// The server's data directory; `None` for a container.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// The certificates the server uses when started with
    /// [`MysqlOptions::tls`]: its certificate is issued for `localhost` only
    /// and signed by [`TlsFiles::ca`].
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The server version, as `SELECT VERSION()` reports it.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether the server is a local process or a container.
    pub fn backend(&self) -> Backend {
        match self.running {
            Some(Running::Container { .. }) => Backend::Container,
            _ => Backend::Process,
        }
    }

    /// Stops the server (SIGTERM, up to 10 s, then SIGKILL; or removes the
    /// container) and deletes its temporary directory. Dropping the server
    /// does the same but can only print errors.
    ///
    /// # Errors
    ///
    /// Fails when the process cannot be reaped, the directory cannot be
    /// removed or the container cannot be removed.
    pub fn stop(mut self) -> Result<()> {
        match self.running.take() {
            Some(running) => running.stop(),
            None => Ok(()),
        }
    }

    /// Leaves the server running and returns what is needed to stop it
    /// later, from another process. Meant for servers started with
    /// [`MysqlOptions::attached`] false: an attached server still dies with
    /// the process that started it.
    pub fn detach(mut self) -> DetachedState {
        let port = self.port;
        match self.running.take() {
            Some(Running::Process { process, dir, .. }) => DetachedState::Process {
                pid: process.release(),
                port,
                dir: dir.keep(),
            },
            Some(Running::Container { container, .. }) => DetachedState::Container {
                id: container.release(),
                port,
            },
            None => unreachable!("only stop and detach take the server, and both consume it"),
        }
    }

    /// Runs SQL as root (over the socket, or inside the container); returns
    /// the tab-separated result rows without column names.
    fn root_sql(&self, sql: &str) -> Result<String> {
        match self.running.as_ref() {
            Some(Running::Process { client, .. }) => {
                let socket = self.socket.as_deref().expect("a local server has a socket");
                local_sql(client, socket, sql)
            }
            Some(Running::Container { container, client }) => container_sql(container, client, sql),
            None => bail!("the server is stopped"),
        }
    }

    fn set_up_accounts(&self) -> Result<()> {
        let mut sql = format!("CREATE DATABASE IF NOT EXISTS `{DATABASE}`;\n");
        for host in ["%", "localhost"] {
            sql.push_str(&format!(
                "CREATE USER IF NOT EXISTS '{USER}'@'{host}' IDENTIFIED BY '{PASSWORD}';\n\
                 GRANT ALL PRIVILEGES ON `{DATABASE}`.* TO '{USER}'@'{host}';\n\
                 GRANT ALL PRIVILEGES ON `dbslots\\_scratch%`.* TO '{USER}'@'{host}';\n\
                 CREATE USER IF NOT EXISTS '{ADMIN_USER}'@'{host}' IDENTIFIED BY '{ADMIN_PASSWORD}';\n\
                 GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'{host}' WITH GRANT OPTION;\n"
            ));
        }
        sql.push_str("FLUSH PRIVILEGES;\n");
        self.root_sql(&sql)
            .context("cannot create the test database and accounts")
            .map(drop)
    }
}

impl Drop for MysqlServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take()
            && let Err(e) = running.stop()
        {
            eprintln!(
                "dbslots-testkit: cannot clean up the MySQL server on port {}: {e:#}",
                self.port
            );
        }
    }
}

impl Running {
    fn stop(self) -> Result<()> {
        match self {
            Running::Process { process, dir, .. } => {
                let stopped = process.stop(STOP_GRACE);
                let path = dir.path().to_owned();
                let removed = dir
                    .close()
                    .with_context(|| format!("cannot remove {}", path.display()));
                stopped.and(removed)
            }
            Running::Container { container, .. } => container.remove(),
        }
    }
}

/// The programs of a local installation.
struct LocalProgram {
    server: PathBuf,
    client: PathBuf,
    /// `mariadb-install-db` for MariaDB; `None` for MySQL, whose server
    /// initializes its own data directory.
    installer: Option<PathBuf>,
}

impl LocalProgram {
    fn find() -> Option<Self> {
        let server = find_program(&["mariadbd", "mysqld"])?;
        let client = find_program(&["mariadb", "mysql"])?;
        let mariadb = server.file_name().is_some_and(|name| name == "mariadbd")
            || Command::new(&server)
                .arg("--version")
                .output()
                .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("MariaDB"));
        let installer = if mariadb {
            Some(find_program(&["mariadb-install-db", "mysql_install_db"])?)
        } else {
            None
        };
        Some(Self {
            server,
            client,
            installer,
        })
    }

    /// Creates the system tables in `data`, which must not exist yet, with
    /// temporary files in `tmp`.
    fn initialize(&self, data: &Path, tmp: &Path, log: &Path) -> Result<()> {
        let mut command;
        if let Some(installer) = &self.installer {
            command = Command::new(installer);
            command
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        } else {
            command = Command::new(&self.server);
            command
                .arg("--no-defaults")
                .arg("--initialize-insecure")
                .arg(format!("--datadir={}", data.display()));
        }
        // Concurrent bootstraps sharing /tmp delete each other's temporary
        // tables.
        command.arg(format!("--tmpdir={}", tmp.display()));
        if is_root() {
            command.arg("--user=root");
        }
        let out = std::fs::File::create(log)?;
        command.stdin(std::process::Stdio::null());
        command.stdout(out.try_clone()?).stderr(out);
        let status = command
            .status()
            .with_context(|| format!("cannot run {}", command.get_program().to_string_lossy()))?;
        if !status.success() {
            bail!(
                "initializing the data directory {} failed ({status})\n{}",
                data.display(),
                tail(log, 20)
            );
        }
        Ok(())
    }
}

fn start_process(program: &LocalProgram, options: &MysqlOptions) -> Result<MysqlServer> {
    let dir = temp_dir("dbslots-mysql-")?;
    let data = dir.path().join("data");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    program.initialize(&data, &tmp, &dir.path().join("initialize.log"))?;
    let tls = if options.wants_tls() {
        let certs = dir.path().join("tls");
        std::fs::create_dir(&certs)
            .with_context(|| format!("cannot create {}", certs.display()))?;
        Some(make_certificates(&certs, "localhost")?)
    } else {
        None
    };
    let tls_args = options.tls_args(&dir.path().join("tls").display().to_string());
    let socket = data.join("mysqld.sock");
    let error_log = data.join("error.log");
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = free_port()?;
        let mut command = Command::new(&program.server);
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--pid-file={}", data.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", error_log.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args(["--skip-log-bin", "--innodb-buffer-pool-size=64M"]);
        if program.installer.is_none() {
            // MySQL's X protocol would listen on the fixed port 33060.
            command.arg("--mysqlx=OFF");
        }
        if is_root() {
            command.arg("--user=root");
        }
        if let Some(n) = options.max_connections {
            command.arg(format!("--max-connections={n}"));
        }
        command.args(&tls_args);
        command.args(&options.extra_args);
        let mut process =
            ServerProcess::spawn(command, options.attached, &dir.path().join("server.out"))?;
        match wait_until_local_ready(&mut process, &program.client, &socket, &error_log) {
            Ok(()) => {
                return Ok(MysqlServer {
                    running: Some(Running::Process {
                        process,
                        dir,
                        client: program.client.clone(),
                    }),
                    port,
                    version: String::new(),
                    socket: Some(socket),
                    data_dir: Some(data),
                    tls,
                    _tls_dir: None,
                });
            }
            Err(e) => {
                let stopped = process.stop(STOP_GRACE);
                let collided = tail(&error_log, 20).contains("Address already in use");
                if collided && attempt < PORT_ATTEMPTS {
                    // Keep the log of the failed attempt out of the next
                    // attempt's error message.
                    let _ = std::fs::rename(&error_log, data.join(format!("error-{attempt}.log")));
                    continue;
                }
                stopped?;
                return Err(e);
            }
        }
    }
}

fn wait_until_local_ready(
    process: &mut ServerProcess,
    client: &Path,
    socket: &Path,
    error_log: &Path,
) -> Result<()> {
    let started = Instant::now();
    loop {
        if let Some(status) = process.exited() {
            bail!(
                "the MySQL server exited ({status}) before accepting connections\n{}",
                tail(error_log, 30)
            );
        }
        let last_error = match local_sql(client, socket, "SELECT 1") {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if started.elapsed() > READY_TIMEOUT {
            bail!(
                "the MySQL server (pid {}) did not answer SELECT 1 within {} s: {last_error:#}\n{}",
                process.pid(),
                READY_TIMEOUT.as_secs(),
                tail(error_log, 30)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn local_sql(client: &Path, socket: &Path, sql: &str) -> Result<String> {
    run_captured(
        Command::new(client)
            .arg("--no-defaults")
            .arg("--protocol=SOCKET")
            .arg(format!("--socket={}", socket.display()))
            .args(["--user=root", "--batch", "--skip-column-names"])
            .args(["--connect-timeout=5", "--execute"])
            .arg(sql),
    )
}

fn start_container(options: &MysqlOptions) -> Result<MysqlServer> {
    let image = options
        .image
        .clone()
        .or_else(|| {
            std::env::var(MYSQL_IMAGE_ENV)
                .ok()
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_MYSQL_IMAGE.to_owned());
    let mut args = Vec::new();
    if let Some(n) = options.max_connections {
        args.push(format!("--max-connections={n}"));
    }
    const CONTAINER_TLS_DIR: &str = "/etc/dbslots-tls";
    let (tls_dir, tls, mounts) = if options.wants_tls() {
        let dir = temp_dir("dbslots-mysql-tls-")?;
        let files = make_certificates(dir.path(), "localhost")?;
        let mount = format!("{}:{CONTAINER_TLS_DIR}:ro", dir.path().display());
        (Some(dir), Some(files), vec![mount])
    } else {
        (None, None, Vec::new())
    };
    args.extend(options.tls_args(CONTAINER_TLS_DIR));
    args.extend(options.extra_args.iter().cloned());
    let (container, port) = Container::run_with_volumes(
        &image,
        3306,
        &[
            "MYSQL_ALLOW_EMPTY_PASSWORD=yes",
            "MARIADB_ALLOW_EMPTY_ROOT_PASSWORD=1",
        ],
        &mounts,
        &args,
    )
    .with_context(|| format!("cannot start a container of {image}"))?;
    let mut server = MysqlServer {
        running: Some(Running::Container {
            container,
            client: String::new(),
        }),
        port,
        version: String::new(),
        socket: None,
        data_dir: None,
        tls,
        _tls_dir: tls_dir,
    };
    let Some(Running::Container { container, client }) = server.running.as_mut() else {
        unreachable!("just built as a container")
    };
    *client = container
        .exec("sh", &["-c", "command -v mariadb || command -v mysql"])
        .with_context(|| format!("the image {image} has no mariadb or mysql client"))?
        .trim()
        .to_owned();
    let started = Instant::now();
    loop {
        if !container.running() {
            bail!(
                "the container of {image} stopped before accepting connections\n{}",
                container.log_tail()
            );
        }
        // Over TCP inside the container: the images' entrypoints first run a
        // temporary server on the socket only, which must not count as ready.
        let last_error = match container_sql(container, client, "SELECT 1") {
            Ok(_) => break,
            Err(e) => e,
        };
        if started.elapsed() > CONTAINER_READY_TIMEOUT {
            bail!(
                "the container of {image} did not answer SELECT 1 within {} s: {last_error:#}\n{}",
                CONTAINER_READY_TIMEOUT.as_secs(),
                container.log_tail()
            );
        }
        thread::sleep(Duration::from_millis(250));
    }
    Ok(server)
}

fn container_sql(container: &Container, client: &str, sql: &str) -> Result<String> {
    container.exec(
        client,
        &[
            "--protocol=TCP",
            "--host=127.0.0.1",
            "--user=root",
            "--batch",
            "--skip-column-names",
            "--connect-timeout=5",
            "--execute",
            sql,
        ],
    )
}
