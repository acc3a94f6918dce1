//! The list registers: which of a vCPU's interrupts the hardware virtual
//! CPU interface holds, and how their state flows between the list
//! registers and the VM's interrupt model (`state.rs`).
//!
//! Each physical CPU runs one vCPU, so a CPU's list registers are that
//! vCPU's, and only that CPU reads or writes them (another CPU that changes
//! the vCPU's interrupts asks it to, through its request queue). The
//! policy, host-tested here against a fake:
//!
//! - **One sync does it all.** [`sync`] first *folds* every list register
//!   back into the model (what the guest acknowledged, completed or still
//!   has pending), then fills the registers again from the model: every
//!   interrupt the guest has active (it must stay in a register, or the
//!   guest's EOI of it would find nothing), then the deliverable pending
//!   ones in priority order, equal priorities in INTID order. So the
//!   highest-priority pending interrupts are always the ones the guest can
//!   take, and a change anywhere (a register write, a device line, an SGI)
//!   is followed by one sync of the vCPUs it concerns.
//! - **Pending moves into the register.** Writing an edge interrupt (or an
//!   SGI, or a hardware-linked one) pending into a register clears its
//!   latch in the model: the register now holds that instance. A new edge
//!   while it sits there latches again, and is a new instance. Folding a
//!   register that is still pending gives the latch back. A level
//!   interrupt's pending state is its line (and the ISPENDR latch), which
//!   stays in the model; the register's pending bit is a copy, and the
//!   register asks for a maintenance interrupt at the guest's EOI (the EOI
//!   bit), so the line is looked at again then: a line still high makes it
//!   pending again at once. A level interrupt the guest has active whose
//!   line has fallen is written without it: should the line rise again,
//!   that change is followed by a sync like any other.
//! - **More pending than registers.** When some deliverable interrupt did
//!   not fit, every software register asks for maintenance at EOI, and
//!   when at least one register holds a pending interrupt the "no pending"
//!   maintenance interrupt is enabled too (ICH_HCR_EL2.NPIE, GICH_HCR.NPIE):
//!   as soon as the guest has acknowledged everything it was given, or
//!   completed one, the CPU syncs and the next ones come in. None is lost.
//! - **Hardware-linked interrupts** (the vCPU's own timers and PMU, and
//!   passed-through SPIs) are written with the HW bit and the physical
//!   INTID: the guest's deactivation deactivates the physical interrupt,
//!   which the hypervisor left active, so the device can raise it again
//!   only after the guest is done with it.
//!
//! Nothing here allocates, and nothing is unsafe.

#![forbid(unsafe_code)]

use super::state::{PENDING_LIST_LEN, PendingIrq, VgicState};
use crate::vm::ids::VcpuId;

/// The most list registers an implementation has (ICH_VTR_EL2.ListRegs and
/// GICH_VTR.ListRegs are 4-bit counts less one).
pub const MAX_LIST_REGISTERS: usize = 16;
const _: () = assert!(PENDING_LIST_LEN > MAX_LIST_REGISTERS);

/// The state field of a list register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrState {
    Invalid,
    Pending,
    Active,
    PendingActive,
}

impl LrState {
    const fn from_bits(bits: u64) -> Self {
        match bits & 0b11 {
            0b00 => Self::Invalid,
            0b01 => Self::Pending,
            0b10 => Self::Active,
            _ => Self::PendingActive,
        }
    }

    const fn bits(self) -> u64 {
        match self {
            Self::Invalid => 0b00,
            Self::Pending => 0b01,
            Self::Active => 0b10,
            Self::PendingActive => 0b11,
        }
    }

    const fn of(pending: bool, active: bool) -> Self {
        match (pending, active) {
            (false, false) => Self::Invalid,
            (true, false) => Self::Pending,
            (false, true) => Self::Active,
            (true, true) => Self::PendingActive,
        }
    }

    #[must_use]
    pub const fn pending(self) -> bool {
        matches!(self, Self::Pending | Self::PendingActive)
    }

    #[must_use]
    pub const fn active(self) -> bool {
        matches!(self, Self::Active | Self::PendingActive)
    }
}

/// One list register's contents, independent of the GIC generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListEntry {
    pub intid: u32,
    /// The full 8-bit priority; the hardware keeps its implemented upper
    /// bits.
    pub priority: u8,
    pub group1: bool,
    pub state: LrState,
    /// Hardware-linked: the physical INTID the guest's deactivation
    /// deactivates.
    pub physical: Option<u32>,
    /// Software only: a maintenance interrupt when the guest's EOI makes
    /// the register invalid.
    pub eoi_maintenance: bool,
    /// GICv2 SGIs: the sending vCPU, which the guest reads in
    /// GICC_IAR.CPUID.
    pub source: Option<VcpuId>,
}

impl ListEntry {
    /// An unused register.
    pub const EMPTY: Self = Self {
        intid: 0,
        priority: 0,
        group1: false,
        state: LrState::Invalid,
        physical: None,
        eoi_maintenance: false,
        source: None,
    };

    /// ICH_LR<n>_EL2 (Arm IHI 0069H §12.4.6): vINTID [31:0], pINTID [44:32]
    /// when HW, else EOI [41]; Priority [55:48]; Group [60]; HW [61];
    /// State [63:62].
    #[must_use]
    pub const fn to_gicv3(self) -> u64 {
        let mut value = self.intid as u64
            | (self.priority as u64) << 48
            | (self.group1 as u64) << 60
            | self.state.bits() << 62;
        match self.physical {
            Some(physical) => value |= (physical as u64 & 0x1FFF) << 32 | 1 << 61,
            None => value |= (self.eoi_maintenance as u64) << 41,
        }
        value
    }

    #[must_use]
    pub const fn from_gicv3(value: u64) -> Self {
        let hardware = value & (1 << 61) != 0;
        Self {
            intid: value as u32,
            priority: (value >> 48) as u8,
            group1: value & (1 << 60) != 0,
            state: LrState::from_bits(value >> 62),
            physical: if hardware {
                Some(((value >> 32) & 0x1FFF) as u32)
            } else {
                None
            },
            eoi_maintenance: !hardware && value & (1 << 41) != 0,
            source: None,
        }
    }

    /// GICH_LR<n> (Arm IHI 0048B §5.3.11): VirtualID [9:0]; PhysicalID
    /// [19:10] when HW, else CPUID [12:10] and EOI [19]; Priority [27:23]
    /// (the top five bits); State [29:28]; Grp1 [30]; HW [31].
    #[must_use]
    pub const fn to_gicv2(self) -> u32 {
        let mut value = (self.intid & 0x3FF)
            | ((self.priority >> 3) as u32) << 23
            | (self.state.bits() as u32) << 28
            | (self.group1 as u32) << 30;
        match self.physical {
            Some(physical) => value |= (physical & 0x3FF) << 10 | 1 << 31,
            None => {
                value |= (self.eoi_maintenance as u32) << 19;
                if let Some(source) = self.source {
                    value |= (source.index() as u32 & 0b111) << 10;
                }
            }
        }
        value
    }

    #[must_use]
    pub const fn from_gicv2(value: u32) -> Self {
        let hardware = value & (1 << 31) != 0;
        Self {
            intid: value & 0x3FF,
            priority: (((value >> 23) & 0x1F) << 3) as u8,
            group1: value & (1 << 30) != 0,
            state: LrState::from_bits((value >> 28) as u64),
            physical: if hardware {
                Some((value >> 10) & 0x3FF)
            } else {
                None
            },
            eoi_maintenance: !hardware && value & (1 << 19) != 0,
            source: if hardware {
                None
            } else {
                VcpuId::new(((value >> 10) & 0b111) as usize)
            },
        }
    }
}

/// The list registers of the CPU the vCPU runs on, and its maintenance
/// controls: the hardware virtual CPU interface (ICH_*_EL2 or GICH), or a
/// host test's fake.
pub trait ListRegisters {
    /// How many list registers this CPU has.
    fn count(&self) -> usize;
    fn read(&self, index: usize) -> ListEntry;
    fn write(&mut self, index: usize, entry: ListEntry);
    /// The registers the guest is done with (ICH_ELRSR_EL2, GICH_ELRSR0):
    /// bit n set when register n is invalid and asks for no maintenance.
    fn empty(&self) -> u32;
    /// ICH_HCR_EL2.NPIE / GICH_HCR.NPIE: a maintenance interrupt while no
    /// list register holds a pending interrupt.
    fn set_no_pending_maintenance(&mut self, enabled: bool);
}

/// What the hypervisor wrote to one list register, to fold it back. All
/// zero is an unused register (see `VgicState::ZERO` for why that matters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Resident {
    in_use: bool,
    intid: u32,
    /// The pending instance moved out of the model's latch into the
    /// register (edge, SGI, hardware-linked): a register still pending gives
    /// it back.
    moved_latch: bool,
    /// Written pending (for a level interrupt: a guest that no longer has
    /// it pending acknowledged it).
    written_pending: bool,
    /// For a GICv2 SGI, the sending vCPU's index plus one; 0 for none.
    source: u8,
}

