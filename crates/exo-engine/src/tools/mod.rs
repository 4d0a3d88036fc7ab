//! Tool calls (OpenAI `tools` and `tool_choice`): telling a model about tools, reading its calls
//! back out of its text, and forcing a call with constrained decoding.
//!
//! A model learns about tools in one of two ways, decided by [`ToolCalling::detect`]:
//! - **Its own template.** A template that renders `tools` and whose call format exo recognizes
//!   (Qwen2.5 / Hermes `<tool_call>` tags, Llama 3.x bare JSON) gets the tools as it was trained
//!   to see them.
//! - **Injected text.** Any other template (SmolLM2's, gemma3's missing one and exo's fallbacks)
//!   gets no `tools`; instead a plain description of each tool and of the Hermes format
//!   (`<tool_call>{"name": ..., "arguments": ...}</tool_call>`) is written into the system
//!   message, earlier calls are written back in that format and tool results become user
//!   turns wrapped in `<tool_response>`. Hermes is the format most open models are tuned on, and
//!   one format means one parser and one grammar. A template that renders tools in a format exo
//!   does not parse is treated the same way, so that the model is asked for what exo can read.
//!
//! `tool_choice: none` renders no tools; `auto` lets the model choose and parses what it writes;
//! `required` and a named function compile a grammar ([`ToolCalling::grammar`]) that forces one
//! well-formed call whose arguments follow the function's `parameters` schema.

mod parse;

use serde_json::{json, Value};

use exo_tokenizer::{ChatTemplate, TokenizerError};

use crate::constrain::{JsonGrammar, SchemaError};

pub use parse::{parse_tool_calls, ParsedOutput, ToolCallParser, ToolEvent};

/// Opening tag of a Hermes-format call.
pub const HERMES_OPEN: &str = "<tool_call>";
/// Closing tag of a Hermes-format call.
pub const HERMES_CLOSE: &str = "</tool_call>";

/// A function the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    /// The function name (letters, digits, `_` and `-`, at most 64, as OpenAI allows).
    pub name: String,
    /// What it does.
    pub description: Option<String>,
    /// JSON Schema of its arguments (`{"type": "object"}` when the request gives none).
    pub parameters: Value,
}

impl Tool {
    /// Reads the tools of an OpenAI request: `[{"type": "function", "function": {"name",
    /// "description", "parameters"}}, ...]`.
    pub fn list_from_openai(tools: &Value) -> Result<Vec<Tool>, ToolError> {
        let Some(list) = tools.as_array() else {
            return Err(ToolError::InvalidTool { index: 0, problem: "`tools` must be an array".into() });
        };
        list.iter().enumerate().map(|(index, t)| Self::from_openai(t).map_err(|problem| ToolError::InvalidTool { index, problem })).collect()
    }

    fn from_openai(t: &Value) -> Result<Tool, String> {
        if let Some(kind) = t.get("type").filter(|k| k.as_str() != Some("function")) {
            return Err(format!("type is {kind}; only \"function\" tools are supported"));
        }
        let f = t.get("function").filter(|f| f.is_object()).ok_or("`function` must be an object")?;
        let name = f.get("name").and_then(Value::as_str).ok_or("`function.name` must be a string")?;
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if name.is_empty() || name.len() > 64 || !name.chars().all(valid) {
            return Err(format!("function name {name:?} must be 1 to 64 letters, digits, '_' or '-'"));
        }
        let description = match f.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => return Err("`function.description` must be a string".into()),
        };
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object"}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => return Err("`function.parameters` must be a JSON Schema object".into()),
        };
        Ok(Tool { name: name.to_string(), description, parameters })
    }

    /// The OpenAI form, as chat templates receive it in `tools`.
    pub fn to_openai(&self) -> Value {
        let mut f = json!({"name": self.name});
        if let Some(d) = &self.description {
            f["description"] = json!(d);
        }
        f["parameters"] = self.parameters.clone();
        json!({"type": "function", "function": f})
    }
}

/// Which calls a request allows or demands (OpenAI `tool_choice`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// No tools: they are not shown to the model.
    None,
    /// The model decides (the default).
    #[default]
    Auto,
    /// The model must call one of the tools.
    Required,
    /// The model must call this function.
    Function(String),
}

impl ToolChoice {
    /// Reads OpenAI's `tool_choice`: absent, `"none"`, `"auto"`, `"required"` or
    /// `{"type": "function", "function": {"name": ...}}`.
    pub fn from_openai(v: Option<&Value>) -> Result<Self, ToolError> {
        let Some(v) = v else { return Ok(Self::Auto) };
        match v {
            Value::String(s) => match s.as_str() {
                "none" => Ok(Self::None),
                "auto" => Ok(Self::Auto),
                "required" => Ok(Self::Required),
                other => Err(ToolError::InvalidChoice(format!("{other:?} is not one of \"none\", \"auto\", \"required\""))),
            },
            _ => v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .map(|n| Self::Function(n.to_string()))
                .ok_or_else(|| ToolError::InvalidChoice(format!("{v} is neither a string nor {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"))),
        }
    }
}

