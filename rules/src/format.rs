//! The alert formats cordon reads: OCSF Detection Findings (the default), Elastic Security
//! alerts (ECS), Falco's JSON output and Wazuh's `alerts.json` lines. Each says where its alerts
//! keep the four facts every decision needs (the host, the finding's id, when, how severe); the
//! whole alert stays the event's fields, so rules match any of its fields by the format's own
//! names. Pure: no I/O, no clock.

use serde_json::{Map, Value};

use crate::event::EventError;
use crate::fields::Field;

/// An alert format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// OCSF Detection Finding: `device.uid` (or `device.hostname`), `finding_info.uid`, `time`
    /// (epoch ms), `severity_id` (0-6).
    #[default]
    Ocsf,
    /// Elastic Security alerts (ECS): `host.id` (or `host.name`), `kibana.alert.uuid`,
    /// `kibana.alert.original_time` (or `@timestamp`), `kibana.alert.severity`.
    Ecs,
    /// Falco: `hostname`, `uuid` (or a hash of time, rule and host), `time`, `priority`.
    Falco,
    /// Wazuh `alerts.json`: `agent.name` (or `agent.id`), `id`, `timestamp`, `rule.level`.
    Wazuh,
}

/// The four facts a decision needs, as a format holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Facts {
    pub host: String,
    pub id: String,
    pub time_ms: i64,
    pub severity_id: u8,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Ocsf, Format::Ecs, Format::Falco, Format::Wazuh];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Format::Ocsf => "ocsf",
            Format::Ecs => "ecs",
            Format::Falco => "falco",
            Format::Wazuh => "wazuh",
        }
    }

    /// The format named `name` (`ocsf`, `ecs`, `falco`, `wazuh`).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|format| format.name() == name)
    }

    /// The paths where this format keeps its facts (a rule set's projection keeps them).
    pub(crate) fn fact_paths(self) -> &'static [&'static str] {
        match self {
            Format::Ocsf => &["device.uid", "device.hostname", "finding_info.uid", "time", "severity_id"],
            Format::Ecs => &[
                "host.id",
                "host.name",
                "kibana.alert.uuid",
                "kibana.alert.original_time",
                "@timestamp",
                "kibana.alert.severity",
            ],
            Format::Falco => &["hostname", "uuid", "time", "rule", "priority"],
            Format::Wazuh => &["agent.name", "agent.id", "id", "timestamp", "rule.level"],
        }
    }

    /// Whether alerts of this format may spell nested fields as dotted keys (`"kibana.alert.uuid":
    /// ...` in Elastic's alert documents, `"container.name": ...` in Falco's `output_fields`):
    /// such keys are read as the nested fields they name, so the event is parsed whole, not
    /// through a projection.
    #[must_use]
    pub fn has_dotted_keys(self) -> bool {
        matches!(self, Format::Ecs | Format::Falco)
    }

    /// The facts of `fields`, or what is missing or wrong, named as this format names it.
    pub(crate) fn facts(self, fields: Field<'_>) -> Result<Facts, EventError> {
        match self {
            Format::Ocsf => ocsf(fields),
            Format::Ecs => ecs(fields),
            Format::Falco => falco(fields),
            Format::Wazuh => wazuh(fields),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The value at a dotted path of nested objects.
fn at<'e>(fields: Field<'e>, path: &str) -> Option<Field<'e>> {
    path.split('.').try_fold(fields, Field::get).filter(|value| !value.is_null())
}

pub(crate) fn describe(value: Field<'_>) -> String {
    match value {
        Field::Number(n) => n.to_string(),
        Field::String(s) => format!("the string {s:?}"),
        Field::Null => "null".to_owned(),
        Field::Bool(_) => "a boolean".to_owned(),
        Field::Array(_) => "an array".to_owned(),
        Field::Object(_) => "an object".to_owned(),
    }
}

/// A non-empty string at `path`, if there is a value there.
fn text(fields: Field<'_>, path: &'static str) -> Result<Option<String>, EventError> {
    match at(fields, path) {
        None => Ok(None),
        Some(Field::String(text)) if !text.is_empty() => Ok(Some(text.to_owned())),
        Some(Field::String(_)) => {
            Err(EventError::WrongType { field: path, expected: "a non-empty string", found: "an empty string".into() })
        }
        Some(other) => Err(EventError::WrongType { field: path, expected: "a string", found: describe(other) }),
    }
}

