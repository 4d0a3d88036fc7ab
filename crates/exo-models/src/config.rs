//! Hyper-parameters of a decoder-only transformer, read by each architecture file.

use exo_kernels::ops::RopeStyle;

/// The architectures exo runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 1-3, SmolLM2, Mistral-style models.
    Llama,
    /// Qwen2 / Qwen2.5 (llama with q/k/v biases).
    Qwen2,
    /// Gemma 3 text models.
    Gemma3,
}

impl Arch {
    /// The name GGUF's `general.architecture` uses.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3",
        }
    }

    /// Parses a GGUF architecture name or a Hugging Face `model_type`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" | "mistral" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            "gemma3" | "gemma3_text" => Some(Arch::Gemma3),
            _ => None,
        }
    }
}

/// Gated feed-forward activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: silu(gate) * up.
    Silu,
    /// GeGLU with tanh-approximated GELU.
    GeluTanh,
}

/// Everything the shared forward pass needs to know about a model.
///
/// Architecture differences are fields here, set by the architecture's own file; the forward pass
/// in `transformer.rs` reads them and has no per-architecture branches.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Which architecture this is.
    pub arch: Arch,
    /// Vocabulary entries (rows of the embedding).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Decoder blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Dimensions per attention head.
    pub head_dim: usize,
    /// Inner width of the feed-forward block.
    pub ffn_dim: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE base frequency of full-attention layers.
    pub rope_theta: f32,
    /// RoPE base frequency of sliding-window layers (Gemma 3 uses a lower one).
    pub rope_theta_local: f32,
    /// Pairing of rotated dimensions.
    pub rope_style: RopeStyle,
    /// Per-pair frequency divisors (Llama 3 rope scaling), `head_dim / 2` long.
    pub rope_freq_factors: Option<Vec<f32>>,
    /// Context length the model was trained for, in tokens.
    pub train_ctx: usize,
    /// Feed-forward activation.
    pub activation: Activation,
    /// Multiplier applied to token embeddings (Gemma: sqrt(hidden)).
    pub embed_scale: Option<f32>,
    /// Multiplier applied to q·k before softmax.
    pub attn_scale: f32,
    /// Per-head RMSNorm of queries and keys (Gemma 3).
    pub qk_norm: bool,
    /// Extra RMSNorm on the attention and feed-forward outputs before the residual add (Gemma).
    pub post_norms: bool,
    /// Sliding-window width in tokens, for layers marked in `sliding_layers`.
    pub sliding_window: Option<usize>,
    /// Per layer: whether it uses the sliding window.
    pub sliding_layers: Vec<bool>,
    /// Added to every RMSNorm weight at load time: Hugging Face Gemma stores `w` and computes
    /// `x * (1 + w)`, while GGUF conversion already stored `1 + w`.
    pub norm_weight_offset: f32,
    /// `tanh` soft-capping of the final logits (Gemma 2 style), if any.
    pub final_logit_softcap: Option<f32>,
}

impl ModelConfig {
    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// The llama-family choices every architecture starts from (SwiGLU, NeoX rotary pairs,
    /// 1/sqrt(head_dim) attention scale, no extra norms or windows); sizes are left zero for the
    /// caller to fill in. Hugging Face checkpoints keep q/k unpermuted and rotate halves, hence NeoX.
    fn llama_family(arch: Arch, n_layers: usize, head_dim: usize) -> Self {
        Self {
            arch,
            vocab_size: 0,
            hidden: 0,
            n_layers,
            n_heads: 0,
            n_kv_heads: 0,
            head_dim,
            ffn_dim: 0,
            rms_eps: 1e-6,
            rope_theta: 10_000.0,
            rope_theta_local: 10_000.0,
            rope_style: RopeStyle::Neox,
            rope_freq_factors: None,
            train_ctx: 2048,
            activation: Activation::Silu,
            embed_scale: None,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            qk_norm: false,
            post_norms: false,
            sliding_window: None,
            sliding_layers: vec![false; n_layers],
            norm_weight_offset: 0.0,
            final_logit_softcap: None,
        }
    }

    /// Checks the relations the forward pass relies on; `source` names the file for messages.
    pub fn validate(&self, source: &str) -> Result<(), crate::ModelError> {
        let bad = |what: String| Err(crate::ModelError::Config { file: source.to_string(), what });
        if self.n_heads == 0 || self.n_kv_heads == 0 || self.head_dim == 0 || self.hidden == 0 {
            return bad(format!(
                "heads {} / kv heads {} / head dim {} / hidden {} must all be positive",
                self.n_heads, self.n_kv_heads, self.head_dim, self.hidden
            ));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!("{} query heads are not a multiple of {} kv heads", self.n_heads, self.n_kv_heads));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dimension {} is odd; RoPE needs pairs", self.head_dim));
        }
        if self.n_layers == 0 || self.n_layers > 1024 {
            return bad(format!("layer count {} outside 1..=1024", self.n_layers));
        }
        if self.vocab_size == 0 || self.ffn_dim == 0 {
            return bad(format!("vocab {} and ffn width {} must be positive", self.vocab_size, self.ffn_dim));
        }
        if self.sliding_layers.len() != self.n_layers {
            return bad(format!("{} sliding-window flags for {} layers", self.sliding_layers.len(), self.n_layers));
        }
        if let Some(f) = &self.rope_freq_factors {
            if f.len() != self.head_dim / 2 {
                return bad(format!("rope frequency factors have {} entries, expected {}", f.len(), self.head_dim / 2));
            }
        }
        Ok(())
    }
}

