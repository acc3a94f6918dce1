//! Reads the facts the hypervisor needs from the board's device tree.
//!
//! The blob comes from the boot loader (QEMU, U-Boot, the Pi firmware). Only
//! RAM, reservations, the CPU list, the GIC version and the initrd are read
//! from it; device addresses come from the board description (see
//! `tessera-platform`), because on the Pi they sit behind `ranges`
//! translations that the boot code has no reason to evaluate.

use fdt::Fdt;

use crate::MAX_CPUS;
use crate::address::{PhysAddr, PhysRange};
use crate::memory_map::{MemoryMapError, RangeSet};

/// The FDT header magic, big-endian `0xd00dfeed`.
pub const FDT_MAGIC: u32 = 0xD00D_FEED;

/// Why a device tree could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceTreeError {
    /// No FDT magic at the given address.
    BadMagic,
    /// The header or structure is malformed.
    Malformed,
    /// No `/memory` node with a usable `reg`.
    NoMemory,
    /// No `/cpus/cpu@N` with a `reg`.
    NoCpus,
    /// The memory map overflowed.
    MemoryMap(MemoryMapError),
}

impl From<MemoryMapError> for DeviceTreeError {
    fn from(error: MemoryMapError) -> Self {
        Self::MemoryMap(error)
    }
}

/// The total size from an FDT header, or `None` if `header` is not an FDT
/// header. Lets the caller build a slice of the right length from a pointer.
#[must_use]
pub fn blob_size(header: &[u8; 8]) -> Option<usize> {
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    (magic == FDT_MAGIC)
        .then(|| u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize)
}

/// What the device tree says about the machine.
#[derive(Clone, Debug)]
pub struct MachineDescription {
    /// RAM as described by `/memory` nodes.
    pub memory: RangeSet,
    /// `/memreserve/` entries and `/reserved-memory` children.
    pub reserved: RangeSet,
    /// MPIDR affinity values of the CPUs, in device-tree order; the first
    /// `cpu_count` entries are valid.
    pub cpu_affinities: [u64; MAX_CPUS],
    pub cpu_count: usize,
    /// CPUs listed beyond `MAX_CPUS`, which stay off.
    pub cpus_ignored: usize,
    /// 2 or 3 when the tree has a GIC node of that version.
    pub gic_version: Option<u8>,
    /// The initrd, from `/chosen`.
    pub initrd: Option<PhysRange>,
    /// The root node's first `compatible` string.
    pub compatible: Option<&'static str>,
}

