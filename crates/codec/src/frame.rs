//! One encoded chunk: a self-delimiting frame, and the per-plane coder choice.
//!
//! ```text
//! frame := TAG(0xF7) varint(body_len) body
//! body  := layout_id:u8 layout_param:u8 varint(original_len) checksum:u32le
//!          { coder_id:u8 varint(payload_len) payload }   one per plane of the layout
//! ```
//! A frame carries everything needed to decode it, so a stream of frames decodes without
//! the manifest, and the checksum means a corrupt frame is an error, never wrong bytes.

use std::cell::RefCell;
use std::ops::Range;

use crate::coders::rans::SmallPlanes;
use crate::coders::{
    huffman, nibble, rans, sample_runs, sparse, Histogram, SAMPLE_RUN, SAMPLE_STRIDE,
};
use crate::dtype::DType;
use crate::fixed::FixedVec;
use crate::layout::Layout;
use crate::wire::{put_varint, varint, Cursor};

/// First byte of every frame.
pub const FRAME_TAG: u8 = 0xF7;
/// Largest chunk a frame may hold. Bounds every allocation a decoder makes per frame.
pub const MAX_CHUNK_BYTES: usize = 64 << 20;
/// Largest frame body: a chunk coded raw plus per-plane headers, with room to spare.
pub const MAX_BODY_BYTES: usize = MAX_CHUNK_BYTES + 4096;
/// Most planes a frame holds (decoders reject more; layouts have at most 8).
pub const MAX_PLANES: usize = 16;

/// The entropy coder of one plane in one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Coder {
    /// Symbols stored as they are.
    #[default]
    Raw,
    /// Every symbol is the same: the payload is that one byte.
    Constant,
    /// Canonical multi-stream Huffman ([`crate::coders::huffman`]).
    Huffman,
    /// Interleaved rANS, 64 lanes for large planes ([`crate::coders::rans`]).
    Rans,
    /// zstd, for planes with repeats that order-0 coders cannot see.
    Zstd,
    /// One fill byte plus the scattered exceptions ([`crate::coders::sparse`]).
    Sparse,
    /// Symbols below 16 packed two to a byte ([`crate::coders::nibble`]).
    Nibble,
}

impl Coder {
    fn id(self) -> u8 {
        match self {
            Coder::Raw => 0,
            Coder::Constant => 1,
            Coder::Huffman => 2,
            // 3 was 32-lane rANS, before the 64-lane streams of `coders::rans`.
            Coder::Rans => 5,
            Coder::Zstd => 4,
            Coder::Sparse => 6,
            Coder::Nibble => 7,
        }
    }

    fn from_id(id: u8) -> Option<Coder> {
        Some(match id {
            0 => Coder::Raw,
            1 => Coder::Constant,
            2 => Coder::Huffman,
            4 => Coder::Zstd,
            5 => Coder::Rans,
            6 => Coder::Sparse,
            7 => Coder::Nibble,
            _ => return None,
        })
    }

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Coder::Raw => "raw",
            Coder::Constant => "const",
            Coder::Huffman => "huffman",
            Coder::Rans => "rans",
            Coder::Zstd => "zstd",
            Coder::Sparse => "sparse",
            Coder::Nibble => "nibble",
        }
    }
}

/// Encoder settings that affect the size/speed trade-off.
#[derive(Debug, Clone, Copy)]
pub struct FrameOptions {
    /// zstd level used where a chunk holds repeats (see [`looks_repetitive`]).
    pub zstd_level: i32,
    /// An entropy coder must beat raw storage by this fraction to be used: decoding
    /// raw bytes is a copy, so a 0.1 % gain on a near-random plane is not worth it.
    pub min_gain: f64,
    /// rANS must beat Huffman by this fraction to be used where Huffman decodes faster:
    /// planes whose codes average under [`HUFFMAN_FAST_BELOW_BITS`] (several symbols per
    /// table lookup), or too small for the wide SIMD rANS decoder. Elsewhere the smaller
    /// coding wins. 0 always takes the smaller.
    pub rans_min_gain: f64,
    /// Whether small rANS planes get two or four lanes (smaller, slower a symbol) or eight
    /// (see [`SmallPlanes`]).
    pub small_planes: SmallPlanes,
}

impl FrameOptions {
    /// Settings that take the smallest coding of every plane, whatever its decode speed.
    pub fn smallest() -> Self {
        FrameOptions {
            min_gain: 0.0,
            rans_min_gain: 0.0,
            ..FrameOptions::default()
        }
    }
}

impl Default for FrameOptions {
    fn default() -> Self {
        FrameOptions {
            zstd_level: 9,
            min_gain: 0.002,
            rans_min_gain: 0.005,
            small_planes: SmallPlanes::Compact,
        }
    }
}

/// What the encoder chose for one frame, for `inspect` and the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameStats {
    /// The layout used.
    pub layout: Layout,
    /// The coder of each plane (inline: reporting them costs no allocation).
    pub coders: FixedVec<Coder, MAX_PLANES>,
    /// Order-0 entropy of the chosen layout's planes, in bytes: the floor for this chunk
    /// (for FP4 chunks of 64 KiB and more, and for low mantissa planes stored raw, of the
    /// sampled histogram they were planned with: within about 0.1-0.3 % of the exact
    /// floor, below it; `bench` works out the exact floors).
    pub floor_bytes: f64,
}

/// Why a frame could not be decoded (the caller adds which entry and frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Malformed header or coder stream.
    Corrupt(String),
    /// Decoded, but the bytes do not match the checksum.
    Checksum,
}

fn corrupt(reason: impl Into<String>) -> FrameError {
    FrameError::Corrupt(reason.into())
}

/// Per-thread buffers of the frame coder. Every `Vec` here only grows (cleared, never
/// freed), so coding frames of sizes seen before allocates nothing.
#[derive(Default)]
struct Scratch {
    planes: Vec<Vec<u8>>,
    best_planes: Vec<Vec<u8>>,
    /// The coded payloads of a frame's planes, back to back.
    payload: Vec<u8>,
    /// The planes' histograms of every candidate layout, one layout after the other.
    hists: Vec<Histogram>,
    /// Coder choices for the layout being evaluated, and for the best one so far.
    choices: Vec<PlaneChoice>,
    best_choices: Vec<PlaneChoice>,
    /// The bytes of a chunk's sample ([`sample_runs`]), for its repeat check.
    sample: Vec<u8>,
}

