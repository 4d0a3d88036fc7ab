//! ggml's Q4_K (and Q5_K) weights: a repacked layout and SIMD kernels for decode (`m == 1`) and
//! prompt processing (`m > 1`).
//!
//! A Q4_K block holds 256 weights as 4-bit codes in eight sub-blocks of 32, each sub-block with
//! a 6-bit scale `sc` and a 6-bit min `mn` (packed into 12 bytes), and two f16 super-scales:
//! `w = d · sc · q - dmin · mn`. Activations are quantized per 256 as ggml's Q8_K does
//! (`x ≈ dₓ · y` with 8-bit `y`), so the dot product of one block is
//! `d dₓ Σ_s sc_s Σ_{j∈s} q_j y_j - dmin dₓ Σ_s mn_s Σ_{j∈s} y_j`: integer sums per sub-block,
//! and the sums of `y` per sub-block are computed once at quantization time.
//!
//! At load, [`PackedQ4K::pack`] interleaves every four weight rows ([`Q4Kx4`]): 16-byte chunks of
//! the four rows' codes lie side by side, so one 64-byte load holds the same chunk of four rows
//! and one AVX-512 `vpmaddubsw`/`vpdpwssd` pair serves four rows at once, with each row in its
//! own 128-bit lane (lane-wise scales, no cross-lane reduction until the end). The 6-bit scales
//! stay packed (decode is bound by memory bandwidth, so the packed copy is exactly as large as
//! the GGUF data: 576 bytes per four blocks of 144) and are unpacked per block with a few vector
//! operations shared by all activation rows of a tile.
//!
//! The same tile kernel computes four weight rows against `A` activation rows: `A = 1` for
//! decode, larger `A` in prompt processing, where each unpacked weight chunk and scale vector is
//! reused for all `A` rows.
//!
//! Q5_K is Q4_K plus a fifth bit per code (`qh`); its packed form adds the four rows' `qh`,
//! interleaved the same way (704 bytes per four blocks of 176, the same size), and the kernels add
//! the fifth bits into the codes before the products (5-bit codes still fit `vpmaddubsw`).
//!
//! Kernels are chosen at compile time from the target features (the workspace builds with
//! `target-cpu=native`): AVX-512 (BW + VNNI), else AVX2 + FMA + F16C, else portable scalar code,
//! which is also the reference the tests compare against.

use std::cell::Cell;

use half::f16;

use crate::matrix::SendPtr;
use crate::threads::parallel_for;

/// Elements per block.
pub const QK_K: usize = 256;

/// A Q4_K block exactly as ggml stores it (`block_q4_K`, 144 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4K {
    /// Super-scale of the sub-block scales.
    pub d: f16,
    /// Super-scale of the sub-block mins.
    pub dmin: f16,
    /// Eight 6-bit scales and eight 6-bit mins, packed as ggml's `get_scale_min_k4` reads them.
    pub scales: [u8; 12],
    /// Codes: byte `32 c + l` holds element `64 c + l` (low nibble) and `64 c + 32 + l` (high).
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144 && std::mem::align_of::<BlockQ4K>() == 2);

impl BlockQ4K {
    /// The eight sub-block scales and mins, each 0..=63 (ggml's `get_scale_min_k4`).
    pub fn scales_mins(&self) -> ([u8; 8], [u8; 8]) {
        let q = &self.scales;
        let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
        for j in 0..8 {
            if j < 4 {
                sc[j] = q[j] & 63;
                mn[j] = q[j + 4] & 63;
            } else {
                sc[j] = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
                mn[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
            }
        }
        (sc, mn)
    }

    /// The 256 codes (0..=15) in element order.
    pub fn codes(&self) -> [u8; QK_K] {
        let mut q = [0u8; QK_K];
        for c in 0..4 {
            for l in 0..32 {
                let b = self.qs[32 * c + l];
                q[64 * c + l] = b & 0x0F;
                q[64 * c + 32 + l] = b >> 4;
            }
        }
        q
    }
}

/// A Q5_K block exactly as ggml stores it (`block_q5_K`, 176 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5K {
    /// Super-scale of the sub-block scales.
    pub d: f16,
    /// Super-scale of the sub-block mins.
    pub dmin: f16,
    /// Scales and mins, packed as in [`BlockQ4K`].
    pub scales: [u8; 12],
    /// Fifth bits: bit `2 c` of byte `l` belongs to element `64 c + l`, bit `2 c + 1` to
    /// element `64 c + 32 + l`.
    pub qh: [u8; QK_K / 8],
    /// Low four bits, packed as in [`BlockQ4K`].
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176 && std::mem::align_of::<BlockQ5K>() == 2);

