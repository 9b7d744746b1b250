//! The HTTP API: routes, handlers, and how raftnode's errors become statuses.
//!
//! Every `503` means "not applied, safe to retry" and carries `Retry-After`; `504`
//! means "outcome unknown" (see the table in the crate docs). Handlers never block a
//! runtime thread: a write awaits its `ProposalHandle::applied()` future (the response
//! and its `WriteToken`); `Node::read`, `Node::status` and the membership calls block,
//! so they run on the blocking pool.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::{Json, Router};
use raftnode::sessions::SessionRejection;
use raftnode::{
    MembershipError, PeerProgress, ProposeError, ReadConsistency, ReadError, Role, Session,
    SessionReply, Sessions, Status, WriteToken,
};
use serde::{Deserialize, Serialize};

use crate::{cluster, encode_delete, encode_put, KvResponse, RedbKv, Server};

/// Largest value accepted in a `PUT` body.
const MAX_VALUE_BYTES: usize = 512 << 10;
/// Largest body of the other requests.
const MAX_FORM_BYTES: usize = 4 << 10;
/// Largest key, after percent-decoding.
const MAX_KEY_BYTES: usize = 4 << 10;
/// How long membership changes and transfers may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// What every `503` tells the client to wait before retrying, in seconds.
const RETRY_AFTER_SECONDS: &str = "1";
/// The header of a write's answer that carries its [`WriteToken`], as `<index>-<term>`;
/// `GET /kv/{key}?after=<index>-<term>` takes it back.
const WRITE_TOKEN: HeaderName = HeaderName::from_static("raft-write-token");
/// `<session>:<seq>` on a `PUT` or `DELETE`: the write is applied at most once for that
/// pair; a retry with the same key gets the first attempt's answer.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set to `true` on an answer a retry got from the session table (not applied again).
const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// The id in the answer to `POST /sessions`.
const SESSION: HeaderName = HeaderName::from_static("raft-session");

/// The routes; `server` is every handler's state.
pub(crate) fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/", get(cluster::page))
        .route("/cluster", get(cluster::cluster))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route(
            "/kv/",
            any(|| async { text(StatusCode::BAD_REQUEST, "empty key") }),
        )
        .route("/kv/{*key}", get(read_key).put(put_key).delete(delete_key))
        .route("/sessions", post(open_session))
        .route("/members", post(add_member))
        .route("/members/{id}", delete(remove_member))
        .route("/leader", post(transfer))
        .method_not_allowed_fallback(|| async {
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                "wrong method; see the kv_server docs",
            )
        })
        .fallback(|| async {
            text(
                StatusCode::NOT_FOUND,
                "unknown path; see /kv/{key}, /members, /leader, /status, /metrics, /cluster, /",
            )
        })
        .with_state(server)
}

// ------------------------------------------------------------------ responses

