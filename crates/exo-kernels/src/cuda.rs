//! CUDA kernels (src/cuda/*.cu, compiled to PTX by build.rs) and the glue that launches them.
//!
//! [`Gpu`] owns one device's context, stream, loaded kernels and cuBLAS handle. Buffers are plain
//! device allocations ([`DeviceBuf`]) addressed by raw pointers, so the forward pass can hand out
//! offsets into them (q/k/v inside one projection output) and a decode step can be captured as a
//! CUDA graph ([`Gpu::begin_capture`]) and replayed with every pointer fixed. Weight matrices
//! ([`GpuMatrix`]) keep their stored block layout (GGUF's, or exo-quant's for NF4 and FP8); the
//! mat-vec kernels read the blocks in place.
//!
//! The driver and cuBLAS are opened with `dlopen` on first use, so a build with this module still
//! starts on a machine without an NVIDIA driver: [`device_count`] reports 0 there.

use std::sync::Arc;

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use exo_formats::GgmlType;
use exo_quant::QuantFormat;

/// A failed CUDA operation, naming what was being done.
#[derive(Debug, thiserror::Error)]
#[error("cuda: {0}")]
pub struct GpuError(String);

impl GpuError {
    fn at(what: impl std::fmt::Display, e: impl std::fmt::Debug) -> Self {
        GpuError(format!("{what}: {e:?}"))
    }
}

type Result<T> = std::result::Result<T, GpuError>;

const MATVEC_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/matvec.ptx"));
const LAYER_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/layer.ptx"));

/// Rows per block of the one-token quantized mat-vec kernels and most threads per block of all
/// of them (`MV_ROWS`, `MV_THREADS` in matvec.cu).
const MV_ROWS: u32 = 2;
const MV_THREADS: usize = 256;
/// Rows per block of the several-token kernels (`MV_ROWS_N`).
const MV_ROWS_N: u32 = 4;
/// Most tokens one quantized mat-vec launch takes (`MV_COLS` in matvec.cu).
pub const MV_COLS: usize = 8;
/// The batch map's flag on a token whose attention [`Gpu::attention_prefill`] computes
/// (`MAP_TILED` in batch.cuh).
pub const MAP_TILED: i32 = 1 << 30;
// batch.cuh's KV_BLOCK: the device cache uses the host cache's blocks.
const _: () = assert!(crate::kv::BLOCK_TOKENS == 16);
/// Threads of one attention split.
const ATTN_THREADS: u32 = 128;
/// Queries per block of the prefill attention kernel (`FA_Q` in layer.cu).
const PREFILL_QUERIES: usize = 64;

/// Number of CUDA devices; 0 when no driver is installed.
pub fn device_count() -> usize {
    // SAFETY: only probes whether libcuda can be opened.
    if !unsafe { sys::is_culib_present() } {
        return 0;
    }
    CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}

/// Weight formats with GPU kernels: ggml's quantized types have a mat-vec on int8 activations,
/// the float types and exo's NF4 and FP8 one on f32 activations; all dequantize to f16 for GEMMs.
pub fn supported(f: QuantFormat) -> bool {
    match f {
        QuantFormat::Ggml(ty) => mv_kernels(f).is_some() || matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16),
        QuantFormat::Nf4 | QuantFormat::Fp8E4M3 => true,
        QuantFormat::Int8 | QuantFormat::Int4 => false,
    }
}

/// The kernels' id of a format: ggml's type id, or the ids blocks.cuh gives exo's own formats
/// (`T_NF4`, `T_FP8`). INT8 and INT4 get none that a kernel knows: [`supported`] refuses them
/// before any matrix of theirs exists.
fn type_id(f: QuantFormat) -> i32 {
    match f {
        QuantFormat::Ggml(ty) => ty.id() as i32,
        QuantFormat::Nf4 => 1001,
        QuantFormat::Fp8E4M3 => 1002,
        QuantFormat::Int8 | QuantFormat::Int4 => -1,
    }
}

/// A quantized type's mat-vec kernels: for one token, and its `_n` twin for 2..8, with the
/// slices the one-token kernel splits a block into (a thread takes one slice per step:
/// `T::PARTS` in blocks.cuh).
struct MvKernels {
    ty: GgmlType,
    one: &'static str,
    several: &'static str,
    slices: usize,
}

const fn mv(ty: GgmlType, one: &'static str, several: &'static str, slices: usize) -> MvKernels {
    MvKernels { ty, one, several, slices }
}

