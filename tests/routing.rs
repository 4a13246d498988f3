//! Routing through a real Envoy: which server a request path reaches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod common;

use common::envoy::{Envoy, EnvoyOptions, Regional};
use common::{initialize, plugin_config, post_in_session, post_json, send_from, tool_call, Gateway, JWK_ENV};
use mcpgw::client::{connect, text};
use mcpgw::token::{keygen, mint, TokenRequest};
use mcpgw::{spawn, RunningServer, ServerKind};
use serde_json::{json, Value};
use std::collections::HashSet;

/// Two replicas of one server (`replicated`, at `/mcp/replicated`), and the key that signs
/// callers' tokens, for gateways put in front of them.
struct Replicas {
    a: RunningServer,
    b: RunningServer,
    signing: String,
    public: String,
    _keys: tempfile::TempDir,
}

impl Replicas {
    async fn start(kind: impl Fn() -> ServerKind) -> Replicas {
        let keys = tempfile::tempdir().unwrap();
        let files = keygen(keys.path()).unwrap();
        let signing = std::fs::read_to_string(&files.signing_key).unwrap();
        let public = std::fs::read_to_string(&files.public_key).unwrap();
        let listener = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
        let a = spawn(kind(), listener().await).await.unwrap();
        let b = spawn(kind(), listener().await).await.unwrap();
        Replicas { a, b, signing, public, _keys: keys }
    }

    fn token(&self, sub: &str) -> String {
        mint(&self.signing, &TokenRequest::new(sub, &["admin"])).unwrap()
    }

