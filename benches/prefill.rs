//! Prefill of a 2048-token prompt, head_dim 128, as one call: causal
//! attention over the prompt, then one eviction down to the budget.
//!
//! ```text
//! cargo bench --bench prefill
//! H2O_KV_BENCH_QUICK=1 cargo bench --bench prefill
//! ```
//!
//! `h2o` keeps 512 + 512 of the 2048 tokens; `full` keeps all of them. The
//! throughput is the key and value bytes the causal attention reads:
//! `P(P+1)/2` rows of each.

mod common;

use criterion::{BenchmarkId, Throughput};
use h2o_kv::{FullCache, H2OCache, KvCache};

use common::fixtures;
use common::quick;

const D: usize = 128;

fn main() {
    let mut c = common::criterion();
    let p = if quick() { 512 } else { 2048 };
    let q = fixtures::data::<f32>(p * D, 1);
    let k = fixtures::data::<f32>(p * D, 2);
    let v = fixtures::data::<f32>(p * D, 3);
    let mut out = vec![0.0f32; p * D];
    let mut group = c.benchmark_group("prefill/f32");
    group.sample_size(10);
    group.throughput(Throughput::Bytes((p * (p + 1) / 2 * 2 * D * size_of::<f32>()) as u64));
    let mut h2o = H2OCache::<f32>::new(D, p / 4, p / 4).unwrap();
    group.bench_function(BenchmarkId::new("h2o_d128", p), |b| {
        b.iter(|| {
            h2o.reset();
            h2o.prefill(&q, &k, &v, &mut out).unwrap();
        })
    });
    let mut full = FullCache::<f32>::new(D, p).unwrap();
    group.bench_function(BenchmarkId::new("full_d128", p), |b| {
        b.iter(|| {
            full.reset();
            full.prefill(&q, &k, &v, &mut out).unwrap();
        })
    });
    group.finish();
    c.final_summary();
}
