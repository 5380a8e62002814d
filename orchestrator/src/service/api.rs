//! The operator API (JSON over HTTP, axum): reads come straight from the store; changes go to the
//! service loop as [`OperatorRequest`]s, so one writer orders every change. Every call needs a
//! bearer token, which names the caller and their role (`access.rs`); each route needs a role
//! (viewer: reads; responder: changes to hosts; admin: agent keys), and every call is recorded
//! with its caller, whatever its outcome. `schemas/openapi.json` documents it.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use super::access::{FailedAttempts, Role, Tokens};
use super::agents::{AgentRecord, AgentState};
use super::lifecycle::AuditEntry;
use super::lifecycle::{HostRecord, Refused};
use super::now_ms;
use super::observe::Metrics;
use super::lease::Fence;
use super::events::ApiCallNotRecorded;
use super::profiles::{IsolationPolicy, PolicyVersion};
use super::store::{ApiCall, Store};
use crate::api::{
    check_host_id, check_policy_reason, AgentKeyView, CheckedIsolation, EnrollRequest, ErrorBody, ExtendRequest, HostView,
    IsolateRequest, PolicyDiff, PolicyHistoryEntry, PolicyView, ReasonRequest, RevertPolicyRequest, SetPolicyRequest,
    TagsRequest, OPERATOR_HEADER,
};

/// What the API hands the service loop: every change goes through it.
#[derive(Debug)]
pub enum ApiRequest {
    Host(OperatorRequest),
    Policy(PolicyChangeRequest),
    Bulk(BulkRequest),
}

/// One operation on every host a filter selects (the console's bulk page), carried out by the
/// loop in one commit.
#[derive(Debug)]
pub struct BulkRequest {
    pub filter: crate::api::HostFilter,
    pub action: BulkAction,
    pub reason: String,
    /// How many hosts the operator saw the filter select, and which (`api::selection_digest`):
    /// refused if it selects other hosts by then.
    pub expected_hosts: usize,
    pub expected_digest: String,
    /// `operator NAME (ADDRESS)`.
    pub operator: String,
    pub reply: oneshot::Sender<Result<Vec<BulkOutcome>, NotDone>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkAction {
    /// Automatic for each host's profile's duration, or manual.
    Isolate { manual: bool },
    Release,
}

/// What a bulk operation did to one host: its state now, or why it was refused there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BulkOutcome {
    pub host: String,
    pub result: Result<String, String>,
}

/// A change of the isolation policy, for the service loop to validate (against the rules in
/// force too), store as a new version and apply to the hosts it changes.
#[derive(Debug)]
pub struct PolicyChangeRequest {
    pub change: PolicyChange,
    /// `operator NAME (ADDRESS)`.
    pub author: String,
    pub reason: String,
    /// Refused unless this is the version in force (a change made from an older one).
    pub expected_version: Option<u64>,
    pub reply: oneshot::Sender<Result<PolicyVersion, NotDone>>,
}

#[derive(Debug)]
pub enum PolicyChange {
    Set(IsolationPolicy),
    /// The policy of this earlier version.
    Revert(u64),
}

/// A change an operator asked for on one host, for the service loop to carry out.
#[derive(Debug)]
pub struct OperatorRequest {
    pub host: String,
    pub operation: Operation,
    /// `operator NAME (ADDRESS)`.
    pub operator: String,
    pub reply: oneshot::Sender<Result<HostRecord, NotDone>>,
}

/// Why an operator's request was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum NotDone {
    /// The request contradicts the host's state.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The state store cannot be written now: nothing was changed.
    #[error("the state store cannot be written ({0}); nothing was changed or sent: try again once /readyz says ready")]
    StoreFault(String),
    /// A later start of this `instance_id` took over: this service no longer acts.
    #[error("this cordon serve no longer acts ({0}); nothing was changed: ask the active one")]
    Fenced(String),
    /// The request is not valid: every problem.
    #[error("{} problem(s); nothing was changed", .0.len())]
    Invalid(Vec<String>),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The service is stopping: the request was not taken.
    #[error("the service is shutting down; nothing was changed")]
    ShuttingDown,
    /// The loop dropped the request without an answer (its log says why).
    #[error("the service could not record the change (see its log); nothing was sent")]
    Lost,
}

