//! x86-64 kernels: AVX2 + FMA + F16C, and AVX-512 (BW + VNNI) for the four-row product.
//!
//! The parent module compiles this file only when AVX2, FMA and F16C are enabled at compile
//! time, which is what makes the `unsafe` calls of the `#[target_feature]` functions below
//! sound: the CPU running the binary has the features the binary was built for.

use std::arch::x86_64::*;

use super::{BlockQ8_1, Codes};

/// One row: the AVX2 kernel (used for the n % 4 rows a four-row pass leaves).
#[inline]
pub(super) fn dot<B: Codes>(row: &[B], x: &[BlockQ8_1]) -> f32 {
    // SAFETY: this module is compiled only with avx2, fma and f16c enabled (see the module doc).
    unsafe { avx2::dot(row, x) }
}

/// Four rows: AVX-512 where the build has it, else AVX2.
#[inline]
pub(super) fn dot4<B: Codes>(rows: [&[B]; 4], x: &[BlockQ8_1]) -> [f32; 4] {
    #[cfg(all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512vnni"))]
    {
        // SAFETY: the cfg above guarantees the build enables the kernel's target features.
        unsafe { avx512::dot4(rows, x) }
    }
    #[cfg(not(all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512vnni")))]
    {
        // SAFETY: this module is compiled only with avx2, fma and f16c enabled.
        unsafe { avx2::dot4(rows, x) }
    }
}

/// The four rows' scales `[d0, d1, d2, d3]`.
///
/// The f16 bits are packed in general-purpose registers and converted with one instruction:
/// the vector units are the bottleneck of these kernels, the integer units are not.
#[target_feature(enable = "avx2,f16c")]
#[inline]
fn scales<B: Codes>(b: [&B; 4]) -> __m128 {
    halfs_to_f32(b.map(|b| b.d_bits()))
}

/// The four rows' offsets `[m0, m1, m2, m3]`; `d` are their [`scales`].
#[target_feature(enable = "avx2,f16c")]
#[inline]
fn offsets<B: Codes>(b: [&B; 4], d: __m128) -> __m128 {
    if B::MIN_FROM_D {
        _mm_mul_ps(d, _mm_set1_ps(-16.0))
    } else {
        halfs_to_f32(b.map(|b| b.m_bits()))
    }
}

/// Four f16 bit patterns to f32.
#[target_feature(enable = "avx2,f16c")]
#[inline]
fn halfs_to_f32(h: [u16; 4]) -> __m128 {
    let bits = u64::from(h[0]) | u64::from(h[1]) << 16 | u64::from(h[2]) << 32 | u64::from(h[3]) << 48;
    _mm_cvtph_ps(_mm_cvtsi64_si128(bits as i64))
}

/// Sums each 128-bit lane of `a` and `b`: `[Σ a.lo, Σ a.hi, Σ b.lo, Σ b.hi]`.
#[target_feature(enable = "avx2")]
#[inline]
fn lane_sums(a: __m256, b: __m256) -> __m128 {
    let h = _mm256_hadd_ps(a, b);
    let h = _mm256_hadd_ps(h, h);
    // The low lane now starts [Σ a.lo, Σ b.lo], the high lane [Σ a.hi, Σ b.hi].
    _mm_unpacklo_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h))
}

/// The four lanes as an array.
fn to_array(v: __m128) -> [f32; 4] {
    // SAFETY: __m128 and [f32; 4] have the same size, and every bit pattern is valid for both.
    unsafe { std::mem::transmute::<__m128, [f32; 4]>(v) }
}

pub(super) mod avx2 {
    use half::f16;

    use super::*;

