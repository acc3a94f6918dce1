//! Translation tables: 4 KiB granule, 48-bit input addresses, four levels,
//! 1 GiB and 2 MiB blocks wherever alignment allows.
//!
//! The builder is portable: it reaches table memory only through a
//! [`TableStore`], which is a static pool of pages on the target and the
//! host heap in unit tests. The same code serves the hypervisor's own EL2
//! stage-1 map and (with the `Stage2` regime) the guests' stage-2 tables.
//!
//! Why not `aarch64-paging`: the EL2 map must be built before the MMU and
//! heap are up, from a fixed pool, and the table-walk code is small enough
//! that owning it keeps the descriptor encoding for both regimes in one
//! place next to the tests that pin it down.

use crate::memory::address::{PAGE_SIZE, PhysAddr};

/// Entries per table.
pub const ENTRIES: usize = 512;
/// Bits of input address the EL2 stage-1 map translates (TCR_EL2.T0SZ = 16),
/// walked from level 0.
pub const EL2_INPUT_ADDRESS_BITS: u32 = 48;
/// Bits of guest-physical address stage 2 translates (VTCR_EL2.T0SZ = 25),
/// walked from a single level-1 table (VTCR_EL2.SL0 = 1). 512 GiB is far
/// more than any guest here needs, and a 39-bit space fits every CPU's
/// physical address range, which a 48-bit one would not (Cortex-A72: 44).
pub const STAGE2_INPUT_ADDRESS_BITS: u32 = tessera_platform::guest::PHYSICAL_ADDRESS_BITS;

/// One 4 KiB translation table.
#[repr(C, align(4096))]
#[derive(Clone)]
pub struct Table(pub [u64; ENTRIES]);

impl Table {
    pub const EMPTY: Self = Self([0; ENTRIES]);
}

/// Where tables live. Implementations hand out zeroed, 4 KiB-aligned tables
/// and give access to tables they handed out.
pub trait TableStore {
    /// A new zeroed table, or `None` when the store is exhausted.
    fn allocate_table(&mut self) -> Option<PhysAddr>;
    /// The table at `address`, which this store handed out earlier.
    fn table_mut(&mut self, address: PhysAddr) -> &mut Table;
}

/// The TLB and barrier work a tree's owner does when a live entry changes;
/// the table code decides *when* (break-before-make), the implementation
/// knows *how*. For stage 2, under the VM's VMID (its VTTBR_EL2 loaded):
/// publish is `DSB ISHST`; invalidating one page is `TLBI IPAS2E1IS` with
/// the IPA, then `DSB ISH`, then `TLBI VMALLE1IS` (TLBs may hold combined
/// stage 1+2 entries, which an IPA-based TLBI does not reach), `DSB ISH`,
/// `ISB`; a larger span is `TLBI VMALLS12E1IS`, `DSB ISH`, `ISB` (a TLB
/// may hold a block as smaller entries). For EL2 stage 1: `TLBI VAE2IS`
/// per page or `TLBI ALLE2IS`, then `DSB ISH`, `ISB`.
pub trait TlbMaintenance {
    /// Makes the table stores so far visible to the translation table
    /// walkers of every CPU that may use the tree.
    fn publish(&mut self);
    /// The entry translating `[input, input + span)` is now invalid and
    /// published: removes every cached translation of that range from every
    /// CPU that may hold one, and waits until that is complete.
    fn invalidate(&mut self, input: u64, span: u64);
}

/// The translation regime whose descriptor format to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Regime {
    /// EL2 stage 1 (the hypervisor's own map), with MAIR_EL2 as set by
    /// [`MAIR_EL2_VALUE`].
    El2Stage1,
    /// Stage 2 (guest-physical to host-physical).
    Stage2,
}

/// Memory type of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Normal memory, inner and outer write-back cacheable, inner shareable.
    Normal,
    /// Device-nGnRE: MMIO registers.
    Device,
}

/// What a mapping allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapAttributes {
    pub kind: MemoryKind,
    pub writable: bool,
    pub executable: bool,
}