impl Resident {
    const UNUSED: Self = Self {
        in_use: false,
        intid: 0,
        moved_latch: false,
        written_pending: false,
        source: 0,
    };

    fn source(&self) -> Option<VcpuId> {
        usize::from(self.source)
            .checked_sub(1)
            .and_then(VcpuId::new)
    }
}

/// One vCPU's view of its CPU's list registers: what each holds. All zero
/// is the empty view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListRegisterShadow {
    resident: [Resident; MAX_LIST_REGISTERS],
    /// Some deliverable interrupt did not fit at the last sync.
    overflow: bool,
    /// The no-pending maintenance interrupt is enabled.
    no_pending_maintenance: bool,
    /// The hardware-linked PPIs [`show_linked`] may put straight into a
    /// free register, with the entry to write: forwarded (enabled, group
    /// on) and nothing waiting outside the registers at the last sync.
    /// Every change that could alter this is followed by a sync, which
    /// recomputes it.
    linked_ready: u32,
    linked_entries: [ListEntry; LINKED_FAST_SLOTS],
}

/// How many hardware-linked PPIs the fast path keeps an entry for: the
/// virtual timer, the EL1 physical timer and the PMU overflow.
const LINKED_FAST_SLOTS: usize = 3;

impl Default for ListRegisterShadow {
    fn default() -> Self {
        Self::new()
    }
}

impl ListRegisterShadow {
    #[must_use]
    pub const fn new() -> Self {
        Self {
            resident: [Resident::UNUSED; MAX_LIST_REGISTERS],
            overflow: false,
            no_pending_maintenance: false,
            linked_ready: 0,
            linked_entries: [ListEntry::EMPTY; LINKED_FAST_SLOTS],
        }
    }

    /// Whether some deliverable interrupt waited for a list register at the
    /// last sync.
    #[must_use]
    pub const fn overflowed(&self) -> bool {
        self.overflow
    }
}

impl VgicState {
    /// Folds one list register's state back into the model: what the guest
    /// did with the interrupt since it was written.
    fn fold(&mut self, vcpu: VcpuId, resident: Resident, now: LrState) {
        let sgi_source = self.is_v2_sgi(resident.intid).then(|| resident.source());
        let _ = self.update(vcpu, resident.intid, |irq| {
            irq.active = now.active();
            if resident.moved_latch && now.pending() {
                irq.pending_latch = true;
            }
            if !resident.moved_latch && resident.written_pending && !now.pending() {
                // Acknowledged: the ISPENDR latch of a level interrupt goes
                // with it; its line stays what the device drives.
                irq.pending_latch = false;
            }
        });
        if let Some(Some(source)) = sgi_source
            && now.pending()
        {
            self.restore_sgi_source(vcpu, resident.intid, source);
        }
        self.note_active(vcpu, resident.intid, now.active(), resident.source());
        // Out of this vCPU's register (every fold empties its shadow
        // entry): other vCPUs may show it again.
        self.note_resident(vcpu, resident.intid, false);
        // An SPI completed here while routed elsewhere, still pending: the
        // vCPU it is routed to may show it now (nothing else would tell
        // that vCPU's CPU, as no register write or line changed).
        if resident.intid >= super::state::SPI_BASE
            && !now.active()
            && self
                .slot(vcpu, resident.intid)
                .is_some_and(|irq| irq.pending())
            && let Some(target) = self.spi_target(resident.intid)
            && target != vcpu
        {
            self.handoffs.insert(target);
        }
    }

    /// Moves the pending instance of `irq` into a list register: the
    /// latch (for a GICv2 SGI, this source's bit) is cleared, unless `irq`
    /// is a level interrupt, whose pending state stays its line. Returns
    /// whether the latch moved.
    fn take_pending(&mut self, vcpu: VcpuId, irq: &PendingIrq) -> bool {
        let hardware = self.is_hardware_linked(vcpu, irq.intid);
        let Some(slot) = self.slot(vcpu, irq.intid) else {
            return false;
        };
        if !slot.edge && !hardware && (irq.intid as usize) >= super::state::SGI_COUNT {
            return false;
        }
        if let Some(source) = irq.source {
            self.clear_sgi_source(vcpu, irq.intid, source);
        } else {
            let _ = self.update(vcpu, irq.intid, |state| state.pending_latch = false);
        }
        true
    }
}

/// Folds the list registers of `vcpu`'s CPU into the model and fills them
/// again with the interrupts the guest should see now (the policy in the
/// module documentation).
pub fn sync(
    state: &mut VgicState,
    vcpu: VcpuId,
    shadow: &mut ListRegisterShadow,
    registers: &mut impl ListRegisters,
) {
    let count = registers.count().min(MAX_LIST_REGISTERS);
    // Which registers held something: the others hold EMPTY already (an
    // unused register is always written EMPTY), so they need no write.
    let mut was_in_use = [false; MAX_LIST_REGISTERS];
    for (index, resident) in shadow.resident.iter_mut().enumerate().take(count) {
        if resident.in_use {
            let now = registers.read(index).state;
            state.fold(vcpu, *resident, now);
            *resident = Resident::UNUSED;
            was_in_use[index] = true;
        }
    }
    state.prune_marks(vcpu);
    // What to show: every active interrupt keeps a register; then the
    // pending ones in order, each in its own register if active, else in a
    // free one, until one finds no room. The guest so always sees a prefix
    // of the pending order: never a pending interrupt while a better one
    // waits outside.
    let (actives, pending) = state.active_and_pending_for(vcpu);
    let mut plan = [(PendingIrq::NONE, false); MAX_LIST_REGISTERS];
    let mut planned = 0;
    for irq in actives.as_slice().iter().take(count) {
        plan[planned] = (*irq, false);
        planned += 1;
    }
    let mut overflow = actives.as_slice().len() > count;
    for irq in pending.as_slice() {
        // `planned` never passes `count`; the `min` shows the compiler.
        if let Some(entry) = plan[..planned.min(MAX_LIST_REGISTERS)]
            .iter_mut()
            .find(|(planned_irq, _)| planned_irq.intid == irq.intid)
        {
            // One register shows one instance's CPUID (GICv2 SGIs), and a
            // hardware-linked one is never pending and active at once (its
            // pending state is the physical interrupt's): such a pending
            // instance waits until the active one is completed, with EOI
            // maintenance asked for.
            let other_source = entry.0.source.is_some() && entry.0.source != irq.source;
            if other_source || state.is_hardware_linked(vcpu, irq.intid) {
                overflow = true;
                continue;
            }
            // An SPI routed to another vCPU while this one handles it: its
            // pending instance is the new target's once this one completes
            // (its register asks for EOI maintenance, below, and the fold
            // then hands it over: `VgicState::take_handoffs`), as the
            // distributor forwards a deactivated interrupt to its current
            // target. Not merged here, or this vCPU would take it again.
            if irq.intid >= super::state::SPI_BASE && state.spi_target(irq.intid) != Some(vcpu) {
                continue;
            }
            *entry = (
                PendingIrq {
                    source: irq.source,
                    ..*irq
                },
                true,
            );
        } else if planned < count {
            plan[planned] = (*irq, true);
            planned += 1;
        } else {
            overflow = true;
            break;
        }
    }
    let mut any_pending = false;
    for index in 0..count {
        let (irq, pending) = plan[index];
        if index >= planned {
            if was_in_use[index] {
                registers.write(index, ListEntry::EMPTY);
            }
            continue;
        }
        let physical = state.linked_physical(vcpu, irq.intid);
        let moved_latch = pending && state.take_pending(vcpu, &irq);
        let level = !moved_latch && physical.is_none();
        // An SPI the guest moved to another vCPU while this one handles
        // it: its completion must be seen at once (EOI maintenance), so
        // the model stops showing it here and the other vCPU can take it.
        let routed_away = irq.intid >= 32 && state.spi_target(irq.intid) != Some(vcpu);
        any_pending |= pending;
        registers.write(
            index,
            ListEntry {
                intid: irq.intid,
                priority: irq.priority,
                group1: irq.group1,
                state: LrState::of(pending, irq.active),
                physical,
                // A level interrupt shown pending is looked at again at
                // its EOI; one only active (its line fell meanwhile) needs
                // no maintenance: a new rise is a model change, which
                // syncs anyway. Saves the receiver of a vdev-shmem signal,
                // whose handler lowers the line, an exit per interrupt.
                // Unless it was routed away meanwhile (see above).
                eoi_maintenance: physical.is_none()
                    && ((level && (pending || routed_away)) || overflow),
                source: irq.source,
            },
        );
        state.note_resident(vcpu, irq.intid, true);
        shadow.resident[index] = Resident {
            in_use: true,
            intid: irq.intid,
            moved_latch,
            written_pending: pending,
            source: irq.source.map_or(0, |source| source.index() as u8 + 1),
        };
    }
    shadow.overflow = overflow;
    prepare_linked(state, vcpu, shadow);
    let no_pending_maintenance = overflow && any_pending;
    if no_pending_maintenance != shadow.no_pending_maintenance {
        registers.set_no_pending_maintenance(no_pending_maintenance);
        shadow.no_pending_maintenance = no_pending_maintenance;
    }
}

