//! The vdev-shmem client: named shared-memory regions between guests, with
//! selective signalling (`shared/design/vdev-shmem-abi.md`, the QNX
//! `qvm/guest_shm.h` layout; `docs/guest-interface.md`, "Shared memory").
//!
//! # Use
//!
//! 1. Find the device instances in the device tree ([`devices`],
//!    [`first_device`]): each `qvm,guest_shm` node gives the factory page
//!    and the vector.
//! 2. [`Factory::open`] checks the factory's signature.
//! 3. [`Factory::create`] (create-or-attach: the first request for a name
//!    creates the region, later ones attach to it and get the creator's
//!    size) or [`Factory::find`] (attach only) gives a [`Connection`].
//!    Every status the device can answer is a [`ShmemError`] variant.
//! 4. The connection: its [`index`](Connection::index), its data as a
//!    bounded view ([`Connection::data`], no raw pointer), [`notify`]
//!    (a [`PeerSet`]) or [`notify_all_but_me`], the status ([`Status`]:
//!    sender bits and attached set), the notify read-back
//!    ([`delivered`](Connection::delivered)), [`detach`](Connection::detach).
//! 5. Waiting for the vector, either way:
//!    - **with a handler**: [`Device::enable_interrupt`] registers it with
//!      the SDK's GIC module, the vector being a level-high SPI that stays
//!      asserted while any connection made through that factory has an
//!      unread change. The handler must read the status of each such
//!      connection ([`Connection::poll`] or [`Connection::read_status`]):
//!      that read is what lowers the line, or the interrupt is taken again
//!      as soon as the handler returns.
//!    - **in WFI with a deadline**: [`Connection::wait`] (IRQs masked: it
//!      reads the status itself; IRQs unmasked: it sleeps until the
//!      handler has polled). The vector must be enabled in the GIC
//!      ([`Device::enable_interrupt`]) for WFI to wake on it.
//! 6. For a stream of messages, [`channel`]: a single-producer,
//!    single-consumer ring in one region, with the signalling done for you.
//!
//! # Barriers
//!
//! The ordering a user could get wrong is built in:
//!
//! - [`Connection::notify`] issues `dsb ish` before the notify store. The
//!   peer learns of the notify through the hypervisor (the store traps),
//!   not by observing the store itself, so ordering the data stores before
//!   the notify store (`dmb`) would not be enough: they must have
//!   *completed* before the store that traps. The hypervisor issues its own
//!   `dsb ish` on the notify path (the ABI promises it, because real
//!   clients only put a compiler barrier there); the SDK does not rely on
//!   that.
//! - [`Connection::read_status`] issues `dmb ish` after the status load:
//!   data loads that follow are ordered after it, so they cannot return
//!   values older than the notify the status reported. Today the load traps
//!   and the exception alone would order it; the barrier keeps that true
//!   for a hypervisor that served status without a trap.
//! - The channel's head and tail updates carry their own barriers (see
//!   [`channel`]).
//!
//! # Memory types
//!
//! SDK guests run with the MMU off, so the data pages are Device memory
//! for them: every access must be aligned (the view checks it) and plain
//! (never exclusive or atomic read-modify-write). The view's accesses are
//! relaxed atomic loads and stores of 1, 2, 4 or 8 bytes, which are plain
//! `ldr`/`str` on aarch64 and make concurrent use from several vCPUs of one
//! guest well defined. A guest with its MMU on should map the data pages
//! as Normal write-back inner shareable, as the hypervisor's stage 2 does;
//! the barriers above are right for both. Both ends of a region must use
//! the same kind: a non-cacheable reader does not see a cacheable writer's
//! dirty lines without cache maintenance, which this module does not do.
//!
//! # Testing on the host
//!
//! Everything that reaches the device goes through a [`Bus`]: [`Hardware`]
//! on a guest, and in the unit tests a bus that answers with the
//! hypervisor's own model (`tessera_vdevs::shmem`), several "guests" on
//! one model, the data pages in host memory.

pub mod channel;
mod data;
#[cfg(test)]
mod tests;

use core::fmt;
use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

pub use data::{Data, DataError};

use crate::arch;
use crate::device_tree::{CompatibleNode, DeviceTree};
use crate::gic::{self, Config, GicError, Handler, Trigger};
use crate::interrupts;
use crate::time::Deadline;
use crate::timer::{self, Tick, Timer};