const MV_KERNELS: [MvKernels; 8] = [
    mv(GgmlType::Q4K, "mv_q4_k", "mv_q4_k_n", 4),
    mv(GgmlType::Q5K, "mv_q5_k", "mv_q5_k_n", 8),
    mv(GgmlType::Q6K, "mv_q6_k", "mv_q6_k_n", 16),
    mv(GgmlType::Q8_0, "mv_q8_0", "mv_q8_0_n", 2),
    mv(GgmlType::Q4_0, "mv_q4_0", "mv_q4_0_n", 1),
    mv(GgmlType::Q4_1, "mv_q4_1", "mv_q4_1_n", 1),
    mv(GgmlType::Q5_0, "mv_q5_0", "mv_q5_0_n", 1),
    mv(GgmlType::Q5_1, "mv_q5_1", "mv_q5_1_n", 1),
];

/// The quantized mat-vec kernels of `f` weights; `None` for the formats read on f32 activations
/// one token at a time (`mv_float`, and `mv_lut` for NF4 and FP8, whose arguments differ from
/// these kernels').
fn mv_kernels(f: QuantFormat) -> Option<&'static MvKernels> {
    let QuantFormat::Ggml(ty) = f else { return None };
    MV_KERNELS.iter().find(|k| k.ty == ty)
}

/// Threads per block of the quantized mat-vecs of a `rows` × `cols` matrix: 64, doubled while a
/// one-token launch holds fewer than two threads per thread slot of the GPU and each thread keeps
/// at least two slices of a row. Each thread waits on its loads one slice at a time, so a matrix of few rows
/// (a 1024-row value projection) needs more threads per row to keep enough bytes in flight;
/// one of many rows (the LM head) loses to the longer reduction. Measured with `cargo bench
/// --bench cuda_matvec` on an H200: Q6_K 1024×4096 7.5 -> 3.8 µs, 4096×14336 29.9 -> 24.4 µs.
/// The several-token kernels take the same count, so that where both split blocks alike a
/// token's sums are added in the same order by either (the batched forward pass is checked
/// against single tokens on the GPU with random-weight models that amplify any difference).
fn mv_threads(rows: usize, cols: usize, k: &MvKernels, thread_slots: usize) -> u32 {
    let blocks = rows.div_ceil(MV_ROWS as usize);
    let slices = cols / k.ty.block_size() * k.slices;
    let mut threads = 64;
    while threads < MV_THREADS && blocks * threads < 2 * thread_slots && 2 * threads <= slices {
        threads *= 2;
    }
    threads as u32
}

/// A device allocation. `ptr` is its address, stable for the buffer's life.
pub struct DeviceBuf {
    _mem: CudaSlice<u8>,
    ptr: u64,
    bytes: usize,
}

