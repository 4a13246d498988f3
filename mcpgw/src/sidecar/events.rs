//! `/events`: committed records, live, as server-sent events.
//!
//! Each record is encoded once, as the HTTP/1.1 chunk that carries its SSE event, and the
//! same bytes go to every subscriber who may see it. A subscriber is a [`Subscription`]
//! (what it may see, where it is on the bus, its replay from the store) and a writer. On
//! a connection whose first request is `/events` the sidecar writes the stream itself
//! ([`stream_to_socket`]): the connection's task writes the head and any replay, then
//! hands the socket to a fan-out shard ([`super::fanout`]), which writes live events to
//! all of its subscribers in one pass. On a keep-alive connection that already served
//! other requests, hyper writes the stream ([`events`]). Every writer keeps a bounded
//! queue per subscriber and drops one that falls behind, after a `lagged` event.

use super::fanout::{Adopt, Conn};
use super::serve::Socket;
use super::{error, from_filter, Sidecar};
use crate::audit_store::{AuditStore as _, Committed};
use axum::body::{Body, Bytes};
use axum::extract::{Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Buf as _;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// Records read from the store per page while a subscriber catches up.
const REPLAY_PAGE: usize = 500;
/// Queued chunks handed to one `writev`.
const WRITE_SLICES: usize = 64;

/// `/events`' query parameters: comma-separated lists; an empty list selects everything.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventParams {
    servers: Option<String>,
    methods: Option<String>,
    users: Option<String>,
    decisions: Option<String>,
}

/// Which records one subscriber gets: its filters and, unless it holds an audit role,
/// only its own.
#[derive(Debug, Clone)]
pub(super) struct Selection {
    servers: Vec<String>,
    methods: Vec<String>,
    users: Vec<String>,
    decisions: Vec<String>,
    /// `Some(user)` when the caller may see only its own records.
    only: Option<String>,
}

fn list(v: Option<&str>) -> Vec<String> {
    v.map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default()
}

impl Selection {
    pub(super) fn wants(&self, record: &Value) -> bool {
        let field = |k: &str| record.get(k).and_then(Value::as_str).unwrap_or_default();
        let pick = |list: &[String], k: &str| list.is_empty() || list.iter().any(|v| v == field(k));
        pick(&self.servers, "server")
            && pick(&self.methods, "method")
            && pick(&self.users, "user_id")
            && pick(&self.decisions, "decision")
            && self.only.as_deref().is_none_or(|me| field("user_id") == me)
    }
}

/// What goes on the bus: a committed record, parsed once (for the subscribers' filters)
/// and encoded once (for all of them), or a heartbeat.
#[derive(Debug)]
pub(super) struct Published {
    /// The record's sequence number; `None` for a heartbeat.
    seq: Option<u64>,
    value: Value,
    /// The SSE event as one HTTP/1.1 chunk (size line, event, CRLF).
    chunk: Bytes,
}

impl Published {
    pub(super) fn of(c: &Committed) -> Published {
        let mut value = c.value();
        // The event name is the decision; anything that is not a plain word (it came from
        // a record) is named `other` rather than allowed to break the stream's framing.
        let decision = match value.get("decision").and_then(Value::as_str) {
            Some(d) if !d.is_empty() && d.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') => d.to_owned(),
            Some(_) => "other".to_owned(),
            None => "none".to_owned(),
        };
        if let Some(map) = value.as_object_mut() {
            map.insert("seq".to_owned(), c.seq.into());
        }
        let chunk = chunk(Some(c.seq), &decision, &value.to_string());
        Published { seq: Some(c.seq), value, chunk }
    }

    /// The record's sequence number; `None` for a heartbeat.
    pub(super) fn seq(&self) -> Option<u64> {
        self.seq
    }

    /// The record, as subscribers' filters read it.
    pub(super) fn value(&self) -> &Value {
        &self.value
    }

    /// The event as one HTTP/1.1 chunk.
    pub(super) fn chunk(&self) -> &Bytes {
        &self.chunk
    }

