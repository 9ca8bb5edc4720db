//! Ada-KV inside the caches: `LayerCache::with_head_policies` (one policy
//! per KV head) and `adakv_from` (per-head budgets from a full prefill),
//! checked against a brute-force Ada-KV selection and each policy's rule.

mod common;

use common::Rng;
use h2o_kv::{
    AdaKv, AnyPolicy, Error, EvictionPolicy, Full, H2O, Heavy, KvCache, LayerCache, ModelCache,
    PolicyKind, Recent, StepOrder,
};

const N_HEADS: usize = 8;
const N_KV: usize = 4;
const D: usize = 4;

/// A full layer that took a random prompt of `p` tokens.
fn full_prefill(rng: &mut Rng, p: usize) -> LayerCache<f32, Full> {
    let q: Vec<f32> = rng.vec(p * N_HEADS * D);
    let k: Vec<f32> = rng.vec(p * N_KV * D);
    let v: Vec<f32> = rng.vec(p * N_KV * D);
    let mut full = LayerCache::new(N_HEADS, N_KV, D, Full::new(p.max(1)).unwrap()).unwrap();
    full.prefill(&q, &k, &v, &mut vec![0.0; p * N_HEADS * D]).unwrap();
    full
}

/// Each KV head's score per prompt position.
fn scores(full: &LayerCache<f32, Full>) -> Vec<Vec<f64>> {
    full.heads()
        .iter()
        .map(|h| {
            let mut row = vec![f64::NAN; h.len()];
            for t in h.tokens() {
                row[t.position as usize] = t.score;
            }
            row
        })
        .collect()
}

/// Ada-KV as its definition reads: every head first takes its own
/// `floor(safeguard · total / n_kv)` best tokens, the rest of `total` goes to
/// the best remaining (head, token) pairs of the whole layer (higher score,
/// then lower head, then older token). Everything fits: an equal split.
fn brute_budgets(s: &[Vec<f64>], total: usize, safeguard: f64) -> Vec<usize> {
    let (n_kv, p) = (s.len(), s[0].len());
    if total >= n_kv * p {
        return (0..n_kv).map(|h| total / n_kv + usize::from(h < total % n_kv)).collect();
    }
    let safe = ((safeguard * (total as f64 / n_kv as f64)).floor() as usize).min(p);
    let mut picked = vec![vec![false; p]; n_kv];
    for (h, row) in s.iter().enumerate() {
        let mut order: Vec<usize> = (0..p).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &j in &order[..safe] {
            picked[h][j] = true;
        }
    }
    let mut rest: Vec<(usize, usize)> = (0..n_kv)
        .flat_map(|h| (0..p).map(move |j| (h, j)))
        .filter(|&(h, j)| !picked[h][j])
        .collect();
    rest.sort_by(|&(h, j), &(g, i)| s[g][i].total_cmp(&s[h][j]).then(h.cmp(&g)).then(j.cmp(&i)));
    let mut budgets = vec![safe; n_kv];
    for &(h, _) in &rest[..total - n_kv * safe] {
        budgets[h] += 1;
    }
    budgets
}

/// What a heavy-hitter policy with `heavy` + `recent` keeps of a prompt
/// whose scores are `row`: the newest `recent` positions and the `heavy`
/// best of the others (ties: the older).
fn brute_kept(row: &[f64], heavy: usize, recent: usize) -> Vec<u64> {
    let p = row.len();
    if heavy + recent >= p {
        return (0..p as u64).collect();
    }
    let mut old: Vec<usize> = (0..p - recent).collect();
    old.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    let mut kept: Vec<u64> = old[..heavy].iter().map(|&j| j as u64).collect();
    kept.extend((p - recent..p).map(|j| j as u64));
    kept.sort_unstable();
    kept
}

fn positions<P: EvictionPolicy>(layer: &LayerCache<f32, P>) -> Vec<Vec<u64>> {
    layer.heads().iter().map(KvCache::resident_positions).collect()
}

