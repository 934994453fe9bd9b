//! The nibble coder: a plane whose symbols are all below 16, stored two to a byte.
//!
//! For near-uniform 4-bit planes (the sign and mantissa of FP8 E4M3, about 3.98 bits of
//! entropy per symbol) Huffman's table and whole-bit codes cost more than the half bit a
//! byte would save, and its decoder manages two symbols per lookup and must build a table
//! per frame; unpacking is a shift and a mask per symbol, vectorised.
//!
//! ```text
//! stream := byte{ceil(n / 2)}   symbol 2i in the low nibble of byte i, 2i + 1 in the high
//! ```
//! For odd `n` the last byte's high nibble is zero, so every stream has one decoding and a
//! changed byte is always an error (or a different plane, which the frame checksum catches).

use super::{CorruptStream, Histogram};

fn corrupt(reason: &'static str) -> CorruptStream {
    CorruptStream {
        coder: "nibble",
        reason,
    }
}

/// What [`encode`] appends for this histogram: `None` when some symbol is 16 or more.
pub fn encoded_size(hist: &Histogram) -> Option<usize> {
    // An OR of all counts rather than a search: no early exit, so it vectorises.
    (hist.counts[16..].iter().fold(0, |a, &c| a | c) == 0).then(|| hist.total.div_ceil(2))
}

/// Appends the packed symbols; every symbol must be below 16 ([`encoded_size`] is `Some`).
/// Higher bits of a larger symbol would be dropped, giving a stream that decodes wrong
/// (which the frame checksum reports), never a panic.
pub fn encode(symbols: &[u8], out: &mut Vec<u8>) {
    let pairs = symbols.chunks_exact(2);
    let last = pairs.remainder().first().map(|&s| s & 0x0f);
    out.reserve(symbols.len().div_ceil(2));
    out.extend(pairs.map(|p| (p[0] & 0x0f) | p[1] << 4));
    out.extend(last);
}

/// Decodes exactly `out.len()` symbols; the stream must be exactly what [`encode`] wrote.
pub fn decode(stream: &[u8], out: &mut [u8]) -> Result<(), CorruptStream> {
    if stream.len() != out.len().div_ceil(2) {
        return Err(corrupt("stream length does not match the plane"));
    }
    let mut pairs = out.chunks_exact_mut(2);
    for (p, &b) in (&mut pairs).zip(stream) {
        p[0] = b & 0x0f;
        p[1] = b >> 4;
    }
    if let [last] = pairs.into_remainder() {
        // Odd length: the stream has one byte more than the pairs took.
        let b = stream[stream.len() - 1];
        if b >> 4 != 0 {
            return Err(corrupt("nonzero padding nibble"));
        }
        *last = b;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length() {
        for n in 0..70usize {
            let symbols: Vec<u8> = (0..n).map(|i| (i * 7 % 16) as u8).collect();
            let h = Histogram::of(&symbols);
            let mut out = Vec::new();
            encode(&symbols, &mut out);
            assert_eq!(Some(out.len()), encoded_size(&h));
            let mut back = vec![0xAA; n];
            decode(&out, &mut back).expect("decode");
            assert_eq!(back, symbols);
        }
    }

    #[test]
    fn wide_symbols_are_not_nibbles() {
        assert_eq!(encoded_size(&Histogram::of(&[1, 2, 16])), None);
        assert_eq!(encoded_size(&Histogram::of(&[15, 0, 3])), Some(2));
    }

    #[test]
    fn malformed_streams_fail() {
        let mut out = [0u8; 3];
        assert!(decode(&[0x21], &mut out).is_err());
        assert!(decode(&[0x21, 0x03, 0], &mut out).is_err());
        assert!(decode(&[0x21, 0x13], &mut out).is_err());
        decode(&[0x21, 0x03], &mut out).expect("valid");
        assert_eq!(out, [1, 2, 3]);
        assert!(decode(&[], &mut []).is_ok());
        assert!(decode(&[0], &mut []).is_err());
    }
}
