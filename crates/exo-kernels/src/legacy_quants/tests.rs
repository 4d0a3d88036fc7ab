use half::f16;
use rand::{Rng, SeedableRng};

use super::*;
use crate::Matrix;
use exo_formats::GgmlType;

fn rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(0x5eed)
}

/// Random blocks with realistic scales: codes are uniform, scales small, offsets negative.
trait Random: Codes + std::fmt::Debug {
    fn random(rng: &mut impl Rng) -> Self;
}
impl Random for BlockQ4_1 {
    fn random(rng: &mut impl Rng) -> Self {
        let (d, m) = (rng.random_range(0.001..0.05f32), rng.random_range(-0.5..0.0f32));
        Self { d: f16::from_f32(d), m: f16::from_f32(m), qs: rng.random() }
    }
}
impl Random for BlockQ5_0 {
    fn random(rng: &mut impl Rng) -> Self {
        Self { d: f16::from_f32(rng.random_range(0.001..0.05f32)), qh: rng.random(), qs: rng.random() }
    }
}
impl Random for BlockQ5_1 {
    fn random(rng: &mut impl Rng) -> Self {
        let (d, m) = (rng.random_range(0.001..0.05f32), rng.random_range(-0.5..0.0f32));
        Self { d: f16::from_f32(d), m: f16::from_f32(m), qh: rng.random(), qs: rng.random() }
    }
}

fn random_acts(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-2.0..2.0f32)).collect()
}

fn quantize(x: &[f32]) -> Vec<BlockQ8_1> {
    x.chunks_exact(QK).map(|c| BlockQ8_1::quantize(c.try_into().unwrap())).collect()
}

/// Σ |w x| over the dequantized values, in f64: the scale that rounding errors are relative to
/// (a dot product itself can cancel to nearly zero).
fn magnitude<B: Codes>(row: &[B], x: &[BlockQ8_1]) -> f64 {
    row.iter()
        .zip(x)
        .map(|(b, y)| {
            let d = f64::from(f16::from_bits(b.d_bits()).to_f32());
            let codes = b.codes();
            (0..QK).map(|j| ((d * f64::from(codes[j]) + f64::from(b.min())) * f64::from(y.d) * f64::from(y.qs[j])).abs()).sum::<f64>()
        })
        .sum()
}

/// The dot product from the dequantized values in f64: checks the formula of the kernels.
fn reference<B: Codes>(row: &[B], x: &[BlockQ8_1], deq: fn(&[B], &mut [f32])) -> f64 {
    let mut w = vec![0f32; row.len() * QK];
    deq(row, &mut w);
    let act = x.iter().flat_map(|y| y.qs.map(|q| f64::from(y.d) * f64::from(q)));
    w.iter().zip(act).map(|(&w, a)| f64::from(w) * a).sum()
}

fn assert_close(what: &str, got: f32, want: f64, scale: f64) {
    let err = (f64::from(got) - want).abs();
    assert!(err <= 1e-4 * scale.max(1e-6), "{what}: got {got}, want {want} (error {err:e}, scale {scale:e})");
}

/// Every available kernel against the scalar path and the f64 reference.
fn check_kernels<B: Random + LegacyBlock<Act = BlockQ8_1>>(deq: fn(&[B], &mut [f32])) {
    let mut rng = rng();
    for nb in [1, 2, 3, 7, 18, 28] {
        let rows: Vec<Vec<B>> = (0..4).map(|_| (0..nb).map(|_| B::random(&mut rng)).collect()).collect();
        let x = quantize(&random_acts(&mut rng, nb * QK));
        let four = [0, 1, 2, 3].map(|r| rows[r].as_slice());
        let got4 = B::dot4(four, &x);
        for (r, row) in rows.iter().enumerate() {
            let scale = magnitude(row.as_slice(), &x);
            let scalar = dot_scalar(row.as_slice(), &x);
            assert_close("scalar vs f64", scalar, reference(row, &x, deq), scale);
            let want = f64::from(scalar);
            assert_close("dot", B::dot(row, &x), want, scale);
            assert_close("dot4", got4[r], want, scale);
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
            {
                // SAFETY: the cfg guarantees the features the kernels are compiled for.
                let (d, d4) = unsafe { (x86::avx2::dot(row, &x), x86::avx2::dot4(four, &x)) };
                assert_close("avx2 dot", d, want, scale);
                assert_close("avx2 dot4", d4[r], want, scale);
            }
            #[cfg(all(
                target_arch = "x86_64",
                target_feature = "avx512f",
                target_feature = "avx512bw",
                target_feature = "avx512vnni"
            ))]
            {
                // SAFETY: the cfg guarantees the features the kernel is compiled for.
                let d4 = unsafe { x86::avx512::dot4(four, &x) };
                assert_close("avx512 dot4", d4[r], want, scale);
            }
        }
    }
}

