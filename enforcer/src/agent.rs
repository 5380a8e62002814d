//! The agent (`cordon-enforcer run`): restores what is due at start, then, one [`Agent::step`]
//! at a time, keeps the programs armed, lifts every deadline on time, repairs and reports
//! tampering, writes its health, and carries out cordon's commands while connected.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cordon_wire::spec::Exclusion;

use crate::config::EnforcerConfig;
use crate::isolation::{self, Restored, Target};
use crate::{bpf, channel, choose_interfaces, endpoints, health, host, management_channel, require_root, UsageError};

/// The running agent: what it enforces for, and where it is in its rounds.
pub struct Agent<'a> {
    target: &'a Target,
    config: &'a EnforcerConfig,
    telemetry: cordon_telemetry::Telemetry,
    /// Keep the programs loaded (not attached) so an isolation takes effect in milliseconds.
    arm: bool,
    /// What an isolation leaves open for the agent itself.
    management: Vec<Exclusion>,
    /// The interfaces that get the ICMP echo guard.
    interfaces: Vec<String>,
    /// The whole host, no interfaces configured: an interface that appears while the host is
    /// isolated is guarded too.
    guards_every_interface: bool,
    heartbeat: Duration,
    next_heartbeat: Instant,
    /// The command channel's settings until it connects (taken by the attempt).
    settings: Option<channel::ChannelSettings>,
    channel: Option<channel::Channel>,
    next_connect: Instant,
    health: health::AgentHealth,
    health_written: Option<health::AgentHealth>,
}

impl<'a> Agent<'a> {
    /// Starts the agent: logs, restoring what is due (before anything else), telemetry, the
    /// management channel.
    pub fn start(target: &'a Target, config: &'a EnforcerConfig) -> Result<Agent<'a>> {
        require_root()?;
        let log_format =
            cordon_telemetry::logs::format_from_env(config.telemetry.log_format).map_err(UsageError)?;
        cordon_telemetry::logs::init(log_format);
        bpf::ensure_bpffs(target.pins.root())?;
        let restored = isolation::restore(target).context("start-up restore failed")?;
        let restored = match restored {
            Restored::Nothing => "nothing to restore",
            Restored::Adopted => "adopted the pinned isolation",
            Restored::Reinstalled => "re-installed the recorded isolation (pins were gone)",
            Restored::Expired => "lifted an isolation whose deadline passed while the agent was down",
        };
        // The agent's own log goes to standard output (the journal under systemd); warnings and
        // errors to stderr.
        let telemetry = cordon_telemetry::Telemetry::start("cordon-enforcer", &config.telemetry, false)?;
        tracing::info!(
            "agent started for cgroup {}: {restored}; telemetry: {}.",
            target.cgroup.display(),
            telemetry.description()
        );
        let (management, problems) = management_channel(config, &target.state_dir);
        for problem in &problems {
            tracing::error!("{problem}: the channel to it stays closed while isolated");
        }
        // An isolation recorded with other addresses (brokers moved, renamed) gets these.
        update_management(target, &management);
        let heartbeat = Duration::from_secs(config.heartbeat_seconds.unwrap_or(30).max(1));
        Ok(Agent {
            target,
            config,
            telemetry,
            arm: config.arm.unwrap_or(true),
            management,
            interfaces: choose_interfaces(target, config, Vec::new()),
            guards_every_interface: config.interfaces.is_none()
                && host::cgroup2_root().is_ok_and(|root| root == target.cgroup),
            heartbeat,
            next_heartbeat: Instant::now(),
            settings: config.channel_settings(&target.state_dir)?,
            channel: None,
            next_connect: Instant::now(),
            health: health::AgentHealth {
                pid: std::process::id(),
                started_at_ms: isolation::now_unix_ms(),
                heartbeat_seconds: heartbeat.as_secs(),
                brokers: config.kafka.as_ref().map(|k| k.brokers.clone()),
                ..health::AgentHealth::default()
            },
            health_written: None,
        })
    }

    /// Runs the agent's rounds until it fails to re-read its channel settings.
    pub fn run(mut self) -> Result<()> {
        loop {
            self.step()?;
        }
    }

    /// One round: arm, connect (or retry), lift what is due, on a heartbeat repair links, guard new
    /// interfaces and report, write the health, then wait for a command (at most until the next
    /// deadline check).
    pub fn step(&mut self) -> Result<()> {
        let target = self.target;
        if self.arm && !target.pins.loaded() {
            match isolation::arm(target) {
                Ok(true) => tracing::info!("armed: programs loaded, ready to isolate at once."),
                Ok(false) => {}
                Err(error) => tracing::error!("cannot arm: {error:#}"),
            }
        }
        self.connect()?;
        let wait = lift_if_due(target, self.channel.as_mut());
        let heartbeat_due = Instant::now() >= self.next_heartbeat;
        if heartbeat_due {
            repair_detached_links(target, self.channel.as_mut());
            if self.guards_every_interface {
                guard_new_interfaces(target);
            }
        }
        note_health(target, self.channel.as_ref(), &mut self.health, &mut self.health_written, heartbeat_due);
        if heartbeat_due {
            self.next_heartbeat = Instant::now() + self.heartbeat;
        }
        if let Some(channel) = &mut self.channel {
            if heartbeat_due {
                let status = channel.snapshot(target, channel::Answer::Heartbeat);
                channel.report(&status);
            }
            let apply =
                channel::Apply { target, management: &self.management, interfaces: &self.interfaces };
            match channel.poll(wait, &apply) {
                // The command's spans go out now, not in a few seconds.
                Ok(true) => self.telemetry.flush(),
                Ok(false) => {}
                Err(error) => tracing::error!("{error:#}"),
            }
        } else {
            std::thread::sleep(wait);
        }
        Ok(())
    }

    /// Connects the command channel (and retries a failed start) without ever holding up
    /// enforcement.
    fn connect(&mut self) -> Result<()> {
        if self.channel.is_some() || Instant::now() < self.next_connect {
            return Ok(());
        }
        let Some(pending) = self.settings.take() else { return Ok(()) };
        let brokers = pending.brokers.clone();
        match channel::Channel::connect(pending, cordon_telemetry::Spans::new(self.telemetry.tracer().cloned())) {
            Ok(connected) => {
                let partition = connected.partition().unwrap_or(-1);
                tracing::info!("command channel connected to {brokers} (partition {partition}).");
                learn_advertised_brokers(self.target, self.config, connected.advertised(), &mut self.management);
                self.channel = Some(connected);
            }
            Err(error) => {
                tracing::error!("command channel: {error:#}; retrying in 5 s");
                self.settings = self.config.channel_settings(&self.target.state_dir)?;
                self.next_connect = Instant::now() + Duration::from_secs(5);
            }
        }
        Ok(())
    }
}

