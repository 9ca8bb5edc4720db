//! `TovaCache`: Token Omission Via Attention (Oren et al., *Transformers are
//! Multi-State RNNs*, 2024, arXiv:2401.06104, §3.3).
//!
//! ```text
//! after a step leaves n > budget tokens:
//!     w[t] = the current query's softmax weight on t (for grouped queries,
//!            the mean over the query heads sharing the KV head)
//!     evict the token with the lowest w (ties: TieRule)
//! ```
//!
//! No accumulation: a token's past attention does not protect it, only the
//! current query's. There is no recent window either: in the default step
//! order the token just inserted competes with its own weight and can be
//! evicted at once, as in the paper. A token that no attention has covered
//! yet (inserted after the last attention, e.g. in attend-insert-evict order)
//! has no weight to judge it by and is kept ahead of every attended token.

use core::cmp::Ordering;

use super::{Candidate, EvictionPolicy, TieRule, check_budget};
use crate::error::Result;

/// Keep the `budget` tokens the current query attends to most.
///
/// The group mean and the group sum rank tokens the same way, so the policy
/// reads the group-summed [`Candidate::last_weight`].
///
/// # Example
/// ```
/// use h2o_kv::{KvCache, TovaCache};
///
/// let mut cache = TovaCache::<f64>::new(1, 2)?.with_scale(1.0)?; // head_dim 1, budget 2
/// cache.step(&[1.0], &[0.0], &[0.0])?;
/// cache.step(&[1.0], &[0.0], &[0.0])?;
/// cache.step(&[1.0], &[2.0], &[0.0])?; // weights 1 : 1 : e² → a tie; keep the older
/// assert_eq!(cache.resident_positions(), [0, 2]);
/// cache.step(&[-1.0], &[0.0], &[0.0])?; // now token 2 gets e⁻² : 1 : 1
/// assert_eq!(cache.resident_positions(), [0, 3]);
/// # Ok::<(), h2o_kv::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tova {
    budget: usize,
    tie: TieRule,
}

impl Tova {
    /// Keep `budget` tokens.
    ///
    /// # Errors
    /// [`Error::ZeroBudget`](crate::Error::ZeroBudget),
    /// [`Error::BudgetTooLarge`](crate::Error::BudgetTooLarge).
    pub fn new(budget: usize) -> Result<Self> {
        check_budget(budget)?;
        Ok(Self { budget, tie: TieRule::default() })
    }

    /// The same policy with another tie rule.
    #[must_use]
    pub fn with_tie_rule(self, tie: TieRule) -> Self {
        Self { tie, ..self }
    }

    /// The tie rule in force.
    #[must_use]
    pub fn tie_rule(&self) -> TieRule {
        self.tie
    }
}

impl EvictionPolicy for Tova {
    fn budget(&self) -> usize {
        self.budget
    }
    fn evicts(&self) -> bool {
        true
    }
    fn recent_window(&self) -> usize {
        0
    }
    #[inline]
    fn eviction_order(&self, a: &Candidate, b: &Candidate) -> Ordering {
        // Unattended tokens last, then the lowest current weight first.
        (a.attended > 0)
            .cmp(&(b.attended > 0))
            .reverse()
            .then_with(|| a.last_weight.total_cmp(&b.last_weight))
            .then_with(|| self.tie.order(a, b))
    }
    fn name(&self) -> &'static str {
        "tova"
    }
}

#[cfg(test)]
mod tests {
    use crate::{KvCache, StepOrder, TovaCache};

    fn tova(budget: usize) -> TovaCache<f64> {
        TovaCache::<f64>::new(1, budget).unwrap().with_scale(1.0).unwrap()
    }

    #[test]
    fn ranks_by_the_current_query_only() {
        // q = 1, keys 0, 0, 2: weights 1 : 1 : e² (tie at 0 and 1, the
        // newer goes). Then q = −1, key 0: token 2 gets e⁻² and goes, although
        // its accumulated score (≈ 0.79 + 0.06) is larger than token 3's (≈ 0.47).
        let mut c = tova(2);
        for (q, k) in [(1.0, 0.0), (1.0, 0.0), (1.0, 2.0)] {
            c.step(&[q], &[k], &[0.0]).unwrap();
        }
        assert_eq!((c.resident_positions(), c.last_evicted()), (vec![0, 2], &[1u64][..]));
        c.step(&[-1.0], &[0.0], &[0.0]).unwrap();
        assert_eq!((c.resident_positions(), c.last_evicted()), (vec![0, 3], &[2u64][..]));
    }

    #[test]
    fn the_newest_token_can_go_at_once() {
        let mut c = tova(2);
        c.step(&[1.0], &[0.0], &[0.0]).unwrap();
        c.step(&[1.0], &[0.0], &[0.0]).unwrap();
        // Key −3: weight e⁻³ against 1 and 1.
        c.step(&[1.0], &[-3.0], &[0.0]).unwrap();
        assert_eq!((c.resident_positions(), c.last_evicted()), (vec![0, 1], &[2u64][..]));
    }

    #[test]
    fn an_unattended_token_is_kept() {
        // Document order: the new token arrives after the attention.
        let mut c = tova(2);
        c.step_with(StepOrder::AttendInsertEvict, &[1.0], &[0.0], &[0.0]).unwrap();
        c.step_with(StepOrder::AttendInsertEvict, &[1.0], &[5.0], &[0.0]).unwrap();
        // Attention over {0, 1}: 1 : e⁵, then token 2 arrives unattended and
        // token 0 (lowest weight) goes.
        c.step_with(StepOrder::AttendInsertEvict, &[1.0], &[0.0], &[0.0]).unwrap();
        assert_eq!((c.resident_positions(), c.last_evicted()), (vec![1, 2], &[0u64][..]));
    }
}
