//! The EL2 exception vector table. Each entry saves x0/x1, notes which of
//! the 16 vectors it is, and branches to a common path that saves the rest
//! of the `TrapFrame` and calls `exceptions::handle_exception`.
//!
//! Synchronous exits from an AArch64 guest (slot 8) have their own path, in
//! two steps, because a trapped device access is the most frequent exit of
//! all. The first step saves only what a Rust call may clobber (x0..x18,
//! x30) and what the device fast path reads (ELR, ESR, FAR), and calls
//! `exceptions::handle_device_access`: x19..x29 are callee-saved, so they
//! still hold the guest's values when it returns. If it carried the access
//! out, the guest resumes at once. If not, the second step completes the
//! frame (x19..x29, SP, SPSR, still untouched in the registers) and calls
//! the full dispatcher, whose return restores the whole frame.
//!
//! IRQs from an AArch64 guest (slot 9) take the short path always: an
//! interrupt never needs the guest's registers (it changes none of them;
//! a vCPU that parks abandons its frame), so only what a Rust call may
//! clobber is saved, and ELR/SPSR stay in their registers, which nothing
//! on that path overwrites (EL2 runs with IRQs masked). This is the path
//! of a guest's timer interrupt (`vtimer.irq_latency`) and of a signal
//! from another CPU (`shmem.notify_oneway`): each has an assembly fast
//! path before any Rust.
//!
//! With the `exit-counting` feature (benchmark images only), every entry
//! taken from a lower EL (slots 8 to 15) first adds one to its CPU's count
//! of guest exits, which a guest reads with TESSERA_BENCH_EXIT_COUNT
//! (`shmem.exits_per_roundtrip` in docs/benchmarks.md). Without the
//! feature the assembler drops those instructions, so production images
//! are the same instruction for instruction.

use core::arch::global_asm;

use tessera_hypervisor::traps::crash_report::{TRAP_FRAME_SIZE, TrapFrame};

unsafe extern "C" {
    static exception_vectors: u8;
    fn enter_guest_asm(frame: *const TrapFrame, stack_top: u64) -> !;
}

/// Starts (or restarts) guest execution from `frame` on a fresh stack: every
/// EL2 frame below this call is abandoned, so a CPU can enter guests any
/// number of times without its stack growing.
///
/// The caller must have loaded the vCPU's EL1 context and stage 2.
pub fn enter_guest(frame: &TrapFrame, stack_top: u64) -> ! {
    // SAFETY: `stack_top` is this CPU's own boot stack top (so nothing else
    // uses that memory), the frame is copied before the stack pointer moves
    // (the source lives in a static, not on that stack), and the frame's
    // SPSR names EL1, so the ERET leaves EL2.
    unsafe { enter_guest_asm(frame, stack_top) }
}

/// One CPU's count of guest exits, alone on its cache line so that no two
/// CPUs write the same line.
#[cfg(feature = "exit-counting")]
#[repr(C, align(64))]
struct ExitCount(core::sync::atomic::AtomicU64);

/// Guest exits per physical CPU (`exit-counting` only): incremented by
/// the vector entries below with plain loads and stores, since only the
/// CPU itself writes its slot, and read by that CPU's own hypercall.
#[cfg(feature = "exit-counting")]
#[unsafe(no_mangle)]
static TESSERA_GUEST_EXITS: [ExitCount; tessera_hypervisor::MAX_CPUS] =
    [const { ExitCount(core::sync::atomic::AtomicU64::new(0)) }; tessera_hypervisor::MAX_CPUS];

/// The guest exits this CPU has taken since boot, the current one
/// included; `None` in images built without `exit-counting`.
#[cfg(feature = "exit-counting")]
pub fn guest_exits_on_this_cpu() -> Option<u64> {
    Some(
        TESSERA_GUEST_EXITS[super::cpu_index()]
            .0
            .load(core::sync::atomic::Ordering::Relaxed),
    )
}

/// See above: this image does not count.
#[cfg(not(feature = "exit-counting"))]
pub fn guest_exits_on_this_cpu() -> Option<u64> {
    None
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

// The offsets the assembly below writes and reads.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(TrapFrame, registers) == 0);
    assert!(offset_of!(TrapFrame, stack_pointer) == 248);
    assert!(offset_of!(TrapFrame, exception_link) == 256);
    assert!(offset_of!(TrapFrame, saved_state) == 264);
    assert!(offset_of!(TrapFrame, syndrome) == 272);
    assert!(offset_of!(TrapFrame, fault_address) == 280);
};

