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
