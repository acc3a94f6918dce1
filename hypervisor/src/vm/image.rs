//! Loading a VM's RAM from its pristine image: at build time and on every
//! SYSTEM_RESET. The RAM is zeroed, the image copied to its load offset and
//! the device tree to the top 64 KiB, and all of it made visible to a guest
//! that starts with its MMU and caches off (docs/system-image.md).
//!
//! The manifest was checked by the tool, but a package is data from
//! outside: every size is checked again here before it indexes RAM.

use super::system::{GuestRam, Hardware};
use crate::memory::address::PhysAddr;

/// Where the guest's device tree goes: the last 64 KiB of its RAM.
pub const DEVICE_TREE_RESERVE: u64 = 0x1_0000;

/// A VM's image and device tree as the package holds them.
#[derive(Clone, Copy, Debug)]
pub struct PristineImage {
    pub image: &'static [u8],
    /// Where in RAM the image goes (its header's `text_offset`).
    pub image_load_offset: u64,
    pub device_tree: &'static [u8],
}

/// Why an image cannot be loaded into a VM's RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// The image runs into the device tree's 64 KiB, or past RAM.
    ImageTooLarge,
    /// The device tree is larger than its 64 KiB.
    DeviceTreeTooLarge,
    /// RAM is not a whole number of MiB (the zeroing works in 1 KiB
    /// blocks, and the tool only makes 2 MiB multiples).
    RamSize,
}

// Written out rather than derived `Debug`: the image then carries none of
// the `Debug` builders.
impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::ImageTooLarge => "the image runs into the device tree's 64 KiB or past RAM",
            Self::DeviceTreeTooLarge => "the device tree is larger than its 64 KiB",
            Self::RamSize => "RAM is not a whole number of MiB",
        })
    }
}

impl PristineImage {
    /// The guest-physical address of the device tree, passed in x0.
    #[must_use]
    pub const fn device_tree_address(ram: &GuestRam) -> u64 {
        ram.guest.0 + ram.size - DEVICE_TREE_RESERVE
    }

    /// Checks the image and device tree fit `ram_size`; returns the
    /// device tree's offset in RAM.
    ///
    /// # Errors
    /// See [`LoadError`].
    pub fn fit(&self, ram_size: u64) -> Result<u64, LoadError> {
        if ram_size == 0 || !ram_size.is_multiple_of(1024 * 1024) {
            return Err(LoadError::RamSize);
        }
        let tree_offset = ram_size
            .checked_sub(DEVICE_TREE_RESERVE)
            .ok_or(LoadError::RamSize)?;
        let image_end = self
            .image_load_offset
            .checked_add(self.image.len() as u64)
            .ok_or(LoadError::ImageTooLarge)?;
        if image_end > tree_offset {
            return Err(LoadError::ImageTooLarge);
        }
        if self.device_tree.len() as u64 > DEVICE_TREE_RESERVE {
            return Err(LoadError::DeviceTreeTooLarge);
        }
        Ok(tree_offset)
    }

    /// (Re)writes the VM's RAM.
    ///
    /// # Errors
    /// See [`LoadError`]; RAM is untouched then.
    ///
    /// # Safety
    /// `ram.host..+ram.size` must be the VM's own RAM, 1 KiB aligned, and
    /// no vCPU of the VM may run meanwhile.
    pub unsafe fn load(&self, ram: &GuestRam, hardware: &impl Hardware) -> Result<(), LoadError> {
        let tree_offset = self.fit(ram.size)?;
        // SAFETY: the caller vouches for the range; `fit`
        // checked that the size is whole MiB and that the image and the
        // tree lie inside it.
        unsafe { hardware.zero_guest_ram(ram.host, ram.size) };
        // SAFETY: as above.
        unsafe {
            hardware.copy_to_guest_ram(PhysAddr(ram.host.0 + self.image_load_offset), self.image);
        }
        // SAFETY: as above.
        unsafe { hardware.copy_to_guest_ram(PhysAddr(ram.host.0 + tree_offset), self.device_tree) };
        hardware.invalidate_instruction_caches();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::address::GuestPhysAddr;
    use crate::vm::system::tests::FakeHardware;

    const MIB: u64 = 1 << 20;

    fn ram(size: u64) -> GuestRam {
        GuestRam {
            guest: GuestPhysAddr(0x4000_0000),
            host: PhysAddr(0x8000_0000),
            size,
        }
    }

    #[test]
    fn the_image_goes_to_its_offset_and_the_tree_to_the_top_of_zeroed_ram() {
        let hardware = FakeHardware::default();
        let image = PristineImage {
            image: b"image",
            image_load_offset: 0x8_0000,
            device_tree: b"tree",
        };
        // SAFETY: the fake touches no memory.
        unsafe { image.load(&ram(2 * MIB), &hardware) }.unwrap();
        assert_eq!(
            *hardware.memory_operations.borrow(),
            [
                "zero 0x80000000 +0x200000",
                "copy 0x80080000 +0x5",
                "copy 0x801f0000 +0x4",
                "invalidate instruction caches",
            ]
        );
        assert_eq!(
            PristineImage::device_tree_address(&ram(2 * MIB)),
            0x401F_0000
        );
    }

    #[test]
    fn what_does_not_fit_is_refused_before_ram_is_touched() {
        let hardware = FakeHardware::default();
        let big = [0u8; 0x1000];
        let load = |image: &'static [u8], offset, tree: &'static [u8], size| {
            let pristine = PristineImage {
                image,
                image_load_offset: offset,
                device_tree: tree,
            };
            // SAFETY: the fake touches no memory.
            unsafe { pristine.load(&ram(size), &hardware) }
        };
        let big: &'static [u8] = Box::leak(Box::new(big));
        let huge_tree: &'static [u8] = Box::leak(vec![0u8; 0x1_0001].into_boxed_slice());
        assert_eq!(
            load(big, 2 * MIB - 0x1_0000 - 0xFFF, b"", 2 * MIB),
            Err(LoadError::ImageTooLarge)
        );
        assert_eq!(
            load(big, u64::MAX - 1, b"", 2 * MIB),
            Err(LoadError::ImageTooLarge)
        );
        assert_eq!(
            load(big, 0, huge_tree, 2 * MIB),
            Err(LoadError::DeviceTreeTooLarge)
        );
        assert_eq!(load(big, 0, b"", 3 * MIB / 2), Err(LoadError::RamSize));
        assert_eq!(load(big, 0, b"", 0), Err(LoadError::RamSize));
        assert!(hardware.memory_operations.borrow().is_empty());
        // Exactly up to the tree is fine.
        assert_eq!(load(big, 2 * MIB - 0x1_0000 - 0x1000, b"", 2 * MIB), Ok(()));
    }
}
