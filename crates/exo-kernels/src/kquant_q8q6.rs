//! Q8_0, Q6_K, Q5_0 and Q4_1 weights: repacked at load into 16-row interleaved groups, multiplied
//! against 8-bit quantized activations with AVX-512 VNNI (AVX2 and scalar fallbacks).
//!
//! candle's kernels for these two types take one weight row at a time and use 256-bit
//! `maddubs`, about 26 GFLOP/s per core for Q8_0. ggml's fast CPU path instead repacks weights
//! so that one 512-bit register holds four consecutive weights of each of 16 rows; then a single
//! `vpdpbusd` against four broadcast activation bytes advances 16 dot products at once, with no
//! horizontal reduction per block. This module does the same with its own layouts:
//!
//! - [`Q8_0x16`]: one 32-element block column of 16 rows (544 bytes = 16 × 34, the size of the
//!   16 original blocks). Codes are stored as `w ^ 0x80`, i.e. `w + 128` as an unsigned byte,
//!   because `vpdpbusd` multiplies unsigned by signed bytes. The activations stay signed and
//!   carry `-128 Σ x`, which starts each block's integer sum and cancels the offset exactly.
//! - [`Q6Kx16`]: one 256-element super-block column of 16 rows (3360 bytes = 16 × 210). The
//!   6-bit codes (0..=63, unsigned already) are stored so that three of four code vectors are a
//!   single AND away and the fourth is assembled from the spare top bits of the other three.
//!   The activations (Q8_K-style, per 256) carry `-32 Σ x` per 16, again the sum's start value.
//! - [`Q5_0x16`]: one 32-element block column of 16 rows (352 bytes = 16 × 22): nibble planes
//!   plus one 64-bit mask of fifth bits per code vector, which AVX-512 adds in with a masked
//!   byte add. It shares the Q8_0 activations (`-16 Σ x` is their correction / 8). Q5_0 came
//!   along because it is most of Qwen2.5-Coder-0.5B's weights, and the legacy four-row kernel
//!   (`legacy_quants`) reuses nothing across activation rows in prompt processing.
//! - [`Q4_1x16`]: one 32-element block column of 16 rows (320 bytes = 16 × 20): the same nibble
//!   planes, plus the 16 row offsets `m`. Its codes need no correction; the offsets multiply the
//!   activation sum, which the Q8_0 activations carry as `corr = -128 Σx`. Q4_1 is almost all of
//!   SmolLM2-135M's weights, and in decoding the four-row legacy kernel streamed them at about
//!   60% of this layout's speed.
//!
//! Both the decode step (`m == 1`) and prompt chunks (`m > 1`) run the same tile kernel, with
//! `R` groups × `M` activation rows per tile: each loaded weight vector feeds `M` activation rows
//! and each broadcast activation word feeds `R` groups. Matrices whose row count is not a multiple
//! of 16 get a zero-padded last group, so memory stays within one group of the GGUF size.
//!
//! Activation quantization follows candle (and ggml's reference code): Q8_0 uses
//! `d = amax / 127` with round-half-away-from-zero and stores `d` rounded to f16; Q8_K uses
//! `iscale = -127 / max` (the signed value of largest magnitude) and `d = 1 / iscale`.

use std::cell::Cell;

use half::f16;

use crate::kquant_q4k::{zeroed_vec, Zero};
use crate::matrix::SendPtr;
use crate::threads::parallel_for;

/// Rows per interleaved group.
pub const GROUP: usize = 16;
/// Elements per Q8_0 block.
pub const QK8_0: usize = 32;
/// Elements per k-quant super-block.
pub const QK_K: usize = 256;
/// Bytes of one ggml Q8_0 block.
const Q8_0_BYTES: usize = 34;
/// Bytes of one ggml Q6_K block.
const Q6K_BYTES: usize = 210;

/// Sixteen rows of one Q8_0 block column.
///
/// `qs[(s * 16 + r) * 4 + j]` is weight `4 s + j` of row `r` in the block, XOR 0x80.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Q8_0x16 {
    /// Row scales, f16 bits.
    pub d: [u16; GROUP],
    /// Interleaved, offset codes.
    pub qs: [u8; GROUP * QK8_0],
}

