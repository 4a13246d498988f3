//! Bearer-token authentication: JWT signature, algorithm allow-list and claim checks.
//!
//! Every key is bound to exactly one algorithm when it is loaded, and a token is only
//! ever checked with keys bound to the algorithm its header names, among the algorithms
//! its provider allows. That closes `alg: none` (no key has it) and algorithm confusion
//! (an RSA public key is never used as an HMAC secret).

use crate::claims;
use crate::config::{
    err, ConfigError, RawClaims, RawJwks, RawJwt, RawKey, RawProvider, MAX_KEY_WAIT_MS, MAX_LEEWAY_SECS,
};
use crate::fast_p256::{FastEs256, FastP256Key};
use crate::fast_rsa::{check_public_key, FastRsa, FastRsaKey};
use chrono::{DateTime, Utc};
use jwt_compact::alg::{Ed25519, Hs256, Hs256Key, Hs384, Hs384Key, Hs512, Hs512Key};
use jwt_compact::jwk::{JsonWebKey, KeyType};
use jwt_compact::{AlgorithmExt, Claims, TimeOptions, UntrustedToken, ValidationError};
use lru::LruCache;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

/// Why a token was refused. The `Display` text goes to the audit log and, being about
/// the caller's own token, to the caller; it never contains the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    MissingToken,
    MultipleAuthorizationHeaders,
    NotBearer,
    EmptyToken,
    TooLarge {
        limit: usize,
    },
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
    /// A federated server's delegation that does not hold (see [`crate::delegation`]).
    Delegation(crate::delegation::DelegationError),
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
            AuthError::Delegation(e) => write!(f, "{e}"),
        }
    }
}

/// Who is calling, as established by a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub roles: Vec<String>,
    /// OAuth scopes from `scope` (space-separated) or `scp` (array).
    pub scopes: Vec<String>,
    /// Name of the provider that issued the token.
    pub provider: String,
    /// All claims (for resource policies that name a claim).
    pub claims: Map<String, Value>,
}

/// Signature algorithms the gateway verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    pub const ASYMMETRIC: [Alg; 8] =
        [Alg::Rs256, Alg::Rs384, Alg::Rs512, Alg::Ps256, Alg::Ps384, Alg::Ps512, Alg::Es256, Alg::EdDsa];

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

    /// The JWK key type this algorithm needs.
    fn key_type(self) -> KeyType {
        match self {
            Alg::Hs256 | Alg::Hs384 | Alg::Hs512 => KeyType::Symmetric,
            Alg::Es256 => KeyType::EllipticCurve,
            Alg::EdDsa => KeyType::KeyPair,
            _ => KeyType::Rsa,
        }
    }

    /// Shortest HMAC secret accepted (RFC 7518 3.2: at least the hash output size).
    fn min_secret_len(self) -> usize {
        match self {
            Alg::Hs384 => 48,
            Alg::Hs512 => 64,
            _ => 32,
        }
    }

    fn fast_rsa(self) -> Option<FastRsa> {
        Some(match self {
            Alg::Rs256 => FastRsa::rs256(),
            Alg::Rs384 => FastRsa::rs384(),
            Alg::Rs512 => FastRsa::rs512(),
            Alg::Ps256 => FastRsa::ps256(),
            Alg::Ps384 => FastRsa::ps384(),
            Alg::Ps512 => FastRsa::ps512(),
            _ => return None,
        })
    }
}