impl MapAttributes {
    pub const DEVICE: Self = Self {
        kind: MemoryKind::Device,
        writable: true,
        executable: false,
    };
    pub const RAM: Self = Self {
        kind: MemoryKind::Normal,
        writable: true,
        executable: false,
    };
    pub const CODE: Self = Self {
        kind: MemoryKind::Normal,
        writable: false,
        executable: true,
    };
    pub const READ_ONLY: Self = Self {
        kind: MemoryKind::Normal,
        writable: false,
        executable: false,
    };
}

/// MAIR_EL2: attribute index 0 is Device-nGnRE, index 1 is Normal
/// write-back read/write-allocate (inner and outer).
pub const MAIR_EL2_VALUE: u64 = 0x04 | (0xFF << 8);
const MAIR_INDEX_DEVICE: u64 = 0;
const MAIR_INDEX_NORMAL: u64 = 1;

const DESCRIPTOR_VALID: u64 = 1 << 0;
/// At levels 0-2: next-level table; at level 3: page.
const DESCRIPTOR_TABLE_OR_PAGE: u64 = 1 << 1;
const ACCESS_FLAG: u64 = 1 << 10;
const SHAREABILITY_INNER: u64 = 0b11 << 8;
const EXECUTE_NEVER: u64 = 1 << 54;
const OUTPUT_ADDRESS_MASK: u64 = 0x0000_FFFF_FFFF_F000;
/// Stage 1, regime with one privilege level: AP[2] (bit 7) is read-only and
/// AP[1] (bit 6) is RES1.
const STAGE1_AP_READ_ONLY: u64 = 1 << 7;
const STAGE1_AP_RES1: u64 = 1 << 6;
/// Stage 2: S2AP bits 7:6 (read is bit 6, write is bit 7).
const STAGE2_AP_READ: u64 = 1 << 6;
const STAGE2_AP_WRITE: u64 = 1 << 7;
/// Stage 2 MemAttr bits 5:2.
const STAGE2_MEMATTR_DEVICE_NGNRE: u64 = 0b0001 << 2;
const STAGE2_MEMATTR_NORMAL_WB: u64 = 0b1111 << 2;

/// Errors from building a map. They mean a hypervisor bug or an impossible
/// configuration, never guest behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Input, output or size not page-aligned.
    Misaligned,
    /// The range leaves the 48-bit input space or wraps.
    OutOfRange,
    /// Part of the range is mapped already.
    AlreadyMapped { input: u64 },
    /// The table store ran out of tables.
    OutOfTables,
}

/// The bytes covered by one entry at `level`.
const fn entry_span(level: usize) -> u64 {
    1 << (12 + 9 * (3 - level))
}

const fn entry_index(input: u64, level: usize) -> usize {
    ((input >> (12 + 9 * (3 - level))) & (ENTRIES as u64 - 1)) as usize
}

impl Regime {
    /// The level of the root table.
    #[must_use]
    pub const fn root_level(self) -> usize {
        match self {
            Self::El2Stage1 => 0,
            Self::Stage2 => 1,
        }
    }

    /// Bits of input address the regime translates.
    #[must_use]
    pub const fn input_address_bits(self) -> u32 {
        match self {
            Self::El2Stage1 => EL2_INPUT_ADDRESS_BITS,
            Self::Stage2 => STAGE2_INPUT_ADDRESS_BITS,
        }
    }

    /// Lower and upper attribute bits of a block or page descriptor.
    #[must_use]
    pub const fn leaf_attributes(self, attributes: MapAttributes) -> u64 {
        let mut bits = ACCESS_FLAG;
        if !attributes.executable {
            bits |= EXECUTE_NEVER;
        }
        match self {
            Self::El2Stage1 => {
                bits |= STAGE1_AP_RES1;
                if !attributes.writable {
                    bits |= STAGE1_AP_READ_ONLY;
                }
                match attributes.kind {
                    MemoryKind::Normal => bits |= (MAIR_INDEX_NORMAL << 2) | SHAREABILITY_INNER,
                    MemoryKind::Device => bits |= MAIR_INDEX_DEVICE << 2,
                }
            }
            Self::Stage2 => {
                bits |= STAGE2_AP_READ;
                if attributes.writable {
                    bits |= STAGE2_AP_WRITE;
                }
                match attributes.kind {
                    MemoryKind::Normal => bits |= STAGE2_MEMATTR_NORMAL_WB | SHAREABILITY_INNER,
                    MemoryKind::Device => bits |= STAGE2_MEMATTR_DEVICE_NGNRE,
                }
            }
        }
        bits
    }
}

