//! Stage-1 translation at EL1: an identity map with the guest's RAM as
//! cacheable Normal memory, and the MMU and caches on. Optional: a guest
//! that never calls [`enable`] runs with the MMU off, every access a Device
//! access, as before.
//!
//! ```ignore
//! let tree = DeviceTree::boot()?;
//! mmu::map_defaults(&tree)?;                  // RAM Normal; GIC, UART Device
//! mmu::map(0x0a00_0000..0x0a00_2000, MemoryKind::Normal)?;  // a device's pages, cached
//! mmu::enable()?;                              // on this vCPU; others follow
//! ```
//!
//! The map:
//!
//! - **Identity**: every address translates to itself, so nothing moves
//!   when the MMU goes on, and addresses handed to the hypervisor or
//!   devices stay what they were.
//! - **Layout**: 4 KiB granule, a 39-bit address space (TCR_EL1.T0SZ = 25)
//!   walked from level 1: 1 GiB blocks at level 1, 2 MiB blocks at level 2,
//!   4 KiB pages at level 3. A range gets the largest blocks it covers
//!   wholly and aligned, pages elsewhere. TTBR1 is not used.
//! - **Kinds**: [`MemoryKind::Normal`] is write-back, read/write-allocate,
//!   inner shareable and executable at EL1; [`MemoryKind::Device`] is
//!   Device-nGnRE and never executable. Both are read/write at EL1 and out
//!   of EL0's reach. What stage 2 says still applies: an address the VM was
//!   not given still gets the hypervisor's external abort, whatever this map
//!   calls it, and a device the hypervisor emulates still traps.
//! - **Storage**: the tables live in a static, page-aligned pool of
//!   [`TABLE_CAPACITY`] tables inside the guest image (its BSS); there is no
//!   heap. [`TranslationTables`] is the same logic over storage the caller
//!   provides, which is how the host tests drive it.
//!
//! Rules:
//!
//! - Map what the program touches *before* [`enable`]: its image (code,
//!   data, stacks, these tables: RAM), the console, the GIC. [`enable`]
//!   refuses to run while the image is not Normal or the console not
//!   Device. An address this map leaves out takes a stage-1 translation
//!   fault, which the SDK's vectors report (or [`crate::probe`] hands back).
//! - A range is mapped once: [`map`] refuses one that overlaps a mapping
//!   ([`MapError::Overlap`]), and nothing is ever unmapped or changed. So
//!   [`map`] may also be called with the MMU on: it only turns invalid
//!   entries valid, which no TLB holds, and makes the new entries visible
//!   with a DSB before it returns. Anyone who changes a valid entry by hand
//!   must break before make: write it invalid, [`invalidate_translations`],
//!   then write the new one.
//! - **Other vCPUs**: a vCPU started (PSCI CPU_ON, [`crate::smp::start`])
//!   after [`enable`] turns its MMU on with the same tables in its entry
//!   code, before its first store. A vCPU that was already running calls
//!   [`enable_this_cpu`]. Until then it runs with its caches off; on real
//!   hardware (QEMU does not model caches) data shared with a vCPU whose
//!   caches are on is not coherent with it, so start the others after
//!   [`enable`].
//! - **Caches**: before turning its caches on, [`enable`] invalidates the
//!   data cache lines of the image, which was written with the caches off;
//!   memory outside the image that the program wrote with its caches off
//!   is its own business. SCTLR_EL1.A stays clear, so unaligned accesses to
//!   Normal memory work; the SDK's spin locks (exclusives) work on Normal
//!   memory once the caches are on.
//!
//! The target is still `strict-align`: the compiler emits no unaligned
//! access even with the MMU on. For tests of pages a hypervisor traps,
//! which must see the forms real clients produce on cacheable mappings,
//! [`store_u64_unaligned`], [`load_u64_unaligned`], [`store_pair_u64`] and
//! [`load_pair_u64`] make one such access each.
//!
//! Descriptor format: Arm ARM (DDI 0487) D8.3, "Translation table
//! descriptor formats"; registers: D19.2 (MAIR_EL1, TCR_EL1, SCTLR_EL1).

use core::cell::UnsafeCell;
use core::fmt;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, Ordering};

use spin::Mutex;

use crate::arch::{self, TranslationRegisters, UART_BASE};
use crate::device_tree::DeviceTree;
use crate::gic;

/// The translation granule and the smallest mapping.
pub const PAGE_SIZE: u64 = 1 << 12;
/// A level-2 block.
pub const BLOCK_SIZE: u64 = 1 << 21;
/// A level-1 block.
pub const LARGE_BLOCK_SIZE: u64 = 1 << 30;
/// Bits of virtual (and, identity-mapped, physical) address translated.
pub const ADDRESS_BITS: u32 = 39;
/// The first address above the translated space.
pub const ADDRESS_LIMIT: u64 = 1 << ADDRESS_BITS;
/// Tables in the SDK's static pool (4 KiB each): the level-1 table, then
/// one per GiB touched and one per 2 MiB mapped only in part. The default
/// map takes 5 on QEMU `virt` and under Tessera.
pub const TABLE_CAPACITY: usize = 16;

/// Entries per table (4 KiB of 8-byte descriptors).
const ENTRIES: usize = 512;
const FIRST_LEVEL: u8 = 1;
const LAST_LEVEL: u8 = 3;

