//! Detection events (OCSF Detection Finding JSON): the required fields the engine relies on, and
//! field lookup by dotted path, where a path through an array matches if any element matches.
//!
//! An event can be parsed whole, or through the [`Projection`] of a rule set: then only the
//! fields some rule can look at are kept (the rest is checked as JSON and skipped), which is
//! what `cordon serve` does: most of an event's cost was building and dropping fields no rule
//! reads. Both parses evaluate alike; `run_test` checks that on every rule test.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};
use thiserror::Error;

use crate::fields::{Builder, Field, Fields, Slot};
use crate::format::Format;

/// A validated event: its JSON and the four fields every decision needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    fields: Fields,
    host: String,
    id: String,
    time_ms: i64,
    severity_id: u8,
    /// Every string of the event, lowercased, each followed by a NUL, when the projection it was
    /// parsed through asked for them (keyword searches of every text), captured in the same pass.
    folded_texts: Option<Box<str>>,
}

/// Why an event cannot be evaluated. The orchestrator dead-letters such events.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("an event must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    #[error("missing required field `{0}`")]
    Missing(&'static str),
    #[error("field `{field}` must be {expected}, found {found}")]
    WrongType { field: &'static str, expected: &'static str, found: String },
    #[error("field `severity_id` must be 0-6, found {0}")]
    SeverityOutOfRange(String),
    #[error("an event must be smaller than 4 GiB")]
    TooLarge,
}

fn field_kind(value: Field<'_>) -> &'static str {
    match value {
        Field::Null => "null",
        Field::Bool(_) => "a boolean",
        Field::Number(_) => "a number",
        Field::String(_) => "a string",
        Field::Array(_) => "an array",
        Field::Object(_) => "an object",
    }
}

impl Event {
    /// Parses one JSON text into an event (OCSF).
    pub fn parse(text: &str) -> Result<Self, EventError> {
        Self::parse_as(text, Format::Ocsf)
    }

    /// Parses one JSON text of `format` into an event.
    pub fn parse_as(text: &str, format: Format) -> Result<Self, EventError> {
        if format.has_dotted_keys() {
            let fields: Value =
                serde_json::from_str(text).map_err(|error| EventError::NotJson(error.to_string()))?;
            return Self::from_json_as(fields, format);
        }
        Self::parse_through(text, &Projection::everything(), format)
    }

    /// Parses one JSON text into an event that keeps only the fields of `projection` (and the
    /// required ones); the whole text must still be valid JSON. Evaluates like [`Event::parse`]
    /// with the rule set the projection was taken from.
    pub fn parse_projected(text: &str, projection: &Projection) -> Result<Self, EventError> {
        Self::parse_projected_as(text, projection, Format::Ocsf)
    }

    /// [`Event::parse_projected`] for alerts of `format`; a format whose alerts may spell nested
    /// fields as dotted keys is parsed whole (a projection would drop those keys).
    pub fn parse_projected_as(text: &str, projection: &Projection, format: Format) -> Result<Self, EventError> {
        if format.has_dotted_keys() {
            return Self::parse_as(text, format);
        }
        Self::parse_through(text, projection, format)
    }

    fn parse_through(text: &str, projection: &Projection, format: Format) -> Result<Self, EventError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let mut captured = projection.keep_texts.then(|| Captured::with_capacity(text.len() / 2));
        let fields = Builder::with(|builder| {
            let root = NodeSeed { node: &projection.root, builder: &mut *builder, texts: captured.as_mut() }
                .deserialize(&mut deserializer)?;
            deserializer.end()?;
            Ok(builder.finish(root))
        })
        .map_err(|error: serde_json::Error| EventError::NotJson(error.to_string()))?;
        let mut event = Self::from_fields(fields, format)?;
        event.folded_texts = captured.map(|captured| captured.texts.into_boxed_str());
        Ok(event)
    }

    /// Validates the required fields of an OCSF event: `device.uid` (or `device.hostname`),
    /// `finding_info.uid`, `time` (epoch milliseconds, an integer) and `severity_id` (an integer
    /// 0-6).
    pub fn from_json(fields: Value) -> Result<Self, EventError> {
        Self::from_json_as(fields, Format::Ocsf)
    }

    /// Finds the facts every decision needs where `format` keeps them (see [`Format`]).
    pub fn from_json_as(fields: Value, format: Format) -> Result<Self, EventError> {
        // Not an object: refused by `from_fields`, which names what the root is.
        let fields = if format.has_dotted_keys() { crate::format::expand_dotted_keys(fields) } else { fields };
        let fields = Fields::from_value(&fields).map_err(|_| EventError::TooLarge)?;
        Self::from_fields(fields, format)
    }

    fn from_fields(fields: Fields, format: Format) -> Result<Self, EventError> {
        let root = fields.root();
        if !matches!(root, Field::Object(_)) {
            return Err(EventError::NotAnObject(field_kind(root)));
        }
        let facts = format.facts(root)?;
        Ok(Self {
            fields,
            host: facts.host,
            id: facts.id,
            time_ms: facts.time_ms,
            severity_id: facts.severity_id,
            folded_texts: None,
        })
    }

    /// The host: `device.uid`, or `device.hostname` when the event has no uid.
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The event id, `finding_info.uid`.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// When the detection happened, epoch milliseconds.
    #[must_use]
    pub fn time_ms(&self) -> i64 {
        self.time_ms
    }

    #[must_use]
    pub fn severity_id(&self) -> u8 {
        self.severity_id
    }

    /// The event's JSON (the fields its projection kept, when it was parsed through one).
    #[must_use]
    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// Every string of the event, lowercased and NUL-separated, if the parse captured them.
    pub(crate) fn folded_texts(&self) -> Option<&str> {
        self.folded_texts.as_deref()
    }

    /// The names of the device's groups (`device.groups[].name`): the host tags `cordon rules test`
    /// uses when no inventory is at hand.
    #[must_use]
    pub fn device_group_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        let path = FieldPath::new("device.groups.name");
        path.any_value(self.fields.root(), &mut |value| {
            if let Field::String(name) = value {
                names.push(name.to_owned());
            }
            false
        });
        names
    }
}

