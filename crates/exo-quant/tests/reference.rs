//! exo-quant against references no one here wrote (fixtures from tests/reference/gen_quant.py):
//! ggml's quantizer and the `gguf` package's dequantizer for ggml's types, NumPy and torch for
//! NF4, FP8, INT8 and INT4; ggml's quantizer with an importance matrix for the weighted packing.

use std::path::PathBuf;

use exo_quant::{dequantize, quantize, quantize_weighted, QuantFormat};
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/quant")
}

fn read(name: &str) -> Vec<u8> {
    let p = dir().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn floats(name: &str) -> Vec<f32> {
    read(name).chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn manifest() -> Value {
    serde_json::from_slice(&read("manifest.json")).unwrap()
}

/// Root-mean-square error of `y` against `x`, per row of `cols` and overall.
fn rmse(x: &[f32], y: &[f32], cols: usize) -> (Vec<f64>, f64) {
    let sq = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| (f64::from(*p) - f64::from(*q)).powi(2)).sum::<f64>();
    let rows = x.chunks(cols).zip(y.chunks(cols)).map(|(a, b)| (sq(a, b) / cols as f64).sqrt()).collect();
    (rows, (sq(x, y) / x.len() as f64).sqrt())
}

const GGML: [&str; 9] = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q3_K", "q4_K", "q5_K", "q6_K"];
const OURS: [&str; 4] = ["nf4", "fp8_e4m3", "int8", "int4"];

#[test]
fn dequantization_matches_the_references() {
    let cols = manifest()["cols"].as_u64().unwrap() as usize;
    for name in GGML.iter().chain(&OURS) {
        let f = QuantFormat::from_name(name).unwrap();
        let ours = dequantize(f, &read(&format!("{name}.bin")), cols).unwrap();
        let want = floats(&format!("{name}.dequant.f32"));
        assert_eq!(ours.len(), want.len(), "{name}");
        for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
            assert!(a.to_bits() == b.to_bits() || (a - b).abs() <= 1e-6 * b.abs(), "{name}: value {i}: ours {a}, reference {b}");
        }
    }
}

#[test]
fn exact_formats_pack_the_reference_bytes() {
    // ggml's legacy quantizers and the formats exo defines have no search: the bytes are the format.
    let cols = manifest()["cols"].as_u64().unwrap() as usize;
    let x = floats("input.f32");
    for name in ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"].iter().chain(&OURS) {
        let f = QuantFormat::from_name(name).unwrap();
        let ours = quantize(f, &x, cols).unwrap();
        let want = read(&format!("{name}.bin"));
        let first = ours.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(ours.len(), want.len(), "{name}");
        assert!(first.is_none(), "{name}: byte {} differs: ours {}, reference {}", first.unwrap(), ours[first.unwrap()], want[first.unwrap()]);
    }
}

#[test]
fn k_quants_are_at_least_as_accurate_as_ggml() {
    let m = manifest();
    let cols = m["cols"].as_u64().unwrap() as usize;
    let x = floats("input.f32");
    for name in ["q3_K", "q4_K", "q5_K", "q6_K"] {
        let f = QuantFormat::from_name(name).unwrap();
        let packed = quantize(f, &x, cols).unwrap();
        assert_eq!(packed.len() as u64, m["types"][name]["bytes"].as_u64().unwrap(), "{name}");
        let (ours_rows, ours) = rmse(&x, &dequantize(f, &packed, cols).unwrap(), cols);
        let (ggml_rows, ggml) = rmse(&x, &floats(&format!("{name}.dequant.f32")), cols);
        assert!((ggml - m["types"][name]["rmse"].as_f64().unwrap()).abs() < 1e-9 * ggml.max(1.0));
        eprintln!("{name}: rmse ours {ours:.6} ggml {ggml:.6} (ratio {:.3})", ours / ggml);
        assert!(ours <= ggml, "{name}: rmse {ours} above ggml's {ggml}");
        for (r, (o, g)) in ours_rows.iter().zip(&ggml_rows).enumerate() {
            eprintln!("  row {r}: ours {o:.6} ggml {g:.6} ({:.3})", o / g.max(1e-30));
            assert!(*o <= g * 1.01 + 1e-9, "{name}: row {r}: rmse {o} above ggml's {g}");
        }
    }
}

