//! The decoder-only transformer forward pass shared by every architecture.
//!
//! One definition serves quantized and float weights: each [`Matrix`] picks its own kernel.
//! Architecture differences are [`ModelConfig`] fields set by `llama.rs`, `qwen2.rs` and
//! `gemma3.rs`. Read [`Transformer::forward`] top to bottom for the whole computation.
//!
//! With the `cuda` feature a model loaded for a GPU ([`Transformer::load_on`]) also holds its
//! weights on the device, and [`Transformer::forward`] hands each call to the same computation
//! written for CUDA in `cuda.rs`.

use exo_kernels::kv::{KvType, TokenPos, BLOCK_TOKENS};
use exo_kernels::ops::{self, AttentionShape, RopeTable};
use exo_kernels::{KernelError, Matrix};

use crate::calibration::{ActivationStats, Site};
use crate::config::{Activation, ModelConfig};
use crate::weights::Weights;
use crate::{Device, LoadOptions, ModelError};

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

    fn matrices_mut(&mut self) -> Vec<&mut Matrix> {
        match self {
            Self::Stacked { matrix, .. } => vec![matrix],
            Self::Apart(ms) => ms.iter_mut().collect(),
        }
    }

    /// Gives each matrix the GPU copy `upload` makes of the parts it holds (the `parts` this
    /// was loaded from, in order), where it makes one.
    #[cfg(feature = "metal")]
    fn offload(
        &mut self,
        parts: &[(String, usize)],
        upload: impl Fn(&[(String, usize)]) -> Result<Option<exo_kernels::metal::MetalMatrix>, ModelError>,
    ) -> Result<(), ModelError> {
        match self {
            Self::Stacked { matrix, .. } => {
                if let Some(gpu) = upload(parts)? {
                    matrix.offload(gpu);
                }
            }
            Self::Apart(ms) => {
                for (m, part) in ms.iter_mut().zip(parts) {
                    if let Some(gpu) = upload(std::slice::from_ref(part))? {
                        m.offload(gpu);
                    }
                }
            }
        }
        Ok(())
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
            if wanted {
                norm(name, len).map(Some)
            } else {
                Ok(None)
            }
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

    /// [`Transformer::load`], plus the weights of the layers `opts` gives the GPU uploaded to it
    /// when `opts.device` is one.
    pub fn load_on(config: ModelConfig, w: &Weights, opts: &LoadOptions) -> Result<Self, ModelError> {
        #[allow(unused_mut)]
        let mut t = Self::load(config, w)?;
        match opts.device {
            Device::Cpu => {}
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => t.gpu = crate::cuda::CudaModel::load(&t.config, w, n, opts)?,
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => {
                return Err(ModelError::Device(format!("--device {}: this exo was built without the cuda feature", opts.device)));
            }
            #[cfg(feature = "metal")]
            Device::Metal(n) => t.offload_to_metal(w, n)?,
            #[cfg(not(feature = "metal"))]
            Device::Metal(_) => {
                return Err(ModelError::Device(format!("--device {}: this exo was built without the metal feature", opts.device)));
            }
        }
        Ok(t)
    }

    /// Gives every layer matrix and the LM head a copy on Apple GPU `ordinal` that takes their
    /// products, in the types `--quantize` gives them (the device's share of [`Weights`]'s
    /// rule, as for CUDA); matrices in a format candle's Metal kernels lack (nf4, fp8) keep
    /// their products on the CPU.
    #[cfg(feature = "metal")]
    fn offload_to_metal(&mut self, w: &Weights, ordinal: usize) -> Result<(), ModelError> {
        use exo_kernels::metal::{MetalDevice, MetalMatrix};
        use exo_quant::QuantFormat;
        let dev = MetalDevice::new(ordinal)?;
        let c = &self.config;
        let (h, q, kv, f, vocab) = (c.hidden, c.q_dim(), c.kv_dim(), c.ffn_dim, c.vocab_size);
        // The parts stacked into one matrix, in one type that candle multiplies; None otherwise.
        let upload = |parts: &[(String, usize)], cols: usize| -> Result<Option<MetalMatrix>, ModelError> {
            let (mut ty, mut bytes, mut rows) = (None, Vec::new(), 0);
            for (name, r) in parts {
                // INT8 and INT4 arrive as their Q8_0 and Q4_1 carriers; NF4 and FP8 in exo's layouts.
                let (QuantFormat::Ggml(t), b) = w.device_matrix(name, *r, cols)? else { return Ok(None) };
                if !MetalMatrix::supported(t) || ty.is_some_and(|x| x != t) {
                    return Ok(None);
                }
                ty = Some(t);
                bytes.extend_from_slice(&b);
                rows += r;
            }
            let Some(ty) = ty else { return Ok(None) };
            let name = parts.iter().map(|p| p.0.as_str()).collect::<Vec<_>>().join("+");
            Ok(Some(MetalMatrix::new(&dev, &name, ty, rows, cols, &bytes)?))
        };
        for (i, l) in self.layers.iter_mut().enumerate() {
            let n = |part: &str| format!("blk.{i}.{part}");
            l.qkv.offload(&[(n("attn_q.weight"), q), (n("attn_k.weight"), kv), (n("attn_v.weight"), kv)], |p| upload(p, h))?;
            l.gate_up.offload(&[(n("ffn_gate.weight"), f), (n("ffn_up.weight"), f)], |p| upload(p, h))?;
            if let Some(gpu) = upload(&[(n("attn_output.weight"), h)], q)? {
                l.wo.offload(gpu);
            }
            if let Some(gpu) = upload(&[(n("ffn_down.weight"), h)], f)? {
                l.w_down.offload(gpu);
            }
        }
        if let Some(gpu) = upload(&[(w.lm_head().to_string(), vocab)], h)? {
            self.output.offload(gpu);
        }
        Ok(())
    }

    /// Layers the CPU runs: all, or those before the GPU's.
    fn cpu_layers(&self) -> usize {
        #[cfg(feature = "cuda")]
        if let Some(g) = &self.gpu {
            return g.first_layer();
        }
        self.layers.len()
    }

    /// Bytes of device memory free now, when the model runs on a GPU.
    pub fn device_free_memory(&self) -> Option<usize> {
        #[cfg(feature = "cuda")]
        if let Some(g) = &self.gpu {
            return g.free_memory().ok();
        }
        None
    }

    /// Where the forward pass runs, in words ("cpu", "cuda:0 (NVIDIA H100 80GB HBM3)").
    pub fn device(&self) -> String {
        #[cfg(feature = "cuda")]
        if let Some(g) = &self.gpu {
            return g.describe();
        }
        "cpu".to_string()
    }

    /// Replaces every matrix named `name` (a GGUF tensor name; a tied embedding is both the
    /// embedding and the LM head) with `m`, returning the one replaced, or `None` when no matrix
    /// has that name (or it is stacked with others). For measuring one tensor's effect on the
    /// output ([`crate::calibration`]).
    pub fn swap_matrix(&mut self, name: &str, m: Matrix) -> Option<Matrix> {
        let mut all: Vec<&mut Matrix> = vec![&mut self.tok_embd, &mut self.output];
        for l in &mut self.layers {
            all.extend(l.qkv.matrices_mut());
            all.push(&mut l.wo);
            all.extend(l.gate_up.matrices_mut());
            all.push(&mut l.w_down);
        }
        let mut old = None;
        for slot in all.into_iter().filter(|s| s.name() == name) {
            if slot.rows() != m.rows() || slot.cols() != m.cols() {
                return None;
            }
            old = Some(std::mem::replace(slot, m.clone()));
        }
        old
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
        let mut add = |m: &Matrix, tensors: usize| *counts.entry(m.format().name()).or_default() += tensors;
        add(&self.tok_embd, 1);
        for (m, tensors) in self.layers.iter().flat_map(Layer::matrices) {
            add(m, tensors);
        }
        counts.into_iter().collect()
    }

    /// Paged KV storage of `n_blocks` blocks for this model's layers: `ty` rows in host memory
    /// for the layers the CPU runs, f16 rows in device memory for the GPU's.
    pub fn new_kv_cache(&self, ty: KvType, n_blocks: usize) -> Result<KvCache, ModelError> {
        let c = &self.config;
        Ok(KvCache {
            host: exo_kernels::kv::KvCache::new(ty, self.cpu_layers(), c.n_kv_heads, c.head_dim, n_blocks)?,
            #[cfg(feature = "cuda")]
            gpu: self.gpu.as_ref().map(|g| g.new_kv(n_blocks)).transpose()?,
        })
    }

    /// Scratch buffers for forward calls of up to `max_tokens` tokens at positions below
    /// `max_pos` (at most the model's training context), on the device too when the model
    /// runs there.
    pub fn new_scratch(&self, max_tokens: usize, max_pos: usize) -> Result<Scratch, ModelError> {
        if max_pos == 0 || max_pos > self.config.train_ctx {
            return Err(ModelError::ContextSize { ctx: max_pos, max: self.config.train_ctx });
        }
        #[allow(unused_mut)]
        let mut s = Scratch::new(&self.config, max_tokens, max_pos);
        #[cfg(feature = "cuda")]
        if let Some(g) = &self.gpu {
            s.gpu = Some(g.new_scratch(s.max_tokens, max_pos)?);
        }
        Ok(s)
    }

    /// A fresh state for one sequence of up to `ctx` tokens, processed `max_batch` at a time,
    /// with an f32 KV cache.
    ///
    /// `ctx` must be between 1 and the model's training context: the KV cache and rotary tables
    /// are allocated for all of it up front, so an absurd size must be refused, not attempted.
    pub fn new_state(&self, ctx: usize, max_batch: usize) -> Result<State, ModelError> {
        self.new_state_with(ctx, max_batch, KvType::F32)
    }

    /// [`Transformer::new_state`] with KV rows stored as `kv_type`.
    pub fn new_state_with(&self, ctx: usize, max_batch: usize, kv_type: KvType) -> Result<State, ModelError> {
        let scratch = self.new_scratch(max_batch, ctx)?;
        let n_blocks = ctx.div_ceil(BLOCK_TOKENS);
        let kv = self.new_kv_cache(kv_type, n_blocks)?;
        Ok(State { kv, blocks: (0..n_blocks as u32).collect(), scratch, ctx, len: 0 })
    }

    /// Runs `tokens` (at most `state.max_batch`) after the ones already in `state`'s cache.
    ///
    /// Logits of the last token (or of every token with `all_logits`) are left in
    /// [`State::logits`].
    pub fn forward(&self, state: &mut State, tokens: &[u32], all_logits: bool) -> Result<(), ModelError> {
        if tokens.is_empty() {
            return Ok(());
        }
        if state.len + tokens.len() > state.ctx {
            return Err(ModelError::ContextFull { need: state.len + tokens.len(), ctx: state.ctx });
        }
        let logits = if all_logits { Logits::All } else { Logits::Last };
        let seg = Segment { tokens, pos0: state.len, blocks: &state.blocks, logits };
        self.forward_batch(&mut state.kv, &mut state.scratch, &[seg])?;
        state.len += tokens.len();
        Ok(())
    }

    /// The embedding rows of `tokens` into `x` (`hidden` values each), scaled for Gemma.
    fn embed(&self, tokens: &[u32], x: &mut [f32]) -> Result<(), ModelError> {
        let vocab = self.config.vocab_size;
        if let Some(&tok) = tokens.iter().find(|&&tok| tok as usize >= vocab) {
            return Err(ModelError::BadToken { id: tok, vocab });
        }
        self.tok_embd.rows_to_f32(tokens, x)?;
        if let Some(scale) = self.config.embed_scale {
            x.iter_mut().for_each(|v| *v *= scale);
        }
        Ok(())
    }

    /// Runs one step for a batch of sequences: each segment's tokens follow the `pos0` already
    /// cached in its blocks of `kv`. Their K/V rows are written to those blocks.
    ///
    /// Logits are left in [`Scratch::logits`]: for each segment in order, none, its last
    /// token's row, or one row per token, as its [`Logits`] asks.
    pub fn forward_batch(&self, kv: &mut KvCache, s: &mut Scratch, segments: &[Segment]) -> Result<(), ModelError> {
        let t: usize = segments.iter().map(|g| g.tokens.len()).sum();
        if t == 0 {
            return Ok(());
        }
        if t > s.max_tokens {
            return Err(ModelError::Batch { tokens: t, max: s.max_tokens });
        }
        for g in segments {
            let need = g.pos0 + g.tokens.len();
            let room = (g.blocks.len() * BLOCK_TOKENS).min(s.max_pos);
            if need > room {
                return Err(ModelError::ContextFull { need, ctx: room });
            }
            if let Some(&b) = g.blocks.iter().find(|&&b| b as usize >= kv.n_blocks()) {
                return Err(ModelError::Kernel(KernelError::KvCache(format!(
                    "block {b} is outside the cache of {} blocks",
                    kv.n_blocks()
                ))));
            }
        }
        #[cfg(feature = "cuda")]
        if let (Some(g), Some(gkv)) = (&self.gpu, &kv.gpu) {
            if s.gpu.is_none() {
                return Err(ModelError::Device("this scratch was made before the model was on the GPU".to_string()));
            }
            // The layers the GPU does not hold run here first; it continues from their output.
            self.embed_layers(&mut kv.host, s, segments, g.first_layer())?;
            if let Some(gs) = s.gpu.as_mut() {
                g.forward(gkv, gs, segments, &s.x[..t * self.config.hidden])?;
                s.n_logits = gs.n_logits();
            }
            s.on_gpu = true;
            return Ok(());
        }
        self.embed_layers(&mut kv.host, s, segments, self.layers.len())?;
        self.head(s, segments)
    }

    /// Embeds the segments' tokens into `s.x` (with each token's position in `s.pos`) and runs
    /// the first `n_layers` layers over them; the caller has checked batch, blocks and context.
    fn embed_layers(&self, kv: &mut exo_kernels::kv::KvCache, s: &mut Scratch, segments: &[Segment], n_layers: usize) -> Result<(), ModelError> {
        let c = &self.config;
        let t: usize = segments.iter().map(|g| g.tokens.len()).sum();
        let (h, qd, kvd) = (c.hidden, c.q_dim(), c.kv_dim());

        // Token embeddings, scaled for Gemma, with each token's position.
        let mut row = 0;
        for (gi, g) in segments.iter().enumerate() {
            let n = g.tokens.len();
            self.embed(g.tokens, &mut s.x[row * h..(row + n) * h])?;
            for i in 0..n {
                s.pos[row + i] = TokenPos { seq: gi, pos: g.pos0 + i };
            }
            row += n;
        }

        for (li, l) in self.layers[..n_layers].iter().enumerate() {
            let x = &mut s.x[..t * h];
            let xn = &mut s.xn[..t * h];
            let (q, k, v) = (&mut s.q[..t * qd], &mut s.k[..t * kvd], &mut s.v[..t * kvd]);

            // Attention: norm, q/k/v projections, biases, per-head norms, rotary positions.
            ops::rms_norm(x, &l.attn_norm, c.rms_eps, xn);
            record(&mut s.activations, li, Site::AttnIn, xn, h);
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
            for (i, p) in s.pos[..t].iter().enumerate() {
                rope.apply(&mut q[i * qd..(i + 1) * qd], p.pos);
                rope.apply(&mut k[i * kvd..(i + 1) * kvd], p.pos);
            }

            // Append k/v to each sequence's blocks and attend over everything it has so far.
            let mut at = 0;
            for g in segments {
                let n = g.tokens.len();
                kv.write(li, g.blocks, g.pos0, &k[at * kvd..(at + n) * kvd], &v[at * kvd..(at + n) * kvd]);
                at += n;
            }
            let shape = AttentionShape {
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
                head_dim: c.head_dim,
                scale: c.attn_scale,
                window: if sliding { c.sliding_window } else { None },
            };
            let att = &mut s.att[..t * qd];
            kv.attention(li, shape, &s.pos[..t], |g| segments[g].blocks, q, att);

            // Output projection and residual.
            record(&mut s.activations, li, Site::AttnOut, att, qd);
            l.wo.matmul(att, t, xn)?;
            if let Some(pn) = &l.post_attn_norm {
                ops::rms_norm_inplace(xn, pn, c.rms_eps);
            }
            ops::add_inplace(x, xn);

            // Gated feed-forward and residual.
            ops::rms_norm(x, &l.ffn_norm, c.rms_eps, xn);
            let (gate, up) = (&mut s.gate[..t * c.ffn_dim], &mut s.up[..t * c.ffn_dim]);
            record(&mut s.activations, li, Site::FfnIn, xn, h);
            l.gate_up.matmul(xn, t, [&mut *gate, &mut *up], &mut s.stacked)?;
            match c.activation {
                Activation::Silu => ops::silu_mul(gate, up),
                Activation::GeluTanh => ops::gelu_mul(gate, up),
            }
            record(&mut s.activations, li, Site::FfnDown, gate, c.ffn_dim);
            l.w_down.matmul(gate, t, xn)?;
            if let Some(pn) = &l.post_ffn_norm {
                ops::rms_norm_inplace(xn, pn, c.rms_eps);
            }
            ops::add_inplace(x, xn);
        }
        Ok(())
    }

    /// Final norm and LM head over `s.x` for the rows that want logits, gathered in segment
    /// order into `s.logits`.
    fn head(&self, s: &mut Scratch, segments: &[Segment]) -> Result<(), ModelError> {
        let c = &self.config;
        let h = c.hidden;
        let mut n_out = 0;
        let mut row = 0;
        for g in segments {
            let n = g.tokens.len();
            let wanted = match g.logits {
                Logits::None => row + n..row + n,
                Logits::Last => row + n - 1..row + n,
                Logits::All => row..row + n,
            };
            for r in wanted {
                ops::rms_norm(&s.x[r * h..(r + 1) * h], &self.output_norm, c.rms_eps, &mut s.xn[n_out * h..(n_out + 1) * h]);
                n_out += 1;
            }
            row += n;
        }
        s.n_logits = n_out;
        #[cfg(feature = "cuda")]
        {
            s.on_gpu = false;
        }
        if n_out == 0 {
            return Ok(());
        }
        if s.logits.len() < n_out * c.vocab_size {
            s.logits.resize(n_out * c.vocab_size, 0.0);
        }
        record(&mut s.activations, c.n_layers, Site::Head, &s.xn[..n_out * h], h);
        let logits = &mut s.logits[..n_out * c.vocab_size];
        self.output.matmul(&s.xn[..n_out * h], n_out, logits)?;
        if let Some(cap) = c.final_logit_softcap {
            logits.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
        }
        Ok(())
    }
}