/// The fields of events a rule set can look at, as a tree of path segments: where a path ends,
/// the whole value is kept; above it, only the keys on some path. Arrays are transparent, as
/// they are to [`FieldPath`]: each element is kept as its parent would be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    root: Node,
    /// Capture every string of the event (lowercased) while parsing, for keyword searches of
    /// every text, without keeping the fields that hold them.
    keep_texts: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Node {
    whole: bool,
    /// A handful each: a scan that compares lengths first beats a tree's string comparisons,
    /// and the lookup is made for every key of every event.
    children: Vec<(Box<str>, Node)>,
}

impl Node {
    /// The node of a member: all of a whole value's members are kept whole.
    fn child(&self, key: &str) -> Option<&Node> {
        if self.whole {
            return Some(self);
        }
        self.children.iter().find(|(name, _)| **name == *key).map(|(_, node)| node)
    }

    fn child_or_new(&mut self, key: &str) -> &mut Node {
        let index = self.children.iter().position(|(name, _)| **name == *key).unwrap_or_else(|| {
            self.children.push((key.into(), Node::default()));
            self.children.len() - 1
        });
        &mut self.children[index].1
    }
}

/// `cordon rules test`'s host tags: kept beside every format's facts.
const HOST_GROUPS_PATH: &str = "device.groups.name";

impl Projection {
    /// Every format's facts (see [`Format`]), the host groups and `paths`.
    pub(crate) fn of<'a>(paths: impl IntoIterator<Item = &'a FieldPath>) -> Projection {
        let mut projection = Projection { root: Node::default(), keep_texts: false };
        for path in Format::ALL.iter().flat_map(|format| format.fact_paths()).chain([&HOST_GROUPS_PATH]) {
            projection.add(&FieldPath::new(path));
        }
        for path in paths {
            projection.add(path);
        }
        projection
    }

    /// Everything: parsing through it keeps the whole event.
    #[must_use]
    pub fn everything() -> Projection {
        Projection { root: Node { whole: true, children: Vec::new() }, keep_texts: false }
    }

    /// The same projection, also capturing every string of the event.
    pub(crate) fn with_texts(mut self) -> Projection {
        self.keep_texts = true;
        self
    }

    fn add(&mut self, path: &FieldPath) {
        let mut node = &mut self.root;
        for segment in &path.segments {
            node = node.child_or_new(segment);
        }
        node.whole = true;
    }
}

