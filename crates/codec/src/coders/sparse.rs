//! The sparse coder: a plane where nearly every symbol is the same byte, stored as that
//! byte plus the positions and values of the exceptions.
//!
//! This is the fast path for checkpoint deltas where most elements did not change: the
//! XOR planes are zeros with a few scattered bytes. rANS would code them near their
//! entropy too, but must still decode every symbol; here decoding is a `fill` and a
//! scatter, and the size is a few bytes per changed element whatever the precision of a
//! frequency table allows.
//!
//! ```text
//! stream := fill:u8 varint(count) (varint(gap) value:u8){count}
//! ```
//! `gap` is the distance from the previous exception's position plus one (from -1 for
//! the first), so positions strictly increase and every stream has one decoding.

use super::{CorruptStream, Histogram};
use crate::wire::{put_varint, Cursor};

/// Planes with more exceptions than one in this many symbols are never coded sparse: the
/// entropy coders are smaller there, and the estimate is not worth making.
pub(crate) const MAX_EXCEPTION_SHARE: usize = 16;

fn corrupt(reason: &'static str) -> CorruptStream {
    CorruptStream {
        coder: "sparse",
        reason,
    }
}

fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7)
}

/// The most frequent symbol and how many symbols differ from it.
fn fill_and_exceptions(hist: &Histogram) -> (u8, usize) {
    let (fill, &count) = hist
        .counts
        .iter()
        .enumerate()
        .max_by_key(|&(_, c)| *c)
        .unwrap_or((0, &0));
    (fill as u8, hist.total - count as usize)
}

/// What [`encode`] would cost, estimated from the histogram (gaps taken as evenly spread,
/// which over-estimates clustered changes by at most a byte each); `None` when the plane
/// is not sparse enough to consider.
pub fn encoded_size(hist: &Histogram) -> Option<usize> {
    // Only the count matters here, and a plain maximum vectorises (runs for every plane).
    let n = hist.total - hist.counts.iter().copied().max().unwrap_or(0) as usize;
    if n == 0 || n * MAX_EXCEPTION_SHARE > hist.total {
        return None;
    }
    let gap = (hist.total / n) as u64;
    Some(1 + varint_len(n as u64) + n * (varint_len(gap) + 1))
}

/// Appends the sparse coding of `symbols` (whose histogram is `hist`) to `out`.
pub fn encode(symbols: &[u8], hist: &Histogram, out: &mut Vec<u8>) {
    let (fill, n) = fill_and_exceptions(hist);
    out.push(fill);
    put_varint(out, n as u64);
    let mut next = 0usize;
    for (i, &s) in symbols.iter().enumerate() {
        if s != fill {
            put_varint(out, (i - next) as u64);
            out.push(s);
            next = i + 1;
        }
    }
}

/// Decodes a sparse stream into exactly `out.len()` symbols.
pub fn decode(stream: &[u8], out: &mut [u8]) -> Result<(), CorruptStream> {
    let mut c = Cursor::new(stream);
    let fill = c.u8().ok_or_else(|| corrupt("missing fill byte"))?;
    let count = c.varint().ok_or_else(|| corrupt("missing count"))?;
    // Each exception takes at least two bytes: bounds the loop by the stream's length.
    if count > (c.remaining() / 2) as u64 || count > out.len() as u64 {
        return Err(corrupt("more exceptions than the stream or plane can hold"));
    }
    out.fill(fill);
    let mut next = 0u64;
    for _ in 0..count {
        let gap = c.varint().ok_or_else(|| corrupt("truncated position"))?;
        let value = c.u8().ok_or_else(|| corrupt("truncated value"))?;
        let pos = next
            .checked_add(gap)
            .filter(|&p| p < out.len() as u64)
            .ok_or_else(|| corrupt("position past the end of the plane"))?;
        out[pos as usize] = value;
        next = pos + 1;
    }
    if c.remaining() != 0 {
        return Err(corrupt("bytes after the last exception"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(symbols: &[u8]) -> Vec<u8> {
        let hist = Histogram::of(symbols);
        let mut enc = Vec::new();
        encode(symbols, &hist, &mut enc);
        let mut out = vec![0xAA; symbols.len()];
        decode(&enc, &mut out).unwrap();
        assert_eq!(out, symbols);
        enc
    }

    #[test]
    fn sparse_planes_round_trip_and_cost_bytes_per_exception() {
        let mut p = vec![0u8; 100_000];
        for (k, i) in [0usize, 1, 2, 500, 77_777, 99_999].iter().enumerate() {
            p[*i] = k as u8 + 1;
        }
        let enc = round_trip(&p);
        assert!(enc.len() <= 2 + 6 * 4, "{}", enc.len());
        let est = encoded_size(&Histogram::of(&p)).unwrap();
        assert!(est + 6 >= enc.len(), "estimate {est} vs {}", enc.len());
        // The fill need not be zero.
        let mut q = vec![7u8; 4096];
        q[4095] = 0;
        round_trip(&q);
        round_trip(&[]);
    }

    #[test]
    fn dense_planes_are_not_candidates() {
        let p: Vec<u8> = (0..4096u32).map(|i| (i % 7) as u8).collect();
        assert_eq!(encoded_size(&Histogram::of(&p)), None);
        assert_eq!(encoded_size(&Histogram::of(&[3u8; 100])), None);
    }

    #[test]
    fn hostile_streams_are_errors() {
        let mut out = vec![0u8; 10];
        for bad in [
            &[][..],
            &[0],
            &[0, 1],                            // count 1, nothing after
            &[0, 1, 10, 5],                     // position 10 of 10
            &[0, 2, 0, 1, 9, 1],                // second position 10
            &[0, 1, 0, 1, 0],                   // trailing byte
            &[0, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F], // absurd count
        ] {
            assert!(decode(bad, &mut out).is_err(), "{bad:?}");
        }
        decode(&[5, 1, 9, 1], &mut out).unwrap();
        assert_eq!(out, [5, 5, 5, 5, 5, 5, 5, 5, 5, 1]);
    }
}