/// Adds the squares of `x`'s rows (`cols` long) to the statistics, when they are being collected.
fn record(stats: &mut Option<Box<ActivationStats>>, layer: usize, site: Site, x: &[f32], cols: usize) {
    if let Some(st) = stats {
        st.add(layer, site, x, cols);
    }
}

fn add_bias(x: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            ops::add_inplace(row, b);
        }
    }
}

/// Which logits a [`Segment`] wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (a prompt chunk that is not the prompt's end).
    None,
    /// The last token's (the next token is sampled from it).
    Last,
    /// Every token's (perplexity, speculative verification).
    All,
}

/// One sequence's part of a batched forward pass.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    /// New tokens.
    pub tokens: &'a [u32],
    /// Tokens of the sequence already in its blocks; the new ones take the next positions.
    pub pos0: usize,
    /// The sequence's KV blocks in position order, covering at least `pos0 + tokens.len()`.
    pub blocks: &'a [u32],
    /// Which logits to compute.
    pub logits: Logits,
}

/// A paged KV cache for one model: key and value rows of every layer in blocks of
/// [`BLOCK_TOKENS`] positions, which the scheduler hands out to sequences. Rows of the layers the
/// CPU runs live in host memory, those of the GPU's layers in device memory, both under the same
/// block ids.
pub struct KvCache {
    /// Also holds the block count when it has no layers (the GPU runs them all).
    host: exo_kernels::kv::KvCache,
    #[cfg(feature = "cuda")]
    gpu: Option<crate::cuda::CudaKv>,
}

