//! Symbol statistics shared by every coder: one histogram per plane per chunk.

/// Counts of each byte value in one plane of one chunk.
///
/// Coders take it precomputed because the coder choice already needs it: counting
/// once and handing it on keeps the encoder to a single pass over the symbols.
#[derive(Clone, PartialEq, Eq)]
pub struct Histogram {
    /// `counts[s]` is how often byte value `s` occurs.
    pub counts: [u32; 256],
    /// Number of symbols counted (the sum of `counts`).
    pub total: usize,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used: Vec<(usize, u32)> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(s, &c)| (s, c))
            .collect();
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("used", &used)
            .finish()
    }
}

impl Histogram {
    /// Counts the symbols of `symbols`.
    ///
    /// Planes hold at most a chunk (well under 2^32 symbols), so `u32` counts cannot overflow;
    /// longer inputs are rejected by the frame layer before they get here.
    pub fn of(symbols: &[u8]) -> Self {
        // Sub-histogram 0 takes a quarter of the symbols plus up to 3 left over.
        match symbols.len() <= 4 * (u16::MAX as usize - 3) {
            true => Self::count::<u16>([symbols]),
            false => Self::count::<u32>([symbols]),
        }
    }

    /// Counts the symbols of every run, in `C` per sub-histogram: `u16` for planes too
    /// short to overflow it (any K/V page: half the counters to zero and merge, measured 7 %
    /// faster on an FP8 page).
    #[inline(always)]
    fn count<'a, C: Copy + Default + std::ops::AddAssign + From<u8> + Into<u32>>(
        runs: impl IntoIterator<Item = &'a [u8]>,
    ) -> Self {
        // Four sub-histograms break the store-to-load dependency on runs of equal
        // symbols (an exponent plane is mostly a handful of values). (Reading eight
        // symbols as one word and shifting them out measured no faster.)
        let one = C::from(1u8);
        let mut sub = [[C::default(); 256]; 4];
        let mut total = 0;
        for symbols in runs {
            let mut quads = symbols.chunks_exact(4);
            for q in &mut quads {
                sub[0][q[0] as usize] += one;
                sub[1][q[1] as usize] += one;
                sub[2][q[2] as usize] += one;
                sub[3][q[3] as usize] += one;
            }
            for &s in quads.remainder() {
                sub[0][s as usize] += one;
            }
            total += symbols.len();
        }
        let mut counts = [0u32; 256];
        for (i, c) in counts.iter_mut().enumerate() {
            *c = sub[0][i].into() + sub[1][i].into() + sub[2][i].into() + sub[3][i].into();
        }
        Histogram { counts, total }
    }

    /// An estimate of `Histogram::of(symbols)` from one KiB of every 8 KiB ([`sample_runs`]),
    /// scaled to `symbols.len()`; `None` unless all 256 byte values occur in that sample.
    ///
    /// Meant for near-uniform byte planes (packed FP4 codes: two 4-bit codes per byte), where
    /// counting was a quarter of the encode time and a sample of a 256 KiB chunk costs about
    /// 0.005 bits per byte of coding loss. Every count is nonzero, so every symbol of
    /// `symbols` has a place in a table built from it: rANS codes them correctly, only a
    /// little less tightly. Coders that size their output from the counts (Huffman) need
    /// the exact histogram.
    pub fn sampled(symbols: &[u8]) -> Option<Self> {
        // One set of counters for all the runs (u32: a long chunk's sample can overflow u16).
        let sample = Self::count::<u32>(sample_runs(symbols));
        if sample.distinct() < 256 {
            return None;
        }
        let scale = symbols.len() as f64 / sample.total as f64;
        let mut counts = [0u32; 256];
        for (c, &s) in counts.iter_mut().zip(&sample.counts) {
            *c = ((s as f64 * scale).round() as u32).max(1);
        }
        // Rounding leaves the sum a few counts off: the largest count absorbs it (it is
        // over `symbols.len() / 256`, far more than 256 rounding steps).
        let sum: usize = counts.iter().map(|&c| c as usize).sum();
        let (largest, _) = counts.iter().enumerate().max_by_key(|&(_, &c)| c)?;
        let fixed = counts[largest] as i64 + symbols.len() as i64 - sum as i64;
        counts[largest] = u32::try_from(fixed).ok().filter(|&c| c > 0)?;
        Some(Histogram {
            counts,
            total: symbols.len(),
        })
    }

    /// Which symbols occur, as a 256-bit set (bit `s % 64` of word `s / 64`): one
    /// vectorised pass, after which the coders' size bounds visit only the symbols that
    /// occur instead of all 256 counts each.
    pub fn presence(&self) -> [u64; 4] {
        let mut set = [0u64; 4];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::*;
            // Sixteen counts per mask: compares packed down to bytes, one movemask. Each
            // word is gathered in a register (OR-ing four bits at a time into `set` made a
            // chain through memory: a fifth of planning an exponent plane's code).
            for (word, counts) in set.iter_mut().zip(self.counts.chunks_exact(64)) {
                let mut bits = 0u64;
                for (j, sixteen) in counts.chunks_exact(16).enumerate() {
                    // SAFETY: SSE2 is part of the x86_64 baseline; four 16-byte unaligned
                    // loads of the four 4-count quarters of a 16-count chunk.
                    let empty = unsafe {
                        let zero = _mm_setzero_si128();
                        let at = |k: usize| {
                            let v = _mm_loadu_si128(sixteen.as_ptr().add(4 * k).cast());
                            _mm_cmpeq_epi32(v, zero)
                        };
                        // Signed saturation keeps -1 and 0, and the counts' order.
                        let (lo, hi) =
                            (_mm_packs_epi32(at(0), at(1)), _mm_packs_epi32(at(2), at(3)));
                        _mm_movemask_epi8(_mm_packs_epi16(lo, hi)) as u64
                    };
                    bits |= (!empty & 0xFFFF) << (16 * j);
                }
                *word = bits;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        for (s, &c) in self.counts.iter().enumerate() {
            set[s / 64] |= ((c > 0) as u64) << (s % 64);
        }
        set
    }

    /// Number of distinct symbols that occur.
    pub fn distinct(&self) -> usize {
        self.counts.iter().filter(|&&c| c > 0).count()
    }

    /// The only symbol that occurs, if exactly one does.
    pub fn single_symbol(&self) -> Option<u8> {
        let mut found = None;
        for (s, &c) in self.counts.iter().enumerate() {
            if c > 0 {
                if found.is_some() {
                    return None;
                }
                found = Some(s as u8);
            }
        }
        found
    }

    /// Order-0 entropy in bits per symbol (0 for an empty or constant plane).
    pub fn entropy_bits_per_symbol(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        self.entropy_bits() / self.total as f64
    }

    /// Order-0 entropy of the whole plane in bytes (the floor no order-0 coder beats).
    pub fn entropy_bytes(&self) -> f64 {
        self.entropy_bits() / 8.0
    }

    /// What any order-0 code must add to [`Histogram::entropy_bits`] when the decoder does
    /// not know the counts, in bits: which `k` of the 256 byte values occur
    /// (`log2 C(256, k)`), and the parametric complexity of a `k`-symbol distribution at this
    /// length (`log2` of Shtarkov's sum), which the minimax-optimal (normalised maximum
    /// likelihood) code pays on every input and no code can beat on all of them.
    ///
    /// The order-0 entropy is a floor no real coder reaches on short planes: on 1,536 random
    /// bytes it is about 1.5 % under the 8 bits a byte they cost (entropy + this cost is
    /// 3 % over). `bench` also compares each plane with entropy + this cost.
    pub fn model_cost_bits(&self) -> f64 {
        let k = self.distinct();
        if self.total == 0 || k < 2 {
            return 0.0;
        }
        let ln_binom = ln_factorial(256) - ln_factorial(k) - ln_factorial(256 - k);
        (ln_binom + ln_shtarkov(k, self.total)) / std::f64::consts::LN_2
    }

    /// Order-0 information of the whole plane in bits, `n log2 n - sum c log2 c`, within
    /// 1e-8 bits per symbol (the error of [`fast_log2`]).
    ///
    /// Computed for every plane of every frame (the coder choice starts from it): counts
    /// below [`C_LOG2_C_LEN`] (every count of a page-sized plane but its few largest) read
    /// `c log2 c` from a table made at compile time, the others use [`fast_log2`]; four
    /// partial sums keep the adds off one dependency chain. libm's `log2` per distinct
    /// symbol was a tenth of the time spent coding a 12 KiB K/V page. Only the groups of
    /// four symbols with a used one are visited (an exponent plane's few of 64): skipping
    /// the others only skips adding 0.0, so the sums are the same to the bit.
    pub fn entropy_bits(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let mut acc = [0.0f64; 4];
        for (w, &used) in self.presence().iter().enumerate() {
            // One bit, at the group's first symbol, per group of four with a used symbol.
            let mut groups = used | used >> 1;
            groups = (groups | groups >> 2) & 0x1111_1111_1111_1111;
            while groups != 0 {
                let first = 64 * w + groups.trailing_zeros() as usize;
                groups &= groups - 1;
                let quad = &self.counts[first..first + 4];
                for (a, &c) in acc.iter_mut().zip(quad) {
                    *a += match C_LOG2_C.get(c as usize) {
                        Some(&v) => v,
                        None => c as f64 * fast_log2(c as f64),
                    };
                }
            }
        }
        let sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        let n = self.total as f64;
        (n * fast_log2(n) - sum).max(0.0)
    }

    /// A lower bound on [`Histogram::entropy_bits`] and on the exact entropy: less by a
    /// millionth of a bit per symbol, far more than [`fast_log2`]'s error and the float
    /// sums' rounding. The encoder rules coders out with it before building their tables,
    /// so it must never exceed the entropy.
    pub fn entropy_bits_lower_bound(&self) -> f64 {
        (self.entropy_bits() - self.total as f64 * 1e-6).max(0.0)
    }
}

