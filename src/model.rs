//! `ModelCache`: every layer of one sequence, one position counter.
//!
//! A decode step of a transformer runs its layers in order, and each layer
//! inserts the same token. `ModelCache` holds one [`LayerCache`] per layer
//! (each with its own policy and budget, for example from a
//! [`LayerSchedule`]) and checks that the layers take the tokens in turn, so
//! their positions never drift apart.

use crate::compress::{LayerSchedule, SnapKv};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::layer::LayerCache;
use crate::order::StepOrder;
use crate::policy::EvictionPolicy;

/// All layers of one sequence: one [`LayerCache`] per layer, fed in turn.
///
/// # The turn rule
/// Every token (or prefill chunk) goes through layer 0, then layer 1, and
/// so on. A call on layer `l` adding `m` tokens is accepted when layer `l`
/// holds exactly [`position`](Self::position) tokens and layer `l − 1`
/// (if any) already holds `position + m`; otherwise it is an
/// [`Error::OutOfTurn`] and nothing changes. [`position`](Self::position)
/// advances when the last layer has taken the token.
///
/// # Example
/// ```
/// use h2o_kv::{H2O, ModelCache};
///
/// // 2 layers, 4 query heads on 2 KV heads of dimension 8, 4 + 4 tokens each.
/// let mut model = ModelCache::<f32, _>::new(2, 4, 2, 8, H2O::new(4, 4)?)?;
/// for t in 0..20 {
///     for layer in 0..model.n_layers() {
///         let q = vec![0.1 * t as f32; 4 * 8];
///         let kv = vec![0.2; 2 * 8];
///         model.step(layer, &q, &kv, &kv)?;
///     }
/// }
/// assert_eq!(model.position(), 20);
/// assert_eq!(model.kv_bytes(), 2 * 2 * 8 * (2 * 8 * 4)); // layers × KV heads × tokens × (K+V) bytes
/// # Ok::<(), h2o_kv::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ModelCache<T: Element, P: EvictionPolicy> {
    layers: Vec<LayerCache<T, P>>,
}

impl<T: Element, P: EvictionPolicy> ModelCache<T, P> {
    /// `n_layers` layers of `n_kv_heads` caches of `head_dim`, serving
    /// `n_heads` query heads, all under `policy`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `n_layers == 0`; otherwise as
    /// [`LayerCache::new`].
    pub fn new(
        n_layers: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        policy: P,
    ) -> Result<Self> {
        check_layers(n_layers)?;
        let layer = LayerCache::new(n_heads, n_kv_heads, head_dim, policy)?;
        let mut layers = Vec::new();
        layers
            .try_reserve_exact(n_layers)
            .map_err(|_| Error::AllocationFailed { bytes: usize::MAX })?;
        layers.push(layer);
        for _ in 1..n_layers {
            layers.push(LayerCache::new(n_heads, n_kv_heads, head_dim, policy_of(&layers[0]))?);
        }
        Ok(Self { layers })
    }

    /// One layer per policy in `policies`, in layer order (layer 0 first).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for no policies; otherwise as
    /// [`LayerCache::new`].
    pub fn with_policies(
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        policies: impl IntoIterator<Item = P>,
    ) -> Result<Self> {
        let layers = policies
            .into_iter()
            .map(|p| LayerCache::new(n_heads, n_kv_heads, head_dim, p))
            .collect::<Result<Vec<_>>>()?;
        check_layers(layers.len())?;
        Ok(Self { layers })
    }

