//! Matrix-vector speed of exo's Q4_1/Q5_0 (packed) and Q5_1 kernels against candle's Q4_0 and exo's packed Q8_0.
//!
//! `cargo bench -p exo-kernels --bench legacy` prints GFLOP/s of one decode step (`m = 1`,
//! activation quantization included) through `Matrix::matmul`, on one thread unless
//! `LEGACY_BENCH_THREADS` says otherwise. candle's Q4_0 (its AVX2 path, on the same thread pool)
//! is the yardstick. Timings are the 10th percentile of many calls, steadier than the mean on a
//! shared machine.

use candle_core::quantized::k_quants::{self, GgmlType as _};
use exo_formats::GgmlType;
use exo_kernels::legacy_quants::{BlockQ4_1, BlockQ5_0, BlockQ5_1, LegacyBlock};
use exo_kernels::Matrix;
use half::f16;
use rand::{Rng, SeedableRng};

mod support;
use support::{as_bytes, threads_from_env, time};

fn main() {
    let threads = threads_from_env("LEGACY_BENCH_THREADS");
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for (n, k) in [(1536, 576), (4864, 896)] {
        let nb = n * k / 32;
        let x: Vec<f32> = (0..k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let wf: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut q4_0 = vec![k_quants::BlockQ4_0::zeros(); nb];
        k_quants::BlockQ4_0::from_float(&wf, &mut q4_0);
        let mut q8_0 = vec![k_quants::BlockQ8_0::zeros(); nb];
        k_quants::BlockQ8_0::from_float(&wf, &mut q8_0);
        let mut half = |lo: f32, hi: f32| f16::from_f32(rng.random_range(lo..hi));
        let (d, m): (Vec<_>, Vec<_>) = (0..nb).map(|_| (half(0.001, 0.02), half(-0.1, 0.0))).unzip();
        let qs: Vec<[u8; 16]> = (0..nb).map(|_| rng.random()).collect();
        let qh: Vec<[u8; 4]> = (0..nb).map(|_| rng.random()).collect();
        let q4_1: Vec<_> = (0..nb).map(|i| BlockQ4_1 { d: d[i], m: m[i], qs: qs[i] }).collect();
        let q5_0: Vec<_> = (0..nb).map(|i| BlockQ5_0 { d: d[i], qh: qh[i], qs: qs[i] }).collect();
        let q5_1: Vec<_> = (0..nb).map(|i| BlockQ5_1 { d: d[i], m: m[i], qh: qh[i], qs: qs[i] }).collect();

        println!("{n}x{k} matvec, {threads} thread(s):");
        let t = time(|| {
            std::hint::black_box(BlockQ4_1::with_quantized(&x, 1, k, |q| q.len()));
        });
        println!("  (quantizing the activations alone: {:.2} us)", t * 1e6);
        let mut out = vec![0f32; n];
        for (name, ty, bytes) in [
            ("q4_0 (candle)", GgmlType::Q4_0, as_bytes(&q4_0)),
            ("q8_0 (exo, packed)", GgmlType::Q8_0, as_bytes(&q8_0)),
            ("q4_1 (exo, packed)", GgmlType::Q4_1, as_bytes(&q4_1)),
            ("q5_0 (exo, packed)", GgmlType::Q5_0, as_bytes(&q5_0)),
            ("q5_1", GgmlType::Q5_1, as_bytes(&q5_1)),
        ] {
            let mat = Matrix::from_bytes(name, ty, n, k, bytes).expect("sizes match");
            let t = time(|| mat.matmul(&x, 1, &mut out).expect("shapes match"));
            let gflops = 2.0 * (n * k) as f64 / t / 1e9;
            println!("  {name:<14} {:8.1} us {gflops:7.1} GFLOP/s", t * 1e6);
        }
    }
}
