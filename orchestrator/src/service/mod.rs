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
pub mod clock;
pub mod config;
pub mod console;
pub mod jobs;
pub mod lease;
pub mod lifecycle;
pub mod observe;
pub mod outbox;
pub mod profiles;
mod reports;
pub mod store;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use cordon_telemetry::Spans;
use opentelemetry::trace::{SpanKind, Status as SpanStatus, TraceContextExt as _};
use opentelemetry::{Context as TraceContext, KeyValue};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use self::api::{
    ApiRequest, BulkAction, BulkOutcome, BulkRequest, NotDone, Operation, OperatorRequest, PolicyChange,
    PolicyChangeRequest,
};
use self::config::ServiceConfig;
use self::jobs::Job;
use self::lifecycle::{Effects, HostRecord, HostState, IsolationPlan};
use self::observe::Metrics;
use self::outbox::{DeadLetterKind, Enqueued, Outbox, Parked};
use self::store::Store;

pub use self::clock::now_ms;

/// The consumer's context: reads librdkafka's statistics into the consumer-lag and brokers-up
/// metrics, and says what the client logs.
struct GroupLog {
    metrics: Arc<Metrics>,
    detections_topic: String,
    client_log: cordon_telemetry::logs::KafkaClientLog,
}

impl ClientContext for GroupLog {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.client_log.say(level as i32, facility, message);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let up = statistics.brokers.values().filter(|b| b.nodeid >= 0 && b.state == "UP").count();
        self.metrics.kafka_brokers_up.set(i64::try_from(up).unwrap_or(i64::MAX));
        if let Some(topic) = statistics.topics.get(&self.detections_topic) {
            // -1: not known yet (no offset or no watermark for the partition).
            let lag: i64 =
                topic.partitions.values().filter(|p| p.partition >= 0).map(|p| p.consumer_lag.max(0)).sum();
            self.metrics.consumer_lag.set(lag);
        }
    }
}

impl ConsumerContext for GroupLog {}

type DetectionConsumer = BaseConsumer<GroupLog>;

/// At most this many Kafka messages are handled per durable write.
const MAX_BATCH: usize = 5_000;

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
}

/// The rules that act and the shadow rules (`shadow: true`, or all with `[rules] mode =
/// "shadow"`), each evaluated with an engine state of its own: a shadow decision never counts
/// toward a threshold or the ceiling of the rules that act.
struct Acting {
    live: rules::Ruleset,
    shadow: rules::Ruleset,
    shadow_engine: rules::EngineState,
}

impl Acting {
    fn of(ruleset: &rules::Ruleset, mode: config::RulesMode) -> Acting {
        let (live, shadow) = ruleset.split_shadow(mode == config::RulesMode::Shadow);
        if !shadow.is_empty() {
            tracing::info!(
                "{} shadow rule(s) ({}): what they decide is recorded, never done.",
                shadow.len(),
                shadow.rule_ids().collect::<Vec<_>>().join(", ")
            );
        }
        Acting { live, shadow, shadow_engine: rules::EngineState::default() }
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

/// The projection the reader thread parses detections through; the loop replaces it when the
/// rules change.
type SharedProjection = Arc<std::sync::Mutex<Arc<rules::Projection>>>;

/// A state change waiting to be durable before it is logged, with the ids its spans carry.
struct Transition {
    audit: lifecycle::AuditEntry,
    event_id: Option<String>,
    /// The command the change issued, or the one an agent's report answered.
    command_id: Option<String>,
    trace_id: String,
}

/// Loads the rules directory; every problem is reported at once. A directory without rule files
/// is an empty rule set: a site that isolates only by hand runs that way.
pub fn load_rules(dir: &std::path::Path) -> Result<rules::Ruleset> {
    let (rule_files, policy) = crate::rules_cli::read_directory(dir)?;
    match rules::RuleDirectory::load(&rule_files, policy.as_ref()) {
        Ok(directory) => Ok(directory.ruleset().clone()),
        Err(diagnostics) => {
            let listed: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
            bail!("the rules in {} do not validate:\n{}", dir.display(), listed.join("\n"))
        }
    }
}

/// `cordon serve --config FILE`: resolves the brokers (starting the embedded one when none are
/// configured) and runs until Ctrl-C or SIGTERM.
pub fn run_from_config(path: &std::path::Path) -> Result<()> {
    let config = ServiceConfig::load(path)?;
    let log_format =
        cordon_telemetry::logs::format_from_env(config.telemetry.log_format).map_err(anyhow::Error::msg)?;
    cordon_telemetry::logs::init(log_format);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let embedded;
        let brokers = match config.kafka.brokers.as_deref() {
            None | Some("embedded") => {
                if config.kafka.tls.is_some() || config.kafka.sasl.is_some() {
                    bail!("the embedded broker speaks plaintext only: [kafka.tls] and [kafka.sasl] need [kafka] brokers");
                }
                embedded = rdkafka::mocking::MockCluster::new(1).context("cannot start the embedded broker")?;
                let alert_topics: Vec<String> = config.alert_topics().into_iter().map(|(topic, _)| topic).collect();
                for topic in alert_topics.iter().chain([
                    &config.kafka.dead_letter_topic,
                    &config.kafka.commands_topic,
                    &config.kafka.status_topic,
                ]) {
                    embedded.create_topic(topic, 3, 1).with_context(|| format!("cannot create topic {topic}"))?;
                }
                let lease = &config.kafka.lease_topic;
                embedded.create_topic(lease, 1, 1).with_context(|| format!("cannot create topic {lease}"))?;
                let brokers = embedded.bootstrap_servers();
                tracing::warn!(
                    "no brokers configured: embedded Kafka-protocol broker at {brokers}. It keeps nothing across \
                     restarts; configure [kafka] brokers for production."
                );
                brokers
            }
            Some(brokers) => brokers.to_owned(),
        };
        serve(config, &brokers, shutdown_signal()).await
    })
}

