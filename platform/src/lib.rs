//! Board descriptions as data.
//!
//! One `const` [`Board`] per supported board. The hypervisor takes run-time
//! facts (RAM size, GIC addresses, CPU list) from the board's device tree when
//! it has one, and falls back to the values here when it does not (QEMU
//! `raspi4b` passes no device tree unless `-dtb` is given). Everything that
//! differs between boards lives in these tables, not in `cfg` blocks spread
//! through the hypervisor.
#![no_std]
#![forbid(unsafe_code)]

/// A half-open physical address range `[base, base + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    pub base: u64,
    pub size: u64,
}

impl PhysRange {
    #[must_use]
    pub const fn new(base: u64, size: u64) -> Self {
        Self { base, size }
    }

    /// One past the last byte. Board tables never describe a range that
    /// wraps the 64-bit address space.
    #[must_use]
    pub const fn end(&self) -> u64 {
        self.base + self.size
    }

    #[must_use]
    pub const fn contains(&self, address: u64) -> bool {
        address >= self.base && address < self.end()
    }
}

/// The GIC register frames of one GIC version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GicLayout {
    /// GICv2 (GIC-400 and QEMU's `gic-version=2`) with the virtualization
    /// extensions: distributor, CPU interface, hypervisor control interface
    /// (GICH) and virtual CPU interface (GICV).
    V2 {
        distributor: PhysRange,
        cpu_interface: PhysRange,
        hypervisor_interface: PhysRange,
        virtual_cpu_interface: PhysRange,
    },
    /// GICv3: distributor and the redistributor region (two 64 KiB frames
    /// per CPU).
    V3 {
        distributor: PhysRange,
        redistributors: PhysRange,
    },
}

impl GicLayout {
    #[must_use]
    pub const fn version(&self) -> u8 {
        match self {
            Self::V2 { .. } => 2,
            Self::V3 { .. } => 3,
        }
    }

    #[must_use]
    pub const fn distributor(&self) -> PhysRange {
        match self {
            Self::V2 { distributor, .. } | Self::V3 { distributor, .. } => *distributor,
        }
    }
}

/// How the boot CPU releases the other CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuStartMethod {
    /// PSCI `CPU_ON` over SMC. With `virtualization=on` QEMU's built-in
    /// firmware answers SMC, because HVC from EL2 would trap to EL2 itself.
    PsciSmc,
    /// The spin table: write the entry point to the CPU's release address,
    /// then `sev`. The secondary CPUs wait in the firmware's stub.
    SpinTable {
        /// Release address of each CPU, indexed by CPU number. CPU 0 is the
        /// boot CPU and never released, so its entry is unused.
        release_addresses: &'static [u64],
    },
}

/// How the machine is powered off at the end of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerOffMethod {
    /// PSCI `SYSTEM_OFF` over SMC.
    PsciSmc,
    /// No power-off interface: park every CPU.
    ParkCpus,
}

/// Interrupt numbers (INTIDs) of the per-CPU generic timer PPIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerInterrupts {
    /// EL2 physical timer (CNTHP).
    pub hypervisor_physical: u32,
    /// EL1 virtual timer (CNTV).
    pub virtual_timer: u32,
    /// EL1 physical timer (CNTP).
    pub physical: u32,
}

/// The standard PPI assignment on both QEMU `virt` and the BCM2711.
pub const STANDARD_TIMER_INTERRUPTS: TimerInterrupts = TimerInterrupts {
    hypervisor_physical: 26,
    virtual_timer: 27,
    physical: 30,
};

/// Everything the hypervisor needs to know about one board.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Board {
    /// Short name shown in the banner.
    pub name: &'static str,
    /// Root `compatible` strings that identify the board's device tree.
    pub compatible: &'static [&'static str],
    /// Physical address at which the boot loader places the hypervisor
    /// image; the image is linked to run there.
    pub load_address: u64,
    /// The `text_offset` written in the arm64 Image header: the load
    /// address minus the 2 MiB-aligned base of RAM below it.
    pub image_text_offset: u64,
    /// The PL011 UART used for the hypervisor console.
    pub console_uart: PhysRange,
    /// The GIC layout used when the device tree does not describe one.
    pub default_gic: GicLayout,
    /// RAM used when there is no device tree.
    pub fallback_memory: &'static [PhysRange],
    /// Memory the firmware keeps for itself (spin table, stubs) and that
    /// the hypervisor must never hand out, whatever the device tree says.
    pub firmware_reserved: &'static [PhysRange],
    /// Device windows mapped as Device-nGnRE in the hypervisor's own
    /// address space. Everything else that is not RAM stays unmapped.
    pub device_windows: &'static [PhysRange],
    pub cpu_start: CpuStartMethod,
    pub power_off: PowerOffMethod,
    pub timer_interrupts: TimerInterrupts,
    /// The GIC's virtual CPU interface maintenance interrupt (a PPI).
    pub gic_maintenance_interrupt: u32,
    /// The PMU's overflow interrupt as each CPU sees it, if it is a PPI:
    /// the hypervisor links it to the guest's PPI 23.
    pub pmu_interrupt: Option<u32>,
    /// The PMU's overflow interrupts, if the board signals them as one SPI
    /// per core: the INTID of the core whose MPIDR Aff0 is 0; core n's is
    /// n above it. The hypervisor links each core's to the guest's PPI 23
    /// too, routed to that core, so a guest gets its overflow interrupt
    /// whichever way the board raises it.
    pub pmu_core_spis: Option<u32>,
    /// Number of CPUs assumed when there is no device tree.
    pub fallback_cpu_count: usize,
}

