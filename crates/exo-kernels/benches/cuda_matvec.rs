//! The GPU decode step's kernels one at a time, on the matrices of a Llama-3-8B Q4_K_M file.
//!
//! `cargo bench -p exo-kernels --features cuda --bench cuda_matvec` (on a machine with an NVIDIA
//! GPU) prints, per matrix class, microseconds per launch and the rate the weights are read at,
//! for 1 token and for the several-token kernels, then what one token's mat-vecs add up to.
//! Each class is uploaded in enough copies (at least 512 MiB) that consecutive launches miss
//! the L2 cache, as the layers of a real step do; launches are captured as a CUDA graph and the
//! graph replayed, so host launch cost is left out as it is in exo's decode step.

use std::time::Instant;

use exo_formats::GgmlType;
use exo_kernels::cuda::{Act, Gpu, GpuError, GpuMatrix};
use exo_quant::QuantFormat;
use rand::{Rng, SeedableRng};

/// Bytes of copies per class: several times the H100/H200's 50 MB L2.
const SPAN: usize = 512 << 20;

/// (what, type, rows, cols, launches per token) for Llama-3-8B Q4_K_M: q and k stacked, v and
/// half the down projections in Q6_K (llama.cpp's Q4_K_M mix), gate and up stacked.
const CLASSES: [(&str, GgmlType, usize, usize, usize); 7] = [
    ("q+k", GgmlType::Q4K, 5120, 4096, 32),
    ("v", GgmlType::Q6K, 1024, 4096, 32),
    ("o", GgmlType::Q4K, 4096, 4096, 32),
    ("gate+up", GgmlType::Q4K, 28672, 4096, 32),
    ("down q4_k", GgmlType::Q4K, 4096, 14336, 16),
    ("down q6_k", GgmlType::Q6K, 4096, 14336, 16),
    ("lm head", GgmlType::Q6K, 128256, 4096, 1),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gpu = Gpu::new(0)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    println!(
        "{}: quantized mat-vecs, graph-replayed, weights not in L2",
        gpu.describe()
    );
    let tokens = [1, 2, 4, 8];
    let max_cols = CLASSES.iter().map(|c| c.3).max().unwrap_or(0);
    let max_rows = CLASSES.iter().map(|c| c.2).max().unwrap_or(0);
    let x: Vec<i8> = (0..8 * max_cols)
        .map(|_| rng.random_range(-127..=127))
        .collect();
    let ds: Vec<[f32; 2]> = (0..8 * max_cols / 32)
        .map(|_| [rng.random_range(0.001..0.01), rng.random_range(-1.0..1.0)])
        .collect();
    let xq = gpu.upload(&x, "activations")?;
    let xds = gpu.upload(&ds, "activation scales")?;
    let y = gpu.alloc(8 * max_rows * 4, "outputs")?;
    let act = Act::new(0, xq.ptr(), xds.ptr());

    print!("| matrix | type | rows x cols | MB |");
    for t in tokens {
        print!(" {t} tok us | GB/s |");
    }
    println!();
    println!("|---|---|---|---:|{}", "---:|---:|".repeat(tokens.len()));
    let mut token_us = 0.0;
    let mut token_bytes = 0usize;
    for (what, ty, rows, cols, per_token) in CLASSES {
        let bytes = ty.row_bytes(cols).expect("whole blocks") * rows;
        let copies = SPAN.div_ceil(bytes).max(2);
        let mats = (0..copies)
            .map(|i| {
                let mut data = vec![0u8; bytes];
                rng.fill(&mut data[..]);
                gpu.matrix(&format!("{what} {i}"), QuantFormat::Ggml(ty), rows, cols, &data)
            })
            .collect::<Result<Vec<GpuMatrix>, _>>()?;
        print!(
            "| {what} | {} | {rows}x{cols} | {:.1} |",
            ty.name(),
            bytes as f64 / 1e6
        );
        for t in tokens {
            let us = time_each(&gpu, &mats, |m| gpu.matvec(m, act, t, y.ptr(), rows, false))?;
            print!(" {us:.2} | {:.0} |", bytes as f64 / us / 1e3);
            if t == 1 {
                token_us += us * per_token as f64;
                token_bytes += bytes * per_token;
            }
        }
        println!();
    }
    // The small kernels between the mat-vecs: their time is mostly launch and ramp-up.
    let hidden = gpu.alloc(4096 * 4, "hidden")?;
    let norm_w = gpu.alloc(4096 * 4, "norm weight")?;
    let gu = gpu.alloc(2 * 14336 * 4, "gate and up")?;
    let out = gpu.alloc(14336 * 4, "activation out")?;
    let one = [()];
    let norm_us = time_each(&gpu, &one, |_| gpu.rms_norm(hidden.ptr(), 0, norm_w.ptr(), Act::new(out.ptr(), xq.ptr(), xds.ptr()), 1, 4096, 1e-5))?;
    let glu_us = time_each(&gpu, &one, |_| gpu.glu(gu.ptr(), 14336, 1, false, Act::new(out.ptr(), xq.ptr(), xds.ptr())))?;
    println!("\nrms_norm of 4096 with int8 groups: {norm_us:.2} us; SwiGLU of 14336 with int8 groups: {glu_us:.2} us");
    println!(
        "\none token's mat-vecs: {:.0} us for {:.2} GB, {:.0} GB/s ({:.0} tokens/s if nothing else ran)",
        token_us,
        token_bytes as f64 / 1e9,
        token_bytes as f64 / token_us / 1e3,
        1e6 / token_us
    );
    Ok(())
}

/// Microseconds per launch of `launch` over `items` (matrices, or anything a launch takes) in
/// turn, from a captured graph of at least 64 launches replayed for at least 0.3 s after warm-up
/// replays.
fn time_each<T>(gpu: &Gpu, items: &[T], launch: impl Fn(&T) -> Result<(), GpuError>) -> Result<f64, Box<dyn std::error::Error>> {
    let rounds = 64usize.div_ceil(items.len());
    gpu.begin_capture()?;
    for _ in 0..rounds {
        for m in items {
            launch(m)?;
        }
    }
    let graph = gpu.end_capture()?;
    for _ in 0..3 {
        graph.launch()?;
    }
    gpu.sync()?;
    let start = Instant::now();
    let mut replays = 0;
    while replays < 5 || start.elapsed().as_secs_f64() < 0.3 {
        graph.launch()?;
        replays += 1;
        if replays % 8 == 0 {
            gpu.sync()?;
        }
    }
    gpu.sync()?;
    Ok(start.elapsed().as_secs_f64() * 1e6 / (replays * rounds * items.len()) as f64)
}
