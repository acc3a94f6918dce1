//! The client against the hypervisor's own device model
//! (`tessera_vdevs::shmem`): several guests on one model, each reaching it
//! through a [`GuestBus`], the data pages in host memory. What the client
//! writes is what the real device would see, so these tests check the
//! client and its reading of the ABI together.

extern crate std;

use std::boxed::Box;
use std::collections::BTreeMap;
use std::string::ToString;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::vec;
use std::vec::Vec;

use tessera_vdevs::shmem::{DeviceConfig, Rule, RuleKind, Shmem, ShmemServices};
use tessera_vdevs::{
    AccessWidth, GuestPages, HostPages, PageAccess, PagesRefused, VmIndex, VmLines,
};
use vm_fdt::FdtWriter;

use super::channel::{self, ChannelError, Layout, Receiver, Sender};
use super::*;

const FACTORY: u64 = 0x1_0000_0000;
const WINDOW: u64 = 0x1_0001_0000;
const WINDOW_PAGES: u64 = 64;
const HOST_BASE: u64 = 0x8000_0000;
const HOST_PAGES: usize = 512;

const fn vector(vm: u8) -> u32 {
    40 + vm as u32
}

/// The hypervisor's side: the model, each VM's stage 2 for the data pages,
/// the lines, host memory.
struct Machine {
    state: Mutex<State>,
    /// Host pages, as atomics so guests on threads may share them.
    memory: &'static [AtomicU64],
}

struct State {
    shmem: Shmem,
    core: Core,
}

struct Core {
    memory: &'static [AtomicU64],
    acting: u8,
    /// (vm, guest page number) → host page number.
    stage2: BTreeMap<(u8, u64), u64>,
    levels: BTreeMap<(u8, u32), bool>,
    used: Vec<bool>,
    /// The next map request is refused so.
    refuse_map: Option<PagesRefused>,
    /// Accesses the model refused (a guest would take an external abort).
    aborts: u32,
}

impl Machine {
    /// `vms` VMs, each with one instance (same addresses in each), VM 0's
    /// with `rules`.
    fn new(vms: u8, page_limit: u64, rules: &[Rule]) -> &'static Self {
        let memory: &'static [AtomicU64] = Box::leak(
            (0..HOST_PAGES * PAGE_SIZE as usize / 8)
                .map(|_| AtomicU64::new(0xA5A5_A5A5_A5A5_A5A5))
                .collect(),
        );
        let mut shmem = Shmem::new(page_limit);
        for vm in 0..vms {
            shmem
                .add_device(&DeviceConfig {
                    vm: VmIndex(vm),
                    factory: FACTORY,
                    intid: vector(vm),
                    window_base: WINDOW,
                    window_size: WINDOW_PAGES * PAGE_SIZE,
                    rules: if vm == 0 { rules } else { &[] },
                })
                .unwrap();
        }
        Box::leak(Box::new(Self {
            state: Mutex::new(State {
                shmem,
                core: Core {
                    memory,
                    acting: 0,
                    stage2: BTreeMap::new(),
                    levels: BTreeMap::new(),
                    used: vec![false; HOST_PAGES],
                    refuse_map: None,
                    aborts: 0,
                },
            }),
            memory,
        }))
    }

    fn bus(&'static self, vm: u8) -> GuestBus {
        GuestBus { machine: self, vm }
    }

    fn device(vm: u8) -> Device {
        // SAFETY: the machine has an instance at FACTORY in every VM.
        unsafe {
            Device::new(
                FACTORY,
                vector(vm),
                Some(WINDOW..WINDOW + WINDOW_PAGES * PAGE_SIZE),
            )
        }
    }

    fn factory(&'static self, vm: u8) -> Factory<GuestBus> {
        Factory::with_bus(self.bus(vm), Self::device(vm)).unwrap()
    }

    /// Whether VM `vm`'s vector is asserted.
    fn level(&self, vm: u8) -> bool {
        let state = self.state.lock().unwrap();
        state
            .core
            .levels
            .get(&(vm, vector(vm)))
            .copied()
            .unwrap_or(false)
    }

    fn aborts(&self) -> u32 {
        self.state.lock().unwrap().core.aborts
    }
}

