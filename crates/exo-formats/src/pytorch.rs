//! PyTorch checkpoints (`torch.save`'s zip format: `ARCHIVE/data.pkl` plus one stored entry per
//! storage under `ARCHIVE/data/`) read WITHOUT executing the pickle.
//!
//! Python's unpickler calls whatever global a pickle names, which is how a malicious checkpoint
//! runs code. This one is a small stack machine that knows the opcodes a state dict uses and
//! only these globals: `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter` and the typed storage classes (`torch.FloatStorage`...).
//! Any other global is refused, naming it, before anything could be called. Tensors become byte
//! ranges of the mapped file (storages are stored uncompressed), so nothing is copied.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use crate::{FloatType, FormatError};

/// Deepest nesting of tuples, lists and dicts accepted (a state dict needs 3).
const MAX_DEPTH: u16 = 32;
/// Most values the machine may create or copy out of its memo, so a pickle of a few bytes
/// cannot ask for exponential copies.
const MAX_VALUES: usize = 2_000_000;

/// One tensor of a checkpoint: its element type, shape and bytes in the mapped file.
#[derive(Clone, Debug)]
pub(crate) struct PickledTensor {
    pub(crate) name: String,
    pub(crate) dtype: FloatType,
    pub(crate) shape: Vec<usize>,
    pub(crate) range: Range<usize>,
}

/// Maps `path` and lists its tensors.
pub(crate) fn read_checkpoint(path: &Path) -> Result<(Arc<Mmap>, Vec<PickledTensor>), FormatError> {
    let map = crate::bytes::map_file(path)?;
    let bad = |what: String| FormatError::invalid(path, what);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&map[..]))
        .map_err(|e| bad(format!("not a PyTorch zip checkpoint ({e}); legacy pre-1.6 checkpoints are not supported")))?;
    let mut pickle = None;
    let mut storages = std::collections::HashMap::new();
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(|e| bad(format!("zip entry #{i}: {e}")))?;
        let name = entry.name().map_err(|e| bad(format!("zip entry #{i}: {e}")))?.into_owned();
        let Some(start) = entry.data_start() else { return Err(bad(format!("zip entry '{name}': no data offset"))) };
        let stored = entry.compression() == zip::CompressionMethod::Stored;
        let range = usize::try_from(start)
            .ok()
            .and_then(|s| Some(s..s.checked_add(usize::try_from(entry.size()).ok()?)?))
            .filter(|r| r.end <= map.len())
            .ok_or_else(|| bad(format!("zip entry '{name}' lies outside the file")))?;
        let is_pickle = name.ends_with("/data.pkl") || name == "data.pkl";
        if (is_pickle || name.contains("/data/")) && !stored {
            return Err(bad(format!("zip entry '{name}' is compressed; torch.save stores entries uncompressed")));
        }
        if is_pickle {
            pickle = Some(range);
        } else if let Some((_, key)) = name.rsplit_once("/data/") {
            storages.insert(key.to_string(), range);
        }
    }
    let pickle = pickle.ok_or_else(|| bad("no data.pkl in the archive".into()))?;
    let root = Machine::new(&map[pickle]).run().map_err(|e| bad(format!("data.pkl: {e}")))?;
    let entries = match root {
        Value::Dict(items, _) => items,
        other => return Err(bad(format!("data.pkl holds {}, expected a state dict", other.kind()))),
    };
    let mut tensors = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let Value::Str(name) = key else { return Err(bad(format!("a state-dict key is {}, not a string", key.kind()))) };
        let Value::Tensor(t) = value else {
            return Err(bad(format!("state-dict entry '{name}' is {}, not a tensor", value.kind())));
        };
        let storage = storages
            .get(&t.storage)
            .ok_or_else(|| bad(format!("tensor '{name}': storage '{}' has no data/ entry", t.storage)))?;
        let range = tensor_range(&t, storage).map_err(|e| bad(format!("tensor '{name}': {e}")))?;
        tensors.push(PickledTensor { name, dtype: t.dtype, shape: t.shape, range });
    }
    Ok((map, tensors))
}

