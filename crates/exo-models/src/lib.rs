//! Model definitions and loading.
//!
//! [`load`] opens a GGUF file or a Hugging Face directory, reads the architecture's config
//! (`llama.rs`, `qwen2.rs`, `gemma3.rs`), loads the weights through [`weights::Weights`] and the
//! tokenizer, and returns a [`LoadedModel`]. All architectures run through the one forward pass
//! in [`transformer`]; quantized and float weights differ only inside each weight [`Matrix`].
//!
//! [`convert`] turns a GGUF file into a Hugging Face directory and back.
//!
//! Embedding models are the other kind: [`Embedder::load`] opens a sentence-transformers
//! directory (a [`bert`] encoder, pooling, normalisation) and [`Embedder::embed`] turns texts into
//! vectors. [`is_embedding_model`] tells the two kinds of directory apart.
//!
//! [`Matrix`]: exo_kernels::Matrix

pub mod auto;
pub mod bert;
pub mod calibration;
pub mod config;
pub mod convert;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod embed;
pub mod gemma3;
pub mod llama;
pub mod qwen2;
pub mod transformer;
pub mod weights;

use std::path::{Path, PathBuf};

pub use config::{Arch, ModelConfig};
pub use embed::{is_embedding_model, Embedder, Embedding, Pooling};
use exo_formats::{GgufFile, HfModelDir};
pub use exo_kernels::kv::{KvType, BLOCK_TOKENS};
use exo_tokenizer::Tokenizer;
pub use transformer::{KvCache, Logits, LogitsRow, Scratch, Segment, State, Transformer};
pub use weights::QuantMix;
use weights::{WeightFile, Weights};