/// Completes on Ctrl-C or SIGTERM (systemd and Kubernetes stop services with SIGTERM).
async fn shutdown_signal() {
    let Ok(mut terminate) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// `cordon keygen --out DIR`: a new Ed25519 key pair for signing commands.
pub fn keygen(dir: &std::path::Path) -> Result<()> {
    let key = cordon_wire::generate_signing_key();
    let secret = dir.join("signing.key");
    write_secret(&secret, &cordon_wire::key_to_base64(&key.to_bytes()))
        .with_context(|| format!("cannot create {} (it must not exist yet)", secret.display()))?;
    std::fs::write(
        dir.join("signing.pub"),
        format!("{}\n", cordon_wire::key_to_base64(key.verifying_key().as_bytes())),
    )
    .with_context(|| format!("cannot write {}/signing.pub", dir.display()))?;
    Ok(())
}

/// Creates `path` (and its directory) readable by its owner only; fails if it exists.
fn write_secret(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    writeln!(file, "{text}")?;
    Ok(())
}

/// Who may use the API: the tokens of `[api] tokens_file`, or else the one shared token.
fn api_tokens(config: &ServiceConfig) -> Result<access::Tokens> {
    let Some(path) = &config.api.tokens_file else { return Ok(access::Tokens::shared(&api_token(config)?)) };
    if config.api.token_file.is_some() {
        bail!("[api] sets both token_file and tokens_file: choose one (tokens_file names each operator and role)");
    }
    access::check_not_writable_by_others(path, "the API tokens file")?;
    access::Tokens::load(path)
}

/// The shared API token: from `[api] token_file`, or created in the state directory on first
/// start; readable by its owner only.
fn api_token(config: &ServiceConfig) -> Result<String> {
    let path = if let Some(path) = &config.api.token_file {
        path.clone()
    } else {
        let path = config.state.dir.join("api-token");
        if !path.exists() {
            let token = cordon_wire::key_to_base64(&cordon_wire::generate_signing_key().to_bytes());
            write_secret(&path, &token).with_context(|| format!("cannot create {}", path.display()))?;
            tracing::info!("created an API token in {} (readable by its owner only).", path.display());
        }
        path
    };
    access::check_private(&path, "the API token file")?;
    let token = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the API token file {}", path.display()))?;
    let token = token.trim().to_owned();
    if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!(
            "the API token in {} must be at least 16 characters with no spaces (e.g. `head -c 32 /dev/urandom | \
             base64 > {}`)",
            path.display(),
            path.display()
        );
    }
    Ok(token)
}

/// Serves the operator API on `[api] listen`, and the console there or on `[console] listen`,
/// each in a task of its own; returns the API's address and scheme (and the console's address,
/// when it has its own).
async fn start_api(
    config: &ServiceConfig,
    state: api::ApiState,
) -> Result<((std::net::SocketAddr, &'static str), Option<std::net::SocketAddr>)> {
    let section = &config.api;
    let tls = match (&section.tls_cert_file, &section.tls_key_file) {
        (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
        (None, None) => None,
        _ => bail!("[api] needs both tls_cert_file and tls_key_file, or neither"),
    };
    let console = config.console.enabled.then(|| console::ConsoleOptions {
        secure_cookies: tls.is_some(),
        session_minutes: config.console.session_minutes,
        shared_token: config.api.tokens_file.is_none(),
    });
    let mut app = api::routes(state.clone());
    let mut console_address = None;
    if let Some(options) = console {
        let routes = console::router(state, options)
            .layer(axum::extract::DefaultBodyLimit::max(crate::api::MAX_BODY_BYTES));
        match &config.console.listen {
            None => app = app.merge(routes),
            Some(listen) => console_address = Some(serve_on(listen, "[console] listen", routes, tls.clone()).await?),
        }
    }
    let address = serve_on(&section.listen, "[api] listen", app, tls.clone()).await?;
    Ok(((address, if tls.is_some() { "https" } else { "http" }), console_address))
}

/// Serves `app` on `listen` (over TLS with `tls`) in a task of its own; returns the address.
async fn serve_on(
    listen: &str,
    setting: &str,
    app: axum::Router,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
) -> Result<std::net::SocketAddr> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen} ({setting})"))?;
    let address = listener.local_addr()?;
    let app = app.into_make_service_with_connect_info::<tls::Peer>();
    if let Some(tls) = tls {
        let listener = tls::TlsListener::new(listener, tls)?;
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!("the server on {address} stopped: {error}");
            }
        });
    } else {
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!("the server on {address} stopped: {error}");
            }
        });
    }
    Ok(address)
}

/// The consumer of detections and agents' reports. It joins no group: the reader assigns it
/// every partition of both topics itself ([`Assignment`]), and commits offsets under the group
/// id. One service per `instance_id` acts (the lease), so the group's balancing is not needed,
/// and without it a restart reads at once: no rebalance, no wait for a crashed predecessor's
/// session to expire, and none of the group protocol's faults (on tansu 0.6, static membership
/// could lose the group for good after a crash loop, and dynamic membership gave a restart an
/// empty assignment until its dead predecessor expired; both found by the chaos soak, shown by
/// `a_service_killed_twenty_times_at_random_moments_takes_its_partitions_back`).
fn detection_consumer(
    kafka: &config::KafkaSection,
    brokers: &str,
    metrics: Arc<Metrics>,
) -> Result<DetectionConsumer> {
    let mut client = ClientConfig::new();
    for (key, value) in kafka.client_settings()? {
        client.set(key, value);
    }
    let consumer: DetectionConsumer = client
        .set("bootstrap.servers", brokers)
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", kafka.fetch_wait_ms.to_string())
        // Consumer lag and broker connections for the metrics and /readyz.
        .set("statistics.interval.ms", "2000")
        .create_with_context(GroupLog {
            metrics,
            detections_topic: kafka.detections_topic.clone(),
            client_log: cordon_telemetry::logs::KafkaClientLog::default(),
        })
        .context("cannot create the Kafka consumer")?;
    Ok(consumer)
}

/// The OTLP exporters (if configured) and the metrics, showing the state as it is now.
fn start_telemetry(
    config: &ServiceConfig,
    store: &Store,
    ruleset: &rules::Ruleset,
) -> Result<(cordon_telemetry::Telemetry, Arc<Metrics>)> {
    let telemetry = cordon_telemetry::Telemetry::start("cordon", &config.telemetry, true)?;
    let metrics = Arc::new(Metrics::new());
    if let Some(meter) = telemetry.meter("cordon") {
        metrics.registry.export_to(&meter);
    }
    metrics.show_counts(&store.counts());
    metrics.agent_claims.set(i64::try_from(store.claims_count()).unwrap_or(i64::MAX));
    metrics.rules_loaded.set(i64::try_from(ruleset.len()).unwrap_or(i64::MAX));
    Ok((telemetry, metrics))
}

