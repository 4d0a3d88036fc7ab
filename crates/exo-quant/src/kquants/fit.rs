//! Per-block scale search for the k-quants and the weighted legacy quantizers.
//!
//! A block of values `x` is coded as `scale·q − min` (affine, codes `0..=top`, `min ≥ 0` as
//! the formats store it unsigned) or `scale·q` (symmetric, codes `lo..=hi`). Every value has a
//! weight `w` (1 for the plain squared error; a column's importance for an importance-weighted
//! quantization), and the search minimises `Σ w·(x − x̂)²`. For a fixed set of codes the best scale
//! (and min) is a weighted least-squares fit; the codes for a given scale are found by rounding.
//! The search tries the codes of a grid of scales around the range-filling one, fits each, and
//! refines the best by re-coding until the error stops falling.
//!
//! Blocks are copied into fixed 32-value arrays, padded with zero weights (which add nothing to
//! any sum): loops of a constant length over arrays have no bounds checks, so they vectorize,
//! and the search runs several times faster than over slices.

/// Half-width of the grid of candidate steps, and the step between candidates, in code units:
/// the candidates map the block's range onto `top − 1 ..= top + 1` codes.
const STEPS: i32 = 10;
const STEP: f32 = 0.1;
/// Re-code-and-refit rounds after the grid.
const REFINE: usize = 3;
/// The largest block (the legacy formats' and the affine k-quants' sub-blocks).
const N32: usize = 32;
/// Q6_K's sub-blocks.
const N16: usize = 16;

/// A block's values and weights, zero-padded to `N`.
struct Block<const N: usize> {
    x: [f32; N],
    w: [f32; N],
}

impl<const N: usize> Block<N> {
    fn new(x: &[f32], w: &[f32]) -> Self {
        let mut b = Block { x: [0.0; N], w: [0.0; N] };
        let n = x.len().min(w.len()).min(N);
        b.x[..n].copy_from_slice(&x[..n]);
        b.w[..n].copy_from_slice(&w[..n]);
        b
    }

    /// Weighted squared error with codes `(x + min)·inv` rounded into `lo..=hi`, dequantized
    /// as `scale·q − min`.
    fn error(&self, inv: f32, scale: f32, min: f32, lo: f32, hi: f32) -> f32 {
        let e: [f32; N] = std::array::from_fn(|i| {
            let q = ((self.x[i] + min) * inv).round_ties_even().clamp(lo, hi);
            let d = scale * q - min - self.x[i];
            self.w[i] * d * d
        });
        e.iter().sum()
    }

    /// The codes for `inv` and `min`, as floats.
    fn codes(&self, inv: f32, min: f32, lo: f32, hi: f32) -> [f32; N] {
        std::array::from_fn(|i| ((self.x[i] + min) * inv).round_ties_even().clamp(lo, hi))
    }
}

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
    ((v + min) * inv_scale).round_ties_even().clamp(0.0, f32::from(top)) as u8
}

/// Weighted squared error of coding `x` (at most 32 values) with `scale` and `min` (computed as
/// the dequantizer does).
pub(crate) fn affine_error(x: &[f32], w: &[f32], scale: f32, min: f32, top: u8) -> f32 {
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    Block::<N32>::new(x, w).error(inv, scale, min, 0.0, f32::from(top))
}