/// Errors from loading or running a model. Messages name the file, the tensor or field, and the
/// limit involved.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be parsed.
    #[error(transparent)]
    Format(#[from] exo_formats::FormatError),
    /// A weight cannot be computed (unsupported type or bad size).
    #[error(transparent)]
    Kernel(#[from] exo_kernels::KernelError),
    /// The tokenizer could not be built.
    #[error(transparent)]
    Tokenizer(#[from] exo_tokenizer::TokenizerError),
    /// The path is neither a GGUF file nor a Hugging Face directory.
    #[error("{path}: not a model: expected a .gguf file or a directory with config.json")]
    NotAModel {
        /// The path given.
        path: PathBuf,
    },
    /// `general.architecture` / `model_type` names an architecture exo does not run.
    #[error("{file}: unknown architecture '{arch}' (supported: llama, qwen2, gemma3)")]
    UnknownArch {
        /// The file.
        file: String,
        /// The name found.
        arch: String,
    },
    /// A hyper-parameter is missing or inconsistent.
    #[error("{file}: {what}")]
    Config {
        /// The file.
        file: String,
        /// What is wrong.
        what: String,
    },
    /// The model holds something the target format of a conversion cannot express.
    #[error("{file}: cannot convert: {what}")]
    Unconvertible {
        /// The file or directory converted.
        file: String,
        /// What cannot be carried over, and why.
        what: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("{file}: missing tensor '{name}'")]
    MissingTensor {
        /// The file.
        file: String,
        /// The tensor name looked up.
        name: String,
    },
    /// A tensor's shape disagrees with the config.
    #[error("{file}: tensor '{name}' has shape {found} but the config implies {expected}")]
    Shape {
        /// The file.
        file: String,
        /// Tensor name.
        name: String,
        /// Shape the config implies (rows, cols).
        expected: String,
        /// Shape in the file (rows, cols).
        found: String,
    },
    /// The sequence would exceed the context the state was created for.
    #[error("context full: {need} tokens needed but the context size is {ctx}")]
    ContextFull {
        /// Tokens the call needs in total.
        need: usize,
        /// Capacity.
        ctx: usize,
    },
    /// A requested context size outside what the model supports.
    #[error("context size {ctx} is not supported: it must be between 1 and the model's context length {max}")]
    ContextSize {
        /// Tokens asked for.
        ctx: usize,
        /// The model's training context.
        max: usize,
    },
    /// More tokens in one call than the state's batch capacity.
    #[error("{tokens} tokens in one forward call; the batch limit is {max}")]
    Batch {
        /// Tokens passed.
        tokens: usize,
        /// Limit.
        max: usize,
    },
    /// The directory holds an embedding model, which makes vectors, not text.
    #[error("{file}: '{arch}' is an embedding model: it turns text into vectors (exo embed, /v1/embeddings) and cannot generate text")]
    NotGenerative {
        /// The config file.
        file: String,
        /// The architecture found.
        arch: String,
    },
    /// A text to embed that tokenizes to no tokens at all.
    #[error("text {index} tokenizes to zero tokens; there is nothing to embed")]
    EmptyText {
        /// Position of the text in the request.
        index: usize,
    },
    /// A CUDA operation failed (device missing, out of memory, unsupported weight type).
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Gpu(#[from] exo_kernels::cuda::GpuError),
    /// A device this build cannot use was requested.
    #[error("{0}")]
    Device(String),
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
}

/// Index of the largest value (the first one on ties, as llama.cpp's greedy sampler).
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in xs.iter().enumerate() {
        if v > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// The local model cache: `$EXO_HOME/models`, default `~/.exo/models` (where
/// `scripts/fetch-models.sh` puts models, and where names given instead of paths are looked up).
pub fn models_dir() -> PathBuf {
    let home = std::env::var_os("EXO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".exo"));
    home.join("models")
}

/// Where a model's forward pass runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The CPU kernels of exo-kernels, on all threads.
    #[default]
    Cpu,
    /// CUDA device `n` (needs a build with the `cuda` feature).
    Cuda(usize),
    /// Apple GPU `n` (needs a build with the `metal` feature): the matrix products run there,
    /// the rest of the forward pass on the CPU.
    Metal(usize),
}

impl Device {
    /// Parses `auto`, `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N`; `auto` is the first CUDA
    /// device when this build has the `cuda` feature and a device is present, else the CPU
    /// (never Metal, whose speed against the CPU path is unmeasured).
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(if cuda_devices() > 0 { Device::Cuda(0) } else { Device::Cpu }),
            "cuda" => Ok(Device::Cuda(0)),
            "metal" => Ok(Device::Metal(0)),
            _ => match (s.strip_prefix("cuda:").map(str::parse::<usize>), s.strip_prefix("metal:").map(str::parse::<usize>)) {
                (Some(Ok(n)), _) => Ok(Device::Cuda(n)),
                (_, Some(Ok(n))) => Ok(Device::Metal(n)),
                _ => Err(ModelError::Device(format!("--device '{s}': expected auto, cpu, cuda, cuda:N, metal or metal:N"))),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

/// CUDA devices this build can use: 0 without the `cuda` feature or without a driver.
pub fn cuda_devices() -> usize {
    #[cfg(feature = "cuda")]
    return exo_kernels::cuda::device_count();
    #[cfg(not(feature = "cuda"))]
    0
}

/// How to load weights.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Widen every weight to f32 (the float reference path; slower, more memory).
    pub dequantize: bool,
    /// Re-quantize every matrix to this format while loading (`exo run --quantize nf4`).
    pub quantize: Option<exo_quant::QuantFormat>,
    /// Re-quantize each matrix to the type this mix gives it while loading (`--quantize auto`,
    /// see [`auto`]); takes precedence over `quantize`.
    pub mix: Option<std::sync::Arc<QuantMix>>,
    /// Where the forward pass runs.
    pub device: Device,
    /// With a GPU device: how many layers it runs (`--gpu-layers`).
    pub gpu_layers: GpuLayers,
    /// With a GPU device and [`GpuLayers::Auto`]: the context the GPU keeps room for in its KV
    /// cache (default 4096 tokens).
    pub gpu_ctx: Option<usize>,
    /// With a GPU device: keep an f16 copy of each of its weight matrices for the products of
    /// calls of more than 16 tokens (prompts, large batches), which then skip widening the
    /// weights on every call; 2 bytes more per weight (`--gpu-f16-weights`).
    pub gpu_f16_weights: bool,
}

/// How many of a model's layers run on the GPU; the others run on the CPU before them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuLayers {
    /// As many as fit in the device's free memory with their share of the KV cache, the LM
    /// head and working buffers first (llama.cpp's `-ngl` sized to the card).
    #[default]
    Auto,
    /// This many: the last ones, as llama.cpp's `-ngl N` counts; more than the model has means
    /// all of them, 0 none (the CPU runs the whole model).
    Count(usize),
}

impl GpuLayers {
    /// Parses `auto` or a layer count.
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        match s {
            "auto" => Ok(Self::Auto),
            _ => s
                .parse()
                .map(Self::Count)
                .map_err(|_| ModelError::Device(format!("--gpu-layers '{s}': expected auto or a number of layers"))),
        }
    }
}

/// A model ready to run, with its tokenizer and a description for `exo info`.
pub struct LoadedModel {
    /// Weights and forward pass.
    pub transformer: Transformer,
    /// Text ↔ token ids and the chat template.
    pub tokenizer: Tokenizer,
    /// Where it came from and what it is.
    pub info: ModelInfo,
}

/// A description of a loaded model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// The file or directory loaded.
    pub path: PathBuf,
    /// "gguf" or "safetensors".
    pub format: &'static str,
    /// `general.name` or the directory name.
    pub name: String,
    /// Parameters (elements of all weights).
    pub n_params: u64,
    /// Bytes of weights on disk.
    pub file_bytes: u64,
}

/// Loads the model at `path` (a `.gguf` file or a Hugging Face directory).
pub fn load(path: &Path, opts: &LoadOptions) -> Result<LoadedModel, ModelError> {
    let file = if path.is_dir() {
        WeightFile::Hf(HfModelDir::open(path)?)
    } else if path.is_file() {
        WeightFile::Gguf(GgufFile::open(path)?)
    } else {
        return Err(ModelError::NotAModel { path: path.to_path_buf() });
    };
    let (config, info) = match &file {
        WeightFile::Gguf(g) => gguf_parts(g)?,
        WeightFile::Hf(h) => hf_parts(h)?,
    };
    // A 150k-entry vocabulary takes ~0.2 s to build, as long as repacking the weights of a
    // small model: do both at once, since time to first token includes the load.
    let (transformer, tokenizer) = std::thread::scope(|s| {
        let tokenizer = s.spawn(|| match &file {
            WeightFile::Gguf(g) => Tokenizer::from_gguf(g),
            WeightFile::Hf(h) => Tokenizer::from_hf_dir(h),
        });
        let weights = Weights::new(&file, config.arch, opts.dequantize).with_quantize(opts.quantize).with_mix(opts.mix.clone());
        let transformer = Transformer::load_on(config, &weights, opts);
        (transformer, tokenizer.join().expect("tokenizer construction does not panic"))
    });
    Ok(LoadedModel { transformer: transformer?, tokenizer: tokenizer?, info })
}

/// The model's hyper-parameters from GGUF metadata, for whichever architecture it names.
pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig, ModelError> {
    let source = g.path().display().to_string();
    let arch_name = g.get_str("general.architecture")?.to_string();
    let arch = Arch::from_name(&arch_name).ok_or(ModelError::UnknownArch { file: source, arch: arch_name })?;
    match arch {
        Arch::Llama => llama::config_from_gguf(g),
        Arch::Qwen2 => qwen2::config_from_gguf(g),
        Arch::Gemma3 => gemma3::config_from_gguf(g),
    }
}

/// The model's hyper-parameters from a Hugging Face `config.json`.
pub fn config_from_hf(h: &HfModelDir) -> Result<ModelConfig, ModelError> {
    let source = h.dir().join("config.json").display().to_string();
    let cfg = h.config();
    let model_type = cfg.get("model_type").and_then(|v| v.as_str()).unwrap_or("").to_string();
    if embed::is_bert_config(cfg) {
        return Err(ModelError::NotGenerative { file: source, arch: model_type });
    }
    let arch = Arch::from_name(&model_type).ok_or(ModelError::UnknownArch { file: source.clone(), arch: model_type })?;
    match arch {
        Arch::Llama => llama::config_from_hf(cfg, &source),
        Arch::Qwen2 => qwen2::config_from_hf(cfg, &source),
        Arch::Gemma3 => gemma3::config_from_hf(cfg, &source),
    }
}

fn gguf_parts(g: &GgufFile) -> Result<(ModelConfig, ModelInfo), ModelError> {
    let config = config_from_gguf(g)?;
    let n_params = g.tensors().iter().map(|t| t.dims.iter().product::<usize>() as u64).sum();
    let info = ModelInfo {
        path: g.path().to_path_buf(),
        format: "gguf",
        name: g.opt_str("general.name").unwrap_or_default().to_string(),
        n_params,
        file_bytes: g.tensors().iter().map(|t| t.n_bytes as u64).sum(),
    };
    Ok((config, info))
}

fn hf_parts(h: &HfModelDir) -> Result<(ModelConfig, ModelInfo), ModelError> {
    Ok((config_from_hf(h)?, hf_info(h)))
}

/// Path, name (the directory's), parameter count and weight bytes of a Hugging Face directory.
fn hf_info(h: &HfModelDir) -> ModelInfo {
    let names = h.tensor_names();
    let n_params = names.iter().filter_map(|n| h.tensor(n)).map(|t| t.shape.iter().product::<usize>() as u64).sum();
    let file_bytes = names.iter().filter_map(|n| h.tensor(n)).map(|t| h.tensor_bytes(t).len() as u64).sum();
    let name = h.dir().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    ModelInfo { path: h.dir().to_path_buf(), format: "safetensors", name, n_params, file_bytes }
}
