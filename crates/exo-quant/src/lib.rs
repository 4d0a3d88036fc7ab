//! Weight quantization formats: pack f32 rows into blocks and unpack them again.
//!
//! - ggml's formats with its exact bit layouts, so llama.cpp loads the files exo writes:
//!   [`legacy`] (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: the same bytes as ggml's reference quantizer) and
//!   [`kquants`] (Q3_K, Q4_K, Q5_K, Q6_K: exo's own least-squares scale search, measured against
//!   ggml's reference quantizer in `tests/ggml_reference.rs`).
//! - Formats llama.cpp does not have, in layouts defined here: [`nf4`] (QLoRA's 4-bit
//!   normal-float), [`fp8`] (E4M3 with one scale per output channel) and [`int`] (symmetric INT8
//!   and INT4 with one scale per group of 128).
//!
//! - [`plan`]: a format per tensor under a size budget, from activation-weighted errors.
//!
//! A matrix is packed row by row: every row of `cols` values becomes [`QuantFormat::row_bytes`]
//! bytes, as ggml lays out a quantized tensor.

pub mod fp8;
pub mod int;
pub mod kquants;
pub mod legacy;
pub mod nf4;
pub mod plan;
mod rows;

pub use exo_formats::GgmlType;

/// A storage format for weight rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// One of ggml's types (only those [`QuantFormat::can_quantize`] names can be packed here;
    /// any can be named, so that a matrix can carry its file's type).
    Ggml(GgmlType),
    /// 4-bit normal-float: blocks of 64, an f16 absolute maximum per block ([`nf4`]).
    Nf4,
    /// FP8 E4M3 with an f32 scale per row ([`fp8`]).
    Fp8E4M3,
    /// Symmetric INT8: groups of 128 with an f16 scale each ([`int`]).
    Int8,
    /// Symmetric INT4: groups of 128 with an f16 scale each ([`int`]).
    Int4,
}

/// Errors from packing or unpacking rows.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// No quantizer exists for the format.
    #[error("exo cannot quantize to {format} (it can quantize to {supported})")]
    Unsupported {
        /// The format asked for.
        format: String,
        /// The formats that can be packed.
        supported: &'static str,
    },
    /// The row length is not a whole number of the format's blocks.
    #[error("{format}: rows of {cols} values are not a whole number of {block}-value blocks")]
    RowLength {
        /// The format.
        format: String,
        /// Values per row.
        cols: usize,
        /// Values per block.
        block: usize,
    },
    /// The input length does not match whole rows.
    #[error("{format}: {what} has {have} {unit}, which is not a whole number of rows of {row}")]
    Length {
        /// The format.
        format: String,
        /// Which buffer.
        what: &'static str,
        /// Its length.
        have: usize,
        /// Elements or bytes.
        unit: &'static str,
        /// The length of one row in the same unit.
        row: usize,
    },
}

/// The format names [`QuantFormat::from_name`] accepts for packing.
pub const QUANTIZABLE: &str = "q4_0, q4_1, q5_0, q5_1, q8_0, q3_K, q4_K, q5_K, q6_K, nf4, fp8 (fp8_e4m3), int8, int4";

impl QuantFormat {
    /// Parses a format name: a ggml type name (`q4_K`, `Q8_0`, `f16`) or `nf4`, `fp8`/`fp8_e4m3`,
    /// `int8`, `int4`; case-insensitive.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "nf4" => Some(Self::Nf4),
            "fp8" | "fp8_e4m3" | "e4m3" => Some(Self::Fp8E4M3),
            "int8" => Some(Self::Int8),
            "int4" => Some(Self::Int4),
            _ => GgmlType::from_name(name).map(Self::Ggml),
        }
    }

    /// The name as [`QuantFormat::from_name`] reads it back (ggml's spelling for ggml types).
    pub fn name(self) -> &'static str {
        match self {
            Self::Ggml(t) => t.name(),
            Self::Nf4 => "nf4",
            Self::Fp8E4M3 => "fp8_e4m3",
            Self::Int8 => "int8",
            Self::Int4 => "int4",
        }
    }

    /// Whether [`quantize`] can pack rows into this format.
    pub fn can_quantize(self) -> bool {
        use GgmlType as G;
        match self {
            Self::Ggml(t) => matches!(t, G::Q4_0 | G::Q4_1 | G::Q5_0 | G::Q5_1 | G::Q8_0 | G::Q3K | G::Q4K | G::Q5K | G::Q6K),
            _ => true,
        }
    }

    /// Values per block: a row must be a whole number of blocks (1 for FP8, whose scale is per row).
    pub fn block_size(self) -> usize {
        match self {
            Self::Ggml(t) => t.block_size(),
            Self::Nf4 => nf4::BLOCK,
            Self::Fp8E4M3 => 1,
            Self::Int8 | Self::Int4 => int::GROUP,
        }
    }

    /// Bytes of one row of `cols` values, or `None` when `cols` is not a whole number of blocks
    /// (or the size overflows).
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        let blocks = |size: usize, bytes: usize| cols.is_multiple_of(size).then(|| (cols / size).checked_mul(bytes)).flatten();
        match self {
            Self::Ggml(t) => t.row_bytes(cols),
            Self::Nf4 => blocks(nf4::BLOCK, nf4::BLOCK_BYTES),
            Self::Fp8E4M3 => cols.checked_add(4),
            Self::Int8 => blocks(int::GROUP, int::INT8_GROUP_BYTES),
            Self::Int4 => blocks(int::GROUP, int::INT4_GROUP_BYTES),
        }
    }

    /// Bits per weight of a row of `cols` values (scales included).
    pub fn bits_per_weight(self, cols: usize) -> Option<f64> {
        self.row_bytes(cols).map(|b| b as f64 * 8.0 / cols as f64)
    }
}

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Packs `values` (whole rows of `cols` values, row-major) into `format`, rows in parallel on
/// all cores.
pub fn quantize(format: QuantFormat, values: &[f32], cols: usize) -> Result<Vec<u8>, QuantError> {
    pack(format, values, cols, None)
}

