//! The `cordon` command line: rule authoring (`rules`), the service (`serve`, `keygen`, `topics`) and the
//! operator commands (`isolate`, `release`, `approve`, `deny`, `hosts`, `host`, `tag`, `agents`).

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::client::{self, Connection};
use crate::rules_cli;
use crate::sigma_cli;

#[derive(Debug, Parser)]
#[command(
    name = "cordon",
    version,
    about = "Event-driven response orchestrator: detections in, host isolations out"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Author response rules: validate a rules directory, replay events through it, run its tests.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Run the service: detections from Kafka in, signed isolation commands out.
    Serve {
        /// cordon.toml
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Create the Kafka topics cordon.toml names (detections, dead letters, commands, status),
    /// each with the settings its use calls for; existing topics are left as they are.
    Topics {
        /// cordon.toml
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Partitions of the detections, commands and status topics. Agents derive their
        /// commands' partition from it: choose it once.
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        #[arg(long, default_value_t = 3)]
        replication: i32,
    },
    /// Make an API token for an operator: prints the token (hand it to them) and the `[[token]]`
    /// entry to add to `[api] tokens_file` (which holds only its SHA-256), then restart the service.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Write a new command-signing key pair: DIR/signing.key (secret) and DIR/signing.pub.
    Keygen {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Isolate a host now: timed (--for, or --automatic for its profile's duration) or until
    /// released (--manual). Its isolation profile's exclusions apply too (`cordon policy show`).
    #[command(group(clap::ArgGroup::new("length").required(true).args(["duration", "automatic", "manual"])))]
    Isolate {
        host: String,
        /// How long, e.g. 90s, 15m, 4h, 7d; lifted automatically at the end.
        #[arg(long = "for", value_name = "DUR", value_parser = client::parse_for)]
        duration: Option<u64>,
        /// Timed, for as long as the host's isolation profile says (`automatic_duration`).
        #[arg(long)]
        automatic: bool,
        /// Until an operator releases it.
        #[arg(long)]
        manual: bool,
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Traffic left open: DIR,PROTO,CIDR[,PORTS], e.g. out,tcp,198.51.100.7/32,443 (repeatable).
        #[arg(long = "allow", value_name = "SPEC")]
        allow: Vec<String>,
        /// A process (by name) whose traffic is left alone (repeatable).
        #[arg(long = "allow-process", value_name = "NAME")]
        allow_process: Vec<String>,
        /// Leave DNS to the host's resolvers open.
        #[arg(long)]
        allow_dns: bool,
        /// Leave DHCP open.
        #[arg(long)]
        allow_dhcp: bool,
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
    /// Release a host's isolation.
    Release {
        host: String,
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
    /// Give HOST's timed isolation in force more time (its agent moves the deadline live).
    Extend {
        host: String,
        /// How much later it ends, e.g. 30m, 4h.
        #[arg(long = "by", value_name = "DUR", value_parser = client::parse_for)]
        by: u64,
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
    /// Approve the isolation a rule asked for on HOST; it starts now.
    Approve {
        host: String,
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
    /// Deny the isolation a rule asked for on HOST.
    Deny {
        host: String,
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
    /// List hosts, e.g. `cordon hosts --tag "ISOLATED FROM NETWORK"`.
    Hosts {
        #[arg(long)]
        tag: Option<String>,
        /// `not_isolated`, `pending_approval`, `isolating`, `isolated`, `releasing` or `released`.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        connection: Connection,
        /// A JSON array of hosts (`host`, `state`, `mode`, `expires_at`, `tags`, ...).
        #[arg(long)]
        json: bool,
    },
    /// Show one host: state, deadline, tags, its agent's last status, audit trail.
    Host {
        host: String,
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
    /// Agent keys: which key may sign each host's status reports (reports signed otherwise are refused).
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// The central isolation policy: profiles (automatic duration, exclusions, excluded
    /// processes, DNS and DHCP) chosen by host tag; every change is a version.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// What the shadow rules (`shadow: true`, or `[rules] mode = "shadow"`) would have done.
    #[command(subcommand)]
    Shadow(ShadowCommand),
    /// Add or remove a host's operator tags (tags feed the rules' protected assets).
    Tag {
        host: String,
        #[arg(long, value_name = "TAG")]
        add: Vec<String>,
        #[arg(long, value_name = "TAG")]
        remove: Vec<String>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// A new random token for OPERATOR with ROLE.
    New {
        /// The operator's name, as the audit trail will record it.
        #[arg(long)]
        operator: String,
        /// `viewer` (reads), `responder` (also isolate, release, approve, deny, tag) or `admin` (also agent keys).
        #[arg(long, value_parser = ["viewer", "responder", "admin"])]
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Enrolled, revoked and pending agent keys; a pending key claims a host but is never trusted.
    List {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
    /// Trust a key for HOST's reports (first enrolment, or a rotated key).
    Enroll {
        host: String,
        /// A file holding the agent's public key (`cordon-enforcer keygen` prints it), or `-` for standard input.
        #[arg(long, value_name = "FILE|-")]
        key: String,
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
    /// Enroll the pending key that claims HOST, if it is KEY (check it on the host first).
    Accept {
        host: String,
        /// The key as `cordon agents list` shows it and `cordon-enforcer keygen` prints it on the host.
        key: String,
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
    /// Stop trusting HOST's key: its reports are refused until a key is enrolled again.
    Revoke {
        host: String,
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// The policy in force (or --version N) as the TOML file `policy set` reads.
    Show {
        #[arg(long, value_name = "N")]
        version: Option<u64>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
    /// Put FILE's policy in force as a new version (admin); isolations in force take their new
    /// profile live, deadlines kept.
    Set {
        /// A TOML file with a `[[profiles]]` table per profile (`policy show` prints one), or `-`.
        file: PathBuf,
        /// Why (required): every version keeps it.
        #[arg(long, value_name = "TEXT")]
        reason: String,
        /// Refuse if the policy in force is no longer version N (someone changed it meanwhile).
        #[arg(long, value_name = "N")]
        expected_version: Option<u64>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
    /// Every version with its author, reason, time and what it changed.
    History {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
    /// What changed from version FROM to version TO (default: the one in force).
    Diff {
        from: u64,
        to: Option<u64>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
    /// Put version N's policy in force again, as a new version (admin).
    Revert {
        version: u64,
        #[arg(long, value_name = "TEXT")]
        reason: String,
        #[arg(long, value_name = "N")]
        expected_version: Option<u64>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ShadowCommand {
    /// Which hosts the shadow rules would have isolated (or asked approval for), by which
    /// rules, how often.
    Report {
        /// How far back, e.g. 90m, 24h, 7d.
        #[arg(long, value_name = "DUR", default_value = "24h")]
        since: String,
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Validate every rule file and policy.yaml in DIR; report every problem as `FILE:LINE:COLUMN`.
    Check {
        /// The rules directory (*.yaml and *.yml files; policy.yaml is the policy).
        dir: PathBuf,
    },
    /// Run the rules' `tests:`, or with --events replay NDJSON events and print the decisions.
    Test {
        /// The rules directory.
        dir: PathBuf,
        /// NDJSON events to replay in file order, each at its own `time` (`-` reads standard input).
        #[arg(long, value_name = "FILE")]
        events: Option<PathBuf>,
        /// The events' alert format: ocsf (OCSF Detection Findings), ecs (Elastic Security
        /// alerts), falco or wazuh (alerts.json lines).
        #[arg(long, value_name = "FORMAT", default_value = "ocsf", value_parser = ["ocsf", "ecs", "falco", "wazuh"], requires = "events")]
        format: String,
        /// Decide as the service with this cordon.toml does: its `[rules]` inventory,
        /// `tags_from_events` and mode (shadow). Host tags otherwise come from --inventory and
        /// --tags-from-events only (operators' tags live in the service).
        #[arg(long, value_name = "FILE", requires = "events", conflicts_with_all = ["inventory", "tags_from_events"])]
        config: Option<PathBuf>,
        /// A file of host tags, as `[rules] inventory` takes it.
        #[arg(long, value_name = "FILE", requires = "events")]
        inventory: Option<PathBuf>,
        /// Also take each event's device.groups[].name as its host's tags.
        #[arg(long, requires = "events")]
        tags_from_events: bool,
        /// Print one JSON object per line (a decision with --events, a test result without).
        #[arg(long)]
        json: bool,
    },
    /// Convert Sigma rules into cordon rules: field names mapped through a pipeline, the level
    /// deciding the response, shadow rules unless --live. Lists every rule it cannot convert with
    /// the reason (exit 1 when there is one). Overwrites only files it wrote itself.
    ImportSigma {
        /// Sigma rule files, or directories searched for *.yml/*.yaml.
        #[arg(required = true, value_name = "FILE|DIR")]
        paths: Vec<PathBuf>,
        /// A pipeline that ships with cordon (ocsf-linux) or a pipeline file.
        #[arg(long, value_name = "NAME|FILE")]
        pipeline: String,
        /// The rules directory to write into (created if missing); its policy.yaml, if any, is
        /// the policy the converted rules are checked against.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The response for a level, LEVEL=automatic:DUR|manual|approval|skip (repeatable).
        /// Default: critical=automatic:4h, high=approval, the lower levels skip.
        #[arg(long = "level", value_name = "LEVEL=RESPONSE", value_parser = sigma_cli::parse_level_response)]
        levels: Vec<(rules::Level, rules::LevelResponse)>,
        /// Write rules that act at once instead of shadow rules.
        #[arg(long)]
        live: bool,
    },
}

/// `cordon agents ...`.
fn agents(command: AgentsCommand, out: &mut impl Write) -> anyhow::Result<()> {
    let (connection, json, request) = match command {
        AgentsCommand::List { connection, json } => (connection, json, client::AgentsRequest::List),
        AgentsCommand::Enroll { host, key, reason, connection, json } => {
            let key = client::read_key_argument(&key)?;
            (connection, json, client::AgentsRequest::Enroll { host, key, reason })
        }
        AgentsCommand::Accept { host, key, reason, connection, json } => {
            (connection, json, client::AgentsRequest::Accept { host, key, reason })
        }
        AgentsCommand::Revoke { host, reason, connection, json } => {
            (connection, json, client::AgentsRequest::Revoke { host, reason })
        }
    };
    client::agents(&connection, request, json, out)
}

/// `cordon policy ...`.
fn policy(command: PolicyCommand, out: &mut impl Write) -> anyhow::Result<()> {
    let (connection, json, request) = match command {
        PolicyCommand::Show { version, connection, json } => (connection, json, client::PolicyRequest::Show { version }),
        PolicyCommand::Set { file, reason, expected_version, connection, json } => {
            (connection, json, client::PolicyRequest::Set { file, reason, expected_version })
        }
        PolicyCommand::History { connection, json } => (connection, json, client::PolicyRequest::History),
        PolicyCommand::Diff { from, to, connection, json } => (connection, json, client::PolicyRequest::Diff { from, to }),
        PolicyCommand::Revert { version, reason, expected_version, connection, json } => {
            (connection, json, client::PolicyRequest::Revert { version, reason, expected_version })
        }
    };
    client::policy(&connection, request, json, out)
}

/// Runs a parsed command line. Ok(false) means the command ran and found problems (exit 1).
#[expect(clippy::too_many_lines, reason = "one arm per command, each a call into its module")]
pub fn run(cli: Cli) -> anyhow::Result<bool> {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut out = stdout.lock();
    let mut err = stderr.lock();
    let ok = match cli.command {
        Command::Rules(RulesCommand::Check { dir }) => rules_cli::check(&dir, &mut out, &mut err)?,
        Command::Rules(RulesCommand::Test { dir, events: Some(events), format, config, inventory, tags_from_events, json }) => {
            let format = rules::Format::from_name(&format).expect("clap allows only the formats' names");
            let section = match config {
                Some(config) => crate::service::config::ServiceConfig::load(&config)?.rules,
                None => crate::service::config::RulesSection::for_replay(inventory, tags_from_events),
            };
            let settings = rules_cli::ReplaySettings {
                format,
                tags: section.tag_sources()?,
                all_shadow: section.mode == crate::service::config::RulesMode::Shadow,
            };
            rules_cli::replay(&dir, &events, &settings, json, &mut out, &mut err)?
        }
        Command::Rules(RulesCommand::Test { dir, events: None, json, .. }) => {
            rules_cli::run_tests(&dir, json, &mut out, &mut err)?
        }
        Command::Rules(RulesCommand::ImportSigma { paths, pipeline, out: dir, levels, live }) => {
            let request = sigma_cli::ImportRequest { paths, pipeline, out: dir, levels, live };
            sigma_cli::import(&request, &mut out)?
        }
        Command::Serve { config } => {
            drop((out, err));
            crate::service::run_from_config(&config)?;
            return Ok(true);
        }
        Command::Isolate {
            host,
            duration,
            automatic,
            manual: _,
            reason,
            allow,
            allow_process,
            allow_dns,
            allow_dhcp,
            connection,
            json,
        } => {
            let request = crate::api::IsolateRequest {
                mode: if duration.is_some() || automatic { "automatic" } else { "manual" }.into(),
                duration_seconds: duration,
                exclusions: allow,
                allowed_processes: allow_process,
                allow_dns,
                allow_dhcp,
                reason,
            };
            client::run(&connection, client::Request::Isolate { host, request }, json, &mut out)?;
            true
        }
        Command::Release { host, reason, connection, json } => {
            client::run(&connection, client::Request::Release { host, reason }, json, &mut out)?;
            true
        }
        Command::Extend { host, by, reason, connection, json } => {
            let request = crate::api::ExtendRequest { duration_seconds: by, reason };
            client::run(&connection, client::Request::Extend { host, request }, json, &mut out)?;
            true
        }
        Command::Approve { host, reason, connection, json } => {
            client::run(&connection, client::Request::Approve { host, reason }, json, &mut out)?;
            true
        }
        Command::Deny { host, reason, connection, json } => {
            client::run(&connection, client::Request::Deny { host, reason }, json, &mut out)?;
            true
        }
        Command::Hosts { tag, state, connection, json } => {
            client::run(&connection, client::Request::Hosts { tag, state }, json, &mut out)?;
            true
        }
        Command::Host { host, connection, json } => {
            client::run(&connection, client::Request::Host { host }, json, &mut out)?;
            true
        }
        Command::Tag { host, add, remove, connection, json } => {
            let tags = crate::api::TagsRequest { add, remove };
            client::run(&connection, client::Request::Tag { host, tags }, json, &mut out)?;
            true
        }
        Command::Agents(command) => {
            agents(command, &mut out)?;
            true
        }
        Command::Policy(command) => {
            policy(command, &mut out)?;
            true
        }
        Command::Shadow(ShadowCommand::Report { since, connection, json }) => {
            client::shadow_report(&connection, &since, json, &mut out)?;
            true
        }
        Command::Topics { config, partitions, replication } => {
            let config = crate::service::config::ServiceConfig::load(&config)?;
            for line in crate::topics::create(&config, crate::topics::Layout { partitions, replication })? {
                writeln!(out, "{line}")?;
            }
            true
        }
        Command::Token { command: TokenCommand::New { operator, role } } => {
            let (token, sha256) = crate::service::access::new_token();
            writeln!(out, "{token}")?;
            writeln!(
                err,
                "Give the token above to {operator} (it is shown only now), add this to [api] tokens_file and \
                 restart cordon serve:\n\n[[token]]\noperator = {operator:?}\nrole = {role:?}\nsha256 = \"{sha256}\""
            )?;
            true
        }
        Command::Keygen { out: dir } => {
            crate::keygen::keygen(&dir)?;
            writeln!(out, "Wrote {0}/signing.key (keep it secret) and {0}/signing.pub.", dir.display())?;
            true
        }
    };
    out.flush()?;
    Ok(ok)
}