/// One guest's way to the machine.
#[derive(Clone, Copy)]
struct GuestBus {
    machine: &'static Machine,
    vm: u8,
}

impl core::fmt::Debug for GuestBus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "GuestBus(vm {})", self.vm)
    }
}

// SAFETY: `memory` points into the machine's host memory, which is leaked
// (valid for the whole test program) and made of atomics; it translates
// through the VM's stage 2 as the model left it, page by page, and refuses
// a range that is not mapped to contiguous host pages.
unsafe impl Bus for GuestBus {
    unsafe fn read32(self, address: u64) -> u32 {
        let mut state = self.machine.state.lock().unwrap();
        let State { shmem, core } = &mut *state;
        core.acting = self.vm;
        let value =
            shmem
                .route(VmIndex(self.vm), address)
                .ok_or(())
                .and_then(|(device, area, offset)| {
                    shmem
                        .read(device, area, offset, AccessWidth::Word, core)
                        .map_err(|_| ())
                });
        value.map_or_else(
            |()| {
                core.aborts += 1;
                0
            },
            |value| value as u32,
        )
    }

    unsafe fn write32(self, address: u64, value: u32) {
        let mut state = self.machine.state.lock().unwrap();
        let State { shmem, core } = &mut *state;
        core.acting = self.vm;
        let served =
            shmem
                .route(VmIndex(self.vm), address)
                .is_some_and(|(device, area, offset)| {
                    shmem
                        .write(device, area, offset, AccessWidth::Word, value.into(), core)
                        .is_ok()
                });
        if !served {
            core.aborts += 1;
        }
    }

    fn memory(self, address: u64, length: u64) -> Option<NonNull<u8>> {
        let state = self.machine.state.lock().unwrap();
        let first = *state.core.stage2.get(&(self.vm, address / PAGE_SIZE))?;
        for page in 1..length.div_ceil(PAGE_SIZE) {
            let host = state
                .core
                .stage2
                .get(&(self.vm, address / PAGE_SIZE + page))?;
            if *host != first + page {
                return None;
            }
        }
        let word = (first * PAGE_SIZE + address % PAGE_SIZE) / 8;
        NonNull::new(self.machine.memory.get(word as usize)?.as_ptr().cast())
    }
}

impl GuestPages for Core {
    fn map_pages(
        &mut self,
        guest_address: u64,
        host_address: u64,
        length: u64,
        _access: PageAccess,
    ) -> Result<(), PagesRefused> {
        if let Some(refusal) = self.refuse_map.take() {
            return Err(refusal);
        }
        for page in 0..length / PAGE_SIZE {
            let host = (host_address - HOST_BASE) / PAGE_SIZE + page;
            let key = (self.acting, guest_address / PAGE_SIZE + page);
            if self.stage2.insert(key, host).is_some() {
                return Err(PagesRefused::AlreadyMapped { guest_address });
            }
        }
        Ok(())
    }

    fn unmap_pages(&mut self, guest_address: u64, length: u64) -> Result<(), PagesRefused> {
        for page in 0..length / PAGE_SIZE {
            self.stage2
                .remove(&(self.acting, guest_address / PAGE_SIZE + page));
        }
        Ok(())
    }
}

impl HostPages for Core {
    fn allocate_pages(&mut self, pages: u64) -> Option<u64> {
        let pages = pages as usize;
        let start = (0..=self.used.len().checked_sub(pages)?)
            .find(|&start| self.used[start..start + pages].iter().all(|used| !used))?;
        self.used[start..start + pages].fill(true);
        Some(HOST_BASE + start as u64 * PAGE_SIZE)
    }

    fn zero_pages(&mut self, host_address: u64, pages: u64) {
        let first = ((host_address - HOST_BASE) / 8) as usize;
        let words = (pages * PAGE_SIZE / 8) as usize;
        for word in &self.memory[first..first + words] {
            word.store(0, Ordering::Relaxed);
        }
    }

