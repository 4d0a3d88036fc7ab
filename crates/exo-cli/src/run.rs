//! `exo run`: one streamed answer, or an interactive chat.

use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use exo_engine::{Drafter, GenerateParams, Prompt, SamplerConfig, Session, SpecConfig};
use exo_models::LoadedModel;
use exo_tokenizer::ChatMessage;

#[derive(Args)]
pub struct RunArgs {
    /// A .gguf file, a Hugging Face directory, or a name in the model cache.
    model: String,
    /// Answer this prompt and exit; without it, chat interactively.
    prompt: Option<String>,
    /// Use the prompt as is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// System prompt for chat.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens to generate per answer.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 512)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens below this fraction of the top probability (0: off).
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalty on recently seen tokens (1: off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Subtracted from logits of tokens already present.
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// Subtracted per occurrence of a token.
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Random seed (same seed, same output).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// CPU threads (default: all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    #[command(flatten)]
    placement: crate::model_path::DeviceArgs,
    /// Context size in tokens (default: the model's training context, at most 4096).
    #[arg(short = 'c', long = "ctx-size")]
    ctx_size: Option<usize>,
    /// KV cache storage: f16 (as exo serve and llama.cpp), q8_0 (about half the memory) or f32 (exact).
    #[arg(long = "kv-type", default_value = "f16", value_parser = crate::parse_kv_type)]
    kv_type: exo_models::KvType,
    /// Print prompt and generation speed to stderr after each answer.
    #[arg(long)]
    verbose: bool,
    /// Re-quantize the matrices to this format while loading (q4_K, q8_0, nf4, fp8, int8, int4,
    /// ...); for a float model, or to try a format before writing it with `exo quantize`. `auto`
    /// picks a type per matrix by measured sensitivity to fit --memory-budget, as `exo quantize
    /// --max-size` does, and caches that plan next to the model (MODEL.exo-plan-*.json) so that
    /// the next load only re-quantizes.
    #[arg(long)]
    quantize: Option<String>,
    #[command(flatten)]
    auto_quant: crate::model_path::AutoQuantArgs,
    /// Decode speculatively with this draft model (a path or a cache name), which must share
    /// the model's vocabulary; the output is what the model alone would produce.
    #[arg(long, conflicts_with = "spec", group = "speculation")]
    draft: Option<String>,
    /// Decode speculatively without a draft model: `ngram` drafts the tokens that followed the
    /// last few tokens where they occurred earlier in the prompt or answer.
    #[arg(long, value_enum, group = "speculation")]
    spec: Option<SpecKind>,
    /// Most tokens drafted per speculative step.
    #[arg(long, default_value_t = SpecConfig::default().draft_max, requires = "speculation")]
    draft_max: usize,
    /// Fewest tokens a draft model drafts per step.
    #[arg(long, default_value_t = SpecConfig::default().draft_min, requires = "speculation")]
    draft_min: usize,
    /// Speculate on every step. By default exo measures both ways as it decodes and decodes
    /// plainly while speculation is slower (a draft model nearly as slow as the target).
    #[arg(long, requires = "speculation")]
    spec_always: bool,
}

/// Draft-free speculation methods.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum SpecKind {
    /// Prompt lookup: n-gram matches in the context.
    Ngram,
}

/// The session's batch: prompt tokens per forward pass, and the most a speculative step
/// verifies at once.
const BATCH: usize = 512;

pub fn main(a: RunArgs) -> anyhow::Result<()> {
    crate::set_threads(a.threads)?;
    let quantize = crate::model_path::quantize_flags(a.quantize.as_deref(), &a.auto_quant)?;
    let opts = a.placement.load_options(a.ctx_size)?;
    let model = crate::model_path::load_quantized(&crate::model_path::resolve(&a.model)?, &opts, quantize.as_ref())?;
    let train_ctx = model.transformer.config().train_ctx;
    let ctx = a.ctx_size.unwrap_or(train_ctx.min(4096));
    let params = GenerateParams {
        max_tokens: a.max_tokens,
        sampler: SamplerConfig {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repeat_penalty: a.repeat_penalty,
            presence_penalty: a.presence_penalty,
            frequency_penalty: a.frequency_penalty,
            seed: a.seed,
            ..SamplerConfig::default()
        },
        stop: a.stop.clone(),
        ..GenerateParams::default()
    };
    params.sampler.validate().map_err(anyhow::Error::msg)?;
    let mut session = Session::with_kv_type(&model, ctx, BATCH, a.kv_type).context("--ctx-size")?;
    let spec = SpecConfig { draft_max: a.draft_max, draft_min: a.draft_min, gate: !a.spec_always };
    if let Some(draft) = &a.draft {
        // The draft runs where the target does: on a GPU a CPU draft costs more than it saves.
        let draft = Arc::new(crate::model_path::load_path(&crate::model_path::resolve(draft)?, &opts).context("--draft")?);
        session.set_drafter(Some(Drafter::model(&model, draft, ctx, BATCH, spec)?));
    } else if let Some(SpecKind::Ngram) = a.spec {
        session.set_drafter(Some(Drafter::ngram(spec)?));
    }
    match &a.prompt {
        Some(prompt) => {
            let ids = if a.raw {
                Prompt::Text(prompt.clone()).tokenize(&model.tokenizer)?
            } else {
                let mut messages = Vec::new();
                if let Some(s) = &a.system {
                    messages.push(ChatMessage { role: "system".into(), content: s.clone() });
                }
                messages.push(ChatMessage { role: "user".into(), content: prompt.clone() });
                chat_ids(&model, &messages, a.verbose)?
            };
            answer(&model, &mut session, &ids, &params, a.verbose)?;
            Ok(())
        }
        None => chat(&model, &mut session, &params, &a),
    }
}

