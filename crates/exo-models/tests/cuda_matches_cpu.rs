//! The CUDA forward pass against the CPU one on the same GGUF files: prompt logits and greedy
//! continuations must agree.
//!
//! Runs only in a `cuda` build and only where `EXO_GPU_MODELS` names models (comma-separated
//! paths): CI has neither a GPU nor the feature. tests/gpu/check.sh builds this test, and runs it
//! on a lent GPU machine with a real model and random-weight models of real shapes.
//!
//! Tolerances: the GPU rounds activations to int8 groups of 32 for its mat-vecs, keeps the KV
//! cache in f16 and multiplies prompts in f16 (the CPU keeps f32 and its own int8 grouping), so
//! logits differ by rounding: the relative L2 error must stay under 3%, and greedy tokens must
//! match until the CPU's top two logits are closer than 5% of the logits' spread (a near-tie,
//! where either choice is right within rounding).
#![cfg(feature = "cuda")]

use exo_models::{load, Device, LoadOptions, LoadedModel, State};

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
];
const STEPS: usize = 32;
const MAX_REL_ERR: f64 = 0.03;
const TIE_FRACTION: f32 = 0.05;

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) }).0 as u32
}

/// Whether the top two logits are within the tie margin.
fn near_tie(v: &[f32]) -> bool {
    let mut s = v.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    let spread = s[0] - s[s.len() - 1];
    s[0] - s[1] < TIE_FRACTION * spread.max(1e-6)
}

fn state(m: &LoadedModel, ctx: usize) -> State {
    m.transformer.new_state(ctx, 64).expect("state")
}

#[test]
fn gpu_forward_matches_cpu() {
    let Ok(paths) = std::env::var("EXO_GPU_MODELS") else {
        eprintln!("EXO_GPU_MODELS unset: nothing to compare");
        return;
    };
    let mut failures = Vec::new();
    for path in paths.split(',').filter(|p| !p.is_empty()) {
        let path = std::path::Path::new(path);
        let cpu = load(path, &LoadOptions::default()).expect("CPU load");
        let gpu = load(path, &LoadOptions { device: Device::Cuda(0), ..Default::default() }).expect("GPU load");
        let vocab = cpu.transformer.config().vocab_size;
        for prompt in PROMPTS {
            let add_bos = cpu.tokenizer.adds_bos();
            let mut tokens = cpu.tokenizer.encode(prompt, add_bos, false).expect("encode");
            // Random-weight models built from another model's tokenizer may have fewer rows.
            tokens.retain(|&t| (t as usize) < vocab);
            let ctx = tokens.len() + STEPS + 1;
            let (mut sc, mut sg) = (state(&cpu, ctx), state(&gpu, ctx));
            cpu.transformer.forward(&mut sc, &tokens, false).expect("CPU forward");
            gpu.transformer.forward(&mut sg, &tokens, false).expect("GPU forward");
            let prefill_err = rel_err(sg.last_logits(), sc.last_logits());
            let mut worst = prefill_err;
            let (mut same, mut diverged) = (0, None);
            for step in 0..STEPS {
                let (tc, tg) = (argmax(sc.last_logits()), argmax(sg.last_logits()));
                if tc != tg {
                    diverged = Some((step, near_tie(sc.last_logits())));
                    break;
                }
                same += 1;
                cpu.transformer.forward(&mut sc, &[tc], false).expect("CPU decode");
                gpu.transformer.forward(&mut sg, &[tg], false).expect("GPU decode");
                worst = worst.max(rel_err(sg.last_logits(), sc.last_logits()));
            }
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            println!(
                "{name} | {:?}: prefill rel err {prefill_err:.2e}, worst {worst:.2e}; greedy tokens equal for {same}/{STEPS} steps{}",
                &prompt[..prompt.len().min(24)],
                match diverged {
                    Some((s, true)) => format!(" (diverged at step {s} on a CPU near-tie)"),
                    Some((s, false)) => format!(" (DIVERGED at step {s}, no tie)"),
                    None => String::new(),
                }
            );
            if worst > MAX_REL_ERR {
                failures.push(format!("{name} {prompt:?}: relative logit error {worst:.3e} over {MAX_REL_ERR}"));
            }
            if let Some((s, false)) = diverged {
                failures.push(format!("{name} {prompt:?}: greedy tokens differ at step {s} without a near-tie"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
