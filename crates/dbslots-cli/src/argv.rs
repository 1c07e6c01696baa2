//! Hides the passwords of URLs given on the command line from the other
//! users of the machine, who can read every process's arguments (`ps`,
//! `/proc/PID/cmdline`): once started, `dbslots` overwrites them in place
//! with `x`, as the `mysql` client does with `-pSECRET`.
//!
//! The arguments live in the process's own memory, in the area the kernel
//! reports as `arg_start`..`arg_end` in `/proc/self/stat` and reads
//! `/proc/PID/cmdline` from. They are rewritten through `/proc/self/mem`,
//! after checking that the area holds exactly what `/proc/self/cmdline`
//! shows: no pointer arithmetic, no `unsafe`. No maintained crate does
//! this (the `setproctitle` family moves the environment to make room for
//! a new title, more than is needed here), hence the code by hand.
//!
//! `std::env::args` reads the same memory, so a call after this one sees
//! the hidden text: the arguments are parsed before, and nothing reads
//! them again (`exec` and `spawn` hand their children the parsed values).
//!
//! This narrows the exposure to the first moments of the process, not
//! nothing: the environment (`DATABASE_URL`, `DBSLOTS_POOL`) is still the
//! place for passwords, and the README says so.

use std::ops::Range;
use std::os::unix::fs::FileExt;

/// Overwrites the password of every URL among the process's arguments with
/// `x` (same length), where `/proc/PID/cmdline` reads them. Call it once
/// the arguments are parsed, before any other thread could read them with
/// `std::env::args` (it reads the same bytes). Does nothing where the
/// argument area cannot be found or does not hold what `/proc/self/cmdline`
/// shows (another program changed it).
pub fn hide_passwords() {
    let Some(area) = argument_area() else {
        return;
    };
    let Ok(cmdline) = std::fs::read("/proc/self/cmdline") else {
        return;
    };
    let secrets = secret_bytes(&cmdline);
    if secrets.is_empty() {
        return;
    }
    let Ok(mem) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")
    else {
        return;
    };
    // The area must hold the command line, byte for byte (it ends with
    // the last argument's NUL, which cmdline may leave out).
    let mut held = vec![0; area.end - area.start];
    if mem.read_exact_at(&mut held, area.start as u64).is_err()
        || !held.starts_with(&cmdline)
        || held.len() > cmdline.len() + 1
    {
        return;
    }
    for i in secrets {
        if mem.write_all_at(b"x", (area.start + i) as u64).is_err() {
            tracing::debug!("could not hide the passwords on the command line");
            return;
        }
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
        let text = same_length_text(word);
        if text.contains("://") {
            for range in dbslots_core::url_secret_ranges(&text) {
                offsets.extend(range.map(|i| at + i));
            }
        }
        at += word.len() + 1;
    }
    offsets
}

/// `word` as text of the same length, byte for byte: each byte that is not
/// part of valid UTF-8 becomes `?`, so a URL in an argument that is not
/// all UTF-8 is still found, at the same offsets.
fn same_length_text(word: &[u8]) -> String {
    let mut text = String::with_capacity(word.len());
    for chunk in word.utf8_chunks() {
        text.push_str(chunk.valid());
        text.extend(std::iter::repeat_n('?', chunk.invalid().len()));
    }
    text
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
    fn finds_the_password_in_an_argument_that_is_not_all_utf8() {
        let cmdline = b"dbslots\0exec\0--url\0mysql://app:p\xc3\xa4w@db/\xff\xfe\0";
        let hidden: Vec<usize> = secret_bytes(cmdline);
        let at = cmdline.windows(2).position(|w| w == b"p\xc3").unwrap();
        assert_eq!(hidden, (at..at + 4).collect::<Vec<_>>());
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
