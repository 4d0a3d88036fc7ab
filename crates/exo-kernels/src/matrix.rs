//! A weight matrix in its storage type and its product with f32 activations.
//!
//! Layout follows ggml and PyTorch's `nn.Linear`: `rows` output features, each a contiguous run
//! of `cols` input features (quantized rows are runs of blocks). `y = x · Wᵀ` for `m` activation
//! rows at once: `m == 1` is a decode step, larger `m` a prompt chunk.

use candle_core::quantized::k_quants::{self, GgmlType as CandleBlock};
use exo_formats::{GgmlType, TensorBytes};
use exo_quant::QuantFormat;
use half::{bf16, f16};

use crate::kquant_q4k as q4k;
use crate::kquant_q8q6::Packed;
use crate::legacy_quants as legacy;
use crate::lut_formats;
use crate::threads::parallel_for;

/// Errors from building or applying a [`Matrix`].
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A Metal device or product failed (the message names the tensor or device).
    #[cfg(feature = "metal")]
    #[error("metal: {0}")]
    Metal(String),
    /// A KV cache that cannot be built as asked (the message names the setting and the limit).
    #[error("KV cache: {0}")]
    KvCache(String),
    /// The storage type has no kernel yet.
    #[error("tensor '{name}': type {ty} has no CPU kernel in exo yet (supported: {supported})")]
    Unsupported {
        /// Tensor name, for the message.
        name: String,
        /// ggml type name.
        ty: &'static str,
        /// The types that can be computed.
        supported: &'static str,
    },
    /// The byte length does not match rows × cols of the type.
    #[error("tensor '{name}': {rows}x{cols} {ty} needs {need} bytes but has {have}")]
    Size {
        /// Tensor name.
        name: String,
        /// Output features.
        rows: usize,
        /// Input features.
        cols: usize,
        /// ggml type name.
        ty: &'static str,
        /// Bytes the shape requires.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// A quantization format refused the shape or the data.
    #[error("tensor '{name}': {source}")]
    Quant {
        /// Tensor name.
        name: String,
        /// What the format refused (boxed: it is rare, and every `Result` carries its size).
        source: Box<exo_quant::QuantError>,
    },
    /// Activation or output buffers of the wrong length (a caller bug, reported, not a panic).
    #[error("matmul with '{name}': {what} has {have} elements, expected {need}")]
    Shape {
        /// Tensor name.
        name: String,
        /// Which buffer.
        what: &'static str,
        /// Elements expected.
        need: usize,
        /// Elements given.
        have: usize,
    },
}

/// The types [`Matrix::matmul`] computes.
pub const SUPPORTED: &str = "f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_K, q3_K, q4_K, q5_K, q6_K, q8_K";

/// Whether [`Matrix`] can compute with weights of this type.
pub fn is_supported(ty: GgmlType) -> bool {
    use GgmlType as G;
    matches!(
        ty,
        G::F32
            | G::F16
            | G::BF16
            | G::Q4_0
            | G::Q4_1
            | G::Q5_0
            | G::Q5_1
            | G::Q8_0
            | G::Q2K
            | G::Q3K
            | G::Q4K
            | G::Q5K
            | G::Q6K
            | G::Q8K
    )
}

/// Whether weights of this type are copied into a layout of exo's own at load, keeping none of
/// the file's bytes: stacking several such matrices into one then costs no extra memory.
pub fn is_repacked(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q8_0 | GgmlType::Q6K | GgmlType::Q5_0 | GgmlType::Q4_1 | GgmlType::Q4K | GgmlType::Q5K)
}

/// Where a matrix's bytes live.
#[derive(Clone)]
pub enum MatrixData {
    /// A view of a mapped file (zero copy).
    Mapped(TensorBytes),
    /// An owned copy, used when the mapped bytes are misaligned for the block type or when the
    /// weights were converted (e.g. dequantized to f32).
    Owned(std::sync::Arc<Vec<u32>>),
    /// Q8_0, Q6_K, Q5_0 or Q4_1 weights repacked into 16-row interleaved groups for
    /// [`crate::kquant_q8q6`] (the same size as the GGUF bytes, plus padding of the last group).
    /// The original bytes are not kept; `row_to_f32` reads the packed copy.
    Packed(std::sync::Arc<Packed>),
    /// Q4_K or Q5_K weights repacked into four-row groups for [`crate::kquant_q4k`] (the same
    /// size as the GGUF bytes); as with `Packed`, the original bytes are not kept.
    PackedK(std::sync::Arc<q4k::PackedQ4K>),
}

