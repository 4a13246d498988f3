//! The per-request pipeline, independent of proxy-wasm.
//!
//! An [`Exchange`] follows one HTTP request through the filter's callbacks: it admits or
//! refuses the request at headers time (route, HTTP method, content type, token, server
//! access), then decides on the JSON-RPC body, and finally produces the audit record.
//! When a token needs keys that are not loaded yet, it asks the adapter to wait and is
//! resumed later. The proxy-wasm adapter only moves data between Envoy and this type.

use crate::audit::{timestamp, AuditRecord, Outcome};
use crate::config::{Config, Server, UpstreamAuth};
use crate::discovery;
use crate::headers;
use crate::jsonrpc::{self, Message, Target};
use crate::jwt::{bearer_token, AuthError, KeyStore, Principal, Verdict};
use crate::listing::{self, EventStream, EventTooLarge, ListKind};
use crate::outcome::{Found, Outcome as ReplyOutcome, ReplyScan};
use crate::rbac::{Catalog, Denial};
use crate::region::{Placement, Regions, Serving};
use crate::reject::{reply_with, status_and_error, Refusal, Reply};
use crate::session;
use serde_json::Value;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::SystemTime;

/// The request headers (pseudo-headers included), as Envoy gives them.
#[derive(Debug, Clone, Default)]
pub struct Head {
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn new(headers: Vec<(String, String)>) -> Head {
        Head { headers }
    }

    /// First value of a header (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count()
    }

    pub fn method(&self) -> &str {
        self.header(":method").unwrap_or_default()
    }

    pub fn path(&self) -> &str {
        self.header(":path").unwrap_or_default()
    }
}

/// Request header changes to apply before the request continues upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Header names to remove (every value).
    pub remove: Vec<String>,
    /// Headers to set, replacing any value (applied after the removals).
    pub set: Vec<(String, String)>,
}

/// Largest SSE event held while filtering a stream; a longer one ends the stream.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// How the adapter handles a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    /// Streams through untouched.
    Untouched,
    /// A JSON list reply: buffer it whole (bounded), then [`Exchange::on_response_body`].
    BufferJson,
    /// An SSE stream: pass each chunk through [`Exchange::on_response_events`].
    Events,
    /// Cannot be inspected (encoded): replace with nothing.
    Drop,
    /// Passes through unchanged; a copy of each chunk goes to [`Exchange::scan_reply`]
    /// until the outcome is known.
    Read,
}

/// What the adapter should do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Apply the edits (if any) and let the request go upstream.
    Continue,
    /// Apply the edits and hold the request until the whole body is buffered.
    WaitForBody,
    /// Hold the request until the provider's keys change (or the wait times out), then
    /// call [`Exchange::decide_head`] again. `refetch` asks for a JWKS fetch (an unknown `kid`).
    WaitForKeys { provider: usize, refetch: bool },
    /// Send this reply instead of forwarding the request.
    Reply(Reply),
}

/// Who is calling, and which server: known once the head is admitted.
#[derive(Debug)]
struct Caller {
    /// Shared with the token cache entry it came from.
    principal: Rc<Principal>,
    server: Server,
    /// What let the caller onto the server (checked once, at headers time).
    server_rule: String,
}

/// What the reply to a forwarded request needs.
#[derive(Debug)]
enum Follow {
    /// Nothing (a GET stream is still read: it may replay list results).
    Nothing,
    /// A list reply: filtered to what the caller may use.
    List(ListKind),
    /// A task-augmented tool call: its reply names the task, which is recorded with the
    /// call so that later `tasks/*` requests are decided like it.
    Task(session::TaskRecord),
}

/// How far a request got. Only an admitted request has a caller and only a forwarded one
/// reaches the upstream, so a decision on a request that was never admitted cannot be
/// written.
#[derive(Debug)]
enum Stage {
    /// The head is not decided yet (or waits for keys), or was refused.
    Unadmitted,
    /// The head is admitted; the POST waits for its body.
    Admitted(Caller),
    /// Let through to the upstream: allowed, or denied in shadow mode.
    Forwarded(Caller, Follow),
}

/// One request's way through the gateway.
#[derive(Debug)]
pub struct Exchange {
    started: SystemTime,
    head: Head,
    end_of_stream: bool,
    stage: Stage,
    /// RFC 9728 metadata URL for challenges (set when the head is refused).
    metadata_url: Option<String>,
    /// The filter over an SSE reply being inspected.
    events: Option<EventStream>,
    /// Who opened the session the request names (from the shared session table), and
    /// whether that entry is due for a refresh.
    session_owner: Option<(String, bool)>,
    /// With bound session ids: the upstream's id inside the one the client presented,
    /// checked for this caller; it replaces the client's header upstream.
    upstream_session: Option<String>,
    /// The task the reply created, to record.
    created_task: Option<session::Change>,
    /// The `traceparent` the gateway starts when the request brought no valid one.
    new_traceparent: Option<String>,
    /// Reads the reply's outcome (a forwarded request that expects a response).
    scan: Option<ReplyScan>,
    /// The address Envoy received the request from (given when `regions` need it).
    peer: Option<IpAddr>,
    /// Where the caller was placed (with `regions`), and the cluster named for them.
    placement: Option<Placement>,
    cluster: Option<String>,
    /// For a federated server: the delegation the sidecar gets.
    delegation: Option<String>,
    /// A region header from a peer that is not a trusted proxy, in each spelling it came
    /// in: removed before the upstream.
    untrusted_region_headers: Vec<String>,
    record: AuditRecord,
}

impl Exchange {
    pub fn new(started: SystemTime) -> Exchange {
        Exchange {
            started,
            head: Head::default(),
            end_of_stream: false,
            stage: Stage::Unadmitted,
            metadata_url: None,
            events: None,
            session_owner: None,
            upstream_session: None,
            created_task: None,
            new_traceparent: None,
            scan: None,
            peer: None,
            placement: None,
            cluster: None,
            untrusted_region_headers: Vec::new(),
            delegation: None,
            record: AuditRecord { timestamp: timestamp(started), ..Default::default() },
        }
    }

    /// The address Envoy received the request from: trusted proxies and source ranges of
    /// `regions` are matched against it. Set before the headers are decided.
    pub fn set_peer(&mut self, peer: Option<IpAddr>) {
        self.peer = peer;
    }

    /// Tells the exchange who opened the session its `Mcp-Session-Id` names (the adapter
    /// looks it up in the shared table, see [`crate::session`]) and whether the entry is
    /// due for a refresh. Without it, a request naming a session is refused as unknown.
    pub fn set_session_owner(&mut self, owner: Option<(String, bool)>) {
        self.session_owner = owner;
    }

    /// What the response changes in the session table, once its headers are known.
    pub fn session_change(&self, status: u32, response_session_id: Option<&str>) -> Option<session::Change> {
        let principal = &self.caller()?.principal;
        if self.record.decision != Some(Outcome::Allow) || !(200..300).contains(&status) {
            return None;
        }
        let owner = session::owner(&principal.provider, &principal.user_id);
        match (self.record.session_id.as_deref(), self.record.method.as_deref()) {
            (None, Some("initialize")) => {
                response_session_id.map(|id| session::Change::Open { id: id.trim().to_owned(), owner })
            }
            (Some(id), _) if self.record.http_method == "DELETE" => Some(session::Change::Close { id: id.to_owned() }),
            (Some(id), _) if self.session_owner.as_ref().is_some_and(|(_, refresh)| *refresh) => {
                Some(session::Change::Refresh { id: id.to_owned(), owner })
            }
            _ => None,
        }
    }

    /// With bound session ids (`session_binding_key_env`): the id to hand the client in
    /// place of the upstream's `id`, when this reply opens a session.
    pub fn client_session_id(&self, config: &Config, status: u32, id: &str) -> Option<String> {
        let binding = config.session_binding.as_ref()?;
        match self.session_change(status, Some(id))? {
            session::Change::Open { id, owner } => Some(binding.bind(&owner, &id)),
            _ => None,
        }
    }

    /// Decides what can be decided from the request headers. `end_of_stream` is true
    /// when the request has no body.
    pub fn on_request_headers(
        &mut self,
        config: &Config,
        store: &mut KeyStore,
        head: Head,
        end_of_stream: bool,
        now: SystemTime,
    ) -> (Step, HeaderEdits) {
        self.record.http_method = head.method().to_owned();
        self.record.request_id = head.header("x-request-id").unwrap_or_default().to_owned();
        self.record.user_agent = head.header("user-agent").map(str::to_owned);
        self.record.session_id = head.header("mcp-session-id").map(str::to_owned);
        // One valid traceparent is honoured; none, several or a malformed one: a new trace.
        let given = (head.header_count("traceparent") == 1)
            .then(|| head.header("traceparent").and_then(headers::trace_id))
            .flatten()
            .map(str::to_owned);
        let trace_id = given.unwrap_or_else(|| {
            let id = headers::new_trace_id(&self.record.request_id);
            self.new_traceparent = Some(format!("00-{id}-{}-01", headers::new_span_id()));
            id
        });
        self.record.trace_id = Some(trace_id);
        self.head = head;
        self.end_of_stream = end_of_stream;
        self.decide_head(config, store, now, false)
    }

    /// Decides on the request head. Called again (by the adapter) after the keys changed
    /// or the wait for them ran out; `final_attempt` then refuses if keys are still missing.
    pub fn decide_head(
        &mut self,
        config: &Config,
        store: &mut KeyStore,
        now: SystemTime,
        final_attempt: bool,
    ) -> (Step, HeaderEdits) {
        match self.admit(config, store, now, final_attempt) {
            Ok(step @ (Step::Continue | Step::WaitForBody)) => {
                let edits = self.edits();
                (step, edits)
            }
            Ok(step) => (step, HeaderEdits::default()),
            Err(refusal) => {
                // Only challenges need the metadata URL: build it here, off the allowed path.
                if let Some(md) = &config.resource_metadata {
                    let path = self.head.path();
                    let prefix = is_plain_path(path).then(|| config.route(path)).flatten().map(|(_, p)| p);
                    let base = discovery::base_url(md, self.head.header(":scheme"), self.head.header(":authority"));
                    self.metadata_url = Some(discovery::metadata_url(&base, prefix));
                }
                (Step::Reply(self.refuse(&refusal, None)), HeaderEdits::default())
            }
        }
    }

