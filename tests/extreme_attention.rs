//! Extreme attention: logit spreads up to 1e4 (softmax weights underflow to
//! exact zero), all-equal keys and exact ties (decisions follow the tie rule),
//! one-token budgets, and budgets larger than the stream.

use h2o_kv::{
    Accumulator, AnyPolicy, Cache, Element, EvictionPolicy, Full, FullCache, H2O, H2OCache, Heavy,
    KvCache, Recent, RecentOnly, TieRule,
};

fn t<T: Element>(x: f64) -> T {
    T::from_acc(<T::Acc as Accumulator>::narrow(x))
}

fn row<T: Element>(xs: &[f64]) -> Vec<T> {
    xs.iter().map(|&x| t(x)).collect()
}

/// A logit spread of `spread`: token 0's key is `spread · e0`, the others are
/// spaced 1000 apart below it; every query is `e0` and the scale is 1.
fn check_spread<T: Element>(spread: f64) {
    // Neighbours 1000 apart: exp(-1000) is 0 in f32 and in f64 (f64
    // underflows below exp(-745)).
    let n = 1 + (spread / 1000.0) as usize;
    let mut c = FullCache::<T>::new(2, n).unwrap().with_scale(1.0).unwrap();
    for i in 0..n {
        let k = row::<T>(&[spread * (1.0 - i as f64 / (n - 1) as f64), 0.0]);
        c.insert(&k, &row::<T>(&[i as f64, -(i as f64)])).unwrap();
    }
    let out = c.attend(&row::<T>(&[1.0, 0.0])).unwrap().to_vec();
    let weights: Vec<f64> = c.last_attention().map(|e| e.weight).collect();
    // Every weight but the top one is exactly 0.
    assert_eq!(weights[0], 1.0, "spread {spread}");
    assert!(weights[1..].iter().all(|&w| w == 0.0), "spread {spread}: {weights:?}");
    assert_eq!(out, row::<T>(&[0.0, 0.0]), "the output is token 0's value exactly");
    assert_eq!(c.score_of(0), Some(1.0));
    assert!((1..n as u64).all(|p| c.score_of(p) == Some(0.0)));
    assert!(c.tokens().all(|t| t.score.is_finite()));
}

#[test]
fn logit_spreads_up_to_1e4_underflow_to_exact_zero() {
    for spread in [1e3, 5e3, 1e4] {
        check_spread::<f32>(spread);
        check_spread::<f64>(spread);
    }
}

#[test]
fn moderate_spreads_keep_subnormal_weights() {
    // In f32 exp(-100) ≈ 3.7e-44 is subnormal: it must be kept, not flushed.
    let mut c = FullCache::<f32>::new(1, 2).unwrap().with_scale(1.0).unwrap();
    c.insert(&[100.0], &[1.0]).unwrap();
    c.insert(&[0.0], &[1.0]).unwrap();
    c.attend(&[1.0]).unwrap();
    let w: Vec<f64> = c.last_attention().map(|e| e.weight).collect();
    assert_eq!(w[0], 1.0);
    assert!(w[1] > 0.0 && w[1] < f64::from(f32::MIN_POSITIVE), "{w:?}");
    assert!(c.score_of(1).unwrap() > 0.0);
}

#[test]
fn prefill_with_a_1e4_spread_is_exact() {
    // Causal prefill where token 0 dominates every row.
    let p = 6;
    let mut keys = vec![0.0f32; p * 2];
    keys[0] = 1e4;
    let queries: Vec<f32> = (0..p).flat_map(|_| [1.0, 0.0]).collect();
    let values: Vec<f32> = (0..p).flat_map(|i| [i as f32, 1.0]).collect();
    let mut c = H2OCache::<f32>::new(2, 2, 2).unwrap().with_scale(1.0).unwrap();
    let mut out = vec![0.0; p * 2];
    c.prefill(&queries, &keys, &values, &mut out).unwrap();
    assert_eq!(out, (0..p).flat_map(|_| [0.0, 1.0]).collect::<Vec<_>>());
    // Token 0 has every row's weight; the others none, a tie at exactly 0
    // broken by KeepOlder: the heavy slot left goes to the oldest, token 1.
    assert_eq!(c.score_of(0), Some(p as f64));
    assert_eq!(c.resident_positions(), [0, 1, 4, 5]);
    assert_eq!(c.last_evicted(), [2, 3]);
}

