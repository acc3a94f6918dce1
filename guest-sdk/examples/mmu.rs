//! Turns the MMU and caches on with the SDK's identity map
//! (`tessera_guest_sdk::mmu`) and checks what that changes and what it
//! must not change.
//!
//! vCPU 0 maps RAM as Normal and the GIC and UART as Device, turns the MMU
//! on, and checks: the processor's own translation (AT S1E1R) gives RAM the
//! Normal write-back attribute and the UART Device-nGnRE; a pattern written
//! over free RAM reads back; one unaligned 8-byte store and load, and an
//! unaligned STP and LDP, put the bytes where they belong (with the MMU
//! off every access is a Device access, where these take an alignment
//! fault); exclusives count right. An address the map leaves out takes a
//! stage-1 translation fault; mapped as Device with the MMU on, the same
//! address (which the VM was not given: [`HOLE`]) gets the hypervisor's
//! synchronous external abort, as with the MMU off. A second vCPU started
//! afterwards comes up with its MMU on and makes the same accesses. Every
//! line printed after "MMU and caches on" went through the UART's Device
//! mapping. Needs 2 vCPUs.
//!
//! Output:
//!
//! ```text
//! mmu: MMU off: AT S1E1R 0x40080000 -> attributes 0x0
//! mmu: mapped RAM 0x40000000..0x42000000 as Normal, the GIC and UART as Device (5 of 16 tables)
//! mmu: MMU and caches on (SCTLR_EL1 0x30d01805): M, C, I set, A clear
//! mmu: AT S1E1R 0x40080000 -> 0x40080000 Normal write-back (attributes 0xff)
//! mmu: AT S1E1R 0x9000000 -> 0x9000000 Device-nGnRE (attributes 0x4)
//! mmu: pattern over 262144 bytes of RAM at 0x400a6000 read back
//! mmu: unaligned 8-byte store and load at offsets 1..7: bytes as expected
//! mmu: unaligned STP and LDP at offset 3: bytes as expected
//! mmu: 10000 exclusive increments on RAM counted 10000
//! mmu: unmapped 0xa000000 -> translation fault, level 2 (FAR 0xa000000)
//! mmu: mapped 0xa000000..0xa001000 as Device with the MMU on
//! mmu: probe read 0xa000000 -> external abort (ESR 0x96000010, FAR 0xa000000)
//! mmu: probe write 0xa000000 -> external abort (ESR 0x96000050, FAR 0xa000000)
//! mmu: vCPU 1 came up with its MMU on: unaligned accesses and 10000 exclusive increments right
//! mmu: PASS
//! ```
//!
//! Anything else: `mmu: FAIL: ...` and exit status 1. Natively on QEMU
//! `virt` [`HOLE`] is a virtio-mmio transport, so the external-abort check
//! fails there; everything else passes.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::cell::UnsafeCell;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tessera_guest_sdk::device_tree::DeviceTree;
use tessera_guest_sdk::exception::FaultStatus;
use tessera_guest_sdk::mmu::{self, MemoryKind};
use tessera_guest_sdk::time::Deadline;
use tessera_guest_sdk::{Abort, cpu, entry, exit, exit_status, memory, println, probe, psci};

entry!(main);

/// Guest-physical address with nothing behind it under Tessera (on QEMU
/// `virt`, where the virtio-mmio transports are): left out of the map, then
/// mapped as Device.
const HOLE: u64 = 0x0a00_0000;
/// The UART the console writes to (guest interface).
const UART: u64 = 0x0900_0000;
/// Bytes of free RAM the pattern covers.
const PATTERN_BYTES: u64 = 256 * 1024;
/// Exclusive increments per vCPU.
const INCREMENTS: u64 = 10_000;
const TIMEOUT_MS: u64 = 2000;

/// SCTLR_EL1 bits: M, A, C, I.
const SCTLR_MMU: u64 = 1 << 0;
const SCTLR_ALIGNMENT_CHECK: u64 = 1 << 1;
const SCTLR_DATA_CACHE: u64 = 1 << 2;
const SCTLR_INSTRUCTION_CACHE: u64 = 1 << 12;

/// 32 bytes the unaligned accesses write into, one area per vCPU; reached
/// only through raw addresses.
#[repr(C, align(16))]
struct Scratch(UnsafeCell<[[u8; 32]; 2]>);

// SAFETY: each vCPU uses only its own area, through raw addresses.
unsafe impl Sync for Scratch {}

