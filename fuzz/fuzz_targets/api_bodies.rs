//! Fuzzes the operator API's request bodies: isolate, release/deny, tags and the isolation
//! policy, as the server reads them, then the life cycle steps they lead to. No body panics; a
//! plan or a policy that passes the checks carries only what the limits and the kernel allow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orchestrator::api::{
    IsolateRequest, ReasonRequest, SetPolicyRequest, TagsRequest, MAX_ALLOWED_PROCESSES, MAX_EXCLUSIONS,
};
use orchestrator::service::lifecycle::{self, HostRecord};
use orchestrator::service::profiles::{IsolationPolicy, PolicyVersion};

fn version(policy: IsolationPolicy) -> PolicyVersion {
    PolicyVersion { version: 1, at_ms: 0, author: "fuzz".into(), reason: "fuzz".into(), reverted_from: None, policy }
}

fuzz_target!(|data: &[u8]| {
    let now = 1_700_000_000_000;
    if let Ok(request) = serde_json::from_slice::<IsolateRequest>(data) {
        if let Ok(isolation) = request.plan() {
            let plan = &isolation.plan;
            assert!(plan.exclusions.len() <= MAX_EXCLUSIONS && plan.allowed_processes.len() <= MAX_ALLOWED_PROCESSES);
            let seed = version(IsolationPolicy::seed());
            let profile = seed.profile_in_force(&[]);
            let _ = profile.problems_with(plan);
            let mut host = HostRecord::new("web-01", now);
            let reason = request.reason.clone().unwrap_or_default();
            let _ = lifecycle::operator_isolate(&mut host, plan, profile, &reason, "operator f", now);
        }
    }
    if let Ok(request) = serde_json::from_slice::<ReasonRequest>(data) {
        let _ = orchestrator::api::check_reason(request.reason.as_deref());
    }
    if let Ok(request) = serde_json::from_slice::<SetPolicyRequest>(data) {
        let policy = IsolationPolicy { profiles: request.profiles };
        if policy.problems([]).is_empty() {
            let in_force = version(policy);
            for profile in &in_force.policy.profiles {
                let chosen = in_force.profile_in_force(&profile.tags);
                assert!(chosen.problems_with(&lifecycle::IsolationPlan::default()).is_empty(), "a valid profile does not fit");
                // An isolation in force takes the profile live, whatever it holds.
                let mut host = HostRecord::new("web-01", now);
                let timed = lifecycle::IsolationPlan { duration_seconds: Some(600), ..Default::default() };
                let seed = version(IsolationPolicy::seed());
                lifecycle::operator_isolate(&mut host, &timed, seed.profile_in_force(&[]), "x", "operator f", now);
                let _ = lifecycle::apply_profile(&mut host, chosen, "fuzz", now + 1_000);
            }
        }
    }
    if let Ok(request) = serde_json::from_slice::<TagsRequest>(data) {
        let mut host = HostRecord::new("web-01", now);
        let _ = lifecycle::set_tags(&mut host, &request.add, &request.remove, "operator f", now);
    }
});
