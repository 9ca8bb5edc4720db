//! The fixed slot store: key/value rows, token positions, free slots and the
//! recency ring. It copies rows in and out and does no arithmetic.
//!
//! Everything is allocated once, in [`SlotStore::new`]. A slot is a row index
//! into the `[slots × head_dim]` key and value buffers. Slots are handed out
//! from a free stack first and otherwise from the high-water mark, so every
//! occupied slot is below [`SlotStore::high_water`] and attention can run over
//! one contiguous prefix of the buffers. Evicting a token frees its slot; the
//! next insertion writes into it. Nothing is ever shifted or compacted.

use std::collections::VecDeque;

use crate::element::Element;
use crate::error::{Error, Result};

/// What a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    /// No token; the row contents are stale and never read as a token.
    Free,
    /// A token outside the recent window: an eviction candidate.
    Candidate,
    /// One of the newest `recent_window` tokens: never evicted.
    Recent,
}

/// Fixed-capacity storage for one attention head's resident tokens.
#[derive(Debug)]
pub(crate) struct SlotStore<T> {
    head_dim: usize,
    /// `[slots × head_dim]`, row-major; row `s` is the key of the token in slot `s`.
    keys: Vec<T>,
    /// `[slots × head_dim]`, row-major; row `s` is the value of the token in slot `s`.
    values: Vec<T>,
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
    /// Occupied slots.
    len: usize,
    /// Slots in the `Candidate` state, in no particular order, so the victim
    /// search visits only candidates and never branches on a slot's state.
    candidates: Vec<usize>,
    /// `[slots]`: index of each slot in `candidates`, or `NOT_CANDIDATE`.
    candidate_index: Vec<usize>,
}

/// `candidate_index` entry of a slot that is not a candidate.
const NOT_CANDIDATE: usize = usize::MAX;

impl<T: Element> SlotStore<T> {
    /// Allocates `slots` rows of `head_dim` elements and a ring of `window` slots.
    pub(crate) fn new(slots: usize, head_dim: usize, window: usize) -> Result<Self> {
        let elems =
            slots.checked_mul(head_dim).ok_or(Error::AllocationFailed { bytes: usize::MAX })?;
        Ok(Self {
            head_dim,
            keys: zeroed(elems)?,
            values: zeroed(elems)?,
            positions: zeroed(slots)?,
            states: try_vec(slots, SlotState::Free)?,
            free: try_with_capacity(slots)?,
            high_water: 0,
            recent: VecDeque::with_capacity(window.min(slots)),
            window,
            len: 0,
            candidates: try_with_capacity(slots)?,
            candidate_index: try_vec(slots, NOT_CANDIDATE)?,
        })
    }

    /// Slots of the eviction candidates (occupied, outside the recent window),
    /// in no particular order.
    pub(crate) fn candidates(&self) -> &[usize] {
        &self.candidates
    }

