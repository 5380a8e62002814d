//! A small YAML document tree with the position of every node, built from `saphyr-parser` events.
//!
//! Rule files are validated by walking this tree, so every problem can be reported with its
//! line and column, and all problems in a file are found in one pass. Scalars keep their source
//! text and quoting; `Scalar::resolve` applies the YAML 1.2 core schema where a typed value is needed.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use crate::diagnostic::Position;

/// At most this many nodes may be produced by expanding aliases (`*name`) in one file.
const ALIAS_NODE_BUDGET: usize = 10_000;
/// Deeper nesting than this is refused, so that hostile files cannot exhaust the stack of later walks.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub position: Position,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NodeKind {
    Scalar(Scalar),
    Sequence(Vec<Node>),
    Mapping(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scalar {
    pub text: String,
    /// Plain (unquoted) scalars are typed by the core schema; quoted and block scalars are strings.
    pub plain: bool,
    /// Single-line scalars let errors inside them (in a condition, a regex) point at the exact column.
    pub quote_width: Option<usize>,
}

/// A scalar's value under the YAML 1.2 core schema.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ScalarValue<'a> {
    Null,
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(&'a str),
}

impl Scalar {
    pub fn resolve(&self) -> ScalarValue<'_> {
        if !self.plain {
            return ScalarValue::String(&self.text);
        }
        let text = self.text.as_str();
        match text {
            "" | "~" | "null" | "Null" | "NULL" => return ScalarValue::Null,
            "true" | "True" | "TRUE" => return ScalarValue::Bool(true),
            "false" | "False" | "FALSE" => return ScalarValue::Bool(false),
            ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
                return ScalarValue::Float(f64::INFINITY)
            }
            "-.inf" | "-.Inf" | "-.INF" => return ScalarValue::Float(f64::NEG_INFINITY),
            ".nan" | ".NaN" | ".NAN" => return ScalarValue::Float(f64::NAN),
            _ => {}
        }
        if let Some(hex) = text.strip_prefix("0x") {
            if let Ok(value) = i64::from_str_radix(hex, 16) {
                return ScalarValue::Integer(value);
            }
        }
        if let Some(octal) = text.strip_prefix("0o") {
            if let Ok(value) = i64::from_str_radix(octal, 8) {
                return ScalarValue::Integer(value);
            }
        }
        let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(value) = text.parse::<i64>() {
                return ScalarValue::Integer(value);
            }
        }
        if is_core_schema_float(text) {
            if let Ok(value) = text.parse::<f64>() {
                return ScalarValue::Float(value);
            }
        }
        ScalarValue::String(text)
    }
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, the core schema's float.
fn is_core_schema_float(text: &str) -> bool {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match fraction {
        Some(fraction) => {
            all_digits(whole) && all_digits(fraction) && !(whole.is_empty() && fraction.is_empty())
        }
        None => !whole.is_empty() && all_digits(whole),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let digits = e.strip_prefix(['-', '+']).unwrap_or(e);
        !digits.is_empty() && all_digits(digits)
    });
    mantissa_ok && exponent_ok
}

impl Node {
    pub fn as_scalar(&self) -> Option<&Scalar> {
        match &self.kind {
            NodeKind::Scalar(scalar) => Some(scalar),
            _ => None,
        }
    }

    /// The value of `key` when this node is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Mapping(pairs) => pairs.iter().find(|(k, _)| k.as_text() == Some(key)).map(|(_, value)| value),
            _ => None,
        }
    }

    /// The scalar's text when this node is a string-like scalar (any scalar except null).
    pub fn as_text(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar(scalar) if scalar.resolve() != ScalarValue::Null => Some(&scalar.text),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar(scalar) if scalar.resolve() == ScalarValue::Null)
    }

    /// What kind of node this is, for messages like "expected a list, found a mapping".
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar(scalar) => match scalar.resolve() {
                ScalarValue::Null => "nothing (null)",
                ScalarValue::Bool(_) => "a boolean",
                ScalarValue::Integer(_) | ScalarValue::Float(_) => "a number",
                ScalarValue::String(_) => "a string",
            },
            NodeKind::Sequence(_) => "a list",
            NodeKind::Mapping(_) => "a mapping",
        }
    }

    /// The position of the character `offset` characters into this scalar's text, if it is on one line.
    pub fn position_in_text(&self, offset: usize) -> Position {
        match &self.kind {
            NodeKind::Scalar(Scalar { quote_width: Some(width), .. }) => {
                self.position.shifted(width + offset)
            }
            _ => self.position,
        }
    }

    /// The node as JSON, typing plain scalars by the core schema (used for test events).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            NodeKind::Scalar(scalar) => match scalar.resolve() {
                ScalarValue::Null => Value::Null,
                ScalarValue::Bool(value) => Value::Bool(value),
                ScalarValue::Integer(value) => Value::from(value),
                ScalarValue::Float(value) => {
                    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
                }
                ScalarValue::String(value) => Value::String(value.to_owned()),
            },
            NodeKind::Sequence(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Mapping(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(key, value)| {
                        (key.as_scalar().map_or_else(String::new, |s| s.text.clone()), value.to_json())
                    })
                    .collect(),
            ),
        }
    }
}

/// A YAML syntax error at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub position: Position,
    pub message: String,
}

fn position_of(span: Span) -> Position {
    Position::new(span.start.line(), span.start.col() + 1)
}

enum Frame {
    Sequence { position: Position, anchor: usize, items: Vec<Node> },
    Mapping { position: Position, anchor: usize, entries: Vec<(Node, Node)>, key: Option<Node> },
}

