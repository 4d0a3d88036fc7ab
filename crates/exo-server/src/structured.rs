//! Structured output and tool calls, shared by the chat endpoints of every API: a request's
//! messages, tools and JSON grammar become the prompt and the constraint, and the model's output
//! is split back into text and calls.
//!
//! Every API translates its own shapes into OpenAI's (messages with `tool_calls` and `tool`
//! turns, [`Tool`]s, a [`ToolChoice`]) and from [`ToolCall`]s back, so rendering, forcing and
//! parsing calls live here once, over exo-engine's [`ToolCalling`].

use std::sync::Arc;

use exo_engine::constrain::{Constraint, JsonGrammar};
use exo_engine::tools::{Tool, ToolCall, ToolCallParser, ToolChoice, ToolError, ToolEvent};
use exo_engine::Prompt;
use serde_json::Value;

use crate::error::{ApiError, ErrorKind};
use crate::models::ServedModel;

/// A chat request's conversation and what it asks of the output.
pub(crate) struct ChatSpec {
    /// Messages in OpenAI's shape.
    pub(crate) messages: Value,
    /// Tools offered (may be empty).
    pub(crate) tools: Vec<Tool>,
    pub(crate) choice: ToolChoice,
    /// The JSON the answer must be (`response_format`, Ollama's `format`), with the request
    /// field that asked for it.
    pub(crate) format: Option<(JsonGrammar, &'static str)>,
    /// Where a tool's schema sits inside `tools[i]` in this API (`.function.parameters`).
    pub(crate) schema_field: &'static str,
}

/// What a chat request becomes.
pub(crate) struct Prepared {
    pub(crate) prompt: Prompt,
    pub(crate) constraint: Option<Arc<Constraint>>,
    /// Reads calls out of the output; only when tools are offered.
    pub(crate) calls: CallReader,
}

/// Renders the prompt, compiles the constraint and makes the call parser for `spec`. Template
/// rendering, grammar compilation and (on a model's first constrained request) building its
/// vocabulary trie take a while, so they run off the async workers.
pub(crate) async fn prepare(model: &Arc<ServedModel>, spec: ChatSpec) -> Result<Prepared, ApiError> {
    let model = model.clone();
    tokio::task::spawn_blocking(move || prepare_blocking(&model, spec))
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("preparing the request failed: {e}")))?
}

fn prepare_blocking(model: &ServedModel, spec: ChatSpec) -> Result<Prepared, ApiError> {
    let calling = model.tool_calling()?;
    let tool_error = |e| tool_error(e, &spec.tools, spec.schema_field);
    let forced = calling.grammar(&spec.tools, &spec.choice).map_err(tool_error)?;
    let grammar = match (forced, spec.format) {
        (Some(_), Some((_, field))) => {
            return Err(ApiError::invalid(field, "cannot be enforced together with a forced tool call (tool_choice)"))
        }
        (Some(g), None) | (None, Some((g, _))) => Some(g),
        (None, None) => None,
    };
    let prompt = calling.render(&spec.messages, &spec.tools, &spec.choice).map_err(tool_error)?;
    let offered = !spec.tools.is_empty() && spec.choice != ToolChoice::None;
    Ok(Prepared {
        prompt: Prompt::Rendered(prompt),
        constraint: grammar.map(|g| model.constraint(g)).transpose()?,
        calls: CallReader { parser: offered.then(|| calling.parser(&spec.tools)) },
    })
}

/// `grammar` over `model`'s vocabulary, off the async workers (the first one builds the trie).
pub(crate) async fn constraint(model: &Arc<ServedModel>, grammar: JsonGrammar) -> Result<Arc<Constraint>, ApiError> {
    let model = model.clone();
    tokio::task::spawn_blocking(move || model.constraint(grammar))
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("preparing the constraint failed: {e}")))?
}

/// A [`ToolError`] as a 400 naming the request field at fault.
fn tool_error(e: ToolError, tools: &[Tool], schema_field: &str) -> ApiError {
    match e {
        ToolError::InvalidTool { index, problem } => ApiError::invalid(&format!("tools[{index}]"), problem),
        ToolError::InvalidChoice(problem) => ApiError::invalid("tool_choice", problem),
        ToolError::UnknownTool(_) => ApiError::invalid("tool_choice", e),
        ToolError::Schema { ref tool, ref source } => match tools.iter().position(|t| t.name == *tool) {
            Some(i) => ApiError::invalid(&format!("tools[{i}]{schema_field}"), source),
            None => ApiError::invalid("tools", &e),
        },
        ToolError::Messages(problem) => ApiError::invalid("messages", problem),
        ToolError::Template(e) => ApiError::invalid("messages", e),
    }
}

/// Compiles a request's JSON Schema; an error names `field` and the pointer into the schema.
pub(crate) fn schema_grammar(schema: &Value, field: &str) -> Result<JsonGrammar, ApiError> {
    JsonGrammar::from_schema(schema).map_err(|e| ApiError::invalid(field, e))
}

/// A call's arguments as a JSON object (the parser only accepts calls whose arguments are one).
pub(crate) fn arguments_object(c: &ToolCall) -> Value {
    serde_json::from_str(&c.arguments).unwrap_or_else(|_| Value::Object(Default::default()))
}

/// A piece of the answer: text, or a call.
pub(crate) enum Piece {
    Text(String),
    Call(ToolCall),
}

/// Splits output into text and calls as it streams (passing text through when no tools are
/// offered). Text written as a call that is not a valid one stays text, so nothing is lost.
pub(crate) struct CallReader {
    parser: Option<ToolCallParser>,
}

impl CallReader {
    /// A reader that passes everything through as text.
    pub(crate) fn none() -> Self {
        Self { parser: None }
    }

    /// The pieces `text` completes.
    pub(crate) fn push(&mut self, text: &str) -> Vec<Piece> {
        match &mut self.parser {
            Some(p) => pieces(p.push(text)),
            None if text.is_empty() => Vec::new(),
            None => vec![Piece::Text(text.to_string())],
        }
    }

    /// The pieces held back until the end.
    pub(crate) fn finish(&mut self) -> Vec<Piece> {
        self.parser.as_mut().map(|p| pieces(p.finish())).unwrap_or_default()
    }

    /// A whole output as its text and calls; the text is trimmed when there are calls.
    pub(crate) fn split(mut self, text: &str) -> (String, Vec<ToolCall>) {
        let (mut content, mut calls) = (String::new(), Vec::new());
        for piece in self.push(text).into_iter().chain(self.finish()) {
            match piece {
                Piece::Text(t) => content.push_str(&t),
                Piece::Call(c) => calls.push(c),
            }
        }
        if !calls.is_empty() {
            content = content.trim().to_string();
        }
        (content, calls)
    }
}

fn pieces(events: Vec<ToolEvent>) -> Vec<Piece> {
    events
        .into_iter()
        .map(|e| match e {
            ToolEvent::Text(t) => Piece::Text(t),
            ToolEvent::Call(c) => Piece::Call(c),
            ToolEvent::Malformed { text, error } => {
                tracing::debug!("the model wrote a malformed tool call, answered as text: {error}");
                Piece::Text(text)
            }
        })
        .collect()
}
