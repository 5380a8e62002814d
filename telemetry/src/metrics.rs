//! Metrics kept in atomics (cheap to update on the hot path), served as Prometheus text at
//! `/metrics` and, when OTLP export is on, exported from the same values: counters and gauges
//! as observable instruments read at each export, histograms recorded into an OTLP histogram
//! as well.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;

/// A count that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }
    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Values by one label (rule, mode, reason, state): few distinct values, never host ids.
#[derive(Debug)]
pub struct Family {
    label: &'static str,
    values: Mutex<BTreeMap<String, i64>>,
}

impl Family {
    fn new(label: &'static str) -> Family {
        Family { label, values: Mutex::new(BTreeMap::new()) }
    }
    pub fn add(&self, value: &str, delta: i64) {
        let mut values = self.values.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match values.get_mut(value) {
            Some(current) => *current += delta,
            None => {
                values.insert(value.to_owned(), delta);
            }
        }
    }
    pub fn set(&self, value: &str, to: i64) {
        let mut values = self.values.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        values.insert(value.to_owned(), to);
    }
    pub fn get(&self, value: &str) -> i64 {
        let values = self.values.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        values.get(value).copied().unwrap_or(0)
    }
    fn snapshot(&self) -> Vec<(String, i64)> {
        let values = self.values.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        values.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// A distribution of durations in seconds over fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, plus +Inf.
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// The sum in microseconds (an integer, so that it can be an atomic).
    sum_micros: AtomicU64,
    otlp: OnceLock<opentelemetry::metrics::Histogram<f64>>,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            otlp: OnceLock::new(),
        }
    }

    pub fn observe(&self, seconds: f64) {
        let seconds = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
        let slot = self.bounds.iter().position(|bound| seconds <= *bound).unwrap_or(self.bounds.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "non-negative and finite, checked above"
        )]
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        if let Some(histogram) = self.otlp.get() {
            histogram.record(seconds, &[]);
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Latency buckets from 1 ms to 10 min (seconds).
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0];

#[derive(Debug, Clone)]
enum Kind {
    Counter(Arc<Counter>),
    CounterFamily(Arc<Family>),
    Gauge(Arc<Gauge>),
    GaugeFamily(Arc<Family>),
    Histogram(Arc<Histogram>),
}

#[derive(Debug, Clone)]
struct Entry {
    name: &'static str,
    help: &'static str,
    kind: Kind,
}

/// Every metric of a process, in the order they were registered. Names are Prometheus names
/// (`cordon_events_consumed_total`); the OTLP name drops the `_total` of counters.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Vec<Entry>,
    /// Instruments registered with an OTLP meter: kept alive here.
    otlp_instruments: Mutex<Vec<Box<dyn std::any::Any + Send + Sync>>>,
}

