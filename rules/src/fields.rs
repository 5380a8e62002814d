//! An event's fields as one compact, read-only JSON tree: every value in one slice and every text
//! in one string, so that an event is two allocations to build and two frees to drop.
//!
//! A `serde_json::Value` tree costs an allocation per string, key and object node; building and
//! freeing those was most of what the service's parser threads did. [`Field`] is the borrowed
//! view the engine reads, shaped like `Value` (objects answer `get`, arrays iterate), so the
//! matchers read an event the way they would read JSON.

use std::collections::HashSet;
use std::fmt;

use serde_json::{Map, Number, Value};

/// A run of [`Fields::text`] (bytes) or of [`Fields::members`] (members).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn range(self) -> std::ops::Range<usize> {
        let start = self.start as usize;
        start..start + self.len as usize
    }
}

/// One value, its text or members elsewhere in the tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Slot {
    Null,
    Bool(bool),
    Number(Number),
    String(Span),
    Array(Span),
    Object(Span),
}

/// A member of an array (its key empty) or of an object.
#[derive(Debug, Clone, PartialEq)]
struct Member {
    key: Span,
    value: Slot,
}

/// An event too large for the tree's 32-bit offsets (over 4 GiB of text or members).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLarge;

impl fmt::Display for TooLarge {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an event must be smaller than 4 GiB")
    }
}

fn offset(value: usize) -> Result<u32, TooLarge> {
    u32::try_from(value).map_err(|_| TooLarge)
}

/// The fields of an event (see the module documentation). Objects keep the last of repeated keys,
/// as `serde_json` does.
#[derive(Clone)]
pub struct Fields {
    root: Slot,
    members: Box<[Member]>,
    text: Box<str>,
}

impl Fields {
    /// The whole event.
    #[must_use]
    pub fn root(&self) -> Field<'_> {
        self.field(&self.root)
    }

    fn field<'e>(&'e self, slot: &'e Slot) -> Field<'e> {
        match slot {
            Slot::Null => Field::Null,
            Slot::Bool(value) => Field::Bool(*value),
            Slot::Number(number) => Field::Number(number),
            Slot::String(span) => Field::String(&self.text[span.range()]),
            Slot::Array(span) => Field::Array(Members { fields: self, members: &self.members[span.range()] }),
            Slot::Object(span) => Field::Object(Members { fields: self, members: &self.members[span.range()] }),
        }
    }

    /// The tree of a JSON value.
    pub(crate) fn from_value(value: &Value) -> Result<Fields, TooLarge> {
        fn add(builder: &mut Builder, value: &Value) -> Result<Slot, TooLarge> {
            Ok(match value {
                Value::Null => Slot::Null,
                Value::Bool(value) => Slot::Bool(*value),
                Value::Number(number) => Slot::Number(number.clone()),
                Value::String(text) => builder.string(text)?,
                Value::Array(items) => {
                    let mark = builder.mark();
                    for item in items {
                        let item = add(builder, item)?;
                        builder.push_item(item);
                    }
                    builder.close_array(mark)?
                }
                Value::Object(map) => {
                    let mark = builder.mark();
                    for (key, item) in map {
                        let item = add(builder, item)?;
                        builder.push_member(key, item)?;
                    }
                    builder.close_object(mark)?
                }
            })
        }
        Builder::with(|builder| {
            let root = add(builder, value)?;
            Ok(builder.finish(root))
        })
    }
}

impl PartialEq for Fields {
    fn eq(&self, other: &Fields) -> bool {
        self.root().to_value() == other.root().to_value()
    }
}

impl fmt::Display for Fields {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.root(), formatter)
    }
}

impl fmt::Debug for Fields {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.root(), formatter)
    }
}

/// A value of an event, borrowed from its [`Fields`].
#[derive(Debug, Clone, Copy)]
pub enum Field<'e> {
    Null,
    Bool(bool),
    Number(&'e Number),
    String(&'e str),
    Array(Members<'e>),
    Object(Members<'e>),
}

impl<'e> Field<'e> {
    #[must_use]
    pub fn is_null(self) -> bool {
        matches!(self, Field::Null)
    }

    /// The member `key` of an object; None for anything else.
    #[must_use]
    pub fn get(self, key: &str) -> Option<Field<'e>> {
        match self {
            Field::Object(members) => members.get(key),
            _ => None,
        }
    }

    /// The value as JSON (for display and tests: it allocates like `Value` does).
    #[must_use]
    pub fn to_value(self) -> Value {
        match self {
            Field::Null => Value::Null,
            Field::Bool(value) => Value::Bool(value),
            Field::Number(number) => Value::Number(number.clone()),
            Field::String(text) => Value::String(text.to_owned()),
            Field::Array(items) => Value::Array(items.values().map(Field::to_value).collect()),
            Field::Object(members) => {
                Value::Object(members.entries().map(|(key, value)| (key.to_owned(), value.to_value())).collect::<Map<_, _>>())
            }
        }
    }
}

impl fmt::Display for Field<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_value(), formatter)
    }
}

