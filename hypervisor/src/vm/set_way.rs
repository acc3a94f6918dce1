//! Guest cache maintenance by set/way (`DC ISW`, `DC CSW`, `DC CISW`).
//!
//! Set/way operations act on one CPU's own caches, line slot by line slot;
//! they cannot clean a VM's memory out of the caches of the other CPUs it
//! shares them with, nor follow a vCPU that moved. A guest uses them for one
//! thing in practice: to push everything to memory before it turns its
//! caches off (a boot loader before it starts a kernel), or after it turned
//! them on. So Tessera traps them (HCR_EL2.TSW) and follows the policy
//! KVM documents:
//!
//! - The first set/way operation cleans and invalidates the VM's whole RAM
//!   by address, to the point of coherency, and starts trapping writes to
//!   the EL1 virtual-memory control registers (HCR_EL2.TVM), so that the
//!   hypervisor sees the guest turn its caches on or off. Later set/way
//!   operations while trapping do nothing more.
//! - While trapping, a write to SCTLR_EL1 that turns the guest's caches on
//!   or off cleans and invalidates its RAM again; and any trapped write made
//!   with the caches on ends the trapping (the guest's set/way work is
//!   over), so a guest that cleans by set/way with its caches on does not
//!   trap every later TTBR write.
//!
//! This module is the decision; the hypervisor carries it out.

use crate::traps::guest_exit::SystemRegisterEncoding;

/// SCTLR_EL1.M and SCTLR_EL1.C both set: the guest's data accesses are
/// cacheable (with either clear, its EL1&0 data accesses are not).
#[must_use]
pub const fn caches_enabled(sctlr: u64) -> bool {
    const MMU: u64 = 1 << 0;
    const DATA_CACHE: u64 = 1 << 2;
    sctlr & (MMU | DATA_CACHE) == MMU | DATA_CACHE
}

/// What the hypervisor must do after an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// Clean and invalidate the VM's RAM to the point of coherency.
    pub clean_guest_ram: bool,
    /// Whether writes to the virtual-memory control registers are to be
    /// trapped from now on (HCR_EL2.TVM).
    pub trap_vm_registers: bool,
}

/// One vCPU's set/way state: whether its virtual-memory control register
/// writes are being trapped. A vCPU starts untrapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetWayTracker {
    pub trapping_vm_registers: bool,
}

impl SetWayTracker {
    /// The guest issued a set/way operation.
    pub fn set_way_operation(&mut self) -> Response {
        let first = !self.trapping_vm_registers;
        self.trapping_vm_registers = true;
        Response {
            clean_guest_ram: first,
            trap_vm_registers: true,
        }
    }

    /// The guest wrote one of its virtual-memory control registers
    /// (trapped, so only while trapping): `old` is SCTLR_EL1 before the
    /// write, `new` after it (the same unless SCTLR_EL1 was written).
    pub fn register_written(&mut self, old: u64, new: u64) -> Response {
        let now_enabled = caches_enabled(new);
        let toggled = caches_enabled(old) != now_enabled;
        if now_enabled {
            self.trapping_vm_registers = false;
        }
        Response {
            clean_guest_ram: toggled,
            trap_vm_registers: self.trapping_vm_registers,
        }
    }
}

/// The set/way cache operations HCR_EL2.TSW traps, as system instructions
/// (op0 = 1, op1 = 0, CRn = 7; CRm 6 invalidate, 10 clean, 14 clean and
/// invalidate): the data cache ones (op2 = 2) and, on cores with memory
/// tagging, the tag ones (op2 = 4, and 6 for data and tags).
#[must_use]
pub const fn is_set_way_operation(encoding: SystemRegisterEncoding) -> bool {
    encoding.op0 == 1
        && encoding.op1 == 0
        && encoding.crn == 7
        && matches!(encoding.op2, 2 | 4 | 6)
        && matches!(encoding.crm, 6 | 10 | 14)
}

