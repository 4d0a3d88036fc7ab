//! The decoder forward pass on a CUDA device: the same [`ModelConfig`]-driven math as
//! `transformer.rs`, one kernel (or cuBLAS GEMM) per step. Read [`CudaModel::step`] top to
//! bottom for the whole computation.
//!
//! Weights are uploaded in the layout of the type loading gives them (the file's GGUF blocks, or
//! those `--quantize` makes, NF4 and FP8 in exo's own). A call runs any batch of sequences' tokens
//! ([`Segment`]s, as the CPU path does), their K/V rows in a paged f16 cache whose blocks are the
//! scheduler's. Up to [`MATVEC_MAX_TOKENS`] tokens, products are quantized mat-vecs on int8
//! activations that read each weight once for up to 8 tokens; more tokens (prompts), each weight
//! matrix is widened to f16 and multiplied with cuBLAS. A decode step (one new token per
//! sequence) is captured once per batch size as a CUDA graph and replayed: the host writes the
//! input rows and the batch map (positions and block tables, see [`CudaScratch`]) into device
//! memory before each replay, so nothing in the graph changes between steps.
//!
//! The device may hold only the last layers (`--gpu-layers`): the host embeds the tokens, runs
//! the layers before [`CudaModel::first_layer`] on the CPU and hands their output rows over.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use exo_kernels::cuda::{Act, AttnArgs, DeviceBuf, Gpu, GpuGraph, GpuMatrix, LayerHeads, RopeArgs, MAP_TILED};
use exo_kernels::kv::BLOCK_TOKENS;
use exo_kernels::ops::RopeTable;

use crate::config::{Activation, ModelConfig};
use crate::weights::Weights;
use crate::{GpuLayers, LoadOptions};
use crate::ModelError;
use crate::{Logits, Segment};

/// Keys per attention split when decoding: small enough that a long context spreads over many
/// blocks, large enough that a short one is a single split.
const DECODE_CHUNK: usize = 256;
/// Most logits [`CudaScratch::top_k_row`] selects on the device.
pub const TOP_K_MAX: usize = 256;

/// Most sequences a decode step attends to in one launch (and captures as a graph); larger
/// steps take the general path.
const DECODE_GRAPH_MAX: usize = 64;
/// Most tokens of a call whose products run as quantized mat-vecs; more go through GEMMs.
pub const MATVEC_MAX_TOKENS: usize = 16;
/// Most keys one prefill attention block scores (its shared memory holds one f32 per key).
const PREFILL_CHUNK: usize = 8192;
/// Most weights a prefill GEMM widens to f16 at once (64 MiB of scratch): bigger matrices go
/// through in row chunks, so the scratch does not grow with the LM head of a large vocabulary.
const W16_MAX: usize = 32 << 20;
/// Fewest tokens of a call that take the tiled prefill attention: below it a query tile would be
/// mostly empty and its one block per head would walk the whole cache alone.
const PREFILL_ATTN_MIN: usize = 16;
/// The context `--gpu-layers auto` keeps KV room for when the caller names none.
const AUTO_CTX: usize = 4096;
/// Tokens per prefill call that `--gpu-layers auto` budgets working buffers for.
const AUTO_BATCH: usize = 512;
/// Device memory `--gpu-layers auto` leaves unplanned: cuBLAS's workspace and kernels, the
/// attention partials, allocator rounding.
const AUTO_RESERVE: usize = 512 << 20;

/// Matrices whose outputs sit side by side in one row (q|k|v, gate|up), each with its first
/// output column. Parts sharing a storage type are stacked into one matrix, so one launch
/// covers them.
struct Projection(Vec<(GpuMatrix, usize)>);

/// One decoder block's weights on the device.
struct GpuLayer {
    attn_norm: DeviceBuf,
    qkv: Projection,
    qkv_bias: Option<DeviceBuf>,
    q_norm: Option<DeviceBuf>,
    k_norm: Option<DeviceBuf>,
    wo: GpuMatrix,
    post_attn_norm: Option<DeviceBuf>,
    ffn_norm: DeviceBuf,
    gate_up: Projection,
    w_down: GpuMatrix,
    post_ffn_norm: Option<DeviceBuf>,
}

/// A model's weights on one GPU: the LM head and the layers from `first_layer` on.
pub struct CudaModel {
    gpu: Arc<Gpu>,
    config: ModelConfig,
    first_layer: usize,
    layers: Vec<GpuLayer>,
    output_norm: DeviceBuf,
    output: GpuMatrix,
    /// Elements of the f16 scratch a prefill GEMM widens weights into: the largest matrix, or
    /// [`W16_MAX`] when that is smaller.
    w16_elems: usize,
    /// Held for a whole forward call: all states share one stream, and a graph capture must not
    /// record another sequence's launches.
    busy: std::sync::Mutex<()>,
}

