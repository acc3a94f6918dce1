//! The device tree each guest is started with (docs/system-image.md, "The
//! guest device tree"). Its nodes have the shapes QEMU `virt` gives its
//! own, so a guest written for `virt` finds what it expects: the same node
//! names, compatibles, cell sizes and interrupt specifiers, with only the
//! VM's RAM and vCPUs in it.

use tessera_arm_defs::psci::function as psci_function;
use tessera_platform::guest;
use vm_fdt::{Error, FdtWriter};

use crate::system::passthrough::{ClockNode, DeviceNode, PassthroughDevice};
use crate::system::{ShmemDevice, VmConfig};

// The guest-visible platform, shared with the hypervisor's trap routing.

const GIC_DISTRIBUTOR: u64 = guest::GIC_DISTRIBUTOR.base;
const GIC_DISTRIBUTOR_SIZE: u64 = guest::GIC_DISTRIBUTOR.size;
const GICV2_CPU_INTERFACE: u64 = guest::GICV2_CPU_INTERFACE.base;
const GICV2_CPU_INTERFACE_SIZE: u64 = guest::GICV2_CPU_INTERFACE.size;
const GICV3_REDISTRIBUTORS: u64 = guest::GICV3_REDISTRIBUTORS_BASE;
const GICV3_REDISTRIBUTOR_SIZE: u64 = guest::GICV3_REDISTRIBUTOR_STRIDE;
const UART: u64 = guest::UART.base;
const UART_SIZE: u64 = guest::UART.size;
const UART_CLOCK_HZ: u32 = 24_000_000;

const GIC_PHANDLE: u32 = 1;
const CLOCK_PHANDLE: u32 = 2;
/// Clocks copied from the board's tree for passthrough devices get
/// phandles from here on.
const FIRST_COPIED_PHANDLE: u32 = 3;

/// Interrupt specifier cells for the GIC binding: type, number, flags.
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_LEVEL_HIGH: u32 = 4;
const UART_SPI: u32 = guest::UART_SPI;
/// Secure physical, non-secure physical, virtual, hypervisor: the order
/// the arm,armv8-timer binding lists them.
const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];
/// The PMU overflow interrupt, PPI 7 (INTID 23), as on QEMU `virt`.
const PMU_PPI: u32 = guest::PMU_INTID - 16;

/// The device tree blob for `vm` on a GIC of `gic_version`, with the
/// physical devices `devices` given to it; `pmu` when the board's CPUs
/// have a PMUv3, which the vCPUs then own.
pub fn guest_dtb(
    vm: &VmConfig,
    gic_version: u32,
    devices: &[PassthroughDevice],
    pmu: bool,
) -> Result<Vec<u8>, Error> {
    let vcpus = vm.cpus.len() as u32;
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    psci(&mut fdt)?;
    memory(&mut fdt, vm)?;
    cpus(&mut fdt, vcpus)?;
    timer(&mut fdt, gic_version, vcpus)?;
    if pmu {
        performance_monitors(&mut fdt, gic_version, vcpus)?;
    }
    gic(&mut fdt, gic_version, vcpus)?;
    uart(&mut fdt)?;
    let clocks = Clocks::for_devices(devices);
    for device in devices {
        if let Some(node) = &device.node {
            passthrough_device(&mut fdt, node, &device.ranges, &clocks)?;
        }
    }
    clocks.write(&mut fdt)?;
    for device in &vm.shmem {
        vdev_shmem(&mut fdt, device)?;
    }
    chosen(&mut fdt, vm)?;

    fdt.end_node(root)?;
    fdt.finish()
}

fn psci(fdt: &mut FdtWriter) -> Result<(), Error> {
    let node = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        vec![
            "arm,psci-1.0".into(),
            "arm,psci-0.2".into(),
            "arm,psci".into(),
        ],
    )?;
    fdt.property_string("method", "hvc")?;
    // PSCI 0.1 function IDs, for guests that predate PSCI 0.2's fixed ones.
    fdt.property_u32("cpu_on", psci_function::CPU_ON_64)?;
    fdt.property_u32("cpu_off", psci_function::CPU_OFF)?;
    fdt.end_node(node)
}

