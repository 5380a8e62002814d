//! Evaluation: for one event, which rules fire, what each would do, how their answers combine
//! (strongest isolation wins), and how protection and the ceiling override them.
//!
//! Every evaluation first computes a plan against a read-only state (the decisions and the state
//! changes they imply); `evaluate` then applies the changes, `dry_run` does not.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use crate::config::{ResponseMode, Retrigger, Rule, Threshold};
use crate::decision::{Action, Decision, Isolation, IsolationMode, Reason};
use crate::duration::millis;
use crate::event::Event;
use crate::fields::Field;
use crate::matcher::Subject;
use crate::ruleset::Ruleset;
use crate::state::{
    event_key, EngineState, HostIsolation, EscalationCount, ThresholdWindow, MAX_THRESHOLD_GROUPS,
};

/// What `dry_run` found: the decisions `evaluate` would return, and each matching rule's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRun {
    /// The event was already seen for this host: `evaluate` would ignore it.
    pub duplicate: bool,
    pub decisions: Vec<Decision>,
    pub verdicts: Vec<RuleVerdict>,
}

/// One rule whose condition held for the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleVerdict {
    pub rule: String,
    pub selections: Vec<String>,
    /// For rules with a threshold: matches counted in the window including this one, and the count needed.
    pub threshold: Option<(u32, u32)>,
    /// Whether the rule fired (its condition held and its threshold, if any, was reached).
    pub fired: bool,
}

/// Evaluates one event and updates `state`. `isolation` is the isolation the event's host is
/// under, as its owner keeps it (an isolating decision says what it puts in force:
/// [`HostIsolation::decided`]); `now_ms` is the current time (epoch ms); `host_tags` are the tags
/// the orchestrator knows for the event's host (they decide protection).
/// A repeated (host, event id) returns no decision.
pub fn evaluate<T: AsRef<str>>(
    ruleset: &Ruleset,
    state: &mut EngineState,
    event: &Event,
    isolation: Option<&HostIsolation>,
    now_ms: i64,
    host_tags: &[T],
) -> Vec<Decision> {
    screen(ruleset, state, event)
        .map_or_else(Vec::new, |screened| screened.decide(state, isolation, now_ms, host_tags))
}

/// An event [`screen`] let through: new to the engine, with rules that may decide on it.
pub struct Screened<'a> {
    ruleset: &'a Ruleset,
    event: &'a Event,
    subject: Subject<'a>,
    candidates: Vec<u32>,
}

/// The first half of [`evaluate`], which needs nothing of the host: remembers the event and
/// selects the rules that may decide on it. None for an event seen already, or one no rule can
/// match (most events): its host's isolation and tags need not be looked up.
pub fn screen<'a>(ruleset: &'a Ruleset, state: &mut EngineState, event: &'a Event) -> Option<Screened<'a>> {
    if !state.remember_event(event_key(event.host(), event.id())) {
        return None;
    }
    let subject = Subject::new(event);
    let candidates = ruleset.candidates(&subject);
    (!candidates.is_empty()).then_some(Screened { ruleset, event, subject, candidates })
}

impl Screened<'_> {
    /// The second half of [`evaluate`] (see there for `isolation` and `host_tags`): what the
    /// rules decide, the state updated.
    pub fn decide<T: AsRef<str>>(
        &self,
        state: &mut EngineState,
        isolation: Option<&HostIsolation>,
        now_ms: i64,
        host_tags: &[T],
    ) -> Vec<Decision> {
        let Screened { ruleset, event, subject, candidates } = self;
        let plan = plan(ruleset, state, event, isolation, subject, now_ms, host_tags, candidates);
        for change in plan.changes {
            apply(state, change);
        }
        plan.decisions
    }
}

/// What `evaluate` would decide, without changing anything.
pub fn dry_run<T: AsRef<str>>(
    ruleset: &Ruleset,
    state: &EngineState,
    event: &Event,
    isolation: Option<&HostIsolation>,
    now_ms: i64,
    host_tags: &[T],
) -> DryRun {
    let duplicate = state.seen.contains(event_key(event.host(), event.id()));
    if duplicate {
        return DryRun { duplicate, decisions: Vec::new(), verdicts: Vec::new() };
    }
    let subject = Subject::new(event);
    let candidates = ruleset.candidates(&subject);
    let plan = plan(ruleset, state, event, isolation, &subject, now_ms, host_tags, &candidates);
    DryRun { duplicate, decisions: plan.decisions, verdicts: plan.verdicts }
}

