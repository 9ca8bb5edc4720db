//! `AnyPolicy`: choose the policy at run time without trait objects.

use core::cmp::Ordering;
use core::fmt;
use core::str::FromStr;

use super::{
    Candidate, EvictionPolicy, Full, H2O, H2OSinks, Heavy, MeanScore, Recent, SinkWindow, Tova,
};
use crate::error::Result;
use crate::order::UnknownName;

/// One of the built-in policies, chosen at run time.
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
    /// [`SinkWindow`]: attention sinks + sliding window (StreamingLLM).
    SinkWindow(SinkWindow),
    /// [`H2OSinks`]: H2O with attention sinks.
    H2OSinks(H2OSinks),
    /// [`Tova`]: the current query's weights only.
    Tova(Tova),
    /// [`MeanScore`]: H2O ranked by mean attention.
    MeanScore(MeanScore),
}

/// Forwards a call to whichever policy `self` holds.
macro_rules! dispatch {
    ($self:ident, $p:ident => $call:expr) => {
        match $self {
            AnyPolicy::Full($p) => $call,
            AnyPolicy::Recent($p) => $call,
            AnyPolicy::Heavy($p) => $call,
            AnyPolicy::H2O($p) => $call,
            AnyPolicy::SinkWindow($p) => $call,
            AnyPolicy::H2OSinks($p) => $call,
            AnyPolicy::Tova($p) => $call,
            AnyPolicy::MeanScore($p) => $call,
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
    fn sinks(&self) -> usize {
        dispatch!(self, p => p.sinks())
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
            AnyPolicy::SinkWindow(_) => PolicyKind::SinkWindow,
            AnyPolicy::H2OSinks(_) => PolicyKind::H2OSinks,
            AnyPolicy::Tova(_) => PolicyKind::Tova,
            AnyPolicy::MeanScore(_) => PolicyKind::MeanScore,
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
    /// [`SinkWindow`]: 4 attention sinks + a sliding window
    /// ([`SinkWindowCache`](crate::SinkWindowCache)).
    SinkWindow,
    /// [`H2OSinks`]: H2O with 4 attention sinks ([`H2OSinksCache`](crate::H2OSinksCache)).
    H2OSinks,
    /// [`Tova`]: the current query's weights ([`TovaCache`](crate::TovaCache)).
    Tova,
    /// [`MeanScore`]: H2O ranked by mean attention ([`MeanScoreCache`](crate::MeanScoreCache)).
    MeanScore,
}

impl PolicyKind {
    /// Every kind, in the order of the README's policy table.
    pub const ALL: [PolicyKind; 8] = [
        PolicyKind::Full,
        PolicyKind::Recent,
        PolicyKind::Heavy,
        PolicyKind::H2O,
        PolicyKind::SinkWindow,
        PolicyKind::H2OSinks,
        PolicyKind::Tova,
        PolicyKind::MeanScore,
    ];

    /// The short name, as [`EvictionPolicy::name`].
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Full => "full",
            PolicyKind::Recent => "recent",
            PolicyKind::Heavy => "heavy",
            PolicyKind::H2O => "h2o",
            PolicyKind::SinkWindow => "sinks",
            PolicyKind::H2OSinks => "h2o+sinks",
            PolicyKind::Tova => "tova",
            PolicyKind::MeanScore => "mean",
        }
    }

    /// The policy of this kind keeping `budget` tokens: a full cache's
    /// capacity, a window's length, and for H2O a split with
    /// `floor(budget × heavy_fraction)` heavy hitters (see
    /// [`H2O::with_heavy_fraction`]). Mean score splits like H2O. H2O +
    /// sinks splits like H2O and gives up to 4 of the heavy slots to sinks
    /// (fewer if there are fewer heavy slots, and never the whole budget). Sinks + window keeps up to 4
    /// sinks and at least one window token. `heavy_fraction` is ignored by
    /// the others.
    ///
    /// # Errors
    /// As the policies' constructors.
    pub fn with_budget(self, budget: usize, heavy_fraction: f64) -> Result<AnyPolicy> {
        let sinks = SinkWindow::DEFAULT_SINKS;
        Ok(match self {
            PolicyKind::Full => Full::new(budget)?.into(),
            PolicyKind::Recent => Recent::new(budget)?.into(),
            PolicyKind::Heavy => Heavy::new(budget)?.into(),
            PolicyKind::H2O => H2O::with_heavy_fraction(budget, heavy_fraction)?.into(),
            PolicyKind::SinkWindow => {
                super::check_budget(budget)?;
                let n_sink = sinks.min(budget - 1);
                SinkWindow::new(n_sink, budget - n_sink)?.into()
            }
            PolicyKind::H2OSinks => {
                let h2o = H2O::with_heavy_fraction(budget, heavy_fraction)?;
                let room = h2o.heavy().min(budget.saturating_sub(1));
                H2OSinks::from_h2o(h2o, sinks.min(room))?.into()
            }
            PolicyKind::Tova => Tova::new(budget)?.into(),
            PolicyKind::MeanScore => MeanScore::with_heavy_fraction(budget, heavy_fraction)?.into(),
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
            known: &["full", "recent", "heavy", "h2o", "sinks", "h2o+sinks", "tova", "mean"],
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
impl From<SinkWindow> for AnyPolicy {
    fn from(p: SinkWindow) -> Self {
        AnyPolicy::SinkWindow(p)
    }
}
impl From<H2OSinks> for AnyPolicy {
    fn from(p: H2OSinks) -> Self {
        AnyPolicy::H2OSinks(p)
    }
}
impl From<Tova> for AnyPolicy {
    fn from(p: Tova) -> Self {
        AnyPolicy::Tova(p)
    }
}
impl From<MeanScore> for AnyPolicy {
    fn from(p: MeanScore) -> Self {
        AnyPolicy::MeanScore(p)
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
        let p: AnyPolicy = SinkWindow::new(4, 6).unwrap().into();
        assert_eq!((p.budget(), p.recent_window(), p.sinks(), p.name()), (10, 6, 4, "sinks"));
        let p: AnyPolicy = H2OSinks::new(5, 3, 2).unwrap().into();
        assert_eq!((p.budget(), p.recent_window(), p.sinks()), (8, 3, 2));
        let p: AnyPolicy = Tova::new(7).unwrap().into();
        assert_eq!((p.budget(), p.recent_window(), p.sinks()), (7, 0, 0));
        let p: AnyPolicy = MeanScore::new(2, 3).unwrap().into();
        assert_eq!((p.budget(), p.recent_window(), p.name()), (5, 3, "mean"));
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
        // Small budgets: fewer sinks, never an empty window or too few heavy slots.
        let p = PolicyKind::SinkWindow.with_budget(3, 0.5).unwrap();
        assert_eq!((p.sinks(), p.recent_window()), (2, 1));
        let p = PolicyKind::H2OSinks.with_budget(7, 0.5).unwrap();
        assert_eq!((p.sinks(), p.recent_window(), p.budget()), (3, 4, 7));
        let p = PolicyKind::H2OSinks.with_budget(40, 0.5).unwrap();
        assert_eq!((p.sinks(), p.recent_window()), (4, 20));
        assert_eq!(PolicyKind::SinkWindow.with_budget(0, 0.5), Err(crate::Error::ZeroBudget));
    }
}
