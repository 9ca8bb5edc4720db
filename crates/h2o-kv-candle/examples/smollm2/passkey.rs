//! `passkey`: can the model still find a 5-digit key hidden in filler text
//! when its cache keeps only part of the prompt?
//!
//! Plain text, no chat template: an instruction, filler sentences, one
//! sentence holding the key at a given depth, then the question. The prompt
//! goes in as one prefill (H2O's scores are then the column sums of the
//! prompt's attention) and the model decodes up to 8 tokens greedily; a run
//! is correct when the key appears in them.
//!
//! A prefill evicts only at its end, so its activations are the same for every
//! policy: each prompt runs its matrix products and its attention once
//! (`Llama::prefill_shared`: the full cache prefills, every other cache
//! derives its prefill from it; SnapKV caches run their own attention, which
//! they need), and the first generated token is the same for every policy.
//! The up to 7 decode steps after it run batched over all caches
//! (`Llama::decode_shared`).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use h2o_kv_candle::llama::{Llama, LlamaCache, Tokenizer};

use h2o_kv::LayerSchedule;

use crate::common::{self, Method, Result, Rng, Spec};
use crate::plot;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Prompt lengths in tokens.
    #[arg(long, value_delimiter = ',', default_value = "1024,2048,4096")]
    lengths: Vec<usize>,
    /// Depths of the key sentence, in % of the filler.
    #[arg(long, value_delimiter = ',', default_value = "10,50,90")]
    depths: Vec<f64>,
    /// Keys (prompts) per length × depth.
    #[arg(long, default_value_t = 10)]
    keys: usize,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "recent,sinks,h2o,h2o+sinks,tova,mean,snapkv",
        help = common::policy_help("Bounded policies to compare with the full cache")
    )]
    policies: Vec<Method>,
    /// Budgets in % of the prompt.
    #[arg(long, value_delimiter = ',', default_value = "10,20,50")]
    budgets: Vec<f64>,
    /// H2O heavy-hitter shares (mean and h2o+sinks split at 0.5).
    #[arg(long, value_delimiter = ',', default_value = "0.5")]
    heavy_fractions: Vec<f64>,
    /// Budget schedules across layers: uniform, pyramid (PyramidKV,
    /// arXiv:2406.02069: linear decreasing from the first layer to the last,
    /// the same total), or both.
    #[arg(long, value_delimiter = ',', default_value = "uniform", value_parser = common::parse_schedule)]
    schedule: Vec<LayerSchedule>,
    /// Seed of the keys.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Run your own prompts instead: JSON lines `{"id", "prompt", "key"}`.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Write one JSON line per prompt: each policy's generated ids and text.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the accuracy table as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write an SVG heat map of accuracy.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Multiply with candle's quantized kernels (8-bit activations) instead of
    /// the GGUF's weights dequantized to f32 (same weights; f32 is ~14× faster
    /// for these batched evals on a CPU).
    #[arg(long)]
    quantized: bool,
    /// The GGUF file.
    #[arg(long)]
    model: Option<PathBuf>,
}

/// One prompt to run.
#[derive(Debug, Clone)]
struct Case {
    id: String,
    prompt: String,
    key: String,
    /// (target length, depth %) for the built-in grid.
    cell: Option<(usize, f64)>,
}

/// A cell of the accuracy table.
#[derive(Debug, Clone)]
pub struct Cell {
    pub spec: Spec,
    pub length: usize,
    pub depth: f64,
    pub correct: usize,
    pub total: usize,
}

const INSTRUCTION: &str = "There is an important piece of information hidden inside a lot of \
irrelevant text. Find it and memorize it. I will quiz you about the important information there.\n";
const FILLER: &str =
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
const QUESTION: &str = "\nWhat is the pass key? The pass key is";

fn needle(key: &str) -> String {
    format!(" The pass key is {key}. Remember it. {key} is the pass key.")
}

fn build(n_filler: usize, depth: f64, key: &str) -> String {
    let before = ((n_filler as f64) * depth / 100.0).round() as usize;
    let mut s = String::from(INSTRUCTION);
    for _ in 0..before {
        s.push_str(FILLER);
    }
    s.push_str(&needle(key));
    for _ in before..n_filler {
        s.push_str(FILLER);
    }
    s.push_str(QUESTION);
    s
}

