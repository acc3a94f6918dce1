//! The rules every system obeys, applied by both sides: `tessera check`
//! to the configuration and the hypervisor to the manifest it reads at
//! boot (docs/system-image.md, "The checks"). One implementation, so a
//! package the tool would never write cannot boot either.
//!
//! Each rule is a function that returns a typed [`RuleError`]. The error's
//! text is the reason only: the caller names where the value came from
//! (`FILE: KEY:` for the tool; the manifest entry, the VM and the field for
//! the hypervisor). For a rule about one value (a size, a name) the reason
//! is a predicate ("is not a multiple of 2 MiB") and the caller puts the
//! value before it as it shows it (the text the user wrote, or the number
//! in hex); [`RuleError::has_subject`] says which form a reason has.
//!
//! All sums are checked: no value, however large, wraps.

use core::fmt;
use core::ops::{Range, RangeInclusive};

use tessera_platform::{PhysRange, QEMU_VIRT as VIRT_BOARD, RASPBERRY_PI_4, guest};
use tessera_vdevs::shmem::PatternError;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Guest RAM comes in 2 MiB blocks, the stage-2 block size: its size and
/// base are multiples of this.
pub const RAM_GRANULE: u64 = 2 * MIB;
/// The guest-physical addresses of the virtual GIC and UART; guest RAM
/// must stay clear of them.
pub const DEVICE_WINDOW: Range<u64> = guest::DEVICE_WINDOW.base..guest::DEVICE_WINDOW.end();
/// The stage-2 translation covers this much guest-physical space.
pub const GUEST_PHYSICAL_LIMIT: u64 = 1 << guest::PHYSICAL_ADDRESS_BITS;
/// The last 64 KiB of a VM's RAM hold its device tree; the image must end
/// below them.
pub const DEVICE_TREE_ROOM: u64 = 64 * KIB;
/// VM names become package entry names and console tags: short and plain.
pub const MAX_NAME_LEN: usize = 15;
/// The hypervisor runs on at most this many CPUs (also all that a GICv2
/// can address).
pub const MAX_CPUS: usize = 8;
/// At most one VM per CPU.
pub const MAX_VMS: usize = MAX_CPUS;

/// A range of addresses with what it is, for messages: "the console UART".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamedRange {
    pub name: &'static str,
    pub range: PhysRange,
}

/// An SPI something else already uses, with what uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamedSpi {
    pub name: &'static str,
    pub spi: u32,
}

/// What the rules know about a board a system can be built for.
#[derive(Debug, PartialEq, Eq)]
pub struct BoardRules {
    /// As written in `board.name` and in the manifest's `board`.
    pub name: &'static str,
    pub gic_versions: &'static [u32],
    pub cpus: RangeInclusive<u32>,
    /// Where the board's devices are (`tessera_platform::Board::
    /// device_windows`): a passthrough range must lie inside one.
    pub device_space: &'static [PhysRange],
    /// The devices the hypervisor keeps for itself: no VM gets them.
    pub hypervisor_devices: &'static [NamedRange],
    /// The physical SPIs of those devices.
    pub hypervisor_spis: &'static [NamedSpi],
}

pub const QEMU_VIRT: BoardRules = BoardRules {
    name: "qemu-virt",
    gic_versions: &[2, 3],
    cpus: 1..=MAX_CPUS as u32,
    device_space: VIRT_BOARD.device_windows,
    hypervisor_devices: &[
        NamedRange {
            name: "the console UART",
            range: VIRT_BOARD.console_uart,
        },
        // Distributor, ITS, redistributors of up to 8 CPUs, and the GICv2
        // CPU, hypervisor and virtual CPU interfaces: whichever version
        // QEMU is started with, the GIC is in here.
        NamedRange {
            name: "the GIC",
            range: PhysRange::new(0x0800_0000, 0x0100_0000),
        },
    ],
    hypervisor_spis: &[NamedSpi {
        name: "the console UART",
        spi: 1,
    }],
};

pub const RPI4: BoardRules = BoardRules {
    name: "rpi4",
    gic_versions: &[2],
    cpus: 4..=4,
    device_space: RASPBERRY_PI_4.device_windows,
    hypervisor_devices: &[
        NamedRange {
            name: "the console UART",
            range: RASPBERRY_PI_4.console_uart,
        },
        // The GIC-400's 32 KiB: distributor, CPU interface, GICH, GICV.
        NamedRange {
            name: "the GIC",
            range: PhysRange::new(0xFF84_0000, 0x8000),
        },
    ],
    // The console UART's, and each core's PMU overflow (SPIs 16-19), which
    // the hypervisor links to that core's vCPU (`Board::pmu_core_spis`).
    hypervisor_spis: &[
        NamedSpi {
            name: "the console UART",
            spi: 121,
        },
        NamedSpi {
            name: "CPU 0's PMU",
            spi: 16,
        },
        NamedSpi {
            name: "CPU 1's PMU",
            spi: 17,
        },
        NamedSpi {
            name: "CPU 2's PMU",
            spi: 18,
        },
        NamedSpi {
            name: "CPU 3's PMU",
            spi: 19,
        },
    ],
};

/// Every board, in the order messages list them.
pub const BOARDS: &[BoardRules] = &[QEMU_VIRT, RPI4];

/// The board called `name`.
///
/// # Errors
/// `UnknownBoard`.
pub fn board(name: &str) -> Result<&'static BoardRules, RuleError> {
    BOARDS
        .iter()
        .find(|board| board.name == name)
        .ok_or(RuleError::UnknownBoard)
}

impl BoardRules {
    /// # Errors
    /// `GicVersion` when the board has no GIC of that version.
    pub fn check_gic_version(&'static self, version: u32) -> Result<(), RuleError> {
        if self.gic_versions.contains(&version) {
            Ok(())
        } else {
            Err(RuleError::GicVersion {
                board: self,
                version,
            })
        }
    }

    /// # Errors
    /// `BoardCpus` when the board cannot have that many CPUs.
    pub fn check_cpu_count(&'static self, count: u64) -> Result<(), RuleError> {
        if u32::try_from(count).is_ok_and(|count| self.cpus.contains(&count)) {
            Ok(())
        } else {
            Err(RuleError::BoardCpus { board: self, count })
        }
    }
}

/// A RAM size: at least 2 MiB, in whole 2 MiB blocks.
///
/// # Errors
/// `RamZero` or `RamNotGranule`.
pub const fn check_ram_size(size: u64) -> Result<(), RuleError> {
    if size == 0 {
        Err(RuleError::RamZero)
    } else if !size.is_multiple_of(RAM_GRANULE) {
        Err(RuleError::RamNotGranule)
    } else {
        Ok(())
    }
}

/// A RAM base: 2 MiB aligned.
///
/// # Errors
/// `RamBaseUnaligned`.
pub const fn check_ram_base(base: u64) -> Result<(), RuleError> {
    if base.is_multiple_of(RAM_GRANULE) {
        Ok(())
    } else {
        Err(RuleError::RamBaseUnaligned)
    }
}

/// A VM's RAM as a range: inside the 39-bit guest-physical space and clear
/// of the device window.
///
/// # Errors
/// `RamPast2To64`, `RamPastLimit` or `RamOverlapsDevices`.
pub const fn check_ram_range(base: u64, size: u64) -> Result<(), RuleError> {
    let Some(end) = base.checked_add(size) else {
        return Err(RuleError::RamPast2To64 { base, size });
    };
    if end > GUEST_PHYSICAL_LIMIT {
        return Err(RuleError::RamPastLimit { base, end });
    }
    if base < DEVICE_WINDOW.end && end > DEVICE_WINDOW.start {
        return Err(RuleError::RamOverlapsDevices { base, end });
    }
    Ok(())
}

/// Every rule about a VM's RAM at once: size, base, range.
///
/// # Errors
/// The first rule broken, and which of the two values it is about
/// (`true`: the base).
pub const fn check_ram(base: u64, size: u64) -> Result<(), (bool, RuleError)> {
    if let Err(error) = check_ram_size(size) {
        return Err((false, error));
    }
    if let Err(error) = check_ram_base(base) {
        return Err((true, error));
    }
    match check_ram_range(base, size) {
        Ok(()) => Ok(()),
        Err(error) => Err((true, error)),
    }
}

/// An image of `size` bytes at `load_offset` in RAM of `ram_size` at
/// `ram_base`: it must end at or below the device tree's place, the last
/// 64 KiB of RAM.
///
/// # Errors
/// `RamPast2To64`, `ImagePast2To64` or `ImageOverlapsDeviceTree`.
pub const fn check_image_fit(
    ram_base: u64,
    ram_size: u64,
    load_offset: u64,
    size: u64,
) -> Result<(), RuleError> {
    let Some(ram_end) = ram_base.checked_add(ram_size) else {
        return Err(RuleError::RamPast2To64 {
            base: ram_base,
            size: ram_size,
        });
    };
    let device_tree = ram_end.saturating_sub(DEVICE_TREE_ROOM);
    let Some(load) = ram_base.checked_add(load_offset) else {
        return Err(RuleError::ImagePast2To64 { load_offset, size });
    };
    let Some(end) = load.checked_add(size) else {
        return Err(RuleError::ImagePast2To64 { load_offset, size });
    };
    if end > device_tree {
        return Err(RuleError::ImageOverlapsDeviceTree {
            load,
            end,
            device_tree,
        });
    }
    Ok(())
}

/// A VM name: 1 to [`MAX_NAME_LEN`] of `a-z`, `0-9` and `-`, starting with
/// a letter.
///
/// # Errors
/// `BadName`.
pub fn check_vm_name(name: &str) -> Result<(), RuleError> {
    let plain = name
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    let starts_with_letter = name.as_bytes().first().is_some_and(u8::is_ascii_lowercase);
    if plain && starts_with_letter && name.len() <= MAX_NAME_LEN {
        Ok(())
    } else {
        Err(RuleError::BadName)
    }
}

