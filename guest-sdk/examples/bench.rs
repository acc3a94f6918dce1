//! The benchmark guest of `make bench` (docs/benchmarks.md). Runs the same
//! way natively on QEMU `virt` at EL1 and as a Tessera VM, so that the host
//! tool can set one against the other.
//!
//! 1. Before anything else, reads the physical counter: with the benchmark
//!    QEMU flags (`-icount shift=0`, a 1 GHz counter) it holds how many
//!    instructions ran since power-on.
//! 2. Times a read of the PL011's flag register (UARTFR) 201 times, between
//!    two ISB-ordered reads of the virtual counter, less the median of 201
//!    timings with nothing between the reads. Under Tessera that read traps
//!    to the virtual UART; natively QEMU's PL011 answers it.
//!
//! Output (machine-readable; under Tessera each line carries a `[vm] ` tag):
//!
//! ```text
//! bench: boot_counter=123456
//! bench: cntfrq=1000000000
//! bench: calibration min=.. median=.. max=..
//! bench: mmio.vuart_read min=.. median=.. max=..
//! bench: done
//! ```
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use tessera_guest_sdk::bench::{self, Summary};
use tessera_guest_sdk::{entry, exit, exit_status, println, time};

entry!(main);

/// Rounds of each timed sequence.
const ROUNDS: usize = 201;
/// The PL011's flag register: reading it has no side effects.
const UART_FLAGS: usize = 0x0900_0018;

fn main(_device_tree: usize) -> ! {
    // First, before any output: the instructions run since power-on.
    let boot_counter = time::physical_ticks();
    println!("bench: boot_counter={boot_counter}");
    println!("bench: cntfrq={}", time::frequency());

    let mut calibration = [0_u64; ROUNDS];
    for sample in &mut calibration {
        *sample = bench::ticks_around_nothing();
    }
    let calibration = summarise(&mut calibration);
    println!("bench: calibration {calibration}");

    let mut reads = [0_u64; ROUNDS];
    for sample in &mut reads {
        // SAFETY: UARTFR is a read-only register without side effects, at
        // the same address natively and in every Tessera VM (guest
        // interface); 4-byte aligned.
        let ticks = unsafe { bench::ticks_around_read32(UART_FLAGS) };
        *sample = ticks.saturating_sub(calibration.median);
    }
    println!("bench: mmio.vuart_read {}", summarise(&mut reads));

    println!("bench: done");
    exit(exit_status::SUCCESS)
}

fn summarise(samples: &mut [u64]) -> Summary {
    Summary::of(samples).unwrap_or_else(|| {
        println!("bench: FAIL: no samples");
        exit(exit_status::FAILURE)
    })
}
