//! A compiled rule set: the enabled rules of a directory and its policy, indexed so that an event
//! is only checked against the rules it could possibly match.
//!
//! Most rules require some field to equal one of a few literals (a technique id, a process name).
//! Such a rule is filed under that field and those literals; for each event the engine reads the
//! field once, looks its values up, and evaluates only the rules found plus the unindexed ones.

use std::collections::HashMap;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::fields::Field;

use crate::condition::Condition;
use crate::config::{Policy, Rule, Selection};
use crate::diagnostic::{Diagnostic, Position};
use crate::event::Projection;
use aho_corasick::AhoCorasick;

use crate::matcher::{folded_automaton, with_folded, FieldMatcher, Subject, Substrings, Target};

/// The rules to evaluate and the policy that overrides them. Build it once, share it read-only.
#[derive(Debug, Clone)]
pub struct Ruleset {
    pub(crate) rules: Vec<Rule>,
    pub(crate) policy: Policy,
    /// The protected tags, lowercased.
    pub(crate) protected_tags: Vec<String>,
    dispatch: Vec<Dispatch>,
    substring_dispatch: Vec<SubstringDispatch>,
    unindexed: Vec<u32>,
    /// Every field a rule can look at.
    projection: Projection,
}

/// Rules filed under texts a field must contain: one automaton finds all of them in one pass.
#[derive(Debug, Clone)]
struct SubstringDispatch {
    path: Target,
    needles: Substrings,
    /// For keywords in every text: the same needles, searched in the joined lowercased texts.
    joined: Option<JoinedNeedles>,
    rules_by_needle: Vec<Vec<u32>>,
}

#[derive(Debug, Clone)]
struct Dispatch {
    path: Target,
    rules_by_value: FxHashMap<Box<str>, Vec<u32>>,
}

impl Ruleset {
    /// Builds the rule set from validated rules (disabled ones are left out) and the policy.
    /// Fails with every duplicate id, each reported where it is repeated.
    pub fn compile(rules: Vec<Rule>, policy: Policy) -> Result<Self, Vec<Diagnostic>> {
        let mut diagnostics = Vec::new();
        let mut first_seen: HashMap<&str, &Rule> = HashMap::new();
        for rule in &rules {
            if let Some(first) = first_seen.get(rule.id.as_str()) {
                diagnostics.push(duplicate_id(
                    &rule.id,
                    &rule.file,
                    rule.id_position,
                    &first.file,
                    first.id_position,
                ));
            } else {
                first_seen.insert(&rule.id, rule);
            }
        }
        if !diagnostics.is_empty() {
            return Err(diagnostics);
        }
        let rules: Vec<Rule> = rules.into_iter().filter(|rule| rule.enabled).collect();
        let (dispatch, substring_dispatch, unindexed) = index_rules(&rules);
        let protected_tags = policy.protect.iter().map(|tag| tag.to_lowercase()).collect();
        let matchers = || rules.iter().flat_map(|rule| rule.selections.iter().flat_map(|s| s.alternatives.iter().flatten()));
        let read = matchers().flat_map(|matcher| matcher.paths().unwrap_or_default());
        let grouped = rules.iter().flat_map(|rule| rule.threshold.iter().flat_map(|t| t.group_by.iter().flatten()));
        let projection = Projection::of(read.chain(grouped));
        // A keyword search of every text reads every string: the parse captures them.
        let projection = if matchers().any(|matcher| matcher.target().is_every_text()) {
            projection.with_texts()
        } else {
            projection
        };
        Ok(Self { rules, policy, protected_tags, dispatch, substring_dispatch, unindexed, projection })
    }

    /// The fields of an event this rule set can look at: parse events with
    /// [`Event::parse_projected`] and this, and they evaluate as if parsed whole, for less.
    #[must_use]
    pub fn projection(&self) -> &Projection {
        &self.projection
    }

