//! Decode calls allocate nothing after construction.
//!
//! A counting global allocator (`stats_alloc`) wraps the system allocator;
//! each check builds and warms a cache (allocation allowed), then counts the
//! allocations made by many decode calls, which must be zero. Covered:
//! `step`, `step_with(AttendInsertEvict)`, `insert`/`attend`/`evict` for every policy
//! and element type, through `Cache`, `AnyPolicy` and `Box<dyn KvCache>`, and
//! the same calls on `LayerCache` (GQA and plain multi-head with many heads),
//! and beam search on `ModelCache`: a fork (`copy_from`) into a preallocated
//! cache, `reorder` with a `BeamScratch`, and speculative decoding's
//! `truncate`. A failed call must not allocate either.
//!
//! Runs without the test harness (`harness = false`): the counter is global,
//! so no other thread may allocate while a region is measured.

use std::alloc::System;

mod common;
use common::Rng;

use h2o_kv::{
    AnyPolicy, BeamScratch, Cache, Element, EvictionPolicy, Full, H2O, Heavy, KvCache, LayerCache,
    ModelCache, Recent, SinkWindow,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Decode steps measured per check.
const STEPS: usize = 200;

/// Deterministic inputs in `[-1, 1)`, converted to `T`.
fn rows<T: Element>(len: usize, seed: u64) -> Vec<T> {
    Rng::new(seed).uniform(len, 1.0)
}

/// Runs `f` and panics if it allocated or reallocated.
fn assert_no_alloc(label: &str, f: impl FnOnce()) {
    let region = Region::new(GLOBAL);
    f();
    let stats = region.change();
    assert!(
        stats.allocations == 0 && stats.reallocations == 0,
        "{label}: {} allocations, {} reallocations ({} bytes)",
        stats.allocations,
        stats.reallocations,
        stats.bytes_allocated,
    );
    println!("{label}: no allocation");
}

/// Every decode call of one cache, past its budget so evictions happen.
fn check_cache<T: Element, C: KvCache<T>>(label: &str, mut cache: C) {
    let d = cache.head_dim();
    let (q, k, v) = (rows::<T>(STEPS * d, 1), rows::<T>(STEPS * d, 2), rows::<T>(STEPS * d, 3));
    let row = |x: &[T], i: usize| -> Vec<T> { x[(i % STEPS) * d..][..d].to_vec() };
    // Warm up: one of each call, so any lazy state exists.
    cache.step(&row(&q, 0), &row(&k, 0), &row(&v, 0)).unwrap();
    cache
        .step_with(h2o_kv::StepOrder::AttendInsertEvict, &row(&q, 1), &row(&k, 1), &row(&v, 1))
        .unwrap();
    let bad = vec![T::default(); d + 1];
    assert_no_alloc(&format!("{label} step"), || {
        for i in 0..STEPS {
            let r = i * d;
            cache.step(&q[r..][..d], &k[r..][..d], &v[r..][..d]).unwrap();
        }
    });
    cache.reset();
    assert_no_alloc(&format!("{label} step_document_order"), || {
        for i in 0..STEPS {
            let r = i * d;
            cache
                .step_with(
                    h2o_kv::StepOrder::AttendInsertEvict,
                    &q[r..][..d],
                    &k[r..][..d],
                    &v[r..][..d],
                )
                .unwrap();
        }
    });
    cache.reset();
    assert_no_alloc(&format!("{label} insert/attend/evict"), || {
        for i in 0..STEPS {
            let r = i * d;
            cache.insert(&k[r..][..d], &v[r..][..d]).unwrap();
            cache.attend(&q[r..][..d]).unwrap();
            cache.evict();
        }
    });
    assert_no_alloc(&format!("{label} failed step"), || {
        assert!(cache.step(&bad, &bad, &bad).is_err());
    });
    assert!(cache.len() <= cache.budget());
}

fn check_policy<T: Element, P: EvictionPolicy + Into<AnyPolicy> + Copy>(ty: &str, policy: P) {
    let d = 16;
    let name = policy.name();
    check_cache::<T, _>(&format!("{ty} {name}"), Cache::<T, P>::with_policy(d, policy).unwrap());
    let any: AnyPolicy = policy.into();
    check_cache::<T, _>(
        &format!("{ty} {name} (AnyPolicy)"),
        Cache::<T, AnyPolicy>::with_policy(d, any).unwrap(),
    );
    // A clone must keep the no-allocation promise too.
    let original = Cache::<T, P>::with_policy(d, policy).unwrap();
    check_cache::<T, _>(&format!("{ty} {name} (clone)"), original.clone());
    let boxed: Box<dyn KvCache<T>> = Box::new(Cache::<T, P>::with_policy(d, policy).unwrap());
    check_cache::<T, _>(&format!("{ty} {name} (Box<dyn KvCache>)"), boxed);
}

fn check_type<T: Element>(ty: &str) {
    // The full cache needs room for every token of one check (3 × STEPS + 2).
    check_policy::<T, _>(ty, Full::new(4 * STEPS).unwrap());
    check_policy::<T, _>(ty, Recent::new(24).unwrap());
    check_policy::<T, _>(ty, Heavy::new(24).unwrap());
    check_policy::<T, _>(ty, H2O::new(12, 12).unwrap());
}

fn check_layer<T: Element>(label: &str, n_heads: usize, n_kv_heads: usize) {
    let d = 8;
    let mut layer =
        LayerCache::<T, _>::new(n_heads, n_kv_heads, d, H2O::new(10, 6).unwrap()).unwrap();
    let (qw, kw) = (n_heads * d, n_kv_heads * d);
    let (q, k, v) = (rows::<T>(STEPS * qw, 4), rows::<T>(STEPS * kw, 5), rows::<T>(STEPS * kw, 6));
    layer.step(&q[..qw], &k[..kw], &v[..kw]).unwrap();
    layer.step_with(h2o_kv::StepOrder::AttendInsertEvict, &q[..qw], &k[..kw], &v[..kw]).unwrap();
    let label = format!("{label} (q{n_heads} kv{n_kv_heads})");
    assert_no_alloc(&format!("{label} step"), || {
        for i in 0..STEPS {
            layer.step(&q[i * qw..][..qw], &k[i * kw..][..kw], &v[i * kw..][..kw]).unwrap();
        }
    });
    assert_no_alloc(&format!("{label} step_document_order"), || {
        for i in 0..STEPS {
            let (qi, ki, vi) = (&q[i * qw..][..qw], &k[i * kw..][..kw], &v[i * kw..][..kw]);
            layer.step_with(h2o_kv::StepOrder::AttendInsertEvict, qi, ki, vi).unwrap();
        }
    });
    assert_no_alloc(&format!("{label} insert/attend/evict"), || {
        for i in 0..STEPS {
            layer.insert(&k[i * kw..][..kw], &v[i * kw..][..kw]).unwrap();
            layer.attend(&q[i * qw..][..qw]).unwrap();
            layer.evict();
        }
    });
    assert_eq!(layer.len(), 16);
}

/// Beam search over whole-model caches: every step forks, reorders and
/// truncates, past the budget so evictions happen, and allocates nothing.
fn check_beams<T: Element>(label: &str, policy: AnyPolicy) {
    let (layers, n_heads, n_kv, d, beams) = (3, 8, 2, 16, 4);
    let (qw, kw) = (n_heads * d, n_kv * d);
    let (q, k, v) = (rows::<T>(STEPS * qw, 7), rows::<T>(STEPS * kw, 8), rows::<T>(STEPS * kw, 9));
    let one = ModelCache::<T, AnyPolicy>::new(layers, n_heads, n_kv, d, policy).unwrap();
    let mut beams: Vec<_> = (0..beams).map(|_| one.clone()).collect();
    let mut spare = one.clone();
    let mut scratch = BeamScratch::new(beams.len());
    let step = |m: &mut ModelCache<T, AnyPolicy>, i: usize| {
        let i = i % STEPS;
        for l in 0..layers {
            m.step(l, &q[i * qw..][..qw], &k[i * kw..][..kw], &v[i * kw..][..kw]).unwrap();
        }
    };
    // Warm up: one of each call.
    for (b, beam) in beams.iter_mut().enumerate() {
        step(beam, b);
    }
    spare.copy_from(&beams[0]).unwrap();
    ModelCache::reorder(&mut beams, &[0, 0, 1, 2], &mut scratch).unwrap();
    let orders = [[0, 0, 1, 2], [3, 2, 1, 0], [1, 1, 1, 1], [2, 3, 2, 0]];
    let label = format!("{label} {}", policy.name());
    assert_no_alloc(&format!("{label} beam search: fork, reorder, truncate"), || {
        for i in 0..STEPS {
            for (b, beam) in beams.iter_mut().enumerate() {
                step(beam, i + b);
            }
            spare.copy_from(&beams[i % 4]).unwrap();
            ModelCache::reorder(&mut beams, &orders[i % 4], &mut scratch).unwrap();
            // Two drafts, one rejected.
            step(&mut spare, i);
            step(&mut spare, i + 1);
            spare.truncate(1).unwrap();
        }
    });
    let other = ModelCache::<T, AnyPolicy>::new(2, n_heads, n_kv, d, policy).unwrap();
    assert_no_alloc(&format!("{label} failed fork, reorder, truncate"), || {
        assert!(spare.copy_from(&other).is_err());
        assert!(ModelCache::reorder(&mut beams, &[0, 4, 1, 2], &mut scratch).is_err());
        assert!(spare.truncate(usize::MAX).is_err());
    });
}

fn main() {
    // The counter must see allocations, or a zero below proves nothing.
    let region = Region::new(GLOBAL);
    let v = std::hint::black_box(vec![1u8; 64]);
    assert!(region.change().allocations >= 1, "the counting allocator is not installed");
    drop(v);

    check_type::<f32>("f32");
    check_type::<f64>("f64");
    #[cfg(feature = "half")]
    {
        check_type::<half::f16>("f16");
        check_type::<half::bf16>("bf16");
    }
    let layers = || {
        check_layer::<f32>("layer f32", 32, 8);
        check_layer::<f32>("layer f32", 32, 32);
        check_layer::<f64>("layer f64", 4, 1);
        check_beams::<f32>("model f32", H2O::new(10, 6).unwrap().into());
        check_beams::<f32>("model f32", SinkWindow::new(4, 8).unwrap().into());
        check_beams::<f64>("model f64", Recent::new(12).unwrap().into());
    };
    // With `rayon`, a layer runs its heads on the pool it is called from; the
    // crate's own code allocates nothing per step there (the heads' results
    // go into preallocated room). The check runs in a 1-thread pool: with 2
    // threads, rayon's work-stealing deques (crossbeam) occasionally allocate
    // when a job is stolen (seen in 1 of 4 runs: 2 allocations in 200 steps
    // of a 32-head layer), which this test cannot tell from the crate's.
    #[cfg(feature = "rayon")]
    rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(layers);
    #[cfg(not(feature = "rayon"))]
    layers();
    println!("no_alloc: all checks passed");
}
