//! Any bytes as a safetensors file: header parsing and compression must fail cleanly or
//! round-trip exactly.
#![no_main]
use floatzip_codec::{compress_bytes, decompress_bytes, safetensors, EncodeOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = safetensors::parse_header(data);
    let opts = EncodeOptions { chunk_bytes: 64, ..Default::default() };
    if let Ok((fz, _)) = compress_bytes(data, opts) {
        assert_eq!(decompress_bytes(&fz).expect("own container decodes"), data);
    }
});
