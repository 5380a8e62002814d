//! `cordon serve` against a real Kafka-protocol broker (tansu, started by the test), driven as
//! its users drive it: detections on Kafka, agents' reports on Kafka (the test plays the agent),
//! operators through the `cordon` command line. Detections become signed commands for the right
//! host, invalid events go to the dead-letter topic, deadlines release, approvals wait for an
//! operator, rules reload, unanswered commands are resent, and crashes lose and double nothing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use cordon_tests::SmallDisk;

const CORDON: &str = env!("CARGO_BIN_EXE_cordon");

/// This crate's directory, as cargo tells the running test (not compiled in: checkouts share a
/// target directory, see ARCHITECTURE.md).
fn crate_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test"))
}

/// Processes the test started, killed on drop; a scratch directory, removed on drop.
struct Harness {
    children: Vec<Child>,
    dir: PathBuf,
    brokers: String,
    /// The API address of the running service.
    api: String,
    /// Extra environment of `cordon serve`.
    env: Vec<(&'static str, &'static str)>,
    /// Extra lines of the `[kafka]` section of `cordon.toml`.
    kafka_config: String,
    /// Extra lines of the `[api]` section.
    api_config: String,
    /// Extra lines of the `[rules]` section.
    rules_config: String,
    /// Extra lines of the `[agents]` section.
    agents_config: String,
    /// The key the test's agents sign their reports with, and the hosts it is enrolled for.
    agent_key: cordon_wire::SigningKey,
    enrolled: std::cell::RefCell<std::collections::HashSet<String>>,
    /// The last report's `sent_at_ms`: each report is newer than the one before.
    last_sent_at_ms: std::cell::Cell<i64>,
    /// librdkafka settings of the test's own clients (TLS behind a front).
    client_settings: Vec<(String, String)>,
    /// The state directory of the next `cordon serve`, under `dir`.
    state: &'static str,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tansu() -> PathBuf {
    let output = Command::new("sh").args(["-c", "command -v tansu"]).output().expect("sh");
    assert!(output.status.success(), "these tests need the tansu broker: run ops/install-toolchain.sh");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A tansu broker on a free loopback port, with no topics, once it accepts connections.
fn start_broker() -> (Child, u16) {
    start_broker_advertising(None)
}

/// As [`start_broker`], advertising `advertised` (a TLS front's port) instead of its own port.
fn start_broker_advertising(advertised: Option<u16>) -> (Child, u16) {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
    let broker = Command::new(tansu())
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tansu");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (broker, port)
}

impl Harness {
    fn start(name: &str) -> Harness {
        Harness::start_advertising(name, None)
    }

    fn start_advertising(name: &str, advertised: Option<u16>) -> Harness {
        let dir = std::env::temp_dir().join(format!("cordon-service-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rules")).expect("create dirs");
        let (broker, port) = start_broker_advertising(advertised);
        let url = format!("tcp://127.0.0.1:{port}");
        let mut harness = Harness {
            children: vec![broker],
            dir,
            brokers: format!("127.0.0.1:{port}"),
            api: String::new(),
            env: Vec::new(),
            kafka_config: String::new(),
            api_config: String::new(),
            rules_config: String::new(),
            agents_config: String::new(),
            agent_key: cordon_wire::generate_signing_key(),
            enrolled: std::cell::RefCell::default(),
            last_sent_at_ms: std::cell::Cell::new(0),
            client_settings: Vec::new(),
            state: "state",
        };
        for (topic, partitions) in [
            ("edr.detections", "3"),
            ("cordon.commands", "3"),
            ("cordon.status", "1"),
            ("cordon.dead-letter", "1"),
            ("cordon.lease", "1"),
        ] {
            let status = Command::new(tansu())
                .args(["topic", "create", topic, "--partitions", partitions, "--broker", &url])
                .stdout(Stdio::null())
                .status()
                .expect("tansu topic create");
            assert!(status.success(), "cannot create topic {topic}");
        }
        harness.write_rules();
        harness
    }

    /// Severity 4 and up isolates for 3 s; severity 3 asks an operator to approve an hour.
    fn write_rules(&mut self) {
        self.add_rule("ransomware.yaml");
        self.add_rule("suspicious.yaml");
    }

    /// Puts a rule of `tests/fixtures/service-rules/` into the service's rules directory.
    fn add_rule(&self, file: &str) {
        self.put_rule(&format!("service-rules/{file}"));
    }

    /// Puts the rule file `tests/fixtures/FIXTURE` into the service's rules directory.
    fn put_rule(&self, fixture: &str) {
        let source = crate_dir().join("tests/fixtures").join(fixture);
        let name = source.file_name().expect("a file");
        std::fs::copy(&source, self.dir.join("rules").join(name))
            .unwrap_or_else(|error| panic!("copy {}: {error}", source.display()));
    }

    /// Starts `cordon serve` (with the failpoint `failpoint`, if any); returns the channel of its
    /// output lines. The signing key is made once per harness and kept across restarts.
    fn serve_with(&mut self, failpoint: &str) -> mpsc::Receiver<String> {
        let keys = self.dir.join("keys");
        if !keys.exists() {
            let output =
                Command::new(CORDON).args(["keygen", "--out"]).arg(&keys).output().expect("cordon keygen");
            assert!(output.status.success(), "keygen: {}", String::from_utf8_lossy(&output.stderr));
        }
        let config = self.dir.join("cordon.toml");
        std::fs::write(
            &config,
            format!(
                "[kafka]\nbrokers = \"{}\"\n{}[rules]\ndir = \"{}\"\npoll_seconds = 1\n{}[state]\ndir = \"{}\"\n\
                 [signing]\nkey_file = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n{}[agents]\nresend_after_seconds = 2\n{}",
                self.brokers,
                self.kafka_config,
                self.dir.join("rules").display(),
                self.rules_config,
                self.dir.join(self.state).display(),
                keys.join("signing.key").display(),
                self.api_config,
                self.agents_config
            ),
        )
        .expect("write config");
        let mut child = Command::new(CORDON)
            .args(["serve", "--config"])
            .arg(&config)
            .env("CORDON_FAILPOINT", failpoint)
            .envs(self.env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cordon serve");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        self.children.push(child);
        // Both streams, line by line, echoed for the test's log and kept in `serve.log`.
        let (sender, receiver) = mpsc::channel();
        let errors = sender.clone();
        let started = Instant::now();
        let log = std::sync::Arc::new(std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("serve.log"))
                .expect("serve.log"),
        ));
        let error_log = std::sync::Arc::clone(&log);
        let keep = |log: &std::sync::Mutex<std::fs::File>, line: &str| {
            use std::io::Write as _;
            let _ = writeln!(log.lock().expect("log"), "{line}");
        };
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("serve +{:.3}s: {line}", started.elapsed().as_secs_f64());
                keep(&log, &line);
                let _ = sender.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                println!("serve +{:.3}s: {line}", started.elapsed().as_secs_f64());
                keep(&error_log, &line);
                let _ = errors.send(line);
            }
        });
        receiver
    }

    /// Starts `cordon serve` and waits until it serves and consumes the detections;
    /// remembers its API address.
    fn serve(&mut self) -> mpsc::Receiver<String> {
        let lines = self.serve_started();
        wait_for_line(
            &lines,
            "consuming cordon.status/0, edr.detections/0, edr.detections/1, edr.detections/2.",
        );
        lines
    }

    /// Starts `cordon serve` and waits until its API serves (its consumer may still be joining
    /// the group); remembers the API address.
    fn serve_started(&mut self) -> mpsc::Receiver<String> {
        let lines = self.serve_with("");
        let line = wait_for_line(&lines, "; API on ");
        let address = line.split("API on ").nth(1).expect("address").trim_end_matches('.');
        address.clone_into(&mut self.api);
        lines
    }

    fn public_key(&self) -> cordon_wire::VerifyingKey {
        let public = std::fs::read_to_string(self.dir.join("keys/signing.pub")).expect("read public key");
        cordon_wire::verifying_key_from_base64(&public).expect("public key")
    }

    /// The lines of every `cordon serve` this harness started that contain `needle`, in order.
    fn log_lines(&self, needle: &str) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default();
        log.lines().filter(|line| line.contains(needle)).map(str::to_owned).collect()
    }

    /// Runs `cordon serve` on the config of the last start, which must refuse to start; returns
    /// what it said on standard error.
    fn serve_refused(&self) -> String {
        let output =
            Command::new(CORDON).args(["serve", "--config"]).arg(self.dir.join("cordon.toml")).output().expect("run cordon serve");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!output.status.success(), "cordon serve started: {stdout}{stderr}");
        assert!(!stdout.contains("API on"), "{stdout}");
        stderr
    }

    /// Kills `cordon serve` as `kill -9` would (the broker keeps running).
    fn kill_service(&mut self) {
        let mut service = self.children.pop().expect("a running service");
        let _ = service.kill();
        let _ = service.wait();
    }

    /// Runs the `cordon` client against the service's API as operator `alice`.
    fn cordon(&self, args: &[&str]) -> std::process::Output {
        Command::new(CORDON)
            .args(args)
            .args(["--api", &self.api, "--token-file"])
            .arg(self.dir.join("state/api-token"))
            .args(["--operator", "alice"])
            .env_remove("CORDON_TOKEN")
            .output()
            .expect("run cordon")
    }

    /// Runs the client and returns its standard output, asserting success.
    fn cordon_ok(&self, args: &[&str]) -> String {
        let output = self.cordon(args);
        assert!(
            output.status.success(),
            "cordon {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn host_json(&self, host: &str) -> serde_json::Value {
        serde_json::from_str(&self.cordon_ok(&["host", host, "--json"])).expect("host --json is JSON")
    }

    /// Waits until the host's audit trail (through the API) shows it moved `from` -> `to` by one
    /// whose name starts with `by` (`rules ransomware`, `agent`, `scheduler`; empty: anyone), at
    /// `generation` if given; returns that line of the trail. Panics with the host after 20 s.
    fn wait_for_move(
        &self,
        host: &str,
        (from, to): (&str, &str),
        by: &str,
        generation: Option<u64>,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let output = self.cordon(&["host", host, "--json"]);
            let view: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
            let moved = view["audit"].as_array().and_then(|trail| {
                trail.iter().rev().find(|step| {
                    step["from"] == from
                        && step["to"] == to
                        && step["by"].as_str().is_some_and(|who| who.starts_with(by))
                        && generation.is_none_or(|generation| step["generation"] == generation)
                })
            });
            if let Some(step) = moved {
                return step.clone();
            }
            assert!(Instant::now() < deadline, "{host} never moved {from} -> {to} by '{by}': {view:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Publishes what an agent would after applying (or refusing) `command`.
    fn report(&self, command: &cordon_wire::Command, isolated: bool) {
        self.report_with(command, isolated, None, (0, 0));
    }

    /// A report with a refusal (`kind` refused) and packet counters (dropped, allowed).
    fn report_with(
        &self,
        command: &cordon_wire::Command,
        isolated: bool,
        refusal: Option<&str>,
        packets: (u64, u64),
    ) {
        let status = serde_json::json!({
            "version": 1, "host_id": command.host_id, "sent_at_ms": 0,
            "kind": if refusal.is_some() { "refused" } else { "applied" },
            "command_id": command.command_id, "generation": command.generation, "isolated": isolated,
            "mode": isolated.then_some("automatic"), "expires_at_ms": null, "exclusions": [],
            "tags": if isolated { vec!["ISOLATED FROM NETWORK", "linux"] } else { vec!["linux"] },
            "refusal": refusal, "error": null, "packets_dropped": packets.0, "packets_allowed": packets.1
        });
        self.publish_status(status);
    }

    /// Publishes `status` as the host's enrolled agent would: signed with the agent key (enrolled
    /// for the host first, through the CLI), keyed by the host, and newer than the last report.
    fn publish_status(&self, mut status: serde_json::Value) {
        let host = status["host_id"].as_str().expect("a host_id").to_owned();
        self.enroll(&host);
        status["sent_at_ms"] = self.next_sent_at_ms().into();
        let status: cordon_wire::Status = serde_json::from_value(status).expect("a status report");
        self.produce("cordon.status", &host, &cordon_wire::seal_report(&status, &self.agent_key));
    }

    fn next_sent_at_ms(&self) -> i64 {
        let now = i64::try_from(std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_millis()).unwrap();
        let sent = now.max(self.last_sent_at_ms.get() + 1);
        self.last_sent_at_ms.set(sent);
        sent
    }

    /// The agent key's public half, in a file for `cordon agents enroll --key`.
    fn agent_key_file(&self) -> PathBuf {
        let path = self.dir.join("agent.pub");
        std::fs::write(&path, cordon_wire::key_to_base64(self.agent_key.verifying_key().as_bytes()))
            .expect("write agent.pub");
        path
    }

    /// Enrolls the test's agent key for `host`, once.
    fn enroll(&self, host: &str) {
        if self.enrolled.borrow().contains(host) {
            return;
        }
        let key = self.agent_key_file();
        self.cordon_ok(&["agents", "enroll", host, "--key", &key.to_string_lossy()]);
        self.enrolled.borrow_mut().insert(host.to_owned());
    }

    fn produce(&self, topic: &str, key: &str, value: &[u8]) {
        let producer = self.producer();
        producer.send(BaseRecord::to(topic).key(key).payload(value)).map_err(|(e, _)| e).expect("send");
        producer.flush(Duration::from_secs(10)).expect("flush");
    }

    /// A client configuration with the test's own settings (TLS behind a front).
    /// A producer to the harness's broker, as an EDR or an agent would use.
    fn producer(&self) -> BaseProducer {
        self.client()
            .set("bootstrap.servers", &self.brokers)
            .set("partitioner", "murmur2_random")
            // Room for the hostile, oversized messages the fault tests publish.
            .set("message.max.bytes", "4000000")
            .create()
            .expect("producer")
    }

    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.client_settings {
            config.set(key, value);
        }
        config
    }

    fn consumer(&self, topic: &str) -> BaseConsumer {
        let consumer: BaseConsumer = self
            .client()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("test-{topic}-{}", std::process::id()))
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        consumer
    }
}

/// The next message on `consumer`, within `timeout`.
fn next_message(consumer: &BaseConsumer, timeout: Duration) -> (String, Vec<u8>) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            return (key, message.payload().unwrap_or_default().to_vec());
        }
    }
    panic!("no message within {timeout:?}");
}

/// The next command on `consumer`, opened with `key`.
fn next_command(
    consumer: &BaseConsumer,
    key: &cordon_wire::VerifyingKey,
    timeout: Duration,
) -> cordon_wire::Command {
    let (host, envelope) = next_message(consumer, timeout);
    let command = cordon_wire::open(&envelope, key).expect("the command verifies with the public key");
    assert_eq!(host, command.host_id, "commands are keyed by their host");
    command
}

/// Asserts that no message arrives on `consumer` for `quiet`.
fn no_message(consumer: &BaseConsumer, quiet: Duration) {
    let deadline = Instant::now() + quiet;
    while Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let text = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
            panic!("expected no message, got {text}");
        }
    }
}

fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {
                panic!("cordon serve never said '{needle}'")
            }
        }
    }
}

/// Polls `/readyz` until it answers 200 (the broker statistics that show the connection come
/// every 2 s); panics with its last answer after 10 s.
fn wait_until_ready(api: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(api, "/readyz");
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "never ready: {status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first line containing `needle` within `limit` (`None` when none came).
fn wait_for_line_within(lines: &mpsc::Receiver<String>, needle: &str, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains(needle) => return Some(line),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// Waits until every one of `needles` was said, in any order.
fn wait_for_lines(lines: &mpsc::Receiver<String>, needles: &[&str]) {
    let mut missing: Vec<&str> = needles.to_vec();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => missing.retain(|needle| !line.contains(needle)),
            Err(error) => panic!("cordon serve never said {missing:?} ({error})"),
        }
    }
}

fn detection(host: &str, id: &str, severity: u8) -> Vec<u8> {
    let now = i64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(),
    )
    .unwrap();
    format!(
        r#"{{"time":{now},"severity_id":{severity},"device":{{"uid":"{host}"}},"finding_info":{{"uid":"{id}"}}}}"#
    )
    .into_bytes()
}