fn memory(fdt: &mut FdtWriter, vm: &VmConfig) -> Result<(), Error> {
    let node = fdt.begin_node(&format!("memory@{:x}", vm.ram_base))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &[vm.ram_base, vm.ram])?;
    fdt.end_node(node)
}

fn cpus(fdt: &mut FdtWriter, vcpus: u32) -> Result<(), Error> {
    let node = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for vcpu in 0..vcpus {
        let cpu = fdt.begin_node(&format!("cpu@{vcpu:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,cortex-a72")?;
        // The vCPU's MPIDR affinity, which is its index.
        fdt.property_u32("reg", vcpu)?;
        fdt.property_string("enable-method", "psci")?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(node)
}

/// The flags cell of a level-high PPI. The GICv2 binding adds a mask of
/// the CPUs the interrupt goes to; GICv3's has none. QEMU writes both this
/// way.
fn ppi_flags(gic_version: u32, vcpus: u32) -> u32 {
    if gic_version == 2 {
        IRQ_LEVEL_HIGH | (((1 << vcpus) - 1) << 8)
    } else {
        IRQ_LEVEL_HIGH
    }
}

fn timer(fdt: &mut FdtWriter, gic_version: u32, vcpus: u32) -> Result<(), Error> {
    let flags = ppi_flags(gic_version, vcpus);
    let interrupts: Vec<u32> = TIMER_PPIS
        .iter()
        .flat_map(|&ppi| [GIC_PPI, ppi, flags])
        .collect();
    let node = fdt.begin_node("timer")?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,armv8-timer".into(), "arm,armv7-timer".into()],
    )?;
    fdt.property_array_u32("interrupts", &interrupts)?;
    fdt.property_null("always-on")?;
    fdt.end_node(node)
}

/// The PMUv3 each vCPU owns, with its overflow interrupt as a PPI on every
/// board (the hypervisor links the guest's PPI to the board's own line).
fn performance_monitors(fdt: &mut FdtWriter, gic_version: u32, vcpus: u32) -> Result<(), Error> {
    let node = fdt.begin_node("pmu")?;
    fdt.property_string("compatible", "arm,armv8-pmuv3")?;
    fdt.property_array_u32(
        "interrupts",
        &[GIC_PPI, PMU_PPI, ppi_flags(gic_version, vcpus)],
    )?;
    fdt.end_node(node)
}

fn gic(fdt: &mut FdtWriter, gic_version: u32, vcpus: u32) -> Result<(), Error> {
    let node = fdt.begin_node(&format!("intc@{GIC_DISTRIBUTOR:x}"))?;
    if gic_version == 2 {
        fdt.property_string("compatible", "arm,cortex-a15-gic")?;
        fdt.property_array_u64(
            "reg",
            &[
                GIC_DISTRIBUTOR,
                GIC_DISTRIBUTOR_SIZE,
                GICV2_CPU_INTERFACE,
                GICV2_CPU_INTERFACE_SIZE,
            ],
        )?;
    } else {
        fdt.property_string("compatible", "arm,gic-v3")?;
        fdt.property_u32("#redistributor-regions", 1)?;
        fdt.property_array_u64(
            "reg",
            &[
                GIC_DISTRIBUTOR,
                GIC_DISTRIBUTOR_SIZE,
                GICV3_REDISTRIBUTORS,
                u64::from(vcpus) * GICV3_REDISTRIBUTOR_SIZE,
            ],
        )?;
    }
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    // As QEMU has them; dtc wants #address-cells in an interrupt provider.
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    fdt.property_phandle(GIC_PHANDLE)?;
    fdt.end_node(node)
}

fn uart(fdt: &mut FdtWriter) -> Result<(), Error> {
    let node = fdt.begin_node(&format!("pl011@{UART:x}"))?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl011".into(), "arm,primecell".into()],
    )?;
    fdt.property_array_u64("reg", &[UART, UART_SIZE])?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, UART_SPI, IRQ_LEVEL_HIGH])?;
    fdt.property_array_u32("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE])?;
    fdt.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])?;
    fdt.end_node(node)
}

