//! The decoder-only transformer forward pass shared by every architecture.
//!
//! One definition serves quantized and float weights: each [`Matrix`] picks its own kernel.
//! Architecture differences are [`ModelConfig`] fields set by `llama.rs`, `qwen2.rs` and
//! `gemma3.rs`. Read [`Transformer::forward`] top to bottom for the whole computation.
//!
//! With the `cuda` feature a model loaded for a GPU ([`Transformer::load_on`]) also holds its
//! weights on the device, and [`Transformer::forward`] hands each call to the same computation
//! written for CUDA in `cuda.rs`.

use exo_kernels::ops::{self, AttentionShape, RopeTable};
use exo_kernels::Matrix;

use crate::config::{Activation, ModelConfig};
use crate::weights::Weights;
use crate::{Device, ModelError};

/// Projections of the same input (q/k/v, or gate/up).
///
/// Stacked into one matrix where the storage type allows it at no memory cost: one pass over
/// the thread pool and one activation quantization instead of several, and a small k or v
/// matrix no longer leaves a thread idle for want of work to split.
enum Projections {
    /// One matrix whose rows are the parts' rows in order; `parts` holds each part's row count.
    Stacked { matrix: Matrix, parts: Vec<usize> },
    /// Separate matrices.
    Apart(Vec<Matrix>),
}

impl Projections {
    /// Loads the matrices `parts` (name, rows) of `cols` columns.
    fn load(w: &Weights, parts: &[(String, usize)], cols: usize) -> Result<Self, ModelError> {
        let named: Vec<(&str, usize)> = parts.iter().map(|(n, r)| (n.as_str(), *r)).collect();
        if let Some(matrix) = w.stacked(&named, cols)? {
            return Ok(Self::Stacked { matrix, parts: parts.iter().map(|p| p.1).collect() });
        }
        let apart = parts.iter().map(|(n, r)| w.matrix(n, *r, cols)).collect::<Result<_, _>>()?;
        Ok(Self::Apart(apart))
    }

    /// Each output `outs[j]` (`t × rows_j`) gets `x · W_jᵀ`; `scratch` holds at least
    /// `t × Σ rows_j` values.
    fn matmul<const N: usize>(&self, x: &[f32], t: usize, mut outs: [&mut [f32]; N], scratch: &mut [f32]) -> Result<(), ModelError> {
        match self {
            Self::Apart(ms) => {
                for (m, out) in ms.iter().zip(outs) {
                    m.matmul(x, t, out)?;
                }
            }
            Self::Stacked { matrix, parts } => {
                let all = &mut scratch[..t * matrix.rows()];
                matrix.matmul(x, t, all)?;
                for (i, row) in all.chunks_exact(matrix.rows()).enumerate() {
                    let mut at = 0;
                    for (out, &n) in outs.iter_mut().zip(parts) {
                        out[i * n..(i + 1) * n].copy_from_slice(&row[at..at + n]);
                        at += n;
                    }
                }
            }
        }
        Ok(())
    }

    /// The underlying matrices, each with the number of tensors it holds.
    fn matrices(&self) -> Vec<(&Matrix, usize)> {
        match self {
            Self::Stacked { matrix, parts } => vec![(matrix, parts.len())],
            Self::Apart(ms) => ms.iter().map(|m| (m, 1)).collect(),
        }
    }
}

/// One decoder block's weights.
struct Layer {
    attn_norm: Vec<f32>,
    qkv: Projections,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Matrix,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate_up: Projections,
    w_down: Matrix,
    post_ffn_norm: Option<Vec<f32>>,
}

impl Layer {
    /// The layer's matrices, each with the number of tensors it holds.
    fn matrices(&self) -> Vec<(&Matrix, usize)> {
        let mut all = self.qkv.matrices();
        all.push((&self.wo, 1));
        all.extend(self.gate_up.matrices());
        all.push((&self.w_down, 1));
        all
    }
}

/// A loaded model: config plus weights.
pub struct Transformer {
    config: ModelConfig,
    tok_embd: Matrix,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    output: Matrix,
    tied: bool,
    #[cfg(feature = "cuda")]
    gpu: Option<crate::cuda::CudaModel>,
}

