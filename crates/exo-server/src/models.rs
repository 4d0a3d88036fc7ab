//! The models a server serves, with what the listing endpoints say about them.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use exo_engine::constrain::{Constraint, JsonGrammar, TokenTrie};
use exo_engine::tools::ToolCalling;
use exo_engine::EngineHandle;
use exo_models::LoadedModel;

/// A loaded model, its engine and the facts `/v1/models`, `/api/tags` and `/api/show` report.
pub(crate) struct ServedModel {
    /// The name clients use.
    pub(crate) name: String,
    pub(crate) engine: EngineHandle,
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
    pub(crate) fn new(name: String, engine: EngineHandle) -> Self {
        let info = &engine.model().info;
        let modified_at = std::fs::metadata(&info.path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
        let size = info.file_bytes;
        Self { name, engine, loaded_at: SystemTime::now(), modified_at, size, trie: OnceLock::new(), tool_calling: OnceLock::new() }
    }

    /// `grammar` over this model's vocabulary. Blocking (the first call builds the trie).
    pub(crate) fn constraint(&self, grammar: JsonGrammar) -> Arc<Constraint> {
        let trie = self.trie.get_or_init(|| Arc::new(TokenTrie::new(&self.model().tokenizer)));
        Arc::new(Constraint::new(grammar, trie.clone()))
    }

    /// How this model is told about tools and writes its calls. Blocking (the first call renders
    /// the template).
    pub(crate) fn tool_calling(&self) -> &ToolCalling {
        self.tool_calling.get_or_init(|| ToolCalling::detect(&self.model().tokenizer.chat_template_or_fallback()))
    }

    pub(crate) fn model(&self) -> &LoadedModel {
        self.engine.model()
    }

    /// Architecture name (`llama`, `qwen2`, `gemma3`).
    pub(crate) fn arch(&self) -> &'static str {
        self.model().transformer.config().arch.name()
    }

    /// Parameter count as Ollama writes it (`134.5M`, `1.5B`).
    pub(crate) fn parameter_size(&self) -> String {
        let n = self.model().info.n_params as f64;
        if n >= 1e9 { format!("{:.1}B", n / 1e9) } else { format!("{:.1}M", n / 1e6) }
    }

    /// The storage type of most weight matrices (`Q4_1`, `Q4_K`, `F32`).
    pub(crate) fn quantization(&self) -> String {
        let types = self.model().transformer.tensor_types();
        types.iter().max_by_key(|(_, n)| *n).map_or_else(String::new, |(t, _)| t.to_uppercase())
    }
}
