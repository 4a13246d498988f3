//! Differential: `fast_rsa::FastRsaKey::verify_pkcs1v15` and `verify_pss` against the
//! `rsa` crate's PKCS#1 v1.5 and PSS verification (PSS with a salt as long as the hash, as
//! RFC 7518 §3.5 requires), for the test keys in testdata/. Any disagreement is a crash;
//! every signature is checked under both paddings.
//!
//! Input: `[key, control, message length, message..., payload...]`. `key` picks a test key
//! (mod 4; the 3072- and 4096-bit keys sign a fixed message), `control` the hash (mod 3)
//! and how the signature is made (`control / 3 % 5`):
//! - 0: the payload is the signature;
//! - 1: a valid signature of the message, then the payload's edits;
//! - 2: the PKCS#1 v1.5 encoding of the message, the payload's edits applied to it, then
//!   raised to the private exponent, so the fuzzer explores encodings that are almost
//!   right (padding, DigestInfo, lengths) under a signature that is arithmetically valid
//!   (2048-bit keys only, as for 3: the `rsa` crate's private-key operation is slow);
//! - 3: a PSS signature of the message (salt from the payload, as long as the hash when the
//!   payload's first byte is even, else that byte mod 96 long; the `rsa` crate must accept
//!   its own signature under that salt length), then the payload's edits;
//! - 4: a valid signature, checked under the key with one modulus bit flipped.
//!
//! Edits are `(position: u16 BE, xor: u8)` triples; a last odd byte `1` prepends a zero
//! byte to the signature and `2` drops its first byte (both wrong lengths).
#![no_main]

use jwt_compact::jwk::JsonWebKey;
use libfuzzer_sys::fuzz_target;
use mcp_gateway::fast_rsa::{FastRsaKey, HashAlg};
use rsa::rand_core::{CryptoRng, Error as RandError, RngCore};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

const KEYS: [&str; 4] = [
    include_str!("../../testdata/rsa-2048.private.jwk.json"),
    include_str!("../../testdata/rsa-2048-other.private.jwk.json"),
    include_str!("../../testdata/rsa-3072.private.jwk.json"),
    include_str!("../../testdata/rsa-4096.private.jwk.json"),
];

/// What the 3072- and 4096-bit keys sign (a JWT's signing input).
const FIXED_MESSAGE: &[u8] = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";

struct TestKey {
    private: RsaPrivateKey,
    public: RsaPublicKey,
    fast: FastRsaKey,
}

fn keys() -> &'static [TestKey] {
    static KEYS_LOADED: OnceLock<Vec<TestKey>> = OnceLock::new();
    KEYS_LOADED.get_or_init(|| {
        KEYS.iter()
            .map(|json| {
                let jwk: JsonWebKey<'_> = serde_json::from_str(json).expect("test key is a JWK");
                let mut private = RsaPrivateKey::try_from(&jwk).expect("test key is an RSA private key");
                // CRT values make each private-key operation about 3x faster.
                private.precompute().expect("CRT values");
                let public = private.to_public_key();
                let fast = FastRsaKey::new(&public.n().to_bytes_be(), &public.e().to_bytes_be()).expect("fast key");
                TestKey { private, public, fast }
            })
            .collect()
    })
}

#[derive(Clone, Copy, Debug)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn fast(self) -> HashAlg {
        match self {
            Hash::Sha256 => HashAlg::Sha256,
            Hash::Sha384 => HashAlg::Sha384,
            Hash::Sha512 => HashAlg::Sha512,
        }
    }

    fn digest(self, message: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => Sha256::digest(message).to_vec(),
            Hash::Sha384 => Sha384::digest(message).to_vec(),
            Hash::Sha512 => Sha512::digest(message).to_vec(),
        }
    }

    fn pkcs1v15(self) -> Pkcs1v15Sign {
        match self {
            Hash::Sha256 => Pkcs1v15Sign::new::<Sha256>(),
            Hash::Sha384 => Pkcs1v15Sign::new::<Sha384>(),
            Hash::Sha512 => Pkcs1v15Sign::new::<Sha512>(),
        }
    }

    fn pss(self) -> Pss {
        self.pss_with_salt(self.digest(b"").len())
    }

    fn pss_with_salt(self, len: usize) -> Pss {
        match self {
            Hash::Sha256 => Pss::new_with_salt::<Sha256>(len),
            Hash::Sha384 => Pss::new_with_salt::<Sha384>(len),
            Hash::Sha512 => Pss::new_with_salt::<Sha512>(len),
        }
    }

    /// The `DigestInfo` prefix, as the `rsa` crate has it (RFC 8017 §9.2, note 1).
    fn prefix(self) -> Vec<u8> {
        self.pkcs1v15().prefix.to_vec()
    }
}

/// Bytes from the input, then zeros: the "randomness" of PSS salts.
struct InputRng<'a>(&'a [u8]);

impl RngCore for InputRng<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for d in dest {
            (*d, self.0) = match self.0.split_first() {
                Some((&b, rest)) => (b, rest),
                None => (0, self.0),
            };
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), RandError> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for InputRng<'_> {}

