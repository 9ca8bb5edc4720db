//! The slot table: which slot holds which token, the free slots, the recent
//! window and the eviction candidates. No key/value rows, no arithmetic.
//!
//! A slot is a row index into the caller's (or [`Cache`](crate::Cache)'s)
//! `[slots × head_dim]` key and value buffers. Slots are handed out from a
//! free stack first and otherwise from the high-water mark, so every
//! occupied slot is below [`SlotTable::high_water`] and attention can run
//! over one contiguous prefix of the buffers. Evicting a token frees its
//! slot; the next insertion reuses it. Nothing is ever shifted or compacted.
//!
//! # Invariants
//! This is the one place that states them ([`SlotTable::from_parts`] checks
//! them for a snapshot restore; the unit tests check them after every
//! transition):
//! 1. every occupied slot is below `high_water`; the free stack holds exactly
//!    the free slots below it, each once;
//! 2. the recent ring holds the newest `min(window, len)` tokens, oldest
//!    first, and they are exactly the slots in the `Recent` state;
//! 3. positions of occupied slots are distinct and below the next position;
//!    no candidate is newer than the oldest recent token;
//! 4. a token whose position is below `sinks` is never a candidate (`Sink`
//!    once it leaves the recent window);
//! 5. the candidate list holds exactly the slots in the `Candidate` state;
//! 6. at most `slots` tokens are resident.

use std::collections::VecDeque;

use crate::error::{Error, Result};

/// What a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    /// No token; the row contents are stale and never read as a token.
    Free,
    /// A token outside the recent window: an eviction candidate.
    Candidate,
    /// One of the newest `window` tokens: never evicted.
    Recent,
    /// One of the first `sinks` positions ever inserted, outside the recent
    /// window: never evicted (attention sinks).
    Sink,
}

/// Fixed-capacity bookkeeping for one head's resident tokens.
#[derive(Debug)]
pub(crate) struct SlotTable {
    /// `[slots]`: absolute token position of the token in each occupied slot.
    positions: Vec<u64>,
    /// `[slots]`: what each slot holds.
    states: Vec<SlotState>,
    /// Freed slots below `high_water`, reused last-freed first.
    free: Vec<usize>,
    /// One past the highest slot ever occupied since the last reset.
    high_water: usize,
    /// Slots of the newest tokens, oldest first; at most `window` long.
    recent: VecDeque<usize>,
    /// Length of the recent window in tokens.
    window: usize,
    /// Positions below this are attention sinks (never candidates).
    sinks: u64,
    /// Occupied slots.
    len: usize,
    /// Slots in the `Candidate` state, in no particular order, so the victim
    /// search visits only candidates and never branches on a slot's state.
    candidates: Vec<usize>,
    /// `[slots]`: index of each slot in `candidates`, or `NOT_CANDIDATE`.
    candidate_index: Vec<usize>,
    /// `[slots]`: whether the slot's last occupation raised the high-water
    /// mark (rather than popping the free stack), so that a truncate can undo
    /// it exactly.
    from_mark: Vec<bool>,
}

/// `candidate_index` entry of a slot that is not a candidate.
const NOT_CANDIDATE: usize = usize::MAX;

impl SlotTable {
    /// A table of `slots` slots, a recent ring of `window` slots and `sinks`
    /// protected first positions.
    pub(crate) fn new(slots: usize, window: usize, sinks: usize) -> Result<Self> {
        Ok(Self {
            positions: try_vec(slots, 0)?,
            states: try_vec(slots, SlotState::Free)?,
            free: try_with_capacity(slots)?,
            high_water: 0,
            recent: VecDeque::with_capacity(window.min(slots)),
            window,
            sinks: sinks as u64,
            len: 0,
            candidates: try_with_capacity(slots)?,
            candidate_index: try_vec(slots, NOT_CANDIDATE)?,
            from_mark: try_vec(slots, false)?,
        })
    }

    /// Slots of the eviction candidates (occupied, outside the recent window,
    /// not sinks), in no particular order.
    pub(crate) fn candidates(&self) -> &[usize] {
        &self.candidates
    }

