//! Benchmark of `cordon serve` (the optimised binary) against a real Kafka-protocol broker
//! (tansu, in memory), started here:
//!
//! 1. sustained detection throughput: generated ~1.4 KB detections (100 SOC-like rules, 10,000
//!    hosts) produced beforehand, then consumed, evaluated, made durable and committed; beside it
//!    the floor: a bare rdkafka consumer reading the same topic and doing nothing else;
//! 2. resident memory of the service with 10,000 hosts known;
//! 3. lift precision over 10,000 timed isolations: when each release command reached the broker,
//!    against its isolation's deadline;
//! 4. restart recovery with 100,000 isolations in sled: `kill -9`, then the time until the service
//!    serves again and until it has acted on a new detection;
//! 5. the overhead of observability: part 1's workload with telemetry off and on (traces and
//!    metrics exported over OTLP/gRPC to a receiver in this process).
//!
//! Run: `cargo bench -p orchestrator --bench service` (needs tansu: `ops/install-toolchain.sh`).
//! `CORDON_BENCH_EVENTS` sets the number of events of part 1 (default 200,000);
//! `CORDON_BENCH_TECHNIQUES` how many ATT&CK techniques the events draw from (default 3,000: one
//! detection in ten leads to a command; 30,000: about one in a hundred); `CORDON_BENCH_RULES=sigma`
//! uses the Sigma-style rules (keyword searches of every text, windash, base64offset, fieldref…),
//! `sigma-keyword-fields` the same with keywords kept to two fields. A filter word
//! (`throughput`, `lift`, `restart`, `overhead`) runs one part. The numbers go into BENCHMARKS.md.

#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::duration_suboptimal_units,
    reason = "a measurement script: counts become rates and percentiles, and its time limits read in seconds"
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

#[path = "../../rules/benches/workload/mod.rs"]
mod workload;

const CORDON: &str = env!("CARGO_BIN_EXE_cordon");
const PARTITIONS: i32 = 3;

fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The broker, and everything the benchmark started; killed and removed on drop.
struct Bench {
    broker: Child,
    url: String,
    brokers: String,
    dir: PathBuf,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.broker.kill();
        let _ = self.broker.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `cordon serve`: its process and its output lines.
struct Service {
    child: Child,
    lines: mpsc::Receiver<String>,
    spawned: Instant,
}

impl Service {
    fn wait_for(&self, needle: &str, limit: Duration) -> Instant {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Instant::now(),
                Ok(_) => {}
                Err(error) => panic!("cordon serve never said '{needle}' ({error})"),
            }
        }
    }

    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| -> u64 {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bench {
    fn start() -> Bench {
        let tansu = Command::new("sh").args(["-c", "command -v tansu"]).output().unwrap();
        assert!(tansu.status.success(), "this benchmark needs tansu: run ops/install-toolchain.sh");
        let tansu = String::from_utf8_lossy(&tansu.stdout).trim().to_owned();
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let broker = Command::new(&tansu)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("cordon-bench-service-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let bench = Bench { broker, url, brokers: format!("127.0.0.1:{port}"), dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let keygen =
            Command::new(CORDON).args(["keygen", "--out"]).arg(bench.dir.join("keys")).output().unwrap();
        assert!(keygen.status.success(), "{}", String::from_utf8_lossy(&keygen.stderr));
        bench
    }

    /// Creates the four topics of a part, prefixed with `part`.
    fn topics(&self, part: &str) {
        for topic in ["detections", "commands", "status", "dead-letter"] {
            let status = Command::new("tansu")
                .args([
                    "topic",
                    "create",
                    &format!("{part}.{topic}"),
                    "--partitions",
                    &PARTITIONS.to_string(),
                ])
                .args(["--broker", &self.url])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "cannot create topic {part}.{topic}");
        }
    }

    /// Starts `cordon serve` for `part` with `rules` (one file); waits until it serves.
    fn serve(&self, part: &str, rules: &str) -> Service {
        self.serve_with(part, part, rules, "")
    }

    /// Starts `cordon serve` with its own state, group and rules (named by `part`) on the
    /// topics of `topics`, with `extra` appended to its configuration.
    fn serve_with(&self, part: &str, topics: &str, rules: &str, extra: &str) -> Service {
        let rules_dir = self.dir.join(part).join("rules");
        if !rules_dir.exists() {
            std::fs::create_dir_all(&rules_dir).unwrap();
            std::fs::write(rules_dir.join("rules.yaml"), rules).unwrap();
        }
        let config = self.dir.join(part).join("cordon.toml");
        std::fs::write(
            &config,
            format!(
                "[kafka]\nbrokers = \"{b}\"\ndetections_topic = \"{topics}.detections\"\ncommands_topic = \"{topics}.commands\"\n\
                 status_topic = \"{topics}.status\"\ndead_letter_topic = \"{topics}.dead-letter\"\ngroup_id = \"{part}\"\n\
                 instance_id = \"{part}\"\n[rules]\ndir = \"{r}\"\n[state]\ndir = \"{s}\"\n[signing]\nkey_file = \"{k}\"\n\
                 [api]\nlisten = \"127.0.0.1:0\"\n[agents]\nresend_after_seconds = 86400\n{extra}",
                b = self.brokers,
                r = rules_dir.display(),
                s = self.dir.join(part).join("state").display(),
                k = self.dir.join("keys/signing.key").display(),
            ),
        )
        .unwrap();
        let spawned = Instant::now();
        let mut child = Command::new(CORDON)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains("error") {
                        eprintln!("serve: {line}");
                    }
                    let _ = sender.send(line);
                }
            });
        }
        let service = Service { child, lines, spawned };
        service.wait_for("API on http://", Duration::from_secs(120));
        service
    }

    /// Produces every `(key, value)`; returns how long the broker took to take them all.
    fn produce(&self, topic: &str, records: impl Iterator<Item = (String, String)>) -> (usize, Duration) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "20")
            .set("batch.num.messages", "5000")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "2000000")
            .create()
            .unwrap();
        let started = Instant::now();
        let mut count = 0;
        for (key, value) in records {
            let mut record = BaseRecord::to(topic).key(&key).payload(&value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(5));
                    }
                }
            }
            count += 1;
        }
        producer.flush(Duration::from_secs(300)).unwrap();
        (count, started.elapsed())
    }

    /// A consumer of `topic` that sees only what is produced from now on (ready when it returns).
    fn tail(&self, topic: &str) -> BaseConsumer {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("bench-tail-{topic}-{}", now_ms()))
            .set("auto.offset.reset", "latest")
            .set("fetch.wait.max.ms", "1")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while consumer.assignment().unwrap().count() == 0 {
            assert!(Instant::now() < deadline, "the tail consumer of {topic} never started");
            consumer.poll(Duration::from_millis(10));
        }
        // Long enough for it to have looked up where the partitions end.
        let settle = Instant::now() + Duration::from_secs(1);
        while Instant::now() < settle {
            assert!(
                consumer.poll(Duration::from_millis(10)).is_none(),
                "the tail consumer read an old message"
            );
        }
        consumer
    }

    /// A client of `group` that asks for its committed offsets (without joining it).
    fn group_client(&self, group: &str) -> BaseConsumer {
        ClientConfig::new().set("bootstrap.servers", &self.brokers).set("group.id", group).create().unwrap()
    }

    /// The sum over partitions of the offsets `consumer`'s group committed on `topic`.
    fn committed(consumer: &BaseConsumer, topic: &str) -> i64 {
        let mut list = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            list.add_partition(topic, p);
        }
        let committed = consumer.committed_offsets(list, Duration::from_secs(10)).unwrap();
        committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(n) => n,
                _ => 0,
            })
            .sum()
    }

    /// Every message of `topic` (from the start) until `want` have been read, or none came for
    /// `quiet`, or `limit` passed: key, value, and the broker's timestamp (ms). (The high
    /// watermarks tansu 0.6 reports lag behind what it holds, so messages are counted by reading.)
    fn read_all(
        &self,
        topic: &str,
        want: usize,
        limit: Duration,
        quiet: Duration,
    ) -> Vec<(String, Vec<u8>, i64)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("bench-reader-{topic}-{}", now_ms()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            // As the service's consumer does (tansu answers a fetch only at the end of its wait).
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        let mut last = Instant::now();
        while out.len() < want && Instant::now() < deadline && last.elapsed() < quiet {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                last = Instant::now();
                out.push((
                    String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                    message.payload().unwrap_or_default().to_vec(),
                    message.timestamp().to_millis().unwrap_or(0),
                ));
            }
        }
        out
    }
}