    /// `n_layers` layers sharing `total` tokens per KV head by `schedule`
    /// (see [`LayerSchedule::split`] for `reserve` and the rounding); layer
    /// `l`'s policy is `policy(budget_l)`.
    ///
    /// # Example
    /// ```
    /// use h2o_kv::{H2O, LayerSchedule, ModelCache};
    ///
    /// // PyramidKV over 4 layers: 256 tokens per KV head in total, half heavy.
    /// let model = ModelCache::<f32, _>::with_schedule(
    ///     4, 4, 2, 8, LayerSchedule::pyramid(), 256, 0,
    ///     |budget| H2O::with_heavy_fraction(budget, 0.5),
    /// )?;
    /// assert_eq!(model.budgets().collect::<Vec<_>>(), [125, 84, 44, 3]);
    /// # Ok::<(), h2o_kv::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`LayerSchedule::split`], the `policy` closure and
    /// [`LayerCache::new`].
    #[allow(clippy::too_many_arguments)]
    pub fn with_schedule(
        n_layers: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        schedule: LayerSchedule,
        total: usize,
        reserve: usize,
        mut policy: impl FnMut(usize) -> Result<P>,
    ) -> Result<Self> {
        check_layers(n_layers)?;
        let mut budgets = Vec::new();
        budgets
            .try_reserve_exact(n_layers)
            .map_err(|_| Error::AllocationFailed { bytes: usize::MAX })?;
        budgets.resize(n_layers, 0);
        schedule.split(total, reserve, &mut budgets)?;
        let policies = budgets.into_iter().map(&mut policy).collect::<Result<Vec<_>>>()?;
        Self::with_policies(n_heads, n_kv_heads, head_dim, policies)
    }

    /// A model cache of existing layers, layer 0 first: each layer must
    /// hold as many tokens as the next, or one prefill/step more (a model
    /// caught between layers), and their positions may not decrease.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for no layers; [`Error::OutOfTurn`] if
    /// the positions break the turn rule.
    pub fn from_layers(layers: Vec<LayerCache<T, P>>) -> Result<Self> {
        check_layers(layers.len())?;
        let last = layers[layers.len() - 1].next_position();
        let first = layers[0].next_position();
        for (l, w) in layers.windows(2).enumerate() {
            let (a, b) = (w[0].next_position(), w[1].next_position());
            if b > a || (b != last && b != first) || (a != first && a != last) {
                return Err(Error::OutOfTurn { layer: l + 1, reason: "positions out of turn" });
            }
        }
        Ok(Self { layers })
    }

    /// Layers.
    #[must_use]
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Layer `l`, or `None` if out of range.
    #[must_use]
    pub fn layer(&self, l: usize) -> Option<&LayerCache<T, P>> {
        self.layers.get(l)
    }

    /// All layers, layer 0 first.
    #[must_use]
    pub fn layers(&self) -> &[LayerCache<T, P>] {
        &self.layers
    }

    /// Layer `l` for a call that adds `tokens` tokens to it now (a decode
    /// step: 1; a prefill: the prompt length), checked against the turn
    /// rule: for adapters that drive a layer through their own wrapper (a
    /// tensor adapter calling [`LayerCache::step`] or
    /// [`LayerCache::prefill`]). The caller must add exactly `tokens` tokens
    /// through the returned layer; any other change (a reset, a different
    /// count) makes the following calls [`Error::OutOfTurn`] until
    /// [`reset`](Self::reset), so a misuse cannot go unnoticed, but it is
    /// the caller's to avoid.
    ///
    /// # Example
    /// ```
    /// use h2o_kv::{Full, ModelCache};
    ///
    /// let mut model = ModelCache::<f32, _>::new(2, 2, 1, 4, Full::new(8)?)?;
    /// for l in 0..2 {
    ///     model.layer_in_turn(l, 1)?.step(&[0.5; 8], &[0.25; 4], &[1.0; 4])?;
    /// }
    /// assert_eq!(model.position(), 1);
    /// assert!(model.layer_in_turn(1, 1).is_err()); // layer 0 goes first
    /// # Ok::<(), h2o_kv::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::OutOfTurn`] if layer `l` may not take `tokens` tokens now.
    pub fn layer_in_turn(&mut self, l: usize, tokens: usize) -> Result<&mut LayerCache<T, P>> {
        self.check_turn(l, tokens)?;
        Ok(&mut self.layers[l])
    }

    /// The layers, layer 0 first (the inverse of [`from_layers`](Self::from_layers)).
    #[must_use]
    pub fn into_layers(self) -> Vec<LayerCache<T, P>> {
        self.layers
    }

