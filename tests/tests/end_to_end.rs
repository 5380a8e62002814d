//! The whole product on the real kernel and a real broker: `cordon serve` and the tansu broker run
//! on the sandbox's peer, `cordon-enforcer run` on the sandbox's host inside its test cgroup
//! (its only way out while isolated is its management channel to the broker). Detections go in
//! on Kafka, operators act through the `cordon` command line, and the tests watch the host's
//! connections: cut, refused, and flowing again.
//!
//! Needs root, the tansu broker (ops/install-toolchain.sh) and both binaries built beside this
//! test (`cargo build`, which ops/test.sh runs first); fails loudly, never skips, without them.
//! This binary is also the probe the sandbox runs (`end_to_end probe ...`).

use std::time::{Duration, Instant};

use cordon_tests::otlp::ReceivedSpan;
use cordon_tests::world::{now_ms, probe_binary, Options, World, HOST};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        std::process::exit(cordon_tests::probe::main(&args[2..]));
    }
    let tests = vec![
        Trial::test("a_detection_cuts_the_host_off_until_its_deadline", detection_until_deadline),
        Trial::test("operators_isolate_and_release_through_the_cli", operator_isolate_and_release),
        Trial::test("an_approval_isolates_only_once_an_operator_approves", approval_flow),
        Trial::test(
            "kill_9_of_the_agent_while_isolated_keeps_the_host_isolated",
            agent_killed_while_isolated,
        ),
        Trial::test("one_trace_follows_a_detection_through_both_services", one_trace_per_detection),
        Trial::test(
            "a_release_on_the_host_is_reported_as_tampering_and_isolated_again",
            local_release_is_tampering,
        ),
        Trial::test(
            "an_agent_restarted_while_isolated_resolves_its_broker_by_name_and_is_released_remotely",
            broker_by_name_while_isolated,
        ),
        Trial::test(
            "a_flood_on_the_commands_topic_delays_no_isolation_and_sends_few_refusals",
            flooded_commands_topic,
        ),
    ];
    libtest_mimic::run(&Arguments::from_args(), tests).exit();
}

fn check(what: &str, got: &str, expected: &str) -> Result<(), Failed> {
    if got == expected {
        Ok(())
    } else {
        Err(format!("{what}: got '{got}', expected '{expected}'").into())
    }
}

/// The rules every test serves: severity 5 isolates for 5 s with one exclusion; severity 3 asks
/// an operator to approve a 1 h isolation.
const RULES: &[(&str, &str)] = &[
    (
        "ransomware.yaml",
        "id: ransomware\ntitle: Ransomware encrypting files\ndetection:\n  selection:\n    severity_id|gte: 5\n  \
         condition: selection\nresponse:\n  isolate:\n    mode: automatic\n    duration: 5s\n    allow: [\"out,tcp,{PEER}/32,9000\"]\n",
    ),
    (
        "suspicious.yaml",
        "id: suspicious\ntitle: Suspicious login\ndetection:\n  selection:\n    severity_id: 3\n  condition: selection\n\
         response:\n  isolate:\n    mode: approval\n    duration: 1h\n",
    ),
];

