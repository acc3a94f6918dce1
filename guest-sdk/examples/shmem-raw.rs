//! vdev-shmem at the register level (../shared/design/vdev-shmem-abi.md),
//! without the SDK's client: the factory and control pages written and
//! read word by word, as a driver would, to check the device itself.
//!
//! Bootargs: `role=first|second`, `name=NAME` (default `raw`),
//! `pages=N` (the size asked for, default 2), `delay=MS` (wait that long
//! before the request, so that the other guest's comes first).
//!
//! - `first` creates the region, writes a pattern into its data, waits
//!   (polling its status) until a peer attaches, notifies that peer, and
//!   waits for the peer's notification back.
//! - `second` attaches to the same name (printing the size it got: the
//!   creator's), waits for the first's notification, reads the pattern
//!   back, and answers.
//!
//! Each prints what it saw (`shmem-raw: created NAME: N pages, index I`,
//! `shmem-raw: attached NAME: N pages, index I`, the sender bits, the
//! attached set and the data) and exits 0; anything unexpected prints
//! `shmem-raw: FAIL: ...` and exits 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use tessera_guest_sdk::bootargs::{self, Bootargs};
use tessera_guest_sdk::device_tree::DeviceTree;
use tessera_guest_sdk::{entry, exit, println, time};

entry!(main);

/// Factory page offsets and the signature ("QVMG2GSM").
const SIGNATURE: u64 = 0x4d53_4732_474d_5651;
const SHMEM: u64 = 0x08;
const STATUS: u64 = 0x14;
const SIZE: u64 = 0x18;
const NAME: u64 = 0x1C;
/// Control page offsets.
const CONTROL_STATUS: u64 = 0x0;
const CONTROL_INDEX: u64 = 0x4;
const CONTROL_NOTIFY: u64 = 0x8;

/// The pattern the creator writes at the start of the region's data.
const PATTERN: u32 = 0xC0FF_EE42;

fn read32(address: u64) -> u32 {
    // SAFETY: a vdev-shmem page or region data of this VM, from its
    // device tree or the factory's answer.
    unsafe { (address as *const u32).read_volatile() }
}

fn read64(address: u64) -> u64 {
    // SAFETY: as in `read32`.
    unsafe { (address as *const u64).read_volatile() }
}

fn write32(address: u64, value: u32) {
    // SAFETY: as in `read32`.
    unsafe { (address as *mut u32).write_volatile(value) };
}

fn fail(what: core::fmt::Arguments<'_>) -> ! {
    println!("shmem-raw: FAIL: {what}");
    exit(1)
}

/// Writes `name` into the factory's name field, NUL-padded, a word at a
/// time (the guest runs with its MMU off: aligned accesses only).
fn write_name(factory: u64, name: &[u8]) {
    let mut field = [0u8; 32];
    field[..name.len()].copy_from_slice(name);
    for (index, word) in field.chunks_exact(4).enumerate() {
        let value = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        write32(factory + NAME + 4 * index as u64, value);
    }
}

/// Polls the control page's status until `wanted` says it has what it
/// waits for, for at most two seconds of virtual time.
fn wait_status(control: u64, what: &str, wanted: impl Fn(u32) -> bool) -> u32 {
    let deadline = time::Deadline::after_ms(2000);
    loop {
        let status = read32(control + CONTROL_STATUS);
        if wanted(status) {
            return status;
        }
        if deadline.has_passed() {
            fail(format_args!(
                "timed out waiting for {what} (status {status:#x})"
            ));
        }
        time::delay_ms(1);
    }
}

fn main(device_tree: usize) -> ! {
    let tree = DeviceTree::boot().unwrap_or_else(|_| fail(format_args!("no device tree")));
    let _ = device_tree;
    let args = Bootargs::new(tree.bootargs().unwrap_or(""));
    let role = args.get("role").unwrap_or("first");
    let name = args.get("name").unwrap_or("raw").as_bytes();
    let pages = args
        .get("pages")
        .map_or(Ok(2), bootargs::parse_number)
        .unwrap_or_else(|_| fail(format_args!("bad pages")));
    let regs = tree
        .compatible_regs("qvm,guest_shm")
        .unwrap_or_else(|| fail(format_args!("no qvm,guest_shm node")));
    let factory = regs[0]
        .clone()
        .unwrap_or_else(|| fail(format_args!("no factory page")))
        .start;
    if read64(factory) != SIGNATURE {
        fail(format_args!("signature {:#x}", read64(factory)));
    }
    let delay = args
        .get("delay")
        .map_or(Ok(0), bootargs::parse_number)
        .unwrap_or_else(|_| fail(format_args!("bad delay")));
    time::delay_ms(delay);
    write_name(factory, name);
    write32(factory + SIZE, pages as u32);
    let status = read32(factory + STATUS);
    if status != 0 {
        fail(format_args!("status {status} for {role}"));
    }
    let control = read64(factory + SHMEM);
    let size = read32(factory + SIZE);
    let index = read32(control + CONTROL_INDEX);
    let data = control + 0x1000;
    let name = core::str::from_utf8(name).unwrap_or("?");
    match role {
        "first" => {
            write32(data, PATTERN);
            println!("shmem-raw: created {name}: {size} pages, index {index}");
            let status = wait_status(control, "a peer", |status| status >> 16 != 1 << index);
            let peers = (status >> 16) & !(1 << index);
            println!("shmem-raw: attached 0x{:x}", status >> 16);
            write32(control + CONTROL_NOTIFY, peers);
            let delivered = read32(control + CONTROL_NOTIFY);
            println!("shmem-raw: notified 0x{peers:x}, delivered 0x{delivered:x}");
            let status = wait_status(control, "the answer", |status| status & peers != 0);
            println!("shmem-raw: senders 0x{:x}", status & 0xFFFF);
        }
        _ => {
            println!("shmem-raw: attached {name}: {size} pages, index {index}");
            // The creator notifies after writing its data: seen in that
            // order, whatever the timing.
            let status = wait_status(control, "a notification", |status| status & 0xFFFF != 0);
            let senders = status & 0xFFFF;
            let seen = read32(data);
            println!(
                "shmem-raw: senders 0x{senders:x}, attached 0x{:x}, data 0x{seen:x}",
                status >> 16
            );
            if seen != PATTERN {
                fail(format_args!("data 0x{seen:x}"));
            }
            write32(control + CONTROL_NOTIFY, senders);
        }
    }
    exit(0)
}
