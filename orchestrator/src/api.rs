//! The operator API's messages, shared by the server (`cordon serve`) and the client (`cordon
//! isolate`, `cordon hosts`, ...). `schemas/openapi.yaml` documents the same shapes.

use serde::{Deserialize, Serialize};

use crate::service::agents::{AgentRecord, AgentState, Claim};
use crate::service::lifecycle::{AuditEntry, HostRecord, IsolationPlan, Proposal};
use crate::service::profiles::{Change, PolicyVersion, Profile, ProfileRef};

/// The API's version prefix.
pub const PREFIX: &str = "/v1";

/// The header a client names its operator in (as claimed by the token holder).
pub const OPERATOR_HEADER: &str = "x-cordon-operator";

/// `POST /v1/hosts/{host}/isolate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolateRequest {
    /// `automatic` or `manual` (which takes no `duration_seconds`): explicit, so a forgotten
    /// duration never turns into an isolation without end. Automatic without
    /// `duration_seconds` lasts the host's profile's `automatic_duration_seconds`.
    pub mode: String,
    pub duration_seconds: Option<u64>,
    #[serde(default)]
    pub exclusions: Vec<String>,
    #[serde(default)]
    pub allowed_processes: Vec<String>,
    #[serde(default)]
    pub allow_dns: bool,
    #[serde(default)]
    pub allow_dhcp: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

/// The longest timed isolation an operator may ask for.
pub const MAX_DURATION_SECONDS: u64 = 366 * 24 * 3_600;

/// The largest request body the API reads (a larger one is answered 413, unread).
pub const MAX_BODY_BYTES: usize = 64 * 1_024;
/// The longest reason an operator may give (it travels in the command and the audit trail).
pub const MAX_REASON_BYTES: usize = 1_024;
/// The most exclusions one isolation may carry.
pub const MAX_EXCLUSIONS: usize = 256;
/// The most process names one isolation may exempt.
pub const MAX_ALLOWED_PROCESSES: usize = 64;
/// The most tags one request may add or remove.
pub const MAX_TAGS: usize = 64;

/// A reason as operators give it: at most [`MAX_REASON_BYTES`].
pub fn check_reason(reason: Option<&str>) -> Result<(), String> {
    match reason {
        Some(reason) if reason.len() > MAX_REASON_BYTES => Err(format!(
            "reason is {} bytes; the limit is {MAX_REASON_BYTES} (put long notes in your ticket and its id here)",
            reason.len()
        )),
        _ => Ok(()),
    }
}

/// An operator's isolation as checked: what it asks for, and whether it lasts its host's
/// profile's automatic duration (automatic, no duration given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedIsolation {
    pub plan: IsolationPlan,
    pub profile_duration: bool,
}

impl IsolateRequest {
    /// What it asks for, or every problem with it.
    pub fn plan(&self) -> Result<CheckedIsolation, Vec<String>> {
        let mut problems = Vec::new();
        match (self.mode.as_str(), self.duration_seconds) {
            ("automatic", Some(0)) => problems.push("duration_seconds must be at least 1".to_owned()),
            ("automatic", Some(seconds)) if seconds > MAX_DURATION_SECONDS => problems.push(format!(
                "duration_seconds {seconds} is longer than a year ({MAX_DURATION_SECONDS}); use mode manual"
            )),
            ("manual", Some(_)) => problems.push("mode manual takes no duration_seconds".to_owned()),
            ("automatic" | "manual", _) => {}
            (other, _) => problems.push(format!("mode must be \"automatic\" or \"manual\", got {other:?}")),
        }
        if let Err(problem) = check_reason(self.reason.as_deref()) {
            problems.push(problem);
        }
        problems.extend(check_exclusions(&self.exclusions, &self.allowed_processes).1);
        if problems.is_empty() {
            Ok(CheckedIsolation {
                plan: IsolationPlan {
                    duration_seconds: self.duration_seconds,
                    exclusions: self.exclusions.clone(),
                    allowed_processes: self.allowed_processes.clone(),
                    allow_dns: self.allow_dns,
                    allow_dhcp: self.allow_dhcp,
                },
                profile_duration: self.mode == "automatic" && self.duration_seconds.is_none(),
            })
        } else {
            Err(problems)
        }
    }
}

