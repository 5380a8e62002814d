//! What `cordon serve` sets up before its loop runs: the configuration and the brokers (the
//! embedded one when none are configured), the rules, the state store (once its disk has room),
//! the signing key, the API's tokens and listeners, telemetry and the outbox's sender.

use std::future::Future;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;

use super::config::ServiceConfig;
use super::events::Starting;
use super::observe::Metrics;
use super::outbox::{self, Outbox, Parked};
use super::store::{self, Store};
use super::{access, api, console, lease, tls};

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
                Starting::EmbeddedBroker { brokers: &brokers }.emit();
                brokers
            }
            Some(brokers) => brokers.to_owned(),
        };
        super::serve(config, &brokers, shutdown_signal()).await
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

/// Who may use the API: the tokens of `[api] tokens_file`, or else the one shared token.
pub(super) fn api_tokens(config: &ServiceConfig) -> Result<access::Tokens> {
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
            crate::keygen::write_secret(&path, &token).with_context(|| format!("cannot create {}", path.display()))?;
            Starting::ApiTokenCreated { path: &path }.emit();
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
pub(super) async fn start_api(
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
                Starting::ServerStopped { address, error: &error }.emit();
            }
        });
    } else {
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                Starting::ServerStopped { address, error: &error }.emit();
            }
        });
    }
    Ok(address)
}

/// The OTLP exporters (if configured) and the metrics, showing the state as it is now.
pub(super) fn start_telemetry(
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

/// The outbox and its sender task (started), and the channel the sender tells about parked
/// entries on.
pub(super) fn start_outbox(
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
pub(super) async fn open_store_when_there_is_room(
    dir: &std::path::Path,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<Store>> {
    let mut said = false;
    loop {
        match Store::open(dir) {
            Ok(store) => {
                if said {
                    Starting::StoreHasRoomAgain { dir }.emit();
                }
                return Ok(Some(store));
            }
            Err(error) if error.downcast_ref::<store::NoRoomToOpen>().is_some() => {
                if !said {
                    Starting::StoreHasNoRoom { error: &error }.emit();
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
pub(super) fn read_signing_key(path: &std::path::Path) -> Result<cordon_wire::SigningKey> {
    access::check_private(path, "the signing key")?;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the signing key {}", path.display()))?;
    cordon_wire::signing_key_from_base64(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Says, at start, when a rule's `allow:` and a profile of the policy in force would not fit an
/// agent's kernel tables together. The service starts anyway (containment that works beats
/// none): those rules' isolations would be refused by the agents, each showing why on its host.
/// A reload with such rules is refused instead.
pub(super) fn say_if_rules_do_not_fit(store: &Store, ruleset: &rules::Ruleset) {
    let policy = store.policy();
    let misfits = policy.policy.problems(ruleset.exclusions_by_rule());
    if !misfits.is_empty() {
        Starting::RulesDoNotFit { policy_version: policy.version, misfits: &misfits }.emit();
    }
}
