//! Events parsed through a rule set's projection (as `cordon serve` parses them) decide exactly
//! what the same events parsed whole decide: 100 SOC-like rules, 20,000 generated detections
//! (the benchmarks' workload), two engines side by side.

#[path = "../benches/workload/mod.rs"]
mod workload;

use rules::{EngineState, Event, HostIsolations, RuleDirectory, SourceFile};

#[test]
fn projected_events_decide_what_whole_events_decide() {
    let files = [SourceFile { name: "generated-100.yaml".into(), text: workload::rules_text(100) }];
    let directory = RuleDirectory::load(&files, None).unwrap_or_else(|d| panic!("{}", d[0]));
    let ruleset = directory.ruleset();
    let (mut whole_state, mut projected_state) = (EngineState::new(), EngineState::new());
    let (mut whole_hosts, mut projected_hosts) = (HostIsolations::new(), HostIsolations::new());
    let no_tags: &[String] = &[];
    let mut random = workload::Random(0x2545_f491_4f6c_dd1d);
    let mut decided = 0;
    for i in 0..20_000_u64 {
        // 300 techniques: about a third of the events decide something.
        let text = workload::event_from(&mut random, i, 500, 1_700_000_000_000 + i * 10, 300);
        let whole = Event::parse(&text).expect("the workload is valid");
        let projected = Event::parse_projected(&text, ruleset.projection()).expect("valid projected");
        assert!(
            text.len() > projected.fields().to_string().len(),
            "the projection keeps less than the event"
        );
        let now = whole.time_ms();
        let expected = whole_hosts.evaluate(ruleset, &mut whole_state, &whole, now, no_tags);
        let got = projected_hosts.evaluate(ruleset, &mut projected_state, &projected, now, no_tags);
        assert_eq!(got, expected, "event {i}: {text}");
        decided += expected.len();
    }
    assert!(decided > 1_000, "only {decided} decisions: the comparison must cover many");
}

/// The same with Sigma's costliest features (keywords, windash, base64offset, fieldref, …): with
/// keywords searching every text (the projected parse captures every string) and with
/// `keyword_fields`, events are projected and decide what whole events decide.
#[test]
fn sigma_rules_decide_the_same_projected_or_whole() {
    for policy in [None, Some(workload::SIGMA_POLICY)] {
        let files = [SourceFile { name: "sigma-100.yaml".into(), text: workload::sigma_rules_text(100) }];
        let policy = policy.map(|text| SourceFile { name: "policy.yaml".into(), text: text.into() });
        let directory = RuleDirectory::load(&files, policy.as_ref()).unwrap_or_else(|d| panic!("{}", d[0]));
        let ruleset = directory.ruleset();
        let (mut whole_state, mut projected_state) = (EngineState::new(), EngineState::new());
        let (mut whole_hosts, mut projected_hosts) = (HostIsolations::new(), HostIsolations::new());
        let no_tags: &[String] = &[];
        let mut random = workload::Random(0x2545_f491_4f6c_dd1d);
        let (mut decided, mut smaller) = (0, 0);
        for i in 0..5_000_u64 {
            let text = workload::event_from(&mut random, i, 500, 1_700_000_000_000 + i * 10, 300);
            let whole = Event::parse(&text).expect("the workload is valid");
            let projected = Event::parse_projected(&text, ruleset.projection()).expect("valid projected");
            smaller += usize::from(projected.fields() != whole.fields());
            let now = whole.time_ms();
            let expected = whole_hosts.evaluate(ruleset, &mut whole_state, &whole, now, no_tags);
            let got = projected_hosts.evaluate(ruleset, &mut projected_state, &projected, now, no_tags);
            assert_eq!(got, expected, "event {i}: {text}");
            decided += expected.len();
        }
        assert!(decided > 300, "only {decided} decisions: the comparison must cover many");
        assert_eq!(smaller, 5_000, "every event is projected");
    }
}