thread_local! {
    // Reused per worker thread so that coding a chunk allocates nothing in steady state.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A plan for one plane: coder and predicted payload size (and the rANS or Huffman plan,
/// so that it is worked out once).
#[derive(Clone)]
struct PlaneChoice {
    coder: Coder,
    size: usize,
    rans: Option<rans::Plan>,
    huffman: Option<huffman::Plan>,
}

impl PlaneChoice {
    fn new(coder: Coder, size: usize) -> Self {
        PlaneChoice {
            coder,
            size,
            rans: None,
            huffman: None,
        }
    }
}

/// Average Huffman code length (bits per symbol) under which Huffman decodes faster than
/// wide rANS: its table decodes up to four codes per lookup, but only one of 4 bits or more
/// in most lookups, where SIMD rANS (32 or 64 lanes) runs ahead.
pub const HUFFMAN_FAST_BELOW_BITS: usize = 4;

/// Planes with fewer symbols than this may give up the speed margin (see [`speed_margin`]).
const SMALL_PLANE_SYMBOLS: usize = 64 << 10;

/// The margin rANS must win by over a Huffman coding of `huffman_bytes` where Huffman
/// decodes faster: `opts.rans_min_gain`, unless the plane is small (and the options
/// [`SmallPlanes::Compact`]) and that Huffman coding is more than 1 % over what the
/// universal order-0 code costs (`entropy_bits` + [`Histogram::model_cost_bits`]): the
/// coder efficiency target. A file's small planes (block scales of a layer, norms) are a few
/// percent of its symbols, so their slower decoding costs little.
fn speed_margin(
    opts: &FrameOptions,
    hist: &Histogram,
    entropy_bits: f64,
    huffman_bytes: usize,
) -> f64 {
    let small = opts.small_planes == SmallPlanes::Compact && hist.total < SMALL_PLANE_SYMBOLS;
    // As stored: the plane's coder byte and length count too (they do in `bench`).
    let stored = huffman_bytes + 1 + varint_len(huffman_bytes);
    let wasteful = || stored as f64 * 8.0 > (entropy_bits + hist.model_cost_bits()) * 1.01;
    match opts.rans_min_gain > 0.0 && small && wasteful() {
        true => 0.0,
        false => opts.rans_min_gain,
    }
}

/// [`choose_coder_bounded`] with the bounds worked out (tests compare it with a reference).
#[cfg(test)]
fn choose_coder(hist: &Histogram, opts: &FrameOptions, nibbles: bool) -> PlaneChoice {
    let bounds = PlaneBounds::new(hist, nibbles, false, opts.small_planes);
    choose_coder_bounded(hist, opts, &bounds)
}

/// What the coder choice starts from: cheap lower bounds on each coder's estimate, and
/// the two exact estimates that cost nothing.
#[derive(Clone, Copy, Default)]
struct PlaneBounds {
    /// The plane's order-0 entropy ([`Histogram::entropy_bits`]), kept for the frame's
    /// floor.
    entropy_bits: f64,
    /// Plane is empty or constant: the bounds below are not computed.
    trivial: bool,
    /// Packed FP4 bytes: rANS also weighs a table of nibble frequencies
    /// ([`rans::plan_nibbles`]), smaller than the byte-table bound assumes, so rANS is not
    /// bounded.
    fp4_bytes: bool,
    sparse: Option<usize>,
    nibble: Option<usize>,
    rans: usize,
    rans_wide: usize,
    /// The smallest of the coded bounds.
    coded: usize,
}

impl PlaneBounds {
    fn new(hist: &Histogram, nibbles: bool, fp4_bytes: bool, small: SmallPlanes) -> Self {
        let entropy_bits = hist.entropy_bits();
        if hist.total == 0 || hist.single_symbol().is_some() {
            return PlaneBounds {
                entropy_bits,
                trivial: true,
                fp4_bytes,
                sparse: None,
                nibble: None,
                rans: 0,
                rans_wide: 0,
                coded: 0,
            };
        }
        // `Histogram::entropy_bits_lower_bound`, from the entropy already worked out.
        let info_lb = (entropy_bits - hist.total as f64 * 1e-6).max(0.0);
        // Sparse coding needs one symbol in 15/16 of the plane, which leaves at most
        // h(1/16) + log2(255) / 16 < 0.84 bits per symbol of entropy (Fano): above 1 bit
        // (far above `entropy_bits`' error) it is ruled out without finding the largest
        // count (a pass the baseline target makes slow: it has no unsigned max).
        const _: () = assert!(
            sparse::MAX_EXCEPTION_SHARE >= 16,
            "the bound assumes at most 1/16"
        );
        let sparse = match entropy_bits >= hist.total as f64 {
            true => None,
            false => sparse::encoded_size(hist),
        };
        let nibble = nibbles.then(|| nibble::encoded_size(hist)).flatten();
        let (rans, rans_wide) = match fp4_bytes {
            true => (0, 0),
            false => rans::encoded_size_bound(hist, info_lb, small),
        };
        let coded = huffman::encoded_size_bound(hist, info_lb)
            .min(rans)
            .min(sparse.unwrap_or(usize::MAX))
            .min(nibble.unwrap_or(usize::MAX));
        PlaneBounds {
            entropy_bits,
            trivial: false,
            fp4_bytes,
            sparse,
            nibble,
            rans,
            rans_wide,
            coded,
        }
    }

    /// A lower bound on the size [`choose_coder_bounded`] gives the plane: raw, or a coded
    /// size no smaller than the coders' bounds.
    fn chosen(&self, hist: &Histogram) -> usize {
        match (self.trivial, hist.total) {
            (_, 0) => 0,
            (true, _) => 1,
            (false, raw) => raw.min(self.coded),
        }
    }
}

/// The coder for one plane, by the coders' size estimates: the smallest, with a margin
/// against rANS where Huffman decodes faster, and raw unless a coder saves `min_gain`.
/// `nibbles`: whether the nibble coder may be used (not for FP4, whose coder choices stay
/// as they were).
///
/// Small frames (a 16-token K/V page is a 6-12 KiB frame) spend more time building coder
/// tables than coding, so coders are first ruled out by lower bounds on their estimates
/// (the entropy, and table sizes that follow from which symbols occur): a plane no coder
/// can get under raw is raw without any table built, and rANS frequencies are normalised
/// only when rANS could beat the Huffman estimate. The bounds make this the same choice
/// as evaluating every coder (`choose_coder_reference` in the tests).
fn choose_coder_bounded(hist: &Histogram, opts: &FrameOptions, b: &PlaneBounds) -> PlaneChoice {
    if hist.total == 0 {
        return PlaneChoice::new(Coder::Raw, 0);
    }
    if b.trivial {
        return PlaneChoice::new(Coder::Constant, 1);
    }
    let raw = hist.total;
    let raw_limit = raw as f64 * (1.0 - opts.min_gain);
    let (sparse, nibble, rans_lb, rans_wide_lb) = (b.sparse, b.nibble, b.rans, b.rans_wide);
    if b.coded as f64 >= raw_limit {
        return PlaneChoice::new(Coder::Raw, raw);
    }
    let hplan = huffman::plan(hist);
    let h = hplan.encoded_size();
    let huffman_fast = h * 8 < HUFFMAN_FAST_BELOW_BITS * hist.total;
    // The margin rANS must win by: always for plans too narrow for the SIMD decoder, and
    // for wide ones where Huffman decodes several symbols per lookup.
    // The margin only matters where rANS could win without it: only there is the model
    // cost worked out.
    let margin = match rans_lb.min(rans_wide_lb) + 8 < h {
        true => speed_margin(opts, hist, b.entropy_bits, h),
        false => opts.rans_min_gain,
    };
    let wide_margin = match huffman_fast {
        true => margin,
        false => 0.0,
    };
    let rans_may_win = b.fp4_bytes
        || ((rans_lb + 8) as f64) < h as f64 * (1.0 - margin)
        || ((rans_wide_lb + 8) as f64) < h as f64 * (1.0 - wide_margin);
    let nibble_plan = || b.fp4_bytes.then(|| rans::plan_nibbles(hist)).flatten();
    let plan = match rans_may_win {
        false => None,
        true => match (rans::plan(hist, opts.small_planes), nibble_plan()) {
            (Some(full), Some(nib)) if nib.encoded_size() < full.encoded_size() => Some(nib),
            (full, _) => full,
        },
    };
    let huffman_choice = || PlaneChoice {
        coder: Coder::Huffman,
        size: h,
        rans: None,
        huffman: Some(hplan.clone()),
    };
    let best = match plan {
        Some(plan) => {
            let r = plan.encoded_size();
            let margin = match huffman_fast || !plan.decodes_wide() {
                true => margin,
                false => 0.0,
            };
            // rANS must win by more than its estimate's slack, and by the margin.
            if ((r + 8) as f64) < h as f64 * (1.0 - margin) {
                PlaneChoice {
                    coder: Coder::Rans,
                    size: r,
                    rans: Some(plan),
                    huffman: None,
                }
            } else {
                huffman_choice()
            }
        }
        None => huffman_choice(),
    };
    // Nearly constant planes (unchanged elements of a delta): smaller, and a fill to decode.
    let best = match sparse {
        Some(size) if size < best.size => PlaneChoice::new(Coder::Sparse, size),
        _ => best,
    };
    // Packed nibbles decode fastest of all: taken whenever no larger than the rest.
    let best = match nibble {
        Some(size) if size <= best.size => PlaneChoice::new(Coder::Nibble, size),
        _ => best,
    };
    if (best.size as f64) < raw_limit {
        best
    } else {
        PlaneChoice::new(Coder::Raw, raw)
    }
}

/// Cheap test for repeats (zero padding, duplicated rows, shared prefixes): samples
/// aligned 8-byte words into a small hash table and counts exact re-occurrences. Float
/// weights almost never repeat a whole 8-byte word, so this rarely fires on them and
/// the costly zstd attempt is skipped.
///
/// Low-entropy bytes (block scales, FP8 scales) repeat words all the time by chance, short
/// repeats at scattered offsets that cost zstd about as much as an order-0 coder pays for
/// the words themselves: there zstd was tried on every chunk, never chosen, and took half
/// of the encode time of MXFP4 files. So when words repeat, [`repeat_savings`] also
/// estimates what coding them as matches would save over order-0 coding with `hist` (the
/// chunk's byte histogram, counted here when not given), which must be 1/16 of the chunk.
pub fn looks_repetitive(chunk: &[u8], hist: Option<&Histogram>) -> bool {
    words_look_repetitive(chunk, hist.ok_or(chunk), 16)
}

/// [`looks_repetitive`] on the sample that [`Histogram::sampled`] counts (one KiB of every
/// 8 KiB), for chunks planned from that sample (`hist`): the full check read every byte
/// of the chunk and was a sixth of FP4 encoding. A repeat is seen when its earlier copy is
/// in the sample too, so an eighth of the repeats at random distances are: the share they
/// must reach is an eighth of the full check's. Zero padding repeats everywhere.
pub fn sample_looks_repetitive(chunk: &[u8], hist: &Histogram) -> bool {
    sample_looks_repetitive_in(chunk, hist, &mut Vec::new())
}

/// [`sample_looks_repetitive`], gathering the sample into `buf` first: its three passes
/// then walk one slice (over the runs in turn, they took twice as long).
fn sample_looks_repetitive_in(chunk: &[u8], hist: &Histogram, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    sample_runs(chunk).for_each(|run| buf.extend_from_slice(run));
    let share = 16 * SAMPLE_STRIDE / SAMPLE_RUN;
    words_look_repetitive(buf, Ok(hist), share)
}

/// The aligned 8-byte words of `bytes` (a partial last word is left out).
fn words(bytes: &[u8]) -> impl Iterator<Item = u64> + Clone + '_ {
    bytes.chunks_exact(8).map(|w| {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        u64::from_le_bytes(a)
    })
}