    /// A `heartbeat` event: everything up to `last_seq` has been published.
    pub(super) fn heartbeat(last_seq: u64) -> Published {
        let chunk = chunk(None, "heartbeat", &json!({ "last_seq": last_seq }).to_string());
        Published { seq: None, value: Value::Null, chunk }
    }
}

/// A refused subscription's response (boxed: it is the rare case).
fn refusal(status: StatusCode, message: &str) -> Box<Response> {
    Box::new(error(status, message))
}

/// One SSE event framed as an HTTP/1.1 chunk.
fn chunk(id: Option<u64>, event: &str, data: &str) -> Bytes {
    let mut sse = String::with_capacity(data.len() + 48);
    if let Some(id) = id {
        sse.push_str("id: ");
        sse.push_str(&id.to_string());
        sse.push('\n');
    }
    sse.push_str("event: ");
    sse.push_str(event);
    sse.push('\n');
    // The data is JSON text, one line; split anyway, as SSE requires.
    for line in data.split('\n') {
        sse.push_str("data: ");
        sse.push_str(line.strip_suffix('\r').unwrap_or(line));
        sse.push('\n');
    }
    sse.push('\n');
    Bytes::from(format!("{:x}\r\n{sse}\r\n", sse.len()))
}

/// The SSE event inside a chunk (for hyper, which frames the body itself).
fn unframed(chunk: &Bytes) -> Bytes {
    let start = chunk.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    chunk.slice(start..chunk.len().saturating_sub(2).max(start))
}

