//! `Cache<T, P>`: one head's [`Planner`] (slots, scores, policy) plus its
//! key/value rows and the crate's attention kernels.
//!
//! Every call checks before it changes anything: the phases of a step are
//! functions that hand values to each other (a [`Staged`] slot, a
//! [`Computed`](decode::Computed) attention), checks and computation only read the cache
//! and write scratch, and the commits cannot fail. That is how every `Err`
//! leaves the cache untouched, and how [`LayerCache`](crate::LayerCache)
//! checks all heads before it changes any.
//!
//! - `decode.rs`: the phases of a decode step and the three step orders;
//! - `attention.rs`: the masking + overflow check + softmax every path uses;
//! - `prefill.rs`: a chunk of tokens in one causal attention, one eviction;
//! - `derive.rs`: a prefill derived from another cache's (one attention, many policies);
//! - `rows.rs`: the key/value rows;
//! - `aliases.rs`: `FullCache`, `RecentOnly`, `HeavyOnly`, `H2OCache` and
//!   their constructors.

use num_traits::{Float, One, Zero};
use smallvec::SmallVec;

use crate::element::{Accumulator, Element, first_non_finite};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::order::StepOrder;
#[cfg(doc)]
use crate::planner::Staged;
use crate::planner::{Evicted, Planner, SlotState, Tokens, try_vec};
use crate::policy::EvictionPolicy;

mod aliases;
mod attention;
pub(crate) mod decode;
mod derive;
mod prefill;
mod rows;
mod snapkv;

pub use aliases::{
    FullCache, H2OCache, H2OSinksCache, HeavyOnly, MeanScoreCache, RecentOnly, SinkWindowCache,
    TovaCache,
};
use rows::Rows;

/// The largest `head_dim` a cache accepts: 2^16, far above any model's
/// (64–256), and small enough that `slots · head_dim` cannot overflow for any
/// budget up to [`MAX_BUDGET`](crate::MAX_BUDGET) on a 64-bit target.
pub const MAX_HEAD_DIM: usize = 1 << 16;

/// A single-head KV cache: a fixed slot store, the accumulated-score table
/// and an eviction policy `P`, deciding through a [`Planner`].
///
/// Use it through the aliases [`FullCache`], [`RecentOnly`], [`HeavyOnly`]
/// and [`H2OCache`] (one constructor each, below), with [`with_policy`](Self::with_policy)
/// for any policy, or with [`AnyPolicy`](crate::AnyPolicy) to pick the policy
/// at run time. The methods of the decode loop are in [`KvCache`].
///
/// A caller whose keys and values live elsewhere (a GPU tensor) and who runs
/// its own attention uses the [`Planner`] alone: it makes the same decisions.
///
/// # Memory
/// Allocated once at construction: keys and values `[capacity × head_dim]`
/// each, plus per slot a position (u64), a score (f64), a last weight (f64)
/// and an attention count (u64), scratch for one query's logits, and a copy
/// of the last attention's logits and weights for
/// [`last_attention`](Self::last_attention). Decode calls never allocate.
///
/// # Scores
/// Accumulated scores are `f64` whatever `T` is (`docs/semantics.md §1`). A
/// long stream adds about 1 per step to the table (an attention sink can gain
/// nearly 1 per step); in f32 a score of 10^6 has a spacing of 1/16, so small
/// weights would vanish, while f64 keeps 2^-52 relative precision for the
/// whole table. The table is `capacity` entries, so the cost is negligible
/// next to the key/value rows.
#[derive(Debug, Clone)]
pub struct Cache<T: Element, P: EvictionPolicy> {
    planner: Planner<P>,
    scale: T::Acc,
    rows: Rows<T>,
    /// `[group_capacity × slots]`: raw logits of the attention being computed.
    logits: Vec<T::Acc>,
    /// `[group_capacity × slots]`: softmax weights of the attention being computed.
    weights: Vec<T::Acc>,
    /// `[group_capacity × head_dim]`: outputs in the accumulator type.
    out_acc: Vec<T::Acc>,
    /// `[group_capacity × head_dim]`: outputs returned to the caller.
    out: Vec<T>,
    /// Queries per attention call the scratch has room for.
    group_capacity: usize,
    /// `[group_capacity × slots]` each: the logits and weights of the last
    /// committed attention (`last_attention` reads the first query's row).
    /// Kept apart from the scratch so that a call that fails after computing
    /// cannot change what `last_attention` shows; a commit swaps the two
    /// pairs of buffers, so keeping them costs no copy per step.
    shown_logits: Vec<T::Acc>,
    shown_weights: Vec<T::Acc>,
    /// Slots covered by `shown_*`; `None` once an insert, prefill or reset
    /// has changed the resident set since.
    shown: Option<usize>,
    /// Tokens evicted since the shown attention (still shown, with their
    /// weights).
    shown_evicted: SmallVec<[Evicted; 2]>,
    /// A slot the shown attention did not cover that an attend-insert-evict
    /// step filled after it (not shown).
    shown_skip: Option<usize>,
}