/// Ties everywhere: a sink (key `S·e0`) takes all the weight and every other
/// token has the same key `e1`, so every other score is exactly 0. The tie
/// rule alone decides which of them stay.
fn ties_everywhere<P: EvictionPolicy>(policy: P, tie: TieRule, steps: u64) -> Vec<u64> {
    let mut c = Cache::<f64, P>::with_policy(2, policy.clone()).unwrap().with_scale(1.0).unwrap();
    for s in 0..steps {
        let k = if s == 0 { [1e4, 0.0] } else { [0.0, 1.0] };
        let out = c.step(&[1.0, 0.0], &k, &[s as f64, 0.0]).unwrap();
        assert_eq!(out, [0.0, 0.0], "all weight on the sink");
    }
    assert_eq!(c.score_of(0), Some(steps as f64));
    assert!(c.tokens().filter(|t| t.position != 0).all(|t| t.score == 0.0));
    // Run again: the same decisions (determinism).
    let mut again = Cache::<f64, P>::with_policy(2, policy).unwrap().with_scale(1.0).unwrap();
    for s in 0..steps {
        let k = if s == 0 { [1e4, 0.0] } else { [0.0, 1.0] };
        again.step(&[1.0, 0.0], &k, &[s as f64, 0.0]).unwrap();
    }
    assert_eq!(again.resident_positions(), c.resident_positions(), "{tie:?}");
    c.resident_positions()
}

#[test]
fn exact_ties_follow_the_tie_rule() {
    let n = 40;
    for (heavy, recent) in [(3, 2), (4, 1), (2, 0), (1, 3)] {
        let h2o = H2O::new(heavy, recent).unwrap();
        // KeepOlder: the sink and the oldest heavy − 1 others stay, then the window.
        let mut older: Vec<u64> = (0..heavy as u64).collect();
        older.extend(n - recent as u64..n);
        older.dedup();
        // KeepNewer: the sink, then the newest heavy − 1 + recent tokens.
        let mut newer = vec![0];
        newer.extend(n - (heavy - 1 + recent) as u64..n);
        if heavy == 0 {
            newer = (n - recent as u64..n).collect();
        }
        assert_eq!(ties_everywhere(h2o, TieRule::KeepOlder, n), older, "h2o {heavy}+{recent}");
        let h2o_newer = h2o.with_tie_rule(TieRule::KeepNewer);
        assert_eq!(
            ties_everywhere(h2o_newer, TieRule::KeepNewer, n),
            newer,
            "h2o {heavy}+{recent}"
        );
    }
    // HeavyOnly protects the newest token only.
    let heavy = Heavy::new(4).unwrap();
    assert_eq!(ties_everywhere(heavy, TieRule::KeepOlder, n), [0, 1, 2, n - 1]);
    let heavy = heavy.with_tie_rule(TieRule::KeepNewer);
    assert_eq!(ties_everywhere(heavy, TieRule::KeepNewer, n), [0, n - 3, n - 2, n - 1]);
    // The same through AnyPolicy.
    let any = AnyPolicy::from(H2O::new(3, 2).unwrap().with_tie_rule(TieRule::KeepNewer));
    assert_eq!(ties_everywhere(any, TieRule::KeepNewer, n), [0, n - 4, n - 3, n - 2, n - 1]);
}

#[test]
fn all_equal_keys_give_uniform_weights_and_exact_scores() {
    // 7 kept + 1 inserted = 8 tokens per attention: each weight is exactly
    // 1/8, and a token's score is exactly (steps it was resident) / 8, so the
    // decisions are exact: the newest candidate always has the lowest score.
    for tie in [TieRule::KeepOlder, TieRule::KeepNewer] {
        let policy = H2O::new(4, 3).unwrap().with_tie_rule(tie);
        let mut c = Cache::<f32, _>::with_policy(3, policy).unwrap();
        let mut kept: Vec<u64> = Vec::new();
        let k = [0.25f32, -0.5, 1.0];
        for s in 0..60u64 {
            let v = [s as f32, 1.0, -1.0];
            c.step(&[1.0, 2.0, 3.0], &k, &v).unwrap();
            kept.push(s);
            if kept.len() > 7 {
                // The candidates are all but the 3 newest; the newest of them
                // was resident the fewest steps.
                let victim = kept[kept.len() - 4];
                kept.retain(|&p| p != victim);
                assert_eq!(c.last_evicted(), [victim], "step {s} {tie:?}");
            }
            assert_eq!(c.resident_positions(), kept);
            // Tokens inserted once the cache was full shared every attention
            // with 7 others: score = (steps resident) / 8, exactly.
            for &p in kept.iter().filter(|&&p| p >= 7) {
                assert_eq!(c.score_of(p), Some((s - p + 1) as f64 / 8.0), "pos {p} step {s}");
            }
        }
        assert_eq!(kept[..4], [0, 1, 2, 3], "the first heavy hitters are never displaced");
    }
}

/// An independent model for small budgets: resident tokens with f64 scores,
/// attention in f64, the policy's rule applied naively.
struct Model {
    recent: usize,
    budget: usize,
    evicts: bool,
    tie: TieRule,
    /// (position, key, value, score), oldest first.
    tokens: Vec<(u64, Vec<f64>, Vec<f64>, f64)>,
    next: u64,
}

