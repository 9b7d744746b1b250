//! The cluster status page (`GET /`) and the data behind it (`GET /cluster`).
//!
//! The page is one static HTML file with its CSS and script inline (no build step). It
//! asks only the node that served it, for `/cluster`; that node fetches every other
//! member's `/status` over HTTP itself (server-side aggregation: the browser needs to
//! reach one node, and no CORS is involved).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST};
use axum::response::{IntoResponse, Json, Response};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;

use crate::{api, Server};

/// The page, as shipped.
const PAGE: &str = include_str!("status.html");
/// How long fetching one peer's `/status` may take, connection included.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest `/status` body accepted from a peer.
const MAX_STATUS_BYTES: usize = 64 << 10;

/// `GET /`: the status page.
pub(crate) async fn page() -> Response {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /cluster`: every known member's `/status`, as this node could fetch them.
#[derive(Serialize)]
struct ClusterJson {
    /// The node that answered.
    from: u64,
    nodes: Vec<NodeJson>,
}

/// One member: its `/status`, or why it is missing.
#[derive(Serialize)]
struct NodeJson {
    id: u64,
    /// Its HTTP address, when known.
    http: Option<String>,
    status: Option<Value>,
    error: Option<String>,
}

/// `GET /cluster`. The members are those of `--peers-http` and those in this node's
/// configuration; every peer is asked at once, each for at most [`PEER_TIMEOUT`].
pub(crate) async fn cluster(State(server): State<Arc<Server>>) -> Response {
    let me = server.node.id();
    let local = api::local_status(&server).await;
    let mut ids: Vec<u64> = server.peers_http.read().keys().copied().collect();
    if let Ok(status) = &local {
        for list in ["voters", "learners"] {
            let members = status["members"][list]
                .as_array()
                .cloned()
                .unwrap_or_default();
            ids.extend(members.iter().filter_map(Value::as_u64));
        }
    }
    ids.sort_unstable();
    ids.dedup();

    let mut fetches = Vec::new();
    for id in ids.into_iter().filter(|id| *id != me) {
        let http = server.peers_http.read().get(&id).cloned();
        let fetch = http.clone().map(|addr| tokio::spawn(fetch_status(addr)));
        fetches.push((id, http, fetch));
    }
    let mut nodes = vec![node_json(
        me,
        server.peers_http.read().get(&me).cloned(),
        local,
    )];
    for (id, http, fetch) in fetches {
        let result = match fetch {
            None => Err("HTTP address unknown here (not in --peers-http)".to_string()),
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(format!("fetch task failed: {e}"))),
        };
        nodes.push(node_json(id, http, result));
    }
    nodes.sort_unstable_by_key(|n| n.id);
    Json(ClusterJson { from: me, nodes }).into_response()
}

fn node_json(id: u64, http: Option<String>, result: Result<Value, String>) -> NodeJson {
    let (status, error) = match result {
        Ok(status) => (Some(status), None),
        Err(e) => (None, Some(e)),
    };
    NodeJson {
        id,
        http,
        status,
        error,
    }
}

/// `GET http://{addr}/status` with hyper's client, bounded in time and size.
async fn fetch_status(addr: String) -> Result<Value, String> {
    match tokio::time::timeout(PEER_TIMEOUT, fetch(&addr)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} s", PEER_TIMEOUT.as_secs())),
    }
}

async fn fetch(addr: &str) -> Result<Value, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // The connection ends when `sender` is dropped after the answer; the timeout bounds
    // a peer that stops mid-answer.
    tokio::spawn(tokio::time::timeout(PEER_TIMEOUT, connection));
    let request = hyper::Request::get("/status")
        .header(HOST, addr)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("building the request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_STATUS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(format!("answered {status}: {}", text.trim()));
    }
    serde_json::from_slice(&body).map_err(|e| format!("answer is not JSON: {e}"))
}