/// Like [`quantize`], with the scales of Q4_0, Q4_1, Q5_0, Q5_1 and the k-quants chosen to minimise the
/// squared error weighted by column: `importance[c]` is the mean square of the activation that
/// multiplies column `c` (an importance matrix, as llama.cpp's `--imatrix` calls it), so the
/// search minimises the error of the matrix's outputs rather than of its weights. The other
/// formats (Q8_0, NF4, FP8, INT8, INT4) pack as [`quantize`] does; the legacy ggml types then
/// differ from ggml's reference bytes but not in layout.
pub fn quantize_weighted(format: QuantFormat, values: &[f32], cols: usize, importance: &[f32]) -> Result<Vec<u8>, QuantError> {
    if importance.len() != cols {
        let format = format.name().to_string();
        return Err(QuantError::Length { format, what: "importance", have: importance.len(), unit: "values", row: cols });
    }
    // A column that never saw activation still holds weights that matter for other inputs; a
    // floor keeps every value's error in the objective.
    let mean = importance.iter().map(|&v| f64::from(v)).sum::<f64>() / cols.max(1) as f64;
    let floor = (1e-3 * mean) as f32;
    let w: Vec<f32> = importance.iter().map(|&v| if v.is_finite() { v.max(0.0) + floor } else { floor }).collect();
    pack(format, values, cols, Some(&w))
}

fn pack(format: QuantFormat, values: &[f32], cols: usize, weights: Option<&[f32]>) -> Result<Vec<u8>, QuantError> {
    if !format.can_quantize() {
        return Err(QuantError::Unsupported { format: format.name().to_string(), supported: QUANTIZABLE });
    }
    let row_bytes = check_row(format, cols)?;
    if !values.len().is_multiple_of(cols) {
        let format = format.name().to_string();
        return Err(QuantError::Length { format, what: "input", have: values.len(), unit: "values", row: cols });
    }
    let ones;
    let w = match weights {
        Some(w) => w,
        None => {
            ones = vec![1.0; cols];
            &ones
        }
    };
    let weighted = weights.is_some();
    let mut out = vec![0u8; values.len() / cols * row_bytes];
    rows::parallel_rows(values, cols, &mut out, row_bytes, |src, dst| quantize_row(format, src, w, weighted, dst));
    Ok(out)
}

/// Unpacks whole rows of `format` bytes into f32 values (`cols` per row).
pub fn dequantize(format: QuantFormat, bytes: &[u8], cols: usize) -> Result<Vec<f32>, QuantError> {
    let row_bytes = check_row(format, cols)?;
    let mut out = vec![0f32; bytes.len() / row_bytes * cols];
    dequantize_into(format, bytes, cols, &mut out)?;
    Ok(out)
}

/// Unpacks whole rows of `format` bytes into `out` (`cols` values per row, as many rows as the
/// bytes hold), allocating nothing.
pub fn dequantize_into(format: QuantFormat, bytes: &[u8], cols: usize, out: &mut [f32]) -> Result<(), QuantError> {
    let row_bytes = check_row(format, cols)?;
    let name = || format.name().to_string();
    if matches!(format, QuantFormat::Ggml(_)) && !format.can_quantize() {
        return Err(QuantError::Unsupported { format: name(), supported: QUANTIZABLE });
    }
    if !bytes.len().is_multiple_of(row_bytes) {
        return Err(QuantError::Length { format: name(), what: "packed data", have: bytes.len(), unit: "bytes", row: row_bytes });
    }
    if out.len() != bytes.len() / row_bytes * cols {
        return Err(QuantError::Length { format: name(), what: "output", have: out.len(), unit: "values", row: cols });
    }
    for (src, dst) in bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(cols)) {
        dequantize_row(format, src, dst);
    }
    Ok(())
}

