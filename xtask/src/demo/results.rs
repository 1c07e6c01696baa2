//! What the workers leave behind: their `DEMO-RESULT` lines and the
//! spawner's joblog.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// The workers' `DEMO-RESULT` lines, summed and collected.
#[derive(Default)]
pub(super) struct Results {
    pub(super) ok: u64,
    pub(super) refusals: BTreeMap<String, u64>,
    /// By worker index.
    pub(super) connected_at_ms: BTreeMap<u32, f64>,
    pub(super) connect_ms: Vec<f64>,
    pub(super) cpu_ms: Vec<f64>,
}

/// Reads the `DEMO-RESULT` lines of the workers' log files.
pub(super) fn read_results(logs: &Path, workers: u32) -> Result<Results> {
    let mut results = Results::default();
    for index in 0..workers {
        let path = logs.join(format!("{index}.log"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Some(line) = text.lines().find_map(|l| l.split_once("DEMO-RESULT ")) else {
            continue;
        };
        let value: Value = serde_json::from_str(line.1)
            .with_context(|| format!("{}: cannot parse {:?}", path.display(), line.1))?;
        if value["ok"].as_bool() == Some(true) {
            results.ok += 1;
        }
        if let Some(map) = value["refusals"].as_object() {
            for (code, n) in map {
                *results.refusals.entry(code.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
        if let Some(at) = value["connected_at_ms"].as_f64() {
            results.connected_at_ms.insert(index, at);
        }
        if let Some(ms) = value["connect_ms"].as_f64() {
            results.connect_ms.push(ms);
        }
        if let Some(ms) = value["cpu_ms"].as_f64() {
            results.cpu_ms.push(ms);
        }
    }
    Ok(results)
}

/// The joblog's start times (Unix milliseconds) by worker index.
pub(super) fn read_joblog_starts(path: &Path) -> Result<BTreeMap<u32, f64>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the joblog {}", path.display()))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let seq: u32 = fields.next()?.parse().ok()?;
            let start: f64 = fields.nth(1)?.parse().ok()?;
            Some((seq.checked_sub(1)?, start * 1000.0))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::read_joblog_starts;

    #[test]
    fn joblog_start_times_by_worker_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("joblog.tsv");
        std::fs::write(
            &path,
            "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n\
             2\t:\t1764530000.250\t0.201\t0\t0\t0\t0\tworker\n\
             1\t:\t1764530000.125\t0.199\t0\t0\t0\t0\tworker\n",
        )
        .unwrap();
        let starts = read_joblog_starts(&path).unwrap();
        assert_eq!(starts.len(), 2);
        assert!((starts[&0] - 1_764_530_000_125.0).abs() < 0.01);
        assert!((starts[&1] - 1_764_530_000_250.0).abs() < 0.01);
    }
}