impl DeviceBuf {
    /// The device address of byte 0.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// The device address `offset` bytes in.
    pub fn at(&self, offset: usize) -> u64 {
        debug_assert!(offset <= self.bytes);
        self.ptr + offset as u64
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A weight matrix on the device, `rows` output features by `cols` inputs, in its file layout
/// (GGUF blocks, or exo-quant's for NF4 and FP8).
pub struct GpuMatrix {
    ty: QuantFormat,
    rows: usize,
    cols: usize,
    buf: Arc<DeviceBuf>,
    /// The whole matrix widened to f16 once ([`Gpu::keep_f16`]), which GEMMs then read instead
    /// of widening it again on every call.
    f16: Option<Arc<DeviceBuf>>,
}

impl GpuMatrix {
    /// Storage format.
    pub fn ty(&self) -> QuantFormat {
        self.ty
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Another handle on the same device data (no copy).
    pub fn share(&self) -> GpuMatrix {
        GpuMatrix { ty: self.ty, rows: self.rows, cols: self.cols, buf: self.buf.clone(), f16: self.f16.clone() }
    }
}

/// An activation matrix: f32 values and, for quantized mat-vecs, their int8 groups of 32.
#[derive(Clone, Copy)]
pub struct Act {
    /// `f32` values.
    pub f32: u64,
    /// `i8` values (0 when absent).
    pub q8: u64,
    /// One (scale, scale·sum) `float2` per 32 values (0 when absent).
    pub ds: u64,
}

impl Act {
    /// Values at `f32` with their int8 groups at `q8`/`ds` (0 for none).
    pub fn new(f32: u64, q8: u64, ds: u64) -> Self {
        Act { f32, q8, ds }
    }
}

/// A captured sequence of launches, replayed with [`GpuGraph::launch`].
pub struct GpuGraph(cudarc::driver::CudaGraph);

// SAFETY: the graph's handles are used only by the state that owns it, one call at a time.
unsafe impl Send for GpuGraph {}
// SAFETY: as above; launching takes `&self` but the owner serialises calls behind `&mut`.
unsafe impl Sync for GpuGraph {}

impl GpuGraph {
    /// Replays the graph on the stream it was captured from.
    pub fn launch(&self) -> Result<()> {
        self.0.launch().map_err(|e| GpuError::at("graph launch", e))
    }
}

/// One kernel argument.
#[derive(Clone, Copy)]
enum Arg {
    P(u64),
    I(i32),
    F(f32),
    U(u64),
}

struct Kernels {
    _modules: Vec<Arc<CudaModule>>,
    named: Vec<(&'static str, CudaFunction)>,
}

impl Kernels {
    fn get(&self, name: &str) -> &CudaFunction {
        &self.named.iter().find(|(n, _)| *n == name).expect("kernel names are fixed in this file").1
    }
}

/// One CUDA device with the exo kernels loaded.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: Kernels,
    ordinal: usize,
    /// Threads the device can hold at once (multiprocessors × threads per multiprocessor).
    thread_slots: usize,
}

impl Gpu {
    /// Opens device `ordinal`, loads the kernels and creates a cuBLAS handle.
    pub fn new(ordinal: usize) -> Result<Self> {
        let n = device_count();
        if ordinal >= n {
            return Err(GpuError(format!("device cuda:{ordinal} requested but {n} CUDA device(s) found")));
        }
        // SAFETY: only probes whether libcublas can be opened (cudarc panics on a missing one).
        if !unsafe { blas_sys::is_culib_present() } {
            return Err(GpuError("libcublas not found: add the CUDA libraries' folder to LD_LIBRARY_PATH".to_string()));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| GpuError::at(format!("opening cuda:{ordinal}"), e))?;
        let cap = |a| ctx.attribute(a).map_err(|e| GpuError::at("reading the compute capability", e));
        let major = cap(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = cap(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        if major < 8 {
            // The prompt attention's tensor-core MMAs (m16n8k16) exist from Ampere on; the driver
            // would otherwise fail later with a bare JIT error while loading the kernels.
            return Err(GpuError(format!("cuda:{ordinal} ({}) has compute capability {major}.{minor}; exo's CUDA kernels need 8.0 or later (use --device cpu)", ctx.name().unwrap_or_default())));
        }
        // One stream: the per-buffer events cudarc records for cross-stream safety would only
        // add host work to every launch.
        // SAFETY: all work goes to `stream`, in order.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| GpuError::at("creating a stream", e))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| GpuError::at("creating a cuBLAS handle (is libcublas on LD_LIBRARY_PATH?)", e))?;
        let mut modules = Vec::new();
        let mut named = Vec::new();
        let matvec: Vec<&'static str> = MV_KERNELS.iter().flat_map(|k| [k.one, k.several]).chain(["mv_float", "mv_lut", "dequant_f16", "f32_to_f16"]).collect();
        for (src, names) in [
            (MATVEC_PTX, &matvec[..]),
            (LAYER_PTX, &["rms_norm_rows", "add_rows", "rope_kv", "attn_partial", "attn_combine", "attn_prefill_64", "attn_prefill_128", "attn_decode", "glu", "softcap", "argmax_rows", "topk_rows"][..]),
        ] {
            let m = ctx.load_module(Ptx::from_src(src)).map_err(|e| GpuError::at("loading the PTX module", e))?;
            for &name in names {
                named.push((name, m.load_function(name).map_err(|e| GpuError::at(format!("kernel {name}"), e))?));
            }
            modules.push(m);
        }
        let sms = cap(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let per_sm = cap(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR)?;
        let thread_slots = (sms.max(1) * per_sm.max(1)) as usize;
        Ok(Self { ctx, stream, blas, kernels: Kernels { _modules: modules, named }, ordinal, thread_slots })
    }

    /// Bytes of device memory free now (this process's allocations already taken).
    pub fn free_memory(&self) -> Result<usize> {
        Ok(self.ctx.mem_get_info().map_err(|e| GpuError::at("querying free device memory", e))?.0)
    }

    /// The device's name and ordinal, e.g. "cuda:0 (NVIDIA H100 80GB HBM3)".
    pub fn describe(&self) -> String {
        format!("cuda:{} ({})", self.ordinal, self.ctx.name().unwrap_or_default())
    }

    /// A zero-filled allocation of `bytes` bytes; `what` names it in the error.
    pub fn alloc(&self, bytes: usize, what: &str) -> Result<DeviceBuf> {
        let mem = self.stream.alloc_zeros::<u8>(bytes.max(16)).map_err(|e| GpuError::at(format!("allocating {bytes} bytes for {what}"), e))?;
        let ptr = mem.device_ptr(&self.stream).0;
        Ok(DeviceBuf { _mem: mem, ptr, bytes })
    }

    /// A device copy of `data`.
    pub fn upload<T: Copy>(&self, data: &[T], what: &str) -> Result<DeviceBuf> {
        let buf = self.alloc(std::mem::size_of_val(data), what)?;
        self.write(&buf, 0, data)?;
        Ok(buf)
    }

    /// Copies `data` into `buf` at byte `offset` (ordered with the stream's work).
    pub fn write<T: Copy>(&self, buf: &DeviceBuf, offset: usize, data: &[T]) -> Result<()> {
        assert!(offset + std::mem::size_of_val(data) <= buf.bytes, "write past the end of a device buffer");
        // SAFETY: the range lies inside `buf`; the call returns once `data` has been staged.
        unsafe { cudarc::driver::result::memcpy_htod_async(buf.at(offset), data, self.stream.cu_stream()) }.map_err(|e| GpuError::at("copy to device", e))
    }

    /// Copies `out.len()` values from device address `src` and waits for them.
    pub fn read<T: Copy>(&self, src: u64, out: &mut [T]) -> Result<()> {
        // SAFETY: callers pass addresses inside their own buffers with room for `out`.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(out, src, self.stream.cu_stream()) }.map_err(|e| GpuError::at("copy to host", e))?;
        self.sync()
    }

    /// Waits for all queued work.
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| GpuError::at("synchronize", e))
    }

    /// Uploads a weight matrix from its stored bytes; `name` is the tensor's, for errors.
    pub fn matrix(&self, name: &str, ty: QuantFormat, rows: usize, cols: usize, bytes: &[u8]) -> Result<GpuMatrix> {
        if !supported(ty) {
            return Err(GpuError(format!("tensor '{name}' has type {}, which has no GPU kernel (supported: q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k, nf4, fp8, f16, bf16, f32)", ty.name())));
        }
        let expect = ty.row_bytes(cols).map(|r| r * rows);
        if expect != Some(bytes.len()) || !cols.is_multiple_of(32) {
            return Err(GpuError(format!("tensor '{name}': {} bytes for {rows}×{cols} {} (columns must be a multiple of 32 and of the block size)", bytes.len(), ty.name())));
        }
        Ok(GpuMatrix { ty, rows, cols, buf: Arc::new(self.upload(bytes, name)?), f16: None })
    }

    fn launch(&self, name: &str, grid: (u32, u32, u32), block: u32, smem: u32, args: &[Arg]) -> Result<()> {
        let f = self.kernels.get(name);
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::P(p) | Arg::U(p) => b.arg(p),
                Arg::I(i) => b.arg(i),
                Arg::F(x) => b.arg(x),
            };
        }
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: smem };
        // SAFETY: each wrapper below passes the argument list its kernel declares.
        unsafe { b.launch(cfg) }.map(|_| ()).map_err(|e| GpuError::at(format!("launching {name}"), e))
    }

    /// `y (+)= W · x` for `t` tokens (rows of `x`, `cols` apart; outputs `ldy` floats apart):
    /// int8 activations for quantized weights, each launch reading the weights once for up to
    /// [`MV_COLS`] tokens; f32 activations for float weights, one launch per token.
    pub fn matvec(&self, m: &GpuMatrix, x: Act, t: usize, y: u64, ldy: usize, accumulate: bool) -> Result<()> {
        let acc = Arg::I(accumulate as i32);
        let (rows, cols) = (m.rows as i32, m.cols as i32);
        let kernels = mv_kernels(m.ty).map(|k| (k, mv_threads(m.rows, m.cols, k, self.thread_slots)));
        let per_launch = if kernels.is_some() { MV_COLS } else { 1 };
        for c0 in (0..t).step_by(per_launch) {
            let n = per_launch.min(t - c0);
            let yc = y + (c0 * ldy * 4) as u64;
            match kernels {
                Some((k, threads)) => {
                    let (q8, ds) = (x.q8 + (c0 * m.cols) as u64, x.ds + (c0 * m.cols / 32 * 8) as u64);
                    let args = [Arg::P(m.buf.ptr), Arg::P(q8), Arg::P(ds), Arg::P(yc), Arg::I(rows), Arg::I(cols), acc, Arg::I(n as i32), Arg::I(ldy as i32)];
                    let (name, rows_per_block) = if n == 1 { (k.one, MV_ROWS) } else { (k.several, MV_ROWS_N) };
                    self.launch(name, (m.rows.div_ceil(rows_per_block as usize) as u32, 1, 1), threads, 0, &args)?
                }
                None => {
                    let xc = x.f32 + (c0 * m.cols * 4) as u64;
                    let args = [Arg::I(type_id(m.ty)), Arg::P(m.buf.ptr), Arg::P(xc), Arg::P(yc), Arg::I(rows), Arg::I(cols), acc];
                    let kernel = if matches!(m.ty, QuantFormat::Ggml(_)) { "mv_float" } else { "mv_lut" };
                    self.launch(kernel, (m.rows.div_ceil(4) as u32, 1, 1), 128, 0, &args)?
                }
            }
        }
        Ok(())
    }

    /// `y (+)= x · Wᵀ` for `t` tokens: `x` is `t × cols` f16 (row stride `cols`), `y` is `t` rows
    /// of f32 `ldy` apart. W is widened to f16 in `scratch`, as many rows at a time as it holds
    /// (at least one), each chunk multiplied into its own columns of `y`.
    // The arguments are cuBLAS's own (operands, leading dimension, beta) plus the scratch.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(&self, m: &GpuMatrix, x_f16: u64, t: usize, y: u64, ldy: usize, accumulate: bool, scratch: &DeviceBuf) -> Result<()> {
        if let Some(w16) = &m.f16 {
            return self.gemm_rows(w16.ptr, m.rows, m.cols, x_f16, t, y, ldy, accumulate);
        }
        let chunk = (scratch.bytes / 2 / m.cols).min(m.rows);
        assert!(chunk > 0, "f16 scratch smaller than one matrix row");
        let row_bytes = m.ty.row_bytes(m.cols).expect("GPU matrices have whole blocks per row");
        for r0 in (0..m.rows).step_by(chunk) {
            let rows = chunk.min(m.rows - r0);
            self.widen(m, r0 * row_bytes, rows, scratch.ptr)?;
            self.gemm_rows(scratch.ptr, rows, m.cols, x_f16, t, y + (r0 * 4) as u64, ldy, accumulate)?;
        }
        Ok(())
    }