/// A weight matrix of `rows` × `cols` in one storage format.
#[derive(Clone)]
pub struct Matrix {
    name: String,
    /// The format the weights were given in (what `exo info` reports).
    format: QuantFormat,
    /// The ggml layout of the bytes kept: the format's own for ggml types, Q8_0 and Q4_1 for
    /// INT8 and INT4 (rewritten exactly, see [`Matrix::from_quant`]); unused for NF4 and FP8,
    /// whose bytes are kept as given and computed by [`crate::lut_formats`].
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: MatrixData,
    /// A copy on an Apple GPU that takes this matrix's products ([`Matrix::offload`]).
    #[cfg(feature = "metal")]
    metal: Option<std::sync::Arc<crate::metal::MetalMatrix>>,
}

impl Matrix {
    /// Wraps `bytes` holding `rows` rows of `cols` elements of type `ty`.
    ///
    /// Checks the type is computable and the length matches; copies the bytes when their address
    /// is not aligned for the block type (safetensors data need not be aligned).
    pub fn new(
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        bytes: TensorBytes,
    ) -> Result<Self, KernelError> {
        let row_bytes = check_size(name, ty, rows, cols, bytes.len())?;
        let data = if let Some(p) = pack(ty, rows, cols, &bytes) {
            bytes.release();
            p
        } else if (bytes.as_ptr() as usize).is_multiple_of(4) {
            MatrixData::Mapped(bytes)
        } else {
            MatrixData::Owned(std::sync::Arc::new(bytes_to_words(&bytes)))
        };
        Ok(Self::assemble(name, QuantFormat::Ggml(ty), ty, rows, cols, row_bytes, data))
    }

    /// The fields as given, with no GPU copy.
    fn assemble(name: &str, format: QuantFormat, ty: GgmlType, rows: usize, cols: usize, row_bytes: usize, data: MatrixData) -> Self {
        Self {
            name: name.to_string(),
            format,
            ty,
            rows,
            cols,
            row_bytes,
            data,
            #[cfg(feature = "metal")]
            metal: None,
        }
    }

