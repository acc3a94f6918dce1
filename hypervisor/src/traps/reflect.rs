//! Reflecting a fault into the guest the way hardware would deliver it: a
//! synchronous external abort taken to the guest's EL1 vectors.
//!
//! This is what a guest gets for touching guest-physical space with nothing
//! behind it. When the guest cannot take the exception (no vectors, or it
//! is already inside its vector table), the VM is stopped instead.

use crate::memory::address::GuestPhysAddr;

/// SPSR.M values (AArch64).
const MODE_EL0T: u64 = 0b0000;
const MODE_EL1T: u64 = 0b0100;
const MODE_EL1H: u64 = 0b0101;
const MODE_MASK: u64 = 0b1111;
/// D, A, I and F masked.
const DAIF_ALL: u64 = 0b1111 << 6;
/// Size of the vector table.
const VECTOR_TABLE_SIZE: u64 = 0x800;
/// Synchronous external abort, not on a table walk.
const FAULT_STATUS_EXTERNAL_ABORT: u64 = 0x10;
const IL_32_BIT: u64 = 1 << 25;
const WRITE_NOT_READ: u64 = 1 << 6;

/// The guest state the reflection needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestState {
    /// ELR_EL2: the faulting instruction.
    pub program_counter: u64,
    /// SPSR_EL2: the guest's PSTATE at the fault.
    pub saved_state: u64,
    /// VBAR_EL1.
    pub vector_base: u64,
    /// FAR_EL2: the guest's virtual address of the access.
    pub fault_address: u64,
    /// SCTLR_EL1.M: whether the guest's stage-1 translation is on, so that
    /// VBAR_EL1 is a virtual address rather than a guest-physical one.
    pub translation_enabled: bool,
}

/// What to do with the abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortKind {
    Data { is_write: bool },
    Instruction,
}

/// The register writes that deliver the exception.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reflection {
    pub esr_el1: u64,
    pub far_el1: u64,
    pub elr_el1: u64,
    pub spsr_el1: u64,
    /// Where the guest resumes: its vector.
    pub program_counter: u64,
    /// Its PSTATE there: EL1h, everything masked.
    pub saved_state: u64,
}

/// Why the fault could not be given to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CannotReflect {
    /// VBAR_EL1 is unset (0), or, with the guest's MMU off, does not point
    /// into its RAM.
    NoVectors { vector_base: u64 },
    /// The fault happened inside the guest's own vector table: a fault in
    /// its fault handler.
    FaultInHandler { program_counter: u64 },
    /// The guest was in a mode that cannot take an EL1 exception (AArch32).
    UnsupportedMode { saved_state: u64 },
}

