//! A whole cordon deployment in a sandbox, for the end-to-end tests and benchmarks: the tansu
//! broker and `cordon serve` on the sandbox's peer, `cordon-enforcer run` on its host inside the
//! test cgroup (its only way out while isolated is its management channel to the broker), the
//! `cordon` command line against the service's API, and probes on either side.
//!
//! The binaries are the workspace's, built beside the test or benchmark that uses this
//! (`target/<profile>/cordon`, `cordon-enforcer`); the calling binary must answer `probe ...`
//! (see [`crate::probe`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::otlp::ReceivedSpan;
use crate::{output_of, which, LineReader, Sandbox};

/// The host id the agent runs under, as detections name it.
pub const HOST: &str = "sandbox-host";

/// What may differ between worlds.
#[derive(Clone, Debug, Default)]
#[expect(clippy::struct_excessive_bools, reason = "independent switches of a test world")]
pub struct Options {
    /// The agent's `[kafka] fetch_wait_ms` (its default when `None`).
    pub agent_fetch_wait_ms: Option<u64>,
    /// The service's `[kafka] fetch_wait_ms` (its default when `None`).
    pub service_fetch_wait_ms: Option<u64>,
    /// Run an OTLP receiver on the peer (gRPC on 4317, HTTP on 4318); the service exports to it
    /// over gRPC (configured in its file), the agent over HTTP (configured by `OTEL_*`).
    pub otlp: bool,
    /// Name the broker [`BROKER_NAME`], served by a DNS server on the peer (the broker advertises
    /// the name; the service and the agent are configured with it and resolve it there).
    pub broker_by_name: bool,
    /// Start no agent of [`HOST`] (a fleet adds its own, see [`crate::fleet`]).
    pub without_agent: bool,
    /// Keep the service's state on a tmpfs of this size (e.g. `"64m"`), to fill it.
    pub state_disk: Option<&'static str>,
    /// Give the service `CORDON_CLOCK_OFFSET_FILE` ([`World::clock_offset_file`]), to step its clock.
    pub clock_offset: bool,
    /// Append the service's output to [`World::service_log`] instead of printing it.
    pub service_log: bool,
}

/// The broker's name when [`Options::broker_by_name`].
pub const BROKER_NAME: &str = "broker.cordon.test";

/// This binary: tests and benchmarks that use a [`World`] double as the probe.
pub fn probe_binary() -> PathBuf {
    std::env::current_exe().expect("current exe")
}

/// A binary of the workspace, built beside this test (`target/<profile>/NAME`).
pub fn workspace_binary(name: &str) -> PathBuf {
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

/// Wall-clock epoch milliseconds.
pub fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis()).expect("ms")
}

