//! RSA signature verification, PKCS#1 v1.5 (`RS256`, `RS384`, `RS512`) and PSS (`PS256`,
//! `PS384`, `PS512`), that is fast in wasm.
//!
//! jwt-compact's `Rsa` goes through the `rsa` crate, whose big integers use 64-bit digits;
//! wasm32 has no 64x64->128 multiply, so every digit product is emulated and one RS256
//! verification costs hundreds of microseconds. Verifying only needs `s^e mod n` with a
//! small public exponent, so this module does Montgomery multiplication on 32-bit limbs
//! (u32 x u32 -> u64 is a native wasm instruction) and nothing else. Measured with
//! `scripts/bench-jwt.sh` on V8, a 2048-bit RS256 token takes about 110 us against about
//! 700 us for jwt-compact's `Rsa`; crypto-bigint 0.7's `BoxedMontyForm` (constant-time,
//! windowed) took about 480 us for the exponentiation alone.
//!
//! Everything handled here is public (key, signature, message), so nothing needs to run in
//! constant time. Signing is deliberately not supported.

use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmSignature};
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;

/// RFC 7518 §3.3: keys of 2048 bits or larger MUST be used.
pub const MIN_MODULUS_BITS: usize = 2048;
/// Bounds the cost of one verification (it grows with the square of the size); identity
/// providers sign with 2048 to 4096 bits.
pub const MAX_MODULUS_BITS: usize = 4096;
/// Verification costs one multiplication per exponent bit, so a huge exponent in a
/// published key would make every verification as slow as signing. Real keys use 65537.
pub const MAX_PUBLIC_EXPONENT: u64 = 1 << 32;

/// The hash function of an `RS*` algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    /// DER encoding of the `DigestInfo` that precedes the hash (RFC 8017 §9.2, note 1).
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            HashAlg::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
                0x04, 0x20,
            ],
            HashAlg::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00,
                0x04, 0x30,
            ],
            HashAlg::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00,
                0x04, 0x40,
            ],
        }
    }

    fn digest(self, message: &[u8]) -> Vec<u8> {
        self.digest_parts(&[message])
    }

    /// The hash of the concatenation of `parts`.
    fn digest_parts(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut hasher = D::new();
            for part in parts {
                hasher.update(part);
            }
            hasher.finalize().to_vec()
        }
        match self {
            HashAlg::Sha256 => run::<Sha256>(parts),
            HashAlg::Sha384 => run::<Sha384>(parts),
            HashAlg::Sha512 => run::<Sha512>(parts),
        }
    }

    /// Output length in bytes.
    fn len(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// MGF1 (RFC 8017 §B.2.1) of `seed`, XORed into `out`.
    fn mgf1_xor(self, seed: &[u8], out: &mut [u8]) {
        for (counter, chunk) in (0_u32..).zip(out.chunks_mut(self.len())) {
            let mask = self.digest_parts(&[seed, &counter.to_be_bytes()]);
            for (byte, m) in chunk.iter_mut().zip(mask) {
                *byte ^= m;
            }
        }
    }

    /// EMSA-PKCS1-v1_5 encoding (RFC 8017 §9.2) of `message` into `len` bytes:
    /// `0x00 0x01 FF..FF 0x00 DigestInfo H(m)`.
    fn encode(self, message: &[u8], len: usize) -> Option<Vec<u8>> {
        let prefix = self.digest_info_prefix();
        let digest = self.digest(message);
        let padding = len.checked_sub(3 + prefix.len() + digest.len())?;
        // RFC 8017 requires at least 8 bytes of 0xFF; always true for 2048-bit keys and up.
        if padding < 8 {
            return None;
        }
        let mut em = Vec::with_capacity(len);
        em.extend_from_slice(&[0x00, 0x01]);
        em.resize(2 + padding, 0xff);
        em.push(0x00);
        em.extend_from_slice(prefix);
        em.extend_from_slice(&digest);
        Some(em)
    }
}

/// An RSA public key, precomputed for Montgomery arithmetic.
#[derive(Clone, PartialEq, Eq)]
pub struct FastRsaKey {
    /// The modulus as little-endian 32-bit limbs.
    n: Vec<u32>,
    /// `-n^-1 mod 2^32`, the per-limb Montgomery reduction factor.
    n0_inv: u32,
    /// `R^2 mod n` with `R = 2^(32 * limbs)`: multiplying by it enters Montgomery form.
    r2: Vec<u32>,
    e: u64,
    bits: usize,
    /// Modulus length in bytes; a signature must be exactly this long.
    len: usize,
}