#[test]
fn a_detection_isolates_its_host_until_the_deadline() {
    let mut harness = Harness::start("flow");
    let _lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");

    let started = Instant::now();
    harness.produce("edr.detections", "web-01", &detection("web-01", "ev-1", 5));
    let command = next_command(&commands, &key, Duration::from_secs(15));
    assert_eq!((command.host_id.as_str(), command.generation), ("web-01", 1));
    match &command.action {
        cordon_wire::Action::Isolate { duration_seconds, exclusions, .. } => {
            assert!(matches!(duration_seconds, Some(2 | 3)), "duration {duration_seconds:?}");
            assert_eq!(exclusions, &vec!["out,tcp,198.51.100.7/32,443".to_owned()]);
        }
        cordon_wire::Action::Release { .. } => {
            panic!("expected an isolate command, got {:?}", command.action)
        }
    }
    harness.wait_for_move("web-01", ("not_isolated", "isolating"), "rules ransomware", Some(1));

    // Tagged from the moment the command is issued; listed by tag, as JSON.
    let listed: serde_json::Value =
        serde_json::from_str(&harness.cordon_ok(&["hosts", "--tag", "ISOLATED FROM NETWORK", "--json"]))
            .expect("hosts --json is JSON");
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["host"], "web-01");
    assert_eq!(listed[0]["state"], "isolating");
    assert_eq!(listed[0]["mode"], "automatic");
    assert!(listed[0]["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{}", listed[0]);
    assert_eq!(listed[0]["tags"], serde_json::json!(["ISOLATED FROM NETWORK"]));

    harness.report(&command, true);
    harness.wait_for_move("web-01", ("isolating", "isolated"), "agent", Some(1));
    let host = harness.host_json("web-01");
    assert_eq!(host["tags"], serde_json::json!(["ISOLATED FROM NETWORK", "linux"]), "agent tags are kept");

    // A duplicate of the same event isolates nothing twice.
    harness.produce("edr.detections", "web-01", &detection("web-01", "ev-1", 5));

    // At the deadline (3 s) the scheduler sends a release with the next generation.
    let release = next_command(&commands, &key, Duration::from_secs(10));
    assert!(matches!(release.action, cordon_wire::Action::Release { .. }), "{release:?}");
    assert_eq!(release.generation, 2, "the duplicate event must not have produced a command");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(2), "released early ({elapsed:?})");
    assert!(elapsed < Duration::from_secs(5), "released late ({elapsed:?})");
    harness.report(&release, false);
    harness.wait_for_move("web-01", ("releasing", "released"), "agent", Some(2));
    assert_eq!(harness.cordon_ok(&["hosts", "--tag", "ISOLATED FROM NETWORK"]).trim(), "No hosts.");

    let host = harness.host_json("web-01");
    let trail: Vec<(String, String)> = host["audit"]
        .as_array()
        .expect("audit trail")
        .iter()
        // The operator's enrolment of the agent's key is in the trail too, before the rest.
        .filter(|e| !e["why"].as_str().unwrap().starts_with("agent key enrolled"))
        .map(|e| (e["to"].as_str().unwrap().to_owned(), e["by"].as_str().unwrap().to_owned()))
        .collect();
    let expected = [
        ("isolating", "rules ransomware"),
        ("isolated", "agent"),
        ("releasing", "scheduler"),
        ("released", "agent"),
    ];
    assert_eq!(trail, expected.map(|(a, b)| (a.to_owned(), b.to_owned())));
}

#[test]
fn invalid_events_go_to_the_dead_letter_topic_with_reason_and_bytes() {
    let mut harness = Harness::start("dlq");
    let _lines = harness.serve();
    let dead_letters = harness.consumer("cordon.dead-letter");
    for (bad, reason) in [
        (b"{ not json".to_vec(), "JSON"),
        (br#"{"time":1,"severity_id":5,"finding_info":{"uid":"x"}}"#.to_vec(), "device"),
        (vec![0xff, 0xfe, 0x00], "UTF-8"),
    ] {
        harness.produce("edr.detections", "k", &bad);
        let (_, record) = next_message(&dead_letters, Duration::from_secs(15));
        let record: serde_json::Value = serde_json::from_slice(&record).expect("dead letter is JSON");
        let said = record["reason"].as_str().unwrap_or_default();
        assert!(said.contains(reason), "reason '{said}' should mention {reason}");
        let original = record["original_base64"].as_str().unwrap_or_default();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(original).unwrap(), bad);
    }
    // The consumer kept going: a valid event after the bad ones still becomes a decision.
    harness.produce("edr.detections", "web-02", &detection("web-02", "ev-2", 5));
    harness.wait_for_move("web-02", ("not_isolated", "isolating"), "", None);
}