/// Parses every document of a YAML stream (`---` separated) into node trees. Empty documents are dropped.
pub(crate) fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut documents = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut alias_budget = ALIAS_NODE_BUDGET;
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|error| SyntaxError {
            position: Position::new(error.marker().line(), error.marker().col() + 1),
            message: error.info().to_owned(),
        })?;
        let position = position_of(span);
        let complete = match event {
            Event::Scalar(value, style, anchor, _tag) => {
                let quote_width = match style {
                    ScalarStyle::Plain if !value.contains('\n') => Some(0),
                    ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted if !value.contains('\n') => Some(1),
                    _ => None,
                };
                let node = Node {
                    position,
                    kind: NodeKind::Scalar(Scalar {
                        text: value.into_owned(),
                        plain: style == ScalarStyle::Plain,
                        quote_width,
                    }),
                };
                Some((node, anchor))
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) if stack.len() >= MAX_DEPTH => {
                let _ = anchor;
                return Err(SyntaxError {
                    position,
                    message: format!("nesting deeper than {MAX_DEPTH} levels"),
                });
            }
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Sequence { position, anchor, items: Vec::new() });
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Mapping { position, anchor, entries: Vec::new(), key: None });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Sequence { position, anchor, items }) => {
                    Some((Node { position, kind: NodeKind::Sequence(items) }, anchor))
                }
                Some(Frame::Mapping { position, anchor, entries, .. }) => {
                    Some((Node { position, kind: NodeKind::Mapping(entries) }, anchor))
                }
                None => None,
            },
            Event::Alias(id) => {
                let Some(node) = anchors.get(&id) else {
                    return Err(SyntaxError { position, message: "alias to an unknown anchor".to_owned() });
                };
                let size = node_count(node);
                if size > alias_budget {
                    return Err(SyntaxError {
                        position,
                        message: format!("aliases expand to more than {ALIAS_NODE_BUDGET} nodes"),
                    });
                }
                alias_budget -= size;
                let mut node = node.clone();
                node.position = position;
                Some((node, 0))
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd => None,
        };
        let Some((node, anchor)) = complete else {
            continue;
        };
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            Some(Frame::Sequence { items, .. }) => items.push(node),
            Some(Frame::Mapping { entries, key, .. }) => match key.take() {
                Some(k) => entries.push((k, node)),
                None => *key = Some(node),
            },
            None => {
                if !node.is_null() {
                    documents.push(node);
                }
            }
        }
    }
    Ok(documents)
}

fn node_count(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Scalar(_) => 1,
        NodeKind::Sequence(items) => 1 + items.iter().map(node_count).sum::<usize>(),
        NodeKind::Mapping(entries) => {
            1 + entries.iter().map(|(k, v)| node_count(k) + node_count(v)).sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(text: &str, plain: bool) -> Scalar {
        Scalar { text: text.to_owned(), plain, quote_width: Some(0) }
    }

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let documents = parse_documents("id: a\ndetection:\n  sel:\n    x: 1\n").unwrap();
        let NodeKind::Mapping(entries) = &documents[0].kind else { panic!("expected a mapping") };
        assert_eq!(entries[1].0.position, Position::new(2, 1));
        let NodeKind::Mapping(detection) = &entries[1].1.kind else { panic!("expected a mapping") };
        assert_eq!(detection[0].0.position, Position::new(3, 3));
    }

    #[test]
    fn documents_split_on_dashes_and_empty_ones_are_dropped() {
        assert_eq!(parse_documents("a: 1\n---\nb: 2\n---\n").unwrap().len(), 2);
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let error = parse_documents("a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!(error.position.line, 2);
    }

    #[test]
    fn core_schema_types_plain_scalars_only() {
        assert_eq!(scalar("12", true).resolve(), ScalarValue::Integer(12));
        assert_eq!(scalar("12", false).resolve(), ScalarValue::String("12"));
        assert_eq!(scalar("1.5e3", true).resolve(), ScalarValue::Float(1500.0));
        assert_eq!(scalar("yes", true).resolve(), ScalarValue::String("yes"));
        assert_eq!(scalar("~", true).resolve(), ScalarValue::Null);
        assert_eq!(scalar("T1486", true).resolve(), ScalarValue::String("T1486"));
        assert_eq!(scalar("1.2.3.4", true).resolve(), ScalarValue::String("1.2.3.4"));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let flow = "[".repeat(100_000);
        // saphyr-parser has a recursion limit of its own, and reports it first here.
        assert_eq!(parse_documents(&flow).unwrap_err().message, "recursion limit exceeded");
        let block: String = (0..200).map(|depth| " ".repeat(depth) + "k:\n").collect();
        assert!(parse_documents(&block).unwrap_err().message.contains("nesting deeper than 64 levels"));
    }

    #[test]
    fn aliases_are_expanded_within_a_budget() {
        let documents = parse_documents("a: &x [1, 2]\nb: *x\n").unwrap();
        assert_eq!(documents[0].to_json(), serde_json::json!({"a": [1, 2], "b": [1, 2]}));
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (name, previous) in ["b", "c", "d", "e", "f"].iter().zip(["a", "b", "c", "d", "e"]) {
            let items = vec![format!("*{previous}"); 10].join(", ");
            bomb.extend([name, ": &", name, " [", &items, "]\n"]);
        }
        assert!(parse_documents(&bomb).unwrap_err().message.contains("aliases expand"));
    }
}
