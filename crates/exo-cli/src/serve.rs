//! `exo serve`: the OpenAI-, Ollama- and Anthropic-compatible HTTP server.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::{bail, Context};
use clap::Args;
use exo_engine::SpecConfig;
use exo_server::{ModelSpec, Server, ServerConfig, SpeculationSpec};

#[derive(Args)]
pub struct ServeArgs {
    /// A model to serve (repeatable): a .gguf file, a Hugging Face directory or a name in the
    /// model cache, served under its file name without extension; NAME=MODEL picks the name.
    /// A sentence-transformers directory (all-minilm-l6-v2) is served for embeddings.
    #[arg(short = 'm', long = "model", required = true)]
    models: Vec<String>,
    /// Address to listen on; the default accepts connections from this machine only.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 52415)]
    port: u16,
    /// Require this key from clients (`Authorization: Bearer KEY` or `x-api-key: KEY`).
    #[arg(long, env = "EXO_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Context window of each request in tokens (default: the model's training context, at most 4096).
    #[arg(short = 'c', long = "ctx-size")]
    ctx_size: Option<usize>,
    /// Requests each model generates (or embeds) at once; their tokens share each forward pass.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    parallel: u16,
    /// KV cache storage: f16, q8_0 (about half of f16's memory) or f32.
    #[arg(long = "kv-type", default_value = "f16", value_parser = crate::parse_kv_type)]
    kv_type: exo_models::KvType,
    /// Memory for each model's paged KV cache, e.g. 2GiB (default: a quarter of the available
    /// memory, at least one full context).
    #[arg(long = "kv-memory", value_parser = crate::parse_bytes)]
    kv_memory: Option<u64>,
    /// At the context window: error (refuse requests that do not fit), truncate (drop the oldest
    /// turns, keeping system prompts) or shift (drop the oldest half and go on). Requests may
    /// override it with `context_policy`.
    #[arg(long = "context-policy", default_value = "error", value_parser = parse_policy)]
    context_policy: exo_engine::ContextPolicy,
    /// Requests each model lets wait to start; beyond that clients get 503 and Retry-After.
    #[arg(long = "queue-size", default_value_t = 64)]
    queue: usize,
    /// Largest request body accepted, in bytes (larger: 413).
    #[arg(long = "max-body", default_value_t = 8 << 20)]
    max_body: usize,
    /// CPU threads (default: all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Decode speculatively with this draft model (a path or a cache name), which must share
    /// every served model's vocabulary (checked at start); answers are what the model alone
    /// would say. Requests asking for logprobs or a JSON format decode plainly. --kv-memory
    /// then holds both models' caches.
    #[arg(long, conflicts_with = "spec", group = "speculation")]
    draft: Option<String>,
    /// Decode speculatively without a draft model: `ngram` drafts the tokens that followed the
    /// last few tokens where they occurred earlier in the prompt or answer.
    #[arg(long, value_enum, group = "speculation")]
    spec: Option<crate::run::SpecKind>,
    /// Most tokens drafted per speculative step (the number adapts to the acceptance rate).
    #[arg(long, default_value_t = SpecConfig::default().draft_max, requires = "speculation")]
    draft_max: usize,
    /// Fewest tokens a draft model drafts per step.
    #[arg(long, default_value_t = SpecConfig::default().draft_min, requires = "speculation")]
    draft_min: usize,
    /// Speculate on every step. By default the server measures both ways per batch size and
    /// decodes plainly where speculation is slower (on a CPU, from a few concurrent requests).
    #[arg(long, requires = "speculation")]
    spec_always: bool,
    /// Re-quantize each generator's matrices while loading: a format (q4_K, q8_0, nf4, ...) or
    /// `auto`, a type per matrix by measured sensitivity fitted to --memory-budget (see exo run
    /// --help), for each model; the plan is cached next to the model.
    #[arg(long)]
    quantize: Option<String>,
    #[command(flatten)]
    auto_quant: crate::model_path::AutoQuantArgs,
    #[command(flatten)]
    placement: crate::model_path::DeviceArgs,
}

pub fn main(a: ServeArgs) -> anyhow::Result<()> {
    crate::set_threads(a.threads)?;
    let models = model_specs(&a.models)?;
    let quantize = crate::model_path::quantize_flags(a.quantize.as_deref(), &a.auto_quant)?;
    let spec_config = SpecConfig { draft_max: a.draft_max, draft_min: a.draft_min, gate: !a.spec_always };
    let speculation = match (&a.draft, a.spec) {
        (Some(d), _) => Some(SpeculationSpec { draft: Some(crate::model_path::resolve(d).context("--draft")?), config: spec_config }),
        (None, Some(crate::run::SpecKind::Ngram)) => Some(SpeculationSpec { draft: None, config: spec_config }),
        (None, None) => None,
    };
    if speculation.is_some() {
        spec_config.validate()?;
    }
    let config = ServerConfig {
        addr: SocketAddr::new(a.host, a.port),
        api_key: a.api_key.filter(|k| !k.is_empty()),
        models,
        ctx_size: a.ctx_size,
        parallel: usize::from(a.parallel),
        kv_type: a.kv_type,
        kv_memory: a.kv_memory,
        quantize,
        context_policy: a.context_policy,
        queue: a.queue,
        max_body_bytes: a.max_body,
        placement: a.placement.load_options(a.ctx_size)?,
        speculation,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("exo-http")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let server = Server::bind(config).await?;
        eprintln!("exo serve: listening on http://{}", server.local_addr());
        server.run().await
    })?;
    Ok(())
}

fn parse_policy(s: &str) -> Result<exo_engine::ContextPolicy, String> {
    exo_engine::ContextPolicy::parse(s).ok_or_else(|| format!("unknown context policy '{s}' (use error, truncate or shift)"))
}

/// Resolves each `--model` and names it; names must be unique.
fn model_specs(args: &[String]) -> anyhow::Result<Vec<ModelSpec>> {
    let mut seen = HashSet::new();
    let mut specs = Vec::with_capacity(args.len());
    for arg in args {
        let (name, model) = match arg.split_once('=') {
            Some((name, model)) if !name.is_empty() && !Path::new(arg).exists() => (Some(name.to_string()), model),
            _ => (None, arg.as_str()),
        };
        let path = crate::model_path::resolve(model)?;
        let name = name.unwrap_or_else(|| default_name(&path));
        if !seen.insert(name.clone()) {
            bail!("two models are named '{name}'; give one another name with --model NAME=MODEL");
        }
        specs.push(ModelSpec { name, path });
    }
    Ok(specs)
}

/// The file name without `.gguf`, or the directory name.
fn default_name(path: &Path) -> String {
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    file.strip_suffix(".gguf").map(str::to_string).unwrap_or(file)
}