/// The name of VM `index`, against the names of the VMs before it.
///
/// # Errors
/// `NameTaken` with the first VM that has it.
pub fn check_unique_name<'n>(
    name: &str,
    earlier: impl IntoIterator<Item = &'n str>,
) -> Result<(), RuleError> {
    match earlier.into_iter().position(|other| other == name) {
        Some(first) => Err(RuleError::NameTaken { first }),
        None => Ok(()),
    }
}

/// How many CPUs one VM has: at least one, at most [`MAX_CPUS`].
///
/// # Errors
/// `NoCpus` or `TooManyCpus`.
pub const fn check_vcpu_count(count: usize) -> Result<(), RuleError> {
    if count == 0 {
        Err(RuleError::NoCpus)
    } else if count > MAX_CPUS {
        Err(RuleError::TooManyCpus { count })
    } else {
        Ok(())
    }
}

/// A CPU a VM names: one the board has.
///
/// # Errors
/// `CpuMissing`.
pub const fn check_cpu_exists(cpu: u32, cpu_count: u32) -> Result<(), RuleError> {
    if cpu < cpu_count {
        Ok(())
    } else {
        Err(RuleError::CpuMissing {
            cpu,
            count: cpu_count,
        })
    }
}

/// Which CPUs the VMs have claimed so far, so each is used once in the
/// whole system.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuClaims {
    /// The VM that claimed each CPU.
    owners: [Option<usize>; MAX_CPUS],
}

impl CpuClaims {
    /// VM `vm` claims `cpu`, which must exist (`cpu_count` CPUs) and be
    /// free.
    ///
    /// # Errors
    /// `CpuMissing`; `CpuTwice` when `vm` listed it already; `CpuTaken`
    /// when another VM did.
    pub fn claim(&mut self, vm: usize, cpu: u32, cpu_count: u32) -> Result<(), RuleError> {
        check_cpu_exists(cpu, cpu_count.min(MAX_CPUS as u32))?;
        let slot = &mut self.owners[cpu as usize];
        match *slot {
            Some(owner) if owner == vm => Err(RuleError::CpuTwice { cpu }),
            Some(owner) => Err(RuleError::CpuTaken { cpu, vm: owner }),
            None => {
                *slot = Some(vm);
                Ok(())
            }
        }
    }
}

/// How many VMs a system has: at least one, at most [`MAX_VMS`].
///
/// # Errors
/// `NoVms` or `TooManyVms`.
pub const fn check_vm_count(count: usize) -> Result<(), RuleError> {
    if count == 0 {
        Err(RuleError::NoVms)
    } else if count > MAX_VMS {
        Err(RuleError::TooManyVms { count })
    } else {
        Ok(())
    }
}

/// The longest a VM's first start may be delayed, in microseconds (the
/// manifest's unit): a minute. A delay is for ordering the VMs' boots in a
/// test or a system; anything longer is a mistake, not an order.
pub const MAX_START_DELAY_US: u64 = 60 * 1_000_000;

/// A VM's start delay, in microseconds: at most [`MAX_START_DELAY_US`]
/// (zero, no delay, included).
///
/// # Errors
/// `StartDelayTooLong`.
pub const fn check_start_delay(microseconds: u64) -> Result<(), RuleError> {
    if microseconds > MAX_START_DELAY_US {
        Err(RuleError::StartDelayTooLong)
    } else {
        Ok(())
    }
}

/// Passthrough ranges are mapped page by page into stage 2: base and size
/// are multiples of this.
pub const PASSTHROUGH_GRANULE: u64 = 4 * KIB;
/// SPIs the virtual GIC models: SPI numbers `0..SPI_COUNT` (INTIDs 32 to
/// 255).
pub const SPI_COUNT: u32 = 224;
/// At most this many passthrough ranges per VM.
pub const MAX_PASSTHROUGH_RANGES: usize = 8;
/// At most this many passthrough SPIs per VM.
pub const MAX_PASSTHROUGH_SPIS: usize = 8;

/// The guest's emulated devices, at the addresses every guest sees them
/// (`tessera_platform::guest`). A passthrough range is mapped at its own
/// physical address, so it must stay clear of these.
pub const GUEST_DEVICES: &[NamedRange] = &[
    // Distributor, GICv2 CPU interface, and the GICv3 redistributors of up
    // to MAX_CPUS vCPUs.
    NamedRange {
        name: "the guest's virtual GIC",
        range: PhysRange::new(
            guest::GIC_DISTRIBUTOR.base,
            guest::GICV3_REDISTRIBUTORS_BASE + MAX_CPUS as u64 * guest::GICV3_REDISTRIBUTOR_STRIDE
                - guest::GIC_DISTRIBUTOR.base,
        ),
    },
    NamedRange {
        name: "the guest's virtual UART",
        range: guest::UART,
    },
];

const _: () = assert!(
    guest::GICV2_CPU_INTERFACE.base + guest::GICV2_CPU_INTERFACE.size
        <= guest::GICV3_REDISTRIBUTORS_BASE,
    "the GICv2 CPU interface lies inside the virtual GIC's range"
);

/// The SPIs every guest's emulated devices use.
pub const GUEST_SPIS: &[NamedSpi] = &[NamedSpi {
    name: "the guest's virtual UART",
    spi: guest::UART_SPI,
}];

const fn overlaps(base: u64, end: u64, range: PhysRange) -> bool {
    base < range.base + range.size && end > range.base
}

/// One passthrough range on `board`: whole pages, not empty, inside the
/// board's device space, clear of the hypervisor's own devices, and (as
/// it is mapped at its own address) inside the guest-physical space and
/// clear of the guest's emulated devices.
///
/// # Errors
/// `PassthroughEmpty`, `PassthroughUnaligned`, `PassthroughPast2To64`,
/// `PassthroughOutsideDevices`, `PassthroughHypervisorDevice`,
/// `PassthroughPastLimit` or `PassthroughGuestDevice`.
pub fn check_passthrough_range(
    board: &'static BoardRules,
    base: u64,
    size: u64,
) -> Result<(), RuleError> {
    if size == 0 {
        return Err(RuleError::PassthroughEmpty { base });
    }
    if !base.is_multiple_of(PASSTHROUGH_GRANULE) || !size.is_multiple_of(PASSTHROUGH_GRANULE) {
        return Err(RuleError::PassthroughUnaligned { base, size });
    }
    let Some(end) = base.checked_add(size) else {
        return Err(RuleError::PassthroughPast2To64 { base, size });
    };
    let inside = board
        .device_space
        .iter()
        .any(|window| window.base <= base && end <= window.base + window.size);
    if !inside {
        return Err(RuleError::PassthroughOutsideDevices { board, base, end });
    }
    if let Some(device) = board
        .hypervisor_devices
        .iter()
        .find(|device| overlaps(base, end, device.range))
    {
        return Err(RuleError::PassthroughHypervisorDevice { base, end, device });
    }
    if end > GUEST_PHYSICAL_LIMIT {
        return Err(RuleError::PassthroughPastLimit { base, end });
    }
    if let Some(device) = GUEST_DEVICES
        .iter()
        .find(|device| overlaps(base, end, device.range))
    {
        return Err(RuleError::PassthroughGuestDevice { base, end, device });
    }
    Ok(())
}

/// A passthrough range against the VM's RAM: the device appears at its
/// own address, so that address cannot be RAM too. The range has passed
/// [`check_passthrough_range`] (so it does not wrap).
///
/// # Errors
/// `PassthroughOverlapsRam`.
pub const fn check_passthrough_ram(
    base: u64,
    size: u64,
    ram_base: u64,
    ram_size: u64,
) -> Result<(), RuleError> {
    let end = base.saturating_add(size);
    let ram_end = ram_base.saturating_add(ram_size);
    if base < ram_end && end > ram_base {
        Err(RuleError::PassthroughOverlapsRam {
            base,
            ram_base,
            ram_end,
        })
    } else {
        Ok(())
    }
}

/// One passthrough SPI (its number, as a device tree's `<0 N flags>`
/// writes it): one the virtual GIC models, used neither by the
/// hypervisor's devices nor by the guest's emulated ones.
///
/// # Errors
/// `NotAnSpi` or `SpiReserved`.
pub fn check_passthrough_spi(board: &'static BoardRules, spi: u32) -> Result<(), RuleError> {
    if spi >= SPI_COUNT {
        return Err(RuleError::NotAnSpi { spi });
    }
    match board
        .hypervisor_spis
        .iter()
        .chain(GUEST_SPIS)
        .find(|used| used.spi == spi)
    {
        Some(used) => Err(RuleError::SpiReserved { used }),
        None => Ok(()),
    }
}

/// How many passthrough ranges or SPIs one VM has.
///
/// # Errors
/// `TooManyPassthroughRanges` or `TooManyPassthroughSpis`.
pub const fn check_passthrough_counts(ranges: usize, spis: usize) -> Result<(), RuleError> {
    if ranges > MAX_PASSTHROUGH_RANGES {
        Err(RuleError::TooManyPassthroughRanges { count: ranges })
    } else if spis > MAX_PASSTHROUGH_SPIS {
        Err(RuleError::TooManyPassthroughSpis { count: spis })
    } else {
        Ok(())
    }
}

/// Which VM was given each passthrough range and SPI so far, so each
/// device goes to one VM, once.
#[derive(Clone, Copy, Debug)]
pub struct PassthroughClaims {
    /// Each range claimed: `(base, end, vm)`.
    ranges: [Option<(u64, u64, usize)>; MAX_VMS * MAX_PASSTHROUGH_RANGES],
    /// The VM that claimed each SPI.
    spis: [Option<u8>; SPI_COUNT as usize],
}

impl Default for PassthroughClaims {
    fn default() -> Self {
        Self {
            ranges: [None; MAX_VMS * MAX_PASSTHROUGH_RANGES],
            spis: [None; SPI_COUNT as usize],
        }
    }
}

