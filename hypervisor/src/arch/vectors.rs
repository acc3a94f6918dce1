//! The EL2 exception vector table. Each entry saves x0/x1, notes which of
//! the 16 vectors it is, and branches to a common path that saves the rest
//! of the `TrapFrame` and calls `exceptions::handle_exception`.

use core::arch::global_asm;

use tessera_hypervisor::crash_report::TRAP_FRAME_SIZE;

unsafe extern "C" {
    static exception_vectors: u8;
}

/// Points VBAR_EL2 at the vector table.
pub fn install() {
    // SAFETY: the table is 2 KiB-aligned code in this image, and every entry
    // ends in a valid handler.
    unsafe {
        core::arch::asm!(
            "msr vbar_el2, {table}",
            "isb",
            table = in(reg) &raw const exception_vectors,
            options(nostack, preserves_flags)
        );
    }
}

global_asm!(
    r#"
    .macro vector_entry slot
    .balign 0x80
    sub     sp, sp, #{frame_size}
    stp     x0, x1, [sp, #0]
    mov     x1, #\slot
    b       exception_common
    .endm

    .section .text.vectors, "ax"
    .balign 0x800
    .global exception_vectors
exception_vectors:
    vector_entry 0
    vector_entry 1
    vector_entry 2
    vector_entry 3
    vector_entry 4
    vector_entry 5
    vector_entry 6
    vector_entry 7
    vector_entry 8
    vector_entry 9
    vector_entry 10
    vector_entry 11
    vector_entry 12
    vector_entry 13
    vector_entry 14
    vector_entry 15

exception_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    add     x2, sp, #{frame_size}
    stp     x30, x2, [sp, #240]
    mrs     x2, elr_el2
    mrs     x3, spsr_el2
    stp     x2, x3, [sp, #256]
    mrs     x2, esr_el2
    mrs     x3, far_el2
    stp     x2, x3, [sp, #272]
    mov     x0, sp
    bl      {handler}
    ldp     x2, x3, [sp, #256]
    msr     elr_el2, x2
    msr     spsr_el2, x3
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldr     x30, [sp, #240]
    add     sp, sp, #{frame_size}
    eret
    "#,
    frame_size = const TRAP_FRAME_SIZE,
    handler = sym crate::exceptions::handle_exception,
);
