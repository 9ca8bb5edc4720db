//! Session snapshots: a cache's whole state as bytes, and back.
//!
//! [`Cache::snapshot`] and [`LayerCache::snapshot`] write everything that
//! decides the cache's future behaviour; [`Cache::from_snapshot`] and
//! [`LayerCache::from_snapshot`] rebuild it so that every following call
//! returns bit-identical outputs and makes identical eviction decisions to a
//! cache that was never interrupted. A server can park an idle session, move
//! it to another process, or checkpoint it, without losing its heavy hitters.
//!
//! # What is saved
//! The policy (kind, budget split, tie rule), `head_dim`, the softmax scale,
//! the next position, the positions evicted by the last call, and the slot
//! layout exactly: which slots are free, occupied or in the recent window,
//! the free-slot stack in order, the high-water mark, the recent ring oldest
//! first, and for each occupied slot its position, accumulated score, key and
//! value. Slot order matters because attention sums over slots in slot order,
//! so a restored cache keeps every token in the slot it had.
//!
//! Each token's last attention weight and attention count
//! ([`Candidate::last_weight`](crate::Candidate::last_weight),
//! [`Candidate::attended`](crate::Candidate::attended)) are saved too (format
//! version 2): TOVA ranks by the first and mean score by the second, so a
//! restored cache under either decides exactly as the original. Version 1
//! snapshots (without them) are still read; both then restart at 0, which
//! changes nothing for the policies that rank by accumulated score or
//! position.
//!
//! Not saved: the rows of free slots (never read as tokens), the attention
//! scratch, and so [`Cache::last_attention`], which is empty after a restore
//! until the next attention.
//!
//! # Format (version 2)
//! All integers little-endian; floats as their IEEE-754 bits.
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `H2OKVSNP` |
//! | 2 | format version, u16 ([`SNAPSHOT_VERSION`]) |
//! | 1 | kind: 1 single-head cache, 2 layer |
//! | 1 | element type: 1 f32, 2 f64, 3 f16, 4 bf16 |
//! | 8 | payload length in bytes, u64 |
//! | payload | a head (below); for a layer: `n_heads`, `n_kv_heads` (u64 each), then each KV head in order |
//! | 8 | FNV-1a 64 checksum of every byte before it |
//!
//! A head: policy (tag u8: 0 full, 1 recent, 2 heavy, 3 h2o; two u64
//! parameters; tie rule u8), `head_dim` u64, scale f64, next position u64,
//! slots u64, high-water mark u64, one state byte per slot below the mark
//! (0 free, 1 candidate, 2 recent), then for each occupied slot in slot order
//! its position u64, score f64, key and value (`head_dim` elements each);
//! then (version 2 only) for each occupied slot in slot order its last
//! weight f64 and attention count u64; then three counted u64 lists: the
//! free stack bottom first, the recent ring oldest first, and the last
//! evicted positions. Version 1 is the same without the last weights and
//! counts.
//!
//! # Errors, never panics
//! Reading checks, in order: length, magic, version, checksum, kind, element
//! type, then every field (policy and `head_dim` accepted by the
//! constructors, a slot layout the cache could have reached, finite keys,
//! values and scores). Any failure is an `Err` and no cache is built. FNV-1a
//! detects every change confined to one byte; longer corruption is caught
//! with probability 1 − 2⁻⁶⁴, and the field checks catch the rest of what an
//! impossible cache would need.

mod cache;
mod codec;
mod element;
mod head;
mod layer;
mod model;
mod policy;

pub use element::SnapshotElement;
pub use policy::SnapshotPolicy;

#[cfg(doc)]
use crate::{Cache, LayerCache};

/// The snapshot format version this build writes and reads.
/// Version 2 added each token's last weight and attention count; version 1
/// snapshots are still read (both restart at 0).
pub const SNAPSHOT_VERSION: u16 = 2;

mod sealed {
    /// Keeps [`SnapshotElement`](super::SnapshotElement) and
    /// [`SnapshotPolicy`](super::SnapshotPolicy) to the crate's own types, so
    /// type tags stay unique.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    #[cfg(feature = "half")]
    impl Sealed for half::f16 {}
    #[cfg(feature = "half")]
    impl Sealed for half::bf16 {}
    impl Sealed for crate::Full {}
    impl Sealed for crate::Recent {}
    impl Sealed for crate::Heavy {}
    impl Sealed for crate::H2O {}
    impl Sealed for crate::SinkWindow {}
    impl Sealed for crate::H2OSinks {}
    impl Sealed for crate::Tova {}
    impl Sealed for crate::MeanScore {}
    impl Sealed for crate::AnyPolicy {}
}
