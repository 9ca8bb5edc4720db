//! `AnyPolicy`: choose the policy at run time without trait objects.

use core::cmp::Ordering;
use core::fmt;
use core::str::FromStr;

use super::{Candidate, EvictionPolicy, Full, H2O, Heavy, Recent};
use crate::error::Result;
use crate::order::UnknownName;

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

impl AnyPolicy {
    /// Which of the policies this is.
    #[must_use]
    pub fn kind(&self) -> PolicyKind {
        match self {
            AnyPolicy::Full(_) => PolicyKind::Full,
            AnyPolicy::Recent(_) => PolicyKind::Recent,
            AnyPolicy::Heavy(_) => PolicyKind::Heavy,
            AnyPolicy::H2O(_) => PolicyKind::H2O,
        }
    }
}

/// The name of a built-in policy, without its parameters: for command lines,
/// tables and logs. Parses from and displays as the policy's short name
/// (`"full"`, `"recent"`, `"heavy"`, `"h2o"`), the same as
/// [`EvictionPolicy::name`].
///
/// # Example
/// ```
/// use h2o_kv::{EvictionPolicy, PolicyKind};
///
/// let kind: PolicyKind = "h2o".parse()?;
/// let policy = kind.with_budget(26, 0.5)?; // 13 heavy hitters + 13 recent
/// assert_eq!((policy.budget(), policy.recent_window()), (26, 13));
/// assert_eq!(policy.kind(), kind);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PolicyKind {
    /// [`Full`]: keep everything ([`FullCache`](crate::FullCache)).
    Full,
    /// [`Recent`]: sliding window ([`RecentOnly`](crate::RecentOnly)).
    Recent,
    /// [`Heavy`]: heavy hitters + the newest token ([`HeavyOnly`](crate::HeavyOnly)).
    Heavy,
    /// [`H2O`]: heavy hitters + recent window ([`H2OCache`](crate::H2OCache)).
    H2O,
}

impl PolicyKind {
    /// Every kind, in the order of the README's policy table.
    pub const ALL: [PolicyKind; 4] =
        [PolicyKind::Full, PolicyKind::Recent, PolicyKind::Heavy, PolicyKind::H2O];

    /// The short name, as [`EvictionPolicy::name`].
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Full => "full",
            PolicyKind::Recent => "recent",
            PolicyKind::Heavy => "heavy",
            PolicyKind::H2O => "h2o",
        }
    }

    /// The policy of this kind keeping `budget` tokens: a full cache's
    /// capacity, a window's length, and for H2O a split with
    /// `floor(budget × heavy_fraction)` heavy hitters (see
    /// [`H2O::with_heavy_fraction`]); `heavy_fraction` is ignored otherwise.
    ///
    /// # Errors
    /// As the policies' constructors.
    pub fn with_budget(self, budget: usize, heavy_fraction: f64) -> Result<AnyPolicy> {
        Ok(match self {
            PolicyKind::Full => Full::new(budget)?.into(),
            PolicyKind::Recent => Recent::new(budget)?.into(),
            PolicyKind::Heavy => Heavy::new(budget)?.into(),
            PolicyKind::H2O => H2O::with_heavy_fraction(budget, heavy_fraction)?.into(),
        })
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = UnknownName;

    fn from_str(s: &str) -> core::result::Result<Self, UnknownName> {
        PolicyKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| UnknownName {
            what: "policy",
            got: s.to_owned(),
            known: &["full", "recent", "heavy", "h2o"],
        })
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

    #[test]
    fn kinds_round_trip_through_names_and_policies() {
        for kind in PolicyKind::ALL {
            assert_eq!(kind.name().parse::<PolicyKind>(), Ok(kind));
            let p = kind.with_budget(8, 0.5).unwrap();
            assert_eq!((p.kind(), p.name(), p.budget()), (kind, kind.name(), 8));
        }
        assert!("h20".parse::<PolicyKind>().unwrap_err().to_string().contains("h2o"));
        assert!(PolicyKind::H2O.with_budget(8, 1.5).is_err());
    }
}
