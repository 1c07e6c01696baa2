//! The open-file limit: every queued or relayed client costs the gate one
//! descriptor, a relayed one two, and the default soft limit is 1024.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Raises this process's soft limit on open files to its hard limit and
/// returns `(before, after)`. Only the hard limit (`LimitNOFILE=` in a
/// systemd unit, `ulimit -Hn`) bounds it; an unlimited hard limit is capped
/// at 1,048,576.
pub fn raise_open_file_limit() -> std::io::Result<(u64, u64)> {
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current.unwrap_or(u64::MAX);
    let target = limit.maximum.unwrap_or(1 << 20);
    if before >= target {
        return Ok((before, before));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        },
    )?;
    Ok((before, target))
}
