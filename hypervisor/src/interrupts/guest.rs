//! A guest's interrupts at EL2: the physical interrupts linked to its
//! vCPU's (the timers), the vGIC's maintenance interrupt, the SGIs a
//! GICv3 guest sends through ICC_SGI*R_EL1, and bringing a vCPU's list
//! registers in step with its VM's interrupt model after any change.
//!
//! The path of an interrupt (docs/ARCHITECTURE.md, "Interrupts"): a
//! physical interrupt is taken at EL2 (HCR_EL2.IMO); if it is linked to the
//! running vCPU (its virtual or EL1 physical timer), its priority is
//! dropped, it stays active, and the vGIC marks the guest's interrupt of
//! the same number pending; the sync writes it into a list register with
//! the HW bit, and the guest's own deactivation ends the physical one. A
//! change made on one CPU for a vCPU running on another (an SGI, a device
//! line, a distributor write) reaches it as a `SyncInterrupts` request and
//! the request SGI; that CPU syncs its own list registers. A signalled SPI
//! (a vdev-shmem vector) is the exception: its line is an atomic bit
//! outside the lock, raised with the receiving CPU's doorbell
//! (`raise_spi`) and absorbed by the model whenever the lock is taken
//! (`VmVgic::lock`).

use alloc::boxed::Box;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering};

use tessera_hypervisor::sync::Mutex;
use tessera_hypervisor::vgic::interrupts::{SignalledLines, VmInterrupts};
use tessera_hypervisor::vgic::list_registers::ListEntry;
use tessera_hypervisor::vgic::state::{Effects, GicVersion, SpiSet};
use tessera_hypervisor::vm::ids::{VcpuId, VmId};

use crate::boot::board::BOARD;
use crate::interrupts::gic::{self, Interrupt};
use crate::interrupts::virtual_interface::{self, VirtualInterface};
use crate::vm::{self, RunningVm};

/// A VM's vGIC: its model behind its lock (`vgic` in the lock order of
/// `tessera_hypervisor::vm::system`: after a device's lock is released,
/// before the request queues and the physical GIC's), and the lines of
/// its signalled SPIs, which peers raise without the lock.
pub struct VmVgic {
    model: Mutex<&'static mut VmInterrupts>,
    pub lines: SignalledLines,
}

impl VmVgic {
    /// Locks the model, which first absorbs every signalled line changed
    /// since it was last locked (`VmInterrupts::absorb`). Out of line: a
    /// dozen paths lock a vGIC, none of them a measured fast path (those
    /// run without the lock).
    #[inline(never)]
    pub fn lock(&self) -> tessera_hypervisor::sync::MutexGuard<'_, &'static mut VmInterrupts> {
        let mut model = self.model.lock();
        model.absorb(&self.lines);
        model
    }
}

/// One fast path's arming (`arch::vectors`, slot 9): whether it may act,
/// the INTID it acts for, the list register and the GICv3 entry to write.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct FastEntry {
    armed: u8,
    index: u8,
    _reserved: [u8; 2],
    intid: u32,
    entry: u64,
}

impl FastEntry {
    /// Its INTID matches no IAR value or doorbell (those are 24 bits), so
    /// the assembly compares without looking at `armed`.
    const DISARMED: Self = Self {
        armed: 0,
        index: 0,
        _reserved: [0; 2],
        intid: u32::MAX,
        entry: 0,
    };

    /// Before its CPU's bring-up (see [`TESSERA_FAST_PATHS`]).
    const ZEROED: Self = Self {
        armed: 0,
        index: 0,
        _reserved: [0; 2],
        intid: 0,
        entry: 0,
    };

    /// Armed for `slot`'s register and entry, or disarmed.
    fn of(slot: Option<(usize, ListEntry)>) -> Self {
        slot.map_or(Self::DISARMED, |(index, entry)| Self {
            armed: 1,
            index: index as u8,
            _reserved: [0; 2],
            intid: entry.intid,
            entry: entry.to_gicv3(),
        })
    }
}

