//! Signing keys of a pretend identity provider, and a forger of attack tokens.
//!
//! [`TestKey::sign`] makes the tokens a real identity provider would issue; [`forge`] and the
//! helpers around it make the ones an attacker would try (`alg: none`, HMAC keyed with a public
//! key, a signature over other claims, broken segments, oversized tokens). Signatures come from
//! jwt-compact's algorithms; the JWKs are written out by hand so that a mistake in the
//! gateway's JWK parsing (also jwt-compact) cannot cancel out a mistake here.
//!
//! Generating a 2048-bit RSA key takes about 15 s unoptimised; the workspace's
//! `[profile.dev.package.rsa]` and `[profile.dev.package.num-bigint-dig]` (`opt-level = 3`) bring
//! it under a second in test builds.

use std::fmt;

use anyhow::{bail, Context as _};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_compact::{PublicKey as Ed25519PublicKey, SecretKey as Ed25519SecretKey};
use jwt_compact::alg::{Ed25519, Es256, Hs256, Hs256Key, Rsa, RsaPrivateKey};
use jwt_compact::{Algorithm, AlgorithmSignature};
use p256::ecdsa::SigningKey as EcSigningKey;
use rand_core::{OsRng, RngCore as _};
use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;
use serde_json::{json, Map, Value};

/// RSA modulus size of generated keys (the minimum RFC 7518 allows).
pub const RSA_BITS: usize = 2048;
/// Length of generated HS256 secrets (RFC 7518 §3.2: at least the hash size).
pub const HMAC_SECRET_BYTES: usize = 32;

/// JWS algorithms a [`TestKey`] signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    Rs256,
    Ps256,
    Es256,
    EdDsa,
    Hs256,
}

impl Alg {
    /// The JOSE name (`alg` header and JWK member).
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Ps256 => "PS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
            Alg::Hs256 => "HS256",
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone)]
enum Material {
    Rsa {
        key: Box<RsaPrivateKey>,
        /// PS256 rather than RS256: same key type, other padding.
        pss: bool,
    },
    Ec(EcSigningKey),
    Ed {
        secret: Ed25519SecretKey,
        public: Ed25519PublicKey,
    },
    Hmac(Vec<u8>),
}

/// A signing key with its key id. `Debug` shows only the algorithm and `kid`.
#[derive(Clone)]
pub struct TestKey {
    kid: String,
    material: Material,
    /// Whether [`TestKey::public_jwk`] carries `alg`; real identity providers sometimes omit it.
    jwk_alg: bool,
}

