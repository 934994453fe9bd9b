//! How a chunk of elements splits into byte planes, and back.
//!
//! A trained weight's exponent holds most of its redundancy; sign and mantissa bits are
//! close to random. Each layout moves the exponent into a plane of its own (one byte per
//! element) so an order-0 coder sees its skewed distribution undiluted, and keeps the
//! near-random bits together where they cost ~8 bits per byte whatever we do.
//!
//! Split and merge are the hottest loops after entropy decoding; they are written as plain
//! per-element loops over `chunks_exact`, which the compiler vectorises.

use crate::coders::Histogram;
use crate::dtype::DType;

/// A way to split a chunk's bytes into planes of one-byte symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// One plane: the bytes as they are.
    Bytes,
    /// BF16: exponent byte; sign bit with the 7 mantissa bits.
    Bf16ExpSm,
    /// F16: high byte (sign, exponent, 2 mantissa bits); low byte (8 mantissa bits).
    F16HiLo,
    /// F32: exponent byte; sign with mantissa bits 22..16; mantissa bytes 15..8 and 7..0.
    F32ExpSm,
    /// Element-wide byte transposition: plane `i` holds byte `i` of every element.
    ByteSplit(u8),
    /// FP8 E4M3: 4-bit exponent plane; sign|3-bit mantissa plane.
    E4m3ExpSm,
    /// FP8 E5M2: 5-bit exponent plane; sign|2-bit mantissa plane.
    E5m2ExpSm,
    /// Packed FP4 (two E2M1 codes per byte): one plane of 4-bit codes in element order.
    Fp4Codes,
}

impl Layout {
    /// Stable numeric id written in frames (with [`Layout::param`]).
    pub fn id(self) -> u8 {
        match self {
            Layout::Bytes => 0,
            Layout::Bf16ExpSm => 1,
            Layout::F16HiLo => 2,
            Layout::F32ExpSm => 3,
            Layout::ByteSplit(_) => 4,
            Layout::E4m3ExpSm => 5,
            Layout::E5m2ExpSm => 6,
            Layout::Fp4Codes => 7,
        }
    }

    /// The layout's parameter byte (the element width for [`Layout::ByteSplit`], else 0).
    pub fn param(self) -> u8 {
        match self {
            Layout::ByteSplit(w) => w,
            _ => 0,
        }
    }

    /// Inverse of [`Layout::id`]/[`Layout::param`]; `None` for unknown or invalid pairs.
    pub fn from_id(id: u8, param: u8) -> Option<Layout> {
        Some(match (id, param) {
            (0, 0) => Layout::Bytes,
            (1, 0) => Layout::Bf16ExpSm,
            (2, 0) => Layout::F16HiLo,
            (3, 0) => Layout::F32ExpSm,
            (4, w @ 2..=16) => Layout::ByteSplit(w),
            (5, 0) => Layout::E4m3ExpSm,
            (6, 0) => Layout::E5m2ExpSm,
            (7, 0) => Layout::Fp4Codes,
            _ => return None,
        })
    }

