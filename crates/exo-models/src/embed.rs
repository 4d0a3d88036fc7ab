//! Sentence embeddings from a sentence-transformers model directory.
//!
//! `modules.json` lists the pipeline: a Transformer (the [`Bert`] encoder at the directory root),
//! a Pooling module (`1_Pooling/config.json`: CLS token, mean or max over the tokens), and
//! optionally Normalize (unit L2 length). `sentence_bert_config.json` holds the token limit;
//! texts are truncated to it as sentence-transformers does, keeping `[CLS]` and `[SEP]`.

use std::path::Path;

use exo_formats::HfModelDir;
use exo_tokenizer::Tokenizer;
use serde_json::Value as Json;

use crate::bert::{Bert, BertConfig};
use crate::{ModelError, ModelInfo};

/// Tokens per forward pass: bounds the scratch memory of one pass (about 60 MB for MiniLM)
/// however many texts are embedded at once, while keeping the matrix products large.
const BATCH_TOKENS: usize = 4096;

/// How token vectors become one text vector (sentence-transformers' Pooling module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The first token's (`[CLS]`) vector.
    Cls,
    /// The average over the text's tokens, `[CLS]` and `[SEP]` included.
    Mean,
    /// The per-dimension maximum over the text's tokens.
    Max,
}

impl Pooling {
    /// The name sentence-transformers uses (`pooling_mode`).
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::Max => "max",
        }
    }
}

/// One text's embedding.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding {
    /// The vector, [`Embedder::dim`] long.
    pub vector: Vec<f32>,
    /// Tokens the text used after truncation, special tokens included (what APIs report as usage).
    pub tokens: usize,
}

/// A sentence-embedding model: tokenizer, BERT encoder, pooling and normalisation.
pub struct Embedder {
    bert: Bert,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
    lowercase: bool,
    max_tokens: usize,
    /// Special tokens the tokenizer puts after a text (`[SEP]`), kept when truncating.
    n_suffix: usize,
    info: ModelInfo,
}

/// Whether `path` is a directory holding an embedding model (`config.json` with `model_type`
/// "bert" or a `BertModel` architecture) rather than a text generator. Unreadable or invalid
/// directories answer `false`; loading them reports why.
pub fn is_embedding_model(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path.join("config.json")) else { return false };
    serde_json::from_str::<Json>(&text).is_ok_and(|cfg| is_bert_config(&cfg))
}

/// Whether a parsed `config.json` describes a BERT encoder.
pub(crate) fn is_bert_config(cfg: &Json) -> bool {
    let arch = cfg.get("architectures").and_then(Json::as_array);
    cfg.get("model_type").and_then(Json::as_str) == Some("bert")
        || arch.is_some_and(|a| a.iter().any(|x| x.as_str() == Some("BertModel")))
}

impl Embedder {
    /// Loads the sentence-transformers directory `dir`.
    pub fn load(dir: &Path) -> Result<Embedder, ModelError> {
        let h = HfModelDir::open(dir)?;
        let config_file = dir.join("config.json").display().to_string();
        if !is_bert_config(h.config()) {
            let ty = h.config().get("model_type").and_then(Json::as_str).unwrap_or("(none)");
            return Err(ModelError::Config {
                file: config_file,
                what: format!("model_type '{ty}' is not an embedding model exo runs (supported: bert)"),
            });
        }
        let modules = Modules::read(&h)?;
        let bert = Bert::load(&h)?;
        let pooling = read_pooling(&h, &modules.pooling_dir, bert.config())?;
        let (max_tokens, lowercase) = read_limits(&h, bert.config())?;
        let tokenizer = Tokenizer::from_hf_dir(&h)?;
        let tokenizer_file = dir.join("tokenizer.json").display().to_string();
        if tokenizer.vocab_size() > bert.config().vocab_size {
            return Err(ModelError::Config {
                file: tokenizer_file,
                what: format!("{} tokens, more than config.json's vocab_size {}", tokenizer.vocab_size(), bert.config().vocab_size),
            });
        }
        let (n_prefix, n_suffix) = special_tokens(&tokenizer, &tokenizer_file)?;
        if n_prefix + n_suffix >= max_tokens {
            return Err(ModelError::Config {
                file: tokenizer_file,
                what: format!("{} special tokens per text leave no room within the {max_tokens}-token limit", n_prefix + n_suffix),
            });
        }
        Ok(Embedder {
            bert,
            tokenizer,
            pooling,
            normalize: modules.normalize,
            lowercase,
            max_tokens,
            n_suffix,
            info: crate::hf_info(&h),
        })
    }