impl CudaModel {
    /// Uploads the LM head and the last layers to device `ordinal`: as many as
    /// `opts.gpu_layers` asks for, or with [`GpuLayers::Auto`] as many as its free memory holds
    /// next to a KV cache of `opts.gpu_ctx` tokens (4096 when not given), with their f16 copies
    /// when `opts.gpu_f16_weights` asks for them. `None` when that is no layer at all.
    pub fn load(config: &ModelConfig, w: &Weights, ordinal: usize, opts: &LoadOptions) -> Result<Option<Self>, ModelError> {
        let (layers, ctx, keep_f16) = (opts.gpu_layers, opts.gpu_ctx, opts.gpu_f16_weights);
        let c = config;
        if !c.head_dim.is_multiple_of(32) || c.head_dim > 256 {
            return Err(ModelError::Config {
                file: w.source(),
                what: format!("head dimension {} is not one the GPU attention kernel handles (a multiple of 32, at most 256)", c.head_dim),
            });
        }
        let gpu = Arc::new(Gpu::new(ordinal)?);
        let n_gpu = match layers {
            GpuLayers::Count(n) => n.min(c.n_layers),
            GpuLayers::Auto => {
                let free = gpu.free_memory()?;
                let n = layers_that_fit(c, w, free, ctx.unwrap_or(AUTO_CTX), keep_f16)?;
                if n < c.n_layers {
                    tracing::warn!(
                        "{} of {} layers fit in the {} MiB free on {}; the CPU runs the rest",
                        n,
                        c.n_layers,
                        free >> 20,
                        gpu.describe()
                    );
                }
                n
            }
        };
        if n_gpu == 0 {
            return Ok(None);
        }
        let first_layer = c.n_layers - n_gpu;
        let (h, q, kv, f) = (c.hidden, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let norm = |name: &str, len: usize| -> Result<DeviceBuf, ModelError> {
            let mut v = w.vector(name, len)?;
            v.iter_mut().for_each(|x| *x += c.norm_weight_offset);
            Ok(gpu.upload(&v, name)?)
        };
        let opt_norm = |name: &str, len: usize, wanted: bool| {
            if wanted {
                norm(name, len).map(Some)
            } else {
                Ok(None)
            }
        };
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<GpuMatrix, ModelError> {
            let (ty, bytes) = w.device_matrix(name, rows, cols)?;
            Ok(gpu.matrix(name, ty, rows, cols, &bytes)?)
        };
        let mut largest = 0;
        let mut layers = Vec::with_capacity(n_gpu);
        for i in first_layer..c.n_layers {
            let n = |part: &str| format!("blk.{i}.{part}");
            let qkv = projection(&gpu, w, &[(n("attn_q.weight"), q), (n("attn_k.weight"), kv), (n("attn_v.weight"), kv)], h)?;
            let gate_up = projection(&gpu, w, &[(n("ffn_gate.weight"), f), (n("ffn_up.weight"), f)], h)?;
            let biases = [(n("attn_q.bias"), q), (n("attn_k.bias"), kv), (n("attn_v.bias"), kv)];
            let qkv_bias = if biases.iter().any(|(b, _)| w.has(b)) {
                let mut all = Vec::with_capacity(q + 2 * kv);
                for (b, len) in &biases {
                    all.extend(w.opt_vector(b, *len)?.unwrap_or_else(|| vec![0.0; *len]));
                }
                Some(gpu.upload(&all, &n("attn_qkv.bias"))?)
            } else {
                None
            };
            let layer = GpuLayer {
                attn_norm: norm(&n("attn_norm.weight"), h)?,
                qkv,
                qkv_bias,
                q_norm: opt_norm(&n("attn_q_norm.weight"), c.head_dim, c.qk_norm)?,
                k_norm: opt_norm(&n("attn_k_norm.weight"), c.head_dim, c.qk_norm)?,
                wo: matrix(&n("attn_output.weight"), h, q)?,
                post_attn_norm: opt_norm(&n("post_attention_norm.weight"), h, c.post_norms)?,
                ffn_norm: norm(&n("ffn_norm.weight"), h)?,
                gate_up,
                w_down: matrix(&n("ffn_down.weight"), h, f)?,
                post_ffn_norm: opt_norm(&n("post_ffw_norm.weight"), h, c.post_norms)?,
            };
            for m in layer.qkv.0.iter().chain(&layer.gate_up.0).map(|p| &p.0).chain([&layer.wo, &layer.w_down]) {
                largest = largest.max(m.rows() * m.cols());
            }
            layers.push(layer);
        }
        // Token embeddings are looked up on the host (as llama.cpp keeps them there): the device
        // holds the table only when it doubles as the LM head.
        let mut output = matrix(w.lm_head(), c.vocab_size, h)?;
        largest = largest.max(output.rows() * output.cols());
        let mut w16_elems = largest.min(W16_MAX.max(c.ffn_dim.max(c.q_dim()).max(h)));
        if keep_f16 {
            for (i, l) in layers.iter_mut().enumerate() {
                let li = first_layer + i;
                for m in l.qkv.0.iter_mut().chain(l.gate_up.0.iter_mut()).map(|p| &mut p.0).chain([&mut l.wo, &mut l.w_down]) {
                    gpu.keep_f16(m, &format!("a matrix of layer {li}"))?;
                }
            }
            gpu.keep_f16(&mut output, "the LM head")?;
            // Every GEMM reads the kept copies: no widening scratch.
            w16_elems = 0;
        }
        let output_norm = norm("output_norm.weight", h)?;
        Ok(Some(Self { gpu, config: config.clone(), first_layer, layers, output_norm, output, w16_elems, busy: Default::default() }))
    }

    /// Bytes of device memory free now.
    pub fn free_memory(&self) -> Result<usize, ModelError> {
        Ok(self.gpu.free_memory()?)
    }

    /// The first layer the GPU runs; the CPU runs those before it.
    pub fn first_layer(&self) -> usize {
        self.first_layer
    }

    /// The device, e.g. "cuda:0 (NVIDIA H100 80GB HBM3)".
    pub fn describe(&self) -> String {
        match self.first_layer {
            0 => self.gpu.describe(),
            n => format!("{}, layers {n}-{} (the CPU runs layers 0-{})", self.gpu.describe(), self.config.n_layers - 1, n - 1),
        }
    }

    /// A paged f16 KV cache of `n_blocks` blocks of [`BLOCK_TOKENS`] positions for the device's
    /// layers.
    pub fn new_kv(&self, n_blocks: usize) -> Result<CudaKv, ModelError> {
        let (g, kvd) = (&*self.gpu, self.config.kv_dim());
        let bytes = n_blocks * BLOCK_TOKENS * kvd * 2;
        let mut k = Vec::with_capacity(self.layers.len());
        let mut v = Vec::with_capacity(self.layers.len());
        for i in self.first_layer..self.config.n_layers {
            k.push(g.alloc(bytes, &format!("layer {i} key cache ({n_blocks} blocks)"))?);
            v.push(g.alloc(bytes, &format!("layer {i} value cache ({n_blocks} blocks)"))?);
        }
        Ok(CudaKv { k, v, per_token: self.layers.len() * 2 * kvd * 2 })
    }

    /// Device working buffers for calls of up to `max_tokens` tokens at positions below
    /// `max_pos`.
    pub fn new_scratch(&self, max_tokens: usize, max_pos: usize) -> Result<CudaScratch, ModelError> {
        CudaScratch::new(self, max_tokens.max(1), max_pos)
    }

    /// Runs the segments' tokens (`input`: one row of `hidden` per token, in segment order: the
    /// tokens' embeddings, or the CPU layers' output when the device starts at a later layer)
    /// through the device's layers, writing their K/V rows to the segments' blocks of `kv`, and
    /// leaves in `s` the logits each segment asks for. The caller has checked batch, blocks
    /// and context.
    pub fn forward(&self, kv: &CudaKv, s: &mut CudaScratch, segments: &[Segment], input: &[f32]) -> Result<(), ModelError> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let c = &self.config;
        let t = input.len() / c.hidden;
        let prefill = Gpu::has_prefill_attention(c.head_dim) && t > MATVEC_MAX_TOKENS;
        let call = s.write_map(segments, |n| prefill && n >= PREFILL_ATTN_MIN)?;
        self.gpu.write(&s.x, 0, input)?;
        if call.n_out * c.vocab_size * 4 > s.logits.bytes() {
            s.logits = self.gpu.alloc(call.n_out * c.vocab_size * 4, "logits")?;
            s.graphs.clear();
        }
        // Calls that stay on the mat-vec path launch the same kernels for the same token and
        // logits counts (positions and blocks are read from the map on the device), so they
        // replay from a graph too: a draft's verification, a short prompt or chunk.
        if call.decode || t <= MATVEC_MAX_TOKENS {
            let splits = if call.decode { call.decode_splits } else { 0 };
            let key = (t, call.n_out, call.decode, splits, kv.k.first().map_or(0, DeviceBuf::ptr));
            let i = match s.graphs.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    let t0 = std::time::Instant::now();
                    self.gpu.begin_capture()?;
                    let captured = self.step(kv, s, &call);
                    let graph = self.gpu.end_capture();
                    captured?;
                    s.graphs.push((key, graph?));
                    tracing::debug!(tokens = t, logits_rows = call.n_out, graphs = s.graphs.len(), ms = t0.elapsed().as_secs_f64() * 1e3, "captured a CUDA graph");
                    s.graphs.len() - 1
                }
            };
            s.graphs[i].1.launch()?;
        } else {
            self.step(kv, s, &call)?;
        }
        // The one host sync per call: it bounds the queue, and the next call's map write
        // cannot overtake the kernels still reading this one's.
        self.gpu.sync()?;
        s.n_logits = call.n_out;
        s.host_ids = OnceLock::new();
        if let Some(v) = s.host_logits.take() {
            *s.spare.get_mut().unwrap_or_else(PoisonError::into_inner) = v;
        }
        Ok(())
    }

    /// The forward pass over the call's input rows in `s.x`, queued on the device.
    fn step(&self, kv: &CudaKv, s: &CudaScratch, call: &Call) -> Result<(), ModelError> {
        let (c, g) = (&self.config, &*self.gpu);
        let t = call.t;
        let (h, qd, kvd, ffn) = (c.hidden, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let stride = qd + 2 * kvd;
        let x = s.x.ptr();
        // Few tokens: activations also go to int8 groups for the quantized mat-vecs.
        let act = |buf: &DeviceBuf, rows: usize| {
            if rows <= MATVEC_MAX_TOKENS {
                Act::new(buf.ptr(), s.q8.ptr(), s.ds.ptr())
            } else {
                Act::new(buf.ptr(), 0, 0)
            }
        };

        for (i, l) in self.layers.iter().enumerate() {
            let li = self.first_layer + i;
            // Attention: norm and q/k/v projections.
            g.rms_norm(x, 0, l.attn_norm.ptr(), act(&s.xn, t), t, h, c.rms_eps)?;
            self.project(s, &l.qkv, act(&s.xn, t), t, s.qkv.ptr(), stride, false)?;
            // Rotary positions, the cache write and attention over each sequence's cache: for
            // decoded tokens (one per sequence) all in one launch, split over the keys; a
            // prompt's queries in tiles on the tensor cores; other tokens split over the keys.
            let heads = s.heads(kv, c, i, stride);
            let window = if c.sliding_layers[li] { c.sliding_window.unwrap_or(0) } else { 0 };
            let tiled = window == 0 && !call.tiled.is_empty();
            let rope = self.rope_args(s, l, li, &heads);
            let attn = AttnArgs { heads: &heads, scale: c.attn_scale, window, skip_tiled: tiled, part: s.part.ptr(), ml: s.ml.ptr() };
            if call.decode {
                g.attention_decode(&rope, &attn, t, DECODE_CHUNK, call.decode_splits, s.counters.ptr(), act(&s.att, t))?;
            } else {
                g.rope_kv(&rope, t)?;
                if !tiled || call.tiled_tokens < t {
                    let nsplit = s.max_pos.div_ceil(PREFILL_CHUNK);
                    g.attention(&attn, t, s.max_pos.div_ceil(nsplit), nsplit, act(&s.att, t))?;
                }
                if tiled {
                    for &(tok0, n) in &call.tiled {
                        g.attention_prefill(&attn, tok0, n, s.att.ptr())?;
                    }
                }
            }

            // Output projection and residual (accumulated straight into x without a post-norm).
            self.residual(s, &l.wo, act(&s.att, t), t, l.post_attn_norm.as_ref())?;

            // Gated feed-forward and residual.
            g.rms_norm(x, 0, l.ffn_norm.ptr(), act(&s.xn, t), t, h, c.rms_eps)?;
            self.project(s, &l.gate_up, act(&s.xn, t), t, s.gu.ptr(), 2 * ffn, false)?;
            g.glu(s.gu.ptr(), ffn, t, c.activation == Activation::GeluTanh, act(&s.ffo, t))?;
            self.residual(s, &l.w_down, act(&s.ffo, t), t, l.post_ffn_norm.as_ref())?;
        }

        // Final norm and LM head for the rows that want logits, listed in the batch map.
        let n_out = call.n_out;
        if n_out == 0 {
            return Ok(());
        }
        let out = act(&s.xn, n_out);
        g.rms_norm(s.x.ptr(), s.io.at(call.out_rows * 4), self.output_norm.ptr(), out, n_out, h, c.rms_eps)?;
        self.project(s, &Projection(vec![(self.output.share(), 0)]), out, n_out, s.logits.ptr(), c.vocab_size, false)?;
        if let Some(cap) = c.final_logit_softcap {
            g.softcap(s.logits.ptr(), n_out * c.vocab_size, cap)?;
        }
        Ok(())
    }

    /// What [`Gpu::rope_kv`] needs for layer `li` (the state's `i`-th).
    fn rope_args<'a>(&self, s: &CudaScratch, l: &GpuLayer, li: usize, heads: &'a LayerHeads) -> RopeArgs<'a> {
        let (cos, sin) = if self.config.sliding_layers[li] { (&s.cos_local, &s.sin_local) } else { (&s.cos, &s.sin) };
        RopeArgs {
            heads,
            cos: cos.ptr(),
            sin: sin.ptr(),
            neox: s.neox,
            bias: l.qkv_bias.as_ref().map_or(0, DeviceBuf::ptr),
            q_norm: l.q_norm.as_ref().map_or(0, DeviceBuf::ptr),
            k_norm: l.k_norm.as_ref().map_or(0, DeviceBuf::ptr),
            eps: self.config.rms_eps,
        }
    }

    /// `y (+)= x · Wᵀ` for each part of `p`, into columns starting at the part's offset of rows
    /// `ldy` floats apart: mat-vecs for a few tokens, dequantize + GEMM for more.
    #[allow(clippy::too_many_arguments)]
    fn project(&self, s: &CudaScratch, p: &Projection, x: Act, t: usize, y: u64, ldy: usize, accumulate: bool) -> Result<(), ModelError> {
        let g = &*self.gpu;
        if t > MATVEC_MAX_TOKENS {
            let cols = p.0[0].0.cols();
            g.to_f16(x.f32, s.x16.ptr(), t * cols)?;
        }
        for (m, off) in &p.0 {
            let at = y + (*off * 4) as u64;
            if t <= MATVEC_MAX_TOKENS {
                g.matvec(m, x, t, at, ldy, accumulate)?;
            } else {
                g.gemm(m, s.x16.ptr(), t, at, ldy, accumulate, &s.w16)?;
            }
        }
        Ok(())
    }

    /// `x += W · a`, through a post-norm first when the model has one (Gemma).
    fn residual(&self, s: &CudaScratch, w: &GpuMatrix, a: Act, t: usize, post_norm: Option<&DeviceBuf>) -> Result<(), ModelError> {
        let h = self.config.hidden;
        let p = Projection(vec![(w.share(), 0)]);
        match post_norm {
            None => self.project(s, &p, a, t, s.x.ptr(), h, true),
            Some(pn) => {
                self.project(s, &p, a, t, s.tmp.ptr(), h, false)?;
                Ok(self.gpu.add_rows(s.x.ptr(), s.tmp.ptr(), pn.ptr(), t, h, self.config.rms_eps)?)
            }
        }
    }
}

