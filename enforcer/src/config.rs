//! `enforcer.toml`: the agent's configuration file. Unknown keys are errors naming the key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnforcerConfig {
    /// This host's id in commands (default: /etc/machine-id).
    pub host_id: Option<String>,
    pub kafka: Option<KafkaConfig>,
    pub signing: Option<SigningConfig>,
    /// The cgroup v2 directory whose processes are isolated (default: the cgroup v2 root).
    pub cgroup: Option<PathBuf>,
    /// Where programs, maps and links are pinned (default /sys/fs/bpf/cordon).
    pub pin_dir: Option<PathBuf>,
    /// Where the agent keeps its sled state (default /var/lib/cordon).
    pub state_dir: Option<PathBuf>,
    /// Interfaces that get the ICMP echo guard (default: every interface but loopback when the
    /// whole host is isolated, none when a child cgroup is).
    pub interfaces: Option<Vec<String>>,
    /// Whether the agent keeps the programs loaded (verified, not attached: no cost to any
    /// packet) while not isolating, so isolation only has to attach them (default true).
    pub arm: Option<bool>,
    /// Seconds between status heartbeats on the status topic (default 30).
    pub heartbeat_seconds: Option<u64>,
    /// Logs and OTLP export (traces of the commands the agent handles).
    #[serde(default)]
    pub telemetry: cordon_telemetry::TelemetrySection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list: the management channel, always reachable.
    pub brokers: String,
    /// Where signed commands arrive (default `cordon.commands`).
    pub commands_topic: Option<String>,
    /// Where this agent reports (default `cordon.status`).
    pub status_topic: Option<String>,
    /// The longest a fetch waits at the broker for new commands (default 500, the Kafka
    /// client's). Kafka answers as soon as a command arrives, so this bounds only the idle
    /// request rate; brokers that answer only at the end of the wait (tansu 0.6) add it to
    /// every command's latency.
    pub fetch_wait_ms: Option<u64>,
    /// `[kafka.tls]`: TLS to the brokers, mutual with a client certificate.
    pub tls: Option<cordon_wire::kafka::KafkaTls>,
    /// `[kafka.sasl]`: PLAIN (over TLS only) or SCRAM, the password from a file.
    pub sasl: Option<cordon_wire::kafka::KafkaSasl>,
    /// `[kafka.settings]`: other librdkafka settings, passed through (not the ones cordon sets).
    #[serde(default)]
    pub settings: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// The orchestrator's Ed25519 public keys, one base64 key per line (as `cordon keygen` writes
    /// signing.pub); two while the signing key is rotated.
    pub public_key_file: PathBuf,
}

impl EnforcerConfig {
    pub fn load(path: &Path) -> Result<EnforcerConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text)
            .map_err(|error| anyhow::anyhow!("{}: {}", path.display(), error.to_string().trim_end()))
    }

    /// The channel settings, when a `[kafka]` section is configured; the agent's key (which
    /// signs its reports) comes from `state_dir`, created there on first use.
    pub fn channel_settings(&self, state_dir: &Path) -> Result<Option<crate::channel::ChannelSettings>> {
        let Some(kafka) = &self.kafka else { return Ok(None) };
        let signing = self.signing.as_ref().context(
            "[kafka] is configured but [signing] public_key_file is not: the agent refuses to take unsigned orders",
        )?;
        let text = std::fs::read_to_string(&signing.public_key_file)
            .with_context(|| format!("cannot read the public key {}", signing.public_key_file.display()))?;
        let public_keys = cordon_wire::verifying_keys_from_text(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", signing.public_key_file.display()))?;
        let host_id = match &self.host_id {
            Some(id) => id.clone(),
            None => std::fs::read_to_string("/etc/machine-id")
                .context("no host_id configured and /etc/machine-id is unreadable")?
                .trim()
                .to_owned(),
        };
        let agent_key = crate::identity::load_or_create(state_dir)?;
        if let crate::identity::Loaded::Created(key) = &agent_key {
            tracing::warn!(
                "created this agent's key {}: cordon applies its reports only once an operator enrolls it \
                 (cordon agents enroll {host_id} --key -, with {})",
                crate::identity::key_path(state_dir).display(),
                crate::identity::public_text(key)
            );
        }
        let security = cordon_wire::kafka::client_settings(kafka.tls.as_ref(), kafka.sasl.as_ref(), &kafka.settings, "[kafka]")
            .map_err(anyhow::Error::msg)?;
        let brokers = crate::endpoints::Endpoints::load(state_dir).bootstrap(&self.brokers());
        Ok(Some(crate::channel::ChannelSettings {
            brokers,
            commands_topic: kafka.commands_topic.clone().unwrap_or_else(|| cordon_wire::topics::COMMANDS.into()),
            status_topic: kafka.status_topic.clone().unwrap_or_else(|| cordon_wire::topics::STATUS.into()),
            fetch_wait_ms: kafka.fetch_wait_ms.unwrap_or(500),
            host_id,
            public_keys,
            agent_key: agent_key.key(),
            security,
        }))
    }

    /// The broker addresses, as `host:port` strings.
    pub fn brokers(&self) -> Vec<String> {
        self.kafka
            .as_ref()
            .map(|kafka| {
                kafka.brokers.split(',').map(str::trim).filter(|b| !b.is_empty()).map(String::from).collect()
            })
            .unwrap_or_default()
    }

    /// The OTLP collectors the agent's traces go to (from the file or the `OTEL_*` variables),
    /// as `host:port`: they join the management channel, so that an isolated host still reports.
    pub fn collectors(&self) -> Vec<String> {
        cordon_telemetry::collector_addresses(&self.telemetry, &|name| std::env::var(name).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let error =
            toml::from_str::<EnforcerConfig>("host_id = \"a\"\n[kafka]\nbrokers = \"b:1\"\nbroker = \"x\"\n")
                .unwrap_err();
        assert!(error.to_string().contains("unknown field `broker`"), "{error}");
    }

    #[test]
    fn the_example_in_ops_loads() {
        let path = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test"))
            .join("../ops/config/enforcer.toml");
        let config = EnforcerConfig::load(&path).unwrap();
        assert_eq!(config.host_id.as_deref(), Some("web-01"));
        assert_eq!(config.kafka.as_ref().and_then(|k| k.fetch_wait_ms), Some(500));
        assert_eq!(config.brokers(), vec!["broker-1:9092", "broker-2:9092"]);
        assert_eq!(config.telemetry.log_format, cordon_telemetry::LogFormat::Human);
    }

    #[test]
    fn brokers_are_split() {
        let config: EnforcerConfig = toml::from_str("[kafka]\nbrokers = \"a:9092, b:9093\"\n").unwrap();
        assert_eq!(config.brokers(), vec!["a:9092", "b:9093"]);
    }
}
