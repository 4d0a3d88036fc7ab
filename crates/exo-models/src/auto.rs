//! `--quantize auto --memory-budget SIZE`: a model quantized in memory with the mix of types that
//! `exo quantize --max-size` would write ([`crate::convert::quantize_adaptive`]'s analysis), so
//! that its weights fit the budget.
//!
//! The budget covers the weights only: every matrix in its chosen type plus the vectors in f32,
//! as [`crate::Transformer::weight_bytes`] and the vectors count them. The KV cache is sized
//! apart (`--ctx-size` and `--kv-type` for `exo run`, `--kv-memory` for `exo serve`).
//!
//! The analysis takes minutes on a 1.5 B model, so its result (each matrix's type and the column
//! importance it is packed with) is cached next to the model as
//! `MODEL.exo-plan-KEY.json`, KEY a hash of the model file's size and modification time, the
//! budget, the calibration text and [`PLAN_VERSION`]; a later load with the same inputs reads it
//! and only packs the matrices. A cache that cannot be read, does not parse or does not fit the
//! model is reported and measured again; one that cannot be written is reported, and the load
//! goes on. Writing a plan deletes the model's plans that no load can use again: those made for
//! an earlier version of the model file or by another exo version (plans for other budgets or
//! calibration texts stay).

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use exo_formats::{GgmlType, GgufFile};
use exo_quant::QuantFormat;
use serde::{Deserialize, Serialize};

use crate::convert::{is_matrix, plan_mix, tied, vector_bytes};
use crate::{LoadOptions, LoadedModel, ModelError, QuantMix};

/// Version of the analysis and of the cache file's layout: changing either changes the cache
/// key, so plans made by an older exo are measured again rather than misread.
pub const PLAN_VERSION: u32 = 1;

/// What `--quantize auto` fits the model to.
#[derive(Clone, Debug)]
pub struct AutoQuant {
    /// Bytes the weights may take in memory (matrices and vectors).
    pub budget: u64,
    /// Text the sensitivity is measured on ([`crate::calibration::DEFAULT_TEXT`] unless the user
    /// gives a file).
    pub calibration: String,
}

/// What a `--quantize` flag asks of a load.
#[derive(Clone, Debug)]
pub enum Quantize {
    /// Every matrix in this format.
    Format(QuantFormat),
    /// A mix fitted to a memory budget.
    Auto(AutoQuant),
}

/// [`crate::load`] with the matrices quantized as `quantize` says (as stored without it), with
/// [`load`]'s report for [`Quantize::Auto`].
pub fn load_with(path: &Path, opts: &LoadOptions, quantize: Option<&Quantize>) -> Result<(LoadedModel, Option<AutoReport>), ModelError> {
    match quantize {
        None => crate::load(path, opts).map(|m| (m, None)),
        Some(Quantize::Format(f)) => crate::load(path, &LoadOptions { quantize: Some(*f), ..opts.clone() }).map(|m| (m, None)),
        Some(Quantize::Auto(auto)) => load(path, opts, auto).map(|(m, r)| (m, Some(r))),
    }
}

/// How the mix was obtained, for the user.
#[derive(Clone, Debug, PartialEq)]
pub enum PlanSource {
    /// Read from this cache file.
    Cached(PathBuf),
    /// Measured in this many seconds, and saved to this cache file (or not, with the reason).
    Measured {
        /// Seconds the analysis took.
        seconds: f64,
        /// The cache file written, or why none could be.
        saved: Result<PathBuf, String>,
    },
}

