//! Does what a boot loader does with its caches, and checks that each step
//! took effect: cache maintenance by set/way, then the MMU and caches on,
//! then set/way again and everything off.
//!
//! Under Tessera the set/way operations trap and make the hypervisor clean
//! the VM's RAM and trap the guest's writes to its virtual-memory control
//! registers (MAIR, TCR, TTBR0, SCTLR, ...) until the caches are on again
//! (docs/ARCHITECTURE.md, "Set/way cache maintenance"). So the writes this
//! guest makes between a set/way operation and turning its caches on are
//! emulated by the hypervisor; each is read back, and the MMU must really
//! come on and go off.
//!
//! Output, then exit status 0:
//!
//! ```text
//! set-way: 2 cache level(s) cleaned and invalidated by set/way
//! set-way: MAIR_EL1, TCR_EL1, TTBR0_EL1 hold what was written
//! set-way: MMU and caches on (SCTLR_EL1 0x30d01805)
//! set-way: MMU and caches off again; data written with caches on reads 0x5e73a75
//! set-way: VM-register writes trapped after set/way, not once the caches were on, again after set/way, still with the caches off
//! ```
//!
//! The last line needs a Tessera test image, which reports its traps
//! (`TESSERA_TEST_VCPU_TRAPS`); elsewhere it says the traps are not
//! reported.
//!
//! A check that fails prints `set-way: FAIL: ...` and exits with status 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use tessera_guest_sdk::tessera::{test_vcpu_traps, vcpu_trap};
use tessera_guest_sdk::{entry, exit, exit_status, println};

entry!(main);

/// One level-1 table translating a 39-bit space (TCR_EL1.T0SZ = 25) with
/// 1 GiB blocks: the first GiB (devices) as Device-nGnRE, the second (RAM,
/// from 0x4000_0000) as normal write-back memory.
#[repr(C, align(4096))]
struct TranslationTable([u64; 512]);

static mut TABLE: TranslationTable = TranslationTable([0; 512]);

/// Written with the caches on, read with them off. (Relaxed atomics are
/// plain loads and stores; the SCTLR writes are compiler barriers.)
static WITNESS: AtomicU64 = AtomicU64::new(0);
const WITNESS_VALUE: u64 = 0x05E7_3A75;

const MAIR: u64 = 0x04 | (0xFF << 8); // index 0 Device-nGnRE, 1 normal WB
const TCR: u64 = 25 // T0SZ: 39-bit input
    | (0b01 << 8) // IRGN0: write-back
    | (0b01 << 10) // ORGN0: write-back
    | (0b11 << 12) // SH0: inner shareable
    | (1 << 23) // EPD1: no TTBR1 walks
    | (0b001 << 32); // IPS: 36-bit output
const SCTLR_MMU: u64 = 1 << 0;
const SCTLR_DATA_CACHE: u64 = 1 << 2;
const SCTLR_INSTRUCTION_CACHE: u64 = 1 << 12;

