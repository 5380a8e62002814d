//! Rules as data-tested artefacts: runs the `tests:` written beside rules (and directory test
//! suites) through the engine and compares the decisions with the expected ones.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::config::{ExpectedAction, ExpectedDecision, Policy, Rule, TestCase};
use crate::decision::{Action, Decision};
use crate::diagnostic::{Diagnostic, Position};
use crate::duration::format_duration;
use crate::event::Event;
use crate::ruleset::Ruleset;
use crate::state::{EngineState, HostIsolations};

/// The source text of one file, named as it should appear in diagnostics.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

/// A validated rules directory: every rule (enabled or not), the policy, the compiled rule set and the tests.
#[derive(Debug, Clone)]
pub struct RuleDirectory {
    rules: Vec<Rule>,
    policy: Policy,
    ruleset: Ruleset,
    directory_tests: Vec<TestCase>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestResult {
    Passed,
    /// Each entry is one mismatch, in words.
    Failed(Vec<String>),
    Skipped(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    /// `FILE:LINE:COLUMN` of the test.
    pub location: String,
    /// The rule the test belongs to; None for a directory test suite.
    pub rule: Option<String>,
    pub name: String,
    pub result: TestResult,
}

impl RuleDirectory {
    /// Validates every rule file and the policy, and compiles the rule set. Returns every problem
    /// of every file at once, sorted by file, line and column.
    pub fn load(rule_files: &[SourceFile], policy: Option<&SourceFile>) -> Result<Self, Vec<Diagnostic>> {
        let mut diagnostics = Vec::new();
        let mut rules = Vec::new();
        let mut directory_tests = Vec::new();
        // The policy first: rules are compiled with its placeholders and keyword fields.
        let policy = match policy.map(|file| crate::config::parse_policy(&file.name, &file.text)) {
            None => Some(Policy::default()),
            Some(Ok(policy)) => Some(policy),
            Some(Err(problems)) => {
                diagnostics.extend(problems);
                None
            }
        };
        for file in rule_files {
            match crate::config::parse_rule_file_with(&file.name, &file.text, policy.as_ref()) {
                Ok(parsed) => {
                    rules.extend(parsed.rules);
                    directory_tests.extend(parsed.directory_tests);
                }
                Err(problems) => diagnostics.extend(problems),
            }
        }
        let policy = policy.unwrap_or_default();
        if !diagnostics.is_empty() {
            diagnostics.extend(duplicate_ids(rule_files));
            Diagnostic::sort(&mut diagnostics);
            return Err(diagnostics);
        }
        let ruleset = Ruleset::compile(rules.clone(), policy.clone());
        if let Err(mut problems) = ruleset {
            Diagnostic::sort(&mut problems);
            return Err(problems);
        }
        let ruleset = ruleset.map_err(|_| Vec::new())?;
        Ok(Self { rules, policy, ruleset, directory_tests })
    }

    /// The rule set of the enabled rules.
    #[must_use]
    pub fn ruleset(&self) -> &Ruleset {
        &self.ruleset
    }

    /// Every rule, enabled or not, in file order.
    #[must_use]
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    #[must_use]
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    #[must_use]
    pub fn test_count(&self) -> usize {
        self.rules.iter().map(|rule| rule.tests.len()).sum::<usize>() + self.directory_tests.len()
    }

    /// Runs every test: a rule's tests against that rule alone (with the directory's policy), a
    /// directory suite's tests against all enabled rules. Tests of disabled rules are skipped.
    #[must_use]
    pub fn run_tests(&self) -> Vec<TestOutcome> {
        let mut outcomes = Vec::new();
        for rule in &self.rules {
            let alone = Ruleset::compile(vec![rule.clone()], self.policy.clone());
            for test in &rule.tests {
                let result = match (&alone, rule.enabled) {
                    (_, false) => TestResult::Skipped("the rule is disabled".to_owned()),
                    (Ok(ruleset), true) => run_test(ruleset, test),
                    (Err(_), true) => TestResult::Skipped("the rule does not compile".to_owned()),
                };
                outcomes.push(TestOutcome {
                    location: test.location(),
                    rule: Some(rule.id.clone()),
                    name: test.name.clone(),
                    result,
                });
            }
        }
        for test in &self.directory_tests {
            outcomes.push(TestOutcome {
                location: test.location(),
                rule: None,
                name: test.name.clone(),
                result: run_test(&self.ruleset, test),
            });
        }
        outcomes
    }
}

/// Duplicate rule ids across the files, found from the raw documents so that files with other
/// errors take part.
fn duplicate_ids(rule_files: &[SourceFile]) -> Vec<Diagnostic> {
    let mut first_seen: HashMap<String, (String, Position)> = HashMap::new();
    let mut diagnostics = Vec::new();
    for file in rule_files {
        for (id, position) in crate::config::rule_ids(&file.text) {
            match first_seen.get(&id) {
                Some((first_file, first)) => diagnostics
                    .push(crate::ruleset::duplicate_id(&id, &file.name, position, first_file, *first)),
                None => {
                    first_seen.insert(id, (file.name.clone(), position));
                }
            }
        }
    }
    diagnostics
}

/// Replays the test's events in order (each event's `time` is now) against a fresh state and
/// compares the decisions with the expected ones. Host tags come from the test's `host_tags`, or
/// else from the event's `device.groups[].name`.
#[must_use]
pub fn run_test(ruleset: &Ruleset, test: &TestCase) -> TestResult {
    let decisions = replay(ruleset, test, Clone::clone);
    let mut mismatches = Vec::new();
    // `cordon serve` parses events through the rule set's projection: it must decide the same.
    let projected = replay(ruleset, test, |event| {
        Event::parse_projected_as(&event.fields().to_string(), ruleset.projection(), test.format)
            .expect("an event that parsed whole parses projected")
    });
    if projected != decisions {
        mismatches.push(format!(
            "events parsed through the rule set's projection (as `cordon serve` parses them) decided \
             differently: {} decision(s) instead of {}",
            projected.len(),
            decisions.len()
        ));
    }
    if decisions.len() == test.expect.len() {
        for (number, (expected, decision)) in test.expect.iter().zip(&decisions).enumerate() {
            compare(number + 1, expected, decision, &mut mismatches);
        }
    } else {
        let mut message = format!("expected {} decision(s), got {}", test.expect.len(), decisions.len());
        for decision in &decisions {
            let _ = write!(message, "\n      got: {}", describe_decision(decision));
        }
        mismatches.push(message);
    }
    if mismatches.is_empty() {
        TestResult::Passed
    } else {
        TestResult::Failed(mismatches)
    }
}

/// The decisions of the test's events, each as `prepare` makes it, against a fresh state.
fn replay(ruleset: &Ruleset, test: &TestCase, prepare: impl Fn(&Event) -> Event) -> Vec<Decision> {
    let (mut state, mut isolations) = (EngineState::new(), HostIsolations::new());
    let mut decisions = Vec::new();
    for event in &test.events {
        let event = prepare(event);
        let tags = test.host_tags.get(event.host()).cloned().unwrap_or_else(|| event.device_group_names());
        decisions.extend(isolations.evaluate(ruleset, &mut state, &event, event.time_ms(), &tags));
    }
    decisions
}

fn compare(number: usize, expected: &ExpectedDecision, decision: &Decision, mismatches: &mut Vec<String>) {
    let mut differences = Vec::new();
    let action = match expected.action {
        ExpectedAction::Isolate => "isolate",
        ExpectedAction::RequestApproval => "request_approval",
    };
    if action != decision.action.name() {
        differences.push(format!("action: expected {action}, got {}", decision.action.name()));
    }
    if let Some(event) = &expected.event {
        if *event != decision.event_id {
            differences.push(format!("event: expected {event}, got {}", decision.event_id));
        }
    }
    if let Some(host) = &expected.host {
        if *host != decision.host {
            differences.push(format!("host: expected {host}, got {}", decision.host));
        }
    }
    let isolation = decision.action.isolation();
    if let Some(mode) = expected.mode {
        if mode != isolation.mode {
            differences.push(format!(
                "mode: expected {}, got {}",
                mode.name(),
                isolation.mode.name()
            ));
        }
    }
    if let Some(duration) = expected.duration {
        if duration != isolation.duration {
            differences.push(format!(
                "duration: expected {}, got {}",
                optional_duration(duration),
                optional_duration(isolation.duration)
            ));
        }
    }
    if let Some(deadline) = expected.deadline_ms {
        if Some(deadline) != isolation.deadline_ms {
            differences.push(format!(
                "deadline_ms: expected {deadline}, got {}",
                isolation.deadline_ms.map_or_else(|| "none".to_owned(), |d| d.to_string())
            ));
        }
    }
    if let Some(rules) = &expected.rules {
        if *rules != decision.rules {
            differences.push(format!(
                "rules: expected [{}], got [{}]",
                rules.join(", "),
                decision.rules.join(", ")
            ));
        }
    }
    for kind in &expected.why {
        if !decision.why.iter().any(|reason| reason.kind() == *kind) {
            let got: Vec<&str> = decision.why.iter().map(|reason| reason.kind().name()).collect();
            differences.push(format!("why: expected a `{}` reason, got [{}]", kind.name(), got.join(", ")));
        }
    }
    if !differences.is_empty() {
        mismatches.push(format!(
            "decision {number} (expected at line {}): {}\n      got: {}",
            expected.position.line,
            differences.join("; "),
            describe_decision(decision)
        ));
    }
}

fn optional_duration(duration: Option<std::time::Duration>) -> String {
    duration.map_or_else(|| "none".to_owned(), format_duration)
}

/// One line describing a decision, e.g.
/// `e3 on ws-7: isolate automatic for 4h until 1700014400000 by [credential-dumping] (matched, threshold_reached)`.
#[must_use]
pub fn describe_decision(decision: &Decision) -> String {
    let isolation = decision.action.isolation();
    let mut line = format!(
        "{} on {}: {} {}",
        decision.event_id,
        decision.host,
        decision.action.name(),
        isolation.mode.name()
    );
    if let Some(duration) = isolation.duration {
        let _ = write!(line, " for {}", format_duration(duration));
    }
    if let (Action::Isolate(_), Some(deadline)) = (&decision.action, isolation.deadline_ms) {
        let _ = write!(line, " until {deadline}");
    }
    let reasons: Vec<&str> = decision.why.iter().map(|reason| reason.kind().name()).collect();
    let _ = write!(line, " by [{}] ({})", decision.rules.join(", "), reasons.join(", "));
    line
}
