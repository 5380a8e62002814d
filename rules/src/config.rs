//! Rule files and `policy.yaml`: validates the YAML tree against the rule language and turns it
//! into typed, compiled rules, reporting every problem with its line and column in one pass.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use cordon_wire::spec::SPEC_SYNTAX;

use crate::condition::{is_valid_selection_name, parse_condition, Condition};
use crate::decision::{Exclusions, IsolationMode, ReasonKind};
use crate::diagnostic::{choices_hint, Diagnostic, Position, Report};
use crate::duration::{format_duration, parse_duration};
use crate::event::{Event, FieldPath};
use crate::matcher::{compile_field, compile_keywords, FieldMatcher, MatchContext};
use crate::sigma_string::SigmaString;
use crate::yaml::{parse_documents, Node, NodeKind, ScalarValue};
use crate::{parse_allow_spec, AllowSpec};

/// The escalation window when a rule gives escalation steps but no `escalation_window`.
pub const DEFAULT_ESCALATION_WINDOW: Duration = Duration::from_hours(30 * 24);

/// What a rule does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseMode {
    /// Isolate now, for a duration; the engine lifts nothing, the enforcer's timer does.
    Automatic,
    /// Isolate now, until an operator releases the host.
    Manual,
    /// Ask an operator to approve the isolation first.
    Approval,
}

/// What a rule does when it fires again while the host is still isolated by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retrigger {
    /// New deadline = now + the rule's current duration (never earlier than the current deadline).
    Extend,
    /// Leave the isolation as it is: no decision.
    Keep,
    /// Isolate again with the next escalation step, counted as a new isolation.
    Escalate,
}

#[derive(Debug, Clone)]
pub(crate) struct Selection {
    pub name: String,
    /// Sigma: a mapping is an AND of fields; a list of mappings is an OR of such ANDs.
    pub alternatives: Vec<Vec<FieldMatcher>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Threshold {
    pub count: u32,
    pub within: Duration,
    /// None: group by the event's host.
    pub group_by: Option<Vec<FieldPath>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub mode: ResponseMode,
    pub duration: Option<Duration>,
    pub escalation: Vec<Duration>,
    pub escalation_window: Duration,
    pub exclusions: Exclusions,
    pub on_retrigger: Retrigger,
}

/// One validated rule, with its matchers compiled. Build a [`crate::Ruleset`] from these.
#[derive(Debug, Clone)]
pub struct Rule {
    pub(crate) file: String,
    pub(crate) id_position: Position,
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) enabled: bool,
    /// Decides, but only to be watched: `cordon serve` records what it would have done and
    /// sends nothing (`shadow: true`).
    pub(crate) shadow: bool,
    pub(crate) selections: Vec<Selection>,
    pub(crate) condition: Condition,
    pub(crate) threshold: Option<Threshold>,
    pub(crate) response: Response,
    pub(crate) tests: Vec<TestCase>,
}

impl Rule {
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    #[must_use]
    pub fn title(&self) -> &str {
        &self.title
    }

    #[must_use]
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    #[must_use]
    pub fn shadow(&self) -> bool {
        self.shadow
    }

    #[must_use]
    pub fn file(&self) -> &str {
        &self.file
    }

    #[must_use]
    pub fn tests(&self) -> &[TestCase] {
        &self.tests
    }
}

/// A `tests:` entry: events replayed in order and the decisions they must produce.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub(crate) file: String,
    pub(crate) position: Position,
    pub(crate) name: String,
    pub(crate) host_tags: HashMap<String, Vec<String>>,
    /// The alert format of `events` (default OCSF).
    pub(crate) format: crate::Format,
    pub(crate) events: Vec<Event>,
    pub(crate) expect: Vec<ExpectedDecision>,
}

impl TestCase {
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the test is written, `FILE:LINE:COLUMN`.
    #[must_use]
    pub fn location(&self) -> String {
        format!("{}:{}:{}", self.file, self.position.line, self.position.column)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExpectedAction {
    Isolate,
    RequestApproval,
}

/// One expected decision; fields left out are not compared.
#[derive(Debug, Clone)]
pub(crate) struct ExpectedDecision {
    pub position: Position,
    pub event: Option<String>,
    pub host: Option<String>,
    pub action: ExpectedAction,
    pub mode: Option<IsolationMode>,
    /// `Some(None)` expects no duration (`duration: null`, a manual isolation).
    #[expect(
        clippy::option_option,
        reason = "absent (not compared) differs from `duration: null` (expected to be none)"
    )]
    pub duration: Option<Option<Duration>>,
    pub deadline_ms: Option<i64>,
    pub rules: Option<Vec<String>>,
    pub why: Vec<ReasonKind>,
}

/// The global policy of a rules directory (`policy.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Hosts carrying any of these tags are never isolated without approval.
    pub protect: Vec<String>,
    /// At most this many new engine-initiated isolations in a sliding window; more become approvals.
    pub max_automatic: Option<Ceiling>,
    /// The values of each `%placeholder%` (Sigma's `expand` modifier).
    pub(crate) placeholders: BTreeMap<String, Vec<SigmaString>>,
    /// The fields keyword selections search; empty: every text of the event.
    pub(crate) keyword_fields: Vec<FieldPath>,
}

