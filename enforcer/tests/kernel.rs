//! Kernel tests of `cordon-enforcer`: real eBPF programs in the real kernel, in sandboxes of
//! network namespaces and a test cgroup (see `cordon-tests`). Run as root; they fail loudly, never
//! skip, when the machine cannot run them.
//!
//! This binary is also the probe the sandboxes run (`kernel probe ...`), so no other helper
//! program has to be built or installed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cordon_tests::{make_pki, output_of, which, LineReader, Sandbox};
use libtest_mimic::{Arguments, Failed, Trial};

const ENFORCER: &str = env!("CARGO_BIN_EXE_cordon-enforcer");
/// Name under which an exempt copy of the probe runs (its comm).
const EXEMPT_NAME: &str = "cordon-exempt";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        std::process::exit(cordon_tests::probe::main(&args[2..]));
    }
    let tests = vec![
        Trial::test("established_tcp_connection_is_severed_within_a_second", severs_established_connections),
        Trial::test("new_tcp_udp_and_icmp_are_refused_both_ways_v4_and_v6", refuses_new_traffic),
        Trial::test("exclusions_allow_exactly_their_ports_ranges_and_direction", exclusions_are_exact),
        Trial::test("the_management_channel_is_the_agents_alone", management_channel_is_the_agents),
        Trial::test("excluded_process_connects_out_and_accepts_in_others_do_not", process_exclusion),
        Trial::test("loopback_keeps_working", loopback_keeps_working),
        Trial::test("kill_9_of_the_agent_keeps_isolation_and_restart_adopts_it", survives_agent_kill),
        Trial::test("timed_isolation_ends_on_time_with_the_agent_running", timed_isolation_with_agent),
        Trial::test("timed_isolation_ends_on_time_with_the_agent_dead", timed_isolation_without_agent),
        Trial::test("release_restores_everything_and_leaves_nothing_pinned", release_cleans_up),
        Trial::test("agent_restores_isolation_after_the_pins_are_gone", restores_after_reboot),
        Trial::test(
            "an_upgrade_takes_over_and_retires_the_earlier_pin_layout",
            upgrade_retires_earlier_layout,
        ),
        Trial::test("exclusions_change_on_a_live_isolation", live_update),
        Trial::test("armed_programs_change_nothing_until_isolate", armed_then_isolated),
        Trial::test("dns_and_dhcp_only_when_asked_for", dns_and_dhcp_on_request),
        Trial::test("signed_commands_over_kafka_applied_forgeries_refused", signed_commands_over_kafka),
        Trial::test("the_agents_channel_over_mutual_tls", agent_channel_over_mutual_tls),
        Trial::test("whole_host_mode_with_the_default_options", whole_host_mode),
        Trial::test("links_detached_on_the_host_are_attached_again_and_said", detached_links_reattached),
        Trial::test("not_root_is_told_what_is_missing", not_root_is_refused),
        Trial::test("failed_isolation_is_rolled_back", failed_isolation_is_rolled_back),
        Trial::test("bad_input_exits_2_and_changes_nothing", bad_input_changes_nothing),
        Trial::test(
            "the_systemd_units_capabilities_suffice_and_each_is_needed",
            runs_with_the_units_capabilities,
        ),
    ];
    libtest_mimic::run(&Arguments::from_args(), tests).exit();
}

fn probe_binary() -> PathBuf {
    std::env::current_exe().expect("current exe")
}

/// A symlink to this binary named `cordon-exempt`, so the process it starts has that name.
fn exempt_probe(sandbox: &Sandbox) -> PathBuf {
    let dir = sandbox.state_dir.with_extension("bin");
    std::fs::create_dir_all(&dir).expect("create bin dir");
    let link = dir.join(EXEMPT_NAME);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(probe_binary(), &link).expect("symlink exempt probe");
    link
}

fn enforcer_ok(sandbox: &Sandbox, args: &[&str]) -> String {
    let (code, stdout, stderr) = output_of(sandbox.enforcer(Path::new(ENFORCER), args));
    assert_eq!(code, 0, "cordon-enforcer {args:?} failed: {stderr}\n{stdout}");
    stdout
}

fn status(sandbox: &Sandbox) -> serde_json::Value {
    serde_json::from_str(&enforcer_ok(sandbox, &["status", "--json"])).expect("status --json is JSON")
}

/// One probe run on the isolated host; returns its answer line.
fn on_host(sandbox: &Sandbox, args: &[&str]) -> String {
    let mut full = vec!["probe"];
    full.extend_from_slice(args);
    output_of(sandbox.on_host(&probe_binary(), &full)).1
}

fn on_peer(sandbox: &Sandbox, args: &[&str]) -> String {
    let mut full = vec!["probe"];
    full.extend_from_slice(args);
    output_of(sandbox.on_peer(&probe_binary(), &full)).1
}

fn start_peer_servers(sandbox: &mut Sandbox, ports: &[&str]) {
    let mut args = vec!["probe", "serve"];
    args.extend_from_slice(ports);
    let command = sandbox.on_peer(&probe_binary(), &args);
    let mut reader = sandbox.spawn(command);
    assert_eq!(reader.expect_line("peer servers", Duration::from_secs(5)), "ready");
}

fn check(what: &str, got: &str, expected: &str) -> Result<(), Failed> {
    if got == expected {
        Ok(())
    } else {
        Err(format!("{what}: got '{got}', expected '{expected}'").into())
    }
}

fn spawn_agent(sandbox: &mut Sandbox) -> LineReader {
    let command = sandbox.enforcer(Path::new(ENFORCER), &["run"]);
    sandbox.spawn(command)
}

/// `command` with its standard error joined to its standard output (the agent logs errors there).
fn with_stderr(command: &Command) -> Command {
    let mut merged = Command::new("sh");
    merged.arg("-c").arg("exec \"$0\" \"$@\" 2>&1").arg(command.get_program()).args(command.get_args());
    merged
}

fn kill_9(pid: i32) {
    // SAFETY: signalling the agent this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

// ---------------------------------------------------------------------------------------------

fn severs_established_connections() -> Result<(), Failed> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["8080"]);
    let peer = sandbox.peer_v4();
    let peer6 = sandbox.peer_v6();
    let mut held = sandbox.spawn(sandbox.on_host(&probe_binary(), &["probe", "hold", &peer, "8080"]));
    let mut held6 = sandbox.spawn(sandbox.on_host(&probe_binary(), &["probe", "hold", &peer6, "8080"]));
    check(
        "v4 connection before isolation",
        &held.expect_line("connect", Duration::from_secs(3)),
        "connected",
    )?;
    check(
        "v6 connection before isolation",
        &held6.expect_line("connect", Duration::from_secs(3)),
        "connected",
    )?;
    let started = Instant::now();
    enforcer_ok(&sandbox, &["isolate"]);
    let end = held.expect_line("the connection to end", Duration::from_secs(1));
    let end6 = held6.expect_line("the v6 connection to end", Duration::from_secs(1));
    let elapsed = started.elapsed();
    check("v4 connection after isolation", &end, "broken ECONNABORTED")?;
    check("v6 connection after isolation", &end6, "broken ECONNABORTED")?;
    assert!(elapsed < Duration::from_secs(1), "severing took {elapsed:?}");
    Ok(())
}