fn main(_device_tree: usize) -> ! {
    // What the hypervisor traps at each step, where it says (test images).
    let mut trapping = [None; 4];
    let levels = clean_and_invalidate_by_set_way();
    println!("set-way: {levels} cache level(s) cleaned and invalidated by set/way");
    trapping[0] = virtual_memory_registers_trapped();

    let table = build_identity_map();
    write_translation_registers(table);
    let (mair, tcr, ttbr0) = read_translation_registers();
    if (mair, tcr, ttbr0) != (MAIR, TCR, table) {
        fail(format_args!(
            "read back MAIR {mair:#x} TCR {tcr:#x} TTBR0 {ttbr0:#x}, wrote {MAIR:#x} {TCR:#x} {table:#x}"
        ));
    }
    println!("set-way: MAIR_EL1, TCR_EL1, TTBR0_EL1 hold what was written");

    let sctlr = system_control();
    set_system_control(sctlr | SCTLR_MMU | SCTLR_DATA_CACHE | SCTLR_INSTRUCTION_CACHE);
    let on = system_control();
    if on & (SCTLR_MMU | SCTLR_DATA_CACHE) != SCTLR_MMU | SCTLR_DATA_CACHE {
        fail(format_args!(
            "SCTLR_EL1 is {on:#x} after turning the MMU and caches on"
        ));
    }
    println!("set-way: MMU and caches on (SCTLR_EL1 {on:#x})");
    trapping[1] = virtual_memory_registers_trapped();

    WITNESS.store(WITNESS_VALUE, Ordering::Relaxed);
    clean_and_invalidate_by_set_way();
    trapping[2] = virtual_memory_registers_trapped();
    set_system_control(on & !(SCTLR_MMU | SCTLR_DATA_CACHE));
    trapping[3] = virtual_memory_registers_trapped();
    let off = system_control();
    if off & (SCTLR_MMU | SCTLR_DATA_CACHE) != 0 {
        fail(format_args!(
            "SCTLR_EL1 is {off:#x} after turning the MMU and caches off"
        ));
    }
    let witness = WITNESS.load(Ordering::Relaxed);
    if witness != WITNESS_VALUE {
        fail(format_args!(
            "data written with caches on reads {witness:#x} with them off, not {WITNESS_VALUE:#x}"
        ));
    }
    println!("set-way: MMU and caches off again; data written with caches on reads {witness:#x}");
    match trapping {
        [None, None, None, None] => {
            println!("set-way: the hypervisor does not report its traps here");
        }
        [Some(true), Some(false), Some(true), Some(true)] => println!(
            "set-way: VM-register writes trapped after set/way, not once the caches were on, \
             again after set/way, still with the caches off"
        ),
        observed => fail(format_args!(
            "VM-register trapping after each step was {observed:?}, expected on, off, on, on"
        )),
    }
    exit(exit_status::SUCCESS)
}

/// Whether the hypervisor traps this vCPU's writes to its virtual-memory
/// control registers, if it says (Tessera test images).
fn virtual_memory_registers_trapped() -> Option<bool> {
    test_vcpu_traps()
        .ok()
        .map(|traps| traps & vcpu_trap::VIRTUAL_MEMORY_REGISTERS != 0)
}

fn fail(reason: core::fmt::Arguments<'_>) -> ! {
    println!("set-way: FAIL: {reason}");
    exit(exit_status::FAILURE)
}

/// Fills the table (MMU off, so the stores reach memory) and returns its
/// address.
fn build_identity_map() -> u64 {
    const VALID_BLOCK: u64 = 0b01;
    const ACCESS_FLAG: u64 = 1 << 10;
    const INNER_SHAREABLE: u64 = 0b11 << 8;
    const NEVER_EXECUTE: u64 = (1 << 53) | (1 << 54);
    const GIB: u64 = 1 << 30;
    let devices = VALID_BLOCK | ACCESS_FLAG | NEVER_EXECUTE;
    let ram = GIB | VALID_BLOCK | ACCESS_FLAG | INNER_SHAREABLE | (1 << 2);
    let table = &raw mut TABLE;
    // SAFETY: single-threaded guest, MMU off; nothing else refers to TABLE
    // while this reference lives.
    let entries = unsafe { &mut (*table).0 };
    entries[0] = devices;
    entries[1] = ram;
    table as u64
}

#[cfg(target_os = "none")]
fn write_translation_registers(table: u64) {
    // SAFETY: the MMU is off, so these only take effect when it is turned
    // on, with the map built above.
    unsafe {
        core::arch::asm!(
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {table}",
            "isb",
            "tlbi vmalle1",
            "dsb nsh",
            "isb",
            mair = in(reg) MAIR,
            tcr = in(reg) TCR,
            table = in(reg) table,
            options(nostack, preserves_flags)
        );
    }
}

