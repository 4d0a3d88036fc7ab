//! Sentence embeddings against `sentence-transformers` (fixture from
//! tests/reference/gen_embeddings.py) with the real all-MiniLM-L6-v2 directory, and a clear error
//! for each broken variant of that directory.

use std::path::{Path, PathBuf};

use exo_models::{is_embedding_model, Embedder, Embedding};
use serde_json::{json, Value};

const MODEL: &str = "all-minilm-l6-v2";

fn minilm_dir() -> PathBuf {
    let p = exo_models::models_dir().join(MODEL);
    assert!(p.join("model.safetensors").is_file(), "{} is missing: run scripts/fetch-models.sh all", p.display());
    p
}

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/fixtures/embeddings/{MODEL}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn texts(v: &Value) -> Vec<&str> {
    v.as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect()
}

fn vectors(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()).collect()
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>() / (norm(a) * norm(b))
}

/// Cosine >= 0.9999 with the reference, lengths within 0.1 %, and unit length when normalised.
/// Components must also agree to 1e-4 of the largest: the cosine alone would pass BERT run with
/// the tanh GELU approximation (1 - cosine ~1e-6, components off by 2e-4 to 8e-4 of the largest),
/// while the erf GELU lands within 4e-6.
fn check(label: &str, ours: &Embedding, want: &[f32], normalized: bool) {
    assert_eq!(ours.vector.len(), want.len(), "{label}: dimension");
    let cos = cosine(&ours.vector, want);
    assert!(cos >= 0.9999, "{label}: cosine {cos} with sentence-transformers");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = ours.vector.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff <= 1e-4 * scale, "{label}: a component differs by {diff} (largest component {scale})");
    let (n, n_ref) = (norm(&ours.vector), norm(want));
    assert!((n - n_ref).abs() <= 1e-3 * n_ref, "{label}: length {n}, sentence-transformers {n_ref}");
    if normalized {
        assert!((n - 1.0).abs() < 1e-5, "{label}: normalised vector has length {n}");
    }
}

#[test]
fn minilm_matches_sentence_transformers_batched_and_one_by_one() {
    let fx = fixture();
    let e = Embedder::load(&minilm_dir()).unwrap();
    assert_eq!(e.dim() as u64, fx["dim"].as_u64().unwrap());
    assert_eq!(e.max_tokens() as u64, fx["max_seq_length"].as_u64().unwrap());
    assert_eq!(e.pooling().name(), fx["pooling"].as_str().unwrap());
    assert_eq!(e.normalizes(), fx["normalize"].as_bool().unwrap());
    let (texts, want, tokens) = (texts(&fx["texts"]), vectors(&fx["vectors"]), &fx["tokens"]);

    let batch = e.embed(&texts).unwrap();
    assert_eq!(batch.len(), texts.len());
    for (i, text) in texts.iter().enumerate() {
        let label = format!("batched text {i} {:?}", text.chars().take(40).collect::<String>());
        assert_eq!(batch[i].tokens as u64, tokens[i].as_u64().unwrap(), "{label}: tokens");
        // Before truncation: the same count below the limit, more at it.
        let untruncated = e.count_tokens(text).unwrap();
        if batch[i].tokens < e.max_tokens() {
            assert_eq!(untruncated, batch[i].tokens, "{label}: count_tokens");
        } else {
            assert!(untruncated > e.max_tokens(), "{label}: count_tokens {untruncated}");
        }
        check(&label, &batch[i], &want[i], e.normalizes());
        let alone = e.embed(&[text]).unwrap().remove(0);
        assert_eq!(alone.tokens, batch[i].tokens, "text {i} alone: tokens");
        check(&format!("text {i} alone"), &alone, &want[i], e.normalizes());
    }
    assert!(e.embed(&[]).unwrap().is_empty());
}