impl<T: Element, P: EvictionPolicy> Cache<T, P> {
    /// A cache for one head of `head_dim` under `policy`, with softmax scale
    /// `1/√head_dim`. The one constructor for every policy; the aliases add
    /// shorter ones (`H2OCache::new(head_dim, heavy, recent)`, …).
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
        let planner = Planner::new(policy)?;
        let rows = Rows::new(planner.capacity(), head_dim)?;
        let mut cache = Self {
            scale: T::Acc::one() / T::Acc::from_usize(head_dim).sqrt(),
            planner,
            rows,
            logits: Vec::new(),
            weights: Vec::new(),
            out_acc: Vec::new(),
            out: Vec::new(),
            group_capacity: 0,
            shown_logits: Vec::new(),
            shown_weights: Vec::new(),
            shown: None,
            shown_evicted: SmallVec::new(),
            shown_skip: None,
        };
        cache.reserve_group(1)?;
        Ok(cache)
    }

    /// The same cache with softmax scale `scale` instead of `1/√head_dim`
    /// (the walkthrough uses 1). Logits are `scale · q·k`.
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
        self.planner.policy()
    }

    /// The planner that makes this cache's decisions (read-only): positions,
    /// scores and per-token statistics by slot.
    #[must_use]
    pub fn planner(&self) -> &Planner<P> {
        &self.planner
    }

    /// The softmax scale, widened to f64.
    #[must_use]
    pub fn scale(&self) -> f64 {
        self.scale.widen()
    }

    /// Bytes allocated for keys and values: `capacity · 2 · head_dim · size_of::<T>()`.
    #[must_use]
    pub fn allocated_kv_bytes(&self) -> usize {
        self.planner.capacity() * 2 * self.rows.head_dim() * size_of::<T>()
    }

    /// The first query's logits and weights from the last attention (an
    /// [`attend`](KvCache::attend), a step or a layer step), one entry per
    /// token it covered, in slot order, including tokens evicted since (by
    /// the same step or a later [`evict`](KvCache::evict)). Empty once an
    /// `insert`, `prefill` or `reset` has changed the resident set since.
    ///
    /// Meant for inspection and teaching (the walkthrough prints it).
    pub fn last_attention(&self) -> impl Iterator<Item = AttentionEntry> + '_ {
        let rows = self.shown.unwrap_or(0);
        (0..rows).filter(|&s| Some(s) != self.shown_skip).filter_map(move |s| {
            let position = match self.planner.token(s) {
                Some(t) => t.position,
                None => self.shown_evicted.iter().find(|e| e.slot == s)?.position,
            };
            Some(AttentionEntry {
                position,
                logit: self.shown_logits[s].widen(),
                weight: self.shown_weights[s].widen(),
            })
        })
    }

    // ---- fork and truncate ------------------------------------------------

    /// Checks that [`copy_from`](Self::copy_from) can copy `src` into this
    /// cache: the same `head_dim`, softmax scale and policy (so the same
    /// capacity). Changes nothing.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] naming what differs.
    pub fn check_copy(&self, src: &Self) -> Result<()>
    where
        P: PartialEq,
    {
        if self.head_dim_() != src.head_dim_() {
            return Err(Error::ShapeMismatch { what: "head_dim" });
        }
        if self.scale != src.scale {
            return Err(Error::ShapeMismatch { what: "softmax scale" });
        }
        self.planner.check_copy(&src.planner)
    }

    /// Makes this cache an exact copy of `src` without allocating (a fork,
    /// for beam search): the planner's state (see [`Planner::copy_from`]),
    /// the key/value rows of slots `0..span()` and what
    /// [`last_attention`](Self::last_attention) shows. From here on both
    /// caches give bit-identical outputs and decisions for the same inputs.
    /// O(`span · head_dim`).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] (see [`check_copy`](Self::check_copy));
    /// nothing changes then.
    pub fn copy_from(&mut self, src: &Self) -> Result<()>
    where
        P: PartialEq,
    {
        self.check_copy(src)?;
        self.copy_checked(src);
        Ok(())
    }

    /// [`copy_from`](Self::copy_from) after [`check_copy`](Self::check_copy).
    pub(crate) fn copy_checked(&mut self, src: &Self) {
        self.planner.copy_checked(&src.planner);
        self.rows.copy_from(&src.rows, src.planner.span());
        // The shown attention covers slots `0..shown` of the first query's row.
        let shown = src.shown.unwrap_or(0);
        self.shown_logits[..shown].copy_from_slice(&src.shown_logits[..shown]);
        self.shown_weights[..shown].copy_from_slice(&src.shown_weights[..shown]);
        self.shown = src.shown;
        self.shown_evicted.clear();
        self.shown_evicted.extend_from_slice(&src.shown_evicted);
        self.shown_skip = src.shown_skip;
    }

    /// Drops the last `n` inserted tokens, which must all still be resident
    /// (speculative decoding's rejected drafts); the next token gets the
    /// first dropped position. See [`Planner::truncate`] for what is rolled
    /// back and what is not (the dropped queries' attention stays in the
    /// older tokens' scores). [`last_attention`](Self::last_attention) and
    /// [`last_evicted`](KvCache::last_evicted) are cleared. Allocates nothing.
    ///
    /// # Errors
    /// [`Error::CannotTruncate`] if `n` exceeds the tokens inserted or one of
    /// the last `n` was evicted; nothing changes then.
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        self.planner.check_truncate(n)?;
        self.truncate_checked(n);
        Ok(())
    }

    /// [`truncate`](Self::truncate) after the planner's check.
    pub(crate) fn truncate_checked(&mut self, n: usize) {
        self.planner.truncate_checked(n);
        self.shown = None;
        self.shown_evicted.clear();
        self.shown_skip = None;
    }

    // ---- checks (read-only) ----------------------------------------------

    pub(crate) fn head_dim_(&self) -> usize {
        self.rows.head_dim()
    }

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
        let d = self.head_dim_();
        self.check_vector("key", key, d)?;
        self.check_vector("value", value, d)
    }

    /// Whether `n` more tokens fit in the store right now.
    pub(crate) fn check_room(&self, n: usize) -> Result<()> {
        self.planner.check_room(n)
    }

    /// Grows the attention scratch to take `group` queries per call.
    pub(crate) fn reserve_group(&mut self, group: usize) -> Result<()> {
        if group <= self.group_capacity {
            return Ok(());
        }
        let slots = self.planner.capacity();
        let n = group.checked_mul(slots).ok_or(Error::AllocationFailed { bytes: usize::MAX })?;
        let d = self.head_dim_();
        self.logits = try_vec(n, T::Acc::zero())?;
        self.weights = try_vec(n, T::Acc::zero())?;
        self.shown_logits = try_vec(n, T::Acc::zero())?;
        self.shown_weights = try_vec(n, T::Acc::zero())?;
        self.shown = None;
        self.out_acc = try_vec(group * d, T::Acc::zero())?;
        self.out = try_vec(group * d, T::default())?;
        self.group_capacity = group;
        Ok(())
    }

    /// The key and value rows of resident `slot` (for snapshots).
    pub(crate) fn rows_of(&self, slot: usize) -> (&[T], &[T]) {
        (self.rows.key(slot), self.rows.value(slot))
    }

    /// Rebuilds a fresh cache's state from a snapshot's layout; the
    /// planner's slot table checks its invariants first. `stats` are the
    /// tokens' `(last_weight, attended)` (empty: both 0); `keys` and `values`
    /// are `[tokens × head_dim]` in the order of `tokens`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn restore(
        &mut self,
        states: &[SlotState],
        tokens: &[(usize, u64, f64)],
        stats: &[(f64, u64)],
        keys: &[T],
        values: &[T],
        free: &[usize],
        recent: &[usize],
        next_position: u64,
        last_evicted: &[u64],
    ) -> core::result::Result<(), &'static str> {
        self.planner.restore(states, tokens, stats, free, recent, next_position, last_evicted)?;
        let d = self.head_dim_();
        for (i, &(s, _, _)) in tokens.iter().enumerate() {
            self.rows.write(s, &keys[i * d..][..d], &values[i * d..][..d]);
        }
        self.shown = None;
        Ok(())
    }
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
        self.head_dim_()
    }

    fn budget(&self) -> usize {
        self.planner.budget()
    }

    fn capacity(&self) -> usize {
        self.planner.capacity()
    }

    fn len(&self) -> usize {
        self.planner.len()
    }

    fn next_position(&self) -> u64 {
        self.planner.next_position()
    }

    fn policy_name(&self) -> &'static str {
        self.policy().name()
    }

    fn insert(&mut self, key: &[T], value: &[T]) -> Result<u64> {
        self.check_key_value(key, value)?;
        let staged = self.stage(key, value)?;
        self.shown = None;
        self.planner.clear_evicted();
        Ok(self.commit_insert(staged))
    }

    fn attend(&mut self, query: &[T]) -> Result<&[T]> {
        self.check_vector("query", query, self.head_dim_())?;
        let computed = self.compute(query, decode::Cover::RESIDENT)?;
        self.planner.clear_evicted();
        Ok(self.commit_attention(computed))
    }

    fn evict(&mut self) -> &[u64] {
        self.evict_to_budget();
        self.planner.last_evicted()
    }

    fn step(&mut self, query: &[T], key: &[T], value: &[T]) -> Result<&[T]> {
        self.step_with(StepOrder::InsertAttendEvict, query, key, value)
    }

    fn step_with(&mut self, order: StepOrder, query: &[T], key: &[T], value: &[T]) -> Result<&[T]> {
        self.step_in(order, query, key, value)
    }

    fn prefill(&mut self, queries: &[T], keys: &[T], values: &[T], out: &mut [T]) -> Result<()> {
        let plan = self.plan_prefill(1, queries, keys, values)?;
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

    fn tokens(&self) -> Tokens<'_> {
        self.planner.tokens()
    }

    fn last_evicted(&self) -> &[u64] {
        self.planner.last_evicted()
    }

    fn reset(&mut self) {
        self.planner.reset();
        self.shown = None;
        self.shown_evicted.clear();
    }
}

#[cfg(test)]
mod tests {
    use crate::{Error, FullCache, KvCache, RecentOnly};

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

    /// The last attention stays readable after the step's eviction, with the
    /// evicted token and its weight.
    #[test]
    fn the_last_attention_shows_the_evicted_token() {
        let mut c = RecentOnly::<f64>::new(1, 2).unwrap().with_scale(1.0).unwrap();
        for k in [0.0, 0.0] {
            c.step(&[1.0], &[k], &[1.0]).unwrap();
        }
        c.step(&[1.0], &[0.0], &[1.0]).unwrap();
        assert_eq!(c.last_evicted(), [0]);
        let mut shown: Vec<(u64, f64)> =
            c.last_attention().map(|e| (e.position, e.weight)).collect();
        shown.sort_by_key(|e| e.0);
        assert_eq!(shown, [(0, 1.0 / 3.0), (1, 1.0 / 3.0), (2, 1.0 / 3.0)]);
        // A later `evict` that evicts nothing keeps it; an insert clears it.
        assert!(c.evict().is_empty());
        assert_eq!(c.last_attention().count(), 3);
        c.insert(&[0.0], &[1.0]).unwrap();
        assert_eq!(c.last_attention().count(), 0);
    }
}