/// What the assembly fast paths of a guest's interrupts need, per CPU, on
/// one cache line:
///
/// - `linked`: the guest's virtual-timer interrupt (its physical PPI,
///   acknowledged at EL2, goes straight into the list register of its
///   previous instance);
/// - `injection`: a signalled SPI (a vdev-shmem vector raised on another
///   CPU), shown when the doorbell interrupt brings its INTID;
/// - `doorbell`: that INTID, or 0. Other CPUs set it from 0 (a
///   compare-and-swap, [`ring_doorbell`]); only this CPU clears it.
/// - `any_armed`: whether either entry is armed (one test for the
///   assembly, which reads the IAR only then: on GICv3);
/// - `injection_line`: the word of the armed SPI's line
///   (`SignalledLines`): the assembly shows the SPI only while its line
///   is high, read after it cleared the doorbell, so a ring is never lost
///   and a stale one (the line fell before the doorbell was taken) shows
///   nothing.
///
/// The two entries are written only by their own CPU, with IRQs masked:
/// under its vCPU's vGIC lock after every change to that vCPU's list
/// registers (`after_change`), and without it when its vCPU leaves or the
/// CPU comes up, when no vCPU runs there (`disarm_fast_paths`). They are
/// read only by the same CPU's IRQ entry, which runs with IRQs masked, so
/// never while they are being written. Both entries hold an armed or a
/// `DISARMED` value before `any_armed` is ever set: a merely zeroed entry
/// (see [`TESSERA_FAST_PATHS`]) would match an empty doorbell.
#[repr(C, align(64))]
pub struct CpuFastPaths {
    linked: UnsafeCell<FastEntry>,
    injection: UnsafeCell<FastEntry>,
    doorbell: AtomicU32,
    any_armed: UnsafeCell<u8>,
    injection_line: UnsafeCell<*const AtomicU32>,
}

// SAFETY: each CPU's entries are touched by that CPU alone (see the type's
// documentation); the doorbell is atomic.
unsafe impl Sync for CpuFastPaths {}

impl CpuFastPaths {
    /// Writes the timer's entry. Only for this CPU's own slot.
    fn set_linked(&self, linked: FastEntry) {
        // SAFETY: the caller's CPU owns this slot; its IRQ entry, the only
        // reader, cannot run now (EL2 runs with IRQs masked), and no other
        // CPU touches the entries.
        unsafe { self.linked.get().write(linked) };
        self.note_armed();
    }

    /// Brings `any_armed` in step with the two entries. Only for this
    /// CPU's own slot.
    fn note_armed(&self) {
        // SAFETY: as in `set_linked` (reading the entries races with
        // nothing either).
        let linked = unsafe { self.linked.get().read() }.armed;
        // SAFETY: as above.
        let injection = unsafe { self.injection.get().read() }.armed;
        // SAFETY: as in `set_linked`.
        unsafe { self.any_armed.get().write(linked | injection) };
    }

    /// Arms the injection's entry with the word holding its SPI's line
    /// (from the VM running here), or disarms it. Only for this CPU's own
    /// slot.
    fn set_injection(&self, injection: Option<(usize, ListEntry)>) {
        let line = injection.and_then(|(_, entry)| signalled_line_word(entry.intid));
        let injection = if line.is_some() { injection } else { None };
        // SAFETY: as in `set_linked` (both fields).
        unsafe {
            self.injection_line
                .get()
                .write(line.map_or(core::ptr::null(), core::ptr::from_ref));
        };
        // SAFETY: as in `set_linked`.
        unsafe { self.injection.get().write(FastEntry::of(injection)) };
        self.note_armed();
    }

    /// The injection's arming (its INTID is `u32::MAX` when disarmed).
    /// Only for this CPU's own slot.
    fn armed_injection(&self) -> FastEntry {
        // SAFETY: as in `set_linked`; reading the entry races with nothing.
        unsafe { self.injection.get().read() }
    }

    /// Disarms the injection's entry if it is armed for `intid`. Only for
    /// this CPU's own slot.
    fn disarm_injection_of(&self, intid: u32) {
        if self.armed_injection().intid == intid {
            self.set_injection(None);
        }
    }
}

/// The word of signalled SPI `intid`'s line in the VM running here.
fn signalled_line_word(intid: u32) -> Option<&'static AtomicU32> {
    vm::running_vm()?.device_state.vgic.lines.level_word(intid)
}

/// One per CPU. All zero here, so that the table sits in `.bss` and takes
/// no room in the image: with `any_armed` zero the assembly reads neither
/// entry, and each CPU disarms its slot properly at bring-up
/// ([`disarm_fast_paths`], from `timer::start_on_this_cpu`, before it takes
/// interrupts). A zeroed entry is not `DISARMED`: its INTID, 0, could
/// match an empty doorbell.
#[unsafe(no_mangle)]
pub static TESSERA_FAST_PATHS: [CpuFastPaths; tessera_hypervisor::MAX_CPUS] = [const {
    CpuFastPaths {
        linked: UnsafeCell::new(FastEntry::ZEROED),
        injection: UnsafeCell::new(FastEntry::ZEROED),
        doorbell: AtomicU32::new(0),
        any_armed: UnsafeCell::new(0),
        injection_line: UnsafeCell::new(core::ptr::null()),
    }
};
    tessera_hypervisor::MAX_CPUS];