    fn admit(
        &mut self,
        config: &Config,
        store: &mut KeyStore,
        now: SystemTime,
        final_attempt: bool,
    ) -> Result<Step, Refusal> {
        let path = self.head.path().to_owned();
        if let Some(reply) = self.well_known(config, &path) {
            return Ok(Step::Reply(reply));
        }
        // Defence in depth: Envoy normalizes paths before routing (normalize_path), so a
        // path that still holds dot segments or encoded separators is refused rather
        // than risking the router and the filter seeing different servers.
        let server = is_plain_path(&path).then(|| config.server_for(&path)).flatten();
        let server = server.ok_or(Refusal::UnknownServer)?.clone();
        self.record.server = Some(server.name.clone());
        if server.kind == crate::config::ServerKind::Sidecar && self.head.method() != "GET" {
            return Err(Refusal::HttpMethod(self.head.method().chars().take(16).collect()));
        }
        let is_post = match self.head.method() {
            "POST" => true,
            "GET" | "DELETE" => false,
            other => return Err(Refusal::HttpMethod(other.chars().take(16).collect())),
        };
        headers::check_request(&self.head.headers).map_err(Refusal::Header)?;
        // A body the gateway never inspects must not reach a server that might read it.
        let has_body = !self.end_of_stream
            || self.head.header("transfer-encoding").is_some()
            || self.head.header("content-length").is_some_and(|l| l.trim() != "0");
        if !is_post && has_body {
            return Err(Refusal::Header(headers::HeaderProblem::BodyNotAllowed(self.head.method().to_owned())));
        }
        let delegated = match self.head.header_count(headers::DELEGATION) {
            0 => None,
            _ => Some(self.delegated(config, &server, now)?),
        };
        let principal = match delegated.map_or_else(|| authenticate(config, store, &self.head, now), Ok) {
            Ok(p) => p,
            Err(Verdict::Invalid(e)) => return Err(e.into()),
            Err(Verdict::NoKeysYet { provider }) if final_attempt => {
                let name = config.verifier.providers.get(provider).map(|p| p.name.clone()).unwrap_or_default();
                return Err(Refusal::KeysUnavailable { provider: name });
            }
            Err(Verdict::UnknownKid { .. }) if final_attempt => return Err(AuthError::UnknownKeyId.into()),
            Err(Verdict::NoKeysYet { provider }) => return Ok(Step::WaitForKeys { provider, refetch: false }),
            Err(Verdict::UnknownKid { provider }) => return Ok(Step::WaitForKeys { provider, refetch: true }),
        };
        self.record.user_id = Some(principal.user_id.clone());
        self.record.roles = principal.roles.clone();
        // A session belongs to the caller who opened it: another caller's session id is
        // answered like an unknown one (404), so it cannot be hijacked.
        if let Some(id) = self.head.header("mcp-session-id") {
            let caller = session::owner(&principal.provider, &principal.user_id);
            if let Some(binding) = &config.session_binding {
                // Bound ids: the tag proves the owner, whichever replica opened it.
                let Some(upstream) = binding.check(&caller, id.trim()) else {
                    return Err(Refusal::UnknownSession { id: id.to_owned(), another_callers: false });
                };
                self.upstream_session = Some(upstream.to_owned());
                self.record.session_id = Some(upstream.to_owned());
            } else {
                match &self.session_owner {
                    Some((owner, _)) if *owner == caller => {}
                    Some(_) => return Err(Refusal::UnknownSession { id: id.to_owned(), another_callers: true }),
                    None => return Err(Refusal::UnknownSession { id: id.to_owned(), another_callers: false }),
                }
            }
        }
        if let Some(md) = &config.resource_metadata {
            let missing = md.required_scopes.iter().any(|s| !principal.scopes.contains(s));
            if missing {
                return Err(Refusal::InsufficientScope { required: md.required_scopes.clone() });
            }
        }
        let role = config.policy.allows_server(&principal.roles, &server.name)?;
        if let Some(regions) = &config.regions {
            self.place(regions, &principal, &server)?;
        }
        if let (crate::config::ServerKind::Federation, Some(delegation)) = (server.kind, &config.delegation) {
            // Valid as long as the caller's token (verified tokens always have an `exp`).
            let exp = principal.claims.get("exp").and_then(|e| e.as_u64().or_else(|| e.as_f64().map(|f| f as u64)));
            self.delegation = exp.map(|exp| delegation.issue(&server.name, &principal, exp));
        }
        let caller = Caller { principal, server, server_rule: role.clone() };
        if !is_post {
            self.allow(role);
            self.stage = Stage::Forwarded(caller, Follow::Nothing);
            return Ok(Step::Continue);
        }
        if !headers::is_json(self.head.header("content-type")) {
            return Err(Refusal::ContentType);
        }
        let too_long = self
            .head
            .header("content-length")
            .and_then(|l| l.trim().parse::<u64>().ok())
            .is_some_and(|l| l > config.max_body_bytes as u64);
        if too_long {
            return Err(Refusal::BodyTooLarge { limit: config.max_body_bytes });
        }
        if self.end_of_stream {
            return Err(Refusal::Parse(jsonrpc::ParseError::Empty));
        }
        self.stage = Stage::Admitted(caller);
        Ok(Step::WaitForBody)
    }

    /// Serves RFC 9728 metadata for `GET /.well-known/oauth-protected-resource[...]`.
    /// The caller of a call the sidecar dispatched for a federated server: its delegation,
    /// checked, for a member of the server it came through.
    fn delegated(&mut self, config: &Config, server: &Server, now: SystemTime) -> Result<Rc<Principal>, Refusal> {
        use crate::delegation::DelegationError;
        let refuse = |e: DelegationError| Refusal::Auth(AuthError::Delegation(e));
        if self.head.header_count(headers::DELEGATION) != 1 || self.head.header("authorization").is_some() {
            return Err(refuse(DelegationError::Ambiguous));
        }
        // No federated server: no delegation was issued by this gateway.
        let Some(delegation) = &config.delegation else {
            return Err(refuse(DelegationError::BadTag));
        };
        let assertion = self.head.header(headers::DELEGATION).unwrap_or_default();
        let secs = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let checked = delegation.check(assertion, secs, u64::from(config.verifier.leeway_secs)).map_err(refuse)?;
        let through = config.servers.iter().find(|s| s.name == checked.via).and_then(|s| s.federation.as_ref());
        if server.kind != crate::config::ServerKind::Mcp || !through.is_some_and(|f| f.has_member(&server.name)) {
            return Err(refuse(DelegationError::NotAMember { via: checked.via, server: server.name.clone() }));
        }
        self.record.via = Some(checked.via);
        Ok(Rc::new(checked.principal))
    }

    /// Places the caller in a region and picks the cluster that serves them there, or
    /// refuses a pinned caller the server cannot serve inside their regions.
    fn place(&mut self, regions: &Regions, principal: &Principal, server: &Server) -> Result<(), Refusal> {
        let header =
            regions.header.as_deref().filter(|h| self.head.header_count(h) == 1).and_then(|h| self.head.header(h));
        let placement = regions.place(principal, header, self.peer);
        if let (true, Some(name)) = (placement.drop_header, &regions.header) {
            // Every spelling a server could read as it (`X_Client_Region` included).
            self.untrusted_region_headers =
                self.head.headers.iter().filter(|(n, _)| headers::reads_as(n, name)).map(|(n, _)| n.clone()).collect();
        }
        if server.kind.is_sidecar() {
            // The gateway's own API, or a federated server (each call it dispatches to a
            // member is placed on its way back through the gateway): not placed.
            return Ok(());
        }
        self.record.region = Some(placement.region.clone());
        self.record.region_source = Some(placement.source.as_str().to_owned());
        self.record.residency = placement.pinned.as_ref().map(|(rule, _)| rule.clone());
        let serving = server.regions.serve(&placement);
        self.placement = Some(placement);
        match serving.map_err(Refusal::OutsideResidency)? {
            Serving::Cluster(cluster) => self.cluster = Some(cluster),
            Serving::Route => {}
        }
        Ok(())
    }

    fn well_known(&mut self, config: &Config, path: &str) -> Option<Reply> {
        if !path.starts_with(discovery::WELL_KNOWN) {
            return None;
        }
        let found = config.resource_metadata.as_ref().and_then(|md| {
            discovery::lookup(&config.servers, path).map(|prefix| {
                let base = discovery::base_url(md, self.head.header(":scheme"), self.head.header(":authority"));
                discovery::document(md, &base, prefix)
            })
        });
        let reply = match (self.head.method(), found) {
            ("GET", Some(doc)) => Reply {
                status: 200,
                headers: vec![
                    ("content-type", "application/json".to_owned()),
                    ("access-control-allow-origin", "*".to_owned()),
                    ("cache-control", "max-age=300".to_owned()),
                ],
                body: serde_json::to_vec(&doc).unwrap_or_default(),
            },
            (_, None) => return Some(self.refuse(&Refusal::UnknownServer, None)),
            (other, Some(_)) => return Some(self.refuse(&Refusal::HttpMethod(other.chars().take(16).collect()), None)),
        };
        self.record.decision = Some(Outcome::Allow);
        self.record.reason = Some("protected resource metadata".into());
        Some(reply)
    }

    /// Called as body data arrives, with the total buffered so far. Returns a reply
    /// when the body is over the limit.
    pub fn on_body_progress(&mut self, config: &Config, buffered: usize) -> Option<Reply> {
        (buffered > config.max_body_bytes)
            .then(|| self.refuse(&Refusal::BodyTooLarge { limit: config.max_body_bytes }, None))
    }

    /// Decides on the complete body of a POST. `catalog` holds tool operations learned
    /// from earlier tools/list replies.
    pub fn on_request_body(&mut self, config: &Config, catalog: &Catalog, body: &[u8]) -> Step {
        self.on_request_body_with(config, catalog, body, &|_| None)
    }

