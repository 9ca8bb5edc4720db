//! Bounded-memory KV caches for LLM decoding, with H2O (Heavy-Hitter Oracle)
//! eviction.
//!
//! A cache holds one attention head's keys and values in a fixed slot store,
//! allocated once. Each decode step attends, adds every token's softmax weight
//! to its accumulated score, and evicts down to the budget. Eviction frees a
//! slot and the next token is written into it: nothing is shifted, nothing is
//! allocated per step.
//!
//! # Overview
//! One head, one policy (each alias is [`Cache<T, P>`](Cache) with policy `P`):
//! - [`FullCache`]: keeps every token up to a capacity (the quality baseline).
//! - [`RecentOnly`]: a sliding window; evicts the oldest token.
//! - [`HeavyOnly`]: the newest token + the `budget − 1` highest accumulated
//!   scores; evicts the lowest score.
//! - [`H2OCache`]: the newest `recent` tokens + the `heavy` highest scores
//!   (Zhang et al., NeurIPS 2023, arXiv:2306.14048); evicts the lowest score
//!   outside the recent window.
//! - [`SinkWindowCache`]: the first tokens (attention sinks) + a sliding window
//!   (StreamingLLM, arXiv:2309.17453).
//! - [`H2OSinksCache`]: H2O with the first positions pinned.
//! - [`TovaCache`]: evicts the token the current query attends to least
//!   (TOVA, arXiv:2401.06104).
//! - [`MeanScoreCache`]: H2O ranked by mean instead of summed attention.
//! - [`AnyPolicy`]: any of the eight, chosen at run time
//!   (`Cache::<f32, AnyPolicy>::with_policy(head_dim, H2O::new(64, 64)?.into())`,
//!   or [`PolicyKind::with_budget`]).
//!
//! Layers, models and engines:
//! - [`LayerCache`]: a whole layer, multi-head or grouped-query (GQA), one
//!   policy for every KV head or one per head (Ada-KV budgets).
//! - [`ModelCache`]: every layer of one sequence with one position counter;
//!   fork, beam reorder, truncate (speculative decoding), per-layer budgets
//!   ([`compress::LayerSchedule`], PyramidKV).
//! - [`KvCache`]: the object-safe trait every single-head cache implements;
//!   [`StepOrder`] picks one of the three step orders (`docs/semantics.md §2`).
//! - Prefill: `prefill` (column-sum scores), `prefill_snapkv` (SnapKV,
//!   arXiv:2404.14469) and `prefill_from` (one prefill shared by many
//!   policies) on every cache type.
//! - [`Planner`]: the eviction decisions alone (slots, positions, scores,
//!   policy) for engines that keep K/V elsewhere and run their own attention.
//! - [`compress`]: SnapKV selection, PyramidKV schedules and Ada-KV splits as
//!   pure functions, for engines with their own attention.
//!
//! # How this differs from candle's KV caches
//! candle-nn's `KvCache` and `RotatingKvCache` (and mistral.rs's caches)
//! *store*: they append key/value tensors and hand them back, and the model
//! runs whatever attention kernel it likes. A score-based policy needs the
//! softmax weights, so h2o-kv's caches *own* the attention: [`Cache`] and
//! [`LayerCache`] compute it with the crate's kernels and update the scores
//! in the same call. The [`Planner`] is the other way round: it owns neither
//! rows nor attention, only the decisions; the caller writes row
//! [`Staged::slot`] of its own buffers, runs its own (flash, GPU) attention
//! and hands the weights back with [`Planner::add_weights`].
//!
//! # Where things live
//! | module | what |
//! |---|---|
//! | `planner` | [`Planner`]: slot table, positions, f64 scores, per-token statistics, policy; no K/V rows (`docs/semantics.md §9`) |
//! | `cache` | [`Cache`] = planner + K/V rows + kernels: the decode phases, the three step orders, prefill, the shared softmax, the eight aliases |
//! | `layer` | [`LayerCache`]: one cache per KV head, GQA grouping, all heads checked before any changes |
//! | `model` | [`ModelCache`]: every layer of one sequence, the turn rule, fork ([`ModelCache::copy_from`]) and [`ModelCache::truncate`] |
//! | `beams` | [`ModelCache::reorder`] and its [`BeamScratch`]: beam-search reorders without allocating |
//! | [`policy`] | the policies: leaves that compare [`Candidate`]s, knowing nothing of caches |
//! | [`kernels`] | attention arithmetic over slices: public API, scalar, f16/bf16 widening, SIMD |
//! | `arch` | run-time CPU detection for SIMD (a leaf both kernels and element types use) |
//! | `element` | [`Element`] and [`Accumulator`]: the stored and the computed float types |
//! | [`compress`] | SnapKV selection, PyramidKV layer schedules, Ada-KV head budgets (pure functions) |
//! | `order` | [`StepOrder`] |
//! | `kv_cache` | the [`KvCache`] trait |
//! | [`snapshot`] | the byte format of [`Cache::snapshot`] and [`LayerCache::snapshot`] |
//! | `trace` | [`Trace`]: an opt-in record of kept and evicted positions and scores, step by step, and its SVG eviction map |
//! | `error` | [`Error`] |
//!
//! # Example: a decode step
//! ```
//! use h2o_kv::{H2OCache, KvCache};
//!
//! let mut cache = H2OCache::<f32>::new(2, 1, 1)?; // head_dim 2, 1 heavy + 1 recent
//! let out = cache.step(&[1.0, 0.0], &[1.0, 0.0], &[0.5, 0.5])?; // q, k, v: [head_dim]
//! assert_eq!(out, &[0.5, 0.5]); // one token: all weight on it
//! for _ in 0..4 {
//!     cache.step(&[1.0, 0.0], &[0.0, 1.0], &[0.0, 0.0])?;
//! }
//! // Token 0 drew the most attention: it stays as the heavy hitter.
//! assert_eq!(cache.resident_positions(), [0, 4]);
//! # Ok::<(), h2o_kv::Error>(())
//! ```
//!
//! # Example: choosing the policy at run time
//! ```
//! use h2o_kv::{FullCache, H2OCache, KvCache, RecentOnly};
//!
//! let mut caches: Vec<Box<dyn KvCache<f64>>> = vec![
//!     Box::new(FullCache::new(4, 100)?),
//!     Box::new(RecentOnly::new(4, 8)?),
//!     Box::new(H2OCache::new(4, 4, 4)?),
//! ];
//! for t in 0..50 {
//!     let x = [t as f64 * 0.01; 4];
//!     for c in &mut caches {
//!         c.step(&x, &x, &x)?;
//!     }
//! }
//! assert_eq!(caches.iter().map(|c| c.len()).collect::<Vec<_>>(), [50, 8, 8]);
//! # Ok::<(), h2o_kv::Error>(())
//! ```
//!
//! # Choosing a policy
//! `FullCache` costs memory linear in the sequence. The bounded policies trade
//! quality for memory differently on different models, and the differences are
//! large, so measure on your model. What we measured (README, "Which policy
//! when"): on SmolLM2-135M over 2048-token windows of long text, H2O (and
//! H2O with sinks, mean score) stay close to the full cache at 20–40% budgets
//! where a sliding window loses badly, because the window drops the attention
//! sinks; on the tiny stories260K model the sliding window beats H2O. For
//! retrieval of a fact buried in a long prompt (passkey retrieval), H2O with
//! column-sum prefill scores fails at 20% unless the fact is in the recent
//! window, while SnapKV prefill selection (53 of 75 prompts at 20%; 29 of 30
//! at 2048 tokens) and TOVA (49 of 75) find it at every depth. `HeavyOnly`
//! is the paper's ablation.
//!
//! # Numeric types
//! | `T` | stored | computed in |
//! |---|---|---|
//! | `f32` | f32 | f32 |
//! | `f64` | f64 | f64 |
//! | `half::f16`, `half::bf16` (feature `half`) | 16 bit | f32 |
//!
//! Accumulated scores are `f64` for every `T` (see [`Cache`]).
//!
//! # Crate features
//! - `simd` (default): f32, f16 and bf16 kernels for AVX2 + FMA, picked at run
//!   time through `pulp` (no `unsafe` in this crate); without it, or on a CPU
//!   without AVX2 + FMA, the portable scalar kernels run.
//!   [`kernels::simd_isa`] tells which.
//! - `half`: [`Element`] impls for `half::f16` and `half::bf16`.
//! - `avx512` (off; needs Rust 1.89): the one-pass attention kernel (the
//!   prefill's, and [`kernels::attention_one_pass`]) in 16-lane AVX-512 where
//!   the CPU has it and `head_dim` is a multiple of 16
//!   ([`kernels::one_pass_isa`] tells which runs). Decode steps use the
//!   two-pass kernels, which measured faster.
//! - `rayon` (off): a [`LayerCache`] step runs its KV heads in parallel on the
//!   current rayon pool; the results are bit-identical to the serial loop. The
//!   crate allocates nothing per step; rayon's scheduler may, rarely.

