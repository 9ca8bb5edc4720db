//! The planner alone makes the decisions `Cache` makes (`docs/semantics.md §9`).
//!
//! 1. Random streams: a `Cache` decodes; a `Planner` is fed the weights the
//!    cache computed (read back through `last_attention`, which keeps the
//!    tokens the step evicted) and must keep, evict and score exactly as the
//!    cache does (slot by slot, scores bit for bit), for every policy and
//!    every step order.
//! 2. Golden traces: a `Planner` with a caller-owned `Vec<f32>` key/value
//!    store and a hand-written f64 attention (prefill and decode) replays the
//!    traces recorded from the H2O authors' code and must keep and evict
//!    exactly the positions the trace records.

use std::path::Path;

use h2o_kv::{
    AnyPolicy, Cache, Error, EvictionPolicy, H2O, KvCache, Planner, PolicyKind, PrefillStats,
    StepOrder,
};
use serde_json::Value;

/// xorshift64: values in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }

    fn row(&mut self, d: usize, scale: f32) -> Vec<f32> {
        (0..d).map(|_| scale * self.next()).collect()
    }
}

/// The cache's last attention as weights by planner slot (`[span]`).
fn weights_by_slot(cache: &Cache<f32, AnyPolicy>, planner: &Planner<AnyPolicy>) -> Vec<f64> {
    let mut w = vec![0.0; planner.span()];
    for e in cache.last_attention() {
        let slot = planner
            .residents()
            .find(|(_, t)| t.position == e.position)
            .map(|(s, _)| s)
            .expect("an attended token is resident in the planner");
        w[slot] = e.weight;
    }
    w
}

fn assert_same_state(
    cache: &Cache<f32, AnyPolicy>,
    planner: &Planner<AnyPolicy>,
    evicted: &[u64],
    ctx: &str,
) {
    assert_eq!(evicted, cache.last_evicted(), "{ctx}: evicted");
    let want: Vec<_> = cache.planner().residents().collect();
    let got: Vec<_> = planner.residents().collect();
    assert_eq!(got.len(), want.len(), "{ctx}: resident count");
    for ((gs, g), (ws, w)) in got.iter().zip(&want) {
        assert_eq!((gs, g.position), (ws, w.position), "{ctx}: slot layout");
        assert_eq!(g.score.to_bits(), w.score.to_bits(), "{ctx}: score of {}", g.position);
        assert_eq!(g.last_weight.to_bits(), w.last_weight.to_bits(), "{ctx}: last weight");
        assert_eq!(g.attended, w.attended, "{ctx}: attended");
    }
}

#[test]
fn fed_the_caches_weights_the_planner_decides_identically() {
    let d = 4;
    for kind in PolicyKind::ALL {
        for order in StepOrder::ALL {
            for (seed, spread) in [(1u64, 1.0f32), (7, 4.0), (99, 0.1)] {
                let budget = if kind == PolicyKind::Full { 400 } else { 7 };
                let policy = kind.with_budget(budget, 0.5).unwrap();
                let mut cache = Cache::<f32, AnyPolicy>::with_policy(d, policy).unwrap();
                let mut planner = Planner::new(policy).unwrap();
                let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
                let mut evictions = 0;
                for t in 0..300 {
                    let (q, k, v) = (rng.row(d, spread), rng.row(d, spread), rng.row(d, 1.0));
                    let ctx = format!("{kind} {order} seed {seed} step {t}");
                    cache.step_with(order, &q, &k, &v).unwrap();
                    let evicted: Vec<u64> = match order {
                        StepOrder::InsertAttendEvict => {
                            let staged = planner.stage().unwrap();
                            planner.insert(staged).unwrap();
                            let w = weights_by_slot(&cache, &planner);
                            planner.add_weights(&w, 1).unwrap();
                            planner.evict().iter().map(|e| e.position).collect()
                        }
                        StepOrder::AttendInsertEvict => {
                            let w = weights_by_slot(&cache, &planner);
                            planner.add_weights(&w, 1).unwrap();
                            let staged = planner.stage().unwrap();
                            planner.insert(staged).unwrap();
                            planner.evict().iter().map(|e| e.position).collect()
                        }
                        StepOrder::EvictInsertAttend => {
                            let staged = planner.stage().unwrap();
                            let evicted: Vec<u64> = planner
                                .insert_evicting(staged)
                                .unwrap()
                                .iter()
                                .map(|e| e.position)
                                .collect();
                            let w = weights_by_slot(&cache, &planner);
                            planner.add_weights(&w, 1).unwrap();
                            evicted
                        }
                    };
                    assert_same_state(&cache, &planner, &evicted, &ctx);
                    evictions += cache.last_evicted().len();
                }
                let expected = if kind == PolicyKind::Full { 0 } else { 300 - budget };
                assert_eq!(evictions, expected, "{kind} {order} seed {seed}: evictions");
            }
        }
    }
}