/// The UART's fixed 24 MHz clock, as QEMU's `virt` tree has it.
fn uart_clock() -> ClockNode {
    let string = |text: &str| [text.as_bytes(), b"\0"].concat();
    ClockNode {
        name: "apb-pclk".into(),
        properties: vec![
            ("compatible".into(), string("fixed-clock")),
            ("#clock-cells".into(), 0u32.to_be_bytes().to_vec()),
            (
                "clock-frequency".into(),
                UART_CLOCK_HZ.to_be_bytes().to_vec(),
            ),
            ("clock-output-names".into(), string("clk24mhz")),
        ],
    }
}

/// Whether two clock nodes are the same clock: the same name and
/// properties, in whatever order the trees list them.
fn same_clock(a: &ClockNode, b: &ClockNode) -> bool {
    let sorted = |clock: &ClockNode| {
        let mut properties = clock.properties.clone();
        properties.sort();
        properties
    };
    a.name == b.name && sorted(a) == sorted(b)
}

/// The guest's clock nodes: the UART's, then each clock a passthrough
/// device names, once however many devices name it. A clock that is the
/// UART's (QEMU `virt`'s PL031 and PL061 use the same `apb-pclk`) is
/// that node.
struct Clocks {
    /// Each node and its phandle.
    nodes: Vec<(String, ClockNode, u32)>,
}

impl Clocks {
    fn for_devices(devices: &[PassthroughDevice]) -> Self {
        let mut nodes = vec![("apb-pclk".to_string(), uart_clock(), CLOCK_PHANDLE)];
        let mut next = FIRST_COPIED_PHANDLE;
        for clock in devices
            .iter()
            .filter_map(|device| device.node.as_ref())
            .flat_map(|node| &node.clocks)
        {
            if nodes.iter().any(|(_, known, _)| same_clock(known, clock)) {
                continue;
            }
            // Another clock of the same name: the node names must differ.
            let name = if nodes.iter().any(|(name, ..)| *name == clock.name) {
                format!("{}-{next}", clock.name)
            } else {
                clock.name.clone()
            };
            nodes.push((name, clock.clone(), next));
            next += 1;
        }
        Self { nodes }
    }

    fn phandle(&self, clock: &ClockNode) -> u32 {
        self.nodes
            .iter()
            .find(|(_, known, _)| same_clock(known, clock))
            .map_or(CLOCK_PHANDLE, |(.., phandle)| *phandle)
    }

    fn write(&self, fdt: &mut FdtWriter) -> Result<(), Error> {
        for (name, clock, phandle) in &self.nodes {
            let node = fdt.begin_node(name)?;
            for (property, value) in &clock.properties {
                fdt.property(property, value)?;
            }
            fdt.property_phandle(*phandle)?;
            fdt.end_node(node)?;
        }
        Ok(())
    }
}

/// A physical device given to the VM, as the board's tree describes it,
/// at its own address. Its interrupts are the GIC's, the root's
/// interrupt parent.
fn passthrough_device(
    fdt: &mut FdtWriter,
    device: &DeviceNode,
    ranges: &[(u64, u64)],
    clocks: &Clocks,
) -> Result<(), Error> {
    let node = fdt.begin_node(&device.name)?;
    fdt.property("compatible", &device.compatible)?;
    let reg: Vec<u64> = ranges
        .iter()
        .flat_map(|&(base, size)| [base, size])
        .collect();
    fdt.property_array_u64("reg", &reg)?;
    if !device.interrupts.is_empty() {
        fdt.property_array_u32("interrupts", &device.interrupts)?;
    }
    if !device.clocks.is_empty() {
        let phandles: Vec<u32> = device
            .clocks
            .iter()
            .map(|clock| clocks.phandle(clock))
            .collect();
        fdt.property_array_u32("clocks", &phandles)?;
    }
    if let Some(names) = &device.clock_names {
        fdt.property("clock-names", names)?;
    }
    fdt.end_node(node)
}

