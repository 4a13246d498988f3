//! The adapter's rules, driven through the mock host: waiting for keys, the JWKS
//! lifecycle, list-reply buffering, what workers share, and what happens when a host
//! call fails.

use super::host::{Buffer, Flow, Host, Level, Map};
use super::mock::{Call, MockHost};
use super::{Filter, Root, MAX_LIST_REPLY, MAX_WAITERS, RELEASE_BATCH};
use crate::jwks::{self, FetchState};
use crate::rbac::Catalog;
use crate::session;
use mcpgw::token::{self, TokenRequest};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

/// A signing key and the JWKS that publishes it.
struct Issuer {
    signing: String,
    jwks: String,
}

impl Issuer {
    fn new() -> Issuer {
        let dir = tempfile::tempdir().unwrap();
        let files = token::keygen(dir.path()).unwrap();
        let signing = std::fs::read_to_string(files.signing_key).unwrap();
        let public: Value = serde_json::from_str(&token::public_jwk(&signing).unwrap()).unwrap();
        Issuer { signing, jwks: json!({ "keys": [public] }).to_string() }
    }

    fn token(&self, sub: &str, roles: &[&str]) -> String {
        token::mint(&self.signing, &TokenRequest::new(sub, roles)).unwrap()
    }
}

/// Keys fetched through the `idp` cluster.
fn remote_config() -> Value {
    json!({
        "servers": [{"name": "github", "path_prefix": "/mcp/github"}],
        "jwt": {"key_wait_ms": 3000, "providers": [{
            "name": "idp", "issuer": token::DEFAULT_ISSUER, "audiences": [token::DEFAULT_AUDIENCE],
            "jwks": {"cluster": "idp", "path": "/jwks", "min_refetch_secs": 30, "timeout_ms": 2000}
        }]},
        "rbac": {"roles": {"developer": {"servers": ["github"], "tools": ["get_*", "list_*"]}}}
    })
}

/// Keys given in the configuration.
fn inline_config(issuer: &Issuer) -> Value {
    let mut config = remote_config();
    config["jwt"]["providers"][0]["jwks_inline"] = serde_json::from_str(&issuer.jwks).unwrap();
    config["jwt"]["providers"][0].as_object_mut().unwrap().remove("jwks");
    config
}

const ROOT: u32 = 1;

fn configure(host: &MockHost, id: u32, config: &Value) -> Root {
    host.set_buffer_of(id, Buffer::PluginConfiguration, config.to_string().as_bytes());
    host.enter(id).unwrap();
    let mut root = Root::new(id);
    assert!(root.on_configure(host), "{:?}", host.logs(Level::Critical));
    root
}

fn tick(host: &MockHost, root: &mut Root, id: u32) {
    host.enter(id).unwrap();
    root.on_tick(host);
}

/// What `pick` finds among the calls recorded so far.
fn picked<T>(host: &MockHost, pick: impl Fn(&Call) -> Option<T>) -> Vec<T> {
    host.calls.borrow().iter().filter_map(pick).collect()
}

/// The tokens of the fetches dispatched so far.
fn dispatched(host: &MockHost) -> Vec<u32> {
    picked(host, |c| match c {
        Call::Dispatch { token, .. } => Some(*token),
        _ => None,
    })
}

/// Envoy delivers the reply to a dispatched call; no status means it failed or timed out.
fn answer(host: &MockHost, root: &mut Root, id: u32, token: u32, status: Option<&str>, body: &str) {
    let headers: Vec<(&str, &str)> = status.map(|s| vec![(":status", s)]).unwrap_or_default();
    host.set_map_of(id, Map::CallResponseHeaders, &headers);
    host.set_buffer_of(id, Buffer::CallResponseBody, body.as_bytes());
    host.enter(id).unwrap();
    root.on_http_call_response(host, token, body.len());
}

fn call_body(tool: &str) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": {}}})
        .to_string()
        .into_bytes()
}

/// A POST whose headers arrive; the body follows with [`body`].
fn post(host: &MockHost, root: &Root, id: u32, token: &str) -> (Filter, Flow) {
    let auth = format!("Bearer {token}");
    host.set_map_of(
        id,
        Map::RequestHeaders,
        &[
            (":method", "POST"),
            (":path", "/mcp/github"),
            (":authority", "gw"),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("authorization", &auth),
        ],
    );
    host.enter(id).unwrap();
    let mut filter = root.create_http_context(id);
    let flow = filter.on_request_headers(host, false);
    (filter, flow)
}

fn body(host: &MockHost, filter: &mut Filter, id: u32, bytes: &[u8]) -> Flow {
    host.set_buffer_of(id, Buffer::RequestBody, bytes);
    host.enter(id).unwrap();
    filter.on_request_body(host, bytes.len(), true)
}