impl KvCache {
    /// Blocks in the cache.
    pub fn n_blocks(&self) -> usize {
        self.host.n_blocks()
    }

    /// Bytes one position takes across all layers, host and device (keys and values).
    pub fn bytes_per_token(&self) -> usize {
        #[cfg(feature = "cuda")]
        if let Some(g) = &self.gpu {
            return self.host.bytes_per_token() + g.bytes_per_token();
        }
        self.host.bytes_per_token()
    }
}

/// The forward pass's working buffers, allocated once for a largest batch and position.
pub struct Scratch {
    max_tokens: usize,
    max_pos: usize,
    n_logits: usize,
    vocab: usize,
    rope_global: RopeTable,
    rope_local: RopeTable,
    pos: Vec<TokenPos>,
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
    /// Matrix-input statistics, collected only for quantization planning.
    activations: Option<Box<ActivationStats>>,
    /// The device's buffers, when the model runs there.
    #[cfg(feature = "cuda")]
    gpu: Option<crate::cuda::CudaScratch>,
    /// Whether the last call's logits are on the device.
    #[cfg(feature = "cuda")]
    on_gpu: bool,
}

impl Scratch {
    fn new(c: &ModelConfig, max_tokens: usize, max_pos: usize) -> Self {
        let n = max_tokens.max(1);
        let kv = c.kv_dim();
        let factors = c.rope_freq_factors.as_deref();
        Self {
            max_tokens: n,
            max_pos,
            n_logits: 0,
            vocab: c.vocab_size,
            rope_global: RopeTable::new(c.rope_style, c.head_dim, c.rope_theta, max_pos, factors),
            rope_local: RopeTable::new(c.rope_style, c.head_dim, c.rope_theta_local, max_pos, factors),
            pos: vec![TokenPos::default(); n],
            x: vec![0.0; n * c.hidden],
            xn: vec![0.0; n * c.hidden],
            q: vec![0.0; n * c.q_dim()],
            k: vec![0.0; n * kv],
            v: vec![0.0; n * kv],
            att: vec![0.0; n * c.q_dim()],
            gate: vec![0.0; n * c.ffn_dim],
            up: vec![0.0; n * c.ffn_dim],
            stacked: vec![0.0; n * (c.q_dim() + 2 * kv).max(2 * c.ffn_dim)],
            logits: vec![0.0; c.vocab_size],
            activations: None,
            #[cfg(feature = "cuda")]
            gpu: None,
            #[cfg(feature = "cuda")]
            on_gpu: false,
        }
    }

