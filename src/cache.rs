//! `Cache<T, P>`: one head's slot store + score table + an eviction policy.
//!
//! The decode path is split into a check phase that only reads the cache and
//! writes scratch, and a commit phase that cannot fail. That is how every
//! `Err` leaves the cache untouched, and how [`LayerCache`](crate::LayerCache)
//! checks all heads before it changes any.

use num_traits::{Float, One, Zero};
use smallvec::SmallVec;

use crate::element::{Accumulator, Element, first_non_finite};
use crate::error::{Error, Result};
use crate::kernels;
use crate::kv_cache::{KvCache, Tokens};
use crate::policy::{Candidate, EvictionPolicy};
use crate::store::{SlotState, SlotStore, try_vec};

/// Key + value bytes from which a decode step uses the one-pass kernel (when
/// no slot is masked): 2 MiB, the L2 cache of one core on the reference
/// machine. Below it the rows come from cache and the two-pass kernels,
/// which do a little less arithmetic per row, measured as fast or faster;
/// above it the one-pass kernel reads each row once from memory.
const ONE_PASS_MIN_BYTES: usize = 2 << 20;

/// The largest `head_dim` a cache accepts.
pub const MAX_HEAD_DIM: usize = 1 << 16;

/// A single-head KV cache: fixed slot store, accumulated-score table and an
/// eviction policy `P`.
///
/// Use it through the aliases [`FullCache`](crate::FullCache),
/// [`RecentOnly`](crate::RecentOnly), [`HeavyOnly`](crate::HeavyOnly) and
/// [`H2OCache`](crate::H2OCache), or with [`AnyPolicy`](crate::AnyPolicy) to
/// pick the policy at run time. All methods of the decode loop are in
/// [`KvCache`].
///
/// # Memory
/// Allocated once at construction: keys and values `[capacity × head_dim]`
/// each, plus `capacity` positions (u64) and scores (f64), scratch for
/// one query's logits, and a copy of the last attention's logits and weights
/// for [`last_attention`](Self::last_attention). Decode calls never allocate.
///
/// # Scores
/// Accumulated scores are `f64` whatever `T` is. A long stream adds about 1
/// per step to the table (an attention sink can gain nearly 1 per step); in
/// f32 a score of 10^6 has a spacing of 1/16, so small weights would vanish,
/// while f64 keeps 2^-52 relative precision for the whole table. The table
/// is `capacity` entries, so the cost is negligible next to the key/value rows.
#[derive(Debug, Clone)]
pub struct Cache<T: Element, P: EvictionPolicy> {
    policy: P,
    head_dim: usize,
    scale: T::Acc,
    store: SlotStore<T>,
    /// `[slots]`: accumulated attention score of the token in each slot.
    scores: Vec<f64>,
    /// Position the next inserted token gets.
    next_position: u64,
    /// `[group_capacity × slots]`: raw logits of the last attention.
    logits: Vec<T::Acc>,
    /// `[group_capacity × slots]`: softmax weights of the last attention.
    weights: Vec<T::Acc>,
    /// `[group_capacity × head_dim]`: outputs in the accumulator type.
    out_acc: Vec<T::Acc>,
    /// `[group_capacity × head_dim]`: outputs returned to the caller.
    out: Vec<T>,
    /// `[group_capacity]`: running softmax statistics of the one-pass kernel.
    online: Vec<kernels::OnlineSoftmax<T::Acc>>,
    /// Queries per attention call the scratch has room for.
    group_capacity: usize,
    /// Shape of the last computed attention: (queries, slots covered).
    last: Option<(usize, usize)>,
    /// `[group_capacity × slots]` each: the logits and weights of the last
    /// committed attention (`last_attention` reads the first query's row).
    /// Kept apart from the scratch so that a call that fails after computing
    /// cannot change what `last_attention` shows; a commit swaps the two
    /// pairs of buffers, so keeping them costs no copy per step.
    shown_logits: Vec<T::Acc>,
    shown_weights: Vec<T::Acc>,
    /// Slots covered by `shown_*`; `None` once the resident set has changed.
    shown: Option<usize>,
    /// Positions evicted by the last call; one inline slot covers decode.
    last_evicted: SmallVec<[u64; 2]>,
}

