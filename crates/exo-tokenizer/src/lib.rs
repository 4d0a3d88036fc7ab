//! Text ↔ token ids, and chat templates.
//!
//! - [`Tokenizer::from_gguf`] reads the vocabulary in a GGUF file's metadata and tokenizes exactly
//!   as llama.cpp does (byte-level BPE with llama.cpp's per-model pre-tokenizers, or SentencePiece
//!   BPE), including how special-token texts in the input are handled.
//! - [`Tokenizer::from_hf_dir`] wraps a Hugging Face `tokenizer.json` (via the `tokenizers` crate).
//! - [`StreamDecoder`] turns generated ids into text as they come, never splitting a UTF-8
//!   character.
//! - [`ChatTemplate`] renders Hugging Face chat templates as `transformers` (jinja2) does.

#![warn(missing_docs)]

mod chat;
mod encode;
mod error;
mod hf;
mod pretok;
mod pyfmt;
mod special;
mod stream;
mod unicode;
mod vocab;

use std::sync::Arc;

pub use vocab::EOG_TEXTS;
pub use chat::{ChatMessage, ChatTemplate};
pub use error::TokenizerError;
pub use stream::StreamDecoder;

use chat::Fallback;
use hf::HfVocab;
use vocab::Vocab;

/// A tokenizer: a GGUF vocabulary or a Hugging Face `tokenizer.json`, with its special ids and
/// chat template. Cloning is cheap (the data is shared).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

// One value per tokenizer, behind an Arc: the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Gguf(Vocab),
    Hf(HfVocab),
}

struct Inner {
    backend: Backend,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    eog: Vec<u32>,
    template: Option<ChatTemplate>,
    bos_text: String,
    eos_text: String,
    notes: Vec<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner.backend {
            Backend::Gguf(_) => "gguf",
            Backend::Hf(_) => "tokenizer.json",
        };
        write!(f, "Tokenizer({kind}, {} tokens)", self.vocab_size())
    }
}

