//! The root context: compiles the configuration, runs the JWKS lifecycle (coordinated
//! across VMs through shared data, see [`crate::jwks`]), holds the requests waiting for
//! keys and releases them on its tick, a batch per call into the VM (see
//! [`RELEASE_BATCH`]), and sends audit batches to the sidecar.

use super::host::{Buffer, Host, Level, Map};
use super::http::{act, decide_finally, Filter, Phase};
use super::{epoch_ms, shared, Metrics, RecordIds, SharedVm, Vm, MAX_JWKS_BYTES, RELEASE_BATCH, TICK};
use crate::config::Config;
use crate::jwks::{self, FetchState};
use crate::jwt::{KeySet, KeyStore};
use crate::rbac::Catalog;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Holds the compiled configuration and runs the key lifecycle for this worker.
pub struct Root {
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
    pub fn new(context_id: u32) -> Root {
        Root { context_id, vm: None, fetches: HashMap::new(), release_queue: None, release_pending: false }
    }

    /// Reads and compiles the plugin configuration; false fails the plugin.
    pub fn on_configure(&mut self, host: &impl Host) -> bool {
        let raw = match host.buffer(Buffer::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                host.log(Level::Critical, "mcp-gateway: plugin configuration is empty");
                return false;
            }
            Err(status) => {
                host.log(Level::Critical, &format!("mcp-gateway: cannot read plugin configuration: {status:?}"));
                return false;
            }
        };
        let config = match Config::from_json(&raw, &|name| std::env::var(name).ok()) {
            Ok(config) => config,
            Err(e) => {
                host.log(Level::Critical, &format!("mcp-gateway: {e}"));
                return false;
            }
        };
        host.log(
            Level::Info,
            &format!(
                "mcp-gateway: configured {} servers, {} roles, {} providers",
                config.servers.len(),
                config.policy.roles.len(),
                config.verifier.providers.len()
            ),
        );
        let providers = config.verifier.providers.len();
        let remote = config.verifier.providers.iter().any(|p| p.jwks.is_some());
        let outbox = config
            .audit_sidecar
            .as_ref()
            .map(|s| crate::outbox::Outbox::new(s.batch_records, crate::time::millis(s.flush), s.max_buffered));
        let vm = Vm {
            outbox,
            record_ids: RecordIds::new(),
            store: KeyStore::new(providers, config.cache_entries),
            states: vec![FetchState::default(); providers],
            state_cas: vec![None; providers],
            config: Rc::new(config),
            waiters: Vec::new(),
            catalog: Catalog::default(),
            catalog_cas: None,
            catalog_stamp: None,
            sessions: HashMap::new(),
            metrics: Metrics::define(host),
        };
        shared::create_entries(host, &vm.config);
        self.vm = Some(Rc::new(RefCell::new(vm)));
        if remote || self.vm.as_ref().is_some_and(|vm| vm.borrow().outbox.is_some()) {
            if host.set_tick(TICK).is_err() {
                host.log(Level::Critical, "mcp-gateway: cannot set tick period");
                return false;
            }
            self.release_queue = register_release_queue(host);
            if self.release_queue.is_none() {
                host.log(Level::Warn, "mcp-gateway: no release queue; waiting requests go out once per tick");
            }
        }
        true
    }

    pub fn create_http_context(&self, context_id: u32) -> Filter {
        Filter::new(context_id, self.vm.clone())
    }

    pub fn on_tick(&mut self, host: &impl Host) {
        if let Some(vm) = self.vm.clone() {
            send_audit(host, &vm);
            self.sync_keys(host, &vm);
            self.wake_waiters(host, &vm);
        }
    }

    pub fn on_queue_ready(&mut self, host: &impl Host, queue_id: u32) {
        if Some(queue_id) != self.release_queue {
            return;
        }
        while let Ok(Some(_)) = host.dequeue(queue_id) {}
        self.release_pending = false;
        if let Some(vm) = self.vm.clone() {
            self.wake_waiters(host, &vm);
        }
    }

    /// A JWKS fetch ended: Envoy passes no headers when it failed or timed out.
    pub fn on_http_call_response(&mut self, host: &impl Host, token_id: u32, body_size: usize) {
        if let Some(vm) = &self.vm {
            if audit_answered(host, vm, token_id) {
                // A backlog goes on at once, not a tick later.
                send_audit(host, vm);
                return;
            }
        }
        let (Some(index), Some(vm)) = (self.fetches.remove(&token_id), self.vm.clone()) else {
            return;
        };
        let config = vm.borrow().config.clone();
        let Some(provider) = config.verifier.providers.get(index) else {
            return;
        };
        let Some(source) = &provider.jwks else { return };
        let now_ms = epoch_ms(host.now());
        let headers: Vec<(String, String)> = host
            .map(Map::CallResponseHeaders)
            .unwrap_or_default()
            .into_iter()
            .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let status = header(":status").unwrap_or("none").to_owned();
        let body =
            host.buffer(Buffer::CallResponseBody, 0, body_size.min(MAX_JWKS_BYTES)).ok().flatten().unwrap_or_default();
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
                shared::update_state(host, &provider.name, |s| {
                    s.succeeded(now_ms, doc.clone(), max_age, source.refresh, source.min_refetch);
                    true
                });
                host.log(
                    Level::Info,
                    &format!(
                        "mcp-gateway: provider {}: loaded {count} keys from JWKS{}",
                        provider.name,
                        if skipped.is_empty() { String::new() } else { format!(" (skipped: {})", skipped.join("; ")) }
                    ),
                );
                Metrics::bump(host, vm.borrow().metrics.jwks_fetch_success);
            }
            Err(reason) => {
                let (state, _) = shared::update_state(host, &provider.name, |s| {
                    s.failed(now_ms, source.min_refetch);
                    true
                });
                let keeping = if state.jwks.is_some() { "keeping the last good keys" } else { "no keys loaded yet" };
                host.log(
                    Level::Warn,
                    &format!("mcp-gateway: provider {}: JWKS fetch failed: {reason}; {keeping}", provider.name),
                );
                Metrics::bump(host, vm.borrow().metrics.jwks_fetch_failure);
            }
        }
        self.sync_keys(host, &vm);
        self.wake_waiters(host, &vm);
    }

    /// Installs keys another VM (or this one) stored, and starts fetches that are due.
    fn sync_keys(&mut self, host: &impl Host, vm: &SharedVm) {
        let now_ms = epoch_ms(host.now());
        let config = vm.borrow().config.clone();
        for (index, provider) in config.verifier.providers.iter().enumerate() {
            let Some(source) = &provider.jwks else {
                continue;
            };
            // Parse the shared state only when another VM changed it since the last tick.
            let known_cas = vm.borrow().state_cas.get(index).copied().flatten();
            let (state, cas) = match host.shared(&jwks::shared_key(&provider.name)) {
                Ok((Some(_), Some(cas))) if Some(cas) == known_cas => {
                    (vm.borrow().states.get(index).cloned().unwrap_or_default(), Some(cas))
                }
                other => shared::parse_state(other),
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
                            Err(e) => host.log(
                                Level::Error,
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
            let (_, claimed) = shared::update_state(host, &provider.name, |s| {
                let go = s.wants_fetch(now_ms, unknown_kid) && s.may_start(now_ms, source.min_refetch, source.timeout);
                if go {
                    s.start(now_ms);
                }
                go
            });
            if !claimed {
                continue;
            }
            let headers = [
                (":method", "GET"),
                (":path", source.path.as_str()),
                (":authority", source.authority.as_str()),
                ("accept", "application/json"),
            ];
            match host.dispatch(&source.cluster, &headers, None, source.timeout) {
                Ok(token) => {
                    self.fetches.insert(token, index);
                }
                Err(status) => {
                    host.log(
                        Level::Warn,
                        &format!(
                            "mcp-gateway: provider {}: cannot fetch JWKS from cluster {:?}: {status:?}",
                            provider.name, source.cluster
                        ),
                    );
                    shared::update_state(host, &provider.name, |s| {
                        s.failed(now_ms, source.min_refetch);
                        true
                    });
                    Metrics::bump(host, vm.borrow().metrics.jwks_fetch_failure);
                }
            }
        }
        let _ = host.enter(self.context_id);
    }

    /// Resumes waiting requests whose keys changed, whose fetch ended, whose wait ran
    /// out, or whose unknown `kid` cannot be refetched now: the first [`RELEASE_BATCH`]
    /// of them, oldest first. Asks for another call into the VM when more are ready.
    fn wake_waiters(&mut self, host: &impl Host, vm: &SharedVm) {
        let now = host.now();
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
                        let next_allowed = state.attempt_ms.saturating_add(crate::time::millis(s.min_refetch));
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
            if host.enter(w.context_id).is_err() {
                continue; // the request is gone
            }
            let Some((step, edits)) = decide_finally(vm, &w.request, now) else { continue };
            act(host, vm, &w.request, w.context_id, step, &edits, true);
            released += 1;
        }
        vm.borrow_mut().waiters.extend(still);
        let _ = host.enter(self.context_id);
        if more {
            self.release_more(host);
        }
    }

    /// Gets a fresh call into the VM soon, through the release queue, for the next batch.
    fn release_more(&mut self, host: &impl Host) {
        let Some(queue) = self.release_queue else { return };
        if !self.release_pending {
            self.release_pending = host.enqueue(queue, b"release").is_ok();
        }
    }
}