impl PassthroughClaims {
    /// VM `vm` claims the range `base..base + size` (checked already by
    /// [`check_passthrough_range`]).
    ///
    /// # Errors
    /// `PassthroughTaken` when it overlaps a range claimed before, by
    /// this VM or another; `TooManyPassthroughRanges` past the system's
    /// room.
    pub fn claim_range(&mut self, vm: usize, base: u64, size: u64) -> Result<(), RuleError> {
        let end = base.saturating_add(size);
        let mut free = None;
        for (index, slot) in self.ranges.iter().enumerate() {
            match *slot {
                Some((other_base, other_end, owner)) if base < other_end && end > other_base => {
                    return Err(RuleError::PassthroughTaken {
                        other_base,
                        other_end,
                        vm: owner,
                    });
                }
                None if free.is_none() => free = Some(index),
                _ => {}
            }
        }
        let slot = free.and_then(|index| self.ranges.get_mut(index)).ok_or(
            RuleError::TooManyPassthroughRanges {
                count: MAX_PASSTHROUGH_RANGES + 1,
            },
        )?;
        *slot = Some((base, end, vm));
        Ok(())
    }

    /// VM `vm` claims SPI `spi` (checked already by
    /// [`check_passthrough_spi`]).
    ///
    /// # Errors
    /// `NotAnSpi`; `SpiTwice` when `vm` listed it already; `SpiTaken`
    /// when another VM did.
    pub fn claim_spi(&mut self, vm: usize, spi: u32) -> Result<(), RuleError> {
        let slot = self
            .spis
            .get_mut(spi as usize)
            .ok_or(RuleError::NotAnSpi { spi })?;
        match *slot {
            Some(owner) if usize::from(owner) == vm => Err(RuleError::SpiTwice { spi }),
            Some(owner) => Err(RuleError::SpiTaken {
                spi,
                vm: usize::from(owner),
            }),
            None => {
                // At most MAX_VMS VMs, so the index fits.
                *slot = Some(vm as u8);
                Ok(())
            }
        }
    }
}

/// vdev-shmem (`../shared/design/vdev-shmem-abi.md`, docs/vdev-shmem.md):
/// factory pages and windows are mapped or trapped page by page.
pub const SHMEM_PAGE: u64 = tessera_vdevs::shmem::PAGE_SIZE;
/// Device instances in the whole system (the model's table).
pub const MAX_SHMEM_DEVICES: usize = tessera_vdevs::shmem::MAX_DEVICES;
/// vdev-shmem instances one VM may have: each takes two windows of the
/// VM's device map, whose size is on the device fast path.
pub const MAX_SHMEM_DEVICES_PER_VM: usize = 6;
/// `allow` and `deny` patterns together, per instance.
pub const MAX_SHMEM_RULES: usize = tessera_vdevs::shmem::MAX_RULES;
/// Boot regions: they take registry slots for good.
pub const MAX_SHMEM_REGIONS: usize = tessera_vdevs::shmem::MAX_REGIONS;
/// The page-limit a system without `[shmem] limit` gets: 16 MiB.
pub const DEFAULT_SHMEM_LIMIT_PAGES: u64 = 16 * MIB / SHMEM_PAGE;

/// What a guest-physical area of an instance is, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShmemArea {
    Factory,
    Window,
    Passthrough,
}

impl fmt::Display for ShmemArea {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Factory => "a vdev-shmem factory page",
            Self::Window => "a vdev-shmem window",
            Self::Passthrough => "a passthrough range",
        })
    }
}

/// One factory page (`size` = [`SHMEM_PAGE`]) or window of an instance:
/// whole pages, not empty, inside the guest-physical space and clear of
/// the guest's emulated devices.
///
/// # Errors
/// `ShmemEmpty`, `ShmemUnaligned`, `ShmemPastLimit` or `ShmemGuestDevice`.
pub fn check_shmem_area(base: u64, size: u64) -> Result<(), RuleError> {
    if size == 0 {
        return Err(RuleError::ShmemEmpty);
    }
    if !base.is_multiple_of(SHMEM_PAGE) || !size.is_multiple_of(SHMEM_PAGE) {
        return Err(RuleError::ShmemUnaligned { base, size });
    }
    let end = base.saturating_add(size);
    if end > GUEST_PHYSICAL_LIMIT {
        return Err(RuleError::ShmemPastLimit { base, end });
    }
    match GUEST_DEVICES
        .iter()
        .find(|device| overlaps(base, end, device.range))
    {
        Some(device) => Err(RuleError::ShmemGuestDevice { base, end, device }),
        None => Ok(()),
    }
}

/// An area (checked by [`check_shmem_area`]) against the VM's RAM.
///
/// # Errors
/// `ShmemOverlapsRam`.
pub const fn check_shmem_ram(
    base: u64,
    size: u64,
    ram_base: u64,
    ram_size: u64,
) -> Result<(), RuleError> {
    let end = base.saturating_add(size);
    let ram_end = ram_base.saturating_add(ram_size);
    if base < ram_end && end > ram_base {
        Err(RuleError::ShmemOverlapsRam {
            base,
            ram_base,
            ram_end,
        })
    } else {
        Ok(())
    }
}

/// An instance's `intr`, an INTID: an SPI the virtual GIC models and not
/// one of the guest's emulated devices.
///
/// # Errors
/// `ShmemNotAnSpi` or `SpiReserved`.
pub fn check_shmem_intr(intid: u32) -> Result<(), RuleError> {
    let spi = intid.wrapping_sub(32);
    if intid < 32 || spi >= SPI_COUNT {
        return Err(RuleError::ShmemNotAnSpi { intid });
    }
    match GUEST_SPIS.iter().find(|used| used.spi == spi) {
        Some(used) => Err(RuleError::SpiReserved { used }),
        None => Ok(()),
    }
}

/// One `allow` or `deny` pattern, by the model's own pattern rules.
///
/// # Errors
/// `ShmemPattern`.
pub fn check_shmem_pattern(pattern: &[u8]) -> Result<(), RuleError> {
    tessera_vdevs::shmem::Pattern::new(pattern)
        .map(|_| ())
        .map_err(|error| RuleError::ShmemPattern { error })
}

/// How many rules one instance has, and instances the system has.
///
/// # Errors
/// `TooManyShmemRules` or `TooManyShmemDevices`.
pub const fn check_shmem_counts(devices: usize, rules: usize) -> Result<(), RuleError> {
    if devices > MAX_SHMEM_DEVICES {
        Err(RuleError::TooManyShmemDevices { count: devices })
    } else if rules > MAX_SHMEM_RULES {
        Err(RuleError::TooManyShmemRules { count: rules })
    } else {
        Ok(())
    }
}

/// How many vdev-shmem instances one VM has.
///
/// # Errors
/// `TooManyVmShmemDevices`.
pub const fn check_vm_shmem_count(count: usize) -> Result<(), RuleError> {
    if count > MAX_SHMEM_DEVICES_PER_VM {
        Err(RuleError::TooManyVmShmemDevices { count })
    } else {
        Ok(())
    }
}

/// A boot region's name, by the model's name rules (as a guest writes it).
///
/// # Errors
/// `ShmemRegionName`.
pub fn check_shmem_region_name(name: &[u8]) -> Result<(), RuleError> {
    match tessera_vdevs::shmem::Name::new(name) {
        Some(_) => Ok(()),
        None => Err(RuleError::ShmemRegionName),
    }
}

/// A boot region's size in bytes: whole pages, at least one, a page count
/// that fits 32 bits (the ABI's `size` field).
///
/// # Errors
/// `ShmemRegionSize`.
pub const fn check_shmem_region_size(size: u64) -> Result<(), RuleError> {
    if size == 0 || !size.is_multiple_of(SHMEM_PAGE) || size / SHMEM_PAGE > u32::MAX as u64 {
        Err(RuleError::ShmemRegionSize { size })
    } else {
        Ok(())
    }
}

/// The boot regions' pages so far (`total`) against the limit, and how
/// many regions there are.
///
/// # Errors
/// `ShmemOverLimit` or `TooManyShmemRegions`.
pub const fn check_shmem_regions(count: usize, total: u64, limit: u64) -> Result<(), RuleError> {
    if count > MAX_SHMEM_REGIONS {
        Err(RuleError::TooManyShmemRegions { count })
    } else if total > limit {
        Err(RuleError::ShmemOverLimit { total, limit })
    } else {
        Ok(())
    }
}

/// The areas and vectors one VM has used so far: factory pages, windows
/// and passthrough ranges may not overlap, and no INTID is used twice (a
/// passthrough SPI included).
#[derive(Clone, Copy, Debug)]
pub struct ShmemClaims {
    areas: [Option<(u64, u64, ShmemArea)>; 2 * MAX_SHMEM_DEVICES + MAX_PASSTHROUGH_RANGES],
    intids: [u32; MAX_SHMEM_DEVICES + MAX_PASSTHROUGH_SPIS],
    intid_count: usize,
}

impl Default for ShmemClaims {
    fn default() -> Self {
        Self {
            areas: [None; 2 * MAX_SHMEM_DEVICES + MAX_PASSTHROUGH_RANGES],
            intids: [0; MAX_SHMEM_DEVICES + MAX_PASSTHROUGH_SPIS],
            intid_count: 0,
        }
    }
}

impl ShmemClaims {
    /// Claims `base..base + size` as `area`.
    ///
    /// # Errors
    /// `ShmemTaken` when it overlaps an area claimed before;
    /// `TooManyShmemDevices` past the table's room.
    pub fn claim_area(&mut self, base: u64, size: u64, area: ShmemArea) -> Result<(), RuleError> {
        let end = base.saturating_add(size);
        let mut free = None;
        for (index, slot) in self.areas.iter().enumerate() {
            match *slot {
                Some((other_base, other_end, other)) if base < other_end && end > other_base => {
                    return Err(RuleError::ShmemTaken {
                        other_base,
                        other_end,
                        other,
                    });
                }
                None if free.is_none() => free = Some(index),
                _ => {}
            }
        }
        let slot = free.and_then(|index| self.areas.get_mut(index)).ok_or(
            RuleError::TooManyShmemDevices {
                count: MAX_SHMEM_DEVICES + 1,
            },
        )?;
        *slot = Some((base, end, area));
        Ok(())
    }