    /// An Envoy with the gateway in front of both replicas, with session affinity;
    /// `edit` changes the plugin configuration, `env` adds to the VM's environment.
    async fn gateway(&self, edit: impl FnOnce(&mut Value), env: &[(&str, &str)]) -> Envoy {
        let mut config = plugin_config();
        config["servers"].as_array_mut().unwrap().push(json!({"name": "replicated", "path_prefix": "/mcp/replicated"}));
        edit(&mut config);
        let env = std::iter::once((JWK_ENV.to_owned(), self.public.clone()))
            .chain(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
            .collect();
        Envoy::start(EnvoyOptions {
            plugin_config: config,
            upstreams: vec![("replicated".into(), "/mcp/replicated".into(), self.a.addr)],
            env,
            clusters: vec![],
            plain_routes: vec![],
            replicas: vec![("replicated".into(), vec![self.b.addr])],
            session_affinity: true,
            regional: vec![],
        })
        .await
        .unwrap()
    }

    /// The replica that answered `initialize`, and the other one.
    fn issuer_first(&self) -> (&RunningServer, &RunningServer) {
        if self.a.requests.with_rpc_method("initialize").is_empty() {
            (&self.b, &self.a)
        } else {
            (&self.a, &self.b)
        }
    }
}

/// A session's `Mcp-Session-Id` as a raw client got it from `initialize`.
async fn open_session(url: &str, token: &str) -> String {
    let opened = post_json(url, Some(token), &initialize()).await;
    assert_eq!(opened.status, 200, "{:?}", String::from_utf8_lossy(&opened.body));
    opened.header("mcp-session-id").unwrap().to_owned()
}

/// `/mcp/{server}` and the seed's `/proxy/{server}/mcp` reach the same server, which sees
/// its own `/mcp` path and the call as authorized; a path naming no server is a JSON-RPC
/// 404 that reaches no upstream, in either form.
#[tokio::test]
async fn both_path_forms_reach_the_server_and_an_unknown_one_is_a_json_rpc_404() {
    let gw = Gateway::start().await;
    let token = gw.token("alice", &["admin"]);
    for path in ["/mcp/testjson", "/proxy/testjson/mcp"] {
        gw.testjson.requests.clear();
        let reply = post_json(&gw.envoy.url(path), Some(&token), &tool_call(1, "echo", json!({"text": path}))).await;
        assert_eq!(reply.status, 200, "{path}: {:?}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.json()["result"]["content"][0]["text"], path, "{path}");
        let seen = gw.testjson.requests.all();
        assert_eq!(seen.len(), 1, "{path}: {seen:?}");
        assert_eq!(seen[0].path, "/mcp", "{path}");
        assert_eq!(seen[0].rpc_name().as_deref(), Some("echo"), "{path}");
    }
    for path in ["/proxy/gitlab/mcp", "/mcp/gitlab", "/proxy/testjson", "/proxy/testjson/mcpx", "/proxy/test/json/mcp"]
    {
        let before = gw.upstream_requests();
        let reply = post_json(&gw.envoy.url(path), Some(&token), &tool_call(2, "echo", json!({"text": "x"}))).await;
        assert_eq!(reply.status, 404, "{path}");
        reply.assert_rpc_error(404, -32004);
        assert_eq!(gw.upstream_requests(), before, "{path} reached an upstream");
    }
}

/// Two servers whose prefixes overlap (one is the other's, or below it) would leave which
/// one a path reaches to route order: Envoy refuses to load such a configuration, and the
/// log names the field and both servers.
#[tokio::test]
async fn overlapping_prefixes_are_refused_when_envoy_loads_the_filter() {
    for (second, other) in [("/mcp/test/inner", "/mcp/test"), ("/proxy/test/mcp", "/proxy/test/mcp")] {
        let mut config = plugin_config();
        config["servers"].as_array_mut().unwrap().push(json!({"name": "inner", "path_prefix": second}));
        let log = Envoy::expect_refusal(EnvoyOptions {
            plugin_config: config,
            upstreams: vec![("test".into(), "/mcp/test".into(), "127.0.0.1:9".parse().unwrap())],
            env: vec![(JWK_ENV.into(), "{}".into())],
            clusters: vec![],
            plain_routes: vec![],
            replicas: vec![],
            session_affinity: false,
            regional: vec![],
        })
        .await
        .expect("envoy must refuse the configuration");
        let index = plugin_config()["servers"].as_array().unwrap().len();
        assert!(log.contains(&format!("servers[{index}].path_prefix")), "{second}: {log}");
        assert!(log.contains(&format!("{other:?}")) && log.contains("one server"), "{second}: {log}");
    }
}

/// A server with two replicas behind Envoy's stateful session filter (the envelope of
/// `Mcp-Session-Id`): new sessions spread over both, every request of a session reaches
/// the replica that issued it, and the replica only ever sees its own session id.
#[tokio::test]
async fn a_session_stays_on_the_replica_that_issued_it() {
    let r = Replicas::start(|| ServerKind::Test).await;
    let envoy = r.gateway(|_| {}, &[]).await;
    let token = r.token("alice");
    let url = envoy.url("/mcp/replicated");
    // 16 sessions: all on one replica by chance is a 1 in 30,000 event.
    const SESSIONS: usize = 16;
    let mut clients = Vec::new();
    for _ in 0..SESSIONS {
        clients.push(connect(&url, Some(&token)).await.unwrap());
    }
    for (i, client) in clients.iter().enumerate() {
        for k in 0..3 {
            let said = format!("{i}-{k}");
            assert_eq!(text(&client.call_tool("echo", json!({"text": said})).await.unwrap()), said);
        }
    }
    let sessions = |s: &RunningServer| s.requests.header_values("mcp-session-id").into_iter().collect::<HashSet<_>>();
    let (on_a, on_b) = (sessions(&r.a), sessions(&r.b));
    assert!(!on_a.is_empty() && !on_b.is_empty(), "new sessions spread: {} on a, {} on b", on_a.len(), on_b.len());
    assert!(on_a.is_disjoint(&on_b), "a session's requests reached both replicas");
    assert_eq!(on_a.len() + on_b.len(), SESSIONS);
    for (replica, ids) in [(&r.a, &on_a), (&r.b, &on_b)] {
        // Each replica issued the sessions it served, and saw each id as it issued it.
        assert_eq!(replica.requests.with_rpc_method("initialize").len(), ids.len());
        assert!(ids.iter().all(|id| !id.contains(";UV:")), "{ids:?}");
        let calls = replica.requests.with_rpc_method("tools/call").len();
        assert_eq!(calls, ids.len() * 3, "every call of a session on its replica");
    }
    // The client holds the envelope (the replica's address travels with the id), and a
    // request with it goes to that replica whichever Envoy worker takes it.
    let enveloped = open_session(&url, &token).await;
    assert!(enveloped.contains(";UV:"), "{enveloped}");
    let before = (r.a.requests.len(), r.b.requests.len());
    for id in 2..6 {
        let reply = post_in_session(&url, &token, &enveloped, &tool_call(id, "echo", json!({"text": "raw"}))).await;
        assert_eq!(reply.status, 200, "{:?}", String::from_utf8_lossy(&reply.body));
    }
    let grew = (r.a.requests.len() - before.0, r.b.requests.len() - before.1);
    assert!(grew == (4, 0) || grew == (0, 4), "the raw session's calls went {grew:?}");
}

/// Two gateway replicas (two Envoys, nothing shared but their configuration and the
/// session binding key) in front of the same two server replicas: a session opened
/// through one is served through the other, on the replica that issued it, and the
/// replica sees only its own id. Another caller with the same id gets 404.
#[tokio::test]
async fn a_session_opened_through_one_gateway_is_served_by_another() {
    const KEY_ENV: &str = "MCPGW_TEST_SESSION_KEY";
    let r = Replicas::start(|| ServerKind::Test).await;
    let bind = |c: &mut Value| c["session_binding_key_env"] = json!(KEY_ENV);
    let key = [(KEY_ENV, "a key both gateway replicas share, 0123456789")];
    let (one, two) = (r.gateway(bind, &key).await, r.gateway(bind, &key).await);
    let (alice, bob) = (r.token("alice"), r.token("bob"));
    let (url_one, url_two) = (one.url("/mcp/replicated"), two.url("/mcp/replicated"));
    let session = open_session(&url_one, &alice).await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(post_in_session(&url_two, &alice, &session, &initialized).await.status, 202);
    for (id, url) in [(2, &url_two), (3, &url_one), (4, &url_two)] {
        let reply = post_in_session(url, &alice, &session, &tool_call(id, "echo", json!({"text": "across"}))).await;
        assert_eq!(reply.status, 200, "{:?}", String::from_utf8_lossy(&reply.body));
        assert!(String::from_utf8_lossy(&reply.body).contains("across"));
    }
    let (issuer, other) = r.issuer_first();
    assert_eq!(issuer.requests.with_rpc_method("tools/call").len(), 3, "every call on the replica that issued it");
    assert!(other.requests.is_empty(), "the other replica saw {:?}", other.requests.all());
    let ids: HashSet<String> = issuer.requests.header_values("mcp-session-id").into_iter().collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(ids.iter().all(|id| !id.contains(";UV:") && !session.ends_with(id.as_str())), "{ids:?} / {session}");
    // Bob holding alice's session id: unknown to him, through either gateway.
    let before = issuer.requests.len();
    for url in [&url_one, &url_two] {
        post_in_session(url, &bob, &session, &tool_call(9, "echo", json!({"text": "x"})))
            .await
            .assert_rpc_error(404, -32004);
    }
    assert_eq!(issuer.requests.len(), before);
}

/// When a session's replica is gone, the client gets the spec's 404 with a JSON-RPC error
/// (not Envoy's 503), and its new `initialize` lands on a live replica, even if the
/// balancer first picks the dead one (a refused connection is retried elsewhere).
#[tokio::test]
async fn a_session_whose_replica_died_gets_404_and_a_new_one_lands_on_a_live_replica() {
    let r = Replicas::start(|| ServerKind::Test).await;
    let envoy = r.gateway(|_| {}, &[]).await;
    let token = r.token("alice");
    let url = envoy.url("/mcp/replicated");
    let call = |id: i64| tool_call(id, "echo", json!({"text": "hi"}));
    let session = open_session(&url, &token).await;
    assert_eq!(post_in_session(&url, &token, &session, &call(2)).await.status, 200);
    // Stop the replica that issued it.
    let Replicas { a, b, .. } = r;
    let (dead, live) = if a.requests.with_rpc_method("initialize").is_empty() { (b, a) } else { (a, b) };
    dead.shutdown().await.unwrap();
    post_in_session(&url, &token, &session, &call(3)).await.assert_rpc_error(404, -32004);
    // New sessions: every one lands on the live replica.
    let before = live.requests.with_rpc_method("initialize").len();
    for _ in 0..6 {
        let session = open_session(&url, &token).await;
        assert_eq!(post_in_session(&url, &token, &session, &call(4)).await.status, 200);
    }
    assert_eq!(live.requests.with_rpc_method("initialize").len(), before + 6);
}

/// Traffic without a session (a JSON server, or protocol 2026-07-28) is balanced per
/// request across a server's replicas, with the affinity filter in place.
#[tokio::test]
async fn requests_without_a_session_are_balanced_one_by_one() {
    let r = Replicas::start(|| ServerKind::TestJson).await;
    let envoy = r.gateway(|_| {}, &[]).await;
    let token = r.token("alice");
    // 16 calls: all on one replica by chance is a 1 in 30,000 event.
    for id in 0..16 {
        let reply =
            post_json(&envoy.url("/mcp/replicated"), Some(&token), &tool_call(id, "echo", json!({"text": "x"}))).await;
        assert_eq!(reply.status, 200, "{:?}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.header("mcp-session-id"), None, "no session was made");
    }
    let calls = |s: &RunningServer| s.requests.with_rpc_method("tools/call").len();
    let (on_a, on_b) = (calls(&r.a), calls(&r.b));
    assert_eq!(on_a + on_b, 16);
    assert!(on_a > 0 && on_b > 0, "{on_a} on a, {on_b} on b");
}

/// A server `regional` with one replica in `eu-west` and one in `us-east`, behind a
/// gateway whose callers are placed by a trusted front proxy's `x-client-region` (only
/// 127.0.0.2 is one), then their token's `region` claim, else `eu-west`; tokens with
/// `data_residency: eu` are pinned to `eu-west`.
struct Regions {
    /// None once stopped.
    eu: Option<RunningServer>,
    us: RunningServer,
    envoy: Envoy,
    keys: Replicas,
}

impl Regions {
    async fn start() -> Regions {
        // The replicas of `Replicas` are not used: only its keys.
        let keys = Replicas::start(|| ServerKind::TestJson).await;
        let listener = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
        let eu = spawn(ServerKind::TestJson, listener().await).await.unwrap();
        let us = spawn(ServerKind::TestJson, listener().await).await.unwrap();
        let regional = Regional {
            server: "regional".into(),
            regions: vec![("eu-west".into(), vec![eu.addr]), ("us-east".into(), vec![us.addr])],
            pinned: vec![("eu-only".into(), vec!["eu-west".into()])],
        };
        let mut config = plugin_config();
        config["servers"].as_array_mut().unwrap().push(regional.server_config());
        config["regions"] = json!({
            "names": ["eu-west", "us-east"],
            "default": "eu-west",
            "from": ["header", "claim"],
            "header": "x-client-region",
            "trusted_proxies": ["127.0.0.2"],
            "residency": [{"name": "eu-only", "claim": {"name": "data_residency", "value": "eu"}, "regions": ["eu-west"]}]
        });
        let envoy = Envoy::start(EnvoyOptions {
            plugin_config: config,
            upstreams: vec![],
            env: vec![(JWK_ENV.into(), keys.public.clone())],
            clusters: vec![],
            plain_routes: vec![],
            replicas: vec![],
            session_affinity: false,
            regional: vec![regional],
        })
        .await
        .unwrap();
        // Hosts start unchecked: the test begins once every first check has passed.
        for cluster in ["regional_eu-west", "regional_us-east", "regional_eu-only"] {
            envoy.wait_for_health(cluster, eu.addr, true).await;
        }
        for cluster in ["regional_eu-west", "regional_us-east"] {
            envoy.wait_for_health(cluster, us.addr, true).await;
        }
        let r = Regions { eu: Some(eu), us, envoy, keys };
        // Envoy's worker learns the health results a moment after its admin API shows
        // them: probe until each region's caller lands on its replica, then forget the
        // probes (ids from 9000).
        for (id, region, replica) in [(9000, "us-east", &r.us), (9100, "eu-west", r.eu())] {
            let token = r.token("probe", json!({ "region": region }));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            for id in id.. {
                let before = replica.requests.with_rpc_method("tools/call").len();
                assert_eq!(r.call("127.0.0.1", &token, id, &[]).await.status, 200);
                if replica.requests.with_rpc_method("tools/call").len() > before {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "{region} callers never reached their replica");
            }
        }
        r.us.requests.clear();
        r.eu().requests.clear();
        r
    }

    fn eu(&self) -> &RunningServer {
        self.eu.as_ref().unwrap()
    }

    /// Stops the eu-west replica and waits until Envoy's health checks have seen it.
    async fn stop_eu(&mut self) {
        let eu = self.eu.take().unwrap();
        let addr = eu.addr;
        eu.shutdown().await.unwrap();
        for cluster in ["regional_eu-west", "regional_eu-only"] {
            self.envoy.wait_for_health(cluster, addr, false).await;
        }
    }

    fn token(&self, sub: &str, claims: Value) -> String {
        let mut request = TokenRequest::new(sub, &["admin"]);
        request.extra_claims = claims.as_object().cloned().unwrap();
        mint(&self.keys.signing, &request).unwrap()
    }

    /// A tool call from `local` (a loopback address) with extra headers.
    async fn call(&self, local: &str, token: &str, id: i64, headers: &[(&str, &str)]) -> common::Raw {
        let auth = format!("Bearer {token}");
        let mut all = vec![
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("authorization", &auth),
        ];
        all.extend_from_slice(headers);
        let body = tool_call(id, "echo", json!({"text": format!("call {id}")})).to_string();
        send_from(Some(local.parse().unwrap()), "POST", &self.envoy.url("/mcp/regional"), &all, body).await
    }

    async fn record_of(&self, id: i64) -> Value {
        self.envoy.wait_for_audit(|r| r["jsonrpc_id"] == json!(id)).await
    }
}

/// Callers are served by their region's replicas; when those go down an unpinned caller
/// moves to the next region (Envoy's priorities, after its health checks saw it) with no
/// failed request, while a caller pinned to the region gets 503 with a JSON-RPC error and
/// is never served elsewhere. Each audit record names the caller's region, the region
/// and host that served the call, and the residency rule.
#[tokio::test]
async fn callers_fail_over_to_the_next_region_unless_residency_pins_them() {
    let mut r = Regions::start().await;
    let in_us = r.token("ursula", json!({"region": "us-east"}));
    let in_eu = r.token("erik", json!({"region": "eu-west"}));
    let pinned = r.token("petra", json!({"region": "us-east", "data_residency": "eu"}));
    let served = |s: &RunningServer| s.requests.with_rpc_method("tools/call").len();
    assert_eq!(r.call("127.0.0.1", &in_us, 1, &[]).await.status, 200);
    assert_eq!(r.call("127.0.0.1", &in_eu, 2, &[]).await.status, 200);
    // Pinned to eu-west, whatever its region claim says.
    assert_eq!(r.call("127.0.0.1", &pinned, 3, &[]).await.status, 200);
    assert_eq!((served(r.eu()), served(&r.us)), (2, 1));
    for (id, region, source, served_region, host, residency) in [
        (1, "us-east", "claim", "us-east", r.us.addr, None),
        (2, "eu-west", "claim", "eu-west", r.eu().addr, None),
        (3, "us-east", "claim", "eu-west", r.eu().addr, Some("eu-only")),
    ] {
        let record = r.record_of(id).await;
        assert_eq!(record["region"], region, "{record}");
        assert_eq!(record["region_source"], source, "{record}");
        assert_eq!(record["served_region"], served_region, "{record}");
        assert_eq!(record["upstream_host"], host.to_string(), "{record}");
        assert_eq!(record["residency"].as_str(), residency, "{record}");
    }
    // The upstream learns the caller's region; no cluster name or rule came from the client.
    let seen = last_call(r.eu());
    assert_eq!(seen.header("x-mcp-region"), Some("us-east"));
    assert_eq!(seen.header("x-mcp-residency"), Some("eu-only"));

    // eu-west goes down; once Envoy's health checks have seen it, no request fails.
    r.stop_eu().await;
    for id in 10..20 {
        let reply = r.call("127.0.0.1", &in_eu, id, &[]).await;
        assert_eq!(reply.status, 200, "{:?}", String::from_utf8_lossy(&reply.body));
    }
    assert_eq!(served(&r.us), 11, "every call of the eu caller went to us-east");
    let record = r.record_of(15).await;
    assert_eq!((record["region"].as_str(), record["served_region"].as_str()), (Some("eu-west"), Some("us-east")));
    // The pinned caller: 503 with a JSON-RPC error naming the rule; nothing reached us-east.
    let refused = r.call("127.0.0.1", &pinned, 30, &[]).await;
    let body = refused.assert_rpc_error(503, -32000);
    assert!(body["error"]["message"].as_str().unwrap().contains("eu-only"), "{body}");
    assert_eq!(served(&r.us), 11);
    let record = r.record_of(30).await;
    assert_eq!(record["status"], 503, "{record}");
    assert_eq!(record["residency"], "eu-only", "{record}");
    assert!(record["error_message"].as_str().unwrap().contains("eu-only"), "{record}");
    assert_eq!(record["served_region"], Value::Null, "{record}");
}

/// The region header counts only from a trusted front proxy (127.0.0.2 here): from any
/// other peer it is ignored and does not reach the upstream; the proxy's is believed
/// before the token's claim.
#[tokio::test]
async fn a_region_header_counts_only_from_a_trusted_proxy() {
    let r = Regions::start().await;
    let token = r.token("carol", json!({}));
    let header = [("x-client-region", "us-east")];
    assert_eq!(r.call("127.0.0.1", &token, 1, &header).await.status, 200);
    // Ignored: served in the default region, and the header went no further.
    let seen = last_call(r.eu());
    assert_eq!(seen.header("x-client-region"), None, "an untrusted region header reached the upstream");
    assert!(r.us.requests.with_rpc_method("tools/call").is_empty());
    let record = r.record_of(1).await;
    assert_eq!((record["region"].as_str(), record["region_source"].as_str()), (Some("eu-west"), Some("default")));
    assert_eq!(r.call("127.0.0.2", &token, 2, &header).await.status, 200);
    // The trusted proxy's header placed the caller in us-east.
    let seen = last_call(&r.us);
    assert_eq!(seen.header("x-client-region"), Some("us-east"));
    let record = r.record_of(2).await;
    assert_eq!((record["region"].as_str(), record["region_source"].as_str()), (Some("us-east"), Some("header")));
    // Before the claim, as configured; a client cannot name a cluster itself.
    let claims_eu = r.token("dave", json!({"region": "eu-west"}));
    assert_eq!(
        r.call("127.0.0.2", &claims_eu, 3, &[("x-client-region", "us-east"), ("x-mcp-cluster", "regional_eu-only")])
            .await
            .status,
        200
    );
    assert_eq!(r.us.requests.with_rpc_method("tools/call").len(), 2);
    assert_eq!(last_call(&r.us).header("x-mcp-cluster"), Some("regional_us-east"));
}

/// The last tool call a replica received (Envoy's health checks are requests too).
fn last_call(replica: &RunningServer) -> mcpgw::RecordedRequest {
    replica.requests.with_rpc_method("tools/call").pop().expect("no tool call reached the replica")
}