    /// Makes an occupied slot outside the recent window a candidate, or a
    /// sink if its position is one.
    fn set_outside(&mut self, slot: usize) {
        if self.positions[slot] < self.sinks {
            self.unset_candidate(slot, SlotState::Sink);
            return;
        }
        self.states[slot] = SlotState::Candidate;
        if self.candidate_index[slot] == NOT_CANDIDATE {
            self.candidate_index[slot] = self.candidates.len();
            self.candidates.push(slot);
        }
    }

    fn unset_candidate(&mut self, slot: usize, state: SlotState) {
        self.states[slot] = state;
        let i = core::mem::replace(&mut self.candidate_index[slot], NOT_CANDIDATE);
        if i != NOT_CANDIDATE {
            self.candidates.swap_remove(i);
            if let Some(&moved) = self.candidates.get(i) {
                self.candidate_index[moved] = i;
            }
        }
    }

    pub(crate) fn slots(&self) -> usize {
        self.states.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn high_water(&self) -> usize {
        self.high_water
    }

    pub(crate) fn state(&self, slot: usize) -> SlotState {
        self.states[slot]
    }

    /// States of slots `0..high_water`.
    pub(crate) fn states(&self) -> &[SlotState] {
        &self.states[..self.high_water]
    }

    pub(crate) fn position(&self, slot: usize) -> u64 {
        self.positions[slot]
    }

    /// Positions of slots `0..high_water` (stale for free slots).
    pub(crate) fn positions(&self) -> &[u64] {
        &self.positions[..self.high_water]
    }

    /// The slot the next insertion will use, if any is vacant.
    pub(crate) fn vacant_slot(&self) -> Option<usize> {
        match self.free.last() {
            Some(&slot) => Some(slot),
            None if self.high_water < self.slots() => Some(self.high_water),
            None => None,
        }
    }

    /// Marks the slot returned by [`vacant_slot`](Self::vacant_slot) as holding
    /// the token at `position`, outside the recent window.
    pub(crate) fn occupy(&mut self, slot: usize, position: u64) {
        debug_assert_eq!(Some(slot), self.vacant_slot());
        let from_mark = slot == self.high_water && self.free.last() != Some(&slot);
        if from_mark {
            self.high_water += 1;
        } else {
            self.free.pop();
        }
        self.from_mark[slot] = from_mark;
        self.positions[slot] = position;
        self.set_outside(slot);
        self.len += 1;
    }

    /// Makes `slot` the newest token of the recent window; the oldest window
    /// token, if the window overflows, becomes an eviction candidate (or a
    /// sink).
    pub(crate) fn push_recent(&mut self, slot: usize) {
        if self.window == 0 {
            return;
        }
        if self.recent.len() == self.window {
            if let Some(oldest) = self.recent.pop_front() {
                self.set_outside(oldest);
            }
        }
        self.recent.push_back(slot);
        self.unset_candidate(slot, SlotState::Recent);
    }

    /// The slot that leaves the recent window at the next
    /// [`push_recent`](Self::push_recent), if the window is full.
    pub(crate) fn graduating(&self) -> Option<usize> {
        if self.window > 0 && self.recent.len() == self.window {
            self.recent.front().copied()
        } else {
            None
        }
    }

    /// Empties the recent window; its tokens become candidates (or sinks).
    pub(crate) fn clear_recent(&mut self) {
        while let Some(slot) = self.recent.pop_front() {
            self.set_outside(slot);
        }
    }

    /// Frees an occupied slot outside the recent window.
    pub(crate) fn release(&mut self, slot: usize) {
        debug_assert_eq!(self.states[slot], SlotState::Candidate);
        self.unset_candidate(slot, SlotState::Free);
        self.free.push(slot);
        self.len -= 1;
    }

    /// Slots of the recent window, oldest first.
    pub(crate) fn recent(&self) -> impl Iterator<Item = usize> + '_ {
        self.recent.iter().copied()
    }