fn detection_until_deadline() -> Result<(), Failed> {
    let mut world = World::start(RULES, &Options::default());
    let peer = world.sandbox.peer_v4();
    check("before the detection", &world.host_connects(), "ok")?;
    let mut held =
        world.sandbox.spawn(world.sandbox.on_host(&probe_binary(), &["probe", "hold", &peer, "8080"]));
    assert_eq!(held.expect_line("a held connection", Duration::from_secs(5)), "connected");

    let produced = Instant::now();
    let event_time = world.detect(HOST, "ev-ransom-1", 5);
    // The established connection is cut, and new ones are refused at once.
    let cut = held.expect_line("the held connection to be cut", Duration::from_secs(5));
    assert!(cut.starts_with("broken"), "the held connection: {cut}");
    let cut_after = produced.elapsed();
    world.wait_until_refused(Duration::from_secs(1))?;
    // Except what the rule excluded, and the management channel (the agent's reports arrive).
    check("the rule's exclusion, out to port 9000", &world.host(&["connect", &peer, "9000"]), "ok")?;
    let view = world.wait_for_state("isolated", Duration::from_secs(10));
    assert_eq!(view["mode"], "automatic", "{view:#}");
    assert_eq!(view["rules"], serde_json::json!(["ransomware"]));
    assert_eq!(view["event_id"], "ev-ransom-1");
    assert_eq!(view["agent"]["isolated"], true, "the agent's report came back: {view:#}");

    let listed = world.isolated_hosts();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["host"], HOST);
    assert_eq!(listed[0]["state"], "isolated");
    assert!(listed[0]["expires_at"].is_string(), "{:#}", listed[0]);
    let human = world.cordon_ok(&["hosts", "--tag", "ISOLATED FROM NETWORK"]);
    assert!(human.contains(HOST) && human.contains("isolated"), "{human}");

    // At the deadline (5 s after the service decided) traffic flows again, and cordon says released.
    let deadline = epoch_ms(&view["expires_at"]);
    assert!(
        (event_time + 5_000..event_time + 6_000).contains(&deadline),
        "deadline {deadline}, event at {event_time}"
    );
    let flowing = world.wait_until_connects(Duration::from_secs(10)).ok_or("traffic never flowed again")?;
    let flowing_ms = now_ms() - i64::try_from(flowing.elapsed().as_millis()).expect("ms");
    assert!(flowing_ms >= deadline - 50, "released {} ms before the deadline", deadline - flowing_ms);
    assert!(flowing_ms <= deadline + 1_000, "released {} ms after the deadline", flowing_ms - deadline);
    let view = world.wait_for_state("released", Duration::from_secs(5));
    assert_eq!(view["tags"], serde_json::json!([]), "{view:#}");
    assert!(world.isolated_hosts().is_empty(), "nothing is listed as isolated any more");
    let trail: Vec<String> = view_audit(&world.host_view());
    assert_eq!(
        trail,
        ["isolating by rules ransomware", "isolated by agent", "releasing by scheduler", "released by agent"],
        "audit trail"
    );
    println!("e2e: held connection cut {cut_after:?} after the detection was produced; released {} ms after the deadline", flowing_ms - deadline);
    Ok(())
}

/// Epoch milliseconds of an RFC 3339 time in a view.
fn epoch_ms(value: &serde_json::Value) -> i64 {
    let text = value.as_str().unwrap_or_else(|| panic!("expected an RFC 3339 time, got {value}"));
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text} is not RFC 3339: {e}"));
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).expect("ms")
}

/// The audit trail as `TO by WHO` lines (without the enrolment of the agent's key, which is in
/// every host's trail before the rest).
fn view_audit(view: &serde_json::Value) -> Vec<String> {
    view["audit"]
        .as_array()
        .expect("audit trail")
        .iter()
        .filter(|entry| !entry["why"].as_str().unwrap().starts_with("agent key enrolled"))
        .map(|entry| format!("{} by {}", entry["to"].as_str().unwrap(), entry["by"].as_str().unwrap()))
        .map(|line| line.split(" (").next().unwrap().to_owned())
        .collect()
}

