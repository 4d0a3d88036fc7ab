//! A GGUF vocabulary: token texts, attributes, special ids and end-of-generation set, loaded the
//! way llama.cpp's `llama_vocab::impl::load` does.

use std::collections::HashMap;
use std::path::Path;

use exo_formats::{GgufFile, MetaValue};

use crate::pretok::{pre_info, PreTokenizer, PreType};
use crate::special::{SpecialMatcher, SpecialToken};
use crate::unicode::char_to_byte;
use crate::TokenizerError;

/// llama.cpp's `llama_token_attr` bits.
pub(crate) mod attr {
    pub(crate) const UNKNOWN: u32 = 1 << 0;
    pub(crate) const UNUSED: u32 = 1 << 1;
    pub(crate) const NORMAL: u32 = 1 << 2;
    pub(crate) const CONTROL: u32 = 1 << 3;
    pub(crate) const USER_DEFINED: u32 = 1 << 4;
    pub(crate) const BYTE: u32 = 1 << 5;
    pub(crate) const LSTRIP: u32 = 1 << 7;
    pub(crate) const RSTRIP: u32 = 1 << 8;
}

/// Texts llama.cpp recognizes as end-of-turn tokens when the GGUF names none.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const FIM_PRE: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP: &[&str] = &["<|file_sep|>"];
/// Texts that end generation, whatever the GGUF says (llama.cpp's text-based EOG list); such
/// tokens are control tokens even where the GGUF types them as normal.
pub const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// The tokenization algorithm and its data.
pub(crate) enum Algo {
    /// Byte-level BPE (`tokenizer.ggml.model = gpt2`).
    Bpe {
        /// Merge rank by "left right" text (the merge line as stored in the GGUF).
        ranks: HashMap<Box<str>, u32>,
        /// Word splitter.
        pre: PreTokenizer,
        /// Whole words found in the vocabulary skip merging (Llama 3).
        ignore_merges: bool,
    },
    /// SentencePiece BPE (`tokenizer.ggml.model = llama`).
    Spm {
        /// Token for each byte value (`<0xXX>`), for byte fallback.
        byte_tokens: Box<[Option<u32>; 256]>,
    },
}

/// A loaded GGUF vocabulary.
pub(crate) struct Vocab {
    pub(crate) texts: Vec<Box<str>>,
    pub(crate) scores: Vec<f32>,
    pub(crate) attrs: Vec<u32>,
    pub(crate) to_id: HashMap<Box<str>, u32>,
    /// llama.cpp's `token_to_piece(id, special = true)` bytes.
    pub(crate) pieces: Vec<Box<[u8]>>,
    pub(crate) algo: Algo,
    pub(crate) special: SpecialMatcher,
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    pub(crate) unk: Option<u32>,
    pub(crate) add_bos: bool,
    pub(crate) add_eos: bool,
    pub(crate) add_space_prefix: bool,
    /// Sorted end-of-generation ids.
    pub(crate) eog: Vec<u32>,
    /// Non-fatal remarks about the file (e.g. an unknown pre-tokenizer replaced by the default).
    pub(crate) notes: Vec<String>,
}

fn missing(path: &Path, key: &str) -> TokenizerError {
    TokenizerError::Missing { path: path.to_path_buf(), key: key.to_string() }
}

fn invalid(path: &Path, key: &str, problem: impl Into<String>) -> TokenizerError {
    TokenizerError::Invalid { path: path.to_path_buf(), key: key.to_string(), problem: problem.into() }
}

/// An optional array key whose length must cover the vocabulary.
fn opt_array<'a>(g: &'a GgufFile, key: &str, n: usize) -> Result<Option<&'a [MetaValue]>, TokenizerError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => {
            let a = v
                .as_array()
                .ok_or_else(|| invalid(g.path(), key, format!("is {}, expected an array", v.type_name())))?;
            if a.len() < n {
                return Err(invalid(g.path(), key, format!("has {} entries for {n} tokens", a.len())));
            }
            Ok(Some(a))
        }
    }
}

/// An id key: `Ok(None)` when absent, the id when in range; out-of-range ids keep the default
/// (llama.cpp warns and does the same).
fn opt_id(g: &GgufFile, key: &str, n: usize, default: Option<u32>) -> Option<u32> {
    match g.opt_u64(key) {
        Some(id) if (id as usize) < n => u32::try_from(id).ok(),
        _ => default.filter(|&d| (d as usize) < n),
    }
}