    /// Embeds each text, truncated to [`Embedder::max_tokens`]; the result is in input order.
    ///
    /// Texts are run together in batches, so embedding many at once is faster than one by one;
    /// the vectors are the same either way, up to float rounding. A text that tokenizes to nothing
    /// (possible only with a tokenizer that adds no special tokens) is an error naming its index.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Embedding>, ModelError> {
        let seqs = texts.iter().enumerate().map(|(i, t)| self.tokenize(i, t)).collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(texts.len());
        let mut rest = &seqs[..];
        while !rest.is_empty() {
            let mut n = 0;
            let mut tokens = 0;
            while n < rest.len() && (n == 0 || tokens + rest[n].len() <= BATCH_TOKENS) {
                tokens += rest[n].len();
                n += 1;
            }
            let (batch, tail) = rest.split_at(n);
            let hidden = self.bert.forward(batch)?;
            let mut start = 0;
            for seq in batch {
                let rows = &hidden[start * self.dim()..(start + seq.len()) * self.dim()];
                start += seq.len();
                let mut vector = self.pool(rows);
                if self.normalize {
                    // torch.nn.functional.normalize: divide by max(‖v‖, 1e-12).
                    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                    vector.iter_mut().for_each(|v| *v /= norm);
                }
                out.push(Embedding { vector, tokens: seq.len() });
            }
            rest = tail;
        }
        Ok(out)
    }

    /// The ids of text number `index` as the model sees them: lowercased if the model asks for
    /// it, special-token texts parsed (as the tokenizers library does by default), truncated.
    fn tokenize(&self, index: usize, text: &str) -> Result<Vec<u32>, ModelError> {
        let mut ids = self.encode(text)?;
        if ids.is_empty() {
            return Err(ModelError::EmptyText { index });
        }
        if ids.len() > self.max_tokens {
            // Cut the text, not the special tokens around it, as the tokenizers library's
            // truncation does before its post-processor adds them.
            ids.drain(self.max_tokens - self.n_suffix..ids.len() - self.n_suffix);
        }
        Ok(ids)
    }

    /// The ids of `text` before truncation, special tokens included.
    fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let ids = if self.lowercase {
            self.tokenizer.encode(&text.to_lowercase(), true, true)?
        } else {
            self.tokenizer.encode(text, true, true)?
        };
        Ok(ids)
    }

    /// Tokens `text` takes before truncation, special tokens included: what an API that refuses
    /// over-long texts instead of cutting them compares with [`Embedder::max_tokens`].
    pub fn count_tokens(&self, text: &str) -> Result<usize, ModelError> {
        Ok(self.encode(text)?.len())
    }

    /// One vector from a text's token vectors (`rows`: at least one row of [`Embedder::dim`]).
    fn pool(&self, rows: &[f32]) -> Vec<f32> {
        let (first, rest) = rows.split_at(self.dim());
        let mut acc = first.to_vec();
        match self.pooling {
            Pooling::Cls => {}
            Pooling::Mean => {
                rest.chunks_exact(self.dim()).for_each(|row| exo_kernels::ops::add_inplace(&mut acc, row));
                let n = (rows.len() / self.dim()) as f32;
                acc.iter_mut().for_each(|v| *v /= n);
            }
            Pooling::Max => {
                for row in rest.chunks_exact(self.dim()) {
                    acc.iter_mut().zip(row).for_each(|(a, &b)| *a = a.max(b));
                }
            }
        }
        acc
    }

    /// Length of every vector.
    pub fn dim(&self) -> usize {
        self.bert.config().hidden
    }

    /// Most tokens of a text that count; the rest is cut off.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The pooling the model was trained with.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether vectors are scaled to unit length (a Normalize module).
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// The encoder's hyper-parameters.
    pub fn config(&self) -> &BertConfig {
        self.bert.config()
    }

    /// The tokenizer (to count tokens without embedding).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Where the model came from, its size on disk and parameter count.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }
}

