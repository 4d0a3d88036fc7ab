//! `exo quantize --target-bpw X` / `--max-size SIZE`: a format per matrix chosen by measured
//! sensitivity under a size budget.
//!
//! 1. The base (the input's values re-quantized to Q8_0, nearly lossless) runs the calibration
//!    text and records the mean square of every input column of every matrix
//!    ([`crate::calibration`]): the importance that weighs each column's weight errors.
//! 2. Every matrix is packed in every candidate type (Q3_K, Q4_K, Q5_K, Q6_K, Q8_0; Q4_0, Q4_1,
//!    Q5_0, Q5_1, Q8_0 for rows that are not whole 256-value super-blocks), with scales chosen for that importance
//!    ([`exo_quant::quantize_weighted`]), and the importance-weighted error of each is measured
//!    ([`exo_quant::plan::weighted_error`]) on up to 256 evenly spaced rows: only the smallest
//!    candidate, which step 3 runs, is packed whole.
//! 3. The effect on the output: the KL divergence of the next-token distributions on a sample of
//!    the calibration text with that one matrix in its smallest candidate type from the base's.
//!    Both sides run the quantized kernels, which round the activations the same way, so only the
//!    weights differ, and the base's distributions are computed once: one forward pass per matrix.
//!    Each candidate's predicted KL is that KL scaled by its weighted error relative to the
//!    smallest candidate's (KL grows linearly with small weight noise), so the tensors'
//!    predictions are in the same unit and add up.
//! 4. [`exo_quant::plan::choose`] picks the mix with the least total predicted KL that fits, and
//!    the chosen types are packed with the same importance.
//!
//! Step 3 is what ranks tensors against each other: on SmolLM2 the relative weighted errors
//! alone rated the tied embedding / LM head as cheap to quantize, and a mix chosen on them had
//! 45% more KLD than uniform Q4_K at the same size.
//!
//! Bits per weight are counted as issue 7 defines them: the output file's size in bits over the
//! number of weights in it, embeddings, output, vectors and metadata included.

use std::collections::HashMap;
use std::path::Path;

use exo_formats::{GgmlType, GgufFile};
use exo_kernels::Matrix;
use exo_quant::plan::{self, Candidate, QuantPlan, TensorOptions};
use exo_quant::QuantFormat;

use super::quantize::{is_matrix, tied, with_gguf, write_gguf, QuantizeReport};
use crate::calibration::{self, ActivationStats, KlProbe};
use crate::transformer::Transformer;
use crate::{LoadOptions, ModelError};

/// How large the quantized model may be.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    /// Bits per weight of the whole file.
    BitsPerWeight(f64),
    /// Bytes of the whole file.
    Bytes(u64),
}

/// Calibration tokens are run in independent chunks of this many tokens.
const CALIBRATION_CTX: usize = 512;
/// Tokens of the sample each matrix's KL divergence is measured on (one forward pass per
/// matrix).
const KL_SAMPLE: usize = 64;
/// Rows of a matrix its candidates' weighted errors are compared on: evenly spaced rows, enough
/// for the ratio of two types' errors, so that only the smallest candidate (which runs in the KL
/// probe) is packed whole.
const ERROR_ROWS: usize = 256;

/// Candidate types for rows of `cols` values, smallest first. Rows that are not whole k-quant
/// super-blocks (Qwen2.5-0.5B's 896) get every legacy type, for steps of half a bit per weight:
/// with Q5_0 and Q8_0 alone, the 136 M-weight output matrix of that model could only grow by 51 MB
/// at once, and `--target-bpw 6` left 32 MB of its budget unused.
fn candidate_types(cols: usize) -> &'static [GgmlType] {
    if cols.is_multiple_of(256) {
        &[GgmlType::Q3K, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K, GgmlType::Q8_0]
    } else {
        &[GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0]
    }
}

/// The base for the analyses: the model at `path` with its matrices in Q8_0, kept apart (not
/// stacked) so that each can be swapped alone.
fn load_base(path: &Path) -> Result<crate::LoadedModel, ModelError> {
    let q8 = Some(QuantFormat::Ggml(GgmlType::Q8_0));
    crate::load(path, &LoadOptions { quantize: q8, ..Default::default() })
}