/// CPU time (user + system) process `pid` has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    cpu_seconds_of(&format!("/proc/{pid}/stat"))
}

/// CPU seconds of each thread of `pid`, by thread name (threads of one name summed), most first.
fn cpu_by_thread(pid: u32) -> Vec<(String, f64)> {
    let mut by_name: HashMap<String, f64> = HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let name =
            stat.split_once('(').and_then(|(_, rest)| rest.rsplit_once(')')).map_or("", |(name, _)| name);
        let name = name.trim_end_matches(|c: char| c.is_ascii_digit()).to_owned();
        let tid: u32 = task.file_name().to_string_lossy().parse().unwrap_or(0);
        *by_name.entry(name).or_default() += cpu_seconds_of(&format!("/proc/{pid}/task/{tid}/stat"));
    }
    let mut threads: Vec<(String, f64)> = by_name.into_iter().collect();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    threads
}

/// CPU seconds in a `/proc/.../stat` file (a process's or a thread's).
fn cpu_seconds_of(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and
    // 13th, in clock ticks of 1/100 s (USER_HZ).
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// One sample of a run: when, how many offsets were committed, and the CPU seconds the service
/// and the broker had used.
struct Sample {
    at: Instant,
    committed: i64,
    service_cpu: f64,
    broker_cpu: f64,
}

/// Waits until `group` has committed `total` offsets on `topic`, sampling every 50 ms with one
/// client (the benchmark shares the machine's two cores with the service and the broker).
fn wait_committed(
    bench: &Bench,
    service: &Service,
    group: &str,
    topic: &str,
    total: i64,
    limit: Duration,
) -> Vec<Sample> {
    let deadline = Instant::now() + limit;
    let client = bench.group_client(group);
    let mut samples = Vec::new();
    loop {
        let committed = Bench::committed(&client, topic);
        samples.push(Sample {
            at: Instant::now(),
            committed,
            service_cpu: cpu_seconds(service.child.id()),
            broker_cpu: cpu_seconds(bench.broker.id()),
        });
        if committed >= total {
            return samples;
        }
        assert!(Instant::now() < deadline, "only {committed} of {total} committed within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn throughput_and_memory(bench: &Bench) {
    let events: u64 =
        std::env::var("CORDON_BENCH_EVENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(200_000);
    let hosts = 10_000;
    let techniques: u32 = std::env::var("CORDON_BENCH_TECHNIQUES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(workload::TECHNIQUES);
    bench.topics("throughput");
    let (produced, took) = produce_workload(bench, "throughput.detections", events, hosts, techniques);
    println!(
        "throughput: {techniques} techniques drawn from (the rules name 200 of them); produced {produced} detections in {:.1} s ({:.0}/s into tansu)",
        took.as_secs_f64(),
        produced as f64 / took.as_secs_f64()
    );
    let total = i64::try_from(produced).unwrap();

    // The floor: a bare consumer reading the same topic.
    let floor_started = Instant::now();
    let read = bench
        .read_all("throughput.detections", produced, Duration::from_secs(600), Duration::from_secs(30))
        .len();
    let floor = floor_started.elapsed();
    println!(
        "throughput: a bare rdkafka consumer read {read} in {:.2} s: {:.0} events/s (the broker's floor)",
        floor.as_secs_f64(),
        read as f64 / floor.as_secs_f64()
    );

    let rules = std::env::var("CORDON_BENCH_RULES").unwrap_or_default();
    let rules_text = match rules.as_str() {
        "" | "plain" => workload::rules_text(100),
        "sigma" | "sigma-keyword-fields" => workload::sigma_rules_text(100),
        other => panic!("CORDON_BENCH_RULES is plain, sigma or sigma-keyword-fields, not {other}"),
    };
    if rules == "sigma-keyword-fields" {
        let dir = bench.dir.join("throughput/rules");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rules.yaml"), &rules_text).unwrap();
        std::fs::write(dir.join("policy.yaml"), workload::SIGMA_POLICY).unwrap();
    }
    println!("throughput: rules {}", if rules.is_empty() { "plain" } else { &rules });
    let service = bench.serve("throughput", &rules_text);
    let serving = Instant::now();
    let samples = wait_committed(
        bench,
        &service,
        "throughput",
        "throughput.detections",
        total,
        Duration::from_secs(600),
    );
    let done = samples.last().unwrap();
    let Rate { events: steady, service_cores, broker_cores } = steady_rate(&samples, total, hosts);
    println!(
        "throughput: cordon serve committed {total} in {:.2} s after it started serving ({:.0} events/s, \
         joining the group and the warm-up included); {steady:.0} events/s once the {hosts} hosts were known, using {service_cores:.2} \
         cores ({:.0} events per CPU-second) while tansu used {broker_cores:.2}",
        done.at.duration_since(serving).as_secs_f64(),
        total as f64 / done.at.duration_since(serving).as_secs_f64(),
        steady / service_cores,
    );
    let commands = bench
        .read_all("throughput.commands", usize::MAX, Duration::from_secs(120), Duration::from_secs(3))
        .len();
    println!(
        "throughput: {commands} commands sent ({hosts} for the warm-up): {:.1}% of the detections led to a decision with a command",
        commands as f64 * 100.0 / total as f64
    );
    std::thread::sleep(Duration::from_secs(2));
    let (rss, peak) = service.rss_kib();
    println!(
        "memory: {hosts} hosts known, {commands} commands issued: resident {:.1} MiB, peak {:.1} MiB",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    service.kill_9();
}

/// Produces one detection per host that rule-0 isolates (so all `hosts` are known), then the
/// generated mix of `events`; returns how many and how long the broker took.
fn produce_workload(
    bench: &Bench,
    topic: &str,
    events: u64,
    hosts: u32,
    techniques: u32,
) -> (usize, Duration) {
    let start = now_ms();
    let every_host = (0..hosts).map(move |h| {
        let event = format!(
            r#"{{"time":{start},"severity_id":5,"device":{{"uid":"host-{h:04}"}},"finding_info":{{"uid":"first-{h}","attacks":[{{"technique":{{"uid":"T1000"}}}}]}},"process":{{"name":"x.exe"}}}}"#
        );
        (format!("host-{h:04}"), event)
    });
    let mut random = workload::Random(0x9e37_79b9_7f4a_7c15);
    let mix = (0..events).map(move |i| {
        let text = workload::event_from(&mut random, i, hosts, u64::try_from(start).unwrap() + i, techniques);
        let host = text.split(r#""device":{"uid":""#).nth(1).unwrap().split('"').next().unwrap().to_owned();
        (host, text)
    });
    bench.produce(topic, every_host.chain(mix))
}

/// The steady rate of `samples`: from when the warm-up (one isolation per host) is committed
/// to the end; with the service's CPU use over that time.
fn steady_rate(samples: &[Sample], total: i64, hosts: u32) -> Rate {
    let first = samples.iter().find(|sample| sample.committed >= i64::from(hosts)).unwrap();
    rate_since(first, samples.last().unwrap(), total)
}

/// Events per second, and the cores the service and the broker used, over part of a run.
struct Rate {
    events: f64,
    service_cores: f64,
    broker_cores: f64,
}

/// The rate from `start` to `done`, when `total` were committed.
fn rate_since(start: &Sample, done: &Sample, total: i64) -> Rate {
    let span = done.at.duration_since(start.at).as_secs_f64();
    Rate {
        events: (total - start.committed) as f64 / span,
        service_cores: (done.service_cpu - start.service_cpu) / span,
        broker_cores: (done.broker_cpu - start.broker_cpu) / span,
    }
}

/// The rate over all events: from the last sample before the first commit (the first batch was
/// being handled then, or about to be: samples come every 50 ms) to the last commit.
fn whole_rate(samples: &[Sample], total: i64) -> Rate {
    let first_commit = samples.iter().position(|sample| sample.committed > 0).unwrap();
    rate_since(&samples[first_commit.saturating_sub(1)], samples.last().unwrap(), total)
}

/// Part 5, what observability costs: the same detections served with telemetry off and on
/// (traces and metrics exported over OTLP/gRPC to a receiver in this process that decodes and
/// counts them, on the same two cores), alternately, `CORDON_BENCH_ROUNDS` times each (default 3),
/// each run with fresh state; compared by the median of each round's on/off ratio (runs differ
/// by up to a third on this machine, drifting over minutes; a round's two runs are adjacent).
fn telemetry_overhead(bench: &Bench) {
    let events: u64 =
        std::env::var("CORDON_BENCH_EVENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(200_000);
    let hosts = 10_000;
    bench.topics("overhead");
    let techniques: u32 = std::env::var("CORDON_BENCH_TECHNIQUES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(workload::TECHNIQUES);
    let (produced, _) = produce_workload(bench, "overhead.detections", events, hosts, techniques);
    let total = i64::try_from(produced).unwrap();
    let receiver =
        cordon_tests::otlp::Receiver::start(std::net::Ipv4Addr::LOCALHOST.into(), 0, 0, None).unwrap();
    let counts = std::sync::Arc::clone(&receiver.counts);
    // `CORDON_BENCH_OTLP_PROTOCOL`: grpc (default), http/protobuf or http/json.
    let protocol = std::env::var("CORDON_BENCH_OTLP_PROTOCOL").unwrap_or_else(|_| "grpc".to_owned());
    let endpoint = if protocol == "grpc" { receiver.grpc } else { receiver.http };
    let exporting =
        format!("[telemetry]\notlp_endpoint = \"http://{endpoint}\"\notlp_protocol = \"{protocol}\"\n");
    let mut rates: HashMap<bool, Vec<f64>> = HashMap::new();
    let mut costs: HashMap<bool, Vec<f64>> = HashMap::new();
    let mut ratios: Vec<f64> = Vec::new();
    let rounds: usize =
        std::env::var("CORDON_BENCH_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(3).max(1);
    // Off, on, then on, off, then off, on, ...: each setting runs as often first as last.
    for round in 0..rounds {
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for on in order {
            let part = format!("overhead-{round}-{}", if on { "on" } else { "off" });
            let before = counts.spans.load(std::sync::atomic::Ordering::Relaxed);
            let service = bench.serve_with(
                &part,
                "overhead",
                &workload::rules_text(100),
                if on { &exporting } else { "" },
            );
            let samples = wait_committed(
                bench,
                &service,
                &part,
                "overhead.detections",
                total,
                Duration::from_secs(600),
            );
            // All of it, warm-up included: its decisions (and the export of their spans, which
            // goes on after them) are part of what is compared.
            let Rate { events: rate, service_cores: cores, .. } = whole_rate(&samples, total);
            std::thread::sleep(Duration::from_secs(2));
            let exported = counts.spans.load(std::sync::atomic::Ordering::Relaxed) - before;
            let threads: Vec<String> = cpu_by_thread(service.child.id())
                .iter()
                .take(6)
                .map(|(name, seconds)| format!("{name} {seconds:.2}"))
                .collect();
            println!("overhead: CPU seconds by thread: {}", threads.join(", "));
            let cost = cores * 1e6 / rate;
            println!(
                "overhead: telemetry {}: {rate:.0} events/s from the first batch to the last commit, {cores:.2} cores ({cost:.1} CPU-us per event); {exported} spans received",
                if on { "ON" } else { "off" }
            );
            rates.entry(on).or_default().push(rate);
            costs.entry(on).or_default().push(cost);
            service.kill_9();
        }
        // The two runs of a round ran back to back: their ratio is spared most of the drift
        // between rounds.
        let ratio = rates[&true][round] / rates[&false][round];
        println!("overhead: round {round}: on/off {:.1}%", ratio * 100.0);
        ratios.push(ratio);
    }
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let (on, off) = (median(&rates[&true]), median(&rates[&false]));
    println!(
        "overhead: with telemetry on, {:.1}% of the throughput with it off (median of the {rounds} rounds' ratios; target >= 90%); medians of the runs: {on:.0} vs {off:.0} events/s ({:.1}%), CPU per event {:.1} vs {:.1} us",
        median(&ratios) * 100.0,
        on * 100.0 / off,
        median(&costs[&true]),
        median(&costs[&false])
    );
}

fn lift_precision(bench: &Bench) {
    let hosts = 10_000;
    let seconds: u32 = 20;
    bench.topics("lift");
    let rules = format!(
        "id: timed\ntitle: timed\ndetection:\n  selection:\n    severity_id|gte: 1\n  condition: selection\n\
         response:\n  isolate:\n    mode: automatic\n    duration: {seconds}s\n"
    );
    let service = bench.serve("lift", &rules);
    let start = now_ms();
    let events = (0..hosts).map(|h| {
        let event = format!(
            r#"{{"time":{start},"severity_id":5,"device":{{"uid":"host-{h:04}"}},"finding_info":{{"uid":"timed-{h}"}}}}"#
        );
        (format!("host-{h:04}"), event)
    });
    bench.produce("lift.detections", events);
    let key = cordon_wire::verifying_key_from_base64(
        &std::fs::read_to_string(bench.dir.join("keys/signing.pub")).unwrap(),
    )
    .unwrap();
    let messages = bench.read_all(
        "lift.commands",
        2 * hosts,
        Duration::from_secs(u64::from(seconds) + 60),
        Duration::from_secs(u64::from(seconds) + 10),
    );
    assert_eq!(messages.len(), 2 * hosts, "expected an isolate and a release per host");
    let mut deadlines: HashMap<String, i64> = HashMap::new();
    let mut released: HashMap<String, (i64, i64)> = HashMap::new();
    for (_, envelope, timestamp) in &messages {
        let command = cordon_wire::open(envelope, &key).unwrap();
        match command.action {
            cordon_wire::Action::Isolate { duration_seconds, .. } => {
                let duration = i64::try_from(duration_seconds.unwrap()).unwrap() * 1_000;
                deadlines.insert(command.host_id, command.issued_at_ms + duration);
            }
            cordon_wire::Action::Release { .. } => {
                released.insert(command.host_id, (command.issued_at_ms, *timestamp));
            }
        }
    }
    let mut issued_late: Vec<i64> = Vec::new();
    let mut broker_late: Vec<i64> = Vec::new();
    for (host, deadline) in &deadlines {
        let (issued, at_broker) = released[host];
        issued_late.push(issued - deadline);
        broker_late.push(at_broker - deadline);
    }
    issued_late.sort_unstable();
    broker_late.sort_unstable();
    let spread = deadlines.values().max().unwrap() - deadlines.values().min().unwrap();
    println!(
        "lift: {hosts} timed isolations of {seconds} s, deadlines spread over {spread} ms; release decided after the \
         deadline by p50 {} ms, p99 {} ms, max {} ms (earliest {} ms); release at the broker p50 {} ms, p99 {} ms, \
         max {} ms",
        percentile(&issued_late, 50.0),
        percentile(&issued_late, 99.0),
        issued_late.last().unwrap(),
        issued_late.first().unwrap(),
        percentile(&broker_late, 50.0),
        percentile(&broker_late, 99.0),
        broker_late.last().unwrap(),
    );
    service.kill_9();
}

fn restart_recovery(bench: &Bench) {
    let hosts: i64 =
        std::env::var("CORDON_BENCH_ISOLATIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    bench.topics("restart");
    let rules =
        "id: long\ntitle: long\ndetection:\n  selection:\n    severity_id|gte: 1\n  condition: selection\n\
                 response:\n  isolate:\n    mode: automatic\n    duration: 1h\n";
    let service = bench.serve("restart", rules);
    let start = now_ms();
    let events = (0..hosts).map(|h| {
        let event = format!(
            r#"{{"time":{start},"severity_id":5,"device":{{"uid":"host-{h:06}"}},"finding_info":{{"uid":"long-{h}"}}}}"#
        );
        (format!("host-{h:06}"), event)
    });
    let (produced, _) = bench.produce("restart.detections", events);
    let filled = Instant::now();
    wait_committed(
        bench,
        &service,
        "restart",
        "restart.detections",
        i64::try_from(produced).unwrap(),
        Duration::from_secs(600),
    );
    let sent = bench.read_all(
        "restart.commands",
        usize::try_from(hosts).unwrap(),
        Duration::from_secs(300),
        Duration::from_secs(30),
    );
    assert_eq!(sent.len(), usize::try_from(hosts).unwrap(), "a command per isolation");
    println!("restart: {hosts} isolations decided and sent in {:.1} s", filled.elapsed().as_secs_f64());
    let state = bench.dir.join("restart/state/orchestrator.sled");
    let size: u64 = walk_size(&state);
    let (rss, _) = service.rss_kib();
    println!(
        "restart: sled holds {:.0} MiB; resident {:.0} MiB before the kill",
        size as f64 / 1_048_576.0,
        rss as f64 / 1024.0
    );
    service.kill_9();

    let commands = bench.tail("restart.commands");
    let service = bench.serve("restart", rules);
    let serving = service.spawned.elapsed();
    let sent = Instant::now();
    let event = format!(
        r#"{{"time":{},"severity_id":5,"device":{{"uid":"newcomer"}},"finding_info":{{"uid":"after-restart"}}}}"#,
        now_ms()
    );
    bench.produce("restart.detections", std::iter::once(("newcomer".to_owned(), event)));
    loop {
        assert!(sent.elapsed() < Duration::from_secs(120), "no command for the new detection");
        if let Some(Ok(message)) = commands.poll(Duration::from_millis(10)) {
            if message.key() == Some(b"newcomer".as_slice()) {
                break;
            }
        }
    }
    let acted = service.spawned.elapsed();
    let (rss, _) = service.rss_kib();
    println!(
        "restart: after kill -9 with {hosts} isolations in sled: serving again (state open, deadlines armed, API up) \
         {:.0} ms after start; a detection produced then was acted on {:.0} ms after start (the consumer group's \
         join included); resident {:.0} MiB",
        serving.as_secs_f64() * 1000.0,
        acted.as_secs_f64() * 1000.0,
        rss as f64 / 1024.0
    );
    service.kill_9();
}

fn walk_size(path: &Path) -> u64 {
    let Ok(metadata) = std::fs::metadata(path) else { return 0 };
    if metadata.is_file() {
        return metadata.len();
    }
    std::fs::read_dir(path).unwrap().flatten().map(|e| walk_size(&e.path())).sum()
}

fn main() {
    // `cargo bench` passes `--bench`; a filter word picks parts.
    let words: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let wanted = |part: &str| words.is_empty() || words.iter().any(|w| part.contains(w.as_str()));
    let bench = Bench::start();
    if wanted("throughput memory") {
        throughput_and_memory(&bench);
    }
    if wanted("lift") {
        lift_precision(&bench);
    }
    if wanted("restart") {
        restart_recovery(&bench);
    }
    if wanted("overhead telemetry") {
        telemetry_overhead(&bench);
    }
}
