//! f32 matrix products for encoder models, on the `gemm` crate's cache-blocked kernels.
//!
//! An encoder runs every token of a batch of texts through each layer at once, so its dense
//! layers are true matrix-matrix products (thousands of rows), where a blocked GEMM is several
//! times faster than the row-by-row dot products [`crate::Matrix`] uses for f32 weights. Work is
//! split over the shared pool ([`crate::threads`]) with `gemm` itself single-threaded, so no second
//! thread pool competes with ours for the cores.

use gemm::{gemm, Parallelism};

use crate::matrix::SendPtr;
use crate::ops::softmax;
use crate::threads::{num_threads, parallel_for};

/// Rows per thread below which a product is split by output columns instead of rows: a few
/// rows (a short query) would leave most threads idle or run `gemm` on slivers.
const MIN_ROWS_PER_THREAD: usize = 16;

/// `out[i][r] += Σ_c x[i][c] · w[r][c]`: `m` rows of `x` (`m × k`) times the transpose of `w`
/// (`n × k`, PyTorch's `nn.Linear` layout), added to `out` (`m × n`).
///
/// # Panics
/// If a slice is shorter than its shape says: the callers size them from checked configs.
pub fn matmul_t_acc(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    let fits = x.len() >= m * k && w.len() >= n * k && out.len() >= m * n;
    assert!(fits, "matmul_t_acc: buffers smaller than {m}x{k} · ({n}x{k})ᵀ");
    if m == 0 || n == 0 {
        return;
    }
    let threads = num_threads();
    let by_rows = m >= MIN_ROWS_PER_THREAD * threads;
    let blocks = threads.min(if by_rows { m } else { n });
    let (x_ptr, w_ptr) = (SendPtr(x.as_ptr() as *mut f32), SendPtr(w.as_ptr() as *mut f32));
    let out_ptr = SendPtr(out.as_mut_ptr());
    parallel_for(blocks, |range| {
        for b in range {
            let ((r0, r1), (c0, c1)) = if by_rows { (split(m, blocks, b), (0, n)) } else { ((0, m), split(n, blocks, b)) };
            // SAFETY: the asserts above bound every index below; blocks write disjoint rows (or
            // columns) of `out`, and `x`/`w` are only read. Wᵀ is read through its strides.
            unsafe {
                let (x, wt) = (View(x_ptr.get().add(r0 * k), k, 1), View(w_ptr.get().add(c0 * k), 1, k));
                gemm_f32(r1 - r0, c1 - c0, k, out_ptr.get().add(r0 * n + c0), n, x, wt, true, 1.0);
            }
        }
    });
}

/// A strided matrix for [`gemm_f32`]: first element, row stride, column stride (in elements).
#[derive(Clone, Copy)]
struct View(*const f32, usize, usize);

/// `dst = scale · lhs · rhs`, or `dst += scale · lhs · rhs` with `accumulate`, for an `m × k`
/// `lhs`, a `k × n` `rhs` and an `m × n` `dst` with row stride `dst_rs`, on the calling thread.
///
/// # Safety
/// Every element the shapes and strides address must be in bounds, and `dst` must not overlap
/// the inputs or be written by another thread meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(m: usize, n: usize, k: usize, dst: *mut f32, dst_rs: usize, lhs: View, rhs: View, accumulate: bool, scale: f32) {
    let s = |v: usize| v as isize;
    // gemm computes dst = alpha · dst + beta · lhs · rhs (alpha is ignored unless read_dst).
    unsafe {
        gemm(
            m, n, k,
            dst, 1, s(dst_rs), accumulate,
            lhs.0, s(lhs.2), s(lhs.1),
            rhs.0, s(rhs.2), s(rhs.1),
            1.0, scale, false, false, false, Parallelism::None,
        )
    }
}

/// The `b`-th of `parts` near-equal ranges of `0..len`.
fn split(len: usize, parts: usize, b: usize) -> (usize, usize) {
    (len * b / parts, len * (b + 1) / parts)
}

