//! Life cycle transitions, one scenario per test: inputs in order, the states, generations,
//! commands and audit lines they must produce.

use super::*;

const T0: i64 = 1_700_000_000_000;

fn status(host: &str, generation: u64, isolated: bool, kind: cordon_wire::StatusKind) -> cordon_wire::Status {
    cordon_wire::Status {
        version: cordon_wire::WIRE_VERSION,
        host_id: host.into(),
        sent_at_ms: T0,
        kind,
        command_id: Some(format!("{host}-{generation}")),
        generation,
        isolated,
        mode: isolated.then_some(cordon_wire::IsolationMode::Automatic),
        expires_at_ms: None,
        exclusions: Vec::new(),
        tags: if isolated { vec![ISOLATED_TAG.into(), "plc".into()] } else { vec!["plc".into()] },
        refusal: None,
        error: None,
        tampering: None,
        packets_dropped: 0,
        packets_allowed: 0,
    }
}

static SEED: std::sync::LazyLock<crate::service::profiles::PolicyVersion> =
    std::sync::LazyLock::new(|| crate::service::profiles::PolicyVersion {
        version: 1,
        at_ms: T0,
        author: "cordon".into(),
        reason: "seed".into(),
        reverted_from: None,
        policy: crate::service::profiles::IsolationPolicy::seed(),
    });

/// The seed's default profile, which leaves nothing open.
fn seed() -> ProfileInForce<'static> {
    SEED.profile_in_force(&[])
}

fn timed(seconds: u64) -> IsolationPlan {
    IsolationPlan { duration_seconds: Some(seconds), ..IsolationPlan::default() }
}

#[test]
fn operator_isolation_is_confirmed_then_lifted_at_its_deadline() {
    let mut host = HostRecord::new("web-01", T0);
    let effects = operator_isolate(&mut host, &timed(60), seed(), "incident 42", "operator alice", T0);
    assert!(matches!(effects.command, Some(cordon_wire::Action::Isolate { duration_seconds: Some(60), .. })));
    let audit = effects.audit.unwrap();
    assert_eq!((audit.from, audit.to, audit.generation), (HostState::NotIsolated, HostState::Isolating, 1));
    assert_eq!(audit.by, "operator alice");
    assert_eq!(host.expires_at_ms, Some(T0 + 60_000));
    assert_eq!(host.tags, vec![ISOLATED_TAG.to_owned()]);

    on_status(&mut host, &status("web-01", 1, true, cordon_wire::StatusKind::Applied), T0 + 30, OnTamper::AlertOnly);
    assert_eq!(host.state, HostState::Isolated);
    assert_eq!(host.tags, vec![ISOLATED_TAG.to_owned(), "plc".to_owned()]);
    assert!(host.command_issued_at_ms.is_none(), "an answered command is not resent");
    assert!(resend_due(&mut host, 1, T0 + 100_000).is_none());

    let effects = deadline_reached(&mut host, T0 + 60_000);
    assert!(matches!(effects.command, Some(cordon_wire::Action::Release { .. })));
    assert_eq!((host.state, host.generation), (HostState::Releasing, 2));
    assert!(host.tags.contains(&ISOLATED_TAG.to_owned()), "still isolated until the agent confirms");

    on_status(&mut host, &status("web-01", 2, false, cordon_wire::StatusKind::Applied), T0 + 60_050, OnTamper::AlertOnly);
    assert_eq!(host.state, HostState::Released);
    assert_eq!(host.tags, vec!["plc".to_owned()]);
    assert_eq!((host.mode, host.expires_at_ms), (None, None));
}

#[test]
fn a_report_for_an_older_generation_confirms_nothing() {
    let mut host = HostRecord::new("web-01", T0);
    operator_isolate(&mut host, &timed(60), seed(), "x", "operator a", T0);
    operator_release(&mut host, "y", "operator a", T0 + 1).unwrap();
    // The isolation's answer arrives after the release was issued.
    let effects = on_status(&mut host, &status("web-01", 1, true, cordon_wire::StatusKind::Applied), T0 + 2, OnTamper::AlertOnly);
    assert_eq!(host.state, HostState::Releasing);
    assert!(effects.audit.is_none());
    assert!(host.last_command.is_some(), "the release is still unanswered");
}

