//! Property tests: no rule file and no event makes the engine panic, and the index that skips
//! rules an event cannot match never skips one that does.

use std::fmt::Write as _;

use proptest::prelude::*;
use rules::{
    dry_run, dry_run_rule, parse_policy, parse_rule_file, EngineState, Event, HostIsolations, RuleDirectory,
    SourceFile,
};
use serde_json::{json, Value};

const FIELDS: &[&str] = &[
    "process.name",
    "process.cmd_line",
    "finding_info.attacks.technique.uid",
    "device.groups.name",
    "severity_id",
    "dst_endpoint.ip",
    "tags",
    "count",
];
const TEXTS: &[&str] = &[
    "a",
    "ab",
    "AB",
    "b*",
    "*c",
    "?x",
    "T1003",
    "t1003.001",
    "10.1.2.3",
    "5",
    "null",
    "true",
    "''",
    "é",
    "É",
    "straße",
    "STRASSE",
    "\\*",
    "a\\\\*",
    "0x1F",
];
const REGEXES: &[&str] = &["'a.*'", "'(?i)^t10'", "'[0-9]+'", "'^$'", "'(x'"];
const NETWORKS: &[&str] = &["10.0.0.0/8", "10.1.2.3", "fd00::/8", "0.0.0.0/0", "bad"];
const NUMBERS: &[&str] = &["5", "3.5", "-2", "0", "a"];
/// Modifier chains with the values that suit them (and a few that do not, to exercise errors).
const MODIFIERS: &[(&str, &[&str])] = &[
    ("", TEXTS),
    ("|contains", TEXTS),
    ("|startswith", TEXTS),
    ("|endswith", TEXTS),
    ("|contains|all", TEXTS),
    ("|all", TEXTS),
    ("|startswith|all", TEXTS),
    ("|re", REGEXES),
    ("|re|all", REGEXES),
    ("|cidr", NETWORKS),
    ("|gt", NUMBERS),
    ("|gte", NUMBERS),
    ("|lt", NUMBERS),
    ("|lte", NUMBERS),
    ("|exists", &["true", "false"]),
    ("|bogus", TEXTS),
];
/// Values events carry in the generated fields.
const VALUES: &[&str] = &[
    "a",
    "ab",
    "AB",
    "bc",
    "xc",
    "1x",
    "T1003",
    "t1003.001",
    "10.1.2.3",
    "fd00::1",
    "5",
    "3.5",
    "é",
    "É",
    "STRASSE",
    "*",
    "a\\*",
    "",
];

fn field_line() -> impl Strategy<Value = String> {
    (prop::sample::select(FIELDS), prop::sample::select(MODIFIERS)).prop_flat_map(
        |(field, (modifier, values))| {
            prop::collection::vec(prop::sample::select(values), 1..4).prop_map(move |values| {
                if values.len() == 1 {
                    format!("{field}{modifier}: {}", values[0])
                } else {
                    format!("{field}{modifier}: [{}]", values.join(", "))
                }
            })
        },
    )
}

fn condition(names: usize) -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        12 => (0..names).prop_map(|i| format!("s{i}")),
        2 => Just("1 of s*".to_owned()),
        2 => Just("all of them".to_owned()),
        1 => Just("missing".to_owned()),
    ];
    leaf.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} and {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} or {b})")),
            inner.prop_map(|a| format!("not {a}")),
        ]
    })
}

fn rule_text() -> impl Strategy<Value = String> {
    (1_usize..4)
        .prop_flat_map(|count| {
            (
                prop::collection::vec(prop::collection::vec(field_line(), 1..4), count),
                condition(count),
                any::<bool>(),
                0_u8..3,
            )
        })
        .prop_map(|(selections, condition, threshold, mode)| {
            let mut text = String::from("id: generated\ntitle: generated\ndetection:\n");
            for (i, lines) in selections.iter().enumerate() {
                let _ = writeln!(text, "  s{i}:");
                for line in lines {
                    let _ = writeln!(text, "    {line}");
                }
            }
            let _ = writeln!(text, "  condition: {condition}");
            if threshold {
                text.push_str("threshold: {count: 2, within: 1m}\n");
            }
            let response = ["{mode: automatic, escalation: [1m, 1h]}", "{mode: manual}", "{mode: approval}"]
                [usize::from(mode)];
            let _ = writeln!(text, "response:\n  isolate: {response}");
            text
        })
}

