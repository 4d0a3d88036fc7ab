//! Per-block scale search for the k-quants and the weighted legacy quantizers.
//!
//! A block of values `x` is coded as `scale·q − min` (affine, codes `0..=top`, `min ≥ 0` as
//! the formats store it unsigned) or `scale·q` (symmetric, codes `lo..=hi`). Every value has a
//! weight `w` (1 for the plain squared error; a column's importance for an importance-weighted
//! quantization), and the search minimises `Σ w·(x − x̂)²`. For a fixed set of codes the best scale
//! (and min) is a weighted least-squares fit; the codes for a given scale are found by rounding.
//! The search tries the codes of a grid of scales around the range-filling one, fits each, and
//! refines the best by re-coding until the error stops falling.

/// Half-width of the grid of candidate steps, and the step between candidates, in code units:
/// the candidates map the block's range onto `top − 1 ..= top + 1` codes.
const STEPS: i32 = 10;
const STEP: f32 = 0.1;
/// Re-code-and-refit rounds after the grid.
const REFINE: usize = 3;

/// `1 / scale`, or 0 for a zero scale (every value then takes the code nearest zero).
fn inverse(scale: f32) -> f32 {
    if scale != 0.0 {
        1.0 / scale
    } else {
        0.0
    }
}

/// The code of `v` for an affine block, given `1 / scale`.
pub(crate) fn affine_code(v: f32, inv_scale: f32, min: f32, top: u8) -> u8 {
    ((v + min) * inv_scale).round().clamp(0.0, f32::from(top)) as u8
}

/// Weighted squared error of coding `x` with `scale` and `min` (computed as the dequantizer
/// does).
pub(crate) fn affine_error(x: &[f32], w: &[f32], scale: f32, min: f32, top: u8) -> f32 {
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    x.iter()
        .zip(w)
        .map(|(&v, &w)| {
            let e = scale * f32::from(affine_code(v, inv, min, top)) - min - v;
            w * e * e
        })
        .sum()
}

/// Weighted least-squares `(scale, min)` for codes `q`, with the offset held at or below zero.
fn affine_lsq(x: &[f32], w: &[f32], q: &[u8]) -> Option<(f32, f32)> {
    let (mut sw, mut sq, mut sqq, mut sx, mut sqx) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for ((&v, &c), &w) in x.iter().zip(q).zip(w) {
        let (v, c, w) = (f64::from(v), f64::from(c), f64::from(w));
        sw += w;
        sq += w * c;
        sqq += w * c * c;
        sx += w * v;
        sqx += w * c * v;
    }
    let det = sw * sqq - sq * sq;
    if det <= 0.0 {
        return None;
    }
    let scale = (sw * sqx - sq * sx) / det;
    let offset = (sx - scale * sq) / sw;
    let (scale, offset) = if offset > 0.0 { (sqx / sqq, 0.0) } else { (scale, offset) };
    (scale > 0.0).then_some((scale as f32, -offset as f32))
}

/// The `(scale, min)` of an affine block with codes in `0..=top` (at most 32 values).
pub(crate) fn affine(x: &[f32], w: &[f32], top: u8) -> (f32, f32) {
    let lo = x.iter().fold(0f32, |m, &v| m.min(v));
    let hi = x.iter().fold(f32::MIN, |m, &v| m.max(v));
    if hi <= lo {
        // Constant and not positive: the min alone represents it.
        return (0.0, -lo);
    }
    let mut best = (affine_error(x, w, 0.0, -lo, top), 0.0, -lo);
    let mut q = [0u8; 32];
    let q = &mut q[..x.len()];
    let consider = |q: &[u8], best: &mut (f32, f32, f32)| {
        if let Some((s, m)) = affine_lsq(x, w, q) {
            let err = affine_error(x, w, s, m, top);
            if err < best.0 {
                *best = (err, s, m);
                return true;
            }
        }
        false
    };
    for k in -STEPS..=STEPS {
        let inv = (f32::from(top) + STEP * k as f32) / (hi - lo);
        for (c, &v) in q.iter_mut().zip(x) {
            *c = affine_code(v, inv, -lo, top);
        }
        consider(q, &mut best);
    }
    for _ in 0..REFINE {
        let inv = inverse(best.1);
        for (c, &v) in q.iter_mut().zip(x) {
            *c = affine_code(v, inv, best.2, top);
        }
        if !consider(q, &mut best) {
            break;
        }
    }
    (best.1, best.2)
}

/// The code of `v` for a symmetric block with codes in `lo..=hi`, given `1 / scale`.
pub(crate) fn symmetric_code(v: f32, inv_scale: f32, lo: i32, hi: i32) -> i32 {
    (v * inv_scale).round().clamp(lo as f32, hi as f32) as i32
}

/// Weighted squared error of coding `x` with `scale` and codes in `lo..=hi` (computed as the
/// dequantizer does).
pub(crate) fn symmetric_error(x: &[f32], w: &[f32], scale: f32, lo: i32, hi: i32) -> f32 {
    let inv = inverse(scale);
    x.iter()
        .zip(w)
        .map(|(&v, &w)| {
            let e = scale * symmetric_code(v, inv, lo, hi) as f32 - v;
            w * e * e
        })
        .sum()
}

/// The signed scale of a symmetric block with codes in `lo..=hi` (`lo < 0 < hi`).
///
/// The code range is lopsided, so the value of largest magnitude is tried both on the `lo` side
/// (a scale of the opposite sign) and on the `hi` side.
pub(crate) fn symmetric(x: &[f32], w: &[f32], lo: i32, hi: i32) -> f32 {
    let v = x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if v == 0.0 {
        return 0.0;
    }
    let lsq = |scale: f32| -> Option<f32> {
        let inv = inverse(scale);
        let (mut sqq, mut sqx) = (0f64, 0f64);
        for (&xv, &w) in x.iter().zip(w) {
            let c = f64::from(symmetric_code(xv, inv, lo, hi));
            sqq += f64::from(w) * c * c;
            sqx += f64::from(w) * c * f64::from(xv);
        }
        (sqq > 0.0).then(|| (sqx / sqq) as f32)
    };
    let mut best = (f32::MAX, 0f32);
    for k in -STEPS..=STEPS {
        for codes in [lo as f32, hi as f32] {
            let scale = v / (codes + STEP * k as f32 * f32::signum(codes));
            if let Some(s) = lsq(scale) {
                let err = symmetric_error(x, w, s, lo, hi);
                if err < best.0 {
                    best = (err, s);
                }
            }
        }
    }
    for _ in 0..REFINE {
        match lsq(best.1) {
            Some(s) if symmetric_error(x, w, s, lo, hi) < best.0 => best = (symmetric_error(x, w, s, lo, hi), s),
            _ => break,
        }
    }
    best.1
}
