//! The interleaved ratio timer.
//!
//! Every ratio is measured by alternating short batches of the two contenders
//! within one process (A, B, A, B, ...) and taking the median of the per-round
//! ratios, so drift on a shared machine hits both sides alike.

use std::time::Duration;

use super::quick;

/// Median and spread of interleaved per-round ratios.
#[derive(Debug, Clone, Copy)]
pub struct Ratio {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Median time per iteration of the numerator, seconds.
    pub a_secs: f64,
    /// Median time per iteration of the denominator, seconds.
    pub b_secs: f64,
}

/// Times `a` and `b` alternately and returns `time(a) / time(b)` per call.
///
/// Each closure takes an iteration count and returns the time those
/// iterations took (so untimed setup can be excluded). A batch is sized to
/// about 10 ms (3 ms in quick mode); there are 21 rounds (7 in quick mode).
pub fn interleaved(
    mut a: impl FnMut(u64) -> Duration,
    mut b: impl FnMut(u64) -> Duration,
) -> Ratio {
    let (target, rounds) = if quick() { (0.003, 7) } else { (0.010, 21) };
    let size = |f: &mut dyn FnMut(u64) -> Duration| {
        f(1);
        let once = f(4).as_secs_f64() / 4.0;
        ((target / once.max(1e-9)) as u64).clamp(1, 1_000_000)
    };
    let (na, nb) = (size(&mut a), size(&mut b));
    let mut ratios = Vec::with_capacity(rounds);
    let (mut ta, mut tb) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        let x = a(na).as_secs_f64() / na as f64;
        let y = b(nb).as_secs_f64() / nb as f64;
        ratios.push(x / y);
        ta.push(x);
        tb.push(y);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ratio {
        median: med(&mut ratios),
        min: ratios[0],
        max: ratios[ratios.len() - 1],
        a_secs: med(&mut ta),
        b_secs: med(&mut tb),
    }
}

/// Prints one ratio line: label, median, spread, both times, goal and verdict.
pub fn report(label: &str, r: &Ratio, goal: &str, met: bool) {
    println!(
        "ratio {label}: {:.3} (rounds {:.3}..{:.3}; {} / {}) goal {goal}: {}",
        r.median,
        r.min,
        r.max,
        human(r.a_secs),
        human(r.b_secs),
        if met { "met" } else { "NOT met" }
    );
}

/// Seconds as a short human string.
pub fn human(secs: f64) -> String {
    if secs >= 1e-3 {
        format!("{:.3} ms", secs * 1e3)
    } else if secs >= 1e-6 {
        format!("{:.2} µs", secs * 1e6)
    } else {
        format!("{:.1} ns", secs * 1e9)
    }
}