/// The test of [`looks_repetitive`] on the aligned words of `bytes`: at least 1/`share` of
/// them are repeats, and coding those as matches saves 1/`share` of the order-0 cost under
/// `hist`, or under the histogram of the bytes given instead (counted only when the first
/// test passes).
// Inlined into both callers: as one shared function, its loops lost what each call site
// specialises (K/V F16 page encoding measured 9 % slower).
#[inline(always)]
fn words_look_repetitive(bytes: &[u8], hist: Result<&Histogram, &[u8]>, share: usize) -> bool {
    let (words, samples, len) = (words(bytes), bytes.len() / 8, bytes.len());
    // The table of 16-bit tags bounds the hits from above: most chunks are ruled out by
    // it, and only the others count the hits exactly.
    if samples < 64 || repeated_tags(words.clone()) * share <= samples {
        return false;
    }
    // The exact hits next, before the order-0 costs (a log2 per byte value) are worked out.
    let hits = repeated_words(words.clone());
    if hits * share <= samples {
        return false;
    }
    let counted;
    let hist = match hist {
        Ok(h) => h,
        Err(bytes) => {
            counted = Histogram::of(bytes);
            &counted
        }
    };
    // Order-0 cost of each byte value, in 1/256 bits: a repeat saves what its word costs.
    let mut cost = [0u32; 256];
    let total = hist.total.max(1) as f64;
    for (c, &n) in cost.iter_mut().zip(&hist.counts) {
        if n > 0 {
            *c = (-(n as f64 / total).log2() * 256.0) as u32;
        }
    }
    let word_cost = |w: u64| -> u64 {
        w.to_le_bytes()
            .iter()
            .map(|&b| cost[b as usize] as u64)
            .sum()
    };
    let saved = repeat_savings(words, word_cost);
    let all = (hist.entropy_bits_per_symbol() * 256.0 * len as f64) as u64;
    saved * share as u64 > all
}

/// What coding the repeats as matches would save over order-0 coding, roughly: the order-0
/// cost (`weight`) of every word found again in a 4096-slot hash table (each slot keeps its
/// last word and where it was), less [`MATCH_COST`] for each match, i.e. each run of such
/// words whose earlier copies were not also consecutive (a new offset).
fn repeat_savings(words: impl Iterator<Item = u64>, weight: impl Fn(u64) -> u64) -> u64 {
    const BITS: u32 = 12;
    let mut table = [(0u64, u32::MAX); 1 << BITS];
    let (mut saved, mut starts) = (0u64, 0u64);
    // Where the current match's source continues, if a match is running.
    let mut next_source = u32::MAX;
    for (i, v) in words.enumerate() {
        let i = i as u32;
        let slot = (v.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - BITS)) as usize;
        let (seen, at) = table[slot];
        if seen == v && at != u32::MAX {
            saved += weight(v);
            starts += (at != next_source) as u64;
            next_source = at.wrapping_add(1);
        } else {
            next_source = u32::MAX;
        }
        table[slot] = (v, i);
    }
    saved.saturating_sub(starts * MATCH_COST)
}

/// Bits (in 1/256) a zstd match costs: offset, length and literal-length codes.
const MATCH_COST: u64 = 20 * 256;

/// [`repeated_words`]' hits, or more: the same 4096 slots keep a 16-bit tag of their word
/// (more bits of the same hash) instead of the word. A slot's tag is always the tag of the
/// word the word table holds there (both start from the word 0, whose tag is 0; a tag
/// miss is a word miss, and a word miss with an equal tag leaves the tag as it is), so
/// every word hit is a tag hit. Unequal words rarely share slot and tag (28 bits of the
/// hash), so the bound is close, and its table is 8 KiB to zero and to keep in cache, not
/// 32 KiB (zeroing the table of words was a third of the check on a 6 KiB K/V page).
fn repeated_tags(words: impl Iterator<Item = u64>) -> usize {
    const BITS: u32 = 12;
    let mut table = [0u16; 1 << BITS];
    let mut hits = 0usize;
    for v in words {
        let h = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let (slot, tag) = ((h >> (64 - BITS)) as usize, (h >> (64 - BITS - 16)) as u16);
        if table[slot] == tag {
            hits += 1;
        } else {
            table[slot] = tag;
        }
    }
    hits
}

/// Re-occurrences of words in a 4096-slot hash table (each slot keeps its last word).
fn repeated_words(words: impl Iterator<Item = u64>) -> usize {
    const BITS: u32 = 12;
    let mut table = [0u64; 1 << BITS];
    let mut hits = 0usize;
    for v in words {
        let slot = (v.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - BITS)) as usize;
        if table[slot] == v {
            hits += 1;
        } else {
            table[slot] = v;
        }
    }
    hits
}

fn varint_len(v: usize) -> usize {
    (usize::BITS - (v | 1).leading_zeros()).div_ceil(7) as usize
}

/// The frame checksum: 32 bits of xxh3 over the decoded bytes, chained into the coded
/// planes. The decoded bytes catch a wrong decode; the coded bytes catch corruption that
/// happens to decode right (padding bits, unused table entries), so every changed byte of
/// a container is an error. 32 bits keep tiny tensors' frames small; the whole-file hash
/// backs them up. `twox-hash` computes it because it picks AVX2 at run time (`xxhash-rust`
/// only uses what the build targets, SSE2): the checksums cost a tenth of a decode.
fn checksum(original: &[u8], coded_planes: &[u8]) -> u32 {
    use twox_hash::XxHash3_64;
    XxHash3_64::oneshot_with_seed(XxHash3_64::oneshot(original), coded_planes) as u32
}

/// Bytes that a frame of a `len`-byte chunk fits in: the raw coding (chosen whenever the
/// coders would not beat it), headers, and slack for the coders' size estimates, so that
/// [`encode_frame`] need not grow a buffer this large.
pub fn frame_capacity(len: usize) -> usize {
    len + len / 64 + 256
}

/// Encodes one chunk of `dtype` elements as a frame appended to `out`.
///
/// Every candidate layout is measured by the coders' size estimates and the smallest
/// kept; chunks that look repetitive also try zstd on the raw bytes.
pub fn encode_frame(
    chunk: &[u8],
    dtype: DType,
    opts: &FrameOptions,
    out: &mut Vec<u8>,
) -> FrameStats {
    SCRATCH.with(|s| {
        let s = &mut *s.borrow_mut();
        let candidates = if chunk.len() < 64 {
            // Per-plane headers outweigh any gain from splitting a few elements.
            &[Layout::Bytes][..]
        } else {
            Layout::candidates(dtype)
        };
        let chosen = choose_layout(chunk, dtype, candidates, opts, s);
        let layout = chosen.layout;
        if layout == Layout::Bytes {
            // The one plane is the chunk itself: no copy.
        } else if chosen.split_done {
            std::mem::swap(&mut s.planes, &mut s.best_planes);
        } else {
            layout.split_into(chunk, &mut s.best_planes);
        }
        let hists = &s.hists[chosen.hists];
        let floor_bytes = chosen.floor_bytes;
        let byte_hist = match layout {
            Layout::Bytes => hists.first(),
            _ => None,
        };
        let repetitive = match (chosen.sampled, byte_hist) {
            (true, Some(sample)) => sample_looks_repetitive_in(chunk, sample, &mut s.sample),
            _ => looks_repetitive(chunk, byte_hist),
        };
        if repetitive {
            if let Some(stats) = encode_zstd(chunk, opts, chosen.size, byte_hist, out) {
                return stats;
            }
        }
        let choices = &s.best_choices;
        let plane_refs: FixedVec<&[u8], MAX_PLANES> = match layout {
            Layout::Bytes => [chunk].into_iter().collect(),
            _ => s.best_planes[..choices.len()]
                .iter()
                .map(Vec::as_slice)
                .collect(),
        };
        s.payload.clear();
        let mut ends = FixedVec::<usize, MAX_PLANES>::new();
        for ((plane, choice), hist) in plane_refs.iter().zip(choices).zip(hists) {
            encode_plane(plane, hist, choice, &mut s.payload);
            ends.push(s.payload.len());
        }
        let payload = &s.payload;
        let parts: FixedVec<(Coder, &[u8]), MAX_PLANES> = choices
            .iter()
            .zip(&plane_refs)
            .enumerate()
            .map(|(i, (c, plane))| match c.coder {
                Coder::Raw => (c.coder, *plane),
                _ => (
                    c.coder,
                    &payload[if i == 0 { 0 } else { ends[i - 1] }..ends[i]],
                ),
            })
            .collect();
        write_frame(out, chunk, layout, &parts);
        FrameStats {
            layout,
            coders: choices.iter().map(|c| c.coder).collect(),
            floor_bytes,
        }
    })
}

