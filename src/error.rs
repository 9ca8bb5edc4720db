//! The crate's one error type.

/// Everything that can go wrong when building or driving a cache.
///
/// Every fallible call validates its input before it touches the cache, so an
/// `Err` always leaves the cache exactly as it was before the call
/// (`docs/semantics.md §10`).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A slice argument has the wrong number of elements.
    #[error("{what} has {got} elements, expected {expected}")]
    LengthMismatch {
        /// Which argument (`"query"`, `"key"`, `"value"`, `"out"`, ...).
        what: &'static str,
        /// Elements the call needs.
        expected: usize,
        /// Elements it was given.
        got: usize,
    },
    /// A slice of rows is not a whole number of rows: `head_dim` elements per
    /// row for a single head, `n_kv_heads · head_dim` for a layer.
    #[error("{what} has {len} elements, not a multiple of the row length {row_len}")]
    RaggedRows {
        /// Which argument.
        what: &'static str,
        /// Its length in elements.
        len: usize,
        /// The row length in elements it must be a multiple of.
        row_len: usize,
    },
    /// `head_dim` is zero.
    #[error("head_dim must be at least 1")]
    ZeroHeadDim,
    /// `head_dim` is larger than [`MAX_HEAD_DIM`](crate::MAX_HEAD_DIM).
    #[error("head_dim {head_dim} exceeds the supported maximum {max}")]
    HeadDimTooLarge {
        /// The requested head dimension.
        head_dim: usize,
        /// The largest supported head dimension.
        max: usize,
    },
    /// A budget or capacity of zero tokens.
    #[error("budget must be at least 1 token")]
    ZeroBudget,
    /// A budget larger than [`MAX_BUDGET`](crate::MAX_BUDGET) tokens.
    #[error("budget of {budget} tokens exceeds the supported maximum {max}")]
    BudgetTooLarge {
        /// The requested budget in tokens.
        budget: usize,
        /// The largest supported budget in tokens.
        max: usize,
    },
    /// A policy protects more recent tokens than its budget holds.
    #[error("recent window of {recent} tokens exceeds the budget of {budget} tokens")]
    InvalidSplit {
        /// The policy's budget in tokens.
        budget: usize,
        /// The policy's recent window in tokens.
        recent: usize,
    },
    /// A heavy fraction outside `[0, 1]` (or NaN).
    #[error("heavy fraction {fraction} is not within [0, 1]")]
    InvalidHeavyFraction {
        /// The fraction given.
        fraction: f64,
    },
    /// A softmax scale that is not finite and positive.
    #[error("softmax scale {scale} is not finite and positive")]
    InvalidScale {
        /// The scale given.
        scale: f64,
    },
    /// A query, key or value element is NaN or infinite.
    #[error("{what}[{index}] is not finite ({value})")]
    NonFinite {
        /// Which argument (`"query"`, `"key"`, `"value"`).
        what: &'static str,
        /// Index of the first offending element in the slice.
        index: usize,
        /// The offending value, widened to f64.
        value: f64,
    },
    /// The attention computation overflowed: a logit or an output element came
    /// out non-finite although every input was finite (inputs of huge magnitude).
    #[error("attention overflowed: {what} is not finite")]
    AttentionOverflow {
        /// `"logit"` or `"output"`.
        what: &'static str,
    },
    /// The cache cannot take the tokens: a [`FullCache`](crate::FullCache) at
    /// its capacity, or an evicting cache already one token over its budget
    /// (call [`evict`](crate::KvCache::evict) first).
    #[error(
        "cache holds {len} of at most {capacity} tokens and cannot take {requested} more \
         (a full cache is at capacity; an evicting cache holds budget + 1 and must evict first)"
    )]
    CapacityExceeded {
        /// Tokens resident now.
        len: usize,
        /// Tokens the cache can hold at once.
        capacity: usize,
        /// Tokens the call tried to add.
        requested: usize,
    },
    /// The cache's fixed buffers could not be allocated.
    #[error("could not allocate {bytes} bytes for the cache")]
    AllocationFailed {
        /// Bytes requested (saturated at `usize::MAX`).
        bytes: usize,
    },
    /// `n_heads` is zero or not a multiple of `n_kv_heads` (or `n_kv_heads` is zero).
    #[error("n_heads {n_heads} is not a positive multiple of n_kv_heads {n_kv_heads}")]
    InvalidHeadCounts {
        /// Query heads.
        n_heads: usize,
        /// Key/value heads.
        n_kv_heads: usize,
    },
    /// A [`Staged`](crate::Staged) slot handed to
    /// [`Planner::insert`](crate::Planner::insert) after the planner changed
    /// (another insert, an eviction or a reset since
    /// [`Planner::stage`](crate::Planner::stage)).
    #[error("the staged slot is stale: the planner changed since it was staged; stage again")]
    StaleStage,
    /// An attention weight handed to
    /// [`Planner::add_weights`](crate::Planner::add_weights) is negative or
    /// not finite (softmax weights lie in `[0, 1]`).
    #[error("attention weight {index} is {value}, expected a finite value >= 0")]
    InvalidWeight {
        /// Index into the weights.
        index: usize,
        /// The value, widened to f64.
        value: f64,
    },
    /// A snapshot could not be restored; what went wrong is in the
    /// [`SnapshotError`]. Nested so that a decode loop matching on [`Error`]
    /// sees only the decode-loop cases at the top level.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A configuration number outside its documented range (a SnapKV window
    /// of zero, an even pooling kernel, a safeguard fraction outside `[0, 1]`,
    /// a PyramidKV `beta` of zero, ...).
    #[error("{what} = {value} is invalid: {expected}")]
    InvalidParameter {
        /// Which parameter (`"snapkv window"`, `"pooling kernel"`, ...).
        what: &'static str,
        /// The value given, widened to f64.
        value: f64,
        /// The range it must lie in, in words.
        expected: &'static str,
    },
    /// A [`ModelCache`](crate::ModelCache) call on a layer whose turn it is
    /// not: every token goes through layer 0, then 1, and so on.
    #[error("layer {layer} cannot take tokens now: {reason}")]
    OutOfTurn {
        /// The layer called.
        layer: usize,
        /// Why not.
        reason: &'static str,
    },
    /// A budget too small to give every layer (or head) of a schedule at
    /// least its reserved tokens plus one.
    #[error("a total budget of {total} tokens cannot give {parts} parts {needed} tokens each")]
    BudgetTooSmall {
        /// The total budget in tokens.
        total: usize,
        /// Layers (or heads) it is split across.
        parts: usize,
        /// Tokens each part needs at least.
        needed: usize,
    },
    /// A `prefill_from` whose source or target does not qualify (see
    /// [`Planner::prefill_from`](crate::Planner::prefill_from)).
    #[error("cannot derive a prefill from this source: {reason}")]
    PrefillSource {
        /// Which condition failed.
        reason: &'static str,
    },
    /// Two caches that must have the same shape do not: a fork
    /// (`copy_from`) or a beam reorder between caches whose layers, heads,
    /// `head_dim`, softmax scale or policies differ.
    #[error("the caches differ in {what}; a copy needs the same shape")]
    ShapeMismatch {
        /// What differs (`"policy"`, `"head_dim"`, `"layers"`, ...).
        what: &'static str,
    },
    /// `truncate(n)` cannot drop the last `n` tokens.
    #[error("cannot truncate the last {n} tokens: {reason}")]
    CannotTruncate {
        /// Tokens asked to drop.
        n: usize,
        /// Why not.
        reason: &'static str,
    },
}

