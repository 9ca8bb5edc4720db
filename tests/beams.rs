//! Whole-model cache operations for beam search and speculative decoding:
//! `copy_from` (fork), `reorder` and `truncate`, each against a brute force
//! that clones or replays, with bit-exact comparisons of every token's state,
//! the K/V rows (through snapshots) and the outputs of later steps.

mod common;
use common::Rng;

use h2o_kv::{
    AnyPolicy, BeamScratch, Error, Full, H2O, H2OSinks, KvCache, MeanScore, ModelCache, Recent,
    SinkWindow, StepOrder, Tova,
};
use proptest::prelude::*;

type Model = ModelCache<f32, AnyPolicy>;

const LAYERS: usize = 3;
const N_HEADS: usize = 4;
const N_KV: usize = 2;
const D: usize = 8;

fn policies() -> Vec<AnyPolicy> {
    vec![
        H2O::new(5, 4).unwrap().into(),
        Recent::new(7).unwrap().into(),
        SinkWindow::new(2, 5).unwrap().into(),
        H2OSinks::new(4, 3, 2).unwrap().into(),
        Tova::new(6).unwrap().into(),
        MeanScore::new(4, 3).unwrap().into(),
        Full::new(64).unwrap().into(),
    ]
}

fn model(policy: AnyPolicy) -> Model {
    ModelCache::new(LAYERS, N_HEADS, N_KV, D, policy).unwrap()
}

