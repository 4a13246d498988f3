//! What the workers share through Envoy's shared data: each provider's JWKS fetch state,
//! the session and task tables, and the tool catalog. Every write is a read, a change
//! and a compare-and-swap, retried when another VM wrote first.

use super::host::{Host, Level};
use super::{SharedVm, Vm};
use crate::config::Config;
use crate::jwks::{self, FetchState};
use crate::rbac::Catalog;
use crate::session;

/// A provider's fetch state as stored, and its CAS.
pub(super) fn read_state(host: &impl Host, provider: &str) -> (FetchState, Option<u32>) {
    parse_state(host.shared(&jwks::shared_key(provider)))
}

pub(super) fn parse_state(
    read: Result<(Option<Vec<u8>>, Option<u32>), super::host::HostError>,
) -> (FetchState, Option<u32>) {
    match read {
        Ok((Some(bytes), cas)) => (serde_json::from_slice(&bytes).unwrap_or_default(), cas),
        Ok((None, cas)) => (FetchState::default(), cas),
        Err(_) => (FetchState::default(), None),
    }
}

/// Read-modify-write of a provider's shared state; `change` returns false to skip the
/// write. Returns the state written (or read) and whether the write happened.
pub(super) fn update_state(
    host: &impl Host,
    provider: &str,
    change: impl Fn(&mut FetchState) -> bool,
) -> (FetchState, bool) {
    for _ in 0..4 {
        let (mut state, cas) = read_state(host, provider);
        if !change(&mut state) {
            return (state, false);
        }
        let bytes = serde_json::to_vec(&state).unwrap_or_default();
        match host.set_shared(&jwks::shared_key(provider), &bytes, cas) {
            Ok(()) => return (state, true),
            Err(_) => continue, // another VM wrote first: read again
        }
    }
    (read_state(host, provider).0, false)
}

/// Creates `key` with `initial` unless it exists. Done at configure time for every
/// entry workers update, so each later write has a CAS to compare against: without one
/// a write is unconditional, and two workers' first writes could overwrite each other.
fn create(host: &impl Host, key: &str, initial: &[u8]) {
    if let Ok((None, _)) = host.shared(key) {
        let _ = host.set_shared(key, initial, None);
    }
}

/// Creates the shared entries of this configuration: each remote provider's fetch
/// state, the session and task buckets, the tool catalog.
pub(super) fn create_entries(host: &impl Host, config: &Config) {
    let state = serde_json::to_vec(&FetchState::default()).unwrap_or_default();
    for provider in config.verifier.providers.iter().filter(|p| p.jwks.is_some()) {
        create(host, &jwks::shared_key(&provider.name), &state);
    }
    let empty = session::Bucket::default().to_bytes();
    for table in [session::Table::Sessions, session::Table::Tasks] {
        for bucket in 0..session::BUCKETS {
            create(host, &session::bucket_key_of(table, bucket), &empty);
        }
    }
    create(host, CATALOG_KEY, &serde_json::to_vec(&Catalog::default().to_json()).unwrap_or_default());
    create(host, CATALOG_STAMP_KEY, b"");
}

/// Who opened session `id` (and whether its entry is due for a refresh), from the shared
/// table; `None` when no live entry exists. Parsed buckets are cached per VM, by CAS.
pub(super) fn session_owner(host: &impl Host, vm: &SharedVm, id: &str, now_ms: u64) -> Option<(String, bool)> {
    let key = session::bucket_key(session::Table::Sessions, id);
    let Ok((Some(bytes), Some(cas))) = host.shared(&key) else { return None };
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
pub(super) fn lookup_task(host: &impl Host, id: &str, now_ms: u64, idle_ms: u64) -> Option<String> {
    let key = session::bucket_key(session::Table::Tasks, id);
    let Ok((Some(bytes), _)) = host.shared(&key) else { return None };
    session::Bucket::from_bytes(&bytes).get(id, now_ms, idle_ms).map(|(record, _)| record.to_owned())
}

/// Applies a change to the shared session table (read, modify, compare-and-swap).
pub(super) fn change_session(host: &impl Host, change: &session::Change, idle_ms: u64, now_ms: u64) {
    let (id, table) = match change {
        session::Change::Open { id, .. } | session::Change::Refresh { id, .. } | session::Change::Close { id } => {
            (id, session::Table::Sessions)
        }
        session::Change::Task { id, .. } => (id, session::Table::Tasks),
    };
    let key = session::bucket_key(table, id);
    for _ in 0..8 {
        let Ok((bytes, cas)) = host.shared(&key) else { break };
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
        if host.set_shared(&key, &bucket.to_bytes(), cas).is_ok() {
            return;
        }
    }
    host.log(Level::Warn, "mcp-gateway: cannot record an MCP session; its next request will be refused");
}

pub(super) const CATALOG_KEY: &str = "mcp_gateway/catalog";

/// Bumped (its CAS) after each publication of the catalog: requests compare its CAS, a
/// few bytes, instead of copying the whole catalog into the VM to compare the catalog's.
pub(super) const CATALOG_STAMP_KEY: &str = "mcp_gateway/catalog/stamp";

/// Takes in tool operations other workers learned, if any published since the last look.
pub(super) fn refresh_catalog(host: &impl Host, vm: &SharedVm) {
    let Ok((_, stamp)) = host.shared(CATALOG_STAMP_KEY) else { return };
    if stamp.is_some() && stamp == vm.borrow().catalog_stamp {
        return;
    }
    vm.borrow_mut().catalog_stamp = stamp;
    sync_catalog(host, vm);
}

/// Merges the shared catalog (unless it is the one last merged).
fn sync_catalog(host: &impl Host, vm: &SharedVm) {
    let Ok((Some(bytes), cas)) = host.shared(CATALOG_KEY) else { return };
    let mut vm = vm.borrow_mut();
    if cas.is_some() && cas == vm.catalog_cas {
        return;
    }
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        vm.catalog.merge_json(&json);
    }
    vm.catalog_cas = cas;
}

/// Shares what this worker learned (merging with what others stored meanwhile), then
/// bumps the stamp. The stamp this worker last saw stays as it was: another worker may
/// have published between this write and the bump, and its tools are merged on the
/// next request.
pub(super) fn publish_catalog(host: &impl Host, vm: &SharedVm) {
    for _ in 0..4 {
        sync_catalog(host, vm);
        let (bytes, cas) = {
            let vm: &Vm = &vm.borrow();
            (serde_json::to_vec(&vm.catalog.to_json()).unwrap_or_default(), vm.catalog_cas)
        };
        if host.set_shared(CATALOG_KEY, &bytes, cas).is_ok() {
            // Our own write bumps the CAS; read it back so we do not re-merge ourselves.
            if let Ok((_, cas)) = host.shared(CATALOG_KEY) {
                vm.borrow_mut().catalog_cas = cas;
            }
            let _ = host.set_shared(CATALOG_STAMP_KEY, b"", None);
            return;
        }
    }
}