    /// Widens `rows` rows of `m`, from byte `offset` of its blocks, to f16 at `out`.
    fn widen(&self, m: &GpuMatrix, offset: usize, rows: usize, out: u64) -> Result<()> {
        let w = m.buf.ptr + offset as u64;
        self.launch("dequant_f16", ((rows * m.cols / 32).div_ceil(256).min(8192) as u32, 1, 1), 256, 0, &[Arg::I(type_id(m.ty)), Arg::P(w), Arg::I(rows as i32), Arg::I(m.cols as i32), Arg::P(out)])
    }

    /// `y (+)= x · Wᵀ` for `rows` f16 rows of `cols` at `w16` and `t` f16 rows of `x`.
    #[allow(clippy::too_many_arguments)]
    fn gemm_rows(&self, w16: u64, rows: usize, cols: usize, x_f16: u64, t: usize, y: u64, ldy: usize, accumulate: bool) -> Result<()> {
        let (alpha, beta) = (1f32, if accumulate { 1f32 } else { 0f32 });
        // Column-major view: Yᵀ (rows × t) = W (rows × cols, stored as its transpose) · Xᵀ.
        // SAFETY: sizes are those of the caller's buffers; the handle runs on our stream.
        unsafe {
            blas::gemm_ex(
                *self.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                rows as i32,
                t as i32,
                cols as i32,
                (&alpha as *const f32).cast(),
                w16 as *const _,
                blas_sys::cudaDataType::CUDA_R_16F,
                cols as i32,
                x_f16 as *const _,
                blas_sys::cudaDataType::CUDA_R_16F,
                cols as i32,
                (&beta as *const f32).cast(),
                y as *mut _,
                blas_sys::cudaDataType::CUDA_R_32F,
                ldy as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| GpuError::at(format!("cuBLAS GEMM {rows}×{cols}×{t}"), e))
    }

    /// Keeps `m` widened to f16 in device memory (2 bytes a weight) from now on, so that
    /// [`Gpu::gemm`] no longer widens it on every call; a quarter to a half of a prompt's time
    /// goes to that widening, and a batched step of more than 16 tokens writes and reads again
    /// the whole model in f16. `what` names the matrix in errors.
    pub fn keep_f16(&self, m: &mut GpuMatrix, what: &str) -> Result<()> {
        let buf = self.alloc(Self::f16_bytes(m.rows, m.cols), &format!("{what} in f16"))?;
        self.widen(m, 0, m.rows, buf.ptr)?;
        m.f16 = Some(Arc::new(buf));
        Ok(())
    }

    /// Bytes [`Gpu::keep_f16`] takes for a `rows` × `cols` matrix.
    pub fn f16_bytes(rows: usize, cols: usize) -> usize {
        rows * cols * 2
    }

    /// `n` f32 values to f16.
    pub fn to_f16(&self, x: u64, out: u64, n: usize) -> Result<()> {
        self.launch("f32_to_f16", (n.div_ceil(256).min(4096) as u32, 1, 1), 256, 0, &[Arg::P(x), Arg::P(out), Arg::U(n as u64)])
    }

    /// RMSNorm of `rows` rows of `n` values from `x` into `out` (plus int8 groups when set).
    /// With `pick` non-zero, output row `i` normalises input row `pick[i]` (an `i32` array).
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm(&self, x: u64, pick: u64, w: u64, out: Act, rows: usize, n: usize, eps: f32) -> Result<()> {
        // A few rows (a decode step's, a verification's) are each spread over several blocks,
        // up to one per 256 values, so that the launch still covers the GPU's SMs; a prompt's
        // hundreds of rows fill it with one block each.
        let per_row = n.div_ceil(256).min((256 / rows.max(1)).max(1)) as u32;
        self.launch("rms_norm_rows", (per_row, rows as u32, 1), 256, 0, &[Arg::P(x), Arg::P(pick), Arg::P(w), Arg::P(out.f32), Arg::P(out.q8), Arg::P(out.ds), Arg::I(n as i32), Arg::F(eps)])
    }

    /// `x += y`, or `x += rms_norm(y) · w` when `w` is non-zero, for `rows` rows of `n`.
    pub fn add_rows(&self, x: u64, y: u64, w: u64, rows: usize, n: usize, eps: f32) -> Result<()> {
        self.launch("add_rows", (rows as u32, 1, 1), 256, 0, &[Arg::P(x), Arg::P(y), Arg::P(w), Arg::I(n as i32), Arg::F(eps)])
    }

    /// Bias, per-head norm and rotary position for the q and k heads of `t` rows of `qkv`, and
    /// the k/v rows written to the f16 caches at each token's position and block (batch map).
    pub fn rope_kv(&self, r: &RopeArgs, t: usize) -> Result<()> {
        let h = r.heads;
        let heads = (h.n_heads + h.n_kv_heads) as u32;
        self.launch("rope_kv", (heads, t as u32, 1), (h.head_dim / 2) as u32, 0, &rope_arg_list(r))
    }

    /// Causal attention of `t` queries (rows of `a.qkv`) over their sequences' cache, split into
    /// `nsplit` chunks of `chunk` keys, merged into `out` (plus int8 groups when set). Tokens the
    /// batch map marks tiled are skipped ([`Gpu::attention_prefill`] takes them).
    pub fn attention(&self, a: &AttnArgs, t: usize, chunk: usize, nsplit: usize, out: Act) -> Result<()> {
        let h = a.heads;
        let smem = ((h.head_dim * (1 + ATTN_THREADS as usize / 32) + chunk) * 4) as u32;
        self.launch(
            "attn_partial",
            (nsplit as u32, h.n_heads as u32, t as u32),
            ATTN_THREADS,
            smem,
            &[
                head_arg_list(h).as_slice(),
                &[
                    Arg::F(a.scale),
                    Arg::I(a.window as i32),
                    Arg::I(a.skip_tiled as i32),
                    Arg::I(chunk as i32),
                    Arg::I(nsplit as i32),
                    Arg::P(h.k_cache),
                    Arg::P(h.v_cache),
                    Arg::P(a.part),
                    Arg::P(a.ml),
                ],
            ]
            .concat(),
        )?;
        self.launch(
            "attn_combine",
            (h.n_heads as u32, t as u32, 1),
            h.head_dim as u32,
            0,
            &[Arg::P(h.io), Arg::I(a.skip_tiled as i32), Arg::P(a.part), Arg::P(a.ml), Arg::I(nsplit as i32), Arg::I(h.n_heads as i32), Arg::I(h.head_dim as i32), Arg::P(out.f32), Arg::P(out.q8), Arg::P(out.ds)],
        )
    }

    /// The attention of `t` decoded tokens, each the only new token of its sequence, in one
    /// launch: what [`Gpu::rope_kv`] and [`Gpu::attention`] do for them, the merge done by each
    /// head's last split block. `cnt` holds one zeroed `i32` per query head and token; it is
    /// left zeroed.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_decode(&self, r: &RopeArgs, a: &AttnArgs, t: usize, chunk: usize, nsplit: usize, cnt: u64, out: Act) -> Result<()> {
        let h = r.heads;
        let smem = ((7 * h.head_dim + chunk) * 4) as u32;
        let mut args = rope_arg_list(r);
        args.extend([
            Arg::F(a.scale),
            Arg::I(a.window as i32),
            Arg::I(chunk as i32),
            Arg::I(nsplit as i32),
            Arg::P(a.part),
            Arg::P(a.ml),
            Arg::P(cnt),
            Arg::P(out.f32),
            Arg::P(out.q8),
            Arg::P(out.ds),
        ]);
        self.launch("attn_decode", (nsplit as u32, h.n_heads as u32, t as u32), ATTN_THREADS, smem, &args)
    }