    /// [`Exchange::on_request_body`], with `tasks` looking up the record of a task id (see
    /// [`session::TaskRecord`]) for `tasks/get`, `tasks/result` and `tasks/cancel`.
    pub fn on_request_body_with(
        &mut self,
        config: &Config,
        catalog: &Catalog,
        body: &[u8],
        tasks: &dyn Fn(&str) -> Option<String>,
    ) -> Step {
        if let Some(reply) = self.on_body_progress(config, body.len()) {
            return Step::Reply(reply);
        }
        let mut message = match jsonrpc::parse(body, config.max_json_depth) {
            Ok(m) => m,
            Err(e) => {
                let id = jsonrpc::salvage_id(body, config.max_json_depth);
                return Step::Reply(self.refuse(&Refusal::Parse(e), id));
            }
        };
        self.record.method = (!message.method.is_empty()).then(|| message.method.clone());
        self.record.target = message.target.as_ref().map(|t| t.name().to_owned());
        self.record.jsonrpc_id = message.id.clone();
        let step = self.decide_message(config, catalog, &message, tasks);
        // Decided: the arguments are redacted where they lie and kept for the audit record.
        self.record.params = message.arguments.take().map(|mut a| {
            config.redactor.redact_in_place(&mut a);
            a
        });
        step
    }

    fn decide_message(
        &mut self,
        config: &Config,
        catalog: &Catalog,
        message: &Message,
        tasks: &dyn Fn(&str) -> Option<String>,
    ) -> Step {
        let Stage::Admitted(Caller { principal, server, server_rule }) = &self.stage else {
            // Headers were never admitted: never forward.
            return Step::Reply(self.refuse(&Refusal::UnknownServer, message.id.clone()));
        };
        if server.kind == crate::config::ServerKind::Federation {
            // Lists are filtered when each member's comes through the gateway.
            let rule = federated_rule(server_rule);
            self.allow(rule);
            self.forward(Follow::Nothing);
            return Step::Continue;
        }
        // MCP 2026-07-28 repeats the method and name in headers (for routing); they must
        // agree with the body, which is what authorization reads.
        if let Some(header) = self.disagreeing_header(config, server, message) {
            return Step::Reply(self.refuse(&Refusal::HeaderMismatch { header }, message.id.clone()));
        }
        let decision = decide_on(config, catalog, principal, &server.name, server_rule, message).and_then(|rule| {
            match &message.target {
                Some(Target::Task(id)) => {
                    decide_task(config, catalog, principal, &server.name, id, tasks(id).as_deref())
                        .map(|call| format!("{rule}; {call}"))
                }
                _ => Ok(rule),
            }
        });
        match decision {
            Ok(rule) => {
                let follow = if message.creates_task {
                    Follow::Task(session::TaskRecord {
                        owner: session::owner(&principal.provider, &principal.user_id),
                        server: server.name.clone(),
                        tool: message.target.as_ref().map(|t| t.name().to_owned()).unwrap_or_default(),
                        arguments: message.arguments.clone(),
                    })
                } else {
                    ListKind::of_method(&message.method).map_or(Follow::Nothing, Follow::List)
                };
                self.allow(rule);
                self.forward(follow);
                Step::Continue
            }
            Err(denial) => {
                let id = message.id.clone();
                match refusal_for(config, message, denial) {
                    Ok(shadowed) => {
                        self.record.decision = Some(Outcome::WouldDeny);
                        self.record.reason = Some(format!("shadow: {shadowed}"));
                        self.forward(Follow::Nothing);
                        Step::Continue
                    }
                    Err(refusal) => Step::Reply(self.refuse(&refusal, id)),
                }
            }
        }
    }

    /// The admitted request goes upstream; `follow` says what its reply needs.
    fn forward(&mut self, follow: Follow) {
        if let Stage::Admitted(caller) = std::mem::replace(&mut self.stage, Stage::Unadmitted) {
            self.stage = Stage::Forwarded(caller, follow);
        }
    }

    /// The caller, once the head is admitted.
    fn caller(&self) -> Option<&Caller> {
        match &self.stage {
            Stage::Admitted(caller) | Stage::Forwarded(caller, _) => Some(caller),
            Stage::Unadmitted => None,
        }
    }

    /// What the reply needs, once the request is forwarded.
    fn follow(&self) -> Option<&Follow> {
        match &self.stage {
            Stage::Forwarded(_, follow) => Some(follow),
            _ => None,
        }
    }

    /// Whether the reply is buffered whole: a list to filter, or a task to read.
    fn reply_is_buffered(&self) -> bool {
        matches!(self.follow(), Some(Follow::List(_) | Follow::Task(_)))
    }

    /// The first `Mcp-*` header that disagrees with the body (MCP 2026-07-28 repeats the
    /// method, the name, and arguments marked for it in headers, so servers and proxies can
    /// route without reading the body; values may be base64-wrapped). `Mcp-Param-*`
    /// headers are compared when they mirror an argument the server's resource policy
    /// reads, so a server that takes the header cannot act on another value.
    fn disagreeing_header(&self, config: &Config, server: &Server, message: &Message) -> Option<String> {
        let decoded = |name: &str| self.head.header(name).map(headers::decode_mcp_value);
        if let Some(method) = decoded("mcp-method") {
            if method.as_deref() != Some(message.method.as_str()) {
                return Some("Mcp-Method".into());
            }
        }
        if let Some(name) = decoded("mcp-name") {
            if name.is_none() || message.target.as_ref().map(Target::name) != name.as_deref() {
                return Some("Mcp-Name".into());
            }
        }
        let policy = config.resource_policies.get(&server.name)?;
        for (header, value) in &self.head.headers {
            let Some(param) = header.get(..10).filter(|p| p.eq_ignore_ascii_case("mcp-param-")).and(header.get(10..))
            else {
                continue;
            };
            let Some(key) = policy.argument_named(param) else { continue };
            let body = message.arguments.as_ref().and_then(|a| a.get(key));
            let agrees = match (headers::decode_mcp_value(value), body) {
                (Some(v), Some(Value::String(s))) => v == *s,
                (Some(v), Some(other @ (Value::Number(_) | Value::Bool(_)))) => {
                    serde_json::from_str::<Value>(&v).ok().as_ref() == Some(other)
                }
                _ => false,
            };
            if !agrees {
                return Some(format!("Mcp-Param-{param}"));
            }
        }
        None
    }

    /// Which response headers the exchange needs: (`Content-Type` and `Content-Encoding`,
    /// to read the body; `:status` and `Mcp-Session-Id`, to track the session). Replies to
    /// notifications, DELETEs and refused requests need neither, and reading headers costs
    /// host calls.
    pub fn response_headers_needed(&self) -> (bool, bool) {
        let allowed = matches!(self.record.decision, Some(Outcome::Allow));
        let inspect = self.reply_is_buffered() || self.filters_stream() || self.expects_reply();
        let session =
            allowed && (self.record.session_id.is_some() || self.record.method.as_deref() == Some("initialize"));
        (inspect, session)
    }

    /// A GET stream to an MCP server: filtered, it may replay list results. (The sidecar's
    /// streams carry audit events, not MCP messages.)
    fn filters_stream(&self) -> bool {
        // A federated server's stream carries its members' messages, already filtered when
        // they came through the gateway.
        let sidecar = self.caller().is_some_and(|c| c.server.kind.is_sidecar());
        matches!(self.record.decision, Some(Outcome::Allow)) && self.record.http_method == "GET" && !sidecar
    }

    /// Let through and answered by a JSON-RPC response: a request with an id.
    fn expects_reply(&self) -> bool {
        matches!(self.stage, Stage::Forwarded(..)) && self.record.jsonrpc_id.is_some()
    }

    /// Decides how the response body is read, from its headers. List replies are
    /// filtered, and so is every SSE stream opened by GET: a server resuming a stream
    /// after `Last-Event-ID` may replay an earlier `tools/list` reply there. A reply to a
    /// request is read for its outcome, up to `read_limit` bytes.
    pub fn on_response_headers(
        &mut self,
        content_type: &str,
        content_encoding: Option<&str>,
        read_limit: usize,
    ) -> ResponseBody {
        let media = headers::media_type(content_type);
        let is_sse = media.eq_ignore_ascii_case("text/event-stream");
        let is_json = media.eq_ignore_ascii_case("application/json");
        // Requested with `Accept-Encoding: identity` where it matters; anything else cannot
        // be read here.
        let encoded = content_encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
        if self.expects_reply() {
            if encoded {
                self.record.outcome_detail = Some("reply encoded".into());
            } else if is_sse {
                self.scan = Some(ReplyScan::sse(read_limit));
            } else if is_json {
                self.scan = Some(ReplyScan::json(read_limit));
            } else {
                self.record.outcome_detail = Some("reply neither JSON nor SSE".into());
            }
        }
        let read = if self.scan.is_some() { ResponseBody::Read } else { ResponseBody::Untouched };
        let buffered = self.reply_is_buffered();
        if !buffered && !self.filters_stream() {
            return read;
        }
        if !is_sse && !buffered {
            return read; // e.g. a JSON error answering the GET
        }
        if encoded {
            self.record.reason =
                Some(format!("{}; reply dropped: encoded", self.record.reason.clone().unwrap_or_default()));
            return ResponseBody::Drop;
        }
        if is_sse {
            self.events = Some(EventStream::new(MAX_EVENT_BYTES, &ListKind::ALL));
            ResponseBody::Events
        } else {
            ResponseBody::BufferJson
        }
    }

    /// Reads the next chunk of the reply for its outcome; `false` once no more is needed.
    pub fn scan_reply(&mut self, chunk: &[u8]) -> bool {
        match self.scan.as_mut() {
            Some(scan) => {
                scan.push(chunk);
                scan.wants_more()
            }
            None => false,
        }
    }

