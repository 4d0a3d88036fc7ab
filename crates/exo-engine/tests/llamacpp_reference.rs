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

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
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

/// How far outside llama.cpp's own envelope our log-probabilities may fall, in nats.
///
/// The envelope is llama.cpp's log-probability of each token under its default configuration
/// (f16 KV cache) and with an f32 KV cache with and without flash attention: on these Q4 models
/// those alone move top-10 log-probabilities by up to 0.65 nats (Gemma-3 token 1 after its
/// second prompt: -9.13 / -8.60 / -8.48). The cause is that both engines round activations to
/// 8 bits before every quantized matmul: the output is discontinuous in its input, so any change
/// of summation order flips some roundings. Perturbing exo's matmul outputs by 1e-7 relative
/// moved Gemma-3's tail log-probabilities by up to 0.3 nats; exo's kernels sum in a different
/// order from llama.cpp's, hence this margin. The top token and greedy runs are held tighter.
const OUTSIDE: f32 = 0.35;
/// A greedy divergence is accepted only where llama.cpp's own top-2 margin was below this.
const NEAR_TIE: f32 = 0.3;

fn check_model(name: &str) {
    let fx = fixture(name);
    let m = model(name);
    let mut session = Session::new(&m, 1024, 512).unwrap();
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
        let variants: Vec<Vec<f32>> = case["variants"].as_object().unwrap().values().map(floats).collect();
        for (j, &(id, got, want)) in pairs.iter().enumerate() {
            let seen = variants.iter().map(|v| v[j]).chain([want]);
            let (lo, hi) = seen.fold((f32::MAX, f32::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
            assert!(
                got > lo - OUTSIDE && got < hi + OUTSIDE,
                "{name}: token {id}: logprob {got} outside llama.cpp's [{lo}, {hi}] by more than {OUTSIDE} (all: {pairs:?})"
            );
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
            constraint: None,
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
