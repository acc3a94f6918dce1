//! Reads the facts the hypervisor needs from the board's device tree.
//!
//! The blob comes from the boot loader (QEMU, U-Boot, the Pi firmware). Only
//! RAM, reservations, the CPU list, the GIC version and the initrd are read
//! from it; device addresses come from the board description (see
//! `tessera-platform`), because on the Pi they sit behind `ranges`
//! translations that the boot code has no reason to evaluate.

use crate::MAX_CPUS;
use crate::boot::flat_tree::{
    FlatTree, FlatTreeError, Token, read_cells, string_list_contains, string_value,
};
use crate::memory::address::{PhysAddr, PhysRange};
use crate::memory::map::{MemoryMapError, RangeSet};

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
    crate::boot::flat_tree::announced_size(header)
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

/// Deeper nesting than this is not needed for anything read here.
const MAX_DEPTH: usize = 16;

/// Strings-block offsets of the property names read here (`usize::MAX`
/// for names the tree does not use).
struct PropertyNames {
    address_cells: usize,
    size_cells: usize,
    reg: usize,
    device_type: usize,
    compatible: usize,
    interrupt_controller: usize,
    initrd_start: usize,
    initrd_end: usize,
}

/// What is remembered about a node while its properties are read.
#[derive(Clone, Copy, Default)]
struct NodeScan<'a> {
    name: &'a [u8],
    /// Cell sizes this node sets for its children (defaults 2 and 1).
    address_cells: usize,
    size_cells: usize,
    reg: Option<&'a [u8]>,
    is_memory: bool,
    is_cpu: bool,
    is_interrupt_controller: bool,
    compatible: Option<&'a [u8]>,
    initrd_start: Option<u64>,
    initrd_end: Option<u64>,
}

/// The GIC version a `compatible` list names, if it names a GIC.
fn gic_version_of(compatible: &[u8]) -> Option<u8> {
    if string_list_contains(compatible, b"arm,gic-v3") {
        Some(3)
    } else if [
        &b"arm,cortex-a15-gic"[..],
        b"arm,gic-400",
        b"arm,cortex-a9-gic",
    ]
    .iter()
    .any(|wanted| string_list_contains(compatible, wanted))
    {
        Some(2)
    } else {
        None
    }
}

fn unit_name(name: &[u8]) -> &[u8] {
    name.split(|byte| *byte == b'@').next().unwrap_or(name)
}

/// Adds every `(address, size)` pair of a `reg` value to `set`.
fn add_reg_ranges(
    set: &mut RangeSet,
    reg: &[u8],
    address_cells: usize,
    size_cells: usize,
) -> Result<(), DeviceTreeError> {
    let entry = (address_cells + size_cells) * 4;
    if entry == 0 || address_cells > 2 || size_cells > 2 {
        return Err(DeviceTreeError::Malformed);
    }
    for pair in reg.chunks_exact(entry) {
        let base = read_cells(pair, address_cells).ok_or(DeviceTreeError::Malformed)?;
        let size = pair
            .get(address_cells * 4..)
            .and_then(|size| read_cells(size, size_cells))
            .ok_or(DeviceTreeError::Malformed)?;
        if let Some(range) = PhysRange::from_base_size(base, size) {
            set.add(range)?;
        }
    }
    Ok(())
}

