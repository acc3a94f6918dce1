//! The physical GIC, driven through the `arm-gic` crate.
//!
//! GICv3 is reached through the ICC system registers (no lock needed on the
//! interrupt path); GICv2's CPU interface is a banked MMIO frame, reached
//! through the shared driver under a lock that is only ever taken with IRQs
//! masked and only for the register access itself: an interrupt is
//! acknowledged and ended in two short holds, and handled in between
//! without it (`interrupts`), so a handler may send an SGI.
//!
//! Every CPU interface runs with EOImode = 1 (GICv3 ICC_CTLR_EL1.EOImode,
//! GICv2 GICC_CTLR.EOImodeNS): an EOI only drops the running priority, and
//! deactivation is a separate write (ICC_DIR_EL1, GICC_DIR). The
//! hypervisor's own interrupts get both at once ([`end`]); an interrupt
//! linked to a guest's (its timers) gets only the priority drop
//! ([`drop_priority`]) and stays active until the guest deactivates it
//! through its list register, so it cannot fire again meanwhile.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use arm_gic::gicv2::GicV2;
use arm_gic::gicv3::registers::{Gicd, GicrSgi};
use arm_gic::gicv3::{GicCpuInterface, GicV3};
use arm_gic::{IntId, InterruptGroup, UniqueMmioPointer};
use tessera_hypervisor::sync::Mutex;
use tessera_platform::GicLayout;
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_structs;
use tock_registers::registers::{ReadWrite, WriteOnly};

use crate::arch;

/// Priority given to the hypervisor's own interrupts: anything not masked
/// by the priority mask of 0xFF.
const HYPERVISOR_PRIORITY: u8 = 0x80;