/// A translation table tree rooted at the regime's root level.
#[derive(Debug)]
pub struct PageTable {
    root: PhysAddr,
    regime: Regime,
}

impl PageTable {
    /// A new, empty tree.
    ///
    /// # Errors
    /// `OutOfTables` when the store cannot supply the root table.
    pub fn new(regime: Regime, store: &mut impl TableStore) -> Result<Self, MapError> {
        let root = store.allocate_table().ok_or(MapError::OutOfTables)?;
        Ok(Self { root, regime })
    }

    /// A second handle on the tree at `root`, for test models that walk a
    /// tree their owner is changing, as a CPU's table walker would.
    #[cfg(test)]
    pub(crate) const fn for_root(root: PhysAddr, regime: Regime) -> Self {
        Self { root, regime }
    }

    /// The physical address of the root table (for TTBR0_EL2 / VTTBR_EL2).
    #[must_use]
    pub const fn root(&self) -> PhysAddr {
        self.root
    }

    /// Maps `[input, input + size)` to `[output, output + size)`, using the
    /// largest blocks that alignment allows. Nothing may be mapped there yet.
    ///
    /// # Errors
    /// See [`MapError`]. On error, the part of the range before the failure
    /// may already be mapped.
    pub fn map(
        &mut self,
        input: u64,
        output: PhysAddr,
        size: u64,
        attributes: MapAttributes,
        store: &mut impl TableStore,
    ) -> Result<(), MapError> {
        if !input.is_multiple_of(PAGE_SIZE)
            || !output.0.is_multiple_of(PAGE_SIZE)
            || !size.is_multiple_of(PAGE_SIZE)
        {
            return Err(MapError::Misaligned);
        }
        let input_end = input.checked_add(size).ok_or(MapError::OutOfRange)?;
        if input_end > 1 << self.regime.input_address_bits() || output.0.checked_add(size).is_none()
        {
            return Err(MapError::OutOfRange);
        }
        let leaf_bits = self.regime.leaf_attributes(attributes);
        let root_level = self.regime.root_level();
        self.map_in_table(
            self.root, root_level, input, output.0, size, leaf_bits, store,
        )
    }

    #[allow(clippy::too_many_arguments)] // a recursive walk carries its whole state
    fn map_in_table(
        &mut self,
        table: PhysAddr,
        level: usize,
        mut input: u64,
        mut output: u64,
        mut size: u64,
        leaf_bits: u64,
        store: &mut impl TableStore,
    ) -> Result<(), MapError> {
        let span = entry_span(level);
        if level == 3 {
            // Pages: one tight loop over this table, which the range cannot
            // leave (the caller split it at this table's span).
            let entries = &mut store.table_mut(table).0;
            let first = entry_index(input, 3);
            let count = (size / PAGE_SIZE) as usize;
            let slots = entries
                .get_mut(first..first + count)
                .ok_or(MapError::OutOfRange)?;
            if let Some(taken) = slots.iter().position(|entry| entry & DESCRIPTOR_VALID != 0) {
                return Err(MapError::AlreadyMapped {
                    input: input + taken as u64 * PAGE_SIZE,
                });
            }
            for (slot, page) in slots.iter_mut().zip((output..).step_by(PAGE_SIZE as usize)) {
                *slot = (page & OUTPUT_ADDRESS_MASK)
                    | leaf_bits
                    | DESCRIPTOR_TABLE_OR_PAGE
                    | DESCRIPTOR_VALID;
            }
            return Ok(());
        }
        while size > 0 {
            let index = entry_index(input, level);
            let chunk = size.min(span - input % span);
            let existing = store.table_mut(table).0[index];
            let is_valid = existing & DESCRIPTOR_VALID != 0;
            let is_table = level < 3 && existing & DESCRIPTOR_TABLE_OR_PAGE != 0;
            let block_allowed = level == 1 || level == 2;
            let whole_entry =
                input.is_multiple_of(span) && output.is_multiple_of(span) && chunk == span;

            if block_allowed && whole_entry && !is_valid {
                // A run of whole, free entries: write them as blocks in one
                // tight loop (a GiB of RAM is 512 of them at level 2).
                let entries = &mut store.table_mut(table).0;
                let run = ((size / span) as usize).min(ENTRIES - index);
                let mut written = 0;
                for slot in &mut entries[index..index + run] {
                    if *slot & DESCRIPTOR_VALID != 0 {
                        break;
                    }
                    *slot = ((output + written as u64 * span) & OUTPUT_ADDRESS_MASK)
                        | leaf_bits
                        | DESCRIPTOR_VALID;
                    written += 1;
                }
                let covered = written as u64 * span;
                input += covered;
                output += covered;
                size -= covered;
                continue;
            } else {
                let next = if !is_valid {
                    let next = store.allocate_table().ok_or(MapError::OutOfTables)?;
                    store.table_mut(table).0[index] = (next.0 & OUTPUT_ADDRESS_MASK)
                        | DESCRIPTOR_TABLE_OR_PAGE
                        | DESCRIPTOR_VALID;
                    next
                } else if is_table {
                    PhysAddr(existing & OUTPUT_ADDRESS_MASK)
                } else {
                    return Err(MapError::AlreadyMapped { input });
                };
                self.map_in_table(next, level + 1, input, output, chunk, leaf_bits, store)?;
            }
            input += chunk;
            output += chunk;
            size -= chunk;
        }
        Ok(())
    }

