//! `cordon rules import-sigma`: Sigma detection rules (logsource, detection, level) converted into
//! cordon response rules through a processing pipeline, a subset of pySigma's pipeline format that
//! maps Sigma's field names to the fields of the events cordon reads. The rule's level decides the
//! response. Pure: texts in, rule texts or reasons out; the command reads and writes the files.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use crate::config::{parse_rule_file_with, read_documents, read_text, Fields, Policy};
use crate::diagnostic::{choices_hint, Diagnostic, Position, Report};
use crate::duration::format_duration;
use crate::yaml::{parse_documents, Node, NodeKind, ScalarValue};

/// The pipelines that ship with cordon, by name: (file name, text).
const BUILTIN_PIPELINES: &[(&str, &str, &str)] =
    &[("ocsf-linux", "pipelines/ocsf-linux.yml", include_str!("../pipelines/ocsf-linux.yml"))];

/// The names of the pipelines that ship with cordon.
pub fn builtin_pipeline_names() -> impl Iterator<Item = &'static str> {
    BUILTIN_PIPELINES.iter().map(|(name, _, _)| *name)
}

/// The file name and text of a pipeline that ships with cordon.
pub fn builtin_pipeline(name: &str) -> Option<(&'static str, &'static str)> {
    BUILTIN_PIPELINES.iter().find(|(builtin, _, _)| *builtin == name).map(|(_, file, text)| (*file, *text))
}

/// A processing pipeline: transformations, each applied to the rules whose logsource its
/// conditions select.
#[derive(Debug, Clone)]
pub struct Pipeline {
    name: String,
    transformations: Vec<Transformation>,
}

#[derive(Debug, Clone)]
struct Transformation {
    action: Action,
    conditions: Vec<LogsourceCondition>,
    /// `rule_cond_op: or`: any condition selects (default: all of them).
    any: bool,
    /// `rule_cond_not: true`: the conditions select the rules they do not match.
    negated: bool,
}

#[derive(Debug, Clone)]
enum Action {
    /// Sigma field name → event field path.
    FieldNameMapping(BTreeMap<String, String>),
    /// Sigma field name prefix → event field path prefix.
    FieldNamePrefixMapping(BTreeMap<String, String>),
    /// Fields every converted rule also requires (a selection joined to the condition with `and`).
    AddCondition(Vec<(String, Node)>),
    /// The rule cannot be converted, for this reason.
    RuleFailure(String),
}

/// `type: logsource` rule condition: every given attribute must equal the rule's.
#[derive(Debug, Clone, Default)]
struct LogsourceCondition {
    category: Option<String>,
    product: Option<String>,
    service: Option<String>,
}

const PIPELINE_FIELDS: &[&str] = &["name", "priority", "transformations", "vars", "allowed_backends"];
const TRANSFORMATION_FIELDS: &[&str] =
    &["id", "type", "mapping", "conditions", "message", "rule_conditions", "rule_cond_op", "rule_cond_not"];
const TRANSFORMATION_TYPES: &[&str] =
    &["field_name_mapping", "field_name_prefix_mapping", "add_condition", "rule_failure"];
const CONDITION_FIELDS: &[&str] = &["type", "category", "product", "service"];

/// Parses a pipeline file, reporting every problem in it at once.
pub fn parse_pipeline(file: &str, text: &str) -> Result<Pipeline, Vec<Diagnostic>> {
    let mut report = Report::new(file);
    let Some(documents) = read_documents(text, &mut report) else { return Err(report.diagnostics) };
    let [document] = documents.as_slice() else {
        report.error(Position::default(), "a pipeline is one YAML document");
        return Err(report.diagnostics);
    };
    let mut pipeline = Pipeline { name: file.to_owned(), transformations: Vec::new() };
    if let Some(fields) = Fields::read(document, "the pipeline", PIPELINE_FIELDS, &mut report) {
        if let Some(name) = fields.get("name").and_then(|node| read_text(node, "`name`", &mut report)) {
            pipeline.name = name;
        }
        match fields.require("transformations", "the pipeline", document, &mut report).map(|node| &node.kind) {
            Some(NodeKind::Sequence(items)) => {
                for item in items {
                    if let Some(transformation) = read_transformation(item, &mut report) {
                        pipeline.transformations.push(transformation);
                    }
                }
            }
            Some(_) => report.error(document.position, "`transformations` must be a list"),
            None => {}
        }
    }
    if report.diagnostics.is_empty() {
        Ok(pipeline)
    } else {
        Err(report.diagnostics)
    }
}

