//! Interleaved rANS coder (order 0, byte alphabet).
//!
//! Used where Huffman's whole-bit code lengths waste: skewed planes (block scales, XOR deltas of
//! checkpoints, far under 1 bit/symbol) and small near-uniform alphabets (FP4 codes).
//!
//! Stream layout (exactly what [`encode`] appends):
//! - an empty plane is an empty stream;
//! - a constant plane is `[KIND_CONSTANT, symbol]`;
//! - otherwise a tag byte (bits 0-1 `KIND_RANS`, bits 2-3 the lane count as an index into
//!   `LANE_COUNTS` (1, 8, 32, 64), bits 4-7 the probability precision minus one), the frequency table (symbol set as runs or as a list,
//!   then the frequencies bit-packed, the last one implied), the 16-bit renormalisation words in
//!   the order the encoder emitted them (the decoder reads them backwards, so nothing is ever
//!   reversed), then each lane's final state as u32 LE;
//! - or the same with bits 0-1 `KIND_RANS_NIBBLES`: instead of one table of byte frequencies,
//!   a count byte and one or two tables of 4-bit symbols (one for both nibbles, or the low
//!   nibble's then the high nibble's, each at the stream's precision), whose product gives the byte frequencies (see [`nibble_product`]). Packed
//!   FP4 bytes hold two near-independent codes: the product models them as well as a full
//!   256-entry table does, in 30 bytes instead of 200, so small FP4 planes can be coded as
//!   bytes (half the symbols of coding the codes one by one) without paying a big table;
//! - or the same as `KIND_RANS` with bits 0-1 `KIND_RANS_FEW_LANES` (0), whose lane code
//!   indexes `FEW_LANE_COUNTS` (2, 4): small planes, added after the tag's lane code was full.
//!
//! States are 32-bit in `[2^16, 2^32)` with 16-bit renormalisation (ryg_rans "rans_word"): a
//! decode step reads at most one word, so the hot loop is branch-free. Symbol `i` belongs to lane
//! `i % lanes`; the lanes are independent dependency chains, which is what makes decoding fast.
//! Precision is 12 bits (decode table in L1) unless 14 or 16 save real bytes on a skewed plane;
//! lanes are 64 (four AVX-512 or eight AVX2 vectors: the decoder gathers slot entries, see
//! `simd`), or 32 / 8 / 4 / 2 / 1 when the payload is so small that the flushed states would
//! show.

use super::{CorruptStream, Histogram};
use crate::fixed::FixedVec;

/// Bottom of the normalised state interval `[2^16, 2^32)`; every lane starts (and so must end
/// decoding) exactly here, which catches most corruptions for free.
const STATE_LOW: u32 = 1 << 16;
/// Largest precision: the scale must divide `STATE_LOW` for one word to always renormalise.
const MAX_PRECISION: u32 = 16;
/// Precision used unless a finer one pays for itself: the 2^12-slot decode table (20 KiB)
/// stays in L1.
const FAST_PRECISION: u32 = 12;
/// Higher precisions tried for skewed planes, where the rare symbols' minimum share is the loss.
const FINE_PRECISIONS: [u32; 2] = [14, MAX_PRECISION];
/// Fraction of the size each extra bit of precision must save: finer tables no longer fit in
/// L1 and need a second gather (the symbols apart from the entries), so a few tenths of a
/// percent on a large plane are not worth it; skewed planes gain far more.
const FINE_PRECISION_MIN_GAIN: f64 = 0.005;
/// Lane counts by the tag's lane code (bits 2-3).
const LANE_COUNTS: [usize; 4] = [1, 8, NARROW_SIMD_LANES, WIDE_LANES];
/// Lane counts of a `KIND_RANS_FEW_LANES` stream by its lane code (codes 2 and 3 are invalid).
const FEW_LANE_COUNTS: [usize; 2] = [2, 4];
/// Lanes for large planes: four AVX-512 vectors of sixteen, enough independent chains to hide
/// most of the SIMD decode step's latency (a table gather, the multiply, the refill expand).
/// With 32 lanes, BF16 frames decoded about 20% slower; the 96 more flushed bytes cost under
/// 0.3% of the payloads that get 64 lanes.
const WIDE_LANES: usize = 64;
/// Lanes for mid-sized payloads (e.g. the exponents of an F32 chunk), still SIMD-decoded: two
/// AVX-512 or four AVX2 vectors.
const NARROW_SIMD_LANES: usize = 32;
/// Each lane flushes its state (about 3 bytes more than its information), so payloads under
/// this many bytes use 32 lanes: 64 flushed states stay under 0.6% of the payload.
const NARROW_LANES_BELOW_BYTES: f64 = 32768.0;
/// Payloads under this many bytes use eight lanes (32 flushed states would pass 0.6%).
const EIGHT_LANES_BELOW_BYTES: f64 = 16384.0;
/// Payloads under this many bytes use four lanes: eight flushed states (about 24 bytes over
/// their information) would pass 0.3%.
const FOUR_LANES_BELOW_BYTES: f64 = 8192.0;
/// Payloads under this many bytes use two lanes. Block scales of a layer (a few KB) come
/// here: four flushed states plus the table would pass 1% of them. Two lanes decode about
/// 1.8x slower a symbol than eight, on planes that are a few hundredths of a file.
const TWO_LANES_BELOW_BYTES: f64 = 4096.0;
/// Payloads under this many bytes use one lane. On a large plane that means one symbol
/// dominates, which the one-lane decoder has a fast path for.
const ONE_LANE_BELOW_BYTES: f64 = 512.0;
/// Coarser precisions are tried when the table is more than 1/this of the stream.
const COARSE_TABLE_SHARE: usize = 100;
/// Caps the frequency exchange search; it normally stops after a handful of moves.
const MAX_EXCHANGES: usize = 4096;

/// A byte-table rANS stream with two or four lanes (`FEW_LANE_COUNTS`). Its own kind
/// because `LANE_COUNTS` already filled the tag's lane code when small planes needed them;
/// streams written before it decode as they did.
const KIND_RANS_FEW_LANES: u8 = 0;
const KIND_CONSTANT: u8 = 1;
const KIND_RANS: u8 = 2;
/// A rANS stream whose byte frequencies are the product of two nibble tables.
const KIND_RANS_NIBBLES: u8 = 3;

/// Whether the tag is that of a rANS stream (any table form or lane set).
fn is_rans(tag: u8) -> bool {
    matches!(tag & 3, KIND_RANS | KIND_RANS_NIBBLES | KIND_RANS_FEW_LANES)
}

/// The lane count a rANS tag says; `None` for a lane code its kind does not have.
fn tag_lanes(tag: u8) -> Option<usize> {
    let code = ((tag >> 2) & 3) as usize;
    match tag & 3 {
        KIND_RANS_FEW_LANES => FEW_LANE_COUNTS.get(code).copied(),
        _ => Some(LANE_COUNTS[code]),
    }
}

fn corrupt(reason: &'static str) -> CorruptStream {
    CorruptStream {
        coder: "rans",
        reason,
    }
}

/// Size in bytes that [`encode`] will append for a plane with this histogram.
///
/// Exact for the header and tables, an estimate for the coded words (within about 0.2% plus a
/// few bytes for the lanes' flushed states); costs O(256), never a pass over the symbols.
pub fn encoded_size(hist: &Histogram) -> usize {
    match hist.distinct() {
        0 => 0,
        1 => 2,
        _ => Plan::new(hist, SmallPlanes::Compact).encoded_size(),
    }
}

/// Appends a self-contained stream (frequency table and coded words) coding `symbols`.
///
/// `hist` must be `Histogram::of(symbols)`; a mismatching one gives a stream that fails to
/// decode, never a panic or undefined behaviour.
pub fn encode(symbols: &[u8], hist: &Histogram, out: &mut Vec<u8>) {
    debug_assert!(hist.total == symbols.len());
    match hist.distinct() {
        0 => {}
        1 => out.extend_from_slice(&[KIND_CONSTANT, symbols.first().copied().unwrap_or(0)]),
        _ => encode_plan(symbols, &Plan::new(hist, SmallPlanes::Compact), out),
    }
}

/// Elements the decoder writes directly, interleaving each decoded symbol with a byte of
/// another plane: element `i` is the little-endian `u16`
/// `(other[i] & high) << 8 | other[i] & low | symbol << shift`.
///
/// This saves a pass over the plane for two-byte layouts whose other plane is stored raw
/// (BF16: `high = 0x80, low = 0x7f, shift = 7`; F16: `0, 0xff, 8` or `0xff, 0, 0`).
pub struct Interleave<'a> {
    /// The other plane, as long as the decoded one.
    pub other: &'a [u8],
    /// Mask of `other`'s bits moved to the element's high byte.
    pub high: u8,
    /// Mask of `other`'s bits kept in the low byte.
    pub low: u8,
    /// Left shift of the symbol (at most 8).
    pub shift: u32,
    /// The elements, two bytes per symbol.
    pub out: &'a mut [u8],
}

/// [`decode`] that may also write leading elements of `with.out` directly: returns `n` such
/// that elements `0..n` are written to `with.out` (symbols `0..n` of `out` are then left
/// as they were) and symbols `n..` to `out`. `n` is 0 unless a SIMD decoder ran.
pub fn decode_interleaved(
    input: &[u8],
    out: &mut [u8],
    with: &mut Interleave<'_>,
) -> Result<usize, CorruptStream> {
    match input.split_first() {
        Some((&tag, rest)) if is_rans(tag) && !out.is_empty() => {
            decode_rans(tag, rest, out, Some(with))
        }
        _ => decode(input, out).map(|()| 0),
    }
}

/// The encoder's choices for a plane of at least two distinct symbols, made once: what
/// [`encoded_size`] and [`encode`] each work out from the histogram (those two as
/// [`SmallPlanes::Compact`] says), for a caller that needs both ([`plan`],
/// [`Plan::encoded_size`], [`encode_planned`]).
pub fn plan(hist: &Histogram, small: SmallPlanes) -> Option<Plan> {
    (hist.distinct() >= 2).then(|| Plan::new(hist, small))
}

/// A plan whose byte frequencies are the product of the low and high nibbles' (the
/// `KIND_RANS_NIBBLES` table form), at the fast precision; `None` unless both nibbles take at
/// least two values. Its [`Plan::encoded_size`] is compared with [`plan`]'s by the caller:
/// the full table wins on large planes (it also sees how a byte's two codes correlate), this
/// one on small planes, where the full table's size shows.
pub fn plan_nibbles(hist: &Histogram) -> Option<Plan> {
    let mut lo = Histogram {
        counts: [0; 256],
        total: hist.total,
    };
    let mut hi = lo.clone();
    for (b, &c) in hist.counts.iter().enumerate() {
        lo.counts[b & 15] += c;
        hi.counts[b >> 4] += c;
    }
    if lo.distinct() < 2 || hi.distinct() < 2 {
        return None;
    }
    let precision = FAST_PRECISION;
    // The two nibbles' own tables, or one table of both (the codes of a tensor are alike
    // in both halves of its bytes, and one table less is ~22 bytes less).
    let mut both = lo.clone();
    for (b, c) in both.counts.iter_mut().zip(&hi.counts) {
        *b += c;
    }
    both.total *= 2;
    let own = (normalize(&lo, precision), normalize(&hi, precision));
    let shared = normalize(&both, precision);
    [own, (shared, shared)]
        .into_iter()
        .map(|(lo, hi)| {
            let mut lo16 = [0u32; 16];
            let mut hi16 = [0u32; 16];
            lo16.copy_from_slice(&lo[..16]);
            hi16.copy_from_slice(&hi[..16]);
            let freqs = nibble_product(&lo16, &hi16, precision);
            let info_bits = info_bits(hist, &freqs, precision);
            let tables = match lo16 == hi16 {
                true => table_bytes(&lo),
                false => table_bytes(&lo) + table_bytes(&hi),
            };
            Plan {
                precision,
                // The nibble-table kind has no few-lane codes (FP4 planes are large).
                lanes: lanes_for(info_bits, SmallPlanes::Fast),
                freqs,
                info_bits,
                table_bytes: 1 + tables,
                nibbles: Some((lo16, hi16)),
            }
        })
        .min_by_key(|p| p.encoded_size())
}

/// Byte frequencies summing to `2^precision` from low- and high-nibble frequencies that each
/// sum to `2^precision`: byte `l | h << 4` gets `lo[l] * hi[h] / 2^precision`, rounded by
/// largest remainder, and at least 1 where both nibbles occur. The encoder and decoder both
/// run exactly this, so it is part of the stream format.
///
/// `precision` must be in `8..=16` (so the 256 possible bytes fit with at least one slot
/// each) and the inputs must sum as stated; the decoder checks both first.
fn nibble_product(lo: &[u32; 16], hi: &[u32; 16], precision: u32) -> [u32; 256] {
    let scale = 1u64 << precision;
    let mut freqs = [0u32; 256];
    let mut rems = [0u64; 256];
    let mut sum = 0u64;
    for (b, (f, r)) in freqs.iter_mut().zip(rems.iter_mut()).enumerate() {
        let p = lo[b & 15] as u64 * hi[b >> 4] as u64;
        if p > 0 {
            *f = (p >> precision).max(1) as u32;
            // A byte raised to one slot was already rounded up.
            *r = if p < scale { 0 } else { p & (scale - 1) };
            sum += *f as u64;
        }
    }
    let present = || (0..256).filter(|&b| freqs[b] > 0);
    if sum < scale {
        // Fewer than one slot was lost per byte, so one pass of +1 makes up the sum. The
        // key is a total order, so the bytes that get a slot are one set however the
        // selection orders them (no full sort: this runs per chunk, twice).
        let mut order: FixedVec<usize, 256> = present().collect();
        let missing = (scale - sum) as usize;
        let key = |&b: &usize| (std::cmp::Reverse(rems[b]), b);
        if missing < order.len() {
            order.select_nth_unstable_by_key(missing, key);
        }
        for &b in order.iter().take(missing) {
            freqs[b] += 1;
        }
    } else if sum > scale {
        // The minimum of 1 added under one slot per byte; take them back from the largest,
        // a slot each in order, round after round. Usually one partial round, whose bytes
        // a selection finds (bytes at one slot sort last, so they are not among them).
        let mut order: FixedVec<usize, 256> = present().collect();
        let mut excess = sum - scale;
        let key = |&b: &usize| (std::cmp::Reverse(freqs[b]), b);
        let above_one = order.iter().filter(|&&b| freqs[b] > 1).count();
        if (excess as usize) < above_one {
            order.select_nth_unstable_by_key(excess as usize, key);
            for &b in &order[..excess as usize] {
                freqs[b] -= 1;
            }
            return freqs;
        }
        order.sort_unstable_by_key(key);
        while excess > 0 {
            for &b in &order {
                if excess > 0 && freqs[b] > 1 {
                    freqs[b] -= 1;
                    excess -= 1;
                }
            }
        }
    }
    freqs
}

/// [`encode`] with the choices of [`plan`] for `Histogram::of(symbols)`.
pub fn encode_planned(symbols: &[u8], plan: &Plan, out: &mut Vec<u8>) {
    encode_plan(symbols, plan, out);
}

/// Decodes exactly `out.len()` symbols from `input`, which must be exactly what [`encode`]
/// appended.
///
/// Hostile input yields `Err`, never a panic, out-of-bounds access or unbounded work; the only
/// allocation is the decode table (at most 2^16 slots), kept per thread and reused.
pub fn decode(input: &[u8], out: &mut [u8]) -> Result<(), CorruptStream> {
    let Some((&tag, rest)) = input.split_first() else {
        return if out.is_empty() {
            Ok(())
        } else {
            Err(corrupt("empty stream"))
        };
    };
    if out.is_empty() {
        return Err(corrupt("stream for an empty plane"));
    }
    match (tag, rest) {
        (KIND_CONSTANT, &[symbol]) => {
            out.fill(symbol);
            Ok(())
        }
        _ if is_rans(tag) => decode_rans(tag, rest, out, None).map(|_| ()),
        _ => Err(corrupt("bad tag")),
    }
}

// ---------------------------------------------------------------------------------------------
// Choosing precision, lanes and frequencies

/// Lower bounds on [`Plan::encoded_size`] for a plane of at least two distinct symbols,
/// from the histogram and a lower bound on its order-0 information in bits, without
/// normalising the frequencies: `(any plan, a plan that decodes wide)`.
///
/// The symbol set's bytes depend only on which symbols occur, each frequency but the last
/// takes at least 4 bits, and quantised frequencies never code below the entropy; the
/// payload estimate grows with the information and with the lanes, which grow with it.
/// A wide plan has at least `EIGHT_LANES_BELOW_BYTES` of information and 32 lanes.
pub fn encoded_size_bound(
    hist: &Histogram,
    info_bits_lb: f64,
    small: SmallPlanes,
) -> (usize, usize) {
    // Distinct symbols, and runs of consecutive ones (a run starts at a symbol whose
    // predecessor is absent), counted on the set of present symbols.
    let (mut distinct, mut runs, mut carry) = (0usize, 0usize, 0u64);
    for word in hist.presence() {
        distinct += word.count_ones() as usize;
        runs += (word & !(word << 1 | carry)).count_ones() as usize;
        carry = word >> 63;
    }
    let set = if symbols_as_list(distinct, runs) {
        distinct
    } else {
        2 * runs
    };
    let table = 1 + set + (4 * distinct.saturating_sub(1)).div_ceil(8);
    let info = info_bits_lb.max(0.0);
    let any = 1 + table + payload_bytes(info, lanes_for(info, small)).round() as usize;
    let wide_info = info.max(EIGHT_LANES_BELOW_BYTES * 8.0);
    let wide = 1 + table + payload_bytes(wide_info, lanes_for(wide_info, small)).round() as usize;
    (any, wide)
}

