//! The device tree a board's firmware hands the image it starts, for QEMU
//! machines that hand over none of their own: QEMU `raspi4b`.
//!
//! Why it is needed: QEMU records where it put the initrd (`/chosen`
//! `linux,initrd-start`/`-end`) only inside a device tree, and `raspi4b`
//! passes one only when given `-dtb`. Without it the hypervisor never
//! finds its system package. On a real Pi 4 the firmware always passes a
//! tree, so giving QEMU one is what makes the emulated boot match the real
//! one. QEMU fills in `/chosen` and rewrites `/memory`'s `reg` in the tree
//! it is given, as the firmware does.
//!
//! The tree is shaped like the firmware's `bcm2711-rpi-4-b.dtb` (root
//! compatible and model, cell sizes, `memory@0`, four Cortex-A72s released
//! through the spin table with the firmware's page kept by a
//! `/memreserve/`, and the GIC-400 and uart0 under `/soc` at VideoCore bus
//! addresses behind the same `ranges`), so the hypervisor reads the nesting
//! it meets on the board. It holds only what the hypervisor reads and what
//! a reader needs to make sense of that: no clocks, pin control or other
//! peripherals. One difference on purpose: `stdout-path` names uart0, the
//! PL011 that QEMU connects to `-serial` and that Tessera's console uses,
//! where the real tree names the mini UART. Addresses come from
//! [`tessera_platform::RASPBERRY_PI_4`], the table the hypervisor itself is
//! built from.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use tessera_platform::{CpuStartMethod, GicLayout, PhysRange, RASPBERRY_PI_4};
use vm_fdt::{Error, FdtReserveEntry, FdtWriter};

use crate::machine::Machine;
use crate::workspace;

/// Where firmware device trees are written, relative to the workspace
/// root: `<dir>/<machine>.dtb`.
const FIRMWARE_TREE_DIR: &str = "target/machines";

/// The firmware device trees this run of the tool has written, so each is
/// written once however many QEMU runs need it.
#[derive(Debug, Default)]
pub struct FirmwareTrees {
    written: HashSet<Machine>,
}

impl FirmwareTrees {
    /// The device tree to give QEMU with `-dtb` when `machine` boots with
    /// or without an initrd, relative to `root` (where QEMU runs): `None`
    /// unless the machine has a firmware tree and an initrd is given (see
    /// [`crate::machine::MachinePreset::firmware_tree`]). Written under
    /// `root` the first time it is asked for.
    pub fn for_boot(
        &mut self,
        root: &Path,
        machine: Machine,
        with_initrd: bool,
    ) -> Result<Option<PathBuf>> {
        let Some(build) = machine.preset().firmware_tree.filter(|_| with_initrd) else {
            return Ok(None);
        };
        let path = Path::new(FIRMWARE_TREE_DIR).join(format!("{}.dtb", machine.name()));
        if !self.written.contains(&machine) {
            let blob = build().map_err(|err| {
                anyhow!(
                    "cannot build the {} firmware device tree: {err}",
                    machine.name()
                )
            })?;
            workspace::write_whole_file(&root.join(&path), &blob)?;
            self.written.insert(machine);
        }
        Ok(Some(path))
    }
}

/// A window of the Pi's `/soc` `ranges`: peripherals are described at
/// VideoCore bus addresses, which the ARM cores see at `cpu`.
struct BusWindow {
    bus: u32,
    cpu: u64,
    size: u32,
}

/// The windows the nodes here sit in, as the real tree has them. It has a
/// third, for BCM2711-only peripherals at bus 0x7C00_0000, which nothing
/// here describes.
const SOC_RANGES: [BusWindow; 2] = [
    // The peripherals the BCM283x family shares, uart0 among them.
    BusWindow {
        bus: 0x7E00_0000,
        cpu: 0xFE00_0000,
        size: 0x0180_0000,
    },
    // The ARM-local block with the GIC-400.
    BusWindow {
        bus: 0x4000_0000,
        cpu: 0xFF80_0000,
        size: 0x0080_0000,
    },
];

