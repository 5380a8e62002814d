//! Operators' requests from the API and the console: isolate, release, extend, approve, deny,
//! tag, bulk actions and the central isolation policy, each answered once it is durable.

use std::time::SystemTime;

use anyhow::Result;
use opentelemetry::trace::{SpanKind, Status as SpanStatus, TraceContextExt as _};
use opentelemetry::{Context as TraceContext, KeyValue};

use super::api::{
    ApiRequest, BulkAction, BulkOutcome, BulkRequest, NotDone, Operation, OperatorRequest, PolicyChange,
    PolicyChangeRequest,
};
use super::events::PolicyChanged;
use super::lifecycle::{self, HostRecord, IsolationPlan};
use super::{now_ms, profiles, Service};

impl Service {
    /// An operator's request from the API or the console.
    pub(super) fn on_request(&mut self, request: ApiRequest) -> Result<()> {
        match request {
            ApiRequest::Host(request) => self.on_operator(request),
            ApiRequest::Policy(request) => self.on_policy(request),
            ApiRequest::Bulk(request) => self.on_bulk(request),
        }
    }

    /// Why the loop takes no change now, if it does not: a later start fenced it, or the store
    /// cannot be written.
    pub(super) fn not_acting(&self) -> Option<NotDone> {
        if let Some(why) = self.fence.reason() {
            return Some(NotDone::Fenced(why));
        }
        self.store.fault().map(NotDone::StoreFault)
    }

    /// Carries out an operator's request, durably, and answers it; while the store cannot be
    /// written, answers at once that nothing was done.
    pub(super) fn on_operator(&mut self, request: OperatorRequest) -> Result<()> {
        if let Some(not_acting) = self.not_acting() {
            let _ = request.reply.send(Err(not_acting));
            return Ok(());
        }
        let now = now_ms();
        let outcome = self
            .carry_out(&request.host, request.operation, &request.operator, now)
            .and_then(|outcome| {
                self.store.put_engine_changes(&mut self.engine);
                outcome.is_ok().then(|| self.flush()).transpose().map(|_| outcome)
            });
        let (answer, failed) = match outcome {
            Ok(answer) => (answer, None),
            Err(error) => (Err(NotDone::StoreFault(format!("{error:#}"))), Some(error)),
        };
        // The client may have gone; the change stands either way.
        let _ = request.reply.send(answer);
        failed.map_or(Ok(()), Err)
    }

    /// Carries out one operation on one host for `operator`: its changes are staged, not yet
    /// durable. `Ok(Err(..))`: refused, nothing staged; `Err`: the store failed.
    pub(super) fn carry_out(
        &mut self,
        host: &str,
        operation: Operation,
        operator: &str,
        now: i64,
    ) -> Result<Result<HostRecord, NotDone>> {
        let previous = self.store.host(host)?;
        let mut record = previous.clone().unwrap_or_else(|| HostRecord::new(host, now));
        let operation_name = match &operation {
            Operation::Isolate { .. } => "isolate",
            Operation::Release { .. } => "release",
            Operation::Extend { .. } => "extend",
            Operation::Approve { .. } => "approve",
            Operation::Deny { .. } => "deny",
            Operation::Tags { .. } => "tags",
        };
        let trace = self.spans.start(
            "operator request",
            SpanKind::Server,
            SystemTime::now(),
            &TraceContext::new(),
            vec![
                KeyValue::new("cordon.host_id", host.to_owned()),
                KeyValue::new("cordon.operator", operator.to_owned()),
                KeyValue::new("cordon.operation", operation_name),
            ],
        );
        let policy = self.store.policy();
        let profile = policy.profile_in_force(&record.operator_tags);
        let mut retagged = false;
        let outcome = match operation {
            Operation::Isolate { isolation, reason } => {
                let plan = profile.plan_of(&isolation);
                let problems = profile.problems_with(&plan);
                if problems.is_empty() {
                    Ok(lifecycle::operator_isolate(&mut record, &plan, profile, &reason, operator, now))
                } else {
                    Err(NotDone::Invalid(problems))
                }
            }
            Operation::Release { reason } => {
                lifecycle::operator_release(&mut record, &reason, operator, now).map_err(NotDone::from)
            }
            Operation::Extend { seconds, reason } => {
                lifecycle::extend(&mut record, seconds, &reason, operator, now).map_err(NotDone::from)
            }
            Operation::Approve { reason } => {
                lifecycle::approve(&mut record, profile, &reason, operator, now).map_err(NotDone::from)
            }
            Operation::Deny { reason } => lifecycle::deny(&mut record, &reason, operator, now).map_err(NotDone::from),
            Operation::Tags { add, remove } => {
                retagged = true;
                lifecycle::set_tags(&mut record, &add, &remove, operator, now).map_err(NotDone::from).and_then(|effects| {
                    // The new tags may choose another profile for the isolation in force: it must fit.
                    let problems = lifecycle::isolation_asked(&record)
                        .map(|asked| policy.profile_in_force(&record.operator_tags).problems_with(&asked))
                        .unwrap_or_default();
                    if problems.is_empty() { Ok(effects) } else { Err(NotDone::Invalid(problems)) }
                })
            }
        };
        let outcome = match outcome {
            Ok(effects) => {
                self.apply(previous.as_ref(), &mut record, effects, now, trace.as_ref())?;
                if retagged {
                    // Other tags may choose another profile for an isolation in force.
                    let before = record.clone();
                    let profile = policy.profile_in_force(&record.operator_tags);
                    let effects = lifecycle::apply_profile(&mut record, profile, operator, now);
                    self.apply(Some(&before), &mut record, effects, now, trace.as_ref())?;
                }
                Ok(record)
            }
            Err(not_done) => {
                if let Some(trace) = &trace {
                    trace.span().set_status(SpanStatus::error(not_done.to_string()));
                }
                Err(not_done)
            }
        };
        if let Some(trace) = trace {
            trace.span().end();
        }
        Ok(outcome)
    }

