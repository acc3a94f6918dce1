//! Host tests of the vdev-shmem model, against fakes of the core's
//! services that record every map, unmap, line change and barrier, and
//! host memory that starts dirty so that zeroing shows.

use std::collections::BTreeMap;
use std::vec;
use std::vec::Vec;

use super::*;

const FACTORY: u64 = 0x1000_0000;
const WINDOW: u64 = 0x2000_0000;
const WINDOW_PAGES: u64 = 64;
/// VM n's vector.
const fn vector(vm: u8) -> u32 {
    40 + vm as u32
}
const HOST_BASE: u64 = 0x8000_0000;
/// What fresh or freed host memory holds until zeroed.
const DIRTY: u8 = 0xA5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Map {
        vm: u8,
        guest: u64,
        host: u64,
        length: u64,
    },
    Unmap {
        vm: u8,
        guest: u64,
        length: u64,
    },
    Level {
        vm: u8,
        intid: u32,
        asserted: bool,
    },
    Barrier,
    Allocate {
        pages: u64,
    },
    Zero {
        host: u64,
        pages: u64,
    },
    Free {
        host: u64,
        pages: u64,
    },
}

/// The core, as the model sees it: every VM's stage 2, lines and host
/// memory. `acting` is the VM whose stage 2 `GuestPages` changes.
struct FakeCore {
    acting: u8,
    /// (vm, guest page) → host page.
    stage2: BTreeMap<(u8, u64), u64>,
    levels: BTreeMap<(u8, u32), bool>,
    calls: Vec<Call>,
    /// Host page in use, by page number from HOST_BASE.
    used: Vec<bool>,
    memory: Vec<u8>,
    /// The next map request fails so.
    refuse_map: Option<PagesRefused>,
    /// The next unmap request is refused (nothing unmapped).
    refuse_unmap: bool,
}

impl FakeCore {
    fn new(host_pages: usize) -> Self {
        Self {
            acting: 0,
            stage2: BTreeMap::new(),
            levels: BTreeMap::new(),
            calls: Vec::new(),
            used: vec![false; host_pages],
            memory: vec![DIRTY; host_pages * PAGE_SIZE as usize],
            refuse_map: None,
            refuse_unmap: false,
        }
    }

    fn level(&self, vm: u8) -> bool {
        self.levels.get(&(vm, vector(vm))).copied().unwrap_or(false)
    }

    fn host_byte(&mut self, vm: u8, guest: u64) -> Option<&mut u8> {
        let host = self.stage2.get(&(vm, guest / PAGE_SIZE))? + guest % PAGE_SIZE;
        self.memory.get_mut((host - HOST_BASE) as usize)
    }

    /// A guest's store to its RAM-mapped data page; false if unmapped.
    fn guest_store(&mut self, vm: u8, guest: u64, byte: u8) -> bool {
        self.host_byte(vm, guest).map(|b| *b = byte).is_some()
    }

    fn guest_load(&mut self, vm: u8, guest: u64) -> Option<u8> {
        self.host_byte(vm, guest).map(|b| *b)
    }

    fn take_calls(&mut self) -> Vec<Call> {
        core::mem::take(&mut self.calls)
    }
}

impl GuestPages for FakeCore {
    fn map_pages(
        &mut self,
        guest_address: u64,
        host_address: u64,
        length: u64,
        access: PageAccess,
    ) -> Result<(), PagesRefused> {
        assert_eq!(access, PageAccess::ReadWrite);
        if let Some(refused) = self.refuse_map.take() {
            return Err(refused);
        }
        assert!(guest_address.is_multiple_of(PAGE_SIZE) && length.is_multiple_of(PAGE_SIZE));
        assert!(length > 0);
        for page in 0..length / PAGE_SIZE {
            let key = (self.acting, guest_address / PAGE_SIZE + page);
            assert!(
                self.stage2
                    .insert(key, host_address + page * PAGE_SIZE)
                    .is_none(),
                "page {key:x?} mapped twice"
            );
        }
        self.calls.push(Call::Map {
            vm: self.acting,
            guest: guest_address,
            host: host_address,
            length,
        });
        Ok(())
    }

    fn unmap_pages(&mut self, guest_address: u64, length: u64) -> Result<(), PagesRefused> {
        if std::mem::take(&mut self.refuse_unmap) {
            return Err(PagesRefused::OutOfMemory);
        }
        for page in 0..length / PAGE_SIZE {
            let key = (self.acting, guest_address / PAGE_SIZE + page);
            assert!(
                self.stage2.remove(&key).is_some(),
                "{key:x?} was not mapped"
            );
        }
        self.calls.push(Call::Unmap {
            vm: self.acting,
            guest: guest_address,
            length,
        });
        Ok(())
    }
}

impl HostPages for FakeCore {
    fn allocate_pages(&mut self, pages: u64) -> Option<u64> {
        self.calls.push(Call::Allocate { pages });
        let pages = pages as usize;
        let start = (0..=self.used.len().checked_sub(pages)?)
            .find(|&start| self.used[start..start + pages].iter().all(|used| !used))?;
        self.used[start..start + pages].fill(true);
        Some(HOST_BASE + start as u64 * PAGE_SIZE)
    }

    fn zero_pages(&mut self, host_address: u64, pages: u64) {
        self.calls.push(Call::Zero {
            host: host_address,
            pages,
        });
        let start = (host_address - HOST_BASE) as usize;
        self.memory[start..start + (pages * PAGE_SIZE) as usize].fill(0);
    }

    fn free_pages(&mut self, host_address: u64, pages: u64) {
        self.calls.push(Call::Free {
            host: host_address,
            pages,
        });
        let start = ((host_address - HOST_BASE) / PAGE_SIZE) as usize;
        let range = start..start + pages as usize;
        assert!(
            self.used[range.clone()].iter().all(|used| *used),
            "double free"
        );
        self.used[range].fill(false);
        // Freed memory keeps what the guests left in it.
    }
}

impl VmLines for FakeCore {
    fn set_level(&mut self, vm: VmIndex, intid: u32, asserted: bool) {
        let previous = self.levels.insert((vm.0, intid), asserted);
        assert_ne!(previous, Some(asserted), "the model calls only on changes");
        self.calls.push(Call::Level {
            vm: vm.0,
            intid,
            asserted,
        });
    }
}

impl ShmemServices for FakeCore {
    fn order_before_signal(&mut self) {
        self.calls.push(Call::Barrier);
    }
}

use AccessWidth::{Byte, DoubleWord, HalfWord, Word};

/// A system of VMs, each with one device (same addresses in every VM).
struct System {
    shmem: Shmem,
    core: FakeCore,
}

impl System {
    fn new(vms: u8, page_limit: u64) -> Self {
        Self::with_rules(vms, page_limit, &[])
    }

    /// VM 0 gets `rules`; the others none.
    fn with_rules(vms: u8, page_limit: u64, rules: &[Rule]) -> Self {
        let mut shmem = Shmem::new(page_limit);
        for vm in 0..vms {
            let id = shmem
                .add_device(&DeviceConfig {
                    vm: VmIndex(vm),
                    factory: FACTORY,
                    intid: vector(vm),
                    window_base: WINDOW,
                    window_size: WINDOW_PAGES * PAGE_SIZE,
                    rules: if vm == 0 { rules } else { &[] },
                })
                .unwrap();
            assert_eq!(id.index(), usize::from(vm));
        }
        Self {
            shmem,
            core: FakeCore::new(256),
        }
    }

    fn read(&mut self, vm: u8, address: u64, width: AccessWidth) -> Result<u64, AccessRefused> {
        self.core.acting = vm;
        let (device, area, offset) = self
            .shmem
            .route(VmIndex(vm), address)
            .ok_or(AccessRefused::NothingThere)?;
        self.shmem.read(device, area, offset, width, &mut self.core)
    }

    fn write(
        &mut self,
        vm: u8,
        address: u64,
        width: AccessWidth,
        value: u64,
    ) -> Result<(), AccessRefused> {
        self.core.acting = vm;
        let (device, area, offset) = self
            .shmem
            .route(VmIndex(vm), address)
            .ok_or(AccessRefused::NothingThere)?;
        self.shmem
            .write(device, area, offset, width, value, &mut self.core)
    }

