//! `schemas/openapi.json` against the code: every documented route exists on the real router
//! (served over HTTP) and needs the token, every route in the code is documented, and the
//! answers the API builds validate against the documented schemas.

use std::path::PathBuf;
use std::time::Duration;

use orchestrator::api::{ErrorBody, HostView};
use orchestrator::service::lifecycle::{self, HostRecord, IsolationPlan, Proposal};
use orchestrator::service::store::Store;

const TOKEN: &str = "a-test-token-of-enough-length";

/// This crate's directory, as cargo tells the running test (not compiled in: checkouts share a
/// target directory, see ARCHITECTURE.md).
fn crate_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test"))
}

fn document() -> serde_json::Value {
    let path = crate_dir().join("../schemas/openapi.json");
    let text = std::fs::read_to_string(&path).expect("read schemas/openapi.json");
    serde_json::from_str(&text).expect("schemas/openapi.json is JSON")
}

/// A validator for `#/components/schemas/{name}` of the `OpenAPI` document.
fn validator(name: &str) -> jsonschema::Validator {
    let document = document();
    let schema = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{name}"),
        "components": document["components"],
    });
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("schema {name} does not compile: {e}"))
}

fn assert_valid(name: &str, value: &serde_json::Value) {
    let validator = validator(name);
    let problems: Vec<String> =
        validator.iter_errors(value).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(problems.is_empty(), "not a valid {name}: {problems:#?}\n{value:#}");
}

