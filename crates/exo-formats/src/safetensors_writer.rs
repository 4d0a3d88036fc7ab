//! safetensors writer, with Hugging Face's sharding: above `max_shard_bytes` the tensors are
//! split into `model-0000i-of-0000n.safetensors` files plus `model.safetensors.index.json`.
//!
//! Layout (the safetensors spec): an 8-byte little-endian header length, a JSON header mapping
//! each name to `{dtype, shape, data_offsets}` (padded with spaces to 8 bytes), then the data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::atomic::AtomicFile;
use crate::gguf_writer::TensorSource;
use crate::{FloatType, FormatError};

/// Hugging Face's default shard size (`max_shard_size="5GB"` in recent transformers is too large
/// for some filesystems; 2 GB keeps every shard under FAT32's 4 GB and loads in small steps).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 2_000_000_000;

struct PendingTensor<'a> {
    name: String,
    dtype: FloatType,
    shape: Vec<usize>,
    n_bytes: usize,
    source: TensorSource<'a>,
}

/// A set of tensors to write as safetensors, in the order added.
#[derive(Default)]
pub struct SafetensorsWriter<'a> {
    tensors: Vec<PendingTensor<'a>>,
}

fn dtype_name(d: FloatType) -> Option<(&'static str, usize)> {
    match d {
        FloatType::F32 => Some(("F32", 4)),
        FloatType::F16 => Some(("F16", 2)),
        FloatType::BF16 => Some(("BF16", 2)),
        FloatType::Other(_) => None,
    }
}

impl<'a> SafetensorsWriter<'a> {
    /// No tensors yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds tensor `name` of `shape` (outermost dimension first) stored as `dtype`; `source`
    /// must produce exactly its bytes.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dtype: FloatType,
        shape: Vec<usize>,
        source: TensorSource<'a>,
    ) -> Result<(), String> {
        let name = name.into();
        let (_, size) = dtype_name(dtype).ok_or_else(|| format!("tensor '{name}': dtype {dtype:?} cannot be written"))?;
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(format!("tensor '{name}' is added twice"));
        }
        let n_bytes = shape
            .iter()
            .try_fold(size, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("tensor '{name}': size of shape {shape:?} overflows"))?;
        self.tensors.push(PendingTensor { name, dtype, shape, n_bytes, source });
        Ok(())
    }

    /// Writes `dir/model.safetensors`, or shards of at most `max_shard_bytes` of data each (a
    /// larger single tensor gets a shard of its own) and the index. Returns the files written.
    pub fn write_dir(self, dir: &Path, max_shard_bytes: u64) -> Result<Vec<PathBuf>, FormatError> {
        let mut shards: Vec<Vec<PendingTensor>> = vec![Vec::new()];
        let mut size = 0u64;
        let total: u64 = self.tensors.iter().map(|t| t.n_bytes as u64).sum();
        for t in self.tensors {
            let last = shards.last_mut().expect("one shard at least");
            if !last.is_empty() && size + t.n_bytes as u64 > max_shard_bytes {
                shards.push(Vec::new());
                size = 0;
            }
            size += t.n_bytes as u64;
            shards.last_mut().expect("one shard at least").push(t);
        }
        if shards.len() == 1 {
            let path = dir.join("model.safetensors");
            write_file(&path, shards.pop().unwrap_or_default())?;
            return Ok(vec![path]);
        }
        let n = shards.len();
        let mut weight_map = BTreeMap::new();
        let mut written = Vec::new();
        for (i, shard) in shards.into_iter().enumerate() {
            let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
            for t in &shard {
                weight_map.insert(t.name.clone(), file.clone());
            }
            let path = dir.join(&file);
            write_file(&path, shard)?;
            written.push(path);
        }
        // The index goes last: a directory whose conversion stopped half-way has no index, so
        // nothing mistakes it for a complete checkpoint.
        let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let path = dir.join("model.safetensors.index.json");
        write_json(&path, &index)?;
        written.push(path);
        Ok(written)
    }
}

