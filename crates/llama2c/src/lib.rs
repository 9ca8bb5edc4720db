//! A trained llama2.c model (Karpathy's stories260K) decoding through h2o-kv's
//! bounded caches, and a measurement of what each policy costs in quality.
//!
//! The model: 5 layers, 8 query heads sharing 4 KV heads of dimension 8, a
//! 512-token context and a 512-token vocabulary. The decoder keeps one
//! [`h2o_kv::ModelCache`] (a [`h2o_kv::LayerCache`] per layer, fed in turn)
//! under the chosen policy; RoPE is applied to queries and keys at the
//! absolute position before the key is cached.
//!
//! This crate is a runner, not a library to depend on (it is not published):
//! the `llama2c` binary (`cargo run --release -p llama2c -- --help`), its
//! tests and the decode bench share these modules.
//!
//! | module | what it holds |
//! |---|---|
//! | [`model`] | the version-0 llama2.c checkpoint and its configuration |
//! | [`tokenizer`] | llama2.c's BPE tokenizer (`tok512.bin`) |
//! | [`forward`] | the forward pass, one token per call, and its K/V store |
//! | [`generate`] | sampling and `run.c`'s generation loop |
//! | [`eval`] | the teacher-forced comparison of policies and budgets |
//! | [`prompt_eval`] | prompt-then-continue: Ada-KV's per-head budgets against equal heads |
//! | [`policy`] | policy names and budgets in tokens |
//! | [`files`] | where the model, tokenizer and data files are looked up |
//! | [`error`] | the one error type |

pub mod error;
pub mod eval;
pub mod eviction_map;
pub mod files;
pub mod forward;
pub mod generate;
pub mod model;
pub mod policy;
pub mod prompt_eval;
pub mod tokenizer;
