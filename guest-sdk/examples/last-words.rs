//! Nothing a VM said is lost when another of its vCPUs stops it.
//!
//! vCPU 0 starts vCPU 1, which prints three whole lines and then half a
//! line (no line feed) and raises a flag; vCPU 0 then calls SYSTEM_OFF
//! while vCPU 1 is still in the guest. The hypervisor must stop vCPU 1
//! and still print all of what it said — the half line too, flushed — and
//! only then report the VM stopped. Needs 2 vCPUs.
//!
//! Output:
//!
//! ```text
//! last-words: vCPU 1 line 1
//! last-words: vCPU 1 line 2
//! last-words: vCPU 1 line 3
//! last-words: vCPU 1 unfinished
//! ```
//!
//! then the hypervisor's `stopped cleanly`. Anything else:
//! `last-words: FAIL: ...` and exit status 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::sync::atomic::{AtomicBool, Ordering};

use tessera_guest_sdk::device_tree::DeviceTree;
use tessera_guest_sdk::time::Deadline;
use tessera_guest_sdk::{cpu, entry, exit, exit_status, print, println, psci};

entry!(main);

const TIMEOUT_MS: u64 = 2000;

static SAID_ALL: AtomicBool = AtomicBool::new(false);

fn main(_device_tree: usize) -> ! {
    let tree =
        DeviceTree::boot().unwrap_or_else(|error| fail(format_args!("no device tree: {error}")));
    let me = cpu::index_of(cpu::mpidr());
    let Some(target) = tree.cpu_ids().find(|&id| cpu::index_of(id) != me) else {
        fail(format_args!("the device tree lists no second vCPU"))
    };
    if let Err(error) = psci::cpu_on(target, speaker, 0) {
        fail(format_args!("CPU_ON({target:#x}) = {error}"));
    }
    let deadline = Deadline::after_ms(TIMEOUT_MS);
    while !SAID_ALL.load(Ordering::Acquire) {
        if deadline.has_passed() {
            fail(format_args!("vCPU 1 did not finish within {TIMEOUT_MS} ms"));
        }
        core::hint::spin_loop();
    }
    // vCPU 1 is still running (spinning below) with half a line in the
    // UART: this vCPU ends the VM under it.
    psci::system_off()
}

/// vCPU 1: says its piece, leaves the last line unfinished, and keeps
/// running until the hypervisor stops it.
fn speaker(_argument: usize) -> ! {
    for line in 1..=3 {
        println!("last-words: vCPU {} line {line}", cpu::index());
    }
    print!("last-words: vCPU {} unfinished", cpu::index());
    SAID_ALL.store(true, Ordering::Release);
    loop {
        core::hint::spin_loop();
    }
}

fn fail(message: core::fmt::Arguments<'_>) -> ! {
    println!("last-words: FAIL: {message}");
    exit(exit_status::FAILURE)
}
