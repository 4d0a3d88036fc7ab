//! GGUF v2/v3 reader.
//!
//! Layout (ggml's docs/gguf.md): magic `GGUF`, version u32, tensor count u64, metadata count
//! u64, the metadata key/values, the tensor infos, padding to `general.alignment`, tensor data.
//! All integers are little-endian. Counts and lengths are checked against the bytes left in the
//! file before anything is allocated (CVE-2025-49847 and earlier GGUF overflows in ggml came from
//! trusting them).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::{FormatError, GgmlType, TensorBytes};

/// Most dimensions a ggml tensor has.
const MAX_DIMS: u32 = 4;
/// Deepest nesting of metadata arrays accepted (real files use 1).
const MAX_ARRAY_DEPTH: usize = 4;
/// ggml's default data alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// The GGUF name of the value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::F32(_) => "f32",
            MetaValue::Bool(_) => "bool",
            MetaValue::Str(_) => "string",
            MetaValue::Array(_) => "array",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F64(_) => "f64",
        }
    }

    /// The value as a non-negative integer, whatever its integer width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float (integers convert).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor-info table.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: the contiguous (innermost) dimension first.
    pub dims: Vec<usize>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Byte offset of the data from the start of the file.
    pub offset: usize,
    /// Bytes of data.
    pub n_bytes: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product()
    }
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Arc<Mmap>,
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
}

impl GgufFile {
    /// Maps and parses the file at `path`, validating every tensor's extent.
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        let map = crate::bytes::map_file(path)?;
        Self::parse(path, map)
    }

    fn parse(path: &Path, map: Arc<Mmap>) -> Result<Self, FormatError> {
        let mut r = Reader { buf: &map, pos: 0, path };
        let magic = r.take(4, "magic")?;
        if magic != b"GGUF" {
            return Err(r.err(format!("not a GGUF file: magic is {magic:02x?}, expected \"GGUF\"")));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(r.err(format!("GGUF version {version} is not supported (exo reads versions 2 and 3)")));
        }
        let n_tensors = r.u64("tensor_count")?;
        let n_kv = r.u64("metadata_kv_count")?;
        // A key/value needs at least a key length (8), a key byte and a type (4).
        r.check_count(n_kv, 13, "metadata_kv_count")?;
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut meta_index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let ty = r.u32(&format!("type of metadata '{key}'"))?;
            let value = r.value(ty, &key, 0)?;
            meta_index.insert(key.clone(), metadata.len());
            metadata.push((key, value));
        }
        let alignment = match metadata_get(&metadata, &meta_index, "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => return Err(r.err(format!("general.alignment is {v:?}; it must be a power of two up to 1 MiB"))),
            },
        };
        // A tensor info needs at least a name length (8), a dim count (4), one dim (8), a type
        // (4) and an offset (8).
        r.check_count(n_tensors, 32, "tensor_count")?;
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor #{i} name"))?;
            let n_dims = r.u32(&format!("tensor '{name}' n_dims"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(r.err(format!("tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                let v = r.u64(&format!("tensor '{name}' dim {d}"))?;
                let v = usize::try_from(v).ok().filter(|&v| v as u64 <= r.buf.len() as u64 * 256);
                dims.push(v.ok_or_else(|| r.err(format!("tensor '{name}' dimension {d} is larger than the file could hold")))?);
            }
            let type_id = r.u32(&format!("tensor '{name}' type"))?;
            let offset = r.u64(&format!("tensor '{name}' offset"))?;
            raw.push((name, dims, type_id, offset));
        }
        let data_start = align_up(r.pos as u64, alignment);
        let file_len = map.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        let mut tensor_index = HashMap::with_capacity(raw.len());
        for (name, dims, type_id, offset) in raw {
            let info = tensor_info(path, name, dims, type_id, offset, alignment, data_start, file_len)?;
            if tensor_index.insert(info.name.clone(), tensors.len()).is_some() {
                return Err(FormatError::invalid(path, format!("tensor '{}' appears twice", info.name)));
            }
            tensors.push(info);
        }
        Ok(Self { path: path.to_path_buf(), map, version, metadata, meta_index, tensors, tensor_index, alignment })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data alignment in bytes.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        metadata_get(&self.metadata, &self.meta_index, key)
    }

    fn missing(&self, key: &str) -> FormatError {
        FormatError::MissingKey { path: self.path.clone(), key: key.to_string() }
    }

    fn wrong(&self, key: &str, v: &MetaValue, expected: &'static str) -> FormatError {
        FormatError::KeyType { path: self.path.clone(), key: key.to_string(), found: v.type_name(), expected }
    }

    /// A required string value.
    pub fn get_str(&self, key: &str) -> Result<&str, FormatError> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        v.as_str().ok_or_else(|| self.wrong(key, v, "string"))
    }

    /// A required non-negative integer value (any integer width).
    pub fn get_u64(&self, key: &str) -> Result<u64, FormatError> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        v.as_u64().ok_or_else(|| self.wrong(key, v, "non-negative integer"))
    }

    /// A required array value.
    pub fn get_array(&self, key: &str) -> Result<&[MetaValue], FormatError> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        v.as_array().ok_or_else(|| self.wrong(key, v, "array"))
    }

    /// An optional string value (absent or not a string: `None`).
    pub fn opt_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    /// An optional non-negative integer.
    pub fn opt_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }

    /// An optional float (integers convert).
    pub fn opt_f32(&self, key: &str) -> Option<f32> {
        self.get(key).and_then(MetaValue::as_f64).map(|v| v as f32)
    }

    /// An optional bool.
    pub fn opt_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(MetaValue::as_bool)
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// A zero-copy view of a tensor's data (its extent was checked at open).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> TensorBytes {
        TensorBytes::new(self.map.clone(), info.offset..info.offset + info.n_bytes)
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GgufFile({}, {} tensors)", self.path.display(), self.tensors.len())
    }
}

