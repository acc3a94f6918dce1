//! The FP/SIMD state of interrupted code survives its interrupts, whatever
//! the handlers do with FP/SIMD: the SDK saves it lazily (the IRQ entry
//! turns FP/SIMD off; a handler's first FP/SIMD instruction traps, and the
//! state is saved then and restored on the way out).
//!
//! The main code loads a known pattern into all of q0..q31 and a
//! non-default FPCR, then waits in WFI with IRQs unmasked, in one assembly
//! block so that nothing else touches those registers, until the virtual
//! timer has ticked `ROUNDS` times; then it reads them all back. The tick
//! handler takes turns:
//!
//! - no FP/SIMD at all (nothing is saved);
//! - overwrites every vector register (its first FP/SIMD instruction traps
//!   and the state is saved);
//! - first a read of an address the VM was not given (a synchronous
//!   exception while FP/SIMD is off: its entry saves the state, and the
//!   probe resumes), then overwrites every vector register.
//!
//! The handlers that use FP/SIMD also leave FPCR and FPSR changed. The
//! SDK's count of lazy saves must be exactly the number of handlers that
//! used FP/SIMD or took the probe's exception: none for the others.
//!
//! Output:
//!
//! ```text
//! irq-fp-state: GICv3, 60 ticks
//! irq-fp-state: taken 60: 20 without FP/SIMD, 20 with, 20 with a probe first (aborted 20), 40 lazy saves
//! irq-fp-state: q0..q31, FPCR and FPSR as loaded: PASS
//! ```
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use tessera_guest_sdk::gic;
use tessera_guest_sdk::timer::{self, Tick, Timer};
use tessera_guest_sdk::{entry, exit, exit_status, interrupts, println, probe_read, time};

entry!(main);

const ROUNDS: u64 = 60;
const PRIORITY: u8 = 0x80;
/// An address no VM is given on any board (the guest map's hole where
/// `virt` has virtio-mmio transports): a read aborts.
const HOLE: u64 = 0x0a00_0000;
/// FPCR.DN (default NaN) and RMode = 0b01 (towards plus infinity): not
/// the reset value, so a restore that wrote anything else shows.
const FPCR_PATTERN: u64 = 1 << 25 | 0b01 << 22;
/// FPSR.QC (saturation) and IXC (inexact): cumulative flags the
/// interrupted code has raised and expects to find.
const FPSR_PATTERN: u64 = 1 << 27 | 1 << 4;

static TAKEN: AtomicU64 = AtomicU64::new(0);
static PLAIN: AtomicU64 = AtomicU64::new(0);
static WITH_FP: AtomicU64 = AtomicU64::new(0);
static WITH_PROBE: AtomicU64 = AtomicU64::new(0);
static ABORTED: AtomicU64 = AtomicU64::new(0);

fn main(_device_tree: usize) -> ! {
    let layout = gic::init_from_device_tree().unwrap_or_else(|error| {
        println!("irq-fp-state: FAIL: GIC: {error}");
        exit(exit_status::FAILURE)
    });
    println!("irq-fp-state: {}, {ROUNDS} ticks", layout.version);
    let mut loaded = [0u8; 512];
    for (index, byte) in loaded.iter_mut().enumerate() {
        *byte = (index as u8).wrapping_mul(37).wrapping_add(11);
    }
    let mut seen = [0u8; 512];
    let period = time::ms_to_ticks(1, time::frequency());
    if let Err(error) = timer::start_periodic(Timer::Virtual, period, PRIORITY, on_tick) {
        println!("irq-fp-state: FAIL: cannot start the timer: {error}");
        exit(exit_status::FAILURE)
    }
    let saves_before = interrupts::fp_state_saves();
    let (fpcr_seen, fpsr_seen) = load_wait_and_read_back(&loaded, &mut seen);
    let saves = interrupts::fp_state_saves() - saves_before;
    timer::stop(Timer::Virtual);
    println!(
        "irq-fp-state: taken {}: {} without FP/SIMD, {} with, {} with a probe first (aborted {}), {saves} lazy saves",
        TAKEN.load(Ordering::Acquire),
        PLAIN.load(Ordering::Relaxed),
        WITH_FP.load(Ordering::Relaxed),
        WITH_PROBE.load(Ordering::Relaxed),
        ABORTED.load(Ordering::Relaxed),
    );
    let mut passed = true;
    for register in 0..32 {
        let range = register * 16..register * 16 + 16;
        if seen[range.clone()] != loaded[range.clone()] {
            println!(
                "irq-fp-state: FAIL: q{register} is {:02x?}, loaded {:02x?}",
                &seen[range.clone()],
                &loaded[range]
            );
            passed = false;
        }
    }
    if fpcr_seen != FPCR_PATTERN {
        println!("irq-fp-state: FAIL: FPCR is {fpcr_seen:#x}, loaded {FPCR_PATTERN:#x}");
        passed = false;
    }
    if fpsr_seen != FPSR_PATTERN {
        println!("irq-fp-state: FAIL: FPSR is {fpsr_seen:#x}, loaded {FPSR_PATTERN:#x}");
        passed = false;
    }
    let used = WITH_FP.load(Ordering::Relaxed) + WITH_PROBE.load(Ordering::Relaxed);
    if saves != used {
        println!("irq-fp-state: FAIL: {saves} lazy saves, but {used} handlers used FP/SIMD");
        passed = false;
    }
    let each = ROUNDS / 3;
    let counts =
        [&PLAIN, &WITH_FP, &WITH_PROBE, &ABORTED].map(|count| count.load(Ordering::Relaxed));
    if counts.iter().any(|&count| count < each) {
        println!("irq-fp-state: FAIL: a kind of handler ran fewer than {each} times");
        passed = false;
    }
    if !passed {
        exit(exit_status::FAILURE)
    }
    println!("irq-fp-state: q0..q31, FPCR and FPSR as loaded: PASS");
    exit(exit_status::SUCCESS)
}