impl fmt::Debug for FastRsaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastRsaKey").field("bits", &self.bits).field("e", &self.e).finish_non_exhaustive()
    }
}

impl FastRsaKey {
    /// A key from its big-endian modulus and public exponent.
    pub fn new(n: &[u8], e: &[u8]) -> Result<FastRsaKey, String> {
        let PublicKeyBounds { bits, e } = check_public_key(n, e)?;
        let n = strip_leading_zeros(n);
        let limbs = n.len().div_ceil(4);
        let n = limbs_from_be(n, limbs);
        let n0_inv = neg_inverse(n.first().copied().unwrap_or(1));
        let r2 = r_squared(&n);
        Ok(FastRsaKey { n, n0_inv, r2, e, bits, len: bits.div_ceil(8) })
    }

    /// The same key as an `rsa` crate (and jwt-compact `Rsa`) public key.
    #[cfg(test)]
    pub fn from_rsa(key: &jwt_compact::alg::RsaPublicKey) -> Result<FastRsaKey, String> {
        FastRsaKey::try_from(&JsonWebKey::from(key))
    }

    /// Modulus length in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// Checks an RSASSA-PKCS1-v1_5 signature (RFC 8017 §8.2.2) of `message`.
    ///
    /// The recovered encoding is compared with the expected one in full rather than
    /// parsed: lenient parsing of the padding or `DigestInfo` is what makes
    /// Bleichenbacher-style signature forgeries possible.
    pub fn verify_pkcs1v15(&self, hash: HashAlg, message: &[u8], signature: &[u8]) -> bool {
        if signature.len() != self.len {
            return false;
        }
        let s = limbs_from_be(signature, self.n.len());
        if !less_than(&s, &self.n) {
            return false;
        }
        let Some(expected) = hash.encode(message, self.len) else {
            return false;
        };
        self.public_op(&s) == limbs_from_be(&expected, self.n.len())
    }

    /// Checks an RSASSA-PSS signature (RFC 8017 §8.1.2, EMSA-PSS-VERIFY of §9.1.2) of
    /// `message`, with MGF1 over the same hash and a salt as long as the hash, which is
    /// what RFC 7518 §3.5 requires of PS256/384/512 (other salt lengths are refused).
    pub fn verify_pss(&self, hash: HashAlg, message: &[u8], signature: &[u8]) -> bool {
        if signature.len() != self.len {
            return false;
        }
        let s = limbs_from_be(signature, self.n.len());
        if !less_than(&s, &self.n) {
            return false;
        }
        let m = limbs_to_be(&self.public_op(&s), self.len);
        // The encoded message has emBits = modBits - 1 bits, in emLen bytes.
        let em_bits = self.bits - 1;
        let em_len = em_bits.div_ceil(8);
        let (h_len, salt_len) = (hash.len(), hash.len());
        let Some((leading, em)) = m.split_at_checked(self.len - em_len) else {
            return false;
        };
        // m < 2^emBits: whatever lies above emBits is zero.
        let unused_bits = 8 * em_len - em_bits;
        if leading.iter().any(|&b| b != 0)
            || em.first().is_none_or(|&b| b.checked_shr(8 - unused_bits as u32).unwrap_or(0) != 0)
        {
            return false;
        }
        if em_len < h_len + salt_len + 2 || em.last() != Some(&0xbc) {
            return false;
        }
        let Some((masked_db, rest)) = em.split_at_checked(em_len - h_len - 1) else {
            return false;
        };
        let h = rest.get(..h_len).unwrap_or_default();
        let mut db = masked_db.to_vec();
        hash.mgf1_xor(h, &mut db);
        if let Some(first) = db.first_mut() {
            *first &= 0xff >> unused_bits;
        }
        // DB = PS (zeros) || 0x01 || salt.
        let Some((padding, salt)) = db.split_at_checked(db.len() - salt_len) else {
            return false;
        };
        let Some((&one, zeros)) = padding.split_last() else {
            return false;
        };
        if one != 0x01 || zeros.iter().any(|&b| b != 0) {
            return false;
        }
        let m_hash = hash.digest(message);
        hash.digest_parts(&[&[0; 8], &m_hash, salt]) == h
    }

    /// `s^e mod n` for `s < n`.
    fn public_op(&self, s: &[u32]) -> Vec<u32> {
        let mut work = Work::new(self.n.len());
        // s·R: s in Montgomery form.
        let s_mont = self.mont_mul(s, &self.r2, &mut work).to_vec();
        let mut acc = s_mont.clone();
        let bits = u64::BITS - self.e.leading_zeros();
        // Left to right square-and-multiply. `e` is odd, so the last step always multiplies;
        // multiplying by the plain `s` there also leaves Montgomery form for free.
        for bit in (0..bits.saturating_sub(1)).rev() {
            let squared = self.mont_mul(&acc, &acc, &mut work);
            assign(&mut acc, squared);
            let factor = match bit {
                0 => s,
                _ if (self.e >> bit) & 1 == 1 => &s_mont,
                _ => continue,
            };
            let product = self.mont_mul(&acc, factor, &mut work);
            assign(&mut acc, product);
        }
        acc
    }