/// Bytes of each run of [`sample_runs`].
pub const SAMPLE_RUN: usize = 1024;
/// [`sample_runs`] takes one run of every this many bytes. An eighth rather than a quarter:
/// FP4 encoding 5 % faster, for 0.04-0.05 % more bytes (the estimate's coding loss).
pub const SAMPLE_STRIDE: usize = 8192;

/// The sample [`Histogram::sampled`] counts: one KiB of every 8 KiB of `symbols`. Which KiB
/// of each 8 KiB is a hash of the block's index: a fixed one would alias with rows of 4 or
/// 8 KiB (say, padded with zeros at their ends) and miss or over-count what they end with.
pub fn sample_runs(symbols: &[u8]) -> impl Iterator<Item = &[u8]> + Clone {
    const SLOTS_LOG2: u32 = (SAMPLE_STRIDE / SAMPLE_RUN).trailing_zeros();
    symbols.chunks(SAMPLE_STRIDE).enumerate().map(|(i, block)| {
        let slot = ((i as u32).wrapping_mul(0x9E37_79B1) >> (32 - SLOTS_LOG2)) as usize;
        let from = (slot * SAMPLE_RUN).min(block.len().saturating_sub(SAMPLE_RUN));
        &block[from..block.len().min(from + SAMPLE_RUN)]
    })
}

