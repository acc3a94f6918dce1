//! vdev-shmem at EL2: the system's one device model
//! (`tessera_vdevs::shmem`, docs/vdev-shmem.md) behind one lock, the
//! services it asks of the core, and the two ways a guest's access reaches
//! it.
//!
//! - An access with a valid syndrome comes down the device fast path like
//!   any emulated device's (`devices::emulate`): each instance's factory
//!   page and whole mapping window are windows in its VM's device map.
//! - An access without one (a pair, a writeback form: what clients that
//!   map these pages as cacheable memory produce) comes down the full
//!   path. The guest's instruction is read and decoded
//!   (`traps::instruction`); a plain load or store is carried out one
//!   register at a time, anything else gets the external abort the ABI
//!   names.
//!
//! The registry is system-wide (a region joins VMs), so every call takes
//! the one registry lock; under it the model maps and unmaps the acting
//! VM's stage 2 and drives other VMs' lines (lock order:
//! `tessera_hypervisor::vm::system`).

use tessera_hypervisor::boot::manifest::{SystemManifest, VmManifest};
use tessera_hypervisor::devices::map::{DeviceMap, DeviceSlot, Window};
use tessera_hypervisor::memory::address::{GuestPhysAddr, PAGE_SIZE, PhysAddr};
use tessera_hypervisor::sync::Mutex;
use tessera_hypervisor::traps::crash_report::TrapFrame;
use tessera_hypervisor::traps::guest_exit::AccessFrame;
use tessera_hypervisor::traps::instruction::{self, Plan};
use tessera_hypervisor::vgic::state::SpiSet;
use tessera_hypervisor::vm::ids::VmId;
use tessera_vdevs::shmem::{
    Area, ConfigError, DeviceConfig, DeviceId, MAX_RULES, Pattern, Rule, RuleKind, Shmem,
    ShmemServices,
};
use tessera_vdevs::{
    AccessWidth, GuestPages, HostPages, PageAccess, PagesRefused, VmIndex, VmLines,
};

use crate::arch::guest::{self, GuestLevel};
use crate::vm::{self, RunningVm};
use crate::{arch, interrupts, memory};

/// Every instance and region of the system.
static REGISTRY: Mutex<Shmem> = Mutex::new(Shmem::new(0));

/// The device slot of a VM's first instance's factory page; instance `k`
/// (in the VM's configuration order) has its factory page at slot
/// `FIRST_SLOT + 2k` and its window at the next (the slots below are the
/// UART's and the vGIC's).
pub const FIRST_SLOT: u8 = 3;

/// The most instances one VM has (the manifest's rules check it).
const MAX_PER_VM: usize = tessera_package::rules::MAX_SHMEM_DEVICES_PER_VM;

/// A VM's vdev-shmem instances: the model's device for each, by its index
/// among the VM's instances.
#[derive(Clone, Copy, Debug)]
pub struct VmShmem {
    devices: [Option<DeviceId>; MAX_PER_VM],
}

impl VmShmem {
    pub const NONE: Self = Self {
        devices: [None; MAX_PER_VM],
    };

    /// The device and area behind device-map slot `slot`, if it is one of
    /// this VM's vdev-shmem windows.
    #[inline(always)]
    fn device(&self, slot: DeviceSlot) -> Option<(DeviceId, Area)> {
        let index = usize::from(slot.0.checked_sub(FIRST_SLOT)?);
        let device = (*self.devices.get(index / 2)?)?;
        let area = if index % 2 == 0 {
            Area::Factory
        } else {
            Area::Window
        };
        Some((device, area))
    }
}

/// Whether `slot` is a vdev-shmem window.
#[inline(always)]
pub const fn is_shmem_slot(slot: DeviceSlot) -> bool {
    slot.0 >= FIRST_SLOT
}

/// Why the system's vdev-shmem configuration was refused at boot (the host
/// tool checks the same; the hypervisor re-checks what it is given).
#[derive(Clone, Copy, Debug)]
pub enum SetupError {
    /// The page limit, or boot region `name`.
    Region {
        name: &'static [u8],
        error: ConfigError,
    },
    /// A rule's pattern the model does not accept.
    Pattern,
    /// An instance the model or the device map refused.
    Device(ConfigError),
    /// An instance's windows overlap another device of the VM.
    Windows,
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Region { name, error } => write!(
                f,
                "vdev-shmem region {}: {error}",
                tessera_hypervisor::console::escape::Escaped(name)
            ),
            Self::Pattern => f.write_str("a vdev-shmem allow or deny pattern is malformed"),
            Self::Device(error) => write!(f, "a vdev-shmem instance is refused: {error}"),
            Self::Windows => f.write_str("a vdev-shmem window overlaps another device"),
        }
    }
}

