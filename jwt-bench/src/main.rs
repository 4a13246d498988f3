//! Cost of one JWT verification (parse, signature check, claims) per algorithm, for the
//! gateway's jwt-compact algorithms, `mcp_gateway::fast_rsa` and `mcp_gateway::fast_p256`
//! (each next to the stock verifier it replaces). Prints a table of the
//! median microseconds per verification over several timed batches.
//!
//! Keys come from `testdata/` (RSA) or are fixed bytes, so nothing slow or random happens
//! before timing starts.

use jwt_compact::alg::{
    Ed25519, Es256, Hs256, Hs256Key, Rsa, RsaPrivateKey, RsaPublicKey, SigningKey,
};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::prelude::*;
use jwt_compact::{Algorithm, Empty};
use mcp_gateway::fast_p256::{FastEs256, FastP256Key};
use mcp_gateway::fast_rsa::{FastRsa, FastRsaKey};
use mcp_gateway::jwt::{Alg as GwAlg, ClaimMapping, Key, KeyStore, Provider, Verifier};
use std::cell::RefCell;
use std::time::SystemTime;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Each timed batch runs long enough for the clock's resolution not to matter.
const BATCH: Duration = Duration::from_millis(20);
const BATCHES: usize = 7;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let runtime = if cfg!(target_arch = "wasm32") {
        "wasm32-wasip1"
    } else {
        "native"
    };
    let claims = Claims::new(Empty {});
    let header = Header::empty();

    let rsa_2048 = rsa_keypair(include_str!("../../testdata/rsa-2048.private.jwk.json"))?;
    let rsa_4096 = rsa_keypair(include_str!("../../testdata/rsa-4096.private.jwk.json"))?;
    let hs_key = Hs256Key::new([0x5a; 32]);
    let es_key: <Es256 as Algorithm>::SigningKey = SigningKey::from_slice(&[0x17; 32])?;
    let (ed_secret, ed_public) = Ed25519::generate(&mut rand_core::OsRng);

    let mut rows: Vec<(String, f64)> = Vec::new();
    let mut time = |name: &str, check: &dyn Fn() -> bool| -> Result<f64, Error> {
        if !check() {
            return Err(format!("{name}: verification failed").into());
        }
        let micros = median_micros(check);
        rows.push((name.to_owned(), micros));
        Ok(micros)
    };

    let token = Hs256.token(&header, &claims, &hs_key)?;
    time("HS256", &|| verify(&Hs256, &hs_key, &token))?;

    let token = Es256.token(&header, &claims, &es_key)?;
    let es_public = es_key.to_verifying_key();
    let es_stock = time("ES256 stock", &|| verify(&Es256, &es_public, &token))?;
    let es_jwk = JsonWebKey::from(&es_public);
    let es_fast_key = FastP256Key::try_from(&es_jwk)?;
    let es_fast = time("ES256 fast", &|| verify(&FastEs256, &es_fast_key, &token))?;
    time("FastP256Key from JWK (setup)", &|| {
        FastP256Key::try_from(black_box(&es_jwk)).is_ok()
    })?;

    let token = Ed25519.token(&header, &claims, &ed_secret)?;
    time("EdDSA (Ed25519)", &|| verify(&Ed25519, &ed_public, &token))?;

    let token = Rsa::ps256().token(&header, &claims, &rsa_2048.0)?;
    time("PS256 2048 stock", &|| {
        verify(&Rsa::ps256(), &rsa_2048.1, &token)
    })?;

    let token = Rsa::rs256().token(&header, &claims, &rsa_2048.0)?;
    let stock = time("RS256 2048 stock", &|| {
        verify(&Rsa::rs256(), &rsa_2048.1, &token)
    })?;
    let fast_key = FastRsaKey::try_from(&JsonWebKey::from(&rsa_2048.1))?;
    let fast = time("RS256 2048 fast", &|| {
        verify(&FastRsa::rs256(), &fast_key, &token)
    })?;

    let token_4096 = Rsa::rs256().token(&header, &claims, &rsa_4096.0)?;
    let stock_4096 = time("RS256 4096 stock", &|| {
        verify(&Rsa::rs256(), &rsa_4096.1, &token_4096)
    })?;
    let fast_key_4096 = FastRsaKey::try_from(&JsonWebKey::from(&rsa_4096.1))?;
    let fast_4096 = time("RS256 4096 fast", &|| {
        verify(&FastRsa::rs256(), &fast_key_4096, &token_4096)
    })?;

    let jwk = JsonWebKey::from(&rsa_2048.1);
    time("FastRsaKey from JWK 2048 (setup)", &|| {
        FastRsaKey::try_from(black_box(&jwk)).is_ok()
    })?;

    // The gateway's own path (issuer lookup, kid/alg checks, signature, claims, roles),
    // cold (cache disabled) and cached (a session's repeated token).
    let mut gateway_rows: Vec<(String, f64, f64)> = Vec::new();
    let gateway_cases: Vec<(&str, GwAlg, Key, String)> = vec![
        ("HS256", GwAlg::Hs256, Key::from_secret(Some("k".into()), GwAlg::Hs256, &[0x5a; 32])?, gw_token(&Hs256, &hs_key)?),
        ("RS256 2048 (fast)", GwAlg::Rs256, gw_key(GwAlg::Rs256, &JsonWebKey::from(&rsa_2048.1))?, gw_token(&Rsa::rs256(), &rsa_2048.0)?),
        ("PS256 2048 (fast)", GwAlg::Ps256, gw_key(GwAlg::Ps256, &JsonWebKey::from(&rsa_2048.1))?, gw_token(&Rsa::ps256(), &rsa_2048.0)?),
        ("ES256 (fast)", GwAlg::Es256, gw_key(GwAlg::Es256, &JsonWebKey::from(&es_public))?, gw_token(&Es256, &es_key)?),
        ("EdDSA", GwAlg::EdDsa, gw_key(GwAlg::EdDsa, &JsonWebKey::from(&ed_public))?, gw_token(&Ed25519, &ed_secret)?),
    ];
    for (name, alg, key, token) in gateway_cases {
        let verifier = Verifier {
            providers: vec![Provider {
                name: "bench".into(),
                issuer: "bench".into(),
                audiences: vec!["gw".into()],
                algorithms: vec![alg],
                claims: ClaimMapping { user: vec!["sub".into()], roles: vec!["roles".into()], role_map: None },
                static_keys: vec![key],
                jwks: None,
            }],
            leeway_secs: 60,
            max_token_bytes: 8192,
        };
        let now = SystemTime::now();
        let cold_store = RefCell::new(KeyStore::new(1, 0));
        let cold = median_checked(name, &|| verifier.verify(black_box(&token), now, &mut cold_store.borrow_mut()).is_ok())?;
        let warm_store = RefCell::new(KeyStore::new(1, 16));
        let cached = median_checked(name, &|| verifier.verify(black_box(&token), now, &mut warm_store.borrow_mut()).is_ok())?;
        gateway_rows.push((name.to_owned(), cold, cached));
    }

    println!("JWT verification on {runtime}: median of {BATCHES} batches, microseconds per token");
    println!("{:<34} {:>10}", "algorithm", "us/verify");
    for (name, micros) in &rows {
        println!("{name:<34} {micros:>10.1}");
    }
    println!(
        "RS256 fast vs stock: {:.1}x faster (2048-bit), {:.1}x faster (4096-bit)",
        stock / fast,
        stock_4096 / fast_4096
    );
    println!("ES256 fast vs stock: {:.1}x faster", es_stock / es_fast);
    println!();
    println!("Gateway verifier (mcp_gateway::jwt::Verifier), microseconds per request");
    println!("{:<34} {:>10} {:>10}", "algorithm", "cold", "cached");
    for (name, cold, cached) in &gateway_rows {
        println!("{name:<34} {cold:>10.1} {cached:>10.2}");
    }
    Ok(())
}