fn replies(host: &MockHost) -> Vec<(u32, u32)> {
    picked(host, |c| match c {
        Call::Reply { context, status, .. } => Some((*context, *status)),
        _ => None,
    })
}

fn resumed(host: &MockHost) -> Vec<u32> {
    picked(host, |c| match c {
        Call::Resume { context } => Some(*context),
        _ => None,
    })
}

fn header(host: &MockHost, id: u32, name: &str) -> Option<String> {
    host.map_of(id, Map::RequestHeaders).into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

#[test]
fn a_request_waits_for_the_first_keys_then_goes_on_with_its_identity() {
    let host = MockHost::new();
    let issuer = Issuer::new();
    let mut root = configure(&host, ROOT, &remote_config());
    let (mut filter, flow) = post(&host, &root, 10, &issuer.token("alice", &["developer"]));
    assert_eq!(flow, Flow::Pause);
    // The body arrives while the request waits: it is kept, not decided.
    assert_eq!(body(&host, &mut filter, 10, &call_body("get_repository")), Flow::Pause);
    assert!(replies(&host).is_empty() && resumed(&host).is_empty());

    tick(&host, &mut root, ROOT);
    let fetches = dispatched(&host);
    assert_eq!(fetches.len(), 1, "one JWKS fetch");
    assert!(host.calls.borrow().contains(&Call::Dispatch {
        token: fetches[0],
        cluster: "idp".into(),
        path: "/jwks".into(),
        timeout: Duration::from_millis(2000),
    }));
    answer(&host, &mut root, ROOT, fetches[0], Some("200"), &issuer.jwks);

    assert_eq!(resumed(&host), vec![10]);
    assert!(replies(&host).is_empty());
    assert_eq!(header(&host, 10, "x-mcp-user-id").as_deref(), Some("alice"));
    assert_eq!(header(&host, 10, "authorization"), None, "no token passthrough");
    assert_eq!(host.counter("mcp_gateway.jwks_fetch_success"), 1);
    // The next tick finds nothing to do: no second fetch, nobody resumed twice.
    tick(&host, &mut root, ROOT);
    assert_eq!(dispatched(&host).len(), 1);
    assert_eq!(resumed(&host), vec![10]);
}

#[test]
fn waiters_go_out_in_batches_each_from_a_fresh_call_into_the_vm() {
    let host = MockHost::new();
    let issuer = Issuer::new();
    let mut root = configure(&host, ROOT, &remote_config());
    let token = issuer.token("alice", &["developer"]);
    let count = 3 * RELEASE_BATCH + 5;
    let mut filters: Vec<Filter> = (0..count)
        .map(|i| {
            let id = 100 + u32::try_from(i).unwrap();
            let (mut f, _) = post(&host, &root, id, &token);
            body(&host, &mut f, id, &call_body("get_repository"));
            f
        })
        .collect();
    tick(&host, &mut root, ROOT);
    let fetch = dispatched(&host)[0];
    host.take_calls();
    answer(&host, &mut root, ROOT, fetch, Some("200"), &issuer.jwks);

    let mut released = Vec::new();
    loop {
        let calls = host.take_calls();
        let batch: Vec<u32> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Resume { context } => Some(*context),
                _ => None,
            })
            .collect();
        assert!(batch.len() <= RELEASE_BATCH, "one call released {}", batch.len());
        released.extend(batch);
        let queue = calls.iter().find_map(|c| match c {
            Call::Enqueue { queue } => Some(*queue),
            _ => None,
        });
        match queue {
            // Envoy calls back on the queue from its event loop: a fresh call.
            Some(queue) => {
                host.enter(ROOT).unwrap();
                root.on_queue_ready(&host, queue);
            }
            None => break,
        }
    }
    let expected: Vec<u32> = (0..count).map(|i| 100 + u32::try_from(i).unwrap()).collect();
    assert_eq!(released, expected, "every waiter once, oldest first");
    filters.clear();
}

#[test]
fn past_the_waiter_cap_a_request_is_decided_at_once_with_the_keys_there_are() {
    let host = MockHost::new();
    let issuer = Issuer::new();
    let root = configure(&host, ROOT, &remote_config());
    let token = issuer.token("alice", &["developer"]);
    let mut filters = Vec::new();
    for i in 0..MAX_WAITERS {
        let (f, flow) = post(&host, &root, 100 + u32::try_from(i).unwrap(), &token);
        assert_eq!(flow, Flow::Pause);
        filters.push(f);
    }
    assert!(replies(&host).is_empty(), "all {MAX_WAITERS} wait");
    let last = 100 + u32::try_from(MAX_WAITERS).unwrap();
    let (_f, flow) = post(&host, &root, last, &token);
    assert_eq!(flow, Flow::Pause);
    // No keys yet: refused now (503, retry), rather than held past the bound.
    assert_eq!(replies(&host), vec![(last, 503)]);
}