    /// Carries out one operation on every host a filter selects, for an operator, in one commit:
    /// refused whole if the filter no longer selects the number of hosts the operator saw, or an
    /// isolation of more hosts than `policy.yaml`'s `max_automatic` allows at once.
    pub(super) fn on_bulk(&mut self, request: BulkRequest) -> Result<()> {
        if let Some(not_acting) = self.not_acting() {
            let _ = request.reply.send(Err(not_acting));
            return Ok(());
        }
        let result = self.carry_out_bulk(&request);
        let (answer, failed) = match result {
            Ok(answer) => (answer, None),
            Err(error) => (Err(NotDone::StoreFault(format!("{error:#}"))), Some(error)),
        };
        let _ = request.reply.send(answer);
        failed.map_or(Ok(()), Err)
    }

    pub(super) fn carry_out_bulk(&mut self, request: &BulkRequest) -> Result<Result<Vec<BulkOutcome>, NotDone>> {
        let records: Vec<HostRecord> =
            self.store.hosts()?.into_iter().filter(|r| request.filter.selects_for_action(r)).collect();
        let digest = crate::api::selection_digest(records.iter().map(|r| r.host.as_str()));
        if records.len() != request.expected_hosts || digest != request.expected_digest {
            let refused = lifecycle::Refused::BulkChanged { expected: request.expected_hosts, now: records.len() };
            return Ok(Err(refused.into()));
        }
        let isolating = matches!(request.action, BulkAction::Isolate { .. });
        let to_cut_off = records.iter().filter(|r| !r.state.may_be_isolated()).count();
        if let Some(ceiling) = self.ruleset.policy().max_automatic.filter(|c| isolating && to_cut_off > c.count as usize) {
            let refused = lifecycle::Refused::OverCeiling {
                hosts: to_cut_off,
                count: ceiling.count,
                within: rules::format_duration(ceiling.within),
            };
            return Ok(Err(refused.into()));
        }
        let now = now_ms();
        let mut outcomes = Vec::with_capacity(records.len());
        for record in records {
            let host = record.host;
            if isolating && record.state.may_be_isolated() {
                // A bulk isolation never replaces one in force: it could end a manual one, or
                // shorten a longer one. Each is changed on its own host's page.
                let why = format!("already {}: left as it is", record.state.name().replace('_', " "));
                outcomes.push(BulkOutcome { host, result: Err(why) });
                continue;
            }
            let operation = match request.action {
                BulkAction::Isolate { manual } => Operation::Isolate {
                    isolation: crate::api::CheckedIsolation { plan: IsolationPlan::default(), profile_duration: !manual },
                    reason: request.reason.clone(),
                },
                BulkAction::Release => Operation::Release { reason: request.reason.clone() },
            };
            let result = self.carry_out(&host, operation, &request.operator, now)?;
            outcomes.push(BulkOutcome { host, result: result.map(|r| r.state.name().to_owned()).map_err(|e| e.to_string()) });
        }
        self.store.put_engine_changes(&mut self.engine);
        self.flush()?;
        Ok(Ok(outcomes))
    }