/// `Σ w_c·(x − y)²` over the whole matrix, `w_c` the weight of column `c`.
fn weighted_sse(x: &[f32], y: &[f32], w: &[f32]) -> f64 {
    x.iter().zip(y).zip(w.iter().cycle()).map(|((&a, &b), &w)| f64::from(w) * (f64::from(a) - f64::from(b)).powi(2)).sum()
}

#[test]
fn importance_weighted_quantization_beats_ggml_with_the_same_importance_matrix() {
    let cols = manifest()["cols"].as_u64().unwrap() as usize;
    let (x, imatrix) = (floats("input.f32"), floats("imatrix.f32"));
    for name in ["q4_0", "q5_0", "q3_K", "q4_K", "q5_K", "q6_K"] {
        let f = QuantFormat::from_name(name).unwrap();
        let weighted = quantize_weighted(f, &x, cols, &imatrix).unwrap();
        let plain = quantize(f, &x, cols).unwrap();
        assert_eq!(weighted.len(), plain.len(), "{name}: the layout does not change");
        let ours = weighted_sse(&x, &dequantize(f, &weighted, cols).unwrap(), &imatrix);
        let unweighted = weighted_sse(&x, &dequantize(f, &plain, cols).unwrap(), &imatrix);
        let ggml = weighted_sse(&x, &floats(&format!("{name}.imatrix.dequant.f32")), &imatrix);
        eprintln!("{name}: weighted error ours {ours:.5}, ggml with imatrix {ggml:.5} ({:.3}), ours unweighted {unweighted:.5}", ours / ggml);
        assert!(ours <= ggml, "{name}: weighted error {ours} above ggml's {ggml} with the same importance matrix");
        assert!(ours < 0.97 * unweighted, "{name}: weighting gains too little ({ours} vs {unweighted})");
    }
    // ggml's Q4_1 and Q5_1 take no importance matrix in the fixture: the reference is ggml's own
    // packing, which the weighted one must beat on the weighted error.
    for name in ["q4_1", "q5_1"] {
        let f = QuantFormat::from_name(name).unwrap();
        let ours = weighted_sse(&x, &dequantize(f, &quantize_weighted(f, &x, cols, &imatrix).unwrap(), cols).unwrap(), &imatrix);
        let ggml = weighted_sse(&x, &floats(&format!("{name}.dequant.f32")), &imatrix);
        eprintln!("{name}: weighted error ours {ours:.5}, ggml without importance {ggml:.5} ({:.3})", ours / ggml);
        assert!(ours < 0.97 * ggml, "{name}: weighting gains too little ({ours} vs ggml's {ggml})");
    }
    let e = quantize_weighted(QuantFormat::from_name("q4_K").unwrap(), &x, cols, &imatrix[..100]).unwrap_err().to_string();
    assert!(e.contains("importance") && e.contains("100") && e.contains("1024"), "{e}");
}

#[test]
fn bad_inputs_name_the_cause() {
    let e = quantize(QuantFormat::from_name("q4_K").unwrap(), &[0.0; 576], 576).unwrap_err().to_string();
    assert!(e.contains("q4_K") && e.contains("576") && e.contains("256"), "{e}");
    let e = quantize(QuantFormat::from_name("iq2_xxs").unwrap(), &[0.0; 256], 256).unwrap_err().to_string();
    assert!(e.contains("iq2_xxs") && e.contains("q4_K"), "{e}");
    let e = quantize(QuantFormat::Int8, &[0.0; 200], 128).unwrap_err().to_string();
    assert!(e.contains("200") && e.contains("128"), "{e}");
    let e = dequantize(QuantFormat::Nf4, &[0; 35], 64).unwrap_err().to_string();
    assert!(e.contains("35") && e.contains("34"), "{e}");
}
