//! The compiled system configuration (`tessera/manifest.dtb` in the
//! package): which VMs to build, with what RAM, CPUs, image and device tree.
//!
//! A package is data from outside, so the manifest is checked here as
//! strictly as the tool checks the configuration, by the same rules
//! (`tessera_package::rules`): [`parse`] reads every field strictly (a
//! number has exactly the cells the format gives it, a string is exactly
//! one NUL-terminated string) and applies every rule about the system;
//! [`SystemManifest::check_against_machine`] checks the board, GIC version
//! and CPUs against the machine met at boot, and
//! [`SystemManifest::check_package`] the images against the VMs' RAM. All
//! of it but the last happens before any VM is built; the image sizes are
//! checked by the VM builder before it copies anything (a walk over the
//! package here would cost the boot budget). `tessera inspect` calls the
//! same functions, so its verdict on a package is the hypervisor's.

use core::fmt;

use tessera_package::cpio::Archive;
use tessera_package::rules::{
    self, CpuClaims, Hex, MAX_PASSTHROUGH_RANGES, PassthroughClaims, RuleError, SHMEM_PAGE,
    ShmemArea, ShmemClaims,
};

use crate::MAX_CPUS;
use crate::boot::flat_tree::{FlatTree, Token, read_cells, string_list_contains};
use crate::console::escape::Escaped;
use crate::vgic::state::{self as vgic_state, SPI_BASE, SpiSet};

/// How many VMs a system may have (at most one per CPU).
pub const MAX_VMS: usize = rules::MAX_VMS;
const _: () = assert!(
    MAX_CPUS == rules::MAX_CPUS,
    "the rules and the hypervisor agree"
);
const _: () = assert!(
    rules::SPI_COUNT as usize == vgic_state::SPI_COUNT,
    "the rules allow exactly the SPIs the virtual GIC models"
);
/// The manifest format this hypervisor reads.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest's entry in the package.
pub const MANIFEST_ENTRY: &str = "tessera/manifest.dtb";

/// A VM, as an error names it: its index under `/vms` and, once read, its
/// name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmRef<'a> {
    pub index: usize,
    pub name: Option<&'a str>,
}

/// A value as read from the manifest, for a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// An address or a size: shown in hex.
    Hex(u64),
    /// A count, a CPU or a version: shown in decimal.
    Number(u64),
    /// A string or raw property bytes: shown quoted and escaped.
    Bytes(&'a [u8]),
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            // Straight to the number's own `fmt`: a `write!` of one
            // argument would set up a whole format for it.
            Self::Hex(value) => fmt::Display::fmt(&Hex(value), f),
            Self::Number(value) => fmt::Display::fmt(&value, f),
            Self::Bytes(bytes) => write!(f, "\"{}\"", Escaped(bytes)),
        }
    }
}

/// Why a manifest was refused. Every case names the field; the `Display`
/// text names the entry, the VM, the value and what to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestError<'a> {
    /// Not a device tree, or not a Tessera manifest.
    NotAManifest,
    /// A format version this hypervisor does not read.
    UnsupportedVersion(u32),
    /// A property is missing.
    Missing {
        vm: Option<VmRef<'a>>,
        property: &'static str,
    },
    /// A property is not of its type (the wrong number of cells, not one
    /// NUL-terminated UTF-8 string).
    Malformed {
        vm: Option<VmRef<'a>>,
        property: &'static str,
        value: &'a [u8],
    },
    /// A value breaks one of the system rules.
    Rule {
        vm: Option<VmRef<'a>>,
        property: &'static str,
        value: Value<'a>,
        rule: RuleError,
    },
    /// A file the manifest names is not in the package.
    MissingEntry { vm: VmRef<'a>, entry: &'a str },
    /// Built for another board or GIC version.
    WrongMachine {
        board: &'a str,
        gic_version: u32,
        this_board: &'static str,
        this_gic_version: u32,
    },
}

const REBUILD: &str = "rebuild the package with `tessera package`";

fn write_place(f: &mut fmt::Formatter<'_>, vm: Option<VmRef<'_>>) -> fmt::Result {
    write!(f, "{MANIFEST_ENTRY}: ")?;
    if let Some(vm) = vm {
        write!(f, "vm[{}]", vm.index)?;
        if let Some(name) = vm.name {
            write!(f, " \"{}\"", Escaped::str(name))?;
        }
        f.write_str(": ")?;
    }
    Ok(())
}

impl fmt::Display for ManifestError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The place (entry, VM, field) and the advice are the same for
        // most cases: each is written once, not in every case's format.
        let (vm, property) = match *self {
            Self::Missing { vm, property }
            | Self::Malformed { vm, property, .. }
            | Self::Rule { vm, property, .. } => (vm, Some(property)),
            Self::MissingEntry { vm, .. } => (Some(vm), None),
            Self::NotAManifest | Self::UnsupportedVersion(_) | Self::WrongMachine { .. } => {
                (None, None)
            }
        };
        write_place(f, vm)?;
        if let Some(property) = property {
            write!(f, "field {property}: ")?;
        }
        match *self {
            Self::NotAManifest => {
                f.write_str("not a device tree with compatible \"tessera,system\"")?;
            }
            Self::UnsupportedVersion(version) => write!(
                f,
                "field tessera,format-version: {version}, but this hypervisor reads version \
                 {FORMAT_VERSION}"
            )?,
            Self::Missing { .. } => f.write_str("missing")?,
            Self::Malformed { value, .. } => write!(
                f,
                "{} ({} bytes) is not a value of its type",
                Value::Bytes(value),
                value.len()
            )?,
            Self::Rule { value, rule, .. } => {
                let separator = if rule.has_subject() { " " } else { ": " };
                write!(f, "{value}{separator}{rule}")?;
            }
            Self::MissingEntry { entry, .. } => {
                write!(f, "the package has no entry \"{}\"", Escaped::str(entry))?
            }
            Self::WrongMachine {
                board,
                gic_version,
                this_board,
                this_gic_version,
            } => {
                return write!(
                    f,
                    "fields board, gic-version: it was built for {} with GICv{gic_version}, \
                     this is {this_board} with GICv{this_gic_version}; run it there, or rebuild \
                     it for this machine with `tessera package`",
                    Value::Bytes(board.as_bytes())
                );
            }
        }
        f.write_str("; ")?;
        f.write_str(REBUILD)?;
        if let Self::UnsupportedVersion(_) = self {
            f.write_str(" of the same release")?;
        }
        Ok(())
    }
}

impl core::error::Error for ManifestError<'_> {}

/// One VM of the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmManifest<'a> {
    pub name: &'a str,
    pub ram_base: u64,
    pub ram_size: u64,
    /// The physical CPU of each vCPU; the first `vcpu_count` entries count.
    pub physical_cpus: [u32; MAX_CPUS],
    pub vcpu_count: usize,
    /// Package entry names.
    pub image: &'a str,
    pub image_load_offset: u64,
    pub device_tree: &'a str,
    /// How long after the VMs are started its vCPU 0 is, in microseconds
    /// (`start-delay-us`; 0 when absent: at once). At most
    /// `rules::MAX_START_DELAY_US`.
    pub start_delay_us: u64,
    /// The physical devices given to the VM: the `passthrough-reg` cells
    /// (whole `<base size>` u64 pairs, mapped at the same guest-physical
    /// address) and the `passthrough-spis` cells (SPI numbers, INTID - 32),
    /// as read; empty for a VM without devices. Kept as the properties'
    /// bytes, so a manifest without devices costs the boot nothing more.
    passthrough_reg: &'a [u8],
    passthrough_spis: &'a [u8],
    /// The VM's vdev-shmem instances: the `vdev-shmem` cells (whole
    /// `<loc window-base window-size>` u64 and `intr` u32 entries) and the
    /// `vdev-shmem-rules` strings ("INSTANCE allow|deny PATTERN", in the
    /// order the model checks them), as read; empty without instances.
    shmem: &'a [u8],
    shmem_rules: &'a [u8],
}

/// One vdev-shmem instance of a VM, as the manifest gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmemEntry {
    /// Guest-physical address of the factory page.
    pub loc: u64,
    pub window_base: u64,
    pub window_size: u64,
    /// The vector's INTID.
    pub intid: u32,
}

/// One allow or deny rule of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmemRule<'a> {
    /// The instance's index among the VM's.
    pub instance: usize,
    pub allow: bool,
    pub pattern: &'a [u8],
}

/// Bytes of one `vdev-shmem` entry: three u64 and one u32.
const SHMEM_ENTRY_BYTES: usize = 28;