/// Works out which hardware-linked PPIs [`show_linked`] may show at once,
/// and the entries it writes for them.
fn prepare_linked(state: &VgicState, vcpu: VcpuId, shadow: &mut ListRegisterShadow) {
    shadow.linked_ready = 0;
    if shadow.overflow {
        return;
    }
    // The linked PPIs in INTID order, one entry each, until the entries
    // run out.
    let mut entries = shadow.linked_entries.iter_mut();
    for intid in 16..32 {
        if !state.is_hardware_linked(vcpu, intid) {
            continue;
        }
        let Some(slot) = entries.next() else {
            break;
        };
        if let Some(entry) = state.forwarded_entry(vcpu, intid) {
            *slot = ListEntry {
                state: LrState::Pending,
                physical: state.linked_physical(vcpu, intid),
                ..entry
            };
            shadow.linked_ready |= 1 << intid;
        } else {
            *slot = ListEntry::EMPTY;
        }
    }
}

/// SPI `intid` became pending for `vcpu` (running here; raised from
/// another CPU, which asked this one to show it, and in the model now):
/// written into a free
/// list register, exactly as a sync would, when nothing waited for a
/// register at the last sync (then every deliverable interrupt is shown,
/// and so it is with this one too) and it is in none yet, or only in one
/// the guest has emptied since (folded back first). Saves the receiver of
/// a vdev-shmem signal a whole sync. Returns false in every other case:
/// the caller syncs (having changed nothing, or only folded that emptied
/// register, which the sync would do too).
pub fn show_pending_spi(
    state: &mut VgicState,
    vcpu: VcpuId,
    intid: u32,
    shadow: &mut ListRegisterShadow,
    registers: &mut impl ListRegisters,
) -> bool {
    if shadow.overflow {
        return false;
    }
    let count = registers.count().min(MAX_LIST_REGISTERS);
    let empty = registers.empty();
    // Its previous instance may still be in the shadow, the guest done
    // with it since (completed, its register empty): folded back as a sync
    // would, and its register reused. Still shown in any other state, it
    // takes the whole sync.
    let mut previous = None;
    if let Some(index) = shadow.resident[..count]
        .iter()
        .position(|resident| resident.in_use && resident.intid == intid)
    {
        if empty & (1 << index) == 0 {
            return false;
        }
        previous = Some(index);
    }
    if let Some(index) = previous {
        state.fold(vcpu, shadow.resident[index], LrState::Invalid);
        shadow.resident[index] = Resident::UNUSED;
    }
    let Some(irq) = state.pending_spi_for(vcpu, intid) else {
        // Not pending (after all): nothing to show. Folded, the register
        // is as a sync would leave it; else the caller syncs.
        return previous.is_some();
    };
    // Unused in the shadow and empty in the hardware (the timer's fast
    // path writes registers the shadow does not track as free).
    let Some(index) =
        (0..count).find(|&index| !shadow.resident[index].in_use && empty & (1 << index) != 0)
    else {
        return false;
    };
    let moved_latch = state.take_pending(vcpu, &irq);
    registers.write(
        index,
        ListEntry {
            intid,
            priority: irq.priority,
            group1: irq.group1,
            state: LrState::Pending,
            physical: None,
            // A level interrupt is looked at again at its EOI, as in sync.
            eoi_maintenance: !moved_latch,
            source: None,
        },
    );
    state.note_resident(vcpu, intid, true);
    shadow.resident[index] = Resident {
        in_use: true,
        intid,
        moved_latch,
        written_pending: true,
        source: 0,
    };
    true
}

/// The line of level interrupt `intid` fell while `vcpu` (running here)
/// has it in a list register as active only: the guest is in its handler,
/// and the handler's access lowered the line (a vdev-shmem status read).
/// The register keeps the instance, and its EOI maintenance is dropped,
/// exactly what a sync would write for it now; nothing else can have
/// changed, since every other change to the model is followed by a sync.
/// Saves the receiver of a signal a whole sync per interrupt. The model
/// learns that the guest acknowledged it at the next fold, as it would of
/// any acknowledge. Returns false, changing nothing, in every other case
/// (the register is pending too, the model still has it pending, some
/// interrupt waits for a register): the caller syncs.
pub fn line_fell_while_active(
    state: &VgicState,
    vcpu: VcpuId,
    intid: u32,
    shadow: &ListRegisterShadow,
    registers: &mut impl ListRegisters,
) -> bool {
    line_fell_then_injection_slot(
        state,
        vcpu,
        intid,
        shadow,
        registers,
        &super::state::SpiSet::EMPTY,
    )
    .is_some()
}

/// [`line_fell_while_active`]; when it handled the fall, also where the
/// next instance of `intid` may go at once if it is one of `signalled`
/// (what [`injection_entry`] accepts for the register just rewritten, the
/// only one the fall changed; with several signalled SPIs the whole
/// search may prefer another, equally valid), worked out from what the
/// fall already looked at: the receiver's status read re-arms the
/// injection fast path without the whole search. `None` when the caller
/// must sync.
pub fn line_fell_then_injection_slot(
    state: &VgicState,
    vcpu: VcpuId,
    intid: u32,
    shadow: &ListRegisterShadow,
    registers: &mut impl ListRegisters,
    signalled: &super::state::SpiSet,
) -> Option<Option<(usize, ListEntry)>> {
    if shadow.overflow {
        return None;
    }
    let count = registers.count().min(MAX_LIST_REGISTERS);
    let index = shadow.resident[..count]
        .iter()
        .position(|resident| resident.in_use && resident.intid == intid && !resident.moved_latch)?;
    let mut entry = registers.read(index);
    let irq = state.slot(vcpu, intid)?;
    // Routed away meanwhile: the sync keeps its EOI maintenance.
    let routed_away = intid >= 32 && state.spi_target(intid) != Some(vcpu);
    if entry.state != LrState::Active || entry.physical.is_some() || irq.pending() || routed_away {
        return None;
    }
    if entry.eoi_maintenance {
        entry.eoi_maintenance = false;
        registers.write(index, entry);
    }
    // As `injection_entry`: the register is not hardware-linked (checked
    // above: a sync writes every linked one with its physical INTID), the
    // SPI is routed here and idle now; its previous instance was written
    // pending, and it is level, forwarded and not active in the model.
    let injectable = intid >= 32
        && signalled.contains(intid)
        && shadow.resident[index].written_pending
        && !irq.edge
        && !irq.active
        && irq.enabled
        && state.group_enabled(irq.group1);
    Some(injectable.then_some((
        index,
        ListEntry {
            intid,
            priority: irq.priority,
            group1: irq.group1,
            state: LrState::Pending,
            physical: None,
            eoi_maintenance: true,
            source: None,
        },
    )))
}

/// The fast path of a hardware-linked interrupt (the guest's timers): its
/// physical interrupt fired, and `show_linked` puts it straight into a list
/// register when the last sync said that is what a sync would do now
/// (`linked_ready`). The model is not touched: the pending instance lives
/// in the register, exactly as a sync would have moved it there. Returns
/// false when the caller must mark it pending in the model and sync.
pub fn show_linked(
    vcpu_intid: u32,
    shadow: &mut ListRegisterShadow,
    registers: &mut impl ListRegisters,
    state: &mut VgicState,
    vcpu: VcpuId,
) -> bool {
    let intid = vcpu_intid;
    if intid >= 32 || shadow.linked_ready & (1 << intid) == 0 {
        return false;
    }
    let entry = shadow
        .linked_entries
        .iter()
        .find(|entry| entry.intid == intid && entry.physical.is_some());
    let Some(&entry) = entry else {
        return false;
    };
    let count = registers.count().min(MAX_LIST_REGISTERS);
    let empty = registers.empty();
    let mut chosen = None;
    for (index, resident) in shadow.resident.iter().enumerate().take(count) {
        if resident.in_use {
            if resident.intid == intid {
                // Its previous instance: only a completed one can be
                // there (the physical interrupt stays active until then).
                if empty & (1 << index) == 0 {
                    return false;
                }
                chosen = Some(index);
                break;
            }
        } else if chosen.is_none() {
            chosen = Some(index);
        }
    }
    // (`chosen` is a register's index: `get_mut` always finds it.)
    let Some((index, resident)) =
        chosen.and_then(|index| Some((index, shadow.resident.get_mut(index)?)))
    else {
        return false;
    };
    if resident.in_use {
        // The completed instance's fold: it is no longer active (a
        // hardware-linked interrupt has no latch to give back).
        state.clear_active(vcpu, intid);
    }
    registers.write(index, entry);
    *resident = Resident {
        in_use: true,
        intid,
        moved_latch: true,
        written_pending: true,
        source: 0,
    };
    true
}

