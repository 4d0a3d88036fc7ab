//! Logits against Hugging Face `transformers` (fixtures from tests/reference/gen_transformers.py
//! and gen_hf_tiny.py): the dequantized float path of the real GGUF models, and the safetensors
//! path on small random-initialised checkpoints.

use std::path::{Path, PathBuf};

use exo_models::{load, LoadOptions, LoadedModel};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn model_file(name: &str) -> PathBuf {
    let p = exo_models::models_dir().join(format!("{name}.gguf"));
    assert!(p.is_file(), "{} is missing: run scripts/fetch-models.sh all", p.display());
    p
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// All-position logits of `tokens` (`tokens.len()` rows of `vocab`).
fn all_logits(m: &LoadedModel, tokens: &[u32]) -> Vec<f32> {
    let mut state = m.transformer.new_state(tokens.len(), tokens.len()).unwrap();
    m.transformer.forward(&mut state, tokens, true).unwrap();
    state.logits().to_vec()
}

/// Largest |ours - reference| over the compared entries, relative to the largest |reference|.
fn rel_err(ours: &[f32], reference: &[f32]) -> f32 {
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = ours.iter().zip(reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

/// Checks every case of a `{"cases": [{"prompt_ids", "positions", "indices", "logits"}]}` file.
fn check_sparse_cases(m: &LoadedModel, fixture: &Value, tol: f32, label: &str) {
    let vocab = m.transformer.config().vocab_size;
    for case in fixture["cases"].as_array().unwrap() {
        let tokens = ids(&case["prompt_ids"]);
        let logits = all_logits(m, &tokens);
        let idx = ids(&case["indices"]);
        for (p, want) in case["positions"].as_array().unwrap().iter().zip(case["logits"].as_array().unwrap()) {
            let p = p.as_u64().unwrap() as usize;
            let row = &logits[p * vocab..(p + 1) * vocab];
            let ours: Vec<f32> = idx.iter().map(|&i| row[i as usize]).collect();
            let err = rel_err(&ours, &floats(want));
            assert!(err < tol, "{label}: position {p}: relative logit error {err} exceeds {tol}");
        }
    }
}

fn transformers_case(name: &str) {
    let fixture = read_json(&fixtures().join(format!("transformers/{name}.json")));
    let m = load(&model_file(name), &LoadOptions { dequantize: true, ..Default::default() }).unwrap();
    check_sparse_cases(&m, &fixture, 1e-3, name);
}

#[test]
fn smollm2_dequantized_matches_transformers() {
    transformers_case("smollm2-135m-instruct");
}

#[test]
fn gemma3_dequantized_matches_transformers() {
    transformers_case("gemma3-270m");
}

#[test]
fn qwen2_5_coder_0_5b_dequantized_matches_transformers() {
    transformers_case("qwen2.5-coder-0.5b-instruct");
}

#[test]
fn qwen2_5_coder_1_5b_dequantized_matches_transformers() {
    transformers_case("qwen2.5-coder-1.5b-instruct");
}

fn hf_tiny_case(dir: &str) {
    let dir = fixtures().join(dir);
    let m = load(&dir, &LoadOptions::default()).unwrap();
    let fixture = read_json(&dir.join("logits.json"));
    let mut cases = fixture.clone();
    // The tiny fixtures name their prompt `ids`; the shared checker reads `prompt_ids`.
    for case in cases["cases"].as_array_mut().unwrap() {
        case["prompt_ids"] = case["ids"].clone();
    }
    check_sparse_cases(&m, &cases, 1e-3, &dir.display().to_string());
}

#[test]
fn hf_llama_safetensors_matches_transformers() {
    hf_tiny_case("hf-tiny-llama");
}

#[test]
fn hf_qwen2_safetensors_matches_transformers() {
    hf_tiny_case("hf-tiny-qwen2");
}

#[test]
fn hf_gemma3_safetensors_matches_transformers() {
    hf_tiny_case("hf-tiny-gemma3");
}
