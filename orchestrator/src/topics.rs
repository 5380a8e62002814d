//! `cordon topics --config cordon.toml`: creates the five Kafka topics the configuration names,
//! each with the settings its use calls for. Topics that exist are left as they are (and said
//! so), so the command can run on every deployment.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::service::config::ServiceConfig;

/// How many partitions and replicas to create the topics with.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Partitions of the detections, commands and status topics. Agents find their commands'
    /// partition from this count, so choose it once: changing it later moves hosts' commands.
    pub partitions: i32,
    pub replication: i32,
}

/// One topic to create: name, partitions, and its settings.
struct Plan<'a> {
    name: &'a str,
    partitions: i32,
    settings: &'static [(&'static str, &'static str)],
    why: &'static str,
}

const WEEK_MS: &str = "604800000";
const MONTH_MS: &str = "2592000000";

fn plans(config: &ServiceConfig, layout: Layout) -> Vec<Plan<'_>> {
    let kafka = &config.kafka;
    let inputs = config.inputs.iter().filter(|input| input.topic != kafka.detections_topic).map(|input| Plan {
        name: &input.topic,
        partitions: layout.partitions,
        settings: &[("cleanup.policy", "delete"), ("retention.ms", WEEK_MS)],
        why: "alerts of an [[inputs]] format, kept a week",
    });
    let own = [
        Plan {
            name: &kafka.detections_topic,
            partitions: layout.partitions,
            settings: &[("cleanup.policy", "delete"), ("retention.ms", WEEK_MS)],
            why: "detections, kept a week",
        },
        Plan {
            name: &kafka.dead_letter_topic,
            partitions: 1,
            settings: &[("cleanup.policy", "delete"), ("retention.ms", MONTH_MS)],
            why: "invalid detections with the reason, kept 30 days",
        },
        Plan {
            name: &kafka.commands_topic,
            partitions: layout.partitions,
            // An agent needs only its host's newest command: older ones it would refuse anyway.
            settings: &[("cleanup.policy", "compact")],
            why: "signed commands keyed by host, compacted to the newest per host",
        },
        Plan {
            name: &kafka.status_topic,
            partitions: layout.partitions,
            settings: &[("cleanup.policy", "compact")],
            why: "agents' reports keyed by host, compacted to the newest per host",
        },
        Plan {
            name: &kafka.lease_topic,
            partitions: 1,
            // One claim per instance id matters: the newest.
            settings: &[("cleanup.policy", "compact")],
            why: "each service's signed claim to be the active one for its instance_id",
        },
    ];
    own.into_iter().chain(inputs).collect()
}

/// Creates the topics; returns one line per topic saying what was done.
pub fn create(config: &ServiceConfig, layout: Layout) -> Result<Vec<String>> {
    let Some(brokers) = config.kafka.brokers.as_deref().filter(|b| *b != "embedded") else {
        bail!("no [kafka] brokers configured: the embedded broker creates its topics itself at start");
    };
    if layout.partitions < 1 || layout.replication < 1 {
        bail!("--partitions and --replication must be at least 1");
    }
    let mut client = ClientConfig::new();
    for (key, value) in config.kafka.client_settings()? {
        client.set(key, value);
    }
    let admin: AdminClient<DefaultClientContext> = client
        .set("bootstrap.servers", brokers)
        .create()
        .context("cannot create the Kafka admin client")?;
    let plans = plans(config, layout);
    let topics: Vec<NewTopic<'_>> = plans
        .iter()
        .map(|plan| {
            plan.settings.iter().fold(
                NewTopic::new(plan.name, plan.partitions, TopicReplication::Fixed(layout.replication)),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let results = runtime
        .block_on(admin.create_topics(&topics, &options))
        .with_context(|| format!("cannot create the topics on {brokers}"))?;
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for (plan, result) in plans.iter().zip(results) {
        match result {
            Ok(_) => {
                lines.push(format!("created {} ({} partition(s)): {}", plan.name, plan.partitions, plan.why));
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                lines.push(format!("{} exists: left as it is", plan.name));
            }
            Err((_, code)) => failures.push(format!("{}: {code}", plan.name)),
        }
    }
    if !failures.is_empty() {
        bail!("could not create every topic:\n{}", failures.join("\n"));
    }
    Ok(lines)
}
