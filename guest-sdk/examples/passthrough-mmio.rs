//! Reads a physical device passed through to this VM: the PL031 real-time
//! clock of QEMU `virt` at 0x0901_0000, mapped into its stage 2 at its own
//! address (docs/system-image.md, "Passthrough"). The device's
//! identification registers must read as the PL031's, and its data
//! register (seconds since the epoch QEMU's RTC counts from) must not be
//! zero: the accesses reached the device, not an emulation.
//!
//! Output: `passthrough-mmio: PL031 at 0x9010000: PeriphID 0x31 0x10,
//! PCellID 0x0d 0xf0 0x05 0xb1, data register nonzero`, and the VM exits
//! with status 0; otherwise `passthrough-mmio: FAIL: ...` and status 1. A
//! VM that was not given the device takes an external abort at the first
//! read and is stopped (use `isolation` to probe that).
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use tessera_guest_sdk::{entry, exit, exit_status, println};

entry!(main);

/// QEMU virt's PL031.
const RTC: u64 = 0x0901_0000;
/// RTCDR, the data register: the current count.
const DATA: u64 = 0x000;
/// RTCPeriphID0 and 1, then RTCPCellID0..3 (PL031 TRM, section 3.3).
const PERIPH_ID: [u64; 2] = [0xFE0, 0xFE4];
const PCELL_ID: [u64; 4] = [0xFF0, 0xFF4, 0xFF8, 0xFFC];
const PL031_PERIPH_ID: [u32; 2] = [0x31, 0x10];
const PRIMECELL_ID: [u32; 4] = [0x0D, 0xF0, 0x05, 0xB1];

fn read(offset: u64) -> u32 {
    let address = (RTC + offset) as *const u32;
    // SAFETY: the PL031's registers are passed through to this VM at this
    // address (its system configuration says so), and a 32-bit read of
    // these has no side effect.
    unsafe { address.read_volatile() }
}

fn main(_device_tree: usize) -> ! {
    let periph = PERIPH_ID.map(read);
    let pcell = PCELL_ID.map(read);
    let data = read(DATA);
    if periph != PL031_PERIPH_ID || pcell != PRIMECELL_ID {
        println!(
            "passthrough-mmio: FAIL: identification {periph:#04x?} {pcell:#04x?}, not the PL031's"
        );
        exit(exit_status::FAILURE)
    }
    if data == 0 {
        println!("passthrough-mmio: FAIL: the data register reads 0");
        exit(exit_status::FAILURE)
    }
    println!(
        "passthrough-mmio: PL031 at {RTC:#x}: PeriphID {:#04x} {:#04x}, PCellID {:#04x} {:#04x} \
         {:#04x} {:#04x}, data register nonzero",
        periph[0], periph[1], pcell[0], pcell[1], pcell[2], pcell[3]
    );
    exit(exit_status::SUCCESS)
}
