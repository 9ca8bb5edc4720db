//! Regression tests for the failure kinds seen in other KV-cache
//! implementations, and for every bug found while hardening this crate
//! (bad-input table, fuzzing, snapshots).
//!
//! - Scores summed across independent sequences: two caches never share
//!   state, so interleaved use equals separate use.
//! - Grouped-query attention with a KV head count different from the query
//!   head count, checked against an independent model.
//! - A cache reused after `reset` behaves exactly as a fresh one: every
//!   output, score and decision over a long run, twice around reset.

use h2o_kv::{AnyPolicy, Cache, Full, H2O, H2OCache, Heavy, KvCache, LayerCache, Recent, TieRule};

mod common;

use common::Rng;

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// One random call; returns all it produced, bit for bit.
fn op(c: &mut dyn KvCache<f32>, rng: &mut Rng) -> String {
    let d = c.head_dim();
    let r = match rng.next_u64() % 16 {
        0..=8 => {
            let (q, k, v) = (rng.vec(d), rng.vec(d), rng.vec(d));
            format!("{:?}", c.step(&q, &k, &v).map(bits))
        }
        9..=10 => {
            let (q, k, v) = (rng.vec(d), rng.vec(d), rng.vec(d));
            format!("{:?}", c.step_with(h2o_kv::StepOrder::AttendInsertEvict, &q, &k, &v).map(bits))
        }
        11 => {
            let (k, v) = (rng.vec(d), rng.vec(d));
            format!("{:?}", c.insert(&k, &v))
        }
        12 => format!("{:?}", c.evict()),
        13 => format!("{:?}", c.attend(&rng.vec(d)).map(bits)),
        _ => {
            let p = (rng.next_u64() % 6) as usize;
            let (q, k, v) = (rng.vec(p * d), rng.vec(p * d), rng.vec(p * d));
            let mut out = vec![0.0; p * d];
            let r = c.prefill(&q, &k, &v, &mut out);
            format!("{r:?} {:?}", bits(&out))
        }
    };
    let tokens: Vec<(u64, u64)> = c.tokens().map(|t| (t.position, t.score.to_bits())).collect();
    format!("{r} {:?} {tokens:?} {}", c.last_evicted(), c.next_position())
}

fn policies() -> Vec<AnyPolicy> {
    vec![
        Full::new(400).unwrap().into(),
        Recent::new(5).unwrap().into(),
        Heavy::new(5).unwrap().into(),
        H2O::new(3, 2).unwrap().into(),
        H2O::new(4, 0).unwrap().with_tie_rule(TieRule::KeepNewer).into(),
    ]
}

#[test]
fn two_caches_never_share_state() {
    for policy in policies() {
        let make = || Cache::<f32, AnyPolicy>::with_policy(4, policy).unwrap();
        // Separately: sequence A to the end, then sequence B.
        let (mut a, mut b) = (make(), make());
        let (mut ra, mut rb) = (Rng::new(1), Rng::new(2));
        let alone_a: Vec<String> = (0..300).map(|_| op(&mut a, &mut ra)).collect();
        let alone_b: Vec<String> = (0..300).map(|_| op(&mut b, &mut rb)).collect();
        // Interleaved, as a server batching two sequences would.
        let (mut a2, mut b2) = (make(), make());
        let (mut ra, mut rb) = (Rng::new(1), Rng::new(2));
        for i in 0..300 {
            assert_eq!(op(&mut a2, &mut ra), alone_a[i], "{policy:?} A call {i}");
            assert_eq!(op(&mut b2, &mut rb), alone_b[i], "{policy:?} B call {i}");
        }
        // A clone is independent of its original too.
        let frozen = a2.snapshot();
        let mut c = a2.clone();
        let mut rc = Rng::new(3);
        for _ in 0..50 {
            op(&mut c, &mut rc);
        }
        assert_eq!(a2.snapshot(), frozen, "{policy:?}: driving a clone changed the original");
    }
}