fn refuses_new_traffic() -> Result<(), Failed> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["8080"]);
    let (peer, peer6, host, host6) =
        (sandbox.peer_v4(), sandbox.peer_v6(), sandbox.host_v4(), sandbox.host_v6());
    // Everything works before.
    for (what, answer) in [
        ("tcp v4", on_host(&sandbox, &["connect", &peer, "8080"])),
        ("tcp v6", on_host(&sandbox, &["connect", &peer6, "8080"])),
        ("udp v4", on_host(&sandbox, &["udp", &peer, "8080"])),
        ("udp v6", on_host(&sandbox, &["udp", &peer6, "8080"])),
        ("ping out v4", on_host(&sandbox, &["ping", &peer])),
        ("ping out v6", on_host(&sandbox, &["ping", &peer6])),
        ("ping in v4", on_peer(&sandbox, &["ping", &host])),
        ("ping in v6", on_peer(&sandbox, &["ping", &host6])),
    ] {
        check(&format!("{what} before isolation"), &answer, "ok")?;
    }
    let host_if = sandbox.host_if.clone();
    enforcer_ok(&sandbox, &["isolate", "--interface", &host_if]);
    for (what, answer, expected) in [
        ("tcp v4", on_host(&sandbox, &["connect", &peer, "8080"]), "error EPERM"),
        ("tcp v6", on_host(&sandbox, &["connect", &peer6, "8080"]), "error EPERM"),
        ("udp v4", on_host(&sandbox, &["udp", &peer, "8080"]), "error EPERM"),
        ("udp v6", on_host(&sandbox, &["udp", &peer6, "8080"]), "error EPERM"),
        ("ping out v4 (raw socket)", on_host(&sandbox, &["ping", &peer]), "error EPERM"),
        ("ping out v6 (raw socket)", on_host(&sandbox, &["ping", &peer6]), "error EPERM"),
        ("ping in v4", on_peer(&sandbox, &["ping", &host]), "timeout"),
        ("ping in v6", on_peer(&sandbox, &["ping", &host6]), "timeout"),
    ] {
        check(&format!("{what} while isolated"), &answer, expected)?;
    }
    // A service listening on the isolated host is unreachable: the SYN is dropped.
    let mut servers = sandbox.spawn(sandbox.on_host(&probe_binary(), &["probe", "serve", "7300"]));
    check("servers on the host", &servers.expect_line("ready", Duration::from_secs(3)), "ready")?;
    check("tcp in v4 from the peer", &on_peer(&sandbox, &["connect", &host, "7300"]), "timeout")?;
    check("tcp in v6 from the peer", &on_peer(&sandbox, &["connect", &host6, "7300"]), "timeout")?;
    check("udp in v4 from the peer", &on_peer(&sandbox, &["udp", &host, "7300"]), "timeout")?;
    check("udp in v6 from the peer", &on_peer(&sandbox, &["udp", &host6, "7300"]), "timeout")?;
    let counters = &status(&sandbox)["counters"];
    assert!(counters["connects_refused"].as_u64() >= Some(4), "counters: {counters}");
    assert!(counters["echo_requests_dropped"].as_u64() >= Some(2), "counters: {counters}");
    assert!(counters["raw_sockets_refused"].as_u64() >= Some(2), "counters: {counters}");
    Ok(())
}

fn exclusions_are_exact() -> Result<(), Failed> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["9000", "9001", "9100", "9102", "9103"]);
    let (peer, peer6, host) = (sandbox.peer_v4(), sandbox.peer_v6(), sandbox.host_v4());
    let single = format!("out,tcp,{peer}/32,9000");
    let range = format!("out,tcp,{peer}/32,9100-9102");
    let range6 = format!("both,tcp,{}/64,9100-9102", peer6.trim_end_matches('2'));
    let inbound = "in,tcp,0.0.0.0/0,7000".to_owned();
    enforcer_ok(
        &sandbox,
        &["isolate", "--allow", &single, "--allow", &range, "--allow", &range6, "--allow", &inbound],
    );
    check("excluded port 9000", &on_host(&sandbox, &["connect", &peer, "9000"]), "ok")?;
    check("neighbour port 9001", &on_host(&sandbox, &["connect", &peer, "9001"]), "error EPERM")?;
    check("port 9100 in range", &on_host(&sandbox, &["connect", &peer, "9100"]), "ok")?;
    check("port 9102 in range", &on_host(&sandbox, &["connect", &peer, "9102"]), "ok")?;
    check("port 9103 past range", &on_host(&sandbox, &["connect", &peer, "9103"]), "error EPERM")?;
    check("v6 port 9102 in range", &on_host(&sandbox, &["connect", &peer6, "9102"]), "ok")?;
    check("v6 port 9000 (v4-only rule)", &on_host(&sandbox, &["connect", &peer6, "9000"]), "error EPERM")?;
    // `in` exclusion: the peer may connect to local port 7000, not to 7001.
    for (port, expected) in [("7000", "accepted"), ("7001", "timeout")] {
        let mut listener = sandbox.spawn(sandbox.on_host(&probe_binary(), &["probe", "accept", port]));
        check("listener", &listener.expect_line("listening", Duration::from_secs(3)), "listening")?;
        let peer_answer = on_peer(&sandbox, &["connect", &host, port]);
        let accepted = listener.expect_line("accept", Duration::from_secs(5));
        check(&format!("inbound to {port}"), &accepted, expected)?;
        check(
            &format!("peer's connect to {port}"),
            &peer_answer,
            if expected == "accepted" { "ok" } else { "timeout" },
        )?;
    }
    Ok(())
}

/// The brokers are excluded for the agent's sockets only: with no agent running, no process on
/// the host reaches them, and a connection another process held to them is cut. (That the agent
/// keeps its channel while isolated is shown by `signed_commands_over_kafka`.)
fn management_channel_is_the_agents() -> Result<(), Failed> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["9092", "9093"]);
    let peer = sandbox.peer_v4();
    let config = sandbox.state_dir.with_extension("toml");
    std::fs::write(&config, format!("[kafka]\nbrokers = \"{peer}:9092\"\n")).expect("write config");
    let config = config.to_string_lossy().into_owned();
    let mut held = sandbox.spawn(sandbox.on_host(&probe_binary(), &["probe", "hold", &peer, "9092"]));
    check("a connection to the broker before isolation", &held.expect_line("connect", Duration::from_secs(3)), "connected")?;
    let out = enforcer_ok(&sandbox, &["--config", &config, "isolate"]);
    assert!(out.contains(&format!("out,tcp,{peer}/32,9092")), "isolate output: {out}");
    check("a held connection to the broker", &held.expect_line("sever", Duration::from_secs(1)), "broken ECONNABORTED")?;
    check("broker port, not the agent", &on_host(&sandbox, &["connect", &peer, "9092"]), "error EPERM")?;
    check("other port on the broker host", &on_host(&sandbox, &["connect", &peer, "9093"]), "error EPERM")?;
    let status = status(&sandbox);
    // The broker, then DNS to the host's resolvers (the agent's own, to resolve brokers' names).
    let management: Vec<&str> =
        status["management"].as_array().expect("a list").iter().filter_map(serde_json::Value::as_str).collect();
    assert_eq!(management.first(), Some(&format!("out,tcp,{peer}/32,9092").as_str()), "{management:?}");
    assert!(management[1..].iter().all(|spec| spec.ends_with(",53")), "{management:?}");
    let _ = std::fs::remove_file(&config);
    Ok(())
}

