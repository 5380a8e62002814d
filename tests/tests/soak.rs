//! The chaos soak: the real system in a sandbox (tansu, `cordon serve` with its state on a small
//! tmpfs, a fleet of real agents each isolating its own cgroup, a watcher per host) under a stream
//! of detections and operator calls, while it kills the service and the agents with `kill -9`,
//! stops the broker (`SIGSTOP` ... `SIGCONT`), fills the state disk and steps the service's wall
//! clock. At the end [`cordon_tests::chaos`] compares cordon's audit trails, the agents' and what
//! the kernel let through, prints the figures, and fails on any violation.
//!
//! `cargo test --test soak` runs the short version (about 2 minutes, 20 kills), as CI does;
//! `ops/soak.sh` runs the full one (its settings are `CORDON_SOAK_*`, see [`Settings`]).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ChildStdin;
use std::time::{Duration, Instant};

use cordon_tests::chaos::{self, AgentStep, CordonStep, Figures, HostTimeline};
use cordon_tests::fleet::FleetHost;
use cordon_tests::world::{now_ms, probe_binary, Options, World};

/// Severity 4 isolates for 3 s, severity 5 for 8 s, severity 6 until an operator releases.
const RULES: &[(&str, &str)] = &[
    (
        "timed-short.yaml",
        "id: timed-short\ntitle: Timed, short\ndetection:\n  selection:\n    severity_id: 4\n  condition: selection\n\
         response:\n  isolate:\n    mode: automatic\n    duration: 3s\n",
    ),
    (
        "timed-long.yaml",
        "id: timed-long\ntitle: Timed, long\ndetection:\n  selection:\n    severity_id: 5\n  condition: selection\n\
         response:\n  isolate:\n    mode: automatic\n    duration: 8s\n",
    ),
    (
        "manual.yaml",
        "id: manual\ntitle: Manual\ndetection:\n  selection:\n    severity_id: 6\n  condition: selection\n\
         response:\n  isolate:\n    mode: manual\n",
    ),
];

/// What a run does, from `CORDON_SOAK_*` (the defaults are CI's short run).
#[derive(Debug)]
struct Settings {
    /// `CORDON_SOAK_SECONDS`: how long faults and traffic go on.
    seconds: u64,
    /// `CORDON_SOAK_KILLS`: `kill -9`s, a third of the service, the rest of agents.
    kills: u64,
    /// `CORDON_SOAK_HOSTS`: agents.
    hosts: usize,
    /// `CORDON_SOAK_OUTAGES` broker outages of `CORDON_SOAK_OUTAGE_SECONDS` (`MIN-MAX`) each.
    outages: u64,
    outage_seconds: (u64, u64),
    /// `CORDON_SOAK_DISK_FULLS`: times the state disk is filled (for 5-10 s).
    disk_fulls: u64,
    /// `CORDON_SOAK_CLOCK_STEPS`: steps of the service's wall clock (±5-60 s, for 10-20 s).
    clock_steps: u64,
    /// `CORDON_SOAK_SEED`: the random choices (printed, to run the same soak again).
    seed: u64,
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}={v}: not a number")))
}

impl Settings {
    fn from_env() -> Settings {
        let outage_seconds = std::env::var("CORDON_SOAK_OUTAGE_SECONDS").unwrap_or_else(|_| "10-15".into());
        let (min, max) = outage_seconds.split_once('-').unwrap_or((&outage_seconds, &outage_seconds));
        let parse = |v: &str| v.parse::<u64>().unwrap_or_else(|_| panic!("CORDON_SOAK_OUTAGE_SECONDS={outage_seconds}"));
        Settings {
            seconds: env_number("CORDON_SOAK_SECONDS", 120),
            kills: env_number("CORDON_SOAK_KILLS", 20),
            hosts: usize::try_from(env_number("CORDON_SOAK_HOSTS", 5)).expect("hosts"),
            outages: env_number("CORDON_SOAK_OUTAGES", 1),
            outage_seconds: (parse(min), parse(max)),
            disk_fulls: env_number("CORDON_SOAK_DISK_FULLS", 1),
            clock_steps: env_number("CORDON_SOAK_CLOCK_STEPS", 2),
            seed: env_number("CORDON_SOAK_SEED", u64::try_from(now_ms()).expect("ms")),
        }
    }
}

