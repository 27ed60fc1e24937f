//! Summaries of many samples without keeping them: a log-linear latency histogram shared by
//! every receiving task (a soak records tens of millions of deliveries), and the nearest-rank
//! percentile of a sorted slice for small sample sets; and a timeline of deliveries by send
//! time, which shows when a run's tail happened.

use std::sync::atomic::{AtomicU64, Ordering};

/// Values below `2^SUB_BITS` get a bucket each; above, every power of two is split into
/// `2^(SUB_BITS - 1)` buckets, so a recorded value is off by less than 1/128 (0.8 %).
const SUB_BITS: u32 = 8;
const SUB: u64 = 1 << SUB_BITS;
const HALF: u64 = SUB / 2;
const BUCKETS: usize = (SUB + (64 - SUB_BITS as u64) * HALF) as usize;

/// A concurrent histogram of non-negative integers (microseconds here).
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    // v has `bits` significant bits, bits > SUB_BITS; keep the top SUB_BITS of them.
    let bits = 64 - v.leading_zeros();
    let shift = bits - SUB_BITS;
    let top = v >> shift; // in HALF..SUB
    (SUB + (shift as u64 - 1) * HALF + (top - HALF)) as usize
}

/// The largest value that falls in bucket `b` (percentiles are reported at the upper edge).
fn upper_of(b: usize) -> u64 {
    let b = b as u64;
    if b < SUB {
        return b;
    }
    let shift = (b - SUB) / HALF + 1;
    let top = (b - SUB) % HALF + HALF;
    // u128: the last bucket's edge is 2^64 - 1.
    (((top as u128 + 1) << shift) - 1).min(u64::MAX as u128) as u64
}

impl Histogram {
    pub fn record(&self, v: u64) {
        self.counts[bucket_of(v)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// Nearest-rank percentile `p` (0–100); `None` when empty.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        if p >= 100.0 {
            return Some(self.max());
        }
        let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(upper_of(b).min(self.max()));
            }
        }
        Some(self.max())
    }
}

/// Percentile of sorted values (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Which `seq`s one receiver has seen, as a bitmap from the first one (a room's `seq`s are
/// contiguous, so this stays small); earlier `seq`s, which should not come, go to a list.
#[derive(Default)]
pub struct SeenSeqs {
    base: Option<u64>,
    bits: Vec<u64>,
    earlier: Vec<u64>,
}

impl SeenSeqs {
    /// Records `seq`; `false` when it was seen before.
    pub fn insert(&mut self, seq: u64) -> bool {
        let base = *self.base.get_or_insert(seq);
        if seq < base {
            if self.earlier.contains(&seq) {
                return false;
            }
            self.earlier.push(seq);
            return true;
        }
        let i = (seq - base) as usize;
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let fresh = self.bits[word] & bit == 0;
        self.bits[word] |= bit;
        fresh
    }
}

/// Deliveries by the time their message was sent, in slots of `slot_us`: how many, how many
/// took longer than `slow_us`, and the slowest. Shows whether a run's tail comes in bursts
/// (and when) or is spread over the run.
pub struct Timeline {
    start_us: u64,
    slot_us: u64,
    slow_us: u64,
    /// Per slot: deliveries, slow deliveries, the largest latency.
    slots: Box<[[AtomicU64; 3]]>,
}

/// A [`Timeline`]'s totals.
#[derive(Debug, Default, PartialEq)]
pub struct TimelineSummary {
    pub deliveries: u64,
    pub slow: u64,
    /// Slots with a delivery.
    pub slots: u64,
    /// Slots with a slow delivery.
    pub slow_slots: u64,
}

impl Timeline {
    /// Slots from `start_us` (wall clock, µs) for `seconds`; later sends fall in the last.
    pub fn new(start_us: u64, seconds: f64, slot_us: u64, slow_us: u64) -> Self {
        let n = (seconds * 1e6 / slot_us as f64).ceil() as usize + 1;
        Timeline {
            start_us,
            slot_us,
            slow_us,
            slots: (0..n).map(|_| Default::default()).collect(),
        }
    }

