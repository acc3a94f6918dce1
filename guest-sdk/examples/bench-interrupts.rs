//! The interrupt benchmark guest of `make bench` (docs/benchmarks.md), run
//! like the `bench` guest: natively on QEMU `virt` at EL1 and as a Tessera
//! VM. Kept apart from `bench` so that what it adds to the guest image
//! (its own vector table, 2 KiB-aligned) does not weigh on the boot
//! figure, which the hypervisor's copy and check of the image are part of.
//!
//! 1. Times a read of the GIC distributor's GICD_TYPER as `bench` times
//!    UARTFR: under Tessera the virtual distributor answers it, natively
//!    QEMU's GICv3.
//! 2. Times the virtual timer's interrupt: 101 times, arms CNTV for a
//!    deadline, waits in WFI, and its IRQ vector reads the virtual counter
//!    first thing (after saving the two registers it needs); the figure is
//!    that reading less the deadline. Natively the GICv3 delivers PPI 27;
//!    under Tessera it reaches EL2 and comes back through a list register.
//!
//! Output (under Tessera each line carries a `[vm] ` tag):
//!
//! ```text
//! bench: cntfrq=1000000000
//! bench: calibration min=.. median=.. max=..
//! bench: mmio.gicd_read min=.. median=.. max=..
//! bench: vtimer.irq_latency min=.. median=.. max=..
//! bench: done
//! ```
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use tessera_guest_sdk::bench::{self, Summary};
use tessera_guest_sdk::{entry, exit, exit_status, println, time};

entry!(main);

/// Rounds of each timed read.
const ROUNDS: usize = 201;
/// GICD_TYPER, at the same address natively and in every Tessera VM.
const GICD_TYPER: usize = 0x0800_0004;
/// Timer interrupts timed.
const TIMER_ROUNDS: usize = 101;
/// How far ahead each deadline is set, in counter ticks (instructions):
/// enough for the guest to reach its WFI first.
const TIMER_LEAD: u64 = 20_000;

fn main(_device_tree: usize) -> ! {
    println!("bench: cntfrq={}", time::frequency());
    let mut calibration = [0_u64; ROUNDS];
    for sample in &mut calibration {
        *sample = bench::ticks_around_nothing();
    }
    let calibration = summarise(&mut calibration);
    println!("bench: calibration {calibration}");

    let mut reads = [0_u64; ROUNDS];
    for sample in &mut reads {
        // SAFETY: GICD_TYPER is read-only without side effects, at the
        // same address natively and in every VM; 4-byte aligned.
        let ticks = unsafe { bench::ticks_around_read32(GICD_TYPER) };
        *sample = ticks.saturating_sub(calibration.median);
    }
    println!("bench: mmio.gicd_read {}", summarise(&mut reads));

    let mut latencies = [0_u64; TIMER_ROUNDS];
    timer::measure(&mut latencies, TIMER_LEAD);
    println!("bench: vtimer.irq_latency {}", summarise(&mut latencies));

    println!("bench: done");
    exit(exit_status::SUCCESS)
}

/// The virtual timer's interrupt, through a GICv3 (the benchmark machine's
/// both natively and under Tessera), with a vector table of its own whose
/// IRQ entry stamps the counter before anything else.
#[cfg(target_os = "none")]
mod timer {
    use core::arch::{asm, global_asm};
    use core::sync::atomic::{AtomicU64, Ordering};

    /// The counter value the IRQ vector read, 0 until it ran.
    #[unsafe(no_mangle)]
    static BENCH_IRQ_STAMP: AtomicU64 = AtomicU64::new(0);

    const GICD: usize = 0x0800_0000;
    /// vCPU 0's redistributor: RD_base, and SGI_base 64 KiB above.
    const GICR: usize = 0x080A_0000;
    const GICR_SGI: usize = GICR + 0x1_0000;
    const VIRTUAL_TIMER_PPI: u32 = 27;