/// xorshift64*: enough randomness for a soak, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A fault the schedule injects.
#[derive(Clone, Copy, Debug)]
enum Fault {
    KillService,
    KillAgent,
    BrokerOutage { seconds: u64 },
    DiskFull { seconds: u64 },
    ClockStep { offset_ms: i64, seconds: u64 },
}

/// A fault in progress, undone at `until_ms`.
enum Undo {
    RestartService,
    RestartAgent(usize),
    ContinueBroker,
    FreeDisk(PathBuf),
    ResetClock,
}

/// Counters of what the soak did and saw, beside the checker's figures.
#[derive(Debug, Default)]
struct Tally {
    detections: u64,
    operator_calls: u64,
    service_kills: u64,
    agent_kills: u64,
    broker_outages: u64,
    outage_seconds: u64,
    disk_fulls: u64,
    clock_steps: u64,
    /// Exits nobody asked for (crash loops show here).
    unexpected_exits: u64,
    /// Operator writes made while the broker was stopped, the slowest, and how many failed.
    api_writes_in_outage: u64,
    slowest_api_write_in_outage_ms: u64,
    failed_api_writes_in_outage: u64,
    /// From a restart of the service to its API answering, and to its `/readyz` saying ready
    /// (which needs the broker), the longest.
    slowest_restart_to_api_ms: i64,
    slowest_restart_to_ready_ms: i64,
}

struct Soak {
    // Dropped before the world, whose sandbox holds their cgroups.
    hosts: Vec<FleetHost>,
    world: World,
    pipe: ChildStdin,
    rng: Rng,
    seed: u64,
    tally: Tally,
    next_event: u64,
    pending: Vec<(i64, Undo)>,
    /// Spans the service was not working: killed, not ready, its disk full, the broker stopped.
    unhealthy: Vec<(i64, i64)>,
    unready_since: Option<i64>,
    restarted_at: Option<i64>,
    /// Whether the running service's API has answered since its start.
    api_up: bool,
    broker_stopped: bool,
    disk_full: bool,
    agent_down_since: Vec<Option<i64>>,
    agent_down: Vec<Vec<(i64, i64)>>,
    operator_releases: Vec<Vec<i64>>,
}

impl Soak {
    fn start(settings: &Settings) -> Soak {
        let options = Options {
            without_agent: true,
            state_disk: Some("64m"),
            clock_offset: true,
            service_log: true,
            ..Options::default()
        };
        let mut world = World::start(RULES, &options);
        std::fs::write(world.clock_offset_file(), "0").expect("write the clock offset");
        let mut hosts: Vec<FleetHost> = (0..settings.hosts).map(|i| FleetHost::new(&world, "soak-host", i)).collect();
        for host in &mut hosts {
            host.start_agent(&world);
            host.start_watcher(&world, 8080, Duration::from_millis(200));
        }
        for host in &hosts {
            wait_for_log(&host.log, "command channel connected", Duration::from_secs(30));
        }
        let broker = world.broker.clone();
        let producer = world.sandbox.on_peer(&probe_binary(), &["probe", "kafka-pipe", &broker, "edr.detections"]);
        let (pipe, mut sent) = world.sandbox.spawn_piped(producer);
        assert_eq!(sent.expect_line("the producer", Duration::from_secs(10)), "ready");
        sent.copy_to(&world.dir.join("producer.log"));
        let n = hosts.len();
        Soak {
            hosts,
            world,
            pipe,
            rng: Rng(settings.seed | 1),
            seed: settings.seed,
            tally: Tally::default(),
            next_event: 0,
            pending: Vec::new(),
            unhealthy: Vec::new(),
            unready_since: None,
            restarted_at: None,
            api_up: true,
            broker_stopped: false,
            disk_full: false,
            agent_down_since: vec![None; n],
            agent_down: vec![Vec::new(); n],
            operator_releases: vec![Vec::new(); n],
        }
    }