static SCRATCH: Scratch = Scratch(UnsafeCell::new([[0; 32]; 2]));
static COUNTER: AtomicU64 = AtomicU64::new(0);
/// Set by vCPU 1 when its checks pass; `SECONDARY_FAILED` when one did not.
static SECONDARY_PASSED: AtomicBool = AtomicBool::new(false);
static SECONDARY_FAILED: AtomicBool = AtomicBool::new(false);

fn main(_device_tree: usize) -> ! {
    let image_start = memory::image_range().start;
    let off = mmu::translate_by_hardware(image_start)
        .unwrap_or_else(|| fail(format_args!("AT S1E1R faulted with the MMU off")));
    println!(
        "mmu: MMU off: AT S1E1R {image_start:#x} -> attributes {:#x}",
        off.attributes
    );

    let tree =
        DeviceTree::boot().unwrap_or_else(|error| fail(format_args!("no device tree: {error}")));
    let Some(ram) = tree.memory() else {
        fail(format_args!("the device tree has no /memory node"))
    };
    if let Err(error) = mmu::map_defaults(&tree) {
        fail(format_args!("default map: {error}"));
    }
    let (used, capacity) = mmu::usage();
    println!(
        "mmu: mapped RAM {:#x}..{:#x} as Normal, the GIC and UART as Device ({used} of {capacity} tables)",
        ram.start, ram.end
    );

    if let Err(error) = mmu::enable() {
        fail(format_args!("enable: {error}"));
    }
    check_system_control();
    check_hardware_translation(image_start, MemoryKind::Normal);
    check_hardware_translation(UART, MemoryKind::Device);

    let reserved = [memory::image_range(), tree.memory_footprint()];
    check_pattern(memory::largest_free_range(ram, &reserved));
    let scratch = scratch_area(0);
    if let Err(reason) = check_unaligned_single(scratch) {
        fail(format_args!("{reason}"));
    }
    println!("mmu: unaligned 8-byte store and load at offsets 1..7: bytes as expected");
    if let Err(reason) = check_unaligned_pair(scratch) {
        fail(format_args!("{reason}"));
    }
    println!("mmu: unaligned STP and LDP at offset 3: bytes as expected");
    increment(INCREMENTS);
    let counted = COUNTER.load(Ordering::Acquire);
    if counted != INCREMENTS {
        fail(format_args!(
            "{INCREMENTS} exclusive increments counted {counted}"
        ));
    }
    println!("mmu: {INCREMENTS} exclusive increments on RAM counted {counted}");

    check_unmapped_hole();
    check_secondary(&tree);
    println!("mmu: PASS");
    exit(exit_status::SUCCESS)
}

fn check_system_control() {
    let sctlr = system_control();
    let on = SCTLR_MMU | SCTLR_DATA_CACHE | SCTLR_INSTRUCTION_CACHE;
    if sctlr & on != on || sctlr & SCTLR_ALIGNMENT_CHECK != 0 || !mmu::is_enabled() {
        fail(format_args!(
            "SCTLR_EL1 is {sctlr:#x} after enable: expected M, C, I set and A clear"
        ));
    }
    println!("mmu: MMU and caches on (SCTLR_EL1 {sctlr:#x}): M, C, I set, A clear");
}

/// The processor's table walk agrees with the map about `address`.
fn check_hardware_translation(address: u64, expected: MemoryKind) {
    let Some(found) = mmu::translate_by_hardware(address) else {
        fail(format_args!("AT S1E1R {address:#x} faulted"))
    };
    if found.physical != address || MemoryKind::from_attribute(found.attributes) != Some(expected) {
        fail(format_args!(
            "AT S1E1R {address:#x} -> {:#x}, attributes {:#x}; expected itself as {expected}",
            found.physical, found.attributes
        ));
    }
    println!(
        "mmu: AT S1E1R {address:#x} -> {:#x} {expected} (attributes {:#x})",
        found.physical, found.attributes
    );
}

