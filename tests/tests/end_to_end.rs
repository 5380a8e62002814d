//! The whole product on the real kernel and a real broker: `cordon serve` and the tansu broker run
//! on the sandbox's peer, `cordon-enforcer run` on the sandbox's host inside its test cgroup
//! (its only way out while isolated is its management channel to the broker). Detections go in
//! on Kafka, operators act through the `cordon` command line, and the tests watch the host's
//! connections: cut, refused, and flowing again.
//!
//! Needs root, the tansu broker (ops/install-toolchain.sh) and both binaries built beside this
//! test (`cargo build`, which ops/test.sh runs first); fails loudly, never skips, without them.
//! This binary is also the probe the sandbox runs (`end_to_end probe ...`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cordon_tests::{output_of, which, Sandbox};
use libtest_mimic::{Arguments, Failed, Trial};

/// The host id the agent runs under, as detections name it.
const HOST: &str = "sandbox-host";

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
    ];
    libtest_mimic::run(&Arguments::from_args(), tests).exit();
}

fn probe_binary() -> PathBuf {
    std::env::current_exe().expect("current exe")
}

/// A binary of the workspace, built beside this test (`target/<profile>/NAME`).
fn workspace_binary(name: &str) -> PathBuf {
    let exe = probe_binary();
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let binary = profile_dir.join(name);
    assert!(
        binary.exists(),
        "{} is missing: build the workspace first (`cargo build`, as ops/test.sh does)",
        binary.display()
    );
    binary
}



fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis()).expect("ms")
}

fn check(what: &str, got: &str, expected: &str) -> Result<(), Failed> {
    if got == expected {
        Ok(())
    } else {
        Err(format!("{what}: got '{got}', expected '{expected}'").into())
    }
}