    fn free_pages(&mut self, host_address: u64, pages: u64) {
        let start = ((host_address - HOST_BASE) / PAGE_SIZE) as usize;
        self.used[start..start + pages as usize].fill(false);
    }
}

impl VmLines for Core {
    fn set_level(&mut self, vm: VmIndex, intid: u32, asserted: bool) {
        self.levels.insert((vm.0, intid), asserted);
    }
}

impl ShmemServices for Core {
    fn order_before_signal(&mut self) {}
}

/// A tree with `qvm,guest_shm` nodes as the host tool writes them.
fn tree_with(nodes: &[(u64, u64, u64, [u32; 3])]) -> Vec<u8> {
    let mut fdt = FdtWriter::new().unwrap();
    let root = fdt.begin_node("").unwrap();
    fdt.property_u32("#address-cells", 2).unwrap();
    fdt.property_u32("#size-cells", 2).unwrap();
    for &(loc, window, window_size, interrupts) in nodes {
        let node = fdt.begin_node(&std::format!("vdev-shmem@{loc:x}")).unwrap();
        fdt.property_string("compatible", COMPATIBLE).unwrap();
        fdt.property_array_u64("reg", &[loc, 0x1000, window, window_size])
            .unwrap();
        fdt.property_array_u32("interrupts", &interrupts).unwrap();
        fdt.end_node(node).unwrap();
    }
    fdt.end_node(root).unwrap();
    fdt.finish().unwrap()
}

#[test]
fn instances_come_from_the_qvm_guest_shm_nodes() {
    let bytes = tree_with(&[
        (0x1_0000_0000, 0x1_0001_0000, 0x10_0000, [0, 8, 4]),
        (0x2_0000_0000, 0x2_0001_0000, 0x2000, [0, 9, 4]),
    ]);
    let tree = DeviceTree::from_bytes(&bytes).unwrap();
    let found: Vec<_> = devices(&tree).collect::<Result<_, _>>().unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].factory_address(), 0x1_0000_0000);
    assert_eq!(found[0].intid(), 40);
    assert_eq!(found[0].window(), Some(0x1_0001_0000..0x1_0011_0000));
    assert_eq!(found[1].factory_address(), 0x2_0000_0000);
    assert_eq!(found[1].intid(), 41);
    assert_eq!(first_device(&tree), Ok(found[0].clone()));

    // A PPI, a misaligned page, no interrupts: not a usable node.
    for (loc, interrupts) in [(0x1_0000_0000, [1, 8, 4]), (0x1_0000_0800, [0, 8, 4])] {
        let bytes = tree_with(&[(loc, 0x1_0001_0000, 0x1000, interrupts)]);
        let tree = DeviceTree::from_bytes(&bytes).unwrap();
        assert_eq!(first_device(&tree), Err(ShmemError::BadNode));
    }
    let bytes = tree_with(&[]);
    let tree = DeviceTree::from_bytes(&bytes).unwrap();
    assert_eq!(first_device(&tree), Err(ShmemError::NoDevice));
}

#[test]
fn the_signature_is_checked() {
    let machine = Machine::new(1, 64, &[]);
    let factory = machine.factory(0);
    assert_eq!(factory.vector(), 40);
    // Nothing at the next page: reads abort and answer 0 here.
    // SAFETY: the bus only reaches the machine.
    let elsewhere = unsafe { Device::new(FACTORY + PAGE_SIZE, 40, None) };
    assert_eq!(
        Factory::with_bus(machine.bus(0), elsewhere).unwrap_err(),
        ShmemError::BadSignature { found: 0 }
    );
    assert_eq!(machine.aborts(), 2);
}

#[test]
fn every_status_code_has_its_error() {
    let codes = [
        (1, ShmemError::UnknownFailure),
        (2, ShmemError::NoMemory),
        (3, ShmemError::ClientMax),
        (4, ShmemError::IllegalName),
        (5, ShmemError::NoPermission),
        (6, ShmemError::DoesNotExist),
        (7, ShmemError::UnknownStatus(7)),
    ];
    assert_eq!(ShmemError::from_status(0), None);
    for (status, error) in codes {
        assert_eq!(ShmemError::from_status(status), Some(error));
        assert_eq!(error.status(), Some(status));
    }
    assert_eq!(ShmemError::NoDevice.status(), None);
    assert_eq!(ShmemError::ClientMax.to_string(), "CLIENT_MAX");
}

