//! x86-64 tile kernels over [`Q4Kx4`]: AVX-512 (BW + VNNI) and AVX2 + FMA + F16C.
//!
//! The parent module compiles this file only when AVX2, FMA and F16C are enabled at compile
//! time, which is what makes calling the `#[target_feature]` functions sound: the CPU running
//! the binary has the features the binary was built for.

use std::arch::x86_64::*;

use super::{BlockQ8K, Q4Kx4, Qh4};

/// The four rows' sub-block scales and mins from [`Q4Kx4::scales`], as bytes `[r][s]`: rows 0
/// and 1 in the first vector of each pair, rows 2 and 3 in the second.
///
/// With 32-bit words `a`, `b`, `c` of a row's packed scales (ggml's `get_scale_min_k4`):
/// scales 0..4 are `a & 0x3f`, mins 0..4 `b & 0x3f`, scales 4..8 `c & 0xf | (a >> 6) << 4`,
/// mins 4..8 `c >> 4 | (b >> 6) << 4`, bytewise; the 16-bit shifts below leak bits between
/// neighbouring bytes only into positions the masks clear.
#[target_feature(enable = "avx2")]
#[inline]
fn unpack_scales(blk: &Q4Kx4) -> ((__m128i, __m128i), (__m128i, __m128i)) {
    // SAFETY: `scales` has 48 readable bytes.
    let (a, b, c) = unsafe {
        let p = blk.scales.as_ptr();
        (_mm_loadu_si128(p.cast()), _mm_loadu_si128(p.add(16).cast()), _mm_loadu_si128(p.add(32).cast()))
    };
    let (m6, m4, m2) = (_mm_set1_epi8(0x3F), _mm_set1_epi8(0x0F), _mm_set1_epi8(0x03));
    let top2 = |v: __m128i| _mm_slli_epi16::<4>(_mm_and_si128(_mm_srli_epi16::<6>(v), m2));
    let sc_lo = _mm_and_si128(a, m6);
    let mn_lo = _mm_and_si128(b, m6);
    let sc_hi = _mm_or_si128(_mm_and_si128(c, m4), top2(a));
    let mn_hi = _mm_or_si128(_mm_and_si128(_mm_srli_epi16::<4>(c), m4), top2(b));
    // Each vector holds 4 bytes per row; interleaving the words gives each row's 8 in order.
    (
        (_mm_unpacklo_epi32(sc_lo, sc_hi), _mm_unpackhi_epi32(sc_lo, sc_hi)),
        (_mm_unpacklo_epi32(mn_lo, mn_hi), _mm_unpackhi_epi32(mn_lo, mn_hi)),
    )
}

/// The four lanes as an array.
#[inline(always)]
fn to_array(v: __m128) -> [f32; 4] {
    // SAFETY: __m128 and [f32; 4] have the same size, and every bit pattern is valid for both.
    unsafe { std::mem::transmute::<__m128, [f32; 4]>(v) }
}

#[cfg(all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512vnni"))]
pub(crate) mod avx512 {
    use super::*;

    /// The low and the high nibble of every byte.
    #[cfg(target_feature = "gfni")]
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    #[inline]
    fn nibbles(v: __m512i) -> (__m512i, __m512i) {
        // An affine transform over GF(2) moves the high nibble down without the shift of
        // shift-and-mask (byte 7 - i of the matrix selects the input bits of output bit i).
        let hi = _mm512_gf2p8affine_epi64_epi8::<0>(v, _mm512_set1_epi64(0x1020_4080_0000_0000));
        (_mm512_and_si512(v, _mm512_set1_epi8(0x0F)), hi)
    }

