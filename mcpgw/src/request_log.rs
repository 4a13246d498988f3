//! A record of every HTTP request that reached an upstream server.
//!
//! Gateway tests assert on what did *not* arrive: a denied call never reaches the upstream, a
//! spoofed `x-mcp-*` header never survives the filter, the client's bearer token is not passed
//! through. The log sits in front of the MCP service, so it sees requests that rmcp rejects too.

use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// Larger bodies are refused with 413 rather than recorded.
const MAX_RECORDED_BODY: usize = 16 * 1024 * 1024;

/// One HTTP request as the upstream received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Header names lowercase, in arrival order; repeated headers appear repeatedly.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl RecordedRequest {
    /// First value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The JSON-RPC `method` of the body, if any.
    pub fn rpc_method(&self) -> Option<String> {
        self.json()?.get("method")?.as_str().map(str::to_owned)
    }

    /// `params.name` of a `tools/call` (or `prompts/get`) body, if any.
    pub fn rpc_name(&self) -> Option<String> {
        self.json()?.get("params")?.get("name")?.as_str().map(str::to_owned)
    }
}

/// Shared, cloneable log; clones see the same entries.
#[derive(Debug, Clone, Default)]
pub struct RequestLog {
    entries: Arc<Mutex<Vec<RecordedRequest>>>,
}

impl RequestLog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// A snapshot of every request so far, oldest first.
    pub fn all(&self) -> Vec<RecordedRequest> {
        self.lock().clone()
    }

    pub fn last(&self) -> Option<RecordedRequest> {
        self.lock().last().cloned()
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Whether any request carried a header with this name (case-insensitive).
    pub fn any_header(&self, name: &str) -> bool {
        self.lock().iter().any(|r| r.header(name).is_some())
    }

    /// Whether any request carried a header whose name starts with `prefix` (case-insensitive).
    pub fn any_header_with_prefix(&self, prefix: &str) -> bool {
        let prefix = prefix.to_ascii_lowercase();
        self.lock().iter().any(|r| r.headers.iter().any(|(n, _)| n.starts_with(&prefix)))
    }

    /// Every value received for a header, across all requests.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.lock()
            .iter()
            .flat_map(|r| r.headers.iter())
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Requests whose JSON-RPC body names this method (e.g. `tools/call`).
    pub fn with_rpc_method(&self, method: &str) -> Vec<RecordedRequest> {
        self.lock().iter().filter(|r| r.rpc_method().as_deref() == Some(method)).cloned().collect()
    }

    /// `tools/call` requests for this tool.
    pub fn tool_calls(&self, tool: &str) -> Vec<RecordedRequest> {
        self.with_rpc_method("tools/call").into_iter().filter(|r| r.rpc_name().as_deref() == Some(tool)).collect()
    }

    fn push(&self, request: RecordedRequest) {
        self.lock().push(request);
    }

    fn lock(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        // A panicking test thread must not hide the log from the others.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Axum middleware (`axum::middleware::from_fn_with_state(log, record)`): records the request,
/// then hands it on unchanged.
pub async fn record(State(log): State<RequestLog>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_RECORDED_BODY).await {
        Ok(body) => body,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let path = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    log.push(RecordedRequest { method: parts.method.to_string(), path, headers, body: body.clone() });
    next.run(Request::from_parts(parts, Body::from(body))).await
}
