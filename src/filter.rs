//! The proxy-wasm adapter: moves data between Envoy and [`Exchange`], decides nothing.
//!
//! Host calls go through `proxy_wasm::hostcalls` and their errors are handled, because a
//! panic traps the VM and takes every request on the worker with it. Where a host call
//! fails mid-request the request is refused (fail closed).
//!
//! Each worker VM has one [`Vm`]: the compiled configuration, the installed keys and
//! token cache, and the requests waiting for keys. The root context fetches JWKS
//! documents (coordinated across VMs through shared data, see [`crate::jwks`]), installs
//! them, and resumes waiting requests on its tick, a batch per call into the VM (see
//! [`RELEASE_BATCH`]).

use crate::config::Config;
use crate::gateway::{Exchange, Head, HeaderEdits, ResponseBody, Step};
use crate::jwks::{self, FetchState};
use crate::jwt::{KeySet, KeyStore};
use crate::rbac::Catalog;
use crate::reject::Reply;
use crate::session;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root { context_id, vm: None, fetches: HashMap::new(), release_queue: None, release_pending: false })
    });
}}

/// How often the root context looks at shared keys and waiting requests.
const TICK: Duration = Duration::from_millis(100);

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Most requests one worker holds while waiting for keys.
const MAX_WAITERS: usize = 1024;

/// Most waiting requests released in one call into the VM.
///
/// Envoy does not act on `send_http_response` or `resume_http_request` during the call
/// that asks for them: it queues the action and runs the queue when the call returns. The
/// first action re-enters the VM (the reply passes this filter's `on_response_headers`,
/// then `on_log`; a resumed request its `on_http_request_body`), and when that inner call
/// returns, Envoy drains the rest of the same queue from inside it, one native stack level
/// deeper per action. Releasing N requests in one call thus nests N levels; measured
/// through Envoy 1.40 (tests/key_wait.rs), V8 gives up between 290 and 320
/// ("Maximum call stack size exceeded" in `proxy_on_response_headers`), which fails the
/// VM for every request on the worker. A batch well under that, at most two levels per
/// request, keeps the nesting shallow whatever the number of waiters; the next batch goes
/// out from a fresh call (see [`Root::release_queue`]).
const RELEASE_BATCH: usize = 32;

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

fn now() -> SystemTime {
    hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH)
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// Counters in Envoy's stats (prefixed `wasmcustom.` by Envoy).
struct Metrics {
    jwks_fetch_success: Option<u32>,
    jwks_fetch_failure: Option<u32>,
    allowed: Option<u32>,
    denied: Option<u32>,
}

impl Metrics {
    fn define() -> Metrics {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        Metrics {
            jwks_fetch_success: counter("mcp_gateway.jwks_fetch_success"),
            jwks_fetch_failure: counter("mcp_gateway.jwks_fetch_failure"),
            allowed: counter("mcp_gateway.requests_allowed"),
            denied: counter("mcp_gateway.requests_denied"),
        }
    }