fn read_transformation(node: &Node, report: &mut Report<'_>) -> Option<Transformation> {
    let fields = Fields::read(node, "a transformation", TRANSFORMATION_FIELDS, report)?;
    let kind = fields.require("type", "a transformation", node, report)?;
    let kind_text = kind.as_text().unwrap_or_default();
    let action = match kind_text {
        "field_name_mapping" | "field_name_prefix_mapping" => {
            let mapping = fields.require("mapping", "the transformation", node, report)?;
            let pairs = read_text_mapping(mapping, "`mapping`", report)?;
            if kind_text == "field_name_mapping" {
                Action::FieldNameMapping(pairs)
            } else {
                Action::FieldNamePrefixMapping(pairs)
            }
        }
        "add_condition" => {
            let conditions = fields.require("conditions", "the transformation", node, report)?;
            let NodeKind::Mapping(pairs) = &conditions.kind else {
                report.error(conditions.position, "`conditions` must be a mapping of fields to values");
                return None;
            };
            let mut added = Vec::new();
            for (key, value) in pairs {
                added.push((key.as_text()?.to_owned(), value.clone()));
            }
            Action::AddCondition(added)
        }
        "rule_failure" => {
            let message = fields.require("message", "the transformation", node, report)?;
            Action::RuleFailure(read_text(message, "`message`", report)?)
        }
        other => {
            report.error_with_hint(
                kind.position,
                format!("transformation type `{other}` is not supported by cordon"),
                choices_hint(other, TRANSFORMATION_TYPES),
            );
            return None;
        }
    };
    let mut conditions = Vec::new();
    if let Some(list) = fields.get("rule_conditions") {
        let NodeKind::Sequence(items) = &list.kind else {
            report.error(list.position, "`rule_conditions` must be a list");
            return None;
        };
        for item in items {
            conditions.push(read_condition(item, report)?);
        }
    }
    let any = match fields.get("rule_cond_op").map(|node| (node, node.as_text())) {
        None | Some((_, Some("and"))) => false,
        Some((_, Some("or"))) => true,
        Some((node, _)) => {
            report.error(node.position, "`rule_cond_op` is `and` or `or`");
            return None;
        }
    };
    let negated = match fields.get("rule_cond_not") {
        None => false,
        Some(node) => crate::config::read_bool(node, "`rule_cond_not`", report)?,
    };
    Some(Transformation { action, conditions, any, negated })
}

fn read_text_mapping(node: &Node, what: &str, report: &mut Report<'_>) -> Option<BTreeMap<String, String>> {
    let NodeKind::Mapping(pairs) = &node.kind else {
        report.error(node.position, format!("{what} must be a mapping, found {}", node.describe()));
        return None;
    };
    let mut mapping = BTreeMap::new();
    let mut ok = true;
    for (key, value) in pairs {
        let target = match &value.kind {
            NodeKind::Sequence(_) => {
                report.error_with_hint(
                    value.position,
                    "a field mapped to several fields is not supported",
                    "map each Sigma field to one event field",
                );
                None
            }
            _ => read_text(value, "a mapped field", report),
        };
        match (key.as_text(), target) {
            (Some(key), Some(target)) => {
                mapping.insert(key.to_owned(), target);
            }
            _ => ok = false,
        }
    }
    ok.then_some(mapping)
}

fn read_condition(node: &Node, report: &mut Report<'_>) -> Option<LogsourceCondition> {
    let fields = Fields::read(node, "a rule condition", CONDITION_FIELDS, report)?;
    let kind = fields.require("type", "a rule condition", node, report)?;
    if kind.as_text() != Some("logsource") {
        report.error_with_hint(
            kind.position,
            format!("rule condition type `{}` is not supported by cordon", kind.as_text().unwrap_or_default()),
            "cordon's pipelines select rules by `type: logsource` (category, product, service)",
        );
        return None;
    }
    let text = |name: &str, report: &mut Report<'_>| fields.get(name).and_then(|node| read_text(node, name, report));
    Some(LogsourceCondition {
        category: text("category", report),
        product: text("product", report),
        service: text("service", report),
    })
}

/// A Sigma rule's `logsource`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Logsource {
    pub category: Option<String>,
    pub product: Option<String>,
    pub service: Option<String>,
}