#[test]
fn two_guests_share_a_region_whoever_comes_first() {
    let machine = Machine::new(2, 64, &[]);
    let first = machine.factory(1).create(b"pingpong", 2).unwrap();
    let second = machine.factory(0).create(b"pingpong", 5).unwrap();
    assert_eq!((first.index(), second.index()), (0, 1));
    assert_eq!(
        (first.pages(), second.pages()),
        (2, 2),
        "the creator's size"
    );
    assert_eq!(first.len(), 0x2000);
    assert_eq!(first.name().as_bytes(), b"pingpong");
    assert_eq!(first.control_address(), WINDOW);
    assert_eq!(first.vector(), 41);

    // Zero-filled at creation (the host memory started dirty).
    assert_eq!(second.data().read_u64(0x1ff8), Ok(0));
    first
        .data()
        .write_u64(0x1000, 0x1234_5678_9abc_def0)
        .unwrap();
    first.data().write(0x1ffd, b"end").unwrap();
    assert_eq!(second.data().read_u64(0x1000), Ok(0x1234_5678_9abc_def0));
    let mut end = [0; 3];
    second.data().read(0x1ffd, &mut end).unwrap();
    assert_eq!(&end, b"end");

    // A find attaches to it too; a third connection from one guest is
    // allowed (the model's decision 2).
    let third = machine.factory(1).find(b"pingpong").unwrap();
    assert_eq!(third.index(), 2);
    assert_eq!(machine.aborts(), 0);
}

#[test]
fn every_refusal_comes_back_typed() {
    let rules = [Rule {
        kind: RuleKind::Deny,
        pattern: tessera_vdevs::shmem::Pattern::new(b"secret*").unwrap(),
    }];
    let machine = Machine::new(2, 8, &rules);
    let mut factory = machine.factory(0);
    // ILLEGAL_NAME: empty, a space, 32 bytes (no room for the NUL).
    for name in [&b""[..], b"has space", &[b'x'; 32]] {
        assert_eq!(
            factory.create(name, 1).unwrap_err(),
            ShmemError::IllegalName
        );
    }
    assert_eq!(
        factory.create(b"secret-1", 1).unwrap_err(),
        ShmemError::NoPermission
    );
    assert_eq!(
        factory.find(b"missing").unwrap_err(),
        ShmemError::DoesNotExist
    );
    assert_eq!(
        factory.create(b"missing", 0).unwrap_err(),
        ShmemError::DoesNotExist
    );
    assert_eq!(
        factory.create(b"huge", 9).unwrap_err(),
        ShmemError::NoMemory
    );
    // A map the core refuses for a reason other than table memory.
    machine.state.lock().unwrap().core.refuse_map = Some(PagesRefused::OutOfRange);
    assert_eq!(
        factory.create(b"refused", 1).unwrap_err(),
        ShmemError::UnknownFailure
    );

    // CLIENT_MAX: 16 connections from two guests, then a 17th.
    let mut other = machine.factory(1);
    let mut connections = Vec::new();
    for n in 0..16 {
        let factory = if n % 2 == 0 { &mut factory } else { &mut other };
        connections.push(factory.create(b"crowded", 1).unwrap());
    }
    let indices: Vec<u8> = connections.iter().map(Connection::index).collect();
    assert_eq!(indices, (0..16).collect::<Vec<u8>>());
    assert_eq!(
        factory.create(b"crowded", 1).unwrap_err(),
        ShmemError::ClientMax
    );

    // A detach frees an index for the next one.
    connections.swap_remove(3).detach();
    assert_eq!(other.find(b"crowded").unwrap().index(), 3);
    assert_eq!(machine.aborts(), 0);
}

