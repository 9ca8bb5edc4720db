//! The planner's side of a prefill (`docs/semantics.md §3`): the scores of a
//! causal attention over a chunk of prompt tokens arrive at once, and one
//! eviction keeps the newest `recent` tokens (and the sinks) plus the best
//! others by the policy's order, with one sort. A decode step evicts one
//! token at a time instead ([`Planner::evict`]).

use super::{Evicted, Planner, SlotState};
use crate::error::{Error, Result};
use crate::policy::{Candidate, EvictionPolicy};

impl<P: EvictionPolicy> Planner<P> {
    /// A prefill of `P = stats.chunk_scores.len()` prompt tokens at positions
    /// `next_position()..`: the resident tokens gain their scores, then if
    /// more than the budget are present, one eviction keeps the newest
    /// `recent` and the best others by the policy's order
    /// (`docs/semantics.md §3`). `place(j, slot)` is called once for every
    /// prompt token that is kept: write prompt row `j`'s key and value to
    /// row `slot`. Returns the evicted tokens (prompt tokens that were never
    /// stored have slot `usize::MAX`). `P = 0` is a no-op. A decode step
    /// evicts one token at a time instead ([`evict`](Self::evict)), by the
    /// same order.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] unless the `resident_*` vectors are
    /// `span()` long and `chunk_last` is as long as `chunk_scores`;
    /// [`Error::InvalidWeight`] for a negative or non-finite entry (its
    /// index counts through `resident_gain`, `resident_last`, `chunk_scores`
    /// and `chunk_last`, in that order);
    /// [`Error::CapacityExceeded`] if a non-evicting policy cannot take `P`
    /// more tokens. Nothing changes on an error.
    pub fn prefill(
        &mut self,
        stats: &PrefillStats,
        place: impl FnMut(usize, usize),
    ) -> Result<&[Evicted]> {
        let (span, p) = (self.span(), stats.chunk_scores.len());
        for (what, got, expected) in [
            ("resident_gain", stats.resident_gain.len(), span),
            ("resident_last", stats.resident_last.len(), span),
            ("chunk_last", stats.chunk_last.len(), p),
        ] {
            if got != expected {
                return Err(Error::LengthMismatch { what, expected, got });
            }
        }
        let all = stats
            .resident_gain
            .iter()
            .chain(&stats.resident_last)
            .chain(&stats.chunk_scores)
            .chain(&stats.chunk_last);
        for (index, &w) in all.enumerate() {
            if !(w.is_finite() && w >= 0.0) {
                return Err(Error::InvalidWeight { index, value: w });
            }
        }
        if !self.policy.evicts() {
            self.check_room(p)?;
        }
        self.commit_prefill(stats, place);
        Ok(&self.evicted)
    }

    /// Applies a prefill's scores (checked, or computed by the cache):
    /// `resident_gain[s]` is added to resident slot `s` and `resident_last[s]`
    /// becomes its last weight; the `P` chunk tokens (positions
    /// `next_position()..`) arrive with `chunk_scores[j]` as their score,
    /// `chunk_last[j]` as their last weight and `P − j` attentions. If the planner then holds
    /// more than its budget it keeps the newest `recent` tokens and the best
    /// others by the policy's order, evicting the rest at once (one sort).
    /// `place(j, slot)` is called for every chunk token that is kept, with the
    /// slot to write its key and value to.
    pub(crate) fn commit_prefill(
        &mut self,
        stats: &PrefillStats,
        mut place: impl FnMut(usize, usize),
    ) {
        let tokens = stats.chunk_scores.len();
        if tokens == 0 {
            // An empty prefill is a no-op: no eviction, and the last call's
            // evicted positions stay as they were.
            return;
        }
        let first = self.next_position;
        for (s, (gain, last)) in stats.resident_gain.iter().zip(&stats.resident_last).enumerate() {
            self.scores[s] += gain;
            self.last_weights[s] = *last;
            self.attended[s] += tokens as u64;
        }
        self.clear_evicted();
        let n = self.len() + tokens;
        let budget = self.policy.budget();
        let chunk = |j: usize| Candidate {
            position: first + j as u64,
            score: stats.chunk_scores[j],
            last_weight: stats.chunk_last[j],
            attended: (tokens - j) as u64,
        };
        let occupy = |this: &mut Self, j: usize, place: &mut dyn FnMut(usize, usize)| {
            let slot = this.slots.vacant_slot().expect("kept tokens fit in the store");
            place(j, slot);
            let c = chunk(j);
            this.slots.occupy(slot, c.position);
            this.scores[slot] = c.score;
            this.last_weights[slot] = c.last_weight;
            this.attended[slot] = c.attended;
            slot
        };
        if !self.policy.evicts() || n <= budget {
            for j in 0..tokens {
                let slot = occupy(self, j, &mut place);
                self.slots.push_recent(slot);
            }
        } else {
            // Every token, oldest first: residents (by position), then the chunk.
            let mut all: Vec<(Candidate, Loc)> = Vec::with_capacity(n);
            for (s, &state) in self.slots.states().iter().enumerate() {
                if state != SlotState::Free {
                    all.push((self.candidate(s), Loc::Slot(s)));
                }
            }
            all.sort_unstable_by_key(|(c, _)| c.position);
            for j in 0..tokens {
                all.push((chunk(j), Loc::Chunk(j)));
            }
            let window = self.policy.recent_window().min(n);
            let (older, recent) = all.split_at_mut(n - window);
            // Sinks are kept like the recent window.
            let sinks = self.policy.sinks() as u64;
            let n_sink = older.iter().take_while(|(c, _)| c.position < sinks).count();
            let (sink, candidates) = older.split_at_mut(n_sink);
            candidates.sort_by(|a, b| self.policy.eviction_order(&a.0, &b.0));
            let (evicted, kept) = candidates.split_at_mut(n - budget);

            self.slots.clear_recent();
            for (c, loc) in evicted.iter() {
                match *loc {
                    Loc::Slot(s) => self.release(s),
                    Loc::Chunk(_) => {
                        self.evicted.push(Evicted { slot: usize::MAX, position: c.position })
                    }
                }
            }
            kept.sort_unstable_by_key(|(c, _)| c.position);
            for (_, loc) in sink.iter_mut().chain(kept.iter_mut()).chain(recent.iter_mut()) {
                if let Loc::Chunk(j) = *loc {
                    *loc = Loc::Slot(occupy(self, j, &mut place));
                }
            }
            for (_, loc) in recent.iter() {
                if let Loc::Slot(s) = *loc {
                    self.slots.push_recent(s);
                }
            }
            self.sort_evicted();
        }
        self.next_position = first + tokens as u64;
    }
}

/// Where a token of the prefill's selection lives.
#[derive(Debug, Clone, Copy)]
enum Loc {
    Slot(usize),
    Chunk(usize),
}

/// A prefill's attention scores, for [`Planner::prefill`]: what a causal
/// attention of `P` prompt rows over the resident tokens and the prompt
/// gave each token (`docs/semantics.md §3`). Weights of a GQA group are
/// summed, as in [`Planner::add_weights`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrefillStats {
    /// `[span]`, by slot: the column sum of the `P` rows' weights on each
    /// resident slot (0 for free slots).
    pub resident_gain: Vec<f64>,
    /// `[span]`, by slot: the last prompt row's weight on each resident slot.
    pub resident_last: Vec<f64>,
    /// `[P]`: the column sum of prompt token `j`'s weights (rows `j..P`).
    pub chunk_scores: Vec<f64>,
    /// `[P]`: the last prompt row's weight on prompt token `j`.
    pub chunk_last: Vec<f64>,
}
