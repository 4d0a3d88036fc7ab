//! Row-parallel packing over scoped threads (quantizing a 1.5B model is ~10^11 operations, so a
//! single thread would take minutes).

/// Calls `f(src_row, dst_row)` for every row, splitting the rows across the machine's cores.
pub(crate) fn parallel_rows(
    src: &[f32],
    cols: usize,
    dst: &mut [u8],
    row_bytes: usize,
    f: impl Fn(&[f32], &mut [u8]) + Sync,
) {
    let rows = src.len() / cols;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(rows.max(1));
    let per = rows.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        for (s_chunk, d_chunk) in src.chunks(per * cols).zip(dst.chunks_mut(per * row_bytes)) {
            let f = &f;
            s.spawn(move || {
                for (r, d) in s_chunk.chunks_exact(cols).zip(d_chunk.chunks_exact_mut(row_bytes)) {
                    f(r, d);
                }
            });
        }
    });
}