/// The factory page's signature: the bytes "QVMG2GSM" read as a
/// little-endian u64.
pub const SIGNATURE: u64 = 0x4d53_4732_474d_5651;
/// The size of the factory page, a control page and a data page.
pub const PAGE_SIZE: u64 = 0x1000;
/// Connections one region may have; an index is below this.
pub const MAX_CONNECTIONS: usize = 16;
/// The factory's name field: 1 to 31 name bytes, then NUL.
pub const NAME_FIELD_BYTES: usize = 32;
/// The notify value that signals every attached peer but the writer.
pub const NOTIFY_ALL_BUT_ME: u32 = 0xffff_ffff;
/// The `compatible` of a device instance's node.
pub const COMPATIBLE: &str = "qvm,guest_shm";

/// Factory page fields (byte offsets from `loc`).
mod factory_field {
    pub const SIGNATURE: u64 = 0x00;
    pub const SHMEM: u64 = 0x08;
    pub const VECTOR: u64 = 0x10;
    pub const STATUS: u64 = 0x14;
    pub const SIZE: u64 = 0x18;
    pub const NAME: u64 = 0x1C;
    pub const FIND: u64 = 0x3C;
}

/// Control page fields.
mod control_field {
    pub const STATUS: u64 = 0x0;
    pub const INDEX: u64 = 0x4;
    pub const NOTIFY: u64 = 0x8;
    pub const DETACH: u64 = 0xC;
}

/// The way to the device's pages.
///
/// The factory and control pages are registers (every access traps to the
/// hypervisor); the data pages are memory.
///
/// # Safety
///
/// [`memory`](Self::memory) must return a pointer that is valid for
/// atomic loads and stores of `length` bytes, for as long as the data
/// pages at `address` stay attached, whenever `address..address + length`
/// are the data pages of a connection this bus's guest made.
pub unsafe trait Bus: Copy {
    /// One 32-bit load from a factory or control register.
    ///
    /// # Safety
    /// `address` is 4-byte aligned, inside a factory page or a control page
    /// of a live connection reached through this bus.
    unsafe fn read32(self, address: u64) -> u32;

    /// One 32-bit store to a factory or control register.
    ///
    /// # Safety
    /// As [`read32`](Self::read32); the store does what the ABI says.
    unsafe fn write32(self, address: u64, value: u32);

    /// Where this guest reaches `length` bytes of data pages at
    /// guest-physical `address`; `None` if it cannot.
    fn memory(self, address: u64, length: u64) -> Option<NonNull<u8>>;
}

/// The real device: single `ldr`/`str` instructions with a plain base
/// register (a syndrome the hypervisor decodes on its fast path), and the
/// data pages at their guest-physical address (the MMU is off).
#[derive(Clone, Copy, Debug, Default)]
pub struct Hardware;

// SAFETY: with the MMU off a guest-physical address is the address a load
// uses, and the ABI maps a connection's data pages at the address the
// factory reported for as long as it is attached.
unsafe impl Bus for Hardware {
    unsafe fn read32(self, address: u64) -> u32 {
        // SAFETY: the caller promises a register of the device (trapped; a
        // status read has the side effect the ABI documents).
        unsafe { arch::mmio_read32(address as usize) }
    }

    unsafe fn write32(self, address: u64, value: u32) {
        // SAFETY: as `read32`.
        unsafe { arch::mmio_write32(address as usize, value) }
    }

    fn memory(self, address: u64, _length: u64) -> Option<NonNull<u8>> {
        NonNull::new(address as usize as *mut u8)
    }
}

/// What went wrong with a device instance or a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShmemError {
    /// Status 1: a failure the other codes do not name.
    UnknownFailure,
    /// Status 2: no memory for the region, over the system's limit, or no
    /// room left in this guest's mapping window.
    NoMemory,
    /// Status 3: the region already has 16 connections.
    ClientMax,
    /// Status 4: the name is empty, not NUL-terminated within 32 bytes, or
    /// has a byte outside 0x21..=0x7e.
    IllegalName,
    /// Status 5: this VM's allow/deny rules refuse the name.
    NoPermission,
    /// Status 6: a find named a missing region (or a create asked for 0
    /// pages of one).
    DoesNotExist,
    /// A status value the ABI does not define.
    UnknownStatus(u32),
    /// The device tree has no `qvm,guest_shm` node (or not that many).
    NoDevice,
    /// A `qvm,guest_shm` node without a usable factory `reg` or SPI.
    BadNode,
    /// No vdev-shmem factory at the address: the signature read so.
    BadSignature { found: u64 },
    /// The device reported success with a connection that cannot be right
    /// (control page 0 or misaligned, 0 pages, outside the window, an
    /// index above 15, data the bus cannot reach).
    BadConnection { shmem: u64, pages: u32 },
}

