//! Bad input: corrupted, truncated and lying containers and safetensors files must give a
//! clear error, never a panic, never wrong bytes, never a huge allocation.

mod common;

use floatzip_codec::container::{CONTAINER_HEADER_LEN, TRAILER_LEN};
use floatzip_codec::{compress_bytes, decompress_bytes, EncodeOptions, Error, FzArchive};

fn small_opts() -> EncodeOptions {
    EncodeOptions {
        chunk_bytes: 512,
        ..Default::default()
    }
}

/// Every way of reading a container back must fail on `fz` (it must not yield bytes).
fn assert_rejected(fz: &[u8], what: &str) {
    assert!(
        decompress_bytes(fz).is_err(),
        "streaming decode accepted {what}"
    );
    if let Ok(a) = FzArchive::open(fz.to_vec()) {
        assert!(
            a.write_original(Vec::new()).is_err(),
            "archive decode accepted {what}"
        );
    }
}

#[test]
fn every_single_byte_flip_is_detected() {
    let data = common::mixed_file(1);
    let (fz, _) = compress_bytes(&data, small_opts()).unwrap();
    assert_eq!(decompress_bytes(&fz).unwrap(), data);
    for i in 0..fz.len() {
        for flip in [0x01u8, 0x80] {
            let mut bad = fz.clone();
            bad[i] ^= flip;
            assert_rejected(
                &bad,
                &format!("a flip of {flip:#x} at byte {i} of {}", fz.len()),
            );
        }
    }
}

#[test]
fn every_truncation_is_detected() {
    let data = common::mixed_file(2);
    let (fz, _) = compress_bytes(&data, small_opts()).unwrap();
    for len in 0..fz.len() {
        assert_rejected(&fz[..len], &format!("truncation to {len} bytes"));
    }
    let mut longer = fz.clone();
    longer.push(0);
    assert_rejected(&longer, "a trailing byte");
}

#[test]
fn errors_name_the_tensor_and_frame() {
    let data = common::mixed_file(3);
    let (fz, m) = compress_bytes(&data, small_opts()).unwrap();
    let e = &m.entries[m.find_tensor("b.weight").unwrap()];
    let (begin, end) = e.frame_compressed_range(1);
    let mut bad = fz.clone();
    bad[((begin + end) / 2) as usize] ^= 0x10;
    let a = FzArchive::open(bad).unwrap();
    let err = a.read_tensor("b.weight").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("b.weight") && msg.contains("frame 1"), "{msg}");
    assert!(matches!(
        a.read_tensor("nope"),
        Err(Error::UnknownTensor(_))
    ));
}

