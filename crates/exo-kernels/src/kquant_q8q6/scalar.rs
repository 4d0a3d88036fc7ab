//! Portable kernels on the packed layouts: the fallback off x86-64 and the reference the SIMD
//! kernels are tested against.

use super::*;

/// Drives a per-block kernel over a tile: `out[gi * m + i]` gets the 16 sums of group `gi` with
/// activation row `i`; `block(w, x, r)` is lane `r`'s scaled contribution of one block pair.
fn tile<W, A>(groups: &[&[W]], acts: &[&[A]], out: &mut [[f32; GROUP]], block: impl Fn(&W, &A, usize) -> f32) {
    let m = acts.len();
    for (gi, w) in groups.iter().enumerate() {
        for (i, x) in acts.iter().enumerate() {
            let mut acc = [0f32; GROUP];
            for (blk, a) in w.iter().zip(x.iter()) {
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc += block(blk, a, r);
                }
            }
            out[gi * m + i] = acc;
        }
    }
}

/// An integer block sum times the lane's weight scale and the activation scale.
fn scaled(sumi: i32, d: u16, x_scale: f32) -> f32 {
    sumi as f32 * (f16::from_bits(d).to_f32() * x_scale)
}

/// Q8_0 tile, laid out as [`tile`] says; stored codes carry +128, cancelled by `corr`.
pub(crate) fn q8_0(groups: &[&[Q8_0x16]], acts: &[&[ActQ8_0]], out: &mut [[f32; GROUP]]) {
    let block = |blk: &Q8_0x16, a: &ActQ8_0, r: usize| {
        let sumi = (0..QK8_0).fold(a.corr, |sum, e| sum + i32::from(blk.qs[((e / 4) * GROUP + r) * 4 + e % 4]) * i32::from(a.qs[e]));
        scaled(sumi, blk.d[r], a.d)
    };
    tile(groups, acts, out, block)
}

/// Q5_0 tile, laid out as [`tile`] says.
pub(crate) fn q5_0(groups: &[&[Q5_0x16]], acts: &[&[ActQ8_0]], out: &mut [[f32; GROUP]]) {
    nibble_tile(groups, acts, out, q5_code)
}

/// Q4_1 tile, laid out as [`tile`] says.
pub(crate) fn q4_1(groups: &[&[Q4_1x16]], acts: &[&[ActQ8_0]], out: &mut [[f32; GROUP]]) {
    nibble_tile(groups, acts, out, |blk, r, e| nibble_code(&blk.qs, r, e))
}

/// Q5_0 or Q4_1 (`code(block, row, element)`): the sums start where [`NibbleBlock::start`]
/// says, and row offsets multiply the activation sum `dₓ Σx`, recovered from `corr = -128 Σx`.
fn nibble_tile<W: NibbleBlock>(groups: &[&[W]], acts: &[&[ActQ8_0]], out: &mut [[f32; GROUP]], code: impl Fn(&W, usize, usize) -> u8) {
    let block = |blk: &W, a: &ActQ8_0, r: usize| {
        let sumi = (0..QK8_0).fold(W::start(a), |sum, e| sum + i32::from(code(blk, r, e)) * i32::from(a.qs[e]));
        let x_sum = (a.corr as f32) * (-1.0 / 128.0) * a.d;
        scaled(sumi, blk.d()[r], a.d) + blk.offsets().map_or(0.0, |m| f16::from_bits(m[r]).to_f32() * x_sum)
    };
    tile(groups, acts, out, block)
}

/// Q6_K tile, laid out as [`tile`] says; each 16-element sub-block has its own scale.
pub(crate) fn q6k(groups: &[&[Q6Kx16]], acts: &[&[ActQ8K]], out: &mut [[f32; GROUP]]) {
    let block = |blk: &Q6Kx16, a: &ActQ8K, r: usize| {
        let sumi = (0..16).fold(0i32, |sum, s| {
            let sub = (0..16).fold(a.corr[s], |t, e| t + i32::from(q6_code(&blk.q[s], r, e)) * i32::from(a.qs[16 * s + e]));
            sum + i32::from(blk.sc[s * GROUP + r]) * sub
        });
        scaled(sumi, blk.d[r], a.d)
    };
    tile(groups, acts, out, block)
}
