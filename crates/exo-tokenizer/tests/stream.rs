//! StreamDecoder emits only whole characters when emoji and CJK are split across tokens.

mod common;

use exo_tokenizer::{StreamDecoder, Tokenizer};

/// Pushes `ids` one by one; returns the chunks (None for a token that completed nothing).
fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> (Vec<Option<String>>, String) {
    let mut d = StreamDecoder::new(tok, skip_special);
    let chunks: Vec<Option<String>> = ids.iter().map(|&id| d.push(id)).collect();
    (chunks, d.finish())
}

#[test]
fn byte_level_bpe_splits_emoji_and_cjk() {
    let tok = common::gguf_tokenizer("qwen2.5-coder-0.5b-instruct");
    let text = "日本語のテキスト 😀🎉 👩‍👩‍👧‍👦 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 done";
    let ids = tok.encode(text, false, false).expect("encode");
    // Some token must end inside a character for this test to mean anything.
    assert!(ids.iter().any(|&id| std::str::from_utf8(&tok.token_bytes(id)).is_err()), "no partial token in {ids:?}");
    let (chunks, rest) = stream(&tok, &ids, false);
    assert!(chunks.iter().any(Option::is_none), "a partial character was emitted: {chunks:?}");
    let joined: String = chunks.iter().flatten().map(String::as_str).collect::<String>() + &rest;
    assert_eq!(joined, text);
    assert!(chunks.iter().flatten().all(|c| !c.contains('\u{FFFD}')));
    assert_eq!(rest, "");
}

#[test]
fn spm_byte_fallback_holds_partial_characters() {
    let tok = common::gguf_tokenizer("gemma3-270m");
    // Private-use characters are not in the vocabulary: each becomes four <0xXX> byte tokens.
    let text = "a\u{F0000}\u{10FFFD}b";
    let ids = tok.encode(text, false, false).expect("encode");
    assert!(ids.len() >= 9, "{ids:?}");
    let (chunks, rest) = stream(&tok, &ids, true);
    let emitted: Vec<&str> = chunks.iter().flatten().map(String::as_str).collect();
    assert_eq!(emitted.concat() + &rest, text);
    assert!(emitted.contains(&"\u{F0000}") && emitted.contains(&"\u{10FFFD}"), "{emitted:?}");
    assert_eq!(chunks.iter().filter(|c| c.is_none()).count(), 6, "{chunks:?}");
}

#[test]
fn invalid_and_unfinished_bytes_become_replacement_characters() {
    let tok = common::gguf_tokenizer("gemma3-270m");
    let byte = |b: u8| tok.token_id(&format!("<0x{b:02X}>")).expect("byte token");
    let mut d = StreamDecoder::new(&tok, false);
    // A lone continuation byte can never become valid: replaced at once.
    assert_eq!(d.push(byte(0x80)).as_deref(), Some("\u{FFFD}"));
    // The first two bytes of a three-byte character are held...
    assert_eq!(d.push(byte(0xE6)), None);
    assert_eq!(d.push(byte(0x97)), None);
    // ...and flushed as U+FFFD when the stream ends unfinished.
    assert_eq!(d.finish(), "\u{FFFD}");
    assert_eq!(d.finish(), "");
}

#[test]
fn special_tokens_are_skipped_or_shown() {
    let tok = common::gguf_tokenizer("smollm2-135m-instruct");
    let ids = tok.encode("<|im_start|>hi<|im_end|>", false, true).expect("encode");
    let (shown, _) = stream(&tok, &ids, false);
    let (skipped, _) = stream(&tok, &ids, true);
    assert_eq!(shown.into_iter().flatten().collect::<String>(), "<|im_start|>hi<|im_end|>");
    assert_eq!(skipped.into_iter().flatten().collect::<String>(), "hi");
}

#[test]
fn tokenizer_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone>() {}
    check::<Tokenizer>();
    check::<exo_tokenizer::ChatTemplate>();
}
