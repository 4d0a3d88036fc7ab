//! ggml's k-quants: 256-value super-blocks of sub-blocks that each have their own scale.
//!
//! The layouts are ggml's (`tests/ggml_reference.rs` checks that the `gguf` package's dequantizer
//! reads our bytes as we do). The quantizer is exo's own. For every sub-block it searches the
//! codes over a grid of candidate scales and fits scale and offset to those codes by least
//! squares, then refines by re-coding with the fitted pair ([`crate::kquants::fit`]). The 6- or
//! 8-bit sub-block scales are then quantized against the super-block scale, and each sub-block
//! tries its neighbouring quantized scales, keeping the pair with the smallest squared error.
//! ggml's reference quantizer minimises a magnitude-weighted error instead and does not revisit
//! the quantized scales; ours gives a lower plain RMSE (measured in the reference test).
//!
//! Every value comes with a weight (`w`, as long as the row): the search minimises the weighted
//! squared error. Ones give the plain error; a column's mean squared activation
//! ([`crate::quantize_weighted`]) gives the error of the matrix's outputs.
//!
//! Layouts (little-endian), per 256 values:
//! - Q4_K (144 bytes): `d, dmin: f16`, 12 bytes of eight 6-bit scales and mins, `qs: [u8; 128]`;
//!   value = `d·sc·q − dmin·m` with `q` in 0..=15.
//! - Q5_K (176 bytes): as Q4_K with `qh: [u8; 32]` (the fifth bits) before `qs`; `q` in 0..=31.
//! - Q3_K (110 bytes): `hmask: [u8; 32]` (third bits), `qs: [u8; 64]` (low two bits), 12 bytes of
//!   sixteen 6-bit scales, `d: f16`; value = `d·(sc − 32)·(q − 4)` with `q` in 0..=7, sixteen
//!   sub-blocks of 16.
//! - Q6_K (210 bytes): `ql: [u8; 128]`, `qh: [u8; 64]`, `scales: [i8; 16]`, `d: f16`; value =
//!   `d·sc·(q − 32)` with `q` in 0..=63, sixteen sub-blocks of 16.

pub(crate) mod fit;

use crate::{get_f16, put_f16};

/// Values per super-block.
pub const QK_K: usize = 256;

/// Codes, scale indices and super-block scales of an affine (Q4_K/Q5_K) super-block.
struct AffineBlock {
    d: f32,
    dmin: f32,
    sc: [u8; 8],
    mc: [u8; 8],
    q: [u8; QK_K],
}

/// Quantizes one super-block to codes in `0..=top` with 6-bit scales and mins.
fn affine_block(x: &[f32], w: &[f32], top: u8) -> AffineBlock {
    let fits: [(f32, f32); 8] = std::array::from_fn(|j| fit::affine(&x[32 * j..32 * (j + 1)], &w[32 * j..32 * (j + 1)], top));
    let max_s = fits.iter().fold(0f32, |m, f| m.max(f.0));
    let max_m = fits.iter().fold(0f32, |m, f| m.max(f.1));
    let mut b = AffineBlock { d: 0.0, dmin: 0.0, sc: [0; 8], mc: [0; 8], q: [0; QK_K] };
    let mut scratch = [0u8; 2];
    b.d = put_f16(&mut scratch, max_s / 63.0);
    b.dmin = put_f16(&mut scratch, max_m / 63.0);
    let index = |v: f32, unit: f32| if unit > 0.0 { (v / unit).round().clamp(0.0, 63.0) as i32 } else { 0 };
    for j in 0..8 {
        let (xs, ws) = (&x[32 * j..32 * (j + 1)], &w[32 * j..32 * (j + 1)]);
        let (s0, m0) = (index(fits[j].0, b.d), index(fits[j].1, b.dmin));
        let mut best = (f32::MAX, 0u8, 0u8);
        for s in (s0 - 1).max(0)..=(s0 + 1).min(63) {
            for m in (m0 - 1).max(0)..=(m0 + 1).min(63) {
                let (scale, min) = (b.d * s as f32, b.dmin * m as f32);
                let err = fit::affine_error(xs, ws, scale, min, top);
                if err < best.0 {
                    best = (err, s as u8, m as u8);
                }
            }
        }
        b.sc[j] = best.1;
        b.mc[j] = best.2;
        let (scale, min) = (b.d * f32::from(best.1), b.dmin * f32::from(best.2));
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (q, &v) in b.q[32 * j..32 * (j + 1)].iter_mut().zip(xs) {
            *q = fit::affine_code(v, inv, min, top);
        }
    }
    b
}

/// Writes `d`, `dmin` and the 12 bytes of packed 6-bit scales and mins.
fn put_affine_header(dst: &mut [u8], b: &AffineBlock) {
    put_f16(dst, b.d);
    put_f16(&mut dst[2..], b.dmin);
    let s = &mut dst[4..16];
    for j in 0..4 {
        // Sub-blocks 4..8 keep their low four bits in bytes 8..12 and their top two bits in the
        // spare top bits of sub-blocks 0..4's bytes.
        s[j] = b.sc[j] | ((b.sc[j + 4] >> 4) << 6);
        s[j + 4] = b.mc[j] | ((b.mc[j + 4] >> 4) << 6);
        s[j + 8] = (b.sc[j + 4] & 0xF) | ((b.mc[j + 4] & 0xF) << 4);
    }
}