// The offsets the assembly reads.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<CpuFastPaths>() == 64);
    assert!(size_of::<FastEntry>() == 16);
    assert!(offset_of!(FastEntry, index) == 1);
    assert!(offset_of!(FastEntry, intid) == 4);
    assert!(offset_of!(FastEntry, entry) == 8);
    assert!(offset_of!(CpuFastPaths, linked) == 0);
    assert!(offset_of!(CpuFastPaths, injection) == 16);
    assert!(offset_of!(CpuFastPaths, doorbell) == 32);
    assert!(offset_of!(CpuFastPaths, any_armed) == 36);
    assert!(offset_of!(CpuFastPaths, injection_line) == 40);
};

/// Sets this CPU's fast paths from `vgic`'s view of `vcpu` (running here),
/// on GICv3 only (the assembly writes ICH_LR<n>_EL2):
///
/// - the virtual timer's while its previous instance holds a list register
///   and the policy would show the next one there at once
///   (`VmInterrupts::linked_slot`);
/// - a signalled SPI's on the same terms (`VmInterrupts::injection_slot`;
///   see `CpuFastPaths::set_injection` for the doorbell).
fn arm_fast_paths(vgic: &VmInterrupts, vcpu: VcpuId) {
    let (linked, injection) = if gic::version() == 3 {
        (
            vgic.linked_slot(vcpu, BOARD.timer_interrupts.virtual_timer),
            vgic.injection_slot(vcpu),
        )
    } else {
        (None, None)
    };
    let fast = &TESSERA_FAST_PATHS[crate::arch::cpu_index()];
    fast.set_linked(FastEntry::of(linked));
    fast.set_injection(injection);
}

/// What follows every change to the list registers of `vcpu` (running
/// here), with its VM's vGIC still locked: the vCPUs its folds handed an
/// SPI to (`VgicState::take_handoffs`) are asked to sync, and this CPU's
/// fast paths are armed again.
fn after_change(vgic: &mut VmInterrupts, vcpu: VcpuId) {
    hand_off(vgic);
    arm_fast_paths(vgic, vcpu);
}

/// Asks the CPUs of the vCPUs folds on this CPU handed an SPI to, of the
/// VM running here, to sync.
#[inline(always)]
fn hand_off(vgic: &mut VmInterrupts) {
    let handoffs = vgic.state.take_handoffs();
    if !handoffs.is_empty()
        && let Some(running) = vm::running_vm()
    {
        // None of them runs here: each CPU runs one vCPU.
        let _ = vm::request_interrupt_sync(running.description.id, handoffs);
    }
}

/// Disarms this CPU's fast paths (at its bring-up, and when its vCPU
/// leaves) and drops whatever its doorbell held: the vCPU shows what the
/// model holds when it starts. Call with IRQs masked.
pub fn disarm_fast_paths() {
    let fast = &TESSERA_FAST_PATHS[crate::arch::cpu_index()];
    fast.set_linked(FastEntry::DISARMED);
    fast.set_injection(None);
    fast.doorbell.store(0, Ordering::Relaxed);
}

/// Rings `cpu`'s injection doorbell with SPI `intid` (see
/// [`CpuFastPaths`]): true when it now holds `intid` (it was empty, or
/// already held it), false when it holds another SPI. The caller sends the
/// doorbell interrupt. Sequentially consistent, after the raise of the
/// line (`SignalledLines::raise`): either this finds the doorbell cleared
/// or the CPU that cleared it sees the line high.
pub fn ring_doorbell(cpu: usize, intid: u32) -> bool {
    let Some(fast) = TESSERA_FAST_PATHS.get(cpu) else {
        return false;
    };
    // What it held before: empty (now rung) or this SPI already.
    let held = fast
        .doorbell
        .compare_exchange(0, intid, Ordering::SeqCst, Ordering::SeqCst)
        .unwrap_or_else(|held| held);
    held == 0 || held == intid
}

/// Takes this CPU's doorbell: the SPI it held, if any.
pub fn take_doorbell() -> Option<u32> {
    let doorbell = &TESSERA_FAST_PATHS[crate::arch::cpu_index()].doorbell;
    if doorbell.load(Ordering::Relaxed) == 0 {
        return None;
    }
    // Before the line is read (under the vGIC's lock): as in
    // `ring_doorbell`.
    match doorbell.swap(0, Ordering::SeqCst) {
        0 => None,
        intid => Some(intid),
    }
}