    /// Validates a policy change (with the rules in force), stores it as the new version, applies
    /// it live to every isolation in force whose profile it changes, durably, and answers.
    pub(super) fn on_policy(&mut self, request: PolicyChangeRequest) -> Result<()> {
        if let Some(not_acting) = self.not_acting() {
            let _ = request.reply.send(Err(not_acting));
            return Ok(());
        }
        let current = self.store.policy();
        let prepared = match self.prepare_policy(&current, request.change, request.expected_version) {
            Ok(prepared) => prepared,
            Err(not_done) => {
                let _ = request.reply.send(Err(not_done));
                return Ok(());
            }
        };
        let (policy, reverted_from) = prepared;
        let now = now_ms();
        let version = profiles::PolicyVersion {
            version: current.version + 1,
            at_ms: now,
            author: request.author.clone(),
            reason: request.reason,
            reverted_from,
            policy,
        };
        let changes = current.policy.diff(&version.policy);
        let hosts = match self.store.hosts() {
            Ok(hosts) => hosts,
            Err(error) => {
                let _ = request.reply.send(Err(NotDone::StoreFault(format!("{error:#}"))));
                return Err(error);
            }
        };
        // Each isolation in force takes its new profile: every one must still fit the kernel.
        let problems: Vec<String> = hosts
            .iter()
            .filter_map(|record| Some((record, lifecycle::isolation_asked(record)?)))
            .flat_map(|(record, asked)| {
                let profile = version.profile_in_force(&record.operator_tags);
                profile.problems_with(&asked).into_iter().map(|problem| format!("host {}'s isolation {problem}", record.host))
            })
            .collect();
        if !problems.is_empty() {
            let _ = request.reply.send(Err(NotDone::Invalid(problems)));
            return Ok(());
        }
        let result = self.store.put_policy(version.clone()).and_then(|()| {
            let by = format!("policy version {} by {}", version.version, request.author);
            let mut updated = 0;
            for previous in hosts {
                let mut record = previous.clone();
                let profile = version.profile_in_force(&record.operator_tags);
                let effects = lifecycle::apply_profile(&mut record, profile, &by, now);
                updated += usize::from(effects.command.is_some());
                self.apply(Some(&previous), &mut record, effects, now, None)?;
            }
            self.flush()?;
            Ok(updated)
        });
        match result {
            Ok(updated) => {
                PolicyChanged { version: &version, changes: &changes, updated }.emit();
                let _ = request.reply.send(Ok(version));
                Ok(())
            }
            Err(error) => {
                let _ = request.reply.send(Err(NotDone::StoreFault(format!("{error:#}"))));
                Err(error)
            }
        }
    }

    /// The policy a change asks for (and the version it restores), checked against the version
    /// in force and the rules in force; or why it is not done.
    pub(super) fn prepare_policy(
        &self,
        current: &profiles::PolicyVersion,
        change: PolicyChange,
        expected_version: Option<u64>,
    ) -> Result<(profiles::IsolationPolicy, Option<u64>), NotDone> {
        if let Some(expected) = expected_version.filter(|expected| *expected != current.version) {
            return Err(NotDone::Refused(lifecycle::Refused::PolicyChanged { expected, current: current.version }));
        }
        let (policy, reverted_from) = match change {
            PolicyChange::Set(policy) => (policy, None),
            PolicyChange::Revert(number) => {
                let stored = self.store.policy_version(number).map_err(|error| NotDone::StoreFault(format!("{error:#}")))?;
                let Some(stored) = stored else {
                    return Err(NotDone::NotFound(format!(
                        "there is no policy version {number}; the one in force is {}",
                        current.version
                    )));
                };
                (stored.policy, Some(number))
            }
        };
        let problems = policy.problems(self.ruleset.exclusions_by_rule());
        if problems.is_empty() {
            Ok((policy, reverted_from))
        } else {
            Err(NotDone::Invalid(problems))
        }
    }
}