/// The bytes of a contiguous tensor within its storage entry.
fn tensor_range(t: &Rebuilt, storage: &Range<usize>) -> Result<Range<usize>, String> {
    let mut expect = 1usize;
    for (&size, &stride) in t.shape.iter().zip(&t.stride).rev() {
        if size != 1 && stride != expect {
            return Err(format!("shape {:?} with strides {:?} is not contiguous; save a .contiguous() copy", t.shape, t.stride));
        }
        expect = expect.checked_mul(size).ok_or("element count overflows")?;
    }
    let elem = elem_size(t.dtype);
    let start = t.offset.checked_mul(elem).ok_or("offset overflows")?;
    let end = expect.checked_mul(elem).and_then(|n| n.checked_add(start)).ok_or("size overflows")?;
    if end > storage.len() {
        return Err(format!("needs bytes {start}..{end} of a storage of {} bytes", storage.len()));
    }
    Ok(storage.start + start..storage.start + end)
}

fn elem_size(d: FloatType) -> usize {
    match d {
        FloatType::F32 | FloatType::Other("I32") => 4,
        FloatType::F16 | FloatType::BF16 | FloatType::Other("I16") => 2,
        FloatType::Other("F64" | "I64") => 8,
        FloatType::Other(_) => 1,
    }
}

/// The globals a state dict may name.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(FloatType),
}

fn global(module: &str, name: &str) -> Result<Global, String> {
    Ok(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch", storage) => Global::Storage(match storage {
            "FloatStorage" => FloatType::F32,
            "HalfStorage" => FloatType::F16,
            "BFloat16Storage" => FloatType::BF16,
            "DoubleStorage" => FloatType::Other("F64"),
            "LongStorage" => FloatType::Other("I64"),
            "IntStorage" => FloatType::Other("I32"),
            "ShortStorage" => FloatType::Other("I16"),
            "CharStorage" => FloatType::Other("I8"),
            "ByteStorage" => FloatType::Other("U8"),
            "BoolStorage" => FloatType::Other("BOOL"),
            _ => return Err(format!("global 'torch.{storage}' is not allowed (exo reads state dicts of tensors only)")),
        }),
        _ => return Err(format!("global '{module}.{name}' is not allowed (exo reads state dicts of tensors only)")),
    })
}

/// A tensor as `_rebuild_tensor_v2` describes it.
#[derive(Clone, Debug)]
struct Rebuilt {
    storage: String,
    dtype: FloatType,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// A value on the machine's stack. Containers carry their nesting depth.
#[derive(Clone, Debug)]
enum Value {
    Mark,
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Value>, u16),
    List(Vec<Value>, u16),
    Dict(Vec<(Value, Value)>, u16),
    Global(Global),
    /// A persistent id resolved to a storage: (key of its data/ entry, element type).
    Storage(String, FloatType),
    Tensor(Rebuilt),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Mark => "a mark",
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Bytes => "bytes",
            Value::Tuple(..) => "a tuple",
            Value::List(..) => "a list",
            Value::Dict(..) => "a dict",
            Value::Global(_) => "a global",
            Value::Storage(..) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }

    fn depth(&self) -> u16 {
        match self {
            Value::Tuple(_, d) | Value::List(_, d) | Value::Dict(_, d) => *d,
            _ => 0,
        }
    }

    /// Values inside, counted for the copy budget.
    fn size(&self) -> usize {
        match self {
            Value::Tuple(v, _) | Value::List(v, _) => 1 + v.iter().map(Value::size).sum::<usize>(),
            Value::Dict(v, _) => 1 + v.iter().map(|(k, x)| k.size() + x.size()).sum::<usize>(),
            _ => 1,
        }
    }
}

fn depth_of<'a>(items: impl Iterator<Item = &'a Value>) -> Result<u16, String> {
    let d = 1 + items.map(Value::depth).max().unwrap_or(0);
    if d > MAX_DEPTH {
        return Err(format!("containers nested deeper than {MAX_DEPTH}"));
    }
    Ok(d)
}

struct Machine<'a> {
    buf: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: std::collections::HashMap<u32, Value>,
    budget: usize,
}