    /// `0x10` in each byte whose element has its fifth bit set, for two blocks side by side:
    /// the low 128-bit lane for block `a`, the high lane for `b`; `half` 0 covers elements
    /// 0..16 and 1 covers 16..32.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn fifth_bits(qh_a: u32, qh_b: u32, half: i8) -> __m256i {
        let v = _mm256_set_m128i(_mm_set1_epi32(qh_b as i32), _mm_set1_epi32(qh_a as i32));
        // Byte j of a lane gets qh byte (2 * half + j / 8); then keep bit j % 8 of it.
        let (s0, s1) = (2 * half, 2 * half + 1);
        let pick = _mm256_setr_epi8(
            s0, s0, s0, s0, s0, s0, s0, s0, s1, s1, s1, s1, s1, s1, s1, s1, //
            s0, s0, s0, s0, s0, s0, s0, s0, s1, s1, s1, s1, s1, s1, s1, s1,
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, pick), bit), bit);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }

    /// Per-lane partial sums of `Σ q y` for blocks `a` (low lane) and `b` (high lane); `ya` and
    /// `yb` hold activation elements 0..16 and 16..32 in both lanes.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn pair_dot<B: Codes>(a: &B, b: &B, ya: __m256i, yb: __m256i) -> __m256i {
        // SAFETY: both pointers address 16 readable bytes.
        let raw = unsafe { _mm256_loadu2_m128i(b.qs().as_ptr().cast(), a.qs().as_ptr().cast()) };
        let m4 = _mm256_set1_epi8(0x0F);
        let mut lo = _mm256_and_si256(raw, m4);
        let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m4);
        if B::HAS_QH {
            lo = _mm256_or_si256(lo, fifth_bits(a.qh(), b.qh(), 0));
            hi = _mm256_or_si256(hi, fifth_bits(a.qh(), b.qh(), 1));
        }
        // Each i16 is at most 4 * 31 * 127 = 15748, so adding the two halves cannot saturate.
        let p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, ya), _mm256_maddubs_epi16(hi, yb));
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    }

    /// Loads activation elements `16 * half .. 16 * half + 16` (`half` 0 or 1) into both lanes.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn act_half(y: &BlockQ8_1, half: usize) -> __m256i {
        let half = &y.qs[16 * half..16 * half + 16];
        // SAFETY: `half` has 16 readable bytes.
        _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(half.as_ptr().cast()) })
    }

    /// Four rows, two per 256-bit vector (row pairs share one convert and one multiply-add per
    /// block, with the two rows' scales spread over the two lanes).
    // Builds with AVX-512 use their own four-row kernel; the tests still check this one.
    #[cfg_attr(
        all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512vnni", not(test)),
        allow(dead_code)
    )]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn dot4<B: Codes>(rows: [&[B]; 4], x: &[BlockQ8_1]) -> [f32; 4] {
        let nb = x.len();
        assert!(rows.iter().all(|r| r.len() == nb), "dot4: weight and activation blocks differ in number");
        let perm01 = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
        let perm23 = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
        let (mut acc01, mut acc23, mut macc) = (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm_setzero_ps());
        for (i, y) in x.iter().enumerate() {
            // SAFETY: i < nb, the length of every row (asserted above).
            let b = rows.map(|r| unsafe { r.get_unchecked(i) });
            let (ya, yb) = (act_half(y, 0), act_half(y, 1));
            let (d01, d23) = (pair_dot(b[0], b[1], ya, yb), pair_dot(b[2], b[3], ya, yb));
            let d = scales(b);
            let sc = _mm256_castps128_ps256(_mm_mul_ps(d, _mm_set1_ps(y.d)));
            acc01 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(sc, perm01), _mm256_cvtepi32_ps(d01), acc01);
            acc23 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(sc, perm23), _mm256_cvtepi32_ps(d23), acc23);
            macc = _mm_fmadd_ps(offsets(b, d), _mm_set1_ps(y.s), macc);
        }
        to_array(_mm_add_ps(lane_sums(acc01, acc23), macc))
    }

    /// One row, one block per step; only the n % 4 rows that [`dot4`] leaves come here, so it
    /// reuses the two-block helper with the same block in both lanes rather than being tuned.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn dot<B: Codes>(row: &[B], x: &[BlockQ8_1]) -> f32 {
        assert_eq!(row.len(), x.len(), "dot: weight and activation blocks differ in number");
        let (mut acc, mut macc) = (_mm256_setzero_ps(), 0f32);
        for (b, y) in row.iter().zip(x) {
            let p = pair_dot(b, b, act_half(y, 0), act_half(y, 1));
            // Both lanes hold the same block: weight one by d·dₓ and the other by 0.
            let d = f16::from_bits(b.d_bits()).to_f32() * y.d;
            let sc = _mm256_setr_ps(d, d, d, d, 0.0, 0.0, 0.0, 0.0);
            acc = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(p), acc);
            macc += b.min() * y.s;
        }
        _mm_cvtss_f32(lane_sums(acc, acc)) + macc
    }
}

#[cfg(all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512vnni"))]
pub(crate) mod avx512 {
    use super::*;

