//! Portable kernels on the packed layouts: the fallback off x86-64 and the reference the SIMD
//! kernels are tested against.

use super::*;

/// Q8_0 tile: `out[gi * M + i]` gets the 16 sums of group `gi` with activation row `i`.
pub(crate) fn q8_0(groups: &[&[Q8_0x16]], acts: &[&[ActQ8_0]], out: &mut [[f32; GROUP]]) {
    let m = acts.len();
    for (gi, w) in groups.iter().enumerate() {
        for (i, x) in acts.iter().enumerate() {
            let mut acc = [0f32; GROUP];
            for (blk, a) in w.iter().zip(x.iter()) {
                for (r, acc) in acc.iter_mut().enumerate() {
                    let mut sumi = a.corr;
                    for e in 0..QK8_0 {
                        let q = blk.qs[((e / 4) * GROUP + r) * 4 + e % 4];
                        sumi += i32::from(q) * i32::from(a.qs[e]);
                    }
                    *acc += sumi as f32 * (f16::from_bits(blk.d[r]).to_f32() * a.d);
                }
            }
            out[gi * m + i] = acc;
        }
    }
}

/// Q5_0 tile, laid out as [`q8_0`]; the sums start at `-16 Σx` (`corr / 8`), the code offset.
pub(crate) fn q5_0(groups: &[&[Q5_0x16]], acts: &[&[ActQ8_0]], out: &mut [[f32; GROUP]]) {
    let m = acts.len();
    for (gi, w) in groups.iter().enumerate() {
        for (i, x) in acts.iter().enumerate() {
            let mut acc = [0f32; GROUP];
            for (blk, a) in w.iter().zip(x.iter()) {
                for (r, acc) in acc.iter_mut().enumerate() {
                    let mut sumi = a.corr >> 3;
                    for e in 0..QK8_0 {
                        sumi += i32::from(q5_code(blk, r, e)) * i32::from(a.qs[e]);
                    }
                    *acc += sumi as f32 * (f16::from_bits(blk.d[r]).to_f32() * a.d);
                }
            }
            out[gi * m + i] = acc;
        }
    }
}

/// Q6_K tile, laid out as [`q8_0`].
pub(crate) fn q6k(groups: &[&[Q6Kx16]], acts: &[&[ActQ8K]], out: &mut [[f32; GROUP]]) {
    let m = acts.len();
    for (gi, w) in groups.iter().enumerate() {
        for (i, x) in acts.iter().enumerate() {
            let mut acc = [0f32; GROUP];
            for (blk, a) in w.iter().zip(x.iter()) {
                for (r, acc) in acc.iter_mut().enumerate() {
                    let mut sumi = 0i32;
                    for s in 0..16 {
                        let mut sub = a.corr[s];
                        for e in 0..16 {
                            sub += i32::from(q6_code(&blk.q[s], r, e)) * i32::from(a.qs[16 * s + e]);
                        }
                        sumi += i32::from(blk.sc[s * GROUP + r]) * sub;
                    }
                    *acc += sumi as f32 * (f16::from_bits(blk.d[r]).to_f32() * a.d);
                }
            }
            out[gi * m + i] = acc;
        }
    }
}
