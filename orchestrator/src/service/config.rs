//! `cordon.toml`: the service's configuration. Unknown keys are errors that name the key and
//! the file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(default)]
    pub kafka: KafkaSection,
    pub rules: RulesSection,
    #[serde(default)]
    pub state: StateSection,
    pub signing: SigningSection,
    #[serde(default)]
    pub commands: CommandsSection,
    #[serde(default)]
    pub api: ApiSection,
    #[serde(default)]
    pub agents: AgentsSection,
    #[serde(default)]
    pub console: ConsoleSection,
    /// `[[inputs]]`: topics of alerts in other formats than OCSF, read beside
    /// `[kafka] detections_topic` (which holds OCSF unless an input names it).
    #[serde(default)]
    pub inputs: Vec<InputSection>,
    #[serde(default)]
    pub telemetry: cordon_telemetry::TelemetrySection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// `host:port,...`; absent or `embedded`: an in-process broker (nothing kept across restarts).
    pub brokers: Option<String>,
    #[serde(default = "default_detections_topic")]
    pub detections_topic: String,
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    #[serde(default = "default_commands_topic")]
    pub commands_topic: String,
    #[serde(default = "default_status_topic")]
    pub status_topic: String,
    /// Where each service claims to be the active one for its `instance_id` (see `lease.rs`).
    #[serde(default = "default_lease_topic")]
    pub lease_topic: String,
    /// The group id the service commits its offsets under (it joins no group: it assigns itself
    /// every partition).
    #[serde(default = "default_group")]
    pub group_id: String,
    /// This service's id for the lease (`[kafka] lease_topic`): one active service per id.
    #[serde(default = "default_group")]
    pub instance_id: String,
    /// The longest a fetch waits at the broker for new detections. Kafka answers as soon as
    /// data arrives, so this only bounds the idle request rate (100/s at 10 ms, for one
    /// consumer); brokers that answer only at the end of the wait (tansu 0.6) add it to every
    /// detection's latency and divide the throughput by it.
    #[serde(default = "default_fetch_wait")]
    pub fetch_wait_ms: u64,
    /// A detection (or status report) larger than this is dead-lettered (or ignored) unparsed.
    #[serde(default = "default_max_detection_bytes")]
    pub max_detection_bytes: usize,
    /// The largest message cordon produces (librdkafka's `message.max.bytes`; keep it at or
    /// below the broker's limit). A command larger than this is never sent: it is parked and its
    /// host shows why; a dead letter keeps only as much of the original bytes as fits.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// `[kafka.tls]`: TLS to the brokers, mutual with a client certificate.
    pub tls: Option<cordon_wire::kafka::KafkaTls>,
    /// `[kafka.sasl]`: PLAIN (over TLS only) or SCRAM, the password from a file.
    pub sasl: Option<cordon_wire::kafka::KafkaSasl>,
    /// `[kafka.settings]`: other librdkafka settings, passed through (not the ones cordon sets).
    #[serde(default)]
    pub settings: std::collections::BTreeMap<String, String>,
}

impl KafkaSection {
    /// The librdkafka settings of `[kafka.tls]`, `[kafka.sasl]` and `[kafka.settings]`, for every
    /// client cordon makes; every problem at once.
    pub fn client_settings(&self) -> Result<Vec<(String, String)>> {
        cordon_wire::kafka::client_settings(self.tls.as_ref(), self.sasl.as_ref(), &self.settings, "[kafka]")
            .map_err(anyhow::Error::msg)
    }