/// One `vdev-shmem-rules` string: `INSTANCE allow|deny PATTERN`, the
/// instance in decimal without leading zeros.
fn shmem_rule(entry: &[u8]) -> Option<ShmemRule<'_>> {
    let mut parts = entry.splitn(3, |&byte| byte == b' ');
    let (instance, kind, pattern) = (parts.next()?, parts.next()?, parts.next()?);
    if instance.is_empty() || instance.len() > 2 || (instance.len() > 1 && instance[0] == b'0') {
        return None;
    }
    let instance = instance.iter().try_fold(0usize, |value, &digit| {
        digit
            .is_ascii_digit()
            .then(|| value * 10 + usize::from(digit - b'0'))
    })?;
    let allow = match kind {
        b"allow" => true,
        b"deny" => false,
        _ => return None,
    };
    Some(ShmemRule {
        instance,
        allow,
        pattern,
    })
}

impl<'a> VmManifest<'a> {
    /// The VM's vdev-shmem instances.
    pub fn shmem_devices(&self) -> impl ExactSizeIterator<Item = ShmemEntry> + '_ {
        self.shmem
            .chunks_exact(SHMEM_ENTRY_BYTES)
            .map(|entry| ShmemEntry {
                loc: be64(&entry[..8]),
                window_base: be64(&entry[8..16]),
                window_size: be64(&entry[16..24]),
                intid: u32::from_be_bytes([entry[24], entry[25], entry[26], entry[27]]),
            })
    }

    /// Every instance's rules, in order (`parse` checked each).
    pub fn shmem_rules(&self) -> impl Iterator<Item = ShmemRule<'a>> + 'a {
        self.shmem_rules
            .split(|&byte| byte == 0)
            .filter(|entry| !entry.is_empty())
            .filter_map(shmem_rule)
    }
}

impl VmManifest<'_> {
    #[must_use]
    pub fn physical_cpus(&self) -> &[u32] {
        // `finish` checked the count against MAX_CPUS; the `min` lets the
        // compiler see so, rather than keep a panic path at each caller.
        &self.physical_cpus[..self.vcpu_count.min(MAX_CPUS)]
    }

    /// `(base, size)` of each passthrough range.
    pub fn passthrough_ranges(&self) -> impl ExactSizeIterator<Item = (u64, u64)> + '_ {
        self.passthrough_reg
            .chunks_exact(16)
            .map(|entry| (be64(&entry[..8]), be64(&entry[8..])))
    }

    /// The SPI number of each passthrough interrupt.
    pub fn passthrough_spis(&self) -> impl ExactSizeIterator<Item = u32> + '_ {
        self.passthrough_spis
            .chunks_exact(4)
            .map(|cell| u32::from_be_bytes([cell[0], cell[1], cell[2], cell[3]]))
    }

    /// The passthrough SPIs as the virtual GIC names them: by INTID, which
    /// is the physical one (SPI number + 32).
    #[must_use]
    pub fn passthrough_spi_set(&self) -> SpiSet {
        let mut set = SpiSet::EMPTY;
        for spi in self.passthrough_spis() {
            // `parse` checked each against the SPIs the vGIC models.
            let modelled = set.insert(SPI_BASE + spi);
            debug_assert!(modelled, "SPI {spi} was checked");
        }
        set
    }
}

/// The whole manifest.
#[derive(Clone, Copy, Debug)]
pub struct SystemManifest<'a> {
    pub board: &'a str,
    pub gic_version: u32,
    vms: [Option<VmManifest<'a>>; MAX_VMS],
    vm_count: usize,
    /// `shmem-page-limit`, or the default when the system has no shared
    /// memory.
    pub shmem_page_limit: u64,
    /// `shmem-regions` (NUL-separated names) and `shmem-region-pages`
    /// (one u32 each), as read; empty without boot regions.
    shmem_region_names: &'a [u8],
    shmem_region_pages: &'a [u8],
}

impl<'a> SystemManifest<'a> {
    /// The boot regions: name and pages.
    pub fn shmem_regions(&self) -> impl Iterator<Item = (&'a [u8], u64)> + '_ {
        let names = self.shmem_region_names;
        names[..names.len().saturating_sub(1)]
            .split(|&byte| byte == 0)
            .filter(move |_| !names.is_empty())
            .zip(self.shmem_region_pages.chunks_exact(4))
            .map(|(name, pages)| {
                (
                    name,
                    u64::from(u32::from_be_bytes([pages[0], pages[1], pages[2], pages[3]])),
                )
            })
    }

    pub fn vms(&self) -> impl Iterator<Item = &VmManifest<'a>> {
        // `parse` fills the slots from the first: the VMs end at the first
        // empty one. (A `flatten` expanded to far more code at each use.)
        self.vms.iter().map_while(Option::as_ref)
    }

    #[must_use]
    pub const fn vm_count(&self) -> usize {
        self.vm_count
    }

