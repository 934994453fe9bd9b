//! Any bytes as a Huffman, rANS or sparse stream, for any output length: never a panic.
#![no_main]
use floatzip_codec::coders::{huffman, rans, sparse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, stream)) = data.split_first() else { return };
    let mut out = vec![0u8; n as usize * 37];
    let _ = huffman::decode(stream, &mut out);
    let _ = rans::decode(stream, &mut out);
    let _ = sparse::decode(stream, &mut out);
});
