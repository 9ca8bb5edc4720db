//! Beam search over [`ModelCache`]s: reorder a set of beams by index after a
//! step, without allocating.
//!
//! After a beam-search step, beam `i` continues old beam `order[i]`: some old
//! beams are picked more than once, others are dropped. The caches move
//! rather than copy where they can: each picked old beam moves (a swap of
//! the cache values, no data copied) to the first new slot that picks it; the
//! dropped beams' caches take the other slots and become copies
//! ([`ModelCache::copy_from`]) of their picks. So a reorder copies exactly
//! one cache per repeated pick and needs no spare cache.

use crate::element::Element;
use crate::error::{Error, Result};
use crate::model::ModelCache;
use crate::policy::EvictionPolicy;

/// Index scratch for [`ModelCache::reorder`]: two lists of one index per
/// beam, allocated once (by [`new`](Self::new)) and reused by every reorder.
#[derive(Debug, Clone, Default)]
pub struct BeamScratch {
    /// `[beams]`: for each old beam, the new slot its cache moves to
    /// (`NONE` if dropped).
    owner: Vec<usize>,
    /// `[beams]`: for each new slot, the old slot whose cache moves there.
    source: Vec<usize>,
}

/// An old beam nobody picked.
const NONE: usize = usize::MAX;

impl BeamScratch {
    /// Scratch for reordering up to `beams` beams without allocating.
    #[must_use]
    pub fn new(beams: usize) -> Self {
        Self { owner: Vec::with_capacity(beams), source: Vec::with_capacity(beams) }
    }

    /// Beams this scratch reorders without allocating.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.owner.capacity().min(self.source.capacity())
    }
}

impl<T: Element, P: EvictionPolicy + PartialEq> ModelCache<T, P> {
    /// Reorders `beams` in place so that beam `i` becomes old beam
    /// `order[i]` (indices may repeat; beams not named are dropped): the
    /// reorder after a beam-search step. Picked beams move (no copy); each
    /// repeated pick costs one [`copy_from`](Self::copy_from) into a dropped
    /// beam's cache. Nothing is allocated when `scratch` was built for at
    /// least `beams.len()` beams (it grows once otherwise).
    ///
    /// # Example
    /// ```
    /// use h2o_kv::{BeamScratch, Full, ModelCache};
    ///
    /// let one = ModelCache::<f32, _>::new(1, 1, 1, 2, Full::new(8)?)?;
    /// let mut beams = vec![one.clone(), one.clone(), one];
    /// for (b, beam) in beams.iter_mut().enumerate() {
    ///     for _ in 0..=b {
    ///         beam.step(0, &[1.0, 0.0], &[0.5, 0.5], &[b as f32; 2])?; // beam b holds b + 1 tokens
    ///     }
    /// }
    /// let mut scratch = BeamScratch::new(3);
    /// ModelCache::reorder(&mut beams, &[2, 0, 2], &mut scratch)?; // beam 1 is dropped
    /// let lens: Vec<u64> = beams.iter().map(ModelCache::position).collect();
    /// assert_eq!(lens, [3, 1, 3]);
    /// # Ok::<(), h2o_kv::Error>(())
    /// ```
    ///
    /// # Errors
    /// Checked before anything changes:
    /// - [`Error::LengthMismatch`] unless `order.len() == beams.len()`;
    /// - [`Error::InvalidParameter`] for an index `>= beams.len()`;
    /// - [`Error::ShapeMismatch`] if a beam that must take a copy differs in
    ///   shape from the beam it copies (see [`check_copy`](Self::check_copy));
    /// - [`Error::AllocationFailed`] if the scratch cannot grow.
    pub fn reorder(beams: &mut [Self], order: &[usize], scratch: &mut BeamScratch) -> Result<()> {
        let k = beams.len();
        if order.len() != k {
            return Err(Error::LengthMismatch { what: "order", expected: k, got: order.len() });
        }
        if let Some(&bad) = order.iter().find(|&&j| j >= k) {
            return Err(Error::InvalidParameter {
                what: "beam index",
                value: bad as f64,
                expected: "below the number of beams",
            });
        }
        let BeamScratch { owner, source } = scratch;
        for v in [&mut *owner, &mut *source] {
            v.clear();
            v.try_reserve_exact(k).map_err(|_| Error::AllocationFailed { bytes: usize::MAX })?;
        }
        // Each picked old beam moves to the first new slot that picks it.
        owner.resize(k, NONE);
        for (i, &j) in order.iter().enumerate() {
            if owner[j] == NONE {
                owner[j] = i;
            }
        }
        // The other new slots take the dropped beams' caches, in order (there
        // are as many dropped beams as repeated picks).
        let mut dropped = (0..k).filter(|&j| owner[j] == NONE);
        for (i, &j) in order.iter().enumerate() {
            let from = if owner[j] == i { j } else { dropped.next().unwrap_or(j) };
            source.push(from);
        }
        for (i, &j) in order.iter().enumerate() {
            if owner[j] != i {
                beams[source[i]].check_copy(&beams[j])?;
            }
        }
        // Nothing can fail from here on. Move the caches: new slot `i` gets
        // the cache in old slot `source[i]` (a permutation), cycle by cycle;
        // `source[x] = x` marks a slot that is done.
        for i in 0..k {
            let mut at = i;
            while source[at] != i {
                let next = source[at];
                beams.swap(at, next);
                source[at] = at;
                at = next;
            }
            source[at] = at;
        }
        // Repeated picks copy the moved original.
        for (i, &j) in order.iter().enumerate() {
            let from = owner[j];
            if from != i {
                let (dst, src) = pair(beams, i, from);
                dst.copy_checked(src);
            }
        }
        Ok(())
    }
}

/// `&mut beams[a]` and `&beams[b]`, `a != b`.
fn pair<X>(beams: &mut [X], a: usize, b: usize) -> (&mut X, &X) {
    if a < b {
        let (lo, hi) = beams.split_at_mut(b);
        (&mut lo[a], &hi[0])
    } else {
        let (lo, hi) = beams.split_at_mut(a);
        (&mut hi[0], &lo[b])
    }
}