#[test]
fn kept_sets_equal_a_brute_force_ada_kv_selection() {
    let mut rng = Rng::new(0xada);
    let (mut zero_budget_cases, mut unequal_cases) = (0, 0);
    for round in 0..60 {
        let p = 4 + rng.below(40);
        let full = full_prefill(&mut rng, p);
        let s = scores(&full);
        let safeguard = [0.0, 0.2, 0.5, 0.9][round % 4];
        let ada = AdaKv::new(safeguard).unwrap();
        let total = N_KV + rng.below(N_KV * p + 4);
        let budgets = brute_budgets(&s, total, safeguard);
        assert_eq!(full.adakv_budgets(&ada, total).unwrap(), budgets, "round {round}");
        assert_eq!(budgets.iter().sum::<usize>(), total, "budgets sum to the layer's total");
        let what = format!("round {round}: P {p}, total {total}, safeguard {safeguard}");
        unequal_cases +=
            usize::from(budgets.iter().max().unwrap() - budgets.iter().min().unwrap() > 1);
        if budgets.contains(&0) {
            // Heavy refuses a zero budget, and nothing is built.
            let err = LayerCache::<f32, Heavy>::adakv_from(&full, &ada, total, Heavy::new);
            assert!(matches!(err, Err(Error::ZeroBudget)), "{what}: {err:?}");
            zero_budget_cases += 1;
            continue;
        }
        // Heavy: the newest token plus budget − 1 heavy hitters.
        let heavy = LayerCache::adakv_from(&full, &ada, total, Heavy::new).unwrap();
        assert_eq!(heavy.head_budgets().collect::<Vec<_>>(), budgets, "{what}");
        assert_eq!(heavy.total_budget(), total, "{what}");
        for (h, kept) in positions(&heavy).iter().enumerate() {
            assert_eq!(kept, &brute_kept(&s[h], budgets[h] - 1, 1), "{what}, head {h}");
        }
        // H2O with half its budget heavy.
        let h2o = LayerCache::adakv_from(&full, &ada, total, |b| H2O::with_heavy_fraction(b, 0.5))
            .unwrap();
        for (h, kept) in positions(&h2o).iter().enumerate() {
            let heavy = budgets[h] / 2;
            assert_eq!(kept, &brute_kept(&s[h], heavy, budgets[h] - heavy), "{what}, head {h}");
        }
        // Decoding goes on, each head within its own budget.
        let mut layer = heavy;
        for _ in 0..3 {
            let (q, k, v): (Vec<f32>, Vec<f32>, Vec<f32>) =
                (rng.vec(N_HEADS * D), rng.vec(N_KV * D), rng.vec(N_KV * D));
            layer.step(&q, &k, &v).unwrap();
        }
        for (head, b) in layer.heads().iter().zip(&budgets) {
            assert_eq!(head.len(), (*b).min(p + 3), "{what}");
        }
        assert_eq!(layer.len(), layer.heads().iter().map(KvCache::len).max().unwrap());
        assert_eq!(layer.next_position(), p as u64 + 3);
    }
    assert!(zero_budget_cases > 0, "the zero-budget path was not exercised");
    assert!(unequal_cases > 10, "too few head-adaptive splits: {unequal_cases}");
}

#[test]
fn heads_that_focus_keep_fewer_tokens() {
    // Hand-made keys: KV head 0's queries meet one key far above the rest
    // (concentrated attention), KV head 1's meet equal keys (diffuse).
    let (n_heads, n_kv, d, p) = (2, 2, 1, 8);
    let mut q = Vec::new();
    let mut k = Vec::new();
    for j in 0..p {
        q.extend([1.0f64, 1.0]);
        k.extend([if j == 0 { 8.0 } else { 0.0 }, 0.5]);
    }
    let mut full = LayerCache::new(n_heads, n_kv, d, Full::new(p).unwrap()).unwrap();
    full.prefill(&q, &k, &k, &mut vec![0.0; p * n_heads * d]).unwrap();
    let layer = LayerCache::adakv_from(&full, &AdaKv::new(0.25).unwrap(), 8, Heavy::new).unwrap();
    let b: Vec<usize> = layer.head_budgets().collect();
    assert_eq!(b.iter().sum::<usize>(), 8);
    // floor(0.25 · 8 / 2) = 1 guaranteed each; head 0 wins no other pick.
    assert_eq!(b, [1, 7]);
    assert_eq!(layer.heads()[0].resident_positions(), [7]);
    assert_eq!(layer.heads()[1].len(), 7);
}