/// The effective scale and min of every sub-block from a Q4_K/Q5_K header.
fn affine_scales(h: &[u8]) -> [(f32, f32); 8] {
    let (d, dmin) = (get_f16(h), get_f16(&h[2..]));
    let s = &h[4..16];
    std::array::from_fn(|j| {
        let (sc, m) = if j < 4 {
            (s[j] & 63, s[j + 4] & 63)
        } else {
            ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
        };
        (d * f32::from(sc), dmin * f32::from(m))
    })
}

/// Packs a row into Q4_K super-blocks, minimising the error weighted by `w`.
pub fn quantize_q4_k(src: &[f32], w: &[f32], dst: &mut [u8]) {
    for ((x, w), out) in src.chunks_exact(QK_K).zip(w.chunks_exact(QK_K)).zip(dst.chunks_exact_mut(144)) {
        let b = affine_block(x, w, 15);
        put_affine_header(out, &b);
        let qs = &mut out[16..];
        for c in 0..4 {
            for l in 0..32 {
                qs[32 * c + l] = b.q[64 * c + l] | (b.q[64 * c + 32 + l] << 4);
            }
        }
    }
}

/// Packs a row into Q5_K super-blocks, minimising the error weighted by `w`.
pub fn quantize_q5_k(src: &[f32], w: &[f32], dst: &mut [u8]) {
    for ((x, w), out) in src.chunks_exact(QK_K).zip(w.chunks_exact(QK_K)).zip(dst.chunks_exact_mut(176)) {
        let b = affine_block(x, w, 31);
        put_affine_header(out, &b);
        let (qh, qs) = out[16..].split_at_mut(32);
        qh.fill(0);
        for c in 0..4 {
            for l in 0..32 {
                let (lo, hi) = (b.q[64 * c + l], b.q[64 * c + 32 + l]);
                qs[32 * c + l] = (lo & 0xF) | ((hi & 0xF) << 4);
                qh[l] |= ((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1));
            }
        }
    }
}

/// Packs a row into Q6_K super-blocks, minimising the error weighted by `w`.
pub fn quantize_q6_k(src: &[f32], w: &[f32], dst: &mut [u8]) {
    for ((x, w), out) in src.chunks_exact(QK_K).zip(w.chunks_exact(QK_K)).zip(dst.chunks_exact_mut(210)) {
        let fits: [f32; 16] = std::array::from_fn(|j| fit::symmetric(&x[16 * j..16 * (j + 1)], &w[16 * j..16 * (j + 1)], -32, 31));
        let max = fits.iter().fold(0f32, |m, s| m.max(s.abs()));
        let d = put_f16(&mut out[208..], max / 127.0);
        let mut u = [0u8; QK_K];
        for j in 0..16 {
            let (xs, ws) = (&x[16 * j..16 * (j + 1)], &w[16 * j..16 * (j + 1)]);
            let s0 = if d > 0.0 { (fits[j] / d).round().clamp(-127.0, 127.0) as i32 } else { 0 };
            let mut best = (f32::MAX, 0i32);
            for s in (s0 - 1).max(-127)..=(s0 + 1).min(127) {
                let err = fit::symmetric_error(xs, ws, d * s as f32, -32, 31);
                if err < best.0 {
                    best = (err, s);
                }
            }
            out[192 + j] = best.1 as i8 as u8;
            let scale = d * best.1 as f32;
            let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            for (q, &v) in u[16 * j..16 * (j + 1)].iter_mut().zip(xs) {
                *q = (fit::symmetric_code(v, inv, -32, 31) + 32) as u8;
            }
        }
        let (ql, qh) = out[..192].split_at_mut(128);
        for n in 0..2 {
            for l in 0..32 {
                let [u0, u1, u2, u3] = [0, 32, 64, 96].map(|o| u[128 * n + l + o]);
                ql[64 * n + l] = (u0 & 0xF) | ((u2 & 0xF) << 4);
                ql[64 * n + l + 32] = (u1 & 0xF) | ((u3 & 0xF) << 4);
                qh[32 * n + l] = (u0 >> 4) | ((u1 >> 4) << 2) | ((u2 >> 4) << 4) | ((u3 >> 4) << 6);
            }
        }
    }
}