#[test]
fn requests_longer_than_one_forward_pass_are_split() {
    // 20 texts at the 256-token limit and the short ones between them: more tokens than one
    // forward pass takes (4096), so the request runs as several.
    let fx = fixture();
    let e = Embedder::load(&minilm_dir()).unwrap();
    let (texts, want) = (texts(&fx["texts"]), vectors(&fx["vectors"]));
    let order: Vec<usize> = (0..20).flat_map(|i| [11 + i % 2, i % 11]).collect();
    let got = e.embed(&order.iter().map(|&i| texts[i]).collect::<Vec<_>>()).unwrap();
    assert!(got.iter().map(|g| g.tokens).sum::<usize>() > 4096);
    for (ours, &i) in got.iter().zip(&order) {
        check(&format!("text {i} in a long request"), ours, &want[i], true);
    }
}

#[test]
fn one_embedder_serves_threads_at_once() {
    // The server shares one Embedder between request threads.
    let fx = fixture();
    let e = Embedder::load(&minilm_dir()).unwrap();
    let (texts, want) = (texts(&fx["texts"]), vectors(&fx["vectors"]));
    let half = texts.len() / 2;
    std::thread::scope(|s| {
        for (part, range) in [(0, 0..half), (1, half..texts.len())] {
            let (e, texts, want) = (&e, &texts, &want);
            s.spawn(move || {
                for _ in 0..3 {
                    let got = e.embed(&texts[range.clone()]).unwrap();
                    for (ours, i) in got.iter().zip(range.clone()) {
                        check(&format!("thread {part}, text {i}"), ours, &want[i], true);
                    }
                }
            });
        }
    });
}

/// A copy of the MiniLM directory in a tempdir: symlinks to its files, real copies of its
/// folders (1_Pooling), then `edit` applied. Edit files only through [`write_json`] or after
/// removing the link, so the real model is never touched.
fn broken_copy(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let src = minilm_dir();
    let d = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        let target = d.path().join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir(&target).unwrap();
            for f in std::fs::read_dir(entry.path()).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), target.join(f.file_name())).unwrap();
            }
        } else {
            std::os::unix::fs::symlink(entry.path(), &target).unwrap();
        }
    }
    edit(d.path());
    d
}

/// Replaces `path` (a link or a copy) with the JSON `f` makes of its current content.
fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    write_json(path, &v);
}

fn write_json(path: &Path, v: &Value) {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, v.to_string()).unwrap();
}

/// The pipeline without Normalize and with `pooling` as the Pooling config.
fn with_pooling(dir: &Path, pooling: Value) {
    edit_json(&dir.join("modules.json"), |m| m.as_array_mut().unwrap().truncate(2));
    write_json(&dir.join("1_Pooling/config.json"), &pooling);
}

#[test]
fn other_pooling_modes_match_sentence_transformers() {
    let fx = fixture();
    for (i, variant) in fx["variants"].as_array().unwrap().iter().enumerate() {
        let mode = variant["pooling"].as_str().unwrap();
        assert!(!variant["normalize"].as_bool().unwrap(), "the fixture's variants drop Normalize");
        // Both ways sentence-transformers writes the mode: the newer name and the older flags.
        let pooling = if i % 2 == 0 {
            json!({"embedding_dimension": 384, "pooling_mode": mode, "include_prompt": true})
        } else {
            let flag = |m: &str| json!(m == mode);
            json!({"word_embedding_dimension": 384, "pooling_mode_cls_token": flag("cls"),
                   "pooling_mode_mean_tokens": flag("mean"), "pooling_mode_max_tokens": flag("max")})
        };
        let dir = broken_copy(|d| with_pooling(d, pooling));
        let e = Embedder::load(dir.path()).unwrap();
        assert_eq!((e.pooling().name(), e.normalizes()), (mode, false));
        let got = e.embed(&texts(&variant["texts"])).unwrap();
        for (j, (ours, want)) in got.iter().zip(vectors(&variant["vectors"])).enumerate() {
            check(&format!("{mode} pooling, text {j}"), ours, &want, false);
        }
    }
}

