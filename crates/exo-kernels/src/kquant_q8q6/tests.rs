use candle_core::quantized::k_quants::{self, GgmlType as CandleBlock};
use exo_formats::GgmlType;
use rand::{Rng, SeedableRng};

use super::*;
use crate::Matrix;

fn rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(0x8686)
}

fn as_bytes<T>(v: &[T]) -> &[u8] {
    // SAFETY: candle's block types are plain integers and halfs without padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

fn random(rng: &mut impl Rng, n: usize, amp: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-amp..amp)).collect()
}

/// Weights of `ty` quantized by candle from random values, as ggml bytes.
fn weights(rng: &mut impl Rng, ty: GgmlType, n: usize, k: usize) -> Vec<u8> {
    let wf = random(rng, n * k, 0.1);
    match ty {
        GgmlType::Q8_0 => {
            let mut b = vec![k_quants::BlockQ8_0::zeros(); n * k / 32];
            k_quants::BlockQ8_0::from_float(&wf, &mut b);
            as_bytes(&b).to_vec()
        }
        GgmlType::Q6K => {
            let mut b = vec![k_quants::BlockQ6K::zeros(); n * k / 256];
            k_quants::BlockQ6K::from_float(&wf, &mut b);
            as_bytes(&b).to_vec()
        }
        GgmlType::Q5_0 => {
            let mut b = vec![k_quants::BlockQ5_0::zeros(); n * k / 32];
            k_quants::BlockQ5_0::from_float(&wf, &mut b);
            as_bytes(&b).to_vec()
        }
        GgmlType::Q4_1 => {
            let mut b = vec![k_quants::BlockQ4_1::zeros(); n * k / 32];
            k_quants::BlockQ4_1::from_float(&wf, &mut b);
            as_bytes(&b).to_vec()
        }
        _ => unreachable!(),
    }
}

fn candle_matmul(ty: GgmlType, bytes: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    fn cast<T>(b: &[u8]) -> Vec<T> {
        let n = b.len() / std::mem::size_of::<T>();
        let mut v = Vec::with_capacity(n);
        // SAFETY: plain-data block types; the copy gives the alignment the bytes may lack.
        unsafe {
            std::ptr::copy_nonoverlapping(b.as_ptr(), v.as_mut_ptr() as *mut u8, b.len());
            v.set_len(n);
        }
        v
    }
    let mut out = vec![0f32; m * n];
    match ty {
        GgmlType::Q8_0 => k_quants::matmul::<k_quants::BlockQ8_0>((m, k, n), x, &cast(bytes), &mut out).unwrap(),
        GgmlType::Q6K => k_quants::matmul::<k_quants::BlockQ6K>((m, k, n), x, &cast(bytes), &mut out).unwrap(),
        GgmlType::Q5_0 => k_quants::matmul::<k_quants::BlockQ5_0>((m, k, n), x, &cast(bytes), &mut out).unwrap(),
        GgmlType::Q4_1 => k_quants::matmul::<k_quants::BlockQ4_1>((m, k, n), x, &cast(bytes), &mut out).unwrap(),
        _ => unreachable!(),
    }
    out
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|a| a * a).sum::<f32>().sqrt();
    norm(&mut got.iter().zip(want).map(|(a, b)| a - b)) / norm(&mut want.iter().copied())
}

#[test]
fn packed_rows_dequantize_like_candle() {
    let mut rng = rng();
    for ty in [GgmlType::Q8_0, GgmlType::Q6K, GgmlType::Q5_0, GgmlType::Q4_1] {
        let (n, k) = (37, 512);
        let bytes = weights(&mut rng, ty, n, k);
        let mat = Matrix::from_bytes("w", ty, n, k, &bytes).unwrap();
        assert!(matches!(mat_data(&mat), "packed"));
        let row_bytes = ty.row_bytes(k).unwrap();
        let mut got = vec![0f32; k];
        let mut want = vec![0f32; k];
        for r in 0..n {
            mat.row_to_f32(r, &mut got).unwrap();
            let single = Matrix::from_bytes("row", ty, 1, k, &bytes[r * row_bytes..(r + 1) * row_bytes]).unwrap();
            single.row_to_f32(0, &mut want).unwrap();
            assert_eq!(got, want, "{ty:?} row {r}");
        }
    }
}