#[derive(Debug)]
pub enum Operation {
    Isolate { isolation: CheckedIsolation, reason: String },
    Release { reason: String },
    Extend { seconds: u64, reason: String },
    Approve { reason: String },
    Deny { reason: String },
    Tags { add: Vec<String>, remove: Vec<String> },
}

/// What the API's and the console's handlers share.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) store: Store,
    pub(crate) tokens: Arc<Tokens>,
    pub(crate) failed: Arc<std::sync::Mutex<FailedAttempts>>,
    pub(crate) requests: mpsc::Sender<ApiRequest>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) fence: Fence,
}

/// The caller of a request, as the authentication layer established it: `operator NAME
/// (ADDRESS)` and the token's role.
#[derive(Clone)]
pub(crate) struct Caller(pub(crate) String, pub(crate) Role);

/// The API's routes: `/healthz`, `/readyz` and `/metrics` are open (they name no host), everything
/// under `/v1` needs a token, and a role for what it does.
pub fn router(
    store: Store,
    tokens: Tokens,
    requests: mpsc::Sender<ApiRequest>,
    metrics: Arc<Metrics>,
    fence: Fence,
) -> Router {
    routes(ApiState::new(store, tokens, requests, metrics, fence))
}

impl ApiState {
    pub(crate) fn new(
        store: Store,
        tokens: Tokens,
        requests: mpsc::Sender<ApiRequest>,
        metrics: Arc<Metrics>,
        fence: Fence,
    ) -> ApiState {
        ApiState { store, tokens: Arc::new(tokens), failed: Arc::default(), requests, metrics, fence }
    }
}

/// The API's routes over `state` (which the console shares: its failed sign-ins count with the
/// API's failed tokens).
pub(crate) fn routes(state: ApiState) -> Router {
    let reads = Router::new()
        .route("/hosts", get(list_hosts))
        .route("/hosts/{host}", get(show_host))
        .route("/agents", get(list_agents))
        .route("/shadow", get(shadow_report))
        .route("/policy", get(show_policy))
        .route("/policy/history", get(policy_history))
        .route("/policy/versions/{version}", get(show_policy_version))
        .route("/policy/diff", get(diff_policy));
    let responses = Router::new()
        .route("/hosts/{host}/isolate", post(isolate))
        .route("/hosts/{host}/release", post(release))
        .route("/hosts/{host}/extend", post(extend))
        .route("/hosts/{host}/approve", post(approve))
        .route("/hosts/{host}/deny", post(deny))
        .route("/hosts/{host}/tags", post(tags))
        .route_layer(axum::middleware::from_fn(|request: Request, next: Next| {
            require(Role::Responder, request, next)
        }));
    let administration = Router::new()
        .route("/agents/{host}/enroll", post(enroll_agent))
        .route("/agents/{host}/accept", post(accept_agent))
        .route("/agents/{host}/revoke", post(revoke_agent))
        .route("/policy/versions", post(set_policy))
        .route("/policy/revert", post(revert_policy))
        .route_layer(axum::middleware::from_fn(|request: Request, next: Next| require(Role::Admin, request, next)));
    let v1 = reads
        .merge(responses)
        .merge(administration)
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), refuse_writes_when_fenced))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness))
        .route("/metrics", get(metrics_text))
        .nest(crate::api::PREFIX, v1)
        .layer(axum::extract::DefaultBodyLimit::max(crate::api::MAX_BODY_BYTES))
        .with_state(state)
}

/// 503 for every change once a later start of this `instance_id` fenced this service (reads go on).
async fn refuse_writes_when_fenced(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if request.method() != axum::http::Method::GET {
        if let Some(why) = state.fence.reason() {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, NotDone::Fenced(why).to_string()).into_response();
        }
    }
    next.run(request).await
}

/// The metrics in the Prometheus text format.
async fn metrics_text(State(state): State<ApiState>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.registry.render_prometheus(),
    )
        .into_response()
}

