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
