//! Bearer-token authentication: JWT signature, algorithm allow-list and claim checks.
//!
//! Every key is bound to exactly one algorithm at configure time, and a token is only
//! ever checked with keys bound to the algorithm its header names. That closes `alg:
//! none` (no key has it) and algorithm confusion (an RSA public key is never used as an
//! HMAC secret).

use chrono::{DateTime, Utc};
use jwt_compact::alg::{
    Ed25519, Es256, Hs256, Hs256Key, Hs384, Hs384Key, Hs512, Hs512Key, Rsa, RsaPublicKey,
};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{AlgorithmExt, Claims, TimeOptions, UntrustedToken, ValidationError};
use serde_json::{Map, Value};
use std::fmt;
use std::time::SystemTime;

/// Why a token was refused. The `Display` text goes to the audit log and, being about
/// the caller's own token, to the caller; it never contains the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    MissingToken,
    MultipleAuthorizationHeaders,
    NotBearer,
    EmptyToken,
    TooLarge { limit: usize },
    Malformed,
    AlgorithmNotAllowed(String),
    UnknownKeyId,
    BadSignature,
    MissingExpiry,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingSubject,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::MissingToken => write!(f, "missing bearer token"),
            AuthError::MultipleAuthorizationHeaders => {
                write!(f, "more than one Authorization header")
            }
            AuthError::NotBearer => write!(f, "Authorization scheme must be Bearer"),
            AuthError::EmptyToken => write!(f, "empty bearer token"),
            AuthError::TooLarge { limit } => write!(f, "token longer than {limit} bytes"),
            AuthError::Malformed => write!(f, "malformed token"),
            AuthError::AlgorithmNotAllowed(alg) => {
                write!(f, "token algorithm {alg:?} is not allowed")
            }
            AuthError::UnknownKeyId => write!(f, "token signed with an unknown key"),
            AuthError::BadSignature => write!(f, "invalid token signature"),
            AuthError::MissingExpiry => write!(f, "token has no exp claim"),
            AuthError::Expired => write!(f, "token expired"),
            AuthError::NotYetValid => write!(f, "token not yet valid"),
            AuthError::WrongIssuer => write!(f, "token issuer not accepted"),
            AuthError::WrongAudience => write!(f, "token audience not accepted"),
            AuthError::MissingSubject => write!(f, "token has no user id claim"),
        }
    }
}

/// Who is calling, as established by a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub roles: Vec<String>,
}

/// Signature algorithms the gateway verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Hs256,
    Hs384,
    Hs512,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    EdDsa,
}

impl Alg {
    pub fn parse(name: &str) -> Option<Alg> {
        Some(match name {
            "HS256" => Alg::Hs256,
            "HS384" => Alg::Hs384,
            "HS512" => Alg::Hs512,
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Hs384 => "HS384",
            Alg::Hs512 => "HS512",
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    pub fn is_hmac(self) -> bool {
        matches!(self, Alg::Hs256 | Alg::Hs384 | Alg::Hs512)
    }

    /// Shortest HMAC secret accepted (RFC 7518 3.2: at least the hash output size).
    fn min_secret_len(self) -> usize {
        match self {
            Alg::Hs384 => 48,
            Alg::Hs512 => 64,
            _ => 32,
        }
    }

    fn rsa(self) -> Option<Rsa> {
        Some(match self {
            Alg::Rs256 => Rsa::rs256(),
            Alg::Rs384 => Rsa::rs384(),
            Alg::Rs512 => Rsa::rs512(),
            Alg::Ps256 => Rsa::ps256(),
            Alg::Ps384 => Rsa::ps384(),
            Alg::Ps512 => Rsa::ps512(),
            _ => return None,
        })
    }
}

/// Decoded key material, bound to one algorithm.
enum Material {
    Hs256(Hs256Key),
    Hs384(Hs384Key),
    Hs512(Hs512Key),
    Rsa(Rsa, Box<RsaPublicKey>),
    Es256(Box<<Es256 as jwt_compact::Algorithm>::VerifyingKey>),
    Ed25519(Box<<Ed25519 as jwt_compact::Algorithm>::VerifyingKey>),
}

/// A verification key. `Debug` never prints key material.
pub struct Key {
    kid: Option<String>,
    alg: Alg,
    material: Material,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg.name())
            .finish_non_exhaustive()
    }
}

impl Key {
    /// An HMAC key from a shared secret.
    pub fn from_secret(kid: Option<String>, alg: Alg, secret: &[u8]) -> Result<Key, String> {
        if secret.len() < alg.min_secret_len() {
            return Err(format!(
                "{} secret must be at least {} bytes, got {}",
                alg.name(),
                alg.min_secret_len(),
                secret.len()
            ));
        }
        let material = match alg {
            Alg::Hs256 => Material::Hs256(Hs256Key::new(secret)),
            Alg::Hs384 => Material::Hs384(Hs384Key::new(secret)),
            Alg::Hs512 => Material::Hs512(Hs512Key::new(secret)),
            _ => {
                return Err(format!(
                    "{} does not use a shared secret; use \"jwk\"",
                    alg.name()
                ))
            }
        };
        Ok(Key { kid, alg, material })
    }

