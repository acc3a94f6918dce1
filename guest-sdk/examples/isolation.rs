//! Probes addresses outside its own RAM and checks that each read and each
//! write takes a synchronous external abort at exactly that address.
//!
//! The addresses come from the bootargs (syntax: [`tessera_guest_sdk::bootargs`]):
//! `probe=0x48000000,0x40000000-8,0x0a000000`. Addresses must be 8-byte
//! aligned (the probes are 64-bit accesses, and with the MMU off a
//! misaligned one takes an alignment fault instead) and outside this VM's
//! RAM.
//!
//! Output, one line per access, then a verdict:
//!
//! ```text
//! isolation: RAM 0x40000000..0x44000000, probing 0x48000000,0x0a000000
//! probe read 0x48000000 -> external abort (ESR 0x96000010, FAR 0x48000000)
//! probe write 0x48000000 -> external abort (ESR 0x96000050, FAR 0x48000000)
//! ...
//! isolation: all 4 probes aborted
//! ```
//!
//! An access that completes prints `-> value 0x... (NOT ISOLATED)` or
//! `-> completed (NOT ISOLATED)`; any other abort prints its description and
//! `(NOT AN EXTERNAL ABORT AT 0x...)`; the verdict is then
//! `isolation: FAIL: ...` and the VM exits with status 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::ops::Range;

use tessera_guest_sdk::bootargs::{self, Bootargs};
use tessera_guest_sdk::device_tree::DeviceTree;
use tessera_guest_sdk::{Abort, entry, exit, exit_status, println, probe_read, probe_write};

entry!(main);

/// What the write probes store: "TESSERA!" in ASCII, easy to spot in a dump
/// of another VM's memory.
const PATTERN: u64 = u64::from_be_bytes(*b"TESSERA!");

fn main(_device_tree: usize) -> ! {
    let tree =
        DeviceTree::boot().unwrap_or_else(|error| fail(format_args!("no device tree: {error}")));
    let Some(ram) = tree.memory() else {
        fail(format_args!("the device tree has no /memory node"))
    };
    let bootargs = Bootargs::new(tree.bootargs().unwrap_or(""));
    let Some(list) = bootargs.get("probe").filter(|list| !list.is_empty()) else {
        fail(format_args!(
            "no probe=ADDRESS[,ADDRESS...] in the bootargs"
        ))
    };
    println!(
        "isolation: RAM {:#x}..{:#x}, probing {list}",
        ram.start, ram.end
    );

    let mut probes = 0_u32;
    let mut failures = 0_u32;
    for address in bootargs::address_list(list) {
        let address = match address {
            Ok(address) => address,
            Err(error) => {
                println!("isolation: bad probe address {error}");
                failures += 1;
                continue;
            }
        };
        if let Err(reason) = check_probe_address(address, &ram) {
            println!("isolation: cannot probe {address:#x}: {reason}");
            failures += 1;
            continue;
        }
        probes += 2;
        if !expect_read_abort(address) {
            failures += 1;
        }
        if !expect_write_abort(address) {
            failures += 1;
        }
    }

    if failures == 0 {
        println!("isolation: all {probes} probes aborted");
        exit(exit_status::SUCCESS)
    } else {
        fail(format_args!(
            "FAIL: {failures} of the probe addresses or accesses did not abort as expected"
        ))
    }
}

fn check_probe_address(address: u64, ram: &Range<u64>) -> Result<(), &'static str> {
    if !address.is_multiple_of(8) {
        Err("not 8-byte aligned")
    } else if ram.contains(&address) {
        Err("it is inside this VM's own RAM")
    } else {
        Ok(())
    }
}

fn expect_read_abort(address: u64) -> bool {
    match probe_read(address) {
        Ok(value) => {
            println!("probe read {address:#x} -> value {value:#x} (NOT ISOLATED)");
            false
        }
        Err(abort) => report_abort("read", address, abort),
    }
}

fn expect_write_abort(address: u64) -> bool {
    // SAFETY: `check_probe_address` made sure the address is outside this
    // VM's RAM, so the store cannot hit this program's image, stacks or
    // device tree; if it completes, that is the isolation failure this guest
    // exists to detect.
    match unsafe { probe_write(address, PATTERN) } {
        Ok(()) => {
            println!("probe write {address:#x} -> completed (NOT ISOLATED)");
            false
        }
        Err(abort) => report_abort("write", address, abort),
    }
}

fn report_abort(access: &str, address: u64, abort: Abort) -> bool {
    if abort.is_external_abort_at(address) {
        println!(
            "probe {access} {address:#x} -> external abort (ESR {:#x}, FAR {:#x})",
            abort.esr, abort.far
        );
        true
    } else {
        println!("probe {access} {address:#x} -> {abort} (NOT AN EXTERNAL ABORT AT {address:#x})");
        false
    }
}

fn fail(message: core::fmt::Arguments<'_>) -> ! {
    println!("isolation: {message}");
    exit(exit_status::FAILURE)
}