impl Transformer {
    /// Loads every tensor the config calls for, checking each shape.
    pub fn load(config: ModelConfig, w: &Weights) -> Result<Self, ModelError> {
        config.validate(&w.source())?;
        let c = &config;
        let (h, q, kv, f) = (c.hidden, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let norm = |name: &str, len: usize| -> Result<Vec<f32>, ModelError> {
            let mut v = w.vector(name, len)?;
            v.iter_mut().for_each(|x| *x += c.norm_weight_offset);
            Ok(v)
        };
        let opt_norm = |name: &str, len: usize, wanted: bool| -> Result<Option<Vec<f32>>, ModelError> {
            if wanted { norm(name, len).map(Some) } else { Ok(None) }
        };
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |part: &str| format!("blk.{i}.{part}");
            layers.push(Layer {
                attn_norm: norm(&n("attn_norm.weight"), h)?,
                qkv: Projections::load(w, &[(n("attn_q.weight"), q), (n("attn_k.weight"), kv), (n("attn_v.weight"), kv)], h)?,
                bq: w.opt_vector(&n("attn_q.bias"), q)?,
                bk: w.opt_vector(&n("attn_k.bias"), kv)?,
                bv: w.opt_vector(&n("attn_v.bias"), kv)?,
                q_norm: opt_norm(&n("attn_q_norm.weight"), c.head_dim, c.qk_norm)?,
                k_norm: opt_norm(&n("attn_k_norm.weight"), c.head_dim, c.qk_norm)?,
                wo: w.matrix(&n("attn_output.weight"), h, q)?,
                post_attn_norm: opt_norm(&n("post_attention_norm.weight"), h, c.post_norms)?,
                ffn_norm: norm(&n("ffn_norm.weight"), h)?,
                gate_up: Projections::load(w, &[(n("ffn_gate.weight"), f), (n("ffn_up.weight"), f)], h)?,
                w_down: w.matrix(&n("ffn_down.weight"), h, f)?,
                post_ffn_norm: opt_norm(&n("post_ffw_norm.weight"), h, c.post_norms)?,
            });
        }
        let tok_embd = w.matrix("token_embd.weight", c.vocab_size, h)?;
        // Tied embeddings: no separate output matrix; the embedding doubles as the LM head.
        let tied = !w.has("output.weight");
        let output = if tied { tok_embd.clone() } else { w.matrix("output.weight", c.vocab_size, h)? };
        let output_norm = norm("output_norm.weight", h)?;
        Ok(Self {
            config,
            tok_embd,
            layers,
            output_norm,
            output,
            tied,
            #[cfg(feature = "cuda")]
            gpu: None,
        })
    }

    /// [`Transformer::load`], plus the weights uploaded to `device` when it is a GPU.
    pub fn load_on(config: ModelConfig, w: &Weights, device: Device) -> Result<Self, ModelError> {
        #[allow(unused_mut)]
        let mut t = Self::load(config, w)?;
        match device {
            Device::Cpu => {}
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => t.gpu = Some(crate::cuda::CudaModel::load(&t.config, w, n)?),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => return Err(ModelError::Device(format!("--device {device}: this exo was built without the cuda feature"))),
        }
        Ok(t)
    }

    /// Where the forward pass runs, in words ("cpu", "cuda:0 (NVIDIA H100 80GB HBM3)").
    pub fn device(&self) -> String {
        #[cfg(feature = "cuda")]
        if let Some(g) = &self.gpu {
            return g.describe();
        }
        "cpu".to_string()
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Bytes of weight data, embeddings and output included.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self.layers.iter().flat_map(Layer::matrices).map(|(m, _)| m.n_bytes()).sum();
        layers + self.tok_embd.n_bytes() + if self.tied { 0 } else { self.output.n_bytes() }
    }

    /// The storage types of the matrices, with how many tensors use each.
    pub fn tensor_types(&self) -> Vec<(&'static str, usize)> {
        let mut counts: std::collections::BTreeMap<&'static str, usize> = Default::default();
        let mut add = |m: &Matrix, tensors: usize| *counts.entry(m.ty().name()).or_default() += tensors;
        add(&self.tok_embd, 1);
        for (m, tensors) in self.layers.iter().flat_map(Layer::matrices) {
            add(m, tensors);
        }
        counts.into_iter().collect()
    }

