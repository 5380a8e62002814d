//! The console's pages as pure functions of the state they show: records, audit entries, the
//! policy and the time in, HTML out (maud: every value escaped). No inline script or style, so
//! the Content-Security-Policy can forbid both; live parts poll with htmx, countdowns tick in
//! `console.js`.

use maud::{html, Markup, DOCTYPE};

use super::forms::{BulkForm, Fields, HistoryFilter, IsolateForm, Problems, ProfileForm};
use crate::api::{rfc3339, HostFilter};
use crate::client::encode;
use crate::service::access::Role;
use crate::service::api::BulkOutcome;
use crate::service::lifecycle::{AuditEntry, HostRecord, HostState, HostSummary, IsolationPlan, ISOLATED_TAG};
use crate::service::profiles::{format_seconds, Change, PolicyVersion, ProfileInForce};

/// The htmx file the pages load (vendored, pinned: `orchestrator/assets/README.md`).
pub const HTMX_PATH: &str = "/console/assets/htmx-2.0.11.min.js";

/// The part of the console a page belongs to (marked in the navigation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Fleet,
    Approvals,
    Bulk,
    Policy,
    History,
}

/// Who is signed in, for the navigation and the forms.
#[derive(Clone, Debug)]
pub struct Viewer {
    pub operator: String,
    pub role: Role,
    pub csrf: String,
    /// Hosts waiting for an approval (shown in the navigation).
    pub pending: usize,
}

impl Viewer {
    fn may(&self, role: Role) -> bool {
        self.role >= role
    }
}

/// A whole page: the head, the navigation (when signed in) and `body`.
pub fn page(title: &str, viewer: Option<(&Viewer, Section)>, body: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // No eval, no injected styles: what the Content-Security-Policy allows.
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"historyCacheSize":0}"#;
                title { (title) " · cordon" }
                link rel="stylesheet" href="/console/assets/console.css";
                // console.js first: it counts policy violations, htmx's included.
                script src="/console/assets/console.js" defer {}
                script src=(HTMX_PATH) defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                @if let Some((viewer, section)) = viewer {
                    (navigation(viewer, section))
                }
                main #main tabindex="-1" { (body) }
            }
        }
    }
}

fn navigation(viewer: &Viewer, section: Section) -> Markup {
    let item = |target: Section, href: &str, label: String| {
        html! {
            li { a href=(href) aria-current=[(target == section).then_some("page")] { (label) } }
        }
    };
    let approvals = if viewer.pending > 0 { format!("Approvals ({})", viewer.pending) } else { "Approvals".to_owned() };
    html! {
        header.top {
            nav aria-label="Main" {
                span.brand { "cordon" }
                ul {
                    (item(Section::Fleet, "/console", "Fleet".into()))
                    (item(Section::Approvals, "/console/approvals", approvals))
                    (item(Section::Bulk, "/console/bulk", "Bulk".into()))
                    (item(Section::Policy, "/console/policy", "Policy".into()))
                    (item(Section::History, "/console/history", "History".into()))
                }
                form.signout method="post" action="/console/sign-out" {
                    (csrf_field(viewer))
                    span.who { (viewer.operator) " (" (viewer.role.name()) ")" }
                    button type="submit" { "Sign out" }
                }
            }
        }
    }
}

fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

/// The URL of a host's page.
pub fn host_url(host: &str) -> String {
    format!("/console/hosts/{}", encode(host))
}

/// `2h 03m 05s`, `4m 10s`, `9s`: what is left of `ms`.
pub fn time_left(ms: i64) -> String {
    if ms <= 0 {
        return "due".to_owned();
    }
    let total = (ms + 999) / 1_000;
    let (days, hours, minutes, seconds) = (total / 86_400, total / 3_600 % 24, total / 60 % 60, total % 60);
    if days > 0 {
        format!("{days}d {hours:02}h {minutes:02}m")
    } else if hours > 0 {
        format!("{hours}h {minutes:02}m {seconds:02}s")
    } else if minutes > 0 {
        format!("{minutes}m {seconds:02}s")
    } else {
        format!("{seconds}s")
    }
}

/// A countdown to `deadline`: rendered now, kept ticking by `console.js` (which counts from when
/// the element arrived, so the browser's clock does not matter).
fn countdown(deadline_ms: Option<i64>, now_ms: i64) -> Markup {
    if let Some(deadline) = deadline_ms {
        html! {
            time.countdown datetime=(rfc3339(deadline)) data-left-ms=(deadline - now_ms) title=(rfc3339(deadline)) {
                (time_left(deadline - now_ms))
            }
        }
    } else {
        html! { span.muted { "—" } }
    }
}

fn state_badge(state: HostState) -> Markup {
    html! { span class={"state state-" (state.name())} { (state.name().replace('_', " ")) } }
}

/// How the host's agent is: tampered, stale, never heard from, or its last report's age.
fn agent_health(record: &HostRecord, now_ms: i64) -> Markup {
    html! {
        @if record.tampered.is_some() {
            span.bad { "TAMPERED" }
        } @else if record.agent_stale {
            span.warn { "stale" }
        } @else {
            @match record.last_seen_ms {
                None => span.muted { "never heard from" },
                Some(seen) => span.good { "ok, " (time_left(now_ms - seen + 1)) " ago" },
            }
        }
    }
}

fn problems_box(problems: &Problems) -> Markup {
    html! {
        @if !problems.is_empty() {
            div.problems role="alert" {
                p { strong { "Nothing was changed. " } "Please correct:" }
                ul {
                    @for (field, found) in problems {
                        @for problem in found {
                            li {
                                @if !field.is_empty() { (field) ": " }
                                (problem)
                            }
                        }
                    }
                }
            }
        }
    }
}

fn field_problems(problems: &Problems, field: &str, id: &str) -> Markup {
    html! {
        @if let Some(found) = problems.get(field) {
            ul.field-problems id=(id) {
                @for problem in found { li { (problem) } }
            }
        }
    }
}