/// Computes the external abort for `state`. `guest_ram` is the guest-physical
/// RAM range; guests run with the MMU off or identity-mapped in practice,
/// and a vector table outside RAM cannot be fetched.
///
/// # Errors
/// See [`CannotReflect`].
pub fn external_abort(
    state: &GuestState,
    kind: AbortKind,
    guest_ram: (GuestPhysAddr, GuestPhysAddr),
) -> Result<Reflection, CannotReflect> {
    let vector_base = state.vector_base;
    let Some(vector_end) = vector_base.checked_add(VECTOR_TABLE_SIZE) else {
        return Err(CannotReflect::NoVectors { vector_base });
    };
    // With the MMU off VBAR_EL1 is guest-physical and must be in RAM; with
    // it on, only an unset table can be told apart from here.
    let vectors_unusable = if state.translation_enabled {
        vector_base == 0
    } else {
        vector_base < guest_ram.0.0 || vector_end > guest_ram.1.0
    };
    if vectors_unusable {
        return Err(CannotReflect::NoVectors { vector_base });
    }
    if (vector_base..vector_end).contains(&state.program_counter) {
        return Err(CannotReflect::FaultInHandler {
            program_counter: state.program_counter,
        });
    }
    // M[4] set: the guest was in AArch32, which Tessera does not run.
    let mode = if state.saved_state & 0x10 != 0 {
        u64::MAX
    } else {
        state.saved_state & MODE_MASK
    };
    let from_el0 = mode == MODE_EL0T;
    let vector_offset = match mode {
        MODE_EL1T => 0x000,
        MODE_EL1H => 0x200,
        MODE_EL0T => 0x400,
        _ => {
            return Err(CannotReflect::UnsupportedMode {
                saved_state: state.saved_state,
            });
        }
    };
    // Exception classes: data abort 0x24 (lower EL) / 0x25 (same EL);
    // instruction abort 0x20 / 0x21.
    let class = match (kind, from_el0) {
        (AbortKind::Data { .. }, true) => 0x24,
        (AbortKind::Data { .. }, false) => 0x25,
        (AbortKind::Instruction, true) => 0x20,
        (AbortKind::Instruction, false) => 0x21,
    };
    let write = match kind {
        AbortKind::Data { is_write: true } => WRITE_NOT_READ,
        _ => 0,
    };
    Ok(Reflection {
        esr_el1: (class << 26) | IL_32_BIT | write | FAULT_STATUS_EXTERNAL_ABORT,
        far_el1: state.fault_address,
        elr_el1: state.program_counter,
        spsr_el1: state.saved_state,
        program_counter: vector_base + vector_offset,
        saved_state: DAIF_ALL | MODE_EL1H,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: (GuestPhysAddr, GuestPhysAddr) =
        (GuestPhysAddr(0x4000_0000), GuestPhysAddr(0x4400_0000));

    fn state(saved_state: u64) -> GuestState {
        GuestState {
            program_counter: 0x4008_1000,
            saved_state,
            vector_base: 0x4008_8000,
            fault_address: 0x4800_0000,
            translation_enabled: false,
        }
    }

    #[test]
    fn a_read_from_el1h_goes_to_the_current_el_spx_vector() {
        let reflection =
            external_abort(&state(0x3C5), AbortKind::Data { is_write: false }, RAM).unwrap();
        assert_eq!(reflection.program_counter, 0x4008_8200);
        assert_eq!(reflection.esr_el1, 0x9600_0010);
        assert_eq!(reflection.far_el1, 0x4800_0000);
        assert_eq!(reflection.elr_el1, 0x4008_1000);
        assert_eq!(reflection.spsr_el1, 0x3C5);
        assert_eq!(reflection.saved_state, 0x3C5);
    }

    #[test]
    fn writes_set_wnr_and_el0_uses_the_lower_el_vector() {
        let reflection =
            external_abort(&state(0x0), AbortKind::Data { is_write: true }, RAM).unwrap();
        assert_eq!(reflection.program_counter, 0x4008_8400);
        assert_eq!(reflection.esr_el1, 0x9200_0050);
        let instruction = external_abort(&state(0x4), AbortKind::Instruction, RAM).unwrap();
        assert_eq!(instruction.program_counter, 0x4008_8000);
        assert_eq!(instruction.esr_el1 >> 26, 0x21);
    }

    #[test]
    fn with_the_mmu_on_vectors_at_a_high_virtual_address_are_used() {
        let mut linux_like = state(0x3C5);
        linux_like.translation_enabled = true;
        linux_like.vector_base = 0xFFFF_8000_1001_0800;
        linux_like.program_counter = 0xFFFF_8000_1000_2000;
        let reflection =
            external_abort(&linux_like, AbortKind::Data { is_write: false }, RAM).unwrap();
        assert_eq!(reflection.program_counter, 0xFFFF_8000_1001_0A00);
        linux_like.vector_base = 0xFFFF_FFFF_FFFF_F900;
        assert!(matches!(
            external_abort(&linux_like, AbortKind::Instruction, RAM),
            Err(CannotReflect::NoVectors { .. })
        ));
    }

    #[test]
    fn no_vectors_or_a_fault_in_the_handler_cannot_be_reflected() {
        let mut no_vectors = state(0x3C5);
        no_vectors.vector_base = 0;
        assert_eq!(
            external_abort(&no_vectors, AbortKind::Instruction, RAM),
            Err(CannotReflect::NoVectors { vector_base: 0 })
        );
        let mut nested = state(0x3C5);
        nested.program_counter = 0x4008_8204;
        assert_eq!(
            external_abort(&nested, AbortKind::Data { is_write: false }, RAM),
            Err(CannotReflect::FaultInHandler {
                program_counter: 0x4008_8204
            })
        );
        assert_eq!(
            external_abort(&state(0x10), AbortKind::Instruction, RAM),
            Err(CannotReflect::UnsupportedMode { saved_state: 0x10 })
        );
    }
}
