//! The chaos soak's invariant checker: compares what cordon decided (its audit trails), what each
//! agent applied (theirs) and what the kernel let through (the fleet's watchers), and counts what
//! must never happen. Pure: it takes the timelines the soak collected and does no I/O.

use std::collections::HashMap;

use crate::fleet::Sample;

/// How close to a deadline a lift counts as on time, for the watchers' resolution.
pub const SAMPLE_SLACK_MS: i64 = 300;
/// A lift later than this after its deadline is late.
pub const LATE_MS: i64 = 1_000;
/// An isolation still undelivered after this much time with the service, the broker and the
/// host's agent all working is lost.
pub const HEALTHY_DELIVERY_MS: i64 = 10_000;

/// One transition of a host in cordon's audit trail.
#[derive(Clone, Debug)]
pub struct CordonStep {
    pub at_ms: i64,
    pub to: String,
    pub generation: u64,
}

/// One entry of an agent's audit trail.
#[derive(Clone, Debug)]
pub struct AgentStep {
    pub at_ms: i64,
    /// `isolated`, `updated`, `released`, `expired`, `restored`, ...
    pub event: String,
    pub command_generation: Option<u64>,
    pub expires_at_ms: Option<i64>,
}

/// Everything the soak saw of one host.
#[derive(Clone, Debug, Default)]
pub struct HostTimeline {
    pub host: String,
    pub cordon: Vec<CordonStep>,
    pub agent: Vec<AgentStep>,
    pub samples: Vec<Sample>,
    /// When the soak, as an operator, released this host.
    pub operator_releases: Vec<i64>,
    /// When this host's agent was not running (killed until restarted), as `[from, to)`.
    pub agent_down: Vec<(i64, i64)>,
    /// Whether, at the end, cordon, the agent and the kernel all said released.
    pub released_at_end: bool,
}

/// What the checker counts; every field but `decided`, `applied` and `undelivered_in_faults`
/// must be 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    /// Isolations cordon decided (generations it moved a host to `isolating` at).
    pub decided: usize,
    /// Isolations agents applied for a cordon command (`isolated` or `updated` with its generation).
    pub applied: usize,
    /// Decided, never applied, and superseded only while something was down (not a failure: the
    /// isolation ended, by its deadline or an operator, before it could be delivered).
    pub undelivered_in_faults: usize,
    /// Decided and never applied although the service, broker and agent all worked long enough.
    pub lost: usize,
    /// One command applied twice by an agent.
    pub applied_twice: usize,
    /// Traffic got through while an agent's isolation was in force, before its deadline and with
    /// no operator release.
    pub lifted_early: usize,
    /// Lifted later than [`LATE_MS`] after the deadline, with the host's agent running.
    pub lifted_late_agent_alive: usize,
    /// The same, with the agent down at the deadline (the kernel lifts by itself: still a fault).
    pub lifted_late_agent_down: usize,
    /// Hosts not released everywhere at the end.
    pub stuck_at_end: usize,
    /// One line per violation, for the report.
    pub violations: Vec<String>,
}

/// Spans `[from, to)` of epoch milliseconds.
pub type Spans = [(i64, i64)];

fn overlaps(spans: &Spans, from: i64, to: i64) -> bool {
    spans.iter().any(|&(a, b)| a < to && from < b)
}

/// The longest stretch of `[from, to)` that none of `spans` covers.
fn longest_clear_stretch(spans: &[(i64, i64)], from: i64, to: i64) -> i64 {
    let mut covered: Vec<(i64, i64)> =
        spans.iter().filter(|&&(a, b)| a < to && from < b).map(|&(a, b)| (a.max(from), b.min(to))).collect();
    covered.sort_unstable();
    let (mut longest, mut cursor) = (0, from);
    for (a, b) in covered {
        longest = longest.max(a - cursor);
        cursor = cursor.max(b);
    }
    longest.max(to - cursor)
}

/// An agent's isolation in force (epoch ms): from its application to the agent's next release,
/// with the deadline its latest change gave it.
#[derive(Debug)]
struct Enforced {
    from: i64,
    until: Option<i64>,
    deadline: Option<i64>,
}

