//! `exo perplexity` against llama.cpp's definition computed with llama-cpp-python, and the KL
//! divergence of the quantized model from its dequantized weights against transformers' float
//! logits (fixtures from tests/reference/gen_perplexity.py).

use std::path::Path;

use exo_engine::perplexity::{perplexity, tokenize, PerplexityParams};
use exo_models::{load, LoadOptions, LoadedModel};
use serde_json::Value;

fn fixture_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/perplexity")
}

fn model(name: &str, dequantize: bool) -> LoadedModel {
    let p = exo_models::models_dir().join(format!("{name}.gguf"));
    assert!(p.is_file(), "{} is missing: run scripts/fetch-models.sh all", p.display());
    load(&p, &LoadOptions { dequantize, ..Default::default() }).unwrap()
}

#[test]
fn smollm2_perplexity_and_kld_match_llama_cpp() {
    let name = "smollm2-135m-instruct";
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(fixture_dir().join(format!("{name}.json"))).unwrap()).unwrap();
    let text = std::fs::read_to_string(fixture_dir().join("lighthouse.txt")).unwrap();
    let m = model(name, false);
    let tokens = tokenize(&m, &text).unwrap();
    assert_eq!(tokens.len() as u64, fx["n_tokens"].as_u64().unwrap());
    let head: Vec<u32> = fx["tokens_head"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(&tokens[..head.len()], &head[..]);
    let ctx = fx["ctx"].as_u64().unwrap() as usize;
    let base = model(name, true);
    let mut running = Vec::new();
    let params = PerplexityParams { ctx, batch: 48, max_chunks: None };
    let r = perplexity(&m, Some(&base), &tokens, &params, |p| running.push(p.ppl)).unwrap();
    assert_eq!(r.chunks as u64, fx["chunks"].as_u64().unwrap());
    assert_eq!(r.scored as u64, fx["scored"].as_u64().unwrap());
    let want = fx["ppl"].as_f64().unwrap();
    assert!((r.ppl / want - 1.0).abs() < 0.01, "PPL {} vs llama.cpp {want}", r.ppl);
    let want_err = fx["ppl_stderr"].as_f64().unwrap();
    assert!((r.ppl_stderr / want_err - 1.0).abs() < 0.03, "stderr {} vs llama.cpp {want_err}", r.ppl_stderr);
    for (got, want) in running.iter().zip(fx["chunk_ppl"].as_array().unwrap()) {
        let want = want.as_f64().unwrap();
        assert!((got / want - 1.0).abs() < 0.02, "running PPL {got} vs {want}");
    }
    let k = r.kld.unwrap();
    let fk = &fx["kld_dequantized"];
    let base_ppl = fk["base_ppl"].as_f64().unwrap();
    assert!((k.base_ppl / base_ppl - 1.0).abs() < 0.002, "dequantized PPL {} vs transformers {base_ppl}", k.base_ppl);
    // exo and llama.cpp both round activations to 8 bits in different summation orders, so the
    // divergence of each from the float model agrees only roughly.
    let kld = fk["mean"].as_f64().unwrap();
    assert!(k.mean > kld * 0.8 && k.mean < kld * 1.25, "KLD {} vs llama.cpp's {kld}", k.mean);
    let top1 = fk["top1_agreement"].as_f64().unwrap();
    assert!((k.top1_agreement - top1).abs() < 0.03, "top-1 agreement {} vs {top1}", k.top1_agreement);
}

#[test]
fn too_short_a_text_is_refused() {
    let m = model("smollm2-135m-instruct", false);
    let tokens = tokenize(&m, "Only a few words.").unwrap();
    let e = perplexity(&m, None, &tokens, &PerplexityParams::default(), |_| {}).unwrap_err().to_string();
    assert!(e.contains("needs at least 1024 (2 x ctx)"), "{e}");
}
