//! ECDSA P-256 signature verification (`ES256`) that is fast in wasm.
//!
//! jwt-compact's `Es256` goes through the `p256` crate, which is constant-time throughout
//! (complete addition formulas, a fixed window over both scalars, Fermat inversions); on V8
//! one verification costs about 900 us. Verifying only handles public data (key, signature,
//! message), so this module uses variable-time arithmetic instead, on 32-bit limbs
//! (u32 x u32 -> u64 is a native wasm instruction, 64 x 64 -> 128 is not):
//!
//! - GF(p) elements are kept in Montgomery form. Products are schoolbook; the reduction
//!   uses the form of p (`-p^-1 ≡ 1 mod 2^32`, so each step adds the limb itself, shifted,
//!   with no multiplication). On V8 that measured 55 ns per product and 36 ns per square,
//!   against 64 and 42 ns with the NIST reduction of the same product (FIPS 186-4 D.2.3),
//!   and 64 ns for generic Montgomery multiplication (CIOS); a whole verification came out
//!   about 5% faster than with the NIST reduction.
//! - Points are Jacobian, doubled with the `a = -3` formula and added to affine points.
//! - `u1·G + u2·Q` cuts both scalars into four 64-bit chunks. With the odd multiples of
//!   `2^(64k)·G` and `2^(64k)·Q` in tables, the eight chunks share 64 doublings (Straus'
//!   interleaving) instead of 256, each recoded as a width-w NAF. Q's tables (2 KiB) are
//!   built when the key is loaded, G's (8 KiB) once, with the first key.
//! - The result's x is compared as `r·Z^2 == X` in the field, with no inversion.
//!
//! Measured with `scripts/bench-jwt.sh` on V8, an ES256 token takes about 75 us against
//! about 770 us for jwt-compact's `Es256` (natively, 56 us against 175 us); loading a key,
//! tables included, about 120 us. Signing is deliberately not supported.

use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmSignature};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::num::NonZeroUsize;
use std::ops::{Add, Mul, Sub};
use std::sync::OnceLock;

/// A 256-bit number as little-endian 32-bit limbs.
type Limbs = [u32; 8];

/// The field prime `p = 2^256 - 2^224 + 2^192 + 2^96 - 1`.
const P: Limbs = [0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0, 0, 0, 1, 0xffff_ffff];
/// The group order `n`, a prime (the curve's cofactor is 1).
const N: Limbs = [0xfc63_2551, 0xf3b9_cac2, 0xa717_9e84, 0xbce6_faad, 0xffff_ffff, 0xffff_ffff, 0, 0xffff_ffff];
/// `-n^-1 mod 2^32`, the per-limb Montgomery reduction factor mod `n`.
const N_NEG_INV: u32 = 0xee00_bc4f;
/// `2^512 mod n`: a Montgomery product with it undoes the `2^-256` of the one before.
const R2_MOD_N: Limbs =
    [0xbe79_eea2, 0x8324_4c95, 0x49bd_6fa6, 0x4699_799c, 0x2b6b_ec59, 0x2845_b239, 0xf3d9_5620, 0x66e1_2d94];
/// `2^512 mod p`: a Montgomery product with it takes a number into Montgomery form.
const R2_MOD_P: Limbs = [3, 0, 0xffff_ffff, 0xffff_fffb, 0xffff_fffe, 0xffff_ffff, 0xffff_fffd, 4];
/// The curve is `y^2 = x^3 - 3x + b`; b in Montgomery form.
const B: Fe =
    Fe([0x29c4_bddf, 0xd89c_df62, 0x7884_3090, 0xacf0_05cd, 0xf721_2ed6, 0xe5a2_20ab, 0x0487_4834, 0xdc30_061d]);
/// The generator, in Montgomery form.
const G: Affine = Affine {
    x: Fe([0x18a9_143c, 0x79e7_30d4, 0x5fed_b601, 0x75ba_95fc, 0x7762_2510, 0x79fb_732b, 0xa537_55c6, 0x1890_5f76]),
    y: Fe([0xce95_560a, 0xddf2_5357, 0xba19_e45c, 0x8b4a_b8e4, 0xdd21_f325, 0xd2e8_8688, 0x2588_5d85, 0x8571_ff18]),
};

/// Scalars are cut into this many chunks of [`CHUNK_BITS`] bits.
const CHUNKS: usize = 4;
const CHUNK_BITS: usize = 64;
/// A width-w NAF of a 64-bit chunk has at most 65 digits.
const DIGITS: usize = CHUNK_BITS + 1;
/// NAF width for G: its table is built once, so it can be large (32 points per chunk).
const G_WINDOW: u32 = 7;
/// NAF width for public keys: 8 points per chunk, 2 KiB per key.
const Q_WINDOW: u32 = 5;
const G_ENTRIES: usize = 1 << (G_WINDOW - 2);
const Q_ENTRIES: usize = 1 << (Q_WINDOW - 2);

/// `a + b`, and whether it carried out of 256 bits.
fn add_limbs(a: &Limbs, b: &Limbs) -> (Limbs, bool) {
    let mut out = [0; 8];
    let mut carry = 0_u64;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let sum = u64::from(x) + u64::from(y) + carry;
        *o = sum as u32;
        carry = sum >> 32;
    }
    (out, carry != 0)
}

/// `a - b` modulo `2^256`, and whether it borrowed (that is, whether `a < b`).
fn sub_limbs(a: &Limbs, b: &Limbs) -> (Limbs, bool) {
    let mut out = [0; 8];
    let mut borrow = 0_u64;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        // A negative difference wraps to at least 2^64 - 2^32: its top bit is the borrow.
        let diff = u64::from(x).wrapping_sub(u64::from(y)).wrapping_sub(borrow);
        *o = diff as u32;
        borrow = diff >> 63;
    }
    (out, borrow != 0)
}

fn less_than(a: &Limbs, b: &Limbs) -> bool {
    sub_limbs(a, b).1
}

fn is_zero(a: &Limbs) -> bool {
    a.iter().all(|&limb| limb == 0)
}

fn limbs_from_be(bytes: &[u8; 32]) -> Limbs {
    let mut out = [0; 8];
    for (limb, word) in out.iter_mut().zip(bytes.as_chunks::<4>().0.iter().rev()) {
        *limb = u32::from_be_bytes(*word);
    }
    out
}

/// The 512-bit product `a·b`.
fn mul_wide(a: &Limbs, b: &Limbs) -> [u32; 16] {
    let mut t = [0_u32; 16];
    for (i, &a_i) in a.iter().enumerate() {
        let a_i = u64::from(a_i);
        let mut carry = 0_u64;
        for (t_ij, &b_j) in t.iter_mut().skip(i).zip(b) {
            let v = u64::from(*t_ij) + a_i * u64::from(b_j) + carry;
            *t_ij = v as u32;
            carry = v >> 32;
        }
        if let Some(top) = t.get_mut(i + 8) {
            *top = carry as u32;
        }
    }
    t
}