#[test]
fn kernels_q4_1() {
    check_kernels::<BlockQ4_1>(dequantize_row_q4_1);
}

#[test]
fn kernels_q5_0() {
    check_kernels::<BlockQ5_0>(dequantize_row_q5_0);
}

#[test]
fn kernels_q5_1() {
    check_kernels::<BlockQ5_1>(dequantize_row_q5_1);
}

/// Extreme codes and activations: all-15/31 codes against ±127 cannot overflow the 16-bit
/// intermediate sums of the AVX2 path.
#[test]
fn kernels_extremes() {
    let d = f16::from_f32(0.01);
    let w41 = [BlockQ4_1 { d, m: f16::from_f32(-0.1), qs: [0xFF; 16] }; 3];
    let w50 = [BlockQ5_0 { d, qh: [0xFF; 4], qs: [0xFF; 16] }; 3];
    let w51 = [BlockQ5_1 { d, m: f16::from_f32(-0.1), qh: [0xFF; 4], qs: [0xFF; 16] }; 3];
    for sign in [1.0f32, -1.0] {
        let x = quantize(&vec![sign; 3 * QK]);
        assert!(x.iter().all(|y| y.qs.iter().all(|&q| q == 127 * sign as i8)));
        for (got, want) in [
            (BlockQ4_1::dot4([&w41[..]; 4], &x)[3], dot_scalar(&w41, &x)),
            (BlockQ5_0::dot4([&w50[..]; 4], &x)[3], dot_scalar(&w50, &x)),
            (BlockQ5_1::dot4([&w51[..]; 4], &x)[3], dot_scalar(&w51, &x)),
            (BlockQ5_1::dot(&w51, &x), dot_scalar(&w51, &x)),
        ] {
            assert!((got - want).abs() <= 1e-4 * want.abs(), "{got} vs {want}");
        }
    }
}

#[test]
fn layouts_are_ggml() {
    assert_eq!(std::mem::size_of::<BlockQ4_1>(), 20);
    assert_eq!(std::mem::size_of::<BlockQ5_0>(), 22);
    assert_eq!(std::mem::size_of::<BlockQ5_1>(), 24);
    assert_eq!(std::mem::align_of::<BlockQ5_0>(), 2);
    assert_eq!(std::mem::offset_of!(BlockQ5_0, qh), 2);
    assert_eq!(std::mem::offset_of!(BlockQ5_0, qs), 6);
    assert_eq!(std::mem::offset_of!(BlockQ5_1, qh), 4);
    assert_eq!(std::mem::offset_of!(BlockQ5_1, qs), 8);
}

#[test]
fn dequantize_by_hand() {
    let mut qs = [0u8; 16];
    qs[0] = 0x21; // element 0: 1, element 16: 2
    qs[1] = 0xF3; // element 1: 3, element 17: 15
    let mut out = [0f32; QK];

    let b = BlockQ4_1 { d: f16::from_f32(0.5), m: f16::from_f32(-1.0), qs };
    dequantize_row_q4_1(&[b], &mut out);
    assert_eq!((out[0], out[16], out[1], out[17], out[2], out[31]), (-0.5, 0.0, 0.5, 6.5, -1.0, -1.0));

    // Fifth bits of elements 0 and 17 (bit 17 sits in the third byte).
    let qh = [0x01, 0x00, 0x02, 0x00];
    let b = BlockQ5_0 { d: f16::from_f32(0.25), qh, qs };
    dequantize_row_q5_0(&[b], &mut out);
    // q = 17 → 0.25, q = 2 → -3.5, q = 3 → -3.25, q = 31 → 3.75, q = 0 → -4.
    assert_eq!((out[0], out[16], out[1], out[17], out[2]), (0.25, -3.5, -3.25, 3.75, -4.0));

    let b = BlockQ5_1 { d: f16::from_f32(0.5), m: f16::from_f32(-1.0), qh, qs };
    dequantize_row_q5_1(&[b], &mut out);
    // q = 17 → 7.5, q = 2 → 0, q = 3 → 0.5, q = 31 → 14.5, q = 0 → -1.
    assert_eq!((out[0], out[16], out[1], out[17], out[2]), (7.5, 0.0, 0.5, 14.5, -1.0));
}

