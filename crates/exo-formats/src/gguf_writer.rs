//! GGUF v3 writer: metadata of every GGUF value type, tensor infos and tensor data in the ggml
//! byte layouts the caller gives, each tensor aligned to `general.alignment` (default 32).
//!
//! Tensor bytes are asked for one at a time while the file is written ([`TensorSource`]), so a
//! conversion holds one tensor in memory, not the model.

use std::borrow::Cow;
use std::path::Path;

use crate::atomic::AtomicFile;
use crate::{FormatError, GgmlType, MetaValue};

/// An error from a tensor's producer (dequantization, a read of the source file...).
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Produces a tensor's bytes when the writer reaches it.
pub type TensorSource<'a> = Box<dyn FnOnce() -> Result<Cow<'a, [u8]>, SourceError> + 'a>;

const DEFAULT_ALIGNMENT: u64 = 32;

struct PendingTensor<'a> {
    name: String,
    dims: Vec<usize>,
    ty: GgmlType,
    n_bytes: usize,
    source: TensorSource<'a>,
}

/// A GGUF file being assembled: metadata and tensors in the order added.
#[derive(Default)]
pub struct GgufWriter<'a> {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor<'a>>,
}

impl<'a> GgufWriter<'a> {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets metadata `key` (replacing an earlier value of the same key, keeping its position).
    pub fn set(&mut self, key: impl Into<String>, value: MetaValue) {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
    }

