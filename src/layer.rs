//! `LayerCache`: one attention layer, multi-head or grouped-query (GQA).

use crate::cache::Cache;
use crate::cache::decode::{Computed, Cover};
use crate::compress::SnapKv;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::order::StepOrder;
use crate::planner::{EvictFirst, Staged, try_vec};
use crate::policy::EvictionPolicy;

/// A layer's KV cache: one [`Cache`] per KV head, all under the same policy
/// ([`new`](Self::new)) or one policy per KV head
/// ([`with_head_policies`](Self::with_head_policies), e.g. Ada-KV's
/// head-adaptive budgets from [`adakv_from`](Self::adakv_from)).
///
/// With `n_heads = g · n_kv_heads` (grouped-query attention; `g = 1` is plain
/// multi-head attention, `n_kv_heads = 1` multi-query), query heads
/// `h·g .. (h+1)·g` share KV head `h`, as in llama.cpp and llama2.c.
///
/// - Each KV head reads each of its key and value rows once per step for its
///   whole group of `g` query heads.
/// - A KV head's accumulated score for a token is the **sum** of its `g` query
///   heads' softmax weights (the mean gives the same decisions, since each KV
///   head evicts on its own; `docs/semantics.md §6`).
/// - Each KV head evicts independently, so different heads may keep different
///   positions (as in the authors' code, per head).
///
/// Shapes (row-major): a query is `[n_heads × head_dim]`, a key or value
/// `[n_kv_heads × head_dim]`, an output `[n_heads × head_dim]`. Prefill takes
/// `P` of each, token-major: `[P × n_heads × head_dim]` and
/// `[P × n_kv_heads × head_dim]`.
///
/// Every call checks all heads before it changes any: an `Err` leaves the
/// whole layer as it was.
///
/// # Unequal heads
/// With one policy per head the heads may keep different numbers of tokens.
/// Every head still takes every token (one position counter, so
/// [`next_position`](Self::next_position), the turn rule of a
/// [`ModelCache`](crate::ModelCache) and [`truncate`](Self::truncate) work
/// as for equal heads); [`budget`](Self::budget) and [`len`](Self::len) are
/// the **largest** head's (what sizes a per-head buffer), and
/// [`head_budgets`](Self::head_budgets) / [`total_budget`](Self::total_budget)
/// give each head's and the sum. [`kv_bytes`](Self::kv_bytes), snapshots,
/// [`copy_from`](Self::copy_from) (which requires the same policy head by
/// head) and [`prefill_from`](Self::prefill_from) are per head throughout.
///
/// With the `rayon` feature, `step`, `step_with` and `attend` compute the KV
/// heads in parallel on the current rayon pool (call them inside
/// `pool.install` to choose the pool); the results are bit-identical to the
/// serial loop, and the error reported is the first failing head's in head
/// order. The layer itself allocates nothing per step; rayon's scheduler may,
/// rarely (its job queues grow or are reclaimed now and then, more often for
/// calls from outside any pool, so run the decode loop inside the pool).
///
/// # Example
/// ```
/// use h2o_kv::{H2O, LayerCache};
///
/// // 4 query heads share 2 KV heads of dimension 8; each keeps 3 + 3 tokens.
/// let mut layer = LayerCache::<f32, _>::new(4, 2, 8, H2O::new(3, 3)?)?;
/// for t in 0..20 {
///     let q = vec![0.1 * t as f32; 4 * 8];
///     let kv = vec![0.2; 2 * 8];
///     let out = layer.step(&q, &kv, &kv)?;
///     assert_eq!(out.len(), 4 * 8);
/// }
/// assert_eq!(layer.len(), 6);
/// # Ok::<(), h2o_kv::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct LayerCache<T: Element, P: EvictionPolicy> {
    heads: Vec<Cache<T, P>>,
    n_heads: usize,
    head_dim: usize,
    /// `[n_heads × head_dim]`: outputs of the last step or attend.
    out: Vec<T>,
    /// Each head's staged slot and computed attention between the check
    /// phase and the commit phase of a call (empty otherwise).
    pending: Pending,
}

