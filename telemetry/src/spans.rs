//! Spans built with explicit start times, as children of a context (a remote one from a Kafka
//! header, or a local one), when traces are exported; no-ops otherwise.

use std::time::SystemTime;

use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;

/// Builds spans when traces are exported; otherwise every call is a no-op returning `None`.
pub struct Spans {
    tracer: Option<SdkTracer>,
}

impl Spans {
    pub fn new(tracer: Option<SdkTracer>) -> Spans {
        Spans { tracer }
    }

    pub fn enabled(&self) -> bool {
        self.tracer.is_some()
    }

    /// Starts a span at `start` as a child of `parent` (a root when it has no span); the
    /// returned context holds it: end it with `context.span().end()`.
    pub fn start(
        &self,
        name: &'static str,
        kind: SpanKind,
        start: SystemTime,
        parent: &Context,
        attributes: Vec<KeyValue>,
    ) -> Option<Context> {
        let tracer = self.tracer.as_ref()?;
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(tracer, parent);
        Some(parent.with_span(span))
    }
}
