//! OTLP export of traces and metrics. Where to: `[telemetry] otlp_endpoint` in the service's
//! file, else the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or the per-signal
//! `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT`); over what: `otlp_protocol`, else
//! `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf` (the specification's default). When
//! nothing says where, nothing is exported and no span is even built. `OTEL_SDK_DISABLED=true`,
//! `OTEL_TRACES_EXPORTER=none` and `OTEL_METRICS_EXPORTER=none` turn export off.
//!
//! The SDK exports from threads of its own, which have no async runtime; the gRPC client needs
//! one, so gRPC exporters run on a small runtime kept for them (see [`Reporting`]).

use std::time::Duration;

use opentelemetry::metrics::Meter;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};
use opentelemetry_sdk::Resource;
use serde::Deserialize;

use crate::logs::LogFormat;

/// `[telemetry]` in `cordon.toml` and `enforcer.toml`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// The OTLP collector, e.g. `http://collector:4317` (gRPC) or `http://collector:4318`
    /// (HTTP). Absent: `OTEL_EXPORTER_OTLP_ENDPOINT`; absent too: nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// `grpc`, `http/protobuf` or `http/json`. Absent: `OTEL_EXPORTER_OTLP_PROTOCOL`, else
    /// `http/protobuf`.
    pub otlp_protocol: Option<String>,
    /// `human` (default) or `json`; `CORDON_LOG_FORMAT` overrides it.
    #[serde(default)]
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("unknown OTLP protocol {0:?} (expected \"grpc\", \"http/protobuf\" or \"http/json\")")]
    UnknownProtocol(String),
    #[error("cannot build the OTLP {signal} exporter for {endpoint}: {reason}")]
    Exporter { signal: &'static str, endpoint: String, reason: String },
    #[error("cannot start the runtime of the gRPC exporters: {0}")]
    Runtime(std::io::Error),
}