/// How many of the last layers fit in `free` bytes of device memory after the LM head, the
/// working buffers of a prefill call and a reserve, each with its KV cache for `ctx` tokens.
fn layers_that_fit(c: &ModelConfig, w: &Weights, free: usize, ctx: usize, keep_f16: bool) -> Result<usize, ModelError> {
    let (h, q, kv, f) = (c.hidden, c.q_dim(), c.kv_dim(), c.ffn_dim);
    let bytes = |name: &str, rows: usize, cols: usize| -> Result<usize, ModelError> {
        let ty = w.device_type(name, rows, cols)?;
        let f16 = if keep_f16 { Gpu::f16_bytes(rows, cols) } else { 0 };
        Ok(ty.row_bytes(cols).unwrap_or(cols * 4) * rows + f16)
    };
    let head = bytes(w.lm_head(), c.vocab_size, h)?;
    let widest = h.max(q).max(f);
    let buffers = AUTO_BATCH * 4 * (2 * h + 2 * widest + 2 * q + 2 * kv + 3 * f) + W16_MAX * 2 + c.vocab_size * 4;
    let mut used = head + buffers + AUTO_RESERVE;
    let mut n = 0;
    for i in (0..c.n_layers).rev() {
        let m = |part: &str, rows: usize, cols: usize| bytes(&format!("blk.{i}.{part}"), rows, cols);
        let layer = m("attn_q.weight", q, h)?
            + m("attn_k.weight", kv, h)?
            + m("attn_v.weight", kv, h)?
            + m("attn_output.weight", h, q)?
            + m("ffn_gate.weight", f, h)?
            + m("ffn_up.weight", f, h)?
            + m("ffn_down.weight", h, f)?
            + 2 * ctx * kv * 2;
        if used + layer > free {
            break;
        }
        used += layer;
        n += 1;
    }
    Ok(n)
}

