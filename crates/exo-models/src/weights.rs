//! Named weights from a GGUF file or a Hugging Face directory, checked against the config.
//!
//! Models ask for tensors by their GGUF names (`blk.3.attn_q.weight`); for a Hugging Face
//! directory the name is translated to the checkpoint's (`model.layers.3.self_attn.q_proj.weight`).
//! Bytes stay in the mapped files: nothing is copied unless the caller asks for dequantized
//! weights or a tensor's address is misaligned.

use std::collections::HashMap;
use std::sync::Arc;

use exo_formats::{FloatType, GgmlType, GgufFile, HfModelDir, SafeTensorInfo};
use exo_kernels::Matrix;
use exo_quant::QuantFormat;

use crate::config::Arch;
use crate::ModelError;

/// Where weights come from.
pub enum WeightFile {
    /// A GGUF file (quantized or float).
    Gguf(GgufFile),
    /// A Hugging Face directory of safetensors.
    Hf(HfModelDir),
}

/// What loading does to a matrix ([`Weights::matrix`]).
#[derive(Clone, Copy)]
enum Target<'a> {
    /// The file's bytes as they are.
    Keep,
    /// Widened to f32 (the reference float path).
    Dequantize,
    /// Re-packed in this format, with these column importances when the mix has them.
    Pack(QuantFormat, Option<&'a [f32]>),
}

/// A matrix's bytes for a device: the file's, or re-quantized ones.
pub enum DeviceBytes {
    /// The stored bytes, mapped from the file.
    File(exo_formats::TensorBytes),
    /// Bytes made at load.
    Requantized(Vec<u8>),
}

impl std::ops::Deref for DeviceBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            DeviceBytes::File(b) => b,
            DeviceBytes::Requantized(v) => v,
        }
    }
}

/// A type per matrix, as `--quantize auto` chooses them ([`crate::auto`]), each with the column
/// importance its scales are chosen for ([`exo_quant::quantize_weighted`]), as `exo quantize`
/// writes the same mix.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuantMix {
    matrices: HashMap<String, (GgmlType, Option<Vec<f32>>)>,
}

impl QuantMix {
    /// Sets matrix `name` (a GGUF tensor name) to `ty`, packed weighing each input column's
    /// errors by `importance` (unweighted without it).
    pub fn set(&mut self, name: String, ty: GgmlType, importance: Option<Vec<f32>>) {
        self.matrices.insert(name, (ty, importance));
    }

    /// The type and importance of matrix `name`, if the mix names it.
    pub fn get(&self, name: &str) -> Option<(GgmlType, Option<&[f32]>)> {
        self.matrices.get(name).map(|(t, w)| (*t, w.as_deref()))
    }

    /// Every matrix the mix names, with its type and importance, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, GgmlType, Option<&[f32]>)> {
        self.matrices.iter().map(|(n, (t, w))| (n.as_str(), *t, w.as_deref()))
    }
}

/// Reads tensors for one model.
pub struct Weights<'a> {
    file: &'a WeightFile,
    arch: Arch,
    dequantize: bool,
    quantize: Option<QuantFormat>,
    mix: Option<Arc<QuantMix>>,
}

impl<'a> Weights<'a> {
    /// A reader over `file` for architecture `arch`; with `dequantize`, every matrix is widened to
    /// f32 (the reference float path tests compare against `transformers`).
    pub fn new(file: &'a WeightFile, arch: Arch, dequantize: bool) -> Self {
        Self { file, arch, dequantize, quantize: None, mix: None }
    }

    /// The same reader, re-quantizing every matrix to `format` as it is loaded (from the file's
    /// values, dequantized first when they are quantized). Matrices whose rows are not a whole
    /// number of the format's blocks keep the file's type.
    pub fn with_quantize(self, format: Option<QuantFormat>) -> Self {
        Self { quantize: format, ..self }
    }

    /// The same reader, re-quantizing the matrices that `mix` names to their types as they are
    /// loaded (others keep the file's type); it takes precedence over [`Weights::with_quantize`].
    pub fn with_mix(self, mix: Option<Arc<QuantMix>>) -> Self {
        Self { mix, ..self }
    }

    /// The file, for error messages.
    pub fn source(&self) -> String {
        match self.file {
            WeightFile::Gguf(g) => g.path().display().to_string(),
            WeightFile::Hf(h) => h.dir().display().to_string(),
        }
    }