    /// Most tokens one forward call accepts.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Logits of the last forward call: one row of `vocab` values per token that asked for them,
    /// in batch order.
    pub fn logits(&self) -> &[f32] {
        #[cfg(feature = "cuda")]
        if let (true, Some(g)) = (self.on_gpu, &self.gpu) {
            return g.logits();
        }
        &self.logits[..self.n_logits * self.vocab]
    }

    /// Row `i` of [`Scratch::logits`].
    pub fn logits_row(&self, i: usize) -> &[f32] {
        &self.logits()[i * self.vocab..(i + 1) * self.vocab]
    }

    /// [`crate::argmax`] of row `i` of [`Scratch::logits`]. On the GPU it is found there and
    /// only the index crosses the bus, unless the logits were already copied; the device's
    /// pick differs only where the row's first value is NaN (the host keeps index 0, the device
    /// skips NaN).
    pub fn argmax_row(&self, i: usize) -> u32 {
        #[cfg(feature = "cuda")]
        if let (true, Some(g)) = (self.on_gpu, &self.gpu) {
            return g.argmax_row(i);
        }
        crate::argmax(self.logits_row(i))
    }

    /// The `k` largest values of row `i` of [`Scratch::logits`] with their indices, in no set
    /// order, where a GPU holds the row and can select them there (only they then cross the
    /// bus); `None` otherwise, and the caller reads the row.
    pub fn top_k_row(&self, i: usize, k: usize) -> Option<Vec<(u32, f32)>> {
        #[cfg(feature = "cuda")]
        if let (true, Some(g)) = (self.on_gpu, &self.gpu) {
            return g.top_k_row(i, k);
        }
        // Read only by a GPU build.
        let _ = (i, k);
        None
    }