#[test]
fn approval_requests_merge_and_the_clock_starts_at_approval() {
    let mut host = HostRecord::new("plc-07", T0);
    let request = |rule: &str, seconds: u64, event: &str| rules::Decision {
        host: "plc-07".into(),
        event_id: event.into(),
        action: rules::Action::RequestApproval(rules::Isolation {
            mode: rules::IsolationMode::Automatic,
            duration: Some(std::time::Duration::from_secs(seconds)),
            deadline_ms: None,
            exclusions: rules::Exclusions::default(),
        }),
        rules: vec![rule.into()],
        why: Vec::new(),
        isolated_by: BTreeMap::new(),
    };
    let effects = on_decision(&mut host, &request("r1", 600, "e1"), seed(), T0, T0);
    assert!(effects.command.is_none(), "nothing is sent before approval");
    assert_eq!(host.state, HostState::PendingApproval);
    on_decision(&mut host, &request("r2", 3_600, "e2"), seed(), T0 + 5, T0 + 5);
    let pending = host.pending.clone().unwrap();
    assert_eq!((pending.requests, pending.rules.clone()), (2, vec!["r1".to_owned(), "r2".to_owned()]));
    assert_eq!(pending.plan.duration_seconds, Some(3_600), "the stronger request wins");
    assert_eq!(pending.event_id, "e1");

    assert!(operator_release(&mut host, "no", "operator b", T0 + 6).is_err());
    let approved_at = T0 + 120_000;
    let effects = approve(&mut host, seed(), "approved by an operator", "operator bob", approved_at).unwrap();
    assert!(matches!(
        effects.command,
        Some(cordon_wire::Action::Isolate { duration_seconds: Some(3_600), .. })
    ));
    assert_eq!(host.expires_at_ms, Some(approved_at + 3_600_000));
    assert_eq!((host.state, host.generation), (HostState::Isolating, 1));
    assert_eq!(
        approve(&mut host, seed(), "approved by an operator", "operator bob", approved_at),
        Err(Refused::NothingPending("plc-07".into()))
    );
}

#[test]
fn denial_returns_the_host_to_where_it_was() {
    let mut host = HostRecord::new("plc-07", T0);
    host.pending = Some(Proposal {
        plan: timed(60),
        rules: vec!["r1".into()],
        event_id: "e1".into(),
        requested_at_ms: T0,
        requests: 1,
        why: String::new(),
    });
    host.state = HostState::PendingApproval;
    let effects = deny(&mut host, "false positive", "operator carol", T0 + 1).unwrap();
    assert!(effects.command.is_none());
    assert_eq!(host.state, HostState::NotIsolated);
    assert_eq!(host.generation, 0);
    assert!(effects.audit.unwrap().why.contains("false positive"));
    assert!(deny(&mut host, "again", "operator carol", T0 + 2).is_err());
}

/// The engine's decision to isolate web-01 for a minute from T0 for `event`: `rule` fired, and
/// `isolated_by` are behind the isolation.
fn isolate_for_a_minute(event: &str, rule: &str, isolated_by: &[(&str, i64)]) -> rules::Decision {
    rules::Decision {
        host: "web-01".into(),
        event_id: event.into(),
        action: rules::Action::Isolate(rules::Isolation {
            mode: rules::IsolationMode::Automatic,
            duration: Some(std::time::Duration::from_mins(1)),
            deadline_ms: Some(T0 + 60_000),
            exclusions: rules::Exclusions::default(),
        }),
        rules: vec![rule.into()],
        why: Vec::new(),
        isolated_by: isolated_by.iter().map(|(by, ms)| ((*by).to_owned(), *ms)).collect(),
    }
}

#[test]
fn a_redelivered_event_isolates_once() {
    let mut host = HostRecord::new("web-01", T0);
    let decision = isolate_for_a_minute("e1", "ransomware", &[("ransomware", 60_000)]);
    assert!(on_decision(&mut host, &decision, seed(), T0, T0).command.is_some());
    assert_eq!(on_decision(&mut host, &decision, seed(), T0 + 10, T0 + 10), Effects::default());
    assert_eq!(host.generation, 1);
}