    /// Montgomery product `a·b·R^-1 mod n` for `a, b < n`, fully reduced.
    ///
    /// Multiplication and reduction are interleaved one limb of `b` at a time, keeping two
    /// carry chains so that every intermediate fits a u64 (CIOS; Koç, Acar and Kaliski,
    /// "Analyzing and comparing Montgomery multiplication algorithms", 1996).
    fn mont_mul<'w>(&self, a: &[u32], b: &[u32], work: &'w mut Work) -> &'w [u32] {
        let Work { t, u } = work;
        t.fill(0);
        let (Some((&a0, a_rest)), Some((&n0, n_rest))) = (a.split_first(), self.n.split_first()) else {
            return &[];
        };
        for &b_i in b {
            let b_i = u64::from(b_i);
            let (Some((&t0, t_rest)), Some(&t_top)) = (t.split_first(), t.last()) else {
                return &[];
            };
            let x = u64::from(t0) + u64::from(a0) * b_i;
            let m = u64::from((x as u32).wrapping_mul(self.n0_inv));
            // The low limb of this sum is zero by the choice of `m`: it is shifted out.
            let y = u64::from(x as u32) + m * u64::from(n0);
            let (mut carry_ab, mut carry_mn) = (x >> 32, y >> 32);
            for (((out, &t_j), &a_j), &n_j) in u.iter_mut().zip(t_rest).zip(a_rest).zip(n_rest) {
                let x = u64::from(t_j) + u64::from(a_j) * b_i + carry_ab;
                let y = u64::from(x as u32) + m * u64::from(n_j) + carry_mn;
                *out = y as u32;
                (carry_ab, carry_mn) = (x >> 32, y >> 32);
            }
            let top = u64::from(t_top) + carry_ab + carry_mn;
            if let [.., high, overflow] = u.as_mut_slice() {
                *high = top as u32;
                *overflow = (top >> 32) as u32;
            }
            std::mem::swap(t, u);
        }
        // t < 2n here; one subtraction reduces it.
        let Some((low, overflow)) = t.split_at_mut_checked(self.n.len()) else {
            return &[];
        };
        if overflow.iter().any(|&limb| limb != 0) || !less_than(low, &self.n) {
            sub_in_place(low, &self.n);
        }
        low
    }
}

/// Scratch space for [`FastRsaKey::mont_mul`]: two buffers of `limbs + 1` limbs.
struct Work {
    t: Vec<u32>,
    u: Vec<u32>,
}

impl Work {
    fn new(limbs: usize) -> Work {
        Work { t: vec![0; limbs + 1], u: vec![0; limbs + 1] }
    }
}

fn assign(dst: &mut Vec<u32>, src: &[u32]) {
    dst.clear();
    dst.extend_from_slice(src);
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    bytes.get(zeros..).unwrap_or_default()
}

/// Big-endian bytes (at most `4 * limbs` of them) to `limbs` little-endian u32 limbs.
fn limbs_from_be(bytes: &[u8], limbs: usize) -> Vec<u32> {
    let mut out: Vec<u32> =
        bytes.rchunks(4).map(|chunk| chunk.iter().fold(0_u32, |acc, &b| (acc << 8) | u32::from(b))).collect();
    out.resize(limbs, 0);
    out
}

/// Little-endian u32 limbs to `len` big-endian bytes (the value must fit).
fn limbs_to_be(limbs: &[u32], len: usize) -> Vec<u8> {
    let mut out: Vec<u8> = limbs.iter().rev().flat_map(|limb| limb.to_be_bytes()).collect();
    let extra = out.len().saturating_sub(len);
    out.drain(..extra);
    out
}

/// `a < b` for numbers of the same limb count.
fn less_than(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x < y;
        }
    }
    false
}

/// `a -= b` modulo `2^(32 * limbs)`.
fn sub_in_place(a: &mut [u32], b: &[u32]) {
    let mut borrow = false;
    for (x, &y) in a.iter_mut().zip(b) {
        let (d, b1) = x.overflowing_sub(y);
        let (d, b2) = d.overflowing_sub(u32::from(borrow));
        *x = d;
        borrow = b1 || b2;
    }
}

