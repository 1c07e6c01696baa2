//! A process's memory as the kernel counts it (`/proc/PID/status`), for
//! tests and benchmarks that bound it.
//!
//! A child's peak is read here, not from `wait4`'s `ru_maxrss`: that one
//! also holds the resident size of the image the child was started from
//! (the kernel keeps the larger of the old and new image's high-water
//! marks across `exec`), so a test binary of 190 MB makes every child it
//! starts look that large.

/// `FIELD` of `/proc/PID/status` in KiB (`VmRSS`, the resident size now;
/// `VmHWM`, its high-water mark); `None` once the process is gone or a
/// zombie (which has no memory left).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Samples `pid`'s `VmHWM` every 10 ms until it exits (or becomes a
/// zombie), from a thread of its own; joining the handle gives the peak in
/// KiB (0 if no sample was taken).
pub fn watch_peak_kib(pid: u32) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while let Some(kib) = status_kib(pid, "VmHWM") {
            peak = peak.max(kib);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        peak
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_processs_resident_size_and_nothing_for_a_missing_field() {
        let pid = std::process::id();
        let rss = status_kib(pid, "VmRSS").expect("VmRSS of a live process");
        let hwm = status_kib(pid, "VmHWM").expect("VmHWM of a live process");
        assert!(rss > 0 && hwm >= rss, "{rss} {hwm}");
        assert_eq!(status_kib(pid, "VmNoSuchThing"), None);
        // A prefix of another field is not that field.
        assert_eq!(status_kib(pid, "Vm"), None);
    }
}