#[test]
fn lying_footer_and_huge_declared_sizes() {
    let data = common::mixed_file(4);
    let (fz, _) = compress_bytes(&data, small_opts()).unwrap();
    let n = fz.len();
    // Manifest length of 2^60 in the footer.
    let mut bad = fz.clone();
    bad[n - 24..n - 16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(matches!(
        FzArchive::open(bad.clone()),
        Err(Error::TooLarge { .. })
    ));
    assert_rejected(&bad, "a 2^60-byte manifest");
    // A verbatim prefix of 2^60 bytes in the header.
    let mut bad = fz.clone();
    bad[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(matches!(
        decompress_bytes(&bad),
        Err(Error::TooLarge { .. })
    ));
    // A frame that declares a 2^50-byte body.
    let mut bad = fz[..CONTAINER_HEADER_LEN as usize].to_vec();
    bad.extend_from_slice(
        &fz[CONTAINER_HEADER_LEN as usize..]
            [..8 + u64::from_le_bytes(fz[16..24].try_into().unwrap()) as usize - 8],
    );
    bad.push(0xF7);
    bad.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
    assert!(matches!(
        decompress_bytes(&bad),
        Err(Error::CorruptFrame { .. })
    ));
    assert!(n as u64 > TRAILER_LEN);
}

#[test]
fn not_a_container() {
    assert!(matches!(
        decompress_bytes(b"hello world, this is not floatzip at all"),
        Err(Error::NotFloatzip)
    ));
    assert!(matches!(
        FzArchive::open(b"PK\x03\x04 a zip file".to_vec()),
        Err(Error::NotFloatzip)
    ));
    assert!(decompress_bytes(&[]).is_err());
}

fn st(header: &str, data_len: usize) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut f = (h.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(&h);
    f.resize(f.len() + data_len, 7);
    f
}

#[test]
fn hostile_safetensors_inputs_are_refused() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "offsets past the end",
            st(
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                8,
            ),
        ),
        (
            "overlap",
            st(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
            ),
        ),
        (
            "2^60 elements",
            st(
                r#"{"a":{"dtype":"F32","shape":[1152921504606846976],"data_offsets":[0,8]}}"#,
                8,
            ),
        ),
        (
            "size disagrees with shape",
            st(
                r#"{"a":{"dtype":"BF16","shape":[3],"data_offsets":[0,8]}}"#,
                8,
            ),
        ),
        (
            "bad JSON",
            st(r#"{"a":{"dtype":"F32","shape":[2],"data_off"#, 8),
        ),
        ("header length beyond the file", {
            let mut f = 1000u64.to_le_bytes().to_vec();
            f.extend_from_slice(b"{\"a\": 1}");
            f
        }),
    ];
    for (what, file) in cases {
        let r = compress_bytes(&file, EncodeOptions::default());
        assert!(
            matches!(
                r,
                Err(Error::InvalidSafetensors(_)) | Err(Error::Truncated(_))
            ),
            "{what}: {:?}",
            r.map(|_| ())
        );
    }
}

#[test]
fn files_that_are_not_safetensors_round_trip() {
    for data in [
        Vec::new(),
        b"x".to_vec(),
        b"{\"config\": true}\n".to_vec(),
        common::noise(9, 100_000),
        vec![0u8; 70_000],
        // Looks like a safetensors length but no JSON follows: plain bytes.
        8u64.to_le_bytes()
            .iter()
            .chain(b"not json")
            .copied()
            .collect(),
    ] {
        let (fz, m) = compress_bytes(&data, small_opts()).unwrap();
        assert_eq!(m.prefix_len, 0);
        assert_eq!(decompress_bytes(&fz).unwrap(), data);
    }
}

#[test]
fn gaps_and_trailing_bytes_round_trip() {
    // Tensor data with a gap before it and bytes after the last tensor.
    let mut f = st(
        r#"{"a":{"dtype":"BF16","shape":[4],"data_offsets":[3,11]}}"#,
        0,
    );
    f.extend_from_slice(&[1, 2, 3, 0, 0x80, 0x3f, 0, 0x40, 0, 0xc0, 0, 0, 9, 9, 9]);
    let (fz, m) = compress_bytes(&f, small_opts()).unwrap();
    assert_eq!(decompress_bytes(&fz).unwrap(), f);
    let names: Vec<_> = m.entries.iter().map(|e| e.name.clone()).collect();
    assert_eq!(names, [None, Some("a".to_string()), None]);
}

#[test]
fn a_failed_stream_hands_out_nothing_more() {
    use std::io::Read;
    let data = common::mixed_file(5);
    let (fz, m) = compress_bytes(&data, small_opts()).unwrap();
    let e = &m.entries[m.find_tensor("b.weight").unwrap()];
    let (begin, end) = e.frame_compressed_range(1);
    let mut bad = fz.clone();
    bad[((begin + end) / 2) as usize] ^= 0x10;
    let mut r = floatzip_codec::FzReader::new(&bad[..]);
    let mut buf = vec![0u8; 64];
    let mut got = Vec::new();
    let err = loop {
        match r.read(&mut buf) {
            Ok(0) => panic!("a corrupt stream read to its end"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert!(
        err.to_string().contains("b.weight") || err.to_string().contains("frame"),
        "{err}"
    );
    // Reading again must fail too, never yield the batch that did not decode.
    assert!(r.read(&mut buf).is_err());
    assert!(r.read(&mut buf).is_err());
    assert!(got.len() < data.len() && data.starts_with(&got));
}
