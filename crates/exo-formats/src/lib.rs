//! Model file readers and writers: bytes in, typed metadata and tensor views out. No math.
//!
//! - [`GgufFile`]: a GGUF v2/v3 file read through `mmap`: metadata key/values, tensor infos and
//!   zero-copy views of tensor data.
//! - [`HfModelDir`]: a Hugging Face model directory: `config.json`, `model.safetensors` or a
//!   sharded index, read lazily through `mmap`; PyTorch `pytorch_model.bin` checkpoints are read
//!   the same way by a restricted unpickler that executes nothing.
//! - [`GgufWriter`] and [`SafetensorsWriter`]: the same formats written, each file under a
//!   temporary name renamed into place once complete.
//!
//! Every size read from a file is checked against the file's length before anything is allocated
//! or sliced, so a corrupt or hostile file gives a [`FormatError`] naming the file and the field,
//! never a panic or an allocation the file could not justify.

mod atomic;
mod bytes;
mod ggml_type;
mod gguf;
mod gguf_writer;
mod hf;
mod pytorch;
mod safetensors_writer;

pub use bytes::TensorBytes;
pub use ggml_type::GgmlType;
pub use gguf::{GgufFile, MetaValue, TensorInfo};
pub use gguf_writer::{GgufWriter, SourceError, TensorSource};
pub use hf::{FloatType, HfModelDir, SafeTensorInfo};
pub use safetensors_writer::{write_json, SafetensorsWriter, DEFAULT_MAX_SHARD_BYTES};

use std::path::PathBuf;

/// Errors from reading or writing model files. Each names the file and the field or limit at fault.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file could not be opened or mapped.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file's structure is invalid.
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field and the limit.
        what: String,
    },
    /// Writing the file failed (disk full, permission denied...).
    #[error("{path}: {what}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The step that failed.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The producer of a tensor being written failed.
    #[error("{path}: tensor '{tensor}': {source}")]
    Source {
        /// The file being written.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What the producer reported.
        source: SourceError,
    },
    /// A metadata key the caller needs is absent.
    #[error("{path}: missing metadata key '{key}'")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A metadata key has a different type than needed.
    #[error("{path}: metadata key '{key}' is {found}, expected {expected}")]
    KeyType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The type found.
        found: &'static str,
        /// The type needed.
        expected: &'static str,
    },
}

impl FormatError {
    pub(crate) fn invalid(path: &std::path::Path, what: impl Into<String>) -> Self {
        FormatError::Invalid { path: path.to_path_buf(), what: what.into() }
    }
}