pub(super) fn lagged_chunk() -> Bytes {
    chunk(None, "lagged", r#"{"reason":"the subscriber fell too far behind"}"#)
}

/// The chunk that ends a chunked body.
pub(super) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// One event for a subscriber.
pub(super) struct Item {
    /// The event as an HTTP/1.1 chunk.
    chunk: Bytes,
    /// From the live bus (as opposed to the store, while catching up): a subscriber too
    /// slow for these is dropped, while catching up it is waited for.
    live: bool,
}

/// One subscriber's place in the stream: its selection, its receiver on the bus, and
/// what it has been sent.
pub(super) struct Subscription {
    sidecar: Arc<Sidecar>,
    selection: Selection,
    live: tokio::sync::broadcast::Receiver<Arc<Published>>,
    /// The last sequence number this subscriber is past (sent, or not wanted).
    sent: u64,
    /// While catching up: read the store after `sent`.
    replaying: bool,
    /// A page read from the store, not yet handed out.
    backlog: VecDeque<Bytes>,
    /// The stream is over (after what `backlog` still holds).
    over: bool,
    _counted: SubscriberGuard,
}

/// Counts a subscriber in, and out when it is dropped.
pub(super) struct SubscriberGuard(Arc<Sidecar>);

impl SubscriberGuard {
    fn new(sidecar: &Arc<Sidecar>) -> SubscriberGuard {
        sidecar.counters.subscribers.inc();
        SubscriberGuard(Arc::clone(sidecar))
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.counters.subscribers.dec();
    }
}

impl Subscription {
    /// Checks a subscription request (the filter's secret, the caller's identity, the
    /// parameters) and subscribes; the error response says what is wrong.
    pub(super) fn open(sidecar: &Arc<Sidecar>, uri: &Uri, headers: &HeaderMap) -> Result<Subscription, Box<Response>> {
        if let Some(denied) = from_filter(sidecar, headers) {
            return Err(Box::new(denied));
        }
        let Ok(QueryParams(p)) = QueryParams::<EventParams>::try_from_uri(uri) else {
            return Err(refusal(StatusCode::BAD_REQUEST, "query parameters: servers, methods, users, decisions"));
        };
        // Identity comes from the filter, once: a second copy of any of these headers is
        // a request that could be read two ways.
        for name in [mcp_gateway::headers::USER_ID, mcp_gateway::headers::ROLES, "last-event-id"] {
            if headers.get_all(name).iter().count() > 1 {
                return Err(refusal(StatusCode::BAD_REQUEST, &format!("{name} appears more than once")));
            }
        }
        let header = |name: &str| headers.get(name).map(|v| v.to_str().map_err(|_| name.to_owned()));
        let user = match header(mcp_gateway::headers::USER_ID) {
            Some(Ok(u)) if !u.is_empty() => u.to_owned(),
            _ => return Err(refusal(StatusCode::FORBIDDEN, "no caller identity from the gateway")),
        };
        let roles = match header(mcp_gateway::headers::ROLES).transpose() {
            Ok(r) => list(r),
            Err(_) => return Err(refusal(StatusCode::FORBIDDEN, "no caller identity from the gateway")),
        };
        let sees_all = roles.iter().any(|r| sidecar.config.audit_roles.contains(r));
        let resume = match header("last-event-id") {
            None => None,
            Some(id) => match id.ok().and_then(|id| id.trim().parse::<u64>().ok()) {
                Some(id) => Some(id),
                None => {
                    return Err(refusal(StatusCode::BAD_REQUEST, "Last-Event-ID must be a record's sequence number"))
                }
            },
        };
        let selection = Selection {
            servers: list(p.servers.as_deref()),
            methods: list(p.methods.as_deref()),
            users: list(p.users.as_deref()),
            decisions: list(p.decisions.as_deref()),
            only: (!sees_all).then_some(user),
        };
        // Subscribe before reading where the bus is, so nothing published in between is
        // missed; what is on the bus and at or before `sent` is skipped.
        let live = sidecar.bus.subscribe();
        let sent = resume.unwrap_or_else(|| sidecar.last_published.load(Ordering::Acquire));
        Ok(Subscription {
            sidecar: Arc::clone(sidecar),
            selection,
            live,
            sent,
            replaying: resume.is_some(),
            backlog: VecDeque::new(),
            over: false,
            _counted: SubscriberGuard::new(sidecar),
        })
    }

    /// The next event for this subscriber; `None` once its stream is over. Cancel-safe:
    /// nothing is lost if the future is dropped before it is ready.
    pub(super) async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(chunk) = self.backlog.pop_front() {
                return Some(Item { chunk, live: false });
            }
            if self.over {
                return None;
            }
            if self.replaying {
                let from = self.sent;
                let Ok(page) = self.sidecar.with_store(move |store, _| store.after(from, REPLAY_PAGE)).await else {
                    eprintln!("mcpgw sidecar: an /events replay could not read the store");
                    self.over = true;
                    continue;
                };
                match page.last() {
                    None => self.replaying = false,
                    Some(last) => {
                        self.sent = last.seq;
                        let wanted = page.iter().map(Published::of).filter(|p| self.selection.wants(&p.value));
                        self.backlog.extend(wanted.map(|p| p.chunk));
                    }
                }
                continue;
            }
            let got = self.live.recv().await;
            if let Some(item) = self.take(got) {
                return Some(item);
            }
        }
    }

    /// The next live event if one is ready now (to write several at once).
    fn ready(&mut self) -> Option<Item> {
        if !self.backlog.is_empty() || self.replaying || self.over {
            return None;
        }
        loop {
            let got = match self.live.try_recv() {
                Ok(p) => Ok(p),
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
            };
            if let Some(item) = self.take(got) {
                return Some(item);
            }
            if self.over || self.replaying {
                return None;
            }
        }
    }

    /// What a message from the bus means for this subscriber.
    fn take(&mut self, got: Result<Arc<Published>, RecvError>) -> Option<Item> {
        match got {
            Ok(p) => match p.seq {
                None => Some(Item { chunk: p.chunk.clone(), live: true }),
                Some(seq) if seq <= self.sent => None, // already replayed from the store
                Some(seq) => {
                    self.sent = seq;
                    self.selection.wants(&p.value).then(|| Item { chunk: p.chunk.clone(), live: true })
                }
            },
            Err(RecvError::Lagged(_)) => {
                // More than the bus holds went by unread (while this subscriber read the
                // store, say): every one of them is in the store.
                self.replaying = true;
                None
            }
            Err(RecvError::Closed) => {
                self.over = true;
                None
            }
        }
    }

    /// The live subscription, for a fan-out shard to carry on with `conn`.
    fn into_adopt(self, conn: Conn) -> Adopt {
        Adopt { conn, selection: self.selection, sent: self.sent, live: self.live, counted: self._counted }
    }

    /// Still reading the store (or handing out what it read).
    fn catching_up(&self) -> bool {
        self.replaying || !self.backlog.is_empty()
    }

    /// Ends a subscriber whose queue is full: counts it and ends its stream with `lagged`.
    fn drop_lagging(&mut self) -> Bytes {
        self.over = true;
        self.backlog.clear();
        self.sidecar.counters.lagged.inc();
        lagged_chunk()
    }
}

