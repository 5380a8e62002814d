//! `cordon rules check` and `cordon rules test`: read a rules directory and event files, hand the
//! texts to the pure `rules` engine, print what it says.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::{bail, Context};
use rules::{
    describe_decision, Decision, Diagnostic, EngineState, Event, HostIsolations, RuleDirectory, SourceFile,
    TestResult,
};
use serde_json::json;

/// The policy's file names; every other `*.yaml`/`*.yml` file in the directory holds rules.
const POLICY_FILES: &[&str] = &["policy.yaml", "policy.yml"];

/// The rule files (sorted by name; none is not an error here) and the policy file of a rules
/// directory. Subdirectories are not read.
pub fn read_directory(dir: &Path) -> anyhow::Result<(Vec<SourceFile>, Option<SourceFile>)> {
    let entries =
        fs::read_dir(dir).with_context(|| format!("cannot read the rules directory {}", dir.display()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
        let is_yaml = path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml");
        if is_yaml && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let mut rule_files = Vec::new();
    let mut policy = None;
    for path in paths {
        let text = fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
        let file = SourceFile { name: path.display().to_string(), text };
        let is_policy =
            path.file_name().and_then(|name| name.to_str()).is_some_and(|name| POLICY_FILES.contains(&name));
        if is_policy {
            if policy.is_some() {
                bail!("{} has both policy.yaml and policy.yml; keep one", dir.display());
            }
            policy = Some(file);
        } else {
            rule_files.push(file);
        }
    }
    Ok((rule_files, policy))
}

/// Loads and validates a rules directory; on problems, prints them all to `err` and returns None.
/// A directory without rule files is refused: whoever checks or tests rules named the wrong one.
fn load(dir: &Path, err: &mut impl Write) -> anyhow::Result<Option<(RuleDirectory, usize)>> {
    let (rule_files, policy) = read_directory(dir)?;
    if rule_files.is_empty() {
        bail!("no rule files (*.yaml, *.yml) in {}", dir.display());
    }
    match RuleDirectory::load(&rule_files, policy.as_ref()) {
        Ok(directory) => Ok(Some((directory, rule_files.len()))),
        Err(diagnostics) => {
            print_diagnostics(&diagnostics, err)?;
            Ok(None)
        }
    }
}

/// `1 problem`, `2 problems`.
fn plural(count: usize, word: &str) -> String {
    if count == 1 {
        format!("{count} {word}")
    } else {
        format!("{count} {word}s")
    }
}

fn print_diagnostics(diagnostics: &[Diagnostic], err: &mut impl Write) -> anyhow::Result<()> {
    for diagnostic in diagnostics {
        writeln!(err, "{diagnostic}")?;
    }
    let files: std::collections::BTreeSet<&str> = diagnostics.iter().map(|d| d.file.as_str()).collect();
    writeln!(err, "{} in {}", plural(diagnostics.len(), "problem"), plural(files.len(), "file"))?;
    Ok(())
}

/// `cordon rules check DIR`: Ok(true) and a one-line summary when the directory is valid.
pub fn check(dir: &Path, out: &mut impl Write, err: &mut impl Write) -> anyhow::Result<bool> {
    let Some((directory, file_count)) = load(dir, err)? else { return Ok(false) };
    let enabled = directory.ruleset().len();
    let total = directory.rules().len();
    let policy = directory.policy();
    let mut policy_text = Vec::new();
    if !policy.protect.is_empty() {
        policy_text.push(format!("protect [{}]", policy.protect.join(", ")));
    }
    if let Some(ceiling) = policy.max_automatic {
        policy_text.push(format!(
            "max_automatic {} within {}",
            ceiling.count,
            rules::format_duration(ceiling.within)
        ));
    }
    let policy_text = if policy_text.is_empty() { "none".to_owned() } else { policy_text.join(", ") };
    writeln!(
        out,
        "ok: {total} rules ({enabled} enabled) in {file_count} files, {} tests, policy: {policy_text}",
        directory.test_count()
    )?;
    Ok(true)
}

/// `cordon rules test DIR` without `--events`: runs every `tests:` entry, reports each, Ok(false) on any failure.
pub fn run_tests(dir: &Path, json: bool, out: &mut impl Write, err: &mut impl Write) -> anyhow::Result<bool> {
    let Some((directory, _)) = load(dir, err)? else { return Ok(false) };
    let outcomes = directory.run_tests();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for outcome in &outcomes {
        let scope = outcome.rule.as_deref().unwrap_or("(directory)");
        let (status, details): (&str, &[String]) = match &outcome.result {
            TestResult::Passed => {
                passed += 1;
                ("pass", &[])
            }
            TestResult::Failed(mismatches) => {
                failed += 1;
                ("fail", mismatches)
            }
            TestResult::Skipped(why) => {
                skipped += 1;
                ("skip", std::slice::from_ref(why))
            }
        };
        if json {
            let line = json!({"rule": outcome.rule, "name": outcome.name, "location": outcome.location, "result": status, "details": details});
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{} {scope}: {} ({})", status.to_uppercase(), outcome.name, outcome.location)?;
            for detail in details {
                writeln!(out, "    {detail}")?;
            }
        }
    }
    let summary = format!("{passed} passed, {failed} failed, {skipped} skipped");
    if json {
        writeln!(err, "{summary}")?;
    } else {
        writeln!(out, "{summary}")?;
    }
    Ok(failed == 0)
}

/// One decision as a line of `--json`: `action`, `deadline_ms` (or null), `duration_seconds` (or
/// null), `event_id`, `exclusions`, `host`, `mode`, `rules`, `shadow` (only when true) and `why`,
/// in that order. Written straight to the output, no `Value` built.
#[derive(serde::Serialize)]
struct DecisionLine<'a> {
    action: &'static str,
    deadline_ms: Option<i64>,
    duration_seconds: Option<u64>,
    event_id: &'a str,
    exclusions: &'a rules::Exclusions,
    host: &'a str,
    mode: rules::IsolationMode,
    rules: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    shadow: bool,
    why: &'a [rules::Reason],
}

impl<'a> DecisionLine<'a> {
    fn of(decision: &'a Decision, shadow: bool) -> DecisionLine<'a> {
        let isolation = decision.action.isolation();
        DecisionLine {
            action: decision.action.name(),
            deadline_ms: isolation.deadline_ms,
            duration_seconds: isolation.duration.map(|d| d.as_secs()),
            event_id: &decision.event_id,
            exclusions: &isolation.exclusions,
            host: &decision.host,
            mode: isolation.mode,
            rules: &decision.rules,
            shadow,
            why: &decision.why,
        }
    }
}

/// How a replay decides: the events' format, where host tags come from, and whether every rule is
/// a shadow (as `[rules] mode = "shadow"`).
pub struct ReplaySettings {
    pub format: rules::Format,
    pub tags: rules::TagSources,
    pub all_shadow: bool,
}

/// `cordon rules test DIR --events FILE`: replays NDJSON events in file order, each at its own
/// time, deciding as `cordon serve` does with the same settings (host tags from the same
/// sources, shadow rules apart). Ok(false) if any line was not a valid event.
pub fn replay(
    dir: &Path,
    events: &Path,
    settings: &ReplaySettings,
    json: bool,
    out: &mut impl Write,
    err: &mut impl Write,
) -> anyhow::Result<bool> {
    let Some((directory, _)) = load(dir, err)? else { return Ok(false) };
    let (reader, name): (Box<dyn BufRead>, String) = if events.as_os_str() == "-" {
        (Box::new(BufReader::new(std::io::stdin())), "<stdin>".to_owned())
    } else {
        let file = fs::File::open(events)
            .with_context(|| format!("cannot open the events file {}", events.display()))?;
        (Box::new(BufReader::new(file)), events.display().to_string())
    };
    // As `cordon serve` does: the shadow rules with a state of their own, their decisions marked.
    let (acting_rules, shadow_rules) = directory.ruleset().split_shadow(settings.all_shadow);
    let format = settings.format;
    let (mut live_state, mut shadow_state) = (EngineState::new(), EngineState::new());
    // No host records here: the hosts' isolations are what the decisions put in force.
    let (mut live_hosts, mut shadow_hosts) = (HostIsolations::new(), HostIsolations::new());
    let (mut replayed, mut decided, mut invalid) = (0_usize, 0_usize, 0_usize);
    // Block-buffered (standard output is line-buffered: a write a decision), one line buffer for
    // every line, and events parsed through the rule set's projection, as the service parses
    // them (they decide exactly as parsed whole: the rules' tests hold that).
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
    let mut reader = reader;
    let mut line = String::new();
    let projection = directory.ruleset().projection();
    for number in 0_usize.. {
        line.clear();
        if reader.read_line(&mut line).with_context(|| format!("cannot read {name} line {}", number + 1))? == 0 {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let event = match Event::parse_projected_as(&line, projection, format) {
            Ok(event) => event,
            Err(error) => {
                let kind = if format == rules::Format::Ocsf { "event".to_owned() } else { format!("{format} alert") };
                writeln!(err, "{name}:{}: invalid {kind}: {error}", number + 1)?;
                invalid += 1;
                continue;
            }
        };
        replayed += 1;
        let tags = settings.tags.tags_for(&event, &[]);
        let acting = live_hosts.evaluate(&acting_rules, &mut live_state, &event, event.time_ms(), &tags);
        let watched = if shadow_rules.is_empty() {
            Vec::new()
        } else {
            shadow_hosts.evaluate(&shadow_rules, &mut shadow_state, &event, event.time_ms(), &tags)
        };
        for (decision, is_shadow) in acting.iter().map(|d| (d, false)).chain(watched.iter().map(|d| (d, true))) {
            decided += 1;
            if json {
                serde_json::to_writer(&mut out, &DecisionLine::of(decision, is_shadow))?;
                out.write_all(b"\n")?;
            } else {
                writeln!(out, "{}{}", if is_shadow { "[shadow] " } else { "" }, describe_decision(decision))?;
            }
        }
    }
    out.flush()?;
    writeln!(
        err,
        "replayed {}: {}, {}",
        plural(replayed, "event"),
        plural(decided, "decision"),
        plural(invalid, "invalid line")
    )?;
    Ok(invalid == 0)
}