/// Codes `chunk` with zstd as one frame if that beats `size` (the planes' estimate) by
/// more than the frame's extra bytes; `None` (nothing written) otherwise.
fn encode_zstd(
    chunk: &[u8],
    opts: &FrameOptions,
    size: usize,
    byte_hist: Option<&Histogram>,
    out: &mut Vec<u8>,
) -> Option<FrameStats> {
    let z = zstd::bulk::compress(chunk, opts.zstd_level).ok()?;
    if z.len() + 8 >= size {
        return None;
    }
    write_frame(out, chunk, Layout::Bytes, &[(Coder::Zstd, &z[..])]);
    let floor_bytes = match byte_hist {
        Some(h) => h.entropy_bytes(),
        None => Histogram::of(chunk).entropy_bytes(),
    };
    Some(FrameStats {
        layout: Layout::Bytes,
        coders: [Coder::Zstd].into_iter().collect(),
        floor_bytes,
    })
}

/// Chunks under this size prefer a split FP8 layout to the one byte plane unless the byte
/// plane is [`SMALL_BYTES_LAYOUT_MARGIN`] smaller: a page-sized frame's decode time is
/// mostly building its tables, and a ~180-symbol byte alphabet costs a full Huffman table
/// and one symbol per lookup, where the split's exponent plane decodes three or four per
/// lookup and its sign|mantissa plane is unpacked nibbles. On 16-token FP8 K/V pages the
/// two sizes are within 0.5 %; whole-file frames (256 KiB and up) are unaffected.
const SMALL_CHUNK_BYTES: usize = 64 << 10;
/// See [`SMALL_CHUNK_BYTES`].
const SMALL_BYTES_LAYOUT_MARGIN: f64 = 0.005;

/// A candidate layout's planes: their histograms (a range of `Scratch::hists`) and coder
/// bounds.
#[derive(Clone, Copy, Default)]
struct Trial {
    /// Index in the candidate list.
    index: usize,
    hists: (usize, usize),
    bounds: FixedVec<PlaneBounds, MAX_LAYOUT_PLANES>,
    /// Lower bound on the layout's (penalised) size.
    bound: f64,
    penalty: f64,
}

/// Most candidate layouts of a dtype ([`Layout::candidates`]).
const MAX_CANDIDATES: usize = 2;
/// Most planes of a layout the encoder uses (`ByteSplit(8)`): trials hold their bounds
/// inline, and are copied and sorted, so they are kept small.
const MAX_LAYOUT_PLANES: usize = 8;

/// A frame's size from its planes' payload sizes: each plane adds its coder byte and
/// its length varint.
fn planes_size(sizes: impl Iterator<Item = usize>) -> usize {
    sizes.map(|s| s + 1 + varint_len(s)).sum()
}

/// The layout [`choose_layout`] picked; its coder choices are in `Scratch::best_choices`.
struct Chosen {
    layout: Layout,
    /// Its planes' histograms, in `Scratch::hists`.
    hists: Range<usize>,
    /// Estimated size of its planes.
    size: usize,
    /// Whether `Scratch::planes` holds its split.
    split_done: bool,
    /// Order-0 entropy of its planes, in bytes ([`FrameStats::floor_bytes`]).
    floor_bytes: f64,
    /// Whether it was planned from [`Histogram::sampled`].
    sampled: bool,
}

/// The candidate layout whose planes code smallest by the coders' estimates, with its
/// coder choices (left in `s.best_choices`), plane histograms (in `s.hists`), estimated
/// size, and whether `s.planes` holds its split. Layouts whose planes derive from the byte
/// histogram are compared without splitting.
///
/// With several candidates (FP8, FP4), each layout's size is first bounded from below
/// (`PlaneBounds::chosen`), and layouts are evaluated cheapest bound first; one whose
/// bound cannot beat the best so far is skipped (a 256-symbol Huffman code is most of the
/// cost of a small FP8 frame). That gives the same choice as evaluating all: the smallest
/// (penalised) size, ties to the earlier candidate.
fn choose_layout(
    chunk: &[u8],
    dtype: DType,
    candidates: &[Layout],
    opts: &FrameOptions,
    s: &mut Scratch,
) -> Chosen {
    if dtype == DType::F4 && chunk.len() >= SAMPLED_MIN_SYMBOLS {
        if let Some(sampled) = Histogram::sampled(chunk) {
            let chosen = Chosen {
                sampled: true,
                ..choose_layout_with(chunk, dtype, candidates, opts, s, Some(sampled))
            };
            // Only rANS (which codes any symbol with a nonzero count) and raw take an
            // estimated histogram; anything else is chosen again on the exact one.
            let estimate_ok = s
                .best_choices
                .iter()
                .all(|c| matches!(c.coder, Coder::Rans | Coder::Raw));
            if estimate_ok {
                return chosen;
            }
        }
    }
    choose_layout_with(chunk, dtype, candidates, opts, s, None)
}

/// Planes at least this long may be planned from a sampled histogram
/// ([`Histogram::sampled`]): FP4 chunks (one byte plane; counting all of its bytes was a
/// quarter of FP4 encoding) and near-random mantissa planes ([`planning_histogram`]).
const SAMPLED_MIN_SYMBOLS: usize = 64 << 10;

/// [`choose_layout`], with the chunk's byte histogram given (`byte_hist`) or counted here.
fn choose_layout_with(
    chunk: &[u8],
    dtype: DType,
    candidates: &[Layout],
    opts: &FrameOptions,
    s: &mut Scratch,
    mut byte_hist: Option<Histogram>,
) -> Chosen {
    // FP4 chunks keep the coders they had (no nibble coder).
    let nibbles = dtype != DType::F4;
    let mut split: Option<Layout> = None;
    s.hists.clear();
    let mut trials = FixedVec::<Trial, MAX_CANDIDATES>::new();
    for (index, &layout) in candidates.iter().enumerate() {
        if !chunk.len().is_multiple_of(layout.unit()) {
            continue;
        }
        let start = s.hists.len();
        let derived = layout.derives_from_bytes()
            && layout.histograms_from_bytes_into(
                byte_hist.get_or_insert_with(|| Histogram::of(chunk)),
                &mut s.hists,
            );
        if !derived {
            let count = layout.split_into(chunk, &mut s.planes);
            split = Some(layout);
            s.hists
                .extend(s.planes[..count].iter().enumerate().map(|(i, p)| {
                    match layout.is_low_mantissa_plane(i) {
                        true => planning_histogram(p, opts),
                        false => Histogram::of(p),
                    }
                }));
        }
        trials.push(trial(
            chunk,
            dtype,
            candidates,
            index,
            (start, s.hists.len()),
            s,
            opts.small_planes,
        ));
    }
    if trials.len() > 1 {
        // Keys are distinct (the index breaks ties): unstable sorting is deterministic.
        trials.sort_unstable_by(|a, b| a.bound.total_cmp(&b.bound).then(a.index.cmp(&b.index)));
    }
    // (penalised size, candidate index) of the best so far, its trial and size.
    let mut best: Option<((f64, usize), &Trial, usize)> = None;
    for t in trials.iter() {
        if let Some((key, ..)) = &best {
            if (t.bound, t.index) > *key {
                continue;
            }
        }
        s.choices.clear();
        let hists = &s.hists[t.hists.0..t.hists.1];
        s.choices.extend(
            hists
                .iter()
                .zip(t.bounds.iter())
                .map(|(h, b)| choose_coder_bounded(h, opts, b)),
        );
        let size = planes_size(s.choices.iter().map(|c| c.size));
        let key = (size as f64 * t.penalty, t.index);
        if best.as_ref().is_none_or(|(k, ..)| key < *k) {
            best = Some((key, t, size));
            std::mem::swap(&mut s.choices, &mut s.best_choices);
        }
    }
    match best {
        Some((_, t, size)) => {
            let layout = candidates[t.index];
            Chosen {
                layout,
                hists: t.hists.0..t.hists.1,
                size,
                split_done: split == Some(layout),
                floor_bytes: t.bounds.iter().map(|b| b.entropy_bits / 8.0).sum(),
                sampled: false,
            }
        }
        None => {
            // No dtype layout fits this chunk's length (a ragged tail): code it as bytes.
            let h = byte_hist.unwrap_or_else(|| Histogram::of(chunk));
            let f4 = dtype == DType::F4;
            let bounds = PlaneBounds::new(&h, nibbles, f4, opts.small_planes);
            let c = choose_coder_bounded(&h, opts, &bounds);
            let size = c.size;
            let start = s.hists.len();
            s.hists.push(h);
            s.best_choices.clear();
            s.best_choices.push(c);
            Chosen {
                layout: Layout::Bytes,
                hists: start..start + 1,
                size,
                split_done: false,
                floor_bytes: bounds.entropy_bits / 8.0,
                sampled: false,
            }
        }
    }
}