/// `aria-describedby` and `aria-invalid` for a field with problems.
fn invalid(problems: &Problems, field: &str) -> Option<&'static str> {
    problems.contains_key(field).then_some("true")
}

// ---------------------------------------------------------------------------------------------
// Sign in

pub fn sign_in(error: Option<&str>, shared_token: bool) -> Markup {
    let body = html! {
        div.narrow {
            h1 { "Sign in to cordon" }
            @if let Some(error) = error {
                div.problems role="alert" { p { (error) } }
            }
            form method="post" action="/console/sign-in" {
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                p.hint { "Your token from the tokens file (cordon token new), or the service's api-token. It is kept only in this session's cookie, never in the page." }
                @if shared_token {
                    label for="name" { "Your name, for the audit trail" }
                    input #name type="text" name="name" maxlength="64" autocomplete="username";
                }
                button type="submit" { "Sign in" }
            }
        }
    };
    page("Sign in", None, &body)
}

/// A page saying what went wrong (and that nothing changed, where it did not).
pub fn message(viewer: Option<(&Viewer, Section)>, title: &str, text: &str) -> Markup {
    let body = html! {
        h1 { (title) }
        div.problems role="alert" { p { (text) } }
        p { a href="/console" { "Back to the fleet" } }
    };
    page(title, viewer, &body)
}

// ---------------------------------------------------------------------------------------------
// Fleet

/// How many hosts one page of the fleet list shows.
pub const PAGE_SIZE: usize = 250;

/// One page of the fleet list: the hosts the filter selects, [`PAGE_SIZE`] at a time, and what
/// the whole fleet holds.
#[derive(Clone, Debug)]
pub struct FleetPage {
    pub filter: HostFilter,
    /// From 0.
    pub page: usize,
    pub rows: Vec<HostSummary>,
    /// How many hosts the filter selects.
    pub matched: usize,
    pub total: usize,
    pub by_state: Vec<(HostState, usize)>,
    /// Every tag some host carries (for the tag filter's suggestions).
    pub tags: Vec<String>,
}

impl FleetPage {
    pub fn of(fleet: &std::collections::BTreeMap<String, HostSummary>, filter: HostFilter, page: usize) -> FleetPage {
        let mut by_state = [0_usize; HostState::ALL.len()];
        let mut tags = std::collections::BTreeSet::new();
        let mut matched = 0;
        let mut rows = Vec::with_capacity(PAGE_SIZE);
        let first = page.saturating_mul(PAGE_SIZE);
        for summary in fleet.values() {
            if let Some(slot) = HostState::ALL.iter().position(|state| *state == summary.state) {
                by_state[slot] += 1;
            }
            for tag in &summary.tags {
                if !tags.contains(tag.as_str()) {
                    tags.insert(tag.clone());
                }
            }
            if filter.selects(summary.state, &summary.tags) {
                if matched >= first && rows.len() < PAGE_SIZE {
                    rows.push(summary.clone());
                }
                matched += 1;
            }
        }
        FleetPage {
            filter,
            page,
            rows,
            matched,
            total: fleet.len(),
            by_state: HostState::ALL.into_iter().zip(by_state).collect(),
            tags: tags.into_iter().collect(),
        }
    }

    /// The filter (and page) as a query string.
    fn query(&self, page: usize) -> String {
        let mut query = Vec::new();
        if let Some(state) = self.filter.state.as_deref().filter(|s| !s.is_empty()) {
            query.push(format!("state={}", encode(state)));
        }
        if let Some(tag) = self.filter.tag.as_deref().filter(|t| !t.is_empty()) {
            query.push(format!("tag={}", encode(tag)));
        }
        if page > 0 {
            query.push(format!("page={page}"));
        }
        query.join("&")
    }
}

/// How the host's agent is: tampered, stale, never heard from, or its last report's age.
fn summary_health(summary: &HostSummary, now_ms: i64) -> Markup {
    html! {
        @if summary.tampered {
            span.bad { "TAMPERED" }
        } @else if summary.agent_stale {
            span.warn { "stale" }
        } @else {
            @match summary.last_seen_ms {
                None => span.muted { "never heard from" },
                Some(seen) => span.good { "ok, " (time_left(now_ms - seen + 1)) " ago" },
            }
        }
    }
}

/// The fleet page: the hosts the filter selects, with state, mode, time left, tags and agent
/// health, kept up to date while open.
pub fn fleet(viewer: &Viewer, fleet: &FleetPage, now_ms: i64) -> Markup {
    let isolated_link = format!("/console?tag={}", encode(ISOLATED_TAG));
    let pages = fleet.matched.div_ceil(PAGE_SIZE).max(1);
    let body = html! {
        h1 { "Fleet" }
        p.summary {
            (fleet.total) " hosts: "
            @for (state, count) in &fleet.by_state {
                a href={"/console?state=" (state.name())} { (count) " " (state.name().replace('_', " ")) } " · "
            }
            a.isolated href=(isolated_link) { (ISOLATED_TAG) }
        }
        form.filters method="get" action="/console" {
            label for="state" { "State" }
            select #state name="state" {
                option value="" selected[fleet.filter.state.as_deref().unwrap_or("").is_empty()] { "any" }
                @for state in HostState::ALL {
                    option value=(state.name()) selected[fleet.filter.state.as_deref() == Some(state.name())] { (state.name().replace('_', " ")) }
                }
            }
            label for="tag" { "Tag" }
            input #tag type="text" name="tag" list="known-tags" value=(fleet.filter.tag.as_deref().unwrap_or(""));
            datalist #known-tags { @for tag in &fleet.tags { option value=(tag) {} } }
            button type="submit" { "Filter" }
            a href="/console" { "Clear" }
        }
        @if viewer.may(Role::Responder) {
            form.inline method="get" action="/console/isolate" {
                label for="new-host" { "Isolate a host by id" }
                input #new-host type="text" name="host" required maxlength="255";
                button type="submit" { "Continue" }
            }
        }
        div.table-wrap {
            table.fleet {
                caption {
                    (fleet.matched) " host(s) match"
                    @if pages > 1 { "; page " (fleet.page + 1) " of " (pages) }
                }
                thead { tr { th scope="col" { "Host" } th scope="col" { "State" } th scope="col" { "Mode" } th scope="col" { "Time left" } th scope="col" { "Tags" } th scope="col" { "Agent" } th scope="col" { "Profile" } } }
                (fleet_rows(fleet, now_ms))
            }
        }
        @if pages > 1 {
            nav.pages aria-label="Pages" {
                @if fleet.page > 0 { a href={"/console?" (fleet.query(fleet.page - 1))} { "← Previous" } " " }
                @if fleet.page + 1 < pages { a href={"/console?" (fleet.query(fleet.page + 1))} { "Next →" } }
            }
        }
    };
    page("Fleet", Some((viewer, Section::Fleet)), &body)
}