fn check_row(format: QuantFormat, cols: usize) -> Result<usize, QuantError> {
    match format.row_bytes(cols) {
        Some(b) if cols > 0 => Ok(b),
        _ => Err(QuantError::RowLength { format: format.name().to_string(), cols, block: format.block_size() }),
    }
}

/// Packs one row (`dst` is exactly the row's bytes); `w` weighs each value's error, and
/// `weighted` says whether those weights are more than ones (the legacy formats then leave
/// ggml's scale rule for a search).
fn quantize_row(format: QuantFormat, src: &[f32], w: &[f32], weighted: bool, dst: &mut [u8]) {
    use GgmlType as G;
    match format {
        QuantFormat::Ggml(G::Q4_0) if weighted => legacy::quantize_q4_0_weighted(src, w, dst),
        QuantFormat::Ggml(G::Q5_0) if weighted => legacy::quantize_q5_0_weighted(src, w, dst),
        QuantFormat::Ggml(G::Q4_1) if weighted => legacy::quantize_q4_1_weighted(src, w, dst),
        QuantFormat::Ggml(G::Q5_1) if weighted => legacy::quantize_q5_1_weighted(src, w, dst),
        QuantFormat::Ggml(G::Q4_0) => legacy::quantize_q4_0(src, dst),
        QuantFormat::Ggml(G::Q4_1) => legacy::quantize_q4_1(src, dst),
        QuantFormat::Ggml(G::Q5_0) => legacy::quantize_q5_0(src, dst),
        QuantFormat::Ggml(G::Q5_1) => legacy::quantize_q5_1(src, dst),
        QuantFormat::Ggml(G::Q8_0) => legacy::quantize_q8_0(src, dst),
        QuantFormat::Ggml(G::Q3K) => kquants::quantize_q3_k(src, w, dst),
        QuantFormat::Ggml(G::Q4K) => kquants::quantize_q4_k(src, w, dst),
        QuantFormat::Ggml(G::Q5K) => kquants::quantize_q5_k(src, w, dst),
        QuantFormat::Ggml(G::Q6K) => kquants::quantize_q6_k(src, w, dst),
        QuantFormat::Ggml(_) => unreachable!("quantize checks can_quantize"),
        QuantFormat::Nf4 => nf4::quantize(src, dst),
        QuantFormat::Fp8E4M3 => fp8::quantize(src, dst),
        QuantFormat::Int8 => int::quantize_int8(src, dst),
        QuantFormat::Int4 => int::quantize_int4(src, dst),
    }
}

/// Unpacks one row.
fn dequantize_row(format: QuantFormat, src: &[u8], dst: &mut [f32]) {
    use GgmlType as G;
    match format {
        QuantFormat::Ggml(G::Q4_0) => legacy::dequantize_q4_0(src, dst),
        QuantFormat::Ggml(G::Q4_1) => legacy::dequantize_q4_1(src, dst),
        QuantFormat::Ggml(G::Q5_0) => legacy::dequantize_q5_0(src, dst),
        QuantFormat::Ggml(G::Q5_1) => legacy::dequantize_q5_1(src, dst),
        QuantFormat::Ggml(G::Q8_0) => legacy::dequantize_q8_0(src, dst),
        QuantFormat::Ggml(G::Q3K) => kquants::dequantize_q3_k(src, dst),
        QuantFormat::Ggml(G::Q4K) => kquants::dequantize_q4_k(src, dst),
        QuantFormat::Ggml(G::Q5K) => kquants::dequantize_q5_k(src, dst),
        QuantFormat::Ggml(G::Q6K) => kquants::dequantize_q6_k(src, dst),
        QuantFormat::Ggml(_) => unreachable!("dequantize checks can_quantize"),
        QuantFormat::Nf4 => nf4::dequantize(src, dst),
        QuantFormat::Fp8E4M3 => fp8::dequantize(src, dst),
        QuantFormat::Int8 => int::dequantize_int8(src, dst),
        QuantFormat::Int4 => int::dequantize_int4(src, dst),
    }
}

/// An f16 stored little-endian at `b[0..2]`, as f32.
fn get_f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Stores `v` rounded to f16 at `b[0..2]` and returns the rounded value.
fn put_f16(b: &mut [u8], v: f32) -> f32 {
    let h = half::f16::from_f32(v);
    b[..2].copy_from_slice(&h.to_le_bytes());
    h.to_f32()
}