/// `ln n!`: exact sums below 16, Stirling's series (error under 1e-10) from there.
fn ln_factorial(n: usize) -> f64 {
    if n < 16 {
        return (2..=n).map(|i| (i as f64).ln()).sum();
    }
    let x = n as f64;
    let x3 = x * x * x;
    x * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI * x).ln() + 1.0 / (12.0 * x)
        - 1.0 / (360.0 * x3)
        + 1.0 / (1260.0 * x3 * x * x)
}

/// Lengths from which `C(2, n)` comes from its asymptotic expansion (relative error under
/// 1e-4 past 256) instead of a sum of `n + 1` terms.
const SHTARKOV_EXACT_MAX: usize = 256;

/// `ln C(k, n)`, Shtarkov's sum for a `k`-symbol multinomial over `n` symbols:
/// `sum over count vectors of n! / prod(c!) * prod((c / n)^c)`. `C(2, n)` is summed
/// directly (or, past `SHTARKOV_EXACT_MAX`, from its asymptotic expansion), then Kontkanen and Myllymäki's
/// recurrence `C(j + 2) = C(j + 1) + n / j * C(j)` runs in ratios, since `C` itself
/// overflows `f64` for large `k` and `n`.
fn ln_shtarkov(k: usize, n: usize) -> f64 {
    if k <= 1 || n == 0 {
        return 0.0;
    }
    let nf = n as f64;
    let c2 = if n <= SHTARKOV_EXACT_MAX {
        let ln_n = nf.ln();
        let x_ln_x = |h: usize| match h {
            0 => 0.0,
            _ => h as f64 * ((h as f64).ln() - ln_n),
        };
        let ln_n_fact = ln_factorial(n);
        (0..=n)
            .map(|h| {
                let ln_binom = ln_n_fact - ln_factorial(h) - ln_factorial(n - h);
                (ln_binom + x_ln_x(h) + x_ln_x(n - h)).exp()
            })
            .sum::<f64>()
    } else {
        let pi = std::f64::consts::PI;
        (pi * nf / 2.0).sqrt() + 2.0 / 3.0 + (2.0 * pi).sqrt() / (24.0 * nf.sqrt())
    };
    // `ln C(j + 1)` and `ratio = C(j + 1) / C(j)`, from j = 1 (C(1) = 1).
    let (mut ln_c, mut ratio) = (c2.ln(), c2);
    for j in 1..k - 1 {
        let next_ratio = 1.0 + nf / (j as f64 * ratio);
        ln_c += next_ratio.ln();
        ratio = next_ratio;
    }
    ln_c
}