fn process_exclusion() -> Result<(), Failed> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["8080"]);
    let exempt = exempt_probe(&sandbox);
    let (peer, host) = (sandbox.peer_v4(), sandbox.host_v4());
    // An exempt process's connection made before isolation survives it.
    let mut held = sandbox.spawn(sandbox.on_host(&exempt, &["probe", "hold", &peer, "8080"]));
    check(
        "exempt connection before isolation",
        &held.expect_line("connect", Duration::from_secs(3)),
        "connected",
    )?;
    enforcer_ok(&sandbox, &["isolate", "--allow-process", EXEMPT_NAME]);
    held.expect_silence(Duration::from_millis(1500))?;

    let exempt_connect = output_of(sandbox.on_host(&exempt, &["probe", "connect", &peer, "8080"])).1;
    check("exempt process connects out", &exempt_connect, "ok")?;
    check("other process connects out", &on_host(&sandbox, &["connect", &peer, "8080"]), "error EPERM")?;
    for (program, port, expected) in
        [(exempt.clone(), "7100", "accepted"), (probe_binary(), "7101", "timeout")]
    {
        let mut listener = sandbox.spawn(sandbox.on_host(&program, &["probe", "accept", port]));
        check("listener", &listener.expect_line("listening", Duration::from_secs(3)), "listening")?;
        let _ = on_peer(&sandbox, &["connect", &host, port]);
        check(
            &format!("{} accepts on {port}", program.display()),
            &listener.expect_line("accept", Duration::from_secs(5)),
            expected,
        )?;
    }
    Ok(())
}

fn loopback_keeps_working() -> Result<(), Failed> {
    let sandbox = Sandbox::new();
    enforcer_ok(&sandbox, &["isolate"]);
    check("loopback v4 and v6 while isolated", &on_host(&sandbox, &["loopback"]), "ok")
}

fn survives_agent_kill() -> Result<(), Failed> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["8080"]);
    let peer = sandbox.peer_v4();
    let mut agent = spawn_agent(&mut sandbox);
    enforcer_ok(&sandbox, &["isolate", "--reason", "kill test"]);
    let before = status(&sandbox);
    for pid in sandbox.agent_pids(Path::new(ENFORCER)) {
        kill_9(pid);
    }
    let _ = agent.expect_eof(Duration::from_secs(2));
    check("new connection after kill -9", &on_host(&sandbox, &["connect", &peer, "8080"]), "error EPERM")?;
    let after_kill = status(&sandbox);
    assert_eq!(after_kill["isolated"], true, "status after kill: {after_kill}");
    let mut restarted = spawn_agent(&mut sandbox);
    let started = restarted.expect_line("agent start", Duration::from_secs(5));
    assert!(started.contains("adopted the pinned isolation"), "agent said: {started}");
    let after_restart = status(&sandbox);
    assert_eq!(after_restart["isolated"], true);
    assert_eq!(after_restart["change_seq"], before["change_seq"], "a restart must not install a second copy");
    assert_eq!(after_restart["pinned_links"], before["pinned_links"]);
    assert_eq!(after_restart["reason"], "kill test");
    check("new connection after restart", &on_host(&sandbox, &["connect", &peer, "8080"]), "error EPERM")
}

/// Polls until the host can connect to the peer again; returns when that happened.
fn wait_until_connects(sandbox: &Sandbox, peer: &str, limit: Duration) -> Option<Instant> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if on_host(sandbox, &["connect", peer, "8080"]) == "ok" {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn timed_isolation_with_agent() -> Result<(), Failed> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["8080"]);
    let peer = sandbox.peer_v4();
    let mut agent = spawn_agent(&mut sandbox);
    agent.expect_line("agent start", Duration::from_secs(5));
    let armed = agent.expect_line("arming", Duration::from_secs(5));
    assert!(armed.contains("armed"), "agent said: {armed}");
    let before = Instant::now();
    enforcer_ok(&sandbox, &["isolate", "--duration", "3s"]);
    let after = Instant::now();
    let status_now = status(&sandbox);
    assert_eq!(status_now["mode"], "automatic");
    assert!(status_now["expires_at"].is_string(), "{status_now}");
    check("during the isolation", &on_host(&sandbox, &["connect", &peer, "8080"]), "error EPERM")?;
    // The agent lifts it properly (detach, unpin, record) and says so.
    let lifted_line = agent.expect_line("the deadline", Duration::from_secs(5));
    let lifted = Instant::now();
    assert!(lifted_line.contains("deadline reached: isolation lifted"), "agent said: {lifted_line}");
    assert!(lifted >= before + Duration::from_secs(3), "lifted early");
    let late = lifted.saturating_duration_since(after + Duration::from_secs(3));
    assert!(late < Duration::from_secs(1), "lifted {late:?} after the deadline");
    check("after the deadline", &on_host(&sandbox, &["connect", &peer, "8080"]), "ok")?;
    // Then it re-arms, so the next isolation is instant again.
    let rearmed = agent.expect_line("re-arming", Duration::from_secs(2));
    assert!(rearmed.contains("armed"), "agent said: {rearmed}");
    let after_lift = status(&sandbox);
    assert_eq!(after_lift["isolated"], false);
    assert_eq!(after_lift["armed"], true);
    Ok(())
}

fn timed_isolation_without_agent() -> Result<(), Failed> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["8080"]);
    let peer = sandbox.peer_v4();
    let before = Instant::now();
    enforcer_ok(&sandbox, &["isolate", "--duration", "2s"]);
    let after = Instant::now();
    check("during the isolation", &on_host(&sandbox, &["connect", &peer, "8080"]), "error EPERM")?;
    let flowing =
        wait_until_connects(&sandbox, &peer, Duration::from_secs(5)).ok_or("traffic never flowed again")?;
    assert!(flowing >= before + Duration::from_secs(2), "enforcement stopped early");
    let late = flowing.saturating_duration_since(after + Duration::from_secs(2));
    assert!(late < Duration::from_secs(1), "the kernel kept enforcing {late:?} past the deadline");
    let leftover = status(&sandbox);
    assert_eq!(leftover["isolated"], false);
    assert!(leftover["attention"].is_string(), "status should ask for clean-up: {leftover}");
    Ok(())
}

fn release_cleans_up() -> Result<(), Failed> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["8080"]);
    let peer = sandbox.peer_v4();
    let host_if = sandbox.host_if.clone();
    enforcer_ok(&sandbox, &["isolate", "--interface", &host_if]);
    assert_eq!(status(&sandbox)["tags"], serde_json::json!(["ISOLATED FROM NETWORK"]));
    let out = enforcer_ok(&sandbox, &["release"]);
    assert!(out.contains("Released"), "{out}");
    let after = status(&sandbox);
    assert_eq!(after["isolated"], false);
    assert_eq!(after["tags"], serde_json::json!([]));
    assert!(!sandbox.pin_dir.exists(), "pins left behind in {}", sandbox.pin_dir.display());
    check("tcp after release", &on_host(&sandbox, &["connect", &peer, "8080"]), "ok")?;
    check("ping in after release", &on_peer(&sandbox, &["ping", &sandbox.host_v4()]), "ok")?;
    let again = enforcer_ok(&sandbox, &["release"]);
    assert!(again.contains("Not isolated"), "{again}");
    Ok(())
}