    /// The LM head's tensor: `output.weight`, or the token embeddings where the model ties the
    /// two.
    pub fn lm_head(&self) -> &'static str {
        if self.has("output.weight") {
            "output.weight"
        } else {
            "token_embd.weight"
        }
    }

    /// Whether the tensor exists.
    pub fn has(&self, name: &str) -> bool {
        match self.file {
            WeightFile::Gguf(g) => g.tensor(name).is_some(),
            WeightFile::Hf(h) => h.tensor(&hf_name(self.arch, name)).is_some(),
        }
    }

    /// What loading does to matrix `name` (stored as `ty`, rows of `cols`): the reference float
    /// path widens it (unless it is f32 already); a quantization mix, else `--quantize`, re-packs
    /// it where its format differs from the file's and fits the rows; otherwise the file's bytes
    /// stay.
    fn target(&self, name: &str, ty: GgmlType, cols: usize) -> Target<'_> {
        if self.dequantize {
            return if ty == GgmlType::F32 { Target::Keep } else { Target::Dequantize };
        }
        if let Some((to, importance)) = self.mix.as_deref().and_then(|mix| mix.get(name)) {
            return if to == ty { Target::Keep } else { Target::Pack(QuantFormat::Ggml(to), importance) };
        }
        match self.quantize {
            Some(f) if f != QuantFormat::Ggml(ty) && f.row_bytes(cols).is_some() => Target::Pack(f, None),
            _ => Target::Keep,
        }
    }

    /// The values of `m` packed as `f` (weighted by `importance` when given).
    fn pack(name: &str, m: &Matrix, f: QuantFormat, importance: Option<&[f32]>) -> Result<Vec<u8>, ModelError> {
        let values = m.to_f32();
        let packed = match importance {
            Some(w) => exo_quant::quantize_weighted(f, &values, m.cols(), w),
            None => exo_quant::quantize(f, &values, m.cols()),
        };
        Ok(packed.map_err(|e| exo_kernels::KernelError::Quant { name: name.to_string(), source: Box::new(e) })?)
    }

    /// A `rows × cols` matrix (`rows` output features).
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix, ModelError> {
        let (ty, dims, bytes) = self.raw(name)?;
        if dims != [rows, cols] {
            return Err(self.shape_err(name, &[rows, cols], &dims));
        }
        let m = Matrix::new(name, ty, rows, cols, bytes)?;
        Ok(match self.target(name, ty, cols) {
            Target::Keep => m,
            Target::Dequantize => m.dequantized(),
            Target::Pack(f, importance) => Matrix::from_quant(name, f, rows, cols, &Self::pack(name, &m, f, importance)?)?,
        })
    }

    /// The storage format a `rows × cols` matrix takes on a device that reads the stored blocks
    /// in place: the one [`Weights::matrix`] would hold. INT8 and INT4 travel as the Q8_0 and
    /// Q4_1 blocks that hold exactly their values (as on the CPU); NF4 and FP8 in exo's own
    /// layouts, which the GPU has kernels for.
    pub fn device_type(&self, name: &str, rows: usize, cols: usize) -> Result<QuantFormat, ModelError> {
        let (ty, _) = self.raw_matrix(name, rows, cols)?;
        Ok(Self::device_format(ty, self.target(name, ty, cols)))
    }

    /// The format a matrix stored as `ty` takes on the device when loading does `target` to it.
    fn device_format(ty: GgmlType, target: Target<'_>) -> QuantFormat {
        match target {
            Target::Keep => QuantFormat::Ggml(ty),
            Target::Dequantize => QuantFormat::Ggml(GgmlType::F32),
            Target::Pack(QuantFormat::Int8, _) => QuantFormat::Ggml(GgmlType::Q8_0),
            Target::Pack(QuantFormat::Int4, _) => QuantFormat::Ggml(GgmlType::Q4_1),
            Target::Pack(f, _) => f,
        }
    }

    /// A `rows × cols` matrix in the layout [`Weights::device_type`] says: the file's bytes, or
    /// its values re-packed as [`Weights::matrix`] packs them.
    pub fn device_matrix(&self, name: &str, rows: usize, cols: usize) -> Result<(QuantFormat, DeviceBytes), ModelError> {
        let (ty, bytes) = self.raw_matrix(name, rows, cols)?;
        let target = self.target(name, ty, cols);
        let to = Self::device_format(ty, target);
        let m = match target {
            Target::Keep => return Ok((to, DeviceBytes::File(bytes))),
            _ => Matrix::new(name, ty, rows, cols, bytes)?,
        };
        let packed = match target {
            Target::Pack(QuantFormat::Int8, w) => exo_quant::int::int8_to_q8_0(&Self::pack(name, &m, QuantFormat::Int8, w)?),
            Target::Pack(QuantFormat::Int4, w) => exo_quant::int::int4_to_q4_1(&Self::pack(name, &m, QuantFormat::Int4, w)?).ok_or_else(|| {
                ModelError::Device(format!("--quantize int4: a scale of '{name}' is too large for the GPU's Q4_1 blocks (use --device cpu)"))
            })?,
            Target::Pack(f, w) => Self::pack(name, &m, f, w)?,
            // Dequantize (Keep returned above).
            _ => m.to_f32().iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        Ok((to, DeviceBytes::Requantized(packed)))
    }

    /// The storage type and stored bytes (GGUF block layout) of a `rows × cols` matrix, for
    /// backends that read the blocks themselves.
    pub fn raw_matrix(&self, name: &str, rows: usize, cols: usize) -> Result<(GgmlType, exo_formats::TensorBytes), ModelError> {
        let (ty, dims, bytes) = self.raw(name)?;
        if dims != [rows, cols] {
            return Err(self.shape_err(name, &[rows, cols], &dims));
        }
        Ok((ty, bytes))
    }

    /// A vector (norm weight or bias) of `len` values as f32.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let (ty, dims, bytes) = self.raw(name)?;
        if dims != [len] {
            return Err(self.shape_err(name, &[len], &dims));
        }
        let m = Matrix::new(name, ty, 1, len, bytes)?;
        Ok(m.to_f32())
    }

    /// Like [`Weights::vector`] but `None` when the tensor is absent.
    pub fn opt_vector(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>, ModelError> {
        if self.has(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Type, dims in (rows, cols) order, and bytes of a tensor.
    /// The matrices `parts` (name, rows), each with `cols` columns, stacked row-wise into one,
    /// when they share a storage type that is repacked at load anyway (so the copy costs
    /// nothing extra); `None` otherwise, and on the dequantized float path.
    pub fn stacked(&self, parts: &[(&str, usize)], cols: usize) -> Result<Option<Matrix>, ModelError> {
        let mut ty = None;
        let mut bytes = Vec::new();
        for &(name, rows) in parts {
            let (t, dims, b) = self.raw(name)?;
            if dims != [rows, cols] {
                return Err(self.shape_err(name, &[rows, cols], &dims));
            }
            if self.dequantize || self.quantize.is_some() || self.mix.is_some() || !exo_kernels::is_repacked(t) || ty.is_some_and(|ty| ty != t) {
                return Ok(None);
            }
            ty = Some(t);
            bytes.extend_from_slice(&b);
        }
        let Some(ty) = ty else { return Ok(None) };
        let name = parts.iter().map(|p| p.0).collect::<Vec<_>>().join("+");
        let rows = parts.iter().map(|p| p.1).sum();
        Ok(Some(Matrix::from_bytes(&name, ty, rows, cols, &bytes)?))
    }

    fn raw(&self, name: &str) -> Result<(GgmlType, Vec<usize>, exo_formats::TensorBytes), ModelError> {
        let missing = |n: String| ModelError::MissingTensor { file: self.source(), name: n };
        match self.file {
            WeightFile::Gguf(g) => {
                let info = g.tensor(name).ok_or_else(|| missing(name.to_string()))?;
                // ggml lists the contiguous dimension first; exo uses (rows, cols).
                let dims: Vec<usize> = info.dims.iter().rev().copied().collect();
                Ok((info.ggml_type, squeeze(dims), g.tensor_bytes(info)))
            }
            WeightFile::Hf(h) => {
                let hf = hf_name(self.arch, name);
                let info = h.tensor(&hf).ok_or_else(|| missing(hf.clone()))?;
                Ok((hf_type(h, info)?, squeeze(info.shape.clone()), h.tensor_bytes(info)))
            }
        }
    }

    /// The tensor's name as the file spells it.
    fn file_name(&self, name: &str) -> String {
        match self.file {
            WeightFile::Gguf(_) => name.to_string(),
            WeightFile::Hf(_) => hf_name(self.arch, name),
        }
    }

    fn shape_err(&self, name: &str, expected: &[usize], found: &[usize]) -> ModelError {
        ModelError::Shape {
            file: self.source(),
            name: self.file_name(name),
            expected: format!("{expected:?}"),
            found: format!("{found:?}"),
        }
    }
}

/// The kernel type of a safetensors tensor; only float types are weights exo computes with.
fn hf_type(h: &HfModelDir, info: &SafeTensorInfo) -> Result<GgmlType, ModelError> {
    match info.dtype {
        FloatType::F32 => Ok(GgmlType::F32),
        FloatType::F16 => Ok(GgmlType::F16),
        FloatType::BF16 => Ok(GgmlType::BF16),
        FloatType::Other(dtype) => Err(ModelError::Config {
            file: h.dir().display().to_string(),
            what: format!("tensor '{}' has dtype {dtype}; exo reads f32, f16 and bf16 safetensors", info.name),
        }),
    }
}

/// Tensor `name` of a Hugging Face directory, checked against the `shape` its config implies
/// (a vector is `[len]`), as a [`Matrix`] of one row per leading index.
///
/// For models that name their tensors in the checkpoint's own terms (the BERT encoder), without
/// the GGUF-name translation of [`Weights`].
pub fn hf_matrix(h: &HfModelDir, name: &str, shape: &[usize]) -> Result<Matrix, ModelError> {
    let source = || h.dir().display().to_string();
    let info = h.tensor(name).ok_or_else(|| ModelError::MissingTensor { file: source(), name: name.to_string() })?;
    if info.shape != shape {
        return Err(ModelError::Shape {
            file: source(),
            name: name.to_string(),
            expected: format!("{shape:?}"),
            found: format!("{:?}", info.shape),
        });
    }
    let (outer, cols) = shape.split_at(shape.len().saturating_sub(1));
    let (rows, cols) = (outer.iter().product(), cols.first().copied().unwrap_or(1));
    Ok(Matrix::new(name, hf_type(h, info)?, rows, cols, h.tensor_bytes(info))?)
}

/// Drops leading unit dimensions (GGUF stores some matrices as 3-D with a leading 1).
fn squeeze(mut dims: Vec<usize>) -> Vec<usize> {
    while dims.len() > 2 && dims[0] == 1 {
        dims.remove(0);
    }
    dims
}

/// The Hugging Face checkpoint name of a GGUF tensor name.
pub fn hf_name(arch: Arch, gguf: &str) -> String {
    let (stem, suffix) = match gguf.rsplit_once('.') {
        Some((s, x @ ("weight" | "bias"))) => (s, x),
        _ => (gguf, "weight"),
    };
    let mapped = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => match stem.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            Some((layer, part)) => {
                let hf_part = match (part, arch) {
                    ("attn_q", _) => "self_attn.q_proj",
                    ("attn_k", _) => "self_attn.k_proj",
                    ("attn_v", _) => "self_attn.v_proj",
                    ("attn_output", _) => "self_attn.o_proj",
                    ("attn_q_norm", _) => "self_attn.q_norm",
                    ("attn_k_norm", _) => "self_attn.k_norm",
                    ("attn_norm", _) => "input_layernorm",
                    // Gemma's post_attention_layernorm normalises the attention output; in the
                    // llama family the same HF name is the norm in front of the MLP.
                    ("ffn_norm", Arch::Gemma3) => "pre_feedforward_layernorm",
                    ("ffn_norm", _) => "post_attention_layernorm",
                    ("post_attention_norm", _) => "post_attention_layernorm",
                    ("post_ffw_norm", _) => "post_feedforward_layernorm",
                    ("ffn_gate", _) => "mlp.gate_proj",
                    ("ffn_up", _) => "mlp.up_proj",
                    ("ffn_down", _) => "mlp.down_proj",
                    (other, _) => other,
                };
                format!("model.layers.{layer}.{hf_part}")
            }
            None => stem.to_string(),
        },
    };
    format!("{mapped}.{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_follow_the_transformers_checkpoints() {
        assert_eq!(hf_name(Arch::Llama, "blk.3.attn_q.weight"), "model.layers.3.self_attn.q_proj.weight");
        assert_eq!(hf_name(Arch::Qwen2, "blk.0.attn_k.bias"), "model.layers.0.self_attn.k_proj.bias");
        assert_eq!(hf_name(Arch::Llama, "blk.1.ffn_norm.weight"), "model.layers.1.post_attention_layernorm.weight");
        assert_eq!(hf_name(Arch::Gemma3, "blk.1.ffn_norm.weight"), "model.layers.1.pre_feedforward_layernorm.weight");
        assert_eq!(hf_name(Arch::Gemma3, "blk.1.post_attention_norm.weight"), "model.layers.1.post_attention_layernorm.weight");
        assert_eq!(hf_name(Arch::Llama, "output.weight"), "lm_head.weight");
    }
}
