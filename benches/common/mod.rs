//! Helpers shared by the benches, included as `mod common;`: the run
//! settings here (quick mode, the command-line filter, criterion's
//! configuration), the inputs and cache states in [`fixtures`], and the
//! interleaved ratio timer in [`ratio`].

#![allow(dead_code)] // Each bench binary uses a different subset.

pub mod fixtures;
pub mod ratio;

use std::time::Duration;

use criterion::Criterion;

/// Whether `H2O_KV_BENCH_QUICK` asks for the reduced grid (CI smoke runs).
pub fn quick() -> bool {
    std::env::var_os("H2O_KV_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The first command-line argument that is not a flag: criterion's filter.
pub fn filter() -> Option<String> {
    std::env::args().skip(1).find(|a| !a.starts_with('-'))
}

/// Whether a custom (non-criterion) section named `name` should run under the
/// command-line filter.
pub fn selected(name: &str) -> bool {
    filter().is_none_or(|f| name.contains(f.as_str()))
}

/// Criterion with short warm-up and measurement times: the grid is large, the
/// machine shared, and the ratios come from the interleaved timer anyway.
pub fn criterion() -> Criterion {
    let (warm, measure, samples) = if quick() { (50, 200, 10) } else { (300, 900, 20) };
    Criterion::default()
        .warm_up_time(Duration::from_millis(warm))
        .measurement_time(Duration::from_millis(measure))
        .sample_size(samples)
        .without_plots()
        .configure_from_args()
}