impl fmt::Display for Logsource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [("product", &self.product), ("category", &self.category), ("service", &self.service)]
            .iter()
            .filter_map(|(name, value)| value.as_ref().map(|value| format!("{name} {value}")))
            .collect();
        if parts.is_empty() {
            f.write_str("(none)")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

impl LogsourceCondition {
    fn matches(&self, logsource: &Logsource) -> bool {
        let same = |wanted: &Option<String>, actual: &Option<String>| {
            wanted.as_ref().is_none_or(|wanted| actual.as_ref().is_some_and(|actual| actual.eq_ignore_ascii_case(wanted)))
        };
        same(&self.category, &logsource.category)
            && same(&self.product, &logsource.product)
            && same(&self.service, &logsource.service)
    }
}

impl Transformation {
    fn applies_to(&self, logsource: &Logsource) -> bool {
        let selected = if self.conditions.is_empty() {
            true
        } else if self.any {
            self.conditions.iter().any(|condition| condition.matches(logsource))
        } else {
            self.conditions.iter().all(|condition| condition.matches(logsource))
        };
        selected != self.negated
    }
}

impl Pipeline {
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Sigma's levels, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

impl Level {
    pub const ALL: [Level; 5] = [Level::Informational, Level::Low, Level::Medium, Level::High, Level::Critical];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Level::Informational => "informational",
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
            Level::Critical => "critical",
        }
    }

    #[must_use]
    pub fn from_name(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|level| level.name() == name)
    }
}

/// What an imported rule of a level does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LevelResponse {
    Automatic(Duration),
    Manual,
    Approval,
    /// Rules of the level are not imported.
    Skip,
}

impl LevelResponse {
    /// `automatic:4h`, `manual`, `approval`, `skip`.
    pub fn parse(text: &str) -> Result<LevelResponse, String> {
        match text.split_once(':') {
            None => match text {
                "manual" => Ok(LevelResponse::Manual),
                "approval" => Ok(LevelResponse::Approval),
                "skip" => Ok(LevelResponse::Skip),
                "automatic" => Err("`automatic` needs a duration: automatic:4h".to_owned()),
                other => Err(format!("`{other}` is not a response: automatic:DURATION, manual, approval or skip")),
            },
            Some(("automatic", duration)) => crate::duration::parse_duration(duration)
                .map(LevelResponse::Automatic)
                .map_err(|error| format!("bad duration `{duration}`: {error}")),
            Some(_) => Err(format!("`{text}` is not a response: automatic:DURATION, manual, approval or skip")),
        }
    }

    /// As `--level` takes it: `automatic:4h`, `manual`, `approval`, `skip`.
    #[must_use]
    pub fn argument(self) -> String {
        match self {
            LevelResponse::Automatic(duration) => format!("automatic:{}", format_duration(duration)),
            other => other.describe(),
        }
    }

    fn describe(self) -> String {
        match self {
            LevelResponse::Automatic(duration) => format!("automatic {}", format_duration(duration)),
            LevelResponse::Manual => "manual".to_owned(),
            LevelResponse::Approval => "approval".to_owned(),
            LevelResponse::Skip => "skip".to_owned(),
        }
    }
}

/// How rules are imported.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The response for each level; by default critical isolates automatically for 4 hours, high
    /// asks for approval, lower levels are not imported.
    pub responses: BTreeMap<Level, LevelResponse>,
    /// Imported rules act at once; by default they are shadow rules (`shadow: true`), watched
    /// before they are promoted.
    pub live: bool,
    /// How the command was run, written into each rule's header.
    pub command: String,
}

impl Default for ImportOptions {
    fn default() -> Self {
        let responses = BTreeMap::from([
            (Level::Informational, LevelResponse::Skip),
            (Level::Low, LevelResponse::Skip),
            (Level::Medium, LevelResponse::Skip),
            (Level::High, LevelResponse::Approval),
            (Level::Critical, LevelResponse::Automatic(Duration::from_hours(4))),
        ]);
        Self { responses, live: false, command: "cordon rules import-sigma".to_owned() }
    }
}

/// A converted rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The cordon rule id (`sigma-` and the Sigma file's name).
    pub id: String,
    pub level: Level,
    pub response: String,
    /// The cordon rule file's text, loadable by `cordon rules check`.
    pub text: String,
}