    /// A matrix of type `ty` copied from bytes in ggml layout (weights built or converted in memory).
    pub fn from_bytes(name: &str, ty: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self, KernelError> {
        let row_bytes = check_size(name, ty, rows, cols, bytes.len())?;
        let data = pack(ty, rows, cols, bytes)
            .unwrap_or_else(|| MatrixData::Owned(std::sync::Arc::new(bytes_to_words(bytes))));
        Ok(Self::assemble(name, QuantFormat::Ggml(ty), ty, rows, cols, row_bytes, data))
    }

    /// A matrix of rows packed by [`exo_quant::quantize`] in `format`.
    ///
    /// INT8 and INT4 are rewritten as Q8_0 and Q4_1 blocks holding bit-identical values (see
    /// [`exo_quant::int::int8_to_q8_0`]), so they run on the repacked Q8_0/Q4_1 kernels; NF4 and
    /// FP8 keep their bytes and run on [`crate::lut_formats`].
    pub fn from_quant(name: &str, format: QuantFormat, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self, KernelError> {
        let as_ggml = |ty: GgmlType, b: &[u8]| -> Result<Self, KernelError> {
            Ok(Self { format, ..Self::from_bytes(name, ty, rows, cols, b)? })
        };
        let size_err = |need| KernelError::Size { name: name.to_string(), rows, cols, ty: format.name(), need, have: bytes.len() };
        let row_bytes = format.row_bytes(cols).ok_or_else(|| KernelError::Quant {
            name: name.to_string(),
            source: Box::new(exo_quant::QuantError::RowLength { format: format.name().to_string(), cols, block: format.block_size() }),
        })?;
        let need = row_bytes.checked_mul(rows).ok_or_else(|| size_err(usize::MAX))?;
        if bytes.len() != need {
            return Err(size_err(need));
        }
        match format {
            QuantFormat::Ggml(ty) => Self::from_bytes(name, ty, rows, cols, bytes),
            QuantFormat::Int8 => as_ggml(GgmlType::Q8_0, &exo_quant::int::int8_to_q8_0(bytes)),
            QuantFormat::Int4 => match exo_quant::int::int4_to_q4_1(bytes) {
                Some(q4_1) => as_ggml(GgmlType::Q4_1, &q4_1),
                // A scale too large for f16 once multiplied by 8: the codes fit Q8_0 exactly too.
                None => {
                    let values = exo_quant::dequantize(format, bytes, cols).expect("sizes checked above");
                    let q8 = exo_quant::quantize(QuantFormat::Ggml(GgmlType::Q8_0), &values, cols).expect("cols fits Q8_0");
                    as_ggml(GgmlType::Q8_0, &q8)
                }
            },
            QuantFormat::Nf4 | QuantFormat::Fp8E4M3 => {
                let data = MatrixData::Owned(std::sync::Arc::new(bytes_to_words(bytes)));
                Ok(Self::assemble(name, format, GgmlType::I8, rows, cols, row_bytes, data))
            }
        }
    }

    /// An f32 matrix from owned values (row-major, `rows * cols` long).
    pub fn from_f32(name: &str, rows: usize, cols: usize, values: Vec<f32>) -> Result<Self, KernelError> {
        if values.len() != rows * cols {
            return Err(KernelError::Size {
                name: name.to_string(),
                rows,
                cols,
                ty: "f32",
                need: rows * cols * 4,
                have: values.len() * 4,
            });
        }
        let words = values.into_iter().map(f32::to_bits).collect();
        let data = MatrixData::Owned(std::sync::Arc::new(words));
        Ok(Self::assemble(name, QuantFormat::Ggml(GgmlType::F32), GgmlType::F32, rows, cols, cols * 4, data))
    }

    /// Sends this matrix's products to `gpu`, a copy of the same weights on an Apple GPU; the
    /// host copy stays for row lookups and dequantization.
    #[cfg(feature = "metal")]
    pub fn offload(&mut self, gpu: crate::metal::MetalMatrix) {
        self.metal = Some(std::sync::Arc::new(gpu));
    }

    /// Tensor name (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The ggml layout the weights are kept in (Q8_0 and Q4_1 for INT8 and INT4; `i8` for
    /// NF4 and FP8, which have none: see [`Matrix::format`]).
    pub fn ty(&self) -> GgmlType {
        self.ty
    }
    /// The format the weights were given in.
    pub fn format(&self) -> QuantFormat {
        self.format
    }
    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes of weight data.
    pub fn n_bytes(&self) -> usize {
        self.row_bytes * self.rows
    }

    fn bytes(&self) -> &[u8] {
        match &self.data {
            MatrixData::Mapped(b) => b,
            MatrixData::Owned(w) => {
                // SAFETY: a Vec<u32> is valid to read as bytes; the length is what `new` checked.
                unsafe { std::slice::from_raw_parts(w.as_ptr() as *const u8, self.row_bytes * self.rows) }
            }
            MatrixData::Packed(_) | MatrixData::PackedK(_) => {
                unreachable!("packed matrices are read through their packed layout")
            }
        }
    }

    fn blocks<T>(&self) -> &[T] {
        let bytes = self.bytes();
        debug_assert_eq!(bytes.as_ptr() as usize % std::mem::align_of::<T>(), 0);
        debug_assert_eq!(bytes.len() % std::mem::size_of::<T>(), 0);
        // SAFETY: `new` checked the length against the type's block size and the address against
        // 4-byte alignment, the largest alignment of any block type here; every bit pattern is a
        // valid block (plain integers and halfs).
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, bytes.len() / std::mem::size_of::<T>()) }
    }

