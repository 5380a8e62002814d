//! `cordon serve` against a real Kafka-protocol broker (tansu, started by the test): detections
//! become signed commands for the right host, invalid events go to the dead-letter topic with
//! their reason and bytes, agent reports move hosts to isolated, and the scheduler releases an
//! automatic isolation at its deadline.

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

const CORDON: &str = env!("CARGO_BIN_EXE_cordon");

/// Processes the test started, killed on drop; a scratch directory, removed on drop.
struct Harness {
    children: Vec<Child>,
    dir: PathBuf,
    brokers: String,
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

impl Harness {
    fn start(name: &str) -> Harness {
        let dir = std::env::temp_dir().join(format!("cordon-service-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rules")).expect("create dirs");
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let broker = Command::new(tansu())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let mut harness = Harness { children: vec![broker], dir, brokers: format!("127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        for (topic, partitions) in [
            ("edr.detections", "3"),
            ("cordon.commands", "3"),
            ("cordon.status", "1"),
            ("cordon.dead-letter", "1"),
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

    fn write_rules(&mut self) {
        std::fs::write(
            self.dir.join("rules/ransomware.yaml"),
            "id: ransomware\ntitle: Ransomware\ndetection:\n  selection:\n    severity_id|gte: 4\n  condition: selection\n\
             response:\n  isolate:\n    mode: automatic\n    duration: 3s\n    allow: [\"out,tcp,198.51.100.7/32,443\"]\n",
        )
        .expect("write rule");
    }

    /// Starts `cordon serve`; returns the channel of its output lines and the public key.
    fn serve(&mut self) -> (mpsc::Receiver<String>, cordon_wire::VerifyingKey) {
        let keys = self.dir.join("keys");
        let output =
            Command::new(CORDON).args(["keygen", "--out"]).arg(&keys).output().expect("cordon keygen");
        assert!(output.status.success(), "keygen: {}", String::from_utf8_lossy(&output.stderr));
        let public = std::fs::read_to_string(keys.join("signing.pub")).expect("read public key");
        let config = self.dir.join("cordon.toml");
        std::fs::write(
            &config,
            format!(
                "[kafka]\nbrokers = \"{}\"\n[rules]\ndir = \"{}\"\n[state]\ndir = \"{}\"\n[signing]\nkey_file = \"{}\"\n",
                self.brokers,
                self.dir.join("rules").display(),
                self.dir.join("state").display(),
                keys.join("signing.key").display()
            ),
        )
        .expect("write config");
        let mut child = Command::new(CORDON)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cordon serve");
        let stdout = child.stdout.take().expect("stdout");
        self.children.push(child);
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        (receiver, cordon_wire::verifying_key_from_base64(&public).expect("public key"))
    }

    fn produce(&self, topic: &str, key: &str, value: &[u8]) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("partitioner", "murmur2_random")
            .create()
            .expect("producer");
        producer.send(BaseRecord::to(topic).key(key).payload(value)).map_err(|(e, _)| e).expect("send");
        producer.flush(Duration::from_secs(10)).expect("flush");
    }

    fn consumer(&self, topic: &str) -> BaseConsumer {
        let consumer: BaseConsumer = ClientConfig::new()
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

fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
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
fn detection_becomes_a_signed_command_and_the_deadline_a_release() {
    let mut harness = Harness::start("flow");
    let (lines, public_key) = harness.serve();
    wait_for_line(&lines, "serving 1 rule");
    let commands = harness.consumer("cordon.commands");

    let started = Instant::now();
    harness.produce("edr.detections", "web-01", &detection("web-01", "ev-1", 5));
    let (key, envelope) = next_message(&commands, Duration::from_secs(15));
    assert_eq!(key, "web-01", "commands are keyed by host");
    let command =
        cordon_wire::open(&envelope, &public_key).expect("the command verifies with the public key");
    assert_eq!(command.host_id, "web-01");
    assert_eq!(command.generation, 1);
    match &command.action {
        cordon_wire::Action::Isolate { duration_seconds, exclusions, .. } => {
            assert!(matches!(duration_seconds, Some(2 | 3)), "duration {duration_seconds:?}");
            assert_eq!(exclusions, &vec!["out,tcp,198.51.100.7/32,443".to_owned()]);
        }
        cordon_wire::Action::Release { .. } => {
            panic!("expected an isolate command, got {:?}", command.action)
        }
    }
    wait_for_line(&lines, "web-01 -> Isolating");

    // The agent's report confirms it.
    let status = serde_json::json!({
        "version": 1, "host_id": "web-01", "sent_at_ms": 0, "kind": "applied", "command_id": command.command_id,
        "generation": 1, "isolated": true, "mode": "automatic", "expires_at_ms": null, "exclusions": [],
        "tags": ["ISOLATED FROM NETWORK"], "refusal": null, "error": null, "packets_dropped": 0, "packets_allowed": 0
    });
    harness.produce("cordon.status", "web-01", status.to_string().as_bytes());
    wait_for_line(&lines, "web-01 -> Isolated (agent report)");

    // A duplicate of the same event isolates nothing twice.
    harness.produce("edr.detections", "web-01", &detection("web-01", "ev-1", 5));

    // At the deadline (3 s) the scheduler sends a release with the next generation.
    let (_, envelope) = next_message(&commands, Duration::from_secs(10));
    let release = cordon_wire::open(&envelope, &public_key).expect("the release verifies");
    assert!(matches!(release.action, cordon_wire::Action::Release { .. }), "{release:?}");
    assert_eq!(release.generation, 2, "the duplicate event must not have produced a command");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(2), "released early ({elapsed:?})");
    assert!(elapsed < Duration::from_secs(5), "released late ({elapsed:?})");
}

#[test]
fn invalid_events_go_to_the_dead_letter_topic_with_reason_and_bytes() {
    let mut harness = Harness::start("dlq");
    let (lines, _) = harness.serve();
    wait_for_line(&lines, "serving 1 rule");
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
    wait_for_line(&lines, "web-02 -> Isolating");
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
