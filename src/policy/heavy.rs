//! `Heavy`: heavy hitters without a recent window (the newest-token rule is
//! `docs/semantics.md §4`).

use core::cmp::Ordering;

use super::{Candidate, EvictionPolicy, TieRule, check_budget, lowest_score_first};
use crate::error::Result;

/// Keep the `budget − 1` tokens with the highest accumulated scores plus the
/// newest token (the paper's heavy-hitter-only ablation).
///
/// The newest token is protected because, inserted this step, its score is a
/// single self-weight: without protection it would be evicted at once nearly
/// every step (the authors' code with `recent = 0` does exactly that), and the
/// next query would never see its predecessor. This makes `Heavy` the same
/// rule as [`H2O`](super::H2O) with `heavy = budget − 1, recent = 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heavy {
    budget: usize,
    tie: TieRule,
}

impl Heavy {
    /// Heavy hitters within `budget` tokens, ties kept by [`TieRule::default`].
    ///
    /// # Errors
    /// [`Error::ZeroBudget`](crate::Error::ZeroBudget) if `budget == 0`,
    /// [`Error::BudgetTooLarge`](crate::Error::BudgetTooLarge) above
    /// [`MAX_BUDGET`](crate::MAX_BUDGET).
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

impl EvictionPolicy for Heavy {
    fn budget(&self) -> usize {
        self.budget
    }
    fn evicts(&self) -> bool {
        true
    }
    fn recent_window(&self) -> usize {
        1
    }
    #[inline]
    fn eviction_order(&self, a: &Candidate, b: &Candidate) -> Ordering {
        lowest_score_first(self.tie, a, b)
    }
    fn name(&self) -> &'static str {
        "heavy"
    }
}

#[cfg(test)]
mod tests {
    use crate::{HeavyOnly, KvCache};

    #[test]
    fn keeps_the_newest_token_and_the_heaviest_others() {
        let mut c = HeavyOnly::<f64>::new(1, 2).unwrap();
        // Token 0's key is large, so every query attends to it most.
        c.step(&[1.0], &[5.0], &[0.0]).unwrap();
        for _ in 0..4 {
            c.step(&[1.0], &[0.0], &[0.0]).unwrap();
        }
        assert_eq!(c.resident_positions(), [0, 4]);
    }
}
