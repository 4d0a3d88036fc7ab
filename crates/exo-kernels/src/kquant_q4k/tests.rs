use candle_core::quantized::k_quants::{self, GgmlType as _};
use exo_formats::GgmlType;
use half::f16;
use rand::{Rng, SeedableRng};

use super::*;
use crate::Matrix;

fn rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(0x4b4b)
}

/// Random blocks: all scale/min bit patterns, small positive super-scales.
fn random_block(rng: &mut impl Rng) -> BlockQ4K {
    BlockQ4K {
        d: f16::from_f32(rng.random_range(0.0001..0.002f32)),
        dmin: f16::from_f32(rng.random_range(0.0001..0.002f32)),
        scales: rng.random(),
        qs: std::array::from_fn(|_| rng.random()),
    }
}

fn random_blocks(rng: &mut impl Rng, n: usize) -> Vec<BlockQ4K> {
    (0..n).map(|_| random_block(rng)).collect()
}

fn random_blocks_q5k(rng: &mut impl Rng, n: usize) -> Vec<BlockQ5K> {
    (0..n)
        .map(|_| {
            let b = random_block(rng);
            BlockQ5K { d: b.d, dmin: b.dmin, scales: b.scales, qh: rng.random(), qs: b.qs }
        })
        .collect()
}

/// A weight type of this module, for tests generic over Q4_K and Q5_K.
trait Weights: Copy + Sized {
    const TY: GgmlType;
    type Candle: k_quants::GgmlType;
    fn random(rng: &mut impl Rng, n: usize) -> Vec<Self>;
    fn dequantize(blocks: &[Self], out: &mut [f32]);
    fn pack(rows: usize, cols: usize, w: &[Self]) -> PackedQ4K;
}
impl Weights for BlockQ4K {
    const TY: GgmlType = GgmlType::Q4K;
    type Candle = k_quants::BlockQ4K;
    fn random(rng: &mut impl Rng, n: usize) -> Vec<Self> {
        random_blocks(rng, n)
    }
    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        dequantize_row_q4k(blocks, out)
    }
    fn pack(rows: usize, cols: usize, w: &[Self]) -> PackedQ4K {
        PackedQ4K::pack(rows, cols, w)
    }
}
impl Weights for BlockQ5K {
    const TY: GgmlType = GgmlType::Q5K;
    type Candle = k_quants::BlockQ5K;
    fn random(rng: &mut impl Rng, n: usize) -> Vec<Self> {
        random_blocks_q5k(rng, n)
    }
    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        dequantize_row_q5k(blocks, out)
    }
    fn pack(rows: usize, cols: usize, w: &[Self]) -> PackedQ4K {
        PackedQ4K::pack_q5k(rows, cols, w)
    }
}

fn random_acts(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-2.0..2.0f32)).collect()
}

fn as_bytes<B>(blocks: &[B]) -> &[u8] {
    // SAFETY: the block types are plain bytes, halfs and floats without padding.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast(), std::mem::size_of_val(blocks)) }
}

/// The same bytes as candle's block type (identical `repr(C)` layout, checked by size).
fn as_candle<B: Weights>(blocks: &[B]) -> &[B::Candle] {
    assert_eq!(std::mem::size_of::<B::Candle>(), std::mem::size_of::<B>());
    // SAFETY: same size and alignment (2), every bit pattern valid for both.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast(), blocks.len()) }
}

fn quantize(x: &[f32]) -> Vec<BlockQ8K> {
    x.chunks_exact(QK_K).map(|c| BlockQ8K::quantize(c.try_into().unwrap())).collect()
}

#[test]
fn layout_is_ggml() {
    assert_eq!(std::mem::size_of::<BlockQ4K>(), 144);
    assert_eq!(std::mem::offset_of!(BlockQ4K, scales), 4);
    assert_eq!(std::mem::offset_of!(BlockQ4K, qs), 16);
    assert_eq!(std::mem::size_of::<Q4Kx4>(), 576);
    assert_eq!(std::mem::size_of::<BlockQ5K>(), 176);
    assert_eq!(std::mem::offset_of!(BlockQ5K, qh), 16);
    assert_eq!(std::mem::offset_of!(BlockQ5K, qs), 48);
}

/// Our dequantization against candle's, an independent reading of the format.
#[test]
fn dequantize_matches_candle() {
    let mut rng = rng();
    let w = random_blocks(&mut rng, 5);
    let (mut ours, mut theirs) = (vec![0f32; 5 * QK_K], vec![0f32; 5 * QK_K]);
    dequantize_row_q4k(&w, &mut ours);
    k_quants::BlockQ4K::to_float(as_candle(&w), &mut theirs);
    assert_eq!(ours, theirs);
    let w = random_blocks_q5k(&mut rng, 5);
    dequantize_row_q5k(&w, &mut ours);
    k_quants::BlockQ5K::to_float(as_candle(&w), &mut theirs);
    assert_eq!(ours, theirs);
}

