//! `AnyPolicy`: choose the policy at run time without trait objects.

use core::cmp::Ordering;

use super::{Candidate, EvictionPolicy, Full, H2O, Heavy, Recent};

/// One of the four built-in policies, chosen at run time.
///
/// `Cache<T, AnyPolicy>` and `LayerCache<T, AnyPolicy>` let a harness switch
/// policies from a command line while keeping one concrete type. Each call
/// forwards to the wrapped policy, so decisions are identical.
///
/// # Example
/// ```
/// use h2o_kv::{AnyPolicy, Cache, H2O, KvCache, LayerCache, Recent};
///
/// let name = "h2o"; // e.g. from the command line
/// let policy: AnyPolicy = match name {
///     "recent" => Recent::new(128)?.into(),
///     _ => H2O::new(64, 64)?.into(), // 64 heavy hitters + 64 recent tokens
/// };
/// let head = Cache::<f32, AnyPolicy>::with_policy(64, policy)?; // head_dim 64
/// assert_eq!((head.budget(), head.policy_name()), (128, "h2o"));
/// // A GQA layer: 8 query heads on 2 KV heads of dimension 64.
/// let layer = LayerCache::<f32, AnyPolicy>::new(8, 2, 64, policy)?;
/// assert_eq!(layer.group_size(), 4);
/// # Ok::<(), h2o_kv::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnyPolicy {
    /// [`Full`]: keep everything.
    Full(Full),
    /// [`Recent`]: sliding window.
    Recent(Recent),
    /// [`Heavy`]: heavy hitters + the newest token.
    Heavy(Heavy),
    /// [`H2O`]: heavy hitters + recent window.
    H2O(H2O),
}

/// Forwards a call to whichever policy `self` holds.
macro_rules! dispatch {
    ($self:ident, $p:ident => $call:expr) => {
        match $self {
            AnyPolicy::Full($p) => $call,
            AnyPolicy::Recent($p) => $call,
            AnyPolicy::Heavy($p) => $call,
            AnyPolicy::H2O($p) => $call,
        }
    };
}

impl EvictionPolicy for AnyPolicy {
    fn budget(&self) -> usize {
        dispatch!(self, p => p.budget())
    }
    fn evicts(&self) -> bool {
        dispatch!(self, p => p.evicts())
    }
    fn recent_window(&self) -> usize {
        dispatch!(self, p => p.recent_window())
    }
    #[inline]
    fn eviction_order(&self, a: &Candidate, b: &Candidate) -> Ordering {
        dispatch!(self, p => p.eviction_order(a, b))
    }
    fn name(&self) -> &'static str {
        dispatch!(self, p => p.name())
    }
}

impl From<Full> for AnyPolicy {
    fn from(p: Full) -> Self {
        AnyPolicy::Full(p)
    }
}
impl From<Recent> for AnyPolicy {
    fn from(p: Recent) -> Self {
        AnyPolicy::Recent(p)
    }
}
impl From<Heavy> for AnyPolicy {
    fn from(p: Heavy) -> Self {
        AnyPolicy::Heavy(p)
    }
}
impl From<H2O> for AnyPolicy {
    fn from(p: H2O) -> Self {
        AnyPolicy::H2O(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_to_the_wrapped_policy() {
        let p: AnyPolicy = H2O::new(3, 2).unwrap().into();
        assert_eq!((p.budget(), p.recent_window(), p.name()), (5, 2, "h2o"));
        let p: AnyPolicy = Full::new(7).unwrap().into();
        assert!(!p.evicts());
        let p: AnyPolicy = Recent::new(4).unwrap().into();
        assert_eq!(p.recent_window(), 4);
        let p: AnyPolicy = Heavy::new(4).unwrap().into();
        assert_eq!(p.recent_window(), 1);
    }
}
