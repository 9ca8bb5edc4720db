//! The forward pass of a llama2.c model, one token per call, with its keys
//! and values in h2o-kv layer caches (or, as a baseline, in llama2.c's plain
//! arrays).
//!
//! Per layer, as llama2.c's `run.c`: RMSNorm (eps `1e-5`); q, k, v
//! projections; RoPE on q and k at the token's absolute position, before the
//! key is cached; attention with softmax scale `1/√head_dim`, query heads
//! `h·g .. (h+1)·g` sharing KV head `h` (GQA); output projection and
//! residual; RMSNorm; SwiGLU FFN `w2 · (silu(w1 x) ⊙ w3 x)` and residual. Then
//! a final RMSNorm and the classifier.

use h2o_kv::{AnyPolicy, EvictionPolicy, LayerCache, ModelCache};

use crate::error::{Error, Result};
use crate::model::{Model, rope_row};

/// `x · weight / rms(x)` with eps `1e-5`, as llama2.c: `out = w · (x / √(mean(x²) + eps))`.
fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32]) {
    let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32 + 1e-5;
    let inv = 1.0 / ss.sqrt();
    for ((o, &xi), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (inv * xi);
    }
}

/// Accumulator lanes per row: eight independent sums, so the loops vectorize.
const LANES: usize = 8;

/// Dot product with [`LANES`] independent accumulators, summed as [`dot4`] sums a row.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let split = a.len() - a.len() % LANES;
    let mut acc = [0f32; LANES];
    for (x, y) in a[..split].chunks_exact(LANES).zip(b[..split].chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a[split..].iter().zip(&b[split..]).map(|(x, y)| x * y).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Dot products of four rows with `x`, sharing each load of `x`. Each row is
/// summed exactly as [`dot`] sums it: lane sums, then the lanes pairwise, then
/// the tail.
#[inline]
fn dot4(rows: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    let mut acc = [[0f32; LANES]; 4];
    let split = x.len() - x.len() % LANES;
    for (j, xs) in x[..split].chunks_exact(LANES).enumerate() {
        for (a, row) in acc.iter_mut().zip(rows) {
            let w = &row[j * LANES..][..LANES];
            for i in 0..LANES {
                a[i] += w[i] * xs[i];
            }
        }
    }
    let mut out = [0f32; 4];
    for ((o, a), row) in out.iter_mut().zip(&acc).zip(rows) {
        let tail: f32 = row[split..].iter().zip(&x[split..]).map(|(w, x)| w * x).sum();
        *o = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])) + tail;
    }
    out
}

/// `out = w · x` for `w` `[out.len() × x.len()]`, row-major; four rows at a time.
fn matmul(out: &mut [f32], w: &[f32], x: &[f32]) {
    let n = x.len();
    debug_assert_eq!(w.len(), out.len() * n);
    let mut outs = out.chunks_exact_mut(4);
    let mut blocks = w.chunks_exact(4 * n);
    for (o, block) in (&mut outs).zip(&mut blocks) {
        let (r0, rest) = block.split_at(n);
        let (r1, rest) = rest.split_at(n);
        let (r2, r3) = rest.split_at(n);
        o.copy_from_slice(&dot4([r0, r1, r2, r3], x));
    }
    for (o, row) in outs.into_remainder().iter_mut().zip(blocks.remainder().chunks_exact(n)) {
        *o = dot(row, x);
    }
}

/// Rotates consecutive pairs of `x` (one or more heads of `head_dim`) by `table`.
fn rope(x: &mut [f32], table: &[(f32, f32)]) {
    let half = table.len();
    for head in x.chunks_exact_mut(2 * half) {
        for (pair, &(cos, sin)) in head.chunks_exact_mut(2).zip(table) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cos - b * sin;
            pair[1] = a * sin + b * cos;
        }
    }
}

/// Which KV-cache step every layer runs: the crate's [`h2o_kv::StepOrder`].
/// llama2.c (and every causal transformer) uses the default,
/// [`StepOrder::InsertAttendEvict`]: the query sees its own key.
pub use h2o_kv::StepOrder;