/// Sixteen rows of one Q6_K super-block column.
///
/// For sub-block `s` (elements `16 s .. 16 s + 16`), code vector `t` (elements `16 s + 4 t + j`)
/// holds byte `r * 4 + j` for row `r`. `q[s]` stores three 64-byte planes `P0, P1, P2` where
/// `Pt = vt | ((v3 >> 2t) & 3) << 6` for `t < 3`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Q6Kx16 {
    /// Super-block scales, f16 bits.
    pub d: [u16; GROUP],
    /// Sub-block scales: `sc[s * 16 + r]` for sub-block `s` of row `r`.
    pub sc: [i8; GROUP * 16],
    /// Codes, per sub-block three planes of 64 bytes.
    pub q: [[u8; 192]; 16],
}

/// Sixteen rows of one Q5_0 block column (ggml `block_q5_0`: `x = d (q - 16)`, 5-bit `q`).
///
/// Code vector `s` (elements `4 s + j`) has byte `r * 4 + j` for row `r`, as in [`Q8_0x16`];
/// `qs[64 p..64 p + 64]` holds vectors `2 p` (low nibbles) and `2 p + 1` (high nibbles), and
/// bit `r * 4 + j` of the little-endian `u64` at `qh[8 s..]` is the fifth bit of vector `s`,
/// so that it loads straight into an AVX-512 byte mask.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Q5_0x16 {
    /// Row scales, f16 bits.
    pub d: [u16; GROUP],
    /// Low four bits, two code vectors per 64 bytes.
    pub qs: [u8; GROUP * QK8_0 / 2],
    /// Fifth bits, one `u64` per code vector.
    pub qh: [u8; GROUP * QK8_0 / 8],
}

/// Bytes of one ggml Q5_0 block.
const Q5_0_BYTES: usize = 22;

/// Sixteen rows of one Q4_1 block column (ggml `block_q4_1`: `x = d q + m`, 4-bit `q`).
///
/// `qs` is laid out as in [`Q5_0x16`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Q4_1x16 {
    /// Row scales, f16 bits.
    pub d: [u16; GROUP],
    /// Row offsets, f16 bits.
    pub m: [u16; GROUP],
    /// Codes, two code vectors per 64 bytes.
    pub qs: [u8; GROUP * QK8_0 / 2],
}

/// Bytes of one ggml Q4_1 block.
const Q4_1_BYTES: usize = 20;

const _: () = {
    assert!(std::mem::size_of::<Q5_0x16>() == GROUP * Q5_0_BYTES);
    assert!(std::mem::size_of::<Q4_1x16>() == GROUP * Q4_1_BYTES);
    assert!(std::mem::size_of::<Q8_0x16>() == GROUP * Q8_0_BYTES);
    assert!(std::mem::size_of::<Q6Kx16>() == GROUP * Q6K_BYTES);
};

/// What the Q5_0 and Q4_1 kernels share: both have the nibble planes of [`Q5_0x16`]; they differ
/// in the fifth bits (each SIMD module adds them its own way), where the integer sums start, and
/// Q4_1's row offsets.
pub(crate) trait NibbleBlock {
    /// The row scales.
    fn d(&self) -> &[u16; GROUP];
    /// The integer sums' start value for activation block `x`, cancelling any code offset.
    fn start(x: &ActQ8_0) -> i32;
    /// The row offsets `m` that multiply the activation sum (Q4_1), if the type has them.
    fn offsets(&self) -> Option<&[u16; GROUP]>;
}

impl NibbleBlock for Q5_0x16 {
    fn d(&self) -> &[u16; GROUP] {
        &self.d
    }
    /// `-16 Σx` (`corr = -128 Σx`): the codes carry +16.
    fn start(x: &ActQ8_0) -> i32 {
        x.corr >> 3
    }
    fn offsets(&self) -> Option<&[u16; GROUP]> {
        None
    }
}

impl NibbleBlock for Q4_1x16 {
    fn d(&self) -> &[u16; GROUP] {
        &self.d
    }
    fn start(_: &ActQ8_0) -> i32 {
        0
    }
    fn offsets(&self) -> Option<&[u16; GROUP]> {
        Some(&self.m)
    }
}

/// 32 activations quantized for Q8_0 weights: `x[j] ≈ d * qs[j]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ActQ8_0 {
    /// Scale, f16-rounded as candle/ggml store it.
    pub d: f32,
    /// `-128 Σ qs`: cancels the +128 offset of the stored weight codes.
    pub corr: i32,
    /// Values in -127..=127.
    pub qs: [i8; QK8_0],
}

