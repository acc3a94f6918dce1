//! Typed addresses, so that a host-physical address is never passed where a
//! guest-physical one is meant (and vice versa).

use core::fmt;

/// The size of a translation granule and of the smallest mapping.
pub const PAGE_SIZE: u64 = 4096;

/// A host physical address. The hypervisor maps its own memory 1:1, so this
/// is also the EL2 virtual address of the same byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysAddr(pub u64);

/// A guest physical (intermediate physical) address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GuestPhysAddr(pub u64);

macro_rules! address_ops {
    ($name:ident) => {
        impl $name {
            #[must_use]
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            #[must_use]
            pub const fn is_aligned(self, alignment: u64) -> bool {
                self.0 % alignment == 0
            }

            #[must_use]
            pub const fn align_down(self, alignment: u64) -> Self {
                Self(self.0 - self.0 % alignment)
            }

            /// Rounds up; `None` if that would pass the end of the address space.
            #[must_use]
            pub const fn checked_align_up(self, alignment: u64) -> Option<Self> {
                let remainder = self.0 % alignment;
                if remainder == 0 {
                    Some(self)
                } else {
                    match self.0.checked_add(alignment - remainder) {
                        Some(value) => Some(Self(value)),
                        None => None,
                    }
                }
            }

            #[must_use]
            pub const fn checked_add(self, offset: u64) -> Option<Self> {
                match self.0.checked_add(offset) {
                    Some(value) => Some(Self(value)),
                    None => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

address_ops!(PhysAddr);
address_ops!(GuestPhysAddr);

/// A half-open range of host physical memory `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PhysRange {
    pub start: PhysAddr,
    pub end: PhysAddr,
}

impl PhysRange {
    /// A range from a base and a size; `None` if it would wrap.
    #[must_use]
    pub const fn from_base_size(base: u64, size: u64) -> Option<Self> {
        match base.checked_add(size) {
            Some(end) => Some(Self {
                start: PhysAddr(base),
                end: PhysAddr(end),
            }),
            None => None,
        }
    }

    #[must_use]
    pub const fn size(&self) -> u64 {
        self.end.0 - self.start.0
    }

    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.end.0 <= self.start.0
    }

    #[must_use]
    pub const fn contains(&self, address: PhysAddr) -> bool {
        address.0 >= self.start.0 && address.0 < self.end.0
    }

    #[must_use]
    pub const fn overlaps(&self, other: &Self) -> bool {
        self.start.0 < other.end.0 && other.start.0 < self.end.0
    }
}

impl From<tessera_platform::PhysRange> for PhysRange {
    fn from(range: tessera_platform::PhysRange) -> Self {
        Self {
            start: PhysAddr(range.base),
            end: PhysAddr(range.end()),
        }
    }
}

impl fmt::Display for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#012x}..{:#012x}", self.start.0, self.end.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_helpers() {
        assert_eq!(PhysAddr(0x1234).align_down(PAGE_SIZE), PhysAddr(0x1000));
        assert_eq!(
            PhysAddr(0x1234).checked_align_up(PAGE_SIZE),
            Some(PhysAddr(0x2000))
        );
        assert_eq!(
            PhysAddr(0x2000).checked_align_up(PAGE_SIZE),
            Some(PhysAddr(0x2000))
        );
        assert_eq!(PhysAddr(u64::MAX).checked_align_up(PAGE_SIZE), None);
        assert!(GuestPhysAddr(0x4000_0000).is_aligned(0x20_0000));
    }

    #[test]
    fn ranges() {
        let range = PhysRange::from_base_size(0x1000, 0x2000).unwrap();
        assert_eq!(range.size(), 0x2000);
        assert!(range.contains(PhysAddr(0x2fff)));
        assert!(!range.contains(PhysAddr(0x3000)));
        assert!(range.overlaps(&PhysRange::from_base_size(0x2fff, 1).unwrap()));
        assert!(!range.overlaps(&PhysRange::from_base_size(0x3000, 1).unwrap()));
        assert_eq!(PhysRange::from_base_size(u64::MAX, 2), None);
        assert_eq!(format!("{range}"), "0x0000001000..0x0000003000");
    }
}