    fn factory(&mut self, vm: u8, offset: u64, width: AccessWidth) -> u64 {
        self.read(vm, FACTORY + offset, width).unwrap()
    }

    fn set_factory(&mut self, vm: u8, offset: u64, width: AccessWidth, value: u64) {
        self.write(vm, FACTORY + offset, width, value).unwrap();
    }

    /// Writes a whole name field: `name`, then NULs.
    fn name(&mut self, vm: u8, name: &[u8]) {
        let mut field = [0u8; NAME_FIELD_BYTES];
        field[..name.len()].copy_from_slice(name);
        for (at, chunk) in field.chunks(8).enumerate() {
            let value = u64::from_le_bytes(chunk.try_into().unwrap());
            self.set_factory(vm, factory::NAME + at as u64 * 8, DoubleWord, value);
        }
    }

    /// status, shmem, size after the request.
    fn outcome(&mut self, vm: u8) -> (u32, u64, u64) {
        (
            self.factory(vm, factory::STATUS, Word) as u32,
            self.factory(vm, factory::SHMEM, DoubleWord),
            self.factory(vm, factory::SIZE, Word),
        )
    }

    fn create(&mut self, vm: u8, name: &[u8], pages: u32) -> (u32, u64, u64) {
        self.name(vm, name);
        self.set_factory(vm, factory::SIZE, Word, pages.into());
        self.outcome(vm)
    }

    fn find(&mut self, vm: u8, name: &[u8]) -> (u32, u64, u64) {
        self.name(vm, name);
        self.set_factory(vm, factory::FIND, Word, 0);
        self.outcome(vm)
    }

    /// Creates or attaches, expecting success; the control page address.
    fn connect(&mut self, vm: u8, name: &[u8], pages: u32) -> u64 {
        let (status, shmem, _) = self.create(vm, name, pages);
        assert_eq!(status, Status::Ok as u32, "{}", name.escape_ascii());
        shmem
    }

    fn status(&mut self, vm: u8, control: u64) -> u32 {
        self.read(vm, control + control::STATUS, Word).unwrap() as u32
    }

    fn index(&mut self, vm: u8, control: u64) -> u32 {
        self.read(vm, control + control::INDEX, Word).unwrap() as u32
    }

    fn notify(&mut self, vm: u8, control: u64, mask: u32) -> u32 {
        self.write(vm, control + control::NOTIFY, Word, mask.into())
            .unwrap();
        self.read(vm, control + control::NOTIFY, Word).unwrap() as u32
    }

    fn detach(&mut self, vm: u8, control: u64) {
        self.write(vm, control + control::DETACH, Word, 1).unwrap();
    }

    fn report(&self, name: &[u8]) -> RegionReport {
        self.shmem
            .regions()
            .find(|report| report.name.as_bytes() == name)
            .unwrap()
    }

    /// Checks the invariants that hold after every step.
    fn check_invariants(&self) {
        let shmem = &self.shmem;
        let mut pages = 0;
        for (r, region) in shmem.regions.iter().enumerate() {
            if region.state != RegionState::Live {
                assert_eq!(region.attached, 0);
                continue;
            }
            pages += region.pages;
            assert!(
                region.boot || region.attached != 0,
                "a guest region with nobody lives"
            );
            for index in indices(region.attached) {
                let member = region.members[index];
                let connection =
                    shmem.devices[usize::from(member.device)].connections[usize::from(member.slot)];
                assert!(connection.live);
                assert_eq!(usize::from(connection.region), r);
                assert_eq!(usize::from(connection.index), index, "an index given twice");
            }
        }
        assert_eq!(pages, shmem.pages_in_use);
        assert!(shmem.pages_in_use <= shmem.page_limit);
        let mut live_connections = 0;
        for device in &shmem.devices[..shmem.device_count] {
            let live: Vec<_> = device.connections.iter().filter(|c| c.live).collect();
            live_connections += live.len();
            for (at, connection) in live.iter().enumerate() {
                let region = &shmem.regions[usize::from(connection.region)];
                assert_eq!(region.state, RegionState::Live);
                assert_ne!(region.attached & (1 << connection.index), 0);
                assert_eq!(connection.pages, region.pages + 1);
                assert!(connection.first_page + connection.pages <= device.window_pages);
                for other in &live[at + 1..] {
                    assert!(
                        connection.first_page + connection.pages <= other.first_page
                            || other.first_page + other.pages <= connection.first_page,
                        "window pages given twice"
                    );
                }
            }
            let unread = live.iter().filter(|c| c.unread != 0).count();
            assert_eq!(device.unread_connections, unread);
            let level = self
                .core
                .levels
                .get(&(device.vm.0, device.intid))
                .copied()
                .unwrap_or(false);
            assert_eq!(level, unread != 0, "the vector follows the unread bits");
        }
        let attached: u32 = shmem
            .regions
            .iter()
            .map(|region| region.attached.count_ones())
            .sum();
        assert_eq!(attached as usize, live_connections);
        // Every mapped guest page is a live connection's data page.
        let mut mapped = 0;
        for device in &shmem.devices[..shmem.device_count] {
            for connection in device.connections.iter().filter(|c| c.live) {
                let region = &shmem.regions[usize::from(connection.region)];
                for page in 0..region.pages {
                    let guest = device.window_base / PAGE_SIZE + connection.first_page + 1 + page;
                    assert_eq!(
                        self.core.stage2.get(&(device.vm.0, guest)),
                        Some(&(region.host_address + page * PAGE_SIZE))
                    );
                    mapped += 1;
                }
            }
        }
        assert_eq!(mapped, self.core.stage2.len());
    }
}

const OK: u32 = Status::Ok as u32;
const NOMEM: u32 = Status::NoMemory as u32;
const CLIENT_MAX: u32 = Status::ClientMax as u32;
const ILLEGAL_NAME: u32 = Status::IllegalName as u32;
const NO_PERMISSION: u32 = Status::NoPermission as u32;
const DOES_NOT_EXIST: u32 = Status::DoesNotExist as u32;
const UNKNOWN_FAILURE: u32 = Status::UnknownFailure as u32;

/// The factory page as bytes, as a reference for reads at any offset.
fn factory_bytes(shmem: u64, vector: u32, status: u32, size: u32, name: &[u8]) -> [u8; 0x48] {
    let mut bytes = [0; 0x48];
    bytes[0..8].copy_from_slice(&SIGNATURE.to_le_bytes());
    bytes[8..16].copy_from_slice(&shmem.to_le_bytes());
    bytes[0x10..0x14].copy_from_slice(&vector.to_le_bytes());
    bytes[0x14..0x18].copy_from_slice(&status.to_le_bytes());
    bytes[0x18..0x1C].copy_from_slice(&size.to_le_bytes());
    bytes[0x1C..0x1C + name.len()].copy_from_slice(name);
    bytes
}

fn little_endian(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0, |value, &byte| value << 8 | u64::from(byte))
}

const WIDTHS: [AccessWidth; 4] = [Byte, HalfWord, Word, DoubleWord];

#[test]
fn the_factory_reads_the_same_at_every_offset_and_width() {
    let mut system = System::new(1, 64);
    // Before any request: signature and vector, everything else 0.
    let before = factory_bytes(0, vector(0), 0, 0, b"");
    for width in WIDTHS {
        for offset in 0..0x40 {
            let expected = little_endian(&before[offset..offset + usize::from(width.bytes())]);
            assert_eq!(
                system.factory(0, offset as u64, width),
                expected,
                "{offset:#x} {width:?}"
            );
        }
    }
    assert_eq!(system.factory(0, 0, DoubleWord), 0x4d53_4732_474d_5651);
    assert_eq!(system.factory(0, 0, Word), 0x474d_5651, "the low half");
    assert_eq!(system.factory(0, 4, Word), 0x4d53_4732, "the high half");
    let control = system.connect(0, b"testing", 3);
    let after = factory_bytes(control, vector(0), 0, 3, b"testing");
    for width in WIDTHS {
        for offset in 0..0x40 {
            let expected = little_endian(&after[offset..offset + usize::from(width.bytes())]);
            assert_eq!(
                system.factory(0, offset as u64, width),
                expected,
                "{offset:#x} {width:?}"
            );
        }
    }
    // Unlisted offsets read 0 and ignore writes; the last bytes of the page
    // too.
    system.set_factory(0, 0x100, DoubleWord, u64::MAX);
    assert_eq!(system.factory(0, 0x100, DoubleWord), 0);
    assert_eq!(system.factory(0, 0xFF8, DoubleWord), 0);
    assert_eq!(system.factory(0, 0xFFF, Byte), 0);
}

