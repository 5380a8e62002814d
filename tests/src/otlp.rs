//! An OTLP receiver for the tests and the overhead benchmark: the collector's two protocols,
//! gRPC (the OpenTelemetry protocol crate's generated tonic services) and HTTP/protobuf (axum,
//! `POST /v1/traces` and `/v1/metrics`), handing every span and metric it receives to a sink.
//! As a probe (`probe otlp ADDRESS GRPC_PORT HTTP_PORT`) it prints them as lines:
//! `span {json}` and `metric NAME`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};

/// One span as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: BTreeMap<String, String>,
    /// `grpc` or `http`.
    pub protocol: &'static str,
}

impl ReceivedSpan {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "service": self.service, "name": self.name, "trace_id": self.trace_id,
            "span_id": self.span_id, "parent_span_id": self.parent_span_id,
            "attributes": self.attributes, "protocol": self.protocol,
        })
    }

    pub fn from_json(value: &serde_json::Value) -> ReceivedSpan {
        let text = |key: &str| value[key].as_str().unwrap_or_default().to_owned();
        ReceivedSpan {
            service: text("service"),
            name: text("name"),
            trace_id: text("trace_id"),
            span_id: text("span_id"),
            parent_span_id: text("parent_span_id"),
            attributes: value["attributes"]
                .as_object()
                .map(|map| {
                    map.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
                })
                .unwrap_or_default(),
            protocol: if value["protocol"] == "grpc" { "grpc" } else { "http" },
        }
    }
}

/// What the receiver hands its sink.
#[derive(Clone, Debug)]
pub enum Received {
    Span(ReceivedSpan),
    /// A metric's name and the protocol it came over.
    Metric(String, &'static str),
}

pub type Sink = Arc<dyn Fn(Received) + Send + Sync>;

/// A running receiver; it stops when dropped.
pub struct Receiver {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// Spans and metric data points received so far (whatever the sink).
    pub counts: Arc<Counts>,
    runtime: Option<tokio::runtime::Runtime>,
}

#[derive(Debug, Default)]
pub struct Counts {
    pub spans: std::sync::atomic::AtomicU64,
    pub metrics: std::sync::atomic::AtomicU64,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Receiver {
    /// Listens on `address` (port 0: any free port) for gRPC and HTTP; hands every span and
    /// metric to `sink` (none: only counts them, as a collector that forwards would cost).
    pub fn start(
        address: IpAddr,
        grpc_port: u16,
        http_port: u16,
        sink: Option<Sink>,
    ) -> std::io::Result<Receiver> {
        let counts = Arc::new(Counts::default());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-receiver")
            .enable_all()
            .build()?;
        let (grpc, http) = runtime.block_on(async {
            let grpc_listener = tokio::net::TcpListener::bind((address, grpc_port)).await?;
            let http_listener = tokio::net::TcpListener::bind((address, http_port)).await?;
            let (grpc, http) = (grpc_listener.local_addr()?, http_listener.local_addr()?);
            let collector = Collector { sink: sink.clone(), counts: Arc::clone(&counts), protocol: "grpc" };
            let server = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .add_service(MetricsServiceServer::new(collector))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(grpc_listener));
            tokio::spawn(server);
            let collector = Collector { sink, counts: Arc::clone(&counts), protocol: "http" };
            let app = axum::Router::new()
                .route("/v1/traces", axum::routing::post(http_traces))
                .route("/v1/metrics", axum::routing::post(http_metrics))
                .with_state(collector);
            tokio::spawn(async move { axum::serve(http_listener, app).await });
            Ok::<_, std::io::Error>((grpc, http))
        })?;
        Ok(Receiver { grpc, http, counts, runtime: Some(runtime) })
    }
}

#[derive(Clone)]
struct Collector {
    sink: Option<Sink>,
    counts: Arc<Counts>,
    protocol: &'static str,
}

impl Collector {
    fn traces(&self, request: &ExportTraceServiceRequest) {
        let count: usize =
            request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|scope| scope.spans.len()).sum();
        self.counts.spans.fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
        let Some(sink) = &self.sink else { return };
        for resource_spans in &request.resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| attribute(&resource.attributes, "service.name"))
                .unwrap_or_default();
            for scope_spans in &resource_spans.scope_spans {
                for span in &scope_spans.spans {
                    sink(Received::Span(ReceivedSpan {
                        service: service.clone(),
                        name: span.name.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text_of(kv.value.as_ref())))
                            .collect(),
                        protocol: self.protocol,
                    }));
                }
            }
        }
    }

    fn metrics(&self, request: &ExportMetricsServiceRequest) {
        for resource_metrics in &request.resource_metrics {
            for scope_metrics in &resource_metrics.scope_metrics {
                for metric in &scope_metrics.metrics {
                    self.counts.metrics.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Some(sink) = &self.sink {
                        sink(Received::Metric(metric.name.clone(), self.protocol));
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.traces(request.get_ref());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metrics(request.get_ref());
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

async fn http_traces(
    axum::extract::State(collector): axum::extract::State<Collector>,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, Vec<u8>) {
    answer(body, |request| collector.traces(request), &ExportTraceServiceResponse { partial_success: None })
}

async fn http_metrics(
    axum::extract::State(collector): axum::extract::State<Collector>,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, Vec<u8>) {
    answer(
        body,
        |request| collector.metrics(request),
        &ExportMetricsServiceResponse { partial_success: None },
    )
}

/// An OTLP/HTTP answer: `response` once `body` decodes as a `Request` and is handed to
/// `handle`; 400 when it does not decode.
fn answer<Request: prost::Message + Default>(
    body: axum::body::Bytes,
    handle: impl FnOnce(&Request),
    response: &impl prost::Message,
) -> (axum::http::StatusCode, Vec<u8>) {
    match Request::decode(body) {
        Ok(request) => {
            handle(&request);
            (axum::http::StatusCode::OK, response.encode_to_vec())
        }
        Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).map(|kv| text_of(kv.value.as_ref()))
}

/// An attribute's value as text (arrays joined with commas).
fn text_of(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::DoubleValue(number)) => number.to_string(),
        Some(Value::ArrayValue(array)) => {
            array.values.iter().map(|v| text_of(Some(v))).collect::<Vec<_>>().join(",")
        }
        _ => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// `probe otlp ADDRESS GRPC_PORT HTTP_PORT`: prints `ready`, then a line per span and metric.
pub fn probe(address: &str, grpc_port: &str, http_port: &str) {
    let address: IpAddr = address.parse().expect("probe: bad address");
    let print: Sink = Arc::new(|received| {
        use std::io::Write as _;
        let line = match received {
            Received::Span(span) => format!("span {}", span.to_json()),
            Received::Metric(name, protocol) => format!("metric {name} {protocol}"),
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    });
    let _receiver = Receiver::start(
        address,
        grpc_port.parse().expect("probe: bad port"),
        http_port.parse().expect("probe: bad port"),
        Some(print),
    )
    .expect("probe: cannot start the OTLP receiver");
    println!("ready");
    loop {
        std::thread::park();
    }
}