/// Descriptor fields (VMSAv8-64, stage 1, 4 KiB granule). AP[2:1] = 0b00,
/// read/write at EL1 and no access from EL0, and nG = 0 are left as zero.
pub mod descriptor {
    /// Bit 0: the entry translates.
    pub const VALID: u64 = 1 << 0;
    /// Bit 1: a table at levels 1 and 2, a page at level 3 (clear: a block).
    pub const TABLE_OR_PAGE: u64 = 1 << 1;
    /// AttrIndx, bits 4:2: the MAIR_EL1 attribute of a block or page.
    pub const ATTRIBUTE_INDEX_SHIFT: u32 = 2;
    pub const ATTRIBUTE_INDEX_MASK: u64 = 0b111 << ATTRIBUTE_INDEX_SHIFT;
    /// SH, bits 9:8 = 0b11.
    pub const INNER_SHAREABLE: u64 = 0b11 << 8;
    /// AF, bit 10: set up front, so no access-flag fault is ever taken.
    pub const ACCESS_FLAG: u64 = 1 << 10;
    /// PXN, bit 53: not executable at EL1.
    pub const PRIVILEGED_EXECUTE_NEVER: u64 = 1 << 53;
    /// UXN, bit 54: not executable at EL0.
    pub const UNPRIVILEGED_EXECUTE_NEVER: u64 = 1 << 54;
    /// The output (or next-table) address, bits 47:12.
    pub const ADDRESS_MASK: u64 = 0x0000_FFFF_FFFF_F000;
}

/// MAIR_EL1: which attribute each [`MemoryKind`] uses.
pub mod attributes {
    /// Attr0: Device-nGnRE.
    pub const DEVICE_INDEX: u64 = 0;
    /// Attr1: Normal, inner and outer write-back non-transient,
    /// read- and write-allocate.
    pub const NORMAL_INDEX: u64 = 1;
    pub const DEVICE_NGNRE: u8 = 0x04;
    pub const NORMAL_WRITE_BACK: u8 = 0xFF;
    /// The MAIR_EL1 value.
    pub const MAIR: u64 = (DEVICE_NGNRE as u64) << (8 * DEVICE_INDEX)
        | (NORMAL_WRITE_BACK as u64) << (8 * NORMAL_INDEX);
}

/// SCTLR_EL1.M, C and I: the MMU, data caches, instruction caches.
const SCTLR_MMU: u64 = 1 << 0;
const SCTLR_DATA_CACHE: u64 = 1 << 2;
const SCTLR_INSTRUCTION_CACHE: u64 = 1 << 12;
/// The SCTLR_EL1 bits [`enable`] sets (M, C, I). It also clears A and WXN
/// (the arch layer's `SCTLR_CLEAR_ON_ENABLE`).
pub const SCTLR_ENABLE: u64 = SCTLR_MMU | SCTLR_DATA_CACHE | SCTLR_INSTRUCTION_CACHE;

/// The largest TCR_EL1.IPS (and ID_AA64MMFR0_EL1.PARange) this map uses:
/// 48 bits. Larger sizes change the descriptor format.
const MAX_PHYSICAL_ADDRESS_RANGE: u64 = 0b101;

/// TCR_EL1 for this map on a CPU whose ID_AA64MMFR0_EL1.PARange is
/// `physical_address_range`: TTBR0 walks of a 39-bit space, 4 KiB granule,
/// tables in write-back inner-shareable memory; no TTBR1 walks.
#[must_use]
pub const fn translation_control(physical_address_range: u64) -> u64 {
    const SIZE_OFFSET: u64 = 64 - ADDRESS_BITS as u64;
    const T0SZ: u64 = SIZE_OFFSET;
    const IRGN0_WRITE_BACK: u64 = 0b01 << 8;
    const ORGN0_WRITE_BACK: u64 = 0b01 << 10;
    const SH0_INNER_SHAREABLE: u64 = 0b11 << 12;
    // TG0 = 0b00: 4 KiB.
    const T1SZ: u64 = SIZE_OFFSET << 16;
    const EPD1: u64 = 1 << 23;
    const TG1_4K: u64 = 0b10 << 30;
    const IPS_SHIFT: u64 = 32;
    let ips = if physical_address_range > MAX_PHYSICAL_ADDRESS_RANGE {
        MAX_PHYSICAL_ADDRESS_RANGE
    } else {
        physical_address_range
    };
    T0SZ | IRGN0_WRITE_BACK
        | ORGN0_WRITE_BACK
        | SH0_INNER_SHAREABLE
        | T1SZ
        | EPD1
        | TG1_4K
        | (ips << IPS_SHIFT)
}

/// How a range is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Cacheable (write-back) RAM-like memory: any access size and
    /// alignment, exclusives, speculation; executable at EL1.
    Normal,
    /// Device-nGnRE: accesses happen as written, aligned; never executable.
    Device,
}

impl MemoryKind {
    /// The bits of a block or page descriptor that say this kind.
    const fn leaf_attributes(self) -> u64 {
        use descriptor::{
            ACCESS_FLAG, ATTRIBUTE_INDEX_SHIFT, INNER_SHAREABLE, PRIVILEGED_EXECUTE_NEVER,
            UNPRIVILEGED_EXECUTE_NEVER,
        };
        match self {
            Self::Normal => {
                (attributes::NORMAL_INDEX << ATTRIBUTE_INDEX_SHIFT)
                    | INNER_SHAREABLE
                    | ACCESS_FLAG
                    | UNPRIVILEGED_EXECUTE_NEVER
            }
            // Shareability does not apply to Device memory (always outer
            // shareable): SH stays 0.
            Self::Device => {
                (attributes::DEVICE_INDEX << ATTRIBUTE_INDEX_SHIFT)
                    | ACCESS_FLAG
                    | PRIVILEGED_EXECUTE_NEVER
                    | UNPRIVILEGED_EXECUTE_NEVER
            }
        }
    }

    /// The kind of a MAIR attribute index this map uses.
    const fn from_attribute_index(index: u64) -> Option<Self> {
        match index {
            attributes::NORMAL_INDEX => Some(Self::Normal),
            attributes::DEVICE_INDEX => Some(Self::Device),
            _ => None,
        }
    }

    /// The kind of a MAIR attribute byte (as PAR_EL1 reports it), if it is
    /// one this map uses.
    #[must_use]
    pub const fn from_attribute(attribute: u8) -> Option<Self> {
        match attribute {
            attributes::NORMAL_WRITE_BACK => Some(Self::Normal),
            attributes::DEVICE_NGNRE => Some(Self::Device),
            _ => None,
        }
    }
}