/// The first of `paths` that holds a string; the error names the first.
fn first_text(fields: Field<'_>, paths: &[&'static str]) -> Result<String, EventError> {
    for path in paths {
        if let Some(text) = text(fields, path)? {
            return Ok(text);
        }
    }
    Err(EventError::Missing(paths[0]))
}

/// An RFC 3339 time (Falco's nanoseconds and Wazuh's `+0000` offsets included) in epoch ms.
fn time_text(fields: Field<'_>, paths: &[&'static str]) -> Result<i64, EventError> {
    let field = paths.iter().copied().find(|path| at(fields, path).is_some()).ok_or(EventError::Missing(paths[0]))?;
    let value = at(fields, field).unwrap_or(Field::Null);
    let wrong = || EventError::WrongType { field, expected: "an RFC 3339 time", found: describe(value) };
    let Field::String(text) = value else { return Err(wrong()) };
    parse_time(text).ok_or_else(wrong)
}

fn parse_time(text: &str) -> Option<i64> {
    i64::try_from(parse_date_time(text)?.unix_timestamp_nanos() / 1_000_000).ok()
}

/// An RFC 3339 time with its offset as written (also Wazuh's `+0000` without a colon).
pub(crate) fn parse_date_time(text: &str) -> Option<time::OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::parse(text, &Rfc3339).ok().or_else(|| {
        // Wazuh writes `2024-01-31T12:00:00.123+0000`: an offset without its colon.
        let (head, offset) = text.split_at_checked(text.len().checked_sub(5)?)?;
        let colon = offset.starts_with(['+', '-']).then(|| format!("{head}{}:{}", &offset[..3], &offset[3..]))?;
        time::OffsetDateTime::parse(&colon, &Rfc3339).ok()
    })
}

