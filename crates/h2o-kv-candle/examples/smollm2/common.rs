//! What every command shares: model lookup, policies and budgets, progress
//! bars, token statistics.

use std::path::{Path, PathBuf};
use std::time::Duration;

use h2o_kv::{AnyPolicy, Full, H2O, Heavy, Recent};
use h2o_kv_candle::llama::{self, Llama, Tokenizer};
use h2o_kv_candle::locate::{SMOLLM2_FILE, SMOLLM2_HINT, find_model};
use indicatif::{ProgressBar, ProgressStyle};

/// Errors of the example: the library's, or a message.
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Loads the model from `--model` or the default places; with `f32`, its
/// weights dequantized to f32 (see `Llama::dequantized`).
pub fn load(model: Option<&Path>, f32: bool) -> Result<(PathBuf, Llama, Tokenizer)> {
    let path = find_model(model, SMOLLM2_FILE, SMOLLM2_HINT)?;
    let (m, t) = llama::load(&path)?;
    let m = if f32 { m.dequantized()? } else { m };
    Ok((path, m, t))
}

/// The four policies of the crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyKind {
    /// Keep every token.
    Full,
    /// Sliding window of the newest tokens.
    Recent,
    /// Heavy hitters (highest accumulated attention) + the newest token.
    Heavy,
    /// H2O: heavy hitters + a recent window.
    H2o,
}

impl PolicyKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Recent => "recent",
            Self::Heavy => "heavy",
            Self::H2o => "h2o",
        }
    }
}

/// A budget: tokens, or a percentage of a reference length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    Tokens(usize),
    Percent(f64),
}

impl std::str::FromStr for Budget {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("budget {s:?}: give tokens (512) or a percentage (20%)");
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!("budget {s:?}: the percentage must be in (0, 100]"));
            }
            Ok(Self::Percent(p))
        } else {
            let t: usize = s.trim().parse().map_err(|_| bad())?;
            if t == 0 {
                return Err("budget must be at least 1 token".into());
            }
            Ok(Self::Tokens(t))
        }
    }
}

impl Budget {
    /// Tokens for a sequence of `len` tokens (a percentage rounds to nearest, at least 1).
    pub fn tokens(self, len: usize) -> usize {
        match self {
            Self::Tokens(t) => t,
            Self::Percent(p) => ((len as f64 * p / 100.0).round() as usize).max(1),
        }
    }
}

/// One configuration of an eval grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spec {
    pub kind: PolicyKind,
    /// Budget in % of the reference length (100 for the full cache).
    pub percent: f64,
    /// H2O's heavy share; 0 otherwise.
    pub heavy_fraction: f64,
}

impl Spec {
    pub fn label(&self) -> String {
        match self.kind {
            PolicyKind::Full => "full".into(),
            PolicyKind::H2o => format!("h2o {}% (heavy {})", self.percent, self.heavy_fraction),
            k => format!("{} {}%", k.name(), self.percent),
        }
    }

    /// The policy for a sequence of `len` tokens; a full cache holds `capacity`.
    pub fn policy(&self, len: usize, capacity: usize) -> Result<AnyPolicy> {
        make_policy(
            self.kind,
            Budget::Percent(self.percent).tokens(len),
            self.heavy_fraction,
            capacity,
        )
    }
}

/// A policy of `kind` keeping `budget` tokens per head (the full cache keeps `capacity`).
pub fn make_policy(
    kind: PolicyKind,
    budget: usize,
    heavy_fraction: f64,
    capacity: usize,
) -> Result<AnyPolicy> {
    Ok(match kind {
        PolicyKind::Full => Full::new(capacity)?.into(),
        PolicyKind::Recent => Recent::new(budget)?.into(),
        PolicyKind::Heavy => Heavy::new(budget)?.into(),
        PolicyKind::H2o => H2O::with_heavy_fraction(budget, heavy_fraction)?.into(),
    })
}

/// The grid: the full cache, then each policy at each budget (H2O at each heavy fraction).
pub fn grid(kinds: &[PolicyKind], percents: &[f64], fractions: &[f64]) -> Vec<Spec> {
    let mut specs = vec![Spec { kind: PolicyKind::Full, percent: 100.0, heavy_fraction: 0.0 }];
    for &kind in kinds {
        for &percent in percents {
            match kind {
                PolicyKind::Full => {}
                PolicyKind::H2o => {
                    for &heavy_fraction in fractions {
                        specs.push(Spec { kind, percent, heavy_fraction });
                    }
                }
                _ => specs.push(Spec { kind, percent, heavy_fraction: 0.0 }),
            }
        }
    }
    specs
}

/// A progress bar of `len` steps on stderr (hidden when stderr is not a terminal).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} (eta {eta})",
        )
        .expect("a valid template"),
    );
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(500));
    pb
}

/// Log-softmax of one row of logits, in f64.
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// Index of the largest element.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

/// The process's peak resident set (VmHWM) in bytes, where /proc is available.
pub fn peak_rss() -> Option<u64> {
    proc_status("VmHWM:")
}

/// The process's current resident set (VmRSS) in bytes.
pub fn current_rss() -> Option<u64> {
    proc_status("VmRSS:")
}

fn proc_status(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A small deterministic generator (SplitMix64) for sampling and passkeys.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Mebibytes, for tables.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