/// One head's work between the check phase and the commit phase of a layer
/// call: what the commit needs, by step order.
#[derive(Debug)]
enum HeadWork {
    /// Insert-attend-evict: the staged slot, then the attention.
    Insert(Staged, Computed),
    /// Attend-insert-evict (and plain `attend`, with no slot): the attention,
    /// then the staged slot.
    Attend(Option<Staged>, Computed),
    /// Evict-insert-attend: the planned evictions and slot, then the attention.
    Evict(EvictFirst, Computed),
}

/// Room for one [`HeadWork`] per KV head, allocated once: a clone keeps the
/// capacity (a derived `Clone` would not, and the clone's first step would
/// allocate).
#[derive(Debug, Default)]
struct Pending(Vec<Result<HeadWork>>);

/// Runs the check phase `one` of every head (stage and compute, no commit)
/// into `pending`, in head order, and returns the first error in head order.
///
/// With the `rayon` feature the heads run on the current rayon pool (the
/// results land in `pending`'s preallocated room, so nothing is allocated
/// inside a pool); each head's work is the same as in the serial loop, so the
/// results are bit-identical. A head after a failing one may then have
/// staged its rows too: staging occupies nothing, so that is harmless.
fn run_heads<T: Element, P: EvictionPolicy>(
    heads: &mut [Cache<T, P>],
    pending: &mut Pending,
    one: impl Fn(usize, &mut Cache<T, P>) -> Result<HeadWork> + Sync,
) -> Result<()> {
    #[cfg(feature = "rayon")]
    if heads.len() > 1 {
        use rayon::prelude::*;
        pending.0.par_extend(heads.par_iter_mut().enumerate().map(|(h, head)| one(h, head)));
        return match pending.0.iter().position(Result::is_err) {
            Some(i) => pending.0.swap_remove(i).map(|_| ()),
            None => Ok(()),
        };
    }
    for (h, head) in heads.iter_mut().enumerate() {
        let work = one(h, head)?;
        pending.0.push(Ok(work));
    }
    Ok(())
}

impl Clone for Pending {
    fn clone(&self) -> Self {
        Pending(Vec::with_capacity(self.0.capacity()))
    }
}