/// The guest's PMU overflow interrupt, on every board (a board's own PMU
/// PPI, `Board::pmu_interrupt`, is this one too; platform tests hold them
/// to it).
const GUEST_PMU_INTID: u32 = tessera_platform::guest::PMU_INTID;

/// The PPIs linked to physical interrupts of the vCPU's CPU: the virtual
/// timer, the EL1 physical timer and the PMU's overflow interrupt (the
/// guest owns its CPU's PMU), each to the physical PPI of the same
/// number, and the PMU's also to the core's own SPI where the board has
/// one ([`pmu_spi_of_this_cpu`]).
pub fn hardware_ppis() -> u32 {
    let pmu = if BOARD.pmu_interrupt.is_some() || BOARD.pmu_core_spis.is_some() {
        1 << GUEST_PMU_INTID
    } else {
        0
    };
    (1 << BOARD.timer_interrupts.virtual_timer) | (1 << BOARD.timer_interrupts.physical) | pmu
}

/// This CPU's PMU overflow SPI, on a board that signals each core's on an
/// SPI of its own (`Board::pmu_core_spis`, the BCM2711): the one of the
/// core whose number is this CPU's MPIDR Aff0, as the board's device tree
/// pairs them (`interrupt-affinity`). Read from MPIDR_EL1 itself, so
/// bring-up and the dispatcher always agree.
pub fn pmu_spi_of_this_cpu() -> Option<u32> {
    let first = BOARD.pmu_core_spis?;
    let core = crate::arch::current_mpidr() & 0xFF;
    Some(first + core as u32)
}

/// Enables, on this CPU, the physical interrupts linked to a guest's: the
/// core's PMU SPI where the board has one (routed here: call after
/// `gic::learn_cpu_target`), and the linked PPIs. The PMU's PPI may not
/// exist where the board signals the PMU by SPIs: the real BCM2711's
/// GIC-400 implements PPIs 25-31 only (QEMU's model has all 16), so
/// there it cannot be enabled and is done without.
pub fn enable_linked_on_this_cpu(cpu: usize) -> Result<(), gic::GicError> {
    if let Some(spi) = pmu_spi_of_this_cpu() {
        gic::enable_spi(spi, cpu, crate::arch::current_mpidr())?;
    }
    for intid in linked_ppis() {
        match gic::enable_private_interrupt(intid, cpu) {
            Err(_) if intid == GUEST_PMU_INTID && BOARD.pmu_core_spis.is_some() => {}
            result => result?,
        }
    }
    Ok(())
}

/// Makes every physical interrupt linked to a guest's on this CPU
/// inactive, as a vCPU starts or leaves: nothing of the last one is left
/// active for the next to inherit, or to keep its source silent.
fn clear_linked_active() {
    for intid in linked_ppis() {
        gic::clear_active_private(intid);
    }
    if let Some(spi) = pmu_spi_of_this_cpu() {
        gic::deactivate_physical(spi);
    }
}

/// The linked PPIs, in INTID order.
pub fn linked_ppis() -> impl Iterator<Item = u32> {
    let ppis = hardware_ppis();
    (16..32).filter(move |intid| ppis & (1 << intid) != 0)
}

/// Whether `intid` is a physical interrupt linked to the running vCPU's.
#[inline(always)]
pub fn is_linked(intid: u32) -> bool {
    intid < 32 && hardware_ppis() & (1 << intid) != 0
}

/// A new VM's vGIC, in its reset state, of the physical GIC's generation,
/// or `None` when memory has run out. Built in pages from the page
/// allocator, which come zeroed (by DC ZVA, far faster than the heap's
/// `memset`), and initialised in place: it lives as long as the VM (for
/// the whole run). `signalled` names the SPIs other CPUs raise (the VM's
/// vdev-shmem vectors), which the injection fast path serves.
pub fn new_vgic(
    vcpu_count: usize,
    owned: SpiSet,
    passthrough: SpiSet,
    signalled: SpiSet,
) -> Option<&'static VmVgic> {
    use tessera_hypervisor::memory::address::PAGE_SIZE;
    let version = if gic::version() == 3 {
        GicVersion::V3
    } else {
        GicVersion::V2
    };
    const BYTES: usize = core::mem::size_of::<VmInterrupts>();
    const _: () = assert!(core::mem::align_of::<VmInterrupts>() <= 4096);
    let pages = BYTES.div_ceil(PAGE_SIZE as usize);
    let memory = crate::memory::allocate_pages(pages)?;
    // SAFETY: the pages were just handed out (page-aligned, so aligned for
    // `VmInterrupts`), zeroed, large enough, and nothing else refers to
    // them; all-zero bytes are a valid `VmInterrupts` (its documentation
    // says why, field by field). They are never given back, so the
    // reference may be 'static.
    let interrupts = unsafe { &mut *(memory.0 as *mut VmInterrupts) };
    interrupts.initialise_zeroed(version, vcpu_count, owned, hardware_ppis(), passthrough);
    interrupts.set_signalled_spis(signalled);
    let vgic: &'static VmVgic = Box::leak(Box::new(VmVgic {
        model: Mutex::new(interrupts),
        lines: SignalledLines::new(),
    }));
    vgic.lock().publish_targets(&vgic.lines);
    Some(vgic)
}

