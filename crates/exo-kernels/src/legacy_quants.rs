//! ggml's "legacy" Q4_1, Q5_0 and Q5_1 weights: dequantization and SIMD dot products.
//!
//! candle 0.11 has vectorized kernels for Q4_0, Q8_0 and the k-quants but computes these three
//! types with scalar loops, and real GGUF files use them (SmolLM2 ships Q4_1, Qwen2.5 mixes Q5_0
//! into its Q4 files). This module provides the block types with ggml's byte layout and dot
//! products against 8-bit activations, for [`crate::Matrix`].
//!
//! All three types store a block of 32 weights as unsigned codes `q` with a per-block scale `d`
//! and offset `m` (Q5_0 is the case `m = -16 d`), so one formula serves all three:
//! `Σ (d q + m) (dₓ y) = d dₓ Σ q y + m (dₓ Σ y)`. The activations are quantized as ggml's
//! `quantize_row_q8_1` does, including the per-block `s = dₓ Σ y`, so each block's dot product
//! is one unsigned × signed 8-bit integer dot product and two multiply-adds. (ggml pairs Q5_0
//! with Q8_0 and subtracts 16 from the codes first; the `s` term gives the same sum but lets all
//! three types share the unsigned-code kernels.)
//!
//! Kernels are chosen at compile time from the target features (the workspace builds with
//! `target-cpu=native`): AVX-512 (BW + VNNI) or AVX2 + FMA + F16C on x86-64, and a portable scalar
//! path elsewhere, which is also the reference the tests compare against.

use std::cell::Cell;

use half::f16;

/// Elements per block, for every type here.
pub const QK: usize = 32;

/// A Q4_1 block: `x[j] = d * q[j] + m` with 4-bit `q` (ggml `block_q4_1`, 20 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Offset (the block minimum).
    pub m: f16,
    /// Codes: the low nibble of byte `j` is element `j`, the high nibble element `j + 16`.
    pub qs: [u8; QK / 2],
}

/// A Q5_0 block: `x[j] = d * (q[j] - 16)` with 5-bit `q` (ggml `block_q5_0`, 22 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: f16,
    /// Fifth bits: bit `j` of this little-endian `u32` is bit 4 of element `j`.
    pub qh: [u8; 4],
    /// Low four bits, packed as in [`BlockQ4_1`].
    pub qs: [u8; QK / 2],
}

/// A Q5_1 block: `x[j] = d * q[j] + m` with 5-bit `q` (ggml `block_q5_1`, 24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ5_1 {
    /// Scale.
    pub d: f16,
    /// Offset (the block minimum).
    pub m: f16,
    /// Fifth bits, as in [`BlockQ5_0`].
    pub qh: [u8; 4],
    /// Low four bits, packed as in [`BlockQ4_1`].
    pub qs: [u8; QK / 2],
}

// Weights are read in place from mapped GGUF files, so the layouts must be ggml's to the byte.
const _: () = {
    use std::mem::{align_of, size_of};
    assert!(size_of::<BlockQ4_1>() == 20 && align_of::<BlockQ4_1>() == 2);
    assert!(size_of::<BlockQ5_0>() == 22 && align_of::<BlockQ5_0>() == 2);
    assert!(size_of::<BlockQ5_1>() == 24 && align_of::<BlockQ5_1>() == 2);
};

/// 32 activations quantized as ggml's `quantize_row_q8_1` does: `x[j] ≈ d * qs[j]`.
///
/// ggml stores `d` and `s` as f16; here they are f32 so the kernels need not convert them per
/// block. `d` holds the f16-rounded value, as ggml would read it back, and `s` is computed from
/// that rounded `d` (ggml rounds `s` itself to f16, which only loses precision).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ8_1 {
    /// Scale: the block's largest magnitude / 127, rounded to f16 precision.
    pub d: f32,
    /// `d * Σ qs`, the activation sum that the weight offsets multiply.
    pub s: f32,
    /// Values in -127..=127.
    pub qs: [i8; QK],
}

impl BlockQ8_1 {
    /// Quantizes 32 values: `d = amax / 127`, `qs = round(x / d)` (ties away from zero, as C's
    /// `roundf` in ggml's reference quantizer).
    pub fn quantize(x: &[f32; QK]) -> Self {
        // Eight running maxima and ggml's `a > b ? a : b` (no NaN handling) let this vectorize.
        let max = |a: f32, b: f32| if a > b { a } else { b };
        let mut lanes = [0f32; 8];
        for c in x.chunks_exact(8) {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l = max(*l, v.abs());
            }
        }
        let amax = lanes.into_iter().fold(0f32, max);
        let d = amax / 127.0;
        // Quantize with the unrounded scale, as ggml does; only the stored scale is rounded.
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; QK];
        let mut sum = 0i32;
        for (q, v) in qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
            sum += i32::from(*q);
        }
        let d = f16::from_f32(d).to_f32();
        Self { d, s: d * sum as f32, qs }
    }
}

