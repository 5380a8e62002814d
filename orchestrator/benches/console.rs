//! The console's fleet page with 10,000 hosts, rendered server-side: the view alone (summaries in
//! memory to HTML), what a request to `/console` costs the service (the store's summaries
//! filtered, counted and paged, then rendered; a real sled store), the 2-second refresh of the
//! rows, and the first request after a start (every record read from sled). Criterion.
//!
//! Run: `cargo bench -p orchestrator --bench console`. The numbers go into BENCHMARKS.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use orchestrator::api::HostFilter;
use orchestrator::service::access::Role;
use orchestrator::service::console::views::{self, FleetPage, Viewer, PAGE_SIZE};
use orchestrator::service::lifecycle::{self, HostRecord, HostState, IsolationPlan};
use orchestrator::service::profiles::{IsolationPolicy, PolicyVersion};
use orchestrator::service::store::Store;

const HOSTS: usize = 10_000;
const NOW: i64 = 1_765_000_000_000;

/// A fleet as a SOC sees one: a tenth isolated by rules or operators (timed and manual), some
/// pending approval, most never isolated; every host with an agent report and a few tags.
fn fleet() -> Vec<HostRecord> {
    let seed = PolicyVersion {
        version: 1,
        at_ms: NOW,
        author: "cordon".into(),
        reason: "seed".into(),
        reverted_from: None,
        policy: IsolationPolicy::seed(),
    };
    (0..HOSTS)
        .map(|n| {
            let mut record = HostRecord::new(&format!("host-{n:05}.plant.example.com"), NOW);
            let add: Vec<String> = vec![format!("site-{}", n % 7), format!("line-{}", n % 23)];
            let _ = lifecycle::set_tags(&mut record, &add, &[], "operator bench", NOW);
            let plan = IsolationPlan {
                duration_seconds: (n % 3 != 0).then_some(3_600 + n as u64),
                exclusions: vec!["out,tcp,198.51.100.7/32,443".into()],
                ..IsolationPlan::default()
            };
            match n % 10 {
                0 => {
                    lifecycle::operator_isolate(&mut record, &plan, seed.profile_in_force(&[]), "IR-1", "operator bench", NOW);
                }
                1 if n % 20 == 1 => record.state = HostState::PendingApproval,
                _ => {}
            }
            record.last_seen_ms = Some(NOW - 5_000);
            record
        })
        .collect()
}

fn viewer() -> Viewer {
    Viewer { operator: "alice".into(), role: Role::Responder, csrf: "c".repeat(64), pending: 500 }
}

fn fleet_page(c: &mut Criterion) {
    let all = fleet();
    let viewer = viewer();
    let mut group = c.benchmark_group("fleet_page_10000_hosts");
    group.sample_size(20);
    let summaries: std::collections::BTreeMap<String, _> = all.iter().map(|r| (r.host.clone(), r.summary())).collect();
    group.bench_function("render_first_page", |b| {
        b.iter(|| {
            let page = FleetPage::of(&summaries, HostFilter::default(), 0);
            black_box(views::fleet(&viewer, &page, NOW).into_string().len())
        });
    });
    let dir = std::env::temp_dir().join(format!("cordon-bench-console-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir).expect("open a scratch store");
    for record in &all {
        store.put_host(None, record).expect("stage a host");
    }
    store.commit().expect("commit the fleet");
    let size = views::fleet(&viewer, &FleetPage::of(&summaries, HostFilter::default(), 0), NOW).into_string().len();
    println!("fleet page: {size} bytes of HTML (the first {PAGE_SIZE} of {HOSTS} hosts)");
    // What GET /console costs the service once the summaries are in memory.
    group.bench_function("request_page", |b| {
        b.iter(|| {
            let page = store.with_fleet(|fleet| FleetPage::of(fleet, HostFilter::default(), 0)).expect("the fleet");
            black_box(views::fleet(&viewer, &page, NOW).into_string().len())
        });
    });
    let isolated = HostFilter { tag: Some(lifecycle::ISOLATED_TAG.into()), state: None };
    group.bench_function("request_isolated_only", |b| {
        b.iter(|| {
            let page = store.with_fleet(|fleet| FleetPage::of(fleet, isolated.clone(), 0)).expect("the fleet");
            black_box(views::fleet(&viewer, &page, NOW).into_string().len())
        });
    });
    group.bench_function("request_rows_refresh", |b| {
        b.iter(|| {
            let page = store.with_fleet(|fleet| FleetPage::of(fleet, HostFilter::default(), 0)).expect("the fleet");
            black_box(views::fleet_rows(&page, NOW).into_string().len())
        });
    });
    group.finish();
    // The first look after a start reads every record from sled once.
    let started = std::time::Instant::now();
    drop(store);
    let store = Store::open(&dir).expect("reopen the store");
    let opened = started.elapsed();
    let started = std::time::Instant::now();
    let page = store.with_fleet(|fleet| FleetPage::of(fleet, HostFilter::default(), 0)).expect("the fleet");
    let html = views::fleet(&viewer, &page, NOW).into_string();
    println!(
        "first request after a start (every record read and summarised): {:.1} ms ({} bytes; the open took {:.1} ms)",
        started.elapsed().as_secs_f64() * 1e3,
        html.len(),
        opened.as_secs_f64() * 1e3
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, fleet_page);
criterion_main!(benches);
