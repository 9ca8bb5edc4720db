//! The phases of a decode step, as functions that hand values to each
//! other: [`Cache::stage`] → [`Staged`] (rows written to a vacant slot,
//! nothing occupied), [`Cache::compute`] → [`Computed`] (attention in
//! scratch, nothing committed), then the commits, which cannot fail. The
//! three step orders of `docs/semantics.md §2` are three sequences of them.
//!
//! Eviction here is one scan of the candidates per victim
//! ([`Planner::evict`](crate::Planner::evict)); a prefill evicts once, with a
//! sort, in `prefill.rs`.

use num_traits::Float;

use super::{Cache, attention};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::kernels;
use crate::order::StepOrder;
use crate::planner::{EvictFirst, SlotState, Staged};
use crate::policy::EvictionPolicy;

/// Which slots an attention covers: the resident tokens, plus a staged
/// slot, minus tokens the step evicts first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cover<'a> {
    /// A staged (written, not yet occupied) slot the query also sees.
    pub(crate) staged: Option<usize>,
    /// Resident slots the query must not see (evicted before attending).
    pub(crate) gone: &'a [usize],
}

impl Cover<'_> {
    /// The resident tokens only.
    pub(crate) const RESIDENT: Cover<'static> = Cover { staged: None, gone: &[] };

    /// The resident tokens and the staged slot.
    pub(crate) fn with(staged: &Staged) -> Cover<'static> {
        Cover { staged: Some(staged.slot()), gone: &[] }
    }
}

/// An attention computed into a cache's scratch and not yet committed:
/// `group` queries over slots `0..rows`. Only [`Cache::commit_attention`]
/// consumes it.
#[derive(Debug)]
#[must_use]
pub(crate) struct Computed {
    group: usize,
    rows: usize,
}

impl<T: Element, P: EvictionPolicy> Cache<T, P> {
    /// Reserves the vacant slot and writes the token's rows into it without
    /// occupying it (the write is invisible until [`commit_insert`](Self::commit_insert)).
    /// The caller has checked lengths and finiteness.
    ///
    /// # Errors
    /// [`Error::CapacityExceeded`] if no slot is vacant.
    pub(crate) fn stage(&mut self, key: &[T], value: &[T]) -> Result<Staged> {
        let staged = self.planner.stage()?;
        self.rows.write(staged.slot(), key, value);
        Ok(staged)
    }

    /// Attention of `queries` (`[g × head_dim]`, checked) over the slots
    /// `cover` names, into scratch. Changes no cache state.
    pub(crate) fn compute(&mut self, queries: &[T], cover: Cover<'_>) -> Result<Computed> {
        let d = self.head_dim_();
        let g = queries.len() / d;
        debug_assert!(g <= self.group_capacity);
        let stride = self.planner.capacity();
        let span = self.planner.span();
        let rows = match cover.staged {
            Some(slot) => span.max(slot + 1),
            None => span,
        };
        // Free slots below `rows` other than the staged one hold stale rows
        // and get weight 0, as do tokens evicted first. None in steady state
        // (an eviction frees the slot the next token is staged in) and for
        // caches that never evict.
        let slots = self.planner.slots();
        let masked =
            rows - slots.len() - usize::from(cover.staged.is_some()) + cover.gone.len() > 0;
        let states = slots.states();
        let live = |s: usize| {
            Some(s) == cover.staged
                || (states.get(s).is_some_and(|&st| st != SlotState::Free)
                    && !cover.gone.contains(&s))
        };
        let (keys, values) = (self.rows.keys(rows), self.rows.values(rows));
        let out = &mut self.out_acc[..g * d];
        // Two passes over the rows: logits, then (after the softmax) the
        // weighted sum of the values. The one-pass kernel
        // (`kernels::attention_one_pass`) measured 4–22% slower than these at
        // every size from 64 to 16,384 rows, in cache and from DRAM
        // (`cargo bench --bench ratios`, see BENCHMARKS.md), so decode steps
        // do not use it; the prefill does, on tiles of queries.
        kernels::scaled_logits(&mut self.logits, stride, queries, keys, d, self.scale);
        let (logits, weights) = (&self.logits, &mut self.weights);
        attention::softmax_rows(logits, weights, stride, g, rows, masked, live)?;
        kernels::weighted_sum(out, &self.weights, stride, values, d);
        let out = &self.out_acc[..g * d];
        if out.iter().any(|x| !x.is_finite()) {
            return Err(Error::AttentionOverflow { what: "output" });
        }
        Ok(Computed { group: g, rows })
    }

