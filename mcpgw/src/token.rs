//! Development signing keys and tokens (ES256).
//!
//! The gateway verifies bearer tokens against a public JWK; for demos and tests we play the
//! identity provider ourselves: `keygen` creates a P-256 key pair, `mint` signs tokens with it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_compact::alg::Es256;
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{AlgorithmExt, Claims, Header};
use p256::ecdsa::SigningKey;
use serde_json::{Map, Value};
use sha2::Sha256;

/// File name of the private key inside the key directory.
pub const SIGNING_KEY_FILE: &str = "signing-key.jwk";
/// File name of the public key inside the key directory (what the gateway is configured with).
pub const PUBLIC_KEY_FILE: &str = "public-key.jwk";
/// Issuer the demo configuration trusts.
pub const DEFAULT_ISSUER: &str = "mcpgw-demo";
/// Audience the demo configuration expects.
pub const DEFAULT_AUDIENCE: &str = "mcp-gateway";
/// Signature algorithm of every key and token made here.
pub const ALGORITHM: &str = "ES256";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot access {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("signing key is not a valid P-256 JWK: {0}")]
    InvalidKey(String),
    #[error("signing key has no private part (d)")]
    NotASigningKey,
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot sign token: {0}")]
    Sign(String),
    #[error("ttl of {0:?} is too long")]
    TtlTooLong(Duration),
}

/// Where `keygen` left the key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFiles {
    pub signing_key: PathBuf,
    pub public_key: PathBuf,
    /// Key id (`kid`) of the pair: the RFC 7638 thumbprint of the public key.
    pub kid: String,
    /// False when an existing signing key was kept.
    pub created: bool,
}

/// Creates `<dir>/signing-key.jwk` (mode 0600) and `<dir>/public-key.jwk`.
///
/// An existing signing key is kept (tokens minted earlier stay valid); a missing public key is
/// derived from it again.
pub fn keygen(dir: &Path) -> Result<KeyFiles, TokenError> {
    fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
    let signing_path = dir.join(SIGNING_KEY_FILE);
    let public_path = dir.join(PUBLIC_KEY_FILE);

    let (signing_key, created) = if signing_path.exists() {
        let text = fs::read_to_string(&signing_path).map_err(|e| io_error(&signing_path, e))?;
        (parse_signing_key(&text)?, false)
    } else {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let text = jwk_json(&key, true)?;
        write_new(&signing_path, &text, 0o600)?;
        (key, true)
    };

    if !public_path.exists() {
        write_new(&public_path, &jwk_json(&signing_key, false)?, 0o644)?;
    }
    Ok(KeyFiles { signing_key: signing_path, public_key: public_path, kid: key_id(&signing_key), created })
}

/// What a minted token asserts.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRequest {
    pub sub: String,
    pub roles: Vec<String>,
    pub iss: String,
    pub aud: String,
    /// Lifetime: `exp` is `iat + ttl`.
    pub ttl: Duration,
    /// Added last, so they can also replace standard claims (tests forge a past `exp` or a
    /// foreign `iss` this way).
    pub extra_claims: Map<String, Value>,
}

impl TokenRequest {
    /// A one-hour token with the demo issuer and audience.
    pub fn new(sub: impl Into<String>, roles: &[&str]) -> Self {
        Self {
            sub: sub.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            iss: DEFAULT_ISSUER.to_owned(),
            aud: DEFAULT_AUDIENCE.to_owned(),
            ttl: Duration::from_secs(3600),
            extra_claims: Map::new(),
        }
    }

    pub fn claim(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra_claims.insert(name.into(), value.into());
        self
    }
}

/// Signs a compact JWT (ES256, header `kid`) with the private JWK given as JSON text.
pub fn mint(signing_jwk: &str, request: &TokenRequest) -> Result<String, TokenError> {
    let key = parse_signing_key(signing_jwk)?;
    let now = chrono::Utc::now().timestamp();
    let ttl = i64::try_from(request.ttl.as_secs()).map_err(|_| TokenError::TtlTooLong(request.ttl))?;
    let exp = now.checked_add(ttl).ok_or(TokenError::TtlTooLong(request.ttl))?;

    let mut payload = Map::new();
    payload.insert("iss".into(), request.iss.clone().into());
    payload.insert("aud".into(), request.aud.clone().into());
    payload.insert("sub".into(), request.sub.clone().into());
    payload.insert("roles".into(), request.roles.clone().into());
    payload.insert("iat".into(), now.into());
    payload.insert("nbf".into(), now.into());
    payload.insert("exp".into(), exp.into());
    for (name, value) in &request.extra_claims {
        payload.insert(name.clone(), value.clone());
    }

    // All claims, registered ones included, travel in the custom map so that extra claims can
    // replace them without producing duplicate JSON keys.
    let header = Header::empty().with_key_id(key_id(&key));
    Es256.token(&header, &Claims::new(payload), &key).map_err(|e| TokenError::Sign(e.to_string()))
}

/// The public JWK (with `kid`, `alg`, `use`) matching a private JWK given as JSON text.
pub fn public_jwk(signing_jwk: &str) -> Result<String, TokenError> {
    jwk_json(&parse_signing_key(signing_jwk)?, false)
}

fn parse_signing_key(text: &str) -> Result<SigningKey, TokenError> {
    let jwk: JsonWebKey<'_> = serde_json::from_str(text).map_err(|e| TokenError::InvalidKey(e.to_string()))?;
    if !jwk.is_signing_key() {
        return Err(TokenError::NotASigningKey);
    }
    SigningKey::try_from(&jwk).map_err(|e| TokenError::InvalidKey(e.to_string()))
}

