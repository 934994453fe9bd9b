//! Any bytes, as each dtype's chunk: encode then decode gives the same bytes.
#![no_main]
use floatzip_codec::frame::{decode_frame, encode_frame, parse_frame, FrameOptions};
use floatzip_codec::DType;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&d, chunk)) = data.split_first() else { return };
    let dtypes = [DType::F32, DType::BF16, DType::F16, DType::F8_E4M3, DType::F8_E5M2, DType::F4, DType::U8, DType::I64];
    let mut out = Vec::new();
    encode_frame(chunk, dtypes[d as usize % dtypes.len()], &FrameOptions::default(), &mut out);
    let (h, _) = parse_frame(&out).expect("own frame parses");
    let mut back = vec![0u8; h.original_len];
    decode_frame(&h, &mut back).expect("own frame decodes");
    assert_eq!(back, chunk);
});