    /// Whether [`Gpu::attention_prefill`] takes heads of `head_dim` dimensions.
    pub fn has_prefill_attention(head_dim: usize) -> bool {
        matches!(head_dim, 64 | 128)
    }

    /// Causal attention on the tensor cores of the `t` consecutive tokens of one sequence that
    /// start at token `tok0` of the call, over that sequence's cache, for a prompt (no sliding
    /// window; head sizes per [`Gpu::has_prefill_attention`]), into their rows of `out` (rows of
    /// `n_heads · head_dim` f32).
    pub fn attention_prefill(&self, a: &AttnArgs, tok0: usize, t: usize, out: u64) -> Result<()> {
        let h = a.heads;
        let name = match h.head_dim {
            64 => "attn_prefill_64",
            128 => "attn_prefill_128",
            d => return Err(GpuError(format!("prefill attention has no kernel for {d}-dimensional heads"))),
        };
        self.launch(
            name,
            (t.div_ceil(PREFILL_QUERIES) as u32, h.n_heads as u32, 1),
            128,
            0,
            &[
                Arg::P(h.qkv),
                Arg::I(h.stride as i32),
                Arg::P(h.io),
                Arg::I(tok0 as i32),
                Arg::I(t as i32),
                Arg::I(h.n_heads as i32),
                Arg::I(h.n_kv_heads as i32),
                Arg::F(a.scale),
                Arg::P(h.k_cache),
                Arg::P(h.v_cache),
                Arg::P(out),
            ],
        )
    }

