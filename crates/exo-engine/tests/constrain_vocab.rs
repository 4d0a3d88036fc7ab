//! Constrained decoding on the real SmolLM2 (49k) and Qwen2.5 (152k) vocabularies, without
//! model weights: the trie mask against a token-by-token check, and random token walks over
//! random schemas whose documents the `jsonschema` crate validates.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use exo_engine::constrain::{ConstraintState, TokenTrie};
use exo_tokenizer::Tokenizer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const VOCABS: [&str; 2] = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"];

/// Follows `doc` token by token (as the tokenizer splits it) and, at every step, compares the
/// trie's mask with checking each token of the vocabulary on its own.
fn mask_equals_token_checks(tok: &Tokenizer, trie: &Arc<TokenTrie>, schema: Option<&Value>, doc: &str) {
    let mut st = ConstraintState::new(common::constraint(schema, trie));
    let ids = tok.encode(doc, false, false).unwrap();
    for (step, &next) in ids.iter().enumerate() {
        let allowed = st.compute_mask();
        let mut checked = 0;
        for id in 0..tok.vocab_size() as u32 {
            let ok = st.can_accept(id);
            checked += ok as usize;
            assert_eq!(st.is_allowed(id), ok, "{doc:?} step {step}: token {id} {:?}", String::from_utf8_lossy(&tok.token_bytes(id)));
        }
        assert_eq!(allowed, checked);
        assert!(st.is_allowed(next), "{doc:?}: its own token {next} at step {step} was masked");
        st.accept(next).unwrap();
    }
    assert!(st.can_end(), "{doc:?} is complete");
}

#[test]
fn trie_mask_equals_token_by_token_checks() {
    let person = json!({
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {"enum": ["a", "bé", "日本"]}, "maxItems": 3}},
        "required": ["name"],
        "additionalProperties": false
    });
    let cases: [(Option<&Value>, &str); 3] = [
        (Some(&person), "{\"name\": \"Zoë 😀 \\\"q\\\"\", \"age\": 42, \"tags\": [\"bé\",\"日本\"]}"),
        (None, "{\"a\": [1.5e3, -0.25, true, null, {\"k\": \"\\u00e9\\n\"}], \"b\": {}}"),
        (Some(&json!({"anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string", "minLength": 3}]})), "\"abc日\""),
    ];
    for name in VOCABS {
        let tok = common::tokenizer(name);
        let trie = Arc::new(TokenTrie::new(&tok));
        for (schema, doc) in cases {
            mask_equals_token_checks(&tok, &trie, schema, doc);
        }
    }
}

/// A random schema from the enforced subset.
fn random_schema(rng: &mut StdRng, depth: u32) -> Value {
    let kinds = if depth >= 3 { 6 } else { 11 };
    match rng.random_range(0..kinds) {
        0 => {
            let min = rng.random_range(0..3);
            json!({"type": "string", "minLength": min, "maxLength": min + rng.random_range(0..10)})
        }
        1 => json!({"type": "integer"}),
        2 => json!({"type": "number"}),
        3 => {
            let t = ["boolean", "null", "integer"][rng.random_range(0..3)];
            json!({"type": t})
        }
        4 => {
            let mut values: Vec<Value> = (0..rng.random_range(1..5)).map(|_| random_scalar(rng)).collect();
            values.dedup();
            json!({"enum": values})
        }
        5 => json!({"const": random_scalar(rng)}),
        6 | 7 => random_object(rng, depth),
        8 => {
            let mut s = json!({"type": "array", "items": random_schema(rng, depth + 1)});
            if rng.random_bool(0.3) {
                s["prefixItems"] = json!([random_schema(rng, depth + 1)]);
            }
            let min = rng.random_range(0..3);
            s["minItems"] = json!(min);
            s["maxItems"] = json!(min + rng.random_range(0..4));
            s
        }
        9 => json!({"anyOf": (0..rng.random_range(2..4)).map(|_| random_schema(rng, depth + 1)).collect::<Vec<_>>()}),
        _ => {
            // oneOf over alternatives of different types, so that no value matches two.
            let all = [json!({"type": "string"}), json!({"type": "integer"}), json!({"type": "boolean"}), random_object(rng, depth + 1)];
            let skip = rng.random_range(0..all.len());
            json!({"oneOf": all.into_iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, s)| s).collect::<Vec<_>>()})
        }
    }
}

fn random_object(rng: &mut StdRng, depth: u32) -> Value {
    const NAMES: [&str; 8] = ["name", "x", "ünï", "a\"b", "back\\slash", "emoji😀", "", "tab\tkey"];
    let mut props = serde_json::Map::new();
    let mut required = Vec::new();
    for _ in 0..rng.random_range(0..4) {
        let name = NAMES[rng.random_range(0..NAMES.len())];
        props.insert(name.to_string(), random_schema(rng, depth + 1));
        if rng.random_bool(0.5) && !required.contains(&name) {
            required.push(name);
        }
    }
    let mut s = json!({"type": "object", "properties": props, "required": required});
    match rng.random_range(0..3) {
        0 => s["additionalProperties"] = json!(false),
        1 => s["additionalProperties"] = random_schema(rng, depth + 1),
        _ => {}
    }
    s
}