#[test]
fn a_fetch_that_times_out_refuses_its_waiters_and_waits_before_the_next_try() {
    let host = MockHost::new();
    host.set_now(SystemTime::now());
    let issuer = Issuer::new();
    let mut root = configure(&host, ROOT, &remote_config());
    let (mut f, _) = post(&host, &root, 10, &issuer.token("alice", &["developer"]));
    body(&host, &mut f, 10, &call_body("get_repository"));
    tick(&host, &mut root, ROOT);
    let fetch = dispatched(&host)[0];
    // Envoy reports a timeout as a reply without headers.
    answer(&host, &mut root, ROOT, fetch, None, "");
    assert_eq!(replies(&host), vec![(10, 503)]);
    assert_eq!(host.counter("mcp_gateway.jwks_fetch_failure"), 1);
    let warned = host.logs(Level::Warn);
    assert!(warned.iter().any(|m| m.contains("JWKS fetch failed: HTTP status none; no keys loaded yet")), "{warned:?}");
    // No new fetch before min_refetch_secs, then one.
    host.advance(Duration::from_secs(29));
    tick(&host, &mut root, ROOT);
    assert_eq!(dispatched(&host).len(), 1);
    host.advance(Duration::from_secs(2));
    tick(&host, &mut root, ROOT);
    assert_eq!(dispatched(&host).len(), 2);
}

#[test]
fn a_waiter_whose_wait_runs_out_is_refused_on_the_tick() {
    let host = MockHost::new();
    host.set_now(SystemTime::now());
    let issuer = Issuer::new();
    let mut root = configure(&host, ROOT, &remote_config());
    let (mut f, _) = post(&host, &root, 10, &issuer.token("alice", &["developer"]));
    body(&host, &mut f, 10, &call_body("get_repository"));
    tick(&host, &mut root, ROOT); // the fetch starts and never answers
    host.advance(Duration::from_millis(2999));
    tick(&host, &mut root, ROOT);
    assert!(replies(&host).is_empty());
    host.advance(Duration::from_millis(1));
    tick(&host, &mut root, ROOT);
    assert_eq!(replies(&host), vec![(10, 503)]);
}

#[test]
fn an_unknown_key_id_that_cannot_be_refetched_in_time_is_refused_without_a_fetch() {
    let host = MockHost::new();
    host.set_now(SystemTime::now());
    let issuer = Issuer::new();
    let stranger = Issuer::new();
    let mut root = configure(&host, ROOT, &remote_config());
    tick(&host, &mut root, ROOT);
    let fetch = dispatched(&host)[0];
    answer(&host, &mut root, ROOT, fetch, Some("200"), &issuer.jwks);
    // A token signed by a key the IdP does not publish: its kid is unknown, and the last
    // fetch was just now, so no refetch may start before the wait ends.
    let (_f, flow) = post(&host, &root, 10, &stranger.token("alice", &["developer"]));
    assert_eq!(flow, Flow::Pause);
    tick(&host, &mut root, ROOT);
    assert_eq!(replies(&host), vec![(10, 401)]);
    assert_eq!(dispatched(&host).len(), 1, "no refetch inside min_refetch_secs");
}

#[test]
fn an_unknown_key_id_refetches_once_min_refetch_has_passed() {
    let host = MockHost::new();
    host.set_now(SystemTime::now());
    let old = Issuer::new();
    let rotated = Issuer::new();
    let mut root = configure(&host, ROOT, &remote_config());
    tick(&host, &mut root, ROOT);
    answer(&host, &mut root, ROOT, dispatched(&host)[0], Some("200"), &old.jwks);
    host.advance(Duration::from_secs(31));
    let (mut f, _) = post(&host, &root, 10, &rotated.token("alice", &["developer"]));
    body(&host, &mut f, 10, &call_body("get_repository"));
    tick(&host, &mut root, ROOT);
    let fetches = dispatched(&host);
    assert_eq!(fetches.len(), 2, "the unknown kid asks for a refetch");
    answer(&host, &mut root, ROOT, fetches[1], Some("200"), &rotated.jwks);
    assert_eq!(resumed(&host), vec![10]);
}

#[test]
fn a_request_that_ends_while_waiting_is_never_resumed() {
    let host = MockHost::new();
    let issuer = Issuer::new();
    let mut root = configure(&host, ROOT, &remote_config());
    let token = issuer.token("alice", &["developer"]);
    let (mut gone, _) = post(&host, &root, 10, &token);
    let (mut stays, _) = post(&host, &root, 11, &token);
    body(&host, &mut stays, 11, &call_body("get_repository"));
    host.enter(10).unwrap();
    gone.on_log(&host); // the client went away
    tick(&host, &mut root, ROOT);
    answer(&host, &mut root, ROOT, dispatched(&host)[0], Some("200"), &issuer.jwks);
    assert_eq!(resumed(&host), vec![11]);
    assert!(replies(&host).is_empty());
}