/// Writes a pattern over the first [`PATTERN_BYTES`] of `free` and reads
/// it back.
fn check_pattern(free: Range<u64>) {
    let length = PATTERN_BYTES.min(free.end - free.start) & !7;
    let words = (free.start..free.start + length).step_by(8);
    let value = |address: u64| address.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED;
    for address in words.clone() {
        // SAFETY: `free` is RAM that neither the image nor the device tree
        // uses, mapped Normal; the address is 8-byte aligned.
        unsafe { (address as *mut u64).write_volatile(value(address)) };
    }
    for address in words {
        // SAFETY: as above.
        let read = unsafe { (address as *const u64).read_volatile() };
        if read != value(address) {
            fail(format_args!(
                "pattern: {address:#x} reads {read:#x}, wrote {:#x}",
                value(address)
            ));
        }
    }
    println!(
        "mmu: pattern over {length} bytes of RAM at {:#x} read back",
        free.start
    );
}

/// The address of vCPU `index`'s scratch area.
fn scratch_area(index: usize) -> usize {
    SCRATCH.0.get() as usize + index * 32
}

/// The byte at `address`.
fn byte_at(address: usize) -> u8 {
    // SAFETY: only called for scratch-area addresses, which are ours.
    unsafe { (address as *const u8).read_volatile() }
}

/// Clears the 32 bytes at `area`.
fn clear(area: usize) {
    for offset in 0..32 {
        // SAFETY: the 32 bytes of a scratch area are ours.
        unsafe { ((area + offset) as *mut u8).write_volatile(0) };
    }
}

/// Checks that bytes `start..start + expected.len()` of `area` hold
/// `expected` and that every other byte is 0.
fn check_bytes(area: usize, start: usize, expected: &[u8]) -> Result<(), &'static str> {
    for offset in 0..32_usize {
        let want = offset
            .checked_sub(start)
            .and_then(|index| expected.get(index))
            .copied()
            .unwrap_or(0);
        if byte_at(area + offset) != want {
            return Err("a byte is not what the access should have left there");
        }
    }
    Ok(())
}

/// One 8-byte store and one 8-byte load at each misaligned offset.
fn check_unaligned_single(area: usize) -> Result<(), &'static str> {
    const VALUE: u64 = 0x0807_0605_0403_0201;
    for offset in 1..8 {
        clear(area);
        // SAFETY: bytes offset..offset + 8 of the 32-byte area are ours, and
        // RAM is Normal memory with the MMU on.
        unsafe { mmu::store_u64_unaligned(area + offset, VALUE) };
        check_bytes(area, offset, &VALUE.to_le_bytes())?;
        // SAFETY: as above.
        if unsafe { mmu::load_u64_unaligned(area + offset) } != VALUE {
            return Err("an unaligned load did not read what the store wrote");
        }
    }
    Ok(())
}

/// One STP and one LDP at a misaligned address.
fn check_unaligned_pair(area: usize) -> Result<(), &'static str> {
    const FIRST: u64 = 0x1817_1615_1413_1211;
    const SECOND: u64 = 0x2827_2625_2423_2221;
    const OFFSET: usize = 3;
    clear(area);
    // SAFETY: bytes 3..19 of the 32-byte area are ours, Normal memory.
    unsafe { mmu::store_pair_u64(area + OFFSET, FIRST, SECOND) };
    let mut expected = [0_u8; 16];
    expected[..8].copy_from_slice(&FIRST.to_le_bytes());
    expected[8..].copy_from_slice(&SECOND.to_le_bytes());
    check_bytes(area, OFFSET, &expected)?;
    // SAFETY: as above.
    if unsafe { mmu::load_pair_u64(area + OFFSET) } != (FIRST, SECOND) {
        return Err("an unaligned LDP did not read what the STP wrote");
    }
    Ok(())
}

fn increment(times: u64) {
    for _ in 0..times {
        COUNTER.fetch_add(1, Ordering::AcqRel);
    }
}

/// [`HOLE`] is not in the map (translation fault); mapped as Device, it
/// gets the hypervisor's external abort.
fn check_unmapped_hole() {
    match probe::probe_read(HOLE) {
        Ok(value) => fail(format_args!(
            "unmapped {HOLE:#x} read {value:#x} instead of faulting"
        )),
        Err(abort) if is_translation_fault_at(&abort, HOLE) => {
            let status = abort.syndrome().fault_status().unwrap_or(FaultStatus(0));
            println!("mmu: unmapped {HOLE:#x} -> {status} (FAR {:#x})", abort.far);
        }
        Err(abort) => fail(format_args!(
            "unmapped {HOLE:#x} -> {abort}, not a translation fault there"
        )),
    }
    let page = HOLE..HOLE + mmu::PAGE_SIZE;
    if let Err(error) = mmu::map(page.clone(), MemoryKind::Device) {
        fail(format_args!("mapping {HOLE:#x}: {error}"));
    }
    println!(
        "mmu: mapped {:#x}..{:#x} as Device with the MMU on",
        page.start, page.end
    );
    match probe::probe_read(HOLE) {
        Ok(value) => fail(format_args!("probe read {HOLE:#x} -> value {value:#x}")),
        Err(abort) => expect_external_abort("read", abort),
    }
    // SAFETY: nothing of this program is at HOLE; the write is expected to
    // abort, and if it completes it changes nothing the program uses.
    match unsafe { probe::probe_write(HOLE, 0x5EED) } {
        Ok(()) => fail(format_args!("probe write {HOLE:#x} completed")),
        Err(abort) => expect_external_abort("write", abort),
    }
}