/// The bus address of a physical range. Only used for constants, so a
/// board table that moved a device out of every window fails the build.
const fn bus_address(range: PhysRange) -> u32 {
    let mut index = 0;
    while index < SOC_RANGES.len() {
        let window = &SOC_RANGES[index];
        if range.base >= window.cpu && range.end() <= window.cpu + window.size as u64 {
            return (range.base - window.cpu) as u32 + window.bus;
        }
        index += 1;
    }
    panic!("a Pi 4 device lies outside the /soc bus windows");
}

/// Distributor, CPU interface, hypervisor interface, virtual CPU
/// interface: the order the GIC-400 binding lists its frames in.
const GIC_FRAMES: [PhysRange; 4] = match RASPBERRY_PI_4.default_gic {
    GicLayout::V2 {
        distributor,
        cpu_interface,
        hypervisor_interface,
        virtual_cpu_interface,
    } => [
        distributor,
        cpu_interface,
        hypervisor_interface,
        virtual_cpu_interface,
    ],
    GicLayout::V3 { .. } => panic!("the Pi 4 has a GIC-400, a GICv2"),
};

/// Where each CPU, indexed by number, waits to be released.
const RELEASE_ADDRESSES: &[u64] = match RASPBERRY_PI_4.cpu_start {
    CpuStartMethod::SpinTable { release_addresses } => release_addresses,
    CpuStartMethod::PsciSmc => panic!("the Pi 4 releases its CPUs from the spin table"),
};

const UART0: PhysRange = RASPBERRY_PI_4.console_uart;
const UART0_BUS_ADDRESS: u32 = bus_address(UART0);
const GIC_FRAME_BUS_ADDRESSES: [u32; 4] = [
    bus_address(GIC_FRAMES[0]),
    bus_address(GIC_FRAMES[1]),
    bus_address(GIC_FRAMES[2]),
    bus_address(GIC_FRAMES[3]),
];
/// uart0's interrupt, SPI 121 (INTID 153), as the real tree gives it.
const UART0_SPI: u32 = 121;
/// The firmware's default line settings, which QEMU ignores.
const UART0_SETTINGS: &str = "115200n8";

const GIC_PHANDLE: u32 = 1;
/// Interrupt specifier cells for the GIC binding: type, number, flags.
const GIC_SPI: u32 = 0;
const IRQ_LEVEL_HIGH: u32 = 4;

/// The root's cell sizes, as the real tree has them: 64-bit addresses,
/// 32-bit sizes. `/soc` uses one cell of each.
const ROOT_ADDRESS_CELLS: u32 = 2;
const ROOT_SIZE_CELLS: u32 = 1;

// One size cell cannot describe a RAM range of 4 GiB or more (the
// firmware splits larger RAM into several ranges).
const _: () = {
    let memory = RASPBERRY_PI_4.fallback_memory;
    let mut index = 0;
    while index < memory.len() {
        assert!(memory[index].size <= u32::MAX as u64);
        index += 1;
    }
};

/// The device tree the Pi 4 firmware would pass, for QEMU `raspi4b`.
pub fn raspi4b_dtb() -> Result<Vec<u8>, Error> {
    let reservations = RASPBERRY_PI_4
        .firmware_reserved
        .iter()
        .map(|range| FdtReserveEntry::new(range.base, range.size))
        .collect::<Result<Vec<_>, _>>()?;
    // The spin table is in the firmware's page; the arm64 boot protocol
    // asks for release addresses to be kept from the OS this way.
    let mut fdt = FdtWriter::new_with_mem_reserv(&reservations)?;
    let root = fdt.begin_node("")?;
    fdt.property_string_list(
        "compatible",
        RASPBERRY_PI_4
            .compatible
            .iter()
            .map(|name| name.to_string())
            .collect(),
    )?;
    fdt.property_string("model", "Raspberry Pi 4 Model B")?;
    fdt.property_u32("#address-cells", ROOT_ADDRESS_CELLS)?;
    fdt.property_u32("#size-cells", ROOT_SIZE_CELLS)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    aliases(&mut fdt)?;
    chosen(&mut fdt)?;
    memory(&mut fdt)?;
    cpus(&mut fdt)?;
    soc(&mut fdt)?;

    fdt.end_node(root)?;
    fdt.finish()
}