    fn bump(metric: Option<u32>) {
        if let Some(id) = metric {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}

/// A request held until its token's provider has (new) keys.
struct Waiter {
    context_id: u32,
    provider: usize,
    /// The provider's `done_ms` when the request started waiting: a fetch that ended
    /// since then is the answer it waited for.
    since_done_ms: u64,
    deadline: SystemTime,
    refetch: bool,
    request: Rc<RefCell<Request>>,
}

/// Per-VM state shared by the root context and the HTTP contexts.
struct Vm {
    config: Rc<Config>,
    store: KeyStore,
    /// Per provider: the shared state as last read by this VM, and its CAS.
    states: Vec<FetchState>,
    state_cas: Vec<Option<u32>>,
    waiters: Vec<Waiter>,
    /// Tool operations learned from tools/list replies.
    catalog: Catalog,
    /// CAS of the shared catalog last merged.
    catalog_cas: Option<u32>,
    /// Session buckets as last parsed, with their CAS (re-parsed only when it changed).
    sessions: HashMap<String, (u32, session::Bucket)>,
    metrics: Metrics,
}

type SharedVm = Rc<RefCell<Vm>>;

/// Holds the compiled configuration and runs the key lifecycle for this worker.
struct Root {
    context_id: u32,
    vm: Option<SharedVm>,
    /// In-flight JWKS fetches: call token -> provider index.
    fetches: HashMap<u32, usize>,
    /// A shared queue only this VM listens on. A message to it makes Envoy call
    /// `on_queue_ready` from its event loop, a fresh call into the VM: that is where the
    /// next batch of waiters goes out. Without it (registration failed) the tick does.
    release_queue: Option<u32>,
    /// A message is in the release queue and `on_queue_ready` has not run yet.
    release_pending: bool,
}

impl Root {
    fn read_state(provider: &str) -> (FetchState, Option<u32>) {
        Root::parse_state(hostcalls::get_shared_data(&jwks::shared_key(provider)))
    }

    fn parse_state(read: Result<(Option<Vec<u8>>, Option<u32>), Status>) -> (FetchState, Option<u32>) {
        match read {
            Ok((Some(bytes), cas)) => (serde_json::from_slice(&bytes).unwrap_or_default(), cas),
            Ok((None, cas)) => (FetchState::default(), cas),
            Err(_) => (FetchState::default(), None),
        }
    }

    /// Read-modify-write of a provider's shared state; `change` returns false to skip
    /// the write. Returns the state written (or read) and whether the write happened.
    fn update_state(provider: &str, change: impl Fn(&mut FetchState) -> bool) -> (FetchState, bool) {
        for _ in 0..4 {
            let (mut state, cas) = Root::read_state(provider);
            if !change(&mut state) {
                return (state, false);
            }
            let bytes = serde_json::to_vec(&state).unwrap_or_default();
            match hostcalls::set_shared_data(&jwks::shared_key(provider), Some(&bytes), cas) {
                Ok(()) => return (state, true),
                Err(_) => continue, // another VM wrote first: read again
            }
        }
        (Root::read_state(provider).0, false)
    }

    /// Installs keys another VM (or this one) stored, and starts fetches that are due.
    fn sync_keys(&mut self, vm: &SharedVm) {
        let now_ms = epoch_ms(now());
        let config = vm.borrow().config.clone();
        for (index, provider) in config.verifier.providers.iter().enumerate() {
            let Some(source) = &provider.jwks else {
                continue;
            };
            // Parse the shared state only when another VM changed it since the last tick.
            let known_cas = vm.borrow().state_cas.get(index).copied().flatten();
            let (state, cas) = match hostcalls::get_shared_data(&jwks::shared_key(&provider.name)) {
                Ok((Some(_), Some(cas))) if Some(cas) == known_cas => {
                    (vm.borrow().states.get(index).cloned().unwrap_or_default(), Some(cas))
                }
                other => Root::parse_state(other),
            };
            if let Some(slot) = vm.borrow_mut().state_cas.get_mut(index) {
                *slot = cas;
            }
            {
                let mut vm = vm.borrow_mut();
                let installed = vm.states.get(index).map_or(0, |s| s.version);
                if state.version != installed {
                    if let Some(doc) = &state.jwks {
                        match KeySet::from_jwks(doc.as_bytes(), &provider.algorithms) {
                            Ok((keys, _)) => vm.store.install(index, keys),
                            Err(e) => log(
                                LogLevel::Error,
                                &format!("mcp-gateway: provider {}: stored JWKS unusable: {e}", provider.name),
                            ),
                        }
                    }
                }
                if let Some(slot) = vm.states.get_mut(index) {
                    *slot = state.clone();
                }
            }
            // Only waiters whose refetch has not happened yet ask for one: those it answered
            // are being released and must not cause another fetch.
            let unknown_kid = vm
                .borrow()
                .waiters
                .iter()
                .any(|w| w.provider == index && w.refetch && state.done_ms <= w.since_done_ms);
            let mine = self.fetches.values().any(|p| *p == index);
            if mine || !state.wants_fetch(now_ms, unknown_kid) {
                continue;
            }
            let (_, claimed) = Root::update_state(&provider.name, |s| {
                let go = s.wants_fetch(now_ms, unknown_kid) && s.may_start(now_ms, source.min_refetch, source.timeout);
                if go {
                    s.start(now_ms);
                }
                go
            });
            if !claimed {
                continue;
            }
            let headers = vec![
                (":method", "GET"),
                (":path", source.path.as_str()),
                (":authority", source.authority.as_str()),
                ("accept", "application/json"),
            ];
            match hostcalls::dispatch_http_call(&source.cluster, headers, None, vec![], source.timeout) {
                Ok(token) => {
                    self.fetches.insert(token, index);
                }
                Err(status) => {
                    log(
                        LogLevel::Warn,
                        &format!(
                            "mcp-gateway: provider {}: cannot fetch JWKS from cluster {:?}: {status:?}",
                            provider.name, source.cluster
                        ),
                    );
                    Root::update_state(&provider.name, |s| {
                        s.failed(now_ms, source.min_refetch);
                        true
                    });
                    Metrics::bump(vm.borrow().metrics.jwks_fetch_failure);
                }
            }
        }
        let _ = hostcalls::set_effective_context(self.context_id);
    }

    /// Resumes waiting requests whose keys changed, whose fetch ended, whose wait ran
    /// out, or whose unknown `kid` cannot be refetched now: the first [`RELEASE_BATCH`]
    /// of them, oldest first. Asks for another call into the VM when more are ready.
    fn wake_waiters(&mut self, vm: &SharedVm) {
        let now = now();
        let now_ms = epoch_ms(now);
        let waiters = std::mem::take(&mut vm.borrow_mut().waiters);
        let mut still = Vec::new();
        let mut released = 0;
        let mut more = false;
        for w in waiters {
            let ready = {
                let vm = vm.borrow();
                let state = vm.states.get(w.provider).cloned().unwrap_or_default();
                let source = vm.config.verifier.providers.get(w.provider).and_then(|p| p.jwks.clone());
                let fetch_ended = state.done_ms > w.since_done_ms;
                // An unknown kid whose refetch cannot start before the wait ends: refuse now.
                let hopeless = w.refetch
                    && !fetch_ended
                    && source.is_some_and(|s| {
                        let next_allowed = state
                            .attempt_ms
                            .saturating_add(u64::try_from(s.min_refetch.as_millis()).unwrap_or(u64::MAX));
                        !state.in_flight(now_ms, s.timeout) && next_allowed > epoch_ms(w.deadline)
                    });
                fetch_ended || hopeless || now >= w.deadline
            };
            if !ready {
                still.push(w);
                continue;
            }
            if released == RELEASE_BATCH {
                more = true;
                still.push(w);
                continue;
            }
            // Refused meanwhile (e.g. its body grew past the limit): nothing to resume.
            if w.request.borrow().phase != Phase::AwaitKeys {
                continue;
            }
            if hostcalls::set_effective_context(w.context_id).is_err() {
                continue; // the request is gone
            }
            let (step, edits) = {
                let mut vmb = vm.borrow_mut();
                let Vm { config, store, .. } = &mut *vmb;
                let config = config.clone();
                let mut request = w.request.borrow_mut();
                match request.exchange.as_mut() {
                    Some(ex) => ex.decide_head(&config, store, now, true),
                    None => continue,
                }
            };
            act(vm, &w.request, w.context_id, step, &edits, true);
            released += 1;
        }
        vm.borrow_mut().waiters.extend(still);
        let _ = hostcalls::set_effective_context(self.context_id);
        if more {
            self.release_more();
        }
    }

    /// Gets a fresh call into the VM soon, through the release queue, for the next batch.
    fn release_more(&mut self) {
        let Some(queue) = self.release_queue else { return };
        if !self.release_pending {
            self.release_pending = hostcalls::enqueue_shared_queue(queue, Some(b"release")).is_ok();
        }
    }

    /// Registers this VM's release queue. Queues are shared by every VM of the plugin, by
    /// name, so the name is random (std's `RandomState` draws from the host's RNG).
    fn register_release_queue() -> Option<u32> {
        use std::hash::BuildHasher;
        let name = format!("mcp_gateway/release/{:016x}", std::hash::RandomState::new().hash_one(0_u8));
        hostcalls::register_shared_queue(&name).ok()
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let (Some(index), Some(vm)) = (self.fetches.remove(&token_id), self.vm.clone()) else {
            return;
        };
        let config = vm.borrow().config.clone();
        let Some(provider) = config.verifier.providers.get(index) else {
            return;
        };
        let Some(source) = &provider.jwks else { return };
        let now_ms = epoch_ms(now());
        let headers: Vec<(String, String)> = hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders)
            .unwrap_or_default()
            .into_iter()
            .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let status = header(":status").unwrap_or("none").to_owned();
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(MAX_JWKS_BYTES))
            .ok()
            .flatten()
            .unwrap_or_default();
        let parsed = if body_size > MAX_JWKS_BYTES {
            Err(format!("JWKS larger than {MAX_JWKS_BYTES} bytes"))
        } else if status == "200" {
            KeySet::from_jwks(&body, &provider.algorithms).map(|(set, skipped)| (set.keys.len(), skipped))
        } else {
            Err(format!("HTTP status {status}"))
        };
        match parsed {
            Ok((count, skipped)) => {
                let doc = String::from_utf8_lossy(&body).into_owned();
                let max_age = header("cache-control").and_then(jwks::max_age);
                Root::update_state(&provider.name, |s| {
                    s.succeeded(now_ms, doc.clone(), max_age, source.refresh, source.min_refetch);
                    true
                });
                log(
                    LogLevel::Info,
                    &format!(
                        "mcp-gateway: provider {}: loaded {count} keys from JWKS{}",
                        provider.name,
                        if skipped.is_empty() { String::new() } else { format!(" (skipped: {})", skipped.join("; ")) }
                    ),
                );
                Metrics::bump(vm.borrow().metrics.jwks_fetch_success);
            }
            Err(reason) => {
                let (state, _) = Root::update_state(&provider.name, |s| {
                    s.failed(now_ms, source.min_refetch);
                    true
                });
                let keeping = if state.jwks.is_some() { "keeping the last good keys" } else { "no keys loaded yet" };
                log(
                    LogLevel::Warn,
                    &format!("mcp-gateway: provider {}: JWKS fetch failed: {reason}; {keeping}", provider.name),
                );
                Metrics::bump(vm.borrow().metrics.jwks_fetch_failure);
            }
        }
        self.sync_keys(&vm);
        self.wake_waiters(&vm);
    }
}

