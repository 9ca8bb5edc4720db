//! The seed walkthrough, step by step, written to any `io::Write`.
//!
//! Every number comes from the library: `H2OCache::attend` computes the
//! attention, `KvCache::tokens` reports the accumulated scores,
//! `KvCache::evict` chooses the victim and `Cache::last_attention` exposes the
//! logits and weights of the last attention. This file only formats them.

use std::collections::BTreeMap;
use std::io::{self, Write};

use h2o_kv::{Cache, H2O, H2OCache, KvCache, TieRule, Trace};

/// Keys of the seed's four context tokens (rows = tokens 1..4).
pub const KEYS: [[f64; 3]; 4] =
    [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, -1.0, 0.0]];
/// The query of decode step 5 that the document's arithmetic uses.
///
/// The document states `Q5 = [1, 1, 0]` but expands the scores as
/// `1+0+1, 0+1+1, 1+1+0, 1−1+0 = [2, 2, 2, 0]`: each key row summed, which is
/// the dot product with `[1, 1, 1]`. With `[1, 1, 0]` the scores would be
/// `[1, 1, 2, 0]` and none of the document's later numbers would follow. The
/// walkthrough uses `[1, 1, 1]` so that every number of the document is
/// reproduced, says so when it runs, and offers `--query-as-printed`.
pub const Q5: [f64; 3] = [1.0, 1.0, 1.0];
/// The query as printed in the document (inconsistent with its own arithmetic).
pub const Q5_AS_PRINTED: [f64; 3] = [1.0, 1.0, 0.0];
/// Token 5's key: the document gives none, this is the example's own choice.
pub const K5: [f64; 3] = [0.0, 1.0, -1.0];
/// Step 6's query and token 6's key: the example's own choice.
pub const Q6: [f64; 3] = [0.0, 1.0, 1.0];
/// Token 6's key: the example's own choice.
pub const K6: [f64; 3] = [1.0, 0.0, 0.0];

/// The knobs the seed document names.
#[derive(Debug, Clone, Copy)]
pub struct Knobs {
    /// Heavy-hitter slots (tokens).
    pub heavy: usize,
    /// Recent-window slots (tokens).
    pub recent: usize,
    /// Which of two equal scores survives.
    pub tie: TieRule,
    /// Softmax scale: 1 in the document; `1/√3` with `--scale inv-sqrt-d`.
    pub scale: f64,
    /// Whether to run the optional step 6.
    pub step6: bool,
    /// Use the query as printed (`[1, 1, 0]`) instead of the one the
    /// document's arithmetic uses (`[1, 1, 1]`).
    pub query_as_printed: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            heavy: 2,
            recent: 1,
            tie: TieRule::KeepOlder,
            scale: 1.0,
            step6: true,
            query_as_printed: false,
        }
    }
}

/// Values are not part of the document's numbers; each token's value is a
/// one-hot-ish row so the outputs are easy to read.
fn value_of(token: usize) -> [f64; 3] {
    let mut v = [0.0; 3];
    v[token % 3] = 1.0;
    v
}