/// `Normal write-back` / `Device-nGnRE`
impl fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Normal => "Normal write-back",
            Self::Device => "Device-nGnRE",
        })
    }
}

/// The block (levels 1, 2) or page (level 3) descriptor that maps
/// `address` as `kind`.
#[must_use]
pub const fn leaf_descriptor(address: u64, kind: MemoryKind, level: u8) -> u64 {
    let page = if level == LAST_LEVEL {
        descriptor::TABLE_OR_PAGE
    } else {
        0
    };
    (address & descriptor::ADDRESS_MASK) | kind.leaf_attributes() | descriptor::VALID | page
}

/// The table descriptor that points at the table at `address`.
#[must_use]
pub const fn table_descriptor(address: u64) -> u64 {
    (address & descriptor::ADDRESS_MASK) | descriptor::TABLE_OR_PAGE | descriptor::VALID
}

/// Why a range was not mapped. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The range is empty (`start >= end`).
    Empty { start: u64, end: u64 },
    /// A bound is not a multiple of [`PAGE_SIZE`].
    Misaligned { address: u64 },
    /// The range ends above [`ADDRESS_LIMIT`].
    OutOfRange { end: u64 },
    /// Part of the range is mapped already, from this address on.
    Overlap { address: u64 },
    /// The range needs more tables than are left of `capacity`.
    OutOfTables { capacity: usize },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty { start, end } => write!(f, "the range {start:#x}..{end:#x} is empty"),
            Self::Misaligned { address } => write!(
                f,
                "{address:#x} is not a multiple of the page size ({PAGE_SIZE:#x})"
            ),
            Self::OutOfRange { end } => write!(
                f,
                "the range ends at {end:#x}, above the translated space ({ADDRESS_LIMIT:#x})"
            ),
            Self::Overlap { address } => write!(f, "{address:#x} is mapped already"),
            Self::OutOfTables { capacity } => {
                write!(f, "all {capacity} translation tables are in use")
            }
        }
    }
}

/// What maps one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub kind: MemoryKind,
    /// The block or page: its first address...
    pub start: u64,
    /// ...and its size ([`PAGE_SIZE`], [`BLOCK_SIZE`] or
    /// [`LARGE_BLOCK_SIZE`]).
    pub size: u64,
    /// The block or page descriptor.
    pub descriptor: u64,
}

/// One translation table: 512 descriptors, aligned to its size as TTBR and
/// table descriptors require.
#[repr(C, align(4096))]
pub struct Table([u64; ENTRIES]);

impl Table {
    /// A table of invalid entries.
    pub const EMPTY: Self = Self([0; ENTRIES]);
}

const _: () = assert!(size_of::<Table>() as u64 == PAGE_SIZE);

/// The bytes one entry of a level-`level` table maps.
const fn entry_size(level: u8) -> u64 {
    1 << (12 + 9 * (LAST_LEVEL - level) as u32)
}

/// The entry of a level-`level` table that translates `address`.
const fn entry_index(level: u8, address: u64) -> usize {
    ((address >> (12 + 9 * (LAST_LEVEL - level) as u32)) as usize) % ENTRIES
}

/// Whether `descriptor`, found at `level`, points to a next-level table.
const fn is_table(descriptor: u64, level: u8) -> bool {
    level < LAST_LEVEL
        && descriptor & descriptor::VALID != 0
        && descriptor & descriptor::TABLE_OR_PAGE != 0
}

/// The entries of a level-`level` table that `range` touches, in order:
/// the entry's index, the part of `range` it translates, and whether that
/// part is the entry's whole span (so a block or page can map it).
fn entries(level: u8, range: Range<u64>) -> impl Iterator<Item = (usize, Range<u64>, bool)> {
    let size = entry_size(level);
    let mut start = range.start;
    core::iter::from_fn(move || {
        if start >= range.end {
            return None;
        }
        let entry_start = start & !(size - 1);
        let entry_end = entry_start + size;
        let end = entry_end.min(range.end);
        let item = (
            entry_index(level, start),
            start..end,
            start == entry_start && end == entry_end,
        );
        start = end;
        Some(item)
    })
}

/// How many new tables mapping `range` under an empty level-`level` table
/// takes (the empty table itself not counted).
fn tables_below(level: u8, range: Range<u64>) -> usize {
    entries(level, range)
        .filter(|(_, _, whole)| !whole)
        .map(|(_, part, _)| 1 + tables_below(level + 1, part))
        .sum()
}

/// An identity map under construction, in tables the caller provides.
///
/// The tables are referred to by address (descriptors hold them), so the
/// storage is borrowed for the map's lifetime: it cannot move. On the
/// guest, where the MMU is off or identity-mapped, a table's address is
/// its physical address.
pub struct TranslationTables<'a> {
    /// `tables[0]` is the level-1 table; `tables[..used]` are in use.
    tables: &'a mut [Table],
    used: usize,
}

impl fmt::Debug for TranslationTables<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TranslationTables")
            .field("root", &self.root_address())
            .field("used", &self.used)
            .field("capacity", &self.tables.len())
            .finish()
    }
}

impl<'a> TranslationTables<'a> {
    /// An empty map in `tables` (all cleared here); the first becomes the
    /// level-1 table.
    ///
    /// # Errors
    /// `OutOfTables` when `tables` is empty.
    pub fn new(tables: &'a mut [Table]) -> Result<Self, MapError> {
        if tables.is_empty() {
            return Err(MapError::OutOfTables { capacity: 0 });
        }
        for table in tables.iter_mut() {
            table.0.fill(0);
        }
        Ok(Self { tables, used: 1 })
    }

    /// The level-1 table's address: TTBR0_EL1's base address.
    #[must_use]
    pub fn root_address(&self) -> u64 {
        self.tables.as_ptr() as u64
    }

    /// Tables in use (the level-1 table included) and how many there are.
    #[must_use]
    pub fn usage(&self) -> (usize, usize) {
        (self.used, self.tables.len())
    }

