//! Randomized texts (tests/reference/gen_tokenize_fuzz.py, fixed seed) tokenize to llama.cpp's
//! ids, with and without special-token parsing.

mod common;

use common::{assert_encodes_like_llamacpp, fixture, gguf_tokenizer};

fn check(model: &str) {
    let tok = gguf_tokenizer(model);
    let fx = fixture(&format!("llamacpp_fuzz/{model}.json"));
    let cases = fx["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    assert_encodes_like_llamacpp(model, &tok, cases);
}

#[test]
fn smollm2_135m_instruct() {
    check("smollm2-135m-instruct");
}

#[test]
fn gemma3_270m() {
    check("gemma3-270m");
}

#[test]
fn qwen2_5_coder_0_5b_instruct() {
    check("qwen2.5-coder-0.5b-instruct");
}

#[test]
fn qwen2_5_coder_1_5b_instruct() {
    check("qwen2.5-coder-1.5b-instruct");
}
