//! Debian packages a task needs: installed with apt-get as root when
//! missing, saying so; without root, an error that names the command to run.

use std::path::Path;

use anyhow::{Context, Result};

use crate::child;

/// Installs the packages of `programs` (a file, and the Debian package that
/// provides it) whose file is missing. `purpose` says who needs them.
pub fn ensure(programs: &[(&str, &str)], purpose: &str) -> Result<()> {
    let missing = || -> Vec<&str> {
        programs
            .iter()
            .filter(|(file, _)| !Path::new(file).exists())
            .map(|(_, package)| *package)
            .collect()
    };
    let packages = missing();
    if packages.is_empty() {
        return Ok(());
    }
    install(&packages, purpose)?;
    let still = missing();
    anyhow::ensure!(
        still.is_empty(),
        "`apt-get install` did not provide {}",
        still.join(" ")
    );
    Ok(())
}

/// Installs `packages` with apt-get as root, saying so; fails with the
/// command to run when not root.
pub fn install(packages: &[&str], purpose: &str) -> Result<()> {
    let list = packages.join(" ");
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "{purpose} needs the Debian packages {list}, which are missing: \
             run `sudo apt-get install -y {list}` and try again"
        );
    }
    eprintln!("xtask: {purpose} needs {list}: installing with apt-get");
    let apt = |args: &[&str]| {
        let mut command = std::process::Command::new("apt-get");
        command
            .args(["-o", "DPkg::Lock::Timeout=600", "-qq"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    child::run("`apt-get update`", apt(&["update"]))?;
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(packages);
    child::run(&format!("`apt-get install -y {list}`"), install)
}

/// Installs PDO's MySQL driver (`php-mysql`) when `php` lacks it.
pub fn ensure_pdo_mysql(purpose: &str) -> Result<()> {
    let out = std::process::Command::new("php")
        .args([
            "-r",
            "echo in_array('mysql', PDO::getAvailableDrivers()) ? 'yes' : 'no';",
        ])
        .output()
        .context("cannot run php")?;
    if String::from_utf8_lossy(&out.stdout).trim() != "yes" {
        install(&["php-mysql"], &format!("{purpose} (PDO's MySQL driver)"))?;
    }
    Ok(())
}
