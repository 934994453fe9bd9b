//! Any bytes as a `.fz` container: both readers must fail cleanly or agree.
#![no_main]
use floatzip_codec::{decompress_bytes, FzArchive};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let streamed = decompress_bytes(data);
    if let Ok(a) = FzArchive::open(data.to_vec()) {
        let whole = a.write_original(Vec::new());
        if let (Ok(s), Ok(w)) = (&streamed, &whole) {
            assert_eq!(s, w);
        }
        let size = a.manifest().original_size;
        let _ = a.read_range(size / 3, size / 2);
    }
});
