//! One VM's virtual GIC as the hypervisor keeps it: the interrupt model
//! (`state.rs`, read and written by the register files) and, per vCPU,
//! what its CPU's list registers hold. One lock guards both (the VM's
//! `vgic` lock in the lock order, `vm::system`), so a register write, a
//! device's line and a list-register sync never see each other half done.

#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use super::list_registers::{self, ListRegisterShadow, ListRegisters};
use super::state::{
    Effects, GicVersion, MAX_VCPUS, SPI_COUNT, SPI_WORDS, SpiSet, VgicState, spi_index,
};
use crate::vm::ids::VcpuId;

/// The lines of a VM's signalled SPIs (its vdev-shmem vectors), kept
/// outside the vGIC's lock so that a peer on another CPU raises one
/// without taking it: the raise is an atomic bit, the doorbell of the CPU
/// the SPI is routed to, and an SGI (docs/ARCHITECTURE.md, "Signalled
/// lines"). The model learns the level when the lock is next taken
/// ([`VmInterrupts::absorb`]); until then a rise is shown, if at all,
/// only by the injection fast path, which writes exactly what a sync
/// after absorbing would.
///
/// Raises and falls of one SPI come from the vdev-shmem model, under its
/// registry lock, so they never race each other; a fall is made under the
/// vGIC's lock (absorbing first) or, on the fast path, by the receiving
/// CPU for an instance its guest is handling.
#[derive(Debug)]
pub struct SignalledLines {
    /// Bit `n` of word `w`: the line of SPI `32 + 32w + n`.
    levels: [AtomicU32; SPI_WORDS],
    /// Per SPI, the vCPU its routing names, plus one (0: none), as of the
    /// last [`VmInterrupts::publish_targets`]: where a raise rings.
    targets: [AtomicU8; SPI_COUNT],
}

impl SignalledLines {
    /// Every line low, no targets.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            levels: [const { AtomicU32::new(0) }; SPI_WORDS],
            targets: [const { AtomicU8::new(0) }; SPI_COUNT],
        }
    }

    /// Raises SPI `intid`'s line; true when it was low. Sequentially
    /// consistent: a CPU that clears the doorbell and then reads the line
    /// sees this rise, or the raiser's doorbell ring finds the doorbell
    /// cleared (see `arch::vectors`).
    #[inline(always)]
    pub fn raise(&self, intid: u32) -> bool {
        let Some(index) = spi_index(intid) else {
            return false;
        };
        let bit = 1 << (index % 32);
        self.levels[index / 32].fetch_or(bit, Ordering::SeqCst) & bit == 0
    }

    /// Lowers SPI `intid`'s line.
    #[inline(always)]
    pub fn lower(&self, intid: u32) {
        if let Some(index) = spi_index(intid) {
            self.levels[index / 32].fetch_and(!(1 << (index % 32)), Ordering::SeqCst);
        }
    }

    /// Whether SPI `intid`'s line is high.
    #[must_use]
    pub fn level(&self, intid: u32) -> bool {
        spi_index(intid).is_some_and(|index| {
            self.levels[index / 32].load(Ordering::SeqCst) & (1 << (index % 32)) != 0
        })
    }

    /// The word of levels that holds SPI `intid`'s (the injection fast
    /// path reads it: the bit is `intid % 32`).
    #[must_use]
    pub fn level_word(&self, intid: u32) -> Option<&AtomicU32> {
        spi_index(intid).map(|index| &self.levels[index / 32])
    }

    /// The vCPU a rise of SPI `intid` rings, as last published. Read after
    /// the raise (sequentially consistent, so not before it: a publish
    /// this misses came after the raise, and the absorb under the
    /// publisher's lock, or the sync it asks for, sees the rise).
    #[inline(always)]
    #[must_use]
    pub fn target(&self, intid: u32) -> Option<VcpuId> {
        let index = spi_index(intid)?;
        let target = self.targets[index].load(Ordering::SeqCst);
        VcpuId::new(usize::from(target).checked_sub(1)?)
    }
}