/// Parses `blob`, which must live for the whole run (it is the boot
/// loader's copy, which the hypervisor reserves).
///
/// One pass over the structure block (`flat_tree`), with no allocation and
/// no panics on malformed input: this runs before the MMU is on, on every
/// boot, and the boot benchmark showed a general-purpose parser re-walking
/// the tree for each look-up costing half of the hypervisor's boot.
///
/// # Errors
/// See [`DeviceTreeError`].
// Out of line: inlined into boot's large entry function, its token loop
// compiles to slower code (about 2,000 more instructions at boot,
// `make bench`).
#[inline(never)]
pub fn read_machine(blob: &'static [u8]) -> Result<MachineDescription, DeviceTreeError> {
    let tree = FlatTree::new(blob).map_err(|error| match error {
        FlatTreeError::BadMagic => DeviceTreeError::BadMagic,
        FlatTreeError::Malformed => DeviceTreeError::Malformed,
    })?;
    let mut reserved = RangeSet::new();
    for reservation in tree.reservations() {
        let (address, size) = reservation.map_err(|_| DeviceTreeError::Malformed)?;
        if let Some(range) = PhysRange::from_base_size(address, size) {
            reserved.add(range)?;
        }
    }

    let mut machine = MachineDescription {
        memory: RangeSet::new(),
        reserved,
        cpu_affinities: [0; MAX_CPUS],
        cpu_count: 0,
        cpus_ignored: 0,
        gic_version: None,
        initrd: None,
        compatible: None,
    };
    let [
        address_cells,
        size_cells,
        reg,
        device_type,
        compatible,
        interrupt_controller,
        initrd_start,
        initrd_end,
    ] = tree.name_offsets([
        b"#address-cells",
        b"#size-cells",
        b"reg",
        b"device_type",
        b"compatible",
        b"interrupt-controller",
        b"linux,initrd-start",
        b"linux,initrd-end",
    ]);
    let names = PropertyNames {
        address_cells,
        size_cells,
        reg,
        device_type,
        compatible,
        interrupt_controller,
        initrd_start,
        initrd_end,
    };
    let mut stack = [NodeScan::default(); MAX_DEPTH];
    let mut depth = 0usize;
    tree.walk(DeviceTreeError::Malformed, |token| {
        match token {
            Token::BeginNode(name) => {
                let slot = stack.get_mut(depth).ok_or(DeviceTreeError::Malformed)?;
                *slot = NodeScan {
                    name,
                    address_cells: 2,
                    size_cells: 1,
                    ..NodeScan::default()
                };
                depth += 1;
            }
            Token::Property { name, value } => {
                let node = stack
                    .get_mut(depth.wrapping_sub(1))
                    .ok_or(DeviceTreeError::Malformed)?;
                let offset = name.offset();
                // Compare strings-block offsets, resolved once above: far
                // cheaper than reading every property's name.
                if offset == names.address_cells {
                    node.address_cells = read_cells(value, 1).unwrap_or(2) as usize;
                } else if offset == names.size_cells {
                    node.size_cells = read_cells(value, 1).unwrap_or(1) as usize;
                } else if offset == names.reg {
                    node.reg = Some(value);
                } else if offset == names.device_type {
                    node.is_memory = value.starts_with(b"memory\0");
                    node.is_cpu = value.starts_with(b"cpu\0");
                } else if offset == names.compatible {
                    node.compatible = Some(value);
                } else if offset == names.interrupt_controller {
                    node.is_interrupt_controller = true;
                } else if offset == names.initrd_start {
                    node.initrd_start = read_cells(value, value.len() / 4);
                } else if offset == names.initrd_end {
                    node.initrd_end = read_cells(value, value.len() / 4);
                }
            }
            Token::EndNode => {
                depth = depth.checked_sub(1).ok_or(DeviceTreeError::Malformed)?;
                // `get`, not indexing: the start-node arm bounds `depth` by
                // the stack already, and a check that cannot fail is better
                // taken to the existing error than to a panic site.
                let node = stack.get(depth).ok_or(DeviceTreeError::Malformed)?;
                let parent = depth.checked_sub(1).map(|parent| &stack[parent]);
                finish_node(&mut machine, node, parent, depth)?;
            }
        }
        Ok(())
    })?;
    if machine.memory.total_size() == 0 {
        return Err(DeviceTreeError::NoMemory);
    }
    if machine.cpu_count == 0 {
        return Err(DeviceTreeError::NoCpus);
    }
    Ok(machine)
}