/// Decoded key material, bound to one algorithm.
enum Material {
    Hs256(Hs256Key),
    Hs384(Hs384Key),
    Hs512(Hs512Key),
    /// RS* (PKCS#1 v1.5) and PS* (PSS): our own faster verifier.
    FastRsa(FastRsa, Box<FastRsaKey>),
    /// ES256: our own faster verifier; the key holds its precomputed tables.
    Es256(Box<FastP256Key>),
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
        f.debug_struct("Key").field("kid", &self.kid).field("alg", &self.alg.name()).finish_non_exhaustive()
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
            _ => return Err(format!("{} does not use a shared secret; use \"jwk\"", alg.name())),
        };
        Ok(Key { kid, alg, material })
    }

    /// A key from a JSON Web Key (RFC 7517) for one algorithm. The key type must fit.
    pub fn from_jwk(kid: Option<String>, alg: Alg, jwk: &Value) -> Result<Key, String> {
        let parsed: JsonWebKey<'_> =
            serde_json::from_value(jwk.clone()).map_err(|e| format!("not a valid JWK: {e}"))?;
        if let Some(jwk_alg) = jwk.get("alg").and_then(Value::as_str) {
            if jwk_alg != alg.name() {
                return Err(format!("JWK says alg {jwk_alg:?} but the key is used for {}", alg.name()));
            }
        }
        if parsed.key_type() != alg.key_type() {
            return Err(format!("JWK key type does not fit {}", alg.name()));
        }
        let kid = kid.or_else(|| jwk.get("kid").and_then(Value::as_str).map(str::to_owned));
        let wrong = |e: jwt_compact::jwk::JwkError| format!("JWK does not hold a {} key: {e}", alg.name());
        let material = match alg {
            Alg::Hs256 | Alg::Hs384 | Alg::Hs512 => {
                let key = Hs256Key::try_from(&parsed).map_err(wrong)?;
                return Key::from_secret(kid, alg, key.as_ref());
            }
            Alg::Es256 => Material::Es256(Box::new(
                FastP256Key::try_from(&parsed).map_err(|e| format!("JWK does not hold an ES256 key: {e}"))?,
            )),
            Alg::EdDsa => Material::Ed25519(Box::new((&parsed).try_into().map_err(wrong)?)),
            _ => {
                if let JsonWebKey::Rsa { modulus, public_exponent, .. } = &parsed {
                    check_public_key(modulus, public_exponent)?;
                }
                let fast = alg.fast_rsa().ok_or("unsupported algorithm")?;
                Material::FastRsa(
                    fast,
                    Box::new(FastRsaKey::try_from(&parsed).map_err(|e| format!("JWK does not hold an RSA key: {e}"))?),
                )
            }
        };
        Ok(Key { kid, alg, material })
    }

    /// The keys a JWK stands for among `allowed` algorithms: one for its `alg` when it
    /// names one, else one per allowed algorithm its key type fits.
    pub fn from_jwk_allowed(jwk: &Value, allowed: &[Alg]) -> Result<Vec<Key>, String> {
        let algs: Vec<Alg> = match jwk.get("alg").and_then(Value::as_str) {
            Some(name) => {
                let alg = Alg::parse(name).ok_or_else(|| format!("unsupported alg {name:?}"))?;
                if !allowed.contains(&alg) {
                    return Ok(Vec::new());
                }
                vec![alg]
            }
            None => {
                let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or_default();
                allowed
                    .iter()
                    .copied()
                    .filter(|a| !a.is_hmac())
                    .filter(|a| match a.key_type() {
                        KeyType::Rsa => kty == "RSA",
                        KeyType::EllipticCurve => kty == "EC",
                        KeyType::KeyPair => kty == "OKP",
                        _ => false,
                    })
                    .collect()
            }
        };
        algs.into_iter().map(|alg| Key::from_jwk(None, alg, jwk)).collect()
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// Checks the signature (and that the header names this key's algorithm).
    fn verify(&self, token: &UntrustedToken<'_>) -> Result<Claims<Map<String, Value>>, ValidationError> {
        type C = Map<String, Value>;
        let token = match &self.material {
            Material::Hs256(k) => Hs256.validator::<C>(k).validate(token)?,
            Material::Hs384(k) => Hs384.validator::<C>(k).validate(token)?,
            Material::Hs512(k) => Hs512.validator::<C>(k).validate(token)?,
            Material::FastRsa(alg, k) => alg.validator::<C>(k.as_ref()).validate(token)?,
            Material::Es256(k) => FastEs256.validator::<C>(k.as_ref()).validate(token)?,
            Material::Ed25519(k) => Ed25519.validator::<C>(k.as_ref()).validate(token)?,
        };
        Ok(token.into_parts().1)
    }

    /// Compiles a configured key (error fields are relative to it). `env` looks up the
    /// variables `secret_env` and `jwk_env` name.
    fn compile(k: RawKey, env: &dyn Fn(&str) -> Option<String>) -> Result<Key, ConfigError> {
        let alg = Alg::parse(&k.alg).ok_or_else(|| {
            err(
                "alg",
                format!("unsupported algorithm {:?}; use one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, EdDSA", k.alg),
            )
        })?;
        let from_env = |field: &str, var: &str| {
            env(var).ok_or_else(|| err(field, format!("environment variable {var:?} is not set in the VM")))
        };
        let sources = [k.secret.is_some(), k.secret_env.is_some(), k.jwk.is_some(), k.jwk_env.is_some()];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(err("secret", "give exactly one of secret, secret_env, jwk, jwk_env"));
        }
        // Errors below never echo key material.
        if let Some(secret) = &k.secret {
            return Key::from_secret(k.kid, alg, secret.expose().as_bytes()).map_err(|m| err("secret", m));
        }
        if let Some(var) = &k.secret_env {
            let secret = from_env("secret_env", var)?;
            return Key::from_secret(k.kid, alg, secret.as_bytes()).map_err(|m| err("secret_env", m));
        }
        let (field, jwk) = match (k.jwk, &k.jwk_env) {
            (Some(jwk), _) => ("jwk", jwk.into_exposed()),
            (None, Some(var)) => {
                let text = from_env("jwk_env", var)?;
                let jwk = serde_json::from_str(&text)
                    .map_err(|e| err("jwk_env", format!("{var:?} does not hold JSON: {e}")))?;
                ("jwk_env", jwk)
            }
            (None, None) => return Err(err("jwk", "missing key source")),
        };
        Key::from_jwk(k.kid, alg, &jwk).map_err(|m| err(field, m))
    }
}

/// Keys parsed from a JWKS document (RFC 7517 section 5).
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

impl KeySet {
    /// Parses a JWKS, keeping keys usable with `allowed` algorithms. Keys that cannot be
    /// used (other algorithms, encryption keys, unsupported types) are skipped and named
    /// in the second value; a document with no usable key is an error.
    pub fn from_jwks(json: &[u8], allowed: &[Alg]) -> Result<(KeySet, Vec<String>), String> {
        let doc: Value = serde_json::from_slice(json).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let list = doc.get("keys").and_then(Value::as_array).ok_or("JWKS has no \"keys\" array")?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, jwk) in list.iter().enumerate() {
            let name = jwk.get("kid").and_then(Value::as_str).map_or_else(|| format!("#{i}"), str::to_owned);
            if jwk.get("use").and_then(Value::as_str).is_some_and(|u| u != "sig") {
                skipped.push(format!("{name}: not a signing key"));
                continue;
            }
            match Key::from_jwk_allowed(jwk, allowed) {
                Ok(k) if k.is_empty() => skipped.push(format!("{name}: algorithm not allowed")),
                Ok(k) => keys.extend(k),
                Err(e) => skipped.push(format!("{name}: {e}")),
            }
        }
        if keys.is_empty() {
            return Err(format!("JWKS holds no usable key ({})", skipped.join("; ")));
        }
        Ok((KeySet { keys }, skipped))
    }
}

/// Where a provider's roles come from.
#[derive(Debug, Clone)]
pub struct ClaimMapping {
    /// Dotted path of the claim that holds the user id.
    pub user: Vec<String>,
    /// Dotted path of the claim that holds roles (array, or space-separated string).
    pub roles: Vec<String>,
    /// When set, each value of the roles claim is mapped to these roles; values not in
    /// the map grant nothing.
    pub role_map: Option<BTreeMap<String, Vec<String>>>,
}

impl TryFrom<RawClaims> for ClaimMapping {
    type Error = ConfigError;

    fn try_from(raw: RawClaims) -> Result<ClaimMapping, ConfigError> {
        let path = |field: &str, path: &str| claims::parse_path(path).map_err(|m| err(field, m));
        Ok(ClaimMapping { user: path("user", &raw.user)?, roles: path("roles", &raw.roles)?, role_map: raw.role_map })
    }
}

