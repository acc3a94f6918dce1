//! vdev-shmem: named shared-memory regions with selective signalling, as a
//! pure state machine.
//!
//! The guest ABI is `shared/design/vdev-shmem-abi.md` (normative; the QNX
//! `qvm/guest_shm.h` layout); the choices it leaves open are listed in
//! `docs/vdev-shmem.md`. This module is the whole device apart from
//! trapping and decoding accesses.
//!
//! # Shape
//!
//! One [`Shmem`] serves the whole system: the region registry is
//! system-wide (a region connects VMs), so the factory and control pages of
//! every VM are answered by the same value, under one lock in the
//! hypervisor. It holds, in fixed-capacity arrays (no heap anywhere):
//!
//! - the **devices** ([`MAX_DEVICES`]): one per configured instance, each
//!   with its VM, factory page (`loc`), vector (`intr`), mapping window and
//!   allow/deny rules, the factory registers, and the connections made
//!   through it ([`MAX_DEVICE_CONNECTIONS`]), each with its place in the
//!   window;
//! - the **regions** ([`MAX_REGIONS`]): name, size, host pages, which of the
//!   16 indices are attached and by which connection, and counters.
//!
//! # What the hypervisor calls
//!
//! - at boot: [`Shmem::new`] (or [`Shmem::set_page_limit`] on a `static`
//!   made with `Shmem::new(0)`) with the page limit, [`Shmem::add_device`] for
//!   each configured instance, [`Shmem::add_boot_region`] for each region of
//!   the system config;
//! - on a trapped access: [`Shmem::route`] to find the device and page
//!   ([`Area`]) an address belongs to, then [`Shmem::read`] or
//!   [`Shmem::write`] with the decoded access. An `Err` is answered with
//!   the external abort the ABI names;
//! - when a VM stops, crashes or resets: [`Shmem::detach_vm`];
//! - at power-off: [`Shmem::regions`] for the report.
//!
//! Every call that may change a mapping or a line takes the core's
//! services as one [`ShmemServices`] value: the acting VM's stage 2
//! ([`GuestPages`]), host pages for region data ([`HostPages`]), every
//! VM's lines ([`VmLines`]) and the barrier before a signal. The acting
//! VM is always the one whose pages are mapped or unmapped: a connection is
//! only ever mapped into, and unmapped from, the VM that made it.
//!
//! # Accesses
//!
//! Both pages take loads and stores of 1, 2, 4 or 8 bytes at any offset,
//! as long as they stay inside the page (an access that does not is
//! refused: [`AccessRefused::CrossesPage`]). An access is split into one
//! piece per field it covers, handled in ascending address order; bytes
//! outside every field read as 0 and ignore writes. Command fields act
//! only on a write that covers all four bytes; read-only fields ignore
//! writes; `find` and `detach` read as 0.
//!
//! # Signalling
//!
//! Each connection keeps an unread mask: bits 0..15 are the indices that
//! notified it, bits 16..31 the indices whose attachment changed, since
//! the status bytes holding those bits were last read. A status read
//! returns the sender bits and the *current* attached set, and clears the
//! unread bits of the bytes it returned (a 32-bit read clears all). A
//! device's vector is asserted while any of its connections has an unread
//! bit, so no signal is lost and several may share one interrupt.
//!
//! # Lifetime
//!
//! A request for a missing name creates the region: host pages are taken
//! and zeroed ([`HostPages`]) before the first connection maps them, so a
//! region always starts as zero, whoever had its pages before. When the
//! last connection of a guest-made region detaches, its pages go back and
//! its slot is *retired*: it keeps the name and counters for the report,
//! and a later create of the same name continues them. Boot regions are
//! created (and zeroed) at boot and never freed; their data outlives every
//! connection. A VM that stops, crashes or resets ([`Shmem::detach_vm`])
//! detaches each of its connections exactly as a guest detach would.

mod names;

use names::Rules;
pub use names::{
    MAX_NAME_BYTES, MAX_PATTERN_BYTES, MAX_RULES, NAME_FIELD_BYTES, Name, Pattern, PatternError,
    Rule, RuleKind,
};

use crate::interrupt::VmLines;
use crate::mmio::AccessWidth;
use crate::services::{GuestPages, HostPages, PageAccess, PagesRefused, VmIndex};

/// The factory page's signature: "QVMG2GSM" read as a little-endian u64.
pub const SIGNATURE: u64 = 0x4d53_4732_474d_5651;

/// The size of a factory page, a control page and a data page.
pub const PAGE_SIZE: u64 = 0x1000;

/// How many connections one region may have (the index is 0..15).
pub const MAX_CONNECTIONS: usize = 16;

/// How many regions the registry holds at once, live and retired (a
/// retired slot keeps a freed region's name and counters for the report
/// until a new name needs the slot).
pub const MAX_REGIONS: usize = 32;

/// How many device instances the system may have, over all VMs.
pub const MAX_DEVICES: usize = 16;

/// How many connections may be made through one device instance at once
/// (its window's bookkeeping). Enough for a guest to take all 16 indices
/// of one region and more.
pub const MAX_DEVICE_CONNECTIONS: usize = 32;

/// A notify value that signals every attached peer but the writer.
pub const NOTIFY_ALL_BUT_ME: u32 = 0xffff_ffff;

/// Factory page field offsets.
pub mod factory {
    pub const SIGNATURE: u64 = 0x00;
    pub const SHMEM: u64 = 0x08;
    pub const VECTOR: u64 = 0x10;
    pub const STATUS: u64 = 0x14;
    pub const SIZE: u64 = 0x18;
    pub const NAME: u64 = 0x1C;
    pub const FIND: u64 = 0x3C;
}

