//! The K/V block API's hot path allocates nothing: once a [`KvBlockCodec`] has coded a few
//! pages (its buffers and the frame coder's thread-local scratch grown to size), further
//! `encode_block` and `decode_block` calls on pages of the same sizes make no heap
//! allocation at all. Counted by a global allocator wrapper, per thread (the test harness
//! allocates on its own threads), and only while this test's thread is measuring.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;

use floatzip_codec::kv::{KvBlockCodec, KvLayout, KvMode};
use floatzip_codec::DType;

/// `System`, counting the allocations of threads that asked for it.
struct Counting;

thread_local! {
    /// Whether this thread's allocations are being counted (const: no allocation to read).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Allocations (and reallocations) this thread made while counting.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn note_alloc() {
    // `try_with`: thread-local storage may already be gone while a thread exits.
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the counting touches only
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations this thread makes while running `f`.
fn allocations<R>(f: impl FnOnce() -> R) -> (u64, R) {
    ALLOCS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (ALLOCS.with(|a| a.get()), r)
}

/// The `k` cache of a fixture: dtype, `[layers, heads, tokens, head_dim]`, bytes.
fn key_cache(file: &str) -> (DType, Vec<u64>, Vec<u8>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(file);
    let data = std::fs::read(&path).expect("fixture");
    let st = safetensors::SafeTensors::deserialize(&data).expect("safetensors");
    let k = st.tensor("k").expect("k tensor");
    let dtype = DType::from_safetensors(&format!("{:?}", k.dtype())).expect("dtype");
    let shape = k.shape().iter().map(|&d| d as u64).collect();
    (dtype, shape, k.data().to_vec())
}

/// `[tokens, heads, head_dim]` pages of `tokens` tokens from every layer of an `lhtd` cache.
fn pages(shape: &[u64], bytes: &[u8], w: usize, tokens: usize) -> Vec<(Vec<u8>, [u64; 3])> {
    let (l, h, t, d) = (shape[0], shape[1], shape[2], shape[3]);
    let (h, t, d) = (h as usize, t as usize, d as usize);
    let mut out = Vec::new();
    for layer in 0..l as usize {
        for start in (0..t).step_by(tokens) {
            let mut page = Vec::with_capacity(tokens * h * d * w);
            for ti in start..start + tokens {
                for hi in 0..h {
                    let at = (((layer * h + hi) * t + ti) * d) * w;
                    page.extend_from_slice(&bytes[at..at + d * w]);
                }
            }
            out.push((page, [tokens as u64, h as u64, d as u64]));
        }
    }
    out
}

#[test]
fn reused_codec_encodes_and_decodes_pages_without_allocating() {
    // The counter sees this thread's allocations.
    let (n, v) = allocations(|| Vec::<u8>::with_capacity(8));
    assert_eq!((n, v.capacity()), (1, 8));
    let mut codec = KvBlockCodec::new();
    let (mut enc, mut dec) = (Vec::new(), Vec::new());
    let mut modes = Vec::new();
    for file in [
        "minilm-kv-bf16.safetensors",
        "minilm-kv-f16.safetensors",
        "minilm-kv-fp8-e4m3.safetensors",
    ] {
        let (dtype, shape, bytes) = key_cache(file);
        // 16-token pages code flat; 256-token ones per channel (checked below).
        for tokens in [16usize, 256] {
            let all = pages(&shape, &bytes, dtype.unit_bytes(), tokens);
            let (warm, measured) = all.split_at(all.len() / 2);
            // Warm-up: buffers grow to the largest page and block of this size.
            enc.reserve(2 * warm[0].0.len() + 4096);
            dec.resize(warm[0].0.len(), 0);
            for (page, shape) in warm {
                codec
                    .encode_block(page, dtype, shape, KvLayout::Thd, &mut enc)
                    .expect("encode");
                codec.decode_block(&enc, &mut dec).expect("decode");
            }
            for (page, shape) in measured {
                let (n, mode) = allocations(|| {
                    let mode = codec
                        .encode_block(page, dtype, shape, KvLayout::Thd, &mut enc)
                        .expect("encode");
                    codec.decode_block(&enc, &mut dec).expect("decode");
                    mode
                });
                assert_eq!(
                    n, 0,
                    "{file}: {tokens}-token page, {mode:?}: {n} allocations"
                );
                assert!(
                    dec == *page,
                    "{file}: {tokens}-token page differs after decoding"
                );
                modes.push((dtype, tokens, mode));
            }
        }
    }
    // Both kinds of winner were measured, for every dtype.
    for dtype in [DType::BF16, DType::F16, DType::F8_E4M3] {
        let of = |tokens| modes.iter().filter(move |m| m.0 == dtype && m.1 == tokens);
        assert!(of(16).all(|m| m.2 == KvMode::Flat), "{dtype:?}");
        assert!(
            of(256).any(|m| matches!(m.2, KvMode::PerChannel { .. })),
            "{dtype:?}: no per-channel winner among 256-token pages"
        );
    }
}
