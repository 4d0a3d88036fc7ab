//! Per-sub-block scale search for the k-quants.
//!
//! A sub-block of values `x` is coded as `scale·q − min` (affine, codes `0..=top`, `min ≥ 0` as
//! the formats store it unsigned) or `scale·q` (symmetric, codes `-32..=31`). For a fixed set of
//! codes the best scale (and min) is a least-squares fit; the codes for a given scale are found by
//! rounding. The search tries the codes of a grid of scales around the range-filling one, fits
//! each, and refines the best by re-coding until the error stops falling.

/// Half-width of the grid of candidate steps, and the step between candidates, in code units:
/// the candidates map the block's range onto `top − 1 ..= top + 1` codes.
const STEPS: i32 = 10;
const STEP: f32 = 0.1;
/// Re-code-and-refit rounds after the grid.
const REFINE: usize = 3;

/// The code of `v` for an affine sub-block.
pub(super) fn affine_code(v: f32, scale: f32, min: f32, top: u8) -> u8 {
    if scale > 0.0 {
        ((v + min) / scale).round().clamp(0.0, f32::from(top)) as u8
    } else {
        0
    }
}

/// Squared error of coding `x` with `scale` and `min` (computed as the dequantizer does).
pub(super) fn affine_error(x: &[f32], scale: f32, min: f32, top: u8) -> f32 {
    x.iter()
        .map(|&v| {
            let e = scale * f32::from(affine_code(v, scale, min, top)) - min - v;
            e * e
        })
        .sum()
}

/// Least-squares `(scale, min)` for codes `q`, with the offset held at or below zero.
fn affine_lsq(x: &[f32], q: &[u8]) -> Option<(f32, f32)> {
    let n = x.len() as f64;
    let (mut sq, mut sqq, mut sx, mut sqx) = (0f64, 0f64, 0f64, 0f64);
    for (&v, &c) in x.iter().zip(q) {
        let (v, c) = (f64::from(v), f64::from(c));
        sq += c;
        sqq += c * c;
        sx += v;
        sqx += c * v;
    }
    let det = n * sqq - sq * sq;
    if det <= 0.0 {
        return None;
    }
    let scale = (n * sqx - sq * sx) / det;
    let offset = (sx - scale * sq) / n;
    let (scale, offset) = if offset > 0.0 { (sqx / sqq, 0.0) } else { (scale, offset) };
    (scale > 0.0).then_some((scale as f32, -offset as f32))
}

/// The `(scale, min)` of an affine sub-block with codes in `0..=top`.
pub(super) fn affine(x: &[f32], top: u8) -> (f32, f32) {
    let lo = x.iter().fold(0f32, |m, &v| m.min(v));
    let hi = x.iter().fold(f32::MIN, |m, &v| m.max(v));
    if hi <= lo {
        // Constant and not positive: the min alone represents it.
        return (0.0, -lo);
    }
    let mut best = (affine_error(x, 0.0, -lo, top), 0.0, -lo);
    let mut q = [0u8; 32];
    let q = &mut q[..x.len()];
    let consider = |q: &[u8], best: &mut (f32, f32, f32)| {
        if let Some((s, m)) = affine_lsq(x, q) {
            let err = affine_error(x, s, m, top);
            if err < best.0 {
                *best = (err, s, m);
                return true;
            }
        }
        false
    };
    for k in -STEPS..=STEPS {
        let scale = (hi - lo) / (f32::from(top) + STEP * k as f32);
        for (c, &v) in q.iter_mut().zip(x) {
            *c = affine_code(v, scale, -lo, top);
        }
        consider(q, &mut best);
    }
    for _ in 0..REFINE {
        for (c, &v) in q.iter_mut().zip(x) {
            *c = affine_code(v, best.1, best.2, top);
        }
        if !consider(q, &mut best) {
            break;
        }
    }
    (best.1, best.2)
}

/// The code of `v` for a symmetric sub-block, in `-32..=31`.
pub(super) fn symmetric_code(v: f32, scale: f32) -> i32 {
    if scale != 0.0 {
        (v / scale).round().clamp(-32.0, 31.0) as i32
    } else {
        0
    }
}

/// Squared error of coding `x` with `scale` (computed as the dequantizer does).
pub(super) fn symmetric_error(x: &[f32], scale: f32) -> f32 {
    x.iter()
        .map(|&v| {
            let e = scale * symmetric_code(v, scale) as f32 - v;
            e * e
        })
        .sum()
}

/// The signed scale of a symmetric sub-block with codes in `-32..=31`.
///
/// The code range is lopsided, so the value of largest magnitude is tried both on the −32 side
/// (a scale of the opposite sign) and on the +31 side.
pub(super) fn symmetric(x: &[f32]) -> f32 {
    let v = x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if v == 0.0 {
        return 0.0;
    }
    let lsq = |scale: f32| -> Option<f32> {
        let (mut sqq, mut sqx) = (0f64, 0f64);
        for &xv in x {
            let c = f64::from(symmetric_code(xv, scale));
            sqq += c * c;
            sqx += c * f64::from(xv);
        }
        (sqq > 0.0).then(|| (sqx / sqq) as f32)
    };
    let mut best = (f32::MAX, 0f32);
    for k in -STEPS..=STEPS {
        for codes in [-32.0, 31.0] {
            let scale = v / (codes + STEP * k as f32 * f32::signum(codes));
            if let Some(s) = lsq(scale) {
                let err = symmetric_error(x, s);
                if err < best.0 {
                    best = (err, s);
                }
            }
        }
    }
    for _ in 0..REFINE {
        match lsq(best.1) {
            Some(s) if symmetric_error(x, s) < best.0 => best = (symmetric_error(x, s), s),
            _ => break,
        }
    }
    best.1
}
