//! Concurrency: caches are `Send` and `Sync` (checked at compile time), and a
//! server running one cache per sequence on its own thread gets exactly the
//! results of a single-threaded run.
//!
//! Every cache is plain owned data (no interior mutability, no shared
//! buffers), and every mutation takes `&mut self`, so `Sync` only ever allows
//! concurrent reads of a cache that nobody is changing.

use std::thread;

mod common;
use common::Rng;

use h2o_kv::{
    AnyPolicy, Cache, Error, Full, FullCache, H2O, H2OCache, Heavy, HeavyOnly, KvCache, LayerCache,
    Recent, RecentOnly,
};

const fn assert_send<T: Send>() {}
const fn assert_sync<T: Sync>() {}

// Compile-time: the check fails to build if any of these stops being Send/Sync.
const _: () = {
    assert_send::<FullCache<f32>>();
    assert_send::<RecentOnly<f64>>();
    assert_send::<HeavyOnly<f32>>();
    assert_send::<H2OCache<f64>>();
    assert_send::<Cache<f32, AnyPolicy>>();
    assert_send::<LayerCache<f32, H2O>>();
    assert_send::<LayerCache<f64, AnyPolicy>>();
    assert_send::<Box<dyn KvCache<f32>>>();
    assert_send::<Error>();
    assert_sync::<FullCache<f32>>();
    assert_sync::<RecentOnly<f64>>();
    assert_sync::<HeavyOnly<f32>>();
    assert_sync::<H2OCache<f64>>();
    assert_sync::<Cache<f32, AnyPolicy>>();
    assert_sync::<LayerCache<f32, AnyPolicy>>();
    assert_sync::<Error>();
};

/// Input `j` of `step` in sequence `seq`, in `[-1, 1)`: one splitmix64 output
/// per (sequence, step, element), so any thread computes it alone.
fn input(seq: u64, step: u64, j: usize) -> f32 {
    let r = Rng::new(seq.wrapping_mul(1_000_003) ^ step.wrapping_mul(131) ^ j as u64).next_u64();
    (r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
}

/// Decodes one sequence; returns a transcript of every output bit and
/// eviction, plus the final snapshot.
fn decode(cache: &mut Cache<f32, AnyPolicy>, seq: u64, steps: u64) -> (Vec<u32>, Vec<u8>) {
    let d = cache.head_dim();
    let mut transcript = Vec::new();
    for s in 0..steps {
        let x = |off: usize| (0..d).map(|j| input(seq, s, j + off)).collect::<Vec<_>>();
        let (q, k, v) = (x(0), x(d), x(2 * d));
        if cache.len() == cache.capacity() && cache.policy_name() == "full" {
            cache.reset();
        }
        transcript.extend(cache.step(&q, &k, &v).unwrap().iter().map(|o| o.to_bits()));
        transcript.extend(cache.last_evicted().iter().map(|&p| p as u32));
    }
    (transcript, cache.snapshot())
}

fn make(seq: u64) -> Cache<f32, AnyPolicy> {
    let policy: AnyPolicy = match seq % 4 {
        0 => H2O::new(8, 8).unwrap().into(),
        1 => Heavy::new(12).unwrap().into(),
        2 => Recent::new(10).unwrap().into(),
        _ => Full::new(300).unwrap().into(),
    };
    Cache::with_policy(8, policy).unwrap()
}

#[test]
fn one_cache_per_thread_equals_a_single_threaded_run() {
    let (sequences, steps) = (8u64, 2_000);
    let serial: Vec<_> = (0..sequences).map(|seq| decode(&mut make(seq), seq, steps)).collect();
    let parallel: Vec<_> = thread::scope(|scope| {
        let handles: Vec<_> = (0..sequences)
            .map(|seq| scope.spawn(move || decode(&mut make(seq), seq, steps)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (seq, (a, b)) in serial.iter().zip(&parallel).enumerate() {
        assert_eq!(a, b, "sequence {seq}");
    }
    // The sequences really differ (so equality above is not trivial).
    assert_ne!(serial[0].0, serial[4].0);
}

#[test]
fn a_cache_moved_between_threads_continues_exactly() {
    let seq = 3;
    let mut whole = make(0);
    let (want, want_snapshot) = decode(&mut whole, seq, 1_000);
    // First half here; the same cache moves to another thread for the second half.
    let mut cache = make(0);
    let d = cache.head_dim();
    let mut got = Vec::new();
    for s in 0..500 {
        let x = |off: usize| (0..d).map(|j| input(seq, s, j + off)).collect::<Vec<_>>();
        got.extend(cache.step(&x(0), &x(d), &x(2 * d)).unwrap().iter().map(|o| o.to_bits()));
        got.extend(cache.last_evicted().iter().map(|&p| p as u32));
    }
    let (rest, snapshot) = thread::spawn(move || {
        let mut t = Vec::new();
        for s in 500..1_000 {
            let x = |off: usize| (0..d).map(|j| input(seq, s, j + off)).collect::<Vec<_>>();
            t.extend(cache.step(&x(0), &x(d), &x(2 * d)).unwrap().iter().map(|o| o.to_bits()));
            t.extend(cache.last_evicted().iter().map(|&p| p as u32));
        }
        (t, cache.snapshot())
    })
    .join()
    .unwrap();
    got.extend(rest);
    assert_eq!(got, want);
    assert_eq!(snapshot, want_snapshot);
}

#[test]
fn shared_reads_from_many_threads_agree() {
    // `Sync`: several threads read one cache that nobody mutates.
    let mut layer = LayerCache::<f32, _>::new(4, 2, 8, H2O::new(4, 4).unwrap()).unwrap();
    for s in 0..40 {
        let q: Vec<f32> = (0..32).map(|j| input(9, s, j)).collect();
        let kv: Vec<f32> = (0..16).map(|j| input(9, s, j + 32)).collect();
        layer.step(&q, &kv, &kv).unwrap();
    }
    let layer = &layer;
    let want = layer.snapshot();
    let reads: Vec<_> = thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(move || {
                    let kept: Vec<Vec<u64>> =
                        layer.heads().iter().map(|h| h.resident_positions()).collect();
                    (kept, layer.snapshot())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (kept, snapshot) in reads {
        assert_eq!(snapshot, want);
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|k| k.len() == 8));
    }
}