/// What [`load`] did besides loading.
#[derive(Clone, Debug)]
pub struct AutoReport {
    /// Where the mix came from.
    pub source: PlanSource,
    /// A cache file that was found but not used, and why (it is measured again and replaced).
    pub rejected_cache: Option<String>,
    /// The budget the mix was chosen for.
    pub budget: u64,
    /// Bytes of the weights in the chosen types (matrices and vectors), at most the budget.
    pub weight_bytes: u64,
    /// The predicted KL divergence of the output from the file's own weights.
    pub predicted_kl: f64,
    /// How many matrices each type was chosen for, by type name.
    pub type_counts: Vec<(&'static str, usize)>,
}

impl AutoReport {
    /// One line per thing the user should know: where the mix came from, any cache trouble, and
    /// the mix itself.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(why) = &self.rejected_cache {
            lines.push(format!("ignored the cached quantization plan {why}; measured it again"));
        }
        match &self.source {
            PlanSource::Cached(p) => lines.push(format!("used the cached quantization plan {}", p.display())),
            PlanSource::Measured { seconds, saved: Ok(p) } => {
                lines.push(format!("measured the quantization plan in {seconds:.1} s; saved it to {} for the next load", p.display()))
            }
            PlanSource::Measured { seconds, saved: Err(e) } => {
                lines.push(format!("measured the quantization plan in {seconds:.1} s but could not cache it: {e}; the next load measures again"))
            }
        }
        let types: Vec<String> = self.type_counts.iter().map(|(t, n)| format!("{n} {t}")).collect();
        lines.push(format!(
            "weights: {} bytes of the {}-byte budget, matrices in {} (predicted KL divergence {:.5})",
            self.weight_bytes,
            self.budget,
            types.join(", "),
            self.predicted_kl
        ));
        lines
    }
}

/// The cache file's contents.
#[derive(Serialize, Deserialize)]
struct CachedPlan {
    version: u32,
    model_bytes: u64,
    model_mtime_ns: u64,
    budget: u64,
    calibration_hash: String,
    predicted_kl: f64,
    matrices: Vec<CachedMatrix>,
}

#[derive(Serialize, Deserialize)]
struct CachedMatrix {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    importance: Option<Vec<f32>>,
}

/// Loads the GGUF model at `path` with `opts`, its matrices re-quantized to the mix with the least
/// predicted KL divergence whose weights fit `auto.budget`, reading the mix from the cache next
/// to the model when it was measured before with the same inputs.
pub fn load(path: &Path, opts: &LoadOptions, auto: &AutoQuant) -> Result<(LoadedModel, AutoReport), ModelError> {
    if !path.is_file() {
        return Err(ModelError::Unconvertible {
            file: path.display().to_string(),
            what: "--quantize auto plans GGUF files; convert a Hugging Face directory first (exo convert DIR MODEL.gguf)".into(),
        });
    }
    let g = GgufFile::open(path)?;
    let identity = identity(path, auto)?;
    let cache = cache_path(path, &identity);
    let (mut rejected_cache, mut cached) = (None, None);
    let started = std::time::Instant::now();
    if cache.exists() {
        match read_cache(&cache, &identity, &g) {
            Ok(c) => cached = Some(c),
            Err(why) => rejected_cache = Some(format!("{}: {why}", cache.display())),
        }
    }
    let (mix, predicted_kl, source) = match cached {
        Some((mix, kl)) => (mix, kl, PlanSource::Cached(cache)),
        None => {
            let (stats, plan) = plan_mix(&g, auto.budget, 0, &auto.calibration, &path.display().to_string())?;
            let tied = tied(&g);
            let mut mix = QuantMix::default();
            for (name, c) in &plan.choices {
                let QuantFormat::Ggml(ty) = c.format else { unreachable!("candidates are ggml types") };
                mix.set(name.clone(), ty, stats.importance(name, tied));
            }
            let saved = write_cache(&cache, &identity, &mix, plan.error()).map(|()| {
                remove_stale_plans(path, &identity);
                cache
            });
            (mix, plan.error(), PlanSource::Measured { seconds: started.elapsed().as_secs_f64(), saved })
        }
    };
    let weight_bytes = vector_bytes(&g) + mix_bytes(&g, &mix);
    let mut counts = std::collections::BTreeMap::new();
    for (_, ty, _) in mix.iter() {
        *counts.entry(ty.name()).or_insert(0) += 1;
    }
    let model = crate::load(path, &LoadOptions { mix: Some(Arc::new(mix)), ..opts.clone() })?;
    let report = AutoReport { source, rejected_cache, budget: auto.budget, weight_bytes, predicted_kl, type_counts: counts.into_iter().collect() };
    Ok((model, report))
}

