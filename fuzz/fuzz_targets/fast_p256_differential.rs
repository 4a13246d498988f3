//! Differential: `fast_p256::FastP256Key::verify` against the `p256` crate's ECDSA
//! verification. Any disagreement is a crash.
//!
//! Input: `[key, mode, message length, message..., payload...]`. `key` picks one of four
//! fixed keys (mod 4), `mode` how the signature is made (mod 5):
//! - 0: the payload's first 64 bytes (zero-padded) are the signature;
//! - 1: a valid signature of the message, then the payload's edits;
//! - 2: the same with s replaced by n - s (both verifiers accept high S), then the edits;
//! - 3: a valid signature, checked under the key with the payload's edits applied to its
//!   coordinates `x || y` (both must also agree on whether such a key loads at all);
//! - 4: arbitrary scalars. The payload's first 32 bytes are a nonce k and the next 32 are
//!   s; with `R = k·G`, `r = x(R) mod n`, `u1 = e/s` and `u2 = r/s`, the key
//!   `Q = (R - u1·G)/u2` makes (r, s) valid, so the fuzzer steers `u1·G + u2·Q` directly.
//!   Both must accept it; then the remaining payload's edits apply.
//!
//! Edits are `(position: u16 BE, xor: u8)` triples. Signatures are always 64 bytes: other
//! lengths are refused before either verifier runs (jwt-compact's `LENGTH`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_gateway::fast_p256::FastP256Key;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::elliptic_curve::Field;
use p256::{EncodedPoint, FieldBytes, ProjectivePoint, Scalar, U256};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

struct TestKey {
    private: SigningKey,
    fast: FastP256Key,
}

fn keys() -> &'static [TestKey] {
    static KEYS: OnceLock<Vec<TestKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        [0x11_u8, 0x5a, 0xa7, 0xfe]
            .iter()
            .map(|&byte| {
                let private = SigningKey::from_slice(&[byte; 32]).expect("a scalar below n");
                let fast = fast_key(private.verifying_key()).expect("a valid key");
                TestKey { private, fast }
            })
            .collect()
    })
}

fn coordinates(key: &VerifyingKey) -> [u8; 64] {
    let point = key.to_encoded_point(false);
    let mut xy = [0; 64];
    xy[..32].copy_from_slice(point.x().expect("not the identity"));
    xy[32..].copy_from_slice(point.y().expect("not the identity"));
    xy
}

fn fast_key(key: &VerifyingKey) -> Result<FastP256Key, String> {
    let xy = coordinates(key);
    FastP256Key::from_coordinates(&xy[..32], &xy[32..])
}

fn bytes32(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    let n = bytes.len().min(32);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

fn scalar(bytes: &[u8]) -> Scalar {
    <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(bytes32(bytes)))
}

fn sign(key: &SigningKey, message: &[u8]) -> [u8; 64] {
    let signature: Signature = key.sign(message);
    signature.to_bytes().into()
}

/// Both verdicts; they must agree.
fn check(reference: &VerifyingKey, fast: &FastP256Key, message: &[u8], signature: &[u8; 64], what: &str) -> bool {
    let ours = fast.verify(message, signature);
    let theirs = Signature::from_slice(signature).is_ok_and(|s| reference.verify(message, &s).is_ok());
    assert_eq!(ours, theirs, "fast_p256 says {ours}, p256 says {theirs} ({what}, signature {signature:02x?})");
    ours
}

fuzz_target!(|data: &[u8]| {
    let [key, mode, message_len, rest @ ..] = data else {
        return;
    };
    let key = &keys()[usize::from(*key) % keys().len()];
    let (message, payload) = rest.split_at(usize::from(*message_len).min(rest.len()));
    let public = key.private.verifying_key();
    match mode % 5 {
        0 => {
            let mut signature = [0; 64];
            let n = payload.len().min(64);
            signature[..n].copy_from_slice(&payload[..n]);
            check(public, &key.fast, message, &signature, "raw");
        }
        1 => {
            let signature = edit(sign(&key.private, message), payload);
            check(public, &key.fast, message, &signature, "edited");
        }
        2 => {
            let signature = sign(&key.private, message);
            let s = -scalar(&signature[32..]);
            let mut mirrored = signature;
            mirrored[32..].copy_from_slice(&s.to_bytes());
            assert!(check(public, &key.fast, message, &mirrored, "n - s"), "n - s refused");
            check(public, &key.fast, message, &edit(mirrored, payload), "n - s, edited");
        }
        3 => {
            let signature = sign(&key.private, message);
            let xy = edit(coordinates(public), payload);
            let fast = FastP256Key::from_coordinates(&xy[..32], &xy[32..]);
            let encoded =
                EncodedPoint::from_affine_coordinates(&bytes32(&xy[..32]).into(), &bytes32(&xy[32..]).into(), false);
            let reference = VerifyingKey::from_encoded_point(&encoded);
            assert_eq!(fast.is_ok(), reference.is_ok(), "fast_p256 and p256 disagree on loading key {xy:02x?}");
            if let (Ok(fast), Ok(reference)) = (fast, reference) {
                check(&reference, &fast, message, &signature, "edited key");
            }
        }
        _ => {
            let (k, rest) = payload.split_at(payload.len().min(32));
            let (s, edits) = rest.split_at(rest.len().min(32));
            let (k, s) = (scalar(k), scalar(s));
            if bool::from(k.is_zero()) || bool::from(s.is_zero()) {
                return;
            }
            let r_point = ProjectivePoint::GENERATOR * k;
            let r = scalar(r_point.to_affine().to_encoded_point(false).x().expect("k is not zero"));
            if bool::from(r.is_zero()) {
                return;
            }
            let e = scalar(&Sha256::digest(message));
            let s_inv = s.invert().expect("s is not zero");
            let (u1, u2) = (e * s_inv, r * s_inv);
            let q = (r_point - ProjectivePoint::GENERATOR * u1) * u2.invert().expect("r is not zero");
            let Ok(reference) = VerifyingKey::from_affine(q.to_affine()) else {
                return; // Q is the identity
            };
            let fast = fast_key(&reference).expect("p256 accepted the key");
            let mut signature = [0; 64];
            signature[..32].copy_from_slice(&r.to_bytes());
            signature[32..].copy_from_slice(&s.to_bytes());
            assert!(check(&reference, &fast, message, &signature, "constructed"), "constructed signature refused");
            check(&reference, &fast, message, &edit(signature, edits), "constructed, edited");
        }
    }
});

/// Applies `(position, xor)` edits.
fn edit<const L: usize>(mut bytes: [u8; L], payload: &[u8]) -> [u8; L] {
    for e in payload.chunks_exact(3) {
        if let [hi, lo, x] = e {
            bytes[usize::from(u16::from_be_bytes([*hi, *lo])) % L] ^= x;
        }
    }
    bytes
}