/// The activation statistics of the model at `path` (a GGUF file) on `calibration` text.
pub(super) fn activation_stats(path: &Path, calibration: &str) -> Result<ActivationStats, ModelError> {
    let m = load_base(path)?;
    let tokens = m.tokenizer.encode(calibration, true, false)?;
    calibration::collect(&m.transformer, &tokens, CALIBRATION_CTX)
}

/// Writes the model at `input` to the GGUF file `output` with the mix of types that has the
/// least predicted error within `budget`, measured on `calibration` text.
pub fn quantize_adaptive(
    input: &Path,
    output: &Path,
    budget: Budget,
    calibration: &str,
) -> Result<(QuantizeReport, QuantPlan), ModelError> {
    with_gguf(input, output, |g| {
        let n_weights: u64 = g.tensors().iter().map(|t| t.n_elements() as u64).sum();
        let total = match budget {
            Budget::BitsPerWeight(b) => (b * n_weights as f64 / 8.0) as u64,
            Budget::Bytes(b) => b,
        };
        // Everything but the matrices: vectors and the header, which the input's header
        // approximates (same metadata, same tensor names).
        let input_data: u64 = g.tensors().iter().map(|t| t.ggml_type.row_bytes(t.dims[0]).unwrap_or(0) as u64 * (t.n_elements() / t.dims[0].max(1)) as u64).sum();
        let header = std::fs::metadata(g.path()).map(|m| m.len()).unwrap_or(0).saturating_sub(input_data);
        let (stats, chosen) = plan_mix(g, total, header, calibration, &output.display().to_string())?;
        let types: HashMap<&str, GgmlType> = chosen
            .choices
            .iter()
            .map(|(n, c)| (n.as_str(), match c.format { QuantFormat::Ggml(t) => t, _ => unreachable!("candidates are ggml types") }))
            .collect();
        let main = most_common(&types);
        let tied = tied(g);
        let (report, ()) = write_gguf(g, output, main, |info| Ok((types[info.name.as_str()], stats.importance(&info.name, tied))))?;
        Ok((report, chosen.clone()))
    })
}

/// Bytes of `g`'s vectors, which stay f32 (in files and in memory).
pub(crate) fn vector_bytes(g: &GgufFile) -> u64 {
    g.tensors().iter().filter(|t| !is_matrix(t)).map(|t| 4 * t.n_elements() as u64).sum()
}

/// The analysis behind every budget (`exo quantize --target-bpw/--max-size`, `--quantize auto
/// --memory-budget`): the activation statistics of the GGUF model `g` on `calibration` text, and
/// the type of each matrix with the least predicted KL divergence within `total` bytes, of which
/// the vectors (f32) and `overhead` bytes (a file's header) take their share first. `target`
/// names what is made, for errors.
pub(crate) fn plan_mix(g: &GgufFile, total: u64, overhead: u64, calibration: &str, target: &str) -> Result<(ActivationStats, QuantPlan), ModelError> {
    let n_weights: u64 = g.tensors().iter().map(|t| t.n_elements() as u64).sum();
    let fixed = vector_bytes(g) + overhead;
    // Refused before the analysis (minutes on a large model) when even the smallest types do
    // not fit.
    let smallest: u64 = g
        .tensors()
        .iter()
        .filter(|t| is_matrix(t))
        .map(|t| (candidate_types(t.dims[0])[0].row_bytes(t.dims[0]).unwrap_or(0) * (t.n_elements() / t.dims[0])) as u64)
        .sum();
    if smallest + fixed > total {
        return Err(ModelError::Unconvertible {
            file: target.to_string(),
            what: format!(
                "a budget of {total} bytes ({:.3} bits per weight) is below the smallest mix exo can write, {} bytes ({:.3} bits per weight)",
                total as f64 * 8.0 / n_weights as f64,
                smallest + fixed,
                (smallest + fixed) as f64 * 8.0 / n_weights as f64
            ),
        });
    }
    let (stats, options) = {
        let mut m = load_base(g.path())?;
        let tokens = m.tokenizer.encode(calibration, true, false)?;
        let stats = calibration::collect(&m.transformer, &tokens, CALIBRATION_CTX)?;
        let options = measure(g, &stats, &mut m.transformer, &tokens[..tokens.len().min(KL_SAMPLE)])?;
        (stats, options)
    };
    let chosen = plan::choose(&options, total - fixed).map_err(|e| ModelError::Unconvertible {
        file: target.to_string(),
        what: format!("{e} (the rest takes {fixed} bytes of the {total} allowed)"),
    })?;
    Ok((stats, chosen))
}