    #[cfg(not(target_feature = "gfni"))]
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    fn nibbles(v: __m512i) -> (__m512i, __m512i) {
        let m4 = _mm512_set1_epi8(0x0F);
        (_mm512_and_si512(v, m4), _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4))
    }

    /// 16 bytes at `p` in all four 128-bit lanes.
    ///
    /// # Safety
    /// `p` must address 16 readable bytes.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn broadcast16<T>(p: *const T) -> __m512i {
        // SAFETY: the caller guarantees 16 readable bytes.
        _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(p.cast()) })
    }

    /// Four weight rows against `A` activation rows; row `r` of the weights lives in 128-bit lane
    /// `r` throughout, so the per-row scales are lane-wise and the four rows are only separated
    /// by a horizontal sum at the very end.
    ///
    /// Per block and group `c` of 64 elements, the low nibbles of chunks `2c` and `2c + 1` belong
    /// to sub-block `2c` and the high nibbles to `2c + 1`: two `vpmaddubsw` per sub-block give
    /// 16-bit pair sums (at most 2 · 2 · 31 · 127 with Q5_K's fifth bit, no saturation), added,
    /// and one `vpdpwssd` multiplies them by the 16-bit sub-block scales and accumulates in 32
    /// bits. With `QH` (Q5_K) the fifth bits are added to the codes with masked byte adds.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    #[cfg_attr(target_feature = "gfni", target_feature(enable = "gfni"))]
    pub(crate) fn tile<const A: usize, const QH: bool>(w: &[Q4Kx4], qh: &[Qh4], x: [&[BlockQ8K]; A]) -> [[f32; 4]; A] {
        let nb = w.len();
        assert!(x.iter().all(|r| r.len() == nb), "tile: weight and activation blocks differ in number");
        assert!(!QH || qh.len() == nb, "tile: fifth bits missing");
        let fifth = _mm512_set1_epi8(0x10);
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        // Widened to 16 bits, row r's eight scales fill 128-bit lane r; these in-lane byte
        // shuffles copy sub-block s's scale to all eight 16-bit slots of every lane.
        let pick: [__m512i; 8] = std::array::from_fn(|s| _mm512_set1_epi16(((2 * s as i16 + 1) << 8) | (2 * s as i16)));
        let mut facc = [_mm512_setzero_ps(); A];
        for b in 0..nb {
            // SAFETY: b < nb, the length of `w` and of every activation row (asserted above);
            // every load below reads inside the block it names (d/dmin 8 bytes,
            // qs 128 c + 64 + 64 <= 512, activation qs 64 c + 48 + 16 <= 256, bsums 16, qh 128
            // when QH, where qh.len() == nb was asserted).
            unsafe {
                let blk = w.get_unchecked(b);
                let (qh0, qh1) = if QH {
                    let p = qh.get_unchecked(b).as_ptr();
                    (_mm512_loadu_si512(p.cast()), _mm512_loadu_si512(p.add(64).cast()))
                } else {
                    (_mm512_setzero_si512(), _mm512_setzero_si512())
                };
                let ys: [&BlockQ8K; A] = std::array::from_fn(|a| x[a].get_unchecked(b));
                let ((sc01, sc23), (mn01, mn23)) = unpack_scales(blk);
                let sc_all = _mm512_cvtepu8_epi16(_mm256_set_m128i(sc23, sc01));
                let mut iacc = [_mm512_setzero_si512(); A];
                for c in 0..4 {
                    let q = blk.qs.as_ptr().add(128 * c);
                    let (mut lo0, mut hi0) = nibbles(_mm512_loadu_si512(q.cast()));
                    let (mut lo1, mut hi1) = nibbles(_mm512_loadu_si512(q.add(64).cast()));
                    if QH {
                        // Bit 2 c of a qh byte is the fifth bit of its low-nibble element, bit
                        // 2 c + 1 of the high one; chunk 2 c uses qh0, chunk 2 c + 1 qh1.
                        let (blo, bhi) = (_mm512_set1_epi8(1 << (2 * c)), _mm512_set1_epi8(1 << (2 * c + 1)));
                        lo0 = _mm512_mask_add_epi8(lo0, _mm512_test_epi8_mask(qh0, blo), lo0, fifth);
                        hi0 = _mm512_mask_add_epi8(hi0, _mm512_test_epi8_mask(qh0, bhi), hi0, fifth);
                        lo1 = _mm512_mask_add_epi8(lo1, _mm512_test_epi8_mask(qh1, blo), lo1, fifth);
                        hi1 = _mm512_mask_add_epi8(hi1, _mm512_test_epi8_mask(qh1, bhi), hi1, fifth);
                    }
                    let sc_lo = _mm512_shuffle_epi8(sc_all, pick[2 * c]);
                    let sc_hi = _mm512_shuffle_epi8(sc_all, pick[2 * c + 1]);
                    for a in 0..A {
                        let y = ys[a].qs.as_ptr().add(64 * c);
                        let (y0, y1, y2, y3) =
                            (broadcast16(y), broadcast16(y.add(16)), broadcast16(y.add(32)), broadcast16(y.add(48)));
                        let plo = _mm512_add_epi16(_mm512_maddubs_epi16(lo0, y0), _mm512_maddubs_epi16(lo1, y1));
                        let phi = _mm512_add_epi16(_mm512_maddubs_epi16(hi0, y2), _mm512_maddubs_epi16(hi1, y3));
                        iacc[a] = _mm512_dpwssd_epi32(iacc[a], plo, sc_lo);
                        iacc[a] = _mm512_dpwssd_epi32(iacc[a], phi, sc_hi);
                    }
                }
                let mn_all = _mm512_cvtepu8_epi16(_mm256_set_m128i(mn23, mn01));
                let d = _mm_cvtph_ps(_mm_loadl_epi64(blk.d.as_ptr().cast()));
                let dmin = _mm_cvtph_ps(_mm_loadl_epi64(blk.dmin.as_ptr().cast()));
                let d = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(d));
                let dmin = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(dmin));
                for a in 0..A {
                    let dy = _mm512_set1_ps(ys[a].d);
                    // Lane group r: four partial sums of Σ_s mn(r, s) · bsum(s).
                    let mins = _mm512_madd_epi16(mn_all, broadcast16(ys[a].bsums.as_ptr()));
                    // dₓ (d Σ sc q y - dmin Σ mn y) per lane.
                    let t = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mins), dmin, _mm512_mul_ps(_mm512_cvtepi32_ps(iacc[a]), d));
                    facc[a] = _mm512_fmadd_ps(t, dy, facc[a]);
                }
            }
        }
        facc.map(|v| row_sums(v))
    }

    /// The sums of the four 128-bit lanes: `[Σ lane 0, .., Σ lane 3]`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn row_sums(v: __m512) -> [f32; 4] {
        let t = _mm512_add_ps(v, _mm512_permute_ps::<0b10_11_00_01>(v));
        let t = _mm512_add_ps(t, _mm512_permute_ps::<0b01_00_11_10>(t));
        let first = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
        to_array(_mm512_castps512_ps128(_mm512_permutexvar_ps(first, t)))
    }
}