impl Default for SignalledLines {
    fn default() -> Self {
        Self::new()
    }
}

/// A VM's virtual GIC.
///
/// All zero bytes are a valid (empty) value, [`VmInterrupts::ZERO`]: every
/// field is an integer, a bool, an array of them or `GicVersion`
/// (`repr(u8)`, 0 valid). The hypervisor relies on this to build a VM's
/// vGIC in zeroed heap memory and
/// [`initialise_zeroed`](Self::initialise_zeroed) it in
/// place: the value is several kilobytes, and copying it around at build
/// time cost boot tens of thousands of instructions.
#[derive(Clone, Debug)]
pub struct VmInterrupts {
    pub state: VgicState,
    shadows: [ListRegisterShadow; MAX_VCPUS],
    /// The SPIs other CPUs raise (vdev-shmem vectors), kept ready for the
    /// injection fast path ([`Self::injection_slot`]); their lines are a
    /// [`SignalledLines`].
    signalled: SpiSet,
    /// Which words of `signalled` have any SPI (bit `w` for word `w`), so
    /// that absorbing costs a VM without signalled SPIs one test.
    signalled_words: u8,
    /// The signalled lines as the model last absorbed them.
    absorbed: [u32; SPI_WORDS],
}

const _: () = assert!(SPI_WORDS <= 8, "signalled_words has a bit per word");

impl VmInterrupts {
    /// The all-zero value (see the type's documentation).
    pub const ZERO: Self = Self {
        state: VgicState::ZERO,
        shadows: [ListRegisterShadow::new(); MAX_VCPUS],
        signalled: SpiSet::EMPTY,
        signalled_words: 0,
        absorbed: [0; SPI_WORDS],
    };

    /// Turns [`ZERO`](Self::ZERO) into the reset state `new` describes,
    /// writing only its non-zero fields (see
    /// `VgicState::initialise_zeroed`): only for a value that is all zero.
    pub fn initialise_zeroed(
        &mut self,
        version: GicVersion,
        vcpu_count: usize,
        owned: SpiSet,
        hardware_ppis: u32,
        hardware_spis: SpiSet,
    ) {
        self.state.initialise_zeroed(version, vcpu_count, owned);
        self.state.set_hardware_ppis(hardware_ppis);
        self.state.set_hardware_spis(hardware_spis);
    }

    /// The reset state of a VM with `vcpu_count` vCPUs, owning the SPIs in
    /// `owned`, whose PPIs in the bitmask `hardware_ppis` are linked to the
    /// physical PPIs of its CPUs (timers, PMU).
    #[must_use]
    pub fn new(version: GicVersion, vcpu_count: usize, owned: SpiSet, hardware_ppis: u32) -> Self {
        let mut interrupts = Self::ZERO;
        interrupts.initialise_zeroed(version, vcpu_count, owned, hardware_ppis, SpiSet::EMPTY);
        interrupts
    }

    /// Brings `vcpu`'s list registers (on the calling CPU, which runs it)
    /// in step with the model.
    pub fn sync(&mut self, vcpu: VcpuId, registers: &mut impl ListRegisters) {
        if let Some(shadow) = self.shadows.get_mut(vcpu.index()) {
            list_registers::sync(&mut self.state, vcpu, shadow, registers);
        }
    }

    /// The physical interrupt `physical`, linked to the PPI `intid` of
    /// `vcpu`, fired (and was left active): shown at once through the fast
    /// path when the last sync allows and prepared an entry naming that
    /// physical interrupt, else marked pending in the model (which now
    /// links it to `physical`, see `VgicState::linked_fired_from`) and
    /// synced.
    #[inline]
    pub fn linked_fired(
        &mut self,
        vcpu: VcpuId,
        intid: u32,
        physical: u32,
        registers: &mut impl ListRegisters,
    ) {
        let Some(shadow) = self.shadows.get_mut(vcpu.index()) else {
            return;
        };
        if self.state.linked_physical(vcpu, intid) == Some(physical)
            && list_registers::show_linked(intid, shadow, registers, &mut self.state, vcpu)
        {
            return;
        }
        let _ = self.state.linked_fired_from(vcpu, intid, physical);
        list_registers::sync(&mut self.state, vcpu, shadow, registers);
    }

