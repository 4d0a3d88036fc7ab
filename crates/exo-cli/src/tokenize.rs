//! `exo tokenize`.

use clap::Args;

#[derive(Args)]
pub struct TokenizeArgs {
    /// A .gguf file, a Hugging Face directory, or a name in the model cache.
    model: String,
    /// The text to tokenize.
    text: String,
    /// Do not add the BOS token even if the model's vocabulary asks for one.
    #[arg(long)]
    no_bos: bool,
    /// Parse special-token text (e.g. `<|im_start|>`) as the special token.
    #[arg(long)]
    special: bool,
}

pub fn main(a: TokenizeArgs) -> anyhow::Result<()> {
    let model = crate::model_path::load(&a.model)?;
    let ids = model.tokenizer.encode(&a.text, !a.no_bos, a.special)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