/// Bidirectional multi-head attention over sequences packed one after another, without padding.
///
/// `qkv` has one row of `3 * n_heads * head_dim` values per token: its queries, keys and values,
/// each head's `head_dim` values contiguous. `seq_lens` are the lengths of the packed sequences;
/// every token attends to all tokens of its own sequence and none of the others, which is what a
/// padded batch with an attention mask computes. `out` gets `n_heads * head_dim` values per token.
/// Scores are scaled by `scale` before the softmax.
///
/// # Panics
/// If `qkv` or `out` is shorter than the sequences need.
pub fn packed_attention(qkv: &[f32], seq_lens: &[usize], n_heads: usize, head_dim: usize, scale: f32, out: &mut [f32]) {
    thread_local! {
        static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let hidden = n_heads * head_dim;
    let total: usize = seq_lens.iter().sum();
    let fits = qkv.len() >= total * 3 * hidden && out.len() >= total * hidden;
    assert!(fits, "packed_attention: buffers smaller than {total} tokens");
    let starts: Vec<usize> = seq_lens.iter().scan(0, |s, &l| Some(std::mem::replace(s, *s + l))).collect();
    let (qkv_ptr, out_ptr) = (SendPtr(qkv.as_ptr() as *mut f32), SendPtr(out.as_mut_ptr()));
    let row = 3 * hidden;
    // Work items are (sequence, head) pairs.
    parallel_for(seq_lens.len() * n_heads, |range| SCORES.with(|cell| {
        let mut scores = cell.borrow_mut();
        for item in range {
            let (s, h) = (item / n_heads, item % n_heads);
            let (len, start) = (seq_lens[s], starts[s]);
            if len == 0 {
                continue;
            }
            if scores.len() < len * len {
                scores.resize(len * len, 0.0);
            }
            let sc = &mut scores[..len * len];
            // SAFETY: the assert above bounds the rows of every sequence; each (sequence, head)
            // writes only its own head's columns of its own rows of `out`.
            unsafe {
                let q = qkv_ptr.get().add(start * row + h * head_dim) as *const f32;
                let (k, v) = (q.add(hidden), q.add(2 * hidden));
                // scores = scale · Q Kᵀ (len × len); Kᵀ is read through strides.
                gemm_f32(len, len, head_dim, sc.as_mut_ptr(), len, View(q, row, 1), View(k, 1, row), false, scale);
                for r in sc.chunks_exact_mut(len) {
                    softmax(r);
                }
                // out = softmax(scores) V (len × head_dim), into this head's columns.
                let o = out_ptr.get().add(start * hidden + h * head_dim);
                gemm_f32(len, head_dim, len, o, hidden, View(sc.as_ptr(), len, 1), View(v, row, 1), false, 1.0);
            }
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32).map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2000) as f32 / 1000.0 - 1.0).collect()
    }

    #[test]
    fn matmul_matches_the_definition_for_row_and_column_splits() {
        // 3 rows split by columns, 200 rows split by rows (with any thread count up to 12).
        for m in [3, 200] {
            let (k, n) = (37, 29);
            let (x, w) = (values(m * k, 1), values(n * k, 2));
            let mut out = values(m * n, 3);
            let mut want = out.clone();
            for i in 0..m {
                for r in 0..n {
                    want[i * n + r] += (0..k).map(|c| x[i * k + c] as f64 * w[r * k + c] as f64).sum::<f64>() as f32;
                }
            }
            matmul_t_acc(&x, m, k, &w, n, &mut out);
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "m={m}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn packed_attention_keeps_sequences_apart() {
        let (heads, hd) = (2, 4);
        let hidden = heads * hd;
        let lens = [3, 1, 5];
        let total: usize = lens.iter().sum();
        let qkv = values(total * 3 * hidden, 7);
        let mut out = vec![0f32; total * hidden];
        packed_attention(&qkv, &lens, heads, hd, 0.5, &mut out);
        // Reference: softmax(scale · q·k) over the token's own sequence, weights times v.
        let mut start = 0;
        for &len in &lens {
            for i in start..start + len {
                for h in 0..heads {
                    let at = |t: usize, part: usize| &qkv[t * 3 * hidden + part * hidden + h * hd..][..hd];
                    let logits: Vec<f64> = (start..start + len)
                        .map(|j| 0.5 * at(i, 0).iter().zip(at(j, 1)).map(|(a, b)| (a * b) as f64).sum::<f64>())
                        .collect();
                    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
                    for d in 0..hd {
                        let want: f64 = (start..start + len).zip(&logits).map(|(j, l)| (l - max).exp() / z * at(j, 2)[d] as f64).sum();
                        let got = out[i * hidden + h * hd + d];
                        assert!((got as f64 - want).abs() < 1e-5, "token {i} head {h} dim {d}: {got} vs {want}");
                    }
                }
            }
            start += len;
        }
    }
}