/// What the rule `rule_id` alone would decide for the event (policy included), without changing
/// anything. None if the rule set has no enabled rule with that id.
pub fn dry_run_rule<T: AsRef<str>>(
    ruleset: &Ruleset,
    rule_id: &str,
    state: &EngineState,
    event: &Event,
    isolation: Option<&HostIsolation>,
    now_ms: i64,
    host_tags: &[T],
) -> Option<DryRun> {
    let index = u32::try_from(ruleset.rule_index(rule_id)?).ok()?;
    let duplicate = state.seen.contains(event_key(event.host(), event.id()));
    let plan = plan(ruleset, state, event, isolation, &Subject::new(event), now_ms, host_tags, &[index]);
    Some(DryRun { duplicate, decisions: plan.decisions, verdicts: plan.verdicts })
}

#[derive(Debug)]
enum Change {
    ThresholdHit { rule: String, group: String, at: i64, within_ms: i64, keep: usize },
    ThresholdFired { rule: String, group: String },
    Escalation { rule: String, host: String, count: EscalationCount },
    NewIsolation { at: i64, keep: usize },
}

#[derive(Debug, Default)]
struct Plan {
    decisions: Vec<Decision>,
    verdicts: Vec<RuleVerdict>,
    changes: Vec<Change>,
}

/// What one fired rule would do on its own.
#[derive(Debug)]
enum Outcome {
    Isolate { isolation: Isolation, own_duration_ms: i64, escalation: Option<EscalationCount> },
    Approval(Isolation),
    Nothing,
}

struct Fired<'r> {
    rule: &'r Rule,
    outcome: Outcome,
    reasons: Vec<Reason>,
}

#[expect(
    clippy::too_many_arguments,
    reason = "evaluate's arguments, and the candidates; a struct of them would be read once"
)]
fn plan<T: AsRef<str>>(
    ruleset: &Ruleset,
    state: &EngineState,
    event: &Event,
    isolation: Option<&HostIsolation>,
    subject: &Subject<'_>,
    now_ms: i64,
    host_tags: &[T],
    candidates: &[u32],
) -> Plan {
    let mut plan = Plan::default();
    let host = event.host();
    let active = isolation.filter(|isolation| isolation.in_force(now_ms));
    let mut fired = Vec::new();
    for &index in candidates {
        let rule = &ruleset.rules[index as usize];
        if !rule.matches(subject) {
            continue;
        }
        let selections = rule.matching_selections(subject);
        let mut reasons = vec![Reason::Matched { rule: rule.id.clone(), selections: selections.clone() }];
        let mut verdict = RuleVerdict { rule: rule.id.clone(), selections, threshold: None, fired: true };
        if let Some(threshold) = &rule.threshold {
            let group = group_key(threshold, event);
            let within_ms = millis(threshold.within);
            let oldest = now_ms.saturating_sub(within_ms);
            let earlier = state
                .thresholds
                .get(&rule.id)
                .and_then(|groups| groups.get(&group))
                .map_or(0, |window| window.hits.iter().filter(|&&at| at > oldest).count());
            let hits = u32::try_from(earlier + 1).unwrap_or(u32::MAX);
            verdict.threshold = Some((hits, threshold.count));
            if hits < threshold.count {
                verdict.fired = false;
                let keep = threshold.count as usize - 1;
                plan.changes.push(Change::ThresholdHit {
                    rule: rule.id.clone(),
                    group,
                    at: now_ms,
                    within_ms,
                    keep,
                });
                plan.verdicts.push(verdict);
                continue;
            }
            plan.changes.push(Change::ThresholdFired { rule: rule.id.clone(), group });
            reasons.push(Reason::ThresholdReached {
                rule: rule.id.clone(),
                count: threshold.count,
                within: threshold.within,
            });
        }
        plan.verdicts.push(verdict);
        let outcome = rule_outcome(rule, state, active, host, now_ms, &mut reasons);
        fired.push(Fired { rule, outcome, reasons });
    }
    if let Some(decision) =
        combine(ruleset, state, event, now_ms, host_tags, active, &fired, &mut plan.changes)
    {
        plan.decisions.push(decision);
    }
    plan
}

