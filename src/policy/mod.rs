//! Eviction policies: which resident token to drop when a cache is over budget.
//!
//! A policy is a small value that answers three questions and does no
//! arithmetic beyond comparing scores:
//! - how many tokens it keeps ([`EvictionPolicy::budget`]), and whether it
//!   evicts at all;
//! - how many of the newest tokens are protected ([`EvictionPolicy::recent_window`]);
//! - which of two unprotected tokens goes first ([`EvictionPolicy::eviction_order`]).
//!
//! | policy | cache alias | keeps | evicts |
//! |---|---|---|---|
//! | [`Full`] | [`FullCache`] | everything, up to a fixed capacity | nothing |
//! | [`Recent`] | [`RecentOnly`] | the newest `budget` tokens | the oldest token |
//! | [`Heavy`] | [`HeavyOnly`] | the newest token + the `budget − 1` highest scores | the lowest score among the others |
//! | [`H2O`] | [`H2OCache`] | the newest `recent` + the `heavy` highest scores | the lowest score outside the recent window |

use core::cmp::Ordering;
use core::fmt::Debug;

mod any;
mod full;
mod h2o;
mod heavy;
mod recent;

pub use any::AnyPolicy;
pub use full::{Full, FullCache};
pub use h2o::{H2O, H2OCache};
pub use heavy::{Heavy, HeavyOnly};
pub use recent::{Recent, RecentOnly};

use crate::error::{Error, Result};

/// The largest budget (tokens) a cache accepts: 2^26 ≈ 67 million.
pub const MAX_BUDGET: usize = 1 << 26;

/// A resident token outside the recent window, as a policy sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Absolute token position (0-based, in insertion order).
    pub position: u64,
    /// Accumulated attention score: the sum of the softmax weights every query
    /// so far gave this token (no unit).
    pub score: f64,
}

/// How to order two candidates whose accumulated scores are exactly equal.
///
/// The authors' code has no rule (`torch.topk` keeps either; see
/// `tests/data/h2o_traces/FORMAT.md`), so any deterministic rule is a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TieRule {
    /// Keep the older token, evict the newer one (the seed walkthrough's rule).
    #[default]
    KeepOlder,
    /// Keep the newer token, evict the older one.
    KeepNewer,
}

impl TieRule {
    /// Orders two candidates with equal scores: `Less` means `a` is evicted first.
    #[must_use]
    #[inline]
    pub fn order(self, a: &Candidate, b: &Candidate) -> Ordering {
        match self {
            TieRule::KeepOlder => b.position.cmp(&a.position),
            TieRule::KeepNewer => a.position.cmp(&b.position),
        }
    }
}

/// Lowest accumulated score first, ties broken by `tie` (H2O and HeavyOnly).
#[inline]
pub(crate) fn lowest_score_first(tie: TieRule, a: &Candidate, b: &Candidate) -> Ordering {
    a.score.total_cmp(&b.score).then_with(|| tie.order(a, b))
}

/// An eviction rule, applied independently to each attention head.
///
/// The cache calls it with every resident token outside the newest
/// [`recent_window`](Self::recent_window) tokens and evicts the least of them
/// by [`eviction_order`](Self::eviction_order) until at most
/// [`budget`](Self::budget) tokens remain.
///
/// # Implementer notes
/// - `recent_window() <= budget()` must hold; the cache checks it at
///   construction and returns [`Error::InvalidSplit`] otherwise.
/// - `eviction_order` must be a total order (deterministic decisions).
pub trait EvictionPolicy: Clone + Debug + Send + Sync + 'static {
    /// Tokens kept after an eviction (for a non-evicting policy: the capacity).
    fn budget(&self) -> usize;
    /// Whether the policy ever evicts. A non-evicting cache refuses tokens past
    /// its budget with [`Error::CapacityExceeded`].
    fn evicts(&self) -> bool;
    /// The newest tokens that are never evicted, including the ones inserted
    /// by the current call.
    fn recent_window(&self) -> usize;
    /// `Less` means `a` is evicted before `b`.
    fn eviction_order(&self, a: &Candidate, b: &Candidate) -> Ordering;
    /// A short name for tables and logs (`"full"`, `"recent"`, `"heavy"`, `"h2o"`).
    fn name(&self) -> &'static str;
}

pub(crate) fn check_budget(budget: usize) -> Result<()> {
    if budget == 0 {
        return Err(Error::ZeroBudget);
    }
    if budget > MAX_BUDGET {
        return Err(Error::BudgetTooLarge { budget, max: MAX_BUDGET });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tie_rule_orders_equal_scores() {
        let old = Candidate { position: 1, score: 0.5 };
        let new = Candidate { position: 2, score: 0.5 };
        // KeepOlder evicts the newer first.
        assert_eq!(lowest_score_first(TieRule::KeepOlder, &new, &old), Ordering::Less);
        assert_eq!(lowest_score_first(TieRule::KeepNewer, &old, &new), Ordering::Less);
        let low = Candidate { position: 9, score: 0.1 };
        assert_eq!(lowest_score_first(TieRule::KeepOlder, &low, &old), Ordering::Less);
    }

    #[test]
    fn budgets_are_checked() {
        assert_eq!(check_budget(0), Err(Error::ZeroBudget));
        assert!(check_budget(MAX_BUDGET + 1).is_err());
        assert!(check_budget(1).is_ok());
    }
}