    /// The faults of a run, at their times (ms from the start), in order.
    fn schedule(&mut self, settings: &Settings) -> Vec<(i64, Fault)> {
        let span_ms = settings.seconds * 1_000;
        let mut faults = Vec::new();
        // Kills spread evenly (each at a random moment of its slot), faults of time at random.
        let slot = span_ms / settings.kills.max(1);
        for k in 0..settings.kills {
            let fault = if k % 3 == 0 { Fault::KillService } else { Fault::KillAgent };
            faults.push((k * slot + self.rng.below(slot), fault));
        }
        for j in 0..settings.outages {
            let seconds = self.rng.between(settings.outage_seconds.0, settings.outage_seconds.1);
            let at = (j + 1) * span_ms / (settings.outages + 1);
            faults.push((at, Fault::BrokerOutage { seconds }));
        }
        for _ in 0..settings.disk_fulls {
            faults.push((self.rng.below(span_ms), Fault::DiskFull { seconds: self.rng.between(5, 10) }));
        }
        for _ in 0..settings.clock_steps {
            let size = i64::try_from(self.rng.between(5_000, 60_000)).expect("ms");
            let offset_ms = if self.rng.chance(50) { size } else { -size };
            faults.push((self.rng.below(span_ms), Fault::ClockStep { offset_ms, seconds: self.rng.between(10, 20) }));
        }
        faults.sort_by_key(|(at, _)| *at);
        faults.into_iter().map(|(at, fault)| (i64::try_from(at).expect("ms"), fault)).collect()
    }

    fn run(&mut self, settings: &Settings) {
        let started = now_ms();
        let mut schedule = self.schedule(settings).into_iter().peekable();
        let end = started + i64::try_from(settings.seconds * 1_000).expect("ms");
        let mut next_readiness = 0;
        while now_ms() < end {
            let now = now_ms();
            while let Some(&(at, fault)) = schedule.peek() {
                if started + at > now {
                    break;
                }
                // A kill of the service waits for its disk to be freed (see RELIABILITY.md).
                if matches!(fault, Fault::KillService) && (self.disk_full || self.world_service_down()) {
                    break;
                }
                schedule.next();
                self.inject(fault);
            }
            self.undo_due(now);
            self.watch_exits();
            if now >= next_readiness {
                self.poll_readiness();
                next_readiness = now + 500;
            }
            self.traffic();
            std::thread::sleep(Duration::from_millis(self.rng.between(100, 400)));
        }
        // Undo every fault still in progress, then let everything settle.
        for (_, undo) in std::mem::take(&mut self.pending) {
            self.undo(undo);
        }
        let ready_by = Instant::now() + Duration::from_secs(90);
        while !self.ready().0 {
            if Instant::now() > ready_by {
                let (_, answer) = self.ready();
                self.fail(&format!("the service was not ready 90 s after the last fault: {answer}"));
            }
            self.watch_exits();
            std::thread::sleep(Duration::from_millis(200));
        }
        self.poll_readiness();
    }

    /// Whether `/readyz` says ready, and what it said.
    fn ready(&self) -> (bool, String) {
        let answer = self.world.peer(&["http-status", "127.0.0.1", "8700", "/readyz"]);
        (answer.starts_with("200 "), answer)
    }

    /// Keeps the logs (in the temporary directory, named after the seed) and panics with `why`.
    fn fail(&self, why: &str) -> ! {
        let kept = std::env::temp_dir().join(format!("cordon-soak-{}", self.seed));
        let _ = std::fs::create_dir_all(&kept);
        let _ = std::fs::copy(self.world.service_log(), kept.join("service.log"));
        for (index, host) in self.hosts.iter().enumerate() {
            let _ = std::fs::copy(&host.log, kept.join(format!("agent-{index}.log")));
        }
        panic!("{why} (logs kept in {})", kept.display());
    }

    fn world_service_down(&self) -> bool {
        self.pending.iter().any(|(_, undo)| matches!(undo, Undo::RestartService))
    }