/// Sets the page limit and creates the boot regions of `manifest`, before
/// any VM is built.
pub fn set_up_regions(manifest: &SystemManifest<'static>) -> Result<(), SetupError> {
    let mut registry = REGISTRY.lock();
    registry
        .set_page_limit(manifest.shmem_page_limit)
        .map_err(|error| SetupError::Region { name: b"", error })?;
    for (name, pages) in manifest.shmem_regions() {
        registry
            .add_boot_region(name, pages, &mut RegionPages)
            .map_err(|error| SetupError::Region { name, error })?;
    }
    Ok(())
}

/// Adds VM `id`'s instances to the model and their factory pages and
/// windows to `devices`; their vectors go into `owned`, the SPIs the VM's
/// vGIC drives, and into `signalled`, the SPIs other CPUs raise (which the
/// vGIC keeps ready for the injection fast path, `interrupts::guest`).
pub fn add_vm(
    id: VmId,
    manifest: &VmManifest<'static>,
    devices: &mut DeviceMap,
    owned: &mut SpiSet,
    signalled: &mut SpiSet,
) -> Result<VmShmem, SetupError> {
    const _: () = assert!(
        FIRST_SLOT as usize + 2 * MAX_PER_VM <= tessera_hypervisor::devices::map::MAX_WINDOWS
    );
    let mut instances = VmShmem::NONE;
    let mut registry = REGISTRY.lock();
    for (index, entry) in manifest.shmem_devices().enumerate() {
        let mut rules = [Rule {
            kind: RuleKind::Allow,
            pattern: Pattern::new(b"*").map_err(|_| SetupError::Pattern)?,
        }; MAX_RULES];
        let mut count = 0;
        for rule in manifest.shmem_rules().filter(|rule| rule.instance == index) {
            let slot = rules
                .get_mut(count)
                .ok_or(SetupError::Device(ConfigError::TooManyRules))?;
            *slot = Rule {
                kind: if rule.allow {
                    RuleKind::Allow
                } else {
                    RuleKind::Deny
                },
                pattern: Pattern::new(rule.pattern).map_err(|_| SetupError::Pattern)?,
            };
            count += 1;
        }
        // `get`: `count` is at most the table's length (the loop's
        // `get_mut` stops it there), so this takes the same error if ever.
        let rules = rules
            .get(..count)
            .ok_or(SetupError::Device(ConfigError::TooManyRules))?;
        let device = registry
            .add_device(&DeviceConfig {
                vm: VmIndex(id.index() as u8),
                factory: entry.loc,
                intid: entry.intid,
                window_base: entry.window_base,
                window_size: entry.window_size,
                rules,
            })
            .map_err(SetupError::Device)?;
        let slot = instances
            .devices
            .get_mut(index)
            .ok_or(SetupError::Device(ConfigError::TooManyDevices))?;
        *slot = Some(device);
        let factory_slot = DeviceSlot(FIRST_SLOT + 2 * index as u8);
        let window_slot = DeviceSlot(factory_slot.0 + 1);
        for (base, size, slot) in [
            (entry.loc, PAGE_SIZE, factory_slot),
            (entry.window_base, entry.window_size, window_slot),
        ] {
            let window = Window {
                base: GuestPhysAddr(base),
                size,
            };
            devices
                .insert(window, slot)
                .map_err(|_| SetupError::Windows)?;
        }
        owned.insert(entry.intid);
        signalled.insert(entry.intid);
    }
    Ok(instances)
}

/// A trapped load of `width` at `offset` in vdev-shmem window `slot` of
/// `vm`, by its vCPU running here; `None` when nothing answers there (the
/// guest gets the external abort).
#[inline(never)]
pub fn read(vm: &RunningVm, slot: DeviceSlot, offset: u64, width: AccessWidth) -> Option<u64> {
    let (device, area) = vm.device_state.shmem.device(slot)?;
    let mut core = Core::acting_for(vm.description.id);
    REGISTRY
        .lock()
        .read(device, area, offset, width, &mut core)
        .ok()
}

/// A trapped store, as [`read`]; false when nothing answers there.
#[inline(never)]
pub fn write(
    vm: &RunningVm,
    slot: DeviceSlot,
    offset: u64,
    width: AccessWidth,
    value: u64,
) -> bool {
    let Some((device, area)) = vm.device_state.shmem.device(slot) else {
        return false;
    };
    let mut core = Core::acting_for(vm.description.id);
    // The lock taken inline: the sender's half of `shmem.notify_oneway`,
    // measured to the instruction.
    REGISTRY
        .lock_inline()
        .write(device, area, offset, width, value, &mut core)
        .is_ok()
}