/// Records what a completed node contributes. `depth` is the node's own
/// depth: 0 for the root.
fn finish_node(
    machine: &mut MachineDescription,
    node: &NodeScan<'static>,
    parent: Option<&NodeScan<'static>>,
    depth: usize,
) -> Result<(), DeviceTreeError> {
    let Some(parent) = parent else {
        machine.compatible = node.compatible.and_then(string_value);
        return Ok(());
    };
    // Only interrupt controllers can be the GIC; checking just those keeps
    // the string matching off the hundred other nodes.
    if machine.gic_version.is_none()
        && node.is_interrupt_controller
        && let Some(compatible) = node.compatible
    {
        machine.gic_version = gic_version_of(compatible);
    }
    // Only nodes at depths 1 and 2 tell anything more: the names of the
    // others (most of them a bus's many children) are never scanned.
    if depth > 2 {
        return Ok(());
    }
    // Each name is scanned once: only the depth-2 checks need the
    // parent's.
    let name = unit_name(node.name);
    if depth == 1 {
        if node.is_memory || name == b"memory" {
            if let Some(reg) = node.reg {
                add_reg_ranges(
                    &mut machine.memory,
                    reg,
                    parent.address_cells,
                    parent.size_cells,
                )?;
            }
        } else if name == b"chosen"
            && let (Some(start), Some(end)) = (node.initrd_start, node.initrd_end)
            && end > start
        {
            machine.initrd = Some(PhysRange {
                start: PhysAddr(start),
                end: PhysAddr(end),
            });
        }
        return Ok(());
    }
    let parent_name = unit_name(parent.name);
    if parent_name == b"reserved-memory" {
        if let Some(reg) = node.reg {
            add_reg_ranges(
                &mut machine.reserved,
                reg,
                parent.address_cells,
                parent.size_cells,
            )?;
        }
    } else if parent_name == b"cpus" && (node.is_cpu || name == b"cpu") {
        let affinity = node
            .reg
            .and_then(|reg| read_cells(reg, parent.address_cells.min(2)));
        if let Some(affinity) = affinity {
            if machine.cpu_count < MAX_CPUS {
                machine.cpu_affinities[machine.cpu_count] = affinity;
                machine.cpu_count += 1;
            } else {
                machine.cpus_ignored += 1;
            }
        }
    }
    Ok(())
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
        writer.property_null("interrupt-controller").unwrap();
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

/// The trees QEMU 10 itself generates (`-M virt,...,dumpdtb=`), repacked by
/// `dtc` without QEMU's padding.
#[cfg(test)]
mod qemu_trees {
    use super::*;

    fn leak(bytes: &[u8]) -> &'static [u8] {
        Box::leak(bytes.to_vec().into_boxed_slice())
    }

    #[test]
    fn qemu_virt_gicv3_four_cpus() {
        let machine = read_machine(leak(include_bytes!(
            "../../testdata/qemu-virt-gicv3-4cpu.dtb"
        )))
        .unwrap();
        assert_eq!(
            machine.memory.ranges(),
            &[PhysRange::from_base_size(0x4000_0000, 0x4000_0000).unwrap()]
        );
        assert_eq!(machine.cpu_count, 4);
        assert_eq!(&machine.cpu_affinities[..4], &[0, 1, 2, 3]);
        assert_eq!(machine.gic_version, Some(3));
        assert_eq!(machine.compatible, Some("linux,dummy-virt"));
        assert_eq!(machine.initrd, None);
    }

    #[test]
    fn qemu_virt_gicv2_two_cpus() {
        let machine = read_machine(leak(include_bytes!(
            "../../testdata/qemu-virt-gicv2-2cpu.dtb"
        )))
        .unwrap();
        assert_eq!(
            machine.memory.ranges(),
            &[PhysRange::from_base_size(0x4000_0000, 0x2000_0000).unwrap()]
        );
        assert_eq!(machine.cpu_count, 2);
        assert_eq!(machine.gic_version, Some(2));
    }

    #[test]
    fn truncated_trees_are_refused_not_panicked_on() {
        let full = include_bytes!("../../testdata/qemu-virt-gicv3-4cpu.dtb");
        for cut in [9, 40, 100, full.len() / 2, full.len() - 8] {
            let mut bytes = full[..cut].to_vec();
            // Keep the header's size honest for the shorter blob.
            if bytes.len() >= 8 {
                bytes[4..8].copy_from_slice(&(cut as u32).to_be_bytes());
            }
            assert!(read_machine(leak(&bytes)).is_err(), "cut at {cut}");
        }
    }
}
