//! The in-memory history window of one (room, event): the newest events, at most `limit`
//! of them and at most `max_bytes` in all, numbered by a sequence counter that grows by one
//! per stored event.

use crate::actors::messages::StoredEvent;
use std::collections::VecDeque;
use std::sync::Arc;

/// Newest-first positions or a cursor, resolved to an inclusive `seq` interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    /// Oldest `seq` wanted.
    pub lo: u64,
    /// Newest `seq` wanted.
    pub hi: u64,
}

impl SeqRange {
    pub fn is_empty(&self) -> bool {
        self.lo > self.hi || self.hi == 0
    }

    pub fn len(&self) -> u64 {
        if self.is_empty() {
            0
        } else {
            self.hi - self.lo + 1
        }
    }
}

/// Positions `start..end` counted from the newest of `last_seq` events.
pub fn offsets_to_seqs(last_seq: u64, start: u64, end: u64) -> SeqRange {
    if start >= last_seq || end <= start {
        return SeqRange { lo: 1, hi: 0 };
    }
    let hi = last_seq - start;
    let lo = last_seq.saturating_sub(end.saturating_sub(1)).max(1);
    SeqRange { lo, hi }
}

/// The `limit` newest events with a `seq` below `before`.
pub fn cursor_to_seqs(last_seq: u64, before: u64, limit: u64) -> SeqRange {
    let hi = before.saturating_sub(1).min(last_seq);
    if hi == 0 || limit == 0 {
        return SeqRange { lo: 1, hi: 0 };
    }
    let lo = hi.saturating_sub(limit - 1).max(1);
    SeqRange { lo, hi }
}

/// The bytes a history page (or a join's history) may still take
/// ([`crate::config::Config::max_page_bytes`]). Its first event is always admitted, so that
/// every event can be read whatever its size.
#[derive(Debug, Clone, Copy)]
pub struct PageBudget {
    left: usize,
    empty: bool,
    /// An event was refused: the page is not whole.
    cut: bool,
}

impl PageBudget {
    pub fn new(max_bytes: usize) -> Self {
        PageBudget {
            left: max_bytes,
            empty: true,
            cut: false,
        }
    }

    /// Takes `weight` bytes if they fit (or if nothing was taken yet).
    pub fn admit(&mut self, weight: usize) -> bool {
        if !self.empty && weight > self.left {
            self.cut = true;
            return false;
        }
        self.left = self.left.saturating_sub(weight);
        self.empty = false;
        true
    }

    /// Some event did not fit.
    pub fn was_cut(&self) -> bool {
        self.cut
    }

    /// Marks the page as not whole (a part of it was cut elsewhere).
    pub fn mark_cut(&mut self) {
        self.cut = true;
    }

    /// The newest-first `events` that fit, in order; stops at the first that does not.
    pub fn take<'a, I>(&mut self, events: I) -> Vec<Arc<StoredEvent>>
    where
        I: IntoIterator<Item = &'a Arc<StoredEvent>>,
    {
        events
            .into_iter()
            .take_while(|e| self.admit(e.weight()))
            .cloned()
            .collect()
    }
}

/// One event type's window in one room.
#[derive(Debug)]
pub struct EventHistory {
    /// Oldest first; `seq`s are contiguous and end at `last_seq`.
    events: VecDeque<Arc<StoredEvent>>,
    limit: usize,
    /// Bound of `bytes`; older events are dropped from memory (not from the database) first.
    max_bytes: usize,
    /// What the events in the window weigh ([`StoredEvent::weight`]).
    bytes: usize,
    last_seq: u64,
}

impl EventHistory {
    /// An empty window of at most `limit` events and `max_bytes` bytes.
    pub fn new(limit: usize, max_bytes: usize) -> Self {
        EventHistory {
            events: VecDeque::with_capacity(limit.min(1024)),
            limit,
            max_bytes,
            bytes: 0,
            last_seq: 0,
        }
    }

    /// Restores a window (oldest first) and counter, e.g. after a restart.
    pub fn restore(
        limit: usize,
        max_bytes: usize,
        events: Vec<Arc<StoredEvent>>,
        last_seq: u64,
    ) -> Self {
        let mut h = EventHistory::new(limit, max_bytes);
        h.last_seq = last_seq;
        let skip = events.len().saturating_sub(limit);
        for event in events.into_iter().skip(skip) {
            h.bytes += event.weight();
            h.events.push_back(event);
        }
        h.evict();
        h
    }

    /// Bytes the window holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Oldest `seq` still in memory (`last_seq + 1` when empty).
    pub fn first_seq_in_memory(&self) -> u64 {
        self.events
            .front()
            .map(|e| e.seq)
            .unwrap_or(self.last_seq + 1)
    }

    /// Appends the event numbered `last_seq + 1`; returns what fell out of the window.
    pub fn push(&mut self, event: Arc<StoredEvent>) -> Vec<Arc<StoredEvent>> {
        debug_assert_eq!(event.seq, self.last_seq + 1);
        self.last_seq = event.seq;
        self.bytes += event.weight();
        self.events.push_back(event);
        self.evict()
    }

    /// Drops the oldest events until both bounds hold.
    fn evict(&mut self) -> Vec<Arc<StoredEvent>> {
        let mut out = Vec::new();
        while self.events.len() > self.limit || self.bytes > self.max_bytes {
            let Some(oldest) = self.events.pop_front() else {
                break;
            };
            self.bytes -= oldest.weight();
            out.push(oldest);
        }
        out
    }