#[test]
fn read_only_factory_fields_ignore_writes_at_every_width() {
    let mut system = System::new(1, 64);
    let control = system.connect(0, b"ro", 2);
    system.core.take_calls();
    for width in WIDTHS {
        for offset in 0..=factory::SIZE - u64::from(width.bytes()) {
            system.set_factory(0, offset, width, u64::MAX);
        }
    }
    assert_eq!(system.factory(0, factory::SIGNATURE, DoubleWord), SIGNATURE);
    assert_eq!(system.factory(0, factory::VECTOR, Word), vector(0).into());
    assert_eq!(system.outcome(0), (OK, control, 2));
    assert!(system.core.take_calls().is_empty(), "nothing acted");
}

#[test]
fn accesses_past_the_page_are_refused() {
    let mut system = System::new(1, 64);
    assert_eq!(
        system.read(0, FACTORY + 0xFFC, DoubleWord),
        Err(AccessRefused::CrossesPage)
    );
    assert_eq!(
        system.write(0, FACTORY + 0xFFF, HalfWord, 0),
        Err(AccessRefused::CrossesPage)
    );
    let control = system.connect(0, b"edge", 1);
    assert_eq!(
        system.read(0, control + 0xFFE, Word),
        Err(AccessRefused::CrossesPage)
    );
    assert_eq!(system.read(0, control + 0xFF8, DoubleWord), Ok(0));
    // The model also refuses what the router would never send it.
    let device = DeviceId(0);
    assert_eq!(
        system
            .shmem
            .read(device, Area::Factory, PAGE_SIZE, Byte, &mut system.core),
        Err(AccessRefused::NothingThere)
    );
}

#[test]
fn a_name_written_as_one_unaligned_doubleword_store_creates_the_region() {
    let mut system = System::new(1, 64);
    // What one known driver's strcpy compiles to: "testing\0" at 0x1C.
    system.set_factory(
        0,
        factory::NAME,
        DoubleWord,
        u64::from_le_bytes(*b"testing\0"),
    );
    system.set_factory(0, factory::SIZE, Word, 4);
    assert_eq!(system.outcome(0), (OK, WINDOW, 4));
    assert_eq!(system.report(b"testing").pages, 4);
}

#[test]
fn a_write_spanning_name_and_find_writes_the_name_first() {
    let mut system = System::new(2, 64);
    system.connect(1, b"abcdefghijklmnopqrstuvwxyz0123", 1);
    // Name bytes 0..27 by halfword stores, then one doubleword at 0x38:
    // name bytes 28..31 ("23" and two NULs), then the find field.
    let name = b"abcdefghijklmnopqrstuvwxyz0123\0\0";
    for at in (0..28).step_by(2) {
        system.set_factory(
            0,
            factory::NAME + at,
            HalfWord,
            little_endian(&name[at as usize..][..2]),
        );
    }
    let tail = little_endian(&name[28..32]);
    system.set_factory(0, 0x38, DoubleWord, tail | 0x5555_5555 << 32);
    assert_eq!(
        system.outcome(0),
        (OK, WINDOW, 1),
        "the find acted with the full name"
    );
}

#[test]
fn a_doubleword_at_size_requests_before_the_name_changes() {
    let mut system = System::new(1, 64);
    system.name(0, b"first");
    // Size 2 and the name's first four bytes "secd" in one store: the
    // request runs with "first", then the name changes.
    let value = 2 | u64::from(u32::from_le_bytes(*b"secd")) << 32;
    system.set_factory(0, factory::SIZE, DoubleWord, value);
    assert_eq!(system.outcome(0).0, OK);
    assert!(
        system
            .shmem
            .regions()
            .any(|r| r.name.as_bytes() == b"first")
    );
    assert_eq!(
        system.factory(0, factory::NAME, Word),
        u32::from_le_bytes(*b"secd").into()
    );
    assert_eq!(system.factory(0, factory::NAME + 4, Byte), u64::from(b't'));
}

#[test]
fn narrow_command_writes_are_ignored() {
    let mut system = System::new(2, 64);
    system.name(0, b"narrow");
    for (offset, width) in [
        (factory::SIZE, Byte),
        (factory::SIZE, HalfWord),
        (factory::SIZE + 2, HalfWord),
        (factory::SIZE + 1, Byte),
        (factory::FIND, Byte),
        (factory::FIND + 2, HalfWord),
    ] {
        system.set_factory(0, offset, width, 1);
    }
    assert_eq!(system.outcome(0), (0, 0, 0), "no request was made");
    assert_eq!(system.shmem.regions().count(), 0);
    let first = system.connect(0, b"narrow", 1);
    let second = system.connect(1, b"narrow", 1);
    system.status(0, first);
    system.core.take_calls();
    for (offset, width) in [
        (control::NOTIFY, Byte),
        (control::NOTIFY, HalfWord),
        (control::NOTIFY + 2, HalfWord),
        (control::DETACH, Byte),
        (control::DETACH + 1, HalfWord),
        (control::DETACH + 2, HalfWord),
    ] {
        system.write(0, first + offset, width, u64::MAX).unwrap();
    }
    assert!(system.core.take_calls().is_empty(), "no notify, no detach");
    assert_eq!(system.read(0, first + control::NOTIFY, Word), Ok(0));
    assert_eq!(system.status(1, second), 0b11 << 16);
}

#[test]
fn find_and_create_of_zero_pages_need_an_existing_region() {
    let mut system = System::new(2, 64);
    assert_eq!(system.find(0, b"missing"), (DOES_NOT_EXIST, 0, 0));
    assert_eq!(system.create(0, b"missing", 0), (DOES_NOT_EXIST, 0, 0));
    assert_eq!(system.shmem.regions().count(), 0);
    assert!(system.core.calls.is_empty(), "nothing taken");
    let control = system.connect(1, b"there", 5);
    assert_eq!(control, WINDOW);
    assert_eq!(system.find(0, b"there"), (OK, WINDOW, 5));
    assert_eq!(
        system.create(0, b"there", 0),
        (OK, WINDOW + 6 * PAGE_SIZE, 5)
    );
}

#[test]
fn illegal_names_are_refused_first() {
    // A deny-all rule and a missing name: the name's form still decides.
    let deny_all = [Rule {
        kind: RuleKind::Deny,
        pattern: Pattern::new(b"*").unwrap(),
    }];
    let mut system = System::with_rules(1, 64, &deny_all);
    assert_eq!(system.create(0, b"", 1).0, ILLEGAL_NAME, "empty");
    assert_eq!(system.find(0, b"a b").0, ILLEGAL_NAME, "a space");
    assert_eq!(system.create(0, b"tab\t", 1).0, ILLEGAL_NAME);
    assert_eq!(system.create(0, b"\xff\xfe", 1).0, ILLEGAL_NAME);
    for offset in (0..32).step_by(4) {
        system.set_factory(0, factory::NAME + offset, Word, 0x6161_6161);
    }
    system.set_factory(0, factory::SIZE, Word, 1);
    assert_eq!(system.outcome(0).0, ILLEGAL_NAME, "no NUL in 32 bytes");
    // 31 bytes and a NUL is the longest legal name (denied here).
    assert_eq!(system.create(0, &[b'a'; 31], 1).0, NO_PERMISSION);
}

#[test]
fn garbage_names_never_create_anything() {
    let mut system = System::new(1, 64);
    let mut seed = 0x1234_5678_u64;
    for _ in 0..2000 {
        for offset in (0..32).step_by(8) {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            // Bytes with the top bit set, or control characters, somewhere.
            let garbage = seed | 0x80;
            system.set_factory(0, factory::NAME + offset, DoubleWord, garbage);
        }
        system.set_factory(0, factory::SIZE, Word, 1);
        assert_eq!(system.outcome(0).0, ILLEGAL_NAME);
    }
    assert_eq!(system.shmem.regions().count(), 0);
}

