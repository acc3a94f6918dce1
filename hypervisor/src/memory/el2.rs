//! Memory bring-up on the boot CPU: the EL2 identity map (built from a
//! static pool before the MMU is on), then the heap and the page allocator
//! over the RAM that is left.

use core::alloc::Layout;

use buddy_system_allocator::{Heap, LockedHeap};
use tessera_hypervisor::memory::address::{PAGE_SIZE, PhysAddr, PhysRange};
use tessera_hypervisor::memory::map::RangeSet;
use tessera_hypervisor::memory::page_table::{
    MapAttributes, MapError, PageTable, Regime, Table, TableStore,
};
use tessera_hypervisor::sync::Mutex;

use crate::boot::board::BOARD;

/// Tables for the EL2 map. The map uses blocks wherever it can: the boards
/// here need under ten (root, a level-1 table per 512 GiB, level-2/3 tables
/// around the image and the device windows).
const EL2_TABLE_POOL: usize = 16;

/// The pool's addresses are physical (the map is 1:1). It sits in the
/// `.noinit` section, which boot does not zero: each table is cleared when
/// it is handed out, so only the few tables the map uses are written.
#[unsafe(link_section = ".bss.noinit.el2_tables")]
static mut EL2_TABLES: [Table; EL2_TABLE_POOL] = [Table::EMPTY; EL2_TABLE_POOL];

struct PoolStore {
    tables: &'static mut [Table; EL2_TABLE_POOL],
    used: usize,
}

impl TableStore for PoolStore {
    fn allocate_table(&mut self) -> Option<PhysAddr> {
        let table = self.tables.get_mut(self.used)?;
        self.used += 1;
        let address = table as *mut Table;
        // SAFETY: a whole page of the pool (tables are 4 KiB and aligned
        // to it), handed out once, so nothing else refers to it. Zeroed
        // with pairs of stores rather than `*table = Table::EMPTY` (memset):
        // boot builds several tables.
        unsafe { crate::arch::zero_page(address.cast()) };
        Some(PhysAddr(address as u64))
    }

    fn table_mut(&mut self, address: PhysAddr) -> &mut Table {
        let base = self.tables.as_ptr() as u64;
        let index = ((address.0 - base) / PAGE_SIZE) as usize;
        &mut self.tables[index]
    }
}

unsafe extern "C" {
    static __image_start: u8;
    static __rodata_start: u8;
    static __data_start: u8;
    static __data_end: u8;
    static __bss_start: u8;
    static __bss_end: u8;
    static __image_end: u8;
}

/// The hypervisor image's sections, from the linker script.
#[derive(Clone, Copy, Debug)]
pub struct ImageLayout {
    pub code: PhysRange,
    pub read_only: PhysRange,
    pub read_write: PhysRange,
}

impl ImageLayout {
    pub fn whole(&self) -> PhysRange {
        PhysRange {
            start: self.code.start,
            end: self.read_write.end,
        }
    }
}

pub fn image_layout() -> ImageLayout {
    let address = |symbol: *const u8| PhysAddr(symbol as u64);
    let start = address(&raw const __image_start);
    let rodata = address(&raw const __rodata_start);
    let data = address(&raw const __data_start);
    let end = address(&raw const __image_end);
    ImageLayout {
        code: PhysRange { start, end: rodata },
        read_only: PhysRange {
            start: rodata,
            end: data,
        },
        read_write: PhysRange { start: data, end },
    }
}

/// The EL2 identity map, as `build_el2_map` made it.
#[derive(Clone, Copy, Debug)]
pub struct El2Map {
    /// The root table, for TTBR0_EL2.
    pub root: u64,
    /// The pool tables the map uses.
    pub tables: PhysRange,
}

/// Builds the EL2 identity map: the image with per-section permissions, RAM
/// read/write and never executable, the board's device windows as
/// Device-nGnRE.
///
/// Runs with the MMU off: only aligned accesses, no atomics.
pub fn build_el2_map(ram: &RangeSet, image: &ImageLayout) -> Result<El2Map, MapError> {
    let pool_pointer = &raw mut EL2_TABLES;
    // SAFETY: called once, on the boot CPU, before any other CPU runs and
    // before anything else refers to the pool.
    let pool = unsafe { &mut *pool_pointer };
    let mut store = PoolStore {
        tables: pool,
        used: 0,
    };
    let mut table = PageTable::new(Regime::El2Stage1, &mut store)?;
    let identity = |table: &mut PageTable, store: &mut PoolStore, range: PhysRange, attributes| {
        table.map(range.start.0, range.start, range.size(), attributes, store)
    };
    identity(&mut table, &mut store, image.code, MapAttributes::CODE)?;
    identity(
        &mut table,
        &mut store,
        image.read_only,
        MapAttributes::READ_ONLY,
    )?;
    identity(&mut table, &mut store, image.read_write, MapAttributes::RAM)?;
    let mut data_ram = ram.clone();
    // The image is mapped above with its own permissions. An error here
    // (map overflow) cannot happen for a hole inside one range.
    let _ = data_ram.remove(image.whole());
    for range in data_ram.ranges() {
        identity(&mut table, &mut store, *range, MapAttributes::RAM)?;
    }
    for window in BOARD.device_windows {
        identity(
            &mut table,
            &mut store,
            PhysRange::from(*window),
            MapAttributes::DEVICE,
        )?;
    }
    let pool_start = store.tables.as_ptr() as u64;
    Ok(El2Map {
        root: table.root().0,
        tables: PhysRange {
            start: PhysAddr(pool_start),
            end: PhysAddr(pool_start + store.used as u64 * PAGE_SIZE),
        },
    })
}