#[test]
fn a_full_window_is_nomem() {
    let machine = Machine::new(1, 4096, &[]);
    let mut factory = machine.factory(0);
    // 64 pages of window: 31 pages + control page, twice.
    let _a = factory.create(b"a", 31).unwrap();
    let _b = factory.create(b"b", 31).unwrap();
    assert_eq!(factory.create(b"c", 1).unwrap_err(), ShmemError::NoMemory);
}

#[test]
fn notify_reaches_the_chosen_peers_and_says_whom() {
    let machine = Machine::new(3, 64, &[]);
    let zero = machine.factory(0).create(b"broadcast", 1).unwrap();
    let one = machine.factory(1).create(b"broadcast", 1).unwrap();
    let two = machine.factory(2).create(b"broadcast", 1).unwrap();
    // The attaches of 1 and 2 are changes for the others: clear them.
    for (vm, connection) in [(0, &zero), (1, &one), (2, &two)] {
        assert_eq!(
            connection.read_status().attached(),
            PeerSet::from_bits(0b111)
        );
        assert!(!machine.level(vm));
    }

    assert_eq!(zero.delivered(), PeerSet::EMPTY, "before any notify");
    zero.data().write_u32(0, 7).unwrap();
    zero.notify(PeerSet::of(one.index()));
    assert_eq!(zero.delivered(), PeerSet::of(1));
    assert!(machine.level(1));
    assert!(!machine.level(2));
    let status = one.read_status();
    assert_eq!(status.senders(), PeerSet::of(0));
    assert_eq!(status.to_string(), "senders {0} attached {0,1,2}");
    assert!(!machine.level(1), "the status read lowers the line");
    assert_eq!(one.data().read_u32(0), Ok(7));
    assert_eq!(two.read_status().senders(), PeerSet::EMPTY);

    zero.notify_all_but_me();
    assert_eq!(zero.delivered(), PeerSet::from_bits(0b110));
    assert_eq!(one.read_status().senders(), PeerSet::of(0));
    assert_eq!(two.read_status().senders(), PeerSet::of(0));
    // Self and unattached indices are ignored.
    zero.notify(PeerSet::of(0).with(9));
    assert_eq!(zero.delivered(), PeerSet::EMPTY);
    assert!(!machine.level(1) && !machine.level(2));
}

#[test]
fn polls_gather_senders_and_attach_changes_for_waiters() {
    let machine = Machine::new(2, 64, &[]);
    let host = machine.factory(0).create(b"region", 1).unwrap();
    assert_eq!(host.attached(), PeerSet::of(0));
    let guest = machine.factory(1).create(b"region", 1).unwrap();
    assert!(machine.level(0));
    // On the host IRQs read as masked, so wait polls by itself.
    let signals = host.wait(None).unwrap();
    assert_eq!(signals.changed, PeerSet::of(1));
    assert_eq!(signals.attached, PeerSet::from_bits(0b11));
    assert!(signals.senders.is_empty());
    assert!(!machine.level(0));

    guest.notify(PeerSet::of(0));
    guest.notify(PeerSet::of(0));
    assert_eq!(host.poll().senders(), PeerSet::of(1));
    assert_eq!(host.poll().senders(), PeerSet::EMPTY, "one read clears");
    let signals = host.take_signals();
    assert_eq!(signals.senders, PeerSet::of(1), "kept for the waiter");
    assert!(host.take_signals().is_empty());

    // Nothing pending and a deadline already passed (the host counter
    // reads 0).
    assert_eq!(
        host.wait(Some(Deadline::at_ticks(0))),
        Err(WaitError::Timeout)
    );

    // Waiting for peers leaves the signals for the next wait.
    guest.notify(PeerSet::of(0));
    guest.detach();
    assert_eq!(host.wait_for_attached(1, None), Ok(PeerSet::of(0)));
    let signals = host.take_signals();
    assert_eq!(signals.senders, PeerSet::of(1));
    assert_eq!(signals.changed, PeerSet::of(1));
    assert_eq!(signals.attached, PeerSet::of(0));
}