/// Which signals go where, resolved from the file and the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportPlan {
    pub protocol: ProtocolChoice,
    /// The endpoint the file gave (the environment's are read by the exporters themselves).
    pub endpoint: Option<String>,
    pub traces: bool,
    pub metrics: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolChoice {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

impl ProtocolChoice {
    fn parse(text: &str) -> Result<Self, TelemetryError> {
        match text.trim() {
            "grpc" => Ok(ProtocolChoice::Grpc),
            "http/protobuf" => Ok(ProtocolChoice::HttpProtobuf),
            "http/json" => Ok(ProtocolChoice::HttpJson),
            other => Err(TelemetryError::UnknownProtocol(other.to_owned())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ProtocolChoice::Grpc => "OTLP/gRPC",
            ProtocolChoice::HttpProtobuf => "OTLP/HTTP (protobuf)",
            ProtocolChoice::HttpJson => "OTLP/HTTP (JSON)",
        }
    }
}

/// Reads the standard variables through `env` (the process environment in production).
pub fn plan(
    section: &TelemetrySection,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<ExportPlan>, TelemetryError> {
    let set = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let protocol_text = section
        .otlp_protocol
        .clone()
        .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".to_owned());
    let protocol = ProtocolChoice::parse(&protocol_text)?;
    let endpoint = section.otlp_endpoint.clone().filter(|e| !e.trim().is_empty());
    let general = endpoint.is_some() || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    let wanted = |signal: &str| {
        let exporter = set(&format!("OTEL_{signal}_EXPORTER"));
        exporter.is_none_or(|value| value.trim() != "none")
            && (general || set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")).is_some())
    };
    let (traces, metrics) = (wanted("TRACES"), wanted("METRICS"));
    Ok((traces || metrics).then_some(ExportPlan { protocol, endpoint, traces, metrics }))
}

/// The `host:port` of every collector that export would reach (an isolated host's agent must
/// still reach them: they join its management channel). Empty when nothing is exported.
pub fn collector_addresses(section: &TelemetrySection, env: &impl Fn(&str) -> Option<String>) -> Vec<String> {
    let Ok(Some(plan)) = plan(section, env) else { return Vec::new() };
    let default_port = if plan.protocol == ProtocolChoice::Grpc { 4317 } else { 4318 };
    let urls: Vec<String> = match plan.endpoint {
        Some(endpoint) => vec![endpoint],
        None => [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        ]
        .iter()
        .filter_map(|name| env(name).filter(|v| !v.trim().is_empty()))
        .collect(),
    };
    let mut addresses = Vec::new();
    for url in urls {
        let (scheme, rest) = url.trim().split_once("://").unwrap_or(("http", url.trim()));
        let authority = rest.split('/').next().unwrap_or_default();
        let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        if authority.is_empty() {
            continue;
        }
        let has_port = !authority.ends_with(']')
            && authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok());
        let address = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:{}", if scheme == "https" { 443 } else { default_port })
        };
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    addresses
}

/// Builds the OTLP exporter `$exporter` (`SpanExporter` or `MetricExporter`) for `$signal` over
/// the plan's protocol, wraps it in [`Reporting`] (gRPC with the runtime it runs on), binds it to
/// `$bound` and evaluates `$then`. A macro because opentelemetry-otlp's gRPC and HTTP builders,
/// and so the two exporters, are distinct types for each signal; returns `Exporter` errors with
/// `?` from the enclosing function.
macro_rules! with_otlp_exporter {
    (
        $exporter:path, $signal:literal, $plan:expr, $runtime:expr, $failed:expr, $where_to:expr,
        |$bound:ident| $then:expr
    ) => {
        if let Some(runtime) = $runtime {
            let _inside = runtime.enter();
            let mut exporter_builder = <$exporter>::builder().with_tonic();
            if let Some(endpoint) = &$plan.endpoint {
                exporter_builder = exporter_builder.with_endpoint(endpoint.clone());
            }
            let inner = exporter_builder.build().map_err(|e| $failed($signal, &e))?;
            let $bound = Reporting::new(inner, Some(runtime.handle().clone()), $signal, $where_to);
            $then
        } else {
            let mut exporter_builder =
                <$exporter>::builder().with_http().with_protocol(http_protocol($plan.protocol));
            if let Some(endpoint) = &$plan.endpoint {
                exporter_builder = exporter_builder.with_endpoint(signal_url(endpoint, $signal));
            }
            let inner = exporter_builder.build().map_err(|e| $failed($signal, &e))?;
            let $bound = Reporting::new(inner, None, $signal, $where_to);
            $then
        }
    };
}

/// The exporters of one process; dropping it (or [`Telemetry::shutdown`]) flushes what is
/// pending.
pub struct Telemetry {
    tracer: Option<SdkTracer>,
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    runtime: Option<tokio::runtime::Runtime>,
    description: String,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("description", &self.description).finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Nothing exported.
    pub fn off() -> Telemetry {
        Telemetry {
            tracer: None,
            tracer_provider: None,
            meter_provider: None,
            runtime: None,
            description: "no OTLP export configured".to_owned(),
        }
    }

    /// Starts the exporters `section` and the environment ask for, as `service_name`; metrics
    /// only when `with_metrics` (a process that keeps none exports none).
    pub fn start(
        service_name: &'static str,
        section: &TelemetrySection,
        with_metrics: bool,
    ) -> Result<Telemetry, TelemetryError> {
        let Some(mut plan) = plan(section, &|name| std::env::var(name).ok())? else {
            return Ok(Telemetry::off());
        };
        plan.metrics &= with_metrics;
        if !plan.traces && !plan.metrics {
            return Ok(Telemetry::off());
        }
        // Built on a thread of its own: the HTTP client must not be made (or later dropped)
        // inside an async runtime, and callers may be in one.
        std::thread::scope(|scope| {
            scope
                .spawn(|| Telemetry::build(service_name, &plan))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn build(service_name: &'static str, plan: &ExportPlan) -> Result<Telemetry, TelemetryError> {
        let resource = Resource::builder().with_service_name(service_name).build();
        let runtime = if plan.protocol == ProtocolChoice::Grpc {
            Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("otlp-grpc")
                    .enable_all()
                    .build()
                    .map_err(TelemetryError::Runtime)?,
            )
        } else {
            None
        };
        let where_to =
            plan.endpoint.clone().unwrap_or_else(|| "the OTEL_EXPORTER_OTLP_* endpoint".to_owned());
        let failed = |signal, error: &dyn std::fmt::Display| TelemetryError::Exporter {
            signal,
            endpoint: where_to.clone(),
            reason: error.to_string(),
        };
        let mut telemetry = Telemetry::off();
        if plan.traces {
            let builder = SdkTracerProvider::builder().with_resource(resource.clone());
            let provider = with_otlp_exporter!(
                opentelemetry_otlp::SpanExporter,
                "traces",
                plan,
                &runtime,
                failed,
                &where_to,
                |exporter| builder.with_span_processor(batch(exporter)).build()
            );
            telemetry.tracer = Some(provider.tracer(service_name));
            telemetry.tracer_provider = Some(provider);
        }
        if plan.metrics {
            let builder = SdkMeterProvider::builder().with_resource(resource);
            let provider = with_otlp_exporter!(
                opentelemetry_otlp::MetricExporter,
                "metrics",
                plan,
                &runtime,
                failed,
                &where_to,
                |exporter| builder.with_periodic_exporter(exporter).build()
            );
            telemetry.meter_provider = Some(provider);
        }
        let signals = match (plan.traces, plan.metrics) {
            (true, true) => "traces and metrics",
            (true, false) => "traces",
            _ => "metrics",
        };
        telemetry.description = format!("exporting {signals} over {} to {where_to}", plan.protocol.name());
        telemetry.runtime = runtime;
        Ok(telemetry)
    }

    /// The tracer spans are built with; `None` when traces are not exported (then no span
    /// should be built at all).
    pub fn tracer(&self) -> Option<&SdkTracer> {
        self.tracer.as_ref()
    }

    /// The meter OTLP metrics are recorded with; `None` when metrics are not exported.
    pub fn meter(&self, name: &'static str) -> Option<Meter> {
        self.meter_provider.as_ref().map(|provider| provider.meter(name))
    }

    /// What is exported where, for the start-up log line.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Exports what is pending now (tests and short-lived commands).
    pub fn flush(&self) {
        if let Some(provider) = &self.tracer_provider {
            let _ = provider.force_flush();
        }
        if let Some(provider) = &self.meter_provider {
            let _ = provider.force_flush();
        }
    }

    /// Exports what is pending and stops the exporters.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let (traces, metrics) = (self.tracer_provider.take(), self.meter_provider.take());
        if traces.is_none() && metrics.is_none() {
            return;
        }
        self.tracer = None;
        // On a plain thread: shutting down waits on the exporter threads, which must not
        // happen on an async worker.
        std::thread::scope(|scope| {
            scope.spawn(move || {
                if let Some(provider) = traces {
                    let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
                }
                if let Some(provider) = metrics {
                    let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
                }
            });
        });
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The span batcher: the `OTEL_BSP_*` variables where set; otherwise a queue deep enough for a
/// flood of decisions (65,536 spans; the SDK's 2,048 would drop most of a burst's spans), large
/// batches, and export every second (a SOC lead should not wait 5 s for a trace).
fn batch<E: SpanExporter + 'static>(exporter: E) -> BatchSpanProcessor {
    let unset = |name: &str| std::env::var(name).map_or(true, |value| value.trim().is_empty());
    let mut config = BatchConfigBuilder::default();
    if unset("OTEL_BSP_MAX_QUEUE_SIZE") {
        config = config.with_max_queue_size(65_536);
    }
    if unset("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
        config = config.with_max_export_batch_size(2_048);
    }
    if unset("OTEL_BSP_SCHEDULE_DELAY") {
        config = config.with_scheduled_delay(Duration::from_secs(1));
    }
    BatchSpanProcessor::builder(exporter).with_batch_config(config.build()).build()
}

fn http_protocol(choice: ProtocolChoice) -> Protocol {
    if choice == ProtocolChoice::HttpJson {
        Protocol::HttpJson
    } else {
        Protocol::HttpBinary
    }
}

/// `http://collector:4318` -> `http://collector:4318/v1/traces`, as the SDK does with
/// `OTEL_EXPORTER_OTLP_ENDPOINT`, so that the file and the variable mean the same.
fn signal_url(base: &str, signal: &str) -> String {
    format!("{}/v1/{signal}", base.trim_end_matches('/'))
}

/// An exporter that says when its exports fail: once, then at most every minute (with how many
/// failed meanwhile), and once when they work again. The SDK itself says nothing at the default
/// log level, and a collector that is down must not go unnoticed (nor flood the log).
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    /// Where the exports run, for gRPC: its client needs a runtime, the SDK's export threads have
    /// none.
    runtime: Option<tokio::runtime::Handle>,
    signal: &'static str,
    endpoint: String,
    state: std::sync::Mutex<crate::logs::Throttled>,
}

const SAY_FAILURES_EVERY: Duration = Duration::from_mins(1);

impl<E> Reporting<E> {
    fn new(
        inner: E,
        runtime: Option<tokio::runtime::Handle>,
        signal: &'static str,
        endpoint: &str,
    ) -> Reporting<E> {
        Reporting {
            inner,
            runtime,
            signal,
            endpoint: endpoint.to_owned(),
            state: std::sync::Mutex::new(crate::logs::Throttled::new(SAY_FAILURES_EVERY)),
        }
    }

    /// Notes an export's outcome; returns what was said, if anything.
    fn note(&self, result: &OTelSdkResult) -> Option<String> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let said = match result {
            Ok(()) if state.success() => {
                let line = format!("OTLP {} export to {} works again.", self.signal, self.endpoint);
                tracing::info!("{line}");
                line
            }
            Ok(()) => return None,
            Err(error) => {
                let repeats = state.failure("failures")?;
                let line = format!(
                    "OTLP {} export to {} failed: {error}{repeats}. This telemetry is lost; isolations are not affected.",
                    self.signal, self.endpoint
                );
                tracing::warn!("{line}");
                line
            }
        };
        Some(said)
    }
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = match &self.runtime {
            Some(runtime) => runtime.block_on(self.inner.export(batch)),
            None => self.inner.export(batch).await,
        };
        self.note(&result);
        result
    }
    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Reporting<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = match &self.runtime {
            Some(runtime) => runtime.block_on(self.inner.export(metrics)),
            None => self.inner.export(metrics).await,
        };
        self.note(&result);
        result
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn nothing_configured_exports_nothing() {
        assert_eq!(plan(&TelemetrySection::default(), &env_of(&[])).unwrap(), None);
    }

    #[test]
    fn the_file_or_the_standard_variables_turn_export_on() {
        let section = TelemetrySection {
            otlp_endpoint: Some("http://c:4317".into()),
            otlp_protocol: Some("grpc".into()),
            ..TelemetrySection::default()
        };
        let from_file = plan(&section, &env_of(&[])).unwrap().unwrap();
        assert_eq!(from_file.protocol, ProtocolChoice::Grpc);
        assert!(from_file.traces && from_file.metrics);
        let from_env =
            plan(&TelemetrySection::default(), &env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]))
                .unwrap()
                .unwrap();
        assert_eq!(from_env.protocol, ProtocolChoice::HttpProtobuf, "the specification's default");
        let traces_only = plan(
            &TelemetrySection::default(),
            &env_of(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")]),
        )
        .unwrap()
        .unwrap();
        assert!(traces_only.traces && !traces_only.metrics);
    }

    #[test]
    fn the_standard_switches_turn_export_off() {
        let env = env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "true")]);
        assert_eq!(plan(&TelemetrySection::default(), &env).unwrap(), None);
        let env =
            env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_METRICS_EXPORTER", "none")]);
        let only_traces = plan(&TelemetrySection::default(), &env).unwrap().unwrap();
        assert!(only_traces.traces && !only_traces.metrics);
    }

    #[test]
    fn an_unknown_protocol_is_named() {
        let section = TelemetrySection {
            otlp_endpoint: Some("http://c".into()),
            otlp_protocol: Some("carrier-pigeon".into()),
            ..TelemetrySection::default()
        };
        let error = plan(&section, &env_of(&[])).unwrap_err().to_string();
        assert!(error.contains("\"carrier-pigeon\"") && error.contains("http/protobuf"), "{error}");
    }

    #[test]
    fn collectors_join_the_management_channel_with_their_ports() {
        let section = TelemetrySection {
            otlp_endpoint: Some("http://collector.example:4317/".into()),
            otlp_protocol: Some("grpc".into()),
            ..TelemetrySection::default()
        };
        assert_eq!(collector_addresses(&section, &env_of(&[])), ["collector.example:4317"]);
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otel.example"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://[fd00::7]/v1/traces"),
        ]);
        assert_eq!(
            collector_addresses(&TelemetrySection::default(), &env),
            ["otel.example:443", "[fd00::7]:4318"]
        );
        assert!(collector_addresses(&TelemetrySection::default(), &env_of(&[])).is_empty());
    }

    #[test]
    fn export_failures_are_said_once_then_every_minute_and_recovery_once() {
        let reporting = Reporting::new((), None, "traces", "http://collector:4317");
        let failure: OTelSdkResult =
            Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure("refused".into()));
        let first = reporting.note(&failure).expect("the first failure is said");
        assert!(
            first.contains("traces export to http://collector:4317 failed: ") && first.contains("refused"),
            "{first}"
        );
        assert_eq!(reporting.note(&failure), None, "not again within the minute");
        assert_eq!(reporting.note(&failure), None);
        reporting.state.lock().unwrap().last_said = std::time::Instant::now().checked_sub(SAY_FAILURES_EVERY);
        let again = reporting.note(&failure).expect("said again after a minute");
        assert!(again.contains("(2 more failures since the last report)"), "{again}");
        let recovered = reporting.note(&Ok(())).expect("recovery is said");
        assert!(recovered.contains("works again"), "{recovered}");
        assert_eq!(reporting.note(&Ok(())), None, "and only once");
    }

    #[test]
    fn file_endpoints_get_the_signal_path_like_the_variable_does() {
        assert_eq!(signal_url("http://c:4318/", "traces"), "http://c:4318/v1/traces");
    }
}