/// One token's inputs for every layer: query `[n_heads × d]`, key and value
/// `[n_kv × d]` per layer.
struct Token {
    q: Vec<Vec<f32>>,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

fn token(rng: &mut Rng) -> Token {
    Token {
        q: (0..LAYERS).map(|_| rng.vec(N_HEADS * D)).collect(),
        k: (0..LAYERS).map(|_| rng.vec(N_KV * D)).collect(),
        v: (0..LAYERS).map(|_| rng.vec(N_KV * D)).collect(),
    }
}

/// Runs one token through every layer; returns every layer's output.
fn step(m: &mut Model, order: StepOrder, t: &Token) -> Vec<f32> {
    let mut out = Vec::new();
    for l in 0..LAYERS {
        out.extend_from_slice(m.step_with(l, order, &t.q[l], &t.k[l], &t.v[l]).unwrap());
    }
    out
}

/// Everything observable about a model cache, bit for bit: per head the
/// resident tokens by slot (position, score, last weight, attention count),
/// the next position, the last evictions and the last attention, plus the
/// snapshot bytes (which hold the K/V rows).
fn state(m: &Model) -> String {
    let mut s = format!("position {}\n", m.position());
    for (l, layer) in m.layers().iter().enumerate() {
        for (h, head) in layer.heads().iter().enumerate() {
            let p = head.planner();
            s += &format!("L{l}H{h} next {} evicted {:?}\n", p.next_position(), p.last_evicted());
            for (slot, c) in p.residents() {
                s += &format!(
                    "  slot {slot} pos {} score {:x} last {:x} n {}\n",
                    c.position,
                    c.score.to_bits(),
                    c.last_weight.to_bits(),
                    c.attended
                );
            }
            for e in head.last_attention() {
                s += &format!(
                    "  shown {} {:x} {:x}\n",
                    e.position,
                    e.logit.to_bits(),
                    e.weight.to_bits()
                );
            }
        }
    }
    s += &format!("{:?}", m.snapshot());
    s
}

/// Resident positions of every head, ascending.
fn residents(m: &Model) -> Vec<Vec<u64>> {
    m.layers().iter().flat_map(|l| l.heads().iter().map(|h| h.resident_positions())).collect()
}

const ORDERS: [StepOrder; 3] =
    [StepOrder::InsertAttendEvict, StepOrder::AttendInsertEvict, StepOrder::EvictInsertAttend];

/// A fork copies everything, and the two caches then agree bit for bit on
/// every later step, for every policy and step order; the destination's own
/// earlier state (longer or shorter) does not leak through.
#[test]
fn a_fork_is_a_bit_exact_copy() {
    let mut rng = Rng::new(11);
    for policy in policies() {
        for order in ORDERS {
            for (src_steps, dst_steps) in [(0, 9), (9, 0), (13, 20), (20, 13), (3, 3)] {
                let mut src = model(policy);
                let mut dst = model(policy);
                for _ in 0..src_steps {
                    step(&mut src, order, &token(&mut rng));
                }
                for _ in 0..dst_steps {
                    step(&mut dst, order, &token(&mut rng));
                }
                dst.copy_from(&src).unwrap();
                assert_eq!(state(&dst), state(&src), "{policy:?} {order:?}");
                let want = src.clone();
                assert_eq!(state(&dst), state(&want));
                for _ in 0..12 {
                    let t = token(&mut rng);
                    let (a, b) = (step(&mut src, order, &t), step(&mut dst, order, &t));
                    assert_eq!(a, b, "{policy:?} {order:?}: outputs after the fork");
                }
                assert_eq!(state(&dst), state(&src));
            }
        }
    }
}

/// A fork between caches of different shapes is refused and changes nothing.
#[test]
fn a_fork_between_shapes_is_refused() {
    let mut rng = Rng::new(12);
    let h2o: AnyPolicy = H2O::new(5, 4).unwrap().into();
    let mut dst = model(h2o);
    for _ in 0..6 {
        step(&mut dst, StepOrder::InsertAttendEvict, &token(&mut rng));
    }
    let before = state(&dst);
    let other_policy = model(H2O::new(4, 5).unwrap().into());
    let other_layers = ModelCache::<f32, AnyPolicy>::new(2, N_HEADS, N_KV, D, h2o).unwrap();
    let other_heads = ModelCache::<f32, AnyPolicy>::new(LAYERS, N_KV, N_KV, D, h2o).unwrap();
    let other_kv = ModelCache::<f32, AnyPolicy>::new(LAYERS, N_HEADS, 1, D, h2o).unwrap();
    let other_dim = ModelCache::<f32, AnyPolicy>::new(LAYERS, N_HEADS, N_KV, 4, h2o).unwrap();
    let scaled = {
        let layers = (0..LAYERS)
            .map(|_| h2o_kv::LayerCache::new(N_HEADS, N_KV, D, h2o).unwrap().with_scale(1.0))
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        ModelCache::from_layers(layers).unwrap()
    };
    // One layer with another policy: the check must look at every layer.
    let mixed = ModelCache::<f32, AnyPolicy>::with_policies(
        N_HEADS,
        N_KV,
        D,
        [h2o, h2o, Recent::new(9).unwrap().into()],
    )
    .unwrap();
    for (src, what) in [
        (&other_policy, "policy"),
        (&other_layers, "layers"),
        (&other_heads, "n_heads"),
        (&other_kv, "n_kv_heads"),
        (&other_dim, "head_dim"),
        (&scaled, "softmax scale"),
        (&mixed, "policy"),
    ] {
        assert_eq!(dst.copy_from(src), Err(Error::ShapeMismatch { what }));
        assert_eq!(state(&dst), before, "{what}: a refused fork changed the cache");
    }
}

/// Reorder against a brute force that clones: beam `i` becomes old beam
/// `order[i]` bit for bit, for permutations, repeats and drops.
#[test]
fn reorder_matches_cloning() {
    let mut rng = Rng::new(13);
    let mut scratch = BeamScratch::new(5);
    for policy in policies() {
        for trial in 0..40 {
            let k = 1 + trial % 5;
            // Beams of different lengths, so every beam's state is distinct.
            let mut beams: Vec<Model> = (0..k).map(|_| model(policy)).collect();
            for (b, beam) in beams.iter_mut().enumerate() {
                for _ in 0..(3 + 2 * b + rng.below(4)) {
                    step(beam, StepOrder::InsertAttendEvict, &token(&mut rng));
                }
            }
            let order: Vec<usize> = match trial % 4 {
                0 => (0..k).rev().collect(), // a permutation
                1 => vec![rng.below(k); k],  // one beam wins everything
                _ => (0..k).map(|_| rng.below(k)).collect(),
            };
            let want: Vec<Model> = order.iter().map(|&j| beams[j].clone()).collect();
            ModelCache::reorder(&mut beams, &order, &mut scratch).unwrap();
            for (i, (got, want)) in beams.iter().zip(&want).enumerate() {
                assert_eq!(state(got), state(want), "{policy:?} order {order:?} beam {i}");
            }
            // And they keep agreeing: the copies share no buffers.
            let mut want = want;
            for _ in 0..3 {
                let t: Vec<Token> = (0..k).map(|_| token(&mut rng)).collect();
                for i in 0..k {
                    let a = step(&mut beams[i], StepOrder::InsertAttendEvict, &t[i]);
                    let b = step(&mut want[i], StepOrder::InsertAttendEvict, &t[i]);
                    assert_eq!(a, b);
                }
            }
            for (got, want) in beams.iter().zip(&want) {
                assert_eq!(state(got), state(want));
            }
        }
    }
}

/// A bad order or a beam of another shape that would take a copy is refused
/// before any beam moves.
#[test]
fn a_bad_reorder_changes_nothing() {
    let mut rng = Rng::new(14);
    let h2o: AnyPolicy = H2O::new(5, 4).unwrap().into();
    let mut beams: Vec<Model> = (0..3).map(|_| model(h2o)).collect();
    beams.push(model(Recent::new(9).unwrap().into()));
    for (b, beam) in beams.iter_mut().enumerate() {
        for _ in 0..=b {
            step(beam, StepOrder::InsertAttendEvict, &token(&mut rng));
        }
    }
    let before: Vec<String> = beams.iter().map(state).collect();
    let mut scratch = BeamScratch::new(4);
    let bad: [(&[usize], &str); 4] = [
        (&[0, 1, 2], "length"),
        (&[0, 1, 2, 4], "range"),
        // Beam 3 (another policy) is dropped and would take a copy of beam 0.
        (&[0, 1, 2, 0], "shape"),
        (&[3, 3, 1, 2], "shape"),
    ];
    for (order, why) in bad {
        let err = ModelCache::reorder(&mut beams, order, &mut scratch).unwrap_err();
        match why {
            "length" => assert!(matches!(err, Error::LengthMismatch { what: "order", .. })),
            "range" => assert!(matches!(err, Error::InvalidParameter { .. })),
            _ => assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}"),
        }
        let after: Vec<String> = beams.iter().map(state).collect();
        assert_eq!(after, before, "{order:?}: a refused reorder changed a beam");
    }
    // A permutation moves the odd beam without copying it: allowed.
    ModelCache::reorder(&mut beams, &[3, 2, 1, 0], &mut scratch).unwrap();
    let after: Vec<String> = beams.iter().map(state).collect();
    assert_eq!(after, before.iter().rev().cloned().collect::<Vec<_>>());
}