#[test]
fn waiting_for_peers_returns_once_enough_are_attached() {
    let machine = Machine::new(2, 64, &[]);
    let first = machine.factory(0).create(b"meet", 1).unwrap();
    assert_eq!(
        first.wait_for_attached(2, Some(Deadline::at_ticks(0))),
        Err(WaitError::Timeout)
    );
    let _second = machine.factory(1).create(b"meet", 1).unwrap();
    assert_eq!(
        first.wait_for_attached(2, None),
        Ok(PeerSet::from_bits(0b11))
    );
}

#[test]
fn the_data_view_checks_bounds_and_alignment() {
    let machine = Machine::new(1, 64, &[]);
    let connection = machine.factory(0).create(b"view", 1).unwrap();
    let data = connection.data();
    assert_eq!(data.len(), 4096);
    data.write_u8(4095, 1).unwrap();
    data.write_u16(4094 - 2, 0x0302).unwrap();
    data.write_u32(4088, 0x0706_0504).unwrap();
    data.write_u64(4080, u64::MAX).unwrap();
    assert_eq!(data.read_u16(4092), Ok(0x0302));
    assert_eq!(data.read_u32(4088), Ok(0x0706_0504));
    assert_eq!(data.read_u8(4095), Ok(1));
    assert_eq!(
        data.read_u64(4084),
        Err(DataError::Misaligned {
            offset: 4084,
            align: 8
        })
    );
    assert_eq!(
        data.write_u32(4096, 0),
        Err(DataError::OutOfBounds {
            offset: 4096,
            length: 4,
            size: 4096
        })
    );
    assert!(matches!(
        data.read_u8(usize::MAX),
        Err(DataError::OutOfBounds { .. })
    ));
    let mut big = [0; 17];
    assert!(matches!(
        data.read(4080, &mut big),
        Err(DataError::OutOfBounds { .. })
    ));

    // Copies at every start and length around the doubleword boundaries.
    let pattern: Vec<u8> = (0..64).map(|n| n * 3 + 1).collect();
    for start in 0..9 {
        for length in 0..40 {
            data.fill(0, 64, 0).unwrap();
            data.write(start, &pattern[..length]).unwrap();
            let mut back = vec![0xEE; length];
            data.read(start, &mut back).unwrap();
            assert_eq!(back, pattern[..length]);
            assert_eq!(data.read_u8(start + length), Ok(0), "nothing past the end");
            if start > 0 {
                assert_eq!(data.read_u8(start - 1), Ok(0), "nothing before");
            }
        }
    }
    data.fill(0, 64, 0).unwrap();
    data.fill(3, 10, 0x5A).unwrap();
    assert_eq!(data.read_u64(8), Ok(0x0000_005A_5A5A_5A5A));

    let part = data.part(8, 16).unwrap();
    assert_eq!(part.len(), 16);
    assert_eq!(part.read_u8(0), Ok(0x5A));
    assert!(matches!(
        part.read_u8(16),
        Err(DataError::OutOfBounds { .. })
    ));
    assert!(matches!(data.part(4, 8), Err(DataError::Misaligned { .. })));
}

#[test]
fn peer_sets_and_names_read_well() {
    let set = PeerSet::of(0).with(2).with(15).with(16);
    assert_eq!(set.to_string(), "{0,2,15}");
    assert_eq!(set.len(), 3);
    assert_eq!(set.first(), Some(0));
    assert!(set.contains(15) && !set.contains(16) && !set.contains(1));
    assert_eq!(set.without(0).first(), Some(2));
    assert_eq!(PeerSet::EMPTY.to_string(), "{}");
    assert_eq!(set.iter().collect::<Vec<_>>(), [0, 2, 15]);

    let name = RegionName::new(b"ping\x01pong");
    assert_eq!(name.to_string(), "ping?pong");
    assert_eq!(&name.field()[..10], b"ping\x01pong\0");
    let long = RegionName::new(&[b'a'; 40]);
    assert_eq!(long.as_bytes().len(), 32);
}