/// 256 activations quantized for Q6_K weights (ggml's `block_q8_K`, with the 16-element sums
/// pre-multiplied by -32, the Q6_K code offset).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActQ8K {
    /// Scale.
    pub d: f32,
    /// Values in -128..=127.
    pub qs: [i8; QK_K],
    /// `-32 Σ qs[16 s .. 16 s + 16]`.
    pub corr: [i32; 16],
}

impl Default for ActQ8K {
    fn default() -> Self {
        Self { d: 0.0, qs: [0; QK_K], corr: [0; 16] }
    }
}

impl ActQ8_0 {
    /// Quantizes 32 values as candle's `BlockQ8_0::from_float` (and ggml's reference) does.
    pub fn quantize(x: &[f32]) -> Self {
        debug_assert_eq!(x.len(), QK8_0);
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; QK8_0];
        for (q, v) in qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
        let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
        Self { d: f16::from_f32(d).to_f32(), corr: -128 * sum, qs }
    }
}

impl ActQ8K {
    /// Quantizes 256 values as candle's `BlockQ8K::from_float` does.
    pub fn quantize(x: &[f32]) -> Self {
        debug_assert_eq!(x.len(), QK_K);
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let mut out = Self::default();
        if amax == 0.0 {
            return out;
        }
        // The first value of largest magnitude, with its sign (candle's scan order).
        let max = *x.iter().find(|v| v.abs() == amax).expect("amax comes from x");
        let iscale = -127.0 / max;
        for (q, v) in out.qs.iter_mut().zip(x) {
            *q = (iscale * v).round().clamp(-128.0, 127.0) as i8;
        }
        for (c, q) in out.corr.iter_mut().zip(out.qs.chunks_exact(16)) {
            *c = -32 * q.iter().map(|&q| i32::from(q)).sum::<i32>();
        }
        out.d = 1.0 / iscale;
        out
    }
}

/// An activation block type with its per-thread buffer.
trait Act: Copy + Default + Send + Sync + 'static {
    const QK: usize;
    fn quantize(x: &[f32]) -> Self;
    fn buffer() -> &'static std::thread::LocalKey<Cell<Vec<Self>>>;
}

thread_local! {
    static BUF_Q8_0: Cell<Vec<ActQ8_0>> = const { Cell::new(Vec::new()) };
    static BUF_Q8K: Cell<Vec<ActQ8K>> = const { Cell::new(Vec::new()) };
}

impl Act for ActQ8_0 {
    const QK: usize = QK8_0;
    fn quantize(x: &[f32]) -> Self {
        ActQ8_0::quantize(x)
    }
    fn buffer() -> &'static std::thread::LocalKey<Cell<Vec<Self>>> {
        &BUF_Q8_0
    }
}

impl Act for ActQ8K {
    const QK: usize = QK_K;
    fn quantize(x: &[f32]) -> Self {
        ActQ8K::quantize(x)
    }
    fn buffer() -> &'static std::thread::LocalKey<Cell<Vec<Self>>> {
        &BUF_Q8K
    }
}

/// Quantizes `m` rows of `k` activations into the calling thread's reusable buffer and calls
/// `f` with the `m * (k / QK)` blocks. Large inputs are quantized on all threads.
fn with_quantized<A: Act, R>(x: &[f32], m: usize, k: usize, f: impl FnOnce(&[A]) -> R) -> R {
    assert!(k.is_multiple_of(A::QK), "activation row length {k} is not a multiple of {}", A::QK);
    assert_eq!(x.len(), m * k, "activations: expected {m} rows of {k}");
    let need = m * (k / A::QK);
    // Taken out of the cell rather than borrowed, so a nested call just gets a fresh buffer.
    let mut buf = A::buffer().take();
    if buf.len() < need {
        buf.resize(need, A::default());
    }
    let blocks = &mut buf[..need];
    if need >= 512 {
        let ptr = SendPtr(blocks.as_mut_ptr());
        parallel_for(need.div_ceil(64), |range| {
            for c in range {
                let (lo, hi) = (c * 64, ((c + 1) * 64).min(need));
                for b in lo..hi {
                    // SAFETY: `b < need`, the buffer's length; each block is written by one thread.
                    unsafe { *ptr.get().add(b) = A::quantize(&x[b * A::QK..(b + 1) * A::QK]) };
                }
            }
        });
    } else {
        for (b, c) in blocks.iter_mut().zip(x.chunks_exact(A::QK)) {
            *b = A::quantize(c);
        }
    }
    let r = f(blocks);
    A::buffer().set(buf);
    r
}