/// Why a Sigma rule was not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotImported {
    /// Its level's response is `skip`: a choice, not a failure.
    Level(Level),
    /// It cannot be converted, for this reason.
    Unconvertible(String),
}

impl fmt::Display for NotImported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotImported::Level(level) => write!(
                f,
                "level {} is not imported (--level {}=approval, or another response, imports it)",
                level.name(),
                level.name()
            ),
            NotImported::Unconvertible(reason) => f.write_str(reason),
        }
    }
}

impl From<String> for NotImported {
    fn from(reason: String) -> Self {
        NotImported::Unconvertible(reason)
    }
}

impl From<&str> for NotImported {
    fn from(reason: &str) -> Self {
        NotImported::Unconvertible(reason.to_owned())
    }
}

/// The first line of every file the import writes: it overwrites only files that start with it.
pub const IMPORTED_HEADER: &str = "# Imported from a Sigma rule by `cordon rules import-sigma`.";

/// Converts one Sigma rule file. `file` names it (its stem becomes the rule id); `policy` is the
/// target directory's (the converted rule must load with it: placeholders, keyword fields).
pub fn import_rule(
    file: &str,
    text: &str,
    pipeline: &Pipeline,
    options: &ImportOptions,
    policy: &Policy,
) -> Result<Imported, NotImported> {
    let documents = parse_documents(text).map_err(|error| {
        format!("YAML syntax error at {}:{}: {}", error.position.line, error.position.column, error.message)
    })?;
    let document = match documents.as_slice() {
        [document] => document,
        [] => return Err("the file is empty".into()),
        _ => return Err("several YAML documents (a Sigma rule collection) are not supported; split them".into()),
    };
    if !matches!(document.kind, NodeKind::Mapping(_)) {
        return Err(format!("a Sigma rule is a mapping, found {}", document.describe()).into());
    }
    // Keys cordon does not use (custom attributes) are allowed, as Sigma allows them.
    let get = |name: &str| document.get(name);
    if get("correlation").is_some() {
        return Err("a Sigma correlation rule: count matches with a cordon rule's `threshold:` instead".into());
    }
    if get("filter").is_some() && get("detection").is_none() {
        return Err("a Sigma filter (meta rule): write it as a `not` selection of the rules it filters".into());
    }
    let text_of = |name: &str| get(name).and_then(Node::as_text).map(str::to_owned);
    let title = text_of("title").ok_or("no `title`")?;
    let level_text = text_of("level").ok_or("no `level`: the level decides the response")?;
    let level = Level::from_name(&level_text)
        .ok_or_else(|| format!("level `{level_text}` is not a Sigma level (informational, low, medium, high, critical)"))?;
    let response = options.responses.get(&level).copied().unwrap_or(LevelResponse::Skip);
    if response == LevelResponse::Skip {
        return Err(NotImported::Level(level));
    }
    let logsource = read_logsource(get("logsource").ok_or("no `logsource`")?)?;
    let detection = get("detection").ok_or("no `detection`")?;
    let applicable: Vec<&Transformation> =
        pipeline.transformations.iter().filter(|transformation| transformation.applies_to(&logsource)).collect();
    if let Some(message) = applicable.iter().find_map(|t| match &t.action {
        Action::RuleFailure(message) => Some(message),
        _ => None,
    }) {
        return Err(format!("pipeline {}: {message}", pipeline.name).into());
    }
    let mappings: Vec<&Action> = applicable
        .iter()
        .map(|t| &t.action)
        .filter(|action| matches!(action, Action::FieldNameMapping(_) | Action::FieldNamePrefixMapping(_)))
        .collect();
    let added: Vec<&(String, Node)> = applicable
        .iter()
        .flat_map(|t| match &t.action {
            Action::AddCondition(conditions) => conditions.iter().collect(),
            _ => Vec::new(),
        })
        .collect();
    if mappings.is_empty() && added.is_empty() {
        return Err(format!("pipeline {} maps nothing for logsource {logsource}", pipeline.name).into());
    }
    let id = rule_id(file);
    let mut unmapped = Vec::new();
    let detection_text = convert_detection(detection, &mappings, &added, &mut unmapped)?;
    if !unmapped.is_empty() {
        unmapped.sort();
        unmapped.dedup();
        return Err(format!(
            "no mapping in pipeline {} for logsource {logsource}: {}",
            pipeline.name,
            unmapped.join(", ")
        )
        .into());
    }
    let mut out = String::new();
    let _ = writeln!(out, "{IMPORTED_HEADER}");
    let _ = writeln!(out, "# From {file} with `{}`; edit freely, but remove the first line", options.command);
    let _ = writeln!(out, "# to keep the import from overwriting this file.");
    let _ = writeln!(out, "id: {id}");
    let _ = writeln!(out, "title: {}", quote(&title));
    if let Some(description) = text_of("description") {
        let _ = writeln!(out, "description: {}", quote(description.trim()));
    }
    if !options.live {
        let _ = writeln!(out, "shadow: true");
    }
    write_sigma_origin(&mut out, document, level, &logsource);
    out.push_str(&detection_text);
    let _ = writeln!(out, "response:\n  isolate:");
    match response {
        LevelResponse::Automatic(duration) => {
            let _ = writeln!(out, "    mode: automatic\n    duration: {}", format_duration(duration));
        }
        LevelResponse::Manual => out.push_str("    mode: manual\n"),
        LevelResponse::Approval | LevelResponse::Skip => out.push_str("    mode: approval\n"),
    }
    let loaded = parse_rule_file_with(&format!("{id}.yaml"), &out, Some(policy));
    if let Err(diagnostics) = loaded {
        let problems: Vec<String> = diagnostics.iter().map(|d| d.message.clone()).collect();
        return Err(format!("the converted rule does not load: {}", problems.join("; ")).into());
    }
    Ok(Imported { id, level, response: response.describe(), text: out })
}

