//! Gemma 3 (text): GeGLU, scaled embeddings, per-head q/k RMSNorm, norms after attention and
//! feed-forward as well as before, and sliding-window attention on five of every six layers with
//! a lower RoPE base on those layers.

use exo_formats::GgufFile;

use crate::config::{self, Activation, Arch, ModelConfig};
use crate::ModelError;

/// Every sixth layer attends globally; the others use the sliding window (Gemma 3 report, and
/// llama.cpp's `swa_pattern = 6`).
const GLOBAL_EVERY: usize = 6;

fn apply_gemma(c: &mut ModelConfig, window: usize, query_pre_attn_scalar: f32) {
    c.activation = Activation::GeluTanh;
    c.embed_scale = Some((c.hidden as f32).sqrt());
    c.attn_scale = 1.0 / query_pre_attn_scalar.sqrt();
    c.qk_norm = true;
    c.post_norms = true;
    c.sliding_window = Some(window);
    if c.sliding_layers.iter().all(|s| !s) {
        c.sliding_layers = (0..c.n_layers).map(|i| (i + 1) % GLOBAL_EVERY != 0).collect();
    }
}

/// Config from GGUF metadata. The converter stored RMSNorm weights as `1 + w` already.
pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig, ModelError> {
    let mut c = config::from_gguf(g, Arch::Gemma3)?;
    c.rms_eps = g.opt_f32("gemma3.attention.layer_norm_rms_epsilon").unwrap_or(1e-6);
    // llama.cpp uses 10k for the local layers of every Gemma 3; the file stores only the global base.
    c.rope_theta_local = 10_000.0;
    let window = g.opt_u64("gemma3.attention.sliding_window").map_or(512, |v| v as usize);
    let scalar = c.head_dim as f32;
    apply_gemma(&mut c, window, scalar);
    Ok(c)
}

/// Config from a Hugging Face `config.json` (`Gemma3ForCausalLM`, model_type `gemma3_text`).
pub fn config_from_hf(cfg: &serde_json::Value, source: &str) -> Result<ModelConfig, ModelError> {
    let cfg = cfg.get("text_config").unwrap_or(cfg);
    let mut c = config::from_hf(cfg, Arch::Gemma3, source)?;
    if let Some(types) = cfg.get("layer_types").and_then(|v| v.as_array()) {
        c.sliding_layers = types.iter().map(|t| t.as_str() == Some("sliding_attention")).collect();
    }
    let window = cfg.get("sliding_window").and_then(|v| v.as_u64()).unwrap_or(512) as usize;
    let scalar = cfg.get("query_pre_attn_scalar").and_then(|v| v.as_f64()).map_or(c.head_dim as f32, |v| v as f32);
    c.final_logit_softcap = cfg.get("final_logit_softcapping").and_then(|v| v.as_f64()).map(|v| v as f32);
    // Hugging Face Gemma computes x * (1 + w).
    c.norm_weight_offset = 1.0;
    apply_gemma(&mut c, window, scalar);
    Ok(c)
}
