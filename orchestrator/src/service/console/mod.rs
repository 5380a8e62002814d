//! The operators' web console: server-rendered pages (`views.rs`) over the same service loop as
//! the API, so a change made here is ordered, validated, made durable and audited exactly as one
//! made with the CLI. Sign-in takes an API token (and its role) into a session cookie
//! (`session.rs`); every form carries the session's CSRF token; every answer carries a
//! Content-Security-Policy that allows no inline script or style and nothing from another host.
//! Forms are read and checked in `forms.rs`; assets (a pinned htmx, the stylesheet and the
//! countdown script) are embedded in the binary.

#![allow(
    clippy::result_large_err,
    reason = "handlers stop early with the whole page that says why; one per request, not a hot path"
)]

pub mod forms;
pub mod session;
pub mod views;

use std::sync::Arc;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::Markup;

use self::forms::{BulkForm, Fields, HistoryFilter, IsolateForm, Problems, ProfileForm};
use self::session::{Session, Sessions};
use self::views::{Section, Viewer};
use super::access::Role;
use super::api::{change_host, change_hosts, change_policy_version, ApiState, NotDone, Operation, PolicyChange};
use super::events::{ApiCallNotRecorded, ConsoleSignIn};
use super::lifecycle::{AuditEntry, HostRecord};
use super::now_ms;
use super::store::ApiCall;
use super::tls::Peer;
use crate::api::{check_host_id, HostFilter};

/// How the console is served.
#[derive(Clone, Debug)]
pub struct ConsoleOptions {
    /// Cookies marked `Secure` (the console is served over TLS).
    pub secure_cookies: bool,
    pub session_minutes: u64,
    /// Whether sign-in is with the one shared token (then the operator names themselves).
    pub shared_token: bool,
}

#[derive(Clone)]
struct Console {
    api: ApiState,
    sessions: Arc<Sessions>,
    options: ConsoleOptions,
}

/// What every console answer carries: no inline script or style, nothing from another host, no
/// framing, no sniffing, no referrer, nothing cached unless the route says so.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The most history entries one page shows (the exports hold every one).
const HISTORY_SHOWN: usize = 1_000;

/// The console's routes: `/console/...`, and `/` sending a browser there.
pub(crate) fn router(api: ApiState, options: ConsoleOptions) -> Router {
    let console = Console { api, sessions: Arc::new(Sessions::new(options.session_minutes)), options };
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(fleet))
        .route("/console/fleet/rows", get(fleet_rows))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/isolate", get(isolate_by_id))
        .route("/console/hosts/{host}", get(host_page))
        .route("/console/hosts/{host}/live", get(host_live))
        .route("/console/hosts/{host}/isolate", get(isolate_page).post(isolate))
        .route("/console/hosts/{host}/{action}", post(host_action))
        .route("/console/approvals", get(approvals))
        .route("/console/bulk", get(bulk_page).post(bulk))
        .route("/console/policy", get(policy_page).post(edit_policy))
        .route("/console/policy/revert", post(revert_policy))
        .route("/console/policy/diff", get(policy_diff))
        .route("/console/history", get(history))
        .route("/console/history.csv", get(history_csv))
        .route("/console/history.ndjson", get(history_ndjson))
        .route("/console/assets/{name}", get(asset))
        .layer(axum::middleware::from_fn_with_state(console.clone(), record_changes))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(console)
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Records every console call that may change something (everything but GET), with its caller
/// and outcome, as the API records its calls.
async fn record_changes(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() == Method::GET {
        return next.run(request).await;
    }
    let caller = match console.session_of(request.headers()) {
        Some((_, session)) => caller(&session, peer),
        None => format!("anonymous ({peer} via console)"),
    };
    let (method, path) = (request.method().to_string(), request.uri().path().to_owned());
    let response = next.run(request).await;
    let call = ApiCall { at_ms: now_ms(), caller, method, path, status: response.status().as_u16() };
    if let Err(error) = console.api.store.record_api_call(&call) {
        ApiCallNotRecorded { via: "console", error: &error }.emit();
    }
    response
}

/// How the audit trail names a console user.
fn caller(session: &Session, peer: Peer) -> String {
    format!("operator {} ({peer} via console)", session.operator)
}

impl Console {
    fn session_of(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
        let id = session::id_from_cookies(cookies)?;
        self.sessions.get(id, now_ms()).map(|session| (id.to_owned(), session))
    }