/// A worker with keys in its configuration, and an allowed tools/list on its way.
fn listing(host: &MockHost, id: u32) -> (Root, Filter) {
    let issuer = Issuer::new();
    let root = configure(host, ROOT, &inline_config(&issuer));
    let (mut filter, _) = post(host, &root, id, &issuer.token("alice", &["developer"]));
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string();
    assert_eq!(body(host, &mut filter, id, list.as_bytes()), Flow::Continue);
    host.set_map_of(id, Map::ResponseHeaders, &[(":status", "200"), ("content-type", "application/json")]);
    host.enter(id).unwrap();
    assert_eq!(filter.on_response_headers(host), Flow::Continue);
    (root, filter)
}

/// A tools/list reply of exactly `size` bytes (padded with trailing whitespace).
fn list_reply(size: usize) -> Vec<u8> {
    let tools = json!([
        {"name": "get_repository", "annotations": {"readOnlyHint": true}},
        {"name": "delete_repository", "annotations": {"destructiveHint": true}},
    ]);
    let mut reply = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}}).to_string().into_bytes();
    assert!(reply.len() <= size);
    reply.resize(size, b' ');
    reply
}

fn respond(host: &MockHost, filter: &mut Filter, id: u32, chunks: &[&[u8]]) -> Vec<Flow> {
    let mut flows = Vec::new();
    let mut buffered = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        buffered.extend_from_slice(chunk);
        host.set_buffer_of(id, Buffer::ResponseBody, &buffered);
        host.enter(id).unwrap();
        let flow = filter.on_response_body(host, buffered.len(), i + 1 == chunks.len());
        if flow == Flow::Continue {
            // Envoy passed the buffer on: the next chunk starts a new one.
            buffered = host.buffer_of(id, Buffer::ResponseBody);
            flows.push(flow);
            buffered.clear();
        } else {
            flows.push(flow);
        }
    }
    flows
}

#[test]
fn a_list_reply_at_the_bound_is_filtered_and_one_byte_over_is_dropped() {
    // At the bound: buffered until the end, then only the tools the caller may use.
    let host = MockHost::new();
    let (_root, mut filter) = listing(&host, 10);
    let reply = list_reply(MAX_LIST_REPLY);
    let (head, tail) = reply.split_at(MAX_LIST_REPLY / 2);
    assert_eq!(respond(&host, &mut filter, 10, &[head, tail]), vec![Flow::Pause, Flow::Continue]);
    let out: Value = serde_json::from_slice(&host.buffer_of(10, Buffer::ResponseBody)).unwrap();
    assert_eq!(out["result"]["tools"], json!([{"name": "get_repository", "annotations": {"readOnlyHint": true}}]));
    assert_eq!(host.map_of(10, Map::ResponseHeaders).iter().find(|(n, _)| n == "content-length"), None);

    // One byte over: nothing of it reaches the client, not even the first part.
    let host = MockHost::new();
    let (_root, mut filter) = listing(&host, 10);
    let reply = list_reply(MAX_LIST_REPLY + 1);
    let (head, tail) = reply.split_at(MAX_LIST_REPLY);
    let flows = respond(&host, &mut filter, 10, &[head, tail]);
    assert_eq!(flows, vec![Flow::Pause, Flow::Continue]);
    assert!(host.buffer_of(10, Buffer::ResponseBody).is_empty());
    assert!(host.logs(Level::Warn).iter().any(|m| m.contains("too large to filter")));
    // What follows is dropped too.
    assert_eq!(respond(&host, &mut filter, 10, &[b"more"]), vec![Flow::Continue]);
    assert!(host.buffer_of(10, Buffer::ResponseBody).is_empty());
}