    /// Checks that the package was built for this machine: the board, the
    /// GIC version, and CPUs that exist and are used once.
    ///
    /// # Errors
    /// `WrongMachine`, or a `Rule` error on a VM's `cpus`.
    pub fn check_against_machine(
        &self,
        board: &'static str,
        gic_version: u32,
        cpu_count: usize,
    ) -> Result<(), ManifestError<'a>> {
        if self.board != board || self.gic_version != gic_version {
            return Err(ManifestError::WrongMachine {
                board: self.board,
                gic_version: self.gic_version,
                this_board: board,
                this_gic_version: gic_version,
            });
        }
        let cpu_count = u32::try_from(cpu_count).unwrap_or(u32::MAX);
        let mut claims = CpuClaims::default();
        for (index, vm) in self.vms().enumerate() {
            for &cpu in vm.physical_cpus() {
                claims
                    .claim(index, cpu, cpu_count)
                    .map_err(|rule| ManifestError::Rule {
                        vm: Some(VmRef {
                            index,
                            name: Some(vm.name),
                        }),
                        property: "cpus",
                        value: Value::Number(u64::from(cpu)),
                        rule,
                    })?;
            }
        }
        Ok(())
    }

    /// Checks the files the manifest names against `package`: each VM's
    /// image and device tree are there, and the image fits its RAM below
    /// the device tree's 64 KiB (the rule the tool applies). Looks only at
    /// headers, never at the files' bytes.
    ///
    /// # Errors
    /// `MissingEntry`, or a `Rule` error on `image` or `device-tree`.
    pub fn check_package(&self, package: &Archive<'a>) -> Result<(), ManifestError<'a>> {
        // One walk over the headers for all VMs: this is on every boot's
        // path. The first entry of a name is the one `Archive::file` finds.
        let mut sizes = [[None; 2]; MAX_VMS];
        for entry in package.entries() {
            for (vm, found) in self.vms().zip(sizes.iter_mut()) {
                for (wanted, size) in [vm.image, vm.device_tree].into_iter().zip(found.iter_mut()) {
                    if size.is_none() && entry.name == wanted {
                        *size = Some(entry.data.len() as u64);
                    }
                }
            }
        }
        for ((index, vm), [image, device_tree]) in self.vms().enumerate().zip(sizes) {
            let at = VmRef {
                index,
                name: Some(vm.name),
            };
            let image = image.ok_or(ManifestError::MissingEntry {
                vm: at,
                entry: vm.image,
            })?;
            rules::check_image_fit(vm.ram_base, vm.ram_size, vm.image_load_offset, image).map_err(
                |rule| ManifestError::Rule {
                    vm: Some(at),
                    property: "image-load-offset",
                    value: Value::Hex(vm.image_load_offset),
                    rule,
                },
            )?;
            let device_tree = device_tree.ok_or(ManifestError::MissingEntry {
                vm: at,
                entry: vm.device_tree,
            })?;
            if device_tree > rules::DEVICE_TREE_ROOM {
                return Err(ManifestError::Malformed {
                    vm: Some(at),
                    property: "device-tree",
                    value: vm.device_tree.as_bytes(),
                });
            }
        }
        Ok(())
    }

    /// Applies every system rule that needs only the manifest.
    fn validate(&self) -> Result<(), ManifestError<'a>> {
        let root = |property, value, rule| ManifestError::Rule {
            vm: None,
            property,
            value,
            rule,
        };
        let board = rules::board(self.board)
            .map_err(|rule| root("board", Value::Bytes(self.board.as_bytes()), rule))?;
        board
            .check_gic_version(self.gic_version)
            .map_err(|rule| root("gic-version", Value::Number(self.gic_version.into()), rule))?;
        rules::check_vm_count(self.vm_count)
            .map_err(|rule| root("vms", Value::Number(self.vm_count as u64), rule))?;
        // Only a system with devices pays for the claims table.
        let mut claims: Option<PassthroughClaims> = None;
        let mut shmem_devices = 0;
        for (index, vm) in self.vms().enumerate() {
            let fail = |property, value, rule| ManifestError::Rule {
                vm: Some(VmRef {
                    index,
                    name: Some(vm.name),
                }),
                property,
                value,
                rule,
            };
            let name = Value::Bytes(vm.name.as_bytes());
            rules::check_vm_name(vm.name).map_err(|rule| fail("name", name, rule))?;
            let earlier = self.vms().take(index).map(|other| other.name);
            rules::check_unique_name(vm.name, earlier).map_err(|rule| fail("name", name, rule))?;
            // The vCPU count was checked as `cpus` was read (`finish`).
            rules::check_ram(vm.ram_base, vm.ram_size).map_err(|(base, rule)| {
                if base {
                    fail("ram-base", Value::Hex(vm.ram_base), rule)
                } else {
                    fail("ram-size", Value::Hex(vm.ram_size), rule)
                }
            })?;
            // The image's size is the package's (`check_package`); its
            // offset alone must leave it room below the device tree.
            rules::check_image_fit(vm.ram_base, vm.ram_size, vm.image_load_offset, 0).map_err(
                |rule| fail("image-load-offset", Value::Hex(vm.image_load_offset), rule),
            )?;
            if !vm.passthrough_reg.is_empty() || !vm.passthrough_spis.is_empty() {
                // One place makes the table (it is large: inlined at each
                // use, its set-up cost image space twice).
                let claims = claims.get_or_insert_with(PassthroughClaims::default);
                for (base, size) in vm.passthrough_ranges() {
                    rules::check_passthrough_range(board, base, size)
                        .and_then(|()| {
                            rules::check_passthrough_ram(base, size, vm.ram_base, vm.ram_size)
                        })
                        .and_then(|()| claims.claim_range(index, base, size))
                        .map_err(|rule| fail("passthrough-reg", Value::Hex(base), rule))?;
                }
                for spi in vm.passthrough_spis() {
                    rules::check_passthrough_spi(board, spi)
                        .and_then(|()| claims.claim_spi(index, spi))
                        .map_err(|rule| {
                            fail("passthrough-spis", Value::Number(spi.into()), rule)
                        })?;
                }
            }
            if vm.shmem.is_empty() {
                continue;
            }
            let own = vm.shmem_devices().len();
            rules::check_vm_shmem_count(own)
                .map_err(|rule| fail("vdev-shmem", Value::Number(own as u64), rule))?;
            shmem_devices += own;
            rules::check_shmem_counts(shmem_devices, 0)
                .map_err(|rule| fail("vdev-shmem", Value::Number(shmem_devices as u64), rule))?;
            // Passthrough ranges and SPIs are apart already (above).
            let mut shmem = ShmemClaims::default();
            for (base, size) in vm.passthrough_ranges() {
                let _ = shmem.claim_area(base, size, ShmemArea::Passthrough);
            }
            for spi in vm.passthrough_spis() {
                let _ = shmem.claim_intid(spi + 32);
            }
            for device in vm.shmem_devices() {
                for (base, size, area) in [
                    (device.loc, SHMEM_PAGE, ShmemArea::Factory),
                    (device.window_base, device.window_size, ShmemArea::Window),
                ] {
                    rules::check_shmem_area(base, size)
                        .and_then(|()| rules::check_shmem_ram(base, size, vm.ram_base, vm.ram_size))
                        .and_then(|()| shmem.claim_area(base, size, area))
                        .map_err(|rule| fail("vdev-shmem", Value::Hex(base), rule))?;
                }
                rules::check_shmem_intr(device.intid)
                    .and_then(|()| shmem.claim_intid(device.intid))
                    .map_err(|rule| fail("vdev-shmem", Value::Number(device.intid.into()), rule))?;
            }
        }
        self.validate_shmem_regions()
    }

    /// The page limit and the boot regions: legal, distinct names, whole
    /// pages, together within the limit.
    fn validate_shmem_regions(&self) -> Result<(), ManifestError<'a>> {
        let root = |property, value, rule| ManifestError::Rule {
            vm: None,
            property,
            value,
            rule,
        };
        let mut total: u64 = 0;
        for (index, (name, pages)) in self.shmem_regions().enumerate() {
            rules::check_shmem_region_name(name)
                .and_then(|()| {
                    // The earlier names alone: the whole region walk
                    // again (names zipped with pages) was twice the code.
                    if self
                        .shmem_region_names
                        .split(|&byte| byte == 0)
                        .take(index)
                        .any(|other| other == name)
                    {
                        Err(RuleError::ShmemRegionTwice)
                    } else {
                        Ok(())
                    }
                })
                .map_err(|rule| root("shmem-regions", Value::Bytes(name), rule))?;
            total += pages;
            rules::check_shmem_region_size(pages * SHMEM_PAGE)
                .and_then(|()| rules::check_shmem_regions(index + 1, total, self.shmem_page_limit))
                .map_err(|rule| root("shmem-region-pages", Value::Number(pages), rule))?;
        }
        Ok(())
    }
}

/// The names of the root properties the reader keeps, indexed by the
/// constants below.
const ROOT_PROPERTIES: [&str; 7] = [
    "compatible",
    "tessera,format-version",
    "board",
    "gic-version",
    "shmem-page-limit",
    "shmem-regions",
    "shmem-region-pages",
];
const COMPATIBLE: usize = 0;
const FORMAT_VERSION_PROPERTY: usize = 1;
const BOARD: usize = 2;
const GIC_VERSION: usize = 3;
const SHMEM_PAGE_LIMIT: usize = 4;
const SHMEM_REGIONS: usize = 5;
const SHMEM_REGION_PAGES: usize = 6;

/// The names of the properties of a VM node the reader keeps, indexed by
/// the constants below.
const VM_PROPERTIES: [&str; 12] = [
    "name",
    "ram-base",
    "ram-size",
    "cpus",
    "image",
    "image-load-offset",
    "device-tree",
    "start-delay-us",
    "passthrough-reg",
    "passthrough-spis",
    "vdev-shmem",
    "vdev-shmem-rules",
];
const NAME: usize = 0;
const RAM_BASE: usize = 1;
const RAM_SIZE: usize = 2;
const CPUS: usize = 3;
const IMAGE: usize = 4;
const IMAGE_LOAD_OFFSET: usize = 5;
const DEVICE_TREE: usize = 6;
const START_DELAY_US: usize = 7;
const PASSTHROUGH_REG: usize = 8;
const PASSTHROUGH_SPIS: usize = 9;
const SHMEM: usize = 10;
const SHMEM_RULES: usize = 11;

/// The index of `name` in `names`. A lookup in a table, out of line: a
/// `match` on the names as byte-string literals compiled to a compare and
/// a branch per character, 16 bytes of code each (about 5 KiB of image
/// for these names).
#[inline(never)]
fn property_index(names: &[&str], name: &[u8]) -> Option<usize> {
    names.iter().position(|known| known.as_bytes() == name)
}

/// The VM node being read, before its properties are checked: each of
/// `VM_PROPERTIES`, if present.
#[derive(Clone, Copy, Default)]
struct VmFields<'a>([Option<&'a [u8]>; VM_PROPERTIES.len()]);

/// A number of exactly `cells` big-endian 32-bit cells.
fn cells(value: &[u8], cells: usize) -> Option<u64> {
    read_cells(value, cells).filter(|_| value.len() == cells * 4)
}

/// A big-endian u64 from its eight bytes (the callers' slices are all
/// eight long). Out of line: the bytes are loaded one at a time (the
/// target does no unaligned loads), and each of the entry readers' copies
/// inlined that sequence several times over. A fold rather than
/// `copy_from_slice`, whose length check could never fail here.
#[inline(never)]
fn be64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0, |value, &byte| (value << 8) | u64::from(byte))
}

/// Exactly one NUL-terminated UTF-8 string, without a NUL inside.
fn strict_string(value: &[u8]) -> Option<&str> {
    let (last, text) = value.split_last()?;
    // A plain loop, not `contains`: that searches a word at a time, a
    // hundred bytes of image for strings of a few bytes.
    let nul_free = text.iter().all(|&byte| byte != 0);
    if *last != 0 || !nul_free {
        return None;
    }
    core::str::from_utf8(text).ok()
}

/// Reads property `property` (`value`, if present) with `read`.
fn read<'a, T>(
    vm: Option<VmRef<'a>>,
    property: &'static str,
    value: Option<&'a [u8]>,
    read: impl FnOnce(&'a [u8]) -> Option<T>,
) -> Result<T, ManifestError<'a>> {
    let value = value.ok_or(ManifestError::Missing { vm, property })?;
    read(value).ok_or(ManifestError::Malformed {
        vm,
        property,
        value,
    })
}

impl<'a> VmFields<'a> {
    fn set(&mut self, name: &[u8], value: &'a [u8]) {
        if let Some(index) = property_index(&VM_PROPERTIES, name) {
            self.0[index] = Some(value);
        }
    }