/// The inputs a cached plan depends on.
#[derive(Clone)]
struct Identity {
    model_bytes: u64,
    model_mtime_ns: u64,
    budget: u64,
    calibration_hash: String,
}

/// FNV-1a, a hash whose value is fixed by its definition, so names stay valid across builds.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(bytes);
    h.finish()
}

/// The file a plan for the model at `path` with `auto`'s budget and text is cached in.
pub fn cache_file(path: &Path, auto: &AutoQuant) -> Result<PathBuf, ModelError> {
    Ok(cache_path(path, &identity(path, auto)?))
}

fn identity(path: &Path, auto: &AutoQuant) -> Result<Identity, ModelError> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, &e))?;
    Ok(Identity {
        model_bytes: meta.len(),
        model_mtime_ns: meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as u64),
        budget: auto.budget,
        calibration_hash: format!("{:016x}", fnv(auto.calibration.as_bytes())),
    })
}

/// `MODEL.exo-plan-KEY.json` next to the model.
fn cache_path(model: &Path, id: &Identity) -> PathBuf {
    let key = [u64::from(PLAN_VERSION), id.model_bytes, id.model_mtime_ns, id.budget]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .chain(id.calibration_hash.bytes())
        .collect::<Vec<u8>>();
    let name = model.file_name().map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    model.with_file_name(format!("{name}.exo-plan-{:016x}.json", fnv(&key)))
}

/// Bytes of the matrices of `g` in the types of `mix` (the file's own type where it names none).
fn mix_bytes(g: &GgufFile, mix: &QuantMix) -> u64 {
    g.tensors()
        .iter()
        .filter(|t| is_matrix(t))
        .map(|t| {
            let ty = mix.get(&t.name).map_or(t.ggml_type, |(ty, _)| ty);
            (ty.row_bytes(t.dims[0]).unwrap_or(0) * (t.n_elements() / t.dims[0].max(1))) as u64
        })
        .sum()
}

/// The mix in `path` and its predicted KL, if it was made for this model, budget and text and
/// names a type that fits every matrix of `g` within the budget; otherwise why not.
fn read_cache(path: &Path, id: &Identity, g: &GgufFile) -> Result<(QuantMix, f64), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot be read ({e})"))?;
    let c: CachedPlan = serde_json::from_str(&text).map_err(|e| format!("is not a plan exo wrote ({e})"))?;
    if c.version != PLAN_VERSION
        || c.model_bytes != id.model_bytes
        || c.model_mtime_ns != id.model_mtime_ns
        || c.budget != id.budget
        || c.calibration_hash != id.calibration_hash
    {
        return Err("was made for another model file, budget, calibration text or exo version".into());
    }
    let mut mix = QuantMix::default();
    for m in c.matrices {
        let info = g.tensor(&m.name).filter(|t| is_matrix(t)).ok_or_else(|| format!("names '{}', which is not a matrix of the model", m.name))?;
        let cols = info.dims[0];
        let ty = GgmlType::from_name(&m.ty)
            .filter(|&t| QuantFormat::Ggml(t).can_quantize() && t.row_bytes(cols).is_some())
            .ok_or_else(|| format!("gives '{}' the type '{}', which exo cannot pack rows of {cols} values in", m.name, m.ty))?;
        if m.importance.as_ref().is_some_and(|w| w.len() != cols) {
            return Err(format!("gives '{}' an importance of the wrong length (the matrix has {cols} columns)", m.name));
        }
        mix.set(m.name, ty, m.importance);
    }
    let bytes = vector_bytes(g) + mix_bytes(g, &mix);
    if bytes > id.budget {
        return Err(format!("takes {bytes} bytes, more than the budget of {}", id.budget));
    }
    Ok((mix, c.predicted_kl))
}