/// A value no rule reads, read and dropped. Read, not skipped (serde's `IgnoredAny` skips a
/// number without reading it), so that the projected parse refuses what [`Event::parse`] refuses:
/// a number out of range (`1E400`) anywhere in the event makes both fail alike.
struct Skipped;

/// Reads and drops a value, capturing its strings (lowercased) into `.0` when asked.
struct SkippedSeed<'t, 'de>(Option<&'t mut Captured<'de>>);

impl<'de> DeserializeSeed<'de> for SkippedSeed<'_, 'de> {
    type Value = Skipped;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Skipped, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// Appends `text`, lowercased, and a NUL to the captured texts.
fn capture(captured: Option<&mut Captured<'_>>, text: &str) {
    if let Some(captured) = captured {
        crate::matcher::push_folded(&mut captured.texts, text);
        captured.texts.push('\0');
    }
}

impl<'de> Visitor<'de> for SkippedSeed<'_, 'de> {
    type Value = Skipped;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Skipped, E> {
        Ok(Skipped)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Skipped, E> {
        Ok(Skipped)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Skipped, E> {
        Ok(Skipped)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Skipped, E> {
        Ok(Skipped)
    }

    fn visit_str<E>(self, text: &str) -> Result<Skipped, E> {
        capture(self.0, text);
        Ok(Skipped)
    }

    fn visit_unit<E>(self) -> Result<Skipped, E> {
        Ok(Skipped)
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Skipped, A::Error> {
        if self.0.is_none() {
            while map.next_key::<IgnoredAny>()?.is_some() {
                map.next_value_seed(SkippedSeed(None))?;
            }
            return Ok(Skipped);
        }
        let object = Captured::object_start(self.0.as_deref());
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let start = Captured::texts_end(self.0.as_deref());
            map.next_value_seed(SkippedSeed(self.0.as_deref_mut()))?;
            Captured::note(self.0.as_deref_mut(), key, start);
        }
        Captured::object_end(self.0.as_deref_mut(), object);
        Ok(Skipped)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Skipped, A::Error> {
        while seq.next_element_seed(SkippedSeed(self.0.as_deref_mut()))?.is_some() {}
        Ok(Skipped)
    }
}

/// What a parse captures when asked: every string of the event, lowercased, each followed by a
/// NUL; and the members of the objects being read, by key and where their texts are. When an
/// object ends, the texts of a member that a later member of the same key overrides are taken
/// out again, so that the captured texts are those of the event as parsed whole (which keeps the
/// last of repeated keys, as `serde_json` does). One of each per parse: the members of the
/// objects open are runs at the end of `members`, the innermost last, and go when it ends.
struct Captured<'de> {
    texts: String,
    members: Vec<(Cow<'de, str>, std::ops::Range<usize>)>,
}

impl<'de> Captured<'de> {
    fn with_capacity(texts: usize) -> Self {
        Captured { texts: String::with_capacity(texts), members: Vec::new() }
    }

    /// Where an object's members start (0 when nothing is captured).
    fn object_start(captured: Option<&Self>) -> usize {
        captured.map_or(0, |captured| captured.members.len())
    }

    /// Where the next member's texts start (0 when nothing is captured).
    fn texts_end(captured: Option<&Self>) -> usize {
        captured.map_or(0, |captured| captured.texts.len())
    }

    /// A member read: its key, and where its texts start.
    fn note(captured: Option<&mut Self>, key: Cow<'de, str>, start: usize) {
        if let Some(captured) = captured {
            let end = captured.texts.len();
            captured.members.push((key, start..end));
        }
    }

    /// The object whose members start at `start` ended: the texts of its overridden members go.
    fn object_end(captured: Option<&mut Self>, start: usize) {
        let Some(captured) = captured else { return };
        let object = &captured.members[start..];
        // From the last member back: a key seen already is overridden; its texts go, the later
        // ranges first so that the earlier ones stay where they are.
        if crate::fields::has_repeated_key(object, |(key, _)| key) {
            let mut seen = std::collections::HashSet::with_capacity(object.len());
            for (key, range) in object.iter().rev() {
                if !seen.insert(&**key) && !range.is_empty() {
                    captured.texts.replace_range(range.clone(), "");
                }
            }
        }
        captured.members.truncate(start);
    }
}

/// Reads a value into the tree as `node` keeps it, capturing its strings into `texts` when asked.
struct NodeSeed<'a, 'de> {
    node: &'a Node,
    builder: &'a mut Builder,
    texts: Option<&'a mut Captured<'de>>,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, 'de> {
    type Value = Slot;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Slot, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_, 'de> {
    type Value = Slot;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any valid JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Slot, A::Error> {
        let mark = self.builder.mark();
        let object = Captured::object_start(self.texts.as_deref());
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let start = Captured::texts_end(self.texts.as_deref());
            match self.node.child(&key) {
                Some(child) => {
                    let texts = self.texts.as_deref_mut();
                    let value = map.next_value_seed(NodeSeed { node: child, builder: &mut *self.builder, texts })?;
                    self.builder.push_member(&key, value).map_err(A::Error::custom)?;
                }
                None => {
                    map.next_value_seed(SkippedSeed(self.texts.as_deref_mut()))?;
                }
            }
            Captured::note(self.texts.as_deref_mut(), key, start);
        }
        Captured::object_end(self.texts.as_deref_mut(), object);
        self.builder.close_object(mark).map_err(A::Error::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Slot, A::Error> {
        let mark = self.builder.mark();
        loop {
            let texts = self.texts.as_deref_mut();
            let Some(item) = seq.next_element_seed(NodeSeed { node: self.node, builder: &mut *self.builder, texts })?
            else {
                break;
            };
            self.builder.push_item(item);
        }
        self.builder.close_array(mark).map_err(A::Error::custom)
    }

    // Scalars above the end of every path are kept too (no path reaches into them), so that the
    // event reads the same as parsed whole (a required field's error names what is there).
    fn visit_bool<E>(self, value: bool) -> Result<Slot, E> {
        Ok(Builder::bool(value))
    }
    fn visit_i64<E>(self, value: i64) -> Result<Slot, E> {
        Ok(Builder::number(Number::from(value)))
    }
    fn visit_u64<E>(self, value: u64) -> Result<Slot, E> {
        Ok(Builder::number(Number::from(value)))
    }
    fn visit_f64<E>(self, value: f64) -> Result<Slot, E> {
        Ok(Number::from_f64(value).map_or_else(Builder::null, Builder::number))
    }
    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Slot, E> {
        capture(self.texts, value);
        self.builder.string(value).map_err(E::custom)
    }
    fn visit_unit<E>(self) -> Result<Slot, E> {
        Ok(Builder::null())
    }
    fn visit_none<E>(self) -> Result<Slot, E> {
        Ok(Builder::null())
    }
}

/// An object key, borrowed from the text when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a string key")
    }
    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(value))
    }
    fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value.to_owned()))
    }
    fn visit_string<E>(self, value: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value))
    }
}

