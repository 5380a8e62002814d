//! Handling a batch of Kafka messages: each detection evaluated and its decisions applied to the
//! hosts' records, invalid ones dead-lettered with the reason, agents' reports verified
//! ([`super::reports`]); everything durable in one commit, then the offsets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{bail, Result};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use super::events::{DecisionMade, DetectionFailed, EventDeadLettered, OffsetsNotCommitted};
use super::lifecycle::{self, HostRecord, IsolationPlan};
use super::outbox::DeadLetterKind;
use super::reader::{ConsumedBatch, DetectionConsumer, InputRules};
use super::trace::{Consumed, DecisionTrace, DetectionTrace};
use super::{is_store_fault, now_ms, Acting, Service, Transition};

impl Service {
    /// Handles a batch of messages, makes every change durable, then commits their offsets. One
    /// message never stops the batch: an invalid or oversized one, or one whose handling fails,
    /// is dead-lettered and the rest go on. Only a store that cannot be written fails the batch
    /// (nothing of it is committed then).
    pub(super) fn handle_batch(&mut self, consumer: &DetectionConsumer, batch: &mut ConsumedBatch) -> Result<()> {
        if !Arc::ptr_eq(&batch.projection, &self.projection) {
            batch.parse_again(&InputRules::of(&self.config), &self.projection);
        }
        let now = now_ms();
        let (mut detections, mut invalid, mut reports) = (0, 0, 0);
        for (message, event) in batch.messages.iter().zip(&batch.events) {
            match event {
                None => {
                    reports += 1;
                    self.on_status(message, now)?;
                }
                Some(Ok(event)) => {
                    detections += 1;
                    if let Err(error) = self.on_detection(message, event, now, batch.received_at) {
                        if is_store_fault(&error) {
                            return Err(error);
                        }
                        // The host's record did not change: it is not isolated for this event.
                        DetectionFailed { event_id: event.id(), host: event.host(), error: &error }
                            .emit(&self.metrics);
                        self.dead_letter(
                            message,
                            DeadLetterKind::Failed,
                            &format!("cannot be handled: {error:#}"),
                        )?;
                    }
                }
                Some(Err((kind, reason))) => {
                    invalid += 1;
                    self.dead_letter(message, *kind, reason)?;
                }
            }
        }
        self.metrics.events_consumed.add(detections + invalid);
        self.metrics.events_invalid.add(invalid);
        self.metrics.status_reports.add(reports);
        self.store.put_engine_changes(&mut self.engine);
        self.failpoint("before-flush");
        self.flush()?;
        self.failpoint("after-flush");
        // A handful of partitions, thousands of messages: no hashing of the topic's name per message.
        let mut offsets: BTreeMap<(i32, &str), i64> = BTreeMap::new();
        for message in &batch.messages {
            let next = offsets.entry((message.partition(), message.topic())).or_insert(0);
            *next = (*next).max(message.offset() + 1);
        }
        let mut list = TopicPartitionList::new();
        for ((partition, topic), offset) in offsets {
            list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        }
        if let Err(error) = consumer.commit(&list, CommitMode::Async) {
            OffsetsNotCommitted { error: &error }.emit();
        }
        self.failpoint("after-commit");
        Ok(())
    }

    /// Puts a dead letter for an event in the outbox (durable with the batch, sent after it):
    /// the reason, its size and hash, and as much of its bytes as fits.
    pub(super) fn dead_letter(&mut self, message: &OwnedMessage, kind: DeadLetterKind, reason: &str) -> Result<()> {
        self.outbox.dead_letter(message, kind, reason)?;
        EventDeadLettered { message, reason }.emit();
        Ok(())
    }