    /// Each layer's budget per KV head, layer 0 first (for a layer whose
    /// heads have different budgets, its largest; see
    /// [`LayerCache::budget`]).
    pub fn budgets(&self) -> impl Iterator<Item = usize> + '_ {
        self.layers.iter().map(LayerCache::budget)
    }

    /// Tokens every layer has taken: the position the next token gets once
    /// it has gone through all layers.
    #[must_use]
    pub fn position(&self) -> u64 {
        self.layers[self.layers.len() - 1].next_position()
    }

    /// Key and value bytes held by resident tokens, over all layers and heads.
    #[must_use]
    pub fn kv_bytes(&self) -> usize {
        self.layers.iter().map(LayerCache::kv_bytes).sum()
    }

    /// Forgets every token in every layer; positions restart at 0.
    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(LayerCache::reset);
    }

    /// Checks that [`copy_from`](Self::copy_from) can copy `src` into this
    /// cache: the same number of layers and every layer as
    /// [`LayerCache::check_copy`] requires (heads, `head_dim`, scale,
    /// policy). Changes nothing.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] naming what differs.
    pub fn check_copy(&self, src: &Self) -> Result<()>
    where
        P: PartialEq,
    {
        if self.layers.len() != src.layers.len() {
            return Err(Error::ShapeMismatch { what: "layers" });
        }
        self.layers.iter().zip(&src.layers).try_for_each(|(a, b)| a.check_copy(b))
    }

    /// Makes this cache an exact copy of `src`'s sequence without allocating:
    /// the fork of beam search, into a cache built beforehand with the same
    /// shape (a [`clone`](Clone::clone) of any beam, once, at start-up).
    /// Every layer copies its own state (see [`LayerCache::copy_from`]); from
    /// here on both caches give bit-identical outputs and decisions for the
    /// same inputs. O(`layers · n_kv_heads · span · head_dim`).
    ///
    /// # Example
    /// ```
    /// use h2o_kv::{H2O, ModelCache};
    ///
    /// let mut beam = ModelCache::<f32, _>::new(2, 2, 1, 4, H2O::new(2, 2)?)?;
    /// let mut spare = beam.clone(); // allocated once, before decoding
    /// for layer in 0..2 {
    ///     beam.step(layer, &[0.5; 8], &[0.25; 4], &[1.0; 4])?;
    /// }
    /// spare.copy_from(&beam)?; // no allocation
    /// assert_eq!(spare.position(), 1);
    /// # Ok::<(), h2o_kv::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] (see [`check_copy`](Self::check_copy)),
    /// checked for every layer before any changes.
    pub fn copy_from(&mut self, src: &Self) -> Result<()>
    where
        P: PartialEq,
    {
        self.check_copy(src)?;
        self.copy_checked(src);
        Ok(())
    }

    /// [`copy_from`](Self::copy_from) after [`check_copy`](Self::check_copy).
    pub(crate) fn copy_checked(&mut self, src: &Self) {
        for (a, b) in self.layers.iter_mut().zip(&src.layers) {
            a.copy_checked(b);
        }
    }

    /// Checks that [`truncate`](Self::truncate) can drop the last `n`
    /// tokens. Changes nothing.
    ///
    /// # Errors
    /// [`Error::OutOfTurn`] if a token has gone through some layers but not
    /// all; [`Error::CannotTruncate`] as [`LayerCache::truncate`] for any
    /// layer.
    pub fn check_truncate(&self, n: usize) -> Result<()> {
        let position = self.position();
        if let Some(l) = self.layers.iter().position(|l| l.next_position() != position) {
            return Err(Error::OutOfTurn {
                layer: l,
                reason: "a token has not gone through every layer; finish it before truncating",
            });
        }
        self.layers.iter().try_for_each(|l| l.check_truncate(n))
    }

    /// Drops the last `n` tokens of the sequence from every layer and head
    /// (speculative decoding: the rejected drafts); they must still be
    /// resident everywhere. [`position`](Self::position) goes back by `n`,
    /// so the next token reuses the first dropped position.
    ///
    /// Rolled back exactly: the resident set, the slots, the recent windows
    /// and the positions, so outputs of later steps are bit-identical to a
    /// cache that never saw the drafts. Not rolled back: the attention the
    /// dropped tokens' queries paid to older tokens stays in their
    /// accumulated scores, last weights and attention counts, and tokens
    /// evicted during the drafts stay evicted (see
    /// [`Planner::truncate`](crate::Planner::truncate)). The last step's
    /// inspection data ([`Cache::last_attention`](crate::Cache::last_attention),
    /// last evictions) is cleared. Allocates nothing.
    ///
    /// # Example
    /// ```
    /// use h2o_kv::{Full, ModelCache};
    ///
    /// let mut model = ModelCache::<f32, _>::new(2, 2, 1, 4, Full::new(64)?)?;
    /// for t in 0..5 {
    ///     for layer in 0..2 {
    ///         model.step(layer, &[0.1 * t as f32; 8], &[0.5; 4], &[1.0; 4])?;
    ///     }
    /// }
    /// model.truncate(2)?; // tokens 3 and 4 were rejected drafts
    /// assert_eq!(model.position(), 3);
    /// assert!(model.truncate(4).is_err()); // only 3 tokens left
    /// # Ok::<(), h2o_kv::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`check_truncate`](Self::check_truncate); nothing changes then.
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        self.check_truncate(n)?;
        for layer in &mut self.layers {
            layer.truncate(n)?;
        }
        Ok(())
    }

    /// Checks that layer `l` may take `m` more tokens now.
    fn check_turn(&self, l: usize, m: usize) -> Result<()> {
        let Some(layer) = self.layers.get(l) else {
            return Err(Error::OutOfTurn { layer: l, reason: "no such layer" });
        };
        let base = self.position();
        if layer.next_position() != base {
            return Err(Error::OutOfTurn { layer: l, reason: "this layer already took the token" });
        }
        let below = if l == 0 { base } else { self.layers[l - 1].next_position() };
        let want = if l == 0 { base } else { base + m as u64 };
        if below != want {
            return Err(Error::OutOfTurn {
                layer: l,
                reason: if l == 0 {
                    "the previous token has not gone through every layer"
                } else {
                    "the layer below has not taken the token yet"
                },
            });
        }
        Ok(())
    }

    /// One decode step of layer `l` in the default order (see
    /// [`LayerCache::step`]): `query` `[n_heads × head_dim]`, `key`/`value`
    /// `[n_kv_heads × head_dim]`; returns `[n_heads × head_dim]`.
    ///
    /// # Errors
    /// [`Error::OutOfTurn`] (see the turn rule); otherwise as
    /// [`LayerCache::step`]. Nothing changes on error.
    pub fn step(&mut self, l: usize, query: &[T], key: &[T], value: &[T]) -> Result<&[T]> {
        self.step_with(l, StepOrder::InsertAttendEvict, query, key, value)
    }

    /// One decode step of layer `l` in `order` (see [`StepOrder`] and
    /// [`LayerCache::step_with`]); shapes as [`step`](Self::step).
    ///
    /// # Errors
    /// [`Error::OutOfTurn`] (see the turn rule); otherwise as
    /// [`LayerCache::step`]. Nothing changes on error.
    pub fn step_with(
        &mut self,
        l: usize,
        order: StepOrder,
        query: &[T],
        key: &[T],
        value: &[T],
    ) -> Result<&[T]> {
        self.check_turn(l, 1)?;
        self.layers[l].step_with(order, query, key, value)
    }

    /// A prefill of `P` tokens on layer `l` (see [`LayerCache::prefill`]).
    ///
    /// # Errors
    /// [`Error::OutOfTurn`]; otherwise as [`LayerCache::prefill`].
    pub fn prefill(
        &mut self,
        l: usize,
        queries: &[T],
        keys: &[T],
        values: &[T],
        out: &mut [T],
    ) -> Result<()> {
        self.check_prefill_turn(l, keys)?;
        self.layers[l].prefill(queries, keys, values, out)
    }

    fn check_prefill_turn(&self, l: usize, keys: &[T]) -> Result<()> {
        let Some(layer) = self.layers.get(l) else {
            return Err(Error::OutOfTurn { layer: l, reason: "no such layer" });
        };
        let row = layer.n_kv_heads() * layer.head_dim();
        if keys.len() % row != 0 {
            return Err(Error::RaggedRows { what: "keys", len: keys.len(), row_len: row });
        }
        self.check_turn(l, keys.len() / row)
    }
}