fn random_scalar(rng: &mut StdRng) -> Value {
    const TEXTS: [&str; 6] = ["é", "日本", "a\"b", "new\nline", "😀", "plain"];
    match rng.random_range(0..5) {
        0 => json!(TEXTS[rng.random_range(0..TEXTS.len())]),
        1 => json!(rng.random_range(-1000..1000)),
        2 => json!(rng.random_range(-100.0..100.0f64)),
        3 => json!(rng.random_bool(0.5)),
        _ => Value::Null,
    }
}

/// A recursive schema: a tree of nodes through `$defs`.
fn recursive_schema(rng: &mut StdRng) -> Value {
    json!({
        "$defs": {"node": {
            "type": "object",
            "properties": {"v": random_schema(rng, 3), "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}, "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}},
            "required": ["v", "next"]
        }},
        "$ref": "#/$defs/node"
    })
}

/// Picks tokens among the allowed ones: uniformly for the first `wander` steps, then the
/// allowed single-byte token that closes things soonest, so that the walk ends. Returns the
/// document's bytes.
fn random_walk(st: &mut ConstraintState, trie: &TokenTrie, singles: &HashMap<u8, u32>, rng: &mut StdRng, wander: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut allowed = Vec::new();
    for step in 0..4000 {
        if st.is_finished() {
            return out;
        }
        assert!(st.compute_mask() > 0, "dead end after {:?}", String::from_utf8_lossy(&out));
        allowed.clear();
        allowed.extend((0..trie.vocab_size() as u32).filter(|&id| st.is_allowed(id)));
        let eog = trie.eog_ids().iter().copied().find(|&id| st.is_allowed(id));
        let id = if step < wander {
            allowed[rng.random_range(0..allowed.len())]
        } else {
            let closing = b"\"]}:0n,".iter().filter_map(|b| singles.get(b)).copied().find(|&id| st.is_allowed(id));
            let single = || {
                let s: Vec<u32> = allowed.iter().copied().filter(|&id| trie.token_bytes(id).is_some_and(|b| b.len() == 1)).collect();
                (!s.is_empty()).then(|| s[rng.random_range(0..s.len())])
            };
            closing.or(eog).or_else(single).unwrap_or(allowed[0])
        };
        st.accept(id).unwrap();
        if trie.eog_ids().contains(&id) {
            return out;
        }
        out.extend_from_slice(trie.token_bytes(id).unwrap());
    }
    panic!("the walk did not end: {:?}", String::from_utf8_lossy(&out));
}

#[test]
fn random_walks_over_random_schemas_give_valid_documents() {
    let mut masks = Vec::new();
    for name in VOCABS {
        let tok = common::tokenizer(name);
        let built = std::time::Instant::now();
        let trie = Arc::new(TokenTrie::new(&tok));
        let built = built.elapsed();
        let singles: HashMap<u8, u32> = (0..tok.vocab_size() as u32)
            .rev()
            .filter_map(|id| trie.token_bytes(id).filter(|b| b.len() == 1).map(|b| (b[0], id)))
            .collect();
        let mut rng = StdRng::seed_from_u64(4);
        let (mut docs, mut total) = (0, (0u32, Duration::ZERO));
        while docs < 200 {
            let schema = if docs % 6 == 5 { recursive_schema(&mut rng) } else { random_schema(&mut rng, 0) };
            let Ok(grammar) = exo_engine::constrain::JsonGrammar::from_schema(&schema) else {
                continue;
            };
            let c = Arc::new(exo_engine::constrain::Constraint::new(grammar, Arc::clone(&trie)));
            for _ in 0..2 {
                let mut st = ConstraintState::new(Arc::clone(&c));
                let wander = rng.random_range(0..150);
                let doc = random_walk(&mut st, &trie, &singles, &mut rng, wander);
                let text = String::from_utf8(doc).unwrap_or_else(|e| panic!("not UTF-8 under {schema}: {e}"));
                common::check_valid(&schema, &text);
                let (n, t) = st.mask_stats();
                total = (total.0 + n, total.1 + t);
                docs += 1;
            }
        }
        let each = total.1.as_secs_f64() * 1e3 / total.0.max(1) as f64;
        masks.push(format!("{name}: trie built in {} ms, {} masks, {each:.3} ms each", built.as_millis(), total.0));
    }
    eprintln!("mask time per token over random walks: {}", masks.join("; "));
}