/// How the encoder trades a few bytes against speed on small planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmallPlanes {
    /// Two or four lanes where eight lanes' flushed states would pass 0.3 % of the payload
    /// (about half the speed a symbol), coarser frequencies tried where the table is over
    /// 1 % of the stream (more work to plan), and finer ones taken for any gain where a
    /// plane would otherwise stay over 1 % above its floor plus model cost (a bigger decode
    /// table). For files, whose small planes (block scales, norms, biases) are a few
    /// percent of the symbols.
    #[default]
    Compact,
    /// Eight lanes down to one-lane payloads, the usual precision only: for K/V pages, whose
    /// planes are all small and whose encode and decode speed is the point.
    Fast,
}

/// Lanes for a plane of `info_bits` of information (non-decreasing in it).
fn lanes_for(info_bits: f64, small: SmallPlanes) -> usize {
    let compact = small == SmallPlanes::Compact;
    match info_bits / 8.0 {
        bytes if bytes < ONE_LANE_BELOW_BYTES => 1,
        bytes if compact && bytes < TWO_LANES_BELOW_BYTES => 2,
        bytes if compact && bytes < FOUR_LANES_BELOW_BYTES => 4,
        bytes if bytes < EIGHT_LANES_BELOW_BYTES => 8,
        bytes if bytes < NARROW_LANES_BELOW_BYTES => NARROW_SIMD_LANES,
        _ => WIDE_LANES,
    }
}

/// Everything the encoder decides from the histogram alone, shared by `encoded_size` and `encode`.
#[derive(Clone)]
pub struct Plan {
    precision: u32,
    lanes: usize,
    freqs: [u32; 256],
    /// Ideal cost of the symbols under the quantised frequencies.
    info_bits: f64,
    table_bytes: usize,
    /// The low- and high-nibble frequencies `freqs` is the product of, for a
    /// `KIND_RANS_NIBBLES` stream.
    nibbles: Option<([u32; 16], [u32; 16])>,
}

impl Plan {
    /// Picks the cheapest precision, preferring the fast one unless a finer one saves real bytes.
    fn new(hist: &Histogram, small: SmallPlanes) -> Plan {
        let min_precision = ceil_log2(hist.distinct());
        // Short planes don't need 4096 slots: building the table would dominate decoding.
        let base =
            (ceil_log2(hist.total) + 2).clamp(min_precision, FAST_PRECISION.max(min_precision));
        let mut best = Plan::at(hist, base, small);
        // On small planes the table shows: coarser frequencies take fewer bits each.
        if small == SmallPlanes::Compact
            && best.table_bytes * COARSE_TABLE_SHARE > best.encoded_size()
        {
            for precision in (min_precision.max(base.saturating_sub(3))..base).rev() {
                let candidate = Plan::at(hist, precision, small);
                if candidate.total_bytes() >= best.total_bytes() {
                    break;
                }
                best = candidate;
            }
        }
        // A finer precision can at best remove the quantisation excess over the entropy:
        // don't evaluate it when even that would not pay for two more bits.
        let entropy_bits = hist.entropy_bits();
        let excess_bytes = (best.info_bits - entropy_bits) / 8.0;
        if excess_bytes < best.total_bytes() * 0.002 + 2.0 {
            return best;
        }
        // Each extra bit of precision must save 0.5 % and a byte (bigger tables decode
        // slower), unless a compact plane would stay over 1 % above what any order-0 code
        // must pay: then a byte a bit is enough.
        let min_gain = match small == SmallPlanes::Compact
            && best.encoded_size() as f64 * 8.0 > (entropy_bits + hist.model_cost_bits()) * 1.01
        {
            true => 0.0,
            false => FINE_PRECISION_MIN_GAIN,
        };
        for precision in FINE_PRECISIONS.into_iter().filter(|&p| p > base) {
            let candidate = Plan::at(hist, precision, small);
            let bits_more = (precision - best.precision) as f64;
            let worth_it = best.total_bytes() * (1.0 - min_gain * bits_more) - bits_more;
            if candidate.total_bytes() >= worth_it {
                // Finer precisions gain less and less: if two more bits did not pay, four
                // would not either.
                break;
            }
            best = candidate;
        }
        best
    }

    /// Whether the stream gets a lane count the SIMD decoders run on.
    pub fn decodes_wide(&self) -> bool {
        self.lanes >= NARROW_SIMD_LANES
    }

    /// Size in bytes of the stream [`encode_planned`] appends (see [`encoded_size`]).
    pub fn encoded_size(&self) -> usize {
        1 + self.table_bytes + payload_bytes(self.info_bits, self.lanes).round() as usize
    }

    fn at(hist: &Histogram, precision: u32, small: SmallPlanes) -> Plan {
        let freqs = normalize(hist, precision);
        let info_bits = info_bits(hist, &freqs, precision);
        Plan {
            precision,
            lanes: lanes_for(info_bits, small),
            freqs,
            info_bits,
            table_bytes: table_bytes(&freqs),
            nibbles: None,
        }
    }

    fn total_bytes(&self) -> f64 {
        self.table_bytes as f64 + payload_bytes(self.info_bits, self.lanes)
    }
}

/// Smallest `b` with `2^b >= n`, at least 1.
fn ceil_log2(n: usize) -> u32 {
    n.max(2).next_power_of_two().trailing_zeros()
}

/// Expected bytes of coded words plus flushed states for `info_bits` of information.
///
/// A lane's output is its information plus 48 minus log2 of its final state; final states are
/// about log-uniform on [2^16, 2^32), so that averages 24 bits, and a lane never writes less
/// than its 4-byte state.
fn payload_bytes(info_bits: f64, lanes: usize) -> f64 {
    let per_lane_bits = info_bits / lanes as f64;
    lanes as f64 * (per_lane_bits / 8.0 + 3.0).max(4.0)
}

/// Cost in bits of coding the histogram's symbols with these frequencies at this precision.
fn info_bits(hist: &Histogram, freqs: &[u32; 256], precision: u32) -> f64 {
    hist.counts
        .iter()
        .zip(freqs)
        .filter(|(&c, _)| c > 0)
        .map(|(&c, &f)| c as f64 * (precision as f64 - (f as f64).log2()))
        .sum()
}

/// Quantises the counts to frequencies summing to `2^precision`, every present symbol at least 1,
/// minimising the coded size.
///
/// Rounding each share at its marginal-cost break-even point gets close; the sum is then fixed
/// and slots exchanged greedily by marginal cost. The cost is separable and convex in each
/// frequency, so once no single exchange helps the result is optimal (to the 2e-5 accuracy of
/// the marginal costs).
fn normalize(hist: &Histogram, precision: u32) -> [u32; 256] {
    let target = 1u32 << precision;
    let scale = target as f64 / hist.total as f64;
    let mut freqs = [0u32; 256];
    for (f, &c) in freqs.iter_mut().zip(&hist.counts) {
        if c > 0 {
            // Round where the marginal gain of the next slot equals the average rate, not at
            // the linear midpoint: that is the optimum's own rounding, so few fix-ups remain.
            let share = c as f64 * scale;
            let floor = share.floor().max(1.0);
            *f = floor as u32 + (share * ln_1p_recip(floor as u32) > 1.0) as u32;
        }
    }
    Rebalancer::new(&hist.counts, freqs).run(target)
}

/// `ln(1 + 1/f)` for `f >= 1`, as `2 atanh(1 / (2f + 1))`: a few multiplies instead of a
/// libm call (this runs for every symbol at every precision tried), relative error < 2e-5.
fn ln_1p_recip(f: u32) -> f64 {
    let u = 1.0 / (2 * f + 1) as f64;
    let u2 = u * u;
    2.0 * u * (1.0 + u2 * (1.0 / 3.0 + u2 * (1.0 / 5.0 + u2 * (1.0 / 7.0 + u2 * (1.0 / 9.0)))))
}

/// Marginal costs of moving one slot to or from each present symbol.
struct Rebalancer<'a> {
    counts: &'a [u32; 256],
    freqs: [u32; 256],
    present: FixedVec<usize, 256>,
    /// Cost (in nats) saved by giving symbol `s` one more slot.
    gain: [f64; 256],
    /// Cost (in nats) added by taking one slot from symbol `s` (infinite at frequency 1).
    loss: [f64; 256],
}

impl<'a> Rebalancer<'a> {
    fn new(counts: &'a [u32; 256], freqs: [u32; 256]) -> Self {
        let present: FixedVec<usize, 256> = (0..256).filter(|&s| counts[s] > 0).collect();
        let mut r = Rebalancer {
            counts,
            freqs,
            present,
            gain: [0.0; 256],
            loss: [0.0; 256],
        };
        for i in 0..r.present.len() {
            r.update(r.present[i]);
        }
        r
    }

    fn update(&mut self, s: usize) {
        let (c, f) = (self.counts[s] as f64, self.freqs[s]);
        self.gain[s] = c * ln_1p_recip(f);
        self.loss[s] = if f <= 1 {
            f64::INFINITY
        } else {
            c * ln_1p_recip(f - 1)
        };
    }

    fn best_gain(&self) -> usize {
        let mut best = self.present[0];
        for &s in &self.present {
            if self.gain[s] > self.gain[best] {
                best = s;
            }
        }
        best
    }

    fn least_loss(&self) -> usize {
        let mut best = self.present[0];
        for &s in &self.present {
            if self.loss[s] < self.loss[best] {
                best = s;
            }
        }
        best
    }

    fn add(&mut self, s: usize, up: bool) {
        if up {
            self.freqs[s] += 1;
        } else {
            self.freqs[s] -= 1;
        }
        self.update(s);
    }

    fn run(mut self, target: u32) -> [u32; 256] {
        let mut sum: u32 = self.present.iter().map(|&s| self.freqs[s]).sum();
        while sum < target {
            self.add(self.best_gain(), true);
            sum += 1;
        }
        while sum > target {
            // Some symbol has frequency > 1: there are at most `target` symbols.
            self.add(self.least_loss(), false);
            sum -= 1;
        }
        for _ in 0..MAX_EXCHANGES {
            let (up, down) = (self.best_gain(), self.least_loss());
            // The relative margin keeps float noise from swapping a slot back and forth.
            if up == down || self.gain[up] <= self.loss[down] * (1.0 + 1e-12) {
                break;
            }
            self.add(up, true);
            self.add(down, false);
        }
        self.freqs
    }
}

// ---------------------------------------------------------------------------------------------
// Frequency table: the symbol set, then the frequencies bit-packed.
//
// The symbol set is either runs of consecutive values (a count byte below 0x80, then a
// (gap, length - 1) byte pair per run: FP4 codes or exponents are one or two runs) or, when
// shorter, a list (0x80 | count - 1, then the first symbol and each later one's gap minus one:
// the few scattered values of an XOR delta).

/// Maximal runs of consecutive present symbols, as (first symbol, length).
fn symbol_runs(freqs: &[u32; 256]) -> FixedVec<(usize, usize), 128> {
    // At most 128 runs: two runs are separated by at least one absent symbol.
    let mut runs = FixedVec::new();
    for s in (0..256).filter(|&s| freqs[s] > 0) {
        match runs.last_mut() {
            Some((start, len)) if *start + *len == s => *len += 1,
            _ => runs.push((s, 1)),
        }
    }
    runs
}

/// Whether the list form is used: shorter than the runs, and its count fits 7 bits.
fn symbols_as_list(distinct: usize, runs: usize) -> bool {
    distinct < 2 * runs && distinct <= 128
}

/// Bits to store frequency `f`: 4 bits of its bit length, then its bits below the leading one.
fn freq_bits(f: u32) -> usize {
    4 + (31 - f.leading_zeros()) as usize
}

/// Exact size of the table (symbol set and frequencies), matching `write_table`.
fn table_bytes(freqs: &[u32; 256]) -> usize {
    let runs = (0..256)
        .filter(|&s| freqs[s] > 0 && (s == 0 || freqs[s - 1] == 0))
        .count();
    let distinct = freqs.iter().filter(|&&f| f > 0).count();
    let set = if symbols_as_list(distinct, runs) {
        distinct
    } else {
        2 * runs
    };
    let last = freqs.iter().rposition(|&f| f > 0).unwrap_or(0);
    let bits: usize = freqs[..last]
        .iter()
        .filter(|&&f| f > 0)
        .map(|&f| freq_bits(f))
        .sum();
    1 + set + bits.div_ceil(8)
}

fn write_table(freqs: &[u32; 256], out: &mut Vec<u8>) {
    let runs = symbol_runs(freqs);
    let present: FixedVec<u8, 256> = (0..=255).filter(|&s| freqs[s as usize] > 0).collect();
    if symbols_as_list(present.len(), runs.len()) {
        out.push(0x80 | (present.len() - 1) as u8);
        out.push(present[0]);
        out.extend(present.windows(2).map(|w| w[1] - w[0] - 1));
    } else {
        // At most 128 runs: two runs are separated by at least one absent symbol.
        out.push((runs.len() - 1) as u8);
        let mut end = 0;
        for &(start, len) in &runs {
            out.extend_from_slice(&[(start - end) as u8, (len - 1) as u8]);
            end = start + len;
        }
    }
    let mut bits = BitWriter::default();
    for &s in &present[..present.len() - 1] {
        let f = freqs[s as usize];
        let len = 32 - f.leading_zeros();
        bits.put(len - 1, 4);
        bits.put(f & !(1 << (len - 1)), len - 1);
    }
    bits.finish(out);
}

/// Parsed table: present symbols ascending with their frequencies (summing to the scale).
struct Table {
    symbols: FixedVec<u8, 256>,
    freqs: FixedVec<u32, 256>,
}

/// Reads the symbol set (strictly ascending, at least two); returns it and the bytes it took.
fn read_symbols(input: &[u8]) -> Result<(FixedVec<u8, 256>, usize), CorruptStream> {
    let truncated = || corrupt("truncated table");
    let (&head, rest) = input.split_first().ok_or_else(truncated)?;
    // At most 256: the list's symbols ascend strictly, and runs end by symbol 255.
    let mut symbols = FixedVec::new();
    let used = if head & 0x80 != 0 {
        let count = (head & 0x7f) as usize + 1;
        let bytes = rest.get(..count).ok_or_else(truncated)?;
        let mut next = 0usize; // the smallest value the next symbol may take
        for &gap in bytes {
            let s = next + gap as usize;
            if s > 255 {
                return Err(corrupt("symbol past 255"));
            }
            symbols.push(s as u8);
            next = s + 1;
        }
        1 + count
    } else {
        let runs = head as usize + 1;
        let pairs = rest.get(..2 * runs).ok_or_else(truncated)?;
        let mut end = 0usize;
        for pair in pairs.chunks_exact(2) {
            let start = end + pair[0] as usize;
            end = start + pair[1] as usize + 1;
            if end > 256 {
                return Err(corrupt("symbol run past 255"));
            }
            symbols.extend((start..end).map(|s| s as u8));
        }
        1 + 2 * runs
    };
    if symbols.len() < 2 {
        return Err(corrupt("fewer than two symbols"));
    }
    Ok((symbols, used))
}

/// Reads and validates a table; returns it and the bytes it took.
fn read_table(input: &[u8], precision: u32) -> Result<(Table, usize), CorruptStream> {
    let (symbols, set_bytes) = read_symbols(input)?;
    let truncated = || corrupt("truncated table");
    let scale = 1u32 << precision;
    let mut bits = BitReader::new(&input[set_bytes..]);
    let mut freqs = FixedVec::new();
    let mut sum = 0u32;
    for _ in 1..symbols.len() {
        let len = bits.get(4).ok_or_else(truncated)? + 1;
        let f = (1 << (len - 1)) | bits.get(len - 1).ok_or_else(truncated)?;
        sum += f; // at most 256 * 2^16: no overflow
        if sum >= scale {
            return Err(corrupt("frequencies exceed the scale"));
        }
        freqs.push(f);
    }
    freqs.push(scale - sum);
    Ok((Table { symbols, freqs }, set_bytes + bits.bytes_used()))
}