/// Consecutive parts of one storage type, gathered for one upload.
struct Run<'a> {
    ty: exo_quant::QuantFormat,
    data: Vec<u8>,
    rows: usize,
    start: usize,
    names: Vec<&'a str>,
}

/// Uploads the matrices `parts` (name, rows) of `cols` columns, stacking runs of the same type.
fn projection(gpu: &Gpu, w: &Weights, parts: &[(String, usize)], cols: usize) -> Result<Projection, ModelError> {
    let mut runs: Vec<Run> = Vec::new();
    let mut offset = 0;
    for (name, rows) in parts {
        let (ty, bytes) = w.device_matrix(name, *rows, cols)?;
        match runs.last_mut() {
            Some(r) if r.ty == ty => {
                r.data.extend_from_slice(&bytes);
                r.rows += rows;
                r.names.push(name);
            }
            _ => runs.push(Run { ty, data: bytes.to_vec(), rows: *rows, start: offset, names: vec![name] }),
        }
        offset += rows;
    }
    let parts = runs.iter().map(|r| Ok((gpu.matrix(&r.names.join("+"), r.ty, r.rows, cols, &r.data)?, r.start)));
    Ok(Projection(parts.collect::<Result<_, ModelError>>()?))
}

/// The device's share of a paged KV cache: f16 key and value rows of each GPU layer, in the same
/// blocks (ids and [`BLOCK_TOKENS`] positions each) as the host's share.
pub struct CudaKv {
    k: Vec<DeviceBuf>,
    v: Vec<DeviceBuf>,
    per_token: usize,
}