#[test]
fn quantize_like_ggml() {
    let mut x = [0f32; QK];
    // Exact binary fractions, so that the expected codes do not depend on rounding of 1/d.
    x[0] = 127.0 / 64.0; // amax: d = 1/64
    x[1] = -50.0 / 64.0;
    x[2] = 1.5 / 64.0; // ties round away from zero, as C's roundf
    x[3] = -1.5 / 64.0;
    let y = BlockQ8_1::quantize(&x);
    assert_eq!(y.d, 1.0 / 64.0);
    assert_eq!(&y.qs[..5], &[127, -50, 2, -2, 0]);
    assert_eq!(y.s, y.d * 77.0);
    assert_eq!(BlockQ8_1::quantize(&[0.0; QK]), BlockQ8_1::default());
}

#[test]
fn quantized_buffer_is_reused() {
    let x = random_acts(&mut rng(), 3 * 64);
    let first = BlockQ4_1::with_quantized(&x, 3, 64, |q| (q.len(), q.as_ptr() as usize));
    assert_eq!(first.0, 6);
    let again = BlockQ4_1::with_quantized(&x[..64], 1, 64, |q| q.as_ptr() as usize);
    assert_eq!(first.1, again, "the thread-local buffer should be reused");
    // A nested call gets its own buffer and leaves the outer one intact.
    BlockQ5_0::with_quantized(&x, 3, 64, |outer| {
        let copy = outer.to_vec();
        BlockQ5_0::with_quantized(&x[64..128], 1, 64, |inner| assert_eq!(inner, &copy[2..4]));
        assert_eq!(outer, copy.as_slice());
    });
}

fn as_bytes<B>(blocks: &[B]) -> &[u8] {
    // SAFETY: the block types are plain bytes and halfs without padding.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast(), std::mem::size_of_val(blocks)) }
}

/// `Matrix::matmul` against the f32 product of the dequantized weights: they differ by the
/// activation quantization only (~0.5% per element, less after summing).
fn check_matmul<B: Random>(ty: GgmlType) {
    let mut rng = rng();
    for (n, k) in [(4, 32), (7, 64), (13, 96), (37, 288), (64, 576)] {
        let w: Vec<B> = (0..n * k / QK).map(|_| B::random(&mut rng)).collect();
        let mat = Matrix::from_bytes("w", ty, n, k, as_bytes(&w)).unwrap();
        let float = mat.dequantized();
        for m in [1, 7] {
            let x = random_acts(&mut rng, m * k);
            let (mut got, mut want) = (vec![0f32; m * n], vec![0f32; m * n]);
            mat.matmul(&x, m, &mut got).unwrap();
            float.matmul(&x, m, &mut want).unwrap();
            let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
            let diff: Vec<f32> = got.iter().zip(&want).map(|(a, b)| a - b).collect();
            let rel = norm(&diff) / norm(&want);
            assert!(rel < 1e-2, "{ty:?} {n}x{k} m={m}: relative error {rel}");
        }
    }
}

#[test]
fn matmul_q4_1() {
    check_matmul::<BlockQ4_1>(GgmlType::Q4_1);
}

#[test]
fn matmul_q5_0() {
    check_matmul::<BlockQ5_0>(GgmlType::Q5_0);
}

#[test]
fn matmul_q5_1() {
    check_matmul::<BlockQ5_1>(GgmlType::Q5_1);
}
