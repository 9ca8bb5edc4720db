//! GQA layer step: 32 query heads sharing 8 KV heads, head_dim 128, 4096
//! tokens per KV head, H2O in steady state (insert, attend, evict one).
//!
//! ```text
//! cargo bench --bench layer
//! H2O_KV_BENCH_QUICK=1 cargo bench --bench layer
//! ```
//!
//! Also prints two ratios: the layer step against a read floor over the same
//! key and value bytes, and against the same layer with one query head per KV
//! head (1.0 would mean the extra query heads cost nothing: each key and value
//! row is read once per group).

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Throughput};
use h2o_kv::{H2O, LayerCache};

use common::fixtures::{self, Tokens};
use common::quick;
use common::ratio::{interleaved, report};

const D: usize = 128;
const KV_HEADS: usize = 8;

fn tokens() -> usize {
    if quick() { 1024 } else { 4096 }
}

/// A layer with `n` tokens per KV head, in steady state.
fn layer(n_heads: usize, n: usize, tokens: &mut Tokens<f32>) -> LayerCache<f32, H2O> {
    let mut layer = LayerCache::new(n_heads, KV_HEADS, D, H2O::new(n / 2, n / 2).unwrap()).unwrap();
    while layer.len() < n {
        let (_, k, v) = tokens.next();
        layer.insert(k, v).unwrap();
    }
    for _ in 0..4 {
        let (q, k, v) = tokens.next();
        layer.step(q, k, v).unwrap();
    }
    layer
}

fn run(layer: &mut LayerCache<f32, H2O>, iters: u64, tokens: &mut Tokens<f32>) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        let (q, k, v) = tokens.next();
        black_box(layer.step(q, k, v).unwrap());
    }
    t.elapsed()
}

fn main() {
    let mut c = common::criterion();
    let n = tokens();
    let mut t32 = Tokens::<f32>::new(32 * D, KV_HEADS * D, 1);
    let mut gqa = layer(32, n, &mut t32);
    let bytes = ((n + 1) * 2 * D * KV_HEADS * size_of::<f32>()) as u64;
    {
        let mut group = c.benchmark_group("layer/f32/h2o");
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function(BenchmarkId::new("q32_kv8_d128", n), |b| {
            b.iter_custom(|iters| run(&mut gqa, iters, &mut t32))
        });
        group.finish();
    }
    c.final_summary();
    if !common::selected("ratios") {
        return;
    }
    let (fk, fv) = (
        fixtures::data::<f32>(KV_HEADS * (n + 1) * D, 11),
        fixtures::data::<f32>(KV_HEADS * (n + 1) * D, 12),
    );
    let r = interleaved(
        |it| run(&mut gqa, it, &mut t32),
        |it| {
            let t = Instant::now();
            for _ in 0..it {
                black_box(fixtures::read_floor_f32(black_box(&fk), black_box(&fv)));
            }
            t.elapsed()
        },
    );
    report(&format!("layer_step/read_floor (q32 kv8 d128, {n})"), &r, "none (info)", true);
    let mut t8 = Tokens::<f32>::new(KV_HEADS * D, KV_HEADS * D, 1);
    let mut mha = layer(KV_HEADS, n, &mut t8);
    let r = interleaved(|it| run(&mut gqa, it, &mut t32), |it| run(&mut mha, it, &mut t8));
    report(&format!("layer_step q32/q8 (kv8 d128, {n})"), &r, "none (info; 1.0 = free)", true);
}
