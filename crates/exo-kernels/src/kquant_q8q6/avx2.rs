//! AVX2 tile kernels on the packed layouts, for x86-64 builds without AVX-512 VNNI.
//!
//! The parent compiles this file only when the build enables avx2, fma and f16c, which is what
//! makes calling the `#[target_feature]` functions below sound.
//!
//! A ymm register holds four codes of each of 8 rows (half a group). Without `vpdpbusd`, the
//! products go through `vpmaddubsw` (unsigned × signed bytes to saturating i16 pairs) and
//! `vpmaddwd` against ones. Q8_0 codes stored as `w + 128` could saturate `vpmaddubsw`
//! (255 · 127 · 2 > 32767), so this path restores the signed weight and uses ggml's sign trick:
//! `|w| · (x · sign w)` is at most 128 · 127 · 2; the sums then need no offset correction.
//! Q6_K codes are at most 63 and go straight in.

use std::arch::x86_64::*;

use super::{ActQ8K, ActQ8_0, NibbleBlock, Q4_1x16, Q5_0x16, Q6Kx16, Q8_0x16, GROUP};

/// The kernel for one group of 16 weight rows against one or two activation rows.
type HalfRows<W, A> = unsafe fn(&[W], &[&[A]], &mut [[f32; GROUP]; 2]);

/// Drives a two-row kernel over a tile: `out[gi * m + i]` gets the 16 sums of group `gi` with
/// activation row `i`.
fn tile<W, A>(w: &[&[W]], x: &[&[A]], out: &mut [[f32; GROUP]], one: HalfRows<W, A>, two: HalfRows<W, A>) {
    let m = x.len();
    assert!(out.len() >= w.len() * m, "tile output");
    for (gi, g) in w.iter().enumerate() {
        for i0 in (0..m).step_by(2) {
            let acts = &x[i0..(i0 + 2).min(m)];
            assert!(acts.iter().all(|a| a.len() == g.len()), "block counts differ");
            let mut sums = [[0f32; GROUP]; 2];
            let kernel = if acts.len() == 1 { one } else { two };
            // SAFETY: the build enables avx2/fma/f16c (see module doc); lengths checked above.
            unsafe { kernel(g, acts, &mut sums) };
            for (j, s) in sums.iter().take(acts.len()).enumerate() {
                out[gi * m + i0 + j] = *s;
            }
        }
    }
}

/// Q8_0 tile, laid out as [`tile`] says.
pub(crate) fn q8_0(w: &[&[Q8_0x16]], x: &[&[ActQ8_0]], out: &mut [[f32; GROUP]]) {
    tile(w, x, out, q8_0_half_rows::<1>, q8_0_half_rows::<2>)
}

/// Q5_0 tile, laid out as [`tile`] says.
pub(crate) fn q5_0(w: &[&[Q5_0x16]], x: &[&[ActQ8_0]], out: &mut [[f32; GROUP]]) {
    tile(w, x, out, q5_0_half_rows::<1>, q5_0_half_rows::<2>)
}

/// Q4_1 tile, laid out as [`tile`] says.
pub(crate) fn q4_1(w: &[&[Q4_1x16]], x: &[&[ActQ8_0]], out: &mut [[f32; GROUP]]) {
    tile(w, x, out, q4_1_half_rows::<1>, q4_1_half_rows::<2>)
}

/// Q6_K tile, laid out as [`tile`] says.
pub(crate) fn q6k(w: &[&[Q6Kx16]], x: &[&[ActQ8K]], out: &mut [[f32; GROUP]]) {
    tile(w, x, out, q6k_half_rows::<1>, q6k_half_rows::<2>)
}

/// Four activation bytes at `p`, broadcast to all 8 lanes.
#[inline(always)]
unsafe fn bcast4(p: *const i8) -> __m256i {
    // SAFETY: the caller passes a pointer with 4 readable bytes.
    _mm256_set1_epi32(unsafe { std::ptr::read_unaligned(p.cast::<i32>()) })
}

/// Adds one block's integer sums times the half group's weight scales `dw` and each activation
/// row's scale `xd[i]` to the float accumulators.
#[inline(always)]
unsafe fn scale_add<const M: usize>(isum: &[__m256i; M], dw: __m256, xd: [f32; M], acc: &mut [__m256; M]) {
    for i in 0..M {
        // SAFETY: the caller enabled avx2 and fma.
        acc[i] = unsafe { _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), _mm256_mul_ps(dw, _mm256_set1_ps(xd[i])), acc[i]) };
    }
}

/// Writes the accumulators of half `h` (< 2) of a group for `M` activation rows.
#[inline(always)]
unsafe fn store<const M: usize>(acc: &[__m256; M], out: &mut [[f32; GROUP]; 2], h: usize) {
    for i in 0..M {
        // SAFETY: 8 floats at out[i][8 h] with h < 2; the caller enabled avx.
        unsafe { _mm256_storeu_ps(out[i].as_mut_ptr().add(8 * h), acc[i]) };
    }
}

