//! Hides the passwords of URLs given on the command line from the other
//! users of the machine, who can read every process's arguments (`ps`,
//! `/proc/PID/cmdline`): once started, `dbslots` overwrites them in place
//! with `x`, as the `mysql` client does with `-pSECRET`.
//!
//! The arguments live in the process's own memory, in the area the kernel
//! reports as `arg_start`..`arg_end` in `/proc/self/stat` and reads
//! `/proc/PID/cmdline` from. Rust keeps no reference to it (every
//! `std::env::args` call copies it), so it is written here byte by byte,
//! by hand: no maintained crate does this (the `setproctitle` family moves
//! the environment to make room for a new title, more than is needed
//! here).
//!
//! This narrows the exposure to the first moments of the process, not
//! nothing: the environment (`DATABASE_URL`, `DBSLOTS_POOL`) is still the
//! place for passwords, and the README says so.

use std::ops::Range;

/// Overwrites the password of every URL among the process's arguments with
/// `x` (same length), where `/proc/PID/cmdline` reads them. Call it once
/// the arguments are parsed and before any other thread starts. Does
/// nothing where the argument area cannot be found or does not hold what
/// `/proc/self/cmdline` shows (another program changed it).
pub fn hide_passwords() {
    let Some(area) = argument_area() else {
        return;
    };
    let Ok(cmdline) = std::fs::read("/proc/self/cmdline") else {
        return;
    };
    let len = area.end - area.start;
    // The area ends with the last argument's NUL; cmdline may leave it out.
    if cmdline.len() > len || cmdline.len() + 1 < len {
        return;
    }
    let secrets = secret_bytes(&cmdline);
    if secrets.is_empty() {
        return;
    }
    let base = area.start as *mut u8;
    // SAFETY: `base..base + len` is this process's argument area (from
    // the kernel, and just read back through /proc/self/cmdline with the
    // length checked): mapped and writable for the life of the process
    // (the top of the initial stack), and no Rust reference points into
    // it (std copies the arguments on every call). The offsets are
    // within `cmdline`, so within the area. Volatile: nothing in this
    // process reads the bytes back, the kernel does, for other processes.
    for i in secrets {
        unsafe { base.add(i).write_volatile(b'x') };
    }
    // The bytes changed must be the ones meant: read them back the way
    // `ps` does, and say so if they still show.
    if let Ok(after) = std::fs::read("/proc/self/cmdline")
        && secret_bytes(&after).iter().any(|&i| after[i] != b'x')
    {
        tracing::debug!("could not hide the passwords on the command line");
    }
}

/// `/proc/self/stat`'s `arg_start`..`arg_end` (fields 48 and 49).
fn argument_area() -> Option<Range<usize>> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold blanks and parentheses; the
    // fields after it are plain numbers.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace().skip(48 - 3);
    let start = fields.next()?.parse().ok()?;
    let end = fields.next()?.parse().ok()?;
    (start != 0 && start < end).then_some(start..end)
}

/// The offsets in `cmdline` (NUL-separated arguments) of every byte of a
/// URL's password; all of them `x` once hidden.
fn secret_bytes(cmdline: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 0;
    for word in cmdline.split(|&b| b == 0) {
        // Passwords in URLs only: a non-UTF-8 word holds none we parse.
        if let Ok(text) = std::str::from_utf8(word)
            && text.contains("://")
        {
            for range in dbslots_core::url_secret_ranges(text) {
                offsets.extend(range.map(|i| at + i));
            }
        }
        at += word.len() + 1;
    }
    offsets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_password_bytes_of_every_url_argument() {
        let cmdline = b"dbslots\0import\0run\0--url=mysql://app:pw@db/x\0--pool\0redis://:r3d@h:6379/0?pool=p\0";
        let hidden: Vec<u8> = {
            let mut c = cmdline.to_vec();
            for i in secret_bytes(cmdline) {
                c[i] = b'x';
            }
            c
        };
        assert_eq!(
            hidden,
            b"dbslots\0import\0run\0--url=mysql://app:xx@db/x\0--pool\0redis://:xxx@h:6379/0?pool=p\0"
        );
    }

    #[test]
    fn leaves_arguments_without_passwords_alone() {
        assert!(secret_bytes(b"dbslots\0status\0--pool\0/run/pool\0mysql://app@db/x\0").is_empty());
    }

    #[test]
    fn the_argument_area_holds_this_processs_command_line() {
        let area = argument_area().expect("Linux reports arg_start and arg_end");
        let cmdline = std::fs::read("/proc/self/cmdline").unwrap();
        assert!(area.end - area.start >= cmdline.len());
    }
}
