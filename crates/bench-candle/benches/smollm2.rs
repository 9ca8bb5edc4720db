//! SmolLM2-135M decode steps: h2o-kv's Llama (full cache, H2O at 20%) against
//! candle-transformers' quantized Llama on the same GGUF file and thread pool.
//!
//! ```text
//! cargo bench -p h2o-kv-bench-candle --bench smollm2                 # criterion + ratio lines
//! cargo bench -p h2o-kv-bench-candle --bench smollm2 -- ratios       # only the ratio lines
//! H2O_KV_BENCH_CONTEXTS=512,2048,8192 cargo bench -p h2o-kv-bench-candle --bench smollm2
//! ```
//!
//! One iteration is one decode step (one token through all 30 layers and the
//! output head) after a prompt of `context` tokens; every timed batch starts
//! from a clone of the prefilled state (the clone is not timed), so the
//! context stays at `context` to `context + batch`. The prompt is the Alice
//! text, tokenized (any text gives the same speed). Ratio lines:
//! `full / candle-transformers` (goal ≤ 1.0) and `h2o 20% / full` (goal ≤
//! 0.5 at 8192). candle-transformers precomputes RoPE for 4096 positions, so
//! it is skipped at longer contexts. Without the model file the bench prints
//! "skipped" and exits.

#[path = "../../../benches/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};
use criterion::BatchSize;
use h2o_kv::{Full, H2O};
use h2o_kv_candle::llama::{self, Llama, LlamaCache};
use h2o_kv_candle::locate::{SMOLLM2_FILE, SMOLLM2_HINT, find_data, find_model};

use common::ratio::{interleaved, report};
use common::{quick, selected};

/// The decode engines compared, each at one context.
struct Engines {
    context: usize,
    first: u32,
    ours: Llama,
    full: LlamaCache,
    h2o: LlamaCache,
    peer: Option<ModelWeights>,
}

impl Engines {
    /// Steps `iters` tokens from a clone of the prefilled full cache.
    fn ours(&self, cache: &LlamaCache, iters: u64) -> Duration {
        let mut cache = cache.clone();
        let mut next = self.first;
        let start = Instant::now();
        for _ in 0..iters {
            let logits = self.ours.forward(&mut cache, &[next]).unwrap();
            next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        }
        black_box(next);
        start.elapsed()
    }

    /// Steps `iters` tokens of candle-transformers' model from a clone of
    /// its prefilled state (the clone shares the weights and K/V tensors).
    fn peer(&self, iters: u64) -> Option<Duration> {
        let mut p = self.peer.clone()?;
        let mut next = self.first;
        let start = Instant::now();
        for s in 0..iters as usize {
            let x = Tensor::new(&[[next]], &Device::Cpu).unwrap();
            let logits = p.forward(&x, self.context + s).unwrap();
            next = logits.squeeze(0).unwrap().argmax(0).unwrap().to_scalar::<u32>().unwrap();
        }
        black_box(next);
        Some(start.elapsed())
    }
}

fn contexts() -> Vec<usize> {
    if let Ok(s) = std::env::var("H2O_KV_BENCH_CONTEXTS") {
        return s.split(',').filter_map(|x| x.trim().parse().ok()).collect();
    }
    if quick() { vec![512] } else { vec![512, 2048] }
}

fn setup(context: usize) -> Option<Engines> {
    let path = match find_model(None, SMOLLM2_FILE, SMOLLM2_HINT) {
        Ok(p) => p,
        Err(e) => {
            println!("skipped: {e}");
            return None;
        }
    };
    let (model, tok) = llama::load(&path).unwrap();
    let text = find_data(None, "books/alice29.txt", "alice29.txt").unwrap();
    let mut ids = tok.encode(&std::fs::read_to_string(text).unwrap()).unwrap();
    while ids.len() < context {
        ids.extend_from_within(..);
    }
    let prompt = &ids[..context];
    let c = model.config().clone();
    let budget = (context / 5).max(2);
    let mut caches = vec![
        LlamaCache::new(&c, Full::new(context + 4096).unwrap().into()).unwrap(),
        LlamaCache::new(&c, H2O::with_heavy_fraction(budget, 0.5).unwrap().into()).unwrap(),
    ];
    // One f32 prefill fills both caches (its activations do not depend on the policy).
    let logits = model.dequantized().unwrap().prefill_shared(&mut caches, prompt).unwrap();
    let first = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
    let peer = (context + 64 < MAX_SEQ_LEN).then(|| {
        let (ct, mut r) = llama::open_gguf(&path).unwrap();
        let mut p = ModelWeights::from_gguf(ct, &mut r, &Device::Cpu).unwrap();
        p.forward(&Tensor::new(prompt, &Device::Cpu).unwrap().unsqueeze(0).unwrap(), 0).unwrap();
        p
    });
    let h2o = caches.pop().unwrap();
    let full = caches.pop().unwrap();
    Some(Engines { context, first, ours: model, full, h2o, peer })
}

fn main() {
    let mut c = common::criterion();
    for context in contexts() {
        let Some(e) = setup(context) else { return };
        if selected("smollm2_decode") {
            let mut g = c.benchmark_group(format!("smollm2_decode/{context}"));
            g.bench_function("h2o-kv full", |b| {
                b.iter_batched(
                    || e.full.clone(),
                    |mut cache| e.ours.forward(&mut cache, &[e.first]).unwrap(),
                    BatchSize::PerIteration,
                )
            });
            g.bench_function("h2o-kv h2o 20%", |b| {
                b.iter_batched(
                    || e.h2o.clone(),
                    |mut cache| e.ours.forward(&mut cache, &[e.first]).unwrap(),
                    BatchSize::PerIteration,
                )
            });
            if e.peer.is_some() {
                g.bench_function("candle-transformers", |b| b.iter_custom(|n| e.peer(n).unwrap()));
            }
            g.finish();
        }
        if selected("ratios") {
            if e.peer.is_some() {
                let r = interleaved(|n| e.ours(&e.full, n), |n| e.peer(n).unwrap());
                report(
                    &format!("smollm2 {context} full / candle-transformers"),
                    &r,
                    "<= 1.0",
                    r.median <= 1.0,
                );
            } else {
                println!(
                    "ratio smollm2 {context} full / candle-transformers: n/a (its RoPE table stops at {MAX_SEQ_LEN})"
                );
            }
            let r = interleaved(|n| e.ours(&e.h2o, n), |n| e.ours(&e.full, n));
            report(
                &format!("smollm2 {context} h2o 20% / full"),
                &r,
                "<= 0.5 at 8192",
                r.median <= 0.5,
            );
        }
    }
    c.final_summary();
}