    /// The signed-in session, or the answer that sends the browser to sign in (htmx's polls
    /// get a 401 that tells htmx to go there).
    fn signed_in(&self, headers: &HeaderMap) -> Result<Session, Response> {
        if let Some((_, session)) = self.session_of(headers) {
            return Ok(session);
        }
        if headers.contains_key("hx-request") {
            return Err((StatusCode::UNAUTHORIZED, [("hx-redirect", "/console/sign-in")]).into_response());
        }
        Err(Redirect::to("/console/sign-in").into_response())
    }

    /// The session, if its role is at least `needed`, or the page that says why not.
    fn allowed(&self, headers: &HeaderMap, needed: Role, section: Section) -> Result<Session, Response> {
        let session = self.signed_in(headers)?;
        if session.role >= needed {
            return Ok(session);
        }
        let viewer = self.viewer(&session);
        let text = format!(
            "This needs the role {} or above; you are signed in as {}. Nothing was changed.",
            needed.name(),
            session.role.name()
        );
        Err((StatusCode::FORBIDDEN, views::message(Some((&viewer, section)), "Not allowed", &text)).into_response())
    }

    /// A form posted by the session, if it carries the session's CSRF token.
    fn checked_form(
        &self,
        headers: &HeaderMap,
        needed: Role,
        section: Section,
        form: Result<Form<Vec<(String, String)>>, FormRejection>,
    ) -> Result<(Session, Fields), Response> {
        let session = self.allowed(headers, needed, section)?;
        let viewer = self.viewer(&session);
        let fields = match form {
            Ok(Form(pairs)) => Fields(pairs),
            Err(rejection) => {
                let status = rejection.status();
                let text = format!("The form could not be read ({}). Nothing was changed.", rejection.body_text());
                return Err((status, views::message(Some((&viewer, section)), "Bad form", &text)).into_response());
            }
        };
        if !session::same_secret(fields.get("csrf"), &session.csrf) {
            let text = "The form does not carry this session's CSRF token (it came from another page or an older \
                        session): nothing was changed. Reload the page and try again.";
            return Err((StatusCode::FORBIDDEN, views::message(Some((&viewer, section)), "Form refused", text)).into_response());
        }
        Ok((session, fields))
    }

    fn viewer(&self, session: &Session) -> Viewer {
        let pending = self.api.store.counts().by_state.get("pending_approval").copied().unwrap_or(0);
        Viewer {
            operator: session.operator.clone(),
            role: session.role,
            csrf: session.csrf.clone(),
            pending: usize::try_from(pending).unwrap_or(0),
        }
    }
}

fn store_failed(viewer: &Viewer, section: Section, error: &anyhow::Error) -> Response {
    let text = format!("The state store cannot be read: {error:#}");
    (StatusCode::INTERNAL_SERVER_ERROR, views::message(Some((viewer, section)), "State store", &text)).into_response()
}

fn bad_query(viewer: &Viewer, section: Section, rejection: &QueryRejection) -> Response {
    let text = format!("The address's query is not one this page takes: {}", rejection.body_text());
    (StatusCode::BAD_REQUEST, views::message(Some((viewer, section)), "Bad request", &text)).into_response()
}

/// `Problems` of a change the service refused, by field where the problem names one.
fn problems_of(not_done: &NotDone) -> Problems {
    let mut problems = Problems::new();
    match not_done {
        NotDone::Invalid(found) => {
            for problem in found {
                problems.entry(forms::field_of(problem)).or_default().push(problem.clone());
            }
        }
        other => {
            problems.entry("").or_default().push(other.to_string());
        }
    }
    problems
}

/// What a handler answers: a page, or the page that says why not (both complete responses).
type Answer = Result<Response, Response>;

/// The signed-in operator of a request; without a session the browser is sent to sign in.
struct Signed {
    viewer: Viewer,
}

impl axum::extract::FromRequestParts<Console> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, console: &Console) -> Result<Signed, Response> {
        let session = console.signed_in(&parts.headers)?;
        Ok(Signed { viewer: console.viewer(&session) })
    }
}

/// A query of type `T`, or the page that says why it is not one.
fn query_of<T>(query: Result<Query<T>, QueryRejection>, viewer: &Viewer, section: Section) -> Result<T, Response> {
    query.map(|Query(query)| query).map_err(|rejection| bad_query(viewer, section, &rejection))
}