#[test]
fn layer_heads_never_share_scores() {
    // Head 1 sees only huge-logit queries; head 0's scores must not move.
    let mut layer = LayerCache::<f32, _>::new(2, 2, 2, H2O::new(2, 2).unwrap()).unwrap();
    let mut lone = H2OCache::<f32>::new(2, 2, 2).unwrap();
    let mut rng = Rng::new(5);
    for _ in 0..50 {
        let (q0, k0, v0) = (rng.vec(2), rng.vec(2), rng.vec(2));
        let (q1, k1, v1) =
            (rng.vec::<f32>(2).iter().map(|x| x * 30.0).collect(), rng.vec(2), rng.vec(2));
        let out = layer
            .step(
                &[q0.clone(), q1].concat(),
                &[k0.clone(), k1].concat(),
                &[v0.clone(), v1].concat(),
            )
            .unwrap()
            .to_vec();
        assert_eq!(&out[..2], lone.step(&q0, &k0, &v0).unwrap());
        let head0: Vec<_> = layer.heads()[0].tokens().collect();
        assert_eq!(head0, lone.tokens().collect::<Vec<_>>());
    }
}

/// A model token: (position, key, value, score).
type Token = (u64, Vec<f64>, Vec<f64>, f64);

/// Independent GQA model: per KV head, tokens with f64 scores; a KV head's
/// score is the sum of its query heads' weights; H2O eviction per KV head.
struct GqaModel {
    n_heads: usize,
    n_kv: usize,
    d: usize,
    heavy: usize,
    recent: usize,
    /// Per KV head: resident tokens, oldest first.
    heads: Vec<Vec<Token>>,
    next: u64,
}

impl GqaModel {
    fn step(&mut self, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
        let (d, g) = (self.d, self.n_heads / self.n_kv);
        let wide = |x: &[f32]| x.iter().map(|&a| f64::from(a)).collect::<Vec<f64>>();
        let mut out = vec![0.0; self.n_heads * d];
        for h in 0..self.n_kv {
            let tokens = &mut self.heads[h];
            tokens.push((self.next, wide(&k[h * d..][..d]), wide(&v[h * d..][..d]), 0.0));
            for qh in h * g..(h + 1) * g {
                let qv = wide(&q[qh * d..][..d]);
                let logits: Vec<f64> = tokens
                    .iter()
                    .map(|t| {
                        t.1.iter().zip(&qv).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt()
                    })
                    .collect();
                let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for (t, w) in tokens.iter_mut().zip(&e) {
                    t.3 += w / z;
                    for j in 0..d {
                        out[qh * d + j] += w / z * t.2[j];
                    }
                }
            }
            while tokens.len() > self.heavy + self.recent {
                let n = tokens.len() - self.recent;
                let mut best = 0;
                for i in 1..n {
                    if tokens[i].3 <= tokens[best].3 {
                        best = i; // equal scores: evict the newer (KeepOlder)
                    }
                }
                tokens.remove(best);
            }
        }
        self.next += 1;
        out
    }
}

#[test]
fn gqa_with_fewer_kv_heads_matches_an_independent_model() {
    for (n_heads, n_kv) in [(8, 2), (6, 3), (4, 1), (4, 4)] {
        let (d, heavy, recent) = (4, 3, 2);
        let mut layer =
            LayerCache::<f32, _>::new(n_heads, n_kv, d, H2O::new(heavy, recent).unwrap()).unwrap();
        let mut model =
            GqaModel { n_heads, n_kv, d, heavy, recent, heads: vec![Vec::new(); n_kv], next: 0 };
        let mut rng = Rng::new(n_heads as u64 * 10 + n_kv as u64);
        let mut differ = false;
        for s in 0..200 {
            let (q, k, v) = (rng.vec(n_heads * d), rng.vec(n_kv * d), rng.vec(n_kv * d));
            let got = layer.step(&q, &k, &v).unwrap().to_vec();
            let want = model.step(&q, &k, &v);
            assert_eq!(got.len(), n_heads * d);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let g = f64::from(*g);
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{n_heads}/{n_kv} step {s} [{i}]: {g} vs {w}"
                );
            }
            for h in 0..n_kv {
                let kept: Vec<u64> = model.heads[h].iter().map(|t| t.0).collect();
                assert_eq!(
                    layer.heads()[h].resident_positions(),
                    kept,
                    "{n_heads}/{n_kv} step {s} head {h}"
                );
                for t in &model.heads[h] {
                    let got = layer.heads()[h].score_of(t.0).unwrap();
                    assert!((got - t.3).abs() <= 1e-5 * (1.0 + t.3), "score {got} vs {}", t.3);
                }
            }
            if n_kv > 1 {
                let scores =
                    |h: usize| layer.heads()[h].tokens().map(|t| t.score).collect::<Vec<_>>();
                differ |= scores(0) != scores(1);
            }
        }
        // Each KV head accumulates its own group's weights. (Their kept
        // positions often agree: the first tokens, attended alone early on,
        // stay the heavy hitters in every head.)
        assert!(n_kv == 1 || differ, "{n_heads}/{n_kv}: heads share scores");
    }
}