/// One line of plain text.
pub(crate) fn text(status: StatusCode, message: impl Into<String>) -> Response {
    let mut body = message.into();
    body.push('\n');
    (status, [(CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// `503` with `Retry-After`: nothing was applied, and trying again later is safe.
pub(crate) fn retry_later(message: impl Into<String>) -> Response {
    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    response
}

/// `504`: the command reached raft and the wait ended; it may or may not be applied.
fn outcome_unknown(error: impl std::fmt::Display) -> Response {
    text(
        StatusCode::GATEWAY_TIMEOUT,
        format!("outcome unknown: the write may or may not have been applied ({error})"),
    )
}

/// The answer to a connection beyond `--max-connections`.
pub(crate) fn too_many_connections() -> Response {
    retry_later("too many connections; retry later")
}

/// `500` for a blocking task that panicked or was cancelled.
fn task_failed(error: tokio::task::JoinError) -> Response {
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("request task failed: {error}"),
    )
}

fn leads(server: &Server) -> bool {
    server.node.leader() == Some(server.node.id())
}

/// A `307` to the leader, or `503` when it or its HTTP address is unknown.
fn redirect(server: &Server, uri: &Uri, leader: Option<u64>) -> Response {
    let Some(leader) = leader.or_else(|| server.node.leader()) else {
        return retry_later("no leader known; retry shortly");
    };
    if leader == server.node.id() {
        return retry_later("leadership is changing; retry shortly");
    }
    let Some(addr) = server.peers_http.read().get(&leader).cloned() else {
        return retry_later(format!(
            "the leader is node {leader}, whose HTTP address is unknown here (--peers-http)"
        ));
    };
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut response = text(
        StatusCode::TEMPORARY_REDIRECT,
        format!("node {leader} leads"),
    );
    match format!("http://{addr}{target}").parse() {
        Ok(location) => {
            response.headers_mut().insert(LOCATION, location);
            response
        }
        Err(_) => retry_later(format!(
            "the leader is node {leader}, whose HTTP address {addr:?} does not make a URL"
        )),
    }
}

// ------------------------------------------------------------------ request parts

/// The key of a `/kv/{key}` request: the rest of the path, percent-decoded; or why it
/// is refused (a `400`).
fn key_of(uri: &Uri) -> Result<Vec<u8>, String> {
    let raw = uri.path().strip_prefix("/kv/").unwrap_or_default();
    // `percent_decode_str` passes a malformed escape through as it is; refuse it, so
    // `/kv/%zz` is an error rather than the key "%zz".
    let bytes = raw.as_bytes();
    for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'%') {
        let hex = bytes.get(i + 1..i + 3);
        if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
            return Err(format!("bad percent escape in {raw:?}"));
        }
    }
    let key: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    if key.is_empty() {
        return Err("empty key".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!("key exceeds {MAX_KEY_BYTES} bytes"));
    }
    Ok(key)
}

/// Reads a body of at most `limit` bytes; `413` from `Content-Length` alone when the
/// client declares more, before any of the body is read.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Response> {
    let too_large = |size: String| {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body{size} exceeds the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared.filter(|l| *l > limit as u64) {
        return Err(too_large(format!(" of {length} bytes")));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over {
            too_large(String::new())
        } else {
            text(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
        }
    })
}

/// Parses an `a=1&b=2` form body.
async fn read_form(headers: &HeaderMap, body: Body) -> Result<BTreeMap<String, String>, Response> {
    let raw = read_body(headers, body, MAX_FORM_BYTES).await?;
    serde_urlencoded::from_bytes(&raw)
        .map_err(|e| text(StatusCode::BAD_REQUEST, format!("bad form body: {e}")))
}

// ------------------------------------------------------------------ keys

/// The one read of the store: the value of `key`, copied out of the state machine.
fn read_value(kv: &Sessions<RedbKv>, key: &[u8]) -> Option<Bytes> {
    kv.inner().get(key)
}

/// `command` in the envelope the state machine expects: in the session the
/// `Idempotency-Key` header names, or plain without it; the text of a `400` for a
/// malformed key.
fn envelope(headers: &HeaderMap, command: &[u8]) -> Result<Bytes, &'static str> {
    let Some(raw) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(Sessions::<RedbKv>::plain(command));
    };
    let number = |part: &str| {
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse::<u64>().ok())
            .flatten()
    };
    let parsed = raw
        .to_str()
        .ok()
        .and_then(|v| v.split_once(':'))
        .map(|(s, q)| (number(s), number(q)));
    match parsed {
        Some((Some(session), Some(seq))) if seq > 0 => Ok(Session::resume(session, seq)
            .command(command)
            .bytes()
            .clone()),
        _ => Err(
            "Idempotency-Key must be <session>:<seq>: a session id from POST /sessions and \
             a sequence number from 1, one higher for each new write (e.g. 12:1)",
        ),
    }
}

