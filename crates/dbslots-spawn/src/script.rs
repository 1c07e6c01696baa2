//! Running a script that has no `#!` line.
//!
//! The kernel refuses such a file (`ENOEXEC`); a shell, and glibc's
//! `execvp`, then run it with `/bin/sh`. `posix_spawnp`, which std uses
//! and which spares the spawner (and `dbslots exec`) a fork, does not, so
//! they do it themselves when a start fails that way: run `/bin/sh FILE
//! ARGS...` with the file [`without_interpreter`] finds. Written by hand because the rule
//! is four lines of POSIX (`execvp`'s PATH search) and no crate offers it
//! without pulling in a process library of its own.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// The file that `program` names, found as `execvp` finds it: the name
/// itself when it contains a `/`, else the first executable regular file
/// of that name in `$PATH` (`/bin:/usr/bin` when unset). `None` when there
/// is none, or when the file is a binary (a program for another machine,
/// say), which a shell refuses too ("cannot execute binary file") rather
/// than feed it to /bin/sh.
pub fn without_interpreter(program: &OsStr) -> Option<PathBuf> {
    let file = find(program)?;
    (!is_binary(&file)).then_some(file)
}

/// Whether `file` looks like a binary rather than a script, by bash's rule:
/// a NUL byte in its first line, within its first 80 bytes.
fn is_binary(file: &std::path::Path) -> bool {
    use std::io::Read;
    let mut sample = Vec::with_capacity(80);
    let read = std::fs::File::open(file).and_then(|f| f.take(80).read_to_end(&mut sample));
    read.is_ok() && sample.iter().take_while(|b| **b != b'\n').any(|b| *b == 0)
}

fn find(program: &OsStr) -> Option<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
    std::env::split_paths(&path)
        .map(|dir| {
            // An empty entry means the current directory.
            if dir.as_os_str().is_empty() {
                PathBuf::from(".").join(program)
            } else {
                dir.join(program)
            }
        })
        .find(|candidate| is_executable_file(candidate))
}

fn is_executable_file(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::{find, without_interpreter};
    use std::ffi::OsStr;

    #[test]
    fn a_name_with_a_slash_is_taken_as_is_and_others_are_searched_in_path() {
        assert_eq!(
            without_interpreter(OsStr::new("./job.sh")),
            Some("./job.sh".into())
        );
        // (The lookup only: `sh` itself is a binary, no script.)
        let sh = find(OsStr::new("sh")).expect("sh is on PATH");
        assert!(sh.ends_with("sh") && sh.is_absolute(), "{sh:?}");
        assert_eq!(
            without_interpreter(OsStr::new("no-such-program-here")),
            None
        );
    }

    #[test]
    fn a_binary_is_no_script() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("elf");
        std::fs::write(&binary, b"\x7fELF\x02\x01\x01\0\0\0\necho hi\n").unwrap();
        assert_eq!(without_interpreter(binary.as_os_str()), None);
        // A NUL after the first line is a script's business.
        let script = dir.path().join("script");
        std::fs::write(&script, b"echo hi\nprintf '\0'\n").unwrap();
        assert_eq!(
            without_interpreter(script.as_os_str()),
            Some(script.clone())
        );
    }
}
