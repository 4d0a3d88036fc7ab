//! Thread count for every parallel kernel.
//!
//! All parallel work runs on candle's persistent barrier pool (workers spin briefly between
//! operations instead of sleeping, as ggml's threadpool does), so that candle's own quantized
//! kernels and ours share one set of threads. The pool reads its size once, from
//! `CANDLE_NUM_THREADS`, the first time it is used.

use std::sync::atomic::{AtomicUsize, Ordering};

static CONFIGURED: AtomicUsize = AtomicUsize::new(0);

/// Most threads accepted: far above any CPU exo runs on, low enough that spawning the pool
/// cannot exhaust the process's thread limit (a typo'd `--threads 100000` aborted it).
pub const MAX_THREADS: usize = 1024;

/// Sets the number of threads (the calling thread included) used by every kernel.
///
/// Must be called before the first kernel runs; later calls with a different count are refused
/// because the pool cannot be resized. `0` means "all physical cores".
pub fn set_threads(n: usize) -> Result<usize, String> {
    if n > MAX_THREADS {
        return Err(format!("{n} threads requested; at most {MAX_THREADS} are supported"));
    }
    let want = if n == 0 { default_threads() } else { n };
    match CONFIGURED.compare_exchange(0, want, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => {
            // The pool is created lazily from this variable; nothing has read it yet because
            // CONFIGURED was still 0 and every kernel entry point goes through `pool()`.
            std::env::set_var("CANDLE_NUM_THREADS", want.to_string());
            Ok(want)
        }
        Err(existing) if existing == want => Ok(want),
        Err(existing) => Err(format!(
            "thread count already fixed at {existing}; cannot change it to {want}"
        )),
    }
}

/// The number of threads kernels run on.
pub fn num_threads() -> usize {
    match CONFIGURED.load(Ordering::SeqCst) {
        0 => {
            let _ = set_threads(0);
            CONFIGURED.load(Ordering::SeqCst)
        }
        n => n,
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The shared pool; fixes the thread count on first use.
pub(crate) fn pool() -> &'static candle_core::utils::BarrierPool {
    num_threads();
    candle_core::utils::barrier_pool()
}

/// Runs `f` over `0..n_items` split into ranges across all threads, returning when all are done.
pub fn parallel_for<F: Fn(std::ops::Range<usize>) + Sync>(n_items: usize, f: F) {
    if n_items == 0 {
        return;
    }
    if num_threads() == 1 || n_items == 1 {
        f(0..n_items);
        return;
    }
    pool().execute_chunked(n_items, f);
}

/// Applies `f` to every `row_len`-long row of `data`, rows spread over all threads (row-wise
/// norms and activations over a whole batch of tokens).
pub fn for_each_row_mut<F: Fn(&mut [f32]) + Sync>(data: &mut [f32], row_len: usize, f: F) {
    if row_len == 0 {
        return;
    }
    let rows = data.len() / row_len;
    let ptr = crate::matrix::SendPtr(data.as_mut_ptr());
    parallel_for(rows, |range| {
        // SAFETY: `range` lies within `0..rows`, and each row is handed to exactly one thread.
        let chunk = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(range.start * row_len), range.len() * row_len) };
        chunk.chunks_exact_mut(row_len).for_each(&f);
    });
}
