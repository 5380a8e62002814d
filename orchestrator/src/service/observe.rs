//! What the service tells about itself: its metrics (Prometheus text at `/metrics`, and OTLP
//! when configured) and the spans of each decision's trace, built with explicit start and end
//! times so that a detection that decides nothing costs no span at all.

use std::sync::Arc;

use cordon_telemetry::metrics::{Counter, Family, Gauge, Histogram, Registry, LATENCY_BUCKETS};

use super::store::HostCounts;

/// Every metric `cordon serve` keeps. Labels are rule ids, modes, reasons and states: never
/// host ids (a fleet would make the series unbounded; hosts are in the API).
pub struct Metrics {
    pub registry: Registry,
    pub events_consumed: Arc<Counter>,
    pub events_invalid: Arc<Counter>,
    pub status_reports: Arc<Counter>,
    pub rule_matches: Arc<Family>,
    pub decisions: Arc<Family>,
    pub shadow_decisions: Arc<Family>,
    pub hosts_isolated: Arc<Gauge>,
    pub pending_approvals: Arc<Gauge>,
    pub hosts_by_state: Arc<Family>,
    pub stale_agents: Arc<Gauge>,
    pub lifts: Arc<Family>,
    pub lift_lateness: Arc<Histogram>,
    pub detection_to_enforced: Arc<Histogram>,
    pub consumer_lag: Arc<Gauge>,
    pub packets_dropped: Arc<Gauge>,
    pub packets_allowed: Arc<Gauge>,
    pub commands_issued: Arc<Counter>,
    pub commands_sent: Arc<Counter>,
    pub commands_refused: Arc<Family>,
    pub reports_refused: Arc<Family>,
    pub hosts_tampered: Arc<Counter>,
    pub agent_claims: Arc<Gauge>,
    pub commands_parked: Arc<Family>,
    pub outbox_waiting: Arc<Gauge>,
    pub dead_letters: Arc<Family>,
    pub events_failed: Arc<Counter>,
    pub consumer_partitions: Arc<Gauge>,
    pub kafka_brokers_up: Arc<Gauge>,
    /// 1 while the state store cannot be written (the service takes no detections then).
    pub state_store_failing: Arc<Gauge>,
    pub state_store_faults: Arc<Counter>,
    /// 1 once a later start of this `instance_id` fenced this service.
    pub fenced: Arc<Gauge>,
    pub rules_loaded: Arc<Gauge>,
}

/// A lift later than this after its deadline is late (the product's promise is 1 s).
pub const ON_TIME_MS: i64 = 1_000;

