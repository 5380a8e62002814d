//! Fuzzes what `cordon serve` does with an agent's status report: opening the signed envelope,
//! parsing, the host-id check, and the host life cycle's handling of it, on a host in each state. No input panics, the
//! generation never moves backwards, and never more than the believable leap forwards.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orchestrator::service::lifecycle::{self, HostRecord, IsolationPlan, MAX_GENERATION_LEAP};
use orchestrator::service::profiles::{IsolationPolicy, PolicyVersion};

const T0: i64 = 1_700_000_000_000;

fn hosts() -> Vec<HostRecord> {
    let timed = IsolationPlan { duration_seconds: Some(600), ..IsolationPlan::default() };
    let seed = PolicyVersion {
        version: 1,
        at_ms: T0,
        author: "fuzz".into(),
        reason: "fuzz".into(),
        reverted_from: None,
        policy: IsolationPolicy::seed(),
    };
    let fresh = HostRecord::new("web-01", T0);
    let mut isolating = fresh.clone();
    lifecycle::operator_isolate(&mut isolating, &timed, seed.profile_in_force(&[]), "fuzz", "operator f", T0);
    let mut releasing = isolating.clone();
    lifecycle::deadline_reached(&mut releasing, T0 + 600_000);
    let mut at_the_end = isolating.clone();
    at_the_end.generation = u64::MAX - 1;
    vec![fresh, isolating, releasing, at_the_end]
}

fuzz_target!(|data: &[u8]| {
    // The envelope: anything but a report signed by the key it names is refused, never a panic;
    // one that opens is judged against a registry that enrolled another key, and refused.
    if let Ok(report) = cordon_wire::open_report(data) {
        let enrolled = orchestrator::service::agents::AgentRecord {
            host: report.status.host_id.clone(),
            state: orchestrator::service::agents::AgentState::Enrolled,
            key: "not the signer".into(),
            changed_at_ms: T0,
            changed_by: "fuzz".into(),
            reason: "fuzz".into(),
        };
        let judged = orchestrator::service::agents::judge(&report, None, Some(&enrolled), None, T0);
        assert_eq!(judged, Err(cordon_wire::ReportRefusal::WrongKey));
    }
    let Ok(status) = serde_json::from_slice::<cordon_wire::Status>(data) else { return };
    if orchestrator::api::check_host_id(&status.host_id).is_err() {
        return;
    }
    for mut host in hosts() {
        let before = host.generation;
        let _ = lifecycle::on_status(&mut host, &status, T0 + 1_000, lifecycle::OnTamper::ReisolateAll);
        assert!(host.generation >= before, "the generation went backwards");
        assert!(
            host.generation - before <= MAX_GENERATION_LEAP.saturating_add(1),
            "the generation leapt from {before} to {}",
            host.generation
        );
        // The host can still be isolated and released afterwards, whatever the report said.
        let _ = lifecycle::operator_release(&mut host, "after", "operator f", T0 + 2_000);
    }
});
