//! The `llama2c` binary: generate text with stories260K through h2o-kv's
//! caches, or compare every policy and budget with the full cache.
//!
//! ```text
//! cargo run --release -p llama2c -- generate --temperature 0 --steps 200
//! cargo run --release -p llama2c -- generate --temperature 0 --steps 200 --plain
//! cargo run --release -p llama2c -- generate --policy h2o --budget 64 --prompt "Once upon"
//! cargo run --release -p llama2c -- eval --csv docs/real_model.csv --plot docs/real_model.svg
//! ```
//!
//! The files (not in the repository): `stories260K.bin` and `tok512.bin`
//! from huggingface.co/karpathy/tinyllamas (folder `stories260K/`), and the
//! story file; see [`llama2c::files`] for where they are looked up.

mod plot;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};

use h2o_kv::EvictionPolicy;
use llama2c::error::{Error, Result};
use llama2c::files::{self, Kind};
use llama2c::forward::StepOrder;
use llama2c::model::Model;
use llama2c::policy::PolicyKind;
use llama2c::tokenizer::Tokenizer;
use llama2c::{eval, generate};

#[derive(Debug, Parser)]
#[command(about = "Decode llama2.c's stories260K through h2o-kv caches")]
struct Cli {
    /// Checkpoint (llama2.c version-0 .bin) [default: stories260K.bin in $H2O_KV_MODELS,
    /// ./models/ or ../shared/models/]
    #[arg(long, global = true)]
    model: Option<PathBuf>,
    /// Tokenizer (.bin) [default: tok512.bin, looked up as the checkpoint]
    #[arg(long, global = true)]
    tokenizer: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Which KV-cache step each layer runs.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Order {
    /// Insert, attend, evict (the query sees its own key).
    Transformer,
    /// Attend, insert, evict (paper Algorithm 1).
    Document,
    /// Evict, insert, attend over exactly the budget (sliding-window-trained models).
    Window,
}

impl From<Order> for StepOrder {
    fn from(o: Order) -> Self {
        match o {
            Order::Transformer => StepOrder::InsertAttendEvict,
            Order::Document => StepOrder::AttendInsertEvict,
            Order::Window => StepOrder::EvictInsertAttend,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate text as llama2.c's run.c does.
    Generate {
        /// Prompt text (BOS is added).
        #[arg(long, default_value = "")]
        prompt: String,
        /// Decode steps including the BOS position (0: seq_len). Past seq_len an
        /// evicting policy goes on at absolute positions; the full cache stops at seq_len.
        #[arg(long, default_value_t = 256)]
        steps: usize,
        /// Sampling temperature; 0 is greedy.
        #[arg(long, default_value_t = 1.0)]
        temperature: f32,
        /// Nucleus sampling mass; 0 or 1 disables it.
        #[arg(long, default_value_t = 0.9)]
        top_p: f32,
        /// Random seed (nonzero).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Cache policy of every layer.
        #[arg(long, value_enum, default_value_t = PolicyKind::Full)]
        policy: PolicyKind,
        /// Tokens kept per KV head (ignored by `full`).
        #[arg(long, default_value_t = 102)]
        budget: usize,
        /// Heavy-hitter share of an H2O budget.
        #[arg(long, default_value_t = 0.5)]
        heavy_fraction: f64,
        /// Step order.
        #[arg(long, value_enum, default_value_t = Order::Transformer)]
        order: Order,
        /// Bypass h2o-kv: keep keys and values in llama2.c's plain arrays (baseline).
        #[arg(long)]
        plain: bool,
        /// Write an eviction map (SVG: decode step × position, resident, evicted,
        /// heavy hitters) of one KV head here.
        #[arg(long)]
        eviction_map: Option<PathBuf>,
        /// Layer of the eviction map.
        #[arg(long, default_value_t = 0)]
        map_layer: usize,
        /// KV head of the eviction map.
        #[arg(long, default_value_t = 0)]
        map_head: usize,
    },
    /// Teacher-forced perplexity of every policy and budget against the full cache.
    Eval {
        /// Story file, stories separated by `<|endoftext|>` lines
        /// [default: tinystories_valid_sample.txt in $H2O_KV_DATA, ./data/ or ../shared/data/]
        #[arg(long)]
        data: Option<PathBuf>,
        /// Budgets in percent of seq_len (rounded half up to tokens).
        #[arg(long, value_delimiter = ',', default_values_t = [5, 10, 20, 40, 60])]
        budgets: Vec<u32>,
        /// H2O heavy fractions swept at `--sweep-budget`.
        #[arg(long, value_delimiter = ',', default_values_t = [0.1, 0.25, 0.5, 0.75])]
        fractions: Vec<f64>,
        /// Budget (percent) of the heavy-fraction sweep.
        #[arg(long, default_value_t = 20)]
        sweep_budget: u32,
        /// Use only the first N windows (0: all).
        #[arg(long, default_value_t = 0)]
        windows: usize,
        /// Worker threads (results do not depend on it).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Step order.
        #[arg(long, value_enum, default_value_t = Order::Transformer)]
        order: Order,
        /// Write the table as CSV here.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Write an SVG plot of perplexity against budget here.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Prompt then continue: after `--prompt` tokens through a full cache, each
    /// configuration derives its cache (equal heads, or Ada-KV's per-head budgets)
    /// and decodes the rest of the window; perplexity of the continuation.
    PromptEval {
        /// Story file [default: tinystories_valid_sample.txt, as for `eval`].
        #[arg(long)]
        data: Option<PathBuf>,
        /// Prompt tokens per window.
        #[arg(long, default_value_t = 256)]
        prompt: usize,
        /// Tokens per KV head (Ada-KV: on average; the layer total is n_kv_heads × this).
        #[arg(long, value_delimiter = ',', default_values_t = [8, 16, 32, 64])]
        budgets: Vec<usize>,
        /// Ada-KV safeguards (each head keeps at least this share of an equal split).
        #[arg(long, value_delimiter = ',', default_values_t = [0.2, 0.5])]
        safeguards: Vec<f64>,
        /// Policies (heavy fraction 0.5 where it applies).
        #[arg(long, value_delimiter = ',', default_values = ["h2o", "heavy"])]
        policies: Vec<CliPolicy>,
        /// Use only the first N windows (0: all).
        #[arg(long, default_value_t = 0)]
        windows: usize,
    },
}

/// The policies `prompt-eval` compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CliPolicy {
    /// Heavy hitters plus a recent window.
    H2o,
    /// Heavy hitters plus the newest token.
    Heavy,
    /// Mean score with a recent window.
    Mean,
}

impl From<CliPolicy> for h2o_kv::PolicyKind {
    fn from(p: CliPolicy) -> Self {
        match p {
            CliPolicy::H2o => h2o_kv::PolicyKind::H2O,
            CliPolicy::Heavy => h2o_kv::PolicyKind::Heavy,
            CliPolicy::Mean => h2o_kv::PolicyKind::MeanScore,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if let Error::Io { source, .. } = &e {
                if source.kind() == std::io::ErrorKind::NotFound {
                    eprintln!("hint: {}", files::HINT);
                }
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let model_path =
        cli.model.unwrap_or_else(|| files::find_or_first(Kind::Model, "stories260K.bin"));
    let tok_path = cli.tokenizer.unwrap_or_else(|| files::find_or_first(Kind::Model, "tok512.bin"));
    let model = Model::load(&model_path)?;
    let tokenizer = Tokenizer::load_for(&tok_path, model.config.vocab_size)?;
    let seq_len = model.config.seq_len;
    match cli.command {
        Command::Generate {
            prompt,
            steps,
            temperature,
            top_p,
            seed,
            policy,
            budget,
            heavy_fraction,
            order,
            plain,
            eviction_map,
            map_layer,
            map_head,
        } => {
            let mut sampler = generate::Sampler::new(temperature, top_p, seed)?;
            let options = generate::Options {
                prompt,
                steps,
                policy: policy.build(budget, heavy_fraction, seq_len)?,
                order: order.into(),
                plain,
            };
            let watch = eviction_map.as_ref().map(|_| (map_layer, map_head));
            let (g, map) =
                generate::generate_watching(&model, &tokenizer, &mut sampler, &options, watch)?;
            if let Some(path) = &eviction_map {
                let map = map.ok_or_else(|| Error::InvalidArgument {
                    what: "eviction map (with --plain, or no such layer / KV head)",
                    value: format!("layer {map_layer}, head {map_head}"),
                })?;
                let title = format!(
                    "{} (budget {}), layer {map_layer}, KV head {map_head}",
                    options.policy.name(),
                    options.policy.budget()
                );
                map.render_svg(path, &title)
                    .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
                eprintln!("wrote {}", path.display());
            }
            if let generate::End::ContextFull { asked, seq_len } = g.end {
                eprintln!(
                    "note: stopped at {seq_len} steps, not {asked}: the model's context is \
                     {seq_len} tokens and the full cache keeps every token; an evicting --policy \
                     (recent, heavy, h2o) decodes further"
                );
            }
            if g.steps > seq_len {
                eprintln!(
                    "note: positions {seq_len}..{} are past the {seq_len} tokens the model was \
                     trained on; RoPE rotated them at those absolute positions, and each layer \
                     kept at most {} tokens per KV head",
                    g.steps - 1,
                    options.policy.budget()
                );
            }
            let mut stdout = std::io::stdout().lock();
            let written = stdout.write_all(&g.text).and_then(|()| writeln!(stdout));
            written.map_err(|e| Error::io(Path::new("<stdout>"), e))?;
            eprintln!(
                "{} steps in {:.3} s ({:.0} tokens/s); KV cache at the end: {} bytes",
                g.steps,
                g.seconds,
                g.steps as f64 / g.seconds,
                g.kv_bytes
            );
        }
        Command::Eval {
            data,
            budgets,
            fractions,
            sweep_budget,
            windows,
            threads,
            order,
            csv,
            plot,
        } => {
            let data = data.unwrap_or_else(|| {
                files::find_or_first(Kind::Data, "tinystories_valid_sample.txt")
            });
            let text = std::fs::read_to_string(&data).map_err(|e| Error::io(&data, e))?;
            let windows = eval::windows(&tokenizer, &text, seq_len, windows);
            let specs = eval::grid(&budgets, &fractions, sweep_budget, seq_len);
            for s in &specs {
                s.kind.build(s.budget, s.heavy_fraction, seq_len)?;
            }
            eprintln!(
                "eval: {} windows of {seq_len} tokens, {} configurations, {threads} threads",
                windows.len(),
                specs.len()
            );
            let start = Instant::now();
            let tty = std::io::stderr().is_terminal();
            let progress = |done: usize, total: usize| {
                if tty {
                    eprint!("\reval: window {done}/{total}");
                }
                if done == total {
                    eprintln!("{}eval: {total} windows done", if tty { "\n" } else { "" });
                }
            };
            let rows = eval::evaluate(&model, &windows, &specs, order.into(), threads, &progress)?;
            let secs = start.elapsed().as_secs_f64();
            let predictions = rows.first().map_or(0, |r| r.predictions);
            println!(
                "{} windows × {seq_len} tokens, {predictions} predictions; budgets rounded half up; \
                 KV = bytes of keys and values in all layers at the end of a window\n",
                windows.len()
            );
            print!("{}", eval::table(&rows));
            eprintln!("eval: {secs:.1} s");
            if let Some(path) = csv {
                std::fs::write(&path, eval::csv(&rows)).map_err(|e| Error::io(&path, e))?;
                eprintln!("wrote {}", path.display());
            }
            if let Some(path) = plot {
                let title = format!(
                    "stories260K, {} TinyStories windows of {seq_len} tokens",
                    windows.len()
                );
                plot::plot(&rows, &path, &title)
                    .map_err(|e| Error::io(&path, std::io::Error::other(e)))?;
                eprintln!("wrote {}", path.display());
            }
        }
        Command::PromptEval { data, prompt, budgets, safeguards, policies, windows } => {
            use llama2c::prompt_eval::{self, PromptSpec, Split};
            let data = data.unwrap_or_else(|| {
                files::find_or_first(Kind::Data, "tinystories_valid_sample.txt")
            });
            let text = std::fs::read_to_string(&data).map_err(|e| Error::io(&data, e))?;
            let windows = eval::windows(&tokenizer, &text, seq_len, windows);
            if prompt == 0 || prompt + 1 >= seq_len {
                return Err(Error::InvalidArgument { what: "--prompt", value: prompt.to_string() });
            }
            let mut specs = Vec::new();
            for &kind in &policies {
                for &budget in &budgets {
                    specs.push(PromptSpec { kind: kind.into(), budget, split: Split::Uniform });
                    for &s in &safeguards {
                        specs.push(PromptSpec {
                            kind: kind.into(),
                            budget,
                            split: Split::AdaKv(s),
                        });
                    }
                }
            }
            eprintln!(
                "prompt-eval: {} windows of {seq_len} tokens, prompt {prompt}, {} configurations",
                windows.len(),
                specs.len()
            );
            let start = Instant::now();
            let tty = std::io::stderr().is_terminal();
            let progress = |done: usize, total: usize| {
                if tty {
                    eprint!("\rprompt-eval: window {done}/{total}");
                }
                if done == total {
                    eprintln!("{}prompt-eval: {total} windows done", if tty { "\n" } else { "" });
                }
            };
            let (full, rows) =
                prompt_eval::evaluate_after_prompt(&model, &windows, prompt, &specs, &progress)?;
            println!(
                "{} windows × {seq_len} tokens, prompt {prompt}, {} predictions after it\n",
                windows.len(),
                rows.first().map_or(0, |r| r.predictions)
            );
            print!("{}", prompt_eval::prompt_table(full, &rows));
            eprintln!("prompt-eval: {:.1} s", start.elapsed().as_secs_f64());
        }
    }
    Ok(())
}
