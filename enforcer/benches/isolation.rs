//! Enforcer benchmark: what isolation costs and how fast it acts, measured in a sandbox of two
//! network namespaces joined by a veth pair (see `cordon-tests`). Run as root:
//!
//!     cargo bench -p enforcer --bench isolation
//!
//! It prints a Markdown table for BENCHMARKS.md. Scenarios, all on the same veth path:
//! - `none`: no program attached;
//! - `armed`: programs loaded and verified, not attached (what a host with the agent pays every
//!   day);
//! - `attached, not enforcing`: programs attached to the cgroup and the interface guard to the
//!   host's interface (as for a whole-host isolation), every one returning at once (a timed
//!   isolation whose kernel deadline passed while the agent was down);
//! - `isolated, 1,000 exclusions`: isolated (programs as above), the benchmark traffic allowed
//!   by 3 of 1,000 rules;
//! - `nftables linear` / `nftables set`: an nftables ruleset with the same meaning (default drop,
//!   loopback and the same 1,000 exclusions), as one rule per exclusion and as one interval set.
//!
//! The connection rate of this VM drifts by tens of percent from one second to the next, more
//! than the effects measured here. So besides the per-scenario runs, the cgroup scenarios are
//! measured *interleaved*: one client alternates every 100 ms between a bare sibling cgroup (no
//! program on its sockets' path) and the sandbox cgroup (the programs), so the drift hits both
//! halves alike; the control run (nothing attached anywhere) shows the method's own noise. Two
//! more interleaved rows use a pair of empty `cgroup_skb` programs (`ebpf/programs/src/baseline.rs`):
//! against nothing, they measure what the kernel charges for running any packet program (the
//! floor); against cordon's idle programs, what cordon adds over that floor.
//!
//! This binary is also the probe the sandbox runs (`isolation probe ...`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cordon_tests::Sandbox;