enum Controller {
    V2(GicV2<'static>),
    V3(GicV3<'static>),
}

// SAFETY: the drivers hold pointers to MMIO frames that every CPU may access;
// the controller is only reached through `CONTROLLER`'s lock.
unsafe impl Send for Controller {}

static CONTROLLER: Mutex<Option<Controller>> = Mutex::new(None);
static VERSION: AtomicU8 = AtomicU8::new(0);
static LAYOUT: spin::Once<GicLayout> = spin::Once::new();

/// GICC_CTLR.EOImodeNS (GICv2, IHI 0048B §4.4.1; bit 9 in the Non-secure
/// view and in a GIC without the Security Extensions).
const GICC_CTLR_EOI_MODE: u32 = 1 << 9;

register_structs! {
    /// The GICv2 CPU interface registers the driver's own code uses beside
    /// `arm-gic` (IHI 0048B §4.4, table 4-2); banked per CPU.
    GiccRegisters {
        (0x0000 => ctlr: ReadWrite<u32>),
        (0x0004 => _reserved0),
        (0x1000 => dir: WriteOnly<u32>),
        (0x1004 => @END),
    }
}

register_structs! {
    /// The distributor registers, present in both generations, that the
    /// driver's own code uses (IHI 0048B §4.3 table 4-1, IHI 0069H §12.9):
    /// set-pending (test images), clear-pending and clear-active by bit,
    /// and GICv2's byte-wide CPU targets. Within the 4 KiB every
    /// distributor has.
    GicdRegisters {
        (0x000 => _reserved0),
        (0x200 => ispendr: [WriteOnly<u32>; 32]),
        (0x280 => icpendr: [WriteOnly<u32>; 32]),
        (0x300 => _reserved1),
        (0x380 => icactiver: [WriteOnly<u32>; 32]),
        (0x400 => _reserved2),
        (0x800 => itargetsr: [ReadWrite<u8>; 1020]),
        (0xBFC => _reserved3),
        (0x1000 => @END),
    }
}

register_structs! {
    /// GICv3 GICD_IROUTER<n> for the SPIs, n = 32..1019, at 0x6100 + 8(n -
    /// 32) in the distributor (IHI 0069H §12.9.22).
    GicdRouting {
        (0x000 => irouter: [ReadWrite<u64>; 988]),
        (0x1EE0 => @END),
    }
}

register_structs! {
    /// The GICv3 redistributor SGI_base frame's register the driver's own
    /// code uses (IHI 0069H §12.10): clear-active for SGIs and PPIs.
    GicrSgiFrame {
        (0x000 => _reserved0),
        (0x380 => icactiver0: WriteOnly<u32>),
        (0x384 => @END),
    }
}

/// GICD_IROUTER<32>'s offset in the distributor.
const GICD_IROUTER_SPIS: u64 = 0x6100;
/// A redistributor's SGI_base frame is 64 KiB after its RD_base, and each
/// CPU has both (128 KiB).
const GICR_SGI_FRAME: u64 = 0x1_0000;
const GICR_FRAMES_PER_CPU: u64 = 0x2_0000;

/// The distributor's registers, once the GIC is known.
fn distributor_registers() -> Option<&'static GicdRegisters> {
    let base = LAYOUT.get()?.distributor().base;
    // SAFETY: the distributor frame (at least 4 KiB in both generations),
    // mapped as device memory in the EL2 map for the whole run; its
    // registers are reached through volatile accesses only.
    Some(unsafe { &*(base as usize as *const GicdRegisters) })
}
/// ICC_CTLR_EL1.EOImode (IHI 0069H §12.2.6).
const ICC_CTLR_EOI_MODE: u64 = 1 << 1;

/// The GIC's register frames, once initialised.
pub fn layout() -> Option<GicLayout> {
    LAYOUT.get().copied()
}

/// This CPU's GICv2 CPU interface (the frame is banked per CPU, so no
/// lock is needed to reach the caller's own); none on GICv3.
fn gicc_registers() -> Option<&'static GiccRegisters> {
    match LAYOUT.get()? {
        GicLayout::V2 { cpu_interface, .. } => {
            // SAFETY: the GICv2 CPU interface frame (8 KiB: GICC_DIR is at
            // 0x1000), mapped as device memory in the EL2 map for the
            // whole run; each CPU sees its own banked registers.
            Some(unsafe { &*(cpu_interface.base as usize as *const GiccRegisters) })
        }
        GicLayout::V3 { .. } => None,
    }
}

/// Splits priority drop from deactivation on this CPU's interface.
fn set_split_eoi_mode() {
    match version() {
        3 => {
            // SAFETY: ICC_CTLR_EL1 at EL2 is the physical CPU interface's
            // control register; only the EOI mode bit changes, and every
            // end of an interrupt follows it (`end` deactivates too).
            unsafe {
                core::arch::asm!(
                    "mrs {value}, icc_ctlr_el1",
                    "orr {value}, {value}, {mode}",
                    "msr icc_ctlr_el1, {value}",
                    "isb",
                    value = out(reg) _,
                    mode = in(reg) ICC_CTLR_EOI_MODE,
                    options(nostack, preserves_flags)
                );
            }
        }
        _ => {
            if let Some(gicc) = gicc_registers() {
                // Only the EOI mode bit changes.
                gicc.ctlr.set(gicc.ctlr.get() | GICC_CTLR_EOI_MODE);
            }
        }
    }
}

/// The errors of bringing the GIC up. All are board description faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GicError {
    /// The redistributor region does not describe one frame per CPU.
    Redistributors,
    /// An interrupt number outside what the GIC implements.
    InvalidInterrupt(u32),
}

// Written out rather than derived `Debug`: the image then carries none of
// the `Debug` builders.
impl core::fmt::Display for GicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Redistributors => {
                f.write_str("the redistributor region does not describe one frame per CPU")
            }
            Self::InvalidInterrupt(intid) => {
                write!(f, "INTID {intid} is outside what the GIC implements")
            }
        }
    }
}

