//! Files written under a temporary name and renamed into place when complete, so an interrupted
//! conversion never leaves a file that looks finished.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::FormatError;

/// A file being written: bytes go to `.NAME.partial` next to `path`, which becomes `path` on
/// [`AtomicFile::commit`]. Dropped without a commit, the partial file is removed.
pub(crate) struct AtomicFile {
    path: PathBuf,
    temp: PathBuf,
    out: Option<BufWriter<File>>,
    written: u64,
}

impl AtomicFile {
    /// Creates the temporary file for `path`.
    pub(crate) fn create(path: &Path) -> Result<Self, FormatError> {
        let name = path.file_name().ok_or_else(|| FormatError::invalid(path, "the output path has no file name"))?;
        let temp = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
        let file = File::create(&temp).map_err(|e| write_err(&temp, "cannot create the file", e))?;
        Ok(Self { path: path.to_path_buf(), temp, out: Some(BufWriter::with_capacity(1 << 20, file)), written: 0 })
    }

    /// The final path, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `bytes`; a failure (disk full, quota) names the file and the offset.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        let out = self.out.as_mut().expect("the writer lives until commit");
        out.write_all(bytes)
            .map_err(|e| write_err(&self.path, &format!("write failed at byte {}", self.written), e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Appends zero bytes up to the next multiple of `align`.
    pub(crate) fn pad_to(&mut self, align: u64) -> Result<(), FormatError> {
        let pad = self.written.next_multiple_of(align) - self.written;
        self.write(&vec![0u8; pad as usize])
    }

    /// Flushes, syncs and renames the file into place; returns its size in bytes.
    pub(crate) fn commit(mut self) -> Result<u64, FormatError> {
        let out = self.out.take().expect("commit is called once");
        let file = out.into_inner().map_err(|e| write_err(&self.path, "write failed", e.into_error()))?;
        file.sync_all().map_err(|e| write_err(&self.path, "cannot flush the file to disk", e))?;
        drop(file);
        std::fs::rename(&self.temp, &self.path)
            .map_err(|e| write_err(&self.path, &format!("cannot rename {} into place", self.temp.display()), e))?;
        Ok(self.written)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

fn write_err(path: &Path, what: &str, source: std::io::Error) -> FormatError {
    FormatError::Write { path: path.to_path_buf(), what: what.to_string(), source }
}
