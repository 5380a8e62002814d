//! `cordon-enforcer`: isolates this host with eBPF on command and lifts the isolation on time.
//!
//! Exit codes: 0 done; 1 could not be done (the message says why); 2 bad command line or input
//! (nothing was changed).

mod bpf;
mod channel;
mod endpoints;
mod config;
mod exclusion;
mod health;
mod host;
mod identity;
mod isolation;
mod output;
mod sever;
mod sock_diag;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use cordon_wire::spec::Exclusion;

use crate::config::EnforcerConfig;
use crate::exclusion::{parse_duration, parse_exclusion, validate_process_name};
use crate::isolation::{IsolateRequest, Restored, Target};

#[derive(Parser, Debug)]
#[command(
    name = "cordon-enforcer",
    version,
    about = "Isolates this host from the network with eBPF, and lets it back on."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct GlobalOptions {
    /// The cgroup v2 directory whose processes are isolated [default: the cgroup v2 root, i.e. the whole host]
    #[arg(long, global = true, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// Where programs, maps and links are pinned [default: /sys/fs/bpf/cordon]
    #[arg(long, global = true, value_name = "PATH")]
    pin_dir: Option<PathBuf>,
    /// Where the agent keeps its state [default: /var/lib/cordon]
    #[arg(long, global = true, value_name = "PATH")]
    state_dir: Option<PathBuf>,
    /// The agent's configuration file (its brokers are the management channel) [default: /etc/cordon/enforcer.toml if it exists]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Cut this host (or the cgroup) off the network. Run again to change a live isolation.
    Isolate(IsolateArgs),
    /// Lift the isolation (succeeds also when the host is not isolated). Detaches everything.
    Release,
    /// Load and verify the programs without attaching them, so a later `isolate` takes
    /// effect in milliseconds. Costs no packet anything.
    Arm,
    /// Show whether the host is isolated, until when, with which exclusions, and counters.
    Status {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The whole audit trail of this host's isolations, oldest first.
    History {
        /// One JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The long-running agent: restores isolation at start-up and lifts it at its deadline.
    Run,
    /// Print this agent's public key (creating its key pair in the state dir if there is none),
    /// for `cordon agents enroll HOST --key -`.
    Keygen {
        /// Replace the key pair with a new one. Reports are refused until the new key is enrolled.
        #[arg(long)]
        rotate: bool,
    },
}

#[derive(Args, Debug)]
struct IsolateArgs {
    /// Automatic (timed) isolation lifted after DUR, e.g. 90s, 15m, 4h, 7d; without it, manual
    #[arg(long, value_name = "DUR", value_parser = duration_arg)]
    duration: Option<Duration>,
    /// Traffic that keeps flowing: DIR,PROTO,CIDR[,PORTS], e.g. out,tcp,198.51.100.7/32,443
    #[arg(long = "allow", value_name = "SPEC", value_parser = exclusion_arg)]
    allow: Vec<Exclusion>,
    /// A process (by name, as in /proc/PID/comm) whose sockets keep working both ways
    #[arg(long = "allow-process", value_name = "NAME", value_parser = process_arg)]
    allow_process: Vec<String>,
    /// Keep DNS to the resolvers in /etc/resolv.conf working
    #[arg(long)]
    allow_dns: bool,
    /// Keep DHCP (v4 and v6) working
    #[arg(long)]
    allow_dhcp: bool,
    /// Why, for the record
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Interface whose incoming ICMP echo requests are dropped too [default: every interface but lo when isolating the whole host, none for a child cgroup]
    #[arg(long = "interface", value_name = "NAME")]
    interfaces: Vec<String>,
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

fn exclusion_arg(text: &str) -> Result<Exclusion, String> {
    parse_exclusion(text).map_err(|e| e.to_string())
}

fn process_arg(text: &str) -> Result<String, String> {
    validate_process_name(text).map(|()| text.to_owned()).map_err(|e| e.to_string())
}

/// An error that means "bad input, nothing changed": exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cordon-enforcer: error: {error:#}");
            if error.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let config = load_config(cli.global.config.as_ref())?;
    let target = resolve_target(&cli.global, &config)?;
    match cli.command {
        Command::Isolate(args) => isolate(&target, &config, args),
        Command::Release => {
            require_root()?;
            if isolation::release(&target, "cli", "released", None)? {
                println!("Released: the host is back on the network.");
            } else {
                println!("Not isolated: nothing to release.");
            }
            Ok(())
        }
        Command::Arm => {
            require_root()?;
            bpf::ensure_bpffs(target.pins.root())?;
            if isolation::arm(&target)? {
                println!("Armed: programs loaded and verified, not attached.");
            } else {
                println!("Already loaded: nothing to do.");
            }
            Ok(())
        }
        Command::Status { json } => {
            require_root()?;
            let mut status = isolation::status(&target)?;
            status.agent = Some(health::view(&target.state_dir, isolation::now_unix_ms()));
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                output::print_status(&status);
            }
            Ok(())
        }
        Command::History { json } => {
            require_root()?;
            let trail = store::Store::open(&target.state_dir)?.audit_trail()?;
            if json {
                println!("{}", serde_json::to_string(&trail)?);
            } else {
                output::print_history(&trail);
            }
            Ok(())
        }
        Command::Run => agent(&target, &config),
        Command::Keygen { rotate } => {
            let key = if rotate {
                let key = identity::rotate(&target.state_dir)?;
                eprintln!(
                    "Replaced {}: enroll the new public key below; reports are refused until then.",
                    identity::key_path(&target.state_dir).display()
                );
                key
            } else {
                match identity::load_or_create(&target.state_dir)? {
                    identity::Loaded::Created(key) => {
                        eprintln!("Created {}.", identity::key_path(&target.state_dir).display());
                        key
                    }
                    identity::Loaded::Existing(key) => key,
                }
            };
            println!("{}", identity::public_text(&key));
            Ok(())
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> Result<EnforcerConfig> {
    if let Some(path) = path {
        EnforcerConfig::load(path).map_err(|e| UsageError(format!("{e:#}")).into())
    } else {
        let default = PathBuf::from("/etc/cordon/enforcer.toml");
        if default.exists() {
            EnforcerConfig::load(&default).map_err(|e| UsageError(format!("{e:#}")).into())
        } else {
            Ok(EnforcerConfig::default())
        }
    }
}

fn resolve_target(global: &GlobalOptions, config: &EnforcerConfig) -> Result<Target> {
    let cgroup = match global.cgroup.clone().or_else(|| config.cgroup.clone()) {
        Some(cgroup) => cgroup,
        None => host::cgroup2_root()?,
    };
    host::validate_cgroup(&cgroup).map_err(|e| UsageError(format!("--cgroup: {e:#}")))?;
    let pin_dir = global
        .pin_dir
        .clone()
        .or_else(|| config.pin_dir.clone())
        .unwrap_or_else(|| "/sys/fs/bpf/cordon".into());
    let state_dir = global
        .state_dir
        .clone()
        .or_else(|| config.state_dir.clone())
        .unwrap_or_else(|| "/var/lib/cordon".into());
    Ok(Target { cgroup, pins: bpf::Pins::new(&pin_dir), state_dir })
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "cordon-enforcer must run as root: it loads eBPF programs and severs connections \
             (it needs CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_SYS_PTRACE)"
        );
    }
    Ok(())
}

fn isolate(target: &Target, config: &EnforcerConfig, args: IsolateArgs) -> Result<()> {
    require_root()?;
    bpf::ensure_bpffs(target.pins.root())?;
    let (management, problems) = management_channel(config, &target.state_dir);
    if !problems.is_empty() {
        // By hand, a broker that is neither resolvable nor known is a mistake to fix first: the
        // isolation would cut the host off its own management channel.
        return Err(UsageError(problems.join("; ")).into());
    }
    let interfaces = choose_interfaces(target, config, args.interfaces);
    let request = IsolateRequest {
        duration: args.duration,
        exclusions: args.allow,
        allowed_processes: args.allow_process,
        allow_dns: args.allow_dns,
        allow_dhcp: args.allow_dhcp,
        reason: args.reason,
        interfaces,
        management,
        actor: "cli".into(),
        command_generation: None,
        // The running agent's, if one runs: its channel stays its own.
        agent_tgid: None,
    };
    let exclusions_ok = cordon_wire::rule_table::compile(&request.exclusions, &request.management);
    if let Err(error) = exclusions_ok {
        return Err(UsageError(error.to_string()).into());
    }
    let outcome = isolation::isolate(target, &request)?;
    let record = &outcome.record;
    let until = match record.expires_at_unix_ms {
        Some(deadline) => format!("automatic, until {}", isolation::format_time(deadline)),
        None => "manual, until released".to_owned(),
    };
    let verb = if outcome.updated_live { "Isolation updated" } else { "Isolated" };
    println!("{verb}: {} ({until}).", isolation::ISOLATED_TAG);
    println!(
        "Severed {} connection(s), spared {}; {} exclusion(s), {} exempt process(es), management channel: {}.",
        outcome.severed.severed,
        outcome.severed.spared,
        record.exclusions.len(),
        outcome.exempt_processes,
        if record.management.is_empty() { "none configured".to_owned() } else { record.management.join(" ") }
    );
    Ok(())
}

/// What stays reachable while isolated: the brokers (which must resolve: without them the host
/// could not be released remotely) and the OTLP collectors (best effort: a collector that does
/// not resolve is left out, with a warning, rather than stopping an isolation).
/// The management channel: the brokers (as configured, and as the cluster advertised them), the
/// OTLP collectors, and DNS to the host's resolvers, for the agent's sockets only. A name that
/// does not resolve uses the addresses it had (kept in the state dir); one never seen resolved is
/// returned as a problem, and left out.
fn management_channel(config: &EnforcerConfig, state_dir: &std::path::Path) -> (Vec<Exclusion>, Vec<String>) {
    let mut endpoints = endpoints::Endpoints::load(state_dir);
    let mut addresses = Vec::new();
    let mut problems = Vec::new();
    let named: Vec<String> = config.brokers().into_iter().chain(config.collectors()).collect();
    for endpoint in named.iter().chain(&endpoints.others(&named)) {
        match endpoints.find(endpoint) {
            Ok(found) => {
                if let endpoints::Found::Remembered(known, problem) = &found {
                    tracing::warn!(
                        "management endpoint {endpoint} does not resolve now ({problem}): using {known:?}, its \
                         addresses when it last did"
                    );
                }
                addresses.extend_from_slice(found.addresses());
            }
            Err(error) => problems.push(format!("{error:#}")),
        }
    }
    if let Err(error) = endpoints.save() {
        tracing::warn!("cannot remember the management endpoints' addresses: {error:#}");
    }
    let mut management = isolation::management_exclusions(&addresses);
    for dns in isolation::agent_dns_exclusions() {
        if !management.contains(&dns) {
            management.push(dns);
        }
    }
    (management, problems)
}

/// The interfaces that get the ICMP echo guard: those given, else those configured, else every
/// interface but loopback when the whole host is isolated, else none.
fn choose_interfaces(target: &Target, config: &EnforcerConfig, given: Vec<String>) -> Vec<String> {
    let whole_host = host::cgroup2_root().is_ok_and(|root| root == target.cgroup);
    if !given.is_empty() {
        given
    } else if let Some(configured) = &config.interfaces {
        configured.clone()
    } else if whole_host {
        host::non_loopback_interfaces()
    } else {
        Vec::new()
    }
}

/// The agent's start: logs, restoring what is due (before anything else), telemetry.
fn start_agent(target: &Target, config: &EnforcerConfig) -> Result<cordon_telemetry::Telemetry> {
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
    Ok(telemetry)
}

/// The agent: restore first, then keep the programs armed, lift every deadline on time.
fn agent(target: &Target, config: &EnforcerConfig) -> Result<()> {
    let telemetry = start_agent(target, config)?;
    let arm = config.arm.unwrap_or(true);
    let (mut management, problems) = management_channel(config, &target.state_dir);
    for problem in &problems {
        tracing::error!("{problem}: the channel to it stays closed while isolated");
    }
    // An isolation recorded with other addresses (brokers moved, renamed) gets these.
    update_management(target, &management);
    let interfaces = choose_interfaces(target, config, Vec::new());
    // The whole host, no interfaces configured: every interface is guarded, also one that
    // appears while the host is isolated.
    let guards_every_interface =
        config.interfaces.is_none() && host::cgroup2_root().is_ok_and(|root| root == target.cgroup);
    let heartbeat = Duration::from_secs(config.heartbeat_seconds.unwrap_or(30).max(1));
    let mut settings = config.channel_settings(&target.state_dir)?;
    let mut channel: Option<channel::Channel> = None;
    let mut next_connect = Instant::now();
    let mut next_heartbeat = Instant::now();
    let mut health = health::AgentHealth {
        pid: std::process::id(),
        started_at_ms: isolation::now_unix_ms(),
        heartbeat_seconds: heartbeat.as_secs(),
        brokers: config.kafka.as_ref().map(|k| k.brokers.clone()),
        ..health::AgentHealth::default()
    };
    let mut health_written: Option<health::AgentHealth> = None;
    loop {
        if arm && !target.pins.loaded() {
            match isolation::arm(target) {
                Ok(true) => tracing::info!("armed: programs loaded, ready to isolate at once."),
                Ok(false) => {}
                Err(error) => tracing::error!("cannot arm: {error:#}"),
            }
        }
        // Connect (and retry a failed start) without ever holding up enforcement.
        if channel.is_none() && Instant::now() >= next_connect {
            if let Some(pending) = settings.take() {
                let brokers = pending.brokers.clone();
                match channel::Channel::connect(
                    pending,
                    cordon_telemetry::Spans::new(telemetry.tracer().cloned()),
                ) {
                    Ok(connected) => {
                        let partition = connected.partition().unwrap_or(-1);
                        tracing::info!("command channel connected to {brokers} (partition {partition}).");
                        learn_advertised_brokers(target, config, connected.advertised(), &mut management);
                        channel = Some(connected);
                    }
                    Err(error) => {
                        tracing::error!("command channel: {error:#}; retrying in 5 s");
                        settings = config.channel_settings(&target.state_dir)?;
                        next_connect = Instant::now() + Duration::from_secs(5);
                    }
                }
            }
        }
        let wait = lift_if_due(target, channel.as_ref());
        let heartbeat_due = Instant::now() >= next_heartbeat;
        if heartbeat_due {
            repair_detached_links(target, channel.as_ref());
            if guards_every_interface {
                guard_new_interfaces(target);
            }
        }
        note_health(target, channel.as_ref(), &mut health, &mut health_written, heartbeat_due);
        if let Some(channel) = &channel {
            if heartbeat_due {
                channel.report(&channel.snapshot(target, channel::Answer::Heartbeat));
                next_heartbeat = Instant::now() + heartbeat;
            }
            let apply = channel::Apply { target, management: &management, interfaces: &interfaces };
            match channel.poll(wait, &apply) {
                // The command's spans go out now, not in a few seconds.
                Ok(true) => telemetry.flush(),
                Ok(false) => {}
                Err(error) => tracing::error!("{error:#}"),
            }
        } else {
            if heartbeat_due {
                next_heartbeat = Instant::now() + heartbeat;
            }
            std::thread::sleep(wait);
        }
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
fn lift_if_due(target: &Target, channel: Option<&channel::Channel>) -> Duration {
    match isolation::expire_if_due(target) {
        Ok(isolation::Deadline::Pending(remaining)) => remaining.min(Duration::from_millis(500)),
        Ok(isolation::Deadline::Lifted) => {
            tracing::info!("deadline reached: isolation lifted.");
            if let Some(channel) = channel {
                channel.report(&channel.snapshot(target, channel::Answer::Changed));
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
fn repair_detached_links(target: &Target, channel: Option<&channel::Channel>) {
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
