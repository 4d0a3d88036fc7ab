//! AVX-512 VNNI tile kernels on the packed layouts.
//!
//! The parent compiles this file only when the build enables avx512f, avx512bw, avx512vnni, f16c
//! and fma (the workspace builds with `target-cpu=native`), which is what makes calling the
//! `#[target_feature]` functions below sound: the CPU running the binary has the features the
//! binary was built for.
//!
//! One zmm register holds four consecutive codes of each of the 16 rows of a group; a
//! `vpdpbusd` against four activation bytes broadcast to every 32-bit lane adds four products to
//! each row's sum, so a group's 16 dot products advance with no shuffles or reductions.

use std::arch::x86_64::*;

use super::{ActQ8K, ActQ8_0, NibbleBlock, Q4_1x16, Q5_0x16, Q6Kx16, Q8_0x16, GROUP};
use crate::legacy_quants::x86::avx512::nibbles;

/// Dispatches a dynamic (groups, activation rows) tile to a const-size kernel.
macro_rules! dispatch {
    ($kernel:ident, $w:expr, $x:expr, $out:expr) => {{
        let (w, x, out) = ($w, $x, $out);
        assert!(!x.is_empty() && x.len() <= 4 && !w.is_empty() && w.len() <= 4, "tile size");
        let nb = x[0].len();
        assert!(w.iter().all(|r| r.len() == nb) && x.iter().all(|r| r.len() == nb), "block counts differ");
        assert!(out.len() >= w.len() * x.len(), "tile output");
        // SAFETY: the parent compiles this module only with the kernels' target features, and
        // the asserts above give the kernels the equal block counts they index by.
        unsafe {
            match (w.len(), x.len()) {
                (1, 1) => $kernel::<1, 1>(w, x, out),
                (1, 2) => $kernel::<1, 2>(w, x, out),
                (1, 3) => $kernel::<1, 3>(w, x, out),
                (1, 4) => $kernel::<1, 4>(w, x, out),
                (2, 1) => $kernel::<2, 1>(w, x, out),
                (2, 2) => $kernel::<2, 2>(w, x, out),
                (2, 3) => $kernel::<2, 3>(w, x, out),
                (2, 4) => $kernel::<2, 4>(w, x, out),
                (3, 1) => $kernel::<3, 1>(w, x, out),
                (4, 1) => $kernel::<4, 1>(w, x, out),
                // Other shapes do not occur with the tile sizes of `run`; split them up.
                (r, m) => {
                    for gi in 0..r {
                        for i in 0..m {
                            let mut one = [[0f32; GROUP]; 1];
                            $kernel::<1, 1>(&w[gi..gi + 1], &x[i..i + 1], &mut one);
                            out[gi * m + i] = one[0];
                        }
                    }
                }
            }
        }
    }};
}

/// Q8_0 tile: `out[gi * M + i]` gets the 16 sums of group `gi` with activation row `i`.
pub(crate) fn q8_0(w: &[&[Q8_0x16]], x: &[&[ActQ8_0]], out: &mut [[f32; GROUP]]) {
    dispatch!(q8_0_tile, w, x, out)
}

/// Q5_0 tile, laid out as [`q8_0`].
pub(crate) fn q5_0(w: &[&[Q5_0x16]], x: &[&[ActQ8_0]], out: &mut [[f32; GROUP]]) {
    dispatch!(q5_0_tile, w, x, out)
}

/// Q4_1 tile, laid out as [`q8_0`].
pub(crate) fn q4_1(w: &[&[Q4_1x16]], x: &[&[ActQ8_0]], out: &mut [[f32; GROUP]]) {
    dispatch!(q4_1_tile, w, x, out)
}

/// Q6_K tile, laid out as [`q8_0`].
pub(crate) fn q6k(w: &[&[Q6Kx16]], x: &[&[ActQ8K]], out: &mut [[f32; GROUP]]) {
    dispatch!(q6k_tile, w, x, out)
}

/// Four activation bytes at `p`, broadcast to all 16 lanes.
#[inline(always)]
unsafe fn bcast4(p: *const i8) -> __m512i {
    // SAFETY: the caller passes a pointer with 4 readable bytes.
    _mm512_set1_epi32(unsafe { std::ptr::read_unaligned(p.cast::<i32>()) })
}

/// The 16 row scales of a group, as f32.
#[inline(always)]
unsafe fn scales(d: &[u16; GROUP]) -> __m512 {
    // SAFETY: `d` has 32 readable bytes; the caller enabled f16c and avx512f.
    unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(d.as_ptr().cast())) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma")]
