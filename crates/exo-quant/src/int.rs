//! Symmetric integer formats with one f16 scale per group of 128 values along the row (the group
//! size GPTQ and AWQ checkpoints commonly use).
//!
//! - INT8: `scale = absmax / 127`, `q = round(x / scale)` in −127..=127 (LLM.int8()'s absmax
//!   rule; −128 is left unused, as in ggml's Q8_0). Group layout: `scale: f16`, `q: [i8; 128]`.
//! - INT4: `scale = 2·absmax / 15`, `q = round(x / scale)` clamped to −8..=7 (GPTQ's symmetric
//!   grid: zero point 8 of 0..=15). Group layout: `scale: f16`, 64 bytes, byte `j` holding
//!   `q[2j] + 8` in its low nibble and `q[2j + 1] + 8` in its high nibble.
//!
//! Rounding is to nearest, halves away from zero, dividing by the scale after its rounding to
//! f16, so that dequantization sees the same scale the codes were chosen for.

use crate::{get_f16, put_f16};

/// Values per group.
pub const GROUP: usize = 128;
/// Bytes per INT8 group.
pub const INT8_GROUP_BYTES: usize = 2 + GROUP;
/// Bytes per INT4 group.
pub const INT4_GROUP_BYTES: usize = 2 + GROUP / 2;

fn absmax(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

fn code(v: f32, scale: f32, lo: f32, hi: f32) -> i8 {
    if scale > 0.0 {
        (v / scale).round().clamp(lo, hi) as i8
    } else {
        0
    }
}

/// Packs a row into INT8 groups.
pub fn quantize_int8(src: &[f32], dst: &mut [u8]) {
    for (x, g) in src.chunks_exact(GROUP).zip(dst.chunks_exact_mut(INT8_GROUP_BYTES)) {
        let scale = put_f16(g, absmax(x) / 127.0);
        for (q, &v) in g[2..].iter_mut().zip(x) {
            *q = code(v, scale, -127.0, 127.0) as u8;
        }
    }
}

/// Packs a row into INT4 groups.
pub fn quantize_int4(src: &[f32], dst: &mut [u8]) {
    for (x, g) in src.chunks_exact(GROUP).zip(dst.chunks_exact_mut(INT4_GROUP_BYTES)) {
        let scale = put_f16(g, 2.0 * absmax(x) / 15.0);
        for (byte, pair) in g[2..].iter_mut().zip(x.chunks_exact(2)) {
            let [lo, hi] = [pair[0], pair[1]].map(|v| (code(v, scale, -8.0, 7.0) + 8) as u8);
            *byte = lo | (hi << 4);
        }
    }
}

/// Unpacks INT8 groups.
pub fn dequantize_int8(src: &[u8], dst: &mut [f32]) {
    for (g, y) in src.chunks_exact(INT8_GROUP_BYTES).zip(dst.chunks_exact_mut(GROUP)) {
        let scale = get_f16(g);
        for (o, &q) in y.iter_mut().zip(&g[2..]) {
            *o = scale * f32::from(q as i8);
        }
    }
}

/// Unpacks INT4 groups.
pub fn dequantize_int4(src: &[u8], dst: &mut [f32]) {
    for (g, y) in src.chunks_exact(INT4_GROUP_BYTES).zip(dst.chunks_exact_mut(GROUP)) {
        let scale = get_f16(g);
        for (&byte, pair) in g[2..].iter().zip(y.chunks_exact_mut(2)) {
            pair[0] = scale * (f32::from(byte & 0xF) - 8.0);
            pair[1] = scale * (f32::from(byte >> 4) - 8.0);
        }
    }
}

/// INT8 rows rewritten as Q8_0 blocks holding the same values: each group's f16 scale is
/// repeated over its four 32-value blocks and the codes are copied, so every weight dequantizes
/// to the same f32 and ggml's Q8_0 kernels compute INT8 exactly (at 8.5 instead of 8.125 bits
/// per weight in memory).
pub fn int8_to_q8_0(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() / INT8_GROUP_BYTES * 4 * 34);
    for g in src.chunks_exact(INT8_GROUP_BYTES) {
        for q in g[2..].chunks_exact(32) {
            out.extend_from_slice(&g[..2]);
            out.extend_from_slice(q);
        }
    }
    out
}

/// INT4 rows rewritten as Q4_1 blocks holding the same values (`d·q + m` with `m = −8d`: the
/// nibble is `q + 8`, and `8d` is exact in f16), or `None` when some `8d` overflows f16.
///
/// Every weight dequantizes to the same f32 (`d·n − 8d` and `d·(n − 8)` are both exact in f32 for
/// an f16 `d` and `n` < 16), so the packed Q4_1 kernels compute INT4 exactly.
pub fn int4_to_q4_1(src: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(src.len() / INT4_GROUP_BYTES * 4 * 20);
    for g in src.chunks_exact(INT4_GROUP_BYTES) {
        let d = half::f16::from_le_bytes([g[0], g[1]]);
        let m = half::f16::from_f32(-8.0 * d.to_f32());
        if !m.is_finite() {
            return None;
        }
        // Group bytes hold consecutive pairs; a Q4_1 byte holds values j and j + 16 of its block.
        let nibble = |i: usize| (g[2 + i / 2] >> (4 * (i % 2))) & 0xF;
        for b in 0..4 {
            out.extend_from_slice(&d.to_le_bytes());
            out.extend_from_slice(&m.to_le_bytes());
            out.extend((0..16).map(|j| nibble(32 * b + j) | (nibble(32 * b + j + 16) << 4)));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{dequantize, legacy, QuantFormat};

    #[test]
    fn ggml_repacks_hold_the_same_values() {
        let x: Vec<f32> = (0..512).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        let mut i8q = vec![0u8; 4 * INT8_GROUP_BYTES];
        quantize_int8(&x, &mut i8q);
        let mut q8 = vec![0f32; 512];
        legacy::dequantize_q8_0(&int8_to_q8_0(&i8q), &mut q8);
        assert_eq!(q8, dequantize(QuantFormat::Int8, &i8q, 512).unwrap());

        let mut i4q = vec![0u8; 4 * INT4_GROUP_BYTES];
        quantize_int4(&x, &mut i4q);
        let mut q41 = vec![0f32; 512];
        legacy::dequantize_q4_1(&int4_to_q4_1(&i4q).unwrap(), &mut q41);
        let want = dequantize(QuantFormat::Int4, &i4q, 512).unwrap();
        assert!(want.iter().any(|&v| v != 0.0));
        assert_eq!(q41, want);
    }
}
