//! The few device-tree lookups test guests make: their RAM, their CPUs and
//! `/chosen/bootargs`. Every lookup returns an `Option`: a tree without the
//! node is an answer, not a panic.

use core::fmt;
use core::ops::Range;
use core::sync::atomic::{AtomicUsize, Ordering};

use fdt::Fdt;

/// The device-tree address vCPU 0 was entered with (0 until then).
static BOOT_ADDRESS: AtomicUsize = AtomicUsize::new(0);

/// The FDT header magic, big-endian at offset 0.
const MAGIC: u32 = 0xD00D_FEED;
/// The header fields read before the tree's size is known: magic, totalsize.
const SIZE_FIELDS_LEN: usize = 8;
/// Larger "trees" are taken for garbage. (Tessera's are below 2 MiB; QEMU's
/// own is 1 MiB.)
const MAX_SIZE: usize = 16 * 1024 * 1024;

/// How many `reg` ranges [`DeviceTree::compatible_regs`] returns.
pub const MAX_REGS: usize = 4;

/// Why there is no device tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceTreeError {
    /// The address is 0: nothing was passed (or not yet recorded).
    NoAddress,
    /// No FDT magic at the address.
    BadMagic,
    /// The header's total size is implausible (too small or above 16 MiB).
    BadSize(usize),
    /// The `fdt` crate rejected the tree.
    Malformed,
}

impl fmt::Display for DeviceTreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoAddress => f.write_str("no device tree address"),
            Self::BadMagic => f.write_str("no FDT magic"),
            Self::BadSize(size) => write!(f, "implausible FDT size {size:#x}"),
            Self::Malformed => f.write_str("malformed FDT"),
        }
    }
}

/// A node found by [`DeviceTree::compatible_nodes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompatibleNode<'a> {
    /// The first [`MAX_REGS`] ranges of its `reg`; a range without a size
    /// is left out.
    pub regs: [Option<Range<u64>>; MAX_REGS],
    /// Its `interrupts` property as written (big-endian cells); empty
    /// without one.
    pub interrupts: &'a [u8],
}

impl CompatibleNode<'_> {
    /// The `interrupts` cells, each as a `u32`.
    pub fn interrupt_cells(&self) -> impl Iterator<Item = u32> + '_ {
        self.interrupts
            .chunks_exact(4)
            .map(|cell| u32::from_be_bytes([cell[0], cell[1], cell[2], cell[3]]))
    }
}

/// A flattened device tree.
pub struct DeviceTree<'a> {
    fdt: Fdt<'a>,
    bytes: &'a [u8],
}

impl fmt::Debug for DeviceTree<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceTree")
            .field("address", &self.bytes.as_ptr())
            .field("size", &self.bytes.len())
            .finish()
    }
}

impl<'a> DeviceTree<'a> {
    /// Reads a tree from memory.
    ///
    /// # Errors
    /// See [`DeviceTreeError`].
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, DeviceTreeError> {
        let header = bytes
            .get(..SIZE_FIELDS_LEN)
            .ok_or(DeviceTreeError::BadSize(bytes.len()))?;
        check_size_fields(header)?;
        let fdt = Fdt::new(bytes).map_err(|_| DeviceTreeError::Malformed)?;
        let bytes = &bytes[..fdt.total_size()];
        Ok(Self { fdt, bytes })
    }

    /// Where the tree is and how large: the memory a guest must not
    /// overwrite while it uses the tree.
    #[must_use]
    pub fn memory_footprint(&self) -> Range<u64> {
        let start = self.bytes.as_ptr() as u64;
        start..start + self.bytes.len() as u64
    }

    /// The first range of the first `/memory` node's `reg`.
    #[must_use]
    pub fn memory(&self) -> Option<Range<u64>> {
        let region = self.fdt.find_node("/memory")?.reg()?.next()?;
        let start = region.starting_address as u64;
        Some(start..start.checked_add(region.size? as u64)?)
    }