#[test]
fn refused_names_do_not_reveal_whether_they_exist() {
    let rules = [
        Rule {
            kind: RuleKind::Deny,
            pattern: Pattern::new(b"secret-*").unwrap(),
        },
        Rule {
            kind: RuleKind::Allow,
            pattern: Pattern::new(b"*").unwrap(),
        },
    ];
    let mut system = System::with_rules(2, 64, &rules);
    system.connect(1, b"secret-keys", 1);
    assert_eq!(system.find(0, b"secret-keys"), (NO_PERMISSION, 0, 0));
    assert_eq!(system.find(0, b"secret-none"), (NO_PERMISSION, 0, 0));
    assert_eq!(system.create(0, b"secret-none", 1).0, NO_PERMISSION);
    assert_eq!(system.report(b"secret-keys").attached, 0b1);
    assert_eq!(system.create(0, b"public", 1).0, OK);
    // An allow list: everything else refused.
    let allow = [Rule {
        kind: RuleKind::Allow,
        pattern: Pattern::new(b"chan?").unwrap(),
    }];
    let mut system = System::with_rules(1, 64, &allow);
    assert_eq!(system.create(0, b"chan1", 1).0, OK);
    assert_eq!(system.create(0, b"chan10", 1).0, NO_PERMISSION);
}

#[test]
fn order_does_not_matter_and_the_first_creator_sets_the_size() {
    for first in [0u8, 1] {
        let second = 1 - first;
        let mut system = System::new(2, 64);
        let asked = |vm: u8| if vm == 0 { 4 } else { 8 };
        let (status, a, size) = system.create(first, b"shared", asked(first));
        assert_eq!((status, size), (OK, asked(first).into()));
        let (status, b, size) = system.create(second, b"shared", asked(second));
        assert_eq!(
            (status, size),
            (OK, asked(first).into()),
            "the first size wins"
        );
        // One region: what one writes in its data pages the other reads.
        let last = a + u64::from(asked(first)) * PAGE_SIZE + 0xFFF;
        assert!(system.core.guest_store(first, a + PAGE_SIZE, 0x42));
        assert!(system.core.guest_store(second, last - a + b, 0x17));
        assert_eq!(system.core.guest_load(second, b + PAGE_SIZE), Some(0x42));
        assert_eq!(system.core.guest_load(first, last), Some(0x17));
        assert_eq!(system.report(b"shared").attached, 0b11);
        system.check_invariants();
    }
}

#[test]
fn a_new_region_is_zeroed_and_its_data_pages_mapped_after_the_control_page() {
    let mut system = System::new(1, 64);
    let control = system.connect(0, b"zeroed", 3);
    let calls = system.core.take_calls();
    let Call::Allocate { pages: 3 } = calls[0] else {
        panic!("{calls:?}")
    };
    let Call::Zero { host, pages: 3 } = calls[1] else {
        panic!("{calls:?}")
    };
    assert_eq!(
        calls[2],
        Call::Map {
            vm: 0,
            guest: control + PAGE_SIZE,
            host,
            length: 3 * PAGE_SIZE
        }
    );
    assert_eq!(calls.len(), 3, "{calls:?}");
    for offset in (0..3 * PAGE_SIZE).step_by(509) {
        assert_eq!(
            system.core.guest_load(0, control + PAGE_SIZE + offset),
            Some(0)
        );
    }
    // The control page is trapped, not memory.
    assert_eq!(system.core.guest_load(0, control), None);
}

#[test]
fn the_seventeenth_connection_gets_client_max() {
    let mut system = System::new(2, 64);
    let mut controls = Vec::new();
    for connection in 0..16 {
        let vm = (connection % 2) as u8;
        let control = system.connect(vm, b"crowd", 1);
        assert_eq!(system.index(vm, control), connection, "lowest free index");
        controls.push((vm, control));
    }
    let before = system.outcome(0);
    assert_eq!(
        system.create(0, b"crowd", 1),
        (CLIENT_MAX, before.1, before.2)
    );
    assert_eq!(system.find(1, b"crowd").0, CLIENT_MAX);
    // Free index 3: the next connection takes it.
    let (vm, control) = controls[3];
    system.detach(vm, control);
    let control = system.connect(0, b"crowd", 1);
    assert_eq!(system.index(0, control), 3);
    system.check_invariants();
}

#[test]
fn nomem_over_the_page_limit_for_a_full_window_and_without_host_memory() {
    let mut system = System::new(2, 10);
    let first = system.connect(0, b"big", 8);
    assert_eq!(system.create(1, b"more", 3), (NOMEM, 0, 0), "8 + 3 > 10");
    assert_eq!(system.outcome(0), (OK, first, 8), "unchanged");
    system.connect(1, b"more", 2);
    assert_eq!(system.shmem.pages_in_use(), 10);
    assert_eq!(system.create(1, b"one", 1).0, NOMEM);
    // An existing region needs no pages, only window room.
    assert_eq!(system.create(1, b"big", 1).0, OK);
    system.check_invariants();

    // A window of 64 pages: 31 + 1 twice fills it.
    let mut system = System::new(1, 1000);
    system.connect(0, b"a", 31);
    system.connect(0, b"b", 31);
    system.core.take_calls();
    assert_eq!(system.create(0, b"c", 1).0, NOMEM, "no room for a new one");
    assert!(
        system.core.take_calls().is_empty(),
        "no memory taken for it"
    );
    assert_eq!(system.create(0, b"a", 1).0, NOMEM, "nor to attach again");
    assert_eq!(system.shmem.pages_in_use(), 62);

    // Host memory runs out (the fake has 256 pages).
    let mut system = System::new(2, 10_000);
    system.connect(0, b"most", 60);
    system.core.used[100..].fill(true);
    assert_eq!(system.create(1, b"rest", 50).0, NOMEM, "40 pages left");
    assert_eq!(system.shmem.pages_in_use(), 60);
    assert!(system.shmem.regions().all(|r| r.name.as_bytes() != b"rest"));
    system.check_invariants();
}

#[test]
fn the_registry_running_full_is_nomem_and_reuses_freed_slots() {
    let mut system = System::new(1, 1000);
    let mut controls = Vec::new();
    for n in 0..MAX_REGIONS {
        let name = std::format!("r{n}");
        controls.push(system.connect(0, name.as_bytes(), 1));
    }
    assert_eq!(system.create(0, b"one-more", 1).0, NOMEM);
    system.detach(0, controls[5]);
    assert_eq!(
        system.create(0, b"one-more", 1).0,
        OK,
        "a freed slot serves"
    );
    assert!(system.shmem.regions().all(|r| r.name.as_bytes() != b"r5"));
}

#[test]
fn a_refused_map_undoes_the_request() {
    let mut system = System::new(1, 64);
    system.core.refuse_map = Some(PagesRefused::OutOfMemory);
    assert_eq!(system.create(0, b"tables", 4).0, NOMEM);
    assert_eq!(system.shmem.pages_in_use(), 0);
    assert_eq!(system.core.used.iter().filter(|u| **u).count(), 0, "freed");
    system.core.refuse_map = Some(PagesRefused::AlreadyMapped { guest_address: 0 });
    assert_eq!(system.create(0, b"tables", 4).0, UNKNOWN_FAILURE);
    assert_eq!(system.shmem.core_refusals(), 1);
    assert_eq!(system.create(0, b"tables", 4).0, OK);
    system.check_invariants();
}

#[test]
fn pages_the_core_would_not_unmap_are_never_freed() {
    let mut system = System::new(1, 64);
    let control = system.connect(0, b"stuck", 4);
    system.core.refuse_unmap = true;
    system.detach(0, control);
    assert_eq!(system.shmem.core_refusals(), 1);
    assert!(
        !system
            .core
            .take_calls()
            .iter()
            .any(|call| matches!(call, Call::Free { .. })),
        "pages a guest may still reach were freed"
    );
    assert_eq!(system.core.used.iter().filter(|used| **used).count(), 4);
    assert_eq!(system.shmem.pages_in_use(), 4, "still counted");
    assert!(!system.report(b"stuck").live);
}