fn group_key(threshold: &Threshold, event: &Event) -> String {
    let Some(paths) = &threshold.group_by else {
        return event.host().to_owned();
    };
    let mut key = String::new();
    for (i, path) in paths.iter().enumerate() {
        if i > 0 {
            key.push('\u{1f}');
        }
        path.any_value(event.fields().root(), &mut |value| {
            match value {
                Field::String(text) => key.push_str(text),
                Field::Null => return false,
                other => key.push_str(&other.to_string()),
            }
            true
        });
    }
    key
}

fn rule_outcome(
    rule: &Rule,
    state: &EngineState,
    active: Option<&HostIsolation>,
    host: &str,
    now_ms: i64,
    reasons: &mut Vec<Reason>,
) -> Outcome {
    let response = &rule.response;
    let exclusions = response.exclusions.clone();
    let isolated_by_rule = active.and_then(|active| active.isolated_by.get(&rule.id)).copied();
    match response.mode {
        ResponseMode::Approval => {
            reasons.push(Reason::ApprovalRequired { rule: rule.id.clone() });
            let mode =
                if response.duration.is_some() { IsolationMode::Automatic } else { IsolationMode::Manual };
            Outcome::Approval(Isolation { mode, duration: response.duration, deadline_ms: None, exclusions })
        }
        ResponseMode::Manual if isolated_by_rule.is_some() => Outcome::Nothing,
        ResponseMode::Manual => Outcome::Isolate {
            isolation: Isolation {
                mode: IsolationMode::Manual,
                duration: None,
                deadline_ms: None,
                exclusions,
            },
            own_duration_ms: 0,
            escalation: None,
        },
        ResponseMode::Automatic => {
            let duration = match (isolated_by_rule, response.on_retrigger) {
                (Some(_), Retrigger::Keep) => {
                    reasons
                        .push(Reason::Retriggered { rule: rule.id.clone(), on_retrigger: Retrigger::Keep });
                    return Outcome::Nothing;
                }
                (Some(own_ms), Retrigger::Extend) => {
                    reasons
                        .push(Reason::Retriggered { rule: rule.id.clone(), on_retrigger: Retrigger::Extend });
                    let duration = Duration::from_millis(u64::try_from(own_ms).unwrap_or(0));
                    return timed(duration, now_ms, exclusions, None);
                }
                (Some(_), Retrigger::Escalate) => {
                    reasons.push(Reason::Retriggered {
                        rule: rule.id.clone(),
                        on_retrigger: Retrigger::Escalate,
                    });
                    response.duration
                }
                (None, _) => response.duration,
            };
            if response.escalation.is_empty() {
                return timed(duration.unwrap_or_default(), now_ms, exclusions, None);
            }
            let previous = state
                .escalations
                .get(&rule.id)
                .and_then(|hosts| hosts.get(host))
                .map_or(0, |count| count.current(now_ms));
            let step = response.escalation[(previous as usize).min(response.escalation.len() - 1)];
            let number = previous.saturating_add(1);
            if number > 1 {
                reasons.push(Reason::Escalated {
                    rule: rule.id.clone(),
                    isolation_number: number,
                    duration: step,
                });
            }
            let count = EscalationCount {
                isolations: number,
                last_ms: now_ms,
                window_ms: millis(response.escalation_window),
            };
            timed(step, now_ms, exclusions, Some(count))
        }
    }
}

fn timed(
    duration: Duration,
    now_ms: i64,
    exclusions: crate::decision::Exclusions,
    escalation: Option<EscalationCount>,
) -> Outcome {
    let own_duration_ms = millis(duration);
    Outcome::Isolate {
        isolation: Isolation {
            mode: IsolationMode::Automatic,
            duration: Some(duration),
            deadline_ms: Some(now_ms.saturating_add(own_duration_ms)),
            exclusions,
        },
        own_duration_ms,
        escalation,
    }
}