fn aliases(fdt: &mut FdtWriter) -> Result<(), Error> {
    let node = fdt.begin_node("aliases")?;
    fdt.property_string("serial0", &format!("/soc/serial@{UART0_BUS_ADDRESS:x}"))?;
    fdt.end_node(node)
}

/// No initrd here: QEMU adds where it put the initrd to this node (and
/// cannot without it), as the firmware does on the board.
fn chosen(fdt: &mut FdtWriter) -> Result<(), Error> {
    let node = fdt.begin_node("chosen")?;
    fdt.property_string("stdout-path", &format!("serial0:{UART0_SETTINGS}"))?;
    fdt.end_node(node)
}

/// The ARM cores' share of RAM below the VideoCore's, as the firmware
/// reports it by default. QEMU rewrites it with its own figure.
fn memory(fdt: &mut FdtWriter) -> Result<(), Error> {
    let reg: Vec<u32> = RASPBERRY_PI_4
        .fallback_memory
        .iter()
        .flat_map(|range| {
            [
                (range.base >> 32) as u32,
                range.base as u32,
                range.size as u32,
            ]
        })
        .collect();
    let node = fdt.begin_node("memory@0")?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u32("reg", &reg)?;
    fdt.end_node(node)
}

fn cpus(fdt: &mut FdtWriter) -> Result<(), Error> {
    let node = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for (cpu, &release_address) in RELEASE_ADDRESSES.iter().enumerate() {
        let cpu = cpu as u32;
        let cpu_node = fdt.begin_node(&format!("cpu@{cpu}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,cortex-a72")?;
        // The CPU's MPIDR affinity, which on the BCM2711 is its number.
        fdt.property_u32("reg", cpu)?;
        fdt.property_string("enable-method", "spin-table")?;
        fdt.property_u64("cpu-release-addr", release_address)?;
        fdt.end_node(cpu_node)?;
    }
    fdt.end_node(node)
}

fn soc(fdt: &mut FdtWriter) -> Result<(), Error> {
    let node = fdt.begin_node("soc")?;
    fdt.property_string("compatible", "simple-bus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 1)?;
    let ranges: Vec<u32> = SOC_RANGES
        .iter()
        .flat_map(|window| {
            [
                window.bus,
                (window.cpu >> 32) as u32,
                window.cpu as u32,
                window.size,
            ]
        })
        .collect();
    fdt.property_array_u32("ranges", &ranges)?;
    uart0(fdt)?;
    gic(fdt)?;
    fdt.end_node(node)
}

fn uart0(fdt: &mut FdtWriter) -> Result<(), Error> {
    let node = fdt.begin_node(&format!("serial@{UART0_BUS_ADDRESS:x}"))?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl011".into(), "arm,primecell".into()],
    )?;
    fdt.property_array_u32("reg", &[UART0_BUS_ADDRESS, UART0.size as u32])?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, UART0_SPI, IRQ_LEVEL_HIGH])?;
    fdt.end_node(node)
}

