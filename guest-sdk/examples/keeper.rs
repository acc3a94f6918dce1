//! Writes a pattern over part of its RAM, waits, and checks nobody changed
//! it: another VM (or the hypervisor) writing into this VM's memory shows up
//! as a changed word.
//!
//! The pattern mixes each word's address with a seed taken from the counter
//! at start-up, so two keepers in different VMs write different values even
//! at the same guest-physical addresses.
//!
//! Bootargs: `wait_ms=N` (default 200) sets the wait.
//!
//! Output:
//!
//! ```text
//! keeper: writing 1048576 bytes at 0x400a6000..0x401a6000 (seed 0x...)
//! keeper: pattern written
//! keeper: waiting 200 ms
//! keeper: memory intact (checked 1048576 bytes)
//! ```
//!
//! or `keeper: FAIL: N words changed, the first at 0x...: 0x..., expected 0x...`
//! and exit status 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use tessera_guest_sdk::bootargs::{self, Bootargs};
use tessera_guest_sdk::device_tree::DeviceTree;
use tessera_guest_sdk::{entry, exit, exit_status, memory, println, time};

entry!(main);

/// How much RAM to fill, at most.
const CHUNK_BYTES: u64 = 1024 * 1024;
const DEFAULT_WAIT_MS: u64 = 200;

fn main(_device_tree: usize) -> ! {
    let tree =
        DeviceTree::boot().unwrap_or_else(|error| fail(format_args!("no device tree: {error}")));
    let Some(ram) = tree.memory() else {
        fail(format_args!("the device tree has no /memory node"))
    };
    let wait_ms = match Bootargs::new(tree.bootargs().unwrap_or("")).get("wait_ms") {
        None => DEFAULT_WAIT_MS,
        Some(text) => bootargs::parse_number(text)
            .unwrap_or_else(|error| fail(format_args!("bad wait_ms: {error}"))),
    };

    let free = memory::largest_free_range(ram, &[memory::image_range(), tree.memory_footprint()]);
    // Whole words only.
    let start = free.start.next_multiple_of(8);
    let end = start + CHUNK_BYTES.min(free.end.saturating_sub(start)) / 8 * 8;
    if start >= end {
        fail(format_args!("no free RAM to keep"));
    }
    let seed = time::ticks().wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    println!(
        "keeper: writing {} bytes at {start:#x}..{end:#x} (seed {seed:#x})",
        end - start
    );

    for address in (start..end).step_by(8) {
        // SAFETY: the range is RAM of this VM (its device tree says so) that
        // neither the image (code, data, BSS, stacks) nor the device tree
        // occupies, so nothing else in this program uses it; it is 8-byte
        // aligned.
        unsafe { (address as *mut u64).write_volatile(pattern(seed, address)) };
    }
    println!("keeper: pattern written");
    println!("keeper: waiting {wait_ms} ms");
    time::delay_ms(wait_ms);

    let mut changed = 0_u64;
    let mut first_change = None;
    for address in (start..end).step_by(8) {
        // SAFETY: as for the writes above.
        let found = unsafe { (address as *const u64).read_volatile() };
        let expected = pattern(seed, address);
        if found != expected {
            changed += 1;
            first_change.get_or_insert((address, found, expected));
        }
    }
    match first_change {
        None => {
            println!("keeper: memory intact (checked {} bytes)", end - start);
            exit(exit_status::SUCCESS)
        }
        Some((address, found, expected)) => fail(format_args!(
            "FAIL: {changed} words changed, the first at {address:#x}: {found:#x}, expected {expected:#x}"
        )),
    }
}

/// The word kept at `address`.
fn pattern(seed: u64, address: u64) -> u64 {
    (address ^ seed)
        .wrapping_mul(0xD6E8_FEB8_6659_FD93)
        .rotate_left(17)
        ^ seed
}

fn fail(message: core::fmt::Arguments<'_>) -> ! {
    println!("keeper: {message}");
    exit(exit_status::FAILURE)
}