/// The 512-bit square `a^2`: each cross product once, doubled, then the squares added.
fn square_wide(a: &Limbs) -> [u32; 16] {
    let mut t = [0_u32; 16];
    for (i, &a_i) in a.iter().enumerate() {
        let a_i = u64::from(a_i);
        let mut carry = 0_u64;
        for (t_ij, &a_j) in t.iter_mut().skip(2 * i + 1).zip(a.iter().skip(i + 1)) {
            let v = u64::from(*t_ij) + a_i * u64::from(a_j) + carry;
            *t_ij = v as u32;
            carry = v >> 32;
        }
        if let Some(top) = t.get_mut(i + 8) {
            *top = carry as u32;
        }
    }
    let mut shifted_out = 0;
    for limb in t.iter_mut() {
        let next = *limb >> 31;
        *limb = (*limb << 1) | shifted_out;
        shifted_out = next;
    }
    let mut carry = 0_u64;
    for ([low, high], &a_i) in t.as_chunks_mut::<2>().0.iter_mut().zip(a) {
        let square = u64::from(a_i) * u64::from(a_i);
        let v = u64::from(*low) + (square & 0xffff_ffff) + carry;
        *low = v as u32;
        let v = u64::from(*high) + (square >> 32) + (v >> 32);
        *high = v as u32;
        carry = v >> 32;
    }
    t
}

/// An element `x` of GF(p) in Montgomery form: the limbs hold `x·2^256 mod p`, always
/// fully reduced (so equal elements have equal limbs).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fe(Limbs);

impl Fe {
    const ZERO: Fe = Fe([0; 8]);
    /// `2^256 mod p`.
    const ONE: Fe = Fe([1, 0, 0, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_fffe, 0]);

    /// The element `x`, for `x < p`.
    fn from_limbs(x: &Limbs) -> Fe {
        Fe::redc(&mul_wide(x, &R2_MOD_P))
    }

    /// A big-endian number, if it is below p.
    fn from_be(bytes: &[u8; 32]) -> Option<Fe> {
        let limbs = limbs_from_be(bytes);
        less_than(&limbs, &P).then(|| Fe::from_limbs(&limbs))
    }

    fn square(self) -> Fe {
        Fe::redc(&square_wide(&self.0))
    }

    fn double(self) -> Fe {
        self + self
    }

    fn negate(self) -> Fe {
        Fe::ZERO - self
    }

    /// `self^-1` by Fermat (`self^(p-2)`), and zero for zero. Slow (256 squarings): only
    /// tables are built with it, never a verification.
    fn invert(self) -> Fe {
        const P_MINUS_2: Limbs = [0xffff_fffd, 0xffff_ffff, 0xffff_ffff, 0, 0, 0, 1, 0xffff_ffff];
        let mut acc = Fe::ONE;
        for limb in P_MINUS_2.iter().rev() {
            for bit in (0..32).rev() {
                acc = acc.square();
                if (limb >> bit) & 1 == 1 {
                    acc = acc * self;
                }
            }
        }
        acc
    }

    /// Montgomery reduction, `t·2^-256 mod p` for `t < p·2^256`. As `-p^-1 ≡ 1 (mod 2^32)`, the
    /// multiple of p that clears limb i is that limb's value m, and adding
    /// `m·p = m·(2^256 - 2^224 + 2^192 + 2^96 - 1)` is four additions. Limbs are summed in
    /// signed 64-bit accumulators and carried once, limb i just before it is cleared.
    fn redc(t: &[u32; 16]) -> Fe {
        let mut acc = t.map(i64::from);
        let mut carry = 0_i64;
        for i in 0..8 {
            let Some([t0, _, _, t3, _, _, t6, t7, t8]) = acc.get_mut(i..).and_then(|rest| rest.first_chunk_mut::<9>())
            else {
                break;
            };
            let v = *t0 + carry;
            let m = i64::from(v as u32);
            // The -m of m·p clears the limb; what is left is a multiple of 2^32.
            carry = (v - m) >> 32;
            *t3 += m;
            *t6 += m;
            *t7 -= m;
            *t8 += m;
        }
        let mut out = [0_u32; 8];
        for (o, &limb) in out.iter_mut().zip(acc.iter().skip(8)) {
            let v = limb + carry;
            *o = v as u32;
            carry = v >> 32;
        }
        // (t + M·p) / 2^256 < 2p for the M < 2^256 added: at most one subtraction.
        let (reduced, borrow) = sub_limbs(&out, &P);
        Fe(if carry != 0 || !borrow { reduced } else { out })
    }
}

impl Add for Fe {
    type Output = Fe;

    fn add(self, rhs: Fe) -> Fe {
        let (sum, carry) = add_limbs(&self.0, &rhs.0);
        let (reduced, borrow) = sub_limbs(&sum, &P);
        Fe(if carry || !borrow { reduced } else { sum })
    }
}

impl Sub for Fe {
    type Output = Fe;

    fn sub(self, rhs: Fe) -> Fe {
        let (diff, borrow) = sub_limbs(&self.0, &rhs.0);
        Fe(if borrow { add_limbs(&diff, &P).0 } else { diff })
    }
}

impl Mul for Fe {
    type Output = Fe;

    fn mul(self, rhs: Fe) -> Fe {
        Fe::redc(&mul_wide(&self.0, &rhs.0))
    }
}

/// A curve point other than the point at infinity.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Affine {
    x: Fe,
    y: Fe,
}

impl Affine {
    fn is_on_curve(&self) -> bool {
        let x = self.x;
        self.y.square() == (x.square() * x) - (x.double() + x) + B
    }

    fn negate(&self) -> Affine {
        Affine { x: self.x, y: self.y.negate() }
    }
}

/// `(X : Y : Z)` stands for the affine `(X/Z^2, Y/Z^3)`; `Z = 0` is the point at infinity.
#[derive(Clone, Copy)]
struct Jacobian {
    x: Fe,
    y: Fe,
    z: Fe,
}

impl Jacobian {
    const INFINITY: Jacobian = Jacobian { x: Fe::ONE, y: Fe::ONE, z: Fe::ZERO };

    fn from_affine(p: &Affine) -> Jacobian {
        Jacobian { x: p.x, y: p.y, z: Fe::ONE }
    }

    fn is_infinity(&self) -> bool {
        self.z == Fe::ZERO
    }

    /// `2·self`, with the `a = -3` shortcut (dbl-2001-b: 3M + 5S). No point of odd order
    /// has `y = 0`, so the only special case is infinity.
    fn double(&self) -> Jacobian {
        if self.is_infinity() {
            return *self;
        }
        let delta = self.z.square();
        let gamma = self.y.square();
        let beta = self.x * gamma;
        let t = (self.x - delta) * (self.x + delta);
        let alpha = t.double() + t;
        let beta4 = beta.double().double();
        let x = alpha.square() - beta4.double();
        let z = (self.y + self.z).square() - gamma - delta;
        let y = alpha * (beta4 - x) - gamma.square().double().double().double();
        Jacobian { x, y, z }
    }

    /// `self + q` (8M + 3S). Variable time: equal and opposite points take their own branch.
    fn add_affine(&self, q: &Affine) -> Jacobian {
        if self.is_infinity() {
            return Jacobian::from_affine(q);
        }
        let z1z1 = self.z.square();
        let u2 = q.x * z1z1;
        let s2 = q.y * self.z * z1z1;
        let h = u2 - self.x;
        let r = s2 - self.y;
        if h == Fe::ZERO {
            return if r == Fe::ZERO { self.double() } else { Jacobian::INFINITY };
        }
        let hh = h.square();
        let hhh = h * hh;
        let v = self.x * hh;
        let x = r.square() - hhh - v.double();
        let y = r * (v - x) - self.y * hhh;
        let z = self.z * h;
        Jacobian { x, y, z }
    }

