//! The core's side of the device-model service traits (`tessera_vdevs`
//! `VmServices`): what a model running for one VM may ask of the core,
//! bundled for the duration of one access.
//!
//! A model gets a [`CoreServices`] borrowing the VM's stage 2, the VM's
//! interrupt lines and the console; it cannot reach another VM's, and it
//! never sees a table, a TLB or a GIC register.

use tessera_vdevs::{ConsoleSink, GuestPages, InterruptLine, PageAccess, PagesRefused, VmServices};

use super::stage2::Stage2;
use crate::memory::page_table::{TableStore, TlbMaintenance};

/// A VM's interrupt lines, by interrupt ID: the vGIC on the target (next),
/// a recorder in tests.
pub trait InterruptLines {
    fn set_level(&mut self, intid: u32, asserted: bool);
}

/// One line of a VM, as a model drives it.
pub struct Line<'a, L> {
    lines: &'a mut L,
    intid: u32,
}

impl<L: InterruptLines> InterruptLine for Line<'_, L> {
    fn set_level(&mut self, asserted: bool) {
        self.lines.set_level(self.intid, asserted);
    }
}

/// Everything a model may ask of the core for one VM.
pub struct CoreServices<'a, T, L, C> {
    pub stage2: &'a mut Stage2<T>,
    pub lines: &'a mut L,
    pub console: &'a mut C,
}

impl<T: TableStore + TlbMaintenance, L, C> GuestPages for CoreServices<'_, T, L, C> {
    fn map_pages(
        &mut self,
        guest_address: u64,
        host_address: u64,
        length: u64,
        access: PageAccess,
    ) -> Result<(), PagesRefused> {
        self.stage2
            .map_pages(guest_address, host_address, length, access)
    }

    fn unmap_pages(&mut self, guest_address: u64, length: u64) -> Result<(), PagesRefused> {
        self.stage2.unmap_pages(guest_address, length)
    }
}

impl<T, L, C: ConsoleSink> ConsoleSink for CoreServices<'_, T, L, C> {
    fn write_line(&mut self, line: &[u8]) {
        self.console.write_line(line);
    }

    fn ready(&self) -> bool {
        self.console.ready()
    }
}

impl<T: TableStore + TlbMaintenance, L: InterruptLines, C: ConsoleSink> VmServices
    for CoreServices<'_, T, L, C>
{
    fn line(&mut self, intid: u32) -> impl InterruptLine + '_ {
        Line {
            lines: &mut *self.lines,
            intid,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::memory::address::{GuestPhysAddr, PhysAddr};
    use crate::memory::page_table::Table;
    use crate::memory::page_table::test_store::HeapStore;

    /// Tables and a TLB that keeps what it cached until told otherwise.
    #[derive(Default)]
    struct FakeMachine {
        tables: HeapStore,
        tlb: BTreeMap<u64, u64>,
    }

    impl TableStore for FakeMachine {
        fn allocate_table(&mut self) -> Option<PhysAddr> {
            self.tables.allocate_table()
        }
        fn table_mut(&mut self, address: PhysAddr) -> &mut Table {
            self.tables.table_mut(address)
        }
    }

    impl TlbMaintenance for FakeMachine {
        fn publish(&mut self) {}
        fn invalidate(&mut self, input: u64, span: u64) {
            self.tlb
                .retain(|page, _| !(input..input + span).contains(page));
        }
    }

    #[derive(Default)]
    struct RecordedLines(Vec<(u32, bool)>);

    impl InterruptLines for RecordedLines {
        fn set_level(&mut self, intid: u32, asserted: bool) {
            self.0.push((intid, asserted));
        }
    }

    #[derive(Default)]
    struct RecordedConsole(Vec<String>);

    impl ConsoleSink for RecordedConsole {
        fn write_line(&mut self, line: &[u8]) {
            self.0.push(String::from_utf8_lossy(line).into_owned());
        }
    }

    /// A model the way vdev-shmem will be one: it maps a page for its
    /// guest, signals it, reports, and takes the page away again, knowing
    /// the core only through `VmServices`.
    fn share_a_page(services: &mut impl VmServices, window: u64, page: u64) {
        services
            .map_pages(window, page, 0x1000, PageAccess::ReadWrite)
            .unwrap();
        services.line(42).set_level(true);
        services.write_line(b"page shared");
        services.line(42).set_level(false);
    }

    #[test]
    fn a_model_maps_signals_reports_and_unmaps_through_the_services() {
        let mut stage2 = Stage2::new(FakeMachine::default()).unwrap();
        stage2
            .map_ram(GuestPhysAddr(0x4000_0000), PhysAddr(0x8000_0000), 2 << 20)
            .unwrap();
        let mut lines = RecordedLines::default();
        let mut console = RecordedConsole::default();
        let mut services = CoreServices {
            stage2: &mut stage2,
            lines: &mut lines,
            console: &mut console,
        };
        share_a_page(&mut services, 0x1_0000_0000, 0x9000_0000);
        assert_eq!(
            services.stage2.translate(GuestPhysAddr(0x1_0000_0010)),
            Some(PhysAddr(0x9000_0010))
        );
        services
            .stage2
            .owner_mut()
            .tlb
            .insert(0x1_0000_0000, 0x9000_0000);
        services.unmap_pages(0x1_0000_0000, 0x1000).unwrap();
        assert!(
            services.stage2.owner().tlb.is_empty(),
            "no stale translation"
        );
        assert_eq!(
            services.stage2.translate(GuestPhysAddr(0x1_0000_0000)),
            None
        );
        assert_eq!(lines.0, [(42, true), (42, false)]);
        assert_eq!(console.0, ["page shared"]);
    }
}