/// Dequantizes Q4_1 blocks into `out` (`blocks.len() * 32` values).
pub fn dequantize_row_q4_1(blocks: &[BlockQ4_1], out: &mut [f32]) {
    dequantize(blocks, out, |b, q| q as f32 * b.d.to_f32() + b.m.to_f32());
}

/// Dequantizes Q5_0 blocks into `out` (`blocks.len() * 32` values).
pub fn dequantize_row_q5_0(blocks: &[BlockQ5_0], out: &mut [f32]) {
    dequantize(blocks, out, |b, q| (i32::from(q) - 16) as f32 * b.d.to_f32());
}

/// Dequantizes Q5_1 blocks into `out` (`blocks.len() * 32` values).
pub fn dequantize_row_q5_1(blocks: &[BlockQ5_1], out: &mut [f32]) {
    dequantize(blocks, out, |b, q| q as f32 * b.d.to_f32() + b.m.to_f32());
}

fn dequantize<B: Codes>(blocks: &[B], out: &mut [f32], value: impl Fn(&B, u8) -> f32) {
    assert_eq!(out.len(), blocks.len() * QK, "dequantize: output length");
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let codes = b.codes();
        for (o, &q) in o.iter_mut().zip(&codes) {
            *o = value(b, q);
        }
    }
}

/// A weight block type that [`crate::Matrix`] multiplies with the kernels of this module.
pub trait LegacyBlock: Sized + Sync {
    /// The quantized activation block the dot products take.
    type Act: Sync;

    /// Quantizes `m` rows of `k` activations (`x.len() == m * k`, `k` a multiple of 32) and
    /// calls `f` with the `m * (k / 32)` blocks, row after row.
    ///
    /// The blocks live in a buffer kept per thread and reused, so a decode loop that calls this
    /// once per matrix allocates only while the buffer is still growing.
    fn with_quantized<R>(x: &[f32], m: usize, k: usize, f: impl FnOnce(&[Self::Act]) -> R) -> R;

    /// The dot product of one weight row with one row of quantized activations (equal lengths).
    fn dot(row: &[Self], x: &[Self::Act]) -> f32;

    /// Four weight rows against one activation row: each activation block is loaded once for
    /// four rows, which is what makes a matrix-vector product faster than four [`Self::dot`]s.
    fn dot4(rows: [&[Self]; 4], x: &[Self::Act]) -> [f32; 4];
}

macro_rules! legacy_block {
    ($t:ty) => {
        impl LegacyBlock for $t {
            type Act = BlockQ8_1;
            fn with_quantized<R>(x: &[f32], m: usize, k: usize, f: impl FnOnce(&[BlockQ8_1]) -> R) -> R {
                with_q8_1(x, m, k, f)
            }
            #[inline]
            fn dot(row: &[Self], x: &[BlockQ8_1]) -> f32 {
                dot(row, x)
            }
            #[inline]
            fn dot4(rows: [&[Self]; 4], x: &[BlockQ8_1]) -> [f32; 4] {
                dot4(rows, x)
            }
        }
    };
}
legacy_block!(BlockQ4_1);
legacy_block!(BlockQ5_0);
legacy_block!(BlockQ5_1);

fn with_q8_1<R>(x: &[f32], m: usize, k: usize, f: impl FnOnce(&[BlockQ8_1]) -> R) -> R {
    assert!(k.is_multiple_of(QK), "activation row length {k} is not a multiple of {QK}");
    assert_eq!(x.len(), m * k, "activations: expected {m} rows of {k}");
    thread_local! {
        static BUF: Cell<Vec<BlockQ8_1>> = const { Cell::new(Vec::new()) };
    }
    // Taking the buffer out (rather than borrowing a RefCell) keeps a nested call on the same
    // thread correct: it simply works on a fresh buffer.
    let mut buf = BUF.take();
    buf.clear();
    buf.extend(x.chunks_exact(QK).map(|c| BlockQ8_1::quantize(c.try_into().expect("chunk of QK"))));
    let r = f(&buf);
    BUF.set(buf);
    r
}