    /// Metadata set so far.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// Adds tensor `name` with `dims` in ggml order (contiguous dimension first) stored as `ty`;
    /// `source` must produce exactly the bytes those dims take in that type.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: Vec<usize>,
        ty: GgmlType,
        source: TensorSource<'a>,
    ) -> Result<(), String> {
        let name = name.into();
        if dims.is_empty() || dims.len() > 4 {
            return Err(format!("tensor '{name}' has {} dimensions (1 to 4 allowed)", dims.len()));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(format!("tensor '{name}' is added twice"));
        }
        let row = ty
            .row_bytes(dims[0])
            .ok_or_else(|| format!("tensor '{name}': {} elements per row is not a whole number of {ty} blocks", dims[0]))?;
        let n_bytes = dims[1..]
            .iter()
            .try_fold(row, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("tensor '{name}': size of dims {dims:?} overflows"))?;
        self.tensors.push(PendingTensor { name, dims, ty, n_bytes, source });
        Ok(())
    }

    /// Writes the file to `path` (through a temporary name); returns its size in bytes.
    pub fn write(self, path: &Path) -> Result<u64, FormatError> {
        let alignment = match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v {
                MetaValue::U32(a) if a.is_power_of_two() => u64::from(*a),
                _ => return Err(FormatError::invalid(path, format!("general.alignment must be a u32 power of two, not {v:?}"))),
            },
        };
        let mut head = Vec::new();
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut head, key);
            head.extend_from_slice(&type_id(value).to_le_bytes());
            put_value(&mut head, value).map_err(|e| FormatError::invalid(path, format!("metadata '{key}': {e}")))?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                head.extend_from_slice(&(d as u64).to_le_bytes());
            }
            head.extend_from_slice(&t.ty.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.n_bytes as u64).next_multiple_of(alignment);
        }
        let mut out = AtomicFile::create(path)?;
        out.write(&head)?;
        out.pad_to(alignment)?;
        for t in self.tensors {
            let bytes = (t.source)().map_err(|source| FormatError::Source {
                path: path.to_path_buf(),
                tensor: t.name.clone(),
                source,
            })?;
            if bytes.len() != t.n_bytes {
                return Err(FormatError::invalid(
                    out.path(),
                    format!("tensor '{}' produced {} bytes, but {:?} of {} take {}", t.name, bytes.len(), t.dims, t.ty, t.n_bytes),
                ));
            }
            out.write(&bytes)?;
            out.pad_to(alignment)?;
        }
        out.commit()
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The GGUF type id of a value (gguf.md's `gguf_metadata_value_type`).
fn type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::Str(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) -> Result<(), String> {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::Str(s) => put_str(out, s),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Array(items) => {
            // GGUF arrays are homogeneous; an empty one needs some element type, and u8 is what
            // readers skip cheapest.
            let elem = items.first().map_or(0, type_id);
            if let Some(bad) = items.iter().find(|i| type_id(i) != elem) {
                return Err(format!("array mixes {} and {} elements", items[0].type_name(), bad.type_name()));
            }
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgufFile;

    fn owned(bytes: Vec<u8>) -> TensorSource<'static> {
        Box::new(move || Ok(Cow::Owned(bytes)))
    }

    #[test]
    fn every_value_type_and_tensor_round_trips_through_the_reader() {
        let values = vec![
            ("u8", MetaValue::U8(7)),
            ("i8", MetaValue::I8(-7)),
            ("u16", MetaValue::U16(65535)),
            ("i16", MetaValue::I16(-300)),
            ("u32", MetaValue::U32(1 << 31)),
            ("i32", MetaValue::I32(-5)),
            ("f32", MetaValue::F32(0.25)),
            ("bool", MetaValue::Bool(true)),
            ("str", MetaValue::Str("héllo".into())),
            ("u64", MetaValue::U64(u64::MAX)),
            ("i64", MetaValue::I64(i64::MIN)),
            ("f64", MetaValue::F64(-1e300)),
            ("arr", MetaValue::Array(vec![MetaValue::Str("a".into()), MetaValue::Str("b c".into())])),
            ("nested", MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::I32(1)]), MetaValue::Array(vec![])])),
            ("general.alignment", MetaValue::U32(64)),
        ];
        let mut w = GgufWriter::new();
        for (k, v) in &values {
            w.set(*k, v.clone());
        }
        let a: Vec<u8> = (0..3 * 4).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let q: Vec<u8> = (0..2 * 20).map(|i| i as u8).collect();
        w.add_tensor("a", vec![3, 4], GgmlType::F32, owned(a.clone())).unwrap();
        w.add_tensor("q", vec![64], GgmlType::Q4_1, owned(q.clone())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        w.write(&path).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.alignment(), 64);
        for (k, v) in &values {
            assert_eq!(g.get(k), Some(v), "{k}");
        }
        let t = g.tensor("q").unwrap();
        assert_eq!((t.dims.clone(), t.ggml_type, t.offset % 64), (vec![64], GgmlType::Q4_1, 0));
        assert_eq!(&g.tensor_bytes(t)[..], &q[..]);
        assert_eq!(&g.tensor_bytes(g.tensor("a").unwrap())[..], &a[..]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
    }

    #[test]
    fn bad_tensors_and_failed_sources_leave_no_file() {
        let mut w = GgufWriter::new();
        let e = w.add_tensor("q", vec![33], GgmlType::Q4_0, owned(vec![])).unwrap_err();
        assert!(e.contains("'q'") && e.contains("q4_0"), "{e}");
        w.add_tensor("x", vec![2], GgmlType::F32, owned(vec![0; 8])).unwrap();
        assert!(w.add_tensor("x", vec![2], GgmlType::F32, owned(vec![0; 8])).unwrap_err().contains("twice"));
        w.add_tensor("short", vec![4], GgmlType::F16, owned(vec![0; 6])).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let e = w.write(&path).unwrap_err().to_string();
        assert!(e.contains("m.gguf") && e.contains("'short' produced 6 bytes"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{e}");

        let mut w = GgufWriter::new();
        w.add_tensor("bad", vec![1], GgmlType::F32, Box::new(|| Err("dequantization failed".into()))).unwrap();
        let e = w.write(&path).unwrap_err().to_string();
        assert!(e.contains("tensor 'bad': dequantization failed"), "{e}");
        assert!(!path.exists());

        let mut w = GgufWriter::new();
        w.set("mixed", MetaValue::Array(vec![MetaValue::U8(1), MetaValue::Str("x".into())]));
        let e = w.write(&path).unwrap_err().to_string();
        assert!(e.contains("metadata 'mixed': array mixes u8 and string"), "{e}");
    }

    #[test]
    fn unwritable_destination_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("m.gguf");
        let e = GgufWriter::new().write(&path).unwrap_err().to_string();
        assert!(e.contains("m.gguf.partial") && e.contains("cannot create"), "{e}");
    }
}