    /// The number of enabled rules.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    #[must_use]
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|rule| rule.id.as_str())
    }

    /// The rule set split in two: the rules that act, and the shadow rules (`shadow: true`, or
    /// every rule with `all_shadow`), each with the policy, to be evaluated with engine states
    /// of their own (a shadow decision must not count toward a live threshold or the ceiling).
    #[must_use]
    pub fn split_shadow(&self, all_shadow: bool) -> (Ruleset, Ruleset) {
        let compile = |shadow: bool| {
            let rules = self.rules.iter().filter(|rule| (rule.shadow || all_shadow) == shadow).cloned().collect();
            Ruleset::compile(rules, self.policy.clone()).expect("a subset of a compiled rule set compiles")
        };
        (compile(false), compile(true))
    }

    /// Each enabled rule's id and what its isolation leaves open (central exclusions are checked
    /// against them: a host's profile and a rule's `allow:` are enforced together).
    pub fn exclusions_by_rule(&self) -> impl Iterator<Item = (&str, &crate::Exclusions)> {
        self.rules.iter().map(|rule| (rule.id.as_str(), &rule.response.exclusions))
    }

    /// How many rules are indexed by a literal field value (the rest are checked on every event).
    #[must_use]
    pub fn indexed_rule_count(&self) -> usize {
        self.rules.len() - self.unindexed.len()
    }

    pub(crate) fn rule_index(&self, id: &str) -> Option<usize> {
        self.rules.iter().position(|rule| rule.id == id)
    }

    /// The rules that may match `event`, in rule order, without repeats.
    pub(crate) fn candidates(&self, subject: &Subject<'_>) -> Vec<u32> {
        let mut candidates = self.unindexed.clone();
        for dispatch in &self.dispatch {
            dispatch.path.any_value(subject.fields(), &mut |value| {
                let text = match value {
                    Field::String(text) => text,
                    Field::Bool(true) => "true",
                    Field::Bool(false) => "false",
                    _ => return false,
                };
                with_folded(text, |folded| {
                    if let Some(rules) = dispatch.rules_by_value.get(folded) {
                        candidates.extend_from_slice(rules);
                    }
                });
                false
            });
        }
        for dispatch in &self.substring_dispatch {
            if let Some(joined) = &dispatch.joined {
                // Keywords in every text: one search of the joined, lowercased texts.
                joined.for_each_found(subject.folded_texts(), &mut |needle| {
                    candidates.extend_from_slice(&dispatch.rules_by_needle[needle]);
                });
                continue;
            }
            dispatch.path.any_value(subject.fields(), &mut |value| {
                let text = match value {
                    Field::String(text) => std::borrow::Cow::Borrowed(text),
                    Field::Number(number) => std::borrow::Cow::Owned(number.to_string()),
                    Field::Bool(flag) => std::borrow::Cow::Borrowed(if flag { "true" } else { "false" }),
                    _ => return false,
                };
                dispatch.needles.for_each_found(&text, &mut |needle| {
                    candidates.extend_from_slice(&dispatch.rules_by_needle[needle]);
                });
                false
            });
        }
        if !self.dispatch.is_empty() || !self.substring_dispatch.is_empty() {
            candidates.sort_unstable();
            candidates.dedup();
        }
        candidates
    }
}

/// Texts a field must contain, each with the rules that require it.
type NeedlesByField = Vec<(Target, Vec<(Box<str>, u32)>)>;

/// Files each rule under its guard: equality guards in hash maps, substring guards in one
/// automaton per field; rules without a guard are checked on every event.
fn index_rules(rules: &[Rule]) -> (Vec<Dispatch>, Vec<SubstringDispatch>, Vec<u32>) {
    let mut dispatch: Vec<Dispatch> = Vec::new();
    let mut by_substring: NeedlesByField = Vec::new();
    let mut unindexed = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        match guard(&rule.condition, &rule.selections) {
            Some(Guard::Equals(path, literals)) => {
                let position = dispatch.iter().position(|d| d.path == path).unwrap_or_else(|| {
                    dispatch.push(Dispatch { path, rules_by_value: FxHashMap::default() });
                    dispatch.len() - 1
                });
                for literal in literals {
                    dispatch[position].rules_by_value.entry(literal).or_default().push(index);
                }
            }
            Some(Guard::Contains(path, needles)) => {
                let position = by_substring.iter().position(|(p, _)| *p == path).unwrap_or_else(|| {
                    by_substring.push((path, Vec::new()));
                    by_substring.len() - 1
                });
                by_substring[position].1.extend(needles.into_iter().map(|needle| (needle, index)));
            }
            None => unindexed.push(index),
        }
    }
    let mut substring_dispatch = Vec::new();
    for (path, entries) in by_substring {
        let mut needle_index: FxHashMap<&str, usize> = FxHashMap::default();
        let mut needles: Vec<&str> = Vec::new();
        let mut rules_by_needle: Vec<Vec<u32>> = Vec::new();
        for (needle, rule) in &entries {
            let position = *needle_index.entry(needle).or_insert_with(|| {
                needles.push(needle);
                rules_by_needle.push(Vec::new());
                needles.len() - 1
            });
            rules_by_needle[position].push(*rule);
        }
        if let Some(automaton) = Substrings::anywhere(&needles) {
            let joined = if path.is_every_text() { JoinedNeedles::new(&needles) } else { None };
            substring_dispatch.push(SubstringDispatch { path, needles: automaton, joined, rules_by_needle });
        } else {
            unindexed.extend(entries.iter().map(|(_, rule)| *rule));
        }
    }
    unindexed.sort_unstable();
    unindexed.dedup();
    (dispatch, substring_dispatch, unindexed)
}