    /// Claims INTID `intid`.
    ///
    /// # Errors
    /// `IntidTwice` when the VM uses it already; `TooManyShmemDevices`
    /// past the table's room.
    pub fn claim_intid(&mut self, intid: u32) -> Result<(), RuleError> {
        // `get`: a count past the table (never) fails below, not here.
        let used = self.intids.get(..self.intid_count).unwrap_or_default();
        if used.contains(&intid) {
            return Err(RuleError::IntidTwice { intid });
        }
        let slot = self
            .intids
            .get_mut(self.intid_count)
            .ok_or(RuleError::TooManyShmemDevices {
                count: MAX_SHMEM_DEVICES + 1,
            })?;
        *slot = intid;
        self.intid_count += 1;
        Ok(())
    }
}

/// Which rule a value breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleError {
    RamZero,
    RamNotGranule,
    RamBaseUnaligned,
    /// `base + size` is past 2^64.
    RamPast2To64 {
        base: u64,
        size: u64,
    },
    /// RAM ends past the 39-bit guest-physical space.
    RamPastLimit {
        base: u64,
        end: u64,
    },
    RamOverlapsDevices {
        base: u64,
        end: u64,
    },
    /// The image's end is past 2^64.
    ImagePast2To64 {
        load_offset: u64,
        size: u64,
    },
    /// The image runs into the device tree's 64 KiB (or past RAM).
    ImageOverlapsDeviceTree {
        load: u64,
        end: u64,
        device_tree: u64,
    },
    BadName,
    /// The name is also that of VM `first`.
    NameTaken {
        first: usize,
    },
    NoCpus,
    TooManyCpus {
        count: usize,
    },
    CpuMissing {
        cpu: u32,
        count: u32,
    },
    /// The same VM lists the CPU twice.
    CpuTwice {
        cpu: u32,
    },
    /// VM `vm` uses the CPU already.
    CpuTaken {
        cpu: u32,
        vm: usize,
    },
    UnknownBoard,
    GicVersion {
        board: &'static BoardRules,
        version: u32,
    },
    BoardCpus {
        board: &'static BoardRules,
        count: u64,
    },
    NoVms,
    TooManyVms {
        count: usize,
    },
    PassthroughEmpty {
        base: u64,
    },
    /// Base or size not a multiple of 4 KiB.
    PassthroughUnaligned {
        base: u64,
        size: u64,
    },
    PassthroughPast2To64 {
        base: u64,
        size: u64,
    },
    /// Not inside one of the board's device windows.
    PassthroughOutsideDevices {
        board: &'static BoardRules,
        base: u64,
        end: u64,
    },
    PassthroughHypervisorDevice {
        base: u64,
        end: u64,
        device: &'static NamedRange,
    },
    /// Ends past the 39-bit guest-physical space it is mapped into.
    PassthroughPastLimit {
        base: u64,
        end: u64,
    },
    PassthroughGuestDevice {
        base: u64,
        end: u64,
        device: &'static NamedRange,
    },
    /// Overlaps the VM's RAM, `ram_base..ram_end`.
    PassthroughOverlapsRam {
        base: u64,
        ram_base: u64,
        ram_end: u64,
    },
    /// Overlaps `other_base..other_end`, given to VM `vm` already.
    PassthroughTaken {
        other_base: u64,
        other_end: u64,
        vm: usize,
    },
    TooManyPassthroughRanges {
        count: usize,
    },
    TooManyPassthroughSpis {
        count: usize,
    },
    /// Past the SPIs the virtual GIC models.
    NotAnSpi {
        spi: u32,
    },
    SpiReserved {
        used: &'static NamedSpi,
    },
    /// The same VM lists the SPI twice.
    SpiTwice {
        spi: u32,
    },
    /// VM `vm` was given the SPI already.
    SpiTaken {
        spi: u32,
        vm: usize,
    },
    /// An instance's area of no bytes.
    ShmemEmpty,
    ShmemUnaligned {
        base: u64,
        size: u64,
    },
    ShmemPastLimit {
        base: u64,
        end: u64,
    },
    ShmemGuestDevice {
        base: u64,
        end: u64,
        device: &'static NamedRange,
    },
    ShmemOverlapsRam {
        base: u64,
        ram_base: u64,
        ram_end: u64,
    },
    /// Overlaps `other_base..other_end`, the VM's `other`.
    ShmemTaken {
        other_base: u64,
        other_end: u64,
        other: ShmemArea,
    },
    /// `intr` is not the INTID of an SPI the virtual GIC models.
    ShmemNotAnSpi {
        intid: u32,
    },
    /// The VM uses the INTID already (another instance, a passthrough SPI).
    IntidTwice {
        intid: u32,
    },
    ShmemPattern {
        error: tessera_vdevs::shmem::PatternError,
    },
    TooManyShmemRules {
        count: usize,
    },
    TooManyShmemDevices {
        count: usize,
    },
    TooManyVmShmemDevices {
        count: usize,
    },
    ShmemRegionName,
    ShmemRegionTwice,
    ShmemRegionSize {
        size: u64,
    },
    TooManyShmemRegions {
        count: usize,
    },
    /// Boot regions of `total` pages, more than the `limit`.
    ShmemOverLimit {
        total: u64,
        limit: u64,
    },
    /// A start delay past [`MAX_START_DELAY_US`].
    StartDelayTooLong,
}

// The hypervisor returns these by value on its boot path, inside its
// manifest errors: keep them small (references, not copies, of tables).
const _: () = assert!(core::mem::size_of::<RuleError>() <= 32);

