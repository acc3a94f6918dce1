//! Says when it started: its virtual counter on entry, which counts from
//! when the hypervisor built its VM, in milliseconds, and the physical
//! counter, which all VMs of a machine share (so the lines of two VMs
//! show which started first). With `after-ms=N` in
//! its bootargs (the start delay its configuration gives it) it also
//! checks that it started no sooner than N ms after that, and exits with
//! failure if it came early.
//!
//! Output: `start-order: vCPU 0 started 203 ms after its VM was built, at
//! 1210 ms by the physical counter`,
//! then with `after-ms=200` `start-order: not before 200 ms, as
//! configured` (or `start-order: started before 200 ms (TOO EARLY)` and
//! exit status 1).
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use tessera_guest_sdk::bootargs;
use tessera_guest_sdk::{cpu, entry, exit, exit_status, println, time};

entry!(main);

fn main(_device_tree: usize) -> ! {
    // First, before anything else takes time.
    let (started, machine) = (time::ticks(), time::physical_ticks());
    let frequency = time::frequency();
    let started_ms = time::ticks_to_ms(started, frequency);
    println!(
        "start-order: vCPU {} started {started_ms} ms after its VM was built, at {} ms by the \
         physical counter",
        cpu::index(),
        time::ticks_to_ms(machine, frequency)
    );
    let wanted = bootargs::boot_number("after-ms").unwrap_or_else(|error| {
        println!("start-order: bad after-ms: {error}");
        exit(exit_status::FAILURE)
    });
    if let Some(wanted) = wanted {
        if started_ms < wanted {
            println!("start-order: started before {wanted} ms (TOO EARLY)");
            exit(exit_status::FAILURE)
        }
        println!("start-order: not before {wanted} ms, as configured");
    }
    exit(exit_status::SUCCESS)
}
