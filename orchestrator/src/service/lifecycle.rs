//! The host life cycle as pure functions: each input (a rules decision, an operator's request, a
//! deadline, an agent's report, the passing of time) changes a host's record and may call for a
//! command to its agent and an audit entry. No I/O and no clock: time is an argument.
//!
//! ```text
//! not_isolated ─► pending_approval ─► isolating ─► isolated ─► releasing ─► released
//!                      │  (deny) ▲         ▲  (operator, rules, approval)      │
//!                      └─────────┘         └───────────────────────────────────┘
//! ```
//! Every command raises the host's generation by one; an agent applies only commands newer than
//! the last it applied, so a command delivered twice never applies twice.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::profiles::{ProfileInForce, ProfileRef};

pub use cordon_wire::ISOLATED_TAG;

/// Where a host is in its isolation life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    NotIsolated,
    /// A rule asked for an isolation that an operator must approve.
    PendingApproval,
    /// An isolate command was issued; the agent has not confirmed it yet.
    Isolating,
    /// The agent confirmed the isolation.
    Isolated,
    /// A release was issued; the agent has not confirmed it yet.
    Releasing,
    Released,
}

impl HostState {
    pub const ALL: [HostState; 6] = [
        HostState::NotIsolated,
        HostState::PendingApproval,
        HostState::Isolating,
        HostState::Isolated,
        HostState::Releasing,
        HostState::Released,
    ];

    /// `snake_case`, as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            HostState::NotIsolated => "not_isolated",
            HostState::PendingApproval => "pending_approval",
            HostState::Isolating => "isolating",
            HostState::Isolated => "isolated",
            HostState::Releasing => "releasing",
            HostState::Released => "released",
        }
    }

    /// Isolated, or on its way in or out of isolation: the host may be cut off.
    pub fn may_be_isolated(self) -> bool {
        matches!(self, HostState::Isolating | HostState::Isolated | HostState::Releasing)
    }

    /// Isolating or isolated: cordon wants the isolation in force (none is being lifted).
    pub fn isolation_in_force(self) -> bool {
        matches!(self, HostState::Isolating | HostState::Isolated)
    }
}

/// What an isolation leaves open and how long it lasts: what an operator asks for, what a rule
/// proposes, and what an isolate command carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolationPlan {
    /// How long the isolation lasts; absent: manual (until an operator releases the host).
    pub duration_seconds: Option<u64>,
    /// Exclusion SPECs, `DIR,PROTO,CIDR[,PORTS]`.
    #[serde(default)]
    pub exclusions: Vec<String>,
    /// Processes (by name) whose traffic is left alone.
    #[serde(default)]
    pub allowed_processes: Vec<String>,
    #[serde(default)]
    pub allow_dns: bool,
    #[serde(default)]
    pub allow_dhcp: bool,
}

impl IsolationPlan {
    /// The plan of a rules engine isolation. The wire carries whole seconds: a fraction rounds
    /// up, so the agent's own deadline (its backstop) never falls before the service's.
    pub fn from_rules(isolation: &rules::Isolation) -> IsolationPlan {
        IsolationPlan {
            duration_seconds: isolation
                .duration
                .map(|d| u64::try_from(d.as_millis().div_ceil(1_000)).unwrap_or(u64::MAX).max(1)),
            exclusions: isolation.exclusions.allow.iter().map(ToString::to_string).collect(),
            allowed_processes: isolation.exclusions.allow_processes.clone(),
            allow_dns: isolation.exclusions.allow_dns,
            allow_dhcp: isolation.exclusions.allow_dhcp,
        }
    }

    pub fn mode(&self) -> cordon_wire::IsolationMode {
        if self.duration_seconds.is_some() {
            cordon_wire::IsolationMode::Automatic
        } else {
            cordon_wire::IsolationMode::Manual
        }
    }

    /// Manual beats automatic; a longer isolation beats a shorter one.
    fn stronger_than(&self, other: &IsolationPlan) -> bool {
        match (self.duration_seconds, other.duration_seconds) {
            (None, Some(_)) => true,
            (Some(mine), Some(theirs)) => mine > theirs,
            _ => false,
        }
    }

    fn command(&self, reason: String) -> cordon_wire::Action {
        cordon_wire::Action::Isolate {
            duration_seconds: self.duration_seconds,
            exclusions: self.exclusions.clone(),
            allowed_processes: self.allowed_processes.clone(),
            allow_dns: self.allow_dns,
            allow_dhcp: self.allow_dhcp,
            reason,
        }
    }
}

/// An isolation a rule proposed, waiting for an operator's approval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub plan: IsolationPlan,
    pub rules: Vec<String>,
    pub event_id: String,
    pub requested_at_ms: i64,
    /// How many detections asked for it (repeated requests merge into one proposal).
    pub requests: u32,
    pub why: String,
}

