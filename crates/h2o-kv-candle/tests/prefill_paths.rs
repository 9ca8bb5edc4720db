//! The SnapKV prefill path and the batched decode step, on synthetic data and
//! a tiny random GGUF (no model file needed).

mod common;

use candle_core::{Device, Tensor};
use common::{Tiny, temp_file, tiny_gguf};
use h2o_kv::{AnyPolicy, EvictionPolicy, Full, H2O, KvCache, LayerCache, Recent, SnapKv};
use h2o_kv_candle::llama::{self, LlamaCache};
use h2o_kv_candle::{Error, TensorLayerCache};

/// Deterministic values in (-1, 1), with a few large ones so attention is peaked.
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let x = (s >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0;
            if i % 37 == 0 { 4.0 * x } else { x }
        })
        .collect()
}

fn positions<P: EvictionPolicy>(layer: &LayerCache<f32, P>) -> Vec<Vec<u64>> {
    layer.heads().iter().map(KvCache::resident_positions).collect()
}

#[test]
fn the_tensor_snapkv_prefill_equals_the_core_layer_cache() {
    let (seq, h, kv, d) = (40, 4, 2, 8);
    let (q, k, v) = (data(seq * h * d, 1), data(seq * kv * d, 2), data(seq * kv * d, 3));
    let dev = Device::Cpu;
    let qt = Tensor::from_slice(&q, (seq, h, d), &dev).unwrap();
    let kt = Tensor::from_slice(&k, (seq, kv, d), &dev).unwrap();
    let vt = Tensor::from_slice(&v, (seq, kv, d), &dev).unwrap();
    let snap = SnapKv::new(4, 3).unwrap();
    for policy in [AnyPolicy::from(H2O::new(6, 4).unwrap()), Recent::new(9).unwrap().into()] {
        let mut tensor =
            TensorLayerCache::new(LayerCache::<f32, _>::new(h, kv, d, policy).unwrap());
        let out = tensor.prefill_snapkv(&snap, &qt, &kt, &vt).unwrap();

        let mut core = LayerCache::<f32, _>::new(h, kv, d, policy).unwrap();
        let mut want = vec![0f32; seq * h * d];
        core.prefill_snapkv(&snap, &q, &k, &v, &mut want).unwrap();

        assert_eq!(out.dims(), [seq, h, d]);
        assert_eq!(out.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want, "{policy:?}");
        assert_eq!(tensor.layer().snapshot(), core.snapshot(), "{policy:?}: rows and scores");
        assert_eq!(tensor.layer().len(), policy.budget());

        // SnapKV chose differently from the column sums on this input.
        let mut plain = TensorLayerCache::new(LayerCache::<f32, _>::new(h, kv, d, policy).unwrap());
        plain.prefill(&qt, &kt, &vt).unwrap();
        if matches!(policy, AnyPolicy::H2O(_)) {
            assert_ne!(positions(plain.layer()), positions(tensor.layer()));
        }
        // Both keep the observation window.
        for head in positions(tensor.layer()) {
            assert!(head.ends_with(&[36, 37, 38, 39]), "{head:?}");
        }

        // The next decode step agrees too.
        let (q1, k1, v1) = (data(h * d, 4), data(kv * d, 5), data(kv * d, 6));
        let a = tensor
            .step(
                &Tensor::from_slice(&q1, (h, d), &dev).unwrap(),
                &Tensor::from_slice(&k1, (kv, d), &dev).unwrap(),
                &Tensor::from_slice(&v1, (kv, d), &dev).unwrap(),
            )
            .unwrap();
        let b = core.step(&q1, &k1, &v1).unwrap();
        assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b);
    }
}

#[test]
fn a_bad_snapkv_prefill_changes_nothing() {
    let (seq, h, kv, d) = (12, 4, 2, 8);
    let dev = Device::Cpu;
    let mut cache = TensorLayerCache::new(
        LayerCache::<f32, _>::new(h, kv, d, H2O::new(2, 2).unwrap()).unwrap(),
    );
    let q = Tensor::from_vec(data(seq * h * d, 7), (seq, h, d), &dev).unwrap();
    let k = Tensor::from_vec(data(seq * kv * d, 8), (seq, kv, d), &dev).unwrap();
    cache.prefill_snapkv(&SnapKv::default(), &q, &k, &k).unwrap();
    let before = cache.layer().snapshot();
    let short = k.narrow(0, 0, seq - 1).unwrap();
    let err = cache.prefill_snapkv(&SnapKv::default(), &q, &short, &k).unwrap_err();
    assert!(matches!(err, Error::Shape { what: "key", .. }), "{err:?}");
    let mut nan = data(seq * kv * d, 9);
    nan[5] = f32::NAN;
    let nan = Tensor::from_vec(nan, (seq, kv, d), &dev).unwrap();
    assert!(cache.prefill_snapkv(&SnapKv::default(), &q, &k, &nan).is_err());
    assert_eq!(cache.layer().snapshot(), before);
}