impl RuleError {
    /// Whether the reason is a predicate that reads after the value
    /// (`0x30_0000 is not a multiple of 2 MiB`) rather than a sentence of
    /// its own.
    #[must_use]
    pub const fn has_subject(&self) -> bool {
        matches!(
            self,
            Self::RamZero
                | Self::RamNotGranule
                | Self::RamBaseUnaligned
                | Self::BadName
                | Self::NameTaken { .. }
                | Self::UnknownBoard
                | Self::ShmemEmpty
                | Self::ShmemPattern { .. }
                | Self::ShmemRegionName
                | Self::ShmemRegionTwice
                | Self::StartDelayTooLong
        )
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::RamZero => f.write_str("is zero; a VM needs at least 2 MiB"),
            Self::RamNotGranule => f.write_str("is not a multiple of 2 MiB"),
            Self::RamBaseUnaligned => f.write_str("is not 2 MiB aligned"),
            Self::RamPast2To64 { base, size } => write!(
                f,
                "guest RAM of {} at {} ends past 2^64, so {PAST_GUEST_SPACE}",
                Size(size),
                Address(base),
            ),
            Self::RamPastLimit { base, end } => write!(
                f,
                "guest RAM {}..{} ends {PAST_GUEST_SPACE}",
                Address(base),
                Address(end),
            ),
            Self::RamOverlapsDevices { base, end } => write!(
                f,
                "guest RAM {}..{} overlaps the device window {}..{} (GIC, UART)",
                Address(base),
                Address(end),
                Address(DEVICE_WINDOW.start),
                Address(DEVICE_WINDOW.end)
            ),
            Self::ImagePast2To64 { load_offset, size } => write!(
                f,
                "an image of {} at load offset {} would end past 2^64",
                Size(size),
                Hex(load_offset)
            ),
            Self::ImageOverlapsDeviceTree {
                load,
                end,
                device_tree,
            } => write!(
                f,
                "the image, loaded at {}, ends at {}, past the device tree at {} \
                 (the last 64 KiB of the VM's RAM)",
                Address(load),
                Address(end),
                Address(device_tree)
            ),
            Self::BadName => f.write_str(
                "is not a VM name (1 to 15 of a-z, 0-9 and -, starting with a letter)",
            ),
            Self::NameTaken { first } => write!(f, "is also the name of vm[{first}]"),
            Self::NoCpus => f.write_str("empty; a VM needs at least one CPU"),
            Self::TooManyCpus { count } => too_many(f, count, "CPUs", MAX_CPUS, A_VM_MAY_HAVE),
            Self::CpuMissing { cpu, count: 0 } => {
                write!(f, "CPU {cpu} does not exist; the board has no CPUs")
            }
            Self::CpuMissing { cpu, count } => write!(
                f,
                "CPU {cpu} does not exist; the board has CPUs 0 to {}",
                count - 1
            ),
            Self::CpuTwice { cpu } => write!(f, "CPU {cpu} is listed twice"),
            Self::CpuTaken { cpu, vm } => write!(f, "CPU {cpu} is already used by vm[{vm}]"),
            Self::UnknownBoard => {
                f.write_str("is not a board Tessera knows (expected one of: ")?;
                for (index, board) in BOARDS.iter().enumerate() {
                    if index > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(board.name)?;
                }
                f.write_str(")")
            }
            Self::GicVersion { board, version } => {
                write!(f, "{} supports GIC version ", board.name)?;
                for (index, supported) in board.gic_versions.iter().enumerate() {
                    if index > 0 {
                        f.write_str(" or ")?;
                    }
                    fmt::Display::fmt(supported, f)?;
                }
                if board.gic_versions.len() == 1 {
                    f.write_str(" only")?;
                }
                write!(f, ", not {version}")
            }
            Self::BoardCpus { board, count } => {
                let (first, last) = (board.cpus.start(), board.cpus.end());
                if first == last {
                    write!(f, "{} has {first} CPUs, not {count}", board.name)
                } else {
                    write!(f, "{} has {first} to {last} CPUs, not {count}", board.name)
                }
            }
            Self::NoVms => f.write_str("a system with no VMs; it needs at least one"),
            Self::TooManyVms { count } => too_many(
                f,
                count,
                "VMs",
                MAX_VMS,
                "a system may have (one per CPU)",
            ),
            Self::PassthroughEmpty { base } => {
                write!(f, "the range at {} is empty", Address(base))
            }
            Self::PassthroughUnaligned { base, size } => write!(
                f,
                "the range {} of {} is not in whole 4 KiB pages (base and size must be \
                 multiples of 0x1000)",
                Address(base),
                Hex(size)
            ),
            Self::PassthroughPast2To64 { base, size } => write!(
                f,
                "the range {} of {} ends past 2^64",
                Address(base),
                Hex(size)
            ),
            Self::PassthroughOutsideDevices { board, base, end } => {
                write!(
                    f,
                    "the range {}..{} is outside {}'s device space (",
                    Address(base),
                    Address(end),
                    board.name
                )?;
                for (index, window) in board.device_space.iter().enumerate() {
                    if index > 0 {
                        f.write_str(", ")?;
                    }
                    write!(
                        f,
                        "{}..{}",
                        Address(window.base),
                        Address(window.base + window.size)
                    )?;
                }
                f.write_str(")")
            }
            Self::PassthroughHypervisorDevice { base, end, device } => write!(
                f,
                "the range {}..{} overlaps {} at {}..{}, which the hypervisor keeps for itself",
                Address(base),
                Address(end),
                device.name,
                Address(device.range.base),
                Address(device.range.base + device.range.size)
            ),
            Self::PassthroughPastLimit { base, end } => write!(
                f,
                "the range {}..{} ends {PAST_GUEST_SPACE} it is \
                 mapped into at the same address",
                Address(base),
                Address(end)
            ),
            Self::PassthroughGuestDevice { base, end, device } => write!(
                f,
                "the range {}..{} overlaps {} at {}..{}; a passthrough device appears at its \
                 own address",
                Address(base),
                Address(end),
                device.name,
                Address(device.range.base),
                Address(device.range.base + device.range.size)
            ),
            Self::PassthroughOverlapsRam {
                base,
                ram_base,
                ram_end,
            } => write!(
                f,
                "the range at {} overlaps the VM's RAM {}..{}; a passthrough device appears \
                 at its own address",
                Address(base),
                Address(ram_base),
                Address(ram_end)
            ),
            Self::PassthroughTaken {
                other_base,
                other_end,
                vm,
            } => write!(
                f,
                "overlaps the range {}..{}, already given to vm[{vm}]",
                Address(other_base),
                Address(other_end)
            ),
            Self::TooManyPassthroughRanges { count } => too_many(
                f,
                count,
                "passthrough ranges",
                MAX_PASSTHROUGH_RANGES,
                A_VM_MAY_HAVE,
            ),
            Self::TooManyPassthroughSpis { count } => too_many(
                f,
                count,
                "passthrough SPIs",
                MAX_PASSTHROUGH_SPIS,
                A_VM_MAY_HAVE,
            ),
            Self::NotAnSpi { spi } => write!(
                f,
                "SPI {spi} is not an SPI the virtual GIC has (SPIs 0 to 223, INTIDs 32 to 255)"
            ),
            Self::SpiReserved { used } => write!(
                f,
                "SPI {} (INTID {}) is the interrupt of {}",
                used.spi,
                used.spi + 32,
                used.name
            ),
            Self::SpiTwice { spi } => write!(f, "SPI {spi} is listed twice"),
            Self::SpiTaken { spi, vm } => {
                write!(f, "SPI {spi} is already given to vm[{vm}]")
            }
            Self::ShmemEmpty => f.write_str("is empty"),
            Self::ShmemUnaligned { base, size } => write!(
                f,
                "{} of {} bytes is not whole 4 KiB pages (base and size multiples of 4 KiB)",
                Address(base),
                Hex(size)
            ),
            Self::ShmemPastLimit { base, end } => write!(
                f,
                "{}..{} ends {PAST_GUEST_SPACE}",
                Address(base),
                Address(end)
            ),
            Self::ShmemGuestDevice { base, end, device } => write!(
                f,
                "{}..{} overlaps {} at {}..{}",
                Address(base),
                Address(end),
                device.name,
                Address(device.range.base),
                Address(device.range.base + device.range.size)
            ),
            Self::ShmemOverlapsRam {
                base,
                ram_base,
                ram_end,
            } => write!(
                f,
                "{} overlaps the VM's RAM {}..{}",
                Address(base),
                Address(ram_base),
                Address(ram_end)
            ),
            Self::ShmemTaken {
                other_base,
                other_end,
                other,
            } => write!(
                f,
                "overlaps {other} of this VM at {}..{}",
                Address(other_base),
                Address(other_end)
            ),
            Self::ShmemNotAnSpi { intid } => write!(
                f,
                "INTID {intid} is not an SPI the virtual GIC has (INTIDs 32 to 255)"
            ),
            Self::IntidTwice { intid } => write!(
                f,
                "INTID {intid} is already used by this VM (another vdev-shmem instance or a \
                 passthrough SPI)"
            ),
            Self::ShmemPattern { error } => match error {
                PatternError::Empty => f.write_str("is empty; a pattern has 1 to 31 bytes"),
                PatternError::TooLong => {
                    f.write_str("is longer than the 31 bytes a pattern may have")
                }
                PatternError::BadByte { index } => write!(
                    f,
                    "byte {index} is not printable ASCII without space (0x21 to 0x7e), so no \
                     name can hold it"
                ),
            },
            Self::TooManyShmemRules { count } => too_many(
                f,
                count,
                "allow and deny patterns",
                MAX_SHMEM_RULES,
                "an instance may have",
            ),
            Self::TooManyShmemDevices { count } => too_many(
                f,
                count,
                SHMEM_INSTANCES,
                MAX_SHMEM_DEVICES,
                "a system may have",
            ),
            Self::TooManyVmShmemDevices { count } => too_many(
                f,
                count,
                SHMEM_INSTANCES,
                MAX_SHMEM_DEVICES_PER_VM,
                A_VM_MAY_HAVE,
            ),
            Self::ShmemRegionName => f.write_str(
                "is not a region name (1 to 31 bytes of printable ASCII without space, 0x21 to 0x7e)",
            ),
            Self::ShmemRegionTwice => f.write_str("names a boot region already declared"),
            Self::ShmemRegionSize { size } => write!(
                f,
                "{} bytes is not a whole number of 4 KiB pages from 1 to 2^32 - 1",
                Hex(size)
            ),
            Self::TooManyShmemRegions { count } => too_many(
                f,
                count,
                "boot regions",
                MAX_SHMEM_REGIONS,
                "the region table holds",
            ),
            Self::ShmemOverLimit { total, limit } => write!(
                f,
                "the boot regions take {total} pages ({}), more than the limit of {limit} pages ({})",
                Size(total.saturating_mul(SHMEM_PAGE)),
                Size(limit.saturating_mul(SHMEM_PAGE))
            ),
            Self::StartDelayTooLong => {
                f.write_str("is longer than the 60 s a VM's start may be delayed")
            }
        }
    }
}

impl core::error::Error for RuleError {}

// The wording several errors share, written once so the hypervisor image
// holds it once rather than once per message (the messages read as
// before).

const A_VM_MAY_HAVE: &str = "a VM may have";
const PAST_GUEST_SPACE: &str = "past the 39-bit guest-physical space (0x80_0000_0000)";

// Messages that give a limit spell it out, rather than format it at every
// use (where each was an argument more to set up): these hold them to the
// constants.
const _: () = assert!(
    GUEST_PHYSICAL_LIMIT == 0x80_0000_0000
        && MAX_NAME_LEN == 15
        && SPI_COUNT == 224
        && tessera_vdevs::shmem::MAX_PATTERN_BYTES == 31
        && MAX_START_DELAY_US == 60 * 1_000_000,
    "a limit changed: change the messages that spell it out"
);
const SHMEM_INSTANCES: &str = "vdev-shmem instances";

/// `{count} {what}, more than the {max} {holder}`.
fn too_many(
    f: &mut fmt::Formatter<'_>,
    count: usize,
    what: &str,
    max: usize,
    holder: &str,
) -> fmt::Result {
    write!(f, "{count} {what}, more than the {max} {holder}")
}

/// A number in hex, digits grouped by four: `0x8_0000`.
#[derive(Clone, Copy, Debug)]
pub struct Hex(pub u64);

/// An address in hex, at least eight digits, grouped by four:
/// `0x4000_0000`.
#[derive(Clone, Copy, Debug)]
pub struct Address(pub u64);

fn grouped(f: &mut fmt::Formatter<'_>, value: u64, min_digits: usize) -> fmt::Result {
    let significant = (64 - value.leading_zeros() as usize).div_ceil(4).max(1);
    let digits = significant.max(min_digits);
    f.write_str("0x")?;
    for position in (0..digits).rev() {
        let nibble = ((value >> (4 * position)) & 0xF) as usize;
        // A digit from the table: a `{:x}` format per digit set up the
        // integer formatter for each.
        fmt::Write::write_char(f, char::from(b"0123456789abcdef"[nibble]))?;
        if position > 0 && position % 4 == 0 {
            f.write_str("_")?;
        }
    }
    Ok(())
}

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        grouped(f, self.0, 1)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        grouped(f, self.0, 8)
    }
}

/// A size in the largest unit that divides it: `64M`, `4K`, `3 bytes`.
#[derive(Clone, Copy, Debug)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        for (unit, scale) in [("G", GIB), ("M", MIB), ("K", KIB)] {
            if bytes != 0 && bytes.is_multiple_of(scale) {
                return write!(f, "{}{unit}", bytes / scale);
            }
        }
        write!(f, "{bytes} bytes")
    }
}