fn enforced_spans(agent: &[AgentStep]) -> Vec<Enforced> {
    let mut spans: Vec<Enforced> = Vec::new();
    let mut open: Option<Enforced> = None;
    for step in agent {
        match step.event.as_str() {
            "isolated" | "updated" => match open.as_mut() {
                Some(span) => span.deadline = step.expires_at_ms,
                None => open = Some(Enforced { from: step.at_ms, until: None, deadline: step.expires_at_ms }),
            },
            "released" | "expired" => {
                if let Some(mut span) = open.take() {
                    span.until = Some(step.at_ms);
                    spans.push(span);
                }
            }
            _ => {}
        }
    }
    spans.extend(open);
    spans
}

/// Checks every host; `unhealthy` are the spans when the service or the broker was not working
/// (each host's own agent downtime is in its timeline).
pub fn check(hosts: &[HostTimeline], unhealthy: &Spans, end_ms: i64) -> Figures {
    let mut figures = Figures::default();
    for host in hosts {
        check_delivery(host, unhealthy, end_ms, &mut figures);
        check_kernel(host, &mut figures);
        if !host.released_at_end {
            figures.stuck_at_end += 1;
            figures.violations.push(format!("{}: not released everywhere at the end", host.host));
        }
    }
    figures
}

fn check_delivery(host: &HostTimeline, unhealthy: &Spans, end_ms: i64, figures: &mut Figures) {
    let mut applications: HashMap<u64, usize> = HashMap::new();
    for step in &host.agent {
        if let ("isolated" | "updated", Some(generation)) = (step.event.as_str(), step.command_generation) {
            *applications.entry(generation).or_default() += 1;
            figures.applied += 1;
        }
    }
    for (generation, count) in &applications {
        if *count > 1 {
            figures.applied_twice += 1;
            figures.violations.push(format!("{}: command {generation} applied {count} times", host.host));
        }
    }
    let mut down: Vec<(i64, i64)> = unhealthy.to_vec();
    // An agent restarted needs a moment to connect again.
    down.extend(host.agent_down.iter().map(|&(a, b)| (a, b + 5_000)));
    let mut seen = std::collections::HashSet::new();
    for (index, step) in host.cordon.iter().enumerate() {
        // One decision per generation (cordon notes the agent's reports as steps too).
        if step.to != "isolating" || !seen.insert(step.generation) {
            continue;
        }
        figures.decided += 1;
        if applications.contains_key(&step.generation) {
            continue;
        }
        let ended = host.cordon[index + 1..].iter().find(|later| later.generation != step.generation);
        let until = ended.map_or(end_ms, |later| later.at_ms);
        if longest_clear_stretch(&down, step.at_ms, until) >= HEALTHY_DELIVERY_MS {
            figures.lost += 1;
            figures.violations.push(format!(
                "{}: isolation {} decided at {} never applied, with {} s of everything working",
                host.host,
                step.generation,
                step.at_ms,
                longest_clear_stretch(&down, step.at_ms, until) / 1_000
            ));
        } else {
            figures.undelivered_in_faults += 1;
        }
    }
}