#![doc(test(attr(deny(warnings))))]

#[cfg(feature = "simd")]
mod arch;
mod beams;
mod cache;
pub mod compress;
mod element;
mod error;
mod head_budgets;
pub mod kernels;
mod kv_cache;
mod layer;
mod model;
mod order;
mod planner;
pub mod policy;
pub mod snapshot;
mod trace;

pub use beams::BeamScratch;
pub use cache::{
    AttentionEntry, Cache, FullCache, H2OCache, H2OSinksCache, HeavyOnly, MAX_HEAD_DIM,
    MeanScoreCache, RecentOnly, SinkWindowCache, TovaCache,
};
pub use compress::{AdaKv, LayerSchedule, SnapKv};
pub use element::{Accumulator, Element};
pub use error::{Error, Result, SnapshotError};
pub use kv_cache::KvCache;
pub use layer::{EvictedByHead, LayerCache};
pub use model::ModelCache;
pub use order::{StepOrder, UnknownName};
pub use planner::{Evicted, Planner, PrefillStats, Staged, Token, Tokens};
#[doc(inline)]
pub use policy::{
    AnyPolicy, Candidate, EvictionPolicy, Full, H2O, H2OSinks, Heavy, MAX_BUDGET, MeanScore,
    PolicyKind, Recent, SinkWindow, TieRule, Tova,
};
pub use snapshot::{SNAPSHOT_VERSION, SnapshotElement, SnapshotPolicy};
pub use trace::{Trace, TraceStep};

/// The README's code blocks, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