#[test]
fn operators_isolate_and_release_through_the_cli() {
    let mut harness = Harness::start("operator");
    let _lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");

    // Bad input: every problem named, exit code 2, nothing sent.
    let output = harness.cordon(&[
        "isolate",
        "db-01",
        "--manual",
        "--allow",
        "out,tcp,300.1.1.1/32,443",
        "--allow-process",
        "a/b",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("2 problem(s)") && stderr.contains("300.1.1.1"), "{stderr}");
    assert!(stderr.contains("process name \"a/b\""), "{stderr}");
    let output = harness.cordon(&["isolate", "db-01"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--for"), "a duration or --manual is required");
    // A wrong token is refused, and says so.
    std::fs::write(harness.dir.join("wrong-token"), "not-the-token-at-all\n").unwrap();
    let output = Command::new(CORDON)
        .args(["hosts", "--api", &harness.api, "--token-file"])
        .arg(harness.dir.join("wrong-token"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("HTTP 401"), "{output:?}");
    no_message(&commands, Duration::from_millis(500));

    let said = harness.cordon_ok(&[
        "isolate",
        "db-01",
        "--manual",
        "--reason",
        "incident 7",
        "--allow",
        "out,tcp,10.0.0.0/8,22",
    ]);
    assert_eq!(said.trim(), "db-01: isolation requested; now isolating (generation 1).");
    let command = next_command(&commands, &key, Duration::from_secs(10));
    match &command.action {
        cordon_wire::Action::Isolate { duration_seconds: None, exclusions, reason, .. } => {
            assert_eq!(exclusions, &vec!["out,tcp,10.0.0.0/8,22".to_owned()]);
            assert!(reason.contains("operator alice") && reason.contains("incident 7"), "{reason}");
        }
        other => panic!("expected a manual isolation, got {other:?}"),
    }
    harness.report(&command, true);
    harness.wait_for_move("db-01", ("isolating", "isolated"), "agent", None);

    harness.cordon_ok(&["release", "db-01", "--reason", "cleaned"]);
    let release = next_command(&commands, &key, Duration::from_secs(10));
    assert!(matches!(release.action, cordon_wire::Action::Release { .. }));
    assert_eq!(release.generation, 2);

    let shown = harness.cordon_ok(&["host", "db-01"]);
    assert!(shown.contains("State:       releasing (generation 2)"), "{shown}");
    assert!(shown.contains("by operator alice (127.0.0.1:"), "the audit trail names the caller: {shown}");
    assert!(shown.contains("incident 7") && shown.contains("cleaned"), "{shown}");
}

#[test]
fn approval_waits_for_an_operator() {
    let mut harness = Harness::start("approval");
    let lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");
    harness.produce("edr.detections", "plc-01", &detection("plc-01", "ap-1", 3));
    harness.produce("edr.detections", "plc-02", &detection("plc-02", "ap-2", 3));
    wait_for_lines(
        &lines,
        &[
            "plc-01: not_isolated -> pending_approval by rules suspicious",
            "plc-02: not_isolated -> pending_approval by rules suspicious",
        ],
    );
    let pending: serde_json::Value =
        serde_json::from_str(&harness.cordon_ok(&["hosts", "--state", "pending_approval", "--json"]))
            .unwrap();
    assert_eq!(pending.as_array().map(Vec::len), Some(2), "{pending}");
    assert_eq!(pending[0]["pending"]["duration_seconds"], 3_600);
    no_message(&commands, Duration::from_secs(1));

    harness.cordon_ok(&["deny", "plc-02", "--reason", "false positive"]);
    let output = harness.cordon(&["approve", "plc-02"]);
    assert_eq!(output.status.code(), Some(1), "refused in the host's state: could not be done");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no approval is pending for host plc-02 (HTTP 409)")
    );

    harness.cordon_ok(&["approve", "plc-01"]);
    let command = next_command(&commands, &key, Duration::from_secs(10));
    assert_eq!(command.host_id, "plc-01");
    assert!(matches!(command.action, cordon_wire::Action::Isolate { duration_seconds: Some(3_600), .. }));
    let plc02 = harness.host_json("plc-02");
    assert_eq!((plc02["state"].as_str(), plc02["generation"].as_u64()), (Some("not_isolated"), Some(0)));
    no_message(&commands, Duration::from_secs(1));
}

#[test]
fn rules_reload_on_change_and_sighup_and_a_broken_set_is_refused() {
    let mut harness = Harness::start("reload");
    let lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");

    harness.put_rule("refused-rules/broken.yaml");
    let refused = wait_for_line(&lines, "rules NOT reloaded");
    assert!(refused.contains("the 2 running rule(s) stay in force"), "{refused}");
    harness.produce("edr.detections", "h-1", &detection("h-1", "r-1", 5));
    assert_eq!(next_command(&commands, &key, Duration::from_secs(10)).host_id, "h-1", "old rules still act");

    std::fs::remove_file(harness.dir.join("rules/broken.yaml")).unwrap();
    harness.add_rule("low.yaml");
    wait_for_line(&lines, "rules reloaded after a change in the rules directory: 3 rule(s)");
    // A field no rule looked at before the reload: events are parsed for the new rules.
    let with_process = String::from_utf8(detection("h-2", "r-2", 2)).unwrap().replacen(
        r#""severity_id""#,
        r#""process":{"name":"evil.exe","pid":4},"severity_id""#,
        1,
    );
    harness.produce("edr.detections", "h-2", with_process.as_bytes());
    let command = next_command(&commands, &key, Duration::from_secs(10));
    assert_eq!(command.host_id, "h-2");
    assert!(matches!(command.action, cordon_wire::Action::Isolate { duration_seconds: None, .. }));

    let pid = harness.children.last().expect("service").id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    wait_for_line(&lines, "rules reloaded after SIGHUP: 3 rule(s)");
}

#[test]
fn unanswered_commands_are_resent_with_the_same_generation() {
    let mut harness = Harness::start("resend");
    let lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");
    harness.cordon_ok(&["isolate", "r-01", "--for", "1h"]);
    let first = next_command(&commands, &key, Duration::from_secs(10));
    let again = next_command(&commands, &key, Duration::from_secs(10));
    wait_for_line(&lines, "r-01: resending command 1");
    assert_eq!((again.generation, &again.command_id), (first.generation, &first.command_id));
    assert!(again.issued_at_ms > first.issued_at_ms, "a resend is signed anew with a fresh expiry");
    harness.report(&again, true);
    harness.wait_for_move("r-01", ("isolating", "isolated"), "agent", None);
    no_message(&commands, Duration::from_secs(5));
}

/// Produces one detection into a service that crashes at `failpoint`, restarts it, and checks
/// that the isolation is decided once, sent, and released at its deadline.
fn crash_at(failpoint: &str) {
    let mut harness = Harness::start(failpoint);
    let lines = harness.serve_with(failpoint);
    wait_for_line(&lines, "API on http://");
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");
    harness.produce("edr.detections", "web-09", &detection("web-09", "crash-1", 5));
    wait_for_line(&lines, &format!("failpoint {failpoint}: aborting"));
    let mut crashed = harness.children.pop().expect("service");
    let status = crashed.wait().expect("wait");
    assert!(!status.success(), "the service must have died at the failpoint");

    let _lines = harness.serve();
    // Until the deadline's release: the isolation, perhaps resent (same generation and id) while
    // no agent answers, never a second isolation; then the release, on time.
    let mut isolations = 0;
    loop {
        let command = next_command(&commands, &key, Duration::from_secs(30));
        assert_eq!(command.host_id, "web-09");
        match command.action {
            cordon_wire::Action::Isolate { .. } => {
                assert_eq!((command.generation, command.command_id.as_str()), (1, "web-09-1"));
                isolations += 1;
            }
            cordon_wire::Action::Release { .. } => {
                assert_eq!(command.generation, 2);
                break;
            }
        }
    }
    assert!(isolations >= 1, "the isolation was lost");
    let host = harness.host_json("web-09");
    let audit = host["audit"].as_array().unwrap();
    let isolating = audit.iter().filter(|entry| entry["to"] == "isolating").count();
    assert_eq!(isolating, 1, "one isolation, decided once: {host}");
    assert_eq!(audit.last().unwrap()["why"], "deadline reached");
}

#[test]
fn crash_after_the_state_is_durable_but_before_the_offset_commit_isolates_once() {
    crash_at("after-flush");
}

#[test]
fn crash_before_the_state_is_durable_loses_nothing() {
    crash_at("before-flush");
}

#[test]
fn crash_after_the_offset_commit_but_before_the_send_loses_no_command() {
    crash_at("after-commit");
}

#[test]
fn crash_before_the_command_is_sent_loses_no_command() {
    crash_at("before-send");
}

#[test]
fn isolations_due_during_downtime_are_lifted_at_restart() {
    let mut harness = Harness::start("downtime");
    // Kept alive: the service's output is read as long as the receiver is.
    let _lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");
    for (host, duration) in [("d-02", "1h"), ("d-01", "3s")] {
        harness.cordon_ok(&["isolate", host, "--for", duration]);
        let command = next_command(&commands, &key, Duration::from_secs(10));
        harness.report(&command, true);
        harness.wait_for_move(host, ("isolating", "isolated"), "agent", Some(command.generation));
    }
    harness.kill_service();
    std::thread::sleep(Duration::from_secs(4));
    let restarted = Instant::now();
    // Deadlines do not wait for the consumer group: the overdue release goes out at start-up.
    let lines = harness.serve_started();
    let release = next_command(&commands, &key, Duration::from_secs(10));
    assert!(
        restarted.elapsed() < Duration::from_secs(5),
        "overdue release came {:?} after start",
        restarted.elapsed()
    );
    assert_eq!((release.host_id.as_str(), release.generation), ("d-01", 2));
    assert!(matches!(release.action, cordon_wire::Action::Release { .. }));
    // (`isolating ->` when the kill came before the confirmation was flushed: the report is
    // then consumed again, and does not confirm the newer release.)
    let line = wait_for_line(&lines, "d-01: ");
    assert!(line.contains("-> releasing by scheduler (generation 2): deadline reached"), "{line}");
    // The report is read once the consumer has joined its group; until then the release may
    // be resent (same generation: the agent applies it once).
    harness.report(&release, false);
    harness.wait_for_move("d-01", ("releasing", "released"), "agent", Some(2));
    let quiet_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < quiet_until {
        if let Some(Ok(message)) = commands.poll(Duration::from_millis(100)) {
            let resent = cordon_wire::open(message.payload().unwrap_or_default(), &key).expect("signed");
            assert_eq!((resent.host_id.as_str(), resent.generation), ("d-01", 2), "only resends: {resent:?}");
        }
    }
    assert_eq!(harness.host_json("d-02")["state"], "isolated", "the other deadline is still ahead");
}

#[test]
fn keygen_refuses_to_overwrite_a_key() {
    let dir = std::env::temp_dir().join(format!("cordon-keygen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = || Command::new(CORDON).args(["keygen", "--out"]).arg(&dir).output().expect("keygen");
    assert!(run().status.success());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("signing.key")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the secret key must be private");
    let again = run();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("must not exist yet"));
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

#[test]
fn topics_are_created_once_with_their_partitions() {
    let dir = std::env::temp_dir().join(format!("cordon-topics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create dir");
    let (mut broker, port) = start_broker();
    let config = dir.join("cordon.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"127.0.0.1:{port}\"\n[rules]\ndir = \"{0}\"\n[signing]\nkey_file = \"{0}/k\"\n",
            dir.display()
        ),
    )
    .expect("write config");
    let topics = |partitions: &str| {
        Command::new(CORDON)
            .args(["topics", "--config"])
            .arg(&config)
            .args(["--partitions", partitions, "--replication", "1"])
            .output()
            .expect("cordon topics")
    };
    let first = topics("4");
    let said = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{said}{}", String::from_utf8_lossy(&first.stderr));
    for expected in [
        "created edr.detections (4 partition(s))",
        "created cordon.dead-letter (1 partition(s))",
        "created cordon.commands (4 partition(s))",
        "created cordon.status (4 partition(s))",
        "created cordon.lease (1 partition(s))",
    ] {
        assert!(said.contains(expected), "'{expected}' not in:\n{said}");
    }
    let again = topics("8");
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.status.success(),
        "a second run succeeds: {said}{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(said.matches("exists: left as it is").count(), 5, "{said}");
    // The broker holds them with the partitions of the first run.
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", format!("127.0.0.1:{port}")).create().expect("client");
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).expect("metadata");
    let partitions =
        |name: &str| metadata.topics().iter().find(|t| t.name() == name).map(|t| t.partitions().len());
    assert_eq!(partitions("cordon.commands"), Some(4));
    assert_eq!(partitions("cordon.dead-letter"), Some(1));
    assert_eq!(partitions("cordon.lease"), Some(1));
    // Without brokers there is nothing to create: the embedded broker makes its own.
    std::fs::write(
        &config,
        format!("[rules]\ndir = \"{0}\"\n[signing]\nkey_file = \"{0}/k\"\n", dir.display()),
    )
    .expect("write config");
    let embedded = topics("4");
    assert_eq!(embedded.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&embedded.stderr).contains("embedded broker creates its topics"));
    let _ = broker.kill();
    let _ = broker.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_producer_example_publishes_a_detection_that_isolates() {
    let mut harness = Harness::start("example");
    let _lines = harness.serve();
    let script = crate_dir().join("../ops/examples/produce-detection.py");
    let output = Command::new("python3")
        .arg(&script)
        .args(["--brokers", &harness.brokers, "--host", "web-42", "--severity", "5", "--technique", "T1486"])
        .output()
        .expect("python3 (ops/install-toolchain.sh installs confluent-kafka)");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{said}{}", String::from_utf8_lossy(&output.stderr));
    assert!(said.contains("for web-42 to edr.detections"), "{said}");
    harness.wait_for_move("web-42", ("not_isolated", "isolating"), "rules ransomware", None);
}

#[test]
fn unreachable_brokers_are_named_once_and_the_service_keeps_serving() {
    let dir = std::env::temp_dir().join(format!("cordon-unreachable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rules")).expect("create dir");
    std::fs::copy(crate_dir().join("../rules/examples/ransomware.yaml"), dir.join("rules/ransomware.yaml"))
        .expect("copy a rule");
    let keygen =
        Command::new(CORDON).args(["keygen", "--out"]).arg(dir.join("keys")).output().expect("keygen");
    assert!(keygen.status.success());
    // Nothing listens on port 1.
    let config = dir.join("cordon.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"127.0.0.1:1\"\n[rules]\ndir = \"{0}/rules\"\n[state]\ndir = \"{0}/state\"\n\
             [signing]\nkey_file = \"{0}/keys/signing.key\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
            dir.display()
        ),
    )
    .expect("write config");
    let mut child = Command::new(CORDON)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cordon serve");
    std::thread::sleep(Duration::from_secs(4));
    let _ = child.kill();
    let output = child.wait_with_output().expect("output");
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(said.contains("API on http://"), "the service serves without its brokers:\n{said}");
    let complaints =
        said.matches("cannot reach the Kafka brokers 127.0.0.1:1 (check [kafka] brokers").count();
    assert_eq!(complaints, 1, "said once, not on every poll:\n{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// GETs `path` from the service's API (no token: health, readiness and metrics are open).
fn get(api: &str, path: &str) -> (u16, String) {
    get_as(api, path, None)
}

/// A GET, with the bearer token when one is given; the status and the body.
fn get_as(api: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut request = agent.get(format!("{api}{path}"));
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.call().expect("the API answers");
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().expect("a text body"))
}

/// The value of the sample `series` (name and labels, as written) in Prometheus text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .parse()
        .expect("a number")
}

/// A scripted day, in JSON logs: its metrics count exactly what happened, `/readyz` says ready,
/// each transition is one JSON line carrying the host, event and command ids, and neither the
/// API token nor the signing key is ever in the log.
#[test]
fn metrics_count_what_happened_and_logs_are_json_without_secrets() {
    let mut harness = Harness::start("metrics");
    harness.env.push(("CORDON_LOG_FORMAT", "json"));
    let lines = harness.serve_with("");
    let serving = wait_for_line(&lines, "API on http://");
    let serving: serde_json::Value = serde_json::from_str(&serving).expect("log lines are JSON");
    let message = serving["message"].as_str().expect("a message field");
    harness.api = message.split("API on ").nth(1).expect("address").trim_end_matches('.').to_owned();
    wait_for_line(&lines, "consuming cordon.status/0, edr.detections/0, edr.detections/1, edr.detections/2.");
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");

    // web-01: isolated automatically (3 s), enforced, lifted at the deadline, released.
    harness.produce("edr.detections", "web-01", &detection("web-01", "m-1", 5));
    let isolate = next_command(&commands, &key, Duration::from_secs(15));
    harness.report_with(&isolate, true, None, (7, 2));
    let enforced = wait_for_line(&lines, "web-01: isolating -> isolated by agent");
    // plc-01: waits for an operator. db-01: its agent refuses the command as expired.
    harness.produce("edr.detections", "plc-01", &detection("plc-01", "m-2", 3));
    harness.produce("edr.detections", "db-01", &detection("db-01", "m-3", 6));
    let refused = next_command(&commands, &key, Duration::from_secs(15));
    assert_eq!(refused.host_id, "db-01");
    harness.report_with(&refused, false, Some("expired"), (5, 1));
    // Nothing matches severity 1; two events are not events at all.
    harness.produce("edr.detections", "web-09", &detection("web-09", "m-4", 1));
    harness.produce("edr.detections", "web-09", b"not json");
    harness.produce("edr.detections", "web-09", br#"{"time": 1}"#);
    let release = next_command(&commands, &key, Duration::from_secs(10));
    assert!(matches!(release.action, cordon_wire::Action::Release { .. }), "{release:?}");
    harness.report_with(&release, false, None, (0, 0));
    harness.wait_for_move("web-01", ("releasing", "released"), "agent", Some(release.generation));
    wait_for_lines(&lines, &["not JSON", "missing required field"]);

    // One JSON line per transition, with the ids the spans carry.
    let enforced: serde_json::Value = serde_json::from_str(&enforced).expect("a JSON line");
    assert_eq!(enforced["level"], "INFO", "{enforced}");
    assert_eq!(enforced["host_id"], "web-01", "{enforced}");
    assert_eq!(enforced["event_id"], "m-1", "{enforced}");
    assert_eq!(enforced["state"], "isolated", "{enforced}");
    assert_eq!(enforced["command_id"], "web-01-1", "the command the agent answered: {enforced}");

    let (status, text) = get(&harness.api, "/metrics");
    assert_eq!(status, 200);
    for (series, expected) in [
        ("cordon_events_consumed_total", 6.0),
        ("cordon_events_invalid_total", 2.0),
        ("cordon_status_reports_total", 3.0),
        ("cordon_decisions_total{mode=\"automatic\"}", 2.0),
        ("cordon_decisions_total{mode=\"approve\"}", 1.0),
        ("cordon_rule_matches_total{rule=\"ransomware\"}", 2.0),
        ("cordon_rule_matches_total{rule=\"suspicious\"}", 1.0),
        ("cordon_pending_approvals", 1.0),
        // web-01 at its deadline; db-01 when its agent refused (it is not isolated).
        ("cordon_hosts{state=\"released\"}", 2.0),
        ("cordon_hosts{state=\"pending_approval\"}", 1.0),
        ("cordon_isolations_lifted_total{timing=\"on_time\"}", 1.0),
        ("cordon_lift_lateness_seconds_count", 1.0),
        ("cordon_detection_to_enforced_seconds_count", 1.0),
        ("cordon_commands_refused_total{reason=\"expired\"}", 1.0),
        ("cordon_enforcer_packets_dropped", 5.0),
        ("cordon_enforcer_packets_allowed", 1.0),
        ("cordon_commands_issued_total", 3.0),
        ("cordon_commands_sent_total", 3.0),
        ("cordon_rules_loaded", 2.0),
    ] {
        let got = sample(&text, series);
        assert!((got - expected).abs() < 1e-9, "{series}: {got}, expected {expected}");
    }
    assert!(sample(&text, "cordon_detection_to_enforced_seconds_sum") < 15.0, "{text}");
    assert!(!text.contains("web-01"), "no host ids in the metrics");

    // Ready: the consumer's statistics say it reaches the broker (every 2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(&harness.api, "/readyz");
        if status == 200 {
            let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            assert_eq!(body["ready"], true, "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(&harness.api, "/healthz"), (200, "ok\n".to_owned()));

    // No secret in any line said so far.
    let token =
        std::fs::read_to_string(harness.dir.join("state/api-token")).expect("token").trim().to_owned();
    let signing_key =
        std::fs::read_to_string(harness.dir.join("keys/signing.key")).expect("key").trim().to_owned();
    harness.kill_service();
    std::thread::sleep(Duration::from_millis(200));
    let log = std::fs::read_to_string(harness.dir.join("serve.log")).expect("serve.log");
    assert!(log.lines().count() > 10, "{log}");
    for line in log.lines() {
        assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "not a JSON line: {line}");
        assert!(!line.contains(&token) && !line.contains(&signing_key), "a secret in the log: {line}");
    }
}

/// The dead letter's record, checked against the message it stands for: reason, size, hash, and
/// as much of the bytes as fits one message.
fn check_dead_letter(record: &[u8], original: &[u8], kind: &str, reason: &str) {
    use sha2::Digest as _;
    let record: serde_json::Value = serde_json::from_slice(record).expect("dead letter is JSON");
    assert!(record.to_string().len() < 1_000_000, "a dead letter fits the message limit");
    assert_eq!(record["kind"], kind, "{}", record["reason"]);
    let said = record["reason"].as_str().unwrap_or_default();
    assert!(said.contains(reason), "reason '{said}' should mention {reason}");
    assert_eq!(record["original_size"].as_u64(), Some(original.len() as u64));
    let hash = sha2::Sha256::digest(original).iter().fold(String::new(), |mut text, b| {
        use std::fmt::Write as _;
        let _ = write!(text, "{b:02x}");
        text
    });
    assert_eq!(record["original_sha256"], hash);
    let kept = base64::engine::general_purpose::STANDARD
        .decode(record["original_base64"].as_str().unwrap_or_default())
        .expect("base64");
    assert!(original.starts_with(&kept), "the kept bytes are the message's first ones");
    assert_eq!(record["original_truncated"].as_bool(), Some(kept.len() < original.len()));
}

#[test]
fn poison_messages_are_dead_lettered_and_the_next_detection_still_decides() {
    let mut harness = Harness::start("poison");
    let _lines = harness.serve();
    let dead_letters = harness.consumer("cordon.dead-letter");
    // ~760 KB that is not a detection: its base64 alone is over the broker's message limit.
    let mut invalid = br#"{"time":1,"severity_id":5,"finding_info":{"uid":"x"},"padding":""#.to_vec();
    invalid.extend(std::iter::repeat_n(b'a', 760_000));
    invalid.extend_from_slice(b"\"}");
    // 1.2 MiB, more than max_detection_bytes (1 MiB by default): never parsed.
    let mut oversized = detection("big-01", "ev-big", 5);
    oversized.truncate(oversized.len() - 1);
    oversized.extend_from_slice(br#","padding":""#);
    oversized.extend(std::iter::repeat_n(b'b', 1_250_000));
    oversized.extend_from_slice(b"\"}");
    // A detection that matches a rule, for a host whose id is 70,000 bytes.
    let long_host = "h".repeat(70_000);
    let long_id = detection(&long_host, "ev-long", 5);
    for (message, kind, reason) in [
        (&invalid, "invalid", "device"),
        (&oversized, "oversized", "max_detection_bytes"),
        (&long_id, "bad_host_id", "70000 bytes"),
    ] {
        harness.produce("edr.detections", "poison", message);
        let (_, record) = next_message(&dead_letters, Duration::from_secs(15));
        check_dead_letter(&record, message, kind, reason);
    }
    // The service kept going: the next detection decides, and nothing of the poison does.
    harness.produce("edr.detections", "web-03", &detection("web-03", "ev-3", 5));
    harness.wait_for_move("web-03", ("not_isolated", "isolating"), "", None);
    let hosts: serde_json::Value =
        serde_json::from_str(&harness.cordon_ok(&["hosts", "--json"])).expect("JSON");
    assert_eq!(hosts.as_array().map(Vec::len), Some(1), "only web-03 is known: {hosts}");
    let (_, metrics) = get(&harness.api, "/metrics");
    for (series, expected) in [
        ("cordon_dead_letters_total{reason=\"invalid\"}", 1.0),
        ("cordon_dead_letters_total{reason=\"oversized\"}", 1.0),
        ("cordon_dead_letters_total{reason=\"bad_host_id\"}", 1.0),
    ] {
        assert!((sample(&metrics, series) - expected).abs() < 1e-9, "{series} in {metrics}");
    }
    // Committed: a restart does not meet the poison again.
    harness.kill_service();
    let _lines = harness.serve();
    harness.produce("edr.detections", "web-04", &detection("web-04", "ev-4", 5));
    harness.wait_for_move("web-04", ("not_isolated", "isolating"), "", None);
    no_message(&dead_letters, Duration::from_secs(1));
}

/// Posts a body of `size` bytes and returns the answer's status line, headers and body. The
/// server refuses it after reading its limit and closes: the body is written from a thread of
/// its own while the answer is read (tried again if the connection was reset before it came).
fn post_oversized(api: &str, path: &str, token: &str, size: usize) -> String {
    use std::io::{Read as _, Write as _};
    let address = api.trim_start_matches("http://").to_owned();
    for _ in 0..3 {
        let mut stream = std::net::TcpStream::connect(&address).expect("connect to the API");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        );
        let mut writer = stream.try_clone().expect("clone the stream");
        let body = std::thread::spawn(move || {
            let _ = writer.write_all(head.as_bytes());
            let _ = writer.write_all(&vec![b'a'; size]);
        });
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let _ = body.join();
        if !answer.is_empty() {
            return String::from_utf8_lossy(&answer).into_owned();
        }
    }
    panic!("the API never answered an oversized request")
}

#[test]
fn oversized_requests_are_refused_and_an_unsendable_command_is_parked_while_others_flow() {
    let mut harness = Harness::start("parked");
    // Small enough that 250 exclusions do not fit one message.
    harness.kafka_config = "max_message_bytes = 8192\n".to_owned();
    let lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");
    let token = std::fs::read_to_string(harness.dir.join("state/api-token")).expect("token");

    // A 1.2 MB request is refused unread, with the limit named.
    let answer = post_oversized(&harness.api, "/v1/hosts/big-01/isolate", token.trim(), 1_200_000);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("65536 bytes"), "{answer}");
    // Fields over their limits: 400, every problem named, nothing changed.
    let long_reason = "r".repeat(2_000);
    let output = harness.cordon(&["isolate", "big-01", "--for", "1h", "--reason", &long_reason]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("reason is 2000 bytes; the limit is 1024"), "{stderr}");
    let mut too_many = vec!["isolate", "big-01", "--manual"];
    let specs: Vec<String> =
        (0..300).map(|i| format!("out,tcp,10.0.{}.{}/32,443", i / 250, i % 250)).collect();
    for spec in &specs {
        too_many.extend(["--allow", spec]);
    }
    let output = harness.cordon(&too_many);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("300 exclusions; the limit is 256"), "{stderr}");
    let (status, _) = get_as(&harness.api, "/v1/hosts/big-01", Some(token.trim()));
    assert_eq!(status, 404, "nothing was recorded for big-01");

    // 250 exclusions pass the API but make a command larger than a message may be: parked.
    let mut big = vec!["isolate", "big-01", "--manual", "--reason", "incident 12"];
    for spec in &specs[..250] {
        big.extend(["--allow", spec]);
    }
    harness.cordon_ok(&big);
    wait_for_line(&lines, "big-01: command big-01-1: the signed command is");
    // Other hosts' commands keep flowing.
    harness.cordon_ok(&["isolate", "small-01", "--for", "1h"]);
    let command = next_command(&commands, &key, Duration::from_secs(10));
    assert_eq!(command.command_id, "small-01-1", "the parked command is never sent");
    let host = harness.host_json("big-01");
    let error = host["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("command big-01-1") && error.contains("not sent"), "{host}");
    let trail = host["audit"].as_array().expect("audit");
    assert!(trail.last().unwrap()["why"].as_str().unwrap().contains("command NOT sent"), "{host}");
    let (_, metrics) = get(&harness.api, "/metrics");
    assert!(
        (sample(&metrics, "cordon_commands_parked_total{reason=\"too_large\"}") - 1.0).abs() < 1e-9,
        "{metrics}"
    );
    // Never resent (the resend interval here is 2 s; small-01's resends do come).
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if let Some(Ok(message)) = commands.poll(Duration::from_millis(100)) {
            assert_ne!(message.key(), Some(&b"big-01"[..]), "the parked command was sent");
        }
    }
}

/// Continues a stopped process on drop, so that it does not stay stopped when an assertion fails.
struct Continue(u32);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}

fn signal(pid: u32, name: &str) {
    assert!(Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().unwrap().success());
}

#[test]
fn while_the_broker_is_stopped_the_api_answers_deadlines_release_and_commands_go_out_after() {
    let mut harness = Harness::start("outage");
    let _lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");
    harness.cordon_ok(&["isolate", "warm-01", "--for", "1h"]);
    assert_eq!(next_command(&commands, &key, Duration::from_secs(10)).command_id, "warm-01-1");

    let broker = harness.children[0].id();
    signal(broker, "STOP");
    let stopped = Continue(broker);
    let mut longest = Duration::ZERO;
    for (host, duration) in [("out-01", "2s"), ("out-02", "1h"), ("out-03", "1h")] {
        let started = Instant::now();
        let said = harness.cordon_ok(&["isolate", host, "--for", duration]);
        longest = longest.max(started.elapsed());
        assert!(said.contains("now isolating"), "{said}");
    }
    let started = Instant::now();
    harness.cordon_ok(&["hosts"]);
    longest = longest.max(started.elapsed());
    assert!(
        longest < Duration::from_secs(2),
        "API answers took up to {longest:?} while the broker was stopped"
    );
    // The deadline releases while the broker is still stopped: the release waits in the outbox.
    harness.wait_for_move("out-01", ("isolating", "releasing"), "scheduler", None);
    assert_eq!(harness.host_json("out-01")["state"], "releasing");
    drop(stopped);

    // Continued: everything decided during the outage goes out (resends of unanswered ones
    // too), each host's commands in order.
    let wanted = ["out-01-1", "out-01-2", "out-02-1", "out-03-1"];
    let mut first_seen: Vec<String> = Vec::new();
    while !wanted.iter().all(|id| first_seen.iter().any(|seen| seen == id)) {
        let id = next_command(&commands, &key, Duration::from_secs(40)).command_id;
        if !first_seen.contains(&id) {
            first_seen.push(id);
        }
    }
    let position = |id: &str| first_seen.iter().position(|seen| seen == id).unwrap();
    assert!(position("out-01-1") < position("out-01-2"), "out of order: {first_seen:?}");
}

#[test]
fn an_agent_ahead_of_cordon_gets_the_isolation_again_at_its_generation_plus_one() {
    let mut harness = Harness::start("ahead");
    let _lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");
    harness.cordon_ok(&["isolate", "ahead-01", "--manual", "--reason", "incident 5"]);
    let first = next_command(&commands, &key, Duration::from_secs(10));
    assert_eq!(first.generation, 1);
    // The agent has applied up to generation 7 (cordon's state came from an old backup): it
    // refuses generation 1 as stale.
    let refusal = serde_json::json!({
        "version": 1, "host_id": "ahead-01", "sent_at_ms": 0, "kind": "refused",
        "command_id": "ahead-01-1", "generation": 7, "isolated": false, "mode": null, "expires_at_ms": null,
        "exclusions": [], "tags": [], "refusal": "stale_generation", "error": null,
        "packets_dropped": 0, "packets_allowed": 0
    });
    harness.publish_status(refusal);
    // (Resends of generation 1 may come first: no agent answered it.)
    let again = loop {
        let command = next_command(&commands, &key, Duration::from_secs(10));
        if command.generation != 1 {
            break command;
        }
    };
    assert_eq!((again.generation, again.command_id.as_str()), (8, "ahead-01-8"));
    match &again.action {
        cordon_wire::Action::Isolate { duration_seconds: None, reason, .. } => {
            assert!(reason.contains("incident 5"), "{reason}");
        }
        other => panic!("expected the manual isolation again, got {other:?}"),
    }
    let host = harness.host_json("ahead-01");
    assert_eq!(host["state"], "isolating", "never marked released by the refusal: {host}");
    harness.report(&again, true);
    harness.wait_for_move("ahead-01", ("isolating", "isolated"), "agent", Some(8));
}

#[test]
fn a_wall_clock_step_neither_lifts_an_isolation_early_nor_holds_it_late() {
    let mut harness = Harness::start("clock");
    let offset = harness.dir.join("clock-offset-ms");
    std::fs::write(&offset, "0").expect("write the offset");
    let offset_path: &'static str = Box::leak(offset.display().to_string().into_boxed_str());
    harness.env.push(("CORDON_CLOCK_OFFSET_FILE", offset_path));
    let lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");

    // Forwards by an hour, 1 s into a 6 s isolation: it must still end at about 6 s.
    let started = Instant::now();
    harness.cordon_ok(&["isolate", "clk-01", "--for", "6s"]);
    let isolate = next_command(&commands, &key, Duration::from_secs(10));
    harness.report(&isolate, true);
    harness.wait_for_move("clk-01", ("isolating", "isolated"), "agent", None);
    std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
    std::fs::write(&offset, "3600000").expect("step the clock");
    wait_for_line(&lines, "the wall clock stepped: it is now +3600.0 s from cordon's clock");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(harness.host_json("clk-01")["state"], "isolated", "lifted early by the step");
    let release = loop {
        let command = next_command(&commands, &key, Duration::from_secs(10));
        if matches!(command.action, cordon_wire::Action::Release { .. }) {
            break command;
        }
    };
    let elapsed = started.elapsed();
    assert_eq!(release.host_id, "clk-01");
    assert!(
        elapsed >= Duration::from_millis(5_900) && elapsed < Duration::from_secs(8),
        "lifted after {elapsed:?}"
    );

    // Backwards by two hours (an hour behind real time) during a 4 s isolation: still on time.
    let started = Instant::now();
    harness.cordon_ok(&["isolate", "clk-02", "--for", "4s"]);
    std::fs::write(&offset, "-3600000").expect("step the clock back");
    wait_for_line(&lines, "the wall clock stepped: it is now -3600.0 s from cordon's clock");
    let release = loop {
        let command = next_command(&commands, &key, Duration::from_secs(10));
        if command.host_id == "clk-02" && matches!(command.action, cordon_wire::Action::Release { .. }) {
            break command;
        }
    };
    let elapsed = started.elapsed();
    assert_eq!(release.generation, 2);
    assert!(
        elapsed >= Duration::from_millis(3_900) && elapsed < Duration::from_secs(6),
        "lifted after {elapsed:?}"
    );
}

#[test]
fn a_damaged_state_store_is_refused_with_its_path_and_the_runbook_step() {
    let mut harness = Harness::start("damaged");
    let _lines = harness.serve_started();
    harness.cordon_ok(&["isolate", "keep-01", "--manual", "--reason", "incident 3"]);
    harness.kill_service();
    // Every byte of the store's log overwritten, as a failing disk might.
    let db = harness.dir.join("state/orchestrator.sled/db");
    let size = usize::try_from(std::fs::metadata(&db).expect("the store's log").len()).unwrap();
    std::fs::write(&db, vec![0x5a; size]).expect("damage the store");
    let stderr = harness.serve_refused();
    assert!(stderr.contains(&harness.dir.join("state/orchestrator.sled").display().to_string()), "{stderr}");
    assert!(stderr.contains("A lost or corrupt state store"), "{stderr}");
}

#[test]
fn a_service_stopped_while_joining_its_group_exits_promptly() {
    for attempt in 0..3 {
        let mut harness = Harness::start(&format!("stop-early-{attempt}"));
        // The API serves at once; the consumer takes seconds to join its group on tansu.
        let _lines = harness.serve_started();
        std::thread::sleep(Duration::from_millis(300 * attempt));
        // (Left among the harness's children: killed on drop if it does not stop.)
        let service = harness.children.last_mut().expect("the service");
        signal(service.id(), "TERM");
        let stopped = Instant::now();
        loop {
            if let Some(status) = service.try_wait().expect("wait") {
                assert!(status.success(), "cordon serve stopped with {status}");
                break;
            }
            assert!(
                stopped.elapsed() < Duration::from_secs(10),
                "cordon serve still running 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_tag_reported_by_an_agent_grants_no_protection_and_an_operators_tag_does() {
    let mut harness = Harness::start("protect");
    std::fs::write(harness.dir.join("rules/policy.yaml"), "protect: [plc]\n").expect("write policy");
    let lines = harness.serve();
    // Whoever controls the host (and so its agent's key) claims the tag `plc`.
    let forged = serde_json::json!({
        "version": 1, "host_id": "claims-plc", "sent_at_ms": 0, "kind": "heartbeat",
        "command_id": null, "generation": 0, "isolated": false, "mode": null, "expires_at_ms": null,
        "exclusions": [], "tags": ["plc"], "refusal": null, "error": null,
        "packets_dropped": 0, "packets_allowed": 0
    });
    harness.publish_status(forged);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !harness.cordon(&["host", "claims-plc", "--json"]).status.success() {
        assert!(Instant::now() < deadline, "the report was never recorded");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(harness.host_json("claims-plc")["tags"], serde_json::json!(["plc"]), "shown, as the agent's");
    harness.cordon_ok(&["tag", "real-plc", "--add", "plc"]);
    harness.produce("edr.detections", "claims-plc", &detection("claims-plc", "pr-1", 5));
    harness.produce("edr.detections", "real-plc", &detection("real-plc", "pr-2", 5));
    wait_for_lines(
        &lines,
        &[
            "claims-plc: not_isolated -> isolating by rules ransomware",
            "real-plc: not_isolated -> pending_approval",
        ],
    );
}

/// A heartbeat from `host` at `generation`, as JSON (the harness signs and dates it).
fn heartbeat(host: &str, generation: u64, isolated: bool) -> serde_json::Value {
    serde_json::json!({
        "version": 1, "host_id": host, "sent_at_ms": 0, "kind": "heartbeat",
        "command_id": null, "generation": generation, "isolated": isolated,
        "mode": isolated.then_some("manual"), "expires_at_ms": null, "exclusions": [],
        "tags": if isolated { vec!["ISOLATED FROM NETWORK", "linux"] } else { vec!["linux"] },
        "refusal": null, "error": null, "packets_dropped": 0, "packets_allowed": 0
    })
}

/// An agent that falls silent is marked stale once `[agents] stale_after_seconds` have passed
/// since it was last heard from, not before, and its next report makes it current again.
#[test]
fn a_silent_agent_is_marked_stale_in_time_and_a_report_brings_it_back() {
    let mut harness = Harness::start("stale");
    harness.agents_config = "stale_after_seconds = 2\n".to_owned();
    let _lines = harness.serve();
    // The host's agent as the API shows it (null until cordon knows the host).
    let agent = |harness: &Harness| {
        let output = harness.cordon(&["host", "quiet-01", "--json"]);
        let host: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        host["agent"].clone()
    };
    let until = |harness: &Harness, what: &str, done: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let agent = agent(harness);
            if done(&agent) {
                return agent;
            }
            assert!(Instant::now() < deadline, "{what}: the agent is {agent}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // cordon hears from the agent after `published`, and sees it heard from by `heard_at`.
    let published = Instant::now();
    harness.publish_status(heartbeat("quiet-01", 0, false));
    let heard = until(&harness, "heard from", &|agent| !agent.is_null() && !agent["last_seen"].is_null());
    let heard_at = Instant::now();
    assert_eq!(heard["stale"], false, "{heard}");
    until(&harness, "marked stale", &|agent| agent["stale"] == true);
    // The job runs every second (a quarter of the 2 s): stale after 2 s, by 3 s (4 s with slack).
    let (since_published, since_heard) = (published.elapsed(), heard_at.elapsed());
    assert!(since_published >= Duration::from_secs(2), "marked stale {since_published:?} after the report");
    assert!(since_heard <= Duration::from_secs(4), "marked stale {since_heard:?} after it was heard from");
    harness.publish_status(heartbeat("quiet-01", 0, false));
    until(&harness, "current again", &|agent| agent["stale"] == false);
    // And stale again when it falls silent again (the report put it back among those watched).
    until(&harness, "marked stale again", &|agent| agent["stale"] == true);
}

/// A signed envelope, changed by `change` (a forger's edit).
fn edit_envelope(sealed: &[u8], change: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut envelope: serde_json::Value = serde_json::from_slice(sealed).expect("an envelope is JSON");
    change(&mut envelope);
    serde_json::to_vec(&envelope).expect("JSON")
}

/// Waits until the metrics show `series` at `expected` (the loop handles reports in batches).
fn wait_for_sample(api: &str, series: &str, expected: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, text) = get(api, "/metrics");
        let got = text
            .lines()
            .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map_or(0.0, |value| value.parse().expect("a number"));
        if (got - expected).abs() < 1e-9 {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {got}, expected {expected}\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A writer on the status topic floods it with signed reports for 10,050 invented hosts: every one
/// is refused and counted, at most 10,000 are kept as claims, the log says 60 of them one by one
/// (not 10,050 lines), and the loop is not slowed to a crawl (no read of every claim per report):
/// afterwards an operator's isolation is sent at once.
#[test]
fn a_flood_of_reports_for_invented_hosts_is_bounded() {
    let mut harness = Harness::start("flood");
    let lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");
    let producer = harness.producer();
    let attacker = cordon_wire::generate_signing_key();
    let flood = 10_050;
    let started = Instant::now();
    for i in 0..flood {
        let host = format!("flood-{i:05}");
        let mut status: cordon_wire::Status =
            serde_json::from_value(heartbeat(&host, 0, false)).expect("a status");
        status.sent_at_ms = harness.next_sent_at_ms();
        let sealed = cordon_wire::seal_report(&status, &attacker);
        producer.send(BaseRecord::to("cordon.status").key(&host).payload(&sealed)).map_err(|(e, _)| e).expect("send");
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let limit = Instant::now() + Duration::from_mins(1);
    let metrics = loop {
        let (_, metrics) = get(&harness.api, "/metrics");
        if metrics.contains("cordon_status_refused_total{reason=\"unknown_agent\"}")
            && sample(&metrics, "cordon_status_refused_total{reason=\"unknown_agent\"}") >= f64::from(flood)
        {
            break metrics;
        }
        assert!(Instant::now() < limit, "the flood was not handled within 60 s");
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!("{flood} forged reports produced and refused in {:?}", started.elapsed());
    let refused = sample(&metrics, "cordon_status_refused_total{reason=\"unknown_agent\"}");
    assert!((refused - f64::from(flood)).abs() < 0.5, "refused {refused} of {flood}");
    let claims = sample(&metrics, "cordon_agent_claims");
    assert!((claims - 10_000.0).abs() < 0.5, "claims are capped at 10,000: {claims}");
    let said = harness.log_lines("refused a status report for");
    assert_eq!(said.len(), 60, "60 said one by one, the rest counted: {} lines", said.len());
    // The loop still answers an operator at once.
    harness.cordon_ok(&["isolate", "after-flood", "--manual", "--reason", "incident 77"]);
    let isolate = next_command(&commands, &key, Duration::from_secs(5));
    assert_eq!(isolate.host_id, "after-flood");
    drop(lines);
}

/// Anyone who can write to the status topic tries to undo or fake an isolation: unsigned,
/// tampered, signed by a key not enrolled, by another host's enrolled key, under another host's
/// Kafka key, replayed, and dated in the future. Nothing changes (state, generation, tags), each
/// is counted by reason and the host's audit trail says so; a key that claims an unknown host is
/// held as pending until an operator accepts it, and a revoked key is refused.
#[test]
fn forged_unsigned_wrong_key_and_replayed_reports_change_nothing() {
    let mut harness = Harness::start("trust");
    let _lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");
    // A genuine report from before the isolation, which a forger recorded.
    harness.enroll("trust-01");
    let old = {
        let mut status: cordon_wire::Status =
            serde_json::from_value(heartbeat("trust-01", 0, false)).expect("a status");
        status.sent_at_ms = harness.next_sent_at_ms();
        cordon_wire::seal_report(&status, &harness.agent_key)
    };
    harness.produce("cordon.status", "trust-01", &old);
    harness.cordon_ok(&["isolate", "trust-01", "--manual", "--reason", "incident 9"]);
    let isolate = next_command(&commands, &key, Duration::from_secs(10));
    harness.report(&isolate, true);
    harness.wait_for_move("trust-01", ("isolating", "isolated"), "agent", None);
    let before = harness.host_json("trust-01");

    // The forgeries all say "released", at the same generation and at one that would wrap.
    let released = |generation: u64| {
        let mut status: cordon_wire::Status =
            serde_json::from_value(heartbeat("trust-01", generation, false)).expect("a status");
        status.sent_at_ms = harness.next_sent_at_ms();
        status
    };
    let attacker = cordon_wire::generate_signing_key();
    let other_host = cordon_wire::generate_signing_key();
    std::fs::write(
        harness.dir.join("other.pub"),
        cordon_wire::key_to_base64(other_host.verifying_key().as_bytes()),
    )
    .expect("write other.pub");
    harness.cordon_ok(&[
        "agents",
        "enroll",
        "other-01",
        "--key",
        &harness.dir.join("other.pub").to_string_lossy(),
    ]);
    let unsigned = serde_json::to_vec(&released(1)).expect("json");
    let no_signer = edit_envelope(&cordon_wire::seal_report(&released(1), &attacker), |envelope| {
        envelope.as_object_mut().expect("an object").remove("signer");
    });
    let tampered = edit_envelope(&cordon_wire::seal_report(&released(1), &harness.agent_key), |envelope| {
        let payload = envelope["payload"].as_str().expect("text").replace("\"generation\":1", "\"generation\":2");
        envelope["payload"] = payload.into();
    });
    let mut as_other = released(1);
    as_other.host_id = "other-01".into();
    let mut future = released(1);
    future.sent_at_ms += 3_600_000;
    let forgeries: Vec<(&str, &str, Vec<u8>)> = vec![
        ("malformed", "trust-01", unsigned),
        ("unsigned", "trust-01", no_signer),
        ("bad_signature", "trust-01", tampered),
        ("wrong_key", "trust-01", cordon_wire::seal_report(&released(1), &attacker)),
        ("wrong_key", "trust-01", cordon_wire::seal_report(&released(u64::MAX), &other_host)),
        // other-01's genuine key, for other-01, under trust-01's Kafka key.
        ("wrong_host", "trust-01", cordon_wire::seal_report(&as_other, &other_host)),
        ("replayed", "trust-01", old),
        ("from_the_future", "trust-01", cordon_wire::seal_report(&future, &harness.agent_key)),
    ];
    for (_, kafka_key, bytes) in &forgeries {
        harness.produce("cordon.status", kafka_key, bytes);
    }
    for reason in ["malformed", "unsigned", "bad_signature", "wrong_host", "replayed", "from_the_future"] {
        wait_for_sample(&harness.api, &format!("cordon_status_refused_total{{reason=\"{reason}\"}}"), 1.0);
    }
    wait_for_sample(&harness.api, "cordon_status_refused_total{reason=\"wrong_key\"}", 2.0);
    let after = harness.host_json("trust-01");
    for field in ["state", "generation", "tags", "mode", "agent"] {
        assert_eq!(after[field], before[field], "{field} changed: {after:#}");
    }
    assert_eq!(after["state"], "isolated");
    let trail = after["audit"].as_array().expect("an audit trail");
    let refusals: Vec<&str> = trail
        .iter()
        .filter_map(|entry| entry["why"].as_str())
        .filter(|why| why.starts_with("refused a status report"))
        .collect();
    // Said once a minute per host, not once per forgery.
    assert_eq!(refusals.len(), 1, "{trail:#?}");
    // The attacker's key now claims trust-01 (shown, never trusted).
    let agents: serde_json::Value =
        serde_json::from_str(&harness.cordon_ok(&["agents", "list", "--json"])).expect("JSON");
    let trust =
        agents.as_array().expect("a list").iter().find(|a| a["host"] == "trust-01").expect("trust-01");
    assert_eq!(trust["state"], "enrolled");
    assert_eq!(trust["claim"]["refusal"], "wrong_key", "{trust:#}");
    assert_eq!(trust["claim"]["keys_seen"], 2, "two foreign keys signed for trust-01: {trust:#}");

    // A revoked key is refused, even the genuine agent's.
    harness.cordon_ok(&["agents", "revoke", "trust-01", "--reason", "host reimaged"]);
    harness.publish_status(heartbeat("trust-01", 1, false));
    wait_for_sample(&harness.api, "cordon_status_refused_total{reason=\"revoked_agent\"}", 1.0);
    assert_eq!(harness.host_json("trust-01")["state"], "isolated");
    let audit = harness.host_json("trust-01")["audit"].to_string();
    assert!(audit.contains("agent key revoked") && audit.contains("operator alice"), "{audit}");
}

/// An agent nobody enrolled is refused and its key held as pending, until an operator accepts
/// exactly that key; then its reports apply.
#[test]
fn an_unknown_agent_key_is_pending_until_an_operator_accepts_that_key() {
    let mut harness = Harness::start("pending");
    let _lines = harness.serve();
    let attacker = cordon_wire::generate_signing_key();
    let newcomer = cordon_wire::generate_signing_key();
    let newcomer_key = cordon_wire::key_to_base64(newcomer.verifying_key().as_bytes());
    let mut hello: cordon_wire::Status =
        serde_json::from_value(heartbeat("new-01", 0, false)).expect("a status");
    hello.sent_at_ms = harness.next_sent_at_ms();
    harness.produce("cordon.status", "new-01", &cordon_wire::seal_report(&hello, &newcomer));
    wait_for_sample(&harness.api, "cordon_status_refused_total{reason=\"unknown_agent\"}", 1.0);
    assert!(!harness.cordon(&["host", "new-01"]).status.success(), "a refused report made a host record");
    let listed = harness.cordon_ok(&["agents", "list"]);
    assert!(
        listed.contains("new-01") && listed.contains("pending") && listed.contains(&newcomer_key),
        "{listed}"
    );
    // Accepting needs the key the operator checked on the host; another key is refused.
    let wrong = harness.cordon(&[
        "agents",
        "accept",
        "new-01",
        &cordon_wire::key_to_base64(attacker.verifying_key().as_bytes()),
    ]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("check the key on the host"), "{wrong:?}");
    harness.cordon_ok(&["agents", "accept", "new-01", &newcomer_key, "--reason", "checked on the console"]);
    hello.sent_at_ms = harness.next_sent_at_ms();
    harness.produce("cordon.status", "new-01", &cordon_wire::seal_report(&hello, &newcomer));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !harness.cordon(&["host", "new-01"]).status.success() {
        assert!(Instant::now() < deadline, "the accepted agent's report was never applied");
        std::thread::sleep(Duration::from_millis(100));
    }
    let listed = harness.cordon_ok(&["agents", "list"]);
    assert!(listed.contains("enrolled") && !listed.contains("claimed by"), "{listed}");
}

/// `cordon token new`: the token (stdout) and its `[[token]]` entry (stderr).
fn new_token(operator: &str, role: &str) -> (String, String) {
    let output = Command::new(CORDON)
        .args(["token", "new", "--operator", operator, "--role", role])
        .output()
        .expect("run cordon token new");
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let entry = &stderr[stderr.find("[[token]]").expect("a [[token]] entry")..];
    (String::from_utf8_lossy(&output.stdout).trim().to_owned(), entry.to_owned())
}

/// Each role can do exactly its calls, through the command line; the audit trail names the
/// token's operator whatever the client claims; a source that keeps failing gets 429.
#[test]
fn each_api_role_can_do_exactly_its_calls_and_the_token_names_the_operator() {
    let mut harness = Harness::start("roles");
    let mut entries = String::new();
    let mut token_files = std::collections::HashMap::new();
    for (operator, role) in [("vera", "viewer"), ("rita", "responder"), ("adam", "admin")] {
        let (token, entry) = new_token(operator, role);
        entries.push_str(&entry);
        let file = harness.dir.join(format!("{operator}.token"));
        std::fs::write(&file, &token).expect("write the token");
        token_files.insert(role, file);
    }
    let tokens = harness.dir.join("api-tokens.toml");
    std::fs::write(&tokens, entries).expect("write the tokens file");
    harness.api_config = format!("tokens_file = \"{}\"\n", tokens.display());
    let _lines = harness.serve();
    let as_role = |role: &str, args: &[&str]| {
        Command::new(CORDON)
            .args(args)
            .args(["--api", &harness.api, "--token-file"])
            .arg(&token_files[role])
            // What the client claims is ignored: the token names its operator.
            .args(["--operator", "mallory"])
            .env_remove("CORDON_TOKEN")
            .output()
            .expect("run cordon")
    };
    let refused = |output: &std::process::Output, needs: &str| {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{output:?}");
        assert!(stderr.contains(&format!("needs the role {needs}")) && stderr.contains("403"), "{stderr}");
    };
    let key = harness.agent_key_file();
    let key = key.to_string_lossy();
    let isolate = ["isolate", "role-01", "--manual", "--reason", "IR-7"];
    let enroll = ["agents", "enroll", "role-01", "--key", &*key];

    assert!(as_role("viewer", &["hosts"]).status.success());
    assert!(as_role("viewer", &["agents", "list"]).status.success());
    refused(&as_role("viewer", &isolate), "responder");
    refused(&as_role("viewer", &["tag", "role-01", "--add", "plc"]), "responder");
    refused(&as_role("viewer", &enroll), "admin");
    assert!(as_role("responder", &isolate).status.success());
    refused(&as_role("responder", &enroll), "admin");
    assert!(as_role("admin", &enroll).status.success());
    let policy = harness.dir.join("policy.toml");
    std::fs::write(&policy, as_role("viewer", &["policy", "show"]).stdout).expect("write the policy");
    let policy = policy.to_string_lossy();
    refused(&as_role("responder", &["policy", "set", &*policy, "--reason", "r"]), "admin");
    refused(&as_role("responder", &["policy", "revert", "1", "--reason", "r"]), "admin");
    assert!(as_role("admin", &["policy", "set", &*policy, "--reason", "same again"]).status.success());
    assert!(as_role("admin", &["release", "role-01", "--reason", "done"]).status.success());
    let shown = as_role("viewer", &["host", "role-01", "--json"]);
    let host: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("host --json is JSON");
    let by: Vec<&str> = host["audit"].as_array().expect("audit").iter().filter_map(|e| e["by"].as_str()).collect();
    assert!(by.iter().any(|b| b.starts_with("operator rita (")), "{by:?}");
    assert!(by.iter().any(|b| b.starts_with("operator adam (")), "{by:?}");
    assert!(!by.iter().any(|b| b.contains("mallory")), "the client's claim reached the audit trail: {by:?}");

    // Twenty wrong tokens from one source: the next try, even with a good token, is 429.
    for _ in 0..20 {
        assert_eq!(get_as(&harness.api, "/v1/hosts", Some("not-a-token-at-all-0123")).0, 401);
    }
    let viewer_token = std::fs::read_to_string(&token_files["viewer"]).expect("read the token");
    let (status, body) = get_as(&harness.api, "/v1/hosts", Some(viewer_token.trim()));
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too many failed authentications"), "{body}");
}

/// A signing key or shared API token that others can read, and a tokens file others can write,
/// stop the service at start with the fix.
#[test]
fn secrets_others_can_read_are_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut harness = Harness::start("secrets");
    let _lines = harness.serve_started();
    harness.kill_service();
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let key = harness.dir.join("keys/signing.key");
    chmod(&key, 0o644);
    let stderr = harness.serve_refused();
    assert!(stderr.contains("has mode 644") && stderr.contains(&format!("chmod 600 {}", key.display())), "{stderr}");
    chmod(&key, 0o600);
    let token = harness.dir.join("state/api-token");
    chmod(&token, 0o640);
    let stderr = harness.serve_refused();
    assert!(stderr.contains("the API token file") && stderr.contains("has mode 640"), "{stderr}");
    chmod(&token, 0o600);
    let (_, entry) = new_token("alice", "admin");
    let tokens = harness.dir.join("api-tokens.toml");
    std::fs::write(&tokens, entry).expect("write the tokens file");
    chmod(&tokens, 0o666);
    let config = harness.dir.join("cordon.toml");
    let text = std::fs::read_to_string(&config).expect("read cordon.toml");
    let text = text.replace("listen = \"127.0.0.1:0\"\n", &format!("listen = \"127.0.0.1:0\"\ntokens_file = \"{}\"\n", tokens.display()));
    std::fs::write(&config, text).expect("write cordon.toml");
    let stderr = harness.serve_refused();
    assert!(stderr.contains("others could add a token") && stderr.contains("chmod go-w"), "{stderr}");
}

/// Handling one valid detection fails after its evaluation (a failpoint, as an unexpected error
/// there would): that event is dead-lettered as `failed` with the reason, the batch goes on, the
/// host is not changed and its next detection isolates it; nothing of it is met again after a
/// restart.
#[test]
fn a_detection_whose_handling_fails_is_dead_lettered_and_the_rest_go_on() {
    let mut harness = Harness::start("fail-event");
    let lines = harness.serve_with("fail-event:ev-fails");
    let line = wait_for_line(&lines, "API on http://");
    let address = line.split("API on ").nth(1).expect("address").trim_end_matches('.');
    address.clone_into(&mut harness.api);
    wait_for_line(&lines, "consuming cordon.status/0, edr.detections/0, edr.detections/1, edr.detections/2.");
    let dead_letters = harness.consumer("cordon.dead-letter");
    let failing = detection("fail-01", "ev-fails", 5);
    harness.produce("edr.detections", "fail-01", &failing);
    harness.produce("edr.detections", "web-06", &detection("web-06", "ev-6", 5));
    let (_, record) = next_message(&dead_letters, Duration::from_secs(15));
    check_dead_letter(&record, &failing, "failed", "fails after its evaluation");
    harness.wait_for_move("web-06", ("not_isolated", "isolating"), "", None);
    assert!(!harness.cordon(&["host", "fail-01"]).status.success(), "the failed event changed its host");
    let (_, metrics) = get(&harness.api, "/metrics");
    assert!((sample(&metrics, "cordon_events_failed_total") - 1.0).abs() < 1e-9, "{metrics}");
    // Its next detection isolates it.
    harness.produce("edr.detections", "fail-01", &detection("fail-01", "ev-next", 5));
    harness.wait_for_move("fail-01", ("not_isolated", "isolating"), "", None);
    harness.kill_service();
    let _lines = harness.serve();
    no_message(&dead_letters, Duration::from_secs(2));
}

/// The API over TLS: the CLI trusting the CA that issued the service's certificate works; trusting another CA,
/// or the public ones, fails with the reason; plain HTTP to it gets nothing; a key others can
/// read stops the service at start.
#[test]
fn the_api_over_tls_trusts_only_the_given_ca() {
    let mut harness = Harness::start("api-tls");
    cordon_tests::issue_certificate(&harness.dir, "ca", "api", "serverAuth", "127.0.0.1");
    cordon_tests::issue_certificate(&harness.dir, "other-ca", "other", "serverAuth", "127.0.0.1");
    let (cert, key) = (harness.dir.join("api.crt"), harness.dir.join("api.key"));
    let (ca, other) = (harness.dir.join("ca.crt"), harness.dir.join("other-ca.crt"));
    harness.api_config =
        format!("tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n", cert.display(), key.display());
    let _lines = harness.serve();
    assert!(harness.api.starts_with("https://127.0.0.1:"), "{}", harness.api);
    let trusting = |ca: Option<&Path>| {
        let mut args = vec!["hosts", "--json"];
        let ca = ca.map(|ca| ca.to_string_lossy().into_owned());
        if let Some(ca) = &ca {
            args.extend(["--ca-file", ca.as_str()]);
        }
        harness.cordon(&args)
    };
    let ok = trusting(Some(&ca));
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "[]");
    for (what, ca) in [("another CA", Some(other.as_path())), ("the public CAs", None)] {
        let refused = trusting(ca);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "trusting {what} worked: {refused:?}");
        assert!(stderr.contains("cannot reach the cordon API") && stderr.to_lowercase().contains("certificate"), "{what}: {stderr}");
    }
    let plain = harness.api.replace("https://", "http://");
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
    assert!(agent.get(format!("{plain}/v1/hosts")).call().is_err(), "plain HTTP was answered");
    handshakes_are_bounded_in_time_and_number(&harness, &|| trusting(Some(&ca)));
    // A TLS key others can read is refused at start.
    harness.kill_service();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    let stderr = harness.serve_refused();
    assert!(stderr.contains("the API's TLS key") && stderr.contains("chmod 600"), "{stderr}");
}

/// Clients that open TCP connections to the TLS API and never start a handshake: as many as the
/// API lets handshake at once, and one more, which is closed at once (and said in the log). The
/// others are closed by the API after its handshake timeout, after which `call` works again.
fn handshakes_are_bounded_in_time_and_number(harness: &Harness, call: &dyn Fn() -> std::process::Output) {
    use std::io::Read as _;
    use orchestrator::service::tls::{HANDSHAKE_TIMEOUT, MAX_PENDING_HANDSHAKES};
    let address = harness.api.trim_start_matches("https://").trim_end_matches('/').to_owned();
    let opened = Instant::now();
    let mut silent: Vec<std::net::TcpStream> = (0..MAX_PENDING_HANDSHAKES)
        .map(|_| std::net::TcpStream::connect(&address).expect("connect to the API"))
        .collect();
    // Let the API accept them all before the one too many.
    std::thread::sleep(Duration::from_millis(500));
    let mut extra = std::net::TcpStream::connect(&address).expect("connect to the API");
    extra.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let closed = extra.read(&mut [0u8; 1]);
    assert!(matches!(closed, Ok(0)) || closed.as_ref().is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock
        && e.kind() != std::io::ErrorKind::TimedOut), "a connection beyond the bound was not closed at once: {closed:?}");
    let limit = Instant::now() + Duration::from_secs(2);
    while harness.log_lines("TLS handshakes are already under way").is_empty() && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
    let said = harness.log_lines("TLS handshakes are already under way");
    assert_eq!(said.len(), 1, "said once: {said:?}");
    for stream in &mut silent {
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT + Duration::from_secs(5))).expect("timeout");
        let end = stream.read(&mut [0u8; 1]);
        assert!(matches!(end, Ok(0)) || end.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "a silent client was not closed: {end:?} after {:?}", opened.elapsed());
    }
    let waited = opened.elapsed();
    assert!(waited + Duration::from_secs(1) >= HANDSHAKE_TIMEOUT, "closed before the timeout: {waited:?}");
    assert!(waited <= HANDSHAKE_TIMEOUT + Duration::from_secs(3), "closed long after the timeout: {waited:?}");
    let again = call();
    assert!(again.status.success(), "the API after the flood: {again:?}");
}

/// Kafka over mutual TLS: tansu behind stunnel (which needs a client certificate from the CA),
/// advertising stunnel's port. A service with the CA and a client certificate consumes, decides
/// and sends; one trusting another CA, or with no client certificate, reaches no broker and says
/// so, and /readyz says not ready.
#[test]
fn kafka_over_mutual_tls_works_and_a_wrong_ca_or_no_client_certificate_is_refused() {
    let tls_port = free_port();
    let mut harness = Harness::start_advertising("kafka-tls", Some(tls_port));
    let plain = harness.brokers.clone();
    let pki = harness.dir.join("pki");
    std::fs::create_dir_all(&pki).expect("create pki");
    cordon_tests::issue_certificate(&pki, "ca", "broker", "serverAuth", "127.0.0.1");
    cordon_tests::issue_certificate(&pki, "ca", "client", "clientAuth", "127.0.0.1");
    cordon_tests::issue_certificate(&pki, "other-ca", "stranger", "clientAuth", "127.0.0.1");
    let stunnel_conf = pki.join("stunnel.conf");
    std::fs::write(
        &stunnel_conf,
        format!(
            "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls_port}\nconnect = {plain}\ncert = {dir}/broker.crt\n\
             key = {dir}/broker.key\nCAfile = {dir}/ca.crt\nverifyChain = yes\nrequireCert = yes\n",
            dir = pki.display()
        ),
    )
    .expect("write stunnel.conf");
    let stunnel = Command::new("stunnel4").arg(&stunnel_conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start stunnel4 (Debian package stunnel4)");
    harness.children.push(stunnel);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
        assert!(Instant::now() < deadline, "stunnel did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    harness.brokers = format!("127.0.0.1:{tls_port}");
    let tls_section = |ca: &str, client: Option<&str>| {
        let ca = format!("[kafka.tls]\nca_file = \"{}/{ca}.crt\"\n", pki.display());
        let client = client.map_or(String::new(), |client| {
            format!("cert_file = \"{0}/{client}.crt\"\nkey_file = \"{0}/{client}.key\"\n", pki.display())
        });
        ca + &client
    };
    // The test's own clients (the EDR, the agent) come through the front too.
    harness.client_settings = vec![
        ("security.protocol".into(), "ssl".into()),
        ("ssl.ca.location".into(), pki.join("ca.crt").display().to_string()),
        ("ssl.certificate.location".into(), pki.join("client.crt").display().to_string()),
        ("ssl.key.location".into(), pki.join("client.key").display().to_string()),
    ];
    harness.kafka_config = tls_section("ca", Some("client"));
    let _lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");
    harness.produce("edr.detections", "tls-01", &detection("tls-01", "ev-tls", 5));
    harness.wait_for_move("tls-01", ("not_isolated", "isolating"), "", None);
    let command = next_command(&commands, &key, Duration::from_secs(15));
    assert_eq!(command.host_id, "tls-01");
    wait_until_ready(&harness.api);
    harness.kill_service();

    for (what, section) in [
        ("a service with no client certificate", tls_section("ca", None)),
        ("a service trusting another CA", tls_section("other-ca", Some("client"))),
        ("a service with a certificate from another CA", tls_section("ca", Some("stranger"))),
    ] {
        harness.kafka_config = section;
        let said_before = harness.log_lines("ERROR Kafka client (FAIL)").len();
        let _lines = harness.serve_started();
        // The Kafka client's own words reach the log (it may say them before the API serves).
        let deadline = Instant::now() + Duration::from_secs(15);
        let said = loop {
            if let Some(line) = harness.log_lines("ERROR Kafka client (FAIL)").get(said_before) {
                break line.clone();
            }
            assert!(Instant::now() < deadline, "{what}: the Kafka client's failure never reached the log");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(said.contains("SSL"), "{what}: {said}");
        // The happy path consumed within 6 s; this one is still not connected after 8.
        std::thread::sleep(Duration::from_secs(8));
        let (status, body) = get(&harness.api, "/readyz");
        assert_eq!(status, 503, "{what}: {body}");
        assert!(body.contains("not connected to any Kafka broker"), "{what}: {body}");
        harness.kill_service();
    }
}

#[test]
fn a_full_state_disk_makes_the_service_not_ready_and_it_recovers_when_space_returns() {
    let mut harness = Harness::start("disk-full");
    let disk = SmallDisk::mount(&harness.dir.join("state"), "64m");
    let lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");
    harness.cordon_ok(&["isolate", "before-01", "--for", "1h"]);
    assert_eq!(next_command(&commands, &key, Duration::from_secs(10)).command_id, "before-01-1");

    // The disk fills up; detections keep coming until the store refuses one of their batches.
    let filler = disk.fill();
    let mut sent = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let host = format!("full-{:02}", sent.len());
        harness.produce("edr.detections", &host, &detection(&host, &format!("{host}-finding"), 5));
        sent.push(host);
        std::thread::sleep(Duration::from_millis(300));
        if get(&harness.api, "/readyz").0 == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "the service stayed ready on a full disk");
    }
    wait_for_line(&lines, "cannot be written");
    let (status, body) = get(&harness.api, "/readyz");
    assert_eq!(status, 503, "{body}");
    let readiness: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(readiness["checks"]["state"]["ok"], false, "{body}");
    let detail = readiness["checks"]["state"]["detail"].as_str().expect("a detail");
    assert!(detail.contains("No space left on device"), "{detail}");
    // Operators are answered at once that nothing was done; the service is still up.
    let started = Instant::now();
    let refused = harness.cordon(&["isolate", "during-01", "--for", "1h"]);
    assert!(started.elapsed() < Duration::from_secs(2), "the API took {:?}", started.elapsed());
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("the state store cannot be written") && said.contains("nothing was changed"), "{said}");
    assert!(harness.children.last_mut().unwrap().try_wait().unwrap().is_none(), "the service exited");
    // More detections while the disk is full: they wait in Kafka.
    for _ in 0..3 {
        let host = format!("full-{:02}", sent.len());
        harness.produce("edr.detections", &host, &detection(&host, &format!("{host}-finding"), 5));
        sent.push(host);
    }

    std::fs::remove_file(filler).expect("free the disk");
    wait_for_line(&lines, "the state store takes writes again");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&harness.api, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "not ready again after the disk was freed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every detection decided exactly once: one isolation per host, none lost, none doubled
    // (the released ones come after their 3 s).
    let mut isolations: std::collections::HashMap<String, Vec<u64>> = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent.iter().any(|host| !isolations.contains_key(host)) {
        assert!(Instant::now() < deadline, "not every host was isolated: {isolations:?} of {sent:?}");
        let command = next_command(&commands, &key, Duration::from_secs(30));
        if matches!(command.action, cordon_wire::Action::Isolate { .. }) {
            isolations.entry(command.host_id).or_default().push(command.generation);
        }
    }
    let quiet = Instant::now() + Duration::from_secs(2);
    while Instant::now() < quiet {
        if let Some(Ok(message)) = commands.poll(Duration::from_millis(100)) {
            let command = cordon_wire::open(message.payload().unwrap_or_default(), &key).expect("verifies");
            if matches!(command.action, cordon_wire::Action::Isolate { .. }) {
                isolations.entry(command.host_id).or_default().push(command.generation);
            }
        }
    }
    for host in &sent {
        // Resent while unanswered (no agent here), always at generation 1.
        assert!(isolations[host].iter().all(|generation| *generation == 1), "{host}: {isolations:?}");
        let trail = harness.host_json(host)["audit"].as_array().expect("an audit trail").clone();
        let isolating = trail.iter().filter(|entry| entry["to"] == "isolating").count();
        assert_eq!(isolating, 1, "{host} was decided {isolating} times: {trail:?}");
    }
    assert!(!isolations.contains_key("during-01"), "a refused request was carried out");
    // The service never restarted, and takes operators' changes again.
    assert_eq!(harness.log_lines("serving ").len(), 1);
    harness.cordon_ok(&["isolate", "after-01", "--for", "1h"]);
    drop(disk);
}

#[test]
fn a_second_service_with_the_same_instance_id_fences_the_first_and_forged_claims_fence_nobody() {
    let mut harness = Harness::start("twin");
    let first_lines = harness.serve();
    wait_for_line(&first_lines, "claimed the lease for instance_id cordon");
    assert_eq!(harness.log_lines("claimed the lease for instance_id cordon").len(), 1);
    let first_api = harness.api.clone();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");
    harness.cordon_ok(&["isolate", "first-01", "--for", "4s"]);
    assert_eq!(next_command(&commands, &key, Duration::from_secs(10)).command_id, "first-01-1");

    // The twin: the same configuration and keys, its own state (another machine), the API
    // token shared so that the test's client speaks to both.
    std::fs::create_dir_all(harness.dir.join("twin-state")).expect("twin state");
    std::fs::copy(harness.dir.join("state/api-token"), harness.dir.join("twin-state/api-token")).expect("token");
    harness.state = "twin-state";
    let twin_lines = harness.serve_started();
    wait_for_line(&twin_lines, "claimed the lease for instance_id cordon");
    let fenced = wait_for_line(&first_lines, "fenced: another cordon serve with instance_id cordon started later");
    assert!(fenced.contains("stops acting"), "{fenced}");

    // The first one stops acting: not ready, writes refused, reads answered, nothing sent.
    let (status, body) = get(&first_api, "/readyz");
    assert_eq!(status, 503, "{body}");
    let readiness: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(readiness["checks"]["lease"]["ok"], false, "{body}");
    let twin_api = std::mem::replace(&mut harness.api, first_api.clone());
    let refused = harness.cordon(&["isolate", "first-02", "--for", "1h"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("no longer acts"), "{said}");
    assert!(harness.cordon_ok(&["hosts"]).contains("first-01"));
    assert!((sample(&get(&first_api, "/metrics").1, "cordon_fenced") - 1.0).abs() < 1e-9, "cordon_fenced is 1");
    harness.api = twin_api;

    // Forged and replayed claims: one signed by another key, the first service's own claim
    // again (older than the twin). Neither fences the twin.
    let lease = harness.consumer("cordon.lease");
    let (_, first_claim) = next_message(&lease, Duration::from_secs(10));
    let stranger_key = cordon_wire::generate_signing_key();
    let forged = cordon_wire::lease::seal_lease(
        &cordon_wire::lease::Lease::new("cordon", "ffff", i64::MAX / 2, None),
        &stranger_key,
    );
    harness.produce("cordon.lease", "cordon", &forged);
    harness.produce("cordon.lease", "cordon", &first_claim);
    harness.produce("cordon.lease", "cordon", b"not even JSON");
    wait_for_line(&twin_lines, "is not a claim of cordon's");

    // The twin acts: it takes detections and decides; the first one's deadline passes
    // without a release from it.
    // (It consumes from its start: the service assigns itself the partitions, no group.)
    assert_eq!(harness.log_lines("INFO consuming cordon.status/0").len(), 2, "both started consuming");
    harness.produce("edr.detections", "twin-01", &detection("twin-01", "twin-01-finding", 5));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let command = next_command(&commands, &key, Duration::from_secs(30));
        assert_ne!(command.command_id, "first-01-2", "the fenced service lifted a deadline");
        if command.command_id == "twin-01-1" {
            break;
        }
        assert!(Instant::now() < deadline, "the twin never isolated twin-01");
    }
    std::thread::sleep(Duration::from_secs(3));
    while let Some(Ok(message)) = commands.poll(Duration::from_millis(200)) {
        let command = cordon_wire::open(message.payload().unwrap_or_default(), &key).expect("verifies");
        assert_ne!(command.command_id, "first-01-2", "the fenced service lifted a deadline");
    }
    assert_eq!(get(&harness.api, "/readyz").0, 200, "the twin is ready");
    assert!(!harness.log_lines("first-01: isolating -> releasing").iter().any(|line| !line.is_empty()));
}

#[test]
fn a_service_killed_twenty_times_at_random_moments_takes_its_partitions_back() {
    const CONSUMING: &str = "consuming cordon.status/0, edr.detections/0, edr.detections/1, edr.detections/2.";
    let mut harness = Harness::start("crash-loop");
    harness.serve();
    // Killed 0.2-12 s after each start (a fixed sequence): while it joins, right after it
    // consumes, while the group drops its predecessor. With static membership on tansu 0.6 the
    // group was lost for good within these twenty kills (no later start ever consumed).
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20 {
        harness.kill_service();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let lines = harness.serve_started();
        let _ = wait_for_line_within(&lines, CONSUMING, Duration::from_millis(200 + seed % 12_000));
    }
    harness.kill_service();
    let started = Instant::now();
    let lines = harness.serve_started();
    let consuming = wait_for_line_within(&lines, CONSUMING, Duration::from_secs(40));
    println!("the start after twenty kills consumed after {:?}", started.elapsed());
    assert!(consuming.is_some(), "the start after twenty kills took no partition within 40 s: the group is lost");
}

/// The isolate command `command` carries: (duration, exclusions).
fn isolation_of(command: &cordon_wire::Command) -> (Option<u64>, Vec<String>) {
    match &command.action {
        cordon_wire::Action::Isolate { duration_seconds, exclusions, .. } => (*duration_seconds, exclusions.clone()),
        cordon_wire::Action::Release { .. } => panic!("expected an isolate command, got {:?}", command.action),
    }
}

/// The isolation policy through the command line: the seed's 5 h for an automatic isolation
/// without a duration; a broken policy refused with every problem and nothing changed; a new
/// version reaching an isolated host live (same deadline, the profile's exclusions), used by the
/// next isolation; a stale edit refused; a tag an agent reports choosing nothing and an
/// operator's choosing its profile; history, diff and revert.
#[test]
fn the_isolation_policy_is_versioned_checked_and_reaches_isolated_hosts_live() {
    let mut harness = Harness::start("policy");
    let _lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");

    let seed: serde_json::Value = serde_json::from_str(&harness.cordon_ok(&["policy", "show", "--json"])).unwrap();
    assert_eq!((seed["version"].as_u64(), seed["author"].as_str()), (Some(1), Some("cordon")), "{seed}");
    assert!(seed["reason"].as_str().unwrap().contains("5h"), "the seed says where its 5 h come from: {seed}");
    harness.cordon_ok(&["isolate", "web-01", "--automatic", "--reason", "IR-1"]);
    let first = next_command(&commands, &key, Duration::from_secs(10));
    assert_eq!(isolation_of(&first), (Some(18_000), Vec::new()), "the seed's 5 h, nothing open");
    harness.report(&first, true);
    harness.wait_for_move("web-01", ("isolating", "isolated"), "agent", None);
    let deadline = harness.host_json("web-01")["expires_at"].clone();

    // Broken: every problem at once, exit 2, nothing changed, nothing sent.
    let broken = harness.dir.join("broken.toml");
    std::fs::write(
        &broken,
        "[[profiles]]\nname = \"default\"\ntags = [\"web\"]\nautomatic_duration_seconds = 0\n\
         [[profiles]]\nname = \"plc\"\ntags = [\"plc\"]\npriority = 5\nautomatic_duration_seconds = 60\n\
         exclusions = [\"out,tcp,192.0.2.300/32,502\"]\n\
         [[profiles]]\nname = \"ics\"\ntags = [\"ics\"]\npriority = 5\nautomatic_duration_seconds = 60\n",
    )
    .unwrap();
    let output = harness.cordon(&["policy", "set", &broken.to_string_lossy(), "--reason", "broken"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for problem in [
        "4 problem(s)",
        "profile default: the default profile selects no hosts by tag",
        "profile default: automatic_duration_seconds must be at least 1",
        "profile plc: exclusion \"out,tcp,192.0.2.300/32,502\"",
        "profile ics: priority 5 is also profile plc's",
    ] {
        assert!(stderr.contains(problem), "{problem:?} not in: {stderr}");
    }
    let output = harness.cordon(&["policy", "set", &harness.dir.join("none.toml").to_string_lossy(), "--reason", "x"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read the policy file"), "{output:?}");
    let output = harness.cordon(&["policy", "revert", "1", "--reason", " "]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("a reason is required"), "{output:?}");
    assert!(harness.cordon_ok(&["policy", "show"]).contains("# Isolation policy version 1,"));
    no_message(&commands, Duration::from_millis(500));

    // Version 2: every host keeps the historian open, automatic isolations last 10 minutes;
    // hosts an operator tagged plc keep their PLC's port instead, for 30 minutes.
    let plant = harness.dir.join("plant.toml");
    std::fs::write(
        &plant,
        "[[profiles]]\nname = \"default\"\nautomatic_duration_seconds = 600\nexclusions = [\"out,tcp,192.0.2.10/32,443\"]\n\
         [[profiles]]\nname = \"plc\"\ntags = [\"plc\"]\npriority = 10\nautomatic_duration_seconds = 1800\n\
         exclusions = [\"out,tcp,192.0.2.20/32,502\"]\n",
    )
    .unwrap();
    let plant = plant.to_string_lossy();
    let said = harness.cordon_ok(&["policy", "set", &plant, "--reason", "plant historian", "--expected-version", "1"]);
    assert!(said.starts_with("# Isolation policy version 2,") && said.contains("plant historian"), "{said}");
    let live = next_command(&commands, &key, Duration::from_secs(10));
    assert_eq!((live.host_id.as_str(), live.generation), ("web-01", 2));
    let (left, open) = isolation_of(&live);
    assert!(left.is_some_and(|s| (17_900..=18_000).contains(&s)), "what is left of the 5 h: {left:?}");
    assert_eq!(open, vec!["out,tcp,192.0.2.10/32,443"]);
    let host = harness.host_json("web-01");
    assert_eq!(host["expires_at"], deadline, "the deadline is kept: {host}");
    assert_eq!((host["profile"]["name"].as_str(), host["profile"]["version"].as_u64()), (Some("default"), Some(2)));
    let why = host["audit"].as_array().unwrap().last().unwrap()["why"].as_str().unwrap().to_owned();
    assert!(why.contains("applied live, deadline kept: +exclusion out,tcp,192.0.2.10/32,443"), "{why}");
    harness.report(&live, true);

    // An edit made from version 1 is refused now; the next automatic isolation takes 10 minutes.
    let output = harness.cordon(&["policy", "set", &plant, "--reason", "again", "--expected-version", "1"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("version 2, not 1"), "{output:?}");
    harness.cordon_ok(&["isolate", "web-02", "--automatic"]);
    let second = next_command(&commands, &key, Duration::from_secs(10));
    assert_eq!(second.host_id, "web-02");
    assert_eq!(isolation_of(&second), (Some(600), vec!["out,tcp,192.0.2.10/32,443".to_owned()]));
    harness.report(&second, true);

    // An agent that reports the tag plc chooses nothing; an operator's tag does, live.
    let mut claim = heartbeat("web-01", 2, true);
    claim["tags"] = serde_json::json!(["ISOLATED FROM NETWORK", "plc"]);
    claim["mode"] = "automatic".into();
    harness.publish_status(claim);
    no_message(&commands, Duration::from_secs(2));
    assert_eq!(harness.host_json("web-01")["profile"]["name"], "default");
    harness.cordon_ok(&["tag", "web-01", "--add", "plc"]);
    let retagged = next_command(&commands, &key, Duration::from_secs(10));
    assert_eq!((retagged.host_id.as_str(), retagged.generation), ("web-01", 3));
    assert_eq!(isolation_of(&retagged).1, vec!["out,tcp,192.0.2.20/32,502"]);
    harness.report(&retagged, true);

    let history: serde_json::Value =
        serde_json::from_str(&harness.cordon_ok(&["policy", "history", "--json"])).unwrap();
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");
    assert!(history[1]["author"].as_str().unwrap().starts_with("operator alice ("), "{history}");
    let diff = harness.cordon_ok(&["policy", "diff", "1", "2"]);
    for line in ["~ profile default: automatic_duration 5h -> 10m", "+ profile default: exclusions out,tcp,192.0.2.10/32,443", "+ profile plc"] {
        assert!(diff.contains(line), "{line:?} not in: {diff}");
    }

    // Back to version 1's policy, as version 3: both isolated hosts lose what it opened.
    let reverted: serde_json::Value =
        serde_json::from_str(&harness.cordon_ok(&["policy", "revert", "1", "--reason", "plant closed", "--json"])).unwrap();
    assert_eq!((reverted["version"].as_u64(), reverted["reverted_from"].as_u64()), (Some(3), Some(1)), "{reverted}");
    let mut hosts: Vec<(String, Vec<String>)> = (0..2)
        .map(|_| next_command(&commands, &key, Duration::from_secs(10)))
        .map(|command| (command.host_id.clone(), isolation_of(&command).1))
        .collect();
    hosts.sort();
    assert_eq!(hosts, vec![("web-01".to_owned(), Vec::new()), ("web-02".to_owned(), Vec::new())]);
}

/// A rules directory without rule files: the service starts, says that only operators will
/// isolate, decides nothing on a detection, and carries out an operator's isolation.
#[test]
fn an_empty_rules_directory_serves_operators_only_and_says_so() {
    let mut harness = Harness::start("no-rules");
    for file in ["ransomware.yaml", "suspicious.yaml"] {
        std::fs::remove_file(harness.dir.join("rules").join(file)).unwrap();
    }
    let _lines = harness.serve();
    // A warning: on standard error, in no set order with standard output's lines.
    let deadline = Instant::now() + Duration::from_secs(10);
    let said = loop {
        if let Some(line) = harness.log_lines("no rules in force").pop() {
            break line;
        }
        assert!(Instant::now() < deadline, "cordon serve never said that no rules are in force");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(said.contains("only operators' isolations (API, CLI, console) will happen"), "{said}");
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");
    harness.produce("edr.detections", "web-01", &detection("web-01", "ev-1", 9));
    no_message(&commands, Duration::from_secs(2));
    harness.cordon_ok(&["isolate", "web-01", "--for", "1h", "--reason", "by hand"]);
    assert_eq!(next_command(&commands, &key, Duration::from_secs(10)).host_id, "web-01");
}

/// One HTTP exchange with the console: method, path, cookie, form body (url-encoded) → status,
/// headers (lowercased names), body. Redirects are not followed.
fn console_call(
    api: &str,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
) -> (u16, std::collections::HashMap<String, String>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = format!("{api}{path}");
    let cookie = cookie.map(|id| format!("cordon_session={id}"));
    let response = if method == "GET" {
        let mut request = agent.get(&url);
        if let Some(cookie) = &cookie {
            request = request.header("cookie", cookie);
        }
        request.call()
    } else {
        let mut request = agent.post(&url);
        if let Some(cookie) = &cookie {
            request = request.header("cookie", cookie);
        }
        request.send_form(form.iter().copied())
    };
    let mut response = response.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap_or_default().to_owned()))
        .collect();
    (response.status().as_u16(), headers, response.body_mut().read_to_string().unwrap_or_default())
}

/// The value of `name` in a page's hidden input (the CSRF token).
fn hidden_value(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker).unwrap_or_else(|| panic!("no hidden {name} in the page")) + marker.len();
    page[start..].split('"').next().expect("a value").to_owned()
}

/// The console's defences over plain HTTP, as a hostile client would probe them: every answer
/// carries its security headers; the session cookie is `HttpOnly` and `SameSite=Strict`; a forged
/// cookie is no session; a POST without (or with another session's) CSRF token, an oversized
/// form, a bad query or host id, a bad form and a viewer's change are refused and change nothing;
/// a signed-out cookie opens nothing; 20 wrong tokens lock the source out of sign-in.
#[test]
fn the_console_refuses_forged_stale_oversized_and_unauthorised_requests() {
    let mut harness = Harness::start("console");
    let mut entries = String::new();
    let mut tokens = std::collections::HashMap::new();
    for (operator, role) in [("vera", "viewer"), ("rita", "responder")] {
        let (token, entry) = new_token(operator, role);
        entries.push_str(&entry);
        tokens.insert(role, token);
    }
    let tokens_file = harness.dir.join("api-tokens.toml");
    std::fs::write(&tokens_file, entries).expect("write the tokens file");
    harness.api_config = format!("tokens_file = \"{}\"\n", tokens_file.display());
    let _lines = harness.serve();
    let api = harness.api.clone();
    let commands = harness.consumer("cordon.commands");

    let (status, headers, _) = console_call(&api, "GET", "/console", None, &[]);
    assert_eq!((status, headers["location"].as_str()), (303, "/console/sign-in"));
    assert!(headers["content-security-policy"].contains("script-src 'self'"), "{headers:?}");
    assert!(!headers["content-security-policy"].contains("unsafe"), "{headers:?}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let (status, headers, _) = console_call(&api, "GET", "/console/assets/htmx-2.0.11.min.js", None, &[]);
    assert_eq!(status, 200);
    assert!(headers["cache-control"].contains("immutable"), "{headers:?}");
    assert_eq!(console_call(&api, "GET", "/console/assets/..%2F..%2Fetc%2Fpasswd", None, &[]).0, 404);

    let sign_in = |role: &str| -> String {
        let (status, headers, body) = console_call(&api, "POST", "/console/sign-in", None, &[("token", &tokens[role])]);
        assert_eq!(status, 303, "{body}");
        let cookie = &headers["set-cookie"];
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/console"), "{cookie}");
        assert!(!cookie.contains("Secure"), "no Secure flag over plain HTTP (the browser would drop the cookie)");
        cookie.trim_start_matches("cordon_session=").split(';').next().unwrap().to_owned()
    };
    let rita = sign_in("responder");
    let (status, _, fleet) = console_call(&api, "GET", "/console", Some(&rita), &[]);
    assert_eq!(status, 200);
    assert!(fleet.contains("rita (responder)"), "the token names the operator");
    let csrf = hidden_value(&fleet, "csrf");

    // A made-up session id is no session.
    let forged = "ab".repeat(32);
    assert_eq!(console_call(&api, "GET", "/console", Some(&forged), &[]).0, 303);
    // No CSRF token, another's, or a forged session: refused, nothing changes.
    let release = "/console/hosts/web-01/release";
    let (status, _, page) = console_call(&api, "POST", release, Some(&rita), &[("reason", "x")]);
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("CSRF token") && page.contains("nothing was changed"), "{page}");
    let vera = sign_in("viewer");
    let (_, _, vera_page) = console_call(&api, "GET", "/console", Some(&vera), &[]);
    let vera_csrf = hidden_value(&vera_page, "csrf");
    assert_eq!(console_call(&api, "POST", release, Some(&rita), &[("reason", "x"), ("csrf", &vera_csrf)]).0, 403);
    assert_eq!(console_call(&api, "POST", release, Some(&forged), &[("reason", "x"), ("csrf", &csrf)]).0, 303);
    // A viewer may look, not act.
    let (status, _, page) = console_call(&api, "POST", release, Some(&vera), &[("reason", "x"), ("csrf", &vera_csrf)]);
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("needs the role responder"), "{page}");
    // Oversized forms, bad queries and host ids.
    let big = "a".repeat(70 * 1_024);
    assert_eq!(console_call(&api, "POST", release, Some(&rita), &[("reason", &big), ("csrf", &csrf)]).0, 413);
    assert_eq!(console_call(&api, "GET", "/console?colour=red", Some(&rita), &[]).0, 400);
    assert_eq!(console_call(&api, "GET", "/console/hosts/web%0A01", Some(&rita), &[]).0, 400);
    assert_eq!(console_call(&api, "GET", "/console/history?from=yesterday", Some(&rita), &[]).0, 400);
    // A bad isolation form, even "confirmed": every problem shown, nothing sent.
    let form = [
        ("csrf", csrf.as_str()),
        ("confirm", "yes"),
        ("mode", "automatic"),
        ("duration", "forever"),
        ("reason", ""),
        ("exclusions", "out,tcp,10.0.0.0/33,443"),
    ];
    let (status, _, page) = console_call(&api, "POST", "/console/hosts/web-01/isolate", Some(&rita), &form);
    assert_eq!(status, 400, "{page}");
    for problem in ["a reason is required", "10.0.0.0/33", "forever"] {
        assert!(page.contains(problem), "{problem:?} not shown: {page}");
    }
    // A good one, without confirm=yes, is only shown for confirmation.
    let form = [("csrf", csrf.as_str()), ("mode", "manual"), ("reason", "IR-9")];
    let (status, _, page) = console_call(&api, "POST", "/console/hosts/web-01/isolate", Some(&rita), &form);
    assert_eq!(status, 200);
    assert!(page.contains("Cut web-01 off the network?"), "{page}");
    no_message(&commands, Duration::from_secs(1));
    assert!(!harness.cordon(&["host", "web-01"]).status.success(), "cordon still knows no web-01");
    // A bulk action needs the exact typed count.
    let (status, _, page) = console_call(
        &api,
        "POST",
        "/console/bulk",
        Some(&rita),
        &[("csrf", &csrf), ("action", "isolate"), ("reason", "worm"), ("expected", "1"), ("typed", "yes")],
    );
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("type exactly"), "{page}");

    // Signed out, the cookie opens nothing.
    let (status, headers, _) = console_call(&api, "POST", "/console/sign-out", Some(&rita), &[("csrf", &csrf)]);
    assert_eq!(status, 303);
    assert!(headers["set-cookie"].contains("Max-Age=0"), "{headers:?}");
    assert_eq!(console_call(&api, "GET", "/console", Some(&rita), &[]).0, 303);

    // Twenty wrong tokens from one source: the next sign-in, even with a good token, is 429.
    for _ in 0..20 {
        let (status, _, page) = console_call(&api, "POST", "/console/sign-in", None, &[("token", "not-a-token-at-all")]);
        assert_eq!(status, 401, "{page}");
    }
    let (status, _, page) = console_call(&api, "POST", "/console/sign-in", None, &[("token", &tokens["viewer"])]);
    assert_eq!(status, 429, "{page}");
    assert!(page.contains("Too many failed sign-ins"), "{page}");
}

/// `[console] listen`: the console on an address of its own, the API without it.
#[test]
fn the_console_can_have_a_listener_of_its_own() {
    let mut harness = Harness::start("console-listener");
    harness.api_config = "[console]\nlisten = \"127.0.0.1:0\"\n".to_owned();
    let lines = harness.serve_with("");
    let said = wait_for_line(&lines, "console on ");
    let console = said.split("console on ").nth(1).expect("an address").split("/console").next().unwrap().to_owned();
    let line = wait_for_line(&lines, "; API on ");
    let api = line.split("API on ").nth(1).expect("address").trim_end_matches('.').to_owned();
    assert_ne!(console, api, "{said}");
    assert_eq!(console_call(&console, "GET", "/console/sign-in", None, &[]).0, 200);
    assert_eq!(console_call(&console, "GET", "/v1/hosts", None, &[]).0, 404, "the API is not on the console's address");
    assert_eq!(console_call(&api, "GET", "/console/sign-in", None, &[]).0, 404, "nor the console on the API's");
}

/// A console session of the shared token's admin: its cookie and CSRF token.
fn console_admin(harness: &Harness) -> (String, String) {
    let token = std::fs::read_to_string(harness.dir.join("state/api-token")).expect("the API token");
    let (status, headers, body) =
        console_call(&harness.api, "POST", "/console/sign-in", None, &[("token", token.trim()), ("name", "alice")]);
    assert_eq!(status, 303, "{body}");
    let cookie = headers["set-cookie"].trim_start_matches("cordon_session=").split(';').next().unwrap().to_owned();
    let (_, _, page) = console_call(&harness.api, "GET", "/console", Some(&cookie), &[]);
    (cookie.clone(), hidden_value(&page, "csrf"))
}

/// A bulk isolation from the console selects by operators' tags only, leaves every isolation in
/// force as it is (a manual one stays manual), and acts only on the very hosts the operator saw.
#[test]
fn a_bulk_isolation_leaves_isolations_in_force_and_acts_only_on_the_hosts_seen() {
    let mut harness = Harness::start("bulk");
    let _lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");
    harness.cordon_ok(&["isolate", "web-01", "--manual", "--reason", "IR-1"]);
    let first = next_command(&commands, &key, Duration::from_secs(10));
    assert_eq!(first.host_id, "web-01");
    harness.report(&first, true);
    for host in ["web-01", "web-02", "web-03"] {
        harness.cordon_ok(&["tag", host, "--add", "lab"]);
    }
    // web-04's agent reports the tag itself: that selects nothing.
    harness.cordon_ok(&["tag", "web-04", "--add", "office"]);
    let mut claim = heartbeat("web-04", 0, false);
    claim["tags"] = serde_json::json!(["lab"]);
    harness.publish_status(claim);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !harness.host_json("web-04")["tags"].as_array().unwrap().iter().any(|t| t == "lab") {
        assert!(Instant::now() < deadline, "the agent's report never arrived");
        std::thread::sleep(Duration::from_millis(100));
    }

    let (cookie, csrf) = console_admin(&harness);
    let (status, _, preview) = console_call(&harness.api, "GET", "/console/bulk?tag=lab", Some(&cookie), &[]);
    assert_eq!(status, 200);
    assert!(preview.contains("<strong>3</strong> host(s) match"), "{preview}");
    assert!(!preview.contains("web-04"), "an agent's own tag selected its host");
    let selection = hidden_value(&preview, "selection");
    let bulk = |typed: &str, expected: &str, selection: &str| {
        let form = [
            ("csrf", csrf.as_str()),
            ("tag", "lab"),
            ("action", "isolate"),
            ("reason", "worm on the lab"),
            ("typed", typed),
            ("expected", expected),
            ("selection", selection),
        ];
        console_call(&harness.api, "POST", "/console/bulk", Some(&cookie), &form)
    };
    let (status, _, done) = bulk("isolate 3 hosts", "3", &selection);
    assert_eq!(status, 200, "{done}");
    assert!(done.contains("Done: 2 of 3 host(s)") && done.contains("already isolated: left as it is"), "{done}");
    let mut isolated: Vec<String> = (0..2)
        .map(|_| {
            let command = next_command(&commands, &key, Duration::from_secs(10));
            harness.report(&command, true);
            command.host_id
        })
        .collect();
    isolated.sort();
    assert_eq!(isolated, ["web-02", "web-03"]);
    let web01 = harness.host_json("web-01");
    // Its manual isolation stands: no new command, none with a duration.
    assert_eq!(web01["generation"].as_u64(), Some(1), "{web01}");
    assert_eq!(web01["command"]["duration_seconds"], serde_json::Value::Null, "{web01}");

    // The same count of other hosts, or another count: refused, nothing sent.
    harness.cordon_ok(&["tag", "web-03", "--remove", "lab"]);
    harness.cordon_ok(&["tag", "web-05", "--add", "lab"]);
    let (status, _, page) = bulk("isolate 3 hosts", "3", &selection);
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("the filter now selects other hosts (3) than the 3 you saw"), "{page}");
    harness.cordon_ok(&["tag", "web-06", "--add", "lab"]);
    assert_eq!(bulk("isolate 3 hosts", "3", &selection).0, 409);
    no_message(&commands, Duration::from_secs(1));
}

/// An isolation in force and its new profile must still fit an agent's kernel tables: a policy
/// change that would not is refused, naming the host; and so is a rules reload whose `allow:`
/// would not fit with a profile (the running rules stay).
#[test]
fn a_policy_or_rules_that_would_not_fit_an_isolation_in_force_are_refused() {
    let mut harness = Harness::start("fit");
    let lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");
    let mut isolate = vec!["isolate", "db-01", "--manual", "--reason", "IR-2"];
    let specs: Vec<String> = (1..=12).map(|port| format!("out,tcp,10.0.0.0/8,{port}")).collect();
    for spec in &specs {
        isolate.extend(["--allow", spec.as_str()]);
    }
    harness.cordon_ok(&isolate);
    next_command(&commands, &key, Duration::from_secs(10));
    let wider = harness.dir.join("wider.toml");
    std::fs::write(&wider, "[[profiles]]\nname = \"default\"\nautomatic_duration_seconds = 600\nexclusions = [\"out,udp,10.0.0.0/8,53\"]\n")
        .unwrap();
    let output = harness.cordon(&["policy", "set", &wider.to_string_lossy(), "--reason", "DNS"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("host db-01's isolation with profile default (policy version 2): 13 different exclusions apply to 10.0.0.0/8"), "{stderr}");
    assert!(harness.cordon_ok(&["policy", "show"]).contains("version 1,"), "nothing changed");
    no_message(&commands, Duration::from_millis(500));

    // Rules: the policy in force leaves 8 rules on 10.1.0.0/16; a rule with 6 more is refused.
    harness.cordon_ok(&["release", "db-01"]);
    next_command(&commands, &key, Duration::from_secs(10));
    let narrow = harness.dir.join("narrow.toml");
    let specs: Vec<String> = (1..=8).map(|port| format!("\"out,tcp,10.1.0.0/16,{port}\"")).collect();
    std::fs::write(
        &narrow,
        format!("[[profiles]]\nname = \"default\"\nautomatic_duration_seconds = 600\nexclusions = [{}]\n", specs.join(", ")),
    )
    .unwrap();
    harness.cordon_ok(&["policy", "set", &narrow.to_string_lossy(), "--reason", "eight"]);
    harness.put_rule("refused-rules/wide.yaml");
    let refused = wait_for_line(&lines, "rules NOT reloaded");
    assert!(refused.contains("would not fit an agent's kernel tables"), "{refused}");
    let detail = wait_for_line(&lines, "profile default with rule wide");
    assert!(detail.contains("14 different exclusions apply to 10.1.0.0/16"), "{detail}");
}

/// `[[inputs]]`: Elastic Security, Falco and Wazuh alerts on topics of their own, as those tools
/// write them, decide by their tools' own fields; a broken alert is dead-lettered with its
/// format named, and the others go on.
#[test]
fn alerts_of_other_tools_on_their_own_topics_decide_and_broken_ones_are_dead_lettered() {
    let mut harness = Harness::start("inputs");
    let url = format!("tcp://{}", harness.brokers);
    for topic in ["elastic.alerts", "falco.alerts", "wazuh.alerts"] {
        let status = Command::new(tansu())
            .args(["topic", "create", topic, "--partitions", "1", "--broker", &url])
            .stdout(Stdio::null())
            .status()
            .expect("tansu topic create");
        assert!(status.success(), "cannot create topic {topic}");
    }
    std::fs::copy(crate_dir().join("../rules/tests/cases/formats/formats.yaml"), harness.dir.join("rules/formats.yaml"))
        .expect("copy the format rules");
    harness.api_config = "[[inputs]]\ntopic = \"elastic.alerts\"\nformat = \"ecs\"\n[[inputs]]\ntopic = \"falco.alerts\"\n\
                          format = \"falco\"\n[[inputs]]\ntopic = \"wazuh.alerts\"\nformat = \"wazuh\"\n"
        .to_owned();
    let lines = harness.serve_started();
    let consuming = wait_for_line(&lines, "consuming ");
    for partition in ["elastic.alerts/0", "falco.alerts/0", "wazuh.alerts/0", "edr.detections/0"] {
        assert!(consuming.contains(partition), "{consuming}");
    }
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");
    let dead_letters = harness.consumer("cordon.dead-letter");

    // The fixtures' alerts, happening now.
    let now = time::OffsetDateTime::now_utc();
    let rfc3339 = now.format(&time::format_description::well_known::Rfc3339).unwrap();
    let wazuh_time = now.format(time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+0000")).unwrap();
    let sample = |format: &str, line: usize| -> String {
        let text = std::fs::read_to_string(crate_dir().join(format!("tests/fixtures/alerts/{format}.ndjson"))).unwrap();
        text.lines().nth(line).unwrap().to_owned()
    };
    let elastic = sample("ecs", 0).replace("2026-12-07T08:00:00.000Z", &rfc3339);
    let falco = sample("falco", 0).replace("2026-12-07T08:00:00.123456789Z", &rfc3339);
    let wazuh = sample("wazuh", 0).replace("2026-12-07T08:00:00.000+0000", &wazuh_time);
    let broken = sample("wazuh", 2);
    harness.produce("wazuh.alerts", "hmi-04", broken.as_bytes());
    harness.produce("elastic.alerts", "web-01", elastic.as_bytes());
    harness.produce("falco.alerts", "k8s-node-3", falco.as_bytes());
    harness.produce("wazuh.alerts", "plc-gw-07", wazuh.as_bytes());

    let mut isolated: Vec<(String, Option<u64>)> = (0..2)
        .map(|_| {
            let command = next_command(&commands, &key, Duration::from_secs(15));
            let duration = match command.action {
                cordon_wire::Action::Isolate { duration_seconds, .. } => duration_seconds,
                cordon_wire::Action::Release { .. } => panic!("expected an isolation"),
            };
            (command.host_id, duration)
        })
        .collect();
    isolated.sort();
    let hours = |seconds: Option<u64>| seconds.map(|s| s.div_ceil(3_600));
    assert_eq!(
        isolated.iter().map(|(host, duration)| (host.as_str(), hours(*duration))).collect::<Vec<_>>(),
        [("8a4f1c2e0b7d4e6f", Some(4)), ("k8s-node-3", Some(1))],
        "Elastic's host by host.id for 4 h, Falco's node for 1 h"
    );
    let (_, record) = next_message(&dead_letters, Duration::from_secs(15));
    check_dead_letter(&record, broken.as_bytes(), "invalid", "wazuh alert: field `rule.level` must be an integer 0-15, found 99");
    let deadline = Instant::now() + Duration::from_secs(10);
    while harness.cordon(&["host", "plc-gw-07"]).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "the Wazuh alert never reached plc-gw-07");
        std::thread::sleep(Duration::from_millis(100));
    }
    let plc = harness.host_json("plc-gw-07");
    assert_eq!(plc["state"], "pending_approval", "{plc}");
    assert_eq!(plc["pending"]["event_id"], "1796630400.1234567");
}

/// A shadow rule decides through the whole pipeline, sends nothing and changes no host, and what
/// it would have done is in the host's trail, the metrics and the report; the rules that act go
/// on acting beside it; `[rules] mode = "shadow"` makes every rule a shadow.
#[test]
fn shadow_rules_record_what_they_would_do_and_send_nothing() {
    let mut harness = Harness::start("shadow");
    harness.add_rule("watched.yaml");
    let lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");

    // Severity 6: the live ransomware rule (4 and up) isolates, the shadow rule only records.
    harness.produce("edr.detections", "web-09", &detection("web-09", "sh-1", 6));
    let command = next_command(&commands, &key, Duration::from_secs(10));
    assert_eq!(command.host_id, "web-09");
    assert!(matches!(command.action, cordon_wire::Action::Isolate { duration_seconds: Some(2 | 3), .. }), "the live rule's 3 s");
    harness.report(&command, true);
    wait_for_line(&lines, "rules watched (shadow)");
    // Its 3 s end; nothing else is sent for web-09.
    let release = next_command(&commands, &key, Duration::from_secs(10));
    assert!(matches!(release.action, cordon_wire::Action::Release { .. }), "{release:?}");
    harness.report(&release, false);
    no_message(&commands, Duration::from_secs(1));
    let host = harness.host_json("web-09");
    let shadow: Vec<&serde_json::Value> =
        host["audit"].as_array().unwrap().iter().filter(|entry| entry["shadow"] == true).collect();
    assert_eq!(shadow.len(), 1, "{host}");
    assert_eq!(shadow[0]["by"], "rules watched (shadow)");
    assert!(shadow[0]["why"].as_str().unwrap().starts_with("SHADOW isolate automatic 2h: "), "{}", shadow[0]);
    assert_eq!(shadow[0]["event_id"], "sh-1");
    assert!(harness.cordon_ok(&["host", "web-09"]).contains("[SHADOW] "), "the CLI marks it");

    let report: serde_json::Value =
        serde_json::from_str(&harness.cordon_ok(&["shadow", "report", "--since", "1h", "--json"])).unwrap();
    assert_eq!(report["decisions"], 1, "{report}");
    assert_eq!(report["hosts"][0]["host"], "web-09");
    assert_eq!(report["hosts"][0]["would"], serde_json::json!(["isolate automatic 2h"]));
    assert_eq!(report["rules"], serde_json::json!([{"rule": "watched", "decisions": 1, "hosts": 1}]));
    let (_, metrics) = get(&harness.api, "/metrics");
    assert!((sample(&metrics, "cordon_shadow_decisions_total{rule=\"watched\"}") - 1.0).abs() < 1e-9, "{metrics}");
    let output = harness.cordon(&["shadow", "report", "--since", "soon"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");

    // Every rule a shadow: a detection of a host cordon does not know sends nothing, creates no
    // record, and its trail says what would have been done.
    harness.kill_service();
    harness.rules_config = "mode = \"shadow\"\n".to_owned();
    let _lines = harness.serve();
    harness.produce("edr.detections", "web-10", &detection("web-10", "sh-2", 5));
    no_message(&commands, Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(10);
    let host = loop {
        let output = harness.cordon(&["host", "web-10", "--json"]);
        if output.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap();
        }
        assert!(Instant::now() < deadline, "no trail for web-10");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(host["state"], "not_isolated", "{host}");
    assert_eq!(host["audit"][0]["by"], "rules ransomware (shadow)", "{host}");
    let hosts: serde_json::Value = serde_json::from_str(&harness.cordon_ok(&["hosts", "--json"])).unwrap();
    assert!(!hosts.as_array().unwrap().iter().any(|h| h["host"] == "web-10"), "no record for a shadow decision");
}

/// A replay with the service's own cordon.toml decides what the service decides: host tags from
/// the same sources (the inventory; a detection's device.groups only where configured), so a host
/// the inventory protects is proposed in both, and one whose detection claims a protected group
/// is isolated in both.
#[test]
fn a_replay_with_the_services_config_decides_what_the_service_decides() {
    let mut harness = Harness::start("same-tags");
    std::fs::write(harness.dir.join("rules/policy.yaml"), "protect: [plc]\n").unwrap();
    let inventory = harness.dir.join("inventory.toml");
    std::fs::write(&inventory, "\"plc-9\" = [\"plc\", \"line-3\"]\n").unwrap();
    harness.rules_config = format!("inventory = \"{}\"\n", inventory.display());
    let _lines = harness.serve();
    let key = harness.public_key();
    let commands = harness.consumer("cordon.commands");
    let claims_plc = |host: &str, id: &str| -> Vec<u8> {
        let mut event: serde_json::Value = serde_json::from_slice(&detection(host, id, 5)).unwrap();
        event["device"]["groups"] = serde_json::json!([{"name": "plc"}]);
        event.to_string().into_bytes()
    };
    let events = [detection("ws-1", "t-1", 5), detection("plc-9", "t-2", 5), claims_plc("ews-2", "t-3")];
    let file = harness.dir.join("events.ndjson");
    std::fs::write(&file, events.iter().map(|e| String::from_utf8_lossy(e) + "\n").collect::<String>()).unwrap();

    let replayed = Command::new(CORDON)
        .args(["rules", "test"])
        .arg(harness.dir.join("rules"))
        .arg("--events")
        .arg(&file)
        .arg("--config")
        .arg(harness.dir.join("cordon.toml"))
        .arg("--json")
        .output()
        .expect("cordon rules test");
    assert!(replayed.status.success(), "{replayed:?}");
    let mut replay: Vec<(String, String)> = String::from_utf8_lossy(&replayed.stdout)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .map(|d| (d["host"].as_str().unwrap().to_owned(), d["action"].as_str().unwrap().to_owned()))
        .collect();
    replay.sort();

    for (event, host) in events.iter().zip(["ws-1", "plc-9", "ews-2"]) {
        harness.produce("edr.detections", host, event);
    }
    let mut served: Vec<(String, String)> = (0..2)
        .map(|_| (next_command(&commands, &key, Duration::from_secs(10)).host_id, "isolate".to_owned()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while harness.cordon(&["host", "plc-9"]).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "plc-9 never decided");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(harness.host_json("plc-9")["state"], "pending_approval");
    served.push(("plc-9".to_owned(), "request_approval".to_owned()));
    served.sort();
    assert_eq!(
        replay,
        [("ews-2".to_owned(), "isolate".to_owned()), ("plc-9".to_owned(), "request_approval".to_owned()), ("ws-1".to_owned(), "isolate".to_owned())]
    );
    assert_eq!(served, replay, "the replay decided what the service decided");
}