/// Starts the reader thread (see [`read_batches`]).
fn start_reader(
    consumer: &Arc<DetectionConsumer>,
    assignment: Assignment,
    input: InputRules,
    brokers: &str,
    batches: mpsc::Sender<ConsumedBatch>,
    projection: &SharedProjection,
) -> Result<std::thread::JoinHandle<()>> {
    let (consumer, brokers, projection) = (Arc::clone(consumer), brokers.to_owned(), Arc::clone(projection));
    std::thread::Builder::new()
        .name("cordon-reader".into())
        .spawn(move || read_batches(&consumer, assignment, &input, &brokers, &batches, &projection))
        .context("cannot start the Kafka reader thread")
}

/// What the reader needs to tell detections from reports, read each topic's alert format and
/// refuse what is too large.
#[derive(Clone)]
struct InputRules {
    status_topic: String,
    /// The alert format of each alert topic (`[kafka] detections_topic` and `[[inputs]]`).
    formats: HashMap<String, rules::Format>,
    /// A detection larger than this is not parsed.
    max_detection_bytes: usize,
}

impl InputRules {
    fn of(config: &ServiceConfig) -> InputRules {
        InputRules {
            status_topic: config.kafka.status_topic.clone(),
            formats: config.alert_topics().into_iter().collect(),
            max_detection_bytes: config.kafka.max_detection_bytes,
        }
    }
}

/// The outbox and its sender task (started), and the channel the sender tells about parked
/// entries on.
fn start_outbox(
    config: &ServiceConfig,
    store: &Store,
    signing_key: cordon_wire::SigningKey,
    brokers: &str,
    metrics: &Arc<Metrics>,
    failpoint: Option<String>,
    fence: &lease::Fence,
) -> Result<(Outbox, tokio::task::JoinHandle<()>, mpsc::Receiver<Parked>)> {
    let (parked_tx, parked) = mpsc::channel::<Parked>(64);
    let (outbox, sender) = Outbox::new(
        store.clone(),
        signing_key,
        config.commands.ttl_seconds,
        config.kafka.max_message_bytes,
        Arc::clone(metrics),
        outbox::SenderConfig {
            producer: outbox::producer(brokers, config.kafka.max_message_bytes, &config.kafka.client_settings()?)?,
            commands_topic: config.kafka.commands_topic.clone(),
            dead_letter_topic: config.kafka.dead_letter_topic.clone(),
            failpoint,
            fence: fence.clone(),
        },
        parked_tx,
    )?;
    Ok((outbox, tokio::spawn(sender.run()), parked))
}

