//! The engine's API as the orchestrator will use it: dry runs change nothing, state survives a
//! JSON round trip, prune forgets what it should, and a host's isolation is judged as its owner
//! passes it in.

use rules::{
    dry_run, dry_run_rule, evaluate, Action, EngineState, Event, HostIsolation, HostIsolations, IsolationMode,
    Reason, RuleDirectory, SourceFile,
};
use std::collections::BTreeMap;
use serde_json::json;

const RULES: &str = r"
id: three-strikes
title: third match within a minute isolates for an hour
detection: {sel: {finding_info.title: strike}, condition: sel}
threshold: {count: 3, within: 1m}
response: {isolate: {mode: automatic, duration: 1h}, on_retrigger: keep}
---
id: worm
title: worms are isolated manually
detection: {sel: {finding_info.title|contains: worm}, condition: sel}
response: {isolate: {mode: manual}}
";

fn directory() -> RuleDirectory {
    RuleDirectory::load(&[SourceFile { name: "rules.yaml".into(), text: RULES.into() }], None).unwrap()
}

fn event(id: &str, time: i64, title: &str) -> Event {
    Event::from_json(json!({"time": time, "severity_id": 3, "device": {"uid": "h1"}, "finding_info": {"uid": id, "title": title}})).unwrap()
}

const NO_TAGS: &[&str] = &[];

#[test]
fn a_dry_run_reports_threshold_progress_and_changes_nothing() {
    let directory = directory();
    let ruleset = directory.ruleset();
    let mut state = EngineState::new();
    assert!(evaluate(ruleset, &mut state, &event("e1", 0, "strike"), None, 0, NO_TAGS).is_empty());
    let before = state.clone();
    let dry = dry_run(ruleset, &state, &event("e2", 1000, "strike"), None, 1000, NO_TAGS);
    assert_eq!(state, before);
    assert!(!dry.duplicate);
    assert!(dry.decisions.is_empty());
    assert_eq!(dry.verdicts.len(), 1);
    assert_eq!(dry.verdicts[0].rule, "three-strikes");
    assert_eq!(dry.verdicts[0].threshold, Some((2, 3)));
    assert!(!dry.verdicts[0].fired);
    assert!(dry_run(ruleset, &state, &event("e1", 0, "strike"), None, 0, NO_TAGS).duplicate);
}

#[test]
fn a_single_rule_dry_run_answers_what_that_rule_would_do() {
    let directory = directory();
    let state = EngineState::new();
    let dry = dry_run_rule(directory.ruleset(), "worm", &state, &event("e1", 0, "worm strike"), None, 0, NO_TAGS)
        .unwrap();
    assert_eq!(dry.decisions.len(), 1);
    assert_eq!(dry.decisions[0].rules, vec!["worm".to_owned()], "only the named rule is evaluated");
    assert!(
        matches!(&dry.decisions[0].action, Action::Isolate(isolation) if isolation.mode == IsolationMode::Manual)
    );
    assert!(
        dry_run_rule(directory.ruleset(), "no-such-rule", &state, &event("e1", 0, "x"), None, 0, NO_TAGS).is_none()
    );
}

#[test]
fn state_survives_a_json_round_trip_mid_threshold() {
    let directory = directory();
    let ruleset = directory.ruleset();
    let mut state = EngineState::new();
    evaluate(ruleset, &mut state, &event("e1", 0, "strike"), None, 0, NO_TAGS);
    evaluate(ruleset, &mut state, &event("e2", 1000, "strike"), None, 1000, NO_TAGS);
    let mut restored: EngineState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    assert!(
        evaluate(ruleset, &mut restored, &event("e2", 1000, "strike"), None, 1000, NO_TAGS).is_empty(),
        "still a duplicate"
    );
    let decisions = evaluate(ruleset, &mut restored, &event("e3", 2000, "strike"), None, 2000, NO_TAGS);
    assert_eq!(decisions.len(), 1);
    assert!(decisions[0]
        .why
        .iter()
        .any(|reason| matches!(reason, Reason::ThresholdReached { count: 3, .. })));
}