impl Registry {
    pub fn counter(&mut self, name: &'static str, help: &'static str) -> Arc<Counter> {
        self.register(name, help, Arc::default(), Kind::Counter)
    }
    pub fn counter_family(
        &mut self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
    ) -> Arc<Family> {
        self.register(name, help, Arc::new(Family::new(label)), Kind::CounterFamily)
    }
    pub fn gauge(&mut self, name: &'static str, help: &'static str) -> Arc<Gauge> {
        self.register(name, help, Arc::default(), Kind::Gauge)
    }
    pub fn gauge_family(
        &mut self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
    ) -> Arc<Family> {
        self.register(name, help, Arc::new(Family::new(label)), Kind::GaugeFamily)
    }
    pub fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        bounds: &'static [f64],
    ) -> Arc<Histogram> {
        self.register(name, help, Arc::new(Histogram::new(bounds)), Kind::Histogram)
    }

    /// Adds `metric` as `kind`; returns it for its owner to update.
    fn register<M>(
        &mut self,
        name: &'static str,
        help: &'static str,
        metric: Arc<M>,
        kind: fn(Arc<M>) -> Kind,
    ) -> Arc<M> {
        self.entries.push(Entry { name, help, kind: kind(Arc::clone(&metric)) });
        metric
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render_prometheus(&self) -> String {
        let mut out = String::with_capacity(4096);
        for Entry { name, help, kind } in &self.entries {
            let type_name = match kind {
                Kind::Counter(_) | Kind::CounterFamily(_) => "counter",
                Kind::Gauge(_) | Kind::GaugeFamily(_) => "gauge",
                Kind::Histogram(_) => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {type_name}");
            match kind {
                Kind::Counter(counter) => {
                    let _ = writeln!(out, "{name} {}", counter.get());
                }
                Kind::Gauge(gauge) => {
                    let _ = writeln!(out, "{name} {}", gauge.get());
                }
                Kind::CounterFamily(family) | Kind::GaugeFamily(family) => {
                    for (value, count) in family.snapshot() {
                        let _ =
                            writeln!(out, "{name}{{{}=\"{}\"}} {count}", family.label, escape_label(&value));
                    }
                }
                Kind::Histogram(histogram) => {
                    let mut cumulative = 0;
                    for (slot, bucket) in histogram.buckets.iter().enumerate() {
                        cumulative += bucket.load(Ordering::Relaxed);
                        let bound =
                            histogram.bounds.get(slot).map_or_else(|| "+Inf".to_owned(), ToString::to_string);
                        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
                    }
                    #[allow(clippy::cast_precision_loss, reason = "a sum of seconds in microseconds")]
                    let sum = histogram.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
                    let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {}", histogram.count());
                }
            }
        }
        out
    }

    /// Exports every metric through `meter` from now on (called once, when OTLP is on).
    pub fn export_to(&self, meter: &Meter) {
        let mut kept = self.otlp_instruments.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for Entry { name, help, kind } in &self.entries {
            let otlp_name = name.strip_suffix("_total").unwrap_or(name);
            match kind.clone() {
                Kind::Counter(counter) => kept.push(Box::new(
                    meter
                        .u64_observable_counter(otlp_name)
                        .with_description(*help)
                        .with_callback(move |observer| observer.observe(counter.get(), &[]))
                        .build(),
                )),
                Kind::Gauge(gauge) => kept.push(Box::new(
                    meter
                        .i64_observable_gauge(otlp_name)
                        .with_description(*help)
                        .with_callback(move |observer| observer.observe(gauge.get(), &[]))
                        .build(),
                )),
                Kind::CounterFamily(family) => kept.push(Box::new(
                    meter
                        .u64_observable_counter(otlp_name)
                        .with_description(*help)
                        .with_callback(move |observer| {
                            for (value, count) in family.snapshot() {
                                observer.observe(
                                    u64::try_from(count).unwrap_or(0),
                                    &[KeyValue::new(family.label, value)],
                                );
                            }
                        })
                        .build(),
                )),
                Kind::GaugeFamily(family) => kept.push(Box::new(
                    meter
                        .i64_observable_gauge(otlp_name)
                        .with_description(*help)
                        .with_callback(move |observer| {
                            for (value, count) in family.snapshot() {
                                observer.observe(count, &[KeyValue::new(family.label, value)]);
                            }
                        })
                        .build(),
                )),
                Kind::Histogram(histogram) => {
                    let instrument = meter
                        .f64_histogram(otlp_name.strip_suffix("_seconds").unwrap_or(otlp_name))
                        .with_description(*help)
                        .with_unit("s")
                        .with_boundaries(histogram.bounds.to_vec())
                        .build();
                    let _ = histogram.otlp.set(instrument);
                }
            }
        }
    }
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_help_type_labels_and_cumulative_buckets() {
        let mut registry = Registry::default();
        let consumed = registry.counter("x_events_total", "Events.");
        let by_rule = registry.counter_family("x_matches_total", "Matches.", "rule");
        let isolated = registry.gauge("x_isolated", "Isolated now.");
        let latency = registry.histogram("x_latency_seconds", "Latency.", &[0.01, 0.1]);
        consumed.add(3);
        by_rule.add("ransom\"ware", 2);
        isolated.set(-1);
        latency.observe(0.005);
        latency.observe(0.05);
        latency.observe(7.0);
        let text = registry.render_prometheus();
        for line in [
            "# TYPE x_events_total counter",
            "x_events_total 3",
            "x_matches_total{rule=\"ransom\\\"ware\"} 2",
            "x_isolated -1",
            "# TYPE x_latency_seconds histogram",
            "x_latency_seconds_bucket{le=\"0.01\"} 1",
            "x_latency_seconds_bucket{le=\"0.1\"} 2",
            "x_latency_seconds_bucket{le=\"+Inf\"} 3",
            "x_latency_seconds_sum 7.055",
            "x_latency_seconds_count 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