#[test]
fn a_full_safeguard_is_a_uniform_split() {
    let mut rng = Rng::new(17);
    for _ in 0..20 {
        let p = 6 + rng.below(30);
        let full = full_prefill(&mut rng, p);
        let per_head = 1 + rng.below(p - 1);
        let total = per_head * N_KV;
        let ada = AdaKv::new(1.0).unwrap();
        let layer = LayerCache::adakv_from(&full, &ada, total, Heavy::new).unwrap();
        assert!(layer.head_budgets().all(|b| b == per_head));
        let mut uniform = LayerCache::new(N_HEADS, N_KV, D, Heavy::new(per_head).unwrap()).unwrap();
        uniform.prefill_from(&full).unwrap();
        assert_eq!(layer.snapshot(), uniform.snapshot(), "P {p}, {per_head} per head");
    }
}

#[test]
fn a_total_that_covers_the_prompt_is_split_equally() {
    let mut rng = Rng::new(5);
    let p = 6;
    let full = full_prefill(&mut rng, p);
    for total in [N_KV * p, N_KV * p + 3, 100] {
        let layer = LayerCache::adakv_from(&full, &AdaKv::default(), total, Heavy::new).unwrap();
        let b: Vec<usize> = layer.head_budgets().collect();
        assert_eq!(b.iter().sum::<usize>(), total);
        assert!(b.iter().all(|&x| x == total / N_KV || x == total / N_KV + 1), "{b:?}");
        assert!(layer.heads().iter().all(|h| h.len() == p), "nothing is evicted");
    }
    // An empty prompt: an equal split, nothing resident.
    let empty = LayerCache::<f32, _>::new(N_HEADS, N_KV, D, Full::new(4).unwrap()).unwrap();
    let layer = LayerCache::adakv_from(&empty, &AdaKv::default(), 10, Heavy::new).unwrap();
    assert_eq!(layer.head_budgets().collect::<Vec<_>>(), [3, 3, 2, 2]);
    assert!(layer.is_empty());
}

#[test]
fn bad_input_is_an_error_and_changes_nothing() {
    let mut rng = Rng::new(23);
    let p = 10;
    let full = full_prefill(&mut rng, p);
    let before = full.snapshot();
    let ada = AdaKv::default();
    // Too small a total: every head needs a token.
    for total in [0, N_KV - 1] {
        let err = LayerCache::adakv_from(&full, &ada, total, Heavy::new).unwrap_err();
        assert!(matches!(err, Error::InvalidParameter { what: "ada-kv total", .. }), "{err:?}");
    }
    // The policy closure's error comes back as is.
    let err = LayerCache::<f32, Heavy>::adakv_from(&full, &ada, 12, |_| Heavy::new(0));
    assert_eq!(err.unwrap_err(), Error::ZeroBudget);
    assert_eq!(full.snapshot(), before, "the source never changes");

    // A source that evicted.
    let q: Vec<f32> = rng.vec(p * N_HEADS * D);
    let k: Vec<f32> = rng.vec(p * N_KV * D);
    let mut recent = LayerCache::new(N_HEADS, N_KV, D, Recent::new(4).unwrap()).unwrap();
    recent.prefill(&q, &k, &k, &mut vec![0.0; p * N_HEADS * D]).unwrap();
    let err = LayerCache::adakv_from(&recent, &ada, 8, Heavy::new).unwrap_err();
    assert!(matches!(err, Error::PrefillSource { .. }), "{err:?}");

    // A source decoded in attend-insert-evict order (not a prefill's scores).
    let mut other = LayerCache::new(N_HEADS, N_KV, D, Full::new(p).unwrap()).unwrap();
    for i in 0..3 {
        other
            .step_with(
                StepOrder::AttendInsertEvict,
                &q[i * N_HEADS * D..][..N_HEADS * D],
                &k[i * N_KV * D..][..N_KV * D],
                &k[i * N_KV * D..][..N_KV * D],
            )
            .unwrap();
    }
    let other_before = other.snapshot();
    let err = LayerCache::adakv_from(&other, &ada, 8, Heavy::new).unwrap_err();
    assert!(matches!(err, Error::PrefillSource { .. }), "{err:?}");
    assert_eq!(other.snapshot(), other_before);

    // Model level: one total per layer; a source between layers.
    let mut model = ModelCache::<f32, _>::new(2, N_HEADS, N_KV, D, Full::new(p).unwrap()).unwrap();
    let err = ModelCache::adakv_from(&model, &ada, &[8], Heavy::new).unwrap_err();
    assert!(matches!(err, Error::LengthMismatch { what: "ada-kv totals", .. }), "{err:?}");
    model.step(0, &q[..N_HEADS * D], &k[..N_KV * D], &k[..N_KV * D]).unwrap();
    let model_before = model.snapshot();
    let err = ModelCache::adakv_from(&model, &ada, &[8, 8], Heavy::new).unwrap_err();
    assert!(matches!(err, Error::PrefillSource { .. }), "{err:?}");
    assert_eq!(model.snapshot(), model_before);
}

