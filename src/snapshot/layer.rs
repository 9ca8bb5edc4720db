//! Snapshots of a [`LayerCache`]: the head counts, then one head per KV head.

use super::SnapshotElement;
use super::codec::{KIND_LAYER, Reader, frame, invalid, put_usize};
use super::head::{HeadState, apply, config_error, get_head, put_head};
use super::policy::{SnapshotPolicy, restore};
use crate::error::Result;
use crate::layer::LayerCache;
#[cfg(doc)]
use crate::{cache::Cache, error::Error};

impl<T: SnapshotElement, P: SnapshotPolicy> LayerCache<T, P> {
    /// The whole layer's state as bytes: the head counts, then every KV
    /// head's state as in [`Cache::snapshot`].
    #[must_use]
    pub fn snapshot(&self) -> Vec<u8> {
        let mut payload = Vec::new();
        put_usize(&mut payload, self.n_heads());
        put_usize(&mut payload, self.n_kv_heads());
        for head in self.heads() {
            put_head(&mut payload, head);
        }
        frame(KIND_LAYER, T::TAG, &payload)
    }

    /// Rebuilds a layer from [`snapshot`](Self::snapshot) bytes.
    ///
    /// # Errors
    /// As [`Cache::from_snapshot`]; [`SnapshotError::Mismatch`](crate::SnapshotError::Mismatch) for a
    /// single-head snapshot, and [`SnapshotError::Invalid`](crate::SnapshotError::Invalid) if the heads
    /// disagree on `head_dim`, scale or next position (their policies and
    /// budgets may differ, as in [`LayerCache::with_head_policies`]).
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::open(bytes, KIND_LAYER, T::TAG)?;
        let (n_heads, n_kv_heads) = (r.usize()?, r.usize()?);
        if n_kv_heads == 0 || n_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(invalid("head counts are not a positive multiple"));
        }
        // Each head needs at least its fixed fields: bounds the allocation.
        if n_kv_heads > r.remaining() / 64 {
            return Err(invalid("more heads than the payload holds"));
        }
        let mut heads = Vec::with_capacity(n_kv_heads);
        for _ in 0..n_kv_heads {
            heads.push(get_head::<T>(&mut r)?);
        }
        if r.remaining() != 0 {
            return Err(invalid("bytes left over after the layer"));
        }
        let first = &heads[0];
        // Heads may differ in policy and budget (hence in token count), not
        // in shape, scale or position.
        let agree = |h: &HeadState<T>| {
            h.head_dim == first.head_dim
                && h.scale.to_bits() == first.scale.to_bits()
                && h.next_position == first.next_position
        };
        if !heads.iter().all(agree) {
            return Err(invalid("the layer's heads disagree"));
        }
        let policies = heads.iter().map(|h| restore::<P>(h.policy)).collect::<Result<Vec<_>>>()?;
        let mut layer = LayerCache::with_head_policies(n_heads, first.head_dim, policies)
            .and_then(|l| l.with_scale(first.scale))
            .map_err(config_error)?;
        for (cache, head) in layer.heads_mut().iter_mut().zip(&heads) {
            apply(cache, head)?;
        }
        Ok(layer)
    }
}