    /// `out[i][r] = Σ_c x[i][c] · W[r][c]` for `m` rows of activations.
    ///
    /// `x` is `m * cols` long and `out` `m * rows`. Quantized types quantize `x` to the matching
    /// 8-bit activation format first, as ggml does.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<(), KernelError> {
        self.check_len("activations", x.len(), m * self.cols)?;
        self.check_len("output", out.len(), m * self.rows)?;
        #[cfg(feature = "metal")]
        if let Some(gpu) = &self.metal {
            return gpu.matmul(x, m, out);
        }
        if let MatrixData::Packed(p) = &self.data {
            p.matmul(x, m, out);
            return Ok(());
        }
        let lut = match self.format {
            QuantFormat::Nf4 => Some(lut_formats::matmul_nf4 as fn(&[u8], usize, usize, &[f32], usize, &mut [f32])),
            QuantFormat::Fp8E4M3 => Some(lut_formats::matmul_fp8 as _),
            _ => None,
        };
        if let Some(kernel) = lut {
            kernel(self.bytes(), self.rows, self.cols, x, m, out);
            return Ok(());
        }
        let mkn = (m, self.cols, self.rows);
        // candle's matmul only fails on length mismatches, which are checked above.
        let candle = |res: candle_core::Result<()>| {
            res.map_err(|_| KernelError::Shape { name: self.name.clone(), what: "matmul", need: 0, have: 0 })
        };
        use GgmlType as G;
        match (self.ty, &self.data) {
            (_, MatrixData::PackedK(p)) => p.matmul(x, m, out),
            (G::F32, _) => candle(k_quants::matmul::<f32>(mkn, x, self.blocks(), out))?,
            (G::F16, _) => self.matmul_half::<f16>(x, m, out),
            (G::BF16, _) => self.matmul_half::<bf16>(x, m, out),
            (G::Q4_0, _) => candle(k_quants::matmul::<k_quants::BlockQ4_0>(mkn, x, self.blocks(), out))?,
            (G::Q8_0, _) => candle(k_quants::matmul::<k_quants::BlockQ8_0>(mkn, x, self.blocks(), out))?,
            (G::Q2K, _) => candle(k_quants::matmul::<k_quants::BlockQ2K>(mkn, x, self.blocks(), out))?,
            (G::Q3K, _) => candle(k_quants::matmul::<k_quants::BlockQ3K>(mkn, x, self.blocks(), out))?,
            (G::Q6K, _) => candle(k_quants::matmul::<k_quants::BlockQ6K>(mkn, x, self.blocks(), out))?,
            (G::Q8K, _) => candle(k_quants::matmul::<k_quants::BlockQ8K>(mkn, x, self.blocks(), out))?,
            (G::Q4_1, _) => self.matmul_legacy::<legacy::BlockQ4_1>(x, m, out),
            (G::Q5_0, _) => self.matmul_legacy::<legacy::BlockQ5_0>(x, m, out),
            (G::Q5_1, _) => self.matmul_legacy::<legacy::BlockQ5_1>(x, m, out),
            _ => unreachable!("Matrix::new admits only supported types"),
        }
        Ok(())
    }

    fn check_len(&self, what: &'static str, have: usize, need: usize) -> Result<(), KernelError> {
        if have == need {
            Ok(())
        } else {
            Err(KernelError::Shape { name: self.name.clone(), what, need, have })
        }
    }

    /// Writes row `r` as f32 into `out` (`cols` long): an embedding lookup.
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) -> Result<(), KernelError> {
        if r >= self.rows {
            return Err(KernelError::Shape { name: self.name.clone(), what: "row index", need: self.rows, have: r });
        }
        self.check_len("row output", out.len(), self.cols)?;
        self.write_row(r, out);
        Ok(())
    }

    /// Writes rows `ids` as f32 into consecutive `cols`-long slices of `out`, spread over the
    /// threads: the embedding lookup of a prompt.
    pub fn rows_to_f32(&self, ids: &[u32], out: &mut [f32]) -> Result<(), KernelError> {
        if let Some(&r) = ids.iter().find(|&&r| r as usize >= self.rows) {
            return Err(KernelError::Shape { name: self.name.clone(), what: "row index", need: self.rows, have: r as usize });
        }
        self.check_len("rows output", out.len(), ids.len() * self.cols)?;
        let ptr = SendPtr(out.as_mut_ptr());
        parallel_for(ids.len(), |range| {
            for i in range {
                // SAFETY: row i of `out` (checked to hold them all) is written by this range alone.
                let row = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(i * self.cols), self.cols) };
                self.write_row(ids[i] as usize, row);
            }
        });
        Ok(())
    }

    /// Row `r` (in range) as f32 into `out` (`cols` long).
    fn write_row(&self, r: usize, out: &mut [f32]) {
        match &self.data {
            MatrixData::Packed(p) => p.row_to_f32(r, out),
            MatrixData::PackedK(p) => p.row_to_f32(r, out),
            MatrixData::Mapped(_) | MatrixData::Owned(_) => {
                self.dequantize_row(&self.bytes()[r * self.row_bytes..(r + 1) * self.row_bytes], out)
            }
        }
    }

    /// The whole matrix as f32 values (row-major).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        if matches!(self.data, MatrixData::Packed(_) | MatrixData::PackedK(_)) {
            for (r, dst) in out.chunks_exact_mut(self.cols).enumerate() {
                self.row_to_f32(r, dst).expect("r < rows and dst is cols long");
            }
            return out;
        }
        let bytes = self.bytes();
        for (r, dst) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row(&bytes[r * self.row_bytes..(r + 1) * self.row_bytes], dst);
        }
        out
    }

    fn dequantize_row(&self, row: &[u8], out: &mut [f32]) {
        match self.format {
            QuantFormat::Nf4 | QuantFormat::Fp8E4M3 => {
                exo_quant::dequantize_into(self.format, row, self.cols, out).expect("sizes checked at construction")
            }
            _ => dequantize_bytes(self.ty, row, out),
        }
    }

    /// The same weights dequantized to an owned f32 matrix (the reference "float path").
    pub fn dequantized(&self) -> Matrix {
        Matrix::from_f32(&self.name, self.rows, self.cols, self.to_f32())
            .expect("to_f32 returns rows * cols values")
    }

    fn matmul_half<T: HalfFloat>(&self, x: &[f32], m: usize, out: &mut [f32]) {
        let w: &[T] = self.blocks();
        let (k, n) = (self.cols, self.rows);
        let out_ptr = SendPtr(out.as_mut_ptr());
        parallel_for(n, |range| {
            let mut buf = [0f32; 256];
            for r in range {
                let row = &w[r * k..(r + 1) * k];
                for i in 0..m {
                    let xi = &x[i * k..(i + 1) * k];
                    let mut acc = 0f32;
                    for (wc, xc) in row.chunks(256).zip(xi.chunks(256)) {
                        T::to_f32_slice(wc, &mut buf[..wc.len()]);
                        acc += crate::ops::dot(&buf[..wc.len()], xc);
                    }
                    // SAFETY: each (i, r) is written by exactly one thread.
                    unsafe { *out_ptr.get().add(i * n + r) = acc };
                }
            }
        });
    }

    fn matmul_legacy<B: legacy::LegacyBlock>(&self, x: &[f32], m: usize, out: &mut [f32]) {
        let w: &[B] = self.blocks();
        let (k, n) = (self.cols, self.rows);
        let bpr = k / 32;
        B::with_quantized(x, m, k, |xq| {
            let out_ptr = SendPtr(out.as_mut_ptr());
            let quads = n / 4;
            parallel_for(quads + usize::from(n % 4 != 0), |range| {
                for q in range {
                    let r0 = q * 4;
                    for i in 0..m {
                        let xi = &xq[i * bpr..(i + 1) * bpr];
                        // SAFETY: each (i, r) is written by exactly one thread.
                        let dst = unsafe { out_ptr.get().add(i * n) };
                        if r0 + 4 <= n {
                            let rows = [0, 1, 2, 3].map(|j| &w[(r0 + j) * bpr..(r0 + j + 1) * bpr]);
                            let d = B::dot4(rows, xi);
                            for (j, v) in d.into_iter().enumerate() {
                                unsafe { *dst.add(r0 + j) = v };
                            }
                        } else {
                            for r in r0..n {
                                unsafe { *dst.add(r) = B::dot(&w[r * bpr..(r + 1) * bpr], xi) };
                            }
                        }
                    }
                }
            });
        });
    }
}

