//! Accesses the virtual PL011 through every general register, and checks
//! that each access does exactly what the instruction says and nothing else.
//!
//! For each data register x0..x30 (and xzr), with every other register
//! holding a known pattern:
//!
//! - `ldr wN, [UARTPeriphID0]` must leave 0x11 in xN (zero-extended over
//!   the pattern that was there);
//! - `ldrsb xN, [UARTPCellID3]` must leave 0xB1 sign-extended to 64 bits,
//!   and `ldrsb wN` the same to 32 bits with the upper half zero;
//! - `str wN, [UARTIMSC]` must store what xN held: reading UARTIMSC back
//!   gives it;
//! - after each access, every other register still holds its pattern.
//!
//! The hypervisor takes accesses through x0..x18 and x30 on its fast path
//! and those through x19..x29 on its full path (docs/ARCHITECTURE.md, "Guest
//! exits"), so this covers both.
//!
//! Output: `device-access: 31 registers and xzr: loads, sign-extending loads
//! and stores all correct`, and the VM exits with status 0; otherwise
//! `device-access: FAIL: <check> through xN` and status 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use tessera_guest_sdk::{entry, exit, exit_status, println};

entry!(main);

#[cfg(target_os = "none")]
unsafe extern "C" {
    /// Runs every check; returns 0, or `(check << 8) | register` for the
    /// first that failed (register 31 is xzr).
    fn device_access_checks() -> u64;
}

/// The checks are AArch64 assembly: on the host, where examples are only
/// compiled, there is nothing to run (and `entry!` never calls `main`).
fn run_checks() -> u64 {
    #[cfg(target_os = "none")]
    {
        // SAFETY: the routine follows the procedure-call standard (it saves
        // and restores x19..x30 and leaves SP as it found it) and touches
        // only the PL011's identification and interrupt-mask registers.
        unsafe { device_access_checks() }
    }
    #[cfg(not(target_os = "none"))]
    unreachable!("a guest runs only on aarch64-unknown-none")
}

const CHECKS: [&str; 5] = [
    "",
    "word load (value or other registers wrong)",
    "sign-extending byte load into an X register",
    "sign-extending byte load into a W register",
    "word store (value stored or other registers wrong)",
];

fn main(_device_tree: usize) -> ! {
    let result = run_checks();
    if result == 0 {
        println!(
            "device-access: 31 registers and xzr: loads, sign-extending loads and stores all correct"
        );
        exit(exit_status::SUCCESS)
    }
    let check = CHECKS.get((result >> 8) as usize).copied().unwrap_or("?");
    let register = result & 0xFF;
    if register == 31 {
        println!("device-access: FAIL: {check} through xzr");
    } else {
        println!("device-access: FAIL: {check} through x{register}");
    }
    exit(exit_status::FAILURE)
}

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .equ UART, 0x09000000
    .equ PERIPH_ID0, 0xFE0
    .equ PCELL_ID3, 0xFFC
    .equ IMSC, 0x038

    // Every register but \skip and \base gets 0x100 + its number.
    .macro fill skip, base
    .irp r, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30
    .if (\r != \skip) && (\r != \base)
    mov     x\r, #(0x100 + \r)
    .endif
    .endr
    movz    x\base, #(UART >> 16), lsl #16
    .endm

    // Every register but \skip and \base still holds its pattern, and \base
    // still holds the UART address; else fail with \code.
    .macro verify skip, base, code
    .irp r, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30
    .if (\r != \skip) && (\r != \base)
    cmp     x\r, #(0x100 + \r)
    b.ne    9f
    .endif
    .endr
    // x\skip is checked by now (or is xzr's stand-in), so it can be scratch.
    movz    x\skip, #(UART >> 16), lsl #16
    cmp     x\base, x\skip
    b.ne    9f
    b       8f
9:  mov     x0, #(\code)
    b       device_access_failed
8:
    .endm

    // All checks through data register \n, with \base holding the UART.
    .macro checks n, base
    fill    \n, \base
    ldr     w\n, [x\base, #PERIPH_ID0]
    cmp     x\n, #0x11
    b.ne    1f
    verify  \n, \base, ((1 << 8) | \n)
    fill    \n, \base
    ldrsb   x\n, [x\base, #PCELL_ID3]
    cmn     x\n, #(0x100 - 0xB1)
    b.ne    2f
    verify  \n, \base, ((2 << 8) | \n)
    fill    \n, \base
    ldrsb   w\n, [x\base, #PCELL_ID3]
    mov     x\base, #0xFFB1
    movk    x\base, #0xFFFF, lsl #16
    cmp     x\n, x\base
    b.ne    3f
    movz    x\base, #(UART >> 16), lsl #16
    verify  \n, \base, ((3 << 8) | \n)
    fill    \n, \base
    mov     x\n, #0x5A
    str     w\n, [x\base, #IMSC]
    cmp     x\n, #0x5A
    b.ne    4f
    verify  \n, \base, ((4 << 8) | \n)
    ldr     w\n, [x\base, #IMSC]
    cmp     x\n, #0x5A
    b.ne    4f
    str     wzr, [x\base, #IMSC]
    b       5f
1:  mov     x0, #((1 << 8) | \n)
    b       device_access_failed
2:  mov     x0, #((2 << 8) | \n)
    b       device_access_failed
3:  mov     x0, #((3 << 8) | \n)
    b       device_access_failed
4:  mov     x0, #((4 << 8) | \n)
    b       device_access_failed
5:
    .endm

    .section .text.device_access_checks, "ax"
    .global device_access_checks
device_access_checks:
    stp     x29, x30, [sp, #-96]!
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    stp     x23, x24, [sp, #48]
    stp     x25, x26, [sp, #64]
    stp     x27, x28, [sp, #80]
    checks  0, 1
    .irp n, 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30
    checks  \n, 0
    .endr

    // xzr: a load to it is discarded, a store from it stores zero; the
    // other registers stay as they were. x1 stands in for "skip" (it is
    // scratch in `verify`).
    fill    1, 0
    ldr     wzr, [x0, #PERIPH_ID0]
    verify  1, 0, ((1 << 8) | 31)
    fill    1, 0
    mov     x1, #0x5A
    str     w1, [x0, #IMSC]
    str     wzr, [x0, #IMSC]
    verify  1, 0, ((4 << 8) | 31)
    ldr     w1, [x0, #IMSC]
    cbnz    x1, 1f
    mov     x0, #0
    b       device_access_done
1:  mov     x0, #((4 << 8) | 31)
device_access_failed:
device_access_done:
    ldp     x27, x28, [sp, #80]
    ldp     x25, x26, [sp, #64]
    ldp     x23, x24, [sp, #48]
    ldp     x21, x22, [sp, #32]
    ldp     x19, x20, [sp, #16]
    ldp     x29, x30, [sp], #96
    ret
"#
);
