//! SnapKV prefill compression (Li et al., NeurIPS 2024, arXiv:2404.14469,
//! §4; `docs/semantics.md §3`): a prefill that chooses which prompt tokens
//! stay by the attention of the prompt's last queries instead of the policy's
//! order. Decode then continues under the cache's own policy.
//!
//! ```text
//! prefill of P tokens on a cache of budget B with n = resident + P tokens
//! if the policy never evicts or n <= B: an ordinary prefill
//! protected = the sinks, and the newest r = min(max(window, recent), B − sinks)
//!             tokens (the observation window; at least the policy's recent
//!             window, so the policy's guarantee holds)
//! s[t]      = Σ over the last min(window, P) prompt rows (and the group's
//!             query heads) of their weight on token t
//! keep        protected + the B − |protected| others with the largest
//!             s max-pooled over neighbours (SnapKv::kernel), ties by TieRule
//! ```
//!
//! Every kept token keeps its ordinary accumulated score (the column sum
//! over all prompt rows), so a score-based decode policy ranks it as after
//! any prefill.

use core::cmp::Ordering;

use super::Cache;
use super::prefill::PrefillPlan;
use crate::compress::{SnapKv, top_k};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::planner::try_vec;
use crate::policy::{EvictionPolicy, TieRule};

impl<T: Element, P: EvictionPolicy> Cache<T, P> {
    /// A prefill (as [`KvCache::prefill`]) whose eviction keeps the prompt
    /// tokens SnapKV selects: the observation window plus the tokens the
    /// last `snap.window()` prompt queries attended to most, max-pooled over
    /// `snap.kernel()` neighbours. Without an eviction it is an ordinary
    /// prefill.
    ///
    /// Allocates scratch for the call.
    ///
    /// # Example
    /// ```
    /// use h2o_kv::{H2OCache, KvCache, SnapKv};
    ///
    /// // 12 prompt tokens into 2 heavy + 2 recent; token 3's key matches the
    /// // last queries: SnapKV keeps it and its neighbour, pooled.
    /// let mut cache = H2OCache::<f64>::new(1, 2, 2)?.with_scale(1.0)?;
    /// let keys: Vec<f64> = (0..12).map(|j| if j == 3 { 4.0 } else { 0.0 }).collect();
    /// let mut out = vec![0.0; 12];
    /// cache.prefill_snapkv(&SnapKv::new(2, 3)?, &[1.0; 12], &keys, &keys, &mut out)?;
    /// assert_eq!(cache.resident_positions(), [2, 3, 10, 11]);
    /// # Ok::<(), h2o_kv::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`KvCache::prefill`]. Nothing changes on an error.
    pub fn prefill_snapkv(
        &mut self,
        snap: &SnapKv,
        queries: &[T],
        keys: &[T],
        values: &[T],
        out: &mut [T],
    ) -> Result<()> {
        let plan = self.plan_snapkv(snap, 1, queries, keys, values)?;
        if out.len() != plan.outputs.len() {
            return Err(Error::LengthMismatch {
                what: "out",
                expected: plan.outputs.len(),
                got: out.len(),
            });
        }
        self.commit_prefill(&plan, keys, values);
        out.copy_from_slice(&plan.outputs);
        Ok(())
    }

    /// [`plan_prefill`](Self::plan_prefill) with SnapKV's selection in the
    /// plan (nothing changes).
    pub(crate) fn plan_snapkv(
        &self,
        snap: &SnapKv,
        group: usize,
        queries: &[T],
        keys: &[T],
        values: &[T],
    ) -> Result<PrefillPlan<T>> {
        let d = self.head_dim_();
        let p = keys.len() / d;
        let mut plan =
            self.plan_prefill_observing(group, queries, keys, values, snap.window().min(p))?;
        let policy = self.policy();
        let (budget, n) = (policy.budget(), self.len() + p);
        if !policy.evicts() || n <= budget {
            return Ok(plan);
        }
        let Some((resident_obs, chunk_obs)) = plan.observed.take() else {
            return Ok(plan);
        };
        // Every token in position order: (position, observed score).
        let planner = &self.planner;
        let mut all: Vec<(u64, f64)> = Vec::new();
        all.try_reserve_exact(n).map_err(|_| Error::AllocationFailed { bytes: usize::MAX })?;
        all.extend(planner.residents().map(|(s, t)| (t.position, resident_obs[s])));
        all.sort_unstable_by_key(|t| t.0);
        let first = planner.next_position();
        all.extend(chunk_obs.iter().enumerate().map(|(j, &o)| (first + j as u64, o)));

        let sinks = all.iter().take_while(|t| t.0 < policy.sinks() as u64).count();
        let protected_tail = snap.window().max(policy.recent_window()).min(budget - sinks);
        let middle = &all[sinks..n - protected_tail];
        let k = budget - sinks - protected_tail;
        let mut pooled = try_vec(middle.len(), 0.0)?;
        let scores: Vec<f64> = middle.iter().map(|t| t.1).collect();
        snap.pool(&scores, &mut pooled)?;
        let mut order: Vec<usize> = (0..middle.len()).collect();
        let tie = snap.tie_rule();
        top_k(&mut order, k, |a, b| rank(tie, &pooled, a, b));
        let mut keep = try_vec(n, false)?;
        keep[..sinks].fill(true);
        keep[n - protected_tail..].fill(true);
        for &i in &order[..k] {
            keep[sinks + i] = true;
        }
        plan.keep = Some(keep);
        Ok(plan)
    }
}

/// Higher pooled score first; equal scores by the tie rule on position.
fn rank(tie: TieRule, pooled: &[f64], a: usize, b: usize) -> Ordering {
    pooled[b].total_cmp(&pooled[a]).then_with(|| match tie {
        TieRule::KeepOlder => a.cmp(&b),
        TieRule::KeepNewer => b.cmp(&a),
    })
}