#[test]
fn a_channel_carries_messages_in_order_and_wraps() {
    let machine = Machine::new(2, 64, &[]);
    let producer = machine.factory(0).create(b"channel", 1).unwrap();
    let consumer = machine.factory(1).create(b"channel", 1).unwrap();
    let mut sender = Sender::new(&producer, 64).unwrap();
    let mut receiver = Receiver::new(&consumer, 64).unwrap();
    let layout = sender.layout();
    assert_eq!(layout, Layout::new(4096, 64).unwrap());
    assert_eq!(layout.slots(), (4096 - channel::HEADER_BYTES as u64) / 64);
    assert_eq!(layout.max_message(), 56);

    let mut buffer = [0; 56];
    assert_eq!(receiver.try_receive(&mut buffer), Err(ChannelError::Empty));
    for round in 0..5_u8 {
        for n in 0..layout.slots() as u8 {
            let length = usize::from(n) % 57;
            let message = vec![round ^ n; length];
            sender.try_send(&message).unwrap();
        }
        assert_eq!(sender.try_send(b"x"), Err(ChannelError::Full));
        for n in 0..layout.slots() as u8 {
            let length = receiver.receive(&mut buffer, None).unwrap();
            assert_eq!(length, usize::from(n) % 57);
            assert!(buffer[..length].iter().all(|&byte| byte == round ^ n));
        }
    }
    assert_eq!(receiver.received(), 5 * layout.slots());
    assert_eq!(
        sender.try_send(&[0; 57]),
        Err(ChannelError::TooLong {
            length: 57,
            max: 56
        })
    );
    sender.try_send(&[1; 20]).unwrap();
    assert_eq!(
        receiver.try_receive(&mut [0; 19]),
        Err(ChannelError::BufferTooSmall {
            length: 19,
            needed: 20
        })
    );
    assert_eq!(
        receiver.try_receive(&mut buffer),
        Ok(20),
        "the message stayed"
    );
    sender.try_send(b"last").unwrap();
    sender.close().unwrap();
    assert_eq!(receiver.receive(&mut buffer, None), Ok(4));
    assert_eq!(
        receiver.receive(&mut buffer, None),
        Err(ChannelError::Closed)
    );
    assert_eq!(receiver.try_receive(&mut buffer), Err(ChannelError::Closed));
    assert_eq!(machine.aborts(), 0);
}

#[test]
fn a_channel_signals_only_a_side_that_sleeps() {
    let machine = Machine::new(2, 64, &[]);
    let producer = machine.factory(0).create(b"quiet", 1).unwrap();
    let consumer = machine.factory(1).create(b"quiet", 1).unwrap();
    producer.read_status();
    consumer.read_status();
    let mut sender = Sender::new(&producer, 1024).unwrap();
    let mut receiver = Receiver::new(&consumer, 1024).unwrap();
    sender.try_send(b"hello").unwrap();
    assert_eq!(
        producer.delivered(),
        PeerSet::EMPTY,
        "nobody waited: no notify"
    );
    assert!(!machine.level(1));
    assert_eq!(receiver.receive(&mut [0; 8], None), Ok(5));
    // A consumer that found nothing and timed out leaves its flag down.
    assert_eq!(
        receiver.receive(&mut [0; 8], Some(Deadline::at_ticks(0))),
        Err(ChannelError::Timeout)
    );
    sender.try_send(b"again").unwrap();
    assert!(!machine.level(1));
}

#[test]
fn channel_layouts_refuse_what_cannot_work() {
    assert_eq!(
        Layout::new(4096, 12),
        Err(ChannelError::BadSlotSize { slot_bytes: 12 })
    );
    assert_eq!(
        Layout::new(4096, 8),
        Err(ChannelError::BadSlotSize { slot_bytes: 8 })
    );
    assert_eq!(
        Layout::new(4096, 2048),
        Err(ChannelError::RegionTooSmall {
            region_bytes: 4096,
            needed: channel::HEADER_BYTES + 4096
        })
    );
    assert_eq!(Layout::new(4096, 1792).unwrap().slots(), 2);
}

