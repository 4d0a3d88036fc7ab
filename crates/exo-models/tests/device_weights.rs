//! What a GPU is handed for each matrix under `--quantize` (read on the CPU, so CI checks it
//! without a GPU): INT8 and INT4 as the Q8_0 and Q4_1 blocks that hold exactly the values the
//! CPU computes with, a GGUF type as that type's blocks, and formats the GPU has no kernels for
//! refused by name.

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
fn int_formats_reach_the_gpu_as_ggml_blocks_with_the_same_values() {
    let file = file();
    for (format, carrier) in [("int8", GgmlType::Q8_0), ("int4", GgmlType::Q4_1), ("q4_K", GgmlType::Q4K)] {
        let carrier = QuantFormat::Ggml(carrier);
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

#[test]
fn formats_without_gpu_kernels_are_refused_by_name() {
    let file = file();
    for format in ["nf4", "fp8"] {
        let w = Weights::new(&file, Arch::Llama, false).with_quantize(QuantFormat::from_name(format));
        let err = w.device_matrix(NAME, 576, 1536).err().expect("no GPU kernels").to_string();
        assert!(err.contains(&format!("--quantize {format}")) && err.contains("GPU"), "{err}");
    }
}