/// RFC 7638 thumbprint, base64url: stable across runs, so `kid` follows the key itself.
fn key_id(key: &SigningKey) -> String {
    let public = JsonWebKey::from(key.verifying_key());
    URL_SAFE_NO_PAD.encode(public.thumbprint::<Sha256>())
}

fn jwk_json(key: &SigningKey, private: bool) -> Result<String, TokenError> {
    let jwk = if private { JsonWebKey::from(key) } else { JsonWebKey::from(key.verifying_key()) };
    let mut value = serde_json::to_value(&jwk)?;
    if let Value::Object(fields) = &mut value {
        fields.insert("kid".into(), key_id(key).into());
        fields.insert("alg".into(), ALGORITHM.into());
        fields.insert("use".into(), "sig".into());
    }
    let mut text = serde_json::to_string_pretty(&value)?;
    text.push('\n');
    Ok(text)
}

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), TokenError> {
    let mut file =
        fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| io_error(path, e))?;
    file.write_all(contents.as_bytes()).map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, source: std::io::Error) -> TokenError {
    TokenError::Io { path: path.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwt_compact::{TimeOptions, UntrustedToken};
    use p256::ecdsa::VerifyingKey;

    fn keys() -> (tempfile::TempDir, KeyFiles) {
        let dir = tempfile::tempdir().unwrap();
        let files = keygen(dir.path()).unwrap();
        (dir, files)
    }

    fn verify(public_path: &Path, token: &str) -> Claims<Map<String, Value>> {
        let public: Value = serde_json::from_str(&fs::read_to_string(public_path).unwrap()).unwrap();
        let jwk: JsonWebKey<'_> = serde_json::from_value(public.clone()).unwrap();
        let key = VerifyingKey::try_from(&jwk).unwrap();
        let untrusted = UntrustedToken::new(token).unwrap();
        assert_eq!(untrusted.algorithm(), "ES256");
        assert_eq!(untrusted.header().key_id.as_deref(), public["kid"].as_str());
        let token = Es256.validator::<Map<String, Value>>(&key).validate(&untrusted).unwrap();
        token.claims().clone()
    }

    #[test]
    fn keygen_writes_private_key_readable_only_by_owner() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, files) = keys();
        let mode = fs::metadata(&files.signing_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(files.created);
    }

    #[test]
    fn public_key_has_kid_alg_and_use_but_no_private_part() {
        let (_dir, files) = keys();
        let public: Value = serde_json::from_str(&fs::read_to_string(&files.public_key).unwrap()).unwrap();
        assert_eq!(public["kty"], "EC");
        assert_eq!(public["crv"], "P-256");
        assert_eq!(public["alg"], "ES256");
        assert_eq!(public["use"], "sig");
        assert_eq!(public["kid"], files.kid.as_str());
        assert!(public.get("d").is_none());
    }

    #[test]
    fn keygen_keeps_existing_keys() {
        let (dir, first) = keys();
        let before = fs::read_to_string(&first.signing_key).unwrap();
        fs::remove_file(&first.public_key).unwrap();
        let second = keygen(dir.path()).unwrap();
        assert!(!second.created);
        assert_eq!(second.kid, first.kid);
        assert_eq!(fs::read_to_string(&second.signing_key).unwrap(), before);
        assert!(second.public_key.exists());
    }

    #[test]
    fn minted_token_verifies_with_public_key_and_carries_claims() {
        let (_dir, files) = keys();
        let signing = fs::read_to_string(&files.signing_key).unwrap();
        let request = TokenRequest::new("alice", &["developer", "auditor"]).claim("tenant", "acme");
        let token = mint(&signing, &request).unwrap();

        let claims = verify(&files.public_key, &token);
        let custom = &claims.custom;
        assert_eq!(custom["iss"], "mcpgw-demo");
        assert_eq!(custom["aud"], "mcp-gateway");
        assert_eq!(custom["sub"], "alice");
        assert_eq!(custom["roles"], serde_json::json!(["developer", "auditor"]));
        assert_eq!(custom["tenant"], "acme");
        let iat = claims.issued_at.unwrap();
        assert_eq!(claims.not_before, Some(iat));
        assert_eq!(claims.expiration, Some(iat + chrono::Duration::seconds(3600)));
        let time = TimeOptions::new(chrono::Duration::seconds(5), chrono::Utc::now);
        claims.validate_expiration(&time).unwrap();
    }

    #[test]
    fn extra_claims_replace_standard_ones() {
        let (_dir, files) = keys();
        let signing = fs::read_to_string(&files.signing_key).unwrap();
        let request = TokenRequest::new("mallory", &[]).claim("exp", 1_000);
        let token = mint(&signing, &request).unwrap();

        let claims = verify(&files.public_key, &token);
        assert_eq!(claims.expiration.map(|t| t.timestamp()), Some(1_000));
        let time = TimeOptions::new(chrono::Duration::zero(), chrono::Utc::now);
        assert!(claims.validate_expiration(&time).is_err());
    }

    #[test]
    fn public_key_file_is_not_a_signing_key() {
        let (_dir, files) = keys();
        let public = fs::read_to_string(&files.public_key).unwrap();
        let err = mint(&public, &TokenRequest::new("alice", &[])).unwrap_err();
        assert!(matches!(err, TokenError::NotASigningKey));
    }

    #[test]
    fn public_jwk_matches_written_public_key() {
        let (_dir, files) = keys();
        let signing = fs::read_to_string(&files.signing_key).unwrap();
        assert_eq!(public_jwk(&signing).unwrap(), fs::read_to_string(&files.public_key).unwrap());
    }
}
