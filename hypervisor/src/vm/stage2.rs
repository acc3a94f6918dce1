//! A VM's stage-2 translation: its table tree and the owner of the tree's
//! memory and TLB maintenance, kept together for the VM's whole life so
//! that pages can be mapped and unmapped while it runs (vdev-shmem), not
//! only at boot.
//!
//! The owner `T` supplies table pages ([`TableStore`]) and knows how to
//! invalidate this VM's cached translations ([`TlbMaintenance`]: on the
//! target, TLBI by IPA under the VM's VMID, broadcast inner shareable; in
//! tests, a model TLB). Device models reach it through
//! [`GuestPages`], so they never see tables or TLBs.

use tessera_vdevs::{GuestPages, PageAccess, PagesRefused};

use crate::memory::address::{GuestPhysAddr, PhysAddr};
use crate::memory::page_table::{
    MapAttributes, MapError, MemoryKind, PageTable, Regime, TableStore, TlbMaintenance,
};

/// A VM's stage-2 tree and the owner of its memory and TLB maintenance.
pub struct Stage2<T> {
    table: PageTable,
    owner: T,
}

/// Guest RAM: normal memory the guest may also execute.
const GUEST_RAM: MapAttributes = MapAttributes {
    kind: MemoryKind::Normal,
    writable: true,
    executable: true,
};

/// Device registers the VM reaches directly: Device-nGnRE (stage-2
/// MemAttr 0b0001), so the guest's own attributes can make it no weaker
/// than device memory, never executable.
const DEVICE: MapAttributes = MapAttributes {
    kind: MemoryKind::Device,
    writable: true,
    executable: false,
};

impl<T> Stage2<T> {
    /// The root table, for VTTBR_EL2.
    #[must_use]
    pub const fn root(&self) -> PhysAddr {
        self.table.root()
    }
}

impl<T: TableStore + TlbMaintenance> Stage2<T> {
    /// An empty tree whose tables come from `owner`.
    ///
    /// # Errors
    /// `OutOfTables` when the owner cannot supply the root.
    pub fn new(mut owner: T) -> Result<Self, MapError> {
        let table = PageTable::new(Regime::Stage2, &mut owner)?;
        Ok(Self { table, owner })
    }

    /// Maps the VM's RAM, at build time.
    ///
    /// # Errors
    /// See [`MapError`].
    pub fn map_ram(
        &mut self,
        guest: GuestPhysAddr,
        host: PhysAddr,
        size: u64,
    ) -> Result<(), MapError> {
        self.table
            .map(guest.0, host, size, GUEST_RAM, &mut self.owner)
    }

    /// Maps device registers the VM reaches directly (the GICv2 virtual
    /// CPU interface; passed-through devices), at build time: Device-nGnRE,
    /// never executable, so the guest's accesses reach the device as it
    /// issued them.
    ///
    /// # Errors
    /// See [`MapError`].
    pub fn map_device(
        &mut self,
        guest: GuestPhysAddr,
        host: PhysAddr,
        size: u64,
    ) -> Result<(), MapError> {
        self.table.map(guest.0, host, size, DEVICE, &mut self.owner)
    }

    /// Where `guest` translates to, if anywhere.
    pub fn translate(&mut self, guest: GuestPhysAddr) -> Option<PhysAddr> {
        self.table
            .translate(guest.0, &mut self.owner)
            .map(|(output, _)| output)
    }

    /// The owner, for inspection (tests, reports).
    pub const fn owner(&self) -> &T {
        &self.owner
    }

    /// The owner, for test models that stand in for the hardware's TLB.
    #[cfg(test)]
    pub(crate) const fn owner_mut(&mut self) -> &mut T {
        &mut self.owner
    }
}

const fn refused(error: MapError) -> PagesRefused {
    match error {
        MapError::Misaligned => PagesRefused::Misaligned,
        MapError::OutOfRange => PagesRefused::OutOfRange,
        MapError::AlreadyMapped { input } => PagesRefused::AlreadyMapped {
            guest_address: input,
        },
        MapError::OutOfTables => PagesRefused::OutOfMemory,
    }
}