fuzz_target!(|data: &[u8]| {
    let [key, control, message_len, rest @ ..] = data else {
        return;
    };
    let mode = control / 3 % 5;
    // The `rsa` crate's private-key operation is slow (about 15 ms at 2048 bits, 90 ms at
    // 4096): modes that need one per input use the 2048-bit keys, and the larger keys sign
    // one fixed message, whose signatures stay cached.
    let index = usize::from(*key) % if matches!(mode, 2 | 3) { 2 } else { keys().len() };
    let key = &keys()[index];
    let hash = [Hash::Sha256, Hash::Sha384, Hash::Sha512][usize::from(*control % 3)];
    let (message, payload) = rest.split_at(usize::from(*message_len).min(rest.len()));
    let message = if index >= 2 && matches!(mode, 1 | 4) { FIXED_MESSAGE } else { message };
    let hashed = hash.digest(message);
    let k = key.public.size();

    let signature = match mode {
        0 => payload.to_vec(),
        1 => edit(sign(index, hash, &hashed), payload),
        2 => {
            let Some(em) = encode(hash, &hashed, k) else { return };
            let em = BigUint::from_bytes_be(&edit(em, payload));
            // Edits to the leading zero byte make the encoding larger than the modulus.
            let Ok(s) = rsa::hazmat::rsa_decrypt_and_check(&key.private, None::<&mut InputRng<'_>>, &em) else {
                return;
            };
            pad(s.to_bytes_be(), k)
        }
        3 => {
            let Some((&choice, payload)) = payload.split_first() else { return };
            let salt_len = if choice % 2 == 0 { hashed.len() } else { usize::from(choice) % 96 };
            let (salt, edits) = payload.split_at(salt_len.min(payload.len()));
            let padding = || hash.pss_with_salt(salt_len);
            let Ok(pss) = key.private.sign_with_rng(&mut InputRng(salt), padding(), &hashed) else {
                return;
            };
            assert!(key.public.verify(padding(), &hashed, &pss).is_ok(), "rsa crate refused its own PSS signature");
            edit(pss, edits)
        }
        _ => {
            let signature = sign(index, hash, &hashed);
            let mut n = key.public.n().to_bytes_be();
            let [hi, lo, ..] = payload else {
                return;
            };
            let bit = usize::from(u16::from_be_bytes([*hi, *lo])) % (n.len() * 8);
            n[bit / 8] ^= 0x80 >> (bit % 8);
            let fast = FastRsaKey::new(&n, &key.public.e().to_bytes_be());
            let reference = RsaPublicKey::new(BigUint::from_bytes_be(&n), key.public.e().clone());
            let (Ok(fast), Ok(reference)) = (fast, reference) else {
                return; // even, or shorter: both may refuse such a key; `fast_rsa`'s tests cover that
            };
            let f = fast.verify_pkcs1v15(hash.fast(), message, &signature);
            let r = reference.verify(hash.pkcs1v15(), &hashed, &signature).is_ok();
            assert_eq!(f, r, "fast_rsa says {f}, rsa says {r} under a modulus with bit {bit} flipped");
            let f = fast.verify_pss(hash.fast(), message, &signature);
            let r = reference.verify(hash.pss(), &hashed, &signature).is_ok();
            assert_eq!(f, r, "PSS: fast_rsa says {f}, rsa says {r} under a modulus with bit {bit} flipped");
            return;
        }
    };

    let fast = key.fast.verify_pkcs1v15(hash.fast(), message, &signature);
    let reference = key.public.verify(hash.pkcs1v15(), &hashed, &signature).is_ok();
    assert_eq!(fast, reference, "fast_rsa says {fast}, rsa says {reference} ({hash:?}, {} bits, mode {})", k * 8, mode);
    let fast = key.fast.verify_pss(hash.fast(), message, &signature);
    let reference = key.public.verify(hash.pss(), &hashed, &signature).is_ok();
    assert_eq!(
        fast,
        reference,
        "PSS: fast_rsa says {fast}, rsa says {reference} ({hash:?}, {} bits, mode {})",
        k * 8,
        mode
    );
});

/// Signatures by (key index, digest).
type Signatures = HashMap<(usize, Vec<u8>), Vec<u8>>;

/// A valid signature, remembered: mutations often keep the key and message.
fn sign(index: usize, hash: Hash, hashed: &[u8]) -> Vec<u8> {
    thread_local! {
        static SIGNED: RefCell<Signatures> = RefCell::new(HashMap::new());
    }
    SIGNED.with_borrow_mut(|signed| {
        if signed.len() > 4096 {
            signed.clear();
        }
        // The digest names the hash too: the lengths differ.
        signed
            .entry((index, hashed.to_vec()))
            .or_insert_with(|| keys()[index].private.sign(hash.pkcs1v15(), hashed).expect("PKCS#1 v1.5 signing"))
            .clone()
    })
}

/// EMSA-PKCS1-v1_5, written out independently of both verifiers.
fn encode(hash: Hash, hashed: &[u8], k: usize) -> Option<Vec<u8>> {
    let t: Vec<u8> = hash.prefix().into_iter().chain(hashed.iter().copied()).collect();
    let ps = k.checked_sub(t.len() + 3)?;
    let mut em = vec![0x00, 0x01];
    em.extend(std::iter::repeat_n(0xff, ps));
    em.push(0x00);
    em.extend(t);
    Some(em)
}

fn pad(bytes: Vec<u8>, k: usize) -> Vec<u8> {
    let mut out = vec![0; k.saturating_sub(bytes.len())];
    out.extend(bytes);
    out
}

/// Applies `(position, xor)` edits, then a length change named by a last odd byte.
fn edit(mut bytes: Vec<u8>, payload: &[u8]) -> Vec<u8> {
    let mut edits = payload.chunks_exact(3);
    for e in edits.by_ref() {
        if let ([hi, lo, x], false) = (e, bytes.is_empty()) {
            let at = usize::from(u16::from_be_bytes([*hi, *lo])) % bytes.len();
            bytes[at] ^= x;
        }
    }
    match edits.remainder() {
        [1] => bytes.insert(0, 0),
        [2] if !bytes.is_empty() => {
            bytes.remove(0);
        }
        _ => {}
    }
    bytes
}