/// Every part of the product, running in one sandbox; the scratch directory (rules, keys,
/// configs, the service's state) is removed on drop, after the processes are killed.
struct World {
    sandbox: Sandbox,
    dir: PathBuf,
    broker: String,
    cordon: PathBuf,
    enforcer: PathBuf,
    /// The thread echoing the running agent's output; it ends when the agent does.
    agent: Option<std::thread::JoinHandle<()>>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.sandbox.kill_children();
        let _ = std::fs::remove_dir_all(&self.dir);
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

impl World {
    fn start() -> World {
        let tansu = which("tansu");
        let cordon = workspace_binary("cordon");
        let enforcer = workspace_binary("cordon-enforcer");
        let sandbox = Sandbox::new();
        let dir = sandbox.state_dir.with_extension("e2e");
        std::fs::create_dir_all(dir.join("rules")).expect("create scratch dir");
        let peer = sandbox.peer_v4();
        let broker = format!("{peer}:9092");
        let mut world =
            World { sandbox, dir, broker: broker.clone(), cordon: cordon.clone(), enforcer, agent: None };

        // Servers on the peer: the probe's echo servers, then the broker and its topics.
        let servers = world.sandbox.on_peer(&probe_binary(), &["probe", "serve", "8080", "9000"]);
        let mut servers = world.sandbox.spawn(servers);
        assert_eq!(servers.expect_line("peer servers", Duration::from_secs(5)), "ready");
        servers.echo("peer servers".into());
        let url = format!("tcp://{broker}");
        let mut broker_command = world.sandbox.on_peer(
            &tansu,
            &[
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ],
        );
        broker_command.env("RUST_LOG", "error");
        world.sandbox.spawn_quiet(broker_command);
        let deadline = Instant::now() + Duration::from_secs(10);
        while world.peer(&["port", &peer, "9092"]) != "ok" {
            assert!(Instant::now() < deadline, "the broker did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        for (topic, partitions) in [
            ("edr.detections", "3"),
            ("cordon.commands", "3"),
            ("cordon.status", "1"),
            ("cordon.dead-letter", "1"),
        ] {
            let (code, _, stderr) =
                output_of(world.sandbox.on_peer(
                    &tansu,
                    &["topic", "create", topic, "--partitions", partitions, "--broker", &url],
                ));
            assert_eq!(code, 0, "tansu topic create {topic}: {stderr}");
        }

        // The service, on the peer beside the broker.
        for (name, text) in RULES {
            std::fs::write(world.dir.join("rules").join(name), text.replace("{PEER}", &peer))
                .expect("write rule");
        }
        let keys = world.dir.join("keys");
        let (code, _, stderr) = output_of({
            let mut keygen = Command::new(&cordon);
            keygen.args(["keygen", "--out"]).arg(&keys);
            keygen
        });
        assert_eq!(code, 0, "cordon keygen: {stderr}");
        let config = world.dir.join("cordon.toml");
        std::fs::write(
            &config,
            format!(
                "[kafka]\nbrokers = \"{broker}\"\n[rules]\ndir = \"{}\"\n[state]\ndir = \"{}\"\n[signing]\nkey_file = \"{}\"\n\
                 [api]\nlisten = \"127.0.0.1:8700\"\n[agents]\nresend_after_seconds = 2\n",
                world.dir.join("rules").display(),
                world.dir.join("service").display(),
                keys.join("signing.key").display()
            ),
        )
        .expect("write cordon.toml");
        let config = config.to_string_lossy().into_owned();
        let serve = world.sandbox.on_peer(&cordon, &["serve", "--config", &config]);
        let mut serve = world.sandbox.spawn(serve);
        let deadline = Instant::now() + Duration::from_secs(20);
        // Serving, and consuming: the consumer group has given it the detections' partitions.
        loop {
            let line = serve.expect_line("cordon serve to consume", Duration::from_secs(20));
            println!("serve: {line}");
            if line.contains("consuming") && line.contains("edr.detections/2") {
                break;
            }
            assert!(Instant::now() < deadline, "cordon serve did not start consuming");
        }
        // Read on, or the service would fail writing its log to a closed pipe.
        serve.echo("serve".into());

        // The agent, on the host, inside the isolated cgroup.
        std::fs::write(
            world.dir.join("enforcer.toml"),
            format!(
                "host_id = \"{HOST}\"\nheartbeat_seconds = 1\n[kafka]\nbrokers = \"{broker}\"\n[signing]\npublic_key_file = \"{}\"\n",
                keys.join("signing.pub").display()
            ),
        )
        .expect("write enforcer.toml");
        world.start_agent();
        world
    }

    /// Starts `cordon-enforcer run` on the host and waits for its command channel.
    fn start_agent(&mut self) {
        let cgroup = self.sandbox.cgroup.to_string_lossy().into_owned();
        let pin_dir = self.sandbox.pin_dir.to_string_lossy().into_owned();
        let state_dir = self.sandbox.state_dir.to_string_lossy().into_owned();
        let config = self.dir.join("enforcer.toml").to_string_lossy().into_owned();
        let args = [
            "--cgroup",
            &cgroup,
            "--pin-dir",
            &pin_dir,
            "--state-dir",
            &state_dir,
            "--config",
            &config,
            "run",
        ];
        let mut agent = self.sandbox.spawn(self.sandbox.on_host(&self.enforcer, &args));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let line = agent.expect_line("the agent's command channel", Duration::from_secs(20));
            println!("agent: {line}");
            if line.contains("command channel connected") {
                break;
            }
            assert!(Instant::now() < deadline, "the agent never connected its command channel");
        }
        self.agent = Some(agent.echo("agent".into()));
    }

    /// Kills the agent as `kill -9` would; returns once it is gone.
    fn kill_agent(&mut self) {
        let mut killed = 0;
        for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.starts_with(&*self.enforcer.to_string_lossy()) && cmdline.contains(&self.sandbox.name)
            {
                // SAFETY: signalling the agent this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                killed += 1;
            }
        }
        assert_eq!(killed, 1, "expected to find the one agent this test started");
        if let Some(echo) = self.agent.take() {
            echo.join().expect("the agent's output ends after kill -9");
        }
    }

    /// One probe run on the peer; its answer line.
    fn peer(&self, args: &[&str]) -> String {
        let mut full = vec!["probe"];
        full.extend_from_slice(args);
        output_of(self.sandbox.on_peer(&probe_binary(), &full)).1
    }

    /// One probe run on the isolated host; its answer line.
    fn host(&self, args: &[&str]) -> String {
        let mut full = vec!["probe"];
        full.extend_from_slice(args);
        output_of(self.sandbox.on_host(&probe_binary(), &full)).1
    }