/// Exclusion SPECs and excluded process names as operators give them: those that parse, and
/// every problem (too many, a SPEC that does not parse, a name the kernel cannot hold).
pub fn check_exclusions(specs: &[String], processes: &[String]) -> (Vec<cordon_wire::Exclusion>, Vec<String>) {
    let mut problems = Vec::new();
    if specs.len() > MAX_EXCLUSIONS {
        problems.push(format!("{} exclusions; the limit is {MAX_EXCLUSIONS} (use wider networks or port ranges)", specs.len()));
    }
    if processes.len() > MAX_ALLOWED_PROCESSES {
        problems.push(format!("{} allowed processes; the limit is {MAX_ALLOWED_PROCESSES}", processes.len()));
    }
    let mut exclusions = Vec::new();
    for spec in specs.iter().take(MAX_EXCLUSIONS) {
        match rules::parse_allow_spec(spec) {
            Ok(exclusion) => exclusions.push(exclusion),
            Err(error) => problems.push(format!("exclusion {spec:?}: {error}")),
        }
    }
    for name in processes.iter().take(MAX_ALLOWED_PROCESSES) {
        if let Err(problem) = check_process_name(name) {
            problems.push(problem);
        }
    }
    (exclusions, problems)
}

/// A process name as the kernel keeps it (`comm`): 1 to 15 bytes, no `/`, no control characters.
fn check_process_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 || name.contains('/') || name.chars().any(char::is_control) {
        Err(format!(
            "process name {name:?} must be 1 to 15 bytes without '/' or control characters (the kernel's comm)"
        ))
    } else {
        Ok(())
    }
}

/// A host id as hosts, topics and URLs carry it.
pub fn check_host_id(host: &str) -> Result<(), String> {
    if host.is_empty() || host.len() > 255 || host.contains('/') || host.chars().any(char::is_control) {
        // A hostile id may be megabytes long: the message quotes its start only.
        let shown: String = host.chars().take(64).collect();
        let shown = if shown.len() < host.len() {
            format!("{shown:?}... ({} bytes)", host.len())
        } else {
            format!("{shown:?}")
        };
        Err(format!("host id {shown} must be 1 to 255 bytes without '/' or control characters"))
    } else {
        Ok(())
    }
}

/// Which hosts: `GET /v1/hosts?tag=&state=`, and the console's fleet and bulk pages. An empty
/// value selects every host (as a form's "any" sends it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFilter {
    /// Hosts carrying this tag, e.g. `ISOLATED FROM NETWORK`.
    pub tag: Option<String>,
    /// Hosts in this state (`isolated`, `pending_approval`, ...).
    pub state: Option<String>,
}

impl HostFilter {
    pub fn matches(&self, record: &HostRecord) -> bool {
        self.selects(record.state, &record.tags)
    }

    /// Whether `record` is selected for an action on many hosts at once (bulk): by the tags
    /// operators set and cordon's own `ISOLATED FROM NETWORK`, never by a tag its agent reports
    /// (whoever holds a host could report its way into, or out of, an operator's selection).
    pub fn selects_for_action(&self, record: &HostRecord) -> bool {
        let mut trusted = record.operator_tags.clone();
        if record.state.may_be_isolated() {
            trusted.push(crate::service::lifecycle::ISOLATED_TAG.to_owned());
        }
        self.selects(record.state, &trusted)
    }

    /// Whether a host in `state` with `tags` is selected.
    pub fn selects(&self, state: crate::service::lifecycle::HostState, tags: &[String]) -> bool {
        let tag = self.tag.as_deref().filter(|t| !t.is_empty());
        let wanted_state = self.state.as_deref().filter(|s| !s.is_empty());
        tag.is_none_or(|tag| tags.iter().any(|t| t == tag)) && wanted_state.is_none_or(|s| state.name() == s)
    }
}

/// What pins a selection of hosts an operator saw (bulk): the SHA-256 of their ids, sorted, one
/// per line; another set of hosts of the same size has another digest.
pub fn selection_digest<'a>(hosts: impl IntoIterator<Item = &'a str>) -> String {
    use sha2::Digest as _;
    let mut hosts: Vec<&str> = hosts.into_iter().collect();
    hosts.sort_unstable();
    let mut digest = sha2::Sha256::new();
    for host in hosts {
        digest.update(host.as_bytes());
        digest.update(b"\n");
    }
    crate::service::outbox::hex(&digest.finalize())
}

/// `POST /v1/hosts/{host}/release` and `/deny`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /v1/hosts/{host}/extend`: more time for a timed isolation in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// Added to the deadline: 1 s to a year.
    pub duration_seconds: u64,
    #[serde(default)]
    pub reason: Option<String>,
}

impl ExtendRequest {
    /// Every problem with it.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=MAX_DURATION_SECONDS).contains(&self.duration_seconds) {
            problems.push(format!("duration_seconds must be 1 to {MAX_DURATION_SECONDS}, got {}", self.duration_seconds));
        }
        if let Err(problem) = check_reason(self.reason.as_deref()) {
            problems.push(problem);
        }
        problems
    }
}

