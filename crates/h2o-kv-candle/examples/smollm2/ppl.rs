//! `ppl`: teacher-forced perplexity of each policy on long windows.
//!
//! Each window is scored with the full cache (prefill: exact causal
//! attention) and with every policy of the grid, teacher-forced: the model
//! runs layer by layer, the projections and MLP as batched products over the
//! window, the attention token by token through the cache, which is exactly
//! what decoding the window one token at a time gives (tested against it).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use h2o_kv_candle::llama::{Llama, LlamaCache};
use h2o_kv_candle::locate::find_data;

use h2o_kv::LayerSchedule;

use crate::common::{self, Method, Result, Spec};
use crate::plot;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tokens per window.
    #[arg(long, default_value_t = 2048)]
    window: usize,
    /// Windows per text, spread evenly over the text.
    #[arg(long, default_value_t = 1)]
    windows: usize,
    /// Texts: `wikitext` (WikiText-2 test), `alice` (Alice in Wonderland), or a path.
    #[arg(long, value_delimiter = ',', default_value = "wikitext,alice")]
    texts: Vec<String>,
    /// Bounded policies to compare with the full cache (every policy of
    /// h2o-kv; snapkv compresses a prompt prefill, which teacher-forced
    /// perplexity does not have, so it belongs to `passkey`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "recent,heavy,sinks,h2o,h2o+sinks,tova,mean",
        help = common::policy_help("Bounded policies to compare with the full cache (not snapkv: perplexity here is teacher-forced decoding from an empty cache, with no prompt prefill to compress)")
    )]
    policies: Vec<Method>,
    /// Budgets in % of the window.
    #[arg(long, value_delimiter = ',', default_value = "5,10,20,40")]
    budgets: Vec<f64>,
    /// H2O heavy-hitter shares (mean and h2o+sinks split at 0.5).
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.25,0.5")]
    heavy_fractions: Vec<f64>,
    /// Budget schedules across layers: uniform, pyramid (PyramidKV,
    /// arXiv:2406.02069: linear decreasing from the first layer to the last,
    /// the same total), or both.
    #[arg(long, value_delimiter = ',', default_value = "uniform", value_parser = common::parse_schedule)]
    schedule: Vec<LayerSchedule>,
    /// Write the rows as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write an SVG plot (perplexity × full against budget).
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

/// One (text, policy) result, summed over windows.
#[derive(Debug, Clone)]
pub struct Row {
    pub text: String,
    pub spec: Spec,
    pub nll: f64,
    pub tokens: usize,
    pub agree: usize,
    pub kl: f64,
    pub kv_bytes: u64,
    pub windows: usize,
}

impl Row {
    pub fn ppl(&self) -> f64 {
        (self.nll / self.tokens as f64).exp()
    }
}

fn text_file(name: &str) -> Result<PathBuf> {
    let rel = match name {
        "wikitext" => "wikitext-2-raw/wiki.test.raw",
        "alice" => "books/alice29.txt",
        path => return Ok(PathBuf::from(path)),
    };
    Ok(find_data(
        None,
        rel,
        "WikiText-2 raw (wiki.test.raw) and alice29.txt (Canterbury corpus); set H2O_KV_DATA=DIR",
    )?)
}

/// Row-wise log-softmax of `[rows, vocab]` logits, kept in f32 (a 2048-token
/// window of SmolLM2 is 400 MB at f32).
fn log_probs(logits: &candle_core::Tensor) -> Result<Vec<Vec<f32>>> {
    let rows = logits.to_vec2::<f32>()?;
    Ok(rows.iter().map(|r| common::log_softmax(r).iter().map(|&x| x as f32).collect()).collect())
}

fn score(
    model: &Llama,
    spec: &Spec,
    window: &[u32],
    full: &[Vec<f32>],
    row: &mut Row,
) -> Result<()> {
    let mut cache = spec.cache(model.config(), window.len(), window.len())?;
    let logits = if spec.method == Method::FULL {
        model.forward_all(&mut cache, window)?
    } else {
        model.teacher_forced(&mut cache, window)?
    };
    let logits = logits.narrow(0, 0, window.len() - 1)?.to_vec2::<f32>()?;
    for (t, l) in logits.iter().enumerate() {
        let p = common::log_softmax(l);
        row.nll -= p[window[t + 1] as usize];
        let f = &full[t];
        row.agree += usize::from(common::argmax(l) == argmax32(f));
        row.kl +=
            f.iter().zip(&p).map(|(&a, &b)| f64::from(a).exp() * (f64::from(a) - b)).sum::<f64>();
    }
    row.tokens += logits.len();
    row.kv_bytes += cache.kv_bytes() as u64;
    row.windows += 1;
    Ok(())
}