/// Needles searched in [`Subject::folded_texts`], reporting every needle that occurs.
///
/// An overlapping search would find them all, but it cannot use the packed (Teddy) prefilter, and
/// the rare-byte one it falls back to stops at every `-`, `.` or digit of an event. So: a
/// leftmost-first search (prefiltered), restarted one byte after each match's start. It visits
/// every position where some needle starts (the leftmost match from `s` starts at the first such
/// position at or after `s`); at a position it reports one needle, and any other needle starting
/// there is a prefix of it or has it as a prefix, so those few are checked by comparison.
#[derive(Debug, Clone)]
struct JoinedNeedles {
    leftmost: AhoCorasick,
    needles: Vec<Box<str>>,
    /// For each needle, the others that are its prefix or have it as a prefix.
    prefix_related: Vec<Vec<usize>>,
}

impl JoinedNeedles {
    fn new(needles: &[&str]) -> Option<Self> {
        let leftmost = folded_automaton(needles.iter().copied())?;
        let prefix_related = needles
            .iter()
            .enumerate()
            .map(|(index, needle)| {
                (0..needles.len())
                    .filter(|&other| {
                        other != index && (needle.starts_with(needles[other]) || needles[other].starts_with(needle))
                    })
                    .collect()
            })
            .collect();
        Some(Self { leftmost, needles: needles.iter().map(|needle| (*needle).into()).collect(), prefix_related })
    }

    fn for_each_found(&self, texts: &str, found: &mut impl FnMut(usize)) {
        let mut start = 0;
        while start < texts.len() {
            let input = aho_corasick::Input::new(texts).span(start..texts.len());
            let Some(matched) = self.leftmost.find(input) else { break };
            let needle = matched.pattern().as_usize();
            found(needle);
            let rest = &texts.as_bytes()[matched.start()..];
            for &other in &self.prefix_related[needle] {
                if rest.starts_with(self.needles[other].as_bytes()) {
                    found(other);
                }
            }
            start = matched.start() + 1;
        }
    }
}

/// "duplicate rule id", reported where the id is repeated, with where it was first defined.
pub(crate) fn duplicate_id(
    id: &str,
    file: &str,
    position: Position,
    first_file: &str,
    first: Position,
) -> Diagnostic {
    Diagnostic::new(file, position, format!("duplicate rule id `{id}`")).with_hint(format!(
        "first defined at {first_file}:{}:{}; ids are unique across the directory",
        first.line, first.column
    ))
}

impl Rule {
    /// Whether the rule's condition holds for the event.
    pub(crate) fn matches(&self, subject: &Subject<'_>) -> bool {
        self.condition.evaluate(&mut |index| selection_matches(&self.selections[index], subject))
    }

    /// The names of the selections named in the condition that match the event.
    pub(crate) fn matching_selections(&self, subject: &Subject<'_>) -> Vec<String> {
        let mut named = Vec::new();
        self.condition.selections(&mut named);
        named
            .into_iter()
            .filter(|&index| selection_matches(&self.selections[index], subject))
            .map(|index| self.selections[index].name.clone())
            .collect()
    }
}

fn selection_matches(selection: &Selection, subject: &Subject<'_>) -> bool {
    selection.alternatives.iter().any(|matchers| matchers.iter().all(|matcher| matcher.matches(subject)))
}

