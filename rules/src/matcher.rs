//! Field matchers: one `field|modifier…: values` line of a selection, compiled once into the
//! cheapest form that decides it (hash sets for literal lists, Aho-Corasick for substring lists,
//! regexes compiled once) and matched against event values with Sigma semantics.

use std::borrow::Cow;
use std::net::IpAddr;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use cordon_wire::spec::Network;
use regex::{Regex, RegexBuilder};
use rustc_hash::FxHashSet;
use serde_json::Value;

use crate::diagnostic::{choices_hint, Report};
use crate::event::FieldPath;
use crate::yaml::{Node, NodeKind, ScalarValue};

/// Compiled regexes may use at most this much memory each; larger ones are refused at load time.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

pub(crate) const MODIFIERS: &[&str] =
    &["contains", "startswith", "endswith", "re", "cidr", "gt", "gte", "lt", "lte", "exists", "all"];

/// How a value is compared, chosen by the modifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Equals,
    Contains,
    StartsWith,
    EndsWith,
    Regex,
    Cidr,
    Compare(Comparison),
    Exists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
}

/// One value test, applied to one scalar event value.
#[derive(Debug, Clone)]
enum Pattern {
    /// Case-insensitive equality with the folded text; numbers also compare numerically.
    Equals {
        folded: Box<str>,
        number: Option<f64>,
    },
    /// `contains`, `startswith` or `endswith` with one value.
    Substring(Substrings),
    /// A Sigma wildcard value (`*`, `?`), compiled to an anchored case-insensitive regex.
    Wildcard(Regex),
    Regex(Regex),
    /// A network; a bare address in the rule stands for itself (/32 or /128).
    Cidr(Network),
    Compare(Comparison, f64),
    /// `field: null`: the field is absent or null.
    Null,
}

/// A faster equivalent of "any of the patterns", built when every pattern is a plain literal.
#[derive(Debug, Clone)]
enum AnyOf {
    /// Equality with any of these folded texts, or numerically with any of these numbers.
    Literals { texts: FxHashSet<Box<str>>, numbers: Vec<f64> },
    /// Substring, prefix or suffix match of any of several texts.
    Substrings(Substrings),
}

/// Case-insensitive substring, prefix or suffix search for one or more needles in one pass.
#[derive(Debug, Clone)]
pub(crate) struct Substrings {
    /// Built on the lowercased needles, ASCII case-insensitive.
    automaton: AhoCorasick,
    kind: Kind,
    /// The lowercased needles.
    needles: Box<[Box<str>]>,
    /// All needles are ASCII: an ASCII haystack can be searched as is, without lowercasing it.
    ascii: bool,
}

impl Substrings {
    /// Finds any of `needles` anywhere in a text.
    pub fn anywhere(needles: &[&str]) -> Option<Self> {
        Self::new(needles, Kind::Contains)
    }

    /// Calls `found` with the index of every needle that occurs in `text`.
    pub fn for_each_found(&self, text: &str, found: &mut impl FnMut(usize)) {
        let mut search = |haystack: &str| {
            for m in self.automaton.find_overlapping_iter(haystack) {
                found(m.pattern().as_usize());
            }
        };
        if self.ascii && text.is_ascii() {
            search(text);
        } else {
            with_folded(text, search);
        }
    }

    fn new(needles: &[&str], kind: Kind) -> Option<Self> {
        let folded: Vec<String> = needles.iter().map(|needle| needle.to_lowercase()).collect();
        let automaton = AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .start_kind(aho_corasick::StartKind::Both)
            .ascii_case_insensitive(true)
            .build(&folded)
            .ok()?;
        let ascii = folded.iter().all(|needle| needle.is_ascii());
        Some(Self { automaton, kind, needles: folded.into_iter().map(Into::into).collect(), ascii })
    }

    fn matches(&self, text: &str) -> bool {
        if self.ascii && text.is_ascii() {
            self.search(text)
        } else {
            with_folded(text, |folded| self.search(folded))
        }
    }

