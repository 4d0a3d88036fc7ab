//! Hugging Face model directories: `tokenizer.json` through the `tokenizers` crate, plus
//! `tokenizer_config.json` (chat template, BOS/EOS texts, `add_bos_token`) and
//! `generation_config.json` (end-of-generation ids).

use std::collections::HashMap;
use std::path::Path;

use exo_formats::HfModelDir;
use serde_json::Value as Json;

use crate::unicode::char_to_byte;
use crate::vocab::EOG_TEXTS;
use crate::TokenizerError;

/// A loaded `tokenizer.json`.
pub(crate) struct HfVocab {
    /// Parses special-token texts in the input.
    pub(crate) with_special: tokenizers::Tokenizer,
    /// Treats special-token texts as plain text.
    pub(crate) literal: tokenizers::Tokenizer,
    /// Per-token bytes, as a concatenating detokenizer should emit them.
    pub(crate) pieces: Vec<Box<[u8]>>,
    /// Added tokens marked special (skipped when decoding with `skip_special`).
    pub(crate) special: Vec<bool>,
}

/// Everything `Tokenizer::from_hf_dir` needs from the directory.
pub(crate) struct HfLoaded {
    pub(crate) vocab: HfVocab,
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    pub(crate) add_bos: bool,
    pub(crate) eog: Vec<u32>,
    pub(crate) template: Option<String>,
    pub(crate) bos_text: String,
    pub(crate) eos_text: String,
}

/// A special-token field of `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_text(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(String::from),
        _ => None,
    }
}

/// An id field: an integer or a list of integers.
fn ids(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()).into_iter().collect(),
        Some(Json::Array(a)) => a.iter().filter_map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok())).collect(),
        _ => Vec::new(),
    }
}

/// The chat template of `tokenizer_config.json` (a string, or a list of named templates of
/// which "default" is used), else `chat_template.jinja` next to it.
fn chat_template(dir: &Path, config: Option<&Json>) -> Result<Option<String>, TokenizerError> {
    match config.and_then(|c| c.get("chat_template")) {
        Some(Json::String(s)) => return Ok(Some(s.clone())),
        Some(Json::Array(list)) => {
            let named = |n: &str| list.iter().find(|t| t.get("name").and_then(Json::as_str) == Some(n));
            let pick = named("default").or_else(|| list.first());
            return Ok(pick.and_then(|t| t.get("template")).and_then(Json::as_str).map(String::from));
        }
        _ => {}
    }
    let path = dir.join("chat_template.jinja");
    if path.is_file() {
        let s = std::fs::read_to_string(&path).map_err(|e| TokenizerError::File { path, problem: e.to_string() })?;
        return Ok(Some(s));
    }
    Ok(None)
}