#[test]
fn a_model_cache_applies_ada_kv_per_layer() {
    let mut rng = Rng::new(31);
    let (layers, p) = (3, 24);
    let mut full =
        ModelCache::<f32, _>::new(layers, N_HEADS, N_KV, D, Full::new(p).unwrap()).unwrap();
    for l in 0..layers {
        let (q, k, v): (Vec<f32>, Vec<f32>, Vec<f32>) =
            (rng.vec(p * N_HEADS * D), rng.vec(p * N_KV * D), rng.vec(p * N_KV * D));
        full.prefill(l, &q, &k, &v, &mut vec![0.0; p * N_HEADS * D]).unwrap();
    }
    let ada = AdaKv::new(0.5).unwrap();
    let totals = [40, 24, 12];
    let model = ModelCache::adakv_from(&full, &ada, &totals, Heavy::new).unwrap();
    assert_eq!(model.position(), p as u64);
    for (l, layer) in model.layers().iter().enumerate() {
        assert_eq!(layer.total_budget(), totals[l]);
        let alone = LayerCache::adakv_from(&full.layers()[l], &ada, totals[l], Heavy::new).unwrap();
        assert_eq!(layer.snapshot(), alone.snapshot(), "layer {l}");
    }
    // It decodes under the turn rule and round-trips through a snapshot.
    let mut model = model;
    for l in 0..layers {
        let (q, k, v): (Vec<f32>, Vec<f32>, Vec<f32>) =
            (rng.vec(N_HEADS * D), rng.vec(N_KV * D), rng.vec(N_KV * D));
        model.step(l, &q, &k, &v).unwrap();
    }
    let restored = ModelCache::<f32, Heavy>::from_snapshot(&model.snapshot()).unwrap();
    assert_eq!(restored.snapshot(), model.snapshot());
    assert_eq!(
        restored.layers()[2].head_budgets().collect::<Vec<_>>(),
        model.layers()[2].head_budgets().collect::<Vec<_>>()
    );
}

#[test]
fn unequal_heads_behave_as_separate_caches() {
    let budgets = [2, 5, 3, 8];
    let policies = budgets.map(|b| Heavy::new(b).unwrap());
    let mut layer = LayerCache::<f64, _>::with_head_policies(N_HEADS, D, policies).unwrap();
    assert_eq!((layer.n_kv_heads(), layer.group_size()), (N_KV, 2));
    assert_eq!((layer.budget(), layer.total_budget()), (8, 18));
    let mut rng = Rng::new(41);
    // Each KV head equals a one-KV-head layer of its own budget fed its rows.
    let g = N_HEADS / N_KV;
    let mut alone: Vec<_> = budgets
        .iter()
        .map(|&b| LayerCache::<f64, _>::new(g, 1, D, Heavy::new(b).unwrap()).unwrap())
        .collect();
    for t in 0..12 {
        let (q, k, v): (Vec<f64>, Vec<f64>, Vec<f64>) =
            (rng.vec(N_HEADS * D), rng.vec(N_KV * D), rng.vec(N_KV * D));
        let out = layer.step(&q, &k, &v).unwrap().to_vec();
        for (h, c) in alone.iter_mut().enumerate() {
            let o = c.step(&q[h * g * D..][..g * D], &k[h * D..][..D], &v[h * D..][..D]).unwrap();
            assert_eq!(&out[h * g * D..][..g * D], o, "step {t}, head {h}");
            let (a, b) = (&layer.heads()[h], &c.heads()[0]);
            assert_eq!(a.resident_positions(), b.resident_positions());
        }
        assert_eq!(layer.len(), (t + 1).min(8));
    }
    let bytes: usize = alone.iter().map(LayerCache::kv_bytes).sum();
    assert_eq!(layer.kv_bytes(), bytes);

    // Snapshots keep each head's policy.
    let restored = LayerCache::<f64, Heavy>::from_snapshot(&layer.snapshot()).unwrap();
    assert_eq!(restored.head_budgets().collect::<Vec<_>>(), budgets);
    assert_eq!(restored.snapshot(), layer.snapshot());

    // A fork copies into a layer of the same per-head policies only.
    let mut spare = layer.clone();
    spare.reset();
    spare.copy_from(&layer).unwrap();
    assert_eq!(spare.snapshot(), layer.snapshot());
    let mut uniform = LayerCache::<f64, _>::new(N_HEADS, N_KV, D, Heavy::new(8).unwrap()).unwrap();
    let before = uniform.snapshot();
    assert!(matches!(uniform.copy_from(&layer), Err(Error::ShapeMismatch { .. })));
    assert_eq!(uniform.snapshot(), before);

    // Truncate: the newest token is resident in every head.
    layer.truncate(1).unwrap();
    assert_eq!(layer.next_position(), 11);
    assert_eq!(layer.heads()[0].len(), 1);
    assert!(layer.truncate(2).is_err(), "head 0 (budget 2) no longer holds position 9");
    assert_eq!(layer.next_position(), 11);
}