/// The EL1 registers whose writes HCR_EL2.TVM traps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtualMemoryRegister {
    SystemControl,
    TranslationTableBase0,
    TranslationTableBase1,
    TranslationControl,
    AuxiliaryFaultStatus0,
    AuxiliaryFaultStatus1,
    ExceptionSyndrome,
    FaultAddress,
    MemoryAttributeIndirection,
    AuxiliaryMemoryAttributeIndirection,
    ContextId,
}

impl VirtualMemoryRegister {
    /// The register an MSR names, if it is one TVM traps.
    #[must_use]
    pub const fn from_encoding(encoding: SystemRegisterEncoding) -> Option<Self> {
        if encoding.op0 != 3 || encoding.op1 != 0 {
            return None;
        }
        Some(match (encoding.crn, encoding.crm, encoding.op2) {
            (1, 0, 0) => Self::SystemControl,
            (2, 0, 0) => Self::TranslationTableBase0,
            (2, 0, 1) => Self::TranslationTableBase1,
            (2, 0, 2) => Self::TranslationControl,
            (5, 1, 0) => Self::AuxiliaryFaultStatus0,
            (5, 1, 1) => Self::AuxiliaryFaultStatus1,
            (5, 2, 0) => Self::ExceptionSyndrome,
            (6, 0, 0) => Self::FaultAddress,
            (10, 2, 0) => Self::MemoryAttributeIndirection,
            (10, 3, 0) => Self::AuxiliaryMemoryAttributeIndirection,
            (13, 0, 1) => Self::ContextId,
            _ => return None,
        })
    }
}

