//! Where a guest's memory is: its image, and the RAM nothing uses.

use core::ops::Range;

use crate::arch;

/// The memory the guest image occupies, from its Image header to the end of
/// its BSS (the vCPU stacks included). Empty on the host.
#[must_use]
pub fn image_range() -> Range<u64> {
    arch::image_range()
}

/// The largest range of `ram` that overlaps none of `reserved` (the image,
/// the device tree, ...); empty if there is none.
#[must_use]
pub fn largest_free_range(ram: Range<u64>, reserved: &[Range<u64>]) -> Range<u64> {
    let overlaps_start = |start: u64| reserved.iter().any(|range| range.contains(&start));
    let candidates = core::iter::once(ram.start).chain(reserved.iter().map(|range| range.end));
    let mut best = ram.start..ram.start;
    for start in candidates {
        if !ram.contains(&start) || overlaps_start(start) {
            continue;
        }
        let end = reserved
            .iter()
            .map(|range| range.start)
            .filter(|&reserved_start| reserved_start > start)
            .fold(ram.end, u64::min);
        if end - start > best.end - best.start {
            best = start..end;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: Range<u64> = 0x4000_0000..0x4400_0000;

    #[test]
    fn the_largest_gap_wins() {
        // Tessera: image at +0x80000, device tree in the last 64 KiB.
        let image = 0x4008_0000..0x400A_6000;
        let tree = 0x43E0_0000..0x43E0_1000;
        assert_eq!(
            largest_free_range(RAM, &[image.clone(), tree.clone()]),
            0x400A_6000..0x43E0_0000
        );
        // QEMU: device tree at the start of RAM, below the image.
        let low_tree = 0x4000_0000..0x4010_0000;
        let high_image = 0x4020_0000..0x4022_0000;
        assert_eq!(
            largest_free_range(RAM, &[low_tree, high_image]),
            0x4022_0000..0x4400_0000
        );
    }

    #[test]
    fn reserved_ranges_outside_ram_do_not_matter() {
        let below = 0x1000..0x2000;
        assert_eq!(largest_free_range(RAM, &[below]), RAM);
        assert_eq!(largest_free_range(RAM, &[]), RAM);
        let straddling = 0x3000_0000..0x4100_0000;
        assert_eq!(
            largest_free_range(RAM, &[straddling]),
            0x4100_0000..0x4400_0000
        );
    }

    #[test]
    fn fully_reserved_ram_leaves_nothing() {
        let everything = 0x3000_0000..0x5000_0000;
        assert!(largest_free_range(RAM, &[everything]).is_empty());
    }

    #[test]
    fn overlapping_reservations_are_merged_in_effect() {
        let free = largest_free_range(RAM, &[0x4000_0000..0x4200_0000, 0x4100_0000..0x4300_0000]);
        assert_eq!(free, 0x4300_0000..0x4400_0000);
    }
}
