//! Hugging Face directory -> GGUF.

use std::collections::HashSet;
use std::path::Path;

use exo_formats::{FloatType, GgmlType, GgufWriter, HfModelDir, MetaValue, SourceError};

use super::{is_norm, recode, rope_permuted_heads, vocab, DType};
use crate::config::{Arch, ModelConfig};
use crate::weights::hf_name;
use crate::ModelError;

/// Tensor names of a decoder layer in GGUF, in llama.cpp's order.
const LAYER_PARTS: &[&str] = &[
    "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm", "attn_k_norm", "ffn_norm",
    "post_attention_norm", "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm",
];

/// Writes the model in `h` as the GGUF file `out` (which must not exist yet). Matrices keep their
/// float type unless `dtype` is given; vectors are always f32, as llama.cpp stores them.
/// Returns notes on what could not be carried over.
pub fn hf_to_gguf(h: &HfModelDir, out: &Path, dtype: Option<DType>) -> Result<Vec<String>, ModelError> {
    let source = h.dir().display().to_string();
    let unconvertible = |what: String| ModelError::Unconvertible { file: source.clone(), what };
    let c = crate::config_from_hf(h)?;
    check_expressible(&c).map_err(unconvertible)?;
    if out.exists() {
        return Err(ModelError::Unconvertible {
            file: out.display().to_string(),
            what: "the output file exists; remove it or choose another name".into(),
        });
    }
    let mut w = GgufWriter::new();
    let a = c.arch.name();
    let name = h.dir().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    w.set("general.architecture", MetaValue::Str(a.into()));
    w.set("general.name", MetaValue::Str(name));
    let file_type = match dtype {
        Some(DType::F32) => 0,
        Some(DType::F16) => 1,
        Some(DType::BF16) => 32,
        None => 1,
    };
    w.set("general.file_type", MetaValue::U32(file_type));
    let u = |v: usize| MetaValue::U32(v as u32);
    for (k, v) in [
        ("context_length", u(c.train_ctx)),
        ("embedding_length", u(c.hidden)),
        ("block_count", u(c.n_layers)),
        ("feed_forward_length", u(c.ffn_dim)),
        ("attention.head_count", u(c.n_heads)),
        ("attention.head_count_kv", u(c.n_kv_heads)),
        ("attention.key_length", u(c.head_dim)),
        ("attention.value_length", u(c.head_dim)),
        ("rope.dimension_count", u(c.head_dim)),
        ("rope.freq_base", MetaValue::F32(c.rope_theta)),
        ("attention.layer_norm_rms_epsilon", MetaValue::F32(c.rms_eps)),
        ("vocab_size", u(c.vocab_size)),
    ] {
        w.set(format!("{a}.{k}"), v);
    }
    if let Some(window) = c.sliding_window {
        w.set(format!("{a}.attention.sliding_window"), u(window));
    }
    let mut used = HashSet::new();
    add_tensors(h, &c, dtype, &mut w, &mut used).map_err(unconvertible)?;
    let tied = h.config()["tie_word_embeddings"].as_bool().unwrap_or(c.arch == Arch::Gemma3);
    let leftover: Vec<String> = h
        .tensor_names()
        .into_iter()
        .filter(|n| !(used.contains(n) || n.ends_with("rotary_emb.inv_freq") || (tied && n == "lm_head.weight")))
        .collect();
    if !leftover.is_empty() {
        return Err(unconvertible(format!("tensors with no GGUF name: {}", leftover.join(", "))));
    }
    let mut notes = vocab::gguf_tokenizer_from_hf(h, &mut w)?;
    if let Some(f) = &c.rope_freq_factors {
        // llama.cpp stores Llama 3's rope scaling as per-pair frequency divisors.
        let bytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
        let src = Box::new(move || Ok(std::borrow::Cow::Owned(bytes)));
        w.add_tensor("rope_freqs.weight", vec![f.len()], GgmlType::F32, src).map_err(unconvertible)?;
        notes.push("Llama 3 rope scaling written as rope_freqs.weight".into());
    }
    w.write(out)?;
    Ok(notes)
}