fn mat_data(m: &Matrix) -> &'static str {
    // One-row matrices stay in ggml layout (and go to candle); larger ones are packed. The
    // observable difference: a packed matrix's rows round-trip through `Packed::row_to_f32`.
    if m.rows() > 1 {
        "packed"
    } else {
        "raw"
    }
}

/// Every tile shape of the SIMD kernels against the scalar ones.
#[test]
fn simd_tiles_match_scalar() {
    let mut rng = rng();
    let (n, k) = (64, 512);
    let x = random(&mut rng, 4 * k, 2.0);
    let (Packed::Q8_0(p8), Packed::Q6K(p6)) = (
        Packed::q8_0(n, k, &weights(&mut rng, GgmlType::Q8_0, n, k)),
        Packed::q6k(n, k, &weights(&mut rng, GgmlType::Q6K, n, k)),
    ) else {
        unreachable!()
    };
    let Packed::Q5_0(p5) = Packed::q5_0(n, k, &weights(&mut rng, GgmlType::Q5_0, n, k)) else { unreachable!() };
    let Packed::Q4_1(p4) = Packed::q4_1(n, k, &weights(&mut rng, GgmlType::Q4_1, n, k)) else { unreachable!() };
    with_quantized::<ActQ8_0, _>(&x, 4, k, |xq8| {
        with_quantized::<ActQ8K, _>(&x, 4, k, |xqk| {
            for r in 1..=4 {
                for m in 1..=4 {
                    let g8: Vec<&[Q8_0x16]> = (0..r).map(|g| p8.group(g)).collect();
                    let g6: Vec<&[Q6Kx16]> = (0..r).map(|g| p6.group(g)).collect();
                    let a8: Vec<&[ActQ8_0]> = (0..m).map(|i| &xq8[i * p8.nb..(i + 1) * p8.nb]).collect();
                    let a6: Vec<&[ActQ8K]> = (0..m).map(|i| &xqk[i * p6.nb..(i + 1) * p6.nb]).collect();
                    let (mut want, mut got) = (vec![[0f32; GROUP]; r * m], vec![[0f32; GROUP]; r * m]);
                    scalar::q8_0(&g8, &a8, &mut want);
                    kernels::q8_0(&g8, &a8, &mut got);
                    assert!(rel_err(got.as_flattened(), want.as_flattened()) < 1e-6, "q8_0 {r}x{m}");
                    scalar::q6k(&g6, &a6, &mut want);
                    kernels::q6k(&g6, &a6, &mut got);
                    assert!(rel_err(got.as_flattened(), want.as_flattened()) < 1e-6, "q6k {r}x{m}");
                    let g5: Vec<&[Q5_0x16]> = (0..r).map(|g| p5.group(g)).collect();
                    let (mut want5, mut got5) = (vec![[0f32; GROUP]; r * m], vec![[0f32; GROUP]; r * m]);
                    scalar::q5_0(&g5, &a8, &mut want5);
                    kernels::q5_0(&g5, &a8, &mut got5);
                    assert!(rel_err(got5.as_flattened(), want5.as_flattened()) < 1e-6, "q5_0 {r}x{m}");
                    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c", target_feature = "fma"))]
                    {
                        avx2::q5_0(&g5, &a8, &mut got5);
                        assert!(rel_err(got5.as_flattened(), want5.as_flattened()) < 1e-6, "avx2 q5_0 {r}x{m}");
                    }
                    let g4: Vec<&[Q4_1x16]> = (0..r).map(|g| p4.group(g)).collect();
                    scalar::q4_1(&g4, &a8, &mut want5);
                    kernels::q4_1(&g4, &a8, &mut got5);
                    assert!(rel_err(got5.as_flattened(), want5.as_flattened()) < 1e-6, "q4_1 {r}x{m}");
                    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c", target_feature = "fma"))]
                    {
                        avx2::q4_1(&g4, &a8, &mut got5);
                        assert!(rel_err(got5.as_flattened(), want5.as_flattened()) < 1e-6, "avx2 q4_1 {r}x{m}");
                    }
                    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c", target_feature = "fma"))]
                    {
                        avx2::q6k(&g6, &a6, &mut got);
                        assert!(rel_err(got.as_flattened(), want.as_flattened()) < 1e-6, "avx2 q6k {r}x{m}");
                        scalar::q8_0(&g8, &a8, &mut want);
                        avx2::q8_0(&g8, &a8, &mut got);
                        assert!(rel_err(got.as_flattened(), want.as_flattened()) < 1e-6, "avx2 q8_0 {r}x{m}");
                    }
                }
            }
        })
    });
}