/// How a model writes a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, any number of them (Qwen2.5,
    /// Hermes, and exo's injected instructions).
    Hermes,
    /// The whole reply is `{"name": ..., "parameters": {...}}`, possibly after
    /// `<|python_tag|>` (Llama 3.1 and later).
    LlamaJson,
}

impl ToolFormat {
    /// The key of a call's arguments.
    fn arguments_key(self) -> &'static str {
        match self {
            Self::Hermes => "arguments",
            Self::LlamaJson => "parameters",
        }
    }
}

/// A call read back from the model's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// A fresh id (`call_` and 24 letters or digits), as OpenAI gives each call.
    pub id: String,
    /// The function called.
    pub name: String,
    /// Its arguments, as a JSON object in text.
    pub arguments: String,
}

/// A request's tools that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// A tool definition is malformed.
    #[error("tools[{index}]: {problem}")]
    InvalidTool {
        /// Position in `tools`.
        index: usize,
        /// What is wrong.
        problem: String,
    },
    /// `tool_choice` is malformed or asks for what cannot be done.
    #[error("tool_choice: {0}")]
    InvalidChoice(String),
    /// `tool_choice` names a function that is not among the tools.
    #[error("tool_choice names function `{0}`, which is not among the tools")]
    UnknownTool(String),
    /// A function's `parameters` schema cannot be enforced.
    #[error("tool `{tool}`: parameters {source}")]
    Schema {
        /// The function.
        tool: String,
        /// The problem in its schema.
        source: SchemaError,
    },
    /// The messages are not a list of message objects.
    #[error("messages: {0}")]
    Messages(String),
    /// The template failed to render.
    #[error(transparent)]
    Template(#[from] TokenizerError),
}

/// How tools reach a model and how it answers, detected from its chat template.
#[derive(Clone, Debug)]
pub struct ToolCalling {
    template: ChatTemplate,
    format: ToolFormat,
    native: bool,
}

impl ToolCalling {
    /// Detects from `template` whether it renders tools itself (it prints a probe tool's name)
    /// and in which format its model calls them (from the template text: `<tool_call>` means
    /// Hermes, `<|python_tag|>` or a `"parameters"` call description means Llama 3 JSON).
    pub fn detect(template: &ChatTemplate) -> Self {
        let probe = json!([Tool { name: "exo_probe_function".into(), description: None, parameters: json!({"type": "object"}) }.to_openai()]);
        let messages = json!([{"role": "user", "content": "hi"}]);
        let renders = template.render_json(&messages, true, Some(&probe)).is_ok_and(|t| t.contains("exo_probe_function"));
        let src = template.source();
        let format = if src.contains(HERMES_OPEN) {
            Some(ToolFormat::Hermes)
        } else if src.contains("<|python_tag|>") || src.contains("\"parameters\"") {
            Some(ToolFormat::LlamaJson)
        } else {
            None
        };
        Self { template: template.clone(), format: format.filter(|_| renders).unwrap_or(ToolFormat::Hermes), native: renders && format.is_some() }
    }

    /// The format the model's calls are parsed in.
    pub fn format(&self) -> ToolFormat {
        self.format
    }

    /// Whether the template renders the tools itself (else exo injects them).
    pub fn is_native(&self) -> bool {
        self.native
    }

    /// The prompt for `messages` (OpenAI messages as JSON, `tool_calls` and `tool` turns
    /// included) with `tools` offered as `choice` says, ending with the assistant's turn.
    pub fn render(&self, messages: &Value, tools: &[Tool], choice: &ToolChoice) -> Result<String, ToolError> {
        let Some(list) = messages.as_array() else { return Err(ToolError::Messages("must be an array".into())) };
        if let Some(i) = list.iter().position(|m| !m.is_object()) {
            return Err(ToolError::Messages(format!("messages[{i}] is not an object")));
        }
        let offered = !tools.is_empty() && *choice != ToolChoice::None;
        if self.native {
            let messages = Value::Array(list.iter().map(arguments_as_objects).collect());
            let tools = Value::Array(tools.iter().map(Tool::to_openai).collect());
            return Ok(self.template.render_json(&messages, true, offered.then_some(&tools))?);
        }
        let mut messages: Vec<Value> = list.iter().map(as_plain_turn).collect();
        if offered {
            let text = injected_instructions(tools, choice);
            match messages.first_mut() {
                Some(m) if m["role"] == "system" => m["content"] = json!(format!("{}\n\n{text}", m["content"].as_str().unwrap_or(""))),
                _ => messages.insert(0, json!({"role": "system", "content": text})),
            }
        }
        Ok(self.template.render_json(&Value::Array(messages), true, None)?)
    }

