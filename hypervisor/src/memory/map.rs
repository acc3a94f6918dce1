//! The physical memory map: RAM minus everything that is already in use.
//!
//! Built at boot before the heap exists, so it uses fixed-capacity storage.
//! The boot CPU adds the RAM ranges from the device tree, removes the
//! hypervisor image, the device tree blob, the initrd, `/memreserve/` entries,
//! `/reserved-memory` nodes and the board's firmware areas, and hands what is
//! left to the heap and the page allocator.

use crate::memory::address::{PAGE_SIZE, PhysAddr, PhysRange};

/// How many disjoint ranges a map can hold. Removing reservations splits
/// ranges, so this is well above the number of RAM banks of any board.
pub const MAX_RANGES: usize = 16;

/// Errors while building the map. All are configuration or firmware faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryMapError {
    /// More disjoint ranges than `MAX_RANGES`.
    TooManyRanges,
}

/// A sorted set of disjoint, non-adjacent physical ranges.
#[derive(Clone, Debug)]
pub struct RangeSet {
    ranges: [PhysRange; MAX_RANGES],
    len: usize,
}

impl Default for RangeSet {
    fn default() -> Self {
        Self::new()
    }
}

impl RangeSet {
    #[must_use]
    pub const fn new() -> Self {
        Self {
            ranges: [PhysRange {
                start: PhysAddr(0),
                end: PhysAddr(0),
            }; MAX_RANGES],
            len: 0,
        }
    }

    /// The ranges, sorted by address.
    #[must_use]
    pub fn ranges(&self) -> &[PhysRange] {
        // `len` never exceeds `MAX_RANGES` (every writer checks); the `min`
        // shows the compiler so, which drops a bounds check and its panic.
        &self.ranges[..self.len.min(MAX_RANGES)]
    }

    /// Total bytes covered.
    #[must_use]
    pub fn total_size(&self) -> u64 {
        self.ranges().iter().map(PhysRange::size).sum()
    }

    /// Adds a range, merging it with any range it overlaps or touches.
    ///
    /// # Errors
    /// `TooManyRanges` when the set is full; the set is unchanged then.
    pub fn add(&mut self, range: PhysRange) -> Result<(), MemoryMapError> {
        if range.is_empty() {
            return Ok(());
        }
        let mut merged = range;
        let mut kept = [PhysRange::default(); MAX_RANGES];
        let mut kept_len = 0;
        for existing in self.ranges() {
            if existing.start.0 <= merged.end.0 && merged.start.0 <= existing.end.0 {
                merged.start = merged.start.min(existing.start);
                merged.end = merged.end.max(existing.end);
            } else {
                // `kept` has room for every range the set holds.
                let Some(slot) = kept.get_mut(kept_len) else {
                    return Err(MemoryMapError::TooManyRanges);
                };
                *slot = *existing;
                kept_len += 1;
            }
        }
        if kept_len >= MAX_RANGES {
            return Err(MemoryMapError::TooManyRanges);
        }
        let position = kept[..kept_len]
            .iter()
            .position(|existing| existing.start > merged.start)
            .unwrap_or(kept_len);
        // The merged range goes in at `position`; each range from there on
        // moves up one place.
        let mut carried = merged;
        for slot in kept[..=kept_len].iter_mut().skip(position) {
            carried = core::mem::replace(slot, carried);
        }
        self.ranges = kept;
        self.len = kept_len + 1;
        Ok(())
    }

    /// Removes every byte of `hole` from the set.
    ///
    /// # Errors
    /// `TooManyRanges` when the hole splits a range and the set is full; the
    /// set is unchanged then.
    pub fn remove(&mut self, hole: PhysRange) -> Result<(), MemoryMapError> {
        if hole.is_empty() {
            return Ok(());
        }
        let mut result = [PhysRange::default(); MAX_RANGES];
        let mut result_len = 0;
        for existing in self.ranges() {
            let pieces = [
                PhysRange {
                    start: existing.start,
                    end: existing.end.min(hole.start),
                },
                PhysRange {
                    start: existing.start.max(hole.end),
                    end: existing.end,
                },
            ];
            for piece in pieces.into_iter().filter(|piece| !piece.is_empty()) {
                let Some(slot) = result.get_mut(result_len) else {
                    return Err(MemoryMapError::TooManyRanges);
                };
                *slot = piece;
                result_len += 1;
            }
        }
        self.ranges = result;
        self.len = result_len;
        Ok(())
    }