/// Loads `loaded` into q0..q31, [`FPCR_PATTERN`] into FPCR and
/// [`FPSR_PATTERN`] into FPSR, waits with IRQs unmasked until [`ROUNDS`]
/// ticks were taken, stores q0..q31 into `seen` and returns FPCR and FPSR
/// as they then are (both are put back afterwards). One assembly block:
/// nothing but the interrupts touches the registers in between.
#[cfg(target_os = "none")]
fn load_wait_and_read_back(loaded: &[u8; 512], seen: &mut [u8; 512]) -> (u64, u64) {
    let fpcr_seen: u64;
    let fpsr_seen: u64;
    // SAFETY: loads and stores only the two 512-byte buffers it is given;
    // every vector register and x9..x11 are declared clobbered; FPCR and
    // FPSR are put back to their values before the block; IRQs are unmasked
    // only inside (the SDK's handlers run meanwhile, which is the test) and
    // masked again before the block ends, as they were before it.
    unsafe {
        core::arch::asm!(
            "mrs x10, fpcr",
            "mrs x11, fpsr",
            "msr fpcr, {fpcr}",
            "msr fpsr, {fpsr}",
            "ldp q0, q1, [{loaded}, #0]",
            "ldp q2, q3, [{loaded}, #32]",
            "ldp q4, q5, [{loaded}, #64]",
            "ldp q6, q7, [{loaded}, #96]",
            "ldp q8, q9, [{loaded}, #128]",
            "ldp q10, q11, [{loaded}, #160]",
            "ldp q12, q13, [{loaded}, #192]",
            "ldp q14, q15, [{loaded}, #224]",
            "ldp q16, q17, [{loaded}, #256]",
            "ldp q18, q19, [{loaded}, #288]",
            "ldp q20, q21, [{loaded}, #320]",
            "ldp q22, q23, [{loaded}, #352]",
            "ldp q24, q25, [{loaded}, #384]",
            "ldp q26, q27, [{loaded}, #416]",
            "ldp q28, q29, [{loaded}, #448]",
            "ldp q30, q31, [{loaded}, #480]",
            "msr daifclr, #2",
            "2:",
            "wfi",
            "ldr x9, [{taken}]",
            "cmp x9, {rounds}",
            "b.lo 2b",
            "msr daifset, #2",
            "stp q0, q1, [{seen}, #0]",
            "stp q2, q3, [{seen}, #32]",
            "stp q4, q5, [{seen}, #64]",
            "stp q6, q7, [{seen}, #96]",
            "stp q8, q9, [{seen}, #128]",
            "stp q10, q11, [{seen}, #160]",
            "stp q12, q13, [{seen}, #192]",
            "stp q14, q15, [{seen}, #224]",
            "stp q16, q17, [{seen}, #256]",
            "stp q18, q19, [{seen}, #288]",
            "stp q20, q21, [{seen}, #320]",
            "stp q22, q23, [{seen}, #352]",
            "stp q24, q25, [{seen}, #384]",
            "stp q26, q27, [{seen}, #416]",
            "stp q28, q29, [{seen}, #448]",
            "stp q30, q31, [{seen}, #480]",
            "mrs {fpcr_seen}, fpcr",
            "mrs {fpsr_seen}, fpsr",
            "msr fpcr, x10",
            "msr fpsr, x11",
            fpcr = in(reg) FPCR_PATTERN,
            fpsr = in(reg) FPSR_PATTERN,
            loaded = in(reg) loaded.as_ptr(),
            seen = in(reg) seen.as_mut_ptr(),
            taken = in(reg) TAKEN.as_ptr(),
            rounds = in(reg) ROUNDS,
            fpcr_seen = out(reg) fpcr_seen,
            fpsr_seen = out(reg) fpsr_seen,
            out("x9") _, out("x10") _, out("x11") _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            out("v28") _, out("v29") _, out("v30") _, out("v31") _,
        );
    }
    (fpcr_seen, fpsr_seen)
}