    /// See `list_registers::show_pending_spi`; a full sync when it cannot.
    pub fn show_pending_spi(
        &mut self,
        vcpu: VcpuId,
        intid: u32,
        registers: &mut impl ListRegisters,
    ) {
        if let Some(shadow) = self.shadows.get_mut(vcpu.index())
            && !list_registers::show_pending_spi(&mut self.state, vcpu, intid, shadow, registers)
        {
            list_registers::sync(&mut self.state, vcpu, shadow, registers);
        }
    }

    /// See `list_registers::line_fell_then_injection_slot`, for this VM's
    /// signalled SPIs.
    pub fn line_fell_then_injection_slot(
        &mut self,
        vcpu: VcpuId,
        intid: u32,
        registers: &mut impl ListRegisters,
    ) -> Option<Option<(usize, super::list_registers::ListEntry)>> {
        list_registers::line_fell_then_injection_slot(
            &self.state,
            vcpu,
            intid,
            self.shadows.get(vcpu.index())?,
            registers,
            &self.signalled,
        )
    }

    /// See `list_registers::fold_all`.
    pub fn fold_all(
        &mut self,
        vcpu: VcpuId,
        registers: &mut impl ListRegisters,
    ) -> list_registers::FoldedLinked {
        match self.shadows.get_mut(vcpu.index()) {
            Some(shadow) => list_registers::fold_all(&mut self.state, vcpu, shadow, registers),
            None => list_registers::FoldedLinked::default(),
        }
    }

    /// Whether `intid` of `vcpu` is neither pending nor active in the
    /// model.
    #[must_use]
    pub fn is_idle(&self, vcpu: VcpuId, intid: u32) -> bool {
        self.state.is_idle(vcpu, intid)
    }

    /// Names the SPIs other CPUs raise (kept across resets).
    pub fn set_signalled_spis(&mut self, spis: SpiSet) {
        self.signalled = spis;
        self.signalled_words = (0..SPI_WORDS)
            .filter(|&word| spis.word(word) != 0)
            .fold(0, |words, word| words | 1 << word);
    }

    /// Brings the model's lines of the signalled SPIs in step with
    /// `lines`: every rise and fall made since the last call reaches the
    /// model, as if made under the lock. Called first thing whenever the
    /// lock is taken, so nothing under it sees a line older than the lock.
    ///
    /// What the changes concern is not acted on here: a rise is delivered
    /// by its raiser's doorbell or request, which the CPU it rings serves
    /// after absorbing; a fall absorbed here was made on the receiver's
    /// fast path, which left its list register as a sync would.
    #[inline(always)]
    pub fn absorb(&mut self, lines: &SignalledLines) {
        if self.signalled_words != 0 {
            self.absorb_words(lines);
        }
    }

    fn absorb_words(&mut self, lines: &SignalledLines) {
        for word in 0..SPI_WORDS {
            if self.signalled_words & (1 << word) == 0 {
                continue;
            }
            let now = lines.levels[word].load(Ordering::SeqCst) & self.signalled.word(word);
            let mut changed = now ^ self.absorbed[word];
            self.absorbed[word] = now;
            while changed != 0 {
                let bit = changed.trailing_zeros();
                changed &= changed - 1;
                let intid = super::state::SPI_BASE + word as u32 * 32 + bit;
                let _ = self.state.set_spi_line(intid, now & (1 << bit) != 0);
            }
        }
    }