/// Reads the hyper-parameters every architecture shares from GGUF metadata (`{arch}.*` keys),
/// with llama-family defaults for the rest; architecture files adjust the result.
pub fn from_gguf(g: &exo_formats::GgufFile, arch: Arch) -> Result<ModelConfig, crate::ModelError> {
    let a = arch.name();
    let key = |k: &str| format!("{a}.{k}");
    let u = |k: &str| -> Result<usize, crate::ModelError> { Ok(g.get_u64(&key(k))? as usize) };
    let hidden = u("embedding_length")?;
    let n_heads = u("attention.head_count")?;
    let n_kv_heads = g.opt_u64(&key("attention.head_count_kv")).map_or(n_heads, |v| v as usize);
    let head_dim = g.opt_u64(&key("attention.key_length")).map_or(hidden / n_heads.max(1), |v| v as usize);
    let n_layers = u("block_count")?;
    let vocab_size = match g.opt_u64(&key("vocab_size")) {
        Some(v) => v as usize,
        None => g.tensor("token_embd.weight").and_then(|t| t.dims.get(1).copied()).unwrap_or(0),
    };
    let rope_theta = g.opt_f32(&key("rope.freq_base")).unwrap_or(10_000.0);
    let rope_freq_factors = match g.tensor("rope_freqs.weight") {
        Some(info) => {
            let m = exo_kernels::Matrix::new("rope_freqs.weight", info.ggml_type, 1, info.dims[0], g.tensor_bytes(info))?;
            Some(m.to_f32())
        }
        None => None,
    };
    Ok(ModelConfig {
        arch,
        vocab_size,
        hidden,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim: u("feed_forward_length")?,
        rms_eps: g.opt_f32(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
        rope_theta,
        rope_theta_local: rope_theta,
        rope_freq_factors,
        train_ctx: g.opt_u64(&key("context_length")).map_or(2048, |v| v as usize),
        ..ModelConfig::llama_family(arch, n_layers, head_dim)
    })
}

/// Reads the shared hyper-parameters from a Hugging Face `config.json`.
pub fn from_hf(cfg: &serde_json::Value, arch: Arch, source: &str) -> Result<ModelConfig, crate::ModelError> {
    let field = |k: &str| cfg.get(k).filter(|v| !v.is_null());
    let req = |k: &str| hf_usize(cfg, k, source);
    let opt = |k: &str| field(k).and_then(|v| v.as_u64()).map(|v| v as usize);
    let hidden = req("hidden_size")?;
    let n_heads = req("num_attention_heads")?;
    let n_layers = req("num_hidden_layers")?;
    let head_dim = opt("head_dim").unwrap_or(hidden / n_heads.max(1));
    // transformers 5 moved rope settings under `rope_parameters` (per attention type for
    // Gemma 3); older configs keep `rope_theta` at the top level.
    let rope_theta_of = |kind: Option<&str>| -> Option<f32> {
        let params = field("rope_parameters")?;
        let params = kind.and_then(|k| params.get(k)).unwrap_or(params);
        params.get("rope_theta")?.as_f64().map(|v| v as f32)
    };
    let rope_theta = field("rope_theta")
        .and_then(|v| v.as_f64())
        .map(|v| v as f32)
        .or_else(|| rope_theta_of(Some("full_attention")))
        .unwrap_or(10_000.0);
    let rope_theta_local = field("rope_local_base_freq")
        .and_then(|v| v.as_f64())
        .map(|v| v as f32)
        .or_else(|| rope_theta_of(Some("sliding_attention")))
        .unwrap_or(rope_theta);
    Ok(ModelConfig {
        arch,
        vocab_size: req("vocab_size")?,
        hidden,
        n_layers,
        n_heads,
        n_kv_heads: opt("num_key_value_heads").unwrap_or(n_heads),
        head_dim,
        ffn_dim: req("intermediate_size")?,
        rms_eps: field("rms_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-6) as f32,
        rope_theta,
        rope_theta_local,
        train_ctx: opt("max_position_embeddings").unwrap_or(2048),
        ..ModelConfig::llama_family(arch, n_layers, head_dim)
    })
}

/// Integer field `key` of a Hugging Face `config.json`; an error naming the field when it is
/// missing or not a non-negative integer.
pub(crate) fn hf_usize(cfg: &serde_json::Value, key: &str, source: &str) -> Result<usize, crate::ModelError> {
    cfg.get(key).and_then(|v| v.as_u64()).map(|v| v as usize).ok_or_else(|| crate::ModelError::Config {
        file: source.to_string(),
        what: format!("config.json: field '{key}' is missing or not a non-negative integer"),
    })
}
