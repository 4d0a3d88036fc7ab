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
        _ => bail!("--quantize '{name}' is not a format exo quantizes to ({})", exo_quant::QUANTIZABLE),
    }
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
