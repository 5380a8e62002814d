//! The W3C trace context (`traceparent`, `tracestate`) in Kafka message headers, so that one
//! detection's trace continues from `cordon` into `cordon-enforcer` and back.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The header names the context travels in.
pub const HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// The headers that carry `context`'s span (none when it has no valid span).
pub fn headers_of(context: &Context) -> Vec<(&'static str, String)> {
    if !context.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(context, &mut carrier);
    HEADERS.iter().filter_map(|name| carrier.remove(*name).map(|value| (*name, value))).collect()
}

/// The remote context carried by `headers` (name, value); `None` when there is none or it is
/// malformed (a hostile header is ignored, never trusted to crash or mislead anything).
pub fn context_from<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Option<Context> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    for (name, value) in headers {
        if HEADERS.contains(&name) {
            if let Ok(text) = std::str::from_utf8(value) {
                if text.len() <= 512 {
                    carrier.insert(name.to_owned(), text.to_owned());
                }
            }
        }
    }
    if carrier.is_empty() {
        return None;
    }
    let context = TraceContextPropagator::new().extract(&carrier);
    context.span().span_context().is_valid().then_some(context)
}

/// The remote context in a Kafka message's headers, if any.
pub fn context_of_message(message: &impl rdkafka::message::Message) -> Option<Context> {
    use rdkafka::message::Headers as _;
    let headers = message.headers()?;
    context_from(headers.iter().map(|header| (header.key, header.value.unwrap_or_default())))
}

/// Kafka headers that carry `context`'s span.
pub fn kafka_headers(context: &Context) -> rdkafka::message::OwnedHeaders {
    let mut headers = rdkafka::message::OwnedHeaders::new_with_capacity(2);
    for (name, value) in headers_of(context) {
        headers = headers.insert(rdkafka::message::Header { key: name, value: Some(value.as_bytes()) });
    }
    headers
}

/// The trace id of `context` as 32 hex digits, for log lines (empty when it has no span).
pub fn trace_id_of(context: &Context) -> String {
    let span = context.span();
    let span_context = span.span_context();
    if span_context.is_valid() {
        span_context.trace_id().to_string()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    #[test]
    fn a_context_survives_the_round_trip_through_headers() {
        let span = SpanContext::new(
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128),
            SpanId::from(0x00f0_67aa_0ba9_02b7_u64),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let context = Context::new().with_remote_span_context(span);
        let headers = headers_of(&context);
        assert_eq!(
            headers[0],
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned())
        );
        let back = context_from(headers.iter().map(|(k, v)| (*k, v.as_bytes()))).unwrap();
        assert_eq!(trace_id_of(&back), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn hostile_or_missing_headers_give_no_context() {
        assert!(context_from([("traceparent", &b"garbage"[..])]).is_none());
        assert!(context_from([("traceparent", &[0xff, 0xfe][..])]).is_none());
        assert!(context_from([("other", &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..])])
            .is_none());
        let long = format!("00-{}-00f067aa0ba902b7-01", "a".repeat(600));
        assert!(context_from([("traceparent", long.as_bytes())]).is_none());
        assert!(headers_of(&Context::new()).is_empty());
    }
}