#[test]
fn windows_are_placed_lowest_fit_and_reused() {
    let mut system = System::new(1, 1000);
    let a = system.connect(0, b"a", 2); // pages 0..3
    let b = system.connect(0, b"b", 1); // 3..5
    let c = system.connect(0, b"c", 4); // 5..10
    assert_eq!(
        [a, b, c],
        [WINDOW, WINDOW + 3 * PAGE_SIZE, WINDOW + 5 * PAGE_SIZE]
    );
    system.detach(0, a);
    system.detach(0, c);
    // 0..3 is free again: a region of 1 (2 pages) fits at 0, then one of
    // 2 (3 pages) does not fit in the 1 page left, so it goes after b.
    assert_eq!(system.connect(0, b"d", 1), WINDOW);
    assert_eq!(system.connect(0, b"e", 2), WINDOW + 5 * PAGE_SIZE);
}

#[test]
fn a_failed_request_keeps_the_last_success_and_detach_keeps_it_too() {
    let mut system = System::new(1, 64);
    let control = system.connect(0, b"kept", 2);
    assert_eq!(system.find(0, b"gone").0, DOES_NOT_EXIST);
    assert_eq!(system.outcome(0), (DOES_NOT_EXIST, control, 2));
    system.detach(0, control);
    assert_eq!(system.outcome(0), (DOES_NOT_EXIST, control, 2));
}

#[test]
fn own_attach_is_not_news_but_peers_are_told() {
    let mut system = System::new(3, 64);
    let zero = system.connect(0, b"room", 1);
    assert!(!system.core.level(0), "own attach raises nothing");
    assert_eq!(system.status(0, zero), 0b1 << 16);
    let one = system.connect(1, b"room", 1);
    assert!(system.core.level(0), "a peer attached");
    assert!(!system.core.level(1));
    assert_eq!(system.status(0, zero), 0b11 << 16);
    assert!(!system.core.level(0), "the read took it");
    assert_eq!(system.status(1, one), 0b11 << 16);
    let two = system.connect(2, b"room", 1);
    assert!(system.core.level(0) && system.core.level(1) && !system.core.level(2));
    for (vm, control) in [(0, zero), (1, one), (2, two)] {
        assert_eq!(system.status(vm, control), 0b111 << 16);
    }
    system.check_invariants();
    // A detach: the others see bit 1 drop and are interrupted; the old
    // control and data pages are nothing now.
    system.core.take_calls();
    system.detach(1, one);
    let calls = system.core.take_calls();
    assert_eq!(
        calls[0],
        Call::Unmap {
            vm: 1,
            guest: one + PAGE_SIZE,
            length: PAGE_SIZE
        }
    );
    assert!(calls.contains(&Call::Level {
        vm: 0,
        intid: vector(0),
        asserted: true
    }));
    assert!(calls.contains(&Call::Level {
        vm: 2,
        intid: vector(2),
        asserted: true
    }));
    assert_eq!(system.status(0, zero), 0b101 << 16);
    assert_eq!(system.status(2, two), 0b101 << 16);
    assert_eq!(system.read(1, one, Word), Err(AccessRefused::NothingThere));
    assert_eq!(
        system.write(1, one + control::DETACH, Word, 1),
        Err(AccessRefused::NothingThere),
        "repeated detach"
    );
    assert_eq!(
        system.read(1, one + PAGE_SIZE, Byte),
        Err(AccessRefused::NothingThere)
    );
    assert_eq!(system.core.guest_load(1, one + PAGE_SIZE), None, "unmapped");
    assert_eq!(
        system.read(1, WINDOW + 40 * PAGE_SIZE, Word),
        Err(AccessRefused::NothingThere)
    );
    system.check_invariants();
}

#[test]
fn selective_signalling_among_three() {
    let mut system = System::new(3, 64);
    let zero = system.connect(0, b"three", 1);
    let one = system.connect(1, b"three", 1);
    let two = system.connect(2, b"three", 1);
    for (vm, control) in [(0, zero), (1, one), (2, two)] {
        system.status(vm, control);
    }
    system.core.take_calls();
    // 0 signals 1 only.
    assert_eq!(system.notify(0, zero, 1 << 1), 1 << 1, "the read-back");
    let calls = system.core.take_calls();
    assert_eq!(
        calls,
        [
            Call::Barrier,
            Call::Level {
                vm: 1,
                intid: vector(1),
                asserted: true
            }
        ],
        "the barrier comes before the signal"
    );
    assert!(!system.core.level(2), "2 hears nothing");
    assert_eq!(system.status(2, two), 0b111 << 16, "and has no bits");
    assert_eq!(system.status(1, one), 0b111 << 16 | 1 << 0, "sender 0");
    assert!(!system.core.level(1));
    assert_eq!(system.status(1, one), 0b111 << 16, "the read cleared it");
    // All but me reaches 1 and 2.
    assert_eq!(system.notify(0, zero, NOTIFY_ALL_BUT_ME), 0b110);
    assert!(system.core.level(1) && system.core.level(2) && !system.core.level(0));
    assert_eq!(system.status(1, one) & 0xffff, 0b1);
    assert_eq!(system.status(2, two) & 0xffff, 0b1);
    // Self, unattached indices and bits 16..31 reach nobody.
    assert_eq!(
        system.notify(0, zero, 1 << 0 | 1 << 7 | 1 << 15 | 0xffff_0000),
        0
    );
    assert_eq!(
        system.notify(0, zero, 0xffff_fffe),
        0b110,
        "not the all-but-me value"
    );
    assert_eq!(system.notify(2, two, 0x7fff_ffff), 0b011);
    assert_eq!(system.status(0, zero) & 0xffff, 1 << 2);
    assert_eq!(
        system.status(1, one) & 0xffff,
        1 << 0 | 1 << 2,
        "bits accumulate"
    );
    let counters = system.report(b"three").counters;
    assert_eq!(
        counters,
        RegionCounters {
            connections: 3,
            notifications_sent: 5,
            notifications_delivered: 7, // 1, 2, 0, 2 and 2
        }
    );
    system.check_invariants();
}

#[test]
fn a_signal_after_the_read_raises_the_line_again_and_none_is_lost() {
    let mut system = System::new(2, 64);
    let zero = system.connect(0, b"pp", 1);
    let one = system.connect(1, b"pp", 1);
    system.status(0, zero);
    for round in 0..1000 {
        assert_eq!(system.notify(0, zero, 1 << 1), 1 << 1);
        assert!(system.core.level(1));
        if round % 2 == 0 {
            // Several notifies before the read: one interrupt.
            system.notify(0, zero, 1 << 1);
        }
        assert_eq!(system.status(1, one) & 0xffff, 1);
        assert!(!system.core.level(1));
        assert_eq!(system.notify(1, one, 1 << 0), 1 << 0);
        assert_eq!(system.status(0, zero) & 0xffff, 1 << 1);
    }
    let counters = system.report(b"pp").counters;
    assert_eq!(counters.notifications_sent, 2500);
    assert_eq!(counters.notifications_delivered, 2500);
}

#[test]
fn status_reads_clear_only_the_bytes_they_return() {
    let mut system = System::new(2, 64);
    let zero = system.connect(0, b"bytes", 1);
    let mut peers = Vec::new();
    for _ in 0..10 {
        peers.push(system.connect(1, b"bytes", 1));
    }
    // Index 9 signals 0: sender bit 9 sits in status byte 1.
    system.notify(1, peers[8], 1 << 0);
    assert_eq!(system.read(0, zero, Byte), Ok(0), "byte 0: senders 0..7");
    assert!(
        system.core.level(0),
        "sender 9 and the attaches still unread"
    );
    assert_eq!(system.read(0, zero + 1, Byte), Ok(1 << 1));
    assert!(system.core.level(0), "the attach changes still unread");
    assert_eq!(system.read(0, zero + 2, HalfWord), Ok(0x7ff));
    assert!(!system.core.level(0));
    // A doubleword read spans status and idx; a word at 2 spans status's
    // upper half and idx's lower half.
    system.notify(1, peers[0], 1 << 0);
    assert_eq!(system.read(0, zero, DoubleWord), Ok(0x7ff << 16 | 1 << 1));
    assert_eq!(system.read(1, peers[3] + 2, Word), Ok(0x0004_07ff));
    assert_eq!(
        system.read(1, peers[3] + 0xC, Word),
        Ok(0),
        "detach reads 0"
    );
    system.check_invariants();
}