/// `GET /events?servers=&methods=&users=&decisions=` on a connection hyper serves:
/// committed records as they come, as SSE. With `Last-Event-ID` it first replays what was
/// committed after that id, from the store, then goes on live with no gap and no
/// duplicate. A subscriber more than its queue behind gets a `lagged` event and is closed.
pub(super) async fn events(State(sidecar): State<Arc<Sidecar>>, headers: HeaderMap, uri: Uri) -> Response {
    let mut subscription = match Subscription::open(&sidecar, &uri, &headers) {
        Ok(s) => s,
        Err(refused) => return *refused,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(sidecar.config.subscriber_queue.max(1));
    // Set when the subscriber is dropped for falling behind: its stream then ends with a
    // `lagged` event, after what was queued for it.
    let lagged = Arc::new(AtomicBool::new(false));
    let dropped = Arc::clone(&lagged);
    let closing = sidecar.closing.clone();
    tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                item = subscription.next() => item,
                () = closing.cancelled() => return,
                () = tx.closed() => return,
            };
            let Some(item) = item else { return };
            if !item.live {
                // Catching up (or the `lagged` that ends the stream): wait for the client.
                if tx.send(item.chunk).await.is_err() {
                    return;
                }
                continue;
            }
            // A queue still full after hyper had its turn to write means the client does
            // not read: drop it, never wait.
            let mut sent = tx.try_send(item.chunk);
            if let Err(tokio::sync::mpsc::error::TrySendError::Full(chunk)) = sent {
                tokio::task::yield_now().await;
                sent = tx.try_send(chunk);
            }
            match sent {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    subscription.drop_lagging();
                    dropped.store(true, Ordering::Release);
                    return;
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    });
    use tokio_stream::StreamExt as _;
    let tail = tokio_stream::iter([()]).filter_map(move |()| lagged.load(Ordering::Acquire).then(lagged_chunk));
    let body = tokio_stream::wrappers::ReceiverStream::new(rx).chain(tail).map(|c| Ok::<_, Infallible>(unframed(&c)));
    ([("content-type", "text/event-stream"), ("cache-control", "no-cache")], Body::from_stream(body)).into_response()
}

/// The response head on a connection the sidecar writes itself. `connection: close`: the
/// connection carries this one stream and nothing after it.
const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
transfer-encoding: chunked\r\nconnection: close\r\n\r\n";

