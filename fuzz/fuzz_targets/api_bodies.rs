//! Fuzzes the operator API's request bodies: isolate, release/deny and tags, as the server reads
//! them, then the life cycle steps they lead to. No body panics; a plan that passes the checks
//! carries only what the limits allow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orchestrator::api::{IsolateRequest, ReasonRequest, TagsRequest, MAX_ALLOWED_PROCESSES, MAX_EXCLUSIONS};
use orchestrator::service::lifecycle::{self, HostRecord};

fuzz_target!(|data: &[u8]| {
    let now = 1_700_000_000_000;
    if let Ok(request) = serde_json::from_slice::<IsolateRequest>(data) {
        if let Ok(plan) = request.plan() {
            assert!(plan.exclusions.len() <= MAX_EXCLUSIONS && plan.allowed_processes.len() <= MAX_ALLOWED_PROCESSES);
            let mut host = HostRecord::new("web-01", now);
            let reason = request.reason.clone().unwrap_or_default();
            let _ = lifecycle::operator_isolate(&mut host, &plan, &reason, "operator f", now);
        }
    }
    if let Ok(request) = serde_json::from_slice::<ReasonRequest>(data) {
        let _ = orchestrator::api::check_reason(request.reason.as_deref());
    }
    if let Ok(request) = serde_json::from_slice::<TagsRequest>(data) {
        let mut host = HostRecord::new("web-01", now);
        let _ = lifecycle::set_tags(&mut host, &request.add, &request.remove, "operator f", now);
    }
});
