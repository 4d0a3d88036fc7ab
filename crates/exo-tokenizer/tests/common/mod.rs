//! Shared helpers for the integration tests: where models and fixtures live.
#![allow(dead_code)]

use std::path::PathBuf;

/// The workspace's `tests/fixtures` folder.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures"))
}

/// Reads a JSON fixture, failing with a message naming the file and how to regenerate it.
pub fn fixture(rel: &str) -> serde_json::Value {
    let path = fixtures_dir().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("fixture {} is unreadable ({e}); regenerate it with tests/reference/regenerate.sh", path.display())
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {} is not valid JSON: {e}", path.display()))
}

/// exo's model cache: `$EXO_HOME/models`, `~/.exo/models` by default.
pub fn models_dir() -> PathBuf {
    let home = std::env::var_os("EXO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".exo"));
    home.join("models")
}

/// The path of model `name` (a `.gguf` file, or a directory for Hugging Face models). A missing
/// model fails the test: these tests compare against real model files and must not pass silently.
pub fn model_path(name: &str) -> PathBuf {
    let dir = models_dir();
    let candidates = [dir.join(format!("{name}.gguf")), dir.join(name)];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| panic!("model '{name}' is missing from {}: run scripts/fetch-models.sh all", dir.display()))
}

/// Opens GGUF model `name` and loads its tokenizer.
pub fn gguf_tokenizer(name: &str) -> exo_tokenizer::Tokenizer {
    let path = model_path(name);
    let g = exo_formats::GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    exo_tokenizer::Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("{e}"))
}

/// The GGUF models the llama.cpp fixtures cover.
pub const GGUF_MODELS: [&str; 4] =
    ["smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"];

/// A metadata value for [`write_gguf`].
pub enum Meta {
    Str(&'static str),
    U32(u32),
    Bool(bool),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
}

/// Writes a GGUF v3 file holding only `kv` (no tensors) into a fresh temp file; returns its path.
pub fn write_gguf(name: &str, kv: &[(&str, Meta)]) -> PathBuf {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        s(&mut out, k);
        match v {
            Meta::Str(v) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                s(&mut out, v);
            }
            Meta::U32(v) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Meta::Bool(v) => {
                out.extend_from_slice(&7u32.to_le_bytes());
                out.push(u8::from(*v));
            }
            Meta::Strs(list) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(list.len() as u64).to_le_bytes());
                list.iter().for_each(|x| s(&mut out, x));
            }
            Meta::I32s(list) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&(list.len() as u64).to_le_bytes());
                list.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
            Meta::F32s(list) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&6u32.to_le_bytes());
                out.extend_from_slice(&(list.len() as u64).to_le_bytes());
                list.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
        }
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    let dir = std::env::temp_dir().join(format!("exo-tokenizer-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{name}.gguf"));
    std::fs::write(&path, out).expect("write gguf");
    path
}

/// Loads the tokenizer of a GGUF written by [`write_gguf`].
pub fn load_gguf(path: &std::path::Path) -> Result<exo_tokenizer::Tokenizer, exo_tokenizer::TokenizerError> {
    let g = exo_formats::GgufFile::open(path).unwrap_or_else(|e| panic!("{e}"));
    exo_tokenizer::Tokenizer::from_gguf(&g)
}

/// Encodes every `{"text", "add_bos" (default false), "special", "ids"}` case and fails listing
/// each one whose ids differ from llama.cpp's.
pub fn assert_encodes_like_llamacpp(model: &str, tok: &exo_tokenizer::Tokenizer, cases: &[serde_json::Value]) {
    let mut bad = Vec::new();
    for c in cases {
        let text = c["text"].as_str().expect("text");
        let add_bos = c["add_bos"].as_bool().unwrap_or(false);
        let special = c["special"].as_bool().expect("special");
        let want: Vec<u32> = c["ids"].as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect();
        let got = tok.encode(text, add_bos, special).expect("encode");
        if got != want {
            bad.push(format!("{text:?} add_bos={add_bos} special={special}\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(bad.is_empty(), "{model}: {} of {} cases differ from llama.cpp:\n{}", bad.len(), cases.len(), bad.join("\n"));
}
