//! Field matchers: one `field|modifier…: values` line of a selection (or a keyword list), compiled
//! once into the cheapest form that decides it (hash sets for literal lists, Aho-Corasick for
//! substring lists, regexes compiled once) and matched against event values with the semantics of
//! the Sigma specification: every modifier it defines, case-insensitive text unless `cased`,
//! wildcards and escapes, keywords searched in every text of the event.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::net::IpAddr;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use cordon_wire::spec::Network;
use regex::{Regex, RegexBuilder};
use rustc_hash::FxHashSet;
use crate::fields::Field;

use crate::diagnostic::{choices_hint, Position, Report};
use crate::event::FieldPath;
use crate::sigma_string::{SigmaString, TransformError, Utf16, MAX_ALTERNATIVES};
use crate::yaml::{Node, NodeKind, ScalarValue};

/// Compiled regexes may use at most this much memory each; larger ones are refused at load time.
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 20;

pub(crate) const MODIFIERS: &[&str] = &[
    "contains",
    "startswith",
    "endswith",
    "re",
    "i",
    "m",
    "s",
    "cidr",
    "gt",
    "gte",
    "lt",
    "lte",
    "neq",
    "exists",
    "all",
    "cased",
    "windash",
    "base64",
    "base64offset",
    "utf16le",
    "utf16be",
    "utf16",
    "wide",
    "expand",
    "fieldref",
    "minute",
    "hour",
    "day",
    "week",
    "month",
    "year",
];

/// What rules are compiled against: the directory's placeholders and keyword fields (policy.yaml).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatchContext<'a> {
    /// The values of each `%placeholder%`; None when the policy could not be read (placeholders
    /// are then not checked: the load fails on the policy's own errors).
    pub placeholders: Option<&'a BTreeMap<String, Vec<SigmaString>>>,
    /// The fields keyword selections search; empty: every text of the event.
    pub keyword_fields: &'a [FieldPath],
}

impl MatchContext<'_> {
    pub const NONE: MatchContext<'static> = MatchContext { placeholders: None, keyword_fields: &[] };
}

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

/// A part of a date the time modifiers (`hour`, …) compare instead of the date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimePart {
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

/// A modifier that turns each value into one or more other values before matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transform {
    Windash,
    Base64,
    Base64Offset,
    Utf16(Utf16, &'static str),
    Expand,
}

/// One value test, applied to one scalar event value.
#[derive(Debug, Clone)]
enum Pattern {
    /// Case-insensitive equality with the folded text; numbers also compare numerically.
    Equals {
        folded: Box<str>,
        number: Option<f64>,
    },
    /// `cased`: equality with the text as written.
    CasedEquals(Box<str>),
    /// `contains`, `startswith` or `endswith` with one value.
    Substring(Substrings),
    /// A Sigma wildcard value (`*`, `?`), compiled to an anchored regex.
    Wildcard(Regex),
    Regex(Regex),
    /// A network; a bare address in the rule stands for itself (/32 or /128).
    Cidr(Network),
    Compare(Comparison, f64),
    /// A part of the value's date (`hour`, …) equal to or compared with a number.
    Time(TimePart, Option<Comparison>, f64),
    /// `field: null`: the field is absent or null.
    Null,
    /// The alternatives one value became (`windash`, `base64offset`, `expand`): any of them.
    AnyOf(Vec<Pattern>),
}

/// A faster equivalent of "any of the patterns", built when every pattern is a plain literal.
#[derive(Debug, Clone)]
enum AnyOf {
    /// Equality with any of these folded texts, or numerically with any of these numbers.
    Literals { texts: FxHashSet<Box<str>>, numbers: Vec<f64> },
    /// Substring, prefix or suffix match of any of several texts.
    Substrings(Substrings),
}

/// Case-insensitive (or, `cased`, exact) substring, prefix or suffix search for one or more
/// needles in one pass.
#[derive(Debug, Clone)]
pub(crate) struct Substrings {
    /// Built on the lowercased needles, ASCII case-insensitive; on the needles as written if cased.
    automaton: AhoCorasick,
    kind: Kind,
    /// The lowercased needles (what an event must contain, ignoring case, for a match).
    needles: Box<[Box<str>]>,
    /// All needles are ASCII: an ASCII haystack can be searched as is, without lowercasing it.
    ascii: bool,
    cased: bool,
    /// The needles as written.
    written: Box<[Box<str>]>,
}

impl Substrings {
    /// Finds any of `needles` anywhere in a text, ignoring case.
    pub fn anywhere(needles: &[&str]) -> Option<Self> {
        Self::new(needles, Kind::Contains, false)
    }

    /// Calls `found` with the index of every needle that occurs in `text`.
    pub fn for_each_found(&self, text: &str, found: &mut impl FnMut(usize)) {
        let mut search = |haystack: &str| {
            for m in self.automaton.find_overlapping_iter(haystack) {
                found(m.pattern().as_usize());
            }
        };
        if self.cased || (self.ascii && text.is_ascii()) {
            search(text);
        } else {
            with_folded(text, search);
        }
    }

    fn new(needles: &[&str], kind: Kind, cased: bool) -> Option<Self> {
        let folded: Vec<String> = needles.iter().map(|needle| needle.to_lowercase()).collect();
        let automaton = AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .start_kind(aho_corasick::StartKind::Both)
            .ascii_case_insensitive(!cased)
            .build(if cased { needles.iter().map(ToString::to_string).collect::<Vec<_>>() } else { folded.clone() })
            .ok()?;
        let ascii = folded.iter().all(|needle| needle.is_ascii());
        let written = needles.iter().map(|needle| Box::from(*needle)).collect();
        Some(Self { automaton, kind, needles: folded.into_iter().map(Into::into).collect(), ascii, cased, written })
    }

