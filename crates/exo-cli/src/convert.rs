//! `exo convert`: GGUF file <-> Hugging Face directory.

use anyhow::{anyhow, Context};
use clap::Args;
use exo_models::convert::{self, DType};

#[derive(Args)]
pub struct ConvertArgs {
    /// A .gguf file, or a Hugging Face directory (safetensors or pytorch_model.bin), or a name in
    /// the model cache.
    input: String,
    /// The output: a directory for a GGUF input, a .gguf file for a directory input.
    output: std::path::PathBuf,
    /// Float type of the tensors written: f32, f16 or bf16 (default: f32 for GGUF -> Hugging
    /// Face, each tensor's own type the other way).
    #[arg(long)]
    dtype: Option<String>,
}

pub fn main(a: ConvertArgs) -> anyhow::Result<()> {
    let dtype = match a.dtype.as_deref() {
        None => None,
        Some(d) => Some(DType::from_name(d).ok_or_else(|| anyhow!("--dtype '{d}' is not one of f32, f16, bf16"))?),
    };
    let input = crate::model_path::resolve(&a.input)?;
    let t = std::time::Instant::now();
    let notes = convert::convert(&input, &a.output, dtype)
        .with_context(|| format!("converting {} to {}", input.display(), a.output.display()))?;
    for n in notes {
        eprintln!("note: {n}");
    }
    eprintln!("wrote {} in {:.1?}", a.output.display(), t.elapsed());
    Ok(())
}