fn argmax32(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

pub fn run(a: &Args) -> Result<()> {
    if a.window < 2 || a.windows == 0 {
        return Err("--window must be at least 2 and --windows at least 1".into());
    }
    let (_, model, tok) = common::load(a.model.as_deref(), !a.quantized)?;
    if a.window > model.config().context_length {
        return Err(format!(
            "--window {} exceeds the model's context {}",
            a.window,
            model.config().context_length
        )
        .into());
    }
    if a.policies.contains(&Method::SnapKv) {
        return Err("ppl: snapkv compresses a prompt prefill; teacher-forced perplexity decodes \
                    from an empty cache and has none (use passkey)"
            .into());
    }
    let specs = common::grid(&a.policies, &a.budgets, &a.heavy_fractions, &a.schedule);
    let mut rows = Vec::new();
    let started = Instant::now();
    for name in &a.texts {
        let path = text_file(name)?;
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let ids = tok.encode(&text)?;
        if ids.len() < a.window {
            return Err(format!("{name}: {} tokens, fewer than one window", ids.len()).into());
        }
        let span = ids.len() - a.window;
        let starts: Vec<usize> = (0..a.windows)
            .map(|i| if a.windows == 1 { 0 } else { span * i / (a.windows - 1) })
            .collect();
        eprintln!(
            "{name}: {} tokens, {} window(s) of {} at {:?}",
            ids.len(),
            starts.len(),
            a.window,
            starts
        );
        let mut text_rows: Vec<Row> = specs
            .iter()
            .map(|&spec| Row {
                text: name.clone(),
                spec,
                nll: 0.0,
                tokens: 0,
                agree: 0,
                kl: 0.0,
                kv_bytes: 0,
                windows: 0,
            })
            .collect();
        let pb = common::bar((starts.len() * specs.len()) as u64, name);
        for &s in &starts {
            let window = &ids[s..s + a.window];
            let mut cache = LlamaCache::full(model.config())?;
            let full =
                log_probs(&model.forward_all(&mut cache, window)?.narrow(0, 0, a.window - 1)?)?;
            for (spec, row) in specs.iter().zip(&mut text_rows) {
                pb.set_message(format!("{name} {}", spec.label()));
                let t = Instant::now();
                score(&model, spec, window, &full, row)?;
                if pb.is_hidden() {
                    eprintln!(
                        "{name} @{s}: {} in {:.1} s",
                        spec.label(),
                        t.elapsed().as_secs_f64()
                    );
                }
                pb.inc(1);
            }
        }
        pb.finish_and_clear();
        rows.extend(text_rows);
    }
    eprintln!("ppl: {} rows in {:.1} s", rows.len(), started.elapsed().as_secs_f64());
    print_table(&rows, a.window);
    if let Some(p) = &a.csv {
        write_csv(&rows, p, a.window)?;
    }
    if let Some(p) = &a.plot {
        plot::ppl(&rows, p, a.window)?;
    }
    Ok(())
}

fn full_ppl(rows: &[Row], text: &str) -> f64 {
    rows.iter().find(|r| r.text == text && r.spec.method == Method::FULL).map_or(f64::NAN, Row::ppl)
}

fn print_table(rows: &[Row], window: usize) {
    println!(
        "| text | policy | budget (tokens) | perplexity | × full | top-1 agreement | KL to full (nats) | KV bytes |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let budget = crate::common::Budget::Percent(r.spec.percent).tokens(window);
        println!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.1}% | {:.4} | {:.1} MiB |",
            r.text,
            r.spec.label(),
            if r.spec.method == Method::FULL { window } else { budget },
            r.ppl(),
            r.ppl() / full_ppl(rows, &r.text),
            100.0 * r.agree as f64 / r.tokens as f64,
            (r.kl / r.tokens as f64).max(0.0), // f32 log-probs: the full row is ±1e-7
            common::mib(r.kv_bytes / r.windows.max(1) as u64),
        );
    }
}

