//! Throughput of the rules engine on ~1 KB generated OCSF events: JSON parsing alone (the floor),
//! evaluation of parsed events, and parse plus evaluation, for 10, 100 and 1,000 rules.
//!
//! Run: `cargo bench -p rules --bench evaluate`. Each iteration evaluates a batch of events with
//! a fresh engine state, so deduplication never short-circuits the work.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rules::{evaluate, EngineState, Event, RuleDirectory, Ruleset, SourceFile};

const EVENTS: usize = 2_000;
const TECHNIQUES: u32 = 3_000;
const NO_TAGS: &[&str] = &[];

/// A small deterministic generator (xorshift64*), so runs are comparable.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u32) -> u32 {
        u32::try_from(self.next() % u64::from(n)).unwrap()
    }
}

fn technique(n: u32) -> String {
    format!("T{}", 1000 + n)
}

/// `count` rules of the kinds a SOC writes: most keyed on ATT&CK techniques with a process and a
/// lab filter, one in ten with a threshold, one in twenty with no technique (checked on every event).
fn rules_text(count: u32) -> String {
    let mut text = String::new();
    for i in 0..count {
        let (a, b) = (technique(i * 2 % TECHNIQUES), technique((i * 2 + 1) % TECHNIQUES));
        let _ = writeln!(text, "---\nid: rule-{i}\ntitle: generated rule {i}\ndetection:");
        if i % 20 == 19 {
            let _ = writeln!(
                text,
                "  selection:\n    severity_id|gte: 5\n    process.cmd_line|contains|all: [-enc, hidden{i}]\n  condition: selection"
            );
        } else {
            let _ = writeln!(
                text,
                "  selection:\n    finding_info.attacks.technique.uid: [{a}, {b}]\n    severity_id|gte: 3\n  \
                 tool:\n    process.name|endswith: [.exe, .dll, .ps1]\n  lab:\n    device.groups.name|contains: lab\n  \
                 condition: selection and tool and not lab"
            );
        }
        if i % 10 == 3 {
            let _ = writeln!(text, "threshold: {{count: 3, within: 10m}}");
        }
        let _ = writeln!(text, "response:\n  isolate: {{mode: automatic, duration: 4h, allow_dns: true}}");
    }
    text
}

fn ruleset(count: u32) -> Ruleset {
    let files = [SourceFile { name: format!("generated-{count}.yaml"), text: rules_text(count) }];
    let directory = RuleDirectory::load(&files, None).unwrap_or_else(|d| panic!("{}", d[0]));
    directory.ruleset().clone()
}

/// ~1 KB OCSF Detection Findings with two ATT&CK techniques each, over 500 hosts.
fn events() -> Vec<String> {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    (0..EVENTS)
        .map(|i| {
            let host = random.below(500);
            let (t1, t2) = (technique(random.below(TECHNIQUES)), technique(random.below(TECHNIQUES)));
            let severity = 1 + random.below(6);
            let time = 1_700_000_000_000_u64 + u64::try_from(i).unwrap() * 50;
            format!(
                r#"{{"activity_id":1,"category_uid":2,"class_uid":2004,"class_name":"Detection Finding","type_uid":200401,"severity_id":{severity},"severity":"High","status_id":1,"time":{time},"metadata":{{"version":"1.3.0","product":{{"name":"Example EDR","vendor_name":"Example","version":"7.12.0"}},"log_name":"detections"}},"finding_info":{{"uid":"finding-{i:08}","title":"Suspicious script execution","desc":"A script interpreter was started with an encoded command line by a user process.","types":["Malware","Execution"],"attacks":[{{"tactic":{{"uid":"TA0002","name":"Execution"}},"technique":{{"uid":"{t1}","name":"Command and Scripting Interpreter"}}}},{{"tactic":{{"uid":"TA0005","name":"Defense Evasion"}},"technique":{{"uid":"{t2}","name":"Obfuscated Files or Information"}}}}]}},"device":{{"uid":"host-{host:04}","hostname":"ws-{host:04}.corp.example.com","ip":"10.1.{}.{}","type_id":2,"os":{{"name":"Windows","type_id":100,"version":"10.0.19045"}},"groups":[{{"name":"finance"}},{{"name":"workstations"}}]}},"process":{{"pid":{},"name":"powershell.exe","cmd_line":"powershell.exe -NoProfile -WindowStyle Hidden -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAKQA=","path":"C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe","user":{{"name":"bob","domain":"CORP"}},"parent_process":{{"pid":4100,"name":"explorer.exe"}}}},"actor":{{"user":{{"name":"bob","domain":"CORP","uid":"S-1-5-21-1004"}}}},"dst_endpoint":{{"ip":"203.0.113.{}","port":443}}}}"#,
                host / 250,
                host % 250,
                1000 + random.below(60_000),
                random.below(250)
            )
        })
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
    group.finish();

    for count in [10, 100, 1000] {
        let ruleset = ruleset(count);
        let mut decisions = 0;
        let mut state = EngineState::new();
        for event in &parsed {
            decisions += evaluate(&ruleset, &mut state, event, event.time_ms(), NO_TAGS).len();
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
                EngineState::new,
                |mut state| {
                    for event in &parsed {
                        black_box(evaluate(&ruleset, &mut state, event, event.time_ms(), NO_TAGS));
                    }
                    state
                },
                BatchSize::LargeInput,
            );
        });
        group.bench_function("parse_and_evaluate", |b| {
            b.iter_batched(
                EngineState::new,
                |mut state| {
                    for text in &texts {
                        let event = Event::parse(text).unwrap();
                        black_box(evaluate(&ruleset, &mut state, &event, event.time_ms(), NO_TAGS));
                    }
                    state
                },
                BatchSize::LargeInput,
            );
        });
        group.finish();
    }
}

criterion_group! {
    name = engine;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(20);
    targets = benchmarks
}
criterion_main!(engine);