impl<T: Element, P: EvictionPolicy> LayerCache<T, P> {
    /// A layer of `n_kv_heads` caches of `head_dim` under `policy`, serving
    /// `n_heads` query heads. Softmax scale `1/√head_dim`.
    ///
    /// # Errors
    /// [`Error::InvalidHeadCounts`] unless `n_kv_heads ≥ 1` and `n_heads` is a
    /// positive multiple of it; [`Error::AllocationFailed`] if the layer's
    /// key/value memory (`n_kv_heads` × one head's) cannot be had; otherwise as
    /// [`Cache::with_policy`].
    pub fn new(n_heads: usize, n_kv_heads: usize, head_dim: usize, policy: P) -> Result<Self> {
        if n_kv_heads == 0 || n_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(Error::InvalidHeadCounts { n_heads, n_kv_heads });
        }
        let mut head = Cache::with_policy(head_dim, policy)?;
        head.reserve_group(n_heads / n_kv_heads)?;
        // The other heads are clones of this one, and a clone cannot report an
        // allocation failure: ask for the whole layer's key/value memory once,
        // up front, so an impossible layer is an `Err` rather than an abort.
        let total = head
            .allocated_kv_bytes()
            .checked_mul(n_kv_heads)
            .ok_or(Error::AllocationFailed { bytes: usize::MAX })?;
        Vec::<u8>::new()
            .try_reserve_exact(total)
            .map_err(|_| Error::AllocationFailed { bytes: total })?;
        let out_len =
            n_heads.checked_mul(head_dim).ok_or(Error::AllocationFailed { bytes: usize::MAX })?;
        let mut heads = Vec::new();
        heads
            .try_reserve_exact(n_kv_heads)
            .map_err(|_| Error::AllocationFailed { bytes: usize::MAX })?;
        heads.resize(n_kv_heads, head);
        Self::from_heads(n_heads, head_dim, out_len, heads)
    }

    /// A layer of one KV head of `head_dim` per policy in `policies` (so
    /// `n_kv_heads` is their number), head 0 first, serving `n_heads` query
    /// heads. Softmax scale `1/√head_dim`. The heads may have different
    /// budgets and even different policies of the same type (see
    /// [Unequal heads](Self#unequal-heads)); equal policies give the same
    /// layer as [`new`](Self::new).
    ///
    /// # Example
    /// ```
    /// use h2o_kv::{H2O, KvCache, LayerCache};
    ///
    /// // 4 query heads on 2 KV heads: head 0 keeps 2 + 2 tokens, head 1 6 + 6.
    /// let policies = [H2O::new(2, 2)?, H2O::new(6, 6)?];
    /// let mut layer = LayerCache::<f32, _>::with_head_policies(4, 8, policies)?;
    /// for t in 0..20 {
    ///     layer.step(&[0.1 * t as f32; 4 * 8], &[0.2; 2 * 8], &[0.3; 2 * 8])?;
    /// }
    /// assert_eq!(layer.head_budgets().collect::<Vec<_>>(), [4, 12]);
    /// assert_eq!((layer.budget(), layer.total_budget(), layer.len()), (12, 16, 12));
    /// assert_eq!(layer.heads()[0].len(), 4);
    /// # Ok::<(), h2o_kv::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidHeadCounts`] for no policies or unless `n_heads` is a
    /// positive multiple of their number; otherwise as [`Cache::with_policy`]
    /// for each head. No panic.
    pub fn with_head_policies(
        n_heads: usize,
        head_dim: usize,
        policies: impl IntoIterator<Item = P>,
    ) -> Result<Self> {
        let policies = policies.into_iter();
        let mut heads = Vec::new();
        heads
            .try_reserve_exact(policies.size_hint().0)
            .map_err(|_| Error::AllocationFailed { bytes: usize::MAX })?;
        for policy in policies {
            heads.push(Cache::with_policy(head_dim, policy)?);
        }
        let n_kv_heads = heads.len();
        if n_kv_heads == 0 || n_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(Error::InvalidHeadCounts { n_heads, n_kv_heads });
        }
        for head in &mut heads {
            head.reserve_group(n_heads / n_kv_heads)?;
        }
        let out_len =
            n_heads.checked_mul(head_dim).ok_or(Error::AllocationFailed { bytes: usize::MAX })?;
        Self::from_heads(n_heads, head_dim, out_len, heads)
    }

    /// A layer of checked, built heads: adds the output and pending room.
    fn from_heads(
        n_heads: usize,
        head_dim: usize,
        out_len: usize,
        heads: Vec<Cache<T, P>>,
    ) -> Result<Self> {
        let mut pending = Vec::new();
        pending
            .try_reserve_exact(heads.len())
            .map_err(|_| Error::AllocationFailed { bytes: usize::MAX })?;
        Ok(Self {
            heads,
            n_heads,
            head_dim,
            out: try_vec(out_len, T::default())?,
            pending: Pending(pending),
        })
    }

    /// The same layer with softmax scale `scale` on every head.
    ///
    /// # Errors
    /// [`Error::InvalidScale`] unless `scale` is finite and positive.
    pub fn with_scale(self, scale: f64) -> Result<Self> {
        let Self { heads, n_heads, head_dim, out, pending } = self;
        let heads = heads.into_iter().map(|h| h.with_scale(scale)).collect::<Result<_>>()?;
        Ok(Self { heads, n_heads, head_dim, out, pending })
    }

    /// Query heads.
    #[must_use]
    pub fn n_heads(&self) -> usize {
        self.n_heads
    }

    /// Key/value heads.
    #[must_use]
    pub fn n_kv_heads(&self) -> usize {
        self.heads.len()
    }

    /// Elements per head vector.
    #[must_use]
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Query heads per KV head.
    #[must_use]
    pub fn group_size(&self) -> usize {
        self.n_heads / self.heads.len()
    }

    /// The cache of KV head `kv_head`, or `None` if out of range.
    #[must_use]
    pub fn head(&self, kv_head: usize) -> Option<&Cache<T, P>> {
        self.heads.get(kv_head)
    }

    /// All KV heads' caches, in head order.
    #[must_use]
    pub fn heads(&self) -> &[Cache<T, P>] {
        &self.heads
    }

    /// Mutable access to the heads, for snapshot restore (crate-internal:
    /// callers must keep every head's next position in step).
    pub(crate) fn heads_mut(&mut self) -> &mut [Cache<T, P>] {
        &mut self.heads
    }

    /// Tokens resident per KV head: the largest head's count (every head's,
    /// when all heads share one policy).
    #[must_use]
    pub fn len(&self) -> usize {
        self.heads.iter().map(KvCache::len).max().unwrap_or(0)
    }

    /// Whether no token is resident.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens kept per KV head after each eviction: the largest head's
    /// budget (every head's, when all heads share one policy).
    #[must_use]
    pub fn budget(&self) -> usize {
        self.head_budgets().max().unwrap_or(0)
    }

    /// Each KV head's budget, head 0 first.
    pub fn head_budgets(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.heads.iter().map(KvCache::budget)
    }

    /// The sum of the KV heads' budgets: the most tokens the layer keeps
    /// over all its heads after an eviction.
    #[must_use]
    pub fn total_budget(&self) -> usize {
        self.head_budgets().sum()
    }

    /// The position the next inserted token gets.
    #[must_use]
    pub fn next_position(&self) -> u64 {
        self.heads[0].next_position()
    }

    /// Key and value bytes held by resident tokens, over all KV heads.
    #[must_use]
    pub fn kv_bytes(&self) -> usize {
        self.heads.iter().map(KvCache::kv_bytes).sum()
    }

    /// Forgets every token in every head; positions restart at 0.
    pub fn reset(&mut self) {
        self.heads.iter_mut().for_each(KvCache::reset);
    }

    /// Checks that [`copy_from`](Self::copy_from) can copy `src` into this
    /// layer: the same query and KV head counts, and every head as
    /// [`Cache::check_copy`] requires. Changes nothing.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] naming what differs.
    pub fn check_copy(&self, src: &Self) -> Result<()>
    where
        P: PartialEq,
    {
        if self.n_heads != src.n_heads {
            return Err(Error::ShapeMismatch { what: "n_heads" });
        }
        if self.heads.len() != src.heads.len() {
            return Err(Error::ShapeMismatch { what: "n_kv_heads" });
        }
        self.heads.iter().zip(&src.heads).try_for_each(|(a, b)| a.check_copy(b))
    }

    /// Makes this layer an exact copy of `src` without allocating (a fork,
    /// for beam search): every KV head copies its own state (see
    /// [`Cache::copy_from`]). O(`n_kv_heads · span · head_dim`).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] (see [`check_copy`](Self::check_copy)),
    /// checked for every head before any changes.
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
        for (a, b) in self.heads.iter_mut().zip(&src.heads) {
            a.copy_checked(b);
        }
        self.out.copy_from_slice(&src.out);
    }

    /// Checks that [`truncate`](Self::truncate) can drop the last `n`
    /// tokens from every head. Changes nothing.
    ///
    /// # Errors
    /// [`Error::CannotTruncate`] as [`Planner::truncate`](crate::Planner::truncate)
    /// for any head.
    pub fn check_truncate(&self, n: usize) -> Result<()> {
        self.heads.iter().try_for_each(|h| h.planner().check_truncate(n))
    }

    /// Drops the last `n` inserted tokens from every KV head (speculative
    /// decoding's rejected drafts); they must be resident in every head. See
    /// [`Cache::truncate`] for what is and is not rolled back.
    ///
    /// # Errors
    /// [`Error::CannotTruncate`], checked for every head before any changes.
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        self.check_truncate(n)?;
        self.heads.iter_mut().for_each(|h| h.truncate_checked(n));
        Ok(())
    }

    fn check_query(&self, query: &[T]) -> Result<()> {
        self.heads[0].check_vector("query", query, self.n_heads * self.head_dim)
    }

    fn check_key_value(&self, key: &[T], value: &[T]) -> Result<()> {
        let len = self.heads.len() * self.head_dim;
        self.heads[0].check_vector("key", key, len)?;
        self.heads[0].check_vector("value", value, len)?;
        self.heads.iter().try_for_each(|h| h.check_room(1))
    }

    fn row<'x>(&self, x: &'x [T], h: usize) -> &'x [T] {
        &x[h * self.head_dim..][..self.head_dim]
    }

    /// One decode step in insert-attend-evict order for every head. Returns
    /// the output `[n_heads × head_dim]`, borrowed from the layer: copy it
    /// out (`to_vec`, `copy_from_slice`) before the next call.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`], [`Error::NonFinite`],
    /// [`Error::CapacityExceeded`], [`Error::AttentionOverflow`], as for
    /// [`KvCache::step`]; checked for every head before any changes.
    pub fn step(&mut self, query: &[T], key: &[T], value: &[T]) -> Result<&[T]> {
        self.step_with(StepOrder::InsertAttendEvict, query, key, value)
    }

    /// One decode step in `order` for every head (see [`StepOrder`]).
    ///
    /// # Errors
    /// As [`step`](Self::step).
    pub fn step_with(
        &mut self,
        order: StepOrder,
        query: &[T],
        key: &[T],
        value: &[T],
    ) -> Result<&[T]> {
        self.check_query(query)?;
        self.check_key_value(key, value)?;
        self.pending.0.clear();
        let (d, gd) = (self.head_dim, self.group_size() * self.head_dim);
        let one = |h: usize, head: &mut Cache<T, P>| -> Result<HeadWork> {
            let (k, v, q) = (&key[h * d..][..d], &value[h * d..][..d], &query[h * gd..][..gd]);
            Ok(match order {
                StepOrder::InsertAttendEvict => {
                    let staged = head.stage(k, v)?;
                    let computed = head.compute(q, Cover::with(&staged))?;
                    HeadWork::Insert(staged, computed)
                }
                StepOrder::AttendInsertEvict => {
                    let staged = head.stage(k, v)?;
                    let computed = head.compute(q, Cover::RESIDENT)?;
                    HeadWork::Attend(Some(staged), computed)
                }
                StepOrder::EvictInsertAttend => {
                    let plan = head.stage_evict_first(k, v)?;
                    let cover = Cover { staged: Some(plan.staged.slot()), gone: &plan.victims };
                    let computed = head.compute(q, cover)?;
                    HeadWork::Evict(plan, computed)
                }
            })
        };
        run_heads(&mut self.heads, &mut self.pending, one)?;
        // Nothing can fail from here on.
        let g = self.group_size() * self.head_dim;
        for (h, (head, work)) in self.heads.iter_mut().zip(self.pending.0.drain(..)).enumerate() {
            // `run_heads` returned `Ok`, so every entry is `Ok`.
            let Ok(work) = work else { continue };
            let out = match work {
                HeadWork::Insert(staged, computed) => {
                    head.commit_insert(staged);
                    head.commit_attention(computed)
                }
                HeadWork::Attend(staged, computed) => {
                    let out = head.commit_attention(computed);
                    self.out[h * g..][..g].copy_from_slice(out);
                    if let Some(staged) = staged {
                        head.commit_insert_after_attention(staged);
                    }
                    head.evict_to_budget();
                    continue;
                }
                HeadWork::Evict(EvictFirst { victims, staged }, computed) => {
                    head.commit_insert(staged);
                    head.commit_evictions(&victims);
                    head.commit_attention(computed)
                }
            };
            self.out[h * g..][..g].copy_from_slice(out);
            if order == StepOrder::InsertAttendEvict {
                head.evict_to_budget();
            }
        }
        Ok(&self.out)
    }

    /// Attends with `query` `[n_heads × head_dim]` over every head's resident
    /// tokens, adding the weights to the scores; no insert, no eviction.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`], [`Error::NonFinite`], [`Error::AttentionOverflow`].
    pub fn attend(&mut self, query: &[T]) -> Result<&[T]> {
        self.check_query(query)?;
        self.pending.0.clear();
        let gd = self.group_size() * self.head_dim;
        let one = |h: usize, head: &mut Cache<T, P>| -> Result<HeadWork> {
            let computed = head.compute(&query[h * gd..][..gd], Cover::RESIDENT)?;
            Ok(HeadWork::Attend(None, computed))
        };
        run_heads(&mut self.heads, &mut self.pending, one)?;
        let g = self.group_size() * self.head_dim;
        for (h, (head, work)) in self.heads.iter_mut().zip(self.pending.0.drain(..)).enumerate() {
            // As `KvCache::attend`: a call that evicts nothing reports nothing.
            head.clear_evicted();
            let Ok(work) = work else { continue };
            let (HeadWork::Attend(_, computed)
            | HeadWork::Insert(_, computed)
            | HeadWork::Evict(_, computed)) = work;
            let out = head.commit_attention(computed);
            self.out[h * g..][..g].copy_from_slice(out);
        }
        Ok(&self.out)
    }

    /// Inserts one token's key and value (`[n_kv_heads × head_dim]` each) into
    /// every head and returns its position. Never evicts.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`], [`Error::NonFinite`], [`Error::CapacityExceeded`].
    pub fn insert(&mut self, key: &[T], value: &[T]) -> Result<u64> {
        self.check_key_value(key, value)?;
        let mut position = 0;
        for h in 0..self.heads.len() {
            let (k, v) = (self.row(key, h), self.row(value, h));
            position = self.heads[h].insert(k, v)?;
        }
        Ok(position)
    }

    /// Evicts every head down to the budget and returns what each KV head
    /// evicted (positions ascending per head; heads evict independently, so
    /// the lists can differ), as [`KvCache::evict`] does for one head.
    pub fn evict(&mut self) -> EvictedByHead<'_, T, P> {
        self.heads.iter_mut().for_each(Cache::evict_to_budget);
        EvictedByHead { heads: &self.heads }
    }

    /// What each KV head evicted in the last call (see [`evict`](Self::evict)).
    #[must_use]
    pub fn last_evicted(&self) -> EvictedByHead<'_, T, P> {
        EvictedByHead { heads: &self.heads }
    }

    /// Prefill of `P` tokens for every head (see [`KvCache::prefill`]):
    /// `queries` `[P × n_heads × head_dim]`, `keys`/`values`
    /// `[P × n_kv_heads × head_dim]`, `out` `[P × n_heads × head_dim]`.
    ///
    /// Allocates scratch for the call.
    ///
    /// # Errors
    /// As [`KvCache::prefill`], checked for every head before any changes.
    pub fn prefill(
        &mut self,
        queries: &[T],
        keys: &[T],
        values: &[T],
        out: &mut [T],
    ) -> Result<()> {
        self.prefill_selecting(None, queries, keys, values, out)
    }

    /// A prefill (as [`prefill`](Self::prefill)) whose eviction keeps, in
    /// each KV head, the prompt tokens SnapKV selects from that head's
    /// attention (its query heads' weights summed); see
    /// [`Cache::prefill_snapkv`].
    ///
    /// # Errors
    /// As [`prefill`](Self::prefill).
    pub fn prefill_snapkv(
        &mut self,
        snap: &SnapKv,
        queries: &[T],
        keys: &[T],
        values: &[T],
        out: &mut [T],
    ) -> Result<()> {
        self.prefill_selecting(Some(snap), queries, keys, values, out)
    }

    fn prefill_selecting(
        &mut self,
        snap: Option<&SnapKv>,
        queries: &[T],
        keys: &[T],
        values: &[T],
        out: &mut [T],
    ) -> Result<()> {
        let (d, n_kv, g) = (self.head_dim, self.heads.len(), self.group_size());
        let kv_row = n_kv * d;
        if keys.len() % kv_row != 0 {
            return Err(Error::RaggedRows { what: "keys", len: keys.len(), row_len: kv_row });
        }
        let p = keys.len() / kv_row;
        for (what, x, len) in [
            ("values", values.len(), p * kv_row),
            ("queries", queries.len(), p * self.n_heads * d),
            ("out", out.len(), p * self.n_heads * d),
        ] {
            if x != len {
                return Err(Error::LengthMismatch { what, expected: len, got: x });
            }
        }
        let gather = |x: &[T], row: usize, offset: usize, width: usize| -> Vec<T> {
            (0..p).flat_map(|i| x[i * row + offset..][..width].iter().copied()).collect()
        };
        let mut plans = Vec::with_capacity(n_kv);
        for (h, head) in self.heads.iter().enumerate() {
            let q = gather(queries, self.n_heads * d, h * g * d, g * d);
            let k = gather(keys, kv_row, h * d, d);
            let v = gather(values, kv_row, h * d, d);
            let plan = match snap {
                Some(snap) => head.plan_snapkv(snap, g, &q, &k, &v)?,
                None => head.plan_prefill(g, &q, &k, &v)?,
            };
            plans.push((plan, k, v));
        }
        for (h, (plan, k, v)) in plans.iter().enumerate() {
            self.heads[h].commit_prefill(plan, k, v);
            for i in 0..p {
                out[i * self.n_heads * d + h * g * d..][..g * d]
                    .copy_from_slice(&plan.outputs[i * g * d..][..g * d]);
            }
        }
        Ok(())
    }
}