/// The prompt of at most `length` tokens with the most filler.
fn fit(tok: &Tokenizer, length: usize, depth: f64, key: &str) -> Result<String> {
    let (mut lo, mut hi) = (0usize, length);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if tok.encode(&build(mid, depth, key))?.len() <= length {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(build(lo, depth, key))
}

fn grid_cases(tok: &Tokenizer, a: &Args) -> Result<Vec<Case>> {
    let mut rng = Rng::new(a.seed);
    let mut cases = Vec::new();
    // Length by length, and within a length key by key across the depths, so
    // a run stopped part-way (see `passkey-report`) has balanced cells.
    for &length in &a.lengths {
        for k in 0..a.keys {
            for &depth in &a.depths {
                let key = format!("{}", 10_000 + rng.next_u64() % 90_000);
                cases.push(Case {
                    id: format!("len{length}-depth{depth}-{k}"),
                    prompt: fit(tok, length, depth, &key)?,
                    key,
                    cell: Some((length, depth)),
                });
            }
        }
    }
    Ok(cases)
}

fn file_cases(path: &std::path::Path) -> Result<Vec<Case>> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut cases = Vec::new();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        let field = |k: &str| -> Result<String> {
            match &v[k] {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Number(x) => Ok(x.to_string()),
                _ => {
                    Err(format!("{}:{}: missing string field {k:?}", path.display(), n + 1).into())
                }
            }
        };
        cases.push(Case {
            id: field("id")?,
            prompt: field("prompt")?,
            key: field("key")?,
            cell: None,
        });
    }
    Ok(cases)
}

/// Greedy continuation (up to 8 tokens) for every cache after a shared
/// prefill; the decode steps of all caches are batched (`decode_shared`).
fn answer(
    model: &Llama,
    tok: &Tokenizer,
    caches: &mut [LlamaCache],
    ids: &[u32],
) -> Result<Vec<Vec<u32>>> {
    let first = common::argmax(&model.prefill_shared(caches, ids)?.to_vec1::<f32>()?) as u32;
    let eos = tok.eos_id();
    let mut outs = vec![vec![first]; caches.len()];
    let done = |o: &Vec<u32>| o.len() >= 8 || o.last().copied() == eos;
    while !outs.iter().all(done) {
        // A finished cache is fed its last token again and its row ignored.
        let last: Vec<u32> = outs.iter().map(|o| *o.last().expect("starts with one")).collect();
        let logits = model.decode_shared(caches, &last)?.to_vec2::<f32>()?;
        for (o, row) in outs.iter_mut().zip(&logits) {
            if !done(o) {
                o.push(common::argmax(row) as u32);
            }
        }
    }
    Ok(outs)
}

