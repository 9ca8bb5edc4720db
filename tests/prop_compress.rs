//! SnapKV selection and Ada-KV's head split against the brute-force
//! versions in `tests/common/brute_family.rs` (full sorts), on random scores
//! drawn from a small set of values so that ties are common; PyramidKV
//! schedules against their real-valued definition.

mod common;

use common::brute_family::{adakv_budgets, snapkv_keep};
use h2o_kv::TieRule;
use h2o_kv::compress::{AdaKv, LayerSchedule, Scratch, SnapKv};
use proptest::prelude::*;

fn tie(keep_older: bool) -> TieRule {
    if keep_older { TieRule::KeepOlder } else { TieRule::KeepNewer }
}

/// Scores from {0, 0.125, …, 1}: many exact ties.
fn scores(max: usize) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec((0u8..=8).prop_map(|x| f64::from(x) / 8.0), 0..=max)
}

#[test]
fn snapkv_matches_the_sorting_model() {
    let strategy = (
        scores(60),
        1usize..=12,
        prop_oneof![Just(1usize), Just(3), Just(7), Just(9)],
        1usize..=40,
        any::<bool>(),
    );
    let mut scratch = Scratch::new();
    let scratch = std::cell::RefCell::new(&mut scratch);
    common::run(
        "prop_compress",
        common::cases(2000),
        strategy,
        |(s, window, kernel, budget, older)| {
            let snap = SnapKv::new(window, kernel).unwrap().with_tie_rule(tie(older));
            let mut keep = vec![false; s.len()];
            let kept = snap
                .select(&s, budget, &mut scratch.borrow_mut(), &mut keep)
                .map_err(|e| e.to_string())?;
            let want = snapkv_keep(&s, window, kernel, budget, older);
            if keep != want {
                return Err(format!("kept {keep:?}, the model keeps {want:?}"));
            }
            if kept != s.len().min(budget) {
                return Err(format!("reported {kept} kept of {}", s.len()));
            }
            Ok(())
        },
    );
}

#[test]
fn adakv_matches_the_sorting_model() {
    let strategy = (
        1usize..=5,
        0usize..=12,
        0usize..=70,
        prop_oneof![Just(0.0), Just(0.2), Just(0.5), Just(1.0)],
        any::<bool>(),
        any::<u64>(),
    );
    common::run(
        "prop_compress",
        common::cases(2000),
        strategy,
        |(heads, n, total, alpha, older, seed)| {
            let mut rng = common::Rng::new(seed);
            let s: Vec<f64> = (0..heads * n).map(|_| rng.below(5) as f64 / 4.0).collect();
            let ada = AdaKv::new(alpha).unwrap().with_tie_rule(tie(older));
            let mut got = vec![0; heads];
            ada.split(&s, heads, total, &mut Scratch::new(), &mut got)
                .map_err(|e| e.to_string())?;
            let want = adakv_budgets(&s, heads, total, alpha, older);
            if got != want {
                return Err(format!("budgets {got:?}, the model gives {want:?}"));
            }
            Ok(())
        },
    );
}

#[test]
fn pyramid_schedules_round_their_real_shares() {
    let strategy = (1usize..=40, 0usize..=5000, 0usize..=40, 1u32..=30);
    common::run("prop_compress", common::cases(2000), strategy, |(n, total, reserve, beta)| {
        let mut b = vec![0; n];
        let Ok(()) = LayerSchedule::Pyramid { beta }.split(total, reserve, &mut b) else {
            // Only a budget too small for the layers may fail.
            let s = total.saturating_sub(n * reserve) as f64;
            let top = if n == 1 { s } else { s / n as f64 / f64::from(beta) };
            if total >= n * reserve && (reserve > 0 || top >= 1.0) {
                return Err(format!("refused n={n} total={total} reserve={reserve} beta={beta}"));
            }
            return Ok(());
        };
        if b.iter().sum::<usize>() != total {
            return Err(format!("{b:?} does not sum to {total}"));
        }
        if !b.windows(2).all(|w| w[0] >= w[1]) {
            return Err(format!("{b:?} is not non-increasing"));
        }
        let s = (total - n * reserve) as f64;
        let (nf, bf) = (n as f64, f64::from(beta));
        let (lo, hi) = (s / nf / bf, 2.0 * s / nf - s / nf / bf);
        for (i, &x) in b.iter().enumerate() {
            let real =
                reserve as f64 + if n == 1 { s } else { hi - (hi - lo) * i as f64 / (nf - 1.0) };
            if (x as f64 - real).abs() >= 1.0 + 1e-9 {
                return Err(format!("layer {i}: {x} vs real share {real}"));
            }
        }
        Ok(())
    });
}
