//! What the engine decides for an event: isolate a host (how, for how long, with which holes) or
//! ask an operator to approve an isolation, with the rules involved and a structured "why".

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::Retrigger;
use crate::AllowSpec;

/// How an isolation ends (defined once, in `cordon_wire`, for the whole way to the kernel).
pub use cordon_wire::IsolationMode;

/// The traffic left open while a host is isolated.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Exclusions {
    pub allow: Vec<AllowSpec>,
    pub allow_processes: Vec<String>,
    pub allow_dns: bool,
    pub allow_dhcp: bool,
}

/// An isolation, decided or proposed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Isolation {
    pub mode: IsolationMode,
    /// How long it lasts; None for manual isolations.
    #[serde(with = "optional_seconds", rename = "duration_seconds")]
    pub duration: Option<Duration>,
    /// When it ends, epoch milliseconds. None for manual isolations and for proposals awaiting approval
    /// (their clock starts when approved).
    pub deadline_ms: Option<i64>,
    pub exclusions: Exclusions,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", content = "isolation", rename_all = "snake_case")]
pub enum Action {
    /// Isolate the host now (or change the deadline of its current isolation).
    Isolate(Isolation),
    /// Ask an operator to approve this isolation.
    RequestApproval(Isolation),
}

impl Action {
    #[must_use]
    pub fn isolation(&self) -> &Isolation {
        match self {
            Self::Isolate(isolation) | Self::RequestApproval(isolation) => isolation,
        }
    }

    /// `isolate` or `request_approval`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Isolate(_) => "isolate",
            Self::RequestApproval(_) => "request_approval",
        }
    }
}

/// One step of the reasoning behind a decision.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// The rule's condition held; these selections matched.
    Matched { rule: String, selections: Vec<String> },
    /// The rule's threshold was reached: `count` matches within `within`.
    ThresholdReached {
        rule: String,
        count: u32,
        #[serde(with = "seconds", rename = "within_seconds")]
        within: Duration,
    },
    /// This is the `isolation_number`th isolation of the host by the rule within its escalation window.
    Escalated {
        rule: String,
        isolation_number: u32,
        #[serde(with = "seconds", rename = "duration_seconds")]
        duration: Duration,
    },
    /// The host was still isolated by the rule; `on_retrigger` decided what happens.
    Retriggered { rule: String, on_retrigger: Retrigger },
    /// The rule's mode is `approval`.
    ApprovalRequired { rule: String },
    /// The host carries protected tags: never isolated without approval.
    Protected { tags: Vec<String> },
    /// The ceiling on automatic isolations was reached.
    CeilingReached {
        count: u32,
        #[serde(with = "seconds", rename = "within_seconds")]
        within: Duration,
    },
    /// The host's current isolation is stronger or lasts longer; it is kept.
    CurrentIsolationKept { mode: IsolationMode, deadline_ms: Option<i64> },
}

/// The kinds of [`Reason`], as named in `why:` of a test's expected decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonKind {
    Matched,
    ThresholdReached,
    Escalated,
    Retriggered,
    ApprovalRequired,
    Protected,
    CeilingReached,
    CurrentIsolationKept,
}

impl ReasonKind {
    pub(crate) const NAMES: &'static [(&'static str, ReasonKind)] = &[
        ("matched", Self::Matched),
        ("threshold_reached", Self::ThresholdReached),
        ("escalated", Self::Escalated),
        ("retriggered", Self::Retriggered),
        ("approval_required", Self::ApprovalRequired),
        ("protected", Self::Protected),
        ("ceiling_reached", Self::CeilingReached),
        ("current_isolation_kept", Self::CurrentIsolationKept),
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(_, kind)| *kind == self).map_or("", |(name, _)| name)
    }
}

impl Reason {
    #[must_use]
    pub fn kind(&self) -> ReasonKind {
        match self {
            Self::Matched { .. } => ReasonKind::Matched,
            Self::ThresholdReached { .. } => ReasonKind::ThresholdReached,
            Self::Escalated { .. } => ReasonKind::Escalated,
            Self::Retriggered { .. } => ReasonKind::Retriggered,
            Self::ApprovalRequired { .. } => ReasonKind::ApprovalRequired,
            Self::Protected { .. } => ReasonKind::Protected,
            Self::CeilingReached { .. } => ReasonKind::CeilingReached,
            Self::CurrentIsolationKept { .. } => ReasonKind::CurrentIsolationKept,
        }
    }
}

/// The engine's answer for one event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub host: String,
    pub event_id: String,
    #[serde(flatten)]
    pub action: Action,
    /// Every rule that fired on the event, in rule order.
    pub rules: Vec<String>,
    pub why: Vec<Reason>,
    /// For an isolation: who has put it in force, the rules that fired now and those behind the
    /// isolation it continues, each with the duration (ms) it applied; what the host's owner
    /// keeps and passes back to the next evaluation (see [`crate::HostIsolation`]).
    #[serde(skip)]
    pub isolated_by: BTreeMap<String, i64>,
}

mod seconds {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(duration.as_secs())
    }
}

mod optional_seconds {
    use std::time::Duration;

    #[expect(clippy::ref_option, reason = "serde's `with` passes a reference to the field")]
    pub fn serialize<S: serde::Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => serializer.serialize_some(&duration.as_secs()),
            None => serializer.serialize_none(),
        }
    }
}