/// Checks that `ty` is computable and `len` bytes hold `rows` × `cols` of it; returns the row size.
fn check_size(name: &str, ty: GgmlType, rows: usize, cols: usize, len: usize) -> Result<usize, KernelError> {
    if !is_supported(ty) {
        return Err(KernelError::Unsupported { name: name.to_string(), ty: ty.name(), supported: SUPPORTED });
    }
    let size_err = |need| KernelError::Size { name: name.to_string(), rows, cols, ty: ty.name(), need, have: len };
    let row_bytes = ty.row_bytes(cols).ok_or_else(|| size_err(0))?;
    let need = row_bytes.checked_mul(rows).ok_or_else(|| size_err(usize::MAX))?;
    if len != need {
        return Err(size_err(need));
    }
    Ok(row_bytes)
}

/// Rows from which a matrix is taken to be an LM head (real vocabularies: 32k to 262k).
const VOCAB_SIZED_ROWS: usize = 32_000;

/// Repacks Q4_K and Q5_K weights for [`crate::kquant_q4k`], and Q8_0, Q6_K, Q5_0 and Q4_1
/// weights for [`crate::kquant_q8q6`] (except single-row tensors, which the unpacked kernels
/// handle); `None` for other types.
fn pack(ty: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> Option<MatrixData> {
    if matches!(ty, GgmlType::Q4K | GgmlType::Q5K) {
        return Some(MatrixData::PackedK(std::sync::Arc::new(pack_k(ty, rows, cols, bytes))));
    }
    let p = match ty {
        _ if rows < 2 => return None,
        // Vocabulary-sized matrices (LM heads, tied embeddings) only ever multiply one row of
        // activations (the newest token's logits), where they are memory-bound and the unpacked
        // kernels stream as fast (Q6_K 151936x1536: 45.9 packed vs 46.3 GFLOP/s unpacked,
        // benches/q8q6.rs); packing them would only add to load time. Q8_0 stays packed: candle's
        // unpacked Q8_0 kernel is compute-bound even there (25.5 vs 40 GFLOP/s).
        GgmlType::Q5_0 | GgmlType::Q6K if rows >= VOCAB_SIZED_ROWS => return None,
        GgmlType::Q8_0 => Packed::q8_0(rows, cols, bytes),
        GgmlType::Q6K => Packed::q6k(rows, cols, bytes),
        GgmlType::Q5_0 => Packed::q5_0(rows, cols, bytes),
        GgmlType::Q4_1 => Packed::q4_1(rows, cols, bytes),
        _ => return None,
    };
    Some(MatrixData::Packed(std::sync::Arc::new(p)))
}

/// Repacks Q4_K or Q5_K bytes (copied first if their address is misaligned for the blocks).
fn pack_k(ty: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> q4k::PackedQ4K {
    let words;
    let bytes = if (bytes.as_ptr() as usize).is_multiple_of(2) {
        bytes
    } else {
        words = bytes_to_words(bytes);
        // SAFETY: the words hold a copy of `bytes.len()` bytes.
        unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), bytes.len()) }
    };
    fn cast<T>(b: &[u8]) -> &[T] {
        // SAFETY: 2-byte aligned (checked above, the blocks' alignment); the length is a whole
        // number of blocks (checked by `check_size`); every bit pattern is a valid block.
        unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<T>(), b.len() / std::mem::size_of::<T>()) }
    }
    if ty == GgmlType::Q4K {
        q4k::PackedQ4K::pack(rows, cols, cast(bytes))
    } else {
        q4k::PackedQ4K::pack_q5k(rows, cols, cast(bytes))
    }
}