/// The 8 row scales of half `h` of a group, as f32.
#[inline(always)]
unsafe fn scales(d: &[u16; GROUP], h: usize) -> __m256 {
    // SAFETY: 16 readable bytes at d[8 h]; the caller enabled f16c.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr().add(8 * h).cast())) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_half_rows<const M: usize>(w: &[Q8_0x16], x: &[&[ActQ8_0]], out: &mut [[f32; GROUP]; 2]) {
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(-128);
    for h in 0..2 {
        let mut acc = [_mm256_setzero_ps(); M];
        for (b, blk) in w.iter().enumerate() {
            let mut isum = [_mm256_setzero_si256(); M];
            for step in 0..8 {
                // SAFETY: bytes (step * 16 + 8 h) * 4 .. + 32 lie inside the 512 codes.
                let raw = unsafe { _mm256_loadu_si256(blk.qs.as_ptr().add((step * 16 + 8 * h) * 4).cast()) };
                let ws = _mm256_xor_si256(raw, flip);
                let wa = _mm256_abs_epi8(ws);
                for i in 0..M {
                    // SAFETY: b < the activation row length (checked by the caller); 4 step + 4 <= 32.
                    let xv = unsafe { bcast4(x[i].get_unchecked(b).qs.as_ptr().add(4 * step)) };
                    let p = _mm256_maddubs_epi16(wa, _mm256_sign_epi8(xv, ws));
                    isum[i] = _mm256_add_epi32(isum[i], _mm256_madd_epi16(p, ones));
                }
            }
            // SAFETY: b < the activation row length (checked by the caller); features enabled here.
            unsafe { scale_add(&isum, scales(&blk.d, h), std::array::from_fn(|i| x[i].get_unchecked(b).d), &mut acc) };
        }
        // SAFETY: h < 2; features enabled by this function.
        unsafe { store(&acc, out, h) };
    }
}

/// `0x10` in byte `i` where bit `i` of `bits` is set.
#[target_feature(enable = "avx2")]
#[inline]
fn fifth_bits(bits: u32) -> __m256i {
    // Byte i gets byte i / 8 of `bits`, then keeps bit i % 8 of it.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(0x10))
}

/// The code vectors of Q5_0 and Q4_1 blocks in ymm registers.
trait NibbleVectors: NibbleBlock {
    /// Code vector `step` of rows `8 h .. 8 h + 8` (codes of at most 31).
    ///
    /// # Safety
    /// `step < 8`, `h < 2`; the caller enables avx2.
    unsafe fn vector(&self, step: usize, h: usize) -> __m256i;
}

/// Nibble `step % 2` of the 32 bytes at `64 (step / 2) + 32 h` of `qs`.
///
/// # Safety
/// `step < 8`, `h < 2`; the caller enables avx2.
#[inline(always)]
unsafe fn low_codes(qs: &[u8; 256], step: usize, h: usize) -> __m256i {
    // SAFETY: 32 bytes at 64 (step / 2) + 32 h inside the 256.
    let raw = unsafe { _mm256_loadu_si256(qs.as_ptr().add(64 * (step / 2) + 32 * h).cast()) };
    _mm256_and_si256(if step.is_multiple_of(2) { raw } else { _mm256_srli_epi16::<4>(raw) }, _mm256_set1_epi8(0x0F))
}

impl NibbleVectors for Q5_0x16 {
    #[inline(always)]
    unsafe fn vector(&self, step: usize, h: usize) -> __m256i {
        // SAFETY: 4 bytes at 8 step + 4 h inside the 64 bytes of fifth bits; the rest per the
        // caller.
        unsafe {
            let bits = std::ptr::read_unaligned(self.qh.as_ptr().add(8 * step + 4 * h).cast::<u32>());
            _mm256_or_si256(low_codes(&self.qs, step, h), fifth_bits(bits))
        }
    }
}