/// Weights repacked for this module's kernels (the same bytes as the GGUF tensor, reordered;
/// only a partial last group of rows adds zero padding).
pub enum Packed {
    /// Q8_0 weights.
    Q8_0(PackedMat<Q8_0x16>),
    /// Q6_K weights.
    Q6K(PackedMat<Q6Kx16>),
    /// Q5_0 weights.
    Q5_0(PackedMat<Q5_0x16>),
    /// Q4_1 weights.
    Q4_1(PackedMat<Q4_1x16>),
}

/// `groups × blocks_per_row` interleaved blocks, group-major.
pub struct PackedMat<T> {
    rows: usize,
    cols: usize,
    nb: usize,
    data: Vec<T>,
}

impl<T> PackedMat<T> {
    fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }
    fn group(&self, g: usize) -> &[T] {
        &self.data[g * self.nb..(g + 1) * self.nb]
    }
}

// SAFETY: integer arrays only, for which all-zero bytes are valid values.
unsafe impl Zero for Q8_0x16 {}
// SAFETY: as above.
unsafe impl Zero for Q6Kx16 {}
// SAFETY: as above.
unsafe impl Zero for Q5_0x16 {}
// SAFETY: as above.
unsafe impl Zero for Q4_1x16 {}

/// Builds the `groups × nb` packed blocks of a `rows`-row matrix on all threads.
///
/// `fill(dst, src)` packs one interleaved block from `src(r)`, the ggml block of lane `r` (the
/// `n` real rows of the group; lanes `n..GROUP` are padding and start zeroed).
fn pack_groups<'a, T: Zero + Copy>(
    rows: usize,
    nb: usize,
    block_bytes: usize,
    bytes: &'a [u8],
    fill: impl Fn(&mut T, usize, &dyn Fn(usize) -> &'a [u8]) + Sync,
) -> Vec<T> {
    assert_eq!(bytes.len(), rows * nb * block_bytes, "packed byte length");
    let groups = rows.div_ceil(GROUP);
    let mut data: Vec<T> = zeroed_vec(groups * nb);
    let ptr = SendPtr(data.as_mut_ptr());
    parallel_for(groups, |range| {
        for g in range {
            let n = GROUP.min(rows - g * GROUP);
            for b in 0..nb {
                // SAFETY: g * nb + b < groups * nb; each group is written by one thread.
                let dst = unsafe { &mut *ptr.get().add(g * nb + b) };
                fill(dst, n, &|r| &bytes[((g * GROUP + r) * nb + b) * block_bytes..][..block_bytes]);
            }
        }
    });
    data
}

impl Packed {
    /// Repacks ggml Q8_0 bytes of `rows × cols` (`cols` a multiple of 32).
    pub fn q8_0(rows: usize, cols: usize, bytes: &[u8]) -> Self {
        let nb = cols / QK8_0;
        let data = pack_groups(rows, nb, Q8_0_BYTES, bytes, |dst: &mut Q8_0x16, n, src| {
            for r in 0..n {
                let src = src(r);
                dst.d[r] = u16::from_le_bytes([src[0], src[1]]);
                // Four codes at a time: this loop is most of the load time of a model.
                for (step, q) in src[2..].chunks_exact(4).enumerate() {
                    let at = (step * GROUP + r) * 4;
                    let word = u32::from_le_bytes([q[0], q[1], q[2], q[3]]) ^ 0x8080_8080;
                    dst.qs[at..at + 4].copy_from_slice(&word.to_le_bytes());
                }
            }
            // Padding rows keep d = 0 but need codes of value 0 too (0x80 stored), so that
            // nothing but zeros reaches the sums.
            for r in n..GROUP {
                for e in 0..QK8_0 {
                    dst.qs[((e / 4) * GROUP + r) * 4 + e % 4] = 0x80;
                }
            }
        });
        Packed::Q8_0(PackedMat { rows, cols, nb, data })
    }