/// Opens the state store; while its disk has too little room to open it safely
/// ([`store::NoRoomToOpen`]), says so once and tries again every 2 s (`None`: shut down meanwhile).
async fn open_store_when_there_is_room(
    dir: &std::path::Path,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<Store>> {
    let mut said = false;
    loop {
        match Store::open(dir) {
            Ok(store) => {
                if said {
                    tracing::info!("the state store's disk has room again: opened {}.", dir.display());
                }
                return Ok(Some(store));
            }
            Err(error) if error.downcast_ref::<store::NoRoomToOpen>().is_some() => {
                if !said {
                    tracing::error!("{error:#}; trying again every 2 s.");
                    said = true;
                }
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            () = shutdown.as_mut() => return Ok(None),
            () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
    }
}

/// The command-signing key, from a file readable by its owner only.
fn read_signing_key(path: &std::path::Path) -> Result<cordon_wire::SigningKey> {
    access::check_private(path, "the signing key")?;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the signing key {}", path.display()))?;
    cordon_wire::signing_key_from_base64(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Says, at start, when a rule's `allow:` and a profile of the policy in force would not fit an
/// agent's kernel tables together. The service starts anyway (containment that works beats
/// none): those rules' isolations would be refused by the agents, each showing why on its host.
/// A reload with such rules is refused instead.
fn say_if_rules_do_not_fit(store: &Store, ruleset: &rules::Ruleset) {
    let policy = store.policy();
    let misfits = policy.policy.problems(ruleset.exclusions_by_rule());
    if !misfits.is_empty() {
        tracing::error!(
            "with the isolation policy in force (version {}), rules would not fit an agent's kernel tables: {}. Fix \
             the rules or the policy.",
            policy.version,
            misfits.join("; ")
        );
    }
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
    let reader = start_reader(&consumer, assignment, input, brokers, batches_tx, &shared_projection)?;
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
    };
    service.announce(&telemetry, api_address, console_address);
    // Whatever was decided before a restart and not sent yet goes out first; overdue
    // isolations are lifted at once.
    let result = service.lift_due(now_ms());
    service.after(result);

    let mut tick = deadline_tick();
    let result = loop {
        // While the store refuses writes, no input that would change state is taken (it waits
        // in its channel, or in Kafka uncommitted); operators are answered at once.
        let writable = service.store_fault.is_none() && !service.check_fence(&consumer);
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            Some(batch) = batches.recv(), if writable => service.on_batch(&consumer, batch),
            Some(request) = requests.recv() => {
                let result = service.on_request(request);
                service.after(result);
            }
            Some(job) = jobs.recv(), if writable => {
                let result = service.on_job(job);
                service.after(result);
            }
            Some(parked) = parked.recv(), if writable => {
                let result = service.on_parked(&parked);
                service.after(result);
            }
            _ = hangup.recv() => service.reload_rules("SIGHUP"),
            _ = tick.tick() => {
                if sender.is_finished() {
                    // Only a bug ends it early: stop loudly rather than keep deciding what is never sent.
                    break Err(anyhow::anyhow!("the outbox sender stopped; commands would no longer be sent"));
                }
                clock::check_for_step();
                if writable {
                    let result = service.lift_due(now_ms());
                    service.after(result);
                } else if !service.fenced {
                    service.try_to_write_again(&consumer);
                }
            }
        }
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
        tracing::warn!("stopped with commands still on their way to the broker; they stay in the outbox.");
    }
}

/// Stops the reader (within one poll once nobody takes its batches), then closes the consumer:
/// it must not outlive the broker it reads (the embedded one goes when `serve` returns).
async fn stop_reading(
    batches: mpsc::Receiver<ConsumedBatch>,
    reader: std::thread::JoinHandle<()>,
    consumer: Arc<DetectionConsumer>,
) {
    drop(batches);
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    close_consumer(consumer);
}

/// The partitions the reader consumes: every partition of the detections and status topics,
/// assigned by the service itself (see [`detection_consumer`]), from the offsets committed
/// under the group id. Looked up at start (again every second until the broker answers) and
/// every 30 s after, so partitions added to a topic are read without a restart.
struct Assignment {
    topics: Vec<String>,
    assigned: std::collections::BTreeSet<(String, i32)>,
    next_check: std::time::Instant,
    missing_topic: cordon_telemetry::logs::Throttled,
    /// A fenced service takes no partition, not even one added later.
    fence: lease::Fence,
}

impl Assignment {
    fn new(topics: &[String], fence: lease::Fence) -> Assignment {
        Assignment {
            topics: topics.to_vec(),
            assigned: std::collections::BTreeSet::new(),
            next_check: std::time::Instant::now(),
            missing_topic: cordon_telemetry::logs::Throttled::new(Duration::from_mins(1)),
            fence,
        }
    }

    /// Assigns the partitions not assigned yet, when a check is due.
    fn refresh(&mut self, consumer: &DetectionConsumer) {
        if std::time::Instant::now() < self.next_check || self.fence.reason().is_some() {
            return;
        }
        let settled = match self.new_partitions(consumer) {
            Ok(new) if new.count() == 0 => true,
            Ok(new) => match consumer.incremental_assign(&new) {
                Ok(()) => {
                    for element in new.elements() {
                        self.assigned.insert((element.topic().to_owned(), element.partition()));
                    }
                    let count = i64::try_from(self.assigned.len()).unwrap_or(i64::MAX);
                    consumer.context().metrics.consumer_partitions.set(count);
                    let parts: Vec<String> = self.assigned.iter().map(|(t, p)| format!("{t}/{p}")).collect();
                    tracing::info!("consuming {}.", parts.join(", "));
                    true
                }
                Err(error) => {
                    tracing::error!("cannot assign the partitions {new:?} to the consumer: {error}; trying again in 1 s.");
                    false
                }
            },
            // An unreachable broker is said by the reader's poll; a missing topic here.
            Err(error) if error.downcast_ref::<rdkafka::error::KafkaError>().is_some() => {
                tracing::debug!("cannot read the partitions of {} yet: {error}", self.topics.join(" and "));
                false
            }
            Err(error) => {
                if let Some(repeats) = self.missing_topic.failure("attempts") {
                    let what = if self.assigned.is_empty() {
                        "nothing is consumed until it exists"
                    } else {
                        "still consuming what was assigned"
                    };
                    tracing::warn!("{error}: {what}{repeats}.");
                }
                false
            }
        };
        self.next_check = std::time::Instant::now() + Duration::from_secs(if settled { 30 } else { 1 });
    }

    /// The partitions the broker lists for the topics that are not assigned yet, from their
    /// committed offsets.
    fn new_partitions(&self, consumer: &DetectionConsumer) -> Result<TopicPartitionList> {
        let mut new = TopicPartitionList::new();
        for topic in &self.topics {
            // Short: the reader polls (and says why the broker does not answer) in between.
            let metadata = consumer.fetch_metadata(Some(topic), Duration::from_millis(500))?;
            let listed = metadata.topics().iter().find(|t| t.name() == topic);
            let Some(listed) = listed.filter(|t| t.error().is_none() && !t.partitions().is_empty()) else {
                bail!("the broker does not list the topic {topic} (create it with `cordon topics`)");
            };
            for partition in listed.partitions() {
                if !self.assigned.contains(&(topic.clone(), partition.id())) {
                    new.add_partition_offset(topic, partition.id(), rdkafka::Offset::Stored)?;
                }
            }
        }
        Ok(new)
    }
}

/// Closes the consumer on a thread of its own and waits at most 5 s: librdkafka can hang in a
/// close (librdkafka issue 4041; seen here when the service was stopped while it was joining a
/// group), and a stop must not hang. Exiting without the close loses nothing: offsets are
/// committed only after their state is durable.
fn close_consumer(consumer: Arc<DetectionConsumer>) {
    let (closed, done) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("cordon-close".into()).spawn(move || {
        drop(consumer);
        let _ = closed.send(());
    });
    if spawned.is_ok() && done.recv_timeout(Duration::from_secs(5)).is_err() {
        tracing::warn!(
            "the Kafka consumer did not close within 5 s (a known librdkafka hang); stopping without it: nothing is \
             lost."
        );
    }
}

/// The 100 ms tick that lifts due isolations (a late tick is not made up for by a burst).
fn deadline_tick() -> tokio::time::Interval {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// A detection as the reader parsed it, or why it is not one.
type Parsed = Result<rules::Event, (DeadLetterKind, String)>;

/// Messages consumed together, with their detections already parsed (`None` for agents'
/// reports) by the reader thread, so that parsing overlaps the loop's work.
struct ConsumedBatch {
    messages: Vec<OwnedMessage>,
    events: Vec<Option<Parsed>>,
    /// The projection the detections were parsed through (the rule set's when the batch was
    /// read; the loop parses again if the rules changed since).
    projection: Arc<rules::Projection>,
    /// When the first message of the batch arrived: where a detection's trace starts.
    received_at: SystemTime,
}

/// The reader thread: consumes batches of up to [`MAX_BATCH`] messages, parses their
/// detections and hands them to the loop in order, until the loop goes away. Only the loop
/// commits offsets, after the batch's changes are durable.
fn read_batches(
    consumer: &DetectionConsumer,
    mut assignment: Assignment,
    input: &InputRules,
    brokers: &str,
    batches: &mpsc::Sender<ConsumedBatch>,
    projection: &SharedProjection,
) {
    let mut errors = ReadErrors::new(brokers);
    while !batches.is_closed() {
        assignment.refresh(consumer);
        let mut messages = Vec::new();
        match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(error)) => {
                errors.say(&error);
                continue;
            }
            Some(Ok(message)) => messages.push(message.detach()),
        }
        let received_at = SystemTime::now();
        errors.recovered();
        while messages.len() < MAX_BATCH {
            match consumer.poll(Duration::ZERO) {
                Some(Ok(message)) => messages.push(message.detach()),
                Some(Err(error)) => {
                    errors.say(&error);
                    break;
                }
                None => break,
            }
        }
        let projection = Arc::clone(&projection.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let events = parse_batch(&messages, input, &projection);
        if batches.blocking_send(ConsumedBatch { messages, events, projection, received_at }).is_err() {
            return;
        }
    }
}

/// Kafka read errors, said once and then at most every 30 s (librdkafka reports an unreachable
/// broker on every poll), with what they mean for the service and what to check.
struct ReadErrors<'a> {
    brokers: &'a str,
    throttled: cordon_telemetry::logs::Throttled,
}

impl<'a> ReadErrors<'a> {
    fn new(brokers: &'a str) -> ReadErrors<'a> {
        ReadErrors { brokers, throttled: cordon_telemetry::logs::Throttled::new(Duration::from_secs(30)) }
    }

    fn say(&mut self, error: &rdkafka::error::KafkaError) {
        let Some(repeats) = self.throttled.failure("errors") else { return };
        let unreachable = matches!(
            error.rdkafka_error_code(),
            Some(
                rdkafka::types::RDKafkaErrorCode::AllBrokersDown
                    | rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure
            )
        );
        let tls = matches!(
            error.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::SSL | rdkafka::types::RDKafkaErrorCode::Authentication)
        );
        let hint = if unreachable {
            format!(
                "; cannot reach the Kafka brokers {} (check [kafka] brokers and that they listen). Retrying; \
                 deadlines and the API go on, commands wait in the outbox",
                self.brokers
            )
        } else if tls {
            format!(
                "; TLS or SASL with the Kafka brokers {} failed: check [kafka.tls] ca_file (the CA that issued the \
                 brokers' certificates), cert_file and key_file (a client certificate the brokers accept) and \
                 [kafka.sasl]. Retrying; deadlines and the API go on, commands wait in the outbox",
                self.brokers
            )
        } else {
            String::new()
        };
        tracing::error!("reading Kafka: {error}{hint}{repeats}.");
    }

    /// A message arrived: the next error is news again.
    fn recovered(&mut self) {
        if self.throttled.success() {
            tracing::info!("reading Kafka again.");
        }
    }
}

/// One detection, checked as the API checks its input: its size first (before any parsing), then
/// its text and fields, then its host id.
fn parse_detection(message: &OwnedMessage, input: &InputRules, projection: &rules::Projection) -> Parsed {
    let payload = message.payload().unwrap_or_default();
    if payload.len() > input.max_detection_bytes {
        return Err((
            DeadLetterKind::Oversized,
            format!(
                "the detection is {} bytes, more than the {} allowed ([kafka] max_detection_bytes); not parsed",
                payload.len(),
                input.max_detection_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|e| (DeadLetterKind::Invalid, format!("not UTF-8 text: {e}")))?;
    let format = input.formats.get(message.topic()).copied().unwrap_or_default();
    // OCSF's reasons are said as they always were; another format's say which format it is.
    let said = |what: String| if format == rules::Format::Ocsf { what } else { format!("{format} alert: {what}") };
    let event = rules::Event::parse_projected_as(text, projection, format)
        .map_err(|e| (DeadLetterKind::Invalid, said(e.to_string())))?;
    crate::api::check_host_id(event.host()).map_err(|problem| {
        let field = if format == rules::Format::Ocsf { "device.uid" } else { "host" };
        (DeadLetterKind::BadHostId, said(format!("{field}: {problem}")))
    })?;
    Ok(event)
}

/// Parses the detections of a batch, on several cores when the batch is large; the results
/// keep the batch's order, since evaluation must not reorder events.
fn parse_batch(
    messages: &[OwnedMessage],
    input: &InputRules,
    projection: &rules::Projection,
) -> Vec<Option<Parsed>> {
    let parse = |message: &OwnedMessage| {
        (message.topic() != input.status_topic).then(|| parse_detection(message, input, projection))
    };
    // One core goes to the loop.
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get).saturating_sub(1);
    if threads <= 1 || messages.len() < 256 {
        return messages.iter().map(parse).collect();
    }
    let chunk = messages.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = messages
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(parse).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|part| part.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
}

impl Service {
    /// Says what is served, once the service is ready to: operators (and tests) wait for it.
    fn announce(
        &self,
        telemetry: &cordon_telemetry::Telemetry,
        (api_address, scheme): (std::net::SocketAddr, &str),
        console_address: Option<std::net::SocketAddr>,
    ) {
        tracing::info!("telemetry: {}.", telemetry.description());
        self.say_if_no_rules();
        let policy = self.store.policy();
        tracing::info!(
            "isolation policy version {} ({} profile(s); automatic isolations without a duration last {}).",
            policy.version,
            policy.policy.profiles.len(),
            profiles::format_seconds(policy.policy.profile_for(&[]).automatic_duration_seconds)
        );
        if self.config.console.enabled {
            let at = console_address.unwrap_or(api_address);
            tracing::info!("console on {scheme}://{at}/console (sign in with an API token).");
        }
        tracing::info!(
            "serving {} rule(s) from {}; API on {scheme}://{api_address}.",
            self.ruleset.len(),
            self.config.rules.dir.display()
        );
    }

    /// With no rules, says plainly what the service does: only operators isolate.
    fn say_if_no_rules(&self) {
        if self.ruleset.is_empty() {
            tracing::warn!(
                "no rules in force (no rule files in {}): detections are read but decide nothing; only operators' \
                 isolations (API, CLI, console) will happen. Add rule files there to respond automatically.",
                self.config.rules.dir.display()
            );
        }
    }

    /// Crashes the process at the named point when `CORDON_FAILPOINT` names it: how the crash
    /// tests stop the service exactly between two steps, as a `kill -9` there would.
    fn failpoint(&self, name: &str) {
        if self.failpoint.as_deref() == Some(name) {
            tracing::warn!("failpoint {name}: aborting");
            std::process::abort();
        }
    }

    /// Handles a batch; if the store refuses its changes, holds it until it can write again.
    fn on_batch(&mut self, consumer: &DetectionConsumer, mut batch: ConsumedBatch) {
        match self.handle_batch(consumer, &mut batch) {
            Ok(()) => self.outbox.send(),
            Err(error) => self.store_failed(&error, Some(batch)),
        }
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
        self.metrics.fenced.set(1);
        self.metrics.consumer_partitions.set(0);
        tracing::error!(
            "{why}. This service stops acting: it takes no detections or reports, lifts no deadline, sends no \
             command and refuses operators' changes until it is restarted; its API still answers reads. Stop one of \
             the two (or give them different [kafka] instance_id and state)."
        );
        true
    }

    /// After a handler: what it made durable may be sent; a failure is the store's.
    fn after(&mut self, result: Result<()>) {
        match result {
            Ok(()) => self.outbox.send(),
            Err(error) => self.store_failed(&error, None),
        }
    }

    /// A write to the store failed (the only error a handler returns): nothing since the last
    /// flush counts. The service stops taking input, says so (log, `/readyz`, metrics, answers
    /// to operators) and tries to write again every [`STORE_RETRY_EVERY`]. `held`: the batch
    /// whose changes were lost, handled again first.
    fn store_failed(&mut self, error: &anyhow::Error, held: Option<ConsumedBatch>) {
        let why = format!("{error:#}");
        let now = std::time::Instant::now();
        if let Some(fault) = &mut self.store_fault {
            fault.held = held.or(fault.held.take());
            fault.next_attempt = now + STORE_RETRY_EVERY;
            tracing::error!("the state store refused a write again: {why}.");
        } else {
            tracing::error!(
                "the state store in {} cannot be written: {why}. Not ready: no detections or reports are taken \
                 (nothing uncommitted is lost: it comes again), operators' changes are refused and no deadline is \
                 lifted until it can; trying again every {} s (free space on its disk).",
                self.config.state.dir.display(),
                STORE_RETRY_EVERY.as_secs()
            );
            self.metrics.state_store_faults.add(1);
            self.metrics.state_store_failing.set(1);
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
                    tracing::error!("the state store still cannot be written: {error:#}{repeats}.");
                }
                return;
            }
        };
        let Some(fault) = self.store_fault.take() else { return };
        self.engine = engine;
        self.transitions.clear();
        self.store.set_fault(None);
        self.metrics.state_store_failing.set(0);
        tracing::info!(
            "the state store takes writes again (after {} s): taking input again.",
            fault.since.elapsed().as_secs()
        );
        if let Some(batch) = fault.held {
            self.on_batch(consumer, batch);
        } else {
            self.outbox.send();
        }
    }

    /// Handles a batch of messages, makes every change durable, then commits their offsets. One
    /// message never stops the batch: an invalid or oversized one, or one whose handling fails,
    /// is dead-lettered and the rest go on. Only a store that cannot be written fails the batch
    /// (nothing of it is committed then).
    fn handle_batch(&mut self, consumer: &DetectionConsumer, batch: &mut ConsumedBatch) -> Result<()> {
        if !Arc::ptr_eq(&batch.projection, &self.projection) {
            // Read before the rules changed: the new rules may look at fields it left out.
            batch.events = parse_batch(&batch.messages, &InputRules::of(&self.config), &self.projection);
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
                    let memory = self.engine.isolation_memory(event.host());
                    if let Err(error) = self.on_detection(message, event, now, batch.received_at) {
                        if is_store_fault(&error) {
                            return Err(error);
                        }
                        // The engine saw the event; the host's record did not change: forget
                        // what the engine concluded about the host, or it would count as isolated.
                        self.engine.restore_isolation_memory(event.host(), memory);
                        self.metrics.events_failed.add(1);
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
        let mut offsets: HashMap<(&str, i32), i64> = HashMap::new();
        for message in &batch.messages {
            let next = offsets.entry((message.topic(), message.partition())).or_insert(0);
            *next = (*next).max(message.offset() + 1);
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in offsets {
            list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        }
        if let Err(error) = consumer.commit(&list, CommitMode::Async) {
            // The changes are durable: the batch comes again after a restart,
            // and its events are deduplicated then.
            tracing::warn!("cannot commit the offsets of a handled batch ({error}); its messages may be read again.");
        }
        self.failpoint("after-commit");
        Ok(())
    }

    /// Puts a dead letter for an event in the outbox (durable with the batch, sent after it):
    /// the reason, its size and hash, and as much of its bytes as fits.
    fn dead_letter(&mut self, message: &OwnedMessage, kind: DeadLetterKind, reason: &str) -> Result<()> {
        self.outbox.dead_letter(message, kind, reason)?;
        let shown: String = reason.chars().take(512).collect();
        tracing::warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            "dead-lettered an event at offset {} ({} bytes): {shown}",
            message.offset(),
            message.payload().map_or(0, <[u8]>::len)
        );
        Ok(())
    }

    /// Evaluates one valid event and applies its decisions (not yet durable). An event that
    /// decides something gets a trace (continuing the producer's, if its message carries one):
    /// consume -> evaluate -> decide -> produce command.
    fn on_detection(
        &mut self,
        message: &OwnedMessage,
        event: &rules::Event,
        now: i64,
        received_at: SystemTime,
    ) -> Result<()> {
        let tags = self.tag_sources.tags_for(event, &self.store.tags_of(event.host())?);
        let evaluating_since = self.spans.enabled().then(SystemTime::now);
        let decisions = rules::evaluate(&self.acting.live, &mut self.engine, event, now, &tags);
        self.on_shadow_decisions(event, now, &tags)?;
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
        let consume = evaluating_since.and_then(|evaluating_since| {
            let consume = self.spans.start(
                "consume detection",
                SpanKind::Consumer,
                received_at,
                parent.as_ref().unwrap_or(&TraceContext::new()),
                vec![
                    KeyValue::new("messaging.system", "kafka"),
                    KeyValue::new("messaging.destination.name", self.topics.detections.clone()),
                    KeyValue::new("messaging.kafka.partition", i64::from(message.partition())),
                    KeyValue::new("messaging.kafka.offset", message.offset()),
                    KeyValue::new("cordon.event_id", event.id().to_owned()),
                    KeyValue::new("cordon.host_id", event.host().to_owned()),
                ],
            )?;
            let rule_ids: Vec<opentelemetry::StringValue> =
                decisions.iter().flat_map(|d| d.rules.iter().cloned().map(Into::into)).collect();
            if let Some(evaluate) = self.spans.start(
                "evaluate rules",
                SpanKind::Internal,
                evaluating_since,
                &consume,
                vec![
                    KeyValue::new("cordon.rule_ids", opentelemetry::Value::Array(rule_ids.into())),
                    KeyValue::new("cordon.decisions", i64::try_from(decisions.len()).unwrap_or(i64::MAX)),
                ],
            ) {
                evaluate.span().end();
            }
            Some(consume)
        });
        for decision in &decisions {
            let mode = match &decision.action {
                rules::Action::RequestApproval(_) => "approve",
                rules::Action::Isolate(isolation) => match isolation.mode {
                    rules::IsolationMode::Automatic => "automatic",
                    rules::IsolationMode::Manual => "manual",
                },
            };
            self.metrics.decisions.add(mode, 1);
            for rule in &decision.rules {
                self.metrics.rule_matches.add(rule, 1);
            }
            let decide = consume.as_ref().and_then(|consume| {
                self.spans.start(
                    "decide",
                    SpanKind::Internal,
                    SystemTime::now(),
                    consume,
                    vec![
                        KeyValue::new("cordon.host_id", decision.host.clone()),
                        KeyValue::new("cordon.rule_ids", decision.rules.join(",")),
                        KeyValue::new("cordon.decision", decision.action.name()),
                        KeyValue::new("cordon.mode", mode),
                    ],
                )
            });
            let previous = self.store.host(&decision.host)?;
            let mut record = previous.clone().unwrap_or_else(|| HostRecord::new(&decision.host, now));
            let policy = self.store.policy();
            let profile = policy.profile_in_force(&record.operator_tags);
            let effects = lifecycle::on_decision(&mut record, decision, profile, now);
            if record.state == HostState::Isolating
                && previous.as_ref().is_none_or(|p| p.state != HostState::Isolating)
            {
                // On cordon's clock, like `now` (see clock.rs).
                let waited = received_at.elapsed().unwrap_or_default().as_millis();
                record.detected_at_ms = Some(now.saturating_sub(i64::try_from(waited).unwrap_or(0)));
            }
            self.apply(previous.as_ref(), &mut record, effects, now, decide.as_ref())?;
            if let Some(decide) = decide {
                let span = decide.span();
                span.set_attribute(KeyValue::new("cordon.state", record.state.name()));
                span.set_attribute(KeyValue::new(
                    "cordon.generation",
                    i64::try_from(record.generation).unwrap_or(i64::MAX),
                ));
                span.end();
            }
        }
        if let Some(consume) = consume {
            consume.span().end();
        }
        Ok(())
    }

    /// Evaluates `event` with the shadow rules: what each would have decided goes into the
    /// host's audit trail, the metrics and the log (through the pipeline's every step: dedup,
    /// thresholds, escalation, protection, the ceiling, and the kernel fit with the host's
    /// profile); no command, no change of the host.
    fn on_shadow_decisions(&mut self, event: &rules::Event, now: i64, tags: &[String]) -> Result<()> {
        if self.acting.shadow.is_empty() {
            return Ok(());
        }
        let decisions = rules::evaluate(&self.acting.shadow, &mut self.acting.shadow_engine, event, now, tags);
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

    /// Makes everything written so far durable, then logs the transitions it made durable (in
    /// one write: a batch can hold thousands).
    fn flush(&mut self) -> Result<()> {
        self.store.commit()?;
        self.outbox.made_durable();
        let transitions = std::mem::take(&mut self.transitions);
        if !transitions.is_empty() {
            self.metrics.show_counts(&self.store.counts());
        }
        for Transition { audit, event_id, command_id, trace_id } in transitions {
            tracing::info!(
                host_id = %audit.host,
                state = audit.to.name(),
                event_id = event_id.as_deref().unwrap_or(""),
                command_id = command_id.as_deref().unwrap_or(""),
                trace_id = %trace_id,
                "{}: {} -> {} by {} (generation {}): {}",
                audit.host,
                audit.from.name(),
                audit.to.name(),
                audit.by,
                audit.generation,
                audit.why
            );
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
                    tracing::error!(host_id = %record.host, "{}: command {command_id}: {reason}", record.host);
                    record.command_not_sent(&command_id, &reason);
                    if let Some(audit) = &mut audit {
                        audit.why = format!("{} (command NOT sent: {reason})", audit.why);
                    }
                    command_id
                }
            }),
            None => None,
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

    /// An operator's request from the API or the console.
    fn on_request(&mut self, request: ApiRequest) -> Result<()> {
        match request {
            ApiRequest::Host(request) => self.on_operator(request),
            ApiRequest::Policy(request) => self.on_policy(request),
            ApiRequest::Bulk(request) => self.on_bulk(request),
        }
    }

    /// Why the loop takes no change now, if it does not: a later start fenced it, or the store
    /// cannot be written.
    fn not_acting(&self) -> Option<NotDone> {
        if let Some(why) = self.fence.reason() {
            return Some(NotDone::Fenced(why));
        }
        self.store.fault().map(NotDone::StoreFault)
    }

    /// Carries out an operator's request, durably, and answers it; while the store cannot be
    /// written, answers at once that nothing was done.
    fn on_operator(&mut self, request: OperatorRequest) -> Result<()> {
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
    fn carry_out(
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
                    let effects = lifecycle::operator_isolate(&mut record, &plan, profile, &reason, operator, now);
                    self.note_isolation(&record, &plan, operator);
                    Ok(effects)
                } else {
                    Err(NotDone::Invalid(problems))
                }
            }
            Operation::Release { reason } => {
                let effects = lifecycle::operator_release(&mut record, &reason, operator, now);
                if effects.is_ok() {
                    self.engine.release(&record.host);
                }
                effects.map_err(NotDone::from)
            }
            Operation::Extend { seconds, reason } => {
                let effects = lifecycle::extend(&mut record, seconds, &reason, operator, now);
                if effects.is_ok() {
                    // The engine must never decide a shorter isolation than this one.
                    self.engine.note_isolation(&record.host, rules::IsolationMode::Automatic, record.expires_at_ms, operator);
                }
                effects.map_err(NotDone::from)
            }
            Operation::Approve { reason } => {
                let plan = record.pending.as_ref().map(|p| p.plan.clone());
                let effects = lifecycle::approve(&mut record, profile, &reason, operator, now);
                if let (Ok(_), Some(plan)) = (&effects, plan) {
                    self.note_isolation(&record, &plan, operator);
                }
                effects.map_err(NotDone::from)
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
    fn on_bulk(&mut self, request: BulkRequest) -> Result<()> {
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

    fn carry_out_bulk(&mut self, request: &BulkRequest) -> Result<Result<Vec<BulkOutcome>, NotDone>> {
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
    fn on_policy(&mut self, request: PolicyChangeRequest) -> Result<()> {
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
                let listed: Vec<String> = changes.iter().map(ToString::to_string).collect();
                tracing::info!(
                    "isolation policy version {} by {}: {}; {updated} isolation(s) in force updated live. Changes: {}",
                    version.version,
                    version.author,
                    version.reason,
                    if listed.is_empty() { "none".to_owned() } else { listed.join("; ") }
                );
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
    fn prepare_policy(
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

    /// Tells the engine about an isolation it did not decide, so rules never weaken it.
    fn note_isolation(&mut self, record: &HostRecord, plan: &IsolationPlan, by: &str) {
        let mode = if plan.duration_seconds.is_some() {
            rules::IsolationMode::Automatic
        } else {
            rules::IsolationMode::Manual
        };
        self.engine.note_isolation(&record.host, mode, record.expires_at_ms, by);
    }

    /// Issues a release for every automatic isolation whose deadline has passed.
    fn lift_due(&mut self, now: i64) -> Result<()> {
        let due = self.store.due(now)?;
        if due.is_empty() {
            return Ok(());
        }
        for host in due {
            let Some(previous) = self.store.host(&host)? else { continue };
            if let Some(deadline) = previous.expires_at_ms {
                let late_ms = (now - deadline).max(0);
                self.metrics.lifts.add(if late_ms <= observe::ON_TIME_MS { "on_time" } else { "late" }, 1);
                #[allow(clippy::cast_precision_loss, reason = "milliseconds of lateness")]
                self.metrics.lift_lateness.observe(late_ms as f64 / 1e3);
            }
            let trace = self.spans.start(
                "deadline reached",
                SpanKind::Internal,
                SystemTime::now(),
                &TraceContext::new(),
                vec![
                    KeyValue::new("cordon.host_id", host.clone()),
                    KeyValue::new("cordon.deadline_ms", previous.expires_at_ms.unwrap_or(0)),
                ],
            );
            let mut record = previous.clone();
            let effects = lifecycle::deadline_reached(&mut record, now);
            self.engine.release(&host);
            self.apply(Some(&previous), &mut record, effects, now, trace.as_ref())?;
            if let Some(trace) = trace {
                trace.span().end();
            }
        }
        self.store.put_engine_changes(&mut self.engine);
        self.flush()
    }

    fn on_job(&mut self, job: Job) -> Result<()> {
        let now = now_ms();
        match job {
            Job::Reconcile => {
                let after_ms = i64::try_from(self.config.agents.resend_after_seconds).unwrap_or(15) * 1_000;
                for previous in self.store.hosts()? {
                    let mut record = previous.clone();
                    if let Some(action) = lifecycle::resend_due(&mut record, after_ms, now) {
                        tracing::info!(
                            host_id = %record.host,
                            "{}: resending command {} (no answer from its agent, attempt {}).",
                            record.host,
                            record.generation,
                            record.resends
                        );
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
                for previous in self.store.hosts()? {
                    let mut record = previous.clone();
                    let effects = lifecycle::check_stale(&mut record, after_ms, now);
                    self.apply(Some(&previous), &mut record, effects, now, None)?;
                }
            }
            Job::Prune => {
                let window_ms = self.ruleset_ceiling_window_ms();
                self.engine.prune(now, window_ms);
                self.acting.shadow_engine.prune(now, window_ms);
                self.store.put_engine_changes(&mut self.engine);
            }
            Job::Retention => {
                let outcome = self.store.apply_retention(&self.config.state.retention(), now)?;
                if outcome.audit_entries + outcome.api_calls > 0 {
                    tracing::info!(
                        "retention: removed {} audit entries and {} API call records ([state] *_retention_days, \
                         audit_max_per_host).",
                        outcome.audit_entries,
                        outcome.api_calls
                    );
                }
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

    fn ruleset_ceiling_window_ms(&self) -> i64 {
        self.ruleset
            .policy()
            .max_automatic
            .map_or(0, |ceiling| i64::try_from(ceiling.within.as_millis()).unwrap_or(i64::MAX))
    }

    /// Loads the rules again; a set that does not validate, or whose `allow:` would not fit an
    /// agent's kernel tables with a profile of the policy in force, is refused and the running
    /// one stays.
    fn reload_rules(&mut self, why: &str) {
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
                tracing::info!(
                    "rules reloaded after {why}: {} rule(s) from {}.",
                    ruleset.len(),
                    self.config.rules.dir.display()
                );
                self.metrics.rules_loaded.set(i64::try_from(ruleset.len()).unwrap_or(i64::MAX));
                self.projection = Arc::new(ruleset.projection().clone());
                *self.shared_projection.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Arc::clone(&self.projection);
                self.acting = Acting::of(&ruleset, self.config.rules.mode);
                self.tag_sources = tag_sources;
                self.ruleset = ruleset;
                self.say_if_no_rules();
            }
            Err(error) => tracing::error!(
                "rules NOT reloaded after {why}; the {} running rule(s) stay in force. {error:#}",
                self.ruleset.len()
            ),
        }
    }
}

/// Whether `error` comes from the state store (disk full, I/O): the batch must not be committed
/// then, and the event is not to blame.
fn is_store_fault(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.downcast_ref::<sled::Error>().is_some())
}
