//! The test helpers themselves (the oracle and the near-tie rule of
//! `tests/common`) against numbers worked out by hand.

mod common;

use common::bounds::{Fp, attention_row};
use common::oracle::{Decision, Model, Rule, Tie};

/// The model itself against numbers worked out by hand.
#[test]
fn model_sanity() {
    // Two tokens, equal logits: weights 1/2 each.
    let row = attention_row(&[1.0], &[&[0.5], &[0.5]], &[&[2.0], &[4.0]], 1.0, Fp::EXACT);
    assert_eq!(row.weights, [0.5, 0.5]);
    assert_eq!(row.out, [3.0]);
    // H2O(1, 1): the newest is kept, the heaviest other too.
    let mut m = Model::new(Rule::h2o(1, 1, Tie::KeepOlder), 1, 1, 1.0, Fp::EXACT);
    m.step(&[1.0], &[3.0], &[0.0]).unwrap();
    m.step(&[1.0], &[0.0], &[0.0]).unwrap();
    m.step(&[1.0], &[0.0], &[0.0]).unwrap();
    assert_eq!(m.positions(), [0, 2]);
    assert_eq!(m.last_evicted, [1]);
}

/// Two candidates for one heavy slot, scores `a` and `b`, error bounds
/// 1e-6 each; the model keeps the higher.
fn two_candidates(a: f64, b: f64, same_key: bool) -> (Model, Decision) {
    let mut m = Model::new(Rule::h2o(1, 0, Tie::KeepOlder), 1, 1, 1.0, Fp::EXACT);
    m.insert(&[1.0], &[0.0]).unwrap();
    m.insert(&[if same_key { 1.0 } else { 2.0 }], &[0.0]).unwrap();
    m.attend(&[0.0]);
    for (t, s) in m.tokens.iter_mut().zip([a, b]) {
        (t.score, t.tol) = (s, 1e-6);
    }
    let dec = m.evict().unwrap();
    (m, dec)
}

#[test]
fn adopt_accepts_only_near_ties() {
    // Within SLACK·(1e-6 + 1e-6): the other choice is accepted.
    let (mut m, dec) = two_candidates(1.0, 1.0 - 1e-6, false);
    assert_eq!(m.positions(), [0]);
    assert_eq!(m.adopt(&dec, &[1]), Ok(true));
    assert_eq!((m.positions(), m.last_evicted.clone()), (vec![1], vec![0]));
    // Far apart: rejected.
    let (mut m, dec) = two_candidates(1.0, 0.9, false);
    assert!(m.adopt(&dec, &[1]).is_err());
    // Agreeing: no re-sync.
    let (mut m, dec) = two_candidates(1.0, 0.9, false);
    assert_eq!(m.adopt(&dec, &[0]), Ok(false));
    // Exactly tied (same key, same rows): only the tie rule's choice.
    let (mut m, dec) = two_candidates(0.5, 0.5, true);
    assert!(dec.exact_tie);
    assert_eq!(m.positions(), [0]);
    assert!(m.adopt(&dec, &[1]).is_err());
}