/// Writes the plan to `path` (through a temporary file, so a reader never sees half of one).
fn write_cache(path: &Path, id: &Identity, mix: &QuantMix, predicted_kl: f64) -> Result<(), String> {
    let mut matrices: Vec<CachedMatrix> =
        mix.iter().map(|(n, t, w)| CachedMatrix { name: n.to_string(), ty: t.name().to_string(), importance: w.map(<[f32]>::to_vec) }).collect();
    matrices.sort_by(|a, b| a.name.cmp(&b.name));
    let plan = CachedPlan {
        version: PLAN_VERSION,
        model_bytes: id.model_bytes,
        model_mtime_ns: id.model_mtime_ns,
        budget: id.budget,
        calibration_hash: id.calibration_hash.clone(),
        predicted_kl,
        matrices,
    };
    let text = serde_json::to_string(&plan).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {} ({e})", path.display())
    })
}

/// Deletes the plans next to `model` (`MODEL.exo-plan-*.json`) made for another version of the
/// file or by another exo version than `id`'s: no load can use them again. Plans that cannot be
/// read are left alone (they may be another process's, half-way through its rename).
fn remove_stale_plans(model: &Path, id: &Identity) {
    /// The fields that tie a plan to a file and an exo version.
    #[derive(Deserialize)]
    struct Header {
        version: u32,
        model_bytes: u64,
        model_mtime_ns: u64,
    }
    let (Some(dir), Some(name)) = (model.parent(), model.file_name()) else { return };
    let prefix = format!("{}.exo-plan-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) else { return };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        if !file.starts_with(&prefix) || !file.ends_with(".json") {
            continue;
        }
        let Some(h) = std::fs::read_to_string(e.path()).ok().and_then(|t| serde_json::from_str::<Header>(&t).ok()) else { continue };
        if h.version != PLAN_VERSION || h.model_bytes != id.model_bytes || h.model_mtime_ns != id.model_mtime_ns {
            if let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!("cannot delete the stale quantization plan {} ({err})", e.path().display());
            }
        }
    }
}