impl<T: Element, P: EvictionPolicy> ModelCache<T, P> {
    /// A SnapKV prefill on layer `l` (see [`LayerCache::prefill_snapkv`]).
    ///
    /// # Errors
    /// [`Error::OutOfTurn`]; otherwise as [`LayerCache::prefill`].
    pub fn prefill_snapkv(
        &mut self,
        l: usize,
        snap: &SnapKv,
        queries: &[T],
        keys: &[T],
        values: &[T],
        out: &mut [T],
    ) -> Result<()> {
        self.check_prefill_turn(l, keys)?;
        self.layers[l].prefill_snapkv(snap, queries, keys, values, out)
    }
}

impl<T: Element, P: EvictionPolicy> ModelCache<T, P> {
    /// Every layer derives its prefill from the same layer of `source` (see
    /// [`LayerCache::prefill_from`]): prefill a prompt once into a full
    /// `ModelCache`, then derive one bounded cache per policy from it. This
    /// cache must be empty; afterwards its position is `source`'s.
    ///
    /// # Errors
    /// [`Error::PrefillSource`] if the layer counts differ or `source` is
    /// between layers of a token (not every layer has taken it); otherwise
    /// as [`LayerCache::prefill_from`], checked for every layer before any
    /// changes. No panic.
    pub fn prefill_from<Q: EvictionPolicy>(&mut self, source: &ModelCache<T, Q>) -> Result<()> {
        if source.layers.len() != self.layers.len() {
            return Err(Error::PrefillSource { reason: "the layer counts differ" });
        }
        if source.layers.iter().any(|l| l.next_position() != source.position()) {
            return Err(Error::PrefillSource { reason: "the source is between layers of a token" });
        }
        for (layer, from) in self.layers.iter().zip(&source.layers) {
            layer.check_prefill_from(from)?;
        }
        for (layer, from) in self.layers.iter_mut().zip(&source.layers) {
            layer.commit_prefill_from(from);
        }
        Ok(())
    }
}