    /// Lowers signalled SPI `intid`'s line in `lines` and in the model
    /// (already absorbed: the lock was taken), returning what the fall
    /// concerns.
    pub fn lower_signalled(&mut self, lines: &SignalledLines, intid: u32) -> Effects {
        lines.lower(intid);
        if let Some(index) = spi_index(intid) {
            self.absorbed[index / 32] &= !(1 << (index % 32));
        }
        self.state.set_spi_line(intid, false)
    }

    /// Tells `lines` where a rise of each signalled SPI should ring: the
    /// vCPU its routing names now. After every change to the routing (and
    /// at build and reset); a raiser that read the old target rings a CPU
    /// that forwards it (`interrupts::guest::show_injected`).
    pub fn publish_targets(&self, lines: &SignalledLines) {
        for intid in self.signalled.iter() {
            if let Some(index) = spi_index(intid) {
                let target = self
                    .state
                    .spi_target(intid)
                    .map_or(0, |vcpu| vcpu.index() as u8 + 1);
                lines.targets[index].store(target, Ordering::SeqCst);
            }
        }
    }

    /// See `list_registers::injection_slot`: where the next instance of a
    /// signalled SPI may go at once, its INTID and the entry to write.
    #[must_use]
    pub fn injection_slot(
        &self,
        vcpu: VcpuId,
    ) -> Option<(usize, super::list_registers::ListEntry)> {
        list_registers::injection_slot(
            &self.state,
            vcpu,
            self.shadows.get(vcpu.index())?,
            &self.signalled,
        )
    }

    /// See `list_registers::linked_slot`.
    #[must_use]
    pub fn linked_slot(
        &self,
        vcpu: VcpuId,
        intid: u32,
    ) -> Option<(usize, super::list_registers::ListEntry)> {
        list_registers::linked_slot(self.shadows.get(vcpu.index())?, intid)
    }

    /// Forgets what `vcpu`'s list registers held, as it starts on a CPU
    /// whose registers were just emptied (`VirtualInterface::reset`):
    /// nothing of an earlier run is shown to it.
    pub fn forget_list_registers(&mut self, vcpu: VcpuId) {
        if let Some(shadow) = self.shadows.get_mut(vcpu.index()) {
            list_registers::forget(&mut self.state, vcpu, shadow);
        }
    }

    /// Returns the whole model to its reset state, as when the VM resets;
    /// called while none of its vCPUs runs (each clears its registers when
    /// it starts again).
    pub fn reset(&mut self) {
        let (version, vcpu_count, owned) = (
            self.state.version(),
            self.state.vcpu_count(),
            self.state.owned,
        );
        // The hardware-linked PPIs and SPIs are kept by the model's reset.
        self.state.reset_in_place(version, vcpu_count, owned);
        self.shadows = [ListRegisterShadow::new(); MAX_VCPUS];
        // The model's lines are low again; the next absorb raises those
        // the devices still drive high.
        self.absorbed = [0; SPI_WORDS];
    }
}

#[cfg(test)]
mod tests {
    use super::super::list_registers::tests::FakeRegisters;
    use super::super::list_registers::{ListEntry, LrState};
    use super::super::state::tests::{owned, vcpu};
    use super::*;

    /// One vCPU, SPI 33 signalled: level, enabled, group 1, priority
    /// 0x50, routed to vCPU 0; its targets published.
    fn signalled_vm() -> (VmInterrupts, SignalledLines, FakeRegisters) {
        let mut vgic = VmInterrupts::new(GicVersion::V3, 1, owned(), 0);
        vgic.state.enable_group1 = true;
        let _ = vgic.state.update(vcpu(0), 33, |irq| {
            irq.enabled = true;
            irq.group1 = true;
            irq.priority = 0x50;
        });
        let mut signalled = SpiSet::EMPTY;
        signalled.insert(33);
        vgic.set_signalled_spis(signalled);
        let lines = SignalledLines::new();
        vgic.publish_targets(&lines);
        (vgic, lines, FakeRegisters::new(4))
    }