fn restores_after_reboot() -> Result<(), Failed> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["8080"]);
    let peer = sandbox.peer_v4();
    let allow = format!("out,tcp,{peer}/32,9000");
    enforcer_ok(&sandbox, &["isolate", "--allow", &allow, "--reason", "reboot test"]);
    // A reboot loses bpffs: removing the pins detaches everything.
    std::fs::remove_dir_all(&sandbox.pin_dir).expect("remove pins");
    check("with the pins gone", &on_host(&sandbox, &["connect", &peer, "8080"]), "ok")?;
    assert!(status(&sandbox)["attention"].as_str().is_some_and(|a| a.contains("restore")));
    let mut agent = spawn_agent(&mut sandbox);
    let started = agent.expect_line("agent start", Duration::from_secs(5));
    assert!(started.contains("re-installed"), "agent said: {started}");
    check("after the agent restored it", &on_host(&sandbox, &["connect", &peer, "8080"]), "error EPERM")?;
    let restored = status(&sandbox);
    assert_eq!(restored["isolated"], true);
    assert_eq!(restored["exclusions"], serde_json::json!([allow]));
    assert_eq!(restored["reason"], "reboot test");
    Ok(())
}

fn upgrade_retires_earlier_layout() -> Result<(), Failed> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["8080"]);
    let peer = sandbox.peer_v4();
    enforcer_ok(&sandbox, &["isolate", "--reason", "before the upgrade"]);
    // What an earlier cordon leaves: its pins under another layout version, still enforcing.
    let current = sandbox.pin_dir.join(enforcer_common::PIN_LAYOUT_VERSION);
    let earlier = sandbox.pin_dir.join("v1");
    std::fs::rename(&current, &earlier).expect("rename the pin layout on bpffs");
    check("under the earlier layout", &on_host(&sandbox, &["connect", &peer, "8080"]), "error EPERM")?;
    let before = status(&sandbox);
    assert!(
        before["attention"]
            .as_str()
            .is_some_and(|a| a.contains("earlier cordon version") && a.contains("/v1")),
        "status must point at the earlier layout: {before}"
    );
    let mut agent = spawn_agent(&mut sandbox);
    let started = agent.expect_line("agent start", Duration::from_secs(5));
    assert!(started.contains("re-installed"), "agent said: {started}");
    assert!(!earlier.exists(), "the earlier layout is still pinned at {}", earlier.display());
    check("after the take-over", &on_host(&sandbox, &["connect", &peer, "8080"]), "error EPERM")?;
    let after = status(&sandbox);
    assert_eq!(after["isolated"], true);
    assert_eq!(after["attention"], serde_json::Value::Null, "{after}");
    enforcer_ok(&sandbox, &["release"]);
    check("after release", &on_host(&sandbox, &["connect", &peer, "8080"]), "ok")?;
    assert!(!sandbox.pin_dir.exists(), "pins left behind in {}", sandbox.pin_dir.display());
    Ok(())
}

fn live_update() -> Result<(), Failed> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["9000", "9001"]);
    let peer = sandbox.peer_v4();
    let allow_9000 = format!("out,tcp,{peer}/32,9000");
    let allow_9001 = format!("out,tcp,{peer}/32,9001");
    enforcer_ok(&sandbox, &["isolate", "--allow", &allow_9000]);
    let mut held = sandbox.spawn(sandbox.on_host(&probe_binary(), &["probe", "hold", &peer, "9000"]));
    check("excluded connection", &held.expect_line("connect", Duration::from_secs(3)), "connected")?;
    let out = enforcer_ok(&sandbox, &["isolate", "--allow", &allow_9000, "--allow", &allow_9001]);
    assert!(out.starts_with("Isolation updated"), "{out}");
    held.expect_silence(Duration::from_millis(500))?;
    check("newly excluded port", &on_host(&sandbox, &["connect", &peer, "9001"]), "ok")?;
    // Dropping the 9000 exclusion severs its connection and refuses new ones.
    enforcer_ok(&sandbox, &["isolate", "--allow", &allow_9001]);
    check(
        "connection no longer excluded",
        &held.expect_line("sever", Duration::from_secs(1)),
        "broken ECONNABORTED",
    )?;
    check("port no longer excluded", &on_host(&sandbox, &["connect", &peer, "9000"]), "error EPERM")?;
    assert_eq!(status(&sandbox)["change_seq"], 3);
    Ok(())
}

fn armed_then_isolated() -> Result<(), Failed> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["8080"]);
    let peer = sandbox.peer_v4();
    let mut held = sandbox.spawn(sandbox.on_host(&probe_binary(), &["probe", "hold", &peer, "8080"]));
    check("connection before arming", &held.expect_line("connect", Duration::from_secs(3)), "connected")?;
    assert!(enforcer_ok(&sandbox, &["arm"]).starts_with("Armed"));
    let armed = status(&sandbox);
    assert_eq!(armed["isolated"], false, "{armed}");
    assert_eq!(armed["armed"], true, "{armed}");
    assert_eq!(armed["tags"], serde_json::json!([]));
    assert!(armed["attention"].is_null(), "{armed}");
    assert_eq!(armed["pinned_links"], serde_json::json!([]), "armed programs are not attached");
    held.expect_silence(Duration::from_millis(300))?;
    check("new connection while armed", &on_host(&sandbox, &["connect", &peer, "8080"]), "ok")?;
    assert!(enforcer_ok(&sandbox, &["isolate"]).starts_with("Isolated:"));
    check(
        "armed connection once isolated",
        &held.expect_line("sever", Duration::from_secs(1)),
        "broken ECONNABORTED",
    )?;
    check("new connection once isolated", &on_host(&sandbox, &["connect", &peer, "8080"]), "error EPERM")?;
    enforcer_ok(&sandbox, &["release"]);
    assert!(!sandbox.pin_dir.exists(), "release must detach armed programs too");
    Ok(())
}

/// Runs `cordon-enforcer args` for the sandbox with `/etc/resolv.conf` replaced (in a private
/// mount namespace) by one naming `resolver`.
fn enforcer_with_resolver(sandbox: &Sandbox, resolver: &str, args: &[&str]) -> String {
    let resolv = sandbox.state_dir.with_extension("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {resolver}\n")).expect("write resolv.conf");
    let inner = sandbox.enforcer(Path::new(ENFORCER), args);
    let mut words: Vec<String> = vec![inner.get_program().to_string_lossy().into_owned()];
    words.extend(inner.get_args().map(|a| a.to_string_lossy().into_owned()));
    let script = format!("mount --bind {} /etc/resolv.conf && exec \"$@\"", resolv.display());
    let mut command = Command::new("unshare");
    command.args(["-m", "sh", "-c", &script, "sh"]).args(&words);
    let (code, stdout, stderr) = output_of(command);
    assert_eq!(code, 0, "cordon-enforcer {args:?} failed: {stderr}");
    let _ = std::fs::remove_file(&resolv);
    stdout
}