/// Writes one safetensors file holding `tensors`.
fn write_file(path: &Path, tensors: Vec<PendingTensor>) -> Result<u64, FormatError> {
    let mut header = serde_json::Map::new();
    // transformers checks this marker to know the tensors are PyTorch-layout.
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    for t in &tensors {
        let (dtype, _) = dtype_name(t.dtype).expect("checked when added");
        header.insert(
            t.name.clone(),
            serde_json::json!({ "dtype": dtype, "shape": t.shape, "data_offsets": [offset, offset + t.n_bytes] }),
        );
        offset += t.n_bytes;
    }
    let mut text = serde_json::to_vec(&header).expect("a JSON map serializes");
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = AtomicFile::create(path)?;
    out.write(&(text.len() as u64).to_le_bytes())?;
    out.write(&text)?;
    for t in tensors {
        let bytes = (t.source)().map_err(|source| FormatError::Source { path: path.to_path_buf(), tensor: t.name.clone(), source })?;
        if bytes.len() != t.n_bytes {
            return Err(FormatError::invalid(
                path,
                format!("tensor '{}' produced {} bytes, but shape {:?} takes {}", t.name, bytes.len(), t.shape, t.n_bytes),
            ));
        }
        out.write(&bytes)?;
    }
    out.commit()
}

/// Writes `value` as pretty JSON to `path` through a temporary name (config.json, the index...).
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<u64, FormatError> {
    let mut text = serde_json::to_vec_pretty(value).expect("a JSON value serializes");
    text.push(b'\n');
    let mut out = AtomicFile::create(path)?;
    out.write(&text)?;
    out.commit()
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::HfModelDir;

    fn f32s(v: &[f32]) -> TensorSource<'static> {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Box::new(move || Ok(Cow::Owned(b)))
    }

    fn writer() -> SafetensorsWriter<'static> {
        let mut w = SafetensorsWriter::new();
        w.add_tensor("a", FloatType::F32, vec![2, 2], f32s(&[1.0, 2.0, 3.0, 4.0])).unwrap();
        w.add_tensor("b", FloatType::F32, vec![3], f32s(&[5.0, 6.0, 7.0])).unwrap();
        w.add_tensor("c", FloatType::BF16, vec![1], Box::new(|| Ok(Cow::Borrowed(&[0x80, 0x3f][..])))).unwrap();
        w
    }

    fn open(dir: &Path) -> HfModelDir {
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        HfModelDir::open(dir).unwrap()
    }

    #[test]
    fn single_file_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let files = writer().write_dir(d.path(), DEFAULT_MAX_SHARD_BYTES).unwrap();
        assert_eq!(files, [d.path().join("model.safetensors")]);
        // The safetensors crate (the reference implementation) accepts the file.
        let bytes = std::fs::read(&files[0]).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("b").unwrap().data(), f32s_bytes(&[5.0, 6.0, 7.0]));
        let h = open(d.path());
        let c = h.tensor("c").unwrap();
        assert_eq!((c.dtype, &h.tensor_bytes(c)[..]), (FloatType::BF16, &[0x80, 0x3f][..]));
    }

    fn f32s_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn shards_above_the_limit_with_an_index() {
        let d = tempfile::tempdir().unwrap();
        let files = writer().write_dir(d.path(), 16).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
        );
        let h = open(d.path());
        assert_eq!(h.tensor_names(), ["a", "b", "c"]);
        assert_eq!(&h.tensor_bytes(h.tensor("b").unwrap())[..], &f32s_bytes(&[5.0, 6.0, 7.0])[..]);
        let index: serde_json::Value = serde_json::from_slice(&std::fs::read(&files[2]).unwrap()).unwrap();
        assert_eq!(index["metadata"]["total_size"], 16 + 12 + 2);
    }

    #[test]
    fn wrong_sizes_and_dtypes_are_refused() {
        let mut w = SafetensorsWriter::new();
        assert!(w.add_tensor("i", FloatType::Other("I64"), vec![1], f32s(&[])).unwrap_err().contains("'i'"));
        w.add_tensor("x", FloatType::F16, vec![3], f32s(&[1.0])).unwrap();
        let d = tempfile::tempdir().unwrap();
        let e = w.write_dir(d.path(), DEFAULT_MAX_SHARD_BYTES).unwrap_err().to_string();
        assert!(e.contains("model.safetensors") && e.contains("'x' produced 4 bytes"), "{e}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
