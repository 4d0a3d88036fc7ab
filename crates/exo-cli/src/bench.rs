//! `exo bench`: prompt-processing and generation throughput, measured like llama-bench.
//!
//! As in llama-bench, `pp` evaluates `p` random tokens from an empty cache in one batch and `tg`
//! decodes `n` tokens one at a time from an empty cache (feeding random tokens, no sampling), so
//! the two tools' figures compare directly. Each test runs once to warm up, then `reps` times.
//! With `--parallel`, it measures batched prefill and decode instead ([`parallel`]).

mod parallel;

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use exo_engine::Session;
use rand::{Rng, SeedableRng};

#[derive(Args)]
pub struct BenchArgs {
    /// A .gguf file, a Hugging Face directory, or a name in the model cache.
    model: String,
    /// Prompt tokens for the prompt-processing test (0: skip).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Tokens for the generation test (0: skip).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    /// Repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 5)]
    reps: usize,
    /// CPU threads (default: all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    #[command(flatten)]
    placement: crate::model_path::DeviceArgs,
    /// Tokens evaluated per forward call during prompt processing.
    #[arg(short = 'b', long, default_value_t = 512)]
    batch: usize,
    /// Context the KV cache is sized for (default: just enough for the tests, as llama-bench
    /// sizes it); a larger one measures the memory a long context takes.
    #[arg(short = 'c', long = "ctx-size")]
    ctx_size: Option<usize>,
    /// KV cache storage: f16 (llama-bench's default), q8_0 or f32.
    #[arg(long = "kv-type", default_value = "f16", value_parser = crate::parse_kv_type)]
    kv_type: exo_models::KvType,
    /// Sequences prefilled and decoded together, a comma-separated list (e.g. 8,32): replaces
    /// the pp/tg tests with llama-batched-bench's, each B with `-p` prompt and `-n` generated
    /// tokens per sequence (alias --npl, llama-batched-bench's flag).
    #[arg(long, alias = "npl", value_delimiter = ',', value_parser = parallel::parse_sequences)]
    parallel: Vec<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// A `--json` result: the fields every one has (the model, where it ran, its load time), then
/// the test's own `fields` (a JSON object).
fn json_result(model: &exo_models::LoadedModel, threads: usize, load_s: f64, fields: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({
        "model": model.info.path.display().to_string(),
        "arch": model.transformer.config().arch.name(),
        "params": model.info.n_params,
        "weight_bytes": model.transformer.weight_bytes(),
        "threads": threads,
        "device": model.transformer.device(),
        "load_s": load_s,
    });
    if let (Some(all), serde_json::Value::Object(own)) = (v.as_object_mut(), fields) {
        all.extend(own);
    }
    v
}

/// Mean and sample standard deviation.
fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

pub fn main(a: BenchArgs) -> anyhow::Result<()> {
    let threads = crate::set_threads(a.threads)?;
    if a.reps == 0 {
        anyhow::bail!("--reps must be at least 1");
    }
    let batched = !a.parallel.is_empty();
    if batched {
        parallel::check_flags(&a)?;
    }
    let t_load = Instant::now();
    let opts = a.placement.load_options(Some(if batched { parallel::kv_tokens(&a) } else { a.ctx_size.unwrap_or(a.n_prompt.max(a.n_gen + 1)) }))?;
    let model = crate::model_path::load_path(&crate::model_path::resolve(&a.model)?, &opts)?;
    let load_s = t_load.elapsed().as_secs_f64();
    if batched {
        return parallel::run(&a, &model, threads, load_s);
    }
    let vocab = model.transformer.config().vocab_size as u32;
    let needed = a.n_prompt.max(a.n_gen + 1).max(1);
    let ctx = a.ctx_size.unwrap_or(needed);
    if ctx < needed {
        anyhow::bail!("--ctx-size {ctx} cannot hold the tests (-p {} / -n {} need {needed})", a.n_prompt, a.n_gen);
    }
    let mut session = Session::with_kv_type(&model, ctx, a.batch.max(1), a.kv_type).context("-p/-n")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let first = model.tokenizer.bos_id().filter(|_| model.tokenizer.adds_bos());

    let mut pp = Vec::new();
    if a.n_prompt > 0 {
        for rep in 0..=a.reps {
            let mut tokens: Vec<u32> = (0..a.n_prompt).map(|_| rng.random_range(0..vocab)).collect();
            if let Some(b) = first {
                tokens[0] = b;
            }
            session.clear();
            let t = Instant::now();
            session.prefill(&model, &tokens)?;
            if rep > 0 {
                pp.push(a.n_prompt as f64 / t.elapsed().as_secs_f64());
            }
        }
    }
    let mut tg = Vec::new();
    if a.n_gen > 0 {
        for rep in 0..=a.reps {
            session.clear();
            let mut token = first.unwrap_or_else(|| rng.random_range(0..vocab));
            let t = Instant::now();
            let mut fed = Vec::with_capacity(a.n_gen);
            for _ in 0..a.n_gen {
                fed.push(token);
                session.prefill(&model, &fed)?;
                token = rng.random_range(0..vocab);
            }
            if rep > 0 {
                tg.push(a.n_gen as f64 / t.elapsed().as_secs_f64());
            }
        }
    }
    let (pp_m, pp_sd) = if pp.is_empty() { (0.0, 0.0) } else { mean_sd(&pp) };
    let (tg_m, tg_sd) = if tg.is_empty() { (0.0, 0.0) } else { mean_sd(&tg) };
    let cfg = model.transformer.config();
    if a.json {
        let fields = serde_json::json!({
            "n_prompt": a.n_prompt,
            "n_gen": a.n_gen,
            "ctx_size": ctx,
            "reps": a.reps,
            "pp_tps": pp_m,
            "pp_tps_sd": pp_sd,
            "tg_tps": tg_m,
            "tg_tps_sd": tg_sd,
        });
        println!("{}", json_result(&model, threads, load_s, fields));
    } else {
        let size = model.transformer.weight_bytes() as f64 / (1u64 << 20) as f64;
        let params = model.info.n_params as f64 / 1e6;
        println!("| model | size | params | threads | test | t/s |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        let name = format!("{} {}", cfg.arch.name(), model.info.name);
        if a.n_prompt > 0 {
            println!("| {name} | {size:.1} MiB | {params:.1} M | {threads} | pp{} | {pp_m:.2} ± {pp_sd:.2} |", a.n_prompt);
        }
        if a.n_gen > 0 {
            println!("| {name} | {size:.1} MiB | {params:.1} M | {threads} | tg{} | {tg_m:.2} ± {tg_sd:.2} |", a.n_gen);
        }
    }
    Ok(())
}