#[cfg(target_os = "none")]
fn read_translation_registers() -> (u64, u64, u64) {
    let (mair, tcr, ttbr0): (u64, u64, u64);
    // SAFETY: reading EL1 registers has no side effects.
    unsafe {
        core::arch::asm!(
            "mrs {mair}, mair_el1",
            "mrs {tcr}, tcr_el1",
            "mrs {ttbr0}, ttbr0_el1",
            mair = out(reg) mair,
            tcr = out(reg) tcr,
            ttbr0 = out(reg) ttbr0,
            options(nomem, nostack, preserves_flags)
        );
    }
    (mair, tcr, ttbr0)
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

#[cfg(target_os = "none")]
fn set_system_control(value: u64) {
    // SAFETY: the identity map keeps every address this program uses where
    // it was, so execution continues across the switch either way.
    unsafe {
        core::arch::asm!(
            "dsb sy",
            "msr sctlr_el1, {}",
            "isb",
            in(reg) value,
            options(nostack, preserves_flags)
        );
    }
}

/// Cleans and invalidates every data or unified cache level the CPU reports
/// (CLIDR_EL1), set by set and way, the way boot loaders do. Returns the
/// number of levels.
#[cfg(target_os = "none")]
fn clean_and_invalidate_by_set_way() -> u32 {
    let clidr: u64;
    // SAFETY: reading CLIDR_EL1 has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, clidr_el1", out(reg) clidr, options(nomem, nostack, preserves_flags));
    }
    let mut levels = 0;
    // Up to the level of coherency (CLIDR_EL1.LoC, bits 26:24).
    for level in 0..((clidr >> 24) & 0b111) {
        let cache_type = (clidr >> (3 * level)) & 0b111;
        if cache_type < 2 {
            continue; // none, or instruction only
        }
        levels += 1;
        let ccsidr: u64;
        // SAFETY: selecting a cache level and reading its geometry has no
        // other effect.
        unsafe {
            core::arch::asm!(
                "msr csselr_el1, {level}",
                "isb",
                "mrs {ccsidr}, ccsidr_el1",
                level = in(reg) level << 1,
                ccsidr = out(reg) ccsidr,
                options(nomem, nostack, preserves_flags)
            );
        }
        let line_shift = (ccsidr & 0b111) + 4;
        let ways = ((ccsidr >> 3) & 0x3FF) + 1;
        let sets = ((ccsidr >> 13) & 0x7FFF) + 1;
        let way_shift = (ways as u32 - 1).leading_zeros();
        for way in 0..ways {
            for set in 0..sets {
                let operand = (way << way_shift) | (set << line_shift) | (level << 1);
                // SAFETY: cleaning and invalidating a cache line writes its
                // data back first; nothing is lost.
                unsafe {
                    core::arch::asm!("dc cisw, {}", in(reg) operand, options(nostack, preserves_flags));
                }
            }
        }
    }
    // SAFETY: a barrier has no memory-safety effect.
    unsafe { core::arch::asm!("dsb sy", "isb", options(nostack, preserves_flags)) };
    levels
}

// The host only compiles the examples (`entry!` never calls `main` there).
#[cfg(not(target_os = "none"))]
fn write_translation_registers(_table: u64) {
    unreachable!("a guest runs only on aarch64-unknown-none")
}
#[cfg(not(target_os = "none"))]
fn read_translation_registers() -> (u64, u64, u64) {
    unreachable!("a guest runs only on aarch64-unknown-none")
}
#[cfg(not(target_os = "none"))]
fn system_control() -> u64 {
    unreachable!("a guest runs only on aarch64-unknown-none")
}
#[cfg(not(target_os = "none"))]
fn set_system_control(_value: u64) {
    unreachable!("a guest runs only on aarch64-unknown-none")
}
#[cfg(not(target_os = "none"))]
fn clean_and_invalidate_by_set_way() -> u32 {
    unreachable!("a guest runs only on aarch64-unknown-none")
}