fn dns_and_dhcp_on_request() -> Result<(), Failed> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["53", "54", "67"]);
    let peer = sandbox.peer_v4();
    // Off unless asked for.
    enforcer_with_resolver(&sandbox, &peer, &["isolate"]);
    check("dns without --allow-dns", &on_host(&sandbox, &["udp", &peer, "53"]), "error EPERM")?;
    check("dhcp without --allow-dhcp", &on_host(&sandbox, &["udp", &peer, "67"]), "error EPERM")?;
    // Asked for: DNS to the configured resolver only, on port 53 only; DHCP to its port.
    enforcer_with_resolver(&sandbox, &peer, &["isolate", "--allow-dns", "--allow-dhcp"]);
    check("dns (udp) to the resolver", &on_host(&sandbox, &["udp", &peer, "53"]), "ok")?;
    check("dns (tcp) to the resolver", &on_host(&sandbox, &["connect", &peer, "53"]), "ok")?;
    check("another port on the resolver", &on_host(&sandbox, &["udp", &peer, "54"]), "error EPERM")?;
    check("dhcp server port", &on_host(&sandbox, &["udp", &peer, "67"]), "ok")?;
    let status = status(&sandbox);
    assert_eq!(status["allow_dns"], true);
    assert_eq!(status["allow_dhcp"], true);
    // A resolver that is not the configured one gets nothing.
    enforcer_with_resolver(&sandbox, "198.51.100.53", &["isolate", "--allow-dns"]);
    check("dns to a host that is not the resolver", &on_host(&sandbox, &["udp", &peer, "53"]), "error EPERM")
}

#[expect(clippy::unnecessary_wraps, reason = "libtest-mimic test functions return Result")]
fn not_root_is_refused() -> Result<(), Failed> {
    let sandbox = Sandbox::new();
    // A copy nobody can run (our target directory lives under /root).
    let dir = sandbox.state_dir.with_extension("nobody");
    std::fs::create_dir_all(&dir).expect("create dir");
    let copy = dir.join("cordon-enforcer");
    std::fs::copy(ENFORCER, &copy).expect("copy enforcer");
    for path in [&dir, &copy] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    }
    let cgroup = sandbox.cgroup.to_string_lossy().into_owned();
    let mut command = Command::new("setpriv");
    command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(&copy).args([
        "--cgroup",
        &cgroup,
        "--state-dir",
        "/tmp/cordon-nobody",
        "isolate",
    ]);
    let (code, _, stderr) = output_of(command);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cordon-enforcer must run as root"), "{stderr}");
    assert!(stderr.contains("CAP_BPF"), "{stderr}");
    assert_eq!(status(&sandbox)["isolated"], false);
    Ok(())
}

