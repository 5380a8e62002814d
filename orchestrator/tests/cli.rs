//! End-to-end tests of `cordon rules check` and `cordon rules test`: the real binary, real files,
//! exact output and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;

fn repo() -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cordon(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cordon")).args(args).current_dir(dir).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn check_accepts_the_examples_with_a_one_line_summary() {
    let output = cordon(&["rules", "check", "rules/examples"], &repo());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "ok: 4 rules (4 enabled) in 5 files, 19 tests, policy: protect [safety-critical, plc], max_automatic 20 within 10m\n"
    );
}

#[test]
fn check_reports_every_problem_with_file_line_and_column_and_exits_1() {
    let invalid = repo().join("rules/tests/invalid");
    let output = cordon(&["rules", "check", "response"], &invalid);
    assert_eq!(output.status.code(), Some(1));
    let expected = std::fs::read_to_string(invalid.join("response/expected.txt")).unwrap();
    assert_eq!(text(&output.stderr), expected + "15 problems in 1 file\n");
    assert_eq!(text(&output.stdout), "");
}

#[test]
fn check_reports_duplicate_ids_across_files() {
    let output = cordon(&["rules", "check", "duplicate-ids"], &repo().join("rules/tests/invalid"));
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).starts_with(
        "duplicate-ids/b.yaml:6:5: duplicate rule id `same-id`\n  hint: first defined at duplicate-ids/a.yaml:1:5; ids are unique across the directory\n"
    ));
}

#[test]
fn a_missing_directory_is_an_error_with_exit_code_2() {
    let output = cordon(&["rules", "check", "no-such-dir"], &repo());
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        text(&output.stderr),
        "error: cannot read the rules directory no-such-dir: No such file or directory (os error 2)\n"
    );
}

#[test]
fn test_runs_the_rules_tests_and_passes_on_the_examples() {
    let output = cordon(&["rules", "test", "rules/examples"], &repo());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("PASS credential-dumping: the third dump within ten minutes isolates the host (rules/examples/credential-dumping.yaml:26:5)\n"));
    assert!(stdout.ends_with("19 passed, 0 failed, 0 skipped\n"));
}

#[test]
fn a_failing_rule_test_is_reported_and_exits_1() {
    let output = cordon(&["rules", "test", "orchestrator/tests/fixtures/failing"], &repo());
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stdout),
        "FAIL wrong-expectation: expects 2h (orchestrator/tests/fixtures/failing/rules.yaml:6:5)\n    \
         decision 1 (expected at line 10): duration: expected 2h, got 1h\n      \
         got: e1 on h1: isolate automatic for 1h until 3600000 by [wrong-expectation] (matched)\n\
         0 passed, 1 failed, 0 skipped\n"
    );
}

#[test]
fn replay_prints_one_json_decision_per_line_and_flags_invalid_events() {
    let output = cordon(
        &[
            "rules",
            "test",
            "rules/examples",
            "--events",
            "orchestrator/tests/fixtures/replay.ndjson",
            "--tags-from-events",
            "--json",
        ],
        &repo(),
    );
    assert_eq!(output.status.code(), Some(1), "an invalid line makes the replay fail");
    assert_eq!(
        text(&output.stderr),
        "orchestrator/tests/fixtures/replay.ndjson:4: invalid event: missing required field `finding_info.uid`\n\
         replayed 5 events: 3 decisions, 1 invalid line\n"
    );
    let decisions: Vec<serde_json::Value> =
        text(&output.stdout).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let required: Vec<serde_json::Value> = decisions
        .iter()
        .map(|d| {
            let keys = ["host", "action", "mode", "duration_seconds", "rules", "event_id"];
            serde_json::Value::Object(keys.iter().map(|k| ((*k).to_owned(), d[*k].clone())).collect())
        })
        .collect();
    assert_eq!(
        required,
        vec![
            json!({"host": "ws-042", "action": "isolate", "mode": "automatic", "duration_seconds": 14_400, "rules": ["ransomware-encryption"], "event_id": "r-1"}),
            json!({"host": "ews-2", "action": "request_approval", "mode": "automatic", "duration_seconds": 28_800, "rules": ["ics-lateral-movement"], "event_id": "r-2"}),
            json!({"host": "plc-9", "action": "request_approval", "mode": "automatic", "duration_seconds": 14_400, "rules": ["ransomware-encryption"], "event_id": "r-4"}),
        ]
    );
    assert_eq!(decisions[0]["deadline_ms"], 1_700_014_400_000_i64);
    assert_eq!(decisions[0]["exclusions"]["allow"][0], "out,tcp,198.51.100.7/32,443");
    assert_eq!(decisions[2]["why"][1], json!({"kind": "protected", "tags": ["plc"]}));
}