impl fmt::Debug for TestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestKey").field("alg", &self.alg().name()).field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl TestKey {
    /// A fresh random key for `alg` (2048-bit RSA, P-256, Ed25519, or a 32-byte secret).
    pub fn generate(alg: Alg, kid: impl Into<String>) -> anyhow::Result<Self> {
        let material = match alg {
            Alg::Rs256 | Alg::Ps256 => Material::Rsa {
                key: Box::new(RsaPrivateKey::new(&mut OsRng, RSA_BITS).context("cannot generate RSA key")?),
                pss: alg == Alg::Ps256,
            },
            Alg::Es256 => Material::Ec(EcSigningKey::random(&mut OsRng)),
            Alg::EdDsa => {
                let (secret, public) = Ed25519::generate(&mut OsRng);
                Material::Ed { secret, public }
            }
            Alg::Hs256 => {
                let mut secret = vec![0; HMAC_SECRET_BYTES];
                OsRng.fill_bytes(&mut secret);
                Material::Hmac(secret)
            }
        };
        Ok(Self { kid: kid.into(), material, jwk_alg: true })
    }

    /// An HS256 key with a chosen secret (say, one the gateway's config also holds).
    pub fn hs256_with_secret(kid: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        Self { kid: kid.into(), material: Material::Hmac(secret.into()), jwk_alg: true }
    }

    /// The same key material under another algorithm of its key type (RS256 <-> PS256), which
    /// saves generating a second RSA key.
    pub fn with_alg(&self, alg: Alg) -> anyhow::Result<Self> {
        let material = match (&self.material, alg) {
            (Material::Rsa { key, .. }, Alg::Rs256 | Alg::Ps256) => {
                Material::Rsa { key: key.clone(), pss: alg == Alg::Ps256 }
            }
            (material, alg) if alg == self.alg() => material.clone(),
            _ => bail!("a {} key cannot sign {alg}", self.alg()),
        };
        Ok(Self { kid: self.kid.clone(), material, jwk_alg: self.jwk_alg })
    }

    /// The same key under another `kid`.
    pub fn with_kid(&self, kid: impl Into<String>) -> Self {
        Self { kid: kid.into(), ..self.clone() }
    }

    /// Whether the published JWK names its `alg` (default: yes).
    pub fn publish_alg(mut self, publish: bool) -> Self {
        self.jwk_alg = publish;
        self
    }

    pub fn alg(&self) -> Alg {
        match &self.material {
            Material::Rsa { pss: false, .. } => Alg::Rs256,
            Material::Rsa { pss: true, .. } => Alg::Ps256,
            Material::Ec(_) => Alg::Es256,
            Material::Ed { .. } => Alg::EdDsa,
            Material::Hmac(_) => Alg::Hs256,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The HS256 secret; `None` for asymmetric keys.
    pub fn secret(&self) -> Option<&[u8]> {
        match &self.material {
            Material::Hmac(secret) => Some(secret),
            _ => None,
        }
    }

    /// The JWK a JWKS publishes: `kty` and key parameters, `kid`, `use: sig`, and `alg` unless
    /// [`TestKey::publish_alg`] turned it off. For HS256 it is the `oct` key, secret included
    /// (identity providers never publish those; tests may configure one).
    pub fn public_jwk(&self) -> Value {
        let mut jwk = match &self.material {
            Material::Rsa { key, .. } => json!({
                "kty": "RSA",
                "n": b64url(key.n().to_bytes_be()),
                "e": b64url(key.e().to_bytes_be()),
            }),
            Material::Ec(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": point.x().map(b64url).unwrap_or_default(),
                    "y": point.y().map(b64url).unwrap_or_default(),
                })
            }
            Material::Ed { public, .. } => json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64url(public.as_ref()),
            }),
            Material::Hmac(secret) => json!({ "kty": "oct", "k": b64url(secret) }),
        };
        if let Value::Object(members) = &mut jwk {
            members.insert("kid".into(), self.kid.clone().into());
            members.insert("use".into(), "sig".into());
            if self.jwk_alg {
                members.insert("alg".into(), self.alg().name().into());
            }
        }
        jwk
    }

    /// The public key as SPKI PEM text (`-----BEGIN PUBLIC KEY-----`, LF line ends, final
    /// newline), as an operator would paste it into a config. RSA keys only.
    pub fn public_pem(&self) -> anyhow::Result<String> {
        match &self.material {
            Material::Rsa { key, .. } => {
                key.to_public_key().to_public_key_pem(LineEnding::LF).context("cannot encode RSA public key as PEM")
            }
            _ => bail!("public_pem needs an RSA key, not {}", self.alg()),
        }
    }

    /// The header [`TestKey::sign`] uses: `{"alg", "kid", "typ": "JWT"}`. Start from it to forge.
    pub fn header(&self) -> Value {
        json!({ "alg": self.alg().name(), "kid": self.kid, "typ": "JWT" })
    }

    /// A compact JWT of `claims` under [`TestKey::header`], signed with this key.
    pub fn sign(&self, claims: &Value) -> String {
        forge(&self.header(), claims, ForgedSignature::SignedBy(self))
    }

    /// This key's signature (raw JWS bytes) over `message`, whatever a header claims.
    pub fn signature(&self, message: &[u8]) -> Vec<u8> {
        match &self.material {
            Material::Rsa { key, pss } => {
                let rsa = if *pss { Rsa::ps256() } else { Rsa::rs256() };
                rsa.sign(key, message).as_bytes().into_owned()
            }
            Material::Ec(key) => Es256.sign(key, message).as_bytes().into_owned(),
            Material::Ed { secret, .. } => Ed25519.sign(secret, message).as_bytes().into_owned(),
            Material::Hmac(secret) => hs256(secret, message),
        }
    }

    /// Algorithm confusion: an `HS256` token with this key's `kid`, its HMAC keyed with public
    /// material of this RSA key. A verifier that picks the algorithm from the token and feeds
    /// "the key" to HMAC accepts it.
    pub fn confusion_token(&self, claims: &Value, secret: ConfusionSecret) -> anyhow::Result<String> {
        let Material::Rsa { key, .. } = &self.material else {
            bail!("confusion tokens need an RSA key, not {}", self.alg());
        };
        let secret = match secret {
            ConfusionSecret::SpkiPem => self.public_pem()?.into_bytes(),
            ConfusionSecret::Modulus => key.n().to_bytes_be(),
            ConfusionSecret::JwkJson => self.public_jwk().to_string().into_bytes(),
        };
        let header = json!({ "alg": "HS256", "kid": self.kid, "typ": "JWT" });
        Ok(forge(&header, claims, ForgedSignature::Hs256(&secret)))
    }
}

