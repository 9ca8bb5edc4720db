//! Beam search and speculative decoding on a whole-model cache of SmolLM2-135M's
//! shape (30 layers, 9 query heads on 3 KV heads of dimension 64), H2O with
//! 128 heavy + 128 recent tokens per KV head, full and in steady state.
//!
//! ```text
//! cargo bench --bench beams
//! H2O_KV_BENCH_QUICK=1 cargo bench --bench beams
//! ```
//!
//! Times a fork into a preallocated cache (`copy_from`, no allocation)
//! against `clone` (allocates), a reorder of 4 beams with one repeated pick
//! (one fork, three moves), a rejected draft (`truncate(1)`, after a step)
//! and one decode step through every layer, for scale. Also prints the
//! interleaved ratio of `copy_from` to `clone`.

mod common;

use std::hint::black_box;
use std::time::Instant;

use h2o_kv::{BeamScratch, H2O, ModelCache};

use common::fixtures::Tokens;
use common::ratio::{interleaved, report};

const LAYERS: usize = 30;
const HEADS: usize = 9;
const KV: usize = 3;
const D: usize = 64;

type Model = ModelCache<f32, H2O>;

fn step(m: &mut Model, tokens: &mut Tokens<f32>) {
    let (q, k, v) = tokens.next();
    for l in 0..LAYERS {
        black_box(m.step(l, q, k, v).unwrap());
    }
}

/// A model cache past its budget (every layer holds 256 tokens per KV head).
fn full(tokens: &mut Tokens<f32>) -> Model {
    let mut m = ModelCache::new(LAYERS, HEADS, KV, D, H2O::new(128, 128).unwrap()).unwrap();
    for _ in 0..300 {
        step(&mut m, tokens);
    }
    m
}

fn main() {
    let mut c = common::criterion();
    let mut tokens = Tokens::<f32>::new(HEADS * D, KV * D, 1);
    let src = full(&mut tokens);
    let mut dst = src.clone();
    let mut g = c.benchmark_group("beams");
    g.bench_function("copy_from", |b| b.iter(|| dst.copy_from(black_box(&src)).unwrap()));
    g.bench_function("clone", |b| b.iter(|| black_box(src.clone())));
    let mut beams: Vec<Model> = (0..4).map(|_| src.clone()).collect();
    let mut scratch = BeamScratch::new(4);
    g.bench_function("reorder_4_one_fork", |b| {
        b.iter(|| ModelCache::reorder(&mut beams, black_box(&[0, 0, 1, 2]), &mut scratch).unwrap())
    });
    let mut m = src.clone();
    g.bench_function("step", |b| b.iter(|| step(&mut m, &mut tokens)));
    g.bench_function("step_then_truncate_1", |b| {
        b.iter(|| {
            step(&mut m, &mut tokens);
            m.truncate(1).unwrap();
        })
    });
    g.finish();
    c.final_summary();
    if common::selected("ratio") {
        let r = interleaved(
            |n| {
                let t = Instant::now();
                for _ in 0..n {
                    dst.copy_from(black_box(&src)).unwrap();
                }
                t.elapsed()
            },
            |n| {
                let t = Instant::now();
                for _ in 0..n {
                    black_box(src.clone());
                }
                t.elapsed()
            },
        );
        report("copy_from / clone", &r, "< 1 (a fork reuses its buffers)", r.median < 1.0);
    }
}