impl RootContext for Root {
    fn on_queue_ready(&mut self, queue_id: u32) {
        if Some(queue_id) != self.release_queue {
            return;
        }
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue_id) {}
        self.release_pending = false;
        if let Some(vm) = self.vm.clone() {
            self.wake_waiters(&vm);
        }
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                log(LogLevel::Critical, "mcp-gateway: plugin configuration is empty");
                return false;
            }
            Err(status) => {
                log(LogLevel::Critical, &format!("mcp-gateway: cannot read plugin configuration: {status:?}"));
                return false;
            }
        };
        match Config::from_json(&raw, &|name| std::env::var(name).ok()) {
            Ok(config) => {
                log(
                    LogLevel::Info,
                    &format!(
                        "mcp-gateway: configured {} servers, {} roles, {} providers",
                        config.servers.len(),
                        config.policy.roles.len(),
                        config.verifier.providers.len()
                    ),
                );
                let providers = config.verifier.providers.len();
                let vm = Vm {
                    store: KeyStore::new(providers, config.cache_entries),
                    states: vec![FetchState::default(); providers],
                    state_cas: vec![None; providers],
                    config: Rc::new(config),
                    waiters: Vec::new(),
                    catalog: Catalog::default(),
                    catalog_cas: None,
                    sessions: HashMap::new(),
                    metrics: Metrics::define(),
                };
                create_session_buckets();
                let remote = vm.config.verifier.providers.iter().any(|p| p.jwks.is_some());
                self.vm = Some(Rc::new(RefCell::new(vm)));
                if remote && hostcalls::set_tick_period(TICK).is_err() {
                    log(LogLevel::Critical, "mcp-gateway: cannot set tick period");
                    return false;
                }
                if remote {
                    self.release_queue = Root::register_release_queue();
                    if self.release_queue.is_none() {
                        log(LogLevel::Warn, "mcp-gateway: no release queue; waiting requests go out once per tick");
                    }
                }
                true
            }
            Err(e) => {
                log(LogLevel::Critical, &format!("mcp-gateway: {e}"));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(vm) = self.vm.clone() {
            self.sync_keys(&vm);
            self.wake_waiters(&vm);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter { context_id, vm: self.vm.clone(), request: Rc::new(RefCell::new(Request::default())) }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Where a request is in its life.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    Head,
    AwaitKeys,
    AwaitBody,
    Forwarded,
    Replied,
}

/// One request's state, shared with the waiter list while it waits for keys.
#[derive(Default)]
struct Request {
    exchange: Option<Exchange>,
    phase: Phase,
    /// The complete body, when it arrived while the request waited for keys.
    body: Option<Vec<u8>>,
    /// How the response body is handled (set from the response headers).
    response: Option<ResponseBody>,
    /// Content type of the response.
    response_type: String,
}

/// Largest list reply buffered for filtering.
const MAX_LIST_REPLY: usize = 4 * 1024 * 1024;

/// One HTTP request.
struct Filter {
    context_id: u32,
    vm: Option<SharedVm>,
    request: Rc<RefCell<Request>>,
}

impl Context for Filter {}

fn send(request: &Rc<RefCell<Request>>, reply: Reply) -> Action {
    request.borrow_mut().phase = Phase::Replied;
    let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    if hostcalls::send_http_response(reply.status, headers, Some(&reply.body)).is_err() {
        let _ = hostcalls::reset_http_request();
    }
    Action::Pause
}

/// Last resort when the host misbehaves: refuse without a JSON-RPC body.
fn fail_closed(request: &Rc<RefCell<Request>>, what: &str) -> Action {
    log(LogLevel::Error, &format!("mcp-gateway: {what}; refusing request"));
    send(
        request,
        Reply {
            status: 500,
            headers: vec![("content-type", "application/json".to_owned())],
            body: br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"Internal error"}}"#.to_vec(),
        },
    )
}