impl BlockQ5K {
    /// The block without its fifth bits (the scales and low bits are laid out identically).
    fn low(&self) -> BlockQ4K {
        BlockQ4K { d: self.d, dmin: self.dmin, scales: self.scales, qs: self.qs }
    }

    /// The 256 codes (0..=31) in element order.
    pub fn codes(&self) -> [u8; QK_K] {
        let mut q = self.low().codes();
        for (j, q) in q.iter_mut().enumerate() {
            let (c, half, l) = (j / 64, (j / 32) % 2, j % 32);
            *q |= ((self.qh[l] >> (2 * c + half)) & 1) << 4;
        }
        q
    }
}

/// Dequantizes Q5_K blocks into `out` (`blocks.len() * 256` values), as ggml's
/// `dequantize_row_q5_K`.
pub fn dequantize_row_q5k(blocks: &[BlockQ5K], out: &mut [f32]) {
    assert_eq!(out.len(), blocks.len() * QK_K, "dequantize: output length");
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (sc, mn) = b.low().scales_mins();
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        for (j, (o, &q)) in o.iter_mut().zip(&b.codes()).enumerate() {
            let s = j / 32;
            *o = d * f32::from(sc[s]) * f32::from(q) - dmin * f32::from(mn[s]);
        }
    }
}

/// Dequantizes Q4_K blocks into `out` (`blocks.len() * 256` values), as ggml's
/// `dequantize_row_q4_K`.
pub fn dequantize_row_q4k(blocks: &[BlockQ4K], out: &mut [f32]) {
    assert_eq!(out.len(), blocks.len() * QK_K, "dequantize: output length");
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (sc, mn) = b.scales_mins();
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        let codes = b.codes();
        for (j, (o, &q)) in o.iter_mut().zip(&codes).enumerate() {
            let s = j / 32;
            *o = d * f32::from(sc[s]) * f32::from(q) - dmin * f32::from(mn[s]);
        }
    }
}

/// 256 activations quantized as ggml's `quantize_row_q8_K` (candle's `BlockQ8K::from_float`):
/// `x[j] ≈ d · qs[j]`.
///
/// Unlike ggml's `block_q8_K`, which sums every 16 values, `bsums` holds one sum per sub-block
/// of 32, the granularity of the Q4_K/Q5_K mins.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8K {
    /// Scale: `max / -127` where `max` is the first value of largest magnitude (negative when
    /// that value is positive, as in ggml).
    pub d: f32,
    /// Values in -127..=127.
    pub qs: [i8; QK_K],
    /// `Σ qs` over each run of 32.
    pub bsums: [i16; 8],
}

impl Default for BlockQ8K {
    fn default() -> Self {
        Self { d: 0.0, qs: [0; QK_K], bsums: [0; 8] }
    }
}

impl BlockQ8K {
    /// Quantizes 256 values exactly as ggml's reference quantizer: `iscale = -127 / max`,
    /// `qs = round(iscale · x)` (ties away from zero), `d = 1 / iscale`.
    pub fn quantize(x: &[f32; QK_K]) -> Self {
        // Sixteen running maxima let this vectorize; the value itself (its sign) is then the
        // first one of that magnitude, as ggml's sequential scan finds.
        let mut lanes = [0f32; 16];
        for c in x.chunks_exact(16) {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l = if v.abs() > *l { v.abs() } else { *l };
            }
        }
        let amax = lanes.into_iter().fold(0f32, |a, b| if b > a { b } else { a });
        let mut y = Self::default();
        if amax == 0.0 {
            return y;
        }
        let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
        let iscale = -127.0 / max;
        for (q, &v) in y.qs.iter_mut().zip(x) {
            let v = iscale * v;
            // Round half away from zero (C's roundf) in a form that vectorizes: adding the
            // largest float below 0.5 and truncating is exact for every f32.
            let r = (v + 0.499_999_97f32.copysign(v)).trunc();
            *q = r.clamp(-128.0, 127.0) as i8;
        }
        for (s, c) in y.bsums.iter_mut().zip(y.qs.chunks_exact(32)) {
            *s = c.iter().map(|&q| i16::from(q)).sum();
        }
        y.d = 1.0 / iscale;
        y
    }
}