impl Vocab {
    /// Loads the vocabulary from GGUF metadata.
    pub(crate) fn from_gguf(g: &GgufFile) -> Result<Self, TokenizerError> {
        let path = g.path();
        let key = "tokenizer.ggml.model";
        let model = g.get(key).ok_or_else(|| missing(path, key))?;
        let model =
            model.as_str().ok_or_else(|| invalid(path, key, format!("is {}, expected a string", model.type_name())))?;
        let is_bpe = match model {
            "gpt2" => true,
            "llama" => false,
            other => {
                return Err(TokenizerError::UnsupportedModel { path: path.to_path_buf(), model: other.to_string() })
            }
        };
        let mut notes = Vec::new();

        let key = "tokenizer.ggml.tokens";
        let list = g.get(key).ok_or_else(|| missing(path, key))?;
        let list =
            list.as_array().ok_or_else(|| invalid(path, key, format!("is {}, expected an array", list.type_name())))?;
        if list.is_empty() {
            return Err(invalid(path, key, "is empty"));
        }
        if list.len() > u32::MAX as usize / 2 {
            return Err(invalid(path, key, format!("has {} tokens, more than exo supports", list.len())));
        }
        let n = list.len();
        let mut texts: Vec<Box<str>> = Vec::with_capacity(n);
        let mut to_id: HashMap<Box<str>, u32> = HashMap::with_capacity(n);
        for (i, v) in list.iter().enumerate() {
            let t = v
                .as_str()
                .ok_or_else(|| invalid(path, key, format!("entry {i} is {}, expected a string", v.type_name())))?;
            // llama.cpp gives empty tokens a placeholder text so that they stay addressable.
            let t: Box<str> = if t.is_empty() { format!("[EMPTY_{i}]").into() } else { t.into() };
            if let Some(prev) = to_id.insert(t.clone(), i as u32) {
                return Err(invalid(path, key, format!("duplicate token {t:?} at ids {prev} and {i}")));
            }
            texts.push(t);
        }

        let key = "tokenizer.ggml.scores";
        let scores = match opt_array(g, key, n)? {
            None => vec![0.0; n],
            Some(a) => a[..n]
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_f64().map(|s| s as f32).ok_or_else(|| invalid(path, key, format!("entry {i} is not a number")))
                })
                .collect::<Result<_, _>>()?,
        };
        let key = "tokenizer.ggml.token_type";
        let mut attrs: Vec<u32> = match opt_array(g, key, n)? {
            None => vec![attr::NORMAL; n],
            Some(a) => a[..n]
                .iter()
                .map(|v| match v.as_i64() {
                    Some(1) => attr::NORMAL,
                    Some(2) => attr::UNKNOWN,
                    Some(3) => attr::CONTROL,
                    Some(4) => attr::USER_DEFINED,
                    Some(5) => attr::UNUSED,
                    Some(6) => attr::BYTE,
                    _ => 0,
                })
                .collect(),
        };

        let (algo, mut add_bos, mut add_space_prefix, def_bos, def_eos, def_unk);
        if is_bpe {
            // llama.cpp treats an empty value like a missing one.
            let pre_name = g.opt_str("tokenizer.ggml.pre").filter(|p| !p.is_empty());
            let info = match pre_name.map(|p| (p, pre_info(p))) {
                None => {
                    notes.push("tokenizer.ggml.pre is missing; using llama.cpp's default pre-tokenizer".to_string());
                    pre_info("default")
                }
                Some((_, Some(info))) => Some(info),
                Some((p, None)) => {
                    notes.push(format!(
                        "tokenizer.ggml.pre '{p}' is not implemented; using llama.cpp's default pre-tokenizer \
                         (tokenization may differ from the model's own)"
                    ));
                    pre_info("default")
                }
            };
            let (pre_type, ignore_merges, pre_add_bos) =
                info.map_or((PreType::Default, false, false), |i| (i.pre, i.ignore_merges, i.add_bos));
            let pre = PreTokenizer::new(pre_type).map_err(|e| invalid(path, "tokenizer.ggml.pre", e))?;
            let key = "tokenizer.ggml.merges";
            let merges = g.get(key).ok_or_else(|| missing(path, key))?;
            let merges = merges
                .as_array()
                .ok_or_else(|| invalid(path, key, format!("is {}, expected an array", merges.type_name())))?;
            let mut ranks: HashMap<Box<str>, u32> = HashMap::with_capacity(merges.len());
            for (i, m) in merges.iter().enumerate() {
                let m = m.as_str().ok_or_else(|| invalid(path, key, format!("entry {i} is not a string")))?;
                // llama.cpp splits at the first space after the first byte; a line without one
                // can never match two non-empty symbols.
                if m.bytes().skip(1).any(|b| b == b' ') {
                    ranks.entry(m.into()).or_insert(i as u32);
                }
            }
            algo = Algo::Bpe { ranks, pre, ignore_merges };
            add_bos = pre_add_bos;
            add_space_prefix = false;
            (def_bos, def_eos, def_unk) = (Some(11), Some(11), None);
        } else {
            let mut byte_tokens = Box::new([None; 256]);
            for (b, slot) in byte_tokens.iter_mut().enumerate() {
                *slot = to_id.get(format!("<0x{b:02X}>").as_str()).copied().or_else(|| {
                    // llama.cpp falls back to the byte itself as a one-byte token text.
                    (b < 0x80).then(|| to_id.get(&*String::from(b as u8 as char)).copied()).flatten()
                });
            }
            algo = Algo::Spm { byte_tokens };
            add_bos = true;
            add_space_prefix = true;
            (def_bos, def_eos, def_unk) = (Some(1), Some(2), Some(0));
        }
        if let Some(v) = g.opt_bool("tokenizer.ggml.add_space_prefix") {
            add_space_prefix = v;
        }

        let bos = opt_id(g, "tokenizer.ggml.bos_token_id", n, def_bos);
        let eos = opt_id(g, "tokenizer.ggml.eos_token_id", n, def_eos);
        let mut eot = opt_id(g, "tokenizer.ggml.eot_token_id", n, None);
        let mut eom = opt_id(g, "tokenizer.ggml.eom_token_id", n, None);
        let unk = opt_id(g, "tokenizer.ggml.unknown_token_id", n, def_unk);
        let fim_id = |new: &str, old: &str| opt_id(g, old, n, opt_id(g, new, n, None));
        let mut fim_pre = fim_id("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id");
        let mut fim_suf = fim_id("tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id");
        let mut fim_mid = fim_id("tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id");
        let mut fim_pad = opt_id(g, "tokenizer.ggml.fim_pad_token_id", n, None);
        let mut fim_rep = opt_id(g, "tokenizer.ggml.fim_rep_token_id", n, None);
        let mut fim_sep = opt_id(g, "tokenizer.ggml.fim_sep_token_id", n, None);

        add_bos = g.opt_bool("tokenizer.ggml.add_bos_token").unwrap_or(add_bos);
        let add_eos = g.opt_bool("tokenizer.ggml.add_eos_token").unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(invalid(
                path,
                "tokenizer.ggml.add_bos_token",
                "is true, but tokenizer.ggml.bos_token_id is not set",
            ));
        }
        if add_eos && eos.is_none() {
            return Err(invalid(
                path,
                "tokenizer.ggml.add_eos_token",
                "is true, but tokenizer.ggml.eos_token_id is not set",
            ));
        }

        // Special tokens found by text when the GGUF does not name them; llama.cpp marks them
        // control tokens. It walks a hash map, so with several candidates its pick is arbitrary;
        // here the lowest id wins.
        for id in 0..n {
            let t = &*texts[id];
            let slots: [(&mut Option<u32>, &[&str]); 8] = [
                (&mut eot, EOT_TEXTS),
                (&mut eom, &["<|eom_id|>"]),
                (&mut fim_pre, FIM_PRE),
                (&mut fim_suf, FIM_SUF),
                (&mut fim_mid, FIM_MID),
                (&mut fim_pad, FIM_PAD),
                (&mut fim_rep, FIM_REP),
                (&mut fim_sep, FIM_SEP),
            ];
            for (slot, list) in slots {
                if slot.is_none() && list.contains(&t) {
                    *slot = Some(id as u32);
                    attrs[id] |= attr::CONTROL;
                }
            }
        }
        for (a, t) in attrs.iter_mut().zip(&texts) {
            if *a & attr::CONTROL != 0 && t.contains("unused") {
                *a |= attr::UNUSED;
            }
        }
        let mut eog: Vec<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
        for (id, t) in texts.iter().enumerate() {
            if EOG_TEXTS.contains(&&**t) {
                eog.push(id as u32);
                attrs[id] |= attr::CONTROL;
            }
        }
        // gpt-oss: these must always be rendered.
        for name in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&id) = to_id.get(name) {
                attrs[id as usize] = attr::USER_DEFINED;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();
        let eog_has = |eog: &[u32], t: &str| eog.iter().any(|&id| &*texts[id as usize] == t);
        // o200k_harmony / solar-open: <|end|> ends a message, not the generation.
        let has = |t: &str| eog_has(&eog, t);
        if (has("<|return|>") && has("<|call|>") || has("<|calls|>") && has("<|flush|>")) && has("<|end|>") {
            if let Some(&end) = to_id.get("<|end|>") {
                eog.retain(|&id| id != end);
                attrs[end as usize] = attr::USER_DEFINED;
            }
        }
        if eog_has(&eog, "<|tool_response>") && eog_has(&eog, "</s>") {
            if let Some(&s) = to_id.get("</s>") {
                eog.retain(|&id| id != s);
                attrs[s as usize] = attr::NORMAL;
            }
        }

        // Per-model strip attributes llama.cpp sets by model name.
        let name = g.opt_str("general.name").unwrap_or("").to_lowercase();
        let pre_name = g.opt_str("tokenizer.ggml.pre").unwrap_or("");
        let arch = g.opt_str("general.architecture").unwrap_or("");
        if ["jina-v2-de", "jina-v2-es", "jina-v2-code"].iter().any(|p| pre_name.contains(p))
            || ["nomic-bert-moe", "jina-bert-v3"].iter().any(|a| arch.contains(a))
        {
            set_bit(&mut attrs, &to_id, "<mask>", attr::LSTRIP, true);
        } else if name.contains("phi-3") || name.contains("phi3") {
            for a in attrs.iter_mut() {
                if *a & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0 {
                    *a |= attr::RSTRIP;
                }
            }
            set_bit(&mut attrs, &to_id, "</s>", attr::RSTRIP, true);
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                set_bit(&mut attrs, &to_id, t, attr::RSTRIP, false);
            }
        } else if name.contains("modern-bert") {
            set_bit(&mut attrs, &to_id, "[MASK]", attr::LSTRIP, true);
        }

        let special_attrs = attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN;
        let special = SpecialMatcher::new(
            (0..n)
                .filter(|&i| attrs[i] & special_attrs != 0)
                .map(|i| SpecialToken {
                    id: i as u32,
                    text: texts[i].to_string(),
                    needs_parse_special: attrs[i] & (attr::CONTROL | attr::UNKNOWN) != 0,
                    lstrip: attrs[i] & attr::LSTRIP != 0,
                    rstrip: attrs[i] & attr::RSTRIP != 0,
                })
                .collect(),
        )
        .map_err(|e| invalid(path, "tokenizer.ggml.tokens", e))?;

        let pieces = (0..n).map(|i| piece(&texts[i], attrs[i], is_bpe)).collect();
        Ok(Self {
            texts,
            scores,
            attrs,
            to_id,
            pieces,
            algo,
            special,
            bos,
            eos,
            unk,
            add_bos,
            add_eos,
            add_space_prefix,
            eog,
            notes,
        })
    }

    /// Number of tokens.
    pub(crate) fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether `id` is a control or unknown token (rendered empty when skipping specials).
    pub(crate) fn is_special_piece(&self, id: u32) -> bool {
        self.attrs.get(id as usize).is_some_and(|a| a & (attr::CONTROL | attr::UNKNOWN) != 0)
    }
}

