//! `exo quantize`: a model written as a GGUF file with its matrices quantized, in one type or in
//! a mix chosen by measured sensitivity under a size budget.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use exo_models::convert::{self, Budget, QuantizeReport};
use exo_quant::QuantFormat;

#[derive(Args)]
pub struct QuantizeArgs {
    /// A .gguf file (quantized ones are dequantized first), a Hugging Face directory, or a name
    /// in the model cache.
    input: String,
    /// The .gguf file to write (must not exist).
    output: std::path::PathBuf,
    /// One type for every matrix: q3_K, q4_K, q5_K, q6_K, q8_0, q4_0, q4_1, q5_0, q5_1 (or f16, bf16,
    /// f32). Rows that do not fit a k-quant's 256-value blocks get llama.cpp's fallback type.
    #[arg(long = "type", short = 't', conflicts_with_all = ["target_bpw", "max_size"])]
    ty: Option<String>,
    /// Choose a type per matrix by measured sensitivity so that the file has this many bits per
    /// weight (file bits / weights, embeddings and output included).
    #[arg(long, conflicts_with = "max_size")]
    target_bpw: Option<f64>,
    /// Like --target-bpw, for a file size: 1.2GB, 800MB, 750MiB or a number of bytes (a bare
    /// K/M/G is binary, as for --memory-budget and --kv-memory).
    #[arg(long, value_parser = crate::parse_bytes)]
    max_size: Option<u64>,
    /// Text to measure sensitivity on (default: about 3 kB bundled with exo).
    #[arg(long)]
    calibration: Option<std::path::PathBuf>,
    /// With --type: choose each block's scales to minimise the error of the matrix's outputs on
    /// the calibration text (an importance matrix, as llama.cpp's --imatrix) instead of the
    /// error of its weights. Same types and sizes. The adaptive modes always do this.
    #[arg(long, requires = "ty")]
    imatrix: bool,
    /// CPU threads for calibration (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn main(a: QuantizeArgs) -> anyhow::Result<()> {
    crate::set_threads(a.threads)?;
    let input = crate::model_path::resolve(&a.input)?;
    let t = std::time::Instant::now();
    let context = || format!("quantizing {} to {}", input.display(), a.output.display());
    let budget = match (&a.target_bpw, &a.max_size) {
        (Some(b), _) if !(1.0..=32.0).contains(b) => bail!("--target-bpw {b} is outside 1..32"),
        (Some(b), _) => Some(Budget::BitsPerWeight(*b)),
        (None, Some(bytes)) => Some(Budget::Bytes(*bytes)),
        (None, None) => None,
    };
    let text = || -> anyhow::Result<String> {
        Ok(match &a.calibration {
            Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            None => exo_models::calibration::DEFAULT_TEXT.to_string(),
        })
    };
    let report = match (budget, &a.ty) {
        (Some(budget), _) => {
            let (report, plan) = convert::quantize_adaptive(&input, &a.output, budget, &text()?).with_context(context)?;
            eprintln!("predicted KL divergence from the float base (sum over tensors): {:.5}", plan.error());
            report
        }
        (None, Some(ty)) => {
            let target = QuantFormat::from_name(ty)
                .ok_or_else(|| anyhow!("--type '{ty}' is not a type exo writes ({})", convert::GGUF_TARGETS))?;
            if a.imatrix {
                convert::quantize_with_importance(&input, &a.output, target, &text()?).with_context(context)?
            } else {
                convert::quantize(&input, &a.output, target).with_context(context)?
            }
        }
        (None, None) => bail!("give --type, --target-bpw or --max-size"),
    };
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    print_table(&report);
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

/// The type of every matrix, one line per layer.
fn print_table(report: &QuantizeReport) {
    const PARTS: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];
    let mut layers: BTreeMap<usize, BTreeMap<&str, &str>> = BTreeMap::new();
    for (name, _, to) in &report.tensors {
        if let Some((l, part)) = name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            if let (Ok(l), Some(p)) = (l.parse(), part.strip_suffix(".weight")) {
                layers.entry(l).or_default().insert(p, to.name());
            }
        } else if name.ends_with(".weight") && *to != exo_formats::GgmlType::F32 {
            eprintln!("{name:<18} {to}");
        }
    }
    eprintln!("layer {}", PARTS.map(|p| format!("{p:>12}")).join(""));
    for (l, parts) in layers {
        eprintln!("{l:>5} {}", PARTS.map(|p| format!("{:>12}", parts.get(p).copied().unwrap_or("-"))).join(""));
    }
}