impl ShmemError {
    /// The error for a factory `status` value; `None` for 0 (OK).
    #[must_use]
    pub const fn from_status(status: u32) -> Option<Self> {
        Some(match status {
            0 => return None,
            1 => Self::UnknownFailure,
            2 => Self::NoMemory,
            3 => Self::ClientMax,
            4 => Self::IllegalName,
            5 => Self::NoPermission,
            6 => Self::DoesNotExist,
            other => Self::UnknownStatus(other),
        })
    }

    /// The factory `status` value of a request error; `None` for the
    /// errors that are not a status.
    #[must_use]
    pub const fn status(self) -> Option<u32> {
        match self {
            Self::UnknownFailure => Some(1),
            Self::NoMemory => Some(2),
            Self::ClientMax => Some(3),
            Self::IllegalName => Some(4),
            Self::NoPermission => Some(5),
            Self::DoesNotExist => Some(6),
            Self::UnknownStatus(status) => Some(status),
            _ => None,
        }
    }
}

impl fmt::Display for ShmemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownFailure => f.write_str("UNKNOWN_FAILURE"),
            Self::NoMemory => f.write_str("NOMEM"),
            Self::ClientMax => f.write_str("CLIENT_MAX"),
            Self::IllegalName => f.write_str("ILLEGAL_NAME"),
            Self::NoPermission => f.write_str("NO_PERMISSION"),
            Self::DoesNotExist => f.write_str("DOES_NOT_EXIST"),
            Self::UnknownStatus(status) => write!(f, "unknown status {status}"),
            Self::NoDevice => f.write_str("no qvm,guest_shm node in the device tree"),
            Self::BadNode => f.write_str("a qvm,guest_shm node without a factory page or SPI"),
            Self::BadSignature { found } => {
                write!(f, "no vdev-shmem factory there (signature {found:#x})")
            }
            Self::BadConnection { shmem, pages } => write!(
                f,
                "the device reported an impossible connection (control page {shmem:#x}, {pages} pages)"
            ),
        }
    }
}

/// One vdev-shmem device instance: its factory page, vector and (the
/// ABI's extension) the window its connections are mapped in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    factory: u64,
    intid: u32,
    window: Option<Range<u64>>,
}

impl Device {
    /// An instance at `factory` with vector `intid`.
    ///
    /// # Safety
    /// `factory` is the guest-physical address of a vdev-shmem factory
    /// page of this guest (or of nothing: then [`Factory::open`] fails on
    /// the signature), and no other code uses the page behind the SDK's
    /// back.
    #[must_use]
    pub const unsafe fn new(factory: u64, intid: u32, window: Option<Range<u64>>) -> Self {
        Self {
            factory,
            intid,
            window,
        }
    }

    /// Reads one `qvm,guest_shm` node: the first `reg` entry is the factory
    /// page, the second (if any) the window; `interrupts` is one GIC SPI
    /// (`<0 N flags>`, INTID N + 32).
    ///
    /// # Errors
    /// [`ShmemError::BadNode`] for a node without those.
    pub fn from_node(node: &CompatibleNode<'_>) -> Result<Self, ShmemError> {
        let factory = node.regs[0].clone().ok_or(ShmemError::BadNode)?;
        if !factory.start.is_multiple_of(PAGE_SIZE) || factory.end - factory.start < PAGE_SIZE {
            return Err(ShmemError::BadNode);
        }
        let mut cells = node.interrupt_cells();
        let intid = match (cells.next(), cells.next()) {
            (Some(GIC_SPI), Some(number)) if number < gic::INTID_LIMIT - gic::SPI_BASE => {
                number + gic::SPI_BASE
            }
            _ => return Err(ShmemError::BadNode),
        };
        // SAFETY: the guest's device tree is trusted to describe its
        // devices (the SDK drives the GIC on the same grounds); this is
        // the device the tree says is at `factory`.
        Ok(unsafe { Self::new(factory.start, intid, node.regs[1].clone()) })
    }

    /// The factory page's guest-physical address (`loc`).
    #[must_use]
    pub const fn factory_address(&self) -> u64 {
        self.factory
    }