    /// A short name for reports (`inspect`, `bench`).
    pub fn name(self) -> &'static str {
        match self {
            Layout::Bytes => "bytes",
            Layout::Bf16ExpSm => "bf16-exp|sm",
            Layout::F16HiLo => "f16-hi|lo",
            Layout::F32ExpSm => "f32-exp|sm|m|m",
            Layout::ByteSplit(_) => "byte-split",
            Layout::E4m3ExpSm => "e4m3-exp|sm",
            Layout::E5m2ExpSm => "e5m2-exp|sm",
            Layout::Fp4Codes => "fp4-codes",
        }
    }

    /// The layouts worth trying for a chunk of `dtype`, best guess first.
    ///
    /// The encoder measures each and keeps the smallest, so a wrong guess about what a
    /// tensor holds (e.g. a `U8` tensor that is not packed FP4) costs ratio, never bytes.
    pub fn candidates(dtype: DType) -> &'static [Layout] {
        match dtype {
            DType::BF16 => &[Layout::Bf16ExpSm],
            DType::F16 => &[Layout::F16HiLo],
            DType::F32 => &[Layout::F32ExpSm],
            DType::F8_E4M3 => &[Layout::Bytes, Layout::E4m3ExpSm],
            DType::F8_E5M2 => &[Layout::Bytes, Layout::E5m2ExpSm],
            DType::F4 => &[Layout::Bytes],
            DType::F64 | DType::I64 | DType::U64 => &[Layout::ByteSplit(8)],
            DType::I32 | DType::U32 => &[Layout::ByteSplit(4)],
            DType::I16 | DType::U16 => &[Layout::ByteSplit(2)],
            DType::F8_E8M0 | DType::I8 | DType::U8 | DType::BOOL | DType::Bytes => &[Layout::Bytes],
        }
    }

    /// Bytes per element group the layout needs whole (a chunk's length is a multiple).
    pub fn unit(self) -> usize {
        match self {
            Layout::Bytes | Layout::E4m3ExpSm | Layout::E5m2ExpSm | Layout::Fp4Codes => 1,
            Layout::Bf16ExpSm | Layout::F16HiLo => 2,
            Layout::F32ExpSm => 4,
            Layout::ByteSplit(w) => w as usize,
        }
    }

    /// Number of planes and the symbols in each, for a chunk of `len` bytes.
    pub fn plane_lens(self, len: usize) -> PlaneLens {
        let u = self.unit();
        match self {
            Layout::Bytes => PlaneLens::new(1, len),
            Layout::Fp4Codes => PlaneLens::new(1, len * 2),
            Layout::E4m3ExpSm | Layout::E5m2ExpSm => PlaneLens::new(2, len),
            _ => PlaneLens::new(u, len / u),
        }
    }

    /// Whether plane `index` holds only low mantissa bits (F16's low byte, F32's two low
    /// bytes): near-uniform in trained weights, and then stored raw, which the encoder
    /// checks on a sample before it counts the whole plane.
    pub fn is_low_mantissa_plane(self, index: usize) -> bool {
        matches!(
            (self, index),
            (Layout::F16HiLo, 0) | (Layout::F32ExpSm, 2 | 3)
        )
    }

    /// Whether [`Layout::histograms_from_bytes`] applies to this layout.
    pub fn derives_from_bytes(self) -> bool {
        matches!(
            self,
            Layout::Bytes | Layout::E4m3ExpSm | Layout::E5m2ExpSm | Layout::Fp4Codes
        )
    }

    /// The planes' histograms, derived from the histogram of the chunk's bytes, for the
    /// layouts whose every plane symbol is a function of one byte. Lets the encoder
    /// compare such layouts without splitting the chunk once per candidate.
    pub fn histograms_from_bytes(self, bytes: &Histogram) -> Option<Vec<Histogram>> {
        let mut out = Vec::new();
        self.histograms_from_bytes_into(bytes, &mut out)
            .then_some(out)
    }

    /// [`Layout::histograms_from_bytes`], appending to `out` (whose spare capacity the
    /// encoder reuses frame after frame); returns false, appending nothing, for layouts
    /// it does not apply to.
    pub fn histograms_from_bytes_into(self, bytes: &Histogram, out: &mut Vec<Histogram>) -> bool {
        let plane = |f: &dyn Fn(usize) -> usize| {
            let mut h = Histogram {
                counts: [0; 256],
                total: bytes.total,
            };
            for (b, &c) in bytes.counts.iter().enumerate() {
                h.counts[f(b)] += c;
            }
            h
        };
        match self {
            Layout::Bytes => out.push(bytes.clone()),
            Layout::E4m3ExpSm => out.extend(fp8_histograms(bytes, 3)),
            Layout::E5m2ExpSm => out.extend(fp8_histograms(bytes, 2)),
            Layout::Fp4Codes => {
                let mut h = plane(&|b| b & 0x0f);
                for (b, &c) in bytes.counts.iter().enumerate() {
                    h.counts[b >> 4] += c;
                }
                h.total = bytes.total * 2;
                out.push(h);
            }
            _ => return false,
        }
        true
    }

    /// Splits `chunk` into planes (resized to fit). `chunk.len()` must be a multiple of
    /// [`Layout::unit`]; callers guarantee it because chunk boundaries are cut by unit.
    pub fn split(self, chunk: &[u8], planes: &mut Vec<Vec<u8>>) {
        let count = self.split_into(chunk, planes);
        planes.truncate(count);
    }

    /// [`Layout::split`] into the first planes of `planes`, returning how many; planes past
    /// those are kept (not freed), so a caller alternating layouts reuses their buffers.
    pub fn split_into(self, chunk: &[u8], planes: &mut Vec<Vec<u8>>) -> usize {
        let lens = self.plane_lens(chunk.len());
        if planes.len() < lens.count {
            planes.resize_with(lens.count, Vec::new);
        }
        let planes = &mut planes[..lens.count];
        // Every split below writes all of every plane, so old contents need no clearing
        // (zeroing a page's planes first was a tenth of an FP8 page's encode).
        for p in planes.iter_mut() {
            p.resize(lens.symbols, 0);
        }
        match self {
            Layout::Bytes => planes[0].copy_from_slice(chunk),
            Layout::Bf16ExpSm => split_bf16(chunk, planes),
            Layout::F16HiLo => split_bytes(chunk, 2, planes),
            Layout::F32ExpSm => split_f32(chunk, planes),
            Layout::ByteSplit(w) => split_bytes(chunk, w as usize, planes),
            Layout::E4m3ExpSm => split_fp8(chunk, 3, planes),
            Layout::E5m2ExpSm => split_fp8(chunk, 2, planes),
            Layout::Fp4Codes => split_fp4(chunk, &mut planes[0]),
        }
        lens.count
    }

    /// Rebuilds the chunk from its planes into `out`. Plane lengths must be those of
    /// [`Layout::plane_lens`] for `out.len()` (the frame decoder checks this first).
    pub fn merge(self, planes: &[&[u8]], out: &mut [u8]) {
        match self {
            Layout::Bytes => out.copy_from_slice(planes[0]),
            Layout::Bf16ExpSm => merge_bf16(planes, out),
            Layout::F16HiLo => merge_bytes(planes, 2, out),
            Layout::F32ExpSm => merge_f32(planes, out),
            Layout::ByteSplit(w) => merge_bytes(planes, w as usize, out),
            Layout::E4m3ExpSm => merge_fp8(planes, 3, out),
            Layout::E5m2ExpSm => merge_fp8(planes, 2, out),
            Layout::Fp4Codes => merge_fp4(planes[0], out),
        }
    }
}

