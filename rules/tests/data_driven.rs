//! Data-driven tests: every directory under `tests/cases/` holds rules whose `tests:` must all
//! pass; every directory under `tests/invalid/` holds broken rules and `expected.txt`, the exact
//! diagnostics `cordon rules check` must print for them; `examples/` ships with passing tests.

mod common;

use std::path::{Path, PathBuf};

use common::{read_rules_dir, subdirectories};
use rules::{RuleDirectory, TestResult};

/// This crate's directory, as cargo tells the running test (not compiled in: checkouts share a
/// target directory, see ARCHITECTURE.md).
fn crate_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test"))
}

fn run_all_tests(dir: &Path, prefix: &str) -> (usize, Vec<String>) {
    let (files, policy) = read_rules_dir(dir, prefix);
    let directory = RuleDirectory::load(&files, policy.as_ref()).unwrap_or_else(|diagnostics| {
        let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        panic!("{prefix} does not load:\n{}", text.join("\n"))
    });
    let outcomes = directory.run_tests();
    let failures = outcomes
        .iter()
        .filter_map(|outcome| match &outcome.result {
            TestResult::Passed => None,
            other => Some(format!("{} {}: {other:?}", outcome.location, outcome.name)),
        })
        .collect();
    (outcomes.len(), failures)
}

#[test]
fn every_case_passes_its_tests() {
    let root = crate_dir().join("tests/cases");
    let cases = subdirectories(&root);
    assert!(cases.len() >= 8, "expected the case directories, found {cases:?}");
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let (count, failures) = run_all_tests(&case, &name);
        assert!(count > 0, "{name} has no tests");
        assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
    }
}

#[test]
fn the_shipped_examples_pass_their_tests() {
    let examples = crate_dir().join("examples");
    let (count, failures) = run_all_tests(&examples, "examples");
    assert!(count >= 15, "expected the examples' tests, found {count}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn invalid_rules_produce_exactly_the_expected_diagnostics() {
    let root = crate_dir().join("tests/invalid");
    let cases = subdirectories(&root);
    assert!(cases.len() >= 9, "expected the invalid cases, found {cases:?}");
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let expected = std::fs::read_to_string(case.join("expected.txt")).unwrap();
        let (files, policy) = read_rules_dir(&case, &name);
        let diagnostics = RuleDirectory::load(&files, policy.as_ref()).expect_err(&name);
        let actual: String = diagnostics.iter().map(|d| d.to_string() + "\n").collect();
        assert_eq!(actual, expected, "diagnostics of {name} differ");
    }
}

#[test]
fn a_wrong_expectation_fails_with_a_precise_message() {
    let rule = r"
id: isolate-on-x
title: x
detection: {sel: {finding_info.title: x}, condition: sel}
response: {isolate: {mode: automatic, duration: 1h}}
tests:
  - name: expects the wrong duration and a missing reason
    events:
      - {time: 0, severity_id: 1, device: {uid: h1}, finding_info: {uid: e1, title: x}}
    expect:
      - {action: isolate, duration: 2h, why: [protected]}
  - name: expects no decision
    events:
      - {time: 0, severity_id: 1, device: {uid: h1}, finding_info: {uid: e1, title: x}}
    expect: []
";
    let files = [rules::SourceFile { name: "x.yaml".into(), text: rule.into() }];
    let outcomes = RuleDirectory::load(&files, None).unwrap().run_tests();
    assert_eq!(
        outcomes[0].result,
        TestResult::Failed(vec![
            "decision 1 (expected at line 11): duration: expected 2h, got 1h; why: expected a `protected` reason, got [matched]\n      got: e1 on h1: isolate automatic for 1h until 3600000 by [isolate-on-x] (matched)".to_owned()
        ])
    );
    assert_eq!(
        outcomes[1].result,
        TestResult::Failed(vec!["expected 0 decision(s), got 1\n      got: e1 on h1: isolate automatic for 1h until 3600000 by [isolate-on-x] (matched)".to_owned()])
    );
}

#[test]
fn disabled_rules_are_not_evaluated_and_their_tests_are_skipped() {
    let rule = r"
id: off
title: disabled
enabled: false
detection: {sel: {finding_info.title: x}, condition: sel}
response: {isolate: {mode: manual}}
tests:
  - name: would isolate
    events: [{time: 0, severity_id: 1, device: {uid: h1}, finding_info: {uid: e1, title: x}}]
    expect: [{action: isolate}]
";
    let files = [rules::SourceFile { name: "x.yaml".into(), text: rule.into() }];
    let directory = RuleDirectory::load(&files, None).unwrap();
    assert_eq!(directory.ruleset().len(), 0);
    assert_eq!(directory.run_tests()[0].result, TestResult::Skipped("the rule is disabled".to_owned()));
}