const ENFORCER: &str = env!("CARGO_BIN_EXE_cordon-enforcer");
const ROUNDS: usize = 7;
const SECONDS_PER_RUN: &str = "3";
const SEVER_CONNECTIONS: usize = 10_000;
/// Interleaved runs: repetitions of each (scenario, workload), windows per run, window length.
const INTERLEAVED_REPETITIONS: usize = 3;
const INTERLEAVED_WINDOWS: &str = "600";
const INTERLEAVED_WINDOW_MS: &str = "100";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        std::process::exit(cordon_tests::probe::main(&args[2..]));
    }
    cordon_tests::require_kernel_test_environment();
    let iperf3 = which("iperf3");
    let nft = which("nft");
    let mut sandbox = Sandbox::new();
    let peer = sandbox.peer_v4();
    let mut sinks = sandbox.spawn(sandbox.on_peer(&probe(), &["probe", "drain", "8080"]));
    assert_eq!(sinks.expect_line("sink", Duration::from_secs(5)), "ready");
    let mut sever_sink = sandbox.spawn(sandbox.on_peer(&probe(), &["probe", "sink", "8081"]));
    assert_eq!(sever_sink.expect_line("sink", Duration::from_secs(5)), "ready");
    let mut responder = sandbox.spawn(sandbox.on_peer(&probe(), &["probe", "respond", "8082"]));
    assert_eq!(responder.expect_line("responder", Duration::from_secs(5)), "ready");

    let exclusions = exclusion_specs(&peer);
    if std::env::var("CORDON_BENCH_ONLY").as_deref() == Ok("interleaved") {
        interleaved_connection_rates(&sandbox, &exclusions, &peer, &nft);
        return;
    }
    let scenarios = [
        "none",
        "armed (loaded, not attached)",
        "attached, not enforcing",
        "isolated, 1,000 exclusions",
        "nftables linear, 1,000 rules",
        "nftables set, 1,000 elements",
    ];
    let mut throughput: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len()];
    let mut rate: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len()];
    // Rounds interleave the scenarios so drift on the shared machine hits them all alike.
    for round in 0..ROUNDS {
        for (index, scenario) in scenarios.iter().enumerate() {
            set_up(&sandbox, index, &exclusions, &peer, &nft, true);
            throughput[index].push(iperf_gbits(&mut sandbox, &iperf3, &peer));
            rate[index].push(connection_rate(&sandbox, &peer));
            tear_down(&sandbox, index, &nft);
            eprintln!(
                "round {round}: {scenario}: {:.2} Gbit/s, {:.0} conn/s",
                throughput[index][round], rate[index][round]
            );
        }
    }

    println!("| scenario | TCP throughput (Gbit/s), median | ratio | spread (min–max ratio) | TCP connections/s, median | ratio | spread |");
    println!("|---|---|---|---|---|---|---|");
    let (base_throughput, base_rate) = (median(&throughput[0]), median(&rate[0]));
    for (index, scenario) in scenarios.iter().enumerate() {
        let (t, r) = (median(&throughput[index]), median(&rate[index]));
        let spread = |values: &[f64], base: f64| {
            let min = values.iter().copied().fold(f64::MAX, f64::min) / base;
            format!("{min:.3}–{:.3}", max(values) / base)
        };
        println!(
            "| {scenario} | {t:.2} | {:.3} | {} | {r:.0} | {:.3} | {} |",
            t / base_throughput,
            spread(&throughput[index], base_throughput),
            r / base_rate,
            spread(&rate[index], base_rate)
        );
    }

    interleaved_connection_rates(&sandbox, &exclusions, &peer, &nft);

    // Time from `isolate` to enforced, nothing to sever: the command's wall time.
    let cold = time_isolations(&sandbox, false);
    let armed = time_isolations(&sandbox, true);
    println!();
    println!(
        "| isolate → enforced (wall time of `cordon-enforcer isolate`, no connections) | median | max |"
    );
    println!("|---|---|---|");
    println!("| cold (load, verify, attach, pin) | {:.1} ms | {:.1} ms |", median(&cold), max(&cold));
    println!("| armed (attach, then flip the switch) | {:.1} ms | {:.1} ms |", median(&armed), max(&armed));

    // Severing 10,000 established connections.
    let mut holder = sandbox
        .spawn(sandbox.on_host(&probe(), &["probe", "open", &peer, "8081", &SEVER_CONNECTIONS.to_string()]));
    let opened = holder.expect_line("connections opened", Duration::from_mins(1));
    assert_eq!(opened, format!("open {SEVER_CONNECTIONS}"), "could not open the connections");
    let established_before = established_on_host(&sandbox, "8081");
    assert_eq!(established_before, SEVER_CONNECTIONS, "connections established before isolating");
    let started = Instant::now();
    let output = enforcer(&sandbox, &["isolate"]);
    let elapsed = started.elapsed();
    let severed_line = output.lines().find(|l| l.starts_with("Severed")).unwrap_or_default().to_owned();
    let still_established = established_on_host(&sandbox, "8081");
    println!();
    println!("| sever {SEVER_CONNECTIONS} established connections | wall time of `isolate` | still established after |");
    println!("|---|---|---|");
    println!("| {severed_line} | {:.0} ms | {still_established} |", elapsed.as_secs_f64() * 1000.0);
    enforcer(&sandbox, &["release"]);
}

/// Where the empty packet programs (`ebpf/programs/src/baseline.rs`) sit in an interleaved run.
#[derive(Clone, Copy)]
enum Floor {
    Nowhere,
    /// In the sandbox cgroup: what any `cgroup_skb` program costs, the kernel's floor.
    InSandbox,
    /// In the bare cgroup: what cordon's programs add over that floor.
    InBare,
}

/// The interleaved comparisons: key (for `CORDON_BENCH_INTERLEAVED`), row name, scenario set up
/// in the sandbox cgroup, and where the empty packet programs go.
const INTERLEAVED: [(&str, &str, usize, Floor); 6] = [
    ("control", "control: nothing attached", 0, Floor::Nowhere),
    ("armed", "armed (loaded, not attached: every host's daily state)", 1, Floor::Nowhere),
    ("floor", "empty `cgroup_skb` programs (the kernel's floor)", 0, Floor::InSandbox),
    ("attached", "attached, not enforcing", 2, Floor::Nowhere),
    ("over-floor", "attached, not enforcing, vs. empty programs in the bare half", 2, Floor::InBare),
    ("isolated", "isolated, 1,000 exclusions", 3, Floor::Nowhere),
];

