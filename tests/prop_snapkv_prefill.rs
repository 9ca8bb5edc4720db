//! SnapKV prefill compression against a model written here: naive f64
//! attention of a prompt on an empty cache, the observation window's column
//! sums, and the selection of `tests/common/brute_family.rs` (full sorts),
//! with the policy's sinks and recent window protected. Single heads and GQA
//! layers (each KV head selects from its query heads' summed weights), with
//! the policy's own type; kept positions must match exactly, except where
//! two pooled scores are within rounding of each other.

mod common;

use common::Rng;
use common::brute_family::snapkv_keep;
use h2o_kv::{EvictionPolicy, H2O, H2OSinks, KvCache, LayerCache, Recent, SnapKv, Tova};
use proptest::prelude::*;

/// Column sums of the last `w` rows of causal softmax attention, f64.
fn observed(q: &[f64], k: &[f64], d: usize, g: usize, w: usize, scale: f64) -> Vec<f64> {
    let p = k.len() / d;
    let mut sums = vec![0.0; p];
    for i in p - w..p {
        for h in 0..g {
            let qi = &q[(i * g + h) * d..][..d];
            let logits: Vec<f64> = (0..=i)
                .map(|j| scale * qi.iter().zip(&k[j * d..][..d]).map(|(a, b)| a * b).sum::<f64>())
                .collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let s: f64 = e.iter().sum();
            for j in 0..=i {
                sums[j] += e[j] / s;
            }
        }
    }
    sums
}

/// The positions SnapKV keeps for one head.
fn model_keep<P: EvictionPolicy>(policy: &P, snap: &SnapKv, sums: &[f64]) -> (Vec<u64>, Vec<f64>) {
    let (n, budget) = (sums.len(), policy.budget());
    if n <= budget {
        return ((0..n as u64).collect(), vec![]);
    }
    let sinks = policy.sinks().min(n);
    let tail = snap.window().max(policy.recent_window()).min(budget - sinks);
    let mut middle = sums[sinks..n - tail].to_vec();
    let k = budget - sinks - tail;
    middle.extend(std::iter::repeat_n(0.0, tail));
    let keep = snapkv_keep(&middle, tail, snap.kernel(), k + tail, true);
    let mut kept: Vec<u64> = (0..sinks as u64).collect();
    kept.extend((0..middle.len()).filter(|&i| keep[i]).map(|i| (sinks + i) as u64));
    // Pooled middle scores, for judging near-ties.
    let r = snap.kernel() / 2;
    let m = n - sinks - tail;
    let pooled = (0..m)
        .map(|j| {
            sums[sinks + j.saturating_sub(r)..sinks + (j + r + 1).min(m)]
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect();
    (kept, pooled)
}

#[derive(Debug, Clone)]
struct Case {
    policy: u8,
    budget: usize,
    window: usize,
    kernel: usize,
    p: usize,
    d: usize,
    n_kv: usize,
    g: usize,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        0u8..4,
        2usize..=12,
        1usize..=6,
        prop_oneof![Just(1usize), Just(3), Just(7)],
        1usize..=40,
        1usize..=8,
        1usize..=2,
        1usize..=3,
        any::<u64>(),
    )
        .prop_map(|(policy, budget, window, kernel, p, d, n_kv, g, seed)| Case {
            policy,
            budget,
            window,
            kernel,
            p,
            d,
            n_kv,
            g,
            seed,
        })
}

fn check<P: EvictionPolicy>(policy: P, c: &Case) -> Result<(), String> {
    let snap = SnapKv::new(c.window, c.kernel).unwrap();
    let mut rng = Rng::new(c.seed);
    let n_heads = c.n_kv * c.g;
    let mut layer = LayerCache::<f64, P>::new(n_heads, c.n_kv, c.d, policy.clone()).unwrap();
    let q: Vec<f64> = (0..c.p * n_heads * c.d).map(|_| 4.0 * rng.unit() - 2.0).collect();
    // Keys from a small set per head, so equal keys (exact ties) happen.
    let pool: Vec<f64> = (0..4 * c.d).map(|_| 4.0 * rng.unit() - 2.0).collect();
    let k: Vec<f64> =
        (0..c.p * c.n_kv).flat_map(|_| pool[rng.below(4) * c.d..][..c.d].to_vec()).collect();
    let mut out = vec![0.0; q.len()];
    layer.prefill_snapkv(&snap, &q, &k, &k, &mut out).map_err(|e| e.to_string())?;
    let scale = 1.0 / (c.d as f64).sqrt();
    for h in 0..c.n_kv {
        let qh: Vec<f64> = (0..c.p)
            .flat_map(|i| q[(i * n_heads + h * c.g) * c.d..][..c.g * c.d].to_vec())
            .collect();
        let kh: Vec<f64> =
            (0..c.p).flat_map(|i| k[(i * c.n_kv + h) * c.d..][..c.d].to_vec()).collect();
        let sums = observed(&qh, &kh, c.d, c.g, c.window.min(c.p), scale);
        let (want, pooled) = model_keep(&policy, &snap, &sums);
        let got = layer.heads()[h].resident_positions();
        if got != want {
            // Accept only a swap between pooled scores within rounding.
            let sinks = policy.sinks().min(c.p);
            let differ: Vec<u64> = got
                .iter()
                .chain(&want)
                .copied()
                .filter(|x| !(got.contains(x) && want.contains(x)))
                .collect();
            let near = differ.iter().all(|&x| {
                let i = x as usize - sinks;
                differ.iter().all(|&y| (pooled[i] - pooled[y as usize - sinks]).abs() < 1e-9)
            });
            if !near || got.len() != want.len() {
                return Err(format!("head {h}: kept {got:?}, the model keeps {want:?}"));
            }
        }
    }
    Ok(())
}

#[test]
fn snapkv_prefill_matches_the_model() {
    common::run("prop_snapkv_prefill", common::cases(800), case(), |c| match c.policy {
        0 => check(H2O::with_heavy_fraction(c.budget, 0.5).unwrap(), &c),
        1 => check(Recent::new(c.budget).unwrap(), &c),
        2 => check(Tova::new(c.budget).unwrap(), &c),
        _ => check(H2OSinks::new(c.budget / 2 + 1, c.budget - c.budget / 2 - 1, 1).unwrap(), &c),
    });
}

/// Without an eviction SnapKV changes nothing: the same state as a prefill.
#[test]
fn under_budget_it_is_an_ordinary_prefill() {
    let snap = SnapKv::default();
    let mut a = h2o_kv::H2OCache::<f64>::new(2, 8, 8).unwrap();
    let mut b = a.clone();
    let x: Vec<f64> = (0..20).map(|i| (i as f64 * 0.37).sin()).collect();
    let (mut oa, mut ob) = (vec![0.0; 20], vec![0.0; 20]);
    a.prefill_snapkv(&snap, &x, &x, &x, &mut oa).unwrap();
    b.prefill(&x, &x, &x, &mut ob).unwrap();
    assert_eq!(oa, ob);
    assert_eq!(a.tokens().collect::<Vec<_>>(), b.tokens().collect::<Vec<_>>());
}
