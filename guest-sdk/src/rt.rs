//! The bare-metal runtime: the arm64 Image header, the entry code of vCPU 0
//! and of secondary vCPUs, the per-vCPU stacks, the EL1 vector table, the
//! exception handler and the panic handler.
//!
//! Every vCPU, before any Rust runs: masks DAIF, selects SP_EL1, enables
//! FP/SIMD at EL1 (CPACR_EL1.FPEN = 0b11: the compiler may use NEON
//! anywhere), takes the stack of its MPIDR affinity 0, and points VBAR_EL1 at
//! the SDK's vectors. An IRQ handler runs with FP/SIMD off until it first
//! uses it, when the interrupted code's FP/SIMD state is saved (the lazy
//! save in the vectors below; TPIDR_EL1 is the SDK's for that). A secondary vCPU first turns its MMU and caches on
//! with the tables another vCPU enabled, if one did ([`crate::mmu`]).
//! vCPU 0 also checks it runs at its link address (it is
//! not relocatable) and zeroes the BSS, then calls the guest's `main` via
//! `tessera_guest_main` (see [`crate::entry!`]).

use core::arch::{asm, global_asm};
use core::mem::offset_of;

use crate::exception::{
    ExceptionOrigin, ExceptionReport, ExceptionType, Syndrome, TrapFrame, VectorKind,
};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::{arch, console, cpu, device_tree, probe, tessera};

/// The Image header's text_offset: the image is loaded 512 KiB above the
/// start of RAM, like Linux's.
const TEXT_OFFSET: u64 = 0x8_0000;
/// CPACR_EL1.FPEN = 0b11: FP/SIMD instructions do not trap at EL1 or EL0.
const CPACR_FP_ENABLED: u64 = 0b11 << 20;
/// The exception entry's FP/SIMD save area: q0..q31, then FPCR and FPSR
/// (a multiple of 16 bytes, so SP stays aligned).
const FP_STATE_SIZE: usize = 32 * 16 + 16;

unsafe extern "C" {
    /// The guest's main, defined by `entry!`.
    fn tessera_guest_main(device_tree: usize) -> !;
}