/// Speculative decoding: prefix, `k` drafts, `truncate(k)`, then the
/// accepted tokens, against a cache that never saw the drafts.
fn check_truncate(
    policy: AnyPolicy,
    order: StepOrder,
    prefix: usize,
    k: usize,
    m: usize,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let (mut with, mut without) = (model(policy), model(policy));
    for _ in 0..prefix {
        let t = token(&mut rng);
        assert_eq!(step(&mut with, order, &t), step(&mut without, order, &t));
    }
    for _ in 0..k {
        step(&mut with, order, &token(&mut rng));
    }
    with.truncate(k).unwrap();
    assert_eq!(with.position(), without.position());
    assert_eq!(residents(&with), residents(&without));
    for i in 0..m {
        let t = token(&mut rng);
        let (a, b) = (step(&mut with, order, &t), step(&mut without, order, &t));
        assert_eq!(a, b, "{policy:?} {order:?}: output of accepted token {i}");
        assert_eq!(residents(&with), residents(&without), "accepted token {i}");
    }
    let first_accepted = prefix as u64;
    for (lw, lo) in with.layers().iter().zip(without.layers()) {
        for (hw, ho) in lw.heads().iter().zip(lo.heads()) {
            let (pw, po) = (hw.planner(), ho.planner());
            assert_eq!(pw.next_position(), po.next_position());
            // Same slots hold the same tokens.
            let slots = |p: &h2o_kv::Planner<AnyPolicy>| -> Vec<(usize, u64)> {
                p.residents().map(|(s, c)| (s, c.position)).collect()
            };
            assert_eq!(slots(pw), slots(po));
            for ((_, cw), (_, co)) in pw.residents().zip(po.residents()) {
                if cw.position >= first_accepted {
                    // Only accepted queries attended these: bit-exact.
                    assert_eq!(cw, co);
                } else {
                    // The documented difference: the drafts' attention stays.
                    // Each draft attended every older token once more (none
                    // was evicted during the drafts); scores only grew.
                    assert_eq!(cw.attended, co.attended + k as u64);
                    assert!(cw.score >= co.score - 1e-9, "{cw:?} vs {co:?}");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    /// Under a budget the drafts do not reach (no eviction during the drafts
    /// or after), every policy matches the cache that never saw the drafts.
    #[test]
    fn truncate_within_budget(
        p in 0usize..7, prefix in 0usize..6, k in 0usize..4, m in 0usize..4,
        o in 0usize..3, seed in any::<u64>(),
    ) {
        let policy = policies()[p];
        let budget = h2o_kv::EvictionPolicy::budget(&policy);
        prop_assume!(prefix + k.max(m) <= budget);
        check_truncate(policy, ORDERS[o], prefix, k, m, seed);
    }

    /// Policies that ignore scores decide exactly as the cache that never
    /// saw the drafts even when the accepted tokens go past the budget.
    #[test]
    fn truncate_then_evict_by_position(
        sinks in any::<bool>(), prefix in 0usize..5, k in 0usize..3, m in 0usize..20,
        o in 0usize..3, seed in any::<u64>(),
    ) {
        let policy: AnyPolicy =
            if sinks { SinkWindow::new(2, 5).unwrap().into() } else { Recent::new(7).unwrap().into() };
        prop_assume!(prefix + k <= 7);
        check_truncate(policy, ORDERS[o], prefix, k, m, seed);
    }
}

/// A slot layout with evictions behind it (free slots in the stack): the
/// truncated cache and the never-drafted one still agree on everything but
/// the documented score difference, step after step.
#[test]
fn truncate_after_evictions() {
    let policy: AnyPolicy = Recent::new(6).unwrap().into();
    let mut rng = Rng::new(15);
    for order in ORDERS {
        let (mut with, mut without) = (model(policy), model(policy));
        for _ in 0..17 {
            let t = token(&mut rng);
            step(&mut with, order, &t);
            step(&mut without, order, &t);
        }
        // A draft past the budget evicts the oldest token: the state after
        // truncating differs only by that lost token; the drafts themselves
        // are gone and positions roll back.
        step(&mut with, order, &token(&mut rng));
        with.truncate(1).unwrap();
        assert_eq!(with.position(), without.position());
        let (w, o) = (residents(&with), residents(&without));
        for (w, o) in w.iter().zip(&o) {
            assert!(o.ends_with(w) && o.len() == w.len() + 1, "{w:?} vs {o:?}");
        }
        // From here the lost token is the next one either side evicts.
        let t = token(&mut rng);
        step(&mut with, order, &t);
        step(&mut without, order, &t);
        assert_eq!(residents(&with), residents(&without), "{order:?}");
    }
}

/// Truncating a token that is gone, more tokens than exist, or in the
/// middle of a token's pass through the layers is refused and changes
/// nothing.
#[test]
fn a_bad_truncate_changes_nothing() {
    let mut rng = Rng::new(16);
    let mut m = model(Recent::new(4).unwrap().into());
    for _ in 0..3 {
        step(&mut m, StepOrder::InsertAttendEvict, &token(&mut rng));
    }
    let before = state(&m);
    assert!(matches!(m.truncate(4), Err(Error::CannotTruncate { n: 4, .. })));
    assert_eq!(state(&m), before);
    for _ in 0..5 {
        step(&mut m, StepOrder::InsertAttendEvict, &token(&mut rng));
    }
    // 8 tokens, a window of 4: the last 4 are resident, the 5th is gone.
    let before = state(&m);
    assert!(matches!(m.truncate(5), Err(Error::CannotTruncate { n: 5, .. })));
    assert_eq!(state(&m), before);
    // Mid-token: layer 0 has taken token 8, layers 1 and 2 have not (the
    // error names the layer ahead).
    let t = token(&mut rng);
    m.step(0, &t.q[0], &t.k[0], &t.v[0]).unwrap();
    let before = state(&m);
    assert!(matches!(m.truncate(1), Err(Error::OutOfTurn { layer: 0, .. })));
    assert_eq!(state(&m), before);
    m.step(1, &t.q[1], &t.k[1], &t.v[1]).unwrap();
    m.step(2, &t.q[2], &t.k[2], &t.v[2]).unwrap();
    m.truncate(4).unwrap();
    assert_eq!(m.position(), 5);
    assert!(residents(&m).iter().all(|r| r.is_empty()), "{:?}", residents(&m));
    // The next token reuses position 5, and a full truncate empties the cache.
    step(&mut m, StepOrder::InsertAttendEvict, &token(&mut rng));
    assert!(residents(&m).iter().all(|r| r == &[5]));
    m.truncate(1).unwrap();
    assert_eq!((m.position(), m.kv_bytes()), (5, 0));
    assert_eq!(m.layers()[0].heads()[0].last_attention().count(), 0);
    assert!(m.layers()[0].heads()[0].last_evicted().is_empty());
}