/// Reads the nibble tables of a `KIND_RANS_NIBBLES` stream (a count byte, then one table for
/// both nibbles or the low nibble's and the high nibble's) and returns their product
/// (see [`nibble_product`]) and the bytes they took.
fn read_nibble_tables(input: &[u8], precision: u32) -> Result<(Table, usize), CorruptStream> {
    if !(8..=MAX_PRECISION).contains(&precision) {
        return Err(corrupt("nibble tables need a precision of 8 to 16"));
    }
    let count = match input.first() {
        Some(&count @ (1 | 2)) => count as usize,
        Some(_) => return Err(corrupt("nibble table count is not 1 or 2")),
        None => return Err(corrupt("truncated table")),
    };
    let mut nibbles = [[0u32; 16]; 2];
    let mut used = 1;
    for nibble in &mut nibbles[..count] {
        let (table, n) = read_table(&input[used..], precision)?;
        for (&s, &f) in table.symbols.iter().zip(&table.freqs) {
            *nibble
                .get_mut(s as usize)
                .ok_or(corrupt("nibble symbol past 15"))? = f;
        }
        used += n;
    }
    if count == 1 {
        nibbles[1] = nibbles[0];
    }
    let freqs = nibble_product(&nibbles[0], &nibbles[1], precision);
    let symbols: FixedVec<u8, 256> = (0..=255u8).filter(|&b| freqs[b as usize] > 0).collect();
    let freqs = symbols.iter().map(|&b| freqs[b as usize]).collect();
    Ok((Table { symbols, freqs }, used))
}

/// Packs values LSB-first (a frequency table's: at most 255 values of at most 20 bits).
#[derive(Default)]
struct BitWriter {
    bytes: FixedVec<u8, 1024>,
    acc: u64,
    count: u32,
}

impl BitWriter {
    fn put(&mut self, value: u32, bits: u32) {
        self.acc |= (value as u64) << self.count;
        self.count += bits;
        while self.count >= 8 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.count -= 8;
        }
    }

    fn finish(mut self, out: &mut Vec<u8>) {
        if self.count > 0 {
            self.bytes.push(self.acc as u8);
        }
        out.extend_from_slice(&self.bytes);
    }
}

/// Reads what `BitWriter` packed; `None` past the end of the input.
struct BitReader<'a> {
    input: &'a [u8],
    bit_pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(input: &'a [u8]) -> Self {
        BitReader { input, bit_pos: 0 }
    }

    fn get(&mut self, bits: u32) -> Option<u32> {
        let mut value = 0u32;
        for i in 0..bits {
            let byte = *self.input.get(self.bit_pos / 8)?;
            value |= (((byte >> (self.bit_pos % 8)) & 1) as u32) << i;
            self.bit_pos += 1;
        }
        Some(value)
    }

    fn bytes_used(&self) -> usize {
        self.bit_pos.div_ceil(8)
    }
}

// ---------------------------------------------------------------------------------------------
// Encoder

/// Per-symbol encoder constants: division by the frequency as a multiply by a 64-bit reciprocal.
///
/// `x_new = (x / f) * M + x % f + start` is computed as `x + bias + q * (M - f)` with
/// `q = mulhi64(x, rcp)` (after ryg_rans). For `f >= 2`, `rcp = ceil(2^64 / f)` gives the exact
/// quotient for every `x < 2^32` (the error is below 2^-32 < 1/f); for `f == 1`, `rcp = 2^64 - 1`
/// gives `q = x - 1`, which `bias = start + M - 1` corrects.
#[derive(Clone, Copy, Default)]
struct EncSymbol {
    rcp: u64,
    /// Renormalise (emit a word) when the state is at least this.
    x_max: u32,
    bias: u32,
    cmpl_freq: u32,
}

impl EncSymbol {
    fn new(start: u32, freq: u32, precision: u32) -> Self {
        let scale = 1u32 << precision;
        let (rcp, bias) = if freq == 1 {
            (u64::MAX, start + scale - 1)
        } else {
            (u64::MAX / freq as u64 + 1, start)
        };
        EncSymbol {
            rcp,
            x_max: freq << (32 - precision),
            bias,
            cmpl_freq: scale - freq,
        }
    }
}

/// The tag byte of a byte-table rANS stream; `lanes` must be one of `LANE_COUNTS` or
/// `FEW_LANE_COUNTS`.
fn tag(precision: u32, lanes: usize) -> u8 {
    let (kind, code) = match FEW_LANE_COUNTS.iter().position(|&n| n == lanes) {
        Some(code) => (KIND_RANS_FEW_LANES, code),
        None => (
            KIND_RANS,
            LANE_COUNTS.iter().position(|&n| n == lanes).unwrap_or(3),
        ),
    };
    kind | (code as u8) << 2 | ((precision - 1) as u8) << 4
}

fn encoder_table(freqs: &[u32; 256], precision: u32) -> [EncSymbol; 256] {
    let mut table = [EncSymbol::default(); 256];
    let mut start = 0;
    for (entry, &f) in table.iter_mut().zip(freqs) {
        if f > 0 {
            *entry = EncSymbol::new(start, f, precision);
            start += f;
        }
    }
    table
}

fn encode_plan(symbols: &[u8], plan: &Plan, out: &mut Vec<u8>) {
    encode_plan_at(symbols, plan, out, Simd::best());
}

/// [`encode_plan`] with at most the `simd` encoder (tests force the scalar one to compare).
fn encode_plan_at(symbols: &[u8], plan: &Plan, out: &mut Vec<u8>, simd: Simd) {
    encode_plan_with(symbols, plan, out, simd, true);
}

/// [`encode_plan_at`]; without `lookup`, the AVX-512 encoder gathers its table entries even
/// where it could look them up in registers (tests check both kernels).
fn encode_plan_with(symbols: &[u8], plan: &Plan, out: &mut Vec<u8>, simd: Simd, lookup: bool) {
    match &plan.nibbles {
        None => {
            out.push(tag(plan.precision, plan.lanes));
            write_table(&plan.freqs, out);
        }
        Some((lo, hi)) => {
            out.push(tag(plan.precision, plan.lanes) & !3 | KIND_RANS_NIBBLES);
            let tables: &[&[u32; 16]] = if lo == hi { &[lo] } else { &[lo, hi] };
            out.push(tables.len() as u8);
            for nibble in tables {
                let mut freqs = [0u32; 256];
                freqs[..16].copy_from_slice(*nibble);
                write_table(&freqs, out);
            }
        }
    }
    let table = encoder_table(&plan.freqs, plan.precision);
    let p = plan.precision;
    let states: FixedVec<u32, WIDE_LANES> = match plan.lanes {
        1 => encode_lanes::<1>(symbols, &table, p, out, Simd::Off, false)
            .into_iter()
            .collect(),
        2 => encode_lanes::<2>(symbols, &table, p, out, Simd::Off, false)
            .into_iter()
            .collect(),
        4 => encode_lanes::<4>(symbols, &table, p, out, Simd::Off, false)
            .into_iter()
            .collect(),
        8 => encode_lanes::<8>(symbols, &table, p, out, Simd::Off, false)
            .into_iter()
            .collect(),
        NARROW_SIMD_LANES => {
            encode_lanes::<NARROW_SIMD_LANES>(symbols, &table, p, out, simd, lookup)
                .into_iter()
                .collect()
        }
        _ => encode_lanes::<WIDE_LANES>(symbols, &table, p, out, simd, lookup)
            .into_iter()
            .collect(),
    };
    for state in states.iter() {
        out.extend_from_slice(&state.to_le_bytes());
    }
}

/// Symbols coded between checks of the output space: small, so that the buffer only ever runs
/// a few KiB past what was written (a skewed plane writes far less than its worst case).
const ENCODE_BLOCK: usize = 4096;

/// Codes `symbols` backwards (rANS is LIFO), appending the words to `out`; returns the lanes'
/// final states.
fn encode_lanes<const N: usize>(
    symbols: &[u8],
    table: &[EncSymbol; 256],
    precision: u32,
    out: &mut Vec<u8>,
    simd: Simd,
    lookup: bool,
) -> [u32; N] {
    // Blocks hold whole groups.
    let block_len = ENCODE_BLOCK / N * N;
    let mut x = [STATE_LOW; N];
    let mut pos = out.len();
    let groups = symbols.chunks_exact(N);
    out.resize(pos + 2 * N, 0);
    for (lane, &s) in groups.remainder().iter().enumerate().rev() {
        pos = encode_step(&mut x[lane], &table[s as usize], out, pos);
    }
    let full = &symbols[..symbols.len() - groups.remainder().len()];
    #[cfg(target_arch = "x86_64")]
    let mut vector = match simd {
        Simd::Avx512 => simd::Encoder::new(table, precision, &x, lookup),
        _ => None,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (simd, precision, lookup);
    // `full` and `block_len` are multiples of N, so blocks are whole groups.
    for block in full.rchunks(block_len) {
        // Each symbol emits at most one word.
        if out.len() < pos + 2 * block.len() {
            out.resize(pos + 2 * block.len(), 0);
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(v) = vector.as_mut() {
            pos = v.encode(block, out, pos);
            continue;
        }
        for group in block.chunks_exact(N).rev() {
            for lane in (0..N).rev() {
                // SAFETY: each symbol stores at `pos` and advances it by at most 2, so before the
                // j-th symbol of the block `pos + 2 <= block start + 2 * block.len() <= out.len()`.
                pos = unsafe {
                    encode_step_unchecked(&mut x[lane], &table[group[lane] as usize], out, pos)
                };
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(v) = vector {
        v.finish(&mut x);
    }
    out.truncate(pos);
    x
}

/// One encoder step with bounds-checked output (the reference for the unchecked one).
fn encode_step(x: &mut u32, sym: &EncSymbol, buf: &mut [u8], pos: usize) -> usize {
    let flush = *x >= sym.x_max;
    buf[pos..pos + 2].copy_from_slice(&(*x as u16).to_le_bytes());
    let v = if flush { *x >> 16 } else { *x };
    *x = advance(v, sym);
    pos + 2 * flush as usize
}

/// `encode_step` without the bounds check on the word store.
///
/// # Safety
/// `pos + 2 <= buf.len()`.
#[inline(always)]
unsafe fn encode_step_unchecked(x: &mut u32, sym: &EncSymbol, buf: &mut [u8], pos: usize) -> usize {
    let flush = *x >= sym.x_max;
    // Branch-free: the word is always stored and only kept (by advancing) when it was flushed.
    // SAFETY: the caller guarantees `pos + 2 <= buf.len()`.
    unsafe {
        buf.as_mut_ptr()
            .add(pos)
            .cast::<[u8; 2]>()
            .write((*x as u16).to_le_bytes())
    };
    let v = if flush { *x >> 16 } else { *x };
    *x = advance(v, sym);
    pos + 2 * flush as usize
}

/// The rANS coding function C(s, x) via the reciprocal; wrapping so a lying histogram
/// (frequency 0) produces garbage rather than a panic.
#[inline(always)]
fn advance(x: u32, sym: &EncSymbol) -> u32 {
    let q = ((x as u128 * sym.rcp as u128) >> 64) as u32;
    x.wrapping_add(sym.bias)
        .wrapping_add(q.wrapping_mul(sym.cmpl_freq))
}

// ---------------------------------------------------------------------------------------------
// Decoder

/// Largest precision with packed slot entries (`freq << 20 | (slot - start) << 8 | symbol`, one
/// `u32`): everything the encoder picks for ordinary planes, and what the SIMD decoder reads.
const PACKED_MAX_PRECISION: u32 = 12;

/// What a decode step needs from a slot: `(freq, slot - start, symbol)`.
trait SlotTable {
    /// Number of slots (`2^precision`).
    fn len(&self) -> usize;
    /// Checked lookup: `None` past the end.
    fn get(&self, slot: usize) -> Option<(u32, u32, u8)>;
    /// # Safety
    /// `slot < self.len()`.
    unsafe fn get_unchecked(&self, slot: usize) -> (u32, u32, u8);
    /// The raw arrays, for the SIMD decoders.
    fn simd_view(&self) -> SimdView<'_>;
}

/// A slot table as the SIMD decoders gather it.
#[derive(Clone, Copy)]
enum SimdView<'a> {
    /// `freq << 20 | offset << 8 | symbol` per slot (precision <= 12).
    Packed(&'a [u32]),
    /// `freq << 16 | offset` per slot, and the symbols with 3 bytes of padding (so a 4-byte
    /// gather at any slot stays in bounds).
    Split(&'a [u32], &'a [u8]),
}

/// Slot table for precisions up to [`PACKED_MAX_PRECISION`]: one `u32` per slot (16 KiB at
/// precision 12, so it stays in L1), which the SIMD decoder gathers.
struct Packed<'a>(&'a [u32]);

impl SlotTable for Packed<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    #[inline(always)]
    fn get(&self, slot: usize) -> Option<(u32, u32, u8)> {
        self.0.get(slot).map(|&e| unpack(e))
    }

    #[inline(always)]
    unsafe fn get_unchecked(&self, slot: usize) -> (u32, u32, u8) {
        // SAFETY: the caller guarantees `slot < self.len()`.
        unpack(unsafe { *self.0.get_unchecked(slot) })
    }

    fn simd_view(&self) -> SimdView<'_> {
        SimdView::Packed(self.0)
    }
}

#[inline(always)]
fn unpack(e: u32) -> (u32, u32, u8) {
    (e >> 20, (e >> 8) & 0xfff, e as u8)
}

/// Slot table for finer precisions (skewed planes): freq, offset and symbol need 40 bits, so
/// `entries[slot] = freq << 16 | (slot - start)` and `symbols[slot]`, read at the same index.
struct Split<'a> {
    entries: &'a [u32],
    symbols: &'a [u8],
}

impl SlotTable for Split<'_> {
    fn len(&self) -> usize {
        self.entries.len().min(self.symbols.len())
    }

    #[inline(always)]
    fn get(&self, slot: usize) -> Option<(u32, u32, u8)> {
        let (&e, &s) = (self.entries.get(slot)?, self.symbols.get(slot)?);
        Some((e >> 16, e & 0xffff, s))
    }

    #[inline(always)]
    unsafe fn get_unchecked(&self, slot: usize) -> (u32, u32, u8) {
        // SAFETY: the caller guarantees `slot < self.len()`, the shorter of the two.
        let (e, s) = unsafe {
            (
                *self.entries.get_unchecked(slot),
                *self.symbols.get_unchecked(slot),
            )
        };
        (e >> 16, e & 0xffff, s)
    }

    fn simd_view(&self) -> SimdView<'_> {
        SimdView::Split(self.entries, self.symbols)
    }
}

/// Reusable per-thread storage for the slot tables: a plane decode builds one (4096 entries at
/// the usual precision), and allocating and faulting it in on every call showed in profiles.
#[derive(Default)]
struct Scratch {
    entries: Vec<u32>,
    symbols: Vec<u8>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// Fills the slot table of a parsed (validated) frequency table into `scratch`; fails unless
/// the frequencies fill exactly `2^precision` slots, which the unchecked steps rely on.
fn build_slots(table: &Table, precision: u32, scratch: &mut Scratch) -> Result<(), CorruptStream> {
    let size = 1usize << precision;
    let packed = precision <= PACKED_MAX_PRECISION;
    let entries = &mut scratch.entries;
    entries.clear();
    scratch.symbols.clear();
    // `read_table` makes the last frequency fill the scale, but check rather than trust it.
    if table.freqs.iter().map(|&f| f as usize).sum::<usize>() != size || table.freqs.contains(&0) {
        return Err(corrupt("frequencies do not fill the scale"));
    }
    // Filled slice by slice in loops the compiler vectorises: this runs for every plane.
    entries.resize(size, 0);
    if !packed {
        // 3 bytes of padding for the SIMD decoder's 4-byte gathers (see `SimdView::Split`).
        scratch.symbols.resize(size + 3, 0);
    }
    let mut start = 0;
    for (&s, &f) in table.symbols.iter().zip(&table.freqs) {
        let end = start + f as usize;
        let (base, shift) = match packed {
            true => (f << 20 | s as u32, 8),
            false => (f << 16, 0),
        };
        for (offset, e) in entries[start..end].iter_mut().enumerate() {
            *e = base | (offset as u32) << shift;
        }
        if !packed {
            scratch.symbols[start..end].fill(s);
        }
        start = end;
    }
    Ok(())
}

/// Everything a decoder needs besides the slot table.
struct Stream<'a> {
    precision: u32,
    words: &'a [u8],
    states: FixedVec<u32, WIDE_LANES>,
    /// The most frequent symbol with its first slot and frequency, for the one-lane fast path.
    dominant: (u8, u32, u32),
}

/// One decode step with every access checked: the slow path and the reference.
#[inline(always)]
fn step<T: SlotTable>(
    table: &T,
    precision: u32,
    x: &mut u32,
    words: &[u8],
    pos: &mut usize,
) -> Result<u8, CorruptStream> {
    let slot = (*x & ((1 << precision) - 1)) as usize;
    let (freq, offset, symbol) = table.get(slot).ok_or(corrupt("slot past the table"))?;
    let y = freq * (*x >> precision) + offset;
    *x = if y < STATE_LOW {
        let start = pos.checked_sub(2).ok_or(corrupt("words exhausted"))?;
        let word = words
            .get(start..*pos)
            .and_then(|w| <[u8; 2]>::try_from(w).ok());
        *pos = start;
        y << 16 | u16::from_le_bytes(word.ok_or(corrupt("words exhausted"))?) as u32
    } else {
        y
    };
    Ok(symbol)
}