/// Largest absolute error of [`fast_log2`] (checked by a test against `f64::log2`).
#[cfg(test)]
const FAST_LOG2_ERROR: f64 = 1e-8;

/// Entries of [`C_LOG2_C`].
const C_LOG2_C_LEN: usize = 2048;

/// `c * fast_log2(c)` for `c < C_LOG2_C_LEN` (0 for 0), made at compile time (16 KiB).
static C_LOG2_C: [f64; C_LOG2_C_LEN] = {
    let mut t = [0.0; C_LOG2_C_LEN];
    let mut c = 1;
    while c < C_LOG2_C_LEN {
        t[c] = c as f64 * fast_log2(c as f64);
        c += 1;
    }
    t
};

/// `log2(x)` for finite `x >= 1`, within 1e-8: the exponent from the float's bits and
/// `ln` of the mantissa (scaled into `[1/sqrt2, sqrt2)`) as `2 atanh((m - 1) / (m + 1))`,
/// five terms of its series. A division and a few multiplies, where libm's `log2` is a
/// call; `const` so that [`C_LOG2_C`] is built by the compiler.
#[inline]
pub const fn fast_log2(x: f64) -> f64 {
    let bits = x.to_bits();
    let m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    let big = m > std::f64::consts::SQRT_2;
    let m = if big { m * 0.5 } else { m };
    let e = ((bits >> 52) & 0x7ff) as i64 - 1023 + big as i64;
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let ln = 2.0 * t * (1.0 + t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0 + t2 / 9.0))));
    e as f64 + ln * std::f64::consts::LOG2_E
}

/// An encoded coder stream that cannot be decoded: truncated, inconsistent or hostile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt {coder} stream: {reason}")]
pub struct CorruptStream {
    /// Which coder rejected the stream (`"huffman"`, `"rans"`, ...).
    pub coder: &'static str,
    /// What was wrong, for the error message.
    pub reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_entropy() {
        let h = Histogram::of(&[1, 1, 2, 2, 3]);
        assert_eq!(h.total, 5);
        assert_eq!(h.counts[1], 2);
        assert_eq!(h.counts[3], 1);
        assert_eq!(h.distinct(), 3);
        assert_eq!(h.single_symbol(), None);
        let h = Histogram::of(&[7; 9]);
        assert_eq!(h.single_symbol(), Some(7));
        assert_eq!(h.entropy_bits_per_symbol(), 0.0);
        let h = Histogram::of(&[0, 1, 2, 3]);
        assert!((h.entropy_bits_per_symbol() - 2.0).abs() < 1e-12);
    }