/// `sigma:`: the Sigma rule's identity, kept in the converted rule.
fn write_sigma_origin(out: &mut String, rule: &Node, level: Level, logsource: &Logsource) {
    let get = |name: &str| rule.get(name);
    let text_of = |name: &str| get(name).and_then(Node::as_text).map(str::to_owned);
    let _ = writeln!(out, "sigma:");
    if let Some(sigma_id) = text_of("id") {
        let _ = writeln!(out, "  id: {}", quote(&sigma_id));
    }
    let _ = writeln!(out, "  level: {}", level.name());
    if let Some(status) = text_of("status") {
        let _ = writeln!(out, "  status: {}", quote(&status));
    }
    let _ = writeln!(out, "  logsource: {{{}}}", logsource_flow(logsource));
    for single in ["author", "date", "modified"] {
        if let Some(value) = text_of(single) {
            let _ = writeln!(out, "  {single}: {}", quote(&value));
        }
    }
    for list in ["references", "tags", "falsepositives"] {
        let items: Vec<&str> = match get(list).map(|node| &node.kind) {
            Some(NodeKind::Sequence(items)) => items.iter().filter_map(Node::as_text).collect(),
            _ => Vec::new(),
        };
        if !items.is_empty() {
            let _ = writeln!(out, "  {list}:");
            for item in items {
                let _ = writeln!(out, "    - {}", quote(item));
            }
        }
    }
}

/// `sigma-` and the file's stem, lowercased, with `_` and other separators as `-`.
fn rule_id(file: &str) -> String {
    let stem = std::path::Path::new(file).file_stem().and_then(|stem| stem.to_str()).unwrap_or(file);
    let mut id = String::from("sigma-");
    for c in stem.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' => id.push(c),
            'A'..='Z' => id.push(c.to_ascii_lowercase()),
            _ if !id.ends_with('-') => id.push('-'),
            _ => {}
        }
    }
    id.trim_end_matches('-').to_owned()
}

fn read_logsource(node: &Node) -> Result<Logsource, String> {
    if !matches!(node.kind, NodeKind::Mapping(_)) {
        return Err(format!("`logsource` is a mapping, found {}", node.describe()));
    }
    let get = |name: &str| node.get(name).and_then(Node::as_text).map(str::to_owned);
    Ok(Logsource { category: get("category"), product: get("product"), service: get("service") })
}

fn logsource_flow(logsource: &Logsource) -> String {
    [("product", &logsource.product), ("category", &logsource.category), ("service", &logsource.service)]
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|value| format!("{name}: {}", quote(value))))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The event field for a Sigma field, by the first mapping that knows it.
fn map_field(field: &str, mappings: &[&Action]) -> Option<String> {
    for action in mappings {
        match action {
            Action::FieldNameMapping(mapping) => {
                if let Some(target) = mapping.get(field) {
                    return Some(target.clone());
                }
            }
            Action::FieldNamePrefixMapping(mapping) => {
                for (prefix, target) in mapping {
                    if let Some(rest) = field.strip_prefix(prefix.as_str()) {
                        return Some(format!("{target}{rest}"));
                    }
                }
            }
            _ => {}
        }
    }
    None
}

