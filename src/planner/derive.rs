//! A prefill derived from another planner's: one causal prefill shared by
//! many policies (`docs/semantics.md §3`).
//!
//! A prefill's attention does not depend on the policy (every prompt row
//! attends causally over the whole prompt; the eviction comes after), so the
//! scores it gives every token are the same for every policy. A planner
//! that took the prompt without evicting (a full cache) therefore holds
//! exactly the statistics any other planner's prefill of the same prompt
//! would compute; [`Planner::prefill_from`] applies them, and only the
//! eviction at the end (a sort of `P` candidates) is paid per policy, not
//! the `O(P²)` attention.

use super::{Evicted, Planner, PrefillStats};
use crate::error::{Error, Result};
use crate::policy::EvictionPolicy;

impl<P: EvictionPolicy> Planner<P> {
    /// The prefill [`prefill`](Self::prefill) would make from the prompt
    /// `source` holds, with `source`'s statistics as the prompt's scores:
    /// for a `source` that took positions `0..P` (in one prefill, in
    /// chunks, or in default-order decode steps) and never evicted, each
    /// token's accumulated score is its column sum `Σ_{i ≥ j} w[i][j]` and
    /// its last weight the last row's, which is what a prefill of the same
    /// prompt computes (up to the order of the f64 sums). This planner then
    /// evicts down to its budget by its own policy in one step.
    ///
    /// `place(source_slot, slot)` is called once for every kept token: copy
    /// the key and value in `source`'s row `source_slot` to row `slot` of
    /// this planner's buffers. Returns the evicted tokens (never stored:
    /// slot `usize::MAX`). Allocates `O(P)` scratch.
    ///
    /// # Errors
    /// [`Error::PrefillSource`] if this planner holds or has held a token
    /// since its last reset, if `source` has evicted a token, or if a
    /// `source` token was not attended by every later query (it decoded in
    /// another step order); [`Error::CapacityExceeded`] if this planner does
    /// not evict and cannot hold `P` tokens. Nothing changes on an error.
    pub fn prefill_from<Q: EvictionPolicy>(
        &mut self,
        source: &Planner<Q>,
        place: impl FnMut(usize, usize),
    ) -> Result<&[Evicted]> {
        self.check_prefill_from(source)?;
        self.commit_prefill_from(source, place);
        Ok(&self.evicted)
    }

    /// The checks of [`prefill_from`](Self::prefill_from). Changes nothing.
    pub(crate) fn check_prefill_from<Q: EvictionPolicy>(&self, source: &Planner<Q>) -> Result<()> {
        if self.next_position != 0 || !self.is_empty() {
            return Err(Error::PrefillSource { reason: "the target has taken tokens (reset it)" });
        }
        source.check_prefill_source()?;
        if !self.policy.evicts() {
            self.check_room(source.len())?;
        }
        Ok(())
    }

    /// Whether this planner can be the source of a
    /// [`prefill_from`](Self::prefill_from): it took positions `0..P`,
    /// never evicted, and every token was attended by every later query, so
    /// each token's score is its prompt column sum. Changes nothing.
    pub(crate) fn check_prefill_source(&self) -> Result<()> {
        let p = self.next_position();
        if self.len() as u64 != p {
            return Err(Error::PrefillSource { reason: "the source has evicted tokens" });
        }
        if self.residents().any(|(_, t)| t.attended != p - t.position) {
            return Err(Error::PrefillSource {
                reason: "a source token was not attended by every later query",
            });
        }
        Ok(())
    }

    /// Applies a checked [`prefill_from`](Self::prefill_from).
    pub(crate) fn commit_prefill_from<Q: EvictionPolicy>(
        &mut self,
        source: &Planner<Q>,
        mut place: impl FnMut(usize, usize),
    ) {
        let p = source.len();
        let mut source_slot = vec![0; p];
        let mut stats = PrefillStats {
            resident_gain: vec![0.0; self.span()],
            resident_last: vec![0.0; self.span()],
            chunk_scores: vec![0.0; p],
            chunk_last: vec![0.0; p],
        };
        for (slot, t) in source.residents() {
            let j = t.position as usize;
            source_slot[j] = slot;
            stats.chunk_scores[j] = t.score;
            stats.chunk_last[j] = t.last_weight;
        }
        self.commit_prefill(&stats, |j, slot| place(source_slot[j], slot));
    }
}
