//! Sensitivity measurements behind `exo quantize --target-bpw` on a real model (SmolLM2): the
//! activation statistics cover every matrix input, and one tensor's quantization moves the
//! output distribution by more the coarser its format.

use exo_kernels::Matrix;
use exo_models::calibration::{collect, KlProbe, DEFAULT_TEXT};
use exo_models::{load, LoadOptions};
use exo_quant::{GgmlType, QuantFormat};

#[test]
fn statistics_and_kl_follow_the_quantization_of_one_tensor() {
    let p = exo_models::models_dir().join("smollm2-135m-instruct.gguf");
    assert!(p.is_file(), "{} is missing: run scripts/fetch-models.sh all", p.display());
    // Re-quantized matrices are kept apart (not stacked), so each can be swapped alone.
    let opts = LoadOptions { quantize: Some(QuantFormat::Ggml(GgmlType::Q8_0)), ..Default::default() };
    let mut m = load(&p, &opts).unwrap();
    let tokens = m.tokenizer.encode(DEFAULT_TEXT, true, false).unwrap();
    let tokens = &tokens[..96];
    let stats = collect(&m.transformer, tokens, 48).unwrap();
    assert_eq!(stats.tokens(), 96);
    for (name, cols) in [("blk.0.attn_q.weight", 576), ("blk.29.ffn_down.weight", 1536), ("blk.7.attn_output.weight", 576), ("token_embd.weight", 576)] {
        let w = stats.column_weights(name, true).unwrap_or_else(|| panic!("{name}: no statistics"));
        assert_eq!(w.len(), cols, "{name}");
        assert!(w.iter().all(|&v| v >= 0.0) && w.iter().any(|&v| v > 0.0), "{name}");
    }
    assert!(stats.column_weights("token_embd.weight", false).is_none(), "an untied embedding has no input activations");

    let own = KlProbe::new(&m.transformer, &tokens[..64]).unwrap();
    assert_eq!(own.kl(&m.transformer).unwrap(), 0.0);
    // The tied embedding, the model's one Q8_0 tensor: its other matrices are Q4_1 on PyPI, and
    // a Q4_1 grid is one that Q4_K reproduces better than Q6_K, so they would not order.
    let (name, rows, cols) = ("token_embd.weight", 49152, 576);
    let t = &mut m.transformer;
    let base = t.swap_matrix(name, Matrix::from_f32(name, rows, cols, vec![0.0; rows * cols]).unwrap()).unwrap();
    let values = base.to_f32();
    // The reference multiplies this matrix in f32 too, so that only its weights differ (the
    // quantized kernels also round activations).
    t.swap_matrix(name, base.dequantized());
    let probe = KlProbe::new(t, &tokens[..64]).unwrap();
    let mut kl = Vec::new();
    for ty in [GgmlType::Q4_0, GgmlType::Q5_0] {
        let f = QuantFormat::Ggml(ty);
        let packed = exo_quant::quantize(f, &values, cols).unwrap();
        // In f32, so that only the weights differ (quantized kernels also round activations).
        let deq = exo_quant::dequantize(f, &packed, cols).unwrap();
        t.swap_matrix(name, Matrix::from_f32(name, rows, cols, deq).unwrap());
        kl.push(probe.kl(t).unwrap());
    }
    t.swap_matrix(name, base);
    assert_eq!(own.kl(t).unwrap(), 0.0, "swapping the base matrix back restores the distributions");
    assert!(kl[0] > kl[1] && kl[1] > 0.0, "KL of q4_0 {} should exceed q5_0's {}", kl[0], kl[1]);
}