/// llama2.c's own key/value store: every position of every layer, no
/// eviction, attention written out in full. The baseline the caches are
/// checked and timed against.
#[derive(Debug, Clone)]
struct PlainKv {
    /// `[layers × seq_len × kv_dim]`.
    keys: Vec<f32>,
    /// `[layers × seq_len × kv_dim]`.
    values: Vec<f32>,
    /// `[seq_len]`: one head's attention weights.
    weights: Vec<f32>,
    /// `[n_heads × head_dim]`: the layer's attention output.
    out: Vec<f32>,
    /// Positions stored so far.
    len: usize,
}

impl PlainKv {
    fn new(model: &Model) -> Self {
        let c = &model.config;
        let n = c.n_layers * c.seq_len * c.kv_dim();
        Self {
            keys: vec![0.0; n],
            values: vec![0.0; n],
            weights: vec![0.0; c.seq_len],
            out: vec![0.0; c.dim],
            len: 0,
        }
    }

    /// Stores `k`, `v` of layer `l` at the current position and attends with
    /// `q` over positions `0..=len` (transformer order).
    fn step(&mut self, model: &Model, l: usize, q: &[f32], k: &[f32], v: &[f32]) -> &[f32] {
        let c = &model.config;
        let (hd, kv_dim, t_max) = (c.head_dim(), c.kv_dim(), self.len);
        let layer = l * c.seq_len * kv_dim;
        self.keys[layer + t_max * kv_dim..][..kv_dim].copy_from_slice(k);
        self.values[layer + t_max * kv_dim..][..kv_dim].copy_from_slice(v);
        let scale = 1.0 / (hd as f32).sqrt();
        let group = c.n_heads / c.n_kv_heads;
        for (h, (q, out)) in q.chunks_exact(hd).zip(self.out.chunks_exact_mut(hd)).enumerate() {
            let kv = (h / group) * hd;
            let w = &mut self.weights[..=t_max];
            for (t, w) in w.iter_mut().enumerate() {
                *w = dot(q, &self.keys[layer + t * kv_dim + kv..][..hd]) * scale;
            }
            let max = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for x in w.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            out.fill(0.0);
            let inv = 1.0 / sum;
            for (t, x) in w.iter().enumerate() {
                let a = x * inv;
                for (o, v) in out.iter_mut().zip(&self.values[layer + t * kv_dim + kv..][..hd]) {
                    *o += a * v;
                }
            }
        }
        &self.out
    }
}

/// Where a decoder keeps its keys and values.
#[derive(Debug, Clone)]
enum Kv {
    /// An h2o-kv whole-model cache (one layer cache per layer, fed in
    /// turn), stepping in the given order.
    Caches(ModelCache<f32, AnyPolicy>, StepOrder),
    /// llama2.c's arrays (see [`PlainKv`]).
    Plain(PlainKv),
}

/// One decoding stream: a model, its key/value store and scratch buffers.
#[derive(Debug, Clone)]
pub struct Decoder<'m> {
    model: &'m Model,
    kv: Kv,
    x: Vec<f32>,
    xb: Vec<f32>,
    xb2: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    hb: Vec<f32>,
    hb2: Vec<f32>,
    logits: Vec<f32>,
    /// `[head_dim / 2]`: the RoPE rotations of a position past `seq_len`.
    rope: Vec<(f32, f32)>,
}

impl<'m> Decoder<'m> {
    /// A decoder whose every layer caches under `policy`, stepping in `order`.
    ///
    /// # Errors
    /// As [`Model::caches`].
    pub fn new(model: &'m Model, policy: AnyPolicy, order: StepOrder) -> Result<Self> {
        Ok(Self::with_kv(model, Kv::Caches(model.caches(policy)?, order)))
    }

    /// A decoder on llama2.c's plain key/value arrays, without the crate: a
    /// full cache by construction, in transformer order.
    pub fn plain(model: &'m Model) -> Self {
        Self::with_kv(model, Kv::Plain(PlainKv::new(model)))
    }