impl CudaKv {
    /// Bytes of device memory one position takes across the device's layers.
    pub fn bytes_per_token(&self) -> usize {
        self.per_token
    }
}

/// What a captured call's launches depend on: tokens, logits rows, one token per sequence,
/// decode attention splits, and the KV cache's address.
type GraphKey = (usize, usize, bool, usize, u64);

/// What one forward call runs, after its batch map is on the device.
struct Call {
    /// Tokens.
    t: usize,
    /// Every segment is a single token, and at most [`DECODE_GRAPH_MAX`] of them: attention in
    /// one launch per layer, the step replayed from a graph.
    decode: bool,
    /// (first token, tokens) of the segments whose attention runs tiled on the tensor cores.
    tiled: Vec<(usize, usize)>,
    /// Tokens in those segments.
    tiled_tokens: usize,
    /// Attention splits of a decode step: enough for its longest sequence, rounded up to a power
    /// of two so that a few captured graphs serve every length (a grid over the whole context
    /// would launch blocks that exit at once, most of them at long contexts and large batches).
    decode_splits: usize,
    /// Rows of logits wanted, and the offset (in `i32`s) of their row list in the map.
    n_out: usize,
    out_rows: usize,
}

/// The forward pass's buffers on the device, allocated once for a largest call.
pub struct CudaScratch {
    gpu: Arc<Gpu>,
    max_pos: usize,
    vocab: usize,
    /// The batch map (layout in kernels' batch.cuh) and the logits row list, rewritten per call.
    io: DeviceBuf,
    map: Vec<i32>,
    cos: DeviceBuf,
    sin: DeviceBuf,
    cos_local: DeviceBuf,
    sin_local: DeviceBuf,
    neox: bool,
    x: DeviceBuf,
    xn: DeviceBuf,
    q8: DeviceBuf,
    ds: DeviceBuf,
    /// One zeroed `i32` per query head and decoded token for [`Gpu::attention_decode`] (which
    /// leaves them zeroed).
    counters: DeviceBuf,
    qkv: DeviceBuf,
    att: DeviceBuf,
    gu: DeviceBuf,
    ffo: DeviceBuf,
    tmp: DeviceBuf,
    x16: DeviceBuf,
    w16: DeviceBuf,
    part: DeviceBuf,
    ml: DeviceBuf,
    logits: DeviceBuf,
    n_logits: usize,
    /// Calls captured once and replayed.
    graphs: Vec<(GraphKey, GpuGraph)>,
    host_logits: OnceLock<Vec<f32>>,
    /// Each logits row's argmax (`i32`s), found on the device on first request after a call.
    ids: DeviceBuf,
    /// One row's largest logits ([`CudaScratch::top_k_row`]): [`TOP_K_MAX`] `i32` indices, then
    /// as many `f32` values.
    top: DeviceBuf,
    host_ids: OnceLock<Vec<u32>>,
    /// The previous call's host logits, reused by the next copy: a fresh allocation faults in
    /// every page as the copy writes it (16 MB a step for 32 sequences of a 128K vocabulary;
    /// copying 16 MB into a fresh allocation took 1.9-9.5 ms on the 2-core build machine, into
    /// pages already mapped 1 ms).
    spare: Mutex<Vec<f32>>,
}