    /// A key from a JSON Web Key (RFC 7517). The key type must fit `alg`.
    pub fn from_jwk(kid: Option<String>, alg: Alg, jwk: &Value) -> Result<Key, String> {
        let parsed: JsonWebKey<'_> =
            serde_json::from_value(jwk.clone()).map_err(|e| format!("not a valid JWK: {e}"))?;
        if let Some(jwk_alg) = jwk.get("alg").and_then(Value::as_str) {
            if jwk_alg != alg.name() {
                return Err(format!(
                    "JWK says alg {jwk_alg:?} but the key is configured for {}",
                    alg.name()
                ));
            }
        }
        let kid = kid.or_else(|| jwk.get("kid").and_then(Value::as_str).map(str::to_owned));
        let wrong =
            |e: jwt_compact::jwk::JwkError| format!("JWK does not hold a {} key: {e}", alg.name());
        let material = match alg {
            Alg::Hs256 | Alg::Hs384 | Alg::Hs512 => {
                let key = Hs256Key::try_from(&parsed).map_err(wrong)?;
                return Key::from_secret(kid, alg, key.as_ref());
            }
            Alg::Es256 => Material::Es256(Box::new((&parsed).try_into().map_err(wrong)?)),
            Alg::EdDsa => Material::Ed25519(Box::new((&parsed).try_into().map_err(wrong)?)),
            _ => {
                let rsa = alg.rsa().ok_or("unsupported algorithm")?;
                let key = RsaPublicKey::try_from(&parsed).map_err(wrong)?;
                Material::Rsa(rsa, Box::new(key))
            }
        };
        Ok(Key { kid, alg, material })
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// Checks the signature (and that the header names this key's algorithm).
    fn verify(
        &self,
        token: &UntrustedToken<'_>,
    ) -> Result<Claims<Map<String, Value>>, ValidationError> {
        type C = Map<String, Value>;
        let token = match &self.material {
            Material::Hs256(k) => Hs256.validator::<C>(k).validate(token)?,
            Material::Hs384(k) => Hs384.validator::<C>(k).validate(token)?,
            Material::Hs512(k) => Hs512.validator::<C>(k).validate(token)?,
            Material::Rsa(alg, k) => alg.validator::<C>(k.as_ref()).validate(token)?,
            Material::Es256(k) => Es256.validator::<C>(k.as_ref()).validate(token)?,
            Material::Ed25519(k) => Ed25519.validator::<C>(k.as_ref()).validate(token)?,
        };
        Ok(token.into_parts().1)
    }
}

/// Checks tokens against a set of keys and one issuer's rules.
#[derive(Debug)]
pub struct Verifier {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub leeway_secs: u32,
    pub max_token_bytes: usize,
    /// Dotted path of the claim that holds the user id.
    pub user_claim: Vec<String>,
    /// Dotted path of the claim that holds roles (array, or space-separated string).
    pub roles_claim: Vec<String>,
    pub keys: Vec<Key>,
}

impl Verifier {
    /// Verifies a compact JWT and returns who it names.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::EmptyToken);
        }
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge {
                limit: self.max_token_bytes,
            });
        }
        let untrusted = UntrustedToken::new(token).map_err(|_| AuthError::Malformed)?;
        let alg = Alg::parse(untrusted.algorithm())
            .ok_or_else(|| AuthError::AlgorithmNotAllowed(printable(untrusted.algorithm())))?;
        let kid = untrusted.header().key_id.as_deref();
        let mut candidates = self
            .keys
            .iter()
            .filter(|k| kid.is_none() || k.kid() == kid)
            .peekable();
        if candidates.peek().is_none() {
            return Err(AuthError::UnknownKeyId);
        }
        let mut candidates = candidates.filter(|k| k.alg == alg).peekable();
        if candidates.peek().is_none() {
            return Err(AuthError::AlgorithmNotAllowed(alg.name().to_owned()));
        }
        let mut claims = None;
        let mut error = AuthError::BadSignature;
        for key in candidates {
            match key.verify(&untrusted) {
                Ok(c) => {
                    claims = Some(c);
                    break;
                }
                Err(ValidationError::MalformedClaims(_)) => error = AuthError::Malformed,
                Err(_) => {}
            }
        }
        let claims = claims.ok_or(error)?;
        self.check_claims(&claims, now)?;
        let user_id = lookup(&claims.custom, &self.user_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::MissingSubject)?
            .to_owned();
        let roles = match lookup(&claims.custom, &self.roles_claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        Ok(Principal { user_id, roles })
    }

    fn check_claims(
        &self,
        claims: &Claims<Map<String, Value>>,
        now: SystemTime,
    ) -> Result<(), AuthError> {
        let now: DateTime<Utc> = now.into();
        let options = TimeOptions::new(
            chrono::Duration::seconds(i64::from(self.leeway_secs)),
            move || now,
        );
        claims.validate_expiration(&options).map_err(|e| match e {
            ValidationError::NoClaim(_) => AuthError::MissingExpiry,
            _ => AuthError::Expired,
        })?;
        if claims.not_before.is_some() {
            claims
                .validate_maturity(&options)
                .map_err(|_| AuthError::NotYetValid)?;
        }
        if claims.custom.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(AuthError::WrongIssuer);
        }
        let audience_ok = match claims.custom.get("aud") {
            Some(Value::String(aud)) => self.audiences.iter().any(|a| a == aud),
            Some(Value::Array(auds)) => auds
                .iter()
                .filter_map(Value::as_str)
                .any(|aud| self.audiences.iter().any(|a| a == aud)),
            _ => false,
        };
        if !audience_ok {
            return Err(AuthError::WrongAudience);
        }
        Ok(())
    }
}

