//! Prefill: a chunk of `P` tokens attended causally in one call, then one
//! eviction (`docs/semantics.md §3`; the authors' forward pass with
//! `q_len = P`). A decode step evicts one token at a time instead
//! (`decode.rs`).
//!
//! Row `i` of the chunk sees every resident token and chunk tokens `0..=i`.
//! Each resident token gains the column sum of its weights over the `P` rows;
//! each chunk token `j` starts with its own column sum `Σ_{i ≥ j} w[i][j]`.
//! If the cache then holds more than its budget, the planner keeps the newest
//! `recent_window` tokens and, among the others, the best by the policy's
//! order, evicting the rest at once.
//!
//! The chunk's keys and values are read from the caller's slices while the
//! attention runs; only kept tokens are copied into slots.
//! [`Cache::plan_prefill`] computes everything into a [`PrefillPlan`] and
//! changes nothing; [`Cache::commit_prefill`] cannot fail.

use num_traits::{Float, Zero};

use super::{Cache, attention};
use crate::element::{Accumulator, Element, first_non_finite};
use crate::error::{Error, Result};
use crate::kernels;
use crate::planner::{PrefillStats, try_vec};
use crate::policy::EvictionPolicy;

/// The result of a prefill's attention, not yet applied to the cache.
#[derive(Debug)]
pub(crate) struct PrefillPlan<T> {
    /// Scores for the planner.
    stats: PrefillStats,
    /// `[P × g × head_dim]`: attention outputs.
    pub(crate) outputs: Vec<T>,
}

impl<T: Element, P: EvictionPolicy> Cache<T, P> {
    /// Checks the shapes and values, then runs the causal attention of the
    /// chunk. Changes nothing.
    ///
    /// `queries` is `[P × g × head_dim]` (token-major, then the `g` queries
    /// that share this head); `keys` and `values` are `[P × head_dim]`.
    pub(crate) fn plan_prefill(
        &self,
        group: usize,
        queries: &[T],
        keys: &[T],
        values: &[T],
    ) -> Result<PrefillPlan<T>> {
        let d = self.head_dim_();
        if keys.len() % d != 0 {
            return Err(Error::RaggedRows { what: "keys", len: keys.len(), row_len: d });
        }
        let p = keys.len() / d;
        let row = group * d;
        for (what, x, len) in [("values", values, p * d), ("queries", queries, p * row)] {
            if x.len() != len {
                return Err(Error::LengthMismatch { what, expected: len, got: x.len() });
            }
        }
        for (what, x) in [("queries", queries), ("keys", keys), ("values", values)] {
            if let Some((index, value)) = first_non_finite(x) {
                return Err(Error::NonFinite { what, index, value });
            }
        }
        if !self.policy().evicts() {
            self.check_room(p)?;
        }

        let hw = self.planner.span();
        let width = hw + p;
        let zero = T::Acc::zero();
        let mut logits = try_vec(group * width, zero)?;
        let mut weights = try_vec(group * width, zero)?;
        let mut out_resident = try_vec(row, zero)?;
        let mut out_chunk = try_vec(row, zero)?;
        let mut stats = PrefillStats {
            resident_gain: try_vec(hw, 0.0)?,
            resident_last: try_vec(hw, 0.0)?,
            chunk_scores: try_vec(p, 0.0)?,
            chunk_last: try_vec(p, 0.0)?,
        };
        let mut outputs = try_vec(p * row, T::default())?;
        let states = self.planner.slots().states();
        let resident = |s: usize| s >= hw || states[s] != crate::planner::SlotState::Free;
        let masked = self.planner.len() < hw;
        let (keys_in, values_in) = (self.rows.keys(hw), self.rows.values(hw));
        for i in 0..p {
            let q_i = &queries[i * row..][..row];
            let seen = hw + i + 1;
            kernels::scaled_logits(&mut logits, width, q_i, keys_in, d, self.scale);
            kernels::scaled_logits(
                &mut logits[hw..],
                width,
                q_i,
                &keys[..(i + 1) * d],
                d,
                self.scale,
            );
            attention::softmax_rows(&logits, &mut weights, width, group, seen, masked, resident)?;
            let last = i + 1 == p;
            for q in 0..group {
                let w = &weights[q * width..][..seen];
                for (gain, x) in stats.resident_gain.iter_mut().zip(&w[..hw]) {
                    *gain += x.widen();
                }
                for (score, x) in stats.chunk_scores.iter_mut().zip(&w[hw..]) {
                    *score += x.widen();
                }
                if last {
                    for (l, x) in stats.resident_last.iter_mut().zip(&w[..hw]) {
                        *l += x.widen();
                    }
                    for (l, x) in stats.chunk_last.iter_mut().zip(&w[hw..]) {
                        *l += x.widen();
                    }
                }
            }
            kernels::weighted_sum(&mut out_resident, &weights, width, values_in, d);
            kernels::weighted_sum(&mut out_chunk, &weights[hw..], width, &values[..(i + 1) * d], d);
            for ((o, a), b) in
                outputs[i * row..][..row].iter_mut().zip(&out_resident).zip(&out_chunk)
            {
                let sum = *a + *b;
                if !sum.is_finite() {
                    return Err(Error::AttentionOverflow { what: "output" });
                }
                *o = T::from_acc(sum);
            }
        }
        Ok(PrefillPlan { stats, outputs })
    }