impl CudaScratch {
    fn new(m: &CudaModel, max_tokens: usize, max_pos: usize) -> Result<Self, ModelError> {
        let (c, g) = (&m.config, &*m.gpu);
        let (h, qd, kvd, ffn) = (c.hidden, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let widest = h.max(qd).max(ffn);
        let f32s = |n: usize, what: &str| g.alloc(n * 4, what);
        let factors = c.rope_freq_factors.as_deref();
        let global = RopeTable::new(c.rope_style, c.head_dim, c.rope_theta, max_pos, factors);
        let local = RopeTable::new(c.rope_style, c.head_dim, c.rope_theta_local, max_pos, factors);
        let decoded = max_tokens.min(DECODE_GRAPH_MAX);
        let splits = (decoded * max_pos.div_ceil(DECODE_CHUNK)).max(max_tokens * max_pos.div_ceil(PREFILL_CHUNK));
        let few = max_tokens.min(MATVEC_MAX_TOKENS);
        let gemm = max_tokens > MATVEC_MAX_TOKENS;
        let map_len = 4 + 3 * max_tokens + max_tokens * max_pos.div_ceil(BLOCK_TOKENS);
        Ok(Self {
            gpu: m.gpu.clone(),
            max_pos,
            vocab: c.vocab_size,
            io: g.alloc(map_len * 4, "batch map")?,
            map: Vec::with_capacity(map_len),
            cos: g.upload(global.tables().0, "rope cos")?,
            sin: g.upload(global.tables().1, "rope sin")?,
            cos_local: g.upload(local.tables().0, "rope cos (local)")?,
            sin_local: g.upload(local.tables().1, "rope sin (local)")?,
            neox: global.is_neox(),
            x: f32s(max_tokens * h, "residual")?,
            xn: f32s(max_tokens * widest, "normed activations")?,
            q8: g.alloc(few * widest, "int8 activations")?,
            ds: g.alloc(few * widest / 32 * 8, "activation scales")?,
            counters: g.alloc(4 * c.n_heads * decoded, "attention counters")?,
            qkv: f32s(max_tokens * (qd + 2 * kvd), "q/k/v")?,
            att: f32s(max_tokens * qd, "attention output")?,
            gu: f32s(max_tokens * 2 * ffn, "gate/up")?,
            ffo: f32s(max_tokens * ffn, "feed-forward activations")?,
            tmp: f32s(max_tokens * h, "post-norm scratch")?,
            x16: g.alloc(if gemm { max_tokens * widest * 2 } else { 0 }, "f16 activations")?,
            w16: g.alloc(if gemm { m.w16_elems * 2 } else { 0 }, "f16 weight scratch")?,
            part: f32s(splits * c.n_heads * c.head_dim, "attention partials")?,
            ml: g.alloc(splits * c.n_heads * 8, "attention partial sums")?,
            logits: f32s(c.vocab_size, "logits")?,
            n_logits: 0,
            graphs: Vec::new(),
            host_logits: OnceLock::new(),
            ids: g.alloc(max_tokens.max(1) * 4, "argmax indices")?,
            top: g.alloc(TOP_K_MAX * 8, "top-k logits")?,
            host_ids: OnceLock::new(),
            spare: Mutex::new(Vec::new()),
        })
    }

    /// Writes the batch map of `segments` (layout in batch.cuh: positions, table rows, block
    /// tables, then the rows whose logits are wanted) to the device; `tiled(len)` says whether
    /// a segment of `len` tokens takes the tiled prompt attention.
    fn write_map(&mut self, segments: &[Segment], tiled: impl Fn(usize) -> bool) -> Result<Call, ModelError> {
        let t: usize = segments.iter().map(|g| g.tokens.len()).sum();
        let width = segments.iter().map(|g| (g.pos0 + g.tokens.len()).div_ceil(BLOCK_TOKENS)).max().unwrap_or(0);
        let (seq_off, out_off, tab_off) = (4 + t, 4 + 2 * t, 4 + 3 * t);
        let m = &mut self.map;
        m.clear();
        m.resize(tab_off + segments.len() * width, 0);
        m[..4].copy_from_slice(&[width as i32, seq_off as i32, tab_off as i32, t as i32]);
        let decode = t <= DECODE_GRAPH_MAX && segments.iter().all(|g| g.tokens.len() == 1);
        let longest = segments.iter().map(|g| g.pos0 + g.tokens.len()).max().unwrap_or(1);
        let decode_splits = longest.div_ceil(DECODE_CHUNK).next_power_of_two().min(self.max_pos.div_ceil(DECODE_CHUNK));
        let mut call = Call { t, decode, decode_splits, tiled: vec![], tiled_tokens: 0, n_out: 0, out_rows: out_off };
        let mut row = 0;
        for (si, g) in segments.iter().enumerate() {
            let n = g.tokens.len();
            let flag = if tiled(n) {
                call.tiled.push((row, n));
                call.tiled_tokens += n;
                MAP_TILED
            } else {
                0
            };
            for i in 0..n {
                m[4 + row + i] = (g.pos0 + i) as i32;
                m[seq_off + row + i] = si as i32 | flag;
            }
            let wanted = match g.logits {
                Logits::None => row + n..row + n,
                Logits::Last => row + n - 1..row + n,
                Logits::All => row..row + n,
            };
            for r in wanted {
                m[out_off + call.n_out] = r as i32;
                call.n_out += 1;
            }
            let used = (g.pos0 + n).div_ceil(BLOCK_TOKENS);
            for (b, &id) in g.blocks[..used].iter().enumerate() {
                m[tab_off + si * width + b] = id as i32;
            }
            row += n;
        }
        self.gpu.write(&self.io, 0, m)?;
        Ok(call)
    }

    /// The `i`-th device layer's q/k/v rows (`stride` floats apart) and KV cache.
    fn heads(&self, kv: &CudaKv, c: &ModelConfig, i: usize, stride: usize) -> LayerHeads {
        LayerHeads {
            qkv: self.qkv.ptr(),
            stride,
            io: self.io.ptr(),
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            k_cache: kv.k[i].ptr(),
            v_cache: kv.v[i].ptr(),
        }
    }

    /// Rows of logits the last call left.
    pub fn n_logits(&self) -> usize {
        self.n_logits
    }

    /// Logits of the last forward call (`n` rows of `vocab`, in segment order), copied from the
    /// device on first access after each call, so steps whose logits nobody reads (benchmarks,
    /// prompt chunks) move none across the bus.
    pub fn logits(&self) -> &[f32] {
        self.host_logits.get_or_init(|| {
            let mut v = std::mem::take(&mut *self.spare.lock().unwrap_or_else(PoisonError::into_inner));
            v.resize(self.n_logits * self.vocab, 0.0);
            // A failed copy after a forward pass that succeeded means the device is gone; NaN
            // logits make every sampler stop rather than continue on stale numbers.
            if self.gpu.read(self.logits.ptr(), &mut v).is_err() {
                v.fill(f32::NAN);
            }
            v
        })
    }

    /// [`crate::argmax`] of logits row `i`: from the host copy when there is one, else found on
    /// the device, all rows at once, with only the indices copied back. A failed launch or copy
    /// (the device gone) gives 0, as NaN logits do on the host.
    pub fn argmax_row(&self, i: usize) -> u32 {
        if let Some(v) = self.host_logits.get() {
            return crate::argmax(&v[i * self.vocab..(i + 1) * self.vocab]);
        }
        let ids = self.host_ids.get_or_init(|| {
            let mut ids = vec![0u32; self.n_logits];
            let found = self.gpu.argmax_rows(self.logits.ptr(), self.n_logits, self.vocab, self.ids.ptr()).and_then(|()| self.gpu.read(self.ids.ptr(), &mut ids));
            if found.is_err() {
                ids.fill(0);
            }
            ids
        });
        ids[i]
    }

    /// The `k` largest logits of row `i` with their indices, in no set order, selected on the
    /// device so that only they cross the bus. `None` where the host already holds the logits,
    /// for `k` above [`TOP_K_MAX`] or the vocabulary, or on a failed launch or copy (the caller
    /// then reads the whole row).
    pub fn top_k_row(&self, i: usize, k: usize) -> Option<Vec<(u32, f32)>> {
        if self.host_logits.get().is_some() || k == 0 || k > TOP_K_MAX.min(self.vocab) || i >= self.n_logits {
            return None;
        }
        let (ids_at, vals_at) = (self.top.ptr(), self.top.at(TOP_K_MAX * 4));
        let row = self.logits.ptr() + (i * self.vocab * 4) as u64;
        let (mut ids, mut vals) = (vec![0u32; k], vec![0f32; k]);
        self.gpu.topk_rows(row, 1, self.vocab, k, ids_at, vals_at).ok()?;
        self.gpu.read(ids_at, &mut ids).ok()?;
        self.gpu.read(vals_at, &mut vals).ok()?;
        Some(ids.into_iter().zip(vals).collect())
    }
}
