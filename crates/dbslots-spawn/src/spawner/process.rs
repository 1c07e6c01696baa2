//! A worker's process, started by std (`tokio::process`) or, for workers
//! whose only need beyond std is SIGPIPE left ignored, by `posix_spawn`
//! called here; and waiting for it.
//!
//! # Implementation Details
//!
//! Workers with prefixed output must start with SIGPIPE ignored: their
//! stdout and stderr are pipes to the spawner, and if the spawner dies a
//! worker's next line would kill it (see the crate doc). std's `Command`
//! cannot start a process that way without a `pre_exec` hook: on both of
//! its paths it resets SIGPIPE to its default in the child (its
//! `posix_spawn` path puts SIGPIPE in the attributes' "set to default"
//! signals, `POSIX_SPAWN_SETSIGDEF`; only the unstable
//! `-Zon-broken-pipe=inherit` turns that off), and any `pre_exec` hook
//! makes std fork + exec instead of `posix_spawn`. Forking copies the
//! spawner's page tables on every start, which made a start of the default
//! mode 2.2 times as costly (`docs/benchmarks.md`, "Spawning workers").
//!
//! So [`spawn_sigpipe_ignored`] calls `posix_spawnp` itself, with what
//! std would set but the SIGPIPE reset: an empty signal mask
//! (`POSIX_SPAWN_SETSIGMASK`), its own process group
//! (`POSIX_SPAWN_SETPGROUP`, group 0), stdin, stdout and stderr through
//! file actions, the environment std would have passed. No
//! `POSIX_SPAWN_SETSIGDEF`: a signal the spawner ignores stays ignored
//! across exec (POSIX), and the spawner ignores SIGPIPE (every Rust
//! program does, unless built otherwise; checked before each start, see
//! [`available`]). glibc starts the child with `clone(CLONE_VM |
//! CLONE_VFORK)` and reports a failed exec (`ENOENT`, `EACCES`) as the
//! call's result, as for std.
//!
//! tokio can wait only for the processes std started, so such a worker is
//! waited for through a pidfd (`pidfd_open`, Linux 5.3): it turns readable
//! when the process exits, and then `waitpid(pid, WNOHANG)` reaps it. The
//! pid cannot be reused before that: the worker is this process's unreaped
//! child. Where pidfds are missing, or SIGPIPE is not ignored in the
//! spawner, workers take std's path with the hook, as before.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::OnceLock;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, Interest};
use tokio::net::unix::pipe;

/// A worker's stdout or stderr, read by the supervisor.
pub(super) type OutputPipe = Box<dyn AsyncRead + Unpin + Send>;

/// A started worker, whichever way it was started.
pub(super) enum WorkerProcess {
    /// Started by std (`tokio::process::Command`).
    Std(tokio::process::Child),
    /// Started by [`spawn_sigpipe_ignored`].
    Spawned(Spawned),
}

impl WorkerProcess {
    /// The worker's pid; `None` once it was reaped.
    pub(super) fn id(&self) -> Option<u32> {
        match self {
            WorkerProcess::Std(child) => child.id(),
            WorkerProcess::Spawned(s) => match s.status {
                None => u32::try_from(s.pid).ok(),
                Some(_) => None,
            },
        }
    }

    /// Takes the pipes of the worker's stdout and stderr (prefixed output).
    pub(super) fn take_output(&mut self) -> (Option<OutputPipe>, Option<OutputPipe>) {
        match self {
            WorkerProcess::Std(child) => (
                child.stdout.take().map(|p| Box::new(p) as OutputPipe),
                child.stderr.take().map(|p| Box::new(p) as OutputPipe),
            ),
            WorkerProcess::Spawned(s) => (
                s.stdout.take().map(|p| Box::new(p) as OutputPipe),
                s.stderr.take().map(|p| Box::new(p) as OutputPipe),
            ),
        }
    }