    /// `self + d·row[0]` for a NAF digit `d`, where `row` holds the odd multiples of a point.
    fn add_digit<const W: usize>(&self, digit: i8, row: &[Affine; W]) -> Option<Jacobian> {
        if digit == 0 {
            return Some(*self);
        }
        let p = row.get(usize::from(digit.unsigned_abs() >> 1))?;
        Some(if digit > 0 { self.add_affine(p) } else { self.add_affine(&p.negate()) })
    }
}

/// Affine forms of points, none at infinity, for a single inversion (Montgomery's trick).
fn batch_to_affine(points: &[Jacobian]) -> Option<Vec<Affine>> {
    // before[i] = z_0·…·z_(i-1)
    let mut before = Vec::with_capacity(points.len());
    let mut product = Fe::ONE;
    for p in points {
        if p.is_infinity() {
            return None;
        }
        before.push(product);
        product = product * p.z;
    }
    let mut inverse = product.invert();
    let mut out = Vec::with_capacity(points.len());
    for (p, &before) in points.iter().zip(&before).rev() {
        // `inverse` is 1/(z_0·…·z_i) here.
        let z_inv = inverse * before;
        inverse = inverse * p.z;
        let z_inv2 = z_inv.square();
        out.push(Affine { x: p.x * z_inv2, y: p.y * z_inv2 * z_inv });
    }
    out.reverse();
    Some(out)
}

/// `rows[k][i] = (2i + 1)·2^(64k)·P`: what a NAF digit of chunk `k` adds. `W` entries serve
/// a NAF of width `log2(W) + 2`.
#[derive(Clone, PartialEq, Eq)]
struct Table<const W: usize> {
    rows: [[Affine; W]; CHUNKS],
}

impl<const W: usize> Table<W> {
    /// The table of a curve point.
    fn new(p: &Affine) -> Option<Box<Table<W>>> {
        let mut bases = Vec::with_capacity(2 * CHUNKS);
        let mut base = Jacobian::from_affine(p);
        bases.push(base);
        for _ in 1..CHUNKS {
            for _ in 0..CHUNK_BITS {
                base = base.double();
            }
            bases.push(base);
        }
        let doubled: Vec<Jacobian> = bases.iter().map(Jacobian::double).collect();
        bases.extend(doubled);
        let bases = batch_to_affine(&bases)?;
        let (bases, doubled) = bases.split_at_checked(CHUNKS)?;
        let mut multiples = Vec::with_capacity(CHUNKS * W);
        for (base, doubled) in bases.iter().zip(doubled) {
            let mut multiple = Jacobian::from_affine(base);
            multiples.push(multiple);
            for _ in 1..W {
                multiple = multiple.add_affine(doubled);
                multiples.push(multiple);
            }
        }
        let multiples = batch_to_affine(&multiples)?;
        let mut table = Box::new(Table { rows: [[*p; W]; CHUNKS] });
        for (row, chunk) in table.rows.iter_mut().zip(multiples.as_chunks::<W>().0) {
            *row = *chunk;
        }
        Some(table)
    }
}

/// G's table, built with the first key: 128 points, about 0.25 ms of work once.
fn generator_table() -> Option<&'static Table<G_ENTRIES>> {
    static TABLE: OnceLock<Option<Box<Table<G_ENTRIES>>>> = OnceLock::new();
    TABLE.get_or_init(|| Table::new(&G)).as_deref()
}

/// Width-`w` NAF of `k` (`w <= 8`), least significant digit first: every digit is zero or
/// odd and below `2^(w-1)` in absolute value, and of any `w` consecutive digits at most one
/// is nonzero.
fn wnaf(k: u64, w: u32) -> Option<[i8; DIGITS]> {
    let mut digits = [0_i8; DIGITS];
    let mut k = u128::from(k);
    let mut position = 0;
    while k != 0 {
        let zeros = k.trailing_zeros();
        k >>= zeros;
        position += zeros;
        // k is odd: the digit is k mod 2^w, taken between -2^(w-1) and 2^(w-1).
        let low = (k & ((1 << w) - 1)) as i16;
        let digit = if low >= 1 << (w - 1) { low - (1 << w) } else { low };
        k = k.checked_add_signed(-i128::from(digit))?;
        *digits.get_mut(usize::try_from(position).ok()?)? = i8::try_from(digit).ok()?;
        // k is now a multiple of 2^w.
        k >>= w;
        position += w;
    }
    Some(digits)
}

/// The NAFs of a scalar's four 64-bit chunks.
fn chunk_wnafs(u: &Limbs, w: u32) -> Option<[[i8; DIGITS]; CHUNKS]> {
    let mut out = [[0; DIGITS]; CHUNKS];
    for (digits, &[low, high]) in out.iter_mut().zip(u.as_chunks::<2>().0) {
        *digits = wnaf(u64::from(low) | (u64::from(high) << 32), w)?;
    }
    Some(out)
}

/// `u1·G + u2·Q`, from G's and Q's tables: `Σ_k (u1_k·2^(64k)·G + u2_k·2^(64k)·Q)` over the
/// 64-bit chunks, all eight sums sharing one chain of doublings.
fn lincomb(u1: &Limbs, g: &Table<G_ENTRIES>, u2: &Limbs, q: &Table<Q_ENTRIES>) -> Option<Jacobian> {
    let g_digits = chunk_wnafs(u1, G_WINDOW)?;
    let q_digits = chunk_wnafs(u2, Q_WINDOW)?;
    let mut acc = Jacobian::INFINITY;
    for position in (0..DIGITS).rev() {
        acc = acc.double();
        for (digits, row) in g_digits.iter().zip(&g.rows) {
            acc = acc.add_digit(*digits.get(position)?, row)?;
        }
        for (digits, row) in q_digits.iter().zip(&q.rows) {
            acc = acc.add_digit(*digits.get(position)?, row)?;
        }
    }
    Some(acc)
}

/// Montgomery reduction mod n: `t·2^-256 mod n`, for `t < n·2^256`.
fn redc_mod_n(t: &[u32; 16]) -> Limbs {
    let mut t = *t;
    // Carries out of t's top limb, that is, multiples of 2^512.
    let mut overflow = 0_u32;
    for i in 0..8 {
        let Some((low, high)) = t.get_mut(i..).and_then(|rest| rest.split_at_mut_checked(8)) else {
            break;
        };
        let m = u64::from(low.first().copied().unwrap_or_default().wrapping_mul(N_NEG_INV));
        let mut carry = 0_u64;
        for (x, &n) in low.iter_mut().zip(&N) {
            let v = u64::from(*x) + m * u64::from(n) + carry;
            *x = v as u32;
            carry = v >> 32;
        }
        for x in high.iter_mut() {
            if carry == 0 {
                break;
            }
            let v = u64::from(*x) + carry;
            *x = v as u32;
            carry = v >> 32;
        }
        overflow += carry as u32;
    }
    // The low half is zero now; the high half plus the overflow is below 2n.
    let high = t.last_chunk::<8>().copied().unwrap_or_default();
    let (reduced, borrow) = sub_limbs(&high, &N);
    if overflow != 0 || !borrow {
        reduced
    } else {
        high
    }
}

/// `a·b mod n` for `a, b < n`.
fn mul_mod_n(a: &Limbs, b: &Limbs) -> Limbs {
    redc_mod_n(&mul_wide(&redc_mod_n(&mul_wide(a, b)), &R2_MOD_N))
}

