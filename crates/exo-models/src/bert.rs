//! BERT encoders (`model_type: "bert"`, e.g. all-MiniLM-L6-v2) from a Hugging Face directory.
//!
//! Token + position + segment embeddings and a LayerNorm, then post-norm layers: bidirectional
//! self-attention and an erf-GELU feed-forward, each added to the residual stream before its
//! LayerNorm. [`Bert::forward`] returns the last hidden state of every token.
//!
//! The texts of a batch are packed end to end rather than padded to the longest: the dense layers
//! multiply all tokens of all texts as one matrix, and attention runs per text. That is exactly
//! what a padded batch with an attention mask computes (masked positions get zero weight) without
//! spending work on padding.

use exo_formats::HfModelDir;
use exo_kernels::threads::for_each_row_mut;
use exo_kernels::{dense, ops, Matrix};

use crate::config::hf_usize;
use crate::weights::hf_matrix;
use crate::ModelError;

/// Hyper-parameters from `config.json`.
#[derive(Clone, Debug)]
pub struct BertConfig {
    /// Vocabulary entries (rows of the word embedding).
    pub vocab_size: usize,
    /// Width of the hidden states (and of the output vectors).
    pub hidden: usize,
    /// Encoder layers.
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Inner width of the feed-forward block.
    pub ffn_dim: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f32,
    /// Position embeddings: the longest sequence in tokens.
    pub max_positions: usize,
    /// Segment (token type) embeddings; single texts use segment 0.
    pub type_vocab_size: usize,
}

impl BertConfig {
    /// Reads and checks a BERT `config.json`; `source` names the file in errors.
    pub fn from_hf(cfg: &serde_json::Value, source: &str) -> Result<Self, ModelError> {
        let bad = |what: String| ModelError::Config { file: source.to_string(), what };
        let text = |key: &str, default: &str| cfg.get(key).and_then(|v| v.as_str()).unwrap_or(default).to_string();
        // BERT's "gelu" is the exact erf form; tanh-approximating variants would need their own kernel.
        let act = text("hidden_act", "gelu");
        if act != "gelu" {
            return Err(bad(format!("config.json: hidden_act '{act}' is not supported (exo's BERT runs 'gelu')")));
        }
        let pos = text("position_embedding_type", "absolute");
        if pos != "absolute" {
            return Err(bad(format!("config.json: position_embedding_type '{pos}' is not supported (exo's BERT runs 'absolute')")));
        }
        let c = Self {
            vocab_size: hf_usize(cfg, "vocab_size", source)?,
            hidden: hf_usize(cfg, "hidden_size", source)?,
            n_layers: hf_usize(cfg, "num_hidden_layers", source)?,
            n_heads: hf_usize(cfg, "num_attention_heads", source)?,
            ffn_dim: hf_usize(cfg, "intermediate_size", source)?,
            layer_norm_eps: cfg.get("layer_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-12) as f32,
            max_positions: hf_usize(cfg, "max_position_embeddings", source)?,
            type_vocab_size: hf_usize(cfg, "type_vocab_size", source)?,
        };
        let sizes = [c.vocab_size, c.hidden, c.n_heads, c.ffn_dim, c.max_positions, c.type_vocab_size];
        if sizes.contains(&0) {
            return Err(bad(format!(
                "config.json: vocab_size {}, hidden_size {}, num_attention_heads {}, intermediate_size {}, \
                 max_position_embeddings {} and type_vocab_size {} must all be positive",
                c.vocab_size, c.hidden, c.n_heads, c.ffn_dim, c.max_positions, c.type_vocab_size
            )));
        }
        if !c.hidden.is_multiple_of(c.n_heads) {
            return Err(bad(format!("config.json: hidden_size {} is not a multiple of num_attention_heads {}", c.hidden, c.n_heads)));
        }
        if c.n_layers == 0 || c.n_layers > 1024 {
            return Err(bad(format!("config.json: num_hidden_layers {} outside 1..=1024", c.n_layers)));
        }
        Ok(c)
    }

    /// Dimensions per attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.n_heads
    }
}

/// An `nn.Linear`: `n_out × n_in` weights and a bias.
struct Dense {
    w: Vec<f32>,
    b: Vec<f32>,
    n_in: usize,
}

impl Dense {
    /// `out = x Wᵀ + b` for `t` rows, or `out += x Wᵀ + b` with `residual`.
    fn apply(&self, x: &[f32], t: usize, out: &mut [f32], residual: bool) {
        for row in out.chunks_exact_mut(self.b.len()) {
            if residual {
                ops::add_inplace(row, &self.b);
            } else {
                row.copy_from_slice(&self.b);
            }
        }
        dense::matmul_t_acc(x, t, self.n_in, &self.w, self.b.len(), out);
    }
}

struct LayerNorm {
    w: Vec<f32>,
    b: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    fn apply(&self, x: &mut [f32]) {
        for_each_row_mut(x, self.w.len(), |row| ops::layer_norm_inplace(row, &self.w, &self.b, self.eps));
    }
}

struct Layer {
    /// Queries, keys and values stacked into one `3·hidden × hidden` product.
    qkv: Dense,
    attn_out: Dense,
    attn_norm: LayerNorm,
    ffn_up: Dense,
    ffn_down: Dense,
    ffn_norm: LayerNorm,
}