/// Follows a dotted claim path such as `realm_access.roles`.
fn lookup<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(claims.get(first)?, |v, seg| v.get(seg))
}

/// An attacker-chosen header value, made safe and short for a log line.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect()
}

/// Splits an `Authorization` header value into its bearer token. The scheme is
/// case-insensitive (RFC 7235), so `bearer x` is accepted.
pub fn bearer_token(header: &str) -> Result<&str, AuthError> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NotBearer);
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(AuthError::EmptyToken);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwt_compact::alg::Hs256Key;
    use jwt_compact::{Claims, Header};
    use serde_json::json;
    use std::time::Duration;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn verifier() -> Verifier {
        Verifier {
            issuer: "iss-a".into(),
            audiences: vec!["gw".into()],
            leeway_secs: 60,
            max_token_bytes: 4096,
            user_claim: vec!["sub".into()],
            roles_claim: vec!["realm_access".into(), "roles".into()],
            keys: vec![Key::from_secret(Some("k1".into()), Alg::Hs256, SECRET).unwrap()],
        }
    }

    fn claims(extra: Value) -> Value {
        let mut base = json!({
            "iss": "iss-a", "aud": "gw", "sub": "alice",
            "realm_access": {"roles": ["developer"]},
            "exp": 1_800_000_600, "nbf": 1_799_999_000,
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        base
    }

    fn sign(kid: Option<&str>, secret: &[u8], payload: Value) -> String {
        let mut header = Header::empty();
        if let Some(kid) = kid {
            header = header.with_key_id(kid);
        }
        let mut c: Claims<Map<String, Value>> = Claims::new(Map::new());
        c.expiration = payload["exp"]
            .as_i64()
            .map(|t| DateTime::from_timestamp(t, 0).unwrap());
        c.not_before = payload["nbf"]
            .as_i64()
            .map(|t| DateTime::from_timestamp(t, 0).unwrap());
        let mut custom = payload.as_object().unwrap().clone();
        custom.remove("exp");
        custom.remove("nbf");
        c.custom = custom;
        Hs256.token(&header, &c, &Hs256Key::new(secret)).unwrap()
    }

    #[test]
    fn accepts_a_valid_token_and_maps_claims() {
        let p = verifier()
            .verify(&sign(Some("k1"), SECRET, claims(json!({}))), now())
            .unwrap();
        assert_eq!(p.user_id, "alice");
        assert_eq!(p.roles, vec!["developer".to_string()]);
    }

    #[test]
    fn roles_may_be_a_space_separated_string() {
        let mut v = verifier();
        v.roles_claim = vec!["scope".into()];
        let t = sign(None, SECRET, claims(json!({"scope": "readonly developer"})));
        assert_eq!(
            v.verify(&t, now()).unwrap().roles,
            vec!["readonly", "developer"]
        );
    }

    #[test]
    fn rejects_each_bad_token_with_its_reason() {
        let v = verifier();
        let cases = vec![
            (
                sign(
                    Some("k1"),
                    b"another-secret-another-secret-xx",
                    claims(json!({})),
                ),
                AuthError::BadSignature,
            ),
            (
                sign(Some("nope"), SECRET, claims(json!({}))),
                AuthError::UnknownKeyId,
            ),
            (
                sign(None, SECRET, claims(json!({"exp": 1_799_999_000}))),
                AuthError::Expired,
            ),
            (
                sign(None, SECRET, claims(json!({"exp": null}))),
                AuthError::MissingExpiry,
            ),
            (
                sign(None, SECRET, claims(json!({"nbf": 1_800_000_100}))),
                AuthError::NotYetValid,
            ),
            (
                sign(None, SECRET, claims(json!({"iss": "evil"}))),
                AuthError::WrongIssuer,
            ),
            (
                sign(None, SECRET, claims(json!({"aud": ["x", "y"]}))),
                AuthError::WrongAudience,
            ),
            (
                sign(None, SECRET, claims(json!({"sub": ""}))),
                AuthError::MissingSubject,
            ),
            ("not.a.jwt".into(), AuthError::Malformed),
            ("a".repeat(5000), AuthError::TooLarge { limit: 4096 }),
            (String::new(), AuthError::EmptyToken),
        ];
        for (token, expected) in cases {
            assert_eq!(v.verify(&token, now()), Err(expected.clone()), "{expected}");
        }
    }

    #[test]
    fn leeway_applies_to_exp_and_nbf() {
        let v = verifier();
        let t = sign(None, SECRET, claims(json!({"exp": 1_799_999_970})));
        assert!(v.verify(&t, now()).is_ok());
        let t = sign(None, SECRET, claims(json!({"nbf": 1_800_000_030})));
        assert!(v.verify(&t, now()).is_ok());
    }

    #[test]
    fn rejects_alg_none_and_unlisted_algorithms() {
        let v = verifier();
        let valid = sign(None, SECRET, claims(json!({})));
        let payload = valid.split('.').nth(1).unwrap();
        // {"alg":"none"}
        let none = format!("eyJhbGciOiJub25lIn0.{payload}.");
        assert_eq!(
            v.verify(&none, now()),
            Err(AuthError::AlgorithmNotAllowed("none".into()))
        );
        // {"alg":"RS256"} against a verifier holding only an HS256 key.
        let rs = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.AAAA");
        assert_eq!(
            v.verify(&rs, now()),
            Err(AuthError::AlgorithmNotAllowed("RS256".into()))
        );
    }

    #[test]
    fn audience_may_be_an_array() {
        let t = sign(None, SECRET, claims(json!({"aud": ["other", "gw"]})));
        assert!(verifier().verify(&t, now()).is_ok());
    }

    #[test]
    fn short_hmac_secrets_are_refused() {
        assert!(Key::from_secret(None, Alg::Hs256, b"short").is_err());
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_token_required() {
        assert_eq!(bearer_token("Bearer abc"), Ok("abc"));
        assert_eq!(bearer_token("bearer abc"), Ok("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Ok("abc"));
        assert_eq!(bearer_token("Bearer "), Err(AuthError::EmptyToken));
        assert_eq!(bearer_token("Bearer"), Err(AuthError::EmptyToken));
        assert_eq!(bearer_token("Basic abc"), Err(AuthError::NotBearer));
    }

    #[test]
    fn key_debug_hides_material() {
        let k = Key::from_secret(Some("k1".into()), Alg::Hs256, SECRET).unwrap();
        let dbg = format!("{k:?}");
        assert!(!dbg.contains("0123456789"), "{dbg}");
    }
}