/// 200 when the service can do its work: Kafka reachable, state store readable, rules loaded;
/// 503 otherwise, with every check and what failed.
async fn readiness(State(state): State<ApiState>) -> Response {
    let brokers_up = state.metrics.kafka_brokers_up.get();
    let kafka = if brokers_up > 0 {
        Ok(format!("connected to {brokers_up} broker(s)"))
    } else {
        Err("not connected to any Kafka broker (yet): check [kafka] brokers and the network".to_owned())
    };
    let partitions = state.metrics.consumer_partitions.get();
    let consumer = if partitions > 0 {
        Ok(format!("consuming {partitions} partition(s)"))
    } else {
        Err("the consumer holds no partitions: the broker has not listed the topics' partitions yet, or another \
             service with the same [kafka] instance_id fenced this one"
            .to_owned())
    };
    let store = state.store.usable().map(|()| "open".to_owned()).map_err(|e| format!("{e:#}"));
    let lease = state.fence.reason().map_or_else(|| Ok("active for its instance_id".to_owned()), Err);
    let rules = state.metrics.rules_loaded.get();
    let rules = Ok::<_, String>(format!("{rules} rule(s) in force"));
    let ready = kafka.is_ok() && consumer.is_ok() && store.is_ok() && rules.is_ok() && lease.is_ok();
    let check = |result: Result<String, String>| match result {
        Ok(detail) => serde_json::json!({"ok": true, "detail": detail}),
        Err(detail) => serde_json::json!({"ok": false, "detail": detail}),
    };
    let body = serde_json::json!({
        "ready": ready,
        "checks": {
            "kafka": check(kafka),
            "consumer": check(consumer),
            "state": check(store),
            "rules": check(rules),
            "lease": check(lease),
        },
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// An error answer: a status and a JSON body saying what is wrong.
struct ApiError(StatusCode, ErrorBody);

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError(status, ErrorBody { error: error.into(), problems: Vec::new() })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than the API's limit of {} bytes",
                    crate::api::MAX_BODY_BYTES
                ),
            );
        }
        ApiError::new(StatusCode::BAD_REQUEST, rejection.body_text())
    }
}

/// 400 unless `reason` is within the limit.
fn checked_reason(reason: Option<String>, default: &str) -> Result<String, ApiError> {
    crate::api::check_reason(reason.as_deref())
        .map_err(|problem| ApiError::new(StatusCode::BAD_REQUEST, problem))?;
    Ok(reason_or(reason, default))
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, rejection.body_text())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}"))
    }
}

/// 403 unless the caller's role is at least `needed`.
async fn require(needed: Role, request: Request, next: Next) -> Response {
    let allowed = request.extensions().get::<Caller>().is_some_and(|caller| caller.1 >= needed);
    if allowed {
        return next.run(request).await;
    }
    let role = request.extensions().get::<Caller>().map_or("none", |caller| caller.1.name());
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!("this needs the role {} or above; the token's role is {role}", needed.name()),
    )
    .into_response()
}

/// Checks the bearer token, names the caller, and records the call with its outcome. A source
/// that failed too often in the last minute is answered 429 without its token being looked at.
async fn authenticate(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<super::tls::Peer>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let claimed = operator_name(headers);
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let now = now_ms();
    let blocked = state.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).blocked(peer.0.ip(), now);
    let holder = if blocked { None } else { token.and_then(|token| state.tokens.holder(token)).cloned() };
    let (caller, response) = if let Some(holder) = holder {
        // A token that names its operator is the name in the audit trail, whatever the client says.
        let name = if holder.named_by_token { holder.name.clone() } else { claimed };
        let caller = format!("operator {name} ({peer})");
        request.extensions_mut().insert(Caller(caller.clone(), holder.role));
        (caller, next.run(request).await)
    } else if blocked {
        let error = format!(
            "too many failed authentications from {} in the last minute (at most {}): wait, then use a valid token",
            peer.0.ip(),
            FailedAttempts::LIMIT
        );
        (format!("anonymous {claimed} ({peer})"), ApiError::new(StatusCode::TOO_MANY_REQUESTS, error).into_response())
    } else {
        if token.is_some() {
            state.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).failed(peer.0.ip(), now);
        }
        let error = if token.is_none() {
            "this API needs a bearer token (Authorization: Bearer TOKEN; the cordon client reads it from \
             --token-file or CORDON_TOKEN)"
        } else {
            "the bearer token is not one configured in [api] token_file or tokens_file"
        };
        (format!("anonymous {claimed} ({peer})"), ApiError::new(StatusCode::UNAUTHORIZED, error).into_response())
    };
    let call = ApiCall { at_ms: now_ms(), caller, method, path, status: response.status().as_u16() };
    if let Err(error) = state.store.record_api_call(&call) {
        ApiCallNotRecorded { via: "API", error: &error }.emit();
    }
    response
}

