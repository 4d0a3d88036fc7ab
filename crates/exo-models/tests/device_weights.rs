//! What a GPU is handed for each matrix under `--quantize` (read on the CPU, so CI checks it
//! without a GPU): INT8 and INT4 as the Q8_0 and Q4_1 blocks that hold exactly the values the
//! CPU computes with, a GGUF type as that type's blocks, NF4 and FP8 in exo's layouts; each
//! dequantizes bit for bit to the CPU's values.

use exo_formats::{GgmlType, GgufFile};
use exo_models::config::Arch;
use exo_models::weights::{WeightFile, Weights};
use exo_quant::QuantFormat;

const NAME: &str = "blk.0.ffn_down.weight";

fn file() -> WeightFile {
    let path = exo_models::models_dir().join("smollm2-135m-instruct.gguf");
    assert!(path.is_file(), "{} is missing: run scripts/fetch-models.sh all", path.display());
    WeightFile::Gguf(GgufFile::open(&path).unwrap())
}

/// Rows and columns of the test matrix, and its values as the CPU re-quantizes them to `f`.
fn cpu_values(file: &WeightFile, f: QuantFormat) -> (usize, usize, Vec<f32>) {
    let w = Weights::new(file, Arch::Llama, false).with_quantize(Some(f));
    let (rows, cols) = (576, 1536);
    let m = w.matrix(NAME, rows, cols).unwrap();
    (rows, cols, m.to_f32())
}

#[test]
fn quantized_formats_reach_the_gpu_with_the_values_the_cpu_uses() {
    let file = file();
    let cases = [
        ("int8", QuantFormat::Ggml(GgmlType::Q8_0)),
        ("int4", QuantFormat::Ggml(GgmlType::Q4_1)),
        ("q4_K", QuantFormat::Ggml(GgmlType::Q4K)),
        ("nf4", QuantFormat::Nf4),
        ("fp8", QuantFormat::Fp8E4M3),
    ];
    for (format, carrier) in cases {
        let f = QuantFormat::from_name(format).unwrap();
        let (rows, cols, want) = cpu_values(&file, f);
        let w = Weights::new(&file, Arch::Llama, false).with_quantize(Some(f));
        assert_eq!(w.device_type(NAME, rows, cols).unwrap(), carrier, "{format}");
        let (ty, bytes) = w.device_matrix(NAME, rows, cols).unwrap();
        assert_eq!(ty, carrier, "{format}");
        let got = exo_quant::dequantize(ty, &bytes, cols).unwrap();
        assert_eq!(got.len(), want.len(), "{format}");
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert_eq!(diff, 0.0, "{format}: the GPU's values differ from the CPU's by up to {diff}");
    }
}
