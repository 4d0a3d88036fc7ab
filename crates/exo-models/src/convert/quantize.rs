//! `exo quantize`: a model re-written as a GGUF file with its matrices in one quantized type.
//!
//! The float base is the input's values: a quantized GGUF is dequantized first (the real models
//! here ship already quantized), a Hugging Face directory is read as it is. Matrices (2-D
//! `*.weight` tensors) get the target type; vectors stay f32, as llama.cpp stores them. A matrix
//! already in the target type is copied unchanged, since re-quantizing its own values could only
//! add error. Rows that are not a whole number of the target's blocks get llama.cpp's fallback
//! type for that target (`tensor_type_fallback` in llama-quant.cpp: Q4_K → Q5_0, Q5_K → Q5_1,
//! Q6_K → Q8_0; Q3_K → Q4_0, as the llama.cpp of llama-cpp-python 0.3.36 writes it), so files load in llama.cpp with the types it would have chosen.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use exo_formats::{GgmlType, GgufFile, GgufWriter, HfModelDir, MetaValue, SourceError, TensorInfo};
use exo_kernels::Matrix;
use exo_quant::QuantFormat;

use super::DType;
use crate::calibration::ActivationStats;
use crate::ModelError;

/// What a quantization wrote.
#[derive(Debug, Default)]
pub struct QuantizeReport {
    /// Each tensor: name, the type it had, the type written.
    pub tensors: Vec<(String, GgmlType, GgmlType)>,
    /// Elements of all tensors written.
    pub n_weights: u64,
    /// Bytes of the output file.
    pub file_bytes: u64,
    /// Notes on the input's conversion (Hugging Face input only).
    pub notes: Vec<String>,
}

impl QuantizeReport {
    /// Bits per weight: the output file's size in bits over the number of weights in it
    /// (embeddings and output included), as issue 7 defines it.
    pub fn bits_per_weight(&self) -> f64 {
        self.file_bytes as f64 * 8.0 / self.n_weights.max(1) as f64
    }

    /// How many tensors were written in each type.
    pub fn type_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for (_, _, to) in &self.tensors {
            *counts.entry(to.name()).or_default() += 1;
        }
        counts
    }
}

/// The ggml types `exo quantize` writes.
pub const GGUF_TARGETS: &str = "q4_0, q4_1, q5_0, q5_1, q8_0, q3_K, q4_K, q5_K, q6_K, f16, bf16, f32";

/// Writes the model at `input` (a GGUF file or a Hugging Face directory) to the GGUF file
/// `output` (which must not exist) with its matrices in `target`.
pub fn quantize(input: &Path, output: &Path, target: QuantFormat) -> Result<QuantizeReport, ModelError> {
    quantize_uniform(input, output, target, None).map(|(report, ())| report)
}

/// [`quantize`] with every matrix's scales chosen to minimise the error of its outputs on the
/// `calibration` text (`exo quantize --imatrix`): the mean squared activation of each input
/// column weighs its weights' errors ([`exo_quant::quantize_weighted`]), as llama.cpp's
/// importance matrix does. Types, sizes and layouts are those of [`quantize`].
pub fn quantize_with_importance(input: &Path, output: &Path, target: QuantFormat, calibration: &str) -> Result<QuantizeReport, ModelError> {
    let stats = with_gguf_path(input, output, |path| super::adaptive::activation_stats(path, calibration))?;
    quantize_uniform(input, output, target, Some(&stats)).map(|(report, ())| report)
}

/// Whether `g`'s LM head is its token embedding.
pub(crate) fn tied(g: &GgufFile) -> bool {
    g.tensor("output.weight").is_none()
}

fn quantize_uniform(
    input: &Path,
    output: &Path,
    target: QuantFormat,
    importance: Option<&ActivationStats>,
) -> Result<(QuantizeReport, ()), ModelError> {
    let ty = match target {
        QuantFormat::Ggml(t) if target.can_quantize() || matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) => t,
        _ => {
            return Err(ModelError::Unconvertible {
                file: output.display().to_string(),
                what: format!(
                    "GGUF has no type for {target} that llama.cpp reads; write one of {GGUF_TARGETS}, or quantize to {target} \
                     at load time (exo run --quantize {target})"
                ),
            })
        }
    };
    with_gguf(input, output, |g| {
        let source = g.path().display().to_string();
        write_gguf(g, output, ty, |info| {
            let to = matrix_type(ty, info.dims[0]).ok_or_else(|| ModelError::Unconvertible {
                file: source.clone(),
                what: format!("tensor '{}' has rows of {} values, not a whole number of {ty} blocks", info.name, info.dims[0]),
            })?;
            Ok((to, importance.and_then(|s| s.importance(&info.name, tied(g)))))
        })
    })
}