unsafe fn q8_0_tile<const R: usize, const M: usize>(w: &[&[Q8_0x16]], x: &[&[ActQ8_0]], out: &mut [[f32; GROUP]]) {
    let nb = x[0].len();
    let mut acc = [[_mm512_setzero_ps(); M]; R];
    for b in 0..nb {
        // SAFETY: b < nb, the length of every weight and activation slice (checked by dispatch).
        let wb: [&Q8_0x16; R] = std::array::from_fn(|r| unsafe { w[r].get_unchecked(b) });
        let xb: [&ActQ8_0; M] = std::array::from_fn(|i| unsafe { x[i].get_unchecked(b) });
        // Each sum starts at -128 Σx, cancelling the +128 of the stored codes. A single
        // activation row gets a second chain (odd steps) so that R = 4 still has 8 chains in
        // flight against vpdpbusd's latency; more rows have enough chains already.
        let mut s0 = [[_mm512_setzero_si512(); M]; R];
        let mut s1 = [[_mm512_setzero_si512(); M]; R];
        for i in 0..M {
            let c = _mm512_set1_epi32(xb[i].corr);
            for s in s0.iter_mut() {
                s[i] = c;
            }
        }
        for step in 0..8 {
            // SAFETY: step * 64 + 64 <= 512 = qs.len(); 4 * step + 4 <= 32 = qs.len().
            let wv: [__m512i; R] = std::array::from_fn(|r| unsafe { _mm512_loadu_si512(wb[r].qs.as_ptr().add(step * 64).cast()) });
            for i in 0..M {
                let xv = unsafe { bcast4(xb[i].qs.as_ptr().add(4 * step)) };
                for r in 0..R {
                    if M == 1 && step % 2 == 1 {
                        s1[r][i] = _mm512_dpbusd_epi32(s1[r][i], wv[r], xv);
                    } else {
                        s0[r][i] = _mm512_dpbusd_epi32(s0[r][i], wv[r], xv);
                    }
                }
            }
        }
        // A single activation row ran two chains; fold the second into the first.
        let sums: [[__m512i; M]; R] =
            std::array::from_fn(|r| std::array::from_fn(|i| if M == 1 { _mm512_add_epi32(s0[r][i], s1[r][i]) } else { s0[r][i] }));
        // SAFETY: features enabled by this function.
        unsafe { scale_add(wb.map(|b| &b.d), xb.map(|x| x.d), &sums, &mut acc) };
    }
    // SAFETY: out has at least R * M entries (checked by dispatch); features enabled here.
    unsafe { store(&acc, out) };
}

/// Adds one block's integer sums times the 16 lane scales `d[r]` and the activation scale
/// `xd[i]` to the float accumulators.
#[inline(always)]
unsafe fn scale_add<const R: usize, const M: usize>(
    d: [&[u16; GROUP]; R],
    xd: [f32; M],
    sums: &[[__m512i; M]; R],
    acc: &mut [[__m512; M]; R],
) {
    for r in 0..R {
        // SAFETY: the caller enabled avx512f and f16c.
        let dw = unsafe { scales(d[r]) };
        for i in 0..M {
            let sc = _mm512_mul_ps(dw, _mm512_set1_ps(xd[i]));
            acc[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[r][i]), sc, acc[r][i]);
        }
    }
}

/// Writes the accumulators of `R` groups × `M` activation rows to `out[r * M + i]`.
#[inline(always)]
unsafe fn store<const R: usize, const M: usize>(acc: &[[__m512; M]; R], out: &mut [[f32; GROUP]]) {
    for r in 0..R {
        for i in 0..M {
            // SAFETY: the caller checked out has R * M entries and enabled avx512f.
            unsafe { _mm512_storeu_ps(out[r * M + i].as_mut_ptr(), acc[r][i]) };
        }
    }
}

/// The code vectors of Q5_0 and Q4_1 blocks in zmm registers.
trait NibbleVectors: NibbleBlock {
    /// Code vectors `2 pair` and `2 pair + 1` (elements `8 pair .. 8 pair + 8` of every row).
    ///
    /// # Safety
    /// `pair < 4`; the caller enables avx512f/bw.
    unsafe fn vectors(&self, pair: usize) -> [__m512i; 2];
}

impl NibbleVectors for Q5_0x16 {
    #[inline(always)]
    unsafe fn vectors(&self, pair: usize) -> [__m512i; 2] {
        // SAFETY: 64 pair + 64 <= 256 = qs.len(); 16 pair + 16 <= 64 = qh.len(); features per
        // the caller.
        unsafe {
            let (lo, hi) = nibbles(_mm512_loadu_si512(self.qs.as_ptr().add(64 * pair).cast()));
            let k0 = std::ptr::read_unaligned(self.qh.as_ptr().add(16 * pair).cast::<u64>());
            let k1 = std::ptr::read_unaligned(self.qh.as_ptr().add(16 * pair + 8).cast::<u64>());
            let fifth = _mm512_set1_epi8(0x10);
            [_mm512_mask_add_epi8(lo, k0, lo, fifth), _mm512_mask_add_epi8(hi, k1, hi, fifth)]
        }
    }
}

