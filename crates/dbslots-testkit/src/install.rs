//! Installing a missing server with the system package manager, which is
//! only attempted as root on a machine with `apt-get` (such as a fresh CI
//! machine).

use std::io::Write;
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Result, bail};

use crate::process::{describe, find_program, is_root};

/// Installs Debian package `package`, which provides `what`, with
/// `apt-get`, saying so on stderr.
///
/// `found` is asked afterwards (and first, under a lock, so that concurrent
/// tests install once); `missing` is the error text used when installing is
/// impossible or did not help.
pub(crate) fn install_with_apt(
    package: &str,
    what: &str,
    found: impl Fn() -> bool,
    missing: &str,
) -> Result<()> {
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _guard = INSTALLING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if found() {
        return Ok(());
    }
    let Some(apt_get) = find_program(&["apt-get"]).filter(|_| is_root()) else {
        bail!("{missing}");
    };
    // Written to the stderr handle directly, past libtest's output capture.
    let _ = writeln!(
        std::io::stderr(),
        "dbslots-testkit: {what} is missing: installing the `{package}` package with apt-get"
    );
    let mut update = Command::new(&apt_get);
    update.args(["-o", "DPkg::Lock::Timeout=600", "-qq", "update"]);
    let mut install = Command::new(&apt_get);
    install
        .args([
            "-o",
            "DPkg::Lock::Timeout=600",
            "-qq",
            "install",
            "-y",
            "--no-install-recommends",
        ])
        .arg(package)
        .env("DEBIAN_FRONTEND", "noninteractive");
    for command in [&mut update, &mut install] {
        let shown = describe(command);
        // The package's own service may fail to start (for example because
        // its default port is taken); what matters is whether the program
        // is there afterwards, which is checked below.
        match command.status() {
            Ok(status) if status.success() => {}
            Ok(status) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "dbslots-testkit: `{shown}` exited with {status}"
                );
            }
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "dbslots-testkit: cannot run `{shown}`: {e}"
                );
            }
        }
    }
    if found() {
        Ok(())
    } else {
        bail!("{missing}, and installing the `{package}` package with apt-get did not provide it")
    }
}