fn apply(edits: &HeaderEdits) -> bool {
    let removed =
        edits.remove.iter().all(|name| hostcalls::remove_map_value(MapType::HttpRequestHeaders, name).is_ok());
    let set = edits
        .set
        .iter()
        .all(|(name, value)| hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)).is_ok());
    removed && set
}

/// Carries out a step. `resumed` is true when called outside the request's own
/// callbacks (from the root context), where continuing means resuming the request.
fn act(
    vm: &SharedVm,
    request: &Rc<RefCell<Request>>,
    context_id: u32,
    step: Step,
    edits: &HeaderEdits,
    resumed: bool,
) -> Action {
    match step {
        Step::Reply(reply) => send(request, reply),
        Step::Continue => {
            if !apply(edits) {
                return fail_closed(request, "cannot edit request headers");
            }
            request.borrow_mut().phase = Phase::Forwarded;
            if resumed && hostcalls::resume_http_request().is_err() {
                return fail_closed(request, "cannot resume request");
            }
            Action::Continue
        }
        Step::WaitForBody => {
            if !apply(edits) {
                return fail_closed(request, "cannot edit request headers");
            }
            let body = {
                let mut r = request.borrow_mut();
                r.phase = Phase::AwaitBody;
                r.body.take()
            };
            match body {
                // The body arrived while we waited for keys: decide on it now.
                Some(body) => {
                    let (step, edits) = decide_body(vm, request, &body);
                    act(vm, request, context_id, step, &edits, resumed)
                }
                None => Action::Pause,
            }
        }
        Step::WaitForKeys { provider, refetch } => {
            if vm.borrow().waiters.len() >= MAX_WAITERS {
                // Bounded: past this many held requests, decide now with the keys we have.
                let (step, edits) = {
                    let mut vmb = vm.borrow_mut();
                    let Vm { config, store, .. } = &mut *vmb;
                    let config = config.clone();
                    let mut r = request.borrow_mut();
                    match r.exchange.as_mut() {
                        Some(ex) => ex.decide_head(&config, store, now(), true),
                        None => return fail_closed(request, "waiting request without state"),
                    }
                };
                return act(vm, request, context_id, step, &edits, resumed);
            }
            request.borrow_mut().phase = Phase::AwaitKeys;
            let mut vmb = vm.borrow_mut();
            let since_done_ms = vmb.states.get(provider).map_or(0, |s| s.done_ms);
            let deadline = now() + vmb.config.key_wait;
            vmb.waiters.push(Waiter {
                context_id,
                provider,
                since_done_ms,
                deadline,
                refetch,
                request: request.clone(),
            });
            Action::Pause
        }
    }
}