impl Model {
    fn step(&mut self, q: &[f64], k: &[f64], v: &[f64], scale: f64) -> Vec<f64> {
        self.tokens.push((self.next, k.to_vec(), v.to_vec(), 0.0));
        self.next += 1;
        let logits: Vec<f64> = self
            .tokens
            .iter()
            .map(|t| scale * t.1.iter().zip(q).map(|(a, b)| a * b).sum::<f64>())
            .collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let z: f64 = e.iter().sum();
        let mut out = vec![0.0; q.len()];
        for (t, w) in self.tokens.iter_mut().zip(&e) {
            t.3 += w / z;
            for (o, x) in out.iter_mut().zip(&t.2) {
                *o += w / z * x;
            }
        }
        while self.evicts && self.tokens.len() > self.budget {
            let n = self.tokens.len() - self.recent.min(self.tokens.len());
            let mut best = 0;
            for i in 1..n {
                let (a, b) = (self.tokens[i].3, self.tokens[best].3);
                if a < b || (a == b && self.tie == TieRule::KeepOlder) {
                    best = i;
                }
            }
            self.tokens.remove(best);
        }
        out
    }
    fn positions(&self) -> Vec<u64> {
        self.tokens.iter().map(|t| t.0).collect()
    }
}

fn check_against_model<P: EvictionPolicy>(policy: P, steps: usize) {
    let d = 3;
    let mut c = Cache::<f64, P>::with_policy(d, policy.clone()).unwrap();
    let mut m = Model {
        recent: policy.recent_window(),
        budget: policy.budget(),
        evicts: policy.evicts(),
        tie: TieRule::KeepOlder,
        tokens: Vec::new(),
        next: 0,
    };
    let scale = 1.0 / (d as f64).sqrt();
    for s in 0..steps {
        let x = s as f64;
        let q = [(x * 0.7).sin(), (x * 1.3).cos(), 0.5];
        let k = [(x * 0.3).cos(), (x * 2.1).sin(), -0.25];
        let v = [x, -x, 1.0];
        let got = c.step(&q, &k, &v).unwrap().to_vec();
        let want = m.step(&q, &k, &v, scale);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
                "{} step {s}: {g} vs {w}",
                policy.name()
            );
        }
        assert_eq!(c.resident_positions(), m.positions(), "{} step {s}", policy.name());
    }
}

#[test]
fn one_token_budgets() {
    check_against_model(H2O::new(1, 0).unwrap(), 30);
    check_against_model(H2O::new(0, 1).unwrap(), 30);
    check_against_model(Recent::new(1).unwrap(), 30);
    check_against_model(Heavy::new(1).unwrap(), 30);
    check_against_model(AnyPolicy::from(H2O::new(1, 0).unwrap()), 30);
    // A one-token full cache takes one token, then refuses.
    let mut c = FullCache::<f32>::new(2, 1).unwrap();
    assert_eq!(c.step(&[1.0, 0.0], &[1.0, 0.0], &[3.0, 4.0]).unwrap(), [3.0, 4.0]);
    assert!(c.step(&[1.0, 0.0], &[1.0, 0.0], &[3.0, 4.0]).is_err());
    // Budget 1 keeps exactly one token after every step.
    let mut c = RecentOnly::<f32>::new(2, 1).unwrap();
    for s in 0..10u64 {
        c.step(&[1.0, 0.0], &[0.5, 0.5], &[1.0, 1.0]).unwrap();
        assert_eq!(c.resident_positions(), [s]);
        assert_eq!(c.last_evicted(), if s == 0 { vec![] } else { vec![s - 1] });
    }
}

#[test]
fn budgets_larger_than_the_stream_equal_a_full_cache() {
    let (d, n) = (4, 30);
    let mut full = FullCache::<f32>::new(d, 200).unwrap();
    let mut caches: Vec<Box<dyn KvCache<f32>>> = vec![
        Box::new(H2OCache::<f32>::new(d, 50, 50).unwrap()),
        Box::new(RecentOnly::<f32>::new(d, 31).unwrap()),
        Box::new(Cache::<f32, _>::with_policy(d, Heavy::new(100).unwrap()).unwrap()),
        Box::new(Cache::<f32, AnyPolicy>::with_policy(d, Full::new(30).unwrap().into()).unwrap()),
    ];
    for s in 0..n {
        let x = s as f32;
        let (q, k, v) = ([x.sin(), 1.0, x.cos(), 0.5], [x.cos(), x.sin(), 1.0, -1.0], [x; 4]);
        let want = full.step(&q, &k, &v).unwrap().to_vec();
        for c in &mut caches {
            let name = c.policy_name();
            assert_eq!(c.step(&q, &k, &v).unwrap(), &want[..], "{name} step {s}");
            assert!(c.last_evicted().is_empty());
        }
    }
    for c in &caches {
        assert_eq!(c.resident_positions(), (0..n as u64).collect::<Vec<_>>());
        for (a, b) in c.tokens().zip(full.tokens()) {
            assert_eq!(a, b, "{}: scores equal the full cache's bit for bit", c.policy_name());
        }
    }
    // A prefill within budget evicts nothing either.
    let mut h = H2OCache::<f64>::new(2, 40, 40).unwrap();
    let xs: Vec<f64> = (0..60).map(|i| (i as f64 * 0.1).sin()).collect();
    let mut out = vec![0.0; 60];
    h.prefill(&xs, &xs, &xs, &mut out).unwrap();
    assert_eq!(h.len(), 30);
    assert!(h.last_evicted().is_empty());
}