    /// The free-slot stack, bottom first (the last entry is reused next).
    pub(crate) fn free_slots(&self) -> &[usize] {
        &self.free
    }

    /// Forgets every token; keeps the allocation.
    pub(crate) fn reset(&mut self) {
        self.states.iter_mut().for_each(|s| *s = SlotState::Free);
        self.candidate_index.iter_mut().for_each(|i| *i = NOT_CANDIDATE);
        self.candidates.clear();
        self.free.clear();
        self.recent.clear();
        self.high_water = 0;
        self.len = 0;
    }

    /// Whether `other` has the same slot count, recent window and sinks, so
    /// that [`copy_from`](Self::copy_from) needs no allocation.
    pub(crate) fn same_shape(&self, other: &SlotTable) -> bool {
        self.slots() == other.slots() && self.window == other.window && self.sinks == other.sinks
    }

    /// Makes this table an exact copy of `other`, which has the
    /// [`same_shape`](Self::same_shape) (checked by the caller). Reuses this
    /// table's buffers: the free stack and the candidate list have room for
    /// every slot and the recent ring for the window, so nothing is allocated.
    pub(crate) fn copy_from(&mut self, other: &SlotTable) {
        debug_assert!(self.same_shape(other));
        self.positions.copy_from_slice(&other.positions);
        self.states.copy_from_slice(&other.states);
        self.free.clear();
        self.free.extend_from_slice(&other.free);
        self.high_water = other.high_water;
        self.recent.clear();
        self.recent.extend(other.recent.iter().copied());
        self.len = other.len;
        self.candidates.clear();
        self.candidates.extend_from_slice(&other.candidates);
        self.candidate_index.copy_from_slice(&other.candidate_index);
        self.from_mark.copy_from_slice(&other.from_mark);
    }

    /// Resident tokens at positions `from` and above.
    pub(crate) fn count_from(&self, from: u64) -> usize {
        (0..self.high_water)
            .filter(|&s| self.states[s] != SlotState::Free && self.positions[s] >= from)
            .count()
    }

    /// Frees the slots of the tokens at positions `from..next_position`
    /// (all resident: checked by the caller), newest first, as if their
    /// insertions had not happened: a slot taken from the high-water mark
    /// lowers it again, one taken from the free stack goes back on top.
    /// Then the recent window is refilled with the newest remaining tokens,
    /// so every invariant holds again. O(`n · slots`) for `n` tokens.
    pub(crate) fn truncate(&mut self, from: u64, next_position: u64) {
        for p in (from..next_position).rev() {
            let Some(slot) = (0..self.high_water)
                .find(|&s| self.states[s] != SlotState::Free && self.positions[s] == p)
            else {
                debug_assert!(false, "truncated position {p} is not resident");
                continue;
            };
            if self.states[slot] == SlotState::Recent {
                // The newest tokens are at the back of the ring.
                debug_assert_eq!(self.recent.back(), Some(&slot));
                self.recent.pop_back();
            }
            self.unset_candidate(slot, SlotState::Free);
            if self.from_mark[slot] && slot + 1 == self.high_water {
                self.high_water -= 1;
            } else {
                self.free.push(slot);
            }
            self.len -= 1;
        }
        // Tokens that left the window while the dropped ones were inserted
        // come back into it, newest last.
        while self.recent.len() < self.window.min(self.len) {
            let newest_outside = (0..self.high_water)
                .filter(|&s| matches!(self.states[s], SlotState::Candidate | SlotState::Sink))
                .max_by_key(|&s| self.positions[s]);
            let Some(slot) = newest_outside else { break };
            self.recent.push_front(slot);
            self.unset_candidate(slot, SlotState::Recent);
        }
    }