    /// Filters the next chunk of an SSE reply ([`ResponseBody::Events`]); returns what to
    /// forward now. `Err`: an event grew past the bound, the stream must end.
    pub fn on_response_events(
        &mut self,
        config: &Config,
        catalog: &mut Catalog,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Vec<u8>, EventTooLarge> {
        let (Stage::Forwarded(caller, follow), Some(events)) = (&self.stage, self.events.as_mut()) else {
            return Ok(Vec::new());
        };
        let mut visitor = StreamVisitor {
            config,
            catalog,
            principal: &caller.principal,
            server: &caller.server.name,
            server_rule: &caller.server_rule,
            task_call: match follow {
                Follow::Task(call) => Some(call),
                _ => None,
            },
            created_task: &mut self.created_task,
        };
        let mut out = events.push(chunk, &mut visitor)?;
        if end_of_stream {
            out.extend(events.finish(&mut visitor));
        }
        if !events.filtered.removed.is_empty() {
            let removed = std::mem::take(&mut events.filtered.removed);
            self.record.hidden.get_or_insert_with(Vec::new).extend(removed);
        }
        Ok(out)
    }

    /// The task the reply created, once (the adapter records it in the shared table).
    pub fn take_created_task(&mut self) -> Option<session::Change> {
        self.created_task.take()
    }

    /// Extra request header changes once the body is decided: list requests ask for an
    /// unencoded reply, which the filter can read.
    pub fn body_edits(&self) -> HeaderEdits {
        let mut edits = HeaderEdits::default();
        if matches!(self.follow(), Some(Follow::List(_))) {
            edits.set.push(("accept-encoding".into(), "identity".into()));
        }
        edits
    }

    /// Rewrites a complete list reply so the caller only sees what they may use, and
    /// learns tool operations from tools/list. `None`: the reply could not be read and
    /// must not reach the client (fail closed).
    pub fn on_response_body(
        &mut self,
        config: &Config,
        catalog: &mut Catalog,
        content_type: &str,
        body: &[u8],
    ) -> Option<Vec<u8>> {
        let Stage::Forwarded(Caller { principal, server, server_rule }, follow) = &self.stage else {
            return Some(body.to_vec());
        };
        let kind = match follow {
            Follow::List(kind) => *kind,
            // A task-augmented call: read the task id, pass the reply on as it is.
            Follow::Task(call) => {
                if self.created_task.is_none() {
                    let id = jsonrpc::parse_strict(body).ok().and_then(|v| created_task_id(&v));
                    self.created_task = id.and_then(|id| task_change(id, call));
                }
                return Some(body.to_vec());
            }
            Follow::Nothing => return Some(body.to_vec()),
        };
        if kind == ListKind::Tools {
            if let Some(tools) = listing::items(body, content_type, kind) {
                catalog.learn(&server.name, &tools);
            }
        }
        let mut keep = |item: &Value| visible_on(config, catalog, principal, &server.name, server_rule, kind, item);
        let (rewritten, filtered) = listing::filter_reply(body, content_type, kind, &mut keep)?;
        if !filtered.removed.is_empty() {
            self.record.hidden = Some(filtered.removed);
        }
        Some(rewritten)
    }

    /// Request trailers arrived. A POST still waiting for its body is refused: the body
    /// callback never saw the end of the stream, so nothing was decided yet.
    pub fn on_request_trailers(&mut self) -> Option<Reply> {
        let waiting = self.record.decision.is_none();
        waiting.then(|| {
            self.refuse(&Refusal::Parse(jsonrpc::ParseError::Invalid("request trailers are not supported")), None)
        })
    }

    /// The audit record, once the response is complete. `status` is the HTTP status
    /// sent to the client (0 when the stream was reset before a response).
    pub fn finish(mut self, status: u32, now: SystemTime, client_ip: Option<String>) -> AuditRecord {
        self.record.status = status;
        self.record.response_time_ms = now.duration_since(self.started).map(crate::time::millis).unwrap_or(0);
        self.record.client_ip = client_ip;
        if self.record.decision.is_none() {
            // The client went away before a decision (e.g. mid-body).
            self.record.decision = Some(Outcome::Deny);
            self.record.reason = Some("request incomplete".into());
            self.record.outcome = ReplyOutcome::Unknown;
            self.record.outcome_detail = Some("request incomplete".into());
            return self.record;
        }
        let let_through = matches!(self.stage, Stage::Forwarded(..));
        if let (Stage::Forwarded(caller, _), Some(_)) = (&self.stage, &self.placement) {
            // A server in one region serves there; the adapter reads a replicated server's
            // region from the upstream host's locality.
            self.record.served_region = caller.server.regions.region().map(str::to_owned);
        }
        self.record.outcome = if !let_through {
            // Refused by the gateway: its own error is recorded (see `refuse`).
            ReplyOutcome::Error
        } else {
            self.outcome_of_reply(status)
        };
        self.record.success = let_through && self.record.outcome == ReplyOutcome::Ok;
        self.record
    }

    /// The outcome of a reply from the upstream.
    fn outcome_of_reply(&mut self, status: u32) -> ReplyOutcome {
        let http_error = status >= 400;
        if status == 0 {
            self.record.outcome_detail = Some("no response".into());
            return ReplyOutcome::Unknown;
        }
        let Some(scan) = self.scan.as_mut() else {
            if http_error {
                return ReplyOutcome::Error;
            }
            // A reply to a request that could not be read (the detail says why); anything
            // else (a notification's 202, a GET stream, a DELETE) is ok by its status.
            return if self.expects_reply() && self.record.outcome_detail.is_some() {
                ReplyOutcome::Unknown
            } else {
                ReplyOutcome::Ok
            };
        };
        match scan.finish() {
            Found::Response(r) if r.error => {
                self.record.error_code = r.error_code;
                self.record.error_message = r.error_message;
                ReplyOutcome::Error
            }
            Found::Response(r) => {
                if self.record.method.as_deref() == Some("tools/call") {
                    self.record.is_error = Some(r.is_error == Some(true));
                    if r.is_error == Some(true) {
                        return ReplyOutcome::ToolError;
                    }
                }
                if http_error {
                    ReplyOutcome::Error
                } else {
                    ReplyOutcome::Ok
                }
            }
            Found::Unknown(_) if http_error => ReplyOutcome::Error,
            Found::Unknown(why) => {
                self.record.outcome_detail = Some(why.into());
                ReplyOutcome::Unknown
            }
        }
    }

    /// `rule` explains what allowed the request (`role developer: tool create_* (write)`).
    fn allow(&mut self, rule: String) {
        self.record.decision = Some(Outcome::Allow);
        self.record.reason = Some(rule);
    }

    fn refuse(&mut self, refusal: &Refusal, id: Option<Value>) -> Reply {
        self.record.decision = Some(Outcome::Deny);
        self.record.reason = Some(refusal.to_string());
        self.record.auth_failure = crate::stats::auth_failure(refusal);
        let (status, code, message) = status_and_error(refusal);
        let reply = reply_with(refusal, status, code, &message, id, self.metadata_url.as_deref());
        self.record.error_code = Some(code);
        self.record.error_message = Some(message);
        reply
    }

    /// Strip every client header that could pose as identity, drop the client's token
    /// unless this server opted in to it, and set our own identity headers.
    fn edits(&self) -> HeaderEdits {
        let head = &self.head;
        let mut remove: Vec<String> =
            head.headers.iter().filter(|(n, _)| headers::is_spoofable(n)).map(|(n, _)| n.clone()).collect();
        let caller = self.caller();
        let upstream_auth = caller.map(|c| &c.server.upstream_auth);
        if upstream_auth != Some(&UpstreamAuth::ForwardClientToken) {
            remove.push("authorization".into());
        }
        // Credentials for a proxy are never meant for the MCP server either.
        if head.header("proxy-authorization").is_some() {
            remove.push("proxy-authorization".into());
        }
        remove.extend(self.untrusted_region_headers.iter().cloned());
        remove.dedup();
        let mut set = Vec::new();
        if let Some(placement) = &self.placement {
            set.push((headers::REGION.into(), placement.region.clone()));
            if let Some((rule, _)) = &placement.pinned {
                set.push((headers::RESIDENCY.into(), rule.clone()));
            }
        }
        if let Some(assertion) = &self.delegation {
            set.push((headers::DELEGATION.into(), assertion.clone()));
        }
        // The route's `cluster_header`: the cluster for the caller's region or rule.
        if let Some(cluster) = &self.cluster {
            set.push((headers::CLUSTER.into(), cluster.clone()));
        }
        // GET streams are inspected for list results; the filter reads only plain bytes.
        if head.method() == "GET" {
            set.push(("accept-encoding".into(), "identity".into()));
        }
        if let Some(UpstreamAuth::Inject { header, value }) = upstream_auth {
            set.push((header.clone(), value.expose().to_owned()));
        }
        if let Some(p) = caller.map(|c| &c.principal) {
            set.push((headers::USER_ID.into(), headers::header_safe(&p.user_id)));
            let roles: Vec<String> = p.roles.iter().map(|r| headers::header_safe(r).replace(',', "%2C")).collect();
            set.push((headers::ROLES.into(), roles.join(",")));
        }
        if let Some(server) = caller.map(|c| &c.server) {
            set.push((headers::SERVER.into(), server.name.clone()));
        }
        if let Some(session) = &self.record.session_id {
            set.push((headers::SESSION_ID.into(), headers::header_safe(session)));
        }
        // The upstream gets its own session id, the one checked for this caller.
        if let Some(id) = &self.upstream_session {
            set.push(("mcp-session-id".into(), id.clone()));
        }
        let request_id = headers::header_safe(&self.record.request_id);
        set.push((headers::REQUEST_ID.into(), request_id));
        set.push((headers::TRACE_ID.into(), self.record.trace_id.clone().unwrap_or_default()));
        // A new trace replaces whatever the client sent, and its tracestate with it.
        if let Some(traceparent) = &self.new_traceparent {
            for name in ["traceparent", "tracestate"] {
                if head.header(name).is_some() {
                    remove.push(name.into());
                }
            }
            set.push(("traceparent".into(), traceparent.clone()));
        }
        HeaderEdits { remove, set }
    }
}

/// The authorization decision for one message: RBAC, then the server's resource policy.
/// `mcpgw explain` calls this too, so it and the filter cannot disagree.
pub fn decide(
    config: &Config,
    catalog: &Catalog,
    principal: &Principal,
    server: &str,
    message: &Message,
) -> Result<String, Denial> {
    let server_rule = config.policy.allows_server(&principal.roles, server)?;
    let federated = config.servers.iter().any(|s| s.name == server && s.kind == crate::config::ServerKind::Federation);
    if federated {
        return Ok(federated_rule(&server_rule));
    }
    decide_on(config, catalog, principal, server, &server_rule, message)
}

/// What lets a message through to a federated server: being allowed onto it. The sidecar
/// dispatches each call to a member back through the gateway, where it is decided like a
/// call to the member.
fn federated_rule(server_rule: &str) -> String {
    format!("{server_rule}; each member call is decided when dispatched")
}

/// [`decide`] for a caller already allowed onto `server` (by `server_rule`).
fn decide_on(
    config: &Config,
    catalog: &Catalog,
    principal: &Principal,
    server: &str,
    server_rule: &str,
    message: &Message,
) -> Result<String, Denial> {
    let mut rule = config.policy.allows_message_on(&principal.roles, server, server_rule, message, catalog)?;
    if let Some(policy) = config.resource_policies.get(server) {
        let resources = policy.check_message(principal, message).map_err(Denial::Resource)?;
        for r in resources {
            rule.push_str("; ");
            rule.push_str(&r);
        }
    }
    Ok(rule)
}

/// Decides `tasks/get`, `tasks/result` and `tasks/cancel` like the tool call that created
/// the task: by the same caller, on the same server, still allowed now. `record` is what
/// the gateway stored when it saw the task created; without it the task is unknown.
pub fn decide_task(
    config: &Config,
    catalog: &Catalog,
    principal: &Principal,
    server: &str,
    id: &str,
    record: Option<&str>,
) -> Result<String, Denial> {
    let unknown = || Denial::UnknownTask { task: id.chars().take(64).collect() };
    let record: session::TaskRecord = record.and_then(|r| serde_json::from_str(r).ok()).ok_or_else(unknown)?;
    if record.owner != session::owner(&principal.provider, &principal.user_id) || record.server != server {
        return Err(unknown());
    }
    let call = Message {
        kind: jsonrpc::Kind::Request,
        id: None,
        method: "tools/call".to_owned(),
        target: Some(Target::Tool(record.tool)),
        arguments: record.arguments,
        creates_task: true,
    };
    decide(config, catalog, principal, server, &call).map(|rule| format!("task of {rule}"))
}

/// The task id a `CreateTaskResult` names (`result.task.taskId`).
fn created_task_id(message: &Value) -> Option<String> {
    message.pointer("/result/task/taskId").and_then(Value::as_str).map(str::to_owned)
}

fn task_change(id: String, call: &session::TaskRecord) -> Option<session::Change> {
    let record = serde_json::to_string(call).ok().filter(|r| r.len() <= session::MAX_TASK_RECORD_BYTES)?;
    Some(session::Change::Task { id, record })
}

/// What SSE filtering asks: list items are decided like calls; tool annotations are
/// learned; the task a task-augmented call created is noted.
struct StreamVisitor<'a> {
    config: &'a Config,
    catalog: &'a mut Catalog,
    principal: &'a Principal,
    server: &'a str,
    server_rule: &'a str,
    task_call: Option<&'a session::TaskRecord>,
    created_task: &'a mut Option<session::Change>,
}