impl<T: Element, P: EvictionPolicy> LayerCache<T, P> {
    /// Every KV head derives its prefill from the same head of `source`
    /// (see [`Cache::prefill_from`]): one full-cache prefill of a prompt,
    /// then any number of bounded layers from it, each paying only its
    /// eviction, not the attention.
    ///
    /// # Errors
    /// [`Error::PrefillSource`] if `n_heads`, `n_kv_heads` or `head_dim`
    /// differ, or as [`Cache::prefill_from`] for any head, checked for every
    /// head before any changes. No panic.
    pub fn prefill_from<Q: EvictionPolicy>(&mut self, source: &LayerCache<T, Q>) -> Result<()> {
        self.check_prefill_from(source)?;
        self.commit_prefill_from(source);
        Ok(())
    }

    /// The checks of [`prefill_from`](Self::prefill_from). Changes nothing.
    pub(crate) fn check_prefill_from<Q: EvictionPolicy>(
        &self,
        source: &LayerCache<T, Q>,
    ) -> Result<()> {
        if (source.n_heads, source.head_dim, source.heads.len())
            != (self.n_heads, self.head_dim, self.heads.len())
        {
            return Err(Error::PrefillSource {
                reason: "the layers' head counts or head_dim differ",
            });
        }
        for (head, from) in self.heads.iter().zip(&source.heads) {
            head.check_prefill_from(from)?;
        }
        Ok(())
    }

