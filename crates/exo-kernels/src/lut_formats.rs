//! Products with NF4 and FP8 E4M3 weights ([`exo_quant::nf4`], [`exo_quant::fp8`]).
//!
//! Neither format is linear in its codes, so there is no exact integer dot product as for ggml's
//! types: each weight row is decoded through a table (NF4: the sixteen levels times the block
//! scale; FP8: the 256 code values, the row scale applied once at the end) into a small f32
//! buffer on the stack and dotted with every activation row while it is in L1. Activations stay
//! f32, so the result is the dequantized matrix's product up to summation order.

use exo_quant::{fp8, nf4};

use crate::matrix::SendPtr;
use crate::ops::dot;
use crate::threads::parallel_for;

/// `out[i][r] = Σ_c x[i][c] · W[r][c]` for NF4 rows `w` (`rows` × `cols`).
pub(crate) fn matmul_nf4(w: &[u8], rows: usize, cols: usize, x: &[f32], m: usize, out: &mut [f32]) {
    let row_bytes = cols / nf4::BLOCK * nf4::BLOCK_BYTES;
    let out_ptr = SendPtr(out.as_mut_ptr());
    parallel_for(rows, |range| {
        let mut buf = [0f32; nf4::BLOCK];
        for r in range {
            let row = &w[r * row_bytes..(r + 1) * row_bytes];
            for i in 0..m {
                // SAFETY: each (i, r) is written by exactly one thread.
                unsafe { *out_ptr.get().add(i * rows + r) = 0.0 };
            }
            for (b, blk) in row.chunks_exact(nf4::BLOCK_BYTES).enumerate() {
                let scale = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                let lut = nf4::LEVELS.map(|l| l * scale);
                for (pair, &byte) in buf.chunks_exact_mut(2).zip(&blk[2..]) {
                    pair[0] = lut[usize::from(byte & 0xF)];
                    pair[1] = lut[usize::from(byte >> 4)];
                }
                let c0 = b * nf4::BLOCK;
                for i in 0..m {
                    let d = dot(&buf, &x[i * cols + c0..i * cols + c0 + nf4::BLOCK]);
                    // SAFETY: as above.
                    unsafe { *out_ptr.get().add(i * rows + r) += d };
                }
            }
        }
    });
}

/// The 256 E4M3 code values (NaN codes read as zero: exo never writes them, and a NaN weight
/// would poison every output it touches).
fn fp8_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|c| if c & 0x7F == 0x7F { 0.0 } else { fp8::decode(c as u8) }))
}

/// Columns decoded at a time for FP8 rows.
const FP8_CHUNK: usize = 256;

/// `out[i][r] = Σ_c x[i][c] · W[r][c]` for FP8 rows `w` (`rows` × `cols`, each a scale and codes).
pub(crate) fn matmul_fp8(w: &[u8], rows: usize, cols: usize, x: &[f32], m: usize, out: &mut [f32]) {
    let row_bytes = cols + 4;
    let table = fp8_table();
    let out_ptr = SendPtr(out.as_mut_ptr());
    parallel_for(rows, |range| {
        let mut buf = [0f32; FP8_CHUNK];
        for r in range {
            let row = &w[r * row_bytes..(r + 1) * row_bytes];
            let scale = f32::from_le_bytes([row[0], row[1], row[2], row[3]]);
            for i in 0..m {
                // SAFETY: each (i, r) is written by exactly one thread.
                unsafe { *out_ptr.get().add(i * rows + r) = 0.0 };
            }
            for (k, codes) in row[4..].chunks(FP8_CHUNK).enumerate() {
                let vals = &mut buf[..codes.len()];
                for (v, &c) in vals.iter_mut().zip(codes) {
                    *v = table[usize::from(c)];
                }
                let c0 = k * FP8_CHUNK;
                for i in 0..m {
                    let d = dot(vals, &x[i * cols + c0..i * cols + c0 + codes.len()]);
                    // SAFETY: as above.
                    unsafe { *out_ptr.get().add(i * rows + r) += d * scale };
                }
            }
        }
    });
}