    /// The vector: the INTID raised for this instance's connections.
    #[must_use]
    pub const fn intid(&self) -> u32 {
        self.intid
    }

    /// Where this guest's connections are mapped, if the tree says.
    #[must_use]
    pub fn window(&self) -> Option<Range<u64>> {
        self.window.clone()
    }

    /// Registers `handler` for the vector and enables it on the calling
    /// vCPU as a level-sensitive SPI at `priority`. The GIC must be set
    /// up ([`gic::init_from_device_tree`]).
    ///
    /// The handler runs while any connection made through this factory
    /// has an unread change, and must read the status of each (see the
    /// module docs). An enabled vector also wakes [`Connection::wait`].
    ///
    /// # Errors
    /// As [`gic::register_handler`] and [`gic::enable_interrupt`].
    pub fn enable_interrupt(&self, handler: Handler, priority: u8) -> Result<(), GicError> {
        gic::register_handler(self.intid, handler)?;
        gic::enable_interrupt(
            self.intid,
            Config {
                priority,
                trigger: Some(Trigger::Level),
            },
        )
    }
}

/// The first cell of a GIC SPI in an `interrupts` property.
const GIC_SPI: u32 = 0;

/// Every `qvm,guest_shm` node of `tree`, in tree order.
pub fn devices<'t>(
    tree: &'t DeviceTree<'_>,
) -> impl Iterator<Item = Result<Device, ShmemError>> + 't {
    tree.compatible_nodes(COMPATIBLE)
        .map(|node| Device::from_node(&node))
}

/// The first `qvm,guest_shm` node of `tree`.
///
/// # Errors
/// [`ShmemError::NoDevice`] without one; [`ShmemError::BadNode`].
pub fn first_device(tree: &DeviceTree<'_>) -> Result<Device, ShmemError> {
    devices(tree).next().unwrap_or(Err(ShmemError::NoDevice))
}

/// A region name as written to the factory's 32-byte field.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RegionName {
    field: [u8; NAME_FIELD_BYTES],
}

impl RegionName {
    /// The field for `name`: its bytes, then NULs. A name of 32 bytes or
    /// more fills the field without a NUL (the device refuses it with
    /// ILLEGAL_NAME; the SDK lets the device judge every name).
    #[must_use]
    pub fn new(name: &[u8]) -> Self {
        let mut field = [0; NAME_FIELD_BYTES];
        let length = name.len().min(NAME_FIELD_BYTES);
        field[..length].copy_from_slice(&name[..length]);
        Self { field }
    }

    /// The name's bytes, up to the first NUL.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        let end = self
            .field
            .iter()
            .position(|&byte| byte == 0)
            .unwrap_or(NAME_FIELD_BYTES);
        &self.field[..end]
    }

    /// The whole 32-byte field.
    #[must_use]
    pub const fn field(&self) -> &[u8; NAME_FIELD_BYTES] {
        &self.field
    }
}

/// The name, with bytes outside printable ASCII shown as `?`.
impl fmt::Display for RegionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &byte in self.as_bytes() {
            let shown = if (0x20..0x7f).contains(&byte) {
                char::from(byte)
            } else {
                '?'
            };
            fmt::Write::write_char(f, shown)?;
        }
        Ok(())
    }
}

impl fmt::Debug for RegionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// A set of connection indices (0..15) of one region: bit n is index n.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerSet(u16);

impl PeerSet {
    pub const EMPTY: Self = Self(0);
    /// Every index.
    pub const ALL: Self = Self(u16::MAX);

    #[must_use]
    pub const fn from_bits(bits: u16) -> Self {
        Self(bits)
    }

    #[must_use]
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Just `index` (empty for an index of 16 or more).
    #[must_use]
    pub const fn of(index: u8) -> Self {
        Self::EMPTY.with(index)
    }

    /// This set and `index`.
    #[must_use]
    pub const fn with(self, index: u8) -> Self {
        if (index as usize) < MAX_CONNECTIONS {
            Self(self.0 | 1 << index)
        } else {
            self
        }
    }

    /// This set without `index`.
    #[must_use]
    pub const fn without(self, index: u8) -> Self {
        if (index as usize) < MAX_CONNECTIONS {
            Self(self.0 & !(1 << index))
        } else {
            self
        }
    }

    #[must_use]
    pub const fn contains(self, index: u8) -> bool {
        (index as usize) < MAX_CONNECTIONS && self.0 & (1 << index) != 0
    }