/// Acts on `effects` of a change to VM `id`'s interrupts, made by its
/// vCPU `vcpu` running here with `vgic` locked: every vCPU they concern is
/// synced, this one at once, the others by their own CPUs.
pub fn deliver(id: VmId, vcpu: VcpuId, vgic: &mut VmInterrupts, effects: Effects) {
    if effects.reevaluate.is_empty() {
        return;
    }
    if vm::request_interrupt_sync(id, effects.reevaluate) {
        vgic.sync(vcpu, &mut VirtualInterface::this_cpu());
        after_change(vgic, vcpu);
    }
}

/// Syncs `vcpu` (running here) with its VM's vGIC locked by the caller.
pub fn resync(vgic: &mut VmInterrupts, vcpu: VcpuId) {
    vgic.sync(vcpu, &mut VirtualInterface::this_cpu());
    after_change(vgic, vcpu);
}

/// Signalled SPI `intid` of the VM running here was raised on another
/// CPU for its vCPU `vcpu` (the doorbell or an injection request): the
/// lock absorbs the rise, and the SPI goes into a free list register if
/// that is all that changed, else by a whole sync. Routed elsewhere since
/// the raiser looked (or nowhere), it concerns the vCPUs it does now.
pub fn show_injected(vm: &RunningVm, vcpu: VcpuId, intid: u32) {
    let mut vgic = vm.device_state.vgic.lock();
    if vgic.state.spi_target(intid) == Some(vcpu) {
        vgic.show_pending_spi(vcpu, intid, &mut VirtualInterface::this_cpu());
        after_change(&mut vgic, vcpu);
    } else {
        let effects = Effects {
            reevaluate: vgic.state.spi_concerns(intid),
            sgi: None,
        };
        sync_concerned(vm.description.id, &mut vgic, effects);
    }
}

/// Brings the list registers of the vCPU running here in step with its
/// VM's interrupt model.
pub fn sync_this_cpu(vm: &RunningVm, vcpu: VcpuId) {
    let mut vgic = vm.device_state.vgic.lock();
    vgic.sync(vcpu, &mut VirtualInterface::this_cpu());
    after_change(&mut vgic, vcpu);
}

/// A vCPU starts on this CPU: its virtual CPU interface starts empty and
/// enabled, its EL1 physical timer off (the virtual timer is part of its
/// EL1 context), its PMU reset, and whatever its VM's model already holds
/// for it (an SGI sent before it was on) is shown.
pub fn vcpu_starting(vm: &RunningVm, vcpu: VcpuId) {
    crate::arch::guest::stop_guest_timers();
    crate::arch::guest::reset_guest_pmu();
    // Whatever ran here before, no linked physical interrupt is left
    // active for this vCPU to inherit.
    clear_linked_active();
    let mut interface = VirtualInterface::this_cpu();
    interface.reset(true);
    // A ring while this CPU idled (a peer signalled the vCPU before it
    // started) is in the signalled lines, which the lock below absorbs,
    // and the sync shows it. The doorbell is cleared first, as the
    // assembly takes it (sequentially consistent, then the lines are
    // read): a rise that found it still full is absorbed; a later one
    // rings again.
    TESSERA_FAST_PATHS[crate::arch::cpu_index()]
        .doorbell
        .swap(0, Ordering::SeqCst);
    let mut vgic = vm.device_state.vgic.lock();
    vgic.forget_list_registers(vcpu);
    vgic.sync(vcpu, &mut interface);
    after_change(&mut vgic, vcpu);
}