/// A remote JWKS, fetched through an Envoy cluster.
#[derive(Debug, Clone)]
pub struct JwksSource {
    pub cluster: String,
    pub path: String,
    pub authority: String,
    /// Refresh at least this often, even when `Cache-Control: max-age` is longer.
    pub refresh: Duration,
    /// Never fetch more often than this: bounds refetches caused by unknown `kid`s and
    /// retries after failures.
    pub min_refetch: Duration,
    pub timeout: Duration,
}

impl TryFrom<RawJwks> for JwksSource {
    type Error = ConfigError;

    fn try_from(j: RawJwks) -> Result<JwksSource, ConfigError> {
        if j.cluster.is_empty() {
            return Err(err("cluster", "must not be empty"));
        }
        if !j.path.starts_with('/') {
            return Err(err("path", format!("{:?} must start with '/'", j.path)));
        }
        if j.min_refetch_secs == 0 || j.refresh_secs < j.min_refetch_secs {
            return Err(err("refresh_secs", "must be at least min_refetch_secs, which must be > 0"));
        }
        Ok(JwksSource {
            authority: j.authority.unwrap_or_else(|| j.cluster.clone()),
            cluster: j.cluster,
            path: j.path,
            refresh: Duration::from_secs(j.refresh_secs),
            min_refetch: Duration::from_secs(j.min_refetch_secs),
            timeout: Duration::from_millis(j.timeout_ms.max(1)),
        })
    }
}

/// A trusted token issuer.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Alg>,
    pub claims: ClaimMapping,
    /// Keys from the configuration.
    pub static_keys: Vec<Key>,
    pub jwks: Option<JwksSource>,
}

impl Provider {
    /// Compiles one provider (error fields are relative to it): its keys, the algorithms
    /// they may verify, its JWKS source and claim mapping.
    fn compile(p: RawProvider, env: &dyn Fn(&str) -> Option<String>) -> Result<Provider, ConfigError> {
        if p.name.is_empty() {
            return Err(err("name", "must not be empty"));
        }
        if p.issuer.is_empty() {
            return Err(err("issuer", "must not be empty"));
        }
        if p.audiences.is_empty() || p.audiences.iter().any(String::is_empty) {
            return Err(err("audiences", "needs at least one non-empty audience"));
        }
        let mut static_keys = p
            .keys
            .into_iter()
            .enumerate()
            .map(|(k, raw)| Key::compile(raw, env).map_err(|e| e.within(&format!("keys[{k}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        let algorithms: Vec<Alg> = match &p.algorithms {
            None => {
                let mut algs = Alg::ASYMMETRIC.to_vec();
                algs.extend(static_keys.iter().map(|k| k.alg()).filter(|a| a.is_hmac()));
                algs
            }
            Some(names) => names
                .iter()
                .enumerate()
                .map(|(n, name)| {
                    let at = format!("algorithms[{n}]");
                    let alg = Alg::parse(name).ok_or_else(|| err(&at, format!("unsupported algorithm {name:?}")))?;
                    let has_secret = static_keys.iter().any(|k| k.alg() == alg);
                    if alg.is_hmac() && !has_secret {
                        return Err(err(at, format!("{name} needs a shared secret in this provider's keys")));
                    }
                    Ok(alg)
                })
                .collect::<Result<_, _>>()?,
        };
        if algorithms.is_empty() {
            return Err(err("algorithms", "allows no algorithm"));
        }
        if let Some(k) = static_keys.iter().position(|k| !algorithms.contains(&k.alg())) {
            return Err(err(format!("keys[{k}].alg"), "algorithm not in this provider's algorithms"));
        }
        if let Some(doc) = &p.jwks_inline {
            let (set, _) = KeySet::from_jwks(doc.expose().to_string().as_bytes(), &algorithms)
                .map_err(|m| err("jwks_inline", m))?;
            static_keys.extend(set.keys);
        }
        let jwks = p.jwks.map(|j| JwksSource::try_from(j).map_err(|e| e.within("jwks"))).transpose()?;
        if static_keys.is_empty() && jwks.is_none() {
            return Err(err("keys", "a provider needs keys, jwks_inline or jwks"));
        }
        let claims = ClaimMapping::try_from(p.claims).map_err(|e| e.within("claims"))?;
        Ok(Provider { name: p.name, issuer: p.issuer, audiences: p.audiences, algorithms, claims, static_keys, jwks })
    }
}

/// Token checking for all providers.
#[derive(Debug)]
pub struct Verifier {
    pub providers: Vec<Provider>,
    pub leeway_secs: u32,
    pub max_token_bytes: usize,
}

impl Verifier {
    /// Compiles the `jwt` section (error fields are relative to it). `env` looks up the
    /// variables `*_env` fields name.
    pub fn compile(raw: RawJwt, env: &dyn Fn(&str) -> Option<String>) -> Result<Verifier, ConfigError> {
        if raw.leeway_secs > MAX_LEEWAY_SECS {
            return Err(err("leeway_secs", format!("must be at most {MAX_LEEWAY_SECS}, got {}", raw.leeway_secs)));
        }
        // The wait itself is the filter's (`Config::key_wait`); its bound is checked with
        // the rest of the section.
        if raw.key_wait_ms > MAX_KEY_WAIT_MS {
            return Err(err("key_wait_ms", format!("must be at most {MAX_KEY_WAIT_MS}, got {}", raw.key_wait_ms)));
        }
        if raw.providers.is_empty() {
            return Err(err("providers", "at least one provider is required"));
        }
        let mut issuers = HashSet::new();
        let providers = raw
            .providers
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let at = format!("providers[{i}]");
                if !issuers.insert(p.issuer.clone()) {
                    return Err(err(format!("{at}.issuer"), format!("duplicate issuer {:?}", p.issuer)));
                }
                Provider::compile(p, env).map_err(|e| e.within(&at))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Verifier { providers, leeway_secs: raw.leeway_secs, max_token_bytes: raw.max_token_bytes })
    }
}

/// Why a token could not be decided yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Invalid(AuthError),
    /// The provider's JWKS was never loaded.
    NoKeysYet {
        provider: usize,
    },
    /// The token names a key the provider's JWKS does not (yet) hold.
    UnknownKid {
        provider: usize,
    },
}

impl From<AuthError> for Verdict {
    fn from(e: AuthError) -> Self {
        Verdict::Invalid(e)
    }
}

/// Keys fetched at run time, one slot per provider, and the verified-token cache.
#[derive(Debug, Default)]
pub struct KeyStore {
    pub remote: Vec<Option<KeySet>>,
    pub cache: TokenCache,
}

impl KeyStore {
    pub fn new(providers: usize, cache_entries: usize) -> KeyStore {
        KeyStore { remote: (0..providers).map(|_| None).collect(), cache: TokenCache::new(cache_entries) }
    }