impl<T: TableStore + TlbMaintenance> GuestPages for Stage2<T> {
    /// All or nothing: a range any page of which is mapped already is
    /// refused before anything is written, and a map that runs out of
    /// table memory halfway is undone, so a refused request leaves no page
    /// of it reachable (the model frees a refused region's pages at once).
    fn map_pages(
        &mut self,
        guest_address: u64,
        host_address: u64,
        length: u64,
        access: PageAccess,
    ) -> Result<(), PagesRefused> {
        let attributes = MapAttributes {
            kind: MemoryKind::Normal,
            writable: access == PageAccess::ReadWrite,
            executable: false,
        };
        const PAGE: u64 = crate::memory::address::PAGE_SIZE;
        if guest_address.is_multiple_of(PAGE)
            && let Some(end) = guest_address.checked_add(length)
            && let Some(mapped) = (guest_address..end)
                .step_by(PAGE as usize)
                .find(|&page| self.table.translate(page, &mut self.owner).is_some())
        {
            return Err(PagesRefused::AlreadyMapped {
                guest_address: mapped,
            });
        }
        // Only invalid entries are filled (an existing mapping is refused),
        // so nothing cached can be stale: no TLB maintenance is due. The
        // new entries must reach the walkers before the guest is told.
        let mapped = self
            .table
            .map(
                guest_address,
                PhysAddr(host_address),
                length,
                attributes,
                &mut self.owner,
            )
            .map_err(refused);
        self.owner.publish();
        if mapped.is_err() {
            // Nothing was mapped in the range before: whatever this map
            // wrote goes again (whole pages and blocks, so no split needs
            // table memory).
            let _ = self.table.unmap(guest_address, length, &mut self.owner);
        }
        mapped
    }