    /// Waits for the worker to exit and reaps it. Cancel-safe: a dropped
    /// wait loses nothing, the next one picks up.
    pub(super) async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            WorkerProcess::Std(child) => child.wait().await,
            WorkerProcess::Spawned(s) => s.wait().await,
        }
    }
}

/// A worker started by [`spawn_sigpipe_ignored`].
pub(super) struct Spawned {
    pid: libc::pid_t,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
}

impl Spawned {
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        loop {
            let mut ready = self.pidfd.readable().await?;
            let mut raw = 0;
            // SAFETY: waitpid on our own unreaped child, without blocking.
            let r = unsafe { libc::waitpid(self.pid, &mut raw, libc::WNOHANG) };
            if r == self.pid {
                let status = ExitStatus::from_raw(raw);
                self.status = Some(status);
                return Ok(status);
            }
            if r == 0 {
                ready.clear_ready();
                continue;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// What the worker's stdin is.
pub(super) enum Stdin {
    /// This descriptor (the slot's, handed over).
    Fd(OwnedFd),
    /// `/dev/null`.
    Null,
}

/// Whether [`spawn_sigpipe_ignored`] can start workers here: pidfds exist
/// (probed once) and SIGPIPE is ignored in this process right now.
pub(super) fn available() -> bool {
    static PIDFDS: OnceLock<bool> = OnceLock::new();
    // SAFETY: getpid cannot fail.
    let own = unsafe { libc::getpid() };
    let pidfds = *PIDFDS.get_or_init(|| pidfd_open(own).is_ok());
    pidfds && sigpipe_ignored()
}

fn sigpipe_ignored() -> bool {
    // SAFETY: a plain C struct, for which all zeroes is a valid value.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a query only (no new action); `old` is a valid out pointer.
    let r = unsafe { libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) };
    r == 0 && old.sa_sigaction == libc::SIG_IGN
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) with a pid and no flags; it returns a new
    // descriptor (close-on-exec) or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Starts `program` with `args` as its own process-group leader, with
/// `stdin`, stdout and stderr piped to this process, the environment of
/// this process changed by `envs` (`None`: removed), an empty signal mask,
/// and SIGPIPE left ignored. Must be called within a tokio runtime.
///
/// # Errors
///
/// The error of `posix_spawnp` (`NotFound` for a missing program,
/// `PermissionDenied` for one that is not executable), of the pipes, or of
/// `pidfd_open` (the worker is then killed and reaped before this returns).
pub(super) fn spawn_sigpipe_ignored<'a>(
    program: &'a OsStr,
    args: impl Iterator<Item = &'a OsStr>,
    envs: impl Iterator<Item = (&'a OsStr, Option<&'a OsStr>)>,
    stdin: Stdin,
) -> io::Result<Spawned> {
    let argv: Vec<CString> = std::iter::once(program)
        .chain(args)
        .map(c_string)
        .collect::<io::Result<_>>()?;
    let envp = environment(envs)?;
    let (out_read, out_write) = pipe_cloexec()?;
    let (err_read, err_write) = pipe_cloexec()?;
    // Registered before the worker exists: once it runs, nothing may fail
    // before it is handed over (it would run unsupervised).
    let stdout = pipe::Receiver::from_owned_fd(out_read)?;
    let stderr = pipe::Receiver::from_owned_fd(err_read)?;

    let mut actions = FileActions::new()?;
    match &stdin {
        Stdin::Fd(fd) => actions.dup2(fd.as_raw_fd(), 0)?,
        Stdin::Null => actions.open_null(0)?,
    }
    actions.dup2(out_write.as_raw_fd(), 1)?;
    actions.dup2(err_write.as_raw_fd(), 2)?;
    let attributes = Attributes::new()?;

    let mut argv_ptrs: Vec<*mut libc::c_char> =
        argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv_ptrs.push(std::ptr::null_mut());
    let mut envp_ptrs: Vec<*mut libc::c_char> =
        envp.iter().map(|e| e.as_ptr().cast_mut()).collect();
    envp_ptrs.push(std::ptr::null_mut());
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: the initialised file
    // actions and attributes, and NULL-terminated arrays of NUL-terminated
    // strings that outlive it.
    let r = unsafe {
        libc::posix_spawnp(
            &mut pid,
            argv[0].as_ptr(),
            &actions.0,
            &attributes.0,
            argv_ptrs.as_ptr(),
            envp_ptrs.as_ptr(),
        )
    };
    // The child has its copies (or never started): close ours.
    drop((out_write, err_write, stdin));
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    let registered = pidfd_open(pid).and_then(|fd| {
        // SAFETY: an `OwnedFd` keeps its descriptor open, and the same one,
        // until the `AsyncFd` drops it.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
    });
    let pidfd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            // Nothing could wait for it: it must not run.
            // SAFETY: our own unreaped child; kill, then reap it.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(e);
        }
    };
    Ok(Spawned {
        pid,
        pidfd,
        status: None,
        stdout: Some(stdout),
        stderr: Some(stderr),
    })
}

fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} contains a NUL byte"),
        )
    })
}

/// This process's environment with `changes` applied, as `KEY=VALUE`.
fn environment<'a>(
    changes: impl Iterator<Item = (&'a OsStr, Option<&'a OsStr>)>,
) -> io::Result<Vec<CString>> {
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    for (key, value) in changes {
        vars.retain(|(k, _)| k != key);
        if let Some(value) = value {
            vars.push((key.to_owned(), value.to_owned()));
        }
    }
    vars.iter()
        .map(|(k, v)| {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            c_string(&kv)
        })
        .collect()
}

fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and belong to nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn check(r: libc::c_int) -> io::Result<()> {
    match r {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// `posix_spawn_file_actions_t`, destroyed when dropped.
struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> io::Result<FileActions> {
        // SAFETY: zeroed storage, initialised by the call before any use.
        let mut actions = FileActions(unsafe { std::mem::zeroed() });
        // SAFETY: a valid pointer to storage for the file actions.
        check(unsafe { libc::posix_spawn_file_actions_init(&mut actions.0) })?;
        Ok(actions)
    }

    fn dup2(&mut self, fd: libc::c_int, target: libc::c_int) -> io::Result<()> {
        // SAFETY: initialised file actions.
        check(unsafe { libc::posix_spawn_file_actions_adddup2(&mut self.0, fd, target) })
    }

    fn open_null(&mut self, target: libc::c_int) -> io::Result<()> {
        // SAFETY: initialised file actions and a NUL-terminated path that
        // lives for the whole program (glibc copies it anyway).
        check(unsafe {
            libc::posix_spawn_file_actions_addopen(
                &mut self.0,
                target,
                c"/dev/null".as_ptr(),
                libc::O_RDONLY,
                0,
            )
        })
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// `posix_spawnattr_t` with the worker's attributes, destroyed when
/// dropped.
struct Attributes(libc::posix_spawnattr_t);

impl Attributes {
    fn new() -> io::Result<Attributes> {
        // SAFETY: zeroed storage, initialised by the call before any use.
        let mut attributes = Attributes(unsafe { std::mem::zeroed() });
        // SAFETY: a valid pointer to storage for the attributes.
        check(unsafe { libc::posix_spawnattr_init(&mut attributes.0) })?;
        // SAFETY: `empty` is initialised by sigemptyset before it is read;
        // the attributes are initialised.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            check(libc::posix_spawnattr_setsigmask(&mut attributes.0, &empty))?;
            check(libc::posix_spawnattr_setpgroup(&mut attributes.0, 0))?;
            let flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETPGROUP;
            check(libc::posix_spawnattr_setflags(
                &mut attributes.0,
                flags as libc::c_short,
            ))?;
        }
        Ok(attributes)
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}