fn write_csv(rows: &[Row], path: &std::path::Path, window: usize) -> Result<()> {
    let mut f = std::fs::File::create(path)?;
    writeln!(
        f,
        "text,policy,budget_percent,budget_tokens,heavy_fraction,window,windows,tokens,perplexity,ppl_over_full,top1_agreement,kl_to_full,kv_bytes,schedule"
    )?;
    for r in rows {
        writeln!(
            f,
            "{},{},{},{},{},{},{},{},{:.5},{:.5},{:.5},{:.6},{},{}",
            r.text,
            r.spec.method.name(),
            r.spec.percent,
            crate::common::Budget::Percent(r.spec.percent).tokens(window),
            r.spec.heavy_fraction,
            window,
            r.windows,
            r.tokens,
            r.ppl(),
            r.ppl() / full_ppl(rows, &r.text),
            r.agree as f64 / r.tokens as f64,
            r.kl / r.tokens as f64,
            r.kv_bytes / r.windows.max(1) as u64,
            r.spec.schedule.name(),
        )?;
    }
    Ok(())
}

/// `ppl-merge`: several `ppl --csv` files (e.g. runs over different policies
/// of the same windows) as one table, CSV and plot.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// The CSV files, in order; a full-cache row seen before for the same
    /// text is dropped.
    #[arg(required = true, value_delimiter = ',')]
    inputs: Vec<PathBuf>,
    /// Write the merged rows as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write the SVG plot of the merged rows.
    #[arg(long)]
    plot: Option<PathBuf>,
}

pub fn merge(a: &MergeArgs) -> Result<()> {
    let mut rows: Vec<Row> = Vec::new();
    let mut window = 0;
    for path in &a.inputs {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().ok_or("empty CSV")?.split(',').collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .ok_or(format!("{}: no column {name}", path.display()))
        };
        let c = [
            "text",
            "policy",
            "budget_percent",
            "heavy_fraction",
            "window",
            "windows",
            "tokens",
            "perplexity",
            "top1_agreement",
            "kl_to_full",
            "kv_bytes",
        ]
        .map(col);
        let c: Vec<usize> = c.into_iter().collect::<std::result::Result<_, _>>()?;
        let schedule = header.iter().position(|h| *h == "schedule");
        for (n, line) in lines.enumerate() {
            let f: Vec<&str> = line.split(',').collect();
            let bad = || format!("{}:{}: a malformed row", path.display(), n + 2);
            let num = |i: usize| f.get(c[i]).and_then(|x| x.parse::<f64>().ok()).ok_or_else(bad);
            let method: Method = f.get(c[1]).ok_or_else(bad)?.parse()?;
            let sched = match schedule.and_then(|i| f.get(i)) {
                Some(s) => common::parse_schedule(s)?,
                None => LayerSchedule::Uniform,
            };
            let spec = Spec { method, percent: num(2)?, heavy_fraction: num(3)?, schedule: sched };
            let text = f.get(c[0]).ok_or_else(bad)?.to_string();
            if method == Method::FULL && rows.iter().any(|r| r.text == text && r.spec == spec) {
                continue;
            }
            window = num(4)? as usize;
            let (windows, tokens) = (num(5)? as usize, num(6)? as usize);
            rows.push(Row {
                text,
                spec,
                nll: num(7)?.ln() * tokens as f64,
                tokens,
                agree: (num(8)? * tokens as f64).round() as usize,
                kl: num(9)? * tokens as f64,
                kv_bytes: num(10)? as u64 * windows as u64,
                windows,
            });
        }
    }
    // Group by text, in order of first appearance (a stable sort).
    let mut texts: Vec<String> = Vec::new();
    for r in &rows {
        if !texts.contains(&r.text) {
            texts.push(r.text.clone());
        }
    }
    rows.sort_by_key(|r| texts.iter().position(|t| *t == r.text));
    print_table(&rows, window);
    if let Some(p) = &a.csv {
        write_csv(&rows, p, window)?;
    }
    if let Some(p) = &a.plot {
        plot::ppl(&rows, p, window)?;
    }
    Ok(())
}