fn tiny() -> llama::Llama {
    let p = temp_file("prefill_paths.gguf", &tiny_gguf(&Tiny { context: 64, ..Tiny::default() }));
    llama::load(&p).unwrap().0
}

fn prompt(n: usize) -> Vec<u32> {
    (0..n).map(|i| 3 + ((i * 7 + i / 3) % 7) as u32).collect()
}

#[test]
fn a_snapkv_cache_prefills_alone_as_in_a_shared_prefill() {
    let model = tiny();
    let snap = SnapKv::new(4, 3).unwrap();
    let ids = prompt(30);
    let policy: AnyPolicy = H2O::new(6, 4).unwrap().into();
    let mut shared = vec![
        LlamaCache::full(model.config()).unwrap(),
        LlamaCache::new(model.config(), policy).unwrap().with_snapkv(snap),
        LlamaCache::new(model.config(), policy).unwrap(),
    ];
    let logits = model.prefill_shared(&mut shared, &ids).unwrap().to_vec1::<f32>().unwrap();
    let mut alone = LlamaCache::new(model.config(), policy).unwrap().with_snapkv(snap);
    let first = model.forward(&mut alone, &ids).unwrap().to_vec1::<f32>().unwrap();
    // The first cache's activations are the full cache's (exact attention).
    let mut full = LlamaCache::full(model.config()).unwrap();
    assert_eq!(model.forward(&mut full, &ids).unwrap().to_vec1::<f32>().unwrap(), logits);
    // A prefill's own activations do not depend on what it evicts at the end.
    assert_eq!(first, logits);
    for (a, b) in alone.layers().iter().zip(shared[1].layers()) {
        assert_eq!(a.snapshot(), b.snapshot());
    }
    // SnapKV kept something else than the column sums, and the window.
    let pos = |c: &LlamaCache| c.layers().iter().map(positions).collect::<Vec<_>>();
    assert_ne!(pos(&shared[1]), pos(&shared[2]));
    for layer in pos(&shared[1]) {
        for head in layer {
            assert_eq!(head.len(), 10);
            assert!(head.ends_with(&[26, 27, 28, 29]), "{head:?}");
        }
    }
}

#[test]
fn a_batched_decode_step_equals_one_step_per_cache() {
    let model = tiny();
    let ids = prompt(20);
    let policies: [AnyPolicy; 3] = [
        Full::new(64).unwrap().into(),
        H2O::new(3, 3).unwrap().into(),
        Recent::new(5).unwrap().into(),
    ];
    let mut caches: Vec<LlamaCache> =
        policies.iter().map(|&p| LlamaCache::new(model.config(), p).unwrap()).collect();
    model.prefill_shared(&mut caches, &ids).unwrap();
    // A cache one token ahead: positions differ per row.
    model.forward(&mut caches[2], &[4]).unwrap();
    for step in 0..6u32 {
        let tokens = [3 + step % 7, 5, 3 + (step * 3) % 7];
        let mut alone = caches.clone();
        let batched = model.decode_shared(&mut caches, &tokens).unwrap();
        assert_eq!(batched.dims(), [3, model.config().vocab_size]);
        for (i, (cache, &t)) in alone.iter_mut().zip(&tokens).enumerate() {
            let one = model.forward(cache, &[t]).unwrap();
            let row = batched.get(i).unwrap();
            let diff = (row - &one).unwrap().abs().unwrap().max(0).unwrap();
            let diff = diff.to_scalar::<f32>().unwrap();
            // f32 products over 3 rows against 1 row (another summation
            // order): rounding only; a wrong position or cache is O(scale).
            let scale = one.abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(diff <= 1e-4 * scale.max(1.0), "step {step}, cache {i}: {diff} of {scale}");
            for (a, b) in cache.layers().iter().zip(caches[i].layers()) {
                assert_eq!(positions(a), positions(b));
            }
        }
    }
    assert_eq!(caches.iter().map(LlamaCache::next_position).collect::<Vec<_>>(), [26, 26, 27]);
}

