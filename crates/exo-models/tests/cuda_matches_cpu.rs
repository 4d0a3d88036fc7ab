//! The CUDA forward pass against the CPU one on the same GGUF files: prompt logits and greedy
//! continuations must agree, with the whole model on the GPU and with only its last half there
//! (`--gpu-layers`, the CPU running the first half).
//!
//! Runs only in a `cuda` build and only where `EXO_GPU_MODELS` names models (comma-separated
//! paths): CI has neither a GPU nor the feature. tests/gpu/check.sh builds this test, and runs it
//! on a lent GPU machine with a real model and random-weight models of real shapes.
//!
//! The reference is the CPU path on dequantized f32 weights (the path that matches Hugging Face
//! `transformers` to ~1e-3 in the reference tests). Both fast paths round activations on their
//! way into quantized mat-vecs (the CPU to int8 groups of 32 or 256 as llama.cpp does, the GPU to
//! int8 groups of 32, multiplying prompts in f16 and keeping the KV cache in f16), so both land
//! some way off it; on random-weight models that amplify rounding (all-Q8_0, all-Q6_K) the CPU's
//! own quantized path is 2-6% off. So the GPU's logits must be no further from the reference
//! than the larger of 3% (relative L2) and 1.5 times the CPU's quantized path's distance, and
//! greedy tokens must match the CPU's quantized path until the CPU's top two logits are closer
//! than 5% of the logits' spread (a near-tie, where either choice is right within rounding).
#![cfg(feature = "cuda")]

use exo_models::{load, Device, GpuLayers, LoadOptions, LoadedModel, State};

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    // Long enough (~190 tokens) to go through the tiled prefill attention in several 64-token
    // chunks, each attending over the cache the earlier ones wrote, and end on a short one.
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg, a goldsmith \
     from Mainz, combined movable metal type, an oil-based ink and a wooden screw press adapted from those used \
     to make wine and paper. Before his workshop produced its first Bible, books in Europe were copied by hand, \
     mostly in monasteries, and a single volume could take a scribe many months. Within fifty years of the first \
     printed pages, presses were running in more than two hundred cities, and millions of books had been made. \
     The price of a book fell, literacy spread beyond the clergy and the nobility, and scholars could compare \
     identical copies of the same text for the first time. Historians still argue about how much of the \
     Reformation, the scientific revolution and the rise of newspapers the press caused, but few doubt that",
];
const STEPS: usize = 32;
const MAX_REL_ERR: f64 = 0.03;
const CPU_ERR_FACTOR: f64 = 1.5;
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
        let reference = load(path, &LoadOptions { dequantize: true, ..Default::default() }).expect("dequantized CPU load");
        // The whole model on the GPU, then the last half only (the CPU runs the first half).
        let n_layers = cpu.transformer.config().n_layers;
        for layers in [GpuLayers::Auto, GpuLayers::Count(n_layers / 2)] {
            let gpu = load(path, &LoadOptions { device: Device::Cuda(0), gpu_layers: layers, ..Default::default() }).expect("GPU load");
            let name = format!("{} ({layers:?})", path.file_name().unwrap_or_default().to_string_lossy());
            for prompt in PROMPTS {
                compare(&name, prompt, &cpu, &gpu, &reference, &mut failures);
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Runs the prompt through `m` in chunks of the state's batch size, as the engine does.
fn prefill(m: &LoadedModel, s: &mut State, tokens: &[u32], what: &str) {
    for chunk in tokens.chunks(s.max_batch()) {
        m.transformer.forward(s, chunk, false).unwrap_or_else(|e| panic!("{what} forward: {e}"));
    }
}

/// Prefill and greedy decoding of `prompt` on the three loads, with the findings printed and
/// any over-tolerance ones added to `failures`.
fn compare(name: &str, prompt: &str, cpu: &LoadedModel, gpu: &LoadedModel, reference: &LoadedModel, failures: &mut Vec<String>) {
    let vocab = cpu.transformer.config().vocab_size;
    let add_bos = cpu.tokenizer.adds_bos();
    let mut tokens = cpu.tokenizer.encode(prompt, add_bos, false).expect("encode");
    // Random-weight models built from another model's tokenizer may have fewer rows.
    tokens.retain(|&t| (t as usize) < vocab);
    let ctx = tokens.len() + STEPS + 1;
    let (mut sc, mut sg, mut sr) = (state(cpu, ctx), state(gpu, ctx), state(reference, ctx));
    prefill(cpu, &mut sc, &tokens, "CPU");
    prefill(gpu, &mut sg, &tokens, "GPU");
    prefill(reference, &mut sr, &tokens, "reference");
    let errs =
        |sg: &State, sc: &State, sr: &State| (rel_err(sg.last_logits(), sr.last_logits()), rel_err(sc.last_logits(), sr.last_logits()));
    let (prefill_gpu, prefill_cpu) = errs(&sg, &sc, &sr);
    let (mut worst_gpu, mut worst_cpu) = (prefill_gpu, prefill_cpu);
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
        reference.transformer.forward(&mut sr, &[tc], false).expect("reference decode");
        let (eg, ec) = errs(&sg, &sc, &sr);
        worst_gpu = worst_gpu.max(eg);
        worst_cpu = worst_cpu.max(ec);
    }
    println!(
        "{name} | {:?}: rel err vs dequantized f32: GPU prefill {prefill_gpu:.2e}, worst {worst_gpu:.2e}; CPU quantized prefill {prefill_cpu:.2e}, worst {worst_cpu:.2e}; greedy tokens equal for {same}/{STEPS} steps{}",
        &prompt[..prompt.len().min(24)],
        match diverged {
            Some((s, true)) => format!(" (diverged at step {s} on a CPU near-tie)"),
            Some((s, false)) => format!(" (DIVERGED at step {s}, no tie)"),
            None => String::new(),
        }
    );
    let limit = MAX_REL_ERR.max(CPU_ERR_FACTOR * worst_cpu);
    if worst_gpu > limit {
        failures.push(format!("{name} {prompt:?}: GPU logits {worst_gpu:.3e} from the dequantized reference, over {limit:.3e}"));
    }
    if let Some((s, false)) = diverged {
        failures.push(format!("{name} {prompt:?}: greedy tokens differ at step {s} without a near-tie"));
    }
}