/// GGUF's metadata fixes some Gemma 3 choices that a Hugging Face config can vary.
fn check_expressible(c: &ModelConfig) -> Result<(), String> {
    if c.arch != Arch::Gemma3 {
        return Ok(());
    }
    if c.rope_theta_local != 10_000.0 {
        return Err(format!("rope_local_base_freq {} (GGUF readers assume 10000 for Gemma 3)", c.rope_theta_local));
    }
    if (c.attn_scale - 1.0 / (c.head_dim as f32).sqrt()).abs() > 1e-6 {
        return Err("query_pre_attn_scalar differs from head_dim (GGUF readers assume they are equal)".into());
    }
    if c.sliding_layers.iter().enumerate().any(|(i, &s)| s != ((i + 1) % 6 != 0)) {
        return Err("the sliding-window layer pattern is not Gemma 3's five local to one global".into());
    }
    if c.final_logit_softcap.is_some() {
        return Err("final_logit_softcapping has no GGUF key for Gemma 3".into());
    }
    Ok(())
}

/// Adds every tensor of `h` that has a GGUF name, recording the Hugging Face names used.
fn add_tensors<'a>(
    h: &'a HfModelDir,
    c: &ModelConfig,
    dtype: Option<DType>,
    w: &mut GgufWriter<'a>,
    used: &mut HashSet<String>,
) -> Result<(), String> {
    let mut names: Vec<String> = ["token_embd", "output_norm", "output"].iter().map(|s| s.to_string()).collect();
    for l in 0..c.n_layers {
        names.extend(LAYER_PARTS.iter().map(|p| format!("blk.{l}.{p}")));
    }
    for stem in names {
        for suffix in ["weight", "bias"] {
            let gguf = format!("{stem}.{suffix}");
            let hf = hf_name(c.arch, &gguf);
            let Some(info) = h.tensor(&hf) else { continue };
            // Outside Gemma, post_attention_norm's Hugging Face name is ffn_norm's, which comes first.
            if !used.insert(hf.clone()) {
                continue;
            }
            let from = match info.dtype {
                FloatType::F32 => GgmlType::F32,
                FloatType::F16 => GgmlType::F16,
                FloatType::BF16 => GgmlType::BF16,
                FloatType::Other(d) => return Err(format!("tensor '{hf}' has dtype {d}; only float tensors convert")),
            };
            let (rows, cols) = match info.shape.as_slice() {
                [n] => (1, *n),
                [r, c] => (*r, *c),
                s => return Err(format!("tensor '{hf}' has shape {s:?}; only vectors and matrices convert")),
            };
            let to = match (info.shape.len(), dtype) {
                (1, _) => DType::F32,
                (_, Some(d)) => d,
                (_, None) => match from {
                    GgmlType::F16 => DType::F16,
                    GgmlType::BF16 => DType::BF16,
                    _ => DType::F32,
                },
            };
            let heads = rope_permuted_heads(c.arch, &gguf, c.n_heads, c.n_kv_heads);
            let renorm = c.arch == Arch::Gemma3 && is_norm(&gguf);
            let bytes = h.tensor_bytes(info);
            let name = hf.clone();
            let src = Box::new(move || -> Result<_, SourceError> {
                let transform = move |v: Vec<f32>| -> Vec<f32> {
                    let v = match heads {
                        Some(n) => super::permute_rows(&v, cols, n, true),
                        None => v,
                    };
                    // GGUF stores Gemma's norm weights as 1 + w.
                    if renorm { v.into_iter().map(|x| x + 1.0).collect() } else { v }
                };
                let t: Option<&dyn Fn(Vec<f32>) -> Vec<f32>> = if heads.is_some() || renorm { Some(&transform) } else { None };
                Ok(recode(&bytes, &name, from, to, rows, cols, t)?)
            });
            let dims: Vec<usize> = info.shape.iter().rev().copied().collect();
            w.add_tensor(gguf, dims, to.ggml_type(), src)?;
        }
    }
    Ok(())
}