    /// `len` near-uniform bytes: the low byte of each xorshift32 state from `seed`.
    fn xorshift_bytes(seed: u32, len: usize) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn a_sample_needs_every_byte_value_and_sums_to_the_length() {
        let uniform = xorshift_bytes(0x9E37_79B9, 300_001);
        let exact = Histogram::of(&uniform);
        let sampled = Histogram::sampled(&uniform).expect("all 256 values in the sample");
        assert_eq!(sampled.total, uniform.len());
        assert_eq!(
            sampled.counts.iter().map(|&c| c as usize).sum::<usize>(),
            uniform.len()
        );
        assert!(sampled.counts.iter().all(|&c| c > 0));
        // Close to the exact counts: ~1170 per value, an eighth of them sampled.
        for (s, e) in sampled.counts.iter().zip(&exact.counts) {
            assert!(
                (*s as f64 - *e as f64).abs() < 0.35 * *e as f64,
                "{s} vs {e}"
            );
        }
        let cost = |h: &Histogram| h.entropy_bytes();
        assert!((cost(&sampled) - cost(&exact)).abs() < 0.001 * cost(&exact));
        // A value missing from the sample (here: from the whole input) means no estimate.
        let missing: Vec<u8> = uniform.iter().map(|&b| b.max(1)).collect();
        assert!(Histogram::sampled(&missing).is_none());
        // One run of every stride is sampled: a value (255) found in one run only is seen
        // for exactly one run position per block.
        let (blocks, runs_per_block) = (4, SAMPLE_STRIDE / SAMPLE_RUN);
        let base: Vec<u8> = (0..blocks * SAMPLE_STRIDE)
            .map(|i| (i % 255) as u8)
            .collect();
        let seen: Vec<usize> = (0..blocks * runs_per_block)
            .filter(|&k| {
                let mut probe = base.clone();
                probe[k * SAMPLE_RUN + 100] = 255;
                Histogram::sampled(&probe).is_some()
            })
            .collect();
        assert_eq!(seen.len(), blocks, "{seen:?}");
        assert!(seen
            .iter()
            .enumerate()
            .all(|(block, &k)| k / runs_per_block == block));
        // Rows of 4 KiB whose last KiB is zero padding: the sample still sees the zeros in
        // their share (a fixed first KiB would see none of them).
        let padded: Vec<u8> = uniform[..262_144]
            .chunks(4096)
            .flat_map(|row| row[..3072].iter().copied().chain([0u8; 1024]))
            .collect();
        let exact = Histogram::of(&padded).counts[0] as f64;
        let sampled = Histogram::sampled(&padded).expect("all values").counts[0] as f64;
        assert!(
            (sampled - exact).abs() < 0.2 * exact,
            "{sampled} vs {exact}"
        );
    }

    /// Shtarkov's sum by enumerating every count vector (small `k` and `n` only).
    fn shtarkov_by_enumeration(k: usize, n: usize) -> f64 {
        fn walk(k: usize, left: usize, n: usize, acc: f64) -> f64 {
            // `acc` holds ln(n! / prod(c!) * prod((c/n)^c)) of the counts chosen so far.
            if k == 1 {
                let c = left as f64;
                let term = if left == 0 {
                    0.0
                } else {
                    c * (c / n as f64).ln()
                };
                return (acc - ln_factorial(left) + term).exp();
            }
            (0..=left)
                .map(|c| {
                    let cf = c as f64;
                    let term = if c == 0 {
                        0.0
                    } else {
                        cf * (cf / n as f64).ln()
                    };
                    walk(k - 1, left - c, n, acc - ln_factorial(c) + term)
                })
                .sum()
        }
        walk(k, n, n, ln_factorial(n))
    }

    #[test]
    fn model_cost_is_shtarkovs_sum_and_the_symbol_set() {
        for k in 2..=5 {
            for n in [1, 2, 3, 7, 20, 33] {
                let want = shtarkov_by_enumeration(k, n).ln();
                let got = ln_shtarkov(k, n);
                assert!(
                    (got - want).abs() < 1e-9 * want.abs().max(1.0),
                    "k {k} n {n}: {got} vs {want}"
                );
            }
        }
        // The asymptotic C(2, n) continues the exact sum.
        let n = SHTARKOV_EXACT_MAX;
        let (exact, asymptotic) = (ln_shtarkov(2, n), ln_shtarkov(2, n + 1));
        let step = 0.5 * ((n + 1) as f64 / n as f64).ln(); // C(2, n) grows like sqrt(n)
        assert!(
            (asymptotic - exact - step).abs() < 1e-4,
            "{exact} vs {asymptotic}"
        );
        // Stirling's series continues the exact sum.
        let exact_16: f64 = (2..=16).map(|i| (i as f64).ln()).sum();
        assert!((ln_factorial(16) - exact_16).abs() < 1e-10);
        // Random bytes: the entropy of a short sample is well under the 8 bits a byte that
        // storing them costs, and the universal code's cost is a little over it.
        let bytes = xorshift_bytes(0x2545_F491, 1536);
        let h = Histogram::of(&bytes);
        let raw_bits = 8.0 * bytes.len() as f64;
        assert!(h.entropy_bits() < 0.99 * raw_bits);
        let with_model = h.entropy_bits() + h.model_cost_bits();
        assert!(
            with_model > raw_bits && with_model < 1.05 * raw_bits,
            "{with_model} vs {raw_bits}"
        );
        // One symbol, or none: nothing to describe.
        assert_eq!(Histogram::of(&[3; 10]).model_cost_bits(), 0.0);
    }