    /// `/chosen/bootargs`, without its terminating NUL.
    #[must_use]
    pub fn bootargs(&self) -> Option<&'a str> {
        let value = self.fdt.find_node("/chosen")?.property("bootargs")?.value;
        let text = value.split(|&byte| byte == 0).next().unwrap_or(value);
        core::str::from_utf8(text).ok()
    }

    /// The first [`MAX_REGS`] ranges of the `reg` of the first node whose
    /// `compatible` list names `compatible`; `None` without such a node.
    /// A range without a size is left out.
    #[must_use]
    pub fn compatible_regs(&self, compatible: &str) -> Option<[Option<Range<u64>>; MAX_REGS]> {
        let node = self.fdt.find_compatible(&[compatible])?;
        let mut ranges = [const { None }; MAX_REGS];
        for (slot, region) in ranges.iter_mut().zip(node.reg().into_iter().flatten()) {
            let start = region.starting_address as u64;
            *slot = region
                .size
                .and_then(|size| Some(start..start.checked_add(size as u64)?));
        }
        Some(ranges)
    }

    /// Every node whose `compatible` list names `compatible`, in tree order:
    /// its first [`MAX_REGS`] `reg` ranges (as [`compatible_regs`]
    /// gives them) and its raw `interrupts` cells.
    ///
    /// [`compatible_regs`]: Self::compatible_regs
    pub fn compatible_nodes<'s>(
        &'s self,
        compatible: &'s str,
    ) -> impl Iterator<Item = CompatibleNode<'a>> + 's {
        self.fdt
            .all_nodes()
            .filter(move |node| {
                node.compatible()
                    .is_some_and(|list| list.all().any(|name| name == compatible))
            })
            .map(|node| {
                let mut regs = [const { None }; MAX_REGS];
                for (slot, region) in regs.iter_mut().zip(node.reg().into_iter().flatten()) {
                    let start = region.starting_address as u64;
                    *slot = region
                        .size
                        .and_then(|size| Some(start..start.checked_add(size as u64)?));
                }
                let interrupts = node.property("interrupts").map_or(&[][..], |p| p.value);
                CompatibleNode { regs, interrupts }
            })
    }

    /// The `reg` (MPIDR affinity) of each `/cpus/cpu@N` node, in tree order.
    pub fn cpu_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.fdt
            .find_node("/cpus")
            .into_iter()
            .flat_map(|cpus| cpus.children())
            .filter(|node| node.name.split('@').next() == Some("cpu"))
            .filter_map(|node| node.reg()?.next())
            .map(|region| region.starting_address as u64)
    }
}

impl DeviceTree<'static> {
    /// Reads the tree at `address`.
    ///
    /// # Safety
    /// `address` is 0 or at least 8 bytes are readable there; and if they
    /// start with the FDT magic, the whole tree (its header's `totalsize`
    /// bytes) is readable there and stays unchanged for the rest of the
    /// program.
    ///
    /// # Errors
    /// See [`DeviceTreeError`].
    pub unsafe fn from_address(address: usize) -> Result<Self, DeviceTreeError> {
        if address == 0 {
            return Err(DeviceTreeError::NoAddress);
        }
        // SAFETY: the caller promises 8 readable bytes at a non-zero
        // `address`; the slice lives only while the header is checked.
        let header = unsafe { core::slice::from_raw_parts(address as *const u8, SIZE_FIELDS_LEN) };
        let size = check_size_fields(header)?;
        // SAFETY: the magic is there, so (by the caller's promise) `size`
        // bytes are readable and stay unchanged for 'static.
        let bytes = unsafe { core::slice::from_raw_parts(address as *const u8, size) };
        Self::from_bytes(bytes)
    }

    /// The tree the guest was booted with (the `x0` of vCPU 0's entry).
    ///
    /// # Errors
    /// See [`DeviceTreeError`]; `NoAddress` before the runtime has started
    /// (and always on the host).
    pub fn boot() -> Result<Self, DeviceTreeError> {
        let address = BOOT_ADDRESS.load(Ordering::Relaxed);
        // SAFETY: the address is the one the loader entered vCPU 0 with, and
        // the guest interface puts the guest's device tree there. This crate
        // never writes to it; anything else that would must use `unsafe`
        // code whose obligations exclude memory this crate hands out.
        unsafe { Self::from_address(address) }
    }
}

/// Records the entry's `x0` for [`DeviceTree::boot`].
pub(crate) fn record_boot_address(address: usize) {
    BOOT_ADDRESS.store(address, Ordering::Relaxed);
}

