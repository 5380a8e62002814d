//! Detection events (OCSF Detection Finding JSON): the required fields the engine relies on, and
//! field lookup by dotted path, where a path through an array matches if any element matches.

use serde_json::Value;
use thiserror::Error;

/// A validated event: its JSON and the four fields every decision needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    fields: Value,
    host: String,
    id: String,
    time_ms: i64,
    severity_id: u8,
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
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("the string {s:?}"),
        other => json_kind(other).to_owned(),
    }
}

fn nonempty_string(
    fields: &Value,
    path: [&str; 2],
    name: &'static str,
) -> Result<Option<String>, EventError> {
    match fields.get(path[0]).and_then(|parent| parent.get(path[1])) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if !text.is_empty() => Ok(Some(text.clone())),
        Some(Value::String(_)) => Err(EventError::WrongType {
            field: name,
            expected: "a non-empty string",
            found: "an empty string".to_owned(),
        }),
        Some(other) => {
            Err(EventError::WrongType { field: name, expected: "a string", found: describe(other) })
        }
    }
}

impl Event {
    /// Parses one JSON text into an event.
    pub fn parse(text: &str) -> Result<Self, EventError> {
        let fields: Value =
            serde_json::from_str(text).map_err(|error| EventError::NotJson(error.to_string()))?;
        Self::from_json(fields)
    }

    /// Validates the required fields: `device.uid` (or `device.hostname`), `finding_info.uid`,
    /// `time` (epoch milliseconds, an integer) and `severity_id` (an integer 0-6).
    pub fn from_json(fields: Value) -> Result<Self, EventError> {
        if !fields.is_object() {
            return Err(EventError::NotAnObject(json_kind(&fields)));
        }
        let host = match nonempty_string(&fields, ["device", "uid"], "device.uid")? {
            Some(uid) => uid,
            None => nonempty_string(&fields, ["device", "hostname"], "device.hostname")?
                .ok_or(EventError::Missing("device.uid"))?,
        };
        let id = nonempty_string(&fields, ["finding_info", "uid"], "finding_info.uid")?
            .ok_or(EventError::Missing("finding_info.uid"))?;
        let time_ms = match fields.get("time") {
            None | Some(Value::Null) => return Err(EventError::Missing("time")),
            Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().unwrap_or_default(),
            Some(other) => {
                return Err(EventError::WrongType {
                    field: "time",
                    expected: "an integer (epoch milliseconds)",
                    found: describe(other),
                })
            }
        };
        let severity_id = match fields.get("severity_id") {
            None | Some(Value::Null) => return Err(EventError::Missing("severity_id")),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(value @ 0..=6) => u8::try_from(value).unwrap_or_default(),
                _ => return Err(EventError::SeverityOutOfRange(n.to_string())),
            },
            Some(other) => {
                return Err(EventError::WrongType {
                    field: "severity_id",
                    expected: "an integer 0-6",
                    found: describe(other),
                })
            }
        };
        Ok(Self { fields, host, id, time_ms, severity_id })
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

    #[must_use]
    pub fn fields(&self) -> &Value {
        &self.fields
    }

    /// The names of the device's groups (`device.groups[].name`): the host tags `cordon rules test`
    /// uses when no inventory is at hand.
    #[must_use]
    pub fn device_group_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        let path = FieldPath::new("device.groups.name");
        path.any_value(&self.fields, &mut |value| {
            if let Value::String(name) = value {
                names.push(name.clone());
            }
            false
        });
        names
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
    pub fn any_value(&self, root: &Value, visit: &mut impl FnMut(&Value) -> bool) -> bool {
        walk(root, &self.segments, visit)
    }
}

fn walk(value: &Value, segments: &[Box<str>], visit: &mut impl FnMut(&Value) -> bool) -> bool {
    match segments.split_first() {
        None => match value {
            Value::Array(items) => items.iter().any(&mut *visit),
            other => visit(other),
        },
        Some((head, rest)) => match value {
            Value::Object(map) => map.get(&**head).is_some_and(|child| walk(child, rest, visit)),
            Value::Array(items) => items.iter().any(|item| walk(item, segments, visit)),
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let mut seen = Vec::new();
        FieldPath::new("finding_info.attacks.technique.uid").any_value(&fields, &mut |v| {
            seen.push(v.clone());
            false
        });
        assert_eq!(seen, vec![json!("T1003"), json!("T1486")]);
        assert!(FieldPath::new("tags").any_value(&fields, &mut |v| v == "b"));
        assert!(!FieldPath::new("finding_info.missing").any_value(&fields, &mut |_| true));
    }
}