/// `POST /v1/hosts/{host}/tags`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagsRequest {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// What the agent last said about its host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    pub last_seen: Option<String>,
    pub stale: bool,
    pub isolated: Option<bool>,
    pub generation: Option<u64>,
    pub exclusions: Vec<String>,
    pub packets_dropped: Option<u64>,
    pub packets_allowed: Option<u64>,
}

/// A pending approval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingView {
    pub mode: cordon_wire::IsolationMode,
    pub duration_seconds: Option<u64>,
    pub exclusions: Vec<String>,
    pub rules: Vec<String>,
    pub event_id: String,
    pub requested_at: String,
    pub requests: u32,
}

/// One line of the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditView {
    pub at: String,
    pub from: String,
    pub to: String,
    pub by: String,
    pub event_id: Option<String>,
    pub generation: u64,
    pub why: String,
    /// What a shadow rule would have done: recorded, nothing done.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

/// A host, as `GET /v1/hosts` lists it and `GET /v1/hosts/{host}` shows it (with `audit`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    pub host: String,
    pub state: String,
    pub mode: Option<cordon_wire::IsolationMode>,
    /// RFC 3339, UTC; null unless automatic.
    pub expires_at: Option<String>,
    pub tags: Vec<String>,
    pub generation: u64,
    pub rules: Vec<String>,
    pub event_id: Option<String>,
    pub pending: Option<PendingView>,
    pub agent: AgentView,
    pub last_error: Option<String>,
    /// Set when an isolation was undone on the host, not by cordon; cleared when an operator
    /// isolates or releases the host.
    pub tampered: Option<TamperedView>,
    /// The isolation profile under the current (or last) isolation, and its policy version.
    pub profile: Option<ProfileRef>,
    /// The last command cordon issued to the host's agent: the state it is to be in.
    pub command: Option<CommandView>,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Vec<AuditView>>,
}

/// The last command issued to a host's agent, and whether it answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandView {
    pub generation: u64,
    /// `isolate` or `release`.
    pub action: String,
    /// Isolate only: what stays open and how long it lasts (from when the agent applies it).
    pub duration_seconds: Option<u64>,
    pub exclusions: Vec<String>,
    pub allowed_processes: Vec<String>,
    pub allow_dns: bool,
    pub allow_dhcp: bool,
    /// When it was last sent; null once its agent answered.
    pub awaiting_answer_since: Option<String>,
    /// How many times it was sent again for want of an answer.
    pub resends: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TamperedView {
    pub at: String,
    /// The generation of the isolation that was undone.
    pub generation: u64,
    /// What was done to the isolation on the host.
    pub what: String,
    /// What cordon did: isolated it again, or left it released for an operator.
    pub response: String,
}

/// RFC 3339 (UTC, millisecond precision) of epoch milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("@{ms}ms"))
}

impl HostView {
    pub fn new(record: &HostRecord, audit: Option<&[AuditEntry]>) -> HostView {
        let status = record.last_status.as_ref();
        HostView {
            host: record.host.clone(),
            state: record.state.name().to_owned(),
            mode: record.mode,
            expires_at: record.expires_at_ms.map(rfc3339),
            tags: record.tags.clone(),
            generation: record.generation,
            rules: record.rules.clone(),
            event_id: record.event_id.clone(),
            pending: record.pending.as_ref().map(PendingView::new),
            agent: AgentView {
                last_seen: record.last_seen_ms.map(rfc3339),
                stale: record.agent_stale,
                isolated: status.map(|s| s.isolated),
                generation: status.map(|s| s.generation),
                exclusions: status.map(|s| s.exclusions.clone()).unwrap_or_default(),
                packets_dropped: status.map(|s| s.packets_dropped),
                packets_allowed: status.map(|s| s.packets_allowed),
            },
            last_error: record.last_error.clone(),
            tampered: record.tampered.as_ref().map(|t| TamperedView {
                at: rfc3339(t.at_ms),
                generation: t.generation,
                what: t.what.clone(),
                response: t.response.clone(),
            }),
            profile: record.profile.clone(),
            command: record.last_command.as_ref().map(|action| CommandView::new(record, action)),
            updated_at: rfc3339(record.updated_at_ms),
            audit: audit.map(|entries| entries.iter().map(AuditView::new).collect()),
        }
    }
}