/// Calls `f` with `input` as a GGUF file: the file itself, or for a Hugging Face directory its
/// tensors first written as a float GGUF next to `output` (which gives them their GGUF names,
/// layouts and tokenizer in one tested place), removed afterwards.
pub(super) fn with_gguf<T>(
    input: &Path,
    output: &Path,
    f: impl FnOnce(&GgufFile) -> Result<(QuantizeReport, T), ModelError>,
) -> Result<(QuantizeReport, T), ModelError> {
    if output.exists() {
        return Err(ModelError::Unconvertible {
            file: output.display().to_string(),
            what: "the output file exists; remove it or choose another name".into(),
        });
    }
    if input.is_dir() {
        let h = HfModelDir::open(input)?;
        let staging = output.with_extension("float.gguf.tmp");
        let _ = std::fs::remove_file(&staging);
        let notes = super::hf_to_gguf(&h, &staging, None)?;
        let result = GgufFile::open(&staging).map_err(ModelError::from).and_then(|g| f(&g));
        let _ = std::fs::remove_file(&staging);
        return result.map(|(r, t)| (QuantizeReport { notes, ..r }, t));
    }
    if !input.is_file() {
        return Err(ModelError::NotAModel { path: input.to_path_buf() });
    }
    f(&GgufFile::open(input)?)
}

/// Calls `f` with the path of `input` as a GGUF file ([`with_gguf`]'s staging for a Hugging Face
/// directory), for the analyses that load the model.
fn with_gguf_path<T>(input: &Path, output: &Path, f: impl FnOnce(&Path) -> Result<T, ModelError>) -> Result<T, ModelError> {
    let mut out = None;
    with_gguf(input, output, |g| {
        out = Some(f(g.path())?);
        Ok((QuantizeReport::default(), ()))
    })?;
    Ok(out.expect("with_gguf calls f or fails"))
}

/// Whether llama.cpp would quantize this tensor: a `*.weight` of at least two non-unit dims.
pub(crate) fn is_matrix(info: &TensorInfo) -> bool {
    info.dims.iter().filter(|&&d| d > 1).count() >= 2 && info.name.ends_with(".weight")
}

/// The type a matrix with rows of `cols` values gets for `target`.
fn matrix_type(target: GgmlType, cols: usize) -> Option<GgmlType> {
    let fallback = match target {
        GgmlType::Q3K => GgmlType::Q4_0,
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        t => t,
    };
    [target, fallback].into_iter().find(|t| t.row_bytes(cols).is_some())
}

/// llama.cpp's `general.file_type` (`llama_ftype`) for a file mostly of `ty`.
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        // Uniform k-quant files are llama.cpp's "_S" mixes, the closest it names.
        GgmlType::Q3K => 11,
        GgmlType::Q4K => 14,
        GgmlType::Q5K => 16,
        GgmlType::Q6K => 18,
        GgmlType::BF16 => 32,
        _ => 0,
    }
}

/// Writes `g` to `output` with matrices in the types `matrix_type` gives (packed weighted by the
/// importance it gives with them, if any) and vectors in f32; `target` names the file's main type
/// in its metadata.
pub(super) fn write_gguf<T: Default>(
    g: &GgufFile,
    output: &Path,
    target: GgmlType,
    mut matrix_type: impl FnMut(&TensorInfo) -> Result<(GgmlType, Option<Vec<f32>>), ModelError>,
) -> Result<(QuantizeReport, T), ModelError> {
    let source = g.path().display().to_string();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.set(k.clone(), v.clone());
    }
    w.set("general.file_type", MetaValue::U32(file_type(target)));
    if !matches!(target, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        w.set("general.quantization_version", MetaValue::U32(2));
    }
    let mut report = QuantizeReport::default();
    for info in g.tensors() {
        let cols = info.dims[0];
        let rows = info.n_elements() / cols.max(1);
        let (to, importance) = if is_matrix(info) { matrix_type(info)? } else { (GgmlType::F32, None) };
        let (from, name, bytes) = (info.ggml_type, info.name.clone(), g.tensor_bytes(info));
        let src = Box::new(move || -> Result<Cow<'_, [u8]>, SourceError> {
            if from == to {
                return Ok(Cow::Owned(bytes.to_vec()));
            }
            let values = Matrix::new(&name, from, rows, cols, bytes)?.to_f32();
            let packed = match (&importance, to) {
                (Some(w), t) if QuantFormat::Ggml(t).can_quantize() => exo_quant::quantize_weighted(QuantFormat::Ggml(t), &values, cols, w),
                _ => encode(to, &values, cols),
            };
            Ok(Cow::Owned(packed.map_err(|e| format!("tensor '{name}': {e}"))?))
        });
        w.add_tensor(info.name.clone(), info.dims.clone(), to, src)
            .map_err(|what| ModelError::Unconvertible { file: source.clone(), what })?;
        report.tensors.push((info.name.clone(), from, to));
        report.n_weights += info.n_elements() as u64;
    }
    report.file_bytes = w.write(output)?;
    Ok((report, T::default()))
}

/// `values` (rows of `cols`) in type `ty`.
pub(super) fn encode(ty: GgmlType, values: &[f32], cols: usize) -> Result<Vec<u8>, exo_quant::QuantError> {
    match ty {
        GgmlType::F32 => Ok(DType::F32.encode(values)),
        GgmlType::F16 => Ok(DType::F16.encode(values)),
        GgmlType::BF16 => Ok(DType::BF16.encode(values)),
        _ => exo_quant::quantize(QuantFormat::Ggml(ty), values, cols),
    }
}