/// The members of an array or an object.
#[derive(Clone, Copy)]
pub struct Members<'e> {
    fields: &'e Fields,
    members: &'e [Member],
}

impl fmt::Debug for Members<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_list().entries(self.values()).finish()
    }
}

impl<'e> Members<'e> {
    /// The values, in the order of the text (an object wider than 16 members: by key).
    pub fn values(self) -> impl Iterator<Item = Field<'e>> {
        self.members.iter().map(move |member| self.fields.field(&member.value))
    }

    /// The keys (empty for array items) and values, in the order of the text (an object wider
    /// than 16 members: by key).
    pub fn entries(self) -> impl Iterator<Item = (&'e str, Field<'e>)> {
        self.members.iter().map(move |member| (&self.fields.text[member.key.range()], self.fields.field(&member.value)))
    }

    /// The value of `key` (objects keep one member per key).
    #[must_use]
    pub fn get(self, key: &str) -> Option<Field<'e>> {
        let text = self.fields.text.as_bytes();
        let found = if self.members.len() > PAIRWISE_MAX {
            // Wide objects are sorted by key (see `Builder::close_object`): a hostile event with
            // 100,000 keys costs each lookup 17 comparisons, not 100,000.
            let at = self.members.binary_search_by(|member| text[member.key.range()].cmp(key.as_bytes())).ok()?;
            &self.members[at]
        } else {
            // Lengths first, then bytes: no `Field` is built for the members passed over.
            self.members.iter().find(|member| {
                member.key.len as usize == key.len() && text[member.key.range()] == *key.as_bytes()
            })?
        };
        Some(self.fields.field(&found.value))
    }

    #[must_use]
    pub fn len(self) -> usize {
        self.members.len()
    }

    #[must_use]
    pub fn is_empty(self) -> bool {
        self.members.is_empty()
    }
}

/// Builds [`Fields`] bottom-up: the members of the containers being read wait on a stack, and a
/// container's members move into place together when it ends. One builder per thread is reused,
/// so an event's only allocations are the two exact-size copies [`Builder::finish`] makes.
#[derive(Default)]
pub(crate) struct Builder {
    members: Vec<Member>,
    text: String,
    open: Vec<Member>,
}

/// What a thread's builder keeps after a huge event: members, and 16 bytes of text per member.
const KEEP: usize = 1 << 16;

/// Objects up to this many members are checked for repeated keys pair by pair and searched in
/// order; wider ones are checked with a hash set and kept sorted by key.
const PAIRWISE_MAX: usize = 16;

/// Whether two of an object's `members` have the same key: pair by pair for a small object (no
/// set built: most objects have a few members and no repeated key), with a hash set for a wide
/// one (a hostile event's 100,000 keys must not cost their square).
pub(crate) fn has_repeated_key<'k, T>(members: &'k [T], key: impl Fn(&'k T) -> &'k str) -> bool {
    if members.len() <= PAIRWISE_MAX {
        members.iter().enumerate().any(|(i, member)| members[i + 1..].iter().any(|later| key(later) == key(member)))
    } else {
        let mut seen = HashSet::with_capacity(members.len());
        !members.iter().all(|member| seen.insert(key(member)))
    }
}

thread_local! {
    static BUILDER: std::cell::RefCell<Builder> = std::cell::RefCell::new(Builder::default());
}

impl Builder {
    /// Runs `build` with this thread's builder, emptied before and after.
    pub(crate) fn with<T>(build: impl FnOnce(&mut Builder) -> T) -> T {
        BUILDER.with(|builder| match builder.try_borrow_mut() {
            Ok(mut builder) => {
                builder.clear();
                let result = build(&mut builder);
                builder.clear();
                result
            }
            // Not reached (building never builds another event); a fresh one is correct anyway.
            Err(_) => build(&mut Builder::default()),
        })
    }

    fn clear(&mut self) {
        self.members.clear();
        self.text.clear();
        self.open.clear();
        if self.text.capacity() > KEEP * 16 {
            self.text.shrink_to(KEEP * 16);
        }
        if self.members.capacity() > KEEP {
            self.members.shrink_to(KEEP);
        }
        // Apart: an object of one key repeated, or a text cut off inside an array, fills only this.
        if self.open.capacity() > KEEP {
            self.open.shrink_to(KEEP);
        }
    }