/// The same block of four consecutive weight rows, interleaved for the SIMD kernels (576 bytes,
/// exactly four [`BlockQ4K`]s).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Q4Kx4 {
    /// The rows' `d`.
    pub d: [f16; 4],
    /// The rows' `dmin`.
    pub dmin: [f16; 4],
    /// The rows' packed 6-bit scales and mins, regrouped by 32-bit word: byte `16 w + 4 r + i`
    /// is byte `4 w + i` of row `r`'s `scales`, so that one 128-bit load holds word `w` of all
    /// four rows and the kernels unpack them with a few vector operations (see
    /// [`Q4Kx4::scales_mins`]).
    pub scales: [u8; 48],
    /// Bytes `16 k .. 16 k + 16` of row `r`'s `qs` at `64 k + 16 r`.
    pub qs: [u8; 4 * QK_K / 2],
}

impl Q4Kx4 {
    /// Row `r`'s eight scales and mins (0..=63).
    pub fn scales_mins(&self, r: usize) -> ([u8; 8], [u8; 8]) {
        let scales = std::array::from_fn(|j| self.scales[16 * (j / 4) + 4 * r + j % 4]);
        BlockQ4K { d: f16::ZERO, dmin: f16::ZERO, scales, qs: [0; QK_K / 2] }.scales_mins()
    }
}

/// The fifth bits of four Q5_K rows' blocks: byte `64 h + 16 r + t` is byte `16 h + t` of row
/// `r`'s `qh`, so that it lines up with the codes of chunk `2 c + h` in [`Q4Kx4::qs`].
pub type Qh4 = [u8; 128];

/// A Q4_K or Q5_K matrix repacked into groups of four rows ([`Q4Kx4`], plus [`Qh4`] for Q5_K);
/// the last group is padded with zero rows when the row count is not a multiple of four.
#[derive(Clone, Debug)]
pub struct PackedQ4K {
    rows: usize,
    cols: usize,
    /// Group `g`'s blocks at `g * nb .. (g + 1) * nb`.
    blocks: Vec<Q4Kx4>,
    /// Q5_K only (else empty): the fifth bits, indexed like `blocks`.
    qh: Vec<Qh4>,
}

impl PackedQ4K {
    /// Repacks `rows` rows of `cols / 256` Q4_K blocks (`cols` a multiple of 256).
    pub fn pack(rows: usize, cols: usize, w: &[BlockQ4K]) -> Self {
        let blocks = pack_groups(rows, cols, w, |dst, r, src: &BlockQ4K| pack_row(dst, r, src));
        Self { rows, cols, blocks, qh: Vec::new() }
    }

