//! Accesses the virtual PL011 through every general register, and checks
//! that each access does exactly what the instruction says and nothing else.
//!
//! For each data register x0..x30 (and xzr), with every register holding a
//! pattern with its upper 16 bits set and the condition flags in a known
//! state:
//!
//! - `ldr wN, [UARTPeriphID0]` must leave exactly 0x11 in xN (zero-extended
//!   over the pattern that was there);
//! - `ldrsb xN, [UARTPCellID3]` must leave 0xB1 sign-extended to 64 bits,
//!   and `ldrsb wN` the same to 32 bits with the upper half zero;
//! - `str wN, [UARTIMSC]` must store xN's low word (reading UARTIMSC back
//!   gives it) and leave xN as it was;
//! - through xzr, a load changes no register and a store stores zero (not
//!   x0's pattern);
//! - after each access, every other register still holds its pattern and
//!   the condition flags are unchanged.
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

const CHECKS: [&str; 6] = [
    "",
    "word load (value or other registers wrong)",
    "sign-extending byte load into an X register",
    "sign-extending byte load into a W register",
    "word store (value stored or other registers wrong)",
    "condition flags changed by an access",
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
    .equ HIGH, 0xFFFF000000000000

    // Every register but \base gets HIGH | (0x100 + its number) (upper
    // bits set, so a W-register result that fails to clear them shows);
    // \base gets the UART address. Then the flags are set to a known
    // state: C set, N, Z and V clear.
    .macro fill base
    .irp r, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30
    .if \r != \base
    movz    x\r, #(0x100 + \r)
    movk    x\r, #0xFFFF, lsl #48
    .endif
    .endr
    movz    x\base, #(UART >> 16), lsl #16
    cmp     x\base, #0xFFF
    .endm

    // The flags are as `fill` left them; else fail with \code.
    .macro flags_kept code
    b.cc    9f
    b.eq    9f
    b.mi    9f
    b.vs    9f
    b       8f
9:  mov     x0, #(\code)
    b       device_access_failed
8:
    .endm

    // Every register but \skip and \base still holds its pattern (checked
    // destructively: each is scratch afterwards), and \base still holds
    // the UART address, checked through \scratch; else fail with \code.
    .macro verify skip, base, scratch, code
    .irp r, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30
    .if (\r != \skip) && (\r != \base)
    eor     x\r, x\r, #HIGH
    cmp     x\r, #(0x100 + \r)
    b.ne    9f
    .endif
    .endr
    movz    x\scratch, #(UART >> 16), lsl #16
    cmp     x\base, x\scratch
    b.ne    9f
    b       8f
9:  mov     x0, #(\code)
    b       device_access_failed
8:
    .endm

    // Fails with \code unless x\n == \value, built in x\scratch.
    .macro expect n, scratch, value, code
    ldr     x\scratch, =\value
    cmp     x\n, x\scratch
    b.eq    8f
    mov     x0, #(\code)
    b       device_access_failed
8:
    .endm

    // All checks through data register \n, with \base holding the UART and
    // \scratch another register.
    .macro checks n, base, scratch
    fill    \base
    ldr     w\n, [x\base, #PERIPH_ID0]
    flags_kept ((5 << 8) | \n)
    verify  \n, \base, \scratch, ((1 << 8) | \n)
    expect  \n, \scratch, 0x11, ((1 << 8) | \n)

    fill    \base
    ldrsb   x\n, [x\base, #PCELL_ID3]
    flags_kept ((5 << 8) | \n)
    verify  \n, \base, \scratch, ((2 << 8) | \n)
    expect  \n, \scratch, 0xFFFFFFFFFFFFFFB1, ((2 << 8) | \n)

    fill    \base
    ldrsb   w\n, [x\base, #PCELL_ID3]
    flags_kept ((5 << 8) | \n)
    verify  \n, \base, \scratch, ((3 << 8) | \n)
    expect  \n, \scratch, 0xFFFFFFB1, ((3 << 8) | \n)

    // The store: the pattern's low word goes to UARTIMSC, whose 11 bits
    // then read 0x100 + n, and x\n itself is unchanged.
    fill    \base
    str     w\n, [x\base, #IMSC]
    flags_kept ((5 << 8) | \n)
    verify  \n, \base, \scratch, ((4 << 8) | \n)
    expect  \n, \scratch, (HIGH | (0x100 + \n)), ((4 << 8) | \n)
    ldr     w\n, [x\base, #IMSC]
    expect  \n, \scratch, (0x100 + \n), ((4 << 8) | \n)
    str     wzr, [x\base, #IMSC]
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
    checks  0, 1, 2
    checks  1, 0, 2
    .irp n, 2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30
    checks  \n, 0, 1
    .endr

    // xzr, with x1 as the base so that x0 holds a pattern: a load to xzr
    // changes no register; a store from it stores zero (a decoder that took
    // register 31 for x0 would store 0x100 instead).
    fill    1
    ldr     wzr, [x1, #PERIPH_ID0]
    flags_kept ((5 << 8) | 31)
    verify  31, 1, 2, ((1 << 8) | 31)
    fill    1
    str     w0, [x1, #IMSC]
    str     wzr, [x1, #IMSC]
    flags_kept ((5 << 8) | 31)
    verify  31, 1, 2, ((4 << 8) | 31)
    ldr     w2, [x1, #IMSC]
    cbnz    x2, 1f
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
    .ltorg
"#
);