/// A delay in microseconds as messages show it: in whole milliseconds
/// when it is some (`20 ms`, the configuration's unit), else `1500 us`.
#[derive(Clone, Copy, Debug)]
pub struct Delay(pub u64);

impl fmt::Display for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let microseconds = self.0;
        if microseconds.is_multiple_of(1000) {
            write!(f, "{} ms", microseconds / 1000)
        } else {
            write!(f, "{microseconds} us")
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::string::ToString;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn ram_sizes_are_whole_2_mib_blocks() {
        assert_eq!(check_ram_size(2 * MIB), Ok(()));
        assert_eq!(check_ram_size(64 * MIB), Ok(()));
        assert_eq!(check_ram_size(0), Err(RuleError::RamZero));
        assert_eq!(check_ram_size(MIB), Err(RuleError::RamNotGranule));
        assert_eq!(check_ram_size(3 * MIB), Err(RuleError::RamNotGranule));
        assert_eq!(check_ram_size(u64::MAX), Err(RuleError::RamNotGranule));
    }

    #[test]
    fn ram_bases_are_2_mib_aligned() {
        assert_eq!(check_ram_base(0), Ok(()));
        assert_eq!(check_ram_base(0x4000_0000), Ok(()));
        assert_eq!(
            check_ram_base(0x4010_0000),
            Err(RuleError::RamBaseUnaligned)
        );
        assert_eq!(check_ram_base(1), Err(RuleError::RamBaseUnaligned));
    }

    #[test]
    fn ram_ranges_stay_in_the_space_and_clear_of_the_devices() {
        assert_eq!(check_ram_range(0x4000_0000, 64 * MIB), Ok(()));
        // Right below and right above the device window.
        assert_eq!(check_ram_range(0x0600_0000, 32 * MIB), Ok(()));
        assert_eq!(check_ram_range(0x0A00_0000, 2 * MIB), Ok(()));
        assert_eq!(
            check_ram_range(0x0600_0000, 34 * MIB),
            Err(RuleError::RamOverlapsDevices {
                base: 0x0600_0000,
                end: 0x0820_0000
            })
        );
        assert_eq!(
            check_ram_range(0x0900_0000, 2 * MIB),
            Err(RuleError::RamOverlapsDevices {
                base: 0x0900_0000,
                end: 0x0920_0000
            })
        );
        assert_eq!(
            check_ram_range(GUEST_PHYSICAL_LIMIT - 2 * MIB, 2 * MIB),
            Ok(())
        );
        assert_eq!(
            check_ram_range(GUEST_PHYSICAL_LIMIT, 2 * MIB),
            Err(RuleError::RamPastLimit {
                base: GUEST_PHYSICAL_LIMIT,
                end: GUEST_PHYSICAL_LIMIT + 2 * MIB
            })
        );
        assert_eq!(
            check_ram_range(u64::MAX - MIB, 2 * MIB),
            Err(RuleError::RamPast2To64 {
                base: u64::MAX - MIB,
                size: 2 * MIB
            })
        );
    }

    #[test]
    fn check_ram_says_which_value_is_wrong() {
        assert_eq!(check_ram(0x4000_0000, 64 * MIB), Ok(()));
        assert_eq!(
            check_ram(0x4000_0000, MIB),
            Err((false, RuleError::RamNotGranule))
        );
        assert_eq!(
            check_ram(0x4010_0000, 64 * MIB),
            Err((true, RuleError::RamBaseUnaligned))
        );
        assert!(matches!(
            check_ram(0x0800_0000, 2 * MIB),
            Err((true, RuleError::RamOverlapsDevices { .. }))
        ));
    }

    #[test]
    fn images_end_below_the_device_tree() {
        let ram = 6 * MIB;
        let room = ram - DEVICE_TREE_ROOM - 0x8_0000;
        assert_eq!(check_image_fit(0x4000_0000, ram, 0x8_0000, room), Ok(()));
        assert_eq!(
            check_image_fit(0x4000_0000, ram, 0, ram - DEVICE_TREE_ROOM),
            Ok(())
        );
        assert_eq!(
            check_image_fit(0x4000_0000, ram, 0x8_0000, room + 1),
            Err(RuleError::ImageOverlapsDeviceTree {
                load: 0x4008_0000,
                end: 0x4000_0000 + ram - DEVICE_TREE_ROOM + 1,
                device_tree: 0x4000_0000 + ram - DEVICE_TREE_ROOM,
            })
        );
        assert_eq!(
            check_image_fit(0x4000_0000, ram, u64::MAX - 0xFFF, 0x1000),
            Err(RuleError::ImagePast2To64 {
                load_offset: u64::MAX - 0xFFF,
                size: 0x1000
            })
        );
        assert_eq!(
            check_image_fit(0x4000_0000, ram, 0, u64::MAX),
            Err(RuleError::ImagePast2To64 {
                load_offset: 0,
                size: u64::MAX
            })
        );
        assert!(matches!(
            check_image_fit(u64::MAX, ram, 0, 1),
            Err(RuleError::RamPast2To64 { .. })
        ));
    }

    #[test]
    fn vm_names_are_short_and_plain() {
        for good in ["a", "alpha", "vm-2", "abcdefghijklmno"] {
            assert_eq!(check_vm_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Alpha",
            "2vm",
            "-a",
            "a b",
            "a_b",
            "abcdefghijklmnop",
            "a\x1b[2K",
            "a\n",
            "a\0",
            "é",
        ] {
            assert_eq!(check_vm_name(bad), Err(RuleError::BadName), "{bad:?}");
        }
    }

    #[test]
    fn names_are_unique() {
        assert_eq!(check_unique_name("c", ["a", "b"]), Ok(()));
        assert_eq!(
            check_unique_name("b", ["a", "b"]),
            Err(RuleError::NameTaken { first: 1 })
        );
        assert_eq!(check_unique_name("a", []), Ok(()));
    }

    #[test]
    fn cpus_exist_and_are_used_once() {
        assert_eq!(check_vcpu_count(1), Ok(()));
        assert_eq!(check_vcpu_count(MAX_CPUS), Ok(()));
        assert_eq!(check_vcpu_count(0), Err(RuleError::NoCpus));
        assert_eq!(
            check_vcpu_count(MAX_CPUS + 1),
            Err(RuleError::TooManyCpus { count: 9 })
        );
        let mut claims = CpuClaims::default();
        assert_eq!(claims.claim(0, 0, 4), Ok(()));
        assert_eq!(claims.claim(0, 1, 4), Ok(()));
        assert_eq!(claims.claim(0, 1, 4), Err(RuleError::CpuTwice { cpu: 1 }));
        assert_eq!(
            claims.claim(1, 0, 4),
            Err(RuleError::CpuTaken { cpu: 0, vm: 0 })
        );
        assert_eq!(
            claims.claim(1, 4, 4),
            Err(RuleError::CpuMissing { cpu: 4, count: 4 })
        );
        assert_eq!(
            claims.claim(1, u32::MAX, 4),
            Err(RuleError::CpuMissing {
                cpu: u32::MAX,
                count: 4
            })
        );
        // A machine with more CPUs than the hypervisor runs on.
        assert_eq!(
            claims.claim(1, 8, 16),
            Err(RuleError::CpuMissing { cpu: 8, count: 8 })
        );
        assert_eq!(claims.claim(1, 3, 4), Ok(()));
    }

    #[test]
    fn vm_counts_are_between_one_and_the_maximum() {
        assert_eq!(check_vm_count(0), Err(RuleError::NoVms));
        assert_eq!(check_vm_count(1), Ok(()));
        assert_eq!(check_vm_count(MAX_VMS), Ok(()));
        assert_eq!(
            check_vm_count(MAX_VMS + 1),
            Err(RuleError::TooManyVms { count: 9 })
        );
    }

    #[test]
    fn boards_and_their_gic_versions_and_cpus() {
        assert_eq!(board("qemu-virt"), Ok(&QEMU_VIRT));
        assert_eq!(board("rpi4"), Ok(&RPI4));
        assert_eq!(board("pi5"), Err(RuleError::UnknownBoard));
        assert_eq!(board("rpi4\0"), Err(RuleError::UnknownBoard));
        let virt = board("qemu-virt").unwrap();
        assert_eq!(virt.check_gic_version(3), Ok(()));
        assert!(virt.check_gic_version(4).is_err());
        let rpi4 = board("rpi4").unwrap();
        assert!(rpi4.check_gic_version(3).is_err());
        assert_eq!(rpi4.check_cpu_count(4), Ok(()));
        assert!(rpi4.check_cpu_count(2).is_err());
        assert!(virt.check_cpu_count(9).is_err());
        assert!(virt.check_cpu_count(u64::MAX).is_err());
        assert!(virt.check_cpu_count(0).is_err());
    }

    #[test]
    fn reasons_read_well() {
        let text = |error: RuleError| error.to_string();
        assert_eq!(text(RuleError::RamNotGranule), "is not a multiple of 2 MiB");
        assert_eq!(
            text(RuleError::RamOverlapsDevices {
                base: 0x0800_0000,
                end: 0x0be0_0000
            }),
            "guest RAM 0x0800_0000..0x0be0_0000 overlaps the device window \
             0x0800_0000..0x0a00_0000 (GIC, UART)"
        );
        assert_eq!(
            text(RuleError::RamPast2To64 {
                base: 0xffff_ffff_ffe0_0000,
                size: 4 * MIB
            }),
            "guest RAM of 4M at 0xffff_ffff_ffe0_0000 ends past 2^64, so past the 39-bit \
             guest-physical space (0x80_0000_0000)"
        );
        assert_eq!(
            text(RuleError::GicVersion {
                board: &QEMU_VIRT,
                version: 4
            }),
            "qemu-virt supports GIC version 2 or 3, not 4"
        );
        assert_eq!(
            text(RuleError::GicVersion {
                board: &RPI4,
                version: 3
            }),
            "rpi4 supports GIC version 2 only, not 3"
        );
        assert_eq!(
            text(RuleError::BoardCpus {
                board: &RPI4,
                count: 2
            }),
            "rpi4 has 4 CPUs, not 2"
        );
        assert_eq!(
            text(RuleError::UnknownBoard),
            "is not a board Tessera knows (expected one of: qemu-virt, rpi4)"
        );
        assert_eq!(
            text(RuleError::CpuMissing { cpu: 4, count: 4 }),
            "CPU 4 does not exist; the board has CPUs 0 to 3"
        );
        assert_eq!(
            text(RuleError::CpuMissing { cpu: 0, count: 0 }),
            "CPU 0 does not exist; the board has no CPUs"
        );
        let subjects: Vec<bool> = [RuleError::BadName, RuleError::NoVms]
            .iter()
            .map(RuleError::has_subject)
            .collect();
        assert_eq!(subjects, [true, false]);
    }

    #[test]
    fn passthrough_ranges_are_board_devices_the_hypervisor_and_guest_do_not_use() {
        let virt = &QEMU_VIRT;
        // The PL031 RTC: inside the board's device space and the guest's
        // device window, but clear of every emulated device.
        assert_eq!(check_passthrough_range(virt, 0x0901_0000, 0x1000), Ok(()));
        assert_eq!(
            check_passthrough_range(virt, 0x0901_0000, 0),
            Err(RuleError::PassthroughEmpty { base: 0x0901_0000 })
        );
        assert_eq!(
            check_passthrough_range(virt, 0x0901_0800, 0x1000),
            Err(RuleError::PassthroughUnaligned {
                base: 0x0901_0800,
                size: 0x1000
            })
        );
        assert_eq!(
            check_passthrough_range(virt, 0x0901_0000, 0x800),
            Err(RuleError::PassthroughUnaligned {
                base: 0x0901_0000,
                size: 0x800
            })
        );
        assert_eq!(
            check_passthrough_range(virt, u64::MAX - 0xFFF, 0x2000),
            Err(RuleError::PassthroughPast2To64 {
                base: u64::MAX - 0xFFF,
                size: 0x2000
            })
        );
        // virtio-mmio at 0x0A00_0000 is past the device space the
        // hypervisor knows; RAM is no device at all.
        assert!(matches!(
            check_passthrough_range(virt, 0x0A00_0000, 0x1000),
            Err(RuleError::PassthroughOutsideDevices {
                base: 0x0A00_0000,
                end: 0x0A00_1000,
                ..
            })
        ));
        // Straddling the end of the window is outside too.
        assert!(matches!(
            check_passthrough_range(virt, 0x09FF_F000, 0x2000),
            Err(RuleError::PassthroughOutsideDevices { .. })
        ));
        assert!(matches!(
            check_passthrough_range(virt, 0x4000_0000, 0x1000),
            Err(RuleError::PassthroughOutsideDevices { .. })
        ));
        // The console UART and any GIC frame are the hypervisor's.
        for (base, device) in [
            (0x0900_0000, "the console UART"),
            (0x0800_0000, "the GIC"),
            (0x0804_0000, "the GIC"),
            (0x08FF_F000, "the GIC"),
        ] {
            match check_passthrough_range(virt, base, 0x1000) {
                Err(RuleError::PassthroughHypervisorDevice { device: found, .. }) => {
                    assert_eq!(found.name, device, "{base:#x}");
                }
                other => panic!("{base:#x}: {other:?}"),
            }
        }
        // A range that covers the UART among others is refused too.
        assert!(matches!(
            check_passthrough_range(virt, 0x0900_0000, 0x2_0000),
            Err(RuleError::PassthroughHypervisorDevice { .. })
        ));
        let rpi4 = &RPI4;
        assert_eq!(check_passthrough_range(rpi4, 0xFE20_0000, 0x1000), Ok(()));
        assert!(matches!(
            check_passthrough_range(rpi4, 0xFE20_1000, 0x1000),
            Err(RuleError::PassthroughHypervisorDevice { .. })
        ));
        assert!(matches!(
            check_passthrough_range(rpi4, 0xFF84_2000, 0x1000),
            Err(RuleError::PassthroughHypervisorDevice { .. })
        ));
        assert!(matches!(
            check_passthrough_range(rpi4, 0x0901_0000, 0x1000),
            Err(RuleError::PassthroughOutsideDevices { .. })
        ));
    }

    #[test]
    fn passthrough_ranges_stay_clear_of_the_guests_own_devices_and_ram() {
        // A board whose device space covers the guest's device window and
        // more, so the guest-side rules are reached.
        static WIDE: BoardRules = BoardRules {
            name: "wide",
            gic_versions: &[3],
            cpus: 1..=1,
            device_space: &[PhysRange::new(0, 1 << 40)],
            hypervisor_devices: &[],
            hypervisor_spis: &[],
        };
        assert!(matches!(
            check_passthrough_range(&WIDE, 0x0800_0000, 0x1000),
            Err(RuleError::PassthroughGuestDevice { device, .. })
                if device.name == "the guest's virtual GIC"
        ));
        // The redistributors of an eighth vCPU.
        assert!(matches!(
            check_passthrough_range(&WIDE, 0x0819_F000, 0x1000),
            Err(RuleError::PassthroughGuestDevice { .. })
        ));
        assert_eq!(check_passthrough_range(&WIDE, 0x081A_0000, 0x1000), Ok(()));
        assert!(matches!(
            check_passthrough_range(&WIDE, 0x0900_0000, 0x1000),
            Err(RuleError::PassthroughGuestDevice { device, .. })
                if device.name == "the guest's virtual UART"
        ));
        assert_eq!(
            check_passthrough_range(&WIDE, GUEST_PHYSICAL_LIMIT, 0x1000),
            Err(RuleError::PassthroughPastLimit {
                base: GUEST_PHYSICAL_LIMIT,
                end: GUEST_PHYSICAL_LIMIT + 0x1000
            })
        );
        assert_eq!(
            check_passthrough_ram(0x4000_0000, 0x1000, 0x4000_0000, 64 * MIB),
            Err(RuleError::PassthroughOverlapsRam {
                base: 0x4000_0000,
                ram_base: 0x4000_0000,
                ram_end: 0x4400_0000
            })
        );
        assert_eq!(
            check_passthrough_ram(0x4400_0000, 0x1000, 0x4000_0000, 64 * MIB),
            Ok(())
        );
        assert_eq!(
            check_passthrough_ram(0x3FFF_F000, 0x1000, 0x4000_0000, 64 * MIB),
            Ok(())
        );
    }

    #[test]
    fn passthrough_spis_exist_are_free_and_go_to_one_vm() {
        assert_eq!(check_passthrough_spi(&QEMU_VIRT, 2), Ok(()));
        assert_eq!(check_passthrough_spi(&QEMU_VIRT, SPI_COUNT - 1), Ok(()));
        assert_eq!(
            check_passthrough_spi(&QEMU_VIRT, SPI_COUNT),
            Err(RuleError::NotAnSpi { spi: SPI_COUNT })
        );
        assert_eq!(
            check_passthrough_spi(&QEMU_VIRT, u32::MAX),
            Err(RuleError::NotAnSpi { spi: u32::MAX })
        );
        // SPI 1 is the console's on virt, and every guest's virtual UART's.
        assert!(matches!(
            check_passthrough_spi(&QEMU_VIRT, 1),
            Err(RuleError::SpiReserved { .. })
        ));
        assert!(matches!(
            check_passthrough_spi(&RPI4, 121),
            Err(RuleError::SpiReserved { used }) if used.name == "the console UART"
        ));
        assert!(matches!(
            check_passthrough_spi(&RPI4, 1),
            Err(RuleError::SpiReserved { used }) if used.name == "the guest's virtual UART"
        ));
        // Each core's PMU SPI on the Pi is the hypervisor's (linked to
        // that core's vCPU).
        let first_pmu_spi = RASPBERRY_PI_4.pmu_core_spis.unwrap() - 32;
        for core in 0..4 {
            let spi = first_pmu_spi + core;
            assert!(matches!(
                check_passthrough_spi(&RPI4, spi),
                Err(RuleError::SpiReserved { used }) if used.name.ends_with("'s PMU")
            ));
        }
        assert_eq!(check_passthrough_spi(&RPI4, first_pmu_spi + 4), Ok(()));
        let mut claims = PassthroughClaims::default();
        assert_eq!(claims.claim_spi(0, 2), Ok(()));
        assert_eq!(claims.claim_spi(0, 2), Err(RuleError::SpiTwice { spi: 2 }));
        assert_eq!(
            claims.claim_spi(1, 2),
            Err(RuleError::SpiTaken { spi: 2, vm: 0 })
        );
        assert_eq!(claims.claim_spi(1, 3), Ok(()));
        assert_eq!(
            claims.claim_spi(1, SPI_COUNT),
            Err(RuleError::NotAnSpi { spi: SPI_COUNT })
        );
    }

    #[test]
    fn a_passthrough_range_goes_to_one_vm_once() {
        let mut claims = PassthroughClaims::default();
        assert_eq!(claims.claim_range(0, 0x0901_0000, 0x1000), Ok(()));
        assert_eq!(claims.claim_range(0, 0x0902_0000, 0x1000), Ok(()));
        assert_eq!(
            claims.claim_range(1, 0x0901_0000, 0x1000),
            Err(RuleError::PassthroughTaken {
                other_base: 0x0901_0000,
                other_end: 0x0901_1000,
                vm: 0
            })
        );
        // Partial overlap, and the same VM naming it twice.
        assert!(matches!(
            claims.claim_range(0, 0x0900_F000, 0x2000),
            Err(RuleError::PassthroughTaken { vm: 0, .. })
        ));
        assert_eq!(claims.claim_range(1, 0x0903_0000, 0x1000), Ok(()));
        assert_eq!(check_passthrough_counts(8, 8), Ok(()));
        assert_eq!(
            check_passthrough_counts(9, 0),
            Err(RuleError::TooManyPassthroughRanges { count: 9 })
        );
        assert_eq!(
            check_passthrough_counts(0, 9),
            Err(RuleError::TooManyPassthroughSpis { count: 9 })
        );
    }

    #[test]
    fn passthrough_reasons_read_well() {
        let text = |error: RuleError| error.to_string();
        assert_eq!(
            text(check_passthrough_range(&QEMU_VIRT, 0x0900_0000, 0x1000).unwrap_err()),
            "the range 0x0900_0000..0x0900_1000 overlaps the console UART at \
             0x0900_0000..0x0900_1000, which the hypervisor keeps for itself"
        );
        assert_eq!(
            text(check_passthrough_range(&QEMU_VIRT, 0x0A00_0000, 0x1000).unwrap_err()),
            "the range 0x0a00_0000..0x0a00_1000 is outside qemu-virt's device space \
             (0x0800_0000..0x0a00_0000)"
        );
        assert_eq!(
            text(check_passthrough_range(&RPI4, 0x1000, 0x1000).unwrap_err()),
            "the range 0x0000_1000..0x0000_2000 is outside rpi4's device space \
             (0xfc00_0000..0xff80_0000, 0xff80_0000..0x1_0000_0000)"
        );
        assert_eq!(
            text(check_passthrough_spi(&QEMU_VIRT, 1).unwrap_err()),
            "SPI 1 (INTID 33) is the interrupt of the console UART"
        );
        assert_eq!(
            text(RuleError::NotAnSpi { spi: 224 }),
            "SPI 224 is not an SPI the virtual GIC has (SPIs 0 to 223, INTIDs 32 to 255)"
        );
        assert_eq!(
            text(RuleError::SpiTaken { spi: 2, vm: 0 }),
            "SPI 2 is already given to vm[0]"
        );
    }

    #[test]
    fn numbers_print_grouped() {
        assert_eq!(Hex(0).to_string(), "0x0");
        assert_eq!(Hex(0x8_0000).to_string(), "0x8_0000");
        assert_eq!(Hex(u64::MAX).to_string(), "0xffff_ffff_ffff_ffff");
        assert_eq!(Address(0).to_string(), "0x0000_0000");
        assert_eq!(Address(0x4000_0000).to_string(), "0x4000_0000");
        assert_eq!(Address(1 << 39).to_string(), "0x80_0000_0000");
        assert_eq!(Size(64 * MIB).to_string(), "64M");
        assert_eq!(Size(GIB).to_string(), "1G");
        assert_eq!(Size(4 * KIB).to_string(), "4K");
        assert_eq!(Size(0).to_string(), "0 bytes");
        assert_eq!(Size(u64::MAX).to_string(), "18446744073709551615 bytes");
    }

    #[test]
    fn start_delays_are_at_most_a_minute() {
        for microseconds in [0, 1, 20_000, MAX_START_DELAY_US] {
            assert_eq!(check_start_delay(microseconds), Ok(()));
        }
        for microseconds in [MAX_START_DELAY_US + 1, u64::MAX] {
            assert_eq!(
                check_start_delay(microseconds),
                Err(RuleError::StartDelayTooLong)
            );
        }
        assert!(RuleError::StartDelayTooLong.has_subject());
        assert_eq!(Delay(20_000).to_string(), "20 ms");
        assert_eq!(Delay(60_000_000).to_string(), "60000 ms");
        assert_eq!(Delay(1_500).to_string(), "1500 us");
        assert_eq!(
            RuleError::StartDelayTooLong.to_string(),
            "is longer than the 60 s a VM's start may be delayed"
        );
    }
}

#[cfg(test)]
mod shmem_tests {
    extern crate std;

    use std::string::ToString;

    use super::*;

    #[test]
    fn shmem_areas_are_whole_pages_clear_of_the_guest_devices() {
        assert_eq!(check_shmem_area(0x1_0000_0000, SHMEM_PAGE), Ok(()));
        assert_eq!(
            check_shmem_area(0x1_0000_0000, 0),
            Err(RuleError::ShmemEmpty)
        );
        assert_eq!(
            check_shmem_area(0x1_0000_0800, SHMEM_PAGE),
            Err(RuleError::ShmemUnaligned {
                base: 0x1_0000_0800,
                size: SHMEM_PAGE
            })
        );
        assert_eq!(
            check_shmem_area(GUEST_PHYSICAL_LIMIT - SHMEM_PAGE, 2 * SHMEM_PAGE),
            Err(RuleError::ShmemPastLimit {
                base: GUEST_PHYSICAL_LIMIT - SHMEM_PAGE,
                end: GUEST_PHYSICAL_LIMIT + SHMEM_PAGE
            })
        );
        let uart = guest::UART.base;
        let refused = check_shmem_area(uart, SHMEM_PAGE).unwrap_err();
        assert!(matches!(refused, RuleError::ShmemGuestDevice { .. }));
        assert!(refused.to_string().contains("the guest's virtual UART"));
        assert_eq!(
            check_shmem_ram(0x4000_0000, SHMEM_PAGE, 0x4000_0000, 64 * MIB),
            Err(RuleError::ShmemOverlapsRam {
                base: 0x4000_0000,
                ram_base: 0x4000_0000,
                ram_end: 0x4400_0000
            })
        );
        assert_eq!(
            check_shmem_ram(0x4400_0000, SHMEM_PAGE, 0x4000_0000, 64 * MIB),
            Ok(())
        );
    }

    #[test]
    fn shmem_vectors_are_modelled_spis_other_than_the_uarts() {
        assert_eq!(check_shmem_intr(40), Ok(()));
        assert_eq!(check_shmem_intr(SPI_COUNT + 31), Ok(()));
        for intid in [0, 16, 31, SPI_COUNT + 32, 1020, u32::MAX] {
            assert_eq!(
                check_shmem_intr(intid),
                Err(RuleError::ShmemNotAnSpi { intid })
            );
        }
        assert!(matches!(
            check_shmem_intr(32 + guest::UART_SPI),
            Err(RuleError::SpiReserved { .. })
        ));
        let mut claims = ShmemClaims::default();
        assert_eq!(claims.claim_intid(40), Ok(()));
        assert_eq!(claims.claim_intid(41), Ok(()));
        assert_eq!(
            claims.claim_intid(40),
            Err(RuleError::IntidTwice { intid: 40 })
        );
    }

    #[test]
    fn shmem_areas_of_one_vm_do_not_overlap() {
        let mut claims = ShmemClaims::default();
        let base = 0x1_0000_0000;
        assert_eq!(
            claims.claim_area(base, SHMEM_PAGE, ShmemArea::Factory),
            Ok(())
        );
        assert_eq!(
            claims.claim_area(base + SHMEM_PAGE, 16 * SHMEM_PAGE, ShmemArea::Window),
            Ok(())
        );
        let refused = claims
            .claim_area(base + 4 * SHMEM_PAGE, SHMEM_PAGE, ShmemArea::Factory)
            .unwrap_err();
        assert_eq!(
            refused,
            RuleError::ShmemTaken {
                other_base: base + SHMEM_PAGE,
                other_end: base + 17 * SHMEM_PAGE,
                other: ShmemArea::Window
            }
        );
        assert_eq!(
            refused.to_string(),
            "overlaps a vdev-shmem window of this VM at 0x1_0000_1000..0x1_0001_1000"
        );
    }

    #[test]
    fn shmem_patterns_names_sizes_and_the_limit() {
        assert_eq!(check_shmem_pattern(b"ping*"), Ok(()));
        assert_eq!(check_shmem_pattern(b"?"), Ok(()));
        for (pattern, error) in [
            (&b""[..], PatternError::Empty),
            (&[b'a'; 32][..], PatternError::TooLong),
            (&b"a b"[..], PatternError::BadByte { index: 1 }),
        ] {
            assert_eq!(
                check_shmem_pattern(pattern),
                Err(RuleError::ShmemPattern { error })
            );
        }
        assert_eq!(check_shmem_region_name(b"pingpong"), Ok(()));
        assert_eq!(
            check_shmem_region_name(b"two words"),
            Err(RuleError::ShmemRegionName)
        );
        assert_eq!(
            check_shmem_region_name(b""),
            Err(RuleError::ShmemRegionName)
        );
        assert_eq!(check_shmem_region_size(SHMEM_PAGE), Ok(()));
        for size in [0, 100, SHMEM_PAGE << 32] {
            assert_eq!(
                check_shmem_region_size(size),
                Err(RuleError::ShmemRegionSize { size })
            );
        }
        assert_eq!(check_shmem_regions(2, 16, 16), Ok(()));
        assert_eq!(
            check_shmem_regions(2, 17, 16),
            Err(RuleError::ShmemOverLimit {
                total: 17,
                limit: 16
            })
        );
        assert_eq!(
            check_shmem_regions(MAX_SHMEM_REGIONS + 1, 1, 16),
            Err(RuleError::TooManyShmemRegions {
                count: MAX_SHMEM_REGIONS + 1
            })
        );
        assert_eq!(
            check_shmem_counts(MAX_SHMEM_DEVICES, MAX_SHMEM_RULES),
            Ok(())
        );
        assert!(check_shmem_counts(MAX_SHMEM_DEVICES + 1, 0).is_err());
        assert!(check_shmem_counts(1, MAX_SHMEM_RULES + 1).is_err());
        assert!(check_vm_shmem_count(MAX_SHMEM_DEVICES_PER_VM).is_ok());
        assert_eq!(
            check_vm_shmem_count(MAX_SHMEM_DEVICES_PER_VM + 1)
                .unwrap_err()
                .to_string(),
            "7 vdev-shmem instances, more than the 6 a VM may have"
        );
    }
}