fn ocsf(fields: Field<'_>) -> Result<Facts, EventError> {
    let host = first_text(fields, &["device.uid", "device.hostname"])?;
    let id = first_text(fields, &["finding_info.uid"])?;
    let time_ms = match fields.get("time") {
        None | Some(Field::Null) => return Err(EventError::Missing("time")),
        Some(Field::Number(n)) if n.as_i64().is_some() => n.as_i64().unwrap_or_default(),
        Some(other) => {
            return Err(EventError::WrongType {
                field: "time",
                expected: "an integer (epoch milliseconds)",
                found: describe(other),
            })
        }
    };
    let severity_id = match fields.get("severity_id") {
        None | Some(Field::Null) => return Err(EventError::Missing("severity_id")),
        Some(Field::Number(n)) => match n.as_i64() {
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
    Ok(Facts { host, id, time_ms, severity_id })
}

/// ECS: `kibana.alert.severity` low, medium, high, critical → OCSF 2, 3, 4, 5.
fn ecs(fields: Field<'_>) -> Result<Facts, EventError> {
    let host = first_text(fields, &["host.id", "host.name"])?;
    let id = first_text(fields, &["kibana.alert.uuid"])?;
    let time_ms = time_text(fields, &["kibana.alert.original_time", "@timestamp"])?;
    let severity = first_text(fields, &["kibana.alert.severity"])?;
    let severity_id = match severity.to_ascii_lowercase().as_str() {
        "low" => 2,
        "medium" => 3,
        "high" => 4,
        "critical" => 5,
        _ => {
            return Err(EventError::WrongType {
                field: "kibana.alert.severity",
                expected: "low, medium, high or critical",
                found: format!("{severity:?}"),
            })
        }
    };
    Ok(Facts { host, id, time_ms, severity_id })
}

/// Falco: `priority` Debug, Informational 1; Notice 2; Warning 3; Error 4; Critical, Alert 5;
/// Emergency 6. Without a `uuid` (Falco before 0.33), the id is a hash of time, rule and host.
fn falco(fields: Field<'_>) -> Result<Facts, EventError> {
    let host = first_text(fields, &["hostname"])?;
    let time_ms = time_text(fields, &["time"])?;
    let id = if let Some(uuid) = text(fields, "uuid")? {
        uuid
    } else {
        let rule = first_text(fields, &["rule"])?;
        let time = first_text(fields, &["time"])?;
        format!("falco-{:016x}", fnv1a([time.as_str(), rule.as_str(), host.as_str()]))
    };
    let priority = first_text(fields, &["priority"])?;
    let severity_id = match priority.to_ascii_lowercase().as_str() {
        "debug" | "informational" | "info" => 1,
        "notice" => 2,
        "warning" => 3,
        "error" => 4,
        "critical" | "alert" => 5,
        "emergency" => 6,
        _ => {
            return Err(EventError::WrongType {
                field: "priority",
                expected: "a Falco priority (Emergency ... Debug)",
                found: format!("{priority:?}"),
            })
        }
    };
    Ok(Facts { host, id, time_ms, severity_id })
}

/// Wazuh: `rule.level` 0-15 → 0-3 informational (1), 4-7 low (2), 8-11 medium (3), 12-13 high
/// (4), 14 critical (5), 15 fatal (6). The host is `agent.name` (the machine's name, which agents
/// are configured with), else `agent.id` (Wazuh's own number for the agent).
fn wazuh(fields: Field<'_>) -> Result<Facts, EventError> {
    let host = first_text(fields, &["agent.name", "agent.id"])?;
    let id = first_text(fields, &["id"])?;
    let time_ms = time_text(fields, &["timestamp"])?;
    let level = match at(fields, "rule.level") {
        None => return Err(EventError::Missing("rule.level")),
        Some(Field::Number(n)) => n.as_i64(),
        // Some pipelines quote numbers.
        Some(Field::String(text)) => text.parse().ok(),
        Some(other) => {
            return Err(EventError::WrongType { field: "rule.level", expected: "an integer 0-15", found: describe(other) })
        }
    };
    let severity_id = match level {
        Some(0..=3) => 1,
        Some(4..=7) => 2,
        Some(8..=11) => 3,
        Some(12..=13) => 4,
        Some(14) => 5,
        Some(15) => 6,
        _ => {
            let found = at(fields, "rule.level").map(describe).unwrap_or_default();
            return Err(EventError::WrongType { field: "rule.level", expected: "an integer 0-15", found });
        }
    };
    Ok(Facts { host, id, time_ms, severity_id })
}

/// FNV-1a, 64 bits, over the parts with a separator: stable across builds and machines.
fn fnv1a<'a>(parts: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0x1f]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// `fields` with every dotted key (`"kibana.alert.uuid": v`) moved to the nested field it names
/// (`kibana` → `alert` → `uuid`), recursively; where both spell the same field, the nested one
/// stays and the dotted one is dropped (Elastic's documents never hold both).
#[must_use]
pub fn expand_dotted_keys(fields: Value) -> Value {
    match fields {
        Value::Object(map) => {
            let mut nested = Map::new();
            let mut dotted = Vec::new();
            for (key, value) in map {
                let value = expand_dotted_keys(value);
                if key.contains('.') && !key.starts_with('.') && !key.ends_with('.') && !key.contains("..") {
                    dotted.push((key, value));
                } else {
                    nested.insert(key, value);
                }
            }
            for (key, value) in dotted {
                insert_at(&mut nested, &key.split('.').collect::<Vec<_>>(), value);
            }
            Value::Object(nested)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(expand_dotted_keys).collect()),
        other => other,
    }
}

fn insert_at(map: &mut Map<String, Value>, path: &[&str], value: Value) {
    let Some((first, rest)) = path.split_first() else { return };
    if rest.is_empty() {
        map.entry((*first).to_owned()).or_insert(value);
        return;
    }
    let child = map.entry((*first).to_owned()).or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(child) = child {
        insert_at(child, rest, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts_of(format: Format, fields: &Value) -> Result<Facts, EventError> {
        format.facts(crate::fields::Fields::from_value(fields).unwrap().root())
    }

    #[test]
    fn each_format_has_its_facts_where_its_producer_puts_them() {
        let ecs = expand_dotted_keys(json!({
            "@timestamp": "2026-12-07T08:00:01.000Z",
            "host": {"name": "web-01"},
            "kibana.alert.uuid": "5d2e...a1",
            "kibana.alert.original_time": "2026-12-07T08:00:00.000Z",
            "kibana.alert.severity": "critical",
            "kibana.alert.rule.name": "Ransomware"
        }));
        let facts = facts_of(Format::Ecs, &ecs).unwrap();
        assert_eq!((facts.host.as_str(), facts.id.as_str(), facts.severity_id), ("web-01", "5d2e...a1", 5));
        assert_eq!(facts.time_ms, 1_796_630_400_000);
        let ecs_fields = crate::fields::Fields::from_value(&ecs).unwrap();
        let rule_name = at(ecs_fields.root(), "kibana.alert.rule.name").map(Field::to_value);
        assert_eq!(rule_name, Some(json!("Ransomware")), "dotted keys read as nested");

        let falco = json!({"hostname": "node-3", "time": "2026-12-07T08:00:00.123456789Z", "rule": "Terminal shell in container", "priority": "Warning", "output": "..."});
        let facts = facts_of(Format::Falco, &falco).unwrap();
        assert_eq!((facts.host.as_str(), facts.severity_id, facts.time_ms), ("node-3", 3, 1_796_630_400_123));
        assert!(facts.id.starts_with("falco-"), "no uuid: a hash, {}", facts.id);
        assert_eq!(facts_of(Format::Falco, &falco).unwrap().id, facts.id, "the same alert, the same id");

        let wazuh = json!({"timestamp": "2026-12-07T08:00:00.000+0000", "rule": {"level": 12, "description": "x"}, "agent": {"id": "001", "name": "plc-07"}, "id": "1796630400.123"});
        let facts = facts_of(Format::Wazuh, &wazuh).unwrap();
        assert_eq!((facts.host.as_str(), facts.id.as_str(), facts.severity_id, facts.time_ms), ("plc-07", "1796630400.123", 4, 1_796_630_400_000));
    }

    #[test]
    fn what_is_missing_or_wrong_is_named_as_the_format_names_it() {
        assert_eq!(facts_of(Format::Ecs, &json!({"host": {"name": "a"}})).unwrap_err(), EventError::Missing("kibana.alert.uuid"));
        let bad = json!({"host": {"id": "a"}, "kibana": {"alert": {"uuid": "u", "original_time": "yesterday", "severity": "high"}}});
        assert_eq!(
            facts_of(Format::Ecs, &bad).unwrap_err().to_string(),
            "field `kibana.alert.original_time` must be an RFC 3339 time, found the string \"yesterday\""
        );
        let loud = json!({"hostname": "n", "uuid": "u", "time": "2026-12-07T08:00:00Z", "priority": "LOUD"});
        assert!(facts_of(Format::Falco, &loud).unwrap_err().to_string().contains("a Falco priority"));
        let level = json!({"agent": {"name": "a"}, "id": "1", "timestamp": "2026-12-07T08:00:00.000+0000", "rule": {"level": 16}});
        assert_eq!(facts_of(Format::Wazuh, &level).unwrap_err().to_string(), "field `rule.level` must be an integer 0-15, found 16");
        assert_eq!(facts_of(Format::Wazuh, &json!({})).unwrap_err(), EventError::Missing("agent.name"));
        // A hostile time whose last five bytes split a character: refused, not a panic.
        for time in ["2026-12-07T08:00:00.000+00\u{e9}", "\u{1F600}\u{1F600}", "\u{e9}\u{e9}\u{e9}"] {
            let hostile = json!({"agent": {"name": "a"}, "id": "1", "timestamp": time, "rule": {"level": 3}});
            assert!(facts_of(Format::Wazuh, &hostile).unwrap_err().to_string().contains("RFC 3339"), "{time}");
        }
    }

    #[test]
    fn dotted_keys_expand_without_overwriting_nested_ones() {
        let expanded = expand_dotted_keys(json!({"a.b": 1, "a": {"c": 2}, "x.y.z": [{"p.q": 3}], "d.": 4, "a.c": 9}));
        assert_eq!(expanded, json!({"a": {"b": 1, "c": 2}, "x": {"y": {"z": [{"p": {"q": 3}}]}}, "d.": 4}));
    }

    #[test]
    fn names_round_trip() {
        for format in Format::ALL {
            assert_eq!(Format::from_name(format.name()), Some(format));
        }
        assert_eq!(Format::from_name("cef"), None);
    }
}