    /// Maps `range` (page-aligned bounds) to itself as `kind`, with the
    /// largest blocks that fit: 1 GiB and 2 MiB where the range covers one
    /// wholly and aligned, pages elsewhere. Either all of the range is
    /// mapped or, on an error, nothing changed.
    ///
    /// # Errors
    /// See [`MapError`].
    pub fn map(&mut self, range: Range<u64>, kind: MemoryKind) -> Result<(), MapError> {
        check_range(&range)?;
        let mut needed = 0;
        self.check(0, FIRST_LEVEL, range.clone(), &mut needed)?;
        if needed > self.tables.len() - self.used {
            return Err(MapError::OutOfTables {
                capacity: self.tables.len(),
            });
        }
        self.apply(0, FIRST_LEVEL, range, kind);
        Ok(())
    }

    /// What maps `address`, if anything.
    #[must_use]
    pub fn lookup(&self, address: u64) -> Option<Mapping> {
        if address >= ADDRESS_LIMIT {
            return None;
        }
        let mut table = 0;
        for level in FIRST_LEVEL..=LAST_LEVEL {
            let entry = self.tables[table].0[entry_index(level, address)];
            if entry & descriptor::VALID == 0 {
                return None;
            }
            if is_table(entry, level) {
                table = self.table_index(entry);
                continue;
            }
            let size = entry_size(level);
            let index =
                (entry & descriptor::ATTRIBUTE_INDEX_MASK) >> descriptor::ATTRIBUTE_INDEX_SHIFT;
            return Some(Mapping {
                kind: MemoryKind::from_attribute_index(index)?,
                start: address & !(size - 1),
                size,
                descriptor: entry,
            });
        }
        None
    }

    /// Finds what mapping `range` needs: fails on an overlap, and adds the
    /// new tables it takes to `needed`.
    fn check(
        &self,
        table: usize,
        level: u8,
        range: Range<u64>,
        needed: &mut usize,
    ) -> Result<(), MapError> {
        for (index, part, whole) in entries(level, range) {
            let entry = self.tables[table].0[index];
            if entry & descriptor::VALID == 0 {
                if !whole {
                    *needed += 1 + tables_below(level + 1, part);
                }
            } else if is_table(entry, level) {
                self.check(self.table_index(entry), level + 1, part, needed)?;
            } else {
                return Err(MapError::Overlap {
                    address: part.start,
                });
            }
        }
        Ok(())
    }

    /// Maps `range`, which `check` found free, with enough tables left.
    /// A new table is filled before the entry that points to it is written,
    /// so a table walk (with the MMU on) never sees it half made.
    fn apply(&mut self, table: usize, level: u8, range: Range<u64>, kind: MemoryKind) {
        for (index, part, whole) in entries(level, range) {
            let entry = self.tables[table].0[index];
            if entry & descriptor::VALID != 0 {
                let child = self.table_index(entry);
                self.apply(child, level + 1, part, kind);
            } else if whole {
                self.write(table, index, leaf_descriptor(part.start, kind, level));
            } else {
                let child = self.used;
                self.used += 1;
                self.apply(child, level + 1, part, kind);
                let address = self.table_address(child);
                self.write(table, index, table_descriptor(address));
            }
        }
    }

    /// One store of `value` into an entry: a table walk sees the old or
    /// the new descriptor, never a mix.
    fn write(&mut self, table: usize, index: usize, value: u64) {
        let entry: *mut u64 = &mut self.tables[table].0[index];
        // SAFETY: `entry` comes from a live `&mut`, so it is valid and
        // aligned; volatile keeps the store a single 64-bit store.
        unsafe { entry.write_volatile(value) };
    }

    fn table_address(&self, index: usize) -> u64 {
        self.root_address() + index as u64 * PAGE_SIZE
    }

    /// The index of the table a table descriptor points to: one of ours,
    /// since only `apply` writes table descriptors.
    fn table_index(&self, entry: u64) -> usize {
        ((entry & descriptor::ADDRESS_MASK) - self.root_address()) as usize / PAGE_SIZE as usize
    }
}

/// Page-aligned, not empty, inside the translated space.
fn check_range(range: &Range<u64>) -> Result<(), MapError> {
    if range.start >= range.end {
        return Err(MapError::Empty {
            start: range.start,
            end: range.end,
        });
    }
    for address in [range.start, range.end] {
        if !address.is_multiple_of(PAGE_SIZE) {
            return Err(MapError::Misaligned { address });
        }
    }
    if range.end > ADDRESS_LIMIT {
        return Err(MapError::OutOfRange { end: range.end });
    }
    Ok(())
}

/// `range` grown to whole pages.
const fn pages_around(range: &Range<u64>) -> Range<u64> {
    (range.start & !(PAGE_SIZE - 1))..range.end.next_multiple_of(PAGE_SIZE)
}

/// `range` shrunk to whole pages.
const fn pages_within(range: &Range<u64>) -> Range<u64> {
    range.start.next_multiple_of(PAGE_SIZE)..(range.end & !(PAGE_SIZE - 1))
}

/// What an AT S1E1R found for an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HardwareTranslation {
    /// The output address (with the MMU on and this map, the address itself).
    pub physical: u64,
    /// The MAIR attribute byte the translation uses ([`MemoryKind::from_attribute`]).
    pub attributes: u8,
}

/// Decodes PAR_EL1 after an address translation of `address`: `None` if
/// the translation faulted (PAR_EL1.F).
#[must_use]
pub const fn decode_translation_result(par: u64, address: u64) -> Option<HardwareTranslation> {
    const FAULT: u64 = 1 << 0;
    if par & FAULT != 0 {
        return None;
    }
    Some(HardwareTranslation {
        physical: (par & descriptor::ADDRESS_MASK) | (address & (PAGE_SIZE - 1)),
        attributes: (par >> 56) as u8,
    })
}

// The SDK's own map, in its static pool.

/// The pool: zeroes, so in the BSS. Only ever referred to through `TABLES`.
struct TablePool(UnsafeCell<[Table; TABLE_CAPACITY]>);