    fn text(&mut self, text: &str) -> Result<Span, TooLarge> {
        let start = offset(self.text.len())?;
        offset(self.text.len() + text.len())?;
        self.text.push_str(text);
        Ok(Span { start, len: offset(text.len())? })
    }

    pub(crate) fn string(&mut self, text: &str) -> Result<Slot, TooLarge> {
        self.text(text).map(Slot::String)
    }

    pub(crate) fn null() -> Slot {
        Slot::Null
    }

    pub(crate) fn bool(value: bool) -> Slot {
        Slot::Bool(value)
    }

    pub(crate) fn number(number: Number) -> Slot {
        Slot::Number(number)
    }

    /// Where the members of a container about to be read start.
    pub(crate) fn mark(&self) -> usize {
        self.open.len()
    }

    pub(crate) fn push_item(&mut self, value: Slot) {
        self.open.push(Member { key: Span { start: 0, len: 0 }, value });
    }

    pub(crate) fn push_member(&mut self, key: &str, value: Slot) -> Result<(), TooLarge> {
        let key = self.text(key)?;
        self.open.push(Member { key, value });
        Ok(())
    }

    pub(crate) fn close_array(&mut self, mark: usize) -> Result<Slot, TooLarge> {
        self.close(mark).map(Slot::Array)
    }

    /// Ends an object, keeping the last member of each key.
    pub(crate) fn close_object(&mut self, mark: usize) -> Result<Slot, TooLarge> {
        let text = &self.text;
        let key = |member: &Member| &text[member.key.range()];
        if has_repeated_key(&self.open[mark..], |member| &text[member.key.range()]) {
            let mut seen = HashSet::new();
            let mut kept: Vec<Member> = self.open.drain(mark..).rev().filter(|member| seen.insert(key(member))).collect();
            kept.reverse();
            self.open.extend(kept);
        }
        if self.open.len() - mark > PAIRWISE_MAX {
            // Wide: sorted by key, for `Members::get` to search (serde_json's maps are sorted too).
            self.open[mark..].sort_unstable_by(|a, b| text[a.key.range()].cmp(&text[b.key.range()]));
        }
        self.close(mark).map(Slot::Object)
    }

    fn close(&mut self, mark: usize) -> Result<Span, TooLarge> {
        let start = offset(self.members.len())?;
        let len = offset(self.open.len() - mark)?;
        offset(self.members.len() + self.open.len() - mark)?;
        self.members.extend(self.open.drain(mark..));
        Ok(Span { start, len })
    }

    /// The tree under `root`, in exact-size allocations; the builder is left empty.
    pub(crate) fn finish(&mut self, root: Slot) -> Fields {
        let fields = Fields { root, members: self.members.as_slice().into(), text: self.text.as_str().into() };
        self.clear();
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_value_reads_back_as_it_was() {
        let value = json!({"a": [1, -2, 2.5, "x", null, true, {"b": {}}, []], "c": {"d": "é\u{0}"}, "": "empty key"});
        let fields = Fields::from_value(&value).unwrap();
        assert_eq!(fields.root().to_value(), value);
        assert_eq!(fields.root().get("c").and_then(|c| c.get("d")).map(|d| d.to_string()), Some("\"é\\u0000\"".into()));
        assert!(fields.root().get("a").unwrap().get("0").is_none(), "arrays have no keys");
        assert!(fields.root().get("missing").is_none());
    }

    #[test]
    fn an_object_keeps_the_last_member_of_a_repeated_key_small_or_large() {
        for size in [3, PAIRWISE_MAX + 5] {
            let fields = Builder::with(|builder| {
                let mark = builder.mark();
                for i in 0..size {
                    let value = Builder::number(Number::from(i));
                    builder.push_member(if i % 2 == 0 { "even" } else { "odd" }, value).unwrap();
                    let unique = builder.string("u").unwrap();
                    builder.push_member(&format!("k{i}"), unique).unwrap();
                }
                let root = builder.close_object(mark).unwrap();
                builder.finish(root)
            });
            let Field::Object(members) = fields.root() else { panic!("an object") };
            assert_eq!(members.len(), size + 2, "{size}");
            for (key, parity) in [("even", 0), ("odd", 1)] {
                let last = (0..size).rev().find(|i| i % 2 == parity).unwrap();
                assert_eq!(fields.root().get(key).unwrap().to_value(), json!(last), "{key} of {size}");
            }
            assert!((0..size).all(|i| fields.root().get(&format!("k{i}")).is_some()), "{size}");
            assert!(fields.root().get("k").is_none() && fields.root().get("zz").is_none(), "{size}");
        }
    }
}