/// Registers this VM's release queue. Queues are shared by every VM of the plugin, by
/// name, so the name is random (std's `RandomState` draws from the host's RNG).
fn register_release_queue(host: &impl Host) -> Option<u32> {
    use std::hash::BuildHasher;
    let name = format!("mcp_gateway/release/{:016x}", std::hash::RandomState::new().hash_one(0_u8));
    host.register_queue(&name)
}

/// Sends the next audit batch to the sidecar, if one is due.
fn send_audit(host: &impl Host, vm: &SharedVm) {
    let mut vmb = vm.borrow_mut();
    let Vm { config, outbox, metrics, .. } = &mut *vmb;
    let (Some(outbox), Some(sidecar)) = (outbox.as_mut(), config.audit_sidecar.as_ref()) else {
        return;
    };
    let now_ms = epoch_ms(host.now());
    let Some(body) = outbox.next_batch(now_ms) else {
        return;
    };
    let headers = [
        (":method", "POST"),
        (":path", sidecar.path.as_str()),
        (":authority", sidecar.authority.as_str()),
        ("content-type", "application/json"),
        (crate::headers::SIDECAR_SECRET, sidecar.secret.as_str()),
    ];
    let before = outbox.tally;
    match host.dispatch(&sidecar.cluster, &headers, Some(body.as_bytes()), sidecar.timeout) {
        Ok(token) => outbox.sent(token),
        Err(status) => {
            outbox.failed(now_ms);
            host.log(
                Level::Warn,
                &format!("mcp-gateway: cannot send audit records to cluster {:?}: {status:?}", sidecar.cluster),
            );
        }
    }
    metrics.audit_delta(host, before, outbox.tally);
}

/// The sidecar answered an audit batch (true), or `token` is not one.
fn audit_answered(host: &impl Host, vm: &SharedVm, token: u32) -> bool {
    let mut vmb = vm.borrow_mut();
    let Vm { outbox, metrics, .. } = &mut *vmb;
    let Some(outbox) = outbox.as_mut().filter(|o| o.owns(token)) else {
        return false;
    };
    let status = host
        .map(Map::CallResponseHeaders)
        .unwrap_or_default()
        .into_iter()
        .find(|(n, _)| n == ":status")
        .map(|(_, v)| String::from_utf8_lossy(&v).into_owned());
    let before = outbox.tally;
    let ok = status.as_deref() == Some("200");
    outbox.answered(epoch_ms(host.now()), ok);
    if !ok {
        host.log(
            Level::Warn,
            &format!(
                "mcp-gateway: the sidecar did not commit an audit batch (status {}); retrying",
                status.as_deref().unwrap_or("none")
            ),
        );
    }
    metrics.audit_delta(host, before, outbox.tally);
    true
}