/// The exponent and sign|mantissa plane histograms of FP8 bytes with `m` mantissa bits
/// ([`split_fp8`]'s planes).
fn fp8_histograms(bytes: &Histogram, m: usize) -> [Histogram; 2] {
    match m {
        3 => fp8_histograms_m::<3>(bytes),
        _ => fp8_histograms_m::<2>(bytes),
    }
}

/// [`fp8_histograms`] for `M` mantissa bits: the byte counts are rows of `2^M` (one sign and
/// exponent each), an exponent's count is the sum of its two rows and the sign|mantissa
/// counts a sum of rows, in fixed-size loops the compiler unrolls and vectorises (the
/// strided sums of each count one at a time were a thirtieth of an FP8 page's encode).
fn fp8_histograms_m<const M: usize>(bytes: &Histogram) -> [Histogram; 2] {
    let mantissas = 1 << M;
    let mut exp = Histogram {
        counts: [0; 256],
        total: bytes.total,
    };
    let mut sm = exp.clone();
    for (sign, half) in bytes.counts.chunks_exact(128).enumerate() {
        let mut sums = [0u32; 8];
        for (e, row) in half.chunks_exact(mantissas).enumerate() {
            exp.counts[e] += row.iter().sum::<u32>();
            for (s, &c) in sums.iter_mut().zip(row) {
                *s += c;
            }
        }
        sm.counts[sign * mantissas..][..mantissas].copy_from_slice(&sums[..mantissas]);
    }
    [exp, sm]
}

/// How many planes a layout makes of a chunk, and how many symbols each holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneLens {
    /// Number of planes.
    pub count: usize,
    /// Symbols in every plane (all planes of a layout have the same length).
    pub symbols: usize,
}

impl PlaneLens {
    fn new(count: usize, symbols: usize) -> Self {
        PlaneLens { count, symbols }
    }
}

fn split_bf16(chunk: &[u8], planes: &mut [Vec<u8>]) {
    let (exp, sm) = two_planes(planes);
    for ((e, s), v) in exp.iter_mut().zip(sm.iter_mut()).zip(chunk.chunks_exact(2)) {
        let v = u16::from_le_bytes([v[0], v[1]]);
        *e = (v >> 7) as u8;
        *s = ((v >> 8) as u8 & 0x80) | (v as u8 & 0x7f);
    }
}

fn merge_bf16(planes: &[&[u8]], out: &mut [u8]) {
    for ((o, &e), &s) in out.chunks_exact_mut(2).zip(planes[0]).zip(planes[1]) {
        let v = ((s as u16 & 0x80) << 8) | ((e as u16) << 7) | (s as u16 & 0x7f);
        o.copy_from_slice(&v.to_le_bytes());
    }
}

fn split_f32(chunk: &[u8], planes: &mut [Vec<u8>]) {
    let [p0, p1, p2, p3] = planes else {
        unreachable!("F32ExpSm has four planes")
    };
    // Zipped iterators, not indices: no bounds checks, so the loop vectorises.
    let planes = p0
        .iter_mut()
        .zip(p1.iter_mut())
        .zip(p2.iter_mut().zip(p3.iter_mut()));
    for (((e, s), (m1, m0)), v) in planes.zip(chunk.chunks_exact(4)) {
        let v = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
        *e = (v >> 23) as u8;
        *s = ((v >> 24) as u8 & 0x80) | ((v >> 16) as u8 & 0x7f);
        *m1 = (v >> 8) as u8;
        *m0 = v as u8;
    }
}