/// Activation quantization is bit-identical to candle's `BlockQ8K::from_float`.
/// Packed matrices keep no copy of the file's blocks: their rows come back out of the packed
/// layout, equal to dequantizing the original blocks (a row count that pads the last group).
fn check_packed_rows<B: Weights>() {
    let mut rng = rng();
    let (n, nb) = (7, 3);
    let w = B::random(&mut rng, n * nb);
    let mat = Matrix::from_bytes("w", B::TY, n, nb * QK_K, as_bytes(&w)).unwrap();
    let (mut got, mut want) = (vec![0f32; nb * QK_K], vec![0f32; nb * QK_K]);
    for r in 0..n {
        mat.row_to_f32(r, &mut got).unwrap();
        B::dequantize(&w[r * nb..(r + 1) * nb], &mut want);
        assert_eq!(got, want, "{:?} row {r}", B::TY);
    }
}

#[test]
fn packed_rows_dequantize_like_the_blocks() {
    check_packed_rows::<BlockQ4K>();
    check_packed_rows::<BlockQ5K>();
}

#[test]
fn quantize_matches_candle() {
    let mut rng = rng();
    let mut x = random_acts(&mut rng, 4 * QK_K);
    x[300] = 5.0; // a positive maximum: negative scale
    x[600] = -5.0; // a negative one
    x[900] = 2.5;
    x[901] = -2.5; // ties: the first wins
    x[3 * QK_K..].fill(0.0);
    x[3 * QK_K + 7] = 1e-3;
    let ours = quantize(&x);
    let mut theirs = vec![k_quants::BlockQ8K::zeros(); 4];
    k_quants::BlockQ8K::from_float(&x, &mut theirs);
    for (o, t) in ours.iter().zip(&theirs) {
        // SAFETY: candle's BlockQ8K is repr(C) { f32, [i8; 256], [i16; 16] }.
        let (d, qs, bsums) = unsafe {
            let p = (t as *const k_quants::BlockQ8K).cast::<u8>();
            (*p.cast::<f32>(), *p.add(4).cast::<[i8; QK_K]>(), p.add(4 + QK_K).cast::<[i16; 16]>().read_unaligned())
        };
        assert_eq!(o.d, d);
        assert_eq!(o.qs, qs);
        let pairs: [i16; 8] = std::array::from_fn(|s| bsums[2 * s] + bsums[2 * s + 1]);
        assert_eq!(o.bsums, pairs);
    }
    // Exact halves round away from zero.
    let mut x = [0f32; QK_K];
    x[0] = -127.0 / 64.0; // a negative maximum: iscale = 64, d = 1/64
    x[1] = 1.5 / 64.0;
    x[2] = -2.5 / 64.0;
    let y = BlockQ8K::quantize(&x);
    assert_eq!(y.d, 1.0 / 64.0);
    assert_eq!(&y.qs[..3], &[-127, 2, -3]);
}

/// Σ |w y| over one weight row and activations, in f64: the scale rounding errors compare to.
fn magnitude<B: Weights>(row: &[B], x: &[BlockQ8K]) -> f64 {
    let mut w = vec![0f32; row.len() * QK_K];
    B::dequantize(row, &mut w);
    let act = x.iter().flat_map(|y| y.qs.map(|q| f64::from(y.d) * f64::from(q)));
    w.iter().zip(act).map(|(&w, a)| (f64::from(w) * a).abs()).sum()
}

fn reference<B: Weights>(row: &[B], x: &[BlockQ8K]) -> f64 {
    let mut w = vec![0f32; row.len() * QK_K];
    B::dequantize(row, &mut w);
    let act = x.iter().flat_map(|y| y.qs.map(|q| f64::from(y.d) * f64::from(q)));
    w.iter().zip(act).map(|(&w, a)| f64::from(w) * a).sum()
}

fn assert_close(what: &str, got: f32, want: f64, scale: f64) {
    let err = (f64::from(got) - want).abs();
    assert!(err <= 1e-5 * scale.max(1e-6), "{what}: got {got}, want {want} (error {err:e}, scale {scale:e})");
}

fn check_tiles<B: Weights, const A: usize, const QH: bool>(rng: &mut impl Rng, nb: usize) {
    let rows: Vec<Vec<B>> = (0..4).map(|_| B::random(rng, nb)).collect();
    let flat: Vec<B> = rows.concat();
    let packed = B::pack(4, nb * QK_K, &flat);
    let acts: Vec<Vec<BlockQ8K>> = (0..A).map(|_| quantize(&random_acts(rng, nb * QK_K))).collect();
    let x: [&[BlockQ8K]; A] = std::array::from_fn(|a| acts[a].as_slice());
    let (w, qh) = packed.group(0);
    assert_eq!(qh.len(), if QH { nb } else { 0 });
    let scalar = tile_scalar::<A, QH>(w, qh, x);
    let mut simd: Vec<(&str, [[f32; 4]; A])> = vec![("dispatch", tile::<A, QH>(w, qh, x))];
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    // SAFETY: the cfg guarantees the features the kernel is compiled for.
    simd.push(("avx2", unsafe { x86::avx2::tile::<A, QH>(w, qh, x) }));
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512vnni"))]
    // SAFETY: the cfg guarantees the features the kernel is compiled for.
    simd.push(("avx512", unsafe { x86::avx512::tile::<A, QH>(w, qh, x) }));
    for a in 0..A {
        for r in 0..4 {
            let scale = magnitude(&rows[r], &acts[a]);
            let want = reference(&rows[r], &acts[a]);
            assert_close("scalar vs f64", scalar[a][r], want, scale);
            for (name, got) in &simd {
                assert_close(name, got[a][r], want, scale);
            }
        }
    }
}

