//! Checks that SYSTEM_RESET restarts the VM from its pristine image: a
//! static in `.data` (initial value 7) is changed to 99 before the reset and
//! must read 7 again afterwards. TESSERA_RESET_COUNT tells the boots apart.
//!
//! Output under Tessera:
//!
//! ```text
//! reset: boot with counter=7, reset count 0
//! reset: counter changed to 99, requesting SYSTEM_RESET
//! reset: boot with counter=7, reset count 1
//! reset: counter back to its initial value 7
//! ```
//!
//! If the counter is not 7 after the reset: `reset: FAIL: counter is 99
//! after reset, expected 7` and exit status 1. Natively (no reset count):
//! `reset: boot with counter=7, reset count unavailable (NOT_SUPPORTED)`,
//! `reset: no reset count (not under Tessera)`, exit 0.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use tessera_guest_sdk::tessera::reset_count;
use tessera_guest_sdk::{entry, exit, exit_status, println, psci};

entry!(main);

const INITIAL: u32 = 7;
const CHANGED: u32 = 99;

/// Lives in `.data` (it has a non-zero initial value), so only reloading the
/// image brings the 7 back. An atomic rather than a `static mut`: same
/// placement, no `unsafe`.
static COUNTER: AtomicU32 = AtomicU32::new(INITIAL);

fn main(_device_tree: usize) -> ! {
    let counter = COUNTER.load(Ordering::Relaxed);
    let count = match reset_count() {
        Ok(count) => count,
        Err(error) => {
            println!("reset: boot with counter={counter}, reset count unavailable ({error})");
            println!("reset: no reset count (not under Tessera)");
            exit(exit_status::SUCCESS)
        }
    };
    println!("reset: boot with counter={counter}, reset count {count}");
    let when = if count == 0 {
        "at first boot"
    } else {
        "after reset"
    };
    if counter != INITIAL {
        println!("reset: FAIL: counter is {counter} {when}, expected {INITIAL}");
        exit(exit_status::FAILURE)
    }
    if count == 0 {
        COUNTER.store(CHANGED, Ordering::Relaxed);
        println!(
            "reset: counter changed to {}, requesting SYSTEM_RESET",
            COUNTER.load(Ordering::Relaxed)
        );
        psci::system_reset()
    }
    println!("reset: counter back to its initial value {INITIAL}");
    exit(exit_status::SUCCESS)
}