/// What became of an access without a syndrome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsyndromed {
    /// Not in a vdev-shmem window: the caller answers it as before.
    NotShmem,
    /// Carried out; the guest is past the instruction.
    Done,
    /// Refused: the caller gives the guest the external abort.
    Refused,
}

/// A data abort without a valid syndrome at guest-physical `address` of
/// `vm`, whose vCPU running here is in `frame`: carried out when it is a
/// plain load or store wholly inside one vdev-shmem page.
pub fn emulate_without_syndrome(
    vm: &RunningVm,
    frame: &mut TrapFrame,
    address: GuestPhysAddr,
) -> Unsyndromed {
    let Some((slot, offset)) = vm.devices.route(address, AccessWidth::Byte) else {
        return Unsyndromed::NotShmem;
    };
    let Some((device, area)) = vm.device_state.shmem.device(slot) else {
        return Unsyndromed::NotShmem;
    };
    // ESR_EL2.S1PTW: the guest's own stage-1 walk touched the page (its
    // tables in a window), not an instruction's access.
    const STAGE1_WALK: u64 = 1 << 7;
    if frame.syndrome & STAGE1_WALK != 0 || level_of(frame.saved_state).is_none() {
        return Unsyndromed::Refused;
    }
    // AT S1E1R for EL0 code too: it reads any page EL1 can (an EL0-only
    // execute page included) and ignores PAN.
    let Some(instruction) = fetch_instruction(vm, frame.exception_link, GuestLevel::El1) else {
        return Unsyndromed::Refused;
    };
    let stack_level = stack_level_of(frame.saved_state);
    let registers = frame.registers;
    let base_value = |register: u8| match registers.get(usize::from(register)) {
        Some(value) => *value,
        None => guest::guest_stack_pointer(stack_level),
    };
    let Ok(plan) = instruction::plan(
        instruction::decode(instruction),
        address,
        frame.fault_address,
        base_value,
    ) else {
        return Unsyndromed::Refused;
    };
    if !carry_out(vm, frame, (device, area, offset), address, &plan) {
        return Unsyndromed::Refused;
    }
    if let Some((base, value)) = plan.writeback {
        match frame.registers.get_mut(usize::from(base)) {
            Some(register) => *register = value,
            None => guest::set_guest_stack_pointer(stack_level, value),
        }
    }
    frame.step_over_trapped_instruction();
    Unsyndromed::Done
}

/// Carries out `plan`'s accesses under one hold of the registry, so a
/// pair is one request; false when the first is refused (nothing was
/// done). A pair's second access that finds nothing is dropped: the first
/// detached the connection, as a spanning write that detaches stops there.
/// `(device, area, offset)` is where `address`, the first access's, lies.
fn carry_out(
    vm: &RunningVm,
    frame: &mut TrapFrame,
    (device, area, offset): (DeviceId, Area, u64),
    address: GuestPhysAddr,
    plan: &Plan,
) -> bool {
    let mut core = Core::acting_for(vm.description.id);
    let mut registry = REGISTRY.lock();
    let mut frame = AccessFrame::full(frame);
    for (index, access) in [Some(plan.first), plan.second]
        .into_iter()
        .flatten()
        .enumerate()
    {
        let offset = offset + (access.address.0 - address.0);
        let Some(data) = frame.data_register(&access) else {
            return false;
        };
        // Field by field: `read` and `write` inline their measured
        // whole-word cases, which need no second copy here.
        let done = if access.is_write {
            registry
                .write_by_fields(
                    device,
                    area,
                    offset,
                    access.width,
                    data.stored_value(),
                    &mut core,
                )
                .is_ok()
        } else {
            match registry.read_by_fields(device, area, offset, access.width, &mut core) {
                Ok(value) => {
                    data.complete_load(&access, value);
                    true
                }
                Err(_) => false,
            }
        };
        if !done && index == 0 {
            return false;
        }
    }
    true
}

/// The exception level a trapped AArch64 guest was at (SPSR_EL2.M[3:0]).
fn level_of(saved_state: u64) -> Option<GuestLevel> {
    match saved_state & 0xF {
        0b0000 => Some(GuestLevel::El0),
        0b0100 | 0b0101 => Some(GuestLevel::El1),
        _ => None,
    }
}

/// The stack pointer register 31 names for a base: SP_EL1 in EL1h, else
/// SP_EL0.
fn stack_level_of(saved_state: u64) -> GuestLevel {
    if saved_state & 0xF == 0b0101 {
        GuestLevel::El1
    } else {
        GuestLevel::El0
    }
}

