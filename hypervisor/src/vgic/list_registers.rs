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
//!   pending again at once.
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
}

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
        }
    }

    /// Whether some deliverable interrupt waited for a list register at the
    /// last sync.
    #[must_use]
    pub const fn overflowed(&self) -> bool {
        self.overflow
    }

    /// The INTIDs the list registers hold, register by register.
    pub fn resident_intids(&self) -> impl Iterator<Item = Option<u32>> + '_ {
        self.resident
            .iter()
            .map(|slot| slot.in_use.then_some(slot.intid))
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
    for (index, resident) in shadow.resident.iter_mut().enumerate().take(count) {
        if resident.in_use {
            let now = registers.read(index).state;
            state.fold(vcpu, *resident, now);
            *resident = Resident::UNUSED;
        }
    }
    state.prune_marks(vcpu);
    // What to show: every active interrupt keeps a register; then the
    // pending ones in order, each in its own register if active, else in a
    // free one, until one finds no room. The guest so always sees a prefix
    // of the pending order: never a pending interrupt while a better one
    // waits outside.
    let actives = state.active_for(vcpu);
    let pending = state.pending_for(vcpu);
    let mut plan = [(PendingIrq::NONE, false); MAX_LIST_REGISTERS];
    let mut planned = 0;
    for irq in actives.as_slice().iter().take(count) {
        plan[planned] = (*irq, false);
        planned += 1;
    }
    let mut overflow = actives.as_slice().len() > count;
    for irq in pending.as_slice() {
        if let Some(entry) = plan[..planned]
            .iter_mut()
            .find(|(planned_irq, _)| planned_irq.intid == irq.intid)
        {
            *entry = (*irq, true);
        } else if planned < count {
            plan[planned] = (*irq, true);
            planned += 1;
        } else {
            overflow = true;
            break;
        }
    }
    let mut any_pending = false;
    for (index, &(irq, pending)) in plan.iter().enumerate().take(count) {
        if index >= planned {
            registers.write(index, ListEntry::EMPTY);
            continue;
        }
        let physical = state
            .is_hardware_linked(vcpu, irq.intid)
            .then_some(irq.intid);
        let moved_latch = pending && state.take_pending(vcpu, &irq);
        let level = !moved_latch && physical.is_none();
        any_pending |= pending;
        registers.write(
            index,
            ListEntry {
                intid: irq.intid,
                priority: irq.priority,
                group1: irq.group1,
                state: LrState::of(pending, irq.active),
                physical,
                eoi_maintenance: physical.is_none() && (level || overflow),
                source: if pending { irq.source } else { None },
            },
        );
        shadow.resident[index] = Resident {
            in_use: true,
            intid: irq.intid,
            moved_latch,
            written_pending: pending,
            source: match irq.source {
                Some(source) if pending => source.index() as u8 + 1,
                _ => 0,
            },
        };
    }
    shadow.overflow = overflow;
    registers.set_no_pending_maintenance(overflow && any_pending);
}

/// Empties the list registers without folding them, as when the vCPU's VM
/// resets or stops: nothing they held survives.
pub fn clear(shadow: &mut ListRegisterShadow, registers: &mut impl ListRegisters) {
    for index in 0..registers.count().min(MAX_LIST_REGISTERS) {
        registers.write(index, ListEntry::EMPTY);
    }
    *shadow = ListRegisterShadow::new();
    registers.set_no_pending_maintenance(false);
}

#[cfg(test)]
mod tests {
    use super::super::state::tests::{owned, vcpu};
    use super::super::state::{GicVersion, SpiSet};
    use super::*;

    /// A CPU interface with `count` list registers that plays the guest:
    /// it acknowledges and completes interrupts as the hardware would.
    struct FakeRegisters {
        entries: Vec<ListEntry>,
        no_pending_maintenance: bool,
        /// Physical INTIDs deactivated through a hardware-linked register.
        physically_deactivated: Vec<u32>,
    }

    impl FakeRegisters {
        fn new(count: usize) -> Self {
            Self {
                entries: vec![ListEntry::EMPTY; count],
                no_pending_maintenance: false,
                physically_deactivated: Vec::new(),
            }
        }

        /// The guest's acknowledge: the highest-priority pending register
        /// (lowest value; equal priorities, the lowest INTID) becomes
        /// active, as the virtual CPU interface picks it.
        fn acknowledge(&mut self) -> Option<ListEntry> {
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
        fn complete(&mut self, intid: u32) {
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
        fn maintenance(&self) -> bool {
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
    fn clearing_leaves_nothing_behind() {
        let mut state = enabled(GicVersion::V3, 1);
        state.pulse(vcpu(0), 20);
        let mut shadow = ListRegisterShadow::new();
        let mut registers = FakeRegisters::new(4);
        sync(&mut state, vcpu(0), &mut shadow, &mut registers);
        clear(&mut shadow, &mut registers);
        assert!(
            registers
                .entries
                .iter()
                .all(|entry| *entry == ListEntry::EMPTY)
        );
        assert!(shadow.resident_intids().all(|slot| slot.is_none()));
        assert!(!registers.no_pending_maintenance);
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