/// Forgets what `vcpu`'s list registers held, as its CPU's registers were
/// emptied without a fold (the vCPU starts afresh): the shadow is empty
/// and no SPI counts as held there any more.
pub fn forget(state: &mut VgicState, vcpu: VcpuId, shadow: &mut ListRegisterShadow) {
    for resident in shadow.resident.iter().filter(|resident| resident.in_use) {
        state.note_resident(vcpu, resident.intid, false);
    }
    *shadow = ListRegisterShadow::new();
}

/// The hardware-linked interrupts a [`fold_all`] took out of the list
/// registers, by the guest's INTID (`VgicState::linked_physical` names
/// each one's physical interrupt).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FoldedLinked {
    intids: [u32; MAX_LIST_REGISTERS],
    count: usize,
}

impl FoldedLinked {
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.intids[..self.count].iter().copied()
    }
}

/// Folds every list register of `vcpu` back into the model and empties
/// them, so that the model alone holds the truth: before a register access
/// that reads or changes pending or active state (ISPENDR, ICACTIVER, ...),
/// which would otherwise miss what sits in the registers. The caller syncs
/// afterwards. Returns the hardware-linked interrupts that were in a
/// register (the guest's INTIDs): their physical interrupt is still
/// active, and if the access leaves one neither pending nor active, the
/// caller must deactivate the physical one too (as a deactivation through
/// the register would have).
pub fn fold_all(
    state: &mut VgicState,
    vcpu: VcpuId,
    shadow: &mut ListRegisterShadow,
    registers: &mut impl ListRegisters,
) -> FoldedLinked {
    let mut linked = FoldedLinked::default();
    let count = registers.count().min(MAX_LIST_REGISTERS);
    for (index, resident) in shadow.resident.iter_mut().enumerate().take(count) {
        if !resident.in_use {
            continue;
        }
        let entry = registers.read(index);
        state.fold(vcpu, *resident, entry.state);
        // At most one per register, so there is always room.
        if entry.physical.is_some()
            && entry.state != LrState::Invalid
            && let Some(slot) = linked.intids.get_mut(linked.count)
        {
            *slot = resident.intid;
            linked.count += 1;
        }
        registers.write(index, ListEntry::EMPTY);
        *resident = Resident::UNUSED;
    }
    shadow.linked_ready = 0;
    linked
}

/// Where the next instance of the hardware-linked `intid` may go without
/// the model being asked: the register its previous instance holds, with
/// the entry to write, while the last sync found it forwarded and nothing
/// waiting outside the registers (`linked_ready`). The physical interrupt
/// cannot fire again before the guest completed that previous instance
/// (it stays active until then), so when it fires the register is the
/// guest's no longer, and the shadow already describes what the new entry
/// holds. The hypervisor's assembly fast path writes it there.
#[must_use]
pub fn linked_slot(shadow: &ListRegisterShadow, intid: u32) -> Option<(usize, ListEntry)> {
    if intid >= 32 || shadow.linked_ready & (1 << intid) == 0 {
        return None;
    }
    let entry = *shadow
        .linked_entries
        .iter()
        .find(|entry| entry.intid == intid && entry.physical.is_some())?;
    let index = shadow
        .resident
        .iter()
        .position(|resident| resident.in_use && resident.intid == intid && resident.moved_latch)?;
    Some((index, entry))
}

/// Where the next instance of a signalled SPI (one of `signalled`, the
/// vdev-shmem vectors: level-sensitive, raised from other CPUs) may go
/// without the model being asked, and the entry to write there: the
/// register its previous instance holds, written pending by the last
/// injection or sync (so the shadow already describes a pending write
/// there), while
///
/// - nothing waited for a register at the last sync (every deliverable
///   interrupt is shown, so showing one more keeps the priority order),
/// - the model has it idle (its line low, no latch), forwarded (enabled,
///   group on) and routed to `vcpu`, not hardware-linked.
///
/// When its line rises, a sync would write exactly this entry into a
/// register; this one is free once the guest completed the previous
/// instance, which the hypervisor's assembly fast path checks
/// (ICH_ELRSR_EL2) before it writes. Every change to the model is
/// followed by a sync or an injection, which recompute this.
#[must_use]
pub fn injection_slot(
    state: &VgicState,
    vcpu: VcpuId,
    shadow: &ListRegisterShadow,
    signalled: &super::state::SpiSet,
) -> Option<(usize, ListEntry)> {
    if shadow.overflow {
        return None;
    }
    shadow
        .resident
        .iter()
        .enumerate()
        .find_map(|(index, resident)| {
            injection_entry(state, vcpu, resident, signalled).map(|entry| (index, entry))
        })
}