    /// Whether the host can open a new connection to the peer's port 8080 right now.
    fn host_connects(&self) -> String {
        self.host(&["connect", &self.sandbox.peer_v4(), "8080"])
    }

    /// Publishes a detection for `host` on the detections topic, as an EDR would; returns its time.
    fn detect(&self, host: &str, event_id: &str, severity: u8) -> i64 {
        let time = now_ms();
        let event = serde_json::json!({
            "time": time, "severity_id": severity, "class_uid": 2004,
            "device": {"uid": host, "hostname": host}, "finding_info": {"uid": event_id, "title": "e2e"},
        });
        let file = self.dir.join(format!("{event_id}.json"));
        std::fs::write(&file, event.to_string()).expect("write event");
        let answer =
            self.peer(&["kafka-produce", &self.broker, "edr.detections", host, &file.to_string_lossy()]);
        assert_eq!(answer, "ok", "produce the detection");
        time
    }

    /// `cordon ARGS` as operator `e2e`, against the service's API (on the peer).
    fn cordon(&self, args: &[&str]) -> (i32, String, String) {
        let token = self.dir.join("service/api-token").to_string_lossy().into_owned();
        let mut full: Vec<&str> = args.to_vec();
        full.extend_from_slice(&[
            "--api",
            "http://127.0.0.1:8700",
            "--token-file",
            &token,
            "--operator",
            "e2e",
        ]);
        output_of(self.sandbox.on_peer(&self.cordon, &full))
    }

    fn cordon_ok(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.cordon(args);
        assert_eq!(code, 0, "cordon {args:?} failed: {stderr}\n{stdout}");
        stdout
    }

    fn host_view(&self) -> serde_json::Value {
        serde_json::from_str(&self.cordon_ok(&["host", HOST, "--json"])).expect("cordon host --json is JSON")
    }

    /// Polls `cordon host` until the host is in `state`; returns its view then.
    fn wait_for_state(&self, state: &str, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let (code, stdout, _) = self.cordon(&["host", HOST, "--json"]);
            if code == 0 {
                let view: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
                if view["state"] == state {
                    return view;
                }
                assert!(Instant::now() < deadline, "host never reached {state}; last seen: {view:#}");
            } else {
                assert!(Instant::now() < deadline, "host never reached {state}; cordon host: {stdout}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls until the host's new connections succeed; returns when they first did.
    fn wait_until_connects(&self, limit: Duration) -> Option<Instant> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if self.host_connects() == "ok" {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Polls until the host's new connections are refused; returns when they first were.
    fn wait_until_refused(&self, limit: Duration) -> Result<(), Failed> {
        let until = Instant::now() + limit;
        loop {
            let answer = self.host_connects();
            if answer == "error EPERM" {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(format!("the host still connects after {limit:?}: {answer}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn isolated_hosts(&self) -> Vec<serde_json::Value> {
        let listed = self.cordon_ok(&["hosts", "--tag", "ISOLATED FROM NETWORK", "--json"]);
        let listed: serde_json::Value = serde_json::from_str(&listed).expect("cordon hosts --json is JSON");
        listed.as_array().expect("a JSON array").clone()
    }
}

fn detection_until_deadline() -> Result<(), Failed> {
    let mut world = World::start();
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

/// The audit trail as `TO by WHO` lines.
fn view_audit(view: &serde_json::Value) -> Vec<String> {
    view["audit"]
        .as_array()
        .expect("audit trail")
        .iter()
        .map(|entry| format!("{} by {}", entry["to"].as_str().unwrap(), entry["by"].as_str().unwrap()))
        .map(|line| line.split(" (").next().unwrap().to_owned())
        .collect()
}

fn operator_isolate_and_release() -> Result<(), Failed> {
    let world = World::start();
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
    let world = World::start();
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
    let mut world = World::start();
    world.detect(HOST, "ev-ransom-2", 5);
    let deadline = epoch_ms(&world.wait_for_state("isolated", Duration::from_secs(10))["expires_at"]);
    world.kill_agent();
    check("after kill -9 of the agent", &world.host_connects(), "error EPERM")?;
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