impl<T: Element, P: EvictionPolicy> Cache<T, P> {
    /// A cache for one head of `head_dim` under `policy`, with softmax scale
    /// `1/√head_dim`.
    ///
    /// # Errors
    /// - [`Error::ZeroHeadDim`], [`Error::HeadDimTooLarge`] (above
    ///   [`MAX_HEAD_DIM`]);
    /// - [`Error::InvalidSplit`] if the policy protects more tokens than its
    ///   budget;
    /// - [`Error::AllocationFailed`] if the buffers cannot be allocated.
    pub fn with_policy(head_dim: usize, policy: P) -> Result<Self> {
        if head_dim == 0 {
            return Err(Error::ZeroHeadDim);
        }
        if head_dim > MAX_HEAD_DIM {
            return Err(Error::HeadDimTooLarge { head_dim, max: MAX_HEAD_DIM });
        }
        let budget = policy.budget();
        crate::policy::check_budget(budget)?;
        if policy.recent_window() > budget {
            return Err(Error::InvalidSplit { budget, recent: policy.recent_window() });
        }
        let slots = if policy.evicts() { budget + 1 } else { budget };
        let store = SlotStore::new(slots, head_dim, policy.recent_window())?;
        let mut cache = Self {
            scale: T::Acc::one() / T::Acc::from_usize(head_dim).sqrt(),
            head_dim,
            store,
            scores: Vec::new(),
            next_position: 0,
            logits: Vec::new(),
            weights: Vec::new(),
            out_acc: Vec::new(),
            out: Vec::new(),
            online: Vec::new(),
            group_capacity: 0,
            last: None,
            shown_logits: Vec::new(),
            shown_weights: Vec::new(),
            shown: None,
            last_evicted: SmallVec::new(),
            policy,
        };
        cache.scores = try_vec(slots, 0.0)?;
        cache.reserve_group(1)?;
        Ok(cache)
    }

    /// The same cache with softmax scale `scale` instead of `1/√head_dim`
    /// (the seed walkthrough uses 1). Logits are `scale · q·k`.
    ///
    /// # Errors
    /// [`Error::InvalidScale`] unless `scale` is finite and positive, also
    /// once rounded to the accumulator type (an `f32` cache refuses `1e300`,
    /// which rounds to infinity, and `1e-50`, which rounds to zero).
    pub fn with_scale(mut self, scale: f64) -> Result<Self> {
        let narrow = T::Acc::narrow(scale);
        if !(scale.is_finite() && scale > 0.0 && narrow.is_finite() && narrow > T::Acc::zero()) {
            return Err(Error::InvalidScale { scale });
        }
        self.scale = narrow;
        Ok(self)
    }

    /// The eviction policy.
    #[must_use]
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// The softmax scale, widened to f64.
    #[must_use]
    pub fn scale(&self) -> f64 {
        self.scale.widen()
    }

    /// Bytes allocated for keys and values: `capacity · 2 · head_dim · size_of::<T>()`.
    #[must_use]
    pub fn allocated_kv_bytes(&self) -> usize {
        self.store.slots() * 2 * self.head_dim * size_of::<T>()
    }