/// Every part of the product, running in one sandbox; the scratch directory (rules, keys,
/// configs, the service's state) is removed on drop, after the processes are killed.
pub struct World {
    pub sandbox: Sandbox,
    /// The scratch directory: rules, keys, configs, the service's state.
    pub dir: PathBuf,
    /// The broker's `host:port`, on the peer.
    pub broker: String,
    cordon: PathBuf,
    enforcer: PathBuf,
    /// The thread echoing the running agent's output; it ends when the agent does.
    agent: Option<std::thread::JoinHandle<()>>,
    options: Options,
    /// The OTLP receiver's output (see [`Options::otlp`]).
    telemetry: Option<LineReader>,
    /// Spans and metric names the receiver reported so far.
    pub spans: Vec<ReceivedSpan>,
    pub metric_names: Vec<String>,
    /// `nameserver PEER`, for the processes that must resolve [`BROKER_NAME`].
    resolv_conf: Option<PathBuf>,
    /// The running `cordon serve`, once started.
    service: Option<std::process::Child>,
    /// The broker's process id (to stop and continue it).
    pub broker_pid: u32,
    /// The tmpfs under the service's state (see [`Options::state_disk`]).
    pub state_disk: Option<crate::SmallDisk>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill_service();
        self.sandbox.kill_children();
        self.state_disk.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl World {
    /// Starts the broker, the service (serving `rules`, one file each) and the agent of host
    /// [`HOST`]; returns once the service consumes and the agent's channel is connected.
    pub fn start(rules: &[(&str, &str)], options: &Options) -> World {
        let tansu = which("tansu");
        let cordon = workspace_binary("cordon");
        let enforcer = workspace_binary("cordon-enforcer");
        let sandbox = Sandbox::new();
        let dir = sandbox.state_dir.with_extension("e2e");
        std::fs::create_dir_all(dir.join("rules")).expect("create scratch dir");
        let peer = sandbox.peer_v4();
        let broker = format!("{peer}:9092");
        let resolv_conf = options.broker_by_name.then(|| {
            let path = dir.join("resolv.conf");
            std::fs::write(&path, format!("nameserver {peer}\n")).expect("write resolv.conf");
            path
        });
        let mut world = World {
            sandbox,
            dir,
            broker: broker.clone(),
            cordon: cordon.clone(),
            enforcer,
            agent: None,
            options: options.clone(),
            telemetry: None,
            spans: Vec::new(),
            metric_names: Vec::new(),
            resolv_conf,
            service: None,
            broker_pid: 0,
            state_disk: None,
        };
        let broker = world.configured_broker();
        world.state_disk = options.state_disk.map(|size| crate::SmallDisk::mount(&world.dir.join("service"), size));

        world.start_broker(&tansu);

        let telemetry_section = if options.otlp { world.start_receiver() } else { String::new() };

        // The service, on the peer beside the broker.
        for (name, text) in rules {
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
                "[kafka]\nbrokers = \"{broker}\"\n{}[rules]\ndir = \"{}\"\n[state]\ndir = \"{}\"\n[signing]\nkey_file = \"{}\"\n\
                 [api]\nlisten = \"127.0.0.1:8700\"\n[agents]\nresend_after_seconds = 2\n{telemetry_section}",
                options.service_fetch_wait_ms.map(|ms| format!("fetch_wait_ms = {ms}\n")).unwrap_or_default(),
                world.dir.join("rules").display(),
                world.dir.join("service").display(),
                keys.join("signing.key").display()
            ),
        )
        .expect("write cordon.toml");
        let mut serve = world.spawn_service();
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
        if options.service_log {
            serve.copy_to(&world.service_log());
        } else {
            serve.echo("serve".into());
        }
        if options.without_agent {
            return world;
        }

        // The agent, on the host, inside the isolated cgroup.
        std::fs::write(world.dir.join("enforcer.toml"), world.agent_config(HOST)).expect("write enforcer.toml");
        world.enroll_agent();
        world.start_agent();
        world
    }

    /// The broker's address as the service and the agents are configured with it.
    fn configured_broker(&self) -> String {
        if self.options.broker_by_name { format!("{BROKER_NAME}:9092") } else { self.broker.clone() }
    }

    /// The configuration file of the agent of `host`.
    pub fn agent_config(&self, host: &str) -> String {
        format!(
            "host_id = \"{host}\"\nheartbeat_seconds = 1\n[kafka]\nbrokers = \"{}\"\n{}[signing]\npublic_key_file = \"{}\"\n",
            self.configured_broker(),
            self.options.agent_fetch_wait_ms.map(|ms| format!("fetch_wait_ms = {ms}\n")).unwrap_or_default(),
            self.dir.join("keys/signing.pub").display()
        )
    }

    /// Where the service's output goes with [`Options::service_log`].
    pub fn service_log(&self) -> PathBuf {
        self.dir.join("service.log")
    }

    /// The file whose number (milliseconds) the service adds to its wall clock, with
    /// [`Options::clock_offset`].
    pub fn clock_offset_file(&self) -> PathBuf {
        self.dir.join("clock-offset")
    }

    /// Starts `cordon serve` on the peer (see [`World::start`]); returns its output, which must
    /// be read on.
    pub fn spawn_service(&mut self) -> LineReader {
        let cordon = self.cordon.clone();
        let config = self.dir.join("cordon.toml").to_string_lossy().into_owned();
        let mut serve = self.resolving(self.sandbox.on_peer(&cordon, &["serve", "--config", &config]));
        // Export within a fraction of a second, not the default 5 s (spans) and 60 s (metrics).
        serve.env("OTEL_BSP_SCHEDULE_DELAY", "100").env("OTEL_METRIC_EXPORT_INTERVAL", "500");
        if self.options.clock_offset {
            serve.env("CORDON_CLOCK_OFFSET_FILE", self.clock_offset_file());
        }
        let (child, reader) = crate::spawn_reading(serve);
        self.service = Some(child);
        reader
    }

    /// Kills `cordon serve` as `kill -9` would (nothing when it is not running); returns once it is gone.
    pub fn kill_service(&mut self) {
        if let Some(mut service) = self.service.take() {
            let _ = service.kill();
            let _ = service.wait();
        }
    }