fn decide_body(vm: &SharedVm, request: &Rc<RefCell<Request>>, body: &[u8]) -> (Step, HeaderEdits) {
    sync_catalog(vm);
    let vm = vm.borrow();
    let mut r = request.borrow_mut();
    match r.exchange.as_mut() {
        Some(ex) => {
            let now_ms = epoch_ms(now());
            let tasks = |id: &str| lookup_task(id, now_ms, vm.config.session_idle_ms);
            let step = ex.on_request_body_with(&vm.config, &vm.catalog, body, &tasks);
            (step, ex.body_edits())
        }
        None => (Step::Continue, HeaderEdits::default()),
    }
}

/// Creates every session bucket that does not exist yet, before any traffic, so later
/// updates always have a CAS to compare against (two first writes could not race).
fn create_session_buckets() {
    for table in [session::Table::Sessions, session::Table::Tasks] {
        for bucket in 0..session::BUCKETS {
            let key = session::bucket_key_of(table, bucket);
            if let Ok((None, _)) = hostcalls::get_shared_data(&key) {
                let _ = hostcalls::set_shared_data(&key, Some(&session::Bucket::default().to_bytes()), None);
            }
        }
    }
}

/// Who opened session `id` (and whether its entry is due for a refresh), from the shared
/// table; `None` when no live entry exists.
/// Parsed buckets are cached per VM, by CAS.
fn session_owner(vm: &SharedVm, id: &str, now_ms: u64) -> Option<(String, bool)> {
    let key = session::bucket_key(session::Table::Sessions, id);
    let Ok((Some(bytes), Some(cas))) = hostcalls::get_shared_data(&key) else { return None };
    let mut vmb = vm.borrow_mut();
    let idle_ms = vmb.config.session_idle_ms;
    let fresh = vmb.sessions.get(&key).is_some_and(|(known, _)| *known == cas);
    if !fresh {
        vmb.sessions.insert(key.clone(), (cas, session::Bucket::from_bytes(&bytes)));
    }
    let (_, bucket) = vmb.sessions.get(&key)?;
    bucket.get(id, now_ms, idle_ms).map(|(owner, refresh)| (owner.to_owned(), refresh))
}