global_asm!(
    r#"
    .section .text.image_header, "ax"
    .global _start
_start:
    b       tessera_primary_entry       // code0
    .word   0                           // code1
    .quad   {text_offset}               // text_offset
    .quad   __guest_image_size          // image_size, BSS included
    .quad   0x2                         // flags: little-endian, 4 KiB pages, base anywhere
    .quad   0, 0, 0                     // reserved
    .word   0x644d5241                  // magic "ARM\x64"
    .word   0                           // reserved

    .section .text.entry, "ax"
tessera_primary_entry:
    msr     daifset, #0xf
    mov     x19, x0                     // the device tree
    adr     x1, _start                  // where the image runs...
    ldr     x2, 9f                      // ...and where it was linked to run
    cmp     x1, x2
    b.ne    tessera_wrong_address
    adrp    x1, __guest_bss_start
    add     x1, x1, :lo12:__guest_bss_start
    adrp    x2, __guest_bss_end
    add     x2, x2, :lo12:__guest_bss_end
1:  cmp     x1, x2
    b.hs    2f
    stp     xzr, xzr, [x1], #16
    b       1b
2:  bl      tessera_vcpu_setup
    mov     x0, x19
    bl      {primary_main}
    b       tessera_park
    .balign 8
9:  .quad   _start

    // PSCI CPU_ON entry point; x0 = context ID = the start record's slot.
    .global tessera_secondary_entry
tessera_secondary_entry:
    msr     daifset, #0xf
    mov     x19, x0
    // MMU and caches on before the first store, if another vCPU has turned
    // its own on (`mmu::enable`); x19 survives, the routine is a leaf.
    bl      tessera_enable_published_translation
    bl      tessera_vcpu_setup
    mov     x0, x19
    bl      {secondary_main}
    b       tessera_park

    // Per-vCPU set-up. A leaf: it uses only x0..x3 and leaves with this
    // vCPU's stack in SP; parks a vCPU the SDK has no stack for.
tessera_vcpu_setup:
    msr     spsel, #1
    mov     x0, #{cpacr}
    msr     cpacr_el1, x0
    // No IRQ handler runs yet (the IRQ path's marker, below).
    msr     tpidr_el1, xzr
    mrs     x0, mpidr_el1
    and     x0, x0, #0xff
    cmp     x0, #{max_vcpus}
    b.hs    tessera_park
    adrp    x1, tessera_stacks
    add     x1, x1, :lo12:tessera_stacks
    add     x0, x0, #1
    mov     x2, #{stack_size}
    madd    x1, x0, x2, x1
    mov     sp, x1
    adrp    x0, tessera_vectors
    add     x0, x0, :lo12:tessera_vectors
    msr     vbar_el1, x0
    isb
    ret

tessera_park:
    wfe
    b       tessera_park

    // Loaded away from the link address, no Rust can run (absolute
    // addresses in data would be wrong): say so on the UART, stop the VM.
tessera_wrong_address:
    adr     x1, 8f
    movz    x2, #0x0900, lsl #16        // the PL011
3:  ldrb    w3, [x1], #1
    cbz     w3, 5f
4:  ldr     w4, [x2, #0x18]             // FR
    tbnz    w4, #5, 4b                  // TXFF
    str     w3, [x2]                    // DR
    b       3b
5:  movz    w0, #0x0001
    movk    w0, #0x8600, lsl #16        // TESSERA_VM_EXIT
    mov     x1, #{wrong_address_status}
    hvc     #0
    movz    w0, #0x0008
    movk    w0, #0x8400, lsl #16        // PSCI SYSTEM_OFF, where VM_EXIT is not supported
    hvc     #0
    b       tessera_park
8:  .asciz  "tessera-guest-sdk: image not loaded at its link address (RAM must start at 0x40000000); stopping\r\n"

    .section .bss.tessera_stacks, "aw", %nobits
    .balign 16
tessera_stacks:
    .space  {stacks_size}

    // The vector table: every entry saves x0/x1, puts its index in x1 and
    // joins the common path, which saves the rest of the frame and calls
    // the handler with (frame, index). The handler returns only to resume.
    .macro  tessera_vector index
    .balign 0x80
    sub     sp, sp, #{frame_size}
    stp     x0, x1, [sp]
    mov     x1, #\index
    b       tessera_exception_entry
    .endm

    // x2..x17 in their frame slots (x0/x1 are saved by the vector), for
    // both entries.
    .macro  save_x2_x17
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    .endm

    .macro  restore_x2_x17
    ldp     x16, x17, [sp, #128]
    ldp     x14, x15, [sp, #112]
    ldp     x12, x13, [sp, #96]
    ldp     x10, x11, [sp, #80]
    ldp     x8, x9, [sp, #64]
    ldp     x6, x7, [sp, #48]
    ldp     x4, x5, [sp, #32]
    ldp     x2, x3, [sp, #16]
    .endm

    // q0..q31 at `base` bytes above `reg` (512 bytes), for both entries.
    .macro  save_fp_simd base, reg=sp
    stp     q0, q1, [\reg, #\base + 0]
    stp     q2, q3, [\reg, #\base + 32]
    stp     q4, q5, [\reg, #\base + 64]
    stp     q6, q7, [\reg, #\base + 96]
    stp     q8, q9, [\reg, #\base + 128]
    stp     q10, q11, [\reg, #\base + 160]
    stp     q12, q13, [\reg, #\base + 192]
    stp     q14, q15, [\reg, #\base + 224]
    stp     q16, q17, [\reg, #\base + 256]
    stp     q18, q19, [\reg, #\base + 288]
    stp     q20, q21, [\reg, #\base + 320]
    stp     q22, q23, [\reg, #\base + 352]
    stp     q24, q25, [\reg, #\base + 384]
    stp     q26, q27, [\reg, #\base + 416]
    stp     q28, q29, [\reg, #\base + 448]
    stp     q30, q31, [\reg, #\base + 480]
    .endm

    .macro  restore_fp_simd base
    ldp     q0, q1, [sp, #\base + 0]
    ldp     q2, q3, [sp, #\base + 32]
    ldp     q4, q5, [sp, #\base + 64]
    ldp     q6, q7, [sp, #\base + 96]
    ldp     q8, q9, [sp, #\base + 128]
    ldp     q10, q11, [sp, #\base + 160]
    ldp     q12, q13, [sp, #\base + 192]
    ldp     q14, q15, [sp, #\base + 224]
    ldp     q16, q17, [sp, #\base + 256]
    ldp     q18, q19, [sp, #\base + 288]
    ldp     q20, q21, [sp, #\base + 320]
    ldp     q22, q23, [sp, #\base + 352]
    ldp     q24, q25, [sp, #\base + 384]
    ldp     q26, q27, [sp, #\base + 416]
    ldp     q28, q29, [sp, #\base + 448]
    ldp     q30, q31, [sp, #\base + 480]
    .endm

    // An IRQ taken at EL1 (vectors 1 and 5) has a shorter path: nothing
    // looks at the interrupted registers, so of the general registers only
    // what a Rust call may clobber is saved (x0..x18, x30, ELR, SPSR), and
    // the GIC support's dispatcher (`IRQ_DISPATCH`) is called straight
    // from the entry. The FP/SIMD state (q0..q31, FPCR, FPSR: a call keeps
    // only the low halves of v8..v15, and the interrupted code may hold
    // whole values there) is saved lazily: the handler runs with FP/SIMD
    // off (CPACR_EL1.FPEN = 0b00) and TPIDR_EL1 pointing at this frame;
    // its first FP/SIMD instruction traps, and the synchronous entry saves
    // the state into this frame and turns FP/SIMD back on
    // (`tessera_exception_entry`). On the way out the state is restored
    // only if it was saved, and TPIDR_EL1 is zero again. Most handlers
    // never touch FP/SIMD, and pay nothing for it. This relies on handlers
    // running with IRQs masked (the SDK's contract: no nesting;
    // `interrupts::enable` refuses while TPIDR_EL1 says a handler runs).
    // This is the guest's half of `shmem.notify_oneway`.
    .macro  tessera_irq_vector
    .balign 0x80
    sub     sp, sp, #{irq_frame_size}
    stp     x0, x1, [sp]
    b       tessera_irq_entry
    .endm

    .section .text.vectors, "ax"
    .balign 0x800
    .global tessera_vectors
tessera_vectors:
    tessera_vector 0
    tessera_irq_vector
    tessera_vector 2
    tessera_vector 3
    tessera_vector 4
    tessera_irq_vector
    tessera_vector 6
    tessera_vector 7
    tessera_vector 8
    tessera_vector 9
    tessera_vector 10
    tessera_vector 11
    tessera_vector 12
    tessera_vector 13
    tessera_vector 14
    tessera_vector 15

    .balign 0x80
tessera_irq_entry:
    save_x2_x17
    stp     x18, x30, [sp, #144]
    mrs     x2, elr_el1
    mrs     x3, spsr_el1
    stp     x2, x3, [sp, #160]
    mov     x2, sp
    msr     tpidr_el1, x2
    msr     cpacr_el1, xzr
    isb
    // The dispatcher, if the GIC support set one (before any IRQ was
    // unmasked); without one, or if it declines, the report.
    adrp    x2, {irq_dispatch}
    ldr     x2, [x2, :lo12:{irq_dispatch}]
    cbz     x2, 1f
    blr     x2
    tbnz    w0, #0, 2f
1:  ldr     x0, [sp, #168]
    bl      {irq_handler}
    // FP/SIMD still off: the handler never used it, the interrupted
    // code's state is in the registers untouched; turned back on (the
    // ERET below synchronises the write). On: restore what the trap
    // saved.
2:  msr     tpidr_el1, xzr
    mrs     x2, cpacr_el1
    cbnz    x2, 3f
    mov     x2, #{cpacr}
    msr     cpacr_el1, x2
    b       4f
3:  ldp     x2, x3, [sp, #176]
    msr     fpcr, x2
    msr     fpsr, x3
    restore_fp_simd 192
4:  ldp     x2, x3, [sp, #160]
    msr     elr_el1, x2
    msr     spsr_el1, x3
    ldp     x18, x30, [sp, #144]
    restore_x2_x17
    ldp     x0, x1, [sp]
    add     sp, sp, #{irq_frame_size}
    eret

    .balign 0x80
tessera_exception_entry:
    save_x2_x17
    // FP/SIMD off means an IRQ handler is running (`tessera_irq_entry`):
    // turn it on and save the interrupted code's state into the IRQ's
    // frame (TPIDR_EL1), whatever this exception is. An FP/SIMD access
    // trap (EC 0x07) is then done: the instruction runs again. Anything
    // else goes on as usual, FP/SIMD now on.
    mrs     x2, cpacr_el1
    cbnz    x2, 6f
    mov     x2, #{cpacr}
    msr     cpacr_el1, x2
    isb
    mrs     x2, tpidr_el1
    save_fp_simd 192, x2
    mrs     x3, fpcr
    mrs     x4, fpsr
    stp     x3, x4, [x2, #176]
    // Counted (`interrupts::fp_state_saves`), for tests.
    adrp    x3, {fp_saves}
    add     x3, x3, :lo12:{fp_saves}
7:  ldxr    x4, [x3]
    add     x4, x4, #1
    stxr    w5, x4, [x3]
    cbnz    w5, 7b
    mrs     x2, esr_el1
    ubfx    x2, x2, #26, #6
    cmp     x2, #0x07
    b.ne    6f
    restore_x2_x17
    ldp     x0, x1, [sp]
    add     sp, sp, #{frame_size}
    eret
6:  stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x2, elr_el1
    stp     x30, x2, [sp, #{elr_offset} - 8]
    mrs     x3, spsr_el1
    str     x3, [sp, #{elr_offset} + 8]
    // The FP/SIMD registers too, below the frame: the handler is Rust,
    // which may use them, and an interrupt handler returns to code that
    // was using them.
    sub     sp, sp, #{fp_size}
    save_fp_simd 0
    mrs     x2, fpcr
    mrs     x3, fpsr
    str     x2, [sp, #0x200]
    str     x3, [sp, #0x208]
    add     x0, sp, #{fp_size}
    bl      {handler}
    ldr     x2, [sp, #0x200]
    ldr     x3, [sp, #0x208]
    msr     fpcr, x2
    msr     fpsr, x3
    restore_fp_simd 0
    add     sp, sp, #{fp_size}
    ldr     x3, [sp, #{elr_offset} + 8]
    msr     spsr_el1, x3
    ldp     x30, x2, [sp, #{elr_offset} - 8]
    msr     elr_el1, x2
    ldp     x28, x29, [sp, #224]
    ldp     x26, x27, [sp, #208]
    ldp     x24, x25, [sp, #192]
    ldp     x22, x23, [sp, #176]
    ldp     x20, x21, [sp, #160]
    ldp     x18, x19, [sp, #144]
    restore_x2_x17
    ldp     x0, x1, [sp]
    add     sp, sp, #{frame_size}
    eret
    "#,
    text_offset = const TEXT_OFFSET,
    cpacr = const CPACR_FP_ENABLED,
    max_vcpus = const cpu::MAX_VCPUS,
    stack_size = const cpu::STACK_SIZE,
    stacks_size = const cpu::STACK_SIZE * cpu::MAX_VCPUS,
    wrong_address_status = const tessera::exit_status::WRONG_LOAD_ADDRESS,
    frame_size = const TrapFrame::SIZE,
    fp_size = const FP_STATE_SIZE,
    elr_offset = const TrapFrame::ELR_OFFSET,
    primary_main = sym primary_main,
    secondary_main = sym secondary_main,
    handler = sym handle_exception,
    irq_handler = sym handle_irq_exception,
    irq_dispatch = sym IRQ_DISPATCH,
    fp_saves = sym FP_STATE_SAVES,
    irq_frame_size = const IRQ_FRAME_SIZE,
);

/// The IRQ path's frame (`tessera_irq_entry`): x0..x18 and x30, ELR and
/// SPSR (176 bytes), FPCR and FPSR (16), q0..q31 (512).
const IRQ_FRAME_SIZE: usize = 704;

const _: () = assert!(offset_of!(TrapFrame, x) == 0);
const _: () = assert!(TrapFrame::ELR_OFFSET == 31 * 8);

/// vCPU 0, on its stack.
extern "C" fn primary_main(device_tree: usize) -> ! {
    device_tree::record_boot_address(device_tree);
    // SAFETY: `entry!` defines `tessera_guest_main` with this signature; a
    // guest without it does not link.
    unsafe { tessera_guest_main(device_tree) }
}

/// What the runtime calls into the GIC support for, set by `gic::init`:
/// the IRQ dispatcher (an `extern "C" fn() -> bool`, called by the IRQ
/// entry's assembly) and a secondary vCPU's interface set-up. Through
/// these (not direct calls) a guest that never sets up its GIC does not
/// link the GIC support at all, which keeps such guests small (the
/// hypervisor copies and checks every byte of a guest image at boot).
static IRQ_DISPATCH: AtomicUsize = AtomicUsize::new(0);

/// How many times an IRQ handler's first FP/SIMD use (or a synchronous
/// exception inside one) saved the interrupted code's FP/SIMD state.
pub(crate) static FP_STATE_SAVES: AtomicU64 = AtomicU64::new(0);
static CPU_INTERRUPT_SETUP: AtomicUsize = AtomicUsize::new(0);

/// Called by `gic::init`, before any IRQ is unmasked.
pub(crate) fn set_interrupt_hooks(dispatch: extern "C" fn() -> bool, setup_this_cpu: fn() -> bool) {
    IRQ_DISPATCH.store(dispatch as usize, Ordering::Release);
    CPU_INTERRUPT_SETUP.store(setup_this_cpu as usize, Ordering::Release);
}

/// The hook stored in `slot`, if set.
fn hook(slot: &AtomicUsize) -> Option<fn() -> bool> {
    let address = slot.load(Ordering::Acquire);
    // SAFETY: a non-zero value was stored by `set_interrupt_hooks` from a
    // `fn() -> bool`, so it is one.
    (address != 0).then(|| unsafe { core::mem::transmute::<usize, fn() -> bool>(address) })
}

/// A vCPU started by `psci::cpu_on`, on its stack; `slot` is PSCI's context
/// ID, the index of its start record.
extern "C" fn secondary_main(slot: usize) -> ! {
    let index = cpu::index();
    match cpu::take_start(slot) {
        Some(start) if slot == index => {
            if start.init_interrupts && !hook(&CPU_INTERRUPT_SETUP).is_some_and(|setup| setup()) {
                console::print_args_emergency(format_args!(
                    "tessera-guest-sdk: vCPU {index} could not set up its GIC interface\n"
                ));
                tessera::exit(tessera::exit_status::GIC_SETUP_FAILED)
            }
            (start.entry)(start.argument)
        }
        _ => {
            console::print_args_emergency(format_args!(
                "tessera-guest-sdk: vCPU {index} started without a start record (context ID {slot:#x})\n"
            ));
            tessera::exit(tessera::exit_status::BAD_SECONDARY_START)
        }
    }
}

/// An IRQ taken at EL1 (vector 1 or 5, `tessera_irq_entry`) that the
/// GIC support's dispatcher did not handle (there is none, or it
/// declined): reported as unexpected, and the VM stops. `saved_state` is
/// the interrupted SPSR_EL1, whose SPSel says which vector it was.
extern "C" fn handle_irq_exception(saved_state: u64) -> ! {
    let report = ExceptionReport {
        kind: VectorKind {
            origin: if saved_state & 1 == 0 {
                ExceptionOrigin::CurrentElSp0
            } else {
                ExceptionOrigin::CurrentElSpx
            },
            exception_type: ExceptionType::Irq,
        },
        syndrome: Syndrome(esr_el1()),
        fault_address: far_el1(),
        return_address: elr_el1(),
    };
    console::print_args_emergency(format_args!("{report}\n"));
    tessera::exit(tessera::exit_status::UNEXPECTED_EXCEPTION)
}

/// Every other exception lands here. Returns (and the vector resumes
/// `frame`) for an aborted probe; anything else is reported and stops the
/// VM.
extern "C" fn handle_exception(frame: &mut TrapFrame, vector: u64) {
    let syndrome = Syndrome(esr_el1());
    let fault_address = far_el1();
    let kind = VectorKind::from_index(vector).unwrap_or(VectorKind {
        origin: ExceptionOrigin::CurrentElSpx,
        exception_type: ExceptionType::Synchronous,
    });
    let is_sync_at_el1h = kind.origin == ExceptionOrigin::CurrentElSpx
        && kind.exception_type == ExceptionType::Synchronous;
    if is_sync_at_el1h && probe::recover(frame, syndrome, fault_address, arch::probe_sites()) {
        return;
    }
    let report = ExceptionReport {
        kind,
        syndrome,
        fault_address,
        return_address: frame.elr,
    };
    console::print_args_emergency(format_args!("{report}\n"));
    tessera::exit(tessera::exit_status::UNEXPECTED_EXCEPTION)
}

fn esr_el1() -> u64 {
    let value: u64;
    // SAFETY: reading ESR_EL1 has no side effects.
    unsafe { asm!("mrs {}, esr_el1", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

fn elr_el1() -> u64 {
    let value: u64;
    // SAFETY: reading ELR_EL1 has no side effects.
    unsafe { asm!("mrs {}, elr_el1", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

fn far_el1() -> u64 {
    let value: u64;
    // SAFETY: reading FAR_EL1 has no side effects.
    unsafe { asm!("mrs {}, far_el1", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Reports the panic and stops the VM with
/// [`exit_status::PANIC`](tessera::exit_status::PANIC).
#[cfg(feature = "panic-handler")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    console::print_args_emergency(format_args!(
        "guest panic on vCPU {}: {info}\n",
        cpu::index()
    ));
    tessera::exit(tessera::exit_status::PANIC)
}
