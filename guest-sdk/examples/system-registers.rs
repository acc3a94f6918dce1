//! Checks what the system registers Tessera traps, and those it leaves to
//! the guest, look like from inside a VM (docs/ARCHITECTURE.md, "Trap
//! configuration"):
//!
//! - the performance monitors are the guest's own (its CPU has a PMUv3):
//!   PMCR_EL0.E and PMCNTENSET_EL0.C read back as written and PMCCNTR_EL0
//!   counts (the `pmu` example checks counting and the PMU's reset);
//! - an implementation-defined register (S3_1_C11_C0_2, L2CTLR_EL1 on the
//!   Cortex-A72) reads as zero;
//! - the debug registers are the guest's own: MDSCR_EL1 starts at zero and
//!   it and DBGBVR0_EL1 read back what was written, and the OS lock is
//!   implemented (OSLSR_EL1.OSLM != 0);
//! - the ID registers are not trapped: MIDR_EL1 reads the real CPU's.
//!
//! Output, then exit status 0:
//!
//! ```text
//! system-registers: performance monitor registers are the guest's own (PMCR_EL0.E and PMCNTENSET_EL0.C read back, PMCCNTR_EL0 counts)
//! system-registers: implementation-defined L2CTLR_EL1 reads as zero
//! system-registers: debug registers are the guest's own (MDSCR_EL1 0x8000, OSLSR_EL1 0xa)
//! system-registers: MIDR_EL1 0x410fd083
//! ```
//!
//! Each register that does not behave prints `system-registers: FAIL: ...`
//! and the VM exits with status 1. (Natively, without Tessera, the second
//! check fails: QEMU gives EL1 a real L2CTLR_EL1.)
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use tessera_guest_sdk::{entry, exit, exit_status, println};

entry!(main);

fn main(_device_tree: usize) -> ! {
    let mdscr_at_start = debug_control();
    const ENABLE: u64 = 1;
    const CYCLE_COUNTER: u64 = 1 << 31;
    let [pmcr, pmcntenset, pmccntr] = performance_monitor_readings();
    if pmcr & ENABLE == 0 || pmcntenset & CYCLE_COUNTER == 0 || pmccntr == 0 {
        println!(
            "system-registers: FAIL: performance monitors: PMCR_EL0 {pmcr:#x}, \
             PMCNTENSET_EL0 {pmcntenset:#x} after enabling the cycle counter, \
             PMCCNTR_EL0 {pmccntr:#x}"
        );
        exit(exit_status::FAILURE)
    }
    println!(
        "system-registers: performance monitor registers are the guest's own \
         (PMCR_EL0.E and PMCNTENSET_EL0.C read back, PMCCNTR_EL0 counts)"
    );
    let l2ctlr = implementation_defined_register();
    if l2ctlr != 0 {
        println!("system-registers: FAIL: L2CTLR_EL1 reads {l2ctlr:#x}");
        exit(exit_status::FAILURE)
    }
    println!("system-registers: implementation-defined L2CTLR_EL1 reads as zero");
    let (mdscr, breakpoint, oslsr) = debug_readings();
    const MDE: u64 = 1 << 15;
    const BREAKPOINT: u64 = 0x4000_0000;
    const OS_LOCK_MODEL: u64 = 0b1001;
    if mdscr_at_start != 0 || mdscr != MDE || breakpoint != BREAKPOINT || oslsr & OS_LOCK_MODEL == 0
    {
        println!(
            "system-registers: FAIL: debug registers: MDSCR_EL1 {mdscr_at_start:#x} at start, \
             {mdscr:#x} after writing {MDE:#x}; DBGBVR0_EL1 {breakpoint:#x} after writing \
             {BREAKPOINT:#x}; OSLSR_EL1 {oslsr:#x}"
        );
        exit(exit_status::FAILURE)
    }
    println!(
        "system-registers: debug registers are the guest's own (MDSCR_EL1 {mdscr:#x}, OSLSR_EL1 {oslsr:#x})"
    );
    // Leave monitor debug off again.
    set_debug_control(0);
    println!("system-registers: MIDR_EL1 {:#x}", main_id());
    exit(exit_status::SUCCESS)
}