    /// Evaluates one valid event and applies its decisions (not yet durable). An event that
    /// decides something gets a trace (continuing the producer's, if its message carries one):
    /// consume -> evaluate -> decide -> produce command.
    pub(super) fn on_detection(
        &mut self,
        message: &OwnedMessage,
        event: &rules::Event,
        now: i64,
        received_at: SystemTime,
    ) -> Result<()> {
        let evaluating_since = self.spans.enabled().then(SystemTime::now);
        // Most events no rule can match: their host's isolation and tags are not looked up.
        let screened = rules::screen(&self.acting.live, &mut self.engine, event);
        let mut decisions = Vec::new();
        if screened.is_some() || !self.acting.shadow.is_empty() {
            let known = self.store.for_rules(event.host())?;
            let (trusted_tags, isolation) = match known.as_deref() {
                Some(known) => (&known.operator_tags[..], known.isolation.as_ref()),
                None => (&[][..], None),
            };
            let tags = self.tag_sources.tags_for(event, trusted_tags);
            if let Some(screened) = screened {
                decisions = screened.decide(&mut self.engine, isolation, now, &tags);
            }
            self.on_shadow_decisions(event, now, &tags)?;
        }
        if let Some(failing) = self.failpoint.as_deref().and_then(|name| name.strip_prefix("fail-event:")) {
            // CORDON_FAILPOINT=fail-event:ID: handling event ID fails after its evaluation, as
            // an unexpected error there would (the tests of the per-event failure path).
            if event.id() == failing {
                bail!("failpoint fail-event: handling event {failing} fails after its evaluation");
            }
        }
        let parent = if self.spans.enabled() {
            cordon_telemetry::propagation::context_of_message(message)
        } else {
            None
        };
        if decisions.is_empty() && parent.is_none() {
            return Ok(());
        }
        let trace = evaluating_since.and_then(|evaluating_since| {
            let consumed = Consumed {
                topic: &self.topics.detections,
                message,
                event,
                received_at,
                evaluating_since,
                decisions: &decisions,
                parent: parent.as_ref(),
            };
            DetectionTrace::start(&self.spans, &consumed)
        });
        for decision in &decisions {
            let made = DecisionMade::of(decision);
            made.emit(&self.metrics);
            let decide = trace.as_ref().and_then(|trace| trace.decide(&self.spans, decision, made.mode));
            let previous = self.store.host(&decision.host)?;
            let mut record = previous.clone().unwrap_or_else(|| HostRecord::new(&decision.host, now));
            let policy = self.store.policy();
            let profile = policy.profile_in_force(&record.operator_tags);
            // On cordon's clock, like `now` (see clock.rs).
            let waited = received_at.elapsed().unwrap_or_default().as_millis();
            let consumed_at_ms = now.saturating_sub(i64::try_from(waited).unwrap_or(0));
            let effects = lifecycle::on_decision(&mut record, decision, profile, consumed_at_ms, now);
            self.apply(previous.as_ref(), &mut record, effects, now, decide.as_ref().map(DecisionTrace::context))?;
            if let Some(decide) = decide {
                decide.end(&record);
            }
        }
        if let Some(trace) = trace {
            trace.end();
        }
        Ok(())
    }

    /// Evaluates `event` with the shadow rules: what each would have decided goes into the
    /// host's audit trail, the metrics and the log (through the pipeline's every step: dedup,
    /// thresholds, escalation, protection, the ceiling, and the kernel fit with the host's
    /// profile); no command, no change of the host.
    pub(super) fn on_shadow_decisions(&mut self, event: &rules::Event, now: i64, tags: &[String]) -> Result<()> {
        if self.acting.shadow.is_empty() {
            return Ok(());
        }
        let Acting { shadow, shadow_engine, shadow_hosts, .. } = &mut self.acting;
        let decisions = shadow_hosts.evaluate(shadow, shadow_engine, event, now, tags);
        for decision in &decisions {
            let record = self.store.host(&decision.host)?;
            let policy = self.store.policy();
            let profile = policy.profile_in_force(record.as_ref().map_or(&[][..], |r| &r.operator_tags));
            let fits = profile.problems_with(&IsolationPlan::from_rules(decision.action.isolation()));
            let audit = lifecycle::shadow_note(record.as_ref(), decision, &fits, now);
            for rule in &decision.rules {
                self.metrics.shadow_decisions.add(rule, 1);
            }
            self.store.audit(&audit)?;
            let event_id = audit.event_id.clone();
            self.transitions.push(Transition { audit, event_id, command_id: None, trace_id: String::new() });
        }
        Ok(())
    }
}