async fn put_key(
    State(server): State<Arc<Server>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let key = match key_of(&uri) {
        Ok(key) => key,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let value = match read_body(&headers, body, MAX_VALUE_BYTES).await {
        Ok(value) => value,
        Err(response) => return response,
    };
    match envelope(&headers, &encode_put(&key, &value)) {
        Ok(command) => write(&server, &uri, command).await,
        Err(e) => text(StatusCode::BAD_REQUEST, e),
    }
}

async fn delete_key(State(server): State<Arc<Server>>, uri: Uri, headers: HeaderMap) -> Response {
    let key = match key_of(&uri) {
        Ok(key) => key,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    match envelope(&headers, &encode_delete(&key)) {
        Ok(command) => write(&server, &uri, command).await,
        Err(e) => text(StatusCode::BAD_REQUEST, e),
    }
}

/// `POST /sessions`: opens a client session; `201` with its id in `Raft-Session` and
/// the body `{"session": <id>}`.
async fn open_session(State(server): State<Arc<Server>>, uri: Uri) -> Response {
    match propose(&server, &uri, Sessions::<RedbKv>::register_command()).await {
        Ok((SessionReply::Registered(id), _)) => {
            let mut response = (
                StatusCode::CREATED,
                Json(serde_json::json!({ "session": id })),
            )
                .into_response();
            let value = HeaderValue::from_str(&id.to_string()).expect("digits are valid");
            response.headers_mut().insert(SESSION, value);
            response
        }
        Ok((other, _)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer to a registration: {other:?}"),
        ),
        Err(response) => response,
    }
}

/// A `PUT` or `DELETE`: the answer to the applied command (or, for a retry the session
/// table recognized, to its first application, with `Idempotent-Replayed: true`).
async fn write(server: &Server, uri: &Uri, command: Bytes) -> Response {
    match propose(server, uri, command).await {
        Ok((SessionReply::Applied(response), token)) => with_token(applied(response), token),
        Ok((SessionReply::Repeated(response), token)) => {
            let mut answer = with_token(applied(response), token);
            answer
                .headers_mut()
                .insert(REPLAYED, HeaderValue::from_static("true"));
            answer
        }
        Ok((SessionReply::Rejected(SessionRejection::Expired { id }), _)) => text(
            StatusCode::GONE,
            format!(
                "session {id} has expired (or was never opened): whether an earlier attempt \
                 of this write was applied is unknown; open a new session with POST /sessions"
            ),
        ),
        Ok((SessionReply::Rejected(rejection), _)) => {
            text(StatusCode::CONFLICT, rejection.to_string())
        }
        Ok((SessionReply::Registered(_), _)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "a write was answered as a registration",
        ),
        Err(response) => response,
    }
}

/// Proposes on the leader and waits for the outcome, at most `request_timeout`.
async fn propose(
    server: &Server,
    uri: &Uri,
    command: Bytes,
) -> Result<(SessionReply<KvResponse>, WriteToken), Response> {
    if !leads(server) {
        return Err(redirect(server, uri, None));
    }
    let deadline = Instant::now() + server.request_timeout;
    let handle = server
        .node
        .propose(command)
        .map_err(|e| propose_error(server, uri, e))?;
    let waited = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        handle.applied(),
    )
    .await;
    match waited {
        Ok(Ok(applied)) => Ok(applied),
        Ok(Err(e)) => Err(propose_error(server, uri, e)),
        // The command was handed to raft: whether it applies is not known here.
        Err(_elapsed) => Err(outcome_unknown(ProposeError::Timeout)),
    }
}

/// The answer to a command the state machine applied.
fn applied(response: KvResponse) -> Response {
    match response {
        KvResponse::Put { .. } | KvResponse::Deleted { previous: Some(_) } => {
            StatusCode::NO_CONTENT.into_response()
        }
        KvResponse::Deleted { previous: None } => text(StatusCode::NOT_FOUND, "no such key"),
        KvResponse::Invalid(e) => text(StatusCode::BAD_REQUEST, e),
        other => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected state machine answer {other:?}"),
        ),
    }
}

/// `token` as `Raft-Write-Token` and `?after=` spell it: `<index>-<term>`.
fn format_token(token: WriteToken) -> String {
    format!("{}-{}", token.index(), token.term())
}

