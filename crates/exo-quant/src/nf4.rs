//! NF4, the 4-bit normal-float of QLoRA (Dettmers et al. 2023, arXiv:2305.14314): sixteen levels
//! at quantiles of a standard normal, scaled per block by the block's absolute maximum.
//!
//! Layout (exo's): blocks of 64 values, each `absmax: f16` then 32 bytes of codes, byte `j`
//! holding value `2j` in its low nibble and `2j + 1` in its high nibble (4.25 bits per weight).
//! bitsandbytes keeps the same levels and block size with an f32 absmax.

use crate::{get_f16, put_f16};

/// Values per block.
pub const BLOCK: usize = 64;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 2 + BLOCK / 2;

/// The sixteen NF4 levels (QLoRA, appendix E), in code order.
pub const LEVELS: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// The code of the level nearest `v` (the lower one on an exact tie).
fn code(v: f32) -> u8 {
    let mut best = (f32::MAX, 0u8);
    for (i, &l) in LEVELS.iter().enumerate() {
        let d = (v - l).abs();
        if d < best.0 {
            best = (d, i as u8);
        }
    }
    best.1
}

/// Packs a row into NF4 blocks.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(BLOCK).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        let absmax = put_f16(b, x.iter().fold(0f32, |m, v| m.max(v.abs())));
        let c = |v: f32| if absmax > 0.0 { code(v / absmax) } else { code(0.0) };
        for (byte, pair) in b[2..].iter_mut().zip(x.chunks_exact(2)) {
            *byte = c(pair[0]) | (c(pair[1]) << 4);
        }
    }
}

/// Unpacks NF4 blocks.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(BLOCK_BYTES).zip(dst.chunks_exact_mut(BLOCK)) {
        let absmax = get_f16(b);
        for (&byte, pair) in b[2..].iter().zip(y.chunks_exact_mut(2)) {
            pair[0] = LEVELS[usize::from(byte & 0xF)] * absmax;
            pair[1] = LEVELS[usize::from(byte >> 4)] * absmax;
        }
    }
}
