//! The paged KV cache: key and value rows stored in fixed-size blocks, and causal attention that
//! reads them through each sequence's block table.
//!
//! A block holds [`BLOCK_TOKENS`] consecutive positions of one sequence for every layer. Which
//! blocks a sequence owns, and which are shared between sequences, is the scheduler's business
//! (exo-engine); this module only stores rows and computes over them. Rows are kept in f32, f16
//! or ggml's Q8_0 layout (blocks of 32 values with an f16 scale), converted on write and read
//! back inside the attention loops, so nothing is ever widened into a temporary copy.

use half::f16;

use crate::matrix::SendPtr;
use crate::ops::{axpy, dot, softmax, AttentionShape};
use crate::threads::parallel_for;
use crate::KernelError;

/// Positions per block.
pub const BLOCK_TOKENS: usize = 16;

/// Values per Q8_0 block, and its size in bytes (an f16 scale and 32 signed bytes).
const Q8_VALUES: usize = 32;
const Q8_BYTES: usize = 34;

/// How KV rows are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    /// 32-bit floats: exact.
    F32,
    /// 16-bit floats (llama.cpp's default).
    F16,
    /// 8-bit integers with an f16 scale per 32 values: a little over half of f16's memory.
    Q8_0,
}

impl KvType {
    /// The type's name as users write it (`f32`, `f16`, `q8_0`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
        }
    }

    /// Parses a name written by [`KvType::name`] (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Some(Self::F32),
            "f16" => Some(Self::F16),
            "q8_0" | "q8" => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// Bytes of one row of `kv_dim` values.
    pub fn row_bytes(self, kv_dim: usize) -> usize {
        match self {
            Self::F32 => 4 * kv_dim,
            Self::F16 => 2 * kv_dim,
            Self::Q8_0 => kv_dim / Q8_VALUES * Q8_BYTES,
        }
    }
}

/// One layer's keys or values for every block.
enum Rows {
    F32(Vec<f32>),
    F16(Vec<u16>),
    Q8(Vec<u8>),
}

impl Rows {
    /// Zeroed storage for `rows` rows; the zero pages are mapped lazily, so a large pool costs
    /// memory only as its blocks are first written.
    fn new(ty: KvType, rows: usize, kv_dim: usize) -> Self {
        match ty {
            KvType::F32 => Self::F32(vec![0.0; rows * kv_dim]),
            KvType::F16 => Self::F16(vec![0; rows * kv_dim]),
            KvType::Q8_0 => Self::Q8(vec![0; rows * ty.row_bytes(kv_dim)]),
        }
    }
}

/// A token of a batched attention call: which sequence it belongs to and its position there.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenPos {
    /// Index of the token's sequence (what the `blocks` lookup of [`KvCache::attention`] takes).
    pub seq: usize,
    /// The token's position in its sequence; it attends to positions up to this one.
    pub pos: usize,
}

/// Key and value rows for every layer, in blocks of [`BLOCK_TOKENS`] positions.
pub struct KvCache {
    ty: KvType,
    n_blocks: usize,
    kv_dim: usize,
    k: Vec<Rows>,
    v: Vec<Rows>,
}

impl KvCache {
    /// Storage for `n_blocks` blocks of `n_layers` layers with rows of `n_kv_heads × head_dim`.
    pub fn new(ty: KvType, n_layers: usize, n_kv_heads: usize, head_dim: usize, n_blocks: usize) -> Result<Self, KernelError> {
        if ty == KvType::Q8_0 && !head_dim.is_multiple_of(Q8_VALUES) {
            return Err(KernelError::KvCache(format!(
                "a q8_0 KV cache needs a head dimension that is a multiple of {Q8_VALUES}, but it is {head_dim}; use f16"
            )));
        }
        let kv_dim = n_kv_heads * head_dim;
        let rows = n_blocks * BLOCK_TOKENS;
        let layers = || (0..n_layers).map(|_| Rows::new(ty, rows, kv_dim)).collect();
        Ok(Self { ty, n_blocks, kv_dim, k: layers(), v: layers() })
    }

    /// How rows are stored.
    pub fn ty(&self) -> KvType {
        self.ty
    }

    /// Blocks in the cache.
    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Bytes of KV one position takes across all layers (keys and values).
    pub fn bytes_per_token(&self) -> usize {
        2 * self.k.len() * self.ty.row_bytes(self.kv_dim)
    }