    fn unmap_pages(&mut self, guest_address: u64, length: u64) -> Result<(), PagesRefused> {
        self.table
            .unmap(guest_address, length, &mut self.owner)
            .map_err(refused)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::memory::address::PAGE_SIZE;
    use crate::memory::page_table::Table;
    use crate::memory::page_table::test_store::HeapStore;

    /// Table memory plus a TLB that caches translations page by page and
    /// drops them only when told to, as a CPU's would.
    #[derive(Default)]
    struct FakeMachine {
        tables: HeapStore,
        root: Option<PhysAddr>,
        tlb: BTreeMap<u64, PhysAddr>,
        publishes: usize,
        invalidations: Vec<(u64, u64)>,
    }

    impl FakeMachine {
        fn walk(&mut self, input: u64) -> Option<PhysAddr> {
            let walker = PageTable::for_root(self.root?, Regime::Stage2);
            walker
                .translate(input, &mut self.tables)
                .map(|(output, _)| output)
        }

        /// What a guest access to `input` reaches: the TLB first, as the
        /// hardware would, then a walk, which fills the TLB.
        fn access(&mut self, input: u64) -> Option<PhysAddr> {
            let page = input & !(PAGE_SIZE - 1);
            if let Some(output) = self.tlb.get(&page) {
                return Some(*output);
            }
            let output = self.walk(page)?;
            self.tlb.insert(page, output);
            Some(output)
        }
    }

    impl TableStore for FakeMachine {
        fn allocate_table(&mut self) -> Option<PhysAddr> {
            let table = self.tables.allocate_table();
            self.root = self.root.or(table);
            table
        }

        fn table_mut(&mut self, address: PhysAddr) -> &mut Table {
            self.tables.table_mut(address)
        }
    }

    impl TlbMaintenance for FakeMachine {
        fn publish(&mut self) {
            self.publishes += 1;
        }

        fn invalidate(&mut self, input: u64, span: u64) {
            assert!(
                self.walk(input).is_none(),
                "invalidated before the entry was broken"
            );
            self.tlb
                .retain(|page, _| !(input..input + span).contains(page));
            self.invalidations.push((input, span));
        }
    }

    const RAM: u64 = 0x4000_0000;
    const HOST_RAM: u64 = 0x8000_0000;
    const WINDOW: u64 = 0x1_0000_0000;
    const SHARED: u64 = 0x9000_0000;

    fn vm_with_ram() -> Stage2<FakeMachine> {
        let mut stage2 = Stage2::new(FakeMachine::default()).unwrap();
        stage2
            .map_ram(GuestPhysAddr(RAM), PhysAddr(HOST_RAM), 4 << 20)
            .unwrap();
        stage2
    }

    #[test]
    fn device_registers_map_as_device_memory_beside_ram() {
        let mut stage2 = vm_with_ram();
        stage2
            .map_device(
                GuestPhysAddr(0x0801_0000),
                PhysAddr(0xFF84_6000),
                2 * PAGE_SIZE,
            )
            .unwrap();
        assert_eq!(
            stage2.translate(GuestPhysAddr(0x0801_1004)),
            Some(PhysAddr(0xFF84_7004))
        );
        let (_, attributes) = stage2
            .table
            .translate(0x0801_0000, &mut stage2.owner)
            .unwrap();
        assert_eq!(
            attributes & 0xFFC,
            Regime::Stage2.leaf_attributes(MapAttributes::DEVICE) & 0xFFC,
            "Device-nGnRE, as the stage-2 leaf for device memory has it"
        );
        assert_eq!(stage2.translate(GuestPhysAddr(0x0801_2000)), None);
    }

    #[test]
    fn pages_mapped_through_the_services_trait_translate_and_unmapped_ones_leave_no_trace() {
        let mut stage2 = vm_with_ram();
        let pages: &mut dyn GuestPages = &mut stage2;
        pages
            .map_pages(WINDOW, SHARED, 3 * PAGE_SIZE, PageAccess::ReadWrite)
            .unwrap();
        for page in 0..3 {
            assert_eq!(
                stage2.owner.access(WINDOW + page * PAGE_SIZE),
                Some(PhysAddr(SHARED + page * PAGE_SIZE))
            );
        }
        // The guest has used every page (the TLB holds them all); the
        // middle one goes away.
        stage2.unmap_pages(WINDOW + PAGE_SIZE, PAGE_SIZE).unwrap();
        assert_eq!(
            stage2.owner.access(WINDOW + PAGE_SIZE),
            None,
            "no stale translation"
        );
        assert_eq!(stage2.owner.access(WINDOW), Some(PhysAddr(SHARED)));
        assert_eq!(
            stage2.owner.access(WINDOW + 2 * PAGE_SIZE),
            Some(PhysAddr(SHARED + 2 * PAGE_SIZE))
        );
        assert_eq!(
            stage2.owner.invalidations,
            [(WINDOW + PAGE_SIZE, PAGE_SIZE)]
        );
        // And the rest, then mapped again elsewhere: the new pages show.
        // (A range whose middle is unmapped already is fine.)
        stage2.unmap_pages(WINDOW, 3 * PAGE_SIZE).unwrap();
        assert!(stage2.owner.tlb.keys().all(|page| *page < WINDOW));
        stage2
            .map_pages(WINDOW, SHARED + 0x10_0000, PAGE_SIZE, PageAccess::ReadOnly)
            .unwrap();
        assert_eq!(
            stage2.owner.access(WINDOW),
            Some(PhysAddr(SHARED + 0x10_0000))
        );
    }

    #[test]
    fn unmapping_part_of_guest_ram_splits_its_block_without_stale_entries() {
        let mut stage2 = vm_with_ram();
        for page in (RAM..RAM + (4 << 20)).step_by(PAGE_SIZE as usize) {
            stage2.owner.access(page);
        }
        stage2.unmap_pages(RAM + 0x10_0000, PAGE_SIZE).unwrap();
        assert_eq!(stage2.owner.access(RAM + 0x10_0000), None);
        assert_eq!(
            stage2.owner.access(RAM + 0x10_1000),
            Some(PhysAddr(HOST_RAM + 0x10_1000))
        );
        assert_eq!(
            stage2.translate(GuestPhysAddr(RAM)),
            Some(PhysAddr(HOST_RAM))
        );
    }

    #[test]
    fn passthrough_devices_are_device_memory_the_guest_cannot_execute() {
        let mut stage2 = vm_with_ram();
        let rtc = 0x0901_0000;
        stage2
            .map_device(GuestPhysAddr(rtc), PhysAddr(rtc), PAGE_SIZE)
            .unwrap();
        assert_eq!(stage2.owner.access(rtc + 0xFE0), Some(PhysAddr(rtc)));
        let walker = PageTable::for_root(stage2.root(), Regime::Stage2);
        let (_, descriptor) = walker
            .translate(rtc, &mut stage2.owner.tables)
            .expect("mapped");
        // Arm ARM D8.5.5: stage-2 MemAttr[3:0] (bits 5:2) 0b0001 is
        // Device-nGnRE; S2AP (bits 7:6) 0b11 read/write; XN bit 54.
        assert_eq!((descriptor >> 2) & 0b1111, 0b0001);
        assert_eq!((descriptor >> 6) & 0b11, 0b11);
        assert_ne!(descriptor & (1 << 54), 0);
        // Nothing beside it, and no second map over it.
        assert_eq!(stage2.translate(GuestPhysAddr(rtc + PAGE_SIZE)), None);
        assert_eq!(
            stage2.map_device(GuestPhysAddr(rtc), PhysAddr(rtc), PAGE_SIZE),
            Err(MapError::AlreadyMapped { input: rtc })
        );
        // RAM stays normal memory.
        let (_, ram) = walker
            .translate(RAM, &mut stage2.owner.tables)
            .expect("mapped");
        assert_eq!((ram >> 2) & 0b1111, 0b1111);
    }

    #[test]
    fn a_map_that_runs_out_of_tables_halfway_leaves_nothing_mapped() {
        let mut stage2 = vm_with_ram();
        // Two pages either side of a 2 MiB boundary need a level-2 table
        // and two level-3 ones; there is memory for two.
        let start = WINDOW + 0x20_0000 - PAGE_SIZE;
        stage2.owner.tables.limit = Some(stage2.owner.tables.tables.len() + 2);
        assert_eq!(
            stage2.map_pages(start, SHARED, 2 * PAGE_SIZE, PageAccess::ReadWrite),
            Err(PagesRefused::OutOfMemory)
        );
        assert_eq!(stage2.translate(GuestPhysAddr(start)), None);
        assert_eq!(stage2.owner.access(start), None);
        // And a range any page of which is mapped is refused untouched.
        stage2.owner.tables.limit = None;
        stage2
            .map_pages(start + PAGE_SIZE, SHARED, PAGE_SIZE, PageAccess::ReadWrite)
            .unwrap();
        assert_eq!(
            stage2.map_pages(start, SHARED, 2 * PAGE_SIZE, PageAccess::ReadWrite),
            Err(PagesRefused::AlreadyMapped {
                guest_address: start + PAGE_SIZE
            })
        );
        assert_eq!(stage2.translate(GuestPhysAddr(start)), None);
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let mut stage2 = vm_with_ram();
        assert_eq!(
            stage2.map_pages(WINDOW + 1, SHARED, PAGE_SIZE, PageAccess::ReadWrite),
            Err(PagesRefused::Misaligned)
        );
        assert_eq!(
            stage2.map_pages(RAM, SHARED, PAGE_SIZE, PageAccess::ReadWrite),
            Err(PagesRefused::AlreadyMapped { guest_address: RAM })
        );
        assert_eq!(
            stage2.map_pages(1 << 39, SHARED, PAGE_SIZE, PageAccess::ReadWrite),
            Err(PagesRefused::OutOfRange)
        );
        assert_eq!(
            stage2.unmap_pages(!(PAGE_SIZE - 1), PAGE_SIZE),
            Err(PagesRefused::OutOfRange)
        );
        stage2.owner.tables.limit = Some(stage2.owner.tables.tables.len());
        assert_eq!(
            stage2.map_pages(WINDOW, SHARED, PAGE_SIZE, PageAccess::ReadWrite),
            Err(PagesRefused::OutOfMemory)
        );
    }
}
