//! Snapshots of a [`ModelCache`]: the layer count, then each layer's own
//! snapshot (as [`LayerCache::snapshot`]) with its length.

use super::SnapshotElement;
use super::codec::{KIND_MODEL, Reader, frame, invalid, put_usize};
use super::policy::SnapshotPolicy;
use crate::error::Result;
#[cfg(doc)]
use crate::error::SnapshotError;
use crate::layer::LayerCache;
use crate::model::ModelCache;

impl<T: SnapshotElement, P: SnapshotPolicy> ModelCache<T, P> {
    /// Every layer's state as bytes, in one checksummed frame.
    #[must_use]
    pub fn snapshot(&self) -> Vec<u8> {
        let mut payload = Vec::new();
        put_usize(&mut payload, self.n_layers());
        for layer in self.layers() {
            let bytes = layer.snapshot();
            put_usize(&mut payload, bytes.len());
            payload.extend_from_slice(&bytes);
        }
        frame(KIND_MODEL, T::TAG, &payload)
    }

    /// Rebuilds a model cache from [`snapshot`](Self::snapshot) bytes.
    ///
    /// # Errors
    /// As [`LayerCache::from_snapshot`] for each layer;
    /// [`SnapshotError::Mismatch`] for a single-head or layer snapshot;
    /// [`SnapshotError::Invalid`] if the layers disagree on position.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::open(bytes, KIND_MODEL, T::TAG)?;
        let n = r.usize()?;
        // Each layer snapshot has at least a frame and two counts.
        if n == 0 || n > r.remaining() / 32 {
            return Err(invalid("layer count does not fit the payload"));
        }
        let mut layers = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.usize()?;
            layers.push(LayerCache::from_snapshot(r.take(len)?)?);
        }
        if r.remaining() != 0 {
            return Err(invalid("bytes left over after the layers"));
        }
        Self::from_layers(layers).map_err(|_| invalid("the layers disagree on position"))
    }
}
