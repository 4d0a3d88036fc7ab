//! Shared by the constrained-decoding and tool-call tests: the real models and vocabularies,
//! and JSON Schema validation by the `jsonschema` crate.
#![allow(dead_code)]

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