pub(crate) mod avx2 {
    use super::*;

    /// Four weight rows against `A` activation rows with 256-bit vectors: rows `2h` and `2h + 1`
    /// share a vector (one per 128-bit lane), otherwise as the AVX-512 kernel, with
    /// `vpmaddwd` + add in place of `vpdpwssd`.
    // Builds with AVX-512 use their own kernel; the tests still check this one.
    #[cfg_attr(
        all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512vnni", not(test)),
        allow(dead_code)
    )]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn tile<const A: usize, const QH: bool>(w: &[Q4Kx4], qh: &[Qh4], x: [&[BlockQ8K]; A]) -> [[f32; 4]; A] {
        let nb = w.len();
        assert!(x.iter().all(|r| r.len() == nb), "tile: weight and activation blocks differ in number");
        assert!(!QH || qh.len() == nb, "tile: fifth bits missing");
        // 0x10 in each byte of `q` that has `bit` set.
        let fifth = |q: __m256i, bit: i32| {
            let m = _mm256_set1_epi8((1 << bit) as i8);
            _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(q, m), m), _mm256_set1_epi8(0x10))
        };
        let m4 = _mm256_set1_epi8(0x0F);
        // Byte shuffles broadcasting the 16-bit scale of sub-block s within each 128-bit lane.
        let pick: [__m256i; 8] = std::array::from_fn(|s| {
            let (lo, hi) = (2 * s as i8, 2 * s as i8 + 1);
            _mm256_setr_epi8(
                lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, //
                lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi,
            )
        });
        let spread = [_mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1), _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3)];
        let mut facc = [[_mm256_setzero_ps(); 2]; A];
        for b in 0..nb {
            // SAFETY: as in the AVX-512 kernel: b < nb for every slice, and every load reads
            // inside the named block (qs 128 c + 64 + 32 h + 32 <= 512, qh 64 + 32 h + 32 <= 128).
            unsafe {
                let blk = w.get_unchecked(b);
                let ys: [&BlockQ8K; A] = std::array::from_fn(|a| x[a].get_unchecked(b));
                let d = _mm_cvtph_ps(_mm_loadl_epi64(blk.d.as_ptr().cast()));
                let dmin = _mm_cvtph_ps(_mm_loadl_epi64(blk.dmin.as_ptr().cast()));
                let ((sc01, sc23), (mn01, mn23)) = unpack_scales(blk);
                for h in 0..2 {
                    let sc = _mm256_cvtepu8_epi16(if h == 0 { sc01 } else { sc23 });
                    let mut iacc = [_mm256_setzero_si256(); A];
                    for c in 0..4 {
                        let q = blk.qs.as_ptr().add(128 * c + 32 * h);
                        let raw0 = _mm256_loadu_si256(q.cast());
                        let raw1 = _mm256_loadu_si256(q.add(64).cast());
                        let (mut lo0, mut hi0) = (_mm256_and_si256(raw0, m4), _mm256_and_si256(_mm256_srli_epi16::<4>(raw0), m4));
                        let (mut lo1, mut hi1) = (_mm256_and_si256(raw1, m4), _mm256_and_si256(_mm256_srli_epi16::<4>(raw1), m4));
                        if QH {
                            // As in the AVX-512 kernel; rows 2 h, 2 h + 1 are bytes 32 h.. of each half.
                            let p = qh.get_unchecked(b).as_ptr().add(32 * h);
                            let (qh0, qh1) = (_mm256_loadu_si256(p.cast()), _mm256_loadu_si256(p.add(64).cast()));
                            let bit = 2 * c as i32;
                            lo0 = _mm256_or_si256(lo0, fifth(qh0, bit));
                            hi0 = _mm256_or_si256(hi0, fifth(qh0, bit + 1));
                            lo1 = _mm256_or_si256(lo1, fifth(qh1, bit));
                            hi1 = _mm256_or_si256(hi1, fifth(qh1, bit + 1));
                        }
                        let sc_lo = _mm256_shuffle_epi8(sc, pick[2 * c]);
                        let sc_hi = _mm256_shuffle_epi8(sc, pick[2 * c + 1]);
                        for a in 0..A {
                            let y = ys[a].qs.as_ptr().add(64 * c);
                            let bc = |o: usize| _mm256_broadcastsi128_si256(_mm_loadu_si128(y.add(o).cast()));
                            let plo = _mm256_add_epi16(_mm256_maddubs_epi16(lo0, bc(0)), _mm256_maddubs_epi16(lo1, bc(16)));
                            let phi = _mm256_add_epi16(_mm256_maddubs_epi16(hi0, bc(32)), _mm256_maddubs_epi16(hi1, bc(48)));
                            let p = _mm256_add_epi32(_mm256_madd_epi16(plo, sc_lo), _mm256_madd_epi16(phi, sc_hi));
                            iacc[a] = _mm256_add_epi32(iacc[a], p);
                        }
                    }
                    let mn = _mm256_cvtepu8_epi16(if h == 0 { mn01 } else { mn23 });
                    let dh = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(d), spread[h]);
                    let dminh = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(dmin), spread[h]);
                    for a in 0..A {
                        let dy = _mm256_set1_ps(ys[a].d);
                        let bs = _mm256_broadcastsi128_si256(_mm_loadu_si128(ys[a].bsums.as_ptr().cast()));
                        let mins = _mm256_madd_epi16(mn, bs);
                        let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[a]), _mm256_mul_ps(dh, dy), facc[a][h]);
                        facc[a][h] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mins), _mm256_mul_ps(dminh, dy), acc);
                    }
                }
            }
        }
        facc.map(|[v01, v23]| row_sums(v01, v23))
    }

    /// The sums of the 128-bit lanes of `v01` and `v23`: `[Σ v01.lo, Σ v01.hi, Σ v23.lo, Σ v23.hi]`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn row_sums(v01: __m256, v23: __m256) -> [f32; 4] {
        let h = _mm256_hadd_ps(v01, v23);
        let h = _mm256_hadd_ps(h, h);
        // The low lane now starts [Σ v01.lo, Σ v23.lo], the high lane [Σ v01.hi, Σ v23.hi].
        to_array(_mm_unpacklo_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h)))
    }
}
