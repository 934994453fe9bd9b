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
        // Four sub-histograms break the store-to-load dependency on runs of equal
        // symbols (an exponent plane is mostly a handful of values).
        let mut sub = [[0u32; 256]; 4];
        let mut quads = symbols.chunks_exact(4);
        for q in &mut quads {
            sub[0][q[0] as usize] += 1;
            sub[1][q[1] as usize] += 1;
            sub[2][q[2] as usize] += 1;
            sub[3][q[3] as usize] += 1;
        }
        for &s in quads.remainder() {
            sub[0][s as usize] += 1;
        }
        let mut counts = [0u32; 256];
        for (i, c) in counts.iter_mut().enumerate() {
            *c = sub[0][i] + sub[1][i] + sub[2][i] + sub[3][i];
        }
        Histogram {
            counts,
            total: symbols.len(),
        }
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
        let n = self.total as f64;
        self.counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / n;
                -p * p.log2()
            })
            .sum()
    }

    /// Order-0 entropy of the whole plane in bytes (the floor no order-0 coder beats).
    pub fn entropy_bytes(&self) -> f64 {
        self.entropy_bits_per_symbol() * self.total as f64 / 8.0
    }
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
}