/// Parses `<index>-<term>` (two decimal numbers), or says why it is refused (a `400`).
fn parse_token(text: &str) -> Result<WriteToken, String> {
    let number = |part: &str| {
        // `u64::from_str` takes a leading `+`; a token never has one.
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse::<u64>().ok())
            .flatten()
    };
    match text.split_once('-').map(|(i, t)| (number(i), number(t))) {
        Some((Some(index), Some(term))) => Ok(WriteToken::new(index, term)),
        _ => Err(format!(
            "after={text:?} is not a write token: pass the Raft-Write-Token header of a \
             PUT or DELETE answer, <index>-<term> (two decimal numbers, e.g. after=42-3)"
        )),
    }
}

/// `response` with `Raft-Write-Token: <index>-<term>`.
fn with_token(mut response: Response, token: WriteToken) -> Response {
    let value = HeaderValue::from_str(&format_token(token)).expect("digits and '-' are valid");
    response.headers_mut().insert(WRITE_TOKEN, value);
    response
}

fn propose_error(server: &Server, uri: &Uri, e: ProposeError) -> Response {
    match e {
        ProposeError::NotLeader { leader } => redirect(server, uri, leader),
        ProposeError::TooLarge { .. } => text(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        ProposeError::OutcomeUnknown { .. } | ProposeError::Timeout => outcome_unknown(e),
        // Dropped, Busy, Stopped (and Empty, which a key-value command never is):
        // nothing was or will be applied.
        _ => retry_later(e.to_string()),
    }
}

/// `?consistency=` and `?after=` of a read.
#[derive(Deserialize)]
struct ReadParams {
    consistency: Option<String>,
    /// A write's token: read on this node once it applied that write.
    after: Option<String>,
}

async fn read_key(
    State(server): State<Arc<Server>>,
    uri: Uri,
    Query(params): Query<ReadParams>,
) -> Response {
    let key = match key_of(&uri) {
        Ok(key) => key,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let consistency = match (params.after.as_deref(), params.consistency.as_deref()) {
        (Some(_), Some(_)) => {
            return text(
                StatusCode::BAD_REQUEST,
                "use after= or consistency=, not both: after= reads this node's state \
                 once it applied the token's write",
            )
        }
        (Some(token), None) => match parse_token(token) {
            Ok(token) => ReadConsistency::AtLeast(token),
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        },
        (None, None | Some("linearizable")) => ReadConsistency::Linearizable,
        (None, Some("lease")) => ReadConsistency::Lease,
        (None, Some("stale")) => ReadConsistency::Stale,
        (None, Some(other)) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("consistency={other}: use linearizable, lease or stale"),
            )
        }
    };
    if consistency == ReadConsistency::Lease && !leads(&server) {
        return redirect(&server, &uri, None);
    }
    let node = server.node.clone();
    let timeout = server.request_timeout;
    let read = tokio::task::spawn_blocking(move || {
        node.read(consistency, timeout, move |kv| read_value(kv, &key))
    })
    .await;
    match read {
        Ok(Ok(Some(value))) => {
            ([(CONTENT_TYPE, "application/octet-stream")], value).into_response()
        }
        Ok(Ok(None)) => text(StatusCode::NOT_FOUND, "no such key"),
        Ok(Err(ReadError::NotLeader { leader })) => redirect(&server, &uri, leader),
        Ok(Err(ReadError::Timeout)) => match consistency {
            ReadConsistency::AtLeast(token) => retry_later(format!(
                "read timed out: this node has not applied the token's write (index {}) yet; \
                 retry shortly",
                token.index()
            )),
            _ => retry_later(
                "read timed out: no leader or no quorum confirmed the read index; retry shortly",
            ),
        },
        Ok(Err(e @ (ReadError::Busy | ReadError::Stopped))) => retry_later(e.to_string()),
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => task_failed(e),
    }
}

// ------------------------------------------------------------------ membership

