//! The proxy-wasm adapter: moves data between Envoy and
//! [`Exchange`](crate::gateway::Exchange), decides nothing
//! about a request itself.
//!
//! Envoy calls the proxy-wasm hooks in `wasm.rs`; each is a line of glue into the state
//! machine of this worker: [`Root`] (configuration, JWKS lifecycle, waiting requests,
//! tick; `root.rs`) and one [`Filter`] per request (request and response hooks;
//! `http.rs`). They reach Envoy only through the [`Host`] trait, so the native tests
//! drive them through a mock host (`mock.rs`, `tests.rs`). What workers share through
//! Envoy's shared data (JWKS state, sessions, tool catalog) is in `shared.rs`.
//!
//! Host call errors are handled, never unwrapped: a panic traps the VM and takes every
//! request on the worker with it. Where a host call fails mid-request the request is
//! refused (fail closed).

pub mod host;
mod http;
mod root;
mod shared;

#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "wasm32")]
mod wasm;

pub use http::Filter;
pub use root::Root;

use crate::config::Config;
use crate::jwks::FetchState;
use crate::jwt::KeyStore;
use crate::rbac::Catalog;
use crate::session;
use host::Host;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

/// How often the root context looks at shared keys and waiting requests.
const TICK: Duration = Duration::from_millis(100);

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Most requests one worker holds while waiting for keys.
const MAX_WAITERS: usize = 1024;

/// Largest list reply buffered for filtering.
const MAX_LIST_REPLY: usize = 4 * 1024 * 1024;

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
/// out from a fresh call (see `Root::release_queue`).
const RELEASE_BATCH: usize = 32;

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(crate::time::millis).unwrap_or(0)
}

/// Counters in Envoy's stats (prefixed `wasmcustom.` by Envoy).
struct Metrics {
    jwks_fetch_success: Option<u32>,
    jwks_fetch_failure: Option<u32>,
    allowed: Option<u32>,
    denied: Option<u32>,
    audit_sent: Option<u32>,
    audit_acknowledged: Option<u32>,
    audit_retried: Option<u32>,
    audit_dropped: Option<u32>,
    /// Microseconds in the filter's hooks per request.
    filter_time: Option<u32>,
    /// Counters whose names carry labels (see [`crate::stats`]), defined on first use.
    /// Bounded: every label comes from a fixed set.
    labelled: std::collections::HashMap<Labels, Option<u32>>,
}

/// What a labelled counter counts (its name is built from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Labels {
    /// Requests by decision, method label and server (its index in the configuration).
    Request {
        decision: &'static str,
        method: &'static str,
        server: Option<usize>,
    },
    AuthFailure(&'static str),
}

impl Metrics {
    fn define(host: &impl Host) -> Metrics {
        Metrics {
            jwks_fetch_success: host.define_counter("mcp_gateway.jwks_fetch_success"),
            jwks_fetch_failure: host.define_counter("mcp_gateway.jwks_fetch_failure"),
            allowed: host.define_counter("mcp_gateway.requests_allowed"),
            denied: host.define_counter("mcp_gateway.requests_denied"),
            audit_sent: host.define_counter("mcp_gateway.audit_records_sent"),
            audit_acknowledged: host.define_counter("mcp_gateway.audit_records_acknowledged"),
            audit_retried: host.define_counter("mcp_gateway.audit_records_retried"),
            audit_dropped: host.define_counter("mcp_gateway.audit_records_dropped"),
            filter_time: host.define_histogram(crate::stats::FILTER_TIME),
            labelled: std::collections::HashMap::new(),
        }
    }

    /// Counts a finished request by decision, method and server, and an authentication
    /// failure by its reason. The counters are found without building their names; a
    /// name is formatted once, when its counter is defined.
    fn count_request(
        &mut self,
        host: &impl Host,
        record: &crate::audit::AuditRecord,
        servers: &[crate::config::Server],
    ) {
        use crate::stats;
        let decision = stats::decision_label(record.decision);
        let method = stats::method_label(record.method.as_deref());
        let server = record.server.as_deref().and_then(|name| servers.iter().position(|s| s.name == name));
        let key = Labels::Request { decision, method, server };
        let id = self.labelled_counter(host, key, || {
            stats::requests_name(decision, method, server.and_then(|i| servers.get(i)).map(|s| s.name.as_str()))
        });
        Metrics::bump(host, id);
        if let Some(reason) = record.auth_failure {
            let id = self.labelled_counter(host, Labels::AuthFailure(reason), || stats::auth_failures_name(reason));
            Metrics::bump(host, id);
        }
    }

    fn labelled_counter(&mut self, host: &impl Host, key: Labels, name: impl FnOnce() -> String) -> Option<u32> {
        if let Some(id) = self.labelled.get(&key) {
            return *id;
        }
        let id = host.define_counter(&name());
        self.labelled.insert(key, id);
        id
    }

    /// Adds what changed between two tallies of the audit outbox to the counters.
    fn audit_delta(&self, host: &impl Host, before: crate::outbox::Tally, after: crate::outbox::Tally) {
        for (metric, delta) in [
            (self.audit_sent, after.sent - before.sent),
            (self.audit_acknowledged, after.acknowledged - before.acknowledged),
            (self.audit_retried, after.retried - before.retried),
            (self.audit_dropped, after.dropped - before.dropped),
        ] {
            if let (Some(id), true) = (metric, delta > 0) {
                host.add(id, delta);
            }
        }
    }

    fn bump(host: &impl Host, metric: Option<u32>) {
        if let Some(id) = metric {
            host.increment(id);
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
    request: Rc<RefCell<http::Request>>,
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
    /// CAS of the catalog's stamp last seen.
    catalog_stamp: Option<u32>,
    /// Session buckets as last parsed, with their CAS (re-parsed only when it changed).
    sessions: HashMap<String, (u32, session::Bucket)>,
    metrics: Metrics,
    /// Audit records waiting for the sidecar (when one is configured).
    outbox: Option<crate::outbox::Outbox>,
    record_ids: RecordIds,
}

/// Unique audit record ids: a per-VM random prefix and a counter. The sidecar stores a
/// record once per id, so a batch resent after a lost acknowledgement is not duplicated.
struct RecordIds {
    prefix: String,
    next: u64,
}

impl RecordIds {
    fn new() -> RecordIds {
        RecordIds { prefix: format!("{:016x}", crate::headers::random_u64()), next: 0 }
    }

    fn next(&mut self) -> String {
        self.next += 1;
        format!("{}-{}", self.prefix, self.next)
    }
}

type SharedVm = Rc<RefCell<Vm>>;