/// Checks the magic and returns the total size from the first 8 header bytes.
fn check_size_fields(header: &[u8]) -> Result<usize, DeviceTreeError> {
    let field = |offset: usize| {
        u32::from_be_bytes([
            header[offset],
            header[offset + 1],
            header[offset + 2],
            header[offset + 3],
        ])
    };
    if field(0) != MAGIC {
        return Err(DeviceTreeError::BadMagic);
    }
    let size = field(4) as usize;
    if !(SIZE_FIELDS_LEN..=MAX_SIZE).contains(&size) {
        return Err(DeviceTreeError::BadSize(size));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use vm_fdt::FdtWriter;

    use super::*;

    /// A tree shaped like the ones Tessera writes for its guests.
    fn guest_tree(bootargs: Option<&str>, cpus: u32) -> Vec<u8> {
        let mut fdt = FdtWriter::new().unwrap();
        let root = fdt.begin_node("").unwrap();
        fdt.property_u32("#address-cells", 2).unwrap();
        fdt.property_u32("#size-cells", 2).unwrap();
        fdt.property_string("compatible", "linux,dummy-virt")
            .unwrap();
        let memory = fdt.begin_node("memory@40000000").unwrap();
        fdt.property_string("device_type", "memory").unwrap();
        fdt.property_array_u64("reg", &[0x4000_0000, 0x0400_0000])
            .unwrap();
        fdt.end_node(memory).unwrap();
        let cpus_node = fdt.begin_node("cpus").unwrap();
        fdt.property_u32("#address-cells", 1).unwrap();
        fdt.property_u32("#size-cells", 0).unwrap();
        for cpu in 0..cpus {
            let node = fdt.begin_node(&std::format!("cpu@{cpu}")).unwrap();
            fdt.property_string("device_type", "cpu").unwrap();
            fdt.property_u32("reg", cpu).unwrap();
            fdt.end_node(node).unwrap();
        }
        fdt.end_node(cpus_node).unwrap();
        let gic = fdt.begin_node("intc@8000000").unwrap();
        fdt.property_string("compatible", "arm,gic-v3").unwrap();
        fdt.property_array_u64("reg", &[0x800_0000, 0x1_0000, 0x80A_0000, 0x4_0000])
            .unwrap();
        fdt.end_node(gic).unwrap();
        let chosen = fdt.begin_node("chosen").unwrap();
        fdt.property_string("stdout-path", "/pl011@9000000")
            .unwrap();
        if let Some(bootargs) = bootargs {
            fdt.property_string("bootargs", bootargs).unwrap();
        }
        fdt.end_node(chosen).unwrap();
        fdt.end_node(root).unwrap();
        fdt.finish().unwrap()
    }

    #[test]
    fn finds_memory_cpus_and_bootargs() {
        let bytes = guest_tree(Some("probe=0x48000000 wait_ms=10"), 2);
        let tree = DeviceTree::from_bytes(&bytes).unwrap();
        assert_eq!(tree.memory(), Some(0x4000_0000..0x4400_0000));
        assert_eq!(tree.bootargs(), Some("probe=0x48000000 wait_ms=10"));
        assert_eq!(tree.cpu_ids().collect::<Vec<_>>(), [0, 1]);
        let footprint = tree.memory_footprint();
        assert_eq!(footprint.start, bytes.as_ptr() as u64);
        assert_eq!(footprint.end - footprint.start, bytes.len() as u64);
    }

    #[test]
    fn finds_the_regs_of_a_compatible_node() {
        let bytes = guest_tree(None, 2);
        let tree = DeviceTree::from_bytes(&bytes).unwrap();
        assert_eq!(
            tree.compatible_regs("arm,gic-v3"),
            Some([
                Some(0x800_0000..0x801_0000),
                Some(0x80A_0000..0x80E_0000),
                None,
                None
            ])
        );
        assert_eq!(tree.compatible_regs("arm,cortex-a15-gic"), None);
    }

    #[test]
    fn missing_nodes_are_none() {
        let bytes = guest_tree(None, 1);
        let tree = DeviceTree::from_bytes(&bytes).unwrap();
        assert_eq!(tree.bootargs(), None);
        assert_eq!(tree.cpu_ids().count(), 1);

        let mut fdt = FdtWriter::new().unwrap();
        let root = fdt.begin_node("").unwrap();
        fdt.end_node(root).unwrap();
        let bare = fdt.finish().unwrap();
        let tree = DeviceTree::from_bytes(&bare).unwrap();
        assert_eq!(tree.memory(), None);
        assert_eq!(tree.bootargs(), None);
        assert_eq!(tree.cpu_ids().count(), 0);
    }

    #[test]
    fn empty_bootargs_are_an_empty_string() {
        let bytes = guest_tree(Some(""), 1);
        let tree = DeviceTree::from_bytes(&bytes).unwrap();
        assert_eq!(tree.bootargs(), Some(""));
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(
            DeviceTree::from_bytes(&[0; 64]).unwrap_err(),
            DeviceTreeError::BadMagic
        );
        assert_eq!(
            DeviceTree::from_bytes(&[0xD0, 0x0D]).unwrap_err(),
            DeviceTreeError::BadSize(2)
        );
        let mut huge = guest_tree(None, 1);
        huge[4..8].copy_from_slice(&0x7FFF_FFFF_u32.to_be_bytes());
        assert_eq!(
            DeviceTree::from_bytes(&huge).unwrap_err(),
            DeviceTreeError::BadSize(0x7FFF_FFFF)
        );
        // A size that claims more than there is.
        let mut short = guest_tree(None, 1);
        let claimed = short.len() as u32 + 64;
        short[4..8].copy_from_slice(&claimed.to_be_bytes());
        assert_eq!(
            DeviceTree::from_bytes(&short).unwrap_err(),
            DeviceTreeError::Malformed
        );
    }

    #[test]
    fn boot_tree_is_absent_on_the_host() {
        assert_eq!(DeviceTree::boot().unwrap_err(), DeviceTreeError::NoAddress);
    }
}
