//! Checks that a guest owns its CPU's performance monitors
//! (docs/ARCHITECTURE.md, "Trap configuration"):
//!
//! - ID_AA64DFR0_EL1.PMUVer says PMUv3 (neither none nor IMPLEMENTATION
//!   DEFINED), and PMCR_EL0.N gives EL1 at least one event counter;
//! - the PMU starts quiet: counting, counters and overflow interrupts
//!   disabled, no overflow flag set, every counter zero, EL0 access off,
//!   PMSELR_EL0, PMCCFILTR_EL0 and the event types used here zero;
//! - the cycle counter (PMCCNTR_EL0) and event counter 0 counting
//!   CPU_CYCLES (0x11) both advance across a loop of known length, and, if
//!   the CPU implements INST_RETIRED (0x08, PMCEID0_EL0 bit 8; QEMU only
//!   with -icount), event counter 1 counts at least the loop's
//!   instructions;
//! - the cycle counter's overflow interrupt, PPI 23 (the `pmu` node of the
//!   device tree), is taken exactly once when the counter, preset near the
//!   top of its 64 bits, wraps, and its handler finds the overflow flag;
//! - on a board that signals each core's PMU overflow on an SPI of its own
//!   (the BCM2711), that SPI reaches the guest as PPI 23 too: Tessera's
//!   test images raise it on request (QEMU raises the PPI instead), and
//!   the guest takes PPI 23 once per raise, with no overflow flag (the
//!   counters are off), which it can only do three times over if its
//!   deactivation of each ended the physical SPI;
//! - under Tessera, the first boot leaves the PMU counting with an
//!   overflow flag, EL0 access, PMSELR_EL0 and an event type set, and asks
//!   for SYSTEM_RESET; the second boot must find it quiet again.
//!
//! Output under Tessera (two boots), then exit status 0:
//!
//! ```text
//! pmu: boot 0
//! pmu: ID_AA64DFR0_EL1.PMUVer 0x1 (PMUv3), 6 event counters
//! pmu: starts disabled with no overflow and zero counters
//! pmu: PMCCNTR_EL0 advanced by 412345 across 100000 iterations
//! pmu: CPU_CYCLES event counter advanced by 412345
//! pmu: INST_RETIRED not implemented (PMCEID0_EL0 bit 8 clear)
//! pmu: overflow interrupt INTID 23 taken 1 time(s), overflow flag set in the handler
//! pmu: this core's PMU SPI, INTID 49, raised 3 time(s): PPI 23 taken 3 time(s), no overflow flag
//! pmu: leaving the PMU counting and flagged, requesting SYSTEM_RESET
//! pmu: boot 1
//! ...
//! pmu: PASS
//! ```
//!
//! (or `pmu: INST_RETIRED counted N, at least 200000`; `pmu: no per-core
//! PMU SPI on this board` on QEMU `virt`). Each check that
//! fails prints `pmu: FAIL: ...` and the VM exits with status 1. Natively
//! (no reset count) it runs one boot's checks and exits 0.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};
use tessera_guest_sdk::tessera::{reset_count, test_raise_pmu_spi};

use tessera_guest_sdk::gic::{self, Config, Interrupt};
use tessera_guest_sdk::{entry, exit, exit_status, interrupts, println, psci};

entry!(main);

/// Iterations of the counted loop; each retires two instructions.
const ITERATIONS: u64 = 100_000;
const INSTRUCTIONS_PER_ITERATION: u64 = 2;

const CPU_CYCLES: u64 = 0x11;
const INST_RETIRED: u64 = 0x08;

/// PMCR_EL0.E, and PMCNTENSET_EL0/PMOVSSET_EL0 bit of the cycle counter.
const ENABLE: u64 = 1;
const CYCLE_COUNTER: u64 = 1 << 31;

/// Reads a system register named by a literal.
#[cfg(target_os = "none")]
macro_rules! read_register {
    ($name:literal) => {{
        let value: u64;
        // SAFETY: reading a performance monitor or ID register has no side
        // effects.
        unsafe {
            core::arch::asm!(
                concat!("isb\nmrs {}, ", $name),
                out(reg) value,
                options(nomem, nostack, preserves_flags)
            )
        };
        value
    }};
}