    fn search(&self, haystack: &str) -> bool {
        match self.kind {
            Kind::StartsWith => self
                .automaton
                .find(aho_corasick::Input::new(haystack).anchored(aho_corasick::Anchored::Yes))
                .is_some(),
            Kind::EndsWith => {
                self.automaton.find_overlapping_iter(haystack).any(|m| m.end() == haystack.len())
            }
            _ => self.automaton.is_match(haystack),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct FieldMatcher {
    path: FieldPath,
    test: Test,
}

#[derive(Debug, Clone)]
enum Test {
    Exists(bool),
    /// Every pattern must match some value of the field (`|all`).
    All(Vec<Pattern>),
    /// Some pattern must match some value of the field.
    Any {
        patterns: Vec<Pattern>,
        fast: Option<AnyOf>,
    },
}

impl FieldMatcher {
    pub fn path(&self) -> &FieldPath {
        &self.path
    }

    /// A rough cost so that cheap tests run first within a selection.
    pub fn cost(&self) -> u8 {
        match &self.test {
            Test::Exists(_) => 0,
            Test::Any { fast: Some(AnyOf::Literals { .. }), .. } => 1,
            Test::Any { fast: Some(AnyOf::Substrings { .. }), .. } => 3,
            Test::All(patterns) | Test::Any { patterns, .. } => {
                patterns.iter().map(Pattern::cost).max().unwrap_or(0)
            }
        }
    }

    /// The folded literal texts this matcher requires the field to equal, if it is a plain
    /// any-of-literals equality: used to index rules by a value the event must carry.
    pub fn required_literals(&self) -> Option<&FxHashSet<Box<str>>> {
        match &self.test {
            Test::Any { fast: Some(AnyOf::Literals { texts, numbers }), .. } if numbers.is_empty() => {
                Some(texts)
            }
            _ => None,
        }
    }

    /// Lowercased texts one of which the field must contain for this matcher to hold (from
    /// `contains`, `startswith` and `endswith` without wildcards), if there are such texts.
    pub fn required_substrings(&self) -> Option<Vec<&str>> {
        let needles: Vec<&str> = match &self.test {
            Test::Any { fast: Some(AnyOf::Substrings(substrings)), .. } => {
                substrings.needles.iter().map(|n| &**n).collect()
            }
            Test::Any { patterns, fast: None } => match patterns.as_slice() {
                [Pattern::Substring(substrings)] => substrings.needles.iter().map(|n| &**n).collect(),
                _ => return None,
            },
            // With `all`, every needle is required: the longest is the most selective.
            Test::All(patterns) => {
                let longest = patterns
                    .iter()
                    .filter_map(|pattern| match pattern {
                        Pattern::Substring(substrings) => substrings.needles.first().map(|n| &**n),
                        _ => None,
                    })
                    .max_by_key(|needle| needle.len())?;
                vec![longest]
            }
            _ => return None,
        };
        (!needles.is_empty() && needles.iter().all(|needle| !needle.is_empty())).then_some(needles)
    }

    pub fn matches(&self, event: &Value) -> bool {
        match &self.test {
            Test::Exists(expected) => self.path.any_value(event, &mut |value| !value.is_null()) == *expected,
            Test::Any { fast: Some(fast), .. } => {
                self.path.any_value(event, &mut |value| fast.matches(value))
            }
            Test::Any { patterns, fast: None } => {
                let null_matches = patterns.iter().any(|p| matches!(p, Pattern::Null))
                    && !self.path.any_value(event, &mut |v| !v.is_null());
                null_matches
                    || self
                        .path
                        .any_value(event, &mut |value| patterns.iter().any(|pattern| pattern.matches(value)))
            }
            Test::All(patterns) => patterns.iter().all(|pattern| match pattern {
                Pattern::Null => !self.path.any_value(event, &mut |v| !v.is_null()),
                _ => self.path.any_value(event, &mut |value| pattern.matches(value)),
            }),
        }
    }
}

/// The text of a scalar event value as string patterns see it; None for null, arrays and objects.
fn scalar_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(text) => Some(Cow::Borrowed(text)),
        Value::Number(number) => Some(Cow::Owned(number.to_string())),
        Value::Bool(true) => Some(Cow::Borrowed("true")),
        Value::Bool(false) => Some(Cow::Borrowed("false")),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

fn scalar_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
        _ => None,
    }
}

/// Calls `f` with `text` lowercased, without allocating for short ASCII texts.
pub(crate) fn with_folded<R>(text: &str, f: impl FnOnce(&str) -> R) -> R {
    const STACK: usize = 128;
    if text.is_ascii() {
        if !text.bytes().any(|b| b.is_ascii_uppercase()) {
            return f(text);
        }
        if text.len() <= STACK {
            let mut buffer = [0_u8; STACK];
            let folded = &mut buffer[..text.len()];
            folded.copy_from_slice(text.as_bytes());
            folded.make_ascii_lowercase();
            if let Ok(folded) = std::str::from_utf8(folded) {
                return f(folded);
            }
        }
        return f(&text.to_ascii_lowercase());
    }
    f(&text.to_lowercase())
}

impl AnyOf {
    fn matches(&self, value: &Value) -> bool {
        match self {
            Self::Literals { texts, numbers } => {
                if let Value::Number(number) = value {
                    return number.as_f64().is_some_and(|n| numbers.contains(&n));
                }
                scalar_text(value).is_some_and(|text| with_folded(&text, |folded| texts.contains(folded)))
            }
            Self::Substrings(substrings) => scalar_text(value).is_some_and(|text| substrings.matches(&text)),
        }
    }
}

impl Pattern {
    fn cost(&self) -> u8 {
        match self {
            Self::Null | Self::Equals { .. } | Self::Compare(..) | Self::Cidr(_) => 1,
            Self::Substring(_) => 2,
            Self::Wildcard(_) => 4,
            Self::Regex(_) => 5,
        }
    }