fn membership_error(server: &Server, uri: &Uri, e: MembershipError) -> Response {
    match e {
        MembershipError::NotLeader { leader } => redirect(server, uri, leader),
        MembershipError::Invalid(_) => text(StatusCode::BAD_REQUEST, e.to_string()),
        MembershipError::Rejected(_) => text(StatusCode::CONFLICT, e.to_string()),
        MembershipError::OutcomeUnknown { .. } | MembershipError::Timeout => {
            text(StatusCode::GATEWAY_TIMEOUT, format!("outcome unknown: {e}"))
        }
        MembershipError::CatchUpTimeout { id, .. } => text(
            StatusCode::GATEWAY_TIMEOUT,
            format!("{e}; POST it again with role=voter to promote it once node {id} is up"),
        ),
        _ => retry_later(e.to_string()),
    }
}

/// Voters and learners after a change, as `POST /members` and `DELETE /members/{id}`
/// answer.
#[derive(Serialize)]
struct Members {
    voters: Vec<u64>,
    learners: Vec<u64>,
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

fn members(cs: &raftnode::Membership) -> Response {
    Json(Members {
        voters: sorted(&cs.voters),
        learners: sorted(&cs.learners),
    })
    .into_response()
}

/// Runs a blocking `Node` call on the blocking pool.
async fn blocking<T: Send + 'static>(
    server: &Arc<Server>,
    call: impl FnOnce(&Server) -> T + Send + 'static,
) -> Result<T, Response> {
    let server = server.clone();
    tokio::task::spawn_blocking(move || call(&server))
        .await
        .map_err(task_failed)
}

async fn add_member(
    State(server): State<Arc<Server>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let form = match read_form(&headers, body).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let bad = |m: String| text(StatusCode::BAD_REQUEST, m);
    let id = match form.get("id").map(|v| v.parse::<u64>()) {
        Some(Ok(id)) if id > 0 => id,
        _ => return bad("id=N (non-zero) is required".into()),
    };
    let Some(addr) = form.get("addr").cloned() else {
        return bad("addr=HOST:PORT (the new node's raft address) is required".into());
    };
    if addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_none()
    {
        return bad(format!("addr={addr:?} is not HOST:PORT"));
    }
    let voter = match form.get("role").map(String::as_str) {
        None | Some("learner") => false,
        Some("voter") => true,
        Some(other) => return bad(format!("role={other}: use learner or voter")),
    };
    if !leads(&server) {
        return redirect(&server, &uri, None);
    }
    if let Some(http) = form.get("http") {
        server.peers_http.write().insert(id, http.clone());
    }
    // `add_voter` adds the node as a learner and promotes it once it has caught up, so
    // the quorum never waits on an empty node (docs/membership.md).
    let added = blocking(&server, move |s| {
        if voter {
            s.node.add_voter(id, addr, ADMIN_TIMEOUT)
        } else {
            s.node.add_learner(id, addr, ADMIN_TIMEOUT)
        }
    })
    .await;
    match added {
        Ok(Ok(cs)) => members(&cs),
        Ok(Err(e)) => membership_error(&server, &uri, e),
        Err(response) => response,
    }
}

async fn remove_member(
    State(server): State<Arc<Server>>,
    uri: Uri,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return text(
            StatusCode::BAD_REQUEST,
            "use DELETE /members/{id} with a numeric id",
        );
    };
    if !leads(&server) {
        return redirect(&server, &uri, None);
    }
    match blocking(&server, move |s| s.node.remove(id, ADMIN_TIMEOUT)).await {
        Ok(Ok(cs)) => members(&cs),
        Ok(Err(e)) => membership_error(&server, &uri, e),
        Err(response) => response,
    }
}

async fn transfer(
    State(server): State<Arc<Server>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let form = match read_form(&headers, body).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let to = match form.get("to").map(|v| v.parse::<u64>()) {
        Some(Ok(to)) if to > 0 => to,
        _ => return text(StatusCode::BAD_REQUEST, "to=N (a voter's id) is required"),
    };
    if !leads(&server) {
        return redirect(&server, &uri, None);
    }
    if to == server.node.id() {
        return text(StatusCode::OK, format!("node {to} already leads"));
    }
    match blocking(&server, move |s| s.node.transfer_leader(to, ADMIN_TIMEOUT)).await {
        Ok(Ok(())) => text(StatusCode::OK, format!("node {to} leads")),
        Ok(Err(e)) => membership_error(&server, &uri, e),
        Err(response) => response,
    }
}

