//! GGUF -> Hugging Face directory.

use std::path::Path;

use exo_formats::{write_json, GgufFile, SafetensorsWriter, SourceError, DEFAULT_MAX_SHARD_BYTES};
use serde_json::{json, Value};

use super::{is_norm, recode, rope_permuted_heads, vocab, DType};
use crate::config::{Activation, Arch, ModelConfig};
use crate::weights::hf_name;
use crate::ModelError;

/// Writes `g` as a Hugging Face directory `out` (created if absent, and must hold no
/// `config.json` yet) with tensors in `dtype`. Returns notes on what could not be carried over.
pub fn gguf_to_hf(g: &GgufFile, out: &Path, dtype: DType) -> Result<Vec<String>, ModelError> {
    let source = g.path().display().to_string();
    let unconvertible = |what: String| ModelError::Unconvertible { file: source.clone(), what };
    let c = crate::config_from_gguf(g)?;
    if g.tensor("rope_freqs.weight").is_some() {
        return Err(unconvertible(
            "rope_freqs.weight (Llama 3 rope scaling) keeps only the scaled frequencies, not the rope_scaling \
             parameters transformers needs"
                .into(),
        ));
    }
    prepare_dir(out)?;
    let mut w = SafetensorsWriter::new();
    for info in g.tensors() {
        let dims: Vec<usize> = info.dims.iter().rev().copied().collect();
        let (rows, cols) = match dims.as_slice() {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            _ => return Err(unconvertible(format!("tensor '{}' has dims {:?}; only vectors and matrices convert", info.name, info.dims))),
        };
        let heads = rope_permuted_heads(c.arch, &info.name, c.n_heads, c.n_kv_heads);
        let unnorm = c.arch == Arch::Gemma3 && is_norm(&info.name);
        let (name, ty, bytes) = (info.name.clone(), info.ggml_type, g.tensor_bytes(info));
        let source = Box::new(move || -> Result<_, SourceError> {
            let transform = move |v: Vec<f32>| -> Vec<f32> {
                let v = match heads {
                    Some(h) => super::permute_rows(&v, cols, h, false),
                    None => v,
                };
                // GGUF stores Gemma's norm weights as 1 + w; transformers adds the 1 itself.
                if unnorm { v.into_iter().map(|x| x - 1.0).collect() } else { v }
            };
            let t: Option<&dyn Fn(Vec<f32>) -> Vec<f32>> = if heads.is_some() || unnorm { Some(&transform) } else { None };
            Ok(recode(&bytes, &name, ty, dtype, rows, cols, t)?)
        });
        w.add_tensor(hf_name(c.arch, &info.name), dtype.float_type(), dims, source).map_err(unconvertible)?;
    }
    w.write_dir(out, DEFAULT_MAX_SHARD_BYTES)?;
    let tok = vocab::hf_tokenizer_from_gguf(g, c.train_ctx)?;
    write_json(&out.join("tokenizer.json"), &tok.tokenizer)?;
    write_json(&out.join("tokenizer_config.json"), &tok.config)?;
    write_json(&out.join("generation_config.json"), &json!({ "bos_token_id": tok.bos, "eos_token_id": tok.eos }))?;
    // config.json last: without it the directory is not a model, so an interrupted conversion
    // never looks complete.
    let tied = g.tensor("output.weight").is_none();
    write_json(&out.join("config.json"), &config_json(&c, tied, dtype, &tok))?;
    Ok(tok.notes)
}

/// Creates `out` unless it exists; refuses to write over a model already there.
fn prepare_dir(out: &Path) -> Result<(), ModelError> {
    let io = |e: std::io::Error| exo_formats::FormatError::Io { path: out.to_path_buf(), source: e };
    std::fs::create_dir_all(out).map_err(io)?;
    if out.join("config.json").exists() {
        return Err(ModelError::Unconvertible {
            file: out.display().to_string(),
            what: "the output directory already holds a model (config.json); choose an empty directory".into(),
        });
    }
    Ok(())
}

/// `config.json` in the layout transformers writes for the architecture.
fn config_json(c: &ModelConfig, tied: bool, dtype: DType, tok: &vocab::HfTokenizer) -> Value {
    let (class, model_type) = match c.arch {
        Arch::Llama => ("LlamaForCausalLM", "llama"),
        Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        Arch::Gemma3 => ("Gemma3ForCausalLM", "gemma3_text"),
    };
    let mut v = json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden,
        "intermediate_size": c.ffn_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.train_ctx,
        "tie_word_embeddings": tied,
        "bos_token_id": tok.bos,
        "eos_token_id": tok.eos,
        "attention_dropout": 0.0,
        "use_cache": true,
        "dtype": dtype.torch_name(),
    });
    let o = v.as_object_mut().expect("a JSON object");
    match c.arch {
        Arch::Llama => {
            o.insert("hidden_act".into(), json!("silu"));
            o.insert("attention_bias".into(), json!(false));
            o.insert("mlp_bias".into(), json!(false));
        }
        Arch::Qwen2 => {
            o.insert("hidden_act".into(), json!("silu"));
            o.insert("use_sliding_window".into(), json!(false));
        }
        Arch::Gemma3 => {
            let act = if c.activation == Activation::GeluTanh { "gelu_pytorch_tanh" } else { "silu" };
            o.insert("hidden_activation".into(), json!(act));
            // exo's scale is 1/sqrt(query_pre_attn_scalar).
            o.insert("query_pre_attn_scalar".into(), json!((1.0 / (c.attn_scale * c.attn_scale)).round() as u64));
            o.insert("sliding_window".into(), json!(c.sliding_window));
            let types: Vec<&str> =
                c.sliding_layers.iter().map(|&s| if s { "sliding_attention" } else { "full_attention" }).collect();
            o.insert("layer_types".into(), json!(types));
            o.insert("rope_local_base_freq".into(), json!(c.rope_theta_local));
            o.insert("final_logit_softcapping".into(), json!(c.final_logit_softcap));
            o.insert("attn_logit_softcapping".into(), Value::Null);
            o.insert("rope_scaling".into(), Value::Null);
        }
    }
    v
}
