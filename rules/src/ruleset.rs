//! A compiled rule set: the enabled rules of a directory and its policy, indexed so that an event
//! is only checked against the rules it could possibly match.
//!
//! Most rules require some field to equal one of a few literals (a technique id, a process name).
//! Such a rule is filed under that field and those literals; for each event the engine reads the
//! field once, looks its values up, and evaluates only the rules found plus the unindexed ones.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::condition::Condition;
use crate::config::{Policy, RuleConfig, Selection};
use crate::diagnostic::{Diagnostic, Position};
use crate::event::{Event, FieldPath};
use crate::matcher::with_folded;

/// The rules to evaluate and the policy that overrides them. Build it once, share it read-only.
#[derive(Debug, Clone)]
pub struct Ruleset {
    pub(crate) rules: Vec<RuleConfig>,
    pub(crate) policy: Policy,
    /// The protected tags, lowercased.
    pub(crate) protected_tags: Vec<String>,
    dispatch: Vec<Dispatch>,
    unindexed: Vec<u32>,
}

#[derive(Debug, Clone)]
struct Dispatch {
    path: FieldPath,
    rules_by_value: HashMap<Box<str>, Vec<u32>>,
}

impl Ruleset {
    /// Builds the rule set from validated rules (disabled ones are left out) and the policy.
    /// Fails with every duplicate id, each reported where it is repeated.
    pub fn compile(rules: Vec<RuleConfig>, policy: Policy) -> Result<Self, Vec<Diagnostic>> {
        let mut diagnostics = Vec::new();
        let mut first_seen: HashMap<&str, &RuleConfig> = HashMap::new();
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
        let rules: Vec<RuleConfig> = rules.into_iter().filter(|rule| rule.enabled).collect();
        let mut dispatch: Vec<Dispatch> = Vec::new();
        let mut unindexed = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            match guard(&rule.condition, &rule.selections) {
                Some((path, literals)) => {
                    let position = dispatch.iter().position(|d| d.path == path).unwrap_or_else(|| {
                        dispatch.push(Dispatch { path, rules_by_value: HashMap::new() });
                        dispatch.len() - 1
                    });
                    for literal in literals {
                        dispatch[position].rules_by_value.entry(literal).or_default().push(index);
                    }
                }
                None => unindexed.push(index),
            }
        }
        let protected_tags = policy.protect.iter().map(|tag| tag.to_lowercase()).collect();
        Ok(Self { rules, policy, protected_tags, dispatch, unindexed })
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

    /// How many rules are indexed by a literal field value (the rest are checked on every event).
    #[must_use]
    pub fn indexed_rule_count(&self) -> usize {
        self.rules.len() - self.unindexed.len()
    }

    pub(crate) fn rule_index(&self, id: &str) -> Option<usize> {
        self.rules.iter().position(|rule| rule.id == id)
    }

    /// The rules that may match `event`, in rule order, without repeats.
    pub(crate) fn candidates(&self, event: &Event) -> Vec<u32> {
        let mut candidates = self.unindexed.clone();
        for dispatch in &self.dispatch {
            dispatch.path.any_value(event.fields(), &mut |value| {
                let text = match value {
                    Value::String(text) => text.as_str(),
                    Value::Bool(true) => "true",
                    Value::Bool(false) => "false",
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
        if !self.dispatch.is_empty() {
            candidates.sort_unstable();
            candidates.dedup();
        }
        candidates
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

impl RuleConfig {
    /// Whether the rule's condition holds for the event.
    pub(crate) fn matches(&self, fields: &Value) -> bool {
        self.condition.evaluate(&mut |index| selection_matches(&self.selections[index], fields))
    }

    /// The names of the selections named in the condition that match the event.
    pub(crate) fn matching_selections(&self, fields: &Value) -> Vec<String> {
        let mut named = Vec::new();
        self.condition.selections(&mut named);
        named
            .into_iter()
            .filter(|&index| selection_matches(&self.selections[index], fields))
            .map(|index| self.selections[index].name.clone())
            .collect()
    }
}

fn selection_matches(selection: &Selection, fields: &Value) -> bool {
    selection.alternatives.iter().any(|matchers| matchers.iter().all(|matcher| matcher.matches(fields)))
}

/// A field and literals such that the condition can only hold if the field equals one of them.
fn guard(condition: &Condition, selections: &[Selection]) -> Option<(FieldPath, HashSet<Box<str>>)> {
    match condition {
        Condition::Selection(index) => selection_guard(&selections[*index]),
        Condition::Not(_) => None,
        Condition::And(terms) => {
            terms.iter().filter_map(|term| guard(term, selections)).min_by_key(|(_, literals)| literals.len())
        }
        Condition::Or(terms) => {
            let mut guards = terms.iter().map(|term| guard(term, selections));
            let (path, mut literals) = guards.next()??;
            for next in guards {
                let (other_path, other_literals) = next?;
                if other_path != path {
                    return None;
                }
                literals.extend(other_literals);
            }
            Some((path, literals))
        }
    }
}

/// For a selection (an OR of ANDs), a field that every alternative requires to equal a literal.
fn selection_guard(selection: &Selection) -> Option<(FieldPath, HashSet<Box<str>>)> {
    let (first, rest) = selection.alternatives.split_first()?;
    first
        .iter()
        .filter_map(|matcher| matcher.required_literals().map(|literals| (matcher.path(), literals)))
        .find_map(|(path, literals)| {
            let mut union = literals.clone();
            for alternative in rest {
                let other = alternative
                    .iter()
                    .find(|matcher| matcher.path() == path)
                    .and_then(|matcher| matcher.required_literals())?;
                union.extend(other.iter().cloned());
            }
            Some((path.clone(), union))
        })
}