    /// The first query's logits and weights from the last
    /// [`attend`](KvCache::attend) or step, one entry per token it covered,
    /// in slot order. Empty once an `insert`, `evict` or `reset` has changed
    /// the resident set since (the entries would no longer match).
    ///
    /// Meant for inspection and teaching (the walkthrough prints it).
    pub fn last_attention(&self) -> impl Iterator<Item = AttentionEntry> + '_ {
        let rows = self.shown.unwrap_or(0);
        (0..rows).filter(|&s| self.store.state(s) != SlotState::Free).map(|s| AttentionEntry {
            position: self.store.position(s),
            logit: self.shown_logits[s].widen(),
            weight: self.shown_weights[s].widen(),
        })
    }

    // ---- checks (read-only) ----------------------------------------------

    pub(crate) fn check_vector(&self, what: &'static str, x: &[T], len: usize) -> Result<()> {
        if x.len() != len {
            return Err(Error::LengthMismatch { what, expected: len, got: x.len() });
        }
        match first_non_finite(x) {
            Some((index, value)) => Err(Error::NonFinite { what, index, value }),
            None => Ok(()),
        }
    }

    pub(crate) fn check_key_value(&self, key: &[T], value: &[T]) -> Result<()> {
        self.check_vector("key", key, self.head_dim)?;
        self.check_vector("value", value, self.head_dim)
    }

    /// Whether `n` more tokens fit in the store right now.
    pub(crate) fn check_room(&self, n: usize) -> Result<()> {
        let (len, capacity) = (self.store.len(), self.store.slots());
        if n > capacity - len {
            return Err(Error::CapacityExceeded { len, capacity, requested: n });
        }
        Ok(())
    }

    /// Grows the attention scratch to take `group` queries per call.
    pub(crate) fn reserve_group(&mut self, group: usize) -> Result<()> {
        if group <= self.group_capacity {
            return Ok(());
        }
        let slots = self.store.slots();
        let n = group.checked_mul(slots).ok_or(Error::AllocationFailed { bytes: usize::MAX })?;
        self.logits = try_vec(n, T::Acc::zero())?;
        self.weights = try_vec(n, T::Acc::zero())?;
        self.shown_logits = try_vec(n, T::Acc::zero())?;
        self.shown_weights = try_vec(n, T::Acc::zero())?;
        self.shown = None;
        self.out_acc = try_vec(group * self.head_dim, T::Acc::zero())?;
        self.out = try_vec(group * self.head_dim, T::default())?;
        self.online = try_vec(group, kernels::OnlineSoftmax::new())?;
        self.group_capacity = group;
        Ok(())
    }

    // ---- two-phase decode ------------------------------------------------

    /// Writes a token into the vacant slot without occupying it.
    /// The caller has checked room, lengths and finiteness.
    pub(crate) fn stage(&mut self, key: &[T], value: &[T]) -> usize {
        let slot = self.store.vacant_slot().expect("room was checked");
        self.store.write_rows(slot, key, value);
        slot
    }

    /// Attention of `queries` (`[g × head_dim]`, checked) over the resident
    /// tokens plus the `staged` slot, into scratch. Changes no cache state.
    pub(crate) fn compute(&mut self, queries: &[T], staged: Option<usize>) -> Result<()> {
        let d = self.head_dim;
        let g = queries.len() / d;
        debug_assert!(g <= self.group_capacity);
        let rows = match staged {
            Some(slot) => self.store.high_water().max(slot + 1),
            None => self.store.high_water(),
        };
        self.last = None;
        // Free slots below `rows` other than the staged one: they hold stale
        // rows and get weight 0. Zero in steady state (an eviction frees the
        // slot the next token is staged in) and for caches that never evict.
        let masked = rows - self.store.len() - usize::from(staged.is_some());
        let kv_bytes = 2 * rows * d * size_of::<T>();
        if masked == 0 && kv_bytes >= ONE_PASS_MIN_BYTES {
            self.compute_one_pass(queries, rows)
        } else {
            self.compute_two_pass(queries, staged, rows, masked)
        }?;
        let out = &self.out_acc[..g * d];
        if out.iter().any(|x| !x.is_finite()) {
            return Err(Error::AttentionOverflow { what: "output" });
        }
        self.last = Some((g, rows));
        Ok(())
    }

    /// Every slot below `rows` is live: logits, online softmax and the
    /// weighted sum in one pass over the rows, then the weights for the
    /// score table from the stored logits.
    fn compute_one_pass(&mut self, queries: &[T], rows: usize) -> Result<()> {
        let d = self.head_dim;
        let g = queries.len() / d;
        let stride = self.store.slots();
        kernels::attention_one_pass(
            &mut self.out_acc[..g * d],
            &mut self.online[..g],
            &mut self.logits,
            stride,
            queries,
            self.store.keys(rows),
            self.store.values(rows),
            d,
            self.scale,
        );
        for q in 0..g {
            let logits = &self.logits[q * stride..][..rows];
            if !logits.iter().fold(true, |ok, x| ok & x.is_finite()) {
                return Err(Error::AttentionOverflow { what: "logit" });
            }
            let weights = &mut self.weights[q * stride..][..rows];
            weights.copy_from_slice(logits);
            kernels::softmax_in_place(weights);
        }
        Ok(())
    }

    /// Some free slots below `rows` hold stale rows: logits, masked softmax,
    /// then the weighted sum, each a pass of its own.
    fn compute_two_pass(
        &mut self,
        queries: &[T],
        staged: Option<usize>,
        rows: usize,
        masked: usize,
    ) -> Result<()> {
        let d = self.head_dim;
        let g = queries.len() / d;
        let stride = self.store.slots();
        kernels::scaled_logits(
            &mut self.logits,
            stride,
            queries,
            self.store.keys(rows),
            d,
            self.scale,
        );
        for q in 0..g {
            let logits = &self.logits[q * stride..][..rows];
            // One branch-free pass; only if it fails, find out whether the
            // overflow is in a live slot (a masked slot's stale row can
            // overflow too, and is ignored).
            if !logits.iter().fold(true, |ok, x| ok & x.is_finite()) {
                let states = self.store.states();
                let live = |s: usize| {
                    states.get(s).is_none_or(|&st| st != SlotState::Free) || Some(s) == staged
                };
                if (0..rows).any(|s| live(s) && !logits[s].is_finite()) {
                    return Err(Error::AttentionOverflow { what: "logit" });
                }
            }
            let weights = &mut self.weights[q * stride..][..rows];
            weights.copy_from_slice(logits);
            if masked > 0 {
                for (s, (w, &state)) in weights.iter_mut().zip(self.store.states()).enumerate() {
                    if state == SlotState::Free && Some(s) != staged {
                        *w = T::Acc::neg_infinity();
                    }
                }
            }
            kernels::softmax_in_place(weights);
        }
        let out = &mut self.out_acc[..g * d];
        kernels::weighted_sum(out, &self.weights, stride, self.store.values(rows), d);
        Ok(())
    }

    /// Occupies a staged slot with the next position; its score starts at 0.
    pub(crate) fn commit_insert(&mut self, slot: usize) -> u64 {
        let position = self.next_position;
        self.store.occupy(slot, position);
        self.store.push_recent(slot);
        self.scores[slot] = 0.0;
        self.next_position += 1;
        position
    }

    /// Adds the computed weights to the scores (a group's weights are summed)
    /// and returns the outputs `[g × head_dim]`.
    pub(crate) fn commit_attention(&mut self) -> &[T] {
        // `take`: the scratch is swapped out below, so a computed attention is
        // committed at most once.
        let Some((g, rows)) = self.last.take() else { return &[] };
        let stride = self.store.slots();
        for q in 0..g {
            for (score, w) in
                self.scores[..rows].iter_mut().zip(&self.weights[q * stride..][..rows])
            {
                *score += w.widen();
            }
        }
        core::mem::swap(&mut self.logits, &mut self.shown_logits);
        core::mem::swap(&mut self.weights, &mut self.shown_weights);
        self.shown = Some(rows);
        let n = g * self.head_dim;
        for (o, a) in self.out[..n].iter_mut().zip(&self.out_acc[..n]) {
            *o = T::from_acc(*a);
        }
        &self.out[..n]
    }

    /// Evicts down to the budget, recording the evicted positions.
    pub(crate) fn evict_to_budget(&mut self) {
        self.last_evicted.clear();
        if !self.policy.evicts() {
            return;
        }
        while self.store.len() > self.policy.budget() {
            let Some(victim) = self.select_victim() else { break };
            self.last_evicted.push(self.store.position(victim));
            self.store.release(victim);
            self.shown = None;
        }
        self.last_evicted.sort_unstable();
    }

    /// The candidate the policy evicts first: one scan over the candidates.
    /// The store keeps a list of the candidate slots, so this visits only
    /// candidates (`heavy + 1` of them in steady state), with no branch on
    /// slot states.
    fn select_victim(&self) -> Option<usize> {
        let positions = self.store.positions();
        let mut best: Option<(usize, Candidate)> = None;
        for &s in self.store.candidates() {
            let c = Candidate { position: positions[s], score: self.scores[s] };
            match &best {
                Some((_, b)) if !self.policy.eviction_order(&c, b).is_lt() => {}
                _ => best = Some((s, c)),
            }
        }
        best.map(|(s, _)| s)
    }

    pub(crate) fn store(&self) -> &SlotStore<T> {
        &self.store
    }

    pub(crate) fn scale_acc(&self) -> T::Acc {
        self.scale
    }

    pub(crate) fn parts_mut(&mut self) -> CacheParts<'_, T, P> {
        CacheParts {
            policy: &self.policy,
            store: &mut self.store,
            scores: &mut self.scores,
            next_position: &mut self.next_position,
            last_evicted: &mut self.last_evicted,
        }
    }

    pub(crate) fn invalidate_attention(&mut self) {
        self.shown = None;
    }
}