/// Streams `subscription` to a connection whose only request was this subscription:
/// each event is written straight from the shared chunk, several at once when they are
/// ready together, in one `writev`. Events that the socket does not take wait in a queue
/// of `subscriber_queue`; one more and the subscriber gets `lagged` and is closed. Ends
/// when the client closes, the stream ends or the sidecar shuts down.
pub(super) async fn stream_to_socket<S: Socket>(stream: S, mut subscription: Subscription) {
    let limit = subscription.sidecar.config.subscriber_queue.max(1);
    let closing = subscription.sidecar.closing.clone();
    let mut queue: VecDeque<Bytes> = VecDeque::from([Bytes::from_static(STREAM_HEAD)]);
    let mut receiving = true;
    let mut discard = [0_u8; 256];
    loop {
        if write_queued(&stream, &mut queue).is_err() {
            return;
        }
        if !receiving && queue.is_empty() {
            return; // dropping the socket closes it
        }
        // Caught up and all written: a fan-out shard carries on from here.
        if receiving && queue.is_empty() && !subscription.catching_up() && !subscription.over {
            let sidecar = Arc::clone(&subscription.sidecar);
            if let Some(fanout) = sidecar.fanout.get() {
                let Ok(conn) = stream.into_conn() else { return };
                // Not taken: the sidecar is closing, and the stream ends here.
                let _ = fanout.adopt(subscription.into_adopt(conn));
                return;
            }
        }
        tokio::select! {
            biased;
            () = closing.cancelled(), if receiving => {
                queue.push_back(Bytes::from_static(LAST_CHUNK));
                receiving = false;
            }
            // The client sends nothing more; reading only notices it closing.
            ready = stream.ready(tokio::io::Interest::READABLE) => {
                if ready.is_err() {
                    return;
                }
                match stream.try_read(&mut discard) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
            ready = stream.ready(tokio::io::Interest::WRITABLE), if !queue.is_empty() => {
                if ready.is_err() {
                    return;
                }
            }
            // While catching up, a full queue waits for the client; live, it is polled
            // on, to notice the client falling behind.
            item = subscription.next(), if receiving && (queue.len() < limit || !subscription.catching_up()) => {
                let mut item = item;
                while let Some(Item { chunk, live }) = item {
                    if live && queue.len() >= limit {
                        // Full: give the socket what it takes now; still full, the
                        // client is that far behind.
                        if write_queued(&stream, &mut queue).is_err() {
                            return;
                        }
                        if queue.len() >= limit {
                            queue.push_back(subscription.drop_lagging());
                            break;
                        }
                    }
                    queue.push_back(chunk);
                    item = subscription.ready();
                }
                if subscription.over && subscription.backlog.is_empty() {
                    // Over: write the rest, end the body, close.
                    receiving = false;
                    queue.push_back(Bytes::from_static(LAST_CHUNK));
                }
            }
        }
    }
}

/// Writes as much of `queue` as the socket takes now, without waiting.
fn write_queued<S: Socket>(stream: &S, queue: &mut VecDeque<Bytes>) -> std::io::Result<()> {
    write_queue(queue, |slices| stream.try_write_vectored(slices))
}

/// Writes `queue` through `write` (a non-blocking `writev`) until it is empty or the
/// socket takes no more (`WouldBlock`), dropping what was written. Err: the connection
/// is gone. The sidecar's own writers, per task and in the fan-out threads, share it.
pub(super) fn write_queue(
    queue: &mut VecDeque<Bytes>,
    mut write: impl FnMut(&[IoSlice<'_>]) -> std::io::Result<usize>,
) -> std::io::Result<()> {
    while !queue.is_empty() {
        let slices: Vec<IoSlice<'_>> = queue.iter().take(WRITE_SLICES).map(|b| IoSlice::new(b)).collect();
        let mut written = match write(&slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while written > 0 {
            let Some(front) = queue.front_mut() else { break };
            if written >= front.len() {
                written -= front.len();
                queue.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_chunk_and_hyper_gets_the_event_inside() {
        let c = chunk(Some(7), "allow", r#"{"a":1}"#);
        let sse = "id: 7\nevent: allow\ndata: {\"a\":1}\n\n";
        assert_eq!(&c[..], format!("{:x}\r\n{sse}\r\n", sse.len()).as_bytes());
        assert_eq!(&unframed(&c)[..], sse.as_bytes());
    }

    #[test]
    fn a_line_break_in_the_data_cannot_end_the_event_early() {
        let c = chunk(None, "heartbeat", "one\r\ntwo\nthree");
        assert_eq!(&unframed(&c)[..], b"event: heartbeat\ndata: one\ndata: two\ndata: three\n\n");
    }

    #[test]
    fn the_event_name_is_the_decision_when_it_is_a_plain_word() {
        let named = |decision: Value| {
            let record = json!({ "record_id": "r", "decision": decision }).to_string();
            let p = Published::of(&Committed { seq: 1, record, hash: [0; 32] });
            String::from_utf8(unframed(&p.chunk).to_vec()).unwrap().lines().nth(1).unwrap().to_owned()
        };
        assert_eq!(named(json!("would_deny")), "event: would_deny");
        assert_eq!(named(json!("allow\ndata: forged")), "event: other");
        assert_eq!(named(Value::Null), "event: none");
    }
}
