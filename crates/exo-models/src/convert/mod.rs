//! Conversion between GGUF files and Hugging Face directories (`exo convert`).
//!
//! - GGUF -> Hugging Face ([`to_hf`]): every tensor dequantized to the chosen float type under its
//!   `transformers` name, `config.json` from the GGUF metadata, `tokenizer.json` and
//!   `tokenizer_config.json` rebuilt from the GGUF vocabulary, `generation_config.json`.
//! - Hugging Face (safetensors or `pytorch_model.bin`) -> GGUF ([`to_gguf`]): float tensors under
//!   their GGUF names with the architecture keys llama.cpp and exo read, and the tokenizer.
//!
//! - Either -> a quantized GGUF ([`quantize`], `exo quantize`), in one type or in the mix that
//!   [`quantize_adaptive`] chooses by measured sensitivity under a size budget.
//!
//! Two layout differences are undone on the way: llama.cpp's converter permutes the q/k rows of
//! llama-architecture models so that RoPE rotates adjacent pairs (GGUF) instead of halves
//! (Hugging Face), and it stores Gemma's RMSNorm weights as `1 + w`.

mod adaptive;
mod quantize;
mod to_gguf;
mod to_hf;
mod vocab;

use std::borrow::Cow;
use std::path::Path;

use exo_formats::{FloatType, GgmlType, GgufFile, HfModelDir};

use crate::config::Arch;
use crate::ModelError;

pub use adaptive::{quantize_adaptive, Budget};
pub(crate) use adaptive::{plan_mix, vector_bytes};
pub(crate) use quantize::{is_matrix, tied};
pub use quantize::{quantize, quantize_with_importance, QuantizeReport, GGUF_TARGETS};
pub use to_gguf::hf_to_gguf;
pub use to_hf::gguf_to_hf;

/// Float type of the tensors written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// IEEE single.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    /// Parses `f32`, `f16` or `bf16`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Some(DType::F32),
            "f16" | "float16" => Some(DType::F16),
            "bf16" | "bfloat16" => Some(DType::BF16),
            _ => None,
        }
    }

    /// The name `config.json`'s `dtype` uses.
    fn torch_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }

    fn float_type(self) -> FloatType {
        match self {
            DType::F32 => FloatType::F32,
            DType::F16 => FloatType::F16,
            DType::BF16 => FloatType::BF16,
        }
    }

    fn ggml_type(self) -> GgmlType {
        match self {
            DType::F32 => GgmlType::F32,
            DType::F16 => GgmlType::F16,
            DType::BF16 => GgmlType::BF16,
        }
    }

    /// `values` in this type's little-endian bytes (f16/bf16 round to nearest even).
    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
            DType::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        }
    }
}

/// Converts `input` (a `.gguf` file or a Hugging Face directory) to the other format at
/// `output`; `dtype` defaults to f32 for GGUF -> Hugging Face and to each tensor's own float type
/// the other way. Returns notes on anything the target format could not carry.
pub fn convert(input: &Path, output: &Path, dtype: Option<DType>) -> Result<Vec<String>, ModelError> {
    if input.is_dir() {
        let h = HfModelDir::open(input)?;
        hf_to_gguf(&h, output, dtype)
    } else if input.is_file() {
        let g = GgufFile::open(input)?;
        gguf_to_hf(&g, output, dtype.unwrap_or(DType::F32))
    } else {
        Err(ModelError::NotAModel { path: input.to_path_buf() })
    }
}

/// Whether GGUF stores this tensor's rows permuted for interleaved RoPE (llama.cpp's
/// `LlamaModel.permute`, applied to llama-architecture q and k projections only), and with how
/// many heads.
fn rope_permuted_heads(arch: Arch, gguf_name: &str, n_heads: usize, n_kv_heads: usize) -> Option<usize> {
    if arch != Arch::Llama {
        return None;
    }
    let part = gguf_name.strip_prefix("blk.")?.split_once('.')?.1;
    match part {
        "attn_q.weight" | "attn_q.bias" => Some(n_heads),
        "attn_k.weight" | "attn_k.bias" => Some(n_kv_heads),
        _ => None,
    }
}

/// Reorders the rows (`cols` values each) of a q/k projection of `heads` heads. Within a head of
/// `d` rows, Hugging Face keeps the two halves that RoPE rotates together apart (row `s*d/2 + i`)
/// and GGUF interleaves them (row `2i + s`); `to_gguf` goes one way, its negation the other.
fn permute_rows(values: &[f32], cols: usize, heads: usize, to_gguf: bool) -> Vec<f32> {
    let rows = values.len() / cols;
    let d = rows / heads;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for s in 0..2 {
                let hf = h * d + s * d / 2 + i;
                let gg = h * d + 2 * i + s;
                let (src, dst) = if to_gguf { (hf, gg) } else { (gg, hf) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Whether the tensor is an RMSNorm weight (stored as `1 + w` by GGUF for Gemma).
fn is_norm(gguf_name: &str) -> bool {
    gguf_name.ends_with("norm.weight")
}

/// Bytes of a float tensor in type `to` after `transform`; a copy of the source bytes when
/// neither the values nor their type change.
fn recode(
    bytes: &[u8],
    name: &str,
    from: GgmlType,
    to: DType,
    rows: usize,
    cols: usize,
    transform: Option<&dyn Fn(Vec<f32>) -> Vec<f32>>,
) -> Result<Cow<'static, [u8]>, ModelError> {
    if transform.is_none() && from == to.ggml_type() {
        return Ok(Cow::Owned(bytes.to_vec()));
    }
    let m = exo_kernels::Matrix::from_bytes(name, from, rows, cols, bytes)?;
    let values = m.to_f32();
    let values = match transform {
        Some(f) => f(values),
        None => values,
    };
    Ok(Cow::Owned(to.encode(&values)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_llama_cpp_and_inverts() {
        // llama.cpp: w.reshape(heads, 2, d/2, cols).swapaxes(1, 2): for one head of 4 rows the
        // GGUF order is hf rows 0, 2, 1, 3.
        let hf: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let gg = permute_rows(&hf, 1, 2, true);
        assert_eq!(gg, [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        assert_eq!(permute_rows(&gg, 1, 2, false), hf);
        let wide: Vec<f32> = (0..24).map(|v| v as f32).collect();
        assert_eq!(permute_rows(&permute_rows(&wide, 3, 1, true), 3, 1, false), wide);
        assert_eq!(rope_permuted_heads(Arch::Llama, "blk.3.attn_k.weight", 9, 3), Some(3));
        assert_eq!(rope_permuted_heads(Arch::Qwen2, "blk.3.attn_k.weight", 9, 3), None);
    }
}
