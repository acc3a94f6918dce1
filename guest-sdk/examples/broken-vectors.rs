//! Breaks its own exception handling, then faults: VBAR_EL1 is pointed at
//! 0x0 (not RAM, not anything a guest is given) and the guest reads an
//! address with nothing behind it (`0x2000_0000`, or `address=N` from the
//! bootargs). The hypervisor cannot deliver the abort and must stop this VM
//! with a report, leaving the other VMs running.
//!
//! Output: `broken-vectors: about to fault`. Should the guest ever get past
//! the read, it prints `broken-vectors: still running (NOT CONTAINED)` and
//! exits with status 1.
//!
//! Natively (QEMU `virt`, no hypervisor) the read may well complete (the
//! default address is in QEMU's PCIe window, which reads as all-ones), and
//! if it does abort the vCPU loops through the missing vectors.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use tessera_guest_sdk::bootargs;
use tessera_guest_sdk::exception::set_vector_base;
use tessera_guest_sdk::{entry, exit, exit_status, println, probe_read};

entry!(main);

/// Neither RAM nor a device in a Tessera guest's address space.
const DEFAULT_ADDRESS: u64 = 0x2000_0000;

fn main(_device_tree: usize) -> ! {
    let address = bootargs::boot_number("address")
        .unwrap_or_else(|error| {
            println!("broken-vectors: bad address: {error}");
            exit(exit_status::FAILURE)
        })
        .unwrap_or(DEFAULT_ADDRESS);
    println!("broken-vectors: about to fault");
    // SAFETY: deliberately no vector table: the next exception cannot be
    // taken by this guest, which is what the test is about. Nothing but the
    // read below runs before it.
    unsafe { set_vector_base(0) };
    // The probe accessor is just a load here: with VBAR_EL1 at 0 the SDK's
    // handler, which would resume it, is never reached.
    let outcome = probe_read(address);
    println!("broken-vectors: still running (NOT CONTAINED), read {address:#x} gave {outcome:x?}");
    exit(exit_status::FAILURE)
}