#[test]
fn a_bad_batched_step_changes_no_cache() {
    let model = tiny(); // context 64
    let mut caches = vec![
        LlamaCache::new(model.config(), Recent::new(4).unwrap().into()).unwrap(),
        LlamaCache::full(model.config()).unwrap(),
    ];
    let err = model.decode_shared(&mut caches, &[3]).unwrap_err();
    assert!(matches!(err, Error::BatchMismatch { tokens: 1, caches: 2 }), "{err:?}");
    let err = model.decode_shared(&mut caches, &[3, 99]).unwrap_err();
    assert!(matches!(err, Error::TokenOutOfRange { id: 99, .. }), "{err:?}");
    assert!(matches!(model.decode_shared(&mut caches, &[]).unwrap_err(), Error::NoTokens));
    model.forward(&mut caches[1], &prompt(64)).unwrap();
    let err = model.decode_shared(&mut caches, &[3, 4]).unwrap_err();
    assert!(matches!(err, Error::ContextExceeded { tokens: 65, capacity: 64 }), "{err:?}");
    assert_eq!(caches[0].next_position(), 0, "the first cache took nothing");
}

/// `(position, accumulated score)` of every resident token, per layer and KV head.
fn scored(c: &LlamaCache) -> Vec<Vec<Vec<(u64, f64)>>> {
    c.layers()
        .iter()
        .map(|l| {
            l.heads()
                .iter()
                .map(|h| {
                    let mut t: Vec<(u64, f64)> =
                        h.planner().residents().map(|(_, t)| (t.position, t.score)).collect();
                    t.sort_unstable_by_key(|t| t.0);
                    t
                })
                .collect()
        })
        .collect()
}

#[test]
fn derived_prefills_equal_direct_ones_for_every_policy() {
    let model = tiny();
    let ids = prompt(40);
    let config = model.config();
    let bounded = || -> Vec<LlamaCache> {
        let mut caches: Vec<LlamaCache> = h2o_kv::PolicyKind::ALL
            .iter()
            .filter(|&&k| k != h2o_kv::PolicyKind::Full)
            .map(|k| LlamaCache::new(config, k.with_budget(12, 0.5).unwrap()).unwrap())
            .collect();
        let snap = LlamaCache::new(config, H2O::new(8, 4).unwrap().into()).unwrap();
        caches.push(snap.with_snapkv(SnapKv::new(4, 3).unwrap()));
        caches
    };
    // Without a full cache (a temporary full layer is the source), and with
    // one in the middle of the list (it is the source).
    let with_full = || -> Vec<LlamaCache> {
        let mut c = bounded();
        c.insert(3, LlamaCache::full(config).unwrap());
        c
    };
    for mut shared in [bounded(), with_full()] {
        let logits = model.prefill_shared(&mut shared, &ids).unwrap().to_vec1::<f32>().unwrap();
        let tokens = vec![5u32; shared.len()];
        let next = model.decode_shared(&mut shared.clone(), &tokens).unwrap();
        let expected = if shared.len() > bounded().len() { with_full() } else { bounded() };
        for (i, (derived, mut alone)) in shared.iter().zip(expected).enumerate() {
            let direct = model.forward(&mut alone, &ids).unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(direct, logits, "cache {i}: the prefill's logits");
            let (a, b) = (scored(derived), scored(&alone));
            for (la, lb) in a.iter().flatten().zip(b.iter().flatten()) {
                let pos = |x: &[(u64, f64)]| x.iter().map(|t| t.0).collect::<Vec<_>>();
                assert_eq!(pos(la), pos(lb), "cache {i}: resident positions");
                for (x, y) in la.iter().zip(lb) {
                    assert!(
                        (x.1 - y.1).abs() <= 1e-9 * y.1.abs().max(1.0),
                        "cache {i}: {x:?} {y:?}"
                    );
                }
            }
            let one = model.forward(&mut alone, &[5]).unwrap();
            let scale = one.abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            let diff = (next.get(i).unwrap() - one).unwrap().abs().unwrap().max(0).unwrap();
            let diff = diff.to_scalar::<f32>().unwrap();
            // Batched against single-row products: rounding only.
            assert!(diff <= 1e-4 * scale.max(1.0), "cache {i}: the next step differs by {diff}");
        }
    }
}