fn median_checked(name: &str, op: &dyn Fn() -> bool) -> Result<f64, Error> {
    if !op() {
        return Err(format!("{name}: gateway verification failed").into());
    }
    Ok(median_micros(op))
}

fn gw_key(alg: GwAlg, jwk: &JsonWebKey<'_>) -> Result<Key, Error> {
    Ok(Key::from_jwk(Some("k".into()), alg, &serde_json::to_value(jwk)?)?)
}

/// A token the gateway accepts: issuer, audience, subject, roles, an hour to live.
fn gw_token<A: Algorithm>(alg: &A, key: &A::SigningKey) -> Result<String, Error> {
    let mut custom = serde_json::Map::new();
    custom.insert("iss".into(), "bench".into());
    custom.insert("aud".into(), "gw".into());
    custom.insert("sub".into(), "alice".into());
    custom.insert("roles".into(), serde_json::json!(["developer"]));
    let mut claims = Claims::new(custom);
    let exp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs() + 3600;
    claims.expiration = chrono::DateTime::from_timestamp(i64::try_from(exp)?, 0);
    Ok(alg.token(&Header::empty().with_key_id("k"), &claims, key)?)
}

/// Everything the gateway does per token: parse, check the signature, decode the claims.
fn verify<A: Algorithm>(alg: &A, key: &A::VerifyingKey, token: &str) -> bool {
    let Ok(token) = UntrustedToken::new(black_box(token)) else {
        return false;
    };
    alg.validator::<Empty>(key).validate(&token).is_ok()
}

fn rsa_keypair(jwk: &str) -> Result<(RsaPrivateKey, RsaPublicKey), Error> {
    let jwk: JsonWebKey<'_> = serde_json::from_str(jwk)?;
    let private = RsaPrivateKey::try_from(&jwk)?;
    let public = private.to_public_key();
    Ok((private, public))
}

/// Median over [`BATCHES`] batches of the mean time per call, after warming up
/// (which also lets V8 tier the code up) and sizing a batch to about [`BATCH`].
fn median_micros(op: &dyn Fn() -> bool) -> f64 {
    let mut per_batch = 1_u32;
    loop {
        let start = Instant::now();
        for _ in 0..per_batch {
            black_box(op());
        }
        if start.elapsed() >= BATCH {
            break;
        }
        per_batch = per_batch.saturating_mul(2);
    }
    let mut samples: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_batch {
                black_box(op());
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(per_batch)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples.get(BATCHES / 2).copied().unwrap_or(f64::NAN)
}
