//! `exo`: run, benchmark and inspect local models.
//!
//! Each subcommand lives in its own file and only parses flags and calls the library crates.
//! Output contract: model text (or JSON) on stdout, everything else (logs, progress, stats) on
//! stderr, so `exo run --raw --temperature 0 ...` prints exactly the generated text.

mod bench;
mod convert;
mod embed;
mod info;
mod model_path;
mod perplexity;
mod quantize;
mod run;
mod serve;
mod tokenize;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "exo", version, about = "Run open models locally: fast, private, correct.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Chat with a model, or answer one prompt.
    Run(run::RunArgs),
    /// Print the token ids of a text as a JSON array.
    Tokenize(tokenize::TokenizeArgs),
    /// Measure prompt processing and generation speed (llama-bench style).
    Bench(bench::BenchArgs),
    /// Describe a model: architecture, sizes, quantization, template, context.
    Info(info::InfoArgs),
    /// Print the embedding vector of each text as a JSON array of arrays.
    Embed(embed::EmbedArgs),
    /// Serve models over HTTP with OpenAI-, Ollama- and Anthropic-compatible APIs.
    Serve(serve::ServeArgs),
    /// Convert a GGUF file to a Hugging Face directory, or a Hugging Face directory to GGUF.
    Convert(convert::ConvertArgs),
    /// Perplexity of a text as llama.cpp computes it, and KL divergence against a base model.
    Perplexity(perplexity::PerplexityArgs),
    /// Write a model as a GGUF file with its matrices quantized (q4_K, q8_0, ...).
    Quantize(quantize::QuantizeArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("EXO_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run::main(a),
        Command::Tokenize(a) => tokenize::main(a),
        Command::Bench(a) => bench::main(a),
        Command::Info(a) => info::main(a),
        Command::Embed(a) => embed::main(a),
        Command::Serve(a) => serve::main(a),
        Command::Perplexity(a) => perplexity::main(a),
        Command::Convert(a) => convert::main(a),
        Command::Quantize(a) => quantize::main(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Fixes the kernel thread count before any kernel runs (`0`: all cores).
fn set_threads(n: Option<usize>) -> anyhow::Result<usize> {
    exo_kernels::threads::set_threads(n.unwrap_or(0)).map_err(anyhow::Error::msg)
}

/// A KV cache type by name (`--kv-type`).
/// Parses `--gpu-layers`: `auto` or a layer count.
fn parse_gpu_layers(s: &str) -> Result<exo_models::GpuLayers, String> {
    exo_models::GpuLayers::parse(s).map_err(|e| e.to_string())
}

fn parse_kv_type(s: &str) -> Result<exo_models::KvType, String> {
    exo_models::KvType::parse(s).ok_or_else(|| format!("unknown KV cache type '{s}' (use f16, q8_0 or f32)"))
}

/// A byte count as users write it: `1073741824`, `512MB`, `1.5GiB`, `2g` (decimal units are
/// powers of 1000, binary ones of 1024; a bare letter is binary, as in llama.cpp and Ollama).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 =
        num.parse().map_err(|_| format!("'{s}' is not a size: expected a number with an optional unit such as 512MB or 2GiB"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        "t" | "tib" => 1024f64.powi(4),
        "tb" => 1e12,
        other => return Err(format!("'{s}': unknown size unit '{other}' (use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB)")),
    };
    Ok((value * scale) as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_parse_in_decimal_and_binary_units() {
        assert_eq!(super::parse_bytes("1024"), Ok(1024));
        assert_eq!(super::parse_bytes("512MB"), Ok(512_000_000));
        assert_eq!(super::parse_bytes("1.5GiB"), Ok(3 << 29));
        assert_eq!(super::parse_bytes("2g"), Ok(2 << 30));
        assert!(super::parse_bytes("12 parsecs").unwrap_err().contains("unknown size unit 'parsecs'"));
        assert!(super::parse_bytes("lots").unwrap_err().contains("not a size"));
    }
}
