//! The seed walkthrough as an integration test: the library, driven exactly
//! as `examples/walkthrough` drives it, must give every number of the seed's
//! worked example (H2O on tiny integer matrices, the document this crate
//! started from), and the example's printed text must contain them.
//!
//! Expected values are that document's closed forms (e.g. e²/(3e²+1)),
//! restated and computed here independently of the library.

#[path = "../examples/walkthrough/report.rs"]
mod report;

use h2o_kv::{Cache, H2O, H2OCache, KvCache, TieRule};

fn e2() -> f64 {
    2f64.exp()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

fn seed_cache(tie: TieRule) -> H2OCache<f64> {
    let mut c = Cache::with_policy(3, H2O::new(2, 1).unwrap().with_tie_rule(tie))
        .unwrap()
        .with_scale(1.0)
        .unwrap();
    for key in report::KEYS {
        c.insert(&key, &[0.0; 3]).unwrap();
    }
    c
}

fn weights(c: &H2OCache<f64>) -> Vec<(u64, f64, f64)> {
    let mut w: Vec<_> = c.last_attention().map(|e| (e.position, e.logit, e.weight)).collect();
    w.sort_by_key(|e| e.0);
    w
}

#[test]
fn step_by_step_numbers_match_the_document() {
    let mut c = seed_cache(TieRule::KeepOlder);
    // Opening state: one token over budget, nothing attended yet.
    assert_eq!((c.len(), c.budget()), (4, 3));

    // Step 1: raw scores [2, 2, 2, 0]; weights e²/(3e²+1) ×3 and 1/(3e²+1).
    c.attend(&report::Q5).unwrap();
    let full = [e2() / (3.0 * e2() + 1.0), 1.0 / (3.0 * e2() + 1.0)];
    let w = weights(&c);
    assert_eq!(w.iter().map(|e| e.1).collect::<Vec<_>>(), [2.0, 2.0, 2.0, 0.0]);
    for (i, want) in [full[0], full[0], full[0], full[1]].into_iter().enumerate() {
        assert!(close(w[i].2, want), "step 1 weight {i}");
    }
    assert!((full[0] - 0.318945).abs() < 5e-7 && (full[1] - 0.043165).abs() < 5e-7);

    // Step 2: tokens 1..3 tie; the older ones survive; token 3 (position 2) goes.
    assert_eq!(c.evict(), [2]);
    assert_eq!(c.resident_positions(), [0, 1, 3]);

    // Step 3: weights over S4 = e²/(2e²+1) ×2 and 1/(2e²+1); acc sums.
    c.attend(&report::Q5).unwrap();
    let s4 = [e2() / (2.0 * e2() + 1.0), 1.0 / (2.0 * e2() + 1.0)];
    let w = weights(&c);
    assert_eq!(w.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 1, 3]);
    assert!(close(w[0].2, s4[0]) && close(w[1].2, s4[0]) && close(w[2].2, s4[1]));
    assert!((s4[0] - 0.468311).abs() < 5e-7 && (s4[1] - 0.063379).abs() < 5e-7);
    let acc = [full[0] + s4[0], full[1] + s4[1]];
    assert!(close(c.score_of(0).unwrap(), acc[0]) && close(c.score_of(1).unwrap(), acc[0]));
    assert!(close(c.score_of(3).unwrap(), acc[1]));
    assert!((acc[0] - 0.787256).abs() < 5e-7 && (acc[1] - 0.106543).abs() < 5e-7);

    // Step 4: token 5 enters; recent = {5}; heavy = {1, 2}; token 4 leaves.
    c.insert(&report::K5, &[0.0; 3]).unwrap();
    assert_eq!(c.evict(), [3]);
    assert_eq!(c.resident_positions(), [0, 1, 4]);
}

#[test]
fn the_tie_rule_changes_the_victim() {
    let mut c = seed_cache(TieRule::KeepNewer);
    c.attend(&report::Q5).unwrap();
    assert_eq!(c.evict(), [0], "keep-newer evicts token 1");
    assert_eq!(c.resident_positions(), [1, 2, 3]);
}

#[test]
fn the_example_prints_every_seed_number() {
    let mut text = Vec::new();
    report::run(&report::Knobs::default(), &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    for needle in [
        "0.318945",
        "0.043165",
        "0.468311",
        "0.063379",
        "0.787256",
        "0.106543",
        "evicted: tok3",
        "S4 = {1, 2, 4}",
        "evicted: tok4",
        "S5 = {1, 2, 5}",
        "S6 = {",
    ] {
        assert!(text.contains(needle), "walkthrough output lacks {needle:?}:\n{text}");
    }
    // The raw scores column shows 2, 2, 2, 0 for tokens 1..4 in step 1.
    let step1 = &text[text.find("== Step 1").unwrap()..text.find("== Step 2").unwrap()];
    let raw: Vec<&str> = step1
        .lines()
        .filter(|l| l.trim_start().starts_with("tok"))
        .take(4)
        .map(|l| l.split('|').nth(1).unwrap().trim())
        .collect();
    assert_eq!(raw, ["2", "2", "2", "0"]);
}

#[test]
fn the_example_follows_its_knobs() {
    let run = |knobs: report::Knobs| {
        let mut text = Vec::new();
        report::run(&knobs, &mut text).unwrap();
        String::from_utf8(text).unwrap()
    };
    let base = report::Knobs::default();
    let newer = run(report::Knobs { tie: TieRule::KeepNewer, step6: false, ..base });
    assert!(newer.contains("evicted: tok1"), "{newer}");
    let roomy = run(report::Knobs { heavy: 3, recent: 1, step6: false, ..base });
    assert!(roomy.contains("evicted: nothing"), "{roomy}");
    let scaled = run(report::Knobs { scale: 1.0 / 3f64.sqrt(), step6: false, ..base });
    assert!(scaled.contains("0.577350 · Q·K"), "{scaled}");
}

/// The example's trace (for `--eviction-map`) records every insert and
/// eviction: the resident sets the text prints, and an SVG that marks the
/// heavy hitters and the evicted tokens.
#[test]
fn the_example_traces_its_evictions() {
    let trace = report::run(&report::Knobs::default(), &mut Vec::new()).unwrap();
    let kept: Vec<Vec<u64>> =
        trace.steps().iter().map(|s| s.kept.iter().map(|k| k.0).collect()).collect();
    // 4 inserts, the step-2 eviction (S4), token 5's insert and eviction
    // (S5), token 6's insert and eviction.
    assert_eq!(kept.len(), 9);
    assert_eq!(kept[3], [0, 1, 2, 3]);
    assert_eq!(
        (kept[4].as_slice(), trace.steps()[4].evicted.as_slice()),
        (&[0, 1, 3][..], &[2][..])
    );
    assert_eq!(
        (kept[6].as_slice(), trace.steps()[6].evicted.as_slice()),
        (&[0, 1, 4][..], &[3][..])
    );
    let svg = trace.eviction_map_svg(0, 1, 0, "walkthrough");
    assert!(svg.starts_with("<svg") && svg.contains("heavy hitter") && svg.contains("evicted"));
    // Tokens 1 and 2 are heavy hitters from the first eviction on.
    assert!(svg.matches(r##"fill="#f08c1e""##).count() >= 3);
}