impl NibbleVectors for Q4_1x16 {
    #[inline(always)]
    unsafe fn vectors(&self, pair: usize) -> [__m512i; 2] {
        // SAFETY: 64 pair + 64 <= 256 = qs.len(); features per the caller.
        let (lo, hi) = unsafe { nibbles(_mm512_loadu_si512(self.qs.as_ptr().add(64 * pair).cast())) };
        [lo, hi]
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma")]
#[cfg_attr(target_feature = "gfni", target_feature(enable = "gfni"))]
unsafe fn q5_0_tile<const R: usize, const M: usize>(w: &[&[Q5_0x16]], x: &[&[ActQ8_0]], out: &mut [[f32; GROUP]]) {
    // SAFETY: same contract; features enabled here.
    unsafe { nibble_tile::<Q5_0x16, R, M>(w, x, out) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma")]
#[cfg_attr(target_feature = "gfni", target_feature(enable = "gfni"))]
unsafe fn q4_1_tile<const R: usize, const M: usize>(w: &[&[Q4_1x16]], x: &[&[ActQ8_0]], out: &mut [[f32; GROUP]]) {
    // SAFETY: same contract; features enabled here.
    unsafe { nibble_tile::<Q4_1x16, R, M>(w, x, out) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma")]
#[cfg_attr(target_feature = "gfni", target_feature(enable = "gfni"))]
#[inline]
unsafe fn nibble_tile<W: NibbleVectors, const R: usize, const M: usize>(w: &[&[W]], x: &[&[ActQ8_0]], out: &mut [[f32; GROUP]]) {
    let nb = x[0].len();
    let mut acc = [[_mm512_setzero_ps(); M]; R];
    for b in 0..nb {
        // SAFETY: b < nb, the length of every weight and activation slice (checked by dispatch).
        let wb: [&W; R] = std::array::from_fn(|r| unsafe { w[r].get_unchecked(b) });
        let xb: [&ActQ8_0; M] = std::array::from_fn(|i| unsafe { x[i].get_unchecked(b) });
        // A single activation row gets a second chain as in `q8_0_tile`.
        let mut s0 = [[_mm512_setzero_si512(); M]; R];
        let mut s1 = [[_mm512_setzero_si512(); M]; R];
        for i in 0..M {
            let c = _mm512_set1_epi32(W::start(xb[i]));
            for s in s0.iter_mut() {
                s[i] = c;
            }
        }
        for pair in 0..4 {
            // SAFETY: pair < 4; features enabled here.
            let v: [[__m512i; 2]; R] = std::array::from_fn(|r| unsafe { wb[r].vectors(pair) });
            for i in 0..M {
                // SAFETY: 8 pair + 8 <= 32 = qs.len().
                let x0 = unsafe { bcast4(xb[i].qs.as_ptr().add(8 * pair)) };
                let x1 = unsafe { bcast4(xb[i].qs.as_ptr().add(8 * pair + 4)) };
                for r in 0..R {
                    s0[r][i] = _mm512_dpbusd_epi32(s0[r][i], v[r][0], x0);
                    if M == 1 {
                        s1[r][i] = _mm512_dpbusd_epi32(s1[r][i], v[r][1], x1);
                    } else {
                        s0[r][i] = _mm512_dpbusd_epi32(s0[r][i], v[r][1], x1);
                    }
                }
            }
        }
        let sums: [[__m512i; M]; R] =
            std::array::from_fn(|r| std::array::from_fn(|i| if M == 1 { _mm512_add_epi32(s0[r][i], s1[r][i]) } else { s0[r][i] }));
        // SAFETY: features enabled by this function.
        unsafe { scale_add(wb.map(W::d), xb.map(|x| x.d), &sums, &mut acc) };
        // Row offsets times the activation sum dₓ Σx (corr = -128 Σx, exact in f32).
        for r in 0..R {
            if let Some(m) = wb[r].offsets() {
                // SAFETY: features enabled by this function.
                let mw = unsafe { scales(m) };
                for i in 0..M {
                    let x_sum = (xb[i].corr as f32) * (-1.0 / 128.0) * xb[i].d;
                    acc[r][i] = _mm512_fmadd_ps(mw, _mm512_set1_ps(x_sum), acc[r][i]);
                }
            }
        }
    }
    // SAFETY: out has at least R * M entries (checked by dispatch); features enabled here.
    unsafe { store(&acc, out) };
}

/// The four code vectors of one packed Q6_K sub-block (see [`Q6Kx16`]).
#[inline(always)]
unsafe fn q6_vectors(q: &[u8; 192]) -> [__m512i; 4] {
    // SAFETY: three 64-byte loads inside the 192-byte array; features enabled by the caller.
    unsafe {
        let p = [0, 1, 2].map(|t| _mm512_loadu_si512(q.as_ptr().add(64 * t).cast()));
        let low6 = _mm512_set1_epi8(63);
        let v3 = top_bits(p);
        [_mm512_and_si512(p[0], low6), _mm512_and_si512(p[1], low6), _mm512_and_si512(p[2], low6), v3]
    }
}

/// The fourth code vector: bits 6..8 of plane t become bits 2t..2t+2.
#[cfg(target_feature = "gfni")]
#[inline(always)]
unsafe fn top_bits(p: [__m512i; 3]) -> __m512i {
    // Affine transforms over GF(2): byte 7 - i of the matrix selects the input bits of output
    // bit i, so each plane's top two bits land in place with everything else cleared.
    // SAFETY: gfni and avx512 are enabled by the build (cfg above) and the caller.
    unsafe {
        let a = _mm512_gf2p8affine_epi64_epi8::<0>(p[0], _mm512_set1_epi64(0x4080_0000_0000_0000));
        let b = _mm512_gf2p8affine_epi64_epi8::<0>(p[1], _mm512_set1_epi64(0x0000_4080_0000_0000));
        let c = _mm512_gf2p8affine_epi64_epi8::<0>(p[2], _mm512_set1_epi64(0x0000_0000_4080_0000));
        _mm512_ternarylogic_epi32::<0xFE>(a, b, c)
    }
}

#[cfg(not(target_feature = "gfni"))]
#[inline(always)]
unsafe fn top_bits(p: [__m512i; 3]) -> __m512i {
    // SAFETY: avx512f/bw enabled by the caller. 16-bit shifts move neighbouring bytes' bits in,
    // which the masks remove.
    unsafe {
        let a = _mm512_and_si512(_mm512_srli_epi16::<6>(p[0]), _mm512_set1_epi8(0x03));
        let b = _mm512_and_si512(_mm512_srli_epi16::<4>(p[1]), _mm512_set1_epi8(0x0C));
        let c = _mm512_and_si512(_mm512_srli_epi16::<2>(p[2]), _mm512_set1_epi8(0x30));
        _mm512_ternarylogic_epi32::<0xFE>(a, b, c)
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma")]
#[cfg_attr(target_feature = "gfni", target_feature(enable = "gfni"))]
unsafe fn q6k_tile<const R: usize, const M: usize>(w: &[&[Q6Kx16]], x: &[&[ActQ8K]], out: &mut [[f32; GROUP]]) {
    let nb = x[0].len();
    let mut acc = [[_mm512_setzero_ps(); M]; R];
    for b in 0..nb {
        // SAFETY: b < nb, the length of every weight and activation slice (checked by dispatch).
        let wb: [&Q6Kx16; R] = std::array::from_fn(|r| unsafe { w[r].get_unchecked(b) });
        let xb: [&ActQ8K; M] = std::array::from_fn(|i| unsafe { x[i].get_unchecked(b) });
        let mut isum = [[_mm512_setzero_si512(); M]; R];
        for s in 0..16 {
            // SAFETY: in-bounds loads of the block's arrays (s < 16).
            let v: [[__m512i; 4]; R] = std::array::from_fn(|r| unsafe { q6_vectors(&wb[r].q[s]) });
            let sc: [__m512i; R] =
                std::array::from_fn(|r| unsafe { _mm512_cvtepi8_epi32(_mm_loadu_si128(wb[r].sc.as_ptr().add(s * GROUP).cast())) });
            for i in 0..M {
                // SAFETY: 16 s + 4 t + 4 <= 256 = qs.len().
                let xv: [__m512i; 4] = std::array::from_fn(|t| unsafe { bcast4(xb[i].qs.as_ptr().add(16 * s + 4 * t)) });
                // The sub-block sum starts at -32 Σx, the code offset; |sum| <= 16·32·127 and
                // |Σ sc · sum| <= 16·127·65024 fit in i32.
                let c = _mm512_set1_epi32(xb[i].corr[s]);
                for r in 0..R {
                    let mut t = c;
                    for (vt, xt) in v[r].iter().zip(&xv) {
                        t = _mm512_dpbusd_epi32(t, *vt, *xt);
                    }
                    isum[r][i] = _mm512_add_epi32(isum[r][i], _mm512_mullo_epi32(t, sc[r]));
                }
            }
        }
        // SAFETY: features enabled by this function.
        unsafe { scale_add(wb.map(|b| &b.d), xb.map(|x| x.d), &isum, &mut acc) };
    }
    // SAFETY: out has at least R * M entries (checked by dispatch); features enabled here.
    unsafe { store(&acc, out) };
}