/// The vCPU running here leaves for good (it parks): its timers stop, its
/// PMU is reset, its list registers are emptied and its linked physical
/// interrupts are no longer active, so nothing of it fires on an idle CPU or reaches the
/// next vCPU run here.
pub fn vcpu_leaving(leaving: Option<(&RunningVm, VcpuId)>) {
    disarm_fast_paths();
    if let Some((vm, vcpu)) = leaving {
        // What its list registers hold goes back into the model first: an
        // SGI or device interrupt shown but not taken is not lost (the vCPU
        // may be started again, CPU_ON), and an active one stays active
        // where the model can see it.
        let mut vgic = vm.device_state.vgic.lock();
        let _ = vgic.fold_all(vcpu, &mut VirtualInterface::this_cpu());
        // An SPI it completed, routed elsewhere meanwhile, goes on there.
        let handoffs = vgic.state.take_handoffs();
        if !handoffs.is_empty() {
            let _ = vm::request_interrupt_sync(vm.description.id, handoffs);
        }
    }
    crate::arch::guest::stop_guest_timers();
    crate::arch::guest::reset_guest_pmu();
    VirtualInterface::this_cpu().reset(false);
    clear_linked_active();
}

/// Which VM each physical SPI is passed through to: the VM's index plus
/// one, 0 for none (the hypervisor's own or nobody's). Set at build, read
/// by the dispatcher.
static SPI_OWNERS: [core::sync::atomic::AtomicU8; 224] =
    [const { core::sync::atomic::AtomicU8::new(0) }; 224];

/// Gives VM `id` the physical SPIs in `spis` (its passed-through devices'):
/// each is routed to the CPU of the VM's vCPU 0 (`cpu`, `affinity`), as the
/// guest's own routing starts, and enabled. A physical SPI can belong to
/// one VM only (the shared rules refuse a package that gives one twice).
pub fn pass_through(
    id: VmId,
    spis: SpiSet,
    cpu: usize,
    affinity: u64,
) -> Result<(), gic::GicError> {
    for intid in spis.iter() {
        SPI_OWNERS[(intid - 32) as usize]
            .store(id.index() as u8 + 1, core::sync::atomic::Ordering::Release);
        gic::enable_spi(intid, cpu, affinity)?;
    }
    Ok(())
}

/// The VM a physical SPI is passed through to, if any.
#[inline(always)]
pub fn passthrough_owner(intid: u32) -> Option<VmId> {
    let owner = SPI_OWNERS
        .get(intid.checked_sub(32)? as usize)?
        .load(core::sync::atomic::Ordering::Acquire);
    VmId::new(usize::from(owner).checked_sub(1)?)
}

/// A passed-through device's SPI fired: its priority is dropped and it
/// stays active until the guest deactivates it through a list register
/// (HW bit), so a level device's line cannot storm meanwhile. The vCPU the
/// guest routes it to is synced: here, or through its CPU's request queue.
pub fn passthrough_interrupt(interrupt: Interrupt, owner: VmId) {
    gic::drop_priority(interrupt);
    let intid = interrupt.id();
    let mut vgic = vm::vm(owner).device_state.vgic.lock();
    // The guest may route it nowhere: it stays pending in the model.
    let effects = vgic.state.hardware_fired(VcpuId::FIRST, intid);
    sync_concerned(owner, &mut vgic, effects);
}

/// Drives SPI `intid` of VM `id` to `level`, from whichever CPU the change
/// came from (a vdev-shmem vector, raised by a peer VM's notify or lowered
/// by the VM's own status read). Each way has its own small function: the
/// raise is the sender's half of `shmem.notify_oneway`.
#[inline(always)]
pub fn set_spi_level(id: VmId, intid: u32, level: bool) {
    if level {
        raise_spi(id, intid);
    } else {
        lower_spi(id, intid);
    }
}

/// A signalled SPI's line rose: without the vGIC's lock, its bit in the
/// VM's signalled lines is set, and the CPU of the vCPU it is routed to
/// (as last published) is rung (doorbell and SGI, or an injection request
/// when that CPU has others waiting). That CPU absorbs the rise and shows
/// it, or its assembly shows it at once. The sender's half of
/// `shmem.notify_oneway`.
#[inline(never)]
fn raise_spi(id: VmId, intid: u32) {
    let the_vm = vm::vm_inline(id);
    let vgic = the_vm.device_state.vgic;
    if !vgic.lines.raise(intid) {
        return;
    }
    if let Some(target) = vgic.lines.target(intid)
        && !vm::request_interrupt_injection(the_vm, target, intid)
    {
        return;
    }
    raise_spi_slowly(id, vgic, intid);
}