    /// A copy of the window, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<StoredEvent>> {
        self.events.iter().cloned().collect()
    }

    /// Empties the window (for a final flush); the counter stays.
    pub fn take_all(&mut self) -> Vec<Arc<StoredEvent>> {
        self.bytes = 0;
        self.events.drain(..).collect()
    }

    /// The in-memory part of `range`, newest first.
    pub fn newest_first(
        &self,
        range: SeqRange,
    ) -> impl DoubleEndedIterator<Item = &Arc<StoredEvent>> {
        let first = self.first_seq_in_memory();
        let (lo, hi) = (range.lo.max(first), range.hi.min(self.last_seq));
        let (from, to) = if range.is_empty() || lo > hi {
            (0, 0)
        } else {
            ((lo - first) as usize, (hi - first) as usize + 1)
        };
        self.events.range(from..to).rev()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn ev(seq: u64) -> Arc<StoredEvent> {
        Arc::new(StoredEvent::new(
            "r",
            "e",
            seq,
            0,
            0,
            "u".into(),
            &Value::Null,
            None::<&Value>,
        ))
    }

    #[test]
    fn offsets_map_to_seq_intervals() {
        assert_eq!(offsets_to_seqs(1000, 0, 20), SeqRange { lo: 981, hi: 1000 });
        assert_eq!(offsets_to_seqs(1000, 980, 1000), SeqRange { lo: 1, hi: 20 });
        assert_eq!(offsets_to_seqs(1000, 990, 1010), SeqRange { lo: 1, hi: 10 });
        assert!(offsets_to_seqs(1000, 1000, 1020).is_empty());
        assert!(offsets_to_seqs(0, 0, 50).is_empty());
        assert!(offsets_to_seqs(10, 3, 3).is_empty());
    }

    #[test]
    fn cursors_map_to_seq_intervals() {
        assert_eq!(cursor_to_seqs(1000, 981, 20), SeqRange { lo: 961, hi: 980 });
        assert_eq!(
            cursor_to_seqs(1000, 5000, 20),
            SeqRange { lo: 981, hi: 1000 }
        );
        assert_eq!(cursor_to_seqs(1000, 10, 20), SeqRange { lo: 1, hi: 9 });
        assert!(cursor_to_seqs(1000, 1, 20).is_empty());
    }

    #[test]
    fn window_evicts_oldest_and_pages_newest_first() {
        let mut h = EventHistory::new(3, usize::MAX);
        let mut evicted = vec![];
        for seq in 1..=5 {
            evicted.extend(h.push(ev(seq)).into_iter().map(|e| e.seq));
        }
        assert_eq!(evicted, vec![1, 2]);
        assert_eq!(h.first_seq_in_memory(), 3);
        let page: Vec<u64> = h
            .newest_first(SeqRange { lo: 1, hi: 5 })
            .map(|e| e.seq)
            .collect();
        assert_eq!(page, vec![5, 4, 3]);
        let page: Vec<u64> = h
            .newest_first(SeqRange { lo: 4, hi: 4 })
            .map(|e| e.seq)
            .collect();
        assert_eq!(page, vec![4]);
        assert_eq!(h.newest_first(SeqRange { lo: 1, hi: 2 }).count(), 0);
    }

    #[test]
    fn window_is_bounded_by_bytes_too() {
        let weight = ev(1).weight();
        let mut h = EventHistory::new(100, 3 * weight);
        let mut evicted = vec![];
        for seq in 1..=5 {
            evicted.extend(h.push(ev(seq)).into_iter().map(|e| e.seq));
        }
        assert_eq!(evicted, vec![1, 2]);
        assert_eq!(h.len(), 3);
        assert_eq!(h.bytes(), 3 * weight);
        assert_eq!(h.first_seq_in_memory(), 3);
        // A budget smaller than one event keeps none in memory; the counter goes on.
        let mut tiny = EventHistory::new(100, weight - 1);
        assert_eq!(tiny.push(ev(1)).len(), 1);
        assert!(tiny.is_empty());
        assert_eq!(
            (tiny.last_seq(), tiny.first_seq_in_memory(), tiny.bytes()),
            (1, 2, 0)
        );
        let restored = EventHistory::restore(100, 2 * weight, (1..=4).map(ev).collect(), 4);
        assert_eq!((restored.len(), restored.bytes()), (2, 2 * weight));
        assert_eq!(restored.first_seq_in_memory(), 3);
    }

    #[test]
    fn a_page_budget_admits_its_first_event_whatever_its_size() {
        let weight = ev(1).weight();
        let events: Vec<_> = (1..=5).rev().map(ev).collect();
        assert_eq!(PageBudget::new(2 * weight).take(&events).len(), 2);
        assert_eq!(PageBudget::new(2 * weight + 1).take(&events).len(), 2);
        assert_eq!(
            PageBudget::new(0).take(&events).len(),
            1,
            "the first always"
        );
        let mut budget = PageBudget::new(weight);
        assert!(budget.admit(weight));
        assert!(!budget.was_cut());
        assert!(!budget.admit(1), "spent");
        assert!(budget.was_cut());
    }

    #[test]
    fn restore_keeps_the_newest() {
        let h = EventHistory::restore(2, usize::MAX, vec![ev(7), ev(8), ev(9)], 9);
        assert_eq!(h.first_seq_in_memory(), 8);
        assert_eq!(h.last_seq(), 9);
    }
}
