//! Tokenizers between GGUF metadata (`tokenizer.ggml.*`) and Hugging Face `tokenizer.json`.
//!
//! Two families convert: byte-level BPE (`gpt2` in GGUF; the pre-tokenizers llama.cpp calls
//! `smollm`, `qwen2`, `llama-bpe` and `gpt2`) and SentencePiece BPE (`llama` in GGUF; Gemma,
//! Llama 2). GGUF keeps SentencePiece's per-token scores, where `tokenizer.json` keeps BPE merges:
//! a merge `(a, b)` ranks by the score of `a + b`, which makes the greedy highest-score merging of
//! SentencePiece and the lowest-rank merging of BPE pick the same pairs.

use std::collections::HashMap;

use exo_formats::{GgufFile, GgufWriter, HfModelDir, MetaValue};
use serde_json::{json, Value};

use crate::ModelError;

/// The Qwen2 pre-tokenizer regex (as in Qwen2's tokenizer.json and llama.cpp's `qwen2`).
const QWEN2_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The Llama 3 pre-tokenizer regex (llama.cpp's `llama-bpe`).
const LLAMA3_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp's `llama_token_type`).
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// The Hugging Face tokenizer files built from a GGUF vocabulary.
pub(super) struct HfTokenizer {
    pub(super) tokenizer: Value,
    pub(super) config: Value,
    pub(super) bos: Option<u32>,
    /// One id, or a list when the model ends generation on several.
    pub(super) eos: Value,
    pub(super) notes: Vec<String>,
}

fn meta_err(g: &GgufFile, what: String) -> ModelError {
    ModelError::Unconvertible { file: g.path().display().to_string(), what }
}

fn strings(g: &GgufFile, key: &str) -> Result<Vec<String>, ModelError> {
    g.get_array(key)?
        .iter()
        .map(|v| v.as_str().map(String::from).ok_or_else(|| meta_err(g, format!("{key} holds a non-string"))))
        .collect()
}

/// `tokenizer.json` and `tokenizer_config.json` for the vocabulary of `g`.
pub(super) fn hf_tokenizer_from_gguf(g: &GgufFile, max_len: usize) -> Result<HfTokenizer, ModelError> {
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let types: Vec<i32> = match g.get("tokenizer.ggml.token_type").and_then(MetaValue::as_array) {
        Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1) as i32).collect(),
        None => vec![NORMAL; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(meta_err(g, format!("{} token types for {} tokens", types.len(), tokens.len())));
    }
    let id = |k: &str| g.opt_u64(k).map(|v| v as u32).filter(|&v| (v as usize) < tokens.len());
    let (bos, eos, eot) = (id("tokenizer.ggml.bos_token_id"), id("tokenizer.ggml.eos_token_id"), id("tokenizer.ggml.eot_token_id"));
    let model = g.get_str("tokenizer.ggml.model")?;
    let spm = match model {
        "gpt2" => false,
        "llama" => true,
        other => return Err(meta_err(g, format!("tokenizer.ggml.model '{other}' has no tokenizer.json form exo writes (gpt2, llama)"))),
    };
    let add_bos = g.opt_bool("tokenizer.ggml.add_bos_token").unwrap_or(spm);
    // llama.cpp makes the tokens of its end-of-generation texts control tokens whatever their
    // GGUF type ("</s>" is a normal token of Qwen2's vocabulary), so the tokenizer.json does too.
    let types: Vec<i32> = types
        .iter()
        .zip(&tokens)
        .map(|(&ty, t)| if exo_tokenizer::EOG_TEXTS.contains(&t.as_str()) { CONTROL } else { ty })
        .collect();
    let added: Vec<Value> = (0..tokens.len())
        .filter(|&i| matches!(types[i], CONTROL | USER_DEFINED | UNKNOWN))
        .map(|i| {
            json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": types[i] != USER_DEFINED})
        })
        .collect();
    let vocab: serde_json::Map<String, Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let mut notes = Vec::new();
    let (merges, normalizer, pre, decoder, model_extra) = if spm {
        let scores: Vec<f32> = match g.get("tokenizer.ggml.scores").and_then(MetaValue::as_array) {
            Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
            None => return Err(meta_err(g, "a SentencePiece vocabulary without tokenizer.ggml.scores".into())),
        };
        let merges = merges_from_scores(&tokens, &types, &scores);
        let mut norm = vec![json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"})];
        if g.opt_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true) {
            norm.insert(0, json!({"type": "Prepend", "prepend": "\u{2581}"}));
        }
        let decoder = json!({"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]});
        let unk = id("tokenizer.ggml.unknown_token_id").map(|u| tokens[u as usize].clone());
        (merges, json!({"type": "Sequence", "normalizers": norm}), Value::Null, decoder, json!({"byte_fallback": true, "fuse_unk": true, "unk_token": unk}))
    } else {
        let merges = strings(g, "tokenizer.ggml.merges")?;
        let merges: Vec<Value> = merges
            .iter()
            .map(|m| m.split_once(' ').map(|(a, b)| json!([a, b])).ok_or_else(|| meta_err(g, format!("merge '{m}' has no space"))))
            .collect::<Result<_, _>>()?;
        let pre_name = g.opt_str("tokenizer.ggml.pre").unwrap_or("default");
        let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": regex});
        let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
        let pre = match pre_name {
            "smollm" => json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            "qwen2" => json!({"type": "Sequence", "pretokenizers": [split(QWEN2_RE), byte_level(false)]}),
            "llama-bpe" => json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_RE), byte_level(false)]}),
            "gpt2" => byte_level(true),
            other => {
                notes.push(format!("pre-tokenizer '{other}' has no exact tokenizer.json form here; GPT-2's regex is used"));
                byte_level(true)
            }
        };
        (merges, Value::Null, pre, byte_level(true), json!({"byte_fallback": false, "fuse_unk": false, "unk_token": null}))
    };
    let mut model_json = json!({"type": "BPE", "dropout": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                                "ignore_merges": false, "vocab": vocab, "merges": merges});
    for (k, v) in model_extra.as_object().expect("an object") {
        model_json[k] = v.clone();
    }
    let post = match bos.filter(|_| add_bos) {
        Some(b) => {
            let t = &tokens[b as usize];
            json!({"type": "TemplateProcessing",
                   "single": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                   "pair": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                            {"SpecialToken": {"id": t, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                   "special_tokens": {t: {"id": t, "ids": [b], "tokens": [t]}}})
        }
        None => Value::Null,
    };
    let tokenizer = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                           "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": post,
                           "decoder": decoder, "model": model_json});
    let text = |i: Option<u32>| i.map(|i| tokens[i as usize].clone());
    let mut config = json!({"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": add_bos, "add_eos_token": false,
                            "bos_token": text(bos), "eos_token": text(eos), "model_max_length": max_len,
                            "clean_up_tokenization_spaces": false});
    if let Some(t) = g.opt_str("tokenizer.chat_template") {
        config["chat_template"] = json!(t);
    }
    let eos_ids: Vec<u32> = eos.into_iter().chain(eot.filter(|&t| Some(t) != eos)).collect();
    let eos = if eos_ids.len() == 1 { json!(eos_ids[0]) } else { json!(eos_ids) };
    Ok(HfTokenizer { tokenizer, config, bos, eos, notes })
}