    /// `out = act(gate) · up` for `t` rows `[gate | up]` of `gu`; `gelu` picks tanh-GELU over SiLU.
    pub fn glu(&self, gu: u64, ffn: usize, t: usize, gelu: bool, out: Act) -> Result<()> {
        self.launch("glu", (ffn.div_ceil(256) as u32, t as u32, 1), 256, 0, &[Arg::P(gu), Arg::I(ffn as i32), Arg::I(gelu as i32), Arg::P(out.f32), Arg::P(out.q8), Arg::P(out.ds)])
    }

    /// `out[i]` (an `i32`) = the index of the largest of the `vocab` values of row `i` of `x`, for
    /// `rows` rows: the lowest index among equal maxima; NaN never wins.
    pub fn argmax_rows(&self, x: u64, rows: usize, vocab: usize, out: u64) -> Result<()> {
        self.launch("argmax_rows", (rows as u32, 1, 1), 256, 0, &[Arg::P(x), Arg::I(vocab as i32), Arg::P(out)])
    }

    /// The `k` largest of each of `rows` rows of `vocab` logits at `x`, as `k` (`i32` index, `f32`
    /// value) pairs per row in no set order at `ids` and `vals`; `k` at most `vocab`.
    pub fn topk_rows(&self, x: u64, rows: usize, vocab: usize, k: usize, ids: u64, vals: u64) -> Result<()> {
        assert!(k >= 1 && k <= vocab, "top-k of {k} from {vocab} values");
        self.launch("topk_rows", (rows as u32, 1, 1), 1024, 0, &[Arg::P(x), Arg::I(vocab as i32), Arg::I(k as i32), Arg::P(ids), Arg::P(vals)])
    }