// -------------------------------------------------------------------------------------------
// Sign in and out

async fn sign_in_page(State(console): State<Console>, headers: HeaderMap) -> Response {
    if console.session_of(&headers).is_some() {
        return Redirect::to("/console").into_response();
    }
    views::sign_in(None, console.options.shared_token).into_response()
}

async fn sign_in(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let shared = console.options.shared_token;
    let Ok(Form(pairs)) = form else {
        return (StatusCode::BAD_REQUEST, views::sign_in(Some("The form could not be read."), shared)).into_response();
    };
    let fields = Fields(pairs);
    let now = now_ms();
    let source = peer.0.ip();
    let failed = &console.api.failed;
    if failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).blocked(source, now) {
        let text = format!(
            "Too many failed sign-ins from {source} in the last minute (at most {}): wait, then use a valid token.",
            super::access::FailedAttempts::LIMIT
        );
        return (StatusCode::TOO_MANY_REQUESTS, views::sign_in(Some(&text), shared)).into_response();
    }
    let Some(holder) = console.api.tokens.holder(fields.get("token").trim()).cloned() else {
        failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).failed(source, now);
        let text = "That token is not one cordon accepts ([api] tokens_file or token_file). Nothing was changed.";
        return (StatusCode::UNAUTHORIZED, views::sign_in(Some(text), shared)).into_response();
    };
    let name = if holder.named_by_token {
        holder.name.clone()
    } else {
        let claimed: String = fields.get("name").chars().filter(|c| !c.is_control()).take(64).collect();
        if claimed.trim().is_empty() { "unnamed".to_owned() } else { claimed.trim().to_owned() }
    };
    let id = console.sessions.open(&name, holder.role, now);
    let cookie = session::cookie(&id, console.sessions.lifetime_seconds(), console.options.secure_cookies);
    ConsoleSignIn { operator: &name, role: holder.role.name(), peer: &peer }.emit();
    ([(header::SET_COOKIE, cookie)], Redirect::to("/console")).into_response()
}

async fn sign_out(
    State(console): State<Console>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Answer {
    console.checked_form(&headers, Role::Viewer, Section::Fleet, form)?;
    if let Some((id, _)) = console.session_of(&headers) {
        console.sessions.close(&id);
    }
    let cookie = session::cookie("", 0, console.options.secure_cookies);
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/console/sign-in")).into_response())
}

// -------------------------------------------------------------------------------------------
// Fleet and host

/// The fleet page's query: the filter, and which page of it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetQuery {
    tag: Option<String>,
    state: Option<String>,
    #[serde(default)]
    page: usize,
}

impl Console {
    /// The page of the fleet `query` asks for, from the store's summaries.
    fn fleet_page(&self, viewer: &Viewer, query: FleetQuery) -> Result<views::FleetPage, Response> {
        let filter = HostFilter { tag: query.tag, state: query.state };
        self.api
            .store
            .with_fleet(|fleet| views::FleetPage::of(fleet, filter, query.page))
            .map_err(|error| store_failed(viewer, Section::Fleet, &error))
    }
}

async fn fleet(State(console): State<Console>, signed: Signed, query: Result<Query<FleetQuery>, QueryRejection>) -> Answer {
    let page = console.fleet_page(&signed.viewer, query_of(query, &signed.viewer, Section::Fleet)?)?;
    Ok(views::fleet(&signed.viewer, &page, now_ms()).into_response())
}

async fn fleet_rows(
    State(console): State<Console>,
    signed: Signed,
    query: Result<Query<FleetQuery>, QueryRejection>,
) -> Answer {
    let page = console.fleet_page(&signed.viewer, query_of(query, &signed.viewer, Section::Fleet)?)?;
    Ok(views::fleet_rows(&page, now_ms()).into_response())
}

/// The host's record (a host cordon does not know yet is shown as never isolated) and its
/// audit trail, or the page that says why not.
fn host_and_trail(console: &Console, viewer: &Viewer, host: &str) -> Result<(HostRecord, Vec<AuditEntry>), Response> {
    if let Err(problem) = check_host_id(host) {
        return Err((StatusCode::BAD_REQUEST, views::message(Some((viewer, Section::Fleet)), "Bad host id", &problem)).into_response());
    }
    let store = &console.api.store;
    let record = store.host(host).map_err(|error| store_failed(viewer, Section::Fleet, &error))?;
    let audit = store.audit_of(host).map_err(|error| store_failed(viewer, Section::Fleet, &error))?;
    Ok((record.unwrap_or_else(|| HostRecord::new(host, now_ms())), audit))
}