/// The API served on a free loopback port by the real router; its base URL.
struct Served {
    base: String,
    dir: PathBuf,
    _runtime: tokio::runtime::Runtime,
    _requests: tokio::sync::mpsc::Receiver<orchestrator::service::api::ApiRequest>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn serve(name: &str) -> Served {
    let dir = std::env::temp_dir().join(format!("cordon-openapi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir).expect("open store");
    let (requests_tx, requests) = tokio::sync::mpsc::channel(4);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let address = listener.local_addr().expect("address");
    let metrics = std::sync::Arc::new(orchestrator::service::observe::Metrics::new());
    let app = orchestrator::service::api::router(
        store,
        orchestrator::service::access::Tokens::shared(TOKEN),
        requests_tx,
        metrics,
        orchestrator::service::lease::Fence::default(),
    )
        .into_make_service_with_connect_info::<orchestrator::service::tls::Peer>();
    runtime.spawn(async move { axum::serve(listener, app).await });
    Served { base: format!("http://{address}"), dir, _runtime: runtime, _requests: requests }
}

fn call(method: &str, url: &str, token: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let bearer = token.map(|token| format!("Bearer {token}"));
    let response = match method {
        "get" => {
            let mut request = agent.get(url);
            if let Some(bearer) = &bearer {
                request = request.header("authorization", bearer);
            }
            request.call()
        }
        "post" => {
            let mut request = agent.post(url);
            if let Some(bearer) = &bearer {
                request = request.header("authorization", bearer);
            }
            request.send_json(serde_json::json!({}))
        }
        other => panic!("the test does not speak {other}"),
    };
    let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().expect("body"))
}

#[test]
fn every_documented_route_exists_and_needs_the_token() {
    let served = serve("routes");
    let document = document();
    let paths = document["paths"].as_object().expect("paths");
    assert!(paths.len() >= 8, "the document lists {} paths", paths.len());
    for (path, item) in paths {
        let url = format!("{}{}", served.base, path.replace("{host}", "web-01"));
        for method in ["get", "post"] {
            if item.get(method).is_none() {
                // Not documented: the router must not offer it either.
                let (status, _) = call(method, &url, Some(TOKEN));
                assert_eq!(status, 405, "{method} {path} is not documented but answers {status}");
                continue;
            }
            let (status, body) = call(method, &url, None);
            if path == "/healthz" {
                assert_eq!((status, body.as_str()), (200, "ok\n"), "{method} {path}");
                continue;
            }
            if path == "/readyz" {
                // No consumer, hence no broker connection: not ready, and it says why.
                assert_eq!(status, 503, "{method} {path}: {body}");
                let body: serde_json::Value = serde_json::from_str(&body).expect("readiness is JSON");
                assert_valid("Readiness", &body);
                assert_eq!(body["checks"]["kafka"]["ok"], false, "{body}");
                assert_eq!(body["checks"]["state"]["ok"], true, "{body}");
                continue;
            }
            if path == "/metrics" {
                assert_eq!(status, 200, "{method} {path}: {body}");
                assert!(body.contains("# TYPE cordon_events_consumed_total counter"), "{body}");
                continue;
            }
            assert_eq!(status, 401, "{method} {path} without a token: {body}");
            let body: serde_json::Value = serde_json::from_str(&body).expect("error body is JSON");
            assert_valid("Error", &body);
            assert!(body["error"].as_str().unwrap().contains("bearer token"), "{body}");
            let (status, body) = call(method, &url, Some("not-the-token-at-all"));
            assert_eq!(status, 401, "{method} {path} with a wrong token: {body}");
            assert!(body.contains("not one configured"), "{body}");
        }
    }
    let (status, _) = call("get", &format!("{}/v1/nothing-here", served.base), Some(TOKEN));
    assert_eq!(status, 404, "an undocumented path must not exist");
}

#[test]
fn every_route_in_the_code_is_documented() {
    let source =
        std::fs::read_to_string(crate_dir().join("src/service/api.rs")).expect("read src/service/api.rs");
    let document = document();
    let mut routes = 0;
    for piece in source.split(".route(\"").skip(1) {
        let route = piece.split('"').next().expect("a quoted route");
        let open = ["/healthz", "/readyz", "/metrics"];
        let documented = if open.contains(&route) { route.to_owned() } else { format!("/v1{route}") };
        assert!(
            document["paths"].get(&documented).is_some(),
            "route {documented} is not in schemas/openapi.json"
        );
        routes += 1;
    }
    assert_eq!(
        routes,
        document["paths"].as_object().unwrap().len(),
        "routes in the code vs documented paths"
    );
}

#[test]
fn answers_match_the_documented_schemas() {
    let served = serve("answers");
    let (status, body) = call("get", &format!("{}/v1/hosts", served.base), Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "[]");
    let (status, body) = call("get", &format!("{}/v1/hosts/web-01", served.base), Some(TOKEN));
    assert_eq!(status, 404, "{body}");
    assert_valid("Error", &serde_json::from_str(&body).expect("JSON"));
    let (status, body) = call("get", &format!("{}/v1/hosts?colour=red", served.base), Some(TOKEN));
    assert_eq!(status, 400, "an unknown query parameter is refused: {body}");
    assert_valid("Error", &serde_json::from_str(&body).expect("JSON"));

    // A host through its whole life: every shape of the view validates, audit trail included.
    let t0 = 1_700_000_000_000;
    let seed = orchestrator::service::profiles::PolicyVersion {
        version: 1,
        at_ms: t0,
        author: "cordon".into(),
        reason: "seed".into(),
        reverted_from: None,
        policy: orchestrator::service::profiles::IsolationPolicy::seed(),
    };
    let mut record = HostRecord::new("plc-07", t0);
    let mut audit = Vec::new();
    let check = |record: &HostRecord, audit: &[lifecycle::AuditEntry]| {
        assert_valid("Host", &serde_json::to_value(HostView::new(record, None)).unwrap());
        assert_valid("Host", &serde_json::to_value(HostView::new(record, Some(audit))).unwrap());
    };
    check(&record, &audit);
    record.pending = Some(Proposal {
        plan: IsolationPlan { duration_seconds: Some(3_600), ..IsolationPlan::default() },
        rules: vec!["suspicious".into()],
        event_id: "ev-9".into(),
        requested_at_ms: t0,
        requests: 2,
        why: "test".into(),
    });
    check(&record, &audit);
    let effects = lifecycle::approve(&mut record, seed.profile_in_force(&[]), "checked", "operator alice (127.0.0.1:1)", t0 + 5).expect("approve");
    audit.extend(effects.audit);
    check(&record, &audit);
    let status = cordon_wire::Status {
        version: cordon_wire::WIRE_VERSION,
        host_id: "plc-07".into(),
        sent_at_ms: t0,
        kind: cordon_wire::StatusKind::Applied,
        command_id: Some("plc-07-1".into()),
        generation: 1,
        isolated: true,
        mode: Some(cordon_wire::IsolationMode::Automatic),
        expires_at_ms: Some(t0 + 3_600_005),
        exclusions: vec!["out,tcp,198.51.100.7/32,443".into()],
        tags: vec!["ISOLATED FROM NETWORK".into(), "plc".into()],
        refusal: None,
        error: None,
        tampering: None,
        packets_dropped: 12,
        packets_allowed: 3,
    };
    audit.extend(lifecycle::on_status(&mut record, &status, t0 + 20, lifecycle::OnTamper::default()).audit);
    check(&record, &audit);
    audit.extend(
        lifecycle::operator_release(&mut record, "done", "operator bob (127.0.0.1:2)", t0 + 30)
            .unwrap()
            .audit,
    );
    check(&record, &audit);
    assert_eq!(audit.len(), 3);

    let problems = ErrorBody { error: "bad".into(), problems: vec!["one".into(), "two".into()] };
    assert_valid("Error", &serde_json::to_value(problems).unwrap());
}

#[test]
fn requests_the_client_sends_match_the_documented_schemas() {
    let isolate = orchestrator::api::IsolateRequest {
        mode: "automatic".into(),
        duration_seconds: Some(900),
        exclusions: vec!["out,tcp,198.51.100.7/32,443".into()],
        allowed_processes: vec!["sshd".into()],
        allow_dns: true,
        allow_dhcp: false,
        reason: Some("IR-1234".into()),
    };
    assert_valid("IsolateRequest", &serde_json::to_value(&isolate).unwrap());
    let manual =
        orchestrator::api::IsolateRequest { mode: "manual".into(), duration_seconds: None, ..isolate };
    assert_valid("IsolateRequest", &serde_json::to_value(&manual).unwrap());
    assert_valid(
        "ReasonRequest",
        &serde_json::to_value(orchestrator::api::ReasonRequest { reason: Some("done".into()) }).unwrap(),
    );
    assert_valid(
        "TagsRequest",
        &serde_json::to_value(orchestrator::api::TagsRequest { add: vec!["plc".into()], remove: vec![] })
            .unwrap(),
    );
    // And the schema refuses what the server refuses.
    let validator = validator("IsolateRequest");
    assert!(!validator.is_valid(&serde_json::json!({"mode": "forever"})));
    assert!(!validator.is_valid(&serde_json::json!({"mode": "manual", "colour": "red"})));
}

#[test]
fn the_isolation_policy_matches_the_documented_schemas() {
    use orchestrator::api::{PolicyDiff, PolicyHistoryEntry, PolicyView, RevertPolicyRequest, SetPolicyRequest};
    use orchestrator::service::profiles::{IsolationPolicy, PolicyVersion, Profile};
    let served = serve("policy");
    let (status, body) = call("get", &format!("{}/v1/policy", served.base), Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let seed: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_valid("Policy", &seed);
    assert_eq!(seed["version"], 1, "a new store holds the seed: {seed}");
    assert_eq!(seed["profiles"][0]["automatic_duration_seconds"], 18_000, "{seed}");
    for (path, schema) in [("/v1/policy/history", None), ("/v1/policy/versions/1", Some("Policy")), ("/v1/policy/diff?from=1", Some("PolicyDiff"))] {
        let (status, body) = call("get", &format!("{}{path}", served.base), Some(TOKEN));
        assert_eq!(status, 200, "{path}: {body}");
        let value: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        match schema {
            Some(schema) => assert_valid(schema, &value),
            None => value.as_array().expect("an array").iter().for_each(|entry| assert_valid("PolicyHistoryEntry", entry)),
        }
    }
    for (path, wanted) in [("/v1/policy/versions/7", 404), ("/v1/policy/versions/x", 400), ("/v1/policy/diff?from=1&to=9", 404)] {
        let (status, body) = call("get", &format!("{}{path}", served.base), Some(TOKEN));
        assert_eq!(status, wanted, "{path}: {body}");
        assert_valid("Error", &serde_json::from_str(&body).expect("JSON"));
    }

    let mut plc = IsolationPolicy::seed().profiles.remove(0);
    plc.name = "plc".into();
    plc.tags = vec!["plc".into()];
    plc.priority = 10;
    plc.exclusions = vec!["out,tcp,192.0.2.10/32,502".into()];
    plc.allowed_processes = vec!["historian".into()];
    plc.allow_dns = true;
    let policy = IsolationPolicy { profiles: vec![IsolationPolicy::seed().profiles.remove(0), plc.clone()] };
    let set = SetPolicyRequest { profiles: policy.profiles.clone(), reason: "plant".into(), expected_version: Some(1) };
    assert_valid("SetPolicyRequest", &serde_json::to_value(&set).unwrap());
    let revert = RevertPolicyRequest { version: 1, reason: "undo".into(), expected_version: None };
    assert_valid("RevertPolicyRequest", &serde_json::to_value(&revert).unwrap());
    let version = PolicyVersion { version: 2, at_ms: 1_700_000_000_000, author: "operator a".into(), reason: "plant".into(), reverted_from: Some(1), policy: policy.clone() };
    assert_valid("Policy", &serde_json::to_value(PolicyView::new(&version)).unwrap());
    let changes = IsolationPolicy::seed().diff(&policy);
    assert!(!changes.is_empty());
    assert_valid("PolicyDiff", &serde_json::to_value(PolicyDiff { from: 1, to: 2, changes: changes.clone() }).unwrap());
    let entry = PolicyHistoryEntry { version: 2, at: "2026-12-07T00:00:00Z".into(), author: "a".into(), reason: "b".into(), reverted_from: None, changes };
    assert_valid("PolicyHistoryEntry", &serde_json::to_value(entry).unwrap());
    // The schema refuses what the server refuses.
    let validator = validator("SetPolicyRequest");
    assert!(!validator.is_valid(&serde_json::json!({"profiles": [], "reason": ""})));
    assert!(!validator.is_valid(&serde_json::json!({"profiles": [{"name": "x y", "automatic_duration_seconds": 1}], "reason": "r"})));
    let _: Profile = plc;
}

#[test]
fn agent_keys_match_the_documented_schemas() {
    use orchestrator::service::agents::{AgentRecord, AgentState, Claim};
    let key = cordon_wire::key_to_base64(cordon_wire::generate_signing_key().verifying_key().as_bytes());
    let record = AgentRecord {
        host: "web-01".into(),
        state: AgentState::Enrolled,
        key: key.clone(),
        changed_at_ms: 1_700_000_000_000,
        changed_by: "operator alice (127.0.0.1:1)".into(),
        reason: "enrolled".into(),
    };
    let claim = Claim {
        host: "web-01".into(),
        key: "another".into(),
        first_seen_ms: 1_700_000_000_000,
        last_seen_ms: 1_700_000_060_000,
        keys_seen: 2,
        refusal: cordon_wire::ReportRefusal::WrongKey,
    };
    let revoked = AgentRecord { state: AgentState::Revoked, ..record.clone() };
    for (record, claim) in
        [(Some(&record), None), (Some(&record), Some(&claim)), (Some(&revoked), None), (None, Some(&claim))]
    {
        let view = orchestrator::api::AgentKeyView::new(record, claim).expect("a view");
        assert_valid("AgentKey", &serde_json::to_value(view).unwrap());
    }
    let request = orchestrator::api::EnrollRequest { key, reason: Some("checked on the host".into()) };
    assert_valid("EnrollRequest", &serde_json::to_value(request).unwrap());
}