/// Renders `messages` with the model's template (or the fallback) and tokenizes the result.
fn chat_ids(model: &LoadedModel, messages: &[ChatMessage], verbose: bool) -> anyhow::Result<Vec<u32>> {
    let prompt = Prompt::chat(messages);
    if verbose {
        eprintln!("[prompt]\n{}[/prompt]", prompt.render(&model.tokenizer)?);
    }
    Ok(prompt.tokenize(&model.tokenizer)?)
}

/// Streams one answer to stdout and returns its text.
fn answer(model: &LoadedModel, session: &mut Session, ids: &[u32], params: &GenerateParams, verbose: bool) -> anyhow::Result<String> {
    let mut stdout = std::io::stdout().lock();
    let mut write_err = None;
    let done = session.generate(model, ids, params, |text, _| match stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush()) {
        Ok(()) => ControlFlow::Continue(()),
        Err(e) => {
            write_err = Some(e);
            ControlFlow::Break(())
        }
    })?;
    if let Some(e) = write_err {
        // A closed pipe (`exo run ... | head`) is a normal way to stop reading.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("writing to stdout");
        }
    }
    if verbose {
        let n = done.tokens.len();
        let fresh = done.prompt_tokens - done.reused_tokens;
        eprintln!(
            "\n[prompt {} tokens ({} reused) {:.1} tok/s | generated {} tokens {:.1} tok/s | first token {:.0} ms | stop: {:?}]",
            done.prompt_tokens,
            done.reused_tokens,
            fresh as f64 / done.prompt_time.as_secs_f64().max(1e-9),
            n,
            n.saturating_sub(1) as f64 / done.gen_time.as_secs_f64().max(1e-9),
            done.time_to_first_token.as_secs_f64() * 1e3,
            done.stop_reason
        );
        if let Some(s) = done.speculation {
            eprintln!(
                "[speculation: drafted {} tokens, accepted {} ({:.1}%) in {} verification passes]",
                s.drafted,
                s.accepted,
                100.0 * s.acceptance_rate(),
                s.steps
            );
        }
    }
    Ok(done.text)
}

/// The interactive loop: each line is a user turn; `/bye` or end of input quits.
fn chat(model: &LoadedModel, session: &mut Session, params: &GenerateParams, a: &RunArgs) -> anyhow::Result<()> {
    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(ChatMessage { role: "system".into(), content: s.clone() });
    }
    eprintln!("Chatting with {} (/bye to quit, /clear to forget the conversation)", model.info.name);
    let stdin = std::io::stdin();
    let mut line = Vec::new();
    loop {
        eprint!(">>> ");
        line.clear();
        if stdin.lock().read_until(b'\n', &mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            eprintln!("error: the input line is not valid UTF-8; please retype it");
            continue;
        };
        let text = text.trim();
        match text {
            "" => continue,
            "/bye" | "/exit" | "/quit" => return Ok(()),
            "/clear" => {
                messages.truncate(usize::from(a.system.is_some()));
                session.clear();
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage { role: "user".into(), content: text.to_string() });
        let ids = chat_ids(model, &messages, a.verbose)?;
        if ids.len() >= session.ctx() {
            eprintln!(
                "error: the conversation has {} tokens but the context size is {}; /clear to start over or use a larger --ctx-size",
                ids.len(),
                session.ctx()
            );
            messages.pop();
            continue;
        }
        let reply = answer(model, session, &ids, params, a.verbose)?;
        println!();
        messages.push(ChatMessage { role: "assistant".into(), content: reply });
    }
}