impl Policy {
    /// What rules are compiled against.
    pub(crate) fn match_context(&self) -> MatchContext<'_> {
        MatchContext { placeholders: Some(&self.placeholders), keyword_fields: &self.keyword_fields }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceiling {
    pub count: u32,
    pub within: Duration,
}

/// The documents of one rule file: its rules, and test suites that run against the whole directory.
#[derive(Debug, Clone, Default)]
pub struct RuleFile {
    pub rules: Vec<Rule>,
    /// Tests in a document of their own (`tests:` without `id:`), run against every rule of the directory.
    pub directory_tests: Vec<TestCase>,
}

const RULE_FIELDS: &[&str] =
    &["id", "title", "description", "enabled", "shadow", "sigma", "detection", "threshold", "response", "tests"];
/// `sigma:`, where an imported rule keeps the Sigma rule's identity; informational.
const SIGMA_FIELDS: &[&str] =
    &["id", "level", "status", "logsource", "author", "references", "tags", "falsepositives", "date", "modified"];
const SIGMA_LOGSOURCE_FIELDS: &[&str] = &["product", "category", "service", "definition"];
const SIGMA_LEVELS: &[&str] = &["informational", "low", "medium", "high", "critical"];
const THRESHOLD_FIELDS: &[&str] = &["count", "within", "group_by"];
const RESPONSE_FIELDS: &[&str] = &["isolate", "on_retrigger"];
const ISOLATE_FIELDS: &[&str] = &[
    "mode",
    "duration",
    "escalation",
    "escalation_window",
    "allow",
    "allow_processes",
    "allow_dns",
    "allow_dhcp",
];
const TEST_FIELDS: &[&str] = &["name", "format", "host_tags", "events", "expect"];
const EXPECT_FIELDS: &[&str] =
    &["event", "host", "action", "mode", "duration", "deadline_ms", "rules", "why"];
const POLICY_FIELDS: &[&str] = &["protect", "max_automatic", "placeholders", "keyword_fields"];
const CEILING_FIELDS: &[&str] = &["count", "within"];

/// The entries of a mapping, looked up by key; unknown and duplicate keys are reported on creation.
pub(crate) struct Fields<'n> {
    pub entries: Vec<(&'n str, &'n Node, &'n Node)>,
}

impl<'n> Fields<'n> {
    pub fn read(node: &'n Node, what: &str, known: &[&str], report: &mut Report<'_>) -> Option<Self> {
        let NodeKind::Mapping(pairs) = &node.kind else {
            report.error(node.position, format!("{what} must be a mapping, found {}", node.describe()));
            return None;
        };
        let mut entries: Vec<(&'n str, &'n Node, &'n Node)> = Vec::with_capacity(pairs.len());
        for (key, value) in pairs {
            let Some(name) = key.as_text() else {
                report
                    .error(key.position, format!("keys of {what} must be strings, found {}", key.describe()));
                continue;
            };
            if !known.is_empty() && !known.contains(&name) {
                report.error_with_hint(
                    key.position,
                    format!("unknown field `{name}` in {what}"),
                    choices_hint(name, known),
                );
                continue;
            }
            if let Some((_, first, _)) = entries.iter().find(|(existing, _, _)| *existing == name) {
                report.error(
                    key.position,
                    format!(
                        "field `{name}` is given twice in {what} (first at {}:{})",
                        first.position.line, first.position.column
                    ),
                );
                continue;
            }
            entries.push((name, key, value));
        }
        Some(Self { entries })
    }

    pub fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries.iter().find(|(key, _, _)| *key == name).map(|(_, _, value)| *value)
    }

