//! What `cordon` and `cordon-enforcer` share for observability: their `[telemetry]` settings,
//! logs (human or JSON lines), OTLP export of traces and metrics (gRPC or HTTP, configured by the
//! file or the standard `OTEL_*` variables, nothing at all when neither says where), the W3C trace
//! context carried in Kafka message headers, and metrics kept in atomics that are served as
//! Prometheus text and exported over OTLP from the same values.

pub mod export;
pub mod logs;
pub mod metrics;
pub mod propagation;
pub mod spans;

pub use export::{collector_addresses, Telemetry, TelemetryError, TelemetrySection};
pub use logs::LogFormat;
pub use spans::Spans;