/// The entry the injection fast path may write over `resident` (see
/// [`injection_slot`]), if it qualifies.
fn injection_entry(
    state: &VgicState,
    vcpu: VcpuId,
    resident: &Resident,
    signalled: &super::state::SpiSet,
) -> Option<ListEntry> {
    let intid = resident.intid;
    if !resident.in_use
        || resident.moved_latch
        || !resident.written_pending
        || !signalled.contains(intid)
    {
        return None;
    }
    let irq = state.slot(vcpu, intid)?;
    if irq.edge
        || irq.pending()
        || irq.active
        || state.is_hardware_linked(vcpu, intid)
        || state.spi_target(intid) != Some(vcpu)
    {
        return None;
    }
    let entry = state.forwarded_entry(vcpu, intid)?;
    Some(ListEntry {
        state: LrState::Pending,
        eoi_maintenance: true,
        ..entry
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::state::tests::{owned, vcpu};
    use super::super::state::{GicVersion, SpiSet};
    use super::*;

    /// A CPU interface with `count` list registers that plays the guest:
    /// it acknowledges and completes interrupts as the hardware would.
    #[derive(Clone)]
    pub(in crate::vgic) struct FakeRegisters {
        pub(in crate::vgic) entries: Vec<ListEntry>,
        no_pending_maintenance: bool,
        /// Physical INTIDs deactivated through a hardware-linked register.
        pub(in crate::vgic) physically_deactivated: Vec<u32>,
    }

    impl FakeRegisters {
        pub(in crate::vgic) fn new(count: usize) -> Self {
            Self {
                entries: vec![ListEntry::EMPTY; count],
                no_pending_maintenance: false,
                physically_deactivated: Vec::new(),
            }
        }

        /// The guest's acknowledge: the highest-priority pending register
        /// (lowest value; equal priorities, the lowest INTID) becomes
        /// active, as the virtual CPU interface picks it.
        pub(in crate::vgic) fn acknowledge(&mut self) -> Option<ListEntry> {
            let index = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, entry)| entry.state.pending())
                .min_by_key(|(_, entry)| (entry.priority, entry.intid))?
                .0;
            let entry = &mut self.entries[index];
            entry.state = LrState::of(false, true);
            Some(*entry)
        }

        /// The guest's EOI (drop and deactivate) of `intid`.
        pub(in crate::vgic) fn complete(&mut self, intid: u32) {
            let entry = self
                .entries
                .iter_mut()
                .find(|entry| entry.intid == intid && entry.state.active())
                .expect("completing an active interrupt");
            entry.state = LrState::of(entry.state.pending(), false);
            if let Some(physical) = entry.physical {
                self.physically_deactivated.push(physical);
            }
        }

        /// Whether the hardware would raise the maintenance interrupt.
        pub(in crate::vgic) fn maintenance(&self) -> bool {
            let eoi = self
                .entries
                .iter()
                .any(|entry| entry.eoi_maintenance && entry.state == LrState::Invalid);
            let no_pending = !self.entries.iter().any(|entry| entry.state.pending());
            eoi || (self.no_pending_maintenance && no_pending)
        }
    }

    impl ListRegisters for FakeRegisters {
        fn count(&self) -> usize {
            self.entries.len()
        }
        fn read(&self, index: usize) -> ListEntry {
            self.entries[index]
        }
        fn write(&mut self, index: usize, entry: ListEntry) {
            self.entries[index] = entry;
        }
        fn empty(&self) -> u32 {
            self.entries
                .iter()
                .enumerate()
                .filter(|(_, entry)| {
                    entry.state == LrState::Invalid
                        && (entry.physical.is_some() || !entry.eoi_maintenance)
                })
                .fold(0, |mask, (index, _)| mask | 1 << index)
        }
        fn set_no_pending_maintenance(&mut self, enabled: bool) {
            self.no_pending_maintenance = enabled;
        }
    }

    fn enabled(version: GicVersion, vcpus: usize) -> VgicState {
        let mut state = VgicState::new(version, vcpus, owned());
        state.enable_group0 = true;
        state.enable_group1 = true;
        for index in 0..vcpus {
            for intid in 0..32 {
                state.update(vcpu(index), intid, |irq| irq.enabled = true);
            }
        }
        for intid in [33, 40] {
            state.update(vcpu(0), intid, |irq| irq.enabled = true);
        }
        state
    }

    /// Runs the guest until nothing is pending: acknowledge, complete,
    /// and sync whenever the hardware would raise maintenance (and after
    /// each completion when `sync_after_each` — an exit for another
    /// reason). Returns the INTIDs in the order the guest took them.
    fn drain(
        state: &mut VgicState,
        shadow: &mut ListRegisterShadow,
        registers: &mut FakeRegisters,
    ) -> Vec<u32> {
        let mut taken = Vec::new();
        sync(state, vcpu(0), shadow, registers);
        for _ in 0..200 {
            if registers.maintenance() {
                sync(state, vcpu(0), shadow, registers);
            }
            let Some(entry) = registers.acknowledge() else {
                if registers.maintenance() {
                    continue;
                }
                break;
            };
            taken.push(entry.intid);
            registers.complete(entry.intid);
        }
        taken
    }

    #[test]
    fn both_encodings_round_trip() {
        let entries = [
            ListEntry {
                intid: 27,
                priority: 0xA0,
                group1: true,
                state: LrState::Pending,
                physical: Some(27),
                eoi_maintenance: false,
                source: None,
            },
            ListEntry {
                intid: 3,
                priority: 0x08,
                group1: false,
                state: LrState::PendingActive,
                physical: None,
                eoi_maintenance: true,
                source: Some(vcpu(5)),
            },
        ];
        for entry in entries {
            assert_eq!(ListEntry::from_gicv2(entry.to_gicv2()), entry);
            let v3 = ListEntry::from_gicv3(entry.to_gicv3());
            assert_eq!(
                v3,
                ListEntry {
                    source: None,
                    ..entry
                }
            );
        }
        // Field positions the specifications give.
        let timer = entries[0];
        assert_eq!(
            timer.to_gicv3(),
            27 | 27 << 32 | 0xA0 << 48 | 1 << 60 | 1 << 61 | 1 << 62
        );
        assert_eq!(
            timer.to_gicv2(),
            27 | 27 << 10 | (0xA0 >> 3) << 23 | 1 << 28 | 1 << 30 | 1 << 31
        );
        assert_eq!(
            entries[1].to_gicv2(),
            3 | 5 << 10 | 1 << 19 | 1 << 23 | 3 << 28
        );
        assert_eq!(entries[1].to_gicv3(), 3 | 1 << 41 | 0x08 << 48 | 3 << 62);
    }

    #[test]
    fn more_pending_than_registers_all_arrive_in_priority_then_intid_order() {
        let mut state = enabled(GicVersion::V3, 1);
        // Ten interrupts: SGIs, PPIs and an SPI, some sharing a priority.
        let plan = [
            (1, 0x80),
            (2, 0x40),
            (3, 0x40),
            (7, 0xC0),
            (9, 0x20),
            (20, 0x40),
            (23, 0x80),
            (27, 0x10),
            (30, 0x60),
            (33, 0x40),
        ];
        state.spi_routes[1] = 0;
        for (intid, priority) in plan {
            state.update(vcpu(0), intid, |irq| {
                irq.priority = priority;
                irq.pending_latch = true;
            });
        }
        let mut shadow = ListRegisterShadow::new();
        let mut registers = FakeRegisters::new(4);
        let taken = drain(&mut state, &mut shadow, &mut registers);
        assert_eq!(taken, [27, 9, 2, 3, 20, 33, 30, 1, 23, 7]);
        assert!(
            registers
                .entries
                .iter()
                .all(|entry| entry.state == LrState::Invalid)
        );
        assert!(state.pending_for(vcpu(0)).as_slice().is_empty());
        assert!(!registers.maintenance(), "no maintenance storm at the end");
    }

    #[test]
    fn a_higher_priority_interrupt_displaces_a_pending_lower_one() {
        let mut state = enabled(GicVersion::V3, 1);
        for intid in [4, 5] {
            state.update(vcpu(0), intid, |irq| {
                irq.priority = 0x80;
                irq.pending_latch = true;
            });
        }
        let mut shadow = ListRegisterShadow::new();
        let mut registers = FakeRegisters::new(2);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        state.update(vcpu(0), 6, |irq| {
            irq.priority = 0x10;
            irq.pending_latch = true;
        });
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        let held: Vec<u32> = registers.entries.iter().map(|entry| entry.intid).collect();
        assert_eq!(held, [6, 4]);
        assert!(shadow.overflowed());
        let taken = drain(&mut state, &mut shadow, &mut registers);
        assert_eq!(taken, [6, 4, 5], "the displaced one was not lost");
    }

    #[test]
    fn an_active_interrupt_keeps_its_register_and_an_edge_while_active_is_kept() {
        let mut state = enabled(GicVersion::V3, 1);
        state.update(vcpu(0), 20, |irq| {
            irq.edge = true;
            irq.priority = 0x80;
        });
        state.pulse(vcpu(0), 20);
        let mut shadow = ListRegisterShadow::new();
        let mut registers = FakeRegisters::new(1);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert_eq!(registers.acknowledge().map(|entry| entry.intid), Some(20));
        // A second edge arrives while the guest handles the first, and
        // a higher-priority interrupt too; the active one stays put.
        state.pulse(vcpu(0), 20);
        state.update(vcpu(0), 5, |irq| {
            irq.priority = 0x00;
            irq.pending_latch = true;
        });
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert_eq!(registers.entries[0].intid, 20);
        // Its second instance is not shown while the better 5 waits
        // outside: the guest would take it first.
        assert_eq!(registers.entries[0].state, LrState::Active);
        registers.complete(20);
        assert!(registers.maintenance(), "EOI maintenance while 5 waits");
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert_eq!(registers.entries[0].intid, 5, "the better one next");
        let taken = drain(&mut state, &mut shadow, &mut registers);
        assert_eq!(taken, [5, 20], "the second edge is delivered once");
    }

    #[test]
    fn an_edge_while_active_shows_as_active_and_pending_when_nothing_better_waits() {
        let mut state = enabled(GicVersion::V3, 1);
        state.update(vcpu(0), 20, |irq| irq.edge = true);
        state.pulse(vcpu(0), 20);
        let mut shadow = ListRegisterShadow::new();
        let mut registers = FakeRegisters::new(1);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        registers.acknowledge();
        state.pulse(vcpu(0), 20);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert_eq!(registers.entries[0].state, LrState::PendingActive);
        registers.complete(20);
        assert_eq!(registers.acknowledge().map(|entry| entry.intid), Some(20));
        registers.complete(20);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        let irq = state.slot(vcpu(0), 20).unwrap();
        assert!(!irq.pending() && !irq.active);
    }

    #[test]
    fn a_level_interrupt_is_taken_again_while_its_line_stays_high() {
        let mut state = enabled(GicVersion::V3, 1);
        state.spi_routes[1] = 0;
        state.set_line_level(vcpu(0), 33, true);
        let mut shadow = ListRegisterShadow::new();
        let mut registers = FakeRegisters::new(4);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        for _ in 0..3 {
            assert_eq!(registers.acknowledge().map(|entry| entry.intid), Some(33));
            registers.complete(33);
            assert!(
                registers.maintenance(),
                "EOI maintenance for a level interrupt"
            );
            sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        }
        // The guest clears the cause: the device drops its line.
        assert_eq!(registers.acknowledge().map(|entry| entry.intid), Some(33));
        state.set_line_level(vcpu(0), 33, false);
        registers.complete(33);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert_eq!(registers.acknowledge(), None);
        assert!(!registers.maintenance());
    }

    #[test]
    fn a_line_lowered_inside_the_handler_costs_no_maintenance_and_a_new_rise_is_seen() {
        // The vdev-shmem receiver: acknowledge, read status (the line falls,
        // and that change syncs), EOI.
        let mut state = enabled(GicVersion::V3, 1);
        state.spi_routes[1] = 0;
        state.set_line_level(vcpu(0), 33, true);
        let mut shadow = ListRegisterShadow::new();
        let mut registers = FakeRegisters::new(4);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert_eq!(registers.acknowledge().map(|entry| entry.intid), Some(33));
        state.set_line_level(vcpu(0), 33, false);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        registers.complete(33);
        assert!(
            !registers.maintenance(),
            "no EOI maintenance once the line fell"
        );
        // The line rises again: shown pending, and looked at again at its
        // EOI while it stays high.
        assert_eq!(registers.acknowledge(), None);
        state.set_line_level(vcpu(0), 33, true);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert_eq!(registers.acknowledge().map(|entry| entry.intid), Some(33));
        registers.complete(33);
        assert!(registers.maintenance(), "the line is still high");
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert_eq!(registers.acknowledge().map(|entry| entry.intid), Some(33));
    }

    #[test]
    fn a_line_falling_in_the_handler_is_handled_without_a_sync_as_a_sync_would() {
        let setup = || {
            let mut state = enabled(GicVersion::V3, 1);
            state.spi_routes[1] = 0;
            state.set_line_level(vcpu(0), 33, true);
            let mut shadow = ListRegisterShadow::new();
            let mut registers = FakeRegisters::new(4);
            sync(&mut state, vcpu(0), &mut shadow, &mut registers);
            assert_eq!(registers.acknowledge().map(|entry| entry.intid), Some(33));
            state.set_line_level(vcpu(0), 33, false);
            (state, shadow, registers)
        };
        let (mut synced_state, mut synced_shadow, mut synced) = setup();
        sync(&mut synced_state, vcpu(0), &mut synced_shadow, &mut synced);
        let (state, shadow, mut fast) = setup();
        assert!(line_fell_while_active(
            &state,
            vcpu(0),
            33,
            &shadow,
            &mut fast
        ));
        assert_eq!(
            fast.entries, synced.entries,
            "the registers a sync would write"
        );
        fast.complete(33);
        assert!(!fast.maintenance());
        // The next signal: the emptied register is folded and reused, and
        // the guest sees exactly what a sync would show it.
        let (mut state, mut shadow) = (state, shadow);
        state.set_line_level(vcpu(0), 33, true);
        let (mut synced_state, mut synced_shadow, mut synced) =
            (state.clone(), shadow, fast.clone());
        sync(&mut synced_state, vcpu(0), &mut synced_shadow, &mut synced);
        assert!(show_pending_spi(
            &mut state,
            vcpu(0),
            33,
            &mut shadow,
            &mut fast
        ));
        assert_eq!(fast.entries, synced.entries);
        assert_eq!(fast.acknowledge().map(|entry| entry.intid), Some(33));
        // Not while the register still shows it pending (not yet taken),
        // nor for an interrupt in no register.
        let mut state = enabled(GicVersion::V3, 1);
        state.spi_routes[1] = 0;
        state.set_line_level(vcpu(0), 33, true);
        let mut shadow = ListRegisterShadow::new();
        let mut registers = FakeRegisters::new(4);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        state.set_line_level(vcpu(0), 33, false);
        assert!(!line_fell_while_active(
            &state,
            vcpu(0),
            33,
            &shadow,
            &mut registers
        ));
        assert!(!line_fell_while_active(
            &state,
            vcpu(0),
            40,
            &shadow,
            &mut registers
        ));
    }

    /// A 2-vCPU VM whose SPI 33 (level, routed to vCPU 0) has its line high,
    /// and each vCPU's shadow and four list registers, nothing synced yet.
    #[allow(clippy::type_complexity)]
    fn spi_33_high_on_vcpu_0_of_two() -> (
        VgicState,
        (ListRegisterShadow, FakeRegisters),
        (ListRegisterShadow, FakeRegisters),
    ) {
        let mut state = enabled(GicVersion::V3, 2);
        state.spi_routes[1] = 0;
        state.set_line_level(vcpu(0), 33, true);
        (
            state,
            (ListRegisterShadow::new(), FakeRegisters::new(4)),
            (ListRegisterShadow::new(), FakeRegisters::new(4)),
        )
    }

    #[test]
    fn an_spi_routed_away_while_active_is_completed_with_maintenance_and_shown_there_next() {
        let (mut state, (mut shadow0, mut cpu0), (mut shadow1, mut cpu1)) =
            spi_33_high_on_vcpu_0_of_two();
        sync(&mut state, vcpu(0), &mut shadow0, &mut cpu0);
        assert_eq!(cpu0.acknowledge().map(|entry| entry.intid), Some(33));
        // The handler lowers the line; an unrelated exit syncs vCPU 0.
        state.set_line_level(vcpu(0), 33, false);
        sync(&mut state, vcpu(0), &mut shadow0, &mut cpu0);
        // Another vCPU routes it to vCPU 1; vCPU 0 syncs for that.
        state.spi_routes[1] = 1;
        sync(&mut state, vcpu(0), &mut shadow0, &mut cpu0);
        assert!(!line_fell_while_active(
            &state,
            vcpu(0),
            33,
            &shadow0,
            &mut cpu0
        ));
        cpu0.complete(33);
        assert!(cpu0.maintenance(), "its completion is seen at once");
        sync(&mut state, vcpu(0), &mut shadow0, &mut cpu0);
        // The next signal is vCPU 1's.
        state.set_line_level(vcpu(0), 33, true);
        assert!(show_pending_spi(
            &mut state,
            vcpu(1),
            33,
            &mut shadow1,
            &mut cpu1
        ));
        assert_eq!(cpu1.acknowledge().map(|entry| entry.intid), Some(33));
        sync(&mut state, vcpu(0), &mut shadow0, &mut cpu0);
        assert_eq!(cpu0.acknowledge(), None);
    }

    #[test]
    fn a_pending_spi_completed_where_it_was_routed_away_from_is_handed_to_its_new_target() {
        let (mut state, (mut shadow0, mut cpu0), (mut shadow1, mut cpu1)) =
            spi_33_high_on_vcpu_0_of_two();
        sync(&mut state, vcpu(0), &mut shadow0, &mut cpu0);
        assert_eq!(cpu0.acknowledge().map(|entry| entry.intid), Some(33));
        // Routed to vCPU 1 while vCPU 0 handles it (its line stays high):
        // vCPU 0 syncs for the change and keeps the active instance.
        state.spi_routes[1] = 1;
        sync(&mut state, vcpu(0), &mut shadow0, &mut cpu0);
        sync(&mut state, vcpu(1), &mut shadow1, &mut cpu1);
        assert_eq!(cpu1.acknowledge(), None, "active on vCPU 0");
        assert!(state.take_handoffs().is_empty());
        // vCPU 0 completes it (EOI maintenance) and its CPU folds: vCPU 1
        // is named, and its sync shows it.
        cpu0.complete(33);
        assert!(cpu0.maintenance());
        sync(&mut state, vcpu(0), &mut shadow0, &mut cpu0);
        let mut expected = crate::vm::ids::VcpuSet::EMPTY;
        expected.insert(vcpu(1));
        assert_eq!(state.take_handoffs(), expected);
        assert!(state.take_handoffs().is_empty(), "taken once");
        sync(&mut state, vcpu(1), &mut shadow1, &mut cpu1);
        assert_eq!(cpu1.acknowledge().map(|entry| entry.intid), Some(33));
        assert_eq!(cpu0.acknowledge(), None);
        // Completed with its line low: nothing to hand over.
        state.set_line_level(vcpu(0), 33, false);
        cpu1.complete(33);
        sync(&mut state, vcpu(1), &mut shadow1, &mut cpu1);
        assert!(state.take_handoffs().is_empty());
    }

    #[test]
    fn an_spi_held_in_one_vcpus_registers_is_not_shown_on_another_before_that_cpu_folds() {
        for acknowledged in [true, false] {
            let (mut state, (mut shadow0, mut cpu0), (mut shadow1, mut cpu1)) =
                spi_33_high_on_vcpu_0_of_two();
            sync(&mut state, vcpu(0), &mut shadow0, &mut cpu0);
            if acknowledged {
                assert_eq!(cpu0.acknowledge().map(|entry| entry.intid), Some(33));
            }
            // vCPU 1 routes it to itself and its CPU syncs at once; vCPU 0's
            // CPU has not folded yet (it only got a sync request).
            state.spi_routes[1] = 1;
            sync(&mut state, vcpu(1), &mut shadow1, &mut cpu1);
            assert_eq!(
                cpu1.acknowledge(),
                None,
                "still held by vCPU 0 ({acknowledged})"
            );
            // vCPU 0's CPU syncs: an acknowledged instance stays until its
            // completion; one not taken yet leaves at once. Either way the
            // fold that empties the register hands it over.
            sync(&mut state, vcpu(0), &mut shadow0, &mut cpu0);
            if acknowledged {
                assert!(state.take_handoffs().is_empty());
                cpu0.complete(33);
                assert!(cpu0.maintenance());
                sync(&mut state, vcpu(0), &mut shadow0, &mut cpu0);
            }
            let mut expected = crate::vm::ids::VcpuSet::EMPTY;
            expected.insert(vcpu(1));
            assert_eq!(state.take_handoffs(), expected, "({acknowledged})");
            assert_eq!(cpu0.acknowledge(), None);
            sync(&mut state, vcpu(1), &mut shadow1, &mut cpu1);
            assert_eq!(cpu1.acknowledge().map(|entry| entry.intid), Some(33));
        }
    }

    #[test]
    fn a_pending_spi_is_shown_without_a_sync_as_a_sync_would() {
        for level in [true, false] {
            let setup = || {
                let mut state = enabled(GicVersion::V3, 1);
                state.spi_routes[1] = 0;
                state.spi_routes[8] = 0;
                if !level {
                    state.update(vcpu(0), 33, |irq| irq.edge = true);
                }
                // Something shown already: an SGI.
                state.update(vcpu(0), 3, |irq| irq.pending_latch = true);
                let mut shadow = ListRegisterShadow::new();
                let mut registers = FakeRegisters::new(4);
                sync(&mut state, vcpu(0), &mut shadow, &mut registers);
                if level {
                    state.set_line_level(vcpu(0), 33, true);
                } else {
                    state.update(vcpu(0), 33, |irq| irq.pending_latch = true);
                }
                (state, shadow, registers)
            };
            let (mut synced_state, mut synced_shadow, mut synced) = setup();
            sync(&mut synced_state, vcpu(0), &mut synced_shadow, &mut synced);
            let (mut state, mut shadow, mut fast) = setup();
            assert!(show_pending_spi(
                &mut state,
                vcpu(0),
                33,
                &mut shadow,
                &mut fast
            ));
            let shown = |registers: &FakeRegisters| {
                let mut entries: Vec<_> = registers
                    .entries
                    .iter()
                    .filter(|entry| entry.state != LrState::Invalid)
                    .copied()
                    .collect();
                entries.sort_by_key(|entry| entry.intid);
                entries
            };
            assert_eq!(shown(&fast), shown(&synced), "level {level}");
            // The guest takes both, in priority order (equal: INTID), and
            // the model agrees after: a level line still high is shown
            // again, an edge is gone.
            let mut taken = Vec::new();
            for _ in 0..2 {
                let entry = fast.acknowledge().expect("two interrupts shown");
                taken.push(entry.intid);
                fast.complete(entry.intid);
            }
            sync(&mut state, vcpu(0), &mut shadow, &mut fast);
            assert_eq!(taken, [3, 33]);
            assert_eq!(
                fast.acknowledge().map(|entry| entry.intid),
                level.then_some(33)
            );
            // Not for one already in a register, nor one not pending.
            assert!(!show_pending_spi(
                &mut state,
                vcpu(0),
                40,
                &mut shadow,
                &mut fast
            ));
        }
    }

    #[test]
    fn a_line_dropped_before_the_guest_looked_withdraws_the_interrupt() {
        let mut state = enabled(GicVersion::V3, 1);
        state.spi_routes[1] = 0;
        state.set_line_level(vcpu(0), 33, true);
        let mut shadow = ListRegisterShadow::new();
        let mut registers = FakeRegisters::new(4);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        state.set_line_level(vcpu(0), 33, false);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert_eq!(registers.acknowledge(), None);
    }

    #[test]
    fn hardware_linked_interrupts_carry_the_physical_intid_and_no_eoi_maintenance() {
        let mut state = enabled(GicVersion::V3, 1);
        state.set_hardware_ppis(1 << 27);
        state.hardware_fired(vcpu(0), 27);
        let mut shadow = ListRegisterShadow::new();
        let mut registers = FakeRegisters::new(4);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        let entry = registers.entries[0];
        assert_eq!((entry.physical, entry.eoi_maintenance), (Some(27), false));
        assert!(
            !state.slot(vcpu(0), 27).unwrap().pending(),
            "moved into the LR"
        );
        registers.acknowledge();
        registers.complete(27);
        assert_eq!(registers.physically_deactivated, [27]);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        let irq = state.slot(vcpu(0), 27).unwrap();
        assert!(!irq.pending() && !irq.active);
        assert_eq!(registers.entries[0], ListEntry::EMPTY);
    }

    #[test]
    fn a_pending_register_folded_gives_its_instance_back() {
        let mut state = enabled(GicVersion::V2, 2);
        state.send_sgi(vcpu(1), 3, {
            let mut set = crate::vm::ids::VcpuSet::EMPTY;
            set.insert(vcpu(0));
            set
        });
        let mut shadow = ListRegisterShadow::new();
        let mut registers = FakeRegisters::new(4);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert_eq!(registers.entries[0].source, Some(vcpu(1)));
        assert!(!state.slot(vcpu(0), 3).unwrap().pending());
        // Folded unacknowledged (as at a reset of the registers): the
        // model has it pending from vCPU 1 again.
        clear_and_fold(&mut state, &mut shadow, &mut registers);
        let first = state.pending_for(vcpu(0)).as_slice()[0];
        assert_eq!((first.intid, first.source), (3, Some(vcpu(1))));
    }

    fn clear_and_fold(
        state: &mut VgicState,
        shadow: &mut ListRegisterShadow,
        registers: &mut FakeRegisters,
    ) {
        // Disable everything so the sync folds without refilling.
        let (group0, group1) = (state.enable_group0, state.enable_group1);
        state.enable_group0 = false;
        state.enable_group1 = false;
        sync(state, vcpu(0), shadow, registers);
        state.enable_group0 = group0;
        state.enable_group1 = group1;
    }

    #[test]
    fn the_linked_fast_path_agrees_with_a_sync() {
        let mut state = enabled(GicVersion::V3, 1);
        state.set_hardware_ppis(1 << 27);
        state.update(vcpu(0), 27, |irq| {
            irq.priority = 0x40;
            irq.group1 = true;
        });
        let mut shadow = ListRegisterShadow::new();
        let mut registers = FakeRegisters::new(2);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        for _ in 0..3 {
            assert!(show_linked(
                27,
                &mut shadow,
                &mut registers,
                &mut state,
                vcpu(0)
            ));
            let entry = registers.entries[0];
            assert_eq!(
                (entry.intid, entry.physical, entry.priority, entry.group1),
                (27, Some(27), 0x40, true)
            );
            assert_eq!(registers.acknowledge().map(|entry| entry.intid), Some(27));
            registers.complete(27);
        }
        assert_eq!(registers.physically_deactivated, [27, 27, 27]);
        // Disabled by the guest (a register write, then a sync): the fast
        // path declines and the model keeps it.
        state.update(vcpu(0), 27, |irq| irq.enabled = false);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert!(!show_linked(
            27,
            &mut shadow,
            &mut registers,
            &mut state,
            vcpu(0)
        ));
        // With something waiting outside the registers, too.
        state.update(vcpu(0), 27, |irq| irq.enabled = true);
        for intid in [20, 21, 22] {
            state.pulse(vcpu(0), intid);
        }
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert!(!show_linked(
            27,
            &mut shadow,
            &mut registers,
            &mut state,
            vcpu(0)
        ));
    }

    #[test]
    fn a_signalled_spi_written_through_its_injection_slot_is_what_a_sync_would_show() {
        let mut signalled = SpiSet::EMPTY;
        signalled.insert(33);
        let mut state = enabled(GicVersion::V3, 1);
        state.spi_routes[1] = 0;
        state.update(vcpu(0), 33, |irq| {
            irq.priority = 0x50;
            irq.group1 = true;
        });
        let mut shadow = ListRegisterShadow::new();
        let mut registers = FakeRegisters::new(4);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        let slot = |state: &VgicState, shadow: &ListRegisterShadow| {
            injection_slot(state, vcpu(0), shadow, &signalled)
        };
        assert_eq!(slot(&state, &shadow), None, "never shown yet");
        // The first signal takes the ordinary injection.
        state.set_spi_line(33, true);
        assert!(show_pending_spi(
            &mut state,
            vcpu(0),
            33,
            &mut shadow,
            &mut registers
        ));
        assert_eq!(slot(&state, &shadow), None, "pending now");
        // The receiver's handler: acknowledge, the status read lowers the
        // line, EOI.
        let handle = |state: &mut VgicState,
                      shadow: &ListRegisterShadow,
                      registers: &mut FakeRegisters| {
            assert_eq!(registers.acknowledge().map(|entry| entry.intid), Some(33));
            state.set_spi_line(33, false);
            let rearmed =
                line_fell_then_injection_slot(state, vcpu(0), 33, shadow, registers, &signalled)
                    .expect("handled without a sync");
            assert_eq!(
                rearmed,
                injection_slot(state, vcpu(0), shadow, &signalled),
                "with one signalled SPI, the status read re-arms as the whole search would"
            );
            registers.complete(33);
            assert!(!registers.maintenance());
        };
        handle(&mut state, &shadow, &mut registers);
        let (index, entry) = slot(&state, &shadow).expect("armed where it was");
        assert_eq!(
            (entry.intid, entry.priority, entry.group1, entry.state),
            (33, 0x50, true, LrState::Pending)
        );
        for _ in 0..3 {
            // The next signal: the fast path writes the entry, exactly
            // what a sync from the same point writes.
            state.set_spi_line(33, true);
            let (mut synced_state, mut synced_shadow, mut synced) =
                (state.clone(), shadow, registers.clone());
            sync(&mut synced_state, vcpu(0), &mut synced_shadow, &mut synced);
            assert_ne!(registers.empty() & (1 << index), 0, "its register is free");
            registers.write(index, entry);
            assert_eq!(registers.entries, synced.entries);
            handle(&mut state, &shadow, &mut registers);
            assert_eq!(slot(&state, &shadow), Some((index, entry)));
        }
        // A sync folds what the fast path wrote: the model agrees.
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert!(state.is_idle(vcpu(0), 33));
        assert_eq!(slot(&state, &shadow), None, "no longer resident");
        // Never while something waits outside the registers, nor for an SPI
        // disabled, routed elsewhere, not signalled or edge-triggered.
        let armed = || {
            let mut state = enabled(GicVersion::V3, 2);
            state.spi_routes[1] = 0;
            state.set_spi_line(33, true);
            let mut shadow = ListRegisterShadow::new();
            let mut registers = FakeRegisters::new(2);
            sync(&mut state, vcpu(0), &mut shadow, &mut registers);
            handle(&mut state, &shadow, &mut registers);
            assert!(slot(&state, &shadow).is_some());
            (state, shadow, registers)
        };
        let (mut state, mut shadow, mut registers) = armed();
        for intid in [20, 21, 22] {
            state.pulse(vcpu(0), intid);
        }
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert_eq!(slot(&state, &shadow), None, "overflow");
        let (mut state, shadow, _) = armed();
        state.update(vcpu(0), 33, |irq| irq.enabled = false);
        assert_eq!(slot(&state, &shadow), None, "disabled");
        let (mut state, shadow, _) = armed();
        state.spi_routes[1] = 1;
        assert_eq!(slot(&state, &shadow), None, "routed to vCPU 1");
        let (mut state, shadow, _) = armed();
        state.update(vcpu(0), 33, |irq| irq.edge = true);
        assert_eq!(slot(&state, &shadow), None, "edge-triggered");
        let (state, shadow, _) = armed();
        assert_eq!(
            injection_slot(&state, vcpu(0), &shadow, &SpiSet::EMPTY),
            None,
            "not signalled"
        );
    }

    #[test]
    fn a_linked_slot_is_offered_only_where_the_previous_instance_sits() {
        let mut state = enabled(GicVersion::V3, 1);
        state.set_hardware_ppis(1 << 27);
        let mut shadow = ListRegisterShadow::new();
        let mut registers = FakeRegisters::new(2);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert_eq!(linked_slot(&shadow, 27), None, "not resident yet");
        state.pulse(vcpu(0), 20);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert!(show_linked(
            27,
            &mut shadow,
            &mut registers,
            &mut state,
            vcpu(0)
        ));
        let (index, entry) = linked_slot(&shadow, 27).unwrap();
        assert_eq!(registers.entries[index], entry);
        // The guest completes it; the next instance written by the fast
        // path is what the policy would have shown.
        registers.acknowledge();
        registers.complete(20);
        registers.acknowledge();
        registers.complete(27);
        registers.write(index, entry);
        assert_eq!(drain(&mut state, &mut shadow, &mut registers), [27]);
        assert!(!state.slot(vcpu(0), 27).unwrap().pending());
        // Overflowing: none.
        for intid in [20, 21, 22] {
            state.pulse(vcpu(0), intid);
        }
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert_eq!(linked_slot(&shadow, 27), None);
    }

    #[test]
    fn folding_everything_shows_the_model_what_the_registers_held() {
        let mut state = enabled(GicVersion::V3, 1);
        state.set_hardware_ppis(1 << 27);
        state.update(vcpu(0), 20, |irq| {
            irq.edge = true;
            irq.priority = 0x80;
        });
        state.pulse(vcpu(0), 20);
        state.hardware_fired(vcpu(0), 27);
        let mut shadow = ListRegisterShadow::new();
        let mut registers = FakeRegisters::new(4);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert!(!state.slot(vcpu(0), 20).unwrap().pending(), "in a register");
        assert_eq!(registers.acknowledge().map(|entry| entry.intid), Some(27));
        let linked = fold_all(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert_eq!(linked.iter().collect::<Vec<_>>(), [27]);
        assert!(state.slot(vcpu(0), 20).unwrap().pending());
        assert!(state.slot(vcpu(0), 27).unwrap().active);
        assert!(
            registers
                .entries
                .iter()
                .all(|entry| *entry == ListEntry::EMPTY)
        );
        // The guest clears 27's active state by register: the caller sees
        // it is neither pending nor active and deactivates the physical one.
        state.update(vcpu(0), 27, |irq| irq.active = false);
        let irq = state.slot(vcpu(0), 27).unwrap();
        assert!(!irq.pending() && !irq.active);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert_eq!(registers.acknowledge().map(|entry| entry.intid), Some(20));
    }

    #[test]
    fn a_gicv2_sgi_keeps_its_sender_while_active_across_syncs() {
        let mut state = enabled(GicVersion::V2, 2);
        let mut to_zero = crate::vm::ids::VcpuSet::EMPTY;
        to_zero.insert(vcpu(0));
        state.send_sgi(vcpu(1), 3, to_zero);
        let mut shadow = ListRegisterShadow::new();
        let mut registers = FakeRegisters::new(4);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert_eq!(
            registers.acknowledge().map(|entry| entry.source),
            Some(Some(vcpu(1)))
        );
        // Something else arrives: a sync while SGI 3 is active.
        state.pulse(vcpu(0), 20);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        let sgi = registers
            .entries
            .iter()
            .find(|entry| entry.intid == 3)
            .unwrap();
        assert_eq!((sgi.state, sgi.source), (LrState::Active, Some(vcpu(1))));
    }

    #[test]
    fn an_spi_rerouted_while_active_stays_with_the_vcpu_handling_it() {
        let mut state = enabled(GicVersion::V3, 2);
        state.update(vcpu(0), 33, |irq| irq.edge = true);
        state.spi_routes[1] = 0;
        state.pulse(vcpu(0), 33);
        let mut shadows = [ListRegisterShadow::new(), ListRegisterShadow::new()];
        let mut registers = [FakeRegisters::new(4), FakeRegisters::new(4)];
        sync(&mut state, vcpu(0), &mut shadows[0], &mut registers[0]);
        assert_eq!(
            registers[0].acknowledge().map(|entry| entry.intid),
            Some(33)
        );
        // The guest moves it to vCPU 1 while vCPU 0 handles it.
        state.spi_routes[1] = 1;
        sync(&mut state, vcpu(0), &mut shadows[0], &mut registers[0]);
        sync(&mut state, vcpu(1), &mut shadows[1], &mut registers[1]);
        let held = registers[0]
            .entries
            .iter()
            .find(|entry| entry.intid == 33)
            .unwrap();
        assert_eq!(held.state, LrState::Active, "still vCPU 0's to complete");
        assert!(
            registers[1]
                .entries
                .iter()
                .all(|entry| entry.intid != 33 || entry.state == LrState::Invalid)
        );
        registers[0].complete(33);
        sync(&mut state, vcpu(0), &mut shadows[0], &mut registers[0]);
        // The next instance goes where it is routed now.
        state.pulse(vcpu(0), 33);
        sync(&mut state, vcpu(1), &mut shadows[1], &mut registers[1]);
        assert_eq!(
            registers[1].acknowledge().map(|entry| entry.intid),
            Some(33)
        );
    }

    #[test]
    fn registers_that_stay_unused_are_not_written_again() {
        let mut state = enabled(GicVersion::V3, 1);
        state.pulse(vcpu(0), 20);
        let mut shadow = ListRegisterShadow::new();
        let mut registers = FakeRegisters::new(4);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        // Poison the unused ones: a sync that wrote them would clean them.
        registers.entries[2].intid = 999;
        registers.acknowledge();
        registers.complete(20);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert_eq!(
            registers.entries[0],
            ListEntry::EMPTY,
            "the used one is emptied"
        );
        assert_eq!(
            registers.entries[2].intid, 999,
            "unused ones are left alone"
        );
    }

    #[test]
    fn nothing_unowned_or_disabled_reaches_a_register() {
        let mut state = VgicState::new(GicVersion::V3, 1, SpiSet::EMPTY);
        state.enable_group0 = true;
        state.pulse(vcpu(0), 20);
        state.set_line_level(vcpu(0), 33, true);
        let mut shadow = ListRegisterShadow::new();
        let mut registers = FakeRegisters::new(4);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        assert!(
            registers
                .entries
                .iter()
                .all(|entry| *entry == ListEntry::EMPTY)
        );
    }
}
