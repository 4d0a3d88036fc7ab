//! `exo embed`.

use anyhow::bail;
use clap::Args;

#[derive(Args)]
pub struct EmbedArgs {
    /// A sentence-transformers model directory, or a name in the model cache.
    model: String,
    /// The texts to embed; one vector is printed for each.
    #[arg(required = true)]
    texts: Vec<String>,
    /// CPU threads (default: all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
}

pub fn main(a: EmbedArgs) -> anyhow::Result<()> {
    crate::set_threads(a.threads)?;
    let path = crate::model_path::resolve(&a.model)?;
    if !exo_models::is_embedding_model(&path) {
        bail!(
            "{} is not an embedding model: exo embed needs a sentence-transformers directory with a BERT config.json",
            path.display()
        );
    }
    let embedder = crate::model_path::load_embedder(&path)?;
    let texts: Vec<&str> = a.texts.iter().map(String::as_str).collect();
    let t = std::time::Instant::now();
    let embeddings = embedder.embed(&texts)?;
    let tokens: usize = embeddings.iter().map(|e| e.tokens).sum();
    tracing::info!("embedded {} texts ({tokens} tokens) in {:.2?}", texts.len(), t.elapsed());
    let vectors: Vec<&[f32]> = embeddings.iter().map(|e| e.vector.as_slice()).collect();
    println!("{}", serde_json::to_string(&vectors)?);
    Ok(())
}