    /// The low and the high nibble of every byte (also used by the packed Q5_0 kernel).
    #[cfg(target_feature = "gfni")]
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    #[inline]
    pub(crate) fn nibbles(v: __m512i) -> (__m512i, __m512i) {
        // Affine transforms over GF(2): byte 7 - i of the matrix selects the input bits of output
        // bit i. For the high nibble this saves the shift of shift-and-mask. The low nibble
        // could be a plain AND, but then LLVM knows bit 4 is clear and turns the masked add of
        // the fifth bit into an OR plus a blend, one vector op more.
        let lo = _mm512_gf2p8affine_epi64_epi8::<0>(v, _mm512_set1_epi64(0x0102_0408_0000_0000));
        let hi = _mm512_gf2p8affine_epi64_epi8::<0>(v, _mm512_set1_epi64(0x1020_4080_0000_0000));
        (lo, hi)
    }

    /// The low and the high nibble of every byte.
    #[cfg(not(target_feature = "gfni"))]
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    pub(crate) fn nibbles(v: __m512i) -> (__m512i, __m512i) {
        let m4 = _mm512_set1_epi8(0x0F);
        (_mm512_and_si512(v, m4), _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4))
    }

    /// Four rows in one 512-bit vector, row `r` in 128-bit lane `r`: per block, a vector of low
    /// nibbles (elements 0..16) and one of high nibbles (16..32) go through `vpdpbusd` against
    /// the activation halves broadcast to all lanes, then one convert and one multiply-add
    /// serve all four rows. Keeping each row in its own lane puts the per-row scale in a lane
    /// too, so nothing is reduced across lanes until the end.
    ///
    /// On Zen 4 this is about 3x candle's Q4_0 kernel for Q4_1, 2.5x for Q5_0 (`benches/legacy.rs`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    #[cfg_attr(target_feature = "gfni", target_feature(enable = "gfni"))]
    pub(crate) fn dot4<B: Codes>(rows: [&[B]; 4], x: &[BlockQ8_1]) -> [f32; 4] {
        let nb = x.len();
        assert!(rows.iter().all(|r| r.len() == nb), "dot4: weight and activation blocks differ in number");
        let fifth = _mm512_set1_epi8(0x10);
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        let (mut acc, mut macc) = (_mm512_setzero_ps(), _mm_setzero_ps());
        for (i, y) in x.iter().enumerate() {
            // SAFETY: i < nb, the length of every row (asserted above).
            let b = rows.map(|r| unsafe { r.get_unchecked(i) });
            // SAFETY: every load reads 16 bytes inside a block's `qs` or the activation `qs`.
            let (raw, ya, yb) = unsafe {
                let q = |r: usize| b[r].qs().as_ptr().cast::<__m128i>();
                let r01 = _mm256_loadu2_m128i(q(1), q(0));
                let r23 = _mm256_loadu2_m128i(q(3), q(2));
                let ya = _mm512_broadcast_i32x4(_mm_loadu_si128(y.qs.as_ptr().cast()));
                let yb = _mm512_broadcast_i32x4(_mm_loadu_si128(y.qs.as_ptr().add(16).cast()));
                (_mm512_inserti64x4::<1>(_mm512_castsi256_si512(r01), r23), ya, yb)
            };
            let (mut lo, mut hi) = nibbles(raw);
            if B::HAS_QH {
                // Mask bit 16 r + j: the fifth bit of element j (lo) or 16 + j (hi) of row r.
                // Built in integer registers, which are idle while the vector units are busy.
                let qh = b.map(|b| u64::from(b.qh()));
                let klo = (qh[0] & 0xFFFF) | (qh[1] & 0xFFFF) << 16 | (qh[2] & 0xFFFF) << 32 | (qh[3] & 0xFFFF) << 48;
                let khi = (qh[0] >> 16) | (qh[1] >> 16) << 16 | (qh[2] >> 16) << 32 | (qh[3] >> 16) << 48;
                lo = _mm512_mask_add_epi8(lo, klo, lo, fifth);
                hi = _mm512_mask_add_epi8(hi, khi, hi, fifth);
            }
            let dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, ya), hi, yb);
            let d = scales(b);
            let sc = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_mul_ps(d, _mm_set1_ps(y.d))));
            acc = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(dot), acc);
            macc = _mm_fmadd_ps(offsets(b, d), _mm_set1_ps(y.s), macc);
        }
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
        let sums = lane_sums(_mm512_castps512_ps256(acc), high);
        to_array(_mm_add_ps(sums, macc))
    }
}