/// Evict-insert-attend through the planner's public calls reports the
/// evictions from `insert_evicting` and matches the cache slot for slot.
#[test]
fn insert_evicting_matches_the_cache() {
    let d = 3;
    for kind in [PolicyKind::Recent, PolicyKind::Heavy, PolicyKind::H2O] {
        let policy = kind.with_budget(5, 0.4).unwrap();
        let mut cache = Cache::<f32, AnyPolicy>::with_policy(d, policy).unwrap();
        let mut planner = Planner::new(policy).unwrap();
        let mut rng = Rng(12345);
        for t in 0..200 {
            let (q, k, v) = (rng.row(d, 2.0), rng.row(d, 2.0), rng.row(d, 1.0));
            cache.step_with(StepOrder::EvictInsertAttend, &q, &k, &v).unwrap();
            let staged = planner.stage().unwrap();
            let evicted: Vec<u64> =
                planner.insert_evicting(staged).unwrap().iter().map(|e| e.position).collect();
            assert_eq!(evicted, cache.last_evicted(), "{kind} step {t}");
            let w = weights_by_slot(&cache, &planner);
            planner.add_weights(&w, 1).unwrap();
            assert_eq!(cache.len(), (t + 1).min(5));
            let want: Vec<_> = cache.planner().residents().collect();
            let got: Vec<_> = planner.residents().collect();
            assert_eq!(got, want, "{kind} step {t}");
        }
    }
}

/// A stale stage and bad weights are errors that change nothing.
#[test]
fn bad_calls_change_nothing() {
    let mut p = Planner::new(H2O::new(1, 1).unwrap()).unwrap();
    let a = p.stage().unwrap();
    let b = p.stage().unwrap();
    p.insert(a).unwrap();
    let before = format!("{p:?}");
    assert_eq!(p.insert(b), Err(h2o_kv::Error::StaleStage));
    assert!(p.add_weights(&[0.5f32, 0.5], 1).is_err(), "span is 1");
    assert!(p.add_weights(&[f64::NAN], 1).is_err());
    assert!(p.add_weights(&[-0.5f64], 1).is_err());
    assert!(matches!(
        p.add_weights(&[1.0f64], 0),
        Err(Error::InvalidParameter { what: "group", .. })
    ));
    assert_eq!(format!("{p:?}"), before);
}

// ---- golden traces through a caller-owned store -------------------------

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().expect("number") as f32],
        other => panic!("expected numbers, got {other}"),
    }
}

fn ints(v: &Value) -> Vec<u64> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("position")).collect()
}