#[test]
fn equal_head_policies_are_the_plain_constructor() {
    let mut rng = Rng::new(43);
    let p = H2O::new(3, 2).unwrap();
    let mut a = LayerCache::<f32, _>::with_head_policies(N_HEADS, D, [p; N_KV]).unwrap();
    let mut b = LayerCache::<f32, _>::new(N_HEADS, N_KV, D, p).unwrap();
    for _ in 0..10 {
        let (q, k, v): (Vec<f32>, Vec<f32>, Vec<f32>) =
            (rng.vec(N_HEADS * D), rng.vec(N_KV * D), rng.vec(N_KV * D));
        assert_eq!(a.step(&q, &k, &v).unwrap(), b.step(&q, &k, &v).unwrap());
    }
    assert_eq!(a.snapshot(), b.snapshot());
    assert_eq!((a.budget(), a.total_budget(), a.len()), (5, 5 * N_KV, 5));
}

#[test]
fn the_derived_layer_keeps_the_source_scale_and_takes_any_policy() {
    let mut rng = Rng::new(47);
    let p = 12;
    let (q, k): (Vec<f32>, Vec<f32>) = (rng.vec(p * N_HEADS * D), rng.vec(p * N_KV * D));
    let mut full =
        LayerCache::new(N_HEADS, N_KV, D, Full::new(p).unwrap()).unwrap().with_scale(0.25).unwrap();
    full.prefill(&q, &k, &k, &mut vec![0.0; p * N_HEADS * D]).unwrap();
    let ada = AdaKv::new(0.5).unwrap();
    let layer = LayerCache::<f32, AnyPolicy>::adakv_from(&full, &ada, 16, |b| {
        PolicyKind::H2O.with_budget(b, 0.5)
    })
    .unwrap();
    assert!(layer.heads().iter().all(|h| h.scale() == 0.25));
    assert_eq!(layer.total_budget(), 16);
    // The same budgets under a typed policy keep the same tokens.
    let typed =
        LayerCache::adakv_from(&full, &ada, 16, |b| H2O::with_heavy_fraction(b, 0.5)).unwrap();
    assert_eq!(positions(&layer), positions(&typed));
}

#[test]
fn bad_head_policies_are_refused() {
    let h = Heavy::new(2).unwrap();
    for (n_heads, policies) in [(4, vec![]), (3, vec![h, h]), (0, vec![h])] {
        let n_kv = policies.len();
        let err = LayerCache::<f32, _>::with_head_policies(n_heads, D, policies).unwrap_err();
        assert_eq!(err, Error::InvalidHeadCounts { n_heads, n_kv_heads: n_kv });
    }
    assert_eq!(
        LayerCache::<f32, _>::with_head_policies(2, 0, [h, h]).unwrap_err(),
        Error::ZeroHeadDim
    );
}