    fn matches(&self, value: &Value) -> bool {
        match self {
            Self::Null => value.is_null(),
            Self::Equals { folded, number } => {
                if let (Value::Number(n), Some(expected)) = (value, number) {
                    return n.as_f64() == Some(*expected);
                }
                scalar_text(value).is_some_and(|text| with_folded(&text, |text| text == &**folded))
            }
            Self::Substring(substrings) => scalar_text(value).is_some_and(|text| substrings.matches(&text)),
            Self::Wildcard(regex) | Self::Regex(regex) => {
                scalar_text(value).is_some_and(|text| regex.is_match(&text))
            }
            Self::Cidr(network) => match value {
                Value::String(text) => text.parse::<IpAddr>().is_ok_and(|address| network.contains(address)),
                _ => false,
            },
            Self::Compare(comparison, bound) => scalar_number(value).is_some_and(|n| match comparison {
                Comparison::Greater => n > *bound,
                Comparison::GreaterOrEqual => n >= *bound,
                Comparison::Less => n < *bound,
                Comparison::LessOrEqual => n <= *bound,
            }),
        }
    }
}

/// Rule values are compared with event numbers as f64, as JSON numbers are.
#[expect(
    clippy::cast_precision_loss,
    reason = "integers beyond 2^53 round as they would in the event's JSON"
)]
fn integer_as_f64(n: i64) -> f64 {
    n as f64
}

/// Whether a Sigma value has unescaped wildcards (`*`, `?`).
fn has_wildcards(text: &str) -> bool {
    let mut escaped = false;
    for c in text.chars() {
        match c {
            '\\' if !escaped => escaped = true,
            '*' | '?' if !escaped => return true,
            _ => escaped = false,
        }
    }
    false
}

/// Removes Sigma escapes: `\*`, `\?` and `\\` stand for the character; other backslashes are literal.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(&next @ ('*' | '?' | '\\')) = chars.peek() {
                out.push(next);
                chars.next();
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// An anchored, case-insensitive regex for a wildcard value, with `*`/`?` added by the modifier.
fn wildcard_regex(text: &str, kind: Kind) -> Result<Regex, regex::Error> {
    let mut pattern = String::from("(?si)^");
    if matches!(kind, Kind::Contains | Kind::EndsWith) {
        pattern.push_str(".*");
    }
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some('*' | '?' | '\\')) => {
                literal.push(chars.next().unwrap_or('\\'));
            }
            '*' | '?' => {
                pattern.push_str(&regex::escape(&literal));
                literal.clear();
                pattern.push_str(if c == '*' { ".*" } else { "." });
            }
            _ => literal.push(c),
        }
    }
    pattern.push_str(&regex::escape(&literal));
    if matches!(kind, Kind::Contains | Kind::StartsWith) {
        pattern.push_str(".*");
    }
    pattern.push('$');
    RegexBuilder::new(&pattern).size_limit(REGEX_SIZE_LIMIT).build()
}

/// The message and the column (0-based, within the pattern) of a regex syntax error.
fn regex_error(error: &regex::Error) -> (String, Option<usize>) {
    match error {
        regex::Error::Syntax(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let message =
                lines.iter().find_map(|line| line.strip_prefix("error: ")).unwrap_or(text).to_owned();
            let column = lines
                .iter()
                .find(|line| line.trim_start().starts_with('^'))
                .map(|line| line.find('^').unwrap_or(4).saturating_sub(4));
            (message, column)
        }
        regex::Error::CompiledTooBig(limit) => {
            (format!("the compiled regex is larger than {limit} bytes"), None)
        }
        other => (other.to_string(), None),
    }
}