/// Writes a system register named by a literal.
#[cfg(target_os = "none")]
macro_rules! write_register {
    ($name:literal, $value:expr) => {{
        let value: u64 = $value;
        // SAFETY: the performance monitors change nothing this program
        // relies on other than the values it reads back.
        unsafe {
            core::arch::asm!(
                concat!("msr ", $name, ", {}\nisb"),
                in(reg) value,
                options(nomem, nostack, preserves_flags)
            )
        };
    }};
}

// The host only compiles the examples (`entry!` never calls `main` there).
#[cfg(not(target_os = "none"))]
macro_rules! read_register {
    ($name:literal) => {
        host_only()
    };
}
#[cfg(not(target_os = "none"))]
macro_rules! write_register {
    ($name:literal, $value:expr) => {{
        let _: u64 = $value;
        host_only();
    }};
}
#[cfg(not(target_os = "none"))]
fn host_only() -> u64 {
    unreachable!("a guest runs only on aarch64-unknown-none")
}

fn main(_device_tree: usize) -> ! {
    let boot = reset_count().ok();
    match boot {
        Some(count) => println!("pmu: boot {count}"),
        None => println!("pmu: no reset count (not under Tessera): one boot"),
    }
    let counters = check_identification();
    check_quiet_start(counters);
    check_counting(counters);
    check_overflow_interrupt();
    check_core_spi();
    if boot == Some(0) {
        leave_dirty();
        println!("pmu: leaving the PMU counting and flagged, requesting SYSTEM_RESET");
        psci::system_reset()
    }
    println!("pmu: PASS");
    exit(exit_status::SUCCESS)
}

/// The PMU's overflow interrupt: PPI 7, INTID 23.
const PMU_INTID: u32 = 23;
/// PMCR_EL0.LC: the cycle counter overflows at 64 bits, not 32.
const LONG_CYCLE_COUNTER: u64 = 1 << 6;
/// Overflow interrupts the handler took, and how many of them found the
/// cycle counter's overflow flag set.
static OVERFLOWS: AtomicU32 = AtomicU32::new(0);
static FLAGGED: AtomicU32 = AtomicU32::new(0);

fn on_overflow(_interrupt: Interrupt) {
    // The cause goes: counting off, the flag and the interrupt cleared.
    write_register!("pmcr_el0", read_register!("pmcr_el0") & !ENABLE);
    if read_register!("pmovsset_el0") & CYCLE_COUNTER != 0 {
        FLAGGED.fetch_add(1, Ordering::Relaxed);
    }
    write_register!("pmovsclr_el0", CYCLE_COUNTER);
    write_register!("pmintenclr_el1", CYCLE_COUNTER);
    OVERFLOWS.fetch_add(1, Ordering::Relaxed);
}

/// Presets the cycle counter a few thousand cycles below the top of its
/// 64 bits, enables its overflow interrupt, and waits for it.
fn check_overflow_interrupt() {
    if let Err(error) = gic::init_from_device_tree()
        .map(|_| ())
        .and_then(|()| gic::register_handler(PMU_INTID, on_overflow))
        .and_then(|()| {
            gic::enable_interrupt(
                PMU_INTID,
                Config {
                    priority: 0x80,
                    trigger: None,
                },
            )
        })
    {
        fail(format_args!("cannot set up the PMU interrupt: {error}"));
    }
    write_register!("pmcr_el0", read_register!("pmcr_el0") | LONG_CYCLE_COUNTER);
    write_register!("pmccntr_el0", u64::MAX - 20_000);
    write_register!("pmovsclr_el0", CYCLE_COUNTER);
    write_register!("pmintenset_el1", CYCLE_COUNTER);
    write_register!("pmcntenset_el0", CYCLE_COUNTER);
    interrupts::enable();
    write_register!("pmcr_el0", read_register!("pmcr_el0") | ENABLE);
    let mut spins = 0_u64;
    while OVERFLOWS.load(Ordering::Relaxed) == 0 && spins < 50_000_000 {
        spins += 1;
        core::hint::spin_loop();
    }
    // A second one would come only if the handler failed to clear its cause.
    counted_loop(10_000);
    interrupts::disable();
    write_register!(
        "pmcr_el0",
        read_register!("pmcr_el0") & !(ENABLE | LONG_CYCLE_COUNTER)
    );
    write_register!("pmcntenclr_el0", u64::MAX);
    write_register!("pmintenclr_el1", u64::MAX);
    write_register!("pmovsclr_el0", u64::MAX);
    let (taken, flagged) = (
        OVERFLOWS.load(Ordering::Relaxed),
        FLAGGED.load(Ordering::Relaxed),
    );
    if taken != 1 || flagged != 1 {
        fail(format_args!(
            "overflow interrupt taken {taken} time(s), {flagged} with the flag set (expected 1 and 1)"
        ));
    }
    println!(
        "pmu: overflow interrupt INTID {PMU_INTID} taken {taken} time(s), overflow flag set in the handler"
    );
}