    /// For `required` or a named function, the grammar of one call in this format with
    /// arguments that follow the function's `parameters`; `None` for `none` and `auto`.
    pub fn grammar(&self, tools: &[Tool], choice: &ToolChoice) -> Result<Option<JsonGrammar>, ToolError> {
        let chosen: Vec<&Tool> = match choice {
            ToolChoice::None | ToolChoice::Auto => return Ok(None),
            ToolChoice::Required if tools.is_empty() => return Err(ToolError::InvalidChoice("\"required\" needs at least one tool".into())),
            ToolChoice::Required => tools.iter().collect(),
            ToolChoice::Function(name) => vec![tools.iter().find(|t| t.name == *name).ok_or_else(|| ToolError::UnknownTool(name.clone()))?],
        };
        // Each schema on its own first, so that an error points into that function's parameters.
        for t in &chosen {
            JsonGrammar::from_schema(&t.parameters).map_err(|source| ToolError::Schema { tool: t.name.clone(), source })?;
        }
        let key = self.format.arguments_key();
        let calls: Vec<Value> = chosen
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut params = t.parameters.clone();
                rebase_refs(&mut params, &format!("/anyOf/{i}/properties/{key}"));
                json!({"type": "object", "properties": {"name": {"const": t.name}, key: params}, "required": ["name", key], "additionalProperties": false})
            })
            .collect();
        let grammar = JsonGrammar::from_schema(&json!({"anyOf": calls}))
            .map_err(|source| ToolError::Schema { tool: chosen.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", "), source })?;
        Ok(Some(match self.format {
            ToolFormat::Hermes => grammar.with_text_around(HERMES_OPEN, HERMES_CLOSE),
            ToolFormat::LlamaJson => grammar,
        }))
    }

    /// A parser for the model's output that accepts calls to `tools` only.
    pub fn parser(&self, tools: &[Tool]) -> ToolCallParser {
        ToolCallParser::new(self.format, tools.iter().map(|t| t.name.clone()).collect())
    }
}

/// The system text that describes `tools` to a model whose template does not.
fn injected_instructions(tools: &[Tool], choice: &ToolChoice) -> String {
    let mut text = String::from("You can call functions to answer the user. The functions, as JSON:\n");
    for t in tools {
        text.push_str(&t.to_openai().to_string());
        text.push('\n');
    }
    text.push_str(&format!(
        "\nTo call a function, reply with one line per call in this form and nothing else:\n{HERMES_OPEN}{{\"name\": \"<function name>\", \"arguments\": <arguments as a JSON object>}}{HERMES_CLOSE}\nEach result comes back as <tool_response>...</tool_response>."
    ));
    match choice {
        ToolChoice::Required => text.push_str("\nYou must call a function now."),
        ToolChoice::Function(name) => text.push_str(&format!("\nYou must call `{name}` now.")),
        ToolChoice::None | ToolChoice::Auto => {}
    }
    text
}

/// An OpenAI message for a template that knows tools: call arguments as JSON objects rather
/// than strings, as `transformers` passes them (templates apply `tojson` to them).
fn arguments_as_objects(m: &Value) -> Value {
    let mut m = m.clone();
    if let Some(calls) = m.get_mut("tool_calls").and_then(Value::as_array_mut) {
        for call in calls {
            let f = if call.get("function").is_some() { &mut call["function"] } else { call };
            if let Some(args) = f.get("arguments").and_then(Value::as_str).and_then(|a| serde_json::from_str::<Value>(a).ok()) {
                f["arguments"] = args;
            }
        }
    }
    m
}

/// An OpenAI message for a template that knows only text turns: earlier calls written in the
/// injected format, tool results as user turns.
fn as_plain_turn(m: &Value) -> Value {
    let content = m.get("content").and_then(Value::as_str).unwrap_or("");
    match m.get("role").and_then(Value::as_str) {
        Some("tool") => json!({"role": "user", "content": format!("<tool_response>{content}</tool_response>")}),
        Some("assistant") if m.get("tool_calls").is_some_and(Value::is_array) => {
            let mut text = content.to_string();
            for call in m["tool_calls"].as_array().into_iter().flatten() {
                let f = call.get("function").unwrap_or(call);
                let args = match f.get("arguments") {
                    Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
                    Some(v) => v.clone(),
                    None => json!({}),
                };
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&format!("{HERMES_OPEN}{}{HERMES_CLOSE}", json!({"name": f.get("name").cloned().unwrap_or_default(), "arguments": args})));
            }
            json!({"role": "assistant", "content": text})
        }
        _ => m.clone(),
    }
}

/// Prefixes every local `$ref` (`#/...`) in `schema` with `prefix`, for embedding it at that
/// pointer of a larger schema.
fn rebase_refs(schema: &mut Value, prefix: &str) {
    match schema {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                match v {
                    Value::String(r) if k == "$ref" && r.starts_with('#') => *r = format!("#{prefix}{}", &r[1..]),
                    _ => rebase_refs(v, prefix),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|v| rebase_refs(v, prefix)),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
