//! Token ids and detokenized text against llama.cpp (llama-cpp-python's `tokenize` and
//! `detokenize`, recorded in tests/fixtures/llamacpp/<model>.json by
//! tests/reference/gen_llamacpp.py), on the real GGUF models.

mod common;

use common::{assert_encodes_like_llamacpp, fixture, gguf_tokenizer, GGUF_MODELS};

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("id list").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// Every `tokenize` case of the model's fixture gives llama.cpp's ids.
fn check_tokenize(model: &str) {
    let tok = gguf_tokenizer(model);
    let fx = fixture(&format!("llamacpp/{model}.json"));
    let cases = fx["tokenize"].as_array().expect("tokenize cases");
    assert!(!cases.is_empty());
    assert_encodes_like_llamacpp(model, &tok, cases);
}

/// Prompt ids of the greedy cases match, and decoding the generated ids gives llama.cpp's text
/// (llama-cpp-python's `detokenize(ids)`: special tokens rendered as nothing).
fn check_greedy(model: &str) {
    let tok = gguf_tokenizer(model);
    let fx = fixture(&format!("llamacpp/{model}.json"));
    let add_bos = fx["vocab"]["add_bos"].as_bool().expect("vocab.add_bos");
    for g in fx["greedy"].as_array().expect("greedy cases") {
        let prompt = g["prompt"].as_str().expect("prompt");
        assert_eq!(
            tok.encode(prompt, add_bos, true).expect("encode"),
            ids_of(&g["prompt_ids"]),
            "{model}: prompt {prompt:?}"
        );
        let ids = ids_of(&g["ids"]);
        let want = g["text"].as_str().expect("text");
        assert_eq!(tok.decode(&ids, true), want, "{model}: decode of {ids:?}");
        // Streaming gives the same text.
        let mut dec = exo_tokenizer::StreamDecoder::new(&tok, true);
        let mut streamed: String = ids.iter().filter_map(|&id| dec.push(id)).collect();
        streamed.push_str(&dec.finish());
        assert_eq!(streamed, want, "{model}: streamed decode of {ids:?}");
    }
}

/// Special ids and the end-of-generation set match llama.cpp's.
fn check_vocab(model: &str) {
    let tok = gguf_tokenizer(model);
    let fx = fixture(&format!("llamacpp/{model}.json"));
    let v = &fx["vocab"];
    let id = |k: &str| v[k].as_i64().and_then(|x| u32::try_from(x).ok());
    assert_eq!(tok.vocab_size() as u64, v["n_vocab"].as_u64().expect("n_vocab"), "{model}: n_vocab");
    assert_eq!(tok.bos_id(), id("bos"), "{model}: bos");
    assert_eq!(tok.eos_id(), id("eos"), "{model}: eos");
    assert_eq!(tok.adds_bos(), v["add_bos"].as_bool().expect("add_bos"), "{model}: add_bos");
    assert_eq!(tok.eog_ids(), ids_of(&v["eog_ids"]).as_slice(), "{model}: eog ids");
    if let Some(eot) = id("eot") {
        assert!(tok.is_eog(eot), "{model}: eot {eot} is end-of-generation");
    }
    assert!(tok.notes().is_empty(), "{model}: {:?}", tok.notes());
}

macro_rules! model_tests {
    ($($m:ident => $name:literal),* $(,)?) => {
        mod tokenize { $( #[test] fn $m() { super::check_tokenize($name) } )* }
        mod greedy_decode { $( #[test] fn $m() { super::check_greedy($name) } )* }
        mod vocab { $( #[test] fn $m() { super::check_vocab($name) } )* }
    };
}

model_tests! {
    smollm2_135m_instruct => "smollm2-135m-instruct",
    gemma3_270m => "gemma3-270m",
    qwen2_5_coder_0_5b_instruct => "qwen2.5-coder-0.5b-instruct",
    qwen2_5_coder_1_5b_instruct => "qwen2.5-coder-1.5b-instruct",
}

#[test]
fn fixture_list_matches_models() {
    // Keeps the macro above in step with the shared model list.
    assert_eq!(GGUF_MODELS.len(), 4);
}