    /// The limits must leave room for what they bound; every problem at once.
    pub fn check_limits(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.max_detection_bytes < 1_024 {
            problems.push(format!("[kafka] max_detection_bytes = {} is below 1024", self.max_detection_bytes));
        }
        if !(8_192..=1_000_000_000).contains(&self.max_message_bytes) {
            problems.push(format!(
                "[kafka] max_message_bytes = {} must be 8192 to 1000000000 (within librdkafka's range, with \
                 room for a command)",
                self.max_message_bytes
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("{}", problems.join("; "))
        }
    }
}

impl Default for KafkaSection {
    fn default() -> Self {
        KafkaSection {
            brokers: None,
            detections_topic: default_detections_topic(),
            dead_letter_topic: default_dead_letter_topic(),
            commands_topic: default_commands_topic(),
            status_topic: default_status_topic(),
            lease_topic: default_lease_topic(),
            group_id: default_group(),
            instance_id: default_group(),
            fetch_wait_ms: default_fetch_wait(),
            max_detection_bytes: default_max_detection_bytes(),
            max_message_bytes: default_max_message_bytes(),
            tls: None,
            sasl: None,
            settings: std::collections::BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesSection {
    pub dir: PathBuf,
    /// How often the directory is checked for changes (SIGHUP reloads at once).
    #[serde(default = "default_rules_poll")]
    pub poll_seconds: u64,
    /// `live` (rules act; those with `shadow: true` only record what they would do) or
    /// `shadow` (every rule only records: nothing is sent on a detection).
    #[serde(default)]
    pub mode: RulesMode,
    /// A TOML file of host tags (`"HOST" = ["tag", ...]`), added to the operators' tags when a
    /// detection is decided (protection, profiles); read with the rules (start, reload).
    pub inventory: Option<PathBuf>,
    /// Also take a detection's own `device.groups[].name` as its host's tags. Off by default:
    /// whoever writes detections would then decide protection.
    #[serde(default)]
    pub tags_from_events: bool,
}

impl RulesSection {
    /// The settings a replay takes without a `cordon.toml`.
    pub fn for_replay(inventory: Option<PathBuf>, tags_from_events: bool) -> RulesSection {
        RulesSection {
            dir: PathBuf::new(),
            poll_seconds: default_rules_poll(),
            mode: RulesMode::Live,
            inventory,
            tags_from_events,
        }
    }

    /// Where host tags come from besides operators' (the inventory read now), as the service and
    /// `cordon rules test --config` take them.
    pub fn tag_sources(&self) -> Result<rules::TagSources> {
        let inventory = match &self.inventory {
            Some(path) => read_inventory(path)?,
            None => std::collections::HashMap::new(),
        };
        Ok(rules::TagSources::new(inventory, self.tags_from_events))
    }
}

/// `[rules] inventory`: `"HOST" = ["tag", ...]` lines; every problem at once.
fn read_inventory(path: &Path) -> Result<std::collections::HashMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the inventory {}", path.display()))?;
    let inventory: std::collections::HashMap<String, Vec<String>> = toml::from_str(&text).map_err(|error| {
        anyhow::anyhow!("{}: {} (expected lines of \"HOST\" = [\"tag\", ...])", path.display(), error.to_string().trim_end())
    })?;
    let mut problems = Vec::new();
    for (host, tags) in &inventory {
        if let Err(problem) = crate::api::check_host_id(host) {
            problems.push(problem);
        }
        for tag in tags {
            if let Err(refused) = super::lifecycle::check_tag(tag) {
                problems.push(format!("host {host}: {refused}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(inventory)
    } else {
        problems.sort();
        anyhow::bail!("the inventory {} has {} problem(s): {}", path.display(), problems.len(), problems.join("; "))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RulesMode {
    #[default]
    Live,
    Shadow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Address and port of the operator API.
    #[serde(default = "default_api_listen")]
    pub listen: String,
    /// The one shared bearer token (an admin, named by what the client claims); absent:
    /// `<state dir>/api-token`, created on first start. Set this or `tokens_file`, not both.
    pub token_file: Option<PathBuf>,
    /// Tokens that each name their operator and role (TOML `[[token]]` entries with `operator`,
    /// `role` = viewer | responder | admin, and the token's `sha256`; `cordon token new` makes
    /// one). With it, the audit trail records the token's operator, not what the client claims.
    pub tokens_file: Option<PathBuf>,
    /// Serve the API over TLS with this certificate (PEM: the server's, then its chain) and key
    /// (PEM, readable by its owner only); both or neither. Clients: `cordon --ca-file`.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection { listen: default_api_listen(), token_file: None, tokens_file: None, tls_cert_file: None, tls_key_file: None }
    }
}

/// One `[[inputs]]`: a topic and the format of its alerts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSection {
    pub topic: String,
    /// `ocsf`, `ecs` (Elastic Security alerts), `falco` or `wazuh`.
    pub format: rules::Format,
}

impl ServiceConfig {
    /// Every topic of alerts and its format: `[kafka] detections_topic` (OCSF, unless an input
    /// names it) and each `[[inputs]]`, in order.
    pub fn alert_topics(&self) -> Vec<(String, rules::Format)> {
        let mut topics = Vec::new();
        if !self.inputs.iter().any(|input| input.topic == self.kafka.detections_topic) {
            topics.push((self.kafka.detections_topic.clone(), rules::Format::Ocsf));
        }
        topics.extend(self.inputs.iter().map(|input| (input.topic.clone(), input.format)));
        topics
    }

    /// Every topic the service reads: the alert topics, then the status topic.
    pub fn consumed_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.alert_topics().into_iter().map(|(topic, _)| topic).collect();
        topics.push(self.kafka.status_topic.clone());
        topics
    }

    /// The inputs must name topics of their own; every problem at once.
    fn check_inputs(&self) -> Result<()> {
        let kafka = &self.kafka;
        let mut problems = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for input in &self.inputs {
            if input.topic.trim().is_empty() {
                problems.push("an [[inputs]] entry has an empty topic".to_owned());
            } else if !seen.insert(input.topic.as_str()) {
                problems.push(format!("[[inputs]] names the topic {:?} twice", input.topic));
            }
            let own = [&kafka.status_topic, &kafka.commands_topic, &kafka.dead_letter_topic, &kafka.lease_topic];
            if own.contains(&&input.topic) {
                problems.push(format!("[[inputs]] topic {:?} is one cordon itself writes", input.topic));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("{}", problems.join("; "))
        }
    }
}

/// `[console]`: the operators' web console.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSection {
    /// Serve the console at `/console` (default: yes).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Its own address; absent: the API's listener. Over TLS when the API is (`[api] tls_*`).
    pub listen: Option<String>,
    /// How long a sign-in lasts, in minutes.
    #[serde(default = "default_session_minutes")]
    pub session_minutes: u64,
}

impl Default for ConsoleSection {
    fn default() -> Self {
        ConsoleSection { enabled: true, listen: None, session_minutes: default_session_minutes() }
    }
}

fn default_true() -> bool {
    true
}

fn default_session_minutes() -> u64 {
    480
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsSection {
    /// An agent not heard from for this long (heartbeats come every 30 s) is marked stale.
    #[serde(default = "default_stale_after")]
    pub stale_after_seconds: u64,
    /// A command its agent has not answered after this long is sent again (then after 2x, 4x,
    /// ... up to 32x).
    #[serde(default = "default_resend_after")]
    pub resend_after_seconds: u64,
    /// When an agent reports its host no longer isolated though no command released it:
    /// `reisolate_manual` (default: isolate manual isolations again, alert only for timed ones),
    /// `reisolate_all` or `alert_only`.
    #[serde(default)]
    pub on_tamper: super::lifecycle::OnTamper,
}

impl Default for AgentsSection {
    fn default() -> Self {
        AgentsSection {
            stale_after_seconds: default_stale_after(),
            resend_after_seconds: default_resend_after(),
            on_tamper: super::lifecycle::OnTamper::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// Audit entries older than this are removed (hourly).
    #[serde(default = "default_retention_days")]
    pub audit_retention_days: u64,
    /// At most this many audit entries are kept per host, the newest.
    #[serde(default = "default_audit_max_per_host")]
    pub audit_max_per_host: usize,
    /// Records of API calls older than this are removed (hourly).
    #[serde(default = "default_retention_days")]
    pub api_calls_retention_days: u64,
}

impl Default for StateSection {
    fn default() -> Self {
        StateSection {
            dir: default_state_dir(),
            audit_retention_days: default_retention_days(),
            audit_max_per_host: default_audit_max_per_host(),
            api_calls_retention_days: default_retention_days(),
        }
    }
}

impl StateSection {
    /// What the retention job keeps.
    pub fn retention(&self) -> super::store::Retention {
        let days = |days: u64| i64::try_from(days).unwrap_or(i64::MAX / 86_400_000).saturating_mul(86_400_000);
        super::store::Retention {
            audit_ms: days(self.audit_retention_days),
            audit_per_host: self.audit_max_per_host.max(1),
            api_calls_ms: days(self.api_calls_retention_days),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningSection {
    /// The Ed25519 signing key (base64), as `cordon keygen` writes it.
    pub key_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsSection {
    /// How long a command stays valid after it is issued.
    #[serde(default = "default_command_ttl")]
    pub ttl_seconds: u64,
}

impl Default for CommandsSection {
    fn default() -> Self {
        CommandsSection { ttl_seconds: default_command_ttl() }
    }
}

fn default_detections_topic() -> String {
    cordon_wire::topics::DETECTIONS.into()
}
fn default_dead_letter_topic() -> String {
    cordon_wire::topics::DEAD_LETTER.into()
}
fn default_commands_topic() -> String {
    cordon_wire::topics::COMMANDS.into()
}
fn default_status_topic() -> String {
    cordon_wire::topics::STATUS.into()
}
fn default_lease_topic() -> String {
    cordon_wire::topics::LEASE.into()
}
fn default_group() -> String {
    "cordon".into()
}
fn default_fetch_wait() -> u64 {
    10
}
fn default_retention_days() -> u64 {
    180
}

fn default_audit_max_per_host() -> usize {
    10_000
}

fn default_max_detection_bytes() -> usize {
    1_048_576
}

/// librdkafka's own default `message.max.bytes`.
fn default_max_message_bytes() -> usize {
    1_000_000
}

fn default_state_dir() -> PathBuf {
    "/var/lib/cordon".into()
}
fn default_command_ttl() -> u64 {
    600
}
fn default_rules_poll() -> u64 {
    2
}
fn default_api_listen() -> String {
    "127.0.0.1:8700".into()
}
fn default_stale_after() -> u64 {
    90
}
fn default_resend_after() -> u64 {
    15
}

impl ServiceConfig {
    pub fn load(path: &Path) -> Result<ServiceConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let config: ServiceConfig = toml::from_str(&text)
            .map_err(|error| anyhow::anyhow!("{}: {}", path.display(), error.to_string().trim_end()))?;
        config.kafka.check_limits().map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
        config.check_inputs().map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_limits_are_checked_together() {
        let config: ServiceConfig = toml::from_str(
            "[kafka]\nmax_detection_bytes = 10\nmax_message_bytes = 100\n[rules]\ndir = \"/r\"\n[signing]\nkey_file = \"/k\"\n",
        )
        .unwrap();
        let error = config.kafka.check_limits().unwrap_err().to_string();
        assert!(error.contains("max_detection_bytes = 10") && error.contains("max_message_bytes = 100"), "{error}");
    }

    #[test]
    fn minimal_config_takes_the_documented_defaults() {
        let config: ServiceConfig =
            toml::from_str("[rules]\ndir = \"/etc/cordon/rules\"\n[signing]\nkey_file = \"/k\"\n").unwrap();
        assert_eq!(config.kafka.detections_topic, "edr.detections");
        assert_eq!(config.kafka.dead_letter_topic, "cordon.dead-letter");
        assert!(config.kafka.brokers.is_none());
        assert_eq!(config.state.dir, PathBuf::from("/var/lib/cordon"));
    }

    #[test]
    fn the_example_in_ops_sets_every_key_and_loads() {
        let path = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test"))
            .join("../ops/config/cordon.toml");
        let config = ServiceConfig::load(&path).unwrap();
        assert_eq!(config.kafka.brokers.as_deref(), Some("broker-1:9092,broker-2:9092"));
        assert_eq!(config.kafka.fetch_wait_ms, default_fetch_wait());
        assert_eq!(config.api.tokens_file, Some(PathBuf::from("/etc/cordon/api-tokens.toml")));
        assert_eq!(config.agents.resend_after_seconds, default_resend_after());
        assert_eq!(config.agents.on_tamper, super::super::lifecycle::OnTamper::ReisolateManual);
        assert!(config.console.enabled);
        assert_eq!(config.console.session_minutes, default_session_minutes());
        // Every key of every section is in the example (a new key must be documented there).
        let text = std::fs::read_to_string(&path).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let keys: usize = table.values().map(|section| section.as_table().map_or(1, toml::Table::len)).sum();
        assert_eq!(config.inputs.len(), 1);
        assert_eq!(config.rules.mode, RulesMode::Live);
        assert!(!config.rules.tags_from_events);
        assert_eq!(keys, 31, "keys in ops/config/cordon.toml (a key added to the config goes there too)");
    }

    #[test]
    fn inputs_add_topics_of_other_formats_and_must_be_their_own() {
        let config: ServiceConfig = toml::from_str(
            "[rules]\ndir = \"/r\"\n[signing]\nkey_file = \"/k\"\n[[inputs]]\ntopic = \"falco\"\nformat = \"falco\"\n\
             [[inputs]]\ntopic = \"edr.detections\"\nformat = \"ecs\"\n",
        )
        .unwrap();
        let topics = config.alert_topics();
        assert_eq!(topics, vec![("falco".into(), rules::Format::Falco), ("edr.detections".into(), rules::Format::Ecs)]);
        let bad: ServiceConfig = toml::from_str(
            "[rules]\ndir = \"/r\"\n[signing]\nkey_file = \"/k\"\n[[inputs]]\ntopic = \"x\"\nformat = \"wazuh\"\n\
             [[inputs]]\ntopic = \"x\"\nformat = \"ecs\"\n[[inputs]]\ntopic = \"cordon.status\"\nformat = \"ocsf\"\n",
        )
        .unwrap();
        let error = bad.check_inputs().unwrap_err().to_string();
        assert!(error.contains("names the topic \"x\" twice") && error.contains("\"cordon.status\" is one cordon itself writes"), "{error}");
        let unknown = toml::from_str::<ServiceConfig>(
            "[rules]\ndir = \"/r\"\n[signing]\nkey_file = \"/k\"\n[[inputs]]\ntopic = \"x\"\nformat = \"cef\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(unknown.contains("unknown variant `cef`, expected one of `ocsf`, `ecs`, `falco`, `wazuh`"), "{unknown}");
    }

    #[test]
    fn an_inventory_is_checked_with_every_problem_at_once() {
        let dir = std::env::temp_dir().join(format!("cordon-inventory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("inventory.toml");
        std::fs::write(&path, "\"plc-9\" = [\"plc\", \"ISOLATED FROM NETWORK\"]\n\"a/b\" = [\"x\"]\n").unwrap();
        let error = read_inventory(&path).unwrap_err().to_string();
        assert!(error.contains("2 problem(s)") && error.contains("managed by cordon") && error.contains("\"a/b\""), "{error}");
        std::fs::write(&path, "plc-9 = \"plc\"\n").unwrap();
        let error = read_inventory(&path).unwrap_err().to_string();
        assert!(error.contains("expected lines of \"HOST\" = [\"tag\", ...]"), "{error}");
        std::fs::write(&path, "\"plc-9\" = [\"plc\"]\n").unwrap();
        assert_eq!(read_inventory(&path).unwrap()["plc-9"], ["plc"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_keys_are_named() {
        let error = toml::from_str::<ServiceConfig>(
            "[rules]\ndir = \"/r\"\n[signing]\nkey_file = \"/k\"\n[kafka]\nbroker = \"x\"\n",
        )
        .unwrap_err();
        assert!(error.to_string().contains("unknown field `broker`"), "{error}");
    }
}
