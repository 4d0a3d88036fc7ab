//! `exo quantize` against llama.cpp (fixtures from tests/reference/gen_quantize.py): the files
//! exo writes are the ones llama.cpp loaded, and exo's greedy decoding of them equals llama.cpp's
//! (uniform types, and Q4_K with scales chosen by an importance matrix).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use exo_models::calibration::DEFAULT_TEXT;
use exo_models::convert::{quantize, quantize_with_importance};
use exo_models::{load, LoadOptions};
use exo_quant::QuantFormat;
use serde_json::Value;

const MODEL: &str = "smollm2-135m-instruct";

fn fixture() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/fixtures/quantize/{MODEL}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn check(ty: &str) {
    let fx = fixture();
    let want = &fx["files"][ty];
    let src: PathBuf = exo_models::models_dir().join(format!("{MODEL}.gguf"));
    assert!(src.is_file(), "{} is missing: run scripts/fetch-models.sh all", src.display());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(format!("{ty}.gguf"));
    let report = match ty.strip_suffix("+imatrix") {
        Some(t) => quantize_with_importance(&src, &out, QuantFormat::from_name(t).unwrap(), DEFAULT_TEXT).unwrap(),
        None => quantize(&src, &out, QuantFormat::from_name(ty).unwrap()).unwrap(),
    };
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes.len() as u64, report.file_bytes);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes);
    assert_eq!(
        u64::from(crc.finalize()),
        want["crc32"].as_u64().unwrap(),
        "{ty}: the file differs from the one llama.cpp decoded (tests/reference/gen_quantize.py regenerates it)"
    );
    // The gguf package spells types in capitals (Q4_K, F32).
    let ours: BTreeMap<String, u64> = report.type_counts().iter().map(|(t, n)| (t.to_ascii_uppercase(), *n as u64)).collect();
    let theirs: BTreeMap<String, u64> =
        want["tensor_types"].as_object().unwrap().iter().map(|(t, n)| (t.to_ascii_uppercase(), n.as_u64().unwrap())).collect();
    assert_eq!(ours, theirs, "{ty}: tensor types");
    let m = load(&out, &LoadOptions::default()).unwrap();
    let t = &m.transformer;
    for run in want["greedy"].as_array().unwrap() {
        let mut state = t.new_state(256, 64).unwrap();
        t.forward(&mut state, &ids(&run["prompt_ids"]), false).unwrap();
        for (step, (want, margin)) in ids(&run["ids"]).into_iter().zip(run["margins"].as_array().unwrap()).enumerate() {
            // A near-tie in llama.cpp's own logits may flip under a different summation order.
            if margin.as_f64().unwrap() < 0.1 {
                break;
            }
            let row = state.last_logits();
            let got = (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best }) as u32;
            assert_eq!(got, want, "{ty}: greedy step {step} after {:?} differs from llama.cpp's", run["prompt_ids"]);
            t.forward(&mut state, &[got], false).unwrap();
        }
    }
}

#[test]
fn q4_k_file_decodes_like_llama_cpp() {
    check("q4_K");
}

#[test]
fn q5_k_file_decodes_like_llama_cpp() {
    check("q5_K");
}

#[test]
fn q6_k_file_decodes_like_llama_cpp() {
    check("q6_K");
}

#[test]
fn importance_weighted_q4_k_file_decodes_like_llama_cpp() {
    check("q4_K+imatrix");
}

#[test]
fn q3_k_file_decodes_like_llama_cpp() {
    check("q3_K");
}

#[test]
fn q8_0_file_decodes_like_llama_cpp() {
    check("q8_0");
}

#[test]
fn formats_without_a_gguf_type_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = exo_models::models_dir().join(format!("{MODEL}.gguf"));
    let e = quantize(&src, &dir.path().join("x.gguf"), QuantFormat::Nf4).unwrap_err().to_string();
    assert!(e.contains("nf4") && e.contains("--quantize"), "{e}");
}