    fn inject(&mut self, fault: Fault) {
        let now = now_ms();
        println!("soak: {now} ms: {fault:?}");
        match fault {
            Fault::KillService => {
                self.world.kill_service();
                self.tally.service_kills += 1;
                self.service_went_down(now);
                let back = now + i64::try_from(self.rng.between(500, 3_000)).expect("ms");
                self.pending.push((back, Undo::RestartService));
            }
            Fault::KillAgent => {
                let candidates: Vec<usize> =
                    (0..self.hosts.len()).filter(|&i| self.hosts[i].agent_running()).collect();
                let Some(&index) = candidates.get(usize::try_from(self.rng.below(candidates.len() as u64)).expect("index"))
                else {
                    return;
                };
                self.hosts[index].kill_agent();
                self.tally.agent_kills += 1;
                self.agent_down_since[index] = Some(now);
                let back = now + i64::try_from(self.rng.between(500, 3_000)).expect("ms");
                self.pending.push((back, Undo::RestartAgent(index)));
            }
            Fault::BrokerOutage { seconds } => {
                if self.broker_stopped {
                    return;
                }
                signal(self.world.broker_pid, libc::SIGSTOP);
                self.broker_stopped = true;
                self.tally.broker_outages += 1;
                self.tally.outage_seconds += seconds;
                self.unhealthy.push((now, now + i64::try_from(seconds).expect("s") * 1_000 + 10_000));
                self.pending.push((now + i64::try_from(seconds * 1_000).expect("ms"), Undo::ContinueBroker));
            }
            Fault::DiskFull { seconds } => {
                if self.disk_full {
                    return;
                }
                let filler = self.world.state_disk.as_ref().expect("the state disk").fill();
                self.disk_full = true;
                self.tally.disk_fulls += 1;
                // Full, then until the service has written again (it tries every 2 s).
                self.unhealthy.push((now, now + i64::try_from(seconds).expect("s") * 1_000 + 3_000));
                self.pending.push((now + i64::try_from(seconds * 1_000).expect("ms"), Undo::FreeDisk(filler)));
            }
            Fault::ClockStep { offset_ms, seconds } => {
                std::fs::write(self.world.clock_offset_file(), offset_ms.to_string()).expect("step the clock");
                self.tally.clock_steps += 1;
                self.pending.push((now + i64::try_from(seconds * 1_000).expect("ms"), Undo::ResetClock));
            }
        }
    }