    /// What the model and registers become from here if the lock is taken
    /// now (absorbing) and the vCPU synced.
    fn synced(
        vgic: &VmInterrupts,
        lines: &SignalledLines,
        registers: &FakeRegisters,
    ) -> Vec<ListEntry> {
        let (mut vgic, mut registers) = (vgic.clone(), registers.clone());
        vgic.absorb(lines);
        vgic.sync(vcpu(0), &mut registers);
        registers.entries
    }

    #[test]
    fn rises_and_falls_the_model_absorbs_late_agree_with_the_fast_paths() {
        let (mut vgic, lines, mut registers) = signalled_vm();
        assert_eq!(lines.target(33), Some(vcpu(0)));
        vgic.sync(vcpu(0), &mut registers);
        // The first signal: the receiving CPU's lock absorbs the rise and
        // shows it (`show_injected`); the guest takes it, and its status
        // read lowers the line under the lock, which arms the fast path.
        assert!(lines.raise(33));
        assert!(!lines.raise(33), "already high");
        vgic.absorb(&lines);
        assert!(!vgic.is_idle(vcpu(0), 33));
        vgic.show_pending_spi(vcpu(0), 33, &mut registers);
        assert_eq!(registers.acknowledge().map(|entry| entry.intid), Some(33));
        vgic.absorb(&lines);
        let _ = vgic.lower_signalled(&lines, 33);
        assert!(!lines.level(33));
        let (index, entry) = vgic
            .line_fell_then_injection_slot(vcpu(0), 33, &mut registers)
            .flatten()
            .expect("armed by the status read");
        registers.complete(33);
        assert!(!registers.maintenance());
        for _ in 0..3 {
            // A peer's rise: only the bit and the doorbell; the assembly
            // finds the line high and its register free, and writes the
            // armed entry: what a sync after absorbing shows.
            assert!(lines.raise(33));
            let expected = synced(&vgic, &lines, &registers);
            assert!(lines.level(33));
            assert_ne!(registers.empty() & (1 << index), 0);
            registers.write(index, entry);
            assert_eq!(registers.entries, expected);
            // The guest takes it; its status read lowers the line on the
            // fast path (the register holds the armed entry, active):
            // the register's EOI maintenance goes, as a sync after
            // absorbing the fall would leave it.
            assert_eq!(registers.acknowledge().map(|entry| entry.intid), Some(33));
            let handled = registers.read(index);
            assert_eq!(
                handled,
                ListEntry {
                    state: LrState::Active,
                    ..entry
                }
            );
            lines.lower(33);
            registers.write(
                index,
                ListEntry {
                    eoi_maintenance: false,
                    ..handled
                },
            );
            assert_eq!(registers.entries, synced(&vgic, &lines, &registers));
            registers.complete(33);
            assert!(!registers.maintenance(), "no exit at the EOI");
            // The model never saw either; the arming still stands.
            assert_eq!(vgic.injection_slot(vcpu(0)), Some((index, entry)));
        }
        // A rise whose line fell again before its doorbell was taken (a
        // stale ring). The assembly reads the line after taking the
        // doorbell and writes nothing when it is low (what it does is
        // proven end to end, not here). What this shows is why the check
        // matters and that the model is right either way: after the
        // absorb and the fall nothing is to be shown, and an instance
        // written regardless would be withdrawn by the next sync.
        assert!(lines.raise(33));
        vgic.absorb(&lines);
        let _ = vgic.lower_signalled(&lines, 33);
        assert!(!lines.level(33));
        assert!(vgic.is_idle(vcpu(0), 33));
        assert!(
            synced(&vgic, &lines, &registers)
                .iter()
                .all(|entry| !entry.state.pending())
        );
        let mut written = registers.clone();
        written.write(index, entry);
        assert!(
            !synced(&vgic, &lines, &written)
                .iter()
                .any(|entry| entry.intid == 33 && entry.state.pending()),
            "a sync withdraws an instance written for a low line"
        );
        // Folded at last, the model agrees with all of it.
        vgic.absorb(&lines);
        vgic.sync(vcpu(0), &mut registers);
        assert!(vgic.is_idle(vcpu(0), 33));
    }

