//! `prefill_from`: a bounded cache derived from a full cache's prefill holds
//! exactly what its own prefill of the same prompt would hold, for every
//! policy; bad sources are refused and change nothing.

mod common;

use common::Rng;
use h2o_kv::{
    AnyPolicy, Error, Full, H2O, KvCache, LayerCache, ModelCache, PolicyKind, Recent, StepOrder,
};

const N_HEADS: usize = 4;
const N_KV: usize = 2;
const D: usize = 8;

fn layer<P: h2o_kv::EvictionPolicy>(policy: P) -> LayerCache<f32, P> {
    LayerCache::new(N_HEADS, N_KV, D, policy).unwrap()
}

/// Everything observable about a layer: the snapshot bytes (rows, slots,
/// positions, scores, recent window) and each token's statistics.
fn state<P: h2o_kv::SnapshotPolicy>(l: &LayerCache<f32, P>) -> (Vec<u8>, Vec<String>) {
    let stats = l
        .heads()
        .iter()
        .map(|h| format!("{:?}", h.planner().residents().collect::<Vec<_>>()))
        .collect();
    (l.snapshot(), stats)
}

#[test]
fn a_derived_prefill_equals_a_direct_one_for_every_policy() {
    let mut rng = Rng::new(0x5eed);
    for round in 0..40 {
        let p = 1 + rng.below(60);
        let q: Vec<f32> = rng.vec(p * N_HEADS * D);
        let k: Vec<f32> = rng.vec(p * N_KV * D);
        let v: Vec<f32> = rng.vec(p * N_KV * D);
        let mut out_full = vec![0.0; p * N_HEADS * D];
        let mut full = layer(Full::new(64).unwrap());
        full.prefill(&q, &k, &v, &mut out_full).unwrap();
        for kind in PolicyKind::ALL {
            let budget = if kind == PolicyKind::Full { 64 } else { 2 + rng.below(40) };
            let fraction = [0.0, 0.25, 0.5, 1.0][round % 4];
            let policy: AnyPolicy = kind.with_budget(budget, fraction).unwrap();
            let mut direct = layer(policy);
            let mut out = vec![0.0; p * N_HEADS * D];
            direct.prefill(&q, &k, &v, &mut out).unwrap();
            assert_eq!(out, out_full, "a prefill's outputs do not depend on the policy");
            let mut derived = layer(policy);
            derived.prefill_from(&full).unwrap();
            let what = format!("round {round}, {kind:?}, budget {budget}, P {p}");
            assert_eq!(state(&derived), state(&direct), "{what}");
            for (a, b) in derived.last_evicted().iter().zip(direct.last_evicted().iter()) {
                assert_eq!(a, b, "{what}");
            }
            // And they decode alike afterwards.
            let (q1, k1, v1): (Vec<f32>, Vec<f32>, Vec<f32>) =
                (rng.vec(N_HEADS * D), rng.vec(N_KV * D), rng.vec(N_KV * D));
            let a = derived.step(&q1, &k1, &v1).unwrap().to_vec();
            let b = direct.step(&q1, &k1, &v1).unwrap().to_vec();
            assert_eq!(a, b, "{what}");
            assert_eq!(state(&derived), state(&direct), "{what}");
        }
    }
}

#[test]
fn a_source_fed_by_decode_steps_is_a_prefill_too() {
    // Default-order steps without eviction give every token the column sums
    // a prefill gives (up to the order of the sums): the derived cache keeps
    // the same tokens as a direct prefill.
    let mut rng = Rng::new(7);
    let p = 48;
    let (q, k, v): (Vec<f64>, Vec<f64>, Vec<f64>) =
        (rng.vec(p * N_HEADS * D), rng.vec(p * N_KV * D), rng.vec(p * N_KV * D));
    let mut stepped = LayerCache::<f64, _>::new(N_HEADS, N_KV, D, Full::new(p).unwrap()).unwrap();
    for i in 0..p {
        stepped
            .step(
                &q[i * N_HEADS * D..][..N_HEADS * D],
                &k[i * N_KV * D..][..N_KV * D],
                &v[i * N_KV * D..][..N_KV * D],
            )
            .unwrap();
    }
    let policy = H2O::new(6, 6).unwrap();
    let mut derived = LayerCache::<f64, _>::new(N_HEADS, N_KV, D, policy).unwrap();
    derived.prefill_from(&stepped).unwrap();
    let mut direct = LayerCache::<f64, _>::new(N_HEADS, N_KV, D, policy).unwrap();
    direct.prefill(&q, &k, &v, &mut vec![0.0; p * N_HEADS * D]).unwrap();
    for (a, b) in derived.heads().iter().zip(direct.heads()) {
        assert_eq!(a.resident_positions(), b.resident_positions());
        for (x, y) in a.tokens().zip(b.tokens()) {
            assert!((x.score - y.score).abs() < 1e-12, "{} vs {}", x.score, y.score);
        }
    }
}

