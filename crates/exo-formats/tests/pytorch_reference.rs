//! Checkpoints written by `torch.save` (tests/reference/gen_pytorch.py) read by exo's restricted
//! unpickler give the tensors `safetensors.torch` wrote from the same state dict.

use std::path::{Path, PathBuf};

use exo_formats::{FloatType, HfModelDir};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn dtype_name(d: FloatType) -> String {
    match d {
        FloatType::F32 => "F32".into(),
        FloatType::F16 => "F16".into(),
        FloatType::BF16 => "BF16".into(),
        FloatType::Other(s) => s.into(),
    }
}

fn assert_same_as_reference(dir: &Path) {
    let h = HfModelDir::open(dir).unwrap();
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let reference = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = reference.names().into_iter().map(String::from).collect();
    names.sort();
    assert_eq!(h.tensor_names(), names);
    for name in names {
        let want = reference.tensor(&name).unwrap();
        let got = h.tensor(&name).unwrap();
        assert_eq!(dtype_name(got.dtype), format!("{:?}", want.dtype()), "{name}");
        assert_eq!(got.shape, want.shape(), "{name}");
        assert!(&h.tensor_bytes(got)[..] == want.data(), "{name}: bytes differ");
    }
}

#[test]
fn tiny_llama_state_dict_matches_safetensors() {
    assert_same_as_reference(&fixture("pytorch-tiny-llama"));
}

#[test]
fn views_dtypes_scalars_and_parameters_match_safetensors() {
    assert_same_as_reference(&fixture("pytorch-views"));
}

#[test]
fn a_legacy_or_foreign_file_is_refused_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), "{}").unwrap();
    std::fs::write(d.path().join("pytorch_model.bin"), b"\x80\x02}q\x00.").unwrap();
    let e = HfModelDir::open(d.path()).unwrap_err().to_string();
    assert!(e.contains("pytorch_model.bin: not a PyTorch zip checkpoint"), "{e}");
}
