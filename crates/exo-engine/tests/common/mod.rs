//! Shared by the engine's tests: the real models and vocabularies, JSON Schema validation by
//! the `jsonschema` crate, and the chi-square test of sampled tokens against the target's own
//! distribution.
#![allow(dead_code)]

use std::collections::HashMap;
use std::hash::Hash;
use std::path::PathBuf;
use std::sync::Arc;

use exo_engine::constrain::{Constraint, JsonGrammar, TokenTrie};
use exo_models::{load, LoadOptions, LoadedModel};
use exo_tokenizer::Tokenizer;
use serde_json::Value;

/// Path of a model in the cache.
pub fn model_path(name: &str) -> PathBuf {
    let p = exo_models::models_dir().join(format!("{name}.gguf"));
    assert!(p.is_file(), "{} is missing: run scripts/fetch-models.sh all", p.display());
    p
}

/// A model with its weights.
pub fn model(name: &str) -> LoadedModel {
    load(&model_path(name), &LoadOptions::default()).unwrap()
}

/// Only the tokenizer of a model.
pub fn tokenizer(name: &str) -> Tokenizer {
    let g = exo_formats::GgufFile::open(&model_path(name)).unwrap();
    Tokenizer::from_gguf(&g).unwrap()
}

/// A constraint for `schema` (json_object mode when `None`) over `trie`.
pub fn constraint(schema: Option<&Value>, trie: &Arc<TokenTrie>) -> Arc<Constraint> {
    let grammar = match schema {
        Some(s) => JsonGrammar::from_schema(s).unwrap_or_else(|e| panic!("{e}")),
        None => JsonGrammar::any_object(),
    };
    Arc::new(Constraint::new(grammar, Arc::clone(trie)))
}

/// Parses `text` and validates it against `schema` with the `jsonschema` crate (draft 2020-12);
/// the message names the text and every violation.
pub fn check_valid(schema: &Value, text: &str) -> Value {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    let validator = jsonschema::draft202012::new(schema).unwrap_or_else(|e| panic!("jsonschema refused {schema}: {e}"));
    let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{text:?} does not satisfy {schema}: {errors:?}");
    v
}

/// The exact joint distribution of the first `n` tokens sampled after `prompt` under `cfg`,
/// from plain forward passes: `p(t1) p(t2 | t1) ...`, each the sampler chain's distribution.
pub fn token_distribution(model: &LoadedModel, prompt: &[u32], cfg: &exo_engine::SamplerConfig, n: usize) -> HashMap<Vec<u32>, f64> {
    let mut sampler = exo_engine::Sampler::new(cfg.clone());
    let mut state = model.transformer.new_state(prompt.len() + n, prompt.len() + n).unwrap();
    let mut joint = HashMap::new();
    let mut pending = vec![(Vec::new(), 1.0)];
    while let Some((tokens, p)) = pending.pop() {
        if tokens.len() == n {
            joint.insert(tokens, p);
            continue;
        }
        let history: Vec<u32> = prompt.iter().chain(&tokens).copied().collect();
        state.truncate(0);
        model.transformer.forward(&mut state, &history, false).unwrap();
        for &(t, pt) in sampler.distribution(state.last_logits(), &history) {
            let mut next = tokens.clone();
            next.push(t);
            pending.push((next, p * f64::from(pt)));
        }
    }
    joint
}

/// Pearson's chi-square of `counts` (out of `n`) against the probabilities `expected`, cells
/// with an expected count under 5 pooled (with any outcome `expected` lacks), and its degrees
/// of freedom.
pub fn chi_square<K: Eq + Hash>(expected: &HashMap<K, f64>, counts: &HashMap<K, usize>, n: usize) -> (f64, usize) {
    let unexpected = counts.iter().filter(|(k, _)| !expected.contains_key(*k)).map(|(_, &c)| c as f64).sum::<f64>();
    let (mut stat, mut cells, mut pool_o, mut pool_e) = (0.0, 0, unexpected, 0.0);
    for (key, &p) in expected {
        let (o, e) = (counts.get(key).copied().unwrap_or(0) as f64, p * n as f64);
        if e < 5.0 {
            pool_o += o;
            pool_e += e;
        } else {
            stat += (o - e).powi(2) / e;
            cells += 1;
        }
    }
    if pool_e > 0.0 {
        stat += (pool_o - pool_e).powi(2) / pool_e;
        cells += 1;
    }
    (stat, cells - 1)
}

/// The chi-square value exceeded with probability 0.001 (Wilson–Hilferty approximation).
pub fn critical(df: usize) -> f64 {
    let d = df as f64;
    d * (1.0 - 2.0 / (9.0 * d) + 3.090 * (2.0 / (9.0 * d)).sqrt()).powi(3)
}
