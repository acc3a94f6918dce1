//! Checks what the system registers Tessera traps look like from inside a
//! VM (docs/ARCHITECTURE.md, "Trap configuration"):
//!
//! - the performance monitors (PMCR_EL0, PMCNTENSET_EL0, PMCCNTR_EL0), the
//!   debug registers (MDSCR_EL1, DBGBVR0_EL1) and the OS lock status
//!   (OSLSR_EL1) read as zero, and writes to them are ignored;
//! - an implementation-defined register (S3_1_C11_C0_2, L2CTLR_EL1 on the
//!   Cortex-A72) reads as zero;
//! - the ID registers are not trapped: MIDR_EL1 reads the real CPU's.
//!
//! Output, then exit status 0:
//!
//! ```text
//! system-registers: performance monitor, debug and OS lock registers read as zero and ignore writes
//! system-registers: implementation-defined L2CTLR_EL1 reads as zero
//! system-registers: MIDR_EL1 0x410fd083
//! ```
//!
//! Each register that does not behave prints `system-registers: FAIL: ...`
//! and the VM exits with status 1. (Natively, without Tessera, the first two
//! checks fail: QEMU gives EL1 a real PMU and L2CTLR_EL1.)
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use tessera_guest_sdk::{entry, exit, exit_status, println};

entry!(main);

fn main(_device_tree: usize) -> ! {
    let mut failed = false;
    for (name, value) in trapped_register_readings() {
        if value != 0 {
            println!("system-registers: FAIL: {name} reads {value:#x} after a write");
            failed = true;
        }
    }
    if failed {
        exit(exit_status::FAILURE)
    }
    println!(
        "system-registers: performance monitor, debug and OS lock registers read as zero and ignore writes"
    );
    let l2ctlr = implementation_defined_register();
    if l2ctlr != 0 {
        println!("system-registers: FAIL: L2CTLR_EL1 reads {l2ctlr:#x}");
        exit(exit_status::FAILURE)
    }
    println!("system-registers: implementation-defined L2CTLR_EL1 reads as zero");
    println!("system-registers: MIDR_EL1 {:#x}", main_id());
    exit(exit_status::SUCCESS)
}

/// Writes something that would show into each register, then reads each.
#[cfg(target_os = "none")]
fn trapped_register_readings() -> [(&'static str, u64); 6] {
    let (pmcr, pmcntenset, pmccntr, mdscr, dbgbvr0, oslsr): (u64, u64, u64, u64, u64, u64);
    // SAFETY: enabling the cycle counter, setting MDSCR_EL1.MDE and a
    // breakpoint value with its control register left disabled change
    // nothing this program relies on; under Tessera the writes are ignored.
    unsafe {
        core::arch::asm!(
            "mov {scratch}, #1",
            "msr pmcr_el0, {scratch}",          // E: enable the counters
            "mov {scratch}, #(1 << 31)",
            "msr pmcntenset_el0, {scratch}",    // C: the cycle counter
            "mov {scratch}, #(1 << 15)",
            "msr mdscr_el1, {scratch}",         // MDE: monitor debug events
            "mov {scratch}, #0x40000000",
            "msr dbgbvr0_el1, {scratch}",
            "isb",
            "mrs {pmcr}, pmcr_el0",
            "mrs {pmcntenset}, pmcntenset_el0",
            "mrs {pmccntr}, pmccntr_el0",
            "mrs {mdscr}, mdscr_el1",
            "mrs {dbgbvr0}, dbgbvr0_el1",
            "mrs {oslsr}, oslsr_el1",
            scratch = out(reg) _,
            pmcr = out(reg) pmcr,
            pmcntenset = out(reg) pmcntenset,
            pmccntr = out(reg) pmccntr,
            mdscr = out(reg) mdscr,
            dbgbvr0 = out(reg) dbgbvr0,
            oslsr = out(reg) oslsr,
            options(nostack, preserves_flags)
        );
    }
    [
        ("PMCR_EL0", pmcr),
        ("PMCNTENSET_EL0", pmcntenset),
        ("PMCCNTR_EL0", pmccntr),
        ("MDSCR_EL1", mdscr),
        ("DBGBVR0_EL1", dbgbvr0),
        ("OSLSR_EL1", oslsr),
    ]
}

/// L2CTLR_EL1 on the Cortex-A72: op0 3, op1 1, CRn 11, CRm 0, op2 2.
#[cfg(target_os = "none")]
fn implementation_defined_register() -> u64 {
    let value: u64;
    // SAFETY: reading a register has no side effects here.
    unsafe {
        core::arch::asm!("mrs {}, s3_1_c11_c0_2", out(reg) value, options(nomem, nostack, preserves_flags));
    }
    value
}

#[cfg(target_os = "none")]
fn main_id() -> u64 {
    let value: u64;
    // SAFETY: reading MIDR_EL1 has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, midr_el1", out(reg) value, options(nomem, nostack, preserves_flags));
    }
    value
}

// The host only compiles the examples (`entry!` never calls `main` there).
#[cfg(not(target_os = "none"))]
fn trapped_register_readings() -> [(&'static str, u64); 6] {
    unreachable!("a guest runs only on aarch64-unknown-none")
}
#[cfg(not(target_os = "none"))]
fn implementation_defined_register() -> u64 {
    unreachable!("a guest runs only on aarch64-unknown-none")
}
#[cfg(not(target_os = "none"))]
fn main_id() -> u64 {
    unreachable!("a guest runs only on aarch64-unknown-none")
}