#[test]
fn the_detection_behind_an_isolation_is_dated_and_an_operators_isolation_has_none() {
    let mut host = HostRecord::new("web-01", T0);
    let decision = |event: &str| rules::Decision {
        host: "web-01".into(),
        event_id: event.into(),
        action: rules::Action::Isolate(rules::Isolation {
            mode: rules::IsolationMode::Automatic,
            duration: Some(std::time::Duration::from_mins(1)),
            deadline_ms: None,
            exclusions: rules::Exclusions::default(),
        }),
        rules: vec!["ransomware".into()],
        why: Vec::new(),
        isolated_by: BTreeMap::from([("ransomware".to_owned(), 60_000)]),
    };
    on_decision(&mut host, &decision("e1"), seed(), T0 - 7, T0);
    assert_eq!(host.detected_at_ms, Some(T0 - 7), "consumed, not decided");
    on_decision(&mut host, &decision("e2"), seed(), T0 + 3, T0 + 5);
    assert_eq!(host.detected_at_ms, Some(T0 - 7), "still isolating: the first detection began it");
    // The agent answers: the transition names the command it answered.
    let applied = status("web-01", 2, true, cordon_wire::StatusKind::Applied);
    let effects = on_status(&mut host, &applied, T0 + 9, OnTamper::AlertOnly);
    assert_eq!((host.state, effects.answered.as_deref()), (HostState::Isolated, Some("web-01-2")));
    let heartbeat = status("web-01", 2, true, cordon_wire::StatusKind::Heartbeat);
    let effects = on_status(&mut host, &heartbeat, T0 + 10, OnTamper::AlertOnly);
    assert_eq!(effects, Effects::default(), "a report that moves nothing answers nothing");
    operator_isolate(&mut host, &timed(600), seed(), "incident 9", "operator alice", T0 + 20);
    assert_eq!(host.detected_at_ms, None, "no detection behind an operator's isolation");
}