/// The rule's `detection:` with field names mapped, as cordon YAML. Unmapped fields are collected.
fn convert_detection(
    detection: &Node,
    mappings: &[&Action],
    added: &[&(String, Node)],
    unmapped: &mut Vec<String>,
) -> Result<String, String> {
    let NodeKind::Mapping(pairs) = &detection.kind else {
        return Err(format!("`detection` is a mapping, found {}", detection.describe()));
    };
    let mut out = String::from("detection:\n");
    let mut condition = None;
    for (key, value) in pairs {
        let name = key.as_text().ok_or("a selection name is not a string")?;
        if name == "condition" {
            condition = Some(value);
            continue;
        }
        if name == "timeframe" {
            return Err("`timeframe` (Sigma's old aggregation window) is not supported; use `threshold:`".to_owned());
        }
        let _ = writeln!(out, "  {}:", key_text(name));
        emit_selection(value, 4, mappings, unmapped, &mut out);
    }
    let condition = condition.ok_or("`detection` has no `condition`")?;
    let mut condition_text = match &condition.kind {
        NodeKind::Scalar(scalar) => scalar.text.clone(),
        NodeKind::Sequence(items) => items
            .iter()
            .map(|item| item.as_text().map(|text| format!("({text})")))
            .collect::<Option<Vec<_>>>()
            .ok_or("a condition of the list is not a string")?
            .join(" or "),
        NodeKind::Mapping(_) => return Err("`condition` is a mapping".to_owned()),
    };
    if !added.is_empty() {
        let _ = writeln!(out, "  _pipeline_conditions:");
        for (field, value) in added {
            let _ = write!(out, "    {}:", key_text(field));
            emit_value(value, 6, &mut out);
        }
        condition_text = format!("_pipeline_conditions and ({condition_text})");
    }
    let _ = writeln!(out, "  condition: {}", quote(&condition_text));
    Ok(out)
}

/// A selection: a mapping of fields, or a list of keywords and mappings.
fn emit_selection(node: &Node, indent: usize, mappings: &[&Action], unmapped: &mut Vec<String>, out: &mut String) {
    let pad = " ".repeat(indent);
    match &node.kind {
        NodeKind::Mapping(pairs) => emit_fields(pairs, indent, mappings, unmapped, out, &pad),
        NodeKind::Sequence(items) => {
            for item in items {
                if let NodeKind::Mapping(pairs) = &item.kind {
                    // `- field: value` then the other fields under it.
                    let mut first = String::new();
                    emit_fields(pairs, indent + 2, mappings, unmapped, &mut first, &" ".repeat(indent + 2));
                    let _ = write!(out, "{pad}- {}", first.trim_start());
                } else {
                    let _ = write!(out, "{pad}-");
                    emit_value(item, indent + 2, out);
                }
            }
        }
        NodeKind::Scalar(_) => {
            // Not a valid selection; kept as written so that the load names the problem.
            let _ = writeln!(out, "{pad}{}", scalar_text(node));
        }
    }
}

fn emit_fields(
    pairs: &[(Node, Node)],
    indent: usize,
    mappings: &[&Action],
    unmapped: &mut Vec<String>,
    out: &mut String,
    pad: &str,
) {
    for (key, value) in pairs {
        let key_name = key.as_text().unwrap_or_default();
        let (field, modifiers) = key_name.split_once('|').map_or((key_name, ""), |(f, m)| (f, m));
        let mapped = if field.is_empty() {
            String::new()
        } else if let Some(target) = map_field(field, mappings) {
            target
        } else {
            unmapped.push(field.to_owned());
            field.to_owned()
        };
        let full = if modifiers.is_empty() { mapped } else { format!("{mapped}|{modifiers}") };
        let _ = write!(out, "{pad}{}:", key_text(&full));
        emit_value(value, indent + 2, out);
    }
}