#[test]
fn release_makes_the_next_match_a_new_isolation() {
    let directory = directory();
    let ruleset = directory.ruleset();
    let (mut state, mut isolations) = (EngineState::new(), HostIsolations::new());
    assert_eq!(isolations.evaluate(ruleset, &mut state, &event("e1", 0, "worm"), 0, NO_TAGS).len(), 1);
    let kept = isolations.in_force("h1", 0).unwrap();
    assert_eq!((kept.mode, kept.deadline_ms), (IsolationMode::Manual, None));
    assert_eq!(kept.isolated_by, BTreeMap::from([("worm".to_owned(), 0)]));
    assert!(
        isolations.evaluate(ruleset, &mut state, &event("e2", 1000, "worm"), 1000, NO_TAGS).is_empty(),
        "already isolated manually"
    );
    isolations.release("h1");
    assert_eq!(isolations.in_force("h1", 2000), None);
    assert_eq!(isolations.evaluate(ruleset, &mut state, &event("e3", 2000, "worm"), 2000, NO_TAGS).len(), 1);
}

#[test]
fn the_engine_judges_a_match_by_the_isolation_its_owner_passes_and_keeps_no_copy() {
    let directory = directory();
    let ruleset = directory.ruleset();
    let mut state = EngineState::new();
    // Isolated by the rule itself: a manual rule matching again changes nothing.
    let by_worm = HostIsolation {
        mode: IsolationMode::Manual,
        deadline_ms: None,
        isolated_by: BTreeMap::from([("worm".to_owned(), 0)]),
    };
    assert!(evaluate(ruleset, &mut state, &event("e1", 0, "worm"), Some(&by_worm), 0, NO_TAGS).is_empty());
    // The same event id again, with no isolation passed: a duplicate, whatever the host's state.
    assert!(evaluate(ruleset, &mut state, &event("e1", 0, "worm"), None, 0, NO_TAGS).is_empty());
    // Isolated by an operator until 10 s: the rule isolates, and says who is behind it now.
    let by_operator = HostIsolation {
        mode: IsolationMode::Automatic,
        deadline_ms: Some(10_000),
        isolated_by: BTreeMap::from([("operator o".to_owned(), 0)]),
    };
    let decisions = evaluate(ruleset, &mut state, &event("e2", 1000, "worm"), Some(&by_operator), 1000, NO_TAGS);
    assert!(matches!(&decisions[0].action, Action::Isolate(isolation) if isolation.mode == IsolationMode::Manual));
    let after = HostIsolation::decided(&decisions[0]).unwrap();
    assert_eq!(after.isolated_by, BTreeMap::from([("operator o".to_owned(), 0), ("worm".to_owned(), 0)]));
    // A manual isolation by someone else is never weakened by a timed rule.
    let manual = HostIsolation { mode: IsolationMode::Manual, ..by_operator.clone() };
    for id in ["e3", "e4"] {
        evaluate(ruleset, &mut state, &event(id, 2000, "strike"), Some(&manual), 2000, NO_TAGS);
    }
    let decisions = evaluate(ruleset, &mut state, &event("e5", 2000, "strike"), Some(&manual), 2000, NO_TAGS);
    assert!(matches!(&decisions[0].action, Action::Isolate(isolation) if isolation.mode == IsolationMode::Manual));
    assert!(decisions[0].why.iter().any(|reason| matches!(reason, Reason::CurrentIsolationKept { .. })));
    // An isolation whose deadline has passed is not in force: the engine ignores it.
    let ended = HostIsolation { isolated_by: BTreeMap::from([("worm".to_owned(), 0)]), ..by_operator };
    assert_eq!(evaluate(ruleset, &mut state, &event("e6", 20_000, "worm"), Some(&ended), 20_000, NO_TAGS).len(), 1);
}

#[test]
fn prune_forgets_what_no_longer_matters() {
    let directory = directory();
    let ruleset = directory.ruleset();
    let (mut state, mut isolations) = (EngineState::new(), HostIsolations::new());
    for (id, time) in [("e1", 0), ("e2", 1000), ("e3", 2000)] {
        isolations.evaluate(ruleset, &mut state, &event(id, time, "strike"), time, NO_TAGS);
    }
    assert_eq!(isolations.in_force("h1", 2000).map(|isolation| isolation.mode), Some(IsolationMode::Automatic));
    isolations.evaluate(ruleset, &mut state, &event("e4", 3000, "strike"), 3000, NO_TAGS);
    let mut pruned = state.clone();
    pruned.prune(3000, 600_000);
    assert_eq!(pruned, state, "nothing has expired yet");
    pruned.prune(2000 + 3_600_000 + 60_001, 600_000);
    assert_ne!(pruned, state, "e4's threshold window has passed");
    isolations.prune(2000 + 3_600_000 + 1);
    assert_eq!(isolations.in_force("h1", 0), None, "the isolation has ended and is forgotten");
    assert!(
        evaluate(ruleset, &mut pruned, &event("e1", 9_999_999, "strike"), None, 9_999_999, NO_TAGS).is_empty(),
        "dedup is kept"
    );
}

