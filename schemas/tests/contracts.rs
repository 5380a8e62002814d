//! The JSON Schemas in `schemas/` against the Rust types that produce and read the messages:
//! the example messages validate and parse, every message the types emit validates, and the
//! schemas refuse what the types refuse.

use std::path::PathBuf;

fn file(name: &str) -> serde_json::Value {
    let path = PathBuf::from(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test")).join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A validator for `schema`, a file name with an optional `#/$defs/NAME`.
fn validator(schema: &str) -> jsonschema::Validator {
    let (name, definition) = schema.split_once('#').unwrap_or((schema, ""));
    let mut document = file(name);
    if !definition.is_empty() {
        document = serde_json::json!({
            "$schema": document["$schema"],
            "$defs": document["$defs"],
            "$ref": format!("#{definition}"),
        });
    }
    jsonschema::validator_for(&document).unwrap_or_else(|e| panic!("{schema} does not compile: {e}"))
}

fn assert_valid(schema: &str, value: &serde_json::Value) {
    let problems: Vec<String> =
        validator(schema).iter_errors(value).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(problems.is_empty(), "not valid against {schema}: {problems:#?}\n{value:#}");
}

/// A command, as the envelope's payload carries it.
const COMMAND: &str = "command.schema.json#/$defs/Command";

fn command(action: cordon_wire::Action) -> cordon_wire::Command {
    cordon_wire::Command {
        version: cordon_wire::WIRE_VERSION,
        command_id: "web-01-3".into(),
        host_id: "web-01".into(),
        generation: 3,
        issued_at_ms: 1_795_000_000_000,
        expires_at_ms: 1_795_000_600_000,
        action,
    }
}

#[test]
fn examples_validate_and_parse() {
    let example = file("examples/command.json");
    assert_valid(COMMAND, &example);
    serde_json::from_value::<cordon_wire::Command>(example).expect("the command example parses");
    let example = file("examples/status.json");
    assert_valid("status.schema.json", &example);
    serde_json::from_value::<cordon_wire::Status>(example).expect("the status example parses");
}

#[test]
fn what_the_types_emit_validates() {
    let isolate = cordon_wire::Action::Isolate {
        duration_seconds: Some(900),
        exclusions: vec!["out,tcp,198.51.100.7/32,443".into()],
        allowed_processes: vec!["backup-agent".into()],
        allow_dns: true,
        allow_dhcp: false,
        reason: "rules ransomware: severity 5".into(),
    };
    let manual = cordon_wire::Action::Isolate {
        duration_seconds: None,
        exclusions: vec![],
        allowed_processes: vec![],
        allow_dns: false,
        allow_dhcp: false,
        reason: "operator alice: IR-1".into(),
    };
    let release = cordon_wire::Action::Release { reason: "scheduler: deadline reached".into() };
    let key = cordon_wire::generate_signing_key();
    for action in [isolate, manual, release] {
        assert_valid(COMMAND, &serde_json::to_value(command(action.clone())).unwrap());
        let envelope: serde_json::Value =
            serde_json::from_slice(&cordon_wire::seal(&command(action), &key)).unwrap();
        assert_valid("command.schema.json", &envelope);
    }
    let kinds = [
        cordon_wire::StatusKind::Applied,
        cordon_wire::StatusKind::Refused,
        cordon_wire::StatusKind::Changed,
        cordon_wire::StatusKind::Heartbeat,
    ];
    for (n, kind) in kinds.into_iter().enumerate() {
        let isolated = n % 2 == 0;
        let status = cordon_wire::Status {
            version: cordon_wire::WIRE_VERSION,
            host_id: "web-01".into(),
            sent_at_ms: 1_795_000_000_042,
            kind,
            command_id: isolated.then(|| "web-01-3".into()),
            generation: 3,
            isolated,
            mode: isolated.then_some(cordon_wire::IsolationMode::Manual),
            expires_at_ms: None,
            exclusions: vec![],
            tags: if isolated { vec!["ISOLATED FROM NETWORK".into()] } else { vec![] },
            refusal: (kind == cordon_wire::StatusKind::Refused)
                .then_some(cordon_wire::Refusal::StaleGeneration),
            error: None,
            tampering: None,
            packets_dropped: 7,
            packets_allowed: 1,
        };
        assert_valid("status.schema.json", &serde_json::to_value(&status).unwrap());
        let report: serde_json::Value =
            serde_json::from_slice(&cordon_wire::seal_report(&status, &key)).unwrap();
        assert_valid("report.schema.json", &report);
    }
}

#[test]
fn the_schemas_refuse_what_the_types_refuse() {
    let good = serde_json::to_value(command(cordon_wire::Action::Release { reason: "r".into() })).unwrap();
    let schema = validator(COMMAND);
    for (what, change) in [
        ("an unknown field", serde_json::json!({"colour": "red"})),
        ("a negative generation", serde_json::json!({"generation": -1})),
        ("an unknown action", serde_json::json!({"action": {"type": "reboot", "reason": "r"}})),
    ] {
        let mut bad = good.clone();
        for (key, value) in change.as_object().unwrap() {
            bad[key] = value.clone();
        }
        assert!(!schema.is_valid(&bad), "the schema accepts {what}");
        assert!(serde_json::from_value::<cordon_wire::Command>(bad).is_err(), "the type accepts {what}");
    }
}

/// The refusal names in metrics labels and log fields are the names on the wire.
#[test]
fn refusal_names_are_their_wire_names() {
    use cordon_wire::Refusal::{
        BadSignature, Expired, Failed, InvalidContent, Malformed, StaleGeneration, Unsigned, UnsupportedVersion,
        WrongHost,
    };
    for refusal in [
        Malformed,
        Unsigned,
        BadSignature,
        WrongHost,
        Expired,
        StaleGeneration,
        UnsupportedVersion,
        InvalidContent,
        Failed,
    ] {
        assert_eq!(serde_json::to_value(refusal).unwrap(), serde_json::Value::from(refusal.name()));
    }
}

/// The report refusal names in the metric's `reason` label are their JSON names.
#[test]
fn report_refusal_names_are_their_wire_names() {
    use cordon_wire::ReportRefusal::{
        BadSignature, FromTheFuture, InvalidContent, Malformed, Oversized, Replayed, RevokedAgent,
        UnknownAgent, Unsigned, UnsupportedVersion, WrongHost, WrongKey,
    };
    for refusal in [
        Malformed,
        Unsigned,
        BadSignature,
        InvalidContent,
        UnsupportedVersion,
        Oversized,
        UnknownAgent,
        RevokedAgent,
        WrongKey,
        WrongHost,
        Replayed,
        FromTheFuture,
    ] {
        assert_eq!(serde_json::to_value(refusal).unwrap(), serde_json::Value::from(refusal.name()));
    }
}
