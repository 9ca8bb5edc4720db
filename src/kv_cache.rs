//! The `KvCache` trait: the decode-loop interface every policy implements.

use core::fmt::Debug;

use crate::element::Element;
use crate::error::Result;
use crate::order::StepOrder;
use crate::planner::Tokens;

/// A single-head KV cache with a fixed memory budget.
///
/// Object-safe: a harness can hold `Box<dyn KvCache<f32>>` and loop over
/// policies. Every implementation in this crate is a
/// [`Cache`](crate::Cache) with any of the eight policies.
///
/// # Step orders
/// [`step`](Self::step) is the default order (what the H2O authors'
/// real-drop code does): [`insert`](Self::insert) the new key and value,
/// [`attend`](Self::attend) with the new query over every resident token
/// including the new one, then [`evict`](Self::evict) down to the budget.
/// [`step_with`](Self::step_with) takes a [`StepOrder`]: attend-insert-evict
/// (paper Algorithm 1: the query sees only earlier tokens) or
/// evict-insert-attend (attention over exactly the budget, for models
/// trained with a sliding window). `docs/semantics.md §2` has the table.
///
/// # Invariants (`docs/semantics.md §4`, §10)
/// 1. `len() <= budget()` after every call that evicts; `insert` alone can
///    take an evicting cache one token over its budget, never more.
/// 2. The newest `recent_window` tokens (policy-defined) are never evicted.
/// 3. Positions are absolute token indices assigned in insertion order from 0;
///    an evicted position never comes back.
/// 4. Any `Err` leaves the cache exactly as it was before the call.
/// 5. [`reset`](Self::reset) restores the state right after construction.
///
/// # Example
/// ```
/// use h2o_kv::{H2OCache, KvCache};
///
/// // One head of dimension 4; keep 2 heavy hitters + the 2 newest tokens.
/// let mut cache = H2OCache::<f32>::new(4, 2, 2)?;
/// for t in 0..10 {
///     let x = t as f32;
///     let (q, k, v) = ([1.0, 0.0, x, 0.5], [0.5, x, 0.0, 1.0], [x; 4]);
///     let out = cache.step(&q, &k, &v)?; // [head_dim] attention output
///     assert_eq!(out.len(), 4);
///     assert!(cache.len() <= 4);
/// }
/// let kept = cache.resident_positions();
/// assert_eq!(kept.len(), 4);
/// assert!(kept.ends_with(&[8, 9])); // the recent window
/// # Ok::<(), h2o_kv::Error>(())
/// ```
pub trait KvCache<T: Element>: Debug + Send {
    /// Elements per key, value, query and output vector.
    fn head_dim(&self) -> usize;

    /// Tokens kept after each eviction; for [`FullCache`](crate::FullCache)
    /// its capacity.
    fn budget(&self) -> usize;

    /// Tokens the store can hold at once: `budget + 1` for evicting policies
    /// (room for the inserted token before eviction), `budget` for a full cache.
    fn capacity(&self) -> usize;

    /// Resident tokens.
    fn len(&self) -> usize;

    /// Whether no token is resident.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The position the next inserted token will get (tokens inserted so
    /// far, including evicted ones). Apply RoPE at this position before
    /// inserting its key (`docs/semantics.md §7`: positions are absolute, so
    /// decoding past a model's trained context with an evicting policy
    /// reaches positions it was never trained on).
    fn next_position(&self) -> u64;

    /// The policy's short name (`"full"`, `"recent"`, `"heavy"`, `"h2o"`).
    fn policy_name(&self) -> &'static str;

    /// Stores one token's key and value (`[head_dim]` each) in a free slot and
    /// returns its position. Never evicts and attends to nothing.
    ///
    /// # Errors
    /// - [`Error::LengthMismatch`](crate::Error::LengthMismatch) if a slice is
    ///   not `head_dim` long;
    /// - [`Error::NonFinite`](crate::Error::NonFinite) if an element is NaN or infinite;
    /// - [`Error::CapacityExceeded`](crate::Error::CapacityExceeded) if the
    ///   store is full (a full cache at capacity, or an evicting cache already
    ///   one over budget: call [`evict`](Self::evict) first).
    fn insert(&mut self, key: &[T], value: &[T]) -> Result<u64>;

    /// Attends with `query` (`[head_dim]`) over the resident tokens, adds each
    /// token's softmax weight to its accumulated score and returns the output
    /// `[head_dim]`, borrowed from the cache: copy it out (`to_vec`,
    /// `copy_from_slice`) before the next call. Does not evict.
    ///
    /// The logits are `scale · q·k` (scale `1/√head_dim` unless set with
    /// [`Cache::with_scale`](crate::Cache::with_scale)); the softmax subtracts
    /// the maximum first. An empty cache attends to nothing and returns zeros.
    ///
    /// # Errors
    /// [`LengthMismatch`](crate::Error::LengthMismatch),
    /// [`NonFinite`](crate::Error::NonFinite), or
    /// [`AttentionOverflow`](crate::Error::AttentionOverflow) when finite but
    /// huge inputs overflow a logit or an output.
    fn attend(&mut self, query: &[T]) -> Result<&[T]>;

    /// Evicts down to the budget (at most one token after a single insert)
    /// and returns the evicted positions, ascending. A no-op for a cache within
    /// budget or a full cache.
    ///
    /// # Complexity
    /// One scan over the eviction candidates per evicted token: O(budget).
    /// A [`prefill`](Self::prefill) evicts all its excess at once, with one
    /// sort by the same order.
    fn evict(&mut self) -> &[u64];

