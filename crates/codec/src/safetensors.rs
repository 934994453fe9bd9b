//! The safetensors header: recognising it, parsing it, and checking it against itself.
//!
//! We parse the JSON ourselves (with serde_json) rather than through the `safetensors`
//! crate because a codec must accept what that crate refuses: dtypes it does not know yet
//! (they still round-trip as bytes) and gaps between tensors (kept as byte ranges). What
//! would make the file ambiguous — overlapping tensors, sizes that disagree with shapes —
//! is an error.

use std::collections::BTreeMap;

use crate::dtype::DType;
use crate::error::{Error, Result};

/// Largest JSON header accepted (the `safetensors` crate's own limit).
pub const MAX_HEADER_BYTES: u64 = 100 << 20;

/// One tensor as the header declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Dtype name as written in the header.
    pub dtype_name: String,
    /// The dtype, if the codec knows it.
    pub dtype: Option<DType>,
    /// What the bytes are coded as: the dtype, or packed FP4 / E8M0 for `U8` tensors that
    /// follow the MXFP4/NVFP4 naming conventions, or raw bytes for unknown dtypes.
    pub coded_as: DType,
    /// Shape.
    pub shape: Vec<u64>,
    /// Byte range within the data section (after the header).
    pub begin: u64,
    /// End of the byte range within the data section.
    pub end: u64,
}