#[test]
fn the_record_alone_says_who_isolated_the_host_and_the_rules_see_it_while_in_force() {
    let mut host = HostRecord::new("web-01", T0);
    assert_eq!(host.for_rules().isolation, None);
    let decision = isolate_for_a_minute("e1", "strike", &[("ransomware", 0), ("strike", 60_000)]);
    on_decision(&mut host, &decision, seed(), T0, T0);
    let seen = host.for_rules().isolation.unwrap();
    assert_eq!((seen.mode, seen.deadline_ms), (rules::IsolationMode::Automatic, Some(T0 + 60_000)));
    assert_eq!(seen.isolated_by, decision.isolated_by, "the rules before, and the one now");
    on_status(&mut host, &status("web-01", 1, true, cordon_wire::StatusKind::Applied), T0 + 1, OnTamper::AlertOnly);
    assert_eq!(host.state, HostState::Isolated);
    extend(&mut host, 600, "more time", "operator bob", T0 + 2).unwrap();
    let seen = host.for_rules().isolation.unwrap();
    assert_eq!(seen.deadline_ms, Some(T0 + 660_000));
    assert_eq!(seen.isolated_by, decision.isolated_by, "the rules are still behind it");
    operator_release(&mut host, "cleaned", "operator bob", T0 + 3).unwrap();
    assert_eq!(host.state, HostState::Releasing);
    assert_eq!(host.for_rules().isolation, None, "being lifted: the next match isolates anew");
    assert!(host.isolated_by.is_empty());
    operator_isolate(&mut host, &timed(600), seed(), "incident 9", "operator alice", T0 + 4);
    let seen = host.for_rules().isolation.unwrap();
    assert_eq!(seen.isolated_by, BTreeMap::from([("operator alice".to_owned(), 0)]), "the operator alone");
    // Manual, confirmed by an agent (or a forged report) that says it is timed: the rules still
    // see an isolation held until someone releases it, never one that has ended.
    operator_isolate(&mut host, &IsolationPlan::default(), seed(), "x", "operator a", T0 + 5);
    let mut says_timed = status("web-01", host.generation, true, cordon_wire::StatusKind::Applied);
    says_timed.mode = Some(cordon_wire::IsolationMode::Automatic);
    on_status(&mut host, &says_timed, T0 + 6, OnTamper::AlertOnly);
    assert_eq!((host.state, host.mode), (HostState::Isolated, Some(cordon_wire::IsolationMode::Automatic)));
    let seen = host.for_rules().isolation.unwrap();
    assert_eq!((seen.mode, seen.deadline_ms), (rules::IsolationMode::Manual, None));
    assert!(seen.in_force(i64::MAX));
    // The record keeps it (an old record without it reads as no one).
    let json = serde_json::to_string(&host).unwrap();
    assert_eq!(serde_json::from_str::<HostRecord>(&json).unwrap().isolated_by, host.isolated_by);
    let without = json.replace(r#""isolated_by":{"operator a":0},"#, "");
    assert_ne!(without, json);
    assert!(serde_json::from_str::<HostRecord>(&without).unwrap().isolated_by.is_empty());
}

#[test]
fn an_unanswered_command_is_resent_with_backoff_and_the_same_generation() {
    let mut host = HostRecord::new("web-01", T0);
    operator_isolate(&mut host, &timed(600), seed(), "x", "operator a", T0);
    assert!(resend_due(&mut host, 10_000, T0 + 9_999).is_none());
    assert!(resend_due(&mut host, 10_000, T0 + 10_000).is_some());
    assert!(resend_due(&mut host, 10_000, T0 + 29_999).is_none(), "second wait is twice as long");
    assert!(resend_due(&mut host, 10_000, T0 + 30_000).is_some());
    assert_eq!(host.generation, 1);
    // The agent had applied it: it refuses the resend as stale, which answers it.
    let mut refused = status("web-01", 1, true, cordon_wire::StatusKind::Refused);
    refused.refusal = Some(cordon_wire::Refusal::StaleGeneration);
    on_status(&mut host, &refused, T0 + 30_010, OnTamper::AlertOnly);
    assert_eq!(host.state, HostState::Isolated);
    assert!(host.last_error.is_none());
    assert!(resend_due(&mut host, 10_000, T0 + 100_000).is_none());
}

#[test]
fn a_refusal_is_kept_and_the_state_does_not_move() {
    let mut host = HostRecord::new("web-01", T0);
    operator_isolate(&mut host, &timed(600), seed(), "x", "operator a", T0);
    let mut refused = status("web-01", 0, false, cordon_wire::StatusKind::Refused);
    refused.refusal = Some(cordon_wire::Refusal::BadSignature);
    let effects = on_status(&mut host, &refused, T0 + 5, OnTamper::AlertOnly);
    assert_eq!(host.state, HostState::Isolating);
    assert!(host.last_error.as_deref().unwrap().contains("signature"), "{:?}", host.last_error);
    assert!(effects.audit.unwrap().why.contains("could not apply"));
}

#[test]
fn an_agent_ahead_of_cordon_is_caught_up() {
    let mut host = HostRecord::new("web-01", T0);
    on_status(&mut host, &status("web-01", 7, false, cordon_wire::StatusKind::Heartbeat), T0, OnTamper::AlertOnly);
    assert_eq!(host.generation, 7);
    let effects = operator_isolate(&mut host, &timed(60), seed(), "x", "operator a", T0 + 1);
    assert_eq!(effects.audit.unwrap().generation, 8);
}

#[test]
fn an_agent_ahead_refusing_an_isolation_as_stale_gets_it_again_at_its_generation_plus_one() {
    let mut host = HostRecord::new("web-01", T0);
    operator_isolate(&mut host, &timed(600), seed(), "incident 9", "operator a", T0);
    assert_eq!(host.generation, 1);
    // cordon's state was restored from an old copy: the agent has applied up to generation 7.
    let mut refused = status("web-01", 7, false, cordon_wire::StatusKind::Refused);
    refused.command_id = Some("web-01-1".into());
    refused.refusal = Some(cordon_wire::Refusal::StaleGeneration);
    let effects = on_status(&mut host, &refused, T0 + 100_000, OnTamper::AlertOnly);
    assert_eq!((host.state, host.generation), (HostState::Isolating, 8), "never released by a refusal");
    match effects.command {
        Some(cordon_wire::Action::Isolate { duration_seconds, reason, .. }) => {
            assert_eq!(duration_seconds, Some(500), "what is left of the isolation, not all of it again");
            assert!(reason.contains("incident 9"), "{reason}");
        }
        other => panic!("expected the isolation again, got {other:?}"),
    }
    let audit = effects.audit.unwrap();
    assert_eq!((audit.to, audit.generation), (HostState::Isolating, 8));
    assert!(audit.why.contains("ahead of cordon") && audit.why.contains("generation 8"), "{}", audit.why);
    assert_eq!(host.expires_at_ms, Some(T0 + 600_000), "the deadline is kept");

    // The agent applies it: confirmed.
    on_status(&mut host, &status("web-01", 8, true, cordon_wire::StatusKind::Applied), T0 + 100_050, OnTamper::AlertOnly);
    assert_eq!((host.state, host.generation), (HostState::Isolated, 8));
}

#[test]
fn an_agent_ahead_that_lost_an_answered_isolation_gets_it_again() {
    let mut host = HostRecord::new("db-01", T0);
    operator_isolate(&mut host, &IsolationPlan::default(), seed(), "x", "operator a", T0);
    on_status(&mut host, &status("db-01", 1, true, cordon_wire::StatusKind::Applied), T0 + 1, OnTamper::AlertOnly);
    let effects = on_status(&mut host, &status("db-01", 4, false, cordon_wire::StatusKind::Heartbeat), T0 + 2, OnTamper::AlertOnly);
    assert!(matches!(effects.command, Some(cordon_wire::Action::Isolate { duration_seconds: None, .. })));
    assert_eq!((host.state, host.generation), (HostState::Isolating, 5));
}

#[test]
fn an_agent_ahead_that_already_has_the_desired_state_is_only_caught_up() {
    let mut host = HostRecord::new("db-01", T0);
    operator_isolate(&mut host, &timed(60), seed(), "x", "operator a", T0);
    on_status(&mut host, &status("db-01", 1, true, cordon_wire::StatusKind::Applied), T0 + 1, OnTamper::AlertOnly);
    deadline_reached(&mut host, T0 + 60_000);
    on_status(&mut host, &status("db-01", 2, false, cordon_wire::StatusKind::Applied), T0 + 60_001, OnTamper::AlertOnly);
    let effects = on_status(&mut host, &status("db-01", 9, false, cordon_wire::StatusKind::Heartbeat), T0 + 60_002, OnTamper::AlertOnly);
    assert!(effects.command.is_none());
    assert_eq!((host.state, host.generation), (HostState::Released, 9));
}

#[test]
fn an_implausible_generation_is_not_believed_and_nothing_wraps() {
    let mut host = HostRecord::new("web-01", T0);
    operator_isolate(&mut host, &timed(60), seed(), "x", "operator a", T0);
    let forged = status("web-01", u64::MAX, false, cordon_wire::StatusKind::Applied);
    let effects = on_status(&mut host, &forged, T0 + 1, OnTamper::AlertOnly);
    assert_eq!((host.state, host.generation), (HostState::Isolating, 1), "neither released nor moved");
    assert!(effects.command.is_none());
    assert!(host.last_error.as_deref().unwrap().contains("not believed"), "{:?}", host.last_error);

    // Even at the very end of the range, nothing wraps and nothing panics.
    host.generation = u64::MAX;
    let effects = operator_release(&mut host, "y", "operator a", T0 + 2).unwrap();
    assert!(effects.command.is_none());
    assert_eq!(host.generation, u64::MAX);
    assert!(effects.audit.unwrap().why.contains("largest there is"));
}

#[test]
fn a_local_release_of_a_manual_isolation_is_tampering_and_isolated_again_by_default() {
    let mut host = HostRecord::new("web-01", T0);
    operator_isolate(&mut host, &IsolationPlan::default(), seed(), "x", "operator a", T0);
    on_status(&mut host, &status("web-01", 1, true, cordon_wire::StatusKind::Applied), T0 + 1, OnTamper::default());
    // Someone ran `cordon-enforcer release` on the host: its heartbeat says so.
    let effects =
        on_status(&mut host, &status("web-01", 1, false, cordon_wire::StatusKind::Heartbeat), T0 + 2, OnTamper::default());
    assert_eq!((host.state, host.generation), (HostState::Isolating, 2));
    assert!(matches!(effects.command, Some(cordon_wire::Action::Isolate { duration_seconds: None, .. })));
    let why = effects.audit.unwrap().why;
    assert!(why.starts_with("TAMPERED") && why.contains("isolated again"), "{why}");
    let tampered = host.tampered.clone().expect("marked tampered");
    assert_eq!((tampered.at_ms, tampered.generation), (T0 + 2, 1));
    // The agent applies it; the alarm stays until an operator acts on the host.
    on_status(&mut host, &status("web-01", 2, true, cordon_wire::StatusKind::Applied), T0 + 3, OnTamper::default());
    assert_eq!(host.state, HostState::Isolated);
    assert!(host.tampered.is_some());
    operator_release(&mut host, "checked the host", "operator a", T0 + 4).unwrap();
    assert!(host.tampered.is_none());
}

#[test]
fn a_local_release_of_a_timed_isolation_only_raises_the_alarm_by_default() {
    let mut host = HostRecord::new("web-01", T0);
    operator_isolate(&mut host, &timed(3_600), seed(), "x", "operator a", T0);
    on_status(&mut host, &status("web-01", 1, true, cordon_wire::StatusKind::Applied), T0 + 1, OnTamper::default());
    let effects =
        on_status(&mut host, &status("web-01", 1, false, cordon_wire::StatusKind::Changed), T0 + 2, OnTamper::default());
    assert_eq!(host.state, HostState::Released);
    assert!(effects.command.is_none());
    assert!(host.tampered.as_ref().is_some_and(|t| t.response.contains("operator must decide")), "{host:?}");
    assert!(resend_due(&mut host, 1, T0 + 100).is_none(), "nothing is sent for an alarm");
    // `reisolate_all` isolates it again for what is left of its hour.
    let mut host = HostRecord::new("web-01", T0);
    operator_isolate(&mut host, &timed(3_600), seed(), "x", "operator a", T0);
    on_status(&mut host, &status("web-01", 1, true, cordon_wire::StatusKind::Applied), T0 + 1, OnTamper::ReisolateAll);
    let effects = on_status(
        &mut host,
        &status("web-01", 1, false, cordon_wire::StatusKind::Changed),
        T0 + 600_000,
        OnTamper::ReisolateAll,
    );
    assert!(matches!(effects.command, Some(cordon_wire::Action::Isolate { duration_seconds: Some(3_000), .. })));
    // `alert_only` never isolates again, manual or not.
    let mut host = HostRecord::new("web-01", T0);
    operator_isolate(&mut host, &IsolationPlan::default(), seed(), "x", "operator a", T0);
    on_status(&mut host, &status("web-01", 1, true, cordon_wire::StatusKind::Applied), T0 + 1, OnTamper::AlertOnly);
    on_status(&mut host, &status("web-01", 1, false, cordon_wire::StatusKind::Changed), T0 + 2, OnTamper::AlertOnly);
    assert_eq!(host.state, HostState::Released);
    assert!(host.tampered.is_some());
}

#[test]
fn tampering_the_agent_undid_marks_the_host_and_keeps_it_isolated() {
    let mut host = HostRecord::new("web-01", T0);
    operator_isolate(&mut host, &timed(3_600), seed(), "x", "operator a", T0);
    on_status(
        &mut host,
        &status("web-01", 1, true, cordon_wire::StatusKind::Applied),
        T0 + 1,
        OnTamper::default(),
    );
    // Root detached links; the agent attached them again and says so.
    let mut repaired = status("web-01", 1, true, cordon_wire::StatusKind::Changed);
    repaired.tampering = Some("TAMPERING: link(s) cordon_egress of the isolation were detached".into());
    let effects = on_status(&mut host, &repaired, T0 + 2, OnTamper::AlertOnly);
    assert!(effects.command.is_none(), "the host is still isolated: nothing to send");
    assert_eq!((host.state, host.generation), (HostState::Isolated, 1));
    let why = effects.audit.expect("an audit line").why;
    assert!(
        why.starts_with("TAMPERED: TAMPERING: link(s) cordon_egress") && why.contains("stays isolated"),
        "{why}"
    );
    let tampered = host.tampered.clone().expect("marked tampered");
    assert_eq!((tampered.at_ms, tampered.generation), (T0 + 2, 1));
    assert!(tampered.what.contains("cordon_egress"), "{tampered:?}");
    // A report of tampering from an agent behind cordon's last command, or not isolated, marks nothing.
    let mut host = HostRecord::new("web-01", T0);
    operator_isolate(&mut host, &IsolationPlan::default(), seed(), "x", "operator a", T0);
    let mut old = status("web-01", 0, true, cordon_wire::StatusKind::Changed);
    old.tampering = Some("links detached".into());
    on_status(&mut host, &old, T0 + 1, OnTamper::default());
    assert!(host.tampered.is_none(), "{host:?}");
}

#[test]
fn what_is_not_tampering() {
    // The agent's own deadline, within the slack of cordon's.
    let mut host = HostRecord::new("web-01", T0);
    operator_isolate(&mut host, &timed(60), seed(), "x", "operator a", T0);
    on_status(&mut host, &status("web-01", 1, true, cordon_wire::StatusKind::Applied), T0 + 1, OnTamper::default());
    on_status(&mut host, &status("web-01", 1, false, cordon_wire::StatusKind::Changed), T0 + 59_000, OnTamper::default());
    assert_eq!(host.state, HostState::Released);
    assert!(host.tampered.is_none());
    // An answer to a release; a refused isolation; a report of an older generation.
    let mut host = HostRecord::new("web-01", T0);
    operator_isolate(&mut host, &IsolationPlan::default(), seed(), "x", "operator a", T0);
    on_status(&mut host, &status("web-01", 1, true, cordon_wire::StatusKind::Applied), T0 + 1, OnTamper::default());
    operator_release(&mut host, "done", "operator a", T0 + 2).unwrap();
    on_status(&mut host, &status("web-01", 2, false, cordon_wire::StatusKind::Applied), T0 + 3, OnTamper::default());
    assert_eq!((host.state, host.tampered.is_none()), (HostState::Released, true));
    let mut host = HostRecord::new("web-01", T0);
    operator_isolate(&mut host, &IsolationPlan::default(), seed(), "x", "operator a", T0);
    let mut refused = status("web-01", 1, false, cordon_wire::StatusKind::Refused);
    refused.error = Some("cannot attach".into());
    on_status(&mut host, &refused, T0 + 1, OnTamper::default());
    on_status(&mut host, &status("web-01", 0, false, cordon_wire::StatusKind::Heartbeat), T0 + 2, OnTamper::default());
    assert!(host.tampered.is_none(), "{host:?}");
}

#[test]
fn silent_agents_become_stale_once_and_recover() {
    let mut host = HostRecord::new("web-01", T0);
    assert_eq!(check_stale(&mut host, 90_000, T0 + 1_000_000), Effects::default(), "never heard: not stale");
    on_status(&mut host, &status("web-01", 0, false, cordon_wire::StatusKind::Heartbeat), T0, OnTamper::AlertOnly);
    assert!(check_stale(&mut host, 90_000, T0 + 90_000).audit.is_none());
    assert!(check_stale(&mut host, 90_000, T0 + 90_001).audit.is_some());
    assert!(host.agent_stale);
    assert!(check_stale(&mut host, 90_000, T0 + 200_000).audit.is_none(), "marked once");
    let effects =
        on_status(&mut host, &status("web-01", 0, false, cordon_wire::StatusKind::Heartbeat), T0 + 200_001, OnTamper::AlertOnly);
    assert!(!host.agent_stale);
    assert_eq!(effects.audit.unwrap().why, "agent heard from again");
}

#[test]
fn operator_tags_are_checked_and_merged_with_the_agents() {
    let mut host = HostRecord::new("plc-07", T0);
    let refused = set_tags(&mut host, &[ISOLATED_TAG.into()], &[], "operator a", T0);
    assert_eq!(refused, Err(Refused::ReservedTag(ISOLATED_TAG.into())));
    assert!(set_tags(&mut host, &[String::new()], &[], "operator a", T0).is_err());
    set_tags(&mut host, &["production".into(), "plc".into()], &[], "operator a", T0).unwrap();
    on_status(&mut host, &status("plc-07", 0, false, cordon_wire::StatusKind::Heartbeat), T0, OnTamper::AlertOnly);
    assert_eq!(host.tags, vec!["plc".to_owned(), "production".to_owned()]);
    set_tags(&mut host, &[], &["production".into()], "operator a", T0).unwrap();
    assert_eq!(host.tags, vec!["plc".to_owned()]);
}

/// Version `version` of a policy whose default profile leaves `exclusions` open.
fn policy_with(version: u64, exclusions: &[&str]) -> crate::service::profiles::PolicyVersion {
    let mut policy = crate::service::profiles::IsolationPolicy::seed();
    policy.profiles[0].exclusions = exclusions.iter().map(|e| (*e).to_owned()).collect();
    crate::service::profiles::PolicyVersion { version, policy, ..SEED.clone() }
}

#[test]
fn a_new_profile_reaches_an_isolation_in_force_live_with_its_deadline_kept() {
    let mut host = HostRecord::new("plc-01", T0);
    let asked = IsolationPlan { exclusions: vec!["in,tcp,0.0.0.0/0,22".into()], ..timed(3_600) };
    operator_isolate(&mut host, &asked, seed(), "x", "operator a", T0);
    on_status(&mut host, &status("plc-01", 1, true, cordon_wire::StatusKind::Applied), T0 + 100, OnTamper::default());
    assert_eq!(host.state, HostState::Isolated);
    let deadline = host.expires_at_ms;

    let v2 = policy_with(2, &["out,tcp,192.0.2.10/32,443"]);
    let effects = apply_profile(&mut host, v2.profile_in_force(&[]), "policy version 2", T0 + 600_000);
    match effects.command {
        Some(cordon_wire::Action::Isolate { duration_seconds, exclusions, .. }) => {
            assert_eq!(duration_seconds, Some(3_000), "what is left of the hour");
            assert_eq!(exclusions, vec!["out,tcp,192.0.2.10/32,443", "in,tcp,0.0.0.0/0,22"], "profile's, then asked");
        }
        other => panic!("expected an isolate command, got {other:?}"),
    }
    let audit = effects.audit.unwrap();
    assert_eq!((audit.from, audit.to, audit.generation), (HostState::Isolated, HostState::Isolating, 2));
    assert_eq!(
        audit.why,
        "profile default (policy version 2) applied live, deadline kept: +exclusion out,tcp,192.0.2.10/32,443"
    );
    assert_eq!(host.expires_at_ms, deadline, "the deadline is cordon's, unchanged");
    assert_eq!(host.profile.as_ref().map(|p| p.version), Some(2));

    // The same version again changes nothing; a version that opens nothing new issues nothing.
    assert_eq!(apply_profile(&mut host, v2.profile_in_force(&[]), "again", T0 + 600_001), Effects::default());
    let v3 = policy_with(3, &["out,tcp,192.0.2.10/32,443"]);
    assert_eq!(apply_profile(&mut host, v3.profile_in_force(&[]), "v3", T0 + 600_002), Effects::default());
    assert_eq!(host.profile.as_ref().map(|p| p.version), Some(3), "the record names the version in force");
    // Removing the profile's exclusion goes back to what was asked.
    let v4 = policy_with(4, &[]);
    let effects = apply_profile(&mut host, v4.profile_in_force(&[]), "v4", T0 + 600_003);
    assert!(effects.audit.unwrap().why.ends_with("-exclusion out,tcp,192.0.2.10/32,443"));
}

#[test]
fn a_new_profile_leaves_released_pending_and_overdue_hosts_alone_and_keeps_manual_ones_manual() {
    let v2 = policy_with(2, &["out,tcp,192.0.2.10/32,443"]);
    let mut released = HostRecord::new("a", T0);
    operator_isolate(&mut released, &timed(60), seed(), "x", "operator a", T0);
    operator_release(&mut released, "done", "operator a", T0 + 1).unwrap();
    assert_eq!(apply_profile(&mut released, v2.profile_in_force(&[]), "v2", T0 + 2), Effects::default());

    let mut overdue = HostRecord::new("b", T0);
    operator_isolate(&mut overdue, &timed(60), seed(), "x", "operator a", T0);
    assert_eq!(apply_profile(&mut overdue, v2.profile_in_force(&[]), "v2", T0 + 61_000).command, None);

    let mut manual = HostRecord::new("c", T0);
    operator_isolate(&mut manual, &IsolationPlan::default(), seed(), "x", "operator a", T0);
    let effects = apply_profile(&mut manual, v2.profile_in_force(&[]), "v2", T0 + 5);
    assert!(matches!(effects.command, Some(cordon_wire::Action::Isolate { duration_seconds: None, .. })));
    assert_eq!(manual.mode, Some(cordon_wire::IsolationMode::Manual));
}

#[test]
fn an_operator_extends_a_timed_isolation_live_and_nothing_else() {
    let mut host = HostRecord::new("web-01", T0);
    operator_isolate(&mut host, &timed(600), seed(), "x", "operator a", T0);
    let effects = extend(&mut host, 3_600, "IR-9 needs longer", "operator b", T0 + 100_000).unwrap();
    assert_eq!(host.expires_at_ms, Some(T0 + 600_000 + 3_600_000));
    assert!(matches!(effects.command, Some(cordon_wire::Action::Isolate { duration_seconds: Some(4_100), .. })));
    let audit = effects.audit.unwrap();
    assert_eq!((audit.to, audit.generation, audit.by.as_str()), (HostState::Isolating, 2, "operator b"));
    assert!(audit.why.starts_with("extended by 1h to 2023-11-14T23:"), "{}", audit.why);

    let mut manual = HostRecord::new("web-02", T0);
    operator_isolate(&mut manual, &IsolationPlan::default(), seed(), "x", "operator a", T0);
    assert_eq!(extend(&mut manual, 60, "r", "operator b", T0 + 1), Err(Refused::NothingToExtend("web-02".into())));
    let mut overdue = HostRecord::new("web-03", T0);
    operator_isolate(&mut overdue, &timed(60), seed(), "x", "operator a", T0);
    assert!(extend(&mut overdue, 60, "r", "operator b", T0 + 61_000).is_err(), "the tick lifts it; nothing to extend");
    assert_eq!(overdue.expires_at_ms, Some(T0 + 60_000), "a refused extension changes nothing");
    let mut released = HostRecord::new("web-04", T0);
    assert!(extend(&mut released, 60, "r", "operator b", T0).is_err());
}