    /// Repacks `rows` rows of `cols / 256` Q5_K blocks (`cols` a multiple of 256).
    pub fn pack_q5k(rows: usize, cols: usize, w: &[BlockQ5K]) -> Self {
        let blocks = pack_groups(rows, cols, w, |dst, r, src: &BlockQ5K| pack_row(dst, r, &src.low()));
        let qh = pack_groups(rows, cols, w, |dst: &mut Qh4, r, src: &BlockQ5K| {
            for h in 0..2 {
                dst[64 * h + 16 * r..64 * h + 16 * r + 16].copy_from_slice(&src.qh[16 * h..16 * h + 16]);
            }
        });
        Self { rows, cols, blocks, qh }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Writes row `r` as f32 into `out` (`cols` long), as ggml dequantizes the original blocks.
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows && out.len() == self.cols, "row {r} of a {}x{} matrix", self.rows, self.cols);
        let (w, qh) = self.group(r / 4);
        let lane = r % 4;
        for (b, (blk, o)) in w.iter().zip(out.chunks_exact_mut(QK_K)).enumerate() {
            let low = BlockQ4K {
                d: blk.d[lane],
                dmin: blk.dmin[lane],
                scales: std::array::from_fn(|j| blk.scales[16 * (j / 4) + 4 * lane + j % 4]),
                qs: std::array::from_fn(|j| blk.qs[64 * (j / 16) + 16 * lane + j % 16]),
            };
            match qh.get(b) {
                None => dequantize_row_q4k(&[low], o),
                Some(qh) => {
                    let qh = std::array::from_fn(|j| qh[64 * (j / 16) + 16 * lane + j % 16]);
                    let full = BlockQ5K { d: low.d, dmin: low.dmin, scales: low.scales, qh, qs: low.qs };
                    dequantize_row_q5k(&[full], o)
                }
            }
        }
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of the packed weights.
    pub fn n_bytes(&self) -> usize {
        std::mem::size_of_val(self.blocks.as_slice())
    }

    /// Group `g`'s blocks and (Q5_K) fifth bits.
    fn group(&self, g: usize) -> (&[Q4Kx4], &[Qh4]) {
        let nb = self.cols / QK_K;
        let qh = if self.qh.is_empty() { &[][..] } else { &self.qh[g * nb..(g + 1) * nb] };
        (&self.blocks[g * nb..(g + 1) * nb], qh)
    }

    /// One tile, Q4_K or Q5_K as packed.
    #[inline]
    fn tile<const A: usize>(&self, g: usize, x: [&[BlockQ8K]; A]) -> [[f32; 4]; A] {
        match self.group(g) {
            (w, []) => tile::<A, false>(w, &[], x),
            (w, qh) => tile::<A, true>(w, qh, x),
        }
    }

    /// `out[i][r] = Σ_c x[i][c] · W[r][c]` for `m` rows of activations (`x` is `m * cols`
    /// long, `out` `m * rows`), on all threads.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        let (k, n) = (self.cols, self.rows);
        assert_eq!(x.len(), m * k, "activations: expected {m} rows of {k}");
        assert_eq!(out.len(), m * n, "output: expected {m} rows of {n}");
        let nb = k / QK_K;
        let groups = n.div_ceil(4);
        with_quantized(x, m, k, |xq| {
            let out_ptr = SendPtr(out.as_mut_ptr());
            let write = |g: usize, a: usize, v: [f32; 4]| {
                for (r, v) in v.into_iter().enumerate().take(n - 4 * g) {
                    // SAFETY: (a, 4 g + r) is in bounds (r < n - 4 g, a < m) and each output
                    // element belongs to one group, which one thread computes.
                    unsafe { *out_ptr.get().add(a * n + 4 * g + r) = v };
                }
            };
            if m == 1 {
                parallel_for(groups, |range| {
                    for g in range {
                        let [v] = self.tile::<1>(g, [xq]);
                        write(g, 0, v);
                    }
                });
                return;
            }
            // Prompt processing: a few groups' weights stay in L1/L2 while every tile of
            // activation rows passes over them.
            const GROUPS_PER_CHUNK: usize = 4;
            parallel_for(groups.div_ceil(GROUPS_PER_CHUNK), |range| {
                for chunk in range {
                    let gs = chunk * GROUPS_PER_CHUNK..((chunk + 1) * GROUPS_PER_CHUNK).min(groups);
                    let mut a = 0;
                    while a < m {
                        let take = (m - a).min(TILE_A);
                        let rows = |i: usize| &xq[(a + i) * nb..(a + i + 1) * nb];
                        for g in gs.clone() {
                            macro_rules! run {
                                ($t:literal) => {{
                                    let v = self.tile::<$t>(g, std::array::from_fn(rows));
                                    for (i, v) in v.into_iter().enumerate() {
                                        write(g, a + i, v);
                                    }
                                }};
                            }
                            match take {
                                1 => run!(1),
                                2 => run!(2),
                                3 => run!(3),
                                4 => run!(4),
                                5 => run!(5),
                                6 => run!(6),
                                7 => run!(7),
                                _ => run!(8),
                            }
                        }
                        a += take;
                    }
                }
            });
        });
    }
}

