//! Replays the golden traces recorded from the authors' own eviction code
//! (FMInference/H2O `H2OKVCache_LayerWise`; see `tests/data/h2o_traces/FORMAT.md`)
//! through `H2OCache` and `LayerCache`, in transformer order with the prefill
//! as one call. Kept and evicted positions must match exactly, per head and
//! per call; scores and outputs within the tolerances FORMAT.md suggests.
//!
//! Every `*.json` in `tests/data/h2o_traces/` is replayed, plus every `*.json`
//! in the folder named by `H2O_KV_TRACES` when it is set. An empty folder is a
//! failure, never a skip.

use std::path::{Path, PathBuf};

use h2o_kv::{H2O, H2OCache, KvCache, LayerCache};
use serde_json::Value;

/// FORMAT.md: scores |Δ| ≤ 1e-5·|ref| + 1e-12.
fn score_ok(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-5 * want.abs() + 1e-12
}

/// FORMAT.md: outputs |Δ| ≤ 1e-5 + 1e-5·|ref|.
fn output_ok(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-5 + 1e-5 * want.abs()
}

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().expect("number") as f32],
        other => panic!("expected numbers, got {other}"),
    }
}

fn ints(v: &Value) -> Vec<u64> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("position")).collect()
}

fn trace_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read trace folder {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.json traces in {}", dir.display());
    files
}

/// Compares one call's per-head record with the caches' state.
fn check_call(label: &str, rec: &Value, heads: &[H2OCache<f32>], outputs: &[f32]) {
    for (h, cache) in heads.iter().enumerate() {
        let want_kept = ints(&rec["kept_positions"][h]);
        let want_scores = floats(&rec["kept_scores"][h]);
        assert_eq!(cache.resident_positions(), want_kept, "{label} head {h}: kept positions");
        assert_eq!(
            cache.last_evicted(),
            ints(&rec["evicted_positions"][h]),
            "{label} head {h}: evicted"
        );
        for (p, want) in want_kept.iter().zip(&want_scores) {
            let got = cache.score_of(*p).expect("kept token is resident");
            assert!(
                score_ok(got, f64::from(*want)),
                "{label} head {h} pos {p}: score {got} vs {want}"
            );
        }
    }
    let want_out = floats(&rec["output"]);
    assert_eq!(outputs.len(), want_out.len(), "{label}: output length");
    for (i, (got, want)) in outputs.iter().zip(&want_out).enumerate() {
        assert!(
            output_ok(f64::from(*got), f64::from(*want)),
            "{label}: output[{i}] {got} vs {want}"
        );
    }
}

/// Replays one file; returns the number of calls checked.
fn replay(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).expect("read trace");
    let trace: Value = serde_json::from_str(&text).expect("parse trace");
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let cfg = &trace["config"];
    let get = |k: &str| cfg[k].as_u64().unwrap_or_else(|| panic!("{name}: config.{k}")) as usize;
    let (n_heads, d, hh, recent) =
        (get("num_heads"), get("head_dim"), get("hh_size"), get("recent_size"));
    assert_eq!(get("num_kv_heads"), n_heads, "{name}: traces are MHA");

    let mut heads: Vec<H2OCache<f32>> =
        (0..n_heads).map(|_| H2OCache::new(d, hh, recent).unwrap()).collect();
    let mut layer =
        LayerCache::<f32, _>::new(n_heads, n_heads, d, H2O::new(hh, recent).unwrap()).unwrap();
    let mut calls = 0;

    if let Some(pre) = trace["prefill"].as_object() {
        let (q, k, v) = (floats(&pre["q"]), floats(&pre["k"]), floats(&pre["v"]));
        let p = ints(&pre["positions"]).len();
        // Per head: the rows of head h, [P × d].
        let head_rows = |x: &[f32], h: usize| -> Vec<f32> {
            (0..p).flat_map(|i| x[(i * n_heads + h) * d..][..d].to_vec()).collect()
        };
        let mut outputs = vec![0.0; p * n_heads * d];
        for (h, cache) in heads.iter_mut().enumerate() {
            let mut out = vec![0.0; p * d];
            cache
                .prefill(&head_rows(&q, h), &head_rows(&k, h), &head_rows(&v, h), &mut out)
                .unwrap();
            for i in 0..p {
                outputs[(i * n_heads + h) * d..][..d].copy_from_slice(&out[i * d..][..d]);
            }
        }
        check_call(&format!("{name} prefill"), &trace["prefill"], &heads, &outputs);
        let mut layer_out = vec![0.0; p * n_heads * d];
        layer.prefill(&q, &k, &v, &mut layer_out).unwrap();
        assert_eq!(layer_out, outputs, "{name} prefill: layer output equals per-head output");
        calls += 1;
    }

    for rec in trace["steps"].as_array().expect("steps") {
        let step = rec["step"].as_u64().unwrap();
        let (q, k, v) = (floats(&rec["q"]), floats(&rec["k"]), floats(&rec["v"]));
        let mut outputs = Vec::with_capacity(n_heads * d);
        for (h, cache) in heads.iter_mut().enumerate() {
            let r = h * d..(h + 1) * d;
            assert_eq!(cache.next_position(), rec["position"].as_u64().unwrap());
            outputs.extend_from_slice(cache.step(&q[r.clone()], &k[r.clone()], &v[r]).unwrap());
        }
        let label = format!("{name} step {step}");
        check_call(&label, rec, &heads, &outputs);
        let layer_out = layer.step(&q, &k, &v).unwrap();
        assert_eq!(layer_out, &outputs[..], "{label}: layer output equals per-head output");
        for (h, cache) in heads.iter().enumerate() {
            let lh = layer.head(h).unwrap();
            assert_eq!(
                lh.resident_positions(),
                cache.resident_positions(),
                "{label}: layer head {h}"
            );
        }
        calls += 1;
    }
    calls
}

#[test]
fn golden_traces_match_the_authors_code() {
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/h2o_traces")];
    if let Some(extra) = std::env::var_os("H2O_KV_TRACES") {
        dirs.push(PathBuf::from(extra));
    }
    for dir in dirs {
        for file in trace_files(&dir) {
            let calls = replay(&file);
            assert!(calls > 0, "{}: no calls replayed", file.display());
            eprintln!("{}: {calls} calls match", file.display());
        }
    }
}