fn merge_f32(planes: &[&[u8]], out: &mut [u8]) {
    let (p0, p1, p2, p3) = (planes[0], planes[1], planes[2], planes[3]);
    let planes = p0.iter().zip(p1).zip(p2.iter().zip(p3));
    for (((&e, &s), (&m1, &m0)), o) in planes.zip(out.chunks_exact_mut(4)) {
        let (e, s) = (e as u32, s as u32);
        let v = ((s & 0x80) << 24) | (e << 23) | ((s & 0x7f) << 16) | ((m1 as u32) << 8);
        o.copy_from_slice(&(v | m0 as u32).to_le_bytes());
    }
}

fn split_bytes(chunk: &[u8], width: usize, planes: &mut [Vec<u8>]) {
    if width == 2 {
        // The F16 case is hot enough to deserve SIMD: the compiler left every form of
        // this loop scalar, a seventh of the whole-file F16 encode time.
        let (lo, hi) = two_planes(planes);
        let done = split_lo_hi_simd(chunk, lo, hi);
        let rest = lo[done..].iter_mut().zip(hi[done..].iter_mut());
        for ((l, h), v) in rest.zip(chunk[2 * done..].chunks_exact(2)) {
            *l = v[0];
            *h = v[1];
        }
        return;
    }
    for (i, v) in chunk.chunks_exact(width).enumerate() {
        for (b, p) in v.iter().zip(planes.iter_mut()) {
            p[i] = *b;
        }
    }
}

/// Splits the leading elements of `chunk` (two bytes each) into `lo` and `hi` sixteen at a
/// time; returns how many it did (the caller does the rest).
#[cfg(target_arch = "x86_64")]
fn split_lo_hi_simd(chunk: &[u8], lo: &mut [u8], hi: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    let n = lo.len().min(hi.len()).min(chunk.len() / 2) / 16 * 16;
    for i in (0..n).step_by(16) {
        // SAFETY: SSE2 is part of the x86_64 baseline. `i + 16 <= n`, so the two 16-byte
        // loads at `2 * i` and `2 * i + 16` end at `2 * n <= chunk.len()`, and the stores
        // at `i` end at `n <= lo.len(), hi.len()`; unaligned loads and stores throughout.
        unsafe {
            let a = _mm_loadu_si128(chunk.as_ptr().add(2 * i).cast());
            let b = _mm_loadu_si128(chunk.as_ptr().add(2 * i + 16).cast());
            let mask = _mm_set1_epi16(0xff);
            let l = _mm_packus_epi16(_mm_and_si128(a, mask), _mm_and_si128(b, mask));
            let h = _mm_packus_epi16(_mm_srli_epi16::<8>(a), _mm_srli_epi16::<8>(b));
            _mm_storeu_si128(lo.as_mut_ptr().add(i).cast(), l);
            _mm_storeu_si128(hi.as_mut_ptr().add(i).cast(), h);
        }
    }
    n
}

#[cfg(not(target_arch = "x86_64"))]
fn split_lo_hi_simd(_chunk: &[u8], _lo: &mut [u8], _hi: &mut [u8]) -> usize {
    0
}

fn merge_bytes(planes: &[&[u8]], width: usize, out: &mut [u8]) {
    if width == 2 {
        // The F16 case is hot enough to deserve a loop the compiler can vectorise.
        for ((o, &lo), &hi) in out.chunks_exact_mut(2).zip(planes[0]).zip(planes[1]) {
            o[0] = lo;
            o[1] = hi;
        }
        return;
    }
    for (i, o) in out.chunks_exact_mut(width).enumerate() {
        for (b, p) in o.iter_mut().zip(planes) {
            *b = p[i];
        }
    }
}

/// FP8 with `m` mantissa bits: exponent plane = the bits between sign and mantissa.
fn split_fp8(chunk: &[u8], m: u32, planes: &mut [Vec<u8>]) {
    let (exp, sm) = two_planes(planes);
    let mmask = (1u8 << m) - 1;
    for ((e, s), &b) in exp.iter_mut().zip(sm.iter_mut()).zip(chunk) {
        *e = (b & 0x7f) >> m;
        *s = ((b >> 7) << m) | (b & mmask);
    }
}