    /// Whether `cordon serve` ended by itself (its exit status then), not killed by the test.
    pub fn service_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.service.as_mut().and_then(|service| service.try_wait().ok().flatten())
    }

    /// Creates the key of the agent of `host` (`cordon-enforcer keygen`, state in `state_dir`)
    /// and enrolls it with the service, as an operator does before the agent's reports count.
    pub fn enroll(&self, host: &str, state_dir: &Path, config: &Path) {
        let (code, public_key, stderr) = output_of({
            let mut keygen = Command::new(&self.enforcer);
            keygen.arg("--state-dir").arg(state_dir).arg("--config").arg(config).arg("keygen");
            keygen
        });
        assert_eq!(code, 0, "cordon-enforcer keygen: {stderr}");
        let key_file = state_dir.with_extension("pub");
        std::fs::write(&key_file, public_key).expect("write the agent's public key");
        self.cordon_ok(&["agents", "enroll", host, "--key", &key_file.to_string_lossy()]);
    }

    fn enroll_agent(&self) {
        self.enroll(HOST, &self.sandbox.state_dir, &self.dir.join("enforcer.toml"));
    }

    /// The agent binary, `cordon-enforcer`.
    pub fn enforcer_binary(&self) -> &Path {
        &self.enforcer
    }

    /// `command`, resolving names through the peer's DNS server when the broker has a name.
    pub fn resolving(&self, command: Command) -> Command {
        match &self.resolv_conf {
            Some(resolv_conf) => Sandbox::with_resolv_conf(&command, resolv_conf),
            None => command,
        }
    }

    /// Starts the probe's echo servers on the peer, then the broker and its topics.
    fn start_broker(&mut self, tansu: &Path) {
        let peer = self.sandbox.peer_v4();
        let broker = self.broker.clone();
        // Servers on the peer: the probe's echo servers, then the broker and its topics.
        let servers = self.sandbox.on_peer(&probe_binary(), &["probe", "serve", "8080", "9000"]);
        let mut servers = self.sandbox.spawn(servers);
        assert_eq!(servers.expect_line("peer servers", Duration::from_secs(5)), "ready");
        servers.echo("peer servers".into());
        let url = format!("tcp://{broker}");
        let advertised = if self.options.broker_by_name {
            let dns = self.sandbox.on_peer(&probe_binary(), &["probe", "dns", &peer, BROKER_NAME, &peer]);
            let mut dns = self.sandbox.spawn(dns);
            assert_eq!(dns.expect_line("the DNS server", Duration::from_secs(5)), "ready");
            dns.echo("dns".into());
            format!("tcp://{BROKER_NAME}:9092")
        } else {
            url.clone()
        };
        let mut broker_command = self.sandbox.on_peer(
            tansu,
            &[
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
        );
        broker_command.env("RUST_LOG", "error");
        self.broker_pid = self.sandbox.spawn_quiet(broker_command);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.peer(&["port", &peer, "9092"]) != "ok" {
            assert!(Instant::now() < deadline, "the broker did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        for (topic, partitions) in [
            ("edr.detections", "3"),
            ("cordon.commands", "3"),
            ("cordon.status", "1"),
            ("cordon.dead-letter", "1"),
            ("cordon.lease", "1"),
        ] {
            let (code, _, stderr) = output_of(self.resolving(self.sandbox.on_peer(
                tansu,
                &["topic", "create", topic, "--partitions", partitions, "--broker", &url],
            )));
            assert_eq!(code, 0, "tansu topic create {topic}: {stderr}");
        }
    }

    /// Starts the OTLP receiver on the peer; returns the service's `[telemetry]` section.
    fn start_receiver(&mut self) -> String {
        let peer = self.sandbox.peer_v4();
        let receiver = self.sandbox.on_peer(&probe_binary(), &["probe", "otlp", &peer, "4317", "4318"]);
        let mut receiver = self.sandbox.spawn(receiver);
        assert_eq!(receiver.expect_line("the OTLP receiver", Duration::from_secs(5)), "ready");
        self.telemetry = Some(receiver);
        format!("[telemetry]\notlp_endpoint = \"http://{peer}:4317\"\notlp_protocol = \"grpc\"\n")
    }

    /// Starts `cordon-enforcer run` on the host and waits for its command channel.
    pub fn start_agent(&mut self) {
        let mut command =
            self.resolving(self.sandbox.agent_on_host(&self.enforcer, &self.dir.join("enforcer.toml")));
        if self.options.otlp {
            let peer = self.sandbox.peer_v4();
            command
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{peer}:4318"))
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
                .env("OTEL_BSP_SCHEDULE_DELAY", "100");
        }
        let mut agent = self.sandbox.spawn(command);
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
    pub fn kill_agent(&mut self) {
        let pids = self.sandbox.agent_pids(&self.enforcer);
        for pid in &pids {
            // SAFETY: signalling the agent this test started.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        let killed = pids.len();
        assert_eq!(killed, 1, "expected to find the one agent this test started");
        if let Some(echo) = self.agent.take() {
            echo.join().expect("the agent's output ends after kill -9");
        }
    }

    /// Reads what the OTLP receiver reports until `enough` holds of the spans and metric names
    /// received so far (`Err` with what was received when `limit` passes first).
    pub fn wait_for_telemetry(
        &mut self,
        limit: Duration,
        enough: impl Fn(&[ReceivedSpan], &[String]) -> bool,
    ) -> Result<(), String> {
        let receiver = self.telemetry.as_mut().expect("the world runs an OTLP receiver (Options::otlp)");
        let deadline = Instant::now() + limit;
        while !enough(&self.spans, &self.metric_names) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let seen: Vec<String> = self
                    .spans
                    .iter()
                    .map(|s| format!("{}: {} ({})", s.service, s.name, s.trace_id))
                    .collect();
                return Err(format!(
                    "not enough telemetry after {limit:?}; spans: {seen:#?}; metrics: {:?}",
                    self.metric_names
                ));
            }
            let Some(line) = receiver.next_line(left.min(Duration::from_millis(200))) else { continue };
            if let Some(json) = line.strip_prefix("span ") {
                let value: serde_json::Value = serde_json::from_str(json).expect("the receiver prints JSON");
                self.spans.push(ReceivedSpan::from_json(&value));
            } else if let Some(metric) = line.strip_prefix("metric ") {
                self.metric_names.push(metric.to_owned());
            }
        }
        Ok(())
    }

    /// `cordon-enforcer status --json` on the host, as an operator there would run it.
    pub fn agent_status(&self) -> serde_json::Value {
        let (code, stdout, stderr) = output_of(self.sandbox.enforcer(&self.enforcer, &["status", "--json"]));
        assert_eq!(code, 0, "cordon-enforcer status: {stderr}");
        serde_json::from_str(&stdout).expect("status --json is JSON")
    }

    /// `cordon-enforcer ARGS` on the host, for the sandbox's cgroup, pins and state (as someone
    /// with root on the host runs it, beside the agent); its exit code and output.
    pub fn enforcer(&self, args: &[&str]) -> (i32, String, String) {
        output_of(self.sandbox.enforcer(&self.enforcer, args))
    }

    /// One probe run on the peer; its answer line.
    pub fn peer(&self, args: &[&str]) -> String {
        let mut full = vec!["probe"];
        full.extend_from_slice(args);
        output_of(self.resolving(self.sandbox.on_peer(&probe_binary(), &full))).1
    }


    /// One probe run on the isolated host; its answer line.
    pub fn host(&self, args: &[&str]) -> String {
        let mut full = vec!["probe"];
        full.extend_from_slice(args);
        output_of(self.sandbox.on_host(&probe_binary(), &full)).1
    }

    /// Whether the host can open a new connection to the peer's port 8080 right now.
    pub fn host_connects(&self) -> String {
        self.host(&["connect", &self.sandbox.peer_v4(), "8080"])
    }

    /// Publishes a detection for `host` on the detections topic, as an EDR would; returns its time.
    pub fn detect(&self, host: &str, event_id: &str, severity: u8) -> i64 {
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
    pub fn cordon(&self, args: &[&str]) -> (i32, String, String) {
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

    pub fn cordon_ok(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.cordon(args);
        assert_eq!(code, 0, "cordon {args:?} failed: {stderr}\n{stdout}");
        stdout
    }

    pub fn host_view(&self) -> serde_json::Value {
        serde_json::from_str(&self.cordon_ok(&["host", HOST, "--json"])).expect("cordon host --json is JSON")
    }

    /// Polls `cordon host` until the host is in `state`; returns its view then.
    pub fn wait_for_state(&self, state: &str, limit: Duration) -> serde_json::Value {
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
    pub fn wait_until_connects(&self, limit: Duration) -> Option<Instant> {
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
    pub fn wait_until_refused(&self, limit: Duration) -> Result<(), String> {
        let until = Instant::now() + limit;
        loop {
            let answer = self.host_connects();
            if answer == "error EPERM" {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(format!("the host still connects after {limit:?}: {answer}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn isolated_hosts(&self) -> Vec<serde_json::Value> {
        let listed = self.cordon_ok(&["hosts", "--tag", "ISOLATED FROM NETWORK", "--json"]);
        let listed: serde_json::Value = serde_json::from_str(&listed).expect("cordon hosts --json is JSON");
        listed.as_array().expect("a JSON array").clone()
    }
}