fn check_layers(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidParameter {
            what: "layers",
            value: 0.0,
            expected: "at least one layer",
        });
    }
    Ok(())
}

fn policy_of<T: Element, P: EvictionPolicy>(layer: &LayerCache<T, P>) -> P {
    layer.heads()[0].policy().clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{H2O, KvCache};

    fn model() -> ModelCache<f64, H2O> {
        ModelCache::new(3, 2, 1, 2, H2O::new(2, 2).unwrap()).unwrap()
    }

    #[test]
    fn layers_take_tokens_in_turn() {
        let mut m = model();
        let (q, kv) = ([0.5; 4], [0.25; 2]);
        m.step(0, &q, &kv, &kv).unwrap();
        // Layer 0 again before the others: out of turn, nothing changes.
        assert!(matches!(m.step(0, &q, &kv, &kv), Err(Error::OutOfTurn { layer: 0, .. })));
        // Layer 2 before layer 1.
        assert!(matches!(m.step(2, &q, &kv, &kv), Err(Error::OutOfTurn { layer: 2, .. })));
        assert!(matches!(m.step(3, &q, &kv, &kv), Err(Error::OutOfTurn { layer: 3, .. })));
        assert_eq!(m.position(), 0);
        m.step(1, &q, &kv, &kv).unwrap();
        m.step(2, &q, &kv, &kv).unwrap();
        assert_eq!(m.position(), 1);
        assert_eq!(m.layers()[1].heads()[0].resident_positions(), [0]);
    }

    #[test]
    fn layers_in_turn_for_adapters() {
        let mut m = model();
        let (q, kv) = ([0.5; 4], [0.25; 2]);
        // A prefill of 3 through layer 0, then layer 1 must take 3, not 1.
        let (pq, pkv, mut out) = ([0.5; 12], [0.25; 6], [0.0; 12]);
        m.layer_in_turn(0, 3).unwrap().prefill(&pq, &pkv, &pkv, &mut out).unwrap();
        assert!(matches!(m.layer_in_turn(1, 1), Err(Error::OutOfTurn { layer: 1, .. })));
        assert!(matches!(m.layer_in_turn(0, 1), Err(Error::OutOfTurn { layer: 0, .. })));
        assert!(matches!(m.layer_in_turn(3, 1), Err(Error::OutOfTurn { layer: 3, .. })));
        for l in 1..3 {
            m.layer_in_turn(l, 3).unwrap().prefill(&pq, &pkv, &pkv, &mut out).unwrap();
        }
        assert_eq!(m.position(), 3);
        m.layer_in_turn(0, 1).unwrap().step(&q, &kv, &kv).unwrap();
        // Caught between layers: the layers round-trip through from_layers.
        let back = ModelCache::from_layers(m.clone().into_layers()).unwrap();
        assert_eq!((back.position(), back.layers()[0].next_position()), (3, 4));
    }

    #[test]
    fn prefill_goes_through_every_layer() {
        let mut m = model();
        let p = 6;
        let q = vec![0.1; p * 4];
        let kv = vec![0.2; p * 2];
        let mut out = vec![0.0; p * 4];
        for l in 0..3 {
            m.prefill(l, &q, &kv, &kv, &mut out).unwrap();
        }
        assert_eq!(m.position(), 6);
        assert!(m.layers().iter().all(|l| l.len() == 4));
        assert_eq!(m.kv_bytes(), 3 * 4 * 2 * 2 * 8);
        m.reset();
        assert_eq!((m.position(), m.kv_bytes()), (0, 0));
    }

    #[test]
    fn snapshots_round_trip() {
        let mut m = model();
        let (q, kv) = ([0.5, -0.25, 0.125, 1.0], [0.25, -1.0]);
        for _ in 0..7 {
            for l in 0..3 {
                m.step(l, &q, &kv, &kv).unwrap();
            }
        }
        m.step(0, &q, &kv, &kv).unwrap(); // caught between layers
        let bytes = m.snapshot();
        let back = ModelCache::<f64, H2O>::from_snapshot(&bytes).unwrap();
        assert_eq!(back.snapshot(), bytes);
        assert_eq!(back.position(), 7);
        assert_eq!(back.layers()[0].next_position(), 8);
        // A layer snapshot is not a model snapshot; a cut one is refused.
        let layer = m.layers()[0].snapshot();
        assert!(matches!(
            ModelCache::<f64, H2O>::from_snapshot(&layer),
            Err(Error::Snapshot(crate::SnapshotError::Mismatch { .. }))
        ));
        assert!(ModelCache::<f64, H2O>::from_snapshot(&bytes[..bytes.len() - 9]).is_err());
    }

    #[test]
    fn schedules_give_per_layer_budgets() {
        let m = ModelCache::<f32, _>::with_schedule(
            4,
            2,
            2,
            4,
            LayerSchedule::Pyramid { beta: 2 },
            100,
            0,
            |b| H2O::with_heavy_fraction(b, 0.5),
        )
        .unwrap();
        assert_eq!(m.budgets().collect::<Vec<_>>(), [38, 29, 21, 12]);
        assert!(ModelCache::<f32, H2O>::with_policies(2, 2, 4, []).is_err());
        assert!(ModelCache::<f32, _>::new(0, 2, 2, 4, H2O::new(1, 1).unwrap()).is_err());
    }
}
