//! Constrained generation with the real SmolLM2-135M and Qwen2.5-Coder-0.5B: greedy and sampled
//! (temperature 1) documents under varied schemas always parse with serde_json, satisfy the
//! schema by the `jsonschema` crate, and end by completion, not at `max_tokens`; json_object
//! mode gives an object.

mod common;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use exo_engine::constrain::{Constraint, ConstraintState, TokenTrie};
use exo_engine::{GenerateParams, SamplerConfig, Session, StopReason};
use exo_models::LoadedModel;
use exo_tokenizer::ChatMessage;
use serde_json::{json, Value};

const MAX_TOKENS: usize = 600;

fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        ("a person with an address", json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 40},
                "age": {"type": "integer"},
                "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}, "zip": {"type": "string", "maxLength": 10}}, "required": ["city", "zip"], "additionalProperties": false}
            },
            "required": ["name", "age", "address"],
            "additionalProperties": false
        })),
        ("two to four favourite colours", json!({
            "type": "object",
            "properties": {"colors": {"type": "array", "items": {"enum": ["red", "green", "blue", "yellow"]}, "minItems": 2, "maxItems": 4}},
            "required": ["colors"],
            "additionalProperties": false
        })),
        ("the result of 6 times 7 and whether it is right", json!({
            "type": "object",
            "properties": {"result": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 20}]}, "ok": {"type": "boolean"}},
            "required": ["result", "ok"],
            "additionalProperties": false
        })),
        ("a small family tree", json!({
            "$defs": {"person": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 20}, "children": {"type": "array", "items": {"$ref": "#/$defs/person"}, "maxItems": 2}},
                "required": ["name"],
                "additionalProperties": false
            }},
            "$ref": "#/$defs/person"
        })),
        ("a count of apples and the ratio of red ones", json!({
            "type": "object",
            "properties": {"count": {"type": "integer"}, "ratio": {"type": "number"}, "note": {"type": ["string", "null"], "maxLength": 30}},
            "required": ["count", "ratio", "note"],
            "additionalProperties": false
        })),
        ("a greeting in another language", json!({
            "type": "object",
            "properties": {"language": {"enum": ["français", "日本語", "español", "Ελληνικά"]}, "greeting": {"type": "string", "minLength": 1, "maxLength": 30}},
            "required": ["language", "greeting"],
            "additionalProperties": false
        })),
    ]
}

fn prompt(m: &LoadedModel, what: &str, schema: Option<&Value>) -> Vec<u32> {
    let ask = match schema {
        Some(s) => format!("Reply with JSON for {what}, following this JSON schema: {s}"),
        None => format!("Reply with a JSON object describing {what}."),
    };
    let messages = [ChatMessage { role: "user".into(), content: ask }];
    let text = m.tokenizer.chat_template_or_fallback().render(&messages, true, None).unwrap();
    m.tokenizer.encode(&text, true, true).unwrap()
}

/// Mask time per token along `tokens` (the generated sequence, replayed).
fn replay_mask_time(c: &Arc<Constraint>, tokens: &[u32]) -> (u32, Duration) {
    let mut st = ConstraintState::new(Arc::clone(c));
    for &t in tokens {
        st.compute_mask();
        st.accept(t).unwrap();
    }
    st.mask_stats()
}

fn check_model(name: &str, seeds: &[u64]) {
    let m = common::model(name);
    let trie = Arc::new(TokenTrie::new(&m.tokenizer));
    let mut session = Session::new(&m, 2048, 512).unwrap();
    let mut masks = (0u32, Duration::ZERO);
    let runs = schemas().into_iter().map(|(w, s)| (w, Some(s))).chain([("a city, with its name and country only", None)]);
    for (what, schema) in runs {
        let c = common::constraint(schema.as_ref(), &trie);
        let ids = prompt(&m, what, schema.as_ref());
        // Schemas bound every string and array, so even untruncated sampling must end; an open
        // json_object is sampled with llama.cpp's default truncation (top-k 40, top-p 0.95,
        // min-p 0.05), without which a 135M model writes keys until max_tokens.
        let sampled = |seed| match schema {
            Some(_) => SamplerConfig { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: Some(seed), ..SamplerConfig::default() },
            None => SamplerConfig { temperature: 1.0, seed: Some(seed), ..SamplerConfig::default() },
        };
        let samplers = std::iter::once(SamplerConfig::greedy()).chain(seeds.iter().map(|&s| sampled(s)));
        for sampler in samplers {
            let params = GenerateParams { max_tokens: MAX_TOKENS, sampler: sampler.clone(), constraint: Some(Arc::clone(&c)), ..GenerateParams::default() };
            let out = session.generate(&m, &ids, &params, |_, _| ControlFlow::Continue(())).unwrap();
            let label = format!("{name}, {what}, temperature {} seed {:?}", sampler.temperature, sampler.seed);
            assert_eq!(out.stop_reason, StopReason::Eog, "{label}: ended with {:?} after {:?}", out.stop_reason, out.text);
            let v = match &schema {
                Some(s) => common::check_valid(s, &out.text),
                None => serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("{label}: not JSON ({e}): {:?}", out.text)),
            };
            assert!(schema.is_some() || v.is_object(), "{label}: json_object mode gave {v}");
            eprintln!("{label}: {} tokens: {}", out.tokens.len(), out.text);
            let (n, t) = replay_mask_time(&c, &out.tokens);
            masks = (masks.0 + n, masks.1 + t);
        }
    }
    eprintln!("{name}: mask time per token {:.3} ms over {} tokens", masks.1.as_secs_f64() * 1e3 / masks.0 as f64, masks.0);
}

#[test]
fn smollm2_documents_follow_their_schemas() {
    check_model("smollm2-135m-instruct", &[1, 2, 3]);
}

#[test]
fn qwen_documents_follow_their_schemas() {
    check_model("qwen2.5-coder-0.5b-instruct", &[7]);
}