/// Everything the orchestrator knows about one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host: String,
    pub state: HostState,
    /// The generation of the last command issued to this host.
    pub generation: u64,
    /// While isolated.
    pub mode: Option<cordon_wire::IsolationMode>,
    pub expires_at_ms: Option<i64>,
    /// The rules (or `operator NAME`) behind the current or last isolation.
    pub rules: Vec<String>,
    /// Who has put the current isolation in force (rules, or `operator NAME`), each with the
    /// duration (ms) it last applied (0: none of its own): what a rule matching the host again
    /// is judged by (see [`HostRecord::for_rules`]). Empty unless isolating or isolated.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub isolated_by: BTreeMap<String, i64>,
    pub event_id: Option<String>,
    /// What the host is tagged with: operators' and agent's tags, plus [`ISOLATED_TAG`] while
    /// it may be isolated. Sorted, no duplicates.
    pub tags: Vec<String>,
    #[serde(default)]
    pub operator_tags: Vec<String>,
    #[serde(default)]
    pub agent_tags: Vec<String>,
    #[serde(default)]
    pub pending: Option<Proposal>,
    /// The last command issued (unsigned): the host's desired state. Resent until its agent
    /// answers, and issued again if the agent turns out to be ahead of cordon.
    #[serde(default)]
    pub last_command: Option<cordon_wire::Action>,
    /// When the last command was (re)sent; `None` once its agent answered it.
    #[serde(default)]
    pub command_issued_at_ms: Option<i64>,
    /// How many times the last command was sent again for want of an answer.
    #[serde(default)]
    pub resends: u32,
    pub last_status: Option<cordon_wire::Status>,
    /// When the agent was last heard from.
    #[serde(default)]
    pub last_seen_ms: Option<i64>,
    /// The agent has been silent longer than allowed.
    #[serde(default)]
    pub agent_stale: bool,
    /// The last refusal or failure an agent reported for this host's commands.
    #[serde(default)]
    pub last_error: Option<String>,
    /// What the rule or operator behind the current isolation asked for, before its profile was
    /// added: the profile can change under it, and the isolation is then this plus the new one.
    #[serde(default)]
    pub requested: Option<IsolationPlan>,
    /// The profile under the current isolation, and its policy version.
    #[serde(default)]
    pub profile: Option<ProfileRef>,
    /// When cordon consumed the detection behind the current isolation (epoch ms), for the
    /// detection-to-enforced latency; none for operators' isolations.
    #[serde(default)]
    pub detected_at_ms: Option<i64>,
    /// Set when the agent reported the host no longer isolated though no command released it
    /// (a local `cordon-enforcer release`, vanished pins), or reported tampering it undid
    /// (detached links attached again): kept until an operator isolates or releases the host.
    #[serde(default)]
    pub tampered: Option<Tampering>,
    pub updated_at_ms: i64,
}

/// What the fleet list shows of a host: a few fields of its record, kept in memory by the store
/// for the console (decoding every record for each look at the fleet costs ~8 µs a host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSummary {
    pub host: String,
    pub state: HostState,
    pub mode: Option<cordon_wire::IsolationMode>,
    pub expires_at_ms: Option<i64>,
    pub tags: Vec<String>,
    pub last_seen_ms: Option<i64>,
    pub agent_stale: bool,
    pub tampered: bool,
    pub pending: bool,
    /// The name of the profile under the current (or last) isolation.
    pub profile: Option<String>,
}

/// What the rules engine is told of a host: the tags that may protect it (the operators'; never
/// its agent's) and the isolation in force. Kept in memory by the store for every known host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostForRules {
    pub operator_tags: Vec<String>,
    pub isolation: Option<rules::HostIsolation>,
}

impl HostRecord {
    /// What the rules engine is told of this host. An isolation is in force while it is being
    /// put in place or holds; one being lifted is not (the next match isolates anew). Its mode
    /// is what cordon's own deadline makes it, never what an agent reports (`mode` shows the
    /// agent's word, and a forged report must not make a manual isolation look timed or over):
    /// timed until `expires_at_ms`, or else held until someone releases it.
    pub fn for_rules(&self) -> HostForRules {
        let isolation = self.state.isolation_in_force().then(|| {
            let mode = match self.expires_at_ms {
                Some(_) => cordon_wire::IsolationMode::Automatic,
                None => cordon_wire::IsolationMode::Manual,
            };
            rules::HostIsolation { mode, deadline_ms: self.expires_at_ms, isolated_by: self.isolated_by.clone() }
        });
        HostForRules { operator_tags: self.operator_tags.clone(), isolation }
    }

    /// The deadline of the isolation in force, if it is timed: what the tick lifts.
    pub fn deadline_in_force(&self) -> Option<i64> {
        self.expires_at_ms.filter(|_| self.state.isolation_in_force())
    }

    /// When the last command was sent, while it awaits its agent's answer (the host isolating or
    /// releasing): what [`resend_due`] may send again.
    pub fn awaiting_answer_since(&self) -> Option<i64> {
        self.command_issued_at_ms.filter(|_| matches!(self.state, HostState::Isolating | HostState::Releasing))
    }

    /// When its agent was last heard from, unless it is marked stale already: what
    /// [`check_stale`] may mark.
    pub fn heard_from_unless_stale(&self) -> Option<i64> {
        self.last_seen_ms.filter(|_| !self.agent_stale)
    }

    pub fn summary(&self) -> HostSummary {
        HostSummary {
            host: self.host.clone(),
            state: self.state,
            mode: self.mode,
            expires_at_ms: self.expires_at_ms,
            tags: self.tags.clone(),
            last_seen_ms: self.last_seen_ms,
            agent_stale: self.agent_stale,
            tampered: self.tampered.is_some(),
            pending: self.pending.is_some(),
            profile: self.profile.as_ref().map(|p| p.name.clone()),
        }
    }
}