/// A vdev-shmem instance exactly as vdev-shmem-abi.md's "Device tree
/// node given to guests" shows it: at the root, named by `loc` in
/// lowercase hex, the factory page then the window (the extension) in
/// `reg`, the vector as a level-high SPI.
fn vdev_shmem(fdt: &mut FdtWriter, device: &ShmemDevice) -> Result<(), Error> {
    let node = fdt.begin_node(&format!("vdev-shmem@{:x}", device.loc))?;
    fdt.property_string("compatible", "qvm,guest_shm")?;
    let (window_base, window_size) = device.window;
    fdt.property_array_u64("reg", &[device.loc, 0x1000, window_base, window_size])?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, device.intr - 32, IRQ_LEVEL_HIGH])?;
    fdt.end_node(node)
}

fn chosen(fdt: &mut FdtWriter, vm: &VmConfig) -> Result<(), Error> {
    let node = fdt.begin_node("chosen")?;
    fdt.property_string("stdout-path", &format!("/pl011@{UART:x}"))?;
    if let Some(bootargs) = &vm.bootargs {
        fdt.property_string("bootargs", bootargs)?;
    }
    fdt.end_node(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_tree_reading::{cells, string, strings};
    use crate::system::ImageSource;
    use fdt::Fdt;

    const PMU: bool = true;

    fn vm(cpus: &[u32], bootargs: Option<&str>) -> VmConfig {
        VmConfig {
            name: "alpha".into(),
            image: ImageSource::Example("hello".into()),
            ram: 0x400_0000,
            ram_base: 0x4000_0000,
            cpus: cpus.to_vec(),
            bootargs: bootargs.map(str::to_string),
            start_delay_ms: 0,
            passthrough: Vec::new(),
            shmem: Vec::new(),
        }
    }

    #[test]
    fn root_memory_and_chosen() {
        let blob = guest_dtb(&vm(&[1], Some("console=ttyAMA0")), 3, &[], PMU).unwrap();
        let tree = Fdt::new(&blob).unwrap();
        let root = tree.find_node("/").unwrap();
        assert_eq!(strings(root, "compatible"), ["linux,dummy-virt"]);
        assert_eq!(cells(root, "#address-cells"), [2]);
        assert_eq!(cells(root, "#size-cells"), [2]);
        assert_eq!(cells(root, "interrupt-parent"), [GIC_PHANDLE]);

        let memory = tree.find_node("/memory@40000000").unwrap();
        assert_eq!(string(memory, "device_type"), "memory");
        assert_eq!(cells(memory, "reg"), [0, 0x4000_0000, 0, 0x400_0000]);
        let regions: Vec<_> = tree.memory().regions().collect();
        assert_eq!(regions.len(), 1);
        assert_eq!(regions[0].starting_address as usize, 0x4000_0000);
        assert_eq!(regions[0].size, Some(0x400_0000));

        assert_eq!(tree.chosen().bootargs(), Some("console=ttyAMA0"));
        assert_eq!(tree.chosen().stdout().unwrap().name, "pl011@9000000");
        assert_eq!(
            string(tree.find_node("/chosen").unwrap(), "stdout-path"),
            "/pl011@9000000"
        );
    }

    #[test]
    fn each_vdev_shmem_instance_is_a_qvm_guest_shm_node_as_the_abi_shows() {
        let mut alpha = vm(&[1], None);
        for (loc, intr, window) in [
            (0x1_0000_0000, 40, (0x1_0001_0000, 0x10_0000)),
            (0xA000_0000, 41, (0xA010_0000, 0x4000)),
        ] {
            alpha.shmem.push(ShmemDevice {
                loc,
                intr,
                window,
                allow: vec!["ping*".into()],
                deny: Vec::new(),
            });
        }
        for gic_version in [2, 3] {
            let blob = guest_dtb(&alpha, gic_version, &[], PMU).unwrap();
            let tree = Fdt::new(&blob).unwrap();
            let node = tree.find_node("/vdev-shmem@100000000").unwrap();
            assert_eq!(strings(node, "compatible"), ["qvm,guest_shm"]);
            // <loc 0x1000>, <window-base window-size> in the root's two
            // address and two size cells.
            assert_eq!(
                cells(node, "reg"),
                [1, 0, 0, 0x1000, 1, 0x1_0000, 0, 0x10_0000]
            );
            // <GIC_SPI (intr-32) IRQ_TYPE_LEVEL_HIGH>
            assert_eq!(cells(node, "interrupts"), [0, 8, 4]);
            let names: Vec<_> = node.properties().map(|property| property.name).collect();
            assert_eq!(names, ["compatible", "reg", "interrupts"]);
            // Lowercase hex, no 0x; at the root, one per instance.
            let second = tree.find_node("/vdev-shmem@a0000000").unwrap();
            assert_eq!(cells(second, "interrupts"), [0, 9, 4]);
            let root = tree.find_node("/").unwrap();
            let shmem: Vec<_> = root
                .children()
                .filter(|child| child.name.starts_with("vdev-shmem@"))
                .map(|child| child.name)
                .collect();
            assert_eq!(shmem, ["vdev-shmem@100000000", "vdev-shmem@a0000000"]);
        }
        // A VM without instances has no such node.
        let blob = guest_dtb(&vm(&[1], None), 3, &[], PMU).unwrap();
        let tree = Fdt::new(&blob).unwrap();
        let root = tree.find_node("/").unwrap();
        assert!(
            !root
                .children()
                .any(|child| child.name.starts_with("vdev-shmem"))
        );
    }

    #[test]
    fn bootargs_only_when_given() {
        let blob = guest_dtb(&vm(&[1], None), 3, &[], PMU).unwrap();
        let tree = Fdt::new(&blob).unwrap();
        assert_eq!(tree.chosen().bootargs(), None);
    }

    #[test]
    fn one_cpu_node_per_vcpu() {
        let blob = guest_dtb(&vm(&[3, 1, 2], None), 3, &[], PMU).unwrap();
        let tree = Fdt::new(&blob).unwrap();
        let cpus = tree.find_node("/cpus").unwrap();
        assert_eq!(cells(cpus, "#address-cells"), [1]);
        assert_eq!(cells(cpus, "#size-cells"), [0]);
        let names: Vec<&str> = cpus.children().map(|cpu| cpu.name).collect();
        assert_eq!(names, ["cpu@0", "cpu@1", "cpu@2"]);
        for (index, cpu) in cpus.children().enumerate() {
            assert_eq!(string(cpu, "device_type"), "cpu");
            assert_eq!(string(cpu, "compatible"), "arm,cortex-a72");
            assert_eq!(cells(cpu, "reg"), [index as u32]);
            assert_eq!(string(cpu, "enable-method"), "psci");
        }
        let ids: Vec<usize> = tree.cpus().map(|cpu| cpu.ids().first()).collect();
        assert_eq!(ids, [0, 1, 2]);
    }

    #[test]
    fn psci_over_hvc() {
        let blob = guest_dtb(&vm(&[1], None), 3, &[], PMU).unwrap();
        let tree = Fdt::new(&blob).unwrap();
        let psci = tree.find_node("/psci").unwrap();
        assert_eq!(
            strings(psci, "compatible"),
            ["arm,psci-1.0", "arm,psci-0.2", "arm,psci"]
        );
        assert_eq!(string(psci, "method"), "hvc");
        assert_eq!(cells(psci, "cpu_on"), [0xc400_0003]);
        assert_eq!(cells(psci, "cpu_off"), [0x8400_0002]);
    }

    #[test]
    fn gicv3_with_one_redistributor_per_vcpu() {
        let blob = guest_dtb(&vm(&[1, 2], None), 3, &[], PMU).unwrap();
        let tree = Fdt::new(&blob).unwrap();
        let gic = tree.find_node("/intc@8000000").unwrap();
        assert_eq!(strings(gic, "compatible"), ["arm,gic-v3"]);
        assert_eq!(
            cells(gic, "reg"),
            [0, 0x800_0000, 0, 0x1_0000, 0, 0x80a_0000, 0, 0x4_0000]
        );
        assert!(gic.property("interrupt-controller").is_some());
        assert_eq!(cells(gic, "#interrupt-cells"), [3]);
        assert_eq!(cells(gic, "#redistributor-regions"), [1]);
        assert_eq!(cells(gic, "phandle"), [GIC_PHANDLE]);
        assert_eq!(tree.find_phandle(GIC_PHANDLE).unwrap().name, "intc@8000000");

        let timer = tree.find_node("/timer").unwrap();
        assert_eq!(
            strings(timer, "compatible"),
            ["arm,armv8-timer", "arm,armv7-timer"]
        );
        assert_eq!(
            cells(timer, "interrupts"),
            [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
        );
        assert!(timer.property("always-on").is_some());
    }

    #[test]
    fn gicv2_with_a_cpu_interface_and_cpu_masks_on_ppis() {
        let blob = guest_dtb(&vm(&[1, 2, 3], None), 2, &[], PMU).unwrap();
        let tree = Fdt::new(&blob).unwrap();
        let gic = tree.find_node("/intc@8000000").unwrap();
        assert_eq!(strings(gic, "compatible"), ["arm,cortex-a15-gic"]);
        assert_eq!(
            cells(gic, "reg"),
            [0, 0x800_0000, 0, 0x1_0000, 0, 0x801_0000, 0, 0x1_0000]
        );
        assert!(gic.property("#redistributor-regions").is_none());
        let timer = tree.find_node("/timer").unwrap();
        assert_eq!(
            cells(timer, "interrupts"),
            [1, 13, 0x704, 1, 14, 0x704, 1, 11, 0x704, 1, 10, 0x704]
        );
    }

    #[test]
    fn pmu_with_its_overflow_ppi() {
        let blob = guest_dtb(&vm(&[1, 2], None), 3, &[], PMU).unwrap();
        let tree = Fdt::new(&blob).unwrap();
        let pmu = tree.find_node("/pmu").unwrap();
        assert_eq!(strings(pmu, "compatible"), ["arm,armv8-pmuv3"]);
        assert_eq!(cells(pmu, "interrupts"), [1, 7, 4]);

        let blob = guest_dtb(&vm(&[1, 2, 3], None), 2, &[], PMU).unwrap();
        let tree = Fdt::new(&blob).unwrap();
        let pmu = tree.find_node("/pmu").unwrap();
        assert_eq!(cells(pmu, "interrupts"), [1, 7, 0x704]);
    }

    #[test]
    fn no_pmu_node_when_the_board_has_none() {
        let blob = guest_dtb(&vm(&[1], None), 3, &[], false).unwrap();
        let tree = Fdt::new(&blob).unwrap();
        assert!(tree.find_node("/pmu").is_none());
        assert!(tree.find_node("/timer").is_some());
    }

    #[test]
    fn pl011_with_its_fixed_clock() {
        let blob = guest_dtb(&vm(&[1], None), 3, &[], PMU).unwrap();
        let tree = Fdt::new(&blob).unwrap();
        let uart = tree.find_node("/pl011@9000000").unwrap();
        assert_eq!(strings(uart, "compatible"), ["arm,pl011", "arm,primecell"]);
        assert_eq!(cells(uart, "reg"), [0, 0x900_0000, 0, 0x1000]);
        assert_eq!(cells(uart, "interrupts"), [0, 1, 4]);
        assert_eq!(cells(uart, "clocks"), [CLOCK_PHANDLE, CLOCK_PHANDLE]);
        assert_eq!(strings(uart, "clock-names"), ["uartclk", "apb_pclk"]);

        let clock = tree.find_phandle(CLOCK_PHANDLE).unwrap();
        assert_eq!(clock.name, "apb-pclk");
        assert_eq!(strings(clock, "compatible"), ["fixed-clock"]);
        assert_eq!(cells(clock, "#clock-cells"), [0]);
        assert_eq!(cells(clock, "clock-frequency"), [24_000_000]);
        assert_eq!(string(clock, "clock-output-names"), "clk24mhz");
    }

    /// QEMU's own virt tree (`dumpdtb`), as the hypervisor's tests read it.
    const VIRT_BOARD: &[u8] =
        include_bytes!("../../../hypervisor/testdata/qemu-virt-gicv3-4cpu.dtb");

    fn given(paths: &[&str]) -> Vec<PassthroughDevice> {
        let board = Fdt::new(VIRT_BOARD).unwrap();
        paths
            .iter()
            .map(|path| {
                let spec = crate::system::PassthroughSpec::Node((*path).to_string());
                crate::system::passthrough::resolve(&spec, Some(&board)).unwrap()
            })
            .collect()
    }

    /// A node's properties but its phandle, sorted by name.
    fn properties<'a>(node: fdt::node::FdtNode<'_, 'a>) -> Vec<(&'a str, &'a [u8])> {
        let mut found: Vec<_> = node
            .properties()
            .filter(|property| property.name != "phandle")
            .map(|property| (property.name, property.value))
            .collect();
        found.sort();
        found
    }

    #[test]
    fn a_passthrough_pl031_appears_as_the_board_tree_describes_it() {
        let devices = given(&["/pl031@9010000"]);
        let blob = guest_dtb(&vm(&[1], None), 3, &devices, PMU).unwrap();
        let tree = Fdt::new(&blob).unwrap();
        let board = Fdt::new(VIRT_BOARD).unwrap();
        let theirs = board.find_node("/pl031@9010000").unwrap();
        let ours = tree.find_node("/pl031@9010000").unwrap();
        for property in ["compatible", "reg", "interrupts", "clock-names"] {
            assert_eq!(
                ours.property(property).unwrap().value,
                theirs.property(property).unwrap().value,
                "{property}"
            );
        }
        // Its interrupt parent is the guest's GIC (the root's), as on the
        // board it is the board's.
        assert!(ours.property("interrupt-parent").is_none());
        assert_eq!(
            cells(tree.find_node("/").unwrap(), "interrupt-parent"),
            [GIC_PHANDLE]
        );
        // Its clock is the board's apb-pclk, which is the guest's UART
        // clock already: one node, with the board's properties.
        let [clock] = cells(ours, "clocks")[..] else {
            panic!("one clock");
        };
        assert_eq!(clock, CLOCK_PHANDLE);
        let board_clock = board.find_phandle(cells(theirs, "clocks")[0]).unwrap();
        let guest_clock = tree.find_phandle(clock).unwrap();
        assert_eq!(guest_clock.name, board_clock.name);
        assert_eq!(properties(guest_clock), properties(board_clock));
        assert_eq!(
            tree.find_node("/")
                .unwrap()
                .children()
                .filter(|node| node.name.starts_with("apb-pclk"))
                .count(),
            1
        );
    }

    #[test]
    fn a_clock_unlike_the_uarts_is_copied_once_with_a_phandle_of_its_own() {
        let mut devices = given(&["/pl031@9010000", "/pl061@9030000"]);
        for device in &mut devices {
            let clock = &mut device.node.as_mut().unwrap().clocks[0];
            clock
                .properties
                .retain(|(name, _)| name != "clock-frequency");
            clock.properties.push((
                "clock-frequency".into(),
                1_000_000u32.to_be_bytes().to_vec(),
            ));
        }
        let blob = guest_dtb(&vm(&[1], None), 2, &devices, PMU).unwrap();
        let tree = Fdt::new(&blob).unwrap();
        let rtc = tree.find_node("/pl031@9010000").unwrap();
        let gpio = tree.find_node("/pl061@9030000").unwrap();
        assert_eq!(cells(rtc, "clocks"), [FIRST_COPIED_PHANDLE]);
        assert_eq!(cells(gpio, "clocks"), [FIRST_COPIED_PHANDLE]);
        let copied = tree.find_phandle(FIRST_COPIED_PHANDLE).unwrap();
        assert_eq!(copied.name, "apb-pclk-3");
        assert_eq!(cells(copied, "clock-frequency"), [1_000_000]);
        // The UART keeps its own.
        assert_eq!(
            cells(tree.find_phandle(CLOCK_PHANDLE).unwrap(), "clock-frequency"),
            [24_000_000]
        );
        assert_eq!(cells(gpio, "interrupts"), [0, 7, 4]);
    }
}