#[test]
fn the_control_page_reads_the_same_at_every_offset_and_width() {
    let mut system = System::new(2, 64);
    let zero = system.connect(0, b"ctl", 1);
    let one = system.connect(1, b"ctl", 1);
    system.notify(1, one, 1);
    system.status(0, zero);
    // No unread bits now: reads have no side effects.
    let mut bytes = [0u8; 0x18];
    bytes[0..4].copy_from_slice(&(0b11u32 << 16).to_le_bytes());
    bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    for width in WIDTHS {
        for offset in 0..0x10 {
            let expected = little_endian(&bytes[offset..offset + usize::from(width.bytes())]);
            assert_eq!(
                system.read(1, one + offset as u64, width),
                Ok(expected),
                "{offset:#x} {width:?}"
            );
        }
    }
    // Writes to status and idx are ignored at every width.
    for width in WIDTHS {
        for offset in 0..8 - u64::from(width.bytes()) + 1 {
            system.write(1, one + offset, width, u64::MAX).unwrap();
        }
    }
    assert_eq!(system.index(1, one), 1);
    assert_eq!(system.status(1, one), 0b11 << 16);
}

#[test]
fn the_field_by_field_entry_points_do_what_the_fast_cases_do() {
    // `read_by_fields` and `write_by_fields` (the core's way for accesses
    // without a syndrome) leave out `read`'s whole-word status case and
    // `write`'s whole-word notify case: the fields must do the same.
    let mut fast = System::new(3, 64);
    let mut fields = System::new(3, 64);
    let mut controls = [0; 3];
    for system in [&mut fast, &mut fields] {
        for (vm, control) in controls.iter_mut().enumerate() {
            *control = system.connect(vm as u8, b"same", 1);
        }
        system.core.take_calls();
    }
    let by_fields = |system: &mut System, vm: u8, address: u64, store: Option<u64>| {
        system.core.acting = vm;
        let (device, area, offset) = system.shmem.route(VmIndex(vm), address).unwrap();
        match store {
            Some(value) => system
                .shmem
                .write_by_fields(device, area, offset, Word, value, &mut system.core)
                .map(|()| 0),
            None => system
                .shmem
                .read_by_fields(device, area, offset, Word, &mut system.core),
        }
    };
    for (sender, mask) in [(0, 1 << 1), (1, NOTIFY_ALL_BUT_ME), (2, 0b011), (0, 0)] {
        let notify = controls[usize::from(sender)] + control::NOTIFY;
        assert_eq!(
            fast.write(sender, notify, Word, u64::from(mask)),
            by_fields(&mut fields, sender, notify, Some(u64::from(mask))).map(drop)
        );
        assert_eq!(fast.core.take_calls(), fields.core.take_calls());
        for (vm, control) in controls.iter().enumerate() {
            let status = control + control::STATUS;
            assert_eq!(
                fast.read(vm as u8, status, Word),
                by_fields(&mut fields, vm as u8, status, None)
            );
            assert_eq!(fast.core.take_calls(), fields.core.take_calls());
            let delivered = control + control::NOTIFY;
            assert_eq!(
                fast.read(vm as u8, delivered, Word),
                by_fields(&mut fields, vm as u8, delivered, None)
            );
        }
    }
    assert_eq!(
        fast.report(b"same").counters,
        fields.report(b"same").counters
    );
}

#[test]
fn a_doubleword_write_at_notify_notifies_then_detaches() {
    let mut system = System::new(2, 64);
    let zero = system.connect(0, b"last-word", 1);
    let one = system.connect(1, b"last-word", 1);
    system.status(0, zero);
    system
        .write(1, one + control::NOTIFY, DoubleWord, 1 | 1 << 32)
        .unwrap();
    assert_eq!(
        system.status(0, zero),
        0b01 << 16 | 1 << 1,
        "sender 1, then gone"
    );
    assert_eq!(system.read(1, one, Word), Err(AccessRefused::NothingThere));
    // A doubleword at 0xC: the detach field is whole, the rest unlisted.
    system
        .write(0, zero + control::DETACH, DoubleWord, 0)
        .unwrap();
    assert_eq!(system.shmem.regions().filter(|r| r.live).count(), 0);
    system.check_invariants();
}

#[test]
fn a_guest_region_is_freed_with_its_last_connection_and_reads_zero_when_made_again() {
    let mut system = System::new(2, 64);
    let zero = system.connect(0, b"life", 2);
    let one = system.connect(1, b"life", 2);
    assert!(system.core.guest_store(0, zero + PAGE_SIZE + 7, 0xEE));
    system.detach(0, zero);
    assert!(system.report(b"life").live);
    system.core.take_calls();
    system.detach(1, one);
    let calls = system.core.take_calls();
    assert!(
        matches!(calls.last(), Some(Call::Free { pages: 2, .. })),
        "{calls:?}"
    );
    assert!(!system.report(b"life").live);
    assert_eq!(system.shmem.pages_in_use(), 0);
    // Made again: the same host pages come back (first fit) and read 0.
    let again = system.connect(1, b"life", 2);
    assert_eq!(system.core.guest_load(1, again + PAGE_SIZE + 7), Some(0));
    let report = system.report(b"life");
    assert_eq!(report.counters.connections, 3, "counted under the name");
    system.check_invariants();
}

#[test]
fn a_boot_region_survives_its_last_detach_and_keeps_its_data() {
    let mut system = System::new(2, 64);
    system
        .shmem
        .add_boot_region(b"boot", 3, &mut system.core)
        .unwrap();
    assert_eq!(system.shmem.pages_in_use(), 3);
    let report = system.report(b"boot");
    assert!(report.boot && report.live && report.attached == 0);
    assert_eq!(system.find(0, b"boot"), (OK, WINDOW, 3), "find sees it");
    assert_eq!(
        system.core.guest_load(0, WINDOW + PAGE_SIZE),
        Some(0),
        "zeroed"
    );
    assert!(system.core.guest_store(0, WINDOW + PAGE_SIZE, 9));
    system.detach(0, WINDOW);
    assert!(system.report(b"boot").live);
    assert!(
        !system
            .core
            .calls
            .iter()
            .any(|c| matches!(c, Call::Free { .. }))
    );
    let one = system.connect(1, b"boot", 1);
    assert_eq!(system.core.guest_load(1, one + PAGE_SIZE), Some(9));
    assert_eq!(system.outcome(1).2, 3, "its own size");
}

#[test]
fn boot_regions_are_checked() {
    let mut core = FakeCore::new(16);
    let mut shmem = Shmem::new(10);
    assert_eq!(
        shmem.add_boot_region(b"a b", 1, &mut core),
        Err(ConfigError::IllegalName)
    );
    assert_eq!(
        shmem.add_boot_region(b"z", 0, &mut core),
        Err(ConfigError::BadSize)
    );
    assert_eq!(
        shmem.add_boot_region(b"z", 1 << 32, &mut core),
        Err(ConfigError::BadSize)
    );
    assert_eq!(
        shmem.add_boot_region(b"z", 11, &mut core),
        Err(ConfigError::OverLimit)
    );
    shmem.add_boot_region(b"z", 6, &mut core).unwrap();
    assert_eq!(
        shmem.add_boot_region(b"z", 1, &mut core),
        Err(ConfigError::DuplicateName)
    );
    assert_eq!(
        shmem.add_boot_region(b"y", 5, &mut core),
        Err(ConfigError::OverLimit)
    );
    assert_eq!(shmem.set_page_limit(5), Err(ConfigError::OverLimit));
    shmem.set_page_limit(11).unwrap();
    shmem.add_boot_region(b"y", 5, &mut core).unwrap();
    let mut shmem = Shmem::new(0);
    shmem.set_page_limit(100).unwrap();
    assert_eq!(
        shmem.add_boot_region(b"y", 17, &mut core),
        Err(ConfigError::NoMemory)
    );
    for n in 0..MAX_REGIONS {
        let mut core = FakeCore::new(1);
        shmem
            .add_boot_region(std::format!("r{n}").as_bytes(), 1, &mut core)
            .unwrap();
    }
    assert_eq!(
        shmem.add_boot_region(b"x", 1, &mut core),
        Err(ConfigError::TooManyRegions)
    );
}

