//! The three orders of a decode step (`docs/semantics.md §2`, which has the
//! same table).

use core::fmt;
use core::str::FromStr;

/// The order of insert, attend and evict in one decode step.
///
/// | order | sequence | attention covers | who uses it |
/// |---|---|---|---|
/// | [`InsertAttendEvict`](Self::InsertAttendEvict) (default) | write K/V, attend incl. self, evict | budget + 1 | the H2O authors' real-drop code |
/// | [`AttendInsertEvict`](Self::AttendInsertEvict) | attend over the resident tokens, write, evict | budget (without self) | H2O paper, Algorithm 1 |
/// | [`EvictInsertAttend`](Self::EvictInsertAttend) | evict to budget − 1, write, attend incl. self | exactly budget | models trained with a sliding window |
///
/// In every order the returned output is the step's attention output, and
/// the `recent` newest tokens protected by a policy include the one this
/// step inserts. In evict-insert-attend order the eviction comes first, so
/// it ranks by the scores of earlier steps only, and a window of `W` tokens
/// ([`RecentOnly`](crate::RecentOnly) of budget `W`) attends over exactly `W`
/// tokens, as a model trained with a sliding window of `W` expects.
///
/// Parses from and displays as `insert-attend-evict`, `attend-insert-evict`
/// and `evict-insert-attend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StepOrder {
    /// Insert, attend (the query sees itself), evict: [`KvCache::step`](crate::KvCache::step).
    #[default]
    InsertAttendEvict,
    /// Attend over the tokens cached before this one, insert, evict.
    AttendInsertEvict,
    /// Evict down to `budget − 1` (the window's oldest token leaves as the
    /// new one enters), insert, attend over exactly `budget` tokens.
    EvictInsertAttend,
}

impl StepOrder {
    /// All three, default first.
    pub const ALL: [StepOrder; 3] =
        [StepOrder::InsertAttendEvict, StepOrder::AttendInsertEvict, StepOrder::EvictInsertAttend];

    /// The kebab-case name (`"insert-attend-evict"`, …).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            StepOrder::InsertAttendEvict => "insert-attend-evict",
            StepOrder::AttendInsertEvict => "attend-insert-evict",
            StepOrder::EvictInsertAttend => "evict-insert-attend",
        }
    }
}

impl fmt::Display for StepOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown step-order name; lists the known ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownName {
    /// What was being parsed (`"step order"`, `"policy"`).
    pub what: &'static str,
    /// The name given.
    pub got: String,
    /// The names accepted.
    pub known: &'static [&'static str],
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} {:?}; expected one of: {}",
            self.what,
            self.got,
            self.known.join(", ")
        )
    }
}

impl std::error::Error for UnknownName {}

impl FromStr for StepOrder {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, UnknownName> {
        StepOrder::ALL.into_iter().find(|o| o.name() == s).ok_or_else(|| UnknownName {
            what: "step order",
            got: s.to_owned(),
            known: &["insert-attend-evict", "attend-insert-evict", "evict-insert-attend"],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for o in StepOrder::ALL {
            assert_eq!(o.name().parse::<StepOrder>(), Ok(o));
            assert_eq!(o.to_string(), o.name());
        }
        let err = "document".parse::<StepOrder>().unwrap_err();
        assert!(err.to_string().contains("evict-insert-attend"), "{err}");
    }
}
