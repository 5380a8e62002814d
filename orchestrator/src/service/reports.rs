//! Agents' status reports: each is verified against the registry of agent keys
//! ([`agents::judge`]) before it may touch a host's record; a refused report changes nothing
//! but a counter, a claim (for a key that is not enrolled) and, once a minute per host, a log
//! line and an audit entry.

use std::fmt::Write as _;
use std::time::SystemTime;

use anyhow::Result;
use cordon_wire::ReportRefusal;
use opentelemetry::trace::{SpanKind, TraceContextExt as _};
use opentelemetry::KeyValue;
use rdkafka::message::{Message, OwnedMessage};

use super::agents::{self, Claim};
use super::events::{DetectionEnforced, HostTampered, ReportRefused};
use super::lifecycle::{self, AuditEntry, HostRecord, HostState};
use super::Service;

/// Where a refused report came from, as far as cordon can tell.
struct Refused<'a> {
    /// The host it speaks for (its Kafka key until the payload is verified, then the payload's).
    host: &'a str,
    refusal: ReportRefusal,
    /// The key that signed it, when the signature verified.
    signer: Option<String>,
    /// Whether the payload's host is the Kafka key's (a claim is kept only then).
    consistent: bool,
}

impl Service {
    /// Applies an agent's report to its host's record (not yet durable), if it verifies. A
    /// report that answers a traced command continues its trace ("consume status").
    pub(super) fn on_status(&mut self, message: &OwnedMessage, now: i64) -> Result<()> {
        let payload = message.payload().unwrap_or_default();
        let kafka_host = message.key().map(String::from_utf8_lossy).unwrap_or_default();
        let kafka_host: String = kafka_host.chars().take(256).collect();
        let opened = if payload.len() > self.config.kafka.max_detection_bytes {
            Err(ReportRefusal::Oversized)
        } else {
            cordon_wire::open_report(payload)
        };
        let report = match opened {
            Ok(report) => report,
            Err(refusal) => {
                let refused = Refused { host: &kafka_host, refusal, signer: None, consistent: false };
                return self.refuse_report(&refused, now);
            }
        };
        let signer = report.signer_text();
        if crate::api::check_host_id(&report.status.host_id).is_err() {
            let refused = Refused {
                host: &kafka_host,
                refusal: ReportRefusal::InvalidContent,
                signer: Some(signer),
                consistent: false,
            };
            return self.refuse_report(&refused, now);
        }
        let host = report.status.host_id.clone();
        let previous = self.store.host(&host)?;
        let enrolled = self.store.agent(&host)?;
        let last_sent =
            previous.as_ref().and_then(|record| record.last_status.as_ref()).map(|s| s.sent_at_ms);
        if let Err(refusal) = agents::judge(&report, message.key(), enrolled.as_ref(), last_sent, now) {
            let consistent = message.key() == Some(host.as_bytes());
            return self
                .refuse_report(&Refused { host: &host, refusal, signer: Some(signer), consistent }, now);
        }
        if self.store.claim(&host)?.is_some_and(|claim| claim.key == signer) {
            // The claimed key was enrolled and now speaks: nothing is pending for this host.
            self.store.remove_claim(&host)?;
            self.metrics.agent_claims.set(i64::try_from(self.store.claims_count()).unwrap_or(i64::MAX));
        }
        self.apply_report(message, previous.as_ref(), &report.status, now)
    }