    /// Applies a [`plan_prefill`](Self::plan_prefill): the planner adds the
    /// scores and evicts once; the kept chunk tokens' rows are copied into
    /// the slots it gives them.
    pub(crate) fn commit_prefill(&mut self, plan: &PrefillPlan<T>, keys: &[T], values: &[T]) {
        if plan.stats.chunk_scores.is_empty() {
            return;
        }
        self.shown = None;
        self.shown_evicted.clear();
        let d = self.head_dim_();
        let rows = &mut self.rows;
        self.planner.commit_prefill(&plan.stats, |j, slot| {
            rows.write(slot, &keys[j * d..][..d], &values[j * d..][..d]);
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::{FullCache, H2OCache, KvCache};

    #[test]
    fn prefill_equals_inserts_and_attends_for_a_full_cache() {
        // Without eviction, a prefill's outputs equal decoding the same tokens
        // one by one in insert-attend-evict order.
        let d = 3;
        let p = 5;
        let x = |i: usize| ((i * 7 % 11) as f64 - 5.0) / 4.0;
        let q: Vec<f64> = (0..p * d).map(|i| x(i + 1)).collect();
        let k: Vec<f64> = (0..p * d).map(|i| x(i + 3)).collect();
        let v: Vec<f64> = (0..p * d).map(|i| x(i + 5)).collect();
        let mut a = FullCache::<f64>::new(d, 8).unwrap();
        let mut out = vec![0.0; p * d];
        a.prefill(&q, &k, &v, &mut out).unwrap();
        let mut b = FullCache::<f64>::new(d, 8).unwrap();
        for i in 0..p {
            let o = b.step(&q[i * d..][..d], &k[i * d..][..d], &v[i * d..][..d]).unwrap();
            for j in 0..d {
                assert!((o[j] - out[i * d + j]).abs() < 1e-12);
            }
        }
        for (ta, tb) in a.tokens().zip(b.tokens()) {
            assert_eq!(ta.position, tb.position);
            assert!((ta.score - tb.score).abs() < 1e-12);
        }
        // The per-token statistics agree too: attention counts exactly, the
        // last weights within rounding.
        for ((_, ta), (_, tb)) in a.planner().residents().zip(b.planner().residents()) {
            assert_eq!(ta.attended, tb.attended);
            assert!((ta.last_weight - tb.last_weight).abs() < 1e-12);
        }
    }

    #[test]
    fn prefill_over_budget_keeps_exactly_the_budget() {
        let d = 2;
        let p = 12;
        let k: Vec<f32> = (0..p * d).map(|i| (i as f32 * 0.7).sin()).collect();
        let mut c = H2OCache::<f32>::new(d, 3, 5).unwrap();
        let mut out = vec![0.0; p * d];
        c.prefill(&k, &k, &k, &mut out).unwrap();
        let kept = c.resident_positions();
        assert_eq!(kept.len(), 8);
        assert!(kept.ends_with(&[7, 8, 9, 10, 11]));
        assert_eq!(c.last_evicted().len(), 4);
        assert_eq!(c.next_position(), 12);
    }
}