    /// Stores rows `k` and `v` (each `t × kv_dim`) of layer `layer` at positions
    /// `pos0..pos0 + t` of the sequence whose block table is `blocks`.
    ///
    /// Panics if a block id is out of range or the table is too short: both come from the
    /// scheduler, never from input.
    pub fn write(&mut self, layer: usize, blocks: &[u32], pos0: usize, k: &[f32], v: &[f32]) {
        let kv_dim = self.kv_dim;
        for (i, (kr, vr)) in k.chunks_exact(kv_dim).zip(v.chunks_exact(kv_dim)).enumerate() {
            let row = row_index(blocks, pos0 + i);
            for (store, src) in [(&mut self.k[layer], kr), (&mut self.v[layer], vr)] {
                match store {
                    Rows::F32(d) => d[row * kv_dim..(row + 1) * kv_dim].copy_from_slice(src),
                    Rows::F16(d) => {
                        for (o, &x) in d[row * kv_dim..(row + 1) * kv_dim].iter_mut().zip(src) {
                            *o = f16::from_f32(x).to_bits();
                        }
                    }
                    Rows::Q8(d) => {
                        let rb = self.ty.row_bytes(kv_dim);
                        quantize_q8_row(src, &mut d[row * rb..(row + 1) * rb]);
                    }
                }
            }
        }
    }

    /// Causal attention of layer `layer` for a batch of tokens from several sequences.
    ///
    /// `q` holds one query row (`n_heads × head_dim`) per entry of `tokens`, and `out` gets the
    /// results in the same layout; `blocks(seq)` is sequence `seq`'s block table, whose rows up
    /// to each token's position are already written. Work is split over all threads by
    /// (token, head).
    pub fn attention<'a>(
        &self,
        layer: usize,
        shape: AttentionShape,
        tokens: &[TokenPos],
        blocks: impl Fn(usize) -> &'a [u32] + Sync,
        q: &[f32],
        out: &mut [f32],
    ) {
        let (k, v) = (&self.k[layer], &self.v[layer]);
        let (n_heads, head_dim) = (shape.n_heads, shape.head_dim);
        let q_dim = n_heads * head_dim;
        let out_ptr = SendPtr(out.as_mut_ptr());
        parallel_for(tokens.len() * n_heads, |range| {
            SCORES.with(|cell| {
                let mut scores = cell.borrow_mut();
                for item in range {
                    let (row, h) = (item / n_heads, item % n_heads);
                    let TokenPos { seq, pos } = tokens[row];
                    let qh = &q[row * q_dim + h * head_dim..][..head_dim];
                    // SAFETY: each (token, head) output slice is written by exactly one item.
                    let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(row * q_dim + h * head_dim), head_dim) };
                    let head = Head { shape, kv_dim: self.kv_dim, blocks: blocks(seq), h };
                    let last = pos;
                    match (k, v) {
                        (Rows::F32(k), Rows::F32(v)) => head.attend::<F32Rows>(k, v, qh, last, &mut scores, o),
                        (Rows::F16(k), Rows::F16(v)) => head.attend::<F16Rows>(k, v, qh, last, &mut scores, o),
                        (Rows::Q8(k), Rows::Q8(v)) => head.attend::<Q8Rows>(k, v, qh, last, &mut scores, o),
                        _ => unreachable!("keys and values share one storage type"),
                    }
                }
            })
        });
    }
}

thread_local! {
    /// Per-thread attention scores; only grows, so steady-state decoding does not allocate.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The cache row of position `pos` of a sequence with block table `blocks`.
fn row_index(blocks: &[u32], pos: usize) -> usize {
    blocks[pos / BLOCK_TOKENS] as usize * BLOCK_TOKENS + pos % BLOCK_TOKENS
}

/// One query head of one token, attending over its sequence's cached rows.
struct Head<'a> {
    shape: AttentionShape,
    kv_dim: usize,
    blocks: &'a [u32],
    h: usize,
}

impl Head<'_> {
    /// Softmax-weighted sum of the value rows visible from position `last`, into `o`.
    fn attend<R: RowKind>(&self, k: &[R::Elem], v: &[R::Elem], qh: &[f32], last: usize, scores: &mut Vec<f32>, o: &mut [f32]) {
        let AttentionShape { n_heads, n_kv_heads, head_dim, scale, window } = self.shape;
        let kvh = self.h / (n_heads / n_kv_heads);
        let first = window.map_or(0, |w| (last + 1).saturating_sub(w));
        let n = last + 1 - first;
        if scores.len() < n {
            scores.resize(n, 0.0);
        }
        let sc = &mut scores[..n];
        let row = |pos: usize| row_index(self.blocks, pos);
        for (p, s) in (first..=last).zip(sc.iter_mut()) {
            *s = R::dot(qh, R::head(k, row(p), self.kv_dim, kvh, head_dim)) * scale;
        }
        softmax(sc);
        o.fill(0.0);
        for (p, &w) in (first..=last).zip(sc.iter()) {
            R::axpy(w, R::head(v, row(p), self.kv_dim, kvh, head_dim), o);
        }
    }
}

