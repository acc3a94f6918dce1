//! One VM's virtual GIC as the hypervisor keeps it: the interrupt model
//! (`state.rs`, read and written by the register files) and, per vCPU,
//! what its CPU's list registers hold. One lock guards both (the VM's
//! `vgic` lock in the lock order, `vm::system`), so a register write, a
//! device's line and a list-register sync never see each other half done.

#![forbid(unsafe_code)]

use super::list_registers::{self, ListRegisterShadow, ListRegisters};
use super::state::{GicVersion, MAX_VCPUS, SpiSet, VgicState};
use crate::vm::ids::VcpuId;

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
    /// injection fast path ([`Self::injection_slot`]).
    signalled: SpiSet,
}

impl VmInterrupts {
    /// The all-zero value (see the type's documentation).
    pub const ZERO: Self = Self {
        state: VgicState::ZERO,
        shadows: [ListRegisterShadow::new(); MAX_VCPUS],
        signalled: SpiSet::EMPTY,
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

    /// The physical interrupt linked to `intid` of `vcpu` fired (and was
    /// left active): shown at once through the fast path when the last sync
    /// allows, else marked pending in the model and synced.
    #[inline]
    pub fn linked_fired(&mut self, vcpu: VcpuId, intid: u32, registers: &mut impl ListRegisters) {
        let Some(shadow) = self.shadows.get_mut(vcpu.index()) else {
            return;
        };
        if list_registers::show_linked(intid, shadow, registers, &mut self.state, vcpu) {
            return;
        }
        let _ = self.state.hardware_fired(vcpu, intid);
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
    }
}

#[cfg(test)]
mod tests {
    use super::super::list_registers::ListEntry;
    use super::super::state::tests::{owned, vcpu};
    use super::*;

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