impl CommandView {
    fn new(record: &HostRecord, action: &cordon_wire::Action) -> CommandView {
        let mut view = CommandView {
            generation: record.generation,
            action: "release".to_owned(),
            duration_seconds: None,
            exclusions: Vec::new(),
            allowed_processes: Vec::new(),
            allow_dns: false,
            allow_dhcp: false,
            awaiting_answer_since: record.command_issued_at_ms.map(rfc3339),
            resends: record.resends,
        };
        if let cordon_wire::Action::Isolate { duration_seconds, exclusions, allowed_processes, allow_dns, allow_dhcp, .. } =
            action
        {
            "isolate".clone_into(&mut view.action);
            view.duration_seconds = *duration_seconds;
            view.exclusions.clone_from(exclusions);
            view.allowed_processes.clone_from(allowed_processes);
            view.allow_dns = *allow_dns;
            view.allow_dhcp = *allow_dhcp;
        }
        view
    }
}

impl PendingView {
    fn new(proposal: &Proposal) -> PendingView {
        PendingView {
            mode: proposal.plan.mode(),
            duration_seconds: proposal.plan.duration_seconds,
            exclusions: proposal.plan.exclusions.clone(),
            rules: proposal.rules.clone(),
            event_id: proposal.event_id.clone(),
            requested_at: rfc3339(proposal.requested_at_ms),
            requests: proposal.requests,
        }
    }
}

impl AuditView {
    pub fn new(entry: &AuditEntry) -> AuditView {
        AuditView {
            at: rfc3339(entry.at_ms),
            from: entry.from.name().to_owned(),
            to: entry.to.name().to_owned(),
            by: entry.by.clone(),
            event_id: entry.event_id.clone(),
            generation: entry.generation,
            why: entry.why.clone(),
            shadow: entry.shadow,
        }
    }
}

/// `POST /v1/agents/{host}/enroll` and `/accept`: the agent key to trust for the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// Base64 of the agent's Ed25519 public key (as `cordon-enforcer keygen` prints it).
    pub key: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `GET /v1/agents`: one host's agent key, enrolled, revoked, or only claimed (pending).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentKeyView {
    pub host: String,
    /// `enrolled`, `revoked` or `pending` (claimed by reports, never trusted until enrolled).
    pub state: String,
    /// The enrolled (or revoked) key; absent while pending.
    pub key: Option<String>,
    pub changed_at: Option<String>,
    pub changed_by: Option<String>,
    pub reason: Option<String>,
    /// A key that signed reports for the host without being its enrolled key.
    pub claim: Option<ClaimView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimView {
    pub key: String,
    pub first_seen: String,
    pub last_seen: String,
    /// More than 1: more than one key signs reports for this host.
    pub keys_seen: u32,
    /// Why its reports are refused: `unknown_agent`, `wrong_key` or `revoked_agent`.
    pub refusal: String,
}

impl AgentKeyView {
    pub fn new(record: Option<&AgentRecord>, claim: Option<&Claim>) -> Option<AgentKeyView> {
        let host = record.map(|r| r.host.clone()).or_else(|| claim.map(|c| c.host.clone()))?;
        // A claim by the key now enrolled is settled, whether or not its agent has spoken since.
        let claim = claim.filter(|c| record.is_none_or(|r| r.state == AgentState::Revoked || r.key != c.key));
        Some(AgentKeyView {
            host,
            state: match record.map(|r| r.state) {
                Some(AgentState::Enrolled) => "enrolled",
                Some(AgentState::Revoked) => "revoked",
                None => "pending",
            }
            .to_owned(),
            key: record.map(|r| r.key.clone()),
            changed_at: record.map(|r| rfc3339(r.changed_at_ms)),
            changed_by: record.map(|r| r.changed_by.clone()),
            reason: record.map(|r| r.reason.clone()),
            claim: claim.map(|c| ClaimView {
                key: c.key.clone(),
                first_seen: rfc3339(c.first_seen_ms),
                last_seen: rfc3339(c.last_seen_ms),
                keys_seen: c.keys_seen,
                refusal: c.refusal.name().to_owned(),
            }),
        })
    }
}