impl Tokenizer {
    /// Loads the tokenizer stored in a GGUF file's `tokenizer.*` metadata.
    pub fn from_gguf(g: &exo_formats::GgufFile) -> Result<Self, TokenizerError> {
        let vocab = Vocab::from_gguf(g)?;
        let text =
            |id: Option<u32>| id.and_then(|i| vocab.texts.get(i as usize)).map(|t| t.to_string()).unwrap_or_default();
        let (bos_text, eos_text) = (text(vocab.bos), text(vocab.eos));
        // A template that does not compile (a Jinja feature minijinja lacks, say) should not make
        // the model unusable for plain completion: it is reported in `notes` instead.
        let mut notes = vocab.notes.clone();
        let template = match g.get("tokenizer.chat_template").map(|v| (v.as_str(), v.type_name())) {
            None => None,
            Some((None, ty)) => {
                notes.push(format!("tokenizer.chat_template is {ty}, expected a string; ignored"));
                None
            }
            Some((Some(src), _)) => match ChatTemplate::new(src, &bos_text, &eos_text) {
                Ok(t) => Some(t),
                Err(e) => {
                    notes.push(format!("tokenizer.chat_template does not compile ({e}); ignored"));
                    None
                }
            },
        };
        let inner = Inner {
            bos: vocab.bos,
            eos: vocab.eos,
            add_bos: vocab.add_bos,
            eog: vocab.eog.clone(),
            template,
            bos_text,
            eos_text,
            notes,
            backend: Backend::Gguf(vocab),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Loads `tokenizer.json` of a Hugging Face model directory, with `tokenizer_config.json`
    /// (chat template, BOS/EOS texts, `add_bos_token`) and `generation_config.json` (EOS ids).
    pub fn from_hf_dir(h: &exo_formats::HfModelDir) -> Result<Self, TokenizerError> {
        let l = hf::load(h)?;
        let template = match &l.template {
            None => None,
            Some(src) => {
                Some(ChatTemplate::new(src, &l.bos_text, &l.eos_text).map_err(|e| TokenizerError::Invalid {
                    path: h.dir().join("tokenizer_config.json"),
                    key: "chat_template".into(),
                    problem: e.to_string(),
                })?)
            }
        };
        let inner = Inner {
            backend: Backend::Hf(l.vocab),
            bos: l.bos,
            eos: l.eos,
            add_bos: l.add_bos,
            eog: l.eog,
            template,
            bos_text: l.bos_text,
            eos_text: l.eos_text,
            notes: Vec::new(),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Tokenizes `text` as llama.cpp's `llama_tokenize(text, add_special = add_bos, parse_special)`:
    /// BOS (and EOS) are added only when `add_bos` is set *and* the vocabulary asks for them;
    /// with `parse_special` the texts of control tokens (`<|im_start|>`, ...) become those tokens,
    /// without it only user-defined tokens are matched as such.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        match &self.inner.backend {
            Backend::Gguf(v) => v.encode(text, add_bos, parse_special).map_err(TokenizerError::Encode),
            Backend::Hf(h) => {
                let tok = if parse_special { &h.with_special } else { &h.literal };
                tok.encode(text, add_bos)
                    .map(|e| e.get_ids().to_vec())
                    .map_err(|e| TokenizerError::Encode(e.to_string()))
            }
        }
    }

    /// Detokenizes `ids`; invalid UTF-8 becomes U+FFFD. With `skip_special`, control and unknown
    /// tokens (and, for `tokenizer.json`, special added tokens) render as nothing, as llama.cpp's
    /// `token_to_piece(.., special = false)`; otherwise as their text. Unknown ids are skipped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        if let Backend::Hf(h) = &self.inner.backend {
            if let Ok(s) = h.with_special.decode(ids, skip_special) {
                return s;
            }
        }
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if !(skip_special && self.is_special(id)) {
                bytes.extend_from_slice(self.piece(id));
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The bytes token `id` stands for (llama.cpp's `token_to_piece` with special tokens
    /// rendered); empty for an unknown id.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.piece(id).to_vec()
    }

    pub(crate) fn piece(&self, id: u32) -> &[u8] {
        let pieces = match &self.inner.backend {
            Backend::Gguf(v) => &v.pieces,
            Backend::Hf(h) => &h.pieces,
        };
        pieces.get(id as usize).map_or(&[], |p| p)
    }

    /// Whether `id` is a control or unknown token (`<|im_start|>`, `<unk>`, ...), which renders
    /// as nothing when special tokens are skipped; user-defined tokens such as `<tool_call>` are
    /// not.
    pub fn is_special(&self, id: u32) -> bool {
        match &self.inner.backend {
            Backend::Gguf(v) => v.is_special_piece(id),
            Backend::Hf(h) => h.special.get(id as usize).copied().unwrap_or(false),
        }
    }

    /// Number of tokens (ids are `0..vocab_size()`).
    pub fn vocab_size(&self) -> usize {
        match &self.inner.backend {
            Backend::Gguf(v) => v.len(),
            Backend::Hf(h) => h.pieces.len(),
        }
    }

    /// The beginning-of-sequence token.
    pub fn bos_id(&self) -> Option<u32> {
        self.inner.bos
    }

    /// The end-of-sequence token.
    pub fn eos_id(&self) -> Option<u32> {
        self.inner.eos
    }

    /// Whether `encode(.., add_bos = true, ..)` puts BOS in front.
    pub fn adds_bos(&self) -> bool {
        self.inner.add_bos
    }

    /// Whether generating `id` ends the generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.inner.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation ids, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.inner.eog
    }

    /// The id of the token whose text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.inner.backend {
            Backend::Gguf(v) => v.to_id.get(text).copied(),
            Backend::Hf(h) => h.with_special.token_to_id(text),
        }
    }

    /// The text of token `id` as stored in the vocabulary (e.g. `Ġthe`, `▁the`, `<0x0A>`).
    pub fn token_text(&self, id: u32) -> Option<String> {
        match &self.inner.backend {
            Backend::Gguf(v) => v.texts.get(id as usize).map(|t| t.to_string()),
            Backend::Hf(h) => h.with_special.id_to_token(id),
        }
    }

    /// The model's own chat template, if it has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.inner.template.as_ref()
    }

    /// The model's chat template, or a built-in one: Gemma's turn format if the vocabulary has
    /// `<start_of_turn>`/`<end_of_turn>`, ChatML if it has `<|im_start|>`/`<|im_end|>`, else a
    /// plain `User: ...\nAssistant:` format. The built-ins leave BOS out (`encode` adds it).
    pub fn chat_template_or_fallback(&self) -> ChatTemplate {
        if let Some(t) = &self.inner.template {
            return t.clone();
        }
        let has = |a: &str, b: &str| self.token_id(a).is_some() && self.token_id(b).is_some();
        let kind = if has("<start_of_turn>", "<end_of_turn>") {
            Fallback::Gemma
        } else if has("<|im_start|>", "<|im_end|>") {
            Fallback::ChatMl
        } else {
            Fallback::Plain
        };
        ChatTemplate::fallback(kind, &self.inner.bos_text, &self.inner.eos_text)
    }

    /// Remarks about the model's tokenizer data that did not stop it from loading: a GGUF
    /// pre-tokenizer exo does not implement (replaced with llama.cpp's default), or a chat
    /// template that does not compile (then [`Tokenizer::chat_template`] is `None`).
    pub fn notes(&self) -> &[String] {
        &self.inner.notes
    }
}