/// QEMU `virt` with `virtualization=on`, GICv3 or GICv2 (the device tree says
/// which). Addresses from QEMU 10's generated device tree.
pub const QEMU_VIRT: Board = Board {
    name: "qemu-virt",
    compatible: &["linux,dummy-virt"],
    load_address: 0x4008_0000,
    image_text_offset: 0x8_0000,
    console_uart: PhysRange::new(0x0900_0000, 0x1000),
    default_gic: GicLayout::V3 {
        distributor: PhysRange::new(0x0800_0000, 0x1_0000),
        redistributors: PhysRange::new(0x080A_0000, 0xF6_0000),
    },
    fallback_memory: &[PhysRange::new(0x4000_0000, 0x4000_0000)],
    firmware_reserved: &[],
    // GIC distributor, redistributors, UART, RTC, fw_cfg and GPIO sit in
    // 0x0800_0000..0x0A00_0000; one window keeps the map small.
    device_windows: &[PhysRange::new(0x0800_0000, 0x0200_0000)],
    cpu_start: CpuStartMethod::PsciSmc,
    power_off: PowerOffMethod::PsciSmc,
    timer_interrupts: STANDARD_TIMER_INTERRUPTS,
    // PPI 9 in QEMU's device tree (`interrupts` of the GIC node).
    gic_maintenance_interrupt: 25,
    // PPI 7 (the `pmu` node of QEMU's device tree).
    pmu_interrupt: Some(23),
    pmu_core_spis: None,
    fallback_cpu_count: 1,
};

/// Raspberry Pi 4 Model B (BCM2711, GIC-400), and QEMU's `raspi4b`.
pub const RASPBERRY_PI_4: Board = Board {
    name: "rpi4",
    compatible: &["raspberrypi,4-model-b", "brcm,bcm2711"],
    load_address: 0x8_0000,
    image_text_offset: 0x8_0000,
    console_uart: PhysRange::new(0xFE20_1000, 0x1000),
    default_gic: GicLayout::V2 {
        distributor: PhysRange::new(0xFF84_1000, 0x1000),
        cpu_interface: PhysRange::new(0xFF84_2000, 0x2000),
        hypervisor_interface: PhysRange::new(0xFF84_4000, 0x2000),
        virtual_cpu_interface: PhysRange::new(0xFF84_6000, 0x2000),
    },
    // The firmware's default split on a 1 GiB-or-larger board leaves the low
    // 948 MiB to the ARM cores; the rest of the first GiB belongs to the GPU.
    fallback_memory: &[PhysRange::new(0, 0x3B40_0000)],
    // The armstub with the spin table lives in the first page.
    firmware_reserved: &[PhysRange::new(0, 0x1000)],
    // Main peripherals (UART, ...) and the ARM-local block with the GIC-400.
    device_windows: &[
        PhysRange::new(0xFC00_0000, 0x0380_0000),
        PhysRange::new(0xFF80_0000, 0x0080_0000),
    ],
    cpu_start: CpuStartMethod::SpinTable {
        release_addresses: &[0xD8, 0xE0, 0xE8, 0xF0],
    },
    power_off: PowerOffMethod::ParkCpus,
    timer_interrupts: STANDARD_TIMER_INTERRUPTS,
    // PPI 9 in the BCM2711 device tree (`interrupts` of the GIC-400 node).
    gic_maintenance_interrupt: 25,
    // QEMU's raspi4b wires each core's PMU to PPI 7 (INTID 23). The real
    // BCM2711 signals core n's on SPI 16 + n (INTIDs 48-51: the
    // `arm,cortex-a72-pmu` node of its device tree, `interrupt-affinity`
    // cpu0-cpu3, level); its GIC-400 has no PPI 23 (PPIs 25-31 only).
    // Both are linked to the guest's PPI 23.
    pmu_interrupt: Some(23),
    pmu_core_spis: Some(48),
    fallback_cpu_count: 4,
};

/// Every board Tessera knows.
pub const ALL_BOARDS: &[&Board] = &[&QEMU_VIRT, &RASPBERRY_PI_4];