global_asm!(
    r#"
    // Frame layout (`TrapFrame`): x0..x30 at 8 * n, SP at 248, ELR at 256,
    // SPSR at 264, ESR at 272, FAR at 280.

    // `exit-counting` only: one more exit on this CPU (its slot of
    // TESSERA_GUEST_EXITS, 64 bytes apart). x0/x1 are scratch (already
    // saved); nothing else is touched.
    .macro count_guest_exit
    .if {exit_counting}
    mrs     x0, tpidr_el2
    and     x0, x0, #{cpu_mask}
    adrp    x1, TESSERA_GUEST_EXITS
    add     x1, x1, :lo12:TESSERA_GUEST_EXITS
    add     x1, x1, x0, lsl #6
    ldr     x0, [x1]
    add     x0, x0, #1
    str     x0, [x1]
    .endif
    .endm

    .macro vector_entry slot
    .balign 0x80
    sub     sp, sp, #{frame_size}
    stp     x0, x1, [sp, #0]
    .if \slot >= 8
    count_guest_exit
    .endif
    mov     x1, #\slot
    b       exception_common
    .endm

    // x2..x18 and x30: what a Rust call may clobber, besides x0/x1 (saved
    // by the vector entry).
    .macro save_caller_saved
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    str     x18, [sp, #144]
    str     x30, [sp, #240]
    .endm

    .macro restore_caller_saved
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldr     x18, [sp, #144]
    ldr     x30, [sp, #240]
    .endm

    // ELR, ESR and FAR; x2/x3 are scratch (already saved).
    .macro save_exception_registers
    mrs     x2, elr_el2
    str     x2, [sp, #256]
    mrs     x2, esr_el2
    mrs     x3, far_el2
    stp     x2, x3, [sp, #272]
    .endm

    // The rest of the frame: x19..x29, the stack pointer before the frame,
    // and SPSR; x2/x3 are scratch (already saved).
    .macro save_rest_of_frame
    str     x19, [sp, #152]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    add     x2, sp, #{frame_size}
    str     x2, [sp, #248]
    mrs     x3, spsr_el2
    str     x3, [sp, #264]
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
    .balign 0x80
    sub     sp, sp, #{frame_size}
    stp     x0, x1, [sp, #0]
    count_guest_exit
    b       guest_synchronous
    .balign 0x80
    sub     sp, sp, #{frame_size}
    stp     x0, x1, [sp, #0]
    count_guest_exit
    b       guest_irq
    vector_entry 10
    vector_entry 11
    vector_entry 12
    vector_entry 13
    vector_entry 14
    vector_entry 15

exception_common:
    save_caller_saved
    save_rest_of_frame
    save_exception_registers
    mov     x0, sp
    bl      {handler}
exception_return:
    ldp     x2, x3, [sp, #256]
    msr     elr_el2, x2
    msr     spsr_el2, x3
    ldr     x19, [sp, #152]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    restore_caller_saved
    add     sp, sp, #{frame_size}
    eret

    // Slot 8, step one: the caller-saved registers; ESR and FAR go to the
    // device access in registers (step two, which needs them and ELR in
    // the frame, reads them again: nothing here changes them).
guest_synchronous:
    save_caller_saved
    // A guest single-stepping (SPSR_EL2.SS) takes the full path, which
    // ends the step when it carries out the trapped instruction; so does
    // AArch32 code at its EL0 (M[4]: not A64, which the fast path assumes
    // when it steps ELR by 4).
    mrs     x2, spsr_el2
    tbnz    x2, #21, 1f
    tbnz    x2, #4, 1f
    mov     x0, sp
    mrs     x1, esr_el2
    mrs     x2, far_el2
    bl      {device_access}
    // A Rust `bool` is defined in bit 0 only.
    tbz     w0, #0, 1f
    // Done: the guest is moved past the instruction in ELR_EL2 itself
    // (this frame holds no SPSR; SPSR.SS needs no clearing, as a
    // single-stepping guest takes the full path), and back with what step
    // one saved.
    mrs     x2, elr_el2
    add     x2, x2, #4
    msr     elr_el2, x2
    restore_caller_saved
    add     sp, sp, #{frame_size}
    eret
    // Step two: complete the frame and take the full dispatcher.
1:  save_exception_registers
    save_rest_of_frame
    mov     x0, sp
    bl      {guest_exit}
    b       exception_return

    // Slot 9: an IRQ while a guest ran. First the fast paths
    // (`interrupts::guest::CpuFastPaths`, 64 bytes per CPU, armed by the
    // vGIC for this CPU on GICv3 only): if either is armed (`any_armed`),
    // acknowledge; then
    // - the doorbell SGI, if the doorbell holds the armed signalled SPI
    //   and its list register is empty: take the doorbell, then, if the
    //   SPI's line is high, write the prepared entry; end the SGI (drop
    //   and deactivate) and return;
    // - the guest's virtual-timer interrupt, if it is the armed INTID and
    //   its list register is empty: write the prepared entry there, drop
    //   the priority (the physical interrupt stays active until the
    //   guest's deactivation ends it) and return.
    // Anything else goes the ordinary way. x0..x3 only; requests always
    // come with their own SGI, taken as soon as the guest resumes.
guest_irq:
    stp     x2, x3, [sp, #16]
    mrs     x2, tpidr_el2
    and     x2, x2, #{cpu_mask}
    adrp    x3, TESSERA_FAST_PATHS
    add     x3, x3, :lo12:TESSERA_FAST_PATHS
    add     x3, x3, x2, lsl #6
    ldrb    w0, [x3, #36]
    cbz     w0, 2f
    mrs     x0, icc_iar1_el1
    and     w1, w0, #0xffffff
    cmp     w1, #{doorbell_sgi}
    b.eq    6f
    // A disarmed entry's INTID matches no IAR value.
    ldr     w2, [x3, #4]
    cmp     w1, w2
    b.ne    3f
    // Only into a register the guest is done with (ICH_ELRSR_EL2): a
    // previous instance it has not completed goes the ordinary way.
    ldrb    w1, [x3, #1]
    mrs     x2, ich_elrsr_el2
    lsr     x2, x2, x1
    tbz     x2, #0, 3f
    ldr     x2, [x3, #8]
    msr     icc_eoir1_el1, x0
    // The entry goes into list register x1; then back to the guest.
7:  adr     x3, 4f
    add     x3, x3, x1, lsl #3
    br      x3
4:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    msr     ich_lr\n\()_el2, x2
    b       5f
    .endr
5:  ldp     x2, x3, [sp, #16]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #{frame_size}
    eret
    // The doorbell SGI. It is this CPU's own and carries nothing but the
    // prompt: ended at once (dropped and deactivated, EOImode = 1), so
    // that x0 is free and a doorbell this path does not take goes the
    // ordinary way as if nothing was acknowledged (that way takes the
    // doorbell after whatever interrupt it finds). Taken here when it
    // holds the armed signalled SPI and that SPI's register is empty.
6:  msr     icc_eoir1_el1, x0
    msr     icc_dir_el1, x0
    // A disarmed injection's INTID (u32::MAX) matches no doorbell, not
    // even an empty one (0); with `any_armed` set, both entries are armed
    // or disarmed, never merely zeroed (`TESSERA_FAST_PATHS`).
    ldr     w2, [x3, #20]
    ldr     w1, [x3, #32]
    cmp     w1, w2
    b.ne    8f
    ldrb    w1, [x3, #17]
    mrs     x0, ich_elrsr_el2
    lsr     x0, x0, x1
    tbz     x0, #0, 8f
    // Taken: other CPUs only ever set it from 0, so a plain store of 0
    // loses no other ring. Then the line (`SignalledLines`), read after
    // the take (DMB): a raiser that found the doorbell still full raised
    // the line before, so it is seen here; one that comes later finds the
    // doorbell empty and rings again. A line already low again (it fell
    // after the ring) shows nothing.
    str     wzr, [x3, #32]
    dmb     ish
    ldr     x0, [x3, #40]
    ldr     w0, [x0]
    // Bit intid % 32 (a register shift takes the amount modulo 32).
    lsr     w0, w0, w2
    tbz     w0, #0, 5b
    ldr     x2, [x3, #24]
    b       7b
8:  ldp     x2, x3, [sp, #16]
    b       9f
    // Not armed: the ordinary path, nothing acknowledged yet.
2:  ldp     x2, x3, [sp, #16]
9:  save_caller_saved
    mov     x0, #{no_interrupt}
    bl      {guest_irq}
    restore_caller_saved
    add     sp, sp, #{frame_size}
    eret
    // Acknowledged, but not for a fast path: the ordinary path with it
    // (x0 holds the IAR value).
3:  ldp     x2, x3, [sp, #16]
    save_caller_saved
    bl      {guest_irq}
    restore_caller_saved
    add     sp, sp, #{frame_size}
    eret

    // enter_guest(frame, stack_top): copies `frame` to the top of this
    // CPU's stack, drops everything below it, and returns to the guest
    // through the normal exception-return path.
    .global enter_guest_asm
enter_guest_asm:
    sub     x1, x1, #{frame_size}
    mov     x2, #0
1:  ldr     x3, [x0, x2]
    str     x3, [x1, x2]
    add     x2, x2, #8
    cmp     x2, #{frame_size}
    b.lo    1b
    mov     sp, x1
    b       exception_return
    "#,
    frame_size = const TRAP_FRAME_SIZE,
    handler = sym crate::traps::handlers::handle_exception,
    device_access = sym crate::traps::handlers::handle_device_access,
    guest_exit = sym crate::traps::handlers::handle_guest_synchronous,
    guest_irq = sym crate::traps::handlers::handle_guest_irq,
    cpu_mask = const tessera_hypervisor::MAX_CPUS - 1,
    no_interrupt = const crate::traps::handlers::NO_INTERRUPT_ACKNOWLEDGED,
    doorbell_sgi = const crate::interrupts::gic::DOORBELL_SGI,
    exit_counting = const cfg!(feature = "exit-counting") as u32,
);