/// Prints the walkthrough and returns the cache's trace (one record after
/// every insert and every eviction, for the eviction map); fails only if
/// writing fails or the knobs are invalid.
pub fn run(knobs: &Knobs, out: &mut dyn Write) -> Result<Trace, Box<dyn std::error::Error>> {
    let policy = H2O::new(knobs.heavy, knobs.recent)?.with_tie_rule(knobs.tie);
    let mut cache: H2OCache<f64> = Cache::with_policy(3, policy)?.with_scale(knobs.scale)?;
    // Last known score of every token ever seen: evicted tokens keep their final value.
    let mut seen: BTreeMap<u64, f64> = BTreeMap::new();
    let mut trace = Trace::default();

    writeln!(
        out,
        "H2O walkthrough (seed example): 1 head, head_dim 3, budget {} = {} heavy + {} recent, tie rule {:?}",
        knobs.heavy + knobs.recent,
        knobs.heavy,
        knobs.recent,
        knobs.tie
    )?;
    if knobs.scale == 1.0 {
        writeln!(
            out,
            "Logits are Q·K without the 1/sqrt(d) scaling, as in the document (use --scale inv-sqrt-d to scale)."
        )?;
    } else {
        writeln!(out, "Logits are {:.6} · Q·K.", knobs.scale)?;
    }
    writeln!(out, "Token numbers count from 1 as in the document (library position + 1).")?;
    let q5 = if knobs.query_as_printed { Q5_AS_PRINTED } else { Q5 };
    if knobs.query_as_printed {
        writeln!(
            out,
            "Q5 = [1, 1, 0] as printed in the document; its numbers will differ from the document's.\n"
        )?;
    } else {
        writeln!(
            out,
            "Note: the document prints Q5 = [1, 1, 0] but computes 1+0+1, 0+1+1, 1+1+0, 1-1+0,"
        )?;
        writeln!(
            out,
            "which is Q5 = [1, 1, 1]; we use [1, 1, 1] so every number matches (--query-as-printed for the other).\n"
        )?;
    }

    writeln!(out, "== Opening state: tokens 1..4 inserted, acc = 0 ==")?;
    for (i, key) in KEYS.iter().enumerate() {
        if cache.len() == cache.capacity() {
            let gone = cache.evict().to_vec();
            trace.record(0, cache.planner());
            writeln!(
                out,
                "(budget too small for the 4 context tokens: evicted {} before inserting token {})",
                names(&gone),
                i + 1
            )?;
        }
        cache.insert(key, &value_of(i))?;
        trace.record(0, cache.planner());
    }
    matrix(out, "keys K", &["k1", "k2", "k3"], &rows_of(&cache, |p| KEYS[p as usize].to_vec()))?;
    record(&cache, &mut seen);

    writeln!(out, "\n== Step 1: Q5 = {q5:?} attends over every cached token ==")?;
    cache.attend(&q5)?;
    attention_tables(out, &cache, &seen, knobs.scale)?;
    record(&cache, &mut seen);
    acc_table(out, &seen, &cache)?;

    writeln!(out, "\n== Step 2: select under the budget ==")?;
    let before = cache.resident_positions();
    let evicted = cache.evict().to_vec();
    trace.record(0, cache.planner());
    describe_selection(out, &cache, &before, &evicted, knobs)?;
    writeln!(out, "S4 = {}", set(&cache.resident_positions()))?;

    writeln!(out, "\n== Step 3: Q5 attends again, over S4 only (evicted tokens get weight 0) ==")?;
    cache.attend(&q5)?;
    attention_tables(out, &cache, &seen, knobs.scale)?;
    record(&cache, &mut seen);
    acc_table(out, &seen, &cache)?;

    writeln!(
        out,
        "\n== Step 4: token 5 enters the cache (K5 = {K5:?}, the example's own choice) =="
    )?;
    cache.insert(&K5, &value_of(4))?;
    trace.record(0, cache.planner());
    record(&cache, &mut seen);
    let before = cache.resident_positions();
    writeln!(out, "G5 = S4 ∪ {{5}} = {}", set(&before))?;
    let evicted = cache.evict().to_vec();
    trace.record(0, cache.planner());
    describe_selection(out, &cache, &before, &evicted, knobs)?;
    writeln!(out, "S5 = {}", set(&cache.resident_positions()))?;

    if knobs.step6 {
        writeln!(
            out,
            "\n== Step 6 (optional): Q6 = {Q6:?} and K6 = {K6:?} are the example's own choice =="
        )?;
        cache.attend(&Q6)?;
        attention_tables(out, &cache, &seen, knobs.scale)?;
        record(&cache, &mut seen);
        acc_table(out, &seen, &cache)?;
        writeln!(out, "token 6 enters the cache; one token must go")?;
        cache.insert(&K6, &value_of(5))?;
        trace.record(0, cache.planner());
        record(&cache, &mut seen);
        let before = cache.resident_positions();
        let evicted = cache.evict().to_vec();
        trace.record(0, cache.planner());
        describe_selection(out, &cache, &before, &evicted, knobs)?;
        writeln!(out, "S6 = {}", set(&cache.resident_positions()))?;
    }
    Ok(trace)
}

fn name(p: u64) -> String {
    format!("tok{}", p + 1)
}

fn names(ps: &[u64]) -> String {
    ps.iter().map(|&p| name(p)).collect::<Vec<_>>().join(", ")
}

fn set(ps: &[u64]) -> String {
    format!("{{{}}}", ps.iter().map(|p| (p + 1).to_string()).collect::<Vec<_>>().join(", "))
}