/// Loading `dir` fails with a message containing every needle.
fn load_fails(dir: &Path, needles: &[&str]) {
    let err = match Embedder::load(dir) {
        Ok(_) => panic!("{} loaded; expected an error mentioning {needles:?}", dir.display()),
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(err.contains(n), "error should mention '{n}': {err}");
    }
}

#[test]
fn missing_files_are_named() {
    for (file, needles) in [
        ("modules.json", &["modules.json", "not found"][..]),
        ("tokenizer.json", &["tokenizer.json", "not found"]),
        ("model.safetensors", &["no weights", "model.safetensors"]),
        ("config.json", &["config.json"]),
    ] {
        let dir = broken_copy(|d| std::fs::remove_file(d.join(file)).unwrap());
        load_fails(dir.path(), needles);
    }
    let dir = broken_copy(|d| std::fs::remove_dir_all(d.join("1_Pooling")).unwrap());
    load_fails(dir.path(), &["1_Pooling/config.json", "not found"]);
}

#[test]
fn unsupported_pooling_configs_are_refused() {
    let cases = [
        (json!({"embedding_dimension": 384, "pooling_mode": "weightedmean"}), &["1_Pooling/config.json", "weightedmean"][..]),
        (json!({"embedding_dimension": 384, "pooling_mode": ["cls", "mean"]}), &["1_Pooling/config.json", "cls", "mean"]),
        (json!({"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}), &["1_Pooling/config.json", "not supported"]),
        (json!({"pooling_mode_mean_tokens": false}), &["1_Pooling/config.json", "[]"]),
        (json!({"embedding_dimension": 768, "pooling_mode": "mean"}), &["'embedding_dimension' is 768", "hidden_size is 384"]),
        (json!({"pooling_mode": 3}), &["'pooling_mode' is 3"]),
    ];
    for (pooling, needles) in cases {
        let dir = broken_copy(|d| write_json(&d.join("1_Pooling/config.json"), &pooling));
        load_fails(dir.path(), needles);
    }
}

#[test]
fn unsupported_module_lists_are_refused() {
    let dense = json!({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"});
    let dir = broken_copy(|d| edit_json(&d.join("modules.json"), |m| m.as_array_mut().unwrap().insert(2, dense)));
    load_fails(dir.path(), &["modules.json", "sentence_transformers.models.Dense", "not supported"]);
    let dir = broken_copy(|d| edit_json(&d.join("modules.json"), |m| m.as_array_mut().unwrap().swap(1, 2)));
    load_fails(dir.path(), &["modules.json", "in that order"]);
    let dir = broken_copy(|d| edit_json(&d.join("modules.json"), |m| m[1]["path"] = json!("../elsewhere")));
    load_fails(dir.path(), &["modules.json", "'../elsewhere'", "inside the model directory"]);
    let dir = broken_copy(|d| edit_json(&d.join("modules.json"), |m| m[0]["path"] = json!("0_Transformer")));
    load_fails(dir.path(), &["modules.json", "module 0", "'0_Transformer/' is not supported"]);
    let dir = broken_copy(|d| write_json(&d.join("modules.json"), &json!({"0": "Transformer"})));
    load_fails(dir.path(), &["modules.json", "expected a list"]);
}

#[test]
fn config_shape_mismatches_name_the_tensor() {
    let edit = |key: &'static str, value: Value| move |d: &Path| edit_json(&d.join("config.json"), |c| c[key] = value);
    let dir = broken_copy(edit("hidden_size", json!(768)));
    load_fails(dir.path(), &["encoder.layer.0.attention.self.query.weight", "has shape [384, 384]", "[768, 768]"]);
    let dir = broken_copy(edit("intermediate_size", json!(1024)));
    load_fails(dir.path(), &["encoder.layer.0.intermediate.dense.weight", "has shape [1536, 384]", "[1024, 384]"]);
    let dir = broken_copy(edit("num_hidden_layers", json!(7)));
    load_fails(dir.path(), &["missing tensor 'encoder.layer.6.attention.self.query.weight'"]);
    let dir = broken_copy(edit("vocab_size", json!(30000)));
    load_fails(dir.path(), &["embeddings.word_embeddings.weight", "has shape [30522, 384]", "[30000, 384]"]);
    let dir = broken_copy(edit("max_position_embeddings", json!(1024)));
    load_fails(dir.path(), &["embeddings.position_embeddings.weight", "has shape [512, 384]"]);
}

#[test]
fn unsupported_config_values_are_refused() {
    for (key, value, needles) in [
        ("hidden_act", json!("relu"), &["config.json", "hidden_act 'relu'"][..]),
        ("position_embedding_type", json!("relative_key"), &["config.json", "position_embedding_type 'relative_key'"]),
        ("num_attention_heads", json!(5), &["hidden_size 384 is not a multiple of num_attention_heads 5"]),
        ("num_attention_heads", json!(0), &["num_attention_heads 0", "must all be positive"]),
        ("hidden_size", json!("384"), &["config.json", "'hidden_size' is missing or not a non-negative integer"]),
        ("model_type", json!("llama"), &["config.json", "model_type 'llama' is not an embedding model"]),
    ] {
        let dir = broken_copy(|d| {
            edit_json(&d.join("config.json"), |c| {
                c[key] = value;
                // Without this, "llama" would still count as BERT through `architectures`.
                c["architectures"] = json!([]);
            })
        });
        load_fails(dir.path(), needles);
    }
}

#[test]
fn token_limit_beyond_the_position_embeddings_is_refused() {
    let dir = broken_copy(|d| edit_json(&d.join("sentence_bert_config.json"), |c| c["max_seq_length"] = json!(1000)));
    load_fails(dir.path(), &["sentence_bert_config.json", "max_seq_length 1000 exceeds the 512 position embeddings"]);
    let dir = broken_copy(|d| edit_json(&d.join("sentence_bert_config.json"), |c| c["max_seq_length"] = json!(-1)));
    load_fails(dir.path(), &["sentence_bert_config.json", "'max_seq_length' is -1"]);
    // Without sentence_bert_config.json the limit is tokenizer_config.json's model_max_length
    // capped at the position embeddings, as sentence-transformers does.
    let dir = broken_copy(|d| std::fs::remove_file(d.join("sentence_bert_config.json")).unwrap());
    assert_eq!(Embedder::load(dir.path()).unwrap().max_tokens(), 512);
}

#[test]
fn text_of_zero_tokens_is_an_error_naming_it() {
    // A tokenizer without the [CLS] ... [SEP] post-processor turns "" into no tokens at all.
    let dir = broken_copy(|d| edit_json(&d.join("tokenizer.json"), |t| t["post_processor"] = Value::Null));
    let e = Embedder::load(dir.path()).unwrap();
    let one = e.embed(&["hello"]).unwrap();
    assert_eq!(one[0].tokens, 1);
    let err = e.embed(&["hello", ""]).unwrap_err().to_string();
    assert!(err.contains("text 1 tokenizes to zero tokens"), "{err}");
}

#[test]
fn embedding_and_generative_directories_are_told_apart() {
    let minilm = minilm_dir();
    assert!(is_embedding_model(&minilm));
    let tiny_llama = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf-tiny-llama");
    assert!(tiny_llama.join("config.json").is_file());
    assert!(!is_embedding_model(&tiny_llama));
    assert!(!is_embedding_model(&minilm.join("model.safetensors")));
    assert!(!is_embedding_model(Path::new("/nonexistent/dir")));
    load_fails(&tiny_llama, &["model_type 'llama' is not an embedding model"]);
    let err = match exo_models::load(&minilm, &Default::default()) {
        Ok(_) => panic!("the causal loader accepted an embedding model"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("'bert' is an embedding model"), "{err}");
}