#[test]
fn tiles_agree() {
    let mut rng = rng();
    for nb in [1, 2, 3, 6] {
        check_tiles::<BlockQ4K, 1, false>(&mut rng, nb);
        check_tiles::<BlockQ4K, 2, false>(&mut rng, nb);
        check_tiles::<BlockQ4K, 3, false>(&mut rng, nb);
        check_tiles::<BlockQ4K, 8, false>(&mut rng, nb);
        check_tiles::<BlockQ5K, 1, true>(&mut rng, nb);
        check_tiles::<BlockQ5K, 3, true>(&mut rng, nb);
        check_tiles::<BlockQ5K, 8, true>(&mut rng, nb);
    }
}

/// All-15 (Q4_K) and all-31 (Q5_K) codes, maximal scales and ±127 activations: the 16-bit pair
/// sums must not saturate.
#[test]
fn tiles_extremes() {
    let b = BlockQ4K { d: f16::from_f32(0.01), dmin: f16::from_f32(0.01), scales: [0xFF; 12], qs: [0xFF; 128] };
    let w = vec![b; 4 * 2];
    let b5 = BlockQ5K { d: b.d, dmin: b.dmin, scales: b.scales, qh: [0xFF; 32], qs: b.qs };
    let w5 = vec![b5; 4 * 2];
    let (packed, packed5) = (PackedQ4K::pack(4, 2 * QK_K, &w), PackedQ4K::pack_q5k(4, 2 * QK_K, &w5));
    // ggml maps the first value of largest magnitude to -127: all ones give all -127, and a
    // leading -1 before ones gives +127 everywhere else.
    for first in [1.0f32, -1.0] {
        let mut x = vec![1.0f32; 2 * QK_K];
        x[0] = first;
        x[QK_K] = first;
        let x = quantize(&x);
        let other = if first > 0.0 { -127 } else { 127 };
        assert!(x.iter().flat_map(|y| &y.qs[1..]).all(|&q| q == other));
        let want = reference(&w[..2], &x);
        let got = packed.tile(0, [&x]);
        for v in got[0] {
            assert!((f64::from(v) - want).abs() <= 1e-5 * want.abs(), "{v} vs {want}");
        }
        let want = reference(&w5[..2], &x);
        let got = packed5.tile(0, [&x]);
        for v in got[0] {
            assert!((f64::from(v) - want).abs() <= 1e-5 * want.abs(), "{v} vs {want}");
        }
    }
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
    let diff: Vec<f32> = got.iter().zip(want).map(|(a, b)| a - b).collect();
    norm(&diff) / norm(want)
}

/// `Matrix::matmul` against the f32 product of the dequantized weights (they differ by the
/// activation quantization only) and against candle's Q4_K kernel, which quantizes the
/// activations identically, so only the summation order differs.
fn check_matmul<B: Weights>() {
    let mut rng = rng();
    for (n, k) in [(1, 256), (4, 256), (7, 512), (13, 768), (66, 1536), (37, 256)] {
        let w = B::random(&mut rng, n * k / QK_K);
        let mat = Matrix::from_bytes("w", B::TY, n, k, as_bytes(&w)).unwrap();
        let float = mat.dequantized();
        for m in [1, 3, 7, 64] {
            let x = random_acts(&mut rng, m * k);
            let (mut got, mut want, mut cand) = (vec![0f32; m * n], vec![0f32; m * n], vec![0f32; m * n]);
            mat.matmul(&x, m, &mut got).unwrap();
            float.matmul(&x, m, &mut want).unwrap();
            k_quants::matmul::<B::Candle>((m, k, n), &x, as_candle(&w), &mut cand).unwrap();
            let rel = rel_err(&got, &want);
            assert!(rel < 1e-2, "{n}x{k} m={m}: relative error vs f32 {rel}");
            let rel = rel_err(&got, &cand);
            assert!(rel < 1e-5, "{n}x{k} m={m}: relative error vs candle {rel}");
        }
    }
}

#[test]
fn matmul_q4k_matches_float_and_candle() {
    check_matmul::<BlockQ4K>();
}

#[test]
fn matmul_q5k_matches_float_and_candle() {
    check_matmul::<BlockQ5K>();
}

#[test]
fn quantized_buffer_is_reused() {
    let x = random_acts(&mut rng(), 3 * QK_K);
    let first = with_quantized(&x, 3, QK_K, |q| (q.len(), q.as_ptr() as usize));
    assert_eq!(first.0, 3);
    let again = with_quantized(&x[..QK_K], 1, QK_K, |q| q.as_ptr() as usize);
    assert_eq!(first.1, again, "the thread-local buffer should be reused");
}