/// Applies the state's changes to `store` (a key-value store, as the orchestrator's sled tree).
fn persist(state: &mut EngineState, store: &mut std::collections::BTreeMap<Vec<u8>, Vec<u8>>) -> usize {
    let changes = state.take_changes();
    let count = changes.len();
    for (key, value) in changes {
        match value {
            Some(value) => store.insert(key, value),
            None => store.remove(&key),
        };
    }
    count
}

fn host_event(host: &str, id: &str, time: i64, title: &str) -> Event {
    Event::from_json(json!({"time": time, "severity_id": 3, "device": {"uid": host}, "finding_info": {"uid": id, "title": title}})).unwrap()
}

#[test]
fn the_state_persisted_by_changes_reads_back_as_it_is_after_every_step() {
    let directory = directory();
    let ruleset = directory.ruleset();
    let (mut state, mut isolations) = (EngineState::new(), HostIsolations::new());
    let mut store = std::collections::BTreeMap::new();
    let mut now = 0;
    // Threshold windows filling and firing, manual isolations, duplicates, releases, a prune,
    // and more events than the deduplication window holds.
    for step in 0..(rules::DEDUP_CAPACITY + 500) {
        now += 7;
        let host = format!("h{}", step % 37);
        let title = match step % 5 {
            0 | 1 => "strike",
            2 => "worm",
            _ => "nothing",
        };
        let event = host_event(&host, &format!("e{step}"), now, title);
        isolations.evaluate(ruleset, &mut state, &event, now, NO_TAGS);
        if step % 11 == 0 {
            isolations.evaluate(ruleset, &mut state, &event, now, NO_TAGS);
        }
        if step % 13 == 0 {
            isolations.release(&host);
        }
        if step == 40_000 {
            state.prune(now, 60_000);
        }
        let written = persist(&mut state, &mut store);
        assert!(written <= 8, "step {step}: {written} entries written for one event");
        if step % 4_999 == 0 || step > rules::DEDUP_CAPACITY + 490 {
            let back = EngineState::from_entries(store.iter()).unwrap();
            assert_eq!(back, state, "step {step}");
        }
    }
    // The deduplication window is 64 entries of 1,024 events (65 while it straddles them).
    let chunks = store.keys().filter(|key| key[0] == b's').count();
    assert!((64..=65).contains(&chunks), "{chunks} entries of seen events");
    // A state read whole (before it was persisted by changes) writes every entry once.
    let mut whole: EngineState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    whole.touch_all();
    let mut fresh = std::collections::BTreeMap::new();
    persist(&mut whole, &mut fresh);
    assert_eq!(EngineState::from_entries(fresh.iter()).unwrap(), state);
    assert!(EngineState::from_entries([(b"x".to_vec(), b"1".to_vec())]).unwrap_err().contains("unknown kind"));
}

#[test]
fn shadow_rules_are_split_from_the_rules_that_act() {
    let text = "id: live\ntitle: L\ndetection: {sel: {severity_id: 5}, condition: sel}\nresponse: {isolate: {mode: manual}}\n\
                ---\nid: watched\ntitle: W\nshadow: true\ndetection: {sel: {severity_id: 5}, condition: sel}\n\
                response: {isolate: {mode: automatic, duration: 1h}}\n";
    let files = [rules::SourceFile { name: "r.yaml".into(), text: text.into() }];
    let directory = rules::RuleDirectory::load(&files, None).expect("valid");
    let (live, shadow) = directory.ruleset().split_shadow(false);
    assert_eq!(live.rule_ids().collect::<Vec<_>>(), ["live"]);
    assert_eq!(shadow.rule_ids().collect::<Vec<_>>(), ["watched"]);
    let (live, shadow) = directory.ruleset().split_shadow(true);
    assert!(live.is_empty(), "[rules] mode = \"shadow\": nothing acts");
    assert_eq!(shadow.len(), 2);
    let bad = [rules::SourceFile { name: "b.yaml".into(), text: text.replace("shadow: true", "shadow: maybe") }];
    let problems = rules::RuleDirectory::load(&bad, None).unwrap_err();
    assert!(problems.iter().any(|d| d.to_string().contains("`shadow`")), "{problems:?}");
}