/// The operator's name as the client claims it; printable, at most 64 characters.
fn operator_name(headers: &HeaderMap) -> String {
    let name = headers.get(OPERATOR_HEADER).and_then(|value| value.to_str().ok()).unwrap_or("unnamed");
    let name: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
    if name.is_empty() {
        "unnamed".into()
    } else {
        name
    }
}

async fn list_hosts(
    State(state): State<ApiState>,
    query: Result<Query<crate::api::HostFilter>, QueryRejection>,
) -> Result<Json<Vec<HostView>>, ApiError> {
    let Query(filter) = query?;
    let hosts = state
        .store
        .hosts()?
        .iter()
        .filter(|record| filter.matches(record))
        .map(|record| HostView::new(record, None))
        .collect();
    Ok(Json(hosts))
}

async fn show_host(
    State(state): State<ApiState>,
    Path(host): Path<String>,
) -> Result<Json<HostView>, ApiError> {
    let record = state.store.host(&host)?;
    let audit = state.store.audit_of(&host)?;
    // A host only shadow rules decided on has no record, only its trail.
    let record = match record {
        Some(record) => record,
        None if !audit.is_empty() => HostRecord::new(&host, audit[0].at_ms),
        None => return Err(ApiError::new(StatusCode::NOT_FOUND, format!("cordon knows no host {host:?}"))),
    };
    Ok(Json(HostView::new(&record, Some(&audit))))
}

/// Hands a change to the service loop and waits for its outcome.
async fn change(
    state: &ApiState,
    caller: Caller,
    host: String,
    operation: Operation,
) -> Result<Json<HostView>, ApiError> {
    check_host_id(&host).map_err(|problem| ApiError::new(StatusCode::BAD_REQUEST, problem))?;
    let record = change_host(state, caller.0, host, operation).await?;
    Ok(Json(HostView::new(&record, None)))
}

/// Has the service loop carry out `operation` on `host` for `operator` (the API's and the
/// console's way to change a host); the host as it now is, or why not.
pub(crate) async fn change_host(
    state: &ApiState,
    operator: String,
    host: String,
    operation: Operation,
) -> Result<HostRecord, NotDone> {
    let (reply, answer) = oneshot::channel();
    submit(state, ApiRequest::Host(OperatorRequest { host, operation, operator, reply }), answer).await
}

/// Has the service loop carry out a bulk operation; each host's outcome, or why none was done.
pub(crate) async fn change_hosts(
    state: &ApiState,
    operator: String,
    filter: crate::api::HostFilter,
    action: BulkAction,
    reason: String,
    (expected_hosts, expected_digest): (usize, String),
) -> Result<Vec<BulkOutcome>, NotDone> {
    let (reply, answer) = oneshot::channel();
    let request = BulkRequest { filter, action, reason, expected_hosts, expected_digest, operator, reply };
    submit(state, ApiRequest::Bulk(request), answer).await
}

/// Has the service loop validate, store and apply a policy change by `author`; the new version,
/// or why not.
pub(crate) async fn change_policy_version(
    state: &ApiState,
    author: String,
    change: PolicyChange,
    reason: String,
    expected_version: Option<u64>,
) -> Result<PolicyVersion, NotDone> {
    check_policy_reason(&reason).map_err(|problem| NotDone::Invalid(vec![problem]))?;
    let (reply, answer) = oneshot::channel();
    let request = PolicyChangeRequest { change, author, reason, expected_version, reply };
    submit(state, ApiRequest::Policy(request), answer).await
}

/// Hands a request to the service loop and waits for its answer.
async fn submit<T>(
    state: &ApiState,
    request: ApiRequest,
    answer: oneshot::Receiver<Result<T, NotDone>>,
) -> Result<T, NotDone> {
    state.requests.send(request).await.map_err(|_| NotDone::ShuttingDown)?;
    answer.await.unwrap_or(Err(NotDone::Lost))
}

