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

use tessera_platform::guest;

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

/// What the rules know about a board a system can be built for.
#[derive(Debug, PartialEq, Eq)]
pub struct BoardRules {
    /// As written in `board.name` and in the manifest's `board`.
    pub name: &'static str,
    pub gic_versions: &'static [u32],
    pub cpus: RangeInclusive<u32>,
}

pub const QEMU_VIRT: BoardRules = BoardRules {
    name: "qemu-virt",
    gic_versions: &[2, 3],
    cpus: 1..=MAX_CPUS as u32,
};

pub const RPI4: BoardRules = BoardRules {
    name: "rpi4",
    gic_versions: &[2],
    cpus: 4..=4,
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
}

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
        )
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = Address(GUEST_PHYSICAL_LIMIT);
        match *self {
            Self::RamZero => f.write_str("is zero; a VM needs at least 2 MiB"),
            Self::RamNotGranule => f.write_str("is not a multiple of 2 MiB"),
            Self::RamBaseUnaligned => f.write_str("is not 2 MiB aligned"),
            Self::RamPast2To64 { base, size } => write!(
                f,
                "guest RAM of {} at {} ends past 2^64, so past the 39-bit guest-physical space ({limit})",
                Size(size),
                Address(base),
            ),
            Self::RamPastLimit { base, end } => write!(
                f,
                "guest RAM {}..{} ends past the 39-bit guest-physical space ({limit})",
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
            Self::BadName => write!(
                f,
                "is not a VM name (1 to {MAX_NAME_LEN} of a-z, 0-9 and -, starting with a letter)"
            ),
            Self::NameTaken { first } => write!(f, "is also the name of vm[{first}]"),
            Self::NoCpus => f.write_str("empty; a VM needs at least one CPU"),
            Self::TooManyCpus { count } => {
                write!(f, "{count} CPUs, more than the {MAX_CPUS} a VM may have")
            }
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
                match board.gic_versions {
                    [only] => write!(f, "{only} only")?,
                    versions => {
                        for (index, version) in versions.iter().enumerate() {
                            if index > 0 {
                                f.write_str(" or ")?;
                            }
                            write!(f, "{version}")?;
                        }
                    }
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
            Self::TooManyVms { count } => write!(
                f,
                "{count} VMs, more than the {MAX_VMS} a system may have (one per CPU)"
            ),
        }
    }
}

impl core::error::Error for RuleError {}

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
        let nibble = (value >> (4 * position)) & 0xF;
        write!(f, "{nibble:x}")?;
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
}
