//! MODEL arguments: a path, or a name in the local model cache.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Resolves MODEL: an existing path is used as is; otherwise `NAME`, `NAME.gguf` or a
/// directory `NAME` in the cache.
pub fn resolve(model: &str) -> anyhow::Result<PathBuf> {
    let p = Path::new(model);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    let dir = exo_models::models_dir();
    for candidate in [dir.join(model), dir.join(format!("{model}.gguf"))] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().trim_end_matches(".gguf").to_string())
                .filter(|n| !n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        bail!(
            "model '{model}' is not a file or directory, and the model cache {} is empty (fetch models with scripts/fetch-models.sh)",
            dir.display()
        );
    }
    bail!("model '{model}' is not a file or directory, nor a name in {} (available: {})", dir.display(), names.join(", "))
}

/// Resolves and loads MODEL for the CPU, reporting the load time on stderr.
pub fn load(model: &str) -> anyhow::Result<exo_models::LoadedModel> {
    load_path(&resolve(model)?, &exo_models::LoadOptions::default())
}

/// The format a `--quantize NAME` flag names, if given.
pub fn quantize_format(name: Option<&str>) -> anyhow::Result<Option<exo_quant::QuantFormat>> {
    let Some(name) = name else { return Ok(None) };
    match exo_quant::QuantFormat::from_name(name) {
        Some(f) if f.can_quantize() => Ok(Some(f)),
        _ => bail!("--quantize '{name}' is not a format exo quantizes to ({}) nor auto", exo_quant::QUANTIZABLE),
    }
}

/// Where a model runs: `--device`, `--gpu-layers` and `--gpu-f16-weights` (run, serve, bench).
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArgs {
    /// Where to run: auto (a CUDA GPU when this build has the cuda feature and one is present,
    /// else the CPU), cpu, cuda, cuda:N, metal or metal:N (Apple GPUs, in a build with the
    /// metal feature: the matrix products run there). On a CUDA GPU the KV cache lives in device
    /// memory.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// With a GPU: how many of each model's layers it runs, the last ones (auto: as many as fit
    /// in its free memory next to a KV cache for the context, the CPU running the others first;
    /// 0: none).
    #[arg(long = "gpu-layers", default_value = "auto", value_parser = crate::parse_gpu_layers)]
    pub gpu_layers: exo_models::GpuLayers,
    /// With a GPU: keep an f16 copy of each weight matrix there for prompts and batches of more
    /// than 16 tokens, which then skip widening the weights on every call (faster prompts and
    /// large batches for 2 more bytes per weight of device memory).
    #[arg(long = "gpu-f16-weights")]
    pub gpu_f16_weights: bool,
}

impl DeviceArgs {
    /// The load options these flags ask for, with `auto` GPU layers leaving room for a KV cache
    /// of `gpu_ctx` tokens.
    pub fn load_options(&self, gpu_ctx: Option<usize>) -> anyhow::Result<exo_models::LoadOptions> {
        Ok(exo_models::LoadOptions {
            device: device(&self.device)?,
            gpu_layers: self.gpu_layers,
            gpu_f16_weights: self.gpu_f16_weights,
            gpu_ctx,
            ..Default::default()
        })
    }
}

/// The flags that go with `--quantize auto`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct AutoQuantArgs {
    /// With --quantize auto: the memory the weights may take, e.g. 900MiB or 1.2GB. It covers the
    /// matrices and vectors, not the KV cache (sized by --ctx-size and --kv-type, and in exo serve
    /// by --kv-memory).
    #[arg(long = "memory-budget", value_parser = crate::parse_bytes)]
    pub memory_budget: Option<u64>,
    /// With --quantize auto: the text each matrix's sensitivity is measured on (default: about
    /// 3 kB bundled with exo).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
}

/// What `--quantize` and its companion flags ask for: `None` for the weights as stored.
pub fn quantize_flags(name: Option<&str>, auto: &AutoQuantArgs) -> anyhow::Result<Option<exo_models::auto::Quantize>> {
    use exo_models::auto::{AutoQuant, Quantize};
    if name == Some("auto") {
        let Some(budget) = auto.memory_budget else {
            bail!("--quantize auto needs --memory-budget SIZE: the memory the weights may take (e.g. 900MiB), which the mix of types is fitted to")
        };
        let calibration = match &auto.calibration {
            Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading --calibration {}", p.display()))?,
            None => exo_models::calibration::DEFAULT_TEXT.to_string(),
        };
        return Ok(Some(Quantize::Auto(AutoQuant { budget, calibration })));
    }
    if auto.memory_budget.is_some() || auto.calibration.is_some() {
        bail!("--memory-budget and --calibration go with --quantize auto only");
    }
    Ok(quantize_format(name)?.map(Quantize::Format))
}

/// Loads the model at `path` with `opts` and `quantize` (see [`quantize_flags`]), reporting on
/// stderr what `--quantize auto` did and the load time.
pub fn load_quantized(path: &Path, opts: &exo_models::LoadOptions, quantize: Option<&exo_models::auto::Quantize>) -> anyhow::Result<exo_models::LoadedModel> {
    let t = std::time::Instant::now();
    let (m, report) = exo_models::auto::load_with(path, opts, quantize).with_context(|| format!("loading {}", path.display()))?;
    for line in report.iter().flat_map(exo_models::auto::AutoReport::describe) {
        eprintln!("exo: {line}");
    }
    tracing::info!("loaded {} in {:.2?} on {}", path.display(), t.elapsed(), m.transformer.device());
    Ok(m)
}

/// Loads the model at `path` with `opts` (weights widened to f32, or re-quantized).
pub fn load_path(path: &Path, opts: &exo_models::LoadOptions) -> anyhow::Result<exo_models::LoadedModel> {
    let t = std::time::Instant::now();
    let m = exo_models::load(path, opts).with_context(|| format!("loading {}", path.display()))?;
    tracing::info!("loaded {} in {:.2?} on {}", path.display(), t.elapsed(), m.transformer.device());
    Ok(m)
}

/// The `--device` flag's value as a device.
pub fn device(flag: &str) -> anyhow::Result<exo_models::Device> {
    Ok(exo_models::Device::parse(flag)?)
}

/// Loads the embedding model in directory `path` (see [`exo_models::is_embedding_model`]),
/// reporting the load time on stderr.
pub fn load_embedder(path: &Path) -> anyhow::Result<exo_models::Embedder> {
    let t = std::time::Instant::now();
    let e = exo_models::Embedder::load(path).with_context(|| format!("loading {}", path.display()))?;
    tracing::info!("loaded {} in {:.2?}", path.display(), t.elapsed());
    Ok(e)
}