    /// Installs a provider's new key set. Cached verifications are dropped: a key that
    /// left the set must stop vouching for tokens at once.
    pub fn install(&mut self, provider: usize, keys: KeySet) {
        if let Some(slot) = self.remote.get_mut(provider) {
            *slot = Some(keys);
            self.cache.clear();
        }
    }
}

/// Verified tokens, keyed by SHA-256 of the token, so a session's repeated requests skip
/// signature checks. Bounded: when full, the least recently used entry goes. An entry
/// lives while its token would still verify (until `exp` plus the leeway) and no longer;
/// a token already past that is never inserted.
/// A verified token's principal, and until when the token verifies.
type CacheEntry = (Rc<Principal>, SystemTime);

#[derive(Debug, Default)]
pub struct TokenCache {
    /// `None` when the cache is off (`jwt.cache_entries` is 0).
    /// The principal is shared with the requests that hit: a hit copies nothing.
    /// Keyed by the token itself, compared whole on a hit: no hash stands in for it, so
    /// nothing about a collision needs arguing (and hashing a token with SHA-256 was a
    /// fifth of a cached call's cost). Entries are bounded in number; a token is at most
    /// `max_token_bytes`, like the claims its principal holds.
    entries: Option<LruCache<Box<str>, CacheEntry>>,
    #[cfg(test)]
    hits: u64,
    #[cfg(test)]
    misses: u64,
}

impl TokenCache {
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            entries: NonZeroUsize::new(capacity).map(LruCache::new),
            #[cfg(test)]
            hits: 0,
            #[cfg(test)]
            misses: 0,
        }
    }

    /// The principal of a cached token still in its lifetime (and marks it recently used).
    fn get(&mut self, key: &str, now: SystemTime) -> Option<Rc<Principal>> {
        let found = self.entries.as_mut().and_then(|entries| match entries.get(key) {
            Some((principal, until)) if now < *until => Some(principal.clone()),
            Some(_) => {
                entries.pop(key);
                None
            }
            None => None,
        });
        #[cfg(test)]
        match found {
            Some(_) => self.hits += 1,
            None => self.misses += 1,
        }
        found
    }

    /// Remembers a verified token until `until`; nothing when that has passed already.
    fn put(&mut self, key: &str, principal: Rc<Principal>, until: SystemTime, now: SystemTime) {
        if until <= now {
            return;
        }
        if let Some(entries) = self.entries.as_mut() {
            entries.put(key.into(), (principal, until));
        }
    }

    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, LruCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        if let Some(entries) = self.entries.as_mut() {
            entries.clear();
        }
    }
}

impl Verifier {
    /// Verifies a compact JWT and returns who it names.
    pub fn verify(&self, token: &str, now: SystemTime, store: &mut KeyStore) -> Result<Rc<Principal>, Verdict> {
        if token.is_empty() {
            return Err(AuthError::EmptyToken.into());
        }
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge { limit: self.max_token_bytes }.into());
        }
        if let Some(p) = store.cache.get(token, now) {
            return Ok(p);
        }
        let untrusted = UntrustedToken::new(token).map_err(|_| AuthError::Malformed)?;
        let alg = Alg::parse(untrusted.algorithm())
            .ok_or_else(|| AuthError::AlgorithmNotAllowed(printable(untrusted.algorithm())))?;
        // The issuer picks the provider (and so the keys) before anything is trusted.
        let unverified: Claims<Map<String, Value>> =
            untrusted.deserialize_claims_unchecked().map_err(|_| AuthError::Malformed)?;
        let issuer = unverified.custom.get("iss").and_then(Value::as_str);
        let (index, provider) = self
            .providers
            .iter()
            .enumerate()
            .find(|(_, p)| Some(p.issuer.as_str()) == issuer)
            .ok_or(AuthError::WrongIssuer)?;
        if !provider.algorithms.contains(&alg) {
            return Err(AuthError::AlgorithmNotAllowed(alg.name().to_owned()).into());
        }
        let remote = store.remote.get(index).and_then(Option::as_ref);
        if provider.jwks.is_some() && remote.is_none() && provider.static_keys.is_empty() {
            return Err(Verdict::NoKeysYet { provider: index });
        }
        let kid = untrusted.header().key_id.as_deref();
        let all = || provider.static_keys.iter().chain(remote.into_iter().flat_map(|s| s.keys.iter()));
        let with_kid: Vec<&Key> = all().filter(|k| kid.is_none() || k.kid() == kid).collect();
        if with_kid.is_empty() {
            return Err(match provider.jwks {
                Some(_) => Verdict::UnknownKid { provider: index },
                None => AuthError::UnknownKeyId.into(),
            });
        }
        let candidates: Vec<&Key> = with_kid.into_iter().filter(|k| k.alg == alg).collect();
        if candidates.is_empty() {
            // The kid exists, but for another algorithm (or key type).
            return Err(AuthError::AlgorithmNotAllowed(alg.name().to_owned()).into());
        }
        let claims = candidates.iter().find_map(|key| key.verify(&untrusted).ok()).ok_or(AuthError::BadSignature)?;
        let until = self.check_claims(provider, &claims, now)?;
        let mut principal = principal(provider, &claims.custom)?;
        // The token's `exp` (which the claims library keeps apart): delegations for
        // federated servers last as long as the token.
        if let Some(exp) = claims.expiration {
            principal.claims.entry("exp").or_insert_with(|| Value::from(exp.timestamp()));
        }
        let principal = Rc::new(principal);
        store.cache.put(token, principal.clone(), until, now);
        Ok(principal)
    }

    /// Checks time and audience claims; returns until when the token verifies (its `exp`
    /// plus the leeway).
    fn check_claims(
        &self,
        provider: &Provider,
        claims: &Claims<Map<String, Value>>,
        now: SystemTime,
    ) -> Result<SystemTime, AuthError> {
        let now_utc: DateTime<Utc> = now.into();
        let options = TimeOptions::new(chrono::Duration::seconds(i64::from(self.leeway_secs)), move || now_utc);
        claims.validate_expiration(&options).map_err(|e| match e {
            ValidationError::NoClaim(_) => AuthError::MissingExpiry,
            _ => AuthError::Expired,
        })?;
        if claims.not_before.is_some() {
            claims.validate_maturity(&options).map_err(|_| AuthError::NotYetValid)?;
        }
        let audience_ok = match claims.custom.get("aud") {
            Some(Value::String(aud)) => provider.audiences.iter().any(|a| a == aud),
            Some(Value::Array(auds)) => {
                auds.iter().filter_map(Value::as_str).any(|aud| provider.audiences.iter().any(|a| a == aud))
            }
            _ => false,
        };
        if !audience_ok {
            return Err(AuthError::WrongAudience);
        }
        // Computed without SystemTime arithmetic that could panic on a far-future exp (wasm's
        // SystemTime is u64 nanoseconds); such a token verifies, but is not cached.
        let until = claims
            .expiration
            .and_then(|exp| u64::try_from(exp.timestamp()).ok())
            .map(|exp| exp.saturating_add(u64::from(self.leeway_secs)))
            .and_then(|secs| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
            .unwrap_or(now);
        Ok(until)
    }
}