/// How often [`check_core_spi`] raises the SPI.
const SPI_RAISES: u32 = 3;

/// This core's PMU SPI, raised by the hypervisor on request, is taken as
/// PPI 23 each time (see the module's documentation). The PMU interrupt
/// stays enabled from [`check_overflow_interrupt`], its counters off.
fn check_core_spi() {
    let flagged_before = FLAGGED.load(Ordering::Relaxed);
    let mut spi = None;
    for raise in 0..SPI_RAISES {
        let before = OVERFLOWS.load(Ordering::Relaxed);
        match test_raise_pmu_spi() {
            Ok(intid) => spi = Some(intid),
            Err(_) if raise == 0 => {
                println!("pmu: no per-core PMU SPI on this board");
                return;
            }
            Err(error) => fail(format_args!(
                "raise {raise} of the PMU SPI refused: {error}"
            )),
        }
        interrupts::enable();
        let mut spins = 0_u64;
        while OVERFLOWS.load(Ordering::Relaxed) == before && spins < 50_000_000 {
            spins += 1;
            core::hint::spin_loop();
        }
        // Time for a second, which must not come.
        counted_loop(10_000);
        interrupts::disable();
        let taken = OVERFLOWS.load(Ordering::Relaxed) - before;
        if taken != 1 {
            fail(format_args!(
                "raise {raise} of the PMU SPI: PPI {PMU_INTID} taken {taken} time(s), expected 1"
            ));
        }
    }
    let flagged = FLAGGED.load(Ordering::Relaxed) - flagged_before;
    if flagged != 0 {
        fail(format_args!(
            "{flagged} overflow flag(s) with the counters off"
        ));
    }
    let intid = spi.unwrap_or_default();
    println!(
        "pmu: this core's PMU SPI, INTID {intid}, raised {SPI_RAISES} time(s): PPI {PMU_INTID} taken {SPI_RAISES} time(s), no overflow flag"
    );
}

fn fail(message: core::fmt::Arguments) -> ! {
    println!("pmu: FAIL: {message}");
    exit(exit_status::FAILURE)
}

/// The PMU version and the number of event counters EL1 has.
fn check_identification() -> u64 {
    let version = (read_register!("id_aa64dfr0_el1") >> 8) & 0xF;
    if version == 0 || version == 0xF {
        fail(format_args!(
            "ID_AA64DFR0_EL1.PMUVer {version:#x}: no PMUv3"
        ));
    }
    let counters = (read_register!("pmcr_el0") >> 11) & 0x1F;
    if counters == 0 {
        fail(format_args!("PMCR_EL0.N is 0: no event counter"));
    }
    println!("pmu: ID_AA64DFR0_EL1.PMUVer {version:#x} (PMUv3), {counters} event counters");
    counters
}

fn check_quiet_start(counters: u64) {
    let readings = [
        ("PMCR_EL0.E", read_register!("pmcr_el0") & ENABLE),
        ("PMCNTENSET_EL0", read_register!("pmcntenset_el0")),
        ("PMINTENSET_EL1", read_register!("pmintenset_el1")),
        ("PMOVSSET_EL0", read_register!("pmovsset_el0")),
        ("PMUSERENR_EL0", read_register!("pmuserenr_el0")),
        ("PMSELR_EL0", read_register!("pmselr_el0")),
        ("PMCCFILTR_EL0", read_register!("pmccfiltr_el0")),
        ("PMCCNTR_EL0", read_register!("pmccntr_el0")),
        ("PMEVTYPER0_EL0", read_register!("pmevtyper0_el0")),
        ("PMEVCNTR0_EL0", read_register!("pmevcntr0_el0")),
    ];
    for (name, value) in readings {
        if value != 0 {
            fail(format_args!("{name} is {value:#x} at start"));
        }
    }
    if counters > 1 {
        let (event_type, count) = (
            read_register!("pmevtyper1_el0"),
            read_register!("pmevcntr1_el0"),
        );
        if event_type != 0 || count != 0 {
            fail(format_args!(
                "PMEVTYPER1_EL0 {event_type:#x}, PMEVCNTR1_EL0 {count:#x} at start"
            ));
        }
    }
    println!("pmu: starts disabled with no overflow and zero counters");
}