async fn host_page(State(console): State<Console>, signed: Signed, Path(host): Path<String>) -> Answer {
    let (record, audit) = host_and_trail(&console, &signed.viewer, &host)?;
    Ok(views::host(&signed.viewer, &record, &audit, now_ms(), None).into_response())
}

async fn host_live(State(console): State<Console>, signed: Signed, Path(host): Path<String>) -> Answer {
    let (record, audit) = host_and_trail(&console, &signed.viewer, &host)?;
    Ok(views::host_live(&record, &audit, now_ms()).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HostQuery {
    host: String,
}

/// The fleet page's "isolate a host by id": on to that host's isolate form.
async fn isolate_by_id(
    State(console): State<Console>,
    headers: HeaderMap,
    query: Result<Query<HostQuery>, QueryRejection>,
) -> Answer {
    let session = console.allowed(&headers, Role::Responder, Section::Fleet)?;
    let viewer = console.viewer(&session);
    let host = query_of(query, &viewer, Section::Fleet)?.host;
    check_host_id(host.trim()).map_err(|problem| {
        (StatusCode::BAD_REQUEST, views::message(Some((&viewer, Section::Fleet)), "Bad host id", &problem)).into_response()
    })?;
    Ok(Redirect::to(&format!("{}/isolate", views::host_url(host.trim()))).into_response())
}

async fn isolate_page(State(console): State<Console>, headers: HeaderMap, Path(host): Path<String>) -> Answer {
    let session = console.allowed(&headers, Role::Responder, Section::Fleet)?;
    let viewer = console.viewer(&session);
    let (record, _) = host_and_trail(&console, &viewer, &host)?;
    let policy = console.api.store.policy();
    let profile = policy.profile_in_force(&record.operator_tags);
    Ok(views::isolate_form(&viewer, &host, &IsolateForm::prefilled(profile.profile), &Problems::new(), profile).into_response())
}

/// The isolate form, posted: checked (with the host's profile), then shown for confirmation,
/// then, confirmed, carried out.
async fn isolate(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(host): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Answer {
    let (session, fields) = console.checked_form(&headers, Role::Responder, Section::Fleet, form)?;
    let viewer = console.viewer(&session);
    let (record, _) = host_and_trail(&console, &viewer, &host)?;
    let policy = console.api.store.policy();
    let profile = policy.profile_in_force(&record.operator_tags);
    let form = IsolateForm::read(&fields);
    let refuse = |status: StatusCode, problems: &Problems| -> Response {
        (status, views::isolate_form(&viewer, &host, &form, problems, profile)).into_response()
    };
    let mut isolation = form.check().map_err(|problems| refuse(StatusCode::BAD_REQUEST, &problems))?;
    let plan = profile.plan_of(&isolation);
    let found = profile.problems_with(&plan);
    if !found.is_empty() {
        return Err(refuse(StatusCode::BAD_REQUEST, &problems_of(&NotDone::Invalid(found))));
    }
    if fields.get("confirm") != "yes" {
        return Ok(views::isolate_confirm(&viewer, &host, &form, &plan, profile).into_response());
    }
    // What was confirmed, durations included, is what is asked.
    isolation.plan.duration_seconds = plan.duration_seconds;
    isolation.profile_duration = false;
    let reason = form.reason.trim().to_owned();
    change_host(&console.api, caller(&session, peer), host.clone(), Operation::Isolate { isolation, reason })
        .await
        .map_err(|not_done| refuse(not_done.status(), &problems_of(&not_done)))?;
    Ok(Redirect::to(&views::host_url(&host)).into_response())
}

/// Release, extend, approve, deny (cancel a pending request) and tags, from the host page (and
/// approve and deny from the approvals page).
async fn host_action(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path((host, action)): Path<(String, String)>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Answer {
    let (session, fields) = console.checked_form(&headers, Role::Responder, Section::Fleet, form)?;
    let viewer = console.viewer(&session);
    if let Err(problem) = check_host_id(&host) {
        return Err((StatusCode::BAD_REQUEST, views::message(Some((&viewer, Section::Fleet)), "Bad host id", &problem)).into_response());
    }
    let operation = match action.as_str() {
        "release" => forms::reason(&fields).map(|reason| Operation::Release { reason }),
        "extend" => forms::extension(&fields).map(|(seconds, reason)| Operation::Extend { seconds, reason }),
        "approve" => forms::reason(&fields).map(|reason| Operation::Approve { reason }),
        "deny" => forms::reason(&fields).map(|reason| Operation::Deny { reason }),
        "tags" => forms::tags(&fields).map(|(add, remove)| Operation::Tags { add, remove }),
        _ => {
            let text = format!("There is no action {action:?} on a host.");
            return Err((StatusCode::NOT_FOUND, views::message(Some((&viewer, Section::Fleet)), "No such action", &text)).into_response());
        }
    };
    let outcome = match operation {
        Ok(operation) => change_host(&console.api, caller(&session, peer), host.clone(), operation)
            .await
            .map(|_| ())
            .map_err(|not_done| (not_done.status(), problems_of(&not_done))),
        Err(problems) => Err((StatusCode::BAD_REQUEST, problems)),
    };
    if let Err((status, problems)) = outcome {
        let (record, audit) = host_and_trail(&console, &viewer, &host)?;
        let failed = views::Failed { action: &action, fields: &fields, problems: &problems };
        return Err((status, views::host(&viewer, &record, &audit, now_ms(), Some(&failed))).into_response());
    }
    let back = if fields.get("from") == "approvals" { "/console/approvals".to_owned() } else { views::host_url(&host) };
    Ok(Redirect::to(&back).into_response())
}

// -------------------------------------------------------------------------------------------
// Approvals and bulk

async fn approvals(State(console): State<Console>, signed: Signed) -> Answer {
    let store = &console.api.store;
    let waiting = store.with_fleet(|fleet| {
        fleet.values().filter(|summary| summary.pending).map(|summary| summary.host.clone()).collect::<Vec<_>>()
    });
    let records: anyhow::Result<Vec<HostRecord>> =
        waiting.and_then(|hosts| hosts.iter().filter_map(|host| store.host(host).transpose()).collect());
    let records = records.map_err(|error| store_failed(&signed.viewer, Section::Approvals, &error))?;
    let mut pending: Vec<&HostRecord> = records.iter().filter(|record| record.pending.is_some()).collect();
    pending.sort_by_key(|record| record.pending.as_ref().map(|p| p.requested_at_ms));
    Ok(views::approvals(&signed.viewer, &pending, None).into_response())
}

/// The hosts `filter` selects for an action, or the page that says the store cannot be read.
fn matching(console: &Console, viewer: &Viewer, filter: &HostFilter) -> Result<Vec<HostRecord>, Response> {
    let all = console.api.store.hosts().map_err(|error| store_failed(viewer, Section::Bulk, &error))?;
    Ok(all.into_iter().filter(|record| filter.selects_for_action(record)).collect())
}

async fn bulk_page(State(console): State<Console>, signed: Signed, query: Result<Query<HostFilter>, QueryRejection>) -> Answer {
    let filter = query_of(query, &signed.viewer, Section::Bulk)?;
    let matched = matching(&console, &signed.viewer, &filter)?;
    let form = BulkForm { filter, ..BulkForm::default() };
    Ok(views::bulk(&signed.viewer, &form, &matched.iter().collect::<Vec<_>>(), &Problems::new(), None).into_response())
}

async fn bulk(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Answer {
    let (session, fields) = console.checked_form(&headers, Role::Responder, Section::Bulk, form)?;
    let viewer = console.viewer(&session);
    let form = BulkForm::read(&fields);
    let outcome = match form.check() {
        Ok((action, reason, expected)) => {
            let selection = (expected, form.selection.clone());
            change_hosts(&console.api, caller(&session, peer), form.filter.clone(), action, reason, selection)
                .await
                .map_err(|not_done| (not_done.status(), problems_of(&not_done)))
        }
        Err(problems) => Err((StatusCode::BAD_REQUEST, problems)),
    };
    let matched = matching(&console, &viewer, &form.filter)?;
    let matched: Vec<&HostRecord> = matched.iter().collect();
    match outcome {
        Ok(outcomes) => Ok(views::bulk(&viewer, &form, &matched, &Problems::new(), Some(&outcomes)).into_response()),
        Err((status, problems)) => Err((status, views::bulk(&viewer, &form, &matched, &problems, None)).into_response()),
    }
}

// -------------------------------------------------------------------------------------------
// Policy

fn policy_view(console: &Console, viewer: &Viewer, edit: Option<&views::PolicyEdit<'_>>) -> Result<Markup, Response> {
    let versions = console.api.store.policy_versions().map_err(|error| store_failed(viewer, Section::Policy, &error))?;
    let changes = super::profiles::changes_by_version(&versions);
    let history: Vec<_> = versions.into_iter().zip(changes).collect();
    Ok(views::policy(viewer, &console.api.store.policy(), &history, edit))
}

async fn policy_page(State(console): State<Console>, signed: Signed) -> Answer {
    Ok(policy_view(&console, &signed.viewer, None)?.into_response())
}

/// The policy page again, with what the operator posted and why it was not done.
fn policy_refused(console: &Console, viewer: &Viewer, status: StatusCode, edit: &views::PolicyEdit<'_>) -> Response {
    match policy_view(console, viewer, Some(edit)) {
        Ok(page) => (status, page).into_response(),
        Err(response) => response,
    }
}

/// Every problem of a policy change the service refused, for the box above the form.
fn policy_problems(not_done: &NotDone) -> Problems {
    let found = match not_done {
        NotDone::Invalid(found) => found.clone(),
        other => vec![other.to_string()],
    };
    Problems::from([("", found)])
}

/// One profile saved, added or deleted: the whole policy as a new version, validated by the
/// service with the rules in force.
async fn edit_policy(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Answer {
    let (session, fields) = console.checked_form(&headers, Role::Admin, Section::Policy, form)?;
    let viewer = console.viewer(&session);
    let replacing = Some(fields.get("profile")).filter(|name| !name.is_empty());
    let form = ProfileForm::read(&fields);
    let refuse = |status: StatusCode, problems: &Problems| {
        let edit = views::PolicyEdit { profile: replacing.unwrap_or(""), form: &form, problems };
        policy_refused(&console, &viewer, status, &edit)
    };
    let edited = if fields.get("action") == "delete" { None } else { Some(form.profile().map_err(|problems| refuse(StatusCode::BAD_REQUEST, &problems))?) };
    let policy = forms::policy_with(&console.api.store.policy().policy, replacing, edited);
    let expected = fields.get("expected_version").parse::<u64>().ok();
    let reason = fields.get("reason").trim().to_owned();
    change_policy_version(&console.api, caller(&session, peer), PolicyChange::Set(policy), reason, expected)
        .await
        .map_err(|not_done| refuse(not_done.status(), &policy_problems(&not_done)))?;
    Ok(Redirect::to("/console/policy").into_response())
}

async fn revert_policy(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Answer {
    let (session, fields) = console.checked_form(&headers, Role::Admin, Section::Policy, form)?;
    let viewer = console.viewer(&session);
    let refuse = |not_done: &NotDone| {
        let edit = views::PolicyEdit { profile: "*", form: &ProfileForm::default(), problems: &policy_problems(not_done) };
        policy_refused(&console, &viewer, not_done.status(), &edit)
    };
    let version = fields
        .get("version")
        .parse::<u64>()
        .map_err(|_| refuse(&NotDone::Invalid(vec!["no version to restore".into()])))?;
    let expected = fields.get("expected_version").parse::<u64>().ok();
    let reason = fields.get("reason").trim().to_owned();
    change_policy_version(&console.api, caller(&session, peer), PolicyChange::Revert(version), reason, expected)
        .await
        .map_err(|not_done| refuse(&not_done))?;
    Ok(Redirect::to("/console/policy").into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffQuery {
    from: u64,
    to: Option<u64>,
}

async fn policy_diff(State(console): State<Console>, signed: Signed, query: Result<Query<DiffQuery>, QueryRejection>) -> Answer {
    let viewer = &signed.viewer;
    let query = query_of(query, viewer, Section::Policy)?;
    let store = &console.api.store;
    let to = query.to.unwrap_or_else(|| store.policy().version);
    let read = |number: u64| store.policy_version(number).map_err(|error| store_failed(viewer, Section::Policy, &error));
    let (Some(from), Some(to)) = (read(query.from)?, read(to)?) else {
        let text = format!("There is no such version; the one in force is {}.", store.policy().version);
        return Err((StatusCode::NOT_FOUND, views::message(Some((viewer, Section::Policy)), "No such version", &text)).into_response());
    };
    Ok(views::policy_diff(viewer, from.version, to.version, &from.policy.diff(&to.policy)).into_response())
}

// -------------------------------------------------------------------------------------------
// History

/// The audit entries the filter selects, oldest first; or the page that says why not.
fn history_entries(
    console: &Console,
    viewer: &Viewer,
    query: Result<Query<HistoryFilter>, QueryRejection>,
) -> Result<(HistoryFilter, Vec<AuditEntry>), Response> {
    let filter = query_of(query, viewer, Section::History)?;
    let bounds = filter.bounds().map_err(|problems| {
        (StatusCode::BAD_REQUEST, views::history(viewer, &filter, &[], 0, &problems)).into_response()
    })?;
    let mut entries = console.api.store.audit_entries().map_err(|error| store_failed(viewer, Section::History, &error))?;
    entries.retain(|entry| filter.matches(entry, bounds));
    entries.sort_by_key(|entry| entry.at_ms);
    Ok((filter, entries))
}

async fn history(State(console): State<Console>, signed: Signed, query: Result<Query<HistoryFilter>, QueryRejection>) -> Answer {
    let (filter, entries) = history_entries(&console, &signed.viewer, query)?;
    let newest = &entries[entries.len().saturating_sub(HISTORY_SHOWN)..];
    Ok(views::history(&signed.viewer, &filter, newest, entries.len(), &Problems::new()).into_response())
}

/// The history as a download: `cordon-history.EXT`, never cached.
fn download(content_type: &'static str, extension: &str, body: String) -> Response {
    let disposition = format!("attachment; filename=\"cordon-history.{extension}\"");
    ([(header::CONTENT_TYPE, content_type.to_owned()), (header::CONTENT_DISPOSITION, disposition)], body).into_response()
}

async fn history_csv(
    State(console): State<Console>,
    signed: Signed,
    query: Result<Query<HistoryFilter>, QueryRejection>,
) -> Answer {
    let (_, entries) = history_entries(&console, &signed.viewer, query)?;
    let mut csv = String::from("at,host,from,to,by,event_id,generation,why\n");
    for entry in &entries {
        let row = [
            crate::api::rfc3339(entry.at_ms),
            entry.host.clone(),
            entry.from.name().to_owned(),
            entry.to.name().to_owned(),
            entry.by.clone(),
            entry.event_id.clone().unwrap_or_default(),
            entry.generation.to_string(),
            entry.why.clone(),
        ];
        let fields: Vec<String> = row.iter().map(|field| forms::csv_field(field)).collect();
        csv.push_str(&fields.join(","));
        csv.push('\n');
    }
    Ok(download("text/csv; charset=utf-8", "csv", csv))
}

async fn history_ndjson(
    State(console): State<Console>,
    signed: Signed,
    query: Result<Query<HistoryFilter>, QueryRejection>,
) -> Answer {
    let (_, entries) = history_entries(&console, &signed.viewer, query)?;
    let mut lines = String::new();
    for entry in &entries {
        let mut view = serde_json::to_value(crate::api::AuditView::new(entry)).unwrap_or_default();
        view["host"] = entry.host.clone().into();
        lines.push_str(&view.to_string());
        lines.push('\n');
    }
    Ok(download("application/x-ndjson", "ndjson", lines))
}

// -------------------------------------------------------------------------------------------
// Assets

/// The vendored htmx (0BSD; version and checksum in `orchestrator/assets/README.md`).
const HTMX: &str = include_str!("../../../assets/htmx-2.0.11.min.js");
const CONSOLE_JS: &str = include_str!("../../../assets/console.js");
const CONSOLE_CSS: &str = include_str!("../../../assets/console.css");

async fn asset(Path(name): Path<String>) -> Response {
    let (content_type, body, cache) = match name.as_str() {
        "htmx-2.0.11.min.js" => ("text/javascript; charset=utf-8", HTMX, "public, max-age=31536000, immutable"),
        "console.js" => ("text/javascript; charset=utf-8", CONSOLE_JS, "no-cache"),
        "console.css" => ("text/css; charset=utf-8", CONSOLE_CSS, "no-cache"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, cache)], body).into_response()
}