fn record(cache: &H2OCache<f64>, seen: &mut BTreeMap<u64, f64>) {
    for t in cache.tokens() {
        seen.insert(t.position, t.score);
    }
}

fn rows_of(cache: &H2OCache<f64>, f: impl Fn(u64) -> Vec<f64>) -> Vec<(String, Vec<String>)> {
    cache
        .resident_positions()
        .into_iter()
        .map(|p| (name(p), f(p).iter().map(|x| fmt(*x)).collect()))
        .collect()
}

fn fmt(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e6 { format!("{x:.0}") } else { format!("{x:.6}") }
}

/// Raw scores Q·K, the logits actually used, and the softmax weights, over
/// every token seen so far (evicted tokens show 0 weight).
fn attention_tables(
    out: &mut dyn Write,
    cache: &H2OCache<f64>,
    seen: &BTreeMap<u64, f64>,
    scale: f64,
) -> io::Result<()> {
    let entries: BTreeMap<u64, (f64, f64)> =
        cache.last_attention().map(|e| (e.position, (e.logit, e.weight))).collect();
    let mut rows = Vec::new();
    for &p in seen.keys() {
        let cells = match entries.get(&p) {
            Some(&(logit, weight)) => vec![fmt(logit / scale), fmt(weight)],
            None => vec!["-".into(), "0 (evicted)".into()],
        };
        rows.push((name(p), cells));
    }
    matrix(out, "attention of the query", &["raw Q·K", "softmax"], &rows)
}

fn acc_table(
    out: &mut dyn Write,
    seen: &BTreeMap<u64, f64>,
    cache: &H2OCache<f64>,
) -> io::Result<()> {
    let resident = cache.resident_positions();
    let rows: Vec<(String, Vec<String>)> = seen
        .iter()
        .map(|(&p, &acc)| {
            let note =
                if resident.contains(&p) { String::new() } else { " (evicted, frozen)".into() };
            (name(p), vec![format!("{}{note}", fmt(acc))])
        })
        .collect();
    matrix(out, "accumulated score acc", &["acc"], &rows)
}

fn describe_selection(
    out: &mut dyn Write,
    cache: &H2OCache<f64>,
    before: &[u64],
    evicted: &[u64],
    knobs: &Knobs,
) -> io::Result<()> {
    let recent: Vec<u64> = before.iter().rev().take(knobs.recent).rev().copied().collect();
    let kept = cache.resident_positions();
    let heavy: Vec<u64> = kept.iter().filter(|p| !recent.contains(p)).copied().collect();
    writeln!(
        out,
        "recent (newest {}) = {}; heavy hitters (best {} of the rest by acc, ties {:?}) = {}",
        knobs.recent,
        set(&recent),
        knobs.heavy,
        knobs.tie,
        set(&heavy)
    )?;
    let all_tokens = before.iter().chain(evicted).copied().max().map_or(0, |m| m + 1);
    let rows: Vec<(String, Vec<String>)> = (0..all_tokens)
        .map(|p| (name(p), vec![if kept.contains(&p) { "1" } else { "0" }.to_string()]))
        .collect();
    matrix(out, "selection (1 = kept)", &["kept"], &rows)?;
    writeln!(out, "|S| = {}", kept.len())?;
    if evicted.is_empty() {
        writeln!(out, "evicted: nothing (within budget)")
    } else {
        writeln!(out, "evicted: {}", names(evicted))
    }
}

/// A small text matrix: one row per token, one column per quantity.
fn matrix(
    out: &mut dyn Write,
    title: &str,
    columns: &[&str],
    rows: &[(String, Vec<String>)],
) -> io::Result<()> {
    let widths: Vec<usize> = (0..columns.len())
        .map(|c| {
            rows.iter().map(|r| r.1[c].chars().count()).chain([columns[c].len()]).max().unwrap_or(0)
        })
        .collect();
    writeln!(out, "{title}:")?;
    write!(out, "       ")?;
    for (c, w) in columns.iter().zip(&widths) {
        write!(out, " | {c:>w$}")?;
    }
    writeln!(out)?;
    for (label, cells) in rows {
        write!(out, "  {label:<5}")?;
        for (cell, w) in cells.iter().zip(&widths) {
            write!(out, " | {cell:>w$}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}