impl<'a> Machine<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0, stack: Vec::new(), memo: Default::default(), budget: MAX_VALUES }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| format!("truncated: {n} bytes needed at offset {}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> Result<u64, String> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    fn len(&mut self, n: usize) -> Result<usize, String> {
        let len = self.uint(n)?;
        usize::try_from(len).ok().filter(|&l| l <= self.buf.len() - self.pos).ok_or_else(|| {
            format!("length {len} at offset {} exceeds the {} bytes left", self.pos, self.buf.len() - self.pos)
        })
    }

    fn pop(&mut self) -> Result<Value, String> {
        match self.stack.pop() {
            Some(Value::Mark) | None => Err(format!("stack underflow at offset {}", self.pos)),
            Some(v) => Ok(v),
        }
    }

    /// The values above the topmost mark, removing the mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let at = self.stack.iter().rposition(|v| matches!(v, Value::Mark));
        let at = at.ok_or_else(|| format!("no mark on the stack at offset {}", self.pos))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn push(&mut self, v: Value) -> Result<(), String> {
        self.budget = self.budget.checked_sub(v.size()).ok_or("the pickle builds too many values")?;
        self.stack.push(v);
        Ok(())
    }

    fn tuple(&mut self, items: Vec<Value>) -> Result<(), String> {
        let d = depth_of(items.iter())?;
        self.stack.push(Value::Tuple(items, d));
        Ok(())
    }

    fn top_mut(&mut self) -> Result<&mut Value, String> {
        let pos = self.pos;
        self.stack.last_mut().ok_or_else(|| format!("stack underflow at offset {pos}"))
    }

    fn set_items(&mut self, pairs: Vec<Value>) -> Result<(), String> {
        if !pairs.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of values".into());
        }
        let d = depth_of(pairs.iter())?;
        let Value::Dict(items, depth) = self.top_mut()? else { return Err("SETITEM(S) on a value that is not a dict".into()) };
        *depth = (*depth).max(d);
        let mut it = pairs.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            items.push((k, v));
        }
        Ok(())
    }

    fn append(&mut self, values: Vec<Value>) -> Result<(), String> {
        let d = depth_of(values.iter())?;
        let Value::List(items, depth) = self.top_mut()? else { return Err("APPEND(S) on a value that is not a list".into()) };
        *depth = (*depth).max(d);
        items.extend(values);
        Ok(())
    }

    fn string(&mut self, len_bytes: usize) -> Result<Value, String> {
        let n = self.len(len_bytes)?;
        let b = self.take(n)?;
        Ok(Value::Str(String::from_utf8_lossy(b).into_owned()))
    }

    fn memo_put(&mut self, key: u32) -> Result<(), String> {
        let top = self.stack.last().filter(|v| !matches!(v, Value::Mark)).ok_or("memo store of an empty stack")?;
        self.memo.insert(key, top.clone());
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), String> {
        let v = self.memo.get(&key).ok_or_else(|| format!("memo key {key} was never stored"))?.clone();
        self.push(v)
    }

    /// Runs to STOP and returns the result.
    fn run(mut self) -> Result<Value, String> {
        loop {
            let at = self.pos;
            let op = self.take(1)?[0];
            match op {
                0x80 => {
                    self.take(1)?;
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'}' => self.push(Value::Dict(Vec::new(), 1))?,
                b']' => self.push(Value::List(Vec::new(), 1))?,
                b')' => self.push(Value::Tuple(Vec::new(), 1))?,
                b'N' => self.push(Value::None)?,
                0x88 | 0x89 => self.push(Value::Bool)?,
                b'J' => {
                    let v = self.uint(4)? as u32 as i32;
                    self.push(Value::Int(v.into()))?
                }
                b'K' => {
                    let v = self.uint(1)? as i64;
                    self.push(Value::Int(v))?
                }
                b'M' => {
                    let v = self.uint(2)? as i64;
                    self.push(Value::Int(v))?
                }
                0x8a => {
                    let n = self.uint(1)? as usize;
                    if n > 8 {
                        return Err(format!("LONG1 of {n} bytes at offset {at}: integers wider than 64 bits are not supported"));
                    }
                    let raw = self.uint(n)?;
                    // Sign-extend the n-byte two's complement value.
                    let v = if n == 0 { 0 } else { ((raw << (64 - 8 * n)) as i64) >> (64 - 8 * n) };
                    self.push(Value::Int(v))?
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Float)?
                }
                b'X' => {
                    let v = self.string(4)?;
                    self.push(v)?
                }
                0x8c => {
                    let v = self.string(1)?;
                    self.push(v)?
                }
                0x8d => {
                    let v = self.string(8)?;
                    self.push(v)?
                }
                b'U' | b'T' => {
                    let v = self.string(if op == b'U' { 1 } else { 4 })?;
                    self.push(v)?
                }
                b'C' | b'B' => {
                    let n = self.len(if op == b'C' { 1 } else { 4 })?;
                    self.take(n)?;
                    self.push(Value::Bytes)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = global(&module, &name)?;
                    self.push(Value::Global(g))?
                }
                0x93 => {
                    let (name, module) = (self.pop()?, self.pop()?);
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(format!("STACK_GLOBAL at offset {at} without two strings"));
                    };
                    let g = global(&module, &name)?;
                    self.push(Value::Global(g))?
                }
                // BINPUT / LONG_BINPUT: a 1- or 4-byte memo key.
                b'q' | b'r' => {
                    let k = self.uint(if op == b'q' { 1 } else { 4 })? as u32;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?
                }
                // BINGET / LONG_BINGET.
                b'h' | b'j' => {
                    let k = self.uint(if op == b'h' { 1 } else { 4 })? as u32;
                    self.memo_get(k)?
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.tuple(items)?
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.tuple(items)?
                }
                b's' => {
                    let (v, k) = (self.pop()?, self.pop()?);
                    self.set_items(vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = persistent_storage(pid)?;
                    self.push(v)?
                }
                b'R' => {
                    let (args, func) = (self.pop()?, self.pop()?);
                    let v = reduce(func, args).map_err(|e| format!("REDUCE at offset {at}: {e}"))?;
                    self.push(v)?
                }
                // BUILD sets an object's state: the `_metadata` of a state dict or a tensor's
                // extra attributes, neither of which changes the weights.
                b'b' => {
                    self.pop()?;
                }
                _ => return Err(format!("opcode 0x{op:02x} at offset {at} is not allowed in a state dict")),
            }
        }
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.buf[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or("GLOBAL without a newline")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
}

/// `('storage', torch.FloatStorage, key, location, numel)`: torch's persistent id of a storage.
fn persistent_storage(pid: Value) -> Result<Value, String> {
    if let Value::Tuple(items, _) = &pid {
        if let [Value::Str(tag), Value::Global(Global::Storage(dtype)), Value::Str(key), ..] = items.as_slice() {
            if tag == "storage" {
                return Ok(Value::Storage(key.clone(), *dtype));
            }
        }
    }
    Err(format!("persistent id {pid:?} is not a torch storage"))
}

fn int(v: &Value, what: &str) -> Result<usize, String> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("{what} is negative ({i})")),
        other => Err(format!("{what} is {}, not an int", other.kind())),
    }
}

fn ints(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items, _) => items.iter().map(|x| int(x, what)).collect(),
        other => Err(format!("{what} is {}, not a tuple", other.kind())),
    }
}

fn reduce(func: Value, args: Value) -> Result<Value, String> {
    let Value::Tuple(args, _) = args else { return Err(format!("arguments are {}, not a tuple", args.kind())) };
    match func {
        Value::Global(Global::OrderedDict) if args.is_empty() => Ok(Value::Dict(Vec::new(), 1)),
        Value::Global(Global::RebuildTensorV2) => match args.as_slice() {
            [Value::Storage(key, dtype), offset, shape, stride, ..] => Ok(Value::Tensor(Rebuilt {
                storage: key.clone(),
                dtype: *dtype,
                offset: int(offset, "storage offset")?,
                shape: ints(shape, "size")?,
                stride: ints(stride, "stride")?,
            })),
            _ => Err("_rebuild_tensor_v2 needs (storage, offset, size, stride, ...)".into()),
        },
        Value::Global(Global::RebuildParameter) => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => Err("_rebuild_parameter needs a tensor".into()),
        },
        other => Err(format!("calling {} is not allowed", other.kind())),
    }
}

#[cfg(test)]
mod tests;