/// Mutable views used by prefill's commit.
pub(crate) struct CacheParts<'a, T, P> {
    pub(crate) policy: &'a P,
    pub(crate) store: &'a mut SlotStore<T>,
    pub(crate) scores: &'a mut [f64],
    pub(crate) next_position: &'a mut u64,
    pub(crate) last_evicted: &'a mut SmallVec<[u64; 2]>,
}

/// One token's logit and weight in the last attention; see
/// [`Cache::last_attention`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionEntry {
    /// Absolute token position.
    pub position: u64,
    /// `scale · q·k`, widened to f64.
    pub logit: f64,
    /// Softmax weight, widened to f64.
    pub weight: f64,
}

impl<T: Element, P: EvictionPolicy> KvCache<T> for Cache<T, P> {
    fn head_dim(&self) -> usize {
        self.head_dim
    }

    fn budget(&self) -> usize {
        self.policy.budget()
    }

    fn capacity(&self) -> usize {
        self.store.slots()
    }

    fn len(&self) -> usize {
        self.store.len()
    }

    fn next_position(&self) -> u64 {
        self.next_position
    }

    fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    fn insert(&mut self, key: &[T], value: &[T]) -> Result<u64> {
        self.check_key_value(key, value)?;
        self.check_room(1)?;
        let slot = self.stage(key, value);
        self.shown = None;
        self.last_evicted.clear();
        Ok(self.commit_insert(slot))
    }