/// Why [`Cache::from_snapshot`](crate::Cache::from_snapshot) or
/// [`LayerCache::from_snapshot`](crate::LayerCache::from_snapshot) refused
/// the bytes; inside [`Error::Snapshot`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// A snapshot ends before its declared contents (cut off in transit or
    /// on disk).
    #[error("snapshot is truncated: {needed} bytes needed, {got} present")]
    Truncated {
        /// Bytes the snapshot needs up to the point where it ran out.
        needed: usize,
        /// Bytes it has.
        got: usize,
    },
    /// The bytes do not start with the snapshot magic: not a snapshot of this crate.
    #[error("not an h2o-kv snapshot (bad magic)")]
    Magic,
    /// A snapshot written in a format version this build cannot read.
    #[error("snapshot format version {found} is not supported (this build reads {supported})")]
    Version {
        /// The version in the snapshot.
        found: u16,
        /// The version this build reads and writes.
        supported: u16,
    },
    /// The snapshot's checksum does not match its contents (corrupted bytes).
    #[error("snapshot checksum {stored:#018x} does not match its contents ({computed:#018x})")]
    Checksum {
        /// Checksum stored in the snapshot.
        stored: u64,
        /// Checksum of the bytes actually present.
        computed: u64,
    },
    /// The snapshot holds another element type, another kind of cache
    /// (single head vs layer), or a policy the target type cannot hold.
    #[error("snapshot holds {found}, expected {expected}")]
    Mismatch {
        /// What the restoring call expected (`"f32"`, `"a layer cache"`,
        /// `"an h2o policy"`, ...).
        expected: &'static str,
        /// What the snapshot holds.
        found: &'static str,
    },
    /// The snapshot passed its checksum but describes an impossible cache
    /// (inconsistent slot layout, non-finite data, bad configuration).
    #[error("snapshot is invalid: {reason}")]
    Invalid {
        /// What is inconsistent.
        reason: &'static str,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_numbers() {
        let e = Error::LengthMismatch { what: "key", expected: 64, got: 63 };
        assert_eq!(e.to_string(), "key has 63 elements, expected 64");
        let e = Error::CapacityExceeded { len: 4, capacity: 4, requested: 1 };
        assert!(e.to_string().contains("4 of at most 4"));
    }
}