// SAFETY: the pool is borrowed once, by `with_tables` under the `TABLES`
// lock, and only used through that lock afterwards.
unsafe impl Sync for TablePool {}

static TABLE_POOL: TablePool = TablePool(UnsafeCell::new([const { Table::EMPTY }; TABLE_CAPACITY]));

/// The SDK's map, made on first use.
static TABLES: Mutex<Option<TranslationTables<'static>>> = Mutex::new(None);

/// Set by the [`enable`] that published the tables.
static ENABLED: AtomicBool = AtomicBool::new(false);

fn with_tables<R>(action: impl FnOnce(&mut TranslationTables<'static>) -> R) -> R {
    let mut tables = TABLES.lock();
    if tables.is_none() {
        // SAFETY: the only reference ever made to TABLE_POOL: made once,
        // while the lock is held and no map exists, and then kept in
        // TABLES for the rest of the program.
        let pool = unsafe { &mut *TABLE_POOL.0.get() };
        *tables = TranslationTables::new(pool).ok();
    }
    match tables.as_mut() {
        Some(tables) => action(tables),
        None => unreachable!("TABLE_CAPACITY is not 0"),
    }
}

/// Maps `range` to itself as `kind` in the SDK's tables; see
/// [`TranslationTables::map`]. With the MMU on, the new entries are in
/// force (for every vCPU) when this returns.
///
/// # Errors
/// See [`MapError`].
pub fn map(range: Range<u64>, kind: MemoryKind) -> Result<(), MapError> {
    let result = with_tables(|tables| tables.map(range, kind));
    arch::translation_tables_written();
    result
}

/// What maps `address` in the SDK's tables, if anything.
#[must_use]
pub fn lookup(address: u64) -> Option<Mapping> {
    with_tables(|tables| tables.lookup(address))
}

/// Tables of the SDK's pool in use, and [`TABLE_CAPACITY`].
#[must_use]
pub fn usage() -> (usize, usize) {
    with_tables(|tables| tables.usage())
}

/// Which part of the default map failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultsError {
    /// The device tree has no `/memory` node.
    NoMemoryNode,
    Ram(MapError),
    Gic(MapError),
    Console(MapError),
}

impl fmt::Display for DefaultsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoMemoryNode => f.write_str("the device tree has no /memory node"),
            Self::Ram(error) => write!(f, "mapping RAM: {error}"),
            Self::Gic(error) => write!(f, "mapping the GIC: {error}"),
            Self::Console(error) => write!(f, "mapping the UART: {error}"),
        }
    }
}

/// Maps what every SDK guest uses: its RAM (the first `/memory` range,
/// whole pages of it) as Normal, every `reg` range of the GIC node (if
/// there is one) and the PL011 console's page as Device. Passthrough and
/// other devices are the caller's to map.
///
/// # Errors
/// See [`DefaultsError`].
pub fn map_defaults(tree: &DeviceTree<'_>) -> Result<(), DefaultsError> {
    let ram = tree.memory().ok_or(DefaultsError::NoMemoryNode)?;
    map(pages_within(&ram), MemoryKind::Normal).map_err(DefaultsError::Ram)?;
    let gic_regs = tree.compatible_regs(gic::GICV3_COMPATIBLE).or_else(|| {
        gic::GICV2_COMPATIBLES
            .iter()
            .find_map(|compatible| tree.compatible_regs(compatible))
    });
    for range in gic_regs.into_iter().flatten().flatten() {
        map(pages_around(&range), MemoryKind::Device).map_err(DefaultsError::Gic)?;
    }
    let console = UART_BASE as u64;
    map(console..console + PAGE_SIZE, MemoryKind::Device).map_err(DefaultsError::Console)
}

/// Why the MMU was not turned on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnableError {
    /// This vCPU's MMU is on already.
    AlreadyOn,
    /// Another vCPU called [`enable`]: call [`enable_this_cpu`].
    AlreadyEnabled,
    /// [`enable_this_cpu`] before any [`enable`].
    NotEnabled,
    /// `address`, which the program needs, is not mapped as `needs` (the
    /// image as Normal, the console as Device).
    NotMapped { address: u64, needs: MemoryKind },
}

impl fmt::Display for EnableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyOn => f.write_str("this vCPU's MMU is on already"),
            Self::AlreadyEnabled => {
                f.write_str("another vCPU enabled the MMU; this one calls enable_this_cpu")
            }
            Self::NotEnabled => f.write_str("no vCPU has enabled the MMU yet"),
            Self::NotMapped { address, needs } => {
                write!(f, "{address:#x} is not mapped as {needs}")
            }
        }
    }
}

/// Whether this vCPU's MMU is on (SCTLR_EL1.M).
#[must_use]
pub fn is_enabled() -> bool {
    arch::system_control() & SCTLR_MMU != 0
}

/// Turns the MMU and caches on, on this vCPU, with the SDK's tables:
/// MAIR_EL1, TCR_EL1 and TTBR0_EL1 written, the local TLB and instruction
/// cache invalidated, then SCTLR_EL1 M, C and I set and A and WXN cleared.
/// The registers are published for the other vCPUs (see the module
/// documentation). Call it once, on any vCPU.
///
/// # Errors
/// `AlreadyOn`, `AlreadyEnabled`, or `NotMapped` when the image is not all
/// Normal or the console page not Device.
pub fn enable() -> Result<(), EnableError> {
    if is_enabled() {
        return Err(EnableError::AlreadyOn);
    }
    let registers = with_tables(|tables| {
        let image = arch::image_range();
        for address in (image.start..image.end).step_by(PAGE_SIZE as usize) {
            require(tables, address, MemoryKind::Normal)?;
        }
        require(tables, UART_BASE as u64, MemoryKind::Device)?;
        Ok(TranslationRegisters {
            mair: attributes::MAIR,
            tcr: translation_control(arch::physical_address_range()),
            ttbr0: tables.root_address(),
            sctlr_set: SCTLR_ENABLE,
        })
    })?;
    if ENABLED.swap(true, Ordering::AcqRel) {
        return Err(EnableError::AlreadyEnabled);
    }
    arch::publish_translation(registers);
    // SAFETY: no vCPU has had its caches on (ENABLED was clear), so the
    // image's data (tables included) is all in memory, written with the
    // caches off; what the lines hold, if anything, is stale.
    unsafe { arch::invalidate_data_cache(arch::image_range()) };
    // SAFETY: the map was just checked to cover the image (code, data,
    // stacks, tables) as Normal and the console as Device, identity-mapped,
    // so everything this program uses stays where it is; the image's lines
    // were invalidated above.
    unsafe { arch::enable_published_translation() };
    Ok(())
}

