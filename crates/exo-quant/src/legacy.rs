//! ggml's 32-value block formats, packed exactly as ggml's reference quantizer packs them.
//!
//! These formats have no scale search in ggml (the scale follows from the block's extremes), so
//! matching its bytes is both possible and the strongest test: `tests/ggml_reference.rs` compares
//! ours with the `gguf` package's quantizer, which reproduces ggml's bit for bit.
//!
//! Block layouts (little-endian): Q4_0 `d: f16, qs: [u8; 16]`; Q4_1 `d, m: f16, qs: [u8; 16]`;
//! Q5_0 `d: f16, qh: [u8; 4], qs: [u8; 16]`; Q5_1 `d, m: f16, qh, qs`; Q8_0 `d: f16, qs: [i8; 32]`.
//! A nibble byte `qs[j]` holds value `j` in its low half and value `j + 16` in its high half;
//! `qh` holds the fifth bit of value `i` at bit `i`.

use crate::{get_f16, put_f16};

/// Values per block.
pub const QK: usize = 32;

/// The value of largest magnitude, with its sign (the first one on ties, as ggml picks).
fn signed_absmax(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// Packs 32 codes of `bits` (4 or 5) bits into `qs` (and `qh` for the fifth bit).
fn pack_codes(q: &[u8; QK], qs: &mut [u8], qh: Option<&mut [u8]>) {
    for j in 0..QK / 2 {
        qs[j] = (q[j] & 0xF) | (q[j + QK / 2] << 4);
    }
    if let Some(qh) = qh {
        let bits = q.iter().enumerate().fold(0u32, |acc, (i, &v)| acc | (u32::from(v >> 4) << i));
        qh[..4].copy_from_slice(&bits.to_le_bytes());
    }
}

/// The 32 codes of a block (fifth bits from `qh` when given).
fn unpack_codes(qs: &[u8], qh: Option<&[u8]>) -> [u8; QK] {
    let high = qh.map_or(0, |h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]));
    std::array::from_fn(|i| {
        let nibble = if i < QK / 2 { qs[i] & 0xF } else { qs[i - QK / 2] >> 4 };
        nibble | (((high >> i) & 1) as u8) << 4
    })
}

/// Symmetric codes: `d = max / -half` so the value of largest magnitude lands on code 0.
fn symmetric_codes(x: &[f32], half: f32, top: u8) -> (f32, [u8; QK]) {
    let d = signed_absmax(x) / -half;
    let id = inverse(d);
    // ggml truncates `x * id + (half + 0.5)` (never negative here), i.e. rounds to nearest; the
    // constant is added in one step, as ggml does, so that the f32 rounding matches.
    let offset = half + 0.5;
    (d, std::array::from_fn(|i| ((x[i] * id + offset) as u8).min(top)))
}

/// Affine codes: `d = (max - min) / top`, `x ≈ d * q + min`.
fn affine_codes(x: &[f32], top: u8) -> (f32, f32, [u8; QK]) {
    let (lo, hi) = min_max(x);
    let d = (hi - lo) / f32::from(top);
    let id = inverse(d);
    (d, lo, std::array::from_fn(|i| (((x[i] - lo) * id + 0.5) as u8).min(top)))
}

/// Packs a row into Q4_0 blocks (18 bytes per 32 values).
pub fn quantize_q4_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(18)) {
        let (d, q) = symmetric_codes(x, 8.0, 15);
        put_f16(b, d);
        pack_codes(&q, &mut b[2..], None);
    }
}

/// Packs a row into Q4_0 blocks whose scales minimise the error weighted by `w` (so not ggml's
/// bytes: ggml's reference derives the scale from the block's extremes).
pub fn quantize_q4_0_weighted(src: &[f32], w: &[f32], dst: &mut [u8]) {
    for ((x, w), b) in src.chunks_exact(QK).zip(w.chunks_exact(QK)).zip(dst.chunks_exact_mut(18)) {
        let q = weighted_symmetric_codes(x, w, 8, b);
        pack_codes(&q, &mut b[2..], None);
    }
}

/// Packs a row into Q5_0 blocks whose scales minimise the error weighted by `w`.
pub fn quantize_q5_0_weighted(src: &[f32], w: &[f32], dst: &mut [u8]) {
    for ((x, w), b) in src.chunks_exact(QK).zip(w.chunks_exact(QK)).zip(dst.chunks_exact_mut(22)) {
        let q = weighted_symmetric_codes(x, w, 16, b);
        let (qh, qs) = b[2..].split_at_mut(4);
        pack_codes(&q, qs, Some(qh));
    }
}

/// Codes `q + half` in `0..2·half` for the weighted best scale of `x`, whose f16 value is stored
/// at `b[0..2]` (the codes are rounded with the stored scale, as the dequantizer will read it).
fn weighted_symmetric_codes(x: &[f32], w: &[f32], half: i32, b: &mut [u8]) -> [u8; QK] {
    let d = put_f16(b, crate::kquants::fit::symmetric(x, w, -half, half - 1));
    let id = inverse(d);
    std::array::from_fn(|i| (crate::kquants::fit::symmetric_code(x[i], id, -half, half - 1) + half) as u8)
}