    fn with_kv(model: &'m Model, kv: Kv) -> Self {
        let c = &model.config;
        Self {
            model,
            kv,
            x: vec![0.0; c.dim],
            xb: vec![0.0; c.dim],
            xb2: vec![0.0; c.dim],
            q: vec![0.0; c.dim],
            k: vec![0.0; c.kv_dim()],
            v: vec![0.0; c.kv_dim()],
            hb: vec![0.0; c.hidden_dim],
            hb2: vec![0.0; c.hidden_dim],
            logits: vec![0.0; c.vocab_size],
            rope: vec![(0.0, 0.0); c.head_dim() / 2],
        }
    }

    /// A decoder on the same model whose caches `derive` builds from this
    /// one's, stepping in the same order: for example
    /// [`ModelCache::prefill_from`] or [`ModelCache::adakv_from`] on a full
    /// cache that took a prompt, so that each bounded cache starts from the
    /// prompt its own prefill would have kept.
    ///
    /// # Errors
    /// [`Error::Cache`] from `derive`, or
    /// [`h2o_kv::Error::PrefillSource`] for a decoder on the plain arrays.
    pub fn derive(
        &self,
        derive: impl FnOnce(&ModelCache<f32, AnyPolicy>) -> h2o_kv::Result<ModelCache<f32, AnyPolicy>>,
    ) -> Result<Self> {
        let Kv::Caches(cache, order) = &self.kv else {
            return Err(h2o_kv::Error::PrefillSource {
                reason: "the plain arrays are not a cache",
            }
            .into());
        };
        Ok(Self::with_kv(self.model, Kv::Caches(derive(cache)?, *order)))
    }

    /// Whether this decoder can go past the model's `seq_len`: its caches
    /// evict, so they never hold more than their budget. The full cache and
    /// the plain arrays hold every position and stop at `seq_len`.
    pub fn evicts(&self) -> bool {
        match &self.kv {
            Kv::Caches(cache, _) => cache.layers()[0].heads()[0].policy().evicts(),
            Kv::Plain(_) => false,
        }
    }

    /// Layer `l`'s cache, or `None` for the plain arrays or a layer out of
    /// range (for inspection: eviction maps, traces).
    pub fn layer(&self, l: usize) -> Option<&LayerCache<f32, AnyPolicy>> {
        match &self.kv {
            Kv::Caches(cache, _) => cache.layer(l),
            _ => None,
        }
    }

    /// Position of the next token (tokens decoded since the last reset).
    pub fn position(&self) -> u64 {
        match &self.kv {
            Kv::Caches(cache, _) => cache.position(),
            Kv::Plain(p) => p.len as u64,
        }
    }

    /// Key and value bytes resident in all layers.
    pub fn kv_bytes(&self) -> usize {
        match &self.kv {
            Kv::Caches(cache, _) => cache.kv_bytes(),
            Kv::Plain(p) => {
                let c = &self.model.config;
                p.len * c.n_layers * 2 * c.kv_dim() * size_of::<f32>()
            }
        }
    }

    /// Empties every cache; the next token is at position 0.
    pub fn reset(&mut self) {
        match &mut self.kv {
            Kv::Caches(cache, _) => cache.reset(),
            Kv::Plain(p) => p.len = 0,
        }
    }