/// The record of a task (tasks are looked up rarely: no per-VM cache).
fn lookup_task(id: &str, now_ms: u64, idle_ms: u64) -> Option<String> {
    let key = session::bucket_key(session::Table::Tasks, id);
    let Ok((Some(bytes), _)) = hostcalls::get_shared_data(&key) else { return None };
    session::Bucket::from_bytes(&bytes).get(id, now_ms, idle_ms).map(|(record, _)| record.to_owned())
}

/// Applies a change to the shared session table (read, modify, compare-and-swap).
fn change_session(change: &session::Change, idle_ms: u64, now_ms: u64) {
    let (id, table) = match change {
        session::Change::Open { id, .. } | session::Change::Refresh { id, .. } | session::Change::Close { id } => {
            (id, session::Table::Sessions)
        }
        session::Change::Task { id, .. } => (id, session::Table::Tasks),
    };
    let key = session::bucket_key(table, id);
    for _ in 0..8 {
        let Ok((bytes, cas)) = hostcalls::get_shared_data(&key) else { break };
        let mut bucket = bytes.map(|b| session::Bucket::from_bytes(&b)).unwrap_or_default();
        match change {
            session::Change::Open { owner, .. } | session::Change::Refresh { owner, .. } => {
                bucket.insert(id, owner, now_ms, idle_ms)
            }
            session::Change::Task { record, .. } => bucket.insert(id, record, now_ms, idle_ms),
            session::Change::Close { .. } => {
                if !bucket.remove(id) {
                    return;
                }
            }
        }
        if hostcalls::set_shared_data(&key, Some(&bucket.to_bytes()), cas).is_ok() {
            return;
        }
    }
    log(LogLevel::Warn, "mcp-gateway: cannot record an MCP session; its next request will be refused");
}

const CATALOG_KEY: &str = "mcp_gateway/catalog";

/// Takes in tool operations other workers learned.
fn sync_catalog(vm: &SharedVm) {
    let Ok((Some(bytes), cas)) = hostcalls::get_shared_data(CATALOG_KEY) else { return };
    let mut vm = vm.borrow_mut();
    if cas.is_some() && cas == vm.catalog_cas {
        return;
    }
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        vm.catalog.merge_json(&json);
    }
    vm.catalog_cas = cas;
}