// ------------------------------------------------------------------ status

/// `GET /status`: this node's view, as JSON.
#[derive(Serialize)]
pub(crate) struct StatusJson {
    id: u64,
    role: &'static str,
    term: u64,
    leader: Option<u64>,
    leader_http: Option<String>,
    commit: u64,
    applied: u64,
    last_index: u64,
    snapshot_index: u64,
    members: MembersJson,
    removed: bool,
    http_connections: usize,
    /// The leader's view of each peer's replication; empty on other nodes.
    progress: Vec<ProgressJson>,
    /// What `Node::diagnose` finds wrong (docs/operations.md); empty when healthy.
    findings: Vec<FindingJson>,
}

#[derive(Serialize)]
struct FindingJson {
    kind: &'static str,
    evidence: String,
    remedy: &'static str,
}

#[derive(Serialize)]
struct MembersJson {
    voters: Vec<u64>,
    voters_outgoing: Vec<u64>,
    learners: Vec<u64>,
}

#[derive(Serialize)]
struct ProgressJson {
    id: u64,
    matched: u64,
    next_index: u64,
    state: String,
    is_learner: bool,
    recent_active: bool,
}

impl From<&PeerProgress> for ProgressJson {
    fn from(p: &PeerProgress) -> Self {
        ProgressJson {
            id: p.id,
            matched: p.matched,
            next_index: p.next_index,
            state: p.state.to_string(),
            is_learner: p.is_learner,
            recent_active: p.recent_active,
        }
    }
}

fn status_json(server: &Server, s: &Status) -> StatusJson {
    let role = match s.role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre_candidate",
    };
    let mut progress: Vec<ProgressJson> = s.progress.iter().map(ProgressJson::from).collect();
    progress.sort_unstable_by_key(|p| p.id);
    StatusJson {
        id: s.id,
        role,
        term: s.term,
        leader: s.leader,
        leader_http: s
            .leader
            .and_then(|l| server.peers_http.read().get(&l).cloned()),
        commit: s.commit,
        applied: s.applied,
        last_index: s.last_index,
        snapshot_index: s.snapshot_index,
        members: MembersJson {
            voters: sorted(&s.voters),
            voters_outgoing: sorted(&s.voters_outgoing),
            learners: sorted(&s.learners),
        },
        removed: s.removed,
        http_connections: server.connections.load(Ordering::Relaxed),
        progress,
        findings: s
            .findings
            .iter()
            .map(|f| FindingJson {
                kind: f.kind.name(),
                evidence: f.evidence.clone(),
                remedy: f.remedy,
            })
            .collect(),
    }
}

/// This node's status as JSON, or why it could not be had.
pub(crate) async fn local_status(server: &Arc<Server>) -> Result<serde_json::Value, String> {
    match blocking(server, |s| s.node.status().map(|st| status_json(s, &st))).await {
        Ok(Ok(json)) => serde_json::to_value(json).map_err(|e| e.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the status task failed".into()),
    }
}

/// `GET /metrics`: this node's metrics in Prometheus text format (docs/operations.md).
async fn metrics(State(server): State<Arc<Server>>) -> Response {
    use raftnode::export::prometheus::{Encoder, TextEncoder};
    let gathered = blocking(&server, |s| s.metrics.gather()).await;
    let families = match gathered {
        Ok(families) => families,
        Err(response) => return response,
    };
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&families, &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(CONTENT_TYPE, encoder.format_type().to_string())],
            body,
        )
            .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn status(State(server): State<Arc<Server>>) -> Response {
    match blocking(&server, |s| s.node.status().map(|st| status_json(s, &st))).await {
        Ok(Ok(json)) => Json(json).into_response(),
        Ok(Err(e)) => retry_later(e.to_string()),
        Err(response) => response,
    }
}
