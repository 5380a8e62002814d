//! `cordon serve`: detections from Kafka become isolations on hosts.
//!
//! One loop, the only writer of the state, over a closed set of inputs: a batch of Kafka
//! messages (detections and agents' status reports), an operator's request from the API, a
//! recurring job (resend unanswered commands, mark silent agents stale, prune the engine's
//! memory, notice changed rules), SIGHUP (reload the rules), the deadline tick, and shutdown.
//!
//! For a batch: validate each detection (invalid ones go to the dead-letter topic with the reason
//! and the original bytes), evaluate it with the rules engine, apply the decisions to the host
//! records ([`lifecycle`]), put the records, audit entries, engine state and signed commands
//! (the outbox) in sled, flush, then commit the Kafka offsets, then send the outbox. A crash at
//! any point loses nothing: uncommitted messages come again, and their events are deduplicated
//! by the engine's state and the host records; unsent commands are still in the outbox.

pub mod agents;
pub mod access;
pub mod api;
mod bootstrap;
pub mod clock;
pub mod config;
pub mod console;
mod detections;
mod events;
pub mod jobs;
pub mod lease;
pub mod lifecycle;
pub mod observe;
pub mod outbox;
pub mod profiles;
mod reader;
mod reports;
mod requests;
pub mod store;
pub mod tls;
mod trace;
mod upkeep;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use cordon_telemetry::Spans;
use opentelemetry::trace::SpanKind;
use opentelemetry::{Context as TraceContext, KeyValue};
use rdkafka::consumer::Consumer;
use tokio::sync::mpsc;

use self::api::ApiRequest;
use self::config::ServiceConfig;
use self::events::{
    CommandTooLarge, FailpointAborting, NoRulesInForce, SenderStoppedLate, Serving, ServiceFenced, ShadowRulesInForce,
    StoreStillRefusing,
};
use self::jobs::Job;
use self::lifecycle::{Effects, HostRecord};
use self::observe::Metrics;
use self::outbox::{Enqueued, Outbox, Parked};
use self::reader::{
    detection_consumer, start_reader, stop_reading, Assignment, ConsumedBatch, DetectionConsumer,
    InputRules, SharedProjection,
};
use self::store::Store;

pub use self::bootstrap::{load_rules, run_from_config};
pub use self::clock::now_ms;
use self::bootstrap::{
    api_tokens, open_store_when_there_is_room, read_signing_key, say_if_rules_do_not_fit, start_api, start_outbox,
    start_telemetry,
};

/// What the loop acts on, one at a time, in the order they come (shutdown ends the loop).
enum Input {
    /// Kafka messages (detections and agents' status reports), parsed by the reader thread.
    Batch(ConsumedBatch),
    /// An operator's request, from the API or the console.
    Request(ApiRequest),
    /// A recurring job's turn (resend, stale agents, prune, changed rules).
    Job(Job),
    /// An outbox entry the sender could not send and parked.
    Parked(Parked),
    /// SIGHUP: reload the rules.
    Hangup,
    /// The deadline tick (and, while the store refuses writes, the time to try again).
    Tick,
}

/// Everything the loop works with.
struct Service {
    config: ServiceConfig,
    /// Every rule in force (its projection parses the detections; its `allow:`s are checked
    /// against the policy).
    ruleset: rules::Ruleset,
    /// `ruleset` split: the rules that act, and the shadow rules with an engine state of their
    /// own (kept in memory: after a restart their thresholds and ceiling start afresh).
    acting: Acting,
    /// Where host tags come from besides operators' (`[rules] inventory`, `tags_from_events`),
    /// read with the rules.
    tag_sources: rules::TagSources,
    rules_fingerprint: jobs::Fingerprint,
    engine: rules::EngineState,
    store: Store,
    /// Signed commands and dead letters, sent off the loop once durable.
    outbox: Outbox,
    failpoint: Option<String>,
    /// Transitions not yet durable, hence not yet logged.
    transitions: Vec<Transition>,
    metrics: Arc<Metrics>,
    spans: Spans,
    /// Each agent's last packet counters, for the fleet totals.
    packets: HashMap<String, (u64, u64)>,
    /// When a refused status report was last said, per host.
    report_notes: cordon_telemetry::logs::OncePerMinute,
    /// How many refused reports may still be said this minute, over all hosts.
    report_budget: cordon_telemetry::logs::PerMinuteBudget,
    /// The rule set's projection, and the reader thread's copy of it.
    projection: Arc<rules::Projection>,
    /// The topic names, for span attributes (made once, not per span).
    topics: SpanTopics,
    shared_projection: SharedProjection,
    /// Set while the state store cannot be written: the loop takes no input then, only tries
    /// to write again.
    store_fault: Option<StoreFault>,
    /// Set by the lease watcher when a later start of this `instance_id` took over.
    fence: lease::Fence,
    /// Whether the fence was seen (and acted on) by the loop.
    fenced: bool,
    /// Handled batches, for the parser thread that parsed each to free (through the reader).
    handled: reader::HandledBatches,
}