/// `-n0^-1 mod 2^32` for odd `n0`, by Newton iteration (each step doubles the correct bits).
fn neg_inverse(n0: u32) -> u32 {
    let mut inv: u32 = 1;
    for _ in 0..5 {
        inv = inv.wrapping_mul(2_u32.wrapping_sub(n0.wrapping_mul(inv)));
    }
    inv.wrapping_neg()
}

/// `2^(64 * limbs) mod n` by repeated doubling. Runs once per key, at configure time.
fn r_squared(n: &[u32]) -> Vec<u32> {
    let mut x = vec![0_u32; n.len()];
    if let Some(low) = x.first_mut() {
        *low = 1;
    }
    for _ in 0..64 * n.len() {
        // x < n, so 2x < 2n and one subtraction reduces it.
        let mut carry = 0;
        for limb in x.iter_mut() {
            let next = *limb >> 31;
            *limb = (*limb << 1) | carry;
            carry = next;
        }
        if carry != 0 || !less_than(&x, n) {
            sub_in_place(&mut x, n);
        }
    }
    x
}

impl TryFrom<&JsonWebKey<'_>> for FastRsaKey {
    type Error = String;

    fn try_from(jwk: &JsonWebKey<'_>) -> Result<Self, Self::Error> {
        match jwk {
            JsonWebKey::Rsa { modulus, public_exponent, .. } => FastRsaKey::new(modulus, public_exponent),
            other => Err(format!("expected an RSA key, got {}", other.key_type())),
        }
    }
}

/// What [`check_public_key`] found acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKeyBounds {
    pub bits: usize,
    pub e: u64,
}

/// Whether a big-endian modulus and public exponent make a key the gateway verifies with:
/// an odd modulus of [`MIN_MODULUS_BITS`] to [`MAX_MODULUS_BITS`] bits and an odd exponent
/// of 3 to [`MAX_PUBLIC_EXPONENT`]. Every RSA key goes through this, RS* and PS* alike.
pub fn check_public_key(n: &[u8], e: &[u8]) -> Result<PublicKeyBounds, String> {
    let n = strip_leading_zeros(n);
    let bits = match n.first() {
        Some(&top) => n.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    };
    if !(MIN_MODULUS_BITS..=MAX_MODULUS_BITS).contains(&bits) {
        return Err(format!("RSA modulus must have {MIN_MODULUS_BITS} to {MAX_MODULUS_BITS} bits, got {bits}"));
    }
    if n.last().is_some_and(|low| low & 1 == 0) {
        return Err("RSA modulus must be odd".to_owned());
    }
    let e_bytes = strip_leading_zeros(e);
    if e_bytes.len() > 8 {
        return Err("RSA public exponent must be at most 2^32".to_owned());
    }
    let e = e_bytes.iter().fold(0_u64, |acc, &b| (acc << 8) | u64::from(b));
    if e < 3 || e % 2 == 0 || e > MAX_PUBLIC_EXPONENT {
        return Err(format!("RSA public exponent must be odd, at least 3 and at most 2^32, got {e}"));
    }
    Ok(PublicKeyBounds { bits, e })
}

/// An RSA signature as carried in a JWT; checked against the key's length on verification.
#[derive(Debug, Clone)]
pub struct FastRsaSignature(Vec<u8>);

impl AlgorithmSignature for FastRsaSignature {
    fn try_from_slice(slice: &[u8]) -> anyhow::Result<Self> {
        Ok(FastRsaSignature(slice.to_vec()))
    }

    fn as_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.0)
    }
}

/// How the signed hash is padded: PKCS#1 v1.5 (`RS*`) or PSS (`PS*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Pkcs1v15,
    Pss,
}

/// The `RS256`/`RS384`/`RS512` and `PS256`/`PS384`/`PS512` JWT algorithms, verification
/// only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastRsa {
    hash: HashAlg,
    padding: Padding,
}

impl FastRsa {
    pub const fn new(hash: HashAlg, padding: Padding) -> FastRsa {
        FastRsa { hash, padding }
    }

    pub const fn rs256() -> FastRsa {
        FastRsa::new(HashAlg::Sha256, Padding::Pkcs1v15)
    }

    pub const fn rs384() -> FastRsa {
        FastRsa::new(HashAlg::Sha384, Padding::Pkcs1v15)
    }

    pub const fn rs512() -> FastRsa {
        FastRsa::new(HashAlg::Sha512, Padding::Pkcs1v15)
    }

    pub const fn ps256() -> FastRsa {
        FastRsa::new(HashAlg::Sha256, Padding::Pss)
    }