    /// The lowercased needles.
    pub fn needles(&self) -> impl Iterator<Item = &str> {
        self.needles.iter().map(|needle| &**needle)
    }

    fn matches(&self, text: &str) -> bool {
        if self.cased || (self.ascii && text.is_ascii()) {
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

/// Where a matcher looks: one field, or (a keyword selection) the texts of the whole event or of
/// the keyword fields policy.yaml names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    Field(FieldPath),
    Keywords(Box<[FieldPath]>),
}

impl Target {
    /// Calls `visit` on every value the target reaches until it returns true; returns whether it did.
    pub fn any_value<'e>(&self, event: Field<'e>, visit: &mut impl FnMut(Field<'e>) -> bool) -> bool {
        match self {
            Self::Field(path) => path.any_value(event, visit),
            Self::Keywords(fields) if fields.is_empty() => any_text(event, visit),
            Self::Keywords(fields) => {
                fields.iter().any(|path| path.any_value(event, &mut |value| any_text(value, visit)))
            }
        }
    }

    /// The fields the target reads; None: the whole event.
    pub fn paths(&self) -> Option<&[FieldPath]> {
        match self {
            Self::Field(path) => Some(std::slice::from_ref(path)),
            Self::Keywords(fields) if fields.is_empty() => None,
            Self::Keywords(fields) => Some(fields),
        }
    }

    /// Every text of the whole event (a keyword search without `keyword_fields`).
    pub fn is_every_text(&self) -> bool {
        matches!(self, Self::Keywords(fields) if fields.is_empty())
    }
}

/// The event being matched, with what its matchers share computed once, when first needed.
pub(crate) struct Subject<'e> {
    fields: Field<'e>,
    /// Every string of the event, lowercased, each followed by a NUL, as the projected parse
    /// captured them.
    captured: Option<&'e str>,
    /// The same, built from the fields when the parse did not capture them.
    folded_texts: OnceCell<String>,
}

impl<'e> Subject<'e> {
    pub fn new(event: &'e crate::event::Event) -> Self {
        Self { fields: event.fields().root(), captured: event.folded_texts(), folded_texts: OnceCell::new() }
    }

    #[cfg(test)]
    pub fn of_fields(fields: Field<'e>) -> Self {
        Self { fields, captured: None, folded_texts: OnceCell::new() }
    }

    pub fn fields(&self) -> Field<'e> {
        self.fields
    }

    /// Every string of the event, lowercased, joined by NULs. A needle without a NUL is found
    /// here exactly when some string contains it.
    pub fn folded_texts(&self) -> &str {
        if let Some(captured) = self.captured {
            return captured;
        }
        self.folded_texts.get_or_init(|| {
            // One allocation of the right size (lowercasing keeps the length of ASCII text).
            let mut length = 0;
            any_text(self.fields, &mut |value| {
                if let Field::String(text) = value {
                    length += text.len() + 1;
                }
                false
            });
            let mut joined = String::with_capacity(length);
            any_text(self.fields, &mut |value| {
                if let Field::String(text) = value {
                    push_folded(&mut joined, text);
                    joined.push('\0');
                }
                false
            });
            joined
        })
    }
}

/// An exact leftmost-first automaton for lowercased needles, to search [`Subject::folded_texts`]
/// (faster than a case-insensitive one on a haystack already lowercased, and free to use the
/// fastest prefilters). None if a needle is empty or has a NUL.
pub(crate) fn folded_automaton<'n>(needles: impl IntoIterator<Item = &'n str>) -> Option<AhoCorasick> {
    let needles: Vec<&str> = needles.into_iter().collect();
    if needles.is_empty() || needles.iter().any(|needle| needle.is_empty() || needle.contains('\0')) {
        return None;
    }
    AhoCorasickBuilder::new().match_kind(MatchKind::LeftmostFirst).build(needles).ok()
}

/// Every string in `value`, at any depth.
fn any_text<'e>(value: Field<'e>, visit: &mut impl FnMut(Field<'e>) -> bool) -> bool {
    match value {
        Field::String(_) => visit(value),
        Field::Array(items) | Field::Object(items) => items.values().any(|item| any_text(item, visit)),
        Field::Null | Field::Bool(_) | Field::Number(_) => false,
    }
}

#[derive(Debug, Clone)]
pub(crate) struct FieldMatcher {
    target: Target,
    test: Test,
    /// `neq`: the matcher holds when the test does not.
    negated: bool,
    /// A keyword search of every text that one search of the joined texts answers.
    joined: Option<JoinedSearch>,
}

#[derive(Debug, Clone)]
enum Test {
    /// The field is present (even if null) or absent.
    Exists(bool),
    /// Every pattern must match some value of the field (`|all`).
    All(Vec<Pattern>),
    /// Some pattern must match some value of the field.
    Any {
        patterns: Vec<Pattern>,
        fast: Option<AnyOf>,
    },
    /// `fieldref`: some value of the field compares (by `kind`) with some value of another field;
    /// with `all`, with some value of each of them.
    FieldRef { others: Vec<FieldPath>, kind: Kind, cased: bool, all: bool },
}

/// Searches of [`Subject::folded_texts`] for a keyword test of plain `contains` patterns.
#[derive(Debug, Clone)]
enum JoinedSearch {
    /// Some needle is found.
    Any(AhoCorasick),
    /// Each automaton finds one of its needles.
    All(Vec<AhoCorasick>),
}