/// Decodes a rANS stream; returns how many leading symbols went to `fuse` (see
/// [`decode_interleaved`]).
fn decode_rans(
    tag: u8,
    rest: &[u8],
    out: &mut [u8],
    fuse: Option<&mut Interleave<'_>>,
) -> Result<usize, CorruptStream> {
    let (table, stream) = parse(tag, rest)?;
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => decode_with(&table, &stream, &mut scratch, out, fuse),
        // Only reachable if a decode were ever re-entered on this thread.
        Err(_) => decode_with(&table, &stream, &mut Scratch::default(), out, fuse),
    })
}

fn decode_with(
    table: &Table,
    stream: &Stream<'_>,
    scratch: &mut Scratch,
    out: &mut [u8],
    fuse: Option<&mut Interleave<'_>>,
) -> Result<usize, CorruptStream> {
    build_slots(table, stream.precision, scratch)?;
    if stream.precision <= PACKED_MAX_PRECISION {
        decode_slots(&Packed(&scratch.entries), stream, out, Simd::best(), fuse)
    } else {
        let split = Split {
            entries: &scratch.entries,
            symbols: &scratch.symbols,
        };
        decode_slots(&split, stream, out, Simd::best(), fuse)
    }
}

/// Dispatches on the lane count; `simd` is the best SIMD path allowed (tests force the others
/// to compare).
fn decode_slots<T: SlotTable>(
    table: &T,
    s: &Stream<'_>,
    out: &mut [u8],
    simd: Simd,
    fuse: Option<&mut Interleave<'_>>,
) -> Result<usize, CorruptStream> {
    let (p, words, states) = (s.precision, s.words, &s.states[..]);
    match (states.len(), p) {
        (1, _) => decode_one_lane(table, s, out).map(|()| 0),
        (2, _) => decode_lanes::<2, 0, T>(table, p, words, states, out, Simd::Off, None),
        (4, _) => decode_lanes::<4, 0, T>(table, p, words, states, out, Simd::Off, None),
        (8, 12) => decode_lanes::<8, 12, T>(table, p, words, states, out, Simd::Off, None),
        (8, 14) => decode_lanes::<8, 14, T>(table, p, words, states, out, Simd::Off, None),
        (8, 16) => decode_lanes::<8, 16, T>(table, p, words, states, out, Simd::Off, None),
        (8, _) => decode_lanes::<8, 0, T>(table, p, words, states, out, Simd::Off, None),
        (NARROW_SIMD_LANES, 12) => {
            decode_lanes::<NARROW_SIMD_LANES, 12, T>(table, p, words, states, out, simd, fuse)
        }
        (NARROW_SIMD_LANES, _) => {
            decode_lanes::<NARROW_SIMD_LANES, 0, T>(table, p, words, states, out, simd, fuse)
        }
        (WIDE_LANES, 12) => {
            decode_lanes::<WIDE_LANES, 12, T>(table, p, words, states, out, simd, fuse)
        }
        (WIDE_LANES, _) => {
            decode_lanes::<WIDE_LANES, 0, T>(table, p, words, states, out, simd, fuse)
        }
        _ => Err(corrupt("unsupported lane count")),
    }
}

/// Splits a rANS stream (after the tag) into its frequency table, words and lane states.
fn parse(tag: u8, rest: &[u8]) -> Result<(Table, Stream<'_>), CorruptStream> {
    let lanes = tag_lanes(tag).ok_or(corrupt("bad lane code"))?;
    let precision = (tag >> 4) as u32 + 1;
    let (table, used) = match tag & 3 {
        KIND_RANS_NIBBLES => read_nibble_tables(rest, precision)?,
        _ => read_table(rest, precision)?,
    };
    let body = &rest[used..];
    let words_len = body
        .len()
        .checked_sub(4 * lanes)
        .ok_or(corrupt("truncated states"))?;
    if words_len % 2 != 0 {
        return Err(corrupt("odd word bytes"));
    }
    let (words, state_bytes) = body.split_at(words_len);
    let mut states = FixedVec::new();
    for chunk in state_bytes.chunks_exact(4) {
        let state = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        if state < STATE_LOW {
            return Err(corrupt("state out of range"));
        }
        states.push(state);
    }
    let mut dominant = (0, 0, 0);
    let mut start = 0;
    for (&s, &f) in table.symbols.iter().zip(&table.freqs) {
        if f > dominant.2 {
            dominant = (s, start, f);
        }
        start += f;
    }
    Ok((
        table,
        Stream {
            precision,
            words,
            states,
            dominant,
        },
    ))
}

/// Checks what every lane must satisfy once all symbols are decoded.
fn finish(states: &[u32], pos: usize) -> Result<(), CorruptStream> {
    if pos != 0 {
        return Err(corrupt("unused words"));
    }
    if states.iter().any(|&state| state != STATE_LOW) {
        return Err(corrupt("final state mismatch"));
    }
    Ok(())
}

/// Decodes a one-lane stream; the encoder only makes these for tiny payloads, which on a large
/// plane means one symbol dominates.
///
/// A single lane is one long dependency chain, so the step is made short for the dominant
/// symbol (no table load) and the refill is a branch, rarely taken on such planes.
fn decode_one_lane<T: SlotTable>(
    table: &T,
    s: &Stream<'_>,
    out: &mut [u8],
) -> Result<(), CorruptStream> {
    let (top_symbol, top_start, top_freq) = s.dominant;
    let (precision, words) = (s.precision, s.words);
    let mask = (1u32 << precision) - 1;
    let mut x = s.states[0];
    let mut pos = words.len();
    for symbol in out.iter_mut() {
        let slot = x & mask;
        let offset = slot.wrapping_sub(top_start);
        let y = if offset < top_freq {
            *symbol = top_symbol;
            top_freq * (x >> precision) + offset
        } else {
            let (freq, offset, sym) = table.get(slot as usize).ok_or(corrupt("bad slot"))?;
            *symbol = sym;
            freq * (x >> precision) + offset
        };
        x = if y < STATE_LOW {
            pos = pos.checked_sub(2).ok_or(corrupt("words exhausted"))?;
            y << 16 | u16::from_le_bytes([words[pos], words[pos + 1]]) as u32
        } else {
            y
        };
    }
    finish(&[x], pos)
}

/// Decodes with N interleaved lanes: unchecked (SIMD when allowed and available) while every
/// lane of a group surely has a word left to read, then checked to the end; verifies every lane
/// returns to `STATE_LOW` with all words consumed.
fn decode_lanes<const N: usize, const P: u32, T: SlotTable>(
    table: &T,
    precision: u32,
    words: &[u8],
    states: &[u32],
    out: &mut [u8],
    simd: Simd,
    fuse: Option<&mut Interleave<'_>>,
) -> Result<usize, CorruptStream> {
    // What the unchecked steps rely on; `build_slots` and the dispatch guarantee it.
    assert!(P == 0 || P == precision);
    assert!(table.len() == 1 << precision);
    let mut x = [0u32; N];
    x.copy_from_slice(states);
    let mut pos = words.len();
    let full = out.len() - out.len() % N;
    #[cfg(target_arch = "x86_64")]
    let (mut done, fused) = match N {
        NARROW_SIMD_LANES | WIDE_LANES => {
            let view = table.simd_view();
            simd::decode(simd, view, precision, &mut x, words, &mut pos, out, fuse)
        }
        _ => (0, false),
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (mut done, fused) = {
        let _ = (simd, fuse);
        (0, false)
    };
    while done < full && pos >= 2 * N {
        let group = &mut out[done..done + N];
        for lane in 0..N {
            // SAFETY: the group started with `pos >= 2N` and each earlier lane took at most one
            // word, so `2 <= pos <= words.len()`; the table size is asserted above.
            group[lane] = unsafe {
                decode_step_unchecked::<P, T>(table, precision, &mut x[lane], words, &mut pos)
            };
        }
        done += N;
    }
    for (i, symbol) in out.iter_mut().enumerate().skip(done) {
        *symbol = step(table, precision, &mut x[i % N], words, &mut pos)?;
    }
    finish(&x, pos)?;
    Ok(if fused { done } else { 0 })
}

/// `step` without bounds checks, branch-free.
///
/// # Safety
/// `2 <= *pos <= words.len()`, `table.len() == 2^precision`, and `P` is 0 or `precision`.
#[inline(always)]
unsafe fn decode_step_unchecked<const P: u32, T: SlotTable>(
    table: &T,
    precision: u32,
    x: &mut u32,
    words: &[u8],
    pos: &mut usize,
) -> u8 {
    // A constant precision makes the shift and mask immediates, freeing registers.
    let precision = if P == 0 { precision } else { P };
    let slot = (*x & ((1 << precision) - 1)) as usize;
    // SAFETY: `slot < 2^precision == table.len()`.
    let (freq, offset, symbol) = unsafe { table.get_unchecked(slot) };
    let y = freq * (*x >> precision) + offset;
    // Always read the next word; it is only consumed when the state needs it.
    // SAFETY: `2 <= *pos <= words.len()`, so both bytes are in bounds.
    let word = unsafe { words.as_ptr().add(*pos - 2).cast::<[u8; 2]>().read() };
    // Arithmetic rather than `if`: LLVM turns a select fed by a load into a branch, and
    // whether a lane refills is unpredictable.
    let refill = (y < STATE_LOW) as u32;
    let keep_refilled = refill.wrapping_neg();
    *x = (y << 16 | u16::from_le_bytes(word) as u32) & keep_refilled | y & !keep_refilled;
    *pos -= (refill as usize) << 1;
    symbol
}

/// Which SIMD decoder may run on wide streams: the best the CPU has, unless a test forces a
/// lesser one to compare it with the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Simd {
    /// Scalar steps only.
    Off,
    /// Eight lanes per vector; packed tables (precision <= 12) only.
    Avx2,
    /// Sixteen lanes per vector; every precision.
    Avx512,
}

impl Simd {
    fn best() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            if simd::avx512_available() {
                return Simd::Avx512;
            }
            if simd::avx2_available() {
                return Simd::Avx2;
            }
        }
        Simd::Off
    }
}

