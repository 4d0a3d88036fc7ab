//! Hugging Face model directories: `config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json`. Tensor data stays in the mapped shards until a kernel reads it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::{FormatError, TensorBytes};

/// Element types of safetensors tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatType {
    /// IEEE single.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// Any other safetensors dtype (integers, f64, fp8...), named as safetensors spells it.
    Other(&'static str),
}

/// One tensor of a directory.
#[derive(Clone, Debug)]
pub struct SafeTensorInfo {
    /// Checkpoint name (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Element type.
    pub dtype: FloatType,
    /// Shape, outermost dimension first (PyTorch order).
    pub shape: Vec<usize>,
    shard: usize,
    range: std::ops::Range<usize>,
}

/// An open Hugging Face model directory.
pub struct HfModelDir {
    dir: PathBuf,
    config: serde_json::Value,
    shards: Vec<Arc<Mmap>>,
    tensors: HashMap<String, SafeTensorInfo>,
}

impl HfModelDir {
    /// Opens `dir`: parses `config.json` and the headers of every weight file: safetensors
    /// (`model.safetensors` or a sharded index) or else PyTorch (`pytorch_model.bin` or its
    /// sharded index), whose pickles are read without executing anything.
    pub fn open(dir: &Path) -> Result<Self, FormatError> {
        let config = read_json(&dir.join("config.json"))?;
        let (files, pytorch) = if let Some(names) = shard_names(dir, "model.safetensors")? {
            (names, false)
        } else if let Some(names) = shard_names(dir, "pytorch_model.bin")? {
            (names, true)
        } else {
            return Err(FormatError::invalid(
                dir,
                "no weights: expected model.safetensors, pytorch_model.bin or a sharded index of either",
            ));
        };
        let mut shards = Vec::with_capacity(files.len());
        let mut tensors = HashMap::new();
        for (i, name) in files.iter().enumerate() {
            let path = dir.join(name);
            let (map, found) = if pytorch { read_pytorch(&path)? } else { read_safetensors(&path)? };
            for (tname, dtype, shape, range) in found {
                let t = SafeTensorInfo { name: tname.clone(), dtype, shape, shard: i, range };
                if tensors.insert(tname.clone(), t).is_some() {
                    return Err(FormatError::invalid(&path, format!("tensor '{tname}' appears in two shards")));
                }
            }
            shards.push(map);
        }
        Ok(Self { dir: dir.to_path_buf(), config, shards, tensors })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed `config.json`.
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// A tensor by checkpoint name.
    pub fn tensor(&self, name: &str) -> Option<&SafeTensorInfo> {
        self.tensors.get(name)
    }

    /// All tensor names, sorted.
    pub fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tensors.keys().cloned().collect();
        names.sort();
        names
    }

    /// A zero-copy view of a tensor's data.
    pub fn tensor_bytes(&self, info: &SafeTensorInfo) -> TensorBytes {
        TensorBytes::new(self.shards[info.shard].clone(), info.range.clone())
    }

    /// A JSON file of the directory if present (`tokenizer_config.json`,
    /// `generation_config.json`); `Ok(None)` when absent, an error naming the file when invalid.
    pub fn optional_json(&self, file: &str) -> Result<Option<serde_json::Value>, FormatError> {
        let path = self.dir.join(file);
        if path.is_file() {
            read_json(&path).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl std::fmt::Debug for HfModelDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HfModelDir({}, {} tensors)", self.dir.display(), self.tensors.len())
    }
}

fn float_type(d: Dtype) -> FloatType {
    match d {
        Dtype::F32 => FloatType::F32,
        Dtype::F16 => FloatType::F16,
        Dtype::BF16 => FloatType::BF16,
        Dtype::F64 => FloatType::Other("F64"),
        Dtype::I8 => FloatType::Other("I8"),
        Dtype::U8 => FloatType::Other("U8"),
        Dtype::I16 => FloatType::Other("I16"),
        Dtype::I32 => FloatType::Other("I32"),
        Dtype::I64 => FloatType::Other("I64"),
        Dtype::BOOL => FloatType::Other("BOOL"),
        _ => FloatType::Other("an unsupported dtype"),
    }
}

/// The weight files of `dir` named after `single` (`model.safetensors`): the shards listed by
/// `single.index.json`, or `single` itself; `None` when neither exists.
fn shard_names(dir: &Path, single: &str) -> Result<Option<Vec<String>>, FormatError> {
    let index_path = dir.join(format!("{single}.index.json"));
    if !index_path.is_file() {
        return Ok(dir.join(single).is_file().then(|| vec![single.to_string()]));
    }
    let index = read_json(&index_path)?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| FormatError::invalid(&index_path, "field 'weight_map' is missing or not an object"))?;
    let mut names: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| FormatError::invalid(&index_path, format!("weight_map['{tensor}'] is not a file name")))?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(FormatError::invalid(
                &index_path,
                format!("weight_map['{tensor}'] = '{file}' points outside the directory"),
            ));
        }
        if !names.iter().any(|n| n == file) {
            names.push(file.to_string());
        }
    }
    names.sort();
    Ok(Some(names))
}

