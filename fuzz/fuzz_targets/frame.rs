//! Any bytes as one frame: parse and decode must never panic.
#![no_main]
use floatzip_codec::frame::{decode_frame, parse_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((h, _)) = parse_frame(data) {
        let mut out = vec![0u8; h.original_len];
        let _ = decode_frame(&h, &mut out);
    }
});
