//! ggml tensor storage types: ids, names and block geometry.

/// A ggml storage type, as numbered in the GGUF tensor-info table.
///
/// Every type ggml defines is recognised, so a file with a type exo cannot compute yet fails
/// with a message naming the tensor and the type rather than "unknown type 23".
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    IQ2XXS,
    IQ2XS,
    IQ3XXS,
    IQ1S,
    IQ4NL,
    IQ3S,
    IQ2S,
    IQ4XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// (type, GGUF id, name, elements per block, bytes per block), from ggml's type traits table.
const TABLE: &[(GgmlType, u32, &str, usize, usize)] = &[
    (GgmlType::F32, 0, "f32", 1, 4),
    (GgmlType::F16, 1, "f16", 1, 2),
    (GgmlType::Q4_0, 2, "q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "q8_1", 32, 36),
    (GgmlType::Q2K, 10, "q2_K", 256, 84),
    (GgmlType::Q3K, 11, "q3_K", 256, 110),
    (GgmlType::Q4K, 12, "q4_K", 256, 144),
    (GgmlType::Q5K, 13, "q5_K", 256, 176),
    (GgmlType::Q6K, 14, "q6_K", 256, 210),
    (GgmlType::Q8K, 15, "q8_K", 256, 292),
    (GgmlType::IQ2XXS, 16, "iq2_xxs", 256, 66),
    (GgmlType::IQ2XS, 17, "iq2_xs", 256, 74),
    (GgmlType::IQ3XXS, 18, "iq3_xxs", 256, 98),
    (GgmlType::IQ1S, 19, "iq1_s", 256, 50),
    (GgmlType::IQ4NL, 20, "iq4_nl", 32, 18),
    (GgmlType::IQ3S, 21, "iq3_s", 256, 110),
    (GgmlType::IQ2S, 22, "iq2_s", 256, 82),
    (GgmlType::IQ4XS, 23, "iq4_xs", 256, 136),
    (GgmlType::I8, 24, "i8", 1, 1),
    (GgmlType::I16, 25, "i16", 1, 2),
    (GgmlType::I32, 26, "i32", 1, 4),
    (GgmlType::I64, 27, "i64", 1, 8),
    (GgmlType::F64, 28, "f64", 1, 8),
    (GgmlType::IQ1M, 29, "iq1_m", 256, 56),
    (GgmlType::BF16, 30, "bf16", 1, 2),
    (GgmlType::TQ1_0, 34, "tq1_0", 256, 54),
    (GgmlType::TQ2_0, 35, "tq2_0", 256, 66),
    (GgmlType::MXFP4, 39, "mxfp4", 32, 17),
];

impl GgmlType {
    fn entry(self) -> &'static (GgmlType, u32, &'static str, usize, usize) {
        TABLE.iter().find(|e| e.0 == self).expect("every variant is in TABLE")
    }

    /// The type with GGUF id `id`, if ggml defines one.
    pub fn from_id(id: u32) -> Option<Self> {
        TABLE.iter().find(|e| e.1 == id).map(|e| e.0)
    }

    /// The type named `name` as ggml spells it (`q4_K`, `bf16`); case-insensitive.
    pub fn from_name(name: &str) -> Option<Self> {
        TABLE.iter().find(|e| e.2.eq_ignore_ascii_case(name)).map(|e| e.0)
    }

    /// The GGUF id.
    pub fn id(self) -> u32 {
        self.entry().1
    }

    /// ggml's name for the type.
    pub fn name(self) -> &'static str {
        self.entry().2
    }

    /// Elements per block (1 for plain scalar types).
    pub fn block_size(self) -> usize {
        self.entry().3
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.entry().4
    }

    /// Bytes of a row of `n` elements, or `None` when `n` is not a whole number of blocks or
    /// the size overflows.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.type_size())
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_round_trip() {
        for e in TABLE {
            assert_eq!(GgmlType::from_id(e.1), Some(e.0));
            assert_eq!(GgmlType::from_name(e.2), Some(e.0));
        }
        assert_eq!(GgmlType::from_id(4), None, "id 4 (q4_2) was removed from ggml");
        assert_eq!(GgmlType::Q4K.row_bytes(512), Some(288));
        assert_eq!(GgmlType::Q4K.row_bytes(100), None);
    }
}