fn require(
    tables: &TranslationTables<'_>,
    address: u64,
    needs: MemoryKind,
) -> Result<(), EnableError> {
    match tables.lookup(address) {
        Some(mapping) if mapping.kind == needs => Ok(()),
        _ => Err(EnableError::NotMapped { address, needs }),
    }
}

/// Turns this vCPU's MMU and caches on with the tables another vCPU
/// enabled, for a vCPU that was running before that [`enable`] (vCPUs
/// started after it do this in their entry code). Does nothing if this
/// vCPU's MMU is on already.
///
/// # Errors
/// `NotEnabled` when no vCPU has called [`enable`].
pub fn enable_this_cpu() -> Result<(), EnableError> {
    if is_enabled() {
        return Ok(());
    }
    if arch::published_translation().is_none() {
        return Err(EnableError::NotEnabled);
    }
    // SAFETY: `enable` checked that the published map covers the image
    // as Normal and the console as Device, identity-mapped.
    unsafe { arch::enable_published_translation() };
    Ok(())
}

/// Drops every cached EL1 translation of this VM, on every vCPU (TLBI
/// VMALLE1IS with the barriers around it). [`map`] never needs it; a
/// program that changes a valid entry by hand does, between writing it
/// invalid and writing the new one.
pub fn invalidate_translations() {
    arch::invalidate_translations();
}

/// Translates `address` with the processor's own table walk (AT S1E1R,
/// as an EL1 read): `None` if that faults. With the MMU off it reports the
/// address itself and the attribute of MMU-off accesses (Device-nGnRnE,
/// 0x00).
#[must_use]
pub fn translate_by_hardware(address: u64) -> Option<HardwareTranslation> {
    decode_translation_result(arch::translate_read(address), address)
}

// Accesses for tests of pages a hypervisor traps. A compiler for a
// strict-align target never emits an unaligned access, and decides itself
// when to pair or split accesses; each of these is exactly one instruction.

/// One 64-bit load (`ldr x`) from `address`, aligned or not.
///
/// # Safety
/// The 8 bytes at `address` must be mapped and readable; unaligned, they
/// must be Normal memory (an unaligned Device access takes an alignment
/// fault).
#[must_use]
pub unsafe fn load_u64_unaligned(address: usize) -> u64 {
    // SAFETY: the caller vouches for the load.
    unsafe { arch::load_u64_unaligned(address) }
}

/// One 64-bit store (`str x`) to `address`, aligned or not.
///
/// # Safety
/// As [`load_u64_unaligned`], writable, and the store must change nothing
/// the program relies on but what it means to change.
pub unsafe fn store_u64_unaligned(address: usize, value: u64) {
    // SAFETY: the caller vouches for the store.
    unsafe { arch::store_u64_unaligned(address, value) }
}

/// One load pair (`ldp x, x`) of the 16 bytes at `address`: the first
/// 8 bytes, then the next 8.
///
/// # Safety
/// As [`load_u64_unaligned`], for 16 bytes.
#[must_use]
pub unsafe fn load_pair_u64(address: usize) -> (u64, u64) {
    // SAFETY: the caller vouches for the load.
    unsafe { arch::load_pair_u64(address) }
}

