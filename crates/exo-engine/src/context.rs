//! Fitting a request's prompt into its context window under the request's [`ContextPolicy`],
//! before it is queued.

use exo_tokenizer::Tokenizer;

use crate::engine::{Request, SubmitError};
use crate::scheduler::ContextPolicy;
use crate::Prompt;

/// A prompt ready to queue.
pub(crate) struct Fitted {
    /// Its tokens, after any truncation or shift.
    pub(crate) ids: Vec<u32>,
    /// Leading tokens a shift never drops.
    pub(crate) n_keep: usize,
    /// Most tokens to generate.
    pub(crate) max_tokens: usize,
}

/// Tokenizes `request`'s prompt and makes it fit a window of `ctx` tokens:
/// - `error`: prompt plus `max_tokens` (default: the rest of the window) must fit, or the
///   request is refused with the numbers;
/// - `truncate`: the oldest chat turns (never system messages or the last message), then the
///   oldest tokens after `n_keep`, are dropped until the prompt leaves `max_tokens` (default: a
///   quarter of the window) free;
/// - `shift`: while the prompt fills the window, the oldest half of what follows `n_keep` is
///   dropped, as generation does when it reaches the window; `max_tokens` defaults to one
///   window.
pub(crate) fn fit_prompt(tok: &Tokenizer, request: &Request, ctx: usize, policy: ContextPolicy) -> Result<Fitted, SubmitError> {
    let mut ids = request.prompt.tokenize(tok)?;
    if ids.is_empty() {
        return Err(SubmitError::EmptyPrompt);
    }
    let bos = usize::from(tok.bos_id().is_some_and(|b| ids[0] == b));
    let n_keep = request.n_keep.unwrap_or(bos).min(ctx / 2);
    let prompt_tokens = ids.len();
    let max_tokens = match policy {
        ContextPolicy::Error => match request.max_tokens {
            Some(m) if prompt_tokens.saturating_add(m) > ctx => {
                return Err(SubmitError::TooLong { prompt_tokens, max_tokens: m, ctx })
            }
            Some(m) => m,
            None if prompt_tokens >= ctx => return Err(SubmitError::PromptFillsContext { prompt_tokens, ctx }),
            None => ctx - prompt_tokens,
        },
        ContextPolicy::Truncate => {
            let reserve = request.max_tokens.unwrap_or(ctx / 4).max(1);
            if reserve >= ctx {
                return Err(SubmitError::TooLong { prompt_tokens: 0, max_tokens: reserve, ctx });
            }
            let limit = ctx - reserve;
            if ids.len() > limit {
                if let Prompt::Chat { messages, tools } = &request.prompt {
                    ids = drop_turns(tok, messages, tools, limit)?.unwrap_or(ids);
                }
            }
            if ids.len() > limit {
                let keep = n_keep.min(limit / 2);
                ids.drain(keep..keep + (ids.len() - limit));
            }
            request.max_tokens.unwrap_or(ctx - ids.len())
        }
        ContextPolicy::Shift => {
            while ids.len() >= ctx {
                let discard = ((ids.len() - n_keep) / 2).max(1);
                ids.drain(n_keep..n_keep + discard);
            }
            request.max_tokens.unwrap_or(ctx)
        }
    };
    Ok(Fitted { ids, n_keep, max_tokens })
}

/// The chat with its oldest turns dropped, one at a time, until it tokenizes to at most `limit`
/// tokens; `None` if even the system messages plus the last message are longer. A turn is a
/// user message and the replies after it, so what is left still starts with a user message
/// (templates that check roles alternate accept it).
fn drop_turns(
    tok: &Tokenizer,
    messages: &serde_json::Value,
    tools: &Option<serde_json::Value>,
    limit: usize,
) -> Result<Option<Vec<u32>>, SubmitError> {
    let Some(all) = messages.as_array() else { return Ok(None) };
    let role = |m: &serde_json::Value| m.get("role").and_then(|r| r.as_str()).unwrap_or("").to_string();
    let mut kept: Vec<serde_json::Value> = all.clone();
    loop {
        let last = kept.len().saturating_sub(1);
        let Some(oldest) = kept.iter().take(last).position(|m| role(m) != "system") else { return Ok(None) };
        kept.remove(oldest);
        while oldest < kept.len() - 1 && !matches!(role(&kept[oldest]).as_str(), "user" | "system") {
            kept.remove(oldest);
        }
        let prompt = Prompt::Chat { messages: serde_json::Value::Array(kept.clone()), tools: tools.clone() };
        let ids = prompt.tokenize(tok)?;
        if ids.len() <= limit {
            return Ok(Some(ids));
        }
    }
}