impl listing::Visitor for StreamVisitor<'_> {
    fn keep(&mut self, kind: ListKind, item: &Value) -> bool {
        if kind == ListKind::Tools {
            self.catalog.learn(self.server, std::slice::from_ref(item));
        }
        visible_on(self.config, self.catalog, self.principal, self.server, self.server_rule, kind, item)
    }

    fn message(&mut self, message: &serde_json::Map<String, Value>) {
        let Some(call) = self.task_call else { return };
        if self.created_task.is_none() {
            let id = message.get("result").and_then(|r| r.pointer("/task/taskId")).and_then(Value::as_str);
            *self.created_task = id.and_then(|id| task_change(id.to_owned(), call));
        }
    }
}

/// What the filter does with a body-time denial: `Ok` gives it back when shadow mode lets
/// the request through; `Err` is the refusal the client gets (an unknown tool, when
/// hiding). `mcpgw explain` uses this too.
pub fn refusal_for(config: &Config, message: &Message, denial: Denial) -> Result<Denial, Refusal> {
    let shadow = config.policy.shadow || matches!(&denial, Denial::Resource(d) if d.shadow);
    if shadow {
        return Ok(denial);
    }
    let hide = config.policy.hide_denied_tools && denial.hides_tool();
    Err(match (&message.target, hide) {
        (Some(Target::Tool(name)), true) => Refusal::UnknownTool { name: name.clone(), denial },
        _ => Refusal::Forbidden(denial),
    })
}

/// Whether a list item (tool, prompt, resource) is one the caller may use: the same
/// decision as for calling or reading it.
pub fn visible(
    config: &Config,
    catalog: &Catalog,
    principal: &Principal,
    server: &str,
    kind: ListKind,
    item: &Value,
) -> bool {
    config
        .policy
        .allows_server(&principal.roles, server)
        .is_ok_and(|rule| visible_on(config, catalog, principal, server, &rule, kind, item))
}

/// [`visible`] for a caller already allowed onto `server` (by `server_rule`).
fn visible_on(
    config: &Config,
    catalog: &Catalog,
    principal: &Principal,
    server: &str,
    server_rule: &str,
    kind: ListKind,
    item: &Value,
) -> bool {
    let text = |k: &str| item.get(k).and_then(Value::as_str).map(str::to_owned);
    let (method, target) = match kind {
        ListKind::Tools => ("tools/call", text("name").map(Target::Tool)),
        ListKind::Prompts => ("prompts/get", text("name").map(Target::Prompt)),
        ListKind::Resources => ("resources/read", text("uri").map(Target::Resource)),
        ListKind::ResourceTemplates => ("resources/read", text("uriTemplate").map(Target::Resource)),
    };
    let Some(target) = target else { return false };
    let probe = Message {
        kind: jsonrpc::Kind::Request,
        id: None,
        method: method.to_owned(),
        target: Some(target),
        arguments: None,
        creates_task: false,
    };
    match kind {
        // Templates cannot be checked against resource rules; RBAC on the template decides.
        // A tool's or prompt's resources are its arguments, known only when it is called:
        // the resource policy decides then (a listing probe has none, and would hide every
        // tool the policy guards).
        ListKind::ResourceTemplates | ListKind::Tools | ListKind::Prompts => {
            config.policy.allows_message_on(&principal.roles, server, server_rule, &probe, catalog).is_ok()
        }
        ListKind::Resources => decide_on(config, catalog, principal, server, server_rule, &probe).is_ok(),
    }
}

fn authenticate(config: &Config, store: &mut KeyStore, head: &Head, now: SystemTime) -> Result<Rc<Principal>, Verdict> {
    let token = match head.header_count("authorization") {
        0 => return Err(AuthError::MissingToken.into()),
        1 => bearer_token(head.header("authorization").unwrap_or_default())?,
        _ => return Err(AuthError::MultipleAuthorizationHeaders.into()),
    };
    config.verifier.verify(token, now, store)
}

