//! Weights exo cannot compute, or whose size disagrees with their shape, are refused with a
//! message naming the tensor, the type and the numbers.

use exo_formats::GgmlType;
use exo_kernels::Matrix;

#[test]
fn a_type_without_a_kernel_is_named() {
    let bytes = vec![0u8; GgmlType::IQ2XXS.type_size()];
    let err = Matrix::from_bytes("blk.0.ffn_up.weight", GgmlType::IQ2XXS, 1, 256, &bytes).err().unwrap().to_string();
    assert!(err.contains("blk.0.ffn_up.weight") && err.contains("iq2_xxs") && err.contains("no CPU kernel"), "{err}");
}

#[test]
fn a_size_mismatch_names_both_sizes() {
    let err = Matrix::from_bytes("w", GgmlType::Q8_0, 2, 64, &[0u8; 100]).err().unwrap().to_string();
    assert!(err.contains("'w'") && err.contains("needs 136 bytes but has 100"), "{err}");
}

#[test]
fn bad_buffer_lengths_are_errors_not_panics() {
    let m = Matrix::from_f32("w", 2, 3, vec![1.0; 6]).unwrap();
    let mut out = [0f32; 2];
    let err = m.matmul(&[1.0; 4], 1, &mut out).unwrap_err().to_string();
    assert!(err.contains("activations has 4 elements, expected 3"), "{err}");
    let mut out = [0f32; 3];
    m.matmul(&[1.0; 3], 1, &mut out[..2]).unwrap();
    assert_eq!(out[..2], [3.0, 3.0]);
}