/// Finds a board by its short name (`qemu-virt`, `rpi4`).
#[must_use]
pub fn board_by_name(name: &str) -> Option<&'static Board> {
    ALL_BOARDS.iter().copied().find(|board| board.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_address_is_ram_base_plus_text_offset() {
        for board in ALL_BOARDS {
            let ram = board.fallback_memory[0];
            assert_eq!(
                board.load_address,
                ram.base + board.image_text_offset,
                "{}",
                board.name
            );
            assert!(ram.contains(board.load_address), "{}", board.name);
            // The Image protocol places the image at a 2 MiB-aligned base
            // plus text_offset.
            assert_eq!(
                (board.load_address - board.image_text_offset) % 0x20_0000,
                0
            );
        }
    }

    #[test]
    fn console_and_gic_sit_inside_a_device_window() {
        for board in ALL_BOARDS {
            let inside = |range: PhysRange| {
                board
                    .device_windows
                    .iter()
                    .any(|window| window.base <= range.base && range.end() <= window.end())
            };
            assert!(inside(board.console_uart), "{} console", board.name);
            assert!(
                inside(board.default_gic.distributor()),
                "{} gic",
                board.name
            );
        }
    }

    #[test]
    fn device_windows_do_not_overlap_ram() {
        for board in ALL_BOARDS {
            for window in board.device_windows {
                for ram in board.fallback_memory {
                    assert!(
                        window.end() <= ram.base || ram.end() <= window.base,
                        "{}",
                        board.name
                    );
                }
            }
        }
    }

    #[test]
    fn spin_table_covers_every_fallback_cpu() {
        if let CpuStartMethod::SpinTable { release_addresses } = RASPBERRY_PI_4.cpu_start {
            assert_eq!(release_addresses.len(), RASPBERRY_PI_4.fallback_cpu_count);
            assert_eq!(release_addresses[1], 0xE0);
        } else {
            panic!("the Pi 4 starts its CPUs through the spin table");
        }
    }

    /// The hypervisor links a board's PMU PPI to the guest's of the same
    /// number, and each core's PMU SPI to it too.
    #[test]
    fn pmu_interrupts_are_the_guests_ppi_or_one_spi_per_core() {
        for board in ALL_BOARDS {
            assert!(
                matches!(board.pmu_interrupt, None | Some(guest::PMU_INTID)),
                "{}",
                board.name
            );
            if let Some(first) = board.pmu_core_spis {
                let last = first + board.fallback_cpu_count as u32 - 1;
                assert!(first >= 32 && last < 1020, "{}", board.name);
            }
        }
        assert_eq!(RASPBERRY_PI_4.pmu_core_spis, Some(48));
        assert_eq!(QEMU_VIRT.pmu_core_spis, None);
    }

    #[test]
    fn boards_are_found_by_name() {
        assert_eq!(board_by_name("rpi4"), Some(&RASPBERRY_PI_4));
        assert_eq!(board_by_name("qemu-virt"), Some(&QEMU_VIRT));
        assert_eq!(board_by_name("pc"), None);
    }
}

/// The machine every guest sees, whatever the board (docs/guest-interface.md):
/// QEMU `virt`'s addresses, so guests written for `virt` run unchanged. The
/// host tool writes these into each guest's device tree and the hypervisor
/// routes trapped accesses by them, so both read the same table.
pub mod guest {
    use super::PhysRange;

    /// The virtual PL011.
    pub const UART: PhysRange = PhysRange::new(0x0900_0000, 0x1000);
    /// The UART's interrupt: SPI 1 (INTID 33), level-high.
    pub const UART_SPI: u32 = 1;
    /// The PMU's overflow interrupt: PPI 7 (INTID 23), on every vCPU.
    pub const PMU_INTID: u32 = 23;
    /// GIC distributor (both versions).
    pub const GIC_DISTRIBUTOR: PhysRange = PhysRange::new(0x0800_0000, 0x1_0000);
    /// GICv2 CPU interface.
    pub const GICV2_CPU_INTERFACE: PhysRange = PhysRange::new(0x0801_0000, 0x1_0000);
    /// GICv3 redistributors start here: an RD_base and an SGI_base frame of
    /// 64 KiB per vCPU.
    pub const GICV3_REDISTRIBUTORS_BASE: u64 = 0x080A_0000;
    pub const GICV3_REDISTRIBUTOR_STRIDE: u64 = 0x2_0000;
    /// Where guest RAM starts unless the system config says otherwise.
    pub const DEFAULT_RAM_BASE: u64 = 0x4000_0000;
    /// Every emulated device above sits in this window, and guest RAM must
    /// stay clear of it (the tool refuses a configuration that overlaps it).
    pub const DEVICE_WINDOW: PhysRange = PhysRange::new(0x0800_0000, 0x0200_0000);
    /// Bits of guest-physical address stage 2 translates: guest RAM and
    /// devices must lie below `1 << PHYSICAL_ADDRESS_BITS`.
    pub const PHYSICAL_ADDRESS_BITS: u32 = 39;

    const _: () = {
        let devices = [UART, GIC_DISTRIBUTOR, GICV2_CPU_INTERFACE];
        let mut index = 0;
        while index < devices.len() {
            assert!(
                devices[index].base >= DEVICE_WINDOW.base
                    && devices[index].base + devices[index].size
                        <= DEVICE_WINDOW.base + DEVICE_WINDOW.size,
                "every guest device lies in the device window"
            );
            index += 1;
        }
    };
}