    /// Counts a refused report, keeps the key it was signed with as a claim on the host, and
    /// says so once a minute per host (log, and the audit trail of a host cordon knows).
    fn refuse_report(&mut self, refused: &Refused<'_>, now: i64) -> Result<()> {
        self.metrics.reports_refused.add(refused.refusal.name(), 1);
        let claimable = matches!(
            refused.refusal,
            ReportRefusal::UnknownAgent | ReportRefusal::WrongKey | ReportRefusal::RevokedAgent
        );
        let mut claim_note = String::new();
        if let (true, true, Some(signer)) = (claimable, refused.consistent, &refused.signer) {
            let previous = self.store.claim(refused.host)?;
            let full = previous.is_none() && self.store.claims_count() >= agents::MAX_CLAIMS;
            if full {
                claim_note = format!(
                    "; not kept as a claim: {} hosts already have one (cordon agents list)",
                    agents::MAX_CLAIMS
                );
            } else if let Some(claim) =
                Claim::noted(previous.as_ref(), refused.host, signer, refused.refusal, now)
            {
                self.store.put_claim(&claim)?;
                self.metrics.agent_claims.set(i64::try_from(self.store.claims_count()).unwrap_or(i64::MAX));
                if claim.keys_seen > 1 {
                    claim_note = format!(
                        "; {} different keys have claimed this host: someone other than its agent signs reports \
                         for it",
                        claim.keys_seen
                    );
                }
            }
            if refused.refusal != ReportRefusal::RevokedAgent {
                let _ = write!(
                    claim_note,
                    "; if {signer} is the key `cordon-enforcer keygen` prints on {0}, enroll it: cordon agents \
                     accept {0} {signer}",
                    refused.host
                );
            }
        }
        if !self.report_notes.due(refused.host, now) {
            return Ok(());
        }
        let allowance = self.report_budget.take(now);
        ReportRefused { host: refused.host, refusal: refused.refusal, claim_note: &claim_note, allowance }.emit();
        if let Some(record) = self.store.host(refused.host)? {
            let signed_by =
                refused.signer.as_deref().map(|key| format!(", signed by {key}")).unwrap_or_default();
            self.store.audit(&AuditEntry {
                at_ms: now,
                host: record.host.clone(),
                from: record.state,
                to: record.state,
                by: "status topic".into(),
                event_id: None,
                generation: record.generation,
                why: format!(
                    "refused a status report ({}): {}{signed_by}; nothing changed",
                    refused.refusal.name(),
                    refused.refusal
                ),
                shadow: false,
            })?;
        }
        Ok(())
    }

    /// Applies a verified report to its host's record.
    fn apply_report(
        &mut self,
        message: &OwnedMessage,
        previous: Option<&HostRecord>,
        status: &cordon_wire::Status,
        now: i64,
    ) -> Result<()> {
        let consume = if self.spans.enabled() {
            cordon_telemetry::propagation::context_of_message(message).and_then(|parent| {
                self.spans.start(
                    "consume status",
                    SpanKind::Consumer,
                    SystemTime::now(),
                    &parent,
                    vec![
                        KeyValue::new("messaging.system", "kafka"),
                        KeyValue::new("messaging.destination.name", self.topics.status.clone()),
                        KeyValue::new("cordon.host_id", status.host_id.clone()),
                        KeyValue::new("cordon.command_id", status.command_id.clone().unwrap_or_default()),
                        KeyValue::new(
                            "cordon.generation",
                            i64::try_from(status.generation).unwrap_or(i64::MAX),
                        ),
                        KeyValue::new("cordon.isolated", status.isolated),
                    ],
                )
            })
        } else {
            None
        };
        if status.kind == cordon_wire::StatusKind::Refused {
            let reason = status.refusal.map_or("failed", cordon_wire::Refusal::name);
            self.metrics.commands_refused.add(reason, 1);
        }
        self.count_packets(status);
        let mut record = previous.cloned().unwrap_or_else(|| HostRecord::new(&status.host_id, now));
        let effects = lifecycle::on_status(&mut record, status, now, self.config.agents.on_tamper);
        let newly_tampered = previous.is_none_or(|p| p.tampered != record.tampered);
        if let Some(tampering) = record.tampered.as_ref().filter(|_| newly_tampered) {
            HostTampered { host: &record.host, tampering }.emit(&self.metrics);
        }
        if record.state == HostState::Isolated && previous.is_some_and(|p| p.state == HostState::Isolating) {
            if let Some(detected_at_ms) = record.detected_at_ms {
                DetectionEnforced { detected_at_ms, enforced_at_ms: now }.emit(&self.metrics);
            }
        }
        self.apply(previous, &mut record, effects, now, consume.as_ref())?;
        if let Some(consume) = consume {
            consume.span().set_attribute(KeyValue::new("cordon.state", record.state.name()));
            consume.span().end();
        }
        Ok(())
    }

    /// Keeps the fleet's packet totals: the sum of every agent's last report.
    fn count_packets(&mut self, status: &cordon_wire::Status) {
        let now = (status.packets_dropped, status.packets_allowed);
        let before = self.packets.insert(status.host_id.clone(), now).unwrap_or((0, 0));
        let delta = |after: u64, before: u64| {
            i64::try_from(after).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX)
        };
        self.metrics.packets_dropped.add(delta(now.0, before.0));
        self.metrics.packets_allowed.add(delta(now.1, before.1));
    }
}
