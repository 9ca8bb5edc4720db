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
//! attention runs; only kept tokens are copied into slots. The attention
//! runs on tiles of query tokens with the one-pass kernel (online softmax),
//! so its scratch is one tile's logits, `[tile × (resident + P)]`, never
//! `[P × P]`.
//! [`Cache::plan_prefill`] computes everything into a [`PrefillPlan`] and
//! changes nothing; [`Cache::commit_prefill`] cannot fail.

use num_traits::{Float, Zero};

use super::{Cache, attention};
use crate::element::{Accumulator, Element, first_non_finite};
use crate::error::{Error, Result};
use crate::kernels::{self, OnlineSoftmax};
use crate::planner::{PrefillStats, try_vec};
use crate::policy::EvictionPolicy;

/// Query tokens per tile of the prefill's attention.
const TILE: usize = 16;

/// The result of a prefill's attention, not yet applied to the cache.
#[derive(Debug)]
pub(crate) struct PrefillPlan<T> {
    /// Scores for the planner.
    pub(crate) stats: PrefillStats,
    /// `[P × g × head_dim]`: attention outputs.
    pub(crate) outputs: Vec<T>,
    /// With a SnapKV selection: the column sums of the last `window` rows,
    /// `[span]` by slot for the residents and `[P]` for the chunk.
    pub(crate) observed: Option<(Vec<f64>, Vec<f64>)>,
    /// With a SnapKV selection that evicts: which tokens stay, residents by
    /// position then the chunk (see `snapkv.rs`).
    pub(crate) keep: Option<Vec<bool>>,
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
        self.plan_prefill_observing(group, queries, keys, values, 0)
    }

    /// [`plan_prefill`](Self::plan_prefill), also summing the weights of the
    /// last `observe` rows (SnapKV's observation window; 0 for none).
    pub(crate) fn plan_prefill_observing(
        &self,
        group: usize,
        queries: &[T],
        keys: &[T],
        values: &[T],
        observe: usize,
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
        // Tiles of `TILE` query tokens: each tile streams the key/value rows
        // it sees once for all its queries (one-pass kernel, online softmax),
        // and the scratch is a tile's logits, `[TILE·g × width]`, not `[P × P]`.
        let tq = TILE.min(p) * group;
        let mut logits = try_vec(tq * width, zero)?;
        let mut weights = try_vec(group * width, zero)?;
        let mut acc = try_vec(tq * d, zero)?;
        let mut online = try_vec(tq, OnlineSoftmax::new())?;
        let mut stats = PrefillStats {
            resident_gain: try_vec(hw, 0.0)?,
            resident_last: try_vec(hw, 0.0)?,
            chunk_scores: try_vec(p, 0.0)?,
            chunk_last: try_vec(p, 0.0)?,
        };
        let mut outputs = try_vec(p * row, T::default())?;
        let mut observed = match observe {
            0 => None,
            _ => Some((try_vec(hw, 0.0)?, try_vec(p, 0.0)?)),
        };
        let states = self.planner.slots().states();
        let free = |s: usize| s < hw && states[s] == crate::planner::SlotState::Free;
        let resident = |s: usize| !free(s);
        let masked = self.planner.len() < hw;
        let scale = self.scale;
        for i0 in (0..p).step_by(TILE) {
            let i1 = (i0 + TILE).min(p);
            let nq = (i1 - i0) * group;
            let qs = &queries[i0 * row..i1 * row];
            let (acc, online) = (&mut acc[..nq * d], &mut online[..nq]);
            acc.iter_mut().for_each(|x| *x = zero);
            online.iter_mut().for_each(|x| *x = OnlineSoftmax::new());
            // Resident tokens, one run of live slots at a time (free slots
            // hold stale rows; `softmax_rows` masks them below).
            let mut s = 0;
            while s < hw {
                if free(s) {
                    s += 1;
                    continue;
                }
                let e = (s..hw).find(|&x| free(x)).unwrap_or(hw);
                let (k, v) = (&self.rows.keys(e)[s * d..], &self.rows.values(e)[s * d..]);
                kernels::online_attention(acc, online, &mut logits[s..], width, qs, k, v, d, scale);
                s = e;
            }
            // Chunk tokens before the tile: seen by every query of the tile.
            let (k, v) = (&keys[..i0 * d], &values[..i0 * d]);
            kernels::online_attention(acc, online, &mut logits[hw..], width, qs, k, v, d, scale);
            // The tile's own tokens: token `i` sees `i0..=i`.
            for i in i0..i1 {
                let a = (i - i0) * group;
                let (k, v) = (&keys[i0 * d..(i + 1) * d], &values[i0 * d..(i + 1) * d]);
                kernels::online_attention(
                    &mut acc[a * d..(a + group) * d],
                    &mut online[a..a + group],
                    &mut logits[a * width + hw + i0..],
                    width,
                    &queries[i * row..][..row],
                    k,
                    v,
                    d,
                    scale,
                );
            }
            kernels::finish_online(acc, online, d);
            for i in i0..i1 {
                let seen = hw + i + 1;
                let rows = &logits[(i - i0) * group * width..][..group * width];
                attention::softmax_rows(rows, &mut weights, width, group, seen, masked, resident)?;
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
                    if let Some((resident, chunk)) = observed.as_mut().filter(|_| i + observe >= p)
                    {
                        for (o, x) in resident.iter_mut().zip(&w[..hw]) {
                            *o += x.widen();
                        }
                        for (o, x) in chunk.iter_mut().zip(&w[hw..]) {
                            *o += x.widen();
                        }
                    }
                }
                let a = (i - i0) * row;
                for (o, x) in outputs[i * row..][..row].iter_mut().zip(&acc[a..][..row]) {
                    if !x.is_finite() {
                        return Err(Error::AttentionOverflow { what: "output" });
                    }
                    *o = T::from_acc(*x);
                }
            }
        }
        Ok(PrefillPlan { stats, outputs, observed, keep: None })
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
        self.planner.commit_prefill_keeping(&plan.stats, plan.keep.as_deref(), |j, slot| {
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