/// Whether an MSR names one of the registers later architecture extensions
/// added to those TVM traps, which Tessera does not emulate: SCTLR2_EL1,
/// TCR2_EL1, MAIR2_EL1, PIRE0_EL1, PIR_EL1, POR_EL1 and AMAIR2_EL1. (None
/// exists on the cores Tessera runs on today; a write to one while TVM is
/// on would otherwise be lost.)
#[must_use]
pub const fn is_unemulated_virtual_memory_register(encoding: SystemRegisterEncoding) -> bool {
    encoding.op0 == 3
        && encoding.op1 == 0
        && matches!(
            (encoding.crn, encoding.crm, encoding.op2),
            (1, 0, 3) | (2, 0, 3) | (10, 2, 1..=4) | (10, 3, 1)
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SCTLR_EL1 reset value (MMU and caches off), and with M and C set.
    const OFF: u64 = 0x30D0_0800;
    const ON: u64 = OFF | 0b101;

    fn encoding(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> SystemRegisterEncoding {
        SystemRegisterEncoding {
            op0,
            op1,
            crn,
            crm,
            op2,
        }
    }

    #[test]
    fn caches_count_as_on_only_with_both_mmu_and_data_cache() {
        assert!(!caches_enabled(OFF));
        assert!(!caches_enabled(OFF | 1));
        assert!(!caches_enabled(OFF | 4));
        assert!(caches_enabled(ON));
    }

    #[test]
    fn the_first_set_way_operation_cleans_and_starts_trapping() {
        let mut tracker = SetWayTracker::default();
        assert_eq!(
            tracker.set_way_operation(),
            Response {
                clean_guest_ram: true,
                trap_vm_registers: true
            }
        );
        // The rest of the guest's loop (thousands of operations) costs
        // nothing more.
        for _ in 0..3 {
            assert_eq!(
                tracker.set_way_operation(),
                Response {
                    clean_guest_ram: false,
                    trap_vm_registers: true
                }
            );
        }
    }

    #[test]
    fn a_boot_loader_turning_its_caches_off_gets_its_ram_cleaned() {
        // Caches on, set/way clean, then caches off (U-Boot before a kernel).
        let mut tracker = SetWayTracker::default();
        tracker.set_way_operation();
        assert_eq!(
            tracker.register_written(ON, OFF),
            Response {
                clean_guest_ram: true,
                trap_vm_registers: true
            }
        );
        // A write that changes something else cleans nothing.
        assert_eq!(
            tracker.register_written(OFF, OFF | (1 << 12)),
            Response {
                clean_guest_ram: false,
                trap_vm_registers: true
            }
        );
    }

    #[test]
    fn turning_caches_on_cleans_once_more_and_ends_the_trapping() {
        let mut tracker = SetWayTracker::default();
        tracker.set_way_operation();
        assert_eq!(
            tracker.register_written(OFF, ON),
            Response {
                clean_guest_ram: true,
                trap_vm_registers: false
            }
        );
        assert!(!tracker.trapping_vm_registers);
        // The next set/way operation starts over.
        assert!(tracker.set_way_operation().clean_guest_ram);
    }

    #[test]
    fn cleaning_by_set_way_with_caches_on_stops_trapping_at_the_next_register_write() {
        let mut tracker = SetWayTracker::default();
        tracker.set_way_operation();
        // A TTBR0 write (SCTLR unchanged, caches on): nothing to clean, and
        // the trapping ends rather than costing every context switch.
        assert_eq!(
            tracker.register_written(ON, ON),
            Response {
                clean_guest_ram: false,
                trap_vm_registers: false
            }
        );
        assert!(tracker.set_way_operation().clean_guest_ram);
        // With caches off, writes keep it trapping.
        let mut tracker = SetWayTracker::default();
        tracker.set_way_operation();
        assert!(tracker.register_written(OFF, OFF).trap_vm_registers);
    }

    #[test]
    fn set_way_instructions_are_recognised_and_nothing_else() {
        for crm in [6, 10, 14] {
            for op2 in [2, 4, 6] {
                assert!(is_set_way_operation(encoding(1, 0, 7, crm, op2)));
            }
        }
        // DC CIVAC (CRm 14, op1 3, op2 1) and DC IVAC (CRm 6, op2 1) are by
        // address, not set/way.
        assert!(!is_set_way_operation(encoding(1, 3, 7, 14, 1)));
        assert!(!is_set_way_operation(encoding(1, 0, 7, 6, 1)));
        // MRS/MSR space.
        assert!(!is_set_way_operation(encoding(3, 0, 7, 6, 2)));
    }

    #[test]
    fn the_registers_tvm_traps_are_decoded_from_their_encodings() {
        use VirtualMemoryRegister as R;
        let cases = [
            ((1, 0, 0), R::SystemControl),
            ((2, 0, 0), R::TranslationTableBase0),
            ((2, 0, 1), R::TranslationTableBase1),
            ((2, 0, 2), R::TranslationControl),
            ((5, 1, 0), R::AuxiliaryFaultStatus0),
            ((5, 1, 1), R::AuxiliaryFaultStatus1),
            ((5, 2, 0), R::ExceptionSyndrome),
            ((6, 0, 0), R::FaultAddress),
            ((10, 2, 0), R::MemoryAttributeIndirection),
            ((10, 3, 0), R::AuxiliaryMemoryAttributeIndirection),
            ((13, 0, 1), R::ContextId),
        ];
        for ((crn, crm, op2), register) in cases {
            assert_eq!(
                VirtualMemoryRegister::from_encoding(encoding(3, 0, crn, crm, op2)),
                Some(register)
            );
        }
        // TCR2_EL1 and PIR_EL1 are TVM registers Tessera does not emulate;
        // GCR_EL1 (MTE) and PMCR_EL0 trap for other reasons, if at all.
        for (crn, crm, op2) in [(2, 0, 3), (10, 2, 3)] {
            assert!(is_unemulated_virtual_memory_register(encoding(
                3, 0, crn, crm, op2
            )));
            assert_eq!(
                VirtualMemoryRegister::from_encoding(encoding(3, 0, crn, crm, op2)),
                None
            );
        }
        assert!(!is_unemulated_virtual_memory_register(encoding(
            3, 0, 1, 0, 6
        )));
        assert!(!is_unemulated_virtual_memory_register(encoding(
            3, 3, 9, 12, 0
        )));
        // SCTLR_EL2-like encodings at other op1, and VBAR_EL1, are not.
        assert_eq!(
            VirtualMemoryRegister::from_encoding(encoding(3, 4, 1, 0, 0)),
            None
        );
        assert_eq!(
            VirtualMemoryRegister::from_encoding(encoding(3, 0, 12, 0, 0)),
            None
        );
    }
}