/// The histogram a plane is planned with: its exact counts, or, for a long plane whose
/// sample ([`Histogram::sampled`]) shows that no coder can beat raw storage by
/// `opts.min_gain`, the scaled sample. Such planes (the low mantissa bytes of most floats)
/// are stored raw either way, and counting every byte of them was half the counting in
/// F16 and F32 encoding. The sample's entropy is biased low (by about 0.3 % on a 1/8 sample
/// of 64 Ki near-uniform bytes, with a spread far smaller), so where the sample's bound
/// says raw, the exact counts' bound says so too.
fn planning_histogram(plane: &[u8], opts: &FrameOptions) -> Histogram {
    if plane.len() >= SAMPLED_MIN_SYMBOLS && opts.min_gain > 0.0 {
        if let Some(sample) = Histogram::sampled(plane) {
            let bounds = PlaneBounds::new(&sample, true, false, opts.small_planes);
            if bounds.coded as f64 >= plane.len() as f64 * (1.0 - opts.min_gain) {
                return sample;
            }
        }
    }
    Histogram::of(plane)
}

/// The bounds of candidate `index`, whose planes' histograms are `s.hists[hists]`.
fn trial(
    chunk: &[u8],
    dtype: DType,
    candidates: &[Layout],
    index: usize,
    hists: (usize, usize),
    s: &Scratch,
    small: SmallPlanes,
) -> Trial {
    let layout = candidates[index];
    let nibbles = dtype != DType::F4;
    let fp4_bytes = dtype == DType::F4 && layout == Layout::Bytes;
    let planes = &s.hists[hists.0..hists.1];
    let bounds: FixedVec<PlaneBounds, MAX_LAYOUT_PLANES> = planes
        .iter()
        .map(|h| PlaneBounds::new(h, nibbles, fp4_bytes, small))
        .collect();
    let fp8_split = candidates
        .iter()
        .any(|l| matches!(l, Layout::E4m3ExpSm | Layout::E5m2ExpSm));
    let penalty = match fp8_split && layout == Layout::Bytes && chunk.len() < SMALL_CHUNK_BYTES {
        true => 1.0 + SMALL_BYTES_LAYOUT_MARGIN,
        false => 1.0,
    };
    let bound = planes_size(bounds.iter().zip(planes).map(|(b, h)| b.chosen(h))) as f64;
    Trial {
        index,
        hists,
        bounds,
        bound: bound * penalty,
        penalty,
    }
}

/// Appends one plane's payload to `out` (nothing for raw planes: they are copied from the
/// plane itself).
fn encode_plane(plane: &[u8], hist: &Histogram, choice: &PlaneChoice, out: &mut Vec<u8>) {
    match (choice.coder, &choice.rans) {
        (Coder::Raw, _) => {}
        (Coder::Constant, _) => out.push(plane[0]),
        (Coder::Huffman, _) => match &choice.huffman {
            Some(plan) => huffman::encode_planned(plane, hist, plan, out),
            None => huffman::encode(plane, hist, out),
        },
        (Coder::Nibble, _) => nibble::encode(plane, out),
        (Coder::Rans, Some(plan)) => rans::encode_planned(plane, plan, out),
        (Coder::Rans, None) => rans::encode(plane, hist, out),
        (Coder::Sparse, _) => sparse::encode(plane, hist, out),
        (Coder::Zstd, _) => unreachable!("zstd is chosen per chunk, not per plane"),
    }
}

/// Appends a frame for `chunk` with these coded planes to `out`, copying each payload once.
fn write_frame(out: &mut Vec<u8>, chunk: &[u8], layout: Layout, parts: &[(Coder, &[u8])]) {
    let mut head = FixedVec::<u8, 16>::new();
    head.push(layout.id());
    head.push(layout.param());
    head.extend(varint(chunk.len() as u64).iter().copied());
    head.extend([0; 4]); // the checksum, patched below
    let coded_len: usize = parts
        .iter()
        .map(|(_, p)| 1 + varint_len(p.len()) + p.len())
        .sum();
    out.reserve(10 + head.len() + coded_len);
    out.push(FRAME_TAG);
    put_varint(out, (head.len() + coded_len) as u64);
    out.extend_from_slice(&head);
    let coded_at = out.len();
    for (coder, payload) in parts {
        out.push(coder.id());
        put_varint(out, payload.len() as u64);
        out.extend_from_slice(payload);
    }
    let sum = checksum(chunk, &out[coded_at..]);
    out[coded_at - 4..coded_at].copy_from_slice(&sum.to_le_bytes());
}

/// The parsed start of a frame: enough to size the output before decoding.
#[derive(Debug, Clone, Copy)]
pub struct FrameHeader<'a> {
    /// Layout of the chunk.
    pub layout: Layout,
    /// Bytes the frame decodes to.
    pub original_len: usize,
    checksum: u32,
    planes: &'a [u8],
}

/// Reads the frame at the start of `buf`; returns its header and the frame's total length.
///
/// Validates sizes against [`MAX_CHUNK_BYTES`] before anything is allocated.
pub fn parse_frame(buf: &[u8]) -> Result<(FrameHeader<'_>, usize), FrameError> {
    let mut c = Cursor::new(buf);
    if c.u8() != Some(FRAME_TAG) {
        return Err(corrupt("missing frame tag"));
    }
    let body_len = c
        .varint()
        .ok_or_else(|| corrupt("truncated frame length"))?;
    if body_len > MAX_BODY_BYTES as u64 {
        return Err(corrupt(format!(
            "frame body of {body_len} bytes is over the limit"
        )));
    }
    let body = c
        .take(body_len as usize)
        .ok_or_else(|| corrupt("truncated frame body"))?;
    let total = c.position();
    let mut b = Cursor::new(body);
    let (id, param) = (b.u8(), b.u8());
    let (Some(id), Some(param)) = (id, param) else {
        return Err(corrupt("truncated frame header"));
    };
    let layout = Layout::from_id(id, param)
        .ok_or_else(|| corrupt(format!("unknown layout {id}/{param}")))?;
    let original_len = b
        .varint()
        .ok_or_else(|| corrupt("truncated chunk length"))?;
    if original_len > MAX_CHUNK_BYTES as u64 {
        return Err(corrupt(format!(
            "chunk of {original_len} bytes is over the limit"
        )));
    }
    let original_len = original_len as usize;
    if !original_len.is_multiple_of(layout.unit()) {
        return Err(corrupt("chunk length does not fit the layout"));
    }
    let checksum = b.u32_le().ok_or_else(|| corrupt("truncated checksum"))?;
    let planes = &body[b.position()..];
    Ok((
        FrameHeader {
            layout,
            original_len,
            checksum,
            planes,
        },
        total,
    ))
}

/// A frame's planes as stored: coder and payload of each.
type Parts<'a> = FixedVec<(Coder, &'a [u8]), MAX_PLANES>;

/// One plane as stored: its coder and payload.
fn plane_parts<'a>(h: &FrameHeader<'a>) -> Result<Parts<'a>, FrameError> {
    let mut c = Cursor::new(h.planes);
    let mut parts = Parts::new();
    while c.remaining() > 0 {
        if parts.len() >= MAX_PLANES {
            return Err(corrupt("too many planes"));
        }
        let coder = c
            .u8()
            .and_then(Coder::from_id)
            .ok_or_else(|| corrupt("unknown coder"))?;
        let len = c
            .varint()
            .ok_or_else(|| corrupt("truncated plane length"))?;
        let payload = usize::try_from(len)
            .ok()
            .and_then(|len| c.take(len))
            .ok_or_else(|| corrupt("plane payload past the frame end"))?;
        parts.push((coder, payload));
    }
    Ok(parts)
}

/// The coders of a frame's planes, for reports (`inspect`).
pub fn frame_coders(h: &FrameHeader<'_>) -> Result<Vec<Coder>, FrameError> {
    Ok(plane_parts(h)?.iter().map(|&(c, _)| c).collect())
}

/// One plane of a frame: its coder, its size as stored, and the histogram of the symbols
/// it codes (what the stored size is compared with).
#[derive(Debug, Clone)]
pub struct StoredPlane {
    /// The plane's coder.
    pub coder: Coder,
    /// Bytes the plane takes in the frame: coder byte, length and payload.
    pub stored_bytes: usize,
    /// Counts of the plane's symbols.
    pub histogram: Histogram,
}