/// Dequantizes one row of `ty` blocks into `out`.
fn dequantize_bytes(ty: GgmlType, row: &[u8], out: &mut [f32]) {
    fn cast<T>(b: &[u8]) -> &[T] {
        // SAFETY: rows of an aligned matrix start at multiples of the block size, which keeps the
        // block alignment (all block sizes are multiples of their alignment).
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const T, b.len() / std::mem::size_of::<T>()) }
    }
    use GgmlType as G;
    match ty {
        G::F32 => out.copy_from_slice(cast::<f32>(row)),
        G::F16 => f16::to_f32_slice(cast(row), out),
        G::BF16 => bf16::to_f32_slice(cast(row), out),
        G::Q4_0 => k_quants::BlockQ4_0::to_float(cast(row), out),
        G::Q8_0 => k_quants::BlockQ8_0::to_float(cast(row), out),
        G::Q2K => k_quants::BlockQ2K::to_float(cast(row), out),
        G::Q3K => k_quants::BlockQ3K::to_float(cast(row), out),
        G::Q6K => k_quants::BlockQ6K::to_float(cast(row), out),
        G::Q8K => k_quants::BlockQ8K::to_float(cast(row), out),
        G::Q4_1 => legacy::dequantize_row_q4_1(cast(row), out),
        G::Q5_0 => legacy::dequantize_row_q5_0(cast(row), out),
        G::Q5_1 => legacy::dequantize_row_q5_1(cast(row), out),
        _ => unreachable!("Matrix::new admits only supported types"),
    }
}

fn bytes_to_words(bytes: &[u8]) -> Vec<u32> {
    let mut words = vec![0u32; bytes.len().div_ceil(4)];
    // SAFETY: the destination has at least `bytes.len()` bytes.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr() as *mut u8, bytes.len()) };
    words
}

/// A raw pointer that threads writing disjoint elements may share.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: users write disjoint elements only, documented at each use.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole Sync wrapper).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// f16 and bf16 weights, widened to f32 chunk by chunk.
trait HalfFloat: Copy + Send + Sync {
    fn to_f32_slice(src: &[Self], dst: &mut [f32]);
}
impl HalfFloat for f16 {
    fn to_f32_slice(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst)
    }
}
impl HalfFloat for bf16 {
    fn to_f32_slice(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst)
    }
}