/// Enables the cycle counter, lets it run over a short loop, reads
/// PMCR_EL0, PMCNTENSET_EL0 and PMCCNTR_EL0, and turns it off again.
#[cfg(target_os = "none")]
fn performance_monitor_readings() -> [u64; 3] {
    let (pmcr, pmcntenset, pmccntr): (u64, u64, u64);
    // SAFETY: the cycle counter, running for a moment, changes nothing
    // this program relies on.
    unsafe {
        core::arch::asm!(
            "mov {scratch}, #1",
            "msr pmcr_el0, {scratch}",          // E: enable the counters
            "mov {scratch}, #(1 << 31)",
            "msr pmcntenset_el0, {scratch}",    // C: the cycle counter
            "isb",
            "mov {scratch}, #1000",
            "1:",
            "subs {scratch}, {scratch}, #1",
            "b.ne 1b",
            "isb",
            "mrs {pmcr}, pmcr_el0",
            "mrs {pmcntenset}, pmcntenset_el0",
            "mrs {pmccntr}, pmccntr_el0",
            "msr pmcr_el0, xzr",
            "mov {scratch}, #(1 << 31)",
            "msr pmcntenclr_el0, {scratch}",
            "isb",
            scratch = out(reg) _,
            pmcr = out(reg) pmcr,
            pmcntenset = out(reg) pmcntenset,
            pmccntr = out(reg) pmccntr,
            options(nostack)
        );
    }
    [pmcr, pmcntenset, pmccntr]
}

#[cfg(target_os = "none")]
fn debug_control() -> u64 {
    let value: u64;
    // SAFETY: reading MDSCR_EL1 has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, mdscr_el1", out(reg) value, options(nomem, nostack, preserves_flags));
    }
    value
}

#[cfg(target_os = "none")]
fn set_debug_control(value: u64) {
    // SAFETY: with no breakpoint or watchpoint enabled in its control
    // register, MDSCR_EL1 changes nothing this program relies on.
    unsafe {
        core::arch::asm!("msr mdscr_el1, {}", "isb", in(reg) value, options(nostack, preserves_flags));
    }
}

/// Sets MDSCR_EL1.MDE and a breakpoint value (its control register left
/// disabled), then reads them and OSLSR_EL1 back.
#[cfg(target_os = "none")]
fn debug_readings() -> (u64, u64, u64) {
    set_debug_control(1 << 15);
    let (breakpoint, oslsr): (u64, u64);
    // SAFETY: a breakpoint value with its control register disabled
    // changes nothing.
    unsafe {
        core::arch::asm!(
            "mov {scratch}, #0x40000000",
            "msr dbgbvr0_el1, {scratch}",
            "isb",
            "mrs {breakpoint}, dbgbvr0_el1",
            "mrs {oslsr}, oslsr_el1",
            scratch = out(reg) _,
            breakpoint = out(reg) breakpoint,
            oslsr = out(reg) oslsr,
            options(nostack, preserves_flags)
        );
    }
    (debug_control(), breakpoint, oslsr)
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
fn performance_monitor_readings() -> [u64; 3] {
    unreachable!("a guest runs only on aarch64-unknown-none")
}
#[cfg(not(target_os = "none"))]
fn debug_control() -> u64 {
    unreachable!("a guest runs only on aarch64-unknown-none")
}
#[cfg(not(target_os = "none"))]
fn set_debug_control(_value: u64) {
    unreachable!("a guest runs only on aarch64-unknown-none")
}
#[cfg(not(target_os = "none"))]
fn debug_readings() -> (u64, u64, u64) {
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
