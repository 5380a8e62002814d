//! Spans built with explicit start times, as children of a context (a remote one from a Kafka
//! header, or a local one), when traces are exported; no-ops otherwise. [`Spans`] builds them on
//! the calling thread; [`SpanRecorder`] only records them there and builds them on a thread of
//! its own (for the service's loop, whose time is its throughput).

use std::sync::mpsc::{sync_channel, SyncSender};
use std::time::SystemTime;

use opentelemetry::trace::{
    SpanContext, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator, SdkTracer};

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

/// A span being recorded by a [`SpanRecorder`]: its ids are chosen when it starts (so that its
/// context can go into a Kafka header at once); the SDK span is built when it ends, on the
/// recorder's thread, not on the caller's.
#[derive(Debug)]
pub struct OpenSpan {
    name: &'static str,
    kind: SpanKind,
    context: SpanContext,
    /// Invalid for a root span.
    parent: SpanContext,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    status: Status,
}

impl OpenSpan {
    /// Its context: for children, log lines and Kafka headers.
    pub fn span_context(&self) -> &SpanContext {
        &self.context
    }

    pub fn set_attribute(&mut self, attribute: KeyValue) {
        self.attributes.push(attribute);
    }

    pub fn set_error(&mut self, description: impl Into<std::borrow::Cow<'static, str>>) {
        self.status = Status::error(description);
    }
}

/// Records spans for a thread that must not pay for building them (the service's loop): starting
/// and ending one costs a few allocations; a thread of its own builds and hands them to the
/// exporter. With no tracer, nothing is recorded and every call returns `None` or does nothing.
pub struct SpanRecorder {
    sender: Option<SyncSender<(OpenSpan, SystemTime)>>,
    builder: Option<std::thread::JoinHandle<()>>,
    ids: RandomIdGenerator,
}

/// Spans waiting to be built; beyond it new ones are dropped rather than slow the caller.
const RECORDER_QUEUE: usize = 65_536;

impl SpanRecorder {
    pub fn new(tracer: Option<SdkTracer>) -> SpanRecorder {
        let Some(tracer) = tracer else {
            return SpanRecorder { sender: None, builder: None, ids: RandomIdGenerator::default() };
        };
        let (sender, receiver) = sync_channel::<(OpenSpan, SystemTime)>(RECORDER_QUEUE);
        let builder = std::thread::Builder::new()
            .name("span-builder".into())
            .spawn(move || {
                for (span, end) in receiver {
                    build(&tracer, span, end);
                }
            })
            .ok();
        SpanRecorder { sender: builder.as_ref().map(|_| sender), builder, ids: RandomIdGenerator::default() }
    }

    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Starts a span at `start`, a child of `parent` (a root when `None` or invalid).
    pub fn start(
        &self,
        name: &'static str,
        kind: SpanKind,
        start: SystemTime,
        parent: Option<&SpanContext>,
        attributes: Vec<KeyValue>,
    ) -> Option<OpenSpan> {
        self.sender.as_ref()?;
        let parent = parent.filter(|p| p.is_valid()).cloned().unwrap_or_else(SpanContext::empty_context);
        let trace_id = if parent.is_valid() { parent.trace_id() } else { self.ids.new_trace_id() };
        let context = SpanContext::new(
            trace_id,
            self.ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        Some(OpenSpan { name, kind, context, parent, start, attributes, status: Status::Unset })
    }

    /// Ends `span` now.
    pub fn end(&self, span: OpenSpan) {
        if let Some(sender) = &self.sender {
            let _ = sender.try_send((span, SystemTime::now()));
        }
    }
}

impl Drop for SpanRecorder {
    /// Builds what is queued, so that the exporter's shutdown sends it.
    fn drop(&mut self) {
        self.sender = None;
        if let Some(builder) = self.builder.take() {
            let _ = builder.join();
        }
    }
}

/// The SDK span of a recorded one, with its ids, times, parent and status.
fn build(tracer: &SdkTracer, span: OpenSpan, end: SystemTime) {
    let parent = if span.parent.is_valid() {
        Context::new().with_remote_span_context(span.parent)
    } else {
        Context::new()
    };
    let mut built = tracer
        .span_builder(span.name)
        .with_kind(span.kind)
        .with_trace_id(span.context.trace_id())
        .with_span_id(span.context.span_id())
        .with_start_time(span.start)
        .with_attributes(span.attributes)
        .with_status(span.status)
        .start_with_context(tracer, &parent);
    opentelemetry::trace::Span::end_with_timestamp(&mut built, end);
}
