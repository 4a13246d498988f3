//! Identity through a real Envoy: keys fetched as a JWKS from an identity provider
//! behind an Envoy cluster, rotation and outages, token attacks, OAuth protected
//! resource metadata, scopes, and upstream credentials.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{initialize, post_json, send, Gateway};
use mcpgw::testing::jwks::{JwksServer, JWKS_PATH};
use mcpgw::testing::keys::{
    alg_none, b64url, forge, padded, replace_segment, standard_claims, tamper_payload, Alg, ConfusionSecret,
    ForgedSignature, Segment, TestKey,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const ISSUER: &str = "https://idp.test/realms/acme";
const AUDIENCE: &str = "mcp-gateway";

fn claims(sub: &str, roles: &[&str]) -> Value {
    standard_claims(ISSUER, AUDIENCE, sub, roles, 600)
}

/// An identity provider serving `keys`, and a gateway whose provider fetches them.
async fn start(keys: &[&TestKey], edit: impl FnOnce(&mut Value)) -> (Gateway, JwksServer) {
    let idp = JwksServer::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
    idp.set_keys(keys);
    let gw = start_with_idp(&idp, edit).await;
    (gw, idp)
}

async fn start_with_idp(idp: &JwksServer, edit: impl FnOnce(&mut Value)) -> Gateway {
    let idp_url = idp.url();
    Gateway::start_full(
        |c| {
            c["jwt"]["key_wait_ms"] = json!(3000);
            c["jwt"]["providers"] = json!([{
                "name": "acme",
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "claims": {"user": "sub", "roles": "roles"},
                "jwks": {"cluster": "idp", "path": JWKS_PATH, "refresh_secs": 2, "min_refetch_secs": 1, "timeout_ms": 1000}
            }]);
            c["resource_metadata"] = json!({"authorization_servers": [idp_url], "scopes_supported": ["mcp:tools"]});
            edit(c);
        },
        vec![("idp".into(), idp.addr())],
        vec![],
    )
    .await
}

/// `initialize` through the gateway: 200 means the token was accepted.
async fn status_with(gw: &Gateway, token: &str) -> u16 {
    post_json(&gw.url("test"), Some(token), &initialize()).await.status
}

fn assert_401_with_metadata(r: &common::Raw, what: &str) {
    assert_eq!(r.status, 401, "{what}: {:?}", String::from_utf8_lossy(&r.body));
    r.assert_rpc_error(401, -32001);
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains("resource_metadata=\"http://127.0.0.1:"),
        "{what}: {challenge}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_while_a_client_keeps_calling() {
    let a = TestKey::generate(Alg::Rs256, "key-a").unwrap();
    let b = TestKey::generate(Alg::Es256, "key-b").unwrap();
    let (gw, idp) = start(&[&a], |_| {}).await;
    let mut statuses = Vec::new();
    // Phase 1: signed with A. Phase 2: the IdP publishes A and B and starts signing with
    // B at once (the gateway sees an unknown kid and refetches). Phase 3: A is retired.
    for phase in 0..3 {
        match phase {
            1 => idp.set_keys(&[&a, &b]),
            2 => idp.set_keys(&[&b]),
            _ => {}
        }
        let signer = if phase == 0 { &a } else { &b };
        let until = Instant::now() + Duration::from_millis(2500);
        let mut n = 0;
        while Instant::now() < until {
            n += 1;
            let token = signer.sign(&claims(&format!("user{phase}-{n}"), &["developer"]));
            statuses.push((phase, status_with(&gw, &token).await));
        }
    }
    let failed: Vec<_> = statuses.iter().filter(|(_, s)| *s != 200).collect();
    assert!(failed.is_empty(), "requests failed across the rotation: {failed:?} of {}", statuses.len());
    assert!(statuses.iter().filter(|(p, _)| *p == 1).count() > 3);
    // A retired key no longer works once the gateway has refreshed (refresh is 2 s).
    let old = a.sign(&claims("late", &["developer"]));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status_with(&gw, &old).await;
        if s == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "retired key still accepted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_provider_down_at_start_then_up() {
    let key = TestKey::generate(Alg::Es256, "k1").unwrap();
    let mut idp = JwksServer::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
    idp.set_keys(&[&key]);
    idp.stop().await.unwrap();
    let gw = start_with_idp(&idp, |_| {}).await;
    let token = key.sign(&claims("alice", &["developer"]));

    // No keys ever loaded: refused (503, fail closed), never forwarded.
    let r = post_json(&gw.url("test"), Some(&token), &initialize()).await;
    r.assert_rpc_error(503, -32000);
    assert!(r.header("retry-after").is_some());
    assert_eq!(gw.upstream_requests(), 0);

    idp.restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status_with(&gw, &token).await;
        if s == 200 {
            break;
        }
        assert_eq!(s, 503, "unexpected status while keys load");
        assert!(Instant::now() < deadline, "never served after the IdP came up:\n{}", gw.envoy.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gw.envoy.log().contains("JWKS fetch failed"), "the failure was not logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_provider_down_mid_run_keeps_last_good_keys() {
    let key = TestKey::generate(Alg::EdDsa, "k1").unwrap();
    let (gw, mut idp) = start(&[&key], |_| {}).await;
    let token = key.sign(&claims("alice", &["developer"]));
    assert_eq!(status_with(&gw, &token).await, 200);
    let fetched = idp.fetch_count();
    idp.stop().await.unwrap();
    // Refresh is every 2 s: wait until a refresh has failed, and keep calling.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !gw.envoy.log().contains("keeping the last good keys") {
        assert!(Instant::now() < deadline, "no failed refresh logged:\n{}", gw.envoy.log());
        let fresh = key.sign(&claims("bob", &["developer"]));
        assert_eq!(status_with(&gw, &fresh).await, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fresh = key.sign(&claims("carol", &["developer"]));
    assert_eq!(status_with(&gw, &fresh).await, 200, "last good keys stopped serving");
    let stats = reqwest::get(format!("http://127.0.0.1:{}/stats?filter=jwks_fetch", gw.envoy.admin_port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failures: u64 = stats
        .lines()
        .find(|l| l.contains("jwks_fetch_failure"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(failures >= 1, "no failure metric: {stats}");
    assert!(fetched >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_unknown_kids_cannot_amplify_into_fetches() {
    let key = TestKey::generate(Alg::Es256, "real").unwrap();
    let idp = JwksServer::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
    idp.set_keys(&[&key]);
    let gw = start_with_idp(&idp, |c| {
        c["jwt"]["providers"][0]["jwks"]["min_refetch_secs"] = json!(30);
        c["jwt"]["providers"][0]["jwks"]["refresh_secs"] = json!(300);
    })
    .await;
    let ok = key.sign(&claims("alice", &["developer"]));
    assert_eq!(status_with(&gw, &ok).await, 200);
    let before = idp.fetch_count();
    let attacker = TestKey::generate(Alg::Es256, "x").unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let token = attacker.with_kid(format!("random-{i}")).sign(&claims("mallory", &["admin"]));
        let url = gw.url("test");
        tasks.push(tokio::spawn(async move { post_json(&url, Some(&token), &initialize()).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    let extra = idp.fetch_count() - before;
    assert!(extra <= 1, "40 unknown kids caused {extra} JWKS fetches");
    assert_eq!(status_with(&gw, &ok).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_attacks_are_rejected_and_never_reach_the_upstream() {
    let rsa = TestKey::generate(Alg::Rs256, "rsa-1").unwrap();
    let ec = TestKey::generate(Alg::Es256, "ec-1").unwrap();
    let (gw, _idp) = start(&[&rsa, &ec], |_| {}).await;
    let good_claims = claims("alice", &["admin"]);
    let good = rsa.sign(&good_claims);
    assert_eq!(status_with(&gw, &good).await, 200, "baseline token refused");
    let before = gw.upstream_requests();

    let now = chrono::Utc::now().timestamp();
    let mut wrong_kid_header = rsa.header();
    wrong_kid_header["kid"] = json!(ec.kid());
    let mut attacks: Vec<(&str, String)> = vec![
        ("alg none", alg_none(&good_claims)),
        ("HS256 keyed with the RSA PEM", rsa.confusion_token(&good_claims, ConfusionSecret::SpkiPem).unwrap()),
        ("HS256 keyed with the RSA modulus", rsa.confusion_token(&good_claims, ConfusionSecret::Modulus).unwrap()),
        ("HS256 keyed with the RSA JWK", rsa.confusion_token(&good_claims, ConfusionSecret::JwkJson).unwrap()),
        ("kid of an EC key, alg RS256", forge(&wrong_kid_header, &good_claims, ForgedSignature::SignedBy(&rsa))),
        ("expired", rsa.sign(&standard_claims(ISSUER, AUDIENCE, "alice", &["admin"], -3600))),
        (
            "nbf in the future",
            rsa.sign(&{
                let mut c = good_claims.clone();
                c["nbf"] = json!(now + 3600);
                c
            }),
        ),
        ("wrong iss", rsa.sign(&standard_claims("https://evil.test", AUDIENCE, "alice", &["admin"], 600))),
        ("wrong aud", rsa.sign(&standard_claims(ISSUER, "another-api", "alice", &["admin"], 600))),
        ("tampered payload", tamper_payload(&good, &claims("alice", &["admin", "root"]))),
        ("tampered signature", {
            let mut t = good.clone();
            let last = t.pop().unwrap();
            t.push(if last == 'A' { 'B' } else { 'A' });
            t
        }),
        ("bad base64 header", replace_segment(&good, Segment::Header, "!!!")),
        ("bad base64 payload", replace_segment(&good, Segment::Payload, "%%%")),
        ("bad base64 signature", replace_segment(&good, Segment::Signature, "***")),
        ("non-JSON header", replace_segment(&good, Segment::Header, &b64url("not json"))),
        ("non-JSON payload", replace_segment(&good, Segment::Payload, &b64url("not json"))),
        ("oversized", rsa.sign(&padded(&good_claims, 20_000))),
        ("signed by an unpublished key", TestKey::generate(Alg::Es256, "ec-1").unwrap().sign(&good_claims)),
    ];
    attacks.push(("empty", String::new()));
    for (what, token) in &attacks {
        let auth = format!("Bearer {token}");
        let r = send(
            "POST",
            &gw.url("test"),
            &[("content-type", "application/json"), ("authorization", &auth)],
            initialize().to_string(),
        )
        .await;
        assert_401_with_metadata(&r, what);
    }
    // A token only in the query string is ignored; two Authorization headers are refused.
    let r = send(
        "POST",
        &format!("{}?access_token={good}", gw.url("test")),
        &[("content-type", "application/json")],
        initialize().to_string(),
    )
    .await;
    assert_401_with_metadata(&r, "token in query string");
    let auth = format!("Bearer {good}");
    let r = send(
        "POST",
        &gw.url("test"),
        &[("content-type", "application/json"), ("authorization", &auth), ("authorization", &auth)],
        initialize().to_string(),
    )
    .await;
    assert_401_with_metadata(&r, "two Authorization headers");
    assert_eq!(gw.upstream_requests(), before, "an attack reached the upstream");
    assert!(!gw.envoy.log().contains(&good), "a token reached the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_client_discovers_the_protected_resource_metadata_after_a_401() {
    let key = TestKey::generate(Alg::Es256, "k1").unwrap();
    let (gw, idp) = start(&[&key], |_| {}).await;
    let discovered = mcpgw::testing::discover(&gw.url("github")).await.expect("rmcp discovery");
    assert!(discovered.challenge.contains("resource_metadata="), "{}", discovered.challenge);
    assert_eq!(discovered.resource_metadata["resource"], gw.url("github"));
    assert_eq!(discovered.resource_metadata["authorization_servers"][0], idp.url());
    assert_eq!(discovered.resource_metadata["scopes_supported"][0], "mcp:tools");
    assert!(discovered.authorization_server.is_some(), "the client did not reach the authorization server metadata");

    // The documents, fetched directly: per server and for the whole gateway.
    let r = send("GET", &gw.envoy.url("/.well-known/oauth-protected-resource/mcp/github"), &[], Vec::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["resource"], gw.url("github"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let r = send("GET", &gw.envoy.url("/.well-known/oauth-protected-resource"), &[], Vec::new()).await;
    assert_eq!(r.json()["resource"], gw.envoy.url(""));
    let r = send("GET", &gw.envoy.url("/.well-known/oauth-protected-resource/mcp/nope"), &[], Vec::new()).await;
    assert_eq!(r.status, 404);
    assert_eq!(gw.upstream_requests(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_without_the_required_scope_gets_insufficient_scope() {
    let key = TestKey::generate(Alg::Es256, "k1").unwrap();
    let (gw, _idp) = start(&[&key], |c| {
        c["resource_metadata"]["required_scopes"] = json!(["mcp:tools"]);
    })
    .await;
    let without = key.sign(&claims("alice", &["developer"]));
    let r = post_json(&gw.url("test"), Some(&without), &initialize()).await;
    r.assert_rpc_error(403, -32003);
    let challenge = r.header("www-authenticate").unwrap();
    assert!(challenge.contains("error=\"insufficient_scope\""), "{challenge}");
    assert!(challenge.contains("scope=\"mcp:tools\""), "{challenge}");
    assert!(challenge.contains("resource_metadata="), "{challenge}");
    let mut c = claims("alice", &["developer"]);
    c["scope"] = json!("openid mcp:tools");
    assert_eq!(status_with(&gw, &key.sign(&c)).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_can_come_from_mapped_scopes() {
    let key = TestKey::generate(Alg::Es256, "k1").unwrap();
    let (gw, _idp) = start(&[&key], |c| {
        c["jwt"]["providers"][0]["claims"] =
            json!({"user": "sub", "roles": "scope", "role_map": {"mcp:write": ["developer"]}});
    })
    .await;
    let mut c = claims("alice", &[]);
    c["scope"] = json!("openid mcp:write");
    assert_eq!(status_with(&gw, &key.sign(&c)).await, 200);
    let seen = gw.test.requests.last().unwrap();
    assert_eq!(seen.header("x-mcp-roles"), Some("developer"));
    c["scope"] = json!("openid admin");
    let r = post_json(&gw.url("test"), Some(&key.sign(&c)), &initialize()).await;
    r.assert_rpc_error(403, -32003);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_credentials_are_injected_or_forwarded_only_when_configured() {
    let pat = "ghp_upstream-secret-1234567890";
    let gw = Gateway::start_full(
        |c| {
            c["servers"][1]["upstream_auth"] = json!({"header": "authorization", "value_env": "GITHUB_PAT"});
            c["servers"][0]["upstream_auth"] = json!({"forward_client_token": true});
        },
        vec![],
        vec![("GITHUB_PAT".into(), format!("Bearer {pat}"))],
    )
    .await;
    let token = gw.token("alice", &["developer"]);
    assert_eq!(post_json(&gw.url("github"), Some(&token), &initialize()).await.status, 200);
    let seen = gw.github.requests.last().unwrap();
    assert_eq!(seen.header("authorization"), Some(format!("Bearer {pat}").as_str()));
    assert_eq!(post_json(&gw.url("test"), Some(&token), &initialize()).await.status, 200);
    let seen = gw.test.requests.last().unwrap();
    assert_eq!(seen.header("authorization"), Some(format!("Bearer {token}").as_str()));
    gw.envoy.wait_for_audit(|r| r["server"] == "github").await;
    assert!(!gw.envoy.log().contains(pat), "the injected credential reached the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_wait_for_the_first_fetch_and_workers_share_it() {
    let key = TestKey::generate(Alg::Es256, "k1").unwrap();
    let idp = JwksServer::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
    idp.set_keys(&[&key]);
    // The IdP is slow: the first request arrives before the keys and must wait, not fail.
    idp.set_delay(Duration::from_millis(1500));
    let gw = start_with_idp(&idp, |c| {
        c["jwt"]["providers"][0]["jwks"]["refresh_secs"] = json!(300);
        c["jwt"]["providers"][0]["jwks"]["min_refetch_secs"] = json!(60);
        c["jwt"]["providers"][0]["jwks"]["timeout_ms"] = json!(2500);
    })
    .await;
    let token = key.sign(&claims("alice", &["developer"]));
    let started = Instant::now();
    assert_eq!(status_with(&gw, &token).await, 200, "the first request failed instead of waiting");
    assert!(idp.fetch_count() >= 1);
    // Envoy runs several VMs (2 workers and the main thread); they fetch once between them.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(idp.fetch_count(), 1, "workers fetched the JWKS separately");
    assert!(started.elapsed() >= Duration::from_millis(200));
}