#[test]
fn devices_are_checked() {
    let good = DeviceConfig {
        vm: VmIndex(0),
        factory: FACTORY,
        intid: 40,
        window_base: WINDOW,
        window_size: 16 * PAGE_SIZE,
        rules: &[],
    };
    let mut shmem = Shmem::new(10);
    let refused =
        |shmem: &mut Shmem, config: DeviceConfig<'_>| shmem.add_device(&config).unwrap_err();
    assert_eq!(
        refused(
            &mut shmem,
            DeviceConfig {
                factory: FACTORY + 8,
                ..good
            }
        ),
        ConfigError::FactoryMisaligned
    );
    assert_eq!(
        refused(
            &mut shmem,
            DeviceConfig {
                factory: !0xFFF,
                ..good
            }
        ),
        ConfigError::FactoryMisaligned
    );
    assert_eq!(
        refused(
            &mut shmem,
            DeviceConfig {
                window_base: WINDOW + 1,
                ..good
            }
        ),
        ConfigError::BadWindow
    );
    assert_eq!(
        refused(
            &mut shmem,
            DeviceConfig {
                window_size: 100,
                ..good
            }
        ),
        ConfigError::BadWindow
    );
    assert_eq!(
        refused(
            &mut shmem,
            DeviceConfig {
                window_size: 0,
                ..good
            }
        ),
        ConfigError::BadWindow
    );
    assert_eq!(
        refused(
            &mut shmem,
            DeviceConfig {
                window_base: !0xFFF,
                ..good
            }
        ),
        ConfigError::BadWindow
    );
    assert_eq!(
        refused(&mut shmem, DeviceConfig { intid: 31, ..good }),
        ConfigError::NotAnSpi
    );
    assert_eq!(
        refused(
            &mut shmem,
            DeviceConfig {
                intid: 1020,
                ..good
            }
        ),
        ConfigError::NotAnSpi
    );
    assert_eq!(
        refused(
            &mut shmem,
            DeviceConfig {
                factory: WINDOW + PAGE_SIZE,
                ..good
            }
        ),
        ConfigError::Overlap
    );
    let rule = Rule {
        kind: RuleKind::Allow,
        pattern: Pattern::new(b"*").unwrap(),
    };
    assert_eq!(
        refused(
            &mut shmem,
            DeviceConfig {
                rules: &[rule; MAX_RULES + 1],
                ..good
            }
        ),
        ConfigError::TooManyRules
    );
    shmem.add_device(&good).unwrap();
    // The same VM: no overlap with the first instance, nor its vector.
    let second = DeviceConfig {
        factory: FACTORY + PAGE_SIZE,
        intid: 41,
        window_base: WINDOW + 16 * PAGE_SIZE,
        ..good
    };
    assert_eq!(
        refused(
            &mut shmem,
            DeviceConfig {
                window_base: WINDOW + 15 * PAGE_SIZE,
                ..second
            }
        ),
        ConfigError::Overlap
    );
    assert_eq!(
        refused(
            &mut shmem,
            DeviceConfig {
                factory: FACTORY,
                ..second
            }
        ),
        ConfigError::Overlap
    );
    assert_eq!(
        refused(
            &mut shmem,
            DeviceConfig {
                intid: 40,
                ..second
            }
        ),
        ConfigError::SharedInterrupt
    );
    shmem.add_device(&second).unwrap();
    // Another VM may use the same addresses and vector.
    for vm in 1..MAX_DEVICES - 1 {
        shmem
            .add_device(&DeviceConfig {
                vm: VmIndex(vm as u8),
                ..good
            })
            .unwrap();
    }
    assert_eq!(
        refused(
            &mut shmem,
            DeviceConfig {
                vm: VmIndex(99),
                ..good
            }
        ),
        ConfigError::TooManyDevices
    );
}

#[test]
fn two_instances_in_one_vm_have_their_own_windows_and_vectors() {
    let mut shmem = Shmem::new(100);
    let base = DeviceConfig {
        vm: VmIndex(0),
        factory: FACTORY,
        intid: 40,
        window_base: WINDOW,
        window_size: 8 * PAGE_SIZE,
        rules: &[],
    };
    let first = shmem.add_device(&base).unwrap();
    let second = shmem
        .add_device(&DeviceConfig {
            factory: FACTORY + PAGE_SIZE,
            intid: 41,
            window_base: WINDOW + 8 * PAGE_SIZE,
            ..base
        })
        .unwrap();
    assert_eq!(
        shmem.route(VmIndex(0), FACTORY + 4),
        Some((first, Area::Factory, 4))
    );
    assert_eq!(
        shmem.route(VmIndex(0), FACTORY + PAGE_SIZE),
        Some((second, Area::Factory, 0))
    );
    assert_eq!(
        shmem.route(VmIndex(0), WINDOW + 9 * PAGE_SIZE),
        Some((second, Area::Window, PAGE_SIZE))
    );
    assert_eq!(shmem.route(VmIndex(1), FACTORY), None, "another VM's");
    assert_eq!(shmem.route(VmIndex(0), WINDOW + 16 * PAGE_SIZE), None);
    let mut system = System {
        shmem,
        core: FakeCore::new(64),
    };
    let a = system.connect(0, b"x", 1);
    system.name(0, b"x");
    system
        .write(
            0,
            FACTORY + PAGE_SIZE + factory::NAME,
            DoubleWord,
            u64::from_le_bytes(*b"x\0\0\0\0\0\0\0"),
        )
        .unwrap();
    system
        .write(0, FACTORY + PAGE_SIZE + factory::SIZE, Word, 1)
        .unwrap();
    let b = system
        .read(0, FACTORY + PAGE_SIZE + factory::SHMEM, DoubleWord)
        .unwrap();
    assert_eq!((a, b), (WINDOW, WINDOW + 8 * PAGE_SIZE));
    system.status(0, a);
    system.notify(0, b, 1 << 0);
    assert_eq!(
        system.core.levels.get(&(0, 40)),
        Some(&true),
        "the first instance's vector"
    );
    assert_eq!(system.core.levels.get(&(0, 41)), None);
}

#[test]
fn a_stopping_vm_loses_every_connection_and_its_peers_are_told() {
    let mut system = System::new(3, 64);
    let zero = system.connect(0, b"s1", 1);
    let zero_b = system.connect(0, b"s2", 2);
    let one = system.connect(1, b"s1", 1);
    let two = system.connect(2, b"s2", 1);
    system.notify(1, one, 1 << 0);
    assert!(system.core.level(0));
    for (vm, control) in [(1, one), (2, two)] {
        system.status(vm, control);
    }
    system.core.take_calls();
    system.core.acting = 0;
    system.shmem.detach_vm(VmIndex(0), &mut system.core);
    let calls = system.core.take_calls();
    assert!(calls.contains(&Call::Unmap {
        vm: 0,
        guest: zero + PAGE_SIZE,
        length: PAGE_SIZE
    }));
    assert!(calls.contains(&Call::Unmap {
        vm: 0,
        guest: zero_b + PAGE_SIZE,
        length: 2 * PAGE_SIZE
    }));
    assert!(!system.core.level(0), "its own vector lowered");
    assert!(system.core.level(1) && system.core.level(2), "peers told");
    assert_eq!(system.status(1, one), 0b10 << 16);
    assert_eq!(system.status(2, two), 0b10 << 16);
    assert_eq!(
        system.outcome(0),
        (0, 0, 0),
        "the factory as before any request"
    );
    assert_eq!(system.factory(0, factory::NAME, DoubleWord), 0);
    assert_eq!(system.read(0, zero, Word), Err(AccessRefused::NothingThere));
    // After the reset it starts again from the bottom of its window.
    assert_eq!(system.connect(0, b"s1", 1), WINDOW);
    system.check_invariants();
}