impl NibbleVectors for Q4_1x16 {
    #[inline(always)]
    unsafe fn vector(&self, step: usize, h: usize) -> __m256i {
        // SAFETY: per the caller.
        unsafe { low_codes(&self.qs, step, h) }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_0_half_rows<const M: usize>(w: &[Q5_0x16], x: &[&[ActQ8_0]], out: &mut [[f32; GROUP]; 2]) {
    // SAFETY: same contract; features enabled here.
    unsafe { nibble_half_rows::<Q5_0x16, M>(w, x, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_half_rows<const M: usize>(w: &[Q4_1x16], x: &[&[ActQ8_0]], out: &mut [[f32; GROUP]; 2]) {
    // SAFETY: same contract; features enabled here.
    unsafe { nibble_half_rows::<Q4_1x16, M>(w, x, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn nibble_half_rows<W: NibbleVectors, const M: usize>(w: &[W], x: &[&[ActQ8_0]], out: &mut [[f32; GROUP]; 2]) {
    let ones = _mm256_set1_epi16(1);
    for h in 0..2 {
        let mut acc = [_mm256_setzero_ps(); M];
        for (b, blk) in w.iter().enumerate() {
            let mut isum = [_mm256_setzero_si256(); M];
            for i in 0..M {
                // SAFETY: b < the activation row length (checked by the caller).
                isum[i] = _mm256_set1_epi32(W::start(unsafe { x[i].get_unchecked(b) }));
            }
            for step in 0..8 {
                // SAFETY: step < 8, h < 2; features enabled here.
                let v = unsafe { blk.vector(step, h) };
                for i in 0..M {
                    // SAFETY: as above; 4 step + 4 <= 32.
                    let xv = unsafe { bcast4(x[i].get_unchecked(b).qs.as_ptr().add(4 * step)) };
                    // Codes <= 31: the i16 pair sums stay below 2 · 31 · 128.
                    isum[i] = _mm256_add_epi32(isum[i], _mm256_madd_epi16(_mm256_maddubs_epi16(v, xv), ones));
                }
            }
            // SAFETY: b < the activation row length (checked by the caller).
            let xb: [&ActQ8_0; M] = std::array::from_fn(|i| unsafe { x[i].get_unchecked(b) });
            // SAFETY: features enabled by this function.
            unsafe { scale_add(&isum, scales(blk.d(), h), xb.map(|a| a.d), &mut acc) };
            if let Some(m) = blk.offsets() {
                // SAFETY: features enabled by this function.
                let mw = unsafe { scales(m, h) };
                for (acc, a) in acc.iter_mut().zip(xb) {
                    // Row offsets times the activation sum dₓ Σx (corr = -128 Σx).
                    let x_sum = (a.corr as f32) * (-1.0 / 128.0) * a.d;
                    *acc = _mm256_fmadd_ps(mw, _mm256_set1_ps(x_sum), *acc);
                }
            }
        }
        // SAFETY: h < 2; features enabled by this function.
        unsafe { store(&acc, out, h) };
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_half_rows<const M: usize>(w: &[Q6Kx16], x: &[&[ActQ8K]], out: &mut [[f32; GROUP]; 2]) {
    let ones = _mm256_set1_epi16(1);
    let low6 = _mm256_set1_epi8(63);
    for h in 0..2 {
        let mut acc = [_mm256_setzero_ps(); M];
        for (b, blk) in w.iter().enumerate() {
            let mut isum = [_mm256_setzero_si256(); M];
            for s in 0..16 {
                // SAFETY: 32-byte loads at offsets 64 t + 32 h inside the 192-byte sub-block and
                // 8 scale bytes at 16 s + 8 h inside the 256.
                let (v, sc) = unsafe {
                    let p = [0, 1, 2].map(|t| _mm256_loadu_si256(blk.q[s].as_ptr().add(64 * t + 32 * h).cast()));
                    let v3 = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<6>(p[0]), _mm256_set1_epi8(0x03)),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(p[1]), _mm256_set1_epi8(0x0C)),
                            _mm256_and_si256(_mm256_srli_epi16::<2>(p[2]), _mm256_set1_epi8(0x30)),
                        ),
                    );
                    let v = [_mm256_and_si256(p[0], low6), _mm256_and_si256(p[1], low6), _mm256_and_si256(p[2], low6), v3];
                    let sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(blk.sc.as_ptr().add(s * GROUP + 8 * h).cast()));
                    (v, sc)
                };
                for i in 0..M {
                    // SAFETY: b < the activation row length (checked by the caller).
                    let a = unsafe { x[i].get_unchecked(b) };
                    let mut t = _mm256_set1_epi32(a.corr[s]);
                    for (tt, vt) in v.iter().enumerate() {
                        // SAFETY: 16 s + 4 tt + 4 <= 256.
                        let xv = unsafe { bcast4(a.qs.as_ptr().add(16 * s + 4 * tt)) };
                        // Codes <= 63: the i16 pair sums stay below 2 · 63 · 128.
                        t = _mm256_add_epi32(t, _mm256_madd_epi16(_mm256_maddubs_epi16(*vt, xv), ones));
                    }
                    isum[i] = _mm256_add_epi32(isum[i], _mm256_mullo_epi32(t, sc));
                }
            }
            // SAFETY: b < the activation row length (checked by the caller); features enabled here.
            unsafe { scale_add(&isum, scales(&blk.d, h), std::array::from_fn(|i| x[i].get_unchecked(b).d), &mut acc) };
        }
        // SAFETY: h < 2; features enabled by this function.
        unsafe { store(&acc, out, h) };
    }
}