/// Packs a row into Q3_K super-blocks, minimising the error weighted by `w`.
pub fn quantize_q3_k(src: &[f32], w: &[f32], dst: &mut [u8]) {
    for ((x, w), out) in src.chunks_exact(QK_K).zip(w.chunks_exact(QK_K)).zip(dst.chunks_exact_mut(110)) {
        let fits: [f32; 16] = std::array::from_fn(|j| fit::symmetric(&x[16 * j..16 * (j + 1)], &w[16 * j..16 * (j + 1)], -4, 3));
        let max = fits.iter().fold(0f32, |m, s| m.max(s.abs()));
        let d = put_f16(&mut out[108..], max / 31.0);
        let mut sc = [0u8; 16];
        let mut u = [0u8; QK_K];
        for j in 0..16 {
            let (xs, ws) = (&x[16 * j..16 * (j + 1)], &w[16 * j..16 * (j + 1)]);
            let s0 = if d > 0.0 { (fits[j] / d).round().clamp(-32.0, 31.0) as i32 } else { 0 };
            let mut best = (f32::MAX, 0i32);
            for s in (s0 - 1).max(-32)..=(s0 + 1).min(31) {
                let err = fit::symmetric_error(xs, ws, d * s as f32, -4, 3);
                if err < best.0 {
                    best = (err, s);
                }
            }
            sc[j] = (best.1 + 32) as u8;
            let scale = d * best.1 as f32;
            let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            for (q, &v) in u[16 * j..16 * (j + 1)].iter_mut().zip(xs) {
                *q = (fit::symmetric_code(v, inv, -4, 3) + 4) as u8;
            }
        }
        let (hmask, rest) = out.split_at_mut(32);
        let (qs, scales) = rest.split_at_mut(64);
        // Scale k keeps its low four bits in byte k (k < 8) or the top half of byte k − 8, and its
        // top two bits in byte 8 + k % 4 at bit 2·(k / 4).
        scales[..12].fill(0);
        for (k, &v) in sc.iter().enumerate() {
            scales[k % 8] |= (v & 0xF) << (4 * (k / 8));
            scales[8 + k % 4] |= (v >> 4) << (2 * (k / 4));
        }
        hmask.fill(0);
        qs.fill(0);
        for (i, &q) in u.iter().enumerate() {
            let (n, j, l) = (i / 128, (i % 128) / 32, i % 32);
            qs[32 * n + l] |= (q & 3) << (2 * j);
            hmask[l] |= (q >> 2) << (4 * n + j);
        }
    }
}

/// Unpacks Q3_K super-blocks.
pub fn dequantize_q3_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(110).zip(dst.chunks_exact_mut(QK_K)) {
        let (hmask, qs, scales) = (&b[..32], &b[32..96], &b[96..108]);
        let d = get_f16(&b[108..]);
        let sc: [f32; 16] = std::array::from_fn(|k| {
            let v = ((scales[k % 8] >> (4 * (k / 8))) & 0xF) | (((scales[8 + k % 4] >> (2 * (k / 4))) & 3) << 4);
            d * (f32::from(v) - 32.0)
        });
        for (i, o) in y.iter_mut().enumerate() {
            let (n, j, l) = (i / 128, (i % 128) / 32, i % 32);
            let q = ((qs[32 * n + l] >> (2 * j)) & 3) | (((hmask[l] >> (4 * n + j)) & 1) << 2);
            *o = sc[i / 16] * (f32::from(q) - 4.0);
        }
    }
}

/// Unpacks Q4_K super-blocks.
pub fn dequantize_q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(144).zip(dst.chunks_exact_mut(QK_K)) {
        let sm = affine_scales(b);
        let qs = &b[16..];
        for (i, o) in y.iter_mut().enumerate() {
            let (c, l, high) = (i / 64, i % 32, (i / 32) % 2 == 1);
            let byte = qs[32 * c + l];
            let q = if high { byte >> 4 } else { byte & 0xF };
            let (scale, min) = sm[i / 32];
            *o = scale * f32::from(q) - min;
        }
    }
}

/// Unpacks Q5_K super-blocks.
pub fn dequantize_q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(176).zip(dst.chunks_exact_mut(QK_K)) {
        let sm = affine_scales(b);
        let (qh, qs) = (&b[16..48], &b[48..]);
        for (i, o) in y.iter_mut().enumerate() {
            let (c, l, sub) = (i / 64, i % 32, i / 32);
            let byte = qs[32 * c + l];
            let low = if sub % 2 == 1 { byte >> 4 } else { byte & 0xF };
            let q = low | (((qh[l] >> sub) & 1) << 4);
            let (scale, min) = sm[sub];
            *o = scale * f32::from(q) - min;
        }
    }
}

/// Unpacks Q6_K super-blocks.
pub fn dequantize_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(210).zip(dst.chunks_exact_mut(QK_K)) {
        let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
        let d = get_f16(&b[208..]);
        for (i, o) in y.iter_mut().enumerate() {
            let (n, r) = (i / 128, i % 128);
            let (part, l) = (r / 32, r % 32);
            let byte = ql[64 * n + l + 32 * (part % 2)];
            let low = if part >= 2 { byte >> 4 } else { byte & 0xF };
            let q = low | (((qh[32 * n + l] >> (2 * part)) & 3) << 4);
            *o = d * f32::from(sc[i / 16] as i8) * (f32::from(q) - 32.0);
        }
    }
}
