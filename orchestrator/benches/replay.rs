//! `cordon rules test DIR --events FILE --json` (the whole process, its output to /dev/null)
//! against the parse-only floor (another process that reads the same file and parses each line
//! into a `serde_json::Value`, nothing else), on 100 generated SOC-like rules and ~1.4 KB OCSF
//! events of which about half decide. Three runs of each, the median reported.
//!
//! Run: `cargo bench -p orchestrator --bench replay` (`CORDON_BENCH_EVENTS` sets the number of
//! events, default 50,000). The numbers go into BENCHMARKS.md.

#![allow(
    clippy::cast_precision_loss,
    reason = "a measurement script: counts become rates and ratios"
)]

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../rules/benches/workload/mod.rs"]
mod workload;

const CORDON: &str = env!("CARGO_BIN_EXE_cordon");

/// The parse-only floor: every line of `path` into a `serde_json::Value`; prints how many parsed.
fn floor(path: &str) {
    let file = std::io::BufReader::new(std::fs::File::open(path).expect("open the events"));
    let mut parsed = 0_u64;
    for line in file.lines() {
        let line = line.expect("read a line");
        if serde_json::from_str::<serde_json::Value>(&line).is_ok() {
            parsed += 1;
        }
    }
    println!("{parsed}");
}

/// The median of three timed runs of `command` (output discarded).
fn median_of_three(mut command: impl FnMut() -> Command) -> Duration {
    let mut times: Vec<Duration> = (0..3)
        .map(|_| {
            let started = Instant::now();
            let status = command().stdout(Stdio::null()).stderr(Stdio::null()).status().expect("run");
            assert!(status.success() || status.code() == Some(1), "{status}");
            started.elapsed()
        })
        .collect();
    times.sort();
    times[1]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("floor") {
        floor(&args[2]);
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let events: u64 = std::env::var("CORDON_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let dir = std::env::temp_dir().join(format!("cordon-bench-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rules")).expect("create the scratch dir");
    std::fs::write(dir.join("rules/generated.yaml"), workload::rules_text(100)).expect("write the rules");
    // 400 techniques, the rules naming the first 200: about half the events decide.
    let mut random = workload::Random(0x00c0_ffee);
    let mut text = String::new();
    for i in 0..events {
        text.push_str(&workload::event_from(&mut random, i, 2_000, 1_700_000_000_000 + i * 10, 400));
        text.push('\n');
    }
    let file = dir.join("events.ndjson");
    std::fs::write(&file, &text).expect("write the events");
    let bytes = text.len();
    drop(text);
    let decided = Command::new(CORDON)
        .args(["rules", "test"])
        .arg(dir.join("rules"))
        .arg("--events")
        .arg(&file)
        .arg("--json")
        .output()
        .expect("replay");
    let decisions = decided.stdout.split(|b| *b == b'\n').filter(|line| !line.is_empty()).count();
    let me = std::env::current_exe().expect("this benchmark");
    let floor_time = median_of_three(|| {
        let mut command = Command::new(&me);
        command.arg("floor").arg(&file);
        command
    });
    let replay_time = median_of_three(|| {
        let mut command = Command::new(CORDON);
        command.args(["rules", "test"]).arg(dir.join("rules")).arg("--events").arg(&file).arg("--json");
        command
    });
    let rate = |time: Duration| events as f64 / time.as_secs_f64();
    println!(
        "replay: {events} events ({:.1} MB), 100 rules, {decisions} decisions ({:.0}% of events)",
        bytes as f64 / 1e6,
        decisions as f64 * 100.0 / events as f64
    );
    println!("parse-only floor: {:.3} s, {:.0} events/s", floor_time.as_secs_f64(), rate(floor_time));
    println!("cordon rules test --events --json: {:.3} s, {:.0} events/s", replay_time.as_secs_f64(), rate(replay_time));
    println!("ratio to the floor: {:.2}", floor_time.as_secs_f64() / replay_time.as_secs_f64());
    let _ = std::fs::remove_dir_all(&dir);
}