/// Runs `action` on the shared driver with IRQs masked on this CPU.
fn with_controller<R>(action: impl FnOnce(&mut Controller) -> R) -> Option<R> {
    let were_enabled = arch::disable_interrupts();
    let result = CONTROLLER.lock().as_mut().map(action);
    if were_enabled {
        arch::enable_interrupts();
    }
    result
}

/// Brings up the distributor and the boot CPU's interface.
pub fn init_boot_cpu(layout: GicLayout, cpu_count: usize) -> Result<(), GicError> {
    let controller = match layout {
        GicLayout::V3 {
            distributor,
            redistributors,
        } => {
            // ICC_SRE_EL2.SRE must be set before any ICC_*_EL1 access at EL2.
            GicCpuInterface::enable_system_register_el2(true);
            let distributor_frame =
                NonNull::new(distributor.base as *mut Gicd).ok_or(GicError::Redistributors)?;
            let redistributor_frames = NonNull::new(redistributors.base as *mut GicrSgi)
                .ok_or(GicError::Redistributors)?;
            // SAFETY: the board description gives the distributor frame,
            // mapped as device memory in the EL2 map, and this is the
            // driver's only pointer to it. The driver's own code beside it
            // (`GicdRegisters`, `GicdRouting`) reaches only registers the
            // driver leaves alone after its set-up: clear-pending and
            // clear-active bits, and the routing of SPIs passed through or
            // used by the hypervisor, each write one whole register.
            let distributor_pointer = unsafe { UniqueMmioPointer::new(distributor_frame) };
            // SAFETY: likewise for the redistributor frames (the driver's
            // own code writes only GICR_ICACTIVER0, `GicrSgiFrame`); this is
            // the only driver instance for them.
            let mut gic =
                unsafe { GicV3::new(distributor_pointer, redistributor_frames, cpu_count) }
                    .map_err(|_| GicError::Redistributors)?;
            gic.setup(0);
            GicCpuInterface::set_priority_mask(0xFF);
            Controller::V3(gic)
        }
        GicLayout::V2 {
            distributor,
            cpu_interface,
            ..
        } => {
            // SAFETY: as above, for the GICv2 distributor and CPU interface.
            let mut gic =
                unsafe { GicV2::new(distributor.base as *mut _, cpu_interface.base as *mut _) };
            gic.setup();
            gic.set_priority_mask(0xFF);
            Controller::V2(gic)
        }
    };
    VERSION.store(layout.version(), Ordering::Release);
    LAYOUT.call_once(|| layout);
    *CONTROLLER.lock() = Some(controller);
    set_split_eoi_mode();
    Ok(())
}

/// Brings up the CPU interface (and redistributor) of a secondary CPU.
pub fn init_secondary_cpu(cpu: usize) {
    with_controller(|controller| match controller {
        Controller::V3(gic) => {
            GicCpuInterface::enable_system_register_el2(true);
            gic.init_cpu(cpu);
            GicCpuInterface::enable_group1(true);
            GicCpuInterface::set_priority_mask(0xFF);
        }
        Controller::V2(gic) => {
            // The banked CPU interface of this CPU: same programming as the
            // boot CPU's. Re-running the distributor part is idempotent.
            gic.setup();
            gic.set_priority_mask(0xFF);
        }
    });
    set_split_eoi_mode();
}

/// Enables a private (SGI/PPI) interrupt on `cpu` at the hypervisor's
/// priority.
pub fn enable_private_interrupt(intid: u32, cpu: usize) -> Result<(), GicError> {
    let id = if intid < 16 {
        IntId::sgi(intid)
    } else if intid < 32 {
        IntId::ppi(intid - 16)
    } else {
        return Err(GicError::InvalidInterrupt(intid));
    };
    with_controller(|controller| match controller {
        Controller::V3(gic) => {
            gic.set_interrupt_priority(id, Some(cpu), HYPERVISOR_PRIORITY)
                .map_err(|_| GicError::InvalidInterrupt(intid))?;
            gic.enable_interrupt(id, Some(cpu), true)
                .map_err(|_| GicError::InvalidInterrupt(intid))
        }
        Controller::V2(gic) => {
            gic.set_interrupt_priority(id, HYPERVISOR_PRIORITY);
            gic.enable_interrupt(id, true)
                .map_err(|_| GicError::InvalidInterrupt(intid))
        }
    })
    .unwrap_or(Err(GicError::InvalidInterrupt(intid)))
}