    /// Repacks ggml Q5_0 bytes of `rows × cols` (`cols` a multiple of 32).
    pub fn q5_0(rows: usize, cols: usize, bytes: &[u8]) -> Self {
        let nb = cols / QK8_0;
        // Padding rows stay all zero: d = 0 contributes nothing.
        let data = pack_groups(rows, nb, Q5_0_BYTES, bytes, |dst: &mut Q5_0x16, n, src| {
            let mut qh_words = [0u64; 8];
            for r in 0..n {
                let src = src(r);
                dst.d[r] = u16::from_le_bytes([src[0], src[1]]);
                let qh = u64::from(u32::from_le_bytes([src[2], src[3], src[4], src[5]]));
                pack_nibbles(&mut dst.qs, r, &src[6..22]);
                // Fifth bits 4 s .. 4 s + 4 go to bits 4 r .. 4 r + 4 of vector s's mask.
                for (step, w) in qh_words.iter_mut().enumerate() {
                    *w |= ((qh >> (4 * step)) & 0xF) << (4 * r);
                }
            }
            for (step, w) in qh_words.iter().enumerate() {
                dst.qh[8 * step..8 * step + 8].copy_from_slice(&w.to_le_bytes());
            }
        });
        Packed::Q5_0(PackedMat { rows, cols, nb, data })
    }

    /// Repacks ggml Q4_1 bytes of `rows × cols` (`cols` a multiple of 32).
    pub fn q4_1(rows: usize, cols: usize, bytes: &[u8]) -> Self {
        let nb = cols / QK8_0;
        // Padding rows stay all zero: d = m = 0 contributes nothing.
        let data = pack_groups(rows, nb, Q4_1_BYTES, bytes, |dst: &mut Q4_1x16, n, src| {
            for r in 0..n {
                let src = src(r);
                dst.d[r] = u16::from_le_bytes([src[0], src[1]]);
                dst.m[r] = u16::from_le_bytes([src[2], src[3]]);
                pack_nibbles(&mut dst.qs, r, &src[4..20]);
            }
        });
        Packed::Q4_1(PackedMat { rows, cols, nb, data })
    }

    /// Repacks ggml Q6_K bytes of `rows × cols` (`cols` a multiple of 256).
    pub fn q6k(rows: usize, cols: usize, bytes: &[u8]) -> Self {
        let nb = cols / QK_K;
        // Padding rows stay all zero: d = 0 and scales 0 contribute nothing.
        let data = pack_groups(rows, nb, Q6K_BYTES, bytes, |dst: &mut Q6Kx16, n, src| {
            for r in 0..n {
                let src = src(r);
                let codes = q6k_codes(src);
                dst.d[r] = u16::from_le_bytes([src[208], src[209]]);
                for s in 0..16 {
                    dst.sc[s * GROUP + r] = src[192 + s] as i8;
                    for j in 0..4 {
                        let v = [0, 1, 2, 3].map(|t| codes[16 * s + 4 * t + j]);
                        for t in 0..3 {
                            dst.q[s][t * 64 + r * 4 + j] = v[t] | ((v[3] >> (2 * t)) & 3) << 6;
                        }
                    }
                }
            }
        });
        Packed::Q6K(PackedMat { rows, cols, nb, data })
    }

