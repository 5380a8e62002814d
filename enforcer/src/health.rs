//! The agent's own health: `cordon-enforcer run` writes it to `<state dir>/agent-health.json`
//! when it changes and with every heartbeat; `cordon-enforcer status` (another process) reads it
//! to say whether the agent runs, whether it is connected to Kafka, and the last command it
//! handled. Written whole to a temporary file and renamed, so a reader never sees half of it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE: &str = "agent-health.json";

/// What the agent writes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentHealth {
    pub pid: u32,
    pub started_at_ms: i64,
    pub updated_at_ms: i64,
    pub heartbeat_seconds: u64,
    /// The management channel's brokers; none when the agent runs without a command channel.
    pub brokers: Option<String>,
    pub kafka_connected: bool,
    pub last_command: Option<LastCommand>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastCommand {
    pub command_id: Option<String>,
    pub generation: Option<u64>,
    /// `applied`, or `refused: REASON`.
    pub outcome: String,
    pub at_ms: i64,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

pub fn write(state_dir: &Path, health: &AgentHealth) -> std::io::Result<()> {
    let temporary = state_dir.join(format!("{FILE}.tmp"));
    std::fs::write(&temporary, serde_json::to_vec_pretty(health)?)?;
    std::fs::rename(temporary, path(state_dir))
}

pub fn read(state_dir: &Path) -> Option<AgentHealth> {
    serde_json::from_slice(&std::fs::read(path(state_dir)).ok()?).ok()
}

/// Whether `pid` is a live `cordon-enforcer` (pids are reused: the name is checked; a killed
/// process its parent has not reaped yet is a zombie, not an agent).
/// The pid of the agent running for this state dir, if one runs (its health file names a live
/// `cordon-enforcer` process).
pub fn running_agent(state_dir: &Path) -> Option<u32> {
    read(state_dir).map(|health| health.pid).filter(|pid| is_agent_process(*pid))
}

fn is_agent_process(pid: u32) -> bool {
    // /proc/PID/stat: "PID (COMM) STATE ..."; COMM is cut to 15 bytes: exactly "cordon-enforcer".
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let Some((head, rest)) = stat.rsplit_once(')') else { return false };
    let named = head.split_once('(').is_some_and(|(_, comm)| comm == "cordon-enforcer");
    let state = rest.trim_start().chars().next().unwrap_or('X');
    named && !matches!(state, 'Z' | 'X' | 'x')
}

/// The agent's health as `status` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AgentView {
    pub running: bool,
    pub pid: Option<u32>,
    pub kafka_connected: bool,
    pub brokers: Option<String>,
    pub last_command: Option<LastCommand>,
    /// When the agent last said how it is (RFC 3339).
    pub last_report: Option<String>,
    /// What is wrong, in words; empty when nothing is.
    pub problems: Vec<String>,
}

/// Reads the health record and checks it against the running processes and the clock.
pub fn view(state_dir: &Path, now_ms: i64) -> AgentView {
    let Some(health) = read(state_dir) else {
        return AgentView {
            running: false,
            pid: None,
            kafka_connected: false,
            brokers: None,
            last_command: None,
            last_report: None,
            problems: vec![
                "the agent has never run with this state directory (start `cordon-enforcer run`)".to_owned()
            ],
        };
    };
    let mut problems = Vec::new();
    let alive = is_agent_process(health.pid);
    let silent_ms = now_ms - health.updated_at_ms;
    let allowed_ms = i64::try_from(health.heartbeat_seconds.max(1)).unwrap_or(30) * 3_000;
    if !alive {
        problems.push(format!("the agent (pid {}) is not running: deadlines are still enforced by the kernel, but commands are not received", health.pid));
    } else if silent_ms > allowed_ms {
        problems.push(format!(
            "the agent (pid {}) has not updated its health for {} s: it may be stuck",
            health.pid,
            silent_ms / 1_000
        ));
    }
    let running = alive && silent_ms <= allowed_ms;
    match &health.brokers {
        None => problems.push("no [kafka] section configured: the agent receives no commands".to_owned()),
        Some(brokers) if running && !health.kafka_connected => {
            problems.push(format!("not connected to the Kafka brokers {brokers}: commands cannot arrive"));
        }
        Some(_) => {}
    }
    AgentView {
        running,
        pid: Some(health.pid),
        kafka_connected: running && health.kafka_connected,
        brokers: health.brokers,
        last_command: health.last_command,
        last_report: Some(crate::isolation::format_time(health.updated_at_ms)),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> cordon_tests::ScratchDir {
        cordon_tests::ScratchDir::new(&format!("health-{name}"))
    }

    #[test]
    fn no_record_means_never_ran() {
        let dir = scratch("none");
        let view = view(&dir, 0);
        assert!(!view.running && view.problems[0].contains("never run"), "{view:?}");
    }

    #[test]
    fn a_dead_pid_is_not_running_and_a_live_one_is() {
        let dir = scratch("pids");
        let mut health = AgentHealth {
            pid: u32::MAX - 1,
            updated_at_ms: 1_000,
            heartbeat_seconds: 30,
            brokers: Some("b:9092".into()),
            kafka_connected: true,
            ..AgentHealth::default()
        };
        write(&dir, &health).unwrap();
        let dead = view(&dir, 2_000);
        assert!(!dead.running && dead.problems[0].contains("not running"), "{dead:?}");
        // This test process is not called cordon-enforcer either: the name is checked, not
        // only the pid (pids are reused).
        health.pid = std::process::id();
        write(&dir, &health).unwrap();
        assert!(!view(&dir, 2_000).running);
        assert_eq!(read(&dir), Some(health));
    }

    #[test]
    fn a_zombie_is_not_a_running_agent() {
        // A child that exits and is not reaped yet stays in /proc as a zombie.
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        assert!(stat.contains(") Z"), "{stat}");
        assert!(!is_agent_process(pid));
        drop(child);
    }
}