/// The GIC version in use, once initialised.
pub fn version() -> u8 {
    VERSION.load(Ordering::Acquire)
}

/// An acknowledged interrupt, to be ended with [`end`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupt(IntId);

impl Interrupt {
    /// A GICv3 ICC_IAR1_EL1 value read outside this module (the IRQ
    /// entry's fast path); `None` for a value no interrupt has.
    #[must_use]
    pub fn from_iar(iar: u32) -> Option<Self> {
        IntId::try_from(iar & 0xFF_FFFF).ok().map(Self)
    }

    /// INTIDs 1020-1023: nothing was pending for this interface.
    #[must_use]
    pub fn is_spurious(self) -> bool {
        (1020..1024).contains(&u32::from(self.0))
    }

    /// The interrupt number: on GICv2 without the source-CPU bits an SGI's
    /// IAR value carries (which EOIR must get back, so they are kept);
    /// GICv3 IDs are whole (they may exceed 10 bits).
    pub fn id(self) -> u32 {
        match version() {
            3 => u32::from(self.0),
            _ => u32::from(self.0) & 0x3FF,
        }
    }
}

/// Acknowledges the highest-priority pending interrupt; `None` when
/// nothing is pending (spurious).
///
/// GICv2 uses its group-0 registers (GICC_IAR/EOIR, what a Non-secure or
/// security-less CPU interface serves), GICv3 group 1 (ICC_IAR1/EOIR1_EL1,
/// the Non-secure group). GICv2's CPU interface is banked per CPU; the
/// shared driver's lock is held only for the register access, never while
/// the interrupt is handled.
pub fn acknowledge() -> Option<Interrupt> {
    match version() {
        3 => GicCpuInterface::get_and_acknowledge_interrupt(InterruptGroup::Group1),
        _ => with_controller(|controller| match controller {
            Controller::V2(gic) => gic.get_and_acknowledge_interrupt(InterruptGroup::Group0),
            Controller::V3(_) => None,
        })
        .flatten(),
    }
    .map(Interrupt)
}

/// Ends (drops the priority of and deactivates) an acknowledged interrupt.
pub fn end(interrupt: Interrupt) {
    drop_priority(interrupt);
    // The whole IAR value: a GICv2 SGI's source CPU bits included.
    deactivate(u32::from(interrupt.0));
}

/// Deactivates interrupt `intid` on this CPU (it must be active).
pub fn deactivate(intid: u32) {
    match version() {
        3 => {
            // SAFETY: ICC_DIR_EL1 deactivates one interrupt of this CPU's
            // interface; EOImode = 1 makes this the only way it happens.
            unsafe {
                core::arch::asm!("msr icc_dir_el1, {intid}", intid = in(reg) u64::from(intid),
                    options(nostack, preserves_flags));
            }
        }
        _ => {
            if let Some(gicc) = gicc_registers() {
                gicc.dir.set(intid);
            }
        }
    }
}

/// Drops the running priority of an acknowledged interrupt and leaves it
/// active: a guest's deactivation, through a hardware-linked list
/// register, ends it.
#[inline(always)]
pub fn drop_priority(interrupt: Interrupt) {
    match version() {
        3 => GicCpuInterface::end_interrupt(interrupt.0, InterruptGroup::Group1),
        _ => {
            with_controller(|controller| {
                if let Controller::V2(gic) = controller {
                    gic.end_interrupt(interrupt.0, InterruptGroup::Group0);
                }
            });
        }
    }
}