/// Shares what this worker learned (merging with what others stored meanwhile).
fn publish_catalog(vm: &SharedVm) {
    for _ in 0..4 {
        sync_catalog(vm);
        let (bytes, cas) = {
            let vm = vm.borrow();
            (serde_json::to_vec(&vm.catalog.to_json()).unwrap_or_default(), vm.catalog_cas)
        };
        if hostcalls::set_shared_data(CATALOG_KEY, Some(&bytes), cas).is_ok() {
            // Our own write bumps the CAS; read it back so we do not re-merge ourselves.
            if let Ok((_, cas)) = hostcalls::get_shared_data(CATALOG_KEY) {
                vm.borrow_mut().catalog_cas = cas;
            }
            return;
        }
    }
}

impl Filter {
    /// One chunk of an SSE reply: complete events go on at once (filtered), the event
    /// still arriving is held by the exchange, bounded.
    fn filter_events(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(vm) = self.vm.clone() else { return Action::Continue };
        let chunk = match hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size) {
            Ok(chunk) => chunk.unwrap_or_default(),
            Err(_) => {
                let _ = hostcalls::reset_http_response();
                return Action::Continue;
            }
        };
        let filtered = self
            .read_response(&vm, |ex, config, catalog| ex.on_response_events(config, catalog, &chunk, end_of_stream))
            .unwrap_or_else(|| Ok(Vec::new()));
        match filtered {
            Ok(out) => {
                if hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &out).is_err() {
                    let _ = hostcalls::reset_http_response();
                }
            }
            Err(e) => {
                log(LogLevel::Warn, &format!("mcp-gateway: SSE event over {} bytes; ending the stream", e.limit));
                self.request.borrow_mut().response = Some(ResponseBody::Drop);
                let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, b"");
                let _ = hostcalls::reset_http_response();
            }
        }
        Action::Continue
    }

    /// Runs `read` on the exchange with the worker's catalog, then shares what the reply
    /// taught (tool operations) and stores the task it created, before the reply reaches
    /// the client. `None` when the request has no exchange.
    fn read_response<T>(
        &self,
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
            publish_catalog(vm);
        }
        if let Some(change) = task {
            change_session(&change, vm.borrow().config.session_idle_ms, epoch_ms(now()));
        }
        Some(out)
    }

    /// A JSON list reply (or a task-augmented call's reply): buffered whole (bounded),
    /// then rewritten or read.
    fn filter_list_reply(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if body_size > MAX_LIST_REPLY {
            log(LogLevel::Warn, "mcp-gateway: list reply too large to filter; dropping it");
            let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, b"");
            self.request.borrow_mut().response = Some(ResponseBody::Drop);
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let Some(vm) = self.vm.clone() else { return Action::Continue };
        let content_type = self.request.borrow().response_type.clone();
        let body = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
        let rewritten = self
            .read_response(&vm, |ex, config, catalog| ex.on_response_body(config, catalog, &content_type, &body))
            .flatten();
        // A reply that cannot be read is not passed on (fail closed).
        let replacement = rewritten.unwrap_or_else(|| {
            log(LogLevel::Warn, "mcp-gateway: list reply not understood; dropping it");
            Vec::new()
        });
        if hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &replacement).is_err() {
            let _ = hostcalls::reset_http_response();
        }
        Action::Continue
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(vm) = self.vm.clone() else {
            return fail_closed(&self.request, "no configuration");
        };
        // Bytes, not strings: the SDK's string variant panics on non-UTF-8 values.
        let headers: Vec<(String, String)> = match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
            Ok(h) => h.into_iter().map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned())).collect(),
            Err(_) => return fail_closed(&self.request, "cannot read request headers"),
        };
        let started = now();
        let mut exchange = Exchange::new(started);
        let session_id = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("mcp-session-id")).map(|(_, v)| v.trim());
        if let Some(id) = session_id {
            exchange.set_session_owner(session_owner(&vm, id, epoch_ms(started)));
        }
        let (step, edits) = {
            let mut vmb = vm.borrow_mut();
            let Vm { config, store, .. } = &mut *vmb;
            let config = config.clone();
            exchange.on_request_headers(&config, store, Head::new(headers), end_of_stream, started)
        };
        self.request.borrow_mut().exchange = Some(exchange);
        act(&vm, &self.request, self.context_id, step, &edits, false)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let phase = self.request.borrow().phase;
        match phase {
            Phase::Replied => return Action::Pause,
            Phase::Forwarded => return Action::Continue,
            Phase::Head | Phase::AwaitKeys | Phase::AwaitBody => {}
        }
        let Some(vm) = self.vm.clone() else {
            return fail_closed(&self.request, "no configuration");
        };
        let config = vm.borrow().config.clone();
        let too_large =
            self.request.borrow_mut().exchange.as_mut().and_then(|ex| ex.on_body_progress(&config, body_size));
        if let Some(reply) = too_large {
            return send(&self.request, reply);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size) {
            Ok(body) => body.unwrap_or_default(),
            Err(_) => return fail_closed(&self.request, "cannot read request body"),
        };
        if phase != Phase::AwaitBody {
            // Still waiting for keys: keep the body until the head is decided.
            self.request.borrow_mut().body = Some(body);
            return Action::Pause;
        }
        let (step, edits) = decide_body(&vm, &self.request, &body);
        act(&vm, &self.request, self.context_id, step, &edits, false)
    }

    /// MCP clients never send request trailers; a body that ends in trailers never
    /// reaches `end_of_stream` in the body callback, so refuse it instead of waiting.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let phase = self.request.borrow().phase;
        match phase {
            Phase::Replied => Action::Pause,
            Phase::Forwarded => Action::Continue,
            _ => {
                let reply = self.request.borrow_mut().exchange.as_mut().and_then(Exchange::on_request_trailers);
                match reply {
                    Some(reply) => send(&self.request, reply),
                    None => Action::Continue,
                }
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let needed = self.request.borrow().exchange.as_ref().map(Exchange::response_headers_needed);
        let Some((inspect, track_session)) = needed else { return Action::Continue };
        if !inspect && !track_session {
            return Action::Continue;
        }
        let header = |name: &str| {
            hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
                .ok()
                .flatten()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
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
        let (handling, change) = {
            let mut r = self.request.borrow_mut();
            match r.exchange.as_mut() {
                Some(ex) => (
                    ex.on_response_headers(&content_type, encoding.as_deref()),
                    ex.session_change(status, session_id.as_deref()),
                ),
                None => (ResponseBody::Untouched, None),
            }
        };
        // Recorded before the reply reaches the client, so its next request finds it.
        if let (Some(change), Some(vm)) = (change, &self.vm) {
            let idle_ms = vm.borrow().config.session_idle_ms;
            change_session(&change, idle_ms, epoch_ms(now()));
        }
        if handling != ResponseBody::Untouched {
            // The body may change length.
            let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, "content-length");
        }
        let mut r = self.request.borrow_mut();
        r.response = Some(handling);
        r.response_type = content_type;
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let handling = self.request.borrow().response.unwrap_or(ResponseBody::Untouched);
        match handling {
            ResponseBody::Untouched => Action::Continue,
            ResponseBody::Drop => {
                if hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, b"").is_err() {
                    let _ = hostcalls::reset_http_response();
                }
                Action::Continue
            }
            ResponseBody::Events => self.filter_events(body_size, end_of_stream),
            ResponseBody::BufferJson => self.filter_list_reply(body_size, end_of_stream),
        }
    }

    fn on_log(&mut self) {
        if let Some(vm) = &self.vm {
            // A request that ends while waiting must not be resumed later.
            vm.borrow_mut().waiters.retain(|w| w.context_id != self.context_id);
        }
        let Some(exchange) = self.request.borrow_mut().exchange.take() else {
            return;
        };
        let status = hostcalls::get_property(vec!["response", "code"])
            .ok()
            .flatten()
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_le_bytes)
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(0);
        let client_ip = hostcalls::get_property(vec!["source", "address"])
            .ok()
            .flatten()
            .map(|b| strip_port(&String::from_utf8_lossy(&b)).to_owned());
        let record = exchange.finish(status, now(), client_ip);
        if let Some(vm) = &self.vm {
            let metrics = &vm.borrow().metrics;
            let allowed = record.decision == Some(crate::audit::Outcome::Allow);
            Metrics::bump(if allowed { metrics.allowed } else { metrics.denied });
        }
        log(LogLevel::Info, &record.to_line());
    }
}

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
