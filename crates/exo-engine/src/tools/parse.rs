//! Reading tool calls back out of generated text, all at once or as it streams.
//!
//! While streaming, text that may be the start of a call (`<tool_call` not yet closed by `>`)
//! is held back until it is clearly plain text; a call is released once complete. A call whose
//! JSON is malformed comes back as [`ToolEvent::Malformed`] with its raw text, so nothing the
//! model wrote is lost.
//!
//! A reply that is one bare JSON object is held to the end and read as a call in either format:
//! that is Llama 3's format, and Qwen2.5-Coder-0.5B often answers a tool question that way,
//! without the `<tool_call>` tags its template asks for (tests/tools_models.rs).

use rand::distr::{Alphanumeric, SampleString};
use serde_json::Value;

use super::{ToolCall, ToolFormat, HERMES_CLOSE, HERMES_OPEN};
use crate::stop::partial_match;

/// Llama 3's marker before a call.
const PYTHON_TAG: &str = "<|python_tag|>";

/// A piece of the model's output, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolEvent {
    /// Plain text.
    Text(String),
    /// A complete, well-formed call.
    Call(ToolCall),
    /// Text that was written as a call but is not a valid one; it should be shown as text.
    Malformed {
        /// The raw text, tags included.
        text: String,
        /// Why it is not a call.
        error: String,
    },
}

/// Everything the model wrote, split into content and calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedOutput {
    /// Text outside calls (malformed calls included); trimmed when there are calls.
    pub content: String,
    /// The calls, in order.
    pub tool_calls: Vec<ToolCall>,
    /// Why each malformed call was rejected.
    pub errors: Vec<String>,
}

/// Splits a complete output of a model writing calls in `format`; calls to functions not in
/// `tool_names` are malformed (an empty list accepts any name).
pub fn parse_tool_calls(format: ToolFormat, tool_names: &[String], text: &str) -> ParsedOutput {
    let mut p = ToolCallParser::new(format, tool_names.to_vec());
    let mut out = ParsedOutput::default();
    for event in p.push(text).into_iter().chain(p.finish()) {
        match event {
            ToolEvent::Text(t) => out.content.push_str(&t),
            ToolEvent::Call(c) => out.tool_calls.push(c),
            ToolEvent::Malformed { text, error } => {
                out.content.push_str(&text);
                out.errors.push(error);
            }
        }
    }
    if !out.tool_calls.is_empty() {
        out.content = out.content.trim().to_string();
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Only whitespace so far (or, for Llama JSON, the start of `<|python_tag|>`).
    Undecided,
    /// Plain text (for Hermes, watching for a call to start).
    Text,
    /// Inside `<tool_call>`, waiting for `</tool_call>`.
    InCall,
    /// The reply is a bare JSON object (or `<|python_tag|>`); held until the end.
    Json,
}

/// Splits streamed output into text and calls.
#[derive(Clone, Debug)]
pub struct ToolCallParser {
    format: ToolFormat,
    names: Vec<String>,
    state: State,
    buf: String,
}

impl ToolCallParser {
    /// A parser for calls in `format` to the functions `tool_names` (empty: any name).
    pub fn new(format: ToolFormat, tool_names: Vec<String>) -> Self {
        Self { format, names: tool_names, state: State::Undecided, buf: String::new() }
    }

    /// Takes the next piece of output; returns what is now certain.
    pub fn push(&mut self, text: &str) -> Vec<ToolEvent> {
        self.buf.push_str(text);
        let mut events = Vec::new();
        loop {
            match self.state {
                State::Text if self.format == ToolFormat::LlamaJson => {
                    text_event(&mut events, std::mem::take(&mut self.buf));
                    return events;
                }
                State::Text => match self.buf.find(HERMES_OPEN) {
                    Some(at) => {
                        text_event(&mut events, self.buf[..at].to_string());
                        self.buf.drain(..at + HERMES_OPEN.len());
                        self.state = State::InCall;
                    }
                    None => {
                        let keep = self.buf.len() - partial_match(&self.buf, HERMES_OPEN);
                        text_event(&mut events, self.buf.drain(..keep).collect());
                        return events;
                    }
                },
                State::InCall => match self.buf.find(HERMES_CLOSE) {
                    Some(at) => {
                        let body: String = self.buf.drain(..at + HERMES_CLOSE.len()).collect();
                        events.push(self.call_event(&body[..at], format!("{HERMES_OPEN}{body}")));
                        self.state = State::Text;
                    }
                    None => return events,
                },
                State::Undecided => {
                    let t = self.buf.trim_start();
                    let llama = self.format == ToolFormat::LlamaJson;
                    if t.is_empty() || (llama && t.len() < PYTHON_TAG.len() && PYTHON_TAG.starts_with(t)) {
                        return events;
                    }
                    self.state = if t.starts_with('{') || (llama && t.starts_with(PYTHON_TAG)) { State::Json } else { State::Text };
                }
                State::Json => return events,
            }
        }
    }

    /// Ends the output: releases held text, and a call left open if it parses.
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        let rest = std::mem::take(&mut self.buf);
        let mut events = Vec::new();
        match self.state {
            State::Text | State::Undecided => text_event(&mut events, rest),
            // The model may stop (end-of-generation) before writing the closing tag.
            State::InCall => events.push(self.call_event(&rest, format!("{HERMES_OPEN}{rest}"))),
            State::Json => match rest.trim_start().strip_prefix(PYTHON_TAG) {
                Some(body) => events.push(self.call_event(body, rest.clone())),
                // A JSON reply that does not even try to name a function is plain content.
                None => match self.call_event(&rest, rest.clone()) {
                    ToolEvent::Malformed { text, .. } if !text.contains("\"name\"") => text_event(&mut events, text),
                    event => events.push(event),
                },
            },
        }
        self.state = State::Undecided;
        events
    }

    /// The call written as `body`, or why it is not one (`raw` is all the text it took).
    fn call_event(&self, body: &str, raw: String) -> ToolEvent {
        match self.read_call(body) {
            Ok(call) => ToolEvent::Call(call),
            Err(error) => ToolEvent::Malformed { text: raw, error },
        }
    }

    fn read_call(&self, body: &str) -> Result<ToolCall, String> {
        let v: Value = serde_json::from_str(body.trim()).map_err(|e| format!("the call is not JSON ({e}): {body:?}"))?;
        let name = v.get("name").and_then(Value::as_str).ok_or_else(|| format!("the call has no \"name\" string: {v}"))?;
        if !self.names.is_empty() && !self.names.iter().any(|n| n == name) {
            return Err(format!("the model called `{name}`, which is not among the tools"));
        }
        let args = v.get(self.format_key()).or_else(|| v.get("arguments")).or_else(|| v.get("parameters"));
        let arguments = match args {
            None | Some(Value::Null) => "{}".to_string(),
            Some(Value::Object(_)) => args.map(Value::to_string).unwrap_or_default(),
            // Some models write the arguments as a JSON string, as the OpenAI API carries them.
            Some(Value::String(s)) if serde_json::from_str::<Value>(s).is_ok_and(|a| a.is_object()) => s.clone(),
            Some(other) => return Err(format!("the arguments of `{name}` are not a JSON object: {other}")),
        };
        Ok(ToolCall { id: format!("call_{}", Alphanumeric.sample_string(&mut rand::rng(), 24)), name: name.to_string(), arguments })
    }

    fn format_key(&self) -> &'static str {
        self.format.arguments_key()
    }
}

fn text_event(events: &mut Vec<ToolEvent>, text: String) {
    if !text.is_empty() {
        events.push(ToolEvent::Text(text));
    }
}