/// Control page field offsets.
pub mod control {
    pub const STATUS: u64 = 0x0;
    pub const INDEX: u64 = 0x4;
    pub const NOTIFY: u64 = 0x8;
    pub const DETACH: u64 = 0xC;
}

/// The factory's `status` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    UnknownFailure = 1,
    NoMemory = 2,
    ClientMax = 3,
    IllegalName = 4,
    NoPermission = 5,
    DoesNotExist = 6,
}

/// A device instance, as [`Shmem::add_device`] numbered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceId(u8);

impl DeviceId {
    #[must_use]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// Which of a device's two trapped address ranges an access is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// The factory page at `loc`.
    Factory,
    /// The mapping window: control pages of live connections answer; the
    /// rest of it is nothing (data pages are mapped, so their accesses do
    /// not trap while the connection lives).
    Window,
}

/// Why an access was not served; the hypervisor answers it with a
/// synchronous external abort, as for an address with nothing behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessRefused {
    /// The access runs past the end of its page.
    CrossesPage,
    /// Nothing is there: a window address that is no live connection's
    /// control page (a detached connection's old pages, a gap), or an
    /// offset outside the area.
    NothingThere,
}

/// One configured device instance (vdev-shmem-abi.md, "Configuration").
#[derive(Clone, Copy, Debug)]
pub struct DeviceConfig<'a> {
    pub vm: VmIndex,
    /// `loc`: guest-physical address of the factory page.
    pub factory: u64,
    /// `intr`: the SPI raised for this instance's connections.
    pub intid: u32,
    /// `window`: guest-physical base and size in bytes.
    pub window_base: u64,
    pub window_size: u64,
    /// `allow` and `deny`, in the order written.
    pub rules: &'a [Rule],
}

/// Why a device or boot region from the configuration was refused. The
/// host tool checks the same things; the hypervisor re-checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// More than [`MAX_DEVICES`] instances.
    TooManyDevices,
    /// More than [`MAX_RULES`] rules.
    TooManyRules,
    /// `loc` is not page aligned, or its page wraps.
    FactoryMisaligned,
    /// The window's base or size is not page aligned, it is empty, or it
    /// wraps.
    BadWindow,
    /// `intr` is not an SPI (32..=1019).
    NotAnSpi,
    /// The factory page or window overlaps another of the same VM's.
    Overlap,
    /// Another instance of the same VM uses the same `intr`.
    SharedInterrupt,
    /// A boot region's name is not a legal name.
    IllegalName,
    /// Two boot regions have the same name.
    DuplicateName,
    /// A boot region of 0 pages, or of more than a u32 count of pages.
    BadSize,
    /// The boot regions together exceed the page limit.
    OverLimit,
    /// More than [`MAX_REGIONS`] boot regions.
    TooManyRegions,
    /// No host memory for a boot region. The last case: `DESCRIPTIONS`
    /// is held to the count through it.
    NoMemory,
}

impl ConfigError {
    /// The descriptions in declaration order, for
    /// [`nul_ended_entry`](tessera_arm_defs::text::nul_ended_entry).
    const DESCRIPTIONS: &'static str = concat!(
        "too many instances\0",
        "too many allow and deny rules\0",
        "factory page not page aligned, or wrapping\0",
        "window empty, not whole pages, or wrapping\0",
        "interrupt not an SPI (INTID 32 to 1019)\0",
        "overlaps another instance of the VM\0",
        "interrupt used by another instance of the VM\0",
        "illegal name\0",
        "name used by another boot region\0",
        "no pages, or too many\0",
        "over the page limit\0",
        "too many boot regions\0",
        "out of host memory\0",
    );
}

const _: () = assert!(tessera_arm_defs::text::holds_nul_ended_entries(
    ConfigError::DESCRIPTIONS,
    ConfigError::NoMemory as usize + 1
));

// Written out rather than derived `Debug`: the hypervisor's image then
// carries none of the `Debug` builders.
impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(tessera_arm_defs::text::nul_ended_entry(
            Self::DESCRIPTIONS,
            *self as usize,
        ))
    }
}

/// A region's counters, for the power-off report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionCounters {
    /// Connections made to the region (attaches that succeeded), over its
    /// whole life and every re-creation under the same name.
    pub connections: u64,
    /// Notify writes that acted (covered the whole field), whatever they
    /// reached.
    pub notifications_sent: u64,
    /// Signals delivered: one per target each acted notify reached, so a
    /// notify to two peers counts two.
    pub notifications_delivered: u64,
}

/// One region, as the power-off report shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionReport {
    pub name: Name,
    /// Size in pages (of the last incarnation, for a freed region).
    pub pages: u64,
    /// Declared in the system config (never freed).
    pub boot: bool,
    /// Still exists (false: freed after its last detach).
    pub live: bool,
    /// Indices attached now.
    pub attached: u16,
    pub counters: RegionCounters,
}

/// What the model asks of the hypervisor core; see the module docs.
pub trait ShmemServices: GuestPages + HostPages + VmLines {
    /// Called on a notify, before any peer is signalled: the sender's
    /// earlier stores to the region must be visible to every peer before
    /// a peer can see the signal (on the target: `dsb ish`). Real clients
    /// put only a compiler barrier before their notify store.
    fn order_before_signal(&mut self);
}

/// What a factory request asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    /// A write of N to `size`.
    CreateOrAttach(u32),
    /// A write to `find`.
    Find,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FactoryField {
    Signature,
    Shmem,
    Vector,
    Status,
    Size,
    Name,
    Find,
}