    fn finish(self, index: usize) -> Result<VmManifest<'a>, ManifestError<'a>> {
        let mut at = VmRef { index, name: None };
        let name = read(Some(at), "name", self.0[NAME], strict_string)?;
        at.name = Some(name);
        let vm = Some(at);
        let cpus = read(vm, "cpus", self.0[CPUS], |cpus| {
            (cpus.len() % 4 == 0).then_some(cpus)
        })?;
        let vcpu_count = cpus.len() / 4;
        rules::check_vcpu_count(vcpu_count).map_err(|rule| ManifestError::Rule {
            vm,
            property: "cpus",
            value: Value::Number(vcpu_count as u64),
            rule,
        })?;
        let mut physical_cpus = [0; MAX_CPUS];
        for (slot, chunk) in physical_cpus.iter_mut().zip(cpus.chunks_exact(4)) {
            *slot = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        let u64_value = |value| cells(value, 2);
        // Optional (a VM that starts at once has none); when present, a
        // u64 within the rule.
        let start_delay_us = match self.0[START_DELAY_US] {
            None => 0,
            Some(value) => read(vm, "start-delay-us", Some(value), u64_value)?,
        };
        rules::check_start_delay(start_delay_us).map_err(|rule| ManifestError::Rule {
            vm,
            property: "start-delay-us",
            value: Value::Number(start_delay_us),
            rule,
        })?;
        // Both optional (a VM without devices has neither); when present,
        // whole entries: four cells per range, one per SPI.
        let reg = match self.0[PASSTHROUGH_REG] {
            None => &[][..],
            Some(value) => read(vm, "passthrough-reg", Some(value), |reg| {
                (reg.len() % 16 == 0).then_some(reg)
            })?,
        };
        let spis = match self.0[PASSTHROUGH_SPIS] {
            None => &[][..],
            Some(value) => read(vm, "passthrough-spis", Some(value), |spis| {
                (spis.len() % 4 == 0).then_some(spis)
            })?,
        };
        let (range_count, spi_count) = (reg.len() / 16, spis.len() / 4);
        rules::check_passthrough_counts(range_count, spi_count).map_err(|rule| {
            let (property, count) = if range_count > MAX_PASSTHROUGH_RANGES {
                ("passthrough-reg", range_count)
            } else {
                ("passthrough-spis", spi_count)
            };
            ManifestError::Rule {
                vm,
                property,
                value: Value::Number(count as u64),
                rule,
            }
        })?;
        // Both optional (a VM without instances has neither); when
        // present, whole entries, and rules only for instances there are,
        // each one well-formed with a pattern the model takes.
        let shmem = match self.0[SHMEM] {
            None => &[][..],
            Some(value) => read(vm, "vdev-shmem", Some(value), |cells| {
                (!cells.is_empty() && cells.len() % SHMEM_ENTRY_BYTES == 0).then_some(cells)
            })?,
        };
        let instances = shmem.len() / SHMEM_ENTRY_BYTES;
        let shmem_rules = match self.0[SHMEM_RULES] {
            None => &[][..],
            Some(value) => read(vm, "vdev-shmem-rules", Some(value), |list| {
                let (last, entries) = list.split_last()?;
                let well_formed = *last == 0
                    && entries.split(|&byte| byte == 0).all(|entry| {
                        shmem_rule(entry).is_some_and(|rule| rule.instance < instances)
                    });
                well_formed.then_some(list)
            })?,
        };
        let mut per_instance = [0usize; rules::MAX_SHMEM_DEVICES];
        for entry in shmem_rules[..shmem_rules.len().saturating_sub(1)].split(|&byte| byte == 0) {
            let Some(rule) = shmem_rule(entry) else {
                continue;
            };
            let fail = |rule| ManifestError::Rule {
                vm,
                property: "vdev-shmem-rules",
                value: Value::Bytes(entry),
                rule,
            };
            rules::check_shmem_pattern(rule.pattern).map_err(fail)?;
            let count = per_instance.get_mut(rule.instance).ok_or(fail(
                RuleError::TooManyShmemDevices {
                    count: rule.instance + 1,
                },
            ))?;
            *count += 1;
            rules::check_shmem_counts(0, *count).map_err(fail)?;
        }
        Ok(VmManifest {
            name,
            ram_base: read(vm, "ram-base", self.0[RAM_BASE], u64_value)?,
            ram_size: read(vm, "ram-size", self.0[RAM_SIZE], u64_value)?,
            physical_cpus,
            vcpu_count,
            image: read(vm, "image", self.0[IMAGE], strict_string)?,
            image_load_offset: read(
                vm,
                "image-load-offset",
                self.0[IMAGE_LOAD_OFFSET],
                u64_value,
            )?,
            device_tree: read(vm, "device-tree", self.0[DEVICE_TREE], strict_string)?,
            start_delay_us,
            passthrough_reg: reg,
            passthrough_spis: spis,
            shmem,
            shmem_rules,
        })
    }
}

/// Parses the manifest blob, in one pass over its tokens, and applies
/// every system rule that needs only the manifest.
///
/// # Errors
/// See [`ManifestError`].
pub fn parse(blob: &[u8]) -> Result<SystemManifest<'_>, ManifestError<'_>> {
    let tree = FlatTree::new(blob).map_err(|_| ManifestError::NotAManifest)?;
    let mut is_manifest = false;
    // Each of `ROOT_PROPERTIES` but `compatible`, if present.
    let mut root = [None; ROOT_PROPERTIES.len()];
    let mut saw_vms = false;
    let mut vms = [None; MAX_VMS];
    // Every VM node, also those past `MAX_VMS`, so the count is reported.
    let mut vm_count = 0;
    let mut current = VmFields::default();
    // Depth 1: the root; 2: `/vms`; 3: a VM node.
    let mut depth = 0usize;
    let mut in_vms = false;
    for token in tree.tokens() {
        match token.map_err(|_| ManifestError::NotAManifest)? {
            Token::BeginNode(name) => {
                depth += 1;
                if depth == 2 {
                    in_vms = name == b"vms";
                    saw_vms |= in_vms;
                } else if depth == 3 && in_vms {
                    current = VmFields::default();
                }
            }
            Token::Property { name, value } => match depth {
                1 => match property_index(&ROOT_PROPERTIES, name.bytes()) {
                    Some(COMPATIBLE) => {
                        is_manifest = string_list_contains(value, b"tessera,system");
                    }
                    // `get_mut`: the index is one of ROOT_PROPERTIES', so
                    // always in range, but the compiler cannot see it
                    // through the out-of-line look-up.
                    Some(index) => {
                        if let Some(slot) = root.get_mut(index) {
                            *slot = Some(value);
                        }
                    }
                    None => {}
                },
                3 if in_vms => current.set(name.bytes(), value),
                _ => {}
            },
            Token::EndNode => {
                if depth == 3 && in_vms {
                    let entry = current.finish(vm_count)?;
                    if let Some(slot) = vms.get_mut(vm_count) {
                        *slot = Some(entry);
                    }
                    vm_count += 1;
                }
                depth = depth.checked_sub(1).ok_or(ManifestError::NotAManifest)?;
            }
        }
    }
    if !is_manifest {
        return Err(ManifestError::NotAManifest);
    }
    let one_cell = |value| cells(value, 1).map(|value| value as u32);
    let version = read(
        None,
        "tessera,format-version",
        root[FORMAT_VERSION_PROPERTY],
        one_cell,
    )?;
    if version != FORMAT_VERSION {
        return Err(ManifestError::UnsupportedVersion(version));
    }
    if !saw_vms {
        return Err(ManifestError::Missing {
            vm: None,
            property: "vms",
        });
    }
    let shmem_page_limit = match root[SHMEM_PAGE_LIMIT] {
        None => rules::DEFAULT_SHMEM_LIMIT_PAGES,
        Some(value) => read(None, "shmem-page-limit", Some(value), |value| {
            cells(value, 2)
        })?,
    };
    // Both or neither; names as NUL-terminated strings, one u32 each.
    let (shmem_region_names, shmem_region_pages) =
        match (root[SHMEM_REGIONS], root[SHMEM_REGION_PAGES]) {
            (None, None) => (&[][..], &[][..]),
            (names, pages) => {
                let names = read(None, "shmem-regions", names, |names| {
                    (names.last() == Some(&0)
                        && !names.starts_with(&[0])
                        && !names.windows(2).any(|pair| pair == [0, 0]))
                    .then_some(names)
                })?;
                let count = names.iter().filter(|&&byte| byte == 0).count();
                let pages = read(None, "shmem-region-pages", pages, |pages| {
                    (pages.len() == count * 4).then_some(pages)
                })?;
                (names, pages)
            }
        };
    let manifest = SystemManifest {
        board: read(None, "board", root[BOARD], strict_string)?,
        gic_version: read(None, "gic-version", root[GIC_VERSION], one_cell)?,
        vms,
        vm_count,
        shmem_page_limit,
        shmem_region_names,
        shmem_region_pages,
    };
    manifest.validate()?;
    Ok(manifest)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vm_fdt::FdtWriter;

    /// A manifest as `tessera package` writes it.
    pub fn manifest(vms: &[(&str, &[u32])]) -> Vec<u8> {
        let mut writer = FdtWriter::new().unwrap();
        let root = writer.begin_node("").unwrap();
        writer
            .property_string("compatible", "tessera,system")
            .unwrap();
        writer.property_u32("tessera,format-version", 1).unwrap();
        writer.property_string("board", "qemu-virt").unwrap();
        writer.property_u32("gic-version", 3).unwrap();
        let vms_node = writer.begin_node("vms").unwrap();
        for (index, (name, cpus)) in vms.iter().enumerate() {
            let node = writer.begin_node(&format!("vm@{index}")).unwrap();
            writer.property_string("name", name).unwrap();
            writer.property_u64("ram-base", 0x4000_0000).unwrap();
            writer.property_u64("ram-size", 0x400_0000).unwrap();
            writer.property_array_u32("cpus", cpus).unwrap();
            writer
                .property_string("image", &format!("vm/{name}/image"))
                .unwrap();
            writer.property_u64("image-load-offset", 0x8_0000).unwrap();
            writer
                .property_string("device-tree", &format!("vm/{name}/guest.dtb"))
                .unwrap();
            writer.end_node(node).unwrap();
        }
        writer.end_node(vms_node).unwrap();
        writer.end_node(root).unwrap();
        writer.finish().unwrap()
    }

    #[test]
    fn reads_every_vm() {
        let blob = manifest(&[("alpha", &[1]), ("beta", &[2, 3])]);
        let system = parse(&blob).unwrap();
        assert_eq!(system.board, "qemu-virt");
        assert_eq!(system.gic_version, 3);
        let vms: Vec<_> = system.vms().collect();
        assert_eq!(vms.len(), 2);
        assert_eq!(vms[0].name, "alpha");
        assert_eq!(vms[0].ram_base, 0x4000_0000);
        assert_eq!(vms[0].ram_size, 0x400_0000);
        assert_eq!(vms[1].physical_cpus(), &[2, 3]);
        assert_eq!(vms[1].image, "vm/beta/image");
        assert_eq!(vms[1].image_load_offset, 0x8_0000);
        assert_eq!(vms[1].device_tree, "vm/beta/guest.dtb");
        assert_eq!(system.check_against_machine("qemu-virt", 3, 4), Ok(()));
    }

    #[test]
    fn refuses_packages_for_another_machine() {
        let blob = manifest(&[("alpha", &[1]), ("beta", &[1])]);
        let system = parse(&blob).unwrap();
        let wrong = |board, gic_version| ManifestError::WrongMachine {
            board: "qemu-virt",
            gic_version: 3,
            this_board: board,
            this_gic_version: gic_version,
        };
        assert_eq!(
            system.check_against_machine("rpi4", 2, 4),
            Err(wrong("rpi4", 2))
        );
        assert_eq!(
            system.check_against_machine("qemu-virt", 2, 4),
            Err(wrong("qemu-virt", 2))
        );
        assert_eq!(
            wrong("rpi4", 2).to_string(),
            "tessera/manifest.dtb: fields board, gic-version: it was built for \"qemu-virt\" with \
             GICv3, this is rpi4 with GICv2; run it there, or rebuild it for this machine with \
             `tessera package`"
        );
        let taken = system.check_against_machine("qemu-virt", 3, 4).unwrap_err();
        assert_eq!(
            taken,
            ManifestError::Rule {
                vm: Some(VmRef {
                    index: 1,
                    name: Some("beta")
                }),
                property: "cpus",
                value: Value::Number(1),
                rule: RuleError::CpuTaken { cpu: 1, vm: 0 },
            }
        );
        assert_eq!(
            taken.to_string(),
            "tessera/manifest.dtb: vm[1] \"beta\": field cpus: 1: CPU 1 is already used by vm[0]; \
             rebuild the package with `tessera package`"
        );
        let blob = manifest(&[("alpha", &[5])]);
        assert!(matches!(
            parse(&blob)
                .unwrap()
                .check_against_machine("qemu-virt", 3, 4),
            Err(ManifestError::Rule {
                rule: RuleError::CpuMissing { cpu: 5, count: 4 },
                ..
            })
        ));
        let blob = manifest(&[("alpha", &[2, 2])]);
        assert!(matches!(
            parse(&blob)
                .unwrap()
                .check_against_machine("qemu-virt", 3, 4),
            Err(ManifestError::Rule {
                rule: RuleError::CpuTwice { cpu: 2 },
                ..
            })
        ));
    }

    /// One VM's properties, each replaceable.
    pub struct VmSpec<'s> {
        pub name: &'s [u8],
        pub ram_base: u64,
        pub ram_size: u64,
        pub cpus: &'s [u32],
        pub load_offset: u64,
        /// Written only when given.
        pub start_delay: Option<&'s [u8]>,
        pub passthrough_reg: Option<&'s [u8]>,
        pub passthrough_spis: Option<&'s [u8]>,
        pub shmem: Option<&'s [u8]>,
        pub shmem_rules: Option<&'s [u8]>,
    }

