//! `exo quantize`: a model written as a GGUF file with its matrices in one quantized type.

use anyhow::{anyhow, Context};
use clap::Args;
use exo_models::convert;
use exo_quant::QuantFormat;

#[derive(Args)]
pub struct QuantizeArgs {
    /// A .gguf file (quantized ones are dequantized first), a Hugging Face directory, or a name
    /// in the model cache.
    input: String,
    /// The .gguf file to write (must not exist).
    output: std::path::PathBuf,
    /// The type of the matrices: q4_K, q5_K, q6_K, q8_0, q4_0, q4_1, q5_0, q5_1 (or f16, bf16,
    /// f32). Rows that do not fit a k-quant's 256-value blocks get llama.cpp's fallback type.
    #[arg(long = "type", short = 't')]
    ty: String,
    /// CPU threads for dequantization (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn main(a: QuantizeArgs) -> anyhow::Result<()> {
    crate::set_threads(a.threads)?;
    let target = QuantFormat::from_name(&a.ty)
        .ok_or_else(|| anyhow!("--type '{}' is not a type exo writes ({})", a.ty, convert::GGUF_TARGETS))?;
    let input = crate::model_path::resolve(&a.input)?;
    let t = std::time::Instant::now();
    let report = convert::quantize(&input, &a.output, target)
        .with_context(|| format!("quantizing {} to {}", input.display(), a.output.display()))?;
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    let types: Vec<String> = report.type_counts().iter().map(|(t, n)| format!("{n} {t}")).collect();
    eprintln!(
        "wrote {} in {:.1?}: {} tensors ({}), {:.1} MB, {:.3} bits per weight",
        a.output.display(),
        t.elapsed(),
        report.tensors.len(),
        types.join(", "),
        report.file_bytes as f64 / 1e6,
        report.bits_per_weight()
    );
    Ok(())
}
