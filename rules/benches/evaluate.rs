//! Throughput of the rules engine on ~1 KB generated OCSF events: JSON parsing alone (the floor),
//! evaluation of parsed events, and parse plus evaluation, for 10, 100 and 1,000 rules.
//!
//! Run: `cargo bench -p rules --bench evaluate`. Each iteration evaluates a batch of events with
//! a fresh engine state, so deduplication never short-circuits the work.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rules::{EngineState, Event, HostIsolations, RuleDirectory, Ruleset, SourceFile};

mod workload;

use workload::{event_from, rules_text, sigma_rules_text, Random, SIGMA_POLICY, TECHNIQUES};

const EVENTS: usize = 2_000;
const NO_TAGS: &[&str] = &[];

fn ruleset(count: u32) -> Ruleset {
    let files = [SourceFile { name: format!("generated-{count}.yaml"), text: rules_text(count) }];
    let directory = RuleDirectory::load(&files, None).unwrap_or_else(|d| panic!("{}", d[0]));
    directory.ruleset().clone()
}

/// The Sigma-style 100 rules (keyword searches of every text, windash, base64offset, fieldref...),
/// with `policy` (e.g. `keyword_fields`) if given.
fn sigma_ruleset(policy: Option<&str>) -> Ruleset {
    let files = [SourceFile { name: "sigma-100.yaml".into(), text: sigma_rules_text(100) }];
    let policy = policy.map(|text| SourceFile { name: "policy.yaml".into(), text: text.into() });
    RuleDirectory::load(&files, policy.as_ref()).unwrap_or_else(|d| panic!("{}", d[0])).ruleset().clone()
}

/// ~1.4 KB OCSF Detection Findings with two ATT&CK techniques each, over 500 hosts.
fn events() -> Vec<String> {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    (0..EVENTS as u64)
        .map(|i| event_from(&mut random, i, 500, 1_700_000_000_000 + i * 50, TECHNIQUES))
        .collect()
}

fn benchmarks(c: &mut Criterion) {
    let texts = events();
    let average = texts.iter().map(String::len).sum::<usize>() / texts.len();
    eprintln!("events: {} of {average} bytes on average", texts.len());
    let parsed: Vec<Event> = texts.iter().map(|text| Event::parse(text).unwrap()).collect();
    let elements = Throughput::Elements(u64::try_from(texts.len()).unwrap());

    let mut group = c.benchmark_group("parse");
    group.throughput(elements.clone());
    group.bench_function("serde_json_value", |b| {
        b.iter(|| {
            for text in &texts {
                black_box(serde_json::from_str::<serde_json::Value>(text).unwrap());
            }
        });
    });
    group.bench_function("event", |b| {
        b.iter(|| {
            for text in &texts {
                black_box(Event::parse(text).unwrap());
            }
        });
    });
    // What `cordon serve` does: only the fields some rule of a 100-rule set reads are kept.
    let projection = ruleset(100).projection().clone();
    group.bench_function("event_projected", |b| {
        b.iter(|| {
            for text in &texts {
                black_box(Event::parse_projected(text, &projection).unwrap());
            }
        });
    });
    // The same with the Sigma-style rules: every text of the event captured for the keywords.
    let projection = sigma_ruleset(None).projection().clone();
    group.bench_function("event_projected_sigma", |b| {
        b.iter(|| {
            for text in &texts {
                black_box(Event::parse_projected(text, &projection).unwrap());
            }
        });
    });
    group.finish();

    for count in [10, 100, 1000] {
        let ruleset = ruleset(count);
        let mut decisions = 0;
        let (mut state, mut isolations) = (EngineState::new(), HostIsolations::new());
        for event in &parsed {
            decisions += isolations.evaluate(&ruleset, &mut state, event, event.time_ms(), NO_TAGS).len();
        }
        eprintln!(
            "{count} rules ({} indexed): {decisions} decisions for {} events",
            ruleset.indexed_rule_count(),
            parsed.len()
        );

        let mut group = c.benchmark_group(format!("{count}_rules"));
        group.throughput(elements.clone());
        group.bench_function("evaluate", |b| {
            b.iter_batched(
                || (EngineState::new(), HostIsolations::new()),
                |(mut state, mut isolations)| {
                    for event in &parsed {
                        black_box(isolations.evaluate(&ruleset, &mut state, event, event.time_ms(), NO_TAGS));
                    }
                    (state, isolations)
                },
                BatchSize::LargeInput,
            );
        });
        group.bench_function("parse_and_evaluate", |b| {
            b.iter_batched(
                || (EngineState::new(), HostIsolations::new()),
                |(mut state, mut isolations)| {
                    for text in &texts {
                        let event = Event::parse(text).unwrap();
                        black_box(isolations.evaluate(&ruleset, &mut state, &event, event.time_ms(), NO_TAGS));
                    }
                    (state, isolations)
                },
                BatchSize::LargeInput,
            );
        });
        group.finish();
    }

    // The service's path (projected parse, then evaluation) with Sigma's costliest features:
    // the plain 100 rules, the Sigma-style 100 (keywords in every text: each is captured while
    // parsing), and the same with `keyword_fields` (only two fields' texts are searched).
    let mut group = c.benchmark_group("service_path_100_rules");
    group.throughput(elements);
    for (name, ruleset) in
        [("plain", ruleset(100)), ("sigma", sigma_ruleset(None)), ("sigma_keyword_fields", sigma_ruleset(Some(SIGMA_POLICY)))]
    {
        group.bench_function(name, |b| {
            b.iter_batched(
                || (EngineState::new(), HostIsolations::new()),
                |(mut state, mut isolations)| {
                    for text in &texts {
                        let event = Event::parse_projected(text, ruleset.projection()).unwrap();
                        black_box(isolations.evaluate(&ruleset, &mut state, &event, event.time_ms(), NO_TAGS));
                    }
                    (state, isolations)
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

criterion_group! {
    name = engine;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(20);
    targets = benchmarks
}
criterion_main!(engine);