    fn undo_due(&mut self, now: i64) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending).into_iter().partition(|(at, _)| *at <= now);
        self.pending = later;
        for (_, undo) in due {
            self.undo(undo);
        }
    }

    fn undo(&mut self, undo: Undo) {
        let now = now_ms();
        match undo {
            Undo::RestartService => self.restart_service(now),
            Undo::RestartAgent(index) => {
                self.hosts[index].start_agent(&self.world);
                if let Some(since) = self.agent_down_since[index].take() {
                    self.agent_down[index].push((since, now));
                }
            }
            Undo::ContinueBroker => {
                signal(self.world.broker_pid, libc::SIGCONT);
                self.broker_stopped = false;
            }
            Undo::FreeDisk(filler) => {
                std::fs::remove_file(filler).expect("free the disk");
                self.disk_full = false;
            }
            Undo::ResetClock => {
                std::fs::write(self.world.clock_offset_file(), "0").expect("reset the clock offset");
            }
        }
    }

    /// The service is gone (killed, or ended by itself): not ready, its API not answering.
    fn service_went_down(&mut self, now: i64) {
        self.api_up = false;
        self.unready_since.get_or_insert(now);
    }

    /// Starts the service again, its output appended to its log.
    fn restart_service(&mut self, now: i64) {
        // Each start reads the wall clock afresh: a step is only tested while it runs.
        std::fs::write(self.world.clock_offset_file(), "0").expect("reset the clock offset");
        let log = self.world.service_log();
        self.world.spawn_service().copy_to(&log);
        self.restarted_at = Some(now);
    }

    /// Restarts whatever ended by itself, and counts it.
    fn watch_exits(&mut self) {
        let now = now_ms();
        if let Some(status) = self.world.service_exited() {
            println!("soak: {now} ms: the service exited by itself: {status}");
            self.tally.unexpected_exits += 1;
            self.service_went_down(now);
            self.restart_service(now);
        }
        for index in 0..self.hosts.len() {
            if let Some(status) = self.hosts[index].agent_exited() {
                println!("soak: {now} ms: the agent of {} exited by itself: {status}", self.hosts[index].host);
                self.tally.unexpected_exits += 1;
                self.hosts[index].start_agent(&self.world);
                self.agent_down[index].push((now, now_ms()));
            }
        }
    }

    fn poll_readiness(&mut self) {
        let (ready, answer) = self.ready();
        let now = now_ms();
        // The API answers (ready or not): the service is up, if not yet consuming.
        if !self.api_up && answer.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            self.api_up = true;
            if let Some(restarted) = self.restarted_at {
                self.tally.slowest_restart_to_api_ms = self.tally.slowest_restart_to_api_ms.max(now - restarted);
            }
        }
        match (ready, self.unready_since) {
            (true, Some(since)) => {
                self.unhealthy.push((since, now));
                self.unready_since = None;
                if let Some(restarted) = self.restarted_at.take() {
                    self.tally.slowest_restart_to_ready_ms = self.tally.slowest_restart_to_ready_ms.max(now - restarted);
                }
            }
            (false, None) => self.unready_since = Some(now),
            _ => {}
        }
    }

    /// One step of the stream: maybe a detection, maybe an operator's call.
    fn traffic(&mut self) {
        let index = usize::try_from(self.rng.below(self.hosts.len() as u64)).expect("index");
        let host = self.hosts[index].host.clone();
        if self.rng.chance(35) {
            let severity = [4, 4, 5, 5, 6][usize::try_from(self.rng.below(5)).expect("index")];
            self.next_event += 1;
            let event = serde_json::json!({
                "time": now_ms(), "severity_id": severity, "class_uid": 2004,
                "device": {"uid": host, "hostname": host},
                "finding_info": {"uid": format!("soak-{}", self.next_event), "title": "soak"},
            });
            writeln!(self.pipe, "{host}\t{event}").expect("write to the producer");
            self.tally.detections += 1;
        } else if self.rng.chance(if self.broker_stopped { 60 } else { 12 }) {
            let args: Vec<&str> = match self.rng.below(3) {
                0 => vec!["isolate", &host, "--for", "5s", "--reason", "soak"],
                1 => vec!["isolate", &host, "--manual", "--reason", "soak"],
                _ => {
                    self.operator_releases[index].push(now_ms());
                    vec!["release", &host, "--reason", "soak"]
                }
            };
            let started = Instant::now();
            let (code, stdout, stderr) = self.world.cordon(&args);
            let took = u64::try_from(started.elapsed().as_millis()).expect("ms");
            self.tally.operator_calls += 1;
            if self.broker_stopped {
                self.tally.api_writes_in_outage += 1;
                self.tally.slowest_api_write_in_outage_ms = self.tally.slowest_api_write_in_outage_ms.max(took);
                // A service killed, or started but not serving its API yet, cannot answer.
                if code != 0 && self.api_up && !self.disk_full {
                    println!("soak: an operator write failed while the broker was stopped: {stderr} {stdout}");
                    self.tally.failed_api_writes_in_outage += 1;
                }
            }
        }
    }

    /// Releases every host as an operator and waits until cordon, its agent and the kernel agree.
    fn release_all(&mut self) -> Vec<bool> {
        for index in 0..self.hosts.len() {
            self.operator_releases[index].push(now_ms());
            let host = self.hosts[index].host.clone();
            let (code, stdout, stderr) = self.world.cordon(&["release", &host, "--reason", "end of the soak"]);
            assert_eq!(code, 0, "release {host} at the end: {stderr} {stdout}");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let released: Vec<bool> = self.hosts.iter().map(|host| self.released_everywhere(host)).collect();
            if released.iter().all(|r| *r) || Instant::now() >= deadline {
                return released;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn released_everywhere(&self, host: &FleetHost) -> bool {
        let (code, stdout, _) = self.world.cordon(&["host", &host.host, "--json"]);
        let view: serde_json::Value = if code == 0 { serde_json::from_str(&stdout).expect("JSON") } else { return false };
        let cordon_released = matches!(view["state"].as_str(), Some("released" | "not_isolated"));
        let (code, status, _) = host.enforcer(&self.world, &["status", "--json"]);
        let agent_released =
            code == 0 && serde_json::from_str::<serde_json::Value>(&status).is_ok_and(|s| s["isolated"] == false);
        cordon_released && agent_released && host.connects_now(3)
    }

    fn timelines(&self, released: &[bool]) -> Vec<HostTimeline> {
        self.hosts
            .iter()
            .enumerate()
            .map(|(index, host)| {
                let view = self.world.cordon_ok(&["host", &host.host, "--json"]);
                let view: serde_json::Value = serde_json::from_str(&view).expect("cordon host --json");
                let cordon = view["audit"]
                    .as_array()
                    .map(|audit| {
                        audit
                            .iter()
                            .map(|step| CordonStep {
                                at_ms: rfc3339_ms(step["at"].as_str().expect("at")),
                                to: step["to"].as_str().unwrap_or_default().to_owned(),
                                generation: step["generation"].as_u64().unwrap_or_default(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let agent = host
                    .history(&self.world)
                    .iter()
                    .map(|entry| AgentStep {
                        at_ms: entry["at_unix_ms"].as_i64().expect("at_unix_ms"),
                        event: entry["event"].as_str().unwrap_or_default().to_owned(),
                        command_generation: entry["command_generation"].as_u64(),
                        expires_at_ms: entry["expires_at_unix_ms"].as_i64(),
                    })
                    .collect();
                HostTimeline {
                    host: host.host.clone(),
                    cordon,
                    agent,
                    samples: host.samples.lock().expect("samples").clone(),
                    operator_releases: self.operator_releases[index].clone(),
                    agent_down: self.agent_down[index].clone(),
                    released_at_end: released[index],
                }
            })
            .collect()
    }
}

fn signal(pid: u32, signal: i32) {
    let pid = i32::try_from(pid).expect("pid");
    // SAFETY: signalling the broker this soak started.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal the broker");
}

fn rfc3339_ms(text: &str) -> i64 {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text}: {e}"));
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).expect("ms")
}

fn wait_for_log(log: &std::path::Path, text: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !std::fs::read_to_string(log).is_ok_and(|l| l.contains(text)) {
        assert!(Instant::now() < deadline, "'{text}' never appeared in {}", log.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn report(settings: &Settings, tally: &Tally, figures: &Figures, took: Duration) {
    println!("soak: seed {} ({settings:?}), {} s in all", settings.seed, took.as_secs());
    println!(
        "soak: {} detections, {} operator calls; faults: {} service kills, {} agent kills, {} broker outages ({} s), \
         {} full disks, {} clock steps",
        tally.detections,
        tally.operator_calls,
        tally.service_kills,
        tally.agent_kills,
        tally.broker_outages,
        tally.outage_seconds,
        tally.disk_fulls,
        tally.clock_steps
    );
    println!("soak: isolations decided                         {}", figures.decided);
    println!("soak: isolations applied by agents               {}", figures.applied);
    println!("soak: ended before delivery, during faults       {}", figures.undelivered_in_faults);
    println!("soak: lost                                       {}", figures.lost);
    println!("soak: applied twice                              {}", figures.applied_twice);
    println!("soak: lifted before their deadline               {}", figures.lifted_early);
    println!("soak: lifted > 1 s after it, agent alive         {}", figures.lifted_late_agent_alive);
    println!("soak: lifted > 1 s after it, agent down          {}", figures.lifted_late_agent_down);
    println!("soak: not released everywhere at the end         {}", figures.stuck_at_end);
    println!("soak: exits nobody asked for (crash loops)       {}", tally.unexpected_exits);
    println!(
        "soak: API writes while the broker was stopped     {} (slowest {} ms, {} failed)",
        tally.api_writes_in_outage, tally.slowest_api_write_in_outage_ms, tally.failed_api_writes_in_outage
    );
    println!(
        "soak: slowest service restart to API / to ready  {} ms / {} ms",
        tally.slowest_restart_to_api_ms, tally.slowest_restart_to_ready_ms
    );
    for violation in &figures.violations {
        println!("soak: VIOLATION {violation}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        std::process::exit(cordon_tests::probe::main(&args[2..]));
    }
    // `cargo test NAME` passes NAME: run only when it names this soak (or nothing).
    let filters: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| "soak".contains(f.as_str())) {
        println!("soak: not selected by {filters:?}");
        return;
    }
    let settings = Settings::from_env();
    println!("soak: {settings:?}");
    let started = Instant::now();
    let mut soak = Soak::start(&settings);
    soak.run(&settings);
    // Past the last deadline (8 s rules), then the operator's end of the run.
    std::thread::sleep(Duration::from_secs(10));
    let released = soak.release_all();
    let end = now_ms();
    let timelines = soak.timelines(&released);
    let figures = chaos::check(&timelines, &soak.unhealthy, end);
    report(&settings, &soak.tally, &figures, started.elapsed());
    let tally = &soak.tally;
    let failed = !figures.violations.is_empty()
        || tally.unexpected_exits > 0
        || tally.failed_api_writes_in_outage > 0
        || tally.slowest_api_write_in_outage_ms > 2_000;
    // What the checker read, for a look after the run.
    let timelines_file = std::env::temp_dir().join(format!("cordon-soak-{}.timelines", settings.seed));
    let _ = std::fs::write(&timelines_file, format!("{timelines:#?}\nunhealthy: {:?}\n", soak.unhealthy));
    println!("soak: the timelines checked are in {}", timelines_file.display());
    if failed {
        soak.fail("the soak found violations (see above)");
    }
}