    #[must_use]
    pub const fn len(self) -> u32 {
        self.0.count_ones()
    }

    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The lowest index in the set.
    #[must_use]
    pub const fn first(self) -> Option<u8> {
        if self.0 == 0 {
            None
        } else {
            Some(self.0.trailing_zeros() as u8)
        }
    }

    /// The indices, lowest first.
    pub fn iter(self) -> impl Iterator<Item = u8> {
        (0..MAX_CONNECTIONS as u8).filter(move |&index| self.contains(index))
    }
}

/// `{0,2,5}`
impl fmt::Display for PeerSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (n, index) in self.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            write!(f, "{index}")?;
        }
        f.write_str("}")
    }
}

/// A control page's `status`: who notified this connection since its last
/// status read (bits 0..15), and who is attached now, self included (bits
/// 16..31).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status(u32);

impl Status {
    #[must_use]
    pub const fn from_raw(raw: u32) -> Self {
        Self(raw)
    }

    #[must_use]
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// The indices that notified this connection.
    #[must_use]
    pub const fn senders(self) -> PeerSet {
        PeerSet(self.0 as u16)
    }

    /// The indices attached now.
    #[must_use]
    pub const fn attached(self) -> PeerSet {
        PeerSet((self.0 >> 16) as u16)
    }
}

/// `senders {1} attached {0,1}`
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "senders {} attached {}", self.senders(), self.attached())
    }
}

/// What [`Connection::poll`] gathered since the last
/// [`Connection::take_signals`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signals {
    /// Every index that notified.
    pub senders: PeerSet,
    /// Every index that attached or detached.
    pub changed: PeerSet,
    /// The attached set at the last status read.
    pub attached: PeerSet,
}

impl Signals {
    /// No notify and no attach change.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.senders.is_empty() && self.changed.is_empty()
    }
}

/// Why a wait ended without what it waited for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitError {
    /// The deadline passed first.
    Timeout,
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("timed out"),
        }
    }
}

/// A device instance's factory page, checked to have the signature.
/// Requests take `&mut self`: one request (name, command, results) at a
/// time per factory.
#[derive(Debug)]
pub struct Factory<B: Bus = Hardware> {
    bus: B,
    device: Device,
}

/// What a request asks.
#[derive(Clone, Copy)]
enum Request {
    CreateOrAttach(u32),
    Find,
}

impl Factory<Hardware> {
    /// The factory of `device`, on the real device.
    ///
    /// # Errors
    /// [`ShmemError::BadSignature`] when the signature is not there.
    pub fn open(device: Device) -> Result<Self, ShmemError> {
        Self::with_bus(Hardware, device)
    }
}

impl<B: Bus> Factory<B> {
    /// The factory of `device`, reached through `bus`.
    ///
    /// # Errors
    /// [`ShmemError::BadSignature`] when the signature is not there.
    pub fn with_bus(bus: B, device: Device) -> Result<Self, ShmemError> {
        let factory = Self { bus, device };
        let low = factory.read(factory_field::SIGNATURE);
        let high = factory.read(factory_field::SIGNATURE + 4);
        let found = u64::from(low) | u64::from(high) << 32;
        if found == SIGNATURE {
            Ok(factory)
        } else {
            Err(ShmemError::BadSignature { found })
        }
    }

    #[must_use]
    pub const fn device(&self) -> &Device {
        &self.device
    }

    /// The factory's `vector` register (the device tree's SPI, as the
    /// device reports it).
    #[must_use]
    pub fn vector(&self) -> u32 {
        self.read(factory_field::VECTOR)
    }

    /// Create-or-attach: attaches to region `name`, creating it with
    /// `pages` zero-filled pages if it does not exist. An existing region
    /// keeps the size its creator chose: read [`Connection::pages`].
    ///
    /// # Errors
    /// The device's answer ([`ShmemError`]'s status variants), or
    /// [`ShmemError::BadConnection`].
    pub fn create(&mut self, name: &[u8], pages: u32) -> Result<Connection<B>, ShmemError> {
        self.request(name, Request::CreateOrAttach(pages))
    }

    /// Attaches to region `name` only if it exists.
    ///
    /// # Errors
    /// [`ShmemError::DoesNotExist`] when it does not; otherwise as
    /// [`create`](Self::create).
    pub fn find(&mut self, name: &[u8]) -> Result<Connection<B>, ShmemError> {
        self.request(name, Request::Find)
    }