    /// Writes row `r` as f32 into `out` (`cols` long).
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        let (g, lane) = (r / GROUP, r % GROUP);
        match self {
            Packed::Q8_0(p) => {
                assert!(r < p.rows && out.len() == p.cols);
                for (blk, o) in p.group(g).iter().zip(out.chunks_exact_mut(QK8_0)) {
                    let d = f16::from_bits(blk.d[lane]).to_f32();
                    for (e, o) in o.iter_mut().enumerate() {
                        let q = (blk.qs[((e / 4) * GROUP + lane) * 4 + e % 4] ^ 0x80) as i8;
                        *o = f32::from(q) * d;
                    }
                }
            }
            Packed::Q5_0(p) => {
                assert!(r < p.rows && out.len() == p.cols);
                for (blk, o) in p.group(g).iter().zip(out.chunks_exact_mut(QK8_0)) {
                    let d = f16::from_bits(blk.d[lane]).to_f32();
                    for (e, o) in o.iter_mut().enumerate() {
                        *o = f32::from(q5_code(blk, lane, e) as i8 - 16) * d;
                    }
                }
            }
            Packed::Q4_1(p) => {
                assert!(r < p.rows && out.len() == p.cols);
                for (blk, o) in p.group(g).iter().zip(out.chunks_exact_mut(QK8_0)) {
                    let d = f16::from_bits(blk.d[lane]).to_f32();
                    let m = f16::from_bits(blk.m[lane]).to_f32();
                    for (e, o) in o.iter_mut().enumerate() {
                        *o = f32::from(nibble_code(&blk.qs, lane, e)) * d + m;
                    }
                }
            }
            Packed::Q6K(p) => {
                assert!(r < p.rows && out.len() == p.cols);
                for (blk, o) in p.group(g).iter().zip(out.chunks_exact_mut(QK_K)) {
                    let d = f16::from_bits(blk.d[lane]).to_f32();
                    for (s, o) in o.chunks_exact_mut(16).enumerate() {
                        let dl = d * f32::from(blk.sc[s * GROUP + lane]);
                        for (e, o) in o.iter_mut().enumerate() {
                            let q = q6_code(&blk.q[s], lane, e);
                            *o = dl * f32::from(q as i8 - 32);
                        }
                    }
                }
            }
        }
    }

    /// `out[i][r] = Σ_c x[i][c] · W[r][c]` for `m` activation rows (`out` is `m × rows`).
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        match self {
            Packed::Q8_0(p) => quantize_and_run(p, x, m, out, kernels::q8_0),
            Packed::Q5_0(p) => quantize_and_run(p, x, m, out, kernels::q5_0),
            Packed::Q4_1(p) => quantize_and_run(p, x, m, out, kernels::q4_1),
            Packed::Q6K(p) => quantize_and_run(p, x, m, out, kernels::q6k),
        }
    }
}

/// Quantizes the activations to the kernel's format, then [`run`]s it over `p`.
fn quantize_and_run<W: Sync, A: Act>(p: &PackedMat<W>, x: &[f32], m: usize, out: &mut [f32], kernel: Kernel<W, A>) {
    assert_eq!(out.len(), m * p.rows, "output length");
    with_quantized::<A, _>(x, m, p.cols, |xq| run(p, xq, m, out, kernel))
}

/// Stores the 16 code bytes `qs` of a ggml Q4_1/Q5_0 block (low nibble of byte `e` is element
/// `e`, high nibble element `e + 16`) as lane `r` of the nibble planes of [`Q5_0x16`].
fn pack_nibbles(planes: &mut [u8; GROUP * QK8_0 / 2], r: usize, qs: &[u8]) {
    let mut lo = [0u8; 32];
    for e in 0..16 {
        lo[e] = qs[e] & 0x0F;
        lo[e + 16] = qs[e] >> 4;
    }
    for p in 0..4 {
        let out = &mut planes[64 * p + 4 * r..64 * p + 4 * r + 4];
        for j in 0..4 {
            out[j] = lo[8 * p + j] | lo[8 * p + 4 + j] << 4;
        }
    }
}

/// The low four bits of element `e` of row `lane` in packed nibble planes.
#[inline]
fn nibble_code(qs: &[u8; GROUP * QK8_0 / 2], lane: usize, e: usize) -> u8 {
    let step = e / 4;
    (qs[64 * (step / 2) + lane * 4 + e % 4] >> (4 * (step % 2))) & 0x0F
}

/// The 5-bit code (0..=31) of element `e` of row `lane` in a packed Q5_0 block.
#[inline]
fn q5_code(blk: &Q5_0x16, lane: usize, e: usize) -> u8 {
    let byte = lane * 4 + e % 4;
    let hi = (blk.qh[8 * (e / 4) + byte / 8] >> (byte % 8)) & 1;
    nibble_code(&blk.qs, lane, e) | hi << 4
}

/// The 6-bit code of element `4 t + j` (`e`) of row `lane` in a packed sub-block.
#[inline]
fn q6_code(q: &[u8; 192], lane: usize, e: usize) -> u8 {
    let (t, j) = (e / 4, e % 4);
    let p = |t: usize| q[t * 64 + lane * 4 + j];
    if t < 3 {
        p(t) & 63
    } else {
        (p(0) >> 6) | (p(1) >> 6) << 2 | (p(2) >> 6) << 4
    }
}