fn failed_isolation_is_rolled_back() -> Result<(), Failed> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["8080"]);
    let peer = sandbox.peer_v4();
    let (code, _, stderr) =
        output_of(sandbox.enforcer(Path::new(ENFORCER), &["isolate", "--interface", "no-such-if0"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot attach cordon_tc_ingress to interface no-such-if0"), "{stderr}");
    assert!(!sandbox.pin_dir.exists(), "a failed isolation left pins behind");
    assert_eq!(status(&sandbox)["isolated"], false);
    check("traffic after the failed attempt", &on_host(&sandbox, &["connect", &peer, "8080"]), "ok")
}

#[expect(clippy::unnecessary_wraps, reason = "libtest-mimic test functions return Result")]
fn bad_input_changes_nothing() -> Result<(), Failed> {
    let sandbox = Sandbox::new();
    for (args, message) in [
        (
            vec!["isolate", "--allow", "out,tcp,10.0.0.1/8,443"],
            "invalid exclusion `out,tcp,10.0.0.1/8,443`: `10.0.0.1/8` has host bits set; the network is \
             10.0.0.0/8 (expected DIR,PROTO,CIDR[,PORTS], e.g. out,tcp,198.51.100.7/32,443)",
        ),
        (vec!["isolate", "--allow", "out, tcp,10.0.0.0/8"], "` tcp` contains whitespace"),
        (vec!["isolate", "--allow", "in,icmp,0.0.0.0/0,7"], "ICMP has no ports"),
        (vec!["isolate", "--duration", "10"], "invalid duration '10': it has no unit"),
        (vec!["isolate", "--allow-process", "a/b"], "give the process name, not a path"),
        (vec!["isolate", "--bogus"], "unexpected argument '--bogus'"),
    ] {
        let (code, _, stderr) = output_of(sandbox.enforcer(Path::new(ENFORCER), &args));
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let (code, _, stderr) = output_of({
        let mut command = Command::new(ENFORCER);
        command.args(["--cgroup", "/tmp", "status"]);
        command
    });
    assert_eq!(code, 2);
    assert!(stderr.contains("/tmp is not a cgroup v2 directory"), "{stderr}");
    assert_eq!(status(&sandbox)["isolated"], false);
    assert!(!sandbox.pin_dir.exists());
    Ok(())
}

/// Status lines from the status topic, read until one matches.
fn wait_for_status(
    statuses: &mut LineReader,
    what: &str,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = statuses.expect_line(what, left.max(Duration::from_millis(1)));
        // Every report is signed by the agent's own key, which names itself in the envelope.
        let Ok(report) = cordon_wire::open_report(line.as_bytes()) else {
            panic!("a message on the status topic is not a signed report: {line}");
        };
        let status = serde_json::to_value(&report.status).expect("a status serializes");
        if matches(&status) {
            return status;
        }
    }
}

#[expect(clippy::too_many_lines, reason = "one scenario told in order: setup, apply, eight refusals, release")]
fn signed_commands_over_kafka() -> Result<(), Failed> {
    let tansu = which("tansu");
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["8080"]);
    let peer = sandbox.peer_v4();
    let broker = format!("{peer}:9092");
    let broker_url = format!("tcp://{broker}");
    // The broker runs on the peer: the isolated host reaches it only through its management channel.
    let broker_args = ["broker", "--listener-url", &broker_url, "--advertised-listener-url", &broker_url];
    let mut broker_command = sandbox.on_peer(&tansu, &broker_args);
    broker_command.args(["--storage-engine", "memory://tansu/"]);
    sandbox.spawn_quiet(broker_command);
    check("broker up", &on_peer(&sandbox, &["port", &peer, "9092"]), "ok")?;
    for (topic, partitions) in [("cordon.commands", "3"), ("cordon.status", "1")] {
        let (code, _, stderr) = output_of(sandbox.on_peer(
            &tansu,
            &["topic", "create", topic, "--partitions", partitions, "--broker", &broker_url],
        ));
        assert_eq!(code, 0, "tansu topic create {topic}: {stderr}");
    }

    let key = cordon_wire::generate_signing_key();
    let files = sandbox.state_dir.with_extension("channel");
    std::fs::create_dir_all(&files).expect("create dir");
    let public_key_file = files.join("signing.pub");
    std::fs::write(&public_key_file, cordon_wire::key_to_base64(key.verifying_key().as_bytes()))
        .expect("write key");
    let config = files.join("enforcer.toml");
    std::fs::write(
        &config,
        format!(
            "host_id = \"sandbox-host\"\nheartbeat_seconds = 1\n[kafka]\nbrokers = \"{broker}\"\n[signing]\npublic_key_file = \"{}\"\n",
            public_key_file.display()
        ),
    )
    .expect("write config");

    let mut statuses = sandbox
        .spawn(sandbox.on_peer(&probe_binary(), &["probe", "kafka-consume", &broker, "cordon.status"]));
    statuses.expect_line("status consumer", Duration::from_secs(10));
    // The agent runs inside the isolated cgroup, like on a real host.
    let mut agent = sandbox.spawn(sandbox.agent_on_host(Path::new(ENFORCER), &config));
    let mut connected = false;
    for _ in 0..3 {
        if agent.expect_line("agent output", Duration::from_secs(15)).contains("command channel connected") {
            connected = true;
            break;
        }
    }
    assert!(connected, "the agent never connected its command channel");

    let now = i64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(),
    )
    .unwrap();
    let command = |id: &str, host: &str, generation: u64, expires_at_ms: i64, action: cordon_wire::Action| {
        cordon_wire::Command {
            version: cordon_wire::WIRE_VERSION,
            command_id: id.into(),
            host_id: host.into(),
            generation,
            issued_at_ms: now,
            expires_at_ms,
            action,
        }
    };
    let isolate = manual_isolation();
    let send = |bytes: &[u8]| {
        let file = files.join("message");
        std::fs::write(&file, bytes).expect("write message");
        let answer = on_peer(
            &sandbox,
            &["kafka-produce", &broker, "cordon.commands", "sandbox-host", &file.to_string_lossy()],
        );
        assert_eq!(answer, "ok", "produce");
    };
    let refusal_for = |statuses: &mut LineReader, id: &str| {
        wait_for_status(statuses, id, |s| s["command_id"] == id)["refusal"]
            .as_str()
            .unwrap_or("none")
            .to_owned()
    };

    // A valid command isolates the host; its answer and the heartbeats keep coming through the
    // management channel while everything else is cut.
    let valid = cordon_wire::seal(&command("c-1", "sandbox-host", 1, now + 60_000, isolate.clone()), &key);
    send(&valid);
    let applied = wait_for_status(&mut statuses, "c-1 applied", |s| s["command_id"] == "c-1");
    assert_eq!(applied["kind"], "applied", "{applied}");
    assert_eq!(applied["isolated"], true, "{applied}");
    assert_eq!(applied["tags"], serde_json::json!(["ISOLATED FROM NETWORK"]));
    check(
        "the host while isolated by command",
        &on_host(&sandbox, &["connect", &peer, "8080"]),
        "error EPERM",
    )?;
    let after = wait_for_status(&mut statuses, "a heartbeat after isolation", |s| {
        s["kind"] == "heartbeat" && s["isolated"] == true
    });
    assert_eq!(after["generation"], 1);
    // The brokers are the agent's channel only: another process in the cgroup gets nothing.
    check(
        "another process connecting to the broker while the agent reports",
        &on_host(&sandbox, &["connect", &peer, "9092"]),
        "error EPERM",
    )?;
    wait_for_status(&mut statuses, "a heartbeat after that", |s| s["kind"] == "heartbeat" && s["isolated"] == true);

    // Forged, replayed, expired, wrong-host, unsigned and garbage commands are refused.
    let forger = cordon_wire::generate_signing_key();
    let release = cordon_wire::Action::Release { reason: "test".into() };
    send(&cordon_wire::seal(&command("c-forged", "sandbox-host", 9, now + 60_000, release.clone()), &forger));
    let forgery =
        wait_for_status(&mut statuses, "refusal of the forgery", |s| s["refusal"] == "bad_signature");
    assert_eq!(forgery["isolated"], true, "{forgery}");
    // A forgery cannot be attributed to a command: its refusal carries no command id.
    assert!(forgery["command_id"].is_null(), "{forgery}");
    send(&valid);
    assert_eq!(refusal_for(&mut statuses, "c-1"), "stale_generation");
    send(&cordon_wire::seal(&command("c-expired", "sandbox-host", 5, now - 1, release.clone()), &key));
    assert_eq!(refusal_for(&mut statuses, "c-expired"), "expired");
    send(&cordon_wire::seal(&command("c-other", "other-host", 6, now + 60_000, release.clone()), &key));
    assert_eq!(refusal_for(&mut statuses, "c-other"), "wrong_host");
    send(br#"{"payload":"{}","signature":""}"#);
    wait_for_status(&mut statuses, "refusal of the unsigned command", |s| s["refusal"] == "unsigned");
    send(b"\x00\xffnot json at all");
    wait_for_status(&mut statuses, "refusal of garbage", |s| s["refusal"] == "malformed");
    // Authentic commands it cannot read (an exclusion that is no SPEC) or cannot apply (more
    // rules on one network than the kernel's table holds): each refused as what it is.
    let isolation_allowing = |exclusions: Vec<String>| cordon_wire::Action::Isolate {
        duration_seconds: None,
        exclusions,
        allowed_processes: vec![],
        allow_dns: false,
        allow_dhcp: false,
        reason: "test".into(),
    };
    let unreadable = isolation_allowing(vec!["out,tcp,999.1.2.3/32,443".into()]);
    send(&cordon_wire::seal(&command("c-unreadable", "sandbox-host", 3, now + 60_000, unreadable), &key));
    assert_eq!(refusal_for(&mut statuses, "c-unreadable"), "invalid_content");
    let crowded = isolation_allowing((0..20).map(|i| format!("out,tcp,10.0.0.0/8,{}", 1000 + 2 * i)).collect());
    send(&cordon_wire::seal(&command("c-crowded", "sandbox-host", 4, now + 60_000, crowded), &key));
    assert_eq!(refusal_for(&mut statuses, "c-crowded"), "failed");
    check(
        "still isolated after every refusal",
        &on_host(&sandbox, &["connect", &peer, "8080"]),
        "error EPERM",
    )?;

    // A valid release lets the host back on.
    send(&cordon_wire::seal(&command("c-2", "sandbox-host", 2, now + 60_000, release), &key));
    let released = wait_for_status(&mut statuses, "c-2 applied", |s| s["command_id"] == "c-2");
    assert_eq!(released["kind"], "applied", "{released}");
    assert_eq!(released["isolated"], false, "{released}");
    check("after the release command", &on_host(&sandbox, &["connect", &peer, "8080"]), "ok")?;
    let _ = std::fs::remove_dir_all(&files);
    Ok(())
}

/// tansu on the peer's port 9092, advertising 9093, where stunnel serves TLS and requires a
/// client certificate from the CA of `make_pki`; returns the TLS broker address, the scratch
/// directory and the PKI directory.
fn start_broker_behind_tls(sandbox: &mut Sandbox) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let tansu = which("tansu");
    let peer = sandbox.peer_v4();
    let (plain, secure) = (format!("{peer}:9092"), format!("{peer}:9093"));
    let broker_args = ["broker", "--listener-url", &format!("tcp://{plain}"), "--advertised-listener-url", &format!("tcp://{secure}")];
    let mut broker_command = sandbox.on_peer(&tansu, &broker_args);
    broker_command.args(["--storage-engine", "memory://tansu/"]);
    sandbox.spawn_quiet(broker_command);
    assert_eq!(on_peer(sandbox, &["port", &peer, "9092"]), "ok", "broker up");
    for (topic, partitions) in [("cordon.commands", "3"), ("cordon.status", "1")] {
        let create = ["topic", "create", topic, "--partitions", partitions, "--broker", &format!("tcp://{plain}")];
        let (code, _, stderr) = output_of(sandbox.on_peer(&tansu, &create));
        assert_eq!(code, 0, "tansu topic create {topic}: {stderr}");
    }
    let files = sandbox.state_dir.with_extension("tls");
    let pki = files.join("pki");
    make_pki(&pki, &peer);
    let stunnel_conf = pki.join("stunnel.conf");
    std::fs::write(
        &stunnel_conf,
        format!(
            "foreground = yes\npid =\n[kafka]\naccept = {secure}\nconnect = {plain}\ncert = {0}/server.crt\nkey = {0}/server.key\n\
             CAfile = {0}/ca.crt\nverifyChain = yes\nrequireCert = yes\n",
            pki.display()
        ),
    )
    .expect("write stunnel.conf");
    sandbox.spawn_quiet(sandbox.on_peer(Path::new("/usr/bin/stunnel4"), &[&stunnel_conf.to_string_lossy()]));
    assert_eq!(on_peer(sandbox, &["port", &peer, "9093"]), "ok", "stunnel up");
    (secure, files, pki)
}

