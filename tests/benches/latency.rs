//! Detection-to-enforcement latency, end to end on the real kernel and the real broker: from the
//! moment a detection is handed to a Kafka producer on the sandbox's peer, to the moment a process
//! on the sandbox's host sees its next connect refused. In between: tansu, `cordon serve`
//! (consume, evaluate, record durably, sign, produce the command), tansu again, and
//! `cordon-enforcer run` (consume, verify, attach the armed programs). Each round releases the
//! host through the `cordon` command line and waits until it is re-armed.
//!
//! Run as root, after building the binaries it drives:
//!     cargo build --release -p orchestrator -p enforcer
//!     cargo bench -p cordon-tests --bench latency
//! `CORDON_BENCH_ROUNDS` sets the rounds per configuration (default 100). Two configurations:
//! the agent's default `fetch_wait_ms` (500), and 5 ms. tansu 0.6 answers a fetch only when
//! its wait is over, so with it the agent's wait is added to every command; Kafka answers as
//! soon as a command arrives. Numbers go into BENCHMARKS.md.

#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a measurement script: microseconds become milliseconds and percentiles"
)]

use std::io::Write as _;
use std::time::Duration;

use cordon_tests::world::{probe_binary, Options, World, HOST};

const RULES: &[(&str, &str)] = &[(
    "ransomware.yaml",
    "id: ransomware\ntitle: Ransomware\ndetection:\n  selection:\n    severity_id|gte: 5\n  condition: selection\n\
     response:\n  isolate:\n    mode: manual\n",
)];

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Rounds of detection -> refused connect; the latencies in milliseconds, sorted.
fn measure(options: &Options, rounds: usize) -> Vec<f64> {
    let mut world = World::start(RULES, options);
    let peer = world.sandbox.peer_v4();
    let (mut pipe, mut sent) = world.sandbox.spawn_piped(
        world.sandbox.on_peer(&probe_binary(), &["probe", "kafka-pipe", &world.broker, "edr.detections"]),
    );
    assert_eq!(sent.expect_line("the producer", Duration::from_secs(10)), "ready");
    let mut latencies = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let watcher = world.sandbox.on_host(&probe_binary(), &["probe", "until-refused", &peer, "8080"]);
        let mut watcher = world.sandbox.spawn(watcher);
        assert_eq!(watcher.expect_line("the watcher", Duration::from_secs(5)), "ready");
        let event = serde_json::json!({
            "time": cordon_tests::world::now_ms(), "severity_id": 5,
            "device": {"uid": HOST}, "finding_info": {"uid": format!("latency-{round}")},
        });
        writeln!(pipe, "{HOST}\t{event}").expect("write to the producer");
        let sent_at = sent.expect_line("the detection sent", Duration::from_secs(5));
        let sent_us: u128 = sent_at.strip_prefix("sent ").expect("sent <us>").parse().expect("a time");
        let refused = watcher.expect_line("the isolation", Duration::from_secs(10));
        let refused_us: u128 =
            refused.split_whitespace().nth(1).and_then(|t| t.parse().ok()).expect("refused <us> <errno>");
        latencies.push((refused_us.saturating_sub(sent_us)) as f64 / 1000.0);
        world.cordon_ok(&["release", HOST]);
        world.wait_for_state("released", Duration::from_secs(15));
        world.wait_until_connects(Duration::from_secs(5)).expect("traffic flows after the release");
        // The agent re-arms (loads and verifies the programs) after a release.
        std::thread::sleep(Duration::from_millis(400));
    }
    latencies.sort_by(f64::total_cmp);
    drop(world);
    latencies
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        std::process::exit(cordon_tests::probe::main(&args[2..]));
    }
    let rounds = std::env::var("CORDON_BENCH_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(100);
    let configurations = [
        ("defaults: service fetch_wait_ms 10, agent 500", Options::default()),
        ("service fetch_wait_ms 10, agent 5", Options { agent_fetch_wait_ms: Some(5), ..Options::default() }),
        (
            "service fetch_wait_ms 2, agent 2",
            Options { agent_fetch_wait_ms: Some(2), service_fetch_wait_ms: Some(2), ..Options::default() },
        ),
    ];
    let wanted: Vec<String> = args.iter().skip(1).filter(|a| !a.starts_with("--")).cloned().collect();
    for (what, options) in configurations {
        if !wanted.is_empty() && !wanted.iter().any(|w| what.contains(w.as_str())) {
            continue;
        }
        let latencies = measure(&options, rounds);
        println!(
            "latency, {what}: {rounds} detections -> connect refused: p50 {:.1} ms, \
             p99 {:.1} ms, min {:.1} ms, max {:.1} ms",
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
            latencies[0],
            latencies[latencies.len() - 1],
        );
    }
}