/// Who verified claims name, by the provider's claim mapping (also used by `mcpgw
/// explain` with claims given as JSON).
pub fn principal(provider: &Provider, claims: &Map<String, Value>) -> Result<Principal, AuthError> {
    let user_id = claims::lookup(claims, &provider.claims.user)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(AuthError::MissingSubject)?
        .to_owned();
    let raw_roles = strings(claims::lookup(claims, &provider.claims.roles));
    let roles = match &provider.claims.role_map {
        None => raw_roles,
        Some(map) => {
            let mut roles: Vec<String> = raw_roles.iter().filter_map(|r| map.get(r)).flatten().cloned().collect();
            roles.sort();
            roles.dedup();
            roles
        }
    };
    let mut scopes = strings(claims.get("scope"));
    scopes.extend(strings(claims.get("scp")));
    Ok(Principal { user_id, roles, scopes, provider: provider.name.clone(), claims: claims.clone() })
}

/// An array of strings, or a space-separated string.
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// An attacker-chosen header value, made safe and short for a log line.
fn printable(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_graphic()).take(32).collect()
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

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn provider(name: &str, issuer: &str) -> Provider {
        Provider {
            name: name.into(),
            issuer: issuer.into(),
            audiences: vec!["gw".into()],
            algorithms: vec![Alg::Hs256],
            claims: ClaimMapping {
                user: vec!["sub".into()],
                roles: vec!["realm_access".into(), "roles".into()],
                role_map: None,
            },
            static_keys: vec![Key::from_secret(Some("k1".into()), Alg::Hs256, SECRET).unwrap()],
            jwks: None,
        }
    }

    fn verifier() -> Verifier {
        Verifier { providers: vec![provider("a", "iss-a")], leeway_secs: 60, max_token_bytes: 4096 }
    }

    fn store() -> KeyStore {
        KeyStore::new(1, 16)
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
        sign_with(&Hs256, &Hs256Key::new(secret), kid, payload)
    }

    fn sign_with<A: jwt_compact::Algorithm>(alg: &A, key: &A::SigningKey, kid: Option<&str>, payload: Value) -> String {
        let mut header = Header::empty();
        if let Some(kid) = kid {
            header = header.with_key_id(kid);
        }
        let mut c: Claims<Map<String, Value>> = Claims::new(Map::new());
        c.expiration = payload["exp"].as_i64().map(|t| DateTime::from_timestamp(t, 0).unwrap());
        c.not_before = payload["nbf"].as_i64().map(|t| DateTime::from_timestamp(t, 0).unwrap());
        let mut custom = payload.as_object().unwrap().clone();
        custom.remove("exp");
        custom.remove("nbf");
        c.custom = custom;
        alg.token(&header, &c, key).unwrap()
    }

    fn verify(v: &Verifier, token: &str) -> Result<Principal, Verdict> {
        v.verify(token, now(), &mut store()).map(Rc::unwrap_or_clone)
    }

    #[test]
    fn accepts_a_valid_token_and_maps_claims() {
        let p = verify(&verifier(), &sign(Some("k1"), SECRET, claims(json!({"scope": "mcp:read mcp:write"})))).unwrap();
        assert_eq!(p.user_id, "alice");
        assert_eq!(p.roles, vec!["developer".to_string()]);
        assert_eq!(p.scopes, vec!["mcp:read", "mcp:write"]);
        assert_eq!(p.provider, "a");
    }

    #[test]
    fn roles_may_be_a_space_separated_string_mapped_to_roles() {
        let mut v = verifier();
        v.providers[0].claims.roles = vec!["scope".into()];
        let t = sign(None, SECRET, claims(json!({"scope": "readonly developer"})));
        assert_eq!(verify(&v, &t).unwrap().roles, vec!["readonly", "developer"]);
        let mut map = BTreeMap::new();
        map.insert("mcp:write".to_string(), vec!["developer".to_string()]);
        map.insert("mcp:read".to_string(), vec!["readonly".to_string()]);
        v.providers[0].claims.role_map = Some(map);
        let t = sign(None, SECRET, claims(json!({"scope": "openid mcp:write mcp:read"})));
        assert_eq!(verify(&v, &t).unwrap().roles, vec!["developer", "readonly"]);
        let t = sign(None, SECRET, claims(json!({"scope": "admin"})));
        assert!(verify(&v, &t).unwrap().roles.is_empty(), "unmapped values must grant nothing");
    }

    #[test]
    fn picks_the_provider_by_issuer() {
        let other_secret = b"another-secret-another-secret-xx";
        let mut v = verifier();
        let mut b = provider("b", "iss-b");
        b.static_keys = vec![Key::from_secret(Some("k1".into()), Alg::Hs256, other_secret).unwrap()];
        v.providers.push(b);
        let mut s = KeyStore::new(2, 16);
        let t = sign(Some("k1"), other_secret, claims(json!({"iss": "iss-b"})));
        assert_eq!(v.verify(&t, now(), &mut s).unwrap().provider, "b");
        // A token claiming provider a but signed with b's key fails.
        let t = sign(Some("k1"), other_secret, claims(json!({})));
        assert_eq!(v.verify(&t, now(), &mut s), Err(Verdict::Invalid(AuthError::BadSignature)));
    }

    #[test]
    fn rejects_each_bad_token_with_its_reason() {
        let v = verifier();
        let cases = vec![
            (sign(Some("k1"), b"another-secret-another-secret-xx", claims(json!({}))), AuthError::BadSignature),
            (sign(Some("nope"), SECRET, claims(json!({}))), AuthError::UnknownKeyId),
            (sign(None, SECRET, claims(json!({"exp": 1_799_999_000}))), AuthError::Expired),
            (sign(None, SECRET, claims(json!({"exp": null}))), AuthError::MissingExpiry),
            (sign(None, SECRET, claims(json!({"nbf": 1_800_000_100}))), AuthError::NotYetValid),
            (sign(None, SECRET, claims(json!({"iss": "evil"}))), AuthError::WrongIssuer),
            (sign(None, SECRET, claims(json!({"iss": null}))), AuthError::WrongIssuer),
            (sign(None, SECRET, claims(json!({"aud": ["x", "y"]}))), AuthError::WrongAudience),
            (sign(None, SECRET, claims(json!({"sub": ""}))), AuthError::MissingSubject),
            ("not.a.jwt".into(), AuthError::Malformed),
            ("a".repeat(5000), AuthError::TooLarge { limit: 4096 }),
            (String::new(), AuthError::EmptyToken),
        ];
        for (token, expected) in cases {
            assert_eq!(verify(&v, &token), Err(Verdict::Invalid(expected.clone())), "{expected}");
        }
    }

    #[test]
    fn leeway_applies_to_exp_and_nbf() {
        let v = verifier();
        assert!(verify(&v, &sign(None, SECRET, claims(json!({"exp": 1_799_999_970})))).is_ok());
        assert!(verify(&v, &sign(None, SECRET, claims(json!({"nbf": 1_800_000_030})))).is_ok());
    }

    #[test]
    fn rejects_alg_none_and_unlisted_algorithms() {
        let v = verifier();
        let valid = sign(None, SECRET, claims(json!({})));
        let payload = valid.split('.').nth(1).unwrap();
        // {"alg":"none"}
        let none = format!("eyJhbGciOiJub25lIn0.{payload}.");
        assert_eq!(verify(&v, &none), Err(Verdict::Invalid(AuthError::AlgorithmNotAllowed("none".into()))));
        // {"alg":"RS256"} against a provider allowing only HS256.
        let rs = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.AAAA");
        assert_eq!(verify(&v, &rs), Err(Verdict::Invalid(AuthError::AlgorithmNotAllowed("RS256".into()))));
    }

    #[test]
    fn remote_keys_missing_or_unknown_kid_ask_for_keys() {
        let mut v = verifier();
        v.providers[0].static_keys.clear();
        v.providers[0].jwks = Some(JwksSource {
            cluster: "idp".into(),
            path: "/jwks".into(),
            authority: "idp".into(),
            refresh: Duration::from_secs(300),
            min_refetch: Duration::from_secs(30),
            timeout: Duration::from_secs(2),
        });
        let t = sign(Some("k2"), SECRET, claims(json!({})));
        let mut s = store();
        assert_eq!(v.verify(&t, now(), &mut s), Err(Verdict::NoKeysYet { provider: 0 }));
        s.install(0, KeySet { keys: vec![Key::from_secret(Some("k1".into()), Alg::Hs256, SECRET).unwrap()] });
        assert_eq!(v.verify(&t, now(), &mut s), Err(Verdict::UnknownKid { provider: 0 }));
        s.install(0, KeySet { keys: vec![Key::from_secret(Some("k2".into()), Alg::Hs256, SECRET).unwrap()] });
        assert!(v.verify(&t, now(), &mut s).is_ok());
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn someone(user_id: &str) -> Principal {
        Principal { user_id: user_id.into(), roles: vec![], scopes: vec![], provider: "a".into(), claims: Map::new() }
    }

    #[test]
    fn cache_keeps_a_token_until_exp_plus_leeway_and_no_longer() {
        let v = verifier();
        let mut s = store();
        let t = sign(None, SECRET, claims(json!({})));
        assert!(v.verify(&t, now(), &mut s).is_ok());
        assert!(v.verify(&t, now(), &mut s).is_ok());
        assert_eq!((s.cache.hits, s.cache.misses), (1, 1));
        // exp is 1_800_000_600 and the leeway 60 s: inside the leeway the token still
        // verifies, so the cached entry serves until 1_800_000_660.
        assert!(v.verify(&t, at(1_800_000_659), &mut s).is_ok());
        assert_eq!(s.cache.hits, 2);
        // At exp + leeway the entry is gone; the token verifies once more the slow way
        // (the leeway is inclusive) but, with no lifetime left, is not cached again.
        assert!(v.verify(&t, at(1_800_000_660), &mut s).is_ok());
        assert_eq!((s.cache.hits, s.cache.misses), (2, 2));
        assert!(s.cache.is_empty());
        assert_eq!(v.verify(&t, at(1_800_000_661), &mut s), Err(Verdict::Invalid(AuthError::Expired)));
    }

    #[test]
    fn an_expired_token_is_never_cached() {
        let mut cache = TokenCache::new(4);
        cache.put("t1", Rc::new(someone("a")), at(100), at(100));
        cache.put("t2", Rc::new(someone("b")), at(99), at(100));
        assert!(cache.is_empty());
        cache.put("t3", Rc::new(someone("c")), at(101), at(100));
        assert_eq!(cache.get("t3", at(100)).map(|p| p.user_id.clone()), Some("c".into()));
        assert_eq!(cache.get("t3", at(101)), None, "an entry ends at its time");
        assert!(cache.is_empty(), "and is dropped");
    }

    #[test]
    fn cache_drops_the_least_recently_used_when_full() {
        let mut cache = TokenCache::new(2);
        cache.put("t1", Rc::new(someone("a")), at(200), at(100));
        cache.put("t2", Rc::new(someone("b")), at(200), at(100));
        assert!(cache.get("t1", at(100)).is_some());
        cache.put("t3", Rc::new(someone("c")), at(200), at(100));
        assert_eq!(cache.len(), 2);
        assert!(cache.get("t2", at(100)).is_none(), "b was used least recently");
        assert!(cache.get("t1", at(100)).is_some());
        assert!(cache.get("t3", at(100)).is_some());
    }

    #[test]
    fn only_the_identical_token_finds_a_cached_principal() {
        let mut cache = TokenCache::new(4);
        cache.put("aaa.bbb.ccc", Rc::new(someone("a")), at(200), at(100));
        assert!(cache.get("aaa.bbb.ccc", at(100)).is_some());
        for other in ["aaa.bbb.ccd", "aaa.bbb.cc", "aaa.bbb.ccc ", "AAA.bbb.ccc", ""] {
            assert!(cache.get(other, at(100)).is_none(), "{other:?}");
        }
    }

    #[test]
    fn a_cache_of_zero_entries_is_off() {
        let mut cache = TokenCache::new(0);
        cache.put("t1", Rc::new(someone("a")), at(200), at(100));
        assert!(cache.is_empty());
        assert!(cache.get("t1", at(100)).is_none());
        assert_eq!((cache.hits, cache.misses), (0, 1));
    }

    #[test]
    fn a_far_future_exp_verifies() {
        // Year 2603: past what wasm's SystemTime (u64 nanoseconds) can hold.
        let t = sign(None, SECRET, claims(json!({"exp": 20_000_000_000_i64})));
        assert!(verify(&verifier(), &t).is_ok());
    }

    #[test]
    fn cache_is_bounded_and_cleared_on_key_change() {
        let v = verifier();
        let mut s = KeyStore::new(1, 3);
        for i in 0..10 {
            let t = sign(None, SECRET, claims(json!({"sub": format!("u{i}")})));
            assert!(v.verify(&t, now(), &mut s).is_ok());
        }
        assert_eq!(s.cache.len(), 3);
        s.install(0, KeySet::default());
        assert!(s.cache.is_empty());
    }

    #[test]
    fn jwks_keys_bind_to_allowed_algorithms_only() {
        let jwks = json!({"keys": [
            {"kty": "oct", "k": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY", "kid": "h"},
            {"kty": "EC", "crv": "P-256", "kid": "e", "use": "enc",
             "x": "lIVJwqNELuRbCGOV8X8PuX5lK0N2HgUQfUoBHChYo9Q", "y": "XK1Zown3qyfKHp-qNqCiXFW6K883AKFMzW4TfILUqyA"},
            {"kty": "EC", "crv": "P-256", "kid": "s",
             "x": "lIVJwqNELuRbCGOV8X8PuX5lK0N2HgUQfUoBHChYo9Q", "y": "XK1Zown3qyfKHp-qNqCiXFW6K883AKFMzW4TfILUqyA"},
        ]});
        let (set, skipped) = KeySet::from_jwks(jwks.to_string().as_bytes(), &Alg::ASYMMETRIC).unwrap();
        assert_eq!(set.keys.len(), 1, "{skipped:?}");
        assert_eq!(set.keys[0].kid(), Some("s"));
        assert_eq!(set.keys[0].alg(), Alg::Es256);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(KeySet::from_jwks(b"{\"keys\":[]}", &Alg::ASYMMETRIC).is_err());
        assert!(KeySet::from_jwks(b"<html>", &Alg::ASYMMETRIC).is_err());
    }

    #[test]
    fn a_jwk_must_fit_its_algorithm() {
        let ec = json!({"kty": "EC", "crv": "P-256",
            "x": "lIVJwqNELuRbCGOV8X8PuX5lK0N2HgUQfUoBHChYo9Q", "y": "XK1Zown3qyfKHp-qNqCiXFW6K883AKFMzW4TfILUqyA"});
        assert!(Key::from_jwk(None, Alg::Rs256, &ec).is_err());
        assert!(Key::from_jwk(None, Alg::Hs256, &ec).is_err());
        assert!(Key::from_jwk(None, Alg::Es256, &ec).is_ok());
    }

    #[test]
    fn es256_tokens_verify_with_our_p256_verifier() {
        use jwt_compact::alg::Es256;
        let signing = p256::ecdsa::SigningKey::from_slice(&[0x17; 32]).unwrap();
        let jwk = serde_json::to_value(JsonWebKey::from(signing.verifying_key())).unwrap();
        let mut v = verifier();
        v.providers[0].algorithms = vec![Alg::Es256];
        v.providers[0].static_keys = vec![Key::from_jwk(Some("e1".into()), Alg::Es256, &jwk).unwrap()];
        let token = sign_with(&Es256, &signing, Some("e1"), claims(json!({})));
        assert_eq!(verify(&v, &token).unwrap().user_id, "alice");
        let other = p256::ecdsa::SigningKey::from_slice(&[0x18; 32]).unwrap();
        let forged = sign_with(&Es256, &other, Some("e1"), claims(json!({})));
        assert_eq!(verify(&v, &forged), Err(Verdict::Invalid(AuthError::BadSignature)));
        // A point off the curve is refused when the key is loaded.
        let mut off_curve = jwk.clone();
        off_curve["y"] = off_curve["x"].clone();
        let e = Key::from_jwk(None, Alg::Es256, &off_curve).unwrap_err();
        assert!(e.contains("not on the curve"), "{e}");
    }

    /// A public RSA JWK with an odd modulus of `bits` bits (not a real key: the bounds are
    /// checked before any arithmetic) and exponent `e`.
    fn rsa_jwk(kid: &str, bits: usize, e: &[u8]) -> Value {
        let mut n = vec![0xff; bits.div_ceil(8)];
        n[0] = 0xff >> (n.len() * 8 - bits);
        let jwk = JsonWebKey::Rsa { modulus: n.into(), public_exponent: e.to_vec().into(), private_parts: None };
        let mut jwk = serde_json::to_value(&jwk).unwrap();
        jwk["kid"] = json!(kid);
        jwk
    }

    #[test]
    fn rsa_keys_need_2048_to_4096_bits_and_an_exponent_up_to_2_pow_32() {
        let f4 = [1, 0, 1];
        for alg in [Alg::Rs256, Alg::Ps256] {
            for bits in [2048, 3072, 4096] {
                assert!(Key::from_jwk(None, alg, &rsa_jwk("k", bits, &f4)).is_ok(), "{alg:?} {bits}");
            }
            for bits in [1024, 2047, 4097, 8192] {
                let e = Key::from_jwk(None, alg, &rsa_jwk("k", bits, &f4)).unwrap_err();
                assert!(e.contains("2048 to 4096 bits"), "{alg:?} {bits}: {e}");
            }
            assert!(Key::from_jwk(None, alg, &rsa_jwk("k", 2048, &[0xff; 4])).is_ok());
            let e = Key::from_jwk(None, alg, &rsa_jwk("k", 2048, &[1, 0, 0, 0, 1])).unwrap_err();
            assert!(e.contains("2^32"), "{alg:?}: {e}");
        }
    }

    #[test]
    fn jwks_keys_out_of_bounds_are_skipped_with_the_reason() {
        let jwks = json!({"keys": [rsa_jwk("weak", 1024, &[1, 0, 1]), rsa_jwk("huge-e", 2048, &[1, 0, 0, 0, 0, 1]),
                                   rsa_jwk("good", 2048, &[1, 0, 1])]});
        let (set, skipped) = KeySet::from_jwks(jwks.to_string().as_bytes(), &[Alg::Rs256]).unwrap();
        assert_eq!(set.keys.iter().map(|k| k.kid()).collect::<Vec<_>>(), vec![Some("good")]);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].starts_with("weak: ") && skipped[0].contains("got 1024"), "{skipped:?}");
        assert!(skipped[1].starts_with("huge-e: ") && skipped[1].contains("2^32"), "{skipped:?}");
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

    /// The `jwt` section as a whole configuration compiles it: error fields are full paths.
    mod from_config {
        use crate::config::tests::{base, compile, field_of, SECRET};
        use crate::config::Config;
        use serde_json::json;

        #[test]
        fn leeway_and_key_wait_are_capped() {
            let mut v = base();
            v["jwt"]["leeway_secs"] = json!(300);
            v["jwt"]["key_wait_ms"] = json!(10_000);
            assert!(compile(&v).is_ok());
            v["jwt"]["leeway_secs"] = json!(301);
            let e = compile(&v).unwrap_err();
            assert_eq!((e.field.as_str(), e.message.as_str()), ("jwt.leeway_secs", "must be at most 300, got 301"));
            v["jwt"]["leeway_secs"] = json!(0);
            v["jwt"]["key_wait_ms"] = json!(10_001);
            assert_eq!(field_of(v), "jwt.key_wait_ms");
        }

        #[test]
        fn inline_rsa_keys_out_of_bounds_are_errors_naming_the_key() {
            // An RSA JWK with a 1024-bit modulus (the bounds are checked before any arithmetic).
            let weak = jwt_compact::jwk::JsonWebKey::Rsa {
                modulus: vec![0xff; 128].into(),
                public_exponent: vec![1, 0, 1].into(),
                private_parts: None,
            };
            let weak = serde_json::to_value(&weak).unwrap();
            for alg in ["RS256", "PS384"] {
                let mut v = base();
                v["jwt"]["providers"][0]["keys"][0] = json!({"alg": alg, "jwk": weak});
                let e = compile(&v).unwrap_err();
                assert_eq!(e.field, "jwt.providers[0].keys[0].jwk", "{alg}");
                assert!(e.message.contains("2048 to 4096 bits, got 1024"), "{alg}: {e}");
            }
            // In an inline JWKS document it is skipped like in a fetched one; with nothing
            // else there, the document is unusable.
            let mut v = base();
            v["jwt"]["providers"][0]["keys"] = json!([]);
            v["jwt"]["providers"][0]["jwks_inline"] = json!({"keys": [weak]});
            let e = compile(&v).unwrap_err();
            assert_eq!(e.field, "jwt.providers[0].jwks_inline");
            assert!(e.message.contains("got 1024"), "{e}");
        }

        #[test]
        fn key_errors_never_echo_secrets() {
            let mut v = base();
            v["jwt"]["providers"][0]["keys"][0]["secret"] = json!("tooshort-secret");
            let e = compile(&v).unwrap_err().to_string();
            assert!(!e.contains("tooshort-secret"), "{e}");
        }

        #[test]
        fn keys_can_come_from_the_environment() {
            let mut v = base();
            v["jwt"]["providers"][0]["keys"][0] = json!({"alg": "HS256", "secret_env": "GW_SECRET"});
            let env = |name: &str| (name == "GW_SECRET").then(|| SECRET.to_owned());
            assert!(Config::from_json(v.to_string().as_bytes(), &env).is_ok());
            assert_eq!(field_of(v), "jwt.providers[0].keys[0].secret_env");
        }

        #[test]
        fn a_key_needs_exactly_one_source() {
            let mut v = base();
            v["jwt"]["providers"][0]["keys"][0]["secret_env"] = json!("X");
            assert_eq!(field_of(v), "jwt.providers[0].keys[0].secret");
        }

        #[test]
        fn hmac_needs_a_secret_and_keys_must_fit_the_allow_list() {
            let mut v = base();
            v["jwt"]["providers"][0]["algorithms"] = json!(["RS256", "HS384"]);
            assert_eq!(field_of(v), "jwt.providers[0].algorithms[1]");
            let mut v = base();
            v["jwt"]["providers"][0]["algorithms"] = json!(["RS256"]);
            assert_eq!(field_of(v), "jwt.providers[0].keys[0].alg");
        }
    }
}
