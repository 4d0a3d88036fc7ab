//! `Tokenizer::from_hf_dir` against the Python `tokenizers` package (fixture written by
//! tests/reference/gen_hf_tokenizer.py) on all-minilm-l6-v2.

mod common;

use exo_tokenizer::Tokenizer;

fn minilm() -> Tokenizer {
    let dir = common::model_path("all-minilm-l6-v2");
    let h = exo_formats::HfModelDir::open(&dir).unwrap_or_else(|e| panic!("{e}"));
    Tokenizer::from_hf_dir(&h).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn encodes_and_decodes_like_python_tokenizers() {
    let tok = minilm();
    let fx = common::fixture("hf_tokenizer/all-minilm-l6-v2.json");
    assert_eq!(tok.vocab_size() as u64, fx["vocab_size"].as_u64().expect("vocab_size"));
    let mut bad = Vec::new();
    for c in fx["cases"].as_array().expect("cases") {
        let text = c["text"].as_str().expect("text");
        let add = c["add_special_tokens"].as_bool().expect("add_special_tokens");
        let split = c["split_special_tokens"].as_bool().expect("split_special_tokens");
        let want: Vec<u32> = c["ids"].as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect();
        let got = tok.encode(text, add, !split).expect("encode");
        if got != want {
            bad.push(format!("{text:?} add={add} split={split}: want {want:?} got {got:?}"));
        }
        let dec = tok.decode(&want, true);
        if dec != c["decoded"].as_str().expect("decoded") {
            bad.push(format!("decode({want:?}, skip) = {dec:?}, want {:?}", c["decoded"]));
        }
        let dec = tok.decode(&want, false);
        if dec != c["decoded_with_special"].as_str().expect("decoded_with_special") {
            bad.push(format!("decode({want:?}) = {dec:?}, want {:?}", c["decoded_with_special"]));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn special_ids_and_lookups() {
    let tok = minilm();
    // The post-processor puts [CLS] in front and [SEP] at the end.
    assert!(tok.adds_bos());
    assert_eq!(tok.bos_id(), Some(101));
    assert_eq!(tok.token_id("[SEP]"), Some(102));
    assert_eq!(tok.token_id("hello"), Some(7592));
    assert_eq!(tok.token_bytes(7592), b" hello");
    assert_eq!(tok.token_bytes(2015), b"s", "WordPiece continuation ##s joins the previous piece");
    assert!(tok.chat_template().is_none());
    // No chat template and no turn tokens: the plain fallback.
    let t = tok.chat_template_or_fallback();
    let msgs = [exo_tokenizer::ChatMessage { role: "user".into(), content: "hi".into() }];
    assert_eq!(t.render(&msgs, true, None).expect("renders"), "User: hi\nAssistant:");
}

#[test]
fn missing_tokenizer_json_names_the_path() {
    let dir = std::env::temp_dir().join(format!("exo-tok-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let src = common::model_path("all-minilm-l6-v2");
    for f in ["config.json", "model.safetensors"] {
        // A hard link keeps the 90 MB weights from being copied; fall back to a copy.
        if std::fs::hard_link(src.join(f), dir.join(f)).is_err() {
            std::fs::copy(src.join(f), dir.join(f)).expect("copy");
        }
    }
    let h = exo_formats::HfModelDir::open(&dir).unwrap_or_else(|e| panic!("{e}"));
    let err = Tokenizer::from_hf_dir(&h).expect_err("no tokenizer.json").to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(err.contains("tokenizer.json") && err.contains("not found"), "{err}");
}