    /// Applies a checked [`prefill_from`](Self::prefill_from).
    pub(crate) fn commit_prefill_from<Q: EvictionPolicy>(&mut self, source: &LayerCache<T, Q>) {
        for (head, from) in self.heads.iter_mut().zip(&source.heads) {
            head.commit_prefill_from(from);
        }
    }
}

/// The positions each KV head of a layer evicted in the last call, head by
/// head; see [`LayerCache::evict`].
#[derive(Debug, Clone, Copy)]
pub struct EvictedByHead<'a, T: Element, P: EvictionPolicy> {
    heads: &'a [Cache<T, P>],
}

impl<'a, T: Element, P: EvictionPolicy> EvictedByHead<'a, T, P> {
    /// KV heads.
    #[must_use]
    pub fn len(&self) -> usize {
        self.heads.len()
    }

    /// Always false: a layer has at least one KV head.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }

    /// The positions KV head `kv_head` evicted, ascending; `None` out of range.
    #[must_use]
    pub fn head(&self, kv_head: usize) -> Option<&'a [u64]> {
        self.heads.get(kv_head).map(|h| h.planner().last_evicted())
    }

    /// Each head's evicted positions, in head order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a [u64]> + 'a {
        self.heads.iter().map(|h| h.planner().last_evicted())
    }

    /// Evicted positions over all heads.
    #[must_use]
    pub fn total(&self) -> usize {
        self.iter().map(<[u64]>::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{H2O, H2OCache};

    #[test]
    fn an_impossible_layer_is_an_error_not_an_abort() {
        // 2^20 KV heads of 5 slots × 65,536 dims: about 2.7 TB of keys and values.
        let p = H2O::new(2, 2).unwrap();
        let err = LayerCache::<f32, _>::new(1 << 20, 1 << 20, 1 << 16, p).unwrap_err();
        assert!(matches!(err, Error::AllocationFailed { .. }), "{err:?}");
    }

    #[test]
    fn head_counts_are_validated() {
        let p = H2O::new(2, 2).unwrap();
        for (h, kv) in [(0, 1), (4, 0), (6, 4)] {
            assert_eq!(
                LayerCache::<f32, _>::new(h, kv, 4, p).unwrap_err(),
                Error::InvalidHeadCounts { n_heads: h, n_kv_heads: kv }
            );
        }
    }

    #[test]
    fn a_group_scores_the_sum_of_its_query_heads() {
        // Two query heads on one KV head equal one head whose score table is
        // the sum of the two per-head tables.
        let d = 2;
        let mut layer = LayerCache::<f64, _>::new(2, 1, d, H2O::new(8, 8).unwrap()).unwrap();
        let mut a = H2OCache::<f64>::new(d, 8, 8).unwrap();
        let mut b = H2OCache::<f64>::new(d, 8, 8).unwrap();
        for t in 0..6 {
            let x = t as f64;
            let (qa, qb, k, v) = ([x, 1.0], [1.0, -x], [0.5 * x, 1.0], [x, x]);
            let q = [qa, qb].concat();
            let out = layer.step(&q, &k, &v).unwrap().to_vec();
            let oa = a.step(&qa, &k, &v).unwrap().to_vec();
            let ob = b.step(&qb, &k, &v).unwrap().to_vec();
            assert_eq!(out, [oa, ob].concat());
        }
        let head = layer.head(0).unwrap();
        for ((t, ta), tb) in head.tokens().zip(a.tokens()).zip(b.tokens()) {
            assert!((t.score - (ta.score + tb.score)).abs() < 1e-12);
        }
    }

    #[test]
    fn evict_reports_each_head() {
        // Two KV heads whose keys favour different tokens keep different ones.
        let mut layer = LayerCache::<f64, _>::new(2, 2, 1, H2O::new(1, 1).unwrap()).unwrap();
        for t in 0..3 {
            let k = if t == 0 { [3.0, -3.0] } else { [0.0, 0.0] };
            layer.insert(&k, &[0.0, 0.0]).unwrap();
            layer.attend(&[1.0, 1.0]).unwrap();
            let evicted = layer.evict();
            assert_eq!(evicted.len(), 2);
            if t == 2 {
                // Head 0 keeps token 0 (its heavy hitter) and evicts 1; head 1
                // gave token 0 the least weight and evicts it.
                assert_eq!(evicted.head(0), Some(&[1u64][..]));
                assert_eq!(evicted.head(1), Some(&[0u64][..]));
                assert_eq!(evicted.total(), 2);
            } else {
                assert_eq!(evicted.total(), 0);
            }
        }
        assert_eq!(layer.last_evicted().iter().collect::<Vec<_>>(), [&[1u64][..], &[0u64][..]]);
        assert_eq!(layer.heads()[0].resident_positions(), [0, 2]);
        assert_eq!(layer.heads()[1].resident_positions(), [1, 2]);
    }

    #[test]
    fn a_failed_step_changes_no_head() {
        let mut layer = LayerCache::<f32, _>::new(2, 2, 2, H2O::new(1, 1).unwrap()).unwrap();
        layer.step(&[1.0; 4], &[1.0; 4], &[1.0; 4]).unwrap();
        let before = format!(
            "{:?}",
            layer.heads().iter().map(|h| h.resident_positions()).collect::<Vec<_>>()
        );
        // Head 1's key is infinite: nothing may change in head 0 either.
        let err = layer.step(&[1.0; 4], &[1.0, 1.0, f32::INFINITY, 1.0], &[1.0; 4]).unwrap_err();
        assert!(matches!(err, Error::NonFinite { what: "key", index: 2, .. }));
        let after = format!(
            "{:?}",
            layer.heads().iter().map(|h| h.resident_positions()).collect::<Vec<_>>()
        );
        assert_eq!(before, after);
        assert_eq!(layer.next_position(), 1);
    }
}