/// An isolation undone (or partly undone) on the host, not by cordon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tampering {
    pub at_ms: i64,
    /// The generation of the isolation that was undone.
    pub generation: u64,
    /// What was done to the isolation, as cordon learned it.
    #[serde(default)]
    pub what: String,
    /// What cordon did about it ([`OnTamper`]).
    pub response: String,
}

/// What cordon does when an agent reports its host no longer isolated though no command
/// released it (`[agents] on_tamper`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTamper {
    /// Isolate manual isolations again; for timed ones raise the alarm only.
    #[default]
    ReisolateManual,
    /// Isolate every tampered host again (a timed one for what is left of its time).
    ReisolateAll,
    /// Raise the alarm only: the host shows released, and tampered.
    AlertOnly,
}

impl OnTamper {
    pub fn name(self) -> &'static str {
        match self {
            OnTamper::ReisolateManual => "reisolate_manual",
            OnTamper::ReisolateAll => "reisolate_all",
            OnTamper::AlertOnly => "alert_only",
        }
    }
}

/// How close to its deadline an agent may lift a timed isolation on its own without it counting
/// as tampering (the agent's kernel deadline is rounded up, so it never lifts first; this is for
/// clocks and delivery).
pub const DEADLINE_SLACK_MS: i64 = 30_000;

/// One line of a host's audit trail: a transition, or a request that changed nothing visible.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: i64,
    pub host: String,
    pub from: HostState,
    pub to: HostState,
    /// `rules ID,...`, `operator NAME (ADDRESS)`, `scheduler` or `agent`.
    pub by: String,
    pub event_id: Option<String>,
    pub generation: u64,
    pub why: String,
    /// What a shadow rule would have done: recorded, nothing done.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

/// What the service must do after a step: send a command (with the record's new generation)
/// and record an audit entry.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub command: Option<cordon_wire::Action>,
    pub audit: Option<AuditEntry>,
    /// The command an agent's report answered, when the report moved the host (for the
    /// transition's log line, which names the command behind it).
    pub answered: Option<String>,
}

/// Why an operator's request cannot be carried out; the API answers with it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no approval is pending for host {0}")]
    NothingPending(String),
    #[error("host {host} is pending approval: approve or deny it instead")]
    PendingApproval { host: String },
    #[error("the tag {0:?} is managed by cordon and cannot be set or removed by hand")]
    ReservedTag(String),
    #[error("a tag must be 1 to 128 printable characters, got {0:?}")]
    BadTag(String),
    #[error(
        "the isolation policy in force is version {current}, not {expected}: another change came first; see what \
         it changed (cordon policy diff {expected}) and make yours again from version {current}"
    )]
    PolicyChanged { expected: u64, current: u64 },
    #[error("host {0} has no timed isolation in force to extend (isolate it again instead)")]
    NothingToExtend(String),
    #[error(
        "the filter now selects other hosts ({now}) than the {expected} you saw: look again before acting on them all"
    )]
    BulkChanged { expected: usize, now: usize },
    #[error(
        "isolating {hosts} hosts at once is more than the fleet ceiling allows (policy.yaml max_automatic: {count} \
         within {within}); narrow the filter"
    )]
    OverCeiling { hosts: usize, count: u32, within: String },
}

impl HostRecord {
    pub fn new(host: &str, now_ms: i64) -> HostRecord {
        HostRecord {
            host: host.to_owned(),
            state: HostState::NotIsolated,
            generation: 0,
            mode: None,
            expires_at_ms: None,
            rules: Vec::new(),
            isolated_by: BTreeMap::new(),
            event_id: None,
            tags: Vec::new(),
            operator_tags: Vec::new(),
            agent_tags: Vec::new(),
            pending: None,
            last_command: None,
            command_issued_at_ms: None,
            resends: 0,
            last_status: None,
            last_seen_ms: None,
            agent_stale: false,
            last_error: None,
            requested: None,
            profile: None,
            detected_at_ms: None,
            tampered: None,
            updated_at_ms: now_ms,
        }
    }

    /// The id of the command of the record's generation: `HOST-GENERATION`.
    pub fn command_id(&self) -> String {
        format!("{}-{}", self.host, self.generation)
    }

    /// The last command issued can never be sent (`reason`): the record shows it, and it is not
    /// resent (an operator decides what to do).
    pub fn command_not_sent(&mut self, command_id: &str, reason: &str) {
        self.last_error = Some(format!("command {command_id}: {reason}"));
        self.command_issued_at_ms = None;
    }

    /// Recomputes `tags` from the operators', the agent's and the state.
    fn retag(&mut self) {
        let mut tags: Vec<String> = self.operator_tags.iter().chain(&self.agent_tags).cloned().collect();
        tags.retain(|tag| tag != ISOLATED_TAG);
        if self.state.may_be_isolated() {
            tags.push(ISOLATED_TAG.to_owned());
        }
        tags.sort();
        tags.dedup();
        self.tags = tags;
    }