fn parse_kind(key: &Node, field: &str, modifiers: &[&str], report: &mut Report<'_>) -> Option<(Kind, bool)> {
    let mut kind = None;
    let mut all = false;
    let mut offset = field.chars().count() + 1;
    let mut ok = true;
    for modifier in modifiers {
        let position = key.position_in_text(offset);
        offset += modifier.chars().count() + 1;
        let this = match *modifier {
            "all" => {
                if all {
                    report.error(position, "modifier `all` is given twice");
                    ok = false;
                }
                all = true;
                continue;
            }
            "contains" => Kind::Contains,
            "startswith" => Kind::StartsWith,
            "endswith" => Kind::EndsWith,
            "re" => Kind::Regex,
            "cidr" => Kind::Cidr,
            "gt" => Kind::Compare(Comparison::Greater),
            "gte" => Kind::Compare(Comparison::GreaterOrEqual),
            "lt" => Kind::Compare(Comparison::Less),
            "lte" => Kind::Compare(Comparison::LessOrEqual),
            "exists" => Kind::Exists,
            unknown => {
                report.error_with_hint(
                    position,
                    format!("unknown modifier `{unknown}`"),
                    choices_hint(unknown, MODIFIERS),
                );
                ok = false;
                continue;
            }
        };
        if let Some(previous) = kind {
            report.error_with_hint(
                position,
                format!("modifier `{modifier}` cannot be combined with `{}`", modifier_name(previous)),
                "use one of contains, startswith, endswith, re, cidr, gt, gte, lt, lte, exists per field (plus `all`)",
            );
            ok = false;
        }
        kind = Some(this);
    }
    let kind = kind.unwrap_or(Kind::Equals);
    if all && !matches!(kind, Kind::Equals | Kind::Contains | Kind::StartsWith | Kind::EndsWith | Kind::Regex)
    {
        report.error_with_hint(
            key.position,
            format!("modifier `all` cannot be combined with `{}`", modifier_name(kind)),
            "`all` works with plain values, contains, startswith, endswith and re",
        );
        ok = false;
    }
    ok.then_some((kind, all))
}

fn modifier_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Equals => "equals",
        Kind::Contains => "contains",
        Kind::StartsWith => "startswith",
        Kind::EndsWith => "endswith",
        Kind::Regex => "re",
        Kind::Cidr => "cidr",
        Kind::Compare(Comparison::Greater) => "gt",
        Kind::Compare(Comparison::GreaterOrEqual) => "gte",
        Kind::Compare(Comparison::Less) => "lt",
        Kind::Compare(Comparison::LessOrEqual) => "lte",
        Kind::Exists => "exists",
    }
}