/// The fleet table's rows, the part that refreshes itself every 2 s.
pub fn fleet_rows(fleet: &FleetPage, now_ms: i64) -> Markup {
    let source = format!("/console/fleet/rows?{}", fleet.query(fleet.page));
    html! {
        tbody #fleet-rows hx-get=(source) hx-trigger="every 2s" hx-swap="outerHTML" {
            @if fleet.rows.is_empty() {
                tr { td colspan="7" { "No host matches." } }
            }
            @for summary in &fleet.rows {
                tr {
                    th scope="row" { a href=(host_url(&summary.host)) { (summary.host) } }
                    td { (state_badge(summary.state)) }
                    td { (summary.mode.map_or("—", cordon_wire::IsolationMode::name)) }
                    td { (countdown(summary.expires_at_ms, now_ms)) }
                    td.tags { @for tag in &summary.tags { span class=@if tag == ISOLATED_TAG { "tag tag-isolated" } @else { "tag" } { (tag) } " " } }
                    td { (summary_health(summary, now_ms)) }
                    td { @if let Some(profile) = &summary.profile { (profile) } @else { span.muted { "—" } } }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Host

/// A failed action on the host page: which form, what was posted, what is wrong.
pub struct Failed<'a> {
    pub action: &'a str,
    pub fields: &'a Fields,
    pub problems: &'a Problems,
}

/// A host's page: where its isolation stands (requested, sent, applied by the agent,
/// confirmed), why, the countdown, the exclusions in force, its agent's last report, the actions
/// the viewer's role allows, and the whole audit trail.
pub fn host(viewer: &Viewer, record: &HostRecord, audit: &[AuditEntry], now_ms: i64, failed: Option<&Failed<'_>>) -> Markup {
    let url = host_url(&record.host);
    let body = html! {
        p.crumbs { a href="/console" { "Fleet" } " / " (record.host) }
        h1 { (record.host) }
        @if let Some(failed) = failed { (problems_box(failed.problems)) }
        (host_live(record, audit, now_ms))
        @if viewer.may(Role::Responder) {
            (host_actions(viewer, record, &url, failed))
        }
    };
    page(&record.host, Some((viewer, Section::Fleet)), &body)
}

/// The host page's live part: refreshed every 2 s.
pub fn host_live(record: &HostRecord, audit: &[AuditEntry], now_ms: i64) -> Markup {
    let source = format!("{}/live", host_url(&record.host));
    let issued = record.last_command.as_ref().and_then(|_| {
        audit.iter().rev().find(|e| e.generation == record.generation && matches!(e.to, HostState::Isolating | HostState::Releasing))
    });
    let status = record.last_status.as_ref();
    let applied = status.filter(|s| s.generation >= record.generation && s.kind != cordon_wire::StatusKind::Refused);
    let refused = status.filter(|s| s.generation >= record.generation && s.kind == cordon_wire::StatusKind::Refused);
    let confirmed = applied.is_some() && matches!(record.state, HostState::Isolated | HostState::Released);
    let what = match &record.last_command {
        Some(cordon_wire::Action::Isolate { .. }) => "isolation",
        Some(cordon_wire::Action::Release { .. }) => "release",
        None => "",
    };
    html! {
        div #live hx-get=(source) hx-trigger="every 2s" hx-swap="outerHTML" {
            p.now { "Now " span #host-state { (state_badge(record.state)) } }
            @if let Some(tampered) = &record.tampered {
                div.alarm role="alert" {
                    p { strong { "TAMPERED" } " at " (rfc3339(tampered.at_ms)) ": " (tampered.what) }
                    p { "cordon: " (tampered.response) }
                }
            }
            @if let Some(pending) = &record.pending {
                section.pending aria-labelledby="pending-h" {
                    h2 #pending-h { "Waiting for approval" }
                    p { (pending_text(pending)) " " a href="/console/approvals" { "Approvals" } }
                }
            }
            section aria-labelledby="progress-h" {
                h2 #progress-h { "Where the " (if what.is_empty() { "host" } else { what }) " stands" }
                @if record.last_command.is_none() {
                    p.muted { "cordon has sent this host no command." }
                } @else {
                    ol.progress {
                        li.done {
                            strong { "Requested" } " — "
                            @if let Some(entry) = issued {
                                (rfc3339(entry.at_ms)) " by " (entry.by) ": " (entry.why)
                            } @else {
                                "generation " (record.generation)
                            }
                        }
                        li class=@if record.last_error.as_deref().is_some_and(|e| e.contains("parked") || e.contains("NOT sent")) { "failed" } @else { "done" } {
                            strong { "Sent" } " — command generation " (record.generation)
                            @match record.command_issued_at_ms {
                                Some(at) => { ", awaiting the agent's answer since " (rfc3339(at)) @if record.resends > 0 { " (" (record.resends) " resend(s))" } }
                                None => { ", answered" }
                            }
                        }
                        li class=@if refused.is_some() { "failed" } @else if applied.is_some() { "done" } @else { "waiting" } {
                            strong { "Applied by the agent" } " — "
                            @if let Some(refused) = refused {
                                "refused: " (refused.refusal.map(|r| r.to_string()).or_else(|| refused.error.clone()).unwrap_or_default())
                            } @else if let Some(applied) = applied {
                                "at generation " (applied.generation) ", reported " (rfc3339(applied.sent_at_ms))
                            } @else {
                                "not yet"
                            }
                        }
                        li class=@if confirmed { "done" } @else { "waiting" } {
                            strong { "Confirmed" } " — "
                            @if confirmed { "the host is " (record.state.name().replace('_', " ")) } @else { "not yet" }
                        }
                    }
                }
                dl.facts {
                    dt { "Mode" } dd { (record.mode.map_or("—", cordon_wire::IsolationMode::name)) }
                    dt { "Time left" } dd { (countdown(record.expires_at_ms, now_ms)) @if let Some(at) = record.expires_at_ms { " (until " (rfc3339(at)) ")" } }
                    dt { "Why" } dd { (why(record)) }
                    dt { "Profile" } dd { @if let Some(p) = &record.profile { (p.name) " (policy version " (p.version) ")" } @else { "—" } }
                    dt { "Tags" } dd { @if record.tags.is_empty() { "—" } @else { (record.tags.join(", ")) } }
                    @if let Some(error) = &record.last_error { dt { "Last error" } dd.bad { (error) } }
                }
            }
            section aria-labelledby="open-h" {
                h2 #open-h { "Exclusions in force" }
                (exclusions_in_force(record))
            }
            section aria-labelledby="agent-h" {
                h2 #agent-h { "The agent's last report" }
                @match status {
                    None => p.muted { "The agent has not reported (or its key is not enrolled: Agents in the CLI)." },
                    Some(status) => dl.facts {
                        dt { "Seen" } dd { (agent_health(record, now_ms)) " (" (rfc3339(record.last_seen_ms.unwrap_or(status.sent_at_ms))) ")" }
                        dt { "Report" } dd { (format!("{:?}", status.kind).to_lowercase()) ", generation " (status.generation) }
                        dt { "Isolated" } dd { (if status.isolated { "yes" } else { "no" }) @if let Some(mode) = status.mode { " (" (mode.name()) ")" } }
                        dt { "Packets" } dd { (status.packets_dropped) " dropped, " (status.packets_allowed) " allowed" }
                    },
                }
            }
            section aria-labelledby="audit-h" {
                h2 #audit-h { "Audit trail" }
                (audit_table(audit, false))
            }
        }
    }
}

/// Who or what is behind the current (or last) isolation.
fn why(record: &HostRecord) -> Markup {
    html! {
        @if record.rules.is_empty() {
            "—"
        } @else if record.rules.iter().all(|r| r.starts_with("operator ")) {
            (record.rules.join(", "))
        } @else {
            "rules " (record.rules.join(", "))
            @if let Some(event) = &record.event_id { ", finding " code { (event) } }
        }
    }
}

fn pending_text(pending: &crate::service::lifecycle::Proposal) -> String {
    format!(
        "Rules {} ask for {} isolation{} (finding {}, {} request(s), since {}).",
        pending.rules.join(", "),
        if pending.plan.duration_seconds.is_some() { "an automatic" } else { "a manual" },
        pending.plan.duration_seconds.map(|s| format!(" of {}", format_seconds(s))).unwrap_or_default(),
        pending.event_id,
        pending.requests,
        rfc3339(pending.requested_at_ms)
    )
}

fn exclusions_in_force(record: &HostRecord) -> Markup {
    let sent = match &record.last_command {
        Some(cordon_wire::Action::Isolate { exclusions, allowed_processes, allow_dns, allow_dhcp, .. }) => {
            Some((exclusions, allowed_processes, *allow_dns, *allow_dhcp))
        }
        _ => None,
    };
    let reported = record.last_status.as_ref().filter(|s| s.isolated).map(|s| &s.exclusions);
    html! {
        @match sent {
            None => p.muted { "None: no isolation was sent." },
            Some((exclusions, processes, dns, dhcp)) => {
                p { "Sent to the agent (the profile's, then what was asked):" }
                ul.specs {
                    @for spec in exclusions { li { code { (spec) } } }
                    @for name in processes { li { "process " code { (name) } } }
                    @if dns { li { "DNS to the host's resolvers" } }
                    @if dhcp { li { "DHCP" } }
                    @if exclusions.is_empty() && processes.is_empty() && !dns && !dhcp { li { "nothing: every connection is cut" } }
                }
            }
        }
        @if let Some(reported) = reported {
            p { "Enforced, as the agent reports it (with its own management channel):" }
            ul.specs { @for spec in reported { li { code { (spec) } } } }
        }
    }
}

fn host_actions(viewer: &Viewer, record: &HostRecord, url: &str, failed: Option<&Failed<'_>>) -> Markup {
    let value = |action: &str, field: &str| -> String {
        failed.filter(|f| f.action == action).map(|f| f.fields.get(field).to_owned()).unwrap_or_default()
    };
    let timed = record.state.isolation_in_force() && record.expires_at_ms.is_some();
    html! {
        section.actions aria-labelledby="actions-h" {
            h2 #actions-h { "Actions" }
            div.action-grid {
                div.action {
                    h3 { "Isolate" }
                    p { "Cut the host off the network (you confirm on the next page)." }
                    a.button href={(url) "/isolate"} { "Isolate " (record.host) "…" }
                }
                @if record.state != HostState::PendingApproval {
                    form.action method="post" action={(url) "/release"} {
                        h3 { "Release" }
                        (csrf_field(viewer))
                        label for="release-reason" { "Reason" }
                        input #release-reason type="text" name="reason" required maxlength="1024" value=(value("release", "reason"));
                        button type="submit" { "Release " (record.host) }
                    }
                }
                @if timed {
                    form.action method="post" action={(url) "/extend"} {
                        h3 { "Extend" }
                        (csrf_field(viewer))
                        label for="extend-by" { "By (e.g. 30m, 4h)" }
                        input #extend-by type="text" name="by" required value=(value("extend", "by"));
                        label for="extend-reason" { "Reason" }
                        input #extend-reason type="text" name="reason" required maxlength="1024" value=(value("extend", "reason"));
                        button type="submit" { "Extend" }
                    }
                }
                @if record.pending.is_some() {
                    form.action method="post" action={(url) "/approve"} {
                        h3 { "Approve" }
                        (csrf_field(viewer))
                        label for="approve-reason" { "Reason" }
                        input #approve-reason type="text" name="reason" required maxlength="1024" value=(value("approve", "reason"));
                        button type="submit" { "Approve the isolation" }
                    }
                    form.action method="post" action={(url) "/deny"} {
                        h3 { "Cancel the pending request" }
                        (csrf_field(viewer))
                        label for="deny-reason" { "Reason" }
                        input #deny-reason type="text" name="reason" required maxlength="1024" value=(value("deny", "reason"));
                        button type="submit" { "Deny" }
                    }
                }
                form.action method="post" action={(url) "/tags"} {
                    h3 { "Tags" }
                    (csrf_field(viewer))
                    label for="tags-add" { "Add (comma-separated)" }
                    input #tags-add type="text" name="add" value=(value("tags", "add"));
                    label for="tags-remove" { "Remove" }
                    input #tags-remove type="text" name="remove" value=(value("tags", "remove"));
                    button type="submit" { "Change tags" }
                }
            }
        }
    }
}

fn audit_table(entries: &[AuditEntry], with_host: bool) -> Markup {
    html! {
        div.table-wrap {
            table.audit {
                thead { tr {
                    th scope="col" { "At" }
                    @if with_host { th scope="col" { "Host" } }
                    th scope="col" { "From → to" } th scope="col" { "By" } th scope="col" { "Gen." } th scope="col" { "Why" }
                } }
                tbody {
                    @for entry in entries.iter().rev() {
                        tr {
                            td.nowrap { (rfc3339(entry.at_ms)) }
                            @if with_host { td { a href=(host_url(&entry.host)) { (entry.host) } } }
                            td.nowrap {
                                @if entry.shadow { span.badge-shadow title="What a shadow rule would have done: nothing was done" { "SHADOW" } " " }
                                (entry.from.name()) " → " (entry.to.name())
                            }
                            td { (entry.by) }
                            td { (entry.generation) }
                            td { (entry.why) @if let Some(event) = &entry.event_id { " (finding " code { (event) } ")" } }
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Isolate

/// The isolate form, with the profile that will apply and every problem next to its field.
pub fn isolate_form(viewer: &Viewer, host: &str, form: &IsolateForm, problems: &Problems, profile: ProfileInForce<'_>) -> Markup {
    let url = host_url(host);
    let text = |name: &str, label: &str, value: &str, hint: &str| {
        let problems_id = format!("{name}-problems");
        html! {
            label for=(name) { (label) }
            input id=(name) type="text" name=(name) value=(value) aria-invalid=[invalid(problems, name)] aria-describedby=(problems_id);
            @if !hint.is_empty() { p.hint { (hint) } }
            (field_problems(problems, name, &problems_id))
        }
    };
    let area = |name: &str, label: &str, value: &str, hint: &str| {
        let problems_id = format!("{name}-problems");
        html! {
            label for=(name) { (label) }
            textarea id=(name) name=(name) rows="4" aria-invalid=[invalid(problems, name)] aria-describedby=(problems_id) { (value) }
            p.hint { (hint) }
            (field_problems(problems, name, &problems_id))
        }
    };
    let body = html! {
        p.crumbs { a href="/console" { "Fleet" } " / " a href=(url) { (host) } " / isolate" }
        h1 { "Isolate " (host) }
        (problems_box(problems))
        (profile_note(profile))
        form.wide method="post" action={(url) "/isolate"} novalidate {
            (csrf_field(viewer))
            fieldset {
                legend { "Mode" }
                label.choice { input type="radio" name="mode" value="automatic" checked[form.mode != "manual"]; " Automatic: lifted at a deadline" }
                label.choice { input type="radio" name="mode" value="manual" checked[form.mode == "manual"]; " Manual: until an operator releases it" }
                (field_problems(problems, "mode", "mode-problems"))
            }
            (text("duration", "Duration (automatic)", &form.duration, &format!("e.g. 90s, 15m, 4h, 7d; empty: the profile's {}", format_seconds(profile.profile.automatic_duration_seconds))))
            (text("reason", "Reason (required)", &form.reason, "e.g. the ticket: it goes into the audit trail and the agent's record"))
            (area("exclusions", "Exclusions, one per line", &form.exclusions, "DIR,PROTO,CIDR[,PORTS], e.g. out,tcp,198.51.100.7/32,443; added to the profile's"))
            (area("processes", "Excluded processes, one per line", &form.processes, "process names (at most 15 bytes), added to the profile's"))
            fieldset {
                legend { "Also leave open" }
                label.choice { input type="checkbox" name="allow_dns" value="on" checked[form.allow_dns]; " DNS to the host's resolvers" }
                label.choice { input type="checkbox" name="allow_dhcp" value="on" checked[form.allow_dhcp]; " DHCP" }
            }
            button type="submit" { "Review the isolation" }
            " " a href=(url) { "Cancel" }
        }
    };
    page(&format!("Isolate {host}"), Some((viewer, Section::Fleet)), &body)
}

fn profile_note(profile: ProfileInForce<'_>) -> Markup {
    let p = profile.profile;
    html! {
        p.note {
            "Profile " strong { (p.name) } " (policy version " (profile.version) ") applies: automatic isolations last "
            (format_seconds(p.automatic_duration_seconds))
            @if !p.exclusions.is_empty() || !p.allowed_processes.is_empty() || p.allow_dns || p.allow_dhcp {
                "; it leaves open " (p.exclusions.join(", "))
                @if !p.allowed_processes.is_empty() { " processes " (p.allowed_processes.join(", ")) }
                @if p.allow_dns { " DNS" }
                @if p.allow_dhcp { " DHCP" }
            } @else {
                "; it leaves nothing open"
            }
            "."
        }
    }
}

/// The confirmation before a host is cut off: what will stay open and for how long.
pub fn isolate_confirm(viewer: &Viewer, host: &str, form: &IsolateForm, plan: &IsolationPlan, profile: ProfileInForce<'_>) -> Markup {
    let url = host_url(host);
    let effective = profile.profile.under(plan);
    let body = html! {
        p.crumbs { a href="/console" { "Fleet" } " / " a href=(url) { (host) } " / isolate" }
        h1 { "Cut " (host) " off the network?" }
        div.confirm role="alert" {
            p { "Every connection of " strong { (host) } " will be severed and every new one refused, except:" }
            ul.specs {
                @for spec in &effective.exclusions { li { code { (spec) } } }
                @for name in &effective.allowed_processes { li { "process " code { (name) } } }
                @if effective.allow_dns { li { "DNS" } }
                @if effective.allow_dhcp { li { "DHCP" } }
                li { "cordon's own management channel" }
            }
            p {
                @match effective.duration_seconds {
                    Some(seconds) => { "It is lifted automatically after " strong { (format_seconds(seconds)) } "." }
                    None => { "It lasts " strong { "until an operator releases it" } "." }
                }
                " Reason: " (form.reason)
            }
        }
        form method="post" action={(url) "/isolate"} {
            (csrf_field(viewer))
            input type="hidden" name="confirm" value="yes";
            input type="hidden" name="mode" value=(form.mode);
            input type="hidden" name="duration" value=(form.duration);
            input type="hidden" name="reason" value=(form.reason);
            input type="hidden" name="exclusions" value=(form.exclusions);
            input type="hidden" name="processes" value=(form.processes);
            @if form.allow_dns { input type="hidden" name="allow_dns" value="on"; }
            @if form.allow_dhcp { input type="hidden" name="allow_dhcp" value="on"; }
            button.danger type="submit" autofocus { "Isolate " (host) " now" }
            " " a href=(url) { "Cancel" }
        }
    };
    page(&format!("Confirm: isolate {host}"), Some((viewer, Section::Fleet)), &body)
}

// ---------------------------------------------------------------------------------------------
// Approvals

pub fn approvals(viewer: &Viewer, pending: &[&HostRecord], problems: Option<(&str, &Problems)>) -> Markup {
    let body = html! {
        h1 { "Approvals" }
        @if let Some((_, problems)) = problems { (problems_box(problems)) }
        @if pending.is_empty() {
            p { "No rule is waiting for an operator." }
        }
        @for record in pending {
            @if let Some(proposal) = &record.pending {
                section.approval aria-label={"Approval for " (record.host)} {
                    h2 { a href=(host_url(&record.host)) { (record.host) } " " (state_badge(record.state)) }
                    p { (pending_text(proposal)) }
                    p { "Why: " (proposal.why) }
                    @if !proposal.plan.exclusions.is_empty() {
                        p { "The rules leave open: " (proposal.plan.exclusions.join(", ")) " (the host's profile adds its own)." }
                    }
                    @if viewer.may(Role::Responder) {
                        div.action-grid {
                            form.action method="post" action={(host_url(&record.host)) "/approve"} {
                                (csrf_field(viewer))
                                input type="hidden" name="from" value="approvals";
                                label for={"approve-" (record.host)} { "Reason to approve" }
                                input id={"approve-" (record.host)} type="text" name="reason" required maxlength="1024";
                                button type="submit" { "Approve " (record.host) }
                            }
                            form.action method="post" action={(host_url(&record.host)) "/deny"} {
                                (csrf_field(viewer))
                                input type="hidden" name="from" value="approvals";
                                label for={"deny-" (record.host)} { "Reason to deny" }
                                input id={"deny-" (record.host)} type="text" name="reason" required maxlength="1024";
                                button type="submit" { "Deny " (record.host) }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Approvals", Some((viewer, Section::Approvals)), &body)
}

// ---------------------------------------------------------------------------------------------
// Bulk

pub fn bulk(viewer: &Viewer, form: &BulkForm, matched: &[&HostRecord], problems: &Problems, outcomes: Option<&[BulkOutcome]>) -> Markup {
    let state = form.filter.state.as_deref().unwrap_or("");
    let tag = form.filter.tag.as_deref().unwrap_or("");
    let shown = 200;
    let body = html! {
        h1 { "Bulk isolate or release" }
        @if let Some(outcomes) = outcomes {
            section.outcome role="status" {
                h2 { "Done: " (outcomes.iter().filter(|o| o.result.is_ok()).count()) " of " (outcomes.len()) " host(s)" }
                ul { @for outcome in outcomes {
                    li { a href=(host_url(&outcome.host)) { (outcome.host) } ": "
                        @match &outcome.result { Ok(state) => { (state) } Err(why) => { span.bad { "not done: " (why) } } } }
                } }
            }
        }
        (problems_box(problems))
        form.filters method="get" action="/console/bulk" {
            label for="bulk-state" { "State" }
            select #bulk-state name="state" {
                option value="" selected[state.is_empty()] { "any" }
                @for s in HostState::ALL { option value=(s.name()) selected[state == s.name()] { (s.name().replace('_', " ")) } }
            }
            label for="bulk-tag" { "Tag" }
            input #bulk-tag type="text" name="tag" value=(tag);
            button type="submit" { "Preview" }
        }
        p.count { strong { (matched.len()) } " host(s) match." }
        ul.preview {
            @for record in matched.iter().take(shown) { li { a href=(host_url(&record.host)) { (record.host) } " " (state_badge(record.state)) } }
            @if matched.len() > shown { li { "… and " (matched.len() - shown) " more" } }
        }
        @if viewer.may(Role::Responder) && !matched.is_empty() {
            form.wide method="post" action="/console/bulk" {
                (csrf_field(viewer))
                input type="hidden" name="state" value=(state);
                input type="hidden" name="tag" value=(tag);
                input type="hidden" name="expected" value=(matched.len());
                input type="hidden" name="selection" value=(crate::api::selection_digest(matched.iter().map(|r| r.host.as_str())));
                fieldset {
                    legend { "Action" }
                    label.choice { input type="radio" name="action" value="isolate" checked[form.action == "isolate" || form.action.is_empty()]; " Isolate, automatic (each host's profile's duration)" }
                    label.choice { input type="radio" name="action" value="isolate-manual" checked[form.action == "isolate-manual"]; " Isolate, manual" }
                    label.choice { input type="radio" name="action" value="release" checked[form.action == "release"]; " Release" }
                    (field_problems(problems, "action", "action-problems"))
                }
                label for="bulk-reason" { "Reason (required)" }
                input #bulk-reason type="text" name="reason" required maxlength="1024" value=(form.reason) aria-invalid=[invalid(problems, "reason")];
                (field_problems(problems, "reason", "reason-problems"))
                label for="bulk-typed" { "To confirm, type " code { (BulkForm::confirmation("isolate", matched.len())) } " or " code { (BulkForm::confirmation("release", matched.len())) } }
                input #bulk-typed type="text" name="typed" required autocomplete="off" aria-invalid=[invalid(problems, "typed")] aria-describedby="typed-problems";
                (field_problems(problems, "typed", "typed-problems"))
                p.hint { "Hosts are selected by operators' tags and cordon's own ISOLATED FROM NETWORK, never by a tag an agent reports. An isolation never replaces one in force (those hosts are left as they are), and policy.yaml's fleet ceiling (max_automatic) caps how many hosts one bulk isolation may cut off." }
                button.danger type="submit" { "Act on " (matched.len()) " host(s)" }
            }
        }
    };
    page("Bulk", Some((viewer, Section::Bulk)), &body)
}

// ---------------------------------------------------------------------------------------------
// Policy

/// A failed edit on the policy page: which profile form (`""`: the new one), its fields, the
/// problems.
pub struct PolicyEdit<'a> {
    pub profile: &'a str,
    pub form: &'a ProfileForm,
    pub problems: &'a Problems,
}

pub fn policy(viewer: &Viewer, current: &PolicyVersion, history: &[(PolicyVersion, Vec<Change>)], edit: Option<&PolicyEdit<'_>>) -> Markup {
    let admin = viewer.may(Role::Admin);
    let body = html! {
        h1 { "Isolation policy" }
        p { "Version " strong { (current.version) } ", " (rfc3339(current.at_ms)) " by " (current.author) ": " (current.reason) }
        p.hint { "Every isolation is its host's profile plus what its rule or operator asked for. A host gets the highest-priority profile one of its operator tags selects, else default. A change reaches isolated hosts live, their deadlines kept." }
        @if let Some(edit) = edit.filter(|e| e.profile == "*") { (problems_box(edit.problems)) }
        @for profile in &current.policy.profiles {
            @let failed = edit.filter(|e| e.profile == profile.name);
            @let form = failed.map_or_else(|| ProfileForm::of(profile), |e| e.form.clone());
            section.profile aria-label={"Profile " (profile.name)} {
                h2 { "Profile " (profile.name) }
                @if let Some(failed) = failed { (problems_box(failed.problems)) }
                (profile_form(viewer, current.version, Some(&profile.name), &form, failed.map(|f| f.problems), admin))
            }
        }
        @if admin {
            section.profile aria-label="New profile" {
                h2 { "Add a profile" }
                @let failed = edit.filter(|e| e.profile.is_empty());
                @if let Some(failed) = failed { (problems_box(failed.problems)) }
                @let blank = ProfileForm { duration: "4h".into(), ..ProfileForm::default() };
                (profile_form(viewer, current.version, None, failed.map_or(&blank, |e| e.form), failed.map(|f| f.problems), true))
            }
        }
        section aria-labelledby="versions-h" {
            h2 #versions-h { "Versions" }
            div.table-wrap {
                table {
                    thead { tr { th scope="col" { "Version" } th scope="col" { "At" } th scope="col" { "By" } th scope="col" { "Reason" } th scope="col" { "Changes" } th scope="col" { "" } } }
                    tbody {
                        @for (version, changes) in history.iter().rev() {
                            tr {
                                td { (version.version) @if let Some(from) = version.reverted_from { " (restores " (from) ")" } }
                                td.nowrap { (rfc3339(version.at_ms)) }
                                td { (version.author) }
                                td { (version.reason) }
                                td {
                                    ul.changes { @for change in changes.iter().take(8) { li { code { (change.to_string()) } } } }
                                    @if changes.len() > 8 { (changes.len() - 8) " more · " }
                                    @if version.version > 1 { a href={"/console/policy/diff?from=" (version.version - 1) "&to=" (version.version)} { "diff" } }
                                }
                                td {
                                    @if admin && version.version != current.version {
                                        form.inline method="post" action="/console/policy/revert" {
                                            (csrf_field(viewer))
                                            input type="hidden" name="version" value=(version.version);
                                            input type="hidden" name="expected_version" value=(current.version);
                                            label.visually-hidden for={"revert-" (version.version)} { "Reason to restore version " (version.version) }
                                            input id={"revert-" (version.version)} type="text" name="reason" required placeholder="reason" maxlength="1024";
                                            button type="submit" { "Restore " (version.version) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Policy", Some((viewer, Section::Policy)), &body)
}

fn profile_form(viewer: &Viewer, version: u64, name: Option<&str>, form: &ProfileForm, problems: Option<&Problems>, editable: bool) -> Markup {
    let key = name.unwrap_or("new");
    let id = |field: &str| format!("{key}-{field}");
    let none = Problems::new();
    let problems = problems.unwrap_or(&none);
    let is_default = name == Some(crate::service::profiles::DEFAULT_PROFILE);
    html! {
        form.wide.profile-form method="post" action="/console/policy" {
            (csrf_field(viewer))
            input type="hidden" name="expected_version" value=(version);
            @if let Some(name) = name { input type="hidden" name="profile" value=(name); }
            fieldset disabled[!editable] {
                legend.visually-hidden { "Profile " (key) }
                label for=(id("name")) { "Name" }
                input id=(id("name")) type="text" name="name" value=(form.name) required readonly[is_default] maxlength="64";
                @if !is_default {
                    label for=(id("tags")) { "Host tags that select it (comma-separated)" }
                    input id=(id("tags")) type="text" name="tags" value=(form.tags);
                    label for=(id("priority")) { "Priority (highest wins)" }
                    input id=(id("priority")) type="text" inputmode="numeric" name="priority" value=(form.priority) aria-invalid=[invalid(problems, "priority")];
                    (field_problems(problems, "priority", &id("priority-problems")))
                }
                label for=(id("duration")) { "Automatic isolations last" }
                input id=(id("duration")) type="text" name="duration" value=(form.duration) required aria-invalid=[invalid(problems, "duration")];
                (field_problems(problems, "duration", &id("duration-problems")))
                label for=(id("exclusions")) { "Exclusions, one per line" }
                textarea id=(id("exclusions")) name="exclusions" rows="3" { (form.exclusions) }
                label for=(id("processes")) { "Excluded processes, one per line" }
                textarea id=(id("processes")) name="processes" rows="2" { (form.processes) }
                label.choice { input type="checkbox" name="allow_dns" value="on" checked[form.allow_dns]; " DNS" }
                label.choice { input type="checkbox" name="allow_dhcp" value="on" checked[form.allow_dhcp]; " DHCP" }
                label for=(id("reason")) { "Reason for this change (required)" }
                input id=(id("reason")) type="text" name="reason" required maxlength="1024";
                button type="submit" name="action" value="save" { @if name.is_some() { "Save as a new version" } @else { "Add the profile" } }
                @if name.is_some() && !is_default {
                    " " button.danger type="submit" name="action" value="delete" { "Delete this profile" }
                }
            }
        }
    }
}

pub fn policy_diff(viewer: &Viewer, from: u64, to: u64, changes: &[Change]) -> Markup {
    let body = html! {
        p.crumbs { a href="/console/policy" { "Policy" } " / diff" }
        h1 { "From version " (from) " to version " (to) }
        @if changes.is_empty() { p { "They hold the same policy." } }
        ul.changes { @for change in changes { li { code { (change.to_string()) } } } }
    };
    page("Policy diff", Some((viewer, Section::Policy)), &body)
}

// ---------------------------------------------------------------------------------------------
// History

pub fn history(viewer: &Viewer, filter: &HistoryFilter, entries: &[AuditEntry], total: usize, problems: &Problems) -> Markup {
    let query = filter.query();
    let input = |name: &str, label: &str, value: &str, hint: &str| {
        html! {
            div.filter {
                label for={"h-" (name)} { (label) }
                input id={"h-" (name)} type="text" name=(name) value=(value) placeholder=(hint) aria-invalid=[invalid(problems, name)];
            }
        }
    };
    let body = html! {
        h1 { "History" }
        (problems_box(problems))
        form.filters method="get" action="/console/history" {
            (input("host", "Host", &filter.host, "exact id"))
            (input("operator", "Operator", &filter.operator, "name"))
            (input("rule", "Rule", &filter.rule, "rule id"))
            div.filter {
                label for="h-state" { "State" }
                select #h-state name="state" {
                    option value="" selected[filter.state.is_empty()] { "any" }
                    @for s in HostState::ALL { option value=(s.name()) selected[filter.state == s.name()] { (s.name().replace('_', " ")) } }
                }
            }
            (input("from", "From (UTC)", &filter.from, "2026-12-01"))
            (input("to", "To (UTC)", &filter.to, "2026-12-07T18:00"))
            button type="submit" { "Filter" }
        }
        p {
            (total) " entr" (if total == 1 { "y" } else { "ies" }) " match"
            @if entries.len() < total { "; the newest " (entries.len()) " are shown" }
            ". Export all: "
            a href={"/console/history.csv?" (query)} download { "CSV" } " · "
            a href={"/console/history.ndjson?" (query)} download { "NDJSON" }
        }
        (audit_table(entries, true))
    };
    page("History", Some((viewer, Section::History)), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_reads_as_people_count() {
        assert_eq!(time_left(0), "due");
        assert_eq!(time_left(1), "1s");
        assert_eq!(time_left(61_000), "1m 01s");
        assert_eq!(time_left(5 * 3_600_000), "5h 00m 00s");
        assert_eq!(time_left(3 * 86_400_000 + 3_600_000), "3d 01h 00m");
    }

    #[test]
    fn the_fleet_is_shown_a_page_at_a_time_with_counts_of_all() {
        let all: std::collections::BTreeMap<String, HostSummary> = (0..600)
            .map(|n| {
                let mut record = HostRecord::new(&format!("h-{n:03}"), 0);
                if n % 2 == 0 {
                    record.state = HostState::Isolated;
                    record.tags = vec![ISOLATED_TAG.into()];
                }
                (record.host.clone(), record.summary())
            })
            .collect();
        let isolated = HostFilter { tag: Some(ISOLATED_TAG.into()), state: None };
        let second = FleetPage::of(&all, isolated, 1);
        assert_eq!((second.total, second.matched, second.rows.len()), (600, 300, 50));
        assert_eq!(second.rows[0].host, "h-500", "the 251st isolated host, in host order");
        assert_eq!(second.by_state.iter().find(|(s, _)| *s == HostState::Isolated).map(|(_, n)| *n), Some(300));
        assert_eq!(second.query(2), "tag=ISOLATED%20FROM%20NETWORK&page=2");
    }

    #[test]
    fn what_comes_from_outside_is_escaped() {
        let viewer = Viewer { operator: "<b>eve</b>".into(), role: Role::Viewer, csrf: "c".into(), pending: 0 };
        let mut record = HostRecord::new("<script>alert(1)</script>", 0);
        record.tags = vec!["\"><img src=x onerror=alert(1)>".into()];
        let all = std::collections::BTreeMap::from([(record.host.clone(), record.summary())]);
        let html = fleet(&viewer, &FleetPage::of(&all, HostFilter::default(), 0), 0).into_string();
        assert!(!html.contains("<script>alert") && !html.contains("<img src=x") && !html.contains("<b>eve"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("/console/hosts/%3Cscript%3Ealert%281%29%3C%2Fscript%3E"), "host ids are encoded in links");
    }
}
