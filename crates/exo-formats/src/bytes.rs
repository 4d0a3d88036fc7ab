//! Shared, zero-copy views of mapped files.

use std::ops::Range;
use std::sync::Arc;

use memmap2::Mmap;

/// A byte range of a memory-mapped file, cheap to clone; the mapping lives as long as any view.
#[derive(Clone)]
pub struct TensorBytes {
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl TensorBytes {
    /// A view of `range` in `map`; the caller has checked the range lies inside the map.
    pub(crate) fn new(map: Arc<Mmap>, range: Range<usize>) -> Self {
        debug_assert!(range.end <= map.len());
        Self { map, range }
    }

    /// Drops the view's pages from this process's memory, for tensors copied into another
    /// layout at load: the model then costs the copy alone, not the copy plus the file's pages.
    /// The bytes stay readable (a later read faults them in from the file again).
    pub fn release(&self) {
        // Whole 64 KiB units inside the view only: that is a multiple of every common page size,
        // and the neighbouring tensors' pages must stay.
        const UNIT: usize = 64 << 10;
        let start = self.range.start.next_multiple_of(UNIT);
        let end = self.range.end / UNIT * UNIT;
        if end > start {
            #[cfg(unix)]
            // SAFETY: the map is a read-only file mapping, so dropping its pages loses nothing:
            // the kernel reads them from the file again on the next access.
            let _ = unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
        }
    }
}

impl std::ops::Deref for TensorBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

impl std::fmt::Debug for TensorBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TensorBytes({:?})", self.range)
    }
}

/// Maps `path` read-only.
pub(crate) fn map_file(path: &std::path::Path) -> Result<Arc<Mmap>, crate::FormatError> {
    let io = |source| crate::FormatError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only; exo never writes model files while they are loaded. A file
    // truncated underneath by another process is outside what any mmap-based loader can guard.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    Ok(Arc::new(map))
}