/// Splits `chunk`, the original bytes of the frame `frame`, as the frame's layout does and
/// pairs each plane with its stored size: how close the coders come to each plane's
/// entropy (`bench`, and the tests that hold them to it). Returns the layout too. A frame
/// coded whole (zstd, or the bytes layout) is one plane.
pub fn stored_planes(frame: &[u8], chunk: &[u8]) -> Result<(Layout, Vec<StoredPlane>), FrameError> {
    let (h, _) = parse_frame(frame)?;
    if h.original_len != chunk.len() {
        return Err(corrupt("chunk size does not match the frame"));
    }
    let parts = plane_parts(&h)?;
    let mut planes = Vec::new();
    if h.layout != Layout::Bytes {
        h.layout.split(chunk, &mut planes);
    }
    if planes.len() != parts.len() {
        planes = vec![chunk.to_vec()];
    }
    let stored = planes
        .iter()
        .zip(&parts)
        .map(|(plane, &(coder, payload))| StoredPlane {
            coder,
            stored_bytes: 1 + varint_len(payload.len()) + payload.len(),
            histogram: Histogram::of(plane),
        })
        .collect();
    Ok((h.layout, stored))
}

/// Decodes a parsed frame into `out`, which must be `original_len` bytes long.
pub fn decode_frame(h: &FrameHeader<'_>, out: &mut [u8]) -> Result<(), FrameError> {
    if out.len() != h.original_len {
        return Err(corrupt("output size does not match the frame"));
    }
    let parts = plane_parts(h)?;
    if let [(Coder::Zstd, z)] = parts[..] {
        if h.layout != Layout::Bytes {
            return Err(corrupt("zstd frame with a plane layout"));
        }
        let n =
            zstd::bulk::decompress_to_buffer(z, out).map_err(|e| corrupt(format!("zstd: {e}")))?;
        if n != out.len() {
            return Err(corrupt("zstd payload decodes to the wrong length"));
        }
    } else {
        decode_planes(h, &parts, out)?;
    }
    if checksum(out, h.planes) != h.checksum {
        return Err(FrameError::Checksum);
    }
    Ok(())
}

fn decode_planes(
    h: &FrameHeader<'_>,
    parts: &[(Coder, &[u8])],
    out: &mut [u8],
) -> Result<(), FrameError> {
    let lens = h.layout.plane_lens(h.original_len);
    if parts.len() != lens.count {
        return Err(corrupt("wrong number of planes for the layout"));
    }
    for (coder, payload) in parts {
        if *coder == Coder::Raw && payload.len() != lens.symbols {
            return Err(corrupt("raw plane of the wrong length"));
        }
    }
    // One byte plane (FP8 and other bytes coded whole): decode straight into the output,
    // without a scratch plane and the copy out of it.
    if let (Layout::Bytes, [(coder, payload)]) = (h.layout, parts) {
        if *coder == Coder::Raw {
            out.copy_from_slice(payload);
            return Ok(());
        }
        return decode_plane(*coder, payload, out);
    }
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        // Grown, never shrunk: the planes' buffers are kept for the next frame.
        if s.planes.len() < lens.count {
            s.planes.resize_with(lens.count, Vec::new);
        }
        let planes = &mut s.planes[..lens.count];
        if let Some(done) = decode_interleaved(h.layout, parts, planes, out)? {
            // The rANS decoder wrote the first `done` elements; merge the rest.
            let refs: FixedVec<&[u8], MAX_PLANES> = parts
                .iter()
                .zip(planes.iter())
                .map(|((coder, payload), plane)| match coder {
                    Coder::Raw => &payload[done..],
                    _ => &plane[done..],
                })
                .collect();
            h.layout.merge(&refs, &mut out[2 * done..]);
            return Ok(());
        }
        for ((coder, payload), plane) in parts.iter().zip(planes.iter_mut()) {
            if *coder != Coder::Raw {
                // Every decoder writes all of its plane (or fails): no need to clear it.
                plane.resize(lens.symbols, 0);
                decode_plane(*coder, payload, plane)?;
            }
        }
        // Raw planes are merged straight from the frame, without a copy.
        let refs: FixedVec<&[u8], MAX_PLANES> = parts
            .iter()
            .zip(planes.iter())
            .map(|((coder, payload), plane)| {
                if *coder == Coder::Raw {
                    *payload
                } else {
                    plane.as_slice()
                }
            })
            .collect();
        h.layout.merge(&refs, out);
        Ok(())
    })
}

/// Decodes a two-byte layout whose planes are one rANS plane and one raw plane with the
/// rANS decoder writing the elements itself ([`rans::decode_interleaved`]); returns how many
/// leading elements it wrote (the rest of the rANS plane is in `planes`), or `None` when the
/// frame is not of that shape. Raw plane lengths are checked by the caller.
fn decode_interleaved(
    layout: Layout,
    parts: &[(Coder, &[u8])],
    planes: &mut [Vec<u8>],
    out: &mut [u8],
) -> Result<Option<usize>, FrameError> {
    // Element = (other & high) << 8 | other & low | symbol << shift, by which plane is rANS.
    let (rans_plane, other, high, low, shift) = match (layout, parts) {
        (Layout::Bf16ExpSm, [(Coder::Rans, _), (Coder::Raw, sm)]) => (0, sm, 0x80, 0x7f, 7),
        (Layout::F16HiLo, [(Coder::Raw, lo), (Coder::Rans, _)]) => (1, lo, 0, 0xff, 8),
        (Layout::F16HiLo, [(Coder::Rans, _), (Coder::Raw, hi)]) => (0, hi, 0xff, 0, 0),
        _ => return Ok(None),
    };
    let plane = &mut planes[rans_plane];
    plane.resize(other.len(), 0);
    let mut with = rans::Interleave {
        other,
        high,
        low,
        shift,
        out,
    };
    rans::decode_interleaved(parts[rans_plane].1, plane, &mut with)
        .map(Some)
        .map_err(|e| corrupt(e.to_string()))
}

