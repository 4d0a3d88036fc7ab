//! `exo info`.

use std::path::Path;

use clap::Args;

#[derive(Args)]
pub struct InfoArgs {
    /// A .gguf file, a Hugging Face directory, or a name in the model cache.
    model: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn main(a: InfoArgs) -> anyhow::Result<()> {
    let path = crate::model_path::resolve(&a.model)?;
    if exo_models::is_embedding_model(&path) {
        return embedding_info(&path, a.json);
    }
    let m = crate::model_path::load(&a.model)?;
    let c = m.transformer.config();
    let tok = &m.tokenizer;
    let types: Vec<String> = m.transformer.tensor_types().iter().map(|(t, n)| format!("{t} ({n})")).collect();
    // K and V of every layer, for each way the cache can store them.
    let kv_types = [exo_models::KvType::F16, exo_models::KvType::Q8_0, exo_models::KvType::F32];
    let kv_bytes: Vec<(&str, usize)> = kv_types
        .iter()
        .filter_map(|&t| Some((t.name(), m.transformer.new_kv_cache(t, 0).ok()?.bytes_per_token())))
        .collect();
    let v = serde_json::json!({
        "path": m.info.path.display().to_string(),
        "format": m.info.format,
        "name": m.info.name,
        "architecture": c.arch.name(),
        "parameters": m.info.n_params,
        "weight_bytes": m.transformer.weight_bytes(),
        "layers": c.n_layers,
        "hidden": c.hidden,
        "heads": c.n_heads,
        "kv_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "ffn": c.ffn_dim,
        "vocab": c.vocab_size,
        "context_length": c.train_ctx,
        "kv_bytes_per_token": kv_bytes.iter().map(|(t, b)| (t.to_string(), serde_json::json!(b))).collect::<serde_json::Map<_, _>>(),
        "tensor_types": types,
        "chat_template": tok.chat_template().is_some(),
        "bos_id": tok.bos_id(),
        "eos_id": tok.eos_id(),
        "adds_bos": tok.adds_bos(),
    });
    if a.json {
        println!("{v}");
        return Ok(());
    }
    let row = |k: &str, v: String| println!("{k:<18} {v}");
    row("path", m.info.path.display().to_string());
    row("format", m.info.format.to_string());
    row("name", m.info.name.clone());
    row("architecture", c.arch.name().to_string());
    row("parameters", format!("{:.1} M", m.info.n_params as f64 / 1e6));
    row("weights", format!("{:.1} MiB", m.transformer.weight_bytes() as f64 / (1u64 << 20) as f64));
    row("layers", c.n_layers.to_string());
    row("hidden / ffn", format!("{} / {}", c.hidden, c.ffn_dim));
    row("heads / kv heads", format!("{} / {} (head dim {})", c.n_heads, c.n_kv_heads, c.head_dim));
    row("vocabulary", c.vocab_size.to_string());
    row("context length", c.train_ctx.to_string());
    let per_token: Vec<String> = kv_bytes.iter().map(|(t, b)| format!("{:.1} KiB ({t})", *b as f64 / 1024.0)).collect();
    row("KV cache/token", per_token.join(", "));
    row("tensor types", types.join(", "));
    row("chat template", if tok.chat_template().is_some() { "yes".into() } else { "no (fallback format used)".into() });
    Ok(())
}

/// `exo info` of a sentence-embedding model: the encoder and what turns it into one vector.
fn embedding_info(path: &Path, json: bool) -> anyhow::Result<()> {
    let e = crate::model_path::load_embedder(path)?;
    let (c, info) = (e.config(), e.info());
    if json {
        let v = serde_json::json!({
            "path": info.path.display().to_string(),
            "format": info.format,
            "name": info.name,
            "kind": "embedding",
            "architecture": "bert",
            "parameters": info.n_params,
            "weight_bytes": info.file_bytes,
            "layers": c.n_layers,
            "hidden": c.hidden,
            "heads": c.n_heads,
            "head_dim": c.head_dim(),
            "ffn": c.ffn_dim,
            "vocab": c.vocab_size,
            "context_length": c.max_positions,
            "dim": e.dim(),
            "pooling": e.pooling().name(),
            "normalize": e.normalizes(),
            "max_tokens": e.max_tokens(),
        });
        println!("{v}");
        return Ok(());
    }
    let row = |k: &str, v: String| println!("{k:<18} {v}");
    row("path", info.path.display().to_string());
    row("format", info.format.to_string());
    row("name", info.name.clone());
    row("architecture", "bert (embedding model)".to_string());
    row("parameters", format!("{:.1} M", info.n_params as f64 / 1e6));
    row("weights", format!("{:.1} MiB", info.file_bytes as f64 / (1u64 << 20) as f64));
    row("layers", c.n_layers.to_string());
    row("hidden / ffn", format!("{} / {}", c.hidden, c.ffn_dim));
    row("heads", format!("{} (head dim {})", c.n_heads, c.head_dim()));
    row("vocabulary", c.vocab_size.to_string());
    row("embedding dim", e.dim().to_string());
    row("pooling", e.pooling().name().to_string());
    row("normalize", if e.normalizes() { "yes (unit length)".into() } else { "no".into() });
    row("max tokens", format!("{} per text (position embeddings: {})", e.max_tokens(), c.max_positions));
    Ok(())
}
