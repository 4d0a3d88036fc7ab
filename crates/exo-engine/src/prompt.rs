//! What a request asks the model to continue: text as is, or a chat rendered with the model's
//! chat template. Every front end (the CLI, each HTTP API) turns its input into a [`Prompt`], so
//! templating and BOS handling live here once.

use exo_tokenizer::{ChatMessage, Tokenizer, TokenizerError};

/// A prompt before tokenization.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Text continued as is: texts of special tokens (`<|im_start|>`) become those tokens and
    /// BOS is added where the vocabulary asks for it, as `exo run --raw` and llama.cpp's
    /// completion endpoint do.
    Text(String),
    /// A conversation rendered with the model's chat template (or the built-in fallback), ending
    /// with the prompt for the assistant's turn.
    Chat {
        /// A JSON array of message objects: `role` and `content`, plus whatever the template
        /// reads (`tool_calls`, `name`, ...).
        messages: serde_json::Value,
        /// Tool definitions passed to the template as `tools` (OpenAI's `tools` array).
        tools: Option<serde_json::Value>,
    },
    /// A conversation already rendered with the model's chat template (tool calling renders
    /// its own prompt: [`crate::tools::ToolCalling::render`]); tokenized as `Chat` is.
    Rendered(String),
}

impl Prompt {
    /// A chat prompt from plain messages, without tools.
    pub fn chat(messages: &[ChatMessage]) -> Self {
        let messages = messages
            .iter()
            .map(|m| serde_json::json!({ "role": m.role, "content": m.content }))
            .collect();
        Prompt::Chat { messages: serde_json::Value::Array(messages), tools: None }
    }

    /// The text the model is given: the chat template applied, or the text itself.
    pub fn render(&self, tok: &Tokenizer) -> Result<String, TokenizerError> {
        match self {
            Prompt::Text(text) | Prompt::Rendered(text) => Ok(text.clone()),
            Prompt::Chat { messages, tools } => tok.chat_template_or_fallback().render_json(messages, true, tools.as_ref()),
        }
    }

    /// The token ids the model is given.
    pub fn tokenize(&self, tok: &Tokenizer) -> Result<Vec<u32>, TokenizerError> {
        let text = self.render(tok)?;
        // Templates that write the BOS text themselves must not get a second BOS.
        let bos_in_text = matches!(self, Prompt::Chat { .. } | Prompt::Rendered(_))
            && tok.bos_id().map(|b| tok.token_bytes(b)).is_some_and(|b| !b.is_empty() && text.as_bytes().starts_with(&b));
        tok.encode(&text, !bos_in_text, true)
    }
}