/// Orders isolations: manual beats automatic, then the later deadline wins.
fn strength(isolation: &Isolation) -> (IsolationMode, i64, u64) {
    (isolation.mode, isolation.deadline_ms.unwrap_or(i64::MIN), isolation.duration.map_or(0, |d| d.as_secs()))
}

#[expect(
    clippy::too_many_arguments,
    reason = "one step of plan(), split out for readability; the arguments are plan's locals"
)]
fn combine<T: AsRef<str>>(
    ruleset: &Ruleset,
    state: &EngineState,
    event: &Event,
    now_ms: i64,
    host_tags: &[T],
    active: Option<&HostIsolation>,
    fired: &[Fired<'_>],
    changes: &mut Vec<Change>,
) -> Option<Decision> {
    if fired.is_empty() {
        return None;
    }
    let rules: Vec<String> = fired.iter().map(|f| f.rule.id.clone()).collect();
    let mut why: Vec<Reason> = fired.iter().flat_map(|f| f.reasons.iter().cloned()).collect();
    let strongest_isolation = fired
        .iter()
        .filter_map(|f| match &f.outcome {
            Outcome::Isolate { isolation, .. } => Some(isolation),
            _ => None,
        })
        .max_by_key(|isolation| strength(isolation));
    let strongest_approval = fired
        .iter()
        .filter_map(|f| match &f.outcome {
            Outcome::Approval(isolation) => Some(isolation),
            _ => None,
        })
        .max_by_key(|isolation| strength(isolation));
    let protected: Vec<String> = host_tags
        .iter()
        .map(AsRef::as_ref)
        .filter(|tag| ruleset.protected_tags.iter().any(|protected| protected == &tag.to_lowercase()))
        .map(str::to_owned)
        .collect();
    let decision = |action: Action, why: Vec<Reason>| Decision {
        host: event.host().to_owned(),
        event_id: event.id().to_owned(),
        action,
        rules: rules.clone(),
        why,
        isolated_by: BTreeMap::new(),
    };

    let Some(strongest) = strongest_isolation else {
        let proposal = strongest_approval?.clone();
        if !protected.is_empty() {
            why.push(Reason::Protected { tags: protected });
        }
        return Some(decision(Action::RequestApproval(proposal), why));
    };
    let mut isolation = strongest.clone();
    if let Some(active) = active {
        let current = Isolation {
            mode: active.mode,
            duration: None,
            deadline_ms: active.deadline_ms,
            exclusions: isolation.exclusions.clone(),
        };
        if strength(&current) > strength(&isolation) {
            isolation.mode = active.mode;
            isolation.deadline_ms = active.deadline_ms;
            isolation.duration = active.deadline_ms.map(|deadline| {
                Duration::from_millis(u64::try_from(deadline.saturating_sub(now_ms)).unwrap_or(0))
            });
            why.push(Reason::CurrentIsolationKept { mode: active.mode, deadline_ms: active.deadline_ms });
        }
    }
    let proposal = |isolation: &Isolation| Isolation { deadline_ms: None, ..isolation.clone() };
    if !protected.is_empty() {
        why.push(Reason::Protected { tags: protected });
        return Some(decision(Action::RequestApproval(proposal(strongest)), why));
    }
    let new_host_isolation = active.is_none();
    if let (true, Some(ceiling)) = (new_host_isolation, ruleset.policy.max_automatic) {
        let oldest = now_ms.saturating_sub(millis(ceiling.within));
        let recent = state.recent_isolations.iter().filter(|&&at| at > oldest).count();
        if recent >= ceiling.count as usize {
            why.push(Reason::CeilingReached { count: ceiling.count, within: ceiling.within });
            return Some(decision(Action::RequestApproval(proposal(strongest)), why));
        }
    }
    if let (true, Some(ceiling)) = (new_host_isolation, ruleset.policy.max_automatic) {
        changes.push(Change::NewIsolation { at: now_ms, keep: ceiling.count as usize });
    }
    let mut isolated_by: BTreeMap<String, i64> =
        active.map(|active| active.isolated_by.clone()).unwrap_or_default();
    for f in fired {
        if let Outcome::Isolate { own_duration_ms, escalation, .. } = &f.outcome {
            isolated_by.insert(f.rule.id.clone(), *own_duration_ms);
            if let Some(count) = escalation {
                changes.push(Change::Escalation {
                    rule: f.rule.id.clone(),
                    host: event.host().to_owned(),
                    count: *count,
                });
            }
        }
    }
    Some(Decision { isolated_by, ..decision(Action::Isolate(isolation), why) })
}

/// Makes room for one more threshold group of a rule that has [`MAX_THRESHOLD_GROUPS`]: drops
/// the groups whose window has passed, and if none has, the one matched least recently. Events
/// may name any group they like; this bounds the memory a flood of made-up ones can take, at the
/// cost of forgetting the stalest partial count. Runs only when the rule is full.
/// Returns the groups it dropped.
fn make_room(groups: &mut HashMap<String, ThresholdWindow>, now_ms: i64) -> Vec<String> {
    let mut dropped = Vec::new();
    groups.retain(|group, window| {
        let keep = window.hits.back().is_some_and(|&last| last > now_ms.saturating_sub(window.within_ms));
        if !keep {
            dropped.push(group.clone());
        }
        keep
    });
    if groups.len() < MAX_THRESHOLD_GROUPS {
        return dropped;
    }
    let stalest = groups
        .iter()
        .min_by_key(|(_, window)| window.hits.back().copied().unwrap_or(i64::MIN))
        .map(|(group, _)| group.clone());
    if let Some(stalest) = stalest {
        groups.remove(&stalest);
        dropped.push(stalest);
    }
    dropped
}

fn apply(state: &mut EngineState, change: Change) {
    match change {
        Change::ThresholdHit { rule, group, at, within_ms, keep } => {
            let groups = state.thresholds.entry(rule.clone()).or_default();
            if !groups.contains_key(&group) && groups.len() >= MAX_THRESHOLD_GROUPS {
                for pushed_out in make_room(groups, at) {
                    state.touched.thresholds.insert((rule.clone(), pushed_out));
                }
            }
            state.touched.thresholds.insert((rule, group.clone()));
            let window = groups.entry(group).or_insert_with(|| ThresholdWindow { hits: VecDeque::new(), within_ms });
            window.within_ms = within_ms;
            let oldest = at.saturating_sub(within_ms);
            window.hits.retain(|&hit| hit > oldest);
            window.hits.push_back(at);
            while window.hits.len() > keep {
                window.hits.pop_front();
            }
        }
        Change::ThresholdFired { rule, group } => {
            state.touched.thresholds.insert((rule.clone(), group.clone()));
            if let Some(groups) = state.thresholds.get_mut(&rule) {
                groups.remove(&group);
                if groups.is_empty() {
                    state.thresholds.remove(&rule);
                }
            }
        }
        Change::Escalation { rule, host, count } => {
            state.touched.escalations.insert((rule.clone(), host.clone()));
            state.escalations.entry(rule).or_default().insert(host, count);
        }
        Change::NewIsolation { at, keep } => {
            state.touched.recent = true;
            state.recent_isolations.push_back(at);
            while state.recent_isolations.len() > keep {
                state.recent_isolations.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(state: &mut EngineState, group: &str, at: i64) {
        let change =
            Change::ThresholdHit { rule: "r".into(), group: group.into(), at, within_ms: 1_000_000, keep: 2 };
        apply(state, change);
    }

    #[test]
    fn a_flood_of_threshold_groups_stays_bounded_and_pushes_out_the_stalest() {
        let mut state = EngineState::default();
        for i in 0..MAX_THRESHOLD_GROUPS {
            hit(&mut state, &format!("made-up-{i}"), i64::try_from(i).unwrap());
        }
        hit(&mut state, "made-up-0", 100_000);
        // Full, all within their window: a new group pushes out the one matched least recently.
        hit(&mut state, "new", 100_001);
        let groups = &state.thresholds["r"];
        assert_eq!(groups.len(), MAX_THRESHOLD_GROUPS);
        assert!(groups.contains_key("new") && groups.contains_key("made-up-0"));
        assert!(!groups.contains_key("made-up-1"), "the stalest (last matched at 1) went");
        assert!(groups.contains_key("made-up-2"));
        // Much later every old window has passed: they all go at once to make room.
        hit(&mut state, "later", 5_000_000);
        assert_eq!(state.thresholds["r"].len(), 1);
    }
}