    /// Shrinks every range to whole pages and drops the ones left empty.
    pub fn trim_to_pages(&mut self) {
        let whole_pages = self.ranges().iter().filter_map(|range| {
            let start = range.start.checked_align_up(PAGE_SIZE)?;
            let end = range.end.align_down(PAGE_SIZE);
            (start < end).then_some(PhysRange { start, end })
        });
        let mut trimmed = [PhysRange::default(); MAX_RANGES];
        let mut kept = 0;
        for (slot, range) in trimmed.iter_mut().zip(whole_pages) {
            *slot = range;
            kept += 1;
        }
        self.ranges = trimmed;
        self.len = kept;
    }

    /// Carves `size` bytes aligned to `alignment` out of the lowest range
    /// that can hold them, and removes them from the set.
    pub fn take(&mut self, size: u64, alignment: u64) -> Option<PhysRange> {
        let found = self.ranges().iter().find_map(|range| {
            let start = range.start.checked_align_up(alignment)?;
            let end = start.checked_add(size)?;
            (end <= range.end).then_some(PhysRange { start, end })
        })?;
        // Removing a range at an edge or from the middle of one range can
        // split at most once; the set cannot overflow because `take` only
        // runs on sets built by `add`, which leave room.
        self.remove(found).ok()?;
        Some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, end: u64) -> PhysRange {
        PhysRange {
            start: PhysAddr(start),
            end: PhysAddr(end),
        }
    }

    #[test]
    fn add_merges_overlapping_and_adjacent_ranges() {
        let mut set = RangeSet::new();
        set.add(range(0x5000, 0x6000)).unwrap();
        set.add(range(0x1000, 0x2000)).unwrap();
        set.add(range(0x2000, 0x3000)).unwrap();
        assert_eq!(
            set.ranges(),
            &[range(0x1000, 0x3000), range(0x5000, 0x6000)]
        );
        set.add(range(0x2800, 0x5800)).unwrap();
        assert_eq!(set.ranges(), &[range(0x1000, 0x6000)]);
        assert_eq!(set.total_size(), 0x5000);
    }

    #[test]
    fn remove_splits_and_trims() {
        let mut set = RangeSet::new();
        set.add(range(0x4000_0000, 0x8000_0000)).unwrap();
        // The hypervisor image in the middle, the device tree at the start.
        set.remove(range(0x4008_0000, 0x400A_0000)).unwrap();
        set.remove(range(0x4000_0000, 0x4001_0000)).unwrap();
        assert_eq!(
            set.ranges(),
            &[
                range(0x4001_0000, 0x4008_0000),
                range(0x400A_0000, 0x8000_0000)
            ]
        );
        // A hole that covers a whole range removes it.
        set.remove(range(0x3000_0000, 0x4008_0000)).unwrap();
        assert_eq!(set.ranges(), &[range(0x400A_0000, 0x8000_0000)]);
    }

    #[test]
    fn trim_to_pages_rounds_inward() {
        let mut set = RangeSet::new();
        set.add(range(0x1001, 0x3fff)).unwrap();
        set.add(range(0x8100, 0x8200)).unwrap();
        set.trim_to_pages();
        assert_eq!(set.ranges(), &[range(0x2000, 0x3000)]);
    }

    #[test]
    fn take_returns_aligned_memory_and_removes_it() {
        let mut set = RangeSet::new();
        set.add(range(0x1000, 0x10_0000)).unwrap();
        set.add(range(0x40_0000, 0x80_0000)).unwrap();
        let taken = set.take(0x20_0000, 0x20_0000).unwrap();
        assert_eq!(taken, range(0x40_0000, 0x60_0000));
        assert_eq!(
            set.ranges(),
            &[range(0x1000, 0x10_0000), range(0x60_0000, 0x80_0000)]
        );
        assert_eq!(set.take(0x100_0000, PAGE_SIZE), None);
    }

    #[test]
    fn overflow_is_reported_and_leaves_the_set_unchanged() {
        let mut set = RangeSet::new();
        for index in 0..MAX_RANGES as u64 {
            set.add(range(index * 0x10_000, index * 0x10_000 + 0x1000))
                .unwrap();
        }
        let before = set.ranges().to_vec();
        assert_eq!(
            set.add(range(0x100_0000, 0x100_1000)),
            Err(MemoryMapError::TooManyRanges)
        );
        assert_eq!(
            set.remove(range(0x10, 0x20)),
            Err(MemoryMapError::TooManyRanges)
        );
        assert_eq!(set.ranges(), before.as_slice());
    }
}