/// A rise for the vCPU running here (a VM signalling itself) or for an
/// SPI routed nowhere: absorbed under the lock, and looked at by every
/// vCPU it concerns.
#[cold]
#[inline(never)]
fn raise_spi_slowly(id: VmId, vgic: &VmVgic, intid: u32) {
    let mut model = vgic.lock();
    let effects = Effects {
        reevaluate: model.state.spi_concerns(intid),
        sgi: None,
    };
    sync_concerned(id, &mut model, effects);
}

/// A signalled SPI's line fell. Usually the handler of the vCPU running
/// here lowered it (its status read), and the list register keeps the
/// instance it is handling: on the fast path, without the lock; else under
/// it, where anything but that syncs the vCPUs concerned.
#[inline(never)]
fn lower_spi(id: VmId, intid: u32) {
    if let Some(running) = vm::running_vm()
        && running.description.id == id
        && lower_while_handled_here(running.device_state.vgic, intid)
    {
        return;
    }
    lower_spi_locked(id, intid);
}

/// [`lower_spi`] under the lock, off the fast path's frame.
#[inline(never)]
fn lower_spi_locked(id: VmId, intid: u32) {
    let vgic = vm::vm(id).device_state.vgic;
    let lines = &vgic.lines;
    let mut vgic = vgic.lock();
    let effects = vgic.lower_signalled(lines, intid);
    if vm::running_vm().is_some_and(|running| running.description.id == id) {
        let vcpu = vm::running_vcpu();
        if effects.reevaluate.has_none_but(vcpu)
            && let Some(injection) =
                vgic.line_fell_then_injection_slot(vcpu, intid, &mut VirtualInterface::this_cpu())
        {
            // Nothing was folded and the timer's register is untouched:
            // only the injection fast path is armed again, for the next
            // rise (on GICv3, where the assembly can take it). When this
            // SPI does not qualify, an arming for another one stands (the
            // fall changed nothing it depends on); one for this SPI goes.
            let fast = &TESSERA_FAST_PATHS[crate::arch::cpu_index()];
            match injection {
                Some(slot) if gic::version() == 3 => fast.set_injection(Some(slot)),
                _ => fast.disarm_injection_of(intid),
            }
            return;
        }
    }
    sync_concerned(id, &mut vgic, effects);
}

/// The fall of signalled SPI `intid` of the VM running here (`vgic` is its
/// vGIC) on the fast path: when the injection fast path here is armed for
/// it (so the last sync, or the
/// model's view of it absorbed since, has it idle but for the instance in
/// the armed register) and that register holds the armed entry, active
/// now, the guest is handling the instance the assembly showed. Its line
/// is lowered and the register's EOI maintenance dropped, which is all a
/// sync would do: the model, which absorbs the fall at its next lock,
/// never needs to have seen the rise. The arming stays: the next rise may
/// go into the same register once the guest completes this instance.
/// False, changing nothing, in every other case. GICv3 only, as the
/// arming (the register is compared as the raw value the assembly wrote).
#[inline(always)]
fn lower_while_handled_here(vgic: &VmVgic, intid: u32) -> bool {
    // ICH_LR<n>_EL2.State [63:62], Priority [55:48] (whose unimplemented
    // low bits read as zero) and, without HW, EOI [41].
    const STATE: u64 = 0b11 << 62;
    const ACTIVE: u64 = 0b10 << 62;
    const PRIORITY: u64 = 0xFF << 48;
    const EOI_MAINTENANCE: u64 = 1 << 41;
    let armed = TESSERA_FAST_PATHS[crate::arch::cpu_index()].armed_injection();
    if armed.intid != intid {
        return false;
    }
    let index = usize::from(armed.index);
    let handled = (armed.entry & !STATE) | ACTIVE;
    let now = virtual_interface::read_gicv3_list_register(index);
    if (now ^ handled) & !PRIORITY != 0 {
        return false;
    }
    virtual_interface::write_gicv3_list_register(index, now & !EOI_MAINTENANCE);
    vgic.lines.lower(intid);
    true
}

/// Acts on `effects` of a change to VM `id`'s interrupts made from any
/// CPU, with `vgic` (the VM's) locked: the other CPUs concerned get a
/// sync request; this one syncs at once only if it is running a concerned
/// vCPU of that VM (a parked or not yet started one shows the model's
/// state when it starts).
fn sync_concerned(id: VmId, vgic: &mut VmInterrupts, effects: Effects) {
    if effects.reevaluate.is_empty() || !vm::request_interrupt_sync(id, effects.reevaluate) {
        return;
    }
    sync_running_here(id, vgic, effects);
}

