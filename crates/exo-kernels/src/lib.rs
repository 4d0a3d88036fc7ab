//! CPU hot loops for exo's forward pass.
//!
//! - [`dense`]: f32 matrix-matrix products and packed bidirectional attention on the `gemm`
//!   crate, for encoder models that run whole batches of texts at once.
//! - [`matrix`]: a weight matrix in any supported storage type (ggml quant blocks straight from an
//!   mmapped GGUF, f32/f16/bf16) and its product with f32 activations, on all threads.
//! - [`ops`]: the element-wise and row-wise pieces of a transformer layer (RMSNorm, RoPE, softmax,
//!   SiLU/GELU gating), written over plain `f32` slices so a
//!   decode step allocates nothing.
//! - [`kv`]: the paged KV cache (f32, f16 or Q8_0 rows in blocks of 16 positions) and causal
//!   attention through block tables, batched over sequences.
//! - [`legacy_quants`]: SIMD dot products for Q4_1, Q5_0 and Q5_1, which candle computes only with
//!   scalar code.
//! - [`kquant_q4k`]: Q4_K weights repacked four rows at a time, with AVX-512 VNNI/AVX2 kernels
//!   for decode and prompt processing.
//! - [`kquant_q8q6`]: Q8_0, Q6_K and Q5_0 weights repacked into 16-row groups, with AVX-512 VNNI
//!   (and AVX2) matrix-vector and matrix-matrix kernels.
//! - `lut_formats`: NF4 and FP8 E4M3 weights ([`exo_quant`]'s formats without an integer dot
//!   product), decoded through tables a block at a time; INT8 and INT4 run on the Q8_0 and Q4_1
//!   kernels after an exact rewrite ([`Matrix::from_quant`]).
//! - [`threads`]: the thread count, shared with candle's spinning barrier pool.
//! - `cuda` (with the `cuda` feature): GPU kernels for the same layer pieces, on weights kept in
//!   their GGUF block layout, and the glue that launches them.
//!
//! candle's kernels serve the remaining types (f32, Q4_0, Q2_K, Q3_K, Q8_K) and single-row
//! tensors; the types real models use run on this crate's kernels, which measured 2-12x faster
//! than candle's on this project's CPU (BENCHMARKS.md). Everything is driven without building
//! candle `Tensor`s, because a decode step of a small model is ~500 operations and per-op
//! allocation shows up at that scale.

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "metal")]
pub mod metal;
pub mod dense;
pub mod kquant_q4k;
pub mod kquant_q8q6;
pub mod kv;
pub mod legacy_quants;
mod lut_formats;
pub mod matrix;
pub mod ops;
pub mod threads;

pub use matrix::{is_repacked, KernelError, Matrix, MatrixData};