/// Compiles one `field|modifiers: value-or-list` entry, reporting every problem in it.
pub(crate) fn compile_field(key: &Node, value: &Node, report: &mut Report<'_>) -> Option<FieldMatcher> {
    let Some(key_text) = key.as_text() else {
        report.error(key.position, format!("a field name must be a string, found {}", key.describe()));
        return None;
    };
    let mut parts = key_text.split('|');
    let field = parts.next().unwrap_or_default();
    let modifiers: Vec<&str> = parts.collect();
    let mut ok = true;
    if field.is_empty() {
        report.error_with_hint(
            key.position,
            format!("`{key_text}` names no field"),
            "write the field's dotted path before the modifiers, e.g. process.name|endswith",
        );
        ok = false;
    } else if field.split('.').any(str::is_empty) || field.chars().any(char::is_whitespace) {
        report.error_with_hint(
            key.position,
            format!("field path `{field}` is not a valid dotted path"),
            "write dotted paths like finding_info.attacks.technique.uid",
        );
        ok = false;
    }
    let kind = parse_kind(key, field, &modifiers, report);
    let (kind, all) = kind?;
    let values: Vec<&Node> = match &value.kind {
        NodeKind::Sequence(items) if items.is_empty() => {
            report.error_with_hint(
                value.position,
                "an empty list matches nothing",
                "list at least one value, or remove the field",
            );
            return None;
        }
        NodeKind::Sequence(items) => items.iter().collect(),
        NodeKind::Scalar(_) => vec![value],
        NodeKind::Mapping(_) => {
            report.error_with_hint(
                value.position,
                format!("the value of `{key_text}` is a mapping"),
                "give a value or a list of values (any of them matches)",
            );
            return None;
        }
    };
    if kind == Kind::Exists {
        if let ([_], Some(ScalarValue::Bool(expected))) =
            (values.as_slice(), values[0].as_scalar().map(crate::yaml::Scalar::resolve))
        {
            return ok.then(|| FieldMatcher { path: FieldPath::new(field), test: Test::Exists(expected) });
        }
        report.error_with_hint(
            value.position,
            "`exists` takes true or false",
            "e.g. `process.parent.name|exists: true`",
        );
        return None;
    }
    let mut patterns = Vec::with_capacity(values.len());
    for item in values {
        if let Some(pattern) = compile_pattern(item, kind, report) {
            patterns.push(pattern);
        } else {
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    let path = FieldPath::new(field);
    if all {
        return Some(FieldMatcher { path, test: Test::All(patterns) });
    }
    let fast = build_any_of(&patterns, kind);
    Some(FieldMatcher { path, test: Test::Any { patterns, fast } })
}

fn build_any_of(patterns: &[Pattern], kind: Kind) -> Option<AnyOf> {
    match kind {
        Kind::Equals => {
            let mut texts = FxHashSet::default();
            let mut numbers = Vec::new();
            for pattern in patterns {
                let Pattern::Equals { folded, number } = pattern else {
                    return None;
                };
                texts.insert(folded.clone());
                numbers.extend(*number);
            }
            Some(AnyOf::Literals { texts, numbers })
        }
        Kind::Contains | Kind::StartsWith | Kind::EndsWith if patterns.len() > 1 => {
            let mut needles = Vec::with_capacity(patterns.len());
            for pattern in patterns {
                let Pattern::Substring(single) = pattern else { return None };
                needles.extend(single.needles.iter().map(|needle| &**needle));
            }
            Substrings::new(&needles, kind).map(AnyOf::Substrings)
        }
        _ => None,
    }
}

fn compile_pattern(node: &Node, kind: Kind, report: &mut Report<'_>) -> Option<Pattern> {
    let Some(scalar) = node.as_scalar() else {
        report.error_with_hint(
            node.position,
            format!("a list value must be a scalar, found {}", node.describe()),
            "nested lists and mappings are not values",
        );
        return None;
    };
    let resolved = scalar.resolve();
    let text = scalar.text.as_str();
    match kind {
        Kind::Equals | Kind::Contains | Kind::StartsWith | Kind::EndsWith => {
            if resolved == ScalarValue::Null {
                if kind == Kind::Equals {
                    return Some(Pattern::Null);
                }
                report.error(
                    node.position,
                    format!("`{}` needs a text value, found null", modifier_name(kind)),
                );
                return None;
            }
            if has_wildcards(text) {
                return match wildcard_regex(text, kind) {
                    Ok(regex) => Some(Pattern::Wildcard(regex)),
                    Err(error) => {
                        report.error(
                            node.position,
                            format!("wildcard value `{text}` cannot be compiled: {}", regex_error(&error).0),
                        );
                        None
                    }
                };
            }
            let folded: Box<str> = unescape(text).to_lowercase().into();
            Some(match kind {
                Kind::Contains | Kind::StartsWith | Kind::EndsWith => {
                    let Some(substrings) = Substrings::new(&[&folded], kind) else {
                        report.error(node.position, format!("value `{text}` is too large to search for"));
                        return None;
                    };
                    Pattern::Substring(substrings)
                }
                _ => {
                    let number = match resolved {
                        ScalarValue::Integer(n) => Some(integer_as_f64(n)),
                        ScalarValue::Float(n) if n.is_finite() => Some(n),
                        _ => text.parse::<f64>().ok().filter(|n| n.is_finite()),
                    };
                    Pattern::Equals { folded, number }
                }
            })
        }
        Kind::Regex => match RegexBuilder::new(text).size_limit(REGEX_SIZE_LIMIT).build() {
            Ok(regex) => Some(Pattern::Regex(regex)),
            Err(error) => {
                let (message, column) = regex_error(&error);
                let position = column.map_or(node.position, |column| node.position_in_text(column));
                report.error_with_hint(
                    position,
                    format!("invalid regex `{text}`: {message}"),
                    "regexes use Rust regex syntax (no look-around or backreferences)",
                );
                None
            }
        },
        Kind::Cidr => match text.parse::<IpAddr>().map(Network::host).or_else(|_| text.parse::<Network>()) {
            Ok(network) => Some(Pattern::Cidr(network)),
            Err(error) => {
                report.error_with_hint(
                    node.position,
                    format!("invalid CIDR: {error}"),
                    "write an address with its prefix, e.g. 10.0.0.0/8 or fd00::/8",
                );
                None
            }
        },
        Kind::Compare(comparison) => match resolved {
            ScalarValue::Integer(n) => Some(Pattern::Compare(comparison, integer_as_f64(n))),
            ScalarValue::Float(n) if n.is_finite() => Some(Pattern::Compare(comparison, n)),
            _ => {
                report.error_with_hint(
                    node.position,
                    format!("`{}` needs a number, found `{text}`", modifier_name(kind)),
                    "e.g. `severity_id|gte: 4`",
                );
                None
            }
        },
        Kind::Exists => None,
    }
}