/// Many VMs issuing random requests, the invariants checked after each
/// step: no index given twice, attached bits consistent on every
/// connection, no window page mapped twice, every line following its
/// unread bits, every new region's pages zero. `TESSERA_SHMEM_STEPS` sets
/// the number of steps (the default keeps `cargo test` quick).
#[test]
fn random_requests_keep_every_invariant() {
    let steps: u64 = std::env::var("TESSERA_SHMEM_STEPS")
        .ok()
        .and_then(|steps| steps.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("TESSERA_SHMEM_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x5eed);
    let vms = 4u8;
    let deny = [Rule {
        kind: RuleKind::Deny,
        pattern: Pattern::new(b"d?").unwrap(),
    }];
    let mut system = System::with_rules(vms, 120, &deny);
    // How often each status answered a request, so that the run is known
    // to reach every one.
    let mut seen = [0u64; 7];
    system.core = FakeCore::new(100);
    let mut state = seed.wrapping_mul(2).wrapping_add(1);
    let mut random = move |below: u64| {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d) % below
    };
    // "dd" is denied to VM 0; "b c" is illegal.
    const NAMES: [&[u8]; 6] = [b"a", b"b", b"c", b"dd", b"e*", b"b c"];
    for _ in 0..steps {
        let vm = random(u64::from(vms)) as u8;
        // Which control pages this VM has.
        let controls: Vec<u64> = system.shmem.devices[usize::from(vm)]
            .connections
            .iter()
            .filter(|c| c.live)
            .map(|c| WINDOW + c.first_page * PAGE_SIZE)
            .collect();
        let control = if controls.is_empty() || random(8) == 0 {
            WINDOW + random(WINDOW_PAGES) * PAGE_SIZE
        } else {
            controls[random(controls.len() as u64) as usize]
        };
        let width = WIDTHS[random(4) as usize];
        match random(12) {
            0..=2 => {
                let name = NAMES[random(NAMES.len() as u64) as usize];
                let created = system.report_live(name);
                let (status, shmem, size) = system.create(vm, name, random(6) as u32);
                seen[status as usize] += 1;
                if status == OK && !created {
                    // A new region: all zero.
                    for page in 0..size {
                        for offset in [0, 1, 2047, 4095] {
                            let address = shmem + (1 + page) * PAGE_SIZE + offset;
                            assert_eq!(system.core.guest_load(vm, address), Some(0));
                        }
                    }
                }
            }
            3 => {
                let name = NAMES[random(NAMES.len() as u64) as usize];
                seen[system.find(vm, name).0 as usize] += 1;
            }
            4..=5 => {
                let _ = system.write(vm, control + control::DETACH, Word, 0);
            }
            6..=7 => {
                let mask = match random(3) {
                    0 => NOTIFY_ALL_BUT_ME,
                    _ => random(1 << 32) as u32,
                };
                let _ = system.write(vm, control + control::NOTIFY, Word, mask.into());
            }
            8 => {
                let _ = system.read(vm, control + random(0x14), width);
            }
            9 => {
                // Scribble on the data, so that reuse without zeroing shows.
                if let Some(&control) = controls.first() {
                    system
                        .core
                        .guest_store(vm, control + PAGE_SIZE + random(PAGE_SIZE), 0xCC);
                }
            }
            10 => {
                let offset = random(0x48);
                let value = random(u64::MAX);
                let _ = system.write(vm, FACTORY + offset, width, value);
                seen[system.factory(vm, factory::STATUS, Word) as usize] += 1;
                let _ = system.write(vm, control + random(0x14), width, value);
            }
            _ => {
                if random(20) == 0 {
                    system.core.acting = vm;
                    system.shmem.detach_vm(VmIndex(vm), &mut system.core);
                }
            }
        }
        system.check_invariants();
    }
    std::println!("statuses seen: {seen:?}");
    if steps >= 20_000 {
        // Every status but UNKNOWN_FAILURE (the core refusing a map).
        assert!(seen.iter().skip(2).all(|&count| count > 0), "{seen:?}");
    }
}

impl System {
    fn report_live(&self, name: &[u8]) -> bool {
        self.shmem
            .regions()
            .any(|report| report.live && report.name.as_bytes() == name)
    }
}

#[test]
fn the_name_takes_stores_of_every_width_at_every_offset() {
    let mut system = System::new(1, 64);
    let mut reference = [0u8; NAME_FIELD_BYTES];
    let mut byte = 0x21u8;
    for width in WIDTHS {
        let bytes = usize::from(width.bytes());
        for at in 0..=NAME_FIELD_BYTES - bytes {
            let mut value = 0;
            for shift in 0..bytes {
                byte = if byte == 0x7e { 0x21 } else { byte + 1 };
                reference[at + shift] = byte;
                value |= u64::from(byte) << (shift * 8);
            }
            system.set_factory(0, factory::NAME + at as u64, width, value);
            for check in (0..NAME_FIELD_BYTES).step_by(4) {
                assert_eq!(
                    system.factory(0, factory::NAME + check as u64, Word),
                    little_endian(&reference[check..check + 4]),
                    "after {width:?} at {at}"
                );
            }
        }
    }
    // 32 name bytes and no NUL: illegal, and nothing else was touched.
    system.set_factory(0, factory::SIZE, Word, 1);
    assert_eq!(system.outcome(0), (ILLEGAL_NAME, 0, 0));
    // A NUL at byte 31 makes it the longest legal name.
    system.set_factory(0, factory::NAME + 31, Byte, 0);
    system.set_factory(0, factory::SIZE, Word, 1);
    assert_eq!(system.outcome(0), (OK, WINDOW, 1));
    assert_eq!(
        system.report(&reference[..31]).name.as_bytes(),
        &reference[..31]
    );
}

#[test]
fn checks_run_in_the_abi_order() {
    // Existence before the limit: nothing may be created at all here.
    let mut system = System::new(2, 0);
    assert_eq!(system.find(0, b"x").0, DOES_NOT_EXIST);
    assert_eq!(system.create(0, b"x", 0).0, DOES_NOT_EXIST);
    assert_eq!(system.create(0, b"x", 1).0, NOMEM);
    // CLIENT_MAX before window room: VM 0's window is full and the region
    // has 16 connections.
    let mut system = System::new(2, 1000);
    system.connect(0, b"filler", 63);
    for _ in 0..16 {
        system.connect(1, b"full", 1);
    }
    assert_eq!(system.create(0, b"full", 1).0, CLIENT_MAX);
    assert_eq!(system.create(0, b"other", 1).0, NOMEM);
    // The rules before CLIENT_MAX.
    let deny = [Rule {
        kind: RuleKind::Deny,
        pattern: Pattern::new(b"fu*").unwrap(),
    }];
    let mut system = System::with_rules(2, 1000, &deny);
    for _ in 0..16 {
        system.connect(1, b"full", 1);
    }
    assert_eq!(system.find(0, b"full").0, NO_PERMISSION);
    system.check_invariants();
}

#[test]
fn every_config_error_has_its_description() {
    let expected = [
        (ConfigError::TooManyDevices, "too many instances"),
        (ConfigError::TooManyRules, "too many allow and deny rules"),
        (
            ConfigError::FactoryMisaligned,
            "factory page not page aligned, or wrapping",
        ),
        (
            ConfigError::BadWindow,
            "window empty, not whole pages, or wrapping",
        ),
        (
            ConfigError::NotAnSpi,
            "interrupt not an SPI (INTID 32 to 1019)",
        ),
        (ConfigError::Overlap, "overlaps another instance of the VM"),
        (
            ConfigError::SharedInterrupt,
            "interrupt used by another instance of the VM",
        ),
        (ConfigError::IllegalName, "illegal name"),
        (
            ConfigError::DuplicateName,
            "name used by another boot region",
        ),
        (ConfigError::BadSize, "no pages, or too many"),
        (ConfigError::OverLimit, "over the page limit"),
        (ConfigError::TooManyRegions, "too many boot regions"),
        (ConfigError::NoMemory, "out of host memory"),
    ];
    for (error, description) in expected {
        assert_eq!(std::format!("{error}"), description, "{error:?}");
    }
}