/// Syncs the vCPU running here if it is one of VM `id`'s that `effects`
/// concern (a parked or not yet started one shows the model's state when
/// it starts).
fn sync_running_here(id: VmId, vgic: &mut VmInterrupts, effects: Effects) {
    let running_here = vm::running_vm().is_some_and(|running| running.description.id == id)
        && effects.reevaluate.contains(vm::running_vcpu());
    if running_here {
        let vcpu = vm::running_vcpu();
        vgic.sync(vcpu, &mut VirtualInterface::this_cpu());
        after_change(vgic, vcpu);
    }
}

/// Routes VM `id`'s passed-through SPIs physically to the CPUs of the
/// vCPUs its guest routes them to (after a write to its routing
/// registers), so the physical interrupt arrives where the guest wants it.
pub fn follow_guest_routing(id: VmId, vgic: &VmInterrupts) {
    let description = &vm::vm(id).description;
    for intid in vgic.state.hardware_spis().iter() {
        let vcpu = vgic.state.spi_target(intid).unwrap_or(VcpuId::FIRST);
        let cpu = description.cpus[vcpu.index()].index();
        gic::route_spi(intid, cpu, vm::cpu_affinity(cpu));
    }
}

/// Clears VM `id`'s passed-through SPIs' pending and active state, as
/// when it restarts: nothing of the old run reaches the new one.
pub fn quiesce_passthrough(vgic: &VmInterrupts) {
    for intid in vgic.state.hardware_spis().iter() {
        gic::clear_spi(intid);
    }
}

/// Whether a list register of this CPU shows the guest a pending
/// interrupt.
pub fn virtual_interrupt_pending() -> bool {
    use tessera_hypervisor::vgic::list_registers::ListRegisters;
    let interface = VirtualInterface::this_cpu();
    (0..interface.count()).any(|index| interface.read(index).state.pending())
}

/// A physical interrupt linked to a guest's (a timer, the PMU's PPI or
/// this core's PMU SPI) was acknowledged.
#[inline(always)]
pub fn linked_interrupt(interrupt: Interrupt) {
    let Some(vm) = vm::running_vm() else {
        // No vCPU here (it parked with its timer armed or its PMU
        // flagged): silence them and end the interrupt.
        crate::arch::guest::stop_guest_timers();
        crate::arch::guest::reset_guest_pmu();
        gic::end(interrupt);
        return;
    };
    // Left active: the guest's deactivation, through the HW list
    // register, ends it, so the timer cannot fire again before that.
    gic::drop_priority(interrupt);
    let physical = interrupt.id();
    // A PPI raises the guest's of the same number; an SPI is this core's
    // PMU's (the dispatcher sends no other here).
    let intid = if physical < 32 {
        physical
    } else {
        GUEST_PMU_INTID
    };
    let vcpu = vm::running_vcpu();
    let mut vgic = vm.device_state.vgic.lock();
    vgic.linked_fired(vcpu, intid, physical, &mut VirtualInterface::this_cpu());
    after_change(&mut vgic, vcpu);
}

/// The vGIC's maintenance interrupt: the running vCPU completed an
/// interrupt whose line must be looked at again, or took everything it was
/// shown while more waits. Syncing removes the cause, then it ends.
pub fn maintenance(interrupt: Interrupt) {
    if let Some(vm) = vm::running_vm() {
        sync_this_cpu(vm, vm::running_vcpu());
    } else {
        VirtualInterface::this_cpu().reset(false);
    }
    gic::end(interrupt);
}

/// ICC_SGI1R_EL1 and its group-0 and alternate forms (op0 3, op1 0,
/// CRn 12, CRm 11, op2 5/7/6): a GICv3 guest's SGI, which always traps
/// while HCR_EL2.IMO is set. Returns whether the encoding was one of them.
pub fn sgi_register_write(
    id: VmId,
    vcpu: VcpuId,
    encoding: tessera_hypervisor::traps::guest_exit::SystemRegisterEncoding,
    value: u64,
) -> bool {
    if (encoding.op0, encoding.op1, encoding.crn, encoding.crm) != (3, 0, 12, 11) {
        return false;
    }
    // With one security state (GICD_CTLR.DS = 1) only ICC_SGI1R_EL1 may
    // send group-1 SGIs; ICC_SGI0R_EL1 and ICC_ASGI1R_EL1 send group 0.
    let group1 = match encoding.op2 {
        5 => true,
        6 | 7 => false,
        _ => return false,
    };
    let vm = vm::vm(id);
    let mut vgic = vm.device_state.vgic.lock();
    let effects = vgic.state.generate_sgi(vcpu, value, group1);
    deliver(id, vcpu, &mut vgic, effects);
    true
}