impl From<NotDone> for ApiError {
    fn from(not_done: NotDone) -> ApiError {
        let status = not_done.status();
        match not_done {
            NotDone::Invalid(problems) => ApiError(
                status,
                ErrorBody { error: format!("the request has {} problem(s); nothing was changed", problems.len()), problems },
            ),
            other => ApiError::new(status, other.to_string()),
        }
    }
}

impl NotDone {
    /// The HTTP status that answers it.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            NotDone::Invalid(_) => StatusCode::BAD_REQUEST,
            NotDone::NotFound(_) => StatusCode::NOT_FOUND,
            NotDone::Refused(_) => StatusCode::CONFLICT,
            NotDone::StoreFault(_) | NotDone::Fenced(_) | NotDone::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            NotDone::Lost => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

fn reason_or(reason: Option<String>, default: &str) -> String {
    reason.filter(|r| !r.trim().is_empty()).unwrap_or_else(|| default.to_owned())
}

async fn isolate(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(host): Path<String>,
    body: Result<Json<IsolateRequest>, JsonRejection>,
) -> Result<Json<HostView>, ApiError> {
    let Json(body) = body?;
    let isolation = body.plan().map_err(|problems| {
        ApiError(
            StatusCode::BAD_REQUEST,
            ErrorBody { error: format!("the isolation request has {} problem(s)", problems.len()), problems },
        )
    })?;
    let reason = reason_or(body.reason, "isolated by an operator");
    change(&state, caller, host, Operation::Isolate { isolation, reason }).await
}

async fn release(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(host): Path<String>,
    body: Result<Json<ReasonRequest>, JsonRejection>,
) -> Result<Json<HostView>, ApiError> {
    let Json(body) = body?;
    let reason = checked_reason(body.reason, "released by an operator")?;
    change(&state, caller, host, Operation::Release { reason }).await
}

async fn extend(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(host): Path<String>,
    body: Result<Json<ExtendRequest>, JsonRejection>,
) -> Result<Json<HostView>, ApiError> {
    let Json(body) = body?;
    let problems = body.problems();
    if !problems.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            ErrorBody { error: format!("the extension has {} problem(s)", problems.len()), problems },
        ));
    }
    let reason = reason_or(body.reason, "extended by an operator");
    change(&state, caller, host, Operation::Extend { seconds: body.duration_seconds, reason }).await
}

async fn approve(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(host): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<HostView>, ApiError> {
    // The body is optional (clients before reasons sent none).
    let body: ReasonRequest = if body.is_empty() {
        ReasonRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, format!("the body: {error}")))?
    };
    let reason = checked_reason(body.reason, "approved by an operator")?;
    change(&state, caller, host, Operation::Approve { reason }).await
}

async fn deny(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(host): Path<String>,
    body: Result<Json<ReasonRequest>, JsonRejection>,
) -> Result<Json<HostView>, ApiError> {
    let Json(body) = body?;
    let reason = checked_reason(body.reason, "denied by an operator")?;
    change(&state, caller, host, Operation::Deny { reason }).await
}

async fn tags(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(host): Path<String>,
    body: Result<Json<TagsRequest>, JsonRejection>,
) -> Result<Json<HostView>, ApiError> {
    let Json(body) = body?;
    if body.add.len() + body.remove.len() > crate::api::MAX_TAGS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{} tags in one request; the limit is {}",
                body.add.len() + body.remove.len(),
                crate::api::MAX_TAGS
            ),
        ));
    }
    change(&state, caller, host, Operation::Tags { add: body.add, remove: body.remove }).await
}

/// Every host with an enrolled or revoked agent key, or a key claiming it (pending).
async fn list_agents(State(state): State<ApiState>) -> Result<Json<Vec<AgentKeyView>>, ApiError> {
    let mut records: std::collections::BTreeMap<String, (Option<AgentRecord>, Option<super::agents::Claim>)> =
        std::collections::BTreeMap::new();
    for record in state.store.agents()? {
        let host = record.host.clone();
        records.entry(host).or_default().0 = Some(record);
    }
    for claim in state.store.claims()? {
        let host = claim.host.clone();
        records.entry(host).or_default().1 = Some(claim);
    }
    Ok(Json(
        records
            .values()
            .filter_map(|(record, claim)| AgentKeyView::new(record.as_ref(), claim.as_ref()))
            .collect(),
    ))
}