pub fn run(a: &Args) -> Result<()> {
    let (_, model, tok) = common::load(a.model.as_deref(), !a.quantized)?;
    let cases = match &a.prompts {
        Some(p) => file_cases(p)?,
        None => grid_cases(&tok, a)?,
    };
    let specs = common::grid(&a.policies, &a.budgets, &a.heavy_fractions, &a.schedule);
    let mut out = match &a.out {
        Some(p) => Some(std::fs::File::create(p)?),
        None => None,
    };
    let mut cells: Vec<Cell> = Vec::new();
    let started = Instant::now();
    let pb = common::bar(cases.len() as u64, "passkey");
    for case in &cases {
        pb.set_message(case.id.clone());
        let ids = tok.encode(&case.prompt)?;
        if ids.is_empty() {
            return Err(format!("prompt {} is empty", case.id).into());
        }
        let capacity = ids.len() + 8;
        if capacity > model.config().context_length {
            return Err(format!(
                "prompt {}: {} tokens leave no room in the {}-token context",
                case.id,
                ids.len(),
                model.config().context_length
            )
            .into());
        }
        let mut caches = specs
            .iter()
            .map(|s| s.cache(model.config(), ids.len(), capacity))
            .collect::<Result<Vec<_>>>()?;
        let answers = answer(&model, &tok, &mut caches, &ids)?;
        let mut results = Vec::new();
        for ((spec, ans), cache) in specs.iter().zip(&answers).zip(&caches) {
            let text = tok.decode(ans)?;
            let correct = text.contains(&case.key);
            results.push(serde_json::json!({
                "policy": spec.method.name(), "budget_percent": spec.percent,
                "schedule": spec.schedule.name(),
                "heavy_fraction": spec.heavy_fraction, "label": spec.label(),
                "ids": ans, "text": text, "correct": correct, "kv_bytes": cache.kv_bytes(),
            }));
            let (length, depth) = case.cell.unwrap_or((0, f64::NAN));
            tally(&mut cells, spec, length, depth, correct);
        }
        if let Some(f) = &mut out {
            let line = serde_json::json!({"id": case.id, "key": case.key, "tokens": ids.len(), "results": results});
            writeln!(f, "{line}")?;
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    eprintln!(
        "passkey: {} prompts × {} policies in {:.1} s",
        cases.len(),
        specs.len(),
        started.elapsed().as_secs_f64()
    );
    print_table(&cells, &specs);
    if let Some(p) = &a.csv {
        write_csv(&cells, p)?;
    }
    if let Some(p) = &a.plot {
        plot::passkey(&cells, &specs, p)?;
    }
    Ok(())
}

/// Markdown: one row per policy, one column per (length, depth), plus the total.
fn print_table(cells: &[Cell], specs: &[Spec]) {
    let mut cols: Vec<(usize, f64)> = Vec::new();
    for c in cells {
        if !cols
            .iter()
            .any(|&(l, d)| l == c.length && (d == c.depth || (d.is_nan() && c.depth.is_nan())))
        {
            cols.push((c.length, c.depth));
        }
    }
    let head: Vec<String> = cols
        .iter()
        .map(|&(l, d)| if d.is_nan() { "your prompts".into() } else { format!("{l} @{d}%") })
        .collect();
    println!("| policy | {} | total |", head.join(" | "));
    println!("|---|{}---:|", "---:|".repeat(cols.len()));
    for s in specs {
        let mut line = format!("| {} |", s.label());
        let (mut ok, mut n) = (0, 0);
        for &(l, d) in &cols {
            match cells.iter().find(|c| {
                c.spec == *s && c.length == l && (c.depth == d || (d.is_nan() && c.depth.is_nan()))
            }) {
                Some(c) => {
                    line.push_str(&format!(" {}/{} |", c.correct, c.total));
                    ok += c.correct;
                    n += c.total;
                }
                None => line.push_str(" – |"),
            }
        }
        println!("{line} {ok}/{n} |");
    }
}

/// Counts one answer into its cell.
fn tally(cells: &mut Vec<Cell>, spec: &Spec, length: usize, depth: f64, correct: bool) {
    let same = |c: &&mut Cell| {
        c.spec == *spec && c.length == length && c.depth.to_bits() == depth.to_bits()
    };
    match cells.iter_mut().find(same) {
        Some(c) => {
            c.correct += usize::from(correct);
            c.total += 1;
        }
        None => {
            cells.push(Cell { spec: *spec, length, depth, correct: usize::from(correct), total: 1 })
        }
    }
}

fn write_csv(cells: &[Cell], path: &std::path::Path) -> Result<()> {
    let mut f = std::fs::File::create(path)?;
    writeln!(
        f,
        "policy,budget_percent,heavy_fraction,length,depth_percent,correct,total,schedule"
    )?;
    for c in cells {
        writeln!(
            f,
            "{},{},{},{},{},{},{},{}",
            c.spec.method.name(),
            c.spec.percent,
            c.spec.heavy_fraction,
            c.length,
            c.depth,
            c.correct,
            c.total,
            c.spec.schedule.name()
        )?;
    }
    Ok(())
}

/// `passkey-report`: the table, CSV and heat map of a `passkey --out` file
/// (e.g. of a run stopped part-way: every finished prompt is in it).
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The JSON lines `passkey --out` wrote.
    input: PathBuf,
    /// Write the accuracy table as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write an SVG heat map of accuracy.
    #[arg(long)]
    plot: Option<PathBuf>,
}

pub fn report(a: &ReportArgs) -> Result<()> {
    let f = std::fs::File::open(&a.input).map_err(|e| format!("{}: {e}", a.input.display()))?;
    let (mut cells, mut specs): (Vec<Cell>, Vec<Spec>) = (Vec::new(), Vec::new());
    let mut prompts = 0;
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: &str| format!("{}:{}: {what}", a.input.display(), n + 1);
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| bad(&e.to_string()))?;
        // The built-in grid's ids are `len{length}-depth{depth}-{k}`.
        let id = v["id"].as_str().unwrap_or_default();
        let cell = id.strip_prefix("len").and_then(|rest| {
            let (len, rest) = rest.split_once("-depth")?;
            let (depth, _) = rest.rsplit_once('-')?;
            Some((len.parse::<usize>().ok()?, depth.parse::<f64>().ok()?))
        });
        let (length, depth) = cell.unwrap_or((0, f64::NAN));
        for r in v["results"].as_array().ok_or_else(|| bad("no results"))? {
            let num = |k: &str| r[k].as_f64().ok_or_else(|| bad(&format!("no {k}")));
            let method: Method = r["policy"].as_str().ok_or_else(|| bad("no policy"))?.parse()?;
            let schedule = common::parse_schedule(r["schedule"].as_str().unwrap_or("uniform"))?;
            let spec = Spec {
                method,
                percent: num("budget_percent")?,
                heavy_fraction: num("heavy_fraction")?,
                schedule,
            };
            if !specs.contains(&spec) {
                specs.push(spec);
            }
            tally(&mut cells, &spec, length, depth, r["correct"].as_bool() == Some(true));
        }
        prompts += 1;
    }
    eprintln!("passkey-report: {prompts} prompts × {} policies", specs.len());
    print_table(&cells, &specs);
    if let Some(p) = &a.csv {
        write_csv(&cells, p)?;
    }
    if let Some(p) = &a.plot {
        plot::passkey(&cells, &specs, p)?;
    }
    Ok(())
}