/// One store pair (`stp x, x`): `first` to the 8 bytes at `address`,
/// `second` to the next 8.
///
/// # Safety
/// As [`store_u64_unaligned`], for 16 bytes.
pub unsafe fn store_pair_u64(address: usize, first: u64, second: u64) {
    // SAFETY: the caller vouches for the store.
    unsafe { arch::store_pair_u64(address, first, second) }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;
    use std::vec::Vec;

    use super::*;

    const NORMAL_PAGE_BITS: u64 = 0b11 | (1 << 2) | (0b11 << 8) | (1 << 10) | (1 << 54);
    const DEVICE_PAGE_BITS: u64 = 0b11 | (1 << 10) | (1 << 53) | (1 << 54);

    fn pool(tables: usize) -> Vec<Table> {
        (0..tables).map(|_| Table::EMPTY).collect()
    }

    /// Every descriptor of every table, to show a refused map changed
    /// nothing.
    fn snapshot(tables: &TranslationTables<'_>) -> Vec<u64> {
        tables
            .tables
            .iter()
            .flat_map(|table| table.0.iter().copied())
            .collect()
    }

    #[test]
    fn register_values() {
        assert_eq!(attributes::MAIR, 0xFF04);
        // T0SZ 25, IRGN0/ORGN0 write-back, SH0 inner, T1SZ 25, EPD1, TG1
        // 4 KiB, IPS 44 bits.
        assert_eq!(translation_control(0b100), 0x4_8099_3519);
        // 52-bit PARange: IPS stays at 48 bits.
        assert_eq!(translation_control(0b110), 0x5_8099_3519);
        assert_eq!(translation_control(0b000), 0x0_8099_3519);
        assert_eq!(SCTLR_ENABLE, 0x1005);
    }

    #[test]
    fn normal_and_device_pages_have_their_descriptor_bits() {
        let mut storage = pool(6);
        let mut tables = TranslationTables::new(&mut storage).unwrap();
        tables
            .map(0x4000_0000..0x4000_1000, MemoryKind::Normal)
            .unwrap();
        tables
            .map(0x0900_0000..0x0900_1000, MemoryKind::Device)
            .unwrap();
        // Level 1, and a level-2 and a level-3 table for each page.
        assert_eq!(tables.usage(), (5, 6));
        let ram = tables.lookup(0x4000_0abc).unwrap();
        assert_eq!(
            ram,
            Mapping {
                kind: MemoryKind::Normal,
                start: 0x4000_0000,
                size: PAGE_SIZE,
                descriptor: 0x4000_0000 | NORMAL_PAGE_BITS,
            }
        );
        let uart = tables.lookup(0x0900_0018).unwrap();
        assert_eq!(uart.descriptor, 0x0900_0000 | DEVICE_PAGE_BITS);
        assert_eq!(uart.kind, MemoryKind::Device);
        // GiB 0 has its level-2 table already; another 2 MiB of it needs
        // one more level-3 table.
        tables
            .map(0x0800_0000..0x0800_1000, MemoryKind::Device)
            .unwrap();
        assert_eq!(tables.usage(), (6, 6));
        let root = tables.root_address();
        let level1 = &tables.tables[0].0;
        assert_eq!(level1[1] & 0b11, 0b11, "table descriptor");
        let level2 = level1[1] & descriptor::ADDRESS_MASK;
        assert!((root + PAGE_SIZE..root + 6 * PAGE_SIZE).contains(&level2));
        assert!(level2.is_multiple_of(PAGE_SIZE));
        assert_eq!(level1[1] & !descriptor::ADDRESS_MASK, 0b11, "no other bits");
        assert_eq!(level1[2], 0);
        assert_eq!(tables.lookup(0x4000_1000), None);
        assert_eq!(tables.lookup(0x3FFF_F000), None);
        assert_eq!(tables.lookup(ADDRESS_LIMIT), None);
    }

    #[test]
    fn aligned_two_mib_runs_become_blocks() {
        let mut storage = pool(4);
        let mut tables = TranslationTables::new(&mut storage).unwrap();
        tables
            .map(0x4000_0000..0x4060_0000, MemoryKind::Normal)
            .unwrap();
        // Level 1 and one level-2 table with three block entries.
        assert_eq!(tables.usage().0, 2);
        for start in [0x4000_0000, 0x4020_0000, 0x4040_0000] {
            let block = tables.lookup(start + 0x1234).unwrap();
            assert_eq!(block.start, start);
            assert_eq!(block.size, BLOCK_SIZE);
            assert_eq!(
                block.descriptor,
                start | (NORMAL_PAGE_BITS & !0b10),
                "a block: bit 1 clear"
            );
            assert_eq!(
                block.descriptor,
                leaf_descriptor(start, MemoryKind::Normal, 2)
            );
        }
        assert_eq!(tables.lookup(0x4060_0000), None);
    }

    #[test]
    fn unaligned_ends_get_pages_and_the_middle_blocks() {
        let mut storage = pool(8);
        let mut tables = TranslationTables::new(&mut storage).unwrap();
        tables
            .map(0x4010_0000..0x4050_0000, MemoryKind::Device)
            .unwrap();
        // Level 1, level 2, and a level-3 table for each partial 2 MiB.
        assert_eq!(tables.usage().0, 4);
        let first = tables.lookup(0x4010_0000).unwrap();
        assert_eq!((first.start, first.size), (0x4010_0000, PAGE_SIZE));
        let last_page = tables.lookup(0x401F_F000).unwrap();
        assert_eq!(last_page.size, PAGE_SIZE);
        let middle = tables.lookup(0x4030_0000).unwrap();
        assert_eq!((middle.start, middle.size), (0x4020_0000, BLOCK_SIZE));
        assert_eq!(middle.descriptor & 0b11, 0b01);
        let tail = tables.lookup(0x404F_F000).unwrap();
        assert_eq!((tail.start, tail.size), (0x404F_F000, PAGE_SIZE));
        assert_eq!(tail.descriptor, 0x404F_F000 | DEVICE_PAGE_BITS);
        assert_eq!(tables.lookup(0x400F_F000), None);
        assert_eq!(tables.lookup(0x4050_0000), None);
    }

    #[test]
    fn a_whole_aligned_gib_is_one_level1_block() {
        let mut storage = pool(2);
        let mut tables = TranslationTables::new(&mut storage).unwrap();
        tables
            .map(0x4000_0000..0xC000_0000, MemoryKind::Normal)
            .unwrap();
        assert_eq!(tables.usage().0, 1, "no table besides level 1");
        let block = tables.lookup(0x8765_4321).unwrap();
        assert_eq!((block.start, block.size), (0x8000_0000, LARGE_BLOCK_SIZE));
        assert_eq!(block.descriptor & 0b11, 0b01);
    }

    #[test]
    fn bad_ranges_are_refused_with_their_reason() {
        let mut storage = pool(4);
        let mut tables = TranslationTables::new(&mut storage).unwrap();
        let normal = MemoryKind::Normal;
        assert_eq!(
            tables.map(0x4000_0000..0x4000_0000, normal),
            Err(MapError::Empty {
                start: 0x4000_0000,
                end: 0x4000_0000
            })
        );
        assert_eq!(
            tables.map(
                Range {
                    start: 0x4000_2000,
                    end: 0x4000_1000
                },
                normal
            ),
            Err(MapError::Empty {
                start: 0x4000_2000,
                end: 0x4000_1000
            })
        );
        assert_eq!(
            tables.map(0x4000_0800..0x4000_1000, normal),
            Err(MapError::Misaligned {
                address: 0x4000_0800
            })
        );
        assert_eq!(
            tables.map(0x4000_0000..0x4000_1008, normal),
            Err(MapError::Misaligned {
                address: 0x4000_1008
            })
        );
        assert_eq!(
            tables.map(ADDRESS_LIMIT - PAGE_SIZE..ADDRESS_LIMIT + PAGE_SIZE, normal),
            Err(MapError::OutOfRange {
                end: ADDRESS_LIMIT + PAGE_SIZE
            })
        );
        // The last page of the space is fine.
        assert_eq!(
            tables.map(ADDRESS_LIMIT - PAGE_SIZE..ADDRESS_LIMIT, normal),
            Ok(())
        );
        assert_eq!(
            MapError::Misaligned { address: 0x10 }.to_string(),
            "0x10 is not a multiple of the page size (0x1000)"
        );
    }

    #[test]
    fn overlaps_are_refused_and_change_nothing() {
        let mut storage = pool(8);
        let mut tables = TranslationTables::new(&mut storage).unwrap();
        tables
            .map(0x4000_0000..0x4020_0000, MemoryKind::Normal)
            .unwrap(); // a block
        tables
            .map(0x0900_0000..0x0900_1000, MemoryKind::Device)
            .unwrap(); // a page
        let before = snapshot(&tables);
        let used = tables.usage();
        // The same range, a page inside the block, a range running into
        // the block, a range around the page, the page as the other kind.
        for (range, first_mapped) in [
            (0x4000_0000..0x4020_0000, 0x4000_0000),
            (0x4010_0000..0x4010_1000, 0x4010_0000),
            (0x3FF0_0000..0x4000_1000, 0x4000_0000),
            (0x08FF_E000..0x0900_2000, 0x0900_0000),
            (0x0900_0000..0x0900_1000, 0x0900_0000),
        ] {
            for kind in [MemoryKind::Normal, MemoryKind::Device] {
                assert_eq!(
                    tables.map(range.clone(), kind),
                    Err(MapError::Overlap {
                        address: first_mapped
                    }),
                    "{range:x?}"
                );
            }
        }
        assert_eq!(snapshot(&tables), before, "a refused map wrote nothing");
        assert_eq!(tables.usage(), used);
        assert_eq!(tables.lookup(0x3FF0_0000), None);
        assert_eq!(tables.lookup(0x08FF_E000), None);
        // Neighbours are not overlaps.
        tables
            .map(0x08FF_F000..0x0900_0000, MemoryKind::Device)
            .unwrap();
        tables
            .map(0x0900_1000..0x0900_2000, MemoryKind::Normal)
            .unwrap();
        tables
            .map(0x3FE0_0000..0x4000_0000, MemoryKind::Normal)
            .unwrap();
        assert_eq!(
            tables.lookup(0x0900_1000).map(|mapping| mapping.kind),
            Some(MemoryKind::Normal)
        );
    }

    #[test]
    fn running_out_of_tables_is_refused_up_front() {
        // Level 1 and one more: a partial 2 MiB needs two (level 2, level 3).
        let mut storage = pool(2);
        let mut tables = TranslationTables::new(&mut storage).unwrap();
        let before = snapshot(&tables);
        assert_eq!(
            tables.map(0x4000_0000..0x4000_1000, MemoryKind::Normal),
            Err(MapError::OutOfTables { capacity: 2 })
        );
        assert_eq!(snapshot(&tables), before);
        assert_eq!(tables.usage(), (1, 2));
        // A block needs only the level-2 table.
        tables
            .map(0x4000_0000..0x4020_0000, MemoryKind::Normal)
            .unwrap();
        assert_eq!(tables.usage(), (2, 2));
        assert_eq!(
            TranslationTables::new(&mut []).map(|_| ()),
            Err(MapError::OutOfTables { capacity: 0 })
        );
    }

    #[test]
    fn existing_tables_are_reused() {
        let mut storage = pool(4);
        let mut tables = TranslationTables::new(&mut storage).unwrap();
        tables
            .map(0x4000_0000..0x4000_1000, MemoryKind::Normal)
            .unwrap();
        assert_eq!(tables.usage().0, 3);
        // The rest of that 2 MiB goes into the same level-3 table, even
        // the part that would otherwise be a block.
        tables
            .map(0x4000_1000..0x4040_0000, MemoryKind::Normal)
            .unwrap();
        assert_eq!(tables.usage().0, 3);
        assert_eq!(tables.lookup(0x401F_F000).unwrap().size, PAGE_SIZE);
        assert_eq!(tables.lookup(0x4020_0000).unwrap().size, BLOCK_SIZE);
    }

    #[test]
    fn table_counts_for_empty_subtrees() {
        // From level 1: one level-2 table, plus a level-3 table per
        // partial 2 MiB at either end.
        assert_eq!(tables_below(FIRST_LEVEL, 0x4000_0000..0x4000_1000), 2);
        assert_eq!(tables_below(FIRST_LEVEL, 0x4010_0000..0x4050_0000), 3);
        assert_eq!(tables_below(FIRST_LEVEL, 0x4000_0000..0x4060_0000), 1);
        assert_eq!(tables_below(FIRST_LEVEL, 0x4000_0000..0x8000_0000), 0);
        // Across a GiB boundary: a level-2 table on each side.
        assert_eq!(tables_below(FIRST_LEVEL, 0x3FE0_0000..0x4020_0000), 2);
    }

    #[test]
    fn hardware_translation_results_are_decoded() {
        // F clear, ATTR 0xFF, PA 0x4008_1000 (SH and NS bits set too).
        let par = (0xFF << 56) | 0x4008_1000 | (0b11 << 7) | (1 << 9);
        assert_eq!(
            decode_translation_result(par, 0x4008_1234),
            Some(HardwareTranslation {
                physical: 0x4008_1234,
                attributes: 0xFF
            })
        );
        assert_eq!(MemoryKind::from_attribute(0xFF), Some(MemoryKind::Normal));
        assert_eq!(MemoryKind::from_attribute(0x04), Some(MemoryKind::Device));
        assert_eq!(MemoryKind::from_attribute(0x00), None);
        // F set: a fault (here a level-3 translation fault).
        assert_eq!(decode_translation_result(0b111 << 1 | 1, 0x4008_1234), None);
    }

    #[test]
    fn page_rounding() {
        assert_eq!(
            pages_around(&(0x0801_0000..0x0801_0100)),
            0x0801_0000..0x0801_1000
        );
        assert_eq!(
            pages_within(&(0x4000_0100..0x4400_0000)),
            0x4000_1000..0x4400_0000
        );
    }
}