/// How close the packed kernels come to candle's: float summation order only, except for Q4_1,
/// where candle (like ggml) rounds each block's activation sum `dₓ Σq` to f16 and exo keeps it
/// in f32 (a relative change of up to 2⁻¹¹ in the offset term).
fn candle_tolerance(ty: GgmlType) -> f32 {
    if ty == GgmlType::Q4_1 {
        2e-3
    } else {
        1e-5
    }
}

/// `Matrix::matmul` against the f32 product with the dequantized weights (they differ by the
/// activation quantization) and against candle's kernels (which quantize activations the same
/// way, so agree up to float summation order).
fn check_matmul(ty: GgmlType, ks: &[usize]) {
    let mut rng = rng();
    for &k in ks {
        for n in [2, 16, 37, 100] {
            let bytes = weights(&mut rng, ty, n, k);
            let mat = Matrix::from_bytes("w", ty, n, k, &bytes).unwrap();
            let float = mat.dequantized();
            for m in [1, 3, 7, 64] {
                let x = random(&mut rng, m * k, 2.0);
                let (mut got, mut want) = (vec![0f32; m * n], vec![0f32; m * n]);
                mat.matmul(&x, m, &mut got).unwrap();
                float.matmul(&x, m, &mut want).unwrap();
                let candle = candle_matmul(ty, &bytes, n, k, &x, m);
                let rel = rel_err(&got, &candle);
                assert!(rel < candle_tolerance(ty), "{ty:?} {n}x{k} m={m}: relative error {rel} vs candle");
                // Random dot products cancel, so a handful of outputs can show a few percent of
                // quantization error; many outputs average it out.
                let tol = if n * m >= 16 { 1e-2 } else { 5e-2 };
                let rel = rel_err(&got, &want);
                assert!(rel < tol, "{ty:?} {n}x{k} m={m}: relative error {rel} vs f32");
            }
        }
    }
}

#[test]
fn matmul_q8_0() {
    check_matmul(GgmlType::Q8_0, &[32, 96, 896]);
}

#[test]
fn matmul_q5_0() {
    check_matmul(GgmlType::Q5_0, &[32, 96, 896]);
}

#[test]
fn matmul_q4_1() {
    check_matmul(GgmlType::Q4_1, &[32, 96, 576]);
}

#[test]
fn matmul_q6k() {
    check_matmul(GgmlType::Q6K, &[256, 768]);
}