/// The type most tensors of the mix use (named in the file's metadata).
fn most_common(types: &HashMap<&str, GgmlType>) -> GgmlType {
    let mut counts: HashMap<GgmlType, usize> = HashMap::new();
    for t in types.values() {
        *counts.entry(*t).or_default() += 1;
    }
    counts.into_iter().max_by_key(|&(t, n)| (n, t.id())).map_or(GgmlType::Q8_0, |(t, _)| t)
}

/// Every matrix of `g` with the size and predicted KL divergence of each candidate type; `t` is
/// the base, in which each matrix's smallest candidate takes its turn.
fn measure(g: &GgufFile, stats: &ActivationStats, t: &mut Transformer, sample: &[u32]) -> Result<Vec<TensorOptions>, ModelError> {
    let tied = tied(g);
    let probe = KlProbe::new(t, sample)?;
    let mut out = Vec::new();
    for info in g.tensors().iter().filter(|t| is_matrix(t)) {
        let cols = info.dims[0];
        let rows = info.n_elements() / cols;
        let values = Matrix::new(&info.name, info.ggml_type, rows, cols, g.tensor_bytes(info))?.to_f32();
        let importance = stats.importance(&info.name, tied).unwrap_or_else(|| vec![1.0; cols]);
        let weights: Vec<f64> = importance.iter().map(|&v| f64::from(v)).collect();
        let step = rows.div_ceil(ERROR_ROWS).max(1);
        let sample: Vec<f32> = values.chunks_exact(cols).step_by(step).flatten().copied().collect();
        let quant_err = |e| exo_kernels::KernelError::Quant { name: info.name.clone(), source: Box::new(e) };
        let mut candidates = Vec::new();
        let mut smallest = None;
        for &ty in candidate_types(cols) {
            let f = QuantFormat::Ggml(ty);
            let packed = exo_quant::quantize_weighted(f, &sample, cols, &importance).map_err(quant_err)?;
            let deq = exo_quant::dequantize(f, &packed, cols).map_err(quant_err)?;
            let (error, _) = plan::weighted_error(&sample, &deq, cols, &weights);
            let bytes = (ty.row_bytes(cols).unwrap_or(0) * rows) as u64;
            if smallest.is_none() {
                let whole = exo_quant::quantize_weighted(f, &values, cols, &importance).map_err(quant_err)?;
                smallest = Some(Matrix::from_bytes(&info.name, ty, rows, cols, &whole)?);
            }
            candidates.push(Candidate { format: f, bytes, error });
        }
        let quantized = smallest.expect("every row length has candidates");
        let kl = match t.swap_matrix(&info.name, quantized) {
            Some(base) => {
                let kl = probe.kl(t);
                t.swap_matrix(&info.name, base);
                kl?.max(0.0)
            }
            None => 0.0,
        };
        let err0 = candidates[0].error;
        for c in &mut candidates {
            c.error = if err0 > 0.0 { kl * c.error / err0 } else { 0.0 };
        }
        out.push(TensorOptions { name: info.name.clone(), candidates });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_below_q8_0_are_at_most_a_bit_per_weight_apart() {
        for cols in [576, 896, 1536, 4864] {
            let bpw: Vec<f64> = candidate_types(cols).iter().map(|t| t.row_bytes(cols).unwrap() as f64 * 8.0 / cols as f64).collect();
            assert!(bpw.windows(2).all(|w| w[0] < w[1]), "{cols}: {bpw:?}");
            assert!(bpw[..bpw.len() - 1].windows(2).all(|w| w[1] - w[0] <= 1.1), "{cols}: {bpw:?}");
        }
    }
}
