//! The HTTP context: one request's hooks, from its headers to its log line.
//!
//! A request's state lives in a [`Request`] shared with the waiter list while it waits
//! for keys; the root context resumes it through [`act`].

use super::host::{Buffer, Flow, Host, Level, Map};
use super::{epoch_ms, shared, Metrics, SharedVm, Vm, Waiter, MAX_LIST_REPLY, MAX_WAITERS};
use crate::config::Config;
use crate::gateway::{Exchange, Head, HeaderEdits, ResponseBody, Step};
use crate::rbac::Catalog;
use crate::reject::Reply;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

/// Where a request is in its life.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    #[default]
    Head,
    AwaitKeys,
    AwaitBody,
    Forwarded,
    Replied,
}

/// One request's state, shared with the waiter list while it waits for keys.
#[derive(Default)]
pub(super) struct Request {
    pub(super) exchange: Option<Exchange>,
    pub(super) phase: Phase,
    /// The complete body, when it arrived while the request waited for keys.
    body: Option<Vec<u8>>,
    /// How the response body is handled (set from the response headers).
    response: Option<ResponseBody>,
    /// Content type of the response.
    response_type: String,
}

/// One HTTP request.
pub struct Filter {
    context_id: u32,
    vm: Option<SharedVm>,
    request: Rc<RefCell<Request>>,
    /// Time spent in this request's hooks so far (the filter time histogram).
    busy: Duration,
}

impl Filter {
    pub(super) fn new(context_id: u32, vm: Option<SharedVm>) -> Filter {
        Filter { context_id, vm, request: Rc::new(RefCell::new(Request::default())), busy: Duration::ZERO }
    }

    /// Adds the time since `since` to the request's filter time.
    fn spent(&mut self, host: &impl Host, since: SystemTime) {
        self.busy += host.now().duration_since(since).unwrap_or_default();
    }

    pub fn on_request_headers(&mut self, host: &impl Host, end_of_stream: bool) -> Flow {
        let started = host.now();
        let flow = self.request_headers(host, end_of_stream, started);
        self.spent(host, started);
        flow
    }