/// The SGI that tells a CPU to look at its request mailbox.
pub const REQUEST_SGI: u32 = 1;

/// The SGI that tells a CPU to look at its injection doorbell
/// (`interrupts::guest::CpuFastPaths`): its own SGI, so the assembly fast
/// path can take it without looking at the request queue.
pub const DOORBELL_SGI: u32 = 2;

/// Sends `REQUEST_SGI` to the CPU with logical `index` and MPIDR `affinity`.
pub fn send_request_sgi(index: usize, affinity: u64) {
    send_sgi(REQUEST_SGI, index, || affinity);
}

/// Sends `DOORBELL_SGI` to the CPU with logical `index` (inline: the
/// notify path's send; its MPIDR is looked up only if its SGI target
/// fields are not known yet).
#[inline(always)]
pub fn send_doorbell_sgi(index: usize) {
    send_sgi(DOORBELL_SGI, index, || crate::vm::cpu_affinity(index));
}

/// Each CPU's ICC_SGI1R_EL1 target fields (GICv3), worked out once from
/// its MPIDR by [`learn_sgi_targets`]; 0 until then (a valid value always
/// has a TargetList bit).
static SGI_TARGETS: [AtomicU64; tessera_hypervisor::MAX_CPUS] =
    [const { AtomicU64::new(0) }; tessera_hypervisor::MAX_CPUS];

/// ICC_SGI1R_EL1 (IHI 0069H §12.2.23) without its INTID, for the CPU with
/// MPIDR `affinity`: TargetList [15:0], Aff1 [23:16], Aff2 [39:32], IRM
/// [40] = 0, RS [47:44] (which 16 of Aff0's values TargetList names),
/// Aff3 [55:48]. INTID goes in [27:24].
const fn sgi_target(affinity: u64) -> u64 {
    let aff0 = affinity & 0xFF;
    (1u64 << (aff0 & 0xF))
        | ((affinity >> 8) & 0xFF) << 16
        | ((affinity >> 16) & 0xFF) << 32
        | (aff0 >> 4) << 44
        | ((affinity >> 32) & 0xFF) << 48
}

/// Records each CPU's SGI target fields from the MPIDRs of all CPUs, so a
/// send is one load and one register write (the notify path's). GICv3
/// only: a value recorded says the GIC is one (after `init`).
pub fn learn_sgi_targets(affinities: &[u64]) {
    if version() != 3 {
        return;
    }
    for (slot, &affinity) in SGI_TARGETS.iter().zip(affinities) {
        slot.store(sgi_target(affinity), Ordering::Relaxed);
    }
}

/// Sends SGI `intid` to the CPU with logical `index` and MPIDR
/// `affinity()` (asked only when needed), after every earlier store (its
/// mailbox or doorbell) is visible.
#[inline(always)]
fn send_sgi(intid: u32, index: usize, affinity: impl FnOnce() -> u64) {
    // Learned target fields say GICv3 (`learn_sgi_targets`).
    match SGI_TARGETS
        .get(index)
        .map(|slot| slot.load(Ordering::Relaxed))
    {
        Some(target) if target != 0 => send_gicv3_sgi(intid, target),
        _ => send_sgi_unlearned(intid, index, affinity()),
    }
}

/// [`send_sgi`] on GICv3 to the CPU whose ICC_SGI1R_EL1 target fields are
/// `target`.
#[inline(always)]
fn send_gicv3_sgi(intid: u32, target: u64) {
    let value = target | u64::from(intid & 0xF) << 24;
    // SAFETY: DSB ISHST orders the mailbox or doorbell store before the
    // SGI can be seen (the SGI register write is no memory access); the
    // write sends one SGI to one CPU and touches no memory.
    unsafe {
        core::arch::asm!(
            "dsb ishst",
            "msr icc_sgi1r_el1, {value}",
            "isb",
            value = in(reg) value,
            options(nostack, preserves_flags)
        );
    }
}