/// Runs a long scripted session and returns its full transcript.
fn session(c: &mut dyn KvCache<f32>, seed: u64) -> Vec<String> {
    let mut rng = Rng::new(seed);
    (0..400).map(|_| op(c, &mut rng)).collect()
}

#[test]
fn a_reset_cache_behaves_exactly_like_a_fresh_one() {
    for policy in policies() {
        let make = || Cache::<f32, AnyPolicy>::with_policy(4, policy).unwrap();
        let fresh = session(&mut make(), 77);
        let fresh_snapshot = make().snapshot();
        let mut reused = make();
        session(&mut reused, 1); // a different history first
        for round in 0..2 {
            reused.reset();
            assert_eq!(
                reused.snapshot(),
                fresh_snapshot,
                "{policy:?} round {round}: state after reset"
            );
            assert_eq!(reused.last_attention().count(), 0);
            assert_eq!(session(&mut reused, 77), fresh, "{policy:?} round {round}");
        }
    }
    // The same for a whole GQA layer.
    let make = || LayerCache::<f32, _>::new(4, 2, 4, H2O::new(3, 3).unwrap()).unwrap();
    let run = |l: &mut LayerCache<f32, H2O>, seed: u64| {
        let mut rng = Rng::new(seed);
        (0..300)
            .map(|_| {
                let (q, k, v) = (rng.vec(16), rng.vec(8), rng.vec(8));
                bits(l.step(&q, &k, &v).unwrap())
            })
            .collect::<Vec<_>>()
    };
    let fresh = run(&mut make(), 8);
    let mut reused = make();
    run(&mut reused, 9);
    for _ in 0..2 {
        reused.reset();
        assert_eq!(reused.snapshot(), make().snapshot());
        assert_eq!(run(&mut reused, 8), fresh);
    }
}

// ---- bugs found while hardening ---------------------------------------------

/// Found by the bad-input table: a call that failed with
/// `AttentionOverflow` after computing (a huge query, or one head of a layer)
/// cleared or replaced what `last_attention` showed, although an `Err` must
/// change nothing.
#[test]
fn a_failed_attention_keeps_the_last_attention() {
    let mut c = H2OCache::<f32>::new(2, 2, 2).unwrap();
    c.step(&[1.0, 0.5], &[1.0, 1.0], &[1.0, 2.0]).unwrap();
    c.attend(&[0.5, 0.5]).unwrap();
    let before: Vec<_> = c.last_attention().collect();
    assert_eq!(before.len(), 1);
    assert!(c.attend(&[3e38, 3e38]).is_err());
    assert!(c.step(&[1e30, 1e30], &[1e30, 1e30], &[0.0, 0.0]).is_err());
    assert_eq!(c.last_attention().collect::<Vec<_>>(), before);

    // In a layer, head 0 computed before head 1 overflowed.
    let mut layer = LayerCache::<f32, _>::new(2, 2, 2, H2O::new(2, 2).unwrap()).unwrap();
    layer.step(&[1.0; 4], &[1.0; 4], &[1.0; 4]).unwrap();
    let head0: Vec<_> = layer.heads()[0].last_attention().collect();
    let q = [0.5, 0.5, 3e38, 3e38];
    assert!(layer.attend(&q).is_err());
    assert_eq!(layer.heads()[0].last_attention().collect::<Vec<_>>(), head0);
}

/// Found while writing the snapshot checks: `with_scale` checked the scale as f64 only,
/// so an f32 cache took 1e300 (infinite in f32: every later call failed) or
/// 1e-50 (zero in f32: attention silently uniform).
#[test]
fn a_scale_that_rounds_away_in_f32_is_refused() {
    for scale in [1e300, 1e-50, f64::from(f32::MAX) * 2.0] {
        assert!(H2OCache::<f32>::new(2, 1, 1).unwrap().with_scale(scale).is_err(), "{scale}");
        assert!(H2OCache::<f64>::new(2, 1, 1).unwrap().with_scale(scale).is_ok(), "{scale}");
    }
    let mut c = H2OCache::<f32>::new(2, 1, 1).unwrap().with_scale(1e-30).unwrap();
    assert!(c.step(&[1.0, 0.0], &[1.0, 0.0], &[1.0, 1.0]).is_ok());
}