    impl Default for VmSpec<'_> {
        fn default() -> Self {
            Self {
                name: b"alpha",
                ram_base: 0x4000_0000,
                ram_size: 0x400_0000,
                cpus: &[1],
                load_offset: 0x8_0000,
                start_delay: None,
                passthrough_reg: None,
                passthrough_spis: None,
                shmem: None,
                shmem_rules: None,
            }
        }
    }

    /// A manifest with every root property given as raw bytes.
    pub fn raw_manifest(board: &[u8], gic_version: &[u8], vms: &[VmSpec<'_>]) -> Vec<u8> {
        let mut writer = FdtWriter::new().unwrap();
        let root = writer.begin_node("").unwrap();
        writer
            .property_string("compatible", "tessera,system")
            .unwrap();
        writer.property_u32("tessera,format-version", 1).unwrap();
        writer.property("board", board).unwrap();
        writer.property("gic-version", gic_version).unwrap();
        let vms_node = writer.begin_node("vms").unwrap();
        for (index, vm) in vms.iter().enumerate() {
            let node = writer.begin_node(&format!("vm@{index}")).unwrap();
            let mut name = vm.name.to_vec();
            name.push(0);
            writer.property("name", &name).unwrap();
            writer.property_u64("ram-base", vm.ram_base).unwrap();
            writer.property_u64("ram-size", vm.ram_size).unwrap();
            writer.property_array_u32("cpus", vm.cpus).unwrap();
            writer.property_string("image", "vm/a/image").unwrap();
            writer
                .property_u64("image-load-offset", vm.load_offset)
                .unwrap();
            writer
                .property_string("device-tree", "vm/a/guest.dtb")
                .unwrap();
            if let Some(delay) = vm.start_delay {
                writer.property("start-delay-us", delay).unwrap();
            }
            if let Some(reg) = vm.passthrough_reg {
                writer.property("passthrough-reg", reg).unwrap();
            }
            if let Some(spis) = vm.passthrough_spis {
                writer.property("passthrough-spis", spis).unwrap();
            }
            if let Some(shmem) = vm.shmem {
                writer.property("vdev-shmem", shmem).unwrap();
            }
            if let Some(rules) = vm.shmem_rules {
                writer.property("vdev-shmem-rules", rules).unwrap();
            }
            writer.end_node(node).unwrap();
        }
        writer.end_node(vms_node).unwrap();
        writer.end_node(root).unwrap();
        writer.finish().unwrap()
    }

    fn refusal(board: &[u8], gic_version: &[u8], vms: &[VmSpec<'_>]) -> String {
        let blob = raw_manifest(board, gic_version, vms);
        parse(&blob).unwrap_err().to_string()
    }

    const VIRT: &[u8] = b"qemu-virt\0";
    const GIC3: &[u8] = &[0, 0, 0, 3];

    #[test]
    fn every_system_rule_is_applied_with_a_message_naming_the_field() {
        let good = raw_manifest(VIRT, GIC3, &[VmSpec::default()]);
        assert!(parse(&good).is_ok());
        let vm = |spec: VmSpec<'static>| refusal(VIRT, GIC3, &[spec]);
        let rebuild = "; rebuild the package with `tessera package`";
        let cases = [
            (
                refusal(VIRT, GIC3, &[]),
                "tessera/manifest.dtb: field vms: 0: a system with no VMs; it needs at least one",
            ),
            (
                vm(VmSpec {
                    ram_size: 0x10_0000,
                    ..VmSpec::default()
                }),
                "tessera/manifest.dtb: vm[0] \"alpha\": field ram-size: 0x10_0000 is not a multiple of 2 MiB",
            ),
            (
                vm(VmSpec {
                    ram_size: 0x30_0000,
                    ..VmSpec::default()
                }),
                "tessera/manifest.dtb: vm[0] \"alpha\": field ram-size: 0x30_0000 is not a multiple of 2 MiB",
            ),
            (
                vm(VmSpec {
                    ram_size: 0,
                    ..VmSpec::default()
                }),
                "tessera/manifest.dtb: vm[0] \"alpha\": field ram-size: 0x0 is zero; a VM needs at least 2 MiB",
            ),
            (
                vm(VmSpec {
                    ram_base: 0x4010_0000,
                    ..VmSpec::default()
                }),
                "tessera/manifest.dtb: vm[0] \"alpha\": field ram-base: 0x4010_0000 is not 2 MiB aligned",
            ),
            (
                vm(VmSpec {
                    ram_base: 0x0800_0000,
                    ..VmSpec::default()
                }),
                "tessera/manifest.dtb: vm[0] \"alpha\": field ram-base: 0x800_0000: guest RAM \
                 0x0800_0000..0x0c00_0000 overlaps the device window 0x0800_0000..0x0a00_0000 (GIC, UART)",
            ),
            (
                vm(VmSpec {
                    ram_base: 0x80_0000_0000,
                    ..VmSpec::default()
                }),
                "tessera/manifest.dtb: vm[0] \"alpha\": field ram-base: 0x80_0000_0000: guest RAM \
                 0x80_0000_0000..0x80_0400_0000 ends past the 39-bit guest-physical space (0x80_0000_0000)",
            ),
            (
                vm(VmSpec {
                    ram_base: 0xffff_ffff_ffe0_0000,
                    ..VmSpec::default()
                }),
                "tessera/manifest.dtb: vm[0] \"alpha\": field ram-base: 0xffff_ffff_ffe0_0000: guest RAM \
                 of 64M at 0xffff_ffff_ffe0_0000 ends past 2^64, so past the 39-bit guest-physical \
                 space (0x80_0000_0000)",
            ),
            (
                vm(VmSpec {
                    name: b"",
                    ..VmSpec::default()
                }),
                "tessera/manifest.dtb: vm[0] \"\": field name: \"\" is not a VM name (1 to 15 of a-z, \
                 0-9 and -, starting with a letter)",
            ),
            (
                vm(VmSpec {
                    name: b"a\x1b[2K\ntessera: OK",
                    ..VmSpec::default()
                }),
                "tessera/manifest.dtb: vm[0] \"a\\x1b[2K\\x0atessera: OK\": field name: \
                 \"a\\x1b[2K\\x0atessera: OK\" is not a VM name (1 to 15 of a-z, 0-9 and -, starting \
                 with a letter)",
            ),
            (
                vm(VmSpec {
                    cpus: &[],
                    ..VmSpec::default()
                }),
                "tessera/manifest.dtb: vm[0] \"alpha\": field cpus: 0: empty; a VM needs at least one CPU",
            ),
            (
                vm(VmSpec {
                    cpus: &[0, 1, 2, 3, 4, 5, 6, 7, 0],
                    ..VmSpec::default()
                }),
                "tessera/manifest.dtb: vm[0] \"alpha\": field cpus: 9: 9 CPUs, more than the 8 a VM may have",
            ),
            (
                refusal(
                    VIRT,
                    GIC3,
                    &[
                        VmSpec::default(),
                        VmSpec {
                            cpus: &[2],
                            ..VmSpec::default()
                        },
                    ],
                ),
                "tessera/manifest.dtb: vm[1] \"alpha\": field name: \"alpha\" is also the name of vm[0]",
            ),
            (
                vm(VmSpec {
                    load_offset: 0x400_0000,
                    ..VmSpec::default()
                }),
                "tessera/manifest.dtb: vm[0] \"alpha\": field image-load-offset: 0x400_0000: the \
                 image, loaded at 0x4400_0000, ends at 0x4400_0000, past the device tree at \
                 0x43ff_0000 (the last 64 KiB of the VM's RAM)",
            ),
            (
                vm(VmSpec {
                    load_offset: u64::MAX,
                    ..VmSpec::default()
                }),
                "tessera/manifest.dtb: vm[0] \"alpha\": field image-load-offset: \
                 0xffff_ffff_ffff_ffff: an image of 0 bytes at load offset 0xffff_ffff_ffff_ffff \
                 would end past 2^64",
            ),
            (
                refusal(b"pi5\0", GIC3, &[VmSpec::default()]),
                "tessera/manifest.dtb: field board: \"pi5\" is not a board Tessera knows (expected one \
                 of: qemu-virt, rpi4)",
            ),
            (
                refusal(b"rpi4\0", GIC3, &[VmSpec::default()]),
                "tessera/manifest.dtb: field gic-version: 3: rpi4 supports GIC version 2 only, not 3",
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(message, format!("{expected}{rebuild}"));
        }
        let names: Vec<VmSpec<'_>> = (0..9u32)
            .map(|cpu| VmSpec {
                cpus: &[0],
                name: [b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"i"][cpu as usize],
                ..VmSpec::default()
            })
            .collect();
        assert_eq!(
            refusal(VIRT, GIC3, &names),
            format!(
                "tessera/manifest.dtb: field vms: 9: 9 VMs, more than the 8 a system may have \
                 (one per CPU){rebuild}"
            )
        );
    }

    #[test]
    fn the_package_must_hold_each_file_and_the_image_must_fit() {
        use tessera_package::test_support::archive;
        let blob = raw_manifest(
            VIRT,
            GIC3,
            &[VmSpec {
                ram_size: 0x20_0000,
                ..VmSpec::default()
            }],
        );
        let system = parse(&blob).unwrap();
        let fits = vec![0u8; 0x20_0000 - 0x1_0000 - 0x8_0000];
        let bytes = archive(&[("vm/a/image", &fits), ("vm/a/guest.dtb", b"d")]);
        let package = Archive::parse(&bytes).unwrap();
        assert_eq!(system.check_package(&package), Ok(()));

        let too_big = vec![0u8; fits.len() + 1];
        let bytes = archive(&[("vm/a/image", &too_big), ("vm/a/guest.dtb", b"d")]);
        let package = Archive::parse(&bytes).unwrap();
        assert_eq!(
            system.check_package(&package).unwrap_err().to_string(),
            "tessera/manifest.dtb: vm[0] \"alpha\": field image-load-offset: 0x8_0000: the image, \
             loaded at 0x4008_0000, ends at 0x401f_0001, past the device tree at 0x401f_0000 (the \
             last 64 KiB of the VM's RAM); rebuild the package with `tessera package`"
        );

        let bytes = archive(&[("vm/a/image", b"i")]);
        let package = Archive::parse(&bytes).unwrap();
        assert_eq!(
            system.check_package(&package).unwrap_err().to_string(),
            "tessera/manifest.dtb: vm[0] \"alpha\": the package has no entry \"vm/a/guest.dtb\"; \
             rebuild the package with `tessera package`"
        );
    }

    #[test]
    fn fields_are_read_strictly() {
        let vms = [VmSpec::default()];
        let rebuild = "; rebuild the package with `tessera package`";
        // A gic-version of two cells, the last being the right one.
        assert_eq!(
            refusal(VIRT, &[0, 0, 0, 7, 0, 0, 0, 3], &vms),
            format!(
                "tessera/manifest.dtb: field gic-version: \"\\x00\\x00\\x00\\x07\\x00\\x00\\x00\\x03\" \
                 (8 bytes) is not a value of its type{rebuild}"
            )
        );
        assert!(parse(&raw_manifest(VIRT, &[0, 0, 3], &vms)).is_err());
        // A board string with a NUL inside, or none at its end.
        assert_eq!(
            refusal(b"rpi4\0qemu-virt\0", GIC3, &vms),
            format!(
                "tessera/manifest.dtb: field board: \"rpi4\\x00qemu-virt\\x00\" (15 bytes) is not a \
                 value of its type{rebuild}"
            )
        );
        assert!(parse(&raw_manifest(b"qemu-virt", GIC3, &vms)).is_err());
        let name = [VmSpec {
            name: b"al\0pha",
            ..VmSpec::default()
        }];
        assert!(matches!(
            parse(&raw_manifest(VIRT, GIC3, &name)),
            Err(ManifestError::Malformed {
                vm: Some(VmRef {
                    index: 0,
                    name: None
                }),
                property: "name",
                ..
            })
        ));
    }

    #[test]
    fn reads_start_delays_strictly() {
        let twenty_ms = 20_000u64.to_be_bytes();
        let longest = rules::MAX_START_DELAY_US.to_be_bytes();
        let blob = raw_manifest(
            VIRT,
            GIC3,
            &[
                VmSpec::default(),
                VmSpec {
                    name: b"beta",
                    cpus: &[2],
                    start_delay: Some(&twenty_ms),
                    ..VmSpec::default()
                },
                VmSpec {
                    name: b"gamma",
                    cpus: &[3],
                    start_delay: Some(&longest),
                    ..VmSpec::default()
                },
            ],
        );
        let system = parse(&blob).unwrap();
        let delays: Vec<u64> = system.vms().map(|vm| vm.start_delay_us).collect();
        assert_eq!(
            delays,
            [0, 20_000, rules::MAX_START_DELAY_US],
            "absent is 0"
        );

        let rebuild = "; rebuild the package with `tessera package`";
        let with_delay = |delay: &[u8]| {
            refusal(
                VIRT,
                GIC3,
                &[VmSpec {
                    start_delay: Some(delay),
                    ..VmSpec::default()
                }],
            )
        };
        // A u64 is two cells, no more and no fewer.
        assert_eq!(
            with_delay(&[0, 0, 0x4e, 0x20]),
            format!(
                "tessera/manifest.dtb: vm[0] \"alpha\": field start-delay-us: \"\\x00\\x00N \" \
                 (4 bytes) is not a value of its type{rebuild}"
            )
        );
        assert!(with_delay(&[0; 12]).contains("field start-delay-us: "));
        assert!(with_delay(&[]).contains("(0 bytes) is not a value of its type"));
        // Past the rule's minute.
        assert_eq!(
            with_delay(&(rules::MAX_START_DELAY_US + 1).to_be_bytes()),
            format!(
                "tessera/manifest.dtb: vm[0] \"alpha\": field start-delay-us: 60000001 is longer \
                 than the 60 s a VM's start may be delayed{rebuild}"
            )
        );
        assert!(with_delay(&u64::MAX.to_be_bytes()).contains("is longer than the 60 s"));
    }

    /// `passthrough-reg` cells for `(base, size)` pairs.
    fn reg(ranges: &[(u64, u64)]) -> Vec<u8> {
        ranges
            .iter()
            .flat_map(|&(base, size)| [base.to_be_bytes(), size.to_be_bytes()])
            .flatten()
            .collect()
    }

    fn spis(spis: &[u32]) -> Vec<u8> {
        spis.iter().flat_map(|spi| spi.to_be_bytes()).collect()
    }

    #[test]
    fn reads_passthrough_devices() {
        let rtc = reg(&[(0x0901_0000, 0x1000), (0x0903_0000, 0x1000)]);
        let irqs = spis(&[2, 7]);
        let blob = raw_manifest(
            VIRT,
            GIC3,
            &[
                VmSpec {
                    passthrough_reg: Some(&rtc),
                    passthrough_spis: Some(&irqs),
                    ..VmSpec::default()
                },
                VmSpec {
                    name: b"beta",
                    cpus: &[2],
                    ..VmSpec::default()
                },
            ],
        );
        let system = parse(&blob).unwrap();
        let vms: Vec<_> = system.vms().collect();
        assert_eq!(
            vms[0].passthrough_ranges().collect::<Vec<_>>(),
            [(0x0901_0000, 0x1000), (0x0903_0000, 0x1000)]
        );
        assert_eq!(vms[0].passthrough_spis().collect::<Vec<_>>(), [2, 7]);
        let set = vms[0].passthrough_spi_set();
        assert!(set.contains(34) && set.contains(39));
        assert!(!set.contains(33) && !set.contains(2) && !set.contains(7));
        assert_eq!(vms[1].passthrough_spi_set(), SpiSet::EMPTY);
        assert_eq!(vms[1].passthrough_ranges().len(), 0);
        assert_eq!(vms[1].passthrough_spis().len(), 0);
    }

    #[test]
    fn passthrough_devices_obey_the_rules_at_boot_too() {
        let rebuild = "; rebuild the package with `tessera package`";
        let one = |range: &[(u64, u64)], irqs: &[u32]| {
            let (range, irqs) = (reg(range), spis(irqs));
            refusal(
                VIRT,
                GIC3,
                &[VmSpec {
                    passthrough_reg: Some(&range),
                    passthrough_spis: Some(&irqs),
                    ..VmSpec::default()
                }],
            )
        };
        let cases = [
            (
                one(&[(0x0900_0000, 0x1000)], &[]),
                "field passthrough-reg: 0x900_0000: the range 0x0900_0000..0x0900_1000 overlaps \
                 the console UART at 0x0900_0000..0x0900_1000, which the hypervisor keeps for itself",
            ),
            (
                one(&[(0x0808_0000, 0x2_0000)], &[]),
                "field passthrough-reg: 0x808_0000: the range 0x0808_0000..0x080a_0000 overlaps \
                 the GIC at 0x0800_0000..0x0900_0000, which the hypervisor keeps for itself",
            ),
            (
                one(&[(0x0A00_0000, 0x1000)], &[]),
                "field passthrough-reg: 0xa00_0000: the range 0x0a00_0000..0x0a00_1000 is outside \
                 qemu-virt's device space (0x0800_0000..0x0a00_0000)",
            ),
            (
                one(&[(0x0901_0010, 0x1000)], &[]),
                "field passthrough-reg: 0x901_0010: the range 0x0901_0010 of 0x1000 is not in \
                 whole 4 KiB pages (base and size must be multiples of 0x1000)",
            ),
            (
                one(&[(0x0901_0000, 0x1000), (0x0901_0000, 0x1000)], &[]),
                "field passthrough-reg: 0x901_0000: overlaps the range 0x0901_0000..0x0901_1000, \
                 already given to vm[0]",
            ),
            (
                one(&[], &[1]),
                "field passthrough-spis: 1: SPI 1 (INTID 33) is the interrupt of the console UART",
            ),
            (
                one(&[], &[224]),
                "field passthrough-spis: 224: SPI 224 is not an SPI the virtual GIC has (SPIs 0 to \
                 223, INTIDs 32 to 255)",
            ),
            (
                one(&[], &[2, 2]),
                "field passthrough-spis: 2: SPI 2 is listed twice",
            ),
            (
                one(&[], &[2, 3, 4, 5, 6, 7, 8, 9, 10]),
                "field passthrough-spis: 9: 9 passthrough SPIs, more than the 8 a VM may have",
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(
                message,
                format!("tessera/manifest.dtb: vm[0] \"alpha\": {expected}{rebuild}")
            );
        }
        // The same device for two VMs.
        let (rtc, irq) = (reg(&[(0x0901_0000, 0x1000)]), spis(&[2]));
        let twice = refusal(
            VIRT,
            GIC3,
            &[
                VmSpec {
                    passthrough_reg: Some(&rtc),
                    passthrough_spis: Some(&irq),
                    ..VmSpec::default()
                },
                VmSpec {
                    name: b"beta",
                    cpus: &[2],
                    passthrough_spis: Some(&irq),
                    ..VmSpec::default()
                },
            ],
        );
        assert_eq!(
            twice,
            format!(
                "tessera/manifest.dtb: vm[1] \"beta\": field passthrough-spis: 2: SPI 2 is already \
                 given to vm[0]{rebuild}"
            )
        );
        // On the Pi the device space is where a VM's RAM may be too: a
        // device at its own address cannot also be RAM.
        let gpio = reg(&[(0xFE20_0000, 0x1000)]);
        let clash = refusal(
            b"rpi4\0",
            &[0, 0, 0, 2],
            &[VmSpec {
                ram_base: 0xFC00_0000,
                passthrough_reg: Some(&gpio),
                ..VmSpec::default()
            }],
        );
        assert_eq!(
            clash,
            format!(
                "tessera/manifest.dtb: vm[0] \"alpha\": field passthrough-reg: 0xfe20_0000: the \
                 range at 0xfe20_0000 overlaps the VM's RAM 0xfc00_0000..0x1_0000_0000; \
                 a passthrough device appears at its own address{rebuild}"
            )
        );
        // Malformed: not whole entries.
        let ragged = [0u8; 12];
        let blob = raw_manifest(
            VIRT,
            GIC3,
            &[VmSpec {
                passthrough_reg: Some(&ragged),
                ..VmSpec::default()
            }],
        );
        assert!(matches!(
            parse(&blob),
            Err(ManifestError::Malformed {
                property: "passthrough-reg",
                ..
            })
        ));
        let blob = raw_manifest(
            VIRT,
            GIC3,
            &[VmSpec {
                passthrough_spis: Some(&[0, 0, 2]),
                ..VmSpec::default()
            }],
        );
        assert!(matches!(
            parse(&blob),
            Err(ManifestError::Malformed {
                property: "passthrough-spis",
                ..
            })
        ));
    }

    #[test]
    fn refuses_what_is_not_a_manifest() {
        assert_eq!(
            parse(b"not a tree").unwrap_err(),
            ManifestError::NotAManifest
        );
        let mut writer = FdtWriter::new().unwrap();
        let root = writer.begin_node("").unwrap();
        writer
            .property_string("compatible", "linux,dummy-virt")
            .unwrap();
        writer.end_node(root).unwrap();
        let blob = writer.finish().unwrap();
        assert_eq!(parse(&blob).unwrap_err(), ManifestError::NotAManifest);
        assert_eq!(
            ManifestError::NotAManifest.to_string(),
            "tessera/manifest.dtb: not a device tree with compatible \"tessera,system\"; \
             rebuild the package with `tessera package`"
        );
    }

    /// `vdev-shmem` cells for `(loc, window-base, window-size, intid)`.
    fn shmem(devices: &[(u64, u64, u64, u32)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for &(loc, base, size, intid) in devices {
            for value in [loc, base, size] {
                bytes.extend(value.to_be_bytes());
            }
            bytes.extend(intid.to_be_bytes());
        }
        bytes
    }

    /// A manifest of one VM with `devices` and `rules`, and root `extra`
    /// properties.
    fn shmem_manifest(devices: &[u8], rules: Option<&[u8]>, extra: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = FdtWriter::new().unwrap();
        let root = writer.begin_node("").unwrap();
        writer
            .property_string("compatible", "tessera,system")
            .unwrap();
        writer.property_u32("tessera,format-version", 1).unwrap();
        writer.property("board", VIRT).unwrap();
        writer.property("gic-version", GIC3).unwrap();
        for (name, value) in extra {
            writer.property(name, value).unwrap();
        }
        let vms = writer.begin_node("vms").unwrap();
        let node = writer.begin_node("vm@0").unwrap();
        writer.property_string("name", "alpha").unwrap();
        writer.property_u64("ram-base", 0x4000_0000).unwrap();
        writer.property_u64("ram-size", 0x400_0000).unwrap();
        writer.property_array_u32("cpus", &[1]).unwrap();
        writer.property_string("image", "vm/a/image").unwrap();
        writer.property_u64("image-load-offset", 0x8_0000).unwrap();
        writer
            .property_string("device-tree", "vm/a/guest.dtb")
            .unwrap();
        if !devices.is_empty() {
            writer.property("vdev-shmem", devices).unwrap();
        }
        if let Some(rules) = rules {
            writer.property("vdev-shmem-rules", rules).unwrap();
        }
        writer.end_node(node).unwrap();
        writer.end_node(vms).unwrap();
        writer.end_node(root).unwrap();
        writer.finish().unwrap()
    }

    #[test]
    fn reads_vdev_shmem_instances_rules_and_boot_regions() {
        let devices = shmem(&[
            (0x1_0000_0000, 0x1_0001_0000, 0x10_0000, 40),
            (0x1_0020_0000, 0x1_0030_0000, 0x4000, 41),
        ]);
        let blob = shmem_manifest(
            &devices,
            Some(b"0 deny ping-secret\x000 allow ping*\x001 allow log\x00"),
            &[
                ("shmem-page-limit", &256u64.to_be_bytes()),
                ("shmem-regions", b"log\x00ping\x00"),
                ("shmem-region-pages", &[0, 0, 0, 16, 0, 0, 0, 1]),
            ],
        );
        let system = parse(&blob).unwrap();
        let vm = system.vms().next().unwrap();
        assert_eq!(
            vm.shmem_devices().collect::<Vec<_>>(),
            [
                ShmemEntry {
                    loc: 0x1_0000_0000,
                    window_base: 0x1_0001_0000,
                    window_size: 0x10_0000,
                    intid: 40
                },
                ShmemEntry {
                    loc: 0x1_0020_0000,
                    window_base: 0x1_0030_0000,
                    window_size: 0x4000,
                    intid: 41
                }
            ]
        );
        let rules: Vec<_> = vm
            .shmem_rules()
            .map(|rule| (rule.instance, rule.allow, rule.pattern))
            .collect();
        assert_eq!(
            rules,
            [
                (0, false, &b"ping-secret"[..]),
                (0, true, &b"ping*"[..]),
                (1, true, &b"log"[..])
            ]
        );
        assert_eq!(system.shmem_page_limit, 256);
        let regions: Vec<_> = system.shmem_regions().collect();
        assert_eq!(regions, [(&b"log"[..], 16), (&b"ping"[..], 1)]);
        // Without shared memory: the default limit, no regions.
        let plain = raw_manifest(VIRT, GIC3, &[VmSpec::default()]);
        let system = parse(&plain).unwrap();
        assert_eq!(system.shmem_page_limit, rules::DEFAULT_SHMEM_LIMIT_PAGES);
        assert_eq!(system.shmem_regions().count(), 0);
        assert_eq!(system.vms().next().unwrap().shmem_devices().len(), 0);
    }

    #[test]
    fn vdev_shmem_obeys_the_rules_at_boot_too() {
        let rebuild = "; rebuild the package with `tessera package`";
        let at = "tessera/manifest.dtb: vm[0] \"alpha\": field";
        let one = |devices: &[(u64, u64, u64, u32)], rules: Option<&[u8]>| {
            parse(&shmem_manifest(&shmem(devices), rules, &[]))
                .unwrap_err()
                .to_string()
        };
        let good = (0x1_0000_0000, 0x1_0001_0000, 0x10_0000, 40);
        let cases = [
            (
                one(&[(0x4000_0000, 0x1_0001_0000, 0x1000, 40)], None),
                format!(
                    "{at} vdev-shmem: 0x4000_0000: 0x4000_0000 overlaps the VM's RAM \
                     0x4000_0000..0x4400_0000{rebuild}"
                ),
            ),
            (
                one(&[(0x1_0000_0800, 0x1_0001_0000, 0x1000, 40)], None),
                format!(
                    "{at} vdev-shmem: 0x1_0000_0800: 0x1_0000_0800 of 0x1000 bytes is not whole \
                     4 KiB pages (base and size multiples of 4 KiB){rebuild}"
                ),
            ),
            (
                one(&[(0x1_0000_0000, 0x1_0000_0000, 0x2000, 40)], None),
                format!(
                    "{at} vdev-shmem: 0x1_0000_0000: overlaps a vdev-shmem factory page of this \
                     VM at 0x1_0000_0000..0x1_0000_1000{rebuild}"
                ),
            ),
            (
                one(&[(0x1_0000_0000, 0x1_0001_0000, 0x1000, 33)], None),
                format!(
                    "{at} vdev-shmem: 33: SPI 1 (INTID 33) is the interrupt of the guest's \
                     virtual UART{rebuild}"
                ),
            ),
            (
                one(&[good, (0x1_0020_0000, 0x1_0030_0000, 0x1000, 40)], None),
                format!(
                    "{at} vdev-shmem: 40: INTID 40 is already used by this VM (another \
                     vdev-shmem instance or a passthrough SPI){rebuild}"
                ),
            ),
            (
                one(&[good], Some(b"0 allow a b\x00")),
                format!(
                    "{at} vdev-shmem-rules: \"0 allow a b\" byte 1 is not printable ASCII \
                     without space (0x21 to 0x7e), so no name can hold it{rebuild}"
                ),
            ),
            (
                one(&[good], Some(b"1 allow a\x00")),
                format!(
                    "{at} vdev-shmem-rules: \"1 allow a\\x00\" (10 bytes) is not a value of \
                     its type{rebuild}"
                ),
            ),
            (
                one(&[good], Some(b"0 permit a\x00")),
                format!(
                    "{at} vdev-shmem-rules: \"0 permit a\\x00\" (11 bytes) is not a value of \
                     its type{rebuild}"
                ),
            ),
        ];
        for (got, expected) in cases {
            assert_eq!(got, expected);
        }
        let regions = |names: &[u8], pages: &[u8], limit: u64| {
            parse(&shmem_manifest(
                &shmem(&[good]),
                None,
                &[
                    ("shmem-page-limit", &limit.to_be_bytes()),
                    ("shmem-regions", names),
                    ("shmem-region-pages", pages),
                ],
            ))
            .map(|_| ())
            .map_err(|error| error.to_string())
        };
        assert_eq!(regions(b"a\x00", &[0, 0, 0, 2], 2), Ok(()));
        assert_eq!(
            regions(b"a\x00b\x00", &[0, 0, 0, 2, 0, 0, 0, 1], 2),
            Err(format!(
                "tessera/manifest.dtb: field shmem-region-pages: 1: the boot regions take 3 pages \
                 (12K), more than the limit of 2 pages (8K){rebuild}"
            ))
        );
        assert_eq!(
            regions(b"a\x00a\x00", &[0, 0, 0, 1, 0, 0, 0, 1], 2),
            Err(format!(
                "tessera/manifest.dtb: field shmem-regions: \"a\" names a boot region already \
                 declared{rebuild}"
            ))
        );
        assert!(regions(b"a\x00", &[0, 0, 0, 1, 0, 0, 0, 1], 2).is_err());
        assert!(regions(b"a\x00", &[0, 0, 0, 0], 2).is_err());
    }
}