/// Weighted least-squares `(scale, min)` for codes `q`, with the offset held at or below zero.
fn affine_lsq<const N: usize>(b: &Block<N>, q: &[f32; N]) -> Option<(f32, f32)> {
    let (mut sw, mut sq, mut sqq, mut sx, mut sqx) = ([0f64; N], [0f64; N], [0f64; N], [0f64; N], [0f64; N]);
    for i in 0..N {
        let (v, c, w) = (f64::from(b.x[i]), f64::from(q[i]), f64::from(b.w[i]));
        sw[i] = w;
        sq[i] = w * c;
        sqq[i] = w * c * c;
        sx[i] = w * v;
        sqx[i] = w * c * v;
    }
    let sum = |a: [f64; N]| a.iter().sum::<f64>();
    let (sw, sq, sqq, sx, sqx) = (sum(sw), sum(sq), sum(sqq), sum(sx), sum(sqx));
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
    let b = Block::<N32>::new(x, w);
    let top = f32::from(top);
    if hi <= lo {
        // Constant and not positive: the min alone represents it.
        return (0.0, -lo);
    }
    let mut best = (b.error(0.0, 0.0, -lo, 0.0, top), 0.0, -lo);
    let consider = |q: &[f32; N32], best: &mut (f32, f32, f32)| {
        if let Some((s, m)) = affine_lsq(&b, q) {
            let err = b.error(1.0 / s, s, m, 0.0, top);
            if err < best.0 {
                *best = (err, s, m);
                return true;
            }
        }
        false
    };
    for k in -STEPS..=STEPS {
        let inv = (top + STEP * k as f32) / (hi - lo);
        consider(&b.codes(inv, -lo, 0.0, top), &mut best);
    }
    for _ in 0..REFINE {
        if !consider(&b.codes(inverse(best.1), best.2, 0.0, top), &mut best) {
            break;
        }
    }
    (best.1, best.2)
}

/// The code of `v` for a symmetric block with codes in `lo..=hi`, given `1 / scale`.
pub(crate) fn symmetric_code(v: f32, inv_scale: f32, lo: i32, hi: i32) -> i32 {
    (v * inv_scale).round_ties_even().clamp(lo as f32, hi as f32) as i32
}

/// Weighted squared error of coding `x` (at most 32 values) with `scale` and codes in
/// `lo..=hi` (computed as the dequantizer does).
pub(crate) fn symmetric_error(x: &[f32], w: &[f32], scale: f32, lo: i32, hi: i32) -> f32 {
    let (inv, lo, hi) = (inverse(scale), lo as f32, hi as f32);
    if x.len() <= N16 {
        Block::<N16>::new(x, w).error(inv, scale, 0.0, lo, hi)
    } else {
        Block::<N32>::new(x, w).error(inv, scale, 0.0, lo, hi)
    }
}

/// The signed scale of a symmetric block (at most 32 values) with codes in `lo..=hi`
/// (`lo < 0 < hi`).
///
/// The code range is lopsided, so the value of largest magnitude is tried both on the `lo` side
/// (a scale of the opposite sign) and on the `hi` side.
pub(crate) fn symmetric(x: &[f32], w: &[f32], lo: i32, hi: i32) -> f32 {
    if x.len() <= N16 {
        symmetric_block(&Block::<N16>::new(x, w), lo, hi)
    } else {
        symmetric_block(&Block::<N32>::new(x, w), lo, hi)
    }
}

fn symmetric_block<const N: usize>(b: &Block<N>, lo: i32, hi: i32) -> f32 {
    let v = b.x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if v == 0.0 {
        return 0.0;
    }
    let (lo, hi) = (lo as f32, hi as f32);
    let lsq = |scale: f32| -> Option<f32> {
        let q = b.codes(inverse(scale), 0.0, lo, hi);
        let (mut sqq, mut sqx) = ([0f32; N], [0f32; N]);
        for i in 0..N {
            sqq[i] = b.w[i] * q[i] * q[i];
            sqx[i] = b.w[i] * q[i] * b.x[i];
        }
        let (sqq, sqx) = (sqq.iter().sum::<f32>(), sqx.iter().sum::<f32>());
        (sqq > 0.0).then(|| sqx / sqq)
    };
    let err = |s: f32| b.error(inverse(s), s, 0.0, lo, hi);
    let mut best = (f32::MAX, 0f32);
    for k in -STEPS..=STEPS {
        for codes in [lo, hi] {
            let scale = v / (codes + STEP * k as f32 * f32::signum(codes));
            if let Some(s) = lsq(scale) {
                let e = err(s);
                if e < best.0 {
                    best = (e, s);
                }
            }
        }
    }
    for _ in 0..REFINE {
        match lsq(best.1) {
            Some(s) if err(s) < best.0 => best = (err(s), s),
            _ => break,
        }
    }
    best.1
}