#[test]
fn replay_without_json_prints_one_line_per_decision() {
    let output = cordon(
        &["rules", "test", "rules/examples", "--events", "orchestrator/tests/fixtures/replay.ndjson", "--tags-from-events"],
        &repo(),
    );
    assert_eq!(
        text(&output.stdout),
        "r-1 on ws-042: isolate automatic for 4h until 1700014400000 by [ransomware-encryption] (matched)\n\
         r-2 on ews-2: request_approval automatic for 8h by [ics-lateral-movement] (matched, approval_required)\n\
         r-4 on plc-9: request_approval automatic for 4h by [ransomware-encryption] (matched, protected)\n"
    );
}

/// Alerts of other tools replayed with `--format`: each tool's sample decides by its own fields,
/// and a broken alert is named with its format and line.
#[test]
fn replay_reads_ecs_falco_and_wazuh_alerts_with_their_format() {
    let replay = |format: &str| {
        let file = format!("orchestrator/tests/fixtures/alerts/{format}.ndjson");
        let output = cordon(
            &["rules", "test", "rules/tests/cases/formats", "--events", &file, "--format", format, "--json"],
            &repo(),
        );
        let decisions: Vec<serde_json::Value> =
            text(&output.stdout).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        (output.status.code(), decisions, text(&output.stderr))
    };
    let (code, decisions, stderr) = replay("ecs");
    assert_eq!(code, Some(1), "one alert of the sample is broken");
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!((decisions[0]["host"].as_str(), decisions[0]["action"].as_str()), (Some("8a4f1c2e0b7d4e6f"), Some("isolate")));
    assert!(
        stderr.starts_with(
            "orchestrator/tests/fixtures/alerts/ecs.ndjson:3: invalid ecs alert: field `kibana.alert.severity` must be low, \
             medium, high or critical, found \"urgent\""
        ),
        "{stderr}"
    );
    let (code, decisions, _) = replay("falco");
    assert_eq!(code, Some(0));
    assert_eq!(decisions.len(), 1, "the payments shell, not the API contact: {decisions:?}");
    assert_eq!(decisions[0]["host"], "k8s-node-3");
    let (_, decisions, stderr) = replay("wazuh");
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!((decisions[0]["host"].as_str(), decisions[0]["action"].as_str()), (Some("plc-gw-07"), Some("request_approval")));
    assert!(stderr.contains(":3: invalid wazuh alert: field `rule.level` must be an integer 0-15, found 99"), "{stderr}");
    // The same alerts read as OCSF are not events.
    let output = cordon(
        &["rules", "test", "rules/tests/cases/formats", "--events", "orchestrator/tests/fixtures/alerts/falco.ndjson"],
        &repo(),
    );
    assert!(text(&output.stderr).contains("invalid event: missing required field `device.uid`"), "{output:?}");
}

/// A replay decides as `cordon serve` does: shadow rules apart, with a state of their own, their
/// decisions marked.
#[test]
fn replay_marks_what_shadow_rules_would_do() {
    let output = cordon(
        &["rules", "test", "orchestrator/tests/fixtures/shadow", "--events", "orchestrator/tests/fixtures/shadow/events.ndjson"],
        &repo(),
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        text(&output.stdout),
        "[shadow] s-1 on ws-1: isolate automatic for 1h until 1700003600000 by [watch-high] (matched)\n\
         s-2 on ws-2: isolate manual by [critical] (matched)\n\
         [shadow] s-2 on ws-2: isolate automatic for 1h until 1700003601000 by [watch-high] (matched)\n"
    );
    let output = cordon(
        &["rules", "test", "orchestrator/tests/fixtures/shadow", "--events", "orchestrator/tests/fixtures/shadow/events.ndjson", "--json"],
        &repo(),
    );
    let shadow: Vec<bool> = text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["shadow"] == true)
        .collect();
    assert_eq!(shadow, [true, false, true]);
}
