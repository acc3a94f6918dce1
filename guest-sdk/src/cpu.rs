//! Which vCPU is running, and the hand-over from [`crate::psci::cpu_on`] to
//! the vCPU it starts.
//!
//! Each vCPU finds its stack by its MPIDR affinity 0 (under Tessera, VMPIDR
//! Aff0 is the vCPU index), so the SDK supports vCPUs 0..[`MAX_VCPUS`] with
//! the higher affinity fields 0 — which is what Tessera and QEMU `virt`
//! (up to 8 CPUs) give a guest.
//!
//! `cpu_on` leaves a start record (entry function and argument) in the
//! target's slot and passes the slot index as PSCI's context ID; the
//! target's entry code, once it has a stack, picks the record up.

use spin::Mutex;

use crate::arch;

/// vCPUs the SDK has stacks for.
pub const MAX_VCPUS: usize = 8;
/// Bytes of stack per vCPU.
pub const STACK_SIZE: usize = 16 * 1024;

/// MPIDR affinity fields (Aff3, Aff2, Aff1, Aff0); bit 31, U and MT are not
/// part of a vCPU's name.
const AFFINITY_MASK: u64 = 0xFF_00FF_FFFF;
const AFF0_MASK: u64 = 0xFF;

/// This vCPU's MPIDR_EL1.
#[must_use]
pub fn mpidr() -> u64 {
    arch::mpidr()
}

/// Whether the CPU has the FEAT_LSE atomic instructions (LDADD, CAS, ...):
/// ID_AA64ISAR0_EL1.Atomic is 2 or more. The Cortex-A72 has not.
#[must_use]
pub fn has_atomics() -> bool {
    (arch::instruction_set_features() >> 20) & 0xF >= 2
}

/// This vCPU's index: MPIDR affinity 0.
#[must_use]
pub fn index() -> usize {
    (arch::mpidr() & AFF0_MASK) as usize
}

/// The index (= stack slot) of the vCPU with MPIDR `mpidr`, if the SDK can
/// run it: affinity 0 below [`MAX_VCPUS`] and the other affinity fields 0.
#[must_use]
pub const fn index_of(mpidr: u64) -> Option<usize> {
    let affinity = mpidr & AFFINITY_MASK;
    if affinity & !AFF0_MASK != 0 || affinity as usize >= MAX_VCPUS {
        None
    } else {
        Some(affinity as usize)
    }
}

/// What a started vCPU runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Start {
    pub entry: fn(usize) -> !,
    pub argument: usize,
    /// Set up this vCPU's GIC interface before `entry` ([`crate::smp::start`]).
    pub init_interrupts: bool,
}

static STARTS: [Mutex<Option<Start>>; MAX_VCPUS] = [const { Mutex::new(None) }; MAX_VCPUS];

/// Leaves a start record for vCPU `index`; false if one is already waiting
/// (an earlier CPU_ON whose target has not started yet).
pub(crate) fn post_start(index: usize, start: Start) -> bool {
    let mut slot = STARTS[index].lock();
    if slot.is_some() {
        return false;
    }
    *slot = Some(start);
    true
}

/// Removes the record of a start that CPU_ON refused.
pub(crate) fn withdraw_start(index: usize) {
    *STARTS[index].lock() = None;
}

/// Picks up vCPU `index`'s start record (on that vCPU, at start-up).
pub(crate) fn take_start(index: usize) -> Option<Start> {
    STARTS.get(index)?.lock().take()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_names_map_to_slots() {
        assert_eq!(index_of(0), Some(0));
        assert_eq!(index_of(7), Some(7));
        // Bit 31 (RES1) and U/MT do not matter.
        assert_eq!(index_of(0x8000_0001), Some(1));
        assert_eq!(index_of(0xC100_0003), Some(3));
        assert_eq!(index_of(8), None);
        assert_eq!(index_of(0x100), None, "Aff1 set");
        assert_eq!(index_of(0x1_0000_0000), None, "Aff3 set");
    }

    fn never(_: usize) -> ! {
        panic!("not called")
    }

    #[test]
    fn one_start_record_per_vcpu_at_a_time() {
        let start = |argument| Start {
            entry: never,
            argument,
            init_interrupts: false,
        };
        // Slot 6 is used by this test only.
        assert!(post_start(6, start(42)));
        assert!(!post_start(6, start(43)), "second start before pick-up");
        let taken = take_start(6).expect("record is there");
        assert_eq!(taken.argument, 42);
        assert!(take_start(6).is_none());
        assert!(post_start(6, start(44)));
        withdraw_start(6);
        assert!(take_start(6).is_none());
        assert!(take_start(MAX_VCPUS).is_none());
    }
}