#[test]
fn activations_quantize_like_candle() {
    let mut rng = rng();
    let mut x = random(&mut rng, 1024, 3.0);
    x[300] = 0.0;
    x[5] = -7.0; // a negative maximum flips the Q8_K scale's sign
    x[600..856].fill(0.0); // an all-zero super-block
    let mut c8 = vec![k_quants::BlockQ8_0::zeros(); 1024 / 32];
    k_quants::BlockQ8_0::from_float(&x, &mut c8);
    // candle's fields are private: read its repr(C) bytes (f16 d, then 32 codes).
    for (c, chunk) in as_bytes(&c8).chunks_exact(34).zip(x.chunks_exact(32)) {
        let a = ActQ8_0::quantize(chunk);
        let qs: Vec<i8> = c[2..].iter().map(|&b| b as i8).collect();
        assert_eq!(a.qs.as_slice(), qs.as_slice());
        assert_eq!(a.d, f16::from_le_bytes([c[0], c[1]]).to_f32());
        assert_eq!(a.corr, -128 * qs.iter().map(|&q| i32::from(q)).sum::<i32>());
    }
    let mut ck = vec![k_quants::BlockQ8K::zeros(); 1024 / 256];
    k_quants::BlockQ8K::from_float(&x, &mut ck);
    // f32 d, 256 codes, 16 i16 sums.
    for (c, chunk) in as_bytes(&ck).chunks_exact(292).zip(x.chunks_exact(256)) {
        let a = ActQ8K::quantize(chunk);
        let qs: Vec<i8> = c[4..260].iter().map(|&b| b as i8).collect();
        assert_eq!(a.qs.as_slice(), qs.as_slice());
        assert_eq!(a.d, f32::from_le_bytes(c[..4].try_into().unwrap()));
        let bsums: Vec<i32> = c[260..].chunks_exact(2).map(|b| -32 * i32::from(i16::from_le_bytes([b[0], b[1]]))).collect();
        assert_eq!(a.corr.as_slice(), bsums.as_slice());
    }
}

#[test]
fn quantized_buffer_is_reused() {
    let x = random(&mut rng(), 3 * 256, 1.0);
    let first = with_quantized::<ActQ8K, _>(&x, 3, 256, |q| (q.len(), q.as_ptr() as usize));
    assert_eq!(first.0, 3);
    let again = with_quantized::<ActQ8K, _>(&x[..256], 1, 256, |q| q.as_ptr() as usize);
    assert_eq!(first.1, again, "the thread-local buffer should be reused");
    // Large inputs are quantized on the pool; the result must equal the serial one.
    let big = random(&mut rng(), 64 * 512, 1.0);
    let par = with_quantized::<ActQ8_0, _>(&big, 64, 512, |q| q.to_vec());
    let serial: Vec<_> = big.chunks_exact(32).map(ActQ8_0::quantize).collect();
    assert_eq!(par, serial);
}

#[test]
fn q6k_codes_follow_ggml_layout() {
    // Element 0: ql[0] low nibble, qh[0] bits 0-1; element 96: ql[32] high nibble, qh[0] bits
    // 6-7; element 128 starts the second half (ql[64], qh[32]).
    let mut src = [0u8; 210];
    src[0] = 0x05;
    src[32] = 0xA0;
    src[128] = 0b1100_0010;
    src[64] = 0x0F;
    src[160] = 0b0000_0001;
    let c = q6k_codes(&src);
    assert_eq!((c[0], c[96], c[128], c[1]), (5 | 2 << 4, 0xA | 3 << 4, 0xF | 1 << 4, 0));
}