    /// `x = tanh(x / cap) · cap` over `n` values.
    pub fn softcap(&self, x: u64, n: usize, cap: f32) -> Result<()> {
        self.launch("softcap", (n.div_ceil(256).min(4096) as u32, 1, 1), 256, 0, &[Arg::P(x), Arg::U(n as u64), Arg::F(cap)])
    }

    /// Starts recording the stream's launches into a graph instead of running them.
    pub fn begin_capture(&self) -> Result<()> {
        self.stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(|e| GpuError::at("begin graph capture", e))
    }

    /// Ends the recording started by [`Gpu::begin_capture`] and instantiates the graph.
    pub fn end_capture(&self) -> Result<GpuGraph> {
        let g = self.stream.end_capture(sys::CUgraphInstantiate_flags(0)).map_err(|e| GpuError::at("end graph capture", e))?;
        g.map(GpuGraph).ok_or_else(|| GpuError("graph capture recorded nothing".to_string()))
    }
}

/// The layout arguments the attention kernels start with: rows, stride, positions, head counts.
fn head_arg_list(h: &LayerHeads) -> Vec<Arg> {
    vec![Arg::P(h.qkv), Arg::I(h.stride as i32), Arg::P(h.io), Arg::I(h.n_heads as i32), Arg::I(h.n_kv_heads as i32), Arg::I(h.head_dim as i32)]
}