/// A parsed and checked safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Bytes before the data section: 8-byte length plus the JSON.
    pub prefix_len: u64,
    /// Tensors in data order (ascending offsets).
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` map, if any.
    pub metadata: Option<BTreeMap<String, String>>,
}

impl Header {
    /// End of the last tensor, relative to the data section.
    pub fn data_len(&self) -> u64 {
        self.tensors.iter().map(|t| t.end).max().unwrap_or(0)
    }
}

/// If `first` (the first 9+ bytes of a file) starts like a safetensors file, the declared
/// JSON length. A file that does not is coded as plain bytes.
pub fn sniff(first: &[u8]) -> Option<u64> {
    let len = u64::from_le_bytes(first.get(..8)?.try_into().ok()?);
    (first.get(8) == Some(&b'{') && (2..=MAX_HEADER_BYTES).contains(&len)).then_some(len)
}

/// Parses the JSON header `json` (the bytes after the 8-byte length).
pub fn parse_header(json: &[u8]) -> Result<Header> {
    let bad = |m: String| Error::InvalidSafetensors(m);
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json)
        .map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
    let mut tensors = Vec::with_capacity(map.len());
    let mut metadata = None;
    for (name, v) in &map {
        if name == "__metadata__" {
            let m = serde_json::from_value(v.clone())
                .map_err(|e| bad(format!("__metadata__ is not a string map: {e}")))?;
            metadata = Some(m);
            continue;
        }
        tensors.push(parse_tensor(name, v)?);
    }
    tensors.sort_by_key(|t| (t.begin, t.end));
    for pair in tensors.windows(2) {
        if pair[1].begin < pair[0].end {
            return Err(bad(format!(
                "tensors {:?} and {:?} overlap",
                pair[0].name, pair[1].name
            )));
        }
    }
    let mut header = Header {
        prefix_len: 8 + json.len() as u64,
        tensors,
        metadata,
    };
    infer_packed_types(&mut header.tensors);
    Ok(header)
}

#[derive(serde::Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

fn parse_tensor(name: &str, v: &serde_json::Value) -> Result<TensorInfo> {
    let bad = |m: String| Error::InvalidSafetensors(format!("tensor {name:?}: {m}"));
    let raw: RawTensor = serde_json::from_value(v.clone()).map_err(|e| bad(e.to_string()))?;
    let (begin, end) = raw.data_offsets;
    if begin > end {
        return Err(bad(format!("data_offsets [{begin}, {end}] run backwards")));
    }
    let dtype = DType::from_safetensors(&raw.dtype);
    if let Some(d) = dtype {
        let elements = raw
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let bytes = elements.and_then(|n| d.byte_len(n));
        if bytes != Some(end - begin) {
            return Err(bad(format!(
                "shape {:?} of {} needs {} bytes but data_offsets give {}",
                raw.shape,
                raw.dtype,
                bytes.map_or("too many".to_string(), |b| b.to_string()),
                end - begin
            )));
        }
    }
    Ok(TensorInfo {
        name: name.to_string(),
        dtype_name: raw.dtype,
        dtype,
        coded_as: dtype.unwrap_or(DType::Bytes),
        shape: raw.shape,
        begin,
        end,
    })
}

/// Real MXFP4 and NVFP4 checkpoints store FP4 codes and E8M0 scales as `U8`. Recognise
/// them by the conventions of gpt-oss (`*_blocks`, `*_scales`) and ModelOpt (`X.weight`
/// next to an F8 `X.weight_scale`), so the codec tries the FP4 layouts on them. A wrong
/// guess only costs ratio: the encoder still measures the plain byte layout too.
fn infer_packed_types(tensors: &mut [TensorInfo]) {
    let f8_scales: std::collections::HashSet<String> = tensors
        .iter()
        .filter(|t| t.dtype == Some(DType::F8_E4M3) && t.name.ends_with("_scale"))
        .map(|t| t.name.trim_end_matches("_scale").to_string())
        .collect();
    for t in tensors.iter_mut().filter(|t| t.dtype == Some(DType::U8)) {
        if t.name.ends_with("_blocks") || f8_scales.contains(&t.name) {
            t.coded_as = DType::F4;
        } else if t.name.ends_with("_scales") {
            t.coded_as = DType::F8_E8M0;
        }
    }
}

/// Writes a safetensors file header (length + JSON padded with spaces to a multiple of 8)
/// for `tensors` laid out back to back in the given order; returns the bytes.
pub fn write_header(
    tensors: &[(&TensorInfo, u64, u64)],
    metadata: Option<&BTreeMap<String, String>>,
) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    if let Some(m) = metadata {
        map.insert("__metadata__".into(), serde_json::json!(m));
    }
    for (t, begin, end) in tensors {
        map.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype_name, "shape": t.shape, "data_offsets": [begin, end]}),
        );
    }
    let mut json = serde_json::Value::Object(map).to_string().into_bytes();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(json: &str) -> Result<Header> {
        parse_header(json.as_bytes())
    }

    #[test]
    fn parses_and_orders_tensors() {
        let h = header(
            r#"{"b":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]},
                "a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                "__metadata__":{"format":"pt"}}"#,
        )
        .expect("valid");
        assert_eq!(
            h.tensors
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(h.data_len(), 8);
        assert_eq!(
            h.metadata
                .as_ref()
                .and_then(|m| m.get("format"))
                .map(String::as_str),
            Some("pt")
        );
    }

    #[test]
    fn rejects_lies() {
        let cases = [
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#,
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#,
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}}"#,
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#,
            r#"[1,2]"#,
            r#"{"a":{"dtype":"F32""#,
        ];
        for c in cases {
            assert!(
                matches!(header(c), Err(Error::InvalidSafetensors(_))),
                "{c}"
            );
        }
    }

    #[test]
    fn unknown_dtypes_are_bytes_and_fp4_conventions_are_seen() {
        let h = header(
            r#"{"x":{"dtype":"F6_E3M2","shape":[3],"data_offsets":[0,3]},
                "w_blocks":{"dtype":"U8","shape":[2],"data_offsets":[3,5]},
                "w_scales":{"dtype":"U8","shape":[1],"data_offsets":[5,6]},
                "n.weight":{"dtype":"U8","shape":[1],"data_offsets":[6,7]},
                "n.weight_scale":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[7,8]},
                "plain":{"dtype":"U8","shape":[1],"data_offsets":[8,9]}}"#,
        )
        .expect("valid");
        let coded: Vec<DType> = h.tensors.iter().map(|t| t.coded_as).collect();
        assert_eq!(
            coded,
            [
                DType::Bytes,
                DType::F4,
                DType::F8_E8M0,
                DType::F4,
                DType::F8_E4M3,
                DType::U8
            ]
        );
    }

    #[test]
    fn sniffing() {
        let mut f = 10u64.to_le_bytes().to_vec();
        f.push(b'{');
        assert_eq!(sniff(&f), Some(10));
        f[8] = b'x';
        assert_eq!(sniff(&f), None);
        assert_eq!(sniff(b"{\"a\": 1}\n"), None);
        assert_eq!(sniff(&[1, 2]), None);
    }
}