    /// A fresh state for sequences of up to `ctx` tokens, processed `max_batch` at a time.
    ///
    /// `ctx` must be between 1 and the model's training context: the KV cache and rotary tables
    /// are allocated for all of it up front, so an absurd size must be refused, not attempted.
    pub fn new_state(&self, ctx: usize, max_batch: usize) -> Result<State, ModelError> {
        if ctx == 0 || ctx > self.config.train_ctx {
            return Err(ModelError::ContextSize { ctx, max: self.config.train_ctx });
        }
        #[allow(unused_mut)]
        let mut state = State::new(&self.config, ctx, max_batch);
        #[cfg(feature = "cuda")]
        if let Some(g) = &self.gpu {
            state.gpu = Some(g.new_state(ctx, state.max_batch)?);
        }
        Ok(state)
    }

    /// Runs `tokens` (at most `state.max_batch`) after the ones already in `state`'s cache.
    ///
    /// Logits of the last token (or of every token with `all_logits`) are left in
    /// [`State::logits`].
    pub fn forward(&self, state: &mut State, tokens: &[u32], all_logits: bool) -> Result<(), ModelError> {
        let c = &self.config;
        let t = tokens.len();
        let pos0 = state.len;
        if t == 0 {
            return Ok(());
        }
        if t > state.max_batch {
            return Err(ModelError::Batch { tokens: t, max: state.max_batch });
        }
        if pos0 + t > state.ctx {
            return Err(ModelError::ContextFull { need: pos0 + t, ctx: state.ctx });
        }
        if let Some(&tok) = tokens.iter().find(|&&tok| tok as usize >= c.vocab_size) {
            return Err(ModelError::BadToken { id: tok, vocab: c.vocab_size });
        }
        #[cfg(feature = "cuda")]
        if let (Some(g), Some(gs)) = (&self.gpu, &mut state.gpu) {
            g.forward(gs, pos0, tokens, all_logits)?;
            state.n_logits = if all_logits { t } else { 1 };
            state.len = pos0 + t;
            return Ok(());
        }
        let (h, qd, kvd) = (c.hidden, c.q_dim(), c.kv_dim());
        let s = &mut *state;

        // Token embeddings, scaled for Gemma.
        for (i, &tok) in tokens.iter().enumerate() {
            let row = &mut s.x[i * h..(i + 1) * h];
            self.tok_embd.row_to_f32(tok as usize, row)?;
            if let Some(scale) = c.embed_scale {
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }

        for (li, l) in self.layers.iter().enumerate() {
            let x = &mut s.x[..t * h];
            let xn = &mut s.xn[..t * h];
            let (q, k, v) = (&mut s.q[..t * qd], &mut s.k[..t * kvd], &mut s.v[..t * kvd]);

            // Attention: norm, q/k/v projections, biases, per-head norms, rotary positions.
            ops::rms_norm(x, &l.attn_norm, c.rms_eps, xn);
            l.qkv.matmul(xn, t, [&mut *q, &mut *k, &mut *v], &mut s.stacked)?;
            add_bias(q, l.bq.as_deref());
            add_bias(k, l.bk.as_deref());
            add_bias(v, l.bv.as_deref());
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                ops::rms_norm_inplace(q, qn, c.rms_eps);
                ops::rms_norm_inplace(k, kn, c.rms_eps);
            }
            let sliding = c.sliding_layers[li];
            let rope = if sliding { &s.rope_local } else { &s.rope_global };
            for i in 0..t {
                rope.apply(&mut q[i * qd..(i + 1) * qd], pos0 + i);
                rope.apply(&mut k[i * kvd..(i + 1) * kvd], pos0 + i);
            }

            // Append k/v to the preallocated cache and attend over everything so far.
            let (kc, vc) = (&mut s.k_cache[li], &mut s.v_cache[li]);
            kc[pos0 * kvd..(pos0 + t) * kvd].copy_from_slice(k);
            vc[pos0 * kvd..(pos0 + t) * kvd].copy_from_slice(v);
            let shape = AttentionShape {
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
                head_dim: c.head_dim,
                scale: c.attn_scale,
                window: if sliding { c.sliding_window } else { None },
            };
            let att = &mut s.att[..t * qd];
            ops::attention(shape, q, &kc[..(pos0 + t) * kvd], &vc[..(pos0 + t) * kvd], pos0, t, att);

            // Output projection and residual.
            l.wo.matmul(att, t, xn)?;
            if let Some(pn) = &l.post_attn_norm {
                ops::rms_norm_inplace(xn, pn, c.rms_eps);
            }
            ops::add_inplace(x, xn);

            // Gated feed-forward and residual.
            ops::rms_norm(x, &l.ffn_norm, c.rms_eps, xn);
            let (gate, up) = (&mut s.gate[..t * c.ffn_dim], &mut s.up[..t * c.ffn_dim]);
            l.gate_up.matmul(xn, t, [&mut *gate, &mut *up], &mut s.stacked)?;
            match c.activation {
                Activation::Silu => ops::silu_mul(gate, up),
                Activation::GeluTanh => ops::gelu_mul(gate, up),
            }
            l.w_down.matmul(gate, t, xn)?;
            if let Some(pn) = &l.post_ffn_norm {
                ops::rms_norm_inplace(xn, pn, c.rms_eps);
            }
            ops::add_inplace(x, xn);
        }

        // Final norm and LM head, for the last token unless every position is wanted.
        let first = if all_logits { 0 } else { t - 1 };
        let n_out = t - first;
        let xn = &mut s.xn[..n_out * h];
        ops::rms_norm(&s.x[first * h..t * h], &self.output_norm, c.rms_eps, xn);
        if s.logits.len() < n_out * c.vocab_size {
            // Only callers asking for every position's logits (perplexity, tests) get here.
            s.logits.resize(n_out * c.vocab_size, 0.0);
        }
        let logits = &mut s.logits[..n_out * c.vocab_size];
        self.output.matmul(xn, n_out, logits)?;
        if let Some(cap) = c.final_logit_softcap {
            logits.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
        }
        s.n_logits = n_out;
        s.len = pos0 + t;
        Ok(())
    }
}