    /// Rebuilds a table from a saved layout (a snapshot), checking every
    /// invariant in the module docs first: `states` for slots
    /// `0..high_water`, the positions of the occupied ones in slot order, the
    /// free stack bottom first and the recent ring oldest first. The table
    /// must be fresh (just constructed). Errors name the broken invariant.
    pub(crate) fn restore(
        &mut self,
        states: &[SlotState],
        positions: &[u64],
        free: &[usize],
        recent: &[usize],
        next_position: u64,
    ) -> core::result::Result<(), &'static str> {
        let high_water = states.len();
        if high_water > self.slots() {
            return Err("high-water mark above the slot count");
        }
        let occupied: Vec<usize> =
            (0..high_water).filter(|&s| states[s] != SlotState::Free).collect();
        if occupied.len() != positions.len() {
            return Err("token count does not match the occupied slots");
        }
        let mut position_of = vec![u64::MAX; high_water];
        for (&s, &p) in occupied.iter().zip(positions) {
            if p >= next_position {
                return Err("a resident position is not below the next position");
            }
            position_of[s] = p;
        }
        let mut sorted = positions.to_vec();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err("two resident tokens share a position");
        }
        let n_free = high_water - occupied.len();
        let mut seen = vec![false; high_water];
        for &s in free {
            if s >= high_water
                || states[s] != SlotState::Free
                || core::mem::replace(&mut seen[s], true)
            {
                return Err("free stack does not match the free slots");
            }
        }
        if free.len() != n_free {
            return Err("free stack does not match the free slots");
        }
        let n_recent = states.iter().filter(|&&s| s == SlotState::Recent).count();
        if recent.len() != self.window.min(occupied.len()) || recent.len() != n_recent {
            return Err("recent ring does not match the recent slots");
        }
        let mut previous = None;
        for &s in recent {
            if s >= high_water || states[s] != SlotState::Recent {
                return Err("recent ring does not match the recent slots");
            }
            if Some(position_of[s]) <= previous {
                return Err("recent ring is not oldest first");
            }
            previous = Some(position_of[s]);
        }
        for &s in &occupied {
            let sink = position_of[s] < self.sinks;
            match states[s] {
                SlotState::Candidate if sink => return Err("a sink position is a candidate"),
                SlotState::Sink if !sink => return Err("a sink state on a non-sink position"),
                _ => {}
            }
        }
        let oldest_recent = recent.first().map(|&s| position_of[s]);
        let newest_candidate = occupied
            .iter()
            .filter(|&&s| states[s] == SlotState::Candidate)
            .map(|&s| position_of[s])
            .max();
        if let (Some(r), Some(c)) = (oldest_recent, newest_candidate) {
            if c > r {
                return Err("a candidate is newer than the recent window");
            }
        }
        // Valid: occupy every slot below the mark in order (a fresh table
        // hands them out from the mark), free the free ones in stack order,
        // then rebuild the recent ring oldest first.
        debug_assert_eq!(self.high_water, 0);
        for s in 0..high_water {
            let p = if states[s] == SlotState::Free { self.sinks } else { position_of[s] };
            self.occupy(s, p);
            if states[s] == SlotState::Free {
                // Occupied as a candidate only to be released below.
                debug_assert_eq!(self.states[s], SlotState::Candidate);
            }
        }
        for &s in free {
            self.release(s);
        }
        for &s in recent {
            self.push_recent(s);
        }
        debug_assert!(self.states().iter().eq(states.iter()));
        Ok(())
    }
}

/// A derived `Clone` would give the free stack and the recent ring only the
/// capacity of their current length, so a clone (and every head of a
/// `LayerCache`, built by cloning) would allocate while decoding. This keeps
/// their full capacity, as [`SlotTable::new`] does.
impl Clone for SlotTable {
    fn clone(&self) -> Self {
        let mut free = Vec::with_capacity(self.states.len());
        free.extend_from_slice(&self.free);
        let mut recent = VecDeque::with_capacity(self.window.min(self.states.len()));
        recent.extend(self.recent.iter().copied());
        let mut candidates = Vec::with_capacity(self.states.len());
        candidates.extend_from_slice(&self.candidates);
        Self {
            positions: self.positions.clone(),
            states: self.states.clone(),
            free,
            high_water: self.high_water,
            recent,
            window: self.window,
            sinks: self.sinks,
            len: self.len,
            candidates,
            candidate_index: self.candidate_index.clone(),
            from_mark: self.from_mark.clone(),
        }
    }
}