/// Builds the groups of four rows' packed blocks, `pack(dst, r, src)` filling row `r` of `dst`,
/// on all threads (this runs at model load, over every Q4_K/Q5_K weight).
fn pack_groups<B: Sync, P: Zero + Copy + Send>(
    rows: usize,
    cols: usize,
    w: &[B],
    pack: impl Fn(&mut P, usize, &B) + Sync,
) -> Vec<P> {
    assert!(cols.is_multiple_of(QK_K), "k-quant row length {cols} is not a multiple of {QK_K}");
    let nb = cols / QK_K;
    assert_eq!(w.len(), rows * nb, "k-quant matrix {rows}x{cols} needs {} blocks", rows * nb);
    let groups = rows.div_ceil(4);
    let mut out = zeroed_vec::<P>(groups * nb);
    let ptr = SendPtr(out.as_mut_ptr());
    parallel_for(groups, |range| {
        for g in range {
            for b in 0..nb {
                // SAFETY: g * nb + b < groups * nb = out.len(), and each group is written by one
                // thread. Padding rows of the last group stay zero (d = 0: they contribute 0).
                let dst = unsafe { &mut *ptr.get().add(g * nb + b) };
                for r in 0..4.min(rows - 4 * g) {
                    pack(dst, r, &w[(4 * g + r) * nb + b]);
                }
            }
        }
    });
    out
}

/// A vector of `n` all-zero values, from zeroed pages: the kernel maps them lazily, so the page
/// faults happen in the threads that fill the vector rather than in a serial memset.
pub(crate) fn zeroed_vec<P: Zero>(n: usize) -> Vec<P> {
    if n == 0 || std::mem::size_of::<P>() == 0 {
        return Vec::new();
    }
    let layout = std::alloc::Layout::array::<P>(n).expect("packed matrix size overflows");
    // SAFETY: the layout has a non-zero size; `Zero` types are valid when all bits are zero, so
    // the n elements are initialized; the pointer comes from the global allocator with P's
    // layout, as `Vec::from_raw_parts` requires.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<P>();
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Vec::from_raw_parts(p, n, n)
    }
}

/// Plain-data types whose all-zero bit pattern is a valid (zero) value.
///
/// # Safety
/// Implementors must be valid when every byte is zero.
pub(crate) unsafe trait Zero {}
// SAFETY: integers, byte arrays and f16 (bits 0 = 0.0) only.
unsafe impl Zero for Q4Kx4 {}
// SAFETY: a byte array.
unsafe impl Zero for Qh4 {}

/// Row `r` of `dst` from a Q4_K block (or a Q5_K block's low bits).
fn pack_row(dst: &mut Q4Kx4, r: usize, src: &BlockQ4K) {
    dst.d[r] = src.d;
    dst.dmin[r] = src.dmin;
    for w in 0..3 {
        dst.scales[16 * w + 4 * r..16 * w + 4 * r + 4].copy_from_slice(&src.scales[4 * w..4 * w + 4]);
    }
    for k in 0..8 {
        dst.qs[64 * k + 16 * r..64 * k + 16 * r + 16].copy_from_slice(&src.qs[16 * k..16 * k + 16]);
    }
}

/// Activation rows per prompt-processing tile.
const TILE_A: usize = 8;