#[test]
fn a_list_reply_that_cannot_be_read_is_not_passed_on() {
    for unreadable in [&b"<html>oops</html>"[..], b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[", b""] {
        let host = MockHost::new();
        let (_root, mut filter) = listing(&host, 10);
        assert_eq!(respond(&host, &mut filter, 10, &[unreadable]), vec![Flow::Continue]);
        assert!(host.buffer_of(10, Buffer::ResponseBody).is_empty(), "{}", String::from_utf8_lossy(unreadable));
        assert!(host.logs(Level::Warn).iter().any(|m| m.contains("not understood")));
    }
}

#[test]
fn tools_learned_by_two_workers_under_a_cas_conflict_all_reach_the_shared_catalog() {
    let host = MockHost::new();
    let (_root, mut filter) = listing(&host, 10);
    // Another worker publishes what it learned between this worker's read and write.
    let mut theirs = Catalog::default();
    theirs.learn("github", &[json!({"name": "list_issues", "annotations": {"readOnlyHint": true}})]);
    host.rival_write(super::shared::CATALOG_KEY, theirs.to_json().to_string().as_bytes());
    let reply = list_reply(400);
    respond(&host, &mut filter, 10, &[&reply]);
    let shared: Value = serde_json::from_slice(&host.shared_value(super::shared::CATALOG_KEY).unwrap()).unwrap();
    assert_eq!(
        shared,
        json!({"github": {"list_issues": "read", "get_repository": "read", "delete_repository": "delete"}})
    );
}

#[test]
fn two_workers_claim_one_jwks_fetch_even_when_their_writes_race() {
    let host = MockHost::new();
    host.set_now(SystemTime::now());
    let mut a = configure(&host, 1, &remote_config());
    let mut b = configure(&host, 2, &remote_config());
    // Worker b claims the fetch between a's read of the state and a's write.
    let mut claimed = FetchState::default();
    claimed.start(super::epoch_ms(host.now()));
    host.rival_write(&jwks::shared_key("idp"), &serde_json::to_vec(&claimed).unwrap());
    tick(&host, &mut a, 1);
    assert!(dispatched(&host).is_empty(), "a lost the race: b's fetch is in flight");
    tick(&host, &mut b, 2);
    assert!(dispatched(&host).is_empty(), "the claim holds for b too (it is in flight)");
    // A claim that never ended counts as an attempt: after min_refetch_secs exactly one
    // worker fetches again.
    host.advance(Duration::from_secs(30));
    tick(&host, &mut a, 1);
    tick(&host, &mut b, 2);
    assert_eq!(dispatched(&host).len(), 1);
}

#[test]
fn keys_one_worker_fetched_are_installed_by_the_other_on_its_tick() {
    let host = MockHost::new();
    let issuer = Issuer::new();
    let mut a = configure(&host, 1, &remote_config());
    let mut b = configure(&host, 2, &remote_config());
    let (mut waiting, _) = post(&host, &b, 20, &issuer.token("alice", &["developer"]));
    body(&host, &mut waiting, 20, &call_body("get_repository"));
    tick(&host, &mut a, 1);
    answer(&host, &mut a, 1, dispatched(&host)[0], Some("200"), &issuer.jwks);
    assert!(resumed(&host).is_empty(), "b has not looked yet");
    tick(&host, &mut b, 2);
    assert_eq!(resumed(&host), vec![20]);
    assert_eq!(dispatched(&host).len(), 1, "b did not fetch again");
}

#[test]
fn a_session_recorded_under_a_cas_conflict_keeps_the_other_workers_session() {
    let host = MockHost::new();
    let issuer = Issuer::new();
    let root = configure(&host, ROOT, &inline_config(&issuer));
    let (mut filter, _) = post(&host, &root, 10, &issuer.token("alice", &["developer"]));
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    assert_eq!(body(&host, &mut filter, 10, init.to_string().as_bytes()), Flow::Continue);
    // Another worker opens a session in the same bucket while this one records its own.
    let key = session::bucket_key(session::Table::Sessions, "s-1");
    let mut theirs = session::Bucket::default();
    theirs.insert("s-other", "someone", super::epoch_ms(host.now()), 86_400_000);
    host.rival_write(&key, &theirs.to_bytes());
    host.set_map_of(
        10,
        Map::ResponseHeaders,
        &[(":status", "200"), ("content-type", "application/json"), ("mcp-session-id", "s-1")],
    );
    host.enter(10).unwrap();
    filter.on_response_headers(&host);
    let bucket = session::Bucket::from_bytes(&host.shared_value(&key).unwrap());
    let now_ms = super::epoch_ms(host.now());
    assert_eq!(bucket.get("s-other", now_ms, 86_400_000).map(|(o, _)| o), Some("someone"));
    assert_eq!(bucket.get("s-1", now_ms, 86_400_000).map(|(o, _)| o.to_owned()), Some(session::owner("idp", "alice")));
}

#[test]
fn a_host_call_that_fails_mid_request_refuses_the_request() {
    let issuer = Issuer::new();
    let token = issuer.token("alice", &["developer"]);
    let call = call_body("get_repository");
    // (failing host call, status the client gets)
    for failing in ["map", "buffer", "set_map_value", "remove_map_value"] {
        let host = MockHost::new();
        let root = configure(&host, ROOT, &inline_config(&issuer));
        host.fail(failing);
        let (mut filter, flow) = post(&host, &root, 10, &token);
        if flow == Flow::Pause && replies(&host).is_empty() {
            assert_eq!(body(&host, &mut filter, 10, &call), Flow::Pause, "{failing}");
        }
        assert_eq!(replies(&host), vec![(10, 500)], "{failing}");
        assert!(resumed(&host).is_empty());
        assert!(host.logs(Level::Error).iter().any(|m| m.contains("refusing request")), "{failing}");
    }
    // A reply Envoy will not send: the request is reset instead.
    let host = MockHost::new();
    let root = configure(&host, ROOT, &inline_config(&issuer));
    host.fail("send_reply");
    let (_f, flow) = post(&host, &root, 10, "not-a-token");
    assert_eq!(flow, Flow::Pause);
    assert_eq!(host.take_calls().iter().filter(|c| matches!(c, Call::ResetRequest { context: 10 })).count(), 1);
}

#[test]
fn a_resumed_request_that_envoy_cannot_resume_is_refused() {
    let host = MockHost::new();
    let issuer = Issuer::new();
    let mut root = configure(&host, ROOT, &remote_config());
    let (mut f, _) = post(&host, &root, 10, &issuer.token("alice", &["developer"]));
    body(&host, &mut f, 10, &call_body("get_repository"));
    tick(&host, &mut root, ROOT);
    host.fail("resume_request");
    answer(&host, &mut root, ROOT, dispatched(&host)[0], Some("200"), &issuer.jwks);
    assert_eq!(replies(&host), vec![(10, 500)]);
}

#[test]
fn a_response_body_that_cannot_be_rewritten_resets_the_response() {
    let host = MockHost::new();
    let (_root, mut filter) = listing(&host, 10);
    host.fail("set_buffer");
    respond(&host, &mut filter, 10, &[&list_reply(400)]);
    assert!(host.calls.borrow().contains(&Call::ResetResponse { context: 10 }));
}

#[test]
fn a_configuration_error_fails_the_plugin_and_names_the_field() {
    let host = MockHost::new();
    let mut config = remote_config();
    config["jwt"]["key_wait_ms"] = json!(60_000);
    host.set_buffer_of(ROOT, Buffer::PluginConfiguration, config.to_string().as_bytes());
    host.enter(ROOT).unwrap();
    let mut root = Root::new(ROOT);
    assert!(!root.on_configure(&host));
    let critical = host.logs(Level::Critical);
    assert!(critical.iter().any(|m| m.contains("jwt.key_wait_ms")), "{critical:?}");
    // Without a configuration every request is refused, never passed.
    let (_f, _) = post(&host, &root, 10, "x");
    assert_eq!(replies(&host), vec![(10, 500)]);
}

#[test]
fn the_audit_line_and_counters_come_from_on_log() {
    let host = MockHost::new();
    let issuer = Issuer::new();
    let root = configure(&host, ROOT, &inline_config(&issuer));
    let (mut filter, _) = post(&host, &root, 10, &issuer.token("alice", &["developer"]));
    body(&host, &mut filter, 10, &call_body("get_repository"));
    host.set_property_of(10, &["response", "code"], &200_u64.to_le_bytes());
    host.set_property_of(10, &["source", "address"], b"127.0.0.1:5555");
    host.enter(10).unwrap();
    filter.on_log(&host);
    let info = host.logs(Level::Info);
    let line = info.last().unwrap().strip_prefix(crate::audit::LOG_PREFIX).unwrap();
    let line: Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["user_id"], "alice");
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["status"], 200);
    assert_eq!(host.counter("mcp_gateway.requests_allowed"), 1);
    assert_eq!(host.counter("mcp_gateway.requests_denied"), 0);
}