fn sub_mod_n(a: &Limbs, b: &Limbs) -> Limbs {
    let (diff, borrow) = sub_limbs(a, b);
    if borrow {
        add_limbs(&diff, &N).0
    } else {
        diff
    }
}

/// `x·2^-k mod n` for `x < n` and `1 <= k <= 31`: adds the multiple of n that makes x
/// divisible by `2^k`, then shifts.
fn div_pow2_mod_n(x: &Limbs, k: u32) -> Limbs {
    let m = u64::from(x[0].wrapping_mul(N_NEG_INV) & ((1 << k) - 1));
    let mut t = [0_u32; 9];
    let mut carry = 0_u64;
    for ((t_i, &x_i), &n_i) in t.iter_mut().zip(x).zip(&N) {
        let v = u64::from(x_i) + m * u64::from(n_i) + carry;
        *t_i = v as u32;
        carry = v >> 32;
    }
    t[8] = carry as u32;
    let mut out = [0; 8];
    for ((o, &low), &high) in out.iter_mut().zip(&t).zip(t.iter().skip(1)) {
        *o = (low >> k) | (high << (32 - k));
    }
    // (x + m·n) / 2^k < n + n/2^k
    let (reduced, borrow) = sub_limbs(&out, &N);
    if borrow {
        out
    } else {
        reduced
    }
}

/// Divides `u` by its largest power of two, and `x` by the same power mod n.
fn remove_twos(u: &mut Limbs, x: &mut Limbs) {
    while !is_zero(u) {
        let k = u[0].trailing_zeros().min(31);
        if k == 0 {
            return;
        }
        let mut shifted = [0; 8];
        for ((o, &low), &high) in shifted.iter_mut().zip(u.iter()).zip(u.iter().skip(1).chain([&0])) {
            *o = (low >> k) | (high << (32 - k));
        }
        *u = shifted;
        *x = div_pow2_mod_n(x, k);
    }
}

/// `a^-1 mod n` for `0 < a < n`, by the binary extended Euclidean algorithm (variable time;
/// Hankerson, Menezes and Vanstone, "Guide to Elliptic Curve Cryptography", algorithm 2.22).
fn invert_mod_n(a: &Limbs) -> Option<Limbs> {
    const ONE: Limbs = [1, 0, 0, 0, 0, 0, 0, 0];
    // Invariants: x1·a ≡ u and x2·a ≡ v (mod n), u and v positive and coprime.
    let (mut u, mut v) = (*a, N);
    let (mut x1, mut x2) = (ONE, [0; 8]);
    // Each round at least halves u·v < 2^512.
    for _ in 0..=512 {
        remove_twos(&mut u, &mut x1);
        remove_twos(&mut v, &mut x2);
        if u == ONE {
            return Some(x1);
        }
        if v == ONE {
            return Some(x2);
        }
        if is_zero(&u) || is_zero(&v) {
            return None;
        }
        if less_than(&u, &v) {
            v = sub_limbs(&v, &u).0;
            x2 = sub_mod_n(&x2, &x1);
        } else {
            u = sub_limbs(&u, &v).0;
            x1 = sub_mod_n(&x1, &x2);
        }
    }
    None
}

/// A P-256 public key, with its precomputed tables.
#[derive(Clone, PartialEq, Eq)]
pub struct FastP256Key {
    /// Row 0, entry 0 is the key itself.
    table: Box<Table<Q_ENTRIES>>,
}

impl fmt::Debug for FastP256Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastP256Key").finish_non_exhaustive()
    }
}

impl FastP256Key {
    /// A key from its big-endian affine coordinates (32 bytes each, as in a JWK). Refuses
    /// coordinates not below p and points not on the curve (which includes any encoding of
    /// the point at infinity): a verifier that accepted them could be fooled by signatures
    /// made without any private key.
    pub fn from_coordinates(x: &[u8], y: &[u8]) -> Result<FastP256Key, String> {
        let coordinate = |name: &str, bytes: &[u8]| {
            let bytes: &[u8; 32] = bytes
                .try_into()
                .map_err(|_| format!("P-256 coordinate {name} must be 32 bytes, got {}", bytes.len()))?;
            Fe::from_be(bytes).ok_or_else(|| format!("P-256 coordinate {name} is not below the field prime"))
        };
        let point = Affine { x: coordinate("x", x)?, y: coordinate("y", y)? };
        if !point.is_on_curve() {
            return Err("P-256 public key is not on the curve".to_owned());
        }
        let table = Table::new(&point).ok_or("unusable P-256 public key")?;
        // G's table too, so that the first request does not pay for it.
        generator_table().ok_or("P-256 generator table unavailable")?;
        Ok(FastP256Key { table })
    }

    /// Checks an ECDSA signature (`r || s`, 32 bytes each, big-endian, as JWS carries it) of
    /// SHA-256(`message`) (SEC 1 v2 §4.1.4). Like the `p256` crate, high `s` is accepted:
    /// JWS does not ask for low-S signatures.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.verify_digest(&Sha256::digest(message).into(), signature)
    }

    fn verify_digest(&self, digest: &[u8; 32], signature: &[u8; 64]) -> bool {
        let (Some(r), Some(s)) = (signature.first_chunk::<32>(), signature.last_chunk::<32>()) else {
            return false;
        };
        let (r, s) = (limbs_from_be(r), limbs_from_be(s));
        if is_zero(&r) || is_zero(&s) || !less_than(&r, &N) || !less_than(&s, &N) {
            return false;
        }
        // The digest is as long as n: its integer below 2^256 < 2n needs one subtraction.
        let e = limbs_from_be(digest);
        let e = if less_than(&e, &N) { e } else { sub_limbs(&e, &N).0 };
        let (Some(w), Some(g)) = (invert_mod_n(&s), generator_table()) else {
            return false;
        };
        let Some(point) = lincomb(&mul_mod_n(&e, &w), g, &mul_mod_n(&r, &w), &self.table) else {
            return false;
        };
        if point.is_infinity() {
            return false;
        }
        // x mod n == r, where x = X/Z^2 < p < 2n, means x is r or r + n.
        let z2 = point.z.square();
        if Fe::from_limbs(&r) * z2 == point.x {
            return true;
        }
        let (r_plus_n, carry) = add_limbs(&r, &N);
        !carry && less_than(&r_plus_n, &P) && Fe::from_limbs(&r_plus_n) * z2 == point.x
    }
}

impl TryFrom<&JsonWebKey<'_>> for FastP256Key {
    type Error = String;

    fn try_from(jwk: &JsonWebKey<'_>) -> Result<Self, Self::Error> {
        match jwk {
            JsonWebKey::EllipticCurve { curve, x, y, .. } if curve == "P-256" => FastP256Key::from_coordinates(x, y),
            JsonWebKey::EllipticCurve { curve, .. } => Err(format!("expected curve P-256, got {curve:?}")),
            other => Err(format!("expected an EC key, got {}", other.key_type())),
        }
    }
}

/// An ES256 signature: `r || s`, 32 bytes each.
#[derive(Debug, Clone)]
pub struct FastP256Signature([u8; 64]);

impl AlgorithmSignature for FastP256Signature {
    const LENGTH: Option<NonZeroUsize> = NonZeroUsize::new(64);

    fn try_from_slice(slice: &[u8]) -> anyhow::Result<Self> {
        let bytes =
            slice.try_into().map_err(|_| anyhow::anyhow!("ES256 signature must be 64 bytes, got {}", slice.len()))?;
        Ok(FastP256Signature(bytes))
    }