/// What the boot CPU writes before its MMU is on and reads after, besides
/// its stack: the image's data, the BSS and the EL2 tables. Those stores
/// went straight to memory, but lines for the same addresses may still sit
/// in the caches from whoever ran before (firmware, a boot loader); once
/// the MMU is on they would be hit and hide what was written. The boot CPU
/// discards them just before it turns the MMU on, as Linux does for its
/// early tables; `arch::enable_mmu` does the same for the live stack.
pub fn written_with_mmu_off(map: &El2Map) -> [PhysRange; 3] {
    let address = |symbol: *const u8| PhysAddr(symbol as u64);
    [
        PhysRange {
            start: address(&raw const __data_start),
            end: address(&raw const __data_end),
        },
        PhysRange {
            start: address(&raw const __bss_start),
            end: address(&raw const __bss_end),
        },
        map.tables,
    ]
}

/// How much RAM the heap gets; the rest goes to the page allocator.
const HEAP_SIZE: u64 = 4 << 20;

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

/// The pages: a buddy allocator whose free lists live in the free pages
/// themselves (`buddy_system_allocator::Heap`), handing out page-aligned
/// runs of pages. Its frame allocator would keep them in B-tree sets on
/// the heap instead, which brought the B-tree code into the image (about
/// 4 KiB, `image.hypervisor_bytes`).
static PAGES: Mutex<Heap<32>> = Mutex::new(Heap::empty());

/// The layout of a run of `count` pages.
fn pages_layout(count: usize) -> Option<Layout> {
    Layout::from_size_align(count.checked_mul(PAGE_SIZE as usize)?, PAGE_SIZE as usize).ok()
}

/// What `init_allocators` set up, for the banner.
#[derive(Clone, Copy, Debug)]
pub struct AllocatorSummary {
    pub heap: PhysRange,
    pub free_pages: u64,
}

/// Gives `HEAP_SIZE` of the free RAM to the heap and the rest, page by page,
/// to the page allocator.
pub fn init_allocators(free: &mut RangeSet) -> Option<AllocatorSummary> {
    let heap = free.take(HEAP_SIZE, PAGE_SIZE)?;
    // SAFETY: `heap` is free RAM (the memory map excludes the image, the
    // device tree, the initrd and every reservation), mapped read/write, and
    // `take` removed it from `free` so nothing else will use it.
    unsafe {
        HEAP.lock()
            .init(heap.start.0 as usize, heap.size() as usize)
    };
    let mut pages = PAGES.lock();
    let mut free_pages = 0;
    for range in free.ranges() {
        let first = range.start.0.div_ceil(PAGE_SIZE);
        let end = range.end.0 / PAGE_SIZE;
        if end <= first {
            continue;
        }
        // SAFETY: free RAM no one else uses (the memory map excludes the
        // image, the device tree, the initrd, the heap and every
        // reservation), mapped read/write at EL2: the allocator may keep
        // its free lists in it.
        unsafe {
            pages.add_to_heap((first * PAGE_SIZE) as usize, (end * PAGE_SIZE) as usize);
        }
        free_pages += end - first;
    }
    Some(AllocatorSummary { heap, free_pages })
}

/// Allocates `count` physically contiguous, zeroed pages.
pub fn allocate_pages(count: usize) -> Option<PhysAddr> {
    let address = allocate_pages_uninitialised(count)?.0;
    // SAFETY: the allocator just handed out these pages (page-aligned, so
    // 1 KiB aligned), which are normal read/write RAM that nothing else
    // references. Cleaning them too costs little and keeps tables that a
    // walker reads from memory (stage-2 walks) consistent.
    unsafe { crate::arch::zero_and_clean(address as usize, count * PAGE_SIZE as usize) };
    Some(PhysAddr(address))
}

/// Allocates `count` physically contiguous pages holding whatever their
/// last user left: for a caller that fills them itself (vdev-shmem zeroes
/// a region's pages when it creates the region, which the device model
/// decides, not the allocator).
pub fn allocate_pages_uninitialised(count: usize) -> Option<PhysAddr> {
    let address = PAGES.lock().alloc(pages_layout(count)?).ok()?.as_ptr() as u64;
    Some(PhysAddr(address))
}

/// Gives back `count` pages at `address`, allocated together by
/// [`allocate_pages`] or [`allocate_pages_uninitialised`] with the same
/// count.
///
/// # Safety
///
/// Nothing may use the pages afterwards: no EL2 reference and no stage-2
/// mapping of any VM may still reach them.
pub unsafe fn free_pages(address: PhysAddr, count: usize) {
    if let (Some(pointer), Some(layout)) = (
        core::ptr::NonNull::new(address.0 as *mut u8),
        pages_layout(count),
    ) {
        // SAFETY: the caller vouches the pages came from this allocator
        // with this count, and that nothing uses them any more.
        unsafe { PAGES.lock().dealloc(pointer, layout) };
    }
}

/// Checks both allocators once at boot: a heap block and a page come back
/// usable and go back.
pub fn self_check() -> bool {
    let layout = Layout::from_size_align(256, 16).expect("constant layout");
    // SAFETY: the layout has a non-zero size; the block is freed below with
    // the same layout.
    let block = unsafe { alloc::alloc::alloc(layout) };
    if block.is_null() {
        return false;
    }
    // SAFETY: `block` was allocated above with `layout` and is not used after.
    unsafe { alloc::alloc::dealloc(block, layout) };
    let Some(page) = allocate_pages(1) else {
        return false;
    };
    // SAFETY: `page` came from `allocate_pages(1)` above and is not used
    // after.
    unsafe { free_pages(page, 1) };
    true
}
