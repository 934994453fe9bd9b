//! Entropy coders for one plane of byte symbols, and the choice between them.
//!
//! Every coder has the same three functions: `encoded_size(&Histogram)` (what `encode`
//! will cost, without running it), `encode(symbols, &Histogram, &mut Vec<u8>)` (appends a
//! self-contained stream, tables included) and `decode(stream, &mut [u8])` (fills exactly
//! `out.len()` symbols, or fails with [`CorruptStream`]; never panics on hostile input).

mod histogram;
pub mod huffman;
pub mod nibble;
pub mod rans;
pub mod sparse;

pub use histogram::{sample_runs, CorruptStream, Histogram, SAMPLE_RUN, SAMPLE_STRIDE};