    fn as_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.0)
    }
}

/// The `ES256` JWT algorithm, verification only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastEs256;

impl Algorithm for FastEs256 {
    /// No signing key can exist, so `sign` can never be called.
    type SigningKey = Infallible;
    type VerifyingKey = FastP256Key;
    type Signature = FastP256Signature;

    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed("ES256")
    }

    fn sign(&self, signing_key: &Infallible, _message: &[u8]) -> FastP256Signature {
        match *signing_key {}
    }

    fn verify_signature(&self, signature: &FastP256Signature, verifying_key: &FastP256Key, message: &[u8]) -> bool {
        verifying_key.verify(message, &signature.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwt_compact::alg::Es256;
    use jwt_compact::prelude::*;
    use jwt_compact::Empty;
    use num_bigint_dig::BigUint;
    use p256::ecdsa::signature::{Signer, Verifier};
    use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
    use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
    use p256::elliptic_curve::{Group, PrimeField};
    use p256::{AffinePoint, EncodedPoint, FieldBytes, ProjectivePoint, Scalar};

    const MESSAGE: &[u8] = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";

    /// SplitMix64: reproducible test inputs without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn bytes<const L: usize>(&mut self) -> [u8; L] {
            let mut out = [0; L];
            for chunk in out.chunks_mut(8) {
                let word = self.next().to_le_bytes();
                chunk.copy_from_slice(&word[..chunk.len()]);
            }
            out
        }

        fn limbs(&mut self) -> Limbs {
            let mut out = [0; 8];
            for limb in &mut out {
                *limb = self.next() as u32;
            }
            out
        }

        /// Limbs that are mostly 0, 1, 2^31 or all ones: the carries' edge cases.
        fn edgy_limbs(&mut self) -> Limbs {
            let mut out = self.limbs();
            for limb in &mut out {
                *limb = match self.next() % 5 {
                    0 => 0,
                    1 => 1,
                    2 => 0x8000_0000,
                    3 => 0xffff_ffff,
                    _ => *limb,
                };
            }
            out
        }

        fn below(&mut self, bound: &BigUint, edgy: bool) -> BigUint {
            let limbs = if edgy { self.edgy_limbs() } else { self.limbs() };
            big(&limbs) % bound
        }
    }

    fn big(limbs: &[u32]) -> BigUint {
        BigUint::from_slice(limbs)
    }

    fn limbs(x: &BigUint) -> Limbs {
        let mut bytes = x.to_bytes_le();
        assert!(bytes.len() <= 32, "{x} does not fit 256 bits");
        bytes.resize(32, 0);
        let mut out = [0; 8];
        for (limb, word) in out.iter_mut().zip(bytes.chunks(4)) {
            *limb = u32::from_le_bytes(word.try_into().unwrap());
        }
        out
    }

    fn be32(x: &BigUint) -> [u8; 32] {
        let mut out = [0; 32];
        let bytes = x.to_bytes_be();
        out[32 - bytes.len()..].copy_from_slice(&bytes);
        out
    }

    fn p() -> BigUint {
        big(&P)
    }

    fn n() -> BigUint {
        big(&N)
    }

    /// Values around the limb boundaries where p's and n's words are 0, 1 or all ones.
    fn special_values(modulus: &BigUint) -> Vec<BigUint> {
        let one = BigUint::from(1_u32);
        let mut values = vec![BigUint::from(0_u32), one.clone(), BigUint::from(2_u32), modulus - &one, modulus - 2_u32];
        for bits in [31, 32, 63, 64, 95, 96, 128, 191, 192, 223, 224, 255] {
            let power = &one << bits;
            values.push(&power % modulus);
            values.push((&power - &one) % modulus);
            values.push((modulus - &power % modulus) % modulus);
        }
        values
    }

    fn scalar(x: &BigUint) -> Scalar {
        Scalar::from_repr(FieldBytes::from(be32(x))).unwrap()
    }

    fn affine_from_p256(point: &ProjectivePoint) -> Affine {
        let encoded = point.to_affine().to_encoded_point(false);
        Affine {
            x: Fe::from_be(encoded.x().unwrap().as_ref()).unwrap(),
            y: Fe::from_be(encoded.y().unwrap().as_ref()).unwrap(),
        }
    }

    fn to_affine(point: &Jacobian) -> Option<Affine> {
        batch_to_affine(&[*point]).map(|points| points[0])
    }

    fn fe(x: &BigUint) -> Fe {
        Fe::from_limbs(&limbs(x))
    }

    /// The number an element stands for (out of Montgomery form).
    fn value(x: Fe) -> BigUint {
        let mut t = [0; 16];
        t[..8].copy_from_slice(&x.0);
        big(&Fe::redc(&t).0)
    }

    fn coordinates(key: &VerifyingKey) -> ([u8; 32], [u8; 32]) {
        let encoded = key.to_encoded_point(false);
        (encoded.x().unwrap()[..].try_into().unwrap(), encoded.y().unwrap()[..].try_into().unwrap())
    }

    fn p256_key(x: &[u8; 32], y: &[u8; 32]) -> Result<VerifyingKey, p256::ecdsa::Error> {
        VerifyingKey::from_encoded_point(&EncodedPoint::from_affine_coordinates(&(*x).into(), &(*y).into(), false))
    }

    fn fast_key(key: &VerifyingKey) -> FastP256Key {
        let (x, y) = coordinates(key);
        FastP256Key::from_coordinates(&x, &y).unwrap()
    }

    /// A key from 32 random bytes (p256 refuses 0 and values from n up; then try again).
    fn signing_key(rng: &mut Rng) -> SigningKey {
        loop {
            if let Ok(key) = SigningKey::from_bytes(&FieldBytes::from(rng.bytes::<32>())) {
                return key;
            }
        }
    }

    fn sign(key: &SigningKey, message: &[u8]) -> [u8; 64] {
        let signature: Signature = key.sign(message);
        signature.to_bytes().into()
    }

    fn p256_accepts(key: &VerifyingKey, message: &[u8], signature: &[u8; 64]) -> bool {
        Signature::from_slice(signature).is_ok_and(|s| key.verify(message, &s).is_ok())
    }

    /// Both verifiers' verdicts, asserted equal.
    fn verdict(key: &VerifyingKey, fast: &FastP256Key, message: &[u8], signature: &[u8; 64]) -> bool {
        let ours = fast.verify(message, signature);
        assert_eq!(ours, p256_accepts(key, message, signature), "verdicts differ on {signature:02x?}");
        ours
    }

    fn flip_bit(bytes: &[u8], bit: usize) -> Vec<u8> {
        let mut out = bytes.to_vec();
        out[bit / 8] ^= 1 << (bit % 8);
        out
    }

    fn signature_of(r: &BigUint, s: &BigUint) -> [u8; 64] {
        let mut out = [0; 64];
        out[..32].copy_from_slice(&be32(r));
        out[32..].copy_from_slice(&be32(s));
        out
    }

    fn split(signature: &[u8; 64]) -> (BigUint, BigUint) {
        (BigUint::from_bytes_be(&signature[..32]), BigUint::from_bytes_be(&signature[32..]))
    }

    #[test]
    fn constants_are_the_p256_parameters() {
        let one = BigUint::from(1_u32);
        let p = (&one << 256) - (&one << 224) + (&one << 192) + (&one << 96) - &one;
        assert_eq!(big(&P), p);
        assert_eq!(big(&N).to_str_radix(16), "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
        assert_eq!(value(B).to_str_radix(16), "5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b");
        assert_eq!(big(&Fe::ONE.0), (&one << 256) % &p);
        assert_eq!(big(&R2_MOD_P), (&one << 512) % &p);
        assert_eq!(value(Fe::ONE), one);
        assert!(G == affine_from_p256(&ProjectivePoint::GENERATOR));
        assert!(G.is_on_curve());
        assert_eq!(big(&R2_MOD_N), (&one << 512) % n());
        assert_eq!(N[0].wrapping_mul(N_NEG_INV), u32::MAX, "n·(-n^-1) ≡ -1 mod 2^32");
    }

    #[test]
    fn field_arithmetic_matches_big_integers() {
        let p = p();
        let mut rng = Rng(1);
        let mut values = special_values(&p);
        for i in 0..200 {
            values.push(rng.below(&p, i % 2 == 0));
        }
        for a in &values {
            let fa = fe(a);
            assert_eq!(value(fa.square()), a * a % &p, "{a}^2");
            assert_eq!(value(fa.negate()), (&p - a) % &p, "-{a}");
            if a != &BigUint::from(0_u32) {
                assert_eq!(value(fa.invert()), a.modpow(&(&p - 2_u32), &p), "1/{a}");
                assert!(fa.invert() * fa == Fe::ONE);
            }
            for b in values.iter().step_by(7) {
                let fb = fe(b);
                assert_eq!(value(fa * fb), a * b % &p, "{a}·{b}");
                assert_eq!(value(fa + fb), (a + b) % &p, "{a} + {b}");
                assert_eq!(value(fa - fb), (a + &p - b) % &p, "{a} - {b}");
            }
        }
        assert!(Fe::ZERO.invert() == Fe::ZERO);
    }

    /// Montgomery reduction is exact for every input it can meet: any `t < p·2^256`.
    #[test]
    fn montgomery_reduction_is_exact_below_p_times_2_pow_256() {
        let p = p();
        let r_inv = (BigUint::from(1_u32) << 256).modpow(&(&p - 2_u32), &p);
        let p_minus_1 = limbs(&(&p - 1_u32));
        let mut rng = Rng(2);
        let mut halves =
            vec![([0; 8], [0; 8]), ([u32::MAX; 8], p_minus_1), ([0; 8], p_minus_1), ([u32::MAX; 8], [0; 8])];
        for i in 0..5000 {
            let edgy = i % 2 == 0;
            let low = if edgy { rng.edgy_limbs() } else { rng.limbs() };
            halves.push((low, limbs(&rng.below(&p, edgy))));
        }
        for (low, high) in halves {
            let mut t = [0; 16];
            t[..8].copy_from_slice(&low);
            t[8..].copy_from_slice(&high);
            assert_eq!(big(&Fe::redc(&t).0), big(&t) * &r_inv % &p, "{t:08x?}");
        }
    }

    #[test]
    fn coordinates_must_be_below_p() {
        assert!(Fe::from_be(&be32(&p())).is_none());
        assert!(Fe::from_be(&[0xff; 32]).is_none());
        assert!(Fe::from_be(&be32(&(p() - 1_u32))).is_some());
    }

    #[test]
    fn scalar_arithmetic_matches_big_integers() {
        let n = n();
        let mut rng = Rng(3);
        let mut values = special_values(&n);
        for i in 0..200 {
            values.push(rng.below(&n, i % 2 == 0));
        }
        for a in &values {
            let la = limbs(a);
            if a != &BigUint::from(0_u32) {
                let inverse = invert_mod_n(&la).unwrap();
                assert_eq!(big(&inverse), a.modpow(&(&n - 2_u32), &n), "1/{a}");
            }
            for k in [1_u32, 2, 7, 31] {
                let expected = a * BigUint::from(2_u32).modpow(&(&n - 1_u32 - k), &n) % &n;
                assert_eq!(big(&div_pow2_mod_n(&la, k)), expected, "{a}/2^{k}");
            }
            for b in values.iter().step_by(7) {
                let lb = limbs(b);
                assert_eq!(big(&mul_mod_n(&la, &lb)), a * b % &n, "{a}·{b}");
                assert_eq!(big(&sub_mod_n(&la, &lb)), (a + &n - b) % &n, "{a} - {b}");
            }
        }
        assert_eq!(invert_mod_n(&[0; 8]), None);
    }

    #[test]
    fn wnaf_digits_are_sparse_odd_and_add_up() {
        let mut rng = Rng(4);
        let mut values = vec![0, 1, u64::MAX, u64::MAX - 1, 1 << 63, (1 << 63) - 1, 0x5555_5555_5555_5555];
        values.extend((0..500).map(|_| rng.next()));
        for w in 2..=8 {
            for &k in &values {
                let digits = wnaf(k, w).unwrap();
                let mut sum = 0_i128;
                let mut last_nonzero: Option<usize> = None;
                for (i, &d) in digits.iter().enumerate() {
                    if d == 0 {
                        continue;
                    }
                    assert!(d % 2 != 0 && i32::from(d).abs() < 1 << (w - 1), "w {w}, k {k:#x}: digit {d}");
                    if let Some(last) = last_nonzero {
                        assert!(i - last >= w as usize, "w {w}, k {k:#x}: digits at {last} and {i}");
                    }
                    last_nonzero = Some(i);
                    sum += i128::from(d) << i;
                }
                assert_eq!(sum, i128::from(k), "w {w}");
            }
        }
    }

    #[test]
    fn group_law_matches_p256() {
        let n = n();
        let mut rng = Rng(5);
        let random_point = |rng: &mut Rng| ProjectivePoint::GENERATOR * scalar(&rng.below(&n, false));
        for _ in 0..20 {
            let (a, b, c) = (random_point(&mut rng), random_point(&mut rng), random_point(&mut rng));
            let (fa, fb, fc) = (affine_from_p256(&a), affine_from_p256(&b), affine_from_p256(&c));
            assert!(fa.is_on_curve() && fb.is_on_curve() && fc.is_on_curve());
            // Jacobian points with Z != 1, as in a real computation.
            let ja = Jacobian::from_affine(&fa).double();
            let a2 = affine_from_p256(&a.double());
            assert!(to_affine(&ja) == Some(a2));
            // 2a + b, and 2a + a = 3a by two routes.
            assert!(to_affine(&ja.add_affine(&fb)) == Some(affine_from_p256(&(a.double() + b))));
            assert!(to_affine(&ja.add_affine(&fa)) == Some(affine_from_p256(&(a.double() + a))));
            assert!(to_affine(&ja.double()) == Some(affine_from_p256(&(a.double().double()))));
            // Associativity: (a + b) + c == (a + c) + b.
            let ab_c = Jacobian::from_affine(&fa).add_affine(&fb).add_affine(&fc);
            let ac_b = Jacobian::from_affine(&fa).add_affine(&fc).add_affine(&fb);
            assert!(to_affine(&ab_c) == to_affine(&ac_b));
            // Adding a point to itself doubles it; adding its negation gives infinity.
            assert!(to_affine(&ja.add_affine(&a2)) == Some(affine_from_p256(&a.double().double())));
            assert!(ja.add_affine(&a2.negate()).is_infinity());
            assert!(Jacobian::from_affine(&fa).add_affine(&fa.negate()).is_infinity());
            assert!(to_affine(&Jacobian::INFINITY.add_affine(&fb)) == Some(fb));
            assert!(Jacobian::INFINITY.double().is_infinity());
            assert!(affine_from_p256(&(-a)) == fa.negate());
        }
    }

    #[test]
    fn tables_hold_odd_multiples_of_each_chunk_base() {
        let g = generator_table().unwrap();
        for (k, row) in g.rows.iter().enumerate() {
            let base = ProjectivePoint::GENERATOR * scalar(&(BigUint::from(1_u32) << (64 * k)));
            for (i, entry) in row.iter().enumerate() {
                assert!(*entry == affine_from_p256(&(base * Scalar::from(2 * i as u64 + 1))), "G row {k} entry {i}");
            }
        }
    }

    #[test]
    fn lincomb_matches_p256() {
        let n = n();
        let mut rng = Rng(6);
        let q = ProjectivePoint::GENERATOR * scalar(&rng.below(&n, false));
        let table = Table::<Q_ENTRIES>::new(&affine_from_p256(&q)).unwrap();
        let g = generator_table().unwrap();
        let mut scalars = special_values(&n);
        for i in 0..40 {
            scalars.push(rng.below(&n, i % 2 == 0));
        }
        for (i, u1) in scalars.iter().enumerate() {
            let u2 = &scalars[(i * 7 + 3) % scalars.len()];
            let expected = ProjectivePoint::GENERATOR * scalar(u1) + q * scalar(u2);
            let ours = lincomb(&limbs(u1), g, &limbs(u2), &table).unwrap();
            if expected == ProjectivePoint::IDENTITY {
                assert!(ours.is_infinity(), "{u1}·G + {u2}·Q");
            } else {
                assert!(to_affine(&ours) == Some(affine_from_p256(&expected)), "{u1}·G + {u2}·Q");
            }
        }
        // n·G is infinity, (n - 1)·G is -G.
        assert!(lincomb(&N, g, &[0; 8], &table).unwrap().is_infinity());
        let minus_one = limbs(&(&n - 1_u32));
        assert!(to_affine(&lincomb(&minus_one, g, &[0; 8], &table).unwrap()) == Some(G.negate()));
        // u·G - u·Q is infinity when Q = G.
        let g_as_q = Table::<Q_ENTRIES>::new(&G).unwrap();
        let u = rng.below(&n, false);
        assert!(lincomb(&limbs(&u), g, &limbs(&(&n - &u)), &g_as_q).unwrap().is_infinity());
    }

    #[test]
    fn accepts_signatures_made_by_p256() {
        let mut rng = Rng(7);
        for i in 0..1000 {
            let key = signing_key(&mut rng);
            let fast = fast_key(key.verifying_key());
            let message = rng.bytes::<48>();
            let message = &message[..i % 48];
            let signature = sign(&key, message);
            assert!(verdict(key.verifying_key(), &fast, message, &signature), "key {i}");
        }
    }

    #[test]
    fn high_s_verifies_like_low_s() {
        let mut rng = Rng(8);
        let n = n();
        for _ in 0..50 {
            let key = signing_key(&mut rng);
            let fast = fast_key(key.verifying_key());
            let signature = sign(&key, MESSAGE);
            let (r, s) = split(&signature);
            let mirrored = signature_of(&r, &(&n - &s));
            assert!(verdict(key.verifying_key(), &fast, MESSAGE, &signature));
            assert!(verdict(key.verifying_key(), &fast, MESSAGE, &mirrored));
        }
    }

    #[test]
    fn rejects_every_flipped_bit_of_signature_message_and_key() {
        let mut rng = Rng(9);
        for _ in 0..3 {
            let key = signing_key(&mut rng);
            let public = key.verifying_key();
            let fast = fast_key(public);
            let signature = sign(&key, MESSAGE);
            for bit in 0..512 {
                let bad: [u8; 64] = flip_bit(&signature, bit).try_into().unwrap();
                assert!(!verdict(public, &fast, MESSAGE, &bad), "signature bit {bit}");
            }
            for bit in 0..MESSAGE.len() * 8 {
                assert!(!verdict(public, &fast, &flip_bit(MESSAGE, bit), &signature), "message bit {bit}");
            }
            let (x, y) = coordinates(public);
            let xy = [x, y].concat();
            for bit in 0..512 {
                let bad = flip_bit(&xy, bit);
                let (x, y): ([u8; 32], [u8; 32]) = (bad[..32].try_into().unwrap(), bad[32..].try_into().unwrap());
                let ours = FastP256Key::from_coordinates(&x, &y);
                let theirs = p256_key(&x, &y);
                assert_eq!(ours.is_ok(), theirs.is_ok(), "key bit {bit}");
                if let (Ok(ours), Ok(theirs)) = (ours, theirs) {
                    assert!(!verdict(&theirs, &ours, MESSAGE, &signature), "key bit {bit}");
                }
            }
        }
    }

    #[test]
    fn rejects_r_and_s_out_of_range() {
        let mut rng = Rng(10);
        let key = signing_key(&mut rng);
        let (public, fast) = (key.verifying_key(), fast_key(key.verifying_key()));
        let signature = sign(&key, MESSAGE);
        let (r, s) = split(&signature);
        let n = n();
        let zero = BigUint::from(0_u32);
        let max = (BigUint::from(1_u32) << 256) - 1_u32;
        let cases = [
            (zero.clone(), s.clone()),
            (r.clone(), zero.clone()),
            (zero.clone(), zero.clone()),
            (n.clone(), s.clone()),
            (r.clone(), n.clone()),
            (&r + &n, s.clone()),
            (r.clone(), &s + &n),
            (&n - 1_u32, s.clone()),
            (r.clone(), &n - 1_u32),
            (max.clone(), s.clone()),
            (r.clone(), max.clone()),
        ];
        // r + n and s + n are congruent to a valid r and s, but only fit 32 bytes sometimes.
        for (bad_r, bad_s) in cases.iter().filter(|(r, s)| r <= &max && s <= &max) {
            assert!(!verdict(public, &fast, MESSAGE, &signature_of(bad_r, bad_s)), "r {bad_r}, s {bad_s}");
        }
        assert!(verdict(public, &fast, MESSAGE, &signature));
    }

    /// A valid signature whose point R has an x coordinate of at least n, so that r is x - n:
    /// too rare to meet by chance (probability about 2^-128), so made the other way round.
    /// Pick R with such an x and any s; then the public key `Q = (R - u1·G)/u2`, with
    /// `u1 = e/s` and `u2 = r/s`, makes (r, s) a signature of the message under Q.
    #[test]
    fn accepts_r_from_an_x_coordinate_above_n() {
        let (p, n) = (p(), n());
        let mut x = n.clone();
        let r_point = loop {
            let rhs = (&x * &x * &x + &p * 3_u32 - &x * 3_u32 + value(B)) % &p;
            let y = rhs.modpow(&((&p + 1_u32) >> 2), &p);
            if &y * &y % &p == rhs {
                let encoded = EncodedPoint::from_affine_coordinates(&be32(&x).into(), &be32(&y).into(), false);
                break ProjectivePoint::from(AffinePoint::from_encoded_point(&encoded).unwrap());
            }
            x += 1_u32;
        };
        let r = &x - &n;
        let s = BigUint::from(0x1234_5678_u32);
        let e = BigUint::from_bytes_be(&Sha256::digest(MESSAGE)) % &n;
        let s_inv = s.modpow(&(&n - 2_u32), &n);
        let (u1, u2) = (&e * &s_inv % &n, &r * &s_inv % &n);
        let u2_inv = u2.modpow(&(&n - 2_u32), &n);
        let q = (r_point - ProjectivePoint::GENERATOR * scalar(&u1)) * scalar(&u2_inv);
        let public = VerifyingKey::from_affine(q.to_affine()).unwrap();
        let fast = fast_key(&public);
        assert!(verdict(&public, &fast, MESSAGE, &signature_of(&r, &s)));
        assert!(!verdict(&public, &fast, b"another message", &signature_of(&r, &s)));
        // x itself is congruent but not below n.
        assert!(!fast.verify(MESSAGE, &signature_of(&x, &s)));
    }

    /// `u1·G + u2·Q` is the point at infinity when `e + r·d ≡ 0 (mod n)`; whatever s is,
    /// nothing may verify then.
    #[test]
    fn rejects_when_the_result_is_the_point_at_infinity() {
        let n = n();
        let mut rng = Rng(11);
        let d = rng.below(&n, false);
        let key = SigningKey::from_bytes(&be32(&d).into()).unwrap();
        let fast = fast_key(key.verifying_key());
        let e = BigUint::from_bytes_be(&Sha256::digest(MESSAGE)) % &n;
        let r = (&n - &e) * d.modpow(&(&n - 2_u32), &n) % &n;
        for s in [BigUint::from(1_u32), BigUint::from(7_u32), rng.below(&n, false)] {
            assert!(!verdict(key.verifying_key(), &fast, MESSAGE, &signature_of(&r, &s)));
        }
    }

    #[test]
    fn refuses_keys_not_on_the_curve_or_out_of_range() {
        let mut rng = Rng(12);
        let key = signing_key(&mut rng);
        let (x, y) = coordinates(key.verifying_key());
        assert!(FastP256Key::from_coordinates(&x, &y).is_ok());
        let err = FastP256Key::from_coordinates(&[0; 32], &[0; 32]).unwrap_err();
        assert!(err.contains("not on the curve"), "the identity has no affine form: {err}");
        let mut other_y = y;
        other_y[31] ^= 1;
        assert!(FastP256Key::from_coordinates(&x, &other_y).unwrap_err().contains("not on the curve"));
        // (x, -y) is on the curve too: a valid, different key.
        let minus_y = be32(&(p() - BigUint::from_bytes_be(&y)));
        assert!(FastP256Key::from_coordinates(&x, &minus_y).is_ok());
        // y + p is congruent to y but not a field element.
        let y_big = BigUint::from_bytes_be(&y);
        if y_big.clone() + p() < BigUint::from(1_u32) << 256 {
            assert!(FastP256Key::from_coordinates(&x, &be32(&(y_big + p()))).is_err());
        }
        let err = FastP256Key::from_coordinates(&be32(&p()), &y).unwrap_err();
        assert!(err.contains("x is not below the field prime"), "{err}");
        let err = FastP256Key::from_coordinates(&x, &[0xff; 32]).unwrap_err();
        assert!(err.contains("y is not below the field prime"), "{err}");
        let err = FastP256Key::from_coordinates(&x[1..], &y).unwrap_err();
        assert!(err.contains("x must be 32 bytes, got 31"), "{err}");
        let err = FastP256Key::from_coordinates(&x, &[&[0][..], &y].concat()).unwrap_err();
        assert!(err.contains("y must be 32 bytes, got 33"), "{err}");
    }

    #[test]
    fn rfc7515_a3_es256_example_verifies() {
        let jwk: JsonWebKey<'_> = serde_json::from_value(serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
        }))
        .unwrap();
        let key = FastP256Key::try_from(&jwk).unwrap();
        let token = "eyJhbGciOiJFUzI1NiJ9\
            .eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ\
            .DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
        let untrusted = UntrustedToken::new(token).unwrap();
        let claims = FastEs256.validator::<serde_json::Value>(&key).validate(&untrusted).unwrap();
        assert_eq!(claims.claims().custom["iss"], "joe");
        let tampered = token.replace("NU1Q", "NU1A");
        let untrusted = UntrustedToken::new(&tampered).unwrap();
        assert!(FastEs256.validator::<serde_json::Value>(&key).validate(&untrusted).is_err());
    }

    #[test]
    fn rfc6979_a25_p256_sha256_signatures_verify() {
        let hex = |s: &str| BigUint::parse_bytes(s.as_bytes(), 16).unwrap();
        let x = be32(&hex("60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6"));
        let y = be32(&hex("7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299"));
        let fast = FastP256Key::from_coordinates(&x, &y).unwrap();
        let public = p256_key(&x, &y).unwrap();
        let vectors = [
            (
                &b"sample"[..],
                "EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716",
                "F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8",
            ),
            (
                &b"test"[..],
                "F1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367",
                "019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083",
            ),
        ];
        for (message, r, s) in vectors {
            let signature = signature_of(&hex(r), &hex(s));
            assert!(verdict(&public, &fast, message, &signature));
            assert!(!verdict(&public, &fast, b"other", &signature));
        }
    }

    #[test]
    fn builds_keys_from_p256_jwks_only() {
        let mut rng = Rng(13);
        let key = signing_key(&mut rng);
        let jwk = JsonWebKey::from(key.verifying_key());
        assert!(FastP256Key::try_from(&jwk).unwrap() == fast_key(key.verifying_key()));
        let JsonWebKey::EllipticCurve { x, y, .. } = &jwk else { panic!("not an EC JWK") };
        let p384 = JsonWebKey::EllipticCurve { curve: "P-384".into(), x: x.clone(), y: y.clone(), secret: None };
        assert!(FastP256Key::try_from(&p384).unwrap_err().contains("P-384"));
        let secret = jwt_compact::alg::Hs256Key::new(b"0123456789abcdef0123456789abcdef");
        let err = FastP256Key::try_from(&JsonWebKey::from(&secret)).unwrap_err();
        assert!(err.contains("EC"), "{err}");
    }

    #[test]
    fn validates_tokens_signed_by_jwt_compact_es256() {
        let mut rng = Rng(14);
        let key = signing_key(&mut rng);
        let fast = fast_key(key.verifying_key());
        let claims = Claims::new(Empty {});
        let token = Es256.token(&Header::empty(), &claims, &key).unwrap();
        let untrusted = UntrustedToken::new(&token).unwrap();
        assert!(FastEs256.validator::<Empty>(&fast).validate(&untrusted).is_ok());
        // Another key's token, and a token naming another algorithm, are refused.
        let other = fast_key(signing_key(&mut rng).verifying_key());
        assert!(FastEs256.validator::<Empty>(&other).validate(&untrusted).is_err());
        let (header, rest) = token.split_once('.').unwrap();
        assert_eq!(header, "eyJhbGciOiJFUzI1NiJ9");
        let renamed = format!("eyJhbGciOiJFUzI1NksifQ.{rest}"); // {"alg":"ES256K"}
        assert!(FastEs256.validator::<Empty>(&fast).validate(&UntrustedToken::new(&renamed).unwrap()).is_err());
        // A signature of the wrong length (like the DER encoding some libraries emit).
        let (signed, _) = token.rsplit_once('.').unwrap();
        let short = format!("{signed}.{}", "A".repeat(84));
        assert!(FastEs256.validator::<Empty>(&fast).validate(&UntrustedToken::new(&short).unwrap()).is_err());
    }
}