/// [`send_sgi`] before the targets are learned (GICv3), or on GICv2.
#[inline(never)]
fn send_sgi_unlearned(intid: u32, index: usize, affinity: u64) {
    match version() {
        3 => send_gicv3_sgi(intid, sgi_target(affinity)),
        _ => {
            // Make the store visible before the interrupt can be seen.
            arch::send_event();
            with_controller(|controller| {
                if let Controller::V2(gic) = controller {
                    gic.send_sgi(
                        IntId::sgi(intid),
                        arm_gic::gicv2::SgiTarget::List {
                            target_list_filter: arm_gic::gicv2::SgiTargetListFilter::CPUTargetList,
                            target_list: u16::from(cpu_target_bit(index)),
                        },
                    );
                }
            });
        }
    }
}

/// Clears the active state of private interrupt `intid` (SGI or PPI) of
/// this CPU, through its redistributor's GICR_ICACTIVER0 (GICv3) or the
/// banked GICD_ICACTIVER0 (GICv2): for a linked guest interrupt left active
/// when its vCPU stops. Clearing one that is not active changes nothing.
pub fn clear_active_private(intid: u32) {
    if intid >= 32 {
        return;
    }
    match LAYOUT.get() {
        Some(GicLayout::V3 { redistributors, .. }) => {
            let frame = redistributors.base
                + arch::cpu_index() as u64 * GICR_FRAMES_PER_CPU
                + GICR_SGI_FRAME;
            // SAFETY: this CPU's own redistributor SGI_base frame (the
            // driver indexes them by CPU the same way), device memory in
            // the EL2 map for the whole run.
            let sgi_frame = unsafe { &*(frame as usize as *const GicrSgiFrame) };
            sgi_frame.icactiver0.set(1 << intid);
        }
        // GICD_ICACTIVER0 is banked: this CPU's private interrupts.
        Some(GicLayout::V2 { .. }) => {
            if let Some(gicd) = distributor_registers() {
                gicd.icactiver[0].set(1 << intid);
            }
        }
        None => {}
    }
}

/// Sets a passed-through device's SPI `intid` up at the hypervisor's
/// priority, routed to the CPU with logical `index` and MPIDR `affinity`,
/// and enables it. Its trigger stays as the GIC has it (the device's).
pub fn enable_spi(intid: u32, index: usize, affinity: u64) -> Result<(), GicError> {
    if !(32..1020).contains(&intid) {
        return Err(GicError::InvalidInterrupt(intid));
    }
    route_spi(intid, index, affinity);
    let id = IntId::spi(intid - 32);
    with_controller(|controller| match controller {
        Controller::V3(gic) => {
            gic.set_interrupt_priority(id, None, HYPERVISOR_PRIORITY)
                .map_err(|_| GicError::InvalidInterrupt(intid))?;
            gic.enable_interrupt(id, None, true)
                .map_err(|_| GicError::InvalidInterrupt(intid))
        }
        Controller::V2(gic) => {
            gic.set_interrupt_priority(id, HYPERVISOR_PRIORITY);
            gic.enable_interrupt(id, true)
                .map_err(|_| GicError::InvalidInterrupt(intid))
        }
    })
    .unwrap_or(Err(GicError::InvalidInterrupt(intid)))
}

/// Each CPU's own bit in GICv2 CPU target lists (what its banked
/// GICD_ITARGETSR0 reads, IHI 0048B §4.3.12), learnt at its bring-up: the
/// GIC's CPU-interface numbering need not follow the logical CPU order.
static CPU_TARGET_BITS: [AtomicU8; tessera_hypervisor::MAX_CPUS] =
    [const { AtomicU8::new(0) }; tessera_hypervisor::MAX_CPUS];