    fn request(&mut self, name: &[u8], request: Request) -> Result<Connection<B>, ShmemError> {
        let name = RegionName::new(name);
        // The name first, as whole aligned words: the request is the write
        // to `size` or `find` and reads the name as it stands then. Device
        // accesses are not reordered with each other (MMU off; and each one
        // traps), and the accessors are compiler barriers.
        for (at, word) in name.field.chunks_exact(4).enumerate() {
            let word = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            self.write(factory_field::NAME + 4 * at as u64, word);
        }
        match request {
            Request::CreateOrAttach(pages) => self.write(factory_field::SIZE, pages),
            Request::Find => self.write(factory_field::FIND, 1),
        }
        if let Some(error) = ShmemError::from_status(self.read(factory_field::STATUS)) {
            return Err(error);
        }
        let shmem = u64::from(self.read(factory_field::SHMEM))
            | u64::from(self.read(factory_field::SHMEM + 4)) << 32;
        let pages = self.read(factory_field::SIZE);
        let impossible = ShmemError::BadConnection { shmem, pages };
        let length = u64::from(pages) * PAGE_SIZE;
        let end = shmem.checked_add(PAGE_SIZE + length).ok_or(impossible)?;
        let outside_window = self
            .device
            .window
            .as_ref()
            .is_some_and(|window| shmem < window.start || end > window.end);
        if shmem == 0 || !shmem.is_multiple_of(PAGE_SIZE) || pages == 0 || outside_window {
            return Err(impossible);
        }
        // SAFETY: the device just reported a live connection whose control
        // page is at `shmem`.
        let index = unsafe { self.bus.read32(shmem + control_field::INDEX) };
        if index as usize >= MAX_CONNECTIONS {
            return Err(impossible);
        }
        let data = self
            .bus
            .memory(shmem + PAGE_SIZE, length)
            .ok_or(impossible)?;
        if !(data.as_ptr() as usize).is_multiple_of(8) {
            return Err(impossible);
        }
        Ok(Connection {
            bus: self.bus,
            control: shmem,
            data: data.as_ptr() as usize,
            pages,
            index: index as u8,
            vector: self.device.intid,
            name,
            senders: AtomicU32::new(0),
            changed: AtomicU32::new(0),
            attached: AtomicU32::new(1 << index),
        })
    }

    fn read(&self, field: u64) -> u32 {
        // SAFETY: `field` is a 4-byte aligned offset inside the factory
        // page of the device this factory was made for.
        unsafe { self.bus.read32(self.device.factory + field) }
    }

    fn write(&self, field: u64, value: u32) {
        // SAFETY: as `read`; the writes the factory makes are the ABI's
        // requests.
        unsafe { self.bus.write32(self.device.factory + field, value) }
    }
}

/// One attachment of this guest to a region: an index, a control page, the
/// data pages.
///
/// Its methods take `&self`, so a connection can live in a `static` and be
/// used from an interrupt handler and the main program at once. Dropping a
/// connection does not detach it (a `static` never drops); call
/// [`detach`](Self::detach).
#[derive(Debug)]
pub struct Connection<B: Bus = Hardware> {
    bus: B,
    /// The control page's guest-physical address (`shmem`).
    control: u64,
    /// Where the bus reaches the data pages.
    data: usize,
    pages: u32,
    index: u8,
    vector: u32,
    name: RegionName,
    /// Sender bits [`poll`](Self::poll) read and nobody has taken yet.
    senders: AtomicU32,
    /// Indices whose attachment changed, not yet taken.
    changed: AtomicU32,
    /// The attached set at the last poll (self at first).
    attached: AtomicU32,
}

impl<B: Bus> Connection<B> {
    /// This connection's index in its region (0..15).
    #[must_use]
    pub const fn index(&self) -> u8 {
        self.index
    }

    /// The region's size in pages (the creator's choice).
    #[must_use]
    pub const fn pages(&self) -> u32 {
        self.pages
    }