/// A weight file's tensors: (name, element type, shape, byte range in the map).
type FileTensors = (Arc<Mmap>, Vec<(String, FloatType, Vec<usize>, std::ops::Range<usize>)>);

fn read_safetensors(path: &Path) -> Result<FileTensors, FormatError> {
    let map = crate::bytes::map_file(path)?;
    let (header_len, meta) = SafeTensors::read_metadata(&map)
        .map_err(|e| FormatError::invalid(path, format!("invalid safetensors header: {e}")))?;
    let base = 8 + header_len;
    // read_metadata checked the offsets are contiguous and end at the file's end.
    let tensors = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, float_type(info.dtype), info.shape.clone(), base + info.data_offsets.0..base + info.data_offsets.1))
        .collect();
    Ok((map, tensors))
}

fn read_pytorch(path: &Path) -> Result<FileTensors, FormatError> {
    let (map, found) = crate::pytorch::read_checkpoint(path)?;
    Ok((map, found.into_iter().map(|t| (t.name, t.dtype, t.shape, t.range)).collect()))
}

/// Reads and parses a JSON file, naming it in any error.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, FormatError> {
    let text = std::fs::read_to_string(path).map_err(|source| FormatError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|e| FormatError::invalid(path, format!("invalid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_st(path: &Path, tensors: &[(&str, &[usize], Vec<f32>)]) {
        let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| t.2.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
        let data: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .zip(&bytes)
            .map(|(t, b)| (t.0.to_string(), safetensors::tensor::TensorView::new(Dtype::F32, t.1.to_vec(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(data, None, path).unwrap();
    }

    #[test]
    fn reads_sharded_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), r#"{"model_type":"llama"}"#).unwrap();
        write_st(&d.path().join("a.safetensors"), &[("x", &[2], vec![1.0, 2.0])]);
        write_st(&d.path().join("b.safetensors"), &[("y", &[1, 3], vec![3.0, 4.0, 5.0])]);
        std::fs::write(
            d.path().join("model.safetensors.index.json"),
            r#"{"weight_map":{"x":"a.safetensors","y":"b.safetensors"}}"#,
        )
        .unwrap();
        let h = HfModelDir::open(d.path()).unwrap();
        assert_eq!(h.tensor_names(), ["x", "y"]);
        let y = h.tensor("y").unwrap();
        assert_eq!((y.dtype, y.shape.clone()), (FloatType::F32, vec![1, 3]));
        assert_eq!(&h.tensor_bytes(y)[..4], &3f32.to_le_bytes());
        assert_eq!(h.config()["model_type"], "llama");
    }

    #[test]
    fn errors_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        let e = HfModelDir::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        std::fs::write(d.path().join("config.json"), "{").unwrap();
        let e = HfModelDir::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("config.json: invalid JSON"), "{e}");
        std::fs::write(d.path().join("config.json"), "{}").unwrap();
        let e = HfModelDir::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("no weights: expected model.safetensors, pytorch_model.bin"), "{e}");
        std::fs::write(d.path().join("model.safetensors"), [200u8, 0, 0, 0, 0, 0, 0, 0, b'{']).unwrap();
        let e = HfModelDir::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("model.safetensors: invalid safetensors header"), "{e}");
        std::fs::write(d.path().join("model.safetensors.index.json"), r#"{"weight_map":{"x":"../etc/passwd"}}"#).unwrap();
        let e = HfModelDir::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("points outside the directory"), "{e}");
    }
}
