//! Loading errors name the file, the key and the problem; odd input never panics.

mod common;

use common::{load_gguf, write_gguf, Meta};

/// A small byte-level BPE vocabulary: the 256 byte characters, "ab", "abc" and two controls.
fn tiny_bpe(extra: Vec<(&'static str, Meta)>, name: &str) -> std::path::PathBuf {
    // GPT-2's byte → character table, in byte order: token id = byte value.
    let mut shifted = 0;
    let table: Vec<char> = (0..=255u32)
        .map(|b| {
            let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
            let cp = if printable {
                b
            } else {
                shifted += 1;
                255 + shifted
            };
            char::from_u32(cp).expect("char")
        })
        .collect();
    let mut tokens: Vec<String> = table.iter().map(|c| c.to_string()).collect();
    tokens.extend(["ab", "abc", "<|end|>", "<|start|>"].map(String::from));
    let mut types = vec![1i32; 258];
    types.extend([3, 3]);
    let mut kv = vec![
        ("tokenizer.ggml.model", Meta::Str("gpt2")),
        ("tokenizer.ggml.pre", Meta::Str("gpt-2")),
        ("tokenizer.ggml.tokens", Meta::Strs(tokens)),
        ("tokenizer.ggml.token_type", Meta::I32s(types)),
        ("tokenizer.ggml.merges", Meta::Strs(vec!["a b".into(), "ab c".into()])),
        ("tokenizer.ggml.eos_token_id", Meta::U32(258)),
        ("tokenizer.ggml.bos_token_id", Meta::U32(259)),
    ];
    for (k, v) in extra {
        kv.retain(|(key, _)| *key != k);
        kv.push((k, v));
    }
    write_gguf(name, &kv)
}

#[test]
fn tiny_vocab_works() {
    let tok = load_gguf(&tiny_bpe(vec![], "tiny")).expect("loads");
    // "abc" merges fully; " ab" is "Ġ" (byte 0x20) and "ab".
    assert_eq!(tok.encode("abc ab", false, false).expect("encode"), vec![257, 32, 256]);
    assert_eq!(tok.encode("<|end|>ab", false, true).expect("encode"), vec![258, 256]);
    assert_eq!(tok.decode(&[258, 256], false), "<|end|>ab");
    assert_eq!(tok.decode(&[258, 256], true), "ab");
    assert!(tok.is_eog(258));
    assert!(!tok.adds_bos());
    assert!(tok.notes().is_empty());
}

#[test]
fn missing_tokens_key() {
    let p = write_gguf("no-tokens", &[("tokenizer.ggml.model", Meta::Str("gpt2"))]);
    let err = load_gguf(&p).expect_err("fails").to_string();
    assert!(err.ends_with("no-tokens.gguf: tokenizer.ggml.tokens is missing"), "{err}");
}

#[test]
fn missing_model_key() {
    let p = write_gguf("no-model", &[("general.name", Meta::Str("x"))]);
    let err = load_gguf(&p).expect_err("fails").to_string();
    assert!(err.ends_with("no-model.gguf: tokenizer.ggml.model is missing"), "{err}");
}

#[test]
fn unknown_tokenizer_model() {
    let p = write_gguf(
        "bert",
        &[("tokenizer.ggml.model", Meta::Str("bert")), ("tokenizer.ggml.tokens", Meta::Strs(vec!["a".into()]))],
    );
    let err = load_gguf(&p).expect_err("fails").to_string();
    assert!(err.contains("bert.gguf") && err.contains("tokenizer.ggml.model is 'bert'"), "{err}");
}

#[test]
fn bpe_without_merges() {
    let p = write_gguf(
        "no-merges",
        &[("tokenizer.ggml.model", Meta::Str("gpt2")), ("tokenizer.ggml.tokens", Meta::Strs(vec!["a".into()]))],
    );
    let err = load_gguf(&p).expect_err("fails").to_string();
    assert!(err.ends_with("tokenizer.ggml.merges is missing"), "{err}");
}

#[test]
fn short_token_types() {
    let p = tiny_bpe(vec![("tokenizer.ggml.token_type", Meta::I32s(vec![1; 3]))], "short-types");
    let err = load_gguf(&p).expect_err("fails").to_string();
    assert!(err.contains("tokenizer.ggml.token_type: has 3 entries for 260 tokens"), "{err}");
}

#[test]
fn add_bos_without_bos_id() {
    let p = write_gguf(
        "add-bos",
        &[
            ("tokenizer.ggml.model", Meta::Str("llama")),
            ("tokenizer.ggml.tokens", Meta::Strs(vec!["a".into()])),
            ("tokenizer.ggml.scores", Meta::F32s(vec![0.0])),
        ],
    );
    // SPM's default BOS id (1) is outside a one-token vocabulary, and SPM adds BOS by default.
    let err = load_gguf(&p).expect_err("fails").to_string();
    assert!(err.contains("add_bos_token: is true, but tokenizer.ggml.bos_token_id is not set"), "{err}");
}

#[test]
fn unknown_pre_tokenizer_falls_back_with_a_note() {
    let tok = load_gguf(&tiny_bpe(vec![("tokenizer.ggml.pre", Meta::Str("martian"))], "martian")).expect("loads");
    assert_eq!(tok.notes().len(), 1);
    assert!(tok.notes()[0].contains("'martian'"), "{:?}", tok.notes());
    assert_eq!(tok.encode("abc", false, false).expect("encode"), vec![257]);
}

#[test]
fn bad_chat_template_in_gguf() {
    // The model stays usable for plain completion; the problem is reported in notes().
    let p =
        tiny_bpe(vec![("tokenizer.chat_template", Meta::Str("{% for m in messages %}{{ m.content }"))], "bad-template");
    let tok = load_gguf(&p).expect("loads");
    assert!(tok.chat_template().is_none());
    assert_eq!(tok.notes().len(), 1);
    assert!(
        tok.notes()[0].starts_with("tokenizer.chat_template does not compile (template: syntax error"),
        "{:?}",
        tok.notes()
    );
}

#[test]
fn odd_input_does_not_panic() {
    let tok = load_gguf(&tiny_bpe(vec![], "odd")).expect("loads");
    for text in ["", "\u{0}", "\u{10FFFF}\u{FFFD}", "<|end|<|end|>|>", &"a".repeat(10_000), "\r\n\t \u{3000}\u{2028}"] {
        for special in [false, true] {
            let ids = tok.encode(text, true, special).expect("encode");
            assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
            let _ = tok.decode(&ids, false);
        }
    }
    assert_eq!(tok.decode(&[u32::MAX, 1_000_000], false), "");
    assert!(tok.token_bytes(u32::MAX).is_empty());
    assert!(!tok.is_eog(u32::MAX));
}