/// What `modules.json` asks for beyond the encoder.
struct Modules {
    /// The Pooling module's folder (`1_Pooling`).
    pooling_dir: String,
    normalize: bool,
}

impl Modules {
    /// Reads `modules.json`: Transformer at the root, then Pooling, then optionally Normalize.
    fn read(h: &HfModelDir) -> Result<Self, ModelError> {
        let file = h.dir().join("modules.json").display().to_string();
        let bad = |what: String| ModelError::Config { file: file.clone(), what };
        let json = h.optional_json("modules.json")?.ok_or_else(|| {
            bad("not found: a sentence-transformers directory lists its Transformer, Pooling and Normalize modules there".into())
        })?;
        let list = json.as_array().ok_or_else(|| bad("expected a list of modules".into()))?;
        let mut kinds = Vec::with_capacity(list.len());
        let mut pooling_dir = None;
        for (i, m) in list.iter().enumerate() {
            let ty = m.get("type").and_then(Json::as_str).ok_or_else(|| bad(format!("module {i}: field 'type' is missing")))?;
            // "sentence_transformers.models.Pooling" in older files, other module paths in newer ones.
            let kind = ty.rsplit('.').next().unwrap_or(ty);
            let path = m.get("path").and_then(Json::as_str).unwrap_or("");
            match kind {
                "Transformer" if path.is_empty() => {}
                "Transformer" => {
                    let what = format!("module {i}: a Transformer in '{path}/' is not supported: exo reads the encoder from the root");
                    return Err(bad(what));
                }
                "Pooling" => pooling_dir = Some(path.to_string()),
                "Normalize" => {}
                _ => return Err(bad(format!("module {i}: '{ty}' is not supported (exo runs Transformer, Pooling, Normalize)"))),
            }
            kinds.push(kind);
        }
        if kinds.first() != Some(&"Transformer") || kinds.get(1) != Some(&"Pooling") || kinds.len() > 2 && kinds[2..] != ["Normalize"] {
            return Err(bad(format!("modules {kinds:?}: exo runs Transformer, Pooling and an optional Normalize, in that order")));
        }
        let pooling_dir = pooling_dir.unwrap_or_default();
        if pooling_dir.is_empty() || pooling_dir.contains("..") || Path::new(&pooling_dir).is_absolute() {
            return Err(bad(format!("the Pooling module's path '{pooling_dir}' must be a folder inside the model directory")));
        }
        Ok(Modules { pooling_dir, normalize: kinds.len() == 3 })
    }
}