/// One head: a planner and the caller's own rows.
struct Head {
    planner: Planner<H2O>,
    d: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl Head {
    fn dot(&self, q: &[f32], slot: usize) -> f64 {
        let k = &self.keys[slot * self.d..][..self.d];
        q.iter().zip(k).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>()
            / (self.d as f64).sqrt()
    }

    /// A causal prefill of `p` rows through `Planner::prefill`.
    fn prefill(&mut self, q: &[f32], k: &[f32], v: &[f32], p: usize) {
        let (d, span) = (self.d, self.planner.span());
        let mut stats = PrefillStats {
            resident_gain: vec![0.0; span],
            resident_last: vec![0.0; span],
            chunk_scores: vec![0.0; p],
            chunk_last: vec![0.0; p],
        };
        for i in 0..p {
            let qi = &q[i * d..][..d];
            let mut logits: Vec<(bool, usize, f64)> = (0..span)
                .filter(|&s| self.planner.is_resident(s))
                .map(|s| (true, s, self.dot(qi, s)))
                .collect();
            for j in 0..=i {
                let kj = &k[j * d..][..d];
                let l = qi.iter().zip(kj).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>();
                logits.push((false, j, l / (d as f64).sqrt()));
            }
            let max = logits.iter().map(|x| x.2).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = logits.iter().map(|x| (x.2 - max).exp()).sum();
            for &(resident, at, l) in &logits {
                let w = (l - max).exp() / sum;
                let (total, last) = if resident {
                    (&mut stats.resident_gain[at], &mut stats.resident_last[at])
                } else {
                    (&mut stats.chunk_scores[at], &mut stats.chunk_last[at])
                };
                *total += w;
                if i + 1 == p {
                    *last = w;
                }
            }
        }
        let (keys, values) = (&mut self.keys, &mut self.values);
        self.planner
            .prefill(&stats, |j, slot| {
                keys[slot * d..][..d].copy_from_slice(&k[j * d..][..d]);
                values[slot * d..][..d].copy_from_slice(&v[j * d..][..d]);
            })
            .unwrap();
    }

    /// One insert-attend-evict step.
    fn step(&mut self, q: &[f32], k: &[f32], v: &[f32]) {
        let d = self.d;
        let staged = self.planner.stage().unwrap();
        self.keys[staged.slot() * d..][..d].copy_from_slice(k);
        self.values[staged.slot() * d..][..d].copy_from_slice(v);
        self.planner.insert(staged).unwrap();
        let span = self.planner.span();
        let logits: Vec<f64> = (0..span)
            .map(|s| if self.planner.is_resident(s) { self.dot(q, s) } else { f64::NEG_INFINITY })
            .collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        let w: Vec<f64> = e.iter().map(|x| x / sum).collect();
        self.planner.add_weights(&w, 1).unwrap();
        self.planner.evict();
    }
}

fn check(label: &str, rec: &Value, heads: &[Head]) {
    for (h, head) in heads.iter().enumerate() {
        let kept = ints(&rec["kept_positions"][h]);
        assert_eq!(head.planner.resident_positions(), kept, "{label} head {h}: kept");
        let evicted = ints(&rec["evicted_positions"][h]);
        assert_eq!(head.planner.last_evicted(), evicted, "{label} head {h}: evicted");
    }
}

#[test]
fn the_planner_replays_the_golden_traces() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/h2o_traces");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no traces in {}", dir.display());
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let trace: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let cfg = &trace["config"];
        let get = |k: &str| cfg[k].as_u64().unwrap() as usize;
        let (n, d, hh, recent) =
            (get("num_heads"), get("head_dim"), get("hh_size"), get("recent_size"));
        let mut heads: Vec<Head> = (0..n)
            .map(|_| {
                let planner = Planner::new(H2O::new(hh, recent).unwrap()).unwrap();
                let rows = planner.capacity() * d;
                Head { planner, d, keys: vec![0.0; rows], values: vec![0.0; rows] }
            })
            .collect();
        assert_eq!(heads[0].planner.policy().budget(), hh + recent);
        if let Some(pre) = trace["prefill"].as_object() {
            let (q, k, v) = (floats(&pre["q"]), floats(&pre["k"]), floats(&pre["v"]));
            let p = ints(&pre["positions"]).len();
            let rows = |x: &[f32], h: usize| -> Vec<f32> {
                (0..p).flat_map(|i| x[(i * n + h) * d..][..d].to_vec()).collect()
            };
            for (h, head) in heads.iter_mut().enumerate() {
                head.prefill(&rows(&q, h), &rows(&k, h), &rows(&v, h), p);
            }
            check(&format!("{name} prefill"), &trace["prefill"], &heads);
        }
        for rec in trace["steps"].as_array().unwrap() {
            let (q, k, v) = (floats(&rec["q"]), floats(&rec["k"]), floats(&rec["v"]));
            for (h, head) in heads.iter_mut().enumerate() {
                let r = h * d..(h + 1) * d;
                head.step(&q[r.clone()], &k[r.clone()], &v[r]);
            }
            check(&format!("{name} step {}", rec["step"]), rec, &heads);
        }
    }
}