/// SIMD decoding and encoding of wide streams: vectors of states, table lookups by gather (or,
/// encoding with VBMI, by byte permutes from registers).
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{Interleave, Simd, SimdView, NARROW_SIMD_LANES, STATE_LOW, WIDE_LANES};
    use std::arch::x86_64::*;

    pub(super) fn avx2_available() -> bool {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("popcnt")
    }

    pub(super) fn avx512_available() -> bool {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("popcnt")
    }

    /// Decodes whole groups of `states.len()` symbols (32 or 64 lanes) with the best decoder
    /// `level` allows
    /// and the CPU has, while every lane surely has a word left; returns the number of symbols
    /// written to `out` (0 when no SIMD decoder applies). The table must be complete:
    /// `2^precision` entries (checked here, as everything else the kernels rely on).
    ///
    /// With `fuse` (and AVX-512), the symbols are written as elements of `fuse.out` instead
    /// of to `out`; the second value says whether that happened.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode(
        level: Simd,
        view: SimdView<'_>,
        precision: u32,
        states: &mut [u32],
        words: &[u8],
        pos: &mut usize,
        out: &mut [u8],
        fuse: Option<&mut Interleave<'_>>,
    ) -> (usize, bool) {
        let wide = match states.len() {
            NARROW_SIMD_LANES => false,
            WIDE_LANES => true,
            _ => return (0, false),
        };
        if *pos > words.len() || !(1..=16).contains(&precision) {
            return (0, false);
        }
        let size = 1usize << precision;
        let fuse = fuse
            .filter(|f| f.other.len() >= out.len() && f.out.len() >= 2 * out.len() && f.shift <= 8);
        let avx512 = level >= Simd::Avx512 && avx512_available();
        let split = matches!(view, SimdView::Split(..));
        let fused = avx512 && fuse.is_some();
        let (x, w) = (states, words);
        let n = match (view, fuse) {
            (SimdView::Packed(t), _) if t.len() != size || precision > 12 => 0,
            (SimdView::Split(t, s), _) if t.len() != size || s.len() < size + 3 => 0,
            // Two AVX-512 chains of 16 lanes do no better than four AVX2 chains of 8: 32-lane
            // packed planes go to AVX2 unless fused.
            (view, fuse) if avx512 && (wide || fuse.is_some() || split || !avx2_available()) => {
                let (entries, symbols) = match view {
                    SimdView::Packed(t) => (t, &[][..]),
                    SimdView::Split(t, s) => (t, s),
                };
                let sink = match fuse {
                    Some(f) => f.sink(out),
                    None => out.into(),
                };
                // SAFETY: AVX-512 F, BW and POPCNT are available, the table is checked above
                // (split symbols with their 3 bytes of padding), `x` has 16 V lanes, and
                // `fuse`'s slices are long enough (filtered above).
                unsafe {
                    match (wide, split) {
                        (true, false) => {
                            decode_avx512::<4, false>(entries, symbols, precision, x, w, pos, sink)
                        }
                        (true, true) => {
                            decode_avx512::<4, true>(entries, symbols, precision, x, w, pos, sink)
                        }
                        (false, false) => {
                            decode_avx512::<2, false>(entries, symbols, precision, x, w, pos, sink)
                        }
                        (false, true) => {
                            decode_avx512::<2, true>(entries, symbols, precision, x, w, pos, sink)
                        }
                    }
                }
            }
            // SAFETY: AVX2 and POPCNT are available, the packed table is checked above, and
            // `x` has 8 V lanes.
            (SimdView::Packed(t), _) if level >= Simd::Avx2 && avx2_available() => unsafe {
                match wide {
                    true => decode_avx2::<8>(t, precision, x, w, pos, out),
                    false => decode_avx2::<4>(t, precision, x, w, pos, out),
                }
            },
            _ => 0,
        };
        (n, fused && n > 0)
    }

    /// Where the AVX-512 decoder puts its symbols: a plane of `len` bytes, or (when `other`
    /// is not empty) `len` interleaved elements.
    pub(super) struct Sink<'a> {
        fused: bool,
        len: usize,
        plane: *mut u8,
        other: &'a [u8],
        elements: *mut u8,
        high: i32,
        low: i32,
        shift: u32,
        _out: std::marker::PhantomData<&'a mut [u8]>,
    }

    impl<'a> From<&'a mut [u8]> for Sink<'a> {
        fn from(plane: &'a mut [u8]) -> Self {
            Sink {
                fused: false,
                len: plane.len(),
                plane: plane.as_mut_ptr(),
                other: &[],
                elements: std::ptr::null_mut(),
                high: 0,
                low: 0,
                shift: 0,
                _out: std::marker::PhantomData,
            }
        }
    }

    impl Interleave<'_> {
        /// The sink writing `self.out`'s elements for a plane of `plane.len()` symbols (the
        /// caller checks `self.out` and `self.other` are long enough).
        fn sink<'a>(&'a mut self, plane: &'a mut [u8]) -> Sink<'a> {
            Sink {
                fused: true,
                len: plane.len(),
                plane: plane.as_mut_ptr(),
                other: self.other,
                elements: self.out.as_mut_ptr(),
                high: self.high as i32,
                low: self.low as i32,
                shift: self.shift,
                _out: std::marker::PhantomData,
            }
        }
    }

    /// The AVX-512 encoder of wide streams: the same words and states as the scalar steps.
    ///
    /// States are kept in vectors of sixteen lanes in descending lane order, the order the
    /// scalar encoder codes a group's lanes in, so a vector's flushed words are compressed
    /// straight into stream order. `x / freq` comes from a single-precision reciprocal (see
    /// `divide` and `code`). With AVX-512 VBMI, `encode_vbmi` looks the table entries up in
    /// registers; otherwise (and for a lone 32-lane group) `encode_avx512` gathers them.
    pub(super) struct Encoder {
        /// `freq | start << 16` per symbol.
        packed: [u32; 256],
        /// The bytes of `packed` as four tables (freq low, freq high, start low, start high)
        /// for `encode_vbmi`'s in-register lookups; `None` without AVX-512 VBMI and VBMI2.
        bytes: Option<ByteTables>,
        precision: u32,
        /// The states of lanes `16 v + 15` down to `16 v` in vector `v`.
        x: [[u32; 16]; WIDE_LANES / 16],
        /// Vectors in use: `lanes / 16`.
        vectors: usize,
    }

    impl Encoder {
        /// `None` unless AVX-512 F, BW and POPCNT are available, `12 <= precision <= 16`
        /// (all that wide streams use; `divide` needs quotients under 2^20) and every
        /// frequency fits 16 bits.
        ///
        /// With `lookup` (and AVX-512 VBMI and VBMI2), whole 64-symbol chunks go to
        /// `encode_vbmi`; tests turn it off to check the gather kernel too.
        pub(super) fn new(
            table: &[super::EncSymbol; 256],
            precision: u32,
            states: &[u32],
            lookup: bool,
        ) -> Option<Encoder> {
            let lanes = states.len();
            if !avx512_available()
                || !(12..=16).contains(&precision)
                || !(lanes == NARROW_SIMD_LANES || lanes == WIDE_LANES)
            {
                return None;
            }
            let scale = 1u32 << precision;
            let mut e = Encoder {
                packed: [0; 256],
                bytes: None,
                precision,
                x: [[0; 16]; WIDE_LANES / 16],
                vectors: lanes / 16,
            };
            // Absent symbols keep the zeros of `EncSymbol::default()`: frequency 0 codes
            // garbage (as the scalar steps do), never anything unsafe.
            for (s, sym) in table.iter().enumerate().filter(|(_, sym)| sym.x_max != 0) {
                let freq = scale - sym.cmpl_freq;
                let start = match freq {
                    1 => sym.bias - (scale - 1),
                    _ => sym.bias,
                };
                if freq > 0xffff {
                    // A lone symbol at precision 16: no 16-bit field holds its frequency.
                    return None;
                }
                e.packed[s] = freq | start << 16;
            }
            if lookup && vbmi_available() {
                let mut bytes = ByteTables([[0; 256]; 4]);
                for (s, &p) in e.packed.iter().enumerate() {
                    for (t, b) in bytes.0.iter_mut().zip(p.to_le_bytes()) {
                        t[s] = b;
                    }
                }
                e.bytes = Some(bytes);
            }
            for (v, x) in e.x.iter_mut().take(e.vectors).enumerate() {
                for (j, x) in x.iter_mut().enumerate() {
                    *x = states[16 * v + 15 - j];
                }
            }
            Some(e)
        }

        /// Codes `block` (whole groups of the lane count) backwards, storing words from
        /// `out[pos]`; returns the new end. `out` must hold `2 * block.len()` bytes from `pos`.
        pub(super) fn encode(&mut self, block: &[u8], out: &mut [u8], pos: usize) -> usize {
            assert!(
                block.chunks_exact(16 * self.vectors).remainder().is_empty()
                    && pos + 2 * block.len() <= out.len()
            );
            // `encode_vbmi` takes whole chunks of 64 symbols from the end (coding goes
            // backwards); a leading group of 32 lanes is left to the gather kernel.
            let split = match self.bytes {
                Some(_) => block.len() % 64,
                None => block.len(),
            };
            let (rest, chunks) = block.split_at(split);
            // SAFETY: `Encoder::new` checked the CPU features (VBMI and VBMI2 where `bytes`
            // is set); the space is asserted above, and the chunks' words end before the
            // rest's space.
            unsafe {
                let pos = match self.vectors {
                    2 => self.encode_vbmi::<2>(chunks, out, pos),
                    _ => self.encode_vbmi::<{ WIDE_LANES / 16 }>(chunks, out, pos),
                };
                match self.vectors {
                    2 => self.encode_avx512::<2>(rest, out, pos),
                    _ => self.encode_avx512::<{ WIDE_LANES / 16 }>(rest, out, pos),
                }
            }
        }

        /// Writes the states back in lane order (`states` as given to `new`).
        pub(super) fn finish(self, states: &mut [u32]) {
            for (v, x) in self.x.iter().take(self.vectors).enumerate() {
                for (j, &x) in x.iter().enumerate() {
                    states[16 * v + 15 - j] = x;
                }
            }
        }

        /// # Safety
        /// AVX-512 F, BW and POPCNT are available, `V` is `self.vectors`, `block.len()` is a
        /// multiple of `16 V` and `pos + 2 * block.len() <= out.len()`.
        #[target_feature(enable = "avx512f,avx512bw,popcnt")]
        unsafe fn encode_avx512<const V: usize>(
            &mut self,
            block: &[u8],
            out: &mut [u8],
            mut pos: usize,
        ) -> usize {
            let reverse_bytes = _mm_setr_epi8(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
            let low16 = _mm512_set1_epi32(0xffff);
            let precision = _mm_cvtsi32_si128(self.precision as i32);
            let to_x_max = _mm_cvtsi32_si128(32 - self.precision as i32);
            let scale = _mm512_set1_epi32(1 << self.precision);
            let mut x = [_mm512_setzero_si512(); V];
            for (x, s) in x.iter_mut().zip(&self.x) {
                // SAFETY: 16 `u32`s.
                *x = unsafe { _mm512_loadu_si512(s.as_ptr().cast()) };
            }
            for group in block.chunks_exact(16 * V).rev() {
                for v in (0..V).rev() {
                    // SAFETY: `16 v + 16 <= 16 V == group.len()`.
                    let bytes = unsafe { _mm_loadu_si128(group.as_ptr().add(16 * v).cast()) };
                    let sym = _mm512_cvtepu8_epi32(_mm_shuffle_epi8(bytes, reverse_bytes));
                    // SAFETY: symbols are below 256, the table's length.
                    let e =
                        unsafe { _mm512_i32gather_epi32::<4>(sym, self.packed.as_ptr().cast()) };
                    let freq = _mm512_and_si512(e, low16);
                    let start = _mm512_srli_epi32::<16>(e);
                    let flush = _mm512_cmpge_epu32_mask(x[v], _mm512_sll_epi32(freq, to_x_max));
                    let words = _mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(flush, x[v]));
                    // SAFETY: before this vector the block's earlier symbols advanced `pos` by
                    // at most 2 each, so `pos + 32 <=` the block's start + `2 * block.len()`.
                    unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(pos).cast(), words) };
                    pos += 2 * flush.count_ones() as usize;
                    let xs = _mm512_mask_srli_epi32::<16>(x[v], flush, x[v]);
                    x[v] = code(xs, freq, start, precision, scale);
                }
            }
            for (x, s) in x.iter().zip(self.x.iter_mut()) {
                // SAFETY: 16 `u32`s.
                unsafe { _mm512_storeu_si512(s.as_mut_ptr().cast(), *x) };
            }
            pos
        }
    }

    /// `vpermb` indices putting a 64-symbol chunk's bytes where `encode_vbmi`'s widening
    /// unpacks (which work within 128-bit lanes) turn them into four vectors of descending
    /// lanes: byte `16 k + 4 j + i` becomes lane `4 k + i` of vector `j` (`j`-th coded), which
    /// codes chunk byte `63 - 16 j - (4 k + i)`.
    const CHUNK_ORDER: [u8; 64] = {
        let mut order = [0u8; 64];
        let mut p = 0;
        while p < 64 {
            order[p] = (63 - 16 * ((p >> 2) & 3) - 4 * (p >> 4) - (p & 3)) as u8;
            p += 1;
        }
        order
    };

    /// The low words of two vectors of 32-bit lanes, `a`'s then `b`'s (`vpermt2w` indices).
    const LOW_WORDS: [u16; 32] = {
        let mut w = [0u16; 32];
        let mut i = 0;
        while i < 32 {
            w[i] = 2 * i as u16;
            i += 1;
        }
        w
    };

    /// Byte tables, one per byte of `Encoder::packed` (a 64-byte-aligned zmm each quarter).
    #[repr(align(64))]
    pub(super) struct ByteTables([[u8; 256]; 4]);

    fn vbmi_available() -> bool {
        std::is_x86_feature_detected!("avx512vbmi") && std::is_x86_feature_detected!("avx512vbmi2")
    }

    impl Encoder {
        /// The gather-free kernel: `freq` and `start` of 64 symbols at once by byte lookups
        /// from registers (`vpermi2b`: 128 entries per two registers, the top index bit
        /// choosing between two lookups), then the same steps as `encode_avx512`, the flushed
        /// words of two vectors compressed and stored together. Does nothing without `bytes`.
        ///
        /// # Safety
        /// AVX-512 F, BW, VBMI, VBMI2 and POPCNT are available if `self.bytes` is set, `V` is
        /// `self.vectors`, `block.len()` is a multiple of 64 and
        /// `pos + 2 * block.len() <= out.len()`.
        #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vbmi2,popcnt")]
        unsafe fn encode_vbmi<const V: usize>(
            &mut self,
            block: &[u8],
            out: &mut [u8],
            mut pos: usize,
        ) -> usize {
            let Some(bytes) = self.bytes.as_ref() else {
                return pos;
            };
            // SAFETY: each table is 256 bytes, four 64-byte loads.
            let t: [[__m512i; 4]; 4] = std::array::from_fn(|b| {
                std::array::from_fn(|q| unsafe {
                    _mm512_loadu_si512(bytes.0[b].as_ptr().add(64 * q).cast())
                })
            });
            // SAFETY: 64 bytes.
            let order = unsafe { _mm512_loadu_si512(CHUNK_ORDER.as_ptr().cast()) };
            // SAFETY: 32 `u16`s.
            let low_words = unsafe { _mm512_loadu_si512(LOW_WORDS.as_ptr().cast()) };
            let scale = _mm512_set1_epi32(1 << self.precision);
            let zero = _mm512_setzero_si512();
            let precision = _mm_cvtsi32_si128(self.precision as i32);
            let to_x_max = _mm_cvtsi32_si128(32 - self.precision as i32);
            let mut x = [zero; V];
            for (x, s) in x.iter_mut().zip(&self.x) {
                // SAFETY: 16 `u32`s.
                *x = unsafe { _mm512_loadu_si512(s.as_ptr().cast()) };
            }
            for chunk in block.rchunks_exact(64) {
                // SAFETY: 64 bytes.
                let idx = unsafe { _mm512_loadu_si512(chunk.as_ptr().cast()) };
                let idx = _mm512_permutexvar_epi8(order, idx);
                let high = _mm512_movepi8_mask(idx);
                let [f_lo, f_hi, s_lo, s_hi] = t.map(|t| {
                    _mm512_mask_blend_epi8(
                        high,
                        _mm512_permutex2var_epi8(t[0], idx, t[1]),
                        _mm512_permutex2var_epi8(t[2], idx, t[3]),
                    )
                });
                let freq_words = [
                    _mm512_unpacklo_epi8(f_lo, f_hi),
                    _mm512_unpackhi_epi8(f_lo, f_hi),
                ];
                let start_words = [
                    _mm512_unpacklo_epi8(s_lo, s_hi),
                    _mm512_unpackhi_epi8(s_lo, s_hi),
                ];
                let mut before = [zero; 4];
                let mut flushes = [0u16; 4];
                for j in 0..4 {
                    let (freq, start) = match j % 2 {
                        0 => (
                            _mm512_unpacklo_epi16(freq_words[j / 2], zero),
                            _mm512_unpacklo_epi16(start_words[j / 2], zero),
                        ),
                        _ => (
                            _mm512_unpackhi_epi16(freq_words[j / 2], zero),
                            _mm512_unpackhi_epi16(start_words[j / 2], zero),
                        ),
                    };
                    // With 32 lanes a chunk is two groups: vectors 1, 0, 1, 0.
                    let v = (3 - j) % V;
                    let flush = _mm512_cmpge_epu32_mask(x[v], _mm512_sll_epi32(freq, to_x_max));
                    before[j] = x[v];
                    flushes[j] = flush;
                    let xs = _mm512_mask_srli_epi32::<16>(x[v], flush, x[v]);
                    x[v] = code(xs, freq, start, precision, scale);
                }
                for pair in 0..2 {
                    let words = _mm512_permutex2var_epi16(
                        before[2 * pair],
                        low_words,
                        before[2 * pair + 1],
                    );
                    let flush = flushes[2 * pair] as u32 | (flushes[2 * pair + 1] as u32) << 16;
                    let words = _mm512_maskz_compress_epi16(flush, words);
                    // SAFETY: before this pair the chunk's and earlier chunks' symbols advanced
                    // `pos` by at most 2 each, and 32 symbols remain, so `pos + 64 <=` the
                    // block's start + `2 * block.len()`.
                    unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(pos).cast(), words) };
                    pos += 2 * flush.count_ones() as usize;
                }
            }
            for (x, s) in x.iter().zip(self.x.iter_mut()) {
                // SAFETY: 16 `u32`s.
                unsafe { _mm512_storeu_si512(s.as_mut_ptr().cast(), *x) };
            }
            pos
        }
    }

    /// The coding function C(s, x) = (x / freq) << precision | (x % freq + start) from
    /// `divide`'s quotient, `scale` being `2^precision`: where the quotient is one short, the
    /// remainder holds an extra `freq` and the state lacks `scale - freq`. Adding that last
    /// keeps the correction off the path from the quotient to the state.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn code(
        x: __m512i,
        freq: __m512i,
        start: __m512i,
        precision: __m128i,
        scale: __m512i,
    ) -> __m512i {
        let (q, r) = divide(x, freq);
        let short = _mm512_cmpge_epu32_mask(r, freq);
        let x = _mm512_add_epi32(_mm512_sll_epi32(q, precision), _mm512_add_epi32(r, start));
        _mm512_mask_add_epi32(x, short, x, _mm512_sub_epi32(scale, freq))
    }

    /// The quotient of `x / freq` or one less, and `x` minus `freq` times it, for quotients
    /// under 2^20 (`x < freq << 20`) and `0 < freq < 2^16`: a single-precision reciprocal
    /// instead of a division, whose latency (and throughput, about one 16-lane division per
    /// 5 cycles) dominated the encoder.
    ///
    /// `rcp14` is within 2^-14 of `1 / freq`; one Newton step towards `(1 - 2^-21) / freq`
    /// leaves it within 2^-21 + 2^-24 + 2^-28 below `1 / freq` and never above (its squared
    /// error and the bias are below, its rounding is under 2^-24). With the roundings of `x`
    /// and of the product (2^-24 each), `x * rcp` is below `x / freq` by under
    /// `2^20 * 11.1 * 2^-24 < 0.7`, so its truncation is the quotient or one less. Lanes with
    /// `freq == 0` give garbage, never a fault.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn divide(x: __m512i, freq: __m512i) -> (__m512i, __m512i) {
        let f = _mm512_cvtepu32_ps(freq);
        let r0 = _mm512_rcp14_ps(f);
        let e = _mm512_fnmadd_ps(f, r0, _mm512_set1_ps(1.0 - 1.0 / (1 << 21) as f32));
        let rcp = _mm512_fmadd_ps(r0, e, r0);
        let q = _mm512_cvttps_epu32(_mm512_mul_ps(_mm512_cvtepu32_ps(x), rcp));
        (q, _mm512_sub_epi32(x, _mm512_mullo_epi32(q, freq)))
    }

    /// `divide` on plain arrays, for tests; `None` without AVX-512.
    #[cfg(test)]
    pub(super) fn divide_lanes(x: [u32; 16], freq: [u32; 16]) -> Option<[(u32, u32); 16]> {
        if !avx512_available() {
            return None;
        }
        let (mut q, mut r) = ([0u32; 16], [0u32; 16]);
        // SAFETY: AVX-512 is available (checked above); the loads and stores are of 16 `u32`s.
        unsafe {
            let (vq, vr) = divide(
                _mm512_loadu_si512(x.as_ptr().cast()),
                _mm512_loadu_si512(freq.as_ptr().cast()),
            );
            _mm512_storeu_si512(q.as_mut_ptr().cast(), vq);
            _mm512_storeu_si512(r.as_mut_ptr().cast(), vr);
        }
        Some(std::array::from_fn(|i| (q[i], r[i])))
    }

    /// AVX-512 decoding: `V` vectors of sixteen lanes. Refills take the lanes' words in one
    /// `vpexpandd` of the next sixteen words, reversed (words are read backwards).
    ///
    /// With `SPLIT`, entries are `freq << 16 | offset` and the symbols are gathered from their
    /// own byte array; otherwise entries are packed as `freq << 20 | offset << 8 | symbol`.
    ///
    /// # Safety
    /// AVX-512 F, BW and POPCNT are available, `precision <= 16` (`<= 12` unless `SPLIT`),
    /// `entries.len() == 1 << precision`, with `SPLIT` `symbols.len() >= entries.len() + 3`,
    /// and `*pos <= words.len()`.
    #[target_feature(enable = "avx512f,avx512bw,popcnt")]
    unsafe fn decode_avx512<const V: usize, const SPLIT: bool>(
        entries: &[u32],
        symbols: &[u8],
        precision: u32,
        states: &mut [u32],
        words: &[u8],
        pos: &mut usize,
        out: Sink<'_>,
    ) -> usize {
        assert!(states.len() == 16 * V);
        debug_assert!(entries.len() == 1 << precision && *pos <= words.len());
        let mask = _mm512_set1_epi32((1 << precision) - 1);
        let shift = _mm_cvtsi32_si128(precision as i32);
        let low = _mm512_set1_epi32(STATE_LOW as i32);
        let offset_mask = _mm512_set1_epi32(if SPLIT { 0xffff } else { 0xfff });
        // Dword j's low word is word 15 - j of the window; its high word is zeroed by the mask.
        let reverse: [u16; 32] =
            std::array::from_fn(|i| if i % 2 == 0 { 15 - i as u16 / 2 } else { 0 });
        // SAFETY: 64 bytes from a 64-byte array.
        let reverse = unsafe { _mm512_loadu_si512(reverse.as_ptr().cast()) };
        let ptr = states.as_mut_ptr();
        let mut x = [_mm512_setzero_si512(); V];
        for (v, x) in x.iter_mut().enumerate() {
            // SAFETY: `states` holds `16 V` `u32`s.
            *x = unsafe { _mm512_loadu_si512(ptr.add(16 * v).cast()) };
        }
        let (keep_high, keep_low) = (_mm512_set1_epi32(out.high), _mm512_set1_epi32(out.low));
        let symbol_shift = _mm_cvtsi32_si128(out.shift as i32);
        let low8 = _mm512_set1_epi32(0xff);
        let mut p = *pos;
        let mut done = 0;
        while done + 16 * V <= out.len && p >= 32 * V {
            for (v, xv) in x.iter_mut().enumerate() {
                let slot = _mm512_and_si512(*xv, mask);
                // SAFETY: every slot is below `2^precision == entries.len()`.
                let e = unsafe { _mm512_i32gather_epi32::<4>(slot, entries.as_ptr().cast()) };
                let (freq, offset, symbol) = if SPLIT {
                    // SAFETY: 4 bytes from `slot < entries.len()`, and `symbols` has 3 more.
                    let s = unsafe { _mm512_i32gather_epi32::<1>(slot, symbols.as_ptr().cast()) };
                    (
                        _mm512_srli_epi32::<16>(e),
                        _mm512_and_si512(e, offset_mask),
                        s,
                    )
                } else {
                    let offset = _mm512_and_si512(_mm512_srli_epi32::<8>(e), offset_mask);
                    (_mm512_srli_epi32::<20>(e), offset, e)
                };
                let y = _mm512_add_epi32(
                    _mm512_mullo_epi32(freq, _mm512_srl_epi32(*xv, shift)),
                    offset,
                );
                let refill = _mm512_cmplt_epu32_mask(y, low);
                // SAFETY: the group started with `p >= 32 V` and each earlier vector took at most
                // 16 words (32 bytes), so `32 <= p <= words.len()` here.
                let window = unsafe {
                    _mm512_zextsi256_si512(_mm256_loadu_si256(words.as_ptr().add(p - 32).cast()))
                };
                let fresh = _mm512_maskz_expand_epi32(
                    refill,
                    _mm512_maskz_permutexvar_epi16(0x5555_5555, reverse, window),
                );
                *xv = _mm512_or_si512(_mm512_mask_slli_epi32::<16>(y, refill, y), fresh);
                p -= 2 * refill.count_ones() as usize;
                let at = done + 16 * v;
                if out.fused {
                    // SAFETY: `at + 16 <= done + 16 V <= out.len`, and the caller guarantees
                    // `out.other` has `out.len` bytes and `out.elements` `2 out.len`.
                    unsafe {
                        let o = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                            out.other.as_ptr().add(at).cast(),
                        ));
                        let hi = _mm512_slli_epi32::<8>(_mm512_and_si512(o, keep_high));
                        let s = _mm512_sll_epi32(_mm512_and_si512(symbol, low8), symbol_shift);
                        let lo = _mm512_and_si512(o, keep_low);
                        let e = _mm512_ternarylogic_epi32::<0xFE>(hi, lo, s);
                        _mm256_storeu_si256(
                            out.elements.add(2 * at).cast(),
                            _mm512_cvtepi32_epi16(e),
                        );
                    }
                } else {
                    // SAFETY: `at + 16 <= done + 16 V <= out.len`, the plane's length.
                    unsafe {
                        _mm_storeu_si128(out.plane.add(at).cast(), _mm512_cvtepi32_epi8(symbol))
                    };
                }
            }
            done += 16 * V;
        }
        for (v, &state) in x.iter().enumerate() {
            // SAFETY: as for the loads above.
            unsafe { _mm512_storeu_si512(ptr.add(16 * v).cast(), state) };
        }
        *pos = p;
        done
    }

    /// `pshufb` controls by refill mask: the lane with the k-th set bit (k counted from lane 0)
    /// takes the word ending `2k` bytes below the top of a 16-byte window (words are read
    /// backwards), zero-extended; other lanes get zero.
    #[repr(align(32))]
    struct RefillShuffles([[u8; 32]; 256]);

    static REFILL_SHUFFLES: RefillShuffles = RefillShuffles(refill_shuffles());

    const fn refill_shuffles() -> [[u8; 32]; 256] {
        let mut table = [[0x80u8; 32]; 256];
        let mut mask = 0;
        while mask < 256 {
            let mut rank = 0;
            let mut lane = 0;
            while lane < 8 {
                if mask & (1 << lane) != 0 {
                    // Both 128-bit halves hold the same window; lane 4h+d is dword d of half h.
                    table[mask][4 * lane] = 14 - 2 * rank;
                    table[mask][4 * lane + 1] = 15 - 2 * rank;
                    rank += 1;
                }
                lane += 1;
            }
            mask += 1;
        }
        table
    }

    /// Decodes whole groups of `8 V` symbols while every lane surely has a word left
    /// (`*pos >= 16 V` at the start of a group); returns the number of symbols written to `out`.
    ///
    /// # Safety
    /// AVX2 and POPCNT are available, `V` is even, `precision <= 12`, `table.len() == 1 << precision` with
    /// entries packed as `freq << 20 | offset << 8 | symbol`, and `*pos <= words.len()`.
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn decode_avx2<const V: usize>(
        table: &[u32],
        precision: u32,
        states: &mut [u32],
        words: &[u8],
        pos: &mut usize,
        out: &mut [u8],
    ) -> usize {
        assert!(8 * V == states.len() && V.is_multiple_of(2));
        debug_assert!(table.len() == 1 << precision && precision <= 12 && *pos <= words.len());
        let mask = _mm256_set1_epi32((1 << precision) - 1);
        let low12 = _mm256_set1_epi32(0xfff);
        let low8 = _mm256_set1_epi32(0xff);
        let shift = _mm_cvtsi32_si128(precision as i32);
        let zero = _mm256_setzero_si256();
        let interleave = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let ptr = states.as_mut_ptr().cast::<__m256i>();
        let mut x = [zero; V];
        for (v, x) in x.iter_mut().enumerate() {
            // SAFETY: `states` is `8 V` `u32`s (asserted above): V unaligned vectors.
            *x = unsafe { _mm256_loadu_si256(ptr.add(v)) };
        }
        let mut p = *pos;
        let mut done = 0;
        while done + 8 * V <= out.len() && p >= 16 * V {
            let mut e = [zero; V];
            for v in 0..V {
                let slot = _mm256_and_si256(x[v], mask);
                // SAFETY: every slot is at most `2^precision - 1`, below `table.len()`.
                e[v] = unsafe { _mm256_i32gather_epi32::<4>(table.as_ptr().cast::<i32>(), slot) };
                let freq = _mm256_srli_epi32::<20>(e[v]);
                let offset = _mm256_and_si256(_mm256_srli_epi32::<8>(e[v]), low12);
                let y = _mm256_add_epi32(
                    _mm256_mullo_epi32(freq, _mm256_srl_epi32(x[v], shift)),
                    offset,
                );
                let refill = _mm256_cmpeq_epi32(_mm256_srli_epi32::<16>(y), zero);
                let bits = _mm256_movemask_ps(_mm256_castsi256_ps(refill)) as usize;
                // SAFETY: the group started with `p >= 16 V` and the earlier vectors of the group
                // took at most 8 words (16 bytes) each, so `16 <= p <= words.len()` here.
                let window = unsafe {
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(
                        words.as_ptr().add(p - 16).cast::<__m128i>(),
                    ))
                };
                // SAFETY: `bits < 256`; the table is 32-byte aligned.
                let control = unsafe {
                    _mm256_load_si256(REFILL_SHUFFLES.0.as_ptr().add(bits).cast::<__m256i>())
                };
                let word = _mm256_shuffle_epi8(window, control);
                let shifted = _mm256_blendv_epi8(y, _mm256_slli_epi32::<16>(y), refill);
                x[v] = _mm256_or_si256(shifted, word);
                p -= 2 * bits.count_ones() as usize;
            }
            // Symbols are the entries' low bytes: narrow each pair of vectors to 16 bytes.
            for pair in 0..V / 2 {
                let (a, b) = (e[2 * pair], e[2 * pair + 1]);
                let words16 =
                    _mm256_packus_epi32(_mm256_and_si256(a, low8), _mm256_and_si256(b, low8));
                let bytes =
                    _mm256_permutevar8x32_epi32(_mm256_packus_epi16(words16, words16), interleave);
                // SAFETY: `done + 16 * pair + 16 <= done + 8 V <= out.len()`.
                unsafe {
                    _mm_storeu_si128(
                        out.as_mut_ptr().add(done + 16 * pair).cast::<__m128i>(),
                        _mm256_castsi256_si128(bytes),
                    )
                };
            }
            done += 8 * V;
        }
        for (v, &state) in x.iter().enumerate() {
            // SAFETY: as for the loads above.
            unsafe { _mm256_storeu_si256(ptr.add(v), state) };
        }
        *pos = p;
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// splitmix64, so test planes are deterministic.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn uniform(&mut self) -> f64 {
            ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        fn gauss(&mut self) -> f64 {
            (-2.0 * self.uniform().ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    /// Draws `len` symbols with the given weights over symbols `first..`.
    fn categorical(rng: &mut Rng, len: usize, first: u8, weights: &[u32]) -> Vec<u8> {
        let total: u64 = weights.iter().map(|&w| w as u64).sum();
        (0..len)
            .map(|_| {
                let mut r = rng.below(total);
                for (i, &w) in weights.iter().enumerate() {
                    if r < w as u64 {
                        return first.wrapping_add(i as u8);
                    }
                    r -= w as u64;
                }
                first
            })
            .collect()
    }

    /// MXFP4 codes of Gaussian weights, one code per byte.
    fn fp4_plane(rng: &mut Rng, len: usize) -> Vec<u8> {
        const GRID: [f64; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
        let mut out = Vec::with_capacity(len + 32);
        while out.len() < len {
            let block: Vec<f64> = (0..32).map(|_| rng.gauss()).collect();
            let max = block.iter().fold(0f64, |m, v| m.max(v.abs()));
            let scale = (max.log2().floor() - 2.0).exp2();
            for v in block {
                let a = (v.abs() / scale).min(6.0);
                let idx =
                    (0..8).min_by(|&i, &j| (GRID[i] - a).abs().total_cmp(&(GRID[j] - a).abs()));
                out.push(idx.unwrap() as u8 | if v < 0.0 { 8 } else { 0 });
            }
        }
        out.truncate(len);
        out
    }

    /// E8M0 block scales in the proportions of a real MXFP4 layer (about 1.55 bits/symbol).
    fn e8m0_plane(rng: &mut Rng, len: usize) -> Vec<u8> {
        categorical(
            rng,
            len,
            118,
            &[1, 21, 4953, 28921, 24731, 2743, 64, 5, 0, 1],
        )
    }

    /// Exponent bytes of f32 Gaussian weights (about 2.5 bits/symbol).
    fn exponent_plane(rng: &mut Rng, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| (((rng.gauss() * 0.02) as f32).to_bits() >> 23) as u8)
            .collect()
    }

    /// All but one symbol equal, the odd one at `at`.
    fn one_in(len: usize, at: usize) -> Vec<u8> {
        let mut v = vec![0x42u8; len];
        v[at] = 0x17;
        v
    }

    /// A variety of planes: every shape the coder is meant for, and the awkward ones.
    fn planes(rng: &mut Rng, len: usize) -> Vec<Vec<u8>> {
        let mut v = vec![
            vec![9u8; len],
            rng.bytes(len),
            fp4_plane(rng, len),
            e8m0_plane(rng, len),
            exponent_plane(rng, len),
            (0..len).map(|_| (rng.next() & 1) as u8 * 255).collect(),
            categorical(rng, len, 3, &[1000, 1]),
            (0..len).map(|i| (i % 256) as u8).collect(),
        ];
        if len > 0 {
            v.push(one_in(len, 0));
            v.push(one_in(len, len - 1));
            v.push(one_in(len, len / 2));
        }
        v
    }

    fn encoded(symbols: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(symbols, &Histogram::of(symbols), &mut out);
        out
    }

    /// Encodes with a forced precision and lane count.
    fn encoded_with(symbols: &[u8], precision: u32, lanes: usize) -> Vec<u8> {
        let hist = Histogram::of(symbols);
        let plan = Plan {
            lanes,
            ..Plan::at(&hist, precision, SmallPlanes::Compact)
        };
        let mut out = Vec::new();
        encode_plan(symbols, &plan, &mut out);
        out
    }

    /// Decodes with only the checked step (no fast loop), for comparison with `decode`.
    fn decode_checked(input: &[u8], out: &mut [u8]) -> Result<(), CorruptStream> {
        match input.first() {
            Some(&tag) if is_rans(tag) && !out.is_empty() => {
                let (table, stream) = parse(tag, &input[1..])?;
                let mut scratch = Scratch::default();
                build_slots(&table, stream.precision, &mut scratch)?;
                let (words, mut states) = (stream.words, stream.states);
                let mut pos = words.len();
                let lanes = states.len();
                let p = stream.precision;
                for (i, symbol) in out.iter_mut().enumerate() {
                    *symbol = if p <= PACKED_MAX_PRECISION {
                        step(
                            &Packed(&scratch.entries),
                            p,
                            &mut states[i % lanes],
                            words,
                            &mut pos,
                        )?
                    } else {
                        let split = Split {
                            entries: &scratch.entries,
                            symbols: &scratch.symbols,
                        };
                        step(&split, p, &mut states[i % lanes], words, &mut pos)?
                    };
                }
                finish(&states, pos)
            }
            _ => decode(input, out),
        }
    }

    /// Obviously-right encoder: plain 64-bit division, words pushed one by one.
    fn reference_encode(symbols: &[u8], precision: u32, lanes: usize) -> Vec<u8> {
        let hist = Histogram::of(symbols);
        let freqs = normalize(&hist, precision);
        let mut start = [0u64; 256];
        let mut acc = 0;
        for s in 0..256 {
            start[s] = acc;
            acc += freqs[s] as u64;
        }
        let mut out = vec![tag(precision, lanes)];
        write_table(&freqs, &mut out);
        let mut x = vec![STATE_LOW as u64; lanes];
        for (i, &s) in symbols.iter().enumerate().rev() {
            let f = freqs[s as usize] as u64;
            let lane = i % lanes;
            if x[lane] >= f << (32 - precision) {
                out.extend_from_slice(&(x[lane] as u16).to_le_bytes());
                x[lane] >>= 16;
            }
            x[lane] = ((x[lane] / f) << precision) + x[lane] % f + start[s as usize];
            assert!((STATE_LOW as u64..1 << 32).contains(&x[lane]));
        }
        for state in x {
            out.extend_from_slice(&(state as u32).to_le_bytes());
        }
        out
    }

    /// Obviously-right decoder: finds each slot's symbol by linear search.
    fn reference_decode(input: &[u8], len: usize) -> Option<Vec<u8>> {
        let tag = input[0];
        let lanes = tag_lanes(tag)?;
        let precision = (tag >> 4) as u32 + 1;
        let (table, used) = match tag & 3 {
            KIND_RANS_NIBBLES => read_nibble_tables(&input[1..], precision).ok()?,
            _ => read_table(&input[1..], precision).ok()?,
        };
        let body = &input[1 + used..];
        let (words, state_bytes) = body.split_at(body.len() - 4 * lanes);
        let mut x: Vec<u64> = state_bytes
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as u64)
            .collect();
        let mut pos = words.len();
        let mut out = Vec::new();
        for i in 0..len {
            let lane = i % lanes;
            let slot = x[lane] % (1 << precision);
            let mut start = 0u64;
            for (&s, &f) in table.symbols.iter().zip(&table.freqs) {
                if slot < start + f as u64 {
                    out.push(s);
                    x[lane] = f as u64 * (x[lane] >> precision) + slot - start;
                    break;
                }
                start += f as u64;
            }
            if x[lane] < STATE_LOW as u64 {
                pos = pos.checked_sub(2)?;
                x[lane] = x[lane] << 16 | u16::from_le_bytes([words[pos], words[pos + 1]]) as u64;
            }
        }
        (pos == 0 && x.iter().all(|&s| s == STATE_LOW as u64)).then_some(out)
    }

    /// Round trip through both decoders, with bytes already in `out` before the stream.
    fn check_roundtrip(symbols: &[u8]) -> Vec<u8> {
        let hist = Histogram::of(symbols);
        let mut stream = vec![0xA5, 0x5A];
        encode(symbols, &hist, &mut stream);
        assert_eq!(&stream[..2], &[0xA5, 0x5A]);
        let stream = stream.split_off(2);
        let mut out = vec![0u8; symbols.len()];
        decode(&stream, &mut out).unwrap();
        assert!(out == symbols, "round trip failed for {hist:?}");
        out.fill(0);
        decode_checked(&stream, &mut out).unwrap();
        assert!(out == symbols);
        stream
    }

    #[test]
    fn size_bound_counts_symbols_and_runs_as_a_plain_loop() {
        let mut rng = Rng(77);
        for density in [1u64, 3, 10, 50, 90, 100] {
            for _ in 0..40 {
                let mut hist = Histogram {
                    counts: [0; 256],
                    total: 0,
                };
                for c in hist.counts.iter_mut() {
                    *c = (rng.next() % 100 < density) as u32 * 3;
                    hist.total += *c as usize;
                }
                // The loop the bound used before counting on the presence set.
                let (mut distinct, mut runs, mut prev) = (0usize, 0usize, false);
                for &c in &hist.counts {
                    let here = c > 0;
                    distinct += here as usize;
                    runs += (here && !prev) as usize;
                    prev = here;
                }
                let set = if symbols_as_list(distinct, runs) {
                    distinct
                } else {
                    2 * runs
                };
                let table = 1 + set + (4 * distinct.saturating_sub(1)).div_ceil(8);
                let info = 1000.0;
                let any = 1
                    + table
                    + payload_bytes(info, lanes_for(info, SmallPlanes::Compact)).round() as usize;
                assert_eq!(encoded_size_bound(&hist, info, SmallPlanes::Compact).0, any);
            }
        }
    }

    #[test]
    fn empty_and_constant() {
        assert!(check_roundtrip(&[]).is_empty());
        assert_eq!(encoded_size(&Histogram::of(&[])), 0);
        for len in [1, 2, 7, 1000, 300_000] {
            let v = vec![200u8; len];
            assert_eq!(check_roundtrip(&v), vec![KIND_CONSTANT, 200]);
            assert_eq!(encoded_size(&Histogram::of(&v)), 2);
        }
        assert!(decode(&[], &mut [0u8; 3]).is_err());
        assert!(decode(&[KIND_CONSTANT, 1], &mut []).is_err());
    }

    #[test]
    fn round_trips_all_shapes_and_sizes() {
        let mut rng = Rng(1);
        let sizes = [
            1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 100, 255, 1000, 4095, 4097, 65_537,
        ];
        for len in sizes {
            for plane in planes(&mut rng, len) {
                check_roundtrip(&plane);
            }
        }
        for len in [131_071, 300_001] {
            for plane in planes(&mut rng, len) {
                check_roundtrip(&plane);
            }
        }
    }

    #[test]
    fn all_lane_counts_and_precisions_round_trip() {
        let mut rng = Rng(2);
        for len in [1, 2, 9, 33, 1000, 20_001] {
            for plane in planes(&mut rng, len)
                .into_iter()
                .filter(|p| Histogram::of(p).distinct() > 1)
            {
                let min_precision = ceil_log2(Histogram::of(&plane).distinct());
                for precision in [min_precision, 9, 12, 13, 14, 15, 16] {
                    for lanes in LANE_COUNTS.into_iter().chain(FEW_LANE_COUNTS) {
                        let precision = precision.max(min_precision);
                        let stream = encoded_with(&plane, precision, lanes);
                        let mut out = vec![0u8; len];
                        decode(&stream, &mut out).unwrap();
                        assert_eq!(out, plane);
                    }
                }
            }
        }
    }

    #[test]
    fn simd_encoder_matches_scalar_encoder() {
        let mut rng = Rng(15);
        for len in [64, 65, 96, 127, 4096, 4160, 70_001, 262_144] {
            for plane in planes(&mut rng, len)
                .into_iter()
                .filter(|p| Histogram::of(p).distinct() > 1)
            {
                let min_precision = ceil_log2(Histogram::of(&plane).distinct());
                for precision in [min_precision, 9, 12, 13, 14, 15, 16] {
                    for lanes in [NARROW_SIMD_LANES, WIDE_LANES] {
                        let plan = Plan {
                            lanes,
                            ..Plan::at(
                                &Histogram::of(&plane),
                                precision.max(min_precision),
                                SmallPlanes::Compact,
                            )
                        };
                        let mut slow = Vec::new();
                        encode_plan_at(&plane, &plan, &mut slow, Simd::Off);
                        // Both AVX-512 kernels: register lookups and gathers.
                        for lookup in [true, false] {
                            let mut fast = Vec::new();
                            encode_plan_with(&plane, &plan, &mut fast, Simd::best(), lookup);
                            assert!(
                                fast == slow,
                                "len {len} precision {precision} lanes {lanes} lookup {lookup}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_division_is_at_most_one_short() {
        let mut rng = Rng(16);
        // The encoder divides states below `freq << (32 - precision)` (unflushed) or 2^16
        // (flushed); every frequency a table at 12..=16 bits can hold, at the extremes and
        // around multiples of the frequency (where a quotient off by one shows), near the top
        // (where the reciprocal's relative error is largest) and at random.
        for precision in 12..=MAX_PRECISION {
            let mut pending: Vec<(u32, u32)> = Vec::new();
            for f in 1..=(1u32 << precision).min(0xffff) {
                let limit = ((f as u64) << (32 - precision)).min(1 << 32);
                let top = (limit - 1) / f as u64;
                let ks = [
                    1,
                    2,
                    3,
                    top - 2,
                    top - 1,
                    top,
                    1 + rng.below(top),
                    1 + rng.below(top),
                ];
                let xs = ks
                    .iter()
                    .flat_map(|&k| [k * f as u64 - 1, k * f as u64, k * f as u64 + 1])
                    .chain([0, 0xffff, limit - 1]);
                pending.extend(xs.filter(|&x| x < limit).map(|x| (x as u32, f)));
            }
            for chunk in pending.chunks(16) {
                let x = std::array::from_fn(|i| chunk.get(i).map_or(0, |c| c.0));
                let freq = std::array::from_fn(|i| chunk.get(i).map_or(1, |c| c.1));
                let Some(qr) = simd::divide_lanes(x, freq) else {
                    return;
                };
                for i in 0..16 {
                    let (q, r) = (x[i] / freq[i], x[i] % freq[i]);
                    assert!(
                        qr[i] == (q, r) || q > 0 && qr[i] == (q - 1, r + freq[i]),
                        "{} / {} at precision {precision}: {:?}",
                        x[i],
                        freq[i],
                        qr[i]
                    );
                }
            }
        }
    }

    /// `decode_interleaved` as plain decode and a scalar merge.
    fn interleaved_reference(
        input: &[u8],
        other: &[u8],
        high: u8,
        low: u8,
        shift: u32,
    ) -> Option<Vec<u8>> {
        let mut plane = vec![0u8; other.len()];
        decode(input, &mut plane).ok()?;
        Some(
            plane
                .iter()
                .zip(other)
                .flat_map(|(&s, &o)| {
                    ((((o & high) as u16) << 8) | (o & low) as u16 | (s as u16) << shift)
                        .to_le_bytes()
                })
                .collect(),
        )
    }

    #[test]
    fn interleaved_decode_matches_decode_and_merge() {
        let mut rng = Rng(17);
        for len in [1, 63, 64, 65, 1000, 40_000, 131_072] {
            for plane in planes(&mut rng, len) {
                let other = rng.bytes(len);
                let mut stream = encoded(&plane);
                for corrupt in [false, true] {
                    if corrupt {
                        let at = rng.below(stream.len() as u64) as usize;
                        stream[at] ^= 1 << rng.below(8);
                    }
                    for (high, low, shift) in [(0x80, 0x7f, 7), (0, 0xff, 8), (0xff, 0, 0)] {
                        let want = interleaved_reference(&stream, &other, high, low, shift);
                        let mut elements = vec![0u8; 2 * len];
                        let mut out = vec![0u8; len];
                        let mut with = Interleave {
                            other: &other,
                            high,
                            low,
                            shift,
                            out: &mut elements,
                        };
                        let got = decode_interleaved(&stream, &mut out, &mut with);
                        assert_eq!(got.is_ok(), want.is_some());
                        if let (Ok(n), Some(want)) = (got, want) {
                            assert!(n % NARROW_SIMD_LANES == 0 && n <= len);
                            // The rest is the plane's, to merge as usual.
                            for (i, (&s, &o)) in out.iter().zip(&other).enumerate().skip(n) {
                                let e = (((o & high) as u16) << 8)
                                    | (o & low) as u16
                                    | (s as u16) << shift;
                                elements[2 * i..2 * i + 2].copy_from_slice(&e.to_le_bytes());
                            }
                            assert!(elements == want, "len {len}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn fast_encoder_matches_reference_encoder() {
        let mut rng = Rng(3);
        for len in [1, 5, 8, 77, 5000, 70_001] {
            for plane in planes(&mut rng, len)
                .into_iter()
                .filter(|p| Histogram::of(p).distinct() > 1)
            {
                for (precision, lanes) in [
                    (8, 1),
                    (12, 8),
                    (12, NARROW_SIMD_LANES),
                    (14, NARROW_SIMD_LANES),
                    (14, WIDE_LANES),
                    (16, 8),
                    (16, 1),
                    (12, WIDE_LANES),
                    (9, WIDE_LANES),
                    (16, WIDE_LANES),
                ] {
                    let fast = encoded_with(&plane, precision, lanes);
                    assert_eq!(fast, reference_encode(&plane, precision, lanes));
                }
            }
        }
    }

    #[test]
    fn reference_decoder_reads_fast_encoder() {
        let mut rng = Rng(4);
        for len in [1, 6, 64, 3001, 100_003] {
            for plane in planes(&mut rng, len)
                .into_iter()
                .filter(|p| Histogram::of(p).distinct() > 1)
            {
                let stream = encoded(&plane);
                assert_eq!(reference_decode(&stream, len), Some(plane));
            }
        }
    }

    /// Decodes with the unchecked loops and at most the `simd` decoder, for comparison with
    /// `decode` (which takes the best one).
    fn decode_at(input: &[u8], out: &mut [u8], simd: Simd) -> Result<(), CorruptStream> {
        match input.first() {
            Some(&tag) if is_rans(tag) && !out.is_empty() => {
                let (table, stream) = parse(tag, &input[1..])?;
                let mut scratch = Scratch::default();
                build_slots(&table, stream.precision, &mut scratch)?;
                if stream.precision <= PACKED_MAX_PRECISION {
                    decode_slots(&Packed(&scratch.entries), &stream, out, simd, None).map(|_| ())
                } else {
                    let split = Split {
                        entries: &scratch.entries,
                        symbols: &scratch.symbols,
                    };
                    decode_slots(&split, &stream, out, simd, None).map(|_| ())
                }
            }
            _ => decode(input, out),
        }
    }

    #[test]
    fn simd_scalar_and_checked_paths_agree() {
        let mut rng = Rng(14);
        for len in [31, 32, 33, 63, 64, 65, 100, 1000, 4097, 40_000, 131_072] {
            for plane in planes(&mut rng, len)
                .into_iter()
                .filter(|p| Histogram::of(p).distinct() > 1)
            {
                let min_precision = ceil_log2(Histogram::of(&plane).distinct());
                for (precision, lanes) in [8, 10, 12, 13, 14, 16]
                    .into_iter()
                    .flat_map(|p| [(p, NARROW_SIMD_LANES), (p, WIDE_LANES)])
                {
                    let stream = encoded_with(&plane, precision.max(min_precision), lanes);
                    let mut bad = stream.clone();
                    let at = rng.below(bad.len() as u64) as usize;
                    bad[at] ^= 1 << rng.below(8);
                    for input in [&stream, &bad] {
                        let mut outs = [(); 5].map(|_| vec![0u8; len]);
                        let [a, b, c, d, e] = &mut outs;
                        let results = [
                            decode(input, a).is_ok(),
                            decode_at(input, b, Simd::Off).is_ok(),
                            decode_at(input, c, Simd::Avx2).is_ok(),
                            decode_at(input, d, Simd::Avx512).is_ok(),
                            decode_checked(input, e).is_ok(),
                        ];
                        assert!(results.iter().all(|&r| r == results[0]));
                        if results[0] {
                            assert!(outs.iter().all(|o| *o == outs[0]));
                        }
                    }
                    let mut out = vec![0u8; len];
                    decode(&stream, &mut out).unwrap();
                    assert!(out == plane);
                }
            }
        }
    }

    #[test]
    fn reciprocal_division_is_exact() {
        let mut rng = Rng(5);
        for precision in [1, 8, 12, 16] {
            let scale = 1u32 << precision;
            for freq in (1..scale)
                .step_by(((scale / 997) as usize).max(1))
                .chain([1, 2, 3, scale - 1])
                .filter(|&f| f < scale)
            {
                let sym = EncSymbol::new(scale - freq, freq, precision);
                let xs = (0..200).map(|_| rng.below(sym.x_max as u64) as u32);
                for x in xs
                    .chain([STATE_LOW, sym.x_max - 1])
                    .filter(|&x| x >= STATE_LOW)
                {
                    let want = ((x / freq) << precision) + x % freq + (scale - freq);
                    assert_eq!(
                        advance(x, &sym),
                        want,
                        "x {x} freq {freq} precision {precision}"
                    );
                }
            }
        }
    }

    #[test]
    fn normalize_is_optimal() {
        // Greedy from all ones by exact marginal gain is optimal for this separable concave
        // objective; it is too slow for real use but a fine oracle.
        let mut rng = Rng(6);
        for round in 0..240 {
            // Every sixth: all 256 values, many rare (held at one slot each: the table
            // starts far over its total, as FP4 tables do).
            let k = match round % 6 {
                0 => 256,
                _ => 2 + rng.below(40) as usize,
            };
            let weights: Vec<u32> = (0..k)
                .map(|_| 1 + (rng.below(1000) as u32).pow(2) / 1000)
                .collect();
            let len = 1 + rng.below(5000) as usize;
            let plane = categorical(&mut rng, len, 0, &weights);
            let hist = Histogram::of(&plane);
            if hist.distinct() < 2 {
                continue;
            }
            let precision = ceil_log2(hist.distinct()) + rng.below(4) as u32;
            let fast = normalize(&hist, precision);
            let mut oracle = hist.counts.map(|c| (c > 0) as u32);
            for _ in hist.distinct()..1 << precision {
                let gain = |s: usize| hist.counts[s] as f64 * (1.0 / oracle[s] as f64).ln_1p();
                let best = (0..256)
                    .filter(|&s| hist.counts[s] > 0)
                    .max_by(|&a, &b| gain(a).total_cmp(&gain(b)));
                oracle[best.unwrap()] += 1;
            }
            assert_eq!(fast.iter().sum::<u32>(), 1 << precision);
            assert!(fast
                .iter()
                .zip(&hist.counts)
                .all(|(&f, &c)| (f > 0) == (c > 0)));
            let (a, b) = (
                info_bits(&hist, &fast, precision),
                info_bits(&hist, &oracle, precision),
            );
            assert!(a <= b + 1e-6 * b.max(1.0), "normalize {a} > oracle {b}");
        }
    }

    #[test]
    fn tables_round_trip_with_exact_size() {
        let mut rng = Rng(13);
        for _ in 0..2000 {
            let precision = 8 + rng.below(9) as u32;
            let density = 1 + rng.below(256);
            let mut counts = [0u32; 256];
            for c in counts.iter_mut() {
                if rng.below(256) < density {
                    *c = 1 + (rng.below(1 << 20) >> rng.below(20)) as u32;
                }
            }
            let hist = Histogram {
                counts,
                total: counts.iter().map(|&c| c as usize).sum(),
            };
            if hist.distinct() < 2 {
                continue;
            }
            let freqs = normalize(&hist, precision);
            let mut out = Vec::new();
            write_table(&freqs, &mut out);
            assert_eq!(out.len(), table_bytes(&freqs));
            let (table, used) = read_table(&out, precision).unwrap();
            assert_eq!(used, out.len());
            let present: Vec<u8> = (0..=255).filter(|&s| freqs[s as usize] > 0).collect();
            assert_eq!(&*table.symbols, &present[..]);
            assert!(table
                .symbols
                .iter()
                .zip(&table.freqs)
                .all(|(&s, &f)| freqs[s as usize] == f));
        }
    }

    #[test]
    fn extreme_skew_costs_a_few_bytes() {
        for len in [200_000, 262_144] {
            for at in [0, 1, len / 3, len - 1] {
                let plane = one_in(len, at);
                let stream = check_roundtrip(&plane);
                assert!(stream.len() <= 14, "{} bytes for 1 in {len}", stream.len());
            }
        }
        let mut rng = Rng(7);
        // About 0.01 bits/symbol (an XOR delta of near-identical checkpoints).
        let plane = categorical(&mut rng, 200_000, 0, &[100_000, 40, 30, 20, 10]);
        let stream = check_roundtrip(&plane);
        let hist = Histogram::of(&plane);
        assert!((stream.len() as f64) < hist.entropy_bytes() * 1.05 + 48.0);
    }

    #[test]
    fn cost_within_one_percent_of_entropy() {
        let mut rng = Rng(8);
        for (name, plane) in [
            ("fp4", fp4_plane(&mut rng, 128 * 1024)),
            ("e8m0", e8m0_plane(&mut rng, 128 * 1024)),
            ("exponent", exponent_plane(&mut rng, 128 * 1024)),
        ] {
            let hist = Histogram::of(&plane);
            let stream = check_roundtrip(&plane);
            let plan = Plan::new(&hist, SmallPlanes::Compact);
            let coded = (stream.len() - 1 - plan.table_bytes) as f64;
            let ratio = coded / hist.entropy_bytes();
            assert!(ratio < 1.01, "{name}: {ratio} of entropy ({hist:?})");
            assert!(
                plan.table_bytes < 64,
                "{name}: table {} bytes",
                plan.table_bytes
            );
        }
    }

    #[test]
    fn encoded_size_matches_encode() {
        let mut rng = Rng(9);
        for len in [1, 3, 10, 100, 1000, 10_000, 65_536, 131_072, 262_144] {
            for plane in planes(&mut rng, len) {
                let hist = Histogram::of(&plane);
                let (estimate, actual) = (encoded_size(&hist) as f64, encoded(&plane).len() as f64);
                let slack = 0.002 * actual + 12.0;
                assert!(
                    (estimate - actual).abs() <= slack,
                    "estimate {estimate} actual {actual} {hist:?}"
                );
            }
        }
    }

    #[test]
    fn small_payloads_get_few_lanes_and_bad_lane_codes_fail() {
        let mut rng = Rng(31);
        // About 1.55 bits a symbol: 3.5 KB of payload, two lanes; 5.8 KB, four.
        for (len, lanes) in [(18_432, 2), (30_000, 4)] {
            let plane = e8m0_plane(&mut rng, len);
            let stream = encoded(&plane);
            assert_eq!(stream[0] & 3, KIND_RANS_FEW_LANES);
            assert_eq!(tag_lanes(stream[0]), Some(lanes));
            // K/V pages keep eight lanes on such planes.
            let fast = plan(&Histogram::of(&plane), SmallPlanes::Fast).unwrap();
            assert_eq!(fast.lanes, 8);
            let mut out = vec![0u8; len];
            decode(&stream, &mut out).unwrap();
            assert_eq!(out, plane);
            // The few-lane kind has lane codes 0 and 1 only.
            for code in [2u8, 3] {
                let mut bad = stream.clone();
                bad[0] = bad[0] & !0b1100 | code << 2;
                assert!(decode(&bad, &mut out).is_err());
            }
        }
    }

    #[test]
    fn truncations_and_lying_lengths_fail() {
        let mut rng = Rng(10);
        let mut streams: Vec<(Vec<u8>, usize)> = Vec::new();
        for len in [1, 2, 9, 300, 2000] {
            for plane in planes(&mut rng, len) {
                streams.push((encoded(&plane), len));
            }
            streams.push((encoded_with(&fp4_plane(&mut rng, len), 12, 8), len));
        }
        for (stream, len) in streams {
            for cut in 0..stream.len() {
                let mut out = vec![0u8; len];
                assert!(
                    decode(&stream[..cut], &mut out).is_err(),
                    "truncated to {cut} decoded"
                );
            }
            for other in [len - 1, len + 1, len + 8, 2 * len] {
                let mut out = vec![0u8; other];
                let _ = decode(&stream, &mut out);
                if is_rans(stream[0]) && other != len {
                    // Lanes must all return to their start with every word used: a wrong length
                    // can only pass by coincidence, and these streams were checked not to.
                    assert!(
                        decode(&stream, &mut out).is_err(),
                        "length {other} for {len} decoded"
                    );
                }
            }
        }
    }

    #[test]
    fn corrupted_streams_never_panic_and_both_paths_agree() {
        let mut rng = Rng(11);
        let mut originals = Vec::new();
        for len in [5, 64, 1000, 40_000] {
            originals.extend(
                planes(&mut rng, len)
                    .into_iter()
                    .map(|p| (encoded(&p), len)),
            );
        }
        let mut rejected = 0;
        let mut tries = 0;
        for (stream, len) in &originals {
            for _ in 0..60 {
                let mut bad = stream.clone();
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(bad.len() as u64) as usize;
                    bad[at] ^= 1 << rng.below(8);
                }
                let (mut fast, mut slow) = (vec![0u8; *len], vec![0u8; *len]);
                let (a, b) = (decode(&bad, &mut fast), decode_checked(&bad, &mut slow));
                assert_eq!(a.is_ok(), b.is_ok());
                if a.is_ok() {
                    assert_eq!(fast, slow);
                }
                tries += 1;
                rejected += a.is_err() as usize;
            }
        }
        // Flips in the last bits of a state can legitimately decode to other symbols, but most
        // corruption must be caught.
        assert!(
            rejected * 10 >= tries * 8,
            "only {rejected} of {tries} flips rejected"
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(12);
        for _ in 0..20_000 {
            let len = rng.below(80) as usize;
            let mut input = rng.bytes(len);
            if let Some(tag) = input.first_mut() {
                if rng.below(2) == 0 {
                    *tag = *tag & !3 | KIND_RANS;
                }
            }
            let mut out = vec![0u8; rng.below(300) as usize];
            let _ = decode(&input, &mut out);
        }
        // A well-formed header with garbage after it reaches the decode loops.
        let valid = encoded(&fp4_plane(&mut rng, 500));
        let header = 1 + read_table(&valid[1..], (valid[0] >> 4) as u32 + 1)
            .unwrap()
            .1;
        for _ in 0..5_000 {
            let mut input = valid[..header].to_vec();
            let len = rng.below(600) as usize;
            input.extend(rng.bytes(len));
            let mut out = vec![0u8; 500];
            let _ = decode(&input, &mut out);
            let mut out2 = vec![0u8; 500];
            assert_eq!(
                decode(&input, &mut out).is_ok(),
                decode_checked(&input, &mut out2).is_ok()
            );
        }
    }

    /// Packed FP4 bytes (two codes of `fp4_plane` each).
    fn fp4_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
        let codes = fp4_plane(rng, 2 * len);
        codes.chunks_exact(2).map(|c| c[0] | c[1] << 4).collect()
    }

    /// Byte planes for the nibble-product form: FP4 bytes, and the awkward ones (random
    /// bytes, one nibble constant, a few scattered values, every byte once).
    fn nibble_planes(rng: &mut Rng, len: usize) -> Vec<Vec<u8>> {
        vec![
            fp4_bytes(rng, len),
            rng.bytes(len),
            fp4_bytes(rng, len)
                .iter()
                .map(|b| b & 0xf7 | 0x70)
                .collect(),
            categorical(rng, len, 0x3e, &[1000, 1, 1, 0, 0, 5]),
            (0..len).map(|i| (i * 7 % 256) as u8).collect(),
        ]
    }

    /// `plan_nibbles` with a forced lane count, encoded; `None` where the form does not apply.
    fn encoded_nibbles(symbols: &[u8], lanes: Option<usize>) -> Option<Vec<u8>> {
        let plan = plan_nibbles(&Histogram::of(symbols))?;
        let plan = Plan {
            lanes: lanes.unwrap_or(plan.lanes),
            ..plan
        };
        let mut out = Vec::new();
        encode_plan(symbols, &plan, &mut out);
        Some(out)
    }

    /// `nibble_product` as first written (and as the format defines it): the bytes short of
    /// the scale get a slot in the order of a full sort.
    fn nibble_product_by_sorting(lo: &[u32; 16], hi: &[u32; 16], precision: u32) -> [u32; 256] {
        let scale = 1u64 << precision;
        let mut freqs = [0u32; 256];
        let mut rems = [0u64; 256];
        for b in 0..256 {
            let p = lo[b & 15] as u64 * hi[b >> 4] as u64;
            if p > 0 {
                freqs[b] = (p >> precision).max(1) as u32;
                rems[b] = if p < scale { 0 } else { p & (scale - 1) };
            }
        }
        let sum: u64 = freqs.iter().map(|&f| f as u64).sum();
        let mut order: Vec<usize> = (0..256).filter(|&b| freqs[b] > 0).collect();
        if sum < scale {
            order.sort_unstable_by_key(|&b| (std::cmp::Reverse(rems[b]), b));
            for &b in order.iter().take((scale - sum) as usize) {
                freqs[b] += 1;
            }
        } else if sum > scale {
            order.sort_unstable_by_key(|&b| (std::cmp::Reverse(freqs[b]), b));
            let mut excess = sum - scale;
            while excess > 0 {
                for &b in &order {
                    if excess > 0 && freqs[b] > 1 {
                        freqs[b] -= 1;
                        excess -= 1;
                    }
                }
            }
        }
        freqs
    }

    #[test]
    fn nibble_product_fills_the_scale() {
        let mut rng = Rng(21);
        for precision in [8, 12, 16] {
            let scale = 1u32 << precision;
            for case in 0..300 {
                // Nibble tables from skewed to flat, with absent nibbles.
                let mut tables = [[0u32; 16]; 2];
                for t in &mut tables {
                    let present = 2 + rng.below(15) as usize;
                    let weights: Vec<u64> = (0..present)
                        .map(|_| match case % 3 {
                            0 => 1 + rng.below(4),
                            1 => 1 + rng.below(1 << 12),
                            _ => 1 << rng.below(20),
                        })
                        .collect();
                    let mut counts = [0u32; 256];
                    for (i, &w) in weights.iter().enumerate() {
                        counts[(i * 16 / present + case) % 16] += w as u32;
                    }
                    let hist = Histogram {
                        counts,
                        total: counts.iter().map(|&c| c as usize).sum(),
                    };
                    t.copy_from_slice(&normalize(&hist, precision)[..16]);
                }
                let [lo, hi] = tables;
                let freqs = nibble_product(&lo, &hi, precision);
                assert_eq!(freqs.iter().sum::<u32>(), scale);
                // The decoder rebuilds this table: it must be exactly the format's rounding.
                assert_eq!(freqs, nibble_product_by_sorting(&lo, &hi, precision));
                let share = |b: usize| lo[b & 15] as f64 * hi[b >> 4] as f64 / scale as f64;
                let raised: f64 = (0..256)
                    .filter(|&b| share(b) > 0.0)
                    .map(|b| share(b).floor().max(1.0))
                    .sum();
                for (b, &f) in freqs.iter().enumerate() {
                    let p = share(b);
                    assert_eq!(f > 0, p > 0.0, "byte {b}");
                    if raised <= scale as f64 {
                        // Rounded down or up.
                        assert!(
                            p == 0.0 || (f as f64 - p).abs() < 1.0,
                            "byte {b}: {} for {p}, {lo:?} {hi:?}",
                            f
                        );
                    } else {
                        // Bytes raised to one slot are paid for by the others, never above
                        // their share.
                        assert!(p == 0.0 || f as f64 <= p.ceil().max(1.0), "byte {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn nibble_streams_round_trip_on_every_path() {
        let mut rng = Rng(22);
        for len in [1, 2, 3, 31, 64, 65, 1001, 4097, 40_001, 131_072] {
            for plane in nibble_planes(&mut rng, len) {
                for lanes in [
                    None,
                    Some(1),
                    Some(8),
                    Some(NARROW_SIMD_LANES),
                    Some(WIDE_LANES),
                ] {
                    let Some(stream) = encoded_nibbles(&plane, lanes) else {
                        // Only when a nibble takes one value.
                        let h = Histogram::of(&plane);
                        assert!(plan_nibbles(&h).is_none());
                        continue;
                    };
                    assert_eq!(stream[0] & 3, KIND_RANS_NIBBLES);
                    let mut outs = [(); 5].map(|_| vec![0u8; len]);
                    let [a, b, c, d, e] = &mut outs;
                    decode(&stream, a).unwrap();
                    decode_at(&stream, b, Simd::Off).unwrap();
                    decode_at(&stream, c, Simd::Avx2).unwrap();
                    decode_at(&stream, d, Simd::Avx512).unwrap();
                    decode_checked(&stream, e).unwrap();
                    assert!(
                        outs.iter().all(|o| *o == plane),
                        "len {len} lanes {lanes:?}"
                    );
                    assert_eq!(reference_decode(&stream, len), Some(plane.clone()));
                    // Corrupted: never a panic, and every path agrees.
                    for _ in 0..4 {
                        let mut bad = stream.clone();
                        let at = rng.below(bad.len() as u64) as usize;
                        bad[at] ^= 1 << rng.below(8);
                        let mut outs = [(); 3].map(|_| vec![0u8; len]);
                        let [a, b, c] = &mut outs;
                        let results = [
                            decode(&bad, a).is_ok(),
                            decode_at(&bad, b, Simd::Off).is_ok(),
                            decode_checked(&bad, c).is_ok(),
                        ];
                        assert!(results.iter().all(|&r| r == results[0]));
                        if results[0] {
                            assert!(outs.iter().all(|o| *o == outs[0]));
                        }
                    }
                    for cut in [0, 1, stream.len() / 2, stream.len() - 1] {
                        assert!(decode(&stream[..cut], &mut vec![0u8; len]).is_err());
                    }
                }
            }
        }
    }

    #[test]
    fn nibble_plan_size_is_exact_and_small_for_fp4() {
        let mut rng = Rng(23);
        for len in [100, 10_000, 73_728, 262_144] {
            for plane in nibble_planes(&mut rng, len) {
                let hist = Histogram::of(&plane);
                let Some(plan) = plan_nibbles(&hist) else {
                    continue;
                };
                let actual = encoded_nibbles(&plane, None).unwrap().len() as f64;
                let estimate = plan.encoded_size() as f64;
                assert!(
                    (estimate - actual).abs() <= 0.002 * actual + 12.0,
                    "estimate {estimate} actual {actual}"
                );
            }
            // On FP4 bytes: a table of a few dozen bytes, near the cost of the full table's
            // coding, and far smaller on small planes.
            let plane = fp4_bytes(&mut rng, len);
            let hist = Histogram::of(&plane);
            let (nib, full) = (
                plan_nibbles(&hist).unwrap(),
                plan(&hist, SmallPlanes::Compact).unwrap(),
            );
            assert!(nib.table_bytes < 64, "{}", nib.table_bytes);
            if len >= 10_000 {
                assert!(nib.info_bits <= full.info_bits * 1.003 + 64.0);
            }
        }
    }

    #[test]
    fn bad_nibble_tables_are_rejected() {
        let fp4 = fp4_bytes(&mut Rng(24), 500);
        let stream = encoded_nibbles(&fp4, Some(8)).unwrap();
        let mut out = vec![0u8; 500];
        decode(&stream, &mut out).unwrap();
        // A precision too low for 256 bytes, or an unknown one.
        for precision in [1u8, 7] {
            let mut bad = stream.clone();
            bad[0] = bad[0] & 0x0f | (precision - 1) << 4;
            assert!(decode(&bad, &mut out).is_err());
        }
        // A nibble table naming symbol 16: runs form, one run of 17 symbols.
        let mut input = vec![KIND_RANS_NIBBLES | 1 << 2 | 11 << 4, 1, 0, 0, 16];
        let mut bits = BitWriter::default();
        for _ in 0..16 {
            bits.put(7, 4);
            bits.put(0, 7);
        }
        bits.finish(&mut input);
        input.extend([0u8; 64]);
        assert!(decode(&input, &mut out).is_err());
        assert!(decode(&[KIND_RANS_NIBBLES], &mut out).is_err());
        // A table count other than 1 or 2.
        for count in [0u8, 3] {
            let mut bad = stream.clone();
            bad[1] = count;
            assert!(decode(&bad, &mut out).is_err());
        }
    }

    #[test]
    fn bad_tables_are_rejected() {
        let precision_12 = KIND_RANS | 3 << 2 | 11 << 4;
        // One run of 2 symbols, first frequency 4096 (= the whole scale): too big.
        let mut bits = BitWriter::default();
        bits.put(12, 4);
        bits.put(0, 12);
        let mut input = vec![precision_12, 0, 0, 1];
        bits.finish(&mut input);
        input.extend([0u8; 32]);
        assert!(decode(&input, &mut [0u8; 10]).is_err());
        // A run past symbol 255.
        assert!(decode(&[precision_12, 0, 250, 10, 0, 0, 0, 0], &mut [0u8; 10]).is_err());
        // A single symbol in rANS form, as a run and as a list.
        assert!(decode(&[precision_12, 0, 3, 0, 0, 0, 0, 0], &mut [0u8; 10]).is_err());
        assert!(decode(&[precision_12, 0x80, 3, 0, 0, 0, 0, 0], &mut [0u8; 10]).is_err());
        // A listed symbol past 255, and a list longer than the input.
        assert!(decode(&[precision_12, 0x81, 200, 100, 0, 0, 0, 0], &mut [0u8; 10]).is_err());
        assert!(decode(&[precision_12, 0xff, 1, 2, 3], &mut [0u8; 10]).is_err());
        // States below the interval.
        let mut stream = encoded_with(&[1, 2, 1, 2, 1, 1, 1, 1, 2], 12, 8);
        let n = stream.len();
        stream[n - 4..].copy_from_slice(&1u32.to_le_bytes());
        assert!(decode(&stream, &mut [0u8; 9]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn prop_round_trip(
            len in 0usize..5000,
            alphabet in 1u32..=256,
            skew in 0u32..4,
            seed: u64,
        ) {
            let mut rng = Rng(seed);
            let plane: Vec<u8> = (0..len)
                .map(|_| {
                    let mut s = rng.below(alphabet as u64);
                    for _ in 0..skew {
                        s = s.min(rng.below(alphabet as u64));
                    }
                    s as u8
                })
                .collect();
            let stream = check_roundtrip(&plane);
            let estimate = encoded_size(&Histogram::of(&plane)) as f64;
            let slack = 0.002 * stream.len() as f64 + 12.0;
            prop_assert!((estimate - stream.len() as f64).abs() <= slack);
        }

        #[test]
        fn prop_garbage_decodes_safely(
            input in proptest::collection::vec(any::<u8>(), 0..200),
            len in 0usize..400,
        ) {
            let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
            let (fast, slow) = (decode(&input, &mut a), decode_checked(&input, &mut b));
            prop_assert_eq!(fast.is_ok(), slow.is_ok());
        }
    }
}