#[test]
fn a_model_cache_derives_every_layer() {
    let mut rng = Rng::new(11);
    let (layers, p) = (3, 30);
    let mut full =
        ModelCache::<f32, _>::new(layers, N_HEADS, N_KV, D, Full::new(p).unwrap()).unwrap();
    let mut direct =
        ModelCache::<f32, _>::new(layers, N_HEADS, N_KV, D, H2O::new(4, 4).unwrap()).unwrap();
    for l in 0..layers {
        let (q, k, v): (Vec<f32>, Vec<f32>, Vec<f32>) =
            (rng.vec(p * N_HEADS * D), rng.vec(p * N_KV * D), rng.vec(p * N_KV * D));
        let mut out = vec![0.0; p * N_HEADS * D];
        full.prefill(l, &q, &k, &v, &mut out).unwrap();
        direct.prefill(l, &q, &k, &v, &mut out).unwrap();
    }
    let mut derived =
        ModelCache::<f32, _>::new(layers, N_HEADS, N_KV, D, H2O::new(4, 4).unwrap()).unwrap();
    derived.prefill_from(&full).unwrap();
    assert_eq!(derived.position(), p as u64);
    assert_eq!(derived.snapshot(), direct.snapshot());
    // Layer counts must match; nothing changes on the error.
    let mut two = ModelCache::<f32, _>::new(2, N_HEADS, N_KV, D, H2O::new(4, 4).unwrap()).unwrap();
    let before = two.snapshot();
    let err = two.prefill_from(&full).unwrap_err();
    assert!(matches!(err, Error::PrefillSource { .. }), "{err:?}");
    assert_eq!(two.snapshot(), before);
}

#[test]
fn bad_sources_and_targets_are_refused_and_change_nothing() {
    let mut rng = Rng::new(3);
    let p = 12;
    let (q, k, v): (Vec<f32>, Vec<f32>, Vec<f32>) =
        (rng.vec(p * N_HEADS * D), rng.vec(p * N_KV * D), rng.vec(p * N_KV * D));
    let mut out = vec![0.0; p * N_HEADS * D];
    let mut full = layer(Full::new(p).unwrap());
    full.prefill(&q, &k, &v, &mut out).unwrap();

    let refused = |target: &mut LayerCache<f32, AnyPolicy>, source: &LayerCache<f32, AnyPolicy>| {
        let before = state(target);
        let err = target.prefill_from(source).unwrap_err();
        assert_eq!(state(target), before, "a refused call changed the target");
        err
    };
    let any = |p: AnyPolicy| layer(p);
    let full_any = {
        let mut l = any(Full::new(p).unwrap().into());
        l.prefill(&q, &k, &v, &mut out).unwrap();
        l
    };

    // A target that already took tokens.
    let mut busy = any(Recent::new(4).unwrap().into());
    busy.step(&q[..N_HEADS * D], &k[..N_KV * D], &v[..N_KV * D]).unwrap();
    assert!(matches!(refused(&mut busy, &full_any), Error::PrefillSource { .. }));

    // A source that evicted.
    let mut evicted = any(Recent::new(4).unwrap().into());
    evicted.prefill(&q, &k, &v, &mut out).unwrap();
    let mut target = any(H2O::new(2, 2).unwrap().into());
    assert!(matches!(refused(&mut target, &evicted), Error::PrefillSource { .. }));

    // A source decoded in attend-insert-evict order: a token is not attended
    // by its own query, so its statistics are not a prefill's.
    let mut other_order = any(Full::new(p).unwrap().into());
    for i in 0..3 {
        other_order
            .step_with(
                StepOrder::AttendInsertEvict,
                &q[i * N_HEADS * D..][..N_HEADS * D],
                &k[i * N_KV * D..][..N_KV * D],
                &v[i * N_KV * D..][..N_KV * D],
            )
            .unwrap();
    }
    assert!(matches!(refused(&mut target, &other_order), Error::PrefillSource { .. }));

    // Other shapes.
    let narrow =
        LayerCache::<f32, AnyPolicy>::new(N_HEADS, N_KV, D / 2, Full::new(p).unwrap().into())
            .unwrap();
    assert!(matches!(refused(&mut target, &narrow), Error::PrefillSource { .. }));

    // A full target too small for the prompt.
    let mut small = any(Full::new(p - 1).unwrap().into());
    assert!(matches!(refused(&mut small, &full_any), Error::CapacityExceeded { .. }));

    // The typed full source works for an AnyPolicy target too.
    target.prefill_from(&full).unwrap();
    assert_eq!(target.next_position(), p as u64);
    assert!(target.heads().iter().all(|h| h.len() == 4));
}
