//! Q4_K matrix products: exo's repacked kernels against candle's `k_quants::matmul`.
//!
//! `cargo bench -p exo-kernels --bench q4k` prints GFLOP/s for a decode step (`m = 1`) and
//! prompt chunks (`m = 64`, `m = 512`), activation quantization included, on one thread unless
//! `Q4K_BENCH_THREADS` says otherwise. Shapes are Qwen2.5 0.5B/1.5B projections whose input
//! length is a multiple of 256 (Q4_K cannot store rows of 896; GGUF files use Q5_0/Q8_0 there).
//! Timings are the 10th percentile of many calls, steadier than the mean on a shared machine.

use candle_core::quantized::k_quants;
use exo_formats::GgmlType;
use exo_kernels::kquant_q4k::BlockQ4K;
use exo_kernels::Matrix;
use half::f16;
use rand::{Rng, SeedableRng};

mod support;
use support::{as_bytes, threads_from_env, time};

fn main() {
    let threads = threads_from_env("Q4K_BENCH_THREADS");
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    println!("Q4_K GFLOP/s, {threads} thread(s) (n x k = output x input features)");
    println!("{:>11} {:>4} {:>9} {:>9} {:>7}", "n x k", "m", "exo", "candle", "ratio");
    for (n, k) in [(896, 4864), (1536, 1536), (8960, 1536), (1536, 8960)] {
        let nb = n * k / 256;
        let w: Vec<BlockQ4K> = (0..nb)
            .map(|_| BlockQ4K {
                d: f16::from_f32(rng.random_range(0.0001..0.002)),
                dmin: f16::from_f32(rng.random_range(0.0001..0.002)),
                scales: rng.random(),
                qs: std::array::from_fn(|_| rng.random()),
            })
            .collect();
        let mat = Matrix::from_bytes("w", GgmlType::Q4K, n, k, as_bytes(&w)).expect("sizes match");
        // SAFETY: candle's BlockQ4K has the same repr(C) layout (d, dmin, scales[12], qs[128]).
        let cw: &[k_quants::BlockQ4K] = unsafe { std::slice::from_raw_parts(w.as_ptr().cast(), nb) };
        for m in [1, 64, 512] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut out = vec![0f32; m * n];
            let flops = 2.0 * (m * n * k) as f64;
            let t_exo = time(|| mat.matmul(&x, m, &mut out).expect("shapes match"));
            let t_candle = time(|| k_quants::matmul::<k_quants::BlockQ4K>((m, k, n), &x, cw, &mut out).expect("shapes"));
            let (g_exo, g_candle) = (flops / t_exo / 1e9, flops / t_candle / 1e9);
            println!("{:>11} {m:>4} {g_exo:>9.1} {g_candle:>9.1} {:>6.2}x", format!("{n}x{k}"), g_exo / g_candle);
        }
    }
}
