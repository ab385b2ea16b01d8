//! Region bitmaps: one bit per `REGION_SIZE` bytes of a volume, set when the region may
//! have been written. A replica keeps one on disk (see `volume.rs`); the engine unions them
//! to know what a rebuild or a resync must copy.

use std::sync::atomic::{AtomicU64, Ordering};

/// 1 MiB: a 1 TiB volume needs a 128 KiB bitmap, and an incremental rebuild copies at most
/// 1 MiB per 4 KiB write that happened while a replica was away.
pub const REGION_SIZE: u64 = 1 << 20;

pub fn regions_for(size: u64) -> u64 {
    size.div_ceil(REGION_SIZE)
}

/// The regions `offset..offset+len` touches.
pub fn regions_of(offset: u64, len: u64) -> std::ops::Range<u64> {
    if len == 0 {
        return 0..0;
    }
    offset / REGION_SIZE..(offset + len - 1) / REGION_SIZE + 1
}

#[derive(Debug)]
pub struct RegionBitmap {
    regions: u64,
    words: Vec<AtomicU64>,
}

impl RegionBitmap {
    pub fn new(regions: u64) -> Self {
        let words = (0..regions.div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        Self { regions, words }
    }

    pub fn full(regions: u64) -> Self {
        let bitmap = Self::new(regions);
        for r in 0..regions {
            bitmap.set(r);
        }
        bitmap
    }

    /// The on-disk and wire form: `ceil(regions/8)` bytes, region 0 in bit 0 of byte 0.
    /// Bits beyond `regions` are ignored.
    pub fn from_bytes(regions: u64, bytes: &[u8]) -> Self {
        let bitmap = Self::new(regions);
        for r in 0..regions.min(bytes.len() as u64 * 8) {
            if bytes[(r / 8) as usize] & (1 << (r % 8)) != 0 {
                bitmap.set(r);
            }
        }
        bitmap
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.regions.div_ceil(8) as usize];
        for r in self.iter() {
            out[(r / 8) as usize] |= 1 << (r % 8);
        }
        out
    }

    pub fn regions(&self) -> u64 {
        self.regions
    }

    /// Sets region `r`; true if it was clear.
    pub fn set(&self, r: u64) -> bool {
        let bit = 1u64 << (r % 64);
        self.words[(r / 64) as usize].fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    pub fn test(&self, r: u64) -> bool {
        self.words[(r / 64) as usize].load(Ordering::Acquire) & (1 << (r % 64)) != 0
    }

    pub fn clear_all(&self) {
        for word in &self.words {
            word.store(0, Ordering::Release);
        }
    }

    pub fn union(&self, other: &RegionBitmap) {
        for (mine, theirs) in self.words.iter().zip(&other.words) {
            mine.fetch_or(theirs.load(Ordering::Acquire), Ordering::AcqRel);
        }
    }

    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Acquire).count_ones() as u64)
            .sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.regions).filter(|&r| self.test(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_of_ranges() {
        assert_eq!(regions_of(0, 1), 0..1);
        assert_eq!(regions_of(REGION_SIZE - 1, 2), 0..2);
        assert_eq!(regions_of(REGION_SIZE, REGION_SIZE), 1..2);
        assert_eq!(regions_of(5, 0), 0..0);
        assert_eq!(regions_for(REGION_SIZE + 1), 2);
    }

    #[test]
    fn bytes_round_trip_and_union() {
        let a = RegionBitmap::new(70);
        assert!(a.set(0));
        assert!(!a.set(0));
        a.set(69);
        let b = RegionBitmap::from_bytes(70, &a.to_bytes());
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 69]);
        let c = RegionBitmap::new(70);
        c.set(5);
        c.union(&b);
        assert_eq!(c.count(), 3);
        c.clear_all();
        assert_eq!(c.count(), 0);
        assert_eq!(RegionBitmap::full(70).count(), 70);
        // Short or garbage input never panics.
        assert_eq!(RegionBitmap::from_bytes(70, &[0xff]).count(), 8);
    }
}
