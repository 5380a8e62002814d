//! A fleet of hosts beside one [`World`] (started without its own agent): each host is a child
//! cgroup of the sandbox's, with its own agent (running inside it), pins, state directory and host
//! id, all in the sandbox's host network namespace; and a watcher per host that tries a new
//! connection to the peer every few hundred milliseconds from inside that cgroup, which is what the
//! kernel enforces for it.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::world::{probe_binary, World};
use crate::{output_of, remove_cgroup, spawn_reading};

/// One connection attempt of a watcher: when (epoch ms) and whether it got through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub at_ms: i64,
    pub connected: bool,
}

/// A host of the fleet.
pub struct FleetHost {
    pub host: String,
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    config: PathBuf,
    /// Where the agent's output goes, across restarts.
    pub log: PathBuf,
    enforcer: PathBuf,
    agent: Option<Child>,
    watcher: Option<Child>,
    /// What the watcher saw so far.
    pub samples: Arc<Mutex<Vec<Sample>>>,
}

impl FleetHost {
    /// Makes host number `index` of `world`'s fleet (`<name>-<index>`) and enrolls its agent's key.
    pub fn new(world: &World, name: &str, index: usize) -> FleetHost {
        let sandbox = &world.sandbox;
        let host = format!("{name}-{index}");
        let cgroup = sandbox.cgroup.join(format!("host-{index}"));
        fs::create_dir_all(&cgroup).expect("create the host's cgroup");
        let pin_dir = PathBuf::from(format!("{}-h{index}", sandbox.pin_dir.display()));
        // Named after the sandbox's state directory, so the sandbox removes it.
        let state_dir = PathBuf::from(format!("{}-h{index}", sandbox.state_dir.display()));
        let config = world.dir.join(format!("enforcer-{index}.toml"));
        fs::write(&config, world.agent_config(&host)).expect("write the agent's config");
        world.enroll(&host, &state_dir, &config);
        FleetHost {
            log: world.dir.join(format!("agent-{index}.log")),
            host,
            cgroup,
            pin_dir,
            state_dir,
            config,
            enforcer: world.enforcer_binary().to_path_buf(),
            agent: None,
            watcher: None,
            samples: Arc::default(),
        }
    }

    /// `--cgroup ... --pin-dir ... --state-dir ... --config ...` of this host, then `args`.
    fn enforcer_args<'a>(paths: &'a [String; 4], args: &[&'a str]) -> Vec<&'a str> {
        let mut all =
            vec!["--cgroup", &paths[0], "--pin-dir", &paths[1], "--state-dir", &paths[2], "--config", &paths[3]];
        all.extend_from_slice(args);
        all
    }

    fn paths(&self) -> [String; 4] {
        [&self.cgroup, &self.pin_dir, &self.state_dir, &self.config].map(|p| p.to_string_lossy().into_owned())
    }

    /// Starts the agent (`cordon-enforcer run`) inside the host's cgroup, its output appended to
    /// [`FleetHost::log`]; returns without waiting for it to connect.
    pub fn start_agent(&mut self, world: &World) {
        assert!(self.agent.is_none(), "the agent of {} is running already", self.host);
        let paths = self.paths();
        let args = Self::enforcer_args(&paths, &["run"]);
        let mut command = world.resolving(world.sandbox.in_cgroup_on_host(&self.cgroup, &self.enforcer, &args));
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open the agent's log");
        command.stdout(log.try_clone().expect("dup the log")).stderr(log).stdin(Stdio::null());
        self.agent = Some(command.spawn().expect("start the agent"));
    }

    /// Kills the agent as `kill -9` would (nothing when it is not running).
    pub fn kill_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }

    /// Whether the agent ended by itself (its exit status then), not killed by the test.
    pub fn agent_exited(&mut self) -> Option<ExitStatus> {
        let exited = self.agent.as_mut().and_then(|agent| agent.try_wait().ok().flatten());
        if exited.is_some() {
            self.agent = None;
        }
        exited
    }

    pub fn agent_running(&self) -> bool {
        self.agent.is_some()
    }

    /// `cordon-enforcer ARGS` for this host, as root on it would run it beside the agent.
    pub fn enforcer(&self, world: &World, args: &[&str]) -> (i32, String, String) {
        let paths = self.paths();
        let mut command = Command::new("nsenter");
        command.arg(format!("--net=/run/netns/{}", world.sandbox.host_ns)).arg(&self.enforcer);
        command.args(Self::enforcer_args(&paths, args));
        output_of(command)
    }

    /// The agent's whole audit trail (`cordon-enforcer history --json`).
    pub fn history(&self, world: &World) -> Vec<serde_json::Value> {
        let (code, stdout, stderr) = self.enforcer(world, &["history", "--json"]);
        assert_eq!(code, 0, "cordon-enforcer history for {}: {stderr}", self.host);
        serde_json::from_str(&stdout).expect("history --json is a JSON array")
    }

    /// Starts the watcher: from inside the host's cgroup, a new connection to the peer's port
    /// `port` every `interval`, each answer added to [`FleetHost::samples`].
    pub fn start_watcher(&mut self, world: &World, port: u16, interval: Duration) {
        let (peer, port, millis) = (world.sandbox.peer_v4(), port.to_string(), interval.as_millis().to_string());
        let command = world.sandbox.in_cgroup_on_host(
            &self.cgroup,
            &probe_binary(),
            &["probe", "watch", &peer, &port, &millis],
        );
        let (child, mut reader) = spawn_reading(command);
        self.watcher = Some(child);
        let samples = Arc::clone(&self.samples);
        std::thread::spawn(move || {
            while let Some(line) = reader.next_line(Duration::from_hours(1)) {
                let Some((at, answer)) = line.split_once(' ') else { continue };
                let Ok(at_ms) = at.parse() else { continue };
                samples.lock().expect("samples").push(Sample { at_ms, connected: answer == "ok" });
            }
        });
    }

    /// Whether the last `n` samples all got through (false with fewer than `n`).
    pub fn connects_now(&self, n: usize) -> bool {
        let samples = self.samples.lock().expect("samples");
        samples.len() >= n && samples[samples.len() - n..].iter().all(|s| s.connected)
    }
}

impl Drop for FleetHost {
    fn drop(&mut self) {
        self.kill_agent();
        if let Some(mut watcher) = self.watcher.take() {
            let _ = watcher.kill();
            let _ = watcher.wait();
        }
        // Removing the pins detaches whatever the agent left attached.
        let _ = fs::remove_dir_all(&self.pin_dir);
        remove_cgroup(&self.cgroup);
    }
}