/// A value after `key:` (or `-`): a scalar on the same line, a list below it.
fn emit_value(node: &Node, indent: usize, out: &mut String) {
    match &node.kind {
        NodeKind::Scalar(_) => {
            let _ = writeln!(out, " {}", scalar_text(node));
        }
        NodeKind::Sequence(items) => {
            out.push('\n');
            for item in items {
                let _ = write!(out, "{}-", " ".repeat(indent));
                emit_value(item, indent + 2, out);
            }
        }
        NodeKind::Mapping(pairs) => {
            out.push('\n');
            for (key, value) in pairs {
                let _ = write!(out, "{}{}:", " ".repeat(indent), key_text(key.as_text().unwrap_or_default()));
                emit_value(value, indent + 2, out);
            }
        }
    }
}

/// A scalar as YAML: numbers, booleans and null as written when they were plain, text quoted.
fn scalar_text(node: &Node) -> String {
    let Some(scalar) = node.as_scalar() else { return String::new() };
    match scalar.resolve() {
        ScalarValue::String(text) => quote(text),
        _ if scalar.plain => scalar.text.clone(),
        _ => quote(&scalar.text),
    }
}

/// A key: plain when it is a simple name or field path with modifiers, quoted otherwise.
fn key_text(key: &str) -> String {
    let simple = !key.is_empty()
        && key.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '|' | '*'));
    if simple {
        key.to_owned()
    } else {
        quote(key)
    }
}