impl JoinedSearch {
    fn for_test(target: &Target, test: &Test) -> Option<Self> {
        if !target.is_every_text() {
            return None;
        }
        let automaton = |substrings: &Substrings| {
            if substrings.kind != Kind::Contains || substrings.cased {
                return None;
            }
            folded_automaton(substrings.needles())
        };
        match test {
            Test::Any { fast: Some(AnyOf::Substrings(substrings)), .. } => automaton(substrings).map(Self::Any),
            Test::Any { patterns, fast: None } => match patterns.as_slice() {
                [Pattern::Substring(substrings)] => automaton(substrings).map(Self::Any),
                _ => None,
            },
            Test::All(patterns) => patterns
                .iter()
                .map(|pattern| match pattern {
                    Pattern::Substring(substrings) => automaton(substrings),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .map(Self::All),
            _ => None,
        }
    }

    fn found(&self, folded_texts: &str) -> bool {
        match self {
            Self::Any(automaton) => automaton.is_match(folded_texts),
            Self::All(automatons) => automatons.iter().all(|automaton| automaton.is_match(folded_texts)),
        }
    }
}

impl FieldMatcher {
    fn new(target: Target, test: Test, negated: bool) -> Self {
        let joined = JoinedSearch::for_test(&target, &test);
        Self { target, test, negated, joined }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Every field the matcher reads; None: the whole event.
    pub fn paths(&self) -> Option<Vec<&FieldPath>> {
        let mut paths: Vec<&FieldPath> = self.target.paths()?.iter().collect();
        if let Test::FieldRef { others, .. } = &self.test {
            paths.extend(others);
        }
        Some(paths)
    }

    /// A rough cost so that cheap tests run first within a selection.
    pub fn cost(&self) -> u8 {
        let test = match &self.test {
            Test::Exists(_) => 0,
            Test::Any { fast: Some(AnyOf::Literals { .. }), .. } => 1,
            Test::Any { fast: Some(AnyOf::Substrings { .. }), .. } | Test::FieldRef { .. } => 3,
            Test::All(patterns) | Test::Any { patterns, .. } => {
                patterns.iter().map(Pattern::cost).max().unwrap_or(0)
            }
        };
        match self.target {
            Target::Field(_) => test,
            Target::Keywords(_) => test.saturating_add(4),
        }
    }

    /// The folded literal texts this matcher requires the field to equal, if it is a plain
    /// any-of-literals equality: used to index rules by a value the event must carry.
    pub fn required_literals(&self) -> Option<&FxHashSet<Box<str>>> {
        match (&self.test, self.negated) {
            (Test::Any { fast: Some(AnyOf::Literals { texts, numbers }), .. }, false) if numbers.is_empty() => {
                Some(texts)
            }
            _ => None,
        }
    }

    /// Lowercased texts one of which the target must contain for this matcher to hold (from
    /// `contains`, `startswith` and `endswith` without wildcards), if there are such texts.
    pub fn required_substrings(&self) -> Option<Vec<&str>> {
        if self.negated {
            return None;
        }
        let needles: Vec<&str> = match &self.test {
            Test::Any { fast: Some(AnyOf::Substrings(substrings)), .. } => substrings.needles().collect(),
            Test::Any { patterns, fast: None } => match patterns.as_slice() {
                [Pattern::Substring(substrings)] => substrings.needles().collect(),
                _ => return None,
            },
            // With `all`, every needle is required: the longest is the most selective.
            Test::All(patterns) => {
                let longest = patterns
                    .iter()
                    .filter_map(|pattern| match pattern {
                        Pattern::Substring(substrings) if substrings.needles.len() == 1 => {
                            substrings.needles().next()
                        }
                        _ => None,
                    })
                    .max_by_key(|needle| needle.len())?;
                vec![longest]
            }
            _ => return None,
        };
        (!needles.is_empty() && needles.iter().all(|needle| !needle.is_empty() && !needle.contains('\0')))
            .then_some(needles)
    }

    pub fn matches(&self, subject: &Subject<'_>) -> bool {
        let holds = match &self.joined {
            Some(joined) => joined.found(subject.folded_texts()),
            None => self.test_holds(subject.fields()),
        };
        holds != self.negated
    }

    fn test_holds(&self, event: Field<'_>) -> bool {
        let target = &self.target;
        match &self.test {
            Test::Exists(expected) => target.any_value(event, &mut |_| true) == *expected,
            Test::Any { fast: Some(fast), .. } => target.any_value(event, &mut |value| fast.matches(value)),
            Test::Any { patterns, fast: None } => {
                let null_matches = patterns.iter().any(|p| matches!(p, Pattern::Null))
                    && !target.any_value(event, &mut |v| !v.is_null());
                null_matches
                    || target.any_value(event, &mut |value| patterns.iter().any(|pattern| pattern.matches(value)))
            }
            Test::All(patterns) => patterns.iter().all(|pattern| match pattern {
                Pattern::Null => !target.any_value(event, &mut |v| !v.is_null()),
                _ => target.any_value(event, &mut |value| pattern.matches(value)),
            }),
            Test::FieldRef { others, kind, cased, all } => {
                let compares = |other: &FieldPath| {
                    other.any_value(event, &mut |reference| {
                        let Some(reference) = scalar_text(reference) else { return false };
                        target.any_value(event, &mut |value| {
                            scalar_text(value).is_some_and(|text| compare_texts(&text, &reference, *kind, *cased))
                        })
                    })
                };
                if *all {
                    others.iter().all(compares)
                } else {
                    others.iter().any(compares)
                }
            }
        }
    }
}

/// `fieldref`: whether `text` equals, contains, starts or ends with `reference`.
fn compare_texts(text: &str, reference: &str, kind: Kind, cased: bool) -> bool {
    if kind == Kind::Equals && !cased && text.is_ascii() && reference.is_ascii() {
        return text.eq_ignore_ascii_case(reference);
    }
    let (text, reference): (Cow<'_, str>, Cow<'_, str>) = if cased {
        (Cow::Borrowed(text), Cow::Borrowed(reference))
    } else {
        (Cow::Owned(text.to_lowercase()), Cow::Owned(reference.to_lowercase()))
    };
    match kind {
        Kind::Contains => text.contains(&*reference),
        Kind::StartsWith => text.starts_with(&*reference),
        Kind::EndsWith => text.ends_with(&*reference),
        _ => text == reference,
    }
}

/// The text of a scalar event value as string patterns see it; None for null, arrays and objects.
fn scalar_text(value: Field<'_>) -> Option<Cow<'_, str>> {
    match value {
        Field::String(text) => Some(Cow::Borrowed(text)),
        Field::Number(number) => Some(Cow::Owned(number.to_string())),
        Field::Bool(true) => Some(Cow::Borrowed("true")),
        Field::Bool(false) => Some(Cow::Borrowed("false")),
        Field::Null | Field::Array(_) | Field::Object(_) => None,
    }
}

fn scalar_number(value: Field<'_>) -> Option<f64> {
    match value {
        Field::Number(number) => number.as_f64(),
        Field::String(text) => text.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
        _ => None,
    }
}

/// The part of a date value: RFC 3339 text (with its own offset, not converted), or a number of
/// epoch milliseconds (OCSF's timestamps, read as UTC).
#[expect(clippy::cast_possible_truncation, reason = "epoch milliseconds as f64 are whole numbers in range")]
fn time_part(value: Field<'_>, part: TimePart) -> Option<f64> {
    let date = match value {
        Field::String(text) => crate::format::parse_date_time(text)?,
        Field::Number(number) => {
            let ms = number.as_i64().or_else(|| number.as_f64().filter(|n| n.is_finite()).map(|n| n as i64))?;
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?
        }
        _ => return None,
    };
    Some(f64::from(match part {
        TimePart::Minute => i32::from(date.minute()),
        TimePart::Hour => i32::from(date.hour()),
        TimePart::Day => i32::from(date.day()),
        TimePart::Week => i32::from(date.iso_week()),
        TimePart::Month => i32::from(u8::from(date.month())),
        TimePart::Year => date.year(),
    }))
}

/// Appends `text` lowercased (as [`with_folded`] lowercases it) to `out`, lowercasing in place.
pub(crate) fn push_folded(out: &mut String, text: &str) {
    if text.is_ascii() {
        let start = out.len();
        out.push_str(text);
        out[start..].make_ascii_lowercase();
    } else {
        out.push_str(&text.to_lowercase());
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
    fn matches(&self, value: Field<'_>) -> bool {
        match self {
            Self::Literals { texts, numbers } => {
                if let Field::Number(number) = value {
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
            Self::Null | Self::Equals { .. } | Self::CasedEquals(_) | Self::Compare(..) | Self::Cidr(_) => 1,
            Self::Substring(_) | Self::Time(..) => 2,
            Self::Wildcard(_) => 4,
            Self::Regex(_) => 5,
            Self::AnyOf(patterns) => patterns.iter().map(Pattern::cost).max().unwrap_or(0),
        }
    }

    fn matches(&self, value: Field<'_>) -> bool {
        match self {
            Self::Null => value.is_null(),
            Self::Equals { folded, number } => {
                if let (Field::Number(n), Some(expected)) = (value, number) {
                    return n.as_f64() == Some(*expected);
                }
                scalar_text(value).is_some_and(|text| with_folded(&text, |text| text == &**folded))
            }
            Self::CasedEquals(expected) => scalar_text(value).is_some_and(|text| *text == **expected),
            Self::Substring(substrings) => scalar_text(value).is_some_and(|text| substrings.matches(&text)),
            Self::Wildcard(regex) | Self::Regex(regex) => {
                scalar_text(value).is_some_and(|text| regex.is_match(&text))
            }
            Self::Cidr(network) => match value {
                Field::String(text) => text.parse::<IpAddr>().is_ok_and(|address| network.contains(address)),
                _ => false,
            },
            Self::Compare(comparison, bound) => scalar_number(value).is_some_and(|n| comparison.holds(n, *bound)),
            Self::Time(part, comparison, bound) => time_part(value, *part).is_some_and(|n| match comparison {
                Some(comparison) => comparison.holds(n, *bound),
                None => (n - bound).abs() < f64::EPSILON,
            }),
            Self::AnyOf(patterns) => patterns.iter().any(|pattern| pattern.matches(value)),
        }
    }
}

impl Comparison {
    fn holds(self, n: f64, bound: f64) -> bool {
        match self {
            Self::Greater => n > bound,
            Self::GreaterOrEqual => n >= bound,
            Self::Less => n < bound,
            Self::LessOrEqual => n <= bound,
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
            (format!("the compiled regex is larger than {limit} bytes, cordon's limit per regex"), None)
        }
        other => (other.to_string(), None),
    }
}

/// Sigma's `re` flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RegexFlags {
    insensitive: bool,
    multi_line: bool,
    dot_all: bool,
}

/// The modifiers of one field, read and checked.
#[derive(Debug, Clone)]
#[expect(clippy::struct_excessive_bools, reason = "each is one Sigma modifier, independent of the others")]
struct Modifiers {
    kind: Kind,
    transforms: Vec<Transform>,
    all: bool,
    cased: bool,
    negated: bool,
    fieldref: bool,
    flags: RegexFlags,
    time: Option<TimePart>,
}

impl Modifiers {
    /// No modifier: a plain value.
    const PLAIN: Modifiers = Modifiers {
        kind: Kind::Equals,
        transforms: Vec::new(),
        all: false,
        cased: false,
        negated: false,
        fieldref: false,
        flags: RegexFlags { insensitive: false, multi_line: false, dot_all: false },
        time: None,
    };

    /// Whether values are text (patterns that wildcards, transforms and `cased` apply to).
    fn text_kind(&self) -> bool {
        matches!(self.kind, Kind::Equals | Kind::Contains | Kind::StartsWith | Kind::EndsWith)
    }
}

/// One modifier's meaning.
enum Modifier {
    Kind(Kind),
    Transform(Transform),
    Time(TimePart),
    All,
    Cased,
    Negated,
    FieldRef,
    Flag(fn(&mut RegexFlags)),
}

fn modifier(name: &str) -> Option<Modifier> {
    Some(match name {
        "contains" => Modifier::Kind(Kind::Contains),
        "startswith" => Modifier::Kind(Kind::StartsWith),
        "endswith" => Modifier::Kind(Kind::EndsWith),
        "re" => Modifier::Kind(Kind::Regex),
        "cidr" => Modifier::Kind(Kind::Cidr),
        "gt" => Modifier::Kind(Kind::Compare(Comparison::Greater)),
        "gte" => Modifier::Kind(Kind::Compare(Comparison::GreaterOrEqual)),
        "lt" => Modifier::Kind(Kind::Compare(Comparison::Less)),
        "lte" => Modifier::Kind(Kind::Compare(Comparison::LessOrEqual)),
        "exists" => Modifier::Kind(Kind::Exists),
        "windash" => Modifier::Transform(Transform::Windash),
        "base64" => Modifier::Transform(Transform::Base64),
        "base64offset" => Modifier::Transform(Transform::Base64Offset),
        "utf16le" => Modifier::Transform(Transform::Utf16(Utf16::LittleEndian, "utf16le")),
        "wide" => Modifier::Transform(Transform::Utf16(Utf16::LittleEndian, "wide")),
        "utf16be" => Modifier::Transform(Transform::Utf16(Utf16::BigEndian, "utf16be")),
        "utf16" => Modifier::Transform(Transform::Utf16(Utf16::WithByteOrderMark, "utf16")),
        "expand" => Modifier::Transform(Transform::Expand),
        "minute" => Modifier::Time(TimePart::Minute),
        "hour" => Modifier::Time(TimePart::Hour),
        "day" => Modifier::Time(TimePart::Day),
        "week" => Modifier::Time(TimePart::Week),
        "month" => Modifier::Time(TimePart::Month),
        "year" => Modifier::Time(TimePart::Year),
        "all" => Modifier::All,
        "cased" => Modifier::Cased,
        "neq" => Modifier::Negated,
        "fieldref" => Modifier::FieldRef,
        "i" => Modifier::Flag(|flags| flags.insensitive = true),
        "m" => Modifier::Flag(|flags| flags.multi_line = true),
        "s" => Modifier::Flag(|flags| flags.dot_all = true),
        _ => return None,
    })
}

fn kind_name(kind: Kind) -> &'static str {
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

/// Reads the modifiers after a field name, reporting every unknown, repeated or conflicting one.
fn parse_modifiers(
    key: &Node,
    field: &str,
    names: &[&str],
    keyword: bool,
    report: &mut Report<'_>,
) -> Option<Modifiers> {
    let mut modifiers = Modifiers::PLAIN;
    let mut kind: Option<&str> = None;
    let mut seen: Vec<&str> = Vec::new();
    let mut positions: Vec<(&str, Position)> = Vec::new();
    let mut offset = field.chars().count() + 1;
    let mut ok = true;
    for &name in names {
        let position = key.position_in_text(offset);
        offset += name.chars().count() + 1;
        positions.push((name, position));
        let Some(meaning) = modifier(name) else {
            report.error_with_hint(position, format!("unknown modifier `{name}`"), choices_hint(name, MODIFIERS));
            ok = false;
            continue;
        };
        if seen.contains(&name) {
            report.error(position, format!("modifier `{name}` is given twice"));
            ok = false;
            continue;
        }
        seen.push(name);
        match meaning {
            Modifier::Kind(this) => {
                if let Some(previous) = kind {
                    report.error_with_hint(
                        position,
                        format!("modifier `{name}` cannot be combined with `{previous}`"),
                        "use one of contains, startswith, endswith, re, cidr, gt, gte, lt, lte, exists per field",
                    );
                    ok = false;
                }
                kind = Some(name);
                modifiers.kind = this;
            }
            Modifier::Transform(transform) => modifiers.transforms.push(transform),
            Modifier::Time(part) => {
                if modifiers.time.is_some() {
                    report.error(position, format!("modifier `{name}` cannot be combined with another time part"));
                    ok = false;
                }
                modifiers.time = Some(part);
            }
            Modifier::All => modifiers.all = true,
            Modifier::Cased => modifiers.cased = true,
            Modifier::Negated => modifiers.negated = true,
            Modifier::FieldRef => modifiers.fieldref = true,
            Modifier::Flag(set) => set(&mut modifiers.flags),
        }
    }
    let combinable = check_combinations(&modifiers, &seen, &positions, key.position, keyword, report);
    (ok && combinable).then_some(modifiers)
}

/// Reports every pair of modifiers that cannot go together; returns whether there was none.
fn check_combinations(
    modifiers: &Modifiers,
    seen: &[&str],
    positions: &[(&str, Position)],
    key_position: Position,
    keyword: bool,
    report: &mut Report<'_>,
) -> bool {
    let mut ok = true;
    let at = |wanted: &str| positions.iter().find(|(name, _)| *name == wanted).map_or(key_position, |(_, p)| *p);
    let mut conflict = |name: &str, message: String, hint: &str| {
        report.error_with_hint(at(name), message, hint);
        ok = false;
    };
    let kind_text = kind_name(modifiers.kind);
    let time_name = seen.iter().copied().find(|name| matches!(modifier(name), Some(Modifier::Time(_))));
    for flag in ["i", "m", "s"] {
        if seen.contains(&flag) && modifiers.kind != Kind::Regex {
            conflict(flag, format!("modifier `{flag}` is a flag of `re`"), "write it after re, e.g. `field|re|i`");
        }
    }
    if let Some(&transform) = seen.iter().find(|name| matches!(modifier(name), Some(Modifier::Transform(_)))) {
        if !modifiers.text_kind() || modifiers.fieldref || time_name.is_some() {
            let other = if modifiers.fieldref { "fieldref" } else { time_name.unwrap_or(kind_text) };
            conflict(
                transform,
                format!("modifier `{transform}` transforms text values; it cannot be combined with `{other}`"),
                "value transformations work with plain values, contains, startswith and endswith",
            );
        }
    }
    if modifiers.cased && !modifiers.text_kind() && modifiers.kind != Kind::Regex {
        conflict("cased", format!("modifier `cased` cannot be combined with `{kind_text}`"), "`cased` applies to text values");
    }
    if modifiers.fieldref && (!modifiers.text_kind() || time_name.is_some()) {
        let other = if modifiers.text_kind() { time_name.unwrap_or(kind_text) } else { kind_text };
        conflict(
            "fieldref",
            format!("modifier `fieldref` cannot be combined with `{other}`"),
            "`fieldref` compares with another field: plain, contains, startswith or endswith",
        );
    }
    if let Some(part) = time_name {
        if !matches!(modifiers.kind, Kind::Equals | Kind::Compare(_)) {
            conflict(
                part,
                format!("modifier `{part}` cannot be combined with `{kind_text}`"),
                "a time part is a number: compare it plainly or with gt, gte, lt, lte",
            );
        }
    }
    if modifiers.negated && (modifiers.all || modifiers.kind == Kind::Exists) {
        let other = if modifiers.all { "all" } else { "exists" };
        conflict("neq", format!("modifier `neq` cannot be combined with `{other}`"), "write `not selection` in the condition instead");
    }
    if modifiers.all
        && !matches!(modifiers.kind, Kind::Equals | Kind::Contains | Kind::StartsWith | Kind::EndsWith | Kind::Regex)
    {
        conflict(
            "all",
            format!("modifier `all` cannot be combined with `{kind_text}`"),
            "`all` works with plain values, contains, startswith, endswith and re",
        );
    }
    if keyword {
        let field_only = match modifiers.kind {
            Kind::Cidr | Kind::Compare(_) | Kind::Exists => Some(kind_text),
            _ if modifiers.fieldref => Some("fieldref"),
            _ => time_name,
        };
        if let Some(name) = field_only {
            conflict(
                name,
                format!("a keyword search cannot use `{name}`"),
                "keywords search text; name the field for cidr, comparisons, exists, fieldref and time parts",
            );
        }
    }
    ok
}

/// Compiles one `field|modifiers: value-or-list` entry, reporting every problem in it. A key
/// without a field (`'|all'`, `'|re'`) is a keyword search with modifiers.
pub(crate) fn compile_field(
    key: &Node,
    value: &Node,
    context: MatchContext<'_>,
    report: &mut Report<'_>,
) -> Option<FieldMatcher> {
    let Some(key_text) = key.as_text() else {
        report.error(key.position, format!("a field name must be a string, found {}", key.describe()));
        return None;
    };
    let mut parts = key_text.split('|');
    let field = parts.next().unwrap_or_default();
    let modifiers: Vec<&str> = parts.collect();
    let mut ok = true;
    let keyword = field.is_empty();
    if keyword && modifiers.is_empty() {
        report.error_with_hint(
            key.position,
            format!("`{key_text}` names no field"),
            "write the field's dotted path before the modifiers, e.g. process.name|endswith",
        );
        ok = false;
    } else if !keyword && !is_valid_path(field) {
        report.error_with_hint(
            key.position,
            format!("field path `{field}` is not a valid dotted path"),
            "write dotted paths like finding_info.attacks.technique.uid",
        );
        ok = false;
    }
    let modifiers = parse_modifiers(key, field, &modifiers, keyword, report)?;
    let target =
        if keyword { Target::Keywords(context.keyword_fields.into()) } else { Target::Field(FieldPath::new(field)) };
    compile_values(target, &modifiers, key_text, value, context, report).filter(|_| ok)
}

/// Compiles a keyword selection (a list of values with no field): any value found in any text.
pub(crate) fn compile_keywords(
    values: &Node,
    context: MatchContext<'_>,
    report: &mut Report<'_>,
) -> Option<FieldMatcher> {
    let target = Target::Keywords(context.keyword_fields.into());
    compile_values(target, &Modifiers::PLAIN, "keywords", values, context, report)
}

fn is_valid_path(field: &str) -> bool {
    !field.split('.').any(str::is_empty) && !field.chars().any(char::is_whitespace)
}

fn compile_values(
    target: Target,
    modifiers: &Modifiers,
    key_text: &str,
    value: &Node,
    context: MatchContext<'_>,
    report: &mut Report<'_>,
) -> Option<FieldMatcher> {
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
    let negated = modifiers.negated;
    if modifiers.kind == Kind::Exists {
        if let ([_], Some(ScalarValue::Bool(expected))) =
            (values.as_slice(), values[0].as_scalar().map(crate::yaml::Scalar::resolve))
        {
            return Some(FieldMatcher::new(target, Test::Exists(expected), negated));
        }
        report.error_with_hint(
            value.position,
            "`exists` takes true or false",
            "e.g. `process.parent.name|exists: true`",
        );
        return None;
    }
    if modifiers.fieldref {
        let test = compile_fieldref(&values, modifiers, report)?;
        return Some(FieldMatcher::new(target, test, negated));
    }
    let keyword = matches!(target, Target::Keywords(_));
    let mut groups = Vec::with_capacity(values.len());
    let mut ok = true;
    let mut total = 0;
    for item in values {
        match compile_value(item, modifiers, keyword, context, report) {
            Some(group) => {
                total += group.len();
                groups.push(group);
            }
            None => ok = false,
        }
    }
    if !ok {
        return None;
    }
    if total > MAX_ALTERNATIVES {
        report.error_with_hint(
            value.position,
            format!("`{key_text}` has {total} values once transformed; the limit per field is {MAX_ALTERNATIVES}"),
            "split the values over several selections",
        );
        return None;
    }
    if modifiers.all {
        let patterns = groups
            .into_iter()
            .map(|mut group| if group.len() == 1 { group.remove(0) } else { Pattern::AnyOf(group) })
            .collect();
        return Some(FieldMatcher::new(target, Test::All(patterns), negated));
    }
    let kind = if keyword && modifiers.kind == Kind::Equals { Kind::Contains } else { modifiers.kind };
    let patterns: Vec<Pattern> = groups.into_iter().flatten().collect();
    let fast = build_any_of(&patterns, kind);
    Some(FieldMatcher::new(target, Test::Any { patterns, fast }, negated))
}

/// `field|fieldref: other.field`: the values name the fields compared with.
fn compile_fieldref(values: &[&Node], modifiers: &Modifiers, report: &mut Report<'_>) -> Option<Test> {
    let mut others = Vec::new();
    for item in values {
        match item.as_text() {
            Some(path) if is_valid_path(path) => others.push(FieldPath::new(path)),
            Some(text) => report.error_with_hint(
                item.position,
                format!("`fieldref` names a field by its dotted path, found `{text}`"),
                "e.g. `process.parent.name|fieldref: process.name`",
            ),
            None => report.error_with_hint(
                item.position,
                format!("`fieldref` names a field by its dotted path, found {}", item.describe()),
                "e.g. `process.parent.name|fieldref: process.name`",
            ),
        }
    }
    (others.len() == values.len()).then_some(Test::FieldRef {
        others,
        kind: modifiers.kind,
        cased: modifiers.cased,
        all: modifiers.all,
    })
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
            let mut cased = None;
            for pattern in patterns {
                let Pattern::Substring(single) = pattern else { return None };
                if *cased.get_or_insert(single.cased) != single.cased {
                    return None;
                }
                needles.extend(single.written.iter().map(|needle| &**needle));
            }
            Substrings::new(&needles, kind, cased.unwrap_or(false)).map(AnyOf::Substrings)
        }
        _ => None,
    }
}

/// One value of a field, compiled into the patterns it became (one, or several after `windash`,
/// `base64offset` and `expand`).
fn compile_value(
    node: &Node,
    modifiers: &Modifiers,
    keyword: bool,
    context: MatchContext<'_>,
    report: &mut Report<'_>,
) -> Option<Vec<Pattern>> {
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
    if let Some(part) = modifiers.time {
        let comparison = match modifiers.kind {
            Kind::Compare(comparison) => Some(comparison),
            _ => None,
        };
        if let ScalarValue::Integer(n) = resolved {
            return Some(vec![Pattern::Time(part, comparison, integer_as_f64(n))]);
        }
        report.error_with_hint(
            node.position,
            format!("a time part needs a whole number, found `{text}`"),
            "e.g. `time|hour|gte: 22`",
        );
        return None;
    }
    match modifiers.kind {
        Kind::Equals | Kind::Contains | Kind::StartsWith | Kind::EndsWith => {
            compile_text_value(node, &resolved, modifiers, keyword, context, report)
        }
        Kind::Regex => {
            let flags = modifiers.flags;
            match RegexBuilder::new(text)
                .case_insensitive(flags.insensitive)
                .multi_line(flags.multi_line)
                .dot_matches_new_line(flags.dot_all)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
            {
                Ok(regex) => Some(vec![Pattern::Regex(regex)]),
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
            }
        }
        Kind::Cidr => match text.parse::<IpAddr>().map(Network::host).or_else(|_| text.parse::<Network>()) {
            Ok(network) => Some(vec![Pattern::Cidr(network)]),
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
            ScalarValue::Integer(n) => Some(vec![Pattern::Compare(comparison, integer_as_f64(n))]),
            ScalarValue::Float(n) if n.is_finite() => Some(vec![Pattern::Compare(comparison, n)]),
            _ => {
                report.error_with_hint(
                    node.position,
                    format!("`{}` needs a number, found `{text}`", kind_name(modifiers.kind)),
                    "e.g. `severity_id|gte: 4`",
                );
                None
            }
        },
        Kind::Exists => None,
    }
}

/// A text value (plain, contains, startswith, endswith): transformed, then compiled.
fn compile_text_value(
    node: &Node,
    resolved: &ScalarValue<'_>,
    modifiers: &Modifiers,
    keyword: bool,
    context: MatchContext<'_>,
    report: &mut Report<'_>,
) -> Option<Vec<Pattern>> {
    let text = node.as_scalar().map_or("", |scalar| scalar.text.as_str());
    if *resolved == ScalarValue::Null {
        if modifiers.kind == Kind::Equals && !keyword && modifiers.transforms.is_empty() && !modifiers.cased {
            return Some(vec![Pattern::Null]);
        }
        if keyword {
            report.error(node.position, "a keyword must be text or a number, found null");
        } else {
            report.error_with_hint(
                node.position,
                "null cannot be transformed or searched for",
                "`field: null` (without modifiers) matches an absent or null field",
            );
        }
        return None;
    }
    let number = if modifiers.transforms.is_empty() {
        match resolved {
            ScalarValue::Integer(n) => Some(integer_as_f64(*n)),
            ScalarValue::Float(n) if n.is_finite() => Some(*n),
            _ => text.parse::<f64>().ok().filter(|n| n.is_finite()),
        }
    } else {
        None
    };
    let expand = modifiers.transforms.contains(&Transform::Expand);
    let values = transform(SigmaString::parse(text, expand), &modifiers.transforms, context)
        .map_err(|error| {
            let hint = match &error {
                TransformError::UnknownPlaceholder(_) => {
                    "define it under `placeholders:` in policy.yaml, e.g. `placeholders: {Servers: [srv-*]}`"
                }
                TransformError::NotText { .. } => "follow it with base64 or base64offset",
                TransformError::Wildcards { .. } => "escape a literal * or ? with a backslash",
                TransformError::TooShort => "search for a longer text",
                TransformError::TooManyAlternatives { .. } => "split the value, or use a regex (`re`)",
            };
            report.error_with_hint(node.position, format!("value `{text}`: {error}"), hint);
        })
        .ok()?;
    let kind = if keyword && modifiers.kind == Kind::Equals { Kind::Contains } else { modifiers.kind };
    let mut patterns = Vec::with_capacity(values.len());
    for value in values {
        patterns.push(text_pattern(&value, kind, modifiers.cased, number, node, text, report)?);
    }
    Some(patterns)
}

/// Applies the value-transforming modifiers in the order written.
fn transform(
    value: SigmaString,
    transforms: &[Transform],
    context: MatchContext<'_>,
) -> Result<Vec<SigmaString>, TransformError> {
    let mut values = vec![value];
    for transform in transforms {
        let mut next = Vec::with_capacity(values.len());
        for value in &values {
            match transform {
                Transform::Windash => next.extend(value.windash()?),
                Transform::Base64 => next.push(value.base64()?),
                Transform::Base64Offset => next.extend(value.base64offset()?),
                Transform::Utf16(encoding, name) => next.push(value.utf16(*encoding, name)?),
                Transform::Expand => match context.placeholders {
                    Some(placeholders) => {
                        next.extend(value.expand(&|name| placeholders.get(name).map(Vec::as_slice))?);
                    }
                    // The policy has errors of its own: the load fails without a word on placeholders.
                    None => next.push(value.clone()),
                },
            }
            if next.len() > MAX_ALTERNATIVES {
                let modifier = match transform {
                    Transform::Windash => "windash",
                    Transform::Base64 => "base64",
                    Transform::Base64Offset => "base64offset",
                    Transform::Utf16(_, name) => name,
                    Transform::Expand => "expand",
                };
                return Err(TransformError::TooManyAlternatives { modifier });
            }
        }
        values = next;
    }
    if values.iter().any(|value| !value.is_text()) {
        let modifier = transforms
            .iter()
            .rev()
            .find_map(|transform| match transform {
                Transform::Utf16(_, name) => Some(*name),
                _ => None,
            })
            .unwrap_or("utf16");
        return Err(TransformError::NotText { modifier });
    }
    Ok(values)
}

/// The pattern of one final text value under `kind`.
fn text_pattern(
    value: &SigmaString,
    kind: Kind,
    cased: bool,
    number: Option<f64>,
    node: &Node,
    text: &str,
    report: &mut Report<'_>,
) -> Option<Pattern> {
    if value.has_wildcards() {
        let surrounded = value.surrounded(
            matches!(kind, Kind::Contains | Kind::EndsWith),
            matches!(kind, Kind::Contains | Kind::StartsWith),
        );
        return match RegexBuilder::new(&surrounded.regex_pattern(cased)).size_limit(REGEX_SIZE_LIMIT).build() {
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
    let plain = value.plain_text().unwrap_or_default();
    Some(match kind {
        Kind::Contains | Kind::StartsWith | Kind::EndsWith => {
            let Some(substrings) = Substrings::new(&[&plain], kind, cased) else {
                report.error(node.position, format!("value `{text}` is too large to search for"));
                return None;
            };
            Pattern::Substring(substrings)
        }
        _ if cased => Pattern::CasedEquals(plain.into()),
        _ => Pattern::Equals { folded: plain.to_lowercase().into(), number },
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::yaml::parse_documents;

    /// Compiles `key: value` of a one-line YAML mapping.
    fn matcher(yaml: &str) -> FieldMatcher {
        let documents = parse_documents(yaml).unwrap();
        let NodeKind::Mapping(pairs) = &documents[0].kind else { panic!("not a mapping: {yaml}") };
        let (key, value) = &pairs[0];
        let mut report = Report::new("test.yaml");
        let compiled = compile_field(key, value, MatchContext::NONE, &mut report);
        compiled.unwrap_or_else(|| panic!("{yaml}: {:?}", report.diagnostics))
    }

    /// A keyword search answered from the joined texts finds what a search of each text finds,
    /// whatever the texts hold (NULs, non-ASCII, a Greek final sigma, numbers, nesting).
    #[test]
    fn keyword_searches_of_joined_texts_agree_with_searches_of_each_text() {
        let events = [
            json!({"a": "Mimikatz ran", "b": [1, "x"], "c": {"d": "sekurlsa::LogonPasswords"}}),
            json!({"a": "ΟΔΥΣΣΕΥΣ", "b": "nul\u{0}inside", "n": 42}),
            json!({"a": "mimi", "b": "katz", "k": "mimikatz as a key?"}),
            json!({"mimikatz": 1, "x": null, "y": true, "z": 12.5}),
            json!({"a": ["", "x\u{0}mimikatz"], "b": "İSTANBUL"}),
        ];
        let keywords = [
            "'|contains': [mimikatz, 'logonpasswords']",
            "'|all': [mimi, katz]",
            "'|all': [mimikatz, ran]",
            "'|contains': ['ς', 'σ']",
            "'|contains': ['i̇stanbul']",
            "'|contains': ['nul']",
            "'|contains|cased': [Mimikatz]",
        ];
        for keyword in keywords {
            let matcher = matcher(keyword);
            for event in &events {
                let fields = crate::fields::Fields::from_value(event).unwrap();
                let subject = Subject::of_fields(fields.root());
                assert_eq!(
                    matcher.matches(&subject),
                    matcher.test_holds(fields.root()) != matcher.negated,
                    "{keyword} on {event}"
                );
            }
        }
        assert!(matcher("'|all': [mimi, katz]").joined.is_some(), "the fast path is taken");
        assert!(matcher("'|contains|cased': [Mimikatz]").joined.is_none(), "cased searches each text");
    }
}