/// The 256 unsigned 6-bit codes of a ggml `block_q6_K` (ggml's `dequantize_row_q6_K` order).
fn q6k_codes(src: &[u8]) -> [u8; QK_K] {
    let (ql, qh) = (&src[..128], &src[128..192]);
    let mut codes = [0u8; QK_K];
    for n in 0..2 {
        let (ql, qh) = (&ql[64 * n..], &qh[32 * n..]);
        for l in 0..32 {
            let y = &mut codes[128 * n..];
            y[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
            y[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
            y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    codes
}

/// A tile kernel: `R` groups (given as their block slices) × `M` activation rows (slices of
/// blocks), returning 16 sums per (group, activation row).
type Kernel<W, A> = fn(&[&[W]], &[&[A]], &mut [[f32; GROUP]]);

/// Tiles of at most this many groups per pass, by activation-row count.
const fn tile_groups(m: usize) -> usize {
    if m == 1 {
        4
    } else {
        2
    }
}
/// Activation rows per tile.
const TILE_M: usize = 4;

/// Drives a tile kernel over the matrix on all threads: threads take contiguous ranges of
/// group tiles; within a range, activation rows go in chunks sized to stay in L2, and each
/// weight tile is swept by all activation tiles of a chunk while it is hot.
fn run<W: Sync, A: Sync>(p: &PackedMat<W>, xq: &[A], m: usize, out: &mut [f32], kernel: Kernel<W, A>) {
    let (n, nb) = (p.rows, p.nb);
    let act_bytes = std::mem::size_of::<A>() * nb;
    // About 192 KiB of quantized activations per chunk, whole tiles.
    let chunk = ((192 << 10) / act_bytes.max(1)).max(TILE_M) / TILE_M * TILE_M;
    let rg = tile_groups(m);
    let tiles = p.groups().div_ceil(rg);
    let out_ptr = SendPtr(out.as_mut_ptr());
    parallel_for(tiles, |range| {
        let mut sums = [[0f32; GROUP]; 4 * TILE_M];
        for i0 in (0..m).step_by(chunk) {
            let i1 = (i0 + chunk).min(m);
            for tile in range.clone() {
                let g0 = tile * rg;
                let g1 = (g0 + rg).min(p.groups());
                let groups: [&[W]; 4] = std::array::from_fn(|j| p.group((g0 + j).min(g1 - 1)));
                let groups = &groups[..g1 - g0];
                for i in (i0..i1).step_by(TILE_M) {
                    let mi = TILE_M.min(i1 - i);
                    let acts: [&[A]; TILE_M] = std::array::from_fn(|j| &xq[(i + j.min(mi - 1)) * nb..][..nb]);
                    let sums = &mut sums[..groups.len() * mi];
                    kernel(groups, &acts[..mi], sums);
                    for (gi, g) in (g0..g1).enumerate() {
                        let valid = GROUP.min(n - g * GROUP);
                        for ii in 0..mi {
                            let s = &sums[gi * mi + ii][..valid];
                            // SAFETY: rows g*16.. of output row i + ii are inside `out` (checked
                            // by the caller) and belong to this thread's tiles only.
                            unsafe {
                                let dst = out_ptr.get().add((i + ii) * n + g * GROUP);
                                std::ptr::copy_nonoverlapping(s.as_ptr(), dst, valid);
                            }
                        }
                    }
                }
            }
        }
    });
}

/// Kernel selection at compile time (the workspace builds with `target-cpu=native`): AVX-512
/// VNNI, else AVX2, else the portable scalar kernels.
mod kernels {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512vnni",
        target_feature = "f16c",
        target_feature = "fma"
    ))]
    pub(super) use super::avx512::{q4_1, q5_0, q6k, q8_0};

    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "f16c",
        target_feature = "fma",
        not(all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512vnni"))
    ))]
    pub(super) use super::avx2::{q4_1, q5_0, q6k, q8_0};

    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c", target_feature = "fma")))]
    pub(super) use super::scalar::{q4_1, q5_0, q6k, q8_0};
}

/// Portable kernels on the packed layouts: the reference the SIMD kernels are tested against.
#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c", target_feature = "fma", not(test)),
    allow(dead_code)
)]
pub(crate) mod scalar;

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512bw",
    target_feature = "avx512vnni",
    target_feature = "f16c",
    target_feature = "fma"
))]
mod avx512;

// Builds with AVX-512 VNNI use the kernels above; the tests still check these.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c", target_feature = "fma"))]
#[cfg_attr(
    all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512vnni", not(test)),
    allow(dead_code)
)]
mod avx2;

#[cfg(test)]
mod tests;