    pub const fn ps384() -> FastRsa {
        FastRsa::new(HashAlg::Sha384, Padding::Pss)
    }

    pub const fn ps512() -> FastRsa {
        FastRsa::new(HashAlg::Sha512, Padding::Pss)
    }
}

impl Algorithm for FastRsa {
    /// No signing key can exist, so `sign` can never be called.
    type SigningKey = Infallible;
    type VerifyingKey = FastRsaKey;
    type Signature = FastRsaSignature;

    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(match (self.padding, self.hash) {
            (Padding::Pkcs1v15, HashAlg::Sha256) => "RS256",
            (Padding::Pkcs1v15, HashAlg::Sha384) => "RS384",
            (Padding::Pkcs1v15, HashAlg::Sha512) => "RS512",
            (Padding::Pss, HashAlg::Sha256) => "PS256",
            (Padding::Pss, HashAlg::Sha384) => "PS384",
            (Padding::Pss, HashAlg::Sha512) => "PS512",
        })
    }

    fn sign(&self, signing_key: &Infallible, _message: &[u8]) -> FastRsaSignature {
        match *signing_key {}
    }

    fn verify_signature(&self, signature: &FastRsaSignature, verifying_key: &FastRsaKey, message: &[u8]) -> bool {
        match self.padding {
            Padding::Pkcs1v15 => verifying_key.verify_pkcs1v15(self.hash, message, &signature.0),
            Padding::Pss => verifying_key.verify_pss(self.hash, message, &signature.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwt_compact::alg::{ModulusBits, Rsa, RsaPrivateKey, RsaPublicKey};
    use jwt_compact::prelude::*;
    use jwt_compact::Empty;

    const MESSAGE: &[u8] = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";

    /// Fixed test keys: generating RSA keys in a debug build takes minutes.
    fn keypair(bits: ModulusBits) -> (RsaPrivateKey, RsaPublicKey) {
        load_keypair(match bits {
            ModulusBits::TwoKibibytes => include_str!("../testdata/rsa-2048.private.jwk.json"),
            ModulusBits::ThreeKibibytes => include_str!("../testdata/rsa-3072.private.jwk.json"),
            _ => include_str!("../testdata/rsa-4096.private.jwk.json"),
        })
    }

    fn load_keypair(jwk: &str) -> (RsaPrivateKey, RsaPublicKey) {
        let jwk: JsonWebKey<'_> = serde_json::from_str(jwk).unwrap();
        let private = RsaPrivateKey::try_from(&jwk).unwrap();
        let public = private.to_public_key();
        (private, public)
    }

    fn all_sizes() -> [ModulusBits; 3] {
        [ModulusBits::TwoKibibytes, ModulusBits::ThreeKibibytes, ModulusBits::FourKibibytes]
    }

    fn fast_key(public: &RsaPublicKey) -> FastRsaKey {
        FastRsaKey::from_rsa(public).unwrap()
    }

    fn modulus_and_exponent(public: &RsaPublicKey) -> (Vec<u8>, Vec<u8>) {
        match JsonWebKey::from(public) {
            JsonWebKey::Rsa { modulus, public_exponent, .. } => (modulus.into_owned(), public_exponent.into_owned()),
            other => panic!("not an RSA JWK: {other}"),
        }
    }

    /// Big-endian `a + b` for equal lengths, or `None` if the sum needs another byte.
    fn add_be(a: &[u8], b: &[u8]) -> Option<Vec<u8>> {
        let mut out = vec![0; a.len()];
        let mut carry = 0_u16;
        for i in (0..a.len()).rev() {
            let sum = u16::from(a[i]) + u16::from(b[i]) + carry;
            out[i] = sum as u8;
            carry = sum >> 8;
        }
        (carry == 0).then_some(out)
    }

    fn sign(alg: Rsa, private: &RsaPrivateKey, message: &[u8]) -> Vec<u8> {
        alg.sign(private, message).as_bytes().into_owned()
    }

    fn flip_bit(bytes: &[u8], bit: usize) -> Vec<u8> {
        let mut out = bytes.to_vec();
        out[bit / 8] ^= 1 << (bit % 8);
        out
    }

    const HASHES: [(HashAlg, Rsa); 3] =
        [(HashAlg::Sha256, Rsa::rs256()), (HashAlg::Sha384, Rsa::rs384()), (HashAlg::Sha512, Rsa::rs512())];

    #[test]
    fn accepts_pkcs1v15_signatures_made_by_rsa_crate() {
        for bits in all_sizes() {
            let (private, public) = &keypair(bits);
            let key = fast_key(public);
            assert_eq!(key.bits(), bits.bits());
            for (hash, alg) in HASHES {
                let signature = sign(alg, private, MESSAGE);
                assert!(key.verify_pkcs1v15(hash, MESSAGE, &signature), "{bits:?} {hash:?}");
            }
        }
    }

    #[test]
    fn rejects_any_flipped_signature_bit() {
        let (private, public) = &keypair(ModulusBits::TwoKibibytes);
        let key = fast_key(public);
        let signature = sign(Rsa::rs256(), private, MESSAGE);
        for bit in [0, 1, 7, 8, 100, 1000, 2046, 2047] {
            let bad = flip_bit(&signature, bit);
            assert!(!key.verify_pkcs1v15(HashAlg::Sha256, MESSAGE, &bad), "bit {bit}");
        }
    }

    #[test]
    fn rejects_any_flipped_message_bit() {
        let (private, public) = &keypair(ModulusBits::TwoKibibytes);
        let key = fast_key(public);
        let signature = sign(Rsa::rs256(), private, MESSAGE);
        for bit in 0..MESSAGE.len() * 8 {
            let bad = flip_bit(MESSAGE, bit);
            assert!(!key.verify_pkcs1v15(HashAlg::Sha256, &bad, &signature), "bit {bit}");
        }
    }

    #[test]
    fn rejects_signature_under_a_modulus_with_a_flipped_bit() {
        let (private, public) = &keypair(ModulusBits::TwoKibibytes);
        let signature = sign(Rsa::rs256(), private, MESSAGE);
        let (n, e) = modulus_and_exponent(public);
        // Bit 0 of the last byte would make the modulus even, which `new` refuses.
        // Bit 7 is the top bit (the key would shrink below 2048 bits) and bit 2040 the
        // bottom one (the modulus would be even); `new` refuses both.
        for bit in [0, 6, 8, 500, 1500, 2041, 2047] {
            let key = FastRsaKey::new(&flip_bit(&n, bit), &e).unwrap();
            assert!(!key.verify_pkcs1v15(HashAlg::Sha256, MESSAGE, &signature), "bit {bit}");
        }
    }

    #[test]
    fn rejects_signature_of_the_wrong_length() {
        let (private, public) = &keypair(ModulusBits::TwoKibibytes);
        let key = fast_key(public);
        let signature = sign(Rsa::rs256(), private, MESSAGE);
        let mut longer = vec![0];
        longer.extend_from_slice(&signature);
        assert!(!key.verify_pkcs1v15(HashAlg::Sha256, MESSAGE, &longer));
        assert!(!key.verify_pkcs1v15(HashAlg::Sha256, MESSAGE, &signature[1..]));
        assert!(!key.verify_pkcs1v15(HashAlg::Sha256, MESSAGE, &[]));
    }

    #[test]
    fn rejects_signature_not_below_the_modulus() {
        let (private, public) = &keypair(ModulusBits::TwoKibibytes);
        let key = fast_key(public);
        let (n, _) = modulus_and_exponent(public);
        assert!(!key.verify_pkcs1v15(HashAlg::Sha256, MESSAGE, &n));
        assert!(!key.verify_pkcs1v15(HashAlg::Sha256, MESSAGE, &vec![0xff; n.len()]));
        // s + n is congruent to a valid signature but must still be refused.
        let signature = sign(Rsa::rs256(), private, MESSAGE);
        if let Some(sum) = add_be(&signature, &n) {
            assert!(!key.verify_pkcs1v15(HashAlg::Sha256, MESSAGE, &sum));
        }
    }

    #[test]
    fn rejects_pss_signatures() {
        let (private, public) = &keypair(ModulusBits::TwoKibibytes);
        let key = fast_key(public);
        let signature = sign(Rsa::ps256(), private, MESSAGE);
        assert!(!key.verify_pkcs1v15(HashAlg::Sha256, MESSAGE, &signature));
    }

    #[test]
    fn rejects_signature_made_with_another_key() {
        let (private, public) = &keypair(ModulusBits::TwoKibibytes);
        let (other_private, other_public) = load_keypair(include_str!("../testdata/rsa-2048-other.private.jwk.json"));
        let (_, public_3072) = keypair(ModulusBits::ThreeKibibytes);
        let signature = sign(Rsa::rs256(), &other_private, MESSAGE);
        assert!(!fast_key(public).verify_pkcs1v15(HashAlg::Sha256, MESSAGE, &signature));
        let signature = sign(Rsa::rs256(), private, MESSAGE);
        assert!(!fast_key(&other_public).verify_pkcs1v15(HashAlg::Sha256, MESSAGE, &signature));
        assert!(!fast_key(&public_3072).verify_pkcs1v15(HashAlg::Sha256, MESSAGE, &signature));
    }

    #[test]
    fn rejects_signature_with_another_hash_algorithm() {
        let (private, public) = &keypair(ModulusBits::TwoKibibytes);
        let key = fast_key(public);
        for (signed_with, alg) in HASHES {
            let signature = sign(alg, private, MESSAGE);
            for (hash, _) in HASHES {
                assert_eq!(
                    key.verify_pkcs1v15(hash, MESSAGE, &signature),
                    hash == signed_with,
                    "signed with {signed_with:?}, checked with {hash:?}"
                );
            }
        }
    }

    #[test]
    fn rejects_unusable_keys() {
        let odd_2048 = {
            let mut n = vec![0xc5; 256];
            n[255] = 0x01;
            n
        };
        let e = [0x01, 0x00, 0x01];
        assert!(FastRsaKey::new(&odd_2048, &e).is_ok());
        // Leading zero bytes (as some encoders emit) do not change the key.
        let mut padded = vec![0, 0];
        padded.extend_from_slice(&odd_2048);
        assert_eq!(FastRsaKey::new(&padded, &e).unwrap().bits(), 2048);

        let too_small = &odd_2048[1..];
        assert!(FastRsaKey::new(too_small, &e).unwrap_err().contains("2040"));
        let mut even = odd_2048.clone();
        even[255] = 0x02;
        assert!(FastRsaKey::new(&even, &e).unwrap_err().contains("odd"));
        let mut too_large = vec![0x80; 1025];
        too_large[1024] = 0x01;
        assert!(FastRsaKey::new(&too_large, &e).is_err());
        assert!(FastRsaKey::new(&[], &e).is_err());
        for bad_e in [&[][..], &[1], &[2], &[0x01, 0x00, 0x00], &[0x01, 0, 0, 0, 1], &[0x02, 0, 0, 0, 1], &[1; 9]] {
            assert!(FastRsaKey::new(&odd_2048, bad_e).is_err(), "e = {bad_e:?}");
        }
        assert!(FastRsaKey::new(&odd_2048, &[3]).is_ok());
        assert!(FastRsaKey::new(&odd_2048, &[0xff; 4]).is_ok(), "2^32 - 1 is the largest odd exponent allowed");
    }

    #[test]
    fn modulus_sizes_are_bounded_to_2048_through_4096_bits() {
        let odd = |bytes: usize, top: u8| {
            let mut n = vec![0xc5; bytes];
            n[0] = top;
            n[bytes - 1] = 0x01;
            n
        };
        let e = [0x01, 0x00, 0x01];
        assert_eq!(check_public_key(&odd(256, 0x80), &e).unwrap().bits, 2048);
        assert_eq!(check_public_key(&odd(512, 0xff), &e).unwrap().bits, 4096);
        let err = check_public_key(&odd(256, 0x7f), &e).unwrap_err();
        assert!(err.contains("2047"), "{err}");
        let err = check_public_key(&odd(513, 0x01), &e).unwrap_err();
        assert!(err.contains("4097"), "{err}");
        assert!(check_public_key(&odd(128, 0xff), &e).is_err(), "1024 bits");
        for (_, public) in all_sizes().map(keypair) {
            let (n, e) = modulus_and_exponent(&public);
            assert!(check_public_key(&n, &e).is_ok());
        }
    }

    #[test]
    fn builds_keys_from_rsa_jwks_only() {
        let (_, public) = &keypair(ModulusBits::TwoKibibytes);
        let jwk = JsonWebKey::from(public);
        assert_eq!(FastRsaKey::try_from(&jwk).unwrap(), fast_key(public));
        let secret = jwt_compact::alg::Hs256Key::new(b"0123456789abcdef0123456789abcdef");
        let err = FastRsaKey::try_from(&JsonWebKey::from(&secret)).unwrap_err();
        assert!(err.contains("RSA"), "{err}");
    }

    const PSS: [(HashAlg, Rsa); 3] =
        [(HashAlg::Sha256, Rsa::ps256()), (HashAlg::Sha384, Rsa::ps384()), (HashAlg::Sha512, Rsa::ps512())];

    #[test]
    fn accepts_pss_signatures_made_by_rsa_crate() {
        for bits in all_sizes() {
            let (private, public) = &keypair(bits);
            let key = fast_key(public);
            for (hash, alg) in PSS {
                let signature = sign(alg, private, MESSAGE);
                assert!(key.verify_pss(hash, MESSAGE, &signature), "{bits:?} {hash:?}");
                assert!(!key.verify_pkcs1v15(hash, MESSAGE, &signature), "{bits:?} {hash:?}");
                for (other, _) in PSS.iter().filter(|(h, _)| *h != hash) {
                    assert!(!key.verify_pss(*other, MESSAGE, &signature), "{bits:?} {hash:?} as {other:?}");
                }
            }
        }
    }

    #[test]
    fn pss_rejects_pkcs1v15_signatures() {
        let (private, public) = &keypair(ModulusBits::TwoKibibytes);
        let key = fast_key(public);
        for (hash, alg) in HASHES {
            assert!(!key.verify_pss(hash, MESSAGE, &sign(alg, private, MESSAGE)));
        }
    }

    #[test]
    fn pss_rejects_any_flipped_signature_or_message_bit() {
        let (private, public) = &keypair(ModulusBits::TwoKibibytes);
        let key = fast_key(public);
        let signature = sign(Rsa::ps256(), private, MESSAGE);
        for bit in 0..signature.len() * 8 {
            assert!(!key.verify_pss(HashAlg::Sha256, MESSAGE, &flip_bit(&signature, bit)), "signature bit {bit}");
        }
        for bit in 0..MESSAGE.len() * 8 {
            assert!(!key.verify_pss(HashAlg::Sha256, &flip_bit(MESSAGE, bit), &signature), "message bit {bit}");
        }
    }

    /// Signs the SHA-256 of `message` with RSASSA-PSS and a salt of `salt_len` bytes.
    fn sign_pss(private: &RsaPrivateKey, message: &[u8], salt_len: usize) -> Vec<u8> {
        let digest = HashAlg::Sha256.digest(message);
        private.sign_with_rng(&mut rand_core::OsRng, rsa::Pss::new_with_salt::<Sha256>(salt_len), &digest).unwrap()
    }

    #[test]
    fn pss_salt_must_be_as_long_as_the_hash() {
        let (private, public) = &keypair(ModulusBits::TwoKibibytes);
        let key = fast_key(public);
        for salt_len in [0, 16, 31, 32, 33, 64] {
            let signature = sign_pss(private, MESSAGE, salt_len);
            assert_eq!(key.verify_pss(HashAlg::Sha256, MESSAGE, &signature), salt_len == 32, "salt of {salt_len}");
        }
    }

    /// With a modulus of 8k + 1 bits the encoded message is a byte shorter than the
    /// modulus; other sizes leave 1 to 7 unused top bits in its first byte.
    #[test]
    fn pss_with_moduli_of_every_size_modulo_8() {
        use rsa::traits::PublicKeyParts as _;
        for bits in 2049..=2056 {
            let private = RsaPrivateKey::new(&mut rand_core::OsRng, bits).unwrap();
            let public = private.to_public_key();
            let key = FastRsaKey::new(&public.n().to_bytes_be(), &public.e().to_bytes_be()).unwrap();
            assert_eq!(key.bits(), bits);
            let signature = sign_pss(&private, MESSAGE, 32);
            assert!(key.verify_pss(HashAlg::Sha256, MESSAGE, &signature), "{bits} bits");
            assert!(!key.verify_pss(HashAlg::Sha256, b"another message", &signature), "{bits} bits");
        }
    }

    #[test]
    fn validates_tokens_signed_by_jwt_compact_rsa() {
        let (private, public) = &keypair(ModulusBits::TwoKibibytes);
        let key = fast_key(public);
        let claims = Claims::new(Empty {});
        for (alg, fast) in [
            (Rsa::rs256(), FastRsa::rs256()),
            (Rsa::rs384(), FastRsa::rs384()),
            (Rsa::rs512(), FastRsa::rs512()),
            (Rsa::ps256(), FastRsa::ps256()),
            (Rsa::ps384(), FastRsa::ps384()),
            (Rsa::ps512(), FastRsa::ps512()),
        ] {
            let token = alg.token(&Header::empty(), &claims, private).unwrap();
            let token = UntrustedToken::new(&token).unwrap();
            assert!(fast.validator::<Empty>(&key).validate(&token).is_ok());
        }
        // A token naming another algorithm is refused before any arithmetic.
        let token = Rsa::rs384().token(&Header::empty(), &claims, private).unwrap();
        let token = UntrustedToken::new(&token).unwrap();
        assert!(FastRsa::rs256().validator::<Empty>(&key).validate(&token).is_err());
        let token = Rsa::ps256().token(&Header::empty(), &claims, private).unwrap();
        let token = UntrustedToken::new(&token).unwrap();
        assert!(FastRsa::rs256().validator::<Empty>(&key).validate(&token).is_err());
        assert!(FastRsa::ps384().validator::<Empty>(&key).validate(&token).is_err());
    }
}