/// The rules that act and the shadow rules (`shadow: true`, or all with `[rules] mode =
/// "shadow"`), each evaluated with an engine state of its own: a shadow decision never counts
/// toward a threshold or the ceiling of the rules that act. The hosts the shadow rules would
/// have isolated are theirs too (what they decide next is judged by it), kept in memory only.
struct Acting {
    live: rules::Ruleset,
    shadow: rules::Ruleset,
    shadow_engine: rules::EngineState,
    shadow_hosts: rules::HostIsolations,
}

impl Acting {
    fn of(ruleset: &rules::Ruleset, mode: config::RulesMode) -> Acting {
        let (live, shadow) = ruleset.split_shadow(mode == config::RulesMode::Shadow);
        if !shadow.is_empty() {
            ShadowRulesInForce { rule_ids: &shadow.rule_ids().collect::<Vec<_>>() }.emit();
        }
        Acting { live, shadow, shadow_engine: rules::EngineState::new(), shadow_hosts: rules::HostIsolations::new() }
    }
}

/// The state store refused a write: what the loop holds until it can write again.
struct StoreFault {
    since: std::time::Instant,
    next_attempt: std::time::Instant,
    /// The batch whose changes were not made durable (its offsets are not committed): handled
    /// again, first, once the store takes writes.
    held: Option<ConsumedBatch>,
    /// Throttles "still cannot write" to once a minute.
    still: cordon_telemetry::logs::Throttled,
}

/// How often the loop tries to write to a store that refused a write.
const STORE_RETRY_EVERY: Duration = Duration::from_secs(2);

/// Topic names as span attribute values: shared, so that a span's attributes cost no copy.
struct SpanTopics {
    detections: opentelemetry::StringValue,
    commands: opentelemetry::StringValue,
    status: opentelemetry::StringValue,
}

impl SpanTopics {
    fn of(kafka: &config::KafkaSection) -> SpanTopics {
        let shared = |name: &str| opentelemetry::StringValue::from(Arc::<str>::from(name));
        SpanTopics {
            detections: shared(&kafka.detections_topic),
            commands: shared(&kafka.commands_topic),
            status: shared(&kafka.status_topic),
        }
    }
}

/// A state change waiting to be durable before it is logged, with the ids its spans carry.
struct Transition {
    audit: lifecycle::AuditEntry,
    event_id: Option<String>,
    /// The command the change issued, or the one an agent's report answered.
    command_id: Option<String>,
    trace_id: String,
}