/// Counts the loop with the cycle counter, CPU_CYCLES in event counter 0
/// and, where implemented, INST_RETIRED in event counter 1.
fn check_counting(counters: u64) {
    let instructions = counters > 1 && read_register!("pmceid0_el0") & (1 << INST_RETIRED) != 0;
    write_register!("pmevtyper0_el0", CPU_CYCLES);
    let mut enabled = CYCLE_COUNTER | 1;
    if instructions {
        write_register!("pmevtyper1_el0", INST_RETIRED);
        enabled |= 1 << 1;
    }
    write_register!("pmcntenset_el0", enabled);
    let readings = || {
        let retired = if instructions {
            read_register!("pmevcntr1_el0")
        } else {
            0
        };
        [
            read_register!("pmccntr_el0"),
            read_register!("pmevcntr0_el0"),
            retired,
        ]
    };
    let before = readings();
    write_register!("pmcr_el0", read_register!("pmcr_el0") | ENABLE);
    counted_loop(ITERATIONS);
    write_register!("pmcr_el0", read_register!("pmcr_el0") & !ENABLE);
    let after = readings();
    let cycles = after[0].wrapping_sub(before[0]);
    if cycles == 0 {
        fail(format_args!("PMCCNTR_EL0 did not advance"));
    }
    println!("pmu: PMCCNTR_EL0 advanced by {cycles} across {ITERATIONS} iterations");
    let events = (after[1] as u32).wrapping_sub(before[1] as u32);
    if events == 0 {
        fail(format_args!("the CPU_CYCLES event counter did not advance"));
    }
    println!("pmu: CPU_CYCLES event counter advanced by {events}");
    if instructions {
        let retired = u64::from((after[2] as u32).wrapping_sub(before[2] as u32));
        let least = ITERATIONS * INSTRUCTIONS_PER_ITERATION;
        if retired < least {
            fail(format_args!(
                "INST_RETIRED counted {retired}, fewer than the loop's {least}"
            ));
        }
        println!("pmu: INST_RETIRED counted {retired}, at least {least}");
    } else {
        println!("pmu: INST_RETIRED not implemented (PMCEID0_EL0 bit 8 clear)");
    }
    write_register!("pmcntenclr_el0", u64::MAX);
}

/// Leaves behind what a reset must clear: counting on, an overflow flag,
/// EL0 access, a selected counter and an event type. (No overflow
/// interrupt is enabled: this program has no handler for it.)
fn leave_dirty() {
    write_register!("pmevtyper0_el0", CPU_CYCLES);
    // 31 selects the cycle counter's filter, which every PMUv3 has.
    write_register!("pmselr_el0", 31);
    write_register!("pmuserenr_el0", 1);
    write_register!("pmovsset_el0", CYCLE_COUNTER);
    write_register!("pmcntenset_el0", CYCLE_COUNTER | 1);
    write_register!("pmcr_el0", read_register!("pmcr_el0") | ENABLE);
}

/// Runs `iterations` times a two-instruction loop (SUBS, B.NE).
#[cfg(target_os = "none")]
fn counted_loop(iterations: u64) {
    // SAFETY: the loop only decrements a scratch register.
    unsafe {
        core::arch::asm!(
            "1:",
            "subs {left}, {left}, #1",
            "b.ne 1b",
            left = inout(reg) iterations => _,
            options(nomem, nostack)
        );
    }
}

#[cfg(not(target_os = "none"))]
fn counted_loop(_iterations: u64) {
    unreachable!("a guest runs only on aarch64-unknown-none")
}
