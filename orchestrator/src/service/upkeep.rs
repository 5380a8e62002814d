//! The loop's own work: lifting isolations whose deadline passed, the recurring jobs (resend
//! unanswered commands, mark silent agents stale, prune the engine's memory, notice changed
//! rules) and reloading the rules.

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{bail, Result};
use opentelemetry::trace::{SpanKind, TraceContextExt as _};
use opentelemetry::{Context as TraceContext, KeyValue};

use super::events::{CommandResent, RetentionApplied, RulesNotReloaded, RulesReloaded};
use super::jobs::{self, Job};
use super::outbox::Enqueued;
use super::{lifecycle, load_rules, now_ms, observe, Acting, Service};

impl Service {
    /// Issues a release for every automatic isolation whose deadline has passed.
    pub(super) fn lift_due(&mut self, now: i64) -> Result<()> {
        let due = self.store.due(now)?;
        if due.is_empty() {
            return Ok(());
        }
        for host in due {
            let Some(previous) = self.store.host(&host)? else { continue };
            // The index answers for the records; the record, not the index, decides a release.
            let Some(deadline) = previous.deadline_in_force().filter(|deadline| *deadline <= now) else { continue };
            let late_ms = now - deadline;
            self.metrics.lifts.add(if late_ms <= observe::ON_TIME_MS { "on_time" } else { "late" }, 1);
            #[allow(clippy::cast_precision_loss, reason = "milliseconds of lateness")]
            self.metrics.lift_lateness.observe(late_ms as f64 / 1e3);
            let trace = self.spans.start(
                "deadline reached",
                SpanKind::Internal,
                SystemTime::now(),
                &TraceContext::new(),
                vec![
                    KeyValue::new("cordon.host_id", host.clone()),
                    KeyValue::new("cordon.deadline_ms", deadline),
                ],
            );
            let mut record = previous.clone();
            let effects = lifecycle::deadline_reached(&mut record, now);
            self.apply(Some(&previous), &mut record, effects, now, trace.as_ref())?;
            if let Some(trace) = trace {
                trace.span().end();
            }
        }
        self.store.put_engine_changes(&mut self.engine);
        self.flush()
    }

    pub(super) fn on_job(&mut self, job: Job) -> Result<()> {
        let now = now_ms();
        match job {
            Job::Reconcile => {
                let after_ms = i64::try_from(self.config.agents.resend_after_seconds).unwrap_or(15) * 1_000;
                // Only the hosts whose last command awaits an answer (indexed): not every record.
                for host in self.store.awaiting_answer()? {
                    let Some(previous) = self.store.host(&host)? else { continue };
                    let mut record = previous.clone();
                    if let Some(action) = lifecycle::resend_due(&mut record, after_ms, now) {
                        CommandResent { record: &record }.emit();
                        if let Enqueued::TooLarge { command_id, reason } =
                            self.enqueue(&record, action, now, None)?
                        {
                            record.command_not_sent(&command_id, &reason);
                        }
                        self.store.put_host(Some(&previous), &record)?;
                    }
                }
            }
            Job::MarkStale => {
                let after_ms = i64::try_from(self.config.agents.stale_after_seconds).unwrap_or(90) * 1_000;
                // Only the agents silent for longer than allowed (indexed): not every record.
                for host in self.store.heard_from_before(now.saturating_sub(after_ms))? {
                    let Some(previous) = self.store.host(&host)? else { continue };
                    let mut record = previous.clone();
                    let effects = lifecycle::check_stale(&mut record, after_ms, now);
                    self.apply(Some(&previous), &mut record, effects, now, None)?;
                }
            }
            Job::Prune => {
                let window_ms = self.ruleset_ceiling_window_ms();
                self.engine.prune(now, window_ms);
                self.acting.shadow_engine.prune(now, window_ms);
                self.acting.shadow_hosts.prune(now);
                self.store.put_engine_changes(&mut self.engine);
            }
            Job::Retention => {
                let outcome = self.store.apply_retention(&self.config.state.retention(), now)?;
                RetentionApplied(outcome).emit();
            }
            Job::CheckRules => {
                let fingerprint = jobs::Fingerprint::of(&self.config.rules.dir);
                if fingerprint != self.rules_fingerprint {
                    self.rules_fingerprint = fingerprint;
                    self.reload_rules("a change in the rules directory");
                }
            }
        }
        self.flush()
    }

    pub(super) fn ruleset_ceiling_window_ms(&self) -> i64 {
        self.ruleset
            .policy()
            .max_automatic
            .map_or(0, |ceiling| i64::try_from(ceiling.within.as_millis()).unwrap_or(i64::MAX))
    }

    /// Loads the rules again; a set that does not validate, or whose `allow:` would not fit an
    /// agent's kernel tables with a profile of the policy in force, is refused and the running
    /// one stays.
    pub(super) fn reload_rules(&mut self, why: &str) {
        let loaded = load_rules(&self.config.rules.dir).and_then(|ruleset| {
            let tag_sources = self.config.rules.tag_sources()?;
            let problems = self.store.policy().policy.problems(ruleset.exclusions_by_rule());
            if problems.is_empty() {
                Ok((ruleset, tag_sources))
            } else {
                bail!(
                    "with the isolation policy in force (version {}), these rules would not fit an agent's kernel \
                     tables:\n{}",
                    self.store.policy().version,
                    problems.join("\n")
                )
            }
        });
        match loaded {
            Ok((ruleset, tag_sources)) => {
                RulesReloaded { why, rules: ruleset.len(), dir: &self.config.rules.dir }.emit(&self.metrics);
                self.projection = Arc::new(ruleset.projection().clone());
                *self.shared_projection.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Arc::clone(&self.projection);
                self.acting = Acting::of(&ruleset, self.config.rules.mode);
                self.tag_sources = tag_sources;
                self.ruleset = ruleset;
                self.say_if_no_rules();
            }
            Err(error) => RulesNotReloaded { why, running: self.ruleset.len(), error: &error }.emit(),
        }
    }
}