    /// Moves to `to`, issuing `command` (if any) as the next generation; returns the effects.
    fn step(&mut self, to: HostState, command: Option<cordon_wire::Action>, cause: Cause<'_>, now: i64) -> Effects {
        let from = self.state;
        self.state = to;
        if !to.isolation_in_force() {
            self.isolated_by.clear();
        }
        let mut command = command;
        let Cause { by, event_id, mut why } = cause;
        if let Some(issued) = &command {
            if let Some(next) = self.generation.checked_add(1) {
                self.generation = next;
                self.last_command = Some(issued.clone());
                self.command_issued_at_ms = Some(now);
                self.resends = 0;
                self.last_error = None;
            } else {
                // Unreachable through cordon's own commands (see MAX_GENERATION_LEAP); said, never wrapped.
                let failure = format!("no command issued: generation {} is the largest there is", self.generation);
                why = format!("{why} ({failure})");
                self.last_error = Some(failure);
                command = None;
            }
        }
        self.updated_at_ms = now;
        self.retag();
        let audit = AuditEntry {
            at_ms: now,
            host: self.host.clone(),
            from,
            to,
            by: by.to_owned(),
            event_id: event_id.map(str::to_owned),
            generation: self.generation,
            why,
            shadow: false,
        };
        Effects { command, audit: Some(audit), answered: None }
    }

    /// Isolates the host as `requested` with `profile` under it.
    fn isolate(
        &mut self,
        requested: &IsolationPlan,
        profile: ProfileInForce<'_>,
        cause: Cause<'_>,
        now: i64,
    ) -> Effects {
        let plan = profile.profile.under(requested);
        self.requested = Some(requested.clone());
        self.profile = Some(profile.reference());
        self.mode = Some(plan.mode());
        self.expires_at_ms = plan.duration_seconds.map(|seconds| {
            now.saturating_add(i64::try_from(seconds).unwrap_or(i64::MAX).saturating_mul(1_000))
        });
        self.event_id = cause.event_id.map(str::to_owned);
        // Both set again by `on_decision`: no detection is behind an operator's isolation, and
        // the operator alone is behind it.
        self.detected_at_ms = None;
        self.isolated_by = BTreeMap::from([(cause.by.to_owned(), 0)]);
        let command = plan.command(format!("{}: {}", cause.by, cause.why));
        self.step(HostState::Isolating, Some(command), cause, now)
    }

    fn release(&mut self, by: &str, why: String, now: i64) -> Effects {
        self.expires_at_ms = None;
        let command = cordon_wire::Action::Release { reason: format!("{by}: {why}") };
        self.step(HostState::Releasing, Some(command), Cause::new(by, why), now)
    }
}

/// Who or what moves a host, for which detection, and why: what the move's audit line says.
struct Cause<'a> {
    by: &'a str,
    event_id: Option<&'a str>,
    why: String,
}