/// A storage type's element and its two inner loops.
trait RowKind {
    type Elem;
    /// The `head_dim` values of kv head `kvh` in cache row `row`.
    fn head(store: &[Self::Elem], row: usize, kv_dim: usize, kvh: usize, head_dim: usize) -> &[Self::Elem];
    /// `q · k`.
    fn dot(q: &[f32], k: &[Self::Elem]) -> f32;
    /// `o += w · v`.
    fn axpy(w: f32, v: &[Self::Elem], o: &mut [f32]);
}

struct F32Rows;
struct F16Rows;
struct Q8Rows;

impl RowKind for F32Rows {
    type Elem = f32;
    fn head(store: &[f32], row: usize, kv_dim: usize, kvh: usize, head_dim: usize) -> &[f32] {
        &store[row * kv_dim + kvh * head_dim..][..head_dim]
    }
    fn dot(q: &[f32], k: &[f32]) -> f32 {
        dot(q, k)
    }
    fn axpy(w: f32, v: &[f32], o: &mut [f32]) {
        axpy(w, v, o)
    }
}

impl RowKind for F16Rows {
    type Elem = u16;
    fn head(store: &[u16], row: usize, kv_dim: usize, kvh: usize, head_dim: usize) -> &[u16] {
        &store[row * kv_dim + kvh * head_dim..][..head_dim]
    }
    fn dot(q: &[f32], k: &[u16]) -> f32 {
        f16_simd::dot(q, k)
    }
    fn axpy(w: f32, v: &[u16], o: &mut [f32]) {
        f16_simd::axpy(w, v, o)
    }
}

impl RowKind for Q8Rows {
    type Elem = u8;
    fn head(store: &[u8], row: usize, kv_dim: usize, kvh: usize, head_dim: usize) -> &[u8] {
        let rb = kv_dim / Q8_VALUES * Q8_BYTES;
        &store[row * rb + kvh * head_dim / Q8_VALUES * Q8_BYTES..][..head_dim / Q8_VALUES * Q8_BYTES]
    }
    fn dot(q: &[f32], k: &[u8]) -> f32 {
        q.chunks_exact(Q8_VALUES)
            .zip(k.chunks_exact(Q8_BYTES))
            .map(|(q, b)| {
                let (d, qs) = q8_block(b);
                d * q.iter().zip(qs).map(|(&x, &y)| x * y as i8 as f32).sum::<f32>()
            })
            .sum()
    }
    fn axpy(w: f32, v: &[u8], o: &mut [f32]) {
        for (o, b) in o.chunks_exact_mut(Q8_VALUES).zip(v.chunks_exact(Q8_BYTES)) {
            let (d, qs) = q8_block(b);
            let wd = w * d;
            for (o, &y) in o.iter_mut().zip(qs) {
                *o += wd * y as i8 as f32;
            }
        }
    }
}

/// A Q8_0 block's scale and quants.
fn q8_block(b: &[u8]) -> (f32, &[u8]) {
    (f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(), &b[2..Q8_BYTES])
}

/// Quantizes `src` into Q8_0 blocks as ggml does: scale = max |x| / 127, values rounded.
fn quantize_q8_row(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(Q8_VALUES).zip(dst.chunks_exact_mut(Q8_BYTES)) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        b[..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        for (q, &v) in b[2..].iter_mut().zip(x) {
            *q = ((v * inv).round() as i8) as u8;
        }
    }
}

/// f16 rows read with the CPU's conversion instructions where it has them.
mod f16_simd {
    use half::f16;

    /// `Σ q_i · k_i` with `k` in f16 bits.
    pub fn dot(q: &[f32], k: &[u16]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if has_f16c() {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
            return unsafe { x86::dot(q, k) };
        }
        q.iter().zip(k).map(|(&a, &b)| a * f16::from_bits(b).to_f32()).sum()
    }