/// Packs a row into Q4_1 blocks whose scale and minimum minimise the error weighted by `w`.
pub fn quantize_q4_1_weighted(src: &[f32], w: &[f32], dst: &mut [u8]) {
    for ((x, w), b) in src.chunks_exact(QK).zip(w.chunks_exact(QK)).zip(dst.chunks_exact_mut(20)) {
        let q = weighted_affine_codes(x, w, 15, b);
        pack_codes(&q, &mut b[4..], None);
    }
}

/// Packs a row into Q5_1 blocks whose scale and minimum minimise the error weighted by `w`.
pub fn quantize_q5_1_weighted(src: &[f32], w: &[f32], dst: &mut [u8]) {
    for ((x, w), b) in src.chunks_exact(QK).zip(w.chunks_exact(QK)).zip(dst.chunks_exact_mut(24)) {
        let q = weighted_affine_codes(x, w, 31, b);
        let (qh, qs) = b[4..].split_at_mut(4);
        pack_codes(&q, qs, Some(qh));
    }
}

/// Codes in `0..=top` for `x ≈ d·q + m`, with `d` and `m` stored as f16 at `b[0..4]`: of ggml's
/// rule (the block's extremes) and the weighted least-squares fit of the k-quants (which keeps
/// `m ≤ 0`), whichever has the smaller weighted error once both are rounded to f16 as the
/// dequantizer reads them.
fn weighted_affine_codes(x: &[f32], w: &[f32], top: u8, b: &mut [u8]) -> [u8; QK] {
    let (d, lo, _) = affine_codes(x, top);
    let (scale, min) = crate::kquants::fit::affine(x, w, top);
    let stored = |v: f32| half::f16::from_f32(v).to_f32();
    let codes = |d: f32, m: f32| -> [u8; QK] { std::array::from_fn(|i| ((x[i] - m) * inverse(d)).round().clamp(0.0, f32::from(top)) as u8) };
    let error = |d: f32, m: f32| -> f32 {
        let q = codes(d, m);
        x.iter().zip(w).zip(q).map(|((&v, &w), q)| w * (v - (d * f32::from(q) + m)).powi(2)).sum()
    };
    let ((d, m), _) = [(stored(d), stored(lo)), (stored(scale), stored(-min))]
        .into_iter()
        .map(|c| (c, error(c.0, c.1)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("two candidates");
    put_f16(b, d);
    put_f16(&mut b[2..], m);
    codes(d, m)
}

/// Packs a row into Q4_1 blocks (20 bytes per 32 values).
pub fn quantize_q4_1(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(20)) {
        let (d, m, q) = affine_codes(x, 15);
        put_f16(b, d);
        put_f16(&mut b[2..], m);
        pack_codes(&q, &mut b[4..], None);
    }
}

/// Packs a row into Q5_0 blocks (22 bytes per 32 values).
pub fn quantize_q5_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(22)) {
        let (d, q) = symmetric_codes(x, 16.0, 31);
        put_f16(b, d);
        let (qh, qs) = b[2..].split_at_mut(4);
        pack_codes(&q, qs, Some(qh));
    }
}

/// Packs a row into Q5_1 blocks (24 bytes per 32 values).
pub fn quantize_q5_1(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(24)) {
        let (d, m, q) = affine_codes(x, 31);
        put_f16(b, d);
        put_f16(&mut b[2..], m);
        let (qh, qs) = b[4..].split_at_mut(4);
        pack_codes(&q, qs, Some(qh));
    }
}

/// Packs a row into Q8_0 blocks (34 bytes per 32 values).
pub fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(34)) {
        let d = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        let id = inverse(d);
        put_f16(b, d);
        for (q, &v) in b[2..].iter_mut().zip(x) {
            *q = (v * id).round() as i8 as u8;
        }
    }
}

/// Unpacks Q4_0 blocks.
pub fn dequantize_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(QK)) {
        let d = get_f16(b);
        for (o, q) in y.iter_mut().zip(unpack_codes(&b[2..], None)) {
            *o = d * (f32::from(q) - 8.0);
        }
    }
}

/// Unpacks Q4_1 blocks.
pub fn dequantize_q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(20).zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (get_f16(b), get_f16(&b[2..]));
        for (o, q) in y.iter_mut().zip(unpack_codes(&b[4..], None)) {
            *o = d * f32::from(q) + m;
        }
    }
}

/// Unpacks Q5_0 blocks.
pub fn dequantize_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(22).zip(dst.chunks_exact_mut(QK)) {
        let d = get_f16(b);
        for (o, q) in y.iter_mut().zip(unpack_codes(&b[6..], Some(&b[2..6]))) {
            *o = d * (f32::from(q) - 16.0);
        }
    }
}

/// Unpacks Q5_1 blocks.
pub fn dequantize_q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(24).zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (get_f16(b), get_f16(&b[2..]));
        for (o, q) in y.iter_mut().zip(unpack_codes(&b[8..], Some(&b[4..8]))) {
            *o = d * f32::from(q) + m;
        }
    }
}

/// Unpacks Q8_0 blocks.
pub fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(QK)) {
        let d = get_f16(b);
        for (o, &q) in y.iter_mut().zip(&b[2..]) {
            *o = d * f32::from(q as i8);
        }
    }
}