/// Something the event must carry for a condition to hold: a field equal to one of some
/// literals, or a field containing one of some texts. All texts are lowercased.
#[derive(Debug, Clone)]
enum Guard {
    Equals(Target, FxHashSet<Box<str>>),
    Contains(Target, FxHashSet<Box<str>>),
}

impl Guard {
    /// Equality guards are cheaper to check and fewer values pass them.
    fn rank(&self) -> (u8, usize) {
        match self {
            Self::Equals(_, texts) => (0, texts.len()),
            Self::Contains(_, texts) => (1, texts.len()),
        }
    }

    /// The union of two guards on the same field and of the same kind: what either term needs.
    fn union(self, other: Self) -> Option<Self> {
        match (self, other) {
            (Self::Equals(path, mut texts), Self::Equals(other_path, other_texts)) if path == other_path => {
                texts.extend(other_texts);
                Some(Self::Equals(path, texts))
            }
            (Self::Contains(path, mut texts), Self::Contains(other_path, other_texts))
                if path == other_path =>
            {
                texts.extend(other_texts);
                Some(Self::Contains(path, texts))
            }
            _ => None,
        }
    }
}

/// A guard for the condition: it can only hold if the event passes the guard.
fn guard(condition: &Condition, selections: &[Selection]) -> Option<Guard> {
    match condition {
        Condition::Selection(index) => selection_guard(&selections[*index]),
        Condition::Not(_) => None,
        Condition::And(terms) => {
            terms.iter().filter_map(|term| guard(term, selections)).min_by_key(Guard::rank)
        }
        Condition::Or(terms) => {
            let mut guards = terms.iter().map(|term| guard(term, selections));
            let mut union = guards.next()??;
            for next in guards {
                union = union.union(next?)?;
            }
            Some(union)
        }
    }
}

fn matcher_guards(matchers: &[FieldMatcher]) -> Vec<Guard> {
    let mut guards: Vec<Guard> = matchers
        .iter()
        .filter_map(|matcher| {
            if let Some(literals) = matcher.required_literals() {
                return Some(Guard::Equals(matcher.target().clone(), literals.clone()));
            }
            let needles = matcher.required_substrings()?;
            Some(Guard::Contains(matcher.target().clone(), needles.into_iter().map(Into::into).collect()))
        })
        .collect();
    guards.sort_by_key(Guard::rank);
    guards
}

/// For a selection (an OR of ANDs), a guard that every alternative shares the kind and field of.
fn selection_guard(selection: &Selection) -> Option<Guard> {
    let (first, rest) = selection.alternatives.split_first()?;
    let rest_guards: Vec<Vec<Guard>> = rest.iter().map(|alternative| matcher_guards(alternative)).collect();
    matcher_guards(first).into_iter().find_map(|candidate| {
        rest_guards.iter().try_fold(candidate, |union, guards| {
            guards.iter().find_map(|other| union.clone().union(other.clone()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::JoinedNeedles;

    /// Every needle that occurs is reported, whatever its overlaps with others: checked against
    /// a plain search of each needle, over every text of a small alphabet up to 7 letters.
    #[test]
    fn joined_needles_report_every_needle_that_occurs() {
        let needles = ["ab", "abc", "b", "bc", "c", "ca", "aa", "aaa", "cab\0"];
        let searchable: Vec<&str> = needles.iter().copied().filter(|needle| !needle.contains('\0')).collect();
        assert!(JoinedNeedles::new(&needles).is_none(), "a needle with a NUL could match across texts");
        let joined = JoinedNeedles::new(&searchable).unwrap();
        let mut texts = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..7 {
            frontier = frontier
                .iter()
                .flat_map(|text| ["a", "b", "c", "\0"].map(|letter| format!("{text}{letter}")))
                .collect();
            texts.extend(frontier.iter().cloned());
        }
        assert!(texts.len() > 20_000);
        for text in &texts {
            let mut found = vec![false; searchable.len()];
            joined.for_each_found(text, &mut |needle| found[needle] = true);
            let expected: Vec<bool> = searchable.iter().map(|needle| text.contains(needle)).collect();
            assert_eq!(found, expected, "in {text:?}");
        }
    }
}