/// The cgroup scenarios' connection rates, each run alternating 100 ms windows between a bare
/// sibling cgroup and the sandbox cgroup (see the module comment). Workloads: connect +
/// reset-close with no data (the worst case for per-connection costs), and one-byte request,
/// one-byte response, server closes (netperf's `TCP_CRR`, a short-lived HTTP-like connection).
/// `CORDON_BENCH_INTERLEAVED=control,attached` (keys of [`INTERLEAVED`]) runs only those rows.
fn interleaved_connection_rates(sandbox: &Sandbox, exclusions: &[String], peer: &str, nft: &Path) {
    let bare = PathBuf::from(format!("{}-bare", sandbox.cgroup.display()));
    std::fs::create_dir_all(&bare).expect("create the bare sibling cgroup");
    let wanted = std::env::var("CORDON_BENCH_INTERLEAVED").ok();
    let keys: Vec<&str> = INTERLEAVED.iter().map(|(key, ..)| *key).collect();
    if let Some(list) = &wanted {
        for key in list.split(',').map(str::trim) {
            assert!(
                keys.contains(&key),
                "CORDON_BENCH_INTERLEAVED: no row {key:?} (rows: {})",
                keys.join(",")
            );
        }
    }
    let rows: Vec<_> = INTERLEAVED
        .iter()
        .filter(|(key, ..)| wanted.as_deref().is_none_or(|list| list.split(',').any(|k| k.trim() == *key)))
        .collect();
    let workloads = [("reset", "8080", "connect + reset"), ("crr", "8082", "request/response (TCP_CRR)")];
    let mut ratios = vec![vec![Vec::new(); workloads.len()]; rows.len()];
    let mut bare_rates = vec![vec![Vec::new(); workloads.len()]; rows.len()];
    for repetition in 0..INTERLEAVED_REPETITIONS {
        for (r, (_, name, scenario, floor)) in rows.iter().enumerate() {
            // No interface guard: it would sit on both halves' path.
            set_up(sandbox, *scenario, exclusions, peer, nft, false);
            let _floor = match floor {
                Floor::Nowhere => None,
                Floor::InSandbox => Some(attach_empty_programs(&sandbox.cgroup)),
                Floor::InBare => Some(attach_empty_programs(&bare)),
            };
            for (w, (mode, port, _)) in workloads.iter().enumerate() {
                let (bare_rate, ratio) = interleaved_run(sandbox, &bare, peer, port, mode);
                eprintln!(
                    "interleaved {repetition}: {name}, {mode}: {bare_rate:.0} conn/s bare, ratio {ratio:.4}"
                );
                ratios[r][w].push(ratio);
                bare_rates[r][w].push(bare_rate);
            }
            tear_down(sandbox, *scenario, nft);
        }
    }
    let _ = std::fs::remove_dir(&bare);
    println!();
    println!(
        "| interleaved, {INTERLEAVED_REPETITIONS} runs of {INTERLEAVED_WINDOWS} x {INTERLEAVED_WINDOW_MS} ms windows | workload | connections/s, bare cgroup (median) | ratio in the sandbox cgroup (median) | runs (min–max) |"
    );
    println!("|---|---|---|---|---|");
    for (r, (_, name, ..)) in rows.iter().enumerate() {
        for (w, (_, _, workload)) in workloads.iter().enumerate() {
            let values = &ratios[r][w];
            let min = values.iter().copied().fold(f64::MAX, f64::min);
            println!(
                "| {name} | {workload} | {:.0} | {:.3} | {min:.3}–{:.3} |",
                median(&bare_rates[r][w]),
                median(values),
                max(values)
            );
        }
    }
}

/// Attaches the empty packet programs to `cgroup`; they stay attached until the result drops.
fn attach_empty_programs(cgroup: &Path) -> aya::Ebpf {
    use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};
    static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baseline-ebpf"));
    let mut object = aya::Ebpf::load(OBJECT).expect("load the empty packet programs");
    let cgroup_file = std::fs::File::open(cgroup).expect("open the cgroup");
    for (name, attach_type) in
        [("baseline_egress", CgroupSkbAttachType::Egress), ("baseline_ingress", CgroupSkbAttachType::Ingress)]
    {
        let program: &mut CgroupSkb = object
            .program_mut(name)
            .expect("program in the object")
            .try_into()
            .expect("a cgroup_skb program");
        program.load().expect("verify the empty program");
        program
            .attach(&cgroup_file, attach_type, CgroupAttachMode::Single)
            .expect("attach the empty program");
    }
    object
}

