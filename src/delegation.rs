//! Delegated identity, for federated servers: the filter vouches for the caller of a
//! virtual server to the sidecar, and the sidecar presents that back on each call it
//! dispatches to a member server through the gateway, where the call is authenticated,
//! authorized and audited like one the caller made directly. The caller's token never
//! leaves the filter.
//!
//! An assertion is `d1.<payload>.<tag>`: the payload is base64url JSON (the virtual
//! server it was issued through, the caller's provider, user, roles, scopes and claims,
//! and when it expires: the token's own `exp`), the tag the first 16 bytes of an
//! HMAC-SHA256 of `d1.<payload>` under a key derived from the sidecar's secret, which
//! only the filter and the sidecar hold. It travels only between them: clients'
//! `x-mcp-*` headers are stripped, and member servers never get it.

use crate::jwt::Principal;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;
use std::fmt;

const VERSION: &str = "d1";
/// Bytes of the HMAC kept.
const TAG_BYTES: usize = 16;
/// The longest assertion accepted (a token's claims are at most `jwt.max_token_bytes`).
pub const MAX_BYTES: usize = 16 * 1024;

/// Issues and checks assertions.
#[derive(Clone)]
pub struct Delegation {
    key: [u8; 32],
}

impl fmt::Debug for Delegation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Delegation([redacted])")
    }
}

#[derive(Serialize, Deserialize)]
struct Payload {
    /// The virtual server it was issued through.
    v: String,
    p: String,
    u: String,
    r: Vec<String>,
    #[serde(default)]
    s: Vec<String>,
    #[serde(default)]
    c: Map<String, Value>,
    exp: u64,
}

/// Why an assertion was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DelegationError {
    Malformed,
    BadTag,
    Expired,
    /// A second identity beside it (an `Authorization` header), or a repeated one.
    Ambiguous,
    /// Not accepted for this server: the virtual server it came through does not have it
    /// as a member (or this gateway has no federated server).
    NotAMember {
        via: String,
        server: String,
    },
}

impl fmt::Display for DelegationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DelegationError::Malformed => f.write_str("malformed delegation"),
            DelegationError::BadTag => f.write_str("delegation not issued by this gateway"),
            DelegationError::Expired => f.write_str("delegation expired"),
            DelegationError::Ambiguous => f.write_str("a delegation must be the request's only identity"),
            DelegationError::NotAMember { via, server } => {
                write!(f, "a delegation through {via:?} does not reach server {server:?}")
            }
        }
    }
}

/// A checked assertion: the caller, and the virtual server it came through.
#[derive(Debug, Clone, PartialEq)]
pub struct Delegated {
    pub via: String,
    pub principal: Principal,
    pub exp: u64,
}

impl Delegation {
    /// The key for assertions, derived from the sidecar's secret (a key of its own, so an
    /// assertion's tag is never a value the secret itself signs elsewhere). `None` only if
    /// HMAC refused the key, which it never does.
    pub fn from_secret(secret: &str) -> Option<Delegation> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
        mac.update(b"mcpgw delegation key v1");
        Some(Delegation { key: mac.finalize().into_bytes().into() })
    }

    fn tag(&self, signed: &str) -> Option<String> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).ok()?;
        mac.update(signed.as_bytes());
        let full = mac.finalize().into_bytes();
        Some(URL_SAFE_NO_PAD.encode(full.get(..TAG_BYTES)?))
    }

    /// An assertion for `principal` calling through `via`, valid until `exp` (seconds
    /// since the epoch).
    pub fn issue(&self, via: &str, principal: &Principal, exp: u64) -> String {
        let payload = Payload {
            v: via.to_owned(),
            p: principal.provider.clone(),
            u: principal.user_id.clone(),
            r: principal.roles.clone(),
            s: principal.scopes.clone(),
            c: principal.claims.clone(),
            exp,
        };
        let json = serde_json::to_vec(&payload).unwrap_or_default();
        let signed = format!("{VERSION}.{}", URL_SAFE_NO_PAD.encode(json));
        let tag = self.tag(&signed).unwrap_or_default();
        format!("{signed}.{tag}")
    }

    /// Checks an assertion at `now` (seconds since the epoch), allowing `leeway` seconds
    /// past its expiry as for tokens.
    pub fn check(&self, assertion: &str, now: u64, leeway: u64) -> Result<Delegated, DelegationError> {
        if assertion.len() > MAX_BYTES {
            return Err(DelegationError::Malformed);
        }
        let (signed, tag) = assertion.rsplit_once('.').ok_or(DelegationError::Malformed)?;
        let payload = signed.strip_prefix("d1.").ok_or(DelegationError::Malformed)?;
        let expected = self.tag(signed).ok_or(DelegationError::BadTag)?;
        // Compared in constant time: the tag is a MAC.
        let same = !tag.is_empty()
            && expected.len() == tag.len()
            && expected.bytes().zip(tag.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if !same {
            return Err(DelegationError::BadTag);
        }
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| DelegationError::Malformed)?;
        let p: Payload = serde_json::from_slice(&json).map_err(|_| DelegationError::Malformed)?;
        if now > p.exp.saturating_add(leeway) {
            return Err(DelegationError::Expired);
        }
        let principal = Principal { user_id: p.u, roles: p.r, scopes: p.s, provider: p.p, claims: p.c };
        Ok(Delegated { via: p.v, principal, exp: p.exp })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alice() -> Principal {
        Principal {
            user_id: "alice".into(),
            roles: vec!["developer".into()],
            scopes: vec!["mcp".into()],
            provider: "demo".into(),
            claims: json!({"sub": "alice", "repos": ["acme/website"], "exp": 2000}).as_object().cloned().unwrap(),
        }
    }

    #[test]
    fn an_assertion_carries_the_caller_and_the_virtual_server() {
        let d = Delegation::from_secret("a-sidecar-secret-of-some-length").unwrap();
        let a = d.issue("all", &alice(), 2000);
        assert!(a.starts_with("d1.") && a.len() < 400, "{a}");
        let checked = d.check(&a, 1999, 0).unwrap();
        assert_eq!(checked.via, "all");
        assert_eq!(checked.principal, alice());
        assert_eq!(d.check(&a, 2030, 60).unwrap().exp, 2000, "within the leeway");
        assert_eq!(d.check(&a, 2061, 60), Err(DelegationError::Expired));
    }

    #[test]
    fn only_the_key_holder_can_issue_one() {
        let d = Delegation::from_secret("a-sidecar-secret-of-some-length").unwrap();
        let other = Delegation::from_secret("another-secret-of-some-length").unwrap();
        let a = d.issue("all", &alice(), 2000);
        assert_eq!(other.check(&a, 0, 0), Err(DelegationError::BadTag));
        // Any change to the payload (another user, more roles) breaks the tag.
        let (signed, tag) = a.rsplit_once('.').unwrap();
        let mut forged: Payload = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&signed[3..]).unwrap()).unwrap();
        forged.r.push("admin".into());
        let forged = format!("d1.{}.{tag}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap()));
        assert_eq!(d.check(&forged, 0, 0), Err(DelegationError::BadTag));
        for bad in ["", "d1", "d1..", "d2.e30.AAAA", &format!("{signed}.{}", &tag[1..]), &"x".repeat(MAX_BYTES + 1)] {
            assert!(d.check(bad, 0, 0).is_err(), "{bad}");
        }
        assert!(!format!("{d:?}").contains(&format!("{:?}", d.key)), "Debug must not print the key");
    }
}