/// A manual isolation with no exclusions, as a command's action.
fn manual_isolation() -> cordon_wire::Action {
    cordon_wire::Action::Isolate {
        duration_seconds: None,
        exclusions: vec![],
        allowed_processes: vec![],
        allow_dns: false,
        allow_dhcp: false,
        reason: "test".into(),
    }
}

/// The agent's channel through tansu behind stunnel, which requires a client certificate from
/// the CA: with `[kafka.tls]` the agent applies a signed isolation and reports over TLS while its
/// host is isolated (another process gets nothing from the TLS port), and is released; without a
/// client certificate it reaches no broker and the log says why.
fn agent_channel_over_mutual_tls() -> Result<(), Failed> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["8080"]);
    let peer = sandbox.peer_v4();
    let (secure, files, pki) = start_broker_behind_tls(&mut sandbox);
    let tls_env = format!("{0}/ca.crt;{0}/client.crt;{0}/client.key", pki.display());
    let probe = |sandbox: &Sandbox, args: &[&str]| {
        let mut full = vec!["probe"];
        full.extend_from_slice(args);
        let mut command = sandbox.on_peer(&probe_binary(), &full);
        command.env("CORDON_PROBE_KAFKA_TLS", &tls_env);
        command
    };

    let key = cordon_wire::generate_signing_key();
    let public_key_file = files.join("signing.pub");
    std::fs::write(&public_key_file, cordon_wire::key_to_base64(key.verifying_key().as_bytes())).expect("write key");
    let config = files.join("enforcer.toml");
    let write_config = |client: bool| {
        let client = if client {
            format!("cert_file = \"{0}/client.crt\"\nkey_file = \"{0}/client.key\"\n", pki.display())
        } else {
            String::new()
        };
        std::fs::write(
            &config,
            format!(
                "host_id = \"sandbox-host\"\nheartbeat_seconds = 1\n[kafka]\nbrokers = \"{secure}\"\n[kafka.tls]\nca_file = \"{}/ca.crt\"\n{client}\
                 [signing]\npublic_key_file = \"{}\"\n",
                pki.display(),
                public_key_file.display()
            ),
        )
        .expect("write config");
    };
    write_config(true);
    let mut statuses = sandbox.spawn(probe(&sandbox, &["kafka-consume", &secure, "cordon.status"]));
    statuses.expect_line("status consumer", Duration::from_secs(10));
    let mut agent = sandbox.spawn(sandbox.agent_on_host(Path::new(ENFORCER), &config));
    let until = Instant::now() + Duration::from_secs(20);
    while !agent.expect_line("agent output", until.saturating_duration_since(Instant::now())).contains("command channel connected") {}
    let now = i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let command = |id: &str, generation: u64, action: cordon_wire::Action| cordon_wire::Command {
        version: cordon_wire::WIRE_VERSION,
        command_id: id.into(),
        host_id: "sandbox-host".into(),
        generation,
        issued_at_ms: now,
        expires_at_ms: now + 60_000,
        action,
    };
    let send = |bytes: &[u8]| {
        let file = files.join("message");
        std::fs::write(&file, bytes).expect("write message");
        let (_, answer, _) = output_of(probe(&sandbox, &["kafka-produce", &secure, "cordon.commands", "sandbox-host", &file.to_string_lossy()]));
        assert_eq!(answer, "ok", "produce over TLS");
    };
    let isolate = manual_isolation();
    send(&cordon_wire::seal(&command("t-1", 1, isolate), &key));
    let applied = wait_for_status(&mut statuses, "t-1 applied", |s| s["command_id"] == "t-1");
    assert_eq!(applied["isolated"], true, "{applied}");
    check("connect out while isolated", &on_host(&sandbox, &["connect", &peer, "8080"]), "error EPERM")?;
    check("another process, to the TLS port", &on_host(&sandbox, &["connect", &peer, "9093"]), "error EPERM")?;
    wait_for_status(&mut statuses, "a heartbeat while isolated", |s| s["kind"] == "heartbeat" && s["isolated"] == true);
    send(&cordon_wire::seal(&command("t-2", 2, cordon_wire::Action::Release { reason: "test".into() }), &key));
    let released = wait_for_status(&mut statuses, "t-2 applied", |s| s["command_id"] == "t-2");
    assert_eq!(released["isolated"], false, "{released}");

    // Without a client certificate the broker's front refuses the agent; the log says why.
    for pid in sandbox.agent_pids(Path::new(ENFORCER)) {
        // SAFETY: signalling the agent this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    write_config(false);
    // Errors go to the agent's standard error: read it with the rest.
    let mut agent = sandbox.spawn(with_stderr(&sandbox.agent_on_host(Path::new(ENFORCER), &config)));
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let line = agent.expect_line("the TLS refusal", until.saturating_duration_since(Instant::now()));
        println!("agent: {line}");
        assert!(!line.contains("command channel connected"), "connected without a client certificate: {line}");
        if line.contains("Kafka client (") && line.contains("certificate required") {
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&files);
    Ok(())
}

/// Root on the host detaches two of the isolation's links (`BPF_LINK_DETACH`) and leaves their
/// pins, so the host is open though `status` still sees every pin: the agent notices at its next
/// check, attaches them again, says so loudly and records it; the host is cut off again.
fn detached_links_reattached() -> Result<(), Failed> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["8080"]);
    let peer = sandbox.peer_v4();
    enforcer_ok(&sandbox, &["isolate"]);
    check("isolated", &on_host(&sandbox, &["connect", &peer, "8080"]), "error EPERM")?;
    sandbox.detach_links(&probe_binary(), &["cordon_connect4", "cordon_egress", "cordon_ingress"]);
    check("after root detached the links", &on_host(&sandbox, &["connect", &peer, "8080"]), "ok")?;
    // The agent (its errors go to standard error: read them with the rest).
    let mut agent = sandbox.spawn(with_stderr(&sandbox.enforcer(Path::new(ENFORCER), &["run"])));
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let line = agent.expect_line("the repair", until.saturating_duration_since(Instant::now()));
        if line.contains("TAMPERING") {
            assert!(line.contains("cordon_connect4") && line.contains("cordon_egress"), "{line}");
            break;
        }
    }
    check("after the agent's repair", &on_host(&sandbox, &["connect", &peer, "8080"]), "error EPERM")?;
    let history = status(&sandbox)["history"].to_string();
    assert!(history.contains("tampered") && history.contains("attached again"), "{history}");
    Ok(())
}