fn check_kernel(host: &HostTimeline, figures: &mut Figures) {
    let spans = enforced_spans(&host.agent);
    for (index, span) in spans.iter().enumerate() {
        let next_from = spans.get(index + 1).map_or(i64::MAX, |next| next.from);
        let deadline = span.deadline.unwrap_or(i64::MAX);
        // Refused from the application until the deadline, unless an operator released it.
        let protected_until = deadline.min(span.until.unwrap_or(i64::MAX)).saturating_sub(SAMPLE_SLACK_MS);
        let early = host.samples.iter().find(|s| {
            s.connected && s.at_ms > span.from + SAMPLE_SLACK_MS && s.at_ms < protected_until.min(next_from)
        });
        if let Some(sample) = early {
            let released_by_operator =
                host.operator_releases.iter().any(|&at| at > span.from && at <= sample.at_ms);
            if !released_by_operator {
                figures.lifted_early += 1;
                figures.violations.push(format!(
                    "{}: traffic got through at {} while isolated since {} (deadline {:?})",
                    host.host, sample.at_ms, span.from, span.deadline
                ));
            }
        }
        let Some(deadline) = span.deadline else { continue };
        if span.until.is_some_and(|until| until < deadline - SAMPLE_SLACK_MS) || next_from <= deadline + LATE_MS {
            // Released before its deadline (checked above), or isolated again at once.
            continue;
        }
        let lifted = host
            .samples
            .iter()
            .find(|s| s.connected && s.at_ms >= deadline - SAMPLE_SLACK_MS && s.at_ms < next_from)
            .map(|s| s.at_ms);
        let Some(lifted) = lifted else { continue };
        if lifted > deadline + LATE_MS {
            let agent_down = overlaps(&host.agent_down, deadline - LATE_MS, lifted);
            if agent_down {
                figures.lifted_late_agent_down += 1;
            } else {
                figures.lifted_late_agent_alive += 1;
            }
            figures.violations.push(format!(
                "{}: lifted {} ms after its deadline {deadline}{}",
                host.host,
                lifted - deadline,
                if agent_down { " (agent down)" } else { "" }
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{check, AgentStep, CordonStep, HostTimeline, Sample};

    fn decided(at_ms: i64, generation: u64) -> CordonStep {
        CordonStep { at_ms, to: "isolating".into(), generation }
    }

    fn applied(at_ms: i64, generation: u64, expires_at_ms: Option<i64>) -> AgentStep {
        AgentStep { at_ms, event: "isolated".into(), command_generation: Some(generation), expires_at_ms }
    }

    fn expired(at_ms: i64) -> AgentStep {
        AgentStep { at_ms, event: "expired".into(), command_generation: None, expires_at_ms: None }
    }

    /// Samples every 200 ms over `[from, to)`, connected outside `refused`.
    fn samples(from: i64, to: i64, refused: (i64, i64)) -> Vec<Sample> {
        (from..to)
            .step_by(200)
            .map(|at_ms| Sample { at_ms, connected: !(refused.0..refused.1).contains(&at_ms) })
            .collect()
    }

    fn timed_isolation() -> HostTimeline {
        HostTimeline {
            host: "h".into(),
            cordon: vec![decided(1_000, 1)],
            agent: vec![applied(1_100, 1, Some(6_000)), expired(6_050)],
            samples: samples(0, 20_000, (1_100, 6_000)),
            released_at_end: true,
            ..HostTimeline::default()
        }
    }

    #[test]
    fn a_timed_isolation_applied_once_and_lifted_on_time_breaks_nothing() {
        let figures = check(&[timed_isolation()], &[], 20_000);
        assert_eq!((figures.decided, figures.applied), (1, 1));
        assert!(figures.violations.is_empty(), "{:?}", figures.violations);
    }

    #[test]
    fn an_isolation_never_applied_while_everything_worked_is_lost() {
        let mut host = timed_isolation();
        host.agent.clear();
        host.samples = samples(0, 20_000, (0, 0));
        let figures = check(&[host.clone()], &[], 20_000);
        assert_eq!(figures.lost, 1, "{figures:?}");
        // The same while the broker was stopped throughout: not delivered, not lost.
        let figures = check(&[host], &[(0, 20_000)], 20_000);
        assert_eq!((figures.lost, figures.undelivered_in_faults), (0, 1), "{figures:?}");
    }

    #[test]
    fn one_command_applied_twice_is_counted_and_one_decision_noted_twice_is_one() {
        let mut host = timed_isolation();
        host.cordon.push(CordonStep { at_ms: 1_050, to: "isolating".into(), generation: 1 });
        assert_eq!(check(&[host.clone()], &[], 20_000).decided, 1);
        host.agent.insert(1, applied(1_200, 1, Some(6_000)));
        assert_eq!(check(&[host], &[], 20_000).applied_twice, 1);
    }

    #[test]
    fn traffic_before_the_deadline_is_an_early_lift_unless_an_operator_released() {
        let mut host = timed_isolation();
        host.samples = samples(0, 20_000, (1_100, 4_000));
        assert_eq!(check(&[host.clone()], &[], 20_000).lifted_early, 1);
        host.operator_releases.push(3_900);
        assert_eq!(check(&[host], &[], 20_000).lifted_early, 0);
    }

    #[test]
    fn a_lift_two_seconds_late_is_late_and_says_whether_the_agent_was_running() {
        let mut host = timed_isolation();
        host.samples = samples(0, 20_000, (1_100, 8_000));
        let figures = check(&[host.clone()], &[], 20_000);
        assert_eq!((figures.lifted_late_agent_alive, figures.lifted_late_agent_down), (1, 0), "{figures:?}");
        host.agent_down.push((5_000, 9_000));
        let figures = check(&[host], &[], 20_000);
        assert_eq!((figures.lifted_late_agent_alive, figures.lifted_late_agent_down), (0, 1), "{figures:?}");
    }

    #[test]
    fn a_host_not_released_at_the_end_is_stuck() {
        let mut host = timed_isolation();
        host.released_at_end = false;
        assert_eq!(check(&[host], &[], 20_000).stuck_at_end, 1);
    }
}