/// Records an operator's decision about a host's agent key, durably, with an audit entry.
fn decide_agent(
    state: &ApiState,
    caller: &Caller,
    record: &AgentRecord,
    what: &str,
) -> Result<Json<AgentKeyView>, ApiError> {
    state.store.put_agent(record)?;
    let host = state.store.host(&record.host)?;
    state.store.audit_now(&AuditEntry {
        at_ms: record.changed_at_ms,
        host: record.host.clone(),
        from: host.as_ref().map_or(super::lifecycle::HostState::NotIsolated, |h| h.state),
        to: host.as_ref().map_or(super::lifecycle::HostState::NotIsolated, |h| h.state),
        by: caller.0.clone(),
        event_id: None,
        generation: host.as_ref().map_or(0, |h| h.generation),
        why: format!("agent key {what}: {} ({})", record.key, record.reason),
        shadow: false,
    })?;
    state.store.flush()?;
    let claim = state.store.claim(&record.host)?;
    Ok(Json(AgentKeyView::new(Some(record), claim.as_ref()).expect("a record makes a view")))
}

fn checked_key(host: &str, key: &str) -> Result<String, ApiError> {
    check_host_id(host).map_err(|problem| ApiError::new(StatusCode::BAD_REQUEST, problem))?;
    let key = key.trim();
    cordon_wire::verifying_key_from_base64(key)
        .map_err(|problem| ApiError::new(StatusCode::BAD_REQUEST, format!("key: {problem}")))?;
    Ok(key.to_owned())
}

/// The record of `caller` trusting `key` for `host`'s reports, now.
fn enrolment(host: String, key: String, caller: &Caller, reason: String) -> AgentRecord {
    AgentRecord { host, state: AgentState::Enrolled, key, changed_at_ms: now_ms(), changed_by: caller.0.clone(), reason }
}

/// Trusts `key` for the host's reports from now on (a first enrolment or a key rotation).
async fn enroll_agent(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(host): Path<String>,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<Json<AgentKeyView>, ApiError> {
    let Json(body) = body?;
    let key = checked_key(&host, &body.key)?;
    let reason = checked_reason(body.reason, "enrolled by an operator")?;
    decide_agent(&state, &caller, &enrolment(host, key, &caller, reason), "enrolled")
}

/// Enrolls the key that claims the host, if it is the key the operator names (checked on the
/// host): what is accepted is never a key the operator has not seen.
async fn accept_agent(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(host): Path<String>,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<Json<AgentKeyView>, ApiError> {
    let Json(body) = body?;
    let key = checked_key(&host, &body.key)?;
    let reason = checked_reason(body.reason, "accepted by an operator")?;
    match state.store.claim(&host)? {
        Some(claim) if claim.key == key => {}
        Some(claim) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "the key claiming {host} is {}, not the key given: check the key on the host (cordon-enforcer \
                     keygen prints it); to trust a key no report has shown yet, use enroll",
                    claim.key
                ),
            ))
        }
        None => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("no key claims {host}: nothing to accept (to trust a key before its agent speaks, use enroll)"),
            ))
        }
    }
    decide_agent(&state, &caller, &enrolment(host, key, &caller, reason), "accepted")
}

/// Stops trusting the host's enrolled key; its reports are refused until a key is enrolled.
async fn revoke_agent(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(host): Path<String>,
    body: Result<Json<ReasonRequest>, JsonRejection>,
) -> Result<Json<AgentKeyView>, ApiError> {
    let Json(body) = body?;
    check_host_id(&host).map_err(|problem| ApiError::new(StatusCode::BAD_REQUEST, problem))?;
    let reason = checked_reason(body.reason, "revoked by an operator")?;
    let Some(enrolled) = state.store.agent(&host)? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no agent key is enrolled for {host}")));
    };
    let record = AgentRecord {
        state: AgentState::Revoked,
        changed_at_ms: now_ms(),
        changed_by: caller.0.clone(),
        reason,
        ..enrolled
    };
    decide_agent(&state, &caller, &record, "revoked")
}