/// The agent as it runs on a real host, with the default options: the sandbox is the whole
/// machine to it (its cgroup v2 root is the sandbox's cgroup, through a cgroup namespace, and its
/// network namespace is the sandbox host's, while `/sys/class/net` still lists the machine's
/// interfaces). The isolation guards the host's own interface (found by netlink), refuses new
/// traffic both ways, and the agent lifts it at its deadline.
fn whole_host_mode() -> Result<(), Failed> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["8080"]);
    let (peer, host) = (sandbox.peer_v4(), sandbox.host_v4());
    let config = sandbox.state_dir.with_extension("toml");
    // Only the heartbeat is not the default: new interfaces are looked for with each.
    std::fs::write(&config, "heartbeat_seconds = 1\n").expect("write enforcer.toml");
    let (pin_dir, state_dir, config) = (
        sandbox.pin_dir.to_string_lossy().into_owned(),
        sandbox.state_dir.to_string_lossy().into_owned(),
        config.to_string_lossy().into_owned(),
    );
    let base = ["--pin-dir", pin_dir.as_str(), "--state-dir", state_dir.as_str(), "--config", config.as_str()];
    let whole = |sandbox: &Sandbox, args: &[&str]| {
        let all: Vec<&str> = base.iter().chain(args).copied().collect();
        output_of(sandbox.as_whole_host(Path::new(ENFORCER), &all))
    };
    let (code, out, err) = whole(&sandbox, &["isolate", "--duration", "6s"]);
    assert_eq!(code, 0, "isolate in whole-host mode: {out}{err}");
    let (code, out, err) = whole(&sandbox, &["status", "--json"]);
    assert_eq!(code, 0, "status: {err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    let links = status["pinned_links"].to_string();
    assert!(links.contains(&format!("tc-ingress-{}", sandbox.host_if)), "the host's interface is guarded: {links}");
    check("connect out", &on_host(&sandbox, &["connect", &peer, "8080"]), "error EPERM")?;
    check("ping in", &on_peer(&sandbox, &["ping", &host]), "timeout")?;
    let agent_args: Vec<&str> = base.iter().copied().chain(["run"]).collect();
    let mut agent = sandbox.spawn(sandbox.as_whole_host(Path::new(ENFORCER), &agent_args));
    let started = agent.expect_line("agent start", Duration::from_secs(10));
    assert!(started.contains("adopted the pinned isolation"), "agent said: {started}");
    // An interface that appears while the host is isolated is guarded too.
    let added = Command::new("ip")
        .args(["-n", &sandbox.host_ns, "link", "add", "cdnew0", "type", "veth", "peer", "name", "cdnew1"])
        .status()
        .expect("run ip");
    assert!(added.success(), "cannot add an interface to the sandbox host");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, out, _) = whole(&sandbox, &["status", "--json"]);
        if out.contains("tc-ingress-cdnew0") {
            break;
        }
        assert!(Instant::now() < deadline, "the new interface was not guarded: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let until = Instant::now() + Duration::from_secs(8);
    loop {
        let line = agent.expect_line("the deadline", until.saturating_duration_since(Instant::now()));
        if line.contains("deadline reached: isolation lifted") {
            break;
        }
    }
    check("connect out after the deadline", &on_host(&sandbox, &["connect", &peer, "8080"]), "ok")?;
    check("ping in after the deadline", &on_peer(&sandbox, &["ping", &host]), "ok")?;
    Ok(())
}

/// The capabilities `ops/systemd/cordon-enforcer.service` gives the agent (`CAP_BPF` -> `bpf`).
fn unit_capabilities() -> Vec<String> {
    let path = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test"))
        .join("../ops/systemd/cordon-enforcer.service");
    let unit = std::fs::read_to_string(&path).expect("read the agent's systemd unit");
    let line = unit
        .lines()
        .find_map(|line| line.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit has a CapabilityBoundingSet line");
    line.split_whitespace().map(|cap| cap.trim_start_matches("CAP_").to_lowercase()).collect()
}

/// `cordon-enforcer args` for the sandbox, as root but with only `capabilities`.
fn enforcer_with_capabilities(
    sandbox: &Sandbox,
    capabilities: &[String],
    args: &[&str],
) -> (i32, String, String) {
    let set: Vec<String> = capabilities.iter().map(|cap| format!("+{cap}")).collect();
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{}", sandbox.host_ns))
        .arg("setpriv")
        .arg(format!("--bounding-set=-all,{}", set.join(",")))
        .arg("--inh-caps=-all")
        .arg(ENFORCER)
        .arg("--cgroup")
        .arg(&sandbox.cgroup)
        .arg("--pin-dir")
        .arg(&sandbox.pin_dir)
        .arg("--state-dir")
        .arg(&sandbox.state_dir)
        .args(args);
    output_of(command)
}

/// Isolates (severing a connection and sparing an exempt process's), checks, and releases with
/// only `capabilities`; says what went wrong, if anything.
fn isolate_and_release_with(capabilities: &[String]) -> Result<(), String> {
    let mut sandbox = Sandbox::new();
    start_peer_servers(&mut sandbox, &["8080"]);
    let peer = sandbox.peer_v4();
    let exempt = exempt_probe(&sandbox);
    let mut held = sandbox.spawn(sandbox.on_host(&probe_binary(), &["probe", "hold", &peer, "8080"]));
    let mut spared = sandbox.spawn(sandbox.on_host(&exempt, &["probe", "hold", &peer, "8080"]));
    assert_eq!(held.expect_line("a held connection", Duration::from_secs(3)), "connected");
    assert_eq!(spared.expect_line("an exempt connection", Duration::from_secs(3)), "connected");
    let (code, _, stderr) = enforcer_with_capabilities(
        &sandbox,
        capabilities,
        &["isolate", "--duration", "60s", "--allow-process", EXEMPT_NAME],
    );
    if code != 0 {
        return Err(format!("isolate exited {code}: {stderr}"));
    }
    match held.expect_silence(Duration::from_secs(2)) {
        Ok(()) => return Err("isolate succeeded but the held connection was not cut".into()),
        Err(said) if said.contains("'broken ECONNABORTED'") => {}
        Err(said) => return Err(format!("the held connection: {said}")),
    }
    spared.expect_silence(Duration::from_millis(500)).map_err(|e| format!("the exempt connection: {e}"))?;
    let refused = on_host(&sandbox, &["connect", &peer, "8080"]);
    if refused != "error EPERM" {
        return Err(format!("a new connection: {refused}"));
    }
    let (code, stdout, stderr) = enforcer_with_capabilities(&sandbox, capabilities, &["status", "--json"]);
    let status: serde_json::Value =
        serde_json::from_str(&stdout).map_err(|e| format!("status ({code}): {e} {stderr}"))?;
    if status["isolated"] != true {
        return Err(format!("status: {status}"));
    }
    let (code, _, stderr) = enforcer_with_capabilities(&sandbox, capabilities, &["release"]);
    if code != 0 {
        return Err(format!("release exited {code}: {stderr}"));
    }
    let after = on_host(&sandbox, &["connect", &peer, "8080"]);
    if after != "ok" {
        return Err(format!("after the release: {after}"));
    }
    Ok(())
}

fn runs_with_the_units_capabilities() -> Result<(), Failed> {
    which("setpriv");
    let capabilities = unit_capabilities();
    isolate_and_release_with(&capabilities).map_err(|e| format!("with {capabilities:?}: {e}"))?;
    // Nothing more than needed: without any one of them, something fails.
    for dropped in &capabilities {
        let fewer: Vec<String> = capabilities.iter().filter(|cap| *cap != dropped).cloned().collect();
        match isolate_and_release_with(&fewer) {
            Ok(()) => {
                return Err(
                    format!("everything worked without {dropped}: the unit should not grant it").into()
                )
            }
            // Never a half-isolated host that claims to be isolated: isolate itself must fail.
            Err(failure) if failure.starts_with("isolate exited 1: cordon-enforcer: error: ") => {
                println!("without {dropped}: {failure}");
            }
            Err(failure) => {
                return Err(format!("without {dropped}, isolate claimed success: {failure}").into())
            }
        }
    }
    Ok(())
}