    #[test]
    fn a_line_still_high_across_a_reset_is_absorbed_again() {
        let (mut vgic, lines, _) = signalled_vm();
        assert!(lines.raise(33));
        vgic.absorb(&lines);
        assert!(!vgic.is_idle(vcpu(0), 33));
        vgic.reset();
        assert!(vgic.is_idle(vcpu(0), 33), "the model's line is low again");
        vgic.absorb(&lines);
        let _ = vgic.state.update(vcpu(0), 33, |irq| irq.enabled = true);
        assert!(!vgic.is_idle(vcpu(0), 33), "the device still drives it");
    }

    #[test]
    fn targets_follow_the_routing_and_only_signalled_lines_are_absorbed() {
        let mut vgic = VmInterrupts::new(GicVersion::V3, 2, owned(), 0);
        let mut signalled = SpiSet::EMPTY;
        signalled.insert(33);
        vgic.set_signalled_spis(signalled);
        let lines = SignalledLines::new();
        vgic.publish_targets(&lines);
        assert_eq!(lines.target(33), Some(vcpu(0)), "reset routing: vCPU 0");
        assert_eq!(lines.target(40), None, "not signalled: never published");
        let _ = vgic.state.distributor_write(
            vcpu(0),
            0x6108,
            tessera_vdevs::AccessWidth::DoubleWord,
            1,
        );
        vgic.publish_targets(&lines);
        assert_eq!(lines.target(33), Some(vcpu(1)));
        // Routed to a vCPU the VM does not have: nowhere.
        let _ = vgic.state.distributor_write(
            vcpu(0),
            0x6108,
            tessera_vdevs::AccessWidth::DoubleWord,
            7,
        );
        vgic.publish_targets(&lines);
        assert_eq!(lines.target(33), None);
        // A bit set for an SPI that is not signalled is not the model's
        // line.
        assert!(lines.raise(40));
        vgic.absorb(&lines);
        assert!(vgic.is_idle(vcpu(0), 40));
    }

    struct Registers([ListEntry; 4]);

    impl ListRegisters for Registers {
        fn count(&self) -> usize {
            4
        }
        fn read(&self, index: usize) -> ListEntry {
            self.0[index]
        }
        fn write(&mut self, index: usize, entry: ListEntry) {
            self.0[index] = entry;
        }
        fn empty(&self) -> u32 {
            0
        }
        fn set_no_pending_maintenance(&mut self, _enabled: bool) {}
    }

