//! Qwen2 / Qwen2.5: the llama layout with biases on the q, k and v projections.
//!
//! The biases are found by name when the weights load; what differs in configuration is only the
//! rotary pairing, which is NeoX-style in both GGUF and Hugging Face checkpoints.

use exo_formats::GgufFile;

use crate::config::{self, Arch, ModelConfig};
use crate::ModelError;

/// Config from GGUF metadata.
pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig, ModelError> {
    config::from_gguf(g, Arch::Qwen2)
}

/// Config from a Hugging Face `config.json`.
pub fn config_from_hf(cfg: &serde_json::Value, source: &str) -> Result<ModelConfig, ModelError> {
    config::from_hf(cfg, Arch::Qwen2, source)
}
