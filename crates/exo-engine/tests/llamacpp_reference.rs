//! Quantized inference against llama.cpp on the real models (fixtures from
//! tests/reference/gen_llamacpp.py): next-token log-probabilities and greedy continuations.

use std::path::{Path, PathBuf};

use exo_engine::sampler::log_softmax;
use exo_engine::{GenerateParams, SamplerConfig, Session};
use exo_models::{load, LoadOptions, LoadedModel};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/fixtures/llamacpp/{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn model(name: &str) -> LoadedModel {
    let p: PathBuf = exo_models::models_dir().join(format!("{name}.gguf"));
    assert!(p.is_file(), "{} is missing: run scripts/fetch-models.sh all", p.display());
    load(&p, &LoadOptions::default()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Our next-token log-probabilities after `prompt`.
fn next_logprobs(m: &LoadedModel, session: &mut Session, prompt: &[u32]) -> Vec<f32> {
    session.prefill(m, prompt).unwrap();
    let mut lp = Vec::new();
    log_softmax(session.state().last_logits(), &mut lp);
    lp
}

/// How far our log-probabilities may be from llama.cpp's: `BASE + SLOPE * |logprob|` nats.
///
/// Set from llama.cpp's disagreement with itself: on these Q4 models, switching its KV cache
/// from f16 to f32 or turning flash attention on moves the top-10 log-probabilities by up to
/// 0.2 nats (SmolLM2: token 827 at -3.68 / -3.80 / -3.50; Qwen-1.5B: token 2326 at -3.78 /
/// -3.88), more in the far tail. exo keeps K/V in f32 and attends in f32, which is none of those
/// configurations exactly.
const BASE: f32 = 0.25;
const SLOPE: f32 = 0.03;
/// A greedy divergence is accepted only where llama.cpp's own top-2 margin was below this.
const NEAR_TIE: f32 = 0.3;

fn check_model(name: &str) {
    let fx = fixture(name);
    let m = model(name);
    let mut session = Session::new(&m, 1024, 512);
    for case in fx["top_logprobs"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let lp = next_logprobs(&m, &mut session, &prompt);
        let pairs: Vec<(usize, f32, f32)> = case["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let id = p[0].as_u64().unwrap() as usize;
                (id, lp[id], p[1].as_f64().unwrap() as f32)
            })
            .collect();
        for &(id, got, want) in &pairs {
            let tol = BASE + SLOPE * want.abs();
            assert!((got - want).abs() < tol, "{name}: token {id}: logprob {got} vs llama.cpp {want} (all: {pairs:?})");
        }
        // The most likely token agrees unless llama.cpp itself saw a near-tie.
        let ours = exo_engine::sampler::argmax(&lp) as usize;
        if pairs[1].2 < pairs[0].2 - NEAR_TIE {
            assert_eq!(ours, pairs[0].0, "{name}: most likely next token differs from llama.cpp's: {pairs:?}");
        }
    }
    for case in fx["greedy"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["ids"]);
        let params = GenerateParams {
            max_tokens: want.len(),
            sampler: SamplerConfig::greedy(),
            stop: Vec::new(),
            ignore_eos: true,
        };
        session.clear();
        let got = session.generate(&m, &prompt, &params, |_| std::ops::ControlFlow::Continue(())).unwrap().tokens;
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            // A divergence is acceptable only where llama.cpp's own best two were a near-tie.
            let margin = case["margins"][i].as_f64().unwrap() as f32;
            assert!(
                margin < NEAR_TIE,
                "{name}: greedy continuation differs from llama.cpp at token {i} ({} vs {}), where llama.cpp's margin was {margin} nats",
                got[i],
                want[i]
            );
            eprintln!("{name}: near-tie divergence at generated token {i} (llama.cpp margin {margin})");
        }
    }
}

#[test]
fn smollm2_matches_llamacpp() {
    check_model("smollm2-135m-instruct");
}

#[test]
fn gemma3_matches_llamacpp() {
    check_model("gemma3-270m");
}

#[test]
fn qwen2_5_coder_0_5b_matches_llamacpp() {
    check_model("qwen2.5-coder-0.5b-instruct");
}

#[test]
fn qwen2_5_coder_1_5b_matches_llamacpp() {
    check_model("qwen2.5-coder-1.5b-instruct");
}
