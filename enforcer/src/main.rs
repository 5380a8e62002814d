//! `cordon-enforcer`: isolates this host with eBPF on command and lifts the isolation on time.
//!
//! Exit codes: 0 done; 1 could not be done (the message says why); 2 bad command line or input
//! (nothing was changed).

mod agent;
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
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use cordon_wire::spec::Exclusion;

use crate::config::EnforcerConfig;
use crate::exclusion::{parse_duration, parse_exclusion, validate_process_name};
use crate::isolation::{IsolateRequest, Target};

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
        Command::Run => agent::Agent::start(&target, &config)?.run(),
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
        if record.management.is_empty() {
            "none configured".to_owned()
        } else {
            record.management.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
        }
    );
    Ok(())
}

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