    fn request_headers(&mut self, host: &impl Host, end_of_stream: bool, started: SystemTime) -> Flow {
        let Some(vm) = self.vm.clone() else {
            return fail_closed(host, &self.request, "no configuration");
        };
        // Bytes, not strings: the SDK's string variant panics on non-UTF-8 values.
        let headers: Vec<(String, String)> = match host.map(Map::RequestHeaders) {
            Ok(h) => h.into_iter().map(|(n, v)| (n, text(v))).collect(),
            Err(_) => return fail_closed(host, &self.request, "cannot read request headers"),
        };
        let mut exchange = Exchange::new(started);
        let needs_peer = vm.borrow().config.regions.as_ref().is_some_and(crate::region::Regions::needs_peer);
        if needs_peer {
            let peer = host.property(&["source", "address"]).ok().flatten();
            exchange.set_peer(peer.and_then(|b| strip_port(&String::from_utf8_lossy(&b)).parse().ok()));
        }
        let session_id = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("mcp-session-id")).map(|(_, v)| v.trim());
        // Bound session ids carry their owner; only the table needs a lookup.
        let table = vm.borrow().config.session_binding.is_none();
        if let (Some(id), true) = (session_id, table) {
            exchange.set_session_owner(shared::session_owner(host, &vm, id, epoch_ms(started)));
        }
        let (step, edits) = {
            let mut vmb = vm.borrow_mut();
            let Vm { config, store, .. } = &mut *vmb;
            let config = config.clone();
            exchange.on_request_headers(&config, store, Head::new(headers), end_of_stream, started)
        };
        self.request.borrow_mut().exchange = Some(exchange);
        act(host, &vm, &self.request, self.context_id, step, &edits, false)
    }

    pub fn on_request_body(&mut self, host: &impl Host, body_size: usize, end_of_stream: bool) -> Flow {
        let phase = self.request.borrow().phase;
        match phase {
            Phase::Replied => return Flow::Pause,
            Phase::Forwarded => return Flow::Continue,
            Phase::Head | Phase::AwaitKeys | Phase::AwaitBody => {}
        }
        let since = host.now();
        let flow = self.request_body(host, phase, body_size, end_of_stream);
        self.spent(host, since);
        flow
    }

    fn request_body(&mut self, host: &impl Host, phase: Phase, body_size: usize, end_of_stream: bool) -> Flow {
        let Some(vm) = self.vm.clone() else {
            return fail_closed(host, &self.request, "no configuration");
        };
        let config = vm.borrow().config.clone();
        let too_large =
            self.request.borrow_mut().exchange.as_mut().and_then(|ex| ex.on_body_progress(&config, body_size));
        if let Some(reply) = too_large {
            return send(host, &self.request, reply);
        }
        if !end_of_stream {
            return Flow::Pause;
        }
        let body = match host.buffer(Buffer::RequestBody, 0, body_size) {
            Ok(body) => body.unwrap_or_default(),
            Err(_) => return fail_closed(host, &self.request, "cannot read request body"),
        };
        if phase != Phase::AwaitBody {
            // Still waiting for keys: keep the body until the head is decided.
            self.request.borrow_mut().body = Some(body);
            return Flow::Pause;
        }
        let (step, edits) = decide_body(host, &vm, &self.request, &body);
        act(host, &vm, &self.request, self.context_id, step, &edits, false)
    }

    /// MCP clients never send request trailers; a body that ends in trailers never
    /// reaches `end_of_stream` in the body callback, so refuse it instead of waiting.
    pub fn on_request_trailers(&mut self, host: &impl Host) -> Flow {
        let phase = self.request.borrow().phase;
        match phase {
            Phase::Replied => Flow::Pause,
            Phase::Forwarded => Flow::Continue,
            _ => {
                let reply = self.request.borrow_mut().exchange.as_mut().and_then(Exchange::on_request_trailers);
                match reply {
                    Some(reply) => send(host, &self.request, reply),
                    None => Flow::Continue,
                }
            }
        }
    }

    pub fn on_response_headers(&mut self, host: &impl Host) -> Flow {
        let needed = self.request.borrow().exchange.as_ref().map(Exchange::response_headers_needed);
        let Some((inspect, track_session)) = needed else { return Flow::Continue };
        if !inspect && !track_session {
            return Flow::Continue;
        }
        let since = host.now();
        self.response_headers(host, inspect, track_session);
        self.spent(host, since);
        Flow::Continue
    }

    fn response_headers(&mut self, host: &impl Host, inspect: bool, track_session: bool) {
        let header = |name: &str| {
            host.map_value(Map::ResponseHeaders, name).ok().flatten().map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        let (content_type, encoding) = if inspect {
            (header("content-type").unwrap_or_default(), header("content-encoding"))
        } else {
            Default::default()
        };
        let (status, session_id) = if track_session {
            (header(":status").and_then(|s| s.parse::<u32>().ok()).unwrap_or(0), header("mcp-session-id"))
        } else {
            (0, None)
        };
        let read_limit = self.vm.as_ref().map_or(0, |vm| vm.borrow().config.reply_read_bytes);
        let (handling, change, bound) = {
            let mut r = self.request.borrow_mut();
            match r.exchange.as_mut() {
                Some(ex) => {
                    let bound = match (&self.vm, session_id.as_deref()) {
                        (Some(vm), Some(id)) => ex.client_session_id(&vm.borrow().config, status, id.trim()),
                        _ => None,
                    };
                    (
                        ex.on_response_headers(&content_type, encoding.as_deref(), read_limit),
                        ex.session_change(status, session_id.as_deref()),
                        bound,
                    )
                }
                None => (ResponseBody::Untouched, None, None),
            }
        };
        // Bound session ids: the client gets the id with its owner's tag.
        if let Some(bound) = bound {
            let _ = host.set_map_value(Map::ResponseHeaders, "mcp-session-id", &bound);
        }
        // Recorded before the reply reaches the client, so its next request finds it
        // (bound session ids are never looked up: nothing to record).
        let table = self.vm.as_ref().is_some_and(|vm| vm.borrow().config.session_binding.is_none());
        let change = change.filter(|_| table);
        if let (Some(change), Some(vm)) = (change, &self.vm) {
            let idle_ms = vm.borrow().config.session_idle_ms;
            shared::change_session(host, &change, idle_ms, epoch_ms(host.now()));
        }
        if !matches!(handling, ResponseBody::Untouched | ResponseBody::Read) {
            // The body may change length.
            let _ = host.remove_map_value(Map::ResponseHeaders, "content-length");
        }
        let mut r = self.request.borrow_mut();
        r.response = Some(handling);
        r.response_type = content_type;
    }

    pub fn on_response_body(&mut self, host: &impl Host, body_size: usize, end_of_stream: bool) -> Flow {
        let handling = self.request.borrow().response.unwrap_or(ResponseBody::Untouched);
        if handling == ResponseBody::Untouched {
            return Flow::Continue;
        }
        let since = host.now();
        let flow = self.response_body(host, handling, body_size, end_of_stream);
        self.spent(host, since);
        flow
    }

    fn response_body(
        &mut self,
        host: &impl Host,
        handling: ResponseBody,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        match handling {
            ResponseBody::Untouched => Flow::Continue,
            ResponseBody::Drop => {
                if host.set_buffer(Buffer::ResponseBody, 0, body_size, b"").is_err() {
                    host.reset_response();
                }
                Flow::Continue
            }
            ResponseBody::Events => self.filter_events(host, body_size, end_of_stream),
            ResponseBody::BufferJson => self.filter_list_reply(host, body_size, end_of_stream),
            ResponseBody::Read => {
                let wants_more = match host.buffer(Buffer::ResponseBody, 0, body_size) {
                    Ok(chunk) => self.scan_reply(&chunk.unwrap_or_default()),
                    Err(_) => false,
                };
                if !wants_more {
                    // The outcome is known (or cannot be): the rest is not copied.
                    self.request.borrow_mut().response = Some(ResponseBody::Untouched);
                }
                Flow::Continue
            }
        }
    }

    /// Hands a copy of the reply's next bytes to the exchange's outcome reader.
    fn scan_reply(&self, chunk: &[u8]) -> bool {
        self.request.borrow_mut().exchange.as_mut().is_some_and(|ex| ex.scan_reply(chunk))
    }

    /// The request is over: forget it as a waiter, count it, write its audit line.
    pub fn on_log(&mut self, host: &impl Host) {
        if let Some(vm) = &self.vm {
            // A request that ends while waiting must not be resumed later.
            vm.borrow_mut().waiters.retain(|w| w.context_id != self.context_id);
        }
        let Some(exchange) = self.request.borrow_mut().exchange.take() else {
            return;
        };
        let since = host.now();
        let status = host
            .property(&["response", "code"])
            .ok()
            .flatten()
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_le_bytes)
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(0);
        let client_ip = host
            .property(&["source", "address"])
            .ok()
            .flatten()
            .map(|b| strip_port(&String::from_utf8_lossy(&b)).to_owned());
        let mut record = exchange.finish(status, since, client_ip);
        let string = |path: &[&str]| {
            host.property(path)
                .ok()
                .flatten()
                .filter(|b| !b.is_empty())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        let number = |path: &[&str]| {
            host.property(path)
                .ok()
                .flatten()
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map_or(0, u64::from_le_bytes)
        };
        if record.decision != Some(crate::audit::Outcome::Deny) {
            // Refused requests never reached an upstream.
            record.upstream_cluster = string(&["xds", "cluster_name"]);
            record.upstream_host = string(&["upstream", "address"]);
            // Envoy names the host it tried even when nothing reached it (no healthy host,
            // connection refused...): only a host that answered served the call.
            if record.region.is_some() {
                let answered = record.upstream_host.is_some() && number(&["response", "flags"]) & NOT_SENT == 0;
                let locality = answered.then(|| host.property(&["upstream", "locality"]).ok().flatten()).flatten();
                match locality.as_deref().and_then(crate::region::locality_region) {
                    Some(region) => record.served_region = Some(region),
                    None if !answered => record.served_region = None,
                    // A host without a locality: the server's own region, if it has one.
                    None => {}
                }
            }
        }
        record.bytes_in = number(&["request", "size"]);
        record.bytes_out = number(&["response", "size"]);
        let Some(vm) = &self.vm else {
            host.log(Level::Info, &record.to_line());
            return;
        };
        let mut vmb = vm.borrow_mut();
        let Vm { metrics, outbox, record_ids, config, .. } = &mut *vmb;
        record.record_id = record_ids.next();
        if let Some(message) = record.error_message.as_mut() {
            // An upstream's words: they may quote a credential.
            config.redactor.redact_text(message);
        }
        let allowed = record.decision == Some(crate::audit::Outcome::Allow);
        Metrics::bump(host, if allowed { metrics.allowed } else { metrics.denied });
        metrics.count_request(host, &record, &config.servers);
        let json = record.to_json_capped(config.max_record_bytes);
        // Always in Envoy's log; also queued for the sidecar when there is one.
        host.log(Level::Info, &format!("{}{json}", crate::audit::LOG_PREFIX));
        let now = host.now();
        if let Some(outbox) = outbox {
            if !outbox.push(epoch_ms(now), json) {
                Metrics::bump(host, metrics.audit_dropped);
            }
        }
        self.busy += now.duration_since(since).unwrap_or_default();
        if let Some(histogram) = metrics.filter_time {
            host.record_value(histogram, u64::try_from(self.busy.as_micros()).unwrap_or(u64::MAX));
        }
    }

    /// One chunk of an SSE reply: complete events go on at once (filtered), the event
    /// still arriving is held by the exchange, bounded.
    fn filter_events(&mut self, host: &impl Host, body_size: usize, end_of_stream: bool) -> Flow {
        let Some(vm) = self.vm.clone() else { return Flow::Continue };
        let chunk = match host.buffer(Buffer::ResponseBody, 0, body_size) {
            Ok(chunk) => chunk.unwrap_or_default(),
            Err(_) => {
                host.reset_response();
                return Flow::Continue;
            }
        };
        self.scan_reply(&chunk);
        let filtered = self
            .read_response(host, &vm, |ex, config, catalog| {
                ex.on_response_events(config, catalog, &chunk, end_of_stream)
            })
            .unwrap_or_else(|| Ok(Vec::new()));
        match filtered {
            Ok(out) => {
                if host.set_buffer(Buffer::ResponseBody, 0, body_size, &out).is_err() {
                    host.reset_response();
                }
            }
            Err(e) => {
                host.log(Level::Warn, &format!("mcp-gateway: SSE event over {} bytes; ending the stream", e.limit));
                self.request.borrow_mut().response = Some(ResponseBody::Drop);
                let _ = host.set_buffer(Buffer::ResponseBody, 0, body_size, b"");
                host.reset_response();
            }
        }
        Flow::Continue
    }

    /// Runs `read` on the exchange with the worker's catalog, then shares what the reply
    /// taught (tool operations) and stores the task it created, before the reply reaches
    /// the client. `None` when the request has no exchange.
    fn read_response<T>(
        &self,
        host: &impl Host,
        vm: &SharedVm,
        read: impl FnOnce(&mut Exchange, &Config, &mut Catalog) -> T,
    ) -> Option<T> {
        let (out, learned, task) = {
            let mut vmb = vm.borrow_mut();
            let Vm { config, catalog, .. } = &mut *vmb;
            let config = config.clone();
            let before = catalog.generation;
            let mut r = self.request.borrow_mut();
            let ex = r.exchange.as_mut()?;
            let out = read(ex, &config, catalog);
            (out, catalog.generation != before, ex.take_created_task())
        };
        if learned {
            shared::publish_catalog(host, vm);
        }
        if let Some(change) = task {
            shared::change_session(host, &change, vm.borrow().config.session_idle_ms, epoch_ms(host.now()));
        }
        Some(out)
    }

    /// A JSON list reply (or a task-augmented call's reply): buffered whole (bounded),
    /// then rewritten or read.
    fn filter_list_reply(&mut self, host: &impl Host, body_size: usize, end_of_stream: bool) -> Flow {
        if body_size > MAX_LIST_REPLY {
            host.log(Level::Warn, "mcp-gateway: list reply too large to filter; dropping it");
            let _ = host.set_buffer(Buffer::ResponseBody, 0, body_size, b"");
            self.request.borrow_mut().response = Some(ResponseBody::Drop);
            return Flow::Continue;
        }
        if !end_of_stream {
            return Flow::Pause;
        }
        let Some(vm) = self.vm.clone() else { return Flow::Continue };
        let content_type = self.request.borrow().response_type.clone();
        let body = host.buffer(Buffer::ResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
        self.scan_reply(&body);
        let rewritten = self
            .read_response(host, &vm, |ex, config, catalog| ex.on_response_body(config, catalog, &content_type, &body))
            .flatten();
        // A reply that cannot be read is not passed on (fail closed).
        let replacement = rewritten.unwrap_or_else(|| {
            host.log(Level::Warn, "mcp-gateway: list reply not understood; dropping it");
            Vec::new()
        });
        if host.set_buffer(Buffer::ResponseBody, 0, body_size, &replacement).is_err() {
            host.reset_response();
        }
        Flow::Continue
    }
}

fn send(host: &impl Host, request: &Rc<RefCell<Request>>, reply: Reply) -> Flow {
    request.borrow_mut().phase = Phase::Replied;
    let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    if host.send_reply(reply.status, &headers, &reply.body).is_err() {
        host.reset_request();
    }
    Flow::Pause
}

/// Last resort when the host misbehaves: refuse without a JSON-RPC body.
fn fail_closed(host: &impl Host, request: &Rc<RefCell<Request>>, what: &str) -> Flow {
    host.log(Level::Error, &format!("mcp-gateway: {what}; refusing request"));
    send(
        host,
        request,
        Reply {
            status: 500,
            headers: vec![("content-type", "application/json".to_owned())],
            body: br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"Internal error"}}"#.to_vec(),
        },
    )
}