/// No dot segments, backslashes or percent-encoded dots, slashes and backslashes.
fn is_plain_path(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    let lower = path.to_ascii_lowercase();
    path.starts_with('/')
        && !path.contains('\\')
        && !path.split('/').any(|seg| seg == "." || seg == "..")
        && !["%2e", "%2f", "%5c", "%25"].iter().any(|enc| lower.contains(enc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::KeyStore;
    use crate::rbac::Catalog;
    use crate::reject::code;
    use jwt_compact::alg::{Hs256, Hs256Key};
    use jwt_compact::{AlgorithmExt, Claims, Header, TimeOptions};
    use serde_json::{json, Map};
    use std::time::Duration;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn config() -> Config {
        Config::from_json(config_json().to_string().as_bytes(), &|_| None).unwrap()
    }

    fn config_json() -> Value {
        json!({
            "max_body_bytes": 1024,
            "servers": [{"name": "github", "path_prefix": "/mcp/github"}, {"name": "filesystem", "path_prefix": "/mcp/filesystem"}],
            "jwt": {"providers": [{"name": "p", "issuer": "i", "audiences": ["a"], "keys": [{"kid": "k", "alg": "HS256", "secret": SECRET}]}]},
            "rbac": {"roles": {
                "developer": {"servers": ["github", "filesystem"], "tools": ["get_*", "list_*", "create_*"]},
                "readonly": {"servers": ["github"], "tools": ["get_*", "list_*"]},
            }},
        })
    }

    fn now() -> SystemTime {
        SystemTime::now()
    }

    fn token(sub: &str, roles: &[&str]) -> String {
        let mut custom = Map::new();
        custom.insert("iss".into(), json!("i"));
        custom.insert("aud".into(), json!("a"));
        custom.insert("sub".into(), json!(sub));
        custom.insert("roles".into(), json!(roles));
        let claims = Claims::new(custom).set_duration(
            &TimeOptions::new(chrono::Duration::zero(), || SystemTime::now().into()),
            chrono::Duration::minutes(5),
        );
        Hs256.token(&Header::empty().with_key_id("k"), &claims, &Hs256Key::new(SECRET)).unwrap()
    }

    /// A small request builder: `request().post("/mcp/github").by("alice", &["developer"])`.
    struct Req {
        method: &'static str,
        path: String,
        headers: Vec<(String, String)>,
    }

    fn request() -> Req {
        Req {
            method: "POST",
            path: "/mcp/github".into(),
            headers: vec![("content-type".into(), "application/json".into())],
        }
    }

    impl Req {
        fn method(mut self, m: &'static str) -> Self {
            self.method = m;
            self
        }
        fn path(mut self, p: &str) -> Self {
            self.path = p.into();
            self
        }
        fn header(mut self, n: &str, v: &str) -> Self {
            self.headers.push((n.into(), v.into()));
            self
        }
        fn by(self, sub: &str, roles: &[&str]) -> Self {
            let t = token(sub, roles);
            self.header("authorization", &format!("Bearer {t}"))
        }
        fn head(&self) -> Head {
            let mut headers =
                vec![(":method".to_string(), self.method.to_string()), (":path".to_string(), self.path.clone())];
            headers.extend(self.headers.iter().cloned());
            Head::new(headers)
        }
        fn headers_step(&self, ex: &mut Exchange) -> (Step, HeaderEdits) {
            ex.on_request_headers(&config(), &mut KeyStore::new(1, 8), self.head(), self.method != "POST", now())
        }
    }

    fn status(step: &Step) -> Option<u32> {
        match step {
            Step::Reply(r) => Some(r.status),
            _ => None,
        }
    }

    fn body_of(step: &Step) -> Value {
        match step {
            Step::Reply(r) => serde_json::from_slice(&r.body).unwrap(),
            _ => Value::Null,
        }
    }

    fn call(tool: &str) -> Vec<u8> {
        format!(r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{{"name":"{tool}","arguments":{{"repository":"acme/website","token":"s3cr3t"}}}}}}"#).into_bytes()
    }

    #[test]
    fn a_valid_traceparent_is_honoured_and_any_other_replaced_by_a_new_trace() {
        let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let set = |edits: &HeaderEdits, name: &str| {
            edits.set.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect::<Vec<_>>()
        };
        let alice = || request().by("alice", &["developer"]);
        let mut ex = Exchange::new(now());
        let (_, edits) = alice().header("traceparent", given).header("tracestate", "v=1").headers_step(&mut ex);
        assert!(set(&edits, "traceparent").is_empty() && !edits.remove.iter().any(|n| n.starts_with("trace")));
        assert_eq!(set(&edits, headers::TRACE_ID), ["4bf92f3577b34da6a3ce929d0e0e4736"]);
        assert_eq!(ex.finish(200, now(), None).trace_id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));

        for req in [
            alice().header("x-request-id", "15db1d99-3a2b-4c5d-8e9f-0123456789ab"),
            alice().header("traceparent", "00-zz-00f067aa0ba902b7-01").header("tracestate", "v=1"),
            alice().header("traceparent", given).header("traceparent", given),
        ] {
            let mut ex = Exchange::new(now());
            let (_, edits) = req.headers_step(&mut ex);
            let started = set(&edits, "traceparent");
            assert_eq!(started.len(), 1, "{edits:?}");
            let id = headers::trace_id(&started[0]).expect("a valid traceparent").to_owned();
            assert_ne!(id, "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(set(&edits, headers::TRACE_ID), std::slice::from_ref(&id));
            let head = req.head();
            for name in ["traceparent", "tracestate"] {
                assert_eq!(edits.remove.iter().any(|n| n == name), head.header(name).is_some(), "{name}: {edits:?}");
            }
            assert_eq!(ex.finish(200, now(), None).trace_id, Some(id));
        }
        // Envoy's request id, a UUID, becomes the trace id, so logs and traces meet.
        let mut ex = Exchange::new(now());
        let (_, edits) = alice().header("x-request-id", "15db1d99-3a2b-4c5d-8e9f-0123456789ab").headers_step(&mut ex);
        assert_eq!(set(&edits, headers::TRACE_ID), ["15db1d993a2b4c5d8e9f0123456789ab"]);
    }

    #[test]
    fn a_federated_server_gets_a_delegation_that_its_members_decide_on() {
        let mut v = config_json();
        v["servers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "all", "path_prefix": "/mcp/all", "kind": "federation",
            "federation": {"members": ["github"]}}));
        v["audit"] = json!({"sidecar": {"cluster": "sidecar", "secret_env": "SC"}});
        v["rbac"]["roles"]["developer"]["servers"] = json!(["github", "filesystem", "all"]);
        v["rbac"]["roles"]["readonly"]["servers"] = json!(["github", "all"]);
        let env = |name: &str| (name == "SC").then(|| "a-sidecar-secret-0123".to_owned());
        let config = Config::from_json(v.to_string().as_bytes(), &env).unwrap();
        let run = |req: Req, body: &[u8]| {
            let mut ex = Exchange::new(now());
            let (step, edits) = ex.on_request_headers(&config, &mut KeyStore::new(1, 8), req.head(), false, now());
            let step = match step {
                Step::WaitForBody => ex.on_request_body(&config, &Catalog::default(), body),
                other => other,
            };
            (ex.finish(200, now(), None), step, edits)
        };
        let set = |edits: &HeaderEdits, name: &str| edits.set.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let create =
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"create_issue","arguments":{}}}"#;
        let prefixed =
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"github__create_issue","arguments":{}}}"#;
        // To the virtual server: let through to the sidecar with a delegation and its
        // secret; a client's own delegation header is not what the sidecar gets.
        let (record, step, edits) = run(request().path("/mcp/all").by("rita", &["readonly"]), prefixed);
        assert_eq!(step, Step::Continue);
        assert!(record.reason.unwrap().contains("each member call is decided when dispatched"));
        assert_eq!(set(&edits, headers::SIDECAR_SECRET).as_deref(), Some("a-sidecar-secret-0123"));
        let assertion = set(&edits, headers::DELEGATION).expect("a delegation for the sidecar");
        // The sidecar dispatches to the member with it: decided as rita's own call.
        let dispatched = |assertion: &str| request().header(headers::DELEGATION, assertion);
        let (record, step, _) = run(dispatched(&assertion), create);
        assert_eq!(status(&step), Some(403), "readonly may not create issues, through the virtual server either");
        assert_eq!((record.user_id.as_deref(), record.via.as_deref()), (Some("rita"), Some("all")));
        let get = br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get_issue","arguments":{}}}"#;
        let (record, step, edits) = run(dispatched(&assertion), get);
        assert_eq!(step, Step::Continue);
        assert_eq!(record.decision, Some(Outcome::Allow));
        assert!(edits.remove.iter().any(|n| n == headers::DELEGATION), "the member never sees it");
        assert_eq!(set(&edits, headers::USER_ID).as_deref(), Some("rita"));
        // Not for servers outside the federation, not beside a token, not forged.
        let (record, step, _) = run(dispatched(&assertion).path("/mcp/filesystem"), get);
        assert_eq!(status(&step), Some(401));
        assert!(record.reason.unwrap().contains("does not reach server \"filesystem\""));
        let (_, step, _) = run(dispatched(&assertion).by("rita", &["readonly"]), get);
        assert_eq!(status(&step), Some(401));
        let forged = assertion.replacen("d1.", "d1.e30", 1);
        let (_, step, _) = run(dispatched(&forged), get);
        assert_eq!(status(&step), Some(401));
        let (_, step, _) = run(request().path("/mcp/github").header(headers::DELEGATION, "d1.x.y"), get);
        assert_eq!(status(&step), Some(401), "a client cannot pose as the sidecar");
    }

    #[test]
    fn regions_name_the_cluster_and_keep_pinned_callers_inside() {
        let mut v = config_json();
        v["servers"][0]["regional_clusters"] = json!({"eu-west": "gh_eu", "us-east": "gh_us"});
        v["servers"][0]["residency_clusters"] = json!({"eu-only": "gh_eu_only"});
        v["servers"][1]["region"] = json!("us-east");
        v["rbac"]["roles"]["eu_auditor"] = json!({"servers": ["github", "filesystem"], "tools": ["get_*"]});
        v["regions"] = json!({
            "names": ["eu-west", "us-east"], "default": "eu-west",
            "header": "x-client-region", "trusted_proxies": ["10.0.0.1"],
            "residency": [{"name": "eu-only", "roles": ["eu_auditor"], "regions": ["eu-west"]}]
        });
        let config = Config::from_json(v.to_string().as_bytes(), &|_| None).unwrap();
        let run = |req: Req, peer: &str| {
            let mut ex = Exchange::new(now());
            ex.set_peer(peer.parse().ok());
            let (step, edits) = ex.on_request_headers(&config, &mut KeyStore::new(1, 8), req.head(), false, now());
            (ex, step, edits)
        };
        let set = |edits: &HeaderEdits, name: &str| edits.set.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let dev = || request().by("alice", &["developer"]).header("x-client-region", "us-east");
        // From an untrusted peer the header is ignored and removed; a client's cluster too.
        let (ex, step, edits) = run(dev().header("x-mcp-cluster", "gh_eu_only"), "10.0.0.2");
        assert_eq!(step, Step::WaitForBody);
        assert_eq!(set(&edits, headers::CLUSTER).as_deref(), Some("gh_eu"));
        assert_eq!(set(&edits, headers::REGION).as_deref(), Some("eu-west"));
        assert!(
            edits.remove.iter().any(|n| n == "x-client-region") && edits.remove.iter().any(|n| n == "x-mcp-cluster")
        );
        let record = ex.finish(200, now(), None);
        assert_eq!((record.region.as_deref(), record.region_source.as_deref()), (Some("eu-west"), Some("default")));
        // From the trusted proxy it places the caller, and is kept.
        let (_, _, edits) = run(dev(), "10.0.0.1");
        assert_eq!(set(&edits, headers::CLUSTER).as_deref(), Some("gh_us"));
        assert!(!edits.remove.iter().any(|n| n == "x-client-region"));
        // A pinned caller gets the rule's cluster, whatever their region.
        let auditor = || request().by("eve", &["eu_auditor"]).header("x-client-region", "us-east");
        let (ex, _, edits) = run(auditor(), "10.0.0.1");
        assert_eq!(set(&edits, headers::CLUSTER).as_deref(), Some("gh_eu_only"));
        assert_eq!(set(&edits, headers::RESIDENCY).as_deref(), Some("eu-only"));
        assert_eq!(ex.finish(200, now(), None).residency.as_deref(), Some("eu-only"));
        // ...and is refused where the server runs outside their regions: 503, never sent.
        let (ex, step, edits) = run(auditor().path("/mcp/filesystem"), "10.0.0.1");
        assert_eq!(status(&step), Some(503));
        assert_eq!(body_of(&step)["error"]["code"], code::UNAVAILABLE);
        let message = body_of(&step)["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains("eu-only") && message.contains("us-east"), "{message}");
        assert_eq!(edits, HeaderEdits::default());
        let record = ex.finish(503, now(), None);
        assert_eq!(record.decision, Some(Outcome::Deny));
        assert_eq!(record.residency.as_deref(), Some("eu-only"));
        // A single-region server serves unpinned callers by its route, and says where.
        let (ex, step, edits) = run(dev().path("/mcp/filesystem"), "10.0.0.1");
        assert_eq!(step, Step::WaitForBody);
        assert_eq!(set(&edits, headers::CLUSTER), None);
        let mut ex = ex;
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_file","arguments":{}}}"#;
        assert_eq!(ex.on_request_body(&config, &Catalog::default(), body), Step::Continue);
        assert_eq!(ex.finish(200, now(), None).served_region.as_deref(), Some("us-east"));
    }

    #[test]
    fn allows_a_developer_tool_call_and_sets_identity_headers() {
        let req =
            request().by("alice", &["developer"]).header("X-MCP-User-Id", "mallory").header("x-request-id", "r-1");
        let mut ex = Exchange::new(now());
        let (step, edits) = req.headers_step(&mut ex);
        assert_eq!(step, Step::WaitForBody);
        assert!(edits.remove.contains(&"X-MCP-User-Id".to_string()));
        assert!(edits.remove.contains(&"authorization".to_string()));
        assert!(edits.set.contains(&(headers::USER_ID.to_string(), "alice".to_string())));
        assert!(edits.set.contains(&(headers::ROLES.to_string(), "developer".to_string())));
        assert!(edits.set.contains(&(headers::REQUEST_ID.to_string(), "r-1".to_string())));
        assert_eq!(ex.on_request_body(&config(), &Catalog::default(), &call("create_issue")), Step::Continue);
        let rec = ex.finish(200, now(), Some("127.0.0.1".into()));
        assert_eq!(rec.decision, Some(Outcome::Allow));
        assert!(rec.success);
        assert_eq!(rec.target.as_deref(), Some("create_issue"));
        assert_eq!(rec.params.unwrap()["token"], "[REDACTED]");
    }

    #[test]
    fn readonly_calling_create_issue_gets_403_with_the_request_id() {
        let req = request().by("bob", &["readonly"]);
        let mut ex = Exchange::new(now());
        assert_eq!(req.headers_step(&mut ex).0, Step::WaitForBody);
        let step = ex.on_request_body(&config(), &Catalog::default(), &call("create_issue"));
        assert_eq!(status(&step), Some(403));
        assert_eq!(body_of(&step)["id"], 5);
        assert_eq!(body_of(&step)["error"]["code"], code::FORBIDDEN);
        let rec = ex.finish(403, now(), None);
        assert_eq!(rec.decision, Some(Outcome::Deny));
        assert!(rec.reason.unwrap().contains("create_issue"));
    }

    #[test]
    fn refuses_at_headers_time() {
        let ok = || request().by("alice", &["developer"]);
        let cases: Vec<(Req, u32)> = vec![
            (request(), 401),
            (request().header("authorization", "Bearer"), 401),
            (request().header("authorization", "Basic YTpi"), 401),
            (request().header("authorization", "Bearer x.y.z"), 401),
            (ok().header("authorization", "Bearer again"), 401),
            (ok().path("/mcp/gitlab"), 404),
            (ok().path("/mcp/github/../filesystem"), 404),
            (ok().path("/mcp/github/%2e%2e/filesystem"), 404),
            (ok().method("PUT"), 405),
            (request().by("bob", &["readonly"]).path("/mcp/filesystem"), 403),
            (request().by("eve", &["intern"]), 403),
            (Req { headers: vec![], ..ok() }.by("alice", &["developer"]), 415),
            (ok().header("content-length", "4096"), 413),
        ];
        for (req, expected) in cases {
            let mut ex = Exchange::new(now());
            let (step, edits) = req.headers_step(&mut ex);
            assert_eq!(status(&step), Some(expected), "{} {} {:?}", req.method, req.path, req.headers);
            assert_eq!(edits, HeaderEdits::default());
            assert_eq!(ex.finish(expected, now(), None).decision, Some(Outcome::Deny));
        }
    }

    #[test]
    fn refuses_heads_a_server_could_read_another_way() {
        let ok = || request().by("alice", &["developer"]);
        let cases: Vec<(Req, u32)> = vec![
            (
                Req { headers: vec![("content-type".into(), "application/json; charset=utf-16".into())], ..request() }
                    .by("alice", &["developer"]),
                415,
            ),
            (ok().header("content-type", "application/json"), 400),
            (ok().header("mcp_session_id", "s"), 400),
            (ok().header("mcp-name", "a").header("Mcp-Name", "b"), 400),
            (ok().header("x-http-method-override", "DELETE"), 400),
            (ok().method("GET").header("content-length", "5"), 400),
            (ok().method("DELETE").header("transfer-encoding", "chunked"), 400),
        ];
        for (req, expected) in cases {
            let mut ex = Exchange::new(now());
            let (step, _) = req.headers_step(&mut ex);
            assert_eq!(status(&step), Some(expected), "{} {:?}", req.method, req.headers);
        }
        // The charset may be spelled in any case, quoted or not.
        for ct in ["application/json; charset=UTF-8", "application/json;charset=\"utf-8\"", "Application/JSON"] {
            let mut ex = Exchange::new(now());
            let req =
                Req { headers: vec![("content-type".into(), ct.into())], ..request() }.by("alice", &["developer"]);
            assert_eq!(req.headers_step(&mut ex).0, Step::WaitForBody, "{ct}");
        }
        // A GET whose stream does not end with the headers carries a body.
        let mut ex = Exchange::new(now());
        let head = ok().method("GET").head();
        let (step, _) = ex.on_request_headers(&config(), &mut KeyStore::new(1, 8), head, false, now());
        assert_eq!(status(&step), Some(400));
    }

    #[test]
    fn underscore_identity_headers_and_proxy_credentials_are_removed() {
        let req = request()
            .by("alice", &["developer"])
            .header("X_MCP_User_Id", "mallory")
            .header("proxy-authorization", "Basic x");
        let mut ex = Exchange::new(now());
        let (_, edits) = req.headers_step(&mut ex);
        assert!(edits.remove.contains(&"X_MCP_User_Id".to_string()));
        assert!(edits.remove.contains(&"proxy-authorization".to_string()));
    }

    #[test]
    fn mcp_headers_are_decoded_and_must_match_the_body() {
        let body = |name: &str| {
            format!(r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{{"name":"{name}","arguments":{{}}}}}}"#)
                .into_bytes()
        };
        type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, Option<u32>);
        let cases: Vec<Case> = vec![
            (vec![("mcp-method", "tools/call"), ("mcp-name", "get_x")], "get_x", None),
            (vec![("mcp-name", "=?base64?Z2V0X3jDvA==?=")], "get_xü", None),
            (vec![("mcp-name", "get_x")], "get_y", Some(400)),
            (vec![("mcp-method", "tools/list")], "get_x", Some(400)),
            (vec![("mcp-name", "=?base64?!!!?=")], "get_x", Some(400)),
            (vec![("mcp-name", "=?base64?Z2V0X3g=?=")], "get_x", None),
        ];
        for (headers, name, expected) in cases {
            let mut req = request().by("alice", &["developer"]);
            for (n, v) in &headers {
                req = req.header(n, v);
            }
            let mut ex = Exchange::new(now());
            assert_eq!(req.headers_step(&mut ex).0, Step::WaitForBody);
            let step = ex.on_request_body(&config(), &Catalog::default(), &body(name));
            assert_eq!(status(&step), expected, "{headers:?} {name}");
            if expected.is_some() {
                assert_eq!(body_of(&step)["error"]["code"], code::HEADER_MISMATCH, "{headers:?}");
            }
        }
    }

    #[test]
    fn sessions_are_bound_to_the_caller_who_opened_them() {
        let with_session = |who: &str| request().by(who, &["developer"]).header("mcp-session-id", "s-1");
        // The gateway learns the owner from the initialize reply.
        let mut ex = Exchange::new(now());
        request().by("alice", &["developer"]).headers_step(&mut ex);
        let init = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
        assert_eq!(ex.on_request_body(&config(), &Catalog::default(), init), Step::Continue);
        let owner = session::owner("p", "alice");
        assert_eq!(
            ex.session_change(200, Some("s-1")),
            Some(session::Change::Open { id: "s-1".into(), owner: owner.clone() })
        );
        assert_eq!(ex.session_change(400, Some("s-1")), None, "only a successful initialize opens one");

        type Case<'a> = (&'a str, Option<(String, bool)>, Option<u32>);
        let cases: Vec<Case> = vec![
            ("alice", Some((owner.clone(), false)), None),
            ("bob", Some((owner.clone(), false)), Some(404)),
            ("alice", None, Some(404)),
        ];
        for (who, known, expected) in cases {
            let mut ex = Exchange::new(now());
            ex.set_session_owner(known.clone());
            let (step, _) = with_session(who).headers_step(&mut ex);
            assert_eq!(status(&step), expected, "{who} {known:?}");
        }
        // A session in use is refreshed, and closed by its owner's DELETE.
        let mut ex = Exchange::new(now());
        ex.set_session_owner(Some((owner.clone(), true)));
        with_session("alice").method("DELETE").headers_step(&mut ex);
        assert_eq!(ex.session_change(202, None), Some(session::Change::Close { id: "s-1".into() }));
        let mut ex = Exchange::new(now());
        ex.set_session_owner(Some((owner.clone(), true)));
        with_session("alice").method("GET").headers_step(&mut ex);
        assert_eq!(ex.session_change(200, None), Some(session::Change::Refresh { id: "s-1".into(), owner }));
    }

    #[test]
    fn bound_session_ids_are_checked_by_their_tag_and_forwarded_plain() {
        const KEY: &str = "a-key-every-gateway-replica-shares-0123";
        let mut v = config_json();
        v["session_binding_key_env"] = json!("SESSION_KEY");
        let env = |name: &str| (name == "SESSION_KEY").then(|| KEY.to_owned());
        let cfg = Config::from_json(v.to_string().as_bytes(), &env).unwrap();
        let step = |req: &Req, ex: &mut Exchange| {
            ex.on_request_headers(&cfg, &mut KeyStore::new(1, 8), req.head(), req.method != "POST", now())
        };
        // The initialize reply's id is handed out bound to its caller.
        let mut ex = Exchange::new(now());
        step(&request().by("alice", &["developer"]), &mut ex);
        let init = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
        assert_eq!(ex.on_request_body(&cfg, &Catalog::default(), init), Step::Continue);
        let bound = ex.client_session_id(&cfg, 200, "s-1").unwrap();
        assert!(bound.starts_with("s-1.") && bound.len() > 20, "{bound}");
        assert_eq!(ex.client_session_id(&cfg, 400, "s-1"), None, "only a successful initialize");
        assert_eq!(ex.client_session_id(&config(), 200, "s-1"), None, "only with a binding key");
        // Any exchange (any replica: nothing is looked up) lets its owner in, and the
        // upstream gets its own id; anyone else, or a changed id, is an unknown session.
        let with_session = |who: &str, id: &str| request().by(who, &["developer"]).header("mcp-session-id", id);
        let mut ex = Exchange::new(now());
        let (next, edits) = step(&with_session("alice", &bound), &mut ex);
        assert_eq!(status(&next), None);
        let upstream: Vec<&str> =
            edits.set.iter().filter(|(n, _)| n == "mcp-session-id").map(|(_, v)| v.as_str()).collect();
        assert_eq!(upstream, ["s-1"]);
        let (_, tag) = bound.rsplit_once('.').unwrap();
        for (who, id) in [("bob", bound.clone()), ("alice", "s-1".to_owned()), ("alice", format!("s-2.{tag}"))] {
            let mut ex = Exchange::new(now());
            // Even a shared-table entry naming this caller does not stand in for the tag.
            ex.set_session_owner(Some((session::owner("p", who), false)));
            let (next, _) = step(&with_session(who, &id), &mut ex);
            assert_eq!(status(&next), Some(404), "{who} {id}");
        }
        // A missing key is a configuration error naming the field.
        let e = Config::from_json(v.to_string().as_bytes(), &|_| None).unwrap_err();
        assert!(e.to_string().contains("session_binding_key_env"), "{e}");
        let short = |name: &str| (name == "SESSION_KEY").then(|| "short".to_owned());
        assert!(Config::from_json(v.to_string().as_bytes(), &short).is_err());
    }

    #[test]
    fn tasks_are_decided_like_the_call_that_created_them() {
        let mut v = config_json();
        for role in ["developer", "readonly"] {
            v["rbac"]["roles"][role]["methods"] = json!(["tools/call", "tasks/*"]);
        }
        let config = Config::from_json(v.to_string().as_bytes(), &|_| None).unwrap();
        let mut ex = Exchange::new(now());
        let (step, _) = ex.on_request_headers(
            &config,
            &mut KeyStore::new(1, 8),
            request().by("alice", &["developer"]).head(),
            false,
            now(),
        );
        assert_eq!(step, Step::WaitForBody);
        let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"create_issue","arguments":{"title":"x"},"task":{"ttl":60000}}}"#;
        assert_eq!(ex.on_request_body(&config, &Catalog::default(), call), Step::Continue);
        assert_eq!(ex.on_response_headers("application/json", None, 1024), ResponseBody::BufferJson);
        let reply = br#"{"jsonrpc":"2.0","id":1,"result":{"task":{"taskId":"t-1","status":"working"}}}"#;
        let mut catalog = Catalog::default();
        assert_eq!(ex.on_response_body(&config, &mut catalog, "application/json", reply).as_deref(), Some(&reply[..]));
        let Some(session::Change::Task { id, record }) = ex.take_created_task() else { panic!("no task recorded") };
        assert_eq!(id, "t-1");

        let get = br#"{"jsonrpc":"2.0","id":2,"method":"tasks/result","params":{"taskId":"t-1"}}"#;
        let ask = |who: &str, roles: &[&str], known: Option<&str>| {
            let mut ex = Exchange::new(now());
            ex.on_request_headers(&config, &mut KeyStore::new(1, 8), request().by(who, roles).head(), false, now());
            let lookup = |_: &str| known.map(str::to_owned);
            status(&ex.on_request_body_with(&config, &Catalog::default(), get, &lookup))
        };
        assert_eq!(ask("alice", &["developer"], Some(&record)), None, "the creator may follow up");
        assert_eq!(ask("bob", &["developer"], Some(&record)), Some(403), "another caller may not");
        assert_eq!(ask("alice", &["readonly"], Some(&record)), Some(403), "nor one who may no longer call the tool");
        assert_eq!(ask("alice", &["developer"], None), Some(403), "an unknown task is refused");
    }

    #[test]
    fn lower_case_bearer_is_accepted() {
        let t = token("alice", &["developer"]);
        let mut ex = Exchange::new(now());
        let (step, _) = request().header("authorization", &format!("bearer {t}")).headers_step(&mut ex);
        assert_eq!(step, Step::WaitForBody);
    }

    #[test]
    fn get_and_delete_are_authenticated_without_a_body() {
        for m in ["GET", "DELETE"] {
            let mut ex = Exchange::new(now());
            let (step, _) = request().method(m).by("alice", &["developer"]).headers_step(&mut ex);
            assert_eq!(step, Step::Continue);
            let mut ex = Exchange::new(now());
            let (step, _) = request().method(m).headers_step(&mut ex);
            assert_eq!(status(&step), Some(401));
        }
    }

    #[test]
    fn bad_bodies_get_json_rpc_errors() {
        let cases: Vec<(&[u8], u32, i64)> = vec![
            (b"", 400, -32700),
            (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"met", 400, -32700),
            (b"\x80\x81", 400, -32700),
            (
                b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"get_x\"}}]",
                400,
                -32600,
            ),
            (b"{\"jsonrpc\":\"2.0\",\"id\":1}", 400, -32600),
        ];
        for (body, st, code) in cases {
            let mut ex = Exchange::new(now());
            request().by("alice", &["developer"]).headers_step(&mut ex);
            let step = ex.on_request_body(&config(), &Catalog::default(), body);
            assert_eq!(status(&step), Some(st), "{:?}", String::from_utf8_lossy(body));
            assert_eq!(body_of(&step)["error"]["code"], code);
        }
        let mut ex = Exchange::new(now());
        request().by("alice", &["developer"]).headers_step(&mut ex);
        assert_eq!(status(&Step::Reply(ex.on_body_progress(&config(), 2048).unwrap())), Some(413));
    }

    #[test]
    fn post_without_body_is_a_parse_error() {
        let mut ex = Exchange::new(now());
        let (step, _) = ex.on_request_headers(
            &config(),
            &mut KeyStore::new(1, 8),
            request().by("a", &["developer"]).head(),
            true,
            now(),
        );
        assert_eq!(body_of(&step)["error"]["code"], -32700);
    }

    #[test]
    fn identity_header_values_are_sanitized() {
        let mut ex = Exchange::new(now());
        let (_, edits) = request().by("al\r\nice", &["dev,eloper", "developer"]).headers_step(&mut ex);
        assert!(edits.set.contains(&(headers::USER_ID.to_string(), "al%0D%0Aice".to_string())));
        assert!(edits.set.contains(&(headers::ROLES.to_string(), "dev%2Celoper,developer".to_string())));
    }

    #[test]
    fn trailers_before_a_decision_are_refused() {
        let mut ex = Exchange::new(now());
        request().by("alice", &["developer"]).headers_step(&mut ex);
        assert_eq!(ex.on_request_trailers().map(|r| r.status), Some(400));
        let mut ex = Exchange::new(now());
        request().method("GET").by("alice", &["developer"]).headers_step(&mut ex);
        assert_eq!(ex.on_request_trailers(), None);
    }

    /// The same configuration with a remote JWKS provider and resource metadata.
    fn remote_config() -> Config {
        let v = json!({
            "servers": [{"name": "github", "path_prefix": "/mcp/github"}],
            "jwt": {"providers": [{"name": "p", "issuer": "i", "audiences": ["a"], "algorithms": ["ES256"],
                                   "jwks": {"cluster": "idp", "path": "/certs"}}]},
            "rbac": {"roles": {"developer": {"servers": ["github"], "tools": ["*"]}}},
            "resource_metadata": {"public_url": "https://gw.example", "authorization_servers": ["https://idp.example"]},
        });
        Config::from_json(v.to_string().as_bytes(), &|_| None).unwrap()
    }

    #[test]
    fn waits_for_keys_then_refuses_with_503_when_none_arrive() {
        let config = remote_config();
        let mut store = KeyStore::new(1, 8);
        // {"alg":"ES256","kid":"k"} . {"iss":"i"} . sig
        let token = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsifQ.eyJpc3MiOiJpIn0.c2ln";
        let head = request().header("authorization", &format!("Bearer {token}")).head();
        let mut ex = Exchange::new(now());
        let (step, edits) = ex.on_request_headers(&config, &mut store, head, false, now());
        assert_eq!(step, Step::WaitForKeys { provider: 0, refetch: false });
        assert_eq!(edits, HeaderEdits::default());
        let (step, _) = ex.decide_head(&config, &mut store, now(), true);
        assert_eq!(status(&step), Some(503));
        let Step::Reply(reply) = step else { unreachable!() };
        assert_eq!(reply.header("retry-after"), Some("1"));
    }

    #[test]
    fn serves_protected_resource_metadata_and_points_401s_at_it() {
        let config = remote_config();
        let mut store = KeyStore::new(1, 8);
        let mut ex = Exchange::new(now());
        let head = request().method("GET").path("/.well-known/oauth-protected-resource/mcp/github").head();
        let (step, _) = ex.on_request_headers(&config, &mut store, head, true, now());
        assert_eq!(status(&step), Some(200));
        assert_eq!(body_of(&step)["resource"], "https://gw.example/mcp/github");
        assert_eq!(body_of(&step)["authorization_servers"][0], "https://idp.example");

        let mut ex = Exchange::new(now());
        let (step, _) = ex.on_request_headers(&config, &mut store, request().head(), false, now());
        let Step::Reply(reply) = step else { panic!("expected a 401") };
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Bearer realm=\"mcp-gateway\", resource_metadata=\"https://gw.example/.well-known/oauth-protected-resource/mcp/github\"")
        );
    }

    #[test]
    fn forwards_or_injects_upstream_credentials_only_when_configured() {
        let v = json!({
            "servers": [
                {"name": "github", "path_prefix": "/mcp/github", "upstream_auth": {"header": "authorization", "value": "Bearer ghp_x"}},
                {"name": "filesystem", "path_prefix": "/mcp/filesystem", "upstream_auth": {"forward_client_token": true}}
            ],
            "jwt": {"providers": [{"name": "p", "issuer": "i", "audiences": ["a"], "keys": [{"kid": "k", "alg": "HS256", "secret": SECRET}]}]},
            "rbac": {"roles": {"developer": {"servers": ["*"], "tools": ["*"]}}},
        });
        let config = Config::from_json(v.to_string().as_bytes(), &|_| None).unwrap();
        let mut store = KeyStore::new(1, 8);
        let mut ex = Exchange::new(now());
        let (_, edits) =
            ex.on_request_headers(&config, &mut store, request().by("a", &["developer"]).head(), false, now());
        assert!(edits.remove.contains(&"authorization".to_string()));
        assert!(edits.set.contains(&("authorization".to_string(), "Bearer ghp_x".to_string())));
        let mut ex = Exchange::new(now());
        let head = request().path("/mcp/filesystem").by("a", &["developer"]).head();
        let (_, edits) = ex.on_request_headers(&config, &mut store, head, false, now());
        assert!(!edits.remove.contains(&"authorization".to_string()));
        assert!(!edits.set.iter().any(|(n, _)| n == "authorization"));
    }

    #[test]
    fn unfinished_requests_are_audited_as_denied() {
        let mut ex = Exchange::new(now());
        request().by("alice", &["developer"]).headers_step(&mut ex);
        let rec = ex.finish(0, now() + Duration::from_millis(5), None);
        assert_eq!(rec.decision, Some(Outcome::Deny));
        assert!(!rec.success);
    }
}