/// One interleaved run: the bare half's rate and the sandbox half's rate relative to it.
fn interleaved_run(sandbox: &Sandbox, bare: &Path, peer: &str, port: &str, mode: &str) -> (f64, f64) {
    let (bare, inside) = (bare.to_string_lossy(), sandbox.cgroup.to_string_lossy());
    let args = [
        "probe",
        "connwindows",
        peer,
        port,
        mode,
        INTERLEAVED_WINDOWS,
        INTERLEAVED_WINDOW_MS,
        &bare,
        &inside,
    ];
    let output = sandbox.on_host(&probe(), &args).output().expect("run connwindows");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.lines().last() == Some("done"), "connwindows said: {text}");
    // Per half: connections and nanoseconds.
    let mut totals = [(0.0_f64, 0.0_f64); 2];
    for line in text.lines().filter(|l| l.starts_with("window ")) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let half: usize = fields[2].parse().expect("cgroup index");
        totals[half].0 += fields[3].parse::<f64>().expect("count");
        totals[half].1 += fields[4].parse::<f64>().expect("nanoseconds");
    }
    let rate = |(count, nanos): (f64, f64)| count / (nanos / 1e9);
    (rate(totals[0]), rate(totals[1]) / rate(totals[0]))
}

fn which(tool: &str) -> PathBuf {
    let output = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().expect("sh");
    assert!(output.status.success(), "the benchmark needs {tool} (ops/install-toolchain.sh installs it)");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

fn probe() -> PathBuf {
    std::env::current_exe().expect("current exe")
}

fn enforcer(sandbox: &Sandbox, args: &[&str]) -> String {
    let output = sandbox.enforcer(Path::new(ENFORCER), args).output().expect("run cordon-enforcer");
    assert!(output.status.success(), "cordon-enforcer {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// 997 disjoint exclusions nobody uses, then the three the benchmark traffic needs (last, the
/// worst place for a linear ruleset).
fn exclusion_specs(peer: &str) -> Vec<String> {
    let mut specs: Vec<String> =
        (0..997).map(|i| format!("out,tcp,10.{}.{}.0/24,443", i / 256, i % 256)).collect();
    specs.push(format!("out,tcp,{peer}/32,5201"));
    specs.push(format!("out,tcp,{peer}/32,8080"));
    specs.push(format!("out,tcp,{peer}/32,8082"));
    specs
}

/// Brings the sandbox to `scenario`. `interface_guard`: also attach the ICMP echo guard to the
/// host's interface, as a whole-host isolation does.
fn set_up(
    sandbox: &Sandbox,
    scenario: usize,
    exclusions: &[String],
    peer: &str,
    nft: &Path,
    interface_guard: bool,
) {
    let guard = if interface_guard { vec!["--interface", sandbox.host_if.as_str()] } else { Vec::new() };
    match scenario {
        1 => {
            enforcer(sandbox, &["arm"]);
        }
        2 => {
            // Attached, then the kernel deadline passes (no agent runs here to lift it).
            enforcer(sandbox, &[&["isolate", "--duration", "1s"][..], &guard].concat());
            std::thread::sleep(Duration::from_millis(1300));
        }
        3 => {
            let mut args: Vec<String> = ["isolate"].iter().chain(&guard).map(|a| (*a).to_owned()).collect();
            for spec in exclusions {
                args.push("--allow".into());
                args.push(spec.clone());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            enforcer(sandbox, &args);
        }
        4 | 5 => {
            let ruleset = nft_ruleset(exclusions, peer, scenario == 5);
            let file = sandbox.state_dir.with_extension("nft");
            std::fs::write(&file, ruleset).expect("write nft ruleset");
            nft_in_host(sandbox, nft, &["-f", &file.to_string_lossy()]);
        }
        _ => {}
    }
}

fn tear_down(sandbox: &Sandbox, scenario: usize, nft: &Path) {
    match scenario {
        1..=3 => {
            enforcer(sandbox, &["release"]);
        }
        4 | 5 => nft_in_host(sandbox, nft, &["delete", "table", "inet", "cordon_bench"]),
        _ => {}
    }
}

fn nft_in_host(sandbox: &Sandbox, nft: &Path, args: &[&str]) {
    let output = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", sandbox.host_ns))
        .arg(nft)
        .args(args)
        .output()
        .expect("run nft");
    assert!(output.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// The same meaning as the eBPF isolation with these exclusions: drop by default, loopback
/// allowed, `out,tcp,NET,PORT` allows packets to NET:PORT and their replies from NET:PORT.
fn nft_ruleset(exclusions: &[String], _peer: &str, as_set: bool) -> String {
    let parsed: Vec<(String, String)> = exclusions
        .iter()
        .map(|spec| {
            let fields: Vec<&str> = spec.split(',').collect();
            (fields[2].to_owned(), fields[3].to_owned())
        })
        .collect();
    let mut text = String::from("table inet cordon_bench {\n");
    if as_set {
        let elements: Vec<String> = parsed.iter().map(|(net, port)| format!("{net} . {port}")).collect();
        let _ = writeln!(
            text,
            "  set allowed {{ type ipv4_addr . inet_service; flags interval; elements = {{ {} }} }}",
            elements.join(", ")
        );
        text.push_str("  chain output { type filter hook output priority 0; policy drop;\n    oifname \"lo\" accept\n    ip daddr . tcp dport @allowed accept\n  }\n");
        text.push_str("  chain input { type filter hook input priority 0; policy drop;\n    iifname \"lo\" accept\n    ip saddr . tcp sport @allowed accept\n  }\n");
    } else {
        text.push_str(
            "  chain output { type filter hook output priority 0; policy drop;\n    oifname \"lo\" accept\n",
        );
        for (net, port) in &parsed {
            let _ = writeln!(text, "    ip daddr {net} tcp dport {port} accept");
        }
        text.push_str("  }\n  chain input { type filter hook input priority 0; policy drop;\n    iifname \"lo\" accept\n");
        for (net, port) in &parsed {
            let _ = writeln!(text, "    ip saddr {net} tcp sport {port} accept");
        }
        text.push_str("  }\n");
    }
    text.push_str("}\n");
    text
}

fn iperf_gbits(sandbox: &mut Sandbox, iperf3: &Path, peer: &str) -> f64 {
    // A fresh one-shot server per run (`-1`): start it, then run the client.
    let mut server = sandbox.spawn(sandbox.on_peer(iperf3, &["-s", "-1", "-p", "5201", "--forceflush"]));
    let _ = server.expect_line("iperf3 server start", Duration::from_secs(5));
    let output = sandbox
        .on_host(iperf3, &["-c", peer, "-p", "5201", "-t", SECONDS_PER_RUN, "-J"])
        .output()
        .expect("run iperf3");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("iperf3 JSON");
    let bits = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 failed: {}", report["error"]));
    bits / 1e9
}

fn connection_rate(sandbox: &Sandbox, peer: &str) -> f64 {
    let output = sandbox
        .on_host(&probe(), &["probe", "connrate", peer, "8080", SECONDS_PER_RUN])
        .output()
        .expect("connrate");
    let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    line.strip_prefix("rate ")
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("connrate said '{line}'"))
}

fn time_isolations(sandbox: &Sandbox, armed: bool) -> Vec<f64> {
    let mut times = Vec::new();
    for _ in 0..10 {
        if armed {
            enforcer(sandbox, &["arm"]);
        }
        let started = Instant::now();
        enforcer(sandbox, &["isolate"]);
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        enforcer(sandbox, &["release"]);
    }
    times
}

fn established_on_host(sandbox: &Sandbox, port: &str) -> usize {
    let output = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", sandbox.host_ns))
        .args(["ss", "-Htn", "state", "established", &format!("( dport = :{port} )")])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&output.stdout).lines().count()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::MIN, f64::max)
}