    fn attend(&mut self, query: &[T]) -> Result<&[T]> {
        self.check_vector("query", query, self.head_dim)?;
        self.compute(query, None)?;
        self.last_evicted.clear();
        Ok(self.commit_attention())
    }

    fn evict(&mut self) -> &[u64] {
        self.evict_to_budget();
        &self.last_evicted
    }

    fn step(&mut self, query: &[T], key: &[T], value: &[T]) -> Result<&[T]> {
        self.check_vector("query", query, self.head_dim)?;
        self.check_key_value(key, value)?;
        self.check_room(1)?;
        let slot = self.stage(key, value);
        self.compute(query, Some(slot))?;
        self.commit_insert(slot);
        self.commit_attention();
        self.evict_to_budget();
        Ok(&self.out[..self.head_dim])
    }

    fn step_document_order(&mut self, query: &[T], key: &[T], value: &[T]) -> Result<&[T]> {
        self.check_vector("query", query, self.head_dim)?;
        self.check_key_value(key, value)?;
        self.check_room(1)?;
        self.compute(query, None)?;
        self.commit_attention();
        let slot = self.stage(key, value);
        self.commit_insert(slot);
        self.evict_to_budget();
        Ok(&self.out[..self.head_dim])
    }

    fn prefill(&mut self, queries: &[T], keys: &[T], values: &[T], out: &mut [T]) -> Result<()> {
        let plan = crate::prefill::plan(self, 1, queries, keys, values)?;
        if out.len() != plan.outputs.len() {
            return Err(Error::LengthMismatch {
                what: "out",
                expected: plan.outputs.len(),
                got: out.len(),
            });
        }
        crate::prefill::commit(self, &plan, keys, values);
        out.copy_from_slice(&plan.outputs);
        Ok(())
    }

    fn tokens(&self) -> Tokens<'_> {
        Tokens::new(self.store.positions(), self.store.states(), &self.scores)
    }

    fn last_evicted(&self) -> &[u64] {
        &self.last_evicted
    }

    fn reset(&mut self) {
        self.store.reset();
        self.scores.iter_mut().for_each(|s| *s = 0.0);
        self.next_position = 0;
        self.last = None;
        self.shown = None;
        self.last_evicted.clear();
    }
}

#[cfg(test)]
mod tests {
    use crate::{Error, FullCache, H2OCache, KvCache, RecentOnly};

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

    /// Caches large enough for the one-pass kernel (over 2 MiB of K/V) give
    /// the f64 softmax attention within rounding, and their scores gain the
    /// softmax of the logits.
    #[test]
    fn one_pass_steps_match_f64_attention() {
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

    /// A live logit that overflows to `-inf` (or `+inf`) is an error, not a
    /// masked slot; a stale row in a free slot that would overflow is ignored.
    #[test]
    fn only_live_slots_can_overflow() {
        let huge = [1e30f32, 1e30];
        let small = [1e-3f32, 1e-3];
        for sign in [1.0f32, -1.0] {
            let mut c = FullCache::<f32>::new(2, 4).unwrap();
            c.insert(&huge.map(|x| sign * x), &[1.0, 1.0]).unwrap();
            c.insert(&small, &[2.0, 2.0]).unwrap();
            let err = c.attend(&huge).unwrap_err();
            assert!(matches!(err, Error::AttentionOverflow { what: "logit" }), "{err:?}");
        }

        // Recent-only, budget 2: the huge key (position 0) is evicted, its
        // slot stays free below the high-water mark, and attention ignores it.
        let mut c = RecentOnly::<f32>::new(2, 2).unwrap();
        c.insert(&huge, &[1.0, 1.0]).unwrap();
        c.insert(&small, &[2.0, 2.0]).unwrap();
        c.insert(&small, &[4.0, 4.0]).unwrap();
        assert_eq!(c.evict(), &[0]);
        let out = c.attend(&huge).unwrap().to_vec();
        assert_eq!(out, [3.0, 3.0], "equal logits: the mean of the two live values");
        let weights: Vec<f64> = c.last_attention().map(|e| e.weight).collect();
        assert_eq!(weights, [0.5, 0.5]);
    }
}