    #[test]
    fn presence_marks_the_symbols_that_occur() {
        let mut x = 3u64;
        let mut sets = vec![
            vec![0u8, 5, 5, 63, 64, 200, 255],
            vec![],
            (0..=255).collect(),
        ];
        for density in [1u64, 10, 50, 90] {
            sets.push(
                (0..=255u8)
                    .filter(|_| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        (x >> 33) % 100 < density
                    })
                    .collect(),
            );
        }
        for symbols in sets {
            let h = Histogram::of(&symbols);
            let set = h.presence();
            for s in 0..256 {
                assert_eq!(set[s / 64] >> (s % 64) & 1 == 1, h.counts[s] > 0, "{s}");
            }
        }
    }

    #[test]
    fn counts_at_the_narrow_counters_limit() {
        // One value everywhere: each sub-histogram's counter of it is as high as it gets.
        let limit = 4 * (u16::MAX as usize - 3);
        for n in [limit - 1, limit, limit + 1, limit + 3] {
            let h = Histogram::of(&vec![7u8; n]);
            assert_eq!((h.counts[7] as usize, h.total), (n, n));
        }
    }

    #[test]
    fn counts_match_a_plain_count() {
        let mut x = 5u64;
        for len in [0usize, 1, 7, 8, 9, 63, 64, 1000, 4099] {
            let symbols: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (x >> 56) as u8 & 0xf3
                })
                .collect();
            let mut want = [0u32; 256];
            symbols.iter().for_each(|&s| want[s as usize] += 1);
            let h = Histogram::of(&symbols);
            assert_eq!(h.counts, want);
            assert_eq!(h.total, len);
        }
    }

    #[test]
    fn fast_log2_is_close_to_libm() {
        let mut worst = 0.0f64;
        let mut check = |x: f64| worst = worst.max((fast_log2(x) - x.log2()).abs());
        for i in 1..=1u64 << 17 {
            check(i as f64);
        }
        let mut x = 1u64;
        for _ in 0..200_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            check((x >> 11) as f64 + 1.0);
            check((x >> 40) as f64 + 1.0);
        }
        assert!(worst < FAST_LOG2_ERROR, "worst error {worst}");
        // The compile-time table holds what the function computes at run time.
        for c in [1usize, 2, 3, 1000, C_LOG2_C_LEN - 1] {
            assert_eq!(
                C_LOG2_C[c],
                c as f64 * fast_log2(std::hint::black_box(c as f64))
            );
        }
        assert_eq!(C_LOG2_C[0], 0.0);
    }

    #[test]
    fn entropy_visiting_used_groups_is_the_full_sum_to_the_bit() {
        let full = |h: &Histogram| {
            let mut acc = [0.0f64; 4];
            for chunk in h.counts.chunks_exact(4) {
                for (a, &c) in acc.iter_mut().zip(chunk) {
                    *a += c as f64 * fast_log2((c as f64).max(1.0));
                }
            }
            let n = h.total as f64;
            (n * fast_log2(n) - ((acc[0] + acc[1]) + (acc[2] + acc[3]))).max(0.0)
        };
        let mut x = 11u64;
        for len in [1usize, 3, 100, 6144, 70_000] {
            for spread in [2u64, 16, 97, 256] {
                let symbols: Vec<u8> = (0..len)
                    .map(|_| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        ((x >> 33) % spread * 251 / spread) as u8 ^ (x >> 60) as u8
                    })
                    .collect();
                let h = Histogram::of(&symbols);
                assert_eq!(
                    h.entropy_bits().to_bits(),
                    full(&h).to_bits(),
                    "{len} {spread}"
                );
            }
        }
    }

    #[test]
    fn entropy_lower_bound_is_below_and_close() {
        let mut x = 7u64;
        for len in [2usize, 5, 100, 4096, 6144, 100_000] {
            for skew in [1u64, 3, 8, 40] {
                let symbols: Vec<u8> = (0..len)
                    .map(|_| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        ((x >> 33) % 256 / skew.max(1) * ((x >> 20) % skew.max(1))) as u8
                    })
                    .collect();
                let h = Histogram::of(&symbols);
                let exact = h.entropy_bits_per_symbol() * len as f64;
                let lb = h.entropy_bits_lower_bound();
                assert!(lb <= exact, "{lb} > {exact}");
                assert!(exact - lb < 1e-5 * len as f64 + 1e-6, "{lb} vs {exact}");
            }
        }
        assert_eq!(Histogram::of(&[]).entropy_bits_lower_bound(), 0.0);
        assert_eq!(Histogram::of(&[3; 10]).entropy_bits_lower_bound(), 0.0);
    }
}