impl<'a> Cause<'a> {
    /// A move no detection is behind.
    fn new(by: &'a str, why: String) -> Cause<'a> {
        Cause { by, event_id: None, why }
    }
}

/// A rules engine decision for this host.
///
/// `consumed_at_ms`: when cordon consumed the detection (cordon's clock), kept on a host it starts
/// isolating for the detection-to-enforced latency.
pub fn on_decision(
    record: &mut HostRecord,
    decision: &rules::Decision,
    profile: ProfileInForce<'_>,
    consumed_at_ms: i64,
    now: i64,
) -> Effects {
    let by = format!("rules {}", decision.rules.join(","));
    let why: Vec<String> = decision.why.iter().map(|reason| format!("{reason:?}")).collect();
    let why = why.join("; ");
    match &decision.action {
        rules::Action::Isolate(isolation) => {
            // A redelivered event (after a crash before its offset was committed) must not
            // issue the same isolation twice.
            if record.state.may_be_isolated() && record.event_id.as_deref() == Some(&decision.event_id) {
                return Effects::default();
            }
            record.rules.clone_from(&decision.rules);
            record.pending = None;
            // An isolation still under way keeps the detection that began it.
            let detected_at_ms =
                if record.state == HostState::Isolating { record.detected_at_ms } else { Some(consumed_at_ms) };
            let plan = IsolationPlan::from_rules(isolation);
            let cause = Cause { by: &by, event_id: Some(&decision.event_id), why };
            let effects = record.isolate(&plan, profile, cause, now);
            record.detected_at_ms = detected_at_ms;
            record.isolated_by.clone_from(&decision.isolated_by);
            // The engine computed the deadline from the event; keep it exactly.
            if isolation.deadline_ms.is_some() {
                record.expires_at_ms = isolation.deadline_ms;
            }
            effects
        }
        rules::Action::RequestApproval(isolation) => {
            let plan = IsolationPlan::from_rules(isolation);
            let proposal = match record.pending.take() {
                Some(mut pending) => {
                    if plan.stronger_than(&pending.plan) {
                        pending.plan = plan;
                    }
                    for rule in &decision.rules {
                        if !pending.rules.contains(rule) {
                            pending.rules.push(rule.clone());
                        }
                    }
                    pending.requests = pending.requests.saturating_add(1);
                    pending
                }
                None => Proposal {
                    plan,
                    rules: decision.rules.clone(),
                    event_id: decision.event_id.clone(),
                    requested_at_ms: now,
                    requests: 1,
                    why: why.clone(),
                },
            };
            record.pending = Some(proposal);
            let to = if record.state.may_be_isolated() { record.state } else { HostState::PendingApproval };
            let why = format!("approval requested: {why}");
            record.step(to, None, Cause { by: &by, event_id: Some(&decision.event_id), why }, now)
        }
    }
}

/// An operator isolates the host (replacing any isolation in force).
pub fn operator_isolate(
    record: &mut HostRecord,
    plan: &IsolationPlan,
    profile: ProfileInForce<'_>,
    reason: &str,
    operator: &str,
    now: i64,
) -> Effects {
    record.pending = None;
    record.rules = vec![operator.to_owned()];
    // An operator acting on the host has seen it: the tampering alarm is answered.
    record.tampered = None;
    record.isolate(plan, profile, Cause::new(operator, reason.to_owned()), now)
}

/// An operator releases the host. A release is sent even when cordon believes the host is not
/// isolated: its agent may have been isolated locally, and a release it does not need is harmless.
pub fn operator_release(
    record: &mut HostRecord,
    reason: &str,
    operator: &str,
    now: i64,
) -> Result<Effects, Refused> {
    if record.state == HostState::PendingApproval {
        return Err(Refused::PendingApproval { host: record.host.clone() });
    }
    record.tampered = None;
    Ok(record.release(operator, reason.to_owned(), now))
}

/// An operator gives a timed isolation in force `seconds` more: the same isolation with a later
/// deadline, sent as a new generation (the agent moves its kernel deadline live).
pub fn extend(
    record: &mut HostRecord,
    seconds: u64,
    reason: &str,
    operator: &str,
    now: i64,
) -> Result<Effects, Refused> {
    let nothing = || Refused::NothingToExtend(record.host.clone());
    let deadline = match (record.state, record.expires_at_ms, &record.last_command) {
        (HostState::Isolating | HostState::Isolated, Some(deadline), Some(cordon_wire::Action::Isolate { .. }))
            if deadline > now =>
        {
            deadline
        }
        _ => return Err(nothing()),
    };
    let later = deadline.saturating_add(i64::try_from(seconds).unwrap_or(i64::MAX).saturating_mul(1_000));
    record.expires_at_ms = Some(later);
    let Some(command) = isolation_again(record, now) else {
        record.expires_at_ms = Some(deadline);
        return Err(nothing());
    };
    let why = format!(
        "extended by {} to {}: {reason}",
        super::profiles::format_seconds(seconds),
        crate::api::rfc3339(later)
    );
    let command = match command {
        cordon_wire::Action::Isolate { duration_seconds, exclusions, allowed_processes, allow_dns, allow_dhcp, .. } => {
            cordon_wire::Action::Isolate {
                duration_seconds,
                exclusions,
                allowed_processes,
                allow_dns,
                allow_dhcp,
                reason: format!("{operator}: {why}"),
            }
        }
        release @ cordon_wire::Action::Release { .. } => release,
    };
    // `isolated_by` is kept: the rules behind the isolation still are, and a rule matching again
    // is judged against the later deadline.
    Ok(record.step(HostState::Isolating, Some(command), Cause::new(operator, why), now))
}

/// An operator approves the pending proposal: the isolation starts now (its clock too).
pub fn approve(
    record: &mut HostRecord,
    profile: ProfileInForce<'_>,
    reason: &str,
    operator: &str,
    now: i64,
) -> Result<Effects, Refused> {
    let Some(proposal) = record.pending.take() else {
        return Err(Refused::NothingPending(record.host.clone()));
    };
    record.rules.clone_from(&proposal.rules);
    let why = format!(
        "approved the isolation requested by rules {} (event {}, {} request(s)): {reason}",
        proposal.rules.join(","),
        proposal.event_id,
        proposal.requests
    );
    Ok(record.isolate(&proposal.plan, profile, Cause { by: operator, event_id: Some(&proposal.event_id), why }, now))
}

/// An operator denies the pending proposal: the host stays as it was.
pub fn deny(record: &mut HostRecord, reason: &str, operator: &str, now: i64) -> Result<Effects, Refused> {
    let Some(proposal) = record.pending.take() else {
        return Err(Refused::NothingPending(record.host.clone()));
    };
    let to = if record.state == HostState::PendingApproval { HostState::NotIsolated } else { record.state };
    let why = format!("denied the isolation requested by rules {}: {reason}", proposal.rules.join(","));
    Ok(record.step(to, None, Cause { by: operator, event_id: Some(&proposal.event_id), why }, now))
}

/// A tag as operators set it: 1 to 128 printable characters, not cordon's own.
pub fn check_tag(tag: &str) -> Result<(), Refused> {
    if tag == ISOLATED_TAG {
        return Err(Refused::ReservedTag(tag.to_owned()));
    }
    if tag.is_empty() || tag.chars().count() > 128 || tag.chars().any(char::is_control) {
        // A hostile tag may be long: the message quotes its start.
        return Err(Refused::BadTag(tag.chars().take(64).collect()));
    }
    Ok(())
}

/// An operator adds and removes tags.
pub fn set_tags(
    record: &mut HostRecord,
    add: &[String],
    remove: &[String],
    operator: &str,
    now: i64,
) -> Result<Effects, Refused> {
    for tag in add.iter().chain(remove) {
        check_tag(tag)?;
    }
    record.operator_tags.retain(|tag| !remove.contains(tag));
    for tag in add {
        if !record.operator_tags.contains(tag) {
            record.operator_tags.push(tag.clone());
        }
    }
    let why = format!("tags: added [{}], removed [{}]", add.join(", "), remove.join(", "));
    Ok(record.step(record.state, None, Cause::new(operator, why), now))
}

/// Something happened to the host that changes no state but belongs in its trail.
pub fn note(record: &mut HostRecord, by: &str, why: String, now: i64) -> Effects {
    record.step(record.state, None, Cause::new(by, why), now)
}

/// The host's profile changed (a new policy version, or the operators' tags chose another
/// profile): an isolation in force gets what the new profile leaves open, live. It stays the
/// same isolation with its deadline; the command is a new generation, which the agent applies
/// to the programs in force, adding before it removes. Nothing is issued when what the agent
/// enforces does not change, nor for a timed isolation whose deadline has passed (the tick lifts
/// it).
pub fn apply_profile(record: &mut HostRecord, profile: ProfileInForce<'_>, by: &str, now: i64) -> Effects {
    let reference = profile.reference();
    if record.profile.as_ref() == Some(&reference) {
        return Effects::default();
    }
    let Some(requested) = isolation_asked(record) else { return Effects::default() };
    let Some(cordon_wire::Action::Isolate { exclusions, allowed_processes, allow_dns, allow_dhcp, .. }) =
        record.last_command.clone()
    else {
        return Effects::default();
    };
    let plan = profile.profile.under(&requested);
    let unchanged = plan.exclusions == exclusions
        && plan.allowed_processes == allowed_processes
        && plan.allow_dns == allow_dns
        && plan.allow_dhcp == allow_dhcp;
    let remaining = isolation_again(record, now);
    record.requested = Some(requested);
    record.profile = Some(reference);
    let Some(cordon_wire::Action::Isolate { duration_seconds, .. }) = remaining.filter(|_| !unchanged) else {
        record.updated_at_ms = now;
        return Effects::default();
    };
    let mut changes: Vec<String> = Vec::new();
    for (what, before, after) in [
        ("exclusion", &exclusions, &plan.exclusions),
        ("process", &allowed_processes, &plan.allowed_processes),
    ] {
        changes.extend(after.iter().filter(|item| !before.contains(item)).map(|item| format!("+{what} {item}")));
        changes.extend(before.iter().filter(|item| !after.contains(item)).map(|item| format!("-{what} {item}")));
    }
    for (what, before, after) in [("dns", allow_dns, plan.allow_dns), ("dhcp", allow_dhcp, plan.allow_dhcp)] {
        if before != after {
            changes.push(format!("{what} {}", if after { "open" } else { "closed" }));
        }
    }
    let why = format!(
        "profile {} (policy version {}) applied live, deadline kept: {}",
        profile.profile.name,
        profile.version,
        changes.join(", ")
    );
    let command = IsolationPlan { duration_seconds, ..plan }.command(format!("{by}: {why}"));
    record.step(HostState::Isolating, Some(command), Cause::new(by, why), now)
}

/// What the rule or operator behind the isolation in force asked for (before its profile), when
/// one is in force (isolating or isolated): what a new profile goes under.
pub fn isolation_asked(record: &HostRecord) -> Option<IsolationPlan> {
    if !record.state.isolation_in_force() {
        return None;
    }
    match &record.last_command {
        Some(cordon_wire::Action::Isolate { duration_seconds, exclusions, allowed_processes, allow_dns, allow_dhcp, .. }) => {
            // An isolation from before profiles: all of it was asked for.
            Some(record.requested.clone().unwrap_or_else(|| IsolationPlan {
                duration_seconds: *duration_seconds,
                exclusions: exclusions.clone(),
                allowed_processes: allowed_processes.clone(),
                allow_dns: *allow_dns,
                allow_dhcp: *allow_dhcp,
            }))
        }
        _ => None,
    }
}

/// What a shadow rule's decision would have done to the host, as a line of its trail: recorded,
/// nothing changed (`record`: the host as cordon knows it, if it does). `fits`: what keeps the
/// isolation from an agent's kernel tables, with the host's profile.
pub fn shadow_note(record: Option<&HostRecord>, decision: &rules::Decision, fits: &[String], now: i64) -> AuditEntry {
    let state = record.map_or(HostState::NotIsolated, |r| r.state);
    let isolation = decision.action.isolation();
    let length = match isolation.duration {
        Some(duration) => format!("automatic {}", rules::format_duration(duration)),
        None => "manual".to_owned(),
    };
    let reasons: Vec<String> = decision.why.iter().map(|reason| format!("{reason:?}")).collect();
    let mut why = format!("SHADOW {} {length}: {}", decision.action.name(), reasons.join("; "));
    if !fits.is_empty() {
        why = format!("{why}; it would NOT fit the agent's kernel tables: {}", fits.join("; "));
    }
    AuditEntry {
        at_ms: now,
        host: decision.host.clone(),
        from: state,
        to: state,
        by: format!("rules {} (shadow)", decision.rules.join(",")),
        event_id: Some(decision.event_id.clone()),
        generation: record.map_or(0, |r| r.generation),
        why,
        shadow: true,
    }
}

/// The host's automatic isolation reached its deadline.
pub fn deadline_reached(record: &mut HostRecord, now: i64) -> Effects {
    record.release("scheduler", "deadline reached".to_owned(), now)
}

/// An agent ahead of cordon by more than this many generations is not believed: cordon issues
/// one generation per command, so no agent gets there, and a report claiming it would otherwise
/// push the host's generation towards the end of its range.
pub const MAX_GENERATION_LEAP: u64 = 1 << 32;

/// An agent's report about its host.
///
/// A report answers the host's last command when the agent's generation has reached it. An agent
/// *ahead* of cordon (cordon's state restored from an older copy, or a new state directory) has
/// refused, or will refuse, every command cordon issues as stale: cordon takes the agent's
/// generation and, when the agent's state is not the host's desired state (or a command is still
/// unanswered), issues the desired state again at the agent's generation + 1. A refusal never
/// counts as the answer to another state than the one it refused.
///
/// A report that the host is not isolated at the generation of an isolation that no command has
/// released, before its deadline, is tampering: see [`OnTamper`].
pub fn on_status(record: &mut HostRecord, status: &cordon_wire::Status, now: i64, on_tamper: OnTamper) -> Effects {
    let mut effects = status_effects(record, status, now, on_tamper);
    if effects.audit.is_some() {
        effects.answered.clone_from(&status.command_id);
    }
    effects
}

/// [`on_status`] but for the command it answered.
fn status_effects(record: &mut HostRecord, status: &cordon_wire::Status, now: i64, on_tamper: OnTamper) -> Effects {
    let was_stale = record.agent_stale;
    record.last_seen_ms = Some(now);
    record.agent_stale = false;
    record.agent_tags = status.tags.iter().filter(|tag| *tag != ISOLATED_TAG).cloned().collect();
    let ahead_by = status.generation.saturating_sub(record.generation);
    if ahead_by > MAX_GENERATION_LEAP {
        let failure = format!(
            "agent reported generation {}, {ahead_by} ahead of cordon's {}: not believed (cordon issues one per \
             command)",
            status.generation, record.generation
        );
        record.last_error = Some(failure.clone());
        return record.step(record.state, None, Cause::new("agent", failure), now);
    }
    let caught_up = ahead_by > 0;
    if caught_up {
        record.generation = status.generation;
        if let Some(effects) = reissue_desired_state(record, status, now) {
            record.last_status = Some(status.clone());
            return effects;
        }
    }
    let answers_last_command = status.generation >= record.generation;
    if answers_last_command && is_tampering(record, status, now) {
        record.last_status = Some(status.clone());
        record.command_issued_at_ms = None;
        return tampered(record, status, on_tamper, now);
    }
    let repaired = answers_last_command.then(|| mark_repaired_tampering(record, status, now)).flatten();
    let failure = status
        .refusal
        .map(|refusal| refusal.to_string())
        .or_else(|| status.error.clone())
        .filter(|_| status.kind == cordon_wire::StatusKind::Refused)
        // A resent command the agent had already applied: an answer, not a failure.
        .filter(|_| !(answers_last_command && status.refusal == Some(cordon_wire::Refusal::StaleGeneration)));
    if let Some(failure) = &failure {
        record.last_error =
            Some(format!("command {}: {failure}", status.command_id.as_deref().unwrap_or("(no command id)")));
    }
    let to = if answers_last_command {
        match (status.isolated, record.state) {
            (true, HostState::PendingApproval) => HostState::PendingApproval,
            (true, _) => HostState::Isolated,
            (false, state) if state.may_be_isolated() => HostState::Released,
            (false, state) => state,
        }
    } else {
        record.state
    };
    if to == HostState::Isolated && answers_last_command {
        record.mode = status.mode;
        if status.mode == Some(cordon_wire::IsolationMode::Manual) {
            record.expires_at_ms = None;
        }
    }
    if !status.isolated && answers_last_command {
        record.expires_at_ms = None;
        record.mode = None;
    }
    if answers_last_command {
        record.command_issued_at_ms = None;
    }
    record.last_status = Some(status.clone());
    let mut effects = if to == record.state {
        record.updated_at_ms = now;
        record.retag();
        Effects::default()
    } else {
        let why = match (status.kind, &status.command_id) {
            (cordon_wire::StatusKind::Changed, _) => {
                format!("agent reports a change on its own (isolated: {})", status.isolated)
            }
            (_, Some(id)) => format!("agent answered command {id} (isolated: {})", status.isolated),
            (_, None) => format!("agent report (isolated: {})", status.isolated),
        };
        record.step(to, None, Cause::new("agent", why), now)
    };
    if let Some(repaired) = repaired {
        match &mut effects.audit {
            Some(audit) => audit.why = format!("{}; {repaired}", audit.why),
            None => effects = record.step(record.state, None, Cause::new("agent", repaired), now),
        }
    } else if effects.audit.is_none() && (was_stale || caught_up || failure.is_some()) {
        let why = if let Some(failure) = failure {
            format!("agent could not apply a command: {failure}")
        } else if caught_up {
            format!("agent is at generation {}, ahead of cordon: caught up", status.generation)
        } else {
            "agent heard from again".to_owned()
        };
        effects = record.step(record.state, None, Cause::new("agent", why), now);
    }
    effects
}

/// Tampering the agent found on its still isolated host and undid (`status.tampering`): marks the
/// host tampered and returns the audit line's words; `None` when the report carries none.
fn mark_repaired_tampering(record: &mut HostRecord, status: &cordon_wire::Status, now: i64) -> Option<String> {
    let found = status.tampering.as_ref().filter(|_| status.isolated)?;
    let response = "the agent undid it: the host stays isolated".to_owned();
    let why = format!("TAMPERED: {found}; {response}");
    record.tampered = Some(Tampering { at_ms: now, generation: status.generation, what: found.clone(), response });
    Some(why)
}

/// The agent applied the isolation cordon wants, and now says the host is not isolated, though
/// no command released it and its deadline (if any) is not near.
fn is_tampering(record: &HostRecord, status: &cordon_wire::Status, now: i64) -> bool {
    !status.isolated
        && status.kind != cordon_wire::StatusKind::Refused
        && record.state.isolation_in_force()
        && matches!(record.last_command, Some(cordon_wire::Action::Isolate { .. }))
        && record.expires_at_ms.is_none_or(|deadline| now < deadline.saturating_sub(DEADLINE_SLACK_MS))
}

fn tampered(record: &mut HostRecord, status: &cordon_wire::Status, on_tamper: OnTamper, now: i64) -> Effects {
    let manual = record.expires_at_ms.is_none();
    let again = match on_tamper {
        OnTamper::ReisolateAll => true,
        OnTamper::ReisolateManual => manual,
        OnTamper::AlertOnly => false,
    };
    let what = format!(
        "the agent reports the host not isolated ({:?} report, generation {}) though no command released it \
         (someone ran `cordon-enforcer release` on it, or its pins vanished)",
        status.kind, status.generation
    );
    let command = again.then(|| isolation_again(record, now)).flatten();
    let response = if command.is_some() {
        "isolated again".to_owned()
    } else {
        format!("left released: an operator must decide ({} isolation)", if manual { "manual" } else { "timed" })
    };
    let why = format!("TAMPERED: {what}; {response} ([agents] on_tamper = {})", on_tamper.name());
    record.tampered = Some(Tampering { at_ms: now, generation: status.generation, what, response });
    if command.is_some() {
        record.step(HostState::Isolating, command, Cause::new("agent", why), now)
    } else {
        record.expires_at_ms = None;
        record.mode = None;
        record.step(HostState::Released, None, Cause::new("agent", why), now)
    }
}

/// The host's last isolate command again, a timed one for what is left of its time (whole
/// seconds, rounded up, so the agent's backstop never ends first); `None` when the last command
/// is not an isolation or its deadline has passed.
fn isolation_again(record: &HostRecord, now: i64) -> Option<cordon_wire::Action> {
    match record.last_command.clone()? {
        cordon_wire::Action::Isolate { duration_seconds: Some(_), .. } if record.expires_at_ms.is_some_and(|at| at <= now) => None,
        cordon_wire::Action::Isolate { duration_seconds, exclusions, allowed_processes, allow_dns, allow_dhcp, reason } => {
            let duration_seconds = duration_seconds.map(|full| {
                record.expires_at_ms.map_or(full, |at| {
                    u64::try_from((at - now).max(1_000).saturating_add(999) / 1_000).unwrap_or(full)
                })
            });
            Some(cordon_wire::Action::Isolate { duration_seconds, exclusions, allowed_processes, allow_dns, allow_dhcp, reason })
        }
        cordon_wire::Action::Release { .. } => None,
    }
}

/// Issues the host's desired state again after its agent turned out to be ahead of cordon (the
/// record already carries the agent's generation): when a command is unanswered, or the agent's
/// isolation differs from what the host should have. `None` when the agent already has it.
fn reissue_desired_state(record: &mut HostRecord, status: &cordon_wire::Status, now: i64) -> Option<Effects> {
    let desired_isolated = match record.state {
        HostState::Isolating | HostState::Isolated => true,
        HostState::Releasing | HostState::Released => false,
        HostState::NotIsolated | HostState::PendingApproval => return None,
    };
    let unanswered = record.command_issued_at_ms.is_some();
    if !unanswered && desired_isolated == status.isolated {
        return None;
    }
    let command = match record.last_command.clone()? {
        // A timed isolation whose deadline has passed: the tick releases it; nothing to issue.
        cordon_wire::Action::Isolate { .. } => isolation_again(record, now)?,
        release @ cordon_wire::Action::Release { .. } => release,
    };
    let is_isolate = matches!(command, cordon_wire::Action::Isolate { .. });
    if is_isolate != desired_isolated {
        return None;
    }
    let to = if desired_isolated { HostState::Isolating } else { HostState::Releasing };
    let why = format!(
        "agent is at generation {}, ahead of cordon (isolated: {}): issuing the {} again as generation {}",
        status.generation,
        status.isolated,
        if desired_isolated { "isolation" } else { "release" },
        status.generation.saturating_add(1)
    );
    Some(record.step(to, Some(command), Cause::new("agent", why), now))
}

/// Marks the host's agent stale when it has been silent for longer than `stale_after_ms`.
pub fn check_stale(record: &mut HostRecord, stale_after_ms: i64, now: i64) -> Effects {
    let Some(last_seen) = record.heard_from_unless_stale() else { return Effects::default() };
    if now.saturating_sub(last_seen) <= stale_after_ms {
        return Effects::default();
    }
    record.agent_stale = true;
    let why = format!("agent silent for {} s", (now - last_seen) / 1_000);
    record.step(record.state, None, Cause::new("scheduler", why), now)
}

/// The unanswered command to send again, when the last one has waited longer than `after_ms`.
pub fn resend_due(record: &mut HostRecord, after_ms: i64, now: i64) -> Option<cordon_wire::Action> {
    let issued = record.awaiting_answer_since()?;
    let waited = now.saturating_sub(issued);
    // Back off: after_ms, then 2x, 4x... up to 32x, so a dead agent does not flood its partition.
    let backoff = after_ms.saturating_mul(1 << record.resends.min(5));
    if waited < backoff {
        return None;
    }
    record.resends = record.resends.saturating_add(1);
    record.command_issued_at_ms = Some(now);
    record.last_command.clone()
}

#[cfg(test)]
mod tests;