    /// Unmaps `[input, input + size)`; what was not mapped stays so. A block
    /// that the range only partly covers is first split into next-level
    /// entries with the same translation and attributes. Every live entry
    /// is changed break-before-make: made invalid, published, its cached
    /// translations invalidated, and only then replaced. `tables` is both
    /// where the tables live and who does the TLB maintenance.
    /// Tables that end up empty stay in the tree.
    ///
    /// # Errors
    /// `Misaligned` / `OutOfRange` for a bad range; `OutOfTables` when a
    /// split needs a table the store cannot give, in which case the part of
    /// the range before that block is already unmapped and the rest is
    /// unchanged.
    pub fn unmap(
        &mut self,
        input: u64,
        size: u64,
        tables: &mut (impl TableStore + TlbMaintenance),
    ) -> Result<(), MapError> {
        if !input.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(MapError::Misaligned);
        }
        let end = input.checked_add(size).ok_or(MapError::OutOfRange)?;
        if end > 1 << self.regime.input_address_bits() {
            return Err(MapError::OutOfRange);
        }
        Self::unmap_in_table(self.root, self.regime.root_level(), input, size, tables)
    }

    fn unmap_in_table(
        table: PhysAddr,
        level: usize,
        mut input: u64,
        mut size: u64,
        tables: &mut (impl TableStore + TlbMaintenance),
    ) -> Result<(), MapError> {
        let span = entry_span(level);
        while size > 0 {
            let index = entry_index(input, level);
            let chunk = size.min(span - input % span);
            let existing = tables.table_mut(table).0[index];
            if existing & DESCRIPTOR_VALID == 0 {
                // Nothing mapped here.
            } else if level < 3 && existing & DESCRIPTOR_TABLE_OR_PAGE != 0 {
                let next = PhysAddr(existing & OUTPUT_ADDRESS_MASK);
                Self::unmap_in_table(next, level + 1, input, chunk, tables)?;
            } else if chunk == span {
                // A whole block or page: break, and nothing to make.
                tables.table_mut(table).0[index] = 0;
                tables.publish();
                tables.invalidate(input, span);
            } else {
                let next = Self::split_block(table, index, level, input - input % span, tables)?;
                Self::unmap_in_table(next, level + 1, input, chunk, tables)?;
            }
            input += chunk;
            size -= chunk;
        }
        Ok(())
    }

    /// Replaces the block at `table[index]` (a level-1 or level-2 entry
    /// translating from `input`) with a table of next-level entries that
    /// translate the same way, break-before-make. Returns the new table.
    fn split_block(
        table: PhysAddr,
        index: usize,
        level: usize,
        input: u64,
        tables: &mut (impl TableStore + TlbMaintenance),
    ) -> Result<PhysAddr, MapError> {
        let block = tables.table_mut(table).0[index];
        let span = entry_span(level);
        let next_span = entry_span(level + 1);
        let output = block & OUTPUT_ADDRESS_MASK & !(span - 1);
        let attributes = block & !(OUTPUT_ADDRESS_MASK | 0b11);
        // Level 3 holds pages (type bits 0b11), level 2 blocks (0b01).
        let kind = if level + 1 == 3 {
            DESCRIPTOR_TABLE_OR_PAGE | DESCRIPTOR_VALID
        } else {
            DESCRIPTOR_VALID
        };
        let next = tables.allocate_table().ok_or(MapError::OutOfTables)?;
        for (offset, entry) in tables.table_mut(next).0.iter_mut().enumerate() {
            *entry = (output + offset as u64 * next_span) | attributes | kind;
        }
        // Break: the block goes, and no CPU may keep a cached copy of it ...
        tables.table_mut(table).0[index] = 0;
        tables.publish();
        tables.invalidate(input, span);
        // ... before make: the filled table takes its place.
        tables.table_mut(table).0[index] =
            (next.0 & OUTPUT_ADDRESS_MASK) | DESCRIPTOR_TABLE_OR_PAGE | DESCRIPTOR_VALID;
        tables.publish();
        Ok(next)
    }

    /// Walks the tree for `input`; returns the output address and the leaf
    /// descriptor, or `None` when nothing is mapped there.
    pub fn translate(&self, input: u64, store: &mut impl TableStore) -> Option<(PhysAddr, u64)> {
        if input >= 1 << self.regime.input_address_bits() {
            return None;
        }
        let mut table = self.root;
        for level in self.regime.root_level()..4 {
            let descriptor = store.table_mut(table).0[entry_index(input, level)];
            if descriptor & DESCRIPTOR_VALID == 0 {
                return None;
            }
            let base = descriptor & OUTPUT_ADDRESS_MASK;
            if level < 3 && descriptor & DESCRIPTOR_TABLE_OR_PAGE != 0 {
                table = PhysAddr(base);
                continue;
            }
            let span = entry_span(level);
            let block_base = base & !(span - 1);
            return Some((PhysAddr(block_base + input % span), descriptor));
        }
        None
    }
}

