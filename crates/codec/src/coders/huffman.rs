//! PLACEHOLDER: stores symbols raw until the real huffman coder lands (being written separately).
use super::{CorruptStream, Histogram};

/// Size in bytes that [`encode`] will append for a plane with this histogram.
pub fn encoded_size(hist: &Histogram) -> usize {
    hist.total
}

/// Appends the coded symbols to `out`.
pub fn encode(symbols: &[u8], _hist: &Histogram, out: &mut Vec<u8>) {
    out.extend_from_slice(symbols);
}

/// Decodes exactly `out.len()` symbols from `input`.
pub fn decode(input: &[u8], out: &mut [u8]) -> Result<(), CorruptStream> {
    if input.len() != out.len() {
        return Err(CorruptStream {
            coder: "huffman",
            reason: "length mismatch",
        });
    }
    out.copy_from_slice(input);
    Ok(())
}