fn apply(host: &impl Host, edits: &HeaderEdits) -> bool {
    let removed = edits.remove.iter().all(|name| host.remove_map_value(Map::RequestHeaders, name).is_ok());
    let set = edits.set.iter().all(|(name, value)| host.set_map_value(Map::RequestHeaders, name, value).is_ok());
    removed && set
}

/// Carries out a step. `resumed` is true when called outside the request's own
/// callbacks (from the root context), where continuing means resuming the request.
pub(super) fn act(
    host: &impl Host,
    vm: &SharedVm,
    request: &Rc<RefCell<Request>>,
    context_id: u32,
    step: Step,
    edits: &HeaderEdits,
    resumed: bool,
) -> Flow {
    match step {
        Step::Reply(reply) => send(host, request, reply),
        Step::Continue => {
            if !apply(host, edits) {
                return fail_closed(host, request, "cannot edit request headers");
            }
            request.borrow_mut().phase = Phase::Forwarded;
            if resumed && host.resume_request().is_err() {
                return fail_closed(host, request, "cannot resume request");
            }
            Flow::Continue
        }
        Step::WaitForBody => {
            if !apply(host, edits) {
                return fail_closed(host, request, "cannot edit request headers");
            }
            let body = {
                let mut r = request.borrow_mut();
                r.phase = Phase::AwaitBody;
                r.body.take()
            };
            match body {
                // The body arrived while we waited for keys: decide on it now.
                Some(body) => {
                    let (step, edits) = decide_body(host, vm, request, &body);
                    act(host, vm, request, context_id, step, &edits, resumed)
                }
                None => Flow::Pause,
            }
        }
        Step::WaitForKeys { provider, refetch } => {
            if vm.borrow().waiters.len() >= MAX_WAITERS {
                // Bounded: past this many held requests, decide now with the keys we have.
                let Some((step, edits)) = decide_finally(vm, request, host.now()) else {
                    return fail_closed(host, request, "waiting request without state");
                };
                return act(host, vm, request, context_id, step, &edits, resumed);
            }
            request.borrow_mut().phase = Phase::AwaitKeys;
            let mut vmb = vm.borrow_mut();
            let since_done_ms = vmb.states.get(provider).map_or(0, |s| s.done_ms);
            let deadline = host.now() + vmb.config.key_wait;
            vmb.waiters.push(Waiter {
                context_id,
                provider,
                since_done_ms,
                deadline,
                refetch,
                request: request.clone(),
            });
            Flow::Pause
        }
    }
}