/// A loaded BERT encoder.
pub struct Bert {
    config: BertConfig,
    word: Matrix,
    /// `max_positions × hidden`.
    position: Vec<f32>,
    /// The segment-0 embedding, added to every token.
    segment: Vec<f32>,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
}

/// Reads tensors named as in the checkpoint, under the `bert.` prefix that pre-training
/// checkpoints (`BertForMaskedLM`, ...) put in front of the encoder's names.
struct Tensors<'a> {
    h: &'a HfModelDir,
    prefix: &'static str,
}

impl Tensors<'_> {
    fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        Ok(self.matrix(name, shape)?.to_f32())
    }

    fn matrix(&self, name: &str, shape: &[usize]) -> Result<Matrix, ModelError> {
        hf_matrix(self.h, &format!("{}{name}", self.prefix), shape)
    }

    fn dense(&self, name: &str, n_out: usize, n_in: usize) -> Result<Dense, ModelError> {
        Ok(Dense { w: self.f32(&format!("{name}.weight"), &[n_out, n_in])?, b: self.f32(&format!("{name}.bias"), &[n_out])?, n_in })
    }

    fn norm(&self, name: &str, dim: usize, eps: f32) -> Result<LayerNorm, ModelError> {
        Ok(LayerNorm { w: self.f32(&format!("{name}.weight"), &[dim])?, b: self.f32(&format!("{name}.bias"), &[dim])?, eps })
    }
}

impl Bert {
    /// Reads `config.json` and loads every tensor it calls for, checking each shape.
    pub fn load(h: &HfModelDir) -> Result<Self, ModelError> {
        let config = BertConfig::from_hf(h.config(), &h.dir().join("config.json").display().to_string())?;
        let prefix = if h.tensor("bert.embeddings.word_embeddings.weight").is_some() { "bert." } else { "" };
        let t = Tensors { h, prefix };
        let (hd, f, eps) = (config.hidden, config.ffn_dim, config.layer_norm_eps);
        let mut layers = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let n = |part: &str| format!("encoder.layer.{i}.{part}");
            let q = t.dense(&n("attention.self.query"), hd, hd)?;
            let k = t.dense(&n("attention.self.key"), hd, hd)?;
            let v = t.dense(&n("attention.self.value"), hd, hd)?;
            layers.push(Layer {
                qkv: Dense { w: [q.w, k.w, v.w].concat(), b: [q.b, k.b, v.b].concat(), n_in: hd },
                attn_out: t.dense(&n("attention.output.dense"), hd, hd)?,
                attn_norm: t.norm(&n("attention.output.LayerNorm"), hd, eps)?,
                ffn_up: t.dense(&n("intermediate.dense"), f, hd)?,
                ffn_down: t.dense(&n("output.dense"), hd, f)?,
                ffn_norm: t.norm(&n("output.LayerNorm"), hd, eps)?,
            });
        }
        let segments = t.f32("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, hd])?;
        Ok(Self {
            word: t.matrix("embeddings.word_embeddings.weight", &[config.vocab_size, hd])?,
            position: t.f32("embeddings.position_embeddings.weight", &[config.max_positions, hd])?,
            segment: segments[..hd].to_vec(),
            embed_norm: t.norm("embeddings.LayerNorm", hd, eps)?,
            layers,
            config,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The last hidden state of every token of `seqs` (token ids, each at most
    /// `max_positions` long): `Σ len × hidden` values, sequence after sequence.
    pub fn forward(&self, seqs: &[Vec<u32>]) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let (h, f) = (c.hidden, c.ffn_dim);
        let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let total: usize = lens.iter().sum();

        // Embeddings: word + position + segment 0, then LayerNorm.
        let mut x = vec![0f32; total * h];
        let mut rows = x.chunks_exact_mut(h);
        for seq in seqs {
            if seq.len() > c.max_positions {
                return Err(ModelError::ContextFull { need: seq.len(), ctx: c.max_positions });
            }
            for ((&id, row), pos) in seq.iter().zip(rows.by_ref()).zip(self.position.chunks_exact(h)) {
                if id as usize >= c.vocab_size {
                    return Err(ModelError::BadToken { id, vocab: c.vocab_size });
                }
                self.word.row_to_f32(id as usize, row)?;
                ops::add_inplace(row, pos);
                ops::add_inplace(row, &self.segment);
            }
        }
        self.embed_norm.apply(&mut x);

        let mut qkv = vec![0f32; total * 3 * h];
        let mut att = vec![0f32; total * h];
        let mut ffn = vec![0f32; total * f];
        let scale = 1.0 / (c.head_dim() as f32).sqrt();
        for l in &self.layers {
            // Self-attention over each text, output projection added to the residual, LayerNorm.
            l.qkv.apply(&x, total, &mut qkv, false);
            dense::packed_attention(&qkv, &lens, c.n_heads, c.head_dim(), scale, &mut att);
            l.attn_out.apply(&att, total, &mut x, true);
            l.attn_norm.apply(&mut x);

            // Feed-forward with the erf GELU, added to the residual, LayerNorm.
            l.ffn_up.apply(&x, total, &mut ffn, false);
            for_each_row_mut(&mut ffn, f, ops::gelu_erf_inplace);
            l.ffn_down.apply(&ffn, total, &mut x, true);
            l.ffn_norm.apply(&mut x);
        }
        Ok(x)
    }
}