fn gic(fdt: &mut FdtWriter) -> Result<(), Error> {
    let [distributor, ..] = GIC_FRAME_BUS_ADDRESSES;
    let node = fdt.begin_node(&format!("interrupt-controller@{distributor:x}"))?;
    fdt.property_string("compatible", "arm,gic-400")?;
    let reg: Vec<u32> = GIC_FRAME_BUS_ADDRESSES
        .iter()
        .zip(GIC_FRAMES)
        .flat_map(|(&bus_address, frame)| [bus_address, frame.size as u32])
        .collect();
    fdt.property_array_u32("reg", &reg)?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    // dtc wants #address-cells in an interrupt provider; it has no children.
    fdt.property_u32("#address-cells", 0)?;
    fdt.property_phandle(GIC_PHANDLE)?;
    fdt.end_node(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_tree_reading::{cells, string, strings};
    use fdt::Fdt;
    use fdt::node::FdtNode;

    /// `(address, size)` pairs of a `/soc` child's `reg`, translated to
    /// physical addresses through `/soc`'s `ranges` as an OS would.
    fn physical_reg(tree: &Fdt<'_>, node: FdtNode<'_, '_>) -> Vec<(u64, u64)> {
        let ranges = cells(tree.find_node("/soc").unwrap(), "ranges");
        let windows: Vec<(u64, u64, u64)> = ranges
            .chunks_exact(4)
            .map(|w| {
                let bus = u64::from(w[0]);
                let cpu = (u64::from(w[1]) << 32) | u64::from(w[2]);
                (bus, cpu, u64::from(w[3]))
            })
            .collect();
        cells(node, "reg")
            .chunks_exact(2)
            .map(|pair| {
                let (bus, size) = (u64::from(pair[0]), u64::from(pair[1]));
                let (window_bus, window_cpu, _) = windows
                    .iter()
                    .find(|(start, _, length)| (*start..start + length).contains(&bus))
                    .unwrap_or_else(|| panic!("{bus:#x} is in no /soc window"));
                (bus - window_bus + window_cpu, size)
            })
            .collect()
    }

    fn blob() -> Vec<u8> {
        raspi4b_dtb().unwrap()
    }

    #[test]
    fn root_is_a_pi_4_with_the_firmware_cell_sizes() {
        let blob = blob();
        let tree = Fdt::new(&blob).unwrap();
        let root = tree.find_node("/").unwrap();
        assert_eq!(
            strings(root, "compatible"),
            ["raspberrypi,4-model-b", "brcm,bcm2711"]
        );
        assert_eq!(strings(root, "compatible"), RASPBERRY_PI_4.compatible);
        assert_eq!(string(root, "model"), "Raspberry Pi 4 Model B");
        assert_eq!(cells(root, "#address-cells"), [2]);
        assert_eq!(cells(root, "#size-cells"), [1]);
        let parent = root.interrupt_parent().unwrap();
        assert_eq!(parent.name, "interrupt-controller@40041000");
    }

    #[test]
    fn memory_is_the_arm_share_and_the_firmware_page_is_reserved() {
        let blob = blob();
        let tree = Fdt::new(&blob).unwrap();
        let memory = tree.find_node("/memory@0").unwrap();
        assert_eq!(string(memory, "device_type"), "memory");
        assert_eq!(cells(memory, "reg"), [0, 0, 0x3b40_0000]);
        let regions: Vec<_> = tree.memory().regions().collect();
        assert_eq!(regions.len(), 1);
        assert_eq!(regions[0].starting_address as usize, 0);
        assert_eq!(regions[0].size, Some(948 << 20));

        let reserved: Vec<(u64, u64)> = tree
            .memory_reservations()
            .map(|entry| (entry.address() as u64, entry.size() as u64))
            .collect();
        assert_eq!(reserved, [(0, 0x1000)]);
    }

    #[test]
    fn four_cpus_released_from_the_spin_table() {
        let blob = blob();
        let tree = Fdt::new(&blob).unwrap();
        let cpus = tree.find_node("/cpus").unwrap();
        assert_eq!(cells(cpus, "#address-cells"), [1]);
        assert_eq!(cells(cpus, "#size-cells"), [0]);
        let names: Vec<&str> = cpus.children().map(|cpu| cpu.name).collect();
        assert_eq!(names, ["cpu@0", "cpu@1", "cpu@2", "cpu@3"]);
        let release_addresses = [0xd8, 0xe0, 0xe8, 0xf0];
        for (index, cpu) in cpus.children().enumerate() {
            assert_eq!(string(cpu, "device_type"), "cpu");
            assert_eq!(string(cpu, "compatible"), "arm,cortex-a72");
            assert_eq!(cells(cpu, "reg"), [index as u32]);
            assert_eq!(string(cpu, "enable-method"), "spin-table");
            assert_eq!(
                cells(cpu, "cpu-release-addr"),
                [0, release_addresses[index]],
                "{}",
                cpu.name
            );
        }
        let ids: Vec<usize> = tree.cpus().map(|cpu| cpu.ids().first()).collect();
        assert_eq!(ids, [0, 1, 2, 3]);
    }

    #[test]
    fn gic_400_frames_behind_the_soc_ranges() {
        let blob = blob();
        let tree = Fdt::new(&blob).unwrap();
        let soc = tree.find_node("/soc").unwrap();
        assert_eq!(strings(soc, "compatible"), ["simple-bus"]);
        assert_eq!(cells(soc, "#address-cells"), [1]);
        assert_eq!(cells(soc, "#size-cells"), [1]);

        let gic = tree
            .find_node("/soc/interrupt-controller@40041000")
            .unwrap();
        assert_eq!(strings(gic, "compatible"), ["arm,gic-400"]);
        assert!(gic.property("interrupt-controller").is_some());
        assert_eq!(cells(gic, "#interrupt-cells"), [3]);
        assert_eq!(cells(gic, "#address-cells"), [0]);
        assert_eq!(
            cells(gic, "reg"),
            [
                0x4004_1000,
                0x1000,
                0x4004_2000,
                0x2000,
                0x4004_4000,
                0x2000,
                0x4004_6000,
                0x2000
            ]
        );
        assert_eq!(
            physical_reg(&tree, gic),
            [
                (0xff84_1000, 0x1000),
                (0xff84_2000, 0x2000),
                (0xff84_4000, 0x2000),
                (0xff84_6000, 0x2000)
            ]
        );
        assert_eq!(tree.find_phandle(GIC_PHANDLE).unwrap().name, gic.name);
    }

    #[test]
    fn uart0_is_the_pl011_and_the_console() {
        let blob = blob();
        let tree = Fdt::new(&blob).unwrap();
        let uart = tree.find_node("/soc/serial@7e201000").unwrap();
        assert_eq!(strings(uart, "compatible"), ["arm,pl011", "arm,primecell"]);
        assert_eq!(cells(uart, "reg"), [0x7e20_1000, 0x1000]);
        assert_eq!(physical_reg(&tree, uart), [(0xfe20_1000, 0x1000)]);
        assert_eq!(cells(uart, "interrupts"), [0, 121, 4]);

        let chosen = tree.find_node("/chosen").unwrap();
        let stdout = string(chosen, "stdout-path");
        assert_eq!(stdout, "serial0:115200n8");
        let (alias, _) = stdout.split_once(':').unwrap();
        let console = tree.aliases().unwrap().resolve_node(alias).unwrap();
        assert_eq!(console.name, "serial@7e201000");
    }

    #[test]
    fn chosen_leaves_the_initrd_to_qemu() {
        let blob = blob();
        let tree = Fdt::new(&blob).unwrap();
        let chosen = tree.find_node("/chosen").unwrap();
        assert!(chosen.property("linux,initrd-start").is_none());
        assert!(chosen.property("linux,initrd-end").is_none());
    }

    fn scratch_root(test: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "tessera-firmware-dt-test-{}-{test}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        root
    }

    #[test]
    fn raspi4b_with_an_initrd_gets_the_tree_written_under_the_root() {
        let root = scratch_root("written");
        let mut trees = FirmwareTrees::default();
        let path = trees.for_boot(&root, Machine::Raspi4b, true).unwrap();
        assert_eq!(path, Some(PathBuf::from("target/machines/raspi4b.dtb")));
        let written = root.join("target/machines/raspi4b.dtb");
        assert_eq!(std::fs::read(&written).unwrap(), blob());
        let beside: Vec<_> = std::fs::read_dir(root.join("target/machines"))
            .unwrap()
            .collect();
        assert_eq!(beside.len(), 1, "no partial file left beside the tree");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn no_tree_without_an_initrd_or_on_virt() {
        let root = scratch_root("none");
        let mut trees = FirmwareTrees::default();
        assert_eq!(
            trees.for_boot(&root, Machine::Raspi4b, false).unwrap(),
            None
        );
        for machine in [Machine::VirtGicv3, Machine::VirtGicv2, Machine::VirtEl1] {
            assert_eq!(trees.for_boot(&root, machine, true).unwrap(), None);
        }
        assert!(!root.exists());
    }
}