/// Reads the Pooling module's `config.json`: the newer `pooling_mode` ("mean", or a one-entry
/// list) or the older `pooling_mode_*_tokens` flags, exactly one of CLS, mean and max.
fn read_pooling(h: &HfModelDir, dir: &str, c: &BertConfig) -> Result<Pooling, ModelError> {
    let rel = format!("{dir}/config.json");
    let file = h.dir().join(&rel).display().to_string();
    let bad = |what: String| ModelError::Config { file: file.clone(), what };
    let cfg = h.optional_json(&rel)?.ok_or_else(|| bad("not found: modules.json lists a Pooling module here".into()))?;
    let modes: Vec<String> = match cfg.get("pooling_mode") {
        Some(Json::String(s)) => vec![s.clone()],
        Some(Json::Array(a)) => a.iter().map(|v| v.as_str().unwrap_or("?").to_string()).collect(),
        Some(other) => return Err(bad(format!("field 'pooling_mode' is {other}, expected a mode name"))),
        None => {
            const FLAGS: [(&str, &str); 6] = [
                ("pooling_mode_cls_token", "cls"),
                ("pooling_mode_mean_tokens", "mean"),
                ("pooling_mode_max_tokens", "max"),
                ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
                ("pooling_mode_weightedmean_tokens", "weightedmean"),
                ("pooling_mode_lasttoken", "lasttoken"),
            ];
            FLAGS.iter().filter(|(k, _)| cfg.get(*k).and_then(Json::as_bool) == Some(true)).map(|(_, m)| m.to_string()).collect()
        }
    };
    let pooling = match modes.as_slice() {
        [m] if m == "cls" => Pooling::Cls,
        [m] if m == "mean" => Pooling::Mean,
        [m] if m == "max" => Pooling::Max,
        _ => return Err(bad(format!("pooling mode {modes:?} is not supported (exo pools with exactly one of cls, mean, max)"))),
    };
    let dim_field = ["embedding_dimension", "word_embedding_dimension"].into_iter().find_map(|k| Some((k, cfg.get(k)?.as_u64()?)));
    if let Some((field, dim)) = dim_field {
        if dim as usize != c.hidden {
            return Err(bad(format!("field '{field}' is {dim} but the encoder's hidden_size is {}", c.hidden)));
        }
    }
    Ok(pooling)
}

/// The token limit and lowercasing, from `sentence_bert_config.json` (`max_seq_length`,
/// `do_lower_case`); without it, as sentence-transformers does: tokenizer_config.json's
/// `model_max_length` capped at the position embeddings.
fn read_limits(h: &HfModelDir, c: &BertConfig) -> Result<(usize, bool), ModelError> {
    let st_file = "sentence_bert_config.json";
    let st = h.optional_json(st_file)?.unwrap_or(Json::Null);
    let lowercase = st.get("do_lower_case").and_then(Json::as_bool).unwrap_or(false);
    let max = match st.get("max_seq_length").filter(|v| !v.is_null()) {
        Some(v) => {
            let bad = |what: String| ModelError::Config { file: h.dir().join(st_file).display().to_string(), what };
            let positive = v.as_u64().filter(|&m| m > 0);
            let max = positive.ok_or_else(|| bad(format!("field 'max_seq_length' is {v}, expected a positive integer")))?;
            if max as usize > c.max_positions {
                return Err(bad(format!(
                    "max_seq_length {max} exceeds the {} position embeddings of config.json (max_position_embeddings)",
                    c.max_positions
                )));
            }
            max as usize
        }
        None => {
            let tokenizer_max = h.optional_json("tokenizer_config.json")?.and_then(|t| t.get("model_max_length")?.as_f64());
            // Tokenizers without a limit store a huge float (1e30) here.
            tokenizer_max.map_or(c.max_positions, |m| (m.max(1.0) as usize).min(c.max_positions))
        }
    };
    Ok((max, lowercase))
}

/// How many special tokens encoding puts before and after a text's own tokens.
fn special_tokens(t: &Tokenizer, file: &str) -> Result<(usize, usize), ModelError> {
    let with = t.encode("a", true, true)?;
    let without = t.encode("a", false, true)?;
    (0..(with.len() + 1).saturating_sub(without.len()))
        .find(|&p| with[p..p + without.len()] == without[..])
        .map(|p| (p, with.len() - without.len() - p))
        .ok_or_else(|| ModelError::Config {
            file: file.to_string(),
            what: "the post-processor rewrites a text's tokens instead of adding tokens around them; exo cannot truncate such texts"
                .into(),
        })
}