/// Sets or clears attribute `bit` of the token with text `t`, if the vocabulary has it.
fn set_bit(attrs: &mut [u32], to_id: &HashMap<Box<str>, u32>, t: &str, bit: u32, on: bool) {
    if let Some(a) = to_id.get(t).and_then(|&id| attrs.get_mut(id as usize)) {
        *a = if on { *a | bit } else { *a & !bit };
    }
}

/// llama.cpp's `token_to_piece` with `special = true` for one token.
fn piece(text: &str, a: u32, is_bpe: bool) -> Box<[u8]> {
    if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
        return text.as_bytes().into();
    }
    if a & attr::NORMAL != 0 {
        if !is_bpe {
            return text.replace('\u{2581}', " ").into_bytes().into();
        }
        let mut out = Vec::with_capacity(text.len());
        for c in text.chars() {
            match char_to_byte(c) {
                Some(b) => out.push(b),
                None => {
                    // llama.cpp's llama_decode_text marks characters outside the byte alphabet.
                    out.extend_from_slice(b"[UNK_BYTE_0x");
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.extend_from_slice(format!("{b:02x}").as_bytes());
                    }
                    out.extend_from_slice(text.as_bytes());
                    out.push(b']');
                }
            }
        }
        return out.into();
    }
    if a & attr::BYTE != 0 {
        // llama.cpp reads the two hex digits after "<0x" with strtol.
        let hex = text.get(3..).unwrap_or("");
        let v = hex.chars().take(2).map_while(|c| c.to_digit(16)).fold(0u32, |acc, d| acc * 16 + d);
        return vec![v as u8].into();
    }
    Box::new([])
}
