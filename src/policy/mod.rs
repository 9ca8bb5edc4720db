//! Eviction policies: which resident token to drop when a cache is over budget.
//!
//! A policy is a small value that answers four questions and does no
//! arithmetic beyond comparing what the [`Planner`](crate::Planner) shows it
//! (`docs/semantics.md §4`, §8):
//! - how many tokens it keeps ([`EvictionPolicy::budget`]), and whether it
//!   evicts at all;
//! - how many of the newest tokens are protected ([`EvictionPolicy::recent_window`]);
//! - how many of the first positions are protected ([`EvictionPolicy::sinks`],
//!   attention sinks; 0 for the four built-in policies);
//! - which of two unprotected tokens goes first ([`EvictionPolicy::eviction_order`]),
//!   from each token's [`Candidate`] record: position, accumulated score, the
//!   last attention's weight and the number of attentions it received.
//!
//! A policy is a leaf: it knows nothing of caches, slots or kernels, so a new
//! policy (sinks + window, TOVA, mean score, …) is one file here and needs no
//! change to the planner.
//!
//! | policy | cache alias | keeps | evicts |
//! |---|---|---|---|
//! | [`Full`] | [`FullCache`](crate::FullCache) | everything, up to a fixed capacity | nothing |
//! | [`Recent`] | [`RecentOnly`](crate::RecentOnly) | the newest `budget` tokens | the oldest token |
//! | [`Heavy`] | [`HeavyOnly`](crate::HeavyOnly) | the newest token + the `budget − 1` highest scores | the lowest score among the others |
//! | [`H2O`] | [`H2OCache`](crate::H2OCache) | the newest `recent` + the `heavy` highest scores | the lowest score outside the recent window |

use core::cmp::Ordering;
use core::fmt::Debug;

mod any;
mod full;
mod h2o;
mod heavy;
mod recent;

pub use any::{AnyPolicy, PolicyKind};
pub use full::Full;
pub use h2o::H2O;
pub use heavy::Heavy;
pub use recent::Recent;

use crate::error::{Error, Result};

/// The largest budget (tokens) a cache accepts: 2^26 ≈ 67 million, well
/// past any context length in use, and small enough that the budget times
/// [`MAX_HEAD_DIM`](crate::MAX_HEAD_DIM) (2^42 elements) cannot overflow a
/// 64-bit size.
pub const MAX_BUDGET: usize = 1 << 26;

/// A resident token, as a policy sees it (the planner passes the eviction
/// candidates: tokens outside the recent window and the sinks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Absolute token position (0-based, in insertion order): the first
    /// `n` positions are the attention sinks of StreamingLLM-style policies.
    pub position: u64,
    /// Accumulated attention score: the sum of the softmax weights every query
    /// so far gave this token (no unit; `docs/semantics.md §1`). For a GQA
    /// group, the sum over the group's query heads.
    pub score: f64,
    /// The weight the most recent attention gave this token, summed over the
    /// query heads of the group (divide by the group size for the mean; the
    /// ranking within a head is the same). 0 for a token not attended yet.
    /// For a prefill, the last prompt row's weight. What TOVA ranks by.
    pub last_weight: f64,
    /// How many attentions (decode steps, or prompt rows of a prefill) have
    /// covered this token; `score / attended` is its mean score. In the
    /// default step order a token inserted at step `t` has been attended
    /// `now − t + 1` times.
    pub attended: u64,
}

impl Candidate {
    /// A candidate with only a position and a score (last weight and
    /// attention count 0), for tests and hand-built comparisons.
    #[must_use]
    pub fn new(position: u64, score: f64) -> Self {
        Self { position, score, last_weight: 0.0, attended: 0 }
    }

    /// The mean weight per attention, `score / attended` (0 if never
    /// attended).
    #[must_use]
    pub fn mean_score(&self) -> f64 {
        if self.attended == 0 { 0.0 } else { self.score / self.attended as f64 }
    }
}

/// How to order two candidates whose accumulated scores are exactly equal
/// (`docs/semantics.md §5`).
///
/// The authors' code has no rule (`torch.topk` keeps either; see
/// `tests/data/h2o_traces/FORMAT.md`), so any deterministic rule is a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TieRule {
    /// Keep the older token, evict the newer one (the walkthrough's rule).
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
/// The [`Planner`](crate::Planner) calls it with every resident token outside
/// the newest [`recent_window`](Self::recent_window) tokens and the first
/// [`sinks`](Self::sinks) positions, and evicts the least of them by
/// [`eviction_order`](Self::eviction_order) until at most
/// [`budget`](Self::budget) tokens remain (one scan per victim in decode, one
/// sort in a prefill).
///
/// # Implementer notes
/// - `recent_window() + sinks() <= budget()` must hold; the planner checks it
///   at construction and returns [`Error::InvalidSplit`] otherwise.
/// - `eviction_order` must be a total order (deterministic decisions); break
///   ties on the position, which is unique.
/// - Snapshots cover the built-in policies only ([`SnapshotPolicy`](crate::SnapshotPolicy)
///   is sealed): a cache with your own policy works but cannot be snapshotted.
pub trait EvictionPolicy: Clone + Debug + Send + Sync + 'static {
    /// Tokens kept after an eviction (for a non-evicting policy: the capacity).
    fn budget(&self) -> usize;
    /// Whether the policy ever evicts. A non-evicting cache refuses tokens past
    /// its budget with [`Error::CapacityExceeded`].
    fn evicts(&self) -> bool;
    /// The newest tokens that are never evicted, including the ones inserted
    /// by the current call.
    fn recent_window(&self) -> usize;
    /// The first positions ever inserted (`0..sinks()`) that are never
    /// evicted: attention sinks (StreamingLLM). 0 unless overridden.
    fn sinks(&self) -> usize {
        0
    }
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
        let old = Candidate::new(1, 0.5);
        let new = Candidate::new(2, 0.5);
        // KeepOlder evicts the newer first.
        assert_eq!(lowest_score_first(TieRule::KeepOlder, &new, &old), Ordering::Less);
        assert_eq!(lowest_score_first(TieRule::KeepNewer, &old, &new), Ordering::Less);
        let low = Candidate::new(9, 0.1);
        assert_eq!(lowest_score_first(TieRule::KeepOlder, &low, &old), Ordering::Less);
    }

    #[test]
    fn budgets_are_checked() {
        assert_eq!(check_budget(0), Err(Error::ZeroBudget));
        assert!(check_budget(MAX_BUDGET + 1).is_err());
        assert!(check_budget(1).is_ok());
    }
}