    fn set_candidate(&mut self, slot: usize) {
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

    pub(crate) fn head_dim(&self) -> usize {
        self.head_dim
    }

    pub(crate) fn state(&self, slot: usize) -> SlotState {
        self.states[slot]
    }

    pub(crate) fn states(&self) -> &[SlotState] {
        &self.states[..self.high_water]
    }

    pub(crate) fn position(&self, slot: usize) -> u64 {
        self.positions[slot]
    }

    pub(crate) fn positions(&self) -> &[u64] {
        &self.positions[..self.high_water]
    }

    /// Keys of slots `0..rows`, `[rows × head_dim]`.
    pub(crate) fn keys(&self, rows: usize) -> &[T] {
        &self.keys[..rows * self.head_dim]
    }

    /// Values of slots `0..rows`, `[rows × head_dim]`.
    pub(crate) fn values(&self, rows: usize) -> &[T] {
        &self.values[..rows * self.head_dim]
    }

    #[cfg(test)]
    pub(crate) fn key(&self, slot: usize) -> &[T] {
        &self.keys[slot * self.head_dim..][..self.head_dim]
    }

    #[cfg(test)]
    pub(crate) fn value(&self, slot: usize) -> &[T] {
        &self.values[slot * self.head_dim..][..self.head_dim]
    }

    /// The slot the next insertion will use, if any is vacant.
    pub(crate) fn vacant_slot(&self) -> Option<usize> {
        match self.free.last() {
            Some(&slot) => Some(slot),
            None if self.high_water < self.slots() => Some(self.high_water),
            None => None,
        }
    }

    /// Copies a key and a value into a vacant slot's rows. The slot stays
    /// vacant until [`occupy`](Self::occupy), so a caller can abandon it.
    pub(crate) fn write_rows(&mut self, slot: usize, key: &[T], value: &[T]) {
        debug_assert_eq!(self.states[slot], SlotState::Free);
        let d = self.head_dim;
        self.keys[slot * d..][..d].copy_from_slice(key);
        self.values[slot * d..][..d].copy_from_slice(value);
    }

    /// Marks the slot returned by [`vacant_slot`](Self::vacant_slot) as holding
    /// the token at `position`, outside the recent window.
    pub(crate) fn occupy(&mut self, slot: usize, position: u64) {
        debug_assert_eq!(Some(slot), self.vacant_slot());
        if slot == self.high_water && self.free.last() != Some(&slot) {
            self.high_water += 1;
        } else {
            self.free.pop();
        }
        self.positions[slot] = position;
        self.set_candidate(slot);
        self.len += 1;
    }

    /// Makes `slot` the newest token of the recent window; the oldest window
    /// token, if the window overflows, becomes an eviction candidate.
    pub(crate) fn push_recent(&mut self, slot: usize) {
        if self.window == 0 {
            return;
        }
        if self.recent.len() == self.window {
            if let Some(oldest) = self.recent.pop_front() {
                self.set_candidate(oldest);
            }
        }
        self.recent.push_back(slot);
        self.unset_candidate(slot, SlotState::Recent);
    }

    /// Empties the recent window; its tokens become candidates.
    pub(crate) fn clear_recent(&mut self) {
        while let Some(slot) = self.recent.pop_front() {
            self.set_candidate(slot);
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
}

/// A derived `Clone` would give the free stack and the recent ring only the
/// capacity of their current length, so a clone (and every head of a
/// `LayerCache`, built by cloning) would allocate while decoding. This keeps
/// their full capacity, as [`SlotStore::new`] does.
impl<T: Clone> Clone for SlotStore<T> {
    fn clone(&self) -> Self {
        let mut free = Vec::with_capacity(self.states.len());
        free.extend_from_slice(&self.free);
        let mut recent = VecDeque::with_capacity(self.window.min(self.states.len()));
        recent.extend(self.recent.iter().copied());
        let mut candidates = Vec::with_capacity(self.states.len());
        candidates.extend_from_slice(&self.candidates);
        Self {
            head_dim: self.head_dim,
            keys: self.keys.clone(),
            values: self.values.clone(),
            positions: self.positions.clone(),
            states: self.states.clone(),
            free,
            high_water: self.high_water,
            recent,
            window: self.window,
            len: self.len,
            candidates,
            candidate_index: self.candidate_index.clone(),
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

fn zeroed<X: Clone + Default>(n: usize) -> Result<Vec<X>> {
    try_vec(n, X::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(slots: usize, window: usize) -> SlotStore<f32> {
        SlotStore::new(slots, 2, window).unwrap()
    }

    fn insert(s: &mut SlotStore<f32>, pos: u64) -> usize {
        let slot = s.vacant_slot().unwrap();
        s.write_rows(slot, &[pos as f32; 2], &[-(pos as f32); 2]);
        s.occupy(slot, pos);
        s.push_recent(slot);
        slot
    }

    #[test]
    fn fills_in_order_then_reuses_freed_slots() {
        let mut s = store(3, 1);
        assert_eq!([insert(&mut s, 0), insert(&mut s, 1), insert(&mut s, 2)], [0, 1, 2]);
        assert_eq!(s.vacant_slot(), None);
        s.release(1);
        assert_eq!(s.vacant_slot(), Some(1));
        assert_eq!(insert(&mut s, 3), 1);
        assert_eq!((s.key(1), s.value(1)), (&[3.0, 3.0][..], &[-3.0, -3.0][..]));
        assert_eq!(s.position(1), 3);
        assert_eq!((s.len(), s.high_water()), (3, 3));
    }

    #[test]
    fn recent_window_graduates_oldest() {
        let mut s = store(4, 2);
        let a = insert(&mut s, 0);
        let b = insert(&mut s, 1);
        assert_eq!((s.state(a), s.state(b)), (SlotState::Recent, SlotState::Recent));
        let c = insert(&mut s, 2);
        assert_eq!(s.state(a), SlotState::Candidate);
        assert_eq!(s.recent().collect::<Vec<_>>(), [b, c]);
        s.clear_recent();
        assert!(s.states().iter().all(|&st| st == SlotState::Candidate));
    }

    /// The candidate list always holds exactly the slots in the Candidate state.
    fn assert_candidates_match(s: &SlotStore<f32>) {
        let mut listed = s.candidates().to_vec();
        listed.sort_unstable();
        let want: Vec<usize> =
            (0..s.slots()).filter(|&i| s.states[i] == SlotState::Candidate).collect();
        assert_eq!(listed, want);
    }

    #[test]
    fn candidate_list_follows_every_transition() {
        let mut s = store(6, 2);
        for pos in 0..5 {
            insert(&mut s, pos);
            assert_candidates_match(&s);
        }
        s.release(1);
        assert_candidates_match(&s);
        s.release(0);
        assert_candidates_match(&s);
        insert(&mut s, 5);
        assert_candidates_match(&s);
        s.clear_recent();
        assert_candidates_match(&s);
        assert_eq!(s.candidates().len(), s.len());
        let c = s.clone();
        assert_candidates_match(&c);
        s.reset();
        assert_candidates_match(&s);
        assert!(s.candidates().is_empty());
    }

    #[test]
    fn zero_window_makes_every_token_a_candidate() {
        let mut s = store(2, 0);
        let a = insert(&mut s, 0);
        assert_eq!(s.state(a), SlotState::Candidate);
    }

    #[test]
    fn abandoned_writes_do_not_occupy() {
        let mut s = store(2, 1);
        let slot = s.vacant_slot().unwrap();
        s.write_rows(slot, &[9.0; 2], &[9.0; 2]);
        assert_eq!((s.len(), s.high_water(), s.vacant_slot()), (0, 0, Some(0)));
    }

    #[test]
    fn reset_restores_the_empty_state() {
        let mut s = store(2, 1);
        insert(&mut s, 0);
        insert(&mut s, 1);
        s.reset();
        assert_eq!((s.len(), s.high_water(), s.vacant_slot()), (0, 0, Some(0)));
        assert_eq!(s.recent().count(), 0);
    }

    #[test]
    fn absurd_sizes_fail_cleanly() {
        assert!(matches!(
            SlotStore::<f32>::new(usize::MAX / 2, 4, 0),
            Err(Error::AllocationFailed { .. })
        ));
    }
}