/// Decides a held request's head for the last time, with the keys there are now (its
/// wait ended, or there was no room to wait). `None` when the request has no exchange.
pub(super) fn decide_finally(
    vm: &SharedVm,
    request: &Rc<RefCell<Request>>,
    now: std::time::SystemTime,
) -> Option<(Step, HeaderEdits)> {
    let mut vmb = vm.borrow_mut();
    let Vm { config, store, .. } = &mut *vmb;
    request.borrow_mut().exchange.as_mut().map(|ex| ex.decide_head(config, store, now, true))
}

fn decide_body(host: &impl Host, vm: &SharedVm, request: &Rc<RefCell<Request>>, body: &[u8]) -> (Step, HeaderEdits) {
    shared::refresh_catalog(host, vm);
    let vm = vm.borrow();
    let mut r = request.borrow_mut();
    match r.exchange.as_mut() {
        Some(ex) => {
            // The clock is read only for a task lookup (rare), not for every call.
            let tasks = |id: &str| shared::lookup_task(host, id, epoch_ms(host.now()), vm.config.session_idle_ms);
            let step = ex.on_request_body_with(&vm.config, &vm.catalog, body, &tasks);
            (step, ex.body_edits())
        }
        None => (Step::Continue, HeaderEdits::default()),
    }
}

/// A header value as text: its own buffer when it is UTF-8 (as it nearly always is),
/// a lossy copy otherwise.
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Envoy's response flags for a request no upstream received: no healthy upstream (UH),
/// connection failure (UF), overflow (UO), no route (NR).
const NOT_SENT: u64 = 0x2 | 0x20 | 0x80 | 0x100;

/// `1.2.3.4:5678` -> `1.2.3.4`, `[::1]:5678` -> `::1`.
fn strip_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((host, _)) if !host.contains(':') => host,
        _ => address,
    }
}