/// BPE merges equivalent to SentencePiece's score-driven merging: every split of a normal token
/// into two tokens of the vocabulary, ranked by the merged token's score (highest first).
fn merges_from_scores(tokens: &[String], types: &[i32], scores: &[f32]) -> Vec<Value> {
    let index: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        if types[id] != NORMAL || t.chars().nth(1).is_none() {
            continue;
        }
        for (at, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(at);
            if let (Some(&ia), Some(&ib)) = (index.get(a), index.get(b)) {
                merges.push((scores.get(id).copied().unwrap_or(0.0), id, ia, ib));
            }
        }
    }
    // Highest score first; among equals the lower id (and shorter left piece) first, as
    // SentencePiece's vocabularies are ordered by score already.
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(tokens[x.2].len().cmp(&tokens[y.2].len())));
    merges.into_iter().map(|(_, _, a, b)| json!([tokens[a], tokens[b]])).collect()
}

/// Adds the `tokenizer.*` metadata built from `h`'s `tokenizer.json` (and
/// `tokenizer_config.json`) to `w`. Returns notes (a missing tokenizer is a note, not an error).
pub(super) fn gguf_tokenizer_from_hf(h: &HfModelDir, w: &mut GgufWriter) -> Result<Vec<String>, ModelError> {
    let Some(tj) = h.optional_json("tokenizer.json")? else {
        return Ok(vec!["no tokenizer.json: the GGUF has no tokenizer (exo and llama.cpp need one to run it)".into()]);
    };
    let file = h.dir().join("tokenizer.json").display().to_string();
    let bad = |what: String| ModelError::Unconvertible { file: file.clone(), what };
    let model = &tj["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(bad(format!("tokenizer model '{}' has no GGUF form exo writes (BPE only)", model["type"])));
    }
    let vocab = model["vocab"].as_object().ok_or_else(|| bad("model.vocab is not an object".into()))?;
    let added = tj["added_tokens"].as_array().cloned().unwrap_or_default();
    let n = vocab.values().chain(added.iter().map(|a| &a["id"])).filter_map(Value::as_u64).max().map_or(0, |m| m as usize + 1);
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![NORMAL; n];
    for (t, id) in vocab {
        tokens[id.as_u64().expect("ids counted above") as usize] = Some(t.clone());
    }
    for a in &added {
        let (Some(id), Some(t)) = (a["id"].as_u64(), a["content"].as_str()) else { continue };
        tokens[id as usize] = Some(t.to_string());
        types[id as usize] = if a["special"].as_bool() == Some(true) { CONTROL } else { USER_DEFINED };
    }
    // llama.cpp's converter fills holes in the id range the same way.
    let tokens: Vec<String> = tokens.into_iter().enumerate().map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]"))).collect();
    let merges: Vec<String> = model["merges"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|x| match x {
                    Value::String(s) => Some(s.clone()),
                    Value::Array(p) => Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut notes = Vec::new();
    let strs = |v: &[String]| MetaValue::Array(v.iter().map(|s| MetaValue::Str(s.clone())).collect());
    if model["byte_fallback"].as_bool() == Some(true) {
        // SentencePiece: a merged token's score is minus its merge's rank, so the highest-scoring
        // pair is the first-ranked merge.
        let index: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
        let mut scores = vec![0f32; n];
        for (rank, m) in merges.iter().enumerate() {
            if let Some(&id) = m.split_once(' ').and_then(|(a, b)| index.get(format!("{a}{b}").as_str())) {
                if scores[id] == 0.0 {
                    scores[id] = -(rank as f32) - 1.0;
                }
            }
        }
        for (i, t) in tokens.iter().enumerate() {
            if t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') {
                types[i] = BYTE;
            }
        }
        if let Some(u) = model["unk_token"].as_str().and_then(|u| index.get(u)) {
            types[*u] = UNKNOWN;
        }
        w.set("tokenizer.ggml.model", MetaValue::Str("llama".into()));
        w.set("tokenizer.ggml.pre", MetaValue::Str("default".into()));
        w.set("tokenizer.ggml.tokens", strs(&tokens));
        w.set("tokenizer.ggml.scores", MetaValue::Array(scores.into_iter().map(MetaValue::F32).collect()));
        let prepends = tj["normalizer"].to_string().contains("\"Prepend\"");
        w.set("tokenizer.ggml.add_space_prefix", MetaValue::Bool(prepends));
    } else {
        let pre = detect_pre(&tj["pre_tokenizer"]).unwrap_or_else(|| {
            notes.push(format!("pre-tokenizer {} is not one exo recognises; GGUF gets llama.cpp's default", tj["pre_tokenizer"]));
            "default"
        });
        w.set("tokenizer.ggml.model", MetaValue::Str("gpt2".into()));
        w.set("tokenizer.ggml.pre", MetaValue::Str(pre.into()));
        w.set("tokenizer.ggml.tokens", strs(&tokens));
        w.set("tokenizer.ggml.merges", strs(&merges));
    }
    w.set("tokenizer.ggml.token_type", MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()));
    special_tokens(h, &tj, &tokens, w)?;
    Ok(notes)
}

