//! Element types, named as safetensors names them.

use serde::{Deserialize, Serialize};

/// The element type of a tensor, or of a byte range with no tensor type.
///
/// Names follow safetensors (`F32`, `BF16`, `F8_E4M3`, ...). Types the codec has no float
/// layout for still round-trip: they are coded as byte planes of their element width.
#[allow(non_camel_case_types)] // the safetensors spellings, on purpose
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    F64,
    F32,
    BF16,
    F16,
    F8_E4M3,
    F8_E5M2,
    /// MX block scale: a bare 8-bit exponent.
    F8_E8M0,
    /// FP4 E2M1, two codes packed per byte (low nibble = even element).
    F4,
    I64,
    I32,
    I16,
    I8,
    U64,
    U32,
    U16,
    U8,
    BOOL,
    /// Bytes with no element structure (headers, gaps, files that are not safetensors).
    Bytes,
}

impl DType {
    /// Parses a safetensors dtype name; `None` for a name this codec does not know.
    pub fn from_safetensors(name: &str) -> Option<DType> {
        Some(match name {
            "F64" => DType::F64,
            "F32" => DType::F32,
            "BF16" => DType::BF16,
            "F16" => DType::F16,
            "F8_E4M3" => DType::F8_E4M3,
            "F8_E5M2" => DType::F8_E5M2,
            "F8_E8M0" => DType::F8_E8M0,
            "F4" => DType::F4,
            "I64" => DType::I64,
            "I32" => DType::I32,
            "I16" => DType::I16,
            "I8" => DType::I8,
            "U64" => DType::U64,
            "U32" => DType::U32,
            "U16" => DType::U16,
            "U8" => DType::U8,
            "BOOL" => DType::BOOL,
            _ => return None,
        })
    }

    /// The safetensors name of this type (`"BYTES"` for [`DType::Bytes`]).
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::F8_E4M3 => "F8_E4M3",
            DType::F8_E5M2 => "F8_E5M2",
            DType::F8_E8M0 => "F8_E8M0",
            DType::F4 => "F4",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U64 => "U64",
            DType::U32 => "U32",
            DType::U16 => "U16",
            DType::U8 => "U8",
            DType::BOOL => "BOOL",
            DType::Bytes => "BYTES",
        }
    }

    /// Size of one element in bits (4 for packed FP4, 8 for bytes).
    pub fn bits(self) -> u64 {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 64,
            DType::F32 | DType::I32 | DType::U32 => 32,
            DType::BF16 | DType::F16 | DType::I16 | DType::U16 => 16,
            DType::F8_E4M3
            | DType::F8_E5M2
            | DType::F8_E8M0
            | DType::I8
            | DType::U8
            | DType::BOOL
            | DType::Bytes => 8,
            DType::F4 => 4,
        }
    }

    /// Bytes of `elements` elements, or `None` on overflow or a half byte of FP4.
    pub fn byte_len(self, elements: u64) -> Option<u64> {
        let bits = elements.checked_mul(self.bits())?;
        (bits % 8 == 0).then_some(bits / 8)
    }

    /// Smallest whole number of bytes that holds whole elements (2 for F16, 1 for F4).
    pub fn unit_bytes(self) -> usize {
        (self.bits() as usize).div_ceil(8)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in [
            DType::F64,
            DType::F32,
            DType::BF16,
            DType::F16,
            DType::F8_E4M3,
            DType::F8_E5M2,
            DType::F8_E8M0,
            DType::F4,
            DType::I64,
            DType::U8,
            DType::BOOL,
        ] {
            assert_eq!(DType::from_safetensors(d.name()), Some(d));
        }
        assert_eq!(DType::from_safetensors("F6_E2M3"), None);
    }

    #[test]
    fn byte_lengths() {
        assert_eq!(DType::BF16.byte_len(3), Some(6));
        assert_eq!(DType::F4.byte_len(4), Some(2));
        assert_eq!(DType::F4.byte_len(3), None);
        assert_eq!(DType::F64.byte_len(u64::MAX), None);
    }
}