impl Metrics {
    #[allow(clippy::too_many_lines, reason = "one registration per metric, nothing else")]
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        Metrics {
            events_consumed: r.counter("cordon_events_consumed_total", "Detection messages consumed (valid or not)."),
            events_invalid: r.counter(
                "cordon_events_invalid_total",
                "Detection messages that were not valid events, sent to the dead-letter topic.",
            ),
            status_reports: r.counter("cordon_status_reports_total", "Status reports consumed from agents."),
            rule_matches: r.counter_family(
                "cordon_rule_matches_total",
                "Decisions each rule took part in (a decision names every rule that fired).",
                "rule",
            ),
            decisions: r.counter_family(
                "cordon_decisions_total",
                "Decisions of the rules by mode: automatic, manual, or approve (asked an operator).",
                "mode",
            ),
            shadow_decisions: r.counter_family(
                "cordon_shadow_decisions_total",
                "What shadow rules would have decided (recorded, never done), by rule.",
                "rule",
            ),
            hosts_isolated: r.gauge(
                "cordon_hosts_isolated",
                "Hosts isolated now, or on their way in or out of isolation (isolating, isolated, releasing).",
            ),
            pending_approvals: r.gauge("cordon_pending_approvals", "Isolations waiting for an operator's approval."),
            hosts_by_state: r.gauge_family("cordon_hosts", "Hosts by state.", "state"),
            stale_agents: r.gauge("cordon_agents_stale", "Hosts whose agent has been silent longer than allowed."),
            lifts: r.counter_family(
                "cordon_isolations_lifted_total",
                "Automatic isolations lifted at their deadline: on_time (within 1 s) or late.",
                "timing",
            ),
            lift_lateness: r.histogram(
                "cordon_lift_lateness_seconds",
                "How long after its deadline each automatic isolation was lifted.",
                LATENCY_BUCKETS,
            ),
            detection_to_enforced: r.histogram(
                "cordon_detection_to_enforced_seconds",
                "From consuming a detection to its agent's report that the isolation it decided is enforced.",
                LATENCY_BUCKETS,
            ),
            consumer_lag: r.gauge(
                "cordon_consumer_lag_messages",
                "Detection messages on the broker not yet consumed (all partitions this service reads).",
            ),
            packets_dropped: r.gauge(
                "cordon_enforcer_packets_dropped",
                "Packets dropped by isolations, summed over the last report of every agent.",
            ),
            packets_allowed: r.gauge(
                "cordon_enforcer_packets_allowed",
                "Packets let through isolations by exclusions, summed over the last report of every agent.",
            ),
            commands_issued: r.counter("cordon_commands_issued_total", "Signed commands put in the outbox."),
            commands_sent: r.counter("cordon_commands_sent_total", "Commands the broker acknowledged."),
            commands_refused: r.counter_family(
                "cordon_commands_refused_total",
                "Commands agents refused or failed to apply, by reason.",
                "reason",
            ),
            reports_refused: r.counter_family(
                "cordon_status_refused_total",
                "Status reports not applied (unsigned, forged, from an agent not enrolled, replayed, ...), by reason.",
                "reason",
            ),
            hosts_tampered: r.counter(
                "cordon_hosts_tampered_total",
                "Isolations undone on the host, not by cordon (an agent reported its host no longer isolated).",
            ),
            agent_claims: r.gauge(
                "cordon_agent_claims",
                "Hosts whose reports are signed by a key not enrolled for them, held for an operator (cordon agents).",
            ),
            commands_parked: r.counter_family(
                "cordon_commands_parked_total",
                "Commands that can never be sent (too large, refused for good by the broker), kept aside, by reason.",
                "reason",
            ),
            outbox_waiting: r.gauge(
                "cordon_outbox_waiting",
                "Commands and dead letters durable in the outbox and not yet acknowledged by the broker.",
            ),
            dead_letters: r.counter_family(
                "cordon_dead_letters_total",
                "Messages sent to the dead-letter topic, by reason: invalid, oversized, bad_host_id, failed.",
                "reason",
            ),
            events_failed: r.counter(
                "cordon_events_failed_total",
                "Valid detections whose handling failed; each was dead-lettered, never the batch.",
            ),
            consumer_partitions: r.gauge(
                "cordon_consumer_partitions",
                "Partitions the consumer holds now (0: not consuming: partitions not listed by the broker yet, or fenced).",
            ),
            kafka_brokers_up: r.gauge("cordon_kafka_brokers_up", "Kafka brokers the consumer is connected to."),
            state_store_failing: r.gauge(
                "cordon_state_store_failing",
                "1 while the state store cannot be written (disk full, I/O errors): no detections are taken.",
            ),
            fenced: r.gauge(
                "cordon_fenced",
                "1 once another cordon serve with this instance_id started later: this one no longer acts.",
            ),
            state_store_faults: r.counter(
                "cordon_state_store_faults_total",
                "Times a write to the state store failed and the service stopped taking input until it could write.",
            ),
            rules_loaded: r.gauge("cordon_rules_loaded", "Rules in force."),
            registry: r,
        }
    }

    /// Shows the store's counts in the fleet gauges.
    pub fn show_counts(&self, counts: &HostCounts) {
        let mut isolated = 0;
        for (state, count) in &counts.by_state {
            self.hosts_by_state.set(state, *count);
            if matches!(*state, "isolating" | "isolated" | "releasing") {
                isolated += count;
            }
        }
        self.hosts_isolated.set(isolated);
        self.pending_approvals.set(counts.by_state.get("pending_approval").copied().unwrap_or(0));
        self.stale_agents.set(counts.stale_agents);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every series the Grafana dashboard in ops/ queries is one the service serves.
    #[test]
    fn the_dashboard_queries_only_metrics_that_exist() {
        let path = std::path::Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test"))
            .join("../ops/grafana/cordon.json");
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read the dashboard")).expect("JSON");
        let served = Metrics::new().registry.render_prometheus();
        let mut queried = 0;
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("a PromQL expression");
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if word.starts_with("cordon_") {
                        queried += 1;
                        let series = word.trim_end_matches("_bucket");
                        assert!(
                            served.lines().any(|line| line.starts_with(&format!("# TYPE {series} "))),
                            "the dashboard queries {word}, which /metrics does not serve"
                        );
                    }
                }
            }
        }
        assert!(queried >= 15, "{queried} series queried");
    }
}