/// Start, length and field, in ascending order. Starts and lengths are
/// bytes (every field lies in the first 256 bytes of its page), so the
/// table takes 3 bytes a field in the image rather than 24.
const FACTORY_FIELDS: [(u8, u8, FactoryField); 7] = [
    (factory::SIGNATURE as u8, 8, FactoryField::Signature),
    (factory::SHMEM as u8, 8, FactoryField::Shmem),
    (factory::VECTOR as u8, 4, FactoryField::Vector),
    (factory::STATUS as u8, 4, FactoryField::Status),
    (factory::SIZE as u8, 4, FactoryField::Size),
    (
        factory::NAME as u8,
        NAME_FIELD_BYTES as u8,
        FactoryField::Name,
    ),
    (factory::FIND as u8, 4, FactoryField::Find),
];
const _: () =
    assert!(factory::FIND + 4 <= 0x100 && factory::NAME + NAME_FIELD_BYTES as u64 <= 0x100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ControlField {
    Status,
    Index,
    Notify,
    Detach,
}

/// As [`FACTORY_FIELDS`].
const CONTROL_FIELDS: [(u8, u8, ControlField); 4] = [
    (control::STATUS as u8, 4, ControlField::Status),
    (control::INDEX as u8, 4, ControlField::Index),
    (control::NOTIFY as u8, 4, ControlField::Notify),
    (control::DETACH as u8, 4, ControlField::Detach),
];
const _: () = assert!(control::DETACH + 4 <= 0x100);

/// The part of one field an access covers.
#[derive(Clone, Copy, Debug)]
struct Piece<F> {
    field: F,
    /// The first byte covered, from the field's start.
    first: u64,
    /// How many bytes are covered.
    count: u64,
    /// Where those bytes sit in the access's value, in bits.
    shift: u32,
}

impl<F> Piece<F> {
    /// Whether the piece is the whole of a 4-byte field (a command acts).
    const fn whole_word(&self) -> bool {
        self.first == 0 && self.count == 4
    }
}

/// The pieces of an access of `bytes` at `offset`, in ascending order.
fn pieces<F: Copy>(
    fields: &'static [(u8, u8, F)],
    offset: u64,
    bytes: u64,
) -> impl Iterator<Item = Piece<F>> {
    let end = offset + bytes;
    fields.iter().filter_map(move |&(start, length, field)| {
        let (start, length) = (u64::from(start), u64::from(length));
        let low = offset.max(start);
        let high = end.min(start + length);
        (low < high).then(|| Piece {
            field,
            first: low - start,
            count: high - low,
            shift: ((low - offset) * 8) as u32,
        })
    })
}

/// A mask of `count` bytes (at most 8) starting at byte `first` (below 8).
const fn byte_mask(first: u64, count: u64) -> u64 {
    let low = if count >= 8 {
        u64::MAX
    } else {
        (1 << (count * 8)) - 1
    };
    low << (first * 8)
}

/// Bytes `first..first + count` of `value`, moved down to byte 0.
const fn bytes_of(value: u64, first: u64, count: u64) -> u64 {
    (value & byte_mask(first, count)) >> (first * 8)
}

/// A connection, as the device it was made through keeps it.
#[derive(Clone, Copy, Debug)]
struct Connection {
    live: bool,
    /// The region's slot in the registry.
    region: u8,
    /// The connection's index in its region (0..15).
    index: u8,
    /// Where its control page is, in pages from the window's base; its
    /// data pages follow.
    first_page: u64,
    /// Its share of the window: the control page and the data pages.
    pages: u64,
    /// Bits 0..15: senders; bits 16..31: indices whose attachment changed;
    /// since last read (see the module docs).
    unread: u32,
    /// The targets the last acted notify reached (the notify read-back).
    delivered: u16,
}

impl Connection {
    const NONE: Self = Self {
        live: false,
        region: 0,
        index: 0,
        first_page: 0,
        pages: 0,
        unread: 0,
        delivered: 0,
    };
}

/// One configured device instance and its state.
#[derive(Clone, Copy, Debug)]
struct Device {
    vm: VmIndex,
    factory: u64,
    intid: u32,
    window_base: u64,
    window_pages: u64,
    rules: Rules,
    /// The factory's registers.
    shmem: u64,
    size: u32,
    status: Status,
    name: [u8; NAME_FIELD_BYTES],
    connections: [Connection; MAX_DEVICE_CONNECTIONS],
    /// How many live connections have unread bits; the vector is asserted
    /// while this is not 0.
    unread_connections: usize,
    /// The level last given to the vector.
    line_asserted: bool,
}

impl Device {
    const NONE: Self = Self {
        vm: VmIndex(0),
        factory: 0,
        intid: 0,
        window_base: 0,
        window_pages: 0,
        rules: Rules::NONE,
        shmem: 0,
        size: 0,
        status: Status::Ok,
        name: [0; NAME_FIELD_BYTES],
        connections: [Connection::NONE; MAX_DEVICE_CONNECTIONS],
        unread_connections: 0,
        line_asserted: false,
    };

    const fn window_end(&self) -> u64 {
        self.window_base + self.window_pages * PAGE_SIZE
    }

    /// A free connection slot and the lowest place in the window with
    /// `pages` free pages (first fit by address), or `None`.
    fn place(&self, pages: u64) -> Option<(usize, u64)> {
        let slot = self.connections.iter().position(|c| !c.live)?;
        let mut candidate = 0;
        // Each pass moves past the lowest connection in the way, so at most
        // one pass per live connection.
        loop {
            if self.window_pages.checked_sub(candidate)? < pages {
                return None;
            }
            let blocker = self
                .connections
                .iter()
                .filter(|c| {
                    c.live && c.first_page < candidate + pages && candidate < c.first_page + c.pages
                })
                .map(|c| c.first_page + c.pages)
                .max();
            match blocker {
                None => return Some((slot, candidate)),
                Some(end) => candidate = end,
            }
        }
    }

    /// The live connection whose control page is window page `page`.
    fn connection_at(&self, page: u64) -> Option<usize> {
        self.connections
            .iter()
            .position(|c| c.live && c.first_page == page)
    }

    /// Gives the vector the level its connections call for, if that changed.
    #[inline(always)]
    fn update_line(&mut self, lines: &mut impl VmLines) {
        let asserted = self.unread_connections != 0;
        if asserted != self.line_asserted {
            self.line_asserted = asserted;
            lines.set_level(self.vm, self.intid, asserted);
        }
    }

    /// Sets `bits` in connection `slot`'s unread mask.
    #[inline(always)]
    fn add_unread(&mut self, slot: usize, bits: u32, lines: &mut impl VmLines) {
        let connection = &mut self.connections[slot];
        if connection.unread == 0 && bits != 0 {
            self.unread_connections += 1;
        }
        connection.unread |= bits;
        self.update_line(lines);
    }

    /// Clears `bits` in connection `slot`'s unread mask.
    fn clear_unread(&mut self, slot: usize, bits: u32, lines: &mut impl VmLines) {
        let connection = &mut self.connections[slot];
        let had = connection.unread != 0;
        connection.unread &= !bits;
        if had && connection.unread == 0 {
            self.unread_connections -= 1;
        }
        self.update_line(lines);
    }

    /// Returns the factory registers to their state before any request.
    const fn reset_factory(&mut self) {
        self.shmem = 0;
        self.size = 0;
        self.status = Status::Ok;
        self.name = [0; NAME_FIELD_BYTES];
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RegionState {
    /// Never used.
    Empty,
    Live,
    /// Freed after its last detach; keeps its name and counters.
    Retired,
}

/// Which connection holds an index of a region.
#[derive(Clone, Copy, Debug)]
struct Member {
    device: u8,
    slot: u8,
}

#[derive(Clone, Copy, Debug)]
struct Region {
    state: RegionState,
    boot: bool,
    name: Name,
    pages: u64,
    host_address: u64,
    /// Bit i: index i is attached.
    attached: u16,
    /// The core refused to unmap some connection's pages: a guest may
    /// still reach them, so they are never freed (kept out of the
    /// allocator, and counted against the limit, until power-off).
    unmap_refused: bool,
    /// Valid for the attached indices.
    members: [Member; MAX_CONNECTIONS],
    counters: RegionCounters,
}

impl Region {
    const EMPTY: Self = Self {
        state: RegionState::Empty,
        boot: false,
        name: Name::NONE,
        pages: 0,
        host_address: 0,
        attached: 0,
        unmap_refused: false,
        members: [Member { device: 0, slot: 0 }; MAX_CONNECTIONS],
        counters: RegionCounters {
            connections: 0,
            notifications_sent: 0,
            notifications_delivered: 0,
        },
    };
}

/// The attached indices of `mask`, lowest first: one step per set bit
/// (this is on the notify path).
fn indices(mask: u16) -> impl Iterator<Item = usize> {
    let mut rest = mask;
    core::iter::from_fn(move || {
        if rest == 0 {
            return None;
        }
        let index = rest.trailing_zeros() as usize;
        rest &= rest - 1;
        Some(index)
    })
}

/// Every vdev-shmem device instance and the system-wide region registry.
#[derive(Debug)]
pub struct Shmem {
    devices: [Device; MAX_DEVICES],
    device_count: usize,
    regions: [Region; MAX_REGIONS],
    /// The most region pages that may exist at once.
    page_limit: u64,
    /// Region pages that exist now (live regions' data pages).
    pages_in_use: u64,
    /// Map or unmap requests the core refused (each a bug somewhere).
    core_refusals: u64,
}

impl Shmem {
    /// No devices and no regions; at most `page_limit` region pages may
    /// exist at once (data pages; control pages are not memory).
    #[must_use]
    pub const fn new(page_limit: u64) -> Self {
        Self {
            devices: [Device::NONE; MAX_DEVICES],
            device_count: 0,
            regions: [Region::EMPTY; MAX_REGIONS],
            page_limit,
            pages_in_use: 0,
            core_refusals: 0,
        }
    }

    /// Sets the page limit, at boot: a `static` starts as
    /// `Shmem::new(0)` (all zero, so it costs the image nothing) and is
    /// given the configured limit before any region is added.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OverLimit`] when regions already hold more pages.
    pub const fn set_page_limit(&mut self, pages: u64) -> Result<(), ConfigError> {
        if pages < self.pages_in_use {
            return Err(ConfigError::OverLimit);
        }
        self.page_limit = pages;
        Ok(())
    }

    /// Adds a configured device instance, at boot.
    ///
    /// # Errors
    ///
    /// When the instance breaks a rule listed in [`ConfigError`].
    pub fn add_device(&mut self, config: &DeviceConfig<'_>) -> Result<DeviceId, ConfigError> {
        let id = self.device_count;
        // The instances so far, and the slot for this one: none left means
        // the table is full.
        let (added, free) = self
            .devices
            .split_at_mut_checked(id)
            .ok_or(ConfigError::TooManyDevices)?;
        let slot = free.first_mut().ok_or(ConfigError::TooManyDevices)?;
        let rules = Rules::new(config.rules).ok_or(ConfigError::TooManyRules)?;
        if !config.factory.is_multiple_of(PAGE_SIZE)
            || config.factory.checked_add(PAGE_SIZE).is_none()
        {
            return Err(ConfigError::FactoryMisaligned);
        }
        let window_end = config.window_base.checked_add(config.window_size);
        if !config.window_base.is_multiple_of(PAGE_SIZE)
            || !config.window_size.is_multiple_of(PAGE_SIZE)
            || config.window_size == 0
            || window_end.is_none()
        {
            return Err(ConfigError::BadWindow);
        }
        if !(32..=1019).contains(&config.intid) {
            return Err(ConfigError::NotAnSpi);
        }
        let overlaps = |base: u64, size: u64, other_base: u64, other_size: u64| {
            base < other_base + other_size && other_base < base + size
        };
        let (window_base, window_size) = (config.window_base, config.window_size);
        if overlaps(config.factory, PAGE_SIZE, window_base, window_size) {
            return Err(ConfigError::Overlap);
        }
        for other in added.iter().filter(|other| other.vm == config.vm) {
            let other_window = other.window_pages * PAGE_SIZE;
            let ranges = [(config.factory, PAGE_SIZE), (window_base, window_size)];
            let other_ranges = [
                (other.factory, PAGE_SIZE),
                (other.window_base, other_window),
            ];
            for (base, size) in ranges {
                for (other_base, other_size) in other_ranges {
                    if overlaps(base, size, other_base, other_size) {
                        return Err(ConfigError::Overlap);
                    }
                }
            }
            if other.intid == config.intid {
                return Err(ConfigError::SharedInterrupt);
            }
        }
        *slot = Device {
            vm: config.vm,
            factory: config.factory,
            intid: config.intid,
            window_base,
            window_pages: window_size / PAGE_SIZE,
            rules,
            ..Device::NONE
        };
        self.device_count += 1;
        Ok(DeviceId(id as u8))
    }

    /// Creates a region of the system config, at boot: zeroed, counted
    /// against the page limit, and never freed.
    ///
    /// # Errors
    ///
    /// When the region breaks a rule listed in [`ConfigError`].
    pub fn add_boot_region(
        &mut self,
        name: &[u8],
        pages: u64,
        memory: &mut impl HostPages,
    ) -> Result<(), ConfigError> {
        let name = Name::new(name).ok_or(ConfigError::IllegalName)?;
        if self.live_region(&name).is_some() {
            return Err(ConfigError::DuplicateName);
        }
        if pages == 0 || pages > u64::from(u32::MAX) {
            return Err(ConfigError::BadSize);
        }
        if pages > self.page_limit - self.pages_in_use {
            return Err(ConfigError::OverLimit);
        }
        let slot = self
            .free_region_slot(&name)
            .ok_or(ConfigError::TooManyRegions)?;
        let host_address = memory.allocate_pages(pages).ok_or(ConfigError::NoMemory)?;
        memory.zero_pages(host_address, pages);
        self.open_region(slot, name, pages, host_address, true);
        Ok(())
    }

    /// The device and area that `address` of VM `vm` belongs to, and the
    /// offset into that area.
    #[must_use]
    pub fn route(&self, vm: VmIndex, address: u64) -> Option<(DeviceId, Area, u64)> {
        self.devices[..self.device_count]
            .iter()
            .enumerate()
            .filter(|(_, device)| device.vm == vm)
            .find_map(|(id, device)| {
                let id = DeviceId(id as u8);
                if (device.factory..device.factory + PAGE_SIZE).contains(&address) {
                    Some((id, Area::Factory, address - device.factory))
                } else if (device.window_base..device.window_end()).contains(&address) {
                    Some((id, Area::Window, address - device.window_base))
                } else {
                    None
                }
            })
    }

    /// A load of `width` at `offset` in `area` of `device`.
    ///
    /// The receiver's whole-status read in its handler (half of
    /// `shmem.pingpong_roundtrip`) is told apart first, inline, and carried
    /// out as the field-by-field path would.
    ///
    /// # Errors
    ///
    /// When nothing answers there; the guest gets an external abort.
    #[inline(always)]
    pub fn read(
        &mut self,
        device: DeviceId,
        area: Area,
        offset: u64,
        width: AccessWidth,
        services: &mut impl ShmemServices,
    ) -> Result<u64, AccessRefused> {
        if Self::is_whole_control_word(area, offset, width, control::STATUS) {
            let d = device.index();
            let slot = self.connection_for(d, offset)?;
            return Ok(u64::from(self.read_whole_status(d, slot, services)));
        }
        self.read_by_fields(device, area, offset, width, services)
    }

    /// Whether an access is a whole-word one to control-page field
    /// `field`: the fast cases of [`read`](Self::read) and
    /// [`write`](Self::write).
    #[inline(always)]
    fn is_whole_control_word(area: Area, offset: u64, width: AccessWidth, field: u64) -> bool {
        area == Area::Window && width == AccessWidth::Word && offset % PAGE_SIZE == field
    }

    // Device and region lookups by index go through these accessors so
    // the image holds one bounds-check panic location for each table
    // rather than one per use. The indices come from `DeviceId`s and the
    // tables themselves; one past the table is a bug, and panics as before.

    fn device(&self, d: usize) -> &Device {
        &self.devices[d]
    }

    fn device_mut(&mut self, d: usize) -> &mut Device {
        &mut self.devices[d]
    }

    fn region(&self, r: usize) -> &Region {
        &self.regions[r]
    }

    fn region_mut(&mut self, r: usize) -> &mut Region {
        &mut self.regions[r]
    }

    /// The live connection of device `d` whose control page holds window
    /// offset `offset`.
    #[inline(always)]
    fn connection_for(&self, d: usize, offset: u64) -> Result<usize, AccessRefused> {
        self.device(d)
            .connection_at(offset / PAGE_SIZE)
            .ok_or(AccessRefused::NothingThere)
    }

    /// [`read`](Self::read), field by field, without its inline status
    /// case: also for callers off the measured paths (an access without a
    /// syndrome), where the fields give the same answer from the one copy
    /// of them.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read).
    #[inline(never)]
    pub fn read_by_fields(
        &mut self,
        device: DeviceId,
        area: Area,
        offset: u64,
        width: AccessWidth,
        services: &mut impl ShmemServices,
    ) -> Result<u64, AccessRefused> {
        let d = device.index();
        let bytes = u64::from(width.bytes());
        match area {
            Area::Factory => {
                Self::check_page(offset, bytes)?;
                Ok(self.read_factory(d, offset, bytes))
            }
            Area::Window => {
                let (slot, offset) = self.control_page(d, offset, bytes)?;
                let mut value = 0;
                for piece in pieces(&CONTROL_FIELDS, offset, bytes) {
                    value |= self.read_control(d, slot, piece, services) << piece.shift;
                }
                Ok(value)
            }
        }
    }

    /// A store of the low `width` bytes of `value` at `offset` in `area` of
    /// `device`.
    ///
    /// The sender's whole-word notify (half of `shmem.notify_oneway`) is
    /// told apart first, inline, and carried out as the field-by-field
    /// path would.
    ///
    /// # Errors
    ///
    /// When nothing answers there; the guest gets an external abort.
    #[inline(always)]
    pub fn write(
        &mut self,
        device: DeviceId,
        area: Area,
        offset: u64,
        width: AccessWidth,
        value: u64,
        services: &mut impl ShmemServices,
    ) -> Result<(), AccessRefused> {
        if Self::is_whole_control_word(area, offset, width, control::NOTIFY) {
            let d = device.index();
            let slot = self.connection_for(d, offset)?;
            self.notify(d, slot, value as u32, services);
            return Ok(());
        }
        self.write_by_fields(device, area, offset, width, value, services)
    }

    /// [`write`](Self::write), field by field, without its inline notify
    /// case (as [`read_by_fields`](Self::read_by_fields)).
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    #[inline(never)]
    pub fn write_by_fields(
        &mut self,
        device: DeviceId,
        area: Area,
        offset: u64,
        width: AccessWidth,
        value: u64,
        services: &mut impl ShmemServices,
    ) -> Result<(), AccessRefused> {
        let d = device.index();
        let bytes = u64::from(width.bytes());
        let value = width.truncate(value);
        match area {
            Area::Factory => {
                Self::check_page(offset, bytes)?;
                for piece in pieces(&FACTORY_FIELDS, offset, bytes) {
                    let part = (value >> piece.shift) & byte_mask(0, piece.count);
                    self.write_factory(d, piece, part, services);
                }
                Ok(())
            }
            Area::Window => {
                let (slot, offset) = self.control_page(d, offset, bytes)?;
                for piece in pieces(&CONTROL_FIELDS, offset, bytes) {
                    if !self.device(d).connections[slot].live {
                        break; // detached by an earlier piece
                    }
                    let part = (value >> piece.shift) & byte_mask(0, piece.count);
                    self.write_control(d, slot, piece, part as u32, services);
                }
                Ok(())
            }
        }
    }

    /// Detaches every connection of VM `vm` and returns its factory
    /// registers to their state before any request, as when the VM stops,
    /// crashes or resets. Peers see the attached bits drop and are
    /// interrupted; the VM's own vectors are lowered. `services` acts for
    /// `vm`.
    pub fn detach_vm(&mut self, vm: VmIndex, services: &mut impl ShmemServices) {
        for d in 0..self.device_count {
            if self.device(d).vm != vm {
                continue;
            }
            for slot in 0..MAX_DEVICE_CONNECTIONS {
                if self.device(d).connections[slot].live {
                    self.detach(d, slot, services);
                }
            }
            self.device_mut(d).reset_factory();
        }
    }

    /// Every region that exists or existed, with its counters.
    pub fn regions(&self) -> impl Iterator<Item = RegionReport> + '_ {
        self.regions
            .iter()
            .filter(|region| region.state != RegionState::Empty)
            .map(|region| RegionReport {
                name: region.name,
                pages: region.pages,
                boot: region.boot,
                live: region.state == RegionState::Live,
                attached: region.attached,
                counters: region.counters,
            })
    }

    /// Region pages that exist now.
    #[must_use]
    pub const fn pages_in_use(&self) -> u64 {
        self.pages_in_use
    }

    /// How many map or unmap requests the core refused. Anything but 0 is
    /// a bug in the model or the core (or the core ran out of table
    /// memory); worth a line in the report.
    #[must_use]
    pub const fn core_refusals(&self) -> u64 {
        self.core_refusals
    }

    const fn check_page(offset: u64, bytes: u64) -> Result<(), AccessRefused> {
        if offset >= PAGE_SIZE {
            Err(AccessRefused::NothingThere)
        } else if offset + bytes > PAGE_SIZE {
            Err(AccessRefused::CrossesPage)
        } else {
            Ok(())
        }
    }

    /// The connection whose control page holds window offset `offset`, and
    /// the offset into that page.
    fn control_page(
        &self,
        d: usize,
        offset: u64,
        bytes: u64,
    ) -> Result<(usize, u64), AccessRefused> {
        let page_offset = offset % PAGE_SIZE;
        if page_offset + bytes > PAGE_SIZE {
            return Err(AccessRefused::CrossesPage);
        }
        let slot = self
            .device(d)
            .connection_at(offset / PAGE_SIZE)
            .ok_or(AccessRefused::NothingThere)?;
        Ok((slot, page_offset))
    }

    fn read_factory(&self, d: usize, offset: u64, bytes: u64) -> u64 {
        let device = self.device(d);
        let mut value = 0;
        for piece in pieces(&FACTORY_FIELDS, offset, bytes) {
            let part = match piece.field {
                FactoryField::Signature => bytes_of(SIGNATURE, piece.first, piece.count),
                FactoryField::Shmem => bytes_of(device.shmem, piece.first, piece.count),
                FactoryField::Vector => bytes_of(device.intid.into(), piece.first, piece.count),
                FactoryField::Status => bytes_of(device.status as u64, piece.first, piece.count),
                FactoryField::Size => bytes_of(device.size.into(), piece.first, piece.count),
                FactoryField::Name => {
                    let first = piece.first as usize;
                    device.name[first..first + piece.count as usize]
                        .iter()
                        .rev()
                        .fold(0, |value, &byte| value << 8 | u64::from(byte))
                }
                FactoryField::Find => 0,
            };
            value |= part << piece.shift;
        }
        value
    }

    fn write_factory(
        &mut self,
        d: usize,
        piece: Piece<FactoryField>,
        part: u64,
        services: &mut impl ShmemServices,
    ) {
        match piece.field {
            FactoryField::Name => {
                let first = piece.first as usize;
                for (at, byte) in self.device_mut(d).name[first..first + piece.count as usize]
                    .iter_mut()
                    .enumerate()
                {
                    *byte = (part >> (at * 8)) as u8;
                }
            }
            FactoryField::Size if piece.whole_word() => {
                self.request(d, Request::CreateOrAttach(part as u32), services);
            }
            FactoryField::Find if piece.whole_word() => self.request(d, Request::Find, services),
            _ => {} // read-only, or a command written too narrowly
        }
    }

    /// A whole-word status read by connection `slot` of device `d` (the
    /// receiver's read in `shmem.pingpong_roundtrip`): what
    /// [`read_control`](Self::read_control) does for all four bytes.
    #[inline(always)]
    fn read_whole_status(
        &mut self,
        d: usize,
        slot: usize,
        services: &mut impl ShmemServices,
    ) -> u32 {
        let connection = self.device(d).connections[slot];
        let attached = self.region(usize::from(connection.region)).attached;
        let status = (connection.unread & 0xffff) | u32::from(attached) << 16;
        // Every byte is read: all its unread bits clear.
        self.device_mut(d).clear_unread(slot, u32::MAX, services);
        status
    }

    fn read_control(
        &mut self,
        d: usize,
        slot: usize,
        piece: Piece<ControlField>,
        services: &mut impl ShmemServices,
    ) -> u64 {
        let connection = self.device(d).connections[slot];
        let field = match piece.field {
            ControlField::Status => {
                let attached = self.region(usize::from(connection.region)).attached;
                let status = (connection.unread & 0xffff) | u32::from(attached) << 16;
                // The bytes returned are read: their unread bits clear.
                let returned = byte_mask(piece.first, piece.count) as u32;
                self.device_mut(d).clear_unread(slot, returned, services);
                u64::from(status)
            }
            ControlField::Index => connection.index.into(),
            ControlField::Notify => connection.delivered.into(),
            ControlField::Detach => 0,
        };
        bytes_of(field, piece.first, piece.count)
    }

    fn write_control(
        &mut self,
        d: usize,
        slot: usize,
        piece: Piece<ControlField>,
        part: u32,
        services: &mut impl ShmemServices,
    ) {
        if !piece.whole_word() {
            return; // narrow command writes, and read-only fields
        }
        match piece.field {
            ControlField::Notify => self.notify(d, slot, part, services),
            ControlField::Detach => self.detach(d, slot, services),
            ControlField::Status | ControlField::Index => {}
        }
    }

    /// Carries out a factory request and sets the factory registers.
    fn request(&mut self, d: usize, request: Request, services: &mut impl ShmemServices) {
        match self.try_request(d, request, services) {
            Ok((shmem, size)) => {
                let device = self.device_mut(d);
                device.shmem = shmem;
                device.size = size;
                device.status = Status::Ok;
            }
            Err(status) => self.device_mut(d).status = status,
        }
    }

    /// The checks in the ABI's order, then the attach; the connection's
    /// control page address and the region's size.
    fn try_request(
        &mut self,
        d: usize,
        request: Request,
        services: &mut impl ShmemServices,
    ) -> Result<(u64, u32), Status> {
        let name = Name::from_field(&self.device(d).name).ok_or(Status::IllegalName)?;
        if !self.device(d).rules.permit(&name) {
            return Err(Status::NoPermission);
        }
        if let Some(region) = self.live_region(&name) {
            if self.region(region).attached == u16::MAX {
                return Err(Status::ClientMax);
            }
            return self.attach(d, region, services);
        }
        let pages = match request {
            Request::Find | Request::CreateOrAttach(0) => return Err(Status::DoesNotExist),
            Request::CreateOrAttach(pages) => u64::from(pages),
        };
        if pages > self.page_limit - self.pages_in_use {
            return Err(Status::NoMemory);
        }
        // Room in the window before taking memory, so that a full window
        // costs nothing.
        self.device(d).place(pages + 1).ok_or(Status::NoMemory)?;
        let slot = self.free_region_slot(&name).ok_or(Status::NoMemory)?;
        let host_address = services.allocate_pages(pages).ok_or(Status::NoMemory)?;
        services.zero_pages(host_address, pages);
        self.open_region(slot, name, pages, host_address, false);
        let attached = self.attach(d, slot, services);
        if attached.is_err() {
            self.close_region(slot, services);
        }
        attached
    }

    /// The live region named `name`.
    fn live_region(&self, name: &Name) -> Option<usize> {
        self.regions
            .iter()
            .position(|region| region.state == RegionState::Live && region.name == *name)
    }

    /// A slot for a new region named `name`: the retired slot of the same
    /// name (its counters go on), else an empty one, else any retired one.
    fn free_region_slot(&self, name: &Name) -> Option<usize> {
        let retired = |region: &Region| region.state == RegionState::Retired;
        self.regions
            .iter()
            .position(|region| retired(region) && region.name == *name)
            .or_else(|| {
                self.regions
                    .iter()
                    .position(|region| region.state == RegionState::Empty)
            })
            .or_else(|| self.regions.iter().position(retired))
    }

    fn open_region(&mut self, slot: usize, name: Name, pages: u64, host_address: u64, boot: bool) {
        let region = self.region_mut(slot);
        let counters = if region.state == RegionState::Retired && region.name == name {
            region.counters
        } else {
            RegionCounters::default()
        };
        *region = Region {
            state: RegionState::Live,
            boot,
            name,
            pages,
            host_address,
            counters,
            ..Region::EMPTY
        };
        self.pages_in_use += pages;
    }

    /// Frees a guest-made region that has no connections left. Pages the
    /// core may still have mapped somewhere (an unmap it refused) are kept
    /// instead: never handed to anyone again, still counted in use.
    fn close_region(&mut self, slot: usize, services: &mut impl ShmemServices) {
        let region = self.region_mut(slot);
        let freed = (!region.unmap_refused).then_some((region.host_address, region.pages));
        region.state = RegionState::Retired;
        region.host_address = 0;
        if let Some((host_address, pages)) = freed {
            services.free_pages(host_address, pages);
            self.pages_in_use -= pages;
        }
    }

    /// Makes a connection from device `d` to region `r`: window place,
    /// mapping, lowest free index, peers told.
    fn attach(
        &mut self,
        d: usize,
        r: usize,
        services: &mut impl ShmemServices,
    ) -> Result<(u64, u32), Status> {
        let region = *self.region(r);
        let (slot, first_page) = self
            .device(d)
            .place(region.pages + 1)
            .ok_or(Status::NoMemory)?;
        let control_address = self.device(d).window_base + first_page * PAGE_SIZE;
        if let Err(refused) = services.map_pages(
            control_address + PAGE_SIZE,
            region.host_address,
            region.pages * PAGE_SIZE,
            PageAccess::ReadWrite,
        ) {
            if refused == PagesRefused::OutOfMemory {
                return Err(Status::NoMemory);
            }
            self.core_refusals += 1;
            return Err(Status::UnknownFailure);
        }
        // Not full (checked by the caller), so there is a zero bit.
        let index = (!region.attached).trailing_zeros() as usize;
        self.device_mut(d).connections[slot] = Connection {
            live: true,
            region: r as u8,
            index: index as u8,
            first_page,
            pages: region.pages + 1,
            ..Connection::NONE
        };
        let region = self.region_mut(r);
        region.attached |= 1 << index;
        region.members[index] = Member {
            device: d as u8,
            slot: slot as u8,
        };
        region.counters.connections += 1;
        let pages = region.pages as u32;
        self.tell_peers(r, index, services);
        Ok((control_address, pages))
    }

    /// Connection `slot` of device `d` goes: its data pages are unmapped,
    /// its index freed, its peers told; the region is freed if it was the
    /// last connection of a guest-made region.
    fn detach(&mut self, d: usize, slot: usize, services: &mut impl ShmemServices) {
        let connection = self.device(d).connections[slot];
        let data_address = self.device(d).window_base + (connection.first_page + 1) * PAGE_SIZE;
        if services
            .unmap_pages(data_address, (connection.pages - 1) * PAGE_SIZE)
            .is_err()
        {
            self.core_refusals += 1;
            self.region_mut(usize::from(connection.region))
                .unmap_refused = true;
        }
        let device = self.device_mut(d);
        device.clear_unread(slot, u32::MAX, services);
        device.connections[slot] = Connection::NONE;
        let r = usize::from(connection.region);
        let index = usize::from(connection.index);
        let region = self.region_mut(r);
        region.attached &= !(1 << index);
        self.tell_peers(r, index, services);
        let region = self.region(r);
        if region.attached == 0 && !region.boot {
            self.close_region(r, services);
        }
    }

    /// Every attached connection of region `r` but `changed` gets an unread
    /// attach change for index `changed`.
    fn tell_peers(&mut self, r: usize, changed: usize, services: &mut impl ShmemServices) {
        let region = *self.region(r);
        for peer in indices(region.attached & !(1 << changed)) {
            let member = region.members[peer];
            self.device_mut(usize::from(member.device)).add_unread(
                usize::from(member.slot),
                1 << (16 + changed),
                services,
            );
        }
    }

    /// An acted notify write of `mask` by connection `slot` of device `d`.
    /// This is the sender's half of `shmem.notify_oneway`: indices, not
    /// copies, and one step per target; inline, into the whole-word case of
    /// [`write`](Self::write).
    #[inline(always)]
    fn notify(&mut self, d: usize, slot: usize, mask: u32, services: &mut impl ShmemServices) {
        let connection = self.device(d).connections[slot];
        let region = usize::from(connection.region);
        let asked = if mask == NOTIFY_ALL_BUT_ME {
            u16::MAX
        } else {
            mask as u16 // bits 16..31 name nobody
        };
        let sender = 1u16 << connection.index;
        let targets = asked & self.region(region).attached & !sender;
        self.region_mut(region).counters.notifications_sent += 1;
        self.device_mut(d).connections[slot].delivered = targets;
        if targets == 0 {
            return;
        }
        services.order_before_signal();
        let mut rest = targets;
        while rest != 0 {
            let target = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            let member = self.region(region).members[target];
            self.region_mut(region).counters.notifications_delivered += 1;
            self.device_mut(usize::from(member.device)).add_unread(
                usize::from(member.slot),
                u32::from(sender),
                services,
            );
        }
    }
}

#[cfg(test)]
mod tests;
