//! Q8_0, Q6_K and Q5_0 kernels (`kquant_q8q6`) against candle's `k_quants::matmul` on the same weights.
//!
//! `cargo bench -p exo-kernels --bench q8q6` prints GFLOP/s for a decode step (`m = 1`) and a
//! 64-token prompt chunk (`m = 64`), activation quantization included, on one thread unless
//! `Q8Q6_BENCH_THREADS` says otherwise. Shapes are Qwen2.5-Coder 0.5B/1.5B matrices (the
//! 151936-row ones are the LM heads). Timings are the 10th percentile of repeated calls, steadier
//! than the mean on a shared machine. `Q8Q6_BENCH_FILTER=q6` runs only matching lines.

use candle_core::quantized::k_quants;
use exo_formats::GgmlType;
use exo_kernels::Matrix;
use half::f16;
use rand::{Rng, SeedableRng};

mod support;
use support::{threads_from_env, time};

/// Random ggml blocks: random code bytes, with the f16 scale fields set to small values.
fn random_blocks(rng: &mut impl Rng, ty: GgmlType, n: usize, k: usize) -> Vec<u8> {
    let (size, d_at) = match ty {
        GgmlType::Q8_0 => (34, 0),
        GgmlType::Q6K => (210, 208),
        GgmlType::Q5_0 => (22, 0),
        _ => unreachable!(),
    };
    let mut bytes = vec![0u8; ty.row_bytes(k).unwrap() * n];
    rng.fill(bytes.as_mut_slice());
    for b in bytes.chunks_exact_mut(size) {
        let d = f16::from_f32(rng.random_range(0.0001..0.001)).to_le_bytes();
        b[d_at..d_at + 2].copy_from_slice(&d);
    }
    bytes
}

fn cast<T>(b: &[u8]) -> Vec<T> {
    let n = b.len() / std::mem::size_of::<T>();
    let mut v = Vec::with_capacity(n);
    // SAFETY: candle's block types are plain data; the copy provides their alignment.
    unsafe {
        std::ptr::copy_nonoverlapping(b.as_ptr(), v.as_mut_ptr() as *mut u8, b.len());
        v.set_len(n);
    }
    v
}

fn main() {
    let threads = threads_from_env("Q8Q6_BENCH_THREADS");
    let filter = std::env::var("Q8Q6_BENCH_FILTER").unwrap_or_default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    println!("{threads} thread(s); GFLOP/s (2·m·n·k / time)");
    println!("{:<6} {:>12} {:>4} {:>10} {:>10} {:>7}", "type", "n x k", "m", "exo", "candle", "ratio");
    for (ty, n, k) in [
        (GgmlType::Q8_0, 896, 896),
        (GgmlType::Q8_0, 4864, 896),
        (GgmlType::Q8_0, 151936, 896),
        (GgmlType::Q6K, 1536, 1536),
        (GgmlType::Q6K, 8960, 1536),
        (GgmlType::Q6K, 151936, 1536),
        (GgmlType::Q5_0, 896, 896),
        (GgmlType::Q5_0, 4864, 896),
        (GgmlType::Q5_0, 896, 4864),
    ] {
        let name = format!("{} {n}x{k}", ty.name());
        if !name.contains(&filter) {
            continue;
        }
        let bytes = random_blocks(&mut rng, ty, n, k);
        let mat = Matrix::from_bytes("w", ty, n, k, &bytes).expect("sizes match");
        let (q8, q6, q5) = match ty {
            GgmlType::Q8_0 => (cast::<k_quants::BlockQ8_0>(&bytes), Vec::new(), Vec::new()),
            GgmlType::Q6K => (Vec::new(), cast::<k_quants::BlockQ6K>(&bytes), Vec::new()),
            _ => (Vec::new(), Vec::new(), cast::<k_quants::BlockQ5_0>(&bytes)),
        };
        drop(bytes);
        for m in [1, 64] {
            if n > 100_000 && m > 1 {
                continue; // LM heads only ever see one row per sequence step
            }
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut out = vec![0f32; m * n];
            let t_exo = time(|| mat.matmul(&x, m, &mut out).expect("shapes"));
            let t_candle = time(|| match ty {
                GgmlType::Q8_0 => k_quants::matmul::<k_quants::BlockQ8_0>((m, k, n), &x, &q8, &mut out).unwrap(),
                GgmlType::Q6K => k_quants::matmul::<k_quants::BlockQ6K>((m, k, n), &x, &q6, &mut out).unwrap(),
                _ => k_quants::matmul::<k_quants::BlockQ5_0>((m, k, n), &x, &q5, &mut out).unwrap(),
            });
            let gf = |t: f64| 2.0 * (m * n * k) as f64 / t / 1e9;
            println!(
                "{:<6} {:>12} {m:>4} {:>10.1} {:>10.1} {:>6.2}x",
                ty.name(),
                format!("{n}x{k}"),
                gf(t_exo),
                gf(t_candle),
                t_candle / t_exo
            );
        }
    }
}