/// Which public bytes of an RSA key an algorithm-confusion token uses as its HMAC secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfusionSecret {
    /// The text of [`TestKey::public_pem`].
    SpkiPem,
    /// The modulus `n`, big-endian, unpadded (the bytes the JWK's `n` encodes).
    Modulus,
    /// The public JWK as compact JSON.
    JwkJson,
}

/// What [`forge`] puts in the third segment.
#[derive(Debug, Clone, Copy)]
pub enum ForgedSignature<'a> {
    /// The key's own signature over the signing input, whatever the header says (use it for a
    /// header whose `alg` or `kid` lies).
    SignedBy(&'a TestKey),
    /// HMAC-SHA256 of the signing input under these bytes.
    Hs256(&'a [u8]),
    /// These bytes, base64url-encoded.
    Bytes(&'a [u8]),
    /// Nothing: the token ends with the second dot (`alg: none`).
    Empty,
}

/// `base64url(header) . base64url(claims) . base64url(signature)`, with the JSON exactly as
/// given (compact). Nothing is checked: the header may name any algorithm or key.
pub fn forge(header: &Value, claims: &Value, signature: ForgedSignature<'_>) -> String {
    let signing_input = format!("{}.{}", b64url(header.to_string()), b64url(claims.to_string()));
    let signature = match signature {
        ForgedSignature::SignedBy(key) => key.signature(signing_input.as_bytes()),
        ForgedSignature::Hs256(secret) => hs256(secret, signing_input.as_bytes()),
        ForgedSignature::Bytes(bytes) => bytes.to_vec(),
        ForgedSignature::Empty => Vec::new(),
    };
    format!("{signing_input}.{}", b64url(signature))
}

/// An unsigned token: header `{"alg":"none","typ":"JWT"}` and an empty signature.
pub fn alg_none(claims: &Value) -> String {
    forge(&json!({ "alg": "none", "typ": "JWT" }), claims, ForgedSignature::Empty)
}

/// The three dot-separated parts of a compact JWT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Header,
    Payload,
    Signature,
}

/// `token` with one segment replaced by `raw`, verbatim (not encoded: pass `!!!` for broken
/// base64, or `b64url("not json")` for a segment that decodes to something other than JSON).
/// Missing segments of a malformed `token` count as empty.
pub fn replace_segment(token: &str, segment: Segment, raw: &str) -> String {
    let mut parts = token.splitn(3, '.');
    let mut next = || parts.next().unwrap_or_default();
    let (header, payload, signature) = (next(), next(), next());
    match segment {
        Segment::Header => format!("{raw}.{payload}.{signature}"),
        Segment::Payload => format!("{header}.{raw}.{signature}"),
        Segment::Signature => format!("{header}.{payload}.{raw}"),
    }
}

/// `token` with its claims replaced and its signature kept (which no longer matches).
pub fn tamper_payload(token: &str, claims: &Value) -> String {
    replace_segment(token, Segment::Payload, &b64url(claims.to_string()))
}

/// `claims` plus a `padding` claim of `bytes` characters: sign it for an oversized token (the
/// token grows by about 4/3 of `bytes`).
pub fn padded(claims: &Value, bytes: usize) -> Value {
    let mut claims = claims.clone();
    if let Value::Object(members) = &mut claims {
        members.insert("padding".into(), "x".repeat(bytes).into());
    }
    claims
}

/// `iss`, `aud`, `sub`, `roles`, and `iat` = `nbf` = now, `exp` = now + `ttl_secs` (negative
/// for a token that has already expired).
pub fn standard_claims(iss: &str, aud: &str, sub: &str, roles: &[&str], ttl_secs: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    let mut claims = Map::new();
    claims.insert("iss".into(), iss.into());
    claims.insert("aud".into(), aud.into());
    claims.insert("sub".into(), sub.into());
    claims.insert("roles".into(), roles.iter().copied().collect());
    claims.insert("iat".into(), now.into());
    claims.insert("nbf".into(), now.into());
    claims.insert("exp".into(), now.saturating_add(ttl_secs).into());
    Value::Object(claims)
}

/// Unpadded base64url, the JWS encoding.
pub fn b64url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hs256(secret: &[u8], message: &[u8]) -> Vec<u8> {
    Hs256.sign(&Hs256Key::new(secret), message).as_bytes().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwt_compact::jwk::JsonWebKey;
    use jwt_compact::{AlgorithmExt as _, UntrustedToken};
    use std::sync::OnceLock;

    /// One RSA key per test binary: generation is the slow part.
    fn rsa() -> &'static TestKey {
        static KEY: OnceLock<TestKey> = OnceLock::new();
        KEY.get_or_init(|| TestKey::generate(Alg::Rs256, "rsa-1").unwrap())
    }

    fn claims() -> Value {
        standard_claims("https://idp.test", "mcp-gateway", "alice", &["developer"], 300)
    }

    /// Verifies with jwt-compact, the key parsed from the published JWK.
    fn verifies(token: &str, jwk: &Value) -> bool {
        let jwk: JsonWebKey<'_> = serde_json::from_value(jwk.clone()).unwrap();
        let untrusted = UntrustedToken::new(token).unwrap();
        let claims = match untrusted.algorithm() {
            "RS256" | "PS256" => {
                let key = jwt_compact::alg::RsaPublicKey::try_from(&jwk).unwrap();
                Rsa::with_name(untrusted.algorithm()).validator::<Value>(&key).validate(&untrusted)
            }
            "ES256" => {
                let key = p256::ecdsa::VerifyingKey::try_from(&jwk).unwrap();
                Es256.validator::<Value>(&key).validate(&untrusted)
            }
            "EdDSA" => {
                let key = Ed25519PublicKey::try_from(&jwk).unwrap();
                Ed25519.validator::<Value>(&key).validate(&untrusted)
            }
            "HS256" => {
                let key = Hs256Key::try_from(&jwk).unwrap();
                Hs256.validator::<Value>(&key).validate(&untrusted)
            }
            other => panic!("unexpected alg {other}"),
        };
        claims.is_ok()
    }

    fn decode_segment(token: &str, index: usize) -> Value {
        let segment = token.split('.').nth(index).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
    }

    #[test]
    fn every_algorithm_signs_tokens_its_public_jwk_verifies() {
        let keys = [
            rsa().clone(),
            rsa().with_alg(Alg::Ps256).unwrap().with_kid("rsa-pss"),
            TestKey::generate(Alg::Es256, "ec-1").unwrap(),
            TestKey::generate(Alg::EdDsa, "ed-1").unwrap(),
            TestKey::generate(Alg::Hs256, "hs-1").unwrap(),
        ];
        let claims = claims();
        for key in &keys {
            let token = key.sign(&claims);
            assert!(verifies(&token, &key.public_jwk()), "{key:?}");
            assert_eq!(decode_segment(&token, 0), json!({ "alg": key.alg().name(), "kid": key.kid(), "typ": "JWT" }));
            assert_eq!(decode_segment(&token, 1), claims);
            let jwk = key.public_jwk();
            assert_eq!(jwk["kid"], key.kid());
            assert_eq!(jwk["use"], "sig");
            assert_eq!(jwk["alg"], key.alg().name());
        }
    }

    #[test]
    fn public_jwks_carry_no_private_parts() {
        let ec = TestKey::generate(Alg::Es256, "ec").unwrap();
        let ed = TestKey::generate(Alg::EdDsa, "ed").unwrap();
        for jwk in [rsa().public_jwk(), ec.public_jwk(), ed.public_jwk()] {
            for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(jwk.get(private).is_none(), "{private} in {jwk}");
            }
        }
        assert_eq!(rsa().public_jwk()["e"], "AQAB");
        assert_eq!(ec.public_jwk()["crv"], "P-256");
        assert_eq!(ed.public_jwk()["crv"], "Ed25519");
    }

    #[test]
    fn alg_can_be_left_out_of_the_published_jwk() {
        let key = TestKey::generate(Alg::Es256, "ec").unwrap().publish_alg(false);
        assert!(key.public_jwk().get("alg").is_none());
        assert!(verifies(&key.sign(&claims()), &key.public_jwk()));
    }

    #[test]
    fn hs256_keys_expose_a_secret_of_at_least_32_bytes() {
        let key = TestKey::generate(Alg::Hs256, "hs").unwrap();
        assert!(key.secret().unwrap().len() >= 32);
        assert!(rsa().secret().is_none());
        let chosen = TestKey::hs256_with_secret("cfg", b"0123456789abcdef0123456789abcdef".to_vec());
        assert_eq!(chosen.public_jwk()["k"], b64url(b"0123456789abcdef0123456789abcdef"));
    }

    #[test]
    fn rsa_keys_cannot_become_ec_keys() {
        assert!(rsa().with_alg(Alg::Es256).is_err());
        let ec = TestKey::generate(Alg::Es256, "ec").unwrap();
        assert!(ec.with_alg(Alg::Rs256).is_err());
        assert_eq!(ec.with_alg(Alg::Es256).unwrap().alg(), Alg::Es256);
    }

    #[test]
    fn alg_none_token_has_empty_signature() {
        let token = alg_none(&claims());
        assert!(token.ends_with('.'));
        assert_eq!(decode_segment(&token, 0)["alg"], "none");
        assert!(UntrustedToken::new(&token).unwrap().signature_bytes().is_empty());
    }

    #[test]
    fn confusion_tokens_are_hmacs_keyed_with_public_material() {
        let pem = rsa().public_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let n = URL_SAFE_NO_PAD.decode(rsa().public_jwk()["n"].as_str().unwrap()).unwrap();
        let jwk_text = rsa().public_jwk().to_string();
        for (kind, secret) in [
            (ConfusionSecret::SpkiPem, pem.into_bytes()),
            (ConfusionSecret::Modulus, n),
            (ConfusionSecret::JwkJson, jwk_text.into_bytes()),
        ] {
            let token = rsa().confusion_token(&claims(), kind).unwrap();
            assert_eq!(decode_segment(&token, 0)["alg"], "HS256");
            assert_eq!(decode_segment(&token, 0)["kid"], "rsa-1");
            let oct = json!({ "kty": "oct", "k": b64url(&secret) });
            assert!(verifies(&token, &oct), "{kind:?}");
        }
        let ec = TestKey::generate(Alg::Es256, "ec").unwrap();
        assert!(ec.confusion_token(&claims(), ConfusionSecret::Modulus).is_err());
    }

    #[test]
    fn lying_header_keeps_the_signers_signature() {
        let ec = TestKey::generate(Alg::Es256, "ec-1").unwrap();
        let mut header = rsa().header();
        header["kid"] = ec.kid().into();
        let token = forge(&header, &claims(), ForgedSignature::SignedBy(rsa()));
        assert_eq!(decode_segment(&token, 0)["kid"], "ec-1");
        assert_eq!(decode_segment(&token, 0)["alg"], "RS256");
        assert!(verifies(&token, &rsa().public_jwk()));
    }

    #[test]
    fn tampered_payload_no_longer_verifies() {
        let key = TestKey::generate(Alg::Es256, "ec").unwrap();
        let token = key.sign(&claims());
        let mut admin = claims();
        admin["roles"] = json!(["admin"]);
        let tampered = tamper_payload(&token, &admin);
        assert_eq!(decode_segment(&tampered, 1)["roles"], json!(["admin"]));
        assert_eq!(tampered.rsplit('.').next(), token.rsplit('.').next(), "signature kept");
        assert!(!verifies(&tampered, &key.public_jwk()));
    }

    #[test]
    fn segments_can_be_replaced_verbatim() {
        let token = "aaa.bbb.ccc";
        assert_eq!(replace_segment(token, Segment::Header, "!!!"), "!!!.bbb.ccc");
        assert_eq!(replace_segment(token, Segment::Payload, "x"), "aaa.x.ccc");
        assert_eq!(replace_segment(token, Segment::Signature, ""), "aaa.bbb.");
        assert_eq!(replace_segment("only", Segment::Signature, "s"), "only..s");
    }

    #[test]
    fn padded_claims_make_huge_tokens() {
        let key = TestKey::generate(Alg::EdDsa, "ed").unwrap();
        let token = key.sign(&padded(&claims(), 20_000));
        assert!(token.len() > 20_000);
        assert!(verifies(&token, &key.public_jwk()));
    }

    #[test]
    fn standard_claims_expire_after_ttl() {
        let claims = standard_claims("iss", "aud", "bob", &["a", "b"], -60);
        assert_eq!(claims["roles"], json!(["a", "b"]));
        assert_eq!(claims["iat"], claims["nbf"]);
        assert_eq!(claims["exp"].as_i64().unwrap(), claims["iat"].as_i64().unwrap() - 60);
    }

    #[test]
    fn debug_shows_no_key_material() {
        let key = TestKey::generate(Alg::Hs256, "hs").unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains("HS256") && debug.contains("hs"));
        assert!(!debug.contains(&b64url(key.secret().unwrap())));
    }
}