fn decode_plane(coder: Coder, payload: &[u8], plane: &mut [u8]) -> Result<(), FrameError> {
    match coder {
        Coder::Raw => unreachable!("raw planes are not decoded"),
        Coder::Constant => match payload {
            [b] => plane.fill(*b),
            _ => return Err(corrupt("constant plane payload is not one byte")),
        },
        Coder::Huffman => huffman::decode(payload, plane).map_err(|e| corrupt(e.to_string()))?,
        Coder::Rans => rans::decode(payload, plane).map_err(|e| corrupt(e.to_string()))?,
        Coder::Sparse => sparse::decode(payload, plane).map_err(|e| corrupt(e.to_string()))?,
        Coder::Nibble => nibble::decode(payload, plane).map_err(|e| corrupt(e.to_string()))?,
        Coder::Zstd => return Err(corrupt("zstd plane inside a multi-plane frame")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(chunk: &[u8], dtype: DType) -> FrameStats {
        let mut out = Vec::new();
        let stats = encode_frame(chunk, dtype, &FrameOptions::default(), &mut out);
        let (h, len) = parse_frame(&out).expect("parse");
        assert_eq!(len, out.len());
        let mut dec = vec![0u8; h.original_len];
        decode_frame(&h, &mut dec).expect("decode");
        assert_eq!(dec, chunk);
        stats
    }

    /// A 64-bit LCG from `seed` (Knuth's MMIX constants): each call returns the next state,
    /// whose high bits the tests take.
    fn lcg(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x
        }
    }

    /// The coder choice as it was made before the lower-bound shortcuts (and without the
    /// nibble coder): every coder's estimate worked out in full.
    fn choose_coder_reference(hist: &Histogram, opts: &FrameOptions) -> (Coder, usize) {
        if hist.total == 0 {
            return (Coder::Raw, 0);
        }
        if hist.single_symbol().is_some() {
            return (Coder::Constant, 1);
        }
        let raw = hist.total;
        let h = huffman::encoded_size(hist);
        let Some(plan) = rans::plan(hist, opts.small_planes) else {
            return (Coder::Huffman, h);
        };
        let r = plan.encoded_size();
        let huffman_fast = h * 8 < HUFFMAN_FAST_BELOW_BITS * hist.total;
        let margin = match huffman_fast || !plan.decodes_wide() {
            true => speed_margin(opts, hist, hist.entropy_bits(), h),
            false => 0.0,
        };
        let mut best = if ((r + 8) as f64) < h as f64 * (1.0 - margin) {
            (Coder::Rans, r)
        } else {
            (Coder::Huffman, h)
        };
        if let Some(size) = sparse::encoded_size(hist) {
            if size < best.1 {
                best = (Coder::Sparse, size);
            }
        }
        if (best.1 as f64) < raw as f64 * (1.0 - opts.min_gain) {
            best
        } else {
            (Coder::Raw, raw)
        }
    }

    /// Planes of many shapes: skewed exponents, near-uniform bytes and nibbles, sparse
    /// deltas, tiny and large.
    fn test_planes() -> Vec<Vec<u8>> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let mut planes = Vec::new();
        for len in [2usize, 17, 300, 2047, 2048, 6144, 40_000, 300_000] {
            for kind in 0..7 {
                let plane: Vec<u8> = (0..len)
                    .map(|_| {
                        let r = next();
                        match kind {
                            0 => r as u8,
                            1 => (r % 16) as u8,
                            2 => (120 + (r % 7) as i64 - ((r >> 8) % 5) as i64) as u8,
                            3 => (r.trailing_zeros().min(30) + 100) as u8,
                            4 => {
                                if r % 97 == 0 {
                                    (r >> 8) as u8
                                } else {
                                    0
                                }
                            }
                            5 => {
                                if r % 3 == 0 {
                                    (r >> 8) as u8
                                } else {
                                    7
                                }
                            }
                            _ => ((r % 16) as u8).min(((r >> 8) % 16) as u8),
                        }
                    })
                    .collect();
                planes.push(plane);
            }
        }
        planes
    }

    #[test]
    fn coder_choice_matches_full_evaluation() {
        for opts in [
            FrameOptions::default(),
            FrameOptions::smallest(),
            FrameOptions {
                min_gain: 0.05,
                rans_min_gain: 0.02,
                ..FrameOptions::default()
            },
            FrameOptions {
                small_planes: SmallPlanes::Fast,
                ..FrameOptions::default()
            },
        ] {
            for plane in test_planes() {
                let hist = Histogram::of(&plane);
                let want = choose_coder_reference(&hist, &opts);
                let got = choose_coder(&hist, &opts, false);
                assert_eq!((got.coder, got.size), want, "{hist:?}");
                // With nibbles allowed, the only change is nibbles where no larger.
                let got = choose_coder(&hist, &opts, true);
                if got.coder == Coder::Nibble {
                    assert!(got.size <= want.1);
                    assert_eq!(Some(got.size), nibble::encoded_size(&hist));
                } else {
                    assert_eq!((got.coder, got.size), want, "{hist:?}");
                }
            }
        }
    }

    /// `choose_layout` without the bounds: every candidate evaluated in order.
    fn choose_layout_reference(chunk: &[u8], dtype: DType) -> (Layout, usize) {
        let candidates = Layout::candidates(dtype);
        let nibbles = dtype != DType::F4;
        let fp8 = matches!(dtype, DType::F8_E4M3 | DType::F8_E5M2);
        let mut best: Option<((f64, usize), Layout, usize)> = None;
        for (index, &layout) in candidates.iter().enumerate() {
            if !chunk.len().is_multiple_of(layout.unit()) {
                continue;
            }
            let mut planes = Vec::new();
            layout.split(chunk, &mut planes);
            let opts = FrameOptions::default();
            // FP4 bytes also weigh nibble-product rANS tables, which the bounds never prune.
            let fp4_bytes = dtype == DType::F4 && layout == Layout::Bytes;
            let size = planes_size(planes.iter().map(|p| {
                let h = Histogram::of(p);
                match fp4_bytes {
                    true => {
                        let small = opts.small_planes;
                        choose_coder_bounded(&h, &opts, &PlaneBounds::new(&h, false, true, small))
                            .size
                    }
                    false => choose_coder(&h, &opts, nibbles).size,
                }
            }));
            let penalty = match fp8 && layout == Layout::Bytes && chunk.len() < SMALL_CHUNK_BYTES {
                true => 1.0 + SMALL_BYTES_LAYOUT_MARGIN,
                false => 1.0,
            };
            let key = (size as f64 * penalty, index);
            if best.is_none_or(|(k, ..)| key < k) {
                best = Some((key, layout, size));
            }
        }
        best.map_or((Layout::Bytes, usize::MAX), |(_, l, s)| (l, s))
    }

    /// Long low-mantissa planes whose sample shows that no coder beats raw storage are
    /// planned from the sample (and stored raw); others are counted exactly.
    #[test]
    fn noise_planes_are_planned_from_their_sample() {
        let mut lcg_next = lcg(7);
        let mut next = move || (lcg_next() >> 33) as u8;
        let n = 128 << 10;
        let noise: Vec<u8> = (0..n).map(|_| next()).collect();
        // Every byte value occurs (one in eight is noise), but a few dominate: codable.
        let skewed: Vec<u8> = (0..n)
            .map(|_| match next() % 8 {
                0 => next(),
                _ => next() & 0x0f,
            })
            .collect();
        let opts = FrameOptions::default();
        let exact = Histogram::of(&noise);
        let planned = planning_histogram(&noise, &opts);
        assert_eq!(planned.total, n);
        assert_ne!(
            planned.counts, exact.counts,
            "noise is planned from its sample"
        );
        let exact_of =
            |p: &[u8], o: &FrameOptions| planning_histogram(p, o).counts == Histogram::of(p).counts;
        assert!(exact_of(&skewed, &opts), "a codable plane is counted");
        assert!(exact_of(&noise[..SAMPLED_MIN_SYMBOLS - 1], &opts), "short");
        assert!(exact_of(&noise, &FrameOptions::smallest()), "no raw margin");
        // Through a frame: F16 with noise low bytes stores them raw, its high bytes coded.
        let chunk: Vec<u8> = noise
            .iter()
            .zip(&skewed)
            .flat_map(|(&lo, &hi)| [lo, hi])
            .collect();
        let stats = round_trip(&chunk, DType::F16);
        assert_eq!(stats.layout, Layout::F16HiLo);
        assert_eq!(stats.coders[0], Coder::Raw);
        assert_ne!(stats.coders[1], Coder::Raw);
    }

    #[test]
    fn layout_choice_matches_full_evaluation() {
        let mut lcg_next = lcg(99);
        let mut next = move || lcg_next() >> 24;
        let mut seen = std::collections::HashSet::new();
        for len in [64usize, 1000, 6144, 20_000, 70_000] {
            for kind in 0..5 {
                let chunk: Vec<u8> = (0..len)
                    .map(|_| {
                        let r = next();
                        let exp = 7 - (r >> 20).trailing_zeros().min(6) as u8;
                        match kind {
                            // FP8-like: skewed exponent, uniform or skewed mantissa.
                            0 => (r as u8 & 0x80) | exp << 3 | (r >> 8) as u8 & 7,
                            1 => exp << 3 | ((r >> 8) as u8 & 7).min((r >> 11) as u8 & 7),
                            2 => r as u8,
                            3 => (r % 5) as u8 * 17,
                            _ => [0x38u8, 0x39, 0xb8, 0x40][(r % 4) as usize],
                        }
                    })
                    .collect();
                for dtype in [DType::F8_E4M3, DType::F8_E5M2, DType::F4, DType::BF16] {
                    let mut scratch = Scratch::default();
                    let Chosen { layout, size, .. } = choose_layout(
                        &chunk,
                        dtype,
                        Layout::candidates(dtype),
                        &FrameOptions::default(),
                        &mut scratch,
                    );
                    assert_eq!(
                        (layout, size),
                        choose_layout_reference(&chunk, dtype),
                        "{dtype:?} kind {kind} len {len}"
                    );
                    seen.insert(layout);
                }
            }
        }
        // The chunks exercise both outcomes of the FP8 choice.
        assert!(seen.contains(&Layout::Bytes) && seen.contains(&Layout::E4m3ExpSm));
    }

    #[test]
    fn coder_bounds_are_below_estimates() {
        for plane in test_planes() {
            let hist = Histogram::of(&plane);
            if hist.distinct() < 2 {
                continue;
            }
            let lb = hist.entropy_bits_lower_bound();
            assert!(huffman::encoded_size_bound(&hist, lb) <= huffman::encoded_size(&hist));
            let small = SmallPlanes::Compact;
            let (any, wide) = rans::encoded_size_bound(&hist, lb, small);
            let plan = rans::plan(&hist, small).expect("two symbols");
            assert!(any <= plan.encoded_size());
            if plan.decodes_wide() {
                assert!(wide <= plan.encoded_size());
            }
        }
    }

    #[test]
    fn planned_huffman_matches_huffman_encode() {
        for plane in test_planes() {
            let hist = Histogram::of(&plane);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            huffman::encode(&plane, &hist, &mut a);
            huffman::encode_planned(&plane, &hist, &huffman::plan(&hist), &mut b);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn fp8_sign_mantissa_planes_use_nibbles() {
        // E4M3 with a skewed exponent and a uniform sign|mantissa: the split layout's
        // second plane is nibbles.
        let mut next = lcg(12345);
        let chunk: Vec<u8> = (0..6144)
            .map(|_| {
                let x = next();
                let exp = 7 - ((x >> 40).trailing_zeros().min(6) as u8);
                ((x >> 20) as u8 & 0x80) | exp << 3 | (x >> 30) as u8 & 7
            })
            .collect();
        let s = round_trip(&chunk, DType::F8_E4M3);
        assert_eq!(s.layout, Layout::E4m3ExpSm);
        assert_eq!(s.coders[1], Coder::Nibble);
        // Odd lengths too (the last byte's high nibble is padding).
        let s = round_trip(&chunk[..6143], DType::F8_E4M3);
        assert_eq!(s.coders[1], Coder::Nibble);
    }

    #[test]
    fn fp4_codes_never_use_nibbles() {
        let chunk: Vec<u8> = (0..8192u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect();
        let s = round_trip(&chunk, DType::F4);
        assert!(!s.coders.contains(&Coder::Nibble));
    }

    #[test]
    fn constant_and_empty_chunks() {
        let s = round_trip(&[0u8; 4096], DType::BF16);
        assert_eq!(&*s.coders, &[Coder::Constant, Coder::Constant]);
        round_trip(&[], DType::F32);
        round_trip(&[1, 2, 3], DType::BF16); // ragged: falls back to bytes
    }

    #[test]
    fn repetitive_chunks_use_zstd() {
        let row: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let chunk: Vec<u8> = row.iter().cycle().take(row.len() * 16).copied().collect();
        assert!(looks_repetitive(&chunk, None));
        let s = round_trip(&chunk, DType::BF16);
        assert_eq!(&*s.coders, &[Coder::Zstd]);
    }

    #[test]
    fn checksum_is_xxh3_64_chained() {
        // The frame format fixes the checksum as xxh3-64; whichever crate computes it must
        // agree with the reference implementation on every input size class.
        use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};
        for len in [0usize, 1, 3, 16, 17, 128, 129, 240, 241, 1024, 100_000] {
            let a: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let b: Vec<u8> = (0..len / 2 + 5).map(|i| (i * 17 + 3) as u8).collect();
            let want = xxh3_64_with_seed(&b, xxh3_64(&a)) as u32;
            assert_eq!(checksum(&a, &b), want, "len {len}");
        }
    }

    #[test]
    fn whole_file_xxh3_128_streamed_matches_the_reference() {
        // Containers record the file's xxh3-128 (written by `xxhash-rust` before); the
        // streaming hasher must give the same value however the bytes are cut.
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for piece in [1usize, 7, 64, 1000, 65_536, 300_000] {
            let mut h = twox_hash::XxHash3_128::new();
            data.chunks(piece).for_each(|c| h.write(c));
            assert_eq!(
                h.finish_128(),
                xxhash_rust::xxh3::xxh3_128(&data),
                "piece {piece}"
            );
        }
    }

    #[test]
    fn tag_hits_bound_word_hits() {
        let mut lcg_next = lcg(77);
        let mut next = move || lcg_next() >> 16;
        for len in [0usize, 8, 504, 512, 6144, 12_288, 40_000, 262_144] {
            for kind in 0..6 {
                let chunk: Vec<u8> = (0..len)
                    .map(|i| match kind {
                        // Noise; zero words among noise; a few byte values; rows repeating
                        // every 4 KiB; two-valued bytes; FP8-like skewed bytes.
                        0 => next() as u8,
                        1 if i % 96 < 8 => 0,
                        1 => next() as u8,
                        2 => (next() % 3) as u8,
                        3 => (i % 4096).wrapping_mul(2654435761) as u8 ^ (i / 4096 % 2) as u8,
                        4 => (next() % 2) as u8 * 0x80,
                        _ => 0x38 + (next() % 4) as u8 + (next() % 2) as u8 * 0x80,
                    })
                    .collect();
                let words = chunk
                    .chunks_exact(8)
                    .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")));
                let hits = repeated_words(words.clone());
                let tags = repeated_tags(words);
                // At least as many, and close enough to rule chunks out.
                let close = hits + len / 8 / 256 + 4;
                assert!(
                    tags >= hits && tags <= close,
                    "{len} {kind}: {tags} vs {hits}"
                );
            }
        }
    }

    #[test]
    fn chance_repeats_of_low_entropy_bytes_are_not_repetitive() {
        // Block scales: independent bytes, mostly one of three values. Their words repeat
        // by chance, which order-0 coding already exploits.
        let mut x = 0x1234_5678u32;
        let scales: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                match x % 100 {
                    0..=79 => 0x7f,
                    80..=94 => 0x7e,
                    _ => 0x7d + (x % 7) as u8,
                }
            })
            .collect();
        assert!(!looks_repetitive(&scales, None));
        // Half zero padding, half noise: repeats beyond what the byte histogram explains.
        let mut padded = scales
            .iter()
            .map(|b| b.wrapping_mul(97))
            .collect::<Vec<u8>>();
        padded[..32768].fill(0);
        assert!(looks_repetitive(&padded, None));
    }

    #[test]
    fn the_sampled_repeat_check_finds_padding_and_copies_not_noise() {
        let noise = fp4_chunk(256 * 1024, 7);
        let sampled = |c: &[u8]| sample_looks_repetitive(c, &Histogram::sampled(c).unwrap());
        assert!(!sampled(&noise));
        // Rows of 3 KiB whose last KiB is zero padding: the padding straddles the sampled
        // KiBs at every offset.
        let mut padded = noise.clone();
        for row in padded.chunks_mut(3072) {
            let pad = row.len() * 2 / 3;
            row[pad..].fill(0);
        }
        assert!(sampled(&padded));
        // The second half a copy of the first, at a distance that is no multiple of 1 KiB.
        let mut copied = noise.clone();
        let (half, shift) = (noise.len() / 2, 1000);
        copied.copy_within(shift..shift + half - 8, half);
        assert!(sampled(&copied));
        // The encoder takes zstd for the copy (planned from the sample: a long FP4 chunk).
        let s = round_trip(&copied, DType::F4);
        assert_eq!(&*s.coders, &[Coder::Zstd]);
    }

    /// Packed FP4 bytes: two codes of rounded Gaussian-like values per byte; with an even
    /// seed, the two codes of a byte are often equal (the full byte table then pays).
    fn fp4_chunk(len: usize, seed: u32) -> Vec<u8> {
        let correlated = seed.is_multiple_of(2);
        let mut x = seed | 1;
        let mut code = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Magnitudes 0..7 falling off, sign at random.
            let m = [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 1, 2, 3][(x >> 8) as usize % 16];
            m | ((x >> 3) & 8) as u8
        };
        (0..len)
            .map(|i| {
                let lo = code();
                let hi = code();
                let hi = if correlated && i.is_multiple_of(2) {
                    lo
                } else {
                    hi
                };
                lo | hi << 4
            })
            .collect()
    }

    #[test]
    fn fp4_chunks_code_as_bytes_with_either_table() {
        for (len, seed) in [(64, 1), (65, 2), (4097, 3), (73_727, 5), (262_143, 6)] {
            let chunk = fp4_chunk(len, seed);
            let s = round_trip(&chunk, DType::F4);
            assert_eq!(s.layout, Layout::Bytes);
            let mut out = Vec::new();
            encode_frame(&chunk, DType::F4, &FrameOptions::default(), &mut out);
            let (h, _) = parse_frame(&out).expect("parse");
            let parts = plane_parts(&h).expect("parts");
            if len >= 4097 {
                assert_eq!(parts[0].0, Coder::Rans);
                // Small chunks take the nibble tables, large ones the full table.
                let kind = parts[0].1[0] & 3;
                assert_eq!(kind, if len < 100_000 { 3 } else { 2 }, "len {len}");
            }
        }
        // Edge values: all codes, both signs, zero and the largest.
        let all: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        round_trip(&all, DType::F4);
        round_trip(&[0x77; 100], DType::F4);
        round_trip(&[0x0f, 0xf0, 0x88, 0x08], DType::F4);
    }

    #[test]
    fn fp4_code_frames_of_earlier_encoders_still_decode() {
        // What the encoder wrote before FP4 was coded as bytes: one plane of nibble codes.
        let chunk = fp4_chunk(10_001, 9);
        let mut planes = Vec::new();
        Layout::Fp4Codes.split(&chunk, &mut planes);
        let mut payload = Vec::new();
        rans::encode(&planes[0], &Histogram::of(&planes[0]), &mut payload);
        let mut out = Vec::new();
        write_frame(
            &mut out,
            &chunk,
            Layout::Fp4Codes,
            &[(Coder::Rans, &payload)],
        );
        let (h, _) = parse_frame(&out).expect("parse");
        assert_eq!(h.layout, Layout::Fp4Codes);
        let mut dec = vec![0u8; h.original_len];
        decode_frame(&h, &mut dec).expect("decode");
        assert_eq!(dec, chunk);
    }

    #[test]
    fn checksum_catches_a_changed_raw_byte() {
        let chunk: Vec<u8> = (0..2000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let mut out = Vec::new();
        encode_frame(&chunk, DType::U8, &FrameOptions::default(), &mut out);
        let last = out.len() - 1;
        out[last] ^= 1;
        let (h, _) = parse_frame(&out).expect("parse");
        let mut dec = vec![0u8; h.original_len];
        assert!(decode_frame(&h, &mut dec).is_err());
    }
}
