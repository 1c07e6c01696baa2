//! What any process can learn about a pool without a database.

use serde::{Deserialize, Serialize};

/// A snapshot of a pool.
///
/// `active` and `holders` come from the locks themselves, so a holder that
/// was killed is never counted; `peak` and the counters are kept on the
/// board by the acquirers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PoolStats {
    /// The pool's address (a directory, or a redacted URL).
    pub pool: String,
    /// The backend's name (`file`, ...).
    pub backend: String,
    /// Slots the pool hands out at most.
    pub capacity: u32,
    /// Slots held right now, including those above the capacity while a
    /// shrink drains (see [`PoolStats::over_capacity`]).
    pub active: u32,
    /// Acquirers queued right now.
    pub waiting: u32,
    /// Most slots held at once since the pool was created (holders through
    /// dbslots; a foreign client that takes a slot with its own `flock` is
    /// counted in `active` but not here).
    pub peak: u64,
    /// Successful acquisitions since the pool was created.
    pub acquisitions: u64,
    /// Acquisitions that gave up at their deadline.
    pub timeouts: u64,
    /// One entry per held slot, by slot number.
    pub holders: Vec<Holder>,
    /// One entry per queued acquirer, oldest first.
    pub waiters: Vec<Waiter>,
    /// How long acquisitions waited.
    pub wait_histogram: WaitHistogram,
}

/// A held slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Holder {
    /// The slot's number, `0..capacity`.
    pub slot: u32,
    /// The holder's process id, when the holder recorded it.
    pub pid: Option<u32>,
    /// The holder's host, for backends that span hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// When the slot was taken, milliseconds since the Unix epoch.
    pub since_unix_ms: Option<u64>,
}

/// A queued acquirer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Waiter {
    /// The waiter's process id.
    pub pid: Option<u32>,
    /// The waiter's host, for backends that span hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// When it started waiting, milliseconds since the Unix epoch.
    pub since_unix_ms: Option<u64>,
}

/// Upper bounds of the buckets of a [`WaitHistogram`] kept in microseconds
/// (a file pool's board, a gate's counters), ascending; a final bucket takes
/// everything longer. One list, so that the histograms line up.
pub const WAIT_BUCKETS_US: [u64; 10] = [
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    5_000_000,
    30_000_000,
    120_000_000,
    600_000_000,
];

/// Distribution of acquisition waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub struct WaitHistogram {
    /// Upper bounds of the buckets, in seconds, ascending.
    pub bounds_seconds: Vec<f64>,
    /// Acquisitions per bucket (not cumulative); one more entry than
    /// `bounds_seconds` for the waits above the last bound. Acquisitions that
    /// did not queue at all are in the first bucket.
    pub counts: Vec<u64>,
    /// Sum of all waits, in seconds.
    pub sum_seconds: f64,
    /// Number of acquisitions counted.
    pub count: u64,
}

impl WaitHistogram {
    /// The bucket of [`WAIT_BUCKETS_US`] (an index into `counts`) that a
    /// wait of `us` microseconds falls in.
    pub fn bucket_of(us: u64) -> usize {
        WAIT_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(WAIT_BUCKETS_US.len())
    }

    /// The buckets as Prometheus counts them: each upper bound with the
    /// number of waits at or under it (cumulative), then `f64::INFINITY`
    /// with every wait.
    ///
    /// ```
    /// let h = dbslots_core::WaitHistogram::from_buckets(vec![0.1, 1.0], vec![2, 1, 4], 9.5);
    /// let buckets: Vec<(f64, u64)> = h.cumulative().collect();
    /// assert_eq!(buckets, [(0.1, 2), (1.0, 3), (f64::INFINITY, 7)]);
    /// ```
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let total = saturating_sum(&self.counts);
        let mut running = 0u64;
        self.bounds_seconds
            .iter()
            .enumerate()
            .map(move |(i, &bound)| {
                running = running.saturating_add(self.counts.get(i).copied().unwrap_or(0));
                (bound, running)
            })
            .chain(std::iter::once((f64::INFINITY, total)))
    }

    /// The histogram over [`WAIT_BUCKETS_US`] from its per-bucket `counts`
    /// (see [`WaitHistogram::from_buckets`]) and the sum of the waits.
    pub fn from_counts(counts: Vec<u64>, sum_seconds: f64) -> Self {
        Self::from_buckets(
            WAIT_BUCKETS_US.iter().map(|&us| us as f64 / 1e6).collect(),
            counts,
            sum_seconds,
        )
    }

    /// A histogram from per-bucket counts (not cumulative) and the sum of
    /// all waits: `counts[i]` waits took at most `bounds_seconds[i]`, the
    /// last entry counts the waits above the last bound. `count` is their
    /// total. Missing buckets count 0; counts beyond the overflow bucket
    /// are added to it.
    pub fn from_buckets(bounds_seconds: Vec<f64>, mut counts: Vec<u64>, sum_seconds: f64) -> Self {
        let buckets = bounds_seconds.len() + 1;
        if counts.len() > buckets {
            let beyond = saturating_sum(&counts[buckets..]);
            counts.truncate(buckets);
            counts[buckets - 1] = counts[buckets - 1].saturating_add(beyond);
        }
        counts.resize(buckets, 0);
        WaitHistogram {
            bounds_seconds,
            count: saturating_sum(&counts),
            counts,
            sum_seconds,
        }
    }
}

/// The sum of `counts`, at most `u64::MAX`: the counts come from a board
/// any client of the pool can write.
fn saturating_sum(counts: &[u64]) -> u64 {
    counts.iter().fold(0u64, |sum, &c| sum.saturating_add(c))
}

impl PoolStats {
    /// Free slots (never negative, even while a shrink is draining).
    pub fn free(&self) -> u32 {
        self.capacity.saturating_sub(self.active)
    }

    /// Slots held beyond the capacity: non-zero only while a shrink drains
    /// (holders above the new capacity keep their slots until they release,
    /// and nobody new is admitted meanwhile).
    pub fn over_capacity(&self) -> u32 {
        self.active.saturating_sub(self.capacity)
    }

    /// The JSON document of `dbslots status --json` and `/api/pool-stats`:
    /// the fields of this struct plus `over_capacity`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.insert("over_capacity".into(), self.over_capacity().into());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::WaitHistogram;

    #[test]
    fn a_histogram_from_buckets_counts_them_and_keeps_one_overflow_bucket() {
        let h = WaitHistogram::from_buckets(vec![0.001, 0.01], vec![5, 2, 1], 0.5);
        assert_eq!(h.counts, [5, 2, 1]);
        assert_eq!(h.count, 8);
        assert_eq!(h.sum_seconds, 0.5);

        let short = WaitHistogram::from_buckets(vec![0.001, 0.01], vec![5], 0.0);
        assert_eq!(short.counts, [5, 0, 0]);
        let long = WaitHistogram::from_buckets(vec![0.001], vec![1, 2, 3], 0.0);
        assert_eq!((long.counts.as_slice(), long.count), (&[1, 5][..], 6));
    }
}