fn json_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::sample::select(VALUES).prop_map(|v| json!(v)),
        1 => any::<i64>().prop_map(|n| json!(n)),
        1 => (-10_i64..10).prop_map(|n| json!(n)),
        1 => any::<f64>().prop_map(|n| json!(n)),
        1 => any::<bool>().prop_map(|b| json!(b)),
        1 => Just(Value::Null),
        1 => ".{0,12}".prop_map(|s| json!(s)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(
                        &["name", "uid", "cmd_line", "ip", "technique", "attacks", "groups"][..]
                    ),
                    inner
                ),
                0..4
            )
            .prop_map(|entries| Value::Object(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

/// Events that pass validation, with random values in the fields rules look at.
fn event() -> impl Strategy<Value = Value> {
    (0_u8..7, 0_u8..3, 0_u8..8, prop::collection::vec((prop::sample::select(FIELDS), json_value()), 0..6)).prop_map(|(severity, host, id, fields)| {
        let mut event = json!({"time": 60_000, "severity_id": severity, "device": {"uid": format!("h{host}")}, "finding_info": {"uid": format!("e{id}")}});
        for (path, value) in fields {
            let mut target = &mut event;
            let segments: Vec<&str> = path.split('.').collect();
            for segment in &segments[..segments.len() - 1] {
                if !target.get(*segment).is_some_and(Value::is_object) {
                    target[*segment] = json!({});
                }
                target = &mut target[*segment];
            }
            target[segments[segments.len() - 1]] = value;
        }
        event
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_a_result_not_a_panic(text in ".{0,400}") {
        let _ = parse_rule_file("fuzz.yaml", &text);
        let _ = parse_policy("policy.yaml", &text);
        let _ = Event::parse(&text);
    }

    #[test]
    fn mutated_rule_files_are_a_result_not_a_panic(position in 0_usize..1200, bytes in prop::collection::vec(any::<u8>(), 0..8)) {
        let mut text = include_str!("../examples/ransomware.yaml").as_bytes().to_vec();
        let position = position.min(text.len());
        text.splice(position..position, bytes);
        let _ = parse_rule_file("fuzz.yaml", &String::from_utf8_lossy(&text));
    }

    #[test]
    fn generated_rules_and_events_never_panic_and_the_index_misses_nothing(rule in rule_text(), events in prop::collection::vec(event(), 1..6)) {
        let files = [SourceFile { name: "generated.yaml".into(), text: rule }];
        let Ok(directory) = RuleDirectory::load(&files, None) else { return Ok(()) };
        let ruleset = directory.ruleset();
        let (mut state, mut isolations) = (EngineState::new(), HostIsolations::new());
        for fields in events {
            let Ok(event) = Event::from_json(fields) else { continue };
            let isolation = isolations.in_force(event.host(), event.time_ms());
            let indexed = dry_run(ruleset, &state, &event, isolation, event.time_ms(), &["lab"]);
            for id in ruleset.rule_ids().filter(|_| !indexed.duplicate) {
                let alone = dry_run_rule(ruleset, id, &state, &event, isolation, event.time_ms(), &["lab"]).unwrap();
                let matched_alone = alone.verdicts.iter().any(|v| v.rule == id);
                let matched_indexed = indexed.verdicts.iter().any(|v| v.rule == id);
                prop_assert_eq!(matched_alone, matched_indexed, "rule {} on {}", id, event.fields());
            }
            let decisions = isolations.evaluate(ruleset, &mut state, &event, event.time_ms(), &["lab"]);
            prop_assert_eq!(decisions, indexed.decisions);
        }
    }
}