/// Loads the tokenizer files of `h`.
pub(crate) fn load(h: &HfModelDir) -> Result<HfLoaded, TokenizerError> {
    let path = h.dir().join("tokenizer.json");
    if !path.is_file() {
        return Err(TokenizerError::File {
            path,
            problem: "not found (a Hugging Face model directory needs tokenizer.json)".into(),
        });
    }
    let mut with_special = tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| TokenizerError::File { path: path.clone(), problem: e.to_string() })?;
    // Prompts are encoded whole: no padding to a batch length, no silent truncation.
    with_special.with_padding(None);
    with_special
        .with_truncation(None)
        .map_err(|e| TokenizerError::File { path: path.clone(), problem: format!("disabling truncation: {e}") })?;
    let mut literal = with_special.clone();
    literal.set_encode_special_tokens(true);
    let config = h.optional_json("tokenizer_config.json")?;
    let gen = h.optional_json("generation_config.json")?;

    let n = with_special.get_vocab_size(true);
    let added: HashMap<u32, tokenizers::AddedToken> = with_special.get_added_tokens_decoder().into_iter().collect();
    let mut special = vec![false; n];
    for (&id, t) in &added {
        if let Some(s) = special.get_mut(id as usize) {
            *s = t.special;
        }
    }
    let pieces = pieces(&with_special, n, &added);

    let cfg = config.as_ref();
    let bos_text = token_text(cfg.and_then(|c| c.get("bos_token"))).unwrap_or_default();
    let eos_text = token_text(cfg.and_then(|c| c.get("eos_token"))).unwrap_or_default();
    let lookup = |t: &str| if t.is_empty() { None } else { with_special.token_to_id(t) };
    let mut bos = lookup(&bos_text).or_else(|| ids(h.config().get("bos_token_id")).first().copied());
    let eos = lookup(&eos_text).or_else(|| ids(h.config().get("eos_token_id")).first().copied());
    // Whether encoding with special tokens puts a token in front: the post-processor decides,
    // unless the config says otherwise.
    let add_bos = match cfg.and_then(|c| c.get("add_bos_token")).and_then(Json::as_bool) {
        Some(v) => v,
        None => {
            let with = with_special.encode("a", true).map(|e| e.get_ids().to_vec()).unwrap_or_default();
            let without = with_special.encode("a", false).map(|e| e.get_ids().to_vec()).unwrap_or_default();
            let adds = with.len() > without.len() && with.first() != without.first();
            // BERT-style vocabularies have no BOS but put [CLS] in front: that is the BOS here.
            if adds && bos.is_none() {
                bos = with.first().copied();
            }
            adds
        }
    };
    let mut eog: Vec<u32> = eos.into_iter().collect();
    eog.extend(ids(gen.as_ref().and_then(|g| g.get("eos_token_id"))));
    eog.extend(ids(h.config().get("eos_token_id")));
    for (&id, t) in &added {
        if t.special && EOG_TEXTS.contains(&t.content.as_str()) {
            eog.push(id);
        }
    }
    eog.retain(|&id| (id as usize) < n);
    eog.sort_unstable();
    eog.dedup();
    let template = chat_template(h.dir(), cfg)?;
    Ok(HfLoaded {
        vocab: HfVocab { with_special, literal, pieces, special },
        bos,
        eos,
        add_bos,
        eog,
        template,
        bos_text,
        eos_text,
    })
}

/// Collects the `type` names of a serialized decoder and its nested decoders, and the WordPiece
/// prefix if any.
fn decoder_kinds(v: &Json, kinds: &mut Vec<String>, prefix: &mut Option<String>) {
    match v {
        Json::Object(o) => {
            if let Some(t) = o.get("type").and_then(Json::as_str) {
                if t == "WordPiece" {
                    *prefix = o.get("prefix").and_then(Json::as_str).map(String::from);
                }
                kinds.push(t.to_string());
            }
            o.values().for_each(|x| decoder_kinds(x, kinds, prefix));
        }
        Json::Array(a) => a.iter().for_each(|x| decoder_kinds(x, kinds, prefix)),
        _ => {}
    }
}

/// Per-token bytes for streaming: byte-level tokens mapped back to bytes, `<0xXX>` byte-fallback
/// tokens to their byte, `▁` to a space, WordPiece `##` continuations joined and other words
/// preceded by a space; added tokens as their text.
fn pieces(tok: &tokenizers::Tokenizer, n: usize, added: &HashMap<u32, tokenizers::AddedToken>) -> Vec<Box<[u8]>> {
    let dec = tok.get_decoder().and_then(|d| serde_json::to_value(d).ok()).unwrap_or(Json::Null);
    let mut kinds = Vec::new();
    let mut wp_prefix = None;
    decoder_kinds(&dec, &mut kinds, &mut wp_prefix);
    let has = |k: &str| kinds.iter().any(|x| x == k);
    let (byte_level, byte_fallback, wordpiece) = (has("ByteLevel"), has("ByteFallback"), has("WordPiece"));
    let prefix = wp_prefix.unwrap_or_else(|| "##".to_string());
    (0..n)
        .map(|id| {
            let id = id as u32;
            let Some(text) = tok.id_to_token(id) else { return Box::<[u8]>::default() };
            if let Some(t) = added.get(&id) {
                return t.content.as_bytes().into();
            }
            if byte_level {
                let mut out = Vec::with_capacity(text.len());
                for c in text.chars() {
                    match char_to_byte(c) {
                        Some(b) => out.push(b),
                        None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                return out.into();
            }
            if wordpiece {
                return match text.strip_prefix(prefix.as_str()) {
                    Some(rest) => rest.as_bytes().into(),
                    None => format!(" {text}").into_bytes().into(),
                };
            }
            if byte_fallback && text.len() == 6 && text.starts_with("<0x") && text.ends_with('>') {
                if let Ok(b) = u8::from_str_radix(&text[3..5], 16) {
                    return vec![b].into_boxed_slice();
                }
            }
            text.replace('\u{2581}', " ").into_bytes().into()
        })
        .collect()
}
