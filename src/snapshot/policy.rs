//! The policies a snapshot can store, and the policy field of a head.

use super::codec::{Reader, invalid, put_usize};
use super::sealed;
use crate::error::SnapshotError;
use crate::error::{Error, Result};
use crate::policy::{AnyPolicy, EvictionPolicy, Full, H2O, Heavy, Recent, TieRule};

/// A policy a snapshot can store: the four built-in policies and
/// [`AnyPolicy`]. A snapshot records the policy as an [`AnyPolicy`]; a
/// snapshot of an `H2OCache` can be restored as a `Cache<T, AnyPolicy>` and
/// back, since both make the same decisions.
///
/// Sealed: implemented for the crate's policies only.
pub trait SnapshotPolicy: EvictionPolicy + sealed::Sealed {
    /// What the policy type accepts, for [`SnapshotError::Mismatch`](crate::SnapshotError::Mismatch).
    const EXPECTED: &'static str;
    /// The policy as the run-time enum.
    fn to_any(&self) -> AnyPolicy;
    /// The policy back from the run-time enum, if it is of this type.
    fn from_any(policy: AnyPolicy) -> Option<Self>;
}

/// Implements [`SnapshotPolicy`] for the built-in policy held by the
/// [`AnyPolicy`] variant of the same name.
macro_rules! variant {
    ($policy:ident, $expected:literal) => {
        impl SnapshotPolicy for $policy {
            const EXPECTED: &'static str = $expected;
            fn to_any(&self) -> AnyPolicy {
                AnyPolicy::$policy(*self)
            }
            fn from_any(policy: AnyPolicy) -> Option<Self> {
                if let AnyPolicy::$policy(p) = policy { Some(p) } else { None }
            }
        }
    };
}

variant!(Full, "a full policy");
variant!(Recent, "a recent policy");
variant!(Heavy, "a heavy policy");
variant!(H2O, "an h2o policy");

impl SnapshotPolicy for AnyPolicy {
    const EXPECTED: &'static str = "any policy";
    fn to_any(&self) -> AnyPolicy {
        *self
    }
    fn from_any(policy: AnyPolicy) -> Option<Self> {
        Some(policy)
    }
}

/// The snapshot's policy as a `P`, or [`SnapshotError::Mismatch`](crate::SnapshotError::Mismatch) if `P`
/// cannot hold it.
pub(super) fn restore<P: SnapshotPolicy>(policy: AnyPolicy) -> Result<P> {
    P::from_any(policy).ok_or_else(|| {
        let found = match policy {
            AnyPolicy::Full(_) => Full::EXPECTED,
            AnyPolicy::Recent(_) => Recent::EXPECTED,
            AnyPolicy::Heavy(_) => Heavy::EXPECTED,
            AnyPolicy::H2O(_) => H2O::EXPECTED,
        };
        Error::Snapshot(SnapshotError::Mismatch { expected: P::EXPECTED, found })
    })
}

/// Writes the policy: tag u8 (0 full, 1 recent, 2 heavy, 3 h2o), two u64
/// parameters, tie rule u8 (0 keep older, 1 keep newer).
pub(super) fn put_policy(out: &mut Vec<u8>, policy: &AnyPolicy) {
    let (tag, a, b, tie) = match policy {
        AnyPolicy::Full(p) => (0, p.budget(), 0, TieRule::default()),
        AnyPolicy::Recent(p) => (1, p.budget(), 0, TieRule::default()),
        AnyPolicy::Heavy(p) => (2, p.budget(), 0, p.tie_rule()),
        AnyPolicy::H2O(p) => (3, p.heavy(), p.recent(), p.tie_rule()),
    };
    out.push(tag);
    put_usize(out, a);
    put_usize(out, b);
    out.push(match tie {
        TieRule::KeepOlder => 0,
        TieRule::KeepNewer => 1,
    });
}

/// Reads a policy written by [`put_policy`]; a field the policy does not use
/// must hold its default (0, keep older).
pub(super) fn get_policy(r: &mut Reader<'_>) -> Result<AnyPolicy> {
    let tag = r.u8()?;
    let (a, b) = (r.usize()?, r.usize()?);
    let tie = match r.u8()? {
        0 => TieRule::KeepOlder,
        1 => TieRule::KeepNewer,
        _ => return Err(invalid("unknown tie rule")),
    };
    let bad = |_| invalid("policy parameters rejected by its constructor");
    let unused = || Err(invalid("unused policy field set"));
    Ok(match tag {
        0 | 1 if b != 0 || tie != TieRule::default() => return unused(),
        2 if b != 0 => return unused(),
        0 => AnyPolicy::Full(Full::new(a).map_err(bad)?),
        1 => AnyPolicy::Recent(Recent::new(a).map_err(bad)?),
        2 => AnyPolicy::Heavy(Heavy::new(a).map_err(bad)?.with_tie_rule(tie)),
        3 => AnyPolicy::H2O(H2O::new(a, b).map_err(bad)?.with_tie_rule(tie)),
        _ => return Err(invalid("unknown policy")),
    })
}