#[test]
fn an_sse_event_past_the_bound_ends_the_stream_and_nothing_of_it_is_passed_on() {
    use crate::gateway::MAX_EVENT_BYTES;
    let host = MockHost::new();
    let issuer = Issuer::new();
    let root = configure(&host, ROOT, &inline_config(&issuer));
    let auth = format!("Bearer {}", issuer.token("alice", &["developer"]));
    host.set_map_of(
        10,
        Map::RequestHeaders,
        &[(":method", "GET"), (":path", "/mcp/github"), ("accept", "text/event-stream"), ("authorization", &auth)],
    );
    host.enter(10).unwrap();
    let mut stream = root.create_http_context(10);
    assert_eq!(stream.on_request_headers(&host, true), Flow::Continue);
    assert_eq!(header(&host, 10, "accept-encoding").as_deref(), Some("identity"));
    host.set_map_of(10, Map::ResponseHeaders, &[(":status", "200"), ("content-type", "text/event-stream")]);
    stream.on_response_headers(&host);
    // A complete event goes on at once.
    let note = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{}}\n\n";
    assert_eq!(respond(&host, &mut stream, 10, &[note]), vec![Flow::Continue]);
    assert_eq!(host.buffer_of(10, Buffer::ResponseBody), note.to_vec());
    // An event that never ends within the bound: the stream is reset, the part dropped.
    let mut huge = b"data: ".to_vec();
    huge.resize(MAX_EVENT_BYTES + 1, b'x');
    respond(&host, &mut stream, 10, &[&huge]);
    assert!(host.buffer_of(10, Buffer::ResponseBody).is_empty());
    assert!(host.calls.borrow().contains(&Call::ResetResponse { context: 10 }));
    respond(&host, &mut stream, 10, &[b"\n\n"]);
    assert!(host.buffer_of(10, Buffer::ResponseBody).is_empty(), "the rest is dropped too");
}

