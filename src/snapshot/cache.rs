//! Snapshots of a single-head [`Cache`].

use super::SnapshotElement;
use super::codec::{KIND_CACHE, Reader, frame, invalid};
use super::head::{apply, config_error, get_head, put_head};
use super::policy::{SnapshotPolicy, restore};
use crate::cache::Cache;
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;

impl<T: SnapshotElement, P: SnapshotPolicy> Cache<T, P> {
    /// The cache's whole state as bytes (format in the
    /// [`snapshot`](crate::snapshot) module docs):
    /// `len · (16 + 2 · head_dim · size_of::<T>())` bytes for the tokens, plus
    /// one byte per slot ever used, 8 per free slot, recent-window slot and
    /// last evicted position, and 110 bytes of header and fields.
    ///
    /// [`from_snapshot`](Self::from_snapshot) rebuilds a cache whose every
    /// following call is bit-identical to this one's.
    #[must_use]
    pub fn snapshot(&self) -> Vec<u8> {
        let mut payload = Vec::new();
        put_head(&mut payload, self);
        frame(KIND_CACHE, T::TAG, &payload)
    }

    /// Rebuilds a cache from [`snapshot`](Self::snapshot) bytes.
    ///
    /// The snapshot may come from a cache of another policy type if it holds
    /// a policy this type can represent (any built-in one for
    /// `Cache<T, AnyPolicy>`; an H2O policy for `H2OCache<T>`).
    ///
    /// # Errors
    /// - [`SnapshotError::Truncated`](crate::SnapshotError::Truncated) if the bytes end early;
    /// - [`SnapshotError::Magic`](crate::SnapshotError::Magic) if they are not a snapshot;
    /// - [`SnapshotError::Version`](crate::SnapshotError::Version) for another format version;
    /// - [`SnapshotError::Checksum`](crate::SnapshotError::Checksum) if the bytes were corrupted;
    /// - [`SnapshotError::Mismatch`](crate::SnapshotError::Mismatch) for a layer snapshot, another element
    ///   type, or a policy `P` cannot hold;
    /// - [`SnapshotError::Invalid`](crate::SnapshotError::Invalid) if the contents describe an impossible cache;
    /// - [`Error::AllocationFailed`] if the buffers cannot be allocated.
    ///
    /// Like the constructors, a restore allocates the capacity the policy in
    /// the snapshot asks for; bytes from an untrusted source can ask for up
    /// to [`MAX_BUDGET`](crate::MAX_BUDGET) tokens of
    /// [`MAX_HEAD_DIM`](crate::MAX_HEAD_DIM) elements.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::open(bytes, KIND_CACHE, T::TAG)?;
        let head = get_head::<T>(&mut r)?;
        if r.remaining() != 0 {
            return Err(invalid("bytes left over after the cache"));
        }
        let policy = restore::<P>(head.policy)?;
        let mut cache = Cache::with_policy(head.head_dim, policy)
            .and_then(|c| c.with_scale(head.scale))
            .map_err(config_error)?;
        apply(&mut cache, &head)?;
        Ok(cache)
    }
}

#[cfg(test)]
mod tests {
    use crate::{H2OCache, KvCache};

    #[test]
    fn size_matches_the_documented_formula() {
        let mut c = H2OCache::<f32>::new(3, 2, 1).unwrap();
        assert_eq!(c.snapshot().len(), 110);
        for t in 0..6 {
            let x = t as f32;
            c.step(&[x, 1.0, 0.0], &[1.0, x, 0.5], &[x; 3]).unwrap();
        }
        let (len, hw) = (c.len(), c.planner().span());
        let (free, recent) =
            (c.planner().slots().free_slots().len(), c.planner().slots().recent().count());
        let lists = 8 * (free + recent + c.last_evicted().len());
        // Per token: position, score, key, value, then last weight and count.
        assert_eq!(c.snapshot().len(), len * (16 + 2 * 3 * 4 + 16) + hw + lists + 110);
    }

    #[test]
    fn round_trip_keeps_the_layout() {
        let mut c = H2OCache::<f32>::new(2, 2, 1).unwrap();
        for t in 0..7 {
            let x = t as f32;
            c.step(&[1.0, x], &[x.sin(), 1.0], &[x, -x]).unwrap();
        }
        let bytes = c.snapshot();
        let r = H2OCache::<f32>::from_snapshot(&bytes).unwrap();
        assert_eq!(r.snapshot(), bytes);
        assert_eq!(r.planner().slots().free_slots(), c.planner().slots().free_slots());
        assert!(r.planner().slots().recent().eq(c.planner().slots().recent()));
        assert_eq!(r.planner().slots().high_water(), c.planner().span());
    }
}