fn metadata_get<'a>(m: &'a [(String, MetaValue)], idx: &HashMap<String, usize>, key: &str) -> Option<&'a MetaValue> {
    idx.get(key).map(|&i| &m[i].1)
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Validates one tensor's type, size and extent.
#[allow(clippy::too_many_arguments)]
fn tensor_info(
    path: &Path,
    name: String,
    dims: Vec<usize>,
    type_id: u32,
    offset: u64,
    alignment: u64,
    data_start: u64,
    file_len: u64,
) -> Result<TensorInfo, FormatError> {
    let bad = |what: String| FormatError::invalid(path, what);
    let ggml_type =
        GgmlType::from_id(type_id).ok_or_else(|| bad(format!("tensor '{name}' has unknown ggml type id {type_id}")))?;
    if !offset.is_multiple_of(alignment) {
        return Err(bad(format!("tensor '{name}' offset {offset} is not a multiple of the alignment {alignment}")));
    }
    let n_elements = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let rows = dims[1..].iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let row_bytes = ggml_type.row_bytes(dims[0]).ok_or_else(|| {
        bad(format!(
            "tensor '{name}': first dimension {} is not a multiple of the {} block size {}",
            dims[0],
            ggml_type,
            ggml_type.block_size()
        ))
    })?;
    let n_bytes = match (n_elements, rows.and_then(|r| r.checked_mul(row_bytes))) {
        (Some(_), Some(b)) => b,
        _ => return Err(bad(format!("tensor '{name}': dimensions {dims:?} overflow"))),
    };
    let start = data_start.checked_add(offset);
    let end = start.and_then(|s| s.checked_add(n_bytes as u64));
    match (start, end) {
        (Some(start), Some(end)) if end <= file_len => Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset: start as usize,
            n_bytes,
        }),
        _ => Err(bad(format!(
            "tensor '{name}' ({ggml_type} {dims:?}) ends at byte {} but the file has {file_len}",
            end.map_or_else(|| "beyond 2^64".to_string(), |e| e.to_string())
        ))),
    }
}

/// A bounds-checked little-endian cursor.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, what: String) -> FormatError {
        FormatError::invalid(self.path, what)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], FormatError> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated: {field} needs {n} bytes at offset {} but the file has {}",
                self.pos,
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], FormatError> {
        Ok(self.take(N, field)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, field: &str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// Fails unless `count` items of at least `min_size` bytes each fit in the rest of the file.
    fn check_count(&self, count: u64, min_size: u64, field: &str) -> Result<(), FormatError> {
        if count.saturating_mul(min_size) > self.remaining() as u64 {
            return Err(self.err(format!(
                "{field} is {count}, but only {} bytes remain at offset {} (each entry needs at least {min_size})",
                self.remaining(),
                self.pos
            )));
        }
        Ok(())
    }

    fn string(&mut self, field: &str) -> Result<String, FormatError> {
        let len = self.u64(&format!("{field} length"))?;
        if len > self.remaining() as u64 {
            return Err(self.err(format!(
                "{field}: string length {len} exceeds the {} bytes left in the file",
                self.remaining()
            )));
        }
        let bytes = self.take(len as usize, field)?;
        // ggml writes UTF-8; tokenizer vocabularies of some converters hold invalid sequences,
        // which are kept (lossily) rather than refusing the whole file.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue, FormatError> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(key)?[0]),
            1 => MetaValue::I8(self.array::<1>(key)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(key)?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.err(format!("metadata '{key}': bool byte is {b}, expected 0 or 1"))),
            },
            8 => MetaValue::Str(self.string(&format!("metadata '{key}'"))?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!("metadata '{key}': arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let elem_ty = self.u32(&format!("metadata '{key}' element type"))?;
                let count = self.u64(&format!("metadata '{key}' element count"))?;
                let min = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(self.err(format!("metadata '{key}': unknown array element type {t}"))),
                };
                self.check_count(count, min, &format!("metadata '{key}' element count"))?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.array(key)?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(key)?)),
            t => return Err(self.err(format!("metadata '{key}' has unknown value type {t}"))),
        })
    }
}

#[cfg(test)]
mod tests;