/// The arguments `rope_kv` takes, which `attn_decode` takes first.
fn rope_arg_list(r: &RopeArgs) -> Vec<Arg> {
    let h = r.heads;
    let mut args = head_arg_list(h);
    args.extend([
        Arg::P(r.cos),
        Arg::P(r.sin),
        Arg::I(r.neox as i32),
        Arg::P(r.bias),
        Arg::P(r.q_norm),
        Arg::P(r.k_norm),
        Arg::F(r.eps),
        Arg::P(h.k_cache),
        Arg::P(h.v_cache),
    ]);
    args
}

/// One layer's `[q | k | v]` rows and KV cache: what [`Gpu::rope_kv`] writes and
/// [`Gpu::attention`] reads.
pub struct LayerHeads {
    /// `t` rows `[q | k | v]`, `stride` floats apart.
    pub qkv: u64,
    /// Row stride of `qkv` in floats.
    pub stride: usize,
    /// The call's batch map (`i32`s: each token's position, sequence and KV blocks; layout in
    /// batch.cuh), which the host writes before each call.
    pub io: u64,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// This layer's f16 key cache (`blocks × 16 × kv_dim`).
    pub k_cache: u64,
    /// This layer's f16 value cache.
    pub v_cache: u64,
}

/// Arguments of [`Gpu::rope_kv`]; pointers of 0 mean "absent".
pub struct RopeArgs<'a> {
    /// The rows to rotate and the cache to write.
    pub heads: &'a LayerHeads,
    /// Cosine table, `head_dim / 2` values per position.
    pub cos: u64,
    /// Sine table, same shape.
    pub sin: u64,
    /// NeoX pairing (i, i + d/2) instead of adjacent pairs.
    pub neox: bool,
    /// `[bq | bk | bv]` projection bias.
    pub bias: u64,
    /// Per-head query norm weight.
    pub q_norm: u64,
    /// Per-head key norm weight.
    pub k_norm: u64,
    /// RMSNorm epsilon.
    pub eps: f32,
}

/// Arguments of [`Gpu::attention`].
pub struct AttnArgs<'a> {
    /// Rows with rotated queries, and the cache to attend over.
    pub heads: &'a LayerHeads,
    /// Multiplier of q·k.
    pub scale: f32,
    /// Sliding window in tokens (0: none).
    pub window: usize,
    /// Leave tokens the batch map marks tiled to [`Gpu::attention_prefill`].
    pub skip_tiled: bool,
    /// Partial outputs: `t × n_heads × nsplit × head_dim` f32.
    pub part: u64,
    /// Partial (max, sum) pairs: `t × n_heads × nsplit` float2.
    pub ml: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread counts that measured fastest per Llama-3-8B Q4_K_M matrix on an H200 (132
    /// multiprocessors of 2048 threads; `cargo bench --bench cuda_matvec`, BENCHMARKS.md).
    #[test]
    fn mat_vec_threads_follow_the_measured_best() {
        let slots = 132 * 2048;
        let k = |ty| mv_kernels(QuantFormat::Ggml(ty)).expect("a quantized type");
        let cases = [
            ("v", GgmlType::Q6K, 1024, 4096, 256),
            ("down", GgmlType::Q6K, 4096, 14336, 256),
            ("LM head", GgmlType::Q6K, 128256, 4096, 64),
            ("q+k", GgmlType::Q4K, 5120, 4096, 64),
            ("gate+up", GgmlType::Q4K, 28672, 4096, 64),
        ];
        for (what, ty, rows, cols, want) in cases {
            assert_eq!(mv_threads(rows, cols, k(ty), slots), want, "{what}");
        }
    }
}