    pub fn record(&self, sent_us: u64, latency_us: u64) {
        let i = (sent_us.saturating_sub(self.start_us) / self.slot_us) as usize;
        let slot = &self.slots[i.min(self.slots.len() - 1)];
        slot[0].fetch_add(1, Ordering::Relaxed);
        if latency_us > self.slow_us {
            slot[1].fetch_add(1, Ordering::Relaxed);
        }
        slot[2].fetch_max(latency_us, Ordering::Relaxed);
    }

    /// Totals over the run.
    pub fn summary(&self) -> TimelineSummary {
        let mut sum = TimelineSummary::default();
        for s in self.slots.iter() {
            let [n, slow] = [&s[0], &s[1]].map(|a| a.load(Ordering::Relaxed));
            sum.deliveries += n;
            sum.slow += slow;
            sum.slots += u64::from(n > 0);
            sum.slow_slots += u64::from(slow > 0);
        }
        sum
    }

    /// Tab-separated lines: slot start (wall clock, ms), deliveries, slow ones, max (µs).
    pub fn to_tsv(&self) -> String {
        let mut out = format!("start_ms\tdeliveries\tover_{}us\tmax_us\n", self.slow_us);
        for (i, s) in self.slots.iter().enumerate() {
            let [n, slow, max] = s.each_ref().map(|a| a.load(Ordering::Relaxed));
            let at = (self.start_us + i as u64 * self.slot_us) / 1000;
            out.push_str(&format!("{at}\t{n}\t{slow}\t{max}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..100_000u64).chain([1 << 40, u64::MAX / 3]) {
            let b = bucket_of(v);
            assert!(b >= last, "{v}");
            last = b;
            let up = upper_of(b);
            assert!(up >= v, "{v} {up}");
            assert!((up - v) as f64 <= v as f64 / 128.0 + 1.0, "{v} {up}");
        }
        assert!(bucket_of(u64::MAX) < BUCKETS);
    }

    #[test]
    fn percentiles_of_a_histogram() {
        let h = Histogram::default();
        for v in 1..=1000 {
            h.record(v);
        }
        assert!((500..=501).contains(&h.percentile(50.0).unwrap()));
        assert!((990..=998).contains(&h.percentile(99.0).unwrap()));
        assert_eq!(h.percentile(100.0), Some(1000));
        assert_eq!(Histogram::default().percentile(50.0), None);
    }

    #[test]
    fn seen_seqs_find_duplicates() {
        let mut s = SeenSeqs::default();
        assert!(s.insert(10));
        assert!(s.insert(11));
        assert!(!s.insert(10));
        assert!(s.insert(300));
        assert!(!s.insert(300));
        assert!(s.insert(5));
        assert!(!s.insert(5));
    }

    #[test]
    fn a_timeline_puts_deliveries_in_the_slot_of_their_send() {
        let t = Timeline::new(1_000_000, 0.3, 100_000, 5_000);
        t.record(1_000_000, 1_000); // slot 0, fast
        t.record(1_099_999, 7_000); // slot 0, slow
        t.record(1_150_000, 5_000); // slot 1, not over 5 ms
        t.record(9_000_000, 40_000); // after the run: the last slot
        t.record(500_000, 2_000); // before the start: slot 0
        let tsv = t.to_tsv();
        let lines: Vec<&str> = tsv.lines().collect();
        assert_eq!(lines[0], "start_ms\tdeliveries\tover_5000us\tmax_us");
        assert_eq!(lines[1], "1000\t3\t1\t7000");
        assert_eq!(lines[2], "1100\t1\t0\t5000");
        assert_eq!(lines[3], "1200\t0\t0\t0");
        assert_eq!(lines.last(), Some(&"1300\t1\t1\t40000"));
        assert_eq!(lines.len(), 1 + 4); // 3 slots of the run and one for later sends
        let summary = TimelineSummary {
            deliveries: 5,
            slow: 2,
            slots: 3,
            slow_slots: 2,
        };
        assert_eq!(t.summary(), summary);
    }
}