/// Quantizes `m` rows of `k` activations (`k` a multiple of 256) and calls `f` with the
/// `m * k / 256` blocks, row after row.
///
/// The blocks live in a buffer kept per thread and reused, so a decode loop allocates only while
/// the buffer is still growing.
pub fn with_quantized<R>(x: &[f32], m: usize, k: usize, f: impl FnOnce(&[BlockQ8K]) -> R) -> R {
    assert!(k.is_multiple_of(QK_K), "activation row length {k} is not a multiple of {QK_K}");
    assert_eq!(x.len(), m * k, "activations: expected {m} rows of {k}");
    thread_local! {
        static BUF: Cell<Vec<BlockQ8K>> = const { Cell::new(Vec::new()) };
    }
    // Taking the buffer out (rather than borrowing a RefCell) keeps a nested call on the same
    // thread correct: it simply works on a fresh buffer.
    let mut buf = BUF.take();
    let nblocks = x.len() / QK_K;
    buf.resize(nblocks, BlockQ8K::default());
    if nblocks >= 64 {
        // Prompt chunks: quantizing is a few percent of the product, worth splitting.
        let ptr = SendPtr(buf.as_mut_ptr());
        parallel_for(nblocks, |range| {
            for i in range {
                let c: &[f32; QK_K] = x[i * QK_K..(i + 1) * QK_K].try_into().expect("block of 256");
                // SAFETY: i < nblocks = buf.len(), and each block is written by one thread.
                unsafe { *ptr.get().add(i) = BlockQ8K::quantize(c) };
            }
        });
    } else {
        for (y, c) in buf.iter_mut().zip(x.chunks_exact(QK_K)) {
            *y = BlockQ8K::quantize(c.try_into().expect("block of 256"));
        }
    }
    let r = f(&buf);
    BUF.set(buf);
    r
}

/// Four weight rows (one group's blocks, and with `QH` their fifth bits) against `A` activation
/// rows: `[a][r]`.
#[inline]
fn tile<const A: usize, const QH: bool>(w: &[Q4Kx4], qh: &[Qh4], x: [&[BlockQ8K]; A]) -> [[f32; 4]; A] {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512vnni"))]
    {
        // SAFETY: the cfg guarantees the build enables the kernel's target features.
        unsafe { x86::avx512::tile::<A, QH>(w, qh, x) }
    }
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c",
        not(all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512vnni"))
    ))]
    {
        // SAFETY: the cfg guarantees the build enables the kernel's target features.
        unsafe { x86::avx2::tile::<A, QH>(w, qh, x) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c")))]
    {
        tile_scalar::<A, QH>(w, qh, x)
    }
}

/// The portable tile: also the reference for the SIMD kernels' tests.
#[cfg_attr(all(target_arch = "x86_64", target_feature = "avx2", not(test)), allow(dead_code))]
pub(crate) fn tile_scalar<const A: usize, const QH: bool>(
    w: &[Q4Kx4],
    qh: &[Qh4],
    x: [&[BlockQ8K]; A],
) -> [[f32; 4]; A] {
    assert!(!QH || qh.len() == w.len(), "tile: fifth bits missing");
    let mut out = [[0f32; 4]; A];
    for (a, xa) in x.iter().enumerate() {
        assert_eq!(xa.len(), w.len(), "tile: weight and activation blocks differ in number");
        for (i, (blk, y)) in w.iter().zip(xa.iter()).enumerate() {
            for r in 0..4 {
                let (sc, mn) = blk.scales_mins(r);
                let (mut sumi, mut summ) = (0i32, 0i32);
                for s in 0..8 {
                    let mut dot = 0i32;
                    for j in 0..32 {
                        // Element 32 s + j: group c = s / 2, low nibble when s is even.
                        let (c, l) = (s / 2, j);
                        let byte = 32 * c + l;
                        let q = blk.qs[64 * (byte / 16) + 16 * r + byte % 16];
                        let mut q = if s % 2 == 0 { q & 0x0F } else { q >> 4 };
                        if QH {
                            // Byte l of row r's qh, bit s (= 2 c + half).
                            let h = qh[i][64 * (l / 16) + 16 * r + l % 16];
                            q |= ((h >> s) & 1) << 4;
                        }
                        dot += i32::from(q) * i32::from(y.qs[32 * s + j]);
                    }
                    sumi += i32::from(sc[s]) * dot;
                    summ += i32::from(mn[s]) * i32::from(y.bsums[s]);
                }
                out[a][r] += blk.d[r].to_f32() * y.d * sumi as f32 - blk.dmin[r].to_f32() * y.d * summ as f32;
            }
        }
    }
    out
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
mod x86;

#[cfg(test)]
mod tests;