fn is_translation_fault_at(abort: &Abort, address: u64) -> bool {
    // DFSC 0b0001LL: translation fault at level LL.
    let status = abort.syndrome().fault_status().map(|status| status.0);
    abort.far == address && matches!(status, Some(0x04..=0x07))
}

fn expect_external_abort(access: &str, abort: Abort) {
    if !abort.is_external_abort_at(HOLE) {
        fail(format_args!(
            "probe {access} {HOLE:#x} -> {abort}, not an external abort there"
        ));
    }
    println!(
        "mmu: probe {access} {HOLE:#x} -> external abort (ESR {:#x}, FAR {:#x})",
        abort.esr, abort.far
    );
}

/// Starts the first other vCPU, which runs [`secondary`], and waits for its
/// verdict.
fn check_secondary(tree: &DeviceTree<'_>) {
    let me = cpu::index_of(cpu::mpidr());
    let Some(target) = tree.cpu_ids().find(|&id| cpu::index_of(id) != me) else {
        fail(format_args!("the device tree lists no second vCPU"))
    };
    let Some(index) = cpu::index_of(target) else {
        fail(format_args!(
            "the SDK cannot run the vCPU with MPIDR {target:#x}"
        ))
    };
    if let Err(error) = psci::cpu_on(target, secondary, 1) {
        fail(format_args!("CPU_ON({target:#x}) = {error}"));
    }
    let deadline = Deadline::after_ms(TIMEOUT_MS);
    while !SECONDARY_PASSED.load(Ordering::Acquire) {
        if SECONDARY_FAILED.load(Ordering::Acquire) {
            fail(format_args!("the second vCPU's checks failed"));
        }
        if deadline.has_passed() {
            fail(format_args!(
                "the second vCPU did not finish within {TIMEOUT_MS} ms"
            ));
        }
        core::hint::spin_loop();
    }
    let counted = COUNTER.load(Ordering::Acquire);
    if counted != 2 * INCREMENTS {
        fail(format_args!(
            "after both vCPUs' increments the counter is {counted}, not {}",
            2 * INCREMENTS
        ));
    }
    println!(
        "mmu: vCPU {index} came up with its MMU on: unaligned accesses and {INCREMENTS} exclusive increments right"
    );
}

/// vCPU 1: its entry code turned the MMU on with vCPU 0's tables.
fn secondary(area_index: usize) -> ! {
    let verdict = if !mmu::is_enabled() {
        Err("its MMU is off")
    } else if mmu::enable_this_cpu().is_err() {
        Err("enable_this_cpu refused with the MMU on")
    } else {
        let area = scratch_area(area_index);
        check_unaligned_single(area).and_then(|()| check_unaligned_pair(area))
    };
    match verdict {
        Ok(()) => {
            increment(INCREMENTS);
            SECONDARY_PASSED.store(true, Ordering::Release);
        }
        Err(reason) => {
            println!("mmu: FAIL: vCPU {}: {reason}", cpu::index());
            SECONDARY_FAILED.store(true, Ordering::Release);
        }
    }
    psci::cpu_off()
}

fn fail(message: core::fmt::Arguments<'_>) -> ! {
    println!("mmu: FAIL: {message}");
    exit(exit_status::FAILURE)
}

#[cfg(target_os = "none")]
fn system_control() -> u64 {
    let value: u64;
    // SAFETY: reading SCTLR_EL1 has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, sctlr_el1", out(reg) value, options(nomem, nostack, preserves_flags));
    }
    value
}

#[cfg(not(target_os = "none"))]
fn system_control() -> u64 {
    0
}
