//! Single-steps one instruction at EL1 with the architecture's software
//! step, twice: an ordinary instruction, then a load from the virtual UART
//! that traps to the hypervisor. Each time the step exception must come
//! right after the stepped instruction (ELR_EL1 = its address + 4) with
//! EC 0x33 (software step, same EL): a hypervisor that carries out a
//! trapped instruction must end the step as the instruction itself would
//! (docs/ARCHITECTURE.md, "Trap configuration").
//!
//! Output, then exit status 0:
//!
//! ```text
//! single-step: an ordinary instruction and a trapped device load each stop the step right after them
//! ```
//!
//! Otherwise `single-step: FAIL: ...` and status 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use tessera_guest_sdk::{entry, exit, exit_status, println};

entry!(main);

/// What stepping one instruction gave.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct StepOutcome {
    /// ELR_EL1 of the step exception less the stepped instruction's
    /// address: 4 when the step ended right after it; -1 when no step
    /// exception came; -2 when another exception came.
    offset: i64,
    /// ESR_EL1 of the exception, if one came.
    syndrome: u64,
}

const SOFTWARE_STEP_SAME_EL: u64 = 0x33;

fn main(_device_tree: usize) -> ! {
    for (what, kind) in [("an ordinary instruction", 0), ("a trapped device load", 1)] {
        let outcome = step(kind);
        if outcome.offset != 4 || outcome.syndrome >> 26 != SOFTWARE_STEP_SAME_EL {
            println!(
                "single-step: FAIL: stepping {what}: offset {}, ESR {:#x} (expected 4 and EC {SOFTWARE_STEP_SAME_EL:#x})",
                outcome.offset, outcome.syndrome
            );
            exit(exit_status::FAILURE)
        }
    }
    println!(
        "single-step: an ordinary instruction and a trapped device load each stop the step right after them"
    );
    exit(exit_status::SUCCESS)
}

#[cfg(target_os = "none")]
unsafe extern "C" {
    /// Steps the instruction `kind` names (0: an `add`; 1: a load from the
    /// UART's flag register) with its own vectors in place, and puts the
    /// SDK's back.
    fn single_step_probe(kind: u64) -> StepOutcome;
}

#[cfg(target_os = "none")]
fn step(kind: u64) -> StepOutcome {
    // SAFETY: the routine saves and restores VBAR_EL1, leaves MDSCR_EL1
    // clear, touches no memory but the UART's flag register, and uses only
    // caller-saved registers.
    unsafe { single_step_probe(kind) }
}

// The host only compiles the examples (`entry!` never calls `main` there).
#[cfg(not(target_os = "none"))]
fn step(_kind: u64) -> StepOutcome {
    unreachable!("a guest runs only on aarch64-unknown-none")
}

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .section .text.single_step_probe, "ax"
    .global single_step_probe
single_step_probe:
    mrs     x15, vbar_el1
    adr     x9, single_step_vectors
    msr     vbar_el1, x9
    msr     oslar_el1, xzr              // unlock the OS lock: it blocks debug exceptions
    mov     x9, #((1 << 13) | 1)        // MDSCR_EL1.KDE | SS
    msr     mdscr_el1, x9
    isb
    movz    x11, #0x0900, lsl #16
    add     x11, x11, #0x18             // UARTFR
    adr     x12, 1f
    cbz     x0, 2f
    adr     x12, 3f
2:  mov     x13, x12
    msr     elr_el1, x12
    mov     x9, #0x1c5                  // EL1h, A, I and F masked, D clear
    orr     x9, x9, #(1 << 21)          // SS: step the instruction returned to
    msr     spsr_el1, x9
    eret
1:  add     x10, x10, #1
    nop
    b       4f
3:  ldr     w10, [x11]
    nop
    b       4f
4:  mov     x0, #-1                     // no step exception came
    mov     x1, #0
    b       single_step_restore

    .balign 0x800
single_step_vectors:
    .rept 4
    .balign 0x80
    b       single_step_unexpected
    .endr
    .balign 0x80
    b       single_step_taken           // current EL with SP_ELx, synchronous
    .rept 11
    .balign 0x80
    b       single_step_unexpected
    .endr

single_step_taken:
    mrs     x0, elr_el1
    sub     x0, x0, x13
    mrs     x1, esr_el1
    b       single_step_restore
single_step_unexpected:
    mov     x0, #-2
    mrs     x1, esr_el1
single_step_restore:
    msr     mdscr_el1, xzr
    msr     vbar_el1, x15
    isb
    ret
"#
);
