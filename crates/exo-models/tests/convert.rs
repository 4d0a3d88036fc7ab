//! `exo convert` checked against references: a converted model must give the logits transformers
//! and llama.cpp give for the original (fixtures from tests/reference/), and a round trip must
//! change nothing.

use std::path::{Path, PathBuf};

use exo_formats::{GgufFile, HfModelDir};
use exo_models::convert::{convert, DType};
use exo_models::weights::{WeightFile, Weights};
use exo_models::{load, LoadOptions, LoadedModel, Transformer};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn logits(t: &Transformer, tokens: &[u32]) -> Vec<f32> {
    let mut state = t.new_state(tokens.len(), tokens.len()).unwrap();
    t.forward(&mut state, tokens, true).unwrap();
    state.logits().to_vec()
}

/// Largest absolute difference relative to the largest reference magnitude.
fn rel_err(ours: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(ours.len(), reference.len());
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    ours.iter().zip(reference).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

/// Compares with a transformers fixture of sparse logits (`indices` at `positions`).
fn check_sparse(t: &Transformer, case: &Value, tokens: &[u32], tol: f32, label: &str) {
    let vocab = t.config().vocab_size;
    let all = logits(t, tokens);
    let idx = ids(&case["indices"]);
    for (p, want) in case["positions"].as_array().unwrap().iter().zip(case["logits"].as_array().unwrap()) {
        let p = p.as_u64().unwrap() as usize;
        let ours: Vec<f32> = idx.iter().map(|&i| all[p * vocab + i as usize]).collect();
        let want: Vec<f32> = want.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let err = rel_err(&ours, &want);
        assert!(err < tol, "{label}: position {p}: relative logit error {err} exceeds {tol}");
    }
}

/// The transformer of a converted GGUF file or directory, built without its tokenizer (tiny
/// checkpoints carry a WordPiece vocabulary that has no GGUF form).
fn transformer(path: &Path) -> Transformer {
    let (file, config) = if path.is_dir() {
        let h = HfModelDir::open(path).unwrap();
        let c = exo_models::config_from_hf(&h).unwrap();
        (WeightFile::Hf(h), c)
    } else {
        let g = GgufFile::open(path).unwrap();
        let c = exo_models::config_from_gguf(&g).unwrap();
        (WeightFile::Gguf(g), c)
    };
    Transformer::load(config.clone(), &Weights::new(&file, config.arch, false)).unwrap()
}

/// GGUF -> Hugging Face (f32) -> GGUF for a real model, checked against
/// tests/fixtures/convert/<name>.json (tests/reference/gen_convert.py).
fn gguf_round_trip(name: &str) {
    let src = exo_models::models_dir().join(format!("{name}.gguf"));
    assert!(src.is_file(), "{} is missing: run scripts/fetch-models.sh all", src.display());
    let fx = read_json(&fixtures().join(format!("convert/{name}.json")));
    let d = tempfile::tempdir().unwrap();
    let (hf, rt) = (d.path().join("hf"), d.path().join("rt.gguf"));
    assert_eq!(convert(&src, &hf, Some(DType::F32)).unwrap(), Vec::<String>::new());

    // The directory runs in exo on the Hugging Face path (NeoX RoPE on un-permuted q/k for
    // llama) and gives the logits transformers gives for the same directory.
    let m_hf = load(&hf, &LoadOptions::default()).unwrap();
    let case = &fx["logits"];
    check_sparse(&m_hf.transformer, case, &ids(&case["ids"]), 1e-3, "converted directory");
    // Its tokenizer.json tokenizes as llama.cpp does with the GGUF's vocabulary.
    check_tokenizer(&m_hf, name);
    drop(m_hf);

    // Back to GGUF: the f32 weights are the dequantized originals, so the logits are those of the
    // original on exo's dequantized path, and the tokenizer and template are unchanged.
    convert(&hf, &rt, None).unwrap();
    let m_rt = load(&rt, &LoadOptions::default()).unwrap();
    let m_deq = load(&src, &LoadOptions { dequantize: true, ..Default::default() }).unwrap();
    let tokens = ids(&case["ids"]);
    let (a, b) = (logits(&m_rt.transformer, &tokens), logits(&m_deq.transformer, &tokens));
    assert!(rel_err(&a, &b) < 1e-6, "round trip changed the logits by {}", rel_err(&a, &b));
    drop(m_deq);
    check_tokenizer(&m_rt, name);
    let src_g = GgufFile::open(&src).unwrap();
    let rt_g = GgufFile::open(&rt).unwrap();
    assert_eq!(rt_g.opt_str("tokenizer.chat_template"), src_g.opt_str("tokenizer.chat_template"));

    // llama.cpp loaded the same round-tripped file; greedy decoding agrees up to its first near-tie.
    let g = &fx["roundtrip_greedy"];
    let mut seq = ids(&g["prompt_ids"]);
    let t = &m_rt.transformer;
    let mut state = t.new_state(256, 64).unwrap();
    t.forward(&mut state, &seq, false).unwrap();
    for (want, margin) in ids(&g["ids"]).into_iter().zip(g["margins"].as_array().unwrap()) {
        let row = state.last_logits();
        let got = (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best }) as u32;
        if margin.as_f64().unwrap() < 0.05 {
            break;
        }
        assert_eq!(got, want, "{name}: greedy token {} differs from llama.cpp's", seq.len());
        seq.push(got);
        t.forward(&mut state, &[got], false).unwrap();
    }
}

