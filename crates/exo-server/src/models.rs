//! The models a server serves, with what the listing endpoints say about them.

use std::time::SystemTime;

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
}

impl ServedModel {
    pub(crate) fn new(name: String, engine: EngineHandle) -> Self {
        let info = &engine.model().info;
        let modified_at = std::fs::metadata(&info.path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
        let size = info.file_bytes;
        Self { name, engine, loaded_at: SystemTime::now(), modified_at, size }
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