/// `GET /v1/shadow?since=24h`: what the shadow rules would have done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowReport {
    pub since: String,
    pub decisions: usize,
    pub hosts: Vec<ShadowHost>,
    pub rules: Vec<ShadowRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowHost {
    pub host: String,
    pub decisions: usize,
    pub rules: Vec<String>,
    /// What it would have done: `isolate automatic 4h`, `request_approval manual`, ...
    pub would: Vec<String>,
    pub first: String,
    pub last: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowRule {
    pub rule: String,
    pub decisions: usize,
    pub hosts: usize,
}

impl ShadowReport {
    /// The report of the shadow entries among `entries` at or after `since_ms`.
    pub fn of(entries: &[AuditEntry], since_ms: i64) -> ShadowReport {
        use std::collections::{BTreeMap, BTreeSet};
        // Per host: its view, and its first and last decision (epoch ms).
        let mut hosts: BTreeMap<&str, (ShadowHost, i64, i64)> = BTreeMap::new();
        let mut rules: BTreeMap<&str, (usize, BTreeSet<&str>)> = BTreeMap::new();
        let mut decisions = 0;
        for entry in entries.iter().filter(|e| e.shadow && e.at_ms >= since_ms) {
            decisions += 1;
            // `rules A,B (shadow)`, and `SHADOW ACTION MODE [DURATION]: reasons`.
            let ids = entry.by.strip_prefix("rules ").and_then(|rest| rest.strip_suffix(" (shadow)")).unwrap_or("");
            let would = entry.why.strip_prefix("SHADOW ").and_then(|rest| rest.split(':').next()).unwrap_or("");
            let (host, first, last) = hosts.entry(&entry.host).or_insert_with(|| {
                let view = ShadowHost {
                    host: entry.host.clone(),
                    decisions: 0,
                    rules: Vec::new(),
                    would: Vec::new(),
                    first: String::new(),
                    last: String::new(),
                };
                (view, entry.at_ms, entry.at_ms)
            });
            host.decisions += 1;
            (*first, *last) = ((*first).min(entry.at_ms), (*last).max(entry.at_ms));
            for id in ids.split(',').filter(|id| !id.is_empty()) {
                if !host.rules.iter().any(|known| known == id) {
                    host.rules.push(id.to_owned());
                }
                let rule = rules.entry(id).or_default();
                rule.0 += 1;
                rule.1.insert(&entry.host);
            }
            if !would.is_empty() && !host.would.iter().any(|known| known == would) {
                host.would.push(would.to_owned());
            }
        }
        let mut hosts: Vec<ShadowHost> = hosts
            .into_values()
            .map(|(host, first, last)| ShadowHost { first: rfc3339(first), last: rfc3339(last), ..host })
            .collect();
        hosts.sort_by(|a, b| b.decisions.cmp(&a.decisions).then_with(|| a.host.cmp(&b.host)));
        let mut rules: Vec<ShadowRule> = rules
            .into_iter()
            .map(|(rule, (decisions, hosts))| ShadowRule { rule: rule.to_owned(), decisions, hosts: hosts.len() })
            .collect();
        rules.sort_by(|a, b| b.decisions.cmp(&a.decisions).then_with(|| a.rule.cmp(&b.rule)));
        ShadowReport { since: rfc3339(since_ms), decisions, hosts, rules }
    }
}

/// `POST /v1/policy/versions`: the whole isolation policy, in force from now as a new version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPolicyRequest {
    pub profiles: Vec<Profile>,
    /// Why (required): every version keeps its author, reason and time.
    pub reason: String,
    /// The version this change was made from: refused (409) if another change came first.
    #[serde(default)]
    pub expected_version: Option<u64>,
}

/// `POST /v1/policy/revert`: the policy of an earlier version, in force from now as a new one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevertPolicyRequest {
    pub version: u64,
    pub reason: String,
    #[serde(default)]
    pub expected_version: Option<u64>,
}

/// A reason a policy change must give: not blank, at most [`MAX_REASON_BYTES`].
pub fn check_policy_reason(reason: &str) -> Result<(), String> {
    if reason.trim().is_empty() {
        return Err("a reason is required: every version of the policy keeps why it was made".to_owned());
    }
    check_reason(Some(reason))
}

/// One version of the isolation policy: `GET /v1/policy` (the one in force) and
/// `GET /v1/policy/versions/{version}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyView {
    pub version: u64,
    pub at: String,
    pub author: String,
    pub reason: String,
    pub reverted_from: Option<u64>,
    pub profiles: Vec<Profile>,
}

impl PolicyView {
    pub fn new(version: &PolicyVersion) -> PolicyView {
        PolicyView {
            version: version.version,
            at: rfc3339(version.at_ms),
            author: version.author.clone(),
            reason: version.reason.clone(),
            reverted_from: version.reverted_from,
            profiles: version.policy.profiles.clone(),
        }
    }
}

/// `GET /v1/policy/history`: each version, oldest first, with what it changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyHistoryEntry {
    pub version: u64,
    pub at: String,
    pub author: String,
    pub reason: String,
    pub reverted_from: Option<u64>,
    /// What changed from the version before (everything, for the first).
    pub changes: Vec<Change>,
}

/// `GET /v1/policy/diff?from=A&to=B` (`to`: the version in force when absent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDiff {
    pub from: u64,
    pub to: u64,
    pub changes: Vec<Change>,
}
