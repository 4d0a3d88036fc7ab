//! Randomized texts (tests/reference/gen_tokenize_fuzz.py, fixed seed) tokenize to llama.cpp's
//! ids, with and without special-token parsing.

mod common;

use common::{fixture, gguf_tokenizer};

fn check(model: &str) {
    let tok = gguf_tokenizer(model);
    let fx = fixture(&format!("llamacpp_fuzz/{model}.json"));
    let cases = fx["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    let mut bad = Vec::new();
    for c in cases {
        let text = c["text"].as_str().expect("text");
        let special = c["special"].as_bool().expect("special");
        let want: Vec<u32> = c["ids"].as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect();
        let got = tok.encode(text, false, special).expect("encode");
        if got != want {
            bad.push(format!("{text:?} special={special}\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{model}: {} of {} cases differ from llama.cpp:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
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
