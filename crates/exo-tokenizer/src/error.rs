//! The crate's error type.

use std::path::PathBuf;

/// Errors from loading a vocabulary, tokenizing, or compiling and rendering a chat template.
///
/// Every message names the file and key, or the template, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A metadata key or file field the tokenizer needs is absent.
    #[error("{}: {key} is missing", path.display())]
    Missing {
        /// The model file or directory.
        path: PathBuf,
        /// The GGUF key or JSON field.
        key: String,
    },
    /// A metadata key or file field has an unusable value.
    #[error("{}: {key}: {problem}", path.display())]
    Invalid {
        /// The model file or directory.
        path: PathBuf,
        /// The GGUF key or JSON field.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The GGUF names a tokenizer model exo does not implement.
    #[error(
        "{}: tokenizer.ggml.model is '{model}', which exo does not support \
         (supported: 'gpt2' byte-level BPE, 'llama' SentencePiece)",
        path.display()
    )]
    UnsupportedModel {
        /// The model file.
        path: PathBuf,
        /// The value of `tokenizer.ggml.model`.
        model: String,
    },
    /// A file could not be read or parsed (tokenizer.json, tokenizer_config.json, ...).
    #[error("{}: {problem}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O or parse problem.
        problem: String,
    },
    /// A model-file error reported by `exo-formats`.
    #[error(transparent)]
    Format(#[from] exo_formats::FormatError),
    /// A chat template failed to compile or render. The message starts with `template:`.
    #[error("template: {0}")]
    Template(String),
    /// Tokenizing text failed (a pre-tokenizer regex gave up, or the HF tokenizer failed).
    #[error("tokenize: {0}")]
    Encode(String),
}
