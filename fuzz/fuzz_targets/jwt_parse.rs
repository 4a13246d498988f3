//! Token parsing and verification (`jwt::bearer_token`, `jwt::Verifier::verify`,
//! `jwt::KeySet::from_jwks`) with an HS256 provider: no panic, and a token is only ever
//! accepted when its claims really say what acceptance promises (issuer, audience,
//! unexpired, a user id), and the cached answer is the first answer.
//!
//! Input: byte 0 picks the mode, the rest is its data:
//! - 0: an `Authorization` header value, verified as is;
//! - 1: header JSON, a 0xFF byte, claims JSON; the target encodes and signs them with the
//!   provider's key, so the claim checks are reached with any content;
//! - 2: a JWKS document.
#![no_main]

use base64ct::{Base64UrlUnpadded, Encoding};
use jwt_compact::alg::{Hs256, Hs256Key};
use jwt_compact::{Algorithm, AlgorithmSignature};
use libfuzzer_sys::fuzz_target;
use mcp_gateway::jwt::{self, Alg, ClaimMapping, Key, KeySet, KeyStore, Provider, Verifier};
use serde_json::Value;
use std::time::{Duration, SystemTime};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const ISSUER: &str = "iss-a";
const AUDIENCE: &str = "gw";
const LEEWAY_SECS: u32 = 60;
/// 2027-01-15, as in the unit tests.
const NOW_SECS: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let Ok(header) = std::str::from_utf8(data) else {
                return;
            };
            if let Ok(token) = jwt::bearer_token(header) {
                assert!(!token.is_empty() && token.trim() == token && header.contains(token));
                check(token);
            }
            check(header);
        }
        1 => {
            let (header, claims) = match data.iter().position(|&b| b == 0xff) {
                Some(at) => (&data[..at], &data[at + 1..]),
                None => (&br#"{"alg":"HS256","kid":"k1"}"#[..], data),
            };
            let signed =
                format!("{}.{}", Base64UrlUnpadded::encode_string(header), Base64UrlUnpadded::encode_string(claims));
            let signature = Hs256.sign(&Hs256Key::new(SECRET), signed.as_bytes());
            check(&format!("{signed}.{}", Base64UrlUnpadded::encode_string(&signature.as_bytes())));
        }
        _ => {
            let all = [
                Alg::Hs256,
                Alg::Hs384,
                Alg::Hs512,
                Alg::Rs256,
                Alg::Rs384,
                Alg::Rs512,
                Alg::Ps256,
                Alg::Ps384,
                Alg::Ps512,
                Alg::Es256,
                Alg::EdDsa,
            ];
            if let Ok((keys, _skipped)) = KeySet::from_jwks(data, &all) {
                assert!(!keys.keys.is_empty(), "an accepted JWKS has a key");
                for key in &keys.keys {
                    assert!(all.contains(&key.alg()));
                    let _ = format!("{key:?}");
                }
            }
        }
    }
});

fn verifier() -> Verifier {
    let provider = Provider {
        name: "a".into(),
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        algorithms: vec![Alg::Hs256],
        claims: ClaimMapping {
            user: vec!["sub".into()],
            roles: vec!["realm_access".into(), "roles".into()],
            role_map: None,
        },
        static_keys: vec![Key::from_secret(Some("k1".into()), Alg::Hs256, SECRET).expect("HS256 key")],
        jwks: None,
    };
    Verifier { providers: vec![provider], leeway_secs: LEEWAY_SECS, max_token_bytes: 8192 }
}

fn check(token: &str) {
    let verifier = verifier();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    let mut store = KeyStore::new(1, 4);
    let first = verifier.verify(token, now, &mut store);
    let again = verifier.verify(token, now, &mut store);
    assert_eq!(first, again, "the cache changed the answer");
    let Ok(principal) = first else {
        return;
    };

    // Accepted: the token is a signed HS256 JWS whose claims pass every check.
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        panic!("accepted a token that is not three segments: {token:?}");
    };
    let header: Value =
        decode(header).unwrap_or_else(|| panic!("accepted a token with an unreadable header: {token:?}"));
    assert_eq!(header.get("alg").and_then(Value::as_str), Some("HS256"), "{header}");
    if let Some(kid) = header.get("kid") {
        assert_eq!(kid, "k1", "{header}");
    }
    let claims: Value = decode(payload).unwrap_or_else(|| panic!("accepted unreadable claims: {token:?}"));
    assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISSUER), "{claims}");
    let exp = claims.get("exp").and_then(Value::as_f64).unwrap_or_else(|| panic!("accepted without exp: {claims}"));
    assert!(exp + f64::from(LEEWAY_SECS) >= NOW_SECS as f64, "accepted an expired token: {claims}");
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_f64().unwrap_or_else(|| panic!("accepted a non-numeric nbf: {claims}"));
        assert!(nbf - f64::from(LEEWAY_SECS) <= NOW_SECS as f64, "accepted a token not yet valid: {claims}");
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == AUDIENCE,
        Some(Value::Array(auds)) => auds.iter().any(|a| a == AUDIENCE),
        _ => false,
    };
    assert!(audience_ok, "accepted for another audience: {claims}");
    assert_eq!(Some(principal.user_id.as_str()), claims.get("sub").and_then(Value::as_str), "{claims}");
    assert!(!principal.user_id.is_empty());
}

fn decode(segment: &str) -> Option<Value> {
    serde_json::from_slice(&Base64UrlUnpadded::decode_vec(segment).ok()?).ok()
}