/// A YAML string: single-quoted (backslashes stay as written, as Sigma values need), or
/// double-quoted with escapes when it holds line breaks or other control characters.
fn quote(text: &str) -> String {
    if text.chars().any(char::is_control) {
        serde_json::to_string(text).unwrap_or_default()
    } else {
        format!("'{}'", text.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIPELINE: &str = "
name: test
transformations:
  - id: process
    type: field_name_mapping
    mapping:
      Image: process.file.path
      CommandLine: process.cmd_line
    rule_conditions:
      - type: logsource
        product: linux
        category: process_creation
  - type: add_condition
    conditions:
      device.os.type: Linux
    rule_conditions:
      - {type: logsource, product: linux}
  - type: rule_failure
    message: auditd events are not detections cordon reads
    rule_conditions:
      - {type: logsource, service: auditd}
";

    fn pipeline() -> Pipeline {
        parse_pipeline("test.yml", PIPELINE).unwrap()
    }

    fn import(text: &str) -> Result<Imported, String> {
        import_rule("proc_creation_lnx_test_rule.yml", text, &pipeline(), &ImportOptions::default(), &Policy::default())
            .map_err(|not_imported| not_imported.to_string())
    }

    const RULE: &str = r"
title: Base64 decoded and piped to a shell
id: 6b3b2e3a-0000-4000-8000-000000000001
status: test
description: It's a test.
references:
  - https://example.com/a
author: someone
tags: [attack.execution]
logsource:
  product: linux
  category: process_creation
detection:
  selection:
    Image|endswith: '/base64'
    CommandLine|contains|all: [' -d', '|']
  keywords:
    - 'it''s'
  filter.main:
    CommandLine|re|i: '^\s*echo'
  condition: 1 of selection* and not filter.main or keywords
level: critical
";

    #[test]
    fn a_rule_converts_with_mapped_fields_metadata_and_its_level_s_response() {
        let imported = import(RULE).unwrap();
        assert_eq!(imported.id, "sigma-proc-creation-lnx-test-rule");
        assert_eq!(imported.response, "automatic 4h");
        let text = &imported.text;
        assert!(text.starts_with(IMPORTED_HEADER), "{text}");
        for expected in [
            "id: sigma-proc-creation-lnx-test-rule\n",
            "shadow: true\n",
            "  id: '6b3b2e3a-0000-4000-8000-000000000001'\n",
            "  level: critical\n",
            "  logsource: {product: 'linux', category: 'process_creation'}\n",
            "    - 'https://example.com/a'\n",
            "    process.file.path|endswith: '/base64'\n",
            "    process.cmd_line|contains|all:\n      - ' -d'\n      - '|'\n",
            "  keywords:\n    - 'it''s'\n",
            "    process.cmd_line|re|i: '^\\s*echo'\n",
            "  _pipeline_conditions:\n    device.os.type: 'Linux'\n",
            "  condition: '_pipeline_conditions and (1 of selection* and not filter.main or keywords)'\n",
            "    mode: automatic\n    duration: 4h\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn what_cannot_be_converted_says_why() {
        let high_unmapped = RULE.replace("Image|endswith", "ParentUser|endswith").replace("level: critical", "level: high");
        assert_eq!(
            import(&high_unmapped).unwrap_err(),
            "no mapping in pipeline test for logsource product linux, category process_creation: ParentUser"
        );
        assert_eq!(
            import(&RULE.replace("level: critical", "level: medium")).unwrap_err(),
            "level medium is not imported (--level medium=approval, or another response, imports it)"
        );
        let auditd = RULE.replace("category: process_creation", "service: auditd");
        assert_eq!(import(&auditd).unwrap_err(), "pipeline test: auditd events are not detections cordon reads");
        let windows = RULE.replace("product: linux", "product: windows");
        assert_eq!(
            import(&windows).unwrap_err(),
            "pipeline test maps nothing for logsource product windows, category process_creation"
        );
        assert!(import(&RULE.replace("condition: 1 of", "timeframe: 5m\n  condition: 1 of")).unwrap_err().contains("timeframe"));
        let bad_regex = RULE.replace("'^\\s*echo'", "'(?<=x)y'");
        assert!(import(&bad_regex).unwrap_err().starts_with("the converted rule does not load: invalid regex"), "{:?}", import(&bad_regex));
        assert!(import("title: x\ncorrelation: {type: event_count}\n").unwrap_err().contains("correlation"));
        assert!(import("a: [").unwrap_err().starts_with("YAML syntax error"));
    }

    /// Nothing a Sigma rule says can write fields of its own into the cordon rule: titles,
    /// selection names, values and conditions with line breaks, quotes and YAML syntax stay text.
    #[test]
    fn hostile_texts_stay_text() {
        let hostile = r##"
title: "x\nresponse:\n  isolate: {mode: manual}"
id: "a'\n  b"
description: "#not a comment\r\nshadow: false"
author: "'; shadow: false"
level: critical
logsource: {product: linux, category: process_creation}
detection:
  "sel: x\nresponse":
    "CommandLine|contains": ["'", "\"", "\n", "# c", "{a: b}", "- d"]
  condition: "sel: x\nresponse"
"##;
        assert!(import(hostile).unwrap_err().contains("is not a valid selection name"));
        let hostile = hostile.replace("sel: x\\nresponse", "sel");
        let imported = import(&hostile).unwrap_or_else(|reason| panic!("{reason}"));
        let parsed = crate::parse_rule_file("converted.yaml", &imported.text).unwrap();
        let [rule] = parsed.rules.as_slice() else { panic!("one rule") };
        assert_eq!(rule.title(), "x\nresponse:\n  isolate: {mode: manual}");
        assert!(rule.shadow(), "{}", imported.text);
        assert_eq!(imported.response, "automatic 4h");
        assert!(imported.text.contains("    mode: automatic\n    duration: 4h\n"), "{}", imported.text);
        assert!(!imported.text.contains("mode: manual\n"), "{}", imported.text);
    }

    #[test]
    fn pipelines_are_checked_whole() {
        let broken = "name: b\ntransformations:\n  - type: drop_detection_item\n  - type: field_name_mapping\n    mapping: {A: [x, y]}\n  - type: field_name_mapping\n    mapping: {A: b}\n    rule_conditions: [{type: processing_item_applied}]\n";
        let messages: Vec<String> =
            parse_pipeline("b.yml", broken).unwrap_err().iter().map(|d| d.message.clone()).collect();
        assert_eq!(
            messages,
            [
                "transformation type `drop_detection_item` is not supported by cordon",
                "a field mapped to several fields is not supported",
                "rule condition type `processing_item_applied` is not supported by cordon",
            ]
        );
        for name in builtin_pipeline_names() {
            let (file, text) = builtin_pipeline(name).unwrap();
            parse_pipeline(file, text).unwrap_or_else(|d| panic!("{name}: {}", d[0]));
        }
    }

    #[test]
    fn level_responses_parse() {
        assert_eq!(LevelResponse::parse("automatic:2h"), Ok(LevelResponse::Automatic(Duration::from_hours(2))));
        assert_eq!(LevelResponse::parse("approval"), Ok(LevelResponse::Approval));
        assert!(LevelResponse::parse("automatic").unwrap_err().contains("needs a duration"));
        assert!(LevelResponse::parse("isolate").unwrap_err().contains("is not a response"));
    }
}
