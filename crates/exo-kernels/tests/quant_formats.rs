//! Products with exo-quant's formats (NF4, FP8 E4M3, INT8, INT4) against an f64 product of the
//! dequantized weights, and the exactness of the INT8/INT4 rewrites into ggml blocks.

use exo_kernels::Matrix;
use exo_quant::{dequantize, quantize, QuantFormat};
use rand::{Rng, SeedableRng};

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0) * rng.random_range(0.0f32..1.0)).collect()
}

/// Checks `Matrix::matmul` against the f64 product of the dequantized weights; `tol` is relative
/// to `Σ|w·x|` of each output (the scale of the rounding that activation quantization causes).
fn check(format: QuantFormat, rows: usize, cols: usize, m: usize, tol: f64) {
    let w = random(rows * cols, 1);
    let x = random(m * cols, 2);
    let packed = quantize(format, &w, cols).unwrap();
    let deq = dequantize(format, &packed, cols).unwrap();
    let mat = Matrix::from_quant("w", format, rows, cols, &packed).unwrap();
    assert_eq!(mat.format(), format);
    assert_eq!(mat.to_f32(), deq, "{format}: the matrix holds other values than the format's dequantization");
    let mut row = vec![0f32; cols];
    mat.row_to_f32(rows - 1, &mut row).unwrap();
    assert_eq!(row, deq[(rows - 1) * cols..]);
    let mut out = vec![0f32; m * rows];
    mat.matmul(&x, m, &mut out).unwrap();
    for i in 0..m {
        for r in 0..rows {
            let (mut want, mut mag) = (0f64, 0f64);
            for c in 0..cols {
                let p = f64::from(deq[r * cols + c]) * f64::from(x[i * cols + c]);
                want += p;
                mag += p.abs();
            }
            let got = f64::from(out[i * rows + r]);
            assert!((got - want).abs() <= tol * mag + 1e-12, "{format} {rows}x{cols} m={m}: out[{i}][{r}] = {got}, want {want}");
        }
    }
}

#[test]
fn float_activation_formats_match_the_dequantized_product() {
    for format in [QuantFormat::Nf4, QuantFormat::Fp8E4M3] {
        for (rows, cols, m) in [(37, 384, 1), (37, 384, 5), (1, 64, 3), (16, 1000, 2)] {
            if format.row_bytes(cols).is_some() {
                check(format, rows, cols, m, 1e-5);
            }
        }
    }
}

#[test]
fn integer_formats_run_exactly_on_ggml_kernels() {
    // Q8_0 and Q4_1 kernels round activations to 8 bits, as ggml does: an error of up to half
    // an activation step per product.
    for format in [QuantFormat::Int8, QuantFormat::Int4] {
        for (rows, cols, m) in [(37, 384, 1), (37, 384, 5), (1, 128, 3)] {
            check(format, rows, cols, m, 1e-2);
        }
    }
}

#[test]
fn wrong_sizes_name_the_format() {
    let e = Matrix::from_quant("blk.0.ffn_up.weight", QuantFormat::Nf4, 2, 64, &[0; 67]).err().unwrap().to_string();
    assert!(e.contains("blk.0.ffn_up.weight") && e.contains("nf4") && e.contains("68") && e.contains("67"), "{e}");
    let e = Matrix::from_quant("w", QuantFormat::Int4, 1, 100, &[0; 66]).err().unwrap().to_string();
    assert!(e.contains("int4") && e.contains("100") && e.contains("128"), "{e}");
}