/// Runs the service until `shutdown` completes. `brokers` is the resolved bootstrap list.
pub async fn serve(config: ServiceConfig, brokers: &str, shutdown: impl Future<Output = ()>) -> Result<()> {
    let ruleset = load_rules(&config.rules.dir)?;
    let rules_fingerprint = jobs::Fingerprint::of(&config.rules.dir);
    tokio::pin!(shutdown);
    let Some(store) = open_store_when_there_is_room(&config.state.dir, &mut shutdown).await? else {
        return Ok(());
    };
    let engine = store.engine_state()?;
    say_if_rules_do_not_fit(&store, &ruleset);
    let signing_key = read_signing_key(&config.signing.key_file)?;
    let tokens = api_tokens(&config)?;
    let fence = lease::Fence::default();
    let lease = lease::start(&config.kafka, brokers, &signing_key, fence.clone())?;
    let (telemetry, metrics) = start_telemetry(&config, &store, &ruleset)?;
    let consumer = Arc::new(detection_consumer(&config.kafka, brokers, Arc::clone(&metrics))?);
    let (batches_tx, mut batches) = mpsc::channel::<ConsumedBatch>(1);
    let projection = Arc::new(ruleset.projection().clone());
    let shared_projection: SharedProjection = Arc::new(std::sync::Mutex::new(Arc::clone(&projection)));
    let assignment = Assignment::new(&config.consumed_topics(), fence.clone());
    let input = InputRules::of(&config);
    let (reader, handled) = start_reader(&consumer, assignment, &input, brokers, batches_tx, &shared_projection)?;
    let failpoint = std::env::var("CORDON_FAILPOINT").ok().filter(|name| !name.is_empty());
    let (outbox, sender, mut parked) =
        start_outbox(&config, &store, signing_key, brokers, &metrics, failpoint.clone(), &fence)?;
    let (requests_tx, mut requests) = mpsc::channel::<ApiRequest>(64);
    let api_state = api::ApiState::new(store.clone(), tokens, requests_tx, Arc::clone(&metrics), fence.clone());
    let (api_address, console_address) = start_api(&config, api_state).await?;
    let (jobs_tx, mut jobs) = mpsc::channel::<Job>(16);
    let scheduler = jobs::start(&config, jobs_tx).await?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;

    let topics = SpanTopics::of(&config.kafka);
    let mut service = Service {
        acting: Acting::of(&ruleset, config.rules.mode),
        tag_sources: config.rules.tag_sources()?,
        config,
        ruleset,
        rules_fingerprint,
        engine,
        store,
        outbox,
        failpoint,
        transitions: Vec::new(),
        metrics,
        spans: Spans::new(telemetry.tracer().cloned()),
        packets: HashMap::new(),
        report_notes: cordon_telemetry::logs::OncePerMinute::new(agents::MAX_REFUSAL_NOTES),
        report_budget: cordon_telemetry::logs::PerMinuteBudget::new(agents::MAX_REFUSAL_LINES_PER_MINUTE),
        projection,
        shared_projection,
        topics,
        store_fault: None,
        fence,
        fenced: false,
        handled,
    };
    service.announce(&telemetry, api_address, console_address);
    // Whatever was decided before a restart and not sent yet goes out first; overdue
    // isolations are lifted at once.
    service.handle(Input::Tick, &consumer);

    let mut tick = deadline_tick();
    let result = loop {
        // While the store refuses writes, no input that would change state is taken (it waits
        // in its channel, or in Kafka uncommitted); operators are answered at once.
        let writable = service.writable(&consumer);
        let input = tokio::select! {
            () = &mut shutdown => break Ok(()),
            Some(batch) = batches.recv(), if writable => Input::Batch(batch),
            Some(request) = requests.recv() => Input::Request(request),
            Some(job) = jobs.recv(), if writable => Input::Job(job),
            Some(parked) = parked.recv(), if writable => Input::Parked(parked),
            _ = hangup.recv() => Input::Hangup,
            _ = tick.tick() => {
                if sender.is_finished() {
                    // Only a bug ends it early: stop loudly rather than keep deciding what is never sent.
                    break Err(anyhow::anyhow!("the outbox sender stopped; commands would no longer be sent"));
                }
                Input::Tick
            }
        };
        service.handle(input, &consumer);
    };
    let mut scheduler = scheduler;
    let _ = scheduler.shutdown().await;
    stop_reading(batches, reader, consumer).await;
    let _ = tokio::task::spawn_blocking(move || lease.stop()).await;
    stop_sending(service, sender).await;
    telemetry.shutdown();
    result
}

/// Drops the loop's side of the outbox, so that the sender ends its round (bounded by the send
/// timeout) and stops; what it has not sent stays in the outbox for the next start.
async fn stop_sending(service: Service, sender: tokio::task::JoinHandle<()>) {
    drop(service);
    if tokio::time::timeout(Duration::from_secs(5), sender).await.is_err() {
        SenderStoppedLate.emit();
    }
}