    /// `o += w · v` with `v` in f16 bits.
    pub fn axpy(w: f32, v: &[u16], o: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_f16c() {
            // SAFETY: as in `dot`.
            return unsafe { x86::axpy(w, v, o) };
        }
        for (o, &b) in o.iter_mut().zip(v) {
            *o += w * f16::from_bits(b).to_f32();
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn has_f16c() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"))
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use std::arch::x86_64::*;

        /// Eight f16 values from `p` widened to f32.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load8(p: *const u16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn dot(q: &[f32], k: &[u16]) -> f32 {
            let n = q.len().min(k.len());
            let mut acc = _mm256_setzero_ps();
            let mut i = 0;
            while i + 8 <= n {
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i)), load8(k.as_ptr().add(i)), acc);
                i += 8;
            }
            let hi = _mm256_extractf128_ps(acc, 1);
            let s = _mm_add_ps(_mm256_castps256_ps128(acc), hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            let mut sum = _mm_cvtss_f32(s);
            for j in i..n {
                sum += q[j] * half::f16::from_bits(k[j]).to_f32();
            }
            sum
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn axpy(w: f32, v: &[u16], o: &mut [f32]) {
            let n = o.len().min(v.len());
            let wv = _mm256_set1_ps(w);
            let mut i = 0;
            while i + 8 <= n {
                let p = o.as_mut_ptr().add(i);
                _mm256_storeu_ps(p, _mm256_fmadd_ps(wv, load8(v.as_ptr().add(i)), _mm256_loadu_ps(p)));
                i += 8;
            }
            for j in i..n {
                o[j] += w * half::f16::from_bits(v[j]).to_f32();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Causal attention over contiguous rows, in f64 with nothing shared with the code under
    /// test: `q` is `t × n_heads × head_dim`, `k`/`v` hold positions `0..pos0 + t`.
    fn reference(shape: AttentionShape, q: &[f32], k: &[f32], v: &[f32], pos0: usize, t: usize) -> Vec<f32> {
        let AttentionShape { n_heads, n_kv_heads, head_dim: d, scale, window } = shape;
        let kv_dim = n_kv_heads * d;
        let mut out = vec![0.0; t * n_heads * d];
        for i in 0..t {
            for h in 0..n_heads {
                let kvh = h * n_kv_heads / n_heads;
                let last = pos0 + i;
                let first = window.map_or(0, |w| (last + 1).saturating_sub(w));
                let qh = &q[(i * n_heads + h) * d..][..d];
                let s: Vec<f64> = (first..=last)
                    .map(|p| (0..d).map(|j| qh[j] as f64 * k[p * kv_dim + kvh * d + j] as f64).sum::<f64>() * scale as f64)
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for j in 0..d {
                    let acc: f64 = (first..=last).zip(&s).map(|(p, x)| (x - m).exp() / z * v[p * kv_dim + kvh * d + j] as f64).sum();
                    out[(i * n_heads + h) * d + j] = acc as f32;
                }
            }
        }
        out
    }

    /// A cache of each type, filled through scattered block tables, gives contiguous attention's
    /// result (to f32 rounding for f32, within the type's rounding otherwise).
    #[test]
    fn paged_attention_matches_contiguous() {
        let shape = AttentionShape { n_heads: 4, n_kv_heads: 2, head_dim: 64, scale: 0.125, window: Some(37) };
        let kv_dim = 128;
        let (pos0, t) = (45, 5);
        let total = pos0 + t;
        let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.7;
        let k: Vec<f32> = (0..total * kv_dim).map(val).collect();
        let v: Vec<f32> = (0..total * kv_dim).map(|i| val(i + 13)).collect();
        let q: Vec<f32> = (0..t * 256).map(|i| val(i + 101)).collect();
        let want = reference(shape, &q, &k, &v, pos0, t);

        // Blocks out of order and not starting at zero, as a scheduler hands them out.
        let blocks = [7u32, 2, 5, 0];
        for (ty, tol) in [(KvType::F32, 1e-6), (KvType::F16, 2e-3), (KvType::Q8_0, 2e-2)] {
            let mut cache = KvCache::new(ty, 2, 2, 64, 8).unwrap();
            // Written in two calls, like a prompt followed by new tokens.
            cache.write(1, &blocks, 0, &k[..pos0 * kv_dim], &v[..pos0 * kv_dim]);
            cache.write(1, &blocks, pos0, &k[pos0 * kv_dim..], &v[pos0 * kv_dim..]);
            let mut got = vec![0.0; t * 256];
            let tokens: Vec<TokenPos> = (0..t).map(|i| TokenPos { seq: 0, pos: pos0 + i }).collect();
            cache.attention(1, shape, &tokens, |_| &blocks[..], &q, &mut got);
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err <= tol, "{}: max error {err}", ty.name());
        }
    }

    #[test]
    fn q8_0_needs_whole_blocks_per_head() {
        assert!(KvCache::new(KvType::Q8_0, 1, 2, 48, 4).is_err());
        assert_eq!(KvCache::new(KvType::Q8_0, 3, 2, 64, 4).unwrap().bytes_per_token(), 2 * 3 * 4 * 34);
        assert_eq!(KvCache::new(KvType::F16, 3, 2, 64, 4).unwrap().bytes_per_token(), 2 * 3 * 128 * 2);
    }
}