/// A stream between two threads (two guests) through a small ring, so both
/// sides wait for each other many times; FNV-1a over the bytes on both ends.
#[test]
fn a_stream_between_two_guests_arrives_whole() {
    const BYTES: usize = 1 << 18;
    const SLOT: usize = 256;
    fn byte(n: usize) -> u8 {
        (n.wrapping_mul(2_654_435_761) >> 13) as u8
    }
    fn fnv(hash: u64, bytes: &[u8]) -> u64 {
        bytes.iter().fold(hash, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
    }
    const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

    let machine = Machine::new(2, 64, &[]);
    let (done, finished) = std::sync::mpsc::channel();
    let producer_done = done.clone();
    std::thread::spawn(move || {
        let connection = machine.factory(0).create(b"stream", 1).unwrap();
        let mut sender = Sender::new(&connection, SLOT).unwrap();
        let mut sent = 0;
        let mut hash = FNV_START;
        let mut message = [0; SLOT];
        let mut length = 1;
        while sent < BYTES {
            let now = length.min(BYTES - sent).min(sender.layout().max_message());
            for (n, slot) in message[..now].iter_mut().enumerate() {
                *slot = byte(sent + n);
            }
            sender.send(&message[..now], None).unwrap();
            hash = fnv(hash, &message[..now]);
            sent += now;
            length = length % 250 + 7;
        }
        sender.close().unwrap();
        producer_done.send(("producer", hash, sent)).unwrap();
    });
    std::thread::spawn(move || {
        let connection = machine.factory(1).create(b"stream", 1).unwrap();
        let mut receiver = Receiver::new(&connection, SLOT).unwrap();
        let mut received = 0;
        let mut hash = FNV_START;
        let mut buffer = [0; SLOT];
        loop {
            match receiver.receive(&mut buffer, None) {
                Ok(length) => {
                    for (n, &value) in buffer[..length].iter().enumerate() {
                        assert_eq!(value, byte(received + n), "byte {}", received + n);
                    }
                    hash = fnv(hash, &buffer[..length]);
                    received += length;
                }
                Err(ChannelError::Closed) => break,
                Err(error) => panic!("{error}"),
            }
        }
        done.send(("consumer", hash, received)).unwrap();
    });
    let wait = std::time::Duration::from_secs(120);
    let first = finished.recv_timeout(wait).expect("the stream stalled");
    let second = finished.recv_timeout(wait).expect("the stream stalled");
    assert_eq!(first.1, second.1, "{first:?} {second:?}");
    assert_eq!((first.2, second.2), (BYTES, BYTES));
    assert_eq!(machine.aborts(), 0);
}

/// One region, 2,000 rounds of ping-pong between two threads, each round
/// checked through the data: no notification is lost.
#[test]
fn ping_pong_loses_nothing() {
    const ROUNDS: u32 = 2_000;
    let machine = Machine::new(2, 64, &[]);
    let (done, finished) = std::sync::mpsc::channel();
    for vm in 0..2_u8 {
        let done = done.clone();
        std::thread::spawn(move || {
            let connection = machine.factory(vm).create(b"pingpong", 1).unwrap();
            let data = connection.data();
            let peers = connection.wait_for_attached(2, None).unwrap();
            let peer = peers.without(connection.index());
            let mut count = 0;
            if vm == 0 {
                data.write_u32(0, 1).unwrap();
                connection.notify(peer);
            }
            let mut expected = if vm == 0 { 2 } else { 1 };
            while expected <= 2 * ROUNDS {
                let signals = connection.wait(None).unwrap();
                if !signals.senders.contains(peer.first().unwrap()) {
                    continue;
                }
                count += 1;
                assert_eq!(data.read_u32(0), Ok(expected));
                if expected < 2 * ROUNDS {
                    data.write_u32(0, expected + 1).unwrap();
                    connection.notify(peer);
                }
                expected += 2;
            }
            done.send((vm, count)).unwrap();
        });
    }
    let wait = std::time::Duration::from_secs(120);
    let mut counts = [0; 2];
    for _ in 0..2 {
        let (vm, count) = finished.recv_timeout(wait).expect("ping-pong stalled");
        counts[usize::from(vm)] = count;
    }
    assert_eq!(counts, [ROUNDS, ROUNDS]);
}