    /// The BCM2711's PMU overflow comes as an SPI per core, linked to the
    /// guest's PPI 23 beside the physical PPI 23 (QEMU's raspi4b): the
    /// list register names the physical interrupt that fired, so the
    /// guest's deactivation ends that one, and the fast path, prepared for
    /// the other, is not taken for it.
    #[test]
    fn a_ppi_raised_by_an_spi_names_that_spi_in_its_list_register() {
        let mut vgic = VmInterrupts::new(GicVersion::V2, 2, owned(), 1 << 23 | 1 << 27);
        vgic.state.enable_group0 = true;
        for vcpu_index in 0..2 {
            for intid in [23, 27] {
                let _ = vgic
                    .state
                    .update(vcpu(vcpu_index), intid, |irq| irq.enabled = true);
            }
        }
        let mut registers = FakeRegisters::new(4);
        vgic.sync(vcpu(1), &mut registers);
        assert_eq!(vgic.state.linked_physical(vcpu(1), 23), Some(23));
        for _ in 0..2 {
            vgic.linked_fired(vcpu(1), 23, 49, &mut registers);
            let entry = registers.entries[0];
            assert_eq!(
                (entry.intid, entry.physical, entry.state),
                (23, Some(49), LrState::Pending)
            );
            assert_eq!(registers.acknowledge().map(|entry| entry.intid), Some(23));
            registers.complete(23);
            assert_eq!(registers.physically_deactivated.last(), Some(&49));
            vgic.sync(vcpu(1), &mut registers);
            assert!(vgic.is_idle(vcpu(1), 23));
        }
        assert_eq!(registers.physically_deactivated, [49, 49]);
        // Only that vCPU's PMU PPI: its timer and the other vCPU's PMU
        // keep their own numbers, and the timer firing (through the
        // model, as when the fast path declines) while the SPI's instance
        // is still active leaves that instance naming the SPI.
        assert_eq!(vgic.state.linked_physical(vcpu(0), 23), Some(23));
        assert_eq!(vgic.state.linked_physical(vcpu(1), 27), Some(27));
        vgic.linked_fired(vcpu(1), 23, 49, &mut registers);
        assert_eq!(registers.acknowledge().map(|entry| entry.intid), Some(23));
        let _ = vgic.state.linked_fired_from(vcpu(1), 27, 27);
        vgic.sync(vcpu(1), &mut registers);
        assert_eq!(registers.acknowledge().map(|entry| entry.intid), Some(27));
        registers.complete(27);
        registers.complete(23);
        assert_eq!(registers.physically_deactivated, [49, 49, 27, 49]);
        vgic.sync(vcpu(1), &mut registers);
        assert!(vgic.is_idle(vcpu(1), 23) && vgic.is_idle(vcpu(1), 27));
        // The PPI itself raising it again names the PPI.
        vgic.linked_fired(vcpu(1), 23, 23, &mut registers);
        let shown = registers.acknowledge().expect("PPI 23 shown");
        assert_eq!((shown.intid, shown.physical), (23, Some(23)));
        registers.complete(23);
        assert_eq!(registers.physically_deactivated, [49, 49, 27, 49, 23]);
        // A reset forgets the SPI.
        vgic.linked_fired(vcpu(1), 23, 49, &mut registers);
        vgic.reset();
        assert_eq!(vgic.state.linked_physical(vcpu(1), 23), Some(23));
        // An interrupt that is not a linked PPI is not linked by firing.
        let _ = vgic.state.linked_fired_from(vcpu(1), 26, 49);
        let _ = vgic.state.linked_fired_from(vcpu(1), 40, 49);
        assert_eq!(vgic.state.linked_physical(vcpu(1), 26), None);
        assert_eq!(vgic.state.linked_physical(vcpu(1), 40), None);
        assert!(vgic.is_idle(vcpu(1), 26) && vgic.is_idle(vcpu(1), 40));
    }

    #[test]
    fn a_reset_forgets_every_interrupt_but_keeps_what_the_vm_owns() {
        let mut vgic = VmInterrupts::new(GicVersion::V3, 2, owned(), 1 << 27);
        vgic.state.enable_group0 = true;
        let _ = vgic.state.update(vcpu(0), 27, |irq| irq.enabled = true);
        let _ = vgic.state.hardware_fired(vcpu(0), 27);
        let mut registers = Registers([ListEntry::EMPTY; 4]);
        vgic.sync(vcpu(0), &mut registers);
        assert_eq!(registers.0[0].physical, Some(27));
        vgic.reset();
        assert!(vgic.state.pending_for(vcpu(0)).as_slice().is_empty());
        assert!(vgic.state.owned.contains(33));
        assert!(vgic.state.is_hardware_linked(vcpu(1), 27));
        vgic.forget_list_registers(vcpu(0));
        registers.0 = [ListEntry::EMPTY; 4];
        vgic.sync(vcpu(0), &mut registers);
        assert!(registers.0.iter().all(|entry| *entry == ListEntry::EMPTY));
    }
}
