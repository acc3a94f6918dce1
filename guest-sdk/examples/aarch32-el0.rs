//! Drops to AArch32 at EL0 and loads from an address (`address=N` in the
//! bootargs; default the virtual UART's data register, 0x0900_0000): an
//! access the hypervisor would emulate for AArch64 code, but Tessera
//! emulates nothing for AArch32, so it must stop this VM with a report and
//! leave the others running.
//!
//! The exit arrives at the hypervisor's lower-EL *AArch64* vector (the
//! vector is chosen by the state of EL1, which is AArch64), with a valid
//! syndrome when the address is a device: this is the case the device fast
//! path must refuse (SPSR_EL2.M[4] set) rather than emulate as if the A32
//! registers and program counter were A64 ones.
//!
//! The A32 code is two instructions, `ldr r0, [r1]` and `b .`; the stage-1
//! MMU is off, so EL0 may run it from RAM and read anything. Should the
//! load ever complete, the vCPU spins at EL0 and the scenario times out
//! instead of finding the report.
//!
//! Output: `aarch32-el0: entering AArch32 EL0 to read 0x9000000`.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use tessera_guest_sdk::bootargs;
use tessera_guest_sdk::{entry, exit, exit_status, println};

entry!(main);

/// The virtual PL011's data register in every Tessera guest's map.
const DEFAULT_ADDRESS: u64 = 0x0900_0000;

/// The A32 program run at EL0: `ldr r0, [r1]` (0xe5910000) then `b .`
/// (0xeafffffe). A32 instructions are little-endian words, 4-aligned.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
static A32_PROGRAM: [u32; 2] = [0xe591_0000, 0xeaff_fffe];

fn main(_device_tree: usize) -> ! {
    let address = bootargs::boot_number("address")
        .unwrap_or_else(|error| {
            println!("aarch32-el0: bad address: {error}");
            exit(exit_status::FAILURE)
        })
        .unwrap_or(DEFAULT_ADDRESS);
    if address > u64::from(u32::MAX) {
        println!("aarch32-el0: {address:#x} is out of an A32 register's reach");
        exit(exit_status::FAILURE)
    }
    println!("aarch32-el0: entering AArch32 EL0 to read {address:#x}");
    enter_aarch32_el0(address)
}

/// Returns to `A32_PROGRAM` in AArch32 User mode with r1 = `address`.
#[cfg(target_os = "none")]
fn enter_aarch32_el0(address: u64) -> ! {
    // SPSR for the return: M[4] = 1 (AArch32), M[3:0] = 0b0000 (User),
    // T = 0 (A32), and A, I, F masked so that nothing is taken at EL1 from
    // AArch32 (this guest has no vectors for that).
    const SPSR_AARCH32_USER_MASKED: u64 = 0b1_1100_0000 | 0b1_0000;
    let program = A32_PROGRAM.as_ptr() as u64;
    // SAFETY: leaves this guest's EL1 for good: the ERET goes to the A32
    // program, which loads from `address` and then spins. Nothing at EL1
    // runs again, so no Rust state is left inconsistent; the registers
    // written here are EL1 state that only the return reads.
    unsafe {
        core::arch::asm!(
            "msr spsr_el1, {spsr}",
            "msr elr_el1, {program}",
            "isb",
            "eret",
            spsr = in(reg) SPSR_AARCH32_USER_MASKED,
            program = in(reg) program,
            in("x1") address,
            options(noreturn, nostack),
        )
    }
}

/// Host builds (clippy) have no EL0 to drop to.
#[cfg(not(target_os = "none"))]
fn enter_aarch32_el0(_address: u64) -> ! {
    unreachable!("aarch32-el0 runs only as a guest")
}
