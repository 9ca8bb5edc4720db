//! `H2O`: heavy hitters plus a recent window (Zhang et al., NeurIPS 2023;
//! `docs/semantics.md §4`, §8).
//!
//! The rule (paper §4, Algorithm 1; the authors' `H2OKVCache_LayerWise`):
//!
//! ```text
//! every cached token t has acc[t] = Σ over later queries of softmax weight on t
//! after a call leaves n > heavy + recent tokens resident:
//!     recent     = the newest `recent` tokens (including this call's)
//!     candidates = every other resident token
//!     keep the `heavy` candidates with the largest acc (ties: TieRule)
//!     evict the rest; their acc is discarded, and they never come back
//! ```
//!
//! A token leaving the recent window competes with everything it accumulated
//! while it was recent. In steady-state decode, n = budget + 1 and the choice is
//! among `heavy + 1` candidates, so the victim search is one scan of the
//! candidates: O(budget), the same order as the attention itself.

use core::cmp::Ordering;

use super::{Candidate, EvictionPolicy, MAX_BUDGET, TieRule, check_budget, lowest_score_first};
use crate::error::{Error, Result};

/// Keep the `recent` newest tokens and the `heavy` tokens with the highest
/// accumulated attention score; budget = heavy + recent tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2O {
    heavy: usize,
    recent: usize,
    tie: TieRule,
}

impl H2O {
    /// `heavy` heavy hitters plus a `recent`-token window (both in tokens).
    ///
    /// `heavy = 0` is a sliding window; `recent = 0` is allowed (as in the
    /// authors' code) but the newest token then competes with one self-weight
    /// and is usually evicted at once; prefer [`Heavy`](super::Heavy).
    ///
    /// # Errors
    /// [`Error::ZeroBudget`] if `heavy + recent == 0`;
    /// [`Error::BudgetTooLarge`] if the sum overflows or exceeds
    /// [`MAX_BUDGET`].
    pub fn new(heavy: usize, recent: usize) -> Result<Self> {
        let budget = heavy
            .checked_add(recent)
            .ok_or(Error::BudgetTooLarge { budget: usize::MAX, max: MAX_BUDGET })?;
        check_budget(budget)?;
        Ok(Self { heavy, recent, tie: TieRule::default() })
    }

    /// Splits a `budget` in tokens: `heavy = floor(budget × heavy_fraction)`,
    /// `recent = budget − heavy`.
    ///
    /// For example 25 tokens at 0.5 give 12 heavy + 13 recent; the recent
    /// window gets the rounding remainder. A fraction of 1 leaves `recent = 0`:
    /// the newest token then competes with one self-weight and is usually
    /// evicted at once, which a language model does not survive (see
    /// [`H2O::new`]); keep the fraction below 1 unless that is what you study.
    ///
    /// # Errors
    /// [`Error::InvalidHeavyFraction`] unless `0 ≤ heavy_fraction ≤ 1`;
    /// otherwise as [`H2O::new`].
    pub fn with_heavy_fraction(budget: usize, heavy_fraction: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&heavy_fraction) {
            return Err(Error::InvalidHeavyFraction { fraction: heavy_fraction });
        }
        check_budget(budget)?;
        // budget <= 2^26, so the product is exact enough and the floor is in range.
        let heavy = ((budget as f64) * heavy_fraction).floor() as usize;
        Self::new(heavy.min(budget), budget - heavy.min(budget))
    }

    /// The same policy with another tie rule.
    #[must_use]
    pub fn with_tie_rule(self, tie: TieRule) -> Self {
        Self { tie, ..self }
    }

    /// Heavy-hitter slots, in tokens.
    #[must_use]
    pub fn heavy(&self) -> usize {
        self.heavy
    }

    /// Recent-window length, in tokens.
    #[must_use]
    pub fn recent(&self) -> usize {
        self.recent
    }

    /// The tie rule in force.
    #[must_use]
    pub fn tie_rule(&self) -> TieRule {
        self.tie
    }
}

impl EvictionPolicy for H2O {
    fn budget(&self) -> usize {
        self.heavy + self.recent
    }
    fn evicts(&self) -> bool {
        true
    }
    fn recent_window(&self) -> usize {
        self.recent
    }
    #[inline]
    fn eviction_order(&self, a: &Candidate, b: &Candidate) -> Ordering {
        lowest_score_first(self.tie, a, b)
    }
    fn name(&self) -> &'static str {
        "h2o"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fraction_rounding_gives_the_remainder_to_recent() {
        let p = H2O::with_heavy_fraction(25, 0.5).unwrap();
        assert_eq!((p.heavy(), p.recent()), (12, 13));
        let p = H2O::with_heavy_fraction(10, 1.0).unwrap();
        assert_eq!((p.heavy(), p.recent()), (10, 0));
        let p = H2O::with_heavy_fraction(10, 0.0).unwrap();
        assert_eq!((p.heavy(), p.recent()), (0, 10));
    }

    #[test]
    fn bad_configurations_are_errors() {
        assert_eq!(H2O::new(0, 0), Err(Error::ZeroBudget));
        assert!(matches!(H2O::new(usize::MAX, 1), Err(Error::BudgetTooLarge { .. })));
        assert!(matches!(
            H2O::with_heavy_fraction(8, f64::NAN),
            Err(Error::InvalidHeavyFraction { .. })
        ));
        assert!(matches!(
            H2O::with_heavy_fraction(8, 1.5),
            Err(Error::InvalidHeavyFraction { .. })
        ));
    }
}