    // Only the IRQ entry of "current EL with SP_ELx" (offset 0x280) is
    // used. The table stops after it: while it is installed FIQs and
    // SErrors stay masked and nothing runs at EL0, so the later entries
    // cannot be taken, and a shorter table keeps the guest image (which
    // the hypervisor copies and checksums at boot) small. A synchronous
    // exception parks the CPU, which the host tool sees as a run that
    // never prints `bench: done`.
    global_asm!(
        r#"
        .section .text.bench_vectors, "ax"
        .balign 0x800
    bench_vectors:
        .rept 5
        .balign 0x80
    1:  wfe
        b 1b
        .endr
        .balign 0x80
        stp x0, x1, [sp, #-16]!
        mrs x0, cntvct_el0
        adrp x1, BENCH_IRQ_STAMP
        add x1, x1, :lo12:BENCH_IRQ_STAMP
        str x0, [x1]
        msr cntv_ctl_el0, xzr
        mrs x0, icc_iar1_el1
        msr icc_eoir1_el1, x0
        isb
        ldp x0, x1, [sp], #16
        eret
        "#
    );

    unsafe extern "C" {
        static bench_vectors: u8;
    }

    fn write32(address: usize, value: u32) {
        // SAFETY: a GIC register of this guest's own interface, at the
        // guest platform's fixed address.
        unsafe { (address as *mut u32).write_volatile(value) };
    }

    fn read32(address: usize) -> u32 {
        // SAFETY: as for `write32`.
        unsafe { (address as *const u32).read_volatile() }
    }

    /// Fills `samples` with timer-interrupt latencies: counter ticks from
    /// each deadline to the IRQ vector.
    pub fn measure(samples: &mut [u64], lead: u64) {
        // The distributor (affinity routing, group 1) and this vCPU's
        // redistributor: awake, PPI 27 in group 1 and enabled.
        write32(GICD, (1 << 4) | (1 << 1));
        write32(GICR + 0x14, read32(GICR + 0x14) & !(1 << 1));
        while read32(GICR + 0x14) & (1 << 2) != 0 {}
        write32(GICR_SGI + 0x80, 1 << VIRTUAL_TIMER_PPI);
        write32(GICR_SGI + 0x100, 1 << VIRTUAL_TIMER_PPI);
        let old_vectors: u64;
        // SAFETY: the system-register interface and priority mask of this
        // vCPU's own CPU interface, and its vector base, pointed at a
        // complete table in this image (restored before returning).
        unsafe {
            asm!(
                "mrs {old}, vbar_el1",
                "msr vbar_el1, {table}",
                "mrs {sre}, icc_sre_el1",
                "orr {sre}, {sre}, #1",
                "msr icc_sre_el1, {sre}",
                "isb",
                "msr icc_pmr_el1, {mask}",
                "msr icc_igrpen1_el1, {one}",
                "isb",
                old = out(reg) old_vectors,
                table = in(reg) &raw const bench_vectors,
                sre = out(reg) _,
                mask = in(reg) 0xF0_u64,
                one = in(reg) 1_u64,
            );
        }
        for sample in samples.iter_mut() {
            BENCH_IRQ_STAMP.store(0, Ordering::SeqCst);
            let deadline: u64;
            // SAFETY: arms this vCPU's own virtual timer and unmasks IRQs,
            // which the table above takes; waits for the stamp.
            unsafe {
                asm!(
                    "isb",
                    "mrs {deadline}, cntvct_el0",
                    "add {deadline}, {deadline}, {lead}",
                    "msr cntv_cval_el0, {deadline}",
                    "msr cntv_ctl_el0, {one}",
                    "isb",
                    "msr daifclr, #2",
                    deadline = out(reg) deadline,
                    lead = in(reg) lead,
                    one = in(reg) 1_u64,
                );
            }
            while BENCH_IRQ_STAMP.load(Ordering::SeqCst) == 0 {
                // SAFETY: WFI waits for the interrupt; nothing else.
                unsafe { asm!("wfi") };
            }
            // SAFETY: masks IRQs again.
            unsafe { asm!("msr daifset, #2") };
            *sample = BENCH_IRQ_STAMP
                .load(Ordering::SeqCst)
                .saturating_sub(deadline);
        }
        // SAFETY: the vector base this guest had.
        unsafe { asm!("msr vbar_el1, {old}", "isb", old = in(reg) old_vectors) };
    }
}

#[cfg(not(target_os = "none"))]
mod timer {
    pub fn measure(_samples: &mut [u64], _lead: u64) {}
}

fn summarise(samples: &mut [u64]) -> Summary {
    Summary::of(samples).unwrap_or_else(|| {
        println!("bench: FAIL: no samples");
        exit(exit_status::FAILURE)
    })
}