    /// The region's size in bytes.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.pages as usize * PAGE_SIZE as usize
    }

    /// Never true: a region has at least one page.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.pages == 0
    }

    #[must_use]
    pub const fn name(&self) -> &RegionName {
        &self.name
    }

    /// The vector of the factory this connection was made through.
    #[must_use]
    pub const fn vector(&self) -> u32 {
        self.vector
    }

    /// The control page's guest-physical address (for reports; the data
    /// pages follow it).
    #[must_use]
    pub const fn control_address(&self) -> u64 {
        self.control
    }

    /// The data pages, as a bounded view.
    #[must_use]
    pub fn data(&self) -> Data<'_> {
        // SAFETY: the bus promised `data` is valid for `len()` bytes while
        // the connection is attached, which it is while `self` exists
        // (`detach` consumes it, and the view borrows it).
        unsafe { Data::new(self.data, self.len()) }
    }

    /// Signals the connections in `targets`. Indices not attached, and this
    /// connection's own, are ignored by the device. Every store to the data
    /// pages before this call is visible to the targets before their
    /// handler (or wait) can see the signal.
    pub fn notify(&self, targets: PeerSet) {
        self.notify_mask(u32::from(targets.bits()));
    }

    /// Signals every attached peer.
    pub fn notify_all_but_me(&self) {
        self.notify_mask(NOTIFY_ALL_BUT_ME);
    }

    /// Writes `mask` to `notify` as it is: bits 16..31 are ignored by the
    /// device unless the value is [`NOTIFY_ALL_BUT_ME`]. For tests of the
    /// device; [`notify`](Self::notify) is the usual way.
    pub fn notify_mask(&self, mask: u32) {
        // Complete the data stores before the store that traps: see the
        // module docs, "Barriers".
        arch::completion_barrier();
        self.write(control_field::NOTIFY, mask);
    }

    /// The notify read-back (the ABI's extension): the indices the last
    /// notify of this connection actually signalled.
    #[must_use]
    pub fn delivered(&self) -> PeerSet {
        PeerSet(self.read(control_field::NOTIFY) as u16)
    }

    /// Reads `status`: the senders since the last read (which this read
    /// clears, lowering the vector if nothing else is unread) and the
    /// attached set. Nothing is recorded for [`wait`](Self::wait); an
    /// interrupt handler that acts on the senders itself uses this.
    pub fn read_status(&self) -> Status {
        let status = Status(self.read(control_field::STATUS));
        // Later data loads after the status load: see "Barriers".
        arch::memory_barrier();
        status
    }

    /// [`read_status`](Self::read_status), and records what it read for
    /// [`take_signals`](Self::take_signals) and [`wait`](Self::wait). An
    /// interrupt handler calls this when the main program waits.
    pub fn poll(&self) -> Status {
        let status = self.read_status();
        let attached = u32::from(status.attached().bits());
        let before = self.attached.swap(attached, Ordering::AcqRel);
        self.changed.fetch_or(before ^ attached, Ordering::AcqRel);
        self.senders
            .fetch_or(u32::from(status.senders().bits()), Ordering::AcqRel);
        status
    }

    /// What the polls gathered since the last call, which it clears.
    pub fn take_signals(&self) -> Signals {
        Signals {
            senders: PeerSet(self.senders.swap(0, Ordering::AcqRel) as u16),
            changed: PeerSet(self.changed.swap(0, Ordering::AcqRel) as u16),
            attached: self.attached(),
        }
    }

    /// The attached set at the last poll (only this connection before
    /// the first).
    #[must_use]
    pub fn attached(&self) -> PeerSet {
        PeerSet(self.attached.load(Ordering::Acquire) as u16)
    }

    /// Waits until a poll has seen a notify or an attach change, or until
    /// `deadline`; returns what the polls gathered ([`take_signals`]).
    ///
    /// With IRQs masked on entry, this polls the status itself, in WFI
    /// between polls: the vector must be enabled in the GIC
    /// ([`Device::enable_interrupt`]) for WFI to wake on it, and as the
    /// line stays asserted while *any* connection made through the same
    /// factory has an unread change, WFI returns at once until those are
    /// read too (poll them as well). With IRQs unmasked, the vector's
    /// handler must call [`poll`](Self::poll); this sleeps until it has.
    /// See [`wait_until`] for the deadline.
    ///
    /// [`take_signals`]: Self::take_signals
    ///
    /// # Errors
    /// [`WaitError::Timeout`].
    pub fn wait(&self, deadline: Option<Deadline>) -> Result<Signals, WaitError> {
        let handler_polls = interrupts::are_enabled();
        let mut signals = Signals::default();
        wait_until(deadline, || {
            if !handler_polls {
                self.poll();
            }
            signals = self.take_signals();
            !signals.is_empty()
        })?;
        Ok(signals)
    }

    /// Waits until at least `count` connections are attached to the
    /// region, self included, or until `deadline`; returns the attached
    /// set. Signals the polls gather meanwhile stay for
    /// [`take_signals`](Self::take_signals).
    ///
    /// As in [`wait`](Self::wait), with IRQs masked this polls itself and
    /// with IRQs unmasked it relies on the handler's polls. Peers that
    /// attached before this connection was made cause no interrupt, so in
    /// handler mode have one poll happen after connecting (run the
    /// handler's work once with IRQs masked).
    ///
    /// # Errors
    /// [`WaitError::Timeout`].
    pub fn wait_for_attached(
        &self,
        count: u32,
        deadline: Option<Deadline>,
    ) -> Result<PeerSet, WaitError> {
        let handler_polls = interrupts::are_enabled();
        let mut attached = self.attached();
        wait_until(deadline, || {
            if !handler_polls {
                self.poll();
            }
            attached = self.attached();
            attached.len() >= count
        })?;
        Ok(attached)
    }

    /// Detaches: the control and data pages leave this guest, and the
    /// peers see this index drop from their attached set.
    pub fn detach(self) {
        // The data stores complete before the pages go away.
        arch::completion_barrier();
        self.write(control_field::DETACH, 1);
    }

    fn read(&self, field: u64) -> u32 {
        // SAFETY: a field of this live connection's control page (it is
        // live while `self` exists: `detach` consumes it).
        unsafe { self.bus.read32(self.control + field) }
    }

    fn write(&self, field: u64, value: u32) {
        // SAFETY: as `read`; the stores are the ABI's commands.
        unsafe { self.bus.write32(self.control + field, value) }
    }
}

