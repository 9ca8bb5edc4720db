//! What every command shares: model lookup, policies and budgets, progress
//! bars, token statistics.

use std::path::{Path, PathBuf};
use std::time::Duration;

use h2o_kv::{AnyPolicy, Full, H2O, LayerSchedule, PolicyKind, SnapKv};
use h2o_kv_candle::llama::{self, Config, Llama, LlamaCache, Tokenizer};
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

/// What a grid compares: one of the core's policies (by its name, as
/// `h2o_kv::PolicyKind` parses it), or SnapKV prefill selection followed by
/// H2O decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A policy of the core, the same rule at prefill and decode.
    Policy(PolicyKind),
    /// SnapKV (Li et al. 2024, arXiv:2404.14469, §4): at the end of a prompt
    /// prefill keep the 32-token observation window plus the prompt tokens
    /// its queries attended to most (max-pooled, kernel 7); then decode under
    /// H2O at the same budget, its recent window the observation window.
    SnapKv,
}

impl Method {
    /// `full` (the baseline every grid starts with).
    pub const FULL: Method = Method::Policy(PolicyKind::Full);

    pub fn name(self) -> &'static str {
        match self {
            Self::Policy(k) => k.name(),
            Self::SnapKv => "snapkv",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "snapkv" {
            return Ok(Self::SnapKv);
        }
        s.parse::<PolicyKind>().map(Self::Policy).map_err(|e| format!("{e}, or snapkv"))
    }
}

/// The names `--policies` takes, for `--help`: the core's, then `snapkv`.
pub fn method_names() -> String {
    let mut names: Vec<&str> = PolicyKind::ALL.iter().map(|k| k.name()).collect();
    names.push("snapkv");
    names.join(", ")
}

/// Help text of a policy argument: what it is, the names it takes, and what
/// `snapkv` means.
pub fn policy_help(what: &str) -> String {
    format!(
        "{what}: {}. snapkv = SnapKV selection at the end of the prompt prefill \
         (observation window 32, max-pool kernel 7; arXiv:2404.14469 §4), then H2O decoding \
         at the same budget with the observation window as its recent window",
        method_names()
    )
}

/// `--schedule`: how a total budget is shared across layers.
pub fn parse_schedule(s: &str) -> std::result::Result<LayerSchedule, String> {
    match s {
        "uniform" => Ok(LayerSchedule::Uniform),
        "pyramid" => Ok(LayerSchedule::pyramid()),
        _ => Err(format!("schedule {s:?}: uniform or pyramid")),
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
    pub method: Method,
    /// Budget per KV head in % of the reference length (100 for the full
    /// cache); with a pyramid schedule, the average over layers.
    pub percent: f64,
    /// The heavy share of H2O, mean score and H2O + sinks; 0 otherwise.
    pub heavy_fraction: f64,
    /// How the model's total budget is shared across layers.
    pub schedule: LayerSchedule,
}

/// The heavy share of mean score and H2O + sinks in the grids (H2O's own
/// sweeps `--heavy-fractions`).
pub const OTHER_HEAVY_FRACTION: f64 = 0.5;

impl Spec {
    pub fn label(&self) -> String {
        let base = match self.method {
            Method::FULL => return "full".into(),
            Method::Policy(PolicyKind::H2O) => {
                format!("h2o {}% (heavy {})", self.percent, self.heavy_fraction)
            }
            m => format!("{} {}%", m.name(), self.percent),
        };
        match self.schedule {
            LayerSchedule::Uniform => base,
            s => format!("{base} {}", s.name()),
        }
    }

    /// Each layer's policy for a sequence of `len` tokens (a full cache
    /// holds `capacity`), and the SnapKV rule for the prefill, if any.
    pub fn policies(
        &self,
        len: usize,
        capacity: usize,
        n_layers: usize,
    ) -> Result<(Vec<AnyPolicy>, Option<SnapKv>)> {
        let budget = Budget::Percent(self.percent).tokens(len);
        layer_policies(self.method, budget, self.heavy_fraction, self.schedule, capacity, n_layers)
    }

    /// The cache of one sequence under this spec.
    pub fn cache(&self, config: &Config, len: usize, capacity: usize) -> Result<LlamaCache> {
        let (policies, snap) = self.policies(len, capacity, config.n_layers)?;
        let cache = LlamaCache::per_layer(config, &policies)?;
        Ok(match snap {
            Some(s) => cache.with_snapkv(s),
            None => cache,
        })
    }
}

/// Each layer's policy when the model keeps `budget` tokens per KV head on
/// average (`capacity` for the full cache), shared across layers by
/// `schedule`, and the SnapKV rule for prefills if `method` is SnapKV (each
/// layer then decodes under H2O with the observation window as its recent
/// window and the rest of its budget for heavy hitters).
pub fn layer_policies(
    method: Method,
    budget: usize,
    heavy_fraction: f64,
    schedule: LayerSchedule,
    capacity: usize,
    n_layers: usize,
) -> Result<(Vec<AnyPolicy>, Option<SnapKv>)> {
    let snap = SnapKv::default();
    // PyramidKV keeps the observation window outside the schedule.
    let reserve = match method {
        Method::SnapKv => snap.window().min(budget),
        Method::Policy(_) => 0,
    };
    let mut budgets = vec![budget; n_layers];
    if method != Method::FULL {
        schedule.split(budget * n_layers, reserve, &mut budgets)?;
    }
    let policies = budgets
        .iter()
        .map(|&b| match method {
            Method::FULL => Ok(Full::new(capacity)?.into()),
            Method::Policy(kind) => Ok(kind.with_budget(b, heavy_fraction)?),
            Method::SnapKv => {
                let w = snap.window().min(b.saturating_sub(1)).max(1);
                Ok(H2O::new(b.saturating_sub(w), w)?.into())
            }
        })
        .collect::<Result<Vec<AnyPolicy>>>()?;
    Ok((policies, (method == Method::SnapKv).then_some(snap)))
}

/// The grid: the full cache, then each method at each budget and schedule
/// (H2O at each heavy fraction).
pub fn grid(
    methods: &[Method],
    percents: &[f64],
    fractions: &[f64],
    schedules: &[LayerSchedule],
) -> Vec<Spec> {
    let full = Spec {
        method: Method::FULL,
        percent: 100.0,
        heavy_fraction: 0.0,
        schedule: LayerSchedule::Uniform,
    };
    let mut specs = vec![full];
    for &schedule in schedules {
        for &method in methods {
            for &percent in percents {
                let mut push = |heavy_fraction| {
                    specs.push(Spec { method, percent, heavy_fraction, schedule });
                };
                match method {
                    Method::FULL => {}
                    Method::Policy(PolicyKind::H2O) => fractions.iter().for_each(|&f| push(f)),
                    Method::Policy(PolicyKind::MeanScore | PolicyKind::H2OSinks) => {
                        push(OTHER_HEAVY_FRACTION);
                    }
                    _ => push(0.0),
                }
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