    /// Occupies a staged slot with the next position; its score starts at 0.
    pub(crate) fn commit_insert(&mut self, staged: Staged) -> u64 {
        self.planner.commit_insert(staged)
    }

    /// Occupies a staged slot after the attention was committed
    /// (attend-insert-evict): the last attention keeps showing only what it
    /// covered.
    pub(crate) fn commit_insert_after_attention(&mut self, staged: Staged) -> u64 {
        self.shown_skip = Some(staged.slot());
        self.planner.commit_insert(staged)
    }

    /// Adds a computed attention's weights to the scores (a group's weights
    /// are summed) and returns the outputs `[g × head_dim]`.
    pub(crate) fn commit_attention(&mut self, computed: Computed) -> &[T] {
        let Computed { group, rows } = computed;
        debug_assert_eq!(rows, self.planner.span());
        let stride = self.planner.capacity();
        self.planner.add_weight_rows(&self.weights, stride, group);
        core::mem::swap(&mut self.logits, &mut self.shown_logits);
        core::mem::swap(&mut self.weights, &mut self.shown_weights);
        self.shown = Some(rows);
        self.shown_evicted.clear();
        self.shown_skip = None;
        let n = group * self.head_dim_();
        for (o, a) in self.out[..n].iter_mut().zip(&self.out_acc[..n]) {
            *o = T::from_acc(*a);
        }
        &self.out[..n]
    }

    /// Evicts down to the budget, recording the evicted positions; the last
    /// attention keeps showing them.
    pub(crate) fn evict_to_budget(&mut self) {
        self.planner.evict_to(self.planner.budget());
        if self.shown.is_some() {
            self.shown_evicted.extend_from_slice(self.planner.last_evicted_slots());
        }
    }

    /// Forgets the last call's evictions (a call that evicts nothing reports
    /// nothing).
    pub(crate) fn clear_evicted(&mut self) {
        self.planner.clear_evicted();
    }

    /// Frees the victims of an evict-insert-attend plan, after its insertion.
    /// They were not attended, so the last attention does not show them.
    pub(crate) fn commit_evictions(&mut self, victims: &[usize]) {
        self.planner.commit_evictions(victims);
    }

    /// Plans an evict-insert-attend step (read-only) and writes the token's
    /// rows into the slot it will take.
    pub(crate) fn stage_evict_first(&mut self, key: &[T], value: &[T]) -> Result<EvictFirst> {
        let plan = self.planner.plan_evict_first()?;
        self.rows.write(plan.staged.slot(), key, value);
        Ok(plan)
    }

    /// One decode step in `order` (inputs unchecked by the caller).
    pub(crate) fn step_in(
        &mut self,
        order: StepOrder,
        query: &[T],
        key: &[T],
        value: &[T],
    ) -> Result<&[T]> {
        self.check_vector("query", query, self.head_dim_())?;
        self.check_key_value(key, value)?;
        match order {
            StepOrder::InsertAttendEvict => {
                let staged = self.stage(key, value)?;
                let computed = self.compute(query, Cover::with(&staged))?;
                self.commit_insert(staged);
                self.commit_attention(computed);
                self.evict_to_budget();
            }
            StepOrder::AttendInsertEvict => {
                // The staged slot is free (masked) or past the span: the
                // query does not see it.
                let staged = self.stage(key, value)?;
                let computed = self.compute(query, Cover::RESIDENT)?;
                self.commit_attention(computed);
                self.commit_insert_after_attention(staged);
                self.evict_to_budget();
            }
            StepOrder::EvictInsertAttend => {
                let EvictFirst { victims, staged } = self.stage_evict_first(key, value)?;
                let cover = Cover { staged: Some(staged.slot()), gone: &victims };
                let computed = self.compute(query, cover)?;
                self.commit_insert(staged);
                self.commit_evictions(&victims);
                self.commit_attention(computed);
            }
        }
        Ok(&self.out[..self.head_dim_()])
    }
}

