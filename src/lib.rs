//! Support code shared by the workspace-level tests (`tests/`) and
//! benchmarks (`benches/`): the yardsticks they measure dbslots against.
#![deny(missing_docs)]

pub mod reference;

/// The README's examples, compiled by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The longest wait a perfect FIFO queue with `capacity` servers would
/// impose on jobs arriving at `arrivals[i]` and holding for `holds[i]`
/// (same unit for all; jobs are served in arrival order, ties by index).
///
/// Used to judge fairness: a real queue is compared with the ideal one for
/// the very same arrivals and hold times.
pub fn fifo_longest_wait(arrivals: &[f64], holds: &[f64], capacity: usize) -> f64 {
    assert_eq!(arrivals.len(), holds.len(), "one hold time per arrival");
    assert!(capacity > 0, "capacity must be positive");
    let mut order: Vec<usize> = (0..arrivals.len()).collect();
    order.sort_by(|&a, &b| arrivals[a].total_cmp(&arrivals[b]).then(a.cmp(&b)));
    // Time at which each server becomes free.
    let mut free_at = vec![f64::NEG_INFINITY; capacity];
    let mut longest: f64 = 0.0;
    for i in order {
        let (k, t) = free_at
            .iter()
            .copied()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("capacity > 0");
        let start = t.max(arrivals[i]);
        longest = longest.max(start - arrivals[i]);
        free_at[k] = start + holds[i];
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::fifo_longest_wait;

    #[test]
    fn fifo_matches_hand_computed_queue() {
        // 4 jobs at t=0 holding 10 each on 2 servers: the last two wait 10.
        assert_eq!(fifo_longest_wait(&[0.0; 4], &[10.0; 4], 2), 10.0);
        // 200 jobs, 10 slots, 10 ms: the last batch waits 19 rounds.
        let w = fifo_longest_wait(&[0.0; 200], &[0.010; 200], 10);
        assert!((w - 0.190).abs() < 1e-9, "{w}");
        // Late arrivals that find a free server do not wait.
        assert_eq!(fifo_longest_wait(&[0.0, 100.0], &[10.0, 10.0], 1), 0.0);
    }
}
