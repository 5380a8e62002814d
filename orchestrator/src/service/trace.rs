//! The trace of a detection that decides something, continuing the producer's trace when its
//! message carries one: consume detection -> evaluate rules -> decide (one per decision) ->
//! produce command (the outbox's). Built only while traces are exported, with explicit times.

use std::time::SystemTime;

use cordon_telemetry::Spans;
use opentelemetry::trace::{SpanKind, TraceContextExt as _};
use opentelemetry::{Context as TraceContext, KeyValue};
use rdkafka::message::{Message, OwnedMessage};

use super::lifecycle::HostRecord;

/// The "consume detection" span of one detection; "evaluate rules" under it is ended at once.
pub(super) struct DetectionTrace {
    consume: TraceContext,
}

/// Where a detection came from and what its evaluation found, for its trace.
pub(super) struct Consumed<'a> {
    /// Shared, not copied per span.
    pub topic: &'a opentelemetry::StringValue,
    pub message: &'a OwnedMessage,
    pub event: &'a rules::Event,
    /// When the reader took the message's batch.
    pub received_at: SystemTime,
    /// When the evaluation began.
    pub evaluating_since: SystemTime,
    pub decisions: &'a [rules::Decision],
    /// The producer's trace, from the message's headers.
    pub parent: Option<&'a TraceContext>,
}

impl DetectionTrace {
    pub fn start(spans: &Spans, consumed: &Consumed<'_>) -> Option<DetectionTrace> {
        let Consumed { topic, message, event, received_at, evaluating_since, decisions, parent } = consumed;
        let consume = spans.start(
            "consume detection",
            SpanKind::Consumer,
            *received_at,
            parent.unwrap_or(&TraceContext::new()),
            vec![
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.destination.name", (*topic).clone()),
                KeyValue::new("messaging.kafka.partition", i64::from(message.partition())),
                KeyValue::new("messaging.kafka.offset", message.offset()),
                KeyValue::new("cordon.event_id", event.id().to_owned()),
                KeyValue::new("cordon.host_id", event.host().to_owned()),
            ],
        )?;
        let rule_ids: Vec<opentelemetry::StringValue> =
            decisions.iter().flat_map(|d| d.rules.iter().cloned().map(Into::into)).collect();
        if let Some(evaluate) = spans.start(
            "evaluate rules",
            SpanKind::Internal,
            *evaluating_since,
            &consume,
            vec![
                KeyValue::new("cordon.rule_ids", opentelemetry::Value::Array(rule_ids.into())),
                KeyValue::new("cordon.decisions", i64::try_from(decisions.len()).unwrap_or(i64::MAX)),
            ],
        ) {
            evaluate.span().end();
        }
        Some(DetectionTrace { consume })
    }

    /// The "decide" span of one of the detection's decisions, started now.
    pub fn decide(&self, spans: &Spans, decision: &rules::Decision, mode: &'static str) -> Option<DecisionTrace> {
        spans
            .start(
                "decide",
                SpanKind::Internal,
                SystemTime::now(),
                &self.consume,
                vec![
                    KeyValue::new("cordon.host_id", decision.host.clone()),
                    KeyValue::new("cordon.rule_ids", decision.rules.join(",")),
                    KeyValue::new("cordon.decision", decision.action.name()),
                    KeyValue::new("cordon.mode", mode),
                ],
            )
            .map(DecisionTrace)
    }

    pub fn end(self) {
        self.consume.span().end();
    }
}

/// The "decide" span of one decision: the parent of the command it produces.
pub(super) struct DecisionTrace(TraceContext);

impl DecisionTrace {
    pub fn context(&self) -> &TraceContext {
        &self.0
    }

    /// Ends it with what the decision made of the host.
    pub fn end(self, record: &HostRecord) {
        let span = self.0.span();
        span.set_attribute(KeyValue::new("cordon.state", record.state.name()));
        span.set_attribute(KeyValue::new("cordon.generation", i64::try_from(record.generation).unwrap_or(i64::MAX)));
        span.end();
    }
}
