//! The models a server serves, with what the listing endpoints say about them.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use exo_engine::constrain::{Constraint, JsonGrammar, TokenTrie};
use exo_engine::tools::ToolCalling;
use exo_engine::{EngineHandle, EngineLoad};
use exo_models::{LoadedModel, ModelInfo};

use crate::embedding::EmbeddingRunner;
use crate::error::ApiError;

/// What runs a served model: a text generator's engine, or an embedding model.
pub(crate) enum Runner {
    Generator(EngineHandle),
    Embedder(EmbeddingRunner),
}

/// A loaded model, what runs it, and the facts `/v1/models`, `/api/tags` and `/api/show` report.
pub(crate) struct ServedModel {
    /// The name clients use.
    pub(crate) name: String,
    pub(crate) runner: Runner,
    /// When the server loaded it.
    pub(crate) loaded_at: SystemTime,
    /// When its file (or directory) was last modified.
    pub(crate) modified_at: SystemTime,
    /// Bytes of its weights on disk.
    pub(crate) size: u64,
    /// The vocabulary as constrained decoding walks it; built on the first constrained request
    /// (a large vocabulary takes a moment), so that startup stays fast.
    trie: OnceLock<Arc<TokenTrie>>,
    /// How its chat template takes tools and how its calls read, detected on first use.
    tool_calling: OnceLock<ToolCalling>,
}

impl ServedModel {
    pub(crate) fn new(name: String, runner: Runner) -> Self {
        let info = info(&runner);
        let modified_at = std::fs::metadata(&info.path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
        let size = info.file_bytes;
        Self {
            name,
            runner,
            loaded_at: SystemTime::now(),
            modified_at,
            size,
            trie: OnceLock::new(),
            tool_calling: OnceLock::new(),
        }
    }

    /// The generator's model, or a 400 naming the model and what it does instead.
    fn generator(&self) -> Result<&LoadedModel, ApiError> {
        self.engine().map(|e| e.model().as_ref())
    }

    /// `grammar` over this model's vocabulary. Blocking (the first call builds the trie).
    pub(crate) fn constraint(&self, grammar: JsonGrammar) -> Result<Arc<Constraint>, ApiError> {
        let model = self.generator()?;
        let trie = self.trie.get_or_init(|| Arc::new(TokenTrie::new(&model.tokenizer)));
        Ok(Arc::new(Constraint::new(grammar, trie.clone())))
    }

    /// How this model is told about tools and writes its calls. Blocking (the first call renders
    /// the template).
    pub(crate) fn tool_calling(&self) -> Result<&ToolCalling, ApiError> {
        let model = self.generator()?;
        Ok(self.tool_calling.get_or_init(|| ToolCalling::detect(&model.tokenizer.chat_template_or_fallback())))
    }

    /// Where the model came from and what it is.
    pub(crate) fn info(&self) -> &ModelInfo {
        info(&self.runner)
    }

    /// The engine generating text, or a 400 naming the model and what it does instead.
    pub(crate) fn engine(&self) -> Result<&EngineHandle, ApiError> {
        match &self.runner {
            Runner::Generator(engine) => Ok(engine),
            Runner::Embedder(_) => Err(ApiError::invalid(
                "model",
                format!(
                    "'{}' is an embedding model: it answers /v1/embeddings, /api/embed and /api/embeddings, not completions or chat",
                    self.name
                ),
            )),
        }
    }

    /// The embedding model, or a 400 naming the model and what it does instead.
    pub(crate) fn embeddings(&self) -> Result<&EmbeddingRunner, ApiError> {
        match &self.runner {
            Runner::Embedder(runner) => Ok(runner),
            Runner::Generator(_) => Err(ApiError::invalid(
                "model",
                format!(
                    "'{}' is a text generation model: it answers completions and chat, not embeddings (serve an embedding model such as all-minilm-l6-v2 for those)",
                    self.name
                ),
            )),
        }
    }

    /// Requests waiting and running, and KV cache use.
    pub(crate) fn load(&self) -> EngineLoad {
        match &self.runner {
            Runner::Generator(engine) => engine.load(),
            Runner::Embedder(runner) => runner.load(),
        }
    }

    /// Architecture name (`llama`, `qwen2`, `gemma3`, `bert`).
    pub(crate) fn arch(&self) -> &'static str {
        match &self.runner {
            Runner::Generator(engine) => engine.model().transformer.config().arch.name(),
            Runner::Embedder(_) => "bert",
        }
    }

    /// What the model does, as Ollama's `/api/show` lists it.
    pub(crate) fn capabilities(&self) -> Vec<&'static str> {
        match &self.runner {
            Runner::Generator(engine) => {
                let template = engine.model().tokenizer.chat_template();
                let tools = template.is_some_and(|t| t.source().contains("tools"));
                if tools { vec!["completion", "tools"] } else { vec!["completion"] }
            }
            Runner::Embedder(_) => vec!["embedding"],
        }
    }

    /// Tokens one request may use: the generator's context per slot, the encoder's text limit.
    pub(crate) fn context_length(&self) -> usize {
        match &self.runner {
            Runner::Generator(engine) => engine.config().ctx,
            Runner::Embedder(runner) => runner.embedder().max_tokens(),
        }
    }

    /// Parameter count as Ollama writes it (`134.5M`, `1.5B`).
    pub(crate) fn parameter_size(&self) -> String {
        let n = self.info().n_params as f64;
        if n >= 1e9 { format!("{:.1}B", n / 1e9) } else { format!("{:.1}M", n / 1e6) }
    }

    /// The storage type of most weight matrices (`Q4_1`, `Q4_K`, `F32`).
    pub(crate) fn quantization(&self) -> String {
        match &self.runner {
            Runner::Generator(engine) => {
                let types = engine.model().transformer.tensor_types();
                types.iter().max_by_key(|(_, n)| *n).map_or_else(String::new, |(t, _)| t.to_uppercase())
            }
            // exo's BERT widens every dense weight to f32 at load, whatever the file stores.
            Runner::Embedder(_) => "F32".to_string(),
        }
    }
}

fn info(runner: &Runner) -> &ModelInfo {
    match runner {
        Runner::Generator(engine) => &engine.model().info,
        Runner::Embedder(runner) => runner.embedder().info(),
    }
}