// The host only compiles the examples (`entry!` never calls `main` there).
#[cfg(not(target_os = "none"))]
fn load_wait_and_read_back(_loaded: &[u8; 512], _seen: &mut [u8; 512]) -> (u64, u64) {
    unreachable!("a guest runs only on aarch64-unknown-none")
}

fn on_tick(_tick: Tick) {
    let taken = TAKEN.fetch_add(1, Ordering::AcqRel) + 1;
    if taken > ROUNDS {
        return;
    }
    match taken % 3 {
        0 => {
            PLAIN.fetch_add(1, Ordering::Relaxed);
        }
        1 => {
            WITH_FP.fetch_add(1, Ordering::Relaxed);
            clobber_vector_registers();
        }
        _ => {
            WITH_PROBE.fetch_add(1, Ordering::Relaxed);
            if probe_read(HOLE).is_err() {
                ABORTED.fetch_add(1, Ordering::Relaxed);
            }
            clobber_vector_registers();
        }
    }
}

/// Writes every vector register (the whole 128 bits) with another pattern,
/// and leaves FPCR rounding towards zero and FPSR clear: what the
/// interrupted code finds must be its own all the same. (Leaving FPCR
/// changed is what this test is about; the handler does no floating-point
/// arithmetic after it.)
#[cfg(target_os = "none")]
#[inline(never)]
fn clobber_vector_registers() {
    /// What it leaves in FPCR: RMode = 0b11 (towards zero).
    const FPCR_CLOBBER: u64 = 0b11 << 22;
    // SAFETY: writes only registers declared clobbered (the compiler keeps
    // what it needs of v8..v15 across the block), FPCR and FPSR; no memory
    // is touched.
    unsafe {
        core::arch::asm!(
            "msr fpcr, {fpcr}",
            "msr fpsr, xzr",
            "movi v0.16b, #0xa5", "movi v1.16b, #0xa5", "movi v2.16b, #0xa5", "movi v3.16b, #0xa5",
            "movi v4.16b, #0xa5", "movi v5.16b, #0xa5", "movi v6.16b, #0xa5", "movi v7.16b, #0xa5",
            "movi v8.16b, #0xa5", "movi v9.16b, #0xa5", "movi v10.16b, #0xa5", "movi v11.16b, #0xa5",
            "movi v12.16b, #0xa5", "movi v13.16b, #0xa5", "movi v14.16b, #0xa5", "movi v15.16b, #0xa5",
            "movi v16.16b, #0xa5", "movi v17.16b, #0xa5", "movi v18.16b, #0xa5", "movi v19.16b, #0xa5",
            "movi v20.16b, #0xa5", "movi v21.16b, #0xa5", "movi v22.16b, #0xa5", "movi v23.16b, #0xa5",
            "movi v24.16b, #0xa5", "movi v25.16b, #0xa5", "movi v26.16b, #0xa5", "movi v27.16b, #0xa5",
            "movi v28.16b, #0xa5", "movi v29.16b, #0xa5", "movi v30.16b, #0xa5", "movi v31.16b, #0xa5",
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            out("v28") _, out("v29") _, out("v30") _, out("v31") _,
            fpcr = in(reg) FPCR_CLOBBER,
            options(nomem, nostack, preserves_flags),
        );
    }
}

#[cfg(not(target_os = "none"))]
fn clobber_vector_registers() {
    unreachable!("a guest runs only on aarch64-unknown-none")
}
