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
        tracing::error!(error = %error, "cannot record a console call.");
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

    /// Every host record, or the page that says the store cannot be read.
    fn hosts(&self, viewer: &Viewer, section: Section) -> Result<Vec<HostRecord>, Response> {
        self.api.store.hosts().map_err(|error| store_failed(viewer, section, &error))
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
    tracing::info!(operator = %name, role = holder.role.name(), "console sign-in from {peer}.");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/console")).into_response()
}

async fn sign_out(
    State(console): State<Console>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    if let Err(refused) = console.checked_form(&headers, Role::Viewer, Section::Fleet, form) {
        return refused;
    }
    if let Some((id, _)) = console.session_of(&headers) {
        console.sessions.close(&id);
    }
    let cookie = session::cookie("", 0, console.options.secure_cookies);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/console/sign-in")).into_response()
}

// -------------------------------------------------------------------------------------------
// Fleet and host

async fn fleet(
    State(console): State<Console>,
    headers: HeaderMap,
    query: Result<Query<HostFilter>, QueryRejection>,
) -> Response {
    let session = match console.signed_in(&headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let viewer = console.viewer(&session);
    let Query(filter) = match query {
        Ok(query) => query,
        Err(rejection) => return bad_query(&viewer, Section::Fleet, &rejection),
    };
    let all = match console.hosts(&viewer, Section::Fleet) {
        Ok(all) => all,
        Err(response) => return response,
    };
    let shown: Vec<&HostRecord> = all.iter().filter(|record| filter.matches(record)).collect();
    views::fleet(&viewer, &filter, &shown, &all, now_ms()).into_response()
}

async fn fleet_rows(
    State(console): State<Console>,
    headers: HeaderMap,
    query: Result<Query<HostFilter>, QueryRejection>,
) -> Response {
    let session = match console.signed_in(&headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let viewer = console.viewer(&session);
    let Ok(Query(filter)) = query else { return StatusCode::BAD_REQUEST.into_response() };
    match console.hosts(&viewer, Section::Fleet) {
        Ok(all) => {
            let shown: Vec<&HostRecord> = all.iter().filter(|record| filter.matches(record)).collect();
            views::fleet_rows(&filter, &shown, now_ms()).into_response()
        }
        Err(response) => response,
    }
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

async fn host_page(State(console): State<Console>, headers: HeaderMap, Path(host): Path<String>) -> Response {
    let session = match console.signed_in(&headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let viewer = console.viewer(&session);
    match host_and_trail(&console, &viewer, &host) {
        Ok((record, audit)) => views::host(&viewer, &record, &audit, now_ms(), None).into_response(),
        Err(response) => response,
    }
}

async fn host_live(State(console): State<Console>, headers: HeaderMap, Path(host): Path<String>) -> Response {
    let session = match console.signed_in(&headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let viewer = console.viewer(&session);
    match host_and_trail(&console, &viewer, &host) {
        Ok((record, audit)) => views::host_live(&record, &audit, now_ms()).into_response(),
        Err(response) => response,
    }
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
) -> Response {
    let session = match console.allowed(&headers, Role::Responder, Section::Fleet) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let viewer = console.viewer(&session);
    match query {
        Ok(Query(query)) => match check_host_id(query.host.trim()) {
            Ok(()) => Redirect::to(&format!("{}/isolate", views::host_url(query.host.trim()))).into_response(),
            Err(problem) => {
                (StatusCode::BAD_REQUEST, views::message(Some((&viewer, Section::Fleet)), "Bad host id", &problem)).into_response()
            }
        },
        Err(rejection) => bad_query(&viewer, Section::Fleet, &rejection),
    }
}

async fn isolate_page(State(console): State<Console>, headers: HeaderMap, Path(host): Path<String>) -> Response {
    let session = match console.allowed(&headers, Role::Responder, Section::Fleet) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let viewer = console.viewer(&session);
    let (record, _) = match host_and_trail(&console, &viewer, &host) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let policy = console.api.store.policy();
    let profile = policy.profile_in_force(&record.operator_tags);
    views::isolate_form(&viewer, &host, &IsolateForm::prefilled(profile.profile), &Problems::new(), profile).into_response()
}

/// The isolate form, posted: checked (with the host's profile), then shown for confirmation,
/// then, confirmed, carried out.
async fn isolate(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(host): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let (session, fields) = match console.checked_form(&headers, Role::Responder, Section::Fleet, form) {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let viewer = console.viewer(&session);
    let (record, _) = match host_and_trail(&console, &viewer, &host) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let policy = console.api.store.policy();
    let profile = policy.profile_in_force(&record.operator_tags);
    let form = IsolateForm::read(&fields);
    let refuse = |problems: &Problems| -> Response {
        (StatusCode::BAD_REQUEST, views::isolate_form(&viewer, &host, &form, problems, profile)).into_response()
    };
    let mut isolation = match form.check() {
        Ok(isolation) => isolation,
        Err(problems) => return refuse(&problems),
    };
    let mut plan = isolation.plan.clone();
    if isolation.profile_duration {
        plan.duration_seconds = Some(profile.profile.automatic_duration_seconds);
    }
    let found = profile.problems_with(&plan);
    if !found.is_empty() {
        return refuse(&problems_of(&NotDone::Invalid(found)));
    }
    if fields.get("confirm") != "yes" {
        return views::isolate_confirm(&viewer, &host, &form, &plan, profile).into_response();
    }
    // What was confirmed, durations included, is what is asked.
    isolation.plan.duration_seconds = plan.duration_seconds;
    isolation.profile_duration = false;
    let reason = form.reason.trim().to_owned();
    match change_host(&console.api, caller(&session, peer), host.clone(), Operation::Isolate { isolation, reason }).await {
        Ok(_) => Redirect::to(&views::host_url(&host)).into_response(),
        Err(not_done @ NotDone::Invalid(_)) => {
            (not_done.status(), views::isolate_form(&viewer, &host, &form, &problems_of(&not_done), profile)).into_response()
        }
        Err(not_done) => (not_done.status(), views::isolate_form(&viewer, &host, &form, &problems_of(&not_done), profile))
            .into_response(),
    }
}

/// Release, extend, approve, deny (cancel a pending request) and tags, from the host page (and
/// approve and deny from the approvals page).
async fn host_action(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path((host, action)): Path<(String, String)>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let (session, fields) = match console.checked_form(&headers, Role::Responder, Section::Fleet, form) {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let viewer = console.viewer(&session);
    let operation = match action.as_str() {
        "release" => forms::reason(&fields).map(|reason| Operation::Release { reason }),
        "extend" => forms::extension(&fields).map(|(seconds, reason)| Operation::Extend { seconds, reason }),
        "approve" => forms::reason(&fields).map(|reason| Operation::Approve { reason }),
        "deny" => forms::reason(&fields).map(|reason| Operation::Deny { reason }),
        "tags" => forms::tags(&fields).map(|(add, remove)| Operation::Tags { add, remove }),
        _ => {
            let text = format!("There is no action {action:?} on a host.");
            return (StatusCode::NOT_FOUND, views::message(Some((&viewer, Section::Fleet)), "No such action", &text)).into_response();
        }
    };
    let outcome = match operation {
        Ok(operation) => match change_host(&console.api, caller(&session, peer), host.clone(), operation).await {
            Ok(_) => Ok(()),
            Err(not_done) => Err((not_done.status(), problems_of(&not_done))),
        },
        Err(problems) => Err((StatusCode::BAD_REQUEST, problems)),
    };
    let from_approvals = fields.get("from") == "approvals";
    match outcome {
        Ok(()) if from_approvals => Redirect::to("/console/approvals").into_response(),
        Ok(()) => Redirect::to(&views::host_url(&host)).into_response(),
        Err((status, problems)) => match host_and_trail(&console, &viewer, &host) {
            Ok((record, audit)) => {
                let failed = views::Failed { action: &action, fields: &fields, problems: &problems };
                (status, views::host(&viewer, &record, &audit, now_ms(), Some(&failed))).into_response()
            }
            Err(response) => response,
        },
    }
}

// -------------------------------------------------------------------------------------------
// Approvals and bulk

async fn approvals(State(console): State<Console>, headers: HeaderMap) -> Response {
    let session = match console.signed_in(&headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let viewer = console.viewer(&session);
    match console.hosts(&viewer, Section::Approvals) {
        Ok(all) => {
            let mut pending: Vec<&HostRecord> = all.iter().filter(|record| record.pending.is_some()).collect();
            pending.sort_by_key(|record| record.pending.as_ref().map(|p| p.requested_at_ms));
            views::approvals(&viewer, &pending, None).into_response()
        }
        Err(response) => response,
    }
}

async fn bulk_page(
    State(console): State<Console>,
    headers: HeaderMap,
    query: Result<Query<HostFilter>, QueryRejection>,
) -> Response {
    let session = match console.signed_in(&headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let viewer = console.viewer(&session);
    let Query(filter) = match query {
        Ok(query) => query,
        Err(rejection) => return bad_query(&viewer, Section::Bulk, &rejection),
    };
    let all = match console.hosts(&viewer, Section::Bulk) {
        Ok(all) => all,
        Err(response) => return response,
    };
    let matched: Vec<&HostRecord> = all.iter().filter(|record| filter.matches(record)).collect();
    let form = BulkForm { filter, ..BulkForm::default() };
    views::bulk(&viewer, &form, &matched, &Problems::new(), None).into_response()
}

async fn bulk(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let (session, fields) = match console.checked_form(&headers, Role::Responder, Section::Bulk, form) {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let viewer = console.viewer(&session);
    let form = BulkForm::read(&fields);
    let outcome = match form.check() {
        Ok((action, reason, expected)) => {
            change_hosts(&console.api, caller(&session, peer), form.filter.clone(), action, reason, expected)
                .await
                .map_err(|not_done| (not_done.status(), problems_of(&not_done)))
        }
        Err(problems) => Err((StatusCode::BAD_REQUEST, problems)),
    };
    let all = match console.hosts(&viewer, Section::Bulk) {
        Ok(all) => all,
        Err(response) => return response,
    };
    let matched: Vec<&HostRecord> = all.iter().filter(|record| form.filter.matches(record)).collect();
    match outcome {
        Ok(outcomes) => views::bulk(&viewer, &form, &matched, &Problems::new(), Some(&outcomes)).into_response(),
        Err((status, problems)) => (status, views::bulk(&viewer, &form, &matched, &problems, None)).into_response(),
    }
}

// -------------------------------------------------------------------------------------------
// Policy

fn policy_view(console: &Console, viewer: &Viewer, edit: Option<&views::PolicyEdit<'_>>) -> Result<Markup, Response> {
    let versions = console.api.store.policy_versions().map_err(|error| store_failed(viewer, Section::Policy, &error))?;
    let empty = super::profiles::IsolationPolicy { profiles: Vec::new() };
    let mut before = &empty;
    let mut history = Vec::with_capacity(versions.len());
    for version in &versions {
        history.push((version.clone(), before.diff(&version.policy)));
        before = &version.policy;
    }
    Ok(views::policy(viewer, &console.api.store.policy(), &history, edit))
}

async fn policy_page(State(console): State<Console>, headers: HeaderMap) -> Response {
    let session = match console.signed_in(&headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let viewer = console.viewer(&session);
    policy_view(&console, &viewer, None).map_or_else(|response| response, IntoResponse::into_response)
}

/// One profile saved, added or deleted: the whole policy as a new version, validated by the
/// service with the rules in force.
async fn edit_policy(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let (session, fields) = match console.checked_form(&headers, Role::Admin, Section::Policy, form) {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let viewer = console.viewer(&session);
    let replacing = Some(fields.get("profile")).filter(|name| !name.is_empty());
    let form = ProfileForm::read(&fields);
    let current = console.api.store.policy();
    let expected = fields.get("expected_version").parse::<u64>().ok();
    let edited = if fields.get("action") == "delete" {
        Ok(None)
    } else {
        form.profile().map(Some)
    };
    let outcome = match edited {
        Ok(edited) => {
            let policy = forms::policy_with(&current.policy, replacing, edited);
            let reason = fields.get("reason").trim().to_owned();
            change_policy_version(&console.api, caller(&session, peer), PolicyChange::Set(policy), reason, expected)
                .await
                .map_err(|not_done| {
                    let mut problems = Problems::new();
                    let found = match &not_done {
                        NotDone::Invalid(found) => found.clone(),
                        other => vec![other.to_string()],
                    };
                    problems.insert("", found);
                    (not_done.status(), problems)
                })
        }
        Err(problems) => Err((StatusCode::BAD_REQUEST, problems)),
    };
    match outcome {
        Ok(_) => Redirect::to("/console/policy").into_response(),
        Err((status, problems)) => {
            let edit = views::PolicyEdit { profile: replacing.unwrap_or(""), form: &form, problems: &problems };
            match policy_view(&console, &viewer, Some(&edit)) {
                Ok(page) => (status, page).into_response(),
                Err(response) => response,
            }
        }
    }
}

async fn revert_policy(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let (session, fields) = match console.checked_form(&headers, Role::Admin, Section::Policy, form) {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let viewer = console.viewer(&session);
    let expected = fields.get("expected_version").parse::<u64>().ok();
    let outcome = match fields.get("version").parse::<u64>() {
        Ok(version) => {
            let reason = fields.get("reason").trim().to_owned();
            change_policy_version(&console.api, caller(&session, peer), PolicyChange::Revert(version), reason, expected)
                .await
                .map_err(|not_done| (not_done.status(), problems_of(&not_done)))
        }
        Err(_) => Err((StatusCode::BAD_REQUEST, problems_of(&NotDone::Invalid(vec!["no version to restore".into()])))),
    };
    match outcome {
        Ok(_) => Redirect::to("/console/policy").into_response(),
        Err((status, mut problems)) => {
            let found = problems.values_mut().flat_map(std::mem::take).collect();
            let problems = Problems::from([("", found)]);
            let edit = views::PolicyEdit { profile: "*", form: &ProfileForm::default(), problems: &problems };
            match policy_view(&console, &viewer, Some(&edit)) {
                Ok(page) => (status, page).into_response(),
                Err(response) => response,
            }
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffQuery {
    from: u64,
    to: Option<u64>,
}

async fn policy_diff(
    State(console): State<Console>,
    headers: HeaderMap,
    query: Result<Query<DiffQuery>, QueryRejection>,
) -> Response {
    let session = match console.signed_in(&headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let viewer = console.viewer(&session);
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return bad_query(&viewer, Section::Policy, &rejection),
    };
    let store = &console.api.store;
    let to = query.to.unwrap_or_else(|| store.policy().version);
    match (store.policy_version(query.from), store.policy_version(to)) {
        (Ok(Some(from)), Ok(Some(to))) => {
            views::policy_diff(&viewer, from.version, to.version, &from.policy.diff(&to.policy)).into_response()
        }
        (Err(error), _) | (_, Err(error)) => store_failed(&viewer, Section::Policy, &error),
        _ => {
            let text = format!("There is no such version; the one in force is {}.", store.policy().version);
            (StatusCode::NOT_FOUND, views::message(Some((&viewer, Section::Policy)), "No such version", &text)).into_response()
        }
    }
}

// -------------------------------------------------------------------------------------------
// History

/// The audit entries the filter selects, newest last; or the page that says why not.
fn history_entries(
    console: &Console,
    viewer: &Viewer,
    query: Result<Query<HistoryFilter>, QueryRejection>,
) -> Result<(HistoryFilter, Vec<AuditEntry>), Response> {
    let Query(filter) = query.map_err(|rejection| bad_query(viewer, Section::History, &rejection))?;
    let bounds = filter.bounds().map_err(|problems| {
        (StatusCode::BAD_REQUEST, views::history(viewer, &filter, &[], 0, &problems)).into_response()
    })?;
    let mut entries = console.api.store.audit_entries().map_err(|error| store_failed(viewer, Section::History, &error))?;
    entries.retain(|entry| filter.matches(entry, bounds));
    entries.sort_by_key(|entry| entry.at_ms);
    Ok((filter, entries))
}

async fn history(
    State(console): State<Console>,
    headers: HeaderMap,
    query: Result<Query<HistoryFilter>, QueryRejection>,
) -> Response {
    let session = match console.signed_in(&headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let viewer = console.viewer(&session);
    match history_entries(&console, &viewer, query) {
        Ok((filter, entries)) => {
            let newest = &entries[entries.len().saturating_sub(HISTORY_SHOWN)..];
            views::history(&viewer, &filter, newest, entries.len(), &Problems::new()).into_response()
        }
        Err(response) => response,
    }
}

/// The history as a download: `cordon-history.EXT`, never cached.
fn download(content_type: &'static str, extension: &str, body: String) -> Response {
    let disposition = format!("attachment; filename=\"cordon-history.{extension}\"");
    ([(header::CONTENT_TYPE, content_type.to_owned()), (header::CONTENT_DISPOSITION, disposition)], body).into_response()
}

async fn history_csv(
    State(console): State<Console>,
    headers: HeaderMap,
    query: Result<Query<HistoryFilter>, QueryRejection>,
) -> Response {
    let session = match console.signed_in(&headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let viewer = console.viewer(&session);
    match history_entries(&console, &viewer, query) {
        Ok((_, entries)) => {
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
            download("text/csv; charset=utf-8", "csv", csv)
        }
        Err(response) => response,
    }
}

async fn history_ndjson(
    State(console): State<Console>,
    headers: HeaderMap,
    query: Result<Query<HistoryFilter>, QueryRejection>,
) -> Response {
    let session = match console.signed_in(&headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let viewer = console.viewer(&session);
    match history_entries(&console, &viewer, query) {
        Ok((_, entries)) => {
            let mut lines = String::new();
            for entry in &entries {
                let mut view = serde_json::to_value(crate::api::AuditView::new(entry)).unwrap_or_default();
                view["host"] = entry.host.clone().into();
                lines.push_str(&view.to_string());
                lines.push('\n');
            }
            download("application/x-ndjson", "ndjson", lines)
        }
        Err(response) => response,
    }
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
