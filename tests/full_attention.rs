//! `FullCache` equals naive full attention.
//!
//! Random sequences, f32 and f64, decoded in transformer order, in document
//! order, or as one causal prefill followed by decode steps. Every output is
//! compared with textbook attention in f64 over all tokens so far
//! (`bounds::attention_row`: logits `scale · q·k`, max-subtracted softmax,
//! weighted sum), and every accumulated score with the sum of the weights all
//! queries gave that token. Tolerance: 4× the first-order rounding bound of
//! the float type, built from its machine epsilon (about 1e-7 relative for
//! f32, 2e-16 for f64), so the f64 cache must agree to ~1e-14.

mod common;

use common::bounds::{Fp, SLACK, attention_row};
use common::{Gen, Real, Stats, wide};
use h2o_kv::{FullCache, KvCache};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Mode {
    Transformer,
    Document,
    Prefill(usize),
}

#[derive(Debug, Clone)]
struct Case {
    d: usize,
    n: usize,
    spare: usize,
    mode: Mode,
    amp: f64,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![1usize..=8, 9usize..=40],
        1usize..=48,
        0usize..=3,
        prop_oneof![
            Just(Mode::Transformer),
            Just(Mode::Document),
            (1usize..=48).prop_map(Mode::Prefill)
        ],
        prop_oneof![Just(0.5), Just(2.0), Just(4.0), Just(8.0)],
        any::<u64>(),
    )
        .prop_map(|(d, n, spare, mode, amp, seed)| Case { d, n, spare, mode, amp, seed })
}

/// The naive reference: what every query row saw, its output, and the
/// weights it gave (summed per token into `scores`, with their bounds).
struct Naive {
    keys: Vec<Vec<f64>>,
    values: Vec<Vec<f64>>,
    scores: Vec<f64>,
    score_tol: Vec<f64>,
    scale: f64,
    fp: Fp,
}

impl Naive {
    /// Attention of `q` over the first `seen` tokens.
    fn row(&mut self, q: &[f64], seen: usize) -> (Vec<f64>, Vec<f64>) {
        let keys: Vec<&[f64]> = self.keys[..seen].iter().map(Vec::as_slice).collect();
        let values: Vec<&[f64]> = self.values[..seen].iter().map(Vec::as_slice).collect();
        let r = attention_row(q, &keys, &values, self.scale, self.fp);
        for (j, w) in r.weights.iter().enumerate() {
            self.scores[j] += w;
            self.score_tol[j] +=
                w * r.weight_rel + r.weight_abs + 2.0 * f64::EPSILON * self.scores[j];
        }
        (r.out, r.out_tol)
    }
}

fn close(what: &str, got: f64, want: f64, tol: f64, stats: &Stats) -> Result<(), String> {
    let err = (got - want).abs();
    let r = if tol > 0.0 {
        err / (SLACK * tol)
    } else if err > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    stats.worst_ratio.set(stats.worst_ratio.get().max(r));
    if err > SLACK * tol {
        return Err(format!("{what}: {got} vs naive {want} (bound {:e})", SLACK * tol));
    }
    Ok(())
}

fn check<T: Real>(c: &Case, stats: &Stats) -> Result<(), String> {
    let d = c.d;
    let mut cache = FullCache::<T>::new(d, c.n + c.spare).unwrap();
    let mut inputs = Gen::new(c.seed, d, 1, 1, c.amp, 0.0);
    let tokens: Vec<_> = (0..c.n).map(|_| inputs.token::<T>()).collect();
    let mut naive = Naive {
        keys: tokens.iter().map(|t| wide(&t.k)).collect(),
        values: tokens.iter().map(|t| wide(&t.v)).collect(),
        scores: vec![0.0; c.n],
        score_tol: vec![0.0; c.n],
        scale: 1.0 / (d as f64).sqrt(),
        fp: T::FP,
    };
    let mut start = 0;
    if let Mode::Prefill(p) = c.mode {
        let p = p.min(c.n);
        let cat = |f: fn(&common::Token<T>) -> &Vec<T>| -> Vec<T> {
            tokens[..p].iter().flat_map(|t| f(t).iter().copied()).collect()
        };
        let mut out = vec![T::default(); p * d];
        cache.prefill(&cat(|t| &t.q), &cat(|t| &t.k), &cat(|t| &t.v), &mut out).unwrap();
        for i in 0..p {
            let (want, tol) = naive.row(&wide(&tokens[i].q), i + 1);
            for j in 0..d {
                let what = format!("prefill row {i} output[{j}]");
                close(&what, out[i * d + j].to_f64(), want[j], tol[j], stats)?;
            }
        }
        start = p;
    }
    for i in start..c.n {
        let t = &tokens[i];
        let (got, (want, tol)) = match c.mode {
            Mode::Document => {
                let got = cache
                    .step_with(h2o_kv::StepOrder::AttendInsertEvict, &t.q, &t.k, &t.v)
                    .unwrap()
                    .to_vec();
                (got, naive.row(&wide(&t.q), i))
            }
            _ => (cache.step(&t.q, &t.k, &t.v).unwrap().to_vec(), naive.row(&wide(&t.q), i + 1)),
        };
        for j in 0..d {
            close(&format!("step {i} output[{j}]"), got[j].to_f64(), want[j], tol[j], stats)?;
        }
        if !cache.last_evicted().is_empty() {
            return Err(format!("step {i}: a full cache evicted {:?}", cache.last_evicted()));
        }
    }
    let all: Vec<u64> = (0..c.n as u64).collect();
    if cache.resident_positions() != all {
        return Err(format!("kept {:?}, expected every token", cache.resident_positions()));
    }
    for (p, (want, tol)) in naive.scores.iter().zip(&naive.score_tol).enumerate() {
        let got = cache.score_of(p as u64).expect("resident");
        close(&format!("score of {p}"), got, *want, *tol, stats)?;
    }
    Ok(())
}

#[test]
fn full_cache_equals_naive_attention_f32() {
    let stats = Stats::default();
    common::run("full_attention", common::cases(800), case(), |c| check::<f32>(&c, &stats));
    eprintln!("f32: worst error/bound {:.3}", stats.worst_ratio.get());
}

#[test]
fn full_cache_equals_naive_attention_f64() {
    let stats = Stats::default();
    common::run("full_attention", common::cases(800), case(), |c| check::<f64>(&c, &stats));
    eprintln!("f64: worst error/bound {:.3}", stats.worst_ratio.get());
}
