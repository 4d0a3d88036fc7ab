//! GGUF parsing and bad-input tests over files built byte by byte.

use super::*;
use std::io::Write;

/// Builds GGUF bytes field by field, so tests can corrupt any one of them.
struct Builder {
    out: Vec<u8>,
}

impl Builder {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        let mut out = b"GGUF".to_vec();
        out.extend(version.to_le_bytes());
        out.extend(n_tensors.to_le_bytes());
        out.extend(n_kv.to_le_bytes());
        Self { out }
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.out.extend((s.len() as u64).to_le_bytes());
        self.out.extend(s.as_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend(v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend(v.to_le_bytes());
        self
    }
    fn kv_str(&mut self, k: &str, v: &str) -> &mut Self {
        self.str(k).u32(8).str(v)
    }
    fn kv_u32(&mut self, k: &str, v: u32) -> &mut Self {
        self.str(k).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad_to(&mut self, align: usize) -> &mut Self {
        while !self.out.len().is_multiple_of(align) {
            self.out.push(0);
        }
        self
    }
    fn data(&mut self, n: usize) -> &mut Self {
        self.out.extend((0..n).map(|i| i as u8));
        self
    }
}

fn open_bytes(bytes: &[u8]) -> (tempfile::NamedTempFile, Result<GgufFile, FormatError>) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    let r = GgufFile::open(f.path());
    (f, r)
}

fn open_err(bytes: &[u8]) -> String {
    let (f, r) = open_bytes(bytes);
    let msg = match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains(&f.path().display().to_string()), "message names the file: {msg}");
    msg
}

/// A valid file: two metadata keys, an f32 [4] vector and a q8_0 [32 x 2] matrix.
fn valid() -> Vec<u8> {
    let mut b = Builder::header(3, 2, 2);
    b.kv_str("general.architecture", "llama").kv_u32("llama.block_count", 2);
    b.tensor("v", &[4], 0, 0).tensor("m", &[32, 2], 8, 32);
    b.pad_to(32).data(16).pad_to(32).data(68);
    b.out
}

#[test]
fn reads_metadata_and_tensors() {
    let (_f, g) = open_bytes(&valid());
    let g = g.unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 2);
    let m = g.tensor("m").unwrap();
    assert_eq!((m.ggml_type, m.dims.clone(), m.n_bytes), (GgmlType::Q8_0, vec![32, 2], 68));
    assert_eq!(g.tensor_bytes(m).len(), 68);
    assert_eq!(g.tensor_bytes(g.tensor("v").unwrap())[..4], [0, 1, 2, 3]);
    assert!(g.get_str("llama.block_count").unwrap_err().to_string().contains("is u32, expected string"));
    assert!(g.get_u64("nope").unwrap_err().to_string().contains("missing metadata key 'nope'"));
}

#[test]
fn reads_version_2() {
    let mut bytes = valid();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let (_f, g) = open_bytes(&bytes);
    assert_eq!(g.unwrap().version(), 2);
}

#[test]
fn wrong_magic() {
    let mut bytes = valid();
    bytes[..4].copy_from_slice(b"GGML");
    assert!(open_err(&bytes).contains("not a GGUF file"));
}

#[test]
fn unsupported_version() {
    let mut bytes = valid();
    bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(open_err(&bytes).contains("GGUF version 1 is not supported"));
}

#[test]
fn truncated_anywhere_is_an_error_not_a_panic() {
    let bytes = valid();
    for len in 0..bytes.len() {
        let (_f, r) = open_bytes(&bytes[..len]);
        assert!(r.is_err(), "a file cut at {len} bytes must not open");
    }
}

#[test]
fn tensor_data_past_the_end() {
    let bytes = valid();
    let msg = open_err(&bytes[..bytes.len() - 1]);
    assert!(msg.contains("tensor 'm'") && msg.contains("ends at byte"), "{msg}");
}

#[test]
fn absurd_tensor_count() {
    let b = Builder::header(3, 1 << 60, 0);
    let msg = open_err(&b.out);
    assert!(msg.contains("tensor_count is 1152921504606846976"), "{msg}");
}

#[test]
fn absurd_metadata_count() {
    let b = Builder::header(3, 0, u64::MAX);
    assert!(open_err(&b.out).contains("metadata_kv_count"));
}

#[test]
fn absurd_string_length() {
    let mut b = Builder::header(3, 0, 1);
    b.u64(1 << 40).out.extend(b"general.name");
    let msg = open_err(&b.out);
    assert!(msg.contains("string length 1099511627776 exceeds"), "{msg}");
}

#[test]
fn absurd_array_count() {
    let mut b = Builder::header(3, 0, 1);
    b.str("tokenizer.ggml.tokens").u32(9).u32(8).u64(1 << 60);
    let msg = open_err(&b.out);
    assert!(msg.contains("'tokenizer.ggml.tokens' element count"), "{msg}");
}

#[test]
fn misaligned_offset() {
    let mut b = Builder::header(3, 1, 0);
    b.tensor("w", &[4], 0, 3).pad_to(32).data(64);
    let msg = open_err(&b.out);
    assert!(msg.contains("tensor 'w' offset 3 is not a multiple of the alignment 32"), "{msg}");
}

#[test]
fn unknown_type_and_bad_block_multiple() {
    let mut b = Builder::header(3, 1, 0);
    b.tensor("w", &[32], 99, 0).pad_to(32).data(64);
    assert!(open_err(&b.out).contains("tensor 'w' has unknown ggml type id 99"));
    let mut b = Builder::header(3, 1, 0);
    b.tensor("w", &[30], 8, 0).pad_to(32).data(64);
    assert!(open_err(&b.out).contains("not a multiple of the q8_0 block size 32"));
}

#[test]
fn overflowing_dimensions() {
    let mut b = Builder::header(3, 1, 0);
    b.tensor("w", &[1 << 20, 1 << 20, 1 << 20, 1 << 20], 0, 0).pad_to(32).data(64);
    let msg = open_err(&b.out);
    assert!(msg.contains("tensor 'w'"), "{msg}");
}

#[test]
fn bad_alignment_value() {
    let mut b = Builder::header(3, 0, 1);
    b.kv_u32("general.alignment", 24);
    assert!(open_err(&b.out).contains("general.alignment"));
}