/// The 100 ms tick that lifts due isolations (a late tick is not made up for by a burst).
fn deadline_tick() -> tokio::time::Interval {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

impl Service {
    /// Says what is served, once the service is ready to: operators (and tests) wait for it.
    fn announce(
        &self,
        telemetry: &cordon_telemetry::Telemetry,
        (api_address, scheme): (std::net::SocketAddr, &str),
        console_address: Option<std::net::SocketAddr>,
    ) {
        self.say_if_no_rules();
        Serving {
            telemetry: telemetry.description(),
            policy: &self.store.policy(),
            console: self
                .config
                .console
                .enabled
                .then(|| format!("{scheme}://{}", console_address.unwrap_or(api_address))),
            rules: self.ruleset.len(),
            rules_dir: &self.config.rules.dir,
            api: format!("{scheme}://{api_address}"),
        }
        .emit();
    }

    /// With no rules, says plainly what the service does: only operators isolate.
    fn say_if_no_rules(&self) {
        if self.ruleset.is_empty() {
            NoRulesInForce { rules_dir: &self.config.rules.dir }.emit();
        }
    }

    /// Crashes the process at the named point when `CORDON_FAILPOINT` names it: how the crash
    /// tests stop the service exactly between two steps, as a `kill -9` there would.
    fn failpoint(&self, name: &str) {
        if self.failpoint.as_deref() == Some(name) {
            FailpointAborting(name).emit();
            std::process::abort();
        }
    }

    /// Handles one input. The one error path: a handler fails only when the store refuses a
    /// write; then nothing since the last flush counts, the service stops taking input until it
    /// can write again, and a batch is held to be handled again first. Otherwise what was made
    /// durable goes out.
    fn handle(&mut self, input: Input, consumer: &DetectionConsumer) {
        let (result, held) = match input {
            Input::Batch(mut batch) => match self.handle_batch(consumer, &mut batch) {
                Ok(()) => {
                    // Freed by the parser that parsed it (or here, when the reader is gone).
                    let _ = self.handled.send(batch);
                    (Ok(()), None)
                }
                Err(error) => (Err(error), Some(batch)),
            },
            Input::Request(request) => (self.on_request(request), None),
            Input::Job(job) => (self.on_job(job), None),
            Input::Parked(parked) => (self.on_parked(&parked), None),
            Input::Hangup => {
                self.reload_rules("SIGHUP");
                return;
            }
            Input::Tick => {
                clock::check_for_step();
                if !self.writable(consumer) {
                    if !self.fenced {
                        self.try_to_write_again(consumer);
                    }
                    return;
                }
                (self.lift_due(now_ms()), None)
            }
        };
        match result {
            Ok(()) => self.outbox.send(),
            Err(error) => self.store_failed(&error, held),
        }
    }

    /// Whether the loop may take input that changes state: the store takes writes and no later
    /// start of this `instance_id` fenced this one.
    fn writable(&mut self, consumer: &DetectionConsumer) -> bool {
        self.store_fault.is_none() && !self.check_fence(consumer)
    }

    /// Whether a later start of this `instance_id` fenced this service; the first time, stops
    /// consuming (leaving the partitions to the twin) and says so.
    fn check_fence(&mut self, consumer: &DetectionConsumer) -> bool {
        if self.fenced {
            return true;
        }
        let Some(why) = self.fence.reason() else { return false };
        self.fenced = true;
        let _ = consumer.unassign();
        ServiceFenced { why: &why }.emit(&self.metrics);
        true
    }

    /// A write to the store failed (the only error a handler returns): nothing since the last
    /// flush counts. The service stops taking input, says so (log, `/readyz`, metrics, answers
    /// to operators) and tries to write again every [`STORE_RETRY_EVERY`]. `held`: the batch
    /// whose changes were lost, handled again first.
    fn store_failed(&mut self, error: &anyhow::Error, held: Option<ConsumedBatch>) {
        let why = format!("{error:#}");
        let now = std::time::Instant::now();
        let refused = events::StoreRefusedWrite {
            dir: &self.config.state.dir,
            error: &why,
            again: self.store_fault.is_some(),
            retry_every: STORE_RETRY_EVERY,
        };
        refused.emit(&self.metrics);
        if let Some(fault) = &mut self.store_fault {
            fault.held = held.or(fault.held.take());
            fault.next_attempt = now + STORE_RETRY_EVERY;
        } else {
            self.store_fault = Some(StoreFault {
                since: now,
                next_attempt: now + STORE_RETRY_EVERY,
                held,
                still: cordon_telemetry::logs::Throttled::new(Duration::from_mins(1)),
            });
        }
        self.store.set_fault(Some(format!("the state store cannot be written: {why}")));
    }

    /// Opens the store again (sled refuses everything after a failed write) and, if a write
    /// goes through, takes up the state it holds (what was durable), handles the held batch and
    /// goes on.
    fn try_to_write_again(&mut self, consumer: &DetectionConsumer) {
        let Some(fault) = &mut self.store_fault else { return };
        if std::time::Instant::now() < fault.next_attempt {
            return;
        }
        fault.next_attempt = std::time::Instant::now() + STORE_RETRY_EVERY;
        let reopened = self
            .store
            .reopen()
            .and_then(|()| self.store.check_writable(now_ms()))
            .and_then(|()| self.outbox.reopened())
            .and_then(|()| self.store.engine_state());
        let engine = match reopened {
            Ok(engine) => engine,
            Err(error) => {
                if let Some(repeats) = fault.still.failure("store") {
                    StoreStillRefusing { error: &error, repeats: &repeats }.emit();
                }
                return;
            }
        };
        let Some(fault) = self.store_fault.take() else { return };
        self.engine = engine;
        self.transitions.clear();
        self.store.set_fault(None);
        events::StoreWritable { after: fault.since.elapsed() }.emit(&self.metrics);
        if let Some(batch) = fault.held {
            self.handle(Input::Batch(batch), consumer);
        } else {
            self.outbox.send();
        }
    }

    /// Makes everything written so far durable, then logs the transitions it made durable (in
    /// one write: a batch can hold thousands).
    fn flush(&mut self) -> Result<()> {
        self.store.commit()?;
        self.outbox.made_durable();
        let transitions = std::mem::take(&mut self.transitions);
        if !transitions.is_empty() {
            self.metrics.show_counts(&self.store.counts());
        }
        for transition in &transitions {
            events::TransitionDurable(transition).emit();
        }
        Ok(())
    }

    /// Puts a changed record, its audit entry and its command (sealed, in the outbox); the
    /// transition is logged once durable.
    /// `trace`: the span the change belongs to, parent of the command's span.
    fn apply(
        &mut self,
        previous: Option<&HostRecord>,
        record: &mut HostRecord,
        effects: Effects,
        now: i64,
        trace: Option<&TraceContext>,
    ) -> Result<()> {
        let mut audit = effects.audit;
        let command_id = match effects.command {
            Some(action) => Some(match self.enqueue(record, action, now, trace)? {
                Enqueued::Queued { command_id } => command_id,
                Enqueued::TooLarge { command_id, reason } => {
                    // Never sent, never resent: the host shows why.
                    CommandTooLarge { host: &record.host, command_id: &command_id, reason: &reason }.emit();
                    record.command_not_sent(&command_id, &reason);
                    if let Some(audit) = &mut audit {
                        audit.why = format!("{} (command NOT sent: {reason})", audit.why);
                    }
                    command_id
                }
            }),
            None => effects.answered,
        };
        if let Some(audit) = audit {
            self.store.audit(&audit)?;
            let trace_id = trace.map(cordon_telemetry::propagation::trace_id_of).unwrap_or_default();
            // The event behind the isolation, also on the agent's and the scheduler's steps.
            let event_id = audit.event_id.clone().or_else(|| record.event_id.clone());
            self.transitions.push(Transition { audit, event_id, command_id, trace_id });
        }
        if previous != Some(record) {
            self.store.put_host(previous, record)?;
        }
        Ok(())
    }

    /// Seals the command and puts it in the outbox, with its "produce command" span when the
    /// change is traced.
    fn enqueue(
        &mut self,
        record: &HostRecord,
        action: cordon_wire::Action,
        now: i64,
        trace: Option<&TraceContext>,
    ) -> Result<Enqueued> {
        let action_name = match &action {
            cordon_wire::Action::Isolate { .. } => "isolate",
            cordon_wire::Action::Release { .. } => "release",
        };
        let produce = trace.and_then(|parent| {
            self.spans.start(
                "produce command",
                SpanKind::Producer,
                SystemTime::now(),
                parent,
                vec![
                    KeyValue::new("messaging.system", "kafka"),
                    KeyValue::new("messaging.destination.name", self.topics.commands.clone()),
                    KeyValue::new("cordon.command_id", record.command_id()),
                    KeyValue::new("cordon.generation", i64::try_from(record.generation).unwrap_or(i64::MAX)),
                    KeyValue::new("cordon.action", action_name),
                ],
            )
        });
        self.outbox.command(record, action, now, produce)
    }

    /// The sender parked a command the broker will never take: the host shows the failure and
    /// the command is not resent (an operator decides what to do).
    fn on_parked(&mut self, parked: &Parked) -> Result<()> {
        let now = now_ms();
        let Some(previous) = self.store.host(&parked.host)? else { return Ok(()) };
        let mut record = previous.clone();
        let command = parked.command_id.as_deref().unwrap_or("(unreadable)");
        if parked.generation == Some(record.generation) {
            record.command_not_sent(command, &parked.reason);
        } else {
            // An older command: the current one may still go out.
            record.last_error = Some(format!("command {command}: {}", parked.reason));
        }
        let effects = lifecycle::note(
            &mut record,
            "cordon",
            format!("command {command} parked: {}", parked.reason),
            now,
        );
        self.apply(Some(&previous), &mut record, effects, now, None)?;
        self.flush()
    }
}

/// Whether `error` comes from the state store (disk full, I/O): the batch must not be committed
/// then, and the event is not to blame.
fn is_store_fault(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.downcast_ref::<sled::Error>().is_some())
}
