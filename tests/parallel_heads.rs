//! With the `rayon` feature, a layer step runs its KV heads on the current
//! rayon pool. The results must be bit-identical to one single-KV-head
//! layer per head (which runs serially), on 1, 2 and 3 threads, for outputs,
//! positions and scores, and a failing head must leave every head unchanged.

#![cfg(feature = "rayon")]

mod common;

use common::Rng;
use h2o_kv::{Error, H2O, KvCache, LayerCache};

fn vector(rng: &mut Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.signed() as f32).collect()
}

/// A 12-query-head, 4-KV-head layer against four separate caches.
fn compare(threads: usize) {
    let (h, kv, d) = (12, 4, 16);
    let g = h / kv;
    let policy = H2O::new(20, 12).unwrap();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let mut layer = LayerCache::<f32, _>::new(h, kv, d, policy).unwrap();
    let mut heads: Vec<LayerCache<f32, H2O>> =
        (0..kv).map(|_| LayerCache::new(g, 1, d, policy).unwrap()).collect();
    let mut rng = Rng::new(7 + threads as u64);
    for t in 0..150 {
        let q = vector(&mut rng, h * d);
        let k = vector(&mut rng, kv * d);
        let v = vector(&mut rng, kv * d);
        let out = pool.install(|| layer.step(&q, &k, &v).unwrap().to_vec());
        for (i, head) in heads.iter_mut().enumerate() {
            let want = head
                .step(&q[i * g * d..][..g * d], &k[i * d..][..d], &v[i * d..][..d])
                .unwrap()
                .to_vec();
            assert_eq!(
                &out[i * g * d..][..g * d],
                &want[..],
                "{threads} threads, step {t}, head {i}"
            );
        }
    }
    for (i, head) in heads.iter().enumerate() {
        let got: Vec<_> = layer.head(i).unwrap().tokens().map(|t| (t.position, t.score)).collect();
        let want: Vec<_> = head.head(0).unwrap().tokens().map(|t| (t.position, t.score)).collect();
        assert_eq!(got, want, "{threads} threads, head {i}: positions and scores");
    }
}

#[test]
fn parallel_heads_equal_serial_heads() {
    for threads in [1, 2, 3] {
        compare(threads);
    }
}

#[test]
fn a_failing_head_changes_no_head_in_parallel() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let (h, kv, d) = (8, 8, 4);
    let mut layer = LayerCache::<f32, _>::new(h, kv, d, H2O::new(2, 2).unwrap()).unwrap();
    let mut rng = Rng::new(3);
    for _ in 0..6 {
        let (q, k, v) =
            (vector(&mut rng, h * d), vector(&mut rng, kv * d), vector(&mut rng, kv * d));
        pool.install(|| layer.step(&q, &k, &v).unwrap());
    }
    let snapshot = |l: &LayerCache<f32, H2O>| -> Vec<Vec<(u64, f64)>> {
        l.heads().iter().map(|c| c.tokens().map(|t| (t.position, t.score)).collect()).collect()
    };
    let before = snapshot(&layer);
    // Heads 2 and 5 overflow: the error is head 2's, whatever thread ran first.
    let mut q = vector(&mut rng, h * d);
    for head in [2, 5] {
        q[head * d..][..d].iter_mut().for_each(|x| *x = 1e30);
    }
    let mut k = vector(&mut rng, kv * d);
    for head in [2, 5] {
        k[head * d..][..d].iter_mut().for_each(|x| *x = 1e30);
    }
    let v = vector(&mut rng, kv * d);
    let err = pool.install(|| layer.step(&q, &k, &v).unwrap_err());
    assert!(matches!(err, Error::AttentionOverflow { .. }), "{err:?}");
    assert_eq!(snapshot(&layer), before);
    assert_eq!(layer.next_position(), 6);
}