/// Big-endian cells to a number (1 or 2 cells).
fn read_cells(bytes: &[u8], cells: usize) -> Option<u64> {
    let raw = bytes.get(..cells * 4)?;
    Some(raw.chunks_exact(4).fold(0u64, |value, chunk| {
        (value << 32) | u64::from(u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
    }))
}

/// Parses `blob`, which must live for the whole run (it is the boot
/// loader's copy, which the hypervisor reserves).
///
/// # Errors
/// See [`DeviceTreeError`].
pub fn read_machine(blob: &'static [u8]) -> Result<MachineDescription, DeviceTreeError> {
    let header: &[u8; 8] = blob
        .get(..8)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(DeviceTreeError::Malformed)?;
    if blob_size(header).is_none() {
        return Err(DeviceTreeError::BadMagic);
    }
    let tree = Fdt::new(blob).map_err(|_| DeviceTreeError::Malformed)?;

    let mut memory = RangeSet::new();
    for node in tree.all_nodes() {
        let is_memory = node
            .property("device_type")
            .and_then(|property| property.as_str())
            == Some("memory");
        if !is_memory {
            continue;
        }
        for region in node.reg().into_iter().flatten() {
            let size = region.size.unwrap_or(0) as u64;
            if let Some(range) = PhysRange::from_base_size(region.starting_address as u64, size) {
                memory.add(range)?;
            }
        }
    }
    if memory.total_size() == 0 {
        return Err(DeviceTreeError::NoMemory);
    }

    let mut reserved = RangeSet::new();
    for reservation in tree.memory_reservations() {
        if let Some(range) =
            PhysRange::from_base_size(reservation.address() as u64, reservation.size() as u64)
        {
            reserved.add(range)?;
        }
    }
    if let Some(reserved_memory) = tree.find_node("/reserved-memory") {
        for child in reserved_memory.children() {
            for region in child.reg().into_iter().flatten() {
                let size = region.size.unwrap_or(0) as u64;
                if let Some(range) = PhysRange::from_base_size(region.starting_address as u64, size)
                {
                    reserved.add(range)?;
                }
            }
        }
    }

    let mut cpu_affinities = [0; MAX_CPUS];
    let mut cpu_count = 0;
    let mut cpus_ignored = 0;
    if let Some(cpus) = tree.find_node("/cpus") {
        let address_cells = cpus.cell_sizes().address_cells;
        for cpu in cpus.children() {
            let is_cpu = cpu.name.split('@').next() == Some("cpu")
                && cpu.property("device_type").and_then(|p| p.as_str()) != Some("cpu-map");
            let Some(reg) = cpu.property("reg") else {
                continue;
            };
            if !is_cpu {
                continue;
            }
            let Some(affinity) = read_cells(reg.value, address_cells) else {
                continue;
            };
            if cpu_count < MAX_CPUS {
                cpu_affinities[cpu_count] = affinity;
                cpu_count += 1;
            } else {
                cpus_ignored += 1;
            }
        }
    }
    if cpu_count == 0 {
        return Err(DeviceTreeError::NoCpus);
    }

    let gic_version = if tree.find_compatible(&["arm,gic-v3"]).is_some() {
        Some(3)
    } else if tree
        .find_compatible(&["arm,cortex-a15-gic", "arm,gic-400", "arm,cortex-a9-gic"])
        .is_some()
    {
        Some(2)
    } else {
        None
    };

    let initrd = tree.find_node("/chosen").and_then(|chosen| {
        let start = chosen.property("linux,initrd-start")?.as_usize()? as u64;
        let end = chosen.property("linux,initrd-end")?.as_usize()? as u64;
        (end > start).then_some(PhysRange {
            start: PhysAddr(start),
            end: PhysAddr(end),
        })
    });

    let compatible = tree
        .find_node("/")
        .and_then(|root| root.compatible())
        .map(|compatible| compatible.first());

    Ok(MachineDescription {
        memory,
        reserved,
        cpu_affinities,
        cpu_count,
        cpus_ignored,
        gic_version,
        initrd,
        compatible,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_fdt::{FdtReserveEntry, FdtWriter};

    /// A tree shaped like QEMU `virt`'s: two-cell addresses, PSCI CPUs.
    fn virt_like_tree(gic_compatible: &str, cpus: u64, with_initrd: bool) -> &'static [u8] {
        let mut writer =
            FdtWriter::new_with_mem_reserv(&[FdtReserveEntry::new(0x4100_0000, 0x1000).unwrap()])
                .unwrap();
        let root = writer.begin_node("").unwrap();
        writer
            .property_string("compatible", "linux,dummy-virt")
            .unwrap();
        writer.property_u32("#address-cells", 2).unwrap();
        writer.property_u32("#size-cells", 2).unwrap();

        let memory = writer.begin_node("memory@40000000").unwrap();
        writer.property_string("device_type", "memory").unwrap();
        writer
            .property_array_u64("reg", &[0x4000_0000, 0x4000_0000])
            .unwrap();
        writer.end_node(memory).unwrap();

        let reserved = writer.begin_node("reserved-memory").unwrap();
        writer.property_u32("#address-cells", 2).unwrap();
        writer.property_u32("#size-cells", 2).unwrap();
        writer.property_null("ranges").unwrap();
        let secure = writer.begin_node("secmon@7f000000").unwrap();
        writer
            .property_array_u64("reg", &[0x7F00_0000, 0x10_0000])
            .unwrap();
        writer.end_node(secure).unwrap();
        writer.end_node(reserved).unwrap();

        let cpus_node = writer.begin_node("cpus").unwrap();
        writer.property_u32("#address-cells", 1).unwrap();
        writer.property_u32("#size-cells", 0).unwrap();
        for index in 0..cpus {
            let cpu = writer.begin_node(&format!("cpu@{index}")).unwrap();
            writer.property_string("device_type", "cpu").unwrap();
            writer.property_u32("reg", index as u32).unwrap();
            writer.end_node(cpu).unwrap();
        }
        writer.end_node(cpus_node).unwrap();

        let gic = writer.begin_node("intc@8000000").unwrap();
        writer
            .property_string("compatible", gic_compatible)
            .unwrap();
        writer.end_node(gic).unwrap();

        let chosen = writer.begin_node("chosen").unwrap();
        if with_initrd {
            writer
                .property_u64("linux,initrd-start", 0x4800_0000)
                .unwrap();
            writer
                .property_u64("linux,initrd-end", 0x4801_0000)
                .unwrap();
        }
        writer.end_node(chosen).unwrap();
        writer.end_node(root).unwrap();
        Box::leak(writer.finish().unwrap().into_boxed_slice())
    }

    #[test]
    fn reads_memory_reservations_cpus_gic_and_initrd() {
        let machine = read_machine(virt_like_tree("arm,gic-v3", 4, true)).unwrap();
        assert_eq!(
            machine.memory.ranges(),
            &[PhysRange::from_base_size(0x4000_0000, 0x4000_0000).unwrap()]
        );
        assert_eq!(
            machine.reserved.ranges(),
            &[
                PhysRange::from_base_size(0x4100_0000, 0x1000).unwrap(),
                PhysRange::from_base_size(0x7F00_0000, 0x10_0000).unwrap(),
            ]
        );
        assert_eq!(machine.cpu_count, 4);
        assert_eq!(&machine.cpu_affinities[..4], &[0, 1, 2, 3]);
        assert_eq!(machine.gic_version, Some(3));
        assert_eq!(
            machine.initrd,
            Some(PhysRange::from_base_size(0x4800_0000, 0x1_0000).unwrap())
        );
        assert_eq!(machine.compatible, Some("linux,dummy-virt"));
    }

    #[test]
    fn recognises_gicv2_and_missing_initrd() {
        let machine = read_machine(virt_like_tree("arm,cortex-a15-gic", 2, false)).unwrap();
        assert_eq!(machine.gic_version, Some(2));
        assert_eq!(machine.initrd, None);
    }

    #[test]
    fn cpus_beyond_the_limit_are_counted_not_used() {
        let machine =
            read_machine(virt_like_tree("arm,gic-v3", MAX_CPUS as u64 + 3, false)).unwrap();
        assert_eq!(machine.cpu_count, MAX_CPUS);
        assert_eq!(machine.cpus_ignored, 3);
    }

    #[test]
    fn rejects_what_is_not_a_device_tree() {
        let garbage: &'static [u8] = Box::leak(vec![0u8; 64].into_boxed_slice());
        assert_eq!(
            read_machine(garbage).unwrap_err(),
            DeviceTreeError::BadMagic
        );
        assert_eq!(
            blob_size(&[0xD0, 0x0D, 0xFE, 0xED, 0, 0, 0x10, 0]),
            Some(0x1000)
        );
        assert_eq!(blob_size(&[0; 8]), None);
    }

    #[test]
    fn a_tree_without_memory_is_refused() {
        let mut writer = FdtWriter::new().unwrap();
        let root = writer.begin_node("").unwrap();
        writer.end_node(root).unwrap();
        let blob: &'static [u8] = Box::leak(writer.finish().unwrap().into_boxed_slice());
        assert_eq!(read_machine(blob).unwrap_err(), DeviceTreeError::NoMemory);
    }
}