    /// Feeds `token` at the next position and returns the logits `[vocab]`
    /// for the token after it.
    ///
    /// Positions are absolute: with an evicting policy ([`Decoder::evicts`])
    /// decoding goes on past `seq_len`, and the queries and keys of position
    /// `p ≥ seq_len` are rotated by RoPE at `p`, an angle the model never saw in
    /// training (the cache keeps the budget, not the positions, bounded).
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`], [`Error::ContextFull`] once `seq_len`
    /// tokens have been fed to a decoder that does not evict (full cache or
    /// plain arrays), [`Error::Cache`] if a cache rejects the step
    /// (non-finite activations).
    pub fn forward(&mut self, token: u32) -> Result<&[f32]> {
        let m = self.model;
        let c = &m.config;
        let (dim, kv_dim, hidden) = (c.dim, c.kv_dim(), c.hidden_dim);
        let position = self.position();
        if position >= c.seq_len as u64 && !self.evicts() {
            return Err(Error::ContextFull { position, seq_len: c.seq_len });
        }
        if token as usize >= c.vocab_size {
            return Err(Error::TokenOutOfRange { token, vocab_size: c.vocab_size });
        }
        let half = c.head_dim() / 2;
        let table = match usize::try_from(position) {
            Ok(p) if p < c.seq_len => &m.rope[p * half..][..half],
            _ => {
                rope_row(c, position, &mut self.rope);
                &self.rope
            }
        };
        self.x.copy_from_slice(&m.token_embedding[token as usize * dim..][..dim]);
        for l in 0..c.n_layers {
            rmsnorm(&mut self.xb, &self.x, &m.rms_att[l * dim..][..dim]);
            matmul(&mut self.q, &m.wq[l * dim * dim..][..dim * dim], &self.xb);
            matmul(&mut self.k, &m.wk[l * kv_dim * dim..][..kv_dim * dim], &self.xb);
            matmul(&mut self.v, &m.wv[l * kv_dim * dim..][..kv_dim * dim], &self.xb);
            rope(&mut self.q, table);
            rope(&mut self.k, table);
            let (q, k, v) = (&self.q, &self.k, &self.v);
            let out = match &mut self.kv {
                Kv::Caches(cache, order) => cache.step_with(l, *order, q, k, v)?,
                Kv::Plain(p) => p.step(m, l, q, k, v),
            };
            self.xb.copy_from_slice(out);
            matmul(&mut self.xb2, &m.wo[l * dim * dim..][..dim * dim], &self.xb);
            self.x.iter_mut().zip(&self.xb2).for_each(|(x, y)| *x += y);

            rmsnorm(&mut self.xb, &self.x, &m.rms_ffn[l * dim..][..dim]);
            matmul(&mut self.hb, &m.w1[l * hidden * dim..][..hidden * dim], &self.xb);
            matmul(&mut self.hb2, &m.w3[l * hidden * dim..][..hidden * dim], &self.xb);
            for (h, &g) in self.hb.iter_mut().zip(&self.hb2) {
                *h = *h * (1.0 / (1.0 + (-*h).exp())) * g; // SwiGLU: silu(w1 x) · w3 x
            }
            matmul(&mut self.xb, &m.w2[l * dim * hidden..][..dim * hidden], &self.hb);
            self.x.iter_mut().zip(&self.xb).for_each(|(x, y)| *x += y);
        }
        if let Kv::Plain(p) = &mut self.kv {
            p.len += 1;
        }
        rmsnorm(&mut self.xb, &self.x, &m.rms_final);
        let classifier = m.classifier.as_deref().unwrap_or(&m.token_embedding);
        matmul(&mut self.logits, classifier, &self.xb);
        Ok(&self.logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{rope_table, test_file, test_header};
    use h2o_kv::KvCache;
    use std::path::Path;

    fn model() -> Model {
        Model::from_bytes(&test_file(test_header(16), 0), Path::new("t")).unwrap()
    }

    #[test]
    fn decoding_stops_at_seq_len_and_rejects_unknown_tokens() {
        // A cache that keeps every token (and the plain arrays) stop at seq_len.
        let m = model();
        let full = AnyPolicy::from(h2o_kv::Full::new(6).unwrap());
        for mut d in
            [Decoder::new(&m, full, StepOrder::InsertAttendEvict).unwrap(), Decoder::plain(&m)]
        {
            assert!(!d.evicts());
            let err = d.forward(16).unwrap_err();
            assert!(matches!(err, Error::TokenOutOfRange { token: 16, vocab_size: 16 }), "{err}");
            for t in 0..6 {
                assert_eq!(d.forward(t).unwrap().len(), 16);
            }
            let err = d.forward(0).unwrap_err();
            assert!(matches!(err, Error::ContextFull { position: 6, seq_len: 6 }), "{err}");
            // All six tokens: 2 layers × 2 KV heads × K and V × 2 floats each.
            assert_eq!(d.kv_bytes(), 6 * 2 * 2 * 2 * 2 * 4);
            d.reset();
            assert_eq!((d.position(), d.kv_bytes()), (0, 0));
        }
    }

    #[test]
    fn an_evicting_cache_decodes_past_seq_len_at_absolute_positions() {
        let m = model();
        let policy = AnyPolicy::from(h2o_kv::H2O::new(2, 2).unwrap());
        let mut d = Decoder::new(&m, policy, StepOrder::InsertAttendEvict).unwrap();
        assert!(d.evicts());
        let err = d.forward(16).unwrap_err();
        assert!(matches!(err, Error::TokenOutOfRange { token: 16, vocab_size: 16 }), "{err}");
        for t in 0..6 {
            assert_eq!(d.forward(t).unwrap().len(), 16);
        }
        // Four tokens per KV head remain: 2 layers × 2 KV heads × K and V × 2 floats.
        assert_eq!(d.kv_bytes(), 4 * 2 * 2 * 2 * 2 * 4);
        // Past seq_len (6): positions go on, the budget holds.
        for t in 0..10 {
            assert!(d.forward(t % 16).unwrap().iter().all(|x| x.is_finite()));
        }
        assert_eq!(d.position(), 16);
        assert_eq!(d.kv_bytes(), 4 * 2 * 2 * 2 * 2 * 4);
        let Kv::Caches(cache, _) = &d.kv else { unreachable!() };
        for head in cache.layers().iter().flat_map(|l| l.heads()) {
            assert!(
                head.resident_positions().ends_with(&[14, 15]),
                "{:?}",
                head.resident_positions()
            );
        }
        d.reset();
        assert_eq!((d.position(), d.kv_bytes()), (0, 0));
    }

    #[test]
    fn rope_past_seq_len_continues_the_table() {
        // The rows computed on the fly are the table's formula at later positions.
        let c = model().config;
        let half = c.head_dim() / 2;
        let mut longer = c;
        longer.seq_len = 20;
        let table = rope_table(&longer);
        let mut row = vec![(0.0, 0.0); half];
        for pos in [0u64, 5, 6, 19] {
            rope_row(&c, pos, &mut row);
            assert_eq!(row, table[pos as usize * half..][..half], "position {pos}");
        }
    }

    #[test]
    fn dot_matches_a_plain_sum() {
        for n in [1, 7, 8, 9, 172] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            assert!((f64::from(dot(&a, &b)) - plain).abs() < 1e-5, "n = {n}");
        }
    }

    #[test]
    fn rope_rotates_pairs_and_keeps_norms() {
        let c = model().config;
        let table = rope_table(&c);
        let half = c.head_dim() / 2;
        // Position 0 is the identity.
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        rope(&mut x, &table[..half]);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0]);
        // Position 3, pair 0 rotates by 3 radians (freq 1).
        let mut x = vec![1.0, 0.0, 0.0, 0.0];
        rope(&mut x, &table[3 * half..][..half]);
        assert!((x[0] - 3f32.cos()).abs() < 1e-6 && (x[1] - 3f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn the_caches_compute_what_plain_attention_computes() {
        // Full cache and a never-full H2O cache against llama2.c-style arrays.
        let m = model();
        let mut plain = Decoder::plain(&m);
        let full = AnyPolicy::from(h2o_kv::Full::new(6).unwrap());
        let roomy = AnyPolicy::from(h2o_kv::H2O::new(3, 3).unwrap());
        let mut cached: Vec<Decoder<'_>> = [full, roomy]
            .map(|p| Decoder::new(&m, p, StepOrder::InsertAttendEvict).unwrap())
            .into();
        for t in [1, 5, 9, 2, 15, 7] {
            let want = plain.forward(t).unwrap().to_vec();
            assert!(want.iter().any(|x| x.abs() > 1e-3), "a model that computes something");
            for d in &mut cached {
                let got = d.forward(t).unwrap();
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
                }
            }
        }
        assert_eq!(plain.kv_bytes(), cached[0].kv_bytes());
    }
}