fn add_bias(x: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            ops::add_inplace(row, b);
        }
    }
}

/// A sequence's KV cache and the scratch buffers of the forward pass, all allocated once.
pub struct State {
    ctx: usize,
    max_batch: usize,
    len: usize,
    n_logits: usize,
    vocab: usize,
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
    rope_global: RopeTable,
    rope_local: RopeTable,
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    stacked: Vec<f32>,
    logits: Vec<f32>,
    #[cfg(feature = "cuda")]
    gpu: Option<crate::cuda::CudaState>,
}

impl State {
    fn new(c: &ModelConfig, ctx: usize, max_batch: usize) -> Self {
        let max_batch = max_batch.max(1);
        let kv = c.kv_dim();
        // vec![0; n] maps zeroed pages lazily, so a large context costs memory only as it fills.
        let cache = || (0..c.n_layers).map(|_| vec![0f32; ctx * kv]).collect();
        let factors = c.rope_freq_factors.as_deref();
        Self {
            ctx,
            max_batch,
            len: 0,
            n_logits: 0,
            vocab: c.vocab_size,
            k_cache: cache(),
            v_cache: cache(),
            rope_global: RopeTable::new(c.rope_style, c.head_dim, c.rope_theta, ctx, factors),
            rope_local: RopeTable::new(c.rope_style, c.head_dim, c.rope_theta_local, ctx, factors),
            x: vec![0.0; max_batch * c.hidden],
            xn: vec![0.0; max_batch * c.hidden],
            q: vec![0.0; max_batch * c.q_dim()],
            k: vec![0.0; max_batch * kv],
            v: vec![0.0; max_batch * kv],
            att: vec![0.0; max_batch * c.q_dim()],
            gate: vec![0.0; max_batch * c.ffn_dim],
            up: vec![0.0; max_batch * c.ffn_dim],
            stacked: vec![0.0; max_batch * (c.q_dim() + 2 * kv).max(2 * c.ffn_dim)],
            logits: vec![0.0; c.vocab_size],
            #[cfg(feature = "cuda")]
            gpu: None,
        }
    }

    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Capacity of the cache in tokens.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Most tokens one forward call accepts.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Forgets cached tokens after the first `len` (a new prompt that shares a prefix, or a
    /// rollback); nothing is freed or reallocated.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Logits of the last forward call: `n` rows of `vocab` values, the last row being the
    /// newest token.
    pub fn logits(&self) -> &[f32] {
        #[cfg(feature = "cuda")]
        if let Some(g) = &self.gpu {
            return g.logits();
        }
        &self.logits[..self.n_logits * self.vocab]
    }

    /// Logits of the newest token.
    pub fn last_logits(&self) -> &[f32] {
        let n = self.n_logits.max(1);
        #[cfg(feature = "cuda")]
        if let Some(g) = &self.gpu {
            return &g.logits()[(n - 1) * self.vocab..n * self.vocab];
        }
        &self.logits[(n - 1) * self.vocab..n * self.vocab]
    }
}