fn operator_isolate_and_release() -> Result<(), Failed> {
    let world = World::start(RULES, &Options::default());
    let peer = world.sandbox.peer_v4();
    let said = world.cordon_ok(&[
        "isolate",
        HOST,
        "--manual",
        "--reason",
        "IR-4711",
        "--allow",
        &format!("out,tcp,{peer}/32,9000"),
    ]);
    assert!(said.contains("isolation requested"), "{said}");
    world.wait_until_refused(Duration::from_secs(2))?;
    check("the operator's exclusion", &world.host(&["connect", &peer, "9000"]), "ok")?;
    let view = world.wait_for_state("isolated", Duration::from_secs(10));
    assert_eq!(view["mode"], "manual");
    assert!(view["expires_at"].is_null(), "{view:#}");
    assert_eq!(world.isolated_hosts().len(), 1);

    // Bad input is refused with every problem named, and changes nothing.
    let (code, _, stderr) =
        world.cordon(&["isolate", HOST, "--for", "10m", "--allow", "out,tcp,10.0.0.1/8,443"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("10.0.0.1/8"), "{stderr}");
    let (code, _, stderr) = world.cordon(&["approve", HOST]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no approval is pending"), "{stderr}");
    check("still isolated after the refusals", &world.host_connects(), "error EPERM")?;

    let said = world.cordon_ok(&["release", HOST, "--reason", "IR-4711 closed"]);
    assert!(said.contains("release requested"), "{said}");
    world.wait_until_connects(Duration::from_secs(2)).ok_or("traffic never flowed after the release")?;
    let view = world.wait_for_state("released", Duration::from_secs(5));
    let trail = view_audit(&world.host_view());
    assert_eq!(
        trail,
        ["isolating by operator e2e", "isolated by agent", "releasing by operator e2e", "released by agent"]
    );
    assert!(view["tags"].as_array().unwrap().is_empty(), "{view:#}");
    Ok(())
}

fn approval_flow() -> Result<(), Failed> {
    let world = World::start(RULES, &Options::default());
    // A request for approval isolates nothing; a denial leaves the host as it was.
    world.detect(HOST, "ev-login-1", 3);
    let view = world.wait_for_state("pending_approval", Duration::from_secs(10));
    assert_eq!(view["pending"]["rules"], serde_json::json!(["suspicious"]), "{view:#}");
    std::thread::sleep(Duration::from_millis(500));
    check("while the approval is pending", &world.host_connects(), "ok")?;
    assert!(world.isolated_hosts().is_empty(), "pending is not isolated");
    world.cordon_ok(&["deny", HOST, "--reason", "known admin login"]);
    let view = world.host_view();
    assert!(view["pending"].is_null() && view["state"] == "not_isolated", "{view:#}");
    check("after the denial", &world.host_connects(), "ok")?;

    // The next request is approved: the isolation starts then, for the rule's hour.
    world.detect(HOST, "ev-login-2", 3);
    world.wait_for_state("pending_approval", Duration::from_secs(10));
    let pending = world.cordon_ok(&["hosts", "--state", "pending_approval", "--json"]);
    assert!(pending.contains(HOST), "{pending}");
    let approved_at = now_ms();
    world.cordon_ok(&["approve", HOST]);
    world.wait_until_refused(Duration::from_secs(2))?;
    let view = world.wait_for_state("isolated", Duration::from_secs(10));
    assert_eq!(view["mode"], "automatic");
    assert!(view["pending"].is_null(), "{view:#}");
    let deadline = epoch_ms(&view["expires_at"]);
    assert!(
        (approved_at + 3_600_000..approved_at + 3_602_000).contains(&deadline),
        "the hour starts at approval"
    );
    let trail = view_audit(&world.host_view());
    assert_eq!(
        trail,
        [
            "pending_approval by rules suspicious",
            "not_isolated by operator e2e",
            "pending_approval by rules suspicious",
            "isolating by operator e2e",
            "isolated by agent"
        ]
    );
    world.cordon_ok(&["release", HOST]);
    world.wait_until_connects(Duration::from_secs(2)).ok_or("traffic never flowed after the release")?;
    Ok(())
}

fn agent_killed_while_isolated() -> Result<(), Failed> {
    let mut world = World::start(RULES, &Options::default());
    world.detect(HOST, "ev-ransom-2", 5);
    let deadline = epoch_ms(&world.wait_for_state("isolated", Duration::from_secs(10))["expires_at"]);
    world.kill_agent();
    check("after kill -9 of the agent", &world.host_connects(), "error EPERM")?;
    // `status` on the host says the agent is gone, and that the isolation still holds.
    let status = world.agent_status();
    if status["agent"]["running"] != false || status["isolated"] != true || status["pins_intact"] != true {
        return Err(format!("status after kill -9 of the agent: {status:#}").into());
    }
    let problems = status["agent"]["problems"].to_string();
    if !problems.contains("is not running") {
        return Err(format!("status does not say the agent is not running: {problems}").into());
    }
    world.start_agent();
    check("after the agent's restart", &world.host_connects(), "error EPERM")?;
    // The deadline is still honoured, and the restarted agent confirms the release.
    let flowing = world.wait_until_connects(Duration::from_secs(10)).ok_or("traffic never flowed again")?;
    let flowing_ms = now_ms() - i64::try_from(flowing.elapsed().as_millis()).expect("ms");
    assert!(flowing_ms >= deadline - 50, "released {} ms before the deadline", deadline - flowing_ms);
    assert!(flowing_ms <= deadline + 1_000, "released {} ms after the deadline", flowing_ms - deadline);
    world.wait_for_state("released", Duration::from_secs(5));
    let view = world.host_view();
    assert_eq!(view["generation"], 2, "one isolate and one release, nothing doubled: {view:#}");
    Ok(())
}

/// Root on the host lifts a manual isolation with `cordon-enforcer release`: the agent reports it,
/// cordon marks the host tampered (log, metric, `cordon hosts`) and, by the default policy,
/// isolates it again, and the host is cut off again. Then root detaches the links of the
/// isolation: the agent attaches them again, and cordon marks the host tampered for that too.
fn local_release_is_tampering() -> Result<(), Failed> {
    let world = World::start(RULES, &Options::default());
    world.cordon_ok(&["isolate", HOST, "--manual", "--reason", "IR-5150"]);
    world.wait_for_state("isolated", Duration::from_secs(10));
    world.wait_until_refused(Duration::from_secs(2))?;
    let (code, out, err) = world.enforcer(&["release"]);
    assert_eq!(code, 0, "cordon-enforcer release: {out}{err}");
    world.wait_until_connects(Duration::from_secs(2)).ok_or("the local release did not let traffic through")?;
    // The agent's next heartbeat says so; cordon isolates the host again (generation 2).
    world.wait_until_refused(Duration::from_secs(15))?;
    let view = world.wait_for_state("isolated", Duration::from_secs(10));
    assert_eq!(view["generation"], 2, "{view:#}");
    assert!(view["tampered"]["response"].as_str().is_some_and(|r| r.contains("isolated again")), "{view:#}");
    let listed = world.cordon_ok(&["hosts"]);
    assert!(listed.contains("isolated (TAMPERED)"), "{listed}");
    let trail = world.host_view()["audit"].to_string();
    assert!(trail.contains("TAMPERED: the agent reports the host not isolated"), "{trail}");
    // An operator's release answers the alarm.
    world.cordon_ok(&["release", HOST, "--reason", "IR-5150: host checked"]);
    let view = world.wait_for_state("released", Duration::from_secs(10));
    assert!(view["tampered"].is_null(), "{view:#}");
    // Isolated again, root detaches the isolation's links (pins kept): the agent attaches them
    // again and reports it; cordon marks the host tampered, and it stays isolated.
    world.cordon_ok(&["isolate", HOST, "--manual", "--reason", "IR-5151"]);
    world.wait_for_state("isolated", Duration::from_secs(10));
    world.wait_until_refused(Duration::from_secs(2))?;
    world.sandbox.detach_links(&probe_binary(), &["cordon_connect4", "cordon_egress"]);
    let limit = Instant::now() + Duration::from_secs(15);
    let view = loop {
        let view = world.host_view();
        if !view["tampered"].is_null() {
            break view;
        }
        assert!(Instant::now() < limit, "the repair was never reported as tampering: {view:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        (view["state"].as_str(), view["generation"].as_u64()),
        (Some("isolated"), Some(4)),
        "{view:#}"
    );
    let what = view["tampered"]["what"].to_string();
    assert!(what.contains("cordon_connect4") && what.contains("attached again"), "{view:#}");
    check("after the agent's repair", &world.host_connects(), "error EPERM")?;
    let listed = world.cordon_ok(&["hosts"]);
    assert!(listed.contains("isolated (TAMPERED)"), "{listed}");
    Ok(())
}

/// The broker is named (`broker.cordon.test`, served by a DNS server on the peer) and the
/// isolation does not exclude DNS. The agent, killed and restarted while its host is isolated,
/// still resolves the name (DNS to the host's resolvers belongs to the agent's management
/// channel, like the brokers: no other process gets it), reconnects and is released remotely.
fn broker_by_name_while_isolated() -> Result<(), Failed> {
    let mut world = World::start(RULES, &Options { broker_by_name: true, ..Options::default() });
    let peer = world.sandbox.peer_v4();
    world.cordon_ok(&["isolate", HOST, "--manual", "--reason", "IR-6001"]);
    world.wait_for_state("isolated", Duration::from_secs(10));
    world.wait_until_refused(Duration::from_secs(2))?;
    check("another process, to the resolver", &world.host(&["connect", &peer, "53"]), "error EPERM")?;
    world.kill_agent();
    world.start_agent();
    world.cordon_ok(&["release", HOST, "--reason", "IR-6001 closed"]);
    world.wait_until_connects(Duration::from_secs(15)).ok_or("the restarted agent never released the host")?;
    let view = world.wait_for_state("released", Duration::from_secs(10));
    assert_eq!(view["generation"], 2, "{view:#}");
    Ok(())
}

/// The spans one detection's trace must hold, by service: what the SOC lead reads to answer
/// "why was this host cut off, by which rule, and how long did it take".
const TRACE: &[(&str, &str)] = &[
    ("cordon", "consume detection"),
    ("cordon", "evaluate rules"),
    ("cordon", "decide"),
    ("cordon", "produce command"),
    ("cordon-enforcer", "consume command"),
    ("cordon-enforcer", "check command"),
    ("cordon-enforcer", "apply"),
    ("cordon-enforcer", "report status"),
    ("cordon", "consume status"),
];

fn one_trace_per_detection() -> Result<(), Failed> {
    let mut world = World::start(RULES, &Options { otlp: true, ..Options::default() });
    world.detect(HOST, "incident-trace", 5);
    world.wait_for_state("isolated", Duration::from_secs(10));
    // The agent's own health, as `cordon-enforcer status` shows it on the host.
    let status = world.agent_status();
    let agent = &status["agent"];
    if agent["running"] != true
        || agent["kafka_connected"] != true
        || agent["last_command"]["command_id"] != format!("{HOST}-1")
        || agent["last_command"]["outcome"] != "applied"
        || status["pins_intact"] != true
    {
        return Err(format!("the agent's health in status: {status:#}").into());
    }
    // The collector is on the agent's management channel only: another process on the host
    // gets nothing from it (the agent's export below shows the agent still does).
    let peer = world.sandbox.peer_v4();
    check("another process, to the collector", &world.host(&["connect", &peer, "4318"]), "error EPERM")?;
    // The agent exports while its host is isolated: the collector is on its management channel.
    let trace_of_detection = |spans: &[ReceivedSpan]| {
        let Some(root) = spans.iter().find(|s| {
            s.name == "consume detection"
                && s.attributes.get("cordon.event_id").map(String::as_str) == Some("incident-trace")
        }) else {
            return false;
        };
        TRACE.iter().all(|(service, name)| {
            spans.iter().any(|s| s.trace_id == root.trace_id && s.service == *service && s.name == *name)
        })
    };
    world.wait_for_telemetry(Duration::from_secs(15), |spans, _| trace_of_detection(spans))?;
    let root = world.spans.iter().find(|s| s.name == "consume detection").expect("found above").clone();
    let trace: Vec<&ReceivedSpan> = world.spans.iter().filter(|s| s.trace_id == root.trace_id).collect();
    let span = |service: &str, name: &str| -> Result<&ReceivedSpan, Failed> {
        trace
            .iter()
            .copied()
            .find(|s| s.service == service && s.name == name)
            .ok_or_else(|| format!("no {service} span {name:?} in the trace").into())
    };
    let parent_is = |child: &ReceivedSpan, parent: &ReceivedSpan| -> Result<(), Failed> {
        if child.parent_span_id == parent.span_id {
            Ok(())
        } else {
            Err(format!("{:?} is not a child of {:?}: {child:#?} {parent:#?}", child.name, parent.name)
                .into())
        }
    };
    let consume = span("cordon", "consume detection")?;
    let evaluate = span("cordon", "evaluate rules")?;
    let decide = span("cordon", "decide")?;
    let produce = span("cordon", "produce command")?;
    let command = span("cordon-enforcer", "consume command")?;
    let check_span = span("cordon-enforcer", "check command")?;
    let apply = span("cordon-enforcer", "apply")?;
    let report = span("cordon-enforcer", "report status")?;
    let status = span("cordon", "consume status")?;
    check("the detection's span is the trace's root", &consume.parent_span_id, "")?;
    parent_is(evaluate, consume)?;
    parent_is(decide, consume)?;
    parent_is(produce, decide)?;
    parent_is(command, produce)?;
    parent_is(check_span, command)?;
    parent_is(apply, command)?;
    parent_is(report, command)?;
    parent_is(status, report)?;
    // The ids an operator searches by.
    let attribute = |span: &ReceivedSpan, key: &str| span.attributes.get(key).cloned().unwrap_or_default();
    check("host on the detection", &attribute(consume, "cordon.host_id"), HOST)?;
    check("rules evaluated", &attribute(evaluate, "cordon.rule_ids"), "ransomware")?;
    check("rule behind the decision", &attribute(decide, "cordon.rule_ids"), "ransomware")?;
    check("event of the detection", &attribute(consume, "cordon.event_id"), "incident-trace")?;
    check("host the decision is for", &attribute(decide, "cordon.host_id"), HOST)?;
    let command_id = attribute(produce, "cordon.command_id");
    check("command id of the command", &command_id, &format!("{HOST}-1"))?;
    check("command id where the agent applied it", &attribute(apply, "cordon.command_id"), &command_id)?;
    check("command id the status answers", &attribute(status, "cordon.command_id"), &command_id)?;
    check("host isolated, as reported", &attribute(status, "cordon.state"), "isolated")?;
    // Both protocols: the service exports over gRPC (its file), the agent over HTTP (OTEL_*).
    check("the service's protocol", consume.protocol, "grpc")?;
    check("the agent's protocol", command.protocol, "http")?;
    // Metrics go out over OTLP too (gRPC, like the service's spans).
    world.wait_for_telemetry(Duration::from_secs(10), |_, metrics| {
        ["cordon_events_consumed grpc", "cordon_hosts_isolated grpc", "cordon_detection_to_enforced grpc"]
            .iter()
            .all(|wanted| metrics.iter().any(|m| m == wanted))
    })?;
    Ok(())
}

/// Anyone who can write to Kafka floods the commands topic: 30,000 messages keyed by other
/// hosts (a third share this host's partition) and 3,000 keyed by this host that are no
/// command. An operator's isolation right behind the flood cuts the host off within 15 s, and the
/// agent reports at most its budget of refusals (30 a minute), not 3,000.
fn flooded_commands_topic() -> Result<(), Failed> {
    let world = World::start(RULES, &Options::default());
    let flood = world.peer(&["kafka-flood", &world.broker, "cordon.commands", "flood-{i}", "30000"]);
    check("the flood of other hosts' messages", &flood, "ok")?;
    let forged = world.peer(&["kafka-flood", &world.broker, "cordon.commands", HOST, "3000"]);
    check("the flood of messages keyed by this host", &forged, "ok")?;
    let started = Instant::now();
    world.cordon_ok(&["isolate", HOST, "--manual", "--reason", "behind a flood"]);
    world.wait_until_refused(Duration::from_secs(15))?;
    let took = started.elapsed();
    world.wait_for_state("isolated", Duration::from_secs(10));
    let refused: usize = world
        .peer(&["kafka-count-refused", &world.broker, "cordon.status", HOST, "5"])
        .parse()
        .map_err(|e| format!("kafka-count-refused: {e}"))?;
    if !(1..=60).contains(&refused) {
        return Err(format!("the agent reported {refused} refusals of 3,000 (at most 30 a minute)").into());
    }
    eprintln!("isolated {took:?} after the flood; {refused} refusals reported");
    Ok(())
}
