//! Prints one line and stops its VM with PSCI SYSTEM_OFF at once: the other
//! VMs of the system must carry on.
//!
//! Output: `psci-off: calling SYSTEM_OFF`
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use tessera_guest_sdk::{entry, println, psci};

entry!(main);

fn main(_device_tree: usize) -> ! {
    println!("psci-off: calling SYSTEM_OFF");
    psci::system_off()
}