/// The timer [`wait_until`] arms for a deadline: 0 the virtual timer, 1
/// the EL1 physical one.
static WAKE_TIMER: AtomicU8 = AtomicU8::new(0);
/// The priority of the wake-up timer's interrupt.
const WAKE_PRIORITY: u8 = 0xC0;

/// Chooses the timer that waits with a deadline arm on the waiting vCPU
/// (the virtual timer unless told otherwise). While a wait with a deadline
/// runs, that timer is the SDK's; choose the other one if the program runs
/// a timer of its own.
pub fn set_wake_timer(timer: Timer) {
    let value = match timer {
        Timer::Virtual => 0,
        Timer::Physical => 1,
    };
    WAKE_TIMER.store(value, Ordering::Relaxed);
}

fn wake_timer() -> Timer {
    match WAKE_TIMER.load(Ordering::Relaxed) {
        0 => Timer::Virtual,
        _ => Timer::Physical,
    }
}

fn ignore_tick(_: Tick) {}

/// Sleeps in WFI until `ready()` returns true (checked first, then after
/// every wake-up) or the `deadline` passes.
///
/// `ready` runs with IRQs masked, so an interrupt that makes it true
/// between the check and the WFI still ends the WFI (a pending interrupt
/// wakes it, masked or not). If IRQs were unmasked on entry, each wake-up
/// lets pending handlers run before the next check; they stay as they
/// were on return.
///
/// A deadline arms the wake timer ([`set_wake_timer`]) as a one-shot and
/// stops it on return. Without the GIC set up (or the timer), nothing could
/// wake a WFI, so this spins instead.
///
/// # Errors
/// [`WaitError::Timeout`] when the deadline passed first.
pub fn wait_until(
    deadline: Option<Deadline>,
    mut ready: impl FnMut() -> bool,
) -> Result<(), WaitError> {
    let handlers_run = interrupts::are_enabled();
    interrupts::disable();
    if ready() {
        if handlers_run {
            interrupts::enable();
        }
        return Ok(());
    }
    // Only a wait that may sleep arms the timer (a few GIC writes).
    let timer = wake_timer();
    let timer_armed = deadline.is_some_and(|deadline| {
        timer::start_one_shot(timer, deadline.ticks(), WAKE_PRIORITY, ignore_tick).is_ok()
    });
    let can_sleep = gic::version().is_some() && (deadline.is_none() || timer_armed);
    let outcome = loop {
        if ready() {
            break Ok(());
        }
        if deadline.is_some_and(|deadline| deadline.has_passed()) {
            break Err(WaitError::Timeout);
        }
        if can_sleep {
            interrupts::wait();
        } else {
            core::hint::spin_loop();
        }
        if handlers_run {
            interrupts::enable();
            interrupts::disable();
        }
    };
    if timer_armed {
        timer::stop(timer);
    }
    if handlers_run {
        interrupts::enable();
    }
    outcome
}