/// The instruction at guest virtual address `pc`, read from the VM's own
/// RAM (anything else, such as a passed-through device, is not read).
fn fetch_instruction(vm: &RunningVm, pc: u64, level: GuestLevel) -> Option<u32> {
    if !pc.is_multiple_of(4) {
        return None;
    }
    let physical = guest::guest_intermediate_address(pc, level)?;
    let ram = vm.description.ram;
    let offset = physical.checked_sub(ram.guest.0)?;
    if offset.checked_add(4)? > ram.size {
        return None;
    }
    let host = ram.host.0 + offset;
    // SAFETY: `host` is 4-aligned and inside the VM's RAM, which EL2 maps
    // as normal memory; the read has no side effect, and a value torn by a
    // concurrent guest write only decodes to some instruction, which is
    // checked like any other.
    Some(unsafe { core::ptr::read_volatile(host as *const u32) })
}

/// Detaches every connection of VM `id`, as when it stops, crashes or
/// resets: its peers see the attached bits drop and are interrupted. None
/// of its vCPUs runs.
pub fn detach_vm(id: VmId) {
    let mut core = Core::acting_for(id);
    REGISTRY
        .lock()
        .detach_vm(VmIndex(id.index() as u8), &mut core);
}

/// Prints each region's counters, for the power-off report.
pub fn report() {
    let registry = REGISTRY.lock();
    for region in registry.regions() {
        crate::println!(
            "tessera: shmem region {}: {} pages, {}, {} connection(s), {} notification(s) sent, \
             {} delivered, {} attached now",
            tessera_hypervisor::console::escape::Escaped(region.name.as_bytes()),
            region.pages,
            match (region.boot, region.live) {
                (true, _) => "boot region",
                (false, true) => "live",
                (false, false) => "freed",
            },
            region.counters.connections,
            region.counters.notifications_sent,
            region.counters.notifications_delivered,
            region.attached.count_ones()
        );
    }
    if registry.core_refusals() != 0 {
        crate::println!(
            "tessera: shmem: the core refused {} map or unmap request(s) (a bug)",
            registry.core_refusals()
        );
    }
}

/// Host pages for region data, from the page allocator.
struct RegionPages;

impl HostPages for RegionPages {
    fn allocate_pages(&mut self, pages: u64) -> Option<u64> {
        memory::allocate_pages_uninitialised(usize::try_from(pages).ok()?).map(|page| page.0)
    }

    fn zero_pages(&mut self, host_address: u64, pages: u64) {
        // SAFETY: the model zeroes pages it was just given by
        // `allocate_pages`, before any guest maps them: page-aligned
        // normal memory, identity-mapped at EL2, that nothing else uses.
        // Cleaned too, so a guest mapping them non-cacheable reads zero.
        unsafe { arch::zero_and_clean(host_address as usize, (pages * PAGE_SIZE) as usize) };
    }

    fn free_pages(&mut self, host_address: u64, pages: u64) {
        // SAFETY: the model frees a region's pages after its last
        // connection was unmapped from its VM's stage 2 (with the TLB
        // maintenance that completes before unmap returns), and they were
        // allocated together with this count.
        unsafe { memory::free_pages(PhysAddr(host_address), pages as usize) };
    }
}

/// The core's services for the model, acting for one VM: the one whose
/// access is being carried out, or the one being detached.
struct Core {
    acting: VmId,
}

impl Core {
    const fn acting_for(acting: VmId) -> Self {
        Self { acting }
    }
}

impl GuestPages for Core {
    fn map_pages(
        &mut self,
        guest_address: u64,
        host_address: u64,
        length: u64,
        access: PageAccess,
    ) -> Result<(), PagesRefused> {
        vm::vm(self.acting)
            .stage2()
            .map_pages(guest_address, host_address, length, access)
    }

    fn unmap_pages(&mut self, guest_address: u64, length: u64) -> Result<(), PagesRefused> {
        vm::vm(self.acting)
            .stage2()
            .unmap_pages(guest_address, length)
    }
}

impl HostPages for Core {
    fn allocate_pages(&mut self, pages: u64) -> Option<u64> {
        RegionPages.allocate_pages(pages)
    }

    fn zero_pages(&mut self, host_address: u64, pages: u64) {
        RegionPages.zero_pages(host_address, pages);
    }

    fn free_pages(&mut self, host_address: u64, pages: u64) {
        RegionPages.free_pages(host_address, pages);
    }
}

impl VmLines for Core {
    fn set_level(&mut self, vm: VmIndex, intid: u32, asserted: bool) {
        if let Some(id) = VmId::new(usize::from(vm.0)) {
            interrupts::guest::set_spi_level(id, intid, asserted);
        }
    }
}

impl ShmemServices for Core {
    fn order_before_signal(&mut self) {
        guest::order_stores_before_signal();
    }
}
