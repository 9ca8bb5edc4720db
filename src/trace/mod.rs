//! An opt-in record of eviction decisions, step by step: which positions
//! each head kept, which it evicted, and their scores. Nothing is recorded
//! (and nothing costs) unless the caller calls [`Trace::record`] after a
//! step; the data comes from the planner's read-only views.
//! [`Trace::eviction_map_svg`] (in `svg.rs`) draws one head's records as an
//! eviction map.

use crate::planner::Planner;
use crate::policy::EvictionPolicy;

mod svg;

/// What one head looked like after one call.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceStep {
    /// The next position after the call (the number of tokens inserted so
    /// far): the step's time axis.
    pub next_position: u64,
    /// KV head index (0 for a single-head cache).
    pub head: usize,
    /// Resident tokens after the call: `(position, accumulated score)`,
    /// ascending by position.
    pub kept: Vec<(u64, f64)>,
    /// Positions the call evicted, ascending.
    pub evicted: Vec<u64>,
}

/// A growing list of [`TraceStep`]s: call [`record`](Self::record) (one head)
/// or [`record_layer`](Self::record_layer) after each call you want to see.
/// Allocates per record; decode calls themselves are unaffected.
///
/// # Example
/// ```
/// use h2o_kv::{H2OCache, KvCache, Trace};
///
/// let mut cache = H2OCache::<f32>::new(2, 1, 1)?;
/// let mut trace = Trace::default();
/// for t in 0..4 {
///     cache.step(&[1.0, 0.0], &[t as f32, 1.0], &[0.5, 0.5])?;
///     trace.record(0, cache.planner());
/// }
/// let last = trace.steps().last().unwrap();
/// assert_eq!((last.next_position, last.kept.len(), last.evicted.len()), (4, 2, 1));
/// # Ok::<(), h2o_kv::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    steps: Vec<TraceStep>,
}

impl Trace {
    /// Appends head `head`'s state after the last call.
    pub fn record<P: EvictionPolicy>(&mut self, head: usize, planner: &Planner<P>) {
        let mut kept: Vec<(u64, f64)> =
            planner.residents().map(|(_, t)| (t.position, t.score)).collect();
        kept.sort_unstable_by_key(|k| k.0);
        self.steps.push(TraceStep {
            next_position: planner.next_position(),
            head,
            kept,
            evicted: planner.last_evicted().to_vec(),
        });
    }

    /// Appends every KV head of a layer (heads in order).
    pub fn record_layer<T: crate::Element, P: EvictionPolicy>(
        &mut self,
        layer: &crate::LayerCache<T, P>,
    ) {
        for (h, head) in layer.heads().iter().enumerate() {
            self.record(h, head.planner());
        }
    }

    /// The recorded steps, in recording order.
    #[must_use]
    pub fn steps(&self) -> &[TraceStep] {
        &self.steps
    }

    /// Forgets every record, keeping the allocation.
    pub fn clear(&mut self) {
        self.steps.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{H2O, KvCache, LayerCache, RecentOnly};

    #[test]
    fn records_kept_evicted_and_scores() {
        let mut c = RecentOnly::<f64>::new(1, 2).unwrap().with_scale(1.0).unwrap();
        let mut trace = Trace::default();
        for _ in 0..3 {
            c.step(&[0.0], &[0.0], &[1.0]).unwrap();
            trace.record(0, c.planner());
        }
        let s = trace.steps();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].kept, [(0, 1.0)]);
        assert!(s[1].evicted.is_empty());
        assert_eq!(s[2].evicted, [0]);
        assert_eq!(s[2].kept.iter().map(|k| k.0).collect::<Vec<_>>(), [1, 2]);
        // Token 1: 1/2 at step 1, 1/3 at step 2.
        assert!((s[2].kept[0].1 - (0.5 + 1.0 / 3.0)).abs() < 1e-15);

        let mut layer = LayerCache::<f32, _>::new(2, 2, 1, H2O::new(1, 1).unwrap()).unwrap();
        layer.step(&[1.0, 1.0], &[1.0, 1.0], &[1.0, 1.0]).unwrap();
        trace.clear();
        trace.record_layer(&layer);
        assert_eq!(trace.steps().iter().map(|s| s.head).collect::<Vec<_>>(), [0, 1]);
    }
}
