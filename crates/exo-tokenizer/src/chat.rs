//! Chat templates: Hugging Face Jinja templates rendered with minijinja, set up to produce what
//! `transformers` produces with jinja2.
//!
//! transformers renders with `trim_blocks` and `lstrip_blocks`, the loop-controls extension, a
//! `raise_exception` global, a `strftime_now` global and a `tojson` filter that is plain
//! `json.dumps` (no HTML escaping, non-ASCII kept). jinja2 itself drops one trailing newline of
//! the template source (`keep_trailing_newline=False`) and prints Python values the Python way
//! (`None`, `True`, `['a', 1]`); the formatter below does the same so that templates printing such
//! values match too. Python string/dict methods come from `minijinja_contrib::pycompat`.

use std::sync::Arc;

use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State};

use crate::pyfmt::{py_json, py_repr, JsonStyle};
use crate::TokenizerError;

/// The name the template is registered under (no extension, so no auto-escaping).
const NAME: &str = "chat_template";
/// Prefix marking errors raised by the template's own `raise_exception`.
const RAISED: &str = "\u{0}raise_exception\u{0}";

/// One chat message.
#[derive(serde::Serialize, Clone, Debug)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// The message text.
    pub content: String,
}

/// A compiled chat template. Cloning is cheap (the compiled template is shared).
#[derive(Clone)]
pub struct ChatTemplate {
    inner: Arc<Inner>,
}

struct Inner {
    env: Environment<'static>,
    source: String,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChatTemplate({} bytes)", self.inner.source.len())
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are the texts the template sees under those
    /// names. A syntax error gives [`TokenizerError::Template`] naming the problem and line.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        // jinja2's lexer turns every "\r\n" and "\r" of the source into "\n" before anything else,
        // string literals included; minijinja keeps them.
        let normalized = source.replace("\r\n", "\n").replace('\r', "\n");
        env.add_template_owned(NAME, normalized).map_err(|e| template_error(&e))?;
        Ok(Self {
            inner: Arc::new(Inner { env, source: source.to_string(), bos: bos_token.into(), eos: eos_token.into() }),
        })
    }

    /// Renders `messages`. `tools` is passed to the template as `tools` (`none` when `None`).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String, TokenizerError> {
        self.render_with(Value::from_serialize(messages), add_generation_prompt, tools)
    }

    /// Renders messages given as JSON (a list of objects), for messages richer than
    /// [`ChatMessage`]: content as a list of typed parts, `tool_calls`, `name`, ...
    pub fn render_json(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String, TokenizerError> {
        self.render_with(Value::from_serialize(messages), add_generation_prompt, tools)
    }

    fn render_with(
        &self,
        messages: Value,
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String, TokenizerError> {
        let tmpl = self.inner.env.get_template(NAME).map_err(|e| template_error(&e))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.inner.bos.as_str(),
            eos_token => self.inner.eos.as_str(),
            tools => tools.map_or(Value::from(()), Value::from_serialize),
        };
        tmpl.render(ctx).map_err(|e| template_error(&e))
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// A built-in template for models without one (see [`crate::Tokenizer::chat_template_or_fallback`]).
    pub(crate) fn fallback(kind: Fallback, bos: &str, eos: &str) -> Self {
        let src = match kind {
            Fallback::Gemma => GEMMA_FALLBACK,
            Fallback::ChatMl => CHATML_FALLBACK,
            Fallback::Plain => PLAIN_FALLBACK,
        };
        // The built-in sources are known to compile; should that ever break, an empty template
        // (rendering nothing) is better than a panic.
        Self::new(src, bos, eos).unwrap_or_else(|_| Self {
            inner: Arc::new(Inner { env: Environment::new(), source: String::new(), bos: bos.into(), eos: eos.into() }),
        })
    }
}

/// Which built-in template to use.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fallback {
    Gemma,
    ChatMl,
    Plain,
}

// BOS is left out of the built-ins: `Tokenizer::encode(.., add_bos = true, ..)` adds it.
const GEMMA_FALLBACK: &str = "\
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{%- set ns.system = ns.system + message['content'] + '\n\n' -%}
{%- else -%}
<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}
{{ ns.system if message['role'] == 'user' else '' }}{{ message['content'] | trim }}<end_of_turn>
{% if message['role'] == 'user' %}{% set ns.system = '' %}{% endif -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<start_of_turn>model
{% endif -%}";

const CHATML_FALLBACK: &str = "\
{%- for message in messages -%}
<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% endif -%}";

const PLAIN_FALLBACK: &str = "\
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{{ message['content'] }}

{% elif message['role'] == 'user' -%}
User: {{ message['content'] }}
{% else -%}
Assistant: {{ message['content'] }}
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
Assistant:
{%- endif -%}";

/// Maps a minijinja error to a `template:` error, unwrapping `raise_exception` messages.
fn template_error(e: &Error) -> TokenizerError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(mj) = err.downcast_ref::<Error>() {
            if let Some(msg) = mj.detail().and_then(|d| d.strip_prefix(RAISED)) {
                return TokenizerError::Template(format!("raise_exception: {msg}"));
            }
        }
        cur = err.source();
    }
    let what = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    TokenizerError::Template(match e.line() {
        Some(line) => format!("{what} (line {line})"),
        None => what,
    })
}

/// `raise_exception(message)`: aborts rendering with the template's own message.
fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{msg}")))
}

/// `strftime_now(format)`: the current time (UTC) formatted like Python's `strftime`.
fn strftime_now(fmt: String) -> Result<Value, Error> {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    Ok(Value::from(crate::pyfmt::strftime(&fmt, secs)))
}

/// `tojson`: `json.dumps(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`
/// with transformers' argument order for positional arguments.
fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let mut style = JsonStyle::default();
    let arg = |i: usize, name: &str| -> Result<Option<Value>, Error> {
        if kwargs.has(name) {
            return kwargs.get::<Value>(name).map(Some);
        }
        Ok(args.get(i).cloned())
    };
    if let Some(v) = arg(0, "ensure_ascii")? {
        style.ensure_ascii = v.is_true();
    }
    if let Some(v) = arg(1, "indent")? {
        if !v.is_none() && !v.is_undefined() {
            style.indent = Some(match v.as_str() {
                Some(s) => s.to_string(),
                None => " ".repeat(usize::try_from(v.as_i64().unwrap_or(0)).unwrap_or(0)),
            });
        }
    }
    if let Some(v) = arg(2, "separators")? {
        if !v.is_none() && !v.is_undefined() {
            let item = v.get_item_by_index(0).ok().and_then(|s| s.as_str().map(String::from));
            let key = v.get_item_by_index(1).ok().and_then(|s| s.as_str().map(String::from));
            match (item, key) {
                (Some(i), Some(k)) => style.separators = Some((i, k)),
                _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings")),
            }
        }
    }
    if let Some(v) = arg(3, "sort_keys")? {
        style.sort_keys = v.is_true();
    }
    kwargs.assert_all_used()?;
    let mut out = String::new();
    py_json(value, &style, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// Prints values as jinja2 does: `None`, `True`/`False`, Python reprs for lists and dicts, and
/// Python's float formatting.
fn python_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Seq | ValueKind::Map | ValueKind::Number => {
            let mut s = String::new();
            py_repr(value, &mut s);
            out.write_str(&s).map_err(Error::from)
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}