/// Extreme codes against extreme activations: nothing saturates or overflows in any kernel.
#[test]
fn kernels_extremes() {
    let (n, k) = (16, 512);
    let d = f16::from_f32(0.01).to_le_bytes();
    for (wq, xv) in [(-128i8, 1.0f32), (-128, -1.0), (127, 1.0), (127, -1.0)] {
        // Q8_0: every code wq.
        let mut b8 = Vec::new();
        for _ in 0..n * k / 32 {
            b8.extend_from_slice(&d);
            b8.extend(std::iter::repeat_n(wq as u8, 32));
        }
        // Q6_K: every code 63 (wq > 0) or 0 (wq < 0), sub-scales ±127.
        let mut b6 = Vec::new();
        for _ in 0..n * k / 256 {
            let code = if wq > 0 { 0xFF } else { 0x00 };
            b6.extend(std::iter::repeat_n(code, 192));
            b6.extend(std::iter::repeat_n(wq as u8 | 1, 16));
            b6.extend_from_slice(&d);
        }
        // Q5_0: every code 31 (wq > 0) or 0.
        let mut b5 = Vec::new();
        for _ in 0..n * k / 32 {
            let code = if wq > 0 { 0xFF } else { 0x00 };
            b5.extend_from_slice(&d);
            b5.extend(std::iter::repeat_n(code, 20));
        }
        // Q4_1: every code 15 (wq > 0) or 0, with a negative offset.
        let mut b4 = Vec::new();
        for _ in 0..n * k / 32 {
            let code = if wq > 0 { 0xFF } else { 0x00 };
            b4.extend_from_slice(&d);
            b4.extend_from_slice(&f16::from_f32(-0.07).to_le_bytes());
            b4.extend(std::iter::repeat_n(code, 16));
        }
        let x = vec![xv; k];
        for (ty, bytes) in [(GgmlType::Q8_0, &b8), (GgmlType::Q6K, &b6), (GgmlType::Q5_0, &b5), (GgmlType::Q4_1, &b4)] {
            let mat = Matrix::from_bytes("w", ty, n, k, bytes).unwrap();
            let mut got = vec![0f32; n];
            mat.matmul(&x, 1, &mut got).unwrap();
            let want = candle_matmul(ty, bytes, n, k, &x, 1);
            assert!(rel_err(&got, &want) < candle_tolerance(ty) / 10.0, "{ty:?} w={wq} x={xv}: {got:?} vs {want:?}");
        }
        let (Packed::Q8_0(p8), Packed::Q6K(p6)) = (Packed::q8_0(n, k, &b8), Packed::q6k(n, k, &b6)) else { unreachable!() };
        with_quantized::<ActQ8_0, _>(&x, 1, k, |a8| {
            with_quantized::<ActQ8K, _>(&x, 1, k, |a6| {
                let (mut want, mut got) = ([[0f32; GROUP]; 1], [[0f32; GROUP]; 1]);
                scalar::q8_0(&[p8.group(0)], &[a8], &mut want);
                kernels::q8_0(&[p8.group(0)], &[a8], &mut got);
                assert!(rel_err(got.as_flattened(), want.as_flattened()) < 1e-6, "{got:?} vs {want:?}");
                let Packed::Q5_0(p5) = Packed::q5_0(n, k, &b5) else { unreachable!() };
                scalar::q5_0(&[p5.group(0)], &[a8], &mut want);
                kernels::q5_0(&[p5.group(0)], &[a8], &mut got);
                assert!(rel_err(got.as_flattened(), want.as_flattened()) < 1e-6, "{got:?} vs {want:?}");
                #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c", target_feature = "fma"))]
                {
                    avx2::q5_0(&[p5.group(0)], &[a8], &mut got);
                    assert!(rel_err(got.as_flattened(), want.as_flattened()) < 1e-6, "{got:?} vs {want:?}");
                }
                let Packed::Q4_1(p4) = Packed::q4_1(n, k, &b4) else { unreachable!() };
                scalar::q4_1(&[p4.group(0)], &[a8], &mut want);
                kernels::q4_1(&[p4.group(0)], &[a8], &mut got);
                assert!(rel_err(got.as_flattened(), want.as_flattened()) < 1e-6, "{got:?} vs {want:?}");
                #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c", target_feature = "fma"))]
                {
                    avx2::q4_1(&[p4.group(0)], &[a8], &mut got);
                    assert!(rel_err(got.as_flattened(), want.as_flattened()) < 1e-6, "{got:?} vs {want:?}");
                }
                scalar::q6k(&[p6.group(0)], &[a6], &mut want);
                kernels::q6k(&[p6.group(0)], &[a6], &mut got);
                assert!(rel_err(got.as_flattened(), want.as_flattened()) < 1e-6, "{got:?} vs {want:?}");
                #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c", target_feature = "fma"))]
                {
                    avx2::q6k(&[p6.group(0)], &[a6], &mut got);
                    assert!(rel_err(got.as_flattened(), want.as_flattened()) < 1e-6, "{got:?} vs {want:?}");
                    scalar::q8_0(&[p8.group(0)], &[a8], &mut want);
                    avx2::q8_0(&[p8.group(0)], &[a8], &mut got);
                    assert!(rel_err(got.as_flattened(), want.as_flattened()) < 1e-6, "{got:?} vs {want:?}");
                }
            })
        });
    }
}
