//! The architectural state of a vCPU that EL2 must hold while the vCPU is
//! not on a physical CPU: the EL1 system registers. (The general registers
//! live in the trap frame.)
//!
//! With one vCPU per physical CPU the EL1 registers stay live in hardware
//! between traps; the hypervisor writes them when a vCPU starts (from the
//! architectural reset values below) and saves them when it stops, so that
//! a scheduler can switch vCPUs later without a new mechanism.

/// EL1 system registers of one vCPU, in the order the arch layer saves them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct El1Context {
    pub sctlr: u64,
    pub actlr: u64,
    pub cpacr: u64,
    pub ttbr0: u64,
    pub ttbr1: u64,
    pub tcr: u64,
    pub mair: u64,
    pub amair: u64,
    pub vbar: u64,
    pub contextidr: u64,
    pub tpidr_el0: u64,
    pub tpidrro_el0: u64,
    pub tpidr_el1: u64,
    pub sp_el0: u64,
    pub sp_el1: u64,
    pub elr: u64,
    pub spsr: u64,
    pub esr: u64,
    pub far: u64,
    pub afsr0: u64,
    pub afsr1: u64,
    pub par: u64,
    pub csselr: u64,
    pub cntkctl: u64,
    pub cntv_ctl: u64,
    pub cntv_cval: u64,
    /// MDSCR_EL1: 0 at start, so breakpoints, watchpoints and single-step
    /// a previous run of the VM left armed stay quiet until the guest arms
    /// them again.
    pub mdscr: u64,
}

/// SCTLR_EL1 at reset: MMU and caches off, only the RES1 bits set
/// (bits 11, 20, 22, 23, 28, 29).
pub const SCTLR_EL1_RESET: u64 =
    (1 << 11) | (1 << 20) | (1 << 22) | (1 << 23) | (1 << 28) | (1 << 29);

/// PSTATE for a vCPU's first instruction: EL1h with D, A, I, F masked.
pub const ENTRY_SAVED_STATE: u64 = 0x3C5;

impl El1Context {
    /// The state a vCPU starts with, as after a reset into EL1.
    #[must_use]
    pub const fn reset() -> Self {
        Self {
            sctlr: SCTLR_EL1_RESET,
            actlr: 0,
            cpacr: 0,
            ttbr0: 0,
            ttbr1: 0,
            tcr: 0,
            mair: 0,
            amair: 0,
            vbar: 0,
            contextidr: 0,
            tpidr_el0: 0,
            tpidrro_el0: 0,
            tpidr_el1: 0,
            sp_el0: 0,
            sp_el1: 0,
            elr: 0,
            spsr: 0,
            esr: 0,
            far: 0,
            afsr0: 0,
            afsr1: 0,
            par: 0,
            csselr: 0,
            cntkctl: 0,
            cntv_ctl: 0,
            cntv_cval: 0,
            mdscr: 0,
        }
    }
}

/// The guest-visible MPIDR of vCPU `index`: Aff0 = index, and bit 31 (RES1).
#[must_use]
pub const fn virtual_mpidr(index: usize) -> u64 {
    (1 << 31) | index as u64
}

/// The vCPU a PSCI caller names by affinity, if it fits a VM of
/// `vcpu_count` vCPUs (only Aff0 is used; higher levels must be 0).
#[must_use]
pub const fn vcpu_for_affinity(affinity: u64, vcpu_count: usize) -> Option<usize> {
    let affinity = affinity & crate::vm::psci::MPIDR_AFFINITY_MASK;
    if affinity < vcpu_count as u64 {
        Some(affinity as usize)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_state_has_the_mmu_off_and_res1_bits_set() {
        let context = El1Context::reset();
        assert_eq!(context.sctlr & 1, 0, "MMU off");
        assert_eq!(context.sctlr, 0x30D0_0800);
        assert_eq!(ENTRY_SAVED_STATE & 0xF, 0b0101, "EL1h");
        assert_eq!(context.mdscr, 0, "monitor debug off");
        assert_eq!(size_of::<El1Context>(), 27 * 8);
    }

    #[test]
    fn affinities_name_vcpus_by_aff0() {
        assert_eq!(virtual_mpidr(1), 0x8000_0001);
        assert_eq!(vcpu_for_affinity(0x8000_0001, 2), Some(1));
        assert_eq!(vcpu_for_affinity(1, 2), Some(1));
        assert_eq!(vcpu_for_affinity(2, 2), None);
        assert_eq!(vcpu_for_affinity(0x100, 2), None, "Aff1 is not 0");
    }
}