/// Remembers the brokers the cluster advertises (librdkafka connects to them, not only to the
/// bootstrap list) and opens the management channel to them, live if the host is isolated.
fn learn_advertised_brokers(
    target: &Target,
    config: &EnforcerConfig,
    advertised: &[String],
    management: &mut Vec<Exclusion>,
) {
    let mut endpoints = endpoints::Endpoints::load(&target.state_dir);
    let mut learned = false;
    let new: Vec<&String> = advertised.iter().filter(|broker| !endpoints.knows(broker)).collect();
    for broker in new {
        match endpoints.find(broker) {
            Ok(_) => learned = true,
            Err(error) => tracing::warn!("advertised broker: {error:#}"),
        }
    }
    if !learned {
        return;
    }
    if let Err(error) = endpoints.save() {
        tracing::warn!("cannot remember the advertised brokers' addresses: {error:#}");
    }
    let (now, _) = management_channel(config, &target.state_dir);
    if now != *management {
        tracing::info!("management channel: {} exclusion(s) with the brokers the cluster advertises.", now.len());
        *management = now;
        update_management(target, management);
    }
}

/// Lifts the isolation at its deadline (and says so); returns how long the loop may wait.
fn lift_if_due(target: &Target, channel: Option<&mut channel::Channel>) -> Duration {
    match isolation::expire_if_due(target) {
        Ok(isolation::Deadline::Pending(remaining)) => remaining.min(Duration::from_millis(500)),
        Ok(isolation::Deadline::Lifted) => {
            tracing::info!("deadline reached: isolation lifted.");
            if let Some(channel) = channel {
                let status = channel.snapshot(target, channel::Answer::Changed);
                channel.report(&status);
            }
            Duration::ZERO
        }
        Ok(isolation::Deadline::None) => Duration::from_millis(500),
        Err(error) => {
            tracing::error!("checking the deadline failed: {error:#}");
            Duration::from_secs(1)
        }
    }
}

/// Attaches again the links someone detached on the host, and says so loudly (log, audit trail,
/// and a report to cordon that carries it as `tampering`).
fn repair_detached_links(target: &Target, channel: Option<&mut channel::Channel>) {
    if !target.pins.installed() {
        return;
    }
    match isolation::repair_detached_links(target) {
        Ok(repaired) if !repaired.is_empty() => {
            let what = format!(
                "TAMPERING: link(s) {} of the isolation were detached on the host, not by cordon; attached again",
                repaired.join(", ")
            );
            tracing::error!("{what}");
            if let Some(channel) = channel {
                let mut status = channel.snapshot(target, channel::Answer::Changed);
                status.tampering = Some(what);
                channel.report(&status);
            }
        }
        Ok(_) => {}
        Err(error) => tracing::error!("cannot check or repair the isolation's links: {error:#}"),
    }
}

/// Guards the interfaces that appeared while the host is isolated.
fn guard_new_interfaces(target: &Target) {
    if !target.pins.installed() {
        return;
    }
    match isolation::guard_new_interfaces(target, &host::non_loopback_interfaces()) {
        Ok(new) if !new.is_empty() => tracing::info!("ICMP echo guard attached to new interface(s) {}.", new.join(", ")),
        Ok(_) => {}
        Err(error) => tracing::error!("cannot guard a new interface: {error:#}"),
    }
}

/// Brings the isolation in force, if any, to `management`, live.
fn update_management(target: &Target, management: &[Exclusion]) {
    match isolation::update_management(target, management) {
        Ok(true) => tracing::info!("the isolation in force now keeps the management channel to {} endpoint(s).", management.len()),
        Ok(false) => {}
        Err(error) => tracing::error!("cannot update the management channel of the isolation in force: {error:#}"),
    }
}

/// Writes the agent's health when it changed, and with every heartbeat.
fn note_health(
    target: &Target,
    channel: Option<&channel::Channel>,
    health: &mut health::AgentHealth,
    written: &mut Option<health::AgentHealth>,
    heartbeat_due: bool,
) {
    health.kafka_connected = channel.is_some_and(channel::Channel::connected);
    health.last_command = channel.and_then(channel::Channel::last_command);
    let changed = written.as_ref().is_none_or(|before| {
        (before.kafka_connected, &before.last_command) != (health.kafka_connected, &health.last_command)
    });
    if heartbeat_due || changed {
        health.updated_at_ms = isolation::now_unix_ms();
        match health::write(&target.state_dir, health) {
            Ok(()) => *written = Some(health.clone()),
            Err(error) => tracing::error!("cannot write the agent's health file: {error}"),
        }
    }
}