    /// One decode step in the default order: insert → attend → evict
    /// ([`StepOrder::InsertAttendEvict`]). Returns the attention output
    /// `[head_dim]`, computed before the eviction (an evicted token still
    /// contributes to this step).
    ///
    /// # Errors
    /// As [`insert`](Self::insert) and [`attend`](Self::attend); checked
    /// before anything changes.
    fn step(&mut self, query: &[T], key: &[T], value: &[T]) -> Result<&[T]>;

    /// One decode step in `order` (see [`StepOrder`]); `step_with(StepOrder::default(), …)`
    /// is [`step`](Self::step). Returns the attention output `[head_dim]`.
    ///
    /// # Errors
    /// As [`step`](Self::step), checked before anything changes. In
    /// evict-insert-attend order too: the eviction is planned, the attention
    /// computed, and only then is anything evicted.
    fn step_with(&mut self, order: StepOrder, query: &[T], key: &[T], value: &[T]) -> Result<&[T]>;

    /// Prefill of `P` prompt tokens as one call: causal attention (row `i`
    /// sees every resident token and prompt tokens `0..=i`), each token's score
    /// gains its column sum, outputs are written to `out`, then the cache
    /// evicts once down to the budget (keeping the `recent` newest and the
    /// highest-scoring others; `docs/semantics.md §3`; a decode step's
    /// eviction is [`evict`](Self::evict)).
    ///
    /// Prompt row `i` becomes the token at position `next_position() + i`
    /// (read before the call): apply RoPE to its query and key there.
    ///
    /// Shapes: `queries`, `keys`, `values` and `out` are `[P × head_dim]`,
    /// row-major, one row per prompt token. `P = 0` is a no-op.
    ///
    /// Allocates O(P · (len + P)) scratch for the call (decode steps allocate
    /// nothing).
    ///
    /// # Errors
    /// [`RaggedRows`](crate::Error::RaggedRows) if `keys` is not a whole number
    /// of rows; [`LengthMismatch`](crate::Error::LengthMismatch) if the other
    /// slices are not `[P × head_dim]`;
    /// [`NonFinite`](crate::Error::NonFinite);
    /// [`CapacityExceeded`](crate::Error::CapacityExceeded) if a full cache
    /// cannot take `P` more tokens;
    /// [`AttentionOverflow`](crate::Error::AttentionOverflow).
    fn prefill(&mut self, queries: &[T], keys: &[T], values: &[T], out: &mut [T]) -> Result<()>;

    /// The resident tokens with their accumulated scores, in slot order
    /// (not position order).
    fn tokens(&self) -> Tokens<'_>;

    /// Positions evicted by the last call (`evict`, `step`, `step_with` or
    /// `prefill`), ascending; empty after any other call.
    fn last_evicted(&self) -> &[u64];

    /// Forgets every token and score and restarts positions at 0, keeping the
    /// allocation. Afterwards the cache behaves exactly as a new one.
    fn reset(&mut self);

    /// Bytes of key and value data held by the resident tokens:
    /// `len · 2 · head_dim · size_of::<T>()`.
    fn kv_bytes(&self) -> usize {
        self.len() * 2 * self.head_dim() * size_of::<T>()
    }

    /// Resident positions, ascending. Allocates the returned `Vec`; use
    /// [`tokens`](Self::tokens) in a hot loop.
    fn resident_positions(&self) -> Vec<u64> {
        let mut p: Vec<u64> = self.tokens().map(|t| t.position).collect();
        p.sort_unstable();
        p
    }

    /// The accumulated score of the token at `position`, if it is resident.
    fn score_of(&self, position: u64) -> Option<f64> {
        self.tokens().find(|t| t.position == position).map(|t| t.score)
    }
}

impl<T: Element, C: KvCache<T> + ?Sized> KvCache<T> for Box<C> {
    fn head_dim(&self) -> usize {
        (**self).head_dim()
    }
    fn budget(&self) -> usize {
        (**self).budget()
    }
    fn capacity(&self) -> usize {
        (**self).capacity()
    }
    fn len(&self) -> usize {
        (**self).len()
    }
    fn next_position(&self) -> u64 {
        (**self).next_position()
    }
    fn policy_name(&self) -> &'static str {
        (**self).policy_name()
    }
    fn insert(&mut self, key: &[T], value: &[T]) -> Result<u64> {
        (**self).insert(key, value)
    }
    fn attend(&mut self, query: &[T]) -> Result<&[T]> {
        (**self).attend(query)
    }
    fn evict(&mut self) -> &[u64] {
        (**self).evict()
    }
    fn step(&mut self, query: &[T], key: &[T], value: &[T]) -> Result<&[T]> {
        (**self).step(query, key, value)
    }
    fn step_with(&mut self, order: StepOrder, query: &[T], key: &[T], value: &[T]) -> Result<&[T]> {
        (**self).step_with(order, query, key, value)
    }
    fn prefill(&mut self, queries: &[T], keys: &[T], values: &[T], out: &mut [T]) -> Result<()> {
        (**self).prefill(queries, keys, values, out)
    }
    fn tokens(&self) -> Tokens<'_> {
        (**self).tokens()
    }
    fn last_evicted(&self) -> &[u64] {
        (**self).last_evicted()
    }
    fn reset(&mut self) {
        (**self).reset()
    }
}