#[test]
fn a_body_past_the_limit_while_waiting_is_refused_and_not_resumed_later() {
    let host = MockHost::new();
    let issuer = Issuer::new();
    let mut config = remote_config();
    config["max_body_bytes"] = json!(1024);
    let mut root = configure(&host, ROOT, &config);
    let (mut f, _) = post(&host, &root, 10, &issuer.token("alice", &["developer"]));
    host.set_buffer_of(10, Buffer::RequestBody, &[b' '; 1025]);
    host.enter(10).unwrap();
    assert_eq!(f.on_request_body(&host, 1025, false), Flow::Pause);
    assert_eq!(replies(&host), vec![(10, 413)]);
    tick(&host, &mut root, ROOT);
    answer(&host, &mut root, ROOT, dispatched(&host)[0], Some("200"), &issuer.jwks);
    assert!(resumed(&host).is_empty());
    assert_eq!(replies(&host), vec![(10, 413)], "answered once");
}

#[test]
fn request_trailers_before_the_body_ended_are_refused() {
    let host = MockHost::new();
    let issuer = Issuer::new();
    let root = configure(&host, ROOT, &inline_config(&issuer));
    let (mut f, flow) = post(&host, &root, 10, &issuer.token("alice", &["developer"]));
    assert_eq!(flow, Flow::Pause);
    host.enter(10).unwrap();
    assert_eq!(f.on_request_trailers(&host), Flow::Pause);
    assert_eq!(replies(&host), vec![(10, 400)]);
}

#[test]
fn a_tool_operation_one_worker_learned_decides_on_another_which_copies_the_catalog_only_when_it_changed() {
    use super::shared::CATALOG_KEY;
    let host = MockHost::new();
    let issuer = Issuer::new();
    let mut config = inline_config(&issuer);
    // Readers may use tools whose annotations say they only read.
    config["rbac"]["roles"]["reader"] = json!({"servers": ["github"], "tools": ["*"], "operations": ["read"]});
    let a = configure(&host, 1, &config);
    let b = configure(&host, 2, &config);
    let token = issuer.token("rita", &["reader"]);
    let on_b = |id: u32| {
        let (mut f, _) = post(&host, &b, id, &token);
        body(&host, &mut f, id, &call_body("get_repository"))
    };
    assert_eq!(on_b(10), Flow::Pause);
    assert_eq!(replies(&host), vec![(10, 403)], "unknown operation: denied");

    // Worker a lists the tools and learns get_repository only reads.
    let (mut lister, _) = post(&host, &a, 20, &token);
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string();
    assert_eq!(body(&host, &mut lister, 20, list.as_bytes()), Flow::Continue);
    host.set_map_of(20, Map::ResponseHeaders, &[(":status", "200"), ("content-type", "application/json")]);
    host.enter(20).unwrap();
    lister.on_response_headers(&host);
    respond(&host, &mut lister, 20, &[&list_reply(400)]);

    let before = host.reads_of(CATALOG_KEY);
    assert_eq!(on_b(11), Flow::Continue, "b now allows the call");
    assert_eq!(replies(&host), vec![(10, 403)]);
    assert_eq!(host.reads_of(CATALOG_KEY), before + 1, "copied once after the publication");
    on_b(12);
    on_b(13);
    assert_eq!(host.reads_of(CATALOG_KEY), before + 1, "not copied again while unchanged");
}