#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShadowQuery {
    since: Option<String>,
}

/// What the shadow rules would have done since `since` (default 24h).
async fn shadow_report(
    State(state): State<ApiState>,
    query: Result<Query<ShadowQuery>, QueryRejection>,
) -> Result<Json<crate::api::ShadowReport>, ApiError> {
    let Query(query) = query?;
    let text = query.since.as_deref().unwrap_or("24h");
    let since = crate::client::parse_for(text)
        .map_err(|problem| ApiError::new(StatusCode::BAD_REQUEST, format!("since {text:?}: {problem}")))?;
    let since_ms = now_ms().saturating_sub(i64::try_from(since).unwrap_or(i64::MAX).saturating_mul(1_000));
    let entries = state.store.audit_entries()?;
    Ok(Json(crate::api::ShadowReport::of(&entries, since_ms)))
}

async fn show_policy(State(state): State<ApiState>) -> Json<PolicyView> {
    Json(PolicyView::new(&state.store.policy()))
}

async fn show_policy_version(
    State(state): State<ApiState>,
    Path(version): Path<String>,
) -> Result<Json<PolicyView>, ApiError> {
    let number = version_number(&version)?;
    Ok(Json(PolicyView::new(&stored_version(&state, number)?)))
}

/// A version number from a path or query, or 400.
fn version_number(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("{text:?} is not a policy version (a number from 1)"))
    })
}

/// The stored version `number`, or 404.
fn stored_version(state: &ApiState, number: u64) -> Result<PolicyVersion, ApiError> {
    state.store.policy_version(number)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("there is no policy version {number}; the one in force is {}", state.store.policy().version),
        )
    })
}

async fn policy_history(State(state): State<ApiState>) -> Result<Json<Vec<PolicyHistoryEntry>>, ApiError> {
    let versions = state.store.policy_versions()?;
    let changes = super::profiles::changes_by_version(&versions);
    let history = versions
        .iter()
        .zip(changes)
        .map(|(version, changes)| PolicyHistoryEntry {
            version: version.version,
            at: crate::api::rfc3339(version.at_ms),
            author: version.author.clone(),
            reason: version.reason.clone(),
            reverted_from: version.reverted_from,
            changes,
        })
        .collect();
    Ok(Json(history))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffQuery {
    from: String,
    to: Option<String>,
}

async fn diff_policy(
    State(state): State<ApiState>,
    query: Result<Query<DiffQuery>, QueryRejection>,
) -> Result<Json<PolicyDiff>, ApiError> {
    let Query(query) = query?;
    let from = stored_version(&state, version_number(&query.from)?)?;
    let to = match &query.to {
        Some(to) => stored_version(&state, version_number(to)?)?,
        None => (*state.store.policy()).clone(),
    };
    Ok(Json(PolicyDiff { from: from.version, to: to.version, changes: from.policy.diff(&to.policy) }))
}

/// Hands a policy change to the loop, which validates it (with the rules in force), stores it
/// as a new version and applies it to the isolated hosts it changes.
async fn change_policy(
    state: &ApiState,
    caller: Caller,
    change: PolicyChange,
    reason: String,
    expected_version: Option<u64>,
) -> Result<Json<PolicyView>, ApiError> {
    check_policy_reason(&reason).map_err(|problem| ApiError::new(StatusCode::BAD_REQUEST, problem))?;
    let version = change_policy_version(state, caller.0, change, reason, expected_version).await?;
    Ok(Json(PolicyView::new(&version)))
}

async fn set_policy(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<Json<SetPolicyRequest>, JsonRejection>,
) -> Result<Json<PolicyView>, ApiError> {
    let Json(body) = body?;
    let policy = IsolationPolicy { profiles: body.profiles };
    change_policy(&state, caller, PolicyChange::Set(policy), body.reason, body.expected_version).await
}

async fn revert_policy(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<Json<RevertPolicyRequest>, JsonRejection>,
) -> Result<Json<PolicyView>, ApiError> {
    let Json(body) = body?;
    change_policy(&state, caller, PolicyChange::Revert(body.version), body.reason, body.expected_version).await
}