#[cfg(test)]
mod tests {
    use crate::{FullCache, H2O, H2OCache, KvCache, RecentOnly, StepOrder};

    /// Deterministic values in `[-1, 1)`.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) as f64 / (1u64 << 52) as f64 - 1.0) as f32
            })
            .collect()
    }

    /// Caches past the L2 cache (over 2 MiB of K/V) give the f64 softmax
    /// attention within rounding, and their scores gain the softmax of the
    /// logits.
    #[test]
    fn large_cache_steps_match_f64_attention() {
        let (d, n) = (128, 2200);
        let (k, v, q) = (values(n * d, 1), values(n * d, 2), values(4 * d, 3));
        let mut full = FullCache::<f32>::new(d, n).unwrap();
        let mut h2o = H2OCache::<f32>::new(d, n / 2 - 2, n / 2 - 2).unwrap();
        for r in 0..n - 4 {
            full.insert(&k[r * d..][..d], &v[r * d..][..d]).unwrap();
            h2o.insert(&k[r * d..][..d], &v[r * d..][..d]).unwrap();
            h2o.evict();
        }
        for i in 0..4 {
            let r = n - 4 + i;
            let (qi, kr, vr) = (&q[i * d..][..d], &k[r * d..][..d], &v[r * d..][..d]);
            for cache in [&mut full as &mut dyn KvCache<f32>, &mut h2o] {
                cache.insert(kr, vr).unwrap();
                let before: Vec<f64> = cache.tokens().map(|t| t.score).collect();
                let out = cache.attend(qi).unwrap().to_vec();
                // Brute force in f64 over the resident rows, in slot order.
                let rows: Vec<usize> = cache.tokens().map(|t| t.position as usize).collect();
                let scale = 1.0 / (d as f64).sqrt();
                let dot = |r: usize| -> f64 {
                    (0..d).map(|j| f64::from(qi[j]) * f64::from(k[r * d + j])).sum()
                };
                let logits: Vec<f64> = rows.iter().map(|&r| dot(r) * scale).collect();
                let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                let name = cache.policy_name();
                for j in 0..d {
                    let want: f64 =
                        rows.iter().zip(&e).map(|(&r, w)| w / sum * f64::from(v[r * d + j])).sum();
                    let got = f64::from(out[j]);
                    assert!((got - want).abs() < 1e-5, "{name}: out {j}: {got} vs {want}");
                }
                for ((t, b), w) in cache.tokens().zip(&before).zip(&e) {
                    let gain = t.score - b;
                    assert!((gain - w / sum).abs() < 1e-6 * (w / sum) + 1e-9, "{name}: score");
                }
                cache.evict();
            }
        }
    }

    /// Evict-insert-attend on a sliding window of 2: the query sees exactly
    /// the two newest tokens, itself included (hand-computed: equal logits
    /// give the mean of the two values).
    #[test]
    fn evict_first_attends_over_exactly_the_budget() {
        let mut c = RecentOnly::<f64>::new(1, 2).unwrap().with_scale(1.0).unwrap();
        let eia = StepOrder::EvictInsertAttend;
        assert_eq!(c.step_with(eia, &[0.0], &[0.0], &[2.0]).unwrap(), [2.0]);
        assert_eq!(c.step_with(eia, &[0.0], &[0.0], &[4.0]).unwrap(), [3.0]);
        assert!(c.last_evicted().is_empty());
        // Third token: token 0 goes first, so the mean is (4 + 8) / 2.
        assert_eq!(c.step_with(eia, &[0.0], &[0.0], &[8.0]).unwrap(), [6.0]);
        assert_eq!(c.last_evicted(), [0]);
        assert_eq!(c.resident_positions(), [1, 2]);
        assert_eq!(c.last_attention().count(), 2);
        // Insert-attend-evict would have attended over three: (2+4+8)/3.
        let mut d = RecentOnly::<f64>::new(1, 2).unwrap().with_scale(1.0).unwrap();
        for v in [2.0, 4.0] {
            d.step(&[0.0], &[0.0], &[v]).unwrap();
        }
        let out = d.step(&[0.0], &[0.0], &[8.0]).unwrap()[0];
        assert!((out - 14.0 / 3.0).abs() < 1e-14, "{out}");
    }

    /// H2O (1 heavy + 1 recent) in evict-insert-attend order, by hand: key
    /// 0 is large, so token 0 is the heavy hitter; each step evicts the
    /// token that just left the window before the new one is attended, and
    /// scores never include the step's own weights at eviction time.
    #[test]
    fn evict_first_h2o_by_hand() {
        let mut c = H2OCache::<f64>::new(1, 1, 1).unwrap().with_scale(1.0).unwrap();
        let eia = StepOrder::EvictInsertAttend;
        let ln3 = 3f64.ln();
        // t0: attends itself only.
        assert_eq!(c.step_with(eia, &[1.0], &[ln3], &[1.0]).unwrap(), [1.0]);
        // t1: budget 2, nothing evicted; weights e^ln3 : e^0 = 3 : 1.
        let out = c.step_with(eia, &[1.0], &[0.0], &[5.0]).unwrap()[0];
        assert!((out - (0.75 * 1.0 + 0.25 * 5.0)).abs() < 1e-15);
        assert!((c.score_of(0).unwrap() - 1.75).abs() < 1e-15);
        assert!((c.score_of(1).unwrap() - 0.25).abs() < 1e-15);
        // t2: evict to 1 token with t2 protected: candidates 0 (1.75) and 1
        // (0.25, leaving the window): token 1 goes; then t2 attends {0, 2}.
        let out = c.step_with(eia, &[1.0], &[0.0], &[9.0]).unwrap()[0];
        assert_eq!(c.last_evicted(), [1]);
        assert!((out - (0.75 * 1.0 + 0.25 * 9.0)).abs() < 1e-15);
        assert_eq!(c.resident_positions(), [0, 2]);
    }

    /// A full cache in evict-insert-attend order is insert then attend, and
    /// refuses a token past its capacity without changing.
    #[test]
    fn evict_first_on_a_full_cache() {
        let mut c = FullCache::<f32>::new(1, 2).unwrap();
        let eia = StepOrder::EvictInsertAttend;
        c.step_with(eia, &[1.0], &[1.0], &[1.0]).unwrap();
        c.step_with(eia, &[1.0], &[1.0], &[3.0]).unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.step_with(eia, &[1.0], &[1.0], &[1.0]).is_err());
        assert_eq!(c.resident_positions(), [0, 1]);
    }

    /// Brute force: a window of W in evict-insert-attend order attends over
    /// exactly the newest W tokens (itself included), for random keys and
    /// values; H2O keeps exactly budget tokens after every step and never
    /// attends over more.
    #[test]
    fn evict_first_matches_a_brute_force_window() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        for w in 1..5usize {
            let mut c = RecentOnly::<f64>::new(2, w).unwrap();
            let mut h = H2OCache::<f64>::with_policy(2, H2O::new(2, w).unwrap()).unwrap();
            let mut all: Vec<([f64; 2], [f64; 2], [f64; 2])> = Vec::new();
            for t in 0..40 {
                let (q, k, v) = ([next(), next()], [next(), next()], [next(), next()]);
                all.push((q, k, v));
                let got = c.step_with(StepOrder::EvictInsertAttend, &q, &k, &v).unwrap().to_vec();
                let window = &all[all.len().saturating_sub(w)..];
                let scale = 1.0 / 2f64.sqrt();
                let logits: Vec<f64> =
                    window.iter().map(|(_, k, _)| scale * (q[0] * k[0] + q[1] * k[1])).collect();
                let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for j in 0..2 {
                    let want: f64 =
                        window.iter().zip(&e).map(|((_, _, v), e)| e / sum * v[j]).sum();
                    assert!((got[j] - want).abs() < 1e-12, "w {w} t {t}: {got:?}");
                }
                assert_eq!(c.resident_positions().len(), (t + 1).min(w));
                h.step_with(StepOrder::EvictInsertAttend, &q, &k, &v).unwrap();
                assert_eq!(h.len(), (t + 1).min(w + 2));
                assert_eq!(h.last_attention().count(), (t + 1).min(w + 2));
            }
        }
    }
}
