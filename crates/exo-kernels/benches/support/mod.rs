//! What the kernel benchmarks share: timing, thread setup, byte views.

// Each bench uses a subset of these.
#![allow(dead_code)]

use std::time::Instant;

/// Seconds per call of `f`: the 10th percentile of at least 5 calls over at least 0.5 s, after
/// 3 warm-up calls (steadier than the mean on a shared machine).
pub fn time(mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < 0.5 || samples.len() < 5 {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 10]
}

/// Fixes the kernel thread count from environment variable `var` (default 1) and returns it.
pub fn threads_from_env(var: &str) -> usize {
    let threads = std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    exo_kernels::threads::set_threads(threads).expect("first use of the pool")
}

/// The bytes of a slice of plain-data blocks.
pub fn as_bytes<T>(v: &[T]) -> &[u8] {
    // SAFETY: the block types are plain integers and halfs without padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}