    pub fn require(&self, name: &str, what: &str, at: &Node, report: &mut Report<'_>) -> Option<&'n Node> {
        let value = self.get(name);
        if value.is_none() {
            report.error(at.position, format!("{what} is missing required field `{name}`"));
        }
        value
    }
}

pub(crate) fn read_text(node: &Node, what: &str, report: &mut Report<'_>) -> Option<String> {
    match node.as_scalar().map(|scalar| (scalar, scalar.resolve())) {
        Some((scalar, ScalarValue::String(_) | ScalarValue::Integer(_) | ScalarValue::Float(_)))
            if !scalar.text.trim().is_empty() =>
        {
            Some(scalar.text.clone())
        }
        _ => {
            report.error(
                node.position,
                format!("{what} must be a non-empty string, found {}", node.describe()),
            );
            None
        }
    }
}

pub(crate) fn read_bool(node: &Node, what: &str, report: &mut Report<'_>) -> Option<bool> {
    if let Some(ScalarValue::Bool(value)) = node.as_scalar().map(crate::yaml::Scalar::resolve) {
        return Some(value);
    }
    report.error_with_hint(
        node.position,
        format!("{what} must be true or false, found {}", node.describe()),
        "YAML 1.2 booleans are true and false (not yes/no/on/off)",
    );
    None
}

fn read_duration(node: &Node, what: &str, report: &mut Report<'_>) -> Option<Duration> {
    let Some(text) = node.as_scalar().filter(|_| !node.is_null()).map(|scalar| scalar.text.as_str()) else {
        report.error_with_hint(
            node.position,
            format!("{what} must be a duration, found {}", node.describe()),
            "e.g. 90s, 15m, 4h or 7d",
        );
        return None;
    };
    match parse_duration(text) {
        Ok(duration) => Some(duration),
        Err(error) => {
            report.error_with_hint(node.position, format!("bad {what}: {error}"), error.hint());
            None
        }
    }
}

fn read_count(node: &Node, what: &str, report: &mut Report<'_>) -> Option<u32> {
    match node.as_scalar().map(crate::yaml::Scalar::resolve) {
        Some(ScalarValue::Integer(n)) if n >= 1 => u32::try_from(n).ok().or_else(|| {
            report.error(node.position, format!("{what} {n} is too large (at most {})", u32::MAX));
            None
        }),
        _ => {
            report.error(
                node.position,
                format!("{what} must be a whole number of at least 1, found {}", scalar_or_kind(node)),
            );
            None
        }
    }
}

fn scalar_or_kind(node: &Node) -> String {
    match node.as_scalar() {
        Some(scalar) if !node.is_null() => format!("`{}`", scalar.text),
        _ => node.describe().to_owned(),
    }
}

fn read_list<'n>(node: &'n Node, what: &str, report: &mut Report<'_>) -> Option<&'n [Node]> {
    if let NodeKind::Sequence(items) = &node.kind {
        Some(items)
    } else {
        report.error(node.position, format!("{what} must be a list, found {}", node.describe()));
        None
    }
}

fn read_text_list(node: &Node, what: &str, report: &mut Report<'_>) -> Option<Vec<String>> {
    let items = read_list(node, what, report)?;
    let mut texts = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items {
        match read_text(item, &format!("each entry of {what}"), report) {
            Some(text) => texts.push(text),
            None => ok = false,
        }
    }
    ok.then_some(texts)
}

fn read_keyword<T: Copy>(
    node: &Node,
    what: &str,
    choices: &[(&str, T)],
    report: &mut Report<'_>,
) -> Option<T> {
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    let text = node.as_text().unwrap_or_default();
    if let Some((_, value)) = choices.iter().find(|(name, _)| *name == text) {
        return Some(*value);
    }
    report.error_with_hint(
        node.position,
        format!("unknown {what} `{}`", if text.is_empty() { node.describe() } else { text }),
        choices_hint(text, &names),
    );
    None
}

/// Parses one rule file: one or more `---` separated documents, each a rule or a directory test
/// suite, for a directory without a policy.
pub fn parse_rule_file(name: &str, text: &str) -> Result<RuleFile, Vec<Diagnostic>> {
    parse_rule_file_with(name, text, Some(&Policy::default()))
}

/// Parses one rule file of a directory with this policy (its placeholders and keyword fields);
/// None: the policy has errors of its own, and placeholders are not checked.
pub fn parse_rule_file_with(name: &str, text: &str, policy: Option<&Policy>) -> Result<RuleFile, Vec<Diagnostic>> {
    let context = policy.map_or(MatchContext::NONE, Policy::match_context);
    let mut report = Report::new(name);
    let documents = match parse_documents(text) {
        Ok(documents) => documents,
        Err(error) => {
            report.error_with_hint(
                error.position,
                format!("YAML syntax error: {}", error.message),
                "check the indentation and quoting around this line",
            );
            return Err(report.diagnostics);
        }
    };
    let mut file = RuleFile::default();
    for document in &documents {
        let is_suite = document.get("tests").is_some() && document.get("id").is_none();
        if is_suite {
            let Some(fields) = Fields::read(document, "a test suite document", &["tests"], &mut report)
            else {
                continue;
            };
            if let Some(tests) = fields.get("tests") {
                file.directory_tests.extend(read_tests(tests, &mut report));
            }
        } else if let Some(rule) = read_rule(document, context, &mut report) {
            file.rules.push(rule);
        }
    }
    if report.diagnostics.is_empty() {
        Ok(file)
    } else {
        Err(report.diagnostics)
    }
}

/// The `id` of every rule document in a file, with its position, even when the rules have other
/// errors: duplicate ids are reported across the directory in the same run as everything else.
pub(crate) fn rule_ids(text: &str) -> Vec<(String, Position)> {
    let Ok(documents) = parse_documents(text) else { return Vec::new() };
    documents
        .iter()
        .filter_map(|document| match &document.kind {
            NodeKind::Mapping(pairs) => pairs.iter().find(|(key, _)| key.as_text() == Some("id")),
            _ => None,
        })
        .filter_map(|(_, value)| Some((value.as_text()?.to_owned(), value.position)))
        .collect()
}

fn read_rule(document: &Node, context: MatchContext<'_>, report: &mut Report<'_>) -> Option<Rule> {
    let fields = Fields::read(document, "a rule", RULE_FIELDS, report)?;
    let before = report.diagnostics.len();
    let id_node = fields.require("id", "the rule", document, report);
    let id = id_node.and_then(|node| read_text(node, "`id`", report));
    if let (Some(id), Some(node)) = (&id, id_node) {
        if !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            report.error_with_hint(
                node.position,
                format!("rule id `{id}` has characters other than letters, digits, `-`, `_` and `.`"),
                "ids appear in decisions and logs; keep them simple, e.g. ransomware-encryption",
            );
        }
    }
    let title = fields
        .require("title", "the rule", document, report)
        .and_then(|node| read_text(node, "`title`", report));
    if let Some(node) = fields.get("description") {
        read_text(node, "`description`", report);
    }
    let enabled = fields.get("enabled").map_or(Some(true), |node| read_bool(node, "`enabled`", report));
    let shadow = fields.get("shadow").map_or(Some(false), |node| read_bool(node, "`shadow`", report));
    if let Some(node) = fields.get("sigma") {
        read_sigma_origin(node, report);
    }
    let detection = fields
        .require("detection", "the rule", document, report)
        .and_then(|node| read_detection(node, context, report));
    let threshold = match fields.get("threshold") {
        Some(node) => read_threshold(node, report).map(Some),
        None => Some(None),
    };
    let response =
        fields.require("response", "the rule", document, report).and_then(|node| read_response(node, report));
    let tests = fields.get("tests").map(|node| read_tests(node, report)).unwrap_or_default();
    if report.diagnostics.len() != before {
        return None;
    }
    let (selections, condition) = detection?;
    Some(Rule {
        file: report.file.to_owned(),
        id_position: id_node?.position,
        id: id?,
        title: title?,
        enabled: enabled?,
        shadow: shadow?,
        selections,
        condition,
        threshold: threshold?,
        response: response?,
        tests,
    })
}

fn read_detection(
    node: &Node,
    context: MatchContext<'_>,
    report: &mut Report<'_>,
) -> Option<(Vec<Selection>, Condition)> {
    let fields = Fields::read(node, "`detection`", &[], report)?;
    let mut names = Vec::new();
    let mut selections = Vec::new();
    let mut ok = true;
    for (name, key, value) in &fields.entries {
        if *name == "condition" {
            continue;
        }
        if *name == "timeframe" {
            report.error_with_hint(
                key.position,
                "`timeframe` (Sigma's old aggregation window) is not supported",
                "count matches over time with the rule's `threshold:` (count, within, group_by)",
            );
            ok = false;
            continue;
        }
        if !is_valid_selection_name(name) {
            report.error_with_hint(
                key.position,
                format!("`{name}` is not a valid selection name"),
                "use letters, digits, `_`, `-` and `.`, and not and/or/not/of/them/all/1",
            );
            ok = false;
            continue;
        }
        names.push(*name);
        match read_selection(name, value, context, report) {
            Some(selection) => selections.push(selection),
            None => ok = false,
        }
    }
    let Some(condition_node) = fields.get("condition") else {
        let hint = names.first().map_or_else(
            || "add selections and a condition".to_owned(),
            |name| format!("add `condition: {name}`"),
        );
        report.error_with_hint(node.position, "`detection` is missing required field `condition`", hint);
        return None;
    };
    if names.is_empty() && ok {
        report.error_with_hint(
            node.position,
            "`detection` has no selections",
            "add a named selection, e.g. `selection: {severity_id|gte: 4}`",
        );
        return None;
    }
    // Sigma allows a list of conditions, any of which matches.
    let condition_nodes: Vec<&Node> = match &condition_node.kind {
        NodeKind::Sequence(items) if !items.is_empty() => items.iter().collect(),
        _ => vec![condition_node],
    };
    let mut conditions = Vec::with_capacity(condition_nodes.len());
    for condition_node in condition_nodes {
        let Some(condition_text) =
            condition_node.as_scalar().filter(|_| !condition_node.is_null()).map(|s| s.text.as_str())
        else {
            report.error_with_hint(
                condition_node.position,
                format!("`condition` must be a string, found {}", condition_node.describe()),
                "write one condition expression, e.g. `selection and not filter`",
            );
            return None;
        };
        // The condition is checked against every well-named selection, even those with errors of
        // their own, so that its problems are reported in the same run.
        match parse_condition(condition_text, &names) {
            Ok(condition) => conditions.push(condition),
            Err(error) => {
                let position = condition_node.position_in_text(error.offset);
                match error.hint {
                    Some(hint) => report.error_with_hint(position, error.message, hint),
                    None => report.error(position, error.message),
                }
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    let condition = if conditions.len() == 1 { conditions.remove(0) } else { Condition::Or(conditions) };
    Some((selections, condition))
}

fn read_selection(name: &str, node: &Node, context: MatchContext<'_>, report: &mut Report<'_>) -> Option<Selection> {
    let read_alternative = |map: &Node, report: &mut Report<'_>| -> Option<Vec<FieldMatcher>> {
        let fields = Fields::read(map, &format!("selection `{name}`"), &[], report)?;
        if fields.entries.is_empty() {
            report.error(map.position, format!("selection `{name}` is empty"));
            return None;
        }
        let mut matchers = Vec::new();
        let mut ok = true;
        for (_, key, value) in &fields.entries {
            match compile_field(key, value, context, report) {
                Some(matcher) => matchers.push(matcher),
                None => ok = false,
            }
        }
        matchers.sort_by_key(FieldMatcher::cost);
        ok.then_some(matchers)
    };
    let alternatives = match &node.kind {
        NodeKind::Mapping(_) => vec![read_alternative(node, report)?],
        NodeKind::Sequence(items) if items.is_empty() => {
            report.error_with_hint(
                node.position,
                format!("selection `{name}` is an empty list"),
                "list keywords to search for, or mappings of fields (any of which matches)",
            );
            return None;
        }
        NodeKind::Sequence(items) => {
            // A list: mappings of fields and keywords (scalars), any of which matches.
            let mut alternatives = Vec::new();
            let mut ok = true;
            for item in items {
                match &item.kind {
                    NodeKind::Mapping(_) => match read_alternative(item, report) {
                        Some(alternative) => alternatives.push(alternative),
                        None => ok = false,
                    },
                    NodeKind::Scalar(_) => {}
                    NodeKind::Sequence(_) => {
                        report.error_with_hint(
                            item.position,
                            format!("selection `{name}` has a list inside its list"),
                            "a selection lists keywords or mappings of fields",
                        );
                        ok = false;
                    }
                }
            }
            let keywords: Vec<Node> =
                items.iter().filter(|item| matches!(item.kind, NodeKind::Scalar(_))).cloned().collect();
            if !keywords.is_empty() {
                let list = Node { position: keywords[0].position, kind: NodeKind::Sequence(keywords) };
                match compile_keywords(&list, context, report) {
                    Some(matcher) => alternatives.push(vec![matcher]),
                    None => ok = false,
                }
            }
            ok.then_some(alternatives)?
        }
        NodeKind::Scalar(_) => {
            report.error_with_hint(
                node.position,
                format!("selection `{name}` must be a mapping of fields or a list, found {}", node.describe()),
                "e.g. `selection: {severity_id|gte: 4}`, or a list of keywords `keywords: [mimikatz]`",
            );
            return None;
        }
    };
    Some(Selection { name: name.to_owned(), alternatives })
}

/// Checks `sigma:` (the Sigma rule an imported rule came from): known keys, texts, lists of texts.
fn read_sigma_origin(node: &Node, report: &mut Report<'_>) {
    let Some(fields) = Fields::read(node, "`sigma`", SIGMA_FIELDS, report) else { return };
    for (name, _, value) in &fields.entries {
        let what = format!("`sigma.{name}`");
        match *name {
            "references" | "tags" | "falsepositives" => {
                read_text_list(value, &what, report);
            }
            "logsource" => {
                if let Some(logsource) = Fields::read(value, &what, SIGMA_LOGSOURCE_FIELDS, report) {
                    for (key, _, text) in &logsource.entries {
                        read_text(text, &format!("`sigma.logsource.{key}`"), report);
                    }
                }
            }
            "level" => {
                if let Some(level) = read_text(value, &what, report) {
                    if !SIGMA_LEVELS.contains(&level.as_str()) {
                        report.error_with_hint(
                            value.position,
                            format!("`{level}` is not a Sigma level"),
                            choices_hint(&level, SIGMA_LEVELS),
                        );
                    }
                }
            }
            _ => {
                read_text(value, &what, report);
            }
        }
    }
}

fn read_threshold(node: &Node, report: &mut Report<'_>) -> Option<Threshold> {
    let fields = Fields::read(node, "`threshold`", THRESHOLD_FIELDS, report)?;
    let count = fields
        .require("count", "`threshold`", node, report)
        .and_then(|n| read_count(n, "`threshold.count`", report));
    let within = fields
        .require("within", "`threshold`", node, report)
        .and_then(|n| read_duration(n, "`threshold.within`", report));
    let group_by = match fields.get("group_by") {
        None => Some(None),
        Some(n) => read_text_list(n, "`threshold.group_by`", report).and_then(|paths| {
            if paths.is_empty() {
                report.error_with_hint(
                    n.position,
                    "`threshold.group_by` is empty",
                    "leave it out to group by host, or list field paths",
                );
                return None;
            }
            let default = paths.len() == 1 && paths[0] == "device.uid";
            Some(if default { None } else { Some(paths.iter().map(|p| FieldPath::new(p)).collect()) })
        }),
    };
    Some(Threshold { count: count?, within: within?, group_by: group_by? })
}

fn read_response(node: &Node, report: &mut Report<'_>) -> Option<Response> {
    let fields = Fields::read(node, "`response`", RESPONSE_FIELDS, report)?;
    let on_retrigger_node = fields.get("on_retrigger");
    let on_retrigger = on_retrigger_node.map_or(Some(Retrigger::Extend), |n| {
        read_keyword(
            n,
            "on_retrigger",
            &[("extend", Retrigger::Extend), ("keep", Retrigger::Keep), ("escalate", Retrigger::Escalate)],
            report,
        )
    });
    let isolate = fields.require("isolate", "`response`", node, report)?;
    let fields = Fields::read(isolate, "`response.isolate`", ISOLATE_FIELDS, report)?;
    let mode_node = fields.require("mode", "`response.isolate`", isolate, report);
    let mode = mode_node.and_then(|n| {
        read_keyword(
            n,
            "mode",
            &[
                ("automatic", ResponseMode::Automatic),
                ("manual", ResponseMode::Manual),
                ("approval", ResponseMode::Approval),
            ],
            report,
        )
    });
    let duration_node = fields.get("duration");
    let duration: Option<Option<Duration>> = match duration_node {
        None => Some(None),
        Some(n) => read_duration(n, "`duration`", report).map(Some),
    };
    let escalation_node = fields.get("escalation");
    let escalation: Option<Vec<Duration>> = escalation_node.map_or(Some(Vec::new()), |n| {
        let items = read_list(n, "`escalation`", report)?;
        if items.is_empty() {
            report.error_with_hint(
                n.position,
                "`escalation` is empty",
                "list the durations of the 1st, 2nd, 3rd+ isolation, e.g. [4h, 24h, 7d]",
            );
            return None;
        }
        let steps: Vec<Option<Duration>> =
            items.iter().map(|item| read_duration(item, "escalation step", report)).collect();
        steps.into_iter().collect()
    });
    let escalation_window = fields
        .get("escalation_window")
        .map_or(Some(DEFAULT_ESCALATION_WINDOW), |n| read_duration(n, "`escalation_window`", report));
    let allow = fields.get("allow").map_or(Some(Vec::new()), |n| read_allow_specs(n, report));
    let allow_processes = fields
        .get("allow_processes")
        .map_or(Some(Vec::new()), |n| read_text_list(n, "`allow_processes`", report));
    let allow_dns = fields.get("allow_dns").map_or(Some(false), |n| read_bool(n, "`allow_dns`", report));
    let allow_dhcp = fields.get("allow_dhcp").map_or(Some(false), |n| read_bool(n, "`allow_dhcp`", report));

    let mode = mode?;
    check_mode_fields(mode, isolate, duration_node, escalation_node, on_retrigger_node, report);
    let (duration, escalation) = (duration?, escalation?);
    if let (Some(duration), Some(first), Some(node)) = (duration, escalation.first(), duration_node) {
        if duration != *first {
            report.error_with_hint(
                node.position,
                format!(
                    "`duration` {} differs from the first escalation step {}",
                    format_duration(duration),
                    format_duration(*first)
                ),
                "the first isolation lasts escalation[0]; make them equal or drop `duration`",
            );
            return None;
        }
    }
    let duration = duration.or_else(|| escalation.first().copied());
    Some(Response {
        mode,
        duration,
        escalation,
        escalation_window: escalation_window?,
        exclusions: Exclusions {
            allow: allow?,
            allow_processes: allow_processes?,
            allow_dns: allow_dns?,
            allow_dhcp: allow_dhcp?,
        },
        on_retrigger: on_retrigger?,
    })
}

/// The `allow:` list of exclusion SPECs, each checked with the enforcer's syntax.
fn read_allow_specs(node: &Node, report: &mut Report<'_>) -> Option<Vec<AllowSpec>> {
    let items = read_list(node, "`allow`", report)?;
    let mut specs = Vec::new();
    let mut ok = true;
    for item in items {
        match item.as_text().map(parse_allow_spec) {
            Some(Ok(spec)) => specs.push(spec),
            Some(Err(error)) => {
                report.error_with_hint(
                    item.position,
                    format!("invalid exclusion SPEC: {error}"),
                    format!("write {SPEC_SYNTAX}"),
                );
                ok = false;
            }
            None => {
                report.error(
                    item.position,
                    format!("each entry of `allow` must be a SPEC string, found {}", item.describe()),
                );
                ok = false;
            }
        }
    }
    ok.then_some(specs)
}

/// Which fields make sense with which mode.
fn check_mode_fields(
    mode: ResponseMode,
    isolate: &Node,
    duration: Option<&Node>,
    escalation: Option<&Node>,
    on_retrigger: Option<&Node>,
    report: &mut Report<'_>,
) {
    match mode {
        ResponseMode::Automatic if duration.is_none() && escalation.is_none() => report.error_with_hint(
            isolate.position,
            "`mode: automatic` needs a `duration`",
            "automatic isolations are timed: add e.g. `duration: 4h` (or `escalation: [4h, 24h, 7d]`)",
        ),
        ResponseMode::Manual => {
            if let Some(node) = duration {
                report.error_with_hint(node.position, "`duration` does not apply to `mode: manual`", "a manual isolation lasts until an operator releases it; use `mode: automatic` for a timed one");
            }
        }
        _ => {}
    }
    if mode != ResponseMode::Automatic {
        if let Some(node) = escalation {
            report.error_with_hint(
                node.position,
                "`escalation` applies only to `mode: automatic`",
                "remove it, or use `mode: automatic`",
            );
        }
        if let Some(node) = on_retrigger {
            report.error_with_hint(
                node.position,
                "`on_retrigger` applies only to `mode: automatic`",
                "manual isolations already last until released; approvals are coalesced by the orchestrator",
            );
        }
    }
}

fn read_tests(node: &Node, report: &mut Report<'_>) -> Vec<TestCase> {
    let Some(items) = read_list(node, "`tests`", report) else {
        return Vec::new();
    };
    items.iter().filter_map(|item| read_test(item, report)).collect()
}

fn read_test(node: &Node, report: &mut Report<'_>) -> Option<TestCase> {
    let fields = Fields::read(node, "a test", TEST_FIELDS, report)?;
    let before = report.diagnostics.len();
    let name = fields
        .require("name", "the test", node, report)
        .and_then(|n| read_text(n, "the test's `name`", report));
    let mut host_tags = HashMap::new();
    if let Some(tags_node) = fields.get("host_tags") {
        if let Some(tag_fields) = Fields::read(tags_node, "`host_tags` (host: [tags])", &[], report) {
            for (host, _, tags) in &tag_fields.entries {
                if let Some(tags) = read_text_list(tags, &format!("the tags of `{host}`"), report) {
                    host_tags.insert((*host).to_owned(), tags);
                }
            }
        }
    }
    let format = match fields.get("format") {
        None => Some(crate::Format::Ocsf),
        Some(format_node) => read_text(format_node, "the test's `format`", report).and_then(|name| {
            let format = crate::Format::from_name(&name);
            if format.is_none() {
                report.error_with_hint(
                    format_node.position,
                    format!("unknown alert format {name:?}"),
                    "one of ocsf (the default), ecs, falco, wazuh",
                );
            }
            format
        }),
    };
    let mut events = Vec::new();
    if let (Some(list), Some(format)) = (
        fields.require("events", "the test", node, report).and_then(|n| read_list(n, "`events`", report)),
        format,
    ) {
        for item in list {
            if !matches!(item.kind, NodeKind::Mapping(_)) {
                report.error(
                    item.position,
                    format!("a test event must be a mapping, found {}", item.describe()),
                );
                continue;
            }
            match Event::from_json_as(item.to_json(), format) {
                Ok(event) => events.push(event),
                Err(error) => report.error_with_hint(
                    item.position,
                    if format == crate::Format::Ocsf {
                        format!("invalid test event: {error}")
                    } else {
                        format!("invalid test event ({format}): {error}")
                    },
                    match format {
                        crate::Format::Ocsf => "test events need device.uid, finding_info.uid, time and severity_id",
                        crate::Format::Ecs => "ECS alerts need host.id or host.name, kibana.alert.uuid, kibana.alert.original_time or @timestamp, kibana.alert.severity",
                        crate::Format::Falco => "Falco alerts need hostname, time, priority, and uuid or rule",
                        crate::Format::Wazuh => "Wazuh alerts need agent.name or agent.id, id, timestamp and rule.level",
                    },
                ),
            }
        }
    }
    let mut expect = Vec::new();
    if let Some(list) =
        fields.require("expect", "the test", node, report).and_then(|n| read_list(n, "`expect`", report))
    {
        expect.extend(list.iter().filter_map(|item| read_expected(item, report)));
    }
    if report.diagnostics.len() != before {
        return None;
    }
    Some(TestCase {
        file: report.file.to_owned(),
        position: node.position,
        name: name?,
        format: format?,
        host_tags,
        events,
        expect,
    })
}

fn read_expected(node: &Node, report: &mut Report<'_>) -> Option<ExpectedDecision> {
    let fields = Fields::read(node, "an expected decision", EXPECT_FIELDS, report)?;
    let action = fields.require("action", "the expected decision", node, report).and_then(|n| {
        read_keyword(
            n,
            "action",
            &[("isolate", ExpectedAction::Isolate), ("request_approval", ExpectedAction::RequestApproval)],
            report,
        )
    });
    let mode = fields.get("mode").map(|n| {
        read_keyword(
            n,
            "mode",
            &[("automatic", IsolationMode::Automatic), ("manual", IsolationMode::Manual)],
            report,
        )
    });
    let duration = fields.get("duration").map(|n| {
        if n.is_null() {
            Some(None)
        } else {
            read_duration(n, "`duration`", report).map(Some)
        }
    });
    let deadline_ms = fields.get("deadline_ms").map(|n| {
        if let Some(ScalarValue::Integer(ms)) = n.as_scalar().map(crate::yaml::Scalar::resolve) {
            Some(ms)
        } else {
            report.error(
                n.position,
                format!("`deadline_ms` must be an integer (epoch milliseconds), found {}", n.describe()),
            );
            None
        }
    });
    let rules = fields.get("rules").map(|n| read_text_list(n, "`rules`", report));
    let why = fields.get("why").map_or(Some(Vec::new()), |n| {
        let items = read_list(n, "`why`", report)?;
        let kinds: Vec<Option<ReasonKind>> =
            items.iter().map(|item| read_keyword(item, "reason", ReasonKind::NAMES, report)).collect();
        kinds.into_iter().collect()
    });
    let text = |name: &str, report: &mut Report<'_>| {
        fields.get(name).map(|n| read_text(n, &format!("`{name}`"), report))
    };
    let event = text("event", report);
    let host = text("host", report);
    Some(ExpectedDecision {
        position: node.position,
        event: event.map_or(Some(None), |e| e.map(Some))?,
        host: host.map_or(Some(None), |h| h.map(Some))?,
        action: action?,
        mode: mode.map_or(Some(None), |m| m.map(Some))?,
        duration: duration.map_or(Some(None), |d| d.map(Some))?,
        deadline_ms: deadline_ms.map_or(Some(None), |d| d.map(Some))?,
        rules: rules.map_or(Some(None), |r| r.map(Some))?,
        why: why?,
    })
}

/// The YAML documents of a file, or its syntax error reported (then None).
pub(crate) fn read_documents(text: &str, report: &mut Report<'_>) -> Option<Vec<Node>> {
    parse_documents(text)
        .map_err(|error| report.error(error.position, format!("YAML syntax error: {}", error.message)))
        .ok()
}

/// Parses `policy.yaml`. An empty file is the empty policy.
pub fn parse_policy(name: &str, text: &str) -> Result<Policy, Vec<Diagnostic>> {
    let mut report = Report::new(name);
    let Some(documents) = read_documents(text, &mut report) else { return Err(report.diagnostics) };
    let mut policy = Policy::default();
    match documents.as_slice() {
        [] => {}
        [document] => {
            if let Some(fields) = Fields::read(document, "the policy", POLICY_FIELDS, &mut report) {
                if let Some(node) = fields.get("protect") {
                    policy.protect = read_text_list(node, "`protect`", &mut report).unwrap_or_default();
                }
                if let Some(node) = fields.get("max_automatic") {
                    policy.max_automatic = read_ceiling(node, &mut report);
                }
                if let Some(node) = fields.get("placeholders") {
                    policy.placeholders = read_placeholders(node, &mut report);
                }
                if let Some(node) = fields.get("keyword_fields") {
                    policy.keyword_fields = read_keyword_fields(node, &mut report);
                }
            }
        }
        [_, second, ..] => report.error(second.position, "the policy must be a single YAML document"),
    }
    if report.diagnostics.is_empty() {
        Ok(policy)
    } else {
        Err(report.diagnostics)
    }
}

/// `placeholders:`: each name with its values (Sigma strings: wildcards allowed), for `expand`.
fn read_placeholders(node: &Node, report: &mut Report<'_>) -> BTreeMap<String, Vec<SigmaString>> {
    let mut placeholders = BTreeMap::new();
    let NodeKind::Mapping(pairs) = &node.kind else {
        report.error_with_hint(
            node.position,
            format!("`placeholders` must be a mapping, found {}", node.describe()),
            "e.g. `placeholders: {Administrators: [root, admin], Servers: [srv-*]}`",
        );
        return placeholders;
    };
    for (key, value) in pairs {
        let Some(name) = key.as_text().filter(|name| !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_')) else {
            report.error_with_hint(
                key.position,
                "a placeholder name is letters, digits and `_`",
                "rules write it between percent signs: `field|expand: '%Servers%'`",
            );
            continue;
        };
        let values = match &value.kind {
            NodeKind::Sequence(items) => items.iter().collect(),
            NodeKind::Scalar(_) => vec![value],
            NodeKind::Mapping(_) => Vec::new(),
        };
        let texts: Vec<&str> = values.iter().filter_map(|item| item.as_text()).collect();
        if values.is_empty() && matches!(value.kind, NodeKind::Sequence(_)) {
            report.error_with_hint(
                value.position,
                format!("placeholder `{name}` has no values"),
                "a rule expanding it would match nothing; list at least one value",
            );
            continue;
        }
        if values.is_empty() || texts.len() != values.len() {
            report.error_with_hint(
                value.position,
                format!("placeholder `{name}` must be a list of strings"),
                "e.g. `Servers: [srv-*, db01]`; values may have wildcards",
            );
            continue;
        }
        if placeholders.contains_key(name) {
            report.error(key.position, format!("placeholder `{name}` is defined twice"));
            continue;
        }
        placeholders.insert(name.to_owned(), texts.iter().map(|text| SigmaString::parse(text, false)).collect());
    }
    placeholders
}

/// `keyword_fields:`: the fields keyword selections search instead of every text of the event.
fn read_keyword_fields(node: &Node, report: &mut Report<'_>) -> Vec<FieldPath> {
    let Some(paths) = read_text_list(node, "`keyword_fields`", report) else { return Vec::new() };
    if paths.is_empty() {
        report.error_with_hint(
            node.position,
            "`keyword_fields` is empty",
            "leave it out to search every text of the event, or list field paths",
        );
    }
    let mut fields = Vec::new();
    for path in paths {
        if path.split('.').any(str::is_empty) || path.chars().any(char::is_whitespace) {
            report.error_with_hint(
                node.position,
                format!("`{path}` is not a valid dotted path"),
                "write dotted paths like process.cmd_line",
            );
        } else {
            fields.push(FieldPath::new(&path));
        }
    }
    fields
}

fn read_ceiling(node: &Node, report: &mut Report<'_>) -> Option<Ceiling> {
    let fields = Fields::read(node, "`max_automatic`", CEILING_FIELDS, report)?;
    let count = fields
        .require("count", "`max_automatic`", node, report)
        .and_then(|n| read_count(n, "`max_automatic.count`", report));
    let within = fields
        .require("within", "`max_automatic`", node, report)
        .and_then(|n| read_duration(n, "`max_automatic.within`", report));
    Some(Ceiling { count: count?, within: within? })
}