fn io_err(path: &Path, e: &std::io::Error) -> ModelError {
    ModelError::Config { file: path.display().to_string(), what: format!("cannot read the file's size and time: {e}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> (PathBuf, GgufFile) {
        let p = crate::models_dir().join("smollm2-135m-instruct.gguf");
        assert!(p.is_file(), "{} is missing: run scripts/fetch-models.sh all", p.display());
        let g = GgufFile::open(&p).unwrap();
        (p, g)
    }

    /// A mix of every matrix in Q8_0, as a cache file would hold it.
    fn q8_mix(g: &GgufFile) -> QuantMix {
        let mut mix = QuantMix::default();
        for t in g.tensors().iter().filter(|t| is_matrix(t)) {
            mix.set(t.name.clone(), GgmlType::Q8_0, Some(vec![1.0; t.dims[0]]));
        }
        mix
    }

    #[test]
    fn a_written_plan_reads_back_and_a_stale_or_wrong_one_is_refused_with_the_reason() {
        let (p, g) = smollm2();
        let auto = AutoQuant { budget: 200_000_000, calibration: "text".into() };
        let id = identity(&p, &auto).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("plan.json");
        let mix = q8_mix(&g);
        write_cache(&cache, &id, &mix, 0.25).unwrap();
        assert_eq!(read_cache(&cache, &id, &g).unwrap(), (mix.clone(), 0.25));

        let other_text = identity(&p, &AutoQuant { calibration: "other text".into(), ..auto.clone() }).unwrap();
        assert!(read_cache(&cache, &other_text, &g).unwrap_err().contains("another model file, budget, calibration text"));
        assert_ne!(cache_path(&p, &id), cache_path(&p, &other_text));
        let small = identity(&p, &AutoQuant { budget: 100_000_000, ..auto.clone() }).unwrap();
        write_cache(&cache, &small, &mix, 0.25).unwrap();
        let e = read_cache(&cache, &small, &g).unwrap_err();
        assert!(e.contains("more than the budget of 100000000"), "{e}");

        let mut wrong = mix.clone();
        wrong.set("blk.0.attn_q.weight".into(), GgmlType::Q4K, None);
        write_cache(&cache, &id, &wrong, 0.25).unwrap();
        let e = read_cache(&cache, &id, &g).unwrap_err();
        assert!(e.contains("'blk.0.attn_q.weight'") && e.contains("q4_K") && e.contains("576 values"), "{e}");
        let mut unknown = mix.clone();
        unknown.set("blk.99.attn_q.weight".into(), GgmlType::Q8_0, None);
        write_cache(&cache, &id, &unknown, 0.25).unwrap();
        assert!(read_cache(&cache, &id, &g).unwrap_err().contains("names 'blk.99.attn_q.weight', which is not a matrix"));
        let mut short = mix;
        short.set("blk.0.attn_q.weight".into(), GgmlType::Q8_0, Some(vec![1.0; 3]));
        write_cache(&cache, &id, &short, 0.25).unwrap();
        assert!(read_cache(&cache, &id, &g).unwrap_err().contains("importance of the wrong length"));
    }

    #[test]
    fn stale_plans_are_deleted_and_plans_for_other_budgets_kept() {
        let (p, g) = smollm2();
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::copy(&p, &model).unwrap();
        let auto = AutoQuant { budget: 200_000_000, calibration: "text".into() };
        let id = identity(&model, &auto).unwrap();
        let other_budget = identity(&model, &AutoQuant { budget: 150_000_000, ..auto.clone() }).unwrap();
        let old_file = Identity { model_mtime_ns: id.model_mtime_ns - 1, ..other_budget.clone() };
        let old_exo = dir.path().join("m.gguf.exo-plan-0000000000000001.json");
        let mix = q8_mix(&g);
        for (i, path) in [(&id, cache_path(&model, &id)), (&other_budget, cache_path(&model, &other_budget)), (&old_file, cache_path(&model, &old_file))] {
            write_cache(&path, i, &mix, 0.1).unwrap();
        }
        write_cache(&old_exo, &id, &mix, 0.1).unwrap();
        let text = std::fs::read_to_string(&old_exo).unwrap().replacen(&format!("\"version\":{PLAN_VERSION}"), "\"version\":0", 1);
        std::fs::write(&old_exo, text).unwrap();
        let unrelated = dir.path().join("other.gguf.exo-plan-0000000000000002.json");
        std::fs::write(&unrelated, "{}").unwrap();

        remove_stale_plans(&model, &id);
        assert!(cache_path(&model, &id).is_file() && cache_path(&model, &other_budget).is_file());
        assert!(!cache_path(&model, &old_file).exists(), "a plan for an earlier version of the file stayed");
        assert!(!old_exo.exists(), "a plan of another exo version stayed");
        assert!(unrelated.is_file(), "another model's file was touched");
    }

    #[test]
    fn an_unwritable_cache_is_an_error_message_not_a_failure() {
        let (p, g) = smollm2();
        let id = identity(&p, &AutoQuant { budget: 200_000_000, calibration: String::new() }).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Permissions do not stop root, which the CI runs as; a directory where the file's
        // temporary copy goes stops anyone.
        let cache = dir.path().join("plan.json");
        std::fs::create_dir(cache.with_extension("json.tmp")).unwrap();
        let e = write_cache(&cache, &id, &q8_mix(&g), 0.0).unwrap_err();
        assert!(e.contains("cannot write") && e.contains("plan.json"), "{e}");
        assert!(!cache.exists());
        let missing = dir.path().join("no such dir").join("plan.json");
        assert!(write_cache(&missing, &id, &q8_mix(&g), 0.0).unwrap_err().contains("no such dir"));
    }
}
