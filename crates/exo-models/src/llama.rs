//! Llama (1, 2, 3.x), SmolLM2 and other llama-layout models: pre-norm blocks, SwiGLU, RoPE.

use exo_formats::GgufFile;
use exo_kernels::ops::RopeStyle;

use crate::config::{self, Arch, ModelConfig};
use crate::ModelError;

/// Config from GGUF metadata.
pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig, ModelError> {
    let mut c = config::from_gguf(g, Arch::Llama)?;
    // llama.cpp's converter permutes llama q/k weights so that rotated pairs are adjacent.
    c.rope_style = RopeStyle::Interleaved;
    Ok(c)
}

/// Config from a Hugging Face `config.json`, including Llama 3's rope scaling.
pub fn config_from_hf(cfg: &serde_json::Value, source: &str) -> Result<ModelConfig, ModelError> {
    let mut c = config::from_hf(cfg, Arch::Llama, source)?;
    let scaling = cfg.get("rope_scaling").filter(|v| !v.is_null()).or_else(|| cfg.get("rope_parameters"));
    if let Some(s) = scaling {
        let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(|v| v.as_str());
        if kind == Some("llama3") {
            c.rope_freq_factors = Some(llama3_freq_factors(s, &c, source)?);
        }
    }
    Ok(c)
}

/// Llama 3.1's frequency-dependent rope scaling, as divisors of each pair's inverse frequency.
fn llama3_freq_factors(s: &serde_json::Value, c: &ModelConfig, source: &str) -> Result<Vec<f32>, ModelError> {
    let num = |k: &str| {
        s.get(k).and_then(|v| v.as_f64()).ok_or_else(|| ModelError::Config {
            file: source.to_string(),
            what: format!("config.json: rope scaling field '{k}' is missing or not a number"),
        })
    };
    let (factor, low, high, orig) =
        (num("factor")?, num("low_freq_factor")?, num("high_freq_factor")?, num("original_max_position_embeddings")?);
    let (low_wavelen, high_wavelen) = (orig / low, orig / high);
    Ok((0..c.head_dim / 2)
        .map(|i| {
            let freq = 1.0 / (c.rope_theta as f64).powf(2.0 * i as f64 / c.head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor as f32
            } else {
                let smooth = (orig / wavelen - low) / (high - low);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect())
}