/// A dotted field path, split once when the rule is compiled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FieldPath {
    segments: Box<[Box<str>]>,
}

impl FieldPath {
    pub fn new(text: &str) -> Self {
        Self { segments: text.split('.').map(Into::into).collect() }
    }

    /// Calls `visit` on every value the path reaches, stepping into arrays on the way and at the
    /// end, until `visit` returns true. Returns whether it did.
    pub fn any_value<'e>(&self, root: Field<'e>, visit: &mut impl FnMut(Field<'e>) -> bool) -> bool {
        walk(root, &self.segments, visit)
    }
}

fn walk<'e>(value: Field<'e>, segments: &[Box<str>], visit: &mut impl FnMut(Field<'e>) -> bool) -> bool {
    match segments.split_first() {
        None => match value {
            Field::Array(items) => items.values().any(&mut *visit),
            other => visit(other),
        },
        Some((head, rest)) => match value {
            Field::Object(members) => members.get(head).is_some_and(|child| walk(child, rest, visit)),
            Field::Array(items) => items.values().any(|item| walk(item, segments, visit)),
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn projection(paths: &[&str]) -> Projection {
        let paths: Vec<FieldPath> = paths.iter().map(|p| FieldPath::new(p)).collect();
        Projection::of(&paths)
    }

    #[test]
    fn a_projected_event_keeps_what_the_paths_reach_and_nothing_else() {
        let text = r#"{"device":{"uid":"ws-1","os":{"name":"linux"},"groups":[{"name":"ot","uid":"g1"}]},
            "finding_info":{"uid":"e1","title":"t","attacks":[{"technique":{"uid":"T1486","name":"x"}},
            {"technique":{"uid":"T1059"}},"odd"]},"time":1700000000000,"severity_id":4,
            "process":{"name":"a.exe","pid":7,"cmd_line":"a \"b\""},"pro\u0063ess2":{"name":"b"},"raw":[1,2,{"x":null}]}"#;
        let event = Event::parse_projected(
            text,
            &projection(&["process.name", "finding_info.attacks.technique.uid", "process2", "nothing.here"]),
        )
        .unwrap();
        assert_eq!(
            event.fields().root().to_value(),
            json!({"device":{"uid":"ws-1","groups":[{"name":"ot"}]},
                "finding_info":{"uid":"e1","attacks":[{"technique":{"uid":"T1486"}},{"technique":{"uid":"T1059"}},"odd"]},
                "time":1_700_000_000_000_i64,"severity_id":4,"process":{"name":"a.exe"},"process2":{"name":"b"}})
        );
        let whole = Event::parse(text).unwrap();
        assert_eq!(Event::parse_projected(text, &Projection::everything()).unwrap(), whole);
    }

    #[test]
    fn a_projected_parse_refuses_what_the_whole_parse_refuses_with_the_same_words() {
        let texts = [
            "",
            "not json",
            r#"{"device":{"uid":"ws-1"},"finding_info":{"uid":"e1"},"time":1,"severity_id":4} trailing"#,
            r#"{"device":{"uid":"ws-1"},"skipped":{"a":[1,2,}}"#,
            r#"{"device":{"uid":"ws-1"},"finding_info":{"uid":"e1"},"time":1,"severity_id":4"#,
            "[1,2]",
            r#""text""#,
            r#"{"device":"ws-1","finding_info":{"uid":"e1"},"time":1,"severity_id":4}"#,
            r#"{"device":{"uid":""},"finding_info":{"uid":"e1"},"time":1,"severity_id":4}"#,
            r#"{"device":{"uid":"a"},"finding_info":{"uid":"e1"},"time":1.5,"severity_id":4}"#,
            r#"{"device":{"uid":"a"},"finding_info":{"uid":"e1"},"time":1,"severity_id":9}"#,
            r#"{"device":{"uid":"a"},"finding_info":{"uid":"e1"},"time":1,"severity_id":"4"}"#,
            r#"{"device":{"uid":"a","uid":"b"},"finding_info":{"uid":"e1"},"time":1,"severity_id":4}"#,
            // A number out of range in a field no rule reads (found by the `detection` fuzz target).
            r#"{"device":{"uid":"a"},"finding_info":{"uid":"e1"},"time":1,"severity_id":4,"x":{"y":[16E6000]}}"#,
            r#"{"device":{"uid":"a"},"finding_info":{"uid":"e1"},"time":1,"severity_id":4,"x":-1e400}"#,
        ];
        let projection = projection(&["process.name"]);
        for text in texts {
            let whole = Event::parse(text).map(|e| (e.host().to_owned(), e.id().to_owned()));
            let projected =
                Event::parse_projected(text, &projection).map(|e| (e.host().to_owned(), e.id().to_owned()));
            assert_eq!(projected, whole, "{text}");
        }
    }

    #[test]
    fn captured_texts_leave_out_what_a_repeated_key_overrides_as_the_whole_parse_does() {
        let text = r#"{"device":{"uid":"a"},"finding_info":{"uid":"e1"},"time":1,"severity_id":4,
            "process":{"cmd":"Mimikatz","cmd":"ls","args":["x",{"a":"Gone","a":"kept"}]},
            "skipped":{"a":"Secret","a":"x","b":{"c":"deep","c":"deeper"}},"kept":{"k":"One","k":"two"},"kept":"last"}"#;
        let sorted = |texts: &str| {
            let mut texts: Vec<String> = texts.split('\0').filter(|t| !t.is_empty()).map(str::to_owned).collect();
            texts.sort();
            texts
        };
        let projected = Event::parse_projected(text, &projection(&["kept", "process.cmd"]).with_texts()).unwrap();
        let whole = Event::parse(text).unwrap();
        let whole_texts = crate::matcher::Subject::new(&whole).folded_texts().to_owned();
        assert_eq!(sorted(projected.folded_texts().unwrap()), sorted(&whole_texts));
        assert_eq!(sorted(&whole_texts), ["a", "deeper", "e1", "kept", "last", "ls", "x", "x"]);
    }

    #[test]
    fn a_parsed_event_reads_as_serde_json_reads_the_text() {
        let text = r#"{"device":{"uid":"a","uid":"b"},"finding_info":{"uid":"e\u00e9\n"},"time":1,"severity_id":4,
            "n":[-1,18446744073709551615,1.5e3,-0.0,1e-7],"o":{"k":1,"k":{"x":[]},"k":[true,null]},"":""}"#;
        let event = Event::parse(text).unwrap();
        assert_eq!(event.fields().root().to_value(), serde_json::from_str::<Value>(text).unwrap());
        assert_eq!((event.host(), event.id()), ("b", "eé\n"), "the last of repeated keys");
    }

    fn minimal() -> Value {
        json!({"device": {"uid": "ws-1"}, "finding_info": {"uid": "e1"}, "time": 1_700_000_000_000_i64, "severity_id": 4})
    }

    fn error_with(mut change: impl FnMut(&mut Value)) -> String {
        let mut fields = minimal();
        change(&mut fields);
        Event::from_json(fields).unwrap_err().to_string()
    }

    #[test]
    fn reads_the_required_fields() {
        let event = Event::from_json(minimal()).unwrap();
        assert_eq!(
            (event.host(), event.id(), event.time_ms(), event.severity_id()),
            ("ws-1", "e1", 1_700_000_000_000, 4)
        );
    }

    #[test]
    fn falls_back_to_the_hostname() {
        let event = Event::from_json(error_free(|f| f["device"] = json!({"hostname": "plc-7"}))).unwrap();
        assert_eq!(event.host(), "plc-7");
    }

    fn error_free(mut change: impl FnMut(&mut Value)) -> Value {
        let mut fields = minimal();
        change(&mut fields);
        fields
    }

    #[test]
    fn reports_each_missing_or_wrong_field_precisely() {
        assert_eq!(error_with(|f| f["device"] = json!({})), "missing required field `device.uid`");
        assert_eq!(
            error_with(|f| f["device"]["uid"] = json!(7)),
            "field `device.uid` must be a string, found 7"
        );
        assert_eq!(
            error_with(|f| f["device"]["uid"] = json!("")),
            "field `device.uid` must be a non-empty string, found an empty string"
        );
        assert_eq!(
            error_with(|f| f["finding_info"] = json!(null)),
            "missing required field `finding_info.uid`"
        );
        assert_eq!(error_with(|f| f["time"] = json!(null)), "missing required field `time`");
        assert_eq!(
            error_with(|f| f["time"] = json!("2024-01-01")),
            "field `time` must be an integer (epoch milliseconds), found the string \"2024-01-01\""
        );
        assert_eq!(
            error_with(|f| f["time"] = json!(1.5)),
            "field `time` must be an integer (epoch milliseconds), found 1.5"
        );
        assert_eq!(error_with(|f| f["severity_id"] = json!(9)), "field `severity_id` must be 0-6, found 9");
        assert_eq!(
            error_with(|f| f["severity_id"] = json!("high")),
            "field `severity_id` must be an integer 0-6, found the string \"high\""
        );
        assert_eq!(
            Event::from_json(json!([1])).unwrap_err().to_string(),
            "an event must be a JSON object, found an array"
        );
        assert!(Event::parse("{").unwrap_err().to_string().starts_with("not JSON: EOF while parsing"));
    }

    #[test]
    fn paths_step_through_arrays() {
        let fields = json!({"finding_info": {"attacks": [{"technique": {"uid": "T1003"}}, {"technique": {"uid": "T1486"}}]}, "tags": ["a", "b"]});
        let fields = Fields::from_value(&fields).unwrap();
        let mut seen = Vec::new();
        FieldPath::new("finding_info.attacks.technique.uid").any_value(fields.root(), &mut |v| {
            seen.push(v.to_value());
            false
        });
        assert_eq!(seen, vec![json!("T1003"), json!("T1486")]);
        assert!(FieldPath::new("tags").any_value(fields.root(), &mut |v| matches!(v, Field::String("b"))));
        assert!(!FieldPath::new("finding_info.missing").any_value(fields.root(), &mut |_| true));
    }
}