/// How a weight block stores its codes, for kernels generic over the three types.
pub(crate) trait Codes: Copy + Sync {
    /// Whether the codes have a fifth bit in `qh`.
    const HAS_QH: bool;
    /// Whether the offset is `-16 d` (Q5_0) rather than a stored `m`.
    const MIN_FROM_D: bool;
    /// The scale's f16 bits.
    fn d_bits(&self) -> u16;
    /// The offset's f16 bits (0 when [`Self::MIN_FROM_D`]).
    fn m_bits(&self) -> u16;
    /// The packed low four bits.
    fn qs(&self) -> &[u8; QK / 2];
    /// The fifth bits (0 without).
    fn qh(&self) -> u32;

    /// The offset as f32.
    #[inline]
    fn min(&self) -> f32 {
        if Self::MIN_FROM_D {
            -16.0 * f16::from_bits(self.d_bits()).to_f32()
        } else {
            f16::from_bits(self.m_bits()).to_f32()
        }
    }

    /// The 32 unsigned codes, in element order.
    #[inline]
    fn codes(&self) -> [u8; QK] {
        let (qs, qh) = (self.qs(), self.qh());
        // Bit tests against constant masks, rather than `qh >> j`, let this vectorize on targets
        // without per-lane shifts.
        let fifth = |j: usize| if Self::HAS_QH && qh & (1 << j) != 0 { 16 } else { 0 };
        let mut q = [0u8; QK];
        for j in 0..QK / 2 {
            q[j] = (qs[j] & 0x0F) | fifth(j);
            q[j + QK / 2] = (qs[j] >> 4) | fifth(j + QK / 2);
        }
        q
    }
}

impl Codes for BlockQ4_1 {
    const HAS_QH: bool = false;
    const MIN_FROM_D: bool = false;
    #[inline(always)]
    fn d_bits(&self) -> u16 {
        self.d.to_bits()
    }
    #[inline(always)]
    fn m_bits(&self) -> u16 {
        self.m.to_bits()
    }
    #[inline(always)]
    fn qs(&self) -> &[u8; QK / 2] {
        &self.qs
    }
    #[inline(always)]
    fn qh(&self) -> u32 {
        0
    }
}

impl Codes for BlockQ5_0 {
    const HAS_QH: bool = true;
    const MIN_FROM_D: bool = true;
    #[inline(always)]
    fn d_bits(&self) -> u16 {
        self.d.to_bits()
    }
    #[inline(always)]
    fn m_bits(&self) -> u16 {
        0
    }
    #[inline(always)]
    fn qs(&self) -> &[u8; QK / 2] {
        &self.qs
    }
    #[inline(always)]
    fn qh(&self) -> u32 {
        u32::from_le_bytes(self.qh)
    }
}

impl Codes for BlockQ5_1 {
    const HAS_QH: bool = true;
    const MIN_FROM_D: bool = false;
    #[inline(always)]
    fn d_bits(&self) -> u16 {
        self.d.to_bits()
    }
    #[inline(always)]
    fn m_bits(&self) -> u16 {
        self.m.to_bits()
    }
    #[inline(always)]
    fn qs(&self) -> &[u8; QK / 2] {
        &self.qs
    }
    #[inline(always)]
    fn qh(&self) -> u32 {
        u32::from_le_bytes(self.qh)
    }
}

/// The portable dot product: also the reference for the SIMD kernels' tests.
#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c", not(test)),
    allow(dead_code)
)]
pub(crate) fn dot_scalar<B: Codes>(row: &[B], x: &[BlockQ8_1]) -> f32 {
    assert_eq!(row.len(), x.len(), "dot: weight and activation blocks differ in number");
    let mut acc = 0f32;
    for (b, y) in row.iter().zip(x) {
        let codes = b.codes();
        let sumi: i32 = codes.iter().zip(&y.qs).map(|(&q, &v)| i32::from(q) * i32::from(v)).sum();
        let d = f16::from_bits(b.d_bits()).to_f32();
        acc += d * y.d * sumi as f32 + b.min() * y.s;
    }
    acc
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
pub(crate) mod x86;

#[inline]
fn dot<B: Codes>(row: &[B], x: &[BlockQ8_1]) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    {
        x86::dot(row, x)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c")))]
    {
        dot_scalar(row, x)
    }
}

#[inline]
fn dot4<B: Codes>(rows: [&[B]; 4], x: &[BlockQ8_1]) -> [f32; 4] {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    {
        x86::dot4(rows, x)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c")))]
    {
        rows.map(|r| dot_scalar(r, x))
    }
}

#[cfg(test)]
mod tests;