/// Records the calling CPU's GICv2 target bit (see `CPU_TARGET_BITS`).
pub fn learn_cpu_target() {
    if let Some(GicLayout::V2 { .. }) = LAYOUT.get()
        && let Some(gicd) = distributor_registers()
    {
        // The first byte of the banked GICD_ITARGETSR0.
        let own = gicd.itargetsr[0].get();
        CPU_TARGET_BITS[arch::cpu_index()].store(own, Ordering::Relaxed);
    }
}

/// The GICv2 target bit of the CPU with logical `index`: the one it
/// reported, or (before it came up) its logical number's.
fn cpu_target_bit(index: usize) -> u8 {
    let learnt = CPU_TARGET_BITS[index % tessera_hypervisor::MAX_CPUS].load(Ordering::Relaxed);
    if learnt != 0 {
        learnt
    } else {
        1 << (index & 7)
    }
}

/// Routes SPI `intid` to the CPU with logical `index` and MPIDR
/// `affinity`: GICD_IROUTER (GICv3, affinity routing) or the byte of
/// GICD_ITARGETSR (GICv2), with that CPU's own target bit.
pub fn route_spi(intid: u32, index: usize, affinity: u64) {
    if !(32..1020).contains(&intid) {
        return;
    }
    match LAYOUT.get() {
        Some(GicLayout::V3 { distributor, .. }) => {
            // Aff3 in [39:32], Aff2.Aff1.Aff0 in [23:0]; IRM 0.
            let route = (affinity & 0xFF_FFFF) | ((affinity >> 32) & 0xFF) << 32;
            let routing = distributor.base + GICD_IROUTER_SPIS;
            // SAFETY: the GICv3 distributor's IROUTER registers (its frame
            // is 64 KiB), device memory in the EL2 map for the whole run.
            let routing = unsafe { &*(routing as usize as *const GicdRouting) };
            routing.irouter[(intid - 32) as usize].set(route);
        }
        Some(GicLayout::V2 { .. }) => {
            // Byte accesses to GICD_ITARGETSR are allowed (IHI 0048B
            // §4.3.12).
            if let Some(gicd) = distributor_registers() {
                gicd.itargetsr[intid as usize].set(cpu_target_bit(index));
            }
        }
        None => {}
    }
}

/// Makes interrupt `intid` inactive: a private one of this CPU (its
/// redistributor's or banked GICD_ICACTIVER0), or an SPI (GICD_ICACTIVER).
/// One that is not active is left as it is.
pub fn deactivate_physical(intid: u32) {
    if intid < 32 {
        return clear_active_private(intid);
    }
    if intid >= 1020 {
        return;
    }
    if let Some(gicd) = distributor_registers() {
        // One bit: only this SPI.
        gicd.icactiver[(intid / 32) as usize].set(1 << (intid % 32));
    }
}

/// Sets SPI `intid` pending (GICD_ISPENDR), as its device would: test
/// images only (`TESSERA_TEST_RAISE_PMU_SPI`), for a path QEMU's devices
/// never take.
pub fn set_spi_pending(intid: u32) {
    if !(32..1020).contains(&intid) {
        return;
    }
    if let Some(gicd) = distributor_registers() {
        // One bit: only this SPI.
        gicd.ispendr[(intid / 32) as usize].set(1 << (intid % 32));
    }
}

/// Clears the pending and active state of SPI `intid` (GICD_ICPENDR,
/// GICD_ICACTIVER): a passed-through device's interrupt left over from a
/// VM run that ended or restarted.
pub fn clear_spi(intid: u32) {
    if !(32..1020).contains(&intid) {
        return;
    }
    if let Some(gicd) = distributor_registers() {
        // One bit each: only this SPI.
        let (word, bit) = ((intid / 32) as usize, 1 << (intid % 32));
        gicd.icpendr[word].set(bit);
        gicd.icactiver[word].set(bit);
    }
}