/// A host-heap table store for unit tests. Addresses are fake but unique
/// and page-aligned.
#[cfg(test)]
pub mod test_store {
    use super::{PhysAddr, Table, TableStore};

    pub const FAKE_BASE: u64 = 0x7_0000_0000;

    #[derive(Default)]
    pub struct HeapStore {
        pub tables: Vec<Box<Table>>,
        pub limit: Option<usize>,
    }

    impl TableStore for HeapStore {
        fn allocate_table(&mut self) -> Option<PhysAddr> {
            if self.limit.is_some_and(|limit| self.tables.len() >= limit) {
                return None;
            }
            self.tables.push(Box::new(Table::EMPTY));
            Some(PhysAddr(FAKE_BASE + (self.tables.len() as u64 - 1) * 4096))
        }

        fn table_mut(&mut self, address: PhysAddr) -> &mut Table {
            &mut self.tables[((address.0 - FAKE_BASE) / 4096) as usize]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_store::HeapStore;
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    #[test]
    fn one_gib_aligned_range_uses_a_single_level1_block() {
        let mut store = HeapStore::default();
        let mut table = PageTable::new(Regime::El2Stage1, &mut store).unwrap();
        table
            .map(GIB, PhysAddr(GIB), GIB, MapAttributes::RAM, &mut store)
            .unwrap();
        // Root plus one level-1 table: the GiB is one block.
        assert_eq!(store.tables.len(), 2);
        let (output, descriptor) = table.translate(GIB + 0x1234, &mut store).unwrap();
        assert_eq!(output, PhysAddr(GIB + 0x1234));
        assert_eq!(descriptor & 0b11, 0b01, "block descriptor");
        assert_eq!((descriptor >> 2) & 0b111, MAIR_INDEX_NORMAL);
        assert_eq!(descriptor & SHAREABILITY_INNER, SHAREABILITY_INNER);
        assert_ne!(descriptor & EXECUTE_NEVER, 0);
        assert_ne!(descriptor & ACCESS_FLAG, 0);
    }

    #[test]
    fn unaligned_edges_fall_back_to_2mib_blocks_and_pages() {
        let mut store = HeapStore::default();
        let mut table = PageTable::new(Regime::El2Stage1, &mut store).unwrap();
        // 0x4008_0000 .. 0x4060_0000: pages up to 2 MiB, then 2 MiB blocks.
        let start = 0x4008_0000;
        table
            .map(
                start,
                PhysAddr(start),
                0x4060_0000 - start,
                MapAttributes::CODE,
                &mut store,
            )
            .unwrap();
        let (_, page) = table.translate(start, &mut store).unwrap();
        assert_eq!(page & 0b11, 0b11, "page descriptor at level 3");
        assert_eq!(page & EXECUTE_NEVER, 0, "code is executable");
        assert_ne!(page & STAGE1_AP_READ_ONLY, 0, "code is read-only");
        let (_, block) = table.translate(0x4040_0000, &mut store).unwrap();
        assert_eq!(block & 0b11, 0b01, "2 MiB block");
        assert!(table.translate(0x4060_0000, &mut store).is_none());
        assert!(table.translate(start - 1, &mut store).is_none());
    }

    #[test]
    fn device_memory_is_never_executable_or_cacheable() {
        let mut store = HeapStore::default();
        let mut table = PageTable::new(Regime::El2Stage1, &mut store).unwrap();
        table
            .map(
                0x0900_0000,
                PhysAddr(0x0900_0000),
                0x1000,
                MapAttributes::DEVICE,
                &mut store,
            )
            .unwrap();
        let (_, descriptor) = table.translate(0x0900_0000, &mut store).unwrap();
        assert_eq!((descriptor >> 2) & 0b111, MAIR_INDEX_DEVICE);
        assert_ne!(descriptor & EXECUTE_NEVER, 0);
        assert_eq!(MAIR_EL2_VALUE & 0xFF, 0x04, "index 0 is Device-nGnRE");
    }

    #[test]
    fn stage2_descriptors_carry_s2ap_and_memattr() {
        let mut store = HeapStore::default();
        let mut table = PageTable::new(Regime::Stage2, &mut store).unwrap();
        table
            .map(
                0x4000_0000,
                PhysAddr(0x8000_0000),
                2 * MIB,
                MapAttributes::RAM,
                &mut store,
            )
            .unwrap();
        let (output, descriptor) = table.translate(0x4000_1000, &mut store).unwrap();
        assert_eq!(output, PhysAddr(0x8000_1000));
        assert_eq!(descriptor & (0b11 << 6), STAGE2_AP_READ | STAGE2_AP_WRITE);
        assert_eq!(descriptor & (0b1111 << 2), STAGE2_MEMATTR_NORMAL_WB);
    }

    #[test]
    fn overlapping_maps_and_bad_input_are_refused() {
        let mut store = HeapStore::default();
        let mut table = PageTable::new(Regime::El2Stage1, &mut store).unwrap();
        table
            .map(
                0x20_0000,
                PhysAddr(0x20_0000),
                2 * MIB,
                MapAttributes::RAM,
                &mut store,
            )
            .unwrap();
        assert_eq!(
            table.map(
                0x30_0000,
                PhysAddr(0),
                0x1000,
                MapAttributes::RAM,
                &mut store
            ),
            Err(MapError::AlreadyMapped { input: 0x30_0000 })
        );
        assert_eq!(
            table.map(0x123, PhysAddr(0), 0x1000, MapAttributes::RAM, &mut store),
            Err(MapError::Misaligned)
        );
        assert_eq!(
            table.map(1 << 48, PhysAddr(0), 0x1000, MapAttributes::RAM, &mut store),
            Err(MapError::OutOfRange)
        );
    }

    /// Tables plus a TLB that caches translations page by page, as a CPU
    /// would, and records the maintenance it is asked for. At each
    /// invalidation it checks that the range no longer translates: the
    /// entry was broken (and published) before, not after.
    struct ModelMachine {
        store: HeapStore,
        walker: Option<PageTable>,
        cached: std::collections::BTreeMap<u64, (PhysAddr, u64)>,
        events: Vec<TlbEvent>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum TlbEvent {
        Publish,
        Invalidate { input: u64, span: u64 },
    }

    impl ModelMachine {
        /// A machine with `size` bytes at 0x4000_0000 mapped to 0x8000_0000
        /// in a stage-2 tree (2 MiB blocks when `size` is a multiple).
        fn stage2(size: u64) -> (Self, PageTable) {
            Self::with(Regime::Stage2, 0x4000_0000, PhysAddr(0x8000_0000), size)
        }

        fn with(regime: Regime, input: u64, output: PhysAddr, size: u64) -> (Self, PageTable) {
            let mut machine = Self {
                store: HeapStore::default(),
                walker: None,
                cached: std::collections::BTreeMap::new(),
                events: Vec::new(),
            };
            let mut table = PageTable::new(regime, &mut machine).unwrap();
            table
                .map(input, output, size, MapAttributes::RAM, &mut machine)
                .unwrap();
            machine.walker = Some(PageTable {
                root: table.root,
                regime,
            });
            (machine, table)
        }

        fn translate(&mut self, input: u64) -> Option<(PhysAddr, u64)> {
            let walker = self.walker.take().expect("set up by `with`");
            let translation = walker.translate(input, &mut self.store);
            self.walker = Some(walker);
            translation
        }

        /// Walks (and caches) the translation of every page in a range.
        fn warm(&mut self, start: u64, size: u64) {
            for page in (start..start + size).step_by(PAGE_SIZE as usize) {
                if let Some(translation) = self.translate(page) {
                    self.cached.insert(page, translation);
                }
            }
        }
    }

    impl TableStore for ModelMachine {
        fn allocate_table(&mut self) -> Option<PhysAddr> {
            self.store.allocate_table()
        }

        fn table_mut(&mut self, address: PhysAddr) -> &mut Table {
            self.store.table_mut(address)
        }
    }

    impl TlbMaintenance for ModelMachine {
        fn publish(&mut self) {
            self.events.push(TlbEvent::Publish);
        }

        fn invalidate(&mut self, input: u64, span: u64) {
            assert_eq!(
                self.events.last(),
                Some(&TlbEvent::Publish),
                "the broken entry is published before its translations are invalidated"
            );
            assert_eq!(
                self.translate(input),
                None,
                "invalidated while {input:#x} still translates: make before break"
            );
            self.cached
                .retain(|page, _| !(input..input + span).contains(page));
            self.events.push(TlbEvent::Invalidate { input, span });
        }
    }

    #[test]
    fn unmapping_pages_inside_a_block_splits_it_break_before_make() {
        let (mut machine, mut table) = ModelMachine::stage2(4 * MIB);
        machine.warm(0x4000_0000, 4 * MIB);
        let (_, block) = machine.translate(0x4000_0000).unwrap();

        table
            .unmap(0x4010_0000, 2 * PAGE_SIZE, &mut machine)
            .unwrap();

        // The two pages are gone from the tables and from the TLB.
        for page in [0x4010_0000, 0x4010_1000] {
            assert_eq!(machine.translate(page), None);
            assert!(!machine.cached.contains_key(&page));
        }
        // The rest of the block translates as before, now as pages with the
        // block's attributes; the second block is untouched.
        for page in [0x4000_0000, 0x400F_F000, 0x4010_2000, 0x401F_F000] {
            let (output, descriptor) = machine.translate(page).unwrap();
            assert_eq!(output, PhysAddr(page - 0x4000_0000 + 0x8000_0000));
            assert_eq!(descriptor & 0b11, 0b11, "a page now");
            assert_eq!(
                descriptor & !(OUTPUT_ADDRESS_MASK | 0b11),
                block & !(OUTPUT_ADDRESS_MASK | 0b11)
            );
        }
        let (_, second) = machine.translate(0x4020_0000).unwrap();
        assert_eq!(second & 0b11, 0b01, "still a block");
        assert!(machine.cached.contains_key(&0x4020_0000));
        // The block was broken (and its translations dropped) before the
        // table replaced it, then each page went the same way.
        assert_eq!(
            machine.events,
            [
                TlbEvent::Publish,
                TlbEvent::Invalidate {
                    input: 0x4000_0000,
                    span: 2 * MIB
                },
                TlbEvent::Publish,
                TlbEvent::Publish,
                TlbEvent::Invalidate {
                    input: 0x4010_0000,
                    span: PAGE_SIZE
                },
                TlbEvent::Publish,
                TlbEvent::Invalidate {
                    input: 0x4010_1000,
                    span: PAGE_SIZE
                },
            ]
        );
    }

    #[test]
    fn unmapping_whole_blocks_needs_no_split() {
        let (mut machine, mut table) = ModelMachine::stage2(4 * MIB);
        let tables_before = machine.store.tables.len();
        machine.warm(0x4000_0000, 4 * MIB);
        table.unmap(0x4000_0000, 4 * MIB, &mut machine).unwrap();
        assert_eq!(machine.store.tables.len(), tables_before);
        assert!(machine.cached.is_empty());
        assert_eq!(machine.translate(0x4000_0000), None);
        assert_eq!(machine.translate(0x403F_F000), None);
        // Unmapping what is not mapped changes nothing and costs nothing.
        machine.events.clear();
        table.unmap(0x4000_0000, 8 * MIB, &mut machine).unwrap();
        assert!(machine.events.is_empty());
        // ... and the range can be mapped again.
        table
            .map(
                0x4000_0000,
                PhysAddr(0x9000_0000),
                2 * MIB,
                MapAttributes::RAM,
                &mut machine,
            )
            .unwrap();
        assert_eq!(
            machine.translate(0x4000_1000).unwrap().0,
            PhysAddr(0x9000_1000)
        );
    }

    #[test]
    fn a_gib_block_splits_down_to_pages_keeping_its_attributes() {
        let (mut machine, mut table) =
            ModelMachine::with(Regime::El2Stage1, GIB, PhysAddr(GIB), GIB);
        let (_, gib_block) = machine.translate(GIB).unwrap();
        table.unmap(GIB + 0x1000, PAGE_SIZE, &mut machine).unwrap();
        assert_eq!(machine.translate(GIB + 0x1000), None);
        let (output, page) = machine.translate(GIB).unwrap();
        assert_eq!(output, PhysAddr(GIB), "the page before stays");
        let (output, block) = machine.translate(GIB + 4 * MIB).unwrap();
        assert_eq!(output, PhysAddr(GIB + 4 * MIB));
        assert_eq!(block & 0b11, 0b01, "the other 2 MiB are still blocks");
        // Execute-never, access permissions, shareability and memory type
        // survive both splits.
        let attributes = |descriptor: u64| descriptor & !(OUTPUT_ADDRESS_MASK | 0b11);
        assert_eq!(attributes(page), attributes(gib_block));
        assert_eq!(attributes(block), attributes(gib_block));
        assert_ne!(page & EXECUTE_NEVER, 0);
        // Root, level 1, then one level-2 and one level-3 table from splits.
        assert_eq!(machine.store.tables.len(), 4);
    }

    #[test]
    fn unmap_refuses_bad_ranges_and_reports_an_exhausted_store() {
        let (mut machine, mut table) = ModelMachine::stage2(4 * MIB);
        assert_eq!(
            table.unmap(0x4000_0800, PAGE_SIZE, &mut machine),
            Err(MapError::Misaligned)
        );
        assert_eq!(
            table.unmap(1 << 39, PAGE_SIZE, &mut machine),
            Err(MapError::OutOfRange)
        );
        machine.store.limit = Some(machine.store.tables.len());
        assert_eq!(
            table.unmap(0x4000_0000, PAGE_SIZE, &mut machine),
            Err(MapError::OutOfTables)
        );
        // The block that could not be split is untouched.
        assert!(machine.translate(0x4000_0000).is_some());
        assert!(machine.events.is_empty());
    }

    #[test]
    fn exhausted_store_is_an_error_not_a_panic() {
        let mut store = HeapStore {
            limit: Some(2),
            ..HeapStore::default()
        };
        let mut table = PageTable::new(Regime::El2Stage1, &mut store).unwrap();
        assert_eq!(
            table.map(
                0x1000,
                PhysAddr(0x1000),
                0x1000,
                MapAttributes::RAM,
                &mut store
            ),
            Err(MapError::OutOfTables)
        );
    }
}