/// Host calls cost a crossing out of the VM each: an allowed tool call makes a small,
/// known number of them. The budget below is today's count; a change that adds calls
/// to every request shows up here (and `make bench` says what they cost).
#[test]
fn an_allowed_tool_call_makes_a_bounded_number_of_host_calls() {
    let host = MockHost::new();
    let issuer = Issuer::new();
    let root = configure(&host, ROOT, &inline_config(&issuer));
    let token = issuer.token("alice", &["developer"]);
    host.take_host_calls();
    let (mut f, _) = post(&host, &root, 10, &token);
    assert_eq!(body(&host, &mut f, 10, &call_body("get_repository")), Flow::Continue);
    host.set_map_of(10, Map::ResponseHeaders, &[(":status", "200"), ("content-type", "text/event-stream")]);
    host.enter(10).unwrap();
    f.on_response_headers(&host);
    respond(&host, &mut f, 10, &[b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"isError\":true}}\n\n"]);
    host.set_property_of(10, &["response", "code"], &200_u64.to_le_bytes());
    host.enter(10).unwrap();
    f.on_log(&host);
    // The harness's own `enter` calls are not the adapter's.
    let calls: Vec<(&str, usize)> = host.take_host_calls().into_iter().filter(|(name, _)| *name != "enter").collect();
    let total: usize = calls.iter().map(|(_, n)| n).sum();
    println!("host calls for one allowed tools/call: {total} {calls:?}");
    assert!(total <= 36, "{total} host calls: {calls:?}");
    // Per call: the header map read once, the body once; two response headers (type and
    // encoding) and the reply's one chunk, read for its outcome; the status, source,
    // cluster, upstream host and both sizes; one audit line; the clock at the start and
    // end of each of the five hooks that work (the filter time), one histogram value.
    // The first request with a (decision, method, server) also defines its counter.
    let count = |name: &str| calls.iter().find(|(n, _)| *n == name).map_or(0, |(_, n)| *n);
    assert_eq!(count("map"), 1);
    assert_eq!(count("buffer"), 2);
    assert_eq!(count("map_value"), 2);
    assert_eq!(count("property"), 6);
    assert_eq!(count("log"), 1);
    assert_eq!(count("now"), 10);
    assert_eq!(count("record_value"), 1);
    assert_eq!(count("define_metric"), 1);
    let line = host.logs(Level::Info).into_iter().find(|l| l.contains(crate::audit::LOG_PREFIX)).unwrap_or_default();
    assert!(line.contains(r#""outcome":"tool_error""#) && line.contains(r#""is_error":true"#), "{line}");
}

/// The record keeps an upstream's JSON-RPC error, redacted like arguments: a message that
/// quotes a token does not reach the log.
#[test]
fn an_upstream_error_message_is_recorded_redacted() {
    let host = MockHost::new();
    let issuer = Issuer::new();
    let root = configure(&host, ROOT, &inline_config(&issuer));
    let token = issuer.token("alice", &["developer"]);
    let (mut f, _) = post(&host, &root, 10, &token);
    assert_eq!(body(&host, &mut f, 10, &call_body("get_repository")), Flow::Continue);
    host.set_map_of(10, Map::ResponseHeaders, &[(":status", "200"), ("content-type", "application/json")]);
    host.enter(10).unwrap();
    f.on_response_headers(&host);
    let reply = format!(r#"{{"jsonrpc":"2.0","id":1,"error":{{"code":-32000,"message":"bad token {token}"}}}}"#);
    respond(&host, &mut f, 10, &[reply.as_bytes()]);
    host.set_property_of(10, &["response", "code"], &200_u64.to_le_bytes());
    host.enter(10).unwrap();
    f.on_log(&host);
    let line = host.logs(Level::Info).into_iter().find(|l| l.contains(crate::audit::LOG_PREFIX)).unwrap_or_default();
    assert!(line.contains(r#""outcome":"error""#) && line.contains(r#""error_code":-32000"#), "{line}");
    assert!(line.contains(r#""error_message":"[REDACTED]""#) && !line.contains(&token), "{line}");
}

/// Requests are counted by decision, method and server, authentication failures by
/// reason, each labelled counter defined once per worker; every request records its
/// filter time once.
#[test]
fn requests_are_counted_by_label_and_timed() {
    let host = MockHost::new();
    let issuer = Issuer::new();
    let root = configure(&host, ROOT, &inline_config(&issuer));
    let token = issuer.token("alice", &["developer"]);
    let finish = |f: &mut Filter, id: u32, status: u64| {
        host.set_property_of(id, &["response", "code"], &status.to_le_bytes());
        host.enter(id).unwrap();
        f.on_log(&host);
    };
    for (id, tool) in [(10, "get_repository"), (11, "get_issue"), (12, "delete_repository")] {
        let (mut f, _) = post(&host, &root, id, &token);
        body(&host, &mut f, id, &call_body(tool));
        finish(&mut f, id, 200);
    }
    let (mut f, flow) = post(&host, &root, 13, "not-a-token");
    assert_eq!(flow, Flow::Pause);
    finish(&mut f, 13, 401);
    host.take_host_calls();
    let (mut f, _) = post(&host, &root, 14, "not-a-token");
    finish(&mut f, 14, 401);
    let defined = host.take_host_calls().into_iter().find(|(n, _)| *n == "define_metric");
    assert_eq!(defined, None, "a counter seen before is not defined again");

    let requests = |d: &str, m: &str| host.counter(&crate::stats::requests_name(d, m, Some("github")));
    assert_eq!(requests("allow", "tools/call"), 2);
    assert_eq!(requests("deny", "tools/call"), 1);
    assert_eq!(requests("deny", "none"), 2, "refused at the head: no method read");
    assert_eq!(host.counter(&crate::stats::auth_failures_name("malformed")), 2);
    assert_eq!(host.counter_names().iter().filter(|n| n.ends_with(".auth_failures")).count(), 1);
    let times = host.histogram(crate::stats::FILTER_TIME);
    assert_eq!(times.len(), 5, "{times:?}");
}