    /// Row `i` of the last call's logits, to read whole or only for its largest values.
    pub fn row(&self, i: usize) -> LogitsRow<'_> {
        LogitsRow { scratch: self, row: i }
    }
}

/// One token's logits from a forward call, read as the sampler needs them: every value, or only
/// the index of the largest ([`Scratch::argmax_row`]) or the largest few
/// ([`Scratch::top_k_row`]), cheaper on a GPU.
#[derive(Clone, Copy)]
pub struct LogitsRow<'a> {
    scratch: &'a Scratch,
    row: usize,
}

impl<'a> LogitsRow<'a> {
    /// All `vocab` values.
    pub fn values(&self) -> &'a [f32] {
        self.scratch.logits_row(self.row)
    }

    /// The index of the largest value (the first one on ties).
    pub fn argmax(&self) -> u32 {
        self.scratch.argmax_row(self.row)
    }

    /// The `k` largest values with their indices, in no set order, when the row is on a GPU
    /// that selects them there ([`Scratch::top_k_row`]); `None` for a row on the host.
    pub fn top_k(&self, k: usize) -> Option<Vec<(u32, f32)>> {
        self.scratch.top_k_row(self.row, k)
    }
}

/// One sequence's KV cache (its own blocks, in order) and scratch buffers, all allocated once:
/// the single-sequence path of `exo run`, perplexity and tests.
pub struct State {
    kv: KvCache,
    blocks: Vec<u32>,
    scratch: Scratch,
    ctx: usize,
    len: usize,
}

