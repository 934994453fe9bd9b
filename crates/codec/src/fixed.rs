//! A vector of at most `N` items kept inline: per-frame bookkeeping (planes, symbols,
//! lanes) without a heap allocation, so that coding a stream of small K/V pages allocates
//! nothing in steady state. (The `arrayvec` crate does this; it is not among the packages
//! this project may use.)

use std::ops::{Deref, DerefMut};

/// Up to `N` items of a `Copy` type, inline.
#[derive(Clone, Copy)]
pub struct FixedVec<T: Copy + Default, const N: usize> {
    items: [T; N],
    len: usize,
}

impl<T: Copy + Default, const N: usize> FixedVec<T, N> {
    /// An empty vector.
    pub fn new() -> Self {
        FixedVec {
            items: [T::default(); N],
            len: 0,
        }
    }

    /// Appends `item`. Callers bound their counts by `N` (a frame's planes, a byte
    /// alphabet); going past it is a bug, reported by a panic as a `Vec` index would be.
    #[inline]
    pub fn push(&mut self, item: T) {
        match self.items.get_mut(self.len) {
            Some(slot) => *slot = item,
            None => panic!("FixedVec of {N} items is full"),
        }
        self.len += 1;
    }

    /// Empties the vector.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

impl<T: Copy + Default, const N: usize> Default for FixedVec<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Default, const N: usize> Deref for FixedVec<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.items[..self.len]
    }
}

impl<T: Copy + Default, const N: usize> DerefMut for FixedVec<T, N> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.items[..self.len]
    }
}

impl<'a, T: Copy + Default, const N: usize> IntoIterator for &'a FixedVec<T, N> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: Copy + Default, const N: usize> Extend<T> for FixedVec<T, N> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        iter.into_iter().for_each(|x| self.push(x));
    }
}

impl<T: Copy + Default, const N: usize> FromIterator<T> for FixedVec<T, N> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut v = Self::new();
        v.extend(iter);
        v
    }
}

impl<T: Copy + Default + std::fmt::Debug, const N: usize> std::fmt::Debug for FixedVec<T, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq for FixedVec<T, N> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Copy + Default + Eq, const N: usize> Eq for FixedVec<T, N> {}

#[cfg(test)]
mod tests {
    use super::FixedVec;

    #[test]
    fn pushes_and_derefs() {
        let mut v: FixedVec<u8, 4> = (1..=3).collect();
        v.push(4);
        assert_eq!(&*v, &[1, 2, 3, 4]);
        v[0] = 9;
        assert_eq!(v.first(), Some(&9));
        v.clear();
        assert!(v.is_empty());
    }

    #[test]
    #[should_panic(expected = "full")]
    fn overflow_panics() {
        let mut v: FixedVec<u8, 1> = FixedVec::new();
        v.push(1);
        v.push(2);
    }
}
