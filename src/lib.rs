//! Bounded-memory KV caches for LLM decoding, with H2O eviction.
//!
//! See the README for the tour; this is filled in below.

mod cache;
mod element;
mod error;
pub mod kernels;
mod kv_cache;
mod layer;
pub mod policy;
mod prefill;
mod store;

pub use cache::{AttentionEntry, Cache, MAX_HEAD_DIM};
pub use element::{Accumulator, Element};
pub use error::{Error, Result};
pub use kv_cache::{KvCache, Token, Tokens};
pub use layer::LayerCache;
pub use policy::{
    AnyPolicy, Candidate, EvictionPolicy, Full, FullCache, H2O, H2OCache, Heavy, HeavyOnly,
    MAX_BUDGET, Recent, RecentOnly, TieRule,
};