fn merge_fp8(planes: &[&[u8]], m: u32, out: &mut [u8]) {
    let mmask = (1u8 << m) - 1;
    for ((o, &e), &s) in out.iter_mut().zip(planes[0]).zip(planes[1]) {
        *o = ((s >> m) << 7) | (e << m) | (s & mmask);
    }
}

fn split_fp4(chunk: &[u8], codes: &mut [u8]) {
    for (c, &b) in codes.chunks_exact_mut(2).zip(chunk) {
        c[0] = b & 0x0f;
        c[1] = b >> 4;
    }
}

fn merge_fp4(codes: &[u8], out: &mut [u8]) {
    for (o, c) in out.iter_mut().zip(codes.chunks_exact(2)) {
        *o = (c[0] & 0x0f) | (c[1] << 4);
    }
}

fn two_planes(planes: &mut [Vec<u8>]) -> (&mut [u8], &mut [u8]) {
    let (a, b) = planes.split_at_mut(1);
    (&mut a[0], &mut b[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Layout; 10] = [
        Layout::Bytes,
        Layout::Bf16ExpSm,
        Layout::F16HiLo,
        Layout::F32ExpSm,
        Layout::ByteSplit(2),
        Layout::ByteSplit(8),
        Layout::E4m3ExpSm,
        Layout::E5m2ExpSm,
        Layout::Fp4Codes,
        Layout::ByteSplit(4),
    ];

    fn round_trip(layout: Layout, data: &[u8]) {
        let mut planes = Vec::new();
        layout.split(data, &mut planes);
        let lens = layout.plane_lens(data.len());
        assert_eq!(planes.len(), lens.count);
        assert!(planes.iter().all(|p| p.len() == lens.symbols));
        let refs: Vec<&[u8]> = planes.iter().map(|p| p.as_slice()).collect();
        let mut out = vec![0xAA; data.len()];
        layout.merge(&refs, &mut out);
        assert_eq!(out, data, "{layout:?}");
    }

    #[test]
    fn every_layout_round_trips_every_byte_value() {
        // 8 copies of all 256 byte values in every position of a 64-bit element.
        let data: Vec<u8> = (0..2048u32).map(|i| (i * 37 + i / 256) as u8).collect();
        for layout in ALL {
            round_trip(layout, &data);
            round_trip(layout, &[]);
        }
        for id in 0..=255u8 {
            for param in [0u8, 2, 4, 8, 17] {
                if let Some(l) = Layout::from_id(id, param) {
                    assert_eq!((l.id(), l.param()), (id, param));
                }
            }
        }
    }

    #[test]
    fn derived_histograms_equal_counted_ones() {
        let data: Vec<u8> = (0..4099u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let bytes = Histogram::of(&data);
        for layout in ALL {
            let Some(derived) = layout.histograms_from_bytes(&bytes) else {
                continue;
            };
            let mut planes = Vec::new();
            layout.split(&data, &mut planes);
            let counted: Vec<Histogram> = planes.iter().map(|p| Histogram::of(p)).collect();
            assert_eq!(derived, counted, "{layout:?}");
        }
    }

    #[test]
    fn f16_split_matches_bytewise_split_at_every_length() {
        let data: Vec<u8> = (0..200u32).map(|i| (i * 97 + i / 3) as u8).collect();
        for elems in 0..=100usize {
            let chunk = &data[..2 * elems];
            let mut planes = Vec::new();
            Layout::F16HiLo.split(chunk, &mut planes);
            let lo: Vec<u8> = chunk.iter().step_by(2).copied().collect();
            let hi: Vec<u8> = chunk.iter().skip(1).step_by(2).copied().collect();
            assert_eq!(planes, [lo, hi], "{elems} elements");
        }
    }

    #[test]
    fn bf16_exponent_plane_holds_the_exponent() {
        // 1.0 in BF16 is 0x3F80: exponent 127, sign 0, mantissa 0; -1.5 is 0xBFC0.
        let mut planes = Vec::new();
        Layout::Bf16ExpSm.split(&[0x80, 0x3F, 0xC0, 0xBF], &mut planes);
        assert_eq!(planes[0], [127, 127]);
        assert_eq!(planes[1], [0x00, 0xC0]);
    }

    #[test]
    fn fp8_planes_separate_exponent_from_sign_and_mantissa() {
        // E4M3 0xC9 = sign 1, exponent 1001, mantissa 001.
        let mut planes = Vec::new();
        Layout::E4m3ExpSm.split(&[0xC9], &mut planes);
        assert_eq!((planes[0][0], planes[1][0]), (0b1001, 0b1001));
        Layout::E5m2ExpSm.split(&[0xC9], &mut planes);
        assert_eq!((planes[0][0], planes[1][0]), (0b10010, 0b101));
    }
}