/// An empty `Vec` with room for `n` elements, or `AllocationFailed`.
fn try_with_capacity<X>(n: usize) -> Result<Vec<X>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| Error::AllocationFailed { bytes: n.saturating_mul(size_of::<X>()) })?;
    Ok(v)
}

/// `n` copies of `x`, or `AllocationFailed` instead of an abort.
pub(crate) fn try_vec<X: Clone>(n: usize, x: X) -> Result<Vec<X>> {
    let mut v = try_with_capacity(n)?;
    v.resize(n, x);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(slots: usize, window: usize) -> SlotTable {
        SlotTable::new(slots, window, 0).unwrap()
    }

    fn insert(s: &mut SlotTable, pos: u64) -> usize {
        let slot = s.vacant_slot().unwrap();
        s.occupy(slot, pos);
        s.push_recent(slot);
        slot
    }

    /// Every invariant of the module docs, checked by rebuilding a copy of
    /// the table from its own layout.
    fn assert_invariants(s: &SlotTable, next_position: u64) {
        let mut listed = s.candidates().to_vec();
        listed.sort_unstable();
        let want: Vec<usize> =
            (0..s.slots()).filter(|&i| s.states[i] == SlotState::Candidate).collect();
        assert_eq!(listed, want);
        let positions: Vec<u64> = (0..s.high_water)
            .filter(|&i| s.states[i] != SlotState::Free)
            .map(|i| s.positions[i])
            .collect();
        let recent: Vec<usize> = s.recent().collect();
        let mut fresh = SlotTable::new(s.slots(), s.window, s.sinks as usize).unwrap();
        fresh.restore(s.states(), &positions, &s.free, &recent, next_position).unwrap();
    }

    #[test]
    fn fills_in_order_then_reuses_freed_slots() {
        let mut s = table(3, 1);
        assert_eq!([insert(&mut s, 0), insert(&mut s, 1), insert(&mut s, 2)], [0, 1, 2]);
        assert_eq!(s.vacant_slot(), None);
        s.release(1);
        assert_eq!(s.vacant_slot(), Some(1));
        assert_eq!(insert(&mut s, 3), 1);
        assert_eq!(s.position(1), 3);
        assert_eq!((s.len(), s.high_water()), (3, 3));
        assert_invariants(&s, 4);
    }

    #[test]
    fn recent_window_graduates_oldest() {
        let mut s = table(4, 2);
        let a = insert(&mut s, 0);
        let b = insert(&mut s, 1);
        assert_eq!((s.state(a), s.state(b)), (SlotState::Recent, SlotState::Recent));
        assert_eq!(s.graduating(), Some(a));
        let c = insert(&mut s, 2);
        assert_eq!(s.state(a), SlotState::Candidate);
        assert_eq!(s.recent().collect::<Vec<_>>(), [b, c]);
        s.clear_recent();
        assert!(s.states().iter().all(|&st| st == SlotState::Candidate));
    }

    #[test]
    fn sinks_are_never_candidates() {
        let mut s = SlotTable::new(5, 2, 2).unwrap();
        for pos in 0..4 {
            insert(&mut s, pos);
            assert_invariants(&s, pos + 1);
        }
        assert_eq!((s.state(0), s.state(1)), (SlotState::Sink, SlotState::Sink));
        assert_eq!(s.candidates().len(), 0);
        insert(&mut s, 4);
        assert_eq!(s.candidates(), [2]);
        // (Clearing the window is a prefill's intermediate state: no
        // invariant check here.)
        s.clear_recent();
        let mut listed = s.candidates().to_vec();
        listed.sort_unstable();
        assert_eq!(listed, [2, 3, 4]);
    }

    #[test]
    fn candidate_list_follows_every_transition() {
        let mut s = table(6, 2);
        for pos in 0..5 {
            insert(&mut s, pos);
            assert_invariants(&s, pos + 1);
        }
        s.release(1);
        assert_invariants(&s, 5);
        s.release(0);
        assert_invariants(&s, 5);
        insert(&mut s, 5);
        assert_invariants(&s, 6);
        s.clear_recent();
        assert_eq!(s.candidates().len(), s.len());
        let c = s.clone();
        assert_eq!(c.candidates(), s.candidates());
        s.reset();
        assert_invariants(&s, 0);
        assert!(s.candidates().is_empty());
    }

    /// Truncating the newest tokens keeps every invariant, for windows,
    /// sinks and free slots on the stack, and undoes the insertions: with
    /// no release since, the table equals the one before them.
    #[test]
    fn truncate_keeps_the_invariants() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for (slots, window, sinks) in [(6, 2, 0), (8, 3, 2), (5, 0, 1), (7, 7, 0), (9, 1, 3)] {
            let mut s = SlotTable::new(slots, window, sinks).unwrap();
            let mut pos = 0u64;
            for _ in 0..400 {
                match next(3) {
                    0 if s.vacant_slot().is_some() => {
                        insert(&mut s, pos);
                        pos += 1;
                    }
                    1 if !s.candidates().is_empty() => {
                        let c = s.candidates()[next(s.candidates().len() as u64) as usize];
                        s.release(c);
                    }
                    _ => {
                        let n = next(4);
                        if n <= pos && s.count_from(pos - n) == n as usize {
                            s.truncate(pos - n, pos);
                            pos -= n;
                        }
                    }
                }
                assert_invariants(&s, pos);
                // Insertions followed by their truncation change nothing.
                let before = s.clone();
                let mut added = 0;
                while added < 3 && s.vacant_slot().is_some() {
                    insert(&mut s, pos + added);
                    added += 1;
                }
                s.truncate(pos, pos + added);
                assert_invariants(&s, pos);
                assert_eq!(s.states(), before.states());
                assert_eq!(s.free, before.free);
                assert_eq!(s.recent, before.recent);
                let mut a = s.candidates().to_vec();
                let mut b = before.candidates().to_vec();
                a.sort_unstable();
                b.sort_unstable();
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn restore_refuses_impossible_layouts() {
        use SlotState::{Candidate as C, Free as F, Recent as R};
        let fresh = || table(4, 1);
        assert!(fresh().restore(&[C, R], &[0, 1], &[], &[1], 2).is_ok());
        type Layout<'a> = (&'a [SlotState], &'a [u64], &'a [usize], &'a [usize], u64);
        let bad: [Layout<'_>; 7] = [
            (&[C, R], &[0, 1], &[], &[1], 1), // position not below next
            (&[C, R], &[1, 1], &[], &[1], 2), // shared position
            (&[F, R], &[1], &[], &[1], 2),    // free slot not on the stack
            (&[C, R], &[0, 1], &[], &[0], 2), // ring names a candidate
            (&[R, C], &[0, 1], &[], &[0], 2), // candidate newer than the window
            (&[C, C], &[0, 1], &[], &[], 2),  // ring shorter than the window
            (&[C, R, C, C, C], &[0, 1, 2, 3, 4], &[], &[1], 5), // above the slot count
        ];
        for (states, positions, free, recent, next) in bad {
            assert!(fresh().restore(states, positions, free, recent, next).is_err(), "{states:?}");
        }
    }

    #[test]
    fn zero_window_makes_every_token_a_candidate() {
        let mut s = table(2, 0);
        let a = insert(&mut s, 0);
        assert_eq!(s.state(a), SlotState::Candidate);
    }

    #[test]
    fn reset_restores_the_empty_state() {
        let mut s = table(2, 1);
        insert(&mut s, 0);
        insert(&mut s, 1);
        s.reset();
        assert_eq!((s.len(), s.high_water(), s.vacant_slot()), (0, 0, Some(0)));
        assert_eq!(s.recent().count(), 0);
    }

    #[test]
    fn absurd_sizes_fail_cleanly() {
        assert!(matches!(
            SlotTable::new(usize::MAX / 2, 0, 0),
            Err(Error::AllocationFailed { .. })
        ));
    }
}
