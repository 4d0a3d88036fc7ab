//! `exo perplexity`: llama.cpp's perplexity (and KL divergence against a base model) of a text.

use anyhow::Context;
use clap::Args;
use exo_engine::perplexity::{self, PerplexityParams};
use exo_models::LoadOptions;

#[derive(Args)]
pub struct PerplexityArgs {
    /// A .gguf file, a Hugging Face directory, or a name in the model cache.
    model: String,
    /// The text file to score.
    #[arg(short, long)]
    file: std::path::PathBuf,
    /// Tokens per chunk; the second half of each chunk is scored.
    #[arg(short, long, default_value_t = 512)]
    ctx: usize,
    /// Tokens per forward call (default: the whole chunk).
    #[arg(short, long)]
    batch: Option<usize>,
    /// Score at most this many chunks.
    #[arg(long)]
    chunks: Option<usize>,
    /// Also report the KL divergence from this model's distributions: a model path or name, or
    /// `dequantized` for MODEL's own weights widened to f32.
    #[arg(long)]
    kld_base: Option<String>,
    /// Re-quantize MODEL's matrices to this format while loading (q4_K, q8_0, nf4, fp8, int8,
    /// int4, ..., or auto with --memory-budget: see exo run --help); the KLD base is loaded as it is.
    #[arg(long)]
    quantize: Option<String>,
    #[command(flatten)]
    auto_quant: crate::model_path::AutoQuantArgs,
    /// CPU threads (default: all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
}

pub fn main(a: PerplexityArgs) -> anyhow::Result<()> {
    crate::set_threads(a.threads)?;
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let path = crate::model_path::resolve(&a.model)?;
    let quantize = crate::model_path::quantize_flags(a.quantize.as_deref(), &a.auto_quant)?;
    let model = crate::model_path::load_quantized(&path, &LoadOptions::default(), quantize.as_ref())?;
    let base = match a.kld_base.as_deref() {
        None => None,
        Some("dequantized") => Some(crate::model_path::load_path(&path, &LoadOptions { dequantize: true, ..Default::default() })?),
        Some(other) => Some(crate::model_path::load_path(&crate::model_path::resolve(other)?, &LoadOptions::default())?),
    };
    let tokens = perplexity::tokenize(&model, &text)?;
    let params = PerplexityParams { ctx: a.ctx, batch: a.batch.unwrap_or(a.ctx), max_chunks: a.chunks };
    eprintln!("{} tokens; scoring chunks of {} tokens", tokens.len(), a.ctx);
    let report = perplexity::perplexity(&model, base.as_ref(), &tokens, &params, |p| match p.kld {
        Some(k) => eprintln!("[{}/{}] PPL {:.4}  KLD {:.6}", p.done, p.total, p.ppl, k),
        None => eprintln!("[{}/{}] PPL {:.4}", p.done, p.total, p.ppl),
    })?;
    println!("Final estimate: PPL = {:.4} +/- {:.5} ({} chunks, {} tokens scored)", report.ppl, report.ppl_stderr, report.chunks, report.scored);
    if let Some(k) = report.kld {
        println!("Base PPL = {:.4} +/- {:.5}", k.base_ppl, k.base_ppl_stderr);
        println!("Mean KLD = {:.6} +/- {:.6}", k.mean, k.stderr);
        println!("Same top token = {:.3} %", 100.0 * k.top1_agreement);
    }
    Ok(())
}
