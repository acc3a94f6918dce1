//! The smallest guest: says hello with the RAM its device tree gives it, and
//! exits with success.
//!
//! Output: `Hello from a Tessera guest (vCPU 0), RAM 0x40000000..0x44000000`
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use tessera_guest_sdk::device_tree::DeviceTree;
use tessera_guest_sdk::{cpu, entry, exit, exit_status, println};

entry!(main);

fn main(device_tree: usize) -> ! {
    let tree = match DeviceTree::boot() {
        Ok(tree) => tree,
        Err(error) => {
            println!("hello: no device tree at {device_tree:#x}: {error}");
            exit(exit_status::FAILURE)
        }
    };
    let Some(ram) = tree.memory() else {
        println!("hello: the device tree has no /memory node");
        exit(exit_status::FAILURE)
    };
    println!(
        "Hello from a Tessera guest (vCPU {}), RAM {:#x}..{:#x}",
        cpu::index(),
        ram.start,
        ram.end
    );
    exit(exit_status::SUCCESS)
}