/// The llama.cpp pre-tokenizer name of a byte-level `pre_tokenizer`.
fn detect_pre(p: &Value) -> Option<&'static str> {
    let parts: Vec<&Value> = match p["type"].as_str()? {
        "Sequence" => p["pretokenizers"].as_array()?.iter().collect(),
        _ => vec![p],
    };
    match parts.as_slice() {
        [bl] if bl["type"] == "ByteLevel" && bl["use_regex"] != false => Some("gpt2"),
        [d, bl] if d["type"] == "Digits" && d["individual_digits"] == true && bl["type"] == "ByteLevel" => Some("smollm"),
        [s, bl] if s["type"] == "Split" && bl["type"] == "ByteLevel" => match s["pattern"]["Regex"].as_str()? {
            QWEN2_RE => Some("qwen2"),
            LLAMA3_RE => Some("llama-bpe"),
            _ => None,
        },
        _ => None,
    }
}

/// BOS/EOS ids, `add_bos_token` and the chat template from `tokenizer_config.json` and
/// `generation_config.json`.
fn special_tokens(h: &HfModelDir, tj: &Value, tokens: &[String], w: &mut GgufWriter) -> Result<(), ModelError> {
    let cfg = h.optional_json("tokenizer_config.json")?.unwrap_or(Value::Null);
    let gen = h.optional_json("generation_config.json")?.unwrap_or(Value::Null);
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    };
    let id_of = |t: Option<String>| t.and_then(|t| tokens.iter().position(|x| *x == t)).map(|i| i as u32);
    let first_id = |v: &Value| v.as_u64().or_else(|| v.as_array()?.first()?.as_u64()).map(|v| v as u32);
    let bos = id_of(text(&cfg["bos_token"])).or_else(|| first_id(&gen["bos_token_id"])).or_else(|| first_id(&h.config()["bos_token_id"]));
    let eos = id_of(text(&cfg["eos_token"])).or_else(|| first_id(&gen["eos_token_id"])).or_else(|| first_id(&h.config()["eos_token_id"]));
    if let Some(b) = bos {
        w.set("tokenizer.ggml.bos_token_id", MetaValue::U32(b));
    }
    if let Some(e) = eos {
        w.set("tokenizer.ggml.eos_token_id", MetaValue::U32(e));
    }
    // add_bos_token, else whether the post-processor puts BOS in front.
    let add_bos = cfg["add_bos_token"]
        .as_bool()
        .unwrap_or_else(|| tj["post_processor"]["type"] == "TemplateProcessing" && bos.is_some());
    w.set("tokenizer.ggml.add_bos_token", MetaValue::Bool(add_bos));
    let template = match &cfg["chat_template"] {
        Value::String(s) => Some(s.clone()),
        _ => std::fs::read_to_string(h.dir().join("chat_template.jinja")).ok(),
    };
    if let Some(t) = template {
        w.set("tokenizer.chat_template", MetaValue::Str(t));
    }
    Ok(())
}