#[test]
fn smollm2_gguf_to_hf_and_back() {
    gguf_round_trip("smollm2-135m-instruct");
}

#[test]
fn gemma3_gguf_to_hf_and_back() {
    // SentencePiece vocabulary (merges rebuilt from scores), norm weights stored as 1 + w.
    gguf_round_trip("gemma3-270m");
}

/// Tokenization of llama.cpp's fixture texts with the converted tokenizer.
fn check_tokenizer(m: &LoadedModel, name: &str) {
    let fx = read_json(&fixtures().join(format!("llamacpp/{name}.json")));
    for case in fx["tokenize"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let (bos, special) = (case["add_bos"].as_bool().unwrap(), case["special"].as_bool().unwrap());
        let got = m.tokenizer.encode(text, bos, special).unwrap();
        assert_eq!(got, ids(&case["ids"]), "{text:?} (add_bos {bos}, special {special})");
    }
}

/// Copies a tiny fixture's config and weights (not its WordPiece tokenizer) to `dir`.
fn copy_without_tokenizer(src: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        if !n.starts_with("tokenizer") {
            std::fs::copy(&p, dir.join(&n)).unwrap();
        }
    }
}

fn tiny_to_gguf(fixture: &str) {
    let d = tempfile::tempdir().unwrap();
    let (src, out) = (d.path().join("hf"), d.path().join("m.gguf"));
    copy_without_tokenizer(&fixtures().join(fixture), &src);
    let notes = convert(&src, &out, None).unwrap();
    assert!(notes.iter().any(|n| n.contains("no tokenizer.json")), "{notes:?}");
    let fx = read_json(&src.join("logits.json"));
    let t = transformer(&out);
    for case in fx["cases"].as_array().unwrap() {
        check_sparse(&t, case, &ids(&case["ids"]), 1e-3, fixture);
    }
}

#[test]
fn tiny_llama_to_gguf_matches_transformers() {
    // Llama: q/k rows permuted for interleaved RoPE, llama3 rope scaling as rope_freqs.weight,
    // bf16 matrices kept bf16.
    tiny_to_gguf("hf-tiny-llama");
}

#[test]
fn tiny_qwen2_to_gguf_matches_transformers() {
    tiny_to_gguf("hf-tiny-qwen2");
}

#[test]
fn tiny_gemma3_settings_gguf_cannot_hold_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let e = convert(&fixtures().join("hf-tiny-gemma3"), &d.path().join("g.gguf"), None).unwrap_err().to_string();
    assert!(e.contains("cannot convert: rope_local_base_freq 20"), "{e}");
    assert!(!d.path().join("g.gguf").exists());
}

#[test]
fn pytorch_checkpoint_runs_and_converts() {
    let src = fixtures().join("pytorch-tiny-llama");
    let fx = read_json(&src.join("logits.json"));
    let tokens = ids(&fx["ids"]);
    let want: Vec<f32> = fx["logits"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().clone()).map(|x| x.as_f64().unwrap() as f32).collect();
    let direct = logits(&transformer(&src), &tokens);
    assert!(rel_err(&direct, &want) < 1e-3, "pytorch_model.bin: {}", rel_err(&direct, &want));
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("m.gguf");
    convert(&src, &out, Some(DType::F32)).unwrap();
    let converted = logits(&transformer(&out), &tokens);
    assert!(rel_err(&converted, &want) < 1e-3, "converted: {}", rel_err(&converted, &want));
}

#[test]
fn bad_conversions_name_the_cause() {
    let d = tempfile::tempdir().unwrap();
    let e = convert(&d.path().join("nothing"), &d.path().join("x"), None).unwrap_err().to_string();
    assert!(e.contains("not a model"), "{e}");
    let existing = d.path().join("exists.gguf");
    std::fs::write(&existing, b"").unwrap();
    let e = convert(&fixtures().join("hf-tiny-qwen2"), &existing, None).unwrap_err().to_string();
    assert!(e.contains("exists.gguf: cannot convert: the output file exists"), "{e}");
    let e = convert(&fixtures().join("hf-tiny-qwen2"), &d.path().join("q.gguf"), None).unwrap_err().to_string();
    assert!(e.contains("tokenizer model '\"WordPiece\"' has no GGUF form"), "{e}");
    assert!(!d.path().join("q.gguf").exists());
}