impl State {
    /// Starts collecting the mean square of every matrix input's columns over the tokens run
    /// from now on (for [`crate::calibration`]).
    pub fn record_activations(&mut self) {
        self.scratch.activations.get_or_insert_with(Default::default);
    }

    /// The statistics collected since [`State::record_activations`], which stops collecting.
    pub fn take_activations(&mut self) -> Option<ActivationStats> {
        self.scratch.activations.take().map(|b| *b)
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
        self.scratch.max_tokens
    }

    /// Forgets cached tokens after the first `len` (a new prompt that shares a prefix, or a
    /// rollback); nothing is freed or reallocated.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Logits of the last forward call: `n` rows of `vocab` values, the last row being the
    /// newest token.
    pub fn logits(&self) -> &[f32] {
        self.scratch.logits()
    }

    /// Logits of the newest token.
    pub fn last_logits(&self) -> &[f32] {
        self.last_row().values()
    }

    /// Logits of the newest token, to read whole or only for their largest value.
    pub fn last_row(&self) -> LogitsRow<'_> {
        self.scratch.row(self.scratch.n_logits.max(1) - 1)
    }

    /// Row `i` of [`State::logits`], to read whole or only for its largest value.
    pub fn row(&self, i: usize) -> LogitsRow<'_> {
        self.scratch.row(i)
    }
}
